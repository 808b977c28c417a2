import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Chunk, Data, Deferred, Duration, Effect, Exit, Layer, Metric, Redacted, Ref, Schedule, Schema, Scope, TestClock } from "effect"
import { beforeAll } from "vitest"
import {
  enqueue,
  enqueueMany,
  event,
  handle,
  handleBatch,
  Handlers,
  Leases,
  type LeasesShape,
  Listener,
  Metrics,
  OutboxConfig,
  type OutboxConfigShape,
  OutboxEvent,
  RedisSink,
  Store,
  Worker
} from "../src/index.js"
import {
  countRows,
  eventually,
  freshDatabase,
  prefix,
  realSleep,
  redisLayer,
  SetValue,
  setValueHandler,
  sqlLayer,
  workerLayer
} from "./support/harness.js"

let url: string
beforeAll(async () => {
  url = await freshDatabase("worker")
})

const clear = Effect.flatMap(SqlClient.SqlClient, (sql) => sql`TRUNCATE sync_outbox CASCADE`)
const get = (key: string) => Effect.flatMap(RedisSink, (r) => r.use((c) => c.get(key)))
const stored = (id: string) => Effect.flatMap(Store, (s) => s.show(id))

/** An empty outbox whose statistics say so: the state a worker's claims are planned in while idle. */
const emptyAndAnalyzed = Effect.zipRight(clear, Effect.flatMap(SqlClient.SqlClient, (sql) => sql`VACUUM ANALYZE sync_outbox`))

/** Start a worker (NOTIFY on, `SetValue` handled) whose `Leases` the test sees through `wrap`. */
const buildWorkerSeeing = (wrap: (leases: LeasesShape) => LeasesShape, config: Partial<OutboxConfigShape>) =>
  Layer.build(Worker.layer.pipe(
    Layer.provide(Layer.mergeAll(
      Layer.effect(Leases, Effect.map(Leases, wrap)).pipe(Layer.provide(Store.layer)),
      Listener.layer({ url: Redacted.make(url), channel: "sync_outbox" }),
      Handlers.layer(setValueHandler)
    )),
    Layer.provide(Layer.mergeAll(OutboxConfig.layer(config), sqlLayer(url), redisLayer()))
  ))

class Boom extends Data.TaggedError("Boom")<{ readonly message: string }> {}

