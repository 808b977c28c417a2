/**
 * `npm run bench`: sync-outbox against a bare SQL+Redis loop (the ceiling), on the same Postgres
 * and Redis, in one run. Every item is applied to Redis by a handler (a SET). Prints a table.
 *
 *   (a) open-loop latency at 200 events/s, enqueue call to applied in Redis: p50/p95/p99; again
 *       with the producer on a plain pg client (enqueueWith), as the bare loop's producer writes
 *   (b) drain a backlog of 20,000: items/s
 *   (c) a 3 s Redis outage with 1,000 events arriving: time from Redis back to last applied,
 *       and failed apply attempts during the outage
 *   (d) enqueue inside a caller's transaction: added p50; the NOTIFY trigger at 16 writers
 *   (e) claim time and worker memory with 10,000 vs 1,000,000 pending
 *   (f) the journal: drain with retention on vs off (0); claim and completion with an empty
 *       vs a 1,000,000-row journal
 *   (g) convergence (the built-in ez-api domain): a private Redis holding 10,000 keys and 1,000
 *       bindings killed and started empty under a running worker: time until the data plane is
 *       complete again; a reconcile of 100,000 entities in sync: its duration and Redis commands/s;
 *       the event path's p99 during that sweep vs without. BENCH_CONVERGENCE_KEYS (10000),
 *       BENCH_CONVERGENCE_BINDINGS (1000), BENCH_CONVERGENCE_ENTITIES (100000) size it;
 *       BENCH_CONVERGENCE_RATE sets the sweep's budget (default: SYNC_OUTBOX_RECONCILE_RATE's).
 *
 * DATABASE_URL / REDIS_URL select existing servers; otherwise private ones are started.
 * BENCH_QUICK=1 shortens every phase (for a smoke run); BENCH_ONLY=latency,drain,outage,enqueue,claim,journal,convergence
 * runs only the phases named.
 */
import { SqlClient } from "@effect/sql"
import { Duration, Effect, Exit, Layer, Option, Redacted, Schema } from "effect"
import { Redis } from "ioredis"
import { spawn } from "node:child_process"
import { cpus, totalmem } from "node:os"
import { monitorEventLoopDelay, performance } from "node:perf_hooks"
import pg from "pg"
import {
  Convergence,
  ConvergenceConfig,
  Database,
  enqueue,
  enqueueMany,
  event,
  handleBatch,
  Handlers,
  Listener,
  Migrations,
  OutboxConfig,
  OutboxEvent,
  RedisSink,
  Store,
  totalDrift,
  Worker
} from "../src/index.js"
import { defaults as ConvergenceDefaults } from "../src/Convergence.js"
import { ControlPlane, Dispatch, DataPlaneReconciler, Projector } from "../src/ezapi/index.js"
import { startProxy, type Proxy } from "../scripts/proxy.js"
import { createDatabase, type RunningService, startPostgres, startRedis } from "../scripts/services.js"

const quick = process.env["BENCH_QUICK"] === "1"
const log = (line: string) => process.stderr.write(`bench: ${line}\n`)
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))
const pct = (xs: ReadonlyArray<number>, p: number) => {
  const s = [...xs].sort((a, b) => a - b)
  return s.length === 0 ? NaN : s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!
}
const f = (n: number, digits = 2) => (Number.isFinite(n) ? n.toFixed(digits) : "-")

// ---------------------------------------------------------------------------------------------
// The work: SET bench:<key> <value>. Completion times are recorded by the handler itself.
// ---------------------------------------------------------------------------------------------

const Item = OutboxEvent.make({
  resourceType: "bench",
  action: "set",
  payload: Schema.Struct({ k: Schema.String, v: Schema.String }),
  orderingKey: ({ payload }) => `bench:${payload.k}`
})

const appliedAt = new Map<string, number>()
let failedApplies = 0
let target = 0
let onTarget: (() => void) | undefined

const recordApplied = (k: string) => {
  appliedAt.set(k, performance.now())
  if (appliedAt.size >= target && onTarget !== undefined) {
    const done = onTarget
    onTarget = undefined
    done()
  }
}
const untilApplied = (n: number) =>
  new Promise<void>((resolve) => {
    target = n
    if (appliedAt.size >= n) resolve()
    else onTarget = resolve
  })

// One pipeline per batch: the same work the bare loop does.
const handlers = Handlers.layer(
  handleBatch(Item, (events) =>
    Effect.flatMap(RedisSink, (redis) =>
      redis.use(async (c) => {
        const pipeline = c.pipeline()
        for (const e of events) pipeline.set(`bench:${e.payload.k}`, e.payload.v)
        const results = (await pipeline.exec()) ?? []
        return events.map((e, i) => {
          const error = results[i]?.[0] ?? null
          if (error === null) recordApplied(e.payload.k)
          else failedApplies++
          return error === null ? Exit.void : Exit.fail(error)
        })
      }).pipe(Effect.tapError(() => Effect.sync(() => (failedApplies += events.length))))))
)

// ---------------------------------------------------------------------------------------------

interface Env {
  readonly dbUrl: string
  readonly redisPort: number
  readonly proxy: Proxy
}

