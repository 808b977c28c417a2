/**
 * Everything a user's test needs to run its outbox code with no server: the real `Worker`, the
 * user's `Handlers`, an in-memory Redis the test controls, and the outbox in one of two stores:
 *
 * - `layerMemory`: the outbox in memory (`MemoryOutbox`), the engine's statements rewritten as
 *   rules over plain rows. No database to start; the store's work is a few milliseconds a test (the
 *   worker and `TestClock` cost the rest: see the README). Its `SqlClient` runs `enqueue` and
 *   transactions, and no other SQL.
 * - `layer`: the real `Store` and the real SQL on PGlite (Postgres in this process), the same
 *   statements as in production, for code that runs SQL of its own. Seconds to start, then a
 *   few hundred milliseconds a test.
 *
 * Both are held to the real store by test/Semantics.test.ts: the same specifications pass on all
 * three. The driver itself (`drain`, `advance`, inspection) is in `Driver`, shared by both.
 */
import { SqlClient, type SqlError } from "@effect/sql"
import * as Reactivity from "@effect/experimental/Reactivity"
import { Context, Data, Duration, Effect, Layer } from "effect"
import { Admin } from "../Admin.js"
import { InvalidConfig, type MigrationError } from "../Errors.js"
import { Leases } from "../Leases.js"
import * as Migrations from "../Migrations.js"
import { OutboxConfig } from "../OutboxConfig.js"
import type { RedisSink } from "../RedisSink.js"
import { Store } from "../Store.js"
import type { Worker } from "../Worker.js"
import {
  assemble,
  type OutboxTestOptions,
  type OutboxTestShape,
  SinkControl,
  sinkLayer,
  sqlRows,
  StoreRows,
  TestSink
} from "./Driver.js"
import * as MemoryOutbox from "./MemoryOutbox.js"
import * as PgliteClient from "./PgliteClient.js"

export {
  DrainTimeout,
  InvalidAdvance,
  SinkControl,
  TestSink
} from "./Driver.js"
export type {
  DrainReport,
  EventSummary,
  FailedAttempt,
  Inspected,
  OutboxRows,
  OutboxTestOptions,
  OutboxTestShape,
  SnapshotRow
} from "./Driver.js"

/** The `schema` given to `OutboxTest.layer` did not apply. */
export class SchemaFailed extends Data.TaggedError("SchemaFailed")<{ readonly cause: unknown }> {
  override get message() {
    return `sync-outbox/testing: the schema given to the test layer failed to apply: ${this.cause instanceof Error ? this.cause.message : String(this.cause)}`
  }
}

// ---------------------------------------------------------------------------------------------
// PGlite: starting it costs a second or more, so a migrated instance is kept per schema and
// handed to the next test with its rows emptied (ids start at 1 again).
// ---------------------------------------------------------------------------------------------

const idle = new Map<string, Array<PgliteClient.PgliteDatabase>>()

const withClient = <A, E>(db: PgliteClient.PgliteDatabase, effect: Effect.Effect<A, E, SqlClient.SqlClient>) =>
  Effect.flatMap(PgliteClient.make(db), (sql) => Effect.provideService(effect, SqlClient.SqlClient, sql)).pipe(
    Effect.provide(Reactivity.layer)
  )

// DELETE rather than TRUNCATE: on tables this small it is far cheaper (TRUNCATE makes new files
// for every table and index). Foreign keys are not checked meanwhile: every table is emptied.
// Every schema but the system's: the test's own tables may live in a schema of the application's.
const resetSql = `
DO $$
DECLARE t record;
BEGIN
  PERFORM set_config('session_replication_role', 'replica', true);
  FOR t IN SELECT schemaname, tablename FROM pg_tables
    WHERE schemaname NOT IN ('pg_catalog', 'information_schema') AND schemaname NOT LIKE 'pg\\_%'
      AND NOT (schemaname = 'public' AND tablename = 'sync_outbox_migrations')
  LOOP
    EXECUTE format('DELETE FROM %I.%I', t.schemaname, t.tablename);
  END LOOP;
  FOR t IN SELECT schemaname, sequencename FROM pg_sequences
    WHERE schemaname NOT IN ('pg_catalog', 'information_schema') AND schemaname NOT LIKE 'pg\\_%'
  LOOP
    PERFORM setval(format('%I.%I', t.schemaname, t.sequencename), 1, false);
  END LOOP;
END $$;
RESET ALL;`

const acquireDatabase = (schema: string) =>
  Effect.acquireRelease(
    Effect.gen(function*() {
      const free = idle.get(schema)?.pop()
      if (free !== undefined) {
        // A transaction a failed test left open would swallow everything after it: end it first.
        yield* Effect.tryPromise({ try: () => free.exec("ROLLBACK"), catch: (cause) => cause }).pipe(Effect.ignore)
        yield* Effect.tryPromise({ try: () => free.exec(resetSql), catch: (cause) => cause }).pipe(Effect.orDie)
        return free
      }
      const db = yield* PgliteClient.create
      yield* Effect.gen(function*() {
        yield* withClient(db, Migrations.run(["outbox"]))
        if (schema.trim() !== "") {
          yield* Effect.tryPromise({
            try: () => db.exec(schema),
            catch: (cause) => new SchemaFailed({ cause })
          })
        }
      }).pipe(Effect.tapError(() => Effect.promise(() => db.close().catch(() => undefined))))
      return db
    }),
    (db) =>
      Effect.sync(() => {
        const list = idle.get(schema)
        if (list === undefined) idle.set(schema, [db])
        else list.push(db)
      })
  )

