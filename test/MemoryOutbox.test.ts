/**
 * The in-memory test kit (`OutboxTest.layerMemory`): what is its own. Its engine semantics are
 * held to the real store's and PGlite's by test/Semantics.test.ts; here: the producer's side
 * (transactions, the SQL it refuses, bad input), the journal it does not keep, the operator's
 * queries, and that it never loads PGlite (this file has none: importing it fails).
 */
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Context, Data, Duration, Effect, Exit, Layer, Schema, Scope } from "effect"
import { vi } from "vitest"
import { enqueue, enqueueMany, event, handle, Handlers, OutboxEvent, RedisSink, Store, Worker } from "../src/index.js"
import { layerMemory, MemoryOutbox, OutboxTest, PgliteClient } from "../src/testing/index.js"

vi.mock("@electric-sql/pglite", () => {
  throw new Error("@electric-sql/pglite is not installed (this file hides it)")
})

class Rejected extends Data.TaggedError("Rejected")<{ readonly message: string }> {}

const SetValue = OutboxEvent.make({
  resourceType: "thing",
  action: "set",
  payload: Schema.Struct({ key: Schema.String, value: Schema.String }),
  orderingKey: ({ payload }) => `thing:${payload.key}`
})
const setValue = handle(SetValue, ({ payload }) => Effect.flatMap(RedisSink, (r) => r.use((c) => c.set(payload.key, payload.value))))
const kit = layerMemory({ handlers: Handlers.layer(setValue) })

describe("the in-memory kit without PGlite", () => {
  it.effect("PGlite cannot be loaded in this file, so every spec here ran without it", () =>
    Effect.gen(function*() {
      const error = yield* PgliteClient.create.pipe(Effect.flip)
      expect(error._tag).toBe("SqlError")
      expect(error.message).toBe("PGlite could not be loaded")
    }))
})

describe("the producer's side in memory", () => {
  it.effect("ids are increasing bigint strings from 1, in the order enqueueMany was given", () =>
    Effect.gen(function*() {
      const outbox = yield* OutboxTest
      expect(yield* enqueue(SetValue, { payload: { key: "a", value: "1" } })).toBe("1")
      const ids = yield* enqueueMany([
        event(SetValue, { payload: { key: "b", value: "2" } }),
        event(SetValue, { payload: { key: "c", value: "3" } })
      ])
      expect(ids).toEqual(["2", "3"])
      expect((yield* outbox.pending).map((i) => [i.event.id, i.event.orderingKey])).toEqual([["1", "thing:a"], ["2", "thing:b"], ["3", "thing:c"]])
      expect((yield* outbox.drain).applied.map((e) => e.id)).toEqual(["1", "2", "3"])
      expect(yield* outbox.sink.keys).toEqual({ a: "1", b: "2", c: "3" })
    }).pipe(Effect.provide(kit)))

  it.effect("a rolled-back transaction enqueues nothing (its ids are spent, as a sequence's are); a committed one everything", () =>
    Effect.gen(function*() {
      const outbox = yield* OutboxTest
      const sql = yield* SqlClient.SqlClient
      const aborted = yield* sql.withTransaction(
        Effect.zipRight(
          enqueueMany([event(SetValue, { payload: { key: "a", value: "1" } }), event(SetValue, { payload: { key: "b", value: "1" } })]),
          Effect.fail("abort" as const)
        )
      ).pipe(Effect.flip)
      expect(aborted).toBe("abort")
      expect(yield* outbox.pending).toEqual([])
      expect((yield* outbox.drain).applied).toEqual([])
      const id = yield* sql.withTransaction(enqueue(SetValue, { payload: { key: "c", value: "2" } }))
      expect(id).toBe("3")
      expect((yield* outbox.drain).applied.map((e) => e.id)).toEqual(["3"])
      expect(yield* outbox.sink.keys).toEqual({ c: "2" })
    }).pipe(Effect.provide(kit)))

  it.effect("a failed inner transaction (a savepoint) drops only its own events", () =>
    Effect.gen(function*() {
      const outbox = yield* OutboxTest
      const sql = yield* SqlClient.SqlClient
      yield* sql.withTransaction(Effect.gen(function*() {
        yield* enqueue(SetValue, { payload: { key: "kept", value: "1" } })
        const inner = yield* sql.withTransaction(
          Effect.zipRight(enqueue(SetValue, { payload: { key: "dropped", value: "1" } }), Effect.fail("inner" as const))
        ).pipe(Effect.flip)
        expect(inner).toBe("inner")
        yield* enqueue(SetValue, { payload: { key: "after", value: "1" } })
      }))
      expect((yield* outbox.drain).applied.map((e) => e.payload)).toEqual([{ key: "kept", value: "1" }, { key: "after", value: "1" }])
    }).pipe(Effect.provide(kit)))

  it.effect("an event is the worker's only once its transaction commits", () =>
    Effect.gen(function*() {
      const outbox = yield* OutboxTest
      const sql = yield* SqlClient.SqlClient
      yield* sql.withTransaction(Effect.gen(function*() {
        yield* enqueue(SetValue, { payload: { key: "a", value: "1" } })
        // The worker looks while the transaction is open: nothing to see yet.
        const during = yield* outbox.drain
        expect([during.applied, during.pending]).toEqual([[], 0])
      }))
      expect((yield* outbox.drain).applied.map((e) => e.id)).toEqual(["1"])
    }).pipe(Effect.provide(kit)))

  it.effect("bad input is typed as in production, checked before the store: nothing written, the transaction usable", () =>
    Effect.gen(function*() {
      const outbox = yield* OutboxTest
      const sql = yield* SqlClient.SqlClient
      const id = yield* sql.withTransaction(Effect.gen(function*() {
        const payload = yield* enqueue(SetValue, { payload: { key: "a", value: 1 as unknown as string } }).pipe(Effect.flip)
        expect(payload._tag).toBe("InvalidPayload")
        const resourceId = yield* enqueue(SetValue, { resourceId: 0, payload: { key: "a", value: "1" } }).pipe(Effect.flip)
        expect(resourceId._tag).toBe("InvalidEvent")
        const nul = yield* enqueue(SetValue, { payload: { key: "a", value: "\u0000" } }).pipe(Effect.flip)
        expect(nul._tag).toBe("InvalidPayload")
        return yield* enqueue(SetValue, { payload: { key: "a", value: "ok" } })
      }))
      // No id was taken by the refused ones: they never reached the store.
      expect(id).toBe("1")
      expect((yield* outbox.pending).map((i) => i.event.payload)).toEqual([{ key: "a", value: "ok" }])
    }).pipe(Effect.provide(kit)))
})

