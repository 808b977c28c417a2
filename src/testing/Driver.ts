/**
 * The test kit's driver, whichever store holds the outbox: the real `Worker`, the user's
 * `Handlers`, an in-memory Redis the test controls, and `drain` / `advance` / inspection over
 * them. The library takes time only from Effect's `Clock` (times are statement parameters, never
 * `now()`), so `TestClock`'s time drives retries and leases. The worker's own timers are the
 * kit's (`WorkerClock`): they fire at a `drain` or an `advance` that reaches them, not on a bare
 * `TestClock.adjust`, and a timeout whose call returned leaves nothing behind.
 *
 * The test drives the worker with `drain` (apply what is due now, report what happened) and
 * `advance` (move `TestClock`, stopping at every due time on the way, as a worker that never
 * sleeps late would). The driver reads the outbox through `StoreRows`: SQL for a database
 * (PGlite, or a real Postgres through `layerWith`), the rows themselves for the in-memory store.
 * This module loads no database: `OutboxTest` assembles it with one.
 */
import { SqlClient, type SqlError } from "@effect/sql"
import { Chunk, Clock, Context, Data, DateTime, Duration, Effect, Layer, Option, SubscriptionRef } from "effect"
import type { TestClock } from "effect"
import { describeFailure, type EventNotFound, type FailureRecord, type InvalidConfig, LeaseExpired } from "../Errors.js"
import type { Handlers } from "../Handlers.js"
import * as InFlight from "../InFlight.js"
import { Leases } from "../Leases.js"
import { Listener } from "../Listener.js"
import { OutboxConfig, type OutboxConfigShape } from "../OutboxConfig.js"
import type { ClaimedEvent, StoredEvent } from "../OutboxEvent.js"
import { classify, RedisSink, type RedisSinkShape } from "../RedisSink.js"
import { Store } from "../Store.js"
import { type BreakerState, Worker } from "../Worker.js"
import { groupByKey } from "../worker/Outcome.js"
import * as MemoryRedis from "./MemoryRedis.js"
import type { OutboxRows, SnapshotRow } from "./MemoryOutbox.js"
import { StoreTracker, trackCalls, Tracker } from "./Tracker.js"
import { WorkerClock } from "./WorkerClock.js"

export type { OutboxRows, SnapshotRow } from "./MemoryOutbox.js"

/** An event as a drain report names it: the claimed event's identity and payload. */
export type EventSummary = Pick<ClaimedEvent, "id" | "resourceType" | "action" | "resourceId" | "orderingKey" | "payload">

/** One failed attempt recorded during a drain. */
export interface FailedAttempt {
  readonly event: EventSummary
  readonly attempt: number
  readonly errorTag: string
  readonly message: string
  /** True when this attempt made the event a dead letter. */
  readonly dead: boolean
  /** When the next attempt is due; null for a dead letter. */
  readonly nextRetryAt: Date | null
}

/** What a `drain` (or an `advance`) did. */
export interface DrainReport {
  /** The `Clock` time the drain ended at. */
  readonly at: Date
  /** Applied by their handler and deleted. */
  readonly applied: ReadonlyArray<EventSummary>
  /** Deleted without their own apply: collapsed into a newer coalescing event of the same key. */
  readonly superseded: ReadonlyArray<EventSummary>
  /** Every failed attempt, in order, including those that ended dead. */
  readonly failed: ReadonlyArray<FailedAttempt>
  /** The failed attempts that made their event a dead letter. */
  readonly dead: ReadonlyArray<FailedAttempt>
  /** "open" while the worker waits for the sink to answer again (no attempt is spent meanwhile). */
  readonly breaker: BreakerState
  /** Pending events left, due or not. */
  readonly pending: number
  /** The earliest scheduled retry, if any. */
  readonly nextRetryAt: Date | null
}

/** An event with its whole failure history. */
export interface Inspected {
  readonly event: StoredEvent
  readonly failures: ReadonlyArray<FailureRecord>
}

/**
 * The worker did not settle in real time: a handler still runs (under `TestClock` its timeout
 * only fires when the test moves time past `callTimeout`), or the session is held by an open
 * transaction of the test's own.
 */
export class DrainTimeout extends Data.TaggedError("DrainTimeout")<{
  readonly message: string
  readonly inFlight: ReadonlyArray<string>
}> {}

/** `advance` was given a duration it cannot move the clock by (infinity). */
export class InvalidAdvance extends Data.TaggedError("InvalidAdvance")<{ readonly message: string }> {}

