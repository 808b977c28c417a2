import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Layer, Metric, Redacted } from "effect"
import { Redis } from "ioredis"
import { existsSync, readFileSync, writeFileSync } from "node:fs"
import { afterAll, beforeAll } from "vitest"
import { startRedis } from "../scripts/services.js"
import { enqueue, Metrics, type OutboxEvent, RedisSink, Store } from "../src/index.js"
import { ControlPlane, Events, RedisLayout, SyncHandlers, syncNowOrEnqueue, SyncService } from "../src/sync/index.js"
import * as fixture from "./support/fixture.js"
import { countRows, eventually, freshDatabase, prefix, realSleep, redisUrl, sqlLayer, workerLayer } from "./support/harness.js"
import { startProxy } from "./support/proxy.js"

let url: string
let direct: Redis
beforeAll(async () => {
  url = await freshDatabase("sync", ["outbox", "control-plane"])
  direct = new Redis(redisUrl())
})
afterAll(() => {
  direct.disconnect()
})

const syncLayer = (p: string) => SyncService.layer({ prefix: p })
/** A worker running the sync handlers, writing under prefix `p`, with `SyncService` and Redis at hand. */
const syncWorker = (p: string, options: { redis?: string | Layer.Layer<RedisSink>; config?: Parameters<typeof workerLayer>[0]["config"] } = {}) =>
  workerLayer({
    url,
    ...(options.redis === undefined ? {} : { redis: options.redis }),
    ...(options.config === undefined ? {} : { config: options.config }),
    handlers: SyncHandlers.layer.pipe(Layer.provideMerge(syncLayer(p)))
  }).pipe(Layer.provideMerge(Store.layer.pipe(Layer.provideMerge(sqlLayer(url)))))

const drained = eventually(countRows("pending"), (n) => n === 0, { timeout: 15_000 })
const hgetall = (key: string) => Effect.promise(() => direct.hgetall(key))
const secret = () => `secret-${Math.random().toString(36).slice(2)}`

