/**
 * The ez-api domain's convergence, as an operator sees it: a Redis that forgot or drifted from the
 * control plane is put back, with nobody running a command, without ever undoing a newer event.
 * Real Postgres; a private redis-server where it is killed and started empty.
 */
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Context, Duration, Effect, Fiber, Layer, Metric, Option, Redacted, Schedule } from "effect"
import { execFile } from "node:child_process"
import { join } from "node:path"
import { Redis } from "ioredis"
import pg from "pg"
import { afterAll, beforeAll } from "vitest"
import { type PrivateRedis, startRedis } from "../scripts/services.js"
import { Convergence, ConvergenceConfig, type FamilyDrift, Metrics, Reconciler, RedisSink, totalDrift as totalDriftOf } from "../src/index.js"
import { ControlPlane, DataPlane, RedisLayout, Dispatch, DataPlaneReconciler, Projector } from "../src/ezapi/index.js"
import * as fixture from "./support/fixture.js"
import { countRows, eventually, freshDatabase, prefix, realSleep, redisUrl, sqlLayer, workerLayer } from "./support/harness.js"

let isolated: PrivateRedis
beforeAll(async () => {
  isolated = await startRedis()
}, 60_000)
afterAll(async () => {
  await isolated?.stop()
})

/** A RedisSink that waits for its connection (it has no offline queue). */
const connected = (url: string) =>
  Layer.tap(
    RedisSink.layer({ url: Redacted.make(url), commandTimeout: Duration.seconds(2) }),
    (ctx) => Effect.retry(Context.get(ctx, RedisSink).ping, Schedule.spaced("10 millis")).pipe(Effect.timeout("10 seconds"), Effect.orDie)
  )

/** The reconciler alone, over a database and a Redis, writing under prefix `p`. */
const reconcilerOn = (db: string, p: string, redis: string = redisUrl()) =>
  DataPlaneReconciler.layer().pipe(
    Layer.provideMerge(Projector.layer({ prefix: p })),
    Layer.provideMerge(Layer.merge(sqlLayer(db), connected(redis)))
  )

const repair = Convergence.runOnce("manual", { repair: true }).pipe(Effect.map(Option.getOrThrow))
const check = Convergence.runOnce("manual", { repair: false }).pipe(Effect.map(Option.getOrThrow))
const family = (report: { families: ReadonlyArray<{ family: string }> }, name: string) =>
  report.families.find((f) => f.family === name) as FamilyDrift

/** A small gateway through the outbox way (rows and their events). */
const gateway = Effect.gen(function*() {
  for (const g of fixture.groups) yield* ControlPlane.createProviderGroup(g)
  for (const k of fixture.apiKeys) yield* ControlPlane.createApiKey(k)
  for (const b of fixture.bindings) yield* ControlPlane.createBinding(b)
  const master = yield* ControlPlane.createMaster({ name: "acme", globalQps: 10 })
  const other = yield* ControlPlane.createMaster({ name: "globex" })
  const secrets = ["s-1", "s-2", "s-3"].map((s) => `${s}-${Math.random().toString(36).slice(2)}`)
  const keys: Array<number> = []
  for (const [i, secret] of secrets.entries()) keys.push(yield* ControlPlane.createKey({ masterId: i === 2 ? other : master, secret }))
  const models = [yield* ControlPlane.createModel({ name: "gpt-4o", contextWindow: 128_000 }), yield* ControlPlane.createModel({ name: "team-a.claude" })]
  return { master, other, secrets, keys, models }
})

const authenticates = (p: string, secret: string) =>
  Effect.flatMap(RedisSink, (redis) => DataPlane.authenticate(redis, RedisLayout.layout({ prefix: p }), secret, new Date())).pipe(
    Effect.map((a) => a._tag === "Authenticated")
  )

/** What the balancer reads under `p`, minus what changes on every rebuild (generation, timestamps). */
const dataPlane = (client: Redis, p: string) =>
  Effect.promise(async () => {
    const out: Record<string, Record<string, string>> = {}
    for (const key of (await client.keys(`${p}*`)).sort()) {
      const name = key.slice(p.length)
      if (name.startsWith("sync:")) continue
      const value = await client.hgetall(key)
      if (name === "meta:providers_meta" || name === "meta:models_meta") out[name] = { checksum: value["checksum"] ?? "" }
      // Field order in a hash depends on how it was written: compare by field.
      else out[name] = Object.fromEntries(Object.entries(value).sort(([a], [b]) => (a < b ? -1 : 1)))
    }
    return out
  })

