/**
 * Runs a domain's `Reconciler` beside the worker: a loss check every second or so (a sink that
 * forgot everything is rebuilt at once, one log line and one metric per incident) and a periodic,
 * rate-limited sweep that repairs drift. One process at a time among many runs either (a
 * Postgres advisory lock on a reserved connection, so a process that dies releases it). The last
 * run of each kind is recorded in `sync_outbox_reconciles` for `status` in other processes.
 */
import { SqlClient, type SqlError } from "@effect/sql"
import { Cause, Clock, Config, ConfigError, Context, Either, Duration, Effect, Layer, Metric, Option, Random, Schedule } from "effect"
import { hostname } from "node:os"
import { InvalidConfig } from "./Errors.js"
import { integerConfig, parseDuration } from "./OutboxConfig.js"
import * as Metrics from "./Metrics.js"
import { type DriftReport, Reconciler, type ReconcileError, totalDrift } from "./Reconciler.js"

export interface ConvergenceConfigShape {
  /** How often the sweep runs; `None`: never (the loss check may still run). */
  readonly interval: Option.Option<Duration.Duration>
  /** How often the sink is asked whether it lost its data; `None`: never. */
  readonly lossCheckInterval: Option.Option<Duration.Duration>
  /** The sweep's budget of sink commands per second. */
  readonly rate: number
}

export const defaults: ConvergenceConfigShape = {
  interval: Option.some(Duration.minutes(5)),
  // Two commands a check: twice a second keeps a lost Redis's detection well inside the 2 s rebuild goal.
  lossCheckInterval: Option.some(Duration.millis(500)),
  // Measured (bench phase g, 2 shared cores): at 20,000 a sweep made the event p99 ~5x; at 5,000 about 2x.
  rate: 5_000
}

/** A duration, or `off` / `0` for never. */
const optionalDuration = (name: string, fallback: Option.Option<Duration.Duration>) =>
  Config.string(name).pipe(
    Config.option,
    Config.mapOrFail((text): Either.Either<Option.Option<Duration.Duration>, ConfigError.ConfigError> => {
      if (Option.isNone(text)) return Either.right(fallback)
      const value = text.value.trim()
      if (value === "off") return Either.right(Option.none<Duration.Duration>())
      // Read as every other duration setting is (Go's `5m` as well as Effect's `5 minutes`).
      const decoded = parseDuration(value)
      if (Option.isSome(decoded) && Duration.toMillis(decoded.value) === 0) return Either.right(Option.none<Duration.Duration>())
      return Option.isSome(decoded) && Duration.isFinite(decoded.value) && Duration.toMillis(decoded.value) >= 1
        ? Either.right(Option.some(decoded.value))
        : Either.left(ConfigError.InvalidData([name], `expected a duration such as "5m", "5 minutes", or "off", got "${value}"`))
    })
  )

/** SYNC_OUTBOX_RECONCILE_INTERVAL, SYNC_OUTBOX_LOSS_CHECK_INTERVAL, SYNC_OUTBOX_RECONCILE_RATE. */
export const config: Config.Config<ConvergenceConfigShape> = Config.all({
  interval: optionalDuration("RECONCILE_INTERVAL", defaults.interval),
  lossCheckInterval: optionalDuration("LOSS_CHECK_INTERVAL", defaults.lossCheckInterval),
  rate: integerConfig("RECONCILE_RATE").pipe(Config.withDefault(defaults.rate))
}).pipe(Config.nested("SYNC_OUTBOX"))

export const validate = (c: ConvergenceConfigShape): Effect.Effect<ConvergenceConfigShape, InvalidConfig> => {
  const problems: Array<string> = []
  for (const [name, d] of [["interval", c.interval], ["lossCheckInterval", c.lossCheckInterval]] as const) {
    if (Option.isSome(d) && (!Duration.isFinite(d.value) || Duration.toMillis(d.value) <= 0)) {
      problems.push(`${name} must be a positive, finite duration or off`)
    }
  }
  if (!Number.isInteger(c.rate) || c.rate < 1 || c.rate > 10_000_000) problems.push(`rate must be an integer from 1 to 10000000, got ${c.rate}`)
  return problems.length === 0
    ? Effect.succeed(c)
    : Effect.fail(new InvalidConfig({ message: `invalid sync-outbox reconcile configuration: ${problems.join("; ")}` }))
}

