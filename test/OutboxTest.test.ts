/**
 * The test kit itself (`sync-outbox/testing`): no server at all. Its semantics are held to the
 * real store's by test/Semantics.test.ts; here: the helpers, the sink and the breaker.
 */
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Chunk, Clock, Data, Duration, Effect, Fiber, Layer, Metric, Ref, Schedule, Schema, TestClock } from "effect"
import { enqueue, enqueueMany, event, handle, Handlers, InFlight, Journal, Metrics, OutboxEvent, RedisSink, Store } from "../src/index.js"
import { OutboxTest, type OutboxTestOptions, layer as outboxTest, PgliteClient } from "../src/testing/index.js"

class Rejected extends Data.TaggedError("Rejected")<{ readonly message: string }> {}

const SetValue = OutboxEvent.make({
  resourceType: "thing",
  action: "set",
  payload: Schema.Struct({ key: Schema.String, value: Schema.String }),
  orderingKey: ({ payload }) => `thing:${payload.key}`
})
const setValue = handle(SetValue, ({ payload }) => Effect.flatMap(RedisSink, (r) => r.use((c) => c.set(payload.key, payload.value))))

const start = Date.parse("2026-01-01T00:00:00Z")

describe("sync-outbox/testing", () => {
  it.effect("drain applies what is due and reports it; the handler's writes are in the sink", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(start)
      const outbox = yield* OutboxTest
      const sql = yield* SqlClient.SqlClient
      const id = yield* sql.withTransaction(enqueue(SetValue, { payload: { key: "a", value: "1" } }))
      expect(id).toBe("1") // every test starts from an empty outbox, ids from 1
      const report = yield* outbox.drain
      expect(report.applied.map((e) => e.id)).toEqual([id])
      expect(report.failed).toEqual([])
      expect(report.pending).toBe(0)
      expect(yield* outbox.sink.keys).toEqual({ a: "1" })
      const redis = yield* RedisSink
      expect(yield* redis.use((c) => c.get("a"))).toBe("1")
    }).pipe(Effect.provide(outboxTest({ handlers: Handlers.layer(setValue) }))))

  describe("a backlog of full batches, each applied over several turns of the event loop, is reported whole by one drain", () => {
    const backlog = Effect.gen(function*() {
      const outbox = yield* OutboxTest
      yield* enqueueMany(Array.from({ length: 7 }, (_, i) => event(SetValue, { payload: { key: `k${i}`, value: "v" } })))
      const report = yield* outbox.drain
      expect(report.applied).toHaveLength(7)
      expect(report.pending).toBe(0)
    })
    const options = {
      // A batch of 2 is full, so the worker claims the next batch while this one is applied.
      config: { batchSize: 2 },
      handlers: Handlers.layer(handle(SetValue, ({ payload }) =>
        Effect.zipRight(
          Effect.promise(() => new Promise<void>((resolve) => setTimeout(resolve, 5))),
          Effect.flatMap(RedisSink, (r) => r.use((c) => c.set(payload.key, payload.value)))
        )))
    }
    it.effect("in memory", () => backlog.pipe(Effect.provide(OutboxTest.layerMemory(options))))
    it.effect("on PGlite", () => backlog.pipe(Effect.provide(outboxTest(options))))
  })

  it.effect("a rolled-back transaction leaves nothing to drain", () =>
    Effect.gen(function*() {
      const outbox = yield* OutboxTest
      const sql = yield* SqlClient.SqlClient
      const result = yield* sql.withTransaction(
        Effect.zipRight(enqueue(SetValue, { payload: { key: "a", value: "1" } }), Effect.fail("abort" as const))
      ).pipe(Effect.flip)
      expect(result).toBe("abort")
      const report = yield* outbox.drain
      expect(report.applied).toEqual([])
      expect(yield* outbox.sink.keys).toEqual({})
    }).pipe(Effect.provide(outboxTest({ handlers: Handlers.layer(setValue) }))))

  it.effect("advance walks the backoff: each attempt at its due time, then a dead letter with its history", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(start)
      const outbox = yield* OutboxTest
      const id = yield* enqueue(FlakyType, { payload: "x" })
      const first = yield* outbox.drain
      expect(first.failed.map((f) => [f.attempt, f.errorTag, f.message, f.dead])).toEqual([[1, "Rejected", "no", false]])
      const due1 = first.failed[0]!.nextRetryAt!.getTime() - start
      expect(due1).toBeGreaterThanOrEqual(500)
      expect(due1).toBeLessThanOrEqual(1_000)
      // One millisecond early: nothing.
      const early = yield* outbox.advance(Duration.millis(due1 - 1))
      expect(early.failed).toEqual([])
      // A whole minute at once still stops at each due time: attempts 2 and 3, then dead.
      const rest = yield* outbox.advance("1 minute")
      expect(rest.failed.map((f) => f.attempt)).toEqual([2, 3])
      expect(rest.dead.map((f) => f.event.id)).toEqual([id])
      const attempt3At = rest.failed[1]!
      expect(attempt3At.nextRetryAt).toBeNull()
      const [dead] = yield* outbox.dead
      expect(dead!.event.status).toBe("dead")
      expect(dead!.failures.map((f) => f.attempt)).toEqual([1, 2, 3])
      // Attempt 2 ran at its due time, attempt 3 in [1 s, 2 s] after it.
      const [f1, f2, f3] = dead!.failures
      expect(f1!.failedAt.getTime()).toBe(start)
      expect(f2!.failedAt.getTime()).toBe(start + due1)
      const gap = f3!.failedAt.getTime() - f2!.failedAt.getTime()
      expect(gap).toBeGreaterThanOrEqual(1_000)
      expect(gap).toBeLessThanOrEqual(2_000)
      expect(yield* outbox.pending).toEqual([])
    }).pipe(Effect.provide(outboxTest({
      handlers: Handlers.layer(handle(FlakyType, () => new Rejected({ message: "no" }))),
      config: { maxRetries: 3, backoffBase: Duration.seconds(1) }
    }))))

  it.effect("through a Redis blip: the breaker opens, no attempt is spent, and it all applies once Redis is back", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(start)
      const outbox = yield* OutboxTest
      yield* enqueueMany(Array.from({ length: 5 }, (_, i) => event(SetValue, { payload: { key: `k${i}`, value: "v" } })))
      yield* outbox.sink.unavailable
      const during = yield* outbox.drain
      expect(during.breaker).toBe("open")
      expect(during.applied).toEqual([])
      expect(during.failed).toEqual([])
      // Time passes while Redis is down: still no attempt counted against any event.
      const later = yield* outbox.advance("1 second")
      expect(later.failed).toEqual([])
      expect((yield* outbox.pending).map((p) => p.event.retryCount)).toEqual([0, 0, 0, 0, 0])
      yield* outbox.sink.available
      // The breaker's probe runs on its schedule (probeCap apart at most, jittered up to 20% more).
      const after = yield* outbox.advance("60 millis")
      expect(after.breaker).toBe("closed")
      expect(after.applied).toHaveLength(5)
      expect(Object.keys(yield* outbox.sink.keys)).toHaveLength(5)
    }).pipe(Effect.provide(outboxTest({ handlers: Handlers.layer(setValue) }))))

  it.effect("coalescing: ten edits of one resource are one apply and nine superseded", () =>
    Effect.gen(function*() {
      const outbox = yield* OutboxTest
      yield* enqueueMany(Array.from({ length: 10 }, (_, i) => event(Synced, { resourceId: 7, payload: i })))
      const report = yield* outbox.drain
      expect(report.applied.map((e) => e.payload)).toEqual([9])
      expect(report.superseded).toHaveLength(9)
      expect(yield* outbox.sink.keys).toEqual({ "synced:7": "9" })
    }).pipe(Effect.provide(outboxTest({
      handlers: Handlers.layer(handle(Synced, ({ payload, resourceId }) =>
        Effect.flatMap(RedisSink, (r) => r.use((c) => c.set(`synced:${resourceId}`, String(payload))))))
    }))))

  it.effect("the sink answers like Redis: a command on the wrong type is the item's failure, TTLs follow TestClock", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(start)
      const redis = yield* RedisSink
      yield* redis.use((c) => c.set("s", "v", "PX", 1_000))
      const wrong = yield* redis.use((c) => c.hset("s", "f", "v")).pipe(Effect.flip)
      expect(wrong._tag).toBe("SinkCommandError")
      expect(wrong.message).toMatch(/^WRONGTYPE/)
      const unknown = yield* redis.use((c) => c.zadd("z", 1, "m")).pipe(Effect.flip)
      expect(unknown._tag).toBe("SinkCommandError")
      expect(yield* redis.use((c) => c.pttl("s"))).toBe(1_000)
      yield* TestClock.adjust("999 millis")
      expect(yield* redis.use((c) => c.get("s"))).toBe("v")
      yield* TestClock.adjust("1 millis")
      expect(yield* redis.use((c) => c.get("s"))).toBeNull()
      const results = yield* redis.use((c) => c.multi().hset("h", { a: "1", b: "2" }).incr("n").get("h").exec())
      expect(results).toEqual([[null, 2], [null, 1], [expect.objectContaining({ name: "ReplyError" }), null]])
      expect(yield* redis.use((c) => c.hgetall("h"))).toEqual({ a: "1", b: "2" })
      const outbox = yield* OutboxTest
      yield* outbox.sink.unavailable
      const down = yield* redis.ping.pipe(Effect.flip)
      expect(down._tag).toBe("SinkUnavailable")
    }).pipe(Effect.provide(outboxTest({ handlers: Handlers.layer(setValue) }))))
})

