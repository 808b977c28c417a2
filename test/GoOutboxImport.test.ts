/**
 * The README's statement that carries the Go service's pending rows (`sync_outboxes`, text
 * payload, status pending/failed) into this outbox, run as it stands in the README.
 */
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { readFileSync } from "node:fs"
import { beforeAll } from "vitest"
import { Store } from "../src/index.js"
import { Dispatch, Projector } from "../src/ezapi/index.js"
import { countRows, eventually, freshDatabase, prefix, sqlLayer, workerLayer } from "./support/harness.js"

const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8")
const statement = /<!-- go-outbox-import -->\s*```sql\n([\s\S]*?)```/.exec(readme)?.[1]

let url: string
beforeAll(async () => {
  url = await freshDatabase("go_import", ["outbox", "control-plane"])
})

describe("carrying the Go service's outbox rows over (README)", () => {
  it.live("pending and failed rows become events with this vocabulary's ordering keys; applied ones stay behind", () =>
    Effect.gen(function*() {
      expect(statement, "the README's go-outbox-import block").toBeDefined()
      const p = prefix()
      const sql = yield* SqlClient.SqlClient
      // model.SyncOutbox as gorm creates it.
      yield* sql`CREATE TABLE sync_outboxes (
        id bigserial PRIMARY KEY, created_at timestamptz, updated_at timestamptz,
        resource_type text, action text, resource_id bigint, payload text,
        retry_count bigint, last_error text, next_retry_at timestamptz, status text)`
      const [m] = yield* sql<{ id: number }>`INSERT INTO cp_masters (name, global_qps) VALUES ('go', 3) RETURNING id::float8 AS id`
      yield* sql`INSERT INTO sync_outboxes (resource_type, action, resource_id, payload, status) VALUES
        (' master ', 'upsert', ${m!.id}, '', 'pending'),
        ('model', 'delete', 9, '{"name":"gone"}', 'failed'),
        ('binding', 'sync', NULL, '', 'pending'),
        ('snapshot', 'sync_all', NULL, '', 'pending'),
        ('snapshot', 'sync_providers', NULL, 'null', 'pending'),
        ('api_key', 'sync_bindings', 4, '', 'pending'),
        ('master', 'update', ${m!.id}, '', 'done')`
      yield* sql.unsafe(statement!).raw
      const rows = yield* sql<{ resource_type: string; action: string; ordering_key: string; coalesce: boolean; payload: unknown }>`
        SELECT resource_type, action, ordering_key, coalesce, payload FROM sync_outbox ORDER BY id`
      expect(rows.map((r) => [r.resource_type, r.action, r.ordering_key, r.coalesce])).toEqual([
        ["master", "upsert", `master:${m!.id}`, true],
        ["model", "delete", "model:gone", true],
        ["binding", "sync", "snapshot:bindings", true],
        ["snapshot", "sync_all", "snapshot:all", true],
        ["snapshot", "sync_providers", "snapshot:providers", true],
        ["api_key", "sync_bindings", "snapshot:bindings", true]
      ])
      expect(rows[1]!.payload).toEqual({ name: "gone" })
      expect((yield* sql<{ status: string }>`SELECT status FROM sync_outboxes`).map((r) => r.status)).toEqual(["done"])

      // And the worker applies every one of them.
      yield* eventually(countRows("pending"), (n) => n === 0, { timeout: 15_000 }).pipe(
        Effect.provide(workerLayer({ url, handlers: Dispatch.layer.pipe(Layer.provideMerge(Projector.layer({ prefix: p }))) })
          .pipe(Layer.provideMerge(Store.layer.pipe(Layer.provideMerge(sqlLayer(url))))))
      )
      expect((yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM sync_outbox`)[0]!.n).toBe(0)
    }).pipe(Effect.provide(sqlLayer(url))), 60_000)
})