describe("DataPlaneReconciler", () => {
  it.live("Redis killed and started empty under a running worker: every entry comes back, with no command", () =>
    Effect.gen(function*() {
      const db = yield* Effect.promise(() => freshDatabase("heal_restart", ["outbox", "control-plane"]))
      const p = prefix()
      const client = new Redis(isolated.url)
      yield* Effect.addFinalizer(() => Effect.sync(() => client.disconnect()))
      const before = (yield* Metric.value(Metrics.dataLoss)).count
      const worker = Convergence.layer.pipe(
        Layer.provideMerge(Layer.merge(
          DataPlaneReconciler.layer().pipe(Layer.provide(Projector.layer({ prefix: p }))),
          ConvergenceConfig.layer({ interval: Option.none(), lossCheckInterval: Option.some(Duration.millis(100)) })
        )),
        Layer.provideMerge(workerLayer({
          url: db,
          redis: isolated.url,
          handlers: Dispatch.layer.pipe(Layer.provideMerge(Projector.layer({ prefix: p })))
        })),
        Layer.orDie
      )
      yield* Effect.gen(function*() {
        const g = yield* gateway
        yield* eventually(countRows("pending"), (n) => n === 0, { timeout: 20_000 })
        // The first loss check found a Redis never synced (no marker) and built it: the marker is there.
        yield* eventually(Effect.promise(() => client.exists(`${p}sync:generation`)), (n) => n === 1, { timeout: 20_000 })
        const whole = yield* dataPlane(client, p)
        expect(Object.keys(whole)).toEqual(expect.arrayContaining([
          "auth:master:" + g.master,
          "config:providers",
          "config:bindings",
          "meta:providers_meta",
          "meta:models",
          "meta:models_meta"
        ]))
        expect(Object.keys(whole).filter((k) => k.startsWith("auth:token:"))).toHaveLength(3)
        for (const s of g.secrets) expect(yield* authenticates(p, s)).toBe(true)

        // Crash and restart with nothing: no persistence, or a failover to an empty replica.
        yield* Effect.promise(() => isolated.restart())
        yield* eventually(dataPlane(client, p), (now) => JSON.stringify(now) === JSON.stringify(whole), { timeout: 20_000, interval: 50 })
        for (const s of g.secrets) expect(yield* authenticates(p, s)).toBe(true)
        // One incident beyond the initial build, counted once.
        yield* eventually(Effect.map(Metric.value(Metrics.dataLoss), (v) => v.count - before), (n) => n === 2)
        // And the events keep flowing after it, on top of the rebuilt data plane.
        yield* ControlPlane.updateMaster(g.master, { globalQps: 77 })
        yield* eventually(Effect.promise(() => client.hget(`${p}auth:master:${g.master}`, "global_qps")), (v) => v === "77")
        const runs = yield* Convergence.lastRuns
        expect(runs.find((r) => r.reason === "loss")).toMatchObject({ repair: true, error: null })
      }).pipe(Effect.provide(worker))
    }).pipe(Effect.scoped), 120_000)

  it.live("a master deleted in SQL with no event: its keys stop authenticating after one reconcile", () =>
    Effect.gen(function*() {
      const db = yield* Effect.promise(() => freshDatabase("heal_master", ["outbox", "control-plane"]))
      const p = prefix()
      yield* Effect.gen(function*() {
        const g = yield* gateway
        // Nothing applied the events: the first repair builds the whole data plane.
        const built = yield* repair
        expect(family(built, "tokens")).toMatchObject({ checked: 3, missing: 3, repaired: 3 })
        expect(family(built, "masters")).toMatchObject({ checked: 2, missing: 2, repaired: 2 })
        expect(totalDriftOf(yield* check)).toBe(0)
        for (const s of g.secrets) expect(yield* authenticates(p, s)).toBe(true)

        const sql = yield* SqlClient.SqlClient
        // Cascades to its two keys, and enqueues nothing.
        yield* sql`DELETE FROM cp_masters WHERE id = ${g.master}`
        const seen = yield* check
        expect(family(seen, "masters")).toMatchObject({ orphaned: 1, repaired: 0 })
        expect(family(seen, "masters").examples.orphaned[0]).toContain(`auth:master:${g.master}`)
        expect(family(seen, "tokens")).toMatchObject({ orphaned: 2, repaired: 0 })
        // Only reported: still there.
        expect(yield* authenticates(p, g.secrets[0]!)).toBe(true)

        const fixed = yield* repair
        expect(family(fixed, "masters")).toMatchObject({ orphaned: 1, repaired: 1 })
        expect(family(fixed, "tokens")).toMatchObject({ orphaned: 2, repaired: 2 })
        expect(yield* authenticates(p, g.secrets[0]!)).toBe(false)
        expect(yield* authenticates(p, g.secrets[1]!)).toBe(false)
        // The other master's key is untouched.
        expect(yield* authenticates(p, g.secrets[2]!)).toBe(true)
        expect(totalDriftOf(yield* check)).toBe(0)
      }).pipe(Effect.provide(reconcilerOn(db, p)))
    }), 60_000)

  it.live("a paced repair of many orphans accounts for every command it sends (the rate budget holds)", () =>
    Effect.gen(function*() {
      const db = yield* Effect.promise(() => freshDatabase("heal_paced", ["outbox", "control-plane"]))
      const p = prefix()
      const client = new Redis(isolated.url)
      const monitor = yield* Effect.promise(() => new Redis(isolated.url).monitor())
      yield* Effect.addFinalizer(() => Effect.sync(() => (client.disconnect(), monitor.disconnect())))
      yield* Effect.gen(function*() {
        yield* gateway
        yield* repair
        // Hundreds of orphans: auth entries no key holds, and models deleted in SQL with no event.
        yield* Effect.promise(async () => {
          const pipe = client.pipeline()
          for (let i = 0; i < 300; i++) pipe.hset(`${p}auth:token:${i.toString(16).padStart(64, "0")}`, "status", "active")
          await pipe.exec()
        })
        const sql = yield* SqlClient.SqlClient
        yield* sql`DELETE FROM cp_models`
        // Every command a client sends (not those a script runs), from here to the sentinel.
        let sent = 0
        let done = false
        const sentinel = `done-${p}`
        monitor.on("monitor", (_time: string, args: ReadonlyArray<string>, source: string) => {
          if (args[0]?.toLowerCase() === "echo" && args[1] === sentinel) done = true
          else if (!done && source !== "lua") sent++
        })
        yield* Effect.promise(() => client.ping())
        yield* eventually(Effect.sync(() => sent), (n) => n > 0)
        sent = 0
        let paced = 0
        const reconciler = yield* Reconciler
        const report = yield* reconciler.reconcile({ repair: true, rate: 1_000_000, pace: (n) => Effect.sync(() => void (paced += n)) })
        expect(family(report, "tokens")).toMatchObject({ orphaned: 300, repaired: 300 })
        expect(family(report, "models")).toMatchObject({ orphaned: 2, repaired: 2 })
        yield* Effect.promise(() => client.echo(sentinel))
        yield* eventually(Effect.sync(() => done), (d) => d)
        // The marker's check and write at the start are not paced; everything else is.
        expect(sent).toBeLessThanOrEqual(paced + 10)
      }).pipe(Effect.provide(reconcilerOn(db, p, isolated.url)))
    }).pipe(Effect.scoped), 60_000)

  it.live("hand-edited bookkeeping (index entries that name no row) does not stop a repair or sync_all", () =>
    Effect.gen(function*() {
      const db = yield* Effect.promise(() => freshDatabase("heal_index_junk", ["outbox", "control-plane"]))
      const p = prefix()
      const client = new Redis(redisUrl())
      yield* Effect.addFinalizer(() => Effect.sync(() => client.disconnect()))
      yield* Effect.gen(function*() {
        const g = yield* gateway
        yield* repair
        yield* Effect.promise(async () => {
          await client.hset(`${p}sync:key-owners`, { junk: "zzz", "9999": "not-a-hash:1" })
          await client.sadd(`${p}sync:masters`, "abc", "-1")
          // And real drift beside it, which must still be healed.
          await client.del(`${p}auth:token:${ControlPlane.tokenHash(g.secrets[0]!)}`)
        })
        const fixed = yield* repair
        expect(family(fixed, "tokens")).toMatchObject({ missing: 1, repaired: 1 })
        for (const s of g.secrets) expect(yield* authenticates(p, s)).toBe(true)
        expect(totalDriftOf(yield* check)).toBe(0)
        const all = yield* Effect.flatMap(Projector, (sync) => sync.syncAll)
        expect(all.stale).toBe(0)
      }).pipe(Effect.provide(reconcilerOn(db, p)))
    }).pipe(Effect.scoped), 60_000)

  it.live("keys overwritten with something other than a hash (meta:models, meta:models_meta, records) are replaced, not fatal", () =>
    Effect.gen(function*() {
      const db = yield* Effect.promise(() => freshDatabase("heal_wrongtype", ["outbox", "control-plane"]))
      const p = prefix()
      const client = new Redis(redisUrl())
      yield* Effect.addFinalizer(() => Effect.sync(() => client.disconnect()))
      yield* Effect.gen(function*() {
        const g = yield* gateway
        yield* repair
        const whole = yield* dataPlane(client, p)
        const token = `${p}auth:token:${ControlPlane.tokenHash(g.secrets[0]!)}`
        yield* Effect.promise(async () => {
          for (const key of [`${p}meta:models`, `${p}meta:models_meta`, `${p}sync:rec:{${p}config:providers}`, `${p}sync:rec:{${token}}`]) {
            await client.del(key)
            await client.set(key, "junk")
          }
          await client.hset(token, "status", "suspended")
        })
        yield* repair
        expect(yield* dataPlane(client, p)).toEqual(whole)
        for (const s of g.secrets) expect(yield* authenticates(p, s)).toBe(true)
        expect(totalDriftOf(yield* check)).toBe(0)
        // The event path writes over them too.
        yield* Effect.promise(() => client.set(`${p}meta:models`, "junk"))
        const sync = yield* Projector
        expect(yield* sync.syncModel(g.models[0]!)).toBe("written")
        expect(yield* Effect.promise(() => client.type(`${p}meta:models`))).toBe("hash")
      }).pipe(Effect.provide(reconcilerOn(db, p)))
    }).pipe(Effect.scoped), 60_000)

  it.live("indexes overwritten with another type are rebuilt by a repair, and the events' writes work again", () =>
    Effect.gen(function*() {
      const db = yield* Effect.promise(() => freshDatabase("heal_index_type", ["outbox", "control-plane"]))
      const p = prefix()
      const client = new Redis(redisUrl())
      yield* Effect.addFinalizer(() => Effect.sync(() => client.disconnect()))
      yield* Effect.gen(function*() {
        const g = yield* gateway
        yield* repair
        yield* Effect.promise(async () => {
          for (const key of [`${p}sync:key-owners`, `${p}sync:masters`]) {
            await client.del(key)
            await client.set(key, "junk")
          }
        })
        // Only looking: it reports the lost index entries instead of failing.
        const seen = yield* check
        expect(family(seen, "tokens")).toMatchObject({ stale: 3 })
        expect(family(seen, "masters")).toMatchObject({ stale: 2 })
        yield* repair
        expect(yield* Effect.promise(() => client.hlen(`${p}sync:key-owners`))).toBe(3)
        expect(yield* Effect.promise(() => client.scard(`${p}sync:masters`))).toBe(2)
        expect(totalDriftOf(yield* check)).toBe(0)
        const sync = yield* Projector
        expect(yield* sync.syncKey(g.keys[0]!)).toBe("written")
        expect(yield* sync.syncMaster(g.master)).toBe("written")
      }).pipe(Effect.provide(reconcilerOn(db, p)))
    }).pipe(Effect.scoped), 60_000)

  it.live("an expired key's entry put back without its TTL (a hand edit, a restore) is found and removed", () =>
    Effect.gen(function*() {
      const db = yield* Effect.promise(() => freshDatabase("heal_expired", ["outbox", "control-plane"]))
      const p = prefix()
      const client = new Redis(redisUrl())
      yield* Effect.addFinalizer(() => Effect.sync(() => client.disconnect()))
      yield* Effect.gen(function*() {
        const master = yield* ControlPlane.createMaster({ name: "acme" })
        const secret = `expired-${Math.random().toString(36).slice(2)}`
        yield* ControlPlane.createKey({ masterId: master, secret, expiresAt: new Date(Date.now() - 60_000) })
        yield* repair
        const entry = `${p}auth:token:${ControlPlane.tokenHash(secret)}`
        expect(yield* Effect.promise(() => client.exists(entry))).toBe(0)
        yield* Effect.promise(() => client.hset(entry, { master_id: String(master), issued_at_epoch: "1", status: "active", expires_at: "0" }))
        expect(yield* authenticates(p, secret)).toBe(true)
        const seen = yield* check
        expect(family(seen, "tokens")).toMatchObject({ stale: 1 })
        expect(family(seen, "tokens").examples.stale[0]).toContain("expired")
        yield* repair
        expect(yield* Effect.promise(() => client.exists(entry))).toBe(0)
        expect(yield* authenticates(p, secret)).toBe(false)
        expect(totalDriftOf(yield* check)).toBe(0)
      }).pipe(Effect.provide(reconcilerOn(db, p)))
    }).pipe(Effect.scoped), 60_000)

  it.live("rows that do not decode are a typed failure of the run, after every other entry was rebuilt", () =>
    Effect.gen(function*() {
      const db = yield* Effect.promise(() => freshDatabase("heal_invalid", ["outbox", "control-plane"]))
      const p = prefix()
      const client = new Redis(redisUrl())
      yield* Effect.addFinalizer(() => Effect.sync(() => client.disconnect()))
      yield* Effect.gen(function*() {
        const g = yield* gateway
        const sql = yield* SqlClient.SqlClient
        // Values Postgres accepts and the entities refuse: an infinite expiry, a NULL in an array.
        yield* sql`UPDATE cp_keys SET expires_at = 'infinity' WHERE id = ${g.keys[0]!}`
        yield* sql`UPDATE cp_masters SET namespaces = '{default,NULL}' WHERE id = ${g.other}`
        // Redis starts empty: the rebuild reports both rows, by entity and id, as InvalidRow...
        const failure = yield* Effect.flip(repair)
        expect(failure._tag).toBe("ReconcileError")
        expect(failure.message).toContain(`key ${g.keys[0]}`)
        expect(failure.message).toContain(`master ${g.other}`)
        expect((failure.cause as ReadonlyArray<{ _tag: string }>).map((e) => e._tag)).toEqual(["InvalidRow", "InvalidRow"])
        // ...and did not stop at them: every other entry was written.
        expect(yield* authenticates(p, g.secrets[1]!)).toBe(true)
        expect(yield* Effect.promise(() => client.exists(`${p}auth:master:${g.master}`))).toBe(1)
        expect(yield* Effect.promise(() => client.hlen(`${p}config:providers`))).toBe(fixture.apiKeys.length)
        expect(yield* Effect.promise(() => client.exists(`${p}meta:providers_meta`, `${p}config:bindings`, `${p}meta:models_meta`))).toBe(3)
        expect(yield* Effect.promise(() => client.hlen(`${p}meta:models`))).toBe(2)
        // Fixed rows are picked up by the next run, which then succeeds.
        yield* sql`UPDATE cp_keys SET expires_at = NULL WHERE id = ${g.keys[0]!}`
        yield* sql`UPDATE cp_masters SET namespaces = '{default}' WHERE id = ${g.other}`
        yield* repair
        for (const s of g.secrets) expect(yield* authenticates(p, s)).toBe(true)
        expect(totalDriftOf(yield* check)).toBe(0)
      }).pipe(Effect.provide(reconcilerOn(db, p)))
    }).pipe(Effect.scoped), 60_000)

  it.live("a corrupted provider entry, a hand-edited key, an orphan entry and a gone model are found, then repaired", () =>
    Effect.gen(function*() {
      const db = yield* Effect.promise(() => freshDatabase("heal_drift", ["outbox", "control-plane"]))
      const p = prefix()
      const client = new Redis(redisUrl())
      yield* Effect.addFinalizer(() => Effect.sync(() => client.disconnect()))
      yield* Effect.gen(function*() {
        const g = yield* gateway
        yield* repair
        const expectedProviders = yield* Effect.promise(() => client.hgetall(`${p}config:providers`))
        const token = (i: number) => `${p}auth:token:${ControlPlane.tokenHash(g.secrets[i]!)}`

        yield* Effect.promise(async () => {
          await client.hset(`${p}config:providers`, "1", "{\"garbage\":true}")
          await client.hset(token(0), "status", "suspended")
          // A key nobody has: it must not authenticate.
          await client.hset(`${p}auth:token:${"0".repeat(64)}`, { master_id: String(g.master), status: "active", issued_at_epoch: "9" })
          // Not even a hash any more: read as stale, not a failed reconcile.
          await client.del(`${p}auth:master:${g.other}`)
          await client.set(`${p}auth:master:${g.other}`, "junk")
        })
        const otherMaster = { epoch: "1", status: "active", group: "default", global_qps: "0", default_namespace: "default", namespaces: "default" }
        const sql = yield* SqlClient.SqlClient
        yield* sql`DELETE FROM cp_models WHERE id = ${g.models[1]!}`
        expect(yield* Effect.promise(() => client.hexists(`${p}meta:models`, "team-a.claude"))).toBe(1)

        const seen = yield* check
        expect(family(seen, "providers")).toMatchObject({ stale: 1 })
        expect(family(seen, "providers").examples.stale).toEqual([`${p}config:providers[1]`])
        expect(family(seen, "tokens")).toMatchObject({ stale: 1, orphaned: 1 })
        expect(family(seen, "models")).toMatchObject({ orphaned: 1 })
        expect(family(seen, "bindings")).toMatchObject({ missing: 0, stale: 0, orphaned: 0 })
        expect(family(seen, "masters")).toMatchObject({ stale: 1 })
        expect(totalDriftOf(seen)).toBe(5)

        const fixed = yield* repair
        expect(fixed.families.reduce((n, f) => n + f.repaired, 0)).toBeGreaterThanOrEqual(5)
        expect(yield* Effect.promise(() => client.hgetall(`${p}config:providers`))).toEqual(expectedProviders)
        expect(yield* Effect.promise(() => client.hget(token(0), "status"))).toBe("active")
        expect(yield* Effect.promise(() => client.hgetall(`${p}auth:master:${g.other}`))).toEqual(otherMaster)
        expect(yield* Effect.promise(() => client.exists(`${p}auth:token:${"0".repeat(64)}`))).toBe(0)
        expect(yield* Effect.promise(() => client.hexists(`${p}meta:models`, "team-a.claude"))).toBe(0)
        // meta:models_meta follows what meta:models holds now.
        const models = yield* Effect.promise(() => client.hgetall(`${p}meta:models`))
        expect(yield* Effect.promise(() => client.hget(`${p}meta:models_meta`, "checksum"))).toBe(RedisLayout.digest(models))
        expect(totalDriftOf(yield* check)).toBe(0)
      }).pipe(Effect.provide(reconcilerOn(db, p)))
    }).pipe(Effect.scoped), 60_000)

  it.live("two names for one model field: the newer row deleted in SQL is drift, and the repair gives the field back to the older row", () =>
    Effect.gen(function*() {
      const db = yield* Effect.promise(() => freshDatabase("heal_model_heir", ["outbox", "control-plane"]))
      const p = prefix()
      const client = new Redis(redisUrl())
      yield* Effect.addFinalizer(() => Effect.sync(() => client.disconnect()))
      yield* Effect.gen(function*() {
        const older = yield* ControlPlane.createModel({ name: "gpt-4o", contextWindow: 1 })
        const newer = yield* ControlPlane.createModel({ name: "default.gpt-4o", contextWindow: 2 })
        yield* repair
        const context = Effect.promise(() => client.hget(`${p}meta:models`, "default.gpt-4o")).pipe(
          Effect.map((json) => (json === null ? undefined : JSON.parse(json).context_window))
        )
        expect(yield* context).toBe(2)
        const sql = yield* SqlClient.SqlClient
        yield* sql`DELETE FROM cp_models WHERE id = ${newer}`
        // The field's record names a row that is gone: not "newer", drift.
        const seen = yield* check
        expect(family(seen, "models")).toMatchObject({ stale: 1 })
        expect(family(seen, "models").examples.stale[0]).toContain(`model ${older}, held by model ${newer}, gone`)
        yield* repair
        expect(yield* context).toBe(1)
        expect(totalDriftOf(yield* check)).toBe(0)
      }).pipe(Effect.provide(reconcilerOn(db, p)))
    }).pipe(Effect.scoped), 60_000)

  it.live("a meta hash that lost a field besides its checksum (version, timestamp, updated_at, source) is stale, and repaired", () =>
    Effect.gen(function*() {
      const db = yield* Effect.promise(() => freshDatabase("heal_meta", ["outbox", "control-plane"]))
      const p = prefix()
      const client = new Redis(redisUrl())
      yield* Effect.addFinalizer(() => Effect.sync(() => client.disconnect()))
      yield* Effect.gen(function*() {
        yield* gateway
        yield* repair
        const providersMeta = yield* Effect.promise(() => client.hgetall(`${p}meta:providers_meta`))
        const modelsMeta = yield* Effect.promise(() => client.hgetall(`${p}meta:models_meta`))
        yield* Effect.promise(() => client.hdel(`${p}meta:providers_meta`, "version", "timestamp"))
        yield* Effect.promise(() => client.hdel(`${p}meta:models_meta`, "version", "source"))
        const seen = yield* check
        expect(family(seen, "providers")).toMatchObject({ stale: 1 })
        expect(family(seen, "providers").examples.stale).toEqual([`${p}meta:providers_meta`])
        expect(family(seen, "models")).toMatchObject({ stale: 1 })
        expect(family(seen, "models").examples.stale).toEqual([`${p}meta:models_meta`])
        yield* repair
        expect(Object.keys(yield* Effect.promise(() => client.hgetall(`${p}meta:providers_meta`))).sort()).toEqual(Object.keys(providersMeta).sort())
        const models = yield* Effect.promise(() => client.hgetall(`${p}meta:models_meta`))
        expect({ ...models, updated_at: "" }).toEqual({ ...modelsMeta, updated_at: "" })
        expect(totalDriftOf(yield* check)).toBe(0)
      }).pipe(Effect.provide(reconcilerOn(db, p)))
    }).pipe(Effect.scoped), 60_000)

  it.live("a repair never undoes a newer event: entries newer than its read are left, and concurrent creates all survive", () =>
    Effect.gen(function*() {
      const db = yield* Effect.promise(() => freshDatabase("heal_fence", ["outbox", "control-plane"]))
      const p = prefix()
      const client = new Redis(redisUrl())
      yield* Effect.addFinalizer(() => Effect.sync(() => client.disconnect()))
      const l = RedisLayout.layout({ prefix: p })
      yield* Effect.gen(function*() {
        const g = yield* gateway
        yield* repair
        // What an event for a later state of the row would have written, after the reconciler's read.
        const [row] = yield* Effect.flatMap(SqlClient.SqlClient, (sql) =>
          sql<{ version: number }>`SELECT version::float8 AS version FROM cp_masters WHERE id = ${g.master}`)
        const newer = { epoch: "5", status: "suspended", group: "gold", global_qps: "1", default_namespace: "default", namespaces: "" }
        const redis = yield* RedisSink
        yield* RedisLayout.writeEntry(redis, l, l.master(g.master), { version: row!.version + 1_000, owner: g.master }, newer)
        const report = yield* repair
        expect(family(report, "masters")).toMatchObject({ missing: 0, stale: 0, repaired: 0 })
        expect(yield* Effect.promise(() => client.hgetall(l.master(g.master)))).toEqual(newer)
      }).pipe(Effect.provide(reconcilerOn(db, p)))

      // Keys created (and applied by a worker) while repairs run in a loop: none is removed or overwritten.
      const p2 = prefix()
      const created: Array<string> = []
      yield* Effect.gen(function*() {
        const master = yield* ControlPlane.createMaster({ name: "busy" })
        // Another process's reconciler (its own pools), repairing over and over while the events flow.
        let stopped = false
        const loop = yield* Effect.fork(
          Effect.gen(function*() {
            while (!stopped) {
              yield* repair
              yield* realSleep(20)
            }
          }).pipe(Effect.provide(reconcilerOn(db, p2)), Effect.scoped)
        )
        for (let i = 0; i < 40; i++) {
          const secret = `busy-${i}-${Math.random().toString(36).slice(2)}`
          yield* ControlPlane.createKey({ masterId: master, secret })
          created.push(secret)
          if (i % 10 === 0) yield* ControlPlane.updateMaster(master, { globalQps: i })
        }
        yield* eventually(countRows("pending"), (n) => n === 0, { timeout: 60_000, interval: 50 })
        // Stopped between two repairs: interrupting one mid-flight and closing its client at once
        // can make ioredis throw from an auto-pipeline (seen here; see the report), not what this tests.
        stopped = true
        yield* Fiber.join(loop)
        // No reconcile after the last event: what is there is what the events and the repairs left.
        for (const s of created) expect(yield* authenticates(p2, s)).toBe(true)
        expect(yield* Effect.promise(() => client.hget(`${p2}auth:master:${master}`, "global_qps"))).toBe("30")
      }).pipe(Effect.provide(workerLayer({
        url: db,
        handlers: Dispatch.layer.pipe(Layer.provideMerge(Projector.layer({ prefix: p2 })))
      }).pipe(Layer.provideMerge(sqlLayer(db)))))
    }).pipe(Effect.scoped), 120_000)

  it.live("the loss check: a marker written first by every repair; its absence (or the meta's) is a loss", () =>
    Effect.gen(function*() {
      const db = yield* Effect.promise(() => freshDatabase("heal_loss", ["outbox", "control-plane"]))
      const p = prefix()
      const client = new Redis(redisUrl())
      yield* Effect.addFinalizer(() => Effect.sync(() => client.disconnect()))
      yield* Effect.gen(function*() {
        const reconciler = yield* Reconciler
        expect(Option.isSome(yield* reconciler.detectLoss)).toBe(true)
        yield* gateway
        yield* repair
        expect(yield* reconciler.detectLoss).toEqual(Option.none())
        yield* Effect.promise(() => client.del(`${p}meta:providers_meta`))
        expect(Option.getOrThrow(yield* reconciler.detectLoss)).toContain("meta:providers_meta")
        yield* repair
        yield* Effect.promise(() => client.del(`${p}sync:generation`))
        expect(Option.getOrThrow(yield* reconciler.detectLoss)).toContain("sync:generation")
      }).pipe(Effect.provide(reconcilerOn(db, p)))
    }).pipe(Effect.scoped), 60_000)
})

