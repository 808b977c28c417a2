/**
 * The worker's configuration: the Go service's surface (enabled, interval, batch size, max retries)
 * plus what the Go service lacked. Read with Effect `Config` from `SYNC_OUTBOX_*` environment names; a
 * bad value fails at startup with a message that names the variable.
 */
import { Config, ConfigError, Context, Duration, Effect, Either, Layer, Option } from "effect"
import { InvalidConfig } from "./Errors.js"

export interface OutboxConfigShape {
  /** The Go service's `Enabled`: when false the worker layer starts no loop. */
  readonly enabled: boolean
  /** The Go service's `Interval`: the fallback poll interval when no notification arrives. */
  readonly interval: Duration.Duration
  /** The Go service's `BatchSize`: events claimed per statement. */
  readonly batchSize: number
  /** The Go service's `MaxRetries`: attempts before an event becomes a dead letter. */
  readonly maxRetries: number
  /** How long a claim holds an event before another worker may take it. */
  readonly leaseDuration: Duration.Duration
  /** Delay before the second attempt; doubles per attempt up to `backoffCap`, then jittered. */
  readonly backoffBase: Duration.Duration
  readonly backoffCap: Duration.Duration
  /** Events applied at once by one worker. */
  readonly concurrency: number
  /** The NOTIFY channel the insert trigger signals. */
  readonly channel: string
  /** No LISTEN connection at all (PgBouncer in transaction mode): polling only. */
  readonly pollOnly: boolean
  /**
   * Bounds a batch of handler calls (what has not finished is interrupted: `HandlerTimeout`), the
   * breaker's probe and the heartbeat. The worker's statements are bounded by it only when its
   * `SqlClient` has no `PgPool`; under `Database.layer` the pool's `statement_timeout` and query
   * timeout (`SYNC_OUTBOX_DB_STATEMENT_TIMEOUT`) bound them.
   */
  readonly callTimeout: Duration.Duration
  /** Breaker probe schedule while the sink is unavailable: starts at `probeBase`, capped at `probeCap`. */
  readonly probeBase: Duration.Duration
  readonly probeCap: Duration.Duration
  /** How long applied events stay in the journal (`sync_outbox_journal`); zero journals nothing. */
  readonly retention: Duration.Duration
  /**
   * Commit the worker's bookkeeping (leases, completions, failures, the journal) without waiting
   * for the WAL flush: a crash of Postgres may undo the last few, which only applies those events
   * again. Producers' transactions are untouched. False: every write waits, as the session's
   * `synchronous_commit` says.
   */
  readonly asyncCommit: boolean
}

export const defaults: OutboxConfigShape = {
  enabled: true,
  interval: Duration.seconds(5),
  batchSize: 200,
  maxRetries: 10,
  leaseDuration: Duration.seconds(30),
  backoffBase: Duration.millis(250),
  backoffCap: Duration.minutes(5),
  concurrency: 64,
  channel: "sync_outbox",
  pollOnly: false,
  callTimeout: Duration.seconds(10),
  probeBase: Duration.millis(10),
  probeCap: Duration.millis(50),
  retention: Duration.days(7),
  asyncCommit: true
}

// Constructors rather than a `"<amount> <unit>"` string: an amount JavaScript prints with an
// exponent (`0.0000001`, a 22-digit number) is no input `Duration.decode` accepts, and it threw.
const nanosPer = (perUnit: number) => (amount: number) => Duration.nanos(BigInt(Math.round(amount * perUnit)))

const units: Record<string, (amount: number) => Duration.Duration> = {
  ns: nanosPer(1), nano: nanosPer(1), nanos: nanosPer(1), nanosecond: nanosPer(1), nanoseconds: nanosPer(1),
  us: nanosPer(1_000), "µs": nanosPer(1_000), micro: nanosPer(1_000), micros: nanosPer(1_000), microsecond: nanosPer(1_000),
  microseconds: nanosPer(1_000),
  ms: Duration.millis, milli: Duration.millis, millis: Duration.millis, millisecond: Duration.millis, milliseconds: Duration.millis,
  s: Duration.seconds, sec: Duration.seconds, second: Duration.seconds, seconds: Duration.seconds,
  m: Duration.minutes, min: Duration.minutes, minute: Duration.minutes, minutes: Duration.minutes,
  h: Duration.hours, hour: Duration.hours, hours: Duration.hours,
  d: Duration.days, day: Duration.days, days: Duration.days,
  w: Duration.weeks, week: Duration.weeks, weeks: Duration.weeks
}

/**
 * A non-negative duration as an operator writes it: `0`, `7 days`, `250 millis`, `12h`, `90s`, and
 * Go's compound form (`1m30s`, `1h15m`, `300ms`: the Go service's settings were Go durations).
 * Unlike `Config.duration` it accepts a bare `0` and refuses a negative value instead of
 * clamping it to zero.
 */
