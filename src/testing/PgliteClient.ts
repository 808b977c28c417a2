/**
 * A `SqlClient` over PGlite (Postgres compiled to WASM, in this process), built like
 * `@effect/sql-pg`'s `PgClient`: same statement compiler, same result shapes. No maintained
 * PGlite client exists for the `@effect/sql` 0.52 line, hence this one.
 *
 * PGlite is one session. A transaction must own it from BEGIN to COMMIT, or another fiber's
 * statement (the worker's claim) would run inside the caller's transaction: a one-permit
 * semaphore is held per statement outside a transaction and for the whole of a transaction.
 *
 * `@electric-sql/pglite` is an optional peer dependency, loaded on first use: code that never
 * imports `sync-outbox/testing` never pays for it.
 */
import * as Reactivity from "@effect/experimental/Reactivity"
import { SqlClient, SqlError } from "@effect/sql"
import type { SqlConnection } from "@effect/sql"
import { PgClient } from "@effect/sql-pg"
import { Context, Data, Effect, Layer, Stream } from "effect"
import * as InFlight from "../InFlight.js"

/** The part of PGlite's API this client uses (kept structural: no type import of an optional peer). */
export interface PgliteDatabase {
  readonly query: <T>(query: string, params?: Array<unknown>, options?: { readonly rowMode?: "object" | "array" }) => Promise<PgliteResults<T>>
  readonly exec: (query: string) => Promise<Array<PgliteResults<unknown>>>
  readonly close: () => Promise<void>
}

export interface PgliteResults<T> {
  readonly rows: Array<T>
  readonly affectedRows?: number
  readonly rowCount?: number
  readonly command?: string
  readonly fields: Array<{ readonly name: string; readonly dataTypeID: number }>
}

/** `@electric-sql/pglite` is not installed: `sync-outbox/testing` needs it as a dev dependency. */
export class PgliteMissing extends Data.TaggedError("PgliteMissing")<{ readonly cause: unknown }> {
  override get message() {
    return "sync-outbox/testing runs the outbox's SQL on PGlite: install it with `npm install -D @electric-sql/pglite@^0.5`"
  }
}

// What node-postgres returns, so that code behaves the same against either: int8 as a string
// (it may not fit a double). Timestamps, json, ±infinity already agree.
const INT8 = 20

/** What `createWith` needs of the `@electric-sql/pglite` module. */
export interface PgliteModule {
  readonly PGlite: { readonly create: (options: Record<string, unknown>) => Promise<unknown> }
}

const loadPglite = (): Promise<PgliteModule> => import("@electric-sql/pglite") as Promise<unknown> as Promise<PgliteModule>

/**
 * Start a fresh, empty PGlite database in memory, tuned for tests (no fsync), from the module
 * `load` gives (by default the installed `@electric-sql/pglite`).
 */
export const createWith = (load: () => Promise<PgliteModule>): Effect.Effect<PgliteDatabase, PgliteMissing | SqlError.SqlError> =>
  Effect.gen(function*() {
    const module = yield* Effect.tryPromise({ try: load, catch: (cause) => cause }).pipe(
      Effect.mapError((cause): PgliteMissing | SqlError.SqlError =>
        (cause as { code?: unknown } | null)?.code === "ERR_MODULE_NOT_FOUND"
          ? new PgliteMissing({ cause })
          : new SqlError.SqlError({ cause, message: "PGlite could not be loaded" })
      )
    )
    return yield* Effect.tryPromise({
      try: () =>
        module.PGlite.create({
          parsers: { [INT8]: (value: string) => value },
          // A database for tests, gone with the process: durability is not worth its cost here.
          relaxedDurability: true,
          postgresqlconf: ["fsync = off", "synchronous_commit = off", "full_page_writes = off"]
        }) as Promise<PgliteDatabase>,
      catch: (cause) => new SqlError.SqlError({ cause, message: "PGlite failed to start" })
    })
  })

/** Start a fresh, empty PGlite database in memory, tuned for tests (no fsync). */
export const create: Effect.Effect<PgliteDatabase, PgliteMissing | SqlError.SqlError> = createWith(loadPglite)

const failed = (cause: unknown) => new SqlError.SqlError({ cause, message: "Failed to execute statement" })

