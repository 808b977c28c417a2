import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Context, Duration, Effect, Layer, Metric, Redacted, Schedule } from "effect"
import { Redis } from "ioredis"
import { existsSync, readFileSync, writeFileSync } from "node:fs"
import { afterAll, beforeAll } from "vitest"
import { startRedis } from "../scripts/services.js"
import { enqueue, Metrics, type OutboxEvent, OutboxEvent as OutboxEventModule, RedisSink, Store } from "../src/index.js"
import { Contract, ControlPlane, DataPlane, Events, RedisLayout, Snapshots, Dispatch, syncNowOrEnqueue, Projector } from "../src/ezapi/index.js"
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

const syncLayer = (p: string) => Projector.layer({ prefix: p })
/** A worker running the ez-api handlers, writing under prefix `p`, with `Projector` and Redis at hand. */
const syncWorker = (p: string, options: { redis?: string | Layer.Layer<RedisSink>; config?: Parameters<typeof workerLayer>[0]["config"] } = {}) =>
  workerLayer({
    url,
    ...(options.redis === undefined ? {} : { redis: options.redis }),
    ...(options.config === undefined ? {} : { config: options.config }),
    handlers: Dispatch.layer.pipe(Layer.provideMerge(syncLayer(p)))
  }).pipe(Layer.provideMerge(Store.layer.pipe(Layer.provideMerge(sqlLayer(url)))))
/**
 * RedisSink does not wait for its connection (no offline queue): a first command issued before it
 * is up fails as unavailable. Tests that call the service at once wait for it here.
 */
const connected = (redis: string = redisUrl(), commandTimeout?: Duration.DurationInput) =>
  Layer.tap(
    RedisSink.layer({ url: Redacted.make(redis), ...(commandTimeout === undefined ? {} : { commandTimeout }) }),
    (ctx) => Effect.retry(Context.get(ctx, RedisSink).ping, Schedule.spaced("10 millis")).pipe(Effect.timeout("10 seconds"), Effect.orDie)
  )
/** `Projector` alone (no worker), for calling it directly. */
const direct_ = (p: string, db = url) => syncLayer(p).pipe(Layer.provideMerge(Layer.merge(sqlLayer(db), connected())))

const drained = eventually(countRows("pending"), (n) => n === 0, { timeout: 15_000 })
const hgetall = (key: string) => Effect.promise(() => direct.hgetall(key))
const secret = () => `secret-${Math.random().toString(36).slice(2)}`
/** What the balancer decides for a token, from what Redis holds now (§3.9). */
const authenticate = (p: string, token: string) =>
  Effect.flatMap(RedisSink, (redis) => DataPlane.authenticate(redis, RedisLayout.layout({ prefix: p }), token, new Date()))
const authenticated = (p: string, token: string) => Effect.map(authenticate(p, token), (a) => a._tag === "Authenticated")

