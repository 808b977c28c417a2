/**
 * The breaker in front of the sink. Closed: claims run. Open (the sink was found unavailable):
 * nothing new starts, claimed events go back unattempted, and a cheap `PING` probes the sink on a
 * short, capped, jittered schedule until it answers; then it closes and the backlog drains.
 * One state, published on `state`; a transition is decided under a lock, so fifty items failing
 * together open it (and log, and count) once.
 */
import { Duration, Effect, Metric, Schedule, SubscriptionRef } from "effect"
import * as Metrics from "../Metrics.js"
import type { OutboxConfigShape } from "../OutboxConfig.js"
import type { RedisSinkShape } from "../RedisSink.js"
import { causeLine } from "./Causes.js"

export type BreakerState = "closed" | "open"

export interface Breaker {
  readonly state: SubscriptionRef.SubscriptionRef<BreakerState>
  readonly isOpen: Effect.Effect<boolean>
  readonly open: (reason: string) => Effect.Effect<void>
  /** Probe the sink until it answers (the schedule never gives up), then close. */
  readonly awaitSink: Effect.Effect<void, unknown>
}

export const make = (
  config: Pick<OutboxConfigShape, "probeBase" | "probeCap" | "callTimeout">,
  sink: RedisSinkShape
): Effect.Effect<Breaker> =>
  Effect.gen(function*() {
    const state = yield* SubscriptionRef.make<BreakerState>("closed")
    const lock = yield* Effect.makeSemaphore(1)
    yield* Metric.set(Metrics.breakerOpen, 0)

    const transition = (to: BreakerState, announce: Effect.Effect<void>) =>
      lock.withPermits(1)(
        Effect.flatMap(SubscriptionRef.get(state), (from) =>
          from === to ? Effect.void : SubscriptionRef.set(state, to).pipe(
            Effect.zipRight(announce),
            Effect.zipRight(Metric.increment(Metrics.breakerTransitions)),
            Effect.zipRight(Metric.set(Metrics.breakerOpen, to === "open" ? 1 : 0))
          ))
      )

    const open = (reason: string) =>
      transition("open", Effect.logWarning(`sync-outbox: Redis unavailable, pausing claims (${reason})`))
    const close = transition("closed", Effect.logInfo("sync-outbox: Redis is back, draining"))

    const probes = Schedule.exponential(config.probeBase).pipe(
      Schedule.either(Schedule.spaced(config.probeCap)),
      Schedule.jittered
    )
    const awaitSink = sink.ping.pipe(
      Effect.timeout(config.callTimeout),
      Effect.retry(probes),
      Effect.zipRight(close)
    )

    return {
      state,
      isOpen: Effect.map(SubscriptionRef.get(state), (s) => s === "open"),
      open,
      awaitSink
    }
  })

/**
 * Said once at start rather than at the first event: the sink is unreachable. ioredis needs a
 * moment to connect (it queues nothing meanwhile), so a refusal counts only after a second of
 * retries. The breaker opens, claims wait, and "Redis is back" follows when it answers.
 */
export const checkAtStart = (breaker: Breaker, sink: RedisSinkShape, callTimeout: Duration.Duration) =>
  sink.ping.pipe(
    Effect.timeout(callTimeout),
    Effect.retry(Schedule.spaced(Duration.millis(50)).pipe(Schedule.upTo(Duration.seconds(1)))),
    Effect.catchAllCause((cause) => breaker.open(`unreachable at start: ${causeLine(cause)}`))
  )