export interface OutboxTestShape {
  /** Apply everything due now (at the current `Clock` time) and report what happened. */
  readonly drain: Effect.Effect<DrainReport, DrainTimeout | SqlError.SqlError>
  /**
   * Move time forward by `duration`, stopping at every retry, lease expiry or timer of the
   * worker's (a call timeout, a breaker probe) that falls due on the way and draining there,
   * then drain at the end, with `TestClock` moved to the end. Fibers of the test's own that
   * sleep on `TestClock` wake at their time, in order with those steps. Under the live clock, waits.
   */
  readonly advance: (duration: Duration.DurationInput) => Effect.Effect<DrainReport, DrainTimeout | InvalidAdvance | SqlError.SqlError>
  /** Pending events (due or scheduled), oldest first, with their failure history. */
  readonly pending: Effect.Effect<ReadonlyArray<Inspected>, SqlError.SqlError>
  /** Dead letters, oldest first, with their failure history. */
  readonly dead: Effect.Effect<ReadonlyArray<Inspected>, SqlError.SqlError>
  /** One event and its failure history. */
  readonly show: (id: string) => Effect.Effect<Inspected, EventNotFound | SqlError.SqlError>
  /** The worker's breaker. */
  readonly breaker: Effect.Effect<BreakerState>
  readonly sink: {
    /** From now on every Redis command fails as on a lost connection (the worker's breaker opens). */
    readonly unavailable: Effect.Effect<void>
    /** Redis answers again; the breaker closes at its next probe (within `probeCap`). */
    readonly available: Effect.Effect<void>
    /** Every live key and its value (strings, hashes as objects, sets sorted, lists). */
    readonly keys: Effect.Effect<Record<string, unknown>>
    /** Messages published by handlers. */
    readonly published: Effect.Effect<ReadonlyArray<{ readonly channel: string; readonly message: string }>>
  }
}

/** How a test takes the sink away and gives it back (the in-memory one flips a switch). */
export class SinkControl extends Context.Tag("sync-outbox/testing/SinkControl")<SinkControl, {
  readonly unavailable: Effect.Effect<void>
  readonly available: Effect.Effect<void>
}>() {}

/** The in-memory Redis behind the test's `RedisSink`. */
export class TestSink extends Context.Tag("sync-outbox/testing/TestSink")<TestSink, MemoryRedis.MemoryRedis>() {}

/** The outbox as the driver reads it (see `OutboxRows`). */
export class StoreRows extends Context.Tag("sync-outbox/testing/StoreRows")<StoreRows, OutboxRows>() {}

// `ORDER BY sync_outbox.id`: a bare `id` would be the text alias, and "10" sorts before "9".
const snapshotSql = `SELECT id::text AS id, resource_type, action, resource_id::float8 AS resource_id, ordering_key,
  payload, coalesce, retry_count, status, last_error, next_retry_at, lease_expires_at FROM sync_outbox ORDER BY sync_outbox.id`

/** The outbox's rows read with SQL, through the `SqlClient` in context. */
export const sqlRows: Layer.Layer<StoreRows, never, SqlClient.SqlClient> = Layer.effect(
  StoreRows,
  Effect.map(SqlClient.SqlClient, (sql): OutboxRows => {
    const ids = (text: string, params: ReadonlyArray<unknown>) =>
      Effect.map(sql.unsafe<{ id: string }>(text, params).withoutTransform, (rows) => rows.map((r) => r.id))
    return {
      snapshot: sql.unsafe<SnapshotRow>(snapshotSql).withoutTransform,
      leasedBy: (owner) => ids(`SELECT id::text AS id FROM sync_outbox WHERE lease_owner = $1 ORDER BY sync_outbox.id`, [owner]),
      idsWhere: (status) => ids(`SELECT id::text AS id FROM sync_outbox WHERE status = $1 ORDER BY sync_outbox.id`, [status])
    }
  })
)

// ---------------------------------------------------------------------------------------------

/** When something next falls due after `now`: a scheduled retry or a lease running out. */
const nextDueAt = (rows: Map<string, SnapshotRow>, now: number): number | null => {
  let next: number | null = null
  for (const row of rows.values()) {
    if (row.status !== "pending") continue
    for (const at of [row.next_retry_at, row.lease_expires_at]) {
      if (at instanceof Date && at.getTime() > now && (next === null || at.getTime() < next)) next = at.getTime()
    }
  }
  return next
}