describe("Projector through the outbox: one test per key family of the contract", () => {
  it.live("auth:master:<id>: epoch status group global_qps (+ namespaces); removed when the row is gone", () =>
    Effect.gen(function*() {
      const p = prefix()
      yield* Effect.gen(function*() {
        const id = yield* ControlPlane.createMaster({ name: "acme", group: "gold", globalQps: 50, namespaces: ["default", "team-a"] })
        yield* drained
        expect(yield* hgetall(`${p}auth:master:${id}`)).toEqual({
          epoch: "1",
          status: "active",
          group: "gold",
          global_qps: "50",
          default_namespace: "default",
          namespaces: "default,team-a"
        })
        yield* ControlPlane.updateMaster(id, { status: "suspended", epoch: 2, group: " " })
        yield* drained
        expect(yield* hgetall(`${p}auth:master:${id}`)).toMatchObject({ status: "suspended", epoch: "2", group: "default" })
        yield* ControlPlane.deleteMaster(id)
        yield* drained
        expect(yield* Effect.promise(() => direct.exists(`${p}auth:master:${id}`))).toBe(0)
        // The tombstone is bookkeeping, beside the key the balancer reads, and expires.
        const record = `${p}sync:rec:{${p}auth:master:${id}}`
        expect(yield* hgetall(record)).toMatchObject({ d: "removed", id: String(id) })
        expect(yield* Effect.promise(() => direct.pttl(record))).toBeGreaterThan(0)
      }).pipe(Effect.provide(syncWorker(p)))
    }))

  it.live("auth:token:<sha256>: the contract's flat fields; suspended or deleted keys stop authenticating", () =>
    Effect.gen(function*() {
      const p = prefix()
      yield* Effect.gen(function*() {
        const master = yield* ControlPlane.createMaster({ name: "m", epoch: 3 })
        const s = secret()
        const hash = Contract.hashToken(s)
        const expires = new Date(Math.ceil(Date.now() / 1000) * 1000 + 3_600_000)
        const id = yield* ControlPlane.createKey({
          masterId: master,
          secret: s,
          group: "",
          scopes: ["chat", "embeddings"],
          modelLimits: { "gpt-4o": 100, "claude": 1 },
          allowIps: ["10.0.0.0/8", "192.168.0.0/16"],
          expiresAt: expires,
          quotaLimit: 1000
        })
        yield* drained
        // Only the hash is stored, in the control plane and in Redis.
        const stored = yield* Effect.flatMap(SqlClient.SqlClient, (sql) => sql<{ token_hash: string }>`SELECT token_hash FROM cp_keys`)
        expect(stored.map((r) => r.token_hash)).toContain(hash)
        expect(JSON.stringify(yield* Effect.promise(() => direct.keys(`${p}*`)))).not.toContain(s)
        expect(yield* hgetall(`${p}auth:token:${hash}`)).toEqual({
          master_id: String(master),
          issued_at_epoch: "3",
          status: "active",
          group: "default",
          scopes: "chat,embeddings",
          expires_at: String(expires.getTime() / 1000),
          allow_ips: "10.0.0.0/8,192.168.0.0/16",
          deny_ips: "",
          model_limits: "claude,gpt-4o",
          model_limits_enabled: "1",
          quota_limit: "1000",
          quota_used: "0",
          quota_reset_at: "0"
        })
        expect(yield* authenticated(p, s)).toBe(true)
        // The entry expires with the key.
        expect(yield* Effect.promise(() => direct.pexpiretime(`${p}auth:token:${hash}`))).toBe(expires.getTime())

        yield* ControlPlane.updateKey(id, { status: "suspended" })
        yield* drained
        expect(yield* hgetall(`${p}auth:token:${hash}`)).toMatchObject({ status: "suspended", master_id: String(master) })
        expect(yield* authenticate(p, s)).toEqual({ _tag: "Refused", reason: "key_suspended" })

        yield* ControlPlane.deleteKey(id)
        yield* drained
        expect(yield* Effect.promise(() => direct.exists(`${p}auth:token:${hash}`))).toBe(0)
        expect(yield* authenticate(p, s)).toEqual({ _tag: "Refused", reason: "unknown_token" })
      }).pipe(Effect.provide(syncWorker(p)))
    }))

  it.live("meta:models + meta:models_meta: the golden model under its binding key, the spec's checksum", () =>
    Effect.gen(function*() {
      const p = prefix()
      yield* Effect.gen(function*() {
        const golden =
          `{"name":"ns.m","kind":"chat","context_window":128000,"supports_vision":true,"supports_functions":true,"supports_tool_choice":true,"supports_fim":true,"max_output_tokens":8192}`
        const id = yield* ControlPlane.createModel({
          name: "ns.m",
          contextWindow: 128000,
          maxOutputTokens: 8192,
          supportsVision: true,
          supportsTools: true,
          supportsToolChoice: true,
          supportsFim: true,
          supportsStreaming: false
        })
        yield* drained
        expect(yield* hgetall(`${p}meta:models`)).toEqual({ "ns.m": golden })
        const meta = yield* hgetall(`${p}meta:models_meta`)
        expect(meta).toEqual({
          version: expect.stringMatching(/^[0-9a-f]{16}$/),
          updated_at: expect.stringMatching(/^\d{10}$/),
          source: "control-plane",
          checksum: "28aef88cdb4444ec81259b2b0394b47e9e1c63b9fbda6702fd62a1c65e92eb3f"
        })
        yield* ControlPlane.updateModel(id, { maxOutputTokens: 4096, kind: "embedding" })
        yield* drained
        expect(JSON.parse((yield* hgetall(`${p}meta:models`))["ns.m"]!)).toMatchObject({ kind: "embedding", max_output_tokens: 4096 })
        yield* ControlPlane.deleteModel(id)
        yield* drained
        expect(yield* hgetall(`${p}meta:models`)).toEqual({})
        expect((yield* hgetall(`${p}meta:models_meta`))["checksum"]).toBe(Contract.checksumFromPayloads([]))
      }).pipe(Effect.provide(syncWorker(p)))
    }))

  it.live("config:providers + meta:providers_meta: the golden provider; config:bindings: BindingSnapshot per ns.model", () =>
    Effect.gen(function*() {
      const p = prefix()
      const db = yield* Effect.promise(() => freshDatabase("golden_provider", ["outbox", "control-plane"]))
      yield* Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        // The golden's ids: provider group 7, api key 42.
        yield* sql`INSERT INTO cp_provider_groups (id, name, type, base_url, google_project, models)
                   VALUES (7, 'pg1', 'vertex-express', '', 'proj-1', '{gemini-3-pro-preview}')`
        yield* sql`INSERT INTO cp_api_keys (id, group_id, api_key, weight, auto_ban) VALUES (42, 7, 'sk-123', 0, true)`
        yield* sql`INSERT INTO cp_bindings (namespace, public_model, group_id, weight) VALUES ('default', 'gemini', 7, 0)`
        const sync = yield* Projector
        expect(yield* sync.syncProviders).toBe("written")
        expect(yield* sync.syncBindings).toBe("written")
        const providers = yield* hgetall(`${p}config:providers`)
        expect(providers).toEqual({
          "42":
            `{"id":42,"name":"pg1#42","type":"vertex-express","base_url":"","api_key":"sk-123","google_project":"proj-1","google_location":"global","group_id":7,"group":"default","models":["gemini-3-pro-preview"],"status":"active","auto_ban":true}`
        })
        const meta = yield* hgetall(`${p}meta:providers_meta`)
        expect(meta).toEqual({
          version: expect.stringMatching(/^\d+$/),
          timestamp: expect.stringMatching(/^\d{10}$/),
          checksum: Contract.checksumFromPayloads(Object.entries(providers))
        })
        const bindings = yield* hgetall(`${p}config:bindings`)
        expect(Object.keys(bindings)).toEqual(["default.gemini"])
        expect(JSON.parse(bindings["default.gemini"]!)).toEqual({
          namespace: "default",
          public_model: "gemini",
          status: "active",
          updated_at: expect.any(Number),
          candidates: [{ group_id: 7, route_group: "pg1", selector_type: "exact", status: "active", error: "config_error", upstreams: null }]
        })
        yield* sql`UPDATE cp_bindings SET selector_type = 'regex', selector_value = 'gemini'`
        yield* sync.syncBindings
        expect(JSON.parse((yield* hgetall(`${p}config:bindings`))["default.gemini"]!).candidates[0]).toEqual({
          group_id: 7, route_group: "pg1", selector_type: "regex", selector_value: "gemini", status: "active",
          upstreams: { "42": "gemini-3-pro-preview" }
        })
      }).pipe(Effect.provide(direct_(p, db)))
    }))

  it.live("dp:config:refresh: a DPConfigRefreshEvent after each snapshot or meta write", () =>
    Effect.gen(function*() {
      const p = prefix()
      const subscriber = new Redis(redisUrl())
      const events: Array<Record<string, unknown>> = []
      subscriber.on("message", (_channel: string, message: string) => events.push(JSON.parse(message)))
      yield* Effect.promise(() => subscriber.subscribe(`${p}dp:config:refresh`))
      yield* Effect.gen(function*() {
        yield* enqueue(Events.SnapshotSyncProviders, { payload: null })
        yield* enqueue(Events.SnapshotSyncBindings, { payload: null })
        yield* ControlPlane.createModel({ name: `refresh-${p}` })
        yield* drained
        yield* eventually(Effect.sync(() => events.length), (n) => n >= 3)
        const resources = events.map((e) => e["resource"])
        expect(resources).toEqual(expect.arrayContaining(["providers", "bindings", "models"]))
        for (const e of events) expect(e).toEqual({ resource: expect.any(String), version: expect.any(String), timestamp: expect.any(Number) })
      }).pipe(Effect.provide(syncWorker(p)))
      subscriber.disconnect()
    }))
})

describe("Model events' ordering keys", () => {
  it.effect("a model is ordered by its name; a name too long for the outbox's key index by its digest, the same for the same name", () =>
    Effect.gen(function*() {
      const keyOf = (name: string) => Effect.map(OutboxEventModule.encode(Events.ModelDelete, { payload: { name } }), (e) => e.orderingKey)
      expect(yield* keyOf("gpt-4o")).toBe("model:gpt-4o")
      const long = "m".repeat(200 * 1024)
      const key = yield* keyOf(long)
      expect(key).toMatch(/^model:sha256:[0-9a-f]{64}$/)
      expect(yield* Effect.map(OutboxEventModule.encode(Events.ModelUpdate, { resourceId: 9, payload: { name: long } }), (e) => e.orderingKey)).toBe(key)
      expect(yield* keyOf(`${long}n`)).not.toBe(key)
    }))
})