/** The real `Store` (and the driver's reads) through the `SqlClient` in context. */
const sqlStores = Layer.merge(
  Layer.unwrapEffect(Effect.map(OutboxConfig, (c) => Store.layerWith({ callTimeout: c.callTimeout }))),
  sqlRows
)

/**
 * The test kit on PGlite: the library's SQL on Postgres in this process, the in-memory Redis, the
 * worker and the given handlers. For code that runs SQL of its own (handlers that read your
 * tables, `schema`); otherwise `layerMemory` is the same driver at a fraction of the cost.
 * Provide it to each test (the first in a file starts PGlite; later ones reuse it, emptied).
 */
export const layer = <E, R>(
  options: OutboxTestOptions<E, R>
): Layer.Layer<
  OutboxTest | Worker | Store | SqlClient.SqlClient | RedisSink | TestSink | SinkControl | OutboxConfig | PgliteClient.Pglite,
  E | InvalidConfig | PgliteClient.PgliteMissing | SqlError.SqlError | MigrationError | SchemaFailed,
  Exclude<R, SqlClient.SqlClient | RedisSink>
> => {
  const database = Layer.scoped(PgliteClient.Pglite, acquireDatabase(options.schema ?? ""))
  const sql = PgliteClient.layer.pipe(Layer.provideMerge(database))
  return layerWith(options).pipe(Layer.provideMerge(Layer.merge(sql, sinkLayer))) as never
}

/**
 * The same driver (`drain`, `advance`, inspection) and worker over the `SqlClient`, `RedisSink`
 * and `SinkControl` in context: e.g. a real Postgres and Redis, to hold the test kit to the
 * real thing. Rows are not emptied: that is the caller's business there.
 */
export const layerWith = <E, R>(
  options: Omit<OutboxTestOptions<E, R>, "schema">
): Layer.Layer<
  OutboxTest | Worker | Store | OutboxConfig,
  E | InvalidConfig,
  Exclude<R, SqlClient.SqlClient | RedisSink> | SqlClient.SqlClient | RedisSink | SinkControl
> => assemble(OutboxTest, options, sqlStores) as never

// ---------------------------------------------------------------------------------------------
// In memory
// ---------------------------------------------------------------------------------------------

/** A fresh in-memory outbox, and its `SqlClient`, per build: every test starts empty, ids from 1. */
const memory: Layer.Layer<MemoryOutbox.MemoryOutbox | SqlClient.SqlClient> = Layer.effectContext(
  Effect.gen(function*() {
    const outbox = yield* MemoryOutbox.make
    return Context.make(MemoryOutbox.MemoryOutbox, outbox).pipe(Context.add(SqlClient.SqlClient, yield* outbox.sql))
  })
)

const memoryStores: Layer.Layer<Leases | Admin | Store | StoreRows, never, MemoryOutbox.MemoryOutbox> = Layer.effectContext(
  Effect.map(MemoryOutbox.MemoryOutbox, (outbox) =>
    Context.make(Leases, outbox.leases).pipe(
      Context.add(Admin, outbox.admin),
      Context.add(Store, { ...outbox.leases, ...outbox.admin }),
      Context.add(StoreRows, outbox.rows)
    ))
)

/**
 * The journal is written by the statement that completes an event and pruned with SQL: the
 * in-memory store has neither, so the kit runs the worker with a retention of 0 (no journal),
 * and says so rather than pretend to keep one.
 */
const noJournal = (config: OutboxTestOptions<unknown, unknown>["config"]) =>
  config?.retention !== undefined && Duration.toMillis(config.retention) !== 0
    ? Layer.fail(
      new InvalidConfig({
        message: `sync-outbox/testing: the in-memory outbox keeps no journal, so it runs with retention 0 (got ${
          Duration.format(config.retention)
        }); test journaling on PGlite (OutboxTest.layer)`
      })
    )
    : Layer.empty

/**
 * The test kit in memory: the real worker and your handlers over an in-memory outbox with the
 * engine's semantics (held to the SQL's by the same specifications), and the in-memory Redis.
 * No database to start, the first test included, and no PGlite. Its `SqlClient` runs `enqueue`
 * and `enqueueMany`, in or out of `sql.withTransaction` (a rolled-back transaction enqueues
 * nothing), and refuses any other statement with a `SqlError` that says to use `layer` (PGlite).
 * The worker runs with a retention of 0: no journal.
 */
export const layerMemory = <E, R>(
  options: Omit<OutboxTestOptions<E, R>, "schema">
): Layer.Layer<
  OutboxTest | Worker | Store | SqlClient.SqlClient | RedisSink | TestSink | SinkControl | OutboxConfig | MemoryOutbox.MemoryOutbox,
  E | InvalidConfig,
  Exclude<R, SqlClient.SqlClient | RedisSink>
> => {
  const config = { retention: Duration.zero, ...options.config }
  return assemble(OutboxTest, { ...options, config }, memoryStores).pipe(
    Layer.provideMerge(Layer.mergeAll(memory, sinkLayer, noJournal(options.config)))
  ) as never
}

export class OutboxTest extends Context.Tag("sync-outbox/testing/OutboxTest")<OutboxTest, OutboxTestShape>() {
  /** The test kit on PGlite: the library's SQL on Postgres in this process, for code that runs SQL of its own. */
  static readonly layer = layer
  /** The test kit in memory: no database to start; no SQL but the library's own inserts. */
  static readonly layerMemory = layerMemory
  /** The same driver over the `SqlClient`, `RedisSink` and `SinkControl` in context. */
  static readonly layerWith = layerWith
}
