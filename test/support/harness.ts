/**
 * Shared test plumbing: a database of its own per test file (migrated), layers over the real
 * servers, and small waiting helpers that use real time (tests may run under `TestClock`).
 */
import { SqlClient } from "@effect/sql"
import { Duration, Effect, Layer, Redacted, Schema } from "effect"
import { randomUUID } from "node:crypto"
import { inject } from "vitest"
import { createDatabase } from "../../scripts/services.js"
import {
  Database,
  Handlers,
  type InvalidConfig,
  handle,
  Listener,
  Migrations,
  OutboxConfig,
  OutboxEvent,
  RedisSink,
  Store,
  Worker,
  type OutboxConfigShape
} from "../../src/index.js"

export const postgresUrl = () => inject("postgresUrl")
export const redisUrl = () => inject("redisUrl")

/** A fresh, migrated database; its name says which file made it. */
export const freshDatabase = async (label: string, sets: ReadonlyArray<Migrations.MigrationSet> = ["outbox"]) => {
  const name = `so_${label.replace(/[^a-z0-9]/gi, "_").toLowerCase()}_${randomUUID().slice(0, 8)}`
  const url = await createDatabase(postgresUrl(), name)
  await Effect.runPromise(Migrations.run(sets).pipe(Effect.provide(Database.layer({ url: Redacted.make(url) }))))
  return url
}

export const sqlLayer = (url: string, maxConnections = 10) =>
  Database.layer({ url: Redacted.make(url), maxConnections })

export const redisLayer = (url: string = redisUrl()) =>
  RedisSink.layer({ url: Redacted.make(url), commandTimeout: Duration.seconds(1) })

/** A key prefix no other test uses, on the shared Redis. */
export const prefix = () => `test:${randomUUID().slice(0, 8)}:`

/** The event type most engine tests use: set `<prefix><id>` to the payload's value. */
export const SetValue = OutboxEvent.make({
  resourceType: "thing",
  action: "set",
  payload: Schema.Struct({ key: Schema.String, value: Schema.String }),
  orderingKey: ({ payload }) => `thing:${payload.key}`,
  coalesce: false
})

export const setValueHandler = handle(SetValue, ({ payload }) =>
  Effect.flatMap(RedisSink, (redis) => redis.use((c) => c.set(payload.key, payload.value)))
)

/**
 * A worker over the given database and Redis, with the given handlers and settings.
 * The Listener connects to `url` unless `pollOnly` is set.
 */
export const workerLayer = (options: {
  readonly url: string
  readonly redis?: string | Layer.Layer<RedisSink, InvalidConfig>
  readonly handlers: Layer.Layer<Handlers, never, RedisSink | SqlClient.SqlClient>
  readonly config?: Partial<OutboxConfigShape>
}) => {
  const config = OutboxConfig.layer({ interval: Duration.minutes(1), ...options.config })
  const listener = options.config?.pollOnly === true
    ? Listener.off
    : Listener.layer({ url: Redacted.make(options.url), channel: options.config?.channel ?? "sync_outbox" })
  return Worker.layer.pipe(
    Layer.provideMerge(Layer.mergeAll(Store.layer, listener, options.handlers)),
    Layer.provideMerge(Layer.mergeAll(
      config,
      sqlLayer(options.url),
      typeof options.redis === "object" ? options.redis : redisLayer(options.redis)
    )),
    Layer.orDie
  )
}

/** Wait in real time (not `TestClock` time) until `check` holds. */
export const eventually = <A, E, R>(
  check: Effect.Effect<A, E, R>,
  predicate: (a: A) => boolean,
  options: { readonly timeout?: number; readonly interval?: number } = {}
): Effect.Effect<A, E | Error, R> =>
  Effect.gen(function*() {
    const deadline = Date.now() + (options.timeout ?? 10_000)
    for (;;) {
      const value = yield* check
      if (predicate(value)) return value
      if (Date.now() > deadline) return yield* Effect.fail(new Error(`condition not met in time; last value: ${JSON.stringify(value)}`))
      yield* realSleep(options.interval ?? 10)
    }
  })

export const realSleep = (ms: number) => Effect.promise(() => new Promise<void>((r) => setTimeout(r, ms)))

/** Rows left in the outbox. */
export const countRows = (status?: "pending" | "dead") =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql.unsafe<{ n: number }>(
      status === undefined ? `SELECT count(*)::int AS n FROM sync_outbox` : `SELECT count(*)::int AS n FROM sync_outbox WHERE status = $1`,
      status === undefined ? [] : [status]
    )
  ).pipe(Effect.map((rows) => rows[0]!.n))