describe("SyncService through the outbox: one test per resource type and action", () => {
  it.live("master create/update/delete: one hash per master, removed (tombstoned) when the row is gone", () =>
    Effect.gen(function*() {
      const p = prefix()
      yield* Effect.gen(function*() {
        const id = yield* ControlPlane.createMaster({ name: "acme", group: "gold", globalQps: 50, namespaces: ["default", "team-a"] })
        yield* drained
        const created = yield* hgetall(`${p}:master:${id}`)
        expect(created).toEqual({
          id: String(id),
          name: "acme",
          status: "active",
          epoch: "1",
          group: "gold",
          global_qps: "50",
          default_namespace: "default",
          namespaces: `["default","team-a"]`,
          version: created["version"]
        })
        yield* ControlPlane.updateMaster(id, { status: "suspended", epoch: 2 })
        yield* drained
        const updated = yield* hgetall(`${p}:master:${id}`)
        expect(updated).toMatchObject({ status: "suspended", epoch: "2" })
        expect(Number(updated["version"])).toBeGreaterThan(Number(created["version"]))
        yield* ControlPlane.deleteMaster(id)
        yield* drained
        const deleted = yield* hgetall(`${p}:master:${id}`)
        expect(deleted).toEqual({ status: "deleted", version: deleted["version"] })
        expect(yield* Effect.promise(() => direct.pttl(`${p}:master:${id}`))).toBeGreaterThan(0)
      }).pipe(Effect.provide(syncWorker(p)))
    }))

  it.live("key create/update/delete: one hash per token hash; suspended or deleted keys stop authenticating", () =>
    Effect.gen(function*() {
      const p = prefix()
      yield* Effect.gen(function*() {
        const master = yield* ControlPlane.createMaster({ name: "m", epoch: 3 })
        const s = secret()
        const hash = ControlPlane.tokenHash(s)
        const expires = new Date(Date.now() + 3_600_000)
        const id = yield* ControlPlane.createKey({
          masterId: master,
          secret: s,
          group: "gold",
          scopes: ["chat"],
          modelLimits: { "gpt-4o": 100 },
          allowIps: ["10.0.0.0/8"],
          expiresAt: expires,
          quotaLimit: 1000
        })
        yield* drained
        // Only the hash is stored, in the control plane and in Redis.
        const stored = yield* Effect.flatMap(SqlClient.SqlClient, (sql) => sql<{ token_hash: string }>`SELECT token_hash FROM cp_keys`)
        expect(stored.map((r) => r.token_hash)).toContain(hash)
        expect(JSON.stringify(yield* Effect.promise(() => direct.keys(`${p}:*`)))).not.toContain(s)
        const created = yield* hgetall(`${p}:key:${hash}`)
        expect(created).toEqual({
          id: String(id),
          master_id: String(master),
          status: "active",
          group: "gold",
          epoch: "3",
          master_status: "active",
          scopes: `["chat"]`,
          model_limits: `{"gpt-4o":100}`,
          allow_ips: `["10.0.0.0/8"]`,
          deny_ips: "[]",
          expires_at: String(expires.getTime()),
          quota_limit: "1000",
          quota_used: "0",
          quota_reset_at: "",
          version: created["version"]
        })
        // The entry expires with the key.
        const pexpire = yield* Effect.promise(() => direct.pexpiretime(`${p}:key:${hash}`))
        expect(pexpire).toBe(expires.getTime())

        yield* ControlPlane.updateKey(id, { status: "suspended" })
        yield* drained
        expect(yield* hgetall(`${p}:key:${hash}`)).toEqual({
          id: String(id),
          master_id: String(master),
          status: "suspended",
          version: expect.any(String)
        })

        yield* ControlPlane.deleteKey(id)
        yield* drained
        expect(yield* hgetall(`${p}:key:${hash}`)).toEqual({ status: "deleted", version: expect.any(String) })
      }).pipe(Effect.provide(syncWorker(p)))
    }))

  it.live("model create/update/delete: one field per name; delete carries {name}", () =>
    Effect.gen(function*() {
      const p = prefix()
      yield* Effect.gen(function*() {
        const id = yield* ControlPlane.createModel({ name: `gpt-${p}`, contextWindow: 128000, costPerToken: 0.5, supportsTools: true })
        yield* drained
        const field = yield* Effect.promise(() => direct.hget(`${p}:{models}`, `gpt-${p}`))
        expect(JSON.parse(field!)).toEqual({
          id,
          name: `gpt-${p}`,
          kind: "chat",
          context_window: 128000,
          cost_per_token: 0.5,
          max_output_tokens: 0,
          supports_streaming: true,
          supports_tools: true,
          supports_vision: false,
          supports_json: false,
          version: expect.any(Number)
        })
        yield* ControlPlane.updateModel(id, { maxOutputTokens: 4096 })
        yield* drained
        expect(JSON.parse((yield* Effect.promise(() => direct.hget(`${p}:{models}`, `gpt-${p}`)))!).max_output_tokens).toBe(4096)
        yield* ControlPlane.deleteModel(id)
        yield* drained
        expect(yield* Effect.promise(() => direct.hexists(`${p}:{models}`, `gpt-${p}`))).toBe(0)
      }).pipe(Effect.provide(syncWorker(p)))
    }))

  it.live("provider_group, api_key and binding events rebuild the snapshots; snapshot actions too", () =>
    Effect.gen(function*() {
      const p = prefix()
      yield* Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        yield* sql`TRUNCATE cp_provider_groups, cp_api_keys, cp_bindings RESTART IDENTITY CASCADE`
        const group = yield* ControlPlane.createProviderGroup({ name: "g", type: "openai", models: ["m1"] })
        yield* drained
        expect(yield* hgetall(`${p}:{providers}`)).toEqual({})
        const key = yield* ControlPlane.createApiKey({ groupId: group, apiKey: "sk" })
        yield* drained
        expect(Object.keys(yield* hgetall(`${p}:{providers}`))).toEqual([`g#${key}`])
        yield* ControlPlane.createBinding({ namespace: "ns", publicModel: "m1", groupId: group })
        yield* drained
        const routes = yield* hgetall(`${p}:{bindings}`)
        expect(JSON.parse(routes["ns.m1"]!)[0].upstreams).toEqual({ [`g#${key}`]: "m1" })
        yield* ControlPlane.updateApiKey(key, { status: "manual_disabled" })
        yield* drained
        expect(JSON.parse((yield* hgetall(`${p}:{bindings}`))["ns.m1"]!)[0].error).toBe("no_provider")
        // Seed-style snapshot events, enqueued by hand.
        for (const type of [Events.SnapshotSyncAll, Events.SnapshotSyncBindings, Events.SnapshotSyncProviders, Events.BindingSyncBindings]) {
          yield* enqueue(type, { payload: null })
        }
        yield* drained
        const meta = yield* hgetall(`${p}:{providers}:meta`)
        expect(Object.keys(meta).sort()).toEqual(["checksum", "count", "updated_at", "version"])
        expect(meta["count"]).toBe("1")
      }).pipe(Effect.provide(syncWorker(p)))
    }))
})