describe("Revocation reaches the data plane", () => {
  it.live("delete a master: its keys stop authenticating within a second (no key events: the rows were cascaded)", () =>
    Effect.gen(function*() {
      const p = prefix()
      yield* Effect.gen(function*() {
        const master = yield* ControlPlane.createMaster({ name: "doomed" })
        const secrets = [secret(), secret(), secret()]
        for (const s of secrets) yield* ControlPlane.createKey({ masterId: master, secret: s })
        const other = secret()
        yield* ControlPlane.createKey({ masterId: yield* ControlPlane.createMaster({ name: "other" }), secret: other })
        yield* drained
        for (const s of secrets) expect(yield* authenticated(p, s)).toBe(true)
        yield* ControlPlane.deleteMaster(master)
        const start = Date.now()
        for (const s of secrets) {
          yield* eventually(authenticated(p, s), (ok) => !ok, { timeout: 5_000 })
          // Not only through the missing master: the key hashes themselves go.
          yield* eventually(Effect.promise(() => direct.exists(`${p}auth:token:${Contract.hashToken(s)}`)), (n) => n === 0, { timeout: 5_000 })
        }
        expect(Date.now() - start).toBeLessThan(5_000) // "within a second" on an idle machine; generous on a busy one
        expect(yield* authenticated(p, other)).toBe(true)
      }).pipe(Effect.provide(syncWorker(p)))
    }))

  it.live("a suspension that also made the key's row undecodable fails closed: the key stops authenticating until its row is fixed", () =>
    Effect.gen(function*() {
      const p = prefix()
      yield* Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const master = yield* ControlPlane.createMaster({ name: "m" })
        const s = secret()
        const id = yield* ControlPlane.createKey({ masterId: master, secret: s, scopes: ["chat"] })
        const other = secret()
        yield* ControlPlane.createKey({ masterId: master, secret: other })
        yield* drained
        expect(yield* authenticated(p, s)).toBe(true)
        // One statement of the operator's own SQL, with its event: the suspension, and a value the
        // entity refuses. The event cannot write the row; leaving the entry would keep a suspended
        // key authenticating.
        yield* sql.withTransaction(Effect.zipRight(
          sql`UPDATE cp_keys SET status = 'suspended', scopes = '{chat,NULL}' WHERE id = ${id}`,
          enqueue(Events.KeyUpdate, { resourceId: id, payload: null })
        ))
        yield* eventually(authenticate(p, s), (r) => r._tag === "Refused", { timeout: 15_000 })
        expect(yield* authenticate(p, s)).toEqual({ _tag: "Refused", reason: "unknown_token" })
        // The event itself fails, typed, where an operator sees it.
        yield* eventually(
          sql<{ last_error: string | null }>`SELECT last_error FROM sync_outbox WHERE resource_type = 'key' AND resource_id = ${id}`,
          (rows) => rows.some((r) => r.last_error?.includes("InvalidRow") === true),
          { timeout: 15_000 }
        )
        expect(yield* authenticated(p, other)).toBe(true)
        // Fixed: the row's next version is written again, suspended as it is.
        yield* ControlPlane.updateKey(id, { scopes: ["chat"] })
        yield* eventually(authenticate(p, s), (r) => r._tag === "Refused" && r.reason === "key_suspended", { timeout: 15_000 })
        yield* ControlPlane.updateKey(id, { status: "active" })
        yield* eventually(authenticated(p, s), (ok) => ok, { timeout: 15_000 })
      }).pipe(Effect.provide(syncWorker(p)))
    }))

  it.live("a master suspension that also made its row undecodable fails closed: its keys stop authenticating until the row is fixed", () =>
    Effect.gen(function*() {
      const p = prefix()
      yield* Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const master = yield* ControlPlane.createMaster({ name: "m" })
        const s = secret()
        yield* ControlPlane.createKey({ masterId: master, secret: s })
        const other = secret()
        yield* ControlPlane.createKey({ masterId: yield* ControlPlane.createMaster({ name: "other" }), secret: other })
        yield* drained
        expect(yield* authenticated(p, s)).toBe(true)
        // The operator's own SQL with its event: the suspension, and a value the entity refuses.
        yield* sql.withTransaction(Effect.zipRight(
          sql`UPDATE cp_masters SET status = 'suspended', namespaces = '{default,NULL}' WHERE id = ${master}`,
          enqueue(Events.MasterUpdate, { resourceId: master, payload: null })
        ))
        yield* eventually(authenticate(p, s), (r) => r._tag === "Refused", { timeout: 15_000 })
        expect(yield* authenticate(p, s)).toEqual({ _tag: "Refused", reason: "master_missing" })
        yield* eventually(
          sql<{ last_error: string | null }>`SELECT last_error FROM sync_outbox WHERE resource_type = 'master' AND resource_id = ${master}`,
          (rows) => rows.some((r) => r.last_error?.includes("InvalidRow") === true),
          { timeout: 15_000 }
        )
        expect(yield* authenticated(p, other)).toBe(true)
        // Fixed: written again, suspended as it is; then reactivated.
        yield* ControlPlane.updateMaster(master, { namespaces: ["default"] })
        yield* eventually(authenticate(p, s), (r) => r._tag === "Refused" && r.reason === "master_suspended", { timeout: 15_000 })
        yield* ControlPlane.updateMaster(master, { status: "active" })
        yield* eventually(authenticated(p, s), (ok) => ok, { timeout: 15_000 })
      }).pipe(Effect.provide(syncWorker(p)))
    }))

  it.live("an expiry past JavaScript's last date (year 275761, read as an Invalid Date) is InvalidRow: never expires_at NaN, the key fails closed", () =>
    Effect.gen(function*() {
      const p = prefix()
      const db = yield* Effect.promise(() => freshDatabase("invalid_date", ["outbox", "control-plane"]))
      yield* Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const sync = yield* Projector
        const master = yield* ControlPlane.createMaster({ name: "far" })
        const s = secret()
        const id = yield* ControlPlane.createKey({ masterId: master, secret: s })
        yield* sync.syncMaster(master)
        yield* sync.syncKey(id)
        expect(yield* authenticated(p, s)).toBe(true)
        // Postgres takes it; node-postgres reads it as an Invalid Date.
        yield* sql`UPDATE cp_keys SET expires_at = '275761-01-01' WHERE id = ${id}`
        const failure = yield* Effect.flip(sync.syncKey(id))
        expect(failure._tag).toBe("InvalidRow")
        expect(failure.message).toContain(`key ${id}: expiresAt`)
        expect(yield* authenticate(p, s)).toEqual({ _tag: "Refused", reason: "unknown_token" })
        // The same in a snapshot row: left out, named, never `"ban_until":null`.
        const group = yield* ControlPlane.createProviderGroup({ name: "far", type: "openai", models: ["m"] })
        const apiKey = yield* ControlPlane.createApiKey({ groupId: group, apiKey: "sk-far" })
        yield* sql`UPDATE cp_api_keys SET ban_until = '275761-01-01' WHERE id = ${apiKey}`
        expect((yield* Effect.flip(sync.syncProviders)).message).toContain(`api_key ${apiKey}: banUntil`)
        expect(yield* Effect.promise(() => direct.hexists(`${p}config:providers`, String(apiKey)))).toBe(0)
      }).pipe(Effect.provide(direct_(p, db)))
    }))

  it.live("a list item holding the comma the data plane splits on (scope read,admin) is InvalidRow: the key fails closed, never granted admin", () =>
    Effect.gen(function*() {
      const p = prefix()
      const db = yield* Effect.promise(() => freshDatabase("comma_list", ["outbox", "control-plane"]))
      yield* Effect.gen(function*() {
        const sync = yield* Projector
        const master = yield* ControlPlane.createMaster({ name: "m" })
        yield* sync.syncMaster(master)
        const s = secret()
        const id = yield* ControlPlane.createKey({ masterId: master, secret: s, scopes: ["read"] })
        yield* sync.syncKey(id)
        expect(yield* hgetall(`${p}auth:token:${Contract.hashToken(s)}`)).toMatchObject({ scopes: "read" })
        for (const patch of [{ scopes: ["read,admin"] }, { allowIps: ["10.0.0.0/8,0.0.0.0/0"] }, { modelLimits: { "gpt-4o,o1": {} } }]) {
          yield* ControlPlane.updateKey(id, { scopes: ["read"], allowIps: [], modelLimits: {}, ...patch })
          const failure = yield* Effect.flip(sync.syncKey(id))
          expect(failure._tag).toBe("InvalidRow")
          expect(failure.message).toContain("comma-separated")
          expect(yield* authenticate(p, s)).toEqual({ _tag: "Refused", reason: "unknown_token" })
          yield* ControlPlane.updateKey(id, { scopes: ["read"], allowIps: [], modelLimits: {} })
          yield* sync.syncKey(id)
          expect(yield* authenticated(p, s)).toBe(true)
        }
        yield* ControlPlane.updateMaster(master, { namespaces: ["default,team-b"] })
        expect((yield* Effect.flip(sync.syncMaster(master))).message).toContain("comma-separated")
      }).pipe(Effect.provide(direct_(p, db)))
    }))

  it.live("quota_limit and quota_used are written exactly: the bigint maximum is 9223372036854775807, not 9223372036854776000 (past int64)", () =>
    Effect.gen(function*() {
      const p = prefix()
      const db = yield* Effect.promise(() => freshDatabase("quota_bigint", ["outbox", "control-plane"]))
      yield* Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const sync = yield* Projector
        const master = yield* ControlPlane.createMaster({ name: "m" })
        const s = secret()
        const id = yield* ControlPlane.createKey({ masterId: master, secret: s })
        yield* sql`UPDATE cp_keys SET quota_limit = 9223372036854775807, quota_used = 9007199254740993 WHERE id = ${id}`
        yield* sync.syncKey(id)
        expect(yield* hgetall(`${p}auth:token:${Contract.hashToken(s)}`)).toMatchObject({
          quota_limit: "9223372036854775807",
          quota_used: "9007199254740993"
        })
        // The same amounts through the control plane's own API, as bigints.
        const t = secret()
        const other = yield* ControlPlane.createKey({ masterId: master, secret: t, quotaLimit: 9223372036854775807n, quotaUsed: 9007199254740993n })
        yield* sync.syncKey(other)
        expect(yield* hgetall(`${p}auth:token:${Contract.hashToken(t)}`)).toMatchObject({
          quota_limit: "9223372036854775807",
          quota_used: "9007199254740993"
        })
      }).pipe(Effect.provide(direct_(p, db)))
    }))

  it.live("a master deleted behind the outbox's back: sync_all removes its keys", () =>
    Effect.gen(function*() {
      const p = prefix()
      yield* Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const sync = yield* Projector
        const master = yield* ControlPlane.createMaster({ name: "silent" })
        const s = secret()
        yield* ControlPlane.createKey({ masterId: master, secret: s })
        yield* sync.syncAll
        expect(yield* authenticated(p, s)).toBe(true)
        yield* sql`DELETE FROM cp_masters WHERE id = ${master}`
        yield* sync.syncAll
        expect(yield* authenticate(p, s)).toEqual({ _tag: "Refused", reason: "unknown_token" })
        expect(yield* Effect.promise(() => direct.exists(`${p}auth:master:${master}`))).toBe(0)
      }).pipe(Effect.provide(direct_(p)))
    }))

  it.live("sync_all goes past a row that does not decode: every other entry is written (a suspension too), then it fails as InvalidRow", () =>
    Effect.gen(function*() {
      const p = prefix()
      const db = yield* Effect.promise(() => freshDatabase("invalid_sync_all", ["outbox", "control-plane"]))
      yield* Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const sync = yield* Projector
        const master = yield* ControlPlane.createMaster({ name: "m" })
        const [bad, revoked, kept] = [secret(), secret(), secret()]
        const badId = yield* ControlPlane.createKey({ masterId: master, secret: bad })
        const revokedId = yield* ControlPlane.createKey({ masterId: master, secret: revoked })
        yield* ControlPlane.createKey({ masterId: master, secret: kept })
        yield* sync.syncAll
        expect(yield* authenticated(p, revoked)).toBe(true)
        yield* sql`UPDATE cp_keys SET scopes = '{chat,NULL}' WHERE id = ${badId}`
        yield* sql`UPDATE cp_keys SET status = 'suspended' WHERE id = ${revokedId}`
        const failure = yield* Effect.flip(sync.syncAll)
        expect(failure._tag).toBe("InvalidRow")
        expect(failure.message).toContain(`key ${badId}: scopes.1`)
        // The key after the bad one was still written: its suspension reached the data plane.
        expect(yield* authenticate(p, revoked)).toEqual({ _tag: "Refused", reason: "key_suspended" })
        expect(yield* authenticated(p, kept)).toBe(true)
        // The bad one fails closed: it no longer authenticates as it last did.
        expect(yield* authenticate(p, bad)).toEqual({ _tag: "Refused", reason: "unknown_token" })
      }).pipe(Effect.provide(direct_(p, db)))
    }))

  it.live("sync_all prunes what this service wrote for rows gone unannounced, and leaves other writers' entries", () =>
    Effect.gen(function*() {
      const p = prefix()
      yield* Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const sync = yield* Projector
        const l = sync.layout
        const model = yield* ControlPlane.createModel({ name: `gone-${p}` })
        const master = yield* ControlPlane.createMaster({ name: "k" })
        const s = secret()
        const key = yield* ControlPlane.createKey({ masterId: master, secret: s })
        yield* sync.syncAll
        // Another writer of meta:models (ez-api's models.dev registry) has an entry of its own.
        yield* Effect.promise(() => direct.hset(l.models, "models-dev.x", `{"name":"models-dev.x"}`))
        yield* sql`DELETE FROM cp_models WHERE id = ${model}`
        yield* sql`DELETE FROM cp_keys WHERE id = ${key}`
        const result = yield* sync.syncAll
        expect(result.removed).toBe(2)
        const fields = Object.keys(yield* hgetall(l.models))
        expect(fields).toContain("models-dev.x")
        expect(fields).not.toContain(`default.gone-${p}`)
        expect(yield* authenticate(p, s)).toEqual({ _tag: "Refused", reason: "unknown_token" })
        // The meta's checksum covers the whole hash, whoever wrote it.
        expect((yield* hgetall(l.modelsMeta))["checksum"]).toBe(Contract.checksumFromPayloads(Object.entries(yield* hgetall(l.models))))
        // A key re-hashed behind the outbox's back, synced by an event that names no hash: the old entry goes.
        const t = secret()
        const other = yield* ControlPlane.createKey({ masterId: master, secret: t })
        yield* sync.syncKey(other)
        const u = secret()
        yield* sql`UPDATE cp_keys SET token_hash = ${Contract.hashToken(u)} WHERE id = ${other}`
        yield* sync.syncKey(other)
        expect(yield* authenticated(p, t)).toBe(false)
        expect(yield* authenticated(p, u)).toBe(true)
      }).pipe(Effect.provide(direct_(p)))
    }))

  it.live("suspend a master: the data plane sees it; reactivate: its keys authenticate again", () =>
    Effect.gen(function*() {
      const p = prefix()
      yield* Effect.gen(function*() {
        const master = yield* ControlPlane.createMaster({ name: "paused" })
        const s = secret()
        yield* ControlPlane.createKey({ masterId: master, secret: s })
        yield* drained
        expect(yield* authenticated(p, s)).toBe(true)
        yield* ControlPlane.updateMaster(master, { status: "suspended" })
        yield* eventually(authenticate(p, s), (a) => a._tag === "Refused" && a.reason === "master_suspended")
        expect((yield* hgetall(`${p}auth:master:${master}`))["status"]).toBe("suspended")
        yield* ControlPlane.updateMaster(master, { status: "active" })
        yield* eventually(authenticated(p, s), (ok) => ok)
      }).pipe(Effect.provide(syncWorker(p)))
    }))

  it.live("bump the epoch: every key issued before it is revoked (issued_at_epoch < epoch); keys issued after work", () =>
    Effect.gen(function*() {
      const p = prefix()
      yield* Effect.gen(function*() {
        const master = yield* ControlPlane.createMaster({ name: "rotate", epoch: 4 })
        const before = [secret(), secret()]
        for (const s of before) yield* ControlPlane.createKey({ masterId: master, secret: s })
        yield* drained
        for (const s of before) expect((yield* hgetall(`${p}auth:token:${Contract.hashToken(s)}`))["issued_at_epoch"]).toBe("4")
        yield* ControlPlane.updateMaster(master, { epoch: 5 })
        for (const s of before) yield* eventually(authenticate(p, s), (a) => a._tag === "Refused" && a.reason === "revoked")
        // The key hashes were not rewritten: the master's epoch alone revoked them.
        for (const s of before) expect((yield* hgetall(`${p}auth:token:${Contract.hashToken(s)}`))["issued_at_epoch"]).toBe("4")
        const after = secret()
        yield* ControlPlane.createKey({ masterId: master, secret: after })
        yield* eventually(authenticated(p, after), (ok) => ok)
        expect((yield* hgetall(`${p}auth:token:${Contract.hashToken(after)}`))["issued_at_epoch"]).toBe("5")
      }).pipe(Effect.provide(syncWorker(p)))
    }))

  it.live("a key deleted and re-created with the same secret ends active, whatever order the events apply in", () =>
    Effect.gen(function*() {
      const p = prefix()
      yield* Effect.gen(function*() {
        const sync = yield* Projector
        const master = yield* ControlPlane.createMaster({ name: "again" })
        yield* sync.syncMaster(master)
        const s = secret()
        const hash = Contract.hashToken(s)
        const first = yield* ControlPlane.createKey({ masterId: master, secret: s })
        expect(yield* sync.syncKey(first)).toBe("written")
        yield* ControlPlane.deleteKey(first)
        const second = yield* ControlPlane.createKey({ masterId: master, secret: s })
        // The re-created key's event first, then the old key's late delete.
        expect(yield* sync.syncKey(second)).toBe("written")
        yield* sync.syncKey(first, hash)
        expect(yield* authenticated(p, s)).toBe(true)
        // A slow worker's delete of the old key, its lease long expired, is refused outright.
        const redis = yield* RedisSink
        const l = RedisLayout.layout({ prefix: p })
        expect(yield* RedisLayout.removeEntry(redis, l, l.token(hash), { version: Number.MAX_SAFE_INTEGER, owner: first }, 60_000)).toBe("stale")
        expect(yield* authenticated(p, s)).toBe(true)
        // The other order: the delete first (tombstone), then the re-created key.
        yield* ControlPlane.deleteKey(second)
        yield* sync.syncKey(second, hash)
        expect(yield* authenticated(p, s)).toBe(false)
        const third = yield* ControlPlane.createKey({ masterId: master, secret: s })
        expect(yield* sync.syncKey(third)).toBe("written")
        expect(yield* authenticated(p, s)).toBe(true)
      }).pipe(Effect.provide(direct_(p)))
    }))

  it.live("through the outbox: delete + re-create with the same secret while Redis is down ends active", () =>
    Effect.gen(function*() {
      const p = prefix()
      const proxy = yield* Effect.promise(() => startProxy(Number(new URL(redisUrl()).port)))
      yield* Effect.gen(function*() {
        const master = yield* ControlPlane.createMaster({ name: "flip" })
        const s = secret()
        const first = yield* ControlPlane.createKey({ masterId: master, secret: s })
        yield* drained
        yield* Effect.promise(proxy.cut)
        yield* ControlPlane.deleteKey(first)
        yield* ControlPlane.createKey({ masterId: master, secret: s })
        yield* realSleep(300)
        yield* Effect.promise(proxy.restore)
        yield* drained
        expect(yield* authenticated(p, s)).toBe(true)
      }).pipe(Effect.provide(syncWorker(p, { redis: proxy.url("redis") })), Effect.ensuring(Effect.promise(proxy.close)))
    }), 30_000)
})