describe("sync-outbox/testing: the user's own tables, hung handlers, the live clock", () => {
  const PlanChanged = OutboxEvent.make({ resourceType: "plan", action: "update", payload: Schema.Null, requiresResourceId: true, coalesce: true })
  // A handler as in production: it reads the control plane's current state, then writes Redis.
  const planHandler = handle(PlanChanged, ({ resourceId }) =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const [plan] = yield* sql<{ tier: string }>`SELECT tier FROM plans WHERE id = ${resourceId}`
      yield* Effect.flatMap(RedisSink, (r) => r.use((c) => c.hset(`plan:${resourceId}`, "tier", plan!.tier)))
    }))
  const planKit = outboxTest({
    handlers: Handlers.layer(planHandler),
    schema: "CREATE TABLE plans (id bigserial PRIMARY KEY, tier text NOT NULL)"
  })

  for (const round of [1, 2]) {
    it.effect(`the test's own schema, emptied before each test (round ${round}): ids restart, nothing leaks`, () =>
      Effect.gen(function*() {
        const outbox = yield* OutboxTest
        const sql = yield* SqlClient.SqlClient
        expect(yield* sql`SELECT * FROM plans`).toEqual([])
        const [plan] = yield* sql<{ id: string }>`INSERT INTO plans (tier) VALUES ('free') RETURNING id`
        expect(plan!.id).toBe("1") // int8 comes back as text, as with node-postgres
        yield* sql.withTransaction(Effect.gen(function*() {
          yield* sql`UPDATE plans SET tier = 'pro' WHERE id = 1`
          yield* enqueue(PlanChanged, { resourceId: 1, payload: null })
        }))
        expect((yield* outbox.drain).applied).toHaveLength(1)
        expect(yield* outbox.sink.keys).toEqual({ "plan:1": { tier: "pro" } })
      }).pipe(Effect.provide(planKit)))
  }

  // The same for tables in a schema of the application's own, not `public`.
  const appKit = outboxTest({
    handlers: Handlers.layer(planHandler),
    schema: "CREATE SCHEMA app; CREATE TABLE app.accounts (id bigserial PRIMARY KEY, name text NOT NULL)"
  })
  for (const round of [1, 2]) {
    it.effect(`tables in a schema of the application's own are emptied before each test too (round ${round})`, () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        expect(yield* sql`SELECT * FROM app.accounts`).toEqual([])
        const [account] = yield* sql<{ id: string }>`INSERT INTO app.accounts (name) VALUES ('acme') RETURNING id`
        expect(account!.id).toBe("1")
      }).pipe(Effect.provide(appKit)))
  }

  it.effect("a handler that never finishes: drain says so in real time; past callTimeout it is the item's HandlerTimeout", () =>
    Effect.gen(function*() {
      const outbox = yield* OutboxTest
      const id = yield* enqueue(Hangs, { payload: "x" })
      const timeout = yield* outbox.drain.pipe(Effect.flip)
      expect(timeout._tag).toBe("DrainTimeout")
      expect(timeout._tag === "DrainTimeout" && timeout.inFlight).toEqual([id])
      const report = yield* outbox.advance("2 seconds")
      expect(report.failed.map((f) => [f.event.id, f.errorTag])).toEqual([[id, "HandlerTimeout"]])
    }).pipe(Effect.provide(outboxTest({
      handlers: Handlers.layer(handle(Hangs, () => Effect.never)),
      config: { callTimeout: Duration.seconds(2), leaseDuration: Duration.seconds(10) },
      drainTimeout: Duration.millis(300)
    }))))

  it.live("under the live clock, drain works the same", () =>
    Effect.gen(function*() {
      const outbox = yield* OutboxTest
      yield* enqueue(SetValue, { payload: { key: "live", value: "yes" } })
      expect((yield* outbox.drain).applied).toHaveLength(1)
      expect(yield* outbox.sink.keys).toEqual({ live: "yes" })
    }).pipe(Effect.provide(outboxTest({ handlers: Handlers.layer(setValue) }))))

  it.effect("the journal's pruner makes no step of its own: a week's advance on PGlite is quick, and prunes what it passed", () =>
    Effect.gen(function*() {
      const outbox = yield* OutboxTest
      yield* enqueue(SetValue, { payload: { key: "old", value: "1" } })
      expect((yield* outbox.drain).applied).toHaveLength(1)
      expect(yield* Journal.history()).toHaveLength(1)
      // It used to stop at every minute on the way (some 50 ms of real time each: a week, ten minutes).
      const realTime = Effect.async<string>((resume) => {
        const timer = setTimeout(() => resume(Effect.succeed("still stepping after 30 s of real time")), 30_000)
        return Effect.sync(() => clearTimeout(timer))
      })
      expect(yield* Effect.raceFirst(Effect.as(outbox.advance("7 days"), "advanced"), realTime)).toBe("advanced")
      // The journal keeps a day: the pruner ran once the advance had passed its time.
      expect(yield* Journal.history()).toEqual([])
    }).pipe(Effect.provide(outboxTest({ handlers: Handlers.layer(setValue), config: { retention: Duration.days(1) } }))))
})