describe("SQL the in-memory kit does not run", () => {
  it.effect("a statement of the test's own fails with a SqlError that names it and points to the PGlite kit", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const error = yield* sql`SELECT tier FROM plans WHERE id = ${1}`.pipe(Effect.flip)
      expect(error._tag).toBe("SqlError")
      expect(error.message).toContain("SELECT tier FROM plans WHERE id = $1")
      expect(error.message).toContain("use OutboxTest.layer (PGlite)")
      const raw = yield* sql.unsafe("UPDATE sync_outbox SET payload = NULL").pipe(Effect.flip)
      expect(raw.message).toContain("runs no SQL but the library's own inserts")
    }).pipe(Effect.provide(kit)))

  it.effect("a handler that runs SQL fails its attempt with that SqlError, reported and retried as any failure", () => {
    const Plan = OutboxEvent.make({ resourceType: "plan", action: "sync", payload: Schema.Null, requiresResourceId: true })
    return Effect.gen(function*() {
      const outbox = yield* OutboxTest
      const id = yield* enqueue(Plan, { resourceId: 1, payload: null })
      const report = yield* outbox.drain
      expect(report.failed.map((f) => [f.event.id, f.errorTag])).toEqual([[id, "SqlError"]])
      expect(report.failed[0]!.message).toContain("use OutboxTest.layer (PGlite)")
      expect(report.failed[0]!.nextRetryAt).not.toBeNull()
    }).pipe(Effect.provide(layerMemory({
      handlers: Handlers.layer(handle(Plan, ({ resourceId }) =>
        Effect.flatMap(SqlClient.SqlClient, (sql) => sql`SELECT tier FROM plans WHERE id = ${resourceId}`)))
    })))
  })
})