/** Whether a pending event is claimable by time alone at `now` (its retry due, its lease, if any, run out). */
const dueNow = (rows: Map<string, SnapshotRow>, now: number): boolean => {
  for (const row of rows.values()) {
    if (row.status !== "pending") continue
    const retryDue = !(row.next_retry_at instanceof Date) || row.next_retry_at.getTime() <= now
    const leaseOver = !(row.lease_expires_at instanceof Date) || row.lease_expires_at.getTime() <= now
    if (retryDue && leaseOver) return true
  }
  return false
}

const summary = (row: SnapshotRow): EventSummary => ({
  id: row.id,
  resourceType: row.resource_type,
  action: row.action,
  resourceId: row.resource_id,
  orderingKey: row.ordering_key,
  payload: row.payload
})

const defaultStart = Date.parse("2026-01-01T00:00:00Z")

const defaultDrainTimeout = Duration.seconds(10)

const isTestClock = (clock: Clock.Clock): clock is TestClock.TestClock => "adjust" in clock && "setTime" in clock

/** Real time a worker that has not settled must stay still before an advance moves time for it. */
const waitingAfterMs = 50

/**
 * A turn of the event loop in real time: fibers already scheduled (whatever the clock) run first.
 * A timer, not `setImmediate` (which is cheaper under load): Effect's scheduler hands its queue
 * to a `setTimeout` after a long run of microtasks, and only a later timer is sure to follow it.
 */
const nextTurn = Effect.async<void>((resume) => {
  const timer = setTimeout(() => resume(Effect.void), 0)
  return Effect.sync(() => clearTimeout(timer))
})

/** The worker's own clock under `TestClock` (undefined under the live clock: it keeps its timers). */
class WorkerTimers extends Context.Tag("sync-outbox/testing/WorkerTimers")<WorkerTimers, WorkerClock | undefined>() {}

/** One per kit (a layer is built once per test, so the sink and the worker share it). */
const workerTimers = Layer.effect(
  WorkerTimers,
  Effect.map(Effect.clock, (clock) => isTestClock(clock) ? new WorkerClock(clock, InFlight.nextCall()) : undefined)
)

