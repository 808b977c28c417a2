/**
 * The claim loop: wake on a notification (or a reconnect), at the earliest due retry, or on the
 * poll interval (which also finds leases that expired); claim a batch; apply it with bounded
 * concurrency; hand its outcomes to the `Recorder`; claim again until a claim comes back short.
 * Supervised: whatever ends it other than shutdown (a database error, a bug) is logged in one
 * line, counted, and the loop starts again after a capped backoff; its state is published for
 * the heartbeat.
 */
import type { SqlError } from "@effect/sql"
import { Cause, Clock, Deferred, Duration, Effect, Fiber, Metric, Option, Queue, Ref, Schedule, SubscriptionRef } from "effect"
import { oneLine } from "../Errors.js"
import type { HandlersShape } from "../Handlers.js"
import type { Claimed, LeasesShape } from "../Leases.js"
import * as Metrics from "../Metrics.js"
import type { OutboxConfigShape } from "../OutboxConfig.js"
import type { Breaker } from "./Breaker.js"
import { causeLine } from "./Causes.js"
import type { DueTimer } from "./DueTimer.js"
import { fromApply, type Group, groupByKey, isolateSuspects, type Outcome, partitionAbandoned } from "./Outcome.js"
import type { Recorder } from "./Recorder.js"

/**
 * The claim loop: `starting`, `running`, `restarting` (it failed and waits out its backoff),
 * `stopped` (shut down, or disabled).
 */
export type LoopState = "starting" | "running" | "restarting" | "stopped"

export interface LoopOptions {
  readonly owner: string
  readonly config: OutboxConfigShape
  readonly leases: LeasesShape
  readonly handlers: HandlersShape
  readonly breaker: Breaker
  readonly recorder: Recorder
  readonly dueTimer: DueTimer
  /** A sliding queue of one: a wake-up asked for while busy is kept, many collapse into one. */
  readonly wakeups: Queue.Queue<void>
  /** Done when the worker shuts down (which then wakes the loop). */
  readonly stopping: Deferred.Deferred<void>
  readonly state: SubscriptionRef.SubscriptionRef<LoopState>
  readonly error: Ref.Ref<string | null>
  /** True while the loop waits for its next look, with nothing claimed in hand. */
  readonly idle: Ref.Ref<boolean>
}

// A claim of a thousand rows takes tens of milliseconds, even at a million pending.
const slowClaimMs = 1_000
// How often, at most, a drain's first claim waits for a look at the outbox's size.
const outgrownLookMs = 250
// How long a failed or interrupted drain waits, at most, to hand back the claim it made ahead.
const giveBackBound = Duration.seconds(2)

/**
 * A claim cut short by Postgres's statement_timeout (57014), pg's client-side query timeout, or
 * `Leases`' own bound; not a connection that timed out (Postgres unreachable).
 */
const isTimeout = (error: SqlError.SqlError): boolean => {
  const cause = error.cause as { readonly code?: unknown; readonly message?: unknown } | null | undefined
  return cause?.code === "57014" || cause?.message === "Query read timeout" || / timed out$/.test(error.message)
}

/**
 * Postgres's lock table is full (53200, "out of shared memory"): a claim takes an advisory lock
 * per distinct ordering key of its batch, held to its end, and the table is shared by every
 * session (`max_locks_per_transaction` times the connections, some thousands by default).
 */
const lockTableFull = (cause: Cause.Cause<unknown>): boolean =>
  Option.exists(Cause.failureOption(cause), (error) => {
    const inner = typeof error === "object" && error !== null && "cause" in error ? error.cause : undefined
    return typeof inner === "object" && inner !== null && "code" in inner && inner.code === "53200"
  })
const lockTableHint =
  " (a claim takes one lock per distinct ordering key of its batch: lower SYNC_OUTBOX_BATCH_SIZE, or raise Postgres's max_locks_per_transaction)"