describe("Snapshots: the data-plane contract (golden files)", () => {
  const golden = (name: string, actual: Record<string, string>) => {
    const path = new URL(`./golden/${name}.json`, import.meta.url)
    const parsed = Object.fromEntries(Object.entries(actual).map(([k, v]) => [k, JSON.parse(v)]))
    // Regenerate deliberately (UPDATE_GOLDEN=1), then review the diff: a missing file is a failure.
    if (process.env["UPDATE_GOLDEN"] === "1") writeFileSync(path, JSON.stringify(parsed, null, 2) + "\n")
    expect(existsSync(path), `golden file ${name}.json is missing`).toBe(true)
    expect(parsed).toEqual(JSON.parse(readFileSync(path, "utf8")))
  }

  it.live("providers and bindings, built from the fixture, match the golden files exactly", () =>
    Effect.gen(function*() {
      const p = prefix()
      const db = yield* Effect.promise(() => freshDatabase("golden", ["outbox", "control-plane"]))
      yield* Effect.gen(function*() {
        for (const g of fixture.groups) yield* ControlPlane.createProviderGroup(g)
        for (const k of fixture.apiKeys) yield* ControlPlane.createApiKey(k)
        for (const b of fixture.bindings) yield* ControlPlane.createBinding(b)
        const sync = yield* SyncService
        expect(yield* sync.syncProviders).toBe("written")
        expect(yield* sync.syncBindings).toBe("written")
      }).pipe(Effect.provide(syncLayer(p).pipe(Layer.provideMerge(Layer.merge(sqlLayer(db), RedisSink.layer({ url: Redacted.make(redisUrl()) }))))))
      golden("providers", yield* hgetall(`${p}:{providers}`))
      golden("bindings", yield* hgetall(`${p}:{bindings}`))
    }))
})

describe("Snapshots are replaced atomically", () => {
  it.live("a reader polling during 100 rebuilds never sees a partial or empty hash", () =>
    Effect.gen(function*() {
      const p = prefix()
      const reader = new Redis(redisUrl())
      yield* Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        yield* sql`TRUNCATE cp_provider_groups, cp_api_keys, cp_bindings RESTART IDENTITY CASCADE`
        const group = yield* ControlPlane.createProviderGroup({ name: "big", type: "openai", models: ["m"] })
        for (let i = 0; i < 200; i++) yield* ControlPlane.createApiKey({ groupId: group, apiKey: `sk-${i}` })
        const sync = yield* SyncService
        yield* sync.syncProviders
        let stop = false
        let reads = 0
        const bad: Array<string> = []
        const poll = (async () => {
          while (!stop) {
            const [[, entries], [, meta]] = (await reader.multi().hgetall(`${p}:{providers}`).hgetall(`${p}:{providers}:meta`).exec())! as [
              [null, Record<string, string>],
              [null, Record<string, string>]
            ]
            reads++
            const n = Object.keys(entries).length
            if (n !== 200 && n !== 201) bad.push(`saw ${n} entries`)
            if (String(n) !== meta["count"]) bad.push(`meta says ${meta["count"]}, hash has ${n}`)
          }
        })()
        for (let i = 0; i < 100; i++) {
          // Alternate 200 and 201 api keys, so consecutive snapshots really differ.
          if (i % 2 === 0) yield* ControlPlane.createApiKey({ groupId: group, apiKey: "sk-extra" })
          else yield* sql`DELETE FROM cp_api_keys WHERE api_key = 'sk-extra'`
          yield* sync.syncProviders
        }
        stop = true
        yield* Effect.promise(() => poll)
        expect(bad).toEqual([])
        expect(reads).toBeGreaterThan(100)
      }).pipe(Effect.provide(syncLayer(p).pipe(Layer.provideMerge(Layer.merge(sqlLayer(url), RedisSink.layer({ url: Redacted.make(redisUrl()) }))))))
      reader.disconnect()
    }), 60_000)
})