/** The driver over the worker, the store and the sink in context. */
export const makeDriver = (drainTimeout: Duration.Duration) =>
  Effect.gen(function*() {
    const rows = yield* StoreRows
    const tracker = yield* StoreTracker
    const store = yield* Store
    const worker = yield* Worker
    const control = yield* SinkControl
    const timers = yield* WorkerTimers
    const memory = yield* Effect.serviceOption(TestSink)
    const inMemory = <A>(f: (sink: MemoryRedis.MemoryRedis) => A) =>
      Option.match(memory, {
        onNone: () => Effect.dieMessage("sync-outbox/testing: only the in-memory sink (OutboxTest.layer, OutboxTest.layerMemory) lists its keys and messages"),
        onSome: (sink) => Effect.sync(() => f(sink))
      })
    const nowMs = Clock.currentTimeMillis
    // The worker's time: within an advance it may be ahead of the test's `TestClock` (see `WorkerClock`).
    const workerNow = timers === undefined ? nowMs : Effect.sync(() => timers.unsafeCurrentTimeMillis())

    const snapshot = Effect.map(rows.snapshot, (all) => new Map(all.map((r) => [r.id, r] as const)))

    const leasedByWorker = rows.leasedBy(worker.owner)

    /**
     * Wait until the worker has nothing left to do now. The engine's own claim is the judge of
     * what is claimable: settled means a claim that began after our last wake-up came back
     * empty and none of the worker's statements is still running, and that stays so for a turn
     * of the event loop. That turn matters: the worker records a batch on a fiber of its own and
     * may claim again before that fiber has started (a store in memory answers at once, so the
     * claim can come back empty before the batch's rows are even written down). While its
     * breaker is open it claims nothing: then settled means nothing it holds is still leased
     * (that batch was handed back).
     */
    /** Whether no statement of the worker's started or finished since `seen`, a turn of the event loop later. */
    const quiet = (seen: number) =>
      Effect.as(nextTurn, tracker.done === seen && tracker.inFlight === 0)

    /**
     * Until one of the worker's statements finishes, or `waiting` says to stop (true then).
     * Meanwhile the test may move `TestClock` itself (a drain forked, then `TestClock.adjust` past
     * a hung handler's `callTimeout`): the worker's timers are the kit's, not `TestClock`'s, so
     * the ones that fall due are fired here.
     */
    const changed = (seen: number, deadline: number, waiting: () => boolean): Effect.Effect<boolean> =>
      timers === undefined ? Effect.as(tracker.changed(seen, deadline), false) : Effect.gen(function*() {
        while (tracker.done === seen && Date.now() < deadline) {
          timers.fireDue()
          if (waiting()) return true
          yield* tracker.changed(seen, Math.min(deadline, Date.now() + 10))
        }
        return false
      })

    /**
     * Settled, as above. Within an advance, also when the worker has stayed still for
     * `waitingAfterMs` of real time (no statement of its own, and no tracked call of this kit's,
     * `InFlight.runningCalls`: `RedisSink.use`, `InFlight.tryPromise`, a PGlite statement) while it
     * has a timer set: a handler sleeping, retrying on a schedule, or hung until its `callTimeout`,
     * waits for time that only the advance moves. The advance moves time to the next timer if it
     * falls due on its way and settles again (as `TestClock` fires a sleep once every fiber has
     * suspended), or else ends there, that event still in flight. (So a handler whose own
     * untracked promise takes longer than that in real time may see its `callTimeout` fire if
     * the advance passes it; a `drain` never moves time.)
     */
    const settle = (withinAdvance: boolean, within: Duration.Duration = drainTimeout) => Effect.gen(function*() {
      const deadline = Date.now() + Duration.toMillis(within)
      const isOpen = Effect.map(SubscriptionRef.get(worker.breaker), (b) => b === "open")
      let mark = tracker.claimsStarted
      let lastDone = tracker.done
      let stillSince = Date.now()
      const waitingOnTimers = () => {
        // Still since the last time a statement finished, or one or a tracked call was seen running:
        // a handler between two long calls (a Redis call, then a short await of its own) is not still.
        if (
          tracker.done !== lastDone || tracker.inFlight !== 0 ||
          (timers !== undefined && InFlight.runningCalls(timers.callsFrom) > 0)
        ) {
          lastDone = tracker.done
          stillSince = Date.now()
          return false
        }
        if (!withinAdvance || timers === undefined) return false
        return timers.nextAt() !== null && Date.now() - stillSince >= waitingAfterMs
      }
      yield* worker.wake
      // Looked at again each time one of the worker's statements finishes: nothing else moves it.
      while (Date.now() <= deadline) {
        const seen = tracker.done
        if (tracker.inFlight === 0) {
          if (tracker.claimsDone > mark && tracker.lastClaimSize === 0) {
            if (tracker.outcomes !== tracker.outcomesBeforeLastClaim) {
              // An outcome written down since that claim began may have freed a key it passed
              // over: a follow-up event a handler enqueued on its own key, leased until then. In
              // production that enqueue's notification makes the worker look again; the kit has no
              // LISTEN, so it asks for that look itself.
              mark = tracker.claimsStarted
              yield* worker.wake
              continue
            }
            // An empty claim may have been made ahead while a full batch is still being applied:
            // settled once the loop itself is back to waiting.
            if (yield* quiet(seen)) {
              if (yield* worker.idle) return
              timers?.fireDue()
              if (waitingOnTimers()) return
              yield* nextTurn
            }
            continue
          }
          if (yield* isOpen) {
            if ((yield* leasedByWorker).length === 0) {
              if (yield* quiet(seen)) return
              continue
            }
          } else if (tracker.claimsDone > mark) {
            // It claimed something: once that is applied, look again (what it applied may have
            // unblocked the next event of a key).
            mark = tracker.claimsStarted
            yield* worker.wake
          }
        }
        if (yield* changed(seen, deadline, waitingOnTimers)) return
      }
      const inFlight = yield* leasedByWorker
      return yield* new DrainTimeout({
        inFlight,
        message: `sync-outbox/testing: the worker did not settle within ${Duration.format(within)} of real time ` +
          `(${inFlight.length} event(s) in flight). A handler may still be running, or waiting on a timer (a sleep, a ` +
          `retry schedule, its callTimeout): under TestClock those fire only when advance moves time past them; drain ` +
          `does not move time. Or a transaction of the test's own holds the database.`
      })
    })

    const report = (snapshotBefore: Map<string, SnapshotRow>) =>
      Effect.gen(function*() {
        const after = yield* snapshot
        // An event written during the drain (a handler's follow-up event) and applied in it is in
        // neither snapshot: the worker's claim saw it.
        const before = new Map(snapshotBefore)
        for (const [id, event] of tracker.claimed) {
          if (before.has(id)) continue
          before.set(id, {
            id,
            resource_type: event.resourceType,
            action: event.action,
            resource_id: event.resourceId,
            ordering_key: event.orderingKey,
            payload: event.payload,
            coalesce: event.coalesce,
            retry_count: event.retryCount,
            status: "pending",
            last_error: null,
            next_retry_at: event.createdAt,
            lease_expires_at: null
          })
        }
        const changed = [...after.values()].filter((row) => {
          const old = before.get(row.id)
          return row.retry_count > 0 && (old === undefined || old.retry_count !== row.retry_count || old.status !== row.status)
        })
        const failed = changed.map((row): FailedAttempt => {
          // `last_error` is the latest failure, written with it: "<tag>: <message>" (a tag has
          // no ": "). The history table may hold an older attempt of the same number after a
          // requeue, so it is not read here.
          const [tag, ...rest] = (row.last_error ?? "").split(": ")
          return {
            event: summary(row),
            attempt: row.retry_count,
            errorTag: tag ?? "",
            message: rest.join(": "),
            dead: row.status === "dead",
            nextRetryAt: row.status === "dead" || !(row.next_retry_at instanceof Date) ? null : row.next_retry_at
          }
        })
        // A claim that finds a lease run out counts that run as the event's failed attempt
        // (LeaseExpired) and the worker runs the event at once: its row then shows only what came
        // of that run (gone, or the next failure), so the attempt the claim counted is read from
        // the claim. A row that still shows it (parked dead at once, or handed back) is reported above.
        const lost = [...tracker.claimed.values()].flatMap((event): Array<FailedAttempt> => {
          const row = after.get(event.id)
          if (event.abandonedBy === null || (row !== undefined && row.retry_count <= event.retryCount)) return []
          const lease = before.get(event.id)!.lease_expires_at
          const { message, tag } = describeFailure(new LeaseExpired({ owner: event.abandonedBy }))
          return [{
            event: summary(before.get(event.id)!),
            attempt: event.retryCount,
            errorTag: tag,
            message,
            dead: false,
            // Due again once the lease ran out; the claim that found it ran it.
            nextRetryAt: lease instanceof Date ? lease : null
          }]
        })
        const attempts = [...lost, ...failed].sort((a, b) =>
          a.event.id.length - b.event.id.length || (a.event.id < b.event.id ? -1 : a.event.id > b.event.id ? 1 : a.attempt - b.attempt)
        )
        const gone = [...before.values()].filter((row) => !after.has(row.id))
        // The engine collapses older coalescing events of a key into the newest one it holds:
        // a deleted coalescing event with a newer coalescing event of its key handled in the
        // same drain was superseded.
        const handled = [...gone.map((r) => r.id), ...changed.map((r) => r.id)]
        const byKey = new Map<string, Array<bigint>>()
        for (const id of handled) {
          const row = before.get(id) ?? after.get(id)!
          if (!row.coalesce) continue
          const list = byKey.get(row.ordering_key) ?? []
          list.push(BigInt(id))
          byKey.set(row.ordering_key, list)
        }
        // ...unless a non-coalescing event of the key lies between them: nothing covers one, so the
        // older event was applied itself, before it.
        const barriers = new Map<string, Array<bigint>>()
        for (const row of [...before.values(), ...after.values()]) {
          if (row.coalesce) continue
          const list = barriers.get(row.ordering_key) ?? []
          list.push(BigInt(row.id))
          barriers.set(row.ordering_key, list)
        }
        const coveredBy = (row: SnapshotRow) => {
          const id = BigInt(row.id)
          const walls = barriers.get(row.ordering_key) ?? []
          return (byKey.get(row.ordering_key) ?? []).some((newer) => newer > id && !walls.some((wall) => wall > id && wall < newer))
        }
        // Where the worker's claims of this drain are known, they say it: within one claim, the
        // coalescing events of a key that holds nothing else collapse into the newest (as the
        // worker groups them). An older event of the key claimed on its own was applied itself,
        // even if a newer one (a follow-up its handler enqueued) was handled in the same drain.
        const inClaims = new Set<string>()
        const collapsed = new Set<string>()
        for (const claim of tracker.claims) {
          for (const event of claim) inClaims.add(event.id)
          for (const group of groupByKey(claim)) for (const id of group.superseded) collapsed.add(id)
        }
        const supersededIds = new Set(
          gone.filter((row) => inClaims.has(row.id) ? collapsed.has(row.id) : row.coalesce && coveredBy(row)).map((r) => r.id)
        )
        const pending = [...after.values()].filter((r) => r.status === "pending")
        const scheduled = pending.map((r) => r.next_retry_at).filter((at): at is Date => at instanceof Date)
        const result: DrainReport = {
          at: new Date(yield* workerNow),
          applied: gone.filter((r) => !supersededIds.has(r.id)).map(summary),
          superseded: gone.filter((r) => supersededIds.has(r.id)).map(summary),
          failed: attempts,
          dead: failed.filter((f) => f.dead),
          breaker: yield* SubscriptionRef.get(worker.breaker),
          pending: pending.length,
          nextRetryAt: scheduled.length === 0 ? null : new Date(Math.min(...scheduled.map((d) => d.getTime())))
        }
        return [result, after] as const
      })

    // From a snapshot taken before the clock moved: the worker acts on its own due timers while
    // `TestClock` moves, and that belongs in the report too.
    const drainFrom = (before: Map<string, SnapshotRow>, withinAdvance: boolean) =>
      Effect.gen(function*() {
        tracker.claimed.clear()
        tracker.claims.length = 0
        timers?.fireDue()
        yield* settle(withinAdvance)
        const [result, after] = yield* report(before)
        const now = yield* workerNow
        inFlightAtEnd = new Map([...after].filter(([, row]) =>
          row.status === "pending" && row.lease_expires_at instanceof Date && row.lease_expires_at.getTime() > now
        ))
        return [result, after] as const
      })

    /**
     * The events still in flight when the last step returned. An advance may end with a handler
     * still at work on a promise of its own (not tracked: the worker looked still); what became of
     * its event meanwhile, between two steps (applied, or failed), is the next step's to report.
     */
    let inFlightAtEnd = new Map<string, SnapshotRow>()
    const carried = (before: Map<string, SnapshotRow>) => {
      const merged = new Map(before)
      for (const [id, row] of inFlightAtEnd) {
        const now = before.get(id)
        if (now === undefined || now.retry_count !== row.retry_count || now.status !== row.status) merged.set(id, row)
      }
      inFlightAtEnd = new Map()
      return merged
    }

    const drain = Effect.map(Effect.flatMap(snapshot, (before) => drainFrom(carried(before), false)), ([result]) => result)

    /**
     * Moves time to `at`, within an advance. The worker's alone when nothing of the test's own
     * sleeps on `TestClock` until then (that fiber would wake late); `TestClock` catches up at the end.
     */
    const moveTo = (clock: TestClock.TestClock, at: number) =>
      Effect.gen(function*() {
        // A fiber the test forked just before the advance gets to start (and reach its sleep) first.
        yield* Effect.yieldNow()
        if (timers !== undefined && !Chunk.some(yield* clock.sleeps, (sleep) => sleep <= at)) {
          timers.moveTo(at)
          return false
        }
        yield* clock.adjust(Duration.millis(at - (yield* nowMs)))
        timers?.caughtUp()
        return true
      })

    /**
     * `before` with the rows written while `TestClock` moved: a fiber of the test's own woke on the
     * way and enqueued (the worker's timers do not fire meanwhile), and the next drain's report
     * names what became of them (an event it applies is gone from the snapshot after).
     */
    const withWritten = (before: Map<string, SnapshotRow>) =>
      Effect.map(snapshot, (now) => {
        const merged = new Map(before)
        for (const [id, row] of now) if (!merged.has(id)) merged.set(id, row)
        return merged
      })

    const merge = (reports: ReadonlyArray<DrainReport>): DrainReport => {
      const last = reports[reports.length - 1]!
      return {
        ...last,
        applied: reports.flatMap((r) => r.applied),
        superseded: reports.flatMap((r) => r.superseded),
        failed: reports.flatMap((r) => r.failed),
        dead: reports.flatMap((r) => r.dead)
      }
    }

    const advance = (input: Duration.DurationInput) =>
      Effect.gen(function*() {
        // Time only moves forward: a negative or NaN amount is refused, not read as zero.
        const negative = (typeof input === "number" && !(input >= 0)) || (typeof input === "bigint" && input < 0n) ||
          (typeof input === "string" && /^\s*-/.test(input))
        const duration = negative ? undefined : Option.getOrUndefined(Duration.decodeUnknown(input))
        if (duration === undefined || !Duration.isFinite(duration)) {
          return yield* new InvalidAdvance({
            message: `sync-outbox/testing: advance needs a finite, non-negative duration, got ${
              duration === undefined ? String(input) : Duration.format(duration)
            }`
          })
        }
        const clock = yield* Effect.clock
        if (!isTestClock(clock)) {
          // The live clock moves by itself: let it, then drain what is due.
          yield* Effect.sleep(duration)
          return yield* drain
        }
        const target = (yield* nowMs) + Duration.toMillis(duration)
        const reports: Array<DrainReport> = []
        // Step to each due time on the way, as a worker awake all along would have acted there.
        // What one step ends with is what the next starts from: nothing runs in between.
        let before = carried(yield* snapshot)
        // What is due already is applied now, at the start, as by a worker awake all along.
        if (dueNow(before, yield* workerNow) || (timers?.nextAt() ?? Infinity) <= (yield* workerNow)) {
          const [result, after] = yield* drainFrom(before, true)
          reports.push(result)
          before = after
        }
        for (;;) {
          const now = yield* workerNow
          const rowDue = nextDueAt(before, now)
          const timerDue = timers?.nextAt() ?? null
          const at = rowDue === null ? timerDue : timerDue === null ? rowDue : Math.min(rowDue, timerDue)
          if (at === null || at >= target) break
          if (yield* moveTo(clock, at)) before = yield* withWritten(before)
          const [result, after] = yield* drainFrom(before, true)
          reports.push(result)
          before = after
        }
        const now = yield* nowMs
        if (target > now) {
          yield* Effect.yieldNow() // as in moveTo: a fiber forked just before reaches its sleep
          const woken = Chunk.some(yield* clock.sleeps, (sleep) => sleep <= target)
          yield* clock.adjust(Duration.millis(target - now))
          if (woken) before = yield* withWritten(before)
        }
        timers?.caughtUp()
        reports.push((yield* drainFrom(before, true))[0])
        return merge(reports)
      })

    const inspect = (ids: ReadonlyArray<string>) =>
      Effect.forEach(ids, (id) => Effect.orDie(store.show(id)))

    const idsWhere = rows.idsWhere

    // Once the test is over, a handler still hung must not hold the worker's finalizer forever.
    if (timers !== undefined) yield* Effect.addFinalizer(() => Effect.sync(() => timers.close()))

    // The worker looks once as it starts. Let that look end before the test's first step, so an
    // event the test writes next is the test's to drain (and to see in the report), not taken
    // by a claim already under way. Bounded by the default drainTimeout at least: a short one (set
    // so that a test of a hung handler fails fast) is for the test's steps; the kit's start (PGlite
    // starting the journal's pruner beside the first claim, on a loaded machine) may take longer,
    // and a DrainTimeout here would only be a defect of the layer that names no step of the test's.
    yield* Effect.orDie(settle(false, Duration.max(drainTimeout, defaultDrainTimeout)))

    return {
      drain,
      advance,
      pending: Effect.flatMap(idsWhere("pending"), inspect),
      dead: Effect.flatMap(idsWhere("dead"), inspect),
      show: store.show,
      breaker: SubscriptionRef.get(worker.breaker),
      sink: {
        unavailable: control.unavailable,
        available: control.available,
        keys: inMemory((sink) => sink.dump()),
        published: inMemory((sink) => sink.published())
      }
    } satisfies OutboxTestShape
  })

