/**
 * The loop: wake on NOTIFY, on a (re)connect, at the earliest due retry or lease expiry, or on
 * the poll interval; claim a batch; apply it with bounded concurrency; record every outcome in
 * at most three statements. A scoped layer: it cannot be started twice, and closing its scope
 * finishes what is in flight and hands unstarted claims back without counting an attempt. The
 * loop is supervised: whatever ends it other than shutdown (a database error, a bug) restarts it
 * with backoff, and its state is in every heartbeat.
 */
import { SqlClient } from "@effect/sql"
import {
  Cause,
  Clock,
  Context,
  Deferred,
  Duration,
  Effect,
  Fiber,
  FiberSet,
  Layer,
  Metric,
  Option,
  Queue,
  Random,
  Ref,
  Schedule,
  Stream,
  SubscriptionRef
} from "effect"
import { hostname } from "node:os"
import { describeFailure, type HandlerTimeout, oneLine } from "./Errors.js"
import { type ApplyOutcome, Handlers } from "./Handlers.js"
import * as Journal from "./Journal.js"
import { Listener } from "./Listener.js"
import * as Metrics from "./Metrics.js"
import { OutboxConfig } from "./OutboxConfig.js"
import type { ClaimedEvent } from "./OutboxEvent.js"
import { RedisSink } from "./RedisSink.js"
import * as Retry from "./Retry.js"
import { type Claimed, type Failure, Store } from "./Store.js"

export type BreakerState = "closed" | "open"

const blockedRetryFloorMs = 25

/**
 * The claim loop: `starting`, `running`, `restarting` (it failed and waits out its backoff),
 * `stopped` (shut down, or disabled).
 */
export type LoopState = "starting" | "running" | "restarting" | "stopped"

export interface WorkerShape {
  /** Who this worker is in `lease_owner`. */
  readonly owner: string
  readonly breaker: SubscriptionRef.SubscriptionRef<BreakerState>
  readonly loop: SubscriptionRef.SubscriptionRef<LoopState>
  /** Ask for a claim now (as a notification would). */
  readonly wake: Effect.Effect<void>
}

type Outcome =
  | { readonly _tag: "Applied"; readonly event: Claimed; readonly superseded: ReadonlyArray<string> }
  | {
    readonly _tag: "Failed"
    readonly event: Claimed
    readonly superseded: ReadonlyArray<string>
    readonly error: unknown
    readonly permanent: boolean
    readonly keepLease: boolean
  }
  | {
    // Timed out: recorded once its call can no longer be running (see `hold`).
    readonly _tag: "Held"
    readonly event: Claimed
    readonly superseded: ReadonlyArray<string>
    readonly error: HandlerTimeout
    readonly running: ReadonlyArray<PromiseLike<unknown>>
    readonly leaseEndsAt: number
  }
  | { readonly _tag: "Released"; readonly ids: ReadonlyArray<string>; readonly unavailable: boolean }

/** Events of one ordering key in one claim: the newest is applied, older coalescing ones collapse into it. */
interface Group<E extends ClaimedEvent = ClaimedEvent> {
  readonly target: E
  readonly superseded: ReadonlyArray<string>
  /** Non-coalescing events of one key, in order (only when the claim returned several). */
  readonly sequence: ReadonlyArray<E>
}

export const groupByKey = <E extends ClaimedEvent>(events: ReadonlyArray<E>): ReadonlyArray<Group<E>> => {
  const byKey = new Map<string, Array<E>>()
  for (const event of events) {
    const list = byKey.get(event.orderingKey)
    if (list === undefined) byKey.set(event.orderingKey, [event])
    else list.push(event)
  }
  const groups: Array<Group<E>> = []
  for (const list of byKey.values()) {
    if (list.length === 1) {
      groups.push({ target: list[0]!, superseded: [], sequence: [] })
      continue
    }
    list.sort((a, b) => (BigInt(a.id) < BigInt(b.id) ? -1 : 1))
    const newest = list[list.length - 1]!
    if (newest.coalesce) {
      groups.push({ target: newest, superseded: list.slice(0, -1).map((e) => e.id), sequence: [] })
    } else {
      groups.push({ target: list[0]!, superseded: [], sequence: list })
    }
  }
  return groups
}