describe("Models: renames and bookkeeping", () => {
  it.live("a model renamed leaves one entry, under the new name; the old name's bookkeeping is pruned", () =>
    Effect.gen(function*() {
      const p = prefix()
      yield* Effect.gen(function*() {
        const id = yield* ControlPlane.createModel({ name: `old-${p}`, contextWindow: 1 })
        yield* drained
        expect(Object.keys(yield* hgetall(`${p}meta:models`))).toEqual([`default.old-${p}`])
        yield* ControlPlane.updateModel(id, { name: `new-${p}` })
        yield* drained
        expect(Object.keys(yield* hgetall(`${p}meta:models`))).toEqual([`default.new-${p}`])
        const l = RedisLayout.layout({ prefix: p })
        expect(yield* Effect.promise(() => direct.exists(l.modelRecord(`default.old-${p}`)))).toBe(0)
        // A stale write of the model under its old name (a slow worker) cannot bring it back.
        const redis = yield* RedisSink
        const old = Snapshots.modelValue(`default.old-${p}`, (yield* ControlPlane.getModel(id)).pipe((o) => o._tag === "Some" ? o.value : undefined)!)
        const version = Number((yield* hgetall(l.modelIdRecord(id)))["v"])
        expect(yield* RedisLayout.writeModel(redis, l, `default.old-${p}`, { version: version - 1, owner: id }, old, 60_000)).toBe("stale")
        expect(Object.keys(yield* hgetall(`${p}meta:models`))).toEqual([`default.new-${p}`])
        // Deleted: the entry goes; its records become tombstones that expire.
        yield* ControlPlane.deleteModel(id)
        yield* drained
        expect(yield* hgetall(`${p}meta:models`)).toEqual({})
        expect(yield* Effect.promise(() => direct.pttl(l.modelRecord(`default.new-${p}`)))).toBeGreaterThan(0)
        expect(yield* Effect.promise(() => direct.pttl(l.modelIdRecord(id)))).toBeGreaterThan(0)
      }).pipe(Effect.provide(syncWorker(p)))
    }))
})