export class ConvergenceConfig extends Context.Tag("sync-outbox/ConvergenceConfig")<ConvergenceConfig, ConvergenceConfigShape>() {
  static readonly layer = (overrides: Partial<ConvergenceConfigShape> = {}): Layer.Layer<ConvergenceConfig, InvalidConfig> =>
    Layer.effect(ConvergenceConfig, validate({ ...defaults, ...overrides }))

  static readonly layerConfig = (from: Config.Config<ConvergenceConfigShape> = config): Layer.Layer<ConvergenceConfig, InvalidConfig> =>
    Layer.effect(
      ConvergenceConfig,
      from.pipe(
        Effect.mapError((error) => new InvalidConfig({ message: `invalid sync-outbox reconcile configuration: ${String(error)}` })),
        Effect.flatMap(validate)
      )
    )
}

export type RunReason = "loss" | "periodic" | "manual"

/** The last reconcile a process recorded, for `status`. */
export interface LastRun {
  readonly reason: RunReason
  readonly runner: string
  readonly startedAt: Date
  readonly finishedAt: Date | null
  readonly durationMs: number | null
  readonly repair: boolean
  readonly drift: number | null
  readonly repaired: number | null
  readonly error: string | null
}

// One lock for every reconcile of this database, whatever the domain: two sweeps at once would
// only double the load, never the coverage.
const lockKey = "hashtextextended('sync-outbox/reconcile', 0)"

/**
 * Run `f` holding the reconcile lock; `None` when another process holds it. The lock is a
 * session lock on a reserved connection: it goes away with the connection if this process dies.
 */
export const exclusively = <A, E, R>(f: Effect.Effect<A, E, R>) =>
  Effect.scoped(
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const connection = yield* sql.reserve
      const [row] = yield* connection.executeUnprepared(`SELECT pg_try_advisory_lock(${lockKey}) AS locked`, [], undefined)
      if ((row as { locked?: boolean } | undefined)?.locked !== true) return Option.none<A>()
      return yield* f.pipe(
        Effect.map(Option.some),
        Effect.ensuring(Effect.ignore(connection.executeUnprepared(`SELECT pg_advisory_unlock(${lockKey})`, [], undefined)))
      )
    })
  )

const runner = `${hostname()}:${process.pid}`

const record = (reason: RunReason, startedAt: number, outcome: { report?: DriftReport; error?: string }, finishedAt: number) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql.unsafe(
      `INSERT INTO sync_outbox_reconciles (reason, runner, started_at, finished_at, duration_ms, repair, drift, repaired, report, error)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10)
       ON CONFLICT (reason) DO UPDATE SET runner = excluded.runner, started_at = excluded.started_at,
         finished_at = excluded.finished_at, duration_ms = excluded.duration_ms, repair = excluded.repair,
         drift = excluded.drift, repaired = excluded.repaired, report = excluded.report, error = excluded.error`,
      [
        reason,
        runner,
        new Date(startedAt),
        new Date(finishedAt),
        Math.round(finishedAt - startedAt),
        outcome.report?.repair ?? false,
        outcome.report === undefined ? null : totalDrift(outcome.report),
        outcome.report === undefined ? null : outcome.report.families.reduce((n, f) => n + f.repaired, 0),
        outcome.report === undefined ? null : JSON.stringify(outcome.report),
        outcome.error ?? null
      ]
    )
  )