const make = Effect.gen(function*() {
  const config = yield* OutboxConfig
  const store = yield* Store
  const handlers = yield* Handlers
  const listener = yield* Listener
  const redis = yield* RedisSink

  const owner = `${hostname()}:${process.pid}:${(yield* Random.nextInt).toString(36)}`
  const breaker = yield* SubscriptionRef.make<BreakerState>("closed")
  const loopState = yield* SubscriptionRef.make<LoopState>(config.enabled ? "starting" : "stopped")
  const loopError = yield* Ref.make<string | null>(null)
  const wakeups = yield* Queue.sliding<void>(1)
  const stopping = yield* Deferred.make<void>()
  const wake = Effect.asVoid(Queue.offer(wakeups, undefined))
  const leaseMs = Duration.toMillis(config.leaseDuration)
  const policy: Retry.Policy = { base: config.backoffBase, cap: config.backoffCap }

  const isStopping = Deferred.isDone(stopping)
  let journaling = false

  // Transitions are decided on a plain Ref so that only a real change is published and logged:
  // fifty items failing together open the breaker once.
  const breakerState = yield* Ref.make<BreakerState>("closed")
  const isOpen = Effect.map(Ref.get(breakerState), (state) => state === "open")
  const openBreaker = (reason: string) =>
    Ref.modify(breakerState, (state) => [state === "closed", "open" as const]).pipe(
      Effect.flatMap((opened) =>
        opened
          ? SubscriptionRef.set(breaker, "open").pipe(
            Effect.zipRight(Effect.logWarning(`sync-outbox: Redis unavailable, pausing claims (${reason})`)),
            Effect.zipRight(Metric.increment(Metrics.breakerTransitions)),
            Effect.zipRight(Metric.set(Metrics.breakerOpen, 1))
          )
          : Effect.void
      )
    )

  const closeBreaker = Ref.set(breakerState, "closed").pipe(
    Effect.zipRight(SubscriptionRef.set(breaker, "closed")),
    Effect.zipRight(Effect.logInfo("sync-outbox: Redis is back, draining")),
    Effect.zipRight(Metric.increment(Metrics.breakerTransitions)),
    Effect.zipRight(Metric.set(Metrics.breakerOpen, 0))
  )

  // A cheap PING on a short, capped, jittered schedule; no row is touched meanwhile.
  const probeSchedule = Schedule.exponential(config.probeBase).pipe(
    Schedule.either(Schedule.spaced(config.probeCap)),
    Schedule.jittered
  )
  const awaitSink = redis.ping.pipe(
    Effect.timeout(config.callTimeout),
    Effect.retry(probeSchedule),
    Effect.zipRight(closeBreaker)
  )

  // Checked before each piece of work starts: once we stop or the sink is known down, nothing new begins.
  const admit = Effect.map(Effect.all([isStopping, isOpen]), ([stopping, open]) => !stopping && !open)

  const outcomeOf = (event: Claimed, superseded: ReadonlyArray<string>, outcome: ApplyOutcome, leaseEndsAt: number): Outcome => {
    switch (outcome._tag) {
      case "Applied":
        return { _tag: "Applied", event, superseded }
      case "Failed":
        return { _tag: "Failed", event, superseded, error: outcome.error, permanent: outcome.permanent, keepLease: false }
      case "Defect":
        return { _tag: "Failed", event, superseded, error: outcome.error, permanent: false, keepLease: false }
      case "TimedOut":
        return { _tag: "Held", event, superseded, error: outcome.error, running: outcome.running, leaseEndsAt }
      case "NotStarted":
        return { _tag: "Released", ids: [event.id, ...superseded], unavailable: false }
      case "Unavailable":
        return { _tag: "Released", ids: [event.id, ...superseded], unavailable: true }
    }
  }

  const isDead = (event: ClaimedEvent, permanent: boolean) => permanent || event.retryCount + 1 >= config.maxRetries

  // Several non-coalescing events of one key (rare): strictly in order, one at a time, stopping
  // at the first that does not apply; the rest go back untouched.
  const runSequence = (sequence: ReadonlyArray<Claimed>, leaseEndsAt: number) =>
    Effect.gen(function*() {
      const outcomes: Array<Outcome> = []
      for (let i = 0; i < sequence.length; i++) {
        const event = sequence[i]!
        const [result] = yield* handlers.applyAll([event], { concurrency: 1, timeout: config.callTimeout, admit })
        const outcome = outcomeOf(event, [], result!, leaseEndsAt)
        outcomes.push(outcome)
        if (outcome._tag !== "Applied") {
          const rest = sequence.slice(i + 1).map((e) => e.id)
          if (rest.length > 0) outcomes.push({ _tag: "Released", ids: rest, unavailable: false })
          break
        }
      }
      return outcomes
    })

  // The earliest retry this worker knows of, so the due timer needs no query per cycle.
  const earliestRetry = yield* Ref.make<number | null>(null)
  const lastDueQueryAt = yield* Ref.make(Number.NEGATIVE_INFINITY)
  const noteRetry = (at: number) => Ref.update(earliestRetry, (current) => (current === null || at < current ? at : current))

  const recordSchedule = Schedule.exponential(Duration.millis(20)).pipe(
    Schedule.either(Schedule.spaced(Duration.millis(500))),
    Schedule.jittered,
    Schedule.upTo(Duration.divide(config.leaseDuration, 2).pipe(Option.getOrElse(() => config.leaseDuration)))
  )

  // Timed-out events wait here until their call can no longer be running; interrupted at shutdown.
  const holds = yield* FiberSet.make<void, never>()

  const record = (outcomes: ReadonlyArray<Outcome>): Effect.Effect<{ readonly unavailable: boolean }, unknown> =>
    Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      const completed: Array<string> = []
      const released: Array<string> = []
      const failures: Array<Failure> = []
      const supersededBy = new Map<string, string>()
      let appliedCount = 0
      let supersededCount = 0
      let deadCount = 0
      let unavailable = false
      for (const outcome of outcomes) {
        switch (outcome._tag) {
          case "Applied": {
            completed.push(outcome.event.id, ...outcome.superseded)
            for (const id of outcome.superseded) supersededBy.set(id, outcome.event.id)
            appliedCount++
            supersededCount += outcome.superseded.length
            yield* Metric.update(Metrics.latency, Math.max(0, now - outcome.event.createdAt.getTime()))
            break
          }
          case "Held": {
            // Older events it superseded are redundant whatever happens to the newest one.
            completed.push(...outcome.superseded)
            for (const id of outcome.superseded) supersededBy.set(id, outcome.event.id)
            supersededCount += outcome.superseded.length
            yield* FiberSet.run(holds, hold(outcome))
            break
          }
          case "Failed": {
            completed.push(...outcome.superseded)
            for (const id of outcome.superseded) supersededBy.set(id, outcome.event.id)
            supersededCount += outcome.superseded.length
            const attempt = outcome.event.retryCount + 1
            const dead = isDead(outcome.event, outcome.permanent)
            const wait = Duration.toMillis(yield* Retry.delay(policy, attempt))
            const { message, tag } = describeFailure(outcome.error)
            failures.push({
              id: outcome.event.id,
              attempt,
              tag,
              message,
              nextRetryAt: new Date(now + wait),
              dead,
              keepLease: outcome.keepLease
            })
            if (!dead) yield* noteRetry(now + wait)
            if (dead) {
              deadCount++
              yield* Effect.logError(
                `sync-outbox: event ${outcome.event.id} (${outcome.event.resourceType}/${outcome.event.action}) is dead after ${attempt} attempt(s): ${tag}: ${message}`
              )
            }
            break
          }
          case "Released": {
            released.push(...outcome.ids)
            unavailable ||= outcome.unavailable
            break
          }
        }
      }
      // The outcomes are known; only writing them down can fail (Postgres restarting). The three
      // statements are idempotent, so retry them rather than leave rows leased until expiry.
      const statements = [
        ...(completed.length > 0
          ? [store.complete(owner, completed, journaling ? { appliedAt: new Date(now), supersededBy } : undefined)]
          : []),
        ...(failures.length > 0 ? [store.fail(owner, failures)] : []),
        ...(released.length > 0 ? [store.release(owner, released)] : [])
      ]
      // Usually one statement (all applied): run it on this fiber rather than fork three.
      yield* (statements.length === 1 ? Effect.asVoid(statements[0]!) : Effect.all(statements, { concurrency: "unbounded", discard: true })).pipe(
        Effect.tapError((error) => Effect.logWarning(`sync-outbox: recording outcomes failed, retrying: ${oneLine(error)}`)),
        Effect.retry(recordSchedule)
      )
      yield* Metric.incrementBy(Metrics.applied, appliedCount)
      yield* Metric.incrementBy(Metrics.superseded, supersededCount)
      yield* Metric.incrementBy(Metrics.failed, failures.length)
      yield* Metric.incrementBy(Metrics.dead, deadCount)
      yield* Metric.incrementBy(Metrics.released, released.length)
      return { unavailable }
    })

  /**
   * A call that timed out may still be running: an interrupted Effect stops, but a Promise does
   * not. The event stays leased (so neither it nor its key can be claimed) at least until its
   * lease expires, and as long as promise calls it started through `RedisSink.use` (or
   * `InFlight.tryPromise`) are running, renewing the lease meanwhile. Then the timeout is
   * recorded as that event's failed attempt, its retry due no earlier than the lease's end.
   */
  const hold = (held: Extract<Outcome, { _tag: "Held" }>): Effect.Effect<void> => {
    const { event } = held
    const recordNow = record([{ _tag: "Failed", event, superseded: [], error: held.error, permanent: false, keepLease: true }])
    const renew = Effect.flatMap(Clock.currentTimeMillis, (now) => store.renew(owner, [event.id], new Date(now + leaseMs))).pipe(
      Effect.timeout(config.callTimeout),
      Effect.catchAllCause((cause) => Effect.logWarning(`sync-outbox: renewing the lease of event ${event.id} failed: ${causeLine(cause)}`))
    )
    return Effect.gen(function*() {
      if (held.running.length > 0) {
        yield* Effect.logWarning(
          `sync-outbox: event ${event.id} (${event.resourceType}/${event.action}) timed out with a call still running; it stays leased until that call ends`
        )
        yield* Effect.raceFirst(
          Effect.promise(() => Promise.allSettled(held.running)),
          Effect.forever(Effect.zipRight(renew, Effect.sleep(Duration.millis(Math.max(1, Math.floor(leaseMs / 3))))))
        )
      }
      // A dead row no longer blocks its key: it becomes dead only once the lease has run out.
      if (isDead(event, false)) {
        const margin = Math.min(1_000, Math.floor(leaseMs / 10))
        const now = yield* Clock.currentTimeMillis
        if (held.leaseEndsAt - margin > now) yield* Effect.sleep(Duration.millis(held.leaseEndsAt - margin - now))
      }
      yield* recordNow
    }).pipe(
      // Shutting down: record it now, still leased until expiry, rather than lose the attempt.
      Effect.onInterrupt(() => recordNow.pipe(Effect.timeout(Duration.seconds(2)), Effect.ignore)),
      Effect.catchAllCause((cause) =>
        Effect.logWarning(`sync-outbox: the timeout of event ${event.id} could not be recorded; it comes back when its lease expires: ${causeLine(cause)}`)
      )
    )
  }

  let recording: Fiber.Fiber<unknown, unknown> | undefined
  const awaitRecord = Effect.suspend(() => {
    const pending = recording
    recording = undefined
    return pending === undefined ? Effect.void : Fiber.join(pending).pipe(
      Effect.catchAllCause((cause) =>
        Effect.zipRight(
          Metric.increment(Metrics.loopErrors),
          Effect.logWarning(`sync-outbox: outcomes could not be recorded; those rows come back when their leases expire: ${causeLine(cause)}`)
        )
      )
    )
  })

  /** Apply a claimed batch; returns whether an event done now has another of its key waiting. */
  const processBatch = (events: ReadonlyArray<Claimed>, leaseEndsAt: number) =>
    Effect.gen(function*() {
      const groups = groupByKey(events)
      // What has not begun when we stop or the sink is known down goes back without an attempt.
      if ((yield* isStopping) || (yield* isOpen)) {
        yield* awaitRecord
        yield* record([{ _tag: "Released", ids: events.map((e) => e.id), unavailable: false }])
        return false
      }
      const single = groups.filter((g) => g.sequence.length === 0)
      const sequences = groups.filter((g) => g.sequence.length > 0)
      const [results, sequenced] = yield* Effect.all([
        handlers.applyAll(single.map((g) => g.target), { concurrency: config.concurrency, timeout: config.callTimeout, admit }),
        Effect.forEach(sequences, (g) => runSequence(g.sequence, leaseEndsAt), { concurrency: config.concurrency })
      ], { concurrency: sequences.length === 0 ? 1 : 2 })
      const outcomes = [...single.map((g, i) => outcomeOf(g.target, g.superseded, results[i]!, leaseEndsAt)), ...sequenced.flat()]
      const unavailable = outcomes.find((o) => o._tag === "Released" && o.unavailable)
      if (unavailable !== undefined) yield* openBreaker("a command failed")
      // Written down in the background while the next claim runs: these rows stay leased by us
      // until then, so no claim can take them or their keys. One record at a time.
      yield* awaitRecord
      recording = yield* Effect.fork(record(outcomes))
      // An event that is done (applied, or dead) unblocks the next one of its key.
      return outcomes.some((o) =>
        (o._tag === "Applied" || (o._tag === "Failed" && isDead(o.event, o.permanent))) && o.event.successor
      )
    }).pipe(Effect.withSpan("sync-outbox.batch", { attributes: { size: events.length } }))

  /** Claim and apply until a claim comes back short; returns whether anything was claimed. */
  const drain = Effect.gen(function*() {
    let claimed = false
    for (;;) {
      if (yield* isStopping) {
        yield* awaitRecord
        return claimed
      }
      if (yield* isOpen) {
        yield* awaitRecord
        yield* Effect.raceFirst(awaitSink, Deferred.await(stopping))
        continue
      }
      yield* Queue.takeAll(wakeups)
      // Bounded by the pool's statement and query timeouts (or the Store's own, without a pool).
      // The lease ends no earlier than `leaseMs` after this instant (the statement reads the clock later).
      const leaseEndsAt = (yield* Clock.currentTimeMillis) + leaseMs
      const events = yield* store.claim(owner, leaseMs, config.batchSize)
      if (events.length === 0) {
        yield* awaitRecord
        return claimed
      }
      claimed = true
      const unblocked = yield* processBatch(events, leaseEndsAt)
      // The next event of a key just done is claimable once that is written down: claim it now,
      // not on the next poll.
      if (unblocked) {
        yield* awaitRecord
        continue
      }
      // A short batch took everything there was. Anything committed since has notified, and
      // the sliding wake-up queue kept that: idle will return at once instead of costing a claim.
      // (Unless that batch opened the breaker: then the probe loop above must run.)
      if (events.length < config.batchSize && !(yield* isOpen)) {
        yield* awaitRecord
        return claimed
      }
    }
  })

  /** Sleep until a wake-up, the earliest due retry or lease expiry, or the poll interval. */
  const idle = (claimedLastTime: boolean) => Effect.gen(function*() {
    if ((yield* Queue.size(wakeups)) > 0) return
    const now = yield* Clock.currentTimeMillis
    const poll = Duration.toMillis(config.interval)
    // The database is asked for the earliest retry once per poll interval (it covers retries
    // other workers scheduled and then died with); in between, the retries this worker
    // scheduled itself are known without a round trip.
    if (now - (yield* Ref.get(lastDueQueryAt)) >= poll) {
      const fromDb = yield* store.nextWakeAt
      yield* Ref.set(lastDueQueryAt, now)
      if (fromDb !== null) yield* noteRetry(fromDb)
    }
    const dueAt = yield* Ref.get(earliestRetry)
    if (dueAt !== null && dueAt <= now) {
      // Consumed: the next idle asks the database for whatever is due after it.
      yield* Ref.set(earliestRetry, null)
      yield* Ref.set(lastDueQueryAt, Number.NEGATIVE_INFINITY)
    }
    // A retry that is due but was not claimable (its key is leased elsewhere) must not spin us.
    const floor = claimedLastTime ? 0 : blockedRetryFloorMs
    const waitMs = dueAt === null ? poll : Math.max(floor, Math.min(poll, dueAt - now))
    yield* Effect.raceFirst(
      Queue.take(wakeups),
      Effect.raceFirst(Effect.sleep(Duration.millis(waitMs)), Deferred.await(stopping))
    )
  })

  const setLoop = (state: LoopState, error: string | null) =>
    Effect.zipRight(Ref.set(loopError, error), SubscriptionRef.set(loopState, state))

  const loop = Effect.gen(function*() {
    yield* setLoop("running", null)
    while (!(yield* isStopping)) {
      const claimed = yield* drain
      if (yield* isStopping) return
      yield* idle(claimed)
    }
  })

  // Supervised: any cause but shutdown's interruption (Postgres down, a statement timed out, a
  // bug) is logged in one line, counted, and the loop starts again after a capped backoff.
  const recoverSchedule = Schedule.exponential(Duration.millis(50)).pipe(
    Schedule.either(Schedule.spaced(Duration.seconds(2))),
    Schedule.jittered
  )
  const supervised = loop.pipe(
    Effect.sandbox,
    Effect.tapError((cause) =>
      Cause.isInterruptedOnly(cause) ? Effect.void : Effect.gen(function*() {
        const line = causeLine(cause)
        yield* Metric.increment(Metrics.loopErrors)
        yield* setLoop("restarting", line)
        // A defect is a bug: its stack is worth the lines. A failure is an incident: one line.
        yield* Cause.isDie(cause)
          ? Effect.logError("sync-outbox: worker loop died, restarting", cause)
          : Effect.logWarning(`sync-outbox: worker loop failed, restarting: ${line}`)
      })
    ),
    Effect.retry({ schedule: recoverSchedule, while: (cause) => !Cause.isInterruptedOnly(cause) }),
    Effect.unsandbox,
    Effect.ensuring(setLoop("stopped", null))
  )

  if (!config.enabled) {
    yield* Effect.logInfo("sync-outbox: worker disabled (SYNC_OUTBOX_ENABLED=false)")
    return { owner, breaker, loop: loopState, wake } satisfies WorkerShape
  }

  yield* Metric.set(Metrics.breakerOpen, 0)
  // Completions journal what they delete while the retention is above zero; one pruner at a time.
  journaling = yield* Journal.start(config.retention)
  yield* Effect.forkScoped(Stream.runForEach(listener.wakeups, () => wake))

  // Visible to `status` in other processes: registered now, refreshed on the poll interval and
  // on every breaker, listener or loop change, removed on a clean shutdown.
  const beat = Effect.gen(function*() {
    yield* store.heartbeat({
      owner,
      hostname: hostname(),
      pid: process.pid,
      breaker: yield* SubscriptionRef.get(breaker),
      listener: yield* SubscriptionRef.get(listener.state),
      loop: yield* SubscriptionRef.get(loopState),
      loopError: yield* Ref.get(loopError)
    }).pipe(Effect.timeout(config.callTimeout))
  }).pipe(Effect.catchAllCause((cause) => Effect.logDebug(`sync-outbox: heartbeat failed: ${causeLine(cause)}`)))
  // Finalizers run in reverse: the loop stops, then the beats, then the row goes.
  yield* Effect.addFinalizer(() =>
    store.unregister(owner).pipe(Effect.timeout(Duration.seconds(2)), Effect.ignore)
  )
  yield* beat
  yield* Effect.forkScoped(Effect.repeat(beat, Schedule.spaced(config.interval)))
  yield* Effect.forkScoped(
    // Not dropping the first value: a change between the first beat and subscribing must not be lost.
    Stream.mergeAll([breaker.changes, listener.state.changes, loopState.changes], { concurrency: "unbounded" }).pipe(
      Stream.runForEach(() => beat)
    )
  )
  // Said once at start rather than at the first event: Redis is unreachable. ioredis needs a
  // moment to connect (it queues nothing meanwhile), so a refusal counts only after a second of
  // retries. The breaker opens, claims wait, and "Redis is back" follows when it answers.
  yield* Effect.forkScoped(
    redis.ping.pipe(
      Effect.timeout(config.callTimeout),
      Effect.retry(Schedule.spaced(Duration.millis(50)).pipe(Schedule.upTo(Duration.seconds(1)))),
      Effect.catchAllCause((cause) => openBreaker(`unreachable at start: ${causeLine(cause)}`).pipe(Effect.zipRight(wake)))
    )
  )
  const fiber = yield* Effect.forkScoped(Effect.interruptible(supervised))
  yield* Effect.addFinalizer(() =>
    Deferred.succeed(stopping, undefined).pipe(
      Effect.zipRight(wake),
      // In-flight handlers finish (they are bounded by callTimeout); then the loop ends by itself.
      Effect.zipRight(
        fiber.await.pipe(
          Effect.timeout(Duration.sum(config.callTimeout, Duration.seconds(1))),
          Effect.ignore
        )
      )
    )
  )
  return { owner, breaker, loop: loopState, wake } satisfies WorkerShape
})

/** A cause in one line: its first failure, else its first defect, else "interrupted". */
const causeLine = (cause: Cause.Cause<unknown>): string =>
  Option.match(Cause.failureOption(cause), {
    onSome: oneLine,
    onNone: () => Option.match(Cause.dieOption(cause), { onSome: oneLine, onNone: () => "interrupted" })
  })

export class Worker extends Context.Tag("sync-outbox/Worker")<Worker, WorkerShape>() {
  static readonly layer: Layer.Layer<
    Worker,
    never,
    OutboxConfig | Store | Handlers | Listener | RedisSink | SqlClient.SqlClient
  > = Layer.scoped(Worker, make)
}
