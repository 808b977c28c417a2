/** The test kit's count of the worker's calls to its store (see `Tracker`). */
import { Context, Effect } from "effect"
import type { Claimed } from "../Leases.js"

/**
 * Counts the worker's statements, so that a drain sees from memory when the worker has gone
 * quiet (a database poll of its own would compete with the worker's statements), and keeps what
 * its claims returned.
 */
export class Tracker {
  inFlight = 0
  done = 0
  claimsStarted = 0
  claimsDone = 0
  lastClaimSize = 0
  /** Outcomes written down (complete, fail, release): each may unblock the next event of a key. */
  outcomes = 0
  /** `outcomes` as the claim that finished last began. */
  outcomesBeforeLastClaim = 0
  /** What the worker's claims returned since `claimed` was last emptied (at each drain's start). */
  readonly claimed = new Map<string, Claimed>()
  /** Those claims, each as it came back: the worker collapses coalescing events of a key within one. */
  readonly claims: Array<ReadonlyArray<Claimed>> = []
  private readonly waiters = new Set<() => void>()

  finished() {
    this.inFlight--
    this.done++
    for (const wake of this.waiters) wake()
  }

  /** Resumes once a statement has finished since `seen` was read from `done`, or at `deadline`. */
  changed(seen: number, deadline: number): Effect.Effect<void> {
    return Effect.async<void>((resume) => {
      if (this.done !== seen) return resume(Effect.void)
      const wake = () => {
        this.waiters.delete(wake)
        clearTimeout(timer)
        resume(Effect.void)
      }
      const timer = setTimeout(wake, Math.max(0, deadline - Date.now()))
      this.waiters.add(wake)
      return Effect.sync(() => {
        this.waiters.delete(wake)
        clearTimeout(timer)
      })
    })
  }
}

const outcomeStatements = new Set(["complete", "fail", "release"])

export class StoreTracker extends Context.Tag("sync-outbox/testing/StoreTracker")<StoreTracker, Tracker>() {}

/** The same service, every call counted (whatever its methods: the worker's use of it may change). */
export const trackCalls = <S extends object>(service: S, tracker: Tracker): S => {
  const track = (name: string, effect: Effect.Effect<unknown, unknown>) =>
    Effect.suspend(() => {
      tracker.inFlight++
      if (name === "claim") tracker.claimsStarted++
      const outcomesBefore = tracker.outcomes
      return effect.pipe(
        Effect.tap((result) =>
          Effect.sync(() => {
            if (name === "claim") {
              tracker.claimsDone++
              tracker.lastClaimSize = Array.isArray(result) ? result.length : 0
              tracker.outcomesBeforeLastClaim = outcomesBefore
              if (Array.isArray(result)) {
                if (result.length > 0) tracker.claims.push(result as Array<Claimed>)
                for (const event of result as Array<Claimed>) {
                  // An event whose lease ran out is handed back and claimed again to run alone: the
                  // first claim is the one that says it counted the lost run.
                  if (tracker.claimed.get(event.id)?.abandonedBy == null) tracker.claimed.set(event.id, event)
                }
              }
            }
          })
        ),
        Effect.ensuring(Effect.sync(() => {
          if (outcomeStatements.has(name)) tracker.outcomes++
          tracker.finished()
        }))
      )
    })
  const wrapped: Record<string, unknown> = {}
  for (const [name, value] of Object.entries(service)) {
    wrapped[name] = typeof value === "function"
      ? (...args: Array<unknown>) => {
        const result = (value as (...a: Array<unknown>) => unknown)(...args)
        return Effect.isEffect(result) ? track(name, result as Effect.Effect<unknown, unknown>) : result
      }
      : Effect.isEffect(value)
      ? track(name, value as Effect.Effect<unknown, unknown>)
      : value
  }
  return wrapped as unknown as S
}
