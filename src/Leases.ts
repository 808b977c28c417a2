/**
 * The lease protocol: how a worker takes events (`claim` writes a lease: owner and expiry) and
 * how it gives each one back (`complete`, `fail`, `release`), every step fenced on the lease
 * owner, so a worker that lost its lease cannot touch a row another worker has since taken. Plus
 * the worker's own registration (`heartbeat`, `unregister`) and the earliest retry it must wake
 * for. The SQL is in `Statements`.
 *
 * Through a `SqlClient` alone (any client, PGlite included) every statement is bounded by
 * `callTimeout`. When the `SqlClient` comes from `Database.layer`, its `PgPool` is used directly:
 * named prepared statements, planned once per connection and bounded by the pool's own statement
 * and query timeouts. Both ways run the same text and read the same rows.
 */
import { SqlClient, SqlError } from "@effect/sql"
import { Clock, Context, Duration, Effect, Layer, Option } from "effect"
import { PgPool } from "./Database.js"
import { OutboxConfig } from "./OutboxConfig.js"
import type * as OutboxEvent from "./OutboxEvent.js"
import * as Statements from "./Statements.js"

/** A claimed event, and whether another pending event of its key waits behind it. */
export interface Claimed extends OutboxEvent.ClaimedEvent {
  readonly successor: boolean
  /**
   * The worker whose lease on this event ran out before it recorded an outcome (it stopped,
   * crashed or lost Postgres while applying it), else null. The claim counted that run as a
   * failed attempt (`LeaseExpired`, in `retryCount` and the failure history).
   */
  readonly abandonedBy: string | null
  /**
   * That lost attempt followed another lost the same way. An event whose last attempt was lost
   * runs alone (with no other event held by its worker), so this one ended that worker itself:
   * out of attempts, it is parked. After one lost lease it may have been an innocent event of the
   * dead worker's batch: it gets a run of its own first, even out of attempts.
   */
  readonly abandonedAgain: boolean
  /**
   * Its last recorded attempt ended that way (`LeaseExpired`), now or before: it may be what ended
   * that worker, so the worker runs it alone, after the rest of its batch is written down.
   */
  readonly lastAttemptLost: boolean
}

/** One failed attempt to record. `dead: true` parks the row; otherwise it is retried at `nextRetryAt`. */
export interface Failure {
  readonly id: string
  readonly attempt: number
  readonly tag: string
  readonly message: string
  readonly nextRetryAt: Date
  readonly dead: boolean
  /**
   * Keep the row leased until its lease expires (a call that timed out may still be running):
   * neither it nor its key is claimable before then, and its retry is due no earlier.
   */
  readonly keepLease?: boolean | undefined
}

/** What `complete` journals: when, and which completed events a newer one covered (id -> newer id). */
export interface Journaling {
  readonly appliedAt: Date
  readonly supersededBy: ReadonlyMap<string, string>
  /** Superseded events whose covering event had not applied (it failed or is held). */
  readonly coveredUnapplied?: ReadonlySet<string> | undefined
}

/** A worker as it registers itself in `sync_outbox_workers`. */
export interface WorkerRow {
  readonly owner: string
  readonly hostname: string
  readonly pid: number
  readonly breaker: string
  readonly listener: string
  /** The claim loop: `running`, `restarting` (after a failure, with `loopError`), `stopped`. */
  readonly loop: string
  readonly loopError: string | null
  /** The journal retention it runs with, in milliseconds (0: no journal). */
  readonly retentionMs?: number | null | undefined
}