const Counted = OutboxEvent.make({ resourceType: "counted", action: "apply", payload: Schema.String })
const Hangs = OutboxEvent.make({ resourceType: "hangs", action: "apply", payload: Schema.String })
const FlakyType = OutboxEvent.make({ resourceType: "flaky", action: "apply", payload: Schema.String })
/** One step of a job that enqueues its next step itself: every step on the same key. */
const Step = OutboxEvent.make({ resourceType: "job", action: "step", payload: Schema.Number, requiresResourceId: true })
const Synced = OutboxEvent.make({ resourceType: "synced", action: "sync", payload: Schema.Number, coalesce: true, requiresResourceId: true })

describe("the worker's outcome counters", () => {
  // Process-wide counters: each spec reads how far they moved.
  const counters = { applied: Metrics.applied, superseded: Metrics.superseded, failed: Metrics.failed, dead: Metrics.dead, released: Metrics.released }
  const read = Effect.map(
    Effect.forEach(Object.entries(counters), ([name, counter]) => Effect.map(Metric.value(counter), (v) => [name, v.count] as const)),
    (entries) => Object.fromEntries(entries) as Record<keyof typeof counters, number>
  )
  const moved = <A, E, R>(body: Effect.Effect<A, E, R>) =>
    Effect.gen(function*() {
      const before = yield* read
      yield* body
      const after = yield* read
      return Object.fromEntries(Object.entries(after).map(([name, n]) => [name, n - before[name as keyof typeof counters]]))
    })
  const Sync = OutboxEvent.make({ resourceType: "counted", action: "sync", payload: Schema.Number, coalesce: true })
  const Flaky = OutboxEvent.make({ resourceType: "counted", action: "flaky", payload: Schema.Struct({ failures: Schema.Number }) })
  const spec = Effect.gen(function*() {
    const outbox = yield* OutboxTest
    yield* enqueueMany([
      ...Array.from({ length: 3 }, (_, i) => event(Sync, { resourceId: 1, payload: i })),
      event(Flaky, { resourceId: 2, payload: { failures: 1 } }),
      event(Flaky, { resourceId: 3, payload: { failures: 99 } })
    ])
    const first = yield* moved(outbox.drain)
    // Three coalescing edits: one apply, two superseded; each flaky event failed once, none dead yet.
    expect(first).toEqual({ applied: 1, superseded: 2, failed: 2, dead: 0, released: 0 })
    const rest = yield* moved(outbox.advance("1 minute"))
    // The one that fails once applies on its retry; the other fails until its third attempt is its last.
    expect(rest).toEqual({ applied: 1, superseded: 0, failed: 2, dead: 1, released: 0 })
  })
  const options = {
    config: { maxRetries: 3 },
    handlers: Handlers.layer(
      handle(Sync, () => Effect.void),
      handle(Flaky, ({ attempt, payload }) => attempt <= payload.failures ? Effect.fail(new Rejected({ message: `attempt ${attempt}` })) : Effect.void)
    )
  }
  it.effect("move by what each drain did: applied, superseded, failed (every failed attempt), dead; in memory", () =>
    spec.pipe(Effect.provide(OutboxTest.layerMemory(options))))
  it.effect("the same on PGlite", () => spec.pipe(Effect.provide(outboxTest(options))))
})

