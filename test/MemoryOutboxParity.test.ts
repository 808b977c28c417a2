/**
 * The in-memory outbox against the SQL it rewrites: the same seeded sequences of operations
 * (enqueue, claim, complete, fail with and without a kept lease, release, renew, requeue, purge,
 * time passing) run on `Leases` and `Admin` over PGlite and on `MemoryOutbox`, and after every
 * step the two must agree on what the call returned and on every row and its failure history.
 */
import * as Reactivity from "@effect/experimental/Reactivity"
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Schema, TestClock } from "effect"
import * as Admin from "../src/Admin.js"
import { enqueueMany, event, OutboxEvent } from "../src/index.js"
import * as Leases from "../src/Leases.js"
import * as Migrations from "../src/Migrations.js"
import { MemoryOutbox, PgliteClient } from "../src/testing/index.js"

const Plain = OutboxEvent.make({
  resourceType: "plain",
  action: "set",
  payload: Schema.Struct({ key: Schema.String, n: Schema.Number }),
  orderingKey: ({ payload }) => `k:${payload.key}`
})
const Coalescing = OutboxEvent.make({
  resourceType: "coalescing",
  action: "sync",
  payload: Schema.Struct({ key: Schema.String, n: Schema.Number }),
  orderingKey: ({ payload }) => `k:${payload.key}`,
  coalesce: true
})