describe("the journal in memory", () => {
  it.effect("the worker runs with retention 0 (no journal), and says so in its registration", () =>
    Effect.gen(function*() {
      const store = yield* Store
      const [worker] = yield* store.workers(60_000)
      expect(worker!.retention_ms).toBe(0)
      expect(yield* Effect.flatMap(MemoryOutbox.MemoryOutbox, (m) => m.leases.complete(worker!.owner, ["1"], { appliedAt: new Date(0), supersededBy: new Map() })).pipe(
        Effect.flip,
        Effect.map((e) => e.message)
      )).toContain("keeps no journal")
    }).pipe(Effect.provide(kit)))

  it.effect("a retention above 0 fails the layer with InvalidConfig, which says to test journaling on PGlite", () =>
    Effect.gen(function*() {
      const error = yield* Layer.build(layerMemory({ handlers: Handlers.layer(setValue), config: { retention: Duration.days(1) } })).pipe(
        Effect.flip
      )
      expect(error._tag).toBe("InvalidConfig")
      expect(error.message).toContain("OutboxTest.layer")
    }).pipe(Effect.scoped))
})

describe("the operator's queries in memory", () => {
  it.effect("stats; dead letters listed, looked up and purged (history and all); a bad selector typed as in production", () =>
    Effect.gen(function*() {
      const outbox = yield* OutboxTest
      const store = yield* Store
      const Doomed = OutboxEvent.make({ resourceType: "doomed", action: "apply", payload: Schema.String })
      const dead = yield* enqueue(Doomed, { payload: "x" })
      yield* enqueue(SetValue, { payload: { key: "a", value: "1" } })
      yield* outbox.drain
      yield* enqueue(SetValue, { payload: { key: "b", value: "1" } })
      const stats = yield* store.stats
      expect([stats.pending, stats.dead, stats.inFlight, stats.scheduled]).toEqual([1, 1, 0, 0])
      expect(stats.byResourceType.map((t) => [t.resourceType, t.pending, t.dead])).toEqual([["doomed", 0, 1], ["thing", 1, 0]])
      expect((yield* store.listDead({ resourceType: "doomed" })).map((e) => [e.id, e.lastError])).toEqual([[dead, "Rejected: never"]])
      expect((yield* store.listDead({ limit: -1 }).pipe(Effect.flip))._tag).toBe("SqlError")
      expect((yield* store.show("abc").pipe(Effect.flip))._tag).toBe("EventNotFound")
      expect((yield* store.requeue({ _tag: "One", id: "99" }).pipe(Effect.flip))._tag).toBe("EventNotFound")
      expect(yield* store.purge({ _tag: "ResourceType", resourceType: "doomed" })).toBe(1)
      expect((yield* store.show(dead).pipe(Effect.flip))._tag).toBe("EventNotFound")
      expect(yield* outbox.dead).toEqual([])
    }).pipe(Effect.provide(layerMemory({
      handlers: Handlers.layer(
        setValue,
        handle(OutboxEvent.make({ resourceType: "doomed", action: "apply", payload: Schema.String }), () =>
          Effect.fail(new Rejected({ message: "never" })))
      ),
      config: { maxRetries: 1 }
    }))))

  it.effect("the worker registers while it runs (heartbeat) and is gone once it stops (unregister)", () =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      const context = yield* Layer.buildWithScope(kit, scope)
      const memory = Context.get(context, MemoryOutbox.MemoryOutbox)
      const owner = Context.get(context, Worker).owner
      expect((yield* memory.admin.workers(60_000)).map((w) => w.owner)).toEqual([owner])
      yield* Scope.close(scope, Exit.void)
      expect(yield* memory.admin.workers(60_000)).toEqual([])
    }))

  it.effect("claims follow the outbox's rules when called directly: a live lease holds its key; complete is fenced on the owner", () =>
    Effect.gen(function*() {
      const memory = yield* MemoryOutbox.make
      const enqueueHere = <A>(effect: Effect.Effect<A, unknown, SqlClient.SqlClient>) =>
        Effect.flatMap(memory.sql, (sql) => Effect.provideService(effect, SqlClient.SqlClient, sql))
      const [a1, a2, b1] = yield* enqueueHere(enqueueMany([
        event(SetValue, { payload: { key: "a", value: "1" } }),
        event(SetValue, { payload: { key: "a", value: "2" } }),
        event(SetValue, { payload: { key: "b", value: "1" } })
      ]))
      const first = yield* memory.leases.claim("w1", 1_000, 10)
      expect(first.map((e) => [e.id, e.successor])).toEqual([[a1, true], [b1, false]])
      expect(yield* memory.leases.claim("w2", 1_000, 10)).toEqual([])
      expect(yield* memory.leases.complete("w2", [a1!])).toBe(0)
      expect(yield* memory.leases.complete("w1", [a1!])).toBe(1)
      expect((yield* memory.leases.claim("w2", 1_000, 10)).map((e) => e.id)).toEqual([a2])
    }))
})