describe("sync-outbox/testing: time", () => {
  // Fails its first attempt, then applies with a TTL; notes the worker's time at each attempt.
  const flaky = (attempts: Ref.Ref<ReadonlyArray<number>>) =>
    Handlers.layer(handle(SetValue, ({ payload }) =>
      Effect.gen(function*() {
        const now = yield* Clock.currentTimeMillis
        const before = yield* Ref.getAndUpdate(attempts, (times) => [...times, now])
        if (before.length === 0) return yield* new Rejected({ message: "not yet" })
        yield* Effect.flatMap(RedisSink, (r) => r.use((c) => c.set(payload.key, payload.value, "PX", 5_000)))
      })))

  type Kit = (options: OutboxTestOptions<never, RedisSink | SqlClient.SqlClient>) => Layer.Layer<OutboxTest | RedisSink | SqlClient.SqlClient, unknown>
  const kits: ReadonlyArray<readonly [string, Kit]> = [["in memory", OutboxTest.layerMemory], ["on PGlite", outboxTest]]
  for (const [name, kit] of kits) {
    describe(name, () => {
      const attempts = Ref.unsafeMake<ReadonlyArray<number>>([])
      it.effect("the worker's finished timeouts leave no sleep behind on TestClock: the test's clock is the test's", () =>
        Effect.gen(function*() {
          const outbox = yield* OutboxTest
          yield* Ref.set(attempts, [])
          yield* enqueue(SetValue, { payload: { key: "a", value: "1" } })
          expect((yield* outbox.drain).failed).toHaveLength(1)
          expect(Chunk.toReadonlyArray(yield* TestClock.sleeps())).toEqual([])
        }).pipe(Effect.provide(kit({ handlers: flaky(attempts) }))))

      it.effect("the test's own sleeping fibers wake at their time within an advance, between the worker's steps", () =>
        Effect.gen(function*() {
          const outbox = yield* OutboxTest
          yield* Ref.set(attempts, [])
          const t0 = yield* Clock.currentTimeMillis
          yield* enqueue(SetValue, { payload: { key: "a", value: "1" } })
          yield* outbox.drain // attempt 1 fails; attempt 2 is due in [0.5 s, 1 s]
          const woke = yield* Effect.fork(Effect.zipRight(
            Effect.sleep("400 millis"),
            Effect.all([Clock.currentTimeMillis, Ref.get(attempts), outbox.sink.keys])
          ))
          yield* outbox.advance("2 seconds")
          const [at, seen, keys] = yield* woke.await.pipe(Effect.flatten)
          expect(at).toBe(t0 + 400)
          expect(seen).toHaveLength(1) // the retry, due later, had not run yet
          expect(keys).toEqual({})
          const [, retried] = yield* Ref.get(attempts)
          expect(retried! - t0).toBeGreaterThanOrEqual(500)
          expect(retried! - t0).toBeLessThanOrEqual(1_000)
          expect(yield* Clock.currentTimeMillis).toBe(t0 + 2_000)
        }).pipe(Effect.provide(kit({ handlers: flaky(attempts), config: { backoffBase: Duration.seconds(1) } }))))

      it.effect("a TTL a handler sets on a step within an advance counts from that step", () =>
        Effect.gen(function*() {
          const outbox = yield* OutboxTest
          yield* Ref.set(attempts, [])
          const t0 = yield* Clock.currentTimeMillis
          yield* enqueue(SetValue, { payload: { key: "a", value: "1" } })
          yield* outbox.drain
          expect((yield* outbox.advance("2 seconds")).applied).toHaveLength(1)
          const [, appliedAt] = yield* Ref.get(attempts)
          const redis = yield* RedisSink
          expect(yield* redis.use((c) => c.pttl("a"))).toBe(appliedAt! + 5_000 - (t0 + 2_000))
          yield* TestClock.adjust(Duration.millis(appliedAt! + 5_000 - (t0 + 2_000)))
          expect(yield* redis.use((c) => c.get("a"))).toBeNull()
        }).pipe(Effect.provide(kit({ handlers: flaky(attempts), config: { backoffBase: Duration.seconds(1) } }))))

      it.effect("events the test's own fibers enqueue while an advance moves TestClock are in its report", () =>
        Effect.gen(function*() {
          const outbox = yield* OutboxTest
          yield* Ref.set(attempts, [])
          yield* enqueue(SetValue, { payload: { key: "a", value: "1" } })
          yield* outbox.drain // attempt 1 fails; attempt 2 is due in [0.5 s, 1 s]
          // One wakes before the retry's step, one after the last step, before the advance ends.
          const early = yield* Effect.fork(Effect.zipRight(Effect.sleep("300 millis"), enqueue(SetValue, { payload: { key: "b", value: "2" } })))
          const late = yield* Effect.fork(Effect.zipRight(Effect.sleep("1500 millis"), enqueue(SetValue, { payload: { key: "c", value: "3" } })))
          const report = yield* outbox.advance("2 seconds")
          yield* Fiber.join(early)
          yield* Fiber.join(late)
          expect(yield* outbox.sink.keys).toEqual({ a: "1", b: "2", c: "3" })
          expect(report.applied.map((e) => (e.payload as { key: string }).key).sort()).toEqual(["a", "b", "c"])
        }).pipe(Effect.provide(kit({ handlers: flaky(attempts), config: { backoffBase: Duration.seconds(1) } }))))

      it.effect("a follow-up event a handler enqueues, applied in the same drain, is in its report", () =>
        Effect.gen(function*() {
          const outbox = yield* OutboxTest
          yield* enqueue(FlakyType, { payload: "first" })
          const report = yield* outbox.drain
          expect(report.applied.map((e) => [e.resourceType, e.payload])).toEqual([["flaky", "first"], ["thing", { key: "next", value: "1" }]])
          expect(yield* outbox.sink.keys).toEqual({ next: "1" })
        }).pipe(Effect.provide(kit({
          handlers: Handlers.layer(
            handle(FlakyType, () => Effect.asVoid(enqueue(SetValue, { payload: { key: "next", value: "1" } }))),
            setValue
          )
        }))))

      it.effect("a chain of follow-up events a handler enqueues on its own key (each blocked by the one running) is applied whole by one drain", () =>
        Effect.gen(function*() {
          const outbox = yield* OutboxTest
          yield* enqueue(Step, { resourceId: 1, payload: 1 })
          const report = yield* outbox.drain
          expect(report.applied.map((e) => e.payload)).toEqual([1, 2, 3, 4, 5])
          expect(report.pending).toBe(0)
          expect(yield* outbox.sink.keys).toEqual({ steps: ["1", "2", "3", "4", "5"] })
        }).pipe(Effect.provide(kit({
          handlers: Handlers.layer(handle(Step, ({ payload }) =>
            Effect.zipRight(
              Effect.flatMap(RedisSink, (r) => r.use((c) => c.rpush("steps", String(payload)))),
              payload < 5 ? Effect.asVoid(enqueue(Step, { resourceId: 1, payload: payload + 1 })) : Effect.void
            )))
        }))))

      const hung = {
        handlers: Handlers.layer(handle(Hangs, () => Effect.never)),
        config: { callTimeout: Duration.seconds(2), leaseDuration: Duration.seconds(10) },
        drainTimeout: Duration.seconds(2)
      }
      it.effect("a drain forked, then TestClock moved by the test past callTimeout: the drain reports the HandlerTimeout", () =>
        Effect.gen(function*() {
          const outbox = yield* OutboxTest
          const id = yield* enqueue(Hangs, { payload: "x" })
          const drain = yield* Effect.fork(outbox.drain)
          yield* TestClock.adjust("2 seconds")
          const report = yield* Fiber.join(drain)
          expect(report.failed.map((f) => [f.event.id, f.errorTag])).toEqual([[id, "HandlerTimeout"]])
        }).pipe(Effect.provide(kit(hung))))

      it.effect("a test that ends on a DrainTimeout, its handler still hung, closes its layer at once", () =>
        Effect.gen(function*() {
          // From the end of the test's body: PGlite starting (seconds, in the first test of a run) is not closing.
          let ended = Infinity
          yield* Effect.gen(function*() {
            const outbox = yield* OutboxTest
            yield* enqueue(Hangs, { payload: "x" })
            expect((yield* outbox.drain.pipe(Effect.flip))._tag).toBe("DrainTimeout")
            ended = Date.now()
          }).pipe(Effect.provide(kit({ ...hung, drainTimeout: Duration.millis(100) })))
          // The worker's finalizer waits for the handler up to callTimeout on the worker's clock.
          expect(Date.now() - ended).toBeLessThan(2_000)
        }))

      // Refused twice, then applied: the handler's own retries, on a schedule of the worker's clock.
      const retriesInside = (seen: Ref.Ref<ReadonlyArray<number>>) =>
        Handlers.layer(handle(SetValue, ({ payload }) =>
          Effect.gen(function*() {
            const now = yield* Clock.currentTimeMillis
            const before = yield* Ref.getAndUpdate(seen, (times) => [...times, now])
            if (before.length < 2) return yield* new Rejected({ message: "busy" })
            yield* Effect.flatMap(RedisSink, (r) => r.use((c) => c.set(payload.key, payload.value)))
          }).pipe(Effect.retry(Schedule.spaced("100 millis")))))

      it.effect("a handler that retries on a schedule of its own gets there within an advance, each try at its time", () =>
        Effect.gen(function*() {
          const outbox = yield* OutboxTest
          yield* Ref.set(attempts, [])
          const t0 = yield* Clock.currentTimeMillis
          yield* enqueue(SetValue, { payload: { key: "a", value: "1" } })
          const report = yield* outbox.advance("1 second")
          expect(report.applied).toHaveLength(1)
          expect(report.failed).toEqual([])
          expect((yield* Ref.get(attempts)).map((at) => at - t0)).toEqual([0, 100, 200])
          expect(yield* outbox.sink.keys).toEqual({ a: "1" })
          expect(yield* Clock.currentTimeMillis).toBe(t0 + 1_000)
        }).pipe(Effect.provide(kit({ handlers: retriesInside(attempts) }))))

      it.effect("an advance that ends while a handler still sleeps returns at once, the event in flight; the next one finishes it", () =>
        Effect.gen(function*() {
          const outbox = yield* OutboxTest
          yield* Ref.set(attempts, [])
          yield* enqueue(SetValue, { payload: { key: "a", value: "1" } })
          const started = Date.now()
          const early = yield* outbox.advance("150 millis")
          expect(Date.now() - started).toBeLessThan(1_000) // not a DrainTimeout's wait
          expect(early.applied).toEqual([])
          expect(early.pending).toBe(1)
          expect(yield* Ref.get(attempts)).toHaveLength(2)
          expect((yield* outbox.advance("100 millis")).applied).toHaveLength(1)
        }).pipe(Effect.provide(kit({ handlers: retriesInside(attempts) }))))

      it.effect("a handler's tracked promise that takes real time holds time still: a long advance does not time it out", () =>
        Effect.gen(function*() {
          const outbox = yield* OutboxTest
          yield* enqueue(SetValue, { payload: { key: "slow", value: "1" } })
          const report = yield* outbox.advance("1 minute")
          expect(report.failed).toEqual([])
          expect(report.applied).toHaveLength(1)
        }).pipe(Effect.provide(kit({
          handlers: Handlers.layer(handle(SetValue, ({ payload }) =>
            Effect.zipRight(
              InFlight.tryPromise({ try: () => new Promise<void>((resolve) => setTimeout(resolve, 200)), catch: () => new Rejected({ message: "?" }) }),
              Effect.flatMap(RedisSink, (r) => r.use((c) => c.set(payload.key, payload.value)))
            ))),
          config: { callTimeout: Duration.seconds(10), leaseDuration: Duration.seconds(30) }
        }))))

      it.effect("a handler between two tracked calls that take real time (a short await of its own between them) is not timed out by a long advance", () =>
        Effect.gen(function*() {
          const outbox = yield* OutboxTest
          yield* enqueue(SetValue, { payload: { key: "slow", value: "1" } })
          const report = yield* outbox.advance("1 minute")
          expect(report.failed).toEqual([])
          expect(report.applied).toHaveLength(1)
        }).pipe(Effect.provide(kit({
          handlers: Handlers.layer(handle(SetValue, ({ payload }) => {
            const call = InFlight.tryPromise({ try: () => new Promise<void>((resolve) => setTimeout(resolve, 100)), catch: () => new Rejected({ message: "?" }) })
            // 15 ms of its own: well within the 50 ms the worker must stay still before time moves.
            const own = Effect.promise(() => new Promise<void>((resolve) => setTimeout(resolve, 15)))
            return call.pipe(Effect.zipRight(own), Effect.zipRight(call), Effect.zipRight(Effect.flatMap(RedisSink, (r) => r.use((c) => c.set(payload.key, payload.value)))))
          })),
          config: { callTimeout: Duration.seconds(10), leaseDuration: Duration.seconds(30) }
        }))))

      it.effect("what a handler's own untracked promise comes to after an advance returned is in the next drain's report", () =>
        Effect.gen(function*() {
          const outbox = yield* OutboxTest
          const ok = yield* enqueue(SetValue, { payload: { key: "ok", value: "1" } })
          const refused = yield* enqueue(SetValue, { payload: { key: "refused", value: "1" } })
          // The worker looks still after 50 ms of real time: the advance returns, both in flight.
          const during = yield* outbox.advance("1 second")
          yield* Effect.promise(() => new Promise<void>((resolve) => setTimeout(resolve, 500)))
          const next = yield* outbox.drain
          expect([...during.applied, ...next.applied].map((e) => e.id)).toEqual([ok])
          expect([...during.failed, ...next.failed].map((f) => [f.event.id, f.attempt, f.errorTag])).toEqual([[refused, 1, "Rejected"]])
        }).pipe(Effect.provide(kit({
          handlers: Handlers.layer(handle(SetValue, ({ payload }) =>
            Effect.gen(function*() {
              yield* Effect.promise(() => new Promise<void>((resolve) => setTimeout(resolve, 300)))
              if (payload.key === "refused") return yield* new Rejected({ message: "no" })
              yield* Effect.flatMap(RedisSink, (r) => r.use((c) => c.set(payload.key, payload.value)))
            })))
        }))))

      it.effect("a hung handler under advance: nothing until callTimeout, then its HandlerTimeout, without waiting in real time", () =>
        Effect.gen(function*() {
          const outbox = yield* OutboxTest
          const id = yield* enqueue(Hangs, { payload: "x" })
          const started = Date.now()
          expect((yield* outbox.advance("1 second")).failed).toEqual([])
          const report = yield* outbox.advance("1 second")
          expect(report.failed.map((f) => [f.event.id, f.errorTag])).toEqual([[id, "HandlerTimeout"]])
          expect(Date.now() - started).toBeLessThan(1_500) // drainTimeout is 2 s
        }).pipe(Effect.provide(kit(hung))))
    })
  }
})

