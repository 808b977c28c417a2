/**
 * The worker's registration in `sync_outbox_workers`, visible to `status` in other processes:
 * written at start, refreshed on the poll interval and on every breaker, listener or loop change,
 * removed on a clean shutdown. A failed beat is logged at debug level and tried again later.
 */
import { Duration, Effect, Ref, Schedule, type Scope, Stream, SubscriptionRef } from "effect"
import { hostname } from "node:os"
import type { LeasesShape } from "../Leases.js"
import type { ListenerState } from "../Listener.js"
import type { OutboxConfigShape } from "../OutboxConfig.js"
import type { BreakerState } from "./Breaker.js"
import { causeLine } from "./Causes.js"
import type { LoopState } from "./Loop.js"

export interface HeartbeatOptions {
  readonly owner: string
  readonly leases: LeasesShape
  readonly config: Pick<OutboxConfigShape, "interval" | "callTimeout" | "retention">
  readonly breaker: SubscriptionRef.SubscriptionRef<BreakerState>
  readonly listener: SubscriptionRef.SubscriptionRef<ListenerState>
  readonly loop: SubscriptionRef.SubscriptionRef<LoopState>
  readonly loopError: Ref.Ref<string | null>
}

export const start = (options: HeartbeatOptions): Effect.Effect<void, never, Scope.Scope> =>
  Effect.gen(function*() {
    const { config, leases, owner } = options
    // One statement at a time, and none after the row is removed: a beat still in flight when the
    // worker stops (the loop's "stopped" is itself a change that beats) would otherwise upsert the
    // row again after the DELETE, and `status` would show a worker that is gone.
    const gate = yield* Effect.makeSemaphore(1)
    let unregistered = false
    // Uninterruptible: stopping waits for a statement already sent rather than abandoning it to land later.
    const beat = gate.withPermits(1)(Effect.suspend(() => (unregistered ? Effect.void : Effect.uninterruptible(beatNow))))
    const beatNow = Effect.gen(function*() {
      yield* leases.heartbeat({
        owner,
        hostname: hostname(),
        pid: process.pid,
        breaker: yield* SubscriptionRef.get(options.breaker),
        listener: yield* SubscriptionRef.get(options.listener),
        loop: yield* SubscriptionRef.get(options.loop),
        loopError: yield* Ref.get(options.loopError),
        retentionMs: Duration.toMillis(config.retention)
      }).pipe(Effect.timeout(config.callTimeout))
    }).pipe(Effect.catchAllCause((cause) => Effect.logDebug(`sync-outbox: heartbeat failed: ${causeLine(cause)}`)))
    // Finalizers run in reverse: whatever the caller added later (the loop) stops first, then the beats, then the row goes.
    // Interruptible inside, or the bound would not hold in a finalizer (see Worker).
    yield* Effect.addFinalizer(() =>
      Effect.interruptible(gate.withPermits(1)(Effect.suspend(() => {
        unregistered = true
        return leases.unregister(owner)
      }))).pipe(Effect.timeout(Duration.seconds(2)), Effect.ignore)
    )
    yield* beat
    yield* Effect.forkScoped(Effect.repeat(beat, Schedule.spaced(config.interval)))
    yield* Effect.forkScoped(
      // Not dropping the first value: a change between the first beat and subscribing must not be lost.
      Stream.mergeAll([options.breaker.changes, options.listener.changes, options.loop.changes], { concurrency: "unbounded" }).pipe(
        Stream.runForEach(() => beat)
      )
    )
  })