/** The last recorded run of each kind, newest first. */
export const lastRuns: Effect.Effect<ReadonlyArray<LastRun>, SqlError.SqlError, SqlClient.SqlClient> = Effect.flatMap(
  SqlClient.SqlClient,
  (sql) =>
    sql.unsafe<{
      reason: RunReason
      runner: string
      started_at: Date
      finished_at: Date | null
      duration_ms: number | null
      repair: boolean
      drift: number | null
      repaired: number | null
      error: string | null
    }>(`SELECT reason, runner, started_at, finished_at, duration_ms, repair, drift, repaired, error
        FROM sync_outbox_reconciles ORDER BY started_at DESC`)
).pipe(
  Effect.map((rows) =>
    rows.map((r) => ({
      reason: r.reason,
      runner: r.runner,
      startedAt: r.started_at,
      finishedAt: r.finished_at,
      durationMs: r.duration_ms,
      repair: r.repair,
      drift: r.drift,
      repaired: r.repaired,
      error: r.error
    }))
  )
)

const observe = (report: DriftReport, durationMs: number, now: number) =>
  Effect.gen(function*() {
    for (const f of report.families) {
      const found = Metrics.driftFound.pipe(Metric.tagged("family", f.family))
      if (f.missing > 0) yield* Metric.incrementBy(found.pipe(Metric.tagged("kind", "missing")), f.missing)
      if (f.stale > 0) yield* Metric.incrementBy(found.pipe(Metric.tagged("kind", "stale")), f.stale)
      if (f.orphaned > 0) yield* Metric.incrementBy(found.pipe(Metric.tagged("kind", "orphaned")), f.orphaned)
      if (f.repaired > 0) yield* Metric.incrementBy(Metrics.driftRepaired.pipe(Metric.tagged("family", f.family)), f.repaired)
    }
    yield* Metric.set(Metrics.reconcileLastRun, now / 1000)
    yield* Metric.set(Metrics.reconcileDuration, durationMs)
  })

/**
 * One reconcile under the lock, recorded and measured. `None` when another process was already
 * running one. `pace`: the sweep's rate limit; `unpaced` for a rebuild after data loss.
 */
export const runOnce = (
  reason: RunReason,
  options: { readonly repair: boolean; readonly rate?: number | undefined }
): Effect.Effect<Option.Option<DriftReport>, ReconcileError | SqlError.SqlError, Reconciler | SqlClient.SqlClient> =>
  exclusively(
    Effect.gen(function*() {
      const reconciler = yield* Reconciler
      const startedAt = yield* Clock.currentTimeMillis
      const rate = options.rate
      const pace = (commands: number) =>
        rate === undefined || commands <= 0 ? Effect.void : Effect.sleep(Duration.millis((commands / rate) * 1000))
      const result = yield* Effect.either(reconciler.reconcile({ repair: options.repair, pace, rate }))
      const finishedAt = yield* Clock.currentTimeMillis
      if (result._tag === "Left") {
        yield* Effect.ignore(record(reason, startedAt, { error: result.left.message }, finishedAt))
        return yield* Effect.fail(result.left)
      }
      yield* observe(result.right, finishedAt - startedAt, finishedAt)
      yield* Effect.ignore(record(reason, startedAt, { report: result.right }, finishedAt))
      return result.right
    })
  ).pipe(Effect.withSpan("sync-outbox.reconcile", { attributes: { reason, repair: options.repair } }))

const summary = (report: DriftReport) =>
  report.families
    .filter((f) => f.missing + f.stale + f.orphaned > 0)
    .map((f) => `${f.family}: ${f.missing} missing, ${f.stale} stale, ${f.orphaned} orphaned`)
    .join("; ")