describe("sync-outbox/testing: calls left running", () => {
  it.effect("a tracked call an earlier kit left running (it never settles) does not hold the next kit's time still", () =>
    Effect.gen(function*() {
      // A handler whose Redis stub hangs for good: no time moves while its call runs, so a DrainTimeout.
      yield* Effect.gen(function*() {
        const outbox = yield* OutboxTest
        yield* enqueue(SetValue, { payload: { key: "a", value: "1" } })
        expect((yield* outbox.advance("1 second").pipe(Effect.flip))._tag).toBe("DrainTimeout")
      }).pipe(Effect.provide(OutboxTest.layerMemory({
        handlers: Handlers.layer(handle(SetValue, () => Effect.flatMap(RedisSink, (r) => r.use(() => new Promise<never>(() => {}))))),
        drainTimeout: Duration.millis(300)
      })))
      expect(InFlight.runningCalls()).toBeGreaterThan(0) // that promise is still pending
      // The next test's handler sleeps: its advance moves time as ever.
      yield* Effect.gen(function*() {
        const outbox = yield* OutboxTest
        yield* enqueue(SetValue, { payload: { key: "b", value: "2" } })
        expect((yield* outbox.advance("1 second")).applied).toHaveLength(1)
        expect(yield* outbox.sink.keys).toEqual({ b: "2" })
      }).pipe(Effect.provide(OutboxTest.layerMemory({
        handlers: Handlers.layer(handle(SetValue, ({ payload }) =>
          Effect.zipRight(Effect.sleep("100 millis"), Effect.flatMap(RedisSink, (r) => r.use((c) => c.set(payload.key, payload.value)))))),
        drainTimeout: Duration.seconds(2)
      })))
    }))
})