export interface LeasesShape {
  /** Lease up to `limit` due events (more for coalescing keys) to `owner` for `leaseMs`; oldest first. */
  readonly claim: (owner: string, leaseMs: number, limit: number) => Effect.Effect<ReadonlyArray<Claimed>, SqlError.SqlError>
  /** Delete applied rows still leased by `owner`; with `journal`, journal them in the same statement. Returns how many. */
  readonly complete: (
    owner: string,
    ids: ReadonlyArray<string>,
    journal?: Journaling
  ) => Effect.Effect<number, SqlError.SqlError>
  /** Record failed attempts of rows still leased by `owner` (history, backoff, dead letters). */
  readonly fail: (owner: string, failures: ReadonlyArray<Failure>) => Effect.Effect<void, SqlError.SqlError>
  /** Hand rows back without counting an attempt. Returns how many. */
  readonly release: (owner: string, ids: ReadonlyArray<string>) => Effect.Effect<number, SqlError.SqlError>
  /** Extend `owner`'s leases to `until` (a timed-out call still running). Returns how many. */
  readonly renew: (owner: string, ids: ReadonlyArray<string>, until: Date) => Effect.Effect<number, SqlError.SqlError>
  /** The earliest scheduled retry (epoch ms), or null: when to look again even if nothing notifies. */
  readonly nextWakeAt: Effect.Effect<number | null, SqlError.SqlError>
  /**
   * Take the outbox's statistics again if they no longer describe it (it changed by more than its
   * size since); returns whether it did. Plans, the cached ones of prepared statements included,
   * are made from statistics: those of an empty table make a claim scan every pending row.
   */
  readonly refreshStatistics: Effect.Effect<boolean, SqlError.SqlError>
  /**
   * The same, judged only by whether the table grew to four times the size its statistics describe
   * (its file past 1 MB, or over 1,000 rows pending where they count under a quarter of that and
   * under 2,500): known the moment a burst commits, and rarely true of a small, busy table (so it
   * costs no replanning there). False for a role that may not ANALYZE the table. Cheap enough to
   * ask before the first claim of a drain. True when it ran ANALYZE (which may have skipped the
   * table, autovacuum being at it).
   */
  readonly refreshStatisticsIfOutgrown: Effect.Effect<boolean, SqlError.SqlError>
  readonly heartbeat: (worker: WorkerRow) => Effect.Effect<void, SqlError.SqlError>
  readonly unregister: (owner: string) => Effect.Effect<void, SqlError.SqlError>
}

export interface LeasesOptions {
  /** Bounds each statement when it goes through a `SqlClient` without a `PgPool`. */
  readonly callTimeout: Duration.Duration
  /**
   * Commit completions, failures and releases without waiting for the WAL flush: a crash can
   * then undo the last few, which only repeats work (leases always wait). False keeps the
   * session's `synchronous_commit`. Default: `OutboxConfig`'s `asyncCommit` when one is in
   * context, else true. Never inside a transaction of the caller's own: that one keeps its setting.
   */
  readonly asyncCommit?: boolean | undefined
}

interface ClaimRow extends Statements.EventRow {
  readonly successor: boolean
  readonly abandoned_by: string | null
  readonly abandoned_again: boolean
  readonly last_attempt_lost: boolean
}

const toClaimed = (row: ClaimRow): Claimed => ({
  ...Statements.toClaimedEvent(row),
  successor: row.successor === true,
  abandonedBy: row.abandoned_by ?? null,
  abandonedAgain: row.abandoned_again === true,
  lastAttemptLost: row.last_attempt_lost === true
})

// RETURNING has no order; callers get events oldest first (ids are bigints as text).
const byId = (a: { readonly id: string }, b: { readonly id: string }) =>
  a.id.length - b.id.length || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)

type Run = <A extends object>(statement: Statements.Statement, params: ReadonlyArray<unknown>) => Effect.Effect<ReadonlyArray<A>, SqlError.SqlError>

/** How statements reach the database: the pool's named prepared statements, or the `SqlClient`. */
const runner = (sql: SqlClient.SqlClient, pool: Option.Option<PgPool["Type"]>, callTimeout: Duration.Duration): Run =>
  Option.match(pool, {
    // A client of the caller's own may have no timeouts: bound the call here.
    onNone: () => <A extends object>(statement: Statements.Statement, params: ReadonlyArray<unknown>) =>
      sql.unsafe<A>(statement.text, params).withoutTransform.pipe(
        Effect.timeoutFail({
          duration: callTimeout,
          onTimeout: () => new SqlError.SqlError({ cause: null, message: `${label(statement)} timed out` })
        })
      ),
    // The pool enforces statement_timeout and query_timeout itself (Database.layer): no timer here.
    onSome: (p) => <A extends object>(statement: Statements.Statement, params: ReadonlyArray<unknown>) =>
      Effect.tryPromise({
        try: () => p.query<A>({ name: statement.name, text: statement.text, values: params as Array<unknown> }),
        catch: (cause) => new SqlError.SqlError({ cause, message: `${label(statement)} failed` })
      }).pipe(Effect.map((result) => result.rows))
  })

/** `sync_outbox_claim` as it is named in errors: `sync-outbox claim`. */
const label = (statement: Statements.Statement) => statement.name.replace(/^sync_outbox_/, "sync-outbox ")

const count = (rows: ReadonlyArray<{ readonly n: number }>) => rows[0]?.n ?? 0

