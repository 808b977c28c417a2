import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Data, Duration, Effect, Fiber, Redacted, Ref, Schedule, Schema, Stream } from "effect"
import { Redis } from "ioredis"
import { afterAll, beforeAll } from "vitest"
import { startRedis, type PrivateRedis } from "../scripts/services.js"
import { Database, enqueueMany, event, handle, Handlers, OutboxEvent, RedisSink, Worker, type BreakerState } from "../src/index.js"
import { countRows, eventually, freshDatabase, prefix, realSleep, redisUrl, SetValue, setValueHandler, sqlLayer, workerLayer } from "./support/harness.js"
import { startProxy } from "./support/proxy.js"

let url: string
let direct: Redis
beforeAll(async () => {
  url = await freshDatabase("outage")
  direct = new Redis(redisUrl())
})
afterAll(async () => {
  direct.disconnect()
})

const redisPort = () => Number(new URL(redisUrl()).port)
const clear = Effect.flatMap(SqlClient.SqlClient, (sql) => sql`TRUNCATE sync_outbox CASCADE`)
const attemptsCounted = Effect.flatMap(SqlClient.SqlClient, (sql) =>
  sql<{ counted: number; failures: number; dead: number }>`
    SELECT (SELECT count(*) FROM sync_outbox WHERE retry_count > 0)::int AS counted,
           (SELECT count(*) FROM sync_outbox_failures)::int AS failures,
           (SELECT count(*) FROM sync_outbox WHERE status = 'dead')::int AS dead`
).pipe(Effect.map((rows) => rows[0]!))

/** Every breaker state the worker passes through, in order. */
const recordBreaker = Effect.gen(function*() {
  const worker = yield* Worker
  const seen = yield* Ref.make<Array<BreakerState>>([])
  yield* Effect.forkScoped(Stream.runForEach(worker.breaker.changes, (s) => Ref.update(seen, (all) => [...all, s])))
  yield* eventually(Ref.get(seen), (s) => s.length > 0)
  return seen
})

const setEvents = (p: string, from: number, count: number) =>
  Array.from({ length: count }, (_, i) => event(SetValue, { payload: { key: `${p}${from + i}`, value: "v" } }))