export interface OutboxTestOptions<E, R> {
  /**
   * The handlers under test; they may use `RedisSink` and `SqlClient`, which the kit provides
   * (on the in-memory store, a `SqlClient` that runs no SQL of theirs).
   */
  readonly handlers: Layer.Layer<Handlers, E, R>
  /** The worker's settings (maxRetries, backoffBase, ...), validated as in production. */
  readonly config?: Partial<OutboxConfigShape> | undefined
  /**
   * SQL for the test's own tables, applied once per database after the outbox's migrations.
   * Every table's rows are emptied before each test (ids restart at 1); the schema stays.
   * PGlite only (`OutboxTest.layer`): the in-memory store has no tables of yours.
   */
  readonly schema?: string | undefined
  /**
   * Real time a `drain` (or a step of an `advance`) may wait for the worker to settle before
   * failing. Default 10 s. The kit's start, which waits out the worker's first look, is allowed
   * the default at least.
   */
  readonly drainTimeout?: Duration.DurationInput | undefined
  /**
   * Under `TestClock`, the time the worker starts at, when the clock still reads 0 (the epoch):
   * default 2026-01-01T00:00:00Z. `TestClock.setTime` in the test works as well: the worker's
   * timers are the kit's (see `WorkerClock`), and the next `drain` fires what the jump passed.
   */
  readonly startAt?: DateTime.DateTime.Input | undefined
}