const workerLayer = (env: Env, redisUrl: string, config: Partial<Parameters<typeof OutboxConfig.layer>[0]> = {}) => {
  const database = Database.layer({ url: Redacted.make(env.dbUrl), maxConnections: 8 })
  return Worker.layer.pipe(
    Layer.provideMerge(
      Layer.mergeAll(Store.layer, Listener.layer({ url: Redacted.make(env.dbUrl), channel: "sync_outbox" }), handlers)
    ),
    Layer.provideMerge(
      Layer.mergeAll(
        OutboxConfig.layer({ batchSize: 1000, concurrency: 500, interval: Duration.seconds(1), ...config }),
        database,
        RedisSink.layer({ url: Redacted.make(redisUrl), commandTimeout: Duration.millis(500) })
      )
    ),
    Layer.orDie
  )
}

const sqlLayer = (env: Env) => Database.layer({ url: Redacted.make(env.dbUrl), maxConnections: 20 })

const truncate = async (env: Env) => {
  const c = new pg.Client({ connectionString: env.dbUrl })
  await c.connect()
  await c.query("TRUNCATE sync_outbox, sync_outbox_journal, bare_queue CASCADE")
  await c.query("VACUUM ANALYZE sync_outbox")
  await c.end()
  appliedAt.clear()
  failedApplies = 0
}

/** Run `body` with a worker alive. */
const withWorker = <A>(env: Env, body: () => Promise<A>, redisUrl = `redis://127.0.0.1:${env.redisPort}`, config = {}) =>
  Effect.runPromise(
    Effect.scoped(
      Effect.gen(function*() {
        yield* Layer.build(workerLayer(env, redisUrl, config))
        return yield* Effect.promise(body)
      })
    )
  )

// ---------------------------------------------------------------------------------------------
// The bare loop: one table, LISTEN, DELETE ... RETURNING, pipelined SETs. No leases, no retries
// bookkeeping, no ordering: the least work that moves a row into Redis.
// ---------------------------------------------------------------------------------------------

const bareSchema = `CREATE TABLE IF NOT EXISTS bare_queue (id bigserial PRIMARY KEY, k text NOT NULL, v text NOT NULL);
CREATE OR REPLACE FUNCTION bare_notify() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_notify('bare', ''); RETURN NULL; END $$;
DROP TRIGGER IF EXISTS bare_notify ON bare_queue;
CREATE TRIGGER bare_notify AFTER INSERT ON bare_queue FOR EACH STATEMENT EXECUTE FUNCTION bare_notify();`

const bareConsumer = async (env: Env, redisUrl: string, batch = 1000) => {
  const db = new pg.Client({ connectionString: env.dbUrl })
  const listen = new pg.Client({ connectionString: env.dbUrl })
  await db.connect()
  await listen.connect()
  const redis = new Redis(redisUrl, { enableOfflineQueue: false, maxRetriesPerRequest: 0, retryStrategy: (t) => Math.min(t * 5, 50) })
  redis.on("error", () => undefined)
  let running = true
  let wake: (() => void) | undefined
  listen.on("notification", () => wake?.())
  await listen.query("LISTEN bare")
  const loop = (async () => {
    while (running) {
      try {
        await db.query("BEGIN")
        const { rows } = await db.query<{ k: string; v: string }>(
          `DELETE FROM bare_queue WHERE id IN (SELECT id FROM bare_queue ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) RETURNING k, v`,
          [batch]
        )
        if (rows.length > 0) {
          const p = redis.pipeline()
          for (const r of rows) p.set(`bench:${r.k}`, r.v)
          const results = await p.exec()
          if (results === null || results.some(([e]) => e !== null)) throw new Error("redis failed")
          await db.query("COMMIT")
          for (const r of rows) recordApplied(r.k)
          continue
        }
        await db.query("COMMIT")
      } catch {
        failedApplies++
        await db.query("ROLLBACK").catch(() => undefined)
        await sleep(10)
        continue
      }
      await new Promise<void>((resolve) => {
        wake = resolve
        setTimeout(resolve, 100)
      })
      wake = undefined
    }
  })()
  return async () => {
    running = false
    wake?.()
    await loop
    redis.disconnect()
    await db.end()
    await listen.end()
  }
}

// ---------------------------------------------------------------------------------------------

interface Row {
  readonly measure: string
  readonly ours: string
  readonly bare: string
  readonly goal: string
}
const rows: Array<Row> = []

/**
 * (a) open-loop latency: events arrive at a fixed rate whatever the system does, from a producer
 * in another process (a control-plane service is not the worker's process). Times are on the
 * machine-wide clock, so the producer's start and the handler's apply compare directly.
 */
