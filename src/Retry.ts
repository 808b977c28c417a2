/**
 * Attempt number to delay: exponential from `base`, capped at `cap`, then "equal jitter" (a
 * uniformly random point in the upper half), so rows that failed together (a burst against a
 * sick dependency) do not all retry in the same instant and knock it over again. Randomness comes only from Effect's `Random`, so tests can fix it.
 */
import { Duration, Effect, Random } from "effect"

export interface Policy {
  readonly base: Duration.Duration
  readonly cap: Duration.Duration
}

/** The delay before attempt `attempt + 1`, before jitter: base * 2^(attempt - 1), at most cap. */
export const ceiling = (policy: Policy, attempt: number): number => {
  const base = Duration.toMillis(policy.base)
  const cap = Duration.toMillis(policy.cap)
  const exponent = Math.max(0, attempt - 1)
  // 2^exponent overflows long before it matters; stop doubling once past the cap.
  return exponent >= 52 ? cap : Math.min(cap, base * 2 ** exponent)
}

/** The jittered delay after failed attempt number `attempt` (1-based), in [ceiling/2, ceiling]. */
export const delay = (policy: Policy, attempt: number): Effect.Effect<Duration.Duration> =>
  Effect.map(Random.next, (r) => {
    const max = ceiling(policy, attempt)
    return Duration.millis(Math.round(max / 2 + r * (max / 2)))
  })