/** The in-memory Redis as a `RedisSink`, with the sink's own error classification. */
export const sinkLayer: Layer.Layer<RedisSink | TestSink | SinkControl> = Layer.effectContext(
  Effect.gen(function*() {
    // The worker's time: its handlers' TTLs count from it, also where it runs ahead within an advance.
    const clock = (yield* WorkerTimers) ?? (yield* Effect.clock)
    const memory = MemoryRedis.make({ now: () => clock.unsafeCurrentTimeMillis() })
    // As the real sink: the call is tracked by InFlight, so a timed-out call keeps its event held.
    const use = <A>(f: (client: RedisSinkShape["client"], signal: AbortSignal) => Promise<A>) =>
      InFlight.tryPromise({ try: (signal) => f(memory.client, signal), catch: classify })
    const sink: RedisSinkShape = { client: memory.client, use, ping: Effect.asVoid(use((c) => c.ping())) }
    const control = {
      unavailable: Effect.sync(() => memory.setAvailable(false)),
      available: Effect.sync(() => memory.setAvailable(true))
    }
    return Context.make(RedisSink, sink).pipe(Context.add(TestSink, memory), Context.add(SinkControl, control))
  })
).pipe(Layer.provide(workerTimers))

/**
 * The driver, as `tag`, over the worker with the given handlers on the given store (`Leases` for
 * the worker, `Store` for the test, `StoreRows` for the driver), under the given settings.
 */