describe("Worker", () => {
  it.live("applies a committed event within milliseconds, woken by NOTIFY rather than the poll", () =>
    Effect.gen(function*() {
      yield* clear
      const p = prefix()
      // The poll interval is a minute: only the notification can explain a fast apply.
      yield* realSleep(200)
      const start = Date.now()
      const sql = yield* SqlClient.SqlClient
      yield* sql.withTransaction(enqueue(SetValue, { payload: { key: `${p}fast`, value: "yes" } }))
      yield* eventually(get(`${p}fast`), (v) => v === "yes", { interval: 1 })
      // Generous for a loaded machine, and still far below the one-minute poll.
      expect(Date.now() - start).toBeLessThan(10_000)
      yield* eventually(countRows(), (n) => n === 0)
    }).pipe(Effect.provide(workerLayer({ url, handlers: Handlers.layer(setValueHandler) }))))

  it.live("two workers racing drain 10,000 events, each applied exactly once, none left", () =>
    Effect.gen(function*() {
      const p = prefix()
      const Counted = OutboxEvent.make({
        resourceType: "counted",
        action: "incr",
        payload: Schema.Struct({ n: Schema.Number })
      })
      const counting = Handlers.layer(
        handle(Counted, ({ payload }) => Effect.flatMap(RedisSink, (r) => r.use((c) => c.incr(`${p}${payload.n}`))))
      )
      const worker = () => workerLayer({ url, handlers: counting, config: { batchSize: 100, concurrency: 50 } })
      yield* Effect.provide(clear, sqlLayer(url))
      yield* Effect.provide(
        enqueueMany(Array.from({ length: 10_000 }, (_, n) => event(Counted, { resourceId: n + 1, payload: { n } }))),
        sqlLayer(url)
      )
      yield* Effect.gen(function*() {
        yield* eventually(countRows(), (n) => n === 0, { timeout: 60_000, interval: 50 })
      }).pipe(Effect.provide(Layer.merge(worker(), worker())))
      const counts = yield* Effect.gen(function*() {
        const redis = yield* RedisSink
        // A fresh client: ioredis (no offline queue) refuses commands until it has connected.
        return yield* redis.use((c) => c.mget(Array.from({ length: 10_000 }, (_, n) => `${p}${n}`))).pipe(
          Effect.retry(Schedule.spaced("50 millis").pipe(Schedule.upTo("5 seconds")))
        )
      }).pipe(Effect.provide(workerLayer({ url, handlers: counting, config: { enabled: false } })))
      expect(counts.filter((v) => v === "1")).toHaveLength(10_000)
    }), { timeout: 120_000 })

  it.live("a worker that dies holding leases loses nothing: its rows are applied once the lease expires", () =>
    Effect.gen(function*() {
      yield* clear
      const p = prefix()
      const store = yield* Store
      yield* enqueueMany(Array.from({ length: 20 }, (_, i) => event(SetValue, { payload: { key: `${p}${i}`, value: "v" } })))
      // A worker claims everything, then vanishes without completing or releasing.
      const claimed = yield* store.claim("crashed-worker", 1_500, 100)
      expect(claimed).toHaveLength(20)
      const started = Date.now()
      yield* Effect.gen(function*() {
        const worker = yield* Worker
        yield* worker.wake
        yield* realSleep(500)
        expect(yield* get(`${p}0`)).toBeNull()
        yield* eventually(countRows(), (n) => n === 0, { timeout: 10_000 })
        expect(Date.now() - started).toBeGreaterThanOrEqual(1_400)
        for (let i = 0; i < 20; i++) expect(yield* get(`${p}${i}`)).toBe("v")
      }).pipe(
        // Expired leases are found by the poll (there is no index on lease expiry, so that a
        // claim is a HOT update): rows come back at most one interval after their lease ends.
        Effect.provide(workerLayer({ url, handlers: Handlers.layer(setValueHandler), config: { interval: Duration.millis(200) } }))
      )
    }).pipe(Effect.provide(Store.layer.pipe(Layer.provideMerge(sqlLayer(url))))))

  it.live("after the LISTEN backend is killed, new events are applied without waiting for a poll", () =>
    Effect.gen(function*() {
      yield* clear
      const p = prefix()
      const sql = yield* SqlClient.SqlClient
      const listeners = () =>
        sql<{ pid: number }>`SELECT pid FROM pg_stat_activity
          WHERE application_name = 'sync-outbox-listener' AND datname = current_database()`
      const [victim] = yield* eventually(listeners(), (rows) => rows.length === 1)
      yield* sql`SELECT pg_terminate_backend(${victim!.pid})`
      // Events enqueued right away may find the listener still reconnecting: the catch-up
      // claim on reconnect applies them; events after that arrive by NOTIFY.
      const start = Date.now()
      yield* enqueue(SetValue, { payload: { key: `${p}during`, value: "1" } })
      yield* eventually(listeners(), (rows) => rows.length === 1 && rows[0]!.pid !== victim!.pid)
      yield* enqueue(SetValue, { payload: { key: `${p}after`, value: "2" } })
      yield* eventually(get(`${p}during`), (v) => v === "1", { timeout: 5_000 })
      yield* eventually(get(`${p}after`), (v) => v === "2", { timeout: 5_000 })
      expect(Date.now() - start).toBeLessThan(5_000)
    }).pipe(Effect.provide(workerLayer({ url, handlers: Handlers.layer(setValueHandler) }))))

  it.live("poll-only mode (no trigger, no LISTEN) still applies everything on the interval", () =>
    Effect.gen(function*() {
      yield* clear
      const p = prefix()
      const sql = yield* SqlClient.SqlClient
      yield* sql.withTransaction(
        Effect.zipRight(
          sql`SET LOCAL sync_outbox.notify = 'off'`,
          enqueue(SetValue, { payload: { key: `${p}polled`, value: "ok" } })
        )
      )
      yield* eventually(get(`${p}polled`), (v) => v === "ok", { timeout: 5_000 })
    }).pipe(
      Effect.provide(
        workerLayer({
          url,
          handlers: Handlers.layer(setValueHandler),
          config: { pollOnly: true, interval: Duration.millis(200) }
        })
      )
    ))

  it.live("ten coalescing events of one resource become one apply, nine counted as superseded", () =>
    Effect.gen(function*() {
      yield* clear
      const p = prefix()
      const calls = yield* Ref.make<Array<number>>([])
      const Sync = OutboxEvent.make({ resourceType: "res", action: "sync", payload: Schema.Number, coalesce: true })
      const handlers = Handlers.layer(handle(Sync, ({ payload }) => Ref.update(calls, (c) => [...c, payload])))
      yield* Effect.provide(
        enqueueMany(Array.from({ length: 10 }, (_, i) => event(Sync, { resourceId: 1, payload: i }))),
        sqlLayer(url)
      )
      yield* Effect.gen(function*() {
        yield* eventually(countRows(), (n) => n === 0)
      }).pipe(Effect.provide(workerLayer({ url, handlers })))
      expect(yield* Ref.get(calls)).toEqual([9])
      void p
    }).pipe(Effect.provide(sqlLayer(url))))

  it.effect("walks the retry schedule with TestClock: attempt 1, 2, 3, dead; requeue brings it back", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(Date.parse("2026-01-01T00:00:00Z"))
      const p = prefix()
      const healthy = yield* Ref.make(false)
      const Flaky = OutboxEvent.make({ resourceType: "flaky", action: "apply", payload: Schema.String })
      const handlers = Handlers.layer(
        handle(Flaky, ({ payload }) =>
          Effect.gen(function*() {
            if (!(yield* Ref.get(healthy))) return yield* new Boom({ message: "downstream rejected it" })
            const redis = yield* RedisSink
            yield* redis.use((c) => c.set(payload, "applied"))
          }))
      )
      const scope = yield* Scope.make()
      const ctx = yield* Layer.buildWithScope(
        workerLayer({
          url,
          handlers,
          config: { maxRetries: 3, backoffBase: Duration.seconds(1), backoffCap: Duration.minutes(1) }
        }),
        scope
      )
      yield* Effect.gen(function*() {
        yield* clear
        const id = yield* enqueue(Flaky, { payload: `${p}flaky` })
        const t0 = Date.parse("2026-01-01T00:00:00Z")
        const attempt = (n: number) => eventually(stored(id), (s) => s.event.retryCount === n)

        const first = yield* attempt(1)
        // Attempt 1 failed: the next is due in [base/2, base] = [0.5 s, 1 s].
        const due1 = first.event.nextRetryAt!.getTime() - t0
        expect(due1).toBeGreaterThanOrEqual(500)
        expect(due1).toBeLessThanOrEqual(1_000)
        expect(first.failures.map((f) => [f.attempt, f.errorTag, f.message])).toEqual([[1, "Boom", "downstream rejected it"]])

        // The worker sleeps exactly until that time; nothing happens one millisecond before.
        yield* eventually(Effect.map(TestClock.sleeps(), Chunk.toReadonlyArray), (s) => s.some((at) => at === t0 + due1))
        yield* TestClock.adjust(Duration.millis(due1 - 1))
        yield* realSleep(100)
        expect((yield* stored(id)).event.retryCount).toBe(1)
        yield* TestClock.adjust(Duration.millis(1))
        const second = yield* attempt(2)
        // Attempt 2 failed: [base, 2 base] after it.
        const due2 = second.event.nextRetryAt!.getTime() - (t0 + due1)
        expect(due2).toBeGreaterThanOrEqual(1_000)
        expect(due2).toBeLessThanOrEqual(2_000)

        yield* eventually(Effect.map(TestClock.sleeps(), Chunk.toReadonlyArray), (s) => s.some((at) => at === t0 + due1 + due2))
        yield* TestClock.adjust(Duration.millis(due2))
        const dead = yield* eventually(stored(id), (s) => s.event.status === "dead")
        expect(dead.event.retryCount).toBe(3)
        expect(dead.failures.map((f) => f.attempt)).toEqual([1, 2, 3])
        expect(dead.event.lastError).toBe("Boom: downstream rejected it")

        // Requeued and healthy again: applied, history and all gone with the row.
        yield* Ref.set(healthy, true)
        expect(yield* Effect.flatMap(Store, (s) => s.requeue({ _tag: "One", id }))).toBe(1)
        yield* eventually(get(`${p}flaky`), (v) => v === "applied")
        yield* eventually(countRows(), (n) => n === 0)
      }).pipe(Effect.provide(ctx), Effect.ensuring(Scope.close(scope, Exit.void)))
    }), { timeout: 30_000 })

  it.live("an unknown resource type or action is a typed failure recorded on the row, never a success", () =>
    Effect.gen(function*() {
      yield* clear
      const sql = yield* SqlClient.SqlClient
      const [unknownType] = yield* sql<{ id: string }>`SELECT sync_outbox_enqueue('nope', 'set')::text AS id`
      const [unknownAction] = yield* sql<{ id: string }>`SELECT sync_outbox_enqueue('thing', 'explode')::text AS id`
      for (const row of [unknownType!, unknownAction!]) {
        const s = yield* eventually(stored(row.id), (s) => s.event.retryCount === 1)
        expect(s.event.status).toBe("pending")
        expect(s.failures[0]!.errorTag).toBe("UnknownEventType")
      }
      expect((yield* stored(unknownAction!.id)).failures[0]!.message).toContain(`action "explode"`)
    }).pipe(Effect.provide(workerLayer({ url, handlers: Handlers.layer(setValueHandler) }))))

  it.live("a stored payload its schema cannot decode goes dead at once with MalformedPayload", () =>
    Effect.gen(function*() {
      yield* clear
      const sql = yield* SqlClient.SqlClient
      const [row] = yield* sql<{ id: string }>`SELECT sync_outbox_enqueue('thing', 'set', NULL, '{"key": 1}'::jsonb)::text AS id`
      const s = yield* eventually(stored(row!.id), (s) => s.event.status === "dead")
      expect(s.failures.map((f) => f.errorTag)).toEqual(["MalformedPayload"])
      expect(s.failures[0]!.errorTag).toBe("MalformedPayload")
    }).pipe(Effect.provide(workerLayer({ url, handlers: Handlers.layer(setValueHandler) }))))

  it.live("shutdown finishes the in-flight event and hands unstarted claims back without an attempt", () =>
    Effect.gen(function*() {
      yield* Effect.provide(clear, sqlLayer(url))
      const p = prefix()
      const started = yield* Deferred.make<void>()
      const Slow = OutboxEvent.make({ resourceType: "slow", action: "apply", payload: Schema.Number })
      const handlers = Handlers.layer(
        handle(Slow, ({ payload }) =>
          Effect.gen(function*() {
            yield* Deferred.succeed(started, undefined)
            yield* realSleep(300)
            const redis = yield* RedisSink
            yield* redis.use((c) => c.set(`${p}${payload}`, "done"))
          }))
      )
      yield* Effect.provide(
        enqueueMany(Array.from({ length: 10 }, (_, i) => event(Slow, { resourceId: i + 1, payload: i }))),
        sqlLayer(url)
      )
      const scope = yield* Scope.make()
      yield* Layer.buildWithScope(workerLayer({ url, handlers, config: { concurrency: 1, batchSize: 10 } }), scope)
      yield* Deferred.await(started).pipe(Effect.ensuring(Scope.close(scope, Exit.void)))
      const remaining = yield* Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        return yield* sql<{ retry_count: number; lease_owner: string | null }>`
          SELECT retry_count, lease_owner FROM sync_outbox ORDER BY id`
      }).pipe(Effect.provide(sqlLayer(url)))
      // One finished (deleted), nine handed back untouched.
      expect(remaining).toHaveLength(9)
      expect(remaining).toEqual(Array.from({ length: 9 }, () => ({ retry_count: 0, lease_owner: null })))
    }))
})