const latency = async (env: Env) => {
  const rate = 200
  const seconds = quick ? 3 : 10
  const warmup = rate // the first second is not measured
  const n = rate * seconds
  const warmEvents = 400 // written before the schedule starts, one after another (see producer.ts)
  const produce = (mode: "ours" | "ours-pg" | "bare") =>
    new Promise<Map<string, { start: number; commit: number }>>((resolve, reject) => {
      const child = spawn(process.execPath, ["--import", "tsx", new URL("./producer.ts", import.meta.url).pathname, mode, env.dbUrl, String(rate), String(n), String(warmEvents)], {
        stdio: ["ignore", "pipe", "inherit"]
      })
      let out = ""
      child.stdout.on("data", (d) => (out += String(d)))
      child.once("exit", (code) => {
        if (code !== 0) return reject(new Error(`producer exited with ${code}`))
        const times = new Map<string, { start: number; commit: number }>()
        for (const line of out.trim().split("\n")) {
          const [k, start, commit] = line.split(" ")
          times.set(k!, { start: Number(start), commit: Number(commit) })
        }
        resolve(times)
      })
    })
  const measure = async (mode: "ours" | "ours-pg" | "bare") => {
    const times = await produce(mode)
    await untilApplied(n + warmEvents)
    const lat: Array<number> = []
    const commit: Array<number> = []
    for (let i = warmup; i < n; i++) {
      const t = times.get(`lat-${i}`)!
      lat.push(performance.timeOrigin + appliedAt.get(`lat-${i}`)! - t.start)
      commit.push(t.commit - t.start)
    }
    return { p50: pct(lat, 50), p95: pct(lat, 95), p99: pct(lat, 99), commit: pct(commit, 50) }
  }

  await truncate(env)
  const ours = await withWorker(env, () => measure("ours"))
  await truncate(env)
  const oursPg = await withWorker(env, () => measure("ours-pg"))
  await truncate(env)
  const stop = await bareConsumer(env, `redis://127.0.0.1:${env.redisPort}`)
  const bare = await measure("bare")
  await stop()
  rows.push({ measure: "(a) latency p50, ms", ours: f(ours.p50), bare: f(bare.p50), goal: "" })
  rows.push({ measure: "(a) latency p95, ms", ours: f(ours.p95), bare: f(bare.p95), goal: "" })
  rows.push({ measure: "(a) latency p99, ms", ours: f(ours.p99), bare: f(bare.p99), goal: "" })
  rows.push({ measure: "(a) p50 / p99, times the bare loop's", ours: `${f(ours.p50 / bare.p50)} / ${f(ours.p99 / bare.p99)}`, bare: "1 / 1", goal: "≤ 1.2 / 1.5" })
  rows.push({ measure: "(a) of which enqueue call to commit, p50 ms", ours: f(ours.commit), bare: f(bare.commit), goal: "" })
  // The same worker, its producer on a plain pg client as the bare one's: what is left is the outbox's.
  rows.push({ measure: "(a) producer on a pg client (enqueueWith): p50 / p99, ms", ours: `${f(oursPg.p50)} / ${f(oursPg.p99)}`, bare: `${f(bare.p50)} / ${f(bare.p99)}`, goal: "" })
  rows.push({ measure: "(a) that, times the bare loop's / its commit p50, ms", ours: `${f(oursPg.p50 / bare.p50)} / ${f(oursPg.p99 / bare.p99)} / ${f(oursPg.commit)}`, bare: "", goal: "" })
}

/** (b) drain a backlog that is already there when the worker starts. */
const drain = async (env: Env) => {
  const n = quick ? 5_000 : 20_000
  const fill = async (table: "outbox" | "bare") => {
    await truncate(env)
    await Effect.runPromise(
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        for (let i = 0; i < n; i += 2_000) {
          const chunk = Array.from({ length: Math.min(2_000, n - i) }, (_, j) => `drain-${i + j}`)
          if (table === "outbox") {
            yield* enqueueMany(chunk.map((k) => event(Item, { payload: { k, v: "x" } })))
          } else {
            yield* sql.unsafe(`INSERT INTO bare_queue (k, v) SELECT unnest($1::text[]), 'x'`, [chunk])
          }
        }
        yield* sql.unsafe(`VACUUM ANALYZE ${table === "outbox" ? "sync_outbox" : "bare_queue"}`)
      }).pipe(Effect.provide(sqlLayer(env)))
    )
  }
  await fill("outbox")
  const oursStart = performance.now()
  const oursMs = await withWorker(env, async () => {
    await untilApplied(n)
    return performance.now() - oursStart
  })
  await fill("bare")
  const bareStart = performance.now()
  const stop = await bareConsumer(env, `redis://127.0.0.1:${env.redisPort}`)
  await untilApplied(n)
  const bareMs = performance.now() - bareStart
  await stop()
  const ours = (n / oursMs) * 1000
  const bare = (n / bareMs) * 1000
  rows.push({ measure: `(b) drain ${n.toLocaleString("en")} items, items/s`, ours: f(ours, 0), bare: f(bare, 0), goal: "" })
  rows.push({ measure: "(b) share of the bare loop", ours: `${f((ours / bare) * 100, 0)} %`, bare: "100 %", goal: "≥ 60 %" })
}