export const make = (options: LeasesOptions): Effect.Effect<LeasesShape, never, SqlClient.SqlClient> =>
  Effect.gen(function*() {
    const run = runner(yield* SqlClient.SqlClient, yield* Effect.serviceOption(PgPool), options.callTimeout)
    const asyncCommit = options.asyncCommit ??
      Option.match(yield* Effect.serviceOption(OutboxConfig), { onNone: () => true, onSome: (config) => config.asyncCommit })
    // Checked per call: through a plain `SqlClient`, a statement run inside the caller's
    // `withTransaction` joins it, and must not change how the caller's transaction commits.
    const commitMode = Effect.map(
      Effect.serviceOption(SqlClient.TransactionConnection),
      (inTransaction): "off" | null => (asyncCommit && Option.isNone(inTransaction) ? "off" : null)
    )

    const claim = (owner: string, leaseMs: number, limit: number) =>
      Effect.flatMap(Clock.currentTimeMillis, (now) =>
        run<ClaimRow>(Statements.claim, [owner, new Date(now), new Date(now + leaseMs), limit])).pipe(
          Effect.map((rows) => rows.map(toClaimed).sort(byId))
        )

    const complete = (owner: string, ids: ReadonlyArray<string>, journal?: Journaling) =>
      ids.length === 0
        ? Effect.succeed(0)
        : Effect.map(
          journal === undefined
            ? Effect.flatMap(commitMode, (mode) => run<{ n: number }>(Statements.complete, [owner, ids, mode]))
            : Effect.flatMap(commitMode, (mode) => run<{ n: number }>(Statements.completeJournaled, [
              owner,
              ids,
              journal.appliedAt,
              [...journal.supersededBy.keys()],
              [...journal.supersededBy.values()],
              [...(journal.coveredUnapplied ?? [])],
              mode
            ])),
          count
        )

    const fail = (owner: string, failures: ReadonlyArray<Failure>) =>
      failures.length === 0 ? Effect.void : Effect.flatMap(Effect.zip(Clock.currentTimeMillis, commitMode), ([now, mode]) =>
        run(Statements.fail, [
          owner,
          failures.map((f) => f.id),
          failures.map((f) => f.tag),
          failures.map((f) => f.message),
          failures.map((f) => f.nextRetryAt),
          failures.map((f) => f.dead),
          failures.map((f) => f.attempt),
          new Date(now),
          failures.map((f) => f.keepLease === true),
          mode
        ])).pipe(Effect.asVoid)

    const release = (owner: string, ids: ReadonlyArray<string>) =>
      ids.length === 0 ? Effect.succeed(0) : Effect.map(Effect.flatMap(commitMode, (mode) => run<{ n: number }>(Statements.release, [owner, ids, mode])), count)

    const renew = (owner: string, ids: ReadonlyArray<string>, until: Date) =>
      ids.length === 0 ? Effect.succeed(0) : Effect.map(run<{ n: number }>(Statements.renew, [owner, ids, until]), count)

    const nextWakeAt = Effect.map(run<{ at: Date | number | null }>(Statements.nextWake, []), (rows) => {
      const at = rows[0]?.at
      return at instanceof Date ? at.getTime() : null
    })

    const analyzeIf = (check: Statements.Statement) =>
      Effect.flatMap(run<{ stale: boolean }>(check, []), (rows) =>
        rows[0]?.stale === true ? Effect.as(run(Statements.analyze, []), true) : Effect.succeed(false))
    const refreshStatistics = analyzeIf(Statements.statisticsStale)
    const refreshStatisticsIfOutgrown = analyzeIf(Statements.statisticsOutgrown)

    const heartbeat = (worker: WorkerRow) =>
      run(Statements.heartbeat, [
        worker.owner,
        worker.hostname,
        worker.pid,
        worker.breaker,
        worker.listener,
        worker.loop,
        worker.loopError,
        worker.retentionMs ?? null
      ]).pipe(Effect.asVoid)

    const unregister = (owner: string) => Effect.asVoid(run(Statements.unregister, [owner]))

    return { claim, complete, fail, release, renew, nextWakeAt, refreshStatistics, refreshStatisticsIfOutgrown, heartbeat, unregister } satisfies LeasesShape
  })

export class Leases extends Context.Tag("sync-outbox/Leases")<Leases, LeasesShape>() {
  /** With the default `callTimeout` (10 s) for a `SqlClient` without a `PgPool`. */
  static readonly layer: Layer.Layer<Leases, never, SqlClient.SqlClient> = Layer.effect(
    Leases,
    make({ callTimeout: Duration.seconds(10) })
  )
  static readonly layerWith = (options: LeasesOptions): Layer.Layer<Leases, never, SqlClient.SqlClient> =>
    Layer.effect(Leases, make(options))
}