describe.each([
  ["the shared worker layer", () => workerLayer({ url, handlers: Handlers.layer(setValueHandler) })]
])("Worker (%s)", (_, layer) => {
  it.live("is one per scope: its owner is unique and stable", () =>
    Effect.gen(function*() {
      const worker = yield* Worker
      expect(worker.owner).toMatch(/^.+:\d+:[0-9a-z-]+$/)
      expect(yield* Worker).toBe(worker)
    }).pipe(Effect.provide(layer())))
})

describe("Worker: batch handlers", () => {
  it.live("a batch handler gets many events in one call; a per-event error fails only that event", () =>
    Effect.gen(function*() {
      yield* clear
      const p = prefix()
      const calls = yield* Ref.make<Array<number>>([])
      const Batched = OutboxEvent.make({ resourceType: "batched", action: "set", payload: Schema.Number })
      const handlers = Handlers.layer(
        handleBatch(Batched, (events) =>
          Effect.gen(function*() {
            yield* Ref.update(calls, (c) => [...c, events.length])
            const redis = yield* RedisSink
            yield* redis.use((c) => {
              const pipeline = c.pipeline()
              for (const e of events) if (e.payload !== 7) pipeline.set(`${p}${e.payload}`, "ok")
              return pipeline.exec()
            })
            return events.map((e) => (e.payload === 7 ? Exit.fail(new Boom({ message: "seven" })) : Exit.void))
          }))
      )
      yield* Effect.gen(function*() {
        yield* enqueueMany(Array.from({ length: 100 }, (_, i) => event(Batched, { resourceId: i + 1, payload: i })))
        const store = yield* Store
        yield* eventually(countRows(), (n) => n === 1)
        const [left] = yield* Effect.flatMap(SqlClient.SqlClient, (sql) => sql<{ id: string }>`SELECT id::text AS id FROM sync_outbox`)
        // Its failure is written by a statement of its own, beside the completion of the others.
        const shown = yield* eventually(store.show(left!.id), (s) => s.failures.length > 0)
        expect(shown.event.payload).toBe(7)
        expect(shown.failures[0]!.errorTag).toBe("Boom")
      }).pipe(Effect.provide(workerLayer({ url, handlers, config: { batchSize: 200, backoffBase: Duration.minutes(1) } })))
      // Far fewer calls than events: they came in batches.
      const sizes = yield* Ref.get(calls)
      expect(sizes.reduce((a, b) => a + b, 0)).toBe(100)
      expect(sizes.length).toBeLessThan(10)
    }).pipe(Effect.provide(Store.layer.pipe(Layer.provideMerge(sqlLayer(url))))))
})

