/**
 * The worker, assembled from its parts (each in `worker/`): the `Breaker` in front of the sink,
 * the `DueTimer` for retries, the `Recorder` that writes outcomes down, the `Heartbeat`, and the
 * claim `Loop`, woken by the `Listener`. A scoped layer: it cannot be started twice, and closing
 * its scope finishes what is in flight, hands unstarted claims back without counting an attempt,
 * records timed-out calls, and unregisters.
 */
import type { SqlClient } from "@effect/sql"
import { Context, Deferred, Duration, Effect, Layer, Queue, Random, Ref, Stream, SubscriptionRef } from "effect"
import { hostname } from "node:os"
import { Handlers } from "./Handlers.js"
import * as Journal from "./Journal.js"
import { Leases } from "./Leases.js"
import { Listener } from "./Listener.js"
import { OutboxConfig } from "./OutboxConfig.js"
import { RedisSink } from "./RedisSink.js"
import * as Breaker from "./worker/Breaker.js"
import * as DueTimer from "./worker/DueTimer.js"
import * as Heartbeat from "./worker/Heartbeat.js"
import * as Loop from "./worker/Loop.js"
import * as Recorder from "./worker/Recorder.js"

export type { BreakerState } from "./worker/Breaker.js"
export type { LoopState } from "./worker/Loop.js"
export { groupByKey } from "./worker/Outcome.js"

export interface WorkerShape {
  /** Who this worker is in `lease_owner`. */
  readonly owner: string
  readonly breaker: SubscriptionRef.SubscriptionRef<Breaker.BreakerState>
  readonly loop: SubscriptionRef.SubscriptionRef<Loop.LoopState>
  /** Ask for a claim now (as a notification would). */
  readonly wake: Effect.Effect<void>
  /**
   * Whether the claim loop is waiting for its next look with nothing claimed in hand (true when
   * disabled): what a test driver waits for before it reports.
   */
  readonly idle: Effect.Effect<boolean>
}

const make = Effect.gen(function*() {
  const config = yield* OutboxConfig
  const leases = yield* Leases
  const handlers = yield* Handlers
  const listener = yield* Listener
  const redis = yield* RedisSink

  const owner = `${hostname()}:${process.pid}:${(yield* Random.nextInt).toString(36)}`
  const breaker = yield* Breaker.make(config, redis)
  const loopState = yield* SubscriptionRef.make<Loop.LoopState>(config.enabled ? "starting" : "stopped")
  const loopError = yield* Ref.make<string | null>(null)
  const wakeups = yield* Queue.sliding<void>(1)
  const wake = Effect.asVoid(Queue.offer(wakeups, undefined))
  const idle = yield* Ref.make(!config.enabled)
  const shape: WorkerShape = { owner, breaker: breaker.state, loop: loopState, wake, idle: Ref.get(idle) }

  if (!config.enabled) {
    yield* Effect.logInfo("sync-outbox: worker disabled (SYNC_OUTBOX_ENABLED=false)")
    return shape
  }

  // Completions journal what they delete while the retention is above zero; one pruner at a time.
  const journaling = yield* Journal.start(config.retention)
  const dueTimer = yield* DueTimer.make(Duration.toMillis(config.interval), leases.nextWakeAt)
  const recorder = yield* Recorder.make({ owner, leases, config, journaling, noteRetry: dueTimer.note, wake })
  yield* Effect.forkScoped(Stream.runForEach(listener.wakeups, () => wake))
  yield* Heartbeat.start({ owner, leases, config, breaker: breaker.state, listener: listener.state, loop: loopState, loopError })
  yield* Effect.forkScoped(Effect.zipRight(Breaker.checkAtStart(breaker, redis, config.callTimeout), wake))

  const stopping = yield* Deferred.make<void>()
  const loop = yield* Effect.forkScoped(Effect.interruptible(
    Loop.run({ owner, config, leases, handlers, breaker, recorder, dueTimer, wakeups, stopping, state: loopState, error: loopError, idle })
  ))
  yield* Effect.addFinalizer(() =>
    Deferred.succeed(stopping, undefined).pipe(
      Effect.zipRight(wake),
      // In-flight handlers finish (they are bounded by callTimeout); then the loop ends by itself.
      // The wait is interruptible, or the timeout could not end it: a finalizer runs
      // uninterruptibly, and a timeout there waits for its effect whatever the time (with Postgres
      // away, the loop writing its outcomes down kept shutdown for half a lease). Past the bound,
      // the scope interrupts the loop.
      Effect.zipRight(Effect.interruptible(loop.await).pipe(Effect.timeout(Duration.sum(config.callTimeout, Duration.seconds(1))), Effect.ignore))
    )
  )
  return shape
})

export class Worker extends Context.Tag("sync-outbox/Worker")<Worker, WorkerShape>() {
  static readonly layer: Layer.Layer<
    Worker,
    never,
    OutboxConfig | Leases | Handlers | Listener | RedisSink | SqlClient.SqlClient
  > = Layer.scoped(Worker, make)
}
