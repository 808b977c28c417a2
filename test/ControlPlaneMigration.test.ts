/**
 * Migration 0002 (ez-api's contract) on a database where 0001 was applied long ago and holds
 * rows: shipped files are never edited, so 0002 must carry those rows over as they are.
 */
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { createDatabase } from "../scripts/services.js"
import { Migrations } from "../src/index.js"
import { ControlPlane } from "../src/ezapi/index.js"
import { postgresUrl, sqlLayer } from "./support/harness.js"

describe("control-plane migration 0002", () => {
  it.live("backfills issued_at_epoch from the master, keeps old rows, and checks new ones", () =>
    Effect.gen(function*() {
      const url = yield* Effect.promise(() => createDatabase(postgresUrl(), `so_cp_0002_${Math.random().toString(36).slice(2, 8)}`))
      yield* Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        yield* Migrations.run(["outbox"])
        // 0001 as a user applied it before 0002 existed.
        const [first] = Migrations.load("control-plane")
        yield* sql.unsafe(first!.sql).raw
        yield* sql`INSERT INTO sync_outbox_migrations (name) VALUES (${first!.name})`
        const [m] = yield* sql<{ id: number }>`INSERT INTO cp_masters (name, epoch) VALUES ('old', 7) RETURNING id::float8 AS id`
        yield* sql`INSERT INTO cp_keys (master_id, token_hash) VALUES (${m!.id}, ${ControlPlane.tokenHash("old-key")})`
        const [g] = yield* sql<{ id: number }>`INSERT INTO cp_provider_groups (name, type) VALUES ('g', 'openai') RETURNING id::float8 AS id`
        // Rows 0002 would refuse today: they stay, untouched.
        yield* sql`INSERT INTO cp_bindings (namespace, public_model, group_id) VALUES ('a.b', 'm', ${g!.id})`
        yield* sql`INSERT INTO cp_models (name) VALUES ('.odd')`

        expect(yield* Migrations.run(["outbox", "control-plane"])).toEqual(["control-plane/0002_ez_api_contract.sql"])
        const [key] = yield* sql<{ issued_at_epoch: number }>`SELECT issued_at_epoch FROM cp_keys`
        expect(key!.issued_at_epoch).toBe(7)
        expect((yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM cp_bindings`)[0]!.n).toBe(1)

        // New keys take their master's epoch at issue, unless given one.
        yield* sql`UPDATE cp_masters SET epoch = 9`
        const id = yield* ControlPlane.createKey({ masterId: m!.id, secret: "new-key" })
        expect((yield* ControlPlane.getKey(id)).pipe((o) => (o._tag === "Some" ? o.value.issuedAtEpoch : -1))).toBe(9)
        // Unroutable names are refused from now on.
        expect(yield* Effect.flip(ControlPlane.createBinding({ namespace: "x.y", publicModel: "m", groupId: g!.id }))).toMatchObject({
          _tag: "SqlError"
        })
        expect(yield* Effect.flip(ControlPlane.createModel({ name: "ns." }))).toMatchObject({ _tag: "SqlError" })
        // Both fences exist.
        expect((yield* sql<{ name: string }>`SELECT name FROM cp_snapshot_fences ORDER BY name`).map((r) => r.name)).toEqual(["bindings", "providers"])
      }).pipe(Effect.provide(sqlLayer(url)))
    }), 60_000)
})
