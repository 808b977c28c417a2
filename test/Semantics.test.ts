/**
 * The engine's semantics (ordering, coalescing, leases, retries, timeouts, dead letters, the breaker),
 * written once and run against three layers: the real store (a real Postgres and a real Redis,
 * the sink cut through a TCP proxy) and the two test kits users get from `sync-outbox/testing`
 * (the library's SQL on PGlite; the in-memory outbox), both with the in-memory Redis. All run the
 * same worker under TestClock, driven by the same `drain` / `advance`: what differs is only what
 * a kit replaces, which is what must agree. No spec runs SQL of its own: the in-memory kit has none.
 */
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Clock, Context, Data, Duration, Effect, Layer, Metric, Redacted, Ref, Schema, TestClock } from "effect"
import { beforeAll } from "vitest"
import { enqueue, enqueueMany, event, handle, Handlers, LeaseExpired, Metrics, OutboxEvent, RedisSink, Store, type OutboxConfigShape } from "../src/index.js"
import { layer as testKit, layerMemory, layerWith, OutboxTest, SinkControl } from "../src/testing/index.js"
import { eventually, freshDatabase, prefix, redisUrl, sqlLayer } from "./support/harness.js"
import { startProxy } from "./support/proxy.js"

let url: string
beforeAll(async () => {
  url = await freshDatabase("semantics")
})

class Refused extends Data.TaggedError("Refused")<{ readonly message: string }> {}

/** Whether a spec's handler is broken right now (the spec fixes it). */
class Broken extends Context.Tag("Broken")<Broken, Ref.Ref<boolean>>() {}

type Kit = <E, R>(options: {
  readonly handlers: Layer.Layer<Handlers, E, R>
  readonly config?: Partial<OutboxConfigShape>
  readonly drainTimeout?: Duration.DurationInput
}) => Layer.Layer<OutboxTest | Store | SqlClient.SqlClient | RedisSink, unknown>

/** A real Redis behind a proxy the test can cut, as the sink's outage. */
const realSink = Layer.unwrapScoped(Effect.gen(function*() {
  const proxy = yield* Effect.acquireRelease(
    Effect.promise(() => startProxy(Number(new URL(redisUrl()).port))),
    (p) => Effect.promise(p.close)
  )
  const redis = RedisSink.layer({ url: Redacted.make(proxy.url("redis")), commandTimeout: Duration.seconds(1) })
  const control = Layer.effect(SinkControl, Effect.map(RedisSink, (sink) => ({
    // Real time: the client must have seen the connection go (or come back) before the test
    // moves its clock, or the breaker's probe would race the reconnect.
    unavailable: Effect.zipRight(
      Effect.promise(proxy.cut),
      Effect.orDie(eventually(Effect.sync(() => sink.client.status), (s) => s !== "ready"))
    ),
    available: Effect.zipRight(
      Effect.promise(proxy.restore),
      Effect.orDie(eventually(Effect.sync(() => sink.client.status), (s) => s === "ready"))
    )
  })))
  return Layer.provideMerge(control, redis)
}))

// Each test starts from an empty outbox, before its worker starts.
const emptied = Layer.effectDiscard(
  Effect.flatMap(SqlClient.SqlClient, (sql) => sql`TRUNCATE sync_outbox, sync_outbox_workers RESTART IDENTITY CASCADE`)
)

const real: Kit = (options) =>
  layerWith(options).pipe(
    Layer.provideMerge(emptied.pipe(Layer.provideMerge(Layer.mergeAll(sqlLayer(url), realSink)))),
    Layer.orDie
  ) as never

const kit: Kit = (options) => testKit(options).pipe(Layer.orDie) as never

const memory: Kit = (options) => layerMemory(options).pipe(Layer.orDie) as never

const get = (key: string) => Effect.flatMap(RedisSink, (r) => r.use((c) => c.get(key)))
const list = (key: string) => Effect.flatMap(RedisSink, (r) => r.use((c) => c.lrange(key, 0, -1)))

