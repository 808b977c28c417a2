/**
 * Applies the plain `.sql` files of `migrations/<set>/` in name order, each once, recorded in
 * `sync_outbox_migrations`. Everything runs in one transaction under an advisory lock, so two
 * processes migrating at once serialise, and a failing file leaves the database as it was.
 *
 * The files ship in the package's `migrations/` folder, found next to this module (`../migrations`
 * from `dist/` or `src/`). A bundle moves this module away from that folder: give the folder's
 * place with the `directory` option or `SYNC_OUTBOX_MIGRATIONS_DIR`, or copy the folder beside the
 * bundle (`<bundle dir>/../migrations`).
 */
import { SqlClient } from "@effect/sql"
import * as Effect from "effect/Effect"
import { existsSync, readdirSync, readFileSync } from "node:fs"
import { join, resolve } from "node:path"
import { fileURLToPath } from "node:url"
import { MigrationError } from "./Errors.js"

/** The sets this package ships. `outbox` is the engine; `control-plane` is ez-api's control-plane domain (`ezapi/`) (opt-in). */
export type MigrationSet = "outbox" | "control-plane"

/** The package's own `migrations/` folder, as seen from this module. */
export const migrationsDirectory: string = fileURLToPath(new URL("../migrations/", import.meta.url))

export interface MigrationOptions {
  /**
   * The folder holding `outbox/` and `control-plane/`. Default: `SYNC_OUTBOX_MIGRATIONS_DIR` when
   * set, else the package's own `migrations/` folder.
   */
  readonly directory?: string | undefined
}

export interface Migration {
  readonly name: string
  readonly sql: string
}

/** Where the migration files are read from, given the options and the environment. */
export const directoryOf = (options: MigrationOptions = {}): string =>
  resolve(options.directory ?? process.env["SYNC_OUTBOX_MIGRATIONS_DIR"] ?? migrationsDirectory)

/**
 * The migrations of one set, in order, as `<set>/<file>`. Throws when the folder is missing;
 * `run` turns that into a `MigrationError` that says how to point at the folder.
 */
export const load = (set: MigrationSet, options: MigrationOptions = {}): ReadonlyArray<Migration> => {
  const dir = join(directoryOf(options), set)
  if (!existsSync(dir)) {
    throw new Error(
      `migrations folder ${dir} not found (bundled? pass the package's migrations/ folder as the \`directory\` option or set SYNC_OUTBOX_MIGRATIONS_DIR)`
    )
  }
  return readdirSync(dir)
    .filter((file) => file.endsWith(".sql"))
    .sort()
    .map((file) => ({ name: `${set}/${file}`, sql: readFileSync(join(dir, file), "utf8") }))
}

const loadAll = (sets: ReadonlyArray<MigrationSet>, options: MigrationOptions) =>
  Effect.try({
    try: () => sets.flatMap((set) => load(set, options)),
    catch: (cause) => new MigrationError({ migration: "(files)", message: describe(cause), cause })
  })

// An arbitrary constant, shared by every process that migrates this database.
const lockKey = 7_351_921_004

/**
 * Apply the pending migrations of the given sets; returns the names applied now (empty when the
 * database was already up to date).
 */
export const run = (
  sets: ReadonlyArray<MigrationSet> = ["outbox"],
  options: MigrationOptions = {}
): Effect.Effect<ReadonlyArray<string>, MigrationError, SqlClient.SqlClient> =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const migrations = yield* loadAll(sets, options)
    const fail = (migration: string, message: string) => (cause: unknown) =>
      new MigrationError({ migration, message: `${message}: ${describe(cause)}`, cause })
    return yield* sql.withTransaction(
      Effect.gen(function*() {
        yield* sql.unsafe(`SELECT pg_advisory_xact_lock(${lockKey})`)
        yield* sql.unsafe(
          `CREATE TABLE IF NOT EXISTS sync_outbox_migrations (
             name text PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
           )`
        )
        const rows = yield* sql.unsafe<{ name: string }>(`SELECT name FROM sync_outbox_migrations`)
        const done = new Set(rows.map((row) => row.name))
        const applied: Array<string> = []
        for (const migration of migrations) {
          if (done.has(migration.name)) continue
          yield* sql.unsafe(migration.sql).raw.pipe(Effect.mapError(fail(migration.name, "failed to apply")))
          yield* sql.unsafe(`INSERT INTO sync_outbox_migrations (name) VALUES ($1)`, [migration.name])
          applied.push(migration.name)
        }
        return applied
      })
    ).pipe(
      Effect.catchTag("SqlError", (error) => Effect.fail(fail("(bookkeeping)", "could not migrate")(error))),
      Effect.withSpan("sync-outbox.migrate")
    )
  })