describe("Order and coalescing across a Redis outage", () => {
  it.scopedLive("create, delete, create the same model while Redis is down: Redis ends with the last create", () =>
    Effect.gen(function*() {
      const p = prefix()
      const proxy = yield* Effect.acquireRelease(Effect.promise(() => startProxy(Number(new URL(redisUrl()).port))), (x) => Effect.promise(x.close))
      yield* Effect.gen(function*() {
        yield* Effect.promise(proxy.cut)
        const name = `flip-${p}`
        const first = yield* ControlPlane.createModel({ name, contextWindow: 1 })
        yield* ControlPlane.deleteModel(first)
        const second = yield* ControlPlane.createModel({ name, contextWindow: 2 })
        yield* realSleep(300)
        yield* Effect.promise(proxy.restore)
        yield* drained
        const field = JSON.parse((yield* Effect.promise(() => direct.hget(`${p}:{models}`, name)))!)
        expect(field).toMatchObject({ id: second, context_window: 2 })
      }).pipe(Effect.provide(syncWorker(p, { redis: proxy.url("redis") })))
    }), 30_000)

  it.scopedLive("1,000 updates to one master while Redis is down: one write after, 999 counted as superseded", () =>
    Effect.gen(function*() {
      const p = prefix()
      const redis = yield* Effect.acquireRelease(Effect.promise(() => startRedis()), (r) => Effect.promise(r.stop))
      const proxy = yield* Effect.acquireRelease(Effect.promise(() => startProxy(redis.port)), (x) => Effect.promise(x.close))
      const admin = new Redis(redis.url).on("error", () => undefined)
      yield* Effect.gen(function*() {
        const id = yield* ControlPlane.createMaster({ name: "busy" })
        yield* drained
        yield* Effect.promise(proxy.cut)
        for (let i = 1; i <= 1000; i++) yield* ControlPlane.updateMaster(id, { globalQps: i })
        const supersededBefore = (yield* Metric.value(Metrics.superseded)).count
        yield* Effect.promise(() => admin.config("RESETSTAT"))
        yield* Effect.promise(proxy.restore)
        yield* drained
        const stats = yield* Effect.promise(() => admin.info("commandstats"))
        const calls = (name: string) => Number(new RegExp(`cmdstat_${name}:calls=(\\d+)`).exec(stats)?.[1] ?? 0)
        expect(calls("evalsha") + calls("eval")).toBe(1)
        expect((yield* Metric.value(Metrics.superseded)).count - supersededBefore).toBe(999)
        expect(yield* Effect.promise(() => admin.hget(`${p}:master:${id}`, "global_qps"))).toBe("1000")
      }).pipe(Effect.provide(syncWorker(p, { redis: proxy.url("redis") })))
      admin.disconnect()
    }), 60_000)
})

