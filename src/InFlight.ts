/**
 * Promise work a handler started, tracked so that the worker knows when a call has really ended.
 * Interrupting an Effect stops it; a Promise cannot be stopped, only told (an `AbortSignal`) and
 * waited for. The worker gives each piece of handler work a `Calls` set; promise work started
 * through `tryPromise` (which `RedisSink.use` does) is registered in it, so that after a timeout
 * the worker keeps the event leased until every such call has settled.
 */
import { Effect, FiberRef, GlobalValue } from "effect"

/** The promise calls of one piece of handler work that have not settled yet. */
export class Calls {
  private readonly pending = new Set<PromiseLike<unknown>>()

  add(call: PromiseLike<unknown>): void {
    this.pending.add(call)
    const done = () => {
      this.pending.delete(call)
    }
    call.then(done, done)
  }

  /** The calls still running now. */
  running(): ReadonlyArray<PromiseLike<unknown>> {
    return [...this.pending]
  }
}

// Promise calls started through `tryPromise` (or `counted`) and not settled yet, in this process,
// by number. Counted only once a test kit has asked (`nextCall`): a production worker's Redis
// calls pay nothing for it.
const running = GlobalValue.globalValue(
  Symbol.for("sync-outbox/InFlight/runningCalls"),
  () => ({ on: false, next: 1, calls: new Set<number>() })
)

/**
 * How many promise calls started through `tryPromise` (so `RedisSink.use`), or `counted`, have
 * not settled yet, across the process, since a test kit first called `nextCall`: the kit's
 * driver does not move time while one runs.
 * With `from` (a `nextCall()` taken earlier), only the calls started since: a test kit counts its
 * own, not a call an earlier test left running forever.
 */
export const runningCalls = (from = 0): number => {
  if (from <= 1) return running.calls.size
  let count = 0
  for (const call of running.calls) if (call >= from) count++
  return count
}

/** The number the next counted call will get (see `runningCalls`); from now on calls are counted. */
export const nextCall = (): number => {
  running.on = true
  return running.next
}

/** `call`, counted in `runningCalls` until it settles. */
export const counted = <A>(call: PromiseLike<A>): PromiseLike<A> => {
  if (!running.on) return call
  const id = running.next++
  running.calls.add(id)
  const settled = () => {
    running.calls.delete(id)
  }
  call.then(settled, settled)
  return call
}

/** The `Calls` of the handler work running on this fiber, if the worker set one. */
export const currentCalls: FiberRef.FiberRef<Calls | undefined> = GlobalValue.globalValue(
  Symbol.for("sync-outbox/InFlight/currentCalls"),
  () => FiberRef.unsafeMake<Calls | undefined>(undefined)
)

/** Run `effect` with its promise calls recorded in `calls`. */
export const trackIn = (calls: Calls) => <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.locally(effect, currentCalls, calls)

/**
 * `Effect.tryPromise` for handler work: the promise gets an `AbortSignal` that is aborted when the
 * call is interrupted (the worker's call timeout), and the worker knows whether it is still
 * running. A handler's own promise work (not through `RedisSink.use`) should use this.
 */
export const tryPromise = <A, E>(options: {
  readonly try: (signal: AbortSignal) => PromiseLike<A>
  readonly catch: (error: unknown) => E
}): Effect.Effect<A, E> =>
  Effect.flatMap(FiberRef.get(currentCalls), (calls) =>
    Effect.tryPromise({
      try: (signal: AbortSignal) => {
        const call = options.try(signal)
        calls?.add(call)
        return counted(call)
      },
      catch: options.catch
    }))