describe("Models: values JSON cannot hold", () => {
  it.live("a cost_per_token of NaN (Postgres's numeric takes it, and its >= 0 check passes) is InvalidRow, never \"cost_per_token\":null", () =>
    Effect.gen(function*() {
      const p = prefix()
      const db = yield* Effect.promise(() => freshDatabase("model_nan", ["outbox", "control-plane"]))
      yield* Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const sync = yield* Projector
        const id = yield* ControlPlane.createModel({ name: "priced", costPerToken: 0.5 })
        yield* sync.syncModel(id)
        for (const cost of ["NaN", "Infinity"]) {
          yield* sql`UPDATE cp_models SET cost_per_token = ${cost}::numeric WHERE id = ${id}`
          const failure = yield* Effect.flip(sync.syncModel(id))
          expect(failure._tag).toBe("InvalidRow")
          expect(failure.message).toContain(`model ${id}: costPerToken`)
          expect(JSON.parse((yield* hgetall(`${p}meta:models`))["default.priced"]!).cost_per_token).toBe(0.5)
        }
      }).pipe(Effect.provide(direct_(p, db)))
    }))
})

describe("Models: several names for one field", () => {
  it.live("gpt-4o and default.gpt-4o: the newer row holds the field; when it is deleted or renamed away the older one takes it back", () =>
    Effect.gen(function*() {
      const p = prefix()
      yield* Effect.gen(function*() {
        const field = `default.dup-${p}`
        const context = Effect.map(hgetall(`${p}meta:models`), (h) => h[field] === undefined ? undefined : JSON.parse(h[field]!).context_window)
        yield* ControlPlane.createModel({ name: `dup-${p}`, contextWindow: 1 })
        const newer = yield* ControlPlane.createModel({ name: field, contextWindow: 2 })
        yield* drained
        expect(yield* context).toBe(2)
        // The newer one is deleted: the field is the older row's again, not nobody's.
        yield* ControlPlane.deleteModel(newer)
        yield* drained
        expect(yield* context).toBe(1)
        // The gone row's late writes (a retried delete, a write read before the delete) stay refused.
        yield* enqueue(Events.ModelDelete, { resourceId: newer, payload: { name: field } })
        yield* drained
        expect(yield* context).toBe(1)
        const redis = yield* RedisSink
        const l = RedisLayout.layout({ prefix: p })
        const value = JSON.stringify({ name: field, context_window: 2 })
        expect(yield* RedisLayout.writeModel(redis, l, field, { version: 1e12, owner: newer }, value, 60_000)).toBe("stale")
        expect(yield* context).toBe(1)
        // Again with a rename: a newer row takes the field, then leaves it under another name.
        const third = yield* ControlPlane.createModel({ name: `default .dup-${p}`, contextWindow: 3 })
        yield* drained
        expect(yield* context).toBe(3)
        yield* ControlPlane.updateModel(third, { name: `moved-${p}` })
        yield* drained
        expect(yield* context).toBe(1)
        expect(JSON.parse((yield* hgetall(`${p}meta:models`))[`default.moved-${p}`]!).context_window).toBe(3)
        // meta:models_meta follows.
        const models = yield* hgetall(`${p}meta:models`)
        expect((yield* hgetall(`${p}meta:models_meta`))["checksum"]).toBe(Contract.checksumFromPayloads(Object.entries(models)))
      }).pipe(Effect.provide(syncWorker(p)))
    }))
})

