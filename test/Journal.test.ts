import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Cause, ConfigProvider, Duration, Effect, Exit, Layer, Metric, Option, Schema, TestClock, TestServices } from "effect"
import { execFile } from "node:child_process"
import pg from "pg"
import { beforeAll, it as vit } from "vitest"
import { formatHistory, runReplay, showHistory } from "../src/cli/journal.js"
import { enqueue, enqueueMany, event, handle, Handlers, Metrics, OutboxConfig, OutboxEvent, RedisSink, Store, Worker } from "../src/index.js"
import * as Journal from "../src/Journal.js"
import { parseDuration } from "../src/OutboxConfig.js"
import { countRows, eventually, freshDatabase, prefix, SetValue, sqlLayer, workerLayer } from "./support/harness.js"

let url: string
beforeAll(async () => {
  url = await freshDatabase("journal")
})

const db = () => Store.layer.pipe(Layer.provideMerge(sqlLayer(url)))
const clear = Effect.flatMap(SqlClient.SqlClient, (sql) => sql`TRUNCATE sync_outbox, sync_outbox_journal CASCADE`)

interface Row {
  readonly id: string
  readonly resource_type: string
  readonly action: string
  readonly resource_id: string | null
  readonly ordering_key: string
  readonly payload: unknown
  readonly created_at: Date
  readonly applied_at: Date
  readonly attempts: number
  readonly worker: string
  readonly superseded_by: string | null
}
const journalRows = Effect.flatMap(SqlClient.SqlClient, (sql) =>
  sql.unsafe<Row>(`SELECT id::text AS id, resource_type, action, resource_id::text AS resource_id, ordering_key, payload,
     created_at, applied_at, attempts, worker, superseded_by::text AS superseded_by
   FROM sync_outbox_journal ORDER BY id`).withoutTransform)

/** A journal row written directly, applied at `appliedAt`. */
const journalRow = (id: number, appliedAt: Date, resourceType = "thing", action = "set") =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql.unsafe(
      `INSERT INTO sync_outbox_journal (id, resource_type, action, resource_id, ordering_key, payload, coalesce, created_at,
         applied_at, attempts, worker)
       VALUES ($1, $2, $6, NULL, $3, $4::jsonb, false, $5, $5, 1, 'test')`,
      [id, resourceType, `thing:${id}`, JSON.stringify({ key: `k${id}`, value: `v${id}` }), appliedAt, action]
    ))

/** Appends its value to a Redis list: the order events were applied in is the list's order. */
const Pushed = OutboxEvent.make({
  resourceType: "pushed",
  action: "append",
  payload: Schema.Struct({ list: Schema.String, value: Schema.String }),
  orderingKey: ({ payload }) => `pushed:${payload.list}`
})
const pushHandler = handle(Pushed, ({ payload }) =>
  Effect.flatMap(RedisSink, (redis) => redis.use((c) => c.rpush(payload.list, payload.value))))

/** Sets a key to its value; coalescing: a newer event of the key makes older ones redundant. */
const Latest = OutboxEvent.make({
  resourceType: "latest",
  action: "set",
  payload: Schema.Struct({ key: Schema.String, value: Schema.String }),
  orderingKey: ({ payload }) => `latest:${payload.key}`,
  coalesce: true
})
const latestHandler = handle(Latest, ({ payload }) =>
  Effect.flatMap(RedisSink, (redis) => redis.use((c) => c.set(payload.key, payload.value))))

const handlers = Handlers.layer(pushHandler, latestHandler)
// Events of one key after the first are claimed on the next poll (or wake-up): keep it short.
const quickPoll = Duration.millis(200)
const registered = [Pushed, Latest].map((t) => ({ resourceType: t.resourceType, action: t.action, payload: t.payload }))
/** The same registry after a change of `Latest`'s schema that old payloads no longer fit. */
const registeredLater = [Pushed, { resourceType: "latest", action: "set", payload: Schema.Struct({ key: Schema.String, value: Schema.Literal("only") }) }]

