import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { PgClient } from "@effect/sql-pg"
import { Duration, Effect, Layer, Metric, ParseResult, Redacted, Schema, TestClock } from "effect"
import { randomBytes } from "node:crypto"
import pg from "pg"
import { beforeAll } from "vitest"
import { Admin, enqueue, enqueueMany, enqueueWith, event, Leases, Metrics, OutboxConfig, type OutboxConfigShape, OutboxEvent, Store } from "../src/index.js"
import * as Statements from "../src/Statements.js"
import { countRows, eventually, freshDatabase, SetValue, sqlLayer } from "./support/harness.js"

let url: string
beforeAll(async () => {
  url = await freshDatabase("store")
})
const withDb = <A, E>(effect: Effect.Effect<A, E, SqlClient.SqlClient | Store | Leases>) =>
  effect.pipe(Effect.provide(Store.layer.pipe(Layer.provideMerge(sqlLayer(url)))))

const clear = Effect.flatMap(SqlClient.SqlClient, (sql) => sql`TRUNCATE sync_outbox CASCADE`)

/** Collect the notifications a raw LISTEN connection sees while `body` runs. */
const notificationsDuring = <A, E, R>(body: Effect.Effect<A, E, R>) =>
  Effect.acquireUseRelease(
    Effect.promise(async () => {
      const client = new pg.Client({ connectionString: url })
      await client.connect()
      const seen: Array<string> = []
      client.on("notification", (n) => seen.push(n.channel))
      await client.query("LISTEN sync_outbox")
      return { client, seen }
    }),
    ({ seen }) =>
      Effect.gen(function*() {
        const result = yield* body
        yield* Effect.promise(() => new Promise((r) => setTimeout(r, 100)))
        return { result, seen: [...seen] }
      }),
    ({ client }) => Effect.promise(() => client.end())
  )