/** Ask the sink whether it lost its data; rebuild it at once when it did. */
const watchForLoss = (every: Duration.Duration) =>
  Effect.gen(function*() {
    const reconciler = yield* Reconciler
    // Open from the first sign of loss until a check finds the sink whole again: one log line
    // and one count per incident, however many checks it spans.
    let incident = false
    let rebuildFailureSaid = false
    let diedInARow = 0
    const check = Effect.gen(function*() {
      const lost = yield* reconciler.detectLoss
      if (Option.isNone(lost)) {
        incident = false
        return
      }
      if (!incident) {
        incident = true
        yield* Metric.increment(Metrics.dataLoss)
        yield* Effect.logWarning(`sync-outbox: the sink lost its data (${lost.value}); rebuilding it`)
      }
      const started = yield* Clock.currentTimeMillis
      const report = yield* runOnce("loss", { repair: true })
      // Another process holds the lock and is on it; the next check sees whether it is done.
      if (Option.isNone(report)) return
      // Whole again: a later loss is a new incident.
      incident = false
      const took = (yield* Clock.currentTimeMillis) - started
      const repaired = report.value.families.reduce((n, f) => n + f.repaired, 0)
      yield* Effect.logInfo(`sync-outbox: sink rebuilt in ${took} ms (${repaired} entries written or removed)`)
    }).pipe(
      Effect.catchAll((error) => {
        // Unreachable or failing mid-rebuild: the breaker reports an outage; a failed rebuild is
        // said once per incident and retried by the next check.
        if (!incident || rebuildFailureSaid) return Effect.logDebug("sync-outbox: loss check failed", error)
        rebuildFailureSaid = true
        return Effect.logWarning(`sync-outbox: rebuilding the sink failed, retrying: ${error.message}`)
      }),
      Effect.tap(() => Effect.sync(() => (rebuildFailureSaid &&= incident))),
      Effect.tap(() => Effect.sync(() => (diedInARow = 0))),
      // A defect (a bug in the reconciler: a throw, a die) ended this loop for good, said at
      // debug level only, while the sink went unwatched. Said at error level, with its stack,
      // once per streak (the check runs twice a second), and the next check runs as scheduled.
      Effect.catchAllDefect((defect) => {
        diedInARow++
        return diedInARow === 1
          ? Effect.logError("sync-outbox: the loss check died (a bug in the reconciler); checking again on schedule", Cause.die(defect))
          : Effect.logDebug(`sync-outbox: the loss check died again (${diedInARow} in a row)`)
      })
    )
    yield* Effect.repeat(check, Schedule.spaced(every))
  })

/** The periodic sweep: compare everything, repair what differs, within the rate limit. */
const sweep = (every: Duration.Duration, rate: number) =>
  Effect.gen(function*() {
    const run = runOnce("periodic", { repair: true, rate }).pipe(
      Effect.tap((report) =>
        Option.isSome(report) && totalDrift(report.value) > 0
          ? Effect.logWarning(`sync-outbox: reconcile repaired drift: ${summary(report.value)}`)
          : Effect.void
      ),
      Effect.catchAll((error) => Effect.logWarning(`sync-outbox: reconcile failed: ${error.message}`)),
      // A defect in the reconciler: said with its stack, and the next sweep still runs.
      Effect.catchAllDefect((defect) =>
        Effect.logError("sync-outbox: reconcile died (a bug in the reconciler); the next sweep runs on schedule", Cause.die(defect)))
    )
    // The first sweep waits up to one interval, at random, so that workers started together spread out.
    const first = yield* Random.nextRange(0.5, 1)
    yield* Effect.sleep(Duration.times(every, first))
    yield* Effect.repeat(run, Schedule.spaced(every).pipe(Schedule.jittered))
  })

/**
 * The scoped layer that runs both, for as long as its scope lives. Put it beside the worker
 * (`WorkerEnv.layer` does when given a reconciler).
 */
export const layer: Layer.Layer<never, never, Reconciler | ConvergenceConfig | SqlClient.SqlClient> = Layer.scopedDiscard(
  Effect.gen(function*() {
    const config = yield* ConvergenceConfig
    // Read here, at start, although only the loops below use it: a `reconciler` loaded untyped
    // (the CLI's `--handlers` module) that does not provide one would otherwise kill those
    // forked loops on their first look, unseen, while the worker says "reconciler on".
    yield* Reconciler
    if (Option.isSome(config.lossCheckInterval)) yield* Effect.forkScoped(watchForLoss(config.lossCheckInterval.value))
    if (Option.isSome(config.interval)) yield* Effect.forkScoped(sweep(config.interval.value, config.rate))
  })
)