export const parseDuration = (text: string): Option.Option<Duration.Duration> => {
  const trimmed = text.trim()
  if (/^0+(?:\.0+)?$/.test(trimmed)) return Option.some(Duration.zero)
  if (!/^(?:\d+(?:\.\d+)?\s*[a-zµ]+\s*)+$/i.test(trimmed)) return Option.none()
  let total = Duration.zero
  for (const [, amountText, unitText] of trimmed.matchAll(/(\d+(?:\.\d+)?)\s*([a-zµ]+)/gi)) {
    const amount = Number(amountText)
    const known = units[unitText!.toLowerCase()]
    if (known === undefined || !Number.isFinite(amount)) return Option.none()
    // An amount below a nanosecond is no zero the operator wrote (a zero retention journals nothing).
    const duration = known(amount)
    if (amount > 0 && Duration.toNanos(duration).pipe(Option.getOrElse(() => 1n)) === 0n) return Option.none()
    total = Duration.sum(total, duration)
  }
  return Option.some(total)
}

/**
 * A duration setting read with `parseDuration`: `5s` and `1m30s` (Go's form, as the Go service's
 * settings were written) as well as Effect's `5 seconds`.
 */
export const durationConfig = (
  name: string,
  examples = `"5s", "1m30s", "30 seconds" or "250 millis"`
): Config.Config<Duration.Duration> =>
  Config.string(name).pipe(
    Config.mapOrFail((text) =>
      Option.match(parseDuration(text), {
        onNone: () => Either.left(ConfigError.InvalidData([], `expected a duration such as ${examples}, got "${text}"`)),
        onSome: Either.right
      })
    )
  )

/**
 * An integer setting, in decimal digits. Effect's `Config.integer` reads the text as a JavaScript
 * number: an empty variable (`SYNC_OUTBOX_BATCH_SIZE=`, as compose files leave them) is 0, and
 * `0x10` or `1e3` pass as 16 and 1000; here they are refusals that quote what was given.
 */
export const integerConfig = (name: string): Config.Config<number> =>
  Config.string(name).pipe(
    Config.mapOrFail((text) =>
      /^\s*[+-]?\d{1,15}\s*$/.test(text)
        ? Either.right(Number(text))
        : Either.left(ConfigError.InvalidData([], `expected an integer in decimal digits, got "${text}"`))
    )
  )

const maxDuration = Duration.days(3_650)

const channelRe = /^[a-z_][a-z0-9_]{0,62}$/

/** The environment variable (after `SYNC_OUTBOX_`) of each setting. */
const variables: Record<keyof OutboxConfigShape, string> = {
  enabled: "ENABLED",
  interval: "INTERVAL",
  batchSize: "BATCH_SIZE",
  maxRetries: "MAX_RETRIES",
  leaseDuration: "LEASE",
  backoffBase: "BACKOFF_BASE",
  backoffCap: "BACKOFF_CAP",
  concurrency: "CONCURRENCY",
  channel: "CHANNEL",
  pollOnly: "POLL_ONLY",
  callTimeout: "CALL_TIMEOUT",
  probeBase: "PROBE_BASE",
  probeCap: "PROBE_CAP",
  retention: "RETENTION",
  asyncCommit: "ASYNC_COMMIT"
}