/** (c) Redis refused for 3 s while 1,000 events arrive. */
const outage = async (env: Env) => {
  const n = 1_000
  const measure = async (start: (redisUrl: string) => Promise<() => Promise<void>>, produce: (from: number, count: number) => Promise<void>) => {
    await truncate(env)
    const stop = await start(env.proxy.url("redis"))
    await sleep(300)
    await env.proxy.cut()
    const t0 = performance.now()
    for (let i = 0; i < 10; i++) {
      await produce(i * 100, 100)
      await sleep(Math.max(0, t0 + (i + 1) * 300 - performance.now()))
    }
    const attempts = failedApplies
    const back = performance.now()
    await env.proxy.restore()
    await untilApplied(n)
    const ms = Math.max(...[...appliedAt.values()]) - back
    await stop()
    return { ms, attempts }
  }
  const ours = await Effect.runPromise(
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const { runPromise } = yield* Effect.promise(() => import("effect/Runtime"))
      const runtime = yield* Effect.runtime<SqlClient.SqlClient>()
      return yield* Effect.promise(() =>
        measure(
          async (redisUrl) => {
            const scope = await Effect.runPromise(
              Effect.gen(function*() {
                const { Scope } = yield* Effect.promise(() => import("effect"))
                const s = yield* Scope.make()
                yield* Layer.buildWithScope(workerLayer(env, redisUrl), s)
                return s
              })
            )
            const { Scope, Exit } = await import("effect")
            return () => Effect.runPromise(Scope.close(scope, Exit.void))
          },
          (from, count) =>
            runPromise(runtime)(
              sql.withTransaction(enqueueMany(Array.from({ length: count }, (_, j) => event(Item, { payload: { k: `out-${from + j}`, v: "x" } }))))
            ).then(() => undefined)
        )
      )
    }).pipe(Effect.provide(sqlLayer(env)))
  )
  const pool = new pg.Pool({ connectionString: env.dbUrl, max: 4 })
  const bare = await measure(
    (redisUrl) => bareConsumer(env, redisUrl),
    async (from, count) => {
      await pool.query(`INSERT INTO bare_queue (k, v) SELECT 'out-' || g, 'x' FROM generate_series($1::int, $2::int) g`, [from, from + count - 1])
    }
  )
  await pool.end()
  rows.push({ measure: "(c) Redis back to last applied, ms", ours: f(ours.ms, 0), bare: f(bare.ms, 0), goal: "≤ 250" })
  rows.push({ measure: "(c) failed apply attempts in the outage", ours: String(ours.attempts), bare: String(bare.attempts), goal: "≤ 100" })
}

/** (d) what enqueue adds to a caller's transaction; what the trigger costs at 16 writers. */
const enqueueCost = async (env: Env) => {
  await truncate(env)
  const c = new pg.Client({ connectionString: env.dbUrl })
  await c.connect()
  await c.query(`CREATE TABLE IF NOT EXISTS bench_business (id bigserial PRIMARY KEY, v text)`)
  await c.end()
  const n = quick ? 300 : 2_000
  const { oursP50, plainP50 } = await Effect.runPromise(
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const time = (withEvent: boolean) =>
        Effect.gen(function*() {
          const xs: Array<number> = []
          for (let i = 0; i < n; i++) {
            const t = performance.now()
            yield* sql.withTransaction(
              Effect.gen(function*() {
                yield* sql.unsafe(`INSERT INTO bench_business (v) VALUES ($1)`, ["x"])
                if (withEvent) yield* enqueue(Item, { payload: { k: `enq-${i}`, v: "x" } })
              })
            )
            xs.push(performance.now() - t)
          }
          return pct(xs, 50)
        })
      yield* time(false) // warm-up
      const plainP50 = yield* time(false)
      const oursP50 = yield* time(true)
      return { oursP50, plainP50 }
    }).pipe(Effect.provide(sqlLayer(env)))
  )
  rows.push({ measure: "(d) transaction p50 without / with enqueue, ms", ours: `${f(plainP50)} / ${f(oursP50)}`, bare: "", goal: "" })
  rows.push({ measure: "(d) enqueue adds, p50 ms", ours: f(oursP50 - plainP50, 3), bare: "", goal: "≤ 0.3" })

  // 16 writers, each committing one event per transaction as fast as it can.
  const writers = async (notify: boolean) => {
    await truncate(env)
    const seconds = quick ? 1.5 : 4
    const pool = new pg.Pool({ connectionString: env.dbUrl, max: 16 })
    let commits = 0
    const until = performance.now() + seconds * 1000
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        const client = await pool.connect()
        await client.query(`SET sync_outbox.notify = '${notify ? "on" : "off"}'`)
        while (performance.now() < until) {
          await client.query("BEGIN")
          await client.query(`SELECT sync_outbox_enqueue('bench', 'set', NULL, '{"k":"w","v":"x"}'::jsonb)`)
          await client.query("COMMIT")
          commits++
        }
        client.release()
      })
    )
    await pool.end()
    return commits / seconds
  }
  const off = await writers(false)
  const on = await writers(true)
  rows.push({ measure: "(d) 16 writers, commits/s trigger off / on", ours: `${f(off, 0)} / ${f(on, 0)}`, bare: "", goal: "" })
  rows.push({ measure: "(d) trigger cost at 16 writers", ours: `${f(Math.max(0, (1 - on / off) * 100), 1)} %`, bare: "", goal: "≤ 20 %" })
}