describe("Worker: a handler that dies never stops the worker", () => {
  it.live("a throw, an Effect.die or a rejected promise is that event's HandlerDefect: counted, retried, dead at MAX_RETRIES; all else flows", () =>
    Effect.gen(function*() {
      yield* clear
      const p = prefix()
      const Fragile = OutboxEvent.make({ resourceType: "fragile", action: "set", payload: Schema.Number })
      const BatchFragile = OutboxEvent.make({ resourceType: "fragile_batch", action: "set", payload: Schema.Number })
      const write = (n: number) => Effect.flatMap(RedisSink, (r) => r.use((c) => c.set(`${p}${n}`, "ok")))
      const misbehave = (n: number): Effect.Effect<unknown, unknown, RedisSink> => {
        switch (n) {
          case 13:
            return Effect.sync(() => {
              throw new Error("thirteen threw")
            })
          case 66:
            return Effect.die(new Error("sixty-six died"))
          case 99:
            return Effect.promise(() => Promise.reject(new Error("ninety-nine rejected")))
          default:
            return write(n)
        }
      }
      const handlers = Handlers.layer(
        handle(Fragile, ({ payload }) => misbehave(payload)),
        handleBatch(BatchFragile, (events) =>
          Effect.forEach(events, (e) => Effect.exit(e.payload === 1_013 ? Effect.die(new Error("batch member died")) : write(e.payload))))
      )
      yield* Effect.gen(function*() {
        const worker = yield* Worker
        yield* enqueueMany([
          ...Array.from({ length: 200 }, (_, i) => event(Fragile, { resourceId: i + 1, payload: i })),
          ...Array.from({ length: 50 }, (_, i) => event(BatchFragile, { resourceId: i + 1, payload: 1_000 + i }))
        ])
        yield* eventually(countRows("pending"), (n) => n === 0, { timeout: 20_000 })
        // Events enqueued after the defects are applied too: the loop is alive.
        yield* enqueueMany(Array.from({ length: 100 }, (_, i) => event(Fragile, { resourceId: 500 + i, payload: 500 + i })))
        yield* eventually(countRows("pending"), (n) => n === 0, { timeout: 20_000 })
        const sql = yield* SqlClient.SqlClient
        const dead = yield* sql<{ id: string; payload: number }>`
          SELECT id::text AS id, payload FROM sync_outbox WHERE status = 'dead' ORDER BY payload::int`
        expect(dead.map((d) => d.payload)).toEqual([13, 66, 99, 1_013])
        const histories = yield* Effect.forEach(dead, (d) => stored(d.id))
        for (const h of histories) {
          expect(h.failures.map((f) => [f.attempt, f.errorTag])).toEqual([[1, "HandlerDefect"], [2, "HandlerDefect"], [3, "HandlerDefect"]])
        }
        expect(histories.map((h) => h.failures[0]!.message)).toEqual([
          expect.stringMatching(/^Error: thirteen threw \(at .+Worker\.test\.ts:\d+:\d+\)?\)$/),
          expect.stringMatching(/^Error: sixty-six died \(at .+\)$/),
          expect.stringMatching(/^Error: ninety-nine rejected \(at .+\)$/),
          expect.stringMatching(/^Error: batch member died \(at .+\)$/)
        ])
        const values = yield* get(`${p}0`).pipe(Effect.zipRight(Effect.flatMap(RedisSink, (r) =>
          r.use((c) => c.mget([...Array.from({ length: 200 }, (_, i) => `${p}${i}`), ...Array.from({ length: 100 }, (_, i) => `${p}${500 + i}`), ...Array.from({ length: 50 }, (_, i) => `${p}${1_000 + i}`)])))))
        expect(values.filter((v) => v === "ok")).toHaveLength(350 - 4)
        expect(yield* worker.loop.get).toBe("running")
      }).pipe(
        Effect.provide(
          workerLayer({ url, handlers, config: { maxRetries: 3, backoffBase: Duration.millis(20), backoffCap: Duration.millis(50) } })
        )
      )
    }).pipe(Effect.provide(Store.layer.pipe(Layer.provideMerge(sqlLayer(url))))), 60_000)
})

