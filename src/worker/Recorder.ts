/**
 * Writes outcomes down: applied events completed (and journaled), failures recorded with their
 * backoff or as dead letters, unstarted events released, in at most three statements per batch,
 * retried while Postgres is briefly away (they are idempotent and fenced on the lease owner).
 * A batch is recorded in the background while the loop goes on (its rows stay leased by us until
 * then, so no claim can take them or their keys), one batch at a time; a claim that ran meanwhile
 * may have passed over a key being completed, so the loop is woken once the record is written. Timed-out events
 * are held until their call can no longer be running (see `hold`).
 */
import { Clock, Duration, Effect, Fiber, FiberRef, FiberSet, Metric, Option, Schedule, type Scope } from "effect"
import { describeFailure, LeaseExpired, oneLine } from "../Errors.js"
import type { Claimed, Failure, LeasesShape } from "../Leases.js"
import * as Metrics from "../Metrics.js"
import type { OutboxConfigShape } from "../OutboxConfig.js"
import * as Retry from "../Retry.js"
import { causeLine } from "./Causes.js"
import type { Held, Outcome } from "./Outcome.js"

/**
 * A failure as Postgres can store it: text holds no NUL, and a handler's error that quotes binary
 * data (a reply, a payload) would fail the statement that records it; the attempt was then lost
 * to a lease expiry, its cause with it. The NUL is written as the escape JSON gives it.
 */
const storable = (failure: { readonly tag: string; readonly message: string }) => ({
  tag: failure.tag.replaceAll("\u0000", "\\u0000"),
  message: failure.message.replaceAll("\u0000", "\\u0000")
})

export interface Recorder {
  /** Record now, on this fiber; whether a release said the sink is unavailable. */
  readonly record: (outcomes: ReadonlyArray<Outcome>) => Effect.Effect<{ readonly unavailable: boolean }, unknown>
  /** Record in the background, after the previous background record has finished. */
  readonly submit: (outcomes: ReadonlyArray<Outcome>) => Effect.Effect<void>
  /** Wait for the background record (its failure is logged: those rows come back when their leases expire). */
  readonly flush: Effect.Effect<void>
  /** The loop is about to claim: if a background record is being written, wake the loop once it is. */
  readonly claiming: () => void
  /** Whether an event with this outcome is dead: permanent, or out of attempts. */
  readonly isDead: (event: Claimed, permanent: boolean) => boolean
}

export interface RecorderOptions {
  readonly owner: string
  readonly leases: LeasesShape
  readonly config: OutboxConfigShape
  /** Whether completions write journal rows. */
  readonly journaling: boolean
  /** Told of every retry scheduled (the due timer). */
  readonly noteRetry: (at: number) => Effect.Effect<void>
  /** Wakes the loop. */
  readonly wake: Effect.Effect<void>
}