describe("Snapshots are fenced: an older one never replaces a newer one", () => {
  it.live("a snapshot read before a change, written after the newer one, is refused; so is equal generation with other data", () =>
    Effect.gen(function*() {
      const p = prefix()
      const db = yield* Effect.promise(() => freshDatabase("fence", ["outbox", "control-plane"]))
      yield* Effect.gen(function*() {
        const sync = yield* Projector
        const redis = yield* RedisSink
        const l = sync.layout
        const group = yield* ControlPlane.createProviderGroup({ name: "g", type: "openai", models: ["m"] })
        yield* ControlPlane.createApiKey({ groupId: group, apiKey: "sk-1" })
        const older = yield* ControlPlane.snapshotSource("providers")
        yield* ControlPlane.createApiKey({ groupId: group, apiKey: "sk-2" })
        expect(yield* sync.syncProviders).toBe("written")
        const olderSnap = Snapshots.providers(older.groups, older.apiKeys)
        expect(yield* RedisLayout.writeSnapshot(redis, l, "providers", older.generation, olderSnap.checksum, olderSnap.entries, new Date())).toBe("stale")
        expect(Object.keys(yield* hgetall(l.providers))).toHaveLength(2)
        const meta = yield* hgetall(l.providersMeta)
        expect(yield* RedisLayout.writeSnapshot(redis, l, "providers", Number(meta["version"]), olderSnap.checksum, olderSnap.entries, new Date())).toBe("stale")
        expect((yield* hgetall(l.providersMeta))["checksum"]).toBe(meta["checksum"])
      }).pipe(Effect.provide(direct_(p, db)))
    }))

  it.live("sync_all, sync_providers and the CLI's path racing with changes: Redis ends with the last state", () =>
    Effect.gen(function*() {
      const p = prefix()
      const db = yield* Effect.promise(() => freshDatabase("fence_race", ["outbox", "control-plane"]))
      yield* Effect.gen(function*() {
        const sync = yield* Projector
        const group = yield* ControlPlane.createProviderGroup({ name: "g", type: "openai", models: ["m"] })
        const changes = Effect.gen(function*() {
          for (let i = 0; i < 30; i++) yield* ControlPlane.createApiKey({ groupId: group, apiKey: `sk-${i}` })
        })
        const rebuilds = (n: number, e: Effect.Effect<unknown, unknown>) => Effect.repeatN(e, n)
        yield* Effect.all([changes, rebuilds(15, sync.syncAll), rebuilds(40, sync.syncProviders), rebuilds(40, sync.syncProviders)], {
          concurrency: "unbounded",
          discard: true
        })
        // One more rebuild after the last change: whichever rebuild lands last, nothing older stays.
        yield* sync.syncProviders
        expect(Object.keys(yield* hgetall(sync.layout.providers))).toHaveLength(30)
      }).pipe(Effect.provide(direct_(p, db)))
    }), 60_000)
})

