/**
 * The worker under faults of its own making: a loop that dies, Redis unreachable at start, a
 * statement timeout, a row no handler can apply. Its own file: these count loop errors on purpose.
 */
import { SqlClient, SqlError } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Exit, Layer, Logger, LogLevel, Redacted, Ref, Schema } from "effect"
import pg from "pg"
import { beforeAll } from "vitest"
import { Database, enqueue, handle, handleBatch, Handlers, Leases, Listener, OutboxConfig, OutboxEvent, RedisSink, Store, Worker } from "../src/index.js"
import { countRows, eventually, freshDatabase, prefix, realSleep, redisLayer, sqlLayer, workerLayer } from "./support/harness.js"
import { startProxy } from "./support/proxy.js"

let url: string
beforeAll(async () => {
  url = await freshDatabase("worker_faults")
})

/** Every log line the worker writes, as "LEVEL message". */
const captureLogs = () => {
  const lines: Array<string> = []
  const logger = Logger.add(
    Logger.make(({ logLevel, message }) => {
      lines.push(`${logLevel.label} ${(Array.isArray(message) ? message : [message]).map(String).join(" ")}`)
    })
  )
  return { lines, logger }
}

const Note = OutboxEvent.make({ resourceType: "note", action: "set", payload: Schema.String })
const noteHandler = (p: string) =>
  handle(Note, ({ payload }) => Effect.flatMap(RedisSink, (r) => r.use((c) => c.set(`${p}${payload}`, "ok"))))

const workerRow = Effect.flatMap(SqlClient.SqlClient, (sql) =>
  sql<{ loop: string; loop_error: string | null }>`SELECT loop, loop_error FROM sync_outbox_workers`).pipe(
    Effect.map((rows) => rows[0] ?? { loop: "absent", loop_error: null })
  )

