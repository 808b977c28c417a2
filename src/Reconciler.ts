/**
 * Convergence. The outbox delivers every change, but the sink can still forget (a Redis restarted
 * empty, a failover to an empty replica) or drift (a row deleted in SQL with no event, a hand
 * edit). Delivery never notices either. A domain says how to notice and how to repair by
 * implementing `Reconciler`; the engine runs it (`Convergence`): a frequent, cheap check for lost
 * data that triggers a full rebuild at once, and a periodic, rate-limited compare-and-repair
 * sweep, each run by one process at a time among many workers.
 *
 * Repairs must be safe beside the event path that keeps flowing meanwhile: a domain writes them
 * with the same version fencing as its handlers, so a repair never replaces newer data.
 */
import { Context, Data, Effect, type Option } from "effect"

/** Drift of one family of entries (e.g. api keys, masters, the providers snapshot). */
export interface FamilyDrift {
  readonly family: string
  /** Entries compared. */
  readonly checked: number
  /** In the source of truth, absent from the sink. */
  readonly missing: number
  /** In both, different (or older) in the sink. */
  readonly stale: number
  /** In the sink with nothing behind it in the source of truth. */
  readonly orphaned: number
  /** Entries written or removed by this run (0 unless repairing). */
  readonly repaired: number
  /** A few of each, to show an operator (at most `exampleLimit`). */
  readonly examples: {
    readonly missing: ReadonlyArray<string>
    readonly stale: ReadonlyArray<string>
    readonly orphaned: ReadonlyArray<string>
  }
}

export const exampleLimit = 5

/** What one reconcile found, and (when repairing) fixed. */
export interface DriftReport {
  readonly families: ReadonlyArray<FamilyDrift>
  readonly repair: boolean
}

export const driftOf = (family: FamilyDrift): number => family.missing + family.stale + family.orphaned

export const totalDrift = (report: DriftReport): number => report.families.reduce((n, f) => n + driftOf(f), 0)

/** Counts drift of one family as it is found: the examples are kept short. */
export class DriftCounter {
  checked = 0
  missing = 0
  stale = 0
  orphaned = 0
  repaired = 0
  private readonly examples = { missing: [] as Array<string>, stale: [] as Array<string>, orphaned: [] as Array<string> }
  constructor(readonly family: string) {}
  found(kind: "missing" | "stale" | "orphaned", example: string) {
    this[kind]++
    if (this.examples[kind].length < exampleLimit) this.examples[kind].push(example)
  }
  result(): FamilyDrift {
    return {
      family: this.family,
      checked: this.checked,
      missing: this.missing,
      stale: this.stale,
      orphaned: this.orphaned,
      repaired: this.repaired,
      examples: { missing: [...this.examples.missing], stale: [...this.examples.stale], orphaned: [...this.examples.orphaned] }
    }
  }
}

/** Why a reconcile could not finish. The sink being down is reported as such, not as drift. */
export class ReconcileError extends Data.TaggedError("ReconcileError")<{
  readonly message: string
  readonly cause?: unknown
  /**
   * What was compared (and repaired) before the run failed, when everything but some rows was:
   * control-plane rows that do not decode are skipped, the rest is still checked, and `verify`
   * shows that table beside the failure.
   */
  readonly report?: DriftReport | undefined
}> {}

export interface ReconcileOptions {
  /** Fix what differs (version-fenced), or only report it. */
  readonly repair: boolean
  /**
   * Called by the domain after each page of sink commands it spent: the engine sleeps as long
   * as the rate limit asks, so a sweep never crowds out the event path. A rebuild after data
   * loss is not paced.
   */
  readonly pace: (commands: number) => Effect.Effect<void>
  /**
   * The budget `pace` enforces, in sink commands per second; `undefined` when the run is not
   * paced (a rebuild, a manual run). A domain may size its pipelined pages by it: small ones
   * under a budget, so that the event path never waits long behind one.
   */
  readonly rate?: number | undefined
}

export interface ReconcilerShape {
  /**
   * Cheap (a command or two; it runs every second or so): has the sink lost what was written?
   * `Some(reason)` when it has, e.g. "generation marker missing". A sink that cannot be reached
   * fails; that is the breaker's business, not a loss.
   */
  readonly detectLoss: Effect.Effect<Option.Option<string>, ReconcileError>
  /**
   * Compare the sink with the source of truth, family by family; with `repair`, write what is
   * missing or stale and remove orphans. A full repair also re-arms whatever `detectLoss`
   * looks at, before it starts writing: a loss during the repair is then seen again.
   */
  readonly reconcile: (options: ReconcileOptions) => Effect.Effect<DriftReport, ReconcileError>
}

/** A domain's way of finding and repairing drift in its sink. */
export class Reconciler extends Context.Tag("sync-outbox/Reconciler")<Reconciler, ReconcilerShape>() {}