/** Check a configuration; every rule says which value is wrong and why. */
export const validate = (config: OutboxConfigShape): Effect.Effect<OutboxConfigShape, InvalidConfig> => {
  const problems: Array<string> = []
  // Each rule names the field and the variable that sets it: a user of the library sees the
  // first, an operator the second.
  const named = (name: keyof OutboxConfigShape) => `${name} (SYNC_OUTBOX_${variables[name]})`
  // Every duration is a timer or a time the worker computes (a lease's end, a retry's due time):
  // under a millisecond, a lease would end as it is written (two workers on one key); past
  // 3650 days, `now + it` is no valid date and every claim, or every failure's record, fails.
  const positive = (name: keyof OutboxConfigShape, d: Duration.Duration) => {
    if (!Duration.isFinite(d) || Duration.toMillis(d) <= 0) problems.push(`${named(name)} must be a positive, finite duration`)
    else if (Duration.toMillis(d) < 1) problems.push(`${named(name)} must be at least 1 millis, got ${Duration.format(d)}`)
    else if (Duration.greaterThan(d, maxDuration)) problems.push(`${named(name)} must be at most 3650 days, got ${Duration.format(d)}`)
  }
  const integer = (name: keyof OutboxConfigShape, n: number, min: number, max: number) => {
    if (!Number.isInteger(n) || n < min || n > max) problems.push(`${named(name)} must be an integer from ${min} to ${max}, got ${n}`)
  }
  positive("interval", config.interval)
  positive("leaseDuration", config.leaseDuration)
  positive("backoffBase", config.backoffBase)
  positive("backoffCap", config.backoffCap)
  positive("callTimeout", config.callTimeout)
  positive("probeBase", config.probeBase)
  positive("probeCap", config.probeCap)
  // A poll of a few microseconds would run hundreds of idle transactions a second.
  if (Duration.isFinite(config.interval) && Duration.toMillis(config.interval) > 0 && Duration.toMillis(config.interval) < 10) {
    problems.push(`${named("interval")} must be at least 10 millis, got ${Duration.format(config.interval)}`)
  }
  if (!Duration.isFinite(config.retention) || Duration.toMillis(config.retention) < 0) {
    problems.push(`${named("retention")} must be a finite duration, or 0 to keep no journal`)
  } else if (Duration.toMillis(config.retention) > 0 && Duration.toMillis(config.retention) < 1) {
    problems.push(`${named("retention")} must be at least 1 millis, or 0 to keep no journal, got ${Duration.format(config.retention)}`)
  } else if (Duration.greaterThan(config.retention, maxDuration)) {
    problems.push(`${named("retention")} must be at most 3650 days, got ${Duration.format(config.retention)}`)
  }
  integer("batchSize", config.batchSize, 1, 10_000)
  integer("maxRetries", config.maxRetries, 1, 1_000)
  integer("concurrency", config.concurrency, 1, 10_000)
  if (Duration.lessThan(config.backoffCap, config.backoffBase)) problems.push(`${named("backoffCap")} must not be below ${named("backoffBase")}`)
  if (Duration.lessThan(config.probeCap, config.probeBase)) problems.push(`${named("probeCap")} must not be below ${named("probeBase")}`)
  if (Duration.lessThanOrEqualTo(config.leaseDuration, config.callTimeout)) {
    problems.push(`${named("leaseDuration")} must exceed ${named("callTimeout")}, or a slow call outlives its lease`)
  }
  if (!channelRe.test(config.channel)) problems.push(`${named("channel")} must be a lower-case SQL identifier, got "${config.channel}"`)
  return problems.length === 0
    ? Effect.succeed(config)
    : Effect.fail(new InvalidConfig({ message: `invalid sync-outbox configuration: ${problems.join("; ")}` }))
}

/** Environment names: SYNC_OUTBOX_ENABLED, SYNC_OUTBOX_INTERVAL, SYNC_OUTBOX_BATCH_SIZE, ... */
export const config: Config.Config<OutboxConfigShape> = Config.all({
  enabled: Config.boolean("ENABLED").pipe(Config.withDefault(defaults.enabled)),
  interval: durationConfig("INTERVAL").pipe(Config.withDefault(defaults.interval)),
  batchSize: integerConfig("BATCH_SIZE").pipe(Config.withDefault(defaults.batchSize)),
  maxRetries: integerConfig("MAX_RETRIES").pipe(Config.withDefault(defaults.maxRetries)),
  leaseDuration: durationConfig("LEASE").pipe(Config.withDefault(defaults.leaseDuration)),
  backoffBase: durationConfig("BACKOFF_BASE").pipe(Config.withDefault(defaults.backoffBase)),
  backoffCap: durationConfig("BACKOFF_CAP").pipe(Config.withDefault(defaults.backoffCap)),
  concurrency: integerConfig("CONCURRENCY").pipe(Config.withDefault(defaults.concurrency)),
  channel: Config.string("CHANNEL").pipe(Config.withDefault(defaults.channel)),
  pollOnly: Config.boolean("POLL_ONLY").pipe(Config.withDefault(defaults.pollOnly)),
  callTimeout: durationConfig("CALL_TIMEOUT").pipe(Config.withDefault(defaults.callTimeout)),
  probeBase: durationConfig("PROBE_BASE").pipe(Config.withDefault(defaults.probeBase)),
  probeCap: durationConfig("PROBE_CAP").pipe(Config.withDefault(defaults.probeCap)),
  retention: durationConfig("RETENTION", `"7 days", "12h" or 0`).pipe(Config.withDefault(defaults.retention)),
  asyncCommit: Config.boolean("ASYNC_COMMIT").pipe(Config.withDefault(defaults.asyncCommit))
}).pipe(Config.nested("SYNC_OUTBOX"))

export class OutboxConfig extends Context.Tag("sync-outbox/OutboxConfig")<OutboxConfig, OutboxConfigShape>() {
  /** Defaults overridden by the given values, validated. */
  static readonly layer = (overrides: Partial<OutboxConfigShape> = {}): Layer.Layer<OutboxConfig, InvalidConfig> =>
    Layer.effect(OutboxConfig, validate({ ...defaults, ...overrides }))

  /** Read from the environment (or the given `Config`), validated. */
  static readonly layerConfig = (
    from: Config.Config<OutboxConfigShape> = config
  ): Layer.Layer<OutboxConfig, InvalidConfig> =>
    Layer.effect(
      OutboxConfig,
      from.pipe(
        Effect.mapError((error) => new InvalidConfig({ message: `invalid sync-outbox configuration: ${String(error)}` })),
        Effect.flatMap(validate)
      )
    )
}
