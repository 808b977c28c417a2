/**
 * The ez-api domain on a real three-node Redis Cluster. ez-api's names share no hash tag, so the
 * Cluster layout (`Projector.layer({ cluster: true })`) keeps the `auth:*` names (their
 * bookkeeping records are co-slotted through a hash tag naming the key) and puts the snapshot and
 * meta hashes under one tag, `{dp}`, so that each snapshot is still replaced atomically with its meta.
 */
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer, Option, Schedule } from "effect"
import { Cluster } from "ioredis"
import { execFileSync } from "node:child_process"
import { afterAll, beforeAll } from "vitest"
import { type PrivateRedis, startRedis } from "../scripts/services.js"
import { Convergence, type DriftReport, RedisSink, totalDrift } from "../src/index.js"
import { Contract, ControlPlane, DataPlane, DataPlaneReconciler, Projector } from "../src/ezapi/index.js"
import { freshDatabase, prefix, sqlLayer } from "./support/harness.js"

let nodes: Array<PrivateRedis> = []
let url: string
let check: Cluster
beforeAll(async () => {
  nodes = await Promise.all(
    [0, 1, 2].map(() => startRedis(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"]))
  )
  execFileSync("redis-cli", ["--cluster", "create", ...nodes.map((n) => `127.0.0.1:${n.port}`), "--cluster-replicas", "0", "--cluster-yes"], {
    stdio: "ignore"
  })
  for (;;) {
    const info = execFileSync("redis-cli", ["-p", String(nodes[0]!.port), "cluster", "info"], { encoding: "utf8" })
    if (info.includes("cluster_state:ok")) break
    await new Promise((r) => setTimeout(r, 100))
  }
  url = await freshDatabase("sync_cluster", ["outbox", "control-plane"])
  check = new Cluster(nodes.map((n) => ({ host: "127.0.0.1", port: n.port })))
}, 60_000)
afterAll(async () => {
  await check?.quit()
  await Promise.all(nodes.map((n) => n.stop()))
})

/** Connected before use: RedisSink has no offline queue, so a command before the cluster is ready fails. */
const clusterSink = () =>
  Layer.tap(
    RedisSink.layer({ clusterNodes: nodes.map((n) => `127.0.0.1:${n.port}`) }),
    (ctx) => Effect.retry(Context.get(ctx, RedisSink).ping, Schedule.spaced("10 millis")).pipe(Effect.timeout("10 seconds"), Effect.orDie)
  )
const services = (p: string, cluster: boolean | undefined) =>
  Projector.layer({ prefix: p, cluster }).pipe(Layer.provideMerge(Layer.merge(sqlLayer(url), clusterSink())))

describe("Projector on Redis Cluster", () => {
  it.live("the cluster layout: every family written, snapshots atomic with their meta, revocation works", () =>
    Effect.gen(function*() {
      const p = prefix()
      yield* Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const sync = yield* Projector
        const redis = yield* RedisSink
        const l = sync.layout
        const group = yield* ControlPlane.createProviderGroup({ name: "g", type: "openai", models: ["gpt-4o"] })
        yield* ControlPlane.createApiKey({ groupId: group, apiKey: "sk" })
        yield* ControlPlane.createBinding({ namespace: "default", publicModel: "gpt-4o", groupId: group })
        yield* ControlPlane.createModel({ name: `m-${p}` })
        const masters = [yield* ControlPlane.createMaster({ name: "a" }), yield* ControlPlane.createMaster({ name: "b" })]
        const secrets = Array.from({ length: 20 }, (_, i) => `cluster-${p}-${i}`)
        for (const [i, s] of secrets.entries()) yield* ControlPlane.createKey({ masterId: masters[i % 2]!, secret: s })
        const result = yield* sync.syncAll
        expect(result.stale).toBe(0)

        expect(l.providers).toBe(`${p}{dp}config:providers`)
        expect(l.token("h")).toBe(`${p}auth:token:h`)
        const providers = yield* Effect.promise(() => check.hgetall(l.providers))
        expect(Object.keys(providers)).toHaveLength(1)
        expect((yield* Effect.promise(() => check.hgetall(l.providersMeta)))["checksum"]).toBe(
          Contract.checksumFromPayloads(Object.entries(providers))
        )
        expect(JSON.parse((yield* Effect.promise(() => check.hget(l.bindings, "default.gpt-4o")))!).candidates).toHaveLength(1)
        expect(yield* Effect.promise(() => check.hexists(l.models, `default.m-${p}`))).toBe(1)
        expect((yield* Effect.promise(() => check.hgetall(l.modelsMeta)))["source"]).toBe("control-plane")
        // The auth hashes really are spread over the cluster.
        const slots = new Set(yield* Effect.promise(() => Promise.all(secrets.map((s) => check.cluster("KEYSLOT", l.token(Contract.hashToken(s)))))))
        expect(slots.size).toBeGreaterThan(10)
        for (const s of secrets) expect((yield* DataPlane.authenticate(redis, l, s, new Date()))._tag).toBe("Authenticated")

        yield* sql`DELETE FROM cp_masters WHERE id = ${masters[0]!}`
        yield* sync.syncMaster(masters[0]!)
        for (const [i, s] of secrets.entries()) {
          expect((yield* DataPlane.authenticate(redis, l, s, new Date()))._tag).toBe(i % 2 === 0 ? "Refused" : "Authenticated")
        }
      }).pipe(Effect.provide(services(p, true)))
    }), 60_000)

  it.live("the default (ez-api) layout: auth writes work on a cluster; a snapshot with its meta is a typed cross-slot failure", () =>
    Effect.gen(function*() {
      // One prefix in 16,384 puts both names in one slot (then the write succeeds): not that one.
      const slot = (key: string) => Effect.promise(() => check.cluster("KEYSLOT", key) as Promise<number>)
      let p = prefix()
      while ((yield* slot(`${p}config:providers`)) === (yield* slot(`${p}meta:providers_meta`))) p = prefix()
      yield* Effect.gen(function*() {
        const sync = yield* Projector
        const master = yield* ControlPlane.createMaster({ name: "c" })
        expect(yield* sync.syncMaster(master)).toBe("written")
        expect(yield* sync.syncBindings).toBe("written")
        const error = yield* Effect.flip(sync.syncProviders)
        expect(error._tag).toBe("SinkCommandError")
        expect(error.message).toMatch(/CROSSSLOT|same slot/)
      }).pipe(Effect.provide(services(p, false)))
    }), 60_000)

  it.live("without a choice, a cluster gets the cluster layout (the CLI's worker and sync-all)", () =>
    Effect.gen(function*() {
      const p = prefix()
      yield* Effect.gen(function*() {
        const sync = yield* Projector
        expect(sync.layout.providers).toBe(`${p}{dp}config:providers`)
        yield* ControlPlane.createProviderGroup({ name: `auto-${p}`, type: "openai" })
        expect(yield* sync.syncProviders).toBe("written")
      }).pipe(Effect.provide(services(p, undefined)))
    }), 60_000)

  it.live("the reconciler on a cluster: SCANs every master node, finds what a node lost and orphans anywhere, repairs them", () =>
    Effect.gen(function*() {
      const p = prefix()
      yield* Effect.gen(function*() {
        const l = (yield* Projector).layout
        const master = yield* ControlPlane.createMaster({ name: `rec-${p}` })
        const secrets = Array.from({ length: 30 }, (_, i) => `rec-${p}-${i}`)
        for (const s of secrets) yield* ControlPlane.createKey({ masterId: master, secret: s })
        const repair = Effect.map(Convergence.runOnce("manual", { repair: true }), Option.getOrThrow)
        const verify = Effect.map(Convergence.runOnce("manual", { repair: false }), Option.getOrThrow)
        yield* repair
        expect(totalDrift(yield* verify)).toBe(0)
        // One node forgets its share of the keys; an orphan appears on whichever node owns its slot.
        const node = check.nodes("master")[1]!
        const lost = (yield* Effect.promise(() => node.keys(`${p}auth:token:*`)))
        expect(lost.length).toBeGreaterThan(0)
        for (const key of lost) yield* Effect.promise(() => node.del(key))
        const orphan = `${p}auth:token:${"f".repeat(64)}`
        yield* Effect.promise(() => check.hset(orphan, { status: "active", master_id: String(master), issued_at_epoch: "9" }))
        const seen: DriftReport = yield* verify
        const tokens = seen.families.find((f) => f.family === "tokens")!
        expect(tokens).toMatchObject({ missing: lost.length, orphaned: 1 })
        yield* repair
        expect(totalDrift(yield* verify)).toBe(0)
        expect(yield* Effect.promise(() => check.exists(orphan))).toBe(0)
        const redis = yield* RedisSink
        for (const s of secrets) expect((yield* DataPlane.authenticate(redis, l, s, new Date()))._tag).toBe("Authenticated")
      }).pipe(Effect.provide(DataPlaneReconciler.layer().pipe(Layer.provideMerge(services(p, true)))))
    }), 60_000)
})