export const make = (options: RecorderOptions): Effect.Effect<Recorder, never, Scope.Scope> =>
  Effect.gen(function*() {
    const { config, journaling, leases, noteRetry, owner } = options
    const leaseMs = Duration.toMillis(config.leaseDuration)
    const policy: Retry.Policy = { base: config.backoffBase, cap: config.backoffCap }
    const isDead = (event: Claimed, permanent: boolean) => permanent || event.retryCount + 1 >= config.maxRetries

    // Timed-out events wait here until their call can no longer be running; interrupted at shutdown.
    const holds = yield* FiberSet.make<void, never>()

    const retrySchedule = Schedule.exponential(Duration.millis(20)).pipe(
      Schedule.either(Schedule.spaced(Duration.millis(500))),
      Schedule.jittered,
      Schedule.upTo(Duration.divide(config.leaseDuration, 2).pipe(Option.getOrElse(() => config.leaseDuration)))
    )

    /**
     * Sort outcomes into statements, on the caller's fiber: retries are noted (the loop's next
     * sleep must know them) and holds started before anything is written. `write` runs the statements.
     */
    const prepare = (outcomes: ReadonlyArray<Outcome>) =>
      Effect.gen(function*() {
        const now = yield* Clock.currentTimeMillis
        const completed: Array<string> = []
        const released: Array<string> = []
        const failures: Array<Failure> = []
        const supersededBy = new Map<string, string>()
        const coveredUnapplied = new Set<string>()
        let appliedCount = 0
        let deadCount = 0
        let abandonedCount = 0
        let unavailable = false
        const ages: Array<number> = []
        const covered = (outcome: Extract<Outcome, { readonly superseded: ReadonlyArray<string> }>) => {
          // Older events it superseded are redundant whatever happens to the newest one.
          for (const id of outcome.superseded) {
            completed.push(id)
            supersededBy.set(id, outcome.event.id)
          }
        }
        for (const outcome of outcomes) {
          switch (outcome._tag) {
            case "Applied": {
              completed.push(outcome.event.id)
              covered(outcome)
              appliedCount++
              ages.push(Math.max(0, now - outcome.event.createdAt.getTime()))
              break
            }
            case "Held": {
              covered(outcome)
              for (const id of outcome.superseded) coveredUnapplied.add(id)
              yield* FiberSet.run(holds, hold(outcome))
              break
            }
            case "Failed": {
              covered(outcome)
              for (const id of outcome.superseded) coveredUnapplied.add(id)
              const attempt = outcome.event.retryCount + 1
              const dead = isDead(outcome.event, outcome.permanent)
              const wait = Duration.toMillis(yield* Retry.delay(policy, attempt))
              const { message, tag } = storable(describeFailure(outcome.error))
              failures.push({ id: outcome.event.id, attempt, tag, message, nextRetryAt: new Date(now + wait), dead, keepLease: outcome.keepLease })
              if (dead) {
                deadCount++
                yield* Effect.logError(
                  `sync-outbox: event ${outcome.event.id} (${outcome.event.resourceType}/${outcome.event.action}) is dead after ${attempt} attempt(s): ${tag}: ${message}`
                )
              } else {
                yield* noteRetry(now + wait)
              }
              break
            }
            case "Abandoned": {
              // The claim counted that attempt already (retry_count, the history row): recorded
              // as the same attempt, now dead.
              const { event } = outcome
              const { message, tag } = describeFailure(new LeaseExpired({ owner: event.abandonedBy }))
              failures.push({ id: event.id, attempt: event.retryCount, tag, message, nextRetryAt: new Date(now), dead: true })
              deadCount++
              abandonedCount++
              yield* Effect.logError(
                `sync-outbox: event ${event.id} (${event.resourceType}/${event.action}) is dead after ${event.retryCount} attempt(s): ${tag}: ${message}`
              )
              break
            }
            case "Released": {
              released.push(...outcome.ids)
              unavailable ||= outcome.unavailable
              break
            }
          }
        }
        // One histogram update per event, without an effect per event (a batch is a thousand).
        const labels = yield* FiberRef.get(FiberRef.currentMetricLabels)
        for (const age of ages) Metrics.latency.unsafeUpdate(age, labels)
        const statements: Array<Effect.Effect<unknown, unknown>> = []
        if (completed.length > 0) {
          statements.push(leases.complete(owner, completed, journaling ? { appliedAt: new Date(now), supersededBy, coveredUnapplied } : undefined))
        }
        if (failures.length > 0) statements.push(leases.fail(owner, failures))
        if (released.length > 0) statements.push(leases.release(owner, released))
        // The outcomes are known; only writing them down can fail (Postgres restarting). Usually
        // one statement (all applied): run it on its fiber rather than fork three.
        const once = statements.length === 1 ? statements[0]! : Effect.all(statements, { concurrency: "unbounded", discard: true })
        // The counters move once the outcomes are written, in one step rather than an effect each.
        const counted = Effect.sync(() => {
          for (const [counter, n] of [
            [Metrics.applied, appliedCount],
            [Metrics.superseded, supersededBy.size],
            // A parked lost lease was counted as failed when the claim found it (Loop).
            [Metrics.failed, failures.length - abandonedCount],
            [Metrics.dead, deadCount],
            [Metrics.released, released.length]
          ] as const) {
            if (n > 0) counter.unsafeUpdate(n, labels)
          }
        })
        // Retried from the first failure on the schedule, whose bound (half a lease) counts from
        // that failure: an outcome written after its lease ran out could be applied again elsewhere.
        // One warning per incident, not one per attempt (a Postgres restart is some thirty of
        // them): the attempts after the first are debug lines, and the end of it is said once.
        const write = Effect.suspend(() => {
          let failed = 0
          return once.pipe(
            Effect.tapError((error) =>
              ++failed === 1
                ? Effect.logWarning(`sync-outbox: recording outcomes failed, retrying for up to half a lease: ${oneLine(error)}`)
                : Effect.logDebug(`sync-outbox: recording outcomes failed again (attempt ${failed}): ${oneLine(error)}`)
            ),
            Effect.retry(retrySchedule),
            // Given up: those rows stay leased until their leases end, and only then can be claimed
            // again. The loop is told to look by then, not left to find them at its next poll; it
            // is woken too, since it may be asleep already with a wait computed before this note.
            Effect.tapError(() =>
              Effect.zipRight(Effect.flatMap(Clock.currentTimeMillis, (now) => noteRetry(now + leaseMs + 1)), options.wake)
            ),
            Effect.zipRight(Effect.suspend(() =>
              failed === 0 ? counted : Effect.zipRight(Effect.logInfo(`sync-outbox: outcomes recorded after ${failed + 1} attempts`), counted)
            ))
          )
        })
        return { write, unavailable }
      })

    const record = (outcomes: ReadonlyArray<Outcome>): Effect.Effect<{ readonly unavailable: boolean }, unknown> =>
      Effect.flatMap(prepare(outcomes), ({ unavailable, write }) => Effect.as(write, { unavailable }))

    /**
     * A call that timed out may still be running: an interrupted Effect stops, but a Promise does
     * not. The event stays leased (so neither it nor its key can be claimed) at least until its
     * lease expires, and as long as promise calls it started through `RedisSink.use` (or
     * `InFlight.tryPromise`) are running, renewing the lease meanwhile. Then the timeout is
     * recorded as that event's failed attempt, its retry due no earlier than the lease's end.
     */
    const hold = (held: Held): Effect.Effect<void> => {
      const { event } = held
      const recordNow = record([{ _tag: "Failed", event, superseded: [], error: held.error, permanent: false, keepLease: true }])
      const renew = Effect.flatMap(Clock.currentTimeMillis, (now) => leases.renew(owner, [event.id], new Date(now + leaseMs))).pipe(
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
        // Interruptible inside, or the bound would not hold in this finalizer (see Worker).
        Effect.onInterrupt(() => Effect.interruptible(recordNow).pipe(Effect.timeout(Duration.seconds(2)), Effect.ignore)),
        Effect.catchAllCause((cause) =>
          Effect.logWarning(`sync-outbox: the timeout of event ${event.id} could not be recorded; it comes back when its lease expires: ${causeLine(cause)}`)
        )
      )
    }

    // The one background record not yet joined, if any; whether it is still being written, and
    // whether a claim ran meanwhile.
    let background: Fiber.Fiber<unknown, unknown> | undefined
    let writing = false
    let claimedMeanwhile = false
    const claiming = () => {
      if (writing) claimedMeanwhile = true
    }
    const written = Effect.suspend(() => {
      writing = false
      if (!claimedMeanwhile) return Effect.void
      claimedMeanwhile = false
      return options.wake
    })
    const flush = Effect.suspend(() => {
      const pending = background
      background = undefined
      return pending === undefined ? Effect.void : Fiber.join(pending).pipe(
        Effect.catchAllCause((cause) =>
          Effect.zipRight(
            Metric.increment(Metrics.loopErrors),
            Effect.logWarning(`sync-outbox: outcomes could not be recorded; those rows come back when their leases expire: ${causeLine(cause)}`)
          )
        )
      )
    })
    const submit = (outcomes: ReadonlyArray<Outcome>) =>
      Effect.zipRight(
        flush,
        Effect.flatMap(
          Effect.flatMap(prepare(outcomes), ({ write }) =>
            Effect.suspend(() => {
              writing = true
              return Effect.fork(Effect.ensuring(write, written))
            })),
          (fiber) =>
            Effect.sync(() => {
              background = fiber
            })
        )
      )

    return { record, submit, flush, claiming, isDead }
  })