describe("Snapshots: fixture snapshots match the golden files", () => {
  const golden = (name: string, actual: Record<string, string>) => {
    const path = new URL(`./golden/${name}.json`, import.meta.url)
    const parsed = Object.fromEntries(Object.entries(actual).map(([k, v]) => [k, JSON.parse(v)]))
    // Regenerate deliberately (UPDATE_GOLDEN=1), then review the diff against ez-api-contract.md: a missing file is a failure.
    if (process.env["UPDATE_GOLDEN"] === "1") writeFileSync(path, JSON.stringify(parsed, null, 2) + "\n")
    expect(existsSync(path), `golden file ${name}.json is missing`).toBe(true)
    expect(parsed).toEqual(JSON.parse(readFileSync(path, "utf8")))
  }

  it.live("providers and bindings, built from the fixture, match the golden files exactly", () =>
    Effect.gen(function*() {
      const p = prefix()
      const db = yield* Effect.promise(() => freshDatabase("golden", ["outbox", "control-plane"]))
      yield* Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        for (const g of fixture.groups) yield* ControlPlane.createProviderGroup(g)
        for (const k of fixture.apiKeys) yield* ControlPlane.createApiKey(k)
        for (const b of fixture.bindings) yield* ControlPlane.createBinding(b)
        // updated_at is pinned, so that the golden file does not depend on the clock.
        yield* sql`ALTER TABLE cp_bindings DISABLE TRIGGER cp_bindings_version`
        yield* sql`UPDATE cp_bindings SET updated_at = '2026-01-01T00:00:00Z'`
        const sync = yield* Projector
        expect(yield* sync.syncProviders).toBe("written")
        expect(yield* sync.syncBindings).toBe("written")
      }).pipe(Effect.provide(direct_(p, db)))
      golden("providers", yield* hgetall(`${p}config:providers`))
      golden("bindings", yield* hgetall(`${p}config:bindings`))
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
        const sync = yield* Projector
        const l = sync.layout
        yield* sync.syncProviders
        let stop = false
        let reads = 0
        const bad: Array<string> = []
        const poll = (async () => {
          while (!stop) {
            // The cluster layout keeps snapshot and meta in one slot: read them together.
            const [[, entries], [, meta]] = (await reader.multi().hgetall(l.providers).hgetall(l.providersMeta).exec())! as [
              [null, Record<string, string>],
              [null, Record<string, string>]
            ]
            reads++
            const n = Object.keys(entries).length
            if (n !== 200 && n !== 201) bad.push(`saw ${n} entries`)
            if (Contract.checksumFromPayloads(Object.entries(entries)) !== meta["checksum"]) {
              bad.push(`meta's checksum is not the hash's (${n} entries)`)
            }
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
      }).pipe(Effect.provide(direct_(p)))
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
        const field = JSON.parse((yield* Effect.promise(() => direct.hget(`${p}meta:models`, `default.${name}`)))!)
        expect(field).toMatchObject({ name: `default.${name}`, context_window: 2 })
        expect((yield* hgetall(RedisLayout.layout({ prefix: p }).modelRecord(`default.${name}`)))["id"]).toBe(String(second))
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
        expect(yield* Effect.promise(() => admin.hget(`${p}auth:master:${id}`, "global_qps"))).toBe("1000")
      }).pipe(Effect.provide(syncWorker(p, { redis: proxy.url("redis") })))
      admin.disconnect()
    }), 60_000)
})

describe("Stale writes are harmless", () => {
  it.live("a write older than what Redis holds is refused, and the newer data stays", () =>
    Effect.gen(function*() {
      const p = prefix()
      yield* Effect.gen(function*() {
        const sync = yield* Projector
        const redis = yield* RedisSink
        const l = sync.layout
        const id = yield* ControlPlane.createMaster({ name: "fresh", globalQps: 7 })
        expect(yield* sync.syncMaster(id)).toBe("written")
        const current = Number((yield* hgetall(l.record(l.master(id))))["v"])
        // A slow worker, its lease long expired, arrives with what it read before the change.
        const result = yield* RedisLayout.writeEntry(redis, l, l.master(id), { version: current - 1, owner: id }, { global_qps: "1" })
        expect(result).toBe("stale")
        // The same version with other data is refused too; with the same data it is a no-op.
        expect(yield* RedisLayout.writeEntry(redis, l, l.master(id), { version: current, owner: id }, { global_qps: "1" })).toBe("stale")
        expect(yield* hgetall(l.master(id))).toMatchObject({ global_qps: "7" })
        expect(yield* sync.syncMaster(id)).toBe("written")
        // The same for a model field.
        const model = yield* ControlPlane.createModel({ name: `stale-${p}` })
        yield* sync.syncModel(model)
        const field = `default.stale-${p}`
        const modelVersion = Number((yield* hgetall(l.modelRecord(field)))["v"])
        expect(yield* RedisLayout.writeModel(redis, l, field, { version: modelVersion - 1, owner: model }, null, 60_000)).toBe("stale")
        expect(yield* Effect.promise(() => direct.hexists(l.models, field))).toBe(1)
      }).pipe(Effect.provide(direct_(p)))
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
        expect(yield* hgetall(`${p}sync:rec:{${p}auth:master:987654}`)).toMatchObject({ d: "removed" })
        expect(yield* hgetall(`${p}sync:rec:{${p}auth:token:${"a".repeat(64)}}`)).toMatchObject({ d: "removed" })
      }).pipe(Effect.provide(syncWorker(p, { config: { backoffBase: Duration.seconds(30) } })))
    }))

  it.live("a snapshot row that does not decode is left out: every other change is written, and the rebuild fails as InvalidRow", () =>
    Effect.gen(function*() {
      const p = prefix()
      const db = yield* Effect.promise(() => freshDatabase("invalid_snapshot_row", ["outbox", "control-plane"]))
      yield* Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        for (const g of fixture.groups) yield* ControlPlane.createProviderGroup(g)
        for (const k of fixture.apiKeys) yield* ControlPlane.createApiKey(k)
        for (const b of fixture.bindings) yield* ControlPlane.createBinding(b)
        const sync = yield* Projector
        expect(yield* sync.syncProviders).toBe("written")
        // Values Postgres accepts and the entities refuse, then a change the data plane must see.
        yield* sql`UPDATE cp_api_keys SET ban_until = 'infinity' WHERE id = 2`
        yield* sql`UPDATE cp_provider_groups SET models = '{gpt-4o,NULL}' WHERE id = 3`
        yield* sql`UPDATE cp_api_keys SET weight = 9 WHERE id = 1`
        const failure = yield* Effect.flip(sync.syncProviders)
        expect(failure._tag).toBe("InvalidRow")
        expect(failure.message).toContain("api_key 2")
        expect(failure.message).toContain("provider_group 3")
        const providers = yield* hgetall(`${p}config:providers`)
        expect(Object.keys(providers).sort()).toEqual(["1", "3", "4"])
        expect(JSON.parse(providers["1"]!)).toMatchObject({ weight: 9 })
        expect((yield* hgetall(`${p}meta:providers_meta`))["checksum"]).toBe(Contract.checksumFromPayloads(Object.entries(providers)))
        expect((yield* Effect.flip(sync.syncBindings))._tag).toBe("InvalidRow")
        const bindings = yield* hgetall(`${p}config:bindings`)
        // The left-out group's candidate goes with it; the others route as before.
        expect(JSON.parse(bindings["default.gpt-4o"]!).candidates).toHaveLength(1)
        expect(JSON.parse(bindings["default.mini"]!).candidates[0].upstreams).toEqual({ "1": "gpt-4o-mini", "3": "gpt-4o-mini" })
      }).pipe(Effect.provide(direct_(p, db)))
    }))

  it.live("the Go service's way: apply now when Redis answers, enqueue when it does not", () =>
    Effect.gen(function*() {
      const p = prefix()
      const sql = yield* SqlClient.SqlClient
      const [row] = yield* sql<{ id: number }>`INSERT INTO cp_masters (name) VALUES ('seedway') RETURNING id::float8 AS id`
      const run = (redis: string) =>
        syncNowOrEnqueue(Events.MasterUpdate, { resourceId: row!.id, payload: null }).pipe(
          Effect.provide(
            Dispatch.layer.pipe(
              Layer.provide(syncLayer(p)),
              Layer.provideMerge(Layer.merge(
                sqlLayer(url),
                redis === redisUrl() ? connected(redis, Duration.millis(300)) : RedisSink.layer({ url: Redacted.make(redis), commandTimeout: Duration.millis(300) })
              ))
            )
          )
        )
      expect(yield* run(redisUrl())).toEqual({ _tag: "Applied" })
      expect((yield* hgetall(`${p}auth:master:${row!.id}`))["status"]).toBe("active")
      const fallback = yield* run("redis://127.0.0.1:1")
      expect(fallback._tag).toBe("Enqueued")
    }).pipe(Effect.provide(sqlLayer(url))))
})