/** What `pg` gives for `.raw`: one result object, or one per statement of a multi-statement text. */
const rawOf = (r: PgliteResults<unknown>) => ({
  command: r.command,
  rows: r.rows,
  rowCount: r.affectedRows ?? r.rowCount ?? r.rows.length,
  fields: r.fields
})

const makeConnection = (db: PgliteDatabase): SqlConnection.Connection => {
  // Parameters force the extended protocol (one statement); without any, the simple protocol
  // runs a whole script, as node-postgres does (migrations are files of many statements).
  const runAll = (sql: string, params: ReadonlyArray<unknown>) =>
    Effect.tryPromise({
      // Counted while it runs: the driver moves no time while a statement (a handler's too) is running.
      try: async (): Promise<Array<PgliteResults<unknown>>> =>
        params.length === 0 ? InFlight.counted(db.exec(sql)) : [await InFlight.counted(db.query(sql, params as Array<unknown>))],
      catch: failed
    })
  const run = (sql: string, params: ReadonlyArray<unknown>) =>
    Effect.map(runAll(sql, params), (results): ReadonlyArray<any> =>
      results.length === 1 ? results[0]!.rows : results.map((r) => r.rows))
  const execute = (
    sql: string,
    params: ReadonlyArray<unknown>,
    transformRows: (<A extends object>(row: ReadonlyArray<A>) => ReadonlyArray<A>) | undefined
  ) => (transformRows ? Effect.map(run(sql, params), transformRows) : run(sql, params))
  return {
    execute,
    executeRaw: (sql, params) =>
      Effect.map(runAll(sql, params), (results) => (results.length === 1 ? rawOf(results[0]!) : results.map(rawOf))),
    executeStream: (sql, params, transformRows) => Stream.flatMap(execute(sql, params, transformRows), Stream.fromIterable),
    executeValues: (sql, params) =>
      Effect.tryPromise({
        try: () => InFlight.counted(db.query<ReadonlyArray<unknown>>(sql, params as Array<unknown>, { rowMode: "array" })),
        catch: failed
      }).pipe(Effect.map((r) => r.rows)),
    executeUnprepared: execute
  }
}

/** The same connection, each statement taking the session for itself. */
const locked = (conn: SqlConnection.Connection, lock: Effect.Semaphore): SqlConnection.Connection => ({
  execute: (sql, params, transform) => lock.withPermits(1)(conn.execute(sql, params, transform)),
  executeRaw: (sql, params) => lock.withPermits(1)(conn.executeRaw(sql, params)),
  executeStream: (sql, params, transform) =>
    Stream.unwrapScoped(Effect.as(Effect.acquireRelease(lock.take(1), () => lock.release(1)), conn.executeStream(sql, params, transform))),
  executeValues: (sql, params) => lock.withPermits(1)(conn.executeValues(sql, params)),
  executeUnprepared: (sql, params, transform) => lock.withPermits(1)(conn.executeUnprepared(sql, params, transform))
})

/** A `SqlClient` over an open PGlite database; closing is the owner's business. */
export const make = (db: PgliteDatabase): Effect.Effect<SqlClient.SqlClient, never, Reactivity.Reactivity> =>
  Effect.gen(function*() {
    const lock = yield* Effect.makeSemaphore(1)
    const conn = makeConnection(db)
    return yield* SqlClient.make({
      acquirer: Effect.succeed(locked(conn, lock)),
      // Held from BEGIN to COMMIT/ROLLBACK: nothing else reaches the session meanwhile.
      transactionAcquirer: Effect.as(Effect.acquireRelease(lock.take(1), () => lock.release(1)), conn),
      compiler: PgClient.makeCompiler(),
      spanAttributes: [["db.system.name", "postgresql"], ["db.namespace", "pglite"]]
    })
  })

/** The open PGlite database behind a test layer, for tests that want PGlite's own API. */
export class Pglite extends Context.Tag("sync-outbox/testing/Pglite")<Pglite, PgliteDatabase>() {}

/** A `SqlClient` over the `Pglite` in context. */
export const layer: Layer.Layer<SqlClient.SqlClient, never, Pglite> = Layer.effect(
  SqlClient.SqlClient,
  Effect.flatMap(Pglite, make)
).pipe(Layer.provide(Reactivity.layer))