describe("Journal: written by the completing statement", () => {
  it.effect("an applied event's journal row carries its fields, the completing worker, the Clock's time and its attempts", () =>
    Effect.gen(function*() {
      yield* clear
      const store = yield* Store
      // created_at is the database's now(): the test's clock starts there.
      const t0 = Date.now()
      yield* TestClock.setTime(t0)
      const id = yield* enqueue(SetValue, { resourceId: 42, payload: { key: "a", value: "1" } })
      // Fails once, then applies: two handler runs.
      const [first] = yield* store.claim("worker-a", 30_000, 10)
      yield* store.fail("worker-a", [{ id: first!.id, attempt: 1, tag: "Boom", message: "no", nextRetryAt: new Date(t0), dead: false }])
      yield* TestClock.adjust("5 seconds")
      const [again] = yield* store.claim("worker-b", 30_000, 10)
      expect(again!.id).toBe(id)
      const appliedAt = new Date(t0 + 5_000)
      expect(yield* store.complete("worker-b", [id], { appliedAt, supersededBy: new Map() })).toBe(1)
      expect(yield* countRows()).toBe(0)
      const [row] = yield* journalRows
      expect(row).toMatchObject({
        id,
        resource_type: "thing",
        action: "set",
        resource_id: "42",
        ordering_key: "thing:a",
        payload: { key: "a", value: "1" },
        attempts: 2,
        worker: "worker-b",
        superseded_by: null
      })
      expect(row!.applied_at.toISOString()).toBe(appliedAt.toISOString())
      const [entry] = yield* Journal.history({})
      expect(entry!.latencyMs).toBe(appliedAt.getTime() - row!.created_at.getTime())
    }).pipe(Effect.provide(db())))

  it.effect("a dead letter requeued and then applied journals every handler run, those before the requeue too", () =>
    Effect.gen(function*() {
      yield* clear
      const store = yield* Store
      const t0 = Date.now()
      yield* TestClock.setTime(t0)
      const id = yield* enqueue(SetValue, { payload: { key: "r", value: "1" } })
      // Two failed runs, the second dead; requeued (a fresh budget); one more failure, then applied: four runs.
      yield* store.claim("worker-a", 30_000, 10)
      yield* store.fail("worker-a", [{ id, attempt: 1, tag: "Boom", message: "no", nextRetryAt: new Date(t0), dead: false }])
      yield* store.claim("worker-a", 30_000, 10)
      yield* store.fail("worker-a", [{ id, attempt: 2, tag: "Boom", message: "no", nextRetryAt: new Date(t0), dead: true }])
      expect(yield* store.requeue({ _tag: "One", id })).toBe(1)
      yield* store.claim("worker-a", 30_000, 10)
      yield* store.fail("worker-a", [{ id, attempt: 1, tag: "Boom", message: "no", nextRetryAt: new Date(t0), dead: false }])
      yield* store.claim("worker-b", 30_000, 10)
      expect(yield* store.complete("worker-b", [id], { appliedAt: new Date(t0), supersededBy: new Map() })).toBe(1)
      expect((yield* journalRows).map((r) => r.attempts)).toEqual([4])
    }).pipe(Effect.provide(db())))

  it.effect("a completion by a worker that no longer holds the lease journals nothing", () =>
    Effect.gen(function*() {
      yield* clear
      const store = yield* Store
      yield* TestClock.setTime(Date.now())
      const id = yield* enqueue(SetValue, { payload: { key: "b", value: "1" } })
      yield* store.claim("worker-a", 1_000, 10)
      yield* TestClock.adjust("1001 millis")
      yield* store.claim("worker-b", 30_000, 10)
      expect(yield* store.complete("worker-a", [id], { appliedAt: new Date(), supersededBy: new Map() })).toBe(0)
      expect(yield* journalRows).toEqual([])
      expect(yield* countRows()).toBe(1)
    }).pipe(Effect.provide(db())))

  it.live("an event applied by a worker appears in the journal with that worker and its enqueue-to-applied time", () =>
    Effect.gen(function*() {
      yield* Effect.provide(clear, sqlLayer(url))
      const p = prefix()
      const ids = yield* Effect.provide(
        enqueueMany([1, 2, 3].map((n) => event(Pushed, { resourceId: n, payload: { list: `${p}l${n}`, value: "x" } }))),
        sqlLayer(url)
      )
      yield* Effect.gen(function*() {
        const worker = yield* Worker
        yield* eventually(countRows(), (n) => n === 0, { timeout: 30_000 })
        const entries = yield* eventually(Journal.history({ resourceType: "pushed" }), (es) => es.length === 3)
        // Newest first.
        expect(entries.map((e) => e.id)).toEqual([...ids].reverse().sort((a, b) => Number(b) - Number(a)))
        for (const e of entries) {
          expect(e.worker).toBe(worker.owner)
          expect(e.attempts).toBe(1)
          expect(e.appliedAt.getTime()).toBeGreaterThanOrEqual(e.createdAt.getTime())
          expect(e.latencyMs).toBe(e.appliedAt.getTime() - e.createdAt.getTime())
          expect(e.latencyMs).toBeLessThan(60_000)
        }
        expect((yield* Journal.history({ resourceType: "pushed", resourceId: 2 })).map((e) => e.id)).toEqual([ids[1]])
      }).pipe(Effect.provide(workerLayer({ url, handlers })))
    }))

  it.live("coalesced events point at the event that covered them", () =>
    Effect.gen(function*() {
      yield* Effect.provide(clear, sqlLayer(url))
      const p = prefix()
      const ids = yield* Effect.provide(
        enqueueMany([
          ...["1", "2", "3"].map((value) => event(Latest, { payload: { key: `${p}k`, value } })),
          event(Latest, { payload: { key: `${p}other`, value: "alone" } })
        ]),
        sqlLayer(url)
      )
      yield* Effect.gen(function*() {
        yield* eventually(countRows(), (n) => n === 0, { timeout: 30_000 })
        const redis = yield* RedisSink
        expect(yield* redis.use((c) => c.get(`${p}k`))).toBe("3")
      }).pipe(Effect.provide(workerLayer({ url, handlers })))
      const rows = yield* Effect.provide(journalRows, sqlLayer(url))
      const by = new Map(rows.map((r) => [r.id, r]))
      expect(rows).toHaveLength(4)
      expect(by.get(ids[0]!)).toMatchObject({ superseded_by: ids[2], attempts: 0 })
      expect(by.get(ids[1]!)).toMatchObject({ superseded_by: ids[2], attempts: 0 })
      expect(by.get(ids[2]!)).toMatchObject({ superseded_by: null, attempts: 1 })
      expect(by.get(ids[3]!)).toMatchObject({ superseded_by: null, attempts: 1 })
      const history = yield* Effect.provide(Journal.history({ resourceType: "latest" }), sqlLayer(url))
      expect(formatHistory(history)).toContain(`(covered by ${ids[2]})`)
      expect(history.find((e) => e.id === ids[0])!.coveringApplied).toBe(true)
      expect(history.find((e) => e.id === ids[2])!.coveringApplied).toBeNull()
    }))

  it.live("events covered by a newer one that then failed are not journaled as if it had applied", () =>
    Effect.gen(function*() {
      yield* Effect.provide(clear, sqlLayer(url))
      const Refused = OutboxEvent.make({
        resourceType: "refused",
        action: "set",
        payload: Schema.String,
        orderingKey: () => "refused:1",
        coalesce: true
      })
      const refusing = Handlers.layer(handle(Refused, () => Effect.fail(new Error("no"))))
      const ids = yield* Effect.provide(enqueueMany(["1", "2", "3"].map((v) => event(Refused, { payload: v }))), sqlLayer(url))
      yield* Effect.gen(function*() {
        yield* eventually(countRows("dead"), (n) => n === 1, { timeout: 30_000 })
      }).pipe(Effect.provide(workerLayer({ url, handlers: refusing, config: { maxRetries: 1 } })))
      const history = yield* Effect.provide(Journal.history({ resourceType: "refused" }), sqlLayer(url))
      // The two older ones left the outbox, covered by the newest, which never applied: it is dead.
      expect(history.map((e) => [e.id, e.supersededBy, e.coveringApplied])).toEqual([
        [ids[1], ids[2], false],
        [ids[0], ids[2], false]
      ])
      expect(formatHistory(history)).toContain(`(covered by ${ids[2]}, which had not applied`)
    }))

  it.live("retention 0 keeps today's delete-only behaviour: events are applied and deleted, nothing is journaled", () =>
    Effect.gen(function*() {
      yield* Effect.provide(clear, sqlLayer(url))
      const p = prefix()
      yield* Effect.provide(
        enqueueMany([1, 2, 3].map((n) => event(Pushed, { payload: { list: `${p}zero`, value: String(n) } }))),
        sqlLayer(url)
      )
      yield* Effect.gen(function*() {
        yield* eventually(countRows(), (n) => n === 0, { timeout: 30_000 })
        const redis = yield* RedisSink
        expect(yield* redis.use((c) => c.lrange(`${p}zero`, 0, -1))).toEqual(["1", "2", "3"])
      }).pipe(Effect.provide(workerLayer({ url, handlers, config: { retention: Duration.zero, interval: quickPoll } })))
      expect(yield* Effect.provide(journalRows, sqlLayer(url))).toEqual([])
      expect(yield* Effect.scoped(Effect.provide(Journal.start(Duration.zero), sqlLayer(url)))).toBe(false)
    }))
})