describe("Worker: a slow call never outlives its lease", () => {
  /** Every (event, start, end) interval of a handler's work, and how many overlapped one of the same event. */
  const recordIntervals = () => {
    const intervals: Array<{ id: string; start: number; end: number | null }> = []
    let overlaps = 0
    return {
      intervals,
      overlaps: () => overlaps,
      start: (id: string) => {
        if (intervals.some((i) => i.id === id && i.end === null)) overlaps++
        const interval = { id, start: Date.now(), end: null as number | null }
        intervals.push(interval)
        return () => {
          interval.end = Date.now()
        }
      }
    }
  }

  it.live("a promise handler that outlives the call timeout is not retried, by this worker or another, until it has ended", () =>
    Effect.gen(function*() {
      yield* Effect.provide(clear, sqlLayer(url))
      const seen = recordIntervals()
      let aborted = 0
      const Slow = OutboxEvent.make({ resourceType: "slow_promise", action: "set", payload: Schema.Number })
      const handlers = Handlers.layer(
        handle(Slow, ({ id }) =>
          Effect.flatMap(RedisSink, (redis) =>
            redis.use(async (_client, signal) => {
              const end = seen.start(id)
              signal.addEventListener("abort", () => aborted++)
              // Ignores the signal, as careless promise code does: it runs on past the timeout and the lease.
              await new Promise((r) => setTimeout(r, 2_600))
              end()
            })))
      )
      const config = {
        leaseDuration: Duration.seconds(2),
        callTimeout: Duration.seconds(1),
        maxRetries: 2,
        backoffBase: Duration.millis(50),
        backoffCap: Duration.millis(100),
        interval: Duration.millis(200)
      }
      yield* Effect.provide(
        enqueueMany(Array.from({ length: 6 }, (_, i) => event(Slow, { resourceId: i + 1, payload: i }))),
        sqlLayer(url)
      )
      yield* Effect.gen(function*() {
        yield* eventually(countRows("dead"), (n) => n === 6, { timeout: 40_000, interval: 100 })
      }).pipe(
        Effect.provide(Layer.merge(workerLayer({ url, handlers, config }), workerLayer({ url, handlers, config })))
      )
      // Two attempts each, one after the other, never side by side, whichever worker ran them.
      expect(seen.overlaps()).toBe(0)
      expect(seen.intervals).toHaveLength(12)
      for (const interval of seen.intervals) {
        const later = seen.intervals.filter((other) => other.id === interval.id && other.start > interval.start)
        for (const other of later) expect(other.start).toBeGreaterThanOrEqual(interval.end!)
      }
      expect(aborted).toBe(12)
      const history = yield* Effect.provide(
        Effect.flatMap(SqlClient.SqlClient, (sql) => sql<{ tags: string }>`SELECT string_agg(DISTINCT error_tag, ',') AS tags FROM sync_outbox_failures`),
        sqlLayer(url)
      )
      expect(history[0]!.tags).toBe("HandlerTimeout")
    }), 60_000)

  it.live("an Effect.promise handler (untracked) is held until its lease expires before its retry", () =>
    Effect.gen(function*() {
      yield* Effect.provide(clear, sqlLayer(url))
      const seen = recordIntervals()
      const Untracked = OutboxEvent.make({ resourceType: "untracked", action: "set", payload: Schema.Number })
      const handlers = Handlers.layer(
        handle(Untracked, ({ id }) =>
          Effect.promise(async () => {
            const end = seen.start(id)
            await new Promise((r) => setTimeout(r, 1_700))
            end()
          }))
      )
      const config = {
        leaseDuration: Duration.seconds(2),
        callTimeout: Duration.seconds(1),
        maxRetries: 2,
        backoffBase: Duration.millis(20),
        backoffCap: Duration.millis(50),
        interval: Duration.millis(200)
      }
      yield* Effect.provide(enqueueMany(Array.from({ length: 4 }, (_, i) => event(Untracked, { resourceId: i + 1, payload: i }))), sqlLayer(url))
      yield* eventually(countRows("dead"), (n) => n === 4, { timeout: 30_000, interval: 100 }).pipe(
        Effect.provide(Layer.merge(workerLayer({ url, handlers, config }), workerLayer({ url, handlers, config })))
      )
      expect(seen.overlaps()).toBe(0)
      expect(seen.intervals).toHaveLength(8)
    }), 60_000)
})