describe("Store: enqueue", () => {
  it.live("joins the caller's transaction: a rollback leaves no row and sends no notification", () =>
    withDb(Effect.gen(function*() {
      yield* clear
      const sql = yield* SqlClient.SqlClient
      const { seen } = yield* notificationsDuring(
        sql.withTransaction(
          Effect.zipRight(enqueue(SetValue, { payload: { key: "k", value: "v" } }), Effect.fail("business rule says no"))
        ).pipe(Effect.flip)
      )
      expect(yield* countRows()).toBe(0)
      expect(seen).toEqual([])
    })))

  it.live("a committed transaction leaves the row and one notification per statement", () =>
    withDb(Effect.gen(function*() {
      yield* clear
      const sql = yield* SqlClient.SqlClient
      const enqueuedBefore = (yield* Metric.value(Metrics.enqueued)).count
      const { result, seen } = yield* notificationsDuring(
        sql.withTransaction(
          Effect.gen(function*() {
            const one = yield* enqueue(SetValue, { payload: { key: "a", value: "1" } })
            const many = yield* enqueueMany(
              Array.from({ length: 1000 }, (_, i) => event(SetValue, { payload: { key: `b${i}`, value: "2" } }))
            )
            return [one, ...many]
          })
        )
      )
      expect(result).toHaveLength(1001)
      expect((yield* Metric.value(Metrics.enqueued)).count - enqueuedBefore).toBe(1001)
      expect(yield* countRows("pending")).toBe(1001)
      // Two statements, one identical payload: Postgres folds them into one notification.
      expect(seen).toEqual(["sync_outbox"])
      const rows = yield* sql<{ ordering_key: string; payload: unknown; next_retry_at: number }>`
        SELECT ordering_key, payload, next_retry_at FROM sync_outbox WHERE id = ${result[0]!}::bigint`
      expect(rows[0]!.ordering_key).toBe("thing:a")
      expect(rows[0]!.payload).toEqual({ key: "a", value: "1" })
      expect(rows[0]!.next_retry_at).toBe(-Infinity)
    })))

  it.live("an invalid payload fails with InvalidPayload and writes nothing, even in a batch", () =>
    withDb(Effect.gen(function*() {
      yield* clear
      const bad = yield* enqueue(SetValue, { payload: { key: "k", value: 42 as unknown as string } }).pipe(Effect.flip)
      expect(bad._tag).toBe("InvalidPayload")
      expect(bad.message).toContain("value")
      const batch = yield* enqueueMany([
        event(SetValue, { payload: { key: "ok", value: "fine" } }),
        event(SetValue, { payload: { key: "bad" } as unknown as { key: string; value: string } })
      ]).pipe(Effect.flip)
      expect(batch._tag).toBe("InvalidPayload")
      expect(yield* countRows()).toBe(0)
    })))

  it.live("a payload schema with an asynchronous part, at the top or in a field, is encoded; its refusal is InvalidPayload with nothing written", () =>
    withDb(Effect.gen(function*() {
      yield* clear
      // Encoding needs an effect: the synchronous encoder cannot run it.
      const Upper = Schema.transformOrFail(Schema.String, Schema.String, {
        strict: true,
        decode: ParseResult.succeed,
        encode: (s) =>
          Effect.delay(s === "bad" ? ParseResult.fail(new ParseResult.Type(Schema.String.ast, s, "refused")) : ParseResult.succeed(s.toUpperCase()), Duration.millis(1))
      })
      const Top = OutboxEvent.make({ resourceType: "slow", action: "top", payload: Upper })
      const Nested = OutboxEvent.make({ resourceType: "slow", action: "nested", payload: Schema.Struct({ name: Upper }) })
      const top = yield* enqueue(Top, { resourceId: 1, payload: "fine" })
      const nested = yield* enqueue(Nested, { resourceId: 2, payload: { name: "ann" } })
      for (const refused of [enqueue(Top, { resourceId: 3, payload: "bad" }), enqueue(Nested, { resourceId: 4, payload: { name: "bad" } })]) {
        expect((yield* Effect.flip(refused))._tag).toBe("InvalidPayload")
      }
      const sql = yield* SqlClient.SqlClient
      const rows = yield* sql<{ id: string; payload: unknown }>`SELECT id::text AS id, payload FROM sync_outbox ORDER BY id`
      expect(rows).toEqual([{ id: top, payload: "FINE" }, { id: nested, payload: { name: "ANN" } }])
    })))

  it.live("a NUL or a lone surrogate in a payload string is InvalidPayload before any insert, on every enqueue path", () =>
    withDb(Effect.gen(function*() {
      yield* clear
      const sql = yield* SqlClient.SqlClient
      const Loose = OutboxEvent.make({ resourceType: "loose", action: "set", payload: Schema.Unknown })
      const bad: ReadonlyArray<[string, unknown]> = [
        ["NUL", { name: "a\u0000b" }],
        ["lone high surrogate", { list: ["ok", "\uD800"] }],
        ["lone low surrogate", "x\uDC00"],
        ["NUL in a key", { ["k\u0000"]: 1 }]
      ]
      yield* sql`CREATE TABLE IF NOT EXISTS business (note text)`
      yield* sql`TRUNCATE business`
      for (const [label, payload] of bad) {
        const one = yield* enqueue(Loose, { payload }).pipe(Effect.flip)
        expect(one._tag, label).toBe("InvalidPayload")
        expect(one.message, label).toMatch(/NUL|surrogate|cannot store/)
        const many = yield* enqueueMany([event(Loose, { payload: "fine" }), event(Loose, { payload })]).pipe(Effect.flip)
        expect(many._tag, label).toBe("InvalidPayload")
        const client = new pg.Client({ connectionString: url })
        yield* Effect.promise(() => client.connect())
        const raw = yield* enqueueWith(client, Loose, { payload }).pipe(Effect.flip)
        yield* Effect.promise(() => client.end())
        expect(raw._tag, label).toBe("InvalidPayload")
        // In the caller's transaction: refused before any statement, so its other writes commit.
        yield* sql.withTransaction(
          Effect.gen(function*() {
            yield* sql`INSERT INTO business VALUES (${label})`
            yield* enqueue(Loose, { payload }).pipe(Effect.catchTag("InvalidPayload", () => Effect.void))
            yield* sql`INSERT INTO business VALUES (${label + " after"})`
          })
        )
      }
      // A well-formed pair (an emoji) is fine.
      yield* enqueue(Loose, { payload: "\uD83D\uDE00" })
      expect(yield* countRows()).toBe(1)
      expect((yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM business`)[0]!.n).toBe(bad.length * 2)
    })))

  it.live("NaN, Infinity and undefined in an array are InvalidPayload: JSON would store them as null", () =>
    withDb(Effect.gen(function*() {
      yield* clear
      const Loose = OutboxEvent.make({ resourceType: "loose", action: "set", payload: Schema.Unknown })
      const Count = OutboxEvent.make({ resourceType: "count", action: "set", payload: Schema.Number })
      for (const [label, error] of [
        ["NaN", yield* enqueue(Count, { payload: NaN }).pipe(Effect.flip)],
        ["Infinity", yield* enqueue(Count, { payload: Infinity }).pipe(Effect.flip)],
        ["nested -Infinity", yield* enqueue(Loose, { payload: { a: { b: -Infinity } } }).pipe(Effect.flip)],
        ["undefined in an array", yield* enqueue(Loose, { payload: [1, undefined] }).pipe(Effect.flip)],
        ["in a batch", yield* enqueueMany([event(Count, { payload: 1 }), event(Count, { payload: NaN })]).pipe(Effect.flip)]
      ] as const) {
        expect(error._tag, label).toBe("InvalidPayload")
        expect(error.message, label).toMatch(/JSON cannot carry/)
      }
      expect(yield* countRows()).toBe(0)
      // An undefined property is simply absent, as JSON has it; a date goes through its toJSON.
      yield* enqueue(Loose, { payload: { a: 1, b: undefined, at: new Date(0) } })
      expect(yield* countRows()).toBe(1)
    })))

  it.live("an empty ordering key is refused: it would put every resource of the type in one line", () =>
    withDb(Effect.gen(function*() {
      const Keyless = OutboxEvent.make({ resourceType: "keyless", action: "set", payload: Schema.String, orderingKey: () => " " })
      const error = yield* enqueue(Keyless, { payload: "x" }).pipe(Effect.flip)
      expect(error._tag).toBe("InvalidPayload")
      expect(error.message).toMatch(/ordering key is empty/)
    })))

  it.live("an ordering key too long for Postgres's index on it is InvalidPayload before any insert: the caller's transaction goes on", () =>
    withDb(Effect.gen(function*() {
      yield* clear
      const sql = yield* SqlClient.SqlClient
      // 2,800 characters that do not compress: past the index's limit for one entry (some 2,700 bytes).
      const key = randomBytes(1_400).toString("hex")
      const outcome = yield* sql.withTransaction(Effect.gen(function*() {
        const error = yield* enqueue(SetValue, { payload: { key, value: "v" } }).pipe(Effect.flip)
        // The transaction is still usable: the next statement runs, and the commit keeps it.
        yield* enqueue(SetValue, { payload: { key: "short", value: "v" } })
        return error
      }))
      expect(outcome._tag).toBe("InvalidPayload")
      expect(outcome.message).toMatch(/the ordering key is 2,806 bytes/)
      expect(yield* countRows()).toBe(1)
    })))

  it.live("an ordering key built from a payload with a NUL is InvalidPayload too", () =>
    withDb(Effect.gen(function*() {
      const error = yield* enqueue(SetValue, { payload: { key: "a\u0000", value: "v" } }).pipe(Effect.flip)
      expect(error._tag).toBe("InvalidPayload")
    })))

  it.effect("an event's created_at is the producer's Clock, like every time the library writes", () =>
    withDb(Effect.gen(function*() {
      yield* clear
      yield* TestClock.setTime(new Date("2030-01-02T03:04:05.000Z").getTime())
      const one = yield* enqueue(SetValue, { payload: { key: "clock", value: "1" } })
      const [many] = yield* enqueueMany([event(SetValue, { payload: { key: "clock", value: "2" } })])
      const store = yield* Store
      for (const id of [one, many!]) {
        expect((yield* store.show(id)).event.createdAt.toISOString()).toBe("2030-01-02T03:04:05.000Z")
      }
    })))

  it.live("a resource id that is not a positive integer is an InvalidEvent", () =>
    withDb(Effect.gen(function*() {
      for (const resourceId of [0, -1, 1.5, Number.NaN]) {
        const error = yield* enqueue(SetValue, { resourceId, payload: { key: "k", value: "v" } }).pipe(Effect.flip)
        expect(error._tag).toBe("InvalidEvent")
      }
    })))

  it.live("a payload that cannot become JSON is refused", () =>
    withDb(Effect.gen(function*() {
      const Big = OutboxEvent.make({ resourceType: "big", action: "set", payload: Schema.Unknown })
      const error = yield* enqueue(Big, { payload: { n: 10n } }).pipe(Effect.flip)
      expect(error._tag).toBe("InvalidPayload")
    })))

  it.live("enqueueWith writes through a raw pg client inside its own transaction", () =>
    withDb(Effect.gen(function*() {
      yield* clear
      const client = new pg.Client({ connectionString: url })
      yield* Effect.promise(() => client.connect())
      yield* Effect.promise(() => client.query("BEGIN"))
      const id = yield* enqueueWith(client, SetValue, { resourceId: 7, payload: { key: "raw", value: "pg" } })
      yield* Effect.promise(() => client.query("ROLLBACK"))
      expect(yield* countRows()).toBe(0)
      yield* Effect.promise(() => client.query("BEGIN"))
      yield* enqueueWith(client, SetValue, { resourceId: 7, payload: { key: "raw", value: "pg" } })
      yield* Effect.promise(() => client.query("COMMIT"))
      yield* Effect.promise(() => client.end())
      expect(id).toMatch(/^\d+$/)
      expect(yield* countRows()).toBe(1)
    })))

  it.live("sync_outbox_enqueue lets any SQL client enqueue, and refuses a blank type", () =>
    withDb(Effect.gen(function*() {
      yield* clear
      const sql = yield* SqlClient.SqlClient
      const rows = yield* sql<{ id: string }>`SELECT sync_outbox_enqueue('master', 'update', 3, '{"a":1}'::jsonb)::text AS id`
      expect(rows[0]!.id).toMatch(/^\d+$/)
      const stored = yield* sql<{ ordering_key: string }>`SELECT ordering_key FROM sync_outbox`
      expect(stored[0]!.ordering_key).toBe("master:3")
      const error = yield* sql`SELECT sync_outbox_enqueue(' ', 'update')`.pipe(Effect.flip)
      expect(error._tag).toBe("SqlError")
      expect(yield* countRows()).toBe(1)
    })))
})

describe("Store: claim", () => {
  // Two types of one resource, one ordering key: a publish must happen, a sync may be covered.
  const Publish = OutboxEvent.make({ resourceType: "doc", action: "publish", payload: Schema.String, orderingKey: ({ resourceId }) => `doc:${resourceId}` })
  const Sync = OutboxEvent.make({ resourceType: "doc", action: "sync", payload: Schema.String, coalesce: true, orderingKey: ({ resourceId }) => `doc:${resourceId}` })
  const turns = (writes: ReadonlyArray<readonly ["publish" | "sync", string]>) =>
    Effect.gen(function*() {
      yield* clear
      const leases = yield* Leases
      for (const [kind, payload] of writes) yield* enqueue(kind === "publish" ? Publish : Sync, { resourceId: 1, payload })
      // Each claim's events (payloads, with a + when another event waits behind), applied in turn.
      const seen: Array<string> = []
      for (let i = 0; i < writes.length; i++) {
        const claimed = yield* leases.claim("mixer", 30_000, 10)
        if (claimed.length === 0) break
        seen.push(claimed.map((e) => `${e.payload}${e.successor ? "+" : ""}`).join(" "))
        yield* leases.complete("mixer", claimed.map((e) => e.id))
      }
      return seen
    })

  it.live("coalescing and non-coalescing events of one key: nothing covers a publish or jumps over it", () =>
    withDb(Effect.gen(function*() {
      expect(yield* turns([["publish", "p1"], ["sync", "s2"]])).toEqual(["p1+", "s2"])
      expect(yield* turns([["sync", "s1"], ["publish", "p2"], ["sync", "s3"]])).toEqual(["s1+", "p2+", "s3"])
      expect(yield* turns([["sync", "s1"], ["sync", "s2"], ["publish", "p3"], ["sync", "s4"], ["sync", "s5"]])).toEqual(["s1+ s2+", "p3+", "s4 s5"])
      expect(yield* turns([["publish", "p1"], ["publish", "p2"], ["sync", "s3"]])).toEqual(["p1+", "p2+", "s3"])
    })))

  it.live("a backlog claimed a thousand at a time writes every lease as a HOT update: no index entry per claim", () =>
    withDb(Effect.gen(function*() {
      yield* clear
      // Written as a bulk insert fills pages, then claimed in one statement, as a worker would.
      for (let i = 0; i < 3; i++) {
        yield* enqueueMany(Array.from({ length: 1_000 }, (_, j) => event(SetValue, { payload: { key: `hot${i}-${j}`, value: "v" } })))
      }
      const counts = yield* Effect.promise(async () => {
        const client = new pg.Client({ connectionString: url })
        await client.connect()
        try {
          await client.query("BEGIN")
          const now = new Date()
          const claimed = await client.query(Statements.claim.text, ["hot", now, new Date(now.getTime() + 30_000), 1_000])
          const { rows } = await client.query<{ updated: string; hot: string }>(
            `SELECT pg_stat_get_xact_tuples_updated('sync_outbox'::regclass) AS updated,
              pg_stat_get_xact_tuples_hot_updated('sync_outbox'::regclass) AS hot`
          )
          return { claimed: claimed.rowCount, updated: Number(rows[0]!.updated), hot: Number(rows[0]!.hot) }
        } finally {
          await client.query("ROLLBACK")
          await client.end()
        }
      })
      expect(counts).toEqual({ claimed: 1_000, updated: 1_000, hot: 1_000 })
    })))

  it.effect("a claim leases rows; another owner cannot take them until the lease expires", () =>
    withDb(Effect.gen(function*() {
      yield* clear
      yield* TestClock.setTime(Date.now())
      const store = yield* Store
      yield* enqueueMany(Array.from({ length: 5 }, (_, i) => event(SetValue, { payload: { key: `c${i}`, value: "v" } })))
      const first = yield* store.claim("a", 1_000, 3)
      expect(first.map((e) => e.orderingKey)).toEqual(["thing:c0", "thing:c1", "thing:c2"])
      const second = yield* store.claim("b", 1_000, 10)
      expect(second.map((e) => e.orderingKey)).toEqual(["thing:c3", "thing:c4"])
      expect(yield* store.claim("b", 1_000, 10)).toEqual([])
      // Completion is fenced on the owner: "b" cannot delete "a"'s rows.
      expect(yield* store.complete("b", first.map((e) => e.id))).toBe(0)
      yield* TestClock.adjust("1001 millis")
      const retaken = yield* store.claim("b", 1_000, 10)
      expect(retaken.map((e) => e.id).sort()).toEqual([...first, ...second].map((e) => e.id).sort())
      // "a" lost its lease: its late completion deletes nothing.
      expect(yield* store.complete("a", first.map((e) => e.id))).toBe(0)
      expect(yield* store.complete("b", retaken.map((e) => e.id))).toBe(5)
    })))

  it.effect("events of one key are claimed one at a time, in order, unless they coalesce", () =>
    withDb(Effect.gen(function*() {
      yield* clear
      yield* TestClock.setTime(Date.now())
      const store = yield* Store
      const Ordered = OutboxEvent.make({ resourceType: "ordered", action: "op", payload: Schema.Number })
      const Latest = OutboxEvent.make({ resourceType: "latest", action: "sync", payload: Schema.Number, coalesce: true })
      yield* enqueueMany([
        event(Ordered, { resourceId: 1, payload: 1 }),
        event(Ordered, { resourceId: 1, payload: 2 }),
        event(Latest, { resourceId: 1, payload: 1 }),
        event(Latest, { resourceId: 1, payload: 2 }),
        event(Latest, { resourceId: 1, payload: 3 })
      ])
      const a = yield* store.claim("a", 10_000, 10)
      expect(a.map((e) => [e.orderingKey, e.payload])).toEqual([
        ["ordered:1", 1],
        ["latest:1", 1],
        ["latest:1", 2],
        ["latest:1", 3]
      ])
      // While "a" holds ordered:1, nobody may take its next event.
      expect(yield* store.claim("b", 10_000, 10)).toEqual([])
      yield* store.complete("a", a.map((e) => e.id))
      const b = yield* store.claim("b", 10_000, 10)
      expect(b.map((e) => e.payload)).toEqual([2])
    })))

  it.live("the per-key decision sees a lease committed after the claim statement began (no snapshot window)", () =>
    withDb(Effect.gen(function*() {
      yield* clear
      const Latest = OutboxEvent.make({ resourceType: "latest", action: "sync", payload: Schema.Number, coalesce: true })
      yield* enqueue(Latest, { resourceId: 9, payload: 1 })
      const claimer = new pg.Client({ connectionString: url })
      yield* Effect.promise(() => claimer.connect())
      // One statement, one snapshot taken before its sleep; meanwhile another worker leases the key.
      const decision = claimer.query<{ seen_by_snapshot: number; free: boolean }>(
        `SELECT (SELECT count(*)::int FROM sync_outbox WHERE ordering_key = 'latest:9' AND lease_expires_at > now()) AS seen_by_snapshot,
                cardinality(sync_outbox_claim_keys(ARRAY['latest:9'], now())) = 1 AS free
         FROM (SELECT pg_sleep(0.5)) AS pause`
      )
      yield* Effect.promise(() => new Promise((r) => setTimeout(r, 150)))
      const store = yield* Store
      expect(yield* store.claim("other-worker", 60_000, 10)).toHaveLength(1)
      const { rows } = yield* Effect.promise(() => decision)
      yield* Effect.promise(() => claimer.end())
      // The statement's own snapshot cannot see that lease; the key's check, taken under its lock, does.
      expect(rows[0]).toEqual({ seen_by_snapshot: 0, free: false })
    })))

  it.live("a key whose older coalescing event another claim holds locked is left alone, not leased without it (it would apply after the newer ones)", () =>
    withDb(Effect.gen(function*() {
      yield* clear
      const Latest = OutboxEvent.make({ resourceType: "latest", action: "sync", payload: Schema.Number, coalesce: true })
      const [oldest] = yield* enqueueMany([1, 2, 3].map((n) => event(Latest, { resourceId: 7, payload: n })))
      yield* enqueue(Latest, { resourceId: 8, payload: 1 })
      // Another worker's claim picked the oldest event (its row is locked until that statement
      // ends) and lost the key: it will not lease it, and a claim skips locked rows.
      const other = new pg.Client({ connectionString: url })
      yield* Effect.promise(() => other.connect())
      yield* Effect.promise(() => other.query("BEGIN").then(() => other.query(`SELECT id FROM sync_outbox WHERE id = $1 FOR UPDATE`, [oldest])))
      const leases = yield* Leases
      const meanwhile = yield* leases.claim("w", 30_000, 10)
      yield* Effect.promise(() => other.query("COMMIT").then(() => other.end()))
      // Leasing payloads 2 and 3 would have applied 3, and later 1 on its own: an older event after a newer one.
      expect(meanwhile.map((e) => [e.orderingKey, e.payload])).toEqual([["latest:8", 1]])
      const after = yield* leases.claim("w", 30_000, 10)
      expect(after.map((e) => e.payload)).toEqual([1, 2, 3])
    })))

  it.effect("a claim reports which events have another of their key waiting behind them", () =>
    withDb(Effect.gen(function*() {
      yield* clear
      yield* TestClock.setTime(Date.now())
      const store = yield* Store
      const Ordered = OutboxEvent.make({ resourceType: "ordered", action: "op", payload: Schema.Number })
      yield* enqueueMany([
        event(Ordered, { resourceId: 1, payload: 1 }),
        event(Ordered, { resourceId: 1, payload: 2 }),
        event(Ordered, { resourceId: 2, payload: 3 })
      ])
      const first = yield* store.claim("a", 10_000, 10)
      expect(first.map((e) => [e.payload, e.successor])).toEqual([[1, true], [3, false]])
      yield* store.complete("a", first.map((e) => e.id))
      const second = yield* store.claim("a", 10_000, 10)
      expect(second.map((e) => [e.payload, e.successor])).toEqual([[2, false]])
    })))
})

describe("Admin: dead letters", () => {
  it.live("are listed oldest first by id, past 9 too (not as text), and the limit keeps the oldest", () =>
    withDb(Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* sql`TRUNCATE sync_outbox CASCADE`
      yield* sql`SELECT setval(pg_get_serial_sequence('sync_outbox', 'id'), 7)`
      const leases = yield* Leases
      const admin = yield* Store
      yield* enqueueMany(Array.from({ length: 5 }, (_, i) => event(SetValue, { payload: { key: `dead${i}`, value: "v" } })))
      const ids = (yield* leases.claim("undertaker", 30_000, 10)).map((e) => e.id)
      expect(ids).toEqual(["8", "9", "10", "11", "12"])
      yield* leases.fail("undertaker", ids.map((id) => ({ id, attempt: 1, tag: "T", message: "m", nextRetryAt: new Date(), dead: true })))
      expect((yield* admin.listDead()).map((e) => e.id)).toEqual(["8", "9", "10", "11", "12"])
      expect((yield* admin.listDead({ limit: 2 })).map((e) => e.id)).toEqual(["8", "9"])
    })))
})

describe("Admin: failure history", () => {
  it.live("leaves with its event, however the event leaves: applied, purged, an operator's DELETE, a TRUNCATE", () =>
    withDb(Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* clear
      const leases = yield* Leases
      const admin = yield* Store
      const history = (ids: ReadonlyArray<string>) =>
        Effect.map(sql<{ n: number }>`SELECT count(*)::int AS n FROM sync_outbox_failures WHERE outbox_id IN ${sql.in(ids.map(Number))}`, (rows) => rows[0]!.n)
      const ids = yield* enqueueMany(Array.from({ length: 4 }, (_, i) => event(SetValue, { payload: { key: `history${i}`, value: "v" } })))
      const [retried, purged, deleted, kept] = ids as [string, string, string, string]
      expect((yield* leases.claim("w", 30_000, 10)).map((e) => e.id)).toEqual(ids)
      yield* leases.fail("w", [
        { id: retried, attempt: 1, tag: "Refused", message: "once", nextRetryAt: new Date(0), dead: false },
        ...[purged, deleted, kept].map((id) => ({ id, attempt: 1, tag: "Refused", message: "for good", nextRetryAt: new Date(0), dead: true }))
      ])
      expect(yield* history(ids)).toBe(4)
      // Applied on its second attempt: its history goes with it, the others' stays.
      expect((yield* leases.claim("w", 30_000, 10)).map((e) => e.id)).toEqual([retried])
      expect(yield* leases.complete("w", [retried])).toBe(1)
      expect(yield* history([retried])).toBe(0)
      expect(yield* admin.purge({ _tag: "One", id: purged })).toBe(1)
      expect(yield* history([purged])).toBe(0)
      yield* sql`DELETE FROM sync_outbox WHERE id = ${Number(deleted)}`
      expect(yield* history([deleted])).toBe(0)
      expect((yield* admin.show(kept)).failures.map((f) => f.message)).toEqual(["for good"])
      // TRUNCATE ... RESTART IDENTITY reuses ids: no old history may attach to a new event.
      yield* sql`TRUNCATE sync_outbox RESTART IDENTITY`
      expect(yield* history([kept])).toBe(0)
      const fresh = yield* enqueue(SetValue, { payload: { key: "history-new", value: "v" } })
      expect((yield* admin.show(fresh)).failures).toEqual([])
    })))

  // The foreign key's cascade ran as the history's owner, on the table it named: so does the trigger.
  it.live("leaves with its event whoever deletes it: a worker's role that may not delete history rows, a session whose search_path does not name the outbox's schema", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* sql`TRUNCATE sync_outbox CASCADE`
      const leases = yield* Leases
      const role = `so_worker_${Math.random().toString(36).slice(2, 8)}`
      const history = Effect.map(sql<{ n: number }>`SELECT count(*)::int AS n FROM sync_outbox_failures`, (rows) => rows[0]!.n)
      yield* Effect.acquireRelease(
        sql.unsafe(`CREATE ROLE ${role} NOLOGIN;
          GRANT SELECT, INSERT, UPDATE, DELETE ON sync_outbox TO ${role};
          GRANT SELECT, INSERT ON sync_outbox_failures TO ${role}`),
        () => Effect.orDie(sql.unsafe(`DROP OWNED BY ${role}; DROP ROLE ${role}`))
      )
      const asWorker = <A, E, R>(body: Effect.Effect<A, E, R>) =>
        sql.withTransaction(Effect.zipRight(sql.unsafe(`SET LOCAL ROLE ${role}`), body))
      const ids = yield* enqueueMany(Array.from({ length: 2 }, (_, i) => event(SetValue, { payload: { key: `role${i}`, value: "v" } })))
      const [applied, deleted] = ids as [string, string]
      yield* asWorker(Effect.gen(function*() {
        yield* leases.claim("w", 30_000, 10)
        yield* leases.fail("w", ids.map((id) => ({ id, attempt: 1, tag: "Refused", message: "once", nextRetryAt: new Date(0), dead: false })))
      }))
      expect(yield* history).toBe(2)
      yield* asWorker(leases.claim("w", 30_000, 1))
      expect(yield* asWorker(leases.complete("w", [applied]))).toBe(1)
      expect(yield* history).toBe(1)
      yield* sql.withTransaction(Effect.zipRight(
        sql`SET LOCAL search_path = ''`,
        sql`DELETE FROM public.sync_outbox WHERE id = ${Number(deleted)}`
      ))
      expect(yield* history).toBe(0)
    }).pipe(
      Effect.scoped,
      Effect.provide(Leases.layerWith({ callTimeout: Duration.seconds(5) }).pipe(Layer.provideMerge(PgClient.layer({ url: Redacted.make(url) }))))
    ))

  it.live("is cleared through its primary key, never by a scan: not even by a session that planned the trigger while the history was empty", () =>
    withDb(Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* clear
      yield* sql`ANALYZE sync_outbox_failures`
      const ids = yield* enqueueMany(Array.from({ length: 20 }, (_, i) => event(SetValue, { payload: { key: `plan${i}`, value: "v" } })))
      // One connection throughout: the first delete plans the trigger's statement (the history is
      // empty and known to be), then a burst of failures fills it, then more events leave. The
      // scans are counted within one transaction (the counters may hold earlier ones not yet flushed).
      const scans = sql<{ seq: number; idx: number }>`SELECT seq_scan::int AS seq, idx_scan::int AS idx
        FROM pg_stat_xact_user_tables WHERE relid = 'sync_outbox_failures'::regclass`.pipe(Effect.map((rows) => rows[0]!))
      const [before, after] = yield* sql.withTransaction(Effect.gen(function*() {
        const before = yield* scans
        yield* sql`DELETE FROM sync_outbox WHERE id = ${Number(ids[0])}`
        yield* sql`INSERT INTO sync_outbox_failures SELECT id, a, 'Refused', 'm', now() FROM sync_outbox, generate_series(1, 50) a`
        yield* sql`DELETE FROM sync_outbox WHERE id IN ${sql.in(ids.slice(1, 10).map(Number))}`
        return [before, yield* scans] as const
      }))
      expect(after.seq - before.seq).toBe(0)
      expect(after.idx - before.idx).toBeGreaterThan(0)
      expect((yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM sync_outbox_failures`)[0]!.n).toBe(10 * 50)
    })))
})