describe("Stale writes are harmless", () => {
  it.live("a write older than what Redis holds is refused, and the newer data stays", () =>
    Effect.gen(function*() {
      const p = prefix()
      yield* Effect.gen(function*() {
        const sync = yield* SyncService
        const redis = yield* RedisSink
        const id = yield* ControlPlane.createMaster({ name: "fresh", globalQps: 7 })
        expect(yield* sync.syncMaster(id)).toBe("written")
        const current = Number(yield* Effect.promise(() => direct.hget(`${p}:master:${id}`, "version")))
        // A slow worker, its lease long expired, arrives with what it read before the change.
        const result = yield* RedisLayout.writeHash(redis, `${p}:master:${id}`, current - 1, { name: "old", global_qps: "1" })
        expect(result).toBe("stale")
        expect(yield* hgetall(`${p}:master:${id}`)).toMatchObject({ name: "fresh", global_qps: "7" })
        // The same for a model field and a snapshot.
        const l = sync.layout
        const model = yield* ControlPlane.createModel({ name: `stale-${p}` })
        yield* sync.syncModel(model)
        const modelVersion = JSON.parse((yield* Effect.promise(() => direct.hget(l.models, `stale-${p}`)))!).version
        expect(yield* RedisLayout.writeModel(redis, l, `stale-${p}`, modelVersion - 1, null, null)).toBe("stale")
        expect(yield* Effect.promise(() => direct.hexists(l.models, `stale-${p}`))).toBe(1)
        yield* sync.syncProviders
        const meta = yield* hgetall(l.providersMeta)
        expect(
          yield* RedisLayout.writeSnapshot(redis, l.providers, l.providersMeta, Number(meta["version"]) - 1, new Date(), "x", [])
        ).toBe("stale")
        expect((yield* hgetall(l.providersMeta))["checksum"]).toBe(meta["checksum"])
      }).pipe(Effect.provide(syncLayer(p).pipe(Layer.provideMerge(Layer.merge(sqlLayer(url), RedisSink.layer({ url: Redacted.make(redisUrl()) }))))))
    }))
})

describe("Typed outcomes for bad input", () => {
  it.live("unknown types and actions, malformed payloads, missing ids and missing rows", () =>
    Effect.gen(function*() {
      const p = prefix()
      yield* Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const store = yield* Store
        yield* sql`TRUNCATE sync_outbox CASCADE`
        const id = (rows: ReadonlyArray<{ id: string }>) => rows[0]!.id
        const unknownType = id(yield* sql<{ id: string }>`SELECT sync_outbox_enqueue('tenant', 'create', 1)::text AS id`)
        const unknownAction = id(yield* sql<{ id: string }>`SELECT sync_outbox_enqueue('snapshot', 'sync_everything')::text AS id`)
        const malformed = id(yield* sql<{ id: string }>`SELECT sync_outbox_enqueue('model', 'delete', 5, '{"name": ""}'::jsonb)::text AS id`)
        yield* eventually(store.show(unknownType), (s) => s.failures.length > 0)
        expect((yield* store.show(unknownType)).failures[0]!.errorTag).toBe("UnknownEventType")
        yield* eventually(store.show(unknownAction), (s) => s.failures.length > 0)
        expect((yield* store.show(unknownAction)).failures[0]!.errorTag).toBe("UnknownEventType")
        const dead = yield* eventually(store.show(malformed), (s) => s.event.status === "dead")
        expect(dead.failures[0]!.errorTag).toBe("MalformedPayload")

        // An id the type requires, missing at enqueue: refused before anything is written.
        const noId = yield* Effect.flip(enqueue(Events.MasterUpdate, { payload: null }))
        expect(noId._tag).toBe("InvalidEvent")

        // Rows that are gone by the time their events apply: the entries go, nothing is retried.
        const before = (yield* Metric.value(Metrics.failed)).count
        yield* enqueue(Events.MasterUpdate, { resourceId: 987654, payload: null })
        yield* enqueue(Events.KeyUpdate, { resourceId: 987654, payload: { tokenHash: "a".repeat(64) } })
        yield* enqueue(Events.ModelUpdate, { resourceId: 987654, payload: { name: `ghost-${p}` } })
        yield* eventually(countRows("pending"), (n) => n === 2, { timeout: 5_000 }) // the two unknown ones keep retrying
        expect((yield* Metric.value(Metrics.failed)).count - before).toBe(0)
        expect(yield* hgetall(`${p}:master:987654`)).toMatchObject({ status: "deleted" })
        expect(yield* hgetall(`${p}:key:${"a".repeat(64)}`)).toMatchObject({ status: "deleted" })
      }).pipe(Effect.provide(syncWorker(p, { config: { backoffBase: Duration.seconds(30) } })))
    }))

  it.live("the seed's way: apply now when Redis answers, enqueue when it does not", () =>
    Effect.gen(function*() {
      const p = prefix()
      const sql = yield* SqlClient.SqlClient
      const [row] = yield* sql<{ id: number }>`INSERT INTO cp_masters (name) VALUES ('seedway') RETURNING id::float8 AS id`
      const run = (redis: string) =>
        syncNowOrEnqueue(Events.MasterUpdate, { resourceId: row!.id, payload: null }).pipe(
          Effect.provide(
            SyncHandlers.layer.pipe(
              Layer.provide(syncLayer(p)),
              Layer.provideMerge(Layer.merge(sqlLayer(url), RedisSink.layer({ url: Redacted.make(redis), commandTimeout: Duration.millis(300) })))
            )
          )
        )
      expect(yield* run(redisUrl())).toEqual({ _tag: "Applied" })
      expect((yield* hgetall(`${p}:master:${row!.id}`))["name"]).toBe("seedway")
      const fallback = yield* run("redis://127.0.0.1:1")
      expect(fallback._tag).toBe("Enqueued")
    }).pipe(Effect.provide(sqlLayer(url))))
})