describe("Worker: a resource's events go back to back", () => {
  it.live("20 non-coalescing events of one key, at the default 5 s interval: all applied, in order, within 2 s of their commit", () =>
    Effect.gen(function*() {
      yield* Effect.provide(clear, sqlLayer(url))
      const applied = yield* Ref.make<Array<number>>([])
      const Step = OutboxEvent.make({ resourceType: "step", action: "apply", payload: Schema.Number })
      const handlers = Handlers.layer(handle(Step, ({ payload }) => Ref.update(applied, (a) => [...a, payload])))
      yield* Effect.gen(function*() {
        yield* realSleep(300)
        const sql = yield* SqlClient.SqlClient
        yield* sql.withTransaction(enqueueMany(Array.from({ length: 20 }, (_, i) => event(Step, { resourceId: 1, payload: i }))))
        const committedAt = Date.now()
        yield* eventually(Ref.get(applied), (a) => a.length === 20, { timeout: 10_000, interval: 5 })
        // 2 s on a quiet machine; the bound is what a loaded one needs, and stays under one 5 s poll:
        // one event per poll would take 100 s.
        expect(Date.now() - committedAt).toBeLessThan(4_500)
        expect(yield* Ref.get(applied)).toEqual(Array.from({ length: 20 }, (_, i) => i))
      }).pipe(Effect.provide(workerLayer({ url, handlers, config: { interval: Duration.seconds(5) } })))
    }), 30_000)

  it.live("the events queued behind a poison event drain at once when it goes dead", () =>
    Effect.gen(function*() {
      yield* Effect.provide(clear, sqlLayer(url))
      const applied = yield* Ref.make<Array<number>>([])
      const Step = OutboxEvent.make({ resourceType: "step", action: "apply", payload: Schema.Number })
      const handlers = Handlers.layer(
        handle(Step, ({ payload }) =>
          payload === 0 ? new Boom({ message: "poison" }) : Ref.update(applied, (a) => [...a, payload]))
      )
      yield* Effect.gen(function*() {
        yield* enqueueMany(Array.from({ length: 6 }, (_, i) => event(Step, { resourceId: 1, payload: i })))
        yield* eventually(countRows("dead"), (n) => n === 1, { timeout: 10_000, interval: 5 })
        const deadAt = Date.now()
        yield* eventually(Ref.get(applied), (a) => a.length === 5, { timeout: 10_000, interval: 5 })
        // Below one poll interval (5 s): they did not wait for it, one per poll.
        expect(Date.now() - deadAt).toBeLessThan(4_500)
        expect(yield* Ref.get(applied)).toEqual([1, 2, 3, 4, 5])
      }).pipe(
        Effect.provide(
          workerLayer({
            url,
            handlers,
            config: { interval: Duration.seconds(5), maxRetries: 2, backoffBase: Duration.millis(20), backoffCap: Duration.millis(40) }
          })
        )
      )
    }).pipe(Effect.provide(sqlLayer(url))), 30_000)
})