describe("Dispatch: every (resource type, action) of the Go service's vocabulary", () => {
  it("registers exactly the Go service's pairs", () => {
    const pairs = Dispatch.handlers.map((h) => `${h.type.resourceType}/${h.type.action}`).sort()
    expect(pairs).toEqual([
      "api_key/sync_bindings", "api_key/sync_providers",
      "binding/create", "binding/delete", "binding/sync", "binding/sync_bindings", "binding/update", "binding/upsert",
      "key/create", "key/delete", "key/sync", "key/update", "key/upsert",
      "master/create", "master/delete", "master/sync", "master/update", "master/upsert",
      "model/create", "model/delete", "model/sync", "model/update", "model/upsert",
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
        const providerField = String(ak!.id)

        const step = <A>(type: OutboxEvent.EventType<A, any>, input: { resourceId?: number; payload: A }, check: Effect.Effect<boolean>) =>
          Effect.gen(function*() {
            // Redis loses everything, bookkeeping included: each event alone must write its entry.
            const keys = yield* Effect.promise(() => direct.keys(`${p}*`))
            if (keys.length > 0) yield* Effect.promise(() => direct.del(...keys))
            yield* enqueue(type, input)
            yield* eventually(check, (ok) => ok, { timeout: 5_000 })
          })
        const masterWritten = Effect.map(hgetall(`${p}auth:master:${m!.id}`), (h) => h["global_qps"] === "9")
        const keyWritten = Effect.map(hgetall(`${p}auth:token:${hash}`), (h) => h["status"] === "active" && h["master_id"] === String(m!.id))
        const modelWritten = Effect.map(hgetall(`${p}meta:models`), (h) => JSON.parse(h[`default.direct-${p}`] ?? "null")?.name === `default.direct-${p}`)
        const providersWritten = Effect.map(hgetall(`${p}config:providers`), (h) => Object.keys(h).join() === providerField)
        const bindingsWritten = Effect.map(hgetall(`${p}config:bindings`), (h) =>
          JSON.parse(h["ns.m1"] ?? "null")?.candidates?.[0]?.upstreams?.[providerField] === "m1")

        for (const type of [Events.MasterCreate, Events.MasterUpdate, Events.MasterUpsert, Events.MasterSync]) {
          yield* step(type, { resourceId: m!.id, payload: null }, masterWritten)
        }
        for (const type of [Events.KeyCreate, Events.KeyUpdate, Events.KeyUpsert, Events.KeySync]) {
          yield* step(type, { resourceId: k!.id, payload: null }, keyWritten)
        }
        for (const type of [Events.ModelCreate, Events.ModelUpdate, Events.ModelUpsert, Events.ModelSync]) {
          yield* step(type, { resourceId: model!.id, payload: null }, modelWritten)
        }
        for (const type of [Events.ProviderGroupSyncProviders, Events.ApiKeySyncProviders, Events.SnapshotSyncProviders]) {
          yield* step(type, { resourceId: g!.id, payload: null }, providersWritten)
        }
        for (const type of [
          Events.ProviderGroupSyncBindings, Events.ApiKeySyncBindings, Events.BindingCreate, Events.BindingUpdate,
          Events.BindingDelete, Events.BindingUpsert, Events.BindingSync, Events.BindingSyncBindings, Events.SnapshotSyncBindings
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
          Effect.map(Effect.promise(() => direct.exists(`${p}auth:token:${hash}`)), (n) => n === 0))
        yield* sql`DELETE FROM cp_masters WHERE id = ${m!.id}`
        yield* step(Events.MasterDelete, { resourceId: m!.id, payload: null },
          Effect.map(Effect.promise(() => direct.exists(`${p}auth:master:${m!.id}`)), (n) => n === 0))
        yield* Effect.promise(() => direct.hset(`${p}meta:models`, `default.direct-${p}`, "{}"))
        yield* sql`DELETE FROM cp_models WHERE id = ${model!.id}`
        yield* enqueue(Events.ModelDelete, { payload: { name: `direct-${p}` } })
        yield* eventually(Effect.promise(() => direct.hexists(`${p}meta:models`, `default.direct-${p}`)), (n) => n === 0)
      }).pipe(Effect.provide(syncWorker(p)))
    }), 60_000)
})