describe("Dispatch: every (resource type, action) of the seed's vocabulary", () => {
  it("registers exactly the seed's pairs", () => {
    const pairs = SyncHandlers.handlers.map((h) => `${h.type.resourceType}/${h.type.action}`).sort()
    expect(pairs).toEqual([
      "api_key/sync_bindings", "api_key/sync_providers",
      "binding/create", "binding/delete", "binding/sync_bindings", "binding/update",
      "key/create", "key/delete", "key/sync", "key/update",
      "master/create", "master/delete", "master/sync", "master/update",
      "model/create", "model/delete", "model/sync", "model/update",
      "provider_group/sync_bindings", "provider_group/sync_providers",
      "snapshot/sync_all", "snapshot/sync_bindings", "snapshot/sync_providers"
    ])
  })

  it.live("each pair, enqueued on its own, writes exactly its Redis entry", () =>
    Effect.gen(function*() {
      const p = prefix()
      yield* Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        // Rows written behind the outbox's back (no events), so each event below is the only cause.
        yield* sql`TRUNCATE cp_provider_groups, cp_api_keys, cp_bindings RESTART IDENTITY CASCADE`
        const [m] = yield* sql<{ id: number }>`INSERT INTO cp_masters (name, global_qps) VALUES ('direct', 9) RETURNING id::float8 AS id`
        const hash = ControlPlane.tokenHash(`direct-${p}`)
        const [k] = yield* sql<{ id: number }>`INSERT INTO cp_keys (master_id, token_hash) VALUES (${m!.id}, ${hash}) RETURNING id::float8 AS id`
        const [model] = yield* sql<{ id: number }>`INSERT INTO cp_models (name) VALUES (${`direct-${p}`}) RETURNING id::float8 AS id`
        const [g] = yield* sql<{ id: number }>`INSERT INTO cp_provider_groups (name, type, models) VALUES ('dg', 'openai', '{m1}') RETURNING id::float8 AS id`
        const [ak] = yield* sql<{ id: number }>`INSERT INTO cp_api_keys (group_id, api_key) VALUES (${g!.id}, 'sk-d') RETURNING id::float8 AS id`
        yield* sql`INSERT INTO cp_bindings (namespace, public_model, group_id) VALUES ('ns', 'm1', ${g!.id})`
        const providerField = `dg#${ak!.id}`

        const step = <A>(type: OutboxEvent.EventType<A, any>, input: { resourceId?: number; payload: A }, check: Effect.Effect<boolean>) =>
          Effect.gen(function*() {
            yield* Effect.promise(() => direct.del(`${p}:master:${m!.id}`, `${p}:key:${hash}`, `${p}:{models}`, `${p}:{providers}`, `${p}:{bindings}`, `${p}:{models}:versions`, `${p}:{providers}:meta`, `${p}:{bindings}:meta`))
            yield* enqueue(type, input)
            yield* eventually(check, (ok) => ok, { timeout: 5_000 })
          })
        const masterWritten = Effect.map(hgetall(`${p}:master:${m!.id}`), (h) => h["name"] === "direct" && h["global_qps"] === "9")
        const keyWritten = Effect.map(hgetall(`${p}:key:${hash}`), (h) => h["status"] === "active" && h["master_id"] === String(m!.id))
        const modelWritten = Effect.map(hgetall(`${p}:{models}`), (h) => JSON.parse(h[`direct-${p}`] ?? "null")?.id === model!.id)
        const providersWritten = Effect.map(hgetall(`${p}:{providers}`), (h) => Object.keys(h).join() === providerField)
        const bindingsWritten = Effect.map(hgetall(`${p}:{bindings}`), (h) =>
          JSON.parse(h["ns.m1"] ?? "[]")[0]?.upstreams?.[providerField] === "m1")

        for (const type of [Events.MasterCreate, Events.MasterUpdate, Events.MasterSync]) {
          yield* step(type, { resourceId: m!.id, payload: null }, masterWritten)
        }
        for (const type of [Events.KeyCreate, Events.KeyUpdate, Events.KeySync]) {
          yield* step(type, { resourceId: k!.id, payload: null }, keyWritten)
        }
        for (const type of [Events.ModelCreate, Events.ModelUpdate, Events.ModelSync]) {
          yield* step(type, { resourceId: model!.id, payload: null }, modelWritten)
        }
        for (const type of [Events.ProviderGroupSyncProviders, Events.ApiKeySyncProviders, Events.SnapshotSyncProviders]) {
          yield* step(type, { resourceId: g!.id, payload: null }, providersWritten)
        }
        for (const type of [
          Events.ProviderGroupSyncBindings, Events.ApiKeySyncBindings, Events.BindingCreate, Events.BindingUpdate,
          Events.BindingDelete, Events.BindingSyncBindings, Events.SnapshotSyncBindings
        ]) {
          yield* step(type, { payload: null }, bindingsWritten)
        }
        yield* step(Events.SnapshotSyncAll, { payload: null }, Effect.map(
          Effect.all([masterWritten, keyWritten, modelWritten, providersWritten, bindingsWritten]),
          (all) => all.every(Boolean)
        ))

        // The deletes: rows removed behind the outbox's back, then their events.
        yield* sql`DELETE FROM cp_keys WHERE id = ${k!.id}`
        yield* step(Events.KeyDelete, { resourceId: k!.id, payload: { tokenHash: hash } },
          Effect.map(hgetall(`${p}:key:${hash}`), (h) => h["status"] === "deleted"))
        yield* sql`DELETE FROM cp_masters WHERE id = ${m!.id}`
        yield* step(Events.MasterDelete, { resourceId: m!.id, payload: null },
          Effect.map(hgetall(`${p}:master:${m!.id}`), (h) => h["status"] === "deleted"))
        yield* Effect.promise(() => direct.hset(`${p}:{models}`, `direct-${p}`, "{}"))
        yield* sql`DELETE FROM cp_models WHERE id = ${model!.id}`
        yield* enqueue(Events.ModelDelete, { payload: { name: `direct-${p}` } })
        yield* eventually(Effect.promise(() => direct.hexists(`${p}:{models}`, `direct-${p}`)), (n) => n === 0)
      }).pipe(Effect.provide(syncWorker(p)))
    }), 60_000)
})