export const assemble = <I, E, R, E2, R2>(
  tag: Context.Tag<I, OutboxTestShape>,
  options: Omit<OutboxTestOptions<E, R>, "schema">,
  stores: Layer.Layer<Leases | Store | StoreRows, E2, R2>
): Layer.Layer<
  I | Worker | Store | OutboxConfig,
  E | E2 | InvalidConfig,
  Exclude<R | R2, OutboxConfig> | RedisSink | SinkControl
> => {
  // The worker's poll and heartbeat interval: the kit wakes the worker itself (drain, advance),
  // so a long one only spares `advance` from stepping through timers that find nothing.
  const config = OutboxConfig.layer({ interval: Duration.days(1), ...options.config })
  const startClock = Layer.effectDiscard(Effect.gen(function*() {
    const clock = yield* Effect.clock
    if (!isTestClock(clock)) return
    if (options.startAt !== undefined) return yield* clock.setTime(DateTime.toEpochMillis(DateTime.unsafeMake(options.startAt)))
    if ((yield* Clock.currentTimeMillis) === 0) yield* clock.setTime(defaultStart)
  }))
  const store = Layer.effectContext(Effect.gen(function*() {
    const tracker = new Tracker()
    // The worker's statements go through Leases: those are the calls a drain waits out.
    const leases = trackCalls(yield* Leases, tracker)
    return Context.make(Leases, leases).pipe(
      Context.add(StoreTracker, tracker),
      Context.add(Store, yield* Store),
      Context.add(StoreRows, yield* StoreRows)
    )
  })).pipe(Layer.provide(stores))
  const worker = Layer.unwrapEffect(Effect.map(WorkerTimers, (clock) => {
    const running = Worker.layer.pipe(
      // No LISTEN: the test decides when the worker looks (drain, advance), so nothing happens
      // behind its back between two steps.
      Layer.provideMerge(Layer.mergeAll(store, Listener.off, options.handlers))
    )
    // Its fibers keep the clock they were started with: the worker's timers are the kit's.
    return clock === undefined ? running : Layer.locallyEffect(running, Effect.withClock(clock))
  })).pipe(Layer.provideMerge(workerTimers))
  const drainTimeout = Duration.decode(options.drainTimeout ?? defaultDrainTimeout)
  return Layer.scoped(tag, makeDriver(drainTimeout)).pipe(
    Layer.provideMerge(worker),
    Layer.provideMerge(Layer.merge(config, startClock))
  ) as never
}