describe.each([
  ["the real store (Postgres, Redis)", real],
  ["the test kit (PGlite, in-memory Redis)", kit],
  ["the in-memory test kit (in-memory outbox and Redis)", memory]
] as const)("engine semantics on %s", (_, layer) => {
  it.effect("ordering: one key's events apply one at a time, in order; a failure holds the ones behind it", () => {
    const p = prefix()
    const Append = OutboxEvent.make({
      resourceType: "ledger",
      action: "append",
      payload: Schema.Struct({ key: Schema.String, entry: Schema.String }),
      orderingKey: ({ payload }) => `ledger:${payload.key}`
    })
    return Effect.gen(function*() {
      const outbox = yield* OutboxTest
      const ids = yield* enqueueMany([
        event(Append, { payload: { key: "a", entry: "1" } }),
        event(Append, { payload: { key: "a", entry: "2" } }),
        event(Append, { payload: { key: "a", entry: "3" } }),
        event(Append, { payload: { key: "b", entry: "x" } })
      ])
      const first = yield* outbox.drain
      // a:1 and b:x apply; a:2 fails once; a:3 waits behind it without an attempt.
      expect(first.applied.map((e) => e.id).sort()).toEqual([ids[0], ids[3]].sort())
      expect(first.failed.map((f) => [f.event.id, f.attempt, f.errorTag])).toEqual([[ids[1], 1, "Refused"]])
      expect((yield* outbox.show(ids[2]!)).event.retryCount).toBe(0)
      const second = yield* outbox.advance("1 second")
      expect(second.applied.map((e) => e.id)).toEqual([ids[1], ids[2]])
      expect(yield* list(`${p}a`)).toEqual(["1", "2", "3"])
      expect(yield* list(`${p}b`)).toEqual(["x"])
    }).pipe(Effect.provide(layer({
      handlers: Layer.unwrapEffect(Effect.map(Ref.make(new Set<string>()), (failed) =>
        Handlers.layer(handle(Append, ({ id, payload }) =>
          Effect.gen(function*() {
            if (payload.entry === "2" && !(yield* Ref.modify(failed, (s) => [s.has(id), new Set([...s, id])]))) {
              return yield* new Refused({ message: "not yet" })
            }
            yield* Effect.flatMap(RedisSink, (r) => r.use((c) => c.rpush(`${p}${payload.key}`, payload.entry)))
          }))))),
      config: { backoffBase: Duration.seconds(1) }
    })))
  })

  it.effect("a failure whose message holds a NUL byte (Postgres stores none in text) is recorded with it escaped, not lost to a lease expiry", () => {
    const Quotes = OutboxEvent.make({ resourceType: "quotes", action: "apply", payload: Schema.String })
    return Effect.gen(function*() {
      const outbox = yield* OutboxTest
      const id = yield* enqueue(Quotes, { payload: "x" })
      const report = yield* outbox.drain
      expect(report.failed.map((f) => [f.event.id, f.attempt, f.errorTag, f.message])).toEqual([[id, 1, "Refused", "bad byte \\u0000 in reply"]])
      const { event: row, failures } = yield* outbox.show(id)
      expect(row.lastError).toBe("Refused: bad byte \\u0000 in reply")
      expect(failures.map((f) => [f.attempt, f.errorTag, f.message])).toEqual([[1, "Refused", "bad byte \\u0000 in reply"]])
    }).pipe(Effect.provide(layer({
      handlers: Handlers.layer(handle(Quotes, () => Effect.fail(new Refused({ message: "bad byte \u0000 in reply" }))))
    })))
  })

  it.effect("coalescing: ten pending edits of one resource are one apply of the newest, nine superseded", () => {
    const p = prefix()
    const Sync = OutboxEvent.make({ resourceType: "profile", action: "sync", payload: Schema.Number, coalesce: true, requiresResourceId: true })
    return Effect.gen(function*() {
      const outbox = yield* OutboxTest
      yield* enqueueMany(Array.from({ length: 10 }, (_, i) => event(Sync, { resourceId: 1, payload: i })))
      yield* enqueue(Sync, { resourceId: 2, payload: 100 })
      const report = yield* outbox.drain
      expect(report.applied.map((e) => e.payload).sort()).toEqual([100, 9])
      expect(report.superseded.map((e) => e.payload)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8])
      expect(yield* get(`${p}1`)).toBe("9")
      expect(yield* get(`${p}2`)).toBe("100")
      expect(report.pending).toBe(0)
    }).pipe(Effect.provide(layer({
      handlers: Handlers.layer(handle(Sync, ({ payload, resourceId }) =>
        Effect.flatMap(RedisSink, (r) => r.use((c) => c.set(`${p}${resourceId}`, String(payload))))))
    })))
  })

  it.effect("both kinds on one key: a coalescing event covers only the coalescing ones back to the last non-coalescing one, which applies itself, in its turn", () => {
    const p = prefix()
    const Publish = OutboxEvent.make({ resourceType: "doc", action: "publish", payload: Schema.String, orderingKey: ({ resourceId }) => `doc:${resourceId}` })
    const Sync = OutboxEvent.make({ resourceType: "doc", action: "sync", payload: Schema.String, coalesce: true, orderingKey: ({ resourceId }) => `doc:${resourceId}` })
    return Effect.gen(function*() {
      const outbox = yield* OutboxTest
      const [s1, s2, p3, s4, s5] = yield* enqueueMany([
        event(Sync, { resourceId: 1, payload: "s1" }),
        event(Sync, { resourceId: 1, payload: "s2" }),
        event(Publish, { resourceId: 1, payload: "p3" }),
        event(Sync, { resourceId: 1, payload: "s4" }),
        event(Sync, { resourceId: 1, payload: "s5" })
      ])
      const report = yield* outbox.drain
      expect(yield* list(`${p}doc`)).toEqual(["s2", "p3", "s5"])
      expect(report.applied.map((e) => e.id)).toEqual([s2, p3, s5])
      expect(report.superseded.map((e) => e.id)).toEqual([s1, s4])
      expect(report.pending).toBe(0)
    }).pipe(Effect.provide(layer({
      handlers: Handlers.layer(
        handle(Publish, ({ payload }) => Effect.flatMap(RedisSink, (r) => r.use((c) => c.rpush(`${p}doc`, payload)))),
        handle(Sync, ({ payload }) => Effect.flatMap(RedisSink, (r) => r.use((c) => c.rpush(`${p}doc`, payload))))
      )
    })))
  })

  it.effect("retries: each attempt at its jittered, capped, doubling due time and not a millisecond before; then dead, with its history", () => {
    const Flaky = OutboxEvent.make({ resourceType: "flaky", action: "apply", payload: Schema.String })
    return Effect.gen(function*() {
      const outbox = yield* OutboxTest
      const id = yield* enqueue(Flaky, { payload: "x" })
      const times: Array<number> = []
      let report = yield* outbox.drain
      for (let attempt = 1; attempt <= 4; attempt++) {
        expect(report.failed.map((f) => [f.event.id, f.attempt, f.errorTag, f.message])).toEqual([[id, attempt, "Refused", `attempt ${attempt}`]])
        times.push(report.at.getTime())
        if (attempt === 4) break
        const due = report.failed[0]!.nextRetryAt!.getTime() - report.at.getTime()
        // base 1 s doubling, capped at 3 s, in the upper half: [ceiling / 2, ceiling].
        const ceiling = Math.min(1_000 * 2 ** (attempt - 1), 3_000)
        expect(due).toBeGreaterThanOrEqual(ceiling / 2)
        expect(due).toBeLessThanOrEqual(ceiling)
        expect((yield* outbox.advance(Duration.millis(due - 1))).failed).toEqual([])
        report = yield* outbox.advance(Duration.millis(1))
      }
      expect(report.dead.map((f) => f.event.id)).toEqual([id])
      const [dead] = yield* outbox.dead
      expect(dead!.event.lastError).toBe("Refused: attempt 4")
      expect(dead!.failures.map((f) => [f.attempt, f.failedAt.getTime()])).toEqual(times.map((t, i) => [i + 1, t]))
      // Nothing more happens to a dead letter, however long we wait.
      expect((yield* outbox.advance("1 hour")).failed).toEqual([])
    }).pipe(Effect.provide(layer({
      handlers: Handlers.layer(handle(Flaky, ({ attempt }) => new Refused({ message: `attempt ${attempt}` }))),
      config: { maxRetries: 4, backoffBase: Duration.seconds(1), backoffCap: Duration.seconds(3) }
    })))
  })

  it.effect("dead letters: an undecodable payload is dead at once; a requeued dead letter gets a fresh budget and applies, its history kept", () => {
    const p = prefix()
    const Named = OutboxEvent.make({ resourceType: "named", action: "set", payload: Schema.Struct({ name: Schema.String }) })
    // The same event as an older producer wrote it: a payload today's handler cannot decode.
    const NamedBefore = OutboxEvent.make({ resourceType: "named", action: "set", payload: Schema.Struct({ name: Schema.Number }) })
    return Effect.gen(function*() {
      const outbox = yield* OutboxTest
      const store = yield* Store
      const broken = yield* Broken
      const old = yield* enqueue(NamedBefore, { payload: { name: 1 } })
      const report = yield* outbox.drain
      expect(report.dead.map((f) => [f.event.id, f.attempt, f.errorTag])).toEqual([[old, 1, "MalformedPayload"]])
      const good = yield* enqueue(Named, { payload: { name: "ok" } })
      expect((yield* outbox.drain).applied.map((e) => e.id)).toEqual([good])
      // Out of attempts while its handler was broken (maxRetries 2); fixed, requeued: applied.
      yield* Ref.set(broken, true)
      const later = yield* enqueue(Named, { payload: { name: "fixed" } })
      yield* outbox.drain
      expect((yield* outbox.advance("10 seconds")).dead.map((f) => [f.event.id, f.attempt])).toEqual([[later, 2]])
      expect((yield* outbox.dead).map((i) => i.event.id)).toEqual([old, later])
      yield* Ref.set(broken, false)
      expect(yield* store.requeue({ _tag: "One", id: later })).toBe(1)
      const [requeued] = yield* outbox.pending
      expect([requeued!.event.id, requeued!.event.retryCount, requeued!.failures.map((f) => f.errorTag)]).toEqual([later, 0, ["Refused", "Refused"]])
      expect((yield* outbox.drain).applied.map((e) => e.id)).toEqual([later])
      expect(yield* get(`${p}fixed`)).toBe("1")
      // Requeued as it is, the undecodable one is dead again at once; its history numbers on.
      expect(yield* store.requeue({ _tag: "One", id: old })).toBe(1)
      expect((yield* outbox.drain).dead.map((f) => [f.event.id, f.attempt])).toEqual([[old, 1]])
      expect((yield* store.show(old)).failures.map((f) => [f.attempt, f.errorTag])).toEqual([[1, "MalformedPayload"], [2, "MalformedPayload"]])
      expect((yield* outbox.dead).map((i) => i.event.id)).toEqual([old])
    }).pipe(
      Effect.provide(layer({
        handlers: Layer.unwrapEffect(Effect.map(Broken, (broken) =>
          Handlers.layer(handle(Named, ({ payload }) =>
            Effect.gen(function*() {
              if (yield* Ref.get(broken)) return yield* new Refused({ message: "broken" })
              yield* Effect.flatMap(RedisSink, (r) => r.use((c) => c.set(`${p}${payload.name}`, "1")))
            }))))),
        config: { maxRetries: 2 }
      })),
      Effect.provide(Layer.effect(Broken, Ref.make(false)))
    )
  })

  it.effect("leases: an event held by a worker that died is applied once its lease expires, not before", () => {
    const p = prefix()
    const KvSet = OutboxEvent.make({ resourceType: "kv", action: "set", payload: Schema.String })
    return Effect.gen(function*() {
      const outbox = yield* OutboxTest
      const store = yield* Store
      const id = yield* enqueue(KvSet, { payload: "v" })
      expect((yield* store.claim("a-worker-that-dies", 30_000, 10)).map((e) => e.id)).toEqual([id])
      expect((yield* outbox.drain).applied).toEqual([])
      expect((yield* outbox.advance("29999 millis")).applied).toEqual([])
      expect((yield* outbox.advance("1 millis")).applied.map((e) => e.id)).toEqual([id])
      expect(yield* get(`${p}kv`)).toBe("v")
    }).pipe(Effect.provide(layer({
      handlers: Handlers.layer(handle(KvSet, ({ payload }) => Effect.flatMap(RedisSink, (r) => r.use((c) => c.set(`${p}kv`, payload)))))
    })))
  })

  it.effect("leases: each worker that dies holding an event costs it an attempt (LeaseExpired, naming the worker); out of attempts it is a dead letter, its handler never run again", () => {
    const Poison = OutboxEvent.make({ resourceType: "poison", action: "apply", payload: Schema.String })
    let runs = 0
    return Effect.gen(function*() {
      const outbox = yield* OutboxTest
      const store = yield* Store
      const id = yield* enqueue(Poison, { payload: "ends the process" })
      // Two workers take it in turn and die with it, as a handler that calls process.exit makes them.
      const first = yield* store.claim("dies-first", 1_000, 10)
      expect(first.map((e) => [e.id, e.retryCount, e.abandonedBy])).toEqual([[id, 0, null]])
      yield* TestClock.adjust("1 second")
      const second = yield* store.claim("dies-second", 1_000, 10)
      expect(second.map((e) => [e.id, e.retryCount, e.abandonedBy])).toEqual([[id, 1, "dies-first"]])
      yield* TestClock.adjust("1 second")
      // The worker finds the second lease run out too: that was the last of its two attempts.
      const lost = Effect.map(Metric.value(Metrics.leasesLost), (v) => v.count)
      const lostBefore = yield* lost
      const report = yield* outbox.drain
      expect((yield* lost) - lostBefore).toBe(1)
      expect(report.dead.map((f) => [f.event.id, f.attempt, f.errorTag])).toEqual([[id, 2, "LeaseExpired"]])
      expect(runs).toBe(0)
      const { event: row, failures } = yield* outbox.show(id)
      expect(row.status).toBe("dead")
      expect(row.lastError).toBe(`LeaseExpired: ${new LeaseExpired({ owner: "dies-second" }).message}`)
      expect(failures.map((f) => [f.attempt, f.errorTag, f.message])).toEqual([
        [1, "LeaseExpired", "worker dies-first held this event until its lease ran out without recording an outcome (it stopped, crashed or lost Postgres while applying it)"],
        [2, "LeaseExpired", new LeaseExpired({ owner: "dies-second" }).message]
      ])
    }).pipe(Effect.provide(layer({
      handlers: Handlers.layer(handle(Poison, () => Effect.sync(() => void runs++))),
      // No poll while the test's own "workers" hold it: only the drain makes the worker look.
      config: { maxRetries: 2, interval: Duration.hours(1) }
    })))
  })

  it.effect("leases: an event whose last attempt was lost runs while its worker holds no other event, not even a claim made ahead: if it ends the process, it alone loses an attempt", () => {
    const Touch = OutboxEvent.make({
      resourceType: "touch",
      action: "apply",
      payload: Schema.String,
      orderingKey: ({ payload }) => `touch:${payload}`
    })
    // What each handler run sees leased (live leases only: the dead worker's ran out).
    const heldWhileRunning: Array<ReadonlyArray<string>> = []
    let leased: Effect.Effect<ReadonlyArray<string>> = Effect.succeed([])
    return Effect.gen(function*() {
      const outbox = yield* OutboxTest
      const store = yield* Store
      const ids = yield* enqueueMany(["a", "b", "c", "d"].map((key) => event(Touch, { payload: key })))
      // A worker died holding all four: each is a suspect now.
      yield* store.claim("dies", 1_000, 10)
      yield* TestClock.adjust("1 second")
      leased = Effect.gen(function*() {
        const now = yield* Clock.currentTimeMillis
        const rows = yield* Effect.forEach(ids, (id) => Effect.option(outbox.show(id)))
        return rows.flatMap((row) =>
          row._tag === "Some" && row.value.event.leaseExpiresAt !== null && row.value.event.leaseExpiresAt.getTime() > now
            ? [row.value.event.id]
            : []
        )
      }).pipe(Effect.orDie)
      const report = yield* outbox.drain
      expect(report.applied.map((e) => e.id).sort()).toEqual([...ids].sort())
      expect(heldWhileRunning).toEqual(ids.map((id) => [id]))
    }).pipe(Effect.provide(layer({
      // Full batches of two, so the worker would claim the next batch ahead (its lease leaves room).
      handlers: Handlers.layer(handle(Touch, () =>
        Effect.promise(() => new Promise((resolve) => setTimeout(resolve, 20))).pipe(
          Effect.zipRight(leased),
          Effect.map((held) => void heldWhileRunning.push(held))
        ))),
      config: { batchSize: 2, interval: Duration.hours(1) }
    })))
  })

  it.effect("leases: a whole batch left by a worker that died runs one event at a time, each handed back once at most, not claimed and handed back again for every event before it", () => {
    const Touch = OutboxEvent.make({
      resourceType: "touch",
      action: "apply",
      payload: Schema.String,
      orderingKey: ({ payload }) => `touch:${payload}`
    })
    const released = Effect.map(Metric.value(Metrics.released), (v) => v.count)
    return Effect.gen(function*() {
      const outbox = yield* OutboxTest
      const store = yield* Store
      const keys = ["a", "b", "c", "d", "e", "f", "g", "h"]
      const ids = yield* enqueueMany(keys.map((key) => event(Touch, { payload: key })))
      yield* store.claim("dies", 1_000, 10)
      yield* TestClock.adjust("1 second")
      const before = yield* released
      const report = yield* outbox.drain
      expect(report.applied.map((e) => e.id).sort()).toEqual([...ids].sort())
      // The first claim takes all eight: one runs, seven go back; then one claim each. (Claimed
      // whole again each time, the batch was handed back 7 + 6 + ... + 1 = 28 times: a thousand
      // such events cost half a million row updates, and stalled the outbox behind them.)
      expect((yield* released) - before).toBe(keys.length - 1)
      for (const id of ids) expect((yield* outbox.show(id).pipe(Effect.option))._tag).toBe("None")
    }).pipe(Effect.provide(layer({
      handlers: Handlers.layer(handle(Touch, () => Effect.void)),
      config: { batchSize: 8, interval: Duration.hours(1) }
    })))
  })

  it.effect("leases: at MAX_RETRIES=1 one worker killed with a batch parks none of it: each event runs alone once; one whose lone run was lost too is parked", () => {
    const Note = OutboxEvent.make({ resourceType: "note", action: "set", payload: Schema.String, orderingKey: ({ payload }) => `note:${payload}` })
    const ran: Array<string> = []
    return Effect.gen(function*() {
      const outbox = yield* OutboxTest
      const store = yield* Store
      const ids = yield* enqueueMany(["a", "b", "c"].map((payload) => event(Note, { payload })))
      // A worker killed holding all three: which of them ended it, nobody knows yet.
      expect(yield* store.claim("killed-with-a-batch", 1_000, 10)).toHaveLength(3)
      yield* TestClock.adjust("1 second")
      // The first of them, taken alone, and that worker killed too: that one did it.
      const alone = yield* store.claim("killed-alone", 1_000, 1)
      expect(alone.map((e) => [e.id, e.abandonedBy, e.abandonedAgain])).toEqual([[ids[0], "killed-with-a-batch", false]])
      yield* TestClock.adjust("1 second")
      const report = yield* outbox.drain
      expect(report.dead.map((f) => [f.event.id, f.errorTag])).toEqual([[ids[0], "LeaseExpired"]])
      expect(report.applied.map((e) => e.id).sort()).toEqual([ids[1], ids[2]].sort())
      expect(ran.sort()).toEqual(["b", "c"])
    }).pipe(Effect.provide(layer({
      handlers: Handlers.layer(handle(Note, ({ payload }) => Effect.sync(() => void ran.push(payload)))),
      config: { maxRetries: 1, interval: Duration.hours(1) }
    })))
  })

  it.effect("leases: a coalescing event out of attempts to lost leases is not parked when a newer event of its key, claimed with it, covers it", () => {
    const Sync = OutboxEvent.make({ resourceType: "profile", action: "sync", payload: Schema.Number, coalesce: true, requiresResourceId: true })
    const ran: Array<number> = []
    return Effect.gen(function*() {
      const outbox = yield* OutboxTest
      const store = yield* Store
      const older = yield* enqueue(Sync, { resourceId: 7, payload: 1 })
      // Two workers die with it in turn, the second holding it alone: it has no attempts left.
      yield* store.claim("dies-first", 1_000, 10)
      yield* TestClock.adjust("1 second")
      yield* store.claim("dies-second", 1_000, 10)
      yield* TestClock.adjust("1 second")
      const newer = yield* enqueue(Sync, { resourceId: 7, payload: 2 })
      const report = yield* outbox.drain
      expect(report.dead).toEqual([])
      expect(report.applied.map((e) => e.id)).toEqual([newer])
      expect(report.superseded.map((e) => e.id)).toEqual([older])
      expect(ran).toEqual([2])
    }).pipe(Effect.provide(layer({
      handlers: Handlers.layer(handle(Sync, ({ payload }) => Effect.sync(() => void ran.push(payload)))),
      config: { maxRetries: 2, interval: Duration.hours(1) }
    })))
  })

  it.effect("leases: a lease its own worker takes back when it ran out is not counted: that worker is alive, only its outcome was not written", () => {
    const Note = OutboxEvent.make({ resourceType: "note", action: "set", payload: Schema.String })
    return Effect.gen(function*() {
      const store = yield* Store
      const id = yield* enqueue(Note, { payload: "x" })
      expect(yield* store.claim("alive", 1_000, 10)).toHaveLength(1)
      yield* TestClock.adjust("1 second")
      const again = yield* store.claim("alive", 1_000, 10)
      expect(again.map((e) => [e.id, e.retryCount, e.abandonedBy, e.lastAttemptLost])).toEqual([[id, 0, null, false]])
      expect((yield* store.show(id)).failures).toEqual([])
    }).pipe(Effect.provide(layer({
      handlers: Handlers.layer(handle(Note, () => Effect.void)),
      config: { interval: Duration.hours(1) }
    })))
  })

  it.effect("leases: a lease that ran out after the timeout it held for was recorded is not counted again", () => {
    const Hangs = OutboxEvent.make({ resourceType: "hangs", action: "apply", payload: Schema.String })
    return Effect.gen(function*() {
      const outbox = yield* OutboxTest
      const store = yield* Store
      const id = yield* enqueue(Hangs, { payload: "x" })
      const [claimed] = yield* store.claim("timed-out", 1_000, 10)
      // What a worker records for a call that timed out while still running: the row stays leased to it.
      yield* store.fail("timed-out", [{
        id,
        attempt: claimed!.retryCount + 1,
        tag: "HandlerTimeout",
        message: "still running",
        nextRetryAt: new Date((yield* Clock.currentTimeMillis) + 100),
        dead: false,
        keepLease: true
      }])
      yield* TestClock.adjust("1 second")
      const retaken = yield* store.claim("next", 1_000, 10)
      expect(retaken.map((e) => [e.id, e.retryCount, e.abandonedBy])).toEqual([[id, 1, null]])
      expect((yield* outbox.show(id)).failures.map((f) => f.errorTag)).toEqual(["HandlerTimeout"])
    }).pipe(Effect.provide(layer({
      handlers: Handlers.layer(handle(Hangs, () => Effect.void)),
      config: { interval: Duration.hours(1) }
    })))
  })

  it.effect("timeouts: a handler still running at callTimeout fails with HandlerTimeout; its event stays leased until the lease ends, and is retried no earlier", () => {
    const p = prefix()
    const Hangs = OutboxEvent.make({ resourceType: "hangs", action: "apply", payload: Schema.String })
    return Effect.gen(function*() {
      const outbox = yield* OutboxTest
      const id = yield* enqueue(Hangs, { payload: "x" })
      // The first attempt never finishes: drain says so in real time, the event held by the worker.
      const hung = yield* outbox.drain.pipe(Effect.flip)
      expect(hung._tag === "DrainTimeout" && hung.inFlight).toEqual([id])
      const claimedAt = (yield* outbox.show(id)).event.leaseExpiresAt!.getTime() - 10_000
      const timedOut = yield* outbox.advance("2 seconds")
      expect(timedOut.failed.map((f) => [f.event.id, f.attempt, f.errorTag])).toEqual([[id, 1, "HandlerTimeout"]])
      // Its retry waits for the lease: the call might still be running until then.
      expect(timedOut.failed[0]!.nextRetryAt!.getTime()).toBe(claimedAt + 10_000)
      expect((yield* outbox.show(id)).event.leaseExpiresAt!.getTime()).toBe(claimedAt + 10_000)
      const early = yield* outbox.advance(Duration.millis(claimedAt + 10_000 - 1 - (yield* Clock.currentTimeMillis)))
      expect([early.applied, early.failed]).toEqual([[], []])
      expect((yield* outbox.advance("1 millis")).applied.map((e) => e.id)).toEqual([id])
      expect(yield* get(`${p}hangs`)).toBe("x")
    }).pipe(Effect.provide(layer({
      handlers: Handlers.layer(handle(Hangs, ({ attempt, payload }) =>
        attempt === 1 ? Effect.never : Effect.flatMap(RedisSink, (r) => r.use((c) => c.set(`${p}hangs`, payload))))),
      config: { callTimeout: Duration.seconds(2), leaseDuration: Duration.seconds(10) },
      drainTimeout: Duration.seconds(1)
    })))
  })

  it.effect("the breaker: while Redis is away nothing is attempted, nothing dies; when it is back everything applies", () => {
    const p = prefix()
    const KvSet = OutboxEvent.make({ resourceType: "kv", action: "set", payload: Schema.Number })
    return Effect.gen(function*() {
      const outbox = yield* OutboxTest
      yield* outbox.sink.unavailable
      yield* enqueueMany(Array.from({ length: 20 }, (_, i) => event(KvSet, { resourceId: i + 1, payload: i })))
      const during = yield* outbox.drain
      expect(during.breaker).toBe("open")
      expect(during.failed).toEqual([])
      expect((yield* outbox.advance("500 millis")).failed).toEqual([])
      expect((yield* outbox.pending).every((i) => i.event.retryCount === 0 && i.failures.length === 0)).toBe(true)
      yield* outbox.sink.available
      const after = yield* outbox.advance("100 millis")
      expect(after.breaker).toBe("closed")
      expect(after.applied).toHaveLength(20)
      expect(after.failed).toEqual([])
      expect(yield* get(`${p}19`)).toBe("19")
    }).pipe(Effect.provide(layer({
      handlers: Handlers.layer(handle(KvSet, ({ payload }) => Effect.flatMap(RedisSink, (r) => r.use((c) => c.set(`${p}${payload}`, String(payload))))))
    })))
  }, 30_000)
})