/** The supervised loop; it returns only once `stopping` is done. */
export const run = (options: LoopOptions): Effect.Effect<void> => {
  const { breaker, config, dueTimer, handlers, leases, owner, recorder, stopping, wakeups } = options
  const leaseMs = Duration.toMillis(config.leaseDuration)
  const isStopping = Deferred.isDone(stopping)

  // Checked before each piece of work starts: once we stop or the sink is known down, nothing new begins.
  const admit = Effect.zipWith(isStopping, breaker.isOpen, (stopping, open) => !stopping && !open)

  // Several non-coalescing events of one key (rare): strictly in order, one at a time, stopping
  // at the first that does not apply; the rest go back untouched.
  const runSequence = (sequence: ReadonlyArray<Claimed>, leaseEndsAt: number) =>
    Effect.gen(function*() {
      const outcomes: Array<Outcome> = []
      for (let i = 0; i < sequence.length; i++) {
        const event = sequence[i]!
        const [result] = yield* handlers.applyAll([event], { concurrency: 1, timeout: config.callTimeout, admit })
        const outcome = fromApply(event, [], result!, leaseEndsAt)
        outcomes.push(outcome)
        if (outcome._tag !== "Applied") {
          const rest = sequence.slice(i + 1).map((e) => e.id)
          if (rest.length > 0) outcomes.push({ _tag: "Released", ids: rest, unavailable: false })
          break
        }
      }
      return outcomes
    })

  /** Apply groups of a batch: keys with one event (or coalesced) together, sequences beside them. */
  const applyGroups = (groups: ReadonlyArray<Group<Claimed>>, leaseEndsAt: number) =>
    Effect.gen(function*() {
      const single = groups.filter((g) => g.sequence.length === 0)
      const sequences = groups.filter((g) => g.sequence.length > 0)
      const applySingles = handlers.applyAll(single.map((g) => g.target), { concurrency: config.concurrency, timeout: config.callTimeout, admit })
      // Usually every key has one event: then there is nothing to run beside the singles.
      const [results, sequenced] = sequences.length === 0
        ? [yield* applySingles, []]
        : yield* Effect.all([
          applySingles,
          Effect.forEach(sequences, (g) => runSequence(g.sequence, leaseEndsAt), { concurrency: config.concurrency })
        ], { concurrency: 2 })
      return [...single.map((g, i) => fromApply(g.target, g.superseded, results[i]!, leaseEndsAt)), ...sequenced.flat()]
    })

  /** Apply a claimed batch; returns whether an event done now has another of its key waiting. */
  const processBatch = (events: ReadonlyArray<Claimed>, leaseEndsAt: number) =>
    Effect.gen(function*() {
      // Out of attempts, the last one lost with its worker: parked whatever else happens (handed
      // back, it would be claimed as an ordinary event and run once more).
      const { abandoned, live } = partitionAbandoned(events, config.maxRetries)
      // What has not begun when we stop or the sink is known down goes back without an attempt.
      if ((yield* isStopping) || (yield* breaker.isOpen)) {
        yield* recorder.flush
        yield* recorder.record([...abandoned, { _tag: "Released", ids: live.map((e) => e.id), unavailable: false }])
        return false
      }
      const { alone, back, plain } = isolateSuspects(groupByKey(live), live)
      const first: ReadonlyArray<Outcome> = [...abandoned, ...(plain.length === 0 ? [] : yield* applyGroups(plain, leaseEndsAt))]
      if (first.some((o) => o._tag === "Released" && o.unavailable)) yield* breaker.open("a command failed")
      let last: ReadonlyArray<Outcome> = []
      if (alone !== undefined) {
        // Written down before the suspect runs: if it ends this process, nothing else is lost with it.
        yield* recorder.flush
        yield* recorder.record([...first, { _tag: "Released", ids: back, unavailable: false }])
        // Not begun if the rest of the batch opened the breaker, or we are stopping (admit).
        last = yield* applyGroups([alone], leaseEndsAt)
        if (last.some((o) => o._tag === "Released" && o.unavailable)) yield* breaker.open("a command failed")
      }
      yield* recorder.submit(alone === undefined ? first : last)
      // An event that is done (applied, or dead) unblocks the next one of its key; suspects handed
      // back are claimable at once.
      return back.length > 0 || [...first, ...last].some((o) =>
        (o._tag === "Applied" || o._tag === "Abandoned" || (o._tag === "Failed" && recorder.isDead(o.event, o.permanent))) &&
        o.event.successor
      )
    }).pipe(Effect.withSpan("sync-outbox.batch", { attributes: { size: events.length }, captureStackTrace: false }))

  // Stale statistics cost most in a backlog (a claim planned for an empty table scans every
  // pending row): look at them when a claim comes back full, at most once per poll interval,
  // beside the claims rather than before them (the look is a round trip, ANALYZE a sample of the
  // table); a failure only waits for the next look. Not for every short claim: on a small,
  // busy table the look would ANALYZE every few seconds, and each ANALYZE makes every
  // connection plan its prepared statements again (milliseconds, in the latency's tail).
  // Also when a claim is slow or timed out: a connection keeps the claim's plan, and one made
  // while the outbox was empty (the usual idle state) checks every candidate against every pending
  // row once a burst has filled it; such a claim can outlast the statement timeout and never come
  // back full. Then the look is waited for (the one already on its way, or a new one whatever the
  // time), so that the next claim (the one sent ahead, or the loop's restart) is planned afresh.
  // Not after a claim that failed otherwise: with Postgres unreachable, a look would only add
  // its own connect timeout to every restart.
  let statisticsCheckedAt = Number.NEGATIVE_INFINITY
  let statisticsLook: Fiber.RuntimeFiber<void> | undefined
  const lookAtStatistics = Effect.flatMap(leases.refreshStatistics, (analyzed) =>
    analyzed ? Effect.logDebug("sync-outbox: outbox statistics refreshed for a backlog") : Effect.void).pipe(
      Effect.catchAll((error) => Effect.logDebug(`sync-outbox: refreshing the outbox's statistics failed: ${oneLine(error)}`))
    )
  const checkStatistics = (waited: boolean) =>
    Effect.gen(function*() {
      const running = statisticsLook
      if (waited && running !== undefined && Option.isNone(yield* Fiber.poll(running))) return yield* Fiber.join(running)
      const now = yield* Clock.currentTimeMillis
      if (!waited && now - statisticsCheckedAt < Duration.toMillis(config.interval)) return
      statisticsCheckedAt = now
      if (waited) return yield* lookAtStatistics
      statisticsLook = yield* Effect.fork(lookAtStatistics)
    })

  // Before the first claim of a drain, a look at the table's size (or a bounded count of its
  // pending rows): a burst into an idle outbox (whose claim was planned while it was empty) is
  // analyzed before that plan ever runs on it. Waited for, unlike the look above: the first claim
  // is the one it saves (seconds at 10,000 pending, the statement timeout at a million). A round
  // trip, so at most every quarter second (a poll interval would be too long: the previous poll's
  // look would always be the last one); ANALYZE only when the table has grown past four times the
  // size its statistics describe. A burst that lands within that quarter second (a trickle's
  // drains look often) is looked at when the drain's first full claim comes back, whatever the
  // time (the drain's own look may have come before the burst committed): the claim sent ahead is
  // then planned afresh, one claim on the old plan at most. After an ANALYZE, or a failed look,
  // none for a poll interval: an ANALYZE that autovacuum made skip would be tried again, and
  // logged by Postgres, four times a second.
  let outgrownQuietUntil = Number.NEGATIVE_INFINITY
  /** Returns whether it looked. */
  const checkOutgrown = (whateverTheTime: boolean) =>
    Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      if (!whateverTheTime && now < outgrownQuietUntil) return false
      outgrownQuietUntil = now + outgrownLookMs
      const outcome = yield* leases.refreshStatisticsIfOutgrown.pipe(
        Effect.map((analyzed) => (analyzed ? "analyzed" : "current")),
        Effect.catchAll((error) => Effect.as(Effect.logDebug(`sync-outbox: looking at the outbox's size failed: ${oneLine(error)}`), "failed"))
      )
      if (outcome !== "current") outgrownQuietUntil = now + Duration.toMillis(config.interval)
      if (outcome === "analyzed") yield* Effect.logDebug("sync-outbox: the outbox outgrew its statistics: analyzed")
      return true
    })

  // A full batch means a backlog: the next claim is sent while this batch is applied, so the
  // database works while Redis and the handlers do (the claim skips this batch's keys: they are
  // leased). Only when the lease leaves room for that wait plus a whole call of its own.
  const prefetching = leaseMs > 2 * Duration.toMillis(config.callTimeout)
  interface Claim {
    readonly events: ReadonlyArray<Claimed>
    readonly leaseEndsAt: number
    readonly tookMs: number
    /** How many events it asked for. */
    readonly size: number
  }
  const claimNow = (size: number) => Effect.gen(function*() {
    // The wake-ups asked for so far are answered by this claim (it begins after them); one asked
    // for while it runs stays queued and costs another claim. A claim made ahead answers only
    // those before it.
    yield* Queue.takeAll(wakeups)
    // Bounded by the pool's statement and query timeouts (or `Leases`' own, without a pool).
    // The lease ends no earlier than `leaseMs` after this instant (the statement reads the clock later).
    const startedAt = yield* Clock.currentTimeMillis
    const leaseEndsAt = startedAt + leaseMs
    recorder.claiming()
    const events = yield* leases.claim(owner, leaseMs, size)
    return { events, leaseEndsAt, tookMs: (yield* Clock.currentTimeMillis) - startedAt, size } satisfies Claim
  })
  /** Hand back a claim that will not be applied (stopping, the sink down, too little lease left). */
  const giveBack = (claim: Claim) =>
    claim.events.length === 0 ? Effect.void : Effect.zipRight(
      recorder.flush,
      recorder.record([{ _tag: "Released", ids: claim.events.map((e) => e.id), unavailable: false }])
    )

  /** Say so when a claim found leases that ran out in other workers' hands: workers are dying. */
  const noteLostLeases = (events: ReadonlyArray<Claimed>) =>
    Effect.suspend(() => {
      let owners: Map<string, number> | undefined
      for (const event of events) {
        if (event.abandonedBy !== null) (owners ??= new Map()).set(event.abandonedBy, (owners.get(event.abandonedBy) ?? 0) + 1)
      }
      if (owners === undefined) return Effect.void
      const lost = [...owners.values()].reduce((a, b) => a + b, 0)
      const held = [...owners].map(([owner, n]) => `${n} by ${owner}`).join(", ")
      return Effect.zipRight(
        Effect.zipRight(Metric.incrementBy(Metrics.leasesLost, lost), Metric.incrementBy(Metrics.failed, lost)),
        Effect.logWarning(
          `sync-outbox: ${lost} event(s) came back with leases that ran out and no outcome recorded (held ${held}: ` +
            `stopped, crashed or cut off from Postgres); each counted as a failed attempt (LeaseExpired) and run alone`
        )
      )
    })

  // The claim made ahead, if any: one drain runs at a time.
  let next: Fiber.Fiber<Claim, SqlError.SqlError> | undefined
  const takeNext = Effect.suspend(() => {
    const fiber = next
    next = undefined
    return fiber === undefined ? Effect.succeed(undefined) : Fiber.join(fiber)
  })

  /** Claim and apply until a claim comes back short; returns whether anything was claimed. */
  const drain = Effect.gen(function*() {
    let claimed = false
    let lookedAtBacklog = false
    // Events whose last attempt was lost run one at a time, each claimed alone: the rest of a
    // batch is handed back before one runs, and claimed whole again for each of them, a batch of
    // a thousand such events (a worker killed in a backlog) would cost half a million row updates
    // and hold the outbox up behind them. One at a time while the last claim held such an event.
    let oneAtATime = false
    yield* checkOutgrown(false)
    for (;;) {
      if (yield* isStopping) {
        const ahead = yield* takeNext
        if (ahead !== undefined) yield* giveBack(ahead)
        yield* recorder.flush
        return claimed
      }
      if (yield* breaker.isOpen) {
        // Nothing is applied while the sink is down: a claim made ahead goes back now, before
        // its lease could run out in our hands.
        const ahead = yield* takeNext
        if (ahead !== undefined) yield* giveBack(ahead)
        yield* recorder.flush
        yield* Effect.raceFirst(breaker.awaitSink, Deferred.await(stopping))
        continue
      }
      const current = yield* Effect.flatMap(takeNext, (ahead) => (ahead === undefined ? claimNow(oneAtATime ? 1 : config.batchSize) : Effect.succeed(ahead))).pipe(
        Effect.tapError((error) => (isTimeout(error) ? checkStatistics(true) : Effect.void))
      )
      const { events, leaseEndsAt } = current
      yield* noteLostLeases(events)
      const slow = current.tookMs >= slowClaimMs
      if (events.length === config.batchSize && !lookedAtBacklog) lookedAtBacklog = yield* checkOutgrown(true)
      if (events.length === config.batchSize || slow) yield* checkStatistics(slow)
      // The previous batch may still be being written down: not waited for (the recorder wakes
      // us if this claim passed over one of its keys).
      if (events.length === 0) return claimed
      claimed = true
      // A claim made ahead waited for the batch before it: apply it only while its lease still
      // covers a whole call.
      if (leaseEndsAt - (yield* Clock.currentTimeMillis) <= Duration.toMillis(config.callTimeout)) {
        yield* giveBack(current)
        continue
      }
      // Not while the batch holds an event whose last attempt was lost: it runs alone, and if it
      // ends this process a claim made ahead would lose an attempt with it (again and again, as it
      // comes back).
      if (events.length === config.batchSize && prefetching && !events.some((e) => e.lastAttemptLost)) {
        next = yield* Effect.fork(claimNow(config.batchSize))
      }
      oneAtATime = events.some((e) => e.lastAttemptLost)
      const unblocked = yield* processBatch(events, leaseEndsAt)
      // The next event of a key just done is claimable once that is written down: claim it now,
      // not on the next poll.
      if (unblocked) {
        yield* recorder.flush
        continue
      }
      // A short batch took everything there was. Anything committed since has notified, and
      // the sliding wake-up queue kept that: idle will return at once instead of costing a claim.
      // (Unless that batch opened the breaker: then the probe loop above must run.)
      if (events.length < current.size && !(yield* breaker.isOpen)) return claimed
    }
  }).pipe(
    // The loop failed (it restarts) or was interrupted (shutdown): what was claimed ahead goes
    // back rather than wait out its lease. Bounded, and interruptible inside: this runs as a
    // finalizer, and writing down (the batch before, then the give-back) retries for up to half a
    // lease while Postgres is away; shutdown then outlasted its own bound by that much (30 s with
    // a 60 s lease). Cut short, those rows come back when their leases expire.
    Effect.onError(() =>
      Effect.interruptible(Effect.flatMap(takeNext, (ahead) => (ahead === undefined ? Effect.void : giveBack(ahead)))).pipe(
        Effect.timeout(giveBackBound),
        Effect.ignore
      )
    )
  )

  /** Sleep until a wake-up, the earliest due retry, or the poll interval. */
  const idle = (claimedLastTime: boolean) =>
    Effect.gen(function*() {
      if ((yield* Queue.size(wakeups)) > 0) return
      const waitMs = yield* dueTimer.waitMs(claimedLastTime)
      // Shutdown wakes us too (it completes `stopping`, then wakes): one race, two fibers.
      yield* Ref.set(options.idle, true)
      yield* Effect.raceFirst(Queue.take(wakeups), Effect.sleep(Duration.millis(waitMs))).pipe(
        Effect.ensuring(Ref.set(options.idle, false))
      )
    })

  const setState = (state: LoopState, error: string | null) =>
    Effect.zipRight(Ref.set(options.error, error), SubscriptionRef.set(options.state, state))

  // Failures since the loop last drained: an outage of Postgres fails every restart (one every
  // 2 s at most), so a warning for each would be hundreds of lines per incident. The first of a
  // streak is a warning, the rest are debug lines (each still counted in loop errors, and the
  // heartbeat shows the latest), and the first drain that succeeds says how many there were.
  let failedInARow = 0
  const loop = Effect.gen(function*() {
    yield* setState("running", null)
    while (!(yield* isStopping)) {
      const claimed = yield* drain
      if (failedInARow > 0) {
        yield* Effect.logInfo(`sync-outbox: worker loop running again after ${failedInARow} failure(s) in a row`)
        failedInARow = 0
      }
      if (yield* isStopping) break
      yield* idle(claimed)
    }
    yield* recorder.flush
  })

  const recoverSchedule = Schedule.exponential(Duration.millis(50)).pipe(
    Schedule.either(Schedule.spaced(Duration.seconds(2))),
    Schedule.jittered
  )
  return loop.pipe(
    Effect.sandbox,
    Effect.tapError((cause) =>
      Cause.isInterruptedOnly(cause) ? Effect.void : Effect.gen(function*() {
        const line = `${causeLine(cause)}${lockTableFull(cause) ? lockTableHint : ""}`
        yield* Metric.increment(Metrics.loopErrors)
        yield* setState("restarting", line)
        failedInARow++
        // A defect is a bug: its stack is worth the lines. A failure is an incident: one line.
        yield* Cause.isDie(cause)
          ? Effect.logError("sync-outbox: worker loop died, restarting", cause)
          : failedInARow === 1
          ? Effect.logWarning(`sync-outbox: worker loop failed, restarting: ${line}`)
          : Effect.logDebug(`sync-outbox: worker loop failed again (${failedInARow} in a row), restarting: ${line}`)
      })
    ),
    Effect.retry({ schedule: recoverSchedule, while: (cause) => !Cause.isInterruptedOnly(cause) }),
    Effect.unsandbox,
    Effect.ignore,
    Effect.ensuring(setState("stopped", null))
  )
}