describe("sync-outbox/testing: reports", () => {
  it.effect("a requeued dead letter that fails again is reported with its new failure", () =>
    Effect.gen(function*() {
      const outbox = yield* OutboxTest
      const id = yield* enqueue(Counted, { payload: "x" })
      yield* outbox.drain
      expect((yield* outbox.advance("10 seconds")).dead.map((f) => f.message)).toEqual(["call 2"])
      expect(yield* Effect.flatMap(Store, (s) => s.requeue({ _tag: "One", id }))).toBe(1)
      const again = yield* outbox.drain
      expect(again.failed.map((f) => [f.attempt, f.message])).toEqual([[1, "call 3"]])
      // The history keeps the whole story: attempt numbers go on growing across the requeue.
      const shown = yield* Effect.flatMap(Store, (s) => s.show(id))
      expect(shown.failures.map((f) => [f.attempt, f.message])).toEqual([[1, "call 1"], [2, "call 2"], [3, "call 3"]])
    }).pipe(Effect.provide(outboxTest({
      handlers: Layer.unwrapEffect(Effect.map(Ref.make(0), (calls) =>
        Handlers.layer(handle(Counted, () =>
          Effect.flatMap(Ref.updateAndGet(calls, (n) => n + 1), (n) => new Rejected({ message: `call ${n}` })))))),
      config: { maxRetries: 2, backoffBase: Duration.seconds(1) }
    }))))
})

