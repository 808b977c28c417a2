/**
 * When the idle worker must look again even if nothing notifies it: the earliest scheduled retry.
 * The retries this worker schedules itself are noted as it records them, so waiting needs no
 * query per cycle; the database is asked once per poll interval (it also knows the retries of
 * other workers, including ones that died). Expired leases are not tracked here: the poll finds them.
 */
import { Clock, Effect, Ref } from "effect"

// A retry that is due but not claimable (its key is leased elsewhere) must not spin the loop.
const blockedRetryFloorMs = 25

export interface DueTimer {
  /** A retry this worker scheduled, due at `at` (epoch ms). */
  readonly note: (at: number) => Effect.Effect<void>
  /** How long to sleep before the next claim, at most `pollMs`. */
  readonly waitMs: (claimedLastTime: boolean) => Effect.Effect<number, unknown>
}

// Retries this worker knows of, soonest first; a worker failing thousands at once needs only the
// soonest few (the database is asked again once they are consumed).
const maxNoted = 1_024

export const make = <E>(pollMs: number, nextWakeAt: Effect.Effect<number | null, E>): Effect.Effect<DueTimer> =>
  Effect.gen(function*() {
    // Every noted time, not only the earliest: consuming one that is due must not forget a later
    // one. (The database, read while a failure is still being written in the background, can
    // return the retry just consumed; taking it as "the earliest" used to wipe the new one, and
    // the worker then slept a whole poll past it.)
    const noted = yield* Ref.make<ReadonlyArray<number>>([])
    const askedAt = yield* Ref.make(Number.NEGATIVE_INFINITY)
    const note = (at: number) =>
      Ref.update(noted, (times) => {
        if (times.includes(at)) return times
        const next = [...times, at].sort((a, b) => a - b)
        return next.length > maxNoted ? next.slice(0, maxNoted) : next
      })

    const waitMs = (claimedLastTime: boolean) =>
      Effect.gen(function*() {
        const now = yield* Clock.currentTimeMillis
        if (now - (yield* Ref.get(askedAt)) >= pollMs) {
          const fromDb = yield* nextWakeAt
          yield* Ref.set(askedAt, now)
          if (fromDb !== null) yield* note(fromDb)
        }
        const times = yield* Ref.get(noted)
        const dueAt = times.length === 0 ? null : times[0]!
        if (dueAt !== null && dueAt <= now) {
          // Consumed (the claim that follows takes what is due); later ones stay. The next wait
          // asks the database for whatever else is due.
          yield* Ref.set(noted, times.filter((at) => at > now))
          yield* Ref.set(askedAt, Number.NEGATIVE_INFINITY)
        }
        const floor = claimedLastTime ? 0 : blockedRetryFloorMs
        return dueAt === null ? pollMs : Math.max(floor, Math.min(pollMs, dueAt - now))
      })

    return { note, waitMs }
  })