describe("Journal: a database not yet migrated to 0005", () => {
  it.live("the worker warns and completes delete-only instead of failing every completion", () =>
    Effect.gen(function*() {
      const old = yield* Effect.promise(() => freshDatabase("journal_unmigrated"))
      yield* Effect.provide(
        Effect.flatMap(SqlClient.SqlClient, (sql) => sql`DROP TABLE sync_outbox_journal`),
        sqlLayer(old)
      )
      const p = prefix()
      yield* Effect.provide(enqueue(Latest, { payload: { key: `${p}k`, value: "1" } }), sqlLayer(old))
      yield* Effect.gen(function*() {
        yield* eventually(countRows(), (n) => n === 0, { timeout: 30_000 })
        const redis = yield* RedisSink
        expect(yield* redis.use((c) => c.get(`${p}k`))).toBe("1")
        expect(yield* Journal.stats).toEqual({ rows: 0, approximate: false, oldestAppliedAt: null, bytes: 0 })
      }).pipe(Effect.provide(workerLayer({ url: old, handlers })))
    }))
})

describe("Journal: retention", () => {
  it.effect("pruning removes exactly what was applied before now minus the retention, in batches", () =>
    Effect.gen(function*() {
      yield* clear
      const now = new Date("2026-11-30T12:00:00.000Z").getTime()
      yield* TestClock.setTime(now)
      const hour = 3_600_000
      // Five well past the cut-off, one a millisecond past it, one exactly at it, two younger.
      for (const [i, age] of [[1, 5 * hour], [2, 4 * hour], [3, 3 * hour], [4, 2 * hour], [5, 2 * hour], [6, hour + 1], [7, hour], [8, hour - 1], [9, 0]] as const) {
        yield* journalRow(i, new Date(now - age))
      }
      const result = yield* Journal.prune(Duration.hours(1), { batchSize: 2 })
      expect(result).toEqual({ deleted: 6, held: true })
      expect((yield* journalRows).map((r) => r.id)).toEqual(["7", "8", "9"])
      // Time passes: what has since crossed the line goes on the next round, nothing else.
      yield* TestClock.adjust("1 millis")
      expect(yield* Journal.prune(Duration.hours(1))).toEqual({ deleted: 1, held: true })
      expect((yield* journalRows).map((r) => r.id)).toEqual(["8", "9"])
      expect(yield* Journal.prune(Duration.zero)).toEqual({ deleted: 0, held: true })
    }).pipe(Effect.provide(db())))

  it.effect("pruning with an infinite retention keeps everything; a batch size below 1 is refused, not looped on", () =>
    Effect.gen(function*() {
      yield* clear
      const now = new Date("2026-11-30T12:00:00.000Z").getTime()
      yield* TestClock.setTime(now)
      yield* journalRow(1, new Date(now - 3_650 * 86_400_000))
      expect(yield* Journal.prune(Duration.infinity)).toEqual({ deleted: 0, held: true })
      for (const batchSize of [0, -1, 1.5, Number.NaN]) {
        // In real time: a prune that loops must end the spec, not hang it.
        const exit = yield* Effect.exit(TestServices.provideLive(Journal.prune(Duration.hours(1), { batchSize }).pipe(Effect.timeout("10 seconds"))))
        expect(Exit.isFailure(exit) && Cause.pretty(exit.cause)).toContain(`batchSize must be a positive integer, got ${batchSize}`)
      }
      expect((yield* journalRows).map((r) => r.id)).toEqual(["1"])
    }).pipe(Effect.provide(db())))

  it.effect("one pruner at a time: while another holds the lock, a pruner deletes nothing and says so", () =>
    Effect.gen(function*() {
      yield* clear
      const now = Date.now()
      yield* TestClock.setTime(now)
      yield* journalRow(1, new Date(now - 86_400_000))
      const other = new pg.Client({ connectionString: url })
      yield* Effect.promise(() => other.connect())
      yield* Effect.promise(() => other.query("BEGIN"))
      yield* Effect.promise(() => other.query("SELECT pg_advisory_xact_lock($1)", [Journal.pruneLockKey]))
      expect(yield* Journal.prune(Duration.hours(1))).toEqual({ deleted: 0, held: false })
      expect(yield* journalRows).toHaveLength(1)
      yield* Effect.promise(() => other.query("COMMIT").then(() => other.end()))
      expect(yield* Journal.prune(Duration.hours(1))).toEqual({ deleted: 1, held: true })
    }).pipe(Effect.provide(db())))

  it.effect("pruning never waits on claims: a claim holding its rows does not hold up a prune", () =>
    Effect.gen(function*() {
      yield* clear
      const now = Date.now()
      yield* TestClock.setTime(now)
      yield* journalRow(1, new Date(now - 86_400_000))
      yield* enqueue(SetValue, { payload: { key: "busy", value: "1" } })
      // An open transaction that claimed (row-locked) every pending row.
      const claimer = new pg.Client({ connectionString: url })
      yield* Effect.promise(() => claimer.connect())
      yield* Effect.promise(() => claimer.query("BEGIN"))
      yield* Effect.promise(() => claimer.query("SELECT id FROM sync_outbox FOR UPDATE"))
      const result = yield* Journal.prune(Duration.hours(1)).pipe(Effect.timeout("5 seconds"))
      yield* Effect.promise(() => claimer.query("ROLLBACK").then(() => claimer.end()))
      expect(result.deleted).toBe(1)
    }).pipe(Effect.provide(db())))

  it.live("a worker prunes by itself, and reports the journal's size and oldest entry as metrics", () =>
    Effect.gen(function*() {
      yield* Effect.provide(clear, sqlLayer(url))
      const now = Date.now()
      yield* Effect.provide(
        Effect.all([journalRow(1, new Date(now - 3_600_000)), journalRow(2, new Date(now - 30_000)), journalRow(3, new Date(now))]),
        sqlLayer(url)
      )
      yield* Effect.gen(function*() {
        yield* eventually(journalRows, (rows) => rows.length === 2, { timeout: 20_000 })
        const stats = yield* eventually(Journal.refreshMetrics, (s) => s.rows === 2)
        expect(stats.approximate).toBe(false)
        expect(stats.oldestAppliedAt?.getTime()).toBe(now - 30_000)
        expect((yield* Metric.value(Metrics.journalRows)).value).toBe(2)
        const age = (yield* Metric.value(Metrics.journalOldestAge)).value
        expect(age).toBeGreaterThanOrEqual(30)
        expect(age).toBeLessThan(600)
      }).pipe(Effect.provide(workerLayer({ url, handlers, config: { retention: Duration.minutes(1) } })))
    }))

  it("pruneInterval: a minute, or half the retention when that is shorter, never below a second", () => {
    expect(Duration.toMillis(Journal.pruneInterval(Duration.days(7)))).toBe(60_000)
    expect(Duration.toMillis(Journal.pruneInterval(Duration.seconds(30)))).toBe(15_000)
    expect(Duration.toMillis(Journal.pruneInterval(Duration.millis(10)))).toBe(1_000)
  })
})