describe("sync-outbox/testing: superseded is what the worker collapsed", () => {
  // Each sync of a resource enqueues the next one (a poll until ready): every one is applied by
  // its own handler, none collapsed, though each is an older coalescing event of the key.
  const Resync = OutboxEvent.make({ resourceType: "resync", action: "sync", payload: Schema.Number, coalesce: true, requiresResourceId: true })
  const spec = Effect.gen(function*() {
    const outbox = yield* OutboxTest
    const before = (yield* Metric.value(Metrics.superseded)).count
    yield* enqueue(Resync, { resourceId: 1, payload: 1 })
    const report = yield* outbox.drain
    expect(yield* outbox.sink.keys).toEqual({ synced: ["1", "2", "3"] })
    expect(report.applied.map((e) => e.payload)).toEqual([1, 2, 3])
    expect(report.superseded).toEqual([])
    expect((yield* Metric.value(Metrics.superseded)).count - before).toBe(0)
  })
  const options = {
    handlers: Handlers.layer(handle(Resync, ({ payload }) =>
      Effect.zipRight(
        Effect.flatMap(RedisSink, (r) => r.use((c) => c.rpush("synced", String(payload)))),
        payload < 3 ? Effect.asVoid(enqueue(Resync, { resourceId: 1, payload: payload + 1 })) : Effect.void
      )))
  }
  it.effect("a coalescing event whose handler enqueues the next one of its key is reported applied, not superseded; in memory", () =>
    spec.pipe(Effect.provide(OutboxTest.layerMemory(options))))
  it.effect("the same on PGlite", () => spec.pipe(Effect.provide(outboxTest(options))))
})