describe("Leases through a plain SqlClient (no PgPool: another client, PGlite, a test kit)", () => {
  it.live("the same statements, the same rows and the same counts as on the pool", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* sql`TRUNCATE sync_outbox, sync_outbox_journal CASCADE`
      const leases = yield* Leases
      const admin = yield* Admin
      yield* enqueueMany(Array.from({ length: 4 }, (_, i) => event(SetValue, { payload: { key: `plain${i}`, value: "v" } })))
      const claimed = yield* leases.claim("plain", 30_000, 10)
      expect(claimed.map((e) => e.orderingKey)).toEqual(["thing:plain0", "thing:plain1", "thing:plain2", "thing:plain3"])
      const [a, b, c, d] = claimed.map((e) => e.id) as [string, string, string, string]
      expect(yield* leases.renew("plain", [a, b], new Date(Date.now() + 60_000))).toBe(2)
      expect(yield* leases.renew("someone-else", [a], new Date(Date.now() + 60_000))).toBe(0)
      expect(yield* leases.release("plain", [d])).toBe(1)
      yield* leases.fail("plain", [{ id: c, attempt: 1, tag: "Boom", message: "no", nextRetryAt: new Date(Date.now() + 60_000), dead: false }])
      expect((yield* admin.show(c)).failures.map((f) => f.errorTag)).toEqual(["Boom"])
      expect(yield* leases.nextWakeAt).toBeGreaterThan(Date.now())
      expect(yield* leases.complete("plain", [a])).toBe(1)
      expect(yield* leases.complete("plain", [b], { appliedAt: new Date(), supersededBy: new Map() })).toBe(1)
      expect(yield* leases.complete("plain", [a, b])).toBe(0)
      const journaled = yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM sync_outbox_journal WHERE id = ${b}::bigint`
      expect(journaled[0]!.n).toBe(1)
      yield* leases.heartbeat({ owner: "plain", hostname: "h", pid: 1, breaker: "closed", listener: "off", loop: "running", loopError: null })
      expect((yield* admin.workers(60_000)).map((w) => w.owner)).toEqual(["plain"])
      yield* leases.unregister("plain")
      expect(yield* admin.workers(60_000)).toEqual([])
      expect((yield* admin.stats).pending).toBe(2)
    }).pipe(
      Effect.provide(Layer.merge(Leases.layerWith({ callTimeout: Duration.seconds(5) }), Admin.layer).pipe(
        Layer.provideMerge(PgClient.layer({ url: Redacted.make(url) }))
      ))
    ))
})

describe("Leases: commits", () => {
  // The test servers may run with synchronous_commit off for speed: this database says on, so
  // that what the statements set is seen (new connections take the database's setting).
  beforeAll(async () => {
    const client = new pg.Client({ connectionString: url })
    await client.connect()
    try {
      const [{ db }] = (await client.query<{ db: string }>("SELECT current_database() AS db")).rows as [{ db: string }]
      await client.query(`ALTER DATABASE ${pg.escapeIdentifier(db)} SET synchronous_commit = on`)
    } finally {
      await client.end()
    }
  })
  // Each write's statement-level trigger records how its transaction is set to commit.
  const withCommitLog = <A, E, R>(body: Effect.Effect<A, E, R>) =>
    Effect.acquireUseRelease(
      Effect.flatMap(SqlClient.SqlClient, (sql) =>
        sql.unsafe(`
          CREATE TABLE IF NOT EXISTS commit_log (seq bigserial, op text, setting text);
          TRUNCATE commit_log;
          CREATE OR REPLACE FUNCTION commit_log_write() RETURNS trigger LANGUAGE plpgsql AS $$
          BEGIN INSERT INTO commit_log (op, setting) VALUES (TG_OP, current_setting('synchronous_commit')); RETURN NULL; END $$;
          CREATE TRIGGER commit_log_write AFTER UPDATE OR DELETE ON sync_outbox FOR EACH STATEMENT EXECUTE FUNCTION commit_log_write();`)),
      () => body,
      () => Effect.orDie(Effect.flatMap(SqlClient.SqlClient, (sql) => sql.unsafe(`DROP TRIGGER IF EXISTS commit_log_write ON sync_outbox`)))
    )
  const logged = Effect.flatMap(SqlClient.SqlClient, (sql) =>
    Effect.map(sql<{ op: string; setting: string }>`SELECT op, setting FROM commit_log ORDER BY seq`, (rows) => rows.map((r) => `${r.op} ${r.setting}`)))

  // claim, renew, fail (one event), release (another), complete and complete journaled (two more).
  const everyWrite = Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    yield* sql`TRUNCATE sync_outbox, sync_outbox_journal CASCADE`
    yield* sql`TRUNCATE commit_log`
    const leases = yield* Leases
    yield* enqueueMany(Array.from({ length: 4 }, (_, i) => event(SetValue, { payload: { key: `commit${i}`, value: "v" } })))
    const [a, b, c, d] = (yield* leases.claim("committer", 30_000, 10)).map((e) => e.id) as [string, string, string, string]
    yield* leases.renew("committer", [a], new Date(Date.now() + 60_000))
    yield* leases.fail("committer", [{ id: a, attempt: 1, tag: "T", message: "m", nextRetryAt: new Date(), dead: false }])
    yield* leases.release("committer", [b])
    yield* leases.complete("committer", [c])
    yield* leases.complete("committer", [d], { appliedAt: new Date(), supersededBy: new Map() })
    return yield* logged
  })
  const plain = (options: { readonly asyncCommit?: boolean; readonly config?: Partial<OutboxConfigShape> }) =>
    Leases.layerWith({ callTimeout: Duration.seconds(5), asyncCommit: options.asyncCommit }).pipe(
      Layer.provide(OutboxConfig.layer(options.config ?? {})),
      Layer.provideMerge(PgClient.layer({ url: Redacted.make(url) }))
    )

  it.live("completions, failures and releases commit without waiting for the WAL flush; leases (claim, renew) always wait", () =>
    withCommitLog(everyWrite).pipe(
      Effect.map((log) => expect(log).toEqual(["UPDATE on", "UPDATE on", "UPDATE off", "UPDATE off", "DELETE off", "DELETE off"])),
      Effect.provide(plain({}))
    ))

  it.live("asyncCommit: false, given to Leases or by OutboxConfig in context, keeps every commit synchronous", () =>
    Effect.gen(function*() {
      const allOn = ["UPDATE on", "UPDATE on", "UPDATE on", "UPDATE on", "DELETE on", "DELETE on"]
      expect(yield* withCommitLog(everyWrite).pipe(Effect.provide(plain({ asyncCommit: false })))).toEqual(allOn)
      expect(yield* withCommitLog(everyWrite).pipe(Effect.provide(plain({ config: { asyncCommit: false } })))).toEqual(allOn)
    }))

  it.live("a statement run inside the caller's own transaction leaves that transaction's commit as it was", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* sql`TRUNCATE sync_outbox, sync_outbox_journal CASCADE`
      const leases = yield* Leases
      yield* enqueue(SetValue, { payload: { key: "inside", value: "v" } })
      const [id] = (yield* leases.claim("committer", 30_000, 10)).map((e) => e.id)
      const setting = yield* sql.withTransaction(Effect.zipRight(
        leases.complete("committer", [id!]),
        Effect.map(sql<{ setting: string }>`SELECT current_setting('synchronous_commit') AS setting`, (rows) => rows[0]!.setting)
      ))
      expect(setting).toBe("on")
    }).pipe(Effect.provide(plain({}))))
})

/** Only the looks under test analyze the outbox (not autovacuum's timing); emptied, and analyzed so if `analyzed`. */
const quietOutbox = (analyzed: boolean) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    Effect.all([
      sql`ALTER TABLE sync_outbox SET (autovacuum_enabled = false)`,
      sql`TRUNCATE sync_outbox CASCADE`,
      ...(analyzed ? [sql`VACUUM ANALYZE sync_outbox`] : [])
    ], { discard: true }))

/** 20,000 pending events in one statement, their keys tagged. */
const burst = (tag: string) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql`INSERT INTO sync_outbox (resource_type, action, ordering_key, payload)
      SELECT 'thing', 'set', 'thing:' || ${tag} || g, jsonb_build_object('k', 'thing:' || ${tag} || g) FROM generate_series(1, 20000) g`)

const reltuples = Effect.flatMap(SqlClient.SqlClient, (sql) =>
  Effect.map(sql<{ n: number }>`SELECT reltuples::float8 AS n FROM pg_class WHERE oid = 'sync_outbox'::regclass`, (rows) => rows[0]!.n))

describe("Leases: statistics", () => {
  it.live("a table that changed by more than its size since it was analyzed is analyzed again, once", () =>
    withDb(Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      // Only these looks analyze the table here, not autovacuum's timing.
      yield* sql`ALTER TABLE sync_outbox SET (autovacuum_enabled = false)`
      yield* clear
      yield* sql`ANALYZE sync_outbox`
      const leases = yield* Leases
      expect(yield* leases.refreshStatistics).toBe(false)
      yield* sql`INSERT INTO sync_outbox (resource_type, action, ordering_key, payload)
        SELECT 'thing', 'set', 'thing:s' || g, '{}'::jsonb FROM generate_series(1, 3000) g`
      // The inserting session's counts reach the statistics views within a second or so.
      yield* eventually(leases.refreshStatistics, (analyzed) => analyzed, { timeout: 15_000, interval: 200 })
      expect(yield* reltuples).toBeGreaterThan(1_000)
      expect(yield* leases.refreshStatistics).toBe(false)
      yield* clear
    })))

  it.live("a burst that makes the table four times the size its statistics describe is analyzed the moment it commits, a small busy table never", () =>
    withDb(Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* quietOutbox(true)
      const leases = yield* Leases
      // A trickle: rows come and go, far more changes than rows, the table stays small.
      for (let round = 0; round < 20; round++) {
        yield* sql`INSERT INTO sync_outbox (resource_type, action, ordering_key, payload)
          SELECT 'thing', 'set', 'thing:t' || g, '{}'::jsonb FROM generate_series(1, 100) g`
        yield* sql`DELETE FROM sync_outbox`
      }
      expect(yield* leases.refreshStatisticsIfOutgrown).toBe(false)
      yield* burst("b")
      // No waiting for the statistics views: the file's size tells at once.
      expect(yield* leases.refreshStatisticsIfOutgrown).toBe(true)
      expect(yield* reltuples).toBeGreaterThan(10_000)
      expect(yield* leases.refreshStatisticsIfOutgrown).toBe(false)
      yield* clear
    })))

  it.live("a role that may not ANALYZE the outbox never finds it outgrown (ANALYZE would only warn, four times a second); its owner does", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* quietOutbox(true)
      const leases = yield* Leases
      const role = `so_worker_${Math.random().toString(36).slice(2, 8)}`
      yield* Effect.acquireRelease(
        sql.unsafe(`CREATE ROLE ${role} NOLOGIN; GRANT SELECT, INSERT, UPDATE, DELETE ON sync_outbox TO ${role}`),
        () => Effect.orDie(sql.unsafe(`DROP OWNED BY ${role}; DROP ROLE ${role}`))
      )
      yield* burst("r")
      const asWorker = sql.withTransaction(Effect.zipRight(sql.unsafe(`SET LOCAL ROLE ${role}`), leases.refreshStatisticsIfOutgrown))
      expect(yield* asWorker).toBe(false)
      expect(yield* leases.refreshStatisticsIfOutgrown).toBe(true)
      yield* sql`TRUNCATE sync_outbox CASCADE`
    }).pipe(
      Effect.scoped,
      Effect.provide(Leases.layerWith({ callTimeout: Duration.seconds(5) }).pipe(Layer.provideMerge(PgClient.layer({ url: Redacted.make(url) }))))
    ))

  it.live("a burst into the room an earlier burst left (the table emptied and analyzed, a dead letter at its end) is analyzed the moment it commits", () =>
    withDb(Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* quietOutbox(false)
      yield* burst("first")
      // Drained, but for one dead letter at the end (no VACUUM can truncate the file), and analyzed
      // as autovacuum would: many pages, no rows.
      yield* sql`UPDATE sync_outbox SET status = 'dead' WHERE id = (SELECT max(id) FROM sync_outbox)`
      yield* sql`DELETE FROM sync_outbox WHERE status = 'pending'`
      yield* sql`VACUUM ANALYZE sync_outbox`
      const leases = yield* Leases
      expect(yield* leases.refreshStatisticsIfOutgrown).toBe(false)
      yield* burst("second")
      // The file did not grow: the rows went into its empty pages.
      expect(yield* leases.refreshStatisticsIfOutgrown).toBe(true)
      expect(yield* reltuples).toBeGreaterThan(10_000)
      expect(yield* leases.refreshStatisticsIfOutgrown).toBe(false)
      yield* clear
    })))
})