describe("Journal: SYNC_OUTBOX_RETENTION", () => {
  const fromEnv = (env: Record<string, string>) =>
    OutboxConfig.pipe(
      Effect.provide(OutboxConfig.layerConfig().pipe(
        Layer.provide(Layer.setConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(env)), { pathDelim: "_" })))
      ))
    )

  it.effect("defaults to 7 days; reads 0, Effect durations and short forms", () =>
    Effect.gen(function*() {
      expect(Duration.toMillis((yield* fromEnv({})).retention)).toBe(7 * 86_400_000)
      for (const [text, millis] of [["0", 0], ["0 millis", 0], ["7 days", 7 * 86_400_000], ["12h", 43_200_000], ["90s", 90_000], ["1.5 hours", 5_400_000], ["2 weeks", 14 * 86_400_000]] as const) {
        expect(Duration.toMillis((yield* fromEnv({ SYNC_OUTBOX_RETENTION: text })).retention)).toBe(millis)
      }
    }))

  it.effect.each(["-1 days", "soon", "7 parsecs", "", "1e9999 days", "7"])("a bad value %o fails with InvalidConfig naming RETENTION", (text) =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(fromEnv({ SYNC_OUTBOX_RETENTION: text }))
      expect(error._tag).toBe("InvalidConfig")
      expect(error.message).toMatch(/RETENTION|retention/)
    }))

  it("parseDuration refuses negatives rather than clamping them", () => {
    expect(Option.isNone(parseDuration("-5 minutes"))).toBe(true)
    expect(Option.map(parseDuration("5 minutes"), Duration.toMillis)).toEqual(Option.some(300_000))
  })
})