/** (e) claim time and memory against a small and a huge backlog. */
const claimCost = async (env: Env) => {
  const sizes = quick ? [10_000, 100_000] : [10_000, 1_000_000]
  const results: Array<{ size: number; claimMs: number; heapMb: number }> = []
  for (const size of sizes) {
    await truncate(env)
    const c = new pg.Client({ connectionString: env.dbUrl })
    await c.connect()
    await c.query(
      `INSERT INTO sync_outbox (resource_type, action, ordering_key, payload)
       SELECT 'bench', 'set', 'bench:huge-' || g, jsonb_build_object('k', 'huge-' || g, 'v', 'x') FROM generate_series(1, $1::int) g`,
      [size]
    )
    await c.query("VACUUM ANALYZE sync_outbox")
    await c.end()
    const claimMs = await Effect.runPromise(
      Effect.gen(function*() {
        const store = yield* Store
        const xs: Array<number> = []
        for (let i = 0; i < 30; i++) {
          const t = performance.now()
          const claimed = yield* store.claim("bench-probe", 30_000, 500)
          xs.push(performance.now() - t)
          yield* store.release("bench-probe", claimed.map((e) => e.id))
        }
        return pct(xs, 50)
      }).pipe(Effect.provide(Store.layer.pipe(Layer.provide(sqlLayer(env)))))
    )
    // The worker draining for 2 s against this backlog: its heap must not grow with the backlog.
    globalThis.gc?.()
    const heapMb = await withWorker(env, async () => {
      let peak = 0
      for (let i = 0; i < 20; i++) {
        await sleep(100)
        peak = Math.max(peak, process.memoryUsage().heapUsed)
      }
      return peak / 1024 / 1024
    })
    results.push({ size, claimMs, heapMb })
  }
  const [small, big] = results as [typeof results[0], typeof results[0]]
  rows.push({
    measure: `(e) claim 500, p50 ms at ${small.size.toLocaleString("en")} / ${big.size.toLocaleString("en")} pending`,
    ours: `${f(small.claimMs)} / ${f(big.claimMs)}`,
    bare: "",
    goal: "within 2x"
  })
  rows.push({ measure: "(e) worker heap while draining, MB", ours: `${f(small.heapMb, 0)} / ${f(big.heapMb, 0)}`, bare: "", goal: "flat" })
}

/**
 * (f) the journal. Drain with retention on and off, alternated (off, on, off, on, ...) so that the
 * machine's drift hits both alike; the best run of each is compared. Then claim and completion
 * with an empty journal and with 1,000,000 rows in it.
 */
const journal = async (env: Env) => {
  const n = quick ? 5_000 : 20_000
  const rounds = quick ? 1 : 3
  const fill = async () => {
    await truncate(env)
    const c = new pg.Client({ connectionString: env.dbUrl })
    await c.connect()
    await c.query(
      `INSERT INTO sync_outbox (resource_type, action, ordering_key, payload)
       SELECT 'bench', 'set', 'bench:jr-' || g, jsonb_build_object('k', 'jr-' || g, 'v', 'x') FROM generate_series(1, $1::int) g`,
      [n]
    )
    await c.query("VACUUM ANALYZE sync_outbox")
    await c.end()
  }
  const drainOnce = async (retention: Duration.Duration) => {
    await fill()
    const start = performance.now()
    const ms = await withWorker(env, async () => {
      await untilApplied(n)
      return performance.now() - start
    }, undefined, { retention })
    return (n / ms) * 1000
  }
  const off: Array<number> = []
  const on: Array<number> = []
  for (let i = 0; i < rounds; i++) {
    off.push(await drainOnce(Duration.zero))
    on.push(await drainOnce(Duration.days(7)))
  }
  const bestOff = Math.max(...off)
  const bestOn = Math.max(...on)
  log(`journal drain items/s, off: ${off.map((x) => f(x, 0)).join(", ")}; on: ${on.map((x) => f(x, 0)).join(", ")}`)
  rows.push({ measure: `(f) drain ${n.toLocaleString("en")}, items/s, retention off / on (best of ${rounds})`, ours: `${f(bestOff, 0)} / ${f(bestOn, 0)}`, bare: "", goal: "" })
  rows.push({ measure: "(f) drain with the journal, share of without", ours: `${f((bestOn / bestOff) * 100, 0)} %`, bare: "", goal: "≥ 80 %" })

  // Claim 500 and complete them (journaled) against 20,000 pending: with an empty journal, with a
  // big one, and with an empty one again (the big table's writes and cache pressure linger on a
  // small machine; the third run shows how much of a difference is the journal's own).
  const big = quick ? 100_000 : 1_000_000
  const sizes = [0, big, 0]
  const results: Array<{ claimMs: number; completeMs: number }> = []
  for (const size of sizes) {
    await truncate(env)
    const c = new pg.Client({ connectionString: env.dbUrl })
    await c.connect()
    await c.query(
      `INSERT INTO sync_outbox (resource_type, action, ordering_key, payload)
       SELECT 'bench', 'set', 'bench:jc-' || g, jsonb_build_object('k', 'jc-' || g, 'v', 'x') FROM generate_series(1, 20000) g`
    )
    if (size > 0) {
      // Spread over the last six days, as a 7-day retention would hold them.
      await c.query(
        `INSERT INTO sync_outbox_journal (id, resource_type, action, resource_id, ordering_key, payload, coalesce, created_at,
           applied_at, attempts, worker)
         SELECT 1000000000 + g, 'bench', 'set', NULL, 'bench:old-' || (g % 50000), jsonb_build_object('k', 'old-' || g, 'v', 'x'), false,
           now() - make_interval(secs => 518400.0 * g / $1), now() - make_interval(secs => 518400.0 * g / $1), 1, 'bench-old'
         FROM generate_series(1, $1::int) g`,
        [size]
      )
    }
    await c.query("VACUUM ANALYZE sync_outbox")
    await c.query("VACUUM ANALYZE sync_outbox_journal")
    await c.query("CHECKPOINT").catch(() => undefined) // needs a superuser; the measure is fairer with it
    await c.end()
    const timings = await Effect.runPromise(
      Effect.gen(function*() {
        const store = yield* Store
        const claims: Array<number> = []
        const completes: Array<number> = []
        for (let i = 0; i < 30; i++) {
          let t = performance.now()
          const claimed = yield* store.claim("bench-probe", 30_000, 500)
          claims.push(performance.now() - t)
          t = performance.now()
          yield* store.complete("bench-probe", claimed.map((e) => e.id), { appliedAt: new Date(), supersededBy: new Map() })
          completes.push(performance.now() - t)
        }
        return { claimMs: pct(claims, 50), completeMs: pct(completes, 50) }
      }).pipe(Effect.provide(Store.layer.pipe(Layer.provide(sqlLayer(env)))))
    )
    results.push(timings)
  }
  const label = `0 / ${big.toLocaleString("en")} / 0`
  const show = (pick: (r: typeof results[0]) => number) => results.map((r) => f(pick(r))).join(" / ")
  rows.push({ measure: `(f) claim 500, p50 ms, journal ${label} rows`, ours: show((r) => r.claimMs), bare: "", goal: "flat" })
  rows.push({ measure: `(f) complete 500 (journaled), p50 ms, journal ${label}`, ours: show((r) => r.completeMs), bare: "", goal: "flat" })
}