describe("Redis outages", () => {
  it.scopedLive("Redis refused for 3 s while 1,000 events arrive: all applied after, no attempt counted, none dead", () =>
    Effect.gen(function*() {
      const proxy = yield* Effect.acquireRelease(Effect.promise(() => startProxy(redisPort())), (p) => Effect.promise(p.close))
      const p = prefix()
      yield* Effect.gen(function*() {
        yield* clear
        const breaker = yield* recordBreaker
        yield* Effect.promise(proxy.cut)
        // 1,000 events arrive while Redis is refused, in 10 transactions over 3 s.
        for (let i = 0; i < 10; i++) {
          yield* enqueueMany(setEvents(p, i * 100, 100))
          yield* realSleep(300)
        }
        expect(yield* Ref.get(breaker)).toEqual(["closed", "open"])
        expect(yield* attemptsCounted).toEqual({ counted: 0, failures: 0, dead: 0 })
        const restoredAt = Date.now()
        yield* Effect.promise(proxy.restore)
        yield* eventually(countRows(), (n) => n === 0, { interval: 5 })
        const recoveryMs = Date.now() - restoredAt
        // About 100 ms on a quiet machine; generous for a loaded one, and far below the one-minute poll.
        expect(recoveryMs).toBeLessThan(10_000)
        expect(yield* Ref.get(breaker)).toEqual(["closed", "open", "closed"])
        const values = yield* Effect.promise(() => direct.mget(Array.from({ length: 1_000 }, (_, i) => `${p}${i}`)))
        expect(values.filter((v) => v === "v")).toHaveLength(1_000)
      }).pipe(
        Effect.provide(workerLayer({ url, redis: proxy.url("redis"), handlers: Handlers.layer(setValueHandler) }))
      )
    }), 30_000)

  it.scopedLive("a Redis that accepts connections but never answers: command timeouts open the breaker, no attempt counted", () =>
    Effect.gen(function*() {
      const proxy = yield* Effect.acquireRelease(Effect.promise(() => startProxy(redisPort())), (p) => Effect.promise(p.close))
      const p = prefix()
      yield* Effect.gen(function*() {
        yield* clear
        const breaker = yield* recordBreaker
        yield* realSleep(100)
        proxy.blackhole()
        yield* enqueueMany(setEvents(p, 0, 50))
        // The command timeout is 1 s in tests: the breaker opens after it.
        yield* eventually(Ref.get(breaker), (s) => s.includes("open"), { timeout: 5_000 })
        yield* realSleep(500)
        expect(yield* attemptsCounted).toEqual({ counted: 0, failures: 0, dead: 0 })
        expect(yield* countRows()).toBe(50)
        yield* Effect.promise(proxy.restore)
        yield* eventually(countRows(), (n) => n === 0, { timeout: 10_000 })
        expect(yield* attemptsCounted).toEqual({ counted: 0, failures: 0, dead: 0 })
      }).pipe(
        Effect.provide(workerLayer({ url, redis: proxy.url("redis"), handlers: Handlers.layer(setValueHandler) }))
      )
    }), 30_000)

  it.scopedLive("a Redis connection that stops answering without closing (a dropped flow) is replaced: the breaker closes by itself and the backlog drains, no attempt counted", () =>
    Effect.gen(function*() {
      const proxy = yield* Effect.acquireRelease(Effect.promise(() => startProxy(redisPort())), (p) => Effect.promise(p.close))
      const p = prefix()
      yield* Effect.gen(function*() {
        yield* clear
        const breaker = yield* recordBreaker
        yield* enqueueMany(setEvents(p, 0, 10))
        yield* eventually(countRows(), (n) => n === 0)
        // The worker's connection goes silent and stays so (nothing closes it); Redis itself is
        // fine and a new connection is served. Without a socket timeout the probe waited on that
        // dead socket for as long as TCP keeps it open (hours): the breaker never closed.
        proxy.stall()
        yield* enqueueMany(setEvents(p, 10, 50))
        yield* eventually(Ref.get(breaker), (s) => s.includes("open"), { timeout: 5_000 })
        yield* eventually(countRows(), (n) => n === 0, { timeout: 10_000 })
        expect(yield* Ref.get(breaker)).toEqual(["closed", "open", "closed"])
        expect(yield* attemptsCounted).toEqual({ counted: 0, failures: 0, dead: 0 })
        const values = yield* Effect.promise(() => direct.mget(Array.from({ length: 60 }, (_, i) => `${p}${i}`)))
        expect(values.filter((v) => v === "v")).toHaveLength(60)
      }).pipe(
        Effect.provide(workerLayer({ url, redis: proxy.url("redis"), handlers: Handlers.layer(setValueHandler) }))
      )
    }), 30_000)

  it.scopedLive("Redis killed and restarted mid-batch: nothing lost, no attempt counted", () =>
    Effect.gen(function*() {
      // A private Redis that persists every write, so "nothing lost" can be checked after the kill.
      const redis: PrivateRedis = yield* Effect.acquireRelease(
        Effect.promise(() => startRedis(["--appendonly", "yes", "--appendfsync", "always"])),
        (r) => Effect.promise(r.stop)
      )
      const p = prefix()
      yield* Effect.gen(function*() {
        yield* clear
        const producer = yield* Effect.fork(
          Effect.forEach(Array.from({ length: 20 }), (_, i) =>
            Effect.zipRight(enqueueMany(setEvents(p, i * 100, 100)), realSleep(25)))
        )
        yield* eventually(Effect.promise(async () => {
          const c = new Redis(redis.url, { lazyConnect: true })
          await c.connect()
          const n = await c.dbsize()
          c.disconnect()
          return n
        }), (n) => n > 200, { interval: 5 })
        yield* Effect.promise(redis.restart)
        yield* Fiber.join(producer)
        yield* eventually(countRows(), (n) => n === 0, { timeout: 15_000 })
        expect(yield* attemptsCounted).toEqual({ counted: 0, failures: 0, dead: 0 })
        const c = new Redis(redis.url)
        const values = yield* Effect.promise(() => c.mget(Array.from({ length: 2_000 }, (_, i) => `${p}${i}`)))
        c.disconnect()
        expect(values.filter((v) => v === "v")).toHaveLength(2_000)
      }).pipe(Effect.provide(workerLayer({ url, redis: redis.url, handlers: Handlers.layer(setValueHandler) })))
    }), 60_000)

  it.live("a poison item dies after max attempts while the others flow past it", () =>
    Effect.gen(function*() {
      yield* clear
      const p = prefix()
      const Poisonable = OutboxEvent.make({ resourceType: "poisonable", action: "set", payload: Schema.Number })
      class Poisoned extends Data.TaggedError("Poisoned")<{ readonly message: string }> {}
      const handlers = Handlers.layer(
        handle(Poisonable, ({ payload }) =>
          Effect.gen(function*() {
            if (payload === 13) return yield* new Poisoned({ message: "thirteen is unlucky" })
            const redis = yield* RedisSink
            yield* redis.use((c) => c.set(`${p}${payload}`, "ok"))
          }))
      )
      yield* Effect.gen(function*() {
        const worker = yield* Worker
        yield* enqueueMany(Array.from({ length: 300 }, (_, i) => event(Poisonable, { resourceId: i + 1, payload: i })))
        yield* eventually(countRows("pending"), (n) => n === 0, { timeout: 10_000 })
        expect(yield* countRows("dead")).toBe(1)
        expect(yield* attemptsCounted).toEqual({ counted: 1, failures: 3, dead: 1 })
        expect(yield* worker.breaker.get).toBe("closed")
        const values = yield* Effect.promise(() => direct.mget(Array.from({ length: 300 }, (_, i) => `${p}${i}`)))
        expect(values.filter((v) => v === "ok")).toHaveLength(299)
      }).pipe(
        Effect.provide(
          workerLayer({
            url,
            handlers,
            config: { maxRetries: 3, backoffBase: Duration.millis(20), backoffCap: Duration.millis(50) }
          })
        )
      )
    }).pipe(Effect.provide(sqlLayer(url))))
})

