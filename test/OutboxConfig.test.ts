import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Duration, Effect, Layer } from "effect"
import { Database, Journal, OutboxConfig } from "../src/index.js"

const fromEnv = (env: Record<string, string>) =>
  OutboxConfig.pipe(
    Effect.provide(OutboxConfig.layerConfig().pipe(Layer.provide(Layer.setConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(env)), { pathDelim: "_" })))))
  )

describe("OutboxConfig", () => {
  it.effect("defaults to the Go service's values where it had them", () =>
    Effect.gen(function*() {
      const config = yield* fromEnv({})
      expect(config.enabled).toBe(true)
      expect(Duration.toMillis(config.interval)).toBe(5_000)
      expect(config.batchSize).toBe(200)
      expect(config.maxRetries).toBe(10)
      expect(config.channel).toBe("sync_outbox")
      expect(config.pollOnly).toBe(false)
      expect(config.asyncCommit).toBe(true)
    }))

  it.effect("reads every SYNC_OUTBOX_* name", () =>
    Effect.gen(function*() {
      const config = yield* fromEnv({
        SYNC_OUTBOX_ENABLED: "false",
        SYNC_OUTBOX_INTERVAL: "2 seconds",
        SYNC_OUTBOX_BATCH_SIZE: "500",
        SYNC_OUTBOX_MAX_RETRIES: "4",
        SYNC_OUTBOX_LEASE: "1 minute",
        SYNC_OUTBOX_BACKOFF_BASE: "50 millis",
        SYNC_OUTBOX_BACKOFF_CAP: "10 seconds",
        SYNC_OUTBOX_CONCURRENCY: "8",
        SYNC_OUTBOX_CHANNEL: "cp_sync",
        SYNC_OUTBOX_POLL_ONLY: "true",
        SYNC_OUTBOX_ASYNC_COMMIT: "false"
      })
      expect(config).toMatchObject({ enabled: false, batchSize: 500, maxRetries: 4, concurrency: 8, channel: "cp_sync", pollOnly: true, asyncCommit: false })
      expect(Duration.toMillis(config.interval)).toBe(2_000)
      expect(Duration.toMillis(config.leaseDuration)).toBe(60_000)
      expect(Duration.toMillis(config.backoffBase)).toBe(50)
      expect(Duration.toMillis(config.backoffCap)).toBe(10_000)
    }))

  it.effect("reads durations as Go writes them (the Go service's settings were Go durations), and as Effect does", () =>
    Effect.gen(function*() {
      const config = yield* fromEnv({
        SYNC_OUTBOX_INTERVAL: "5s",
        SYNC_OUTBOX_LEASE: "1m30s",
        SYNC_OUTBOX_BACKOFF_BASE: "250ms",
        SYNC_OUTBOX_BACKOFF_CAP: "1h15m",
        SYNC_OUTBOX_CALL_TIMEOUT: "10 seconds",
        SYNC_OUTBOX_PROBE_BASE: "1500us",
        SYNC_OUTBOX_PROBE_CAP: "2.5s"
      })
      expect(Duration.toMillis(config.interval)).toBe(5_000)
      expect(Duration.toMillis(config.leaseDuration)).toBe(90_000)
      expect(Duration.toMillis(config.backoffBase)).toBe(250)
      expect(Duration.toMillis(config.backoffCap)).toBe(75 * 60_000)
      expect(Duration.toMillis(config.callTimeout)).toBe(10_000)
      expect(Duration.toMillis(config.probeBase)).toBe(1.5)
      expect(Duration.toMillis(config.probeCap)).toBe(2_500)
      const error = yield* Effect.flip(fromEnv({ SYNC_OUTBOX_LEASE: "1 fortnight" }))
      expect(error.message).toContain(`expected a duration such as "5s", "1m30s", "30 seconds" or "250 millis", got "1 fortnight"`)
    }))

  it.effect.each([
    [{ SYNC_OUTBOX_BATCH_SIZE: "many" }, "BATCH_SIZE"],
    [{ SYNC_OUTBOX_BATCH_SIZE: "0" }, "batchSize (SYNC_OUTBOX_BATCH_SIZE) must be an integer from 1"],
    // Read as JavaScript numbers, these were 0, 16 and 1000: an integer is decimal digits.
    [{ SYNC_OUTBOX_BATCH_SIZE: "" }, `expected an integer in decimal digits, got ""`],
    [{ SYNC_OUTBOX_CONCURRENCY: "0x10" }, `expected an integer in decimal digits, got "0x10"`],
    [{ SYNC_OUTBOX_MAX_RETRIES: "1e3" }, `expected an integer in decimal digits, got "1e3"`],
    [{ SYNC_OUTBOX_MAX_RETRIES: "-3" }, "maxRetries"],
    [{ SYNC_OUTBOX_INTERVAL: "soon" }, "INTERVAL"],
    [{ SYNC_OUTBOX_BACKOFF_BASE: "10 seconds", SYNC_OUTBOX_BACKOFF_CAP: "1 second" }, "backoffCap (SYNC_OUTBOX_BACKOFF_CAP) must not be below backoffBase (SYNC_OUTBOX_BACKOFF_BASE)"],
    [{ SYNC_OUTBOX_LEASE: "1 second" }, "leaseDuration (SYNC_OUTBOX_LEASE) must exceed callTimeout (SYNC_OUTBOX_CALL_TIMEOUT)"],
    [{ SYNC_OUTBOX_CHANNEL: "Robert'); DROP TABLE" }, "channel (SYNC_OUTBOX_CHANNEL) must be a lower-case SQL identifier"],
    [{ SYNC_OUTBOX_INTERVAL: "1 nanos" }, "interval (SYNC_OUTBOX_INTERVAL) must be at least 10 millis"],
    [{ SYNC_OUTBOX_RETENTION: "999999999 days" }, "retention (SYNC_OUTBOX_RETENTION) must be at most 3650 days"],
    // Amounts JavaScript prints with an exponent: a typed refusal, not a defect.
    [{ SYNC_OUTBOX_RETENTION: "100000000000000000000000 days" }, "retention (SYNC_OUTBOX_RETENTION) must be at most 3650 days"],
    [{ SYNC_OUTBOX_RETENTION: "0.0000001 millis" }, "expected a duration such as"],
    [{ SYNC_OUTBOX_RETENTION: "0.5 millis" }, "retention (SYNC_OUTBOX_RETENTION) must be at least 1 millis"],
    // A lease's end (now + lease) past the last valid date: every claim would fail, at run time.
    [{ SYNC_OUTBOX_LEASE: "100000000 days" }, "leaseDuration (SYNC_OUTBOX_LEASE) must be at most 3650 days"],
    [{ SYNC_OUTBOX_BACKOFF_CAP: "100000000 days" }, "backoffCap (SYNC_OUTBOX_BACKOFF_CAP) must be at most 3650 days"],
    // A lease that ends as it is written lets a second worker take the key at once.
    [{ SYNC_OUTBOX_LEASE: "2 nanos", SYNC_OUTBOX_CALL_TIMEOUT: "1 nanos" }, "leaseDuration (SYNC_OUTBOX_LEASE) must be at least 1 millis"],
    [{ SYNC_OUTBOX_ENABLED: "maybe" }, "ENABLED"],
    [{ SYNC_OUTBOX_ASYNC_COMMIT: "sometimes" }, "ASYNC_COMMIT"]
  ] as const)("a bad value fails at startup with InvalidConfig naming it: %o", ([env, fragment]) =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(fromEnv(env))
      expect(error._tag).toBe("InvalidConfig")
      expect(error.message).toContain(fragment)
    }))

  it.effect("journal queries read durations the same way: a huge or tiny amount is a typed refusal, not a defect", () =>
    Effect.gen(function*() {
      for (const since of ["100000000000000000000000 days", "0.0000001 millis", "1000000000 days", "99999999d"]) {
        const error = yield* Effect.flip(Journal.parseSince(since))
        expect(error._tag).toBe("InvalidJournalQuery")
      }
    }))

  it.effect("layer() validates overrides too", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(OutboxConfig.pipe(Effect.provide(OutboxConfig.layer({ concurrency: 0 }))))
      expect(error.message).toContain("concurrency")
    }))

  it.effect.each([
    [{ SYNC_OUTBOX_DB_MAX_CONNECTIONS: "0" }, "SYNC_OUTBOX_DB_MAX_CONNECTIONS"],
    [{ SYNC_OUTBOX_DB_MAX_CONNECTIONS: "-2" }, "SYNC_OUTBOX_DB_MAX_CONNECTIONS"],
    [{ SYNC_OUTBOX_DB_STATEMENT_TIMEOUT: "0 millis" }, "SYNC_OUTBOX_DB_STATEMENT_TIMEOUT"]
  ] as const)("the database pool refuses %o with InvalidConfig before connecting", ([env, fragment]) =>
    Effect.gen(function*() {
      const error = yield* Layer.build(Database.layerConfig()).pipe(
        Effect.scoped,
        Effect.flip,
        Effect.provide(Layer.setConfigProvider(ConfigProvider.fromMap(new Map(Object.entries({
          // Nothing listens there: the check must come before any connection attempt.
          DATABASE_URL: "postgres://nobody@127.0.0.1:1/none",
          ...env
        })))))
      )
      expect(error._tag).toBe("InvalidConfig")
      expect(error.message).toContain(fragment)
    }))

  it.effect("an empty or non-decimal pool size is a ConfigError quoting it, not a pool of 0 or 16", () =>
    Effect.gen(function*() {
      for (const text of ["", "0x10"]) {
        const error = yield* Layer.build(Database.layerConfig()).pipe(
          Effect.scoped,
          Effect.flip,
          Effect.provide(Layer.setConfigProvider(ConfigProvider.fromMap(new Map(Object.entries({
            DATABASE_URL: "postgres://nobody@127.0.0.1:1/none",
            SYNC_OUTBOX_DB_MAX_CONNECTIONS: text
          })))))
        )
        expect(error._tag).toBe("ConfigError")
        expect(String(error)).toContain(`SYNC_OUTBOX_DB_MAX_CONNECTIONS`)
        expect(String(error)).toContain(`got "${text}"`)
      }
    }))
})