/**
 * (g) convergence, on a database of its own and a private redis-server (it is killed): the
 * built-in sync worker with its reconciler, default settings (loss check every second).
 */
const convergence = async (env: Env) => {
  const keys = Number(process.env["BENCH_CONVERGENCE_KEYS"] ?? (quick ? 2_000 : 10_000))
  const bindingRows = Number(process.env["BENCH_CONVERGENCE_BINDINGS"] ?? (quick ? 200 : 1_000))
  const entities = Number(process.env["BENCH_CONVERGENCE_ENTITIES"] ?? (quick ? 20_000 : 100_000))
  const rate = Number(process.env["BENCH_CONVERGENCE_RATE"] ?? ConvergenceDefaults.rate)
  const masters = 100
  const serverUrl = new URL(env.dbUrl)
  serverUrl.pathname = "/postgres"
  const name = `sync_outbox_bench_conv_${process.pid}`
  const dbUrl = await createDatabase(serverUrl.toString(), name)
  const redisServer = await startRedis()
  const client = new Redis(redisServer.url)
  client.on("error", () => undefined)
  const psql = new pg.Client({ connectionString: dbUrl })
  try {
    await Effect.runPromise(Migrations.run(["outbox", "control-plane"]).pipe(Effect.provide(Database.layer({ url: Redacted.make(dbUrl) }))))
    await psql.connect()
    // Rows straight into the tables (no events): the reconciler's rebuild is what writes them.
    await psql.query(`INSERT INTO cp_masters (name) SELECT 'm-' || i FROM generate_series(1, $1) i`, [masters])
    const addKeys = (from: number, to: number) =>
      psql.query(
        `INSERT INTO cp_keys (master_id, token_hash, scopes) SELECT 1 + i % $3, encode(sha256(('bench-key-' || i)::bytea), 'hex'), '{chat}'
         FROM generate_series($1::int, $2::int) i`,
        [from, to, masters]
      )
    await addKeys(1, keys)
    await psql.query(`INSERT INTO cp_provider_groups (name, type, base_url, models) SELECT 'g-' || i, 'openai', 'https://x.example/v1', '{gpt-4o,gpt-4o-mini}' FROM generate_series(1, 20) i`)
    await psql.query(`INSERT INTO cp_api_keys (group_id, api_key) SELECT 1 + i % 20, 'sk-' || i FROM generate_series(1, 100) i`)
    await psql.query(
      `INSERT INTO cp_bindings (namespace, public_model, group_id, selector_value) SELECT 'default', 'pm-' || i, 1 + i % 20, 'gpt-4o' FROM generate_series(1, $1) i`,
      [bindingRows]
    )
    await psql.query(`INSERT INTO cp_models (name, context_window) SELECT 'model-' || i, 8192 FROM generate_series(1, 100) i`)
    await psql.query(`VACUUM ANALYZE`)

    const database = Database.layer({ url: Redacted.make(dbUrl), maxConnections: 8 })
    const redis = RedisSink.layer({ url: Redacted.make(redisServer.url), commandTimeout: Duration.seconds(2) })
    const service = Projector.layer()
    const worker = Convergence.layer.pipe(
      Layer.provideMerge(Layer.merge(
        DataPlaneReconciler.layer().pipe(Layer.provide(service)),
        ConvergenceConfig.layer({ interval: Option.none() })
      )),
      Layer.provideMerge(Worker.layer.pipe(
        Layer.provideMerge(Layer.mergeAll(
          Store.layer,
          Listener.layer({ url: Redacted.make(dbUrl), channel: "sync_outbox" }),
          Dispatch.layer.pipe(Layer.provide(service))
        )),
        Layer.provideMerge(OutboxConfig.layer({ interval: Duration.seconds(1) }))
      )),
      Layer.provideMerge(Layer.merge(database, redis)),
      Layer.orDie
    )
    const commandsProcessed = async () => Number(/total_commands_processed:(\d+)/.exec(await client.info("stats"))?.[1] ?? 0)
    const journalP99 = async (from: Date, to: Date) => {
      const { rows } = await psql.query<{ p99: number | null; n: number }>(
        `SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM applied_at - created_at) * 1000) AS p99, count(*)::int AS n
         FROM sync_outbox_journal WHERE created_at >= $1 AND created_at < $2`,
        [from, to]
      )
      return { p99: Number(rows[0]?.p99 ?? NaN), n: rows[0]?.n ?? 0 }
    }

    const result = await Effect.runPromise(Effect.scoped(Effect.gen(function*() {
      // The worker's first loss check finds a Redis never synced and builds it.
      const built = performance.now()
      let size = 0
      while (performance.now() - built < 120_000) {
        const marker = yield* Effect.promise(() => client.exists("sync:generation"))
        const meta = yield* Effect.promise(() => client.exists("meta:models_meta"))
        if (marker === 1 && meta === 1) {
          const now = yield* Effect.promise(() => client.dbsize())
          if (now === size) break
          size = now
        }
        yield* Effect.promise(() => sleep(100))
      }
      log(`(g) initial build: ${size} Redis keys in ${f(performance.now() - built, 0)} ms`)

      // Killed, started empty: time from accepting connections to the data plane complete.
      yield* Effect.promise(() => redisServer.kill())
      yield* Effect.promise(() => sleep(500))
      yield* Effect.promise(() => redisServer.start())
      const back = performance.now()
      let restoredMs = NaN
      while (performance.now() - back < 60_000) {
        const n = yield* Effect.promise(() => client.dbsize().catch(() => 0))
        if (n >= size) {
          restoredMs = performance.now() - back
          break
        }
        yield* Effect.promise(() => sleep(5))
      }
      // The rebuild may still hold the reconcile lock (recording its run): wait for it.
      let drift = NaN
      for (let tries = 0; tries < 100 && Number.isNaN(drift); tries++) {
        const after = yield* Convergence.runOnce("manual", { repair: false })
        drift = Option.match(after, { onNone: () => NaN, onSome: totalDrift })
        if (Number.isNaN(drift)) yield* Effect.promise(() => sleep(100))
      }
      log(`(g) restored in ${f(restoredMs, 0)} ms; drift found after: ${drift}`)

      // Grow to `entities` in sync (keys + masters + providers + bindings + models).
      const extra = entities - keys - masters - 100 - bindingRows - 100
      if (extra > 0) yield* Effect.promise(() => addKeys(keys + 1, keys + extra))
      yield* Effect.promise(() => psql.query("VACUUM ANALYZE cp_keys"))
      yield* Convergence.runOnce("manual", { repair: true })

      // The event path at a steady 100 events/s, without and then during a sweep.
      let producing = true
      const producer = Effect.runFork(Effect.gen(function*() {
        let i = 0
        while (producing) {
          yield* ControlPlane.updateMaster(1 + (i % masters), { globalQps: i })
          i++
          yield* Effect.promise(() => sleep(10))
        }
      }).pipe(Effect.provide(database)))
      const quiet = quick ? 3_000 : 8_000
      const loopDelay = monitorEventLoopDelay({ resolution: 1 })
      loopDelay.enable()
      const t0 = new Date()
      yield* Effect.promise(() => sleep(quiet))
      const t1 = new Date()
      const quietLoop = loopDelay.percentile(99) / 1e6
      loopDelay.reset()
      const before = yield* Effect.promise(commandsProcessed)
      const sweepStart = performance.now()
      const sweep = yield* Convergence.runOnce("periodic", { repair: true, rate })
      const sweepMs = performance.now() - sweepStart
      const commands = (yield* Effect.promise(commandsProcessed)) - before
      const t2 = new Date()
      const sweepLoop = loopDelay.percentile(99) / 1e6
      loopDelay.disable()
      log(`(g) event-loop delay p99: ${f(quietLoop)} ms without a sweep, ${f(sweepLoop)} ms during it`)
      producing = false
      yield* Effect.promise(() => new Promise<void>((r) => producer.addObserver(() => r())))
      yield* Effect.promise(() => sleep(1_000))
      const without = yield* Effect.promise(() => journalP99(t0, t1))
      const during = yield* Effect.promise(() => journalP99(t1, t2))
      const checked = Option.match(sweep, { onNone: () => 0, onSome: (r) => r.families.reduce((n, f) => n + f.checked, 0) })
      return { restoredMs, drift, sweepMs, commands, checked, without, during }
    }).pipe(Effect.provide(worker))))
    rows.push({ measure: `(g) Redis restarted empty (${keys} keys, ${bindingRows} bindings): data plane complete, ms`, ours: f(result.restoredMs, 0), bare: "", goal: "≤ 2000" })
    rows.push({ measure: "(g) drift left after that rebuild", ours: String(result.drift), bare: "", goal: "0" })
    rows.push({ measure: `(g) sweep of ${result.checked} entities in sync, ms (rate ${rate}/s)`, ours: f(result.sweepMs, 0), bare: "", goal: "" })
    rows.push({ measure: "(g) its Redis commands/s", ours: f((result.commands / result.sweepMs) * 1000, 0), bare: "", goal: `≤ ${rate}` })
    rows.push({ measure: `(g) event p99 without a sweep, ms (${result.without.n} events)`, ours: f(result.without.p99), bare: "", goal: "" })
    rows.push({ measure: `(g) event p99 during the sweep, ms (${result.during.n} events)`, ours: f(result.during.p99), bare: "", goal: "≤ 2× without" })
  } finally {
    client.disconnect()
    await psql.end().catch(() => undefined)
    await redisServer.stop()
    await dropDatabase(serverUrl.toString(), name).catch(() => undefined)
  }
}