describe("sync-outbox/testing: a worker that dies holding events", () => {
  // The claim that finds its lease run out counts that run as a failed attempt (LeaseExpired);
  // the worker then applies the event at once, in the same step.
  const spec = Effect.gen(function*() {
    const outbox = yield* OutboxTest
    const applies = yield* enqueue(SetValue, { payload: { key: "a", value: "1" } })
    const fails = yield* enqueue(SetValue, { payload: { key: "b", value: "refused" } })
    yield* Effect.flatMap(Store, (s) => s.claim("a-worker-that-dies", 30_000, 10))
    const report = yield* outbox.advance("30 seconds")
    const lost = `worker a-worker-that-dies ${"held this event until its lease ran out without recording an outcome (it stopped, crashed or lost Postgres while applying it)"}`
    expect(report.applied.map((e) => e.id)).toEqual([applies])
    expect(report.failed.map((f) => [f.event.id, f.attempt, f.errorTag, f.message, f.dead])).toEqual([
      [applies, 1, "LeaseExpired", lost, false],
      [fails, 1, "LeaseExpired", lost, false],
      [fails, 2, "Rejected", "no", false]
    ])
    // Each as its history has it.
    expect((yield* outbox.show(fails)).failures.map((f) => [f.attempt, f.errorTag])).toEqual([[1, "LeaseExpired"], [2, "Rejected"]])
  })
  const options = {
    config: { maxRetries: 5 },
    handlers: Handlers.layer(handle(SetValue, ({ payload }) =>
      Effect.gen(function*() {
        if (payload.value === "refused") return yield* new Rejected({ message: "no" })
        yield* Effect.flatMap(RedisSink, (r) => r.use((c) => c.set(payload.key, payload.value)))
      })))
  }
  it.effect("the report names the attempt its lost lease cost each event, applied or failed again since; in memory", () =>
    spec.pipe(Effect.provide(OutboxTest.layerMemory(options))))
  it.effect("the same on PGlite", () => spec.pipe(Effect.provide(outboxTest(options))))
})

describe("sync-outbox/testing: bad input", () => {
  it.effect("advance by infinity, a negative amount or NaN is a typed InvalidAdvance, and the clock has not moved", () =>
    Effect.gen(function*() {
      const outbox = yield* OutboxTest
      const before = yield* TestClock.currentTimeMillis
      for (const amount of [Duration.infinity, -5_000, NaN, "-5 seconds", "soon"] as const) {
        const error = yield* outbox.advance(amount as Duration.DurationInput).pipe(Effect.flip)
        expect(error._tag, String(amount)).toBe("InvalidAdvance")
      }
      expect(yield* TestClock.currentTimeMillis).toBe(before)
    }).pipe(Effect.provide(outboxTest({ handlers: Handlers.layer(setValue) }))))

  it.effect("an invalid configuration fails the layer with InvalidConfig, as in production", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(Layer.build(outboxTest({ handlers: Handlers.layer(setValue), config: { maxRetries: 0 } })))
      expect(error._tag).toBe("InvalidConfig")
    }).pipe(Effect.scoped))
})

describe("sync-outbox/testing: a short drainTimeout", () => {
  it.effect("bounds the test's drains, not the worker's first look as the kit starts (a slow start is no DrainTimeout)", () =>
    Effect.gen(function*() {
      const outbox = yield* OutboxTest
      // The event written as the kit started was applied by the worker's first look, which took
      // longer than the drainTimeout (its handler takes 300 ms of real time).
      expect((yield* outbox.drain).pending).toBe(0)
      expect(yield* outbox.sink.keys).toEqual({ early: "1" })
      // The test's own drains are bounded by it, as before.
      yield* enqueue(Hangs, { payload: "x" })
      expect((yield* outbox.drain.pipe(Effect.flip))._tag).toBe("DrainTimeout")
    }).pipe(Effect.provide(OutboxTest.layerMemory({
      handlers: Layer.merge(
        Handlers.layer(
          handle(SetValue, ({ payload }) =>
            InFlight.tryPromise({ try: () => new Promise<void>((resolve) => setTimeout(resolve, 300)), catch: () => new Rejected({ message: "?" }) }).pipe(
              Effect.zipRight(Effect.flatMap(RedisSink, (r) => r.use((c) => c.set(payload.key, payload.value))))
            )),
          handle(Hangs, () => Effect.never)
        ),
        Layer.effectDiscard(enqueue(SetValue, { payload: { key: "early", value: "1" } }))
      ),
      drainTimeout: Duration.millis(100)
    }))))
})

describe("sync-outbox/testing without PGlite installed", () => {
  it.effect("fails with PgliteMissing, which says what to install", () =>
    Effect.gen(function*() {
      const missing = Object.assign(new Error("Cannot find package '@electric-sql/pglite'"), { code: "ERR_MODULE_NOT_FOUND" })
      const error = yield* PgliteClient.createWith(() => Promise.reject(missing)).pipe(Effect.flip)
      expect(error._tag).toBe("PgliteMissing")
      expect(error.message).toContain("npm install -D @electric-sql/pglite")
      const broken = yield* PgliteClient.createWith(() => Promise.reject(new Error("wasm exploded"))).pipe(Effect.flip)
      expect(broken._tag).toBe("SqlError")
    }))
})
