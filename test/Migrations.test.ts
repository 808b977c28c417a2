import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { createDatabase } from "../scripts/services.js"
import { Migrations } from "../src/index.js"
import { postgresUrl, sqlLayer } from "./support/harness.js"

const emptyDatabase = (label: string) =>
  Effect.promise(() => createDatabase(postgresUrl(), `so_mig_${label}_${Math.random().toString(36).slice(2, 8)}`))

describe("Migrations", () => {
  it.live("applies each file once, in order, and records it in sync_outbox_migrations", () =>
    Effect.gen(function*() {
      const url = yield* emptyDatabase("once")
      const first = yield* Migrations.run(["outbox"]).pipe(Effect.provide(sqlLayer(url)))
      expect(first).toEqual(Migrations.load("outbox").map((m) => m.name))
      expect(first[0]).toBe("outbox/0001_outbox.sql")
      const second = yield* Migrations.run(["outbox"]).pipe(Effect.provide(sqlLayer(url)))
      expect(second).toEqual([])
      const rows = yield* Effect.flatMap(SqlClient.SqlClient, (sql) => sql<{ name: string }>`SELECT name FROM sync_outbox_migrations ORDER BY name`)
        .pipe(Effect.provide(sqlLayer(url)))
      expect(rows.map((r) => r.name)).toEqual(first)
    }))

  it.live("two processes migrating at once serialise on the advisory lock: each file applied exactly once", () =>
    Effect.gen(function*() {
      const url = yield* emptyDatabase("race")
      const results = yield* Effect.all(
        Array.from({ length: 4 }, () => Migrations.run(["outbox"]).pipe(Effect.provide(sqlLayer(url)))),
        { concurrency: "unbounded" }
      )
      const applied = results.flat()
      expect(applied.sort()).toEqual(Migrations.load("outbox").map((m) => m.name).sort())
    }))

  it.live("a database that cannot be reached is a typed SqlError, not a crash", () =>
    Effect.gen(function*() {
      const error = yield* Migrations.run().pipe(
        Effect.provide(sqlLayer("postgres://postgres@127.0.0.1:1/nowhere")),
        Effect.flip
      )
      expect(error._tag).toBe("SqlError")
      expect(error.message).toContain("cannot connect to Postgres")
    }))

  it.live("a folder moved away (a bundle) is a MigrationError naming the option; the option and the variable point at it", () =>
    Effect.gen(function*() {
      const url = yield* emptyDatabase("dir")
      const missing = yield* Migrations.run(["outbox"], { directory: "/nonexistent/migrations" }).pipe(
        Effect.provide(sqlLayer(url)),
        Effect.flip
      )
      expect(missing._tag).toBe("MigrationError")
      expect(missing.message).toContain("/nonexistent/migrations/outbox not found")
      expect(missing.message).toContain("SYNC_OUTBOX_MIGRATIONS_DIR")
      const applied = yield* Migrations.run(["outbox"], { directory: Migrations.migrationsDirectory }).pipe(Effect.provide(sqlLayer(url)))
      expect(applied).toEqual(Migrations.load("outbox").map((m) => m.name))
      expect(Migrations.directoryOf({ directory: "relative/x" })).toBe(`${process.cwd()}/relative/x`)
    }))

  it.live("verify names the missing tables and the command that creates them; applied lists what ran", () =>
    Effect.gen(function*() {
      const url = yield* emptyDatabase("verify")
      const layer = sqlLayer(url)
      expect(yield* Migrations.applied.pipe(Effect.provide(layer))).toEqual([])
      const before = yield* Migrations.verify(["outbox"]).pipe(Effect.provide(layer), Effect.flip)
      expect(before._tag).toBe("MigrationError")
      expect(before.message).toContain("sync_outbox")
      expect(before.message).toContain("run `sync-outbox migrate`")
      yield* Migrations.run(["outbox"]).pipe(Effect.provide(layer))
      yield* Migrations.verify(["outbox"]).pipe(Effect.provide(layer))
      const controlPlane = yield* Migrations.verify(["outbox", "control-plane"]).pipe(Effect.provide(layer), Effect.flip)
      expect(controlPlane.message).toContain("run `sync-outbox migrate --control-plane`")
      expect(yield* Migrations.applied.pipe(Effect.provide(layer))).toEqual(Migrations.load("outbox").map((m) => m.name))
    }))

  it.live("verify catches an upgrade that skipped migrate: a file of this release not applied is named", () =>
    Effect.gen(function*() {
      const url = yield* emptyDatabase("upgrade")
      const layer = sqlLayer(url)
      yield* Migrations.run(["outbox"]).pipe(Effect.provide(layer))
      const newest = Migrations.load("outbox").at(-1)!.name
      // As a database migrated by the previous release would be: the newest file not recorded.
      yield* Effect.flatMap(SqlClient.SqlClient, (sql) => sql`DELETE FROM sync_outbox_migrations WHERE name = ${newest}`)
        .pipe(Effect.provide(layer))
      const error = yield* Migrations.verify(["outbox"]).pipe(Effect.provide(layer), Effect.flip)
      expect(error.message).toBe(`this database lacks migration ${newest}: run \`sync-outbox migrate\` (or Migrations.run())`)
    }))
})
