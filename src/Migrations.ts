/**
 * Applies the plain `.sql` files of `migrations/<set>/` in name order, each once, recorded in
 * `sync_outbox_migrations`. Everything runs in one transaction under an advisory lock, so two
 * processes migrating at once serialise, and a failing file leaves the database as it was.
 */
import { SqlClient } from "@effect/sql"
import { Effect } from "effect"
import { readdirSync, readFileSync } from "node:fs"
import { fileURLToPath } from "node:url"
import { MigrationError } from "./Errors.js"

/** The sets this package ships. `outbox` is the engine; `control-plane` is the seed's domain. */
export type MigrationSet = "outbox" | "control-plane"

export const migrationsDirectory: string = fileURLToPath(new URL("../migrations/", import.meta.url))

export interface Migration {
  readonly name: string
  readonly sql: string
}

/** The migrations of one set, in order, as `<set>/<file>`. */
export const load = (set: MigrationSet): ReadonlyArray<Migration> => {
  const dir = `${migrationsDirectory}${set}/`
  return readdirSync(dir)
    .filter((file) => file.endsWith(".sql"))
    .sort()
    .map((file) => ({ name: `${set}/${file}`, sql: readFileSync(`${dir}${file}`, "utf8") }))
}

// An arbitrary constant, shared by every process that migrates this database.
const lockKey = 7_351_921_004

/**
 * Apply the pending migrations of the given sets; returns the names applied now (empty when the
 * database was already up to date).
 */
export const run = (
  sets: ReadonlyArray<MigrationSet> = ["outbox"]
): Effect.Effect<ReadonlyArray<string>, MigrationError, SqlClient.SqlClient> =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const migrations = sets.flatMap(load)
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

const describe = (cause: unknown): string => {
  if (typeof cause === "object" && cause !== null && "cause" in cause) {
    const inner = (cause as { cause: unknown }).cause
    if (inner instanceof Error) return inner.message
  }
  return cause instanceof Error ? cause.message : String(cause)
}