describe("Worker faults", () => {
  it.live("a loop that dies restarts with backoff; meanwhile its heartbeat says 'restarting' with the reason, then 'running' again", () =>
    Effect.gen(function*() {
      const p = prefix()
      const broken = yield* Ref.make(true)
      const { lines, logger } = captureLogs()
      // A lease protocol whose claim dies (a bug, not a typed failure) while `broken` holds.
      const store = Layer.effect(
        Leases,
        Effect.map(Leases, (s) => ({
          ...s,
          claim: (owner: string, leaseMs: number, limit: number) =>
            Effect.flatMap(Ref.get(broken), (b) => (b ? Effect.die(new Error("claim exploded")) : s.claim(owner, leaseMs, limit)))
        }))
      ).pipe(Layer.provide(Leases.layer))
      const worker = Worker.layer.pipe(
        Layer.provideMerge(Layer.mergeAll(store, Listener.layer({ url: Redacted.make(url), channel: "sync_outbox" }), Handlers.layer(noteHandler(p)))),
        Layer.provideMerge(Layer.mergeAll(OutboxConfig.layer({ interval: Duration.millis(500) }), sqlLayer(url), redisLayer())),
        Layer.orDie
      )
      yield* Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        yield* sql`TRUNCATE sync_outbox CASCADE`
        const id = yield* enqueue(Note, { payload: "a" })
        const row = yield* eventually(workerRow, (r) => r.loop === "restarting", { timeout: 10_000 })
        expect(row.loop_error).toContain("claim exploded")
        expect(yield* countRows()).toBe(1)
        yield* Ref.set(broken, false)
        yield* eventually(countRows(), (n) => n === 0, { timeout: 10_000 })
        yield* eventually(workerRow, (r) => r.loop === "running" && r.loop_error === null, { timeout: 10_000 })
        void id
        expect(yield* Effect.flatMap(RedisSink, (r) => r.use((c) => c.get(`${p}a`)))).toBe("ok")
        expect(lines.filter((l) => l.includes("worker loop died, restarting")).length).toBeGreaterThan(0)
      }).pipe(Effect.provide(worker), Effect.provide(logger))
    }), 30_000)

  it.live("a worker started while Redis is unreachable says so once, at start, with its breaker open", () =>
    Effect.gen(function*() {
      const { lines, logger } = captureLogs()
      yield* Effect.gen(function*() {
        const worker = yield* Worker
        yield* eventually(worker.breaker.get, (s) => s === "open", { timeout: 10_000 })
        yield* realSleep(1_500)
        const said = lines.filter((l) => l.includes("Redis unavailable"))
        expect(said).toHaveLength(1)
        expect(said[0]).toMatch(/^WARN sync-outbox: Redis unavailable, pausing claims \(unreachable at start: .+\)$/)
      }).pipe(
        Effect.provide(workerLayer({ url, redis: "redis://127.0.0.1:1", handlers: Handlers.layer(noteHandler(prefix())) })),
        Effect.provide(logger)
      )
    }), 30_000)

  it.live("a statement timeout (a lock wait) is one log line per incident, naming the cause, and the worker carries on", () =>
    Effect.gen(function*() {
      const p = prefix()
      const { lines, logger } = captureLogs()
      const database = Database.layer({ url: Redacted.make(url), statementTimeout: Duration.millis(300) })
      const worker = Worker.layer.pipe(
        Layer.provideMerge(Layer.mergeAll(Store.layer, Listener.off, Handlers.layer(noteHandler(p)))),
        Layer.provideMerge(Layer.mergeAll(OutboxConfig.layer({ interval: Duration.millis(200) }), database, redisLayer())),
        Layer.orDie
      )
      yield* Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        yield* sql`TRUNCATE sync_outbox CASCADE`
        const locker = new pg.Client({ connectionString: url })
        yield* Effect.promise(() => locker.connect())
        yield* Effect.promise(() => locker.query("BEGIN; LOCK TABLE sync_outbox IN ACCESS EXCLUSIVE MODE"))
        yield* eventually(Effect.sync(() => lines.filter((l) => l.includes("worker loop failed"))), (l) => l.length >= 1, { timeout: 10_000 })
        yield* Effect.promise(() => locker.query("ROLLBACK").then(() => locker.end()))
        yield* enqueue(Note, { payload: "after" })
        yield* eventually(countRows(), (n) => n === 0, { timeout: 10_000 })
        const failures = lines.filter((l) => l.includes("worker loop failed"))
        for (const line of failures) {
          expect(line).toMatch(/^WARN sync-outbox: worker loop failed, restarting: SqlError: .+statement timeout$/)
          expect(line).not.toContain("\n")
        }
      }).pipe(Effect.provide(worker), Effect.provide(logger))
    }), 30_000)

  it.live("outcomes that cannot be written are retried quietly: one warning when it starts, one line when they are written", () =>
    Effect.gen(function*() {
      const p = prefix()
      const { lines, logger } = captureLogs()
      const Blocked = OutboxEvent.make({ resourceType: "blocked_note", action: "set", payload: Schema.String })
      const worker = Worker.layer.pipe(
        Layer.provideMerge(Layer.mergeAll(
          Store.layer,
          // NOTIFY brings the event in; nothing notifies again once its outcome is given up on.
          Listener.layer({ url: Redacted.make(url), channel: "sync_outbox" }),
          Handlers.layer(handle(Blocked, ({ payload }) => Effect.flatMap(RedisSink, (r) => r.use((c) => c.set(`${p}${payload}`, "ok")))))
        )),
        Layer.provideMerge(Layer.mergeAll(OutboxConfig.layer({ interval: Duration.millis(100) }), sqlLayer(url), redisLayer())),
        Layer.orDie
      )
      const sql = yield* SqlClient.SqlClient
      // The completion's DELETE fails while the switch is on, as it would against a Postgres that is restarting.
      yield* sql.unsafe(`CREATE TABLE IF NOT EXISTS blocked_deletes (on_ boolean);
        CREATE OR REPLACE FUNCTION block_delete() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF OLD.resource_type = 'blocked_note' AND EXISTS (SELECT 1 FROM blocked_deletes) THEN RAISE EXCEPTION 'deletes are blocked'; END IF;
          RETURN OLD;
        END $$;
        DROP TRIGGER IF EXISTS block_delete ON sync_outbox;
        CREATE TRIGGER block_delete BEFORE DELETE ON sync_outbox FOR EACH ROW EXECUTE FUNCTION block_delete();
        TRUNCATE sync_outbox CASCADE; INSERT INTO blocked_deletes VALUES (true);`)
      yield* Effect.gen(function*() {
        yield* enqueue(Blocked, { payload: "k" })
        yield* eventually(Effect.sync(() => lines.filter((l) => l.includes("recording outcomes failed"))), (l) => l.length >= 1, { timeout: 10_000 })
        // Attempts go on meanwhile (20 ms, doubling, then every 500 ms): several within two seconds.
        yield* realSleep(2_000)
        yield* sql`DELETE FROM blocked_deletes`
        yield* eventually(countRows(), (n) => n === 0, { timeout: 10_000 })
        const warnings = lines.filter((l) => l.startsWith("WARN"))
        expect(warnings).toHaveLength(1)
        expect(warnings[0]).toMatch(/^WARN sync-outbox: recording outcomes failed, retrying for up to half a lease: .*deletes are blocked/)
        const recorded = lines.filter((l) => l.includes("outcomes recorded after"))
        expect(recorded).toHaveLength(1)
        expect(Number(/after (\d+) attempts/.exec(recorded[0]!)![1])).toBeGreaterThan(3)
      }).pipe(
        Effect.provide(worker),
        Effect.provide(Logger.minimumLogLevel(LogLevel.Info)),
        Effect.provide(logger),
        Effect.ensuring(sql.unsafe(`DROP TRIGGER IF EXISTS block_delete ON sync_outbox; DROP TABLE IF EXISTS blocked_deletes`).pipe(Effect.orDie))
      )
    }).pipe(Effect.provide(sqlLayer(url))), 30_000)

  it.live("shutdown while outcomes cannot be written is bounded by the call timeout, not held for half a lease", () =>
    Effect.gen(function*() {
      const p = prefix()
      const { lines, logger } = captureLogs()
      const Stuck = OutboxEvent.make({ resourceType: "stuck_note", action: "set", payload: Schema.String })
      const worker = Worker.layer.pipe(
        Layer.provideMerge(Layer.mergeAll(
          Store.layer,
          Listener.layer({ url: Redacted.make(url), channel: "sync_outbox" }),
          Handlers.layer(handle(Stuck, ({ payload }) => Effect.flatMap(RedisSink, (r) => r.use((c) => c.set(`${p}${payload}`, "ok")))))
        )),
        Layer.provideMerge(Layer.mergeAll(
          // Writing down would be retried for up to 30 s; shutdown is meant to take the call timeout and a second.
          OutboxConfig.layer({ leaseDuration: Duration.seconds(60), callTimeout: Duration.seconds(1) }),
          sqlLayer(url),
          redisLayer()
        )),
        Layer.orDie
      )
      const sql = yield* SqlClient.SqlClient
      // The completion's DELETE fails while the switch is on, as it would against a Postgres that is away.
      yield* sql.unsafe(`CREATE TABLE IF NOT EXISTS stuck_deletes (on_ boolean);
        CREATE OR REPLACE FUNCTION stuck_delete() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF OLD.resource_type = 'stuck_note' AND EXISTS (SELECT 1 FROM stuck_deletes) THEN RAISE EXCEPTION 'deletes are blocked'; END IF;
          RETURN OLD;
        END $$;
        DROP TRIGGER IF EXISTS stuck_delete ON sync_outbox;
        CREATE TRIGGER stuck_delete BEFORE DELETE ON sync_outbox FOR EACH ROW EXECUTE FUNCTION stuck_delete();
        TRUNCATE sync_outbox CASCADE; INSERT INTO stuck_deletes VALUES (true);`)
      let stopAt = 0
      yield* Effect.scoped(Effect.gen(function*() {
        yield* Layer.build(worker)
        yield* enqueue(Stuck, { payload: "k" })
        yield* eventually(Effect.sync(() => lines.some((l) => l.includes("recording outcomes failed"))), (seen) => seen, { timeout: 10_000 })
        stopAt = Date.now()
      })).pipe(
        Effect.provide(logger),
        Effect.ensuring(sql.unsafe(`DROP TRIGGER IF EXISTS stuck_delete ON sync_outbox; DROP TABLE IF EXISTS stuck_deletes`).pipe(Effect.orDie))
      )
      // A timeout inside a finalizer waited for its effect: the stop took the whole 30 s.
      expect(Date.now() - stopAt).toBeLessThan(6_000)
      // The row is still leased: it comes back when its lease ends, applied again then (at least once).
      expect(yield* countRows()).toBe(1)
    }).pipe(Effect.provide(sqlLayer(url))), 60_000)

  it.live("outcomes given up on (longer than half a lease) are claimed again once their leases end, not at the next poll", () =>
    Effect.gen(function*() {
      const p = prefix()
      const { lines, logger } = captureLogs()
      const Blocked = OutboxEvent.make({ resourceType: "blocked_late", action: "set", payload: Schema.String })
      let applies = 0
      const worker = Worker.layer.pipe(
        Layer.provideMerge(Layer.mergeAll(
          Store.layer,
          // NOTIFY brings the event in; nothing notifies again once its outcome is given up on.
          Listener.layer({ url: Redacted.make(url), channel: "sync_outbox" }),
          Handlers.layer(handle(Blocked, ({ payload }) =>
            Effect.flatMap(RedisSink, (r) => r.use((c) => c.set(`${p}${payload}`, String(++applies))))))
        )),
        // A poll far longer than the test: only the worker's own timers can bring the row back.
        Layer.provideMerge(Layer.mergeAll(
          OutboxConfig.layer({ interval: Duration.seconds(120), leaseDuration: Duration.seconds(2), callTimeout: Duration.millis(500) }),
          sqlLayer(url),
          redisLayer()
        )),
        Layer.orDie
      )
      const sql = yield* SqlClient.SqlClient
      yield* sql.unsafe(`CREATE TABLE IF NOT EXISTS blocked_late_deletes (on_ boolean);
        CREATE OR REPLACE FUNCTION block_late_delete() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF OLD.resource_type = 'blocked_late' AND EXISTS (SELECT 1 FROM blocked_late_deletes) THEN RAISE EXCEPTION 'deletes are blocked'; END IF;
          RETURN OLD;
        END $$;
        DROP TRIGGER IF EXISTS block_late_delete ON sync_outbox;
        CREATE TRIGGER block_late_delete BEFORE DELETE ON sync_outbox FOR EACH ROW EXECUTE FUNCTION block_late_delete();
        TRUNCATE sync_outbox CASCADE; INSERT INTO blocked_late_deletes VALUES (true);`)
      yield* Effect.gen(function*() {
        yield* enqueue(Blocked, { payload: "k" })
        yield* eventually(Effect.sync(() => lines.filter((l) => l.includes("outcomes could not be recorded"))), (l) => l.length >= 1, {
          timeout: 20_000
        })
        yield* sql`DELETE FROM blocked_late_deletes`
        // Its lease (2 s) ends; the worker claims it again at once, two minutes before its next poll.
        yield* eventually(countRows(), (n) => n === 0, { timeout: 8_000 })
        expect(applies).toBe(2)
        // Taken back by the worker that held it, alive all along: its lost outcome is no failed attempt.
        expect(yield* sql<{ attempts: number }>`SELECT attempts FROM sync_outbox_journal WHERE resource_type = 'blocked_late'`).toEqual([{ attempts: 1 }])
      }).pipe(
        Effect.provide(worker),
        Effect.provide(logger),
        Effect.ensuring(sql.unsafe(`DROP TRIGGER IF EXISTS block_late_delete ON sync_outbox; DROP TABLE IF EXISTS blocked_late_deletes`).pipe(Effect.orDie))
      )
    }).pipe(Effect.provide(sqlLayer(url))), 40_000)

  it.live("Postgres refused for seconds mid-run is one 'worker loop failed' warning and one line when the loop runs again, not a warning per restart", () =>
    Effect.gen(function*() {
      const p = prefix()
      const { lines, logger } = captureLogs()
      const target = new URL(url)
      const proxy = yield* Effect.acquireRelease(Effect.promise(() => startProxy(Number(target.port || 5432))), (x) => Effect.promise(x.close))
      const viaProxy = new URL(url)
      viaProxy.host = `127.0.0.1:${proxy.port}`
      yield* Effect.flatMap(SqlClient.SqlClient, (sql) => sql`TRUNCATE sync_outbox CASCADE`)
      yield* Effect.gen(function*() {
        const worker = yield* Worker
        yield* eventually(worker.loop.get, (s) => s === "running")
        yield* Effect.promise(proxy.cut)
        // Every restart of the loop fails while Postgres is refused (they are 2 s apart at most).
        yield* Effect.provide(enqueue(Note, { payload: "during" }), sqlLayer(url))
        yield* realSleep(6_000)
        yield* Effect.promise(proxy.restore)
        yield* eventually(Effect.provide(countRows(), sqlLayer(url)), (n) => n === 0, { timeout: 20_000 })
        const failed = lines.filter((l) => l.includes("worker loop failed"))
        expect(failed).toHaveLength(1)
        expect(failed[0]).toMatch(/^WARN sync-outbox: worker loop failed, restarting: SqlError: .+$/)
        const again = lines.filter((l) => l.includes("worker loop running again"))
        expect(again).toHaveLength(1)
        expect(Number(/after (\d+) failure/.exec(again[0]!)?.[1])).toBeGreaterThanOrEqual(3)
        expect(yield* Effect.flatMap(RedisSink, (r) => r.use((c) => c.get(`${p}during`)))).toBe("ok")
      }).pipe(
        Effect.provide(workerLayer({ url: viaProxy.toString(), handlers: Handlers.layer(noteHandler(p)), config: { interval: Duration.millis(200) } })),
        Effect.provide(logger)
      )
    }).pipe(Effect.scoped, Effect.provide(sqlLayer(url))), 40_000)

  it.live("sync_outbox_enqueue without the id its type requires is dead at once with MissingResourceId, never applied", () =>
    Effect.gen(function*() {
      let applied = 0
      const Needy = OutboxEvent.make({ resourceType: "needy", action: "update", payload: Schema.NullOr(Schema.Unknown), requiresResourceId: true })
      const handlers = Handlers.layer(handle(Needy, () => Effect.sync(() => applied++)))
      yield* Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        yield* sql`TRUNCATE sync_outbox CASCADE`
        const [row] = yield* sql<{ id: string }>`SELECT sync_outbox_enqueue('needy', 'update')::text AS id`
        const shown = yield* eventually(Effect.flatMap(Store, (s) => s.show(row!.id)), (s) => s.event.status === "dead")
        expect(shown.failures.map((f) => [f.attempt, f.errorTag, f.message])).toEqual([
          [1, "MissingResourceId", "needy/update needs a resource id (needy id missing)"]
        ])
        yield* sql`SELECT sync_outbox_enqueue('needy', 'update', 5)`
        yield* eventually(countRows("pending"), (n) => n === 0)
        expect(applied).toBe(1)
      }).pipe(Effect.provide(workerLayer({ url, handlers })))
    }), 30_000)

  it.live("a burst of 20,000 into an outbox whose claim was planned while it was empty drains within seconds, on one connection with a 1 s statement timeout, the statistics refreshed", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* sql`TRUNCATE sync_outbox CASCADE`
      // Only the worker's own looks refresh the statistics here, not autovacuum's timing.
      yield* sql`ALTER TABLE sync_outbox SET (autovacuum_enabled = false)`
      yield* Effect.addFinalizer(() => sql`ALTER TABLE sync_outbox RESET (autovacuum_enabled)`.pipe(Effect.orDie))
      yield* sql`ANALYZE sync_outbox`
      const analyzed = sql<{ n: number }>`SELECT analyze_count::int AS n FROM pg_stat_user_tables WHERE relname = 'sync_outbox'`.pipe(
        Effect.map((rows) => rows[0]!.n)
      )
      const analyzedBefore = yield* analyzed
      const Burst = OutboxEvent.make({ resourceType: "burst", action: "set", payload: Schema.Number })
      const applied = yield* Ref.make(0)
      const handlers = Handlers.layer(handleBatch(Burst, (events) => Effect.as(Ref.update(applied, (n) => n + events.length), events.map(() => Exit.void))))
      const database = Database.layer({ url: Redacted.make(url), maxConnections: 1, statementTimeout: Duration.seconds(1) })
      yield* Effect.gen(function*() {
        // Idle claims every 20 ms: the one connection keeps the claim's plan for an empty table.
        yield* realSleep(500)
        yield* sql`INSERT INTO sync_outbox (resource_type, action, ordering_key, payload)
          SELECT 'burst', 'set', 'burst:' || i, to_jsonb(i) FROM generate_series(1, 20000) i`
        // On that plan a claim checks each of 100 candidates against 20,000 rows and outlasts the
        // statement timeout (1 s here); the worker's looks at the table's size, its statistics and
        // its timed-out claims are what keep the drain to seconds.
        yield* eventually(Ref.get(applied), (n) => n === 20_000, { timeout: 15_000 })
      }).pipe(Effect.provide(Worker.layer.pipe(
        Layer.provide(Layer.mergeAll(Store.layer, Listener.layer({ url: Redacted.make(url), channel: "sync_outbox" }), handlers)),
        Layer.provide(Layer.mergeAll(OutboxConfig.layer({ batchSize: 100, interval: Duration.millis(20) }), database, redisLayer())),
        Layer.orDie
      )))
      expect(yield* countRows()).toBe(0)
      // Postgres reports its activity counters asynchronously: give them the time to arrive.
      yield* eventually(analyzed, (n) => n > analyzedBefore)
    }).pipe(Effect.scoped, Effect.provide(sqlLayer(url))), 60_000)

  it.live("a claim that fills Postgres's lock table (a large batch of distinct keys, several workers) is one warning that names the two settings to change", () =>
    Effect.gen(function*() {
      yield* Effect.flatMap(SqlClient.SqlClient, (sql) => sql`TRUNCATE sync_outbox CASCADE`)
      const p = prefix()
      const { lines, logger } = captureLogs()
      yield* enqueue(Note, { payload: "one" })
      let claims = 0
      const full = new SqlError.SqlError({
        cause: Object.assign(new Error("out of shared memory"), { code: "53200", hint: "You might need to increase max_locks_per_transaction." }),
        message: "sync-outbox claim failed"
      })
      const failing = Layer.effect(Leases, Effect.map(Leases, (leases) => ({
        ...leases,
        claim: (owner: string, leaseMs: number, limit: number) =>
          Effect.suspend(() => (claims++ === 0 ? Effect.fail(full) : leases.claim(owner, leaseMs, limit)))
      }))).pipe(Layer.provide(Store.layer))
      yield* Effect.scoped(Effect.gen(function*() {
        yield* Layer.build(Worker.layer.pipe(
          Layer.provide(Layer.mergeAll(failing, Listener.layer({ url: Redacted.make(url), channel: "sync_outbox" }), Handlers.layer(noteHandler(p)))),
          Layer.provide(Layer.mergeAll(OutboxConfig.layer({}), sqlLayer(url), redisLayer()))
        ))
        yield* eventually(countRows(), (n) => n === 0, { timeout: 20_000 })
      })).pipe(Effect.provide(logger))
      const warnings = lines.filter((l) => l.includes("worker loop failed"))
      expect(warnings).toHaveLength(1)
      expect(warnings[0]).toContain("out of shared memory")
      expect(warnings[0]).toContain("lower SYNC_OUTBOX_BATCH_SIZE, or raise Postgres's max_locks_per_transaction")
    }).pipe(Effect.provide(sqlLayer(url))), 30_000)

  it.live("a claim cut short by the statement timeout has the statistics looked at before the loop claims again; one that could not reach Postgres does not", () =>
    Effect.gen(function*() {
      yield* Effect.flatMap(SqlClient.SqlClient, (sql) => sql`TRUNCATE sync_outbox CASCADE`)
      const p = prefix()
      yield* enqueue(Note, { payload: "one" })
      const calls: Array<string> = []
      let claims = 0
      const failures = [
        new SqlError.SqlError({ cause: Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:5432"), { code: "ECONNREFUSED" }), message: "claim failed" }),
        new SqlError.SqlError({ cause: Object.assign(new Error("canceling statement due to statement timeout"), { code: "57014" }), message: "claim failed" })
      ]
      const counted = Layer.effect(Leases, Effect.map(Leases, (leases) => ({
        ...leases,
        refreshStatistics: Effect.sync(() => void calls.push("look")).pipe(Effect.zipRight(leases.refreshStatistics)),
        claim: (owner: string, leaseMs: number, limit: number) =>
          Effect.suspend(() => {
            const n = claims++
            calls.push(n < failures.length ? `claim ${n} failed` : `claim ${n}`)
            return n < failures.length ? Effect.fail(failures[n]!) : leases.claim(owner, leaseMs, limit)
          })
      }))).pipe(Layer.provide(Store.layer))
      yield* Effect.scoped(Effect.gen(function*() {
        yield* Layer.build(Worker.layer.pipe(
          Layer.provide(Layer.mergeAll(counted, Listener.layer({ url: Redacted.make(url), channel: "sync_outbox" }), Handlers.layer(noteHandler(p)))),
          Layer.provide(Layer.mergeAll(OutboxConfig.layer({ batchSize: 100 }), sqlLayer(url), redisLayer()))
        ))
        yield* eventually(countRows(), (n) => n === 0, { timeout: 20_000 })
      }))
      expect(calls.slice(0, 4)).toEqual(["claim 0 failed", "claim 1 failed", "look", "claim 2"])
    }).pipe(Effect.provide(sqlLayer(url))), 30_000)
})