describe("Worker: per-key exclusion", () => {
  it.live("a backlog is claimed ahead: the next claim is on its way while a full batch is applied, and each event is applied once", () =>
    Effect.gen(function*() {
      yield* clear
      const p = prefix()
      let claims = 0
      const overlapped: Array<boolean> = []
      const applied = new Map<string, number>()
      // Batch k was claimed by claim k: without claiming ahead, claim k + 1 starts only after it.
      const slow = Handlers.layer(handleBatch(SetValue, (events) =>
        Effect.gen(function*() {
          yield* realSleep(40)
          overlapped.push(claims > overlapped.length + 1)
          for (const e of events) applied.set(e.payload.key, (applied.get(e.payload.key) ?? 0) + 1)
          return events.map(() => Exit.void)
        })))
      const counted = Layer.effect(Leases, Effect.map(Leases, (leases) => ({
        ...leases,
        claim: (owner: string, leaseMs: number, limit: number) =>
          Effect.zipRight(Effect.sync(() => void claims++), leases.claim(owner, leaseMs, limit))
      }))).pipe(Layer.provide(Store.layer))
      yield* enqueueMany(Array.from({ length: 500 }, (_, i) => event(SetValue, { payload: { key: `${p}${i}`, value: "v" } })))
      yield* Effect.scoped(Effect.gen(function*() {
        yield* Layer.build(Worker.layer.pipe(
          Layer.provide(Layer.mergeAll(counted, Listener.off, slow)),
          Layer.provide(Layer.mergeAll(OutboxConfig.layer({ batchSize: 100, interval: Duration.millis(50) }), sqlLayer(url), redisLayer()))
        ))
        yield* eventually(countRows(), (n) => n === 0, { timeout: 20_000 })
      }))
      expect(applied.size).toBe(500)
      expect([...applied.values()].every((n) => n === 1)).toBe(true)
      // The five full batches but the last had the next claim sent while they ran.
      expect(overlapped.filter(Boolean).length).toBeGreaterThanOrEqual(4)
    }).pipe(Effect.provide(sqlLayer(url))))

  it.live("statistics are looked at when a claim comes back full (a backlog), not for a trickle of single events", () =>
    Effect.gen(function*() {
      yield* clear
      const p = prefix()
      let looks = 0
      const counted = (leases: LeasesShape): LeasesShape => ({
        ...leases,
        refreshStatistics: Effect.zipRight(Effect.sync(() => void looks++), leases.refreshStatistics)
      })
      yield* Effect.scoped(Effect.gen(function*() {
        yield* buildWorkerSeeing(counted, { batchSize: 100, interval: Duration.millis(20) })
        for (let i = 0; i < 10; i++) {
          yield* enqueue(SetValue, { payload: { key: `${p}trickle${i}`, value: "v" } })
          yield* eventually(countRows(), (n) => n === 0)
          yield* realSleep(25)
        }
        expect(looks).toBe(0)
        yield* enqueueMany(Array.from({ length: 250 }, (_, i) => event(SetValue, { payload: { key: `${p}${i}`, value: "v" } })))
        yield* eventually(countRows(), (n) => n === 0, { timeout: 20_000 })
        expect(looks).toBeGreaterThanOrEqual(1)
      }))
    }).pipe(Effect.provide(sqlLayer(url))))

  it.live("a burst into an idle outbox, its claim planned while the table was empty, is analyzed before the first claim that sees it", () =>
    Effect.gen(function*() {
      yield* emptyAndAnalyzed
      const p = prefix()
      const calls: Array<string> = []
      const counted = (leases: LeasesShape): LeasesShape => ({
        ...leases,
        refreshStatisticsIfOutgrown: Effect.tap(leases.refreshStatisticsIfOutgrown, (analyzed) => Effect.sync(() => void calls.push(`look ${analyzed}`))),
        claim: (owner: string, leaseMs: number, limit: number) =>
          Effect.tap(leases.claim(owner, leaseMs, limit), (events) => Effect.sync(() => void calls.push(`claim ${events.length}`)))
      })
      yield* Effect.scoped(Effect.gen(function*() {
        yield* buildWorkerSeeing(counted, { batchSize: 1000 })
        // Idle: the first drain's empty claims are this pool's plans for an empty table.
        yield* realSleep(400)
        expect(calls).toContain("claim 0")
        calls.length = 0
        yield* enqueueMany(Array.from({ length: 20_000 }, (_, i) => event(SetValue, { payload: { key: `${p}${i}`, value: "v" } })))
        yield* eventually(countRows(), (n) => n === 0, { timeout: 30_000 })
        // Whatever woke the worker in between (a poll, say), the claim that first saw the burst came right after the look that analyzed it.
        const firstFull = calls.indexOf("claim 1000")
        expect(firstFull).toBeGreaterThan(0)
        expect(calls[firstFull - 1]).toBe("look true")
      }))
    }).pipe(Effect.provide(sqlLayer(url))), 60_000)

  it.live("a burst its drain's first look did not see (it landed just after it, or within a quarter second of a trickle's look) is looked at when its first full claim comes back, before the next claim", () =>
    Effect.gen(function*() {
      yield* emptyAndAnalyzed
      const p = prefix()
      const calls: Array<string> = []
      // The burst's drain may look before the burst is visible: that look is made to see nothing.
      let claimsSinceBurst = 0
      let burst = false
      const counted = (leases: LeasesShape): LeasesShape => ({
        ...leases,
        refreshStatisticsIfOutgrown: Effect.suspend(() =>
          burst && claimsSinceBurst === 0
            ? Effect.sync(() => (calls.push("look before the burst"), false))
            : Effect.tap(leases.refreshStatisticsIfOutgrown, (analyzed) => Effect.sync(() => void calls.push(`look ${analyzed}`)))
        ),
        claim: (owner: string, leaseMs: number, limit: number) =>
          Effect.tap(leases.claim(owner, leaseMs, limit), (events) =>
            Effect.sync(() => {
              if (burst) claimsSinceBurst++
              calls.push(`claim ${events.length}`)
            }))
      })
      yield* Effect.scoped(Effect.gen(function*() {
        yield* buildWorkerSeeing(counted, { batchSize: 1000 })
        yield* realSleep(400)
        // A trickle event: its drain looks (and finds nothing), and the next quarter second of drains does not.
        yield* enqueue(SetValue, { payload: { key: `${p}trickle`, value: "v" } })
        yield* eventually(countRows(), (n) => n === 0, { interval: 5 })
        calls.length = 0
        burst = true
        // More than a thousand over statistics of none.
        yield* enqueueMany(Array.from({ length: 3_000 }, (_, i) => event(SetValue, { payload: { key: `${p}${i}`, value: "v" } })))
        yield* eventually(countRows(), (n) => n === 0, { timeout: 30_000 })
        const firstFull = calls.indexOf("claim 1000")
        expect(firstFull).toBeGreaterThanOrEqual(0)
        // Analyzed before the drain's second claim, whether the drain's first look came in time or not.
        const analyzedAt = calls.indexOf("look true")
        expect(analyzedAt).toBeGreaterThanOrEqual(0)
        expect(analyzedAt).toBeLessThan(calls.indexOf("claim 1000", firstFull + 1))
      }))
    }).pipe(Effect.provide(sqlLayer(url))), 60_000)

  it.live("after a claim that took a second, the statistics are looked at before the next claim is sent", () =>
    Effect.gen(function*() {
      yield* clear
      const p = prefix()
      yield* enqueueMany(Array.from({ length: 10 }, (_, i) => event(SetValue, { payload: { key: `${p}${i}`, value: "v" } })))
      const calls: Array<string> = []
      let claims = 0
      const counted = (leases: LeasesShape): LeasesShape => ({
        ...leases,
        // A look that takes a while, so that a claim sent beside it would be seen starting first.
        refreshStatistics: Effect.sync(() => void calls.push("look")).pipe(
          Effect.zipRight(realSleep(200)),
          Effect.zipRight(leases.refreshStatistics),
          Effect.tap(() => Effect.sync(() => void calls.push("looked")))
        ),
        claim: (owner: string, leaseMs: number, limit: number) =>
          Effect.sync(() => claims++).pipe(
            Effect.tap((n) => Effect.sync(() => void calls.push(`claim ${n}`))),
            // The first claim is slow (as on a plan made for an empty table).
            Effect.tap((n) => n === 0 ? realSleep(1_100) : Effect.void),
            Effect.zipRight(leases.claim(owner, leaseMs, limit))
          )
      })
      yield* Effect.scoped(Effect.gen(function*() {
        yield* buildWorkerSeeing(counted, { batchSize: 5 })
        yield* eventually(countRows(), (n) => n === 0, { timeout: 20_000 })
      }))
      expect(calls.slice(0, 4)).toEqual(["claim 0", "look", "looked", "claim 1"])
    }).pipe(Effect.provide(sqlLayer(url))), 30_000)

  it.live("four workers (own layers, own pools) on many events of a few keys never apply one key twice at once", () =>
    Effect.gen(function*() {
      yield* Effect.provide(clear, sqlLayer(url))
      const active = new Map<string, number>()
      let overlaps = 0
      let applies = 0
      const Latest = OutboxEvent.make({
        resourceType: "latest",
        action: "sync",
        payload: Schema.Number,
        coalesce: true,
        orderingKey: ({ payload }) => `latest:${payload % 3}`
      })
      const Ordered = OutboxEvent.make({
        resourceType: "ordered",
        action: "op",
        payload: Schema.Number,
        orderingKey: ({ payload }) => `ordered:${payload % 3}`
      })
      const exclusive = (key: string) =>
        Effect.acquireUseRelease(
          Effect.sync(() => {
            const n = active.get(key) ?? 0
            if (n > 0) overlaps++
            active.set(key, n + 1)
            applies++
          }),
          () => Effect.flatMap(Effect.sync(() => 2 + Math.random() * 4), (ms) => realSleep(ms)),
          () => Effect.sync(() => active.set(key, (active.get(key) ?? 1) - 1))
        )
      const handlers = Handlers.layer(
        handle(Latest, ({ event }) => exclusive(event.orderingKey)),
        handle(Ordered, ({ event }) => exclusive(event.orderingKey))
      )
      const worker = () => workerLayer({ url, handlers, config: { batchSize: 10, concurrency: 8, interval: Duration.millis(100) } })
      // Keys held by a worker that vanished lie ahead of the keys under test, each with a second
      // event waiting: every claim looks at those and turns them down, which widens the time
      // between a claim's snapshot and its per-key decision, where the window used to be.
      const Parked = OutboxEvent.make({ resourceType: "parked", action: "op", payload: Schema.Number })
      yield* Effect.gen(function*() {
        yield* enqueueMany(Array.from({ length: 1_000 }, (_, i) => event(Parked, { resourceId: (i % 500) + 1, payload: i })))
        expect(yield* Effect.flatMap(Store, (s) => s.claim("vanished", 600_000, 1_000))).toHaveLength(500)
      }).pipe(Effect.provide(Store.layer.pipe(Layer.provideMerge(sqlLayer(url)))))
      yield* Effect.gen(function*() {
        // Producers keep committing small transactions while the workers claim, so claims and
        // commits interleave as they do in production.
        yield* Effect.forEach(Array.from({ length: 4 }), (_, producer) =>
          Effect.forEach(Array.from({ length: 60 }), (_, round) =>
            enqueueMany(Array.from({ length: 5 }, (_, j) => {
              const n = producer * 1_000 + round * 5 + j
              return n % 2 === 0 ? event(Latest, { payload: n }) : event(Ordered, { payload: n })
            })).pipe(Effect.zipRight(realSleep(2)))), { concurrency: "unbounded", discard: true }).pipe(Effect.provide(sqlLayer(url)))
        yield* eventually(countRows("pending"), (n) => n === 1_000, { timeout: 60_000, interval: 50 }).pipe(Effect.provide(sqlLayer(url)))
      }).pipe(Effect.provide(Layer.mergeAll(worker(), worker(), worker(), worker())))
      expect(applies).toBeGreaterThan(50)
      expect(overlaps).toBe(0)
    }), 120_000)
})

describe("Worker: health over this whole file", () => {
  it.effect("the loop never failed and restarted: nothing above passed by accident of a retry", () =>
    Effect.gen(function*() {
      expect((yield* Metric.value(Metrics.loopErrors)).count).toBe(0)
    }))
})