const dropDatabase = async (serverUrl: string, name: string) => {
  const admin = new pg.Client({ connectionString: serverUrl })
  await admin.connect()
  await admin.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`).finally(() => admin.end())
}

const main = async () => {
  const services: Array<RunningService> = []
  try {
    log("starting servers")
    const pgUrl = process.env["DATABASE_URL"] ?? (await (async () => {
      const s = await startPostgres()
      services.push(s)
      return s.url
    })())
    let redisPort: number
    if (process.env["REDIS_URL"] !== undefined) {
      redisPort = Number(new URL(process.env["REDIS_URL"]).port || 6379)
    } else {
      const r = await startRedis()
      services.push(r)
      redisPort = r.port
    }
    const dbName = `sync_outbox_bench_${process.pid}`
    const dbUrl = await createDatabase(pgUrl, dbName)
    // On a server of the caller's, leave nothing behind (phase (f) writes a million rows).
    if (process.env["DATABASE_URL"] !== undefined) services.push({ url: "", stop: () => dropDatabase(pgUrl, dbName) })
    await Effect.runPromise(Migrations.run(["outbox"]).pipe(Effect.provide(Database.layer({ url: Redacted.make(dbUrl) }))))
    const c = new pg.Client({ connectionString: dbUrl })
    await c.connect()
    await c.query(bareSchema)
    await c.end()
    const proxy = await startProxy(redisPort)
    services.push({ url: "", stop: proxy.close })
    const env: Env = { dbUrl, redisPort, proxy }
    const only = process.env["BENCH_ONLY"]?.split(",")
    for (const [name, phase] of [["latency", latency], ["drain", drain], ["outage", outage], ["enqueue", enqueueCost], ["claim", claimCost], ["journal", journal], ["convergence", convergence]] as const) {
      if (only !== undefined && !only.includes(name)) continue
      log(`${name} ...`)
      await phase(env)
    }
    const machine = `${cpus().length} × ${cpus()[0]?.model.trim() ?? "cpu"}, ${Math.round(totalmem() / 2 ** 30)} GiB, Node ${process.version}`
    const w = [Math.max(...rows.map((r) => r.measure.length)), Math.max(14, ...rows.map((r) => r.ours.length)), Math.max(10, ...rows.map((r) => r.bare.length)), 10]
    const line = (a: string, b: string, c: string, d: string) =>
      `| ${a.padEnd(w[0]!)} | ${b.padStart(w[1]!)} | ${c.padStart(w[2]!)} | ${d.padEnd(w[3]!)} |`
    console.log(`\nsync-outbox bench${quick ? " (quick)" : ""}, ${new Date().toISOString().slice(0, 10)}, ${machine}\n`)
    console.log(line("measure", "sync-outbox", "bare loop", "goal"))
    console.log(`|${"-".repeat(w[0]! + 2)}|${"-".repeat(w[1]! + 1)}:|${"-".repeat(w[2]! + 1)}:|${"-".repeat(w[3]! + 2)}|`)
    for (const r of rows) console.log(line(r.measure, r.ours, r.bare, r.goal))
  } finally {
    for (const s of services.reverse()) await s.stop().catch(() => undefined)
  }
}

main().then(
  () => process.exit(0),
  (error) => {
    console.error(error)
    process.exit(1)
  }
)
