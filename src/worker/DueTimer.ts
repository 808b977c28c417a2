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

export const make = <E>(pollMs: number, nextWakeAt: Effect.Effect<number | null, E>): Effect.Effect<DueTimer> =>
  Effect.gen(function*() {
    const earliest = yield* Ref.make<number | null>(null)
    const askedAt = yield* Ref.make(Number.NEGATIVE_INFINITY)
    const note = (at: number) => Ref.update(earliest, (current) => (current === null || at < current ? at : current))

    const waitMs = (claimedLastTime: boolean) =>
      Effect.gen(function*() {
        const now = yield* Clock.currentTimeMillis
        if (now - (yield* Ref.get(askedAt)) >= pollMs) {
          const fromDb = yield* nextWakeAt
          yield* Ref.set(askedAt, now)
          if (fromDb !== null) yield* note(fromDb)
        }
        const dueAt = yield* Ref.get(earliest)
        if (dueAt !== null && dueAt <= now) {
          // Consumed: the next wait asks the database for whatever is due after it.
          yield* Ref.set(earliest, null)
          yield* Ref.set(askedAt, Number.NEGATIVE_INFINITY)
        }
        const floor = claimedLastTime ? 0 : blockedRetryFloorMs
        return dueAt === null ? pollMs : Math.max(floor, Math.min(pollMs, dueAt - now))
      })

    return { note, waitMs }
  })