// ---------------------------------------------------------------------------------------------
// The CLI: `verify [--repair] [--json]` and the status line, against a private Redis (the
// contract's names, no prefix: nothing else may live there).
// ---------------------------------------------------------------------------------------------

const root = new URL("..", import.meta.url).pathname
const cli = (args: ReadonlyArray<string>, env: Record<string, string>) =>
  new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
    execFile("node", [join(root, "bin/sync-outbox.js"), ...args], { env: { ...process.env, ...env }, timeout: 120_000 }, (error, stdout, stderr) =>
      resolve({ code: error ? (typeof error.code === "number" ? error.code : 1) : 0, stdout, stderr }))
  })

describe("sync-outbox verify", () => {
  it("reports drift per family as JSON (exit 3), repairs it (exit 0), then finds none; status shows the run", async () => {
    const db = await freshDatabase("cli_verify", ["outbox", "control-plane"])
    const redis = await startRedis()
    try {
      const env = { DATABASE_URL: db, REDIS_URL: redis.url }
      await Effect.runPromise(gateway.pipe(Effect.provide(sqlLayer(db))))
      const first = await cli(["verify", "--json"], env)
      expect(first.code, first.stderr).toBe(3)
      expect(first.stderr).toContain("drift found")
      const found = JSON.parse(first.stdout)
      expect(found).toMatchObject({ inSync: false, repair: false, repaired: 0 })
      expect(found.families.map((f: { family: string }) => f.family)).toEqual(["tokens", "masters", "providers", "bindings", "models"])
      expect(found.families[0]).toMatchObject({ family: "tokens", checked: 3, missing: 3, stale: 0, orphaned: 0 })
      expect(found.families[0].examples.missing[0]).toMatch(/^auth:token:[0-9a-f]{64} \(key \d+\)$/)

      const repaired = await cli(["verify", "--repair", "--json"], env)
      expect(repaired.code, repaired.stderr).toBe(0)
      expect(JSON.parse(repaired.stdout)).toMatchObject({ repair: true, drift: found.drift, repaired: found.drift })

      const clean = await cli(["verify"], env)
      expect(clean.code, clean.stderr).toBe(0)
      expect(clean.stdout).toContain("in sync")

      const status = await cli(["status", "--json"], env)
      const manual = JSON.parse(status.stdout).reconciles.find((r: { reason: string }) => r.reason === "manual")
      expect(manual).toMatchObject({ reason: "manual", repair: false, drift: 0, error: null })
      expect(typeof manual.durationMs).toBe("number")
      expect((await cli(["status"], env)).stdout).toMatch(/manual +\S+ ago by .*: drift 0 \(not repaired\)/)

      // A control-plane row that does not decode: the rest is still compared, and shown, as drift (3).
      const broken = new pg.Client({ connectionString: db })
      await broken.connect()
      await broken.query(`UPDATE cp_keys SET expires_at = 'infinity' WHERE id = (SELECT min(id) FROM cp_keys)`)
      await broken.end()
      const invalid = await cli(["verify", "--json"], env)
      expect(invalid.code, invalid.stderr).toBe(3)
      expect(invalid.stderr).toContain("do not decode")
      expect(JSON.parse(invalid.stdout)).toMatchObject({ repair: false })
      expect(JSON.parse(invalid.stdout).families.map((f: { family: string }) => f.family)).toEqual(["tokens", "masters", "providers", "bindings", "models"])

      // Usage errors stay 2.
      expect((await cli(["verify", "--fix"], env)).code).toBe(2)
    } finally {
      await redis.stop()
    }
  }, 300_000)
})