describe("Journal: replay", () => {
  it.live("replay of a time range enqueues those events again as new events and re-applies them in order", () =>
    Effect.gen(function*() {
      yield* Effect.provide(clear, sqlLayer(url))
      const p = prefix()
      const list = `${p}replayed`
      yield* Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const redis = yield* RedisSink
        // Five events of one list, applied in order; then one of another list, applied long ago.
        for (const value of ["a", "b", "c", "d", "e"]) {
          yield* sql.withTransaction(enqueue(Pushed, { payload: { list, value } }))
        }
        yield* eventually(redis.use((c) => c.lrange(list, 0, -1)), (xs) => xs.length === 5, { timeout: 30_000 })
        // Applied is not yet completed: the journal row is written when the row is deleted, after the apply.
        yield* eventually(countRows(), (n) => n === 0, { timeout: 30_000 })
        yield* sql.unsafe(`INSERT INTO sync_outbox_journal (id, resource_type, action, ordering_key, payload, coalesce, created_at, applied_at, attempts, worker)
          VALUES (1, 'pushed', 'append', 'pushed:old', $1::jsonb, false, now() - interval '2 days', now() - interval '2 days', 1, 'old')`, [
          JSON.stringify({ list: `${p}old`, value: "old" })
        ])
        // A handler bug "fixed": the list is rebuilt from the journal.
        yield* redis.use((c) => c.del(list))
        const dry = yield* runReplay({ resourceType: "pushed", since: "1h", dryRun: true, registered })
        expect(dry.enqueued).toEqual([])
        expect(dry.events.map((e) => (e.payload as { value: string }).value)).toEqual(["a", "b", "c", "d", "e"])
        expect(yield* countRows()).toBe(0)
        const result = yield* runReplay({ resourceType: "pushed", since: "1h", registered })
        expect(result.enqueued).toHaveLength(5)
        // New ids, in the original order.
        const originals = result.events.map((e) => BigInt(e.id))
        const fresh = result.enqueued.map(BigInt)
        expect(fresh.every((id) => originals.every((o) => id > o))).toBe(true)
        expect([...fresh].sort((a, b) => (a < b ? -1 : 1))).toEqual(fresh)
        yield* eventually(redis.use((c) => c.lrange(list, 0, -1)), (xs) => xs.length === 5, { timeout: 30_000 })
        expect(yield* redis.use((c) => c.lrange(list, 0, -1))).toEqual(["a", "b", "c", "d", "e"])
        expect(yield* redis.use((c) => c.exists(`${p}old`))).toBe(0)
        yield* eventually(countRows(), (n) => n === 0)
        // The replayed events are journaled in their turn.
        const history = yield* eventually(Journal.history({ resourceType: "pushed" }), (es) => es.length === 11)
        expect(history.slice(0, 5).map((e) => e.id).sort()).toEqual([...result.enqueued].sort())
        // Each replayed event's journal row names the event it repeated.
        const replayed = new Map(history.slice(0, 5).map((e) => [e.id, e.replayOf]))
        expect(result.enqueued.map((id) => replayed.get(id))).toEqual(result.events.map((e) => e.id))
        expect(formatHistory(history)).toContain(`(replay of ${result.events[0]!.id})`)
      }).pipe(Effect.provide(workerLayer({ url, handlers, config: { interval: quickPoll } })))
    }))

  it.live("replay by ids enqueues exactly those, in id order, coalescing as usual", () =>
    Effect.gen(function*() {
      yield* Effect.provide(clear, sqlLayer(url))
      const p = prefix()
      yield* Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const redis = yield* RedisSink
        const ids: Array<string> = []
        for (const value of ["1", "2", "3"]) {
          ids.push(yield* sql.withTransaction(enqueue(Latest, { payload: { key: `${p}k`, value } })))
          yield* eventually(countRows(), (n) => n === 0, { timeout: 30_000 })
        }
        yield* redis.use((c) => c.set(`${p}k`, "wrong"))
        // Given out of order: replayed in id order, so the newest value wins again.
        const result = yield* Journal.replay({ _tag: "Ids", ids: [ids[2]!, ids[0]!] }, { registered })
        expect(result.events.map((e) => e.id)).toEqual([ids[0], ids[2]])
        yield* eventually(redis.use((c) => c.get(`${p}k`)), (v) => v === "3", { timeout: 30_000 })
      }).pipe(Effect.provide(workerLayer({ url, handlers })))
    }))

  it.effect("replay takes ids in numeric order, past 9 too (not as text: \"10\" < \"9\")", () =>
    Effect.gen(function*() {
      yield* clear
      yield* TestClock.setTime(Date.now())
      for (const id of [9, 10, 11]) yield* journalRow(id, new Date(Date.now() - 60_000))
      const byIds = yield* Journal.replay({ _tag: "Ids", ids: ["11", "10", "9"] })
      expect(byIds.events.map((e) => e.id)).toEqual(["9", "10", "11"])
      const byRange = yield* Journal.replay({ _tag: "Range", resourceType: "thing", since: new Date(Date.now() - 3_600_000) })
      expect(byRange.events.map((e) => e.id)).toEqual(["9", "10", "11"])
    }).pipe(Effect.provide(sqlLayer(url))))

  it.effect("bad ids, unknown types and malformed selections are typed errors and enqueue nothing", () =>
    Effect.gen(function*() {
      yield* clear
      yield* TestClock.setTime(Date.now())
      yield* journalRow(10, new Date(Date.now() - 60_000), "pushed")
      yield* journalRow(11, new Date(Date.now() - 60_000), "unregistered")
      yield* journalRow(12, new Date(Date.now() - 60_000), "latest", "set")
      const since = new Date(Date.now() - 3_600_000)
      const cases: Array<[Effect.Effect<unknown, Journal.InvalidJournalQuery | unknown, SqlClient.SqlClient>, string]> = [
        [Journal.replay({ _tag: "Ids", ids: ["abc"] }), "not an event id: abc"],
        [Journal.replay({ _tag: "Ids", ids: ["0"] }), "not an event id: 0"],
        [Journal.replay({ _tag: "Ids", ids: ["99999999999999999999"] }), "not an event id"],
        [Journal.replay({ _tag: "Ids", ids: [] }), "names no event"],
        [Journal.replay({ _tag: "Ids", ids: ["10", "424242"] }), "not in the journal (never applied, or pruned): 424242"],
        [Journal.replay({ _tag: "Ids", ids: ["11"] }, { registered }), "no handler is registered for unregistered/set"],
        [Journal.replay({ _tag: "Ids", ids: ["12"] }, { registered: registeredLater }), "payloads the current handlers no longer accept, nothing replayed: 12 (latest/set)"],
        [Journal.replay({ _tag: "Range", resourceType: "tenant", since }, { registered }), `unknown resource type "tenant"`],
        [Journal.replay({ _tag: "Range", resourceType: " ", since }), "must not be empty"],
        [Journal.replay({ _tag: "Range", resourceType: "pushed", since: new Date(NaN) }), "not a valid time"],
        [Journal.replay({ _tag: "Range", resourceType: "pushed", since }, { maxEvents: 0 }), "more than 0 events"],
        [Journal.replay({ _tag: "Range", resourceType: "pushed", since }, { maxEvents: -1 }), "maxEvents must be an integer from 0, got -1"],
        [Journal.replay({ _tag: "Range", resourceType: "pushed", since }, { maxEvents: -5 }), "maxEvents must be an integer from 0, got -5"],
        [Journal.replay({ _tag: "Ids", ids: ["10"] }, { maxEvents: Number.NaN }), "maxEvents must be an integer from 0, got NaN"],
        [Journal.replay({ _tag: "Range", resourceType: "pushed", since }, { maxEvents: 1.5 }), "maxEvents must be an integer from 0, got 1.5"],
        [runReplay({ ids: "10", resourceType: "pushed", since: "1h" }), "not both"],
        [runReplay({ resourceType: "pushed" }), "give either --ids"],
        [runReplay({ resourceType: "pushed", since: "yesterday-ish" }), "--since wants"],
        [showHistory({ since: "last tuesday" }), "--since wants"],
        [showHistory({ resourceId: -4 }), "--resource-id must be a positive integer"],
        [showHistory({ limit: 0 }), "--limit"]
      ]
      for (const [attempt, fragment] of cases) {
        const error = yield* Effect.flip(attempt)
        expect(error).toBeInstanceOf(Journal.InvalidJournalQuery)
        expect((error as Journal.InvalidJournalQuery).message).toContain(fragment)
      }
      expect(yield* countRows()).toBe(0)
      // A range with nothing in it is not an error: nothing to do.
      expect(yield* Journal.replay({ _tag: "Range", resourceType: "pushed", since: new Date() })).toEqual({ events: [], enqueued: [] })
    }).pipe(Effect.provide(db())))

  it.effect("replay of an id still in the outbox says it is pending or dead, not that it was pruned; nothing is enqueued", () =>
    Effect.gen(function*() {
      yield* clear
      const sql = yield* SqlClient.SqlClient
      yield* sql.unsafe(
        `INSERT INTO sync_outbox (id, resource_type, action, ordering_key, payload, status)
         VALUES (501, 'pushed', 'append', 'pushed:a', '{}', 'pending'), (502, 'pushed', 'append', 'pushed:b', '{}', 'dead')`
      )
      const error = yield* Effect.flip(Journal.replay({ _tag: "Ids", ids: ["501", "502", "503"] }))
      expect(error).toBeInstanceOf(Journal.InvalidJournalQuery)
      expect(error.message).toBe(
        "not in the journal (never applied, or pruned): 503; still pending in the outbox, not applied yet: 501; " +
          "dead letters, never applied (requeue them instead): 502"
      )
      expect(yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM sync_outbox`).toEqual([{ n: 2 }])
    }).pipe(Effect.provide(db())))

  it.effect("history: newest applied first, filtered by type, resource and --since, bounded by --limit", () =>
    Effect.gen(function*() {
      yield* clear
      const now = new Date("2026-11-30T12:00:00.000Z").getTime()
      yield* TestClock.setTime(now)
      const minute = 60_000
      yield* journalRow(1, new Date(now - 90 * minute), "pushed")
      yield* journalRow(2, new Date(now - 30 * minute), "pushed")
      yield* journalRow(3, new Date(now - 20 * minute), "latest")
      yield* journalRow(4, new Date(now - 10 * minute), "pushed")
      const ids = (entries: ReadonlyArray<Journal.JournalEntry>) => entries.map((e) => e.id)
      expect(ids(yield* Journal.history())).toEqual(["4", "3", "2", "1"])
      expect(ids(yield* Journal.history({ resourceType: "pushed" }))).toEqual(["4", "2", "1"])
      expect(ids(yield* Journal.history({ resourceType: "pushed", since: yield* Journal.parseSince("1h") }))).toEqual(["4", "2"])
      expect(ids(yield* Journal.history({ since: yield* Journal.parseSince("30m") }))).toEqual(["4", "3", "2"])
      expect(ids(yield* Journal.history({ limit: 2 }))).toEqual(["4", "3"])
      expect(yield* Journal.history({ resourceType: "nothing" })).toEqual([])
    }).pipe(Effect.provide(db())))

  it.effect("--since reads ISO times and durations back from the Clock's now", () =>
    Effect.gen(function*() {
      const now = new Date("2026-11-30T12:00:00.000Z").getTime()
      yield* TestClock.setTime(now)
      expect((yield* Journal.parseSince("15m")).getTime()).toBe(now - 900_000)
      expect((yield* Journal.parseSince("2 hours")).getTime()).toBe(now - 7_200_000)
      expect((yield* Journal.parseSince("2026-11-29T08:30:00Z")).toISOString()).toBe("2026-11-29T08:30:00.000Z")
      expect((yield* Journal.parseSince("2026-11-29")).toISOString()).toBe("2026-11-29T00:00:00.000Z")
      expect((yield* Effect.flip(Journal.parseSince("2026-13-45")))._tag).toBe("InvalidJournalQuery")
    }))
})

describe("Journal: the CLI", () => {
  const bin = new URL("../bin/sync-outbox.js", import.meta.url).pathname
  const cli = (args: ReadonlyArray<string>, env: Record<string, string> = {}) =>
    new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
      execFile("node", [bin, ...args], { env: { ...process.env, DATABASE_URL: url, ...env }, timeout: 60_000 }, (error, stdout, stderr) => {
        resolve({ code: error ? (typeof error.code === "number" ? error.code : 1) : 0, stdout, stderr })
      })
    })

  vit("history --json, replay's errors (exit 2, one line, nothing enqueued) and the retention in status", async () => {
    await Effect.runPromise(Effect.gen(function*() {
      yield* clear
      yield* journalRow(5, new Date(Date.now() - 60_000), "master", "update")
    }).pipe(Effect.provide(sqlLayer(url))))
    const history = await cli(["history", "--json", "--since", "1h"])
    expect(history).toMatchObject({ code: 0, stderr: "" })
    expect(JSON.parse(history.stdout)).toMatchObject([{ id: "5", resourceType: "master", worker: "test", attempts: 1 }])
    for (const [args, fragment] of [
      [["replay", "--ids", "5,x"], "not an event id: x"],
      [["replay", "--ids", "6"], "not in the journal"],
      [["replay", "--resource-type", "tenant", "--since", "1h"], `unknown resource type "tenant"`],
    ] as const) {
      const result = await cli(args)
      expect(result.code, args.join(" ")).toBe(2)
      expect(result.stderr).toContain(fragment)
      expect(result.stderr.trim().split("\n")).toHaveLength(1)
    }
    const dry = await cli(["replay", "--ids", "5", "--dry-run"])
    expect(dry.code).toBe(0)
    expect(dry.stdout).toContain("dry run: would enqueue 1 event(s)")
    expect(await Effect.runPromise(Effect.provide(countRows(), sqlLayer(url)))).toBe(0)
    // No live worker (the other tests' workers are gone): this environment's setting, said to be that.
    await Effect.runPromise(Effect.flatMap(SqlClient.SqlClient, (sql) => sql`DELETE FROM sync_outbox_workers`).pipe(Effect.provide(sqlLayer(url))))
    expect((await cli(["status"], { SYNC_OUTBOX_RETENTION: "3 days" })).stdout)
      .toContain("retention 3d (no live worker says; this environment's SYNC_OUTBOX_RETENTION)   journal 1 event(s)")
    expect((await cli(["status"], { SYNC_OUTBOX_RETENTION: "0" })).stdout).toContain("retention off")
    expect(JSON.parse((await cli(["status", "--json"])).stdout).retention).toMatchObject({ retentionMs: 604_800_000, retentionFrom: "environment", journal: { rows: 1 } })
    // A live worker running with one hour: that is the retention in force, whatever this shell says.
    await Effect.runPromise(Effect.flatMap(SqlClient.SqlClient, (sql) =>
      sql`INSERT INTO sync_outbox_workers (owner, hostname, pid, loop, retention_ms) VALUES ('w1', 'h', 1, 'running', 3600000)`
    ).pipe(Effect.provide(sqlLayer(url))))
    const live = await cli(["status"], { SYNC_OUTBOX_RETENTION: "3 days" })
    expect(live.stdout).toContain("retention 1h   journal 1 event(s)")
    expect(JSON.parse((await cli(["status", "--json"])).stdout)).toMatchObject({ retention: { retentionMs: 3_600_000, retentionFrom: "workers" }, workers: [{ owner: "w1", retentionMs: 3_600_000 }] })
  }, 120_000)
})