/** A small deterministic generator (mulberry32), so a failing sequence can be replayed. */
const random = (seed: number) => {
  let a = seed
  return () => {
    a = (a + 0x6d2b79f5) | 0
    let t = Math.imul(a ^ (a >>> 15), 1 | a)
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

interface Side {
  readonly leases: Leases.LeasesShape
  readonly admin: Admin.AdminShape
  readonly sql: SqlClient.SqlClient
}

const onPglite = Effect.gen(function*() {
  const db = yield* PgliteClient.create
  yield* Effect.addFinalizer(() => Effect.promise(() => db.close()))
  const sql = yield* PgliteClient.make(db).pipe(Effect.provide(Reactivity.layer))
  return yield* Effect.gen(function*() {
    yield* Migrations.run(["outbox"])
    return { leases: yield* Leases.make({ callTimeout: Duration.seconds(30) }), admin: yield* Admin.make, sql } satisfies Side
  }).pipe(Effect.provideService(SqlClient.SqlClient, sql))
})

const inMemory = Effect.gen(function*() {
  const memory = yield* MemoryOutbox.make
  return { leases: memory.leases, admin: memory.admin, sql: yield* memory.sql } satisfies Side
})

/** Every row as `show` returns it (event and history), and what the operator's queries say. */
const state = (side: Side, maxId: number) =>
  Effect.gen(function*() {
    const rows = yield* Effect.forEach(Array.from({ length: maxId }, (_, i) => String(i + 1)), (id) =>
      side.admin.show(id).pipe(
        Effect.map(({ event, failures }) => ({ event, failures: failures.map((f) => ({ ...f })) })),
        Effect.catchTag("EventNotFound", () => Effect.succeed(null))
      ))
    return {
      rows,
      stats: yield* side.admin.stats,
      // Sorted here: Statements.listDead orders by the text alias `id` ("12" before "5"), which
      // the in-memory store does not copy (it lists oldest first, as intended).
      dead: [...yield* side.admin.listDead()].sort((a, b) => Number(a.id) - Number(b.id)),
      nextWakeAt: yield* side.leases.nextWakeAt
    }
  })

/** The outbox on PGlite emptied (ids from 1 again), beside a fresh one in memory. */
const fresh = (pglite: Side) =>
  Effect.gen(function*() {
    yield* pglite.sql.unsafe("TRUNCATE sync_outbox, sync_outbox_failures, sync_outbox_workers RESTART IDENTITY")
    return [pglite, yield* inMemory] as const
  })

const run = (pglite: Side, seed: number, steps: number) =>
  Effect.gen(function*() {
    yield* TestClock.setTime(Date.parse("2026-01-01T00:00:00Z") + seed * 86_400_000)
    const sides = yield* fresh(pglite)
    const next = random(seed)
    const pick = <A>(items: ReadonlyArray<A>): A => items[Math.floor(next() * items.length)]!
    const some = <A>(items: ReadonlyArray<A>): Array<A> => items.filter(() => next() < 0.5)
    let maxId = 0
    for (let step = 0; step < steps; step++) {
      const now = yield* TestClock.currentTimeMillis
      // What each side has, read from memory (the two were compared equal after the last step).
      const rows = (yield* state(sides[1], maxId)).rows.flatMap((r) => (r === null ? [] : [r.event]))
      const owner = pick(["w1", "w2"])
      const held = rows.filter((r) => r.leaseOwner === owner).map((r) => r.id)
      const anyIds = [...some(held), ...some(rows.map((r) => r.id)).slice(0, 2), String(maxId + 7)]
      const choice = next()
      const label = `seed ${seed}, step ${step}`
      let op: (side: Side) => Effect.Effect<unknown, unknown>
      if (choice < 0.2) {
        const events = Array.from({ length: 1 + Math.floor(next() * 3) }, () =>
          event(pick([Plain, Coalescing]), { payload: { key: pick(["a", "b", "c"]), n: Math.floor(next() * 100) } }))
        op = (side) => Effect.provideService(enqueueMany(events), SqlClient.SqlClient, side.sql)
        maxId += events.length
      } else if (choice < 0.4) {
        const leaseMs = pick([1_000, 5_000])
        const limit = pick([1, 2, 5])
        op = (side) => side.leases.claim(owner, leaseMs, limit)
      } else if (choice < 0.5) {
        const ids = some(held)
        op = (side) => side.leases.complete(owner, ids)
      } else if (choice < 0.65) {
        const failures = some(held).map((id) => {
          const row = rows.find((r) => r.id === id)!
          return {
            id,
            attempt: row.retryCount + 1,
            tag: pick(["Refused", "HandlerTimeout"]),
            message: `attempt ${row.retryCount + 1}`,
            nextRetryAt: new Date(now + pick([0, 700, 2_500])),
            dead: next() < 0.25,
            keepLease: next() < 0.3
          } satisfies Leases.Failure
        })
        op = (side) => side.leases.fail(owner, failures)
      } else if (choice < 0.72) {
        op = (side) => side.leases.release(owner, anyIds)
      } else if (choice < 0.78) {
        const until = new Date(now + pick([500, 4_000]))
        op = (side) => side.leases.renew(owner, anyIds, until)
      } else if (choice < 0.84) {
        const dead = rows.filter((r) => r.status === "dead").map((r) => r.id)
        const selector: Admin.DeadSelector = next() < 0.5 || dead.length === 0
          ? { _tag: "All" }
          : { _tag: "One", id: pick(dead) }
        op = (side) => side.admin.requeue(selector).pipe(Effect.either)
      } else if (choice < 0.87) {
        const selector: Admin.DeadSelector = pick([{ _tag: "ResourceType", resourceType: "plain" }, { _tag: "One", id: String(maxId + 3) }])
        op = (side) => side.admin.purge(selector).pipe(Effect.either)
      } else {
        // Time passes for both at once.
        yield* TestClock.adjust(Duration.millis(pick([1, 500, 1_000, 3_000])))
        op = (side) => side.leases.nextWakeAt
      }
      const [sqlResult, memoryResult] = yield* Effect.forEach(sides, op)
      expect(memoryResult, label).toEqual(sqlResult)
      const [sqlState, memoryState] = yield* Effect.forEach(sides, (side) => state(side, maxId))
      expect(memoryState, label).toEqual(sqlState)
    }
  })

describe("the in-memory outbox agrees with the SQL it rewrites", () => {
  it.scoped("three random sequences of 100 operations: the same results, rows and histories after every step", () =>
    Effect.gen(function*() {
      const pglite = yield* onPglite
      for (const seed of [1, 2, 3]) yield* run(pglite, seed, 100)
    }), 180_000)
})
