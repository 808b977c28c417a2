/**
 * A `PgClient` (and so a `SqlClient`) whose every call is bounded: a connect timeout, a
 * statement timeout enforced by Postgres and a query timeout enforced by the client, so one hung
 * call (a lock wait, a server that stopped answering) fails in bounded time instead of stalling
 * the worker forever. Broken connections (Postgres restarted, a backend terminated) are dropped
 * from the pool and replaced on the next query.
 */
import { PgClient } from "@effect/sql-pg"
import { type SqlClient, SqlError } from "@effect/sql"
import { Config, Context, Duration, Effect, Layer, Redacted } from "effect"
import pg from "pg"
import { InvalidConfig } from "./Errors.js"
import { durationConfig, integerConfig } from "./OutboxConfig.js"

export interface DatabaseOptions {
  readonly url: Redacted.Redacted
  readonly maxConnections?: number | undefined
  readonly connectTimeout?: Duration.DurationInput | undefined
  readonly statementTimeout?: Duration.DurationInput | undefined
  readonly applicationName?: string | undefined
}

/**
 * The raw `pg` pool behind `layer`'s `PgClient`. The worker's hot statements use it for named
 * prepared statements (planned once per connection instead of on every call); `enqueue` keeps
 * using `SqlClient`, so that it joins the caller's transaction.
 */
export class PgPool extends Context.Tag("sync-outbox/PgPool")<PgPool, pg.Pool>() {}

const makePool = (options: DatabaseOptions) =>
  Effect.acquireRelease(
    Effect.gen(function*() {
      const statementTimeout = Duration.toMillis(options.statementTimeout ?? Duration.seconds(10))
      const pool = new pg.Pool({
        connectionString: Redacted.value(options.url),
        max: options.maxConnections ?? 10,
        connectionTimeoutMillis: Duration.toMillis(options.connectTimeout ?? Duration.seconds(5)),
        statement_timeout: statementTimeout,
        // The client-side bound also covers a server that stopped answering altogether.
        query_timeout: statementTimeout + 1_000,
        keepAlive: true,
        application_name: options.applicationName ?? "sync-outbox"
      })
      // An idle client's socket dying (Postgres restarted) is reported here; the pool already
      // dropped that client, and an unhandled "error" would crash the process.
      pool.on("error", () => undefined)
      // A client handed back while a query of its own is still on the wire (the query timeout
      // gave up on a connection that stopped answering: a hung server, a dropped flow) is closed,
      // not pooled again. @effect/sql-pg releases a client without the query's error, so the pool
      // kept it, handed it out again first, and every later query on it timed out too, forever.
      pool.on("release", (error: Error | undefined, client: pg.PoolClient) => {
        if (error === undefined && hasQueryOnTheWire(client)) void client.end().catch(() => undefined)
      })
      yield* Effect.tryPromise({
        try: () => pool.query("SELECT 1"),
        catch: (cause) => {
          void pool.end().catch(() => undefined)
          return new SqlError.SqlError({ cause, message: `cannot connect to Postgres: ${describe(cause)}` })
        }
      })
      return pool
    }),
    // Interruptible inside: a release runs uninterruptibly, where a timeout would wait for its effect.
    (pool) => Effect.interruptible(Effect.promise(() => pool.end().catch(() => undefined))).pipe(Effect.timeoutOption(Duration.seconds(2)))
  )

export const layer = (
  options: DatabaseOptions
): Layer.Layer<PgClient.PgClient | SqlClient.SqlClient | PgPool, SqlError.SqlError | InvalidConfig> =>
  Layer.unwrapScoped(
    Effect.map(Effect.flatMap(validate(options), makePool), (pool) =>
      PgClient.layerFromPool({
        applicationName: options.applicationName ?? "sync-outbox",
        // The pool's lifetime is this layer's; the client only borrows it.
        acquire: Effect.succeed(pool)
      }).pipe(Layer.merge(Layer.succeed(PgPool, pool))))
  )

/** Check the pool's settings: a pool of no connections would wait forever on its first query. */
export const validate = (options: DatabaseOptions): Effect.Effect<DatabaseOptions, InvalidConfig> => {
  const problems: Array<string> = []
  const max = options.maxConnections
  if (max !== undefined && (!Number.isInteger(max) || max < 1 || max > 10_000)) {
    problems.push(`maxConnections (SYNC_OUTBOX_DB_MAX_CONNECTIONS) must be an integer from 1 to 10000, got ${max}`)
  }
  for (const [name, variable, value] of [
    ["statementTimeout", " (SYNC_OUTBOX_DB_STATEMENT_TIMEOUT)", options.statementTimeout],
    ["connectTimeout", "", options.connectTimeout]
  ] as const) {
    if (value === undefined) continue
    const d = Duration.decode(value)
    if (!Duration.isFinite(d) || Duration.toMillis(d) <= 0) problems.push(`${name}${variable} must be a positive, finite duration`)
  }
  return problems.length === 0
    ? Effect.succeed(options)
    : Effect.fail(new InvalidConfig({ message: `invalid database configuration: ${problems.join("; ")}` }))
}

/**
 * Whether a string is a connection URL node-postgres understands (`postgres://`, `postgresql://`,
 * `socket:`). Anything else (a typo, `base`) would otherwise be taken for a host name.
 */
export const isPostgresUrl = (value: string): boolean => {
  try {
    const url = new URL(value)
    return (url.protocol === "postgres:" || url.protocol === "postgresql:" || url.protocol === "socket:")
  } catch {
    return false
  }
}

/** `DATABASE_URL`, checked to be a Postgres URL (the value is never echoed: it may hold a password). */
export const urlConfig = (name = "DATABASE_URL"): Config.Config<Redacted.Redacted> =>
  Config.redacted(name).pipe(
    Config.validate({
      message: `${name} is not a Postgres URL; expected one such as postgres://user:password@127.0.0.1:5432/app`,
      validation: (url) => isPostgresUrl(Redacted.value(url))
    })
  )

/** DATABASE_URL, SYNC_OUTBOX_DB_MAX_CONNECTIONS, SYNC_OUTBOX_DB_STATEMENT_TIMEOUT. */
export const layerConfig = (
  config: Config.Config<DatabaseOptions> = Config.all({
    url: urlConfig(),
    maxConnections: integerConfig("SYNC_OUTBOX_DB_MAX_CONNECTIONS").pipe(Config.withDefault(10)),
    statementTimeout: durationConfig("SYNC_OUTBOX_DB_STATEMENT_TIMEOUT").pipe(Config.withDefault(Duration.seconds(10)))
  })
) => Layer.unwrapEffect(Effect.map(Effect.flatMap(config, validate), layer))

// pg's own state (pg-pool reads its private fields the same way): a reply still awaited.
const hasQueryOnTheWire = (client: pg.PoolClient): boolean => {
  const active = (client as unknown as { readonly _getActiveQuery?: () => unknown })._getActiveQuery
  return typeof active === "function" && active.call(client) != null
}

const describe = (cause: unknown): string =>
  cause instanceof Error ? (cause.message || (cause as { code?: string }).code || cause.name) : String(cause)