describe("Postgres faults", () => {
  it.scopedLive("a pool connection that stops answering is closed once its query times out: the next query gets a working one", () =>
    Effect.gen(function*() {
      const proxy = yield* Effect.acquireRelease(Effect.promise(() => startProxy(Number(new URL(url).port || 5432))), (p) => Effect.promise(p.close))
      const viaProxy = new URL(url)
      viaProxy.host = `127.0.0.1:${proxy.port}`
      yield* Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        yield* sql`SELECT 1`
        // The pooled connection hangs (never closed, never answered); new connections are fine.
        proxy.stall()
        const hung = yield* Effect.either(sql`SELECT 1`)
        expect(hung._tag).toBe("Left")
        for (let i = 0; i < 3; i++) {
          const rows = yield* sql<{ one: number }>`SELECT 1 AS one`.pipe(Effect.timeout("10 seconds"))
          expect(rows).toEqual([{ one: 1 }])
        }
      }).pipe(Effect.provide(Database.layer({ url: Redacted.make(viaProxy.toString()), statementTimeout: Duration.seconds(1) })))
    }), 30_000)

  it.scopedLive("the listener's backend and every pool connection terminated: the worker carries on by itself", () =>
    Effect.gen(function*() {
      const p = prefix()
      const Counted = OutboxEvent.make({ resourceType: "counted", action: "incr", payload: Schema.Number })
      const handlers = Handlers.layer(
        handle(Counted, ({ payload }) => Effect.flatMap(RedisSink, (r) => r.use((c) => c.incr(`${p}${payload}`))))
      )
      const admin = yield* SqlClient.SqlClient
      const killAll = admin`SELECT count(pg_terminate_backend(pid))::int AS n FROM pg_stat_activity
        WHERE datname = current_database() AND pid <> pg_backend_pid()`
      yield* Effect.provide(clear, sqlLayer(url))
      yield* Effect.gen(function*() {
        const producer = yield* Effect.fork(
          Effect.forEach(Array.from({ length: 20 }), (_, i) =>
            Effect.zipRight(
              enqueueMany(Array.from({ length: 100 }, (_, j) => event(Counted, { resourceId: i * 100 + j + 1, payload: i * 100 + j }))).pipe(
                // The producer's own connections are terminated too: it retries like any client
                // (spaced: the pool may still hold terminated idle connections for a moment).
                Effect.retry({ times: 10, schedule: Schedule.spaced(Duration.millis(50)) })
              ),
              realSleep(20)
            ))
        )
        yield* realSleep(100)
        for (let k = 0; k < 3; k++) {
          // Its own second connection may have been terminated by the previous kill.
          yield* killAll.pipe(Effect.retry({ times: 5, schedule: Schedule.spaced(Duration.millis(50)) }))
          yield* realSleep(150)
        }
        yield* Fiber.join(producer)
        // The test's own reads go through the worker's pool too, whose connections were terminated.
        yield* eventually(countRows().pipe(Effect.retry({ times: 10, schedule: Schedule.spaced(Duration.millis(50)) })), (n) => n === 0, { timeout: 20_000 })
      }).pipe(
        // A claim whose reply is lost with its connection leaves rows leased: a short lease bounds that.
        Effect.provide(workerLayer({ url, handlers, config: { leaseDuration: Duration.seconds(3), callTimeout: Duration.seconds(2) } }))
      )
      const values = yield* Effect.promise(() => direct.mget(Array.from({ length: 2_000 }, (_, i) => `${p}${i}`)))
      // At least once: every event applied. (Once exactly unless a delete was cut after its apply.)
      expect(values.every((v) => v !== null && Number(v) >= 1)).toBe(true)
    }).pipe(Effect.provide(sqlLayer(url, 2))), 60_000)
})