/** The names recorded as applied, in order; empty when this database was never migrated. */
export const applied: Effect.Effect<ReadonlyArray<string>, MigrationError, SqlClient.SqlClient> = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const [table] = yield* sql.unsafe<{ exists: boolean }>(
    `SELECT to_regclass('sync_outbox_migrations') IS NOT NULL AS exists`
  ).withoutTransform
  if (table?.exists !== true) return []
  const rows = yield* sql.unsafe<{ name: string }>(`SELECT name FROM sync_outbox_migrations ORDER BY name`).withoutTransform
  return rows.map((row) => row.name)
}).pipe(Effect.catchTag("SqlError", (error) => Effect.fail(new MigrationError({ migration: "(bookkeeping)", message: `could not read the applied migrations: ${describe(error)}`, cause: error }))))

/** The tables each set creates, checked by `verify`. */
const tables: Record<MigrationSet, ReadonlyArray<string>> = {
  outbox: ["sync_outbox", "sync_outbox_failures", "sync_outbox_workers"],
  "control-plane": ["cp_masters", "cp_keys", "cp_models", "cp_provider_groups", "cp_api_keys", "cp_bindings"]
}

/**
 * Fail with a `MigrationError` that names the fix when a set's tables are missing. It looks at the
 * tables themselves, not the bookkeeping, so a schema applied with another tool passes.
 */
export const verify = (
  sets: ReadonlyArray<MigrationSet> = ["outbox"]
): Effect.Effect<void, MigrationError, SqlClient.SqlClient> =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    for (const set of sets) {
      const names = tables[set]
      const rows = yield* sql.unsafe<{ name: string }>(
        `SELECT name FROM unnest($1::text[]) AS name WHERE to_regclass(name) IS NULL`,
        [names]
      ).withoutTransform
      if (rows.length > 0) {
        const fix = set === "outbox" ? "run `sync-outbox migrate` (or Migrations.run())" : "run `sync-outbox migrate --control-plane` (or Migrations.run([\"outbox\", \"control-plane\"]))"
        return yield* new MigrationError({
          migration: `${set}/*`,
          message: `${rows.length === 1 ? "table" : "tables"} ${rows.map((r) => r.name).join(", ")} ${rows.length === 1 ? "does" : "do"} not exist in this database: ${fix}`
        })
      }
    }
    // A database our migrator keeps (it has sync_outbox_migrations) must have every file of this
    // release: an upgrade that skipped `migrate` would otherwise fail on its first claim. Files
    // that cannot be found (a bundle without the folder) are not held against it.
    const recorded = yield* sql.unsafe<{ name: string }>(
      `SELECT name FROM sync_outbox_migrations`
    ).withoutTransform.pipe(Effect.orElseSucceed(() => null))
    if (recorded === null) return
    const done = new Set(recorded.map((r) => r.name))
    const pending = sets.flatMap((set) => {
      try {
        return load(set).map((m) => m.name).filter((name) => !done.has(name))
      } catch {
        return []
      }
    })
    if (pending.length > 0) {
      return yield* new MigrationError({
        migration: `${pending[0]!.split("/")[0]}/*`,
        message: `this database lacks ${pending.length === 1 ? "migration" : "migrations"} ${pending.join(", ")}: run \`sync-outbox migrate\` (or Migrations.run())`
      })
    }
  }).pipe(
    Effect.catchTag("SqlError", (error) =>
      Effect.fail(new MigrationError({ migration: "(check)", message: `could not check the schema: ${describe(error)}`, cause: error })))
  )

const describe = (cause: unknown): string => {
  if (typeof cause === "object" && cause !== null && "cause" in cause) {
    const inner = (cause as { cause: unknown }).cause
    if (inner instanceof Error) return inner.message
  }
  return cause instanceof Error ? cause.message : String(cause)
}
