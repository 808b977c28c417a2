import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Random } from "effect"
import { Retry } from "../src/index.js"

const policy: Retry.Policy = { base: Duration.millis(100), cap: Duration.seconds(10) }

describe("Retry", () => {
  it("doubles from the base per attempt and stops at the cap", () => {
    expect([1, 2, 3, 4, 5, 7, 8, 60, 5_000].map((n) => Retry.ceiling(policy, n))).toEqual([
      100, 200, 400, 800, 1_600, 6_400, 10_000, 10_000, 10_000
    ])
  })

  it.effect("jitters within the upper half of the ceiling, from Effect's Random", () =>
    Effect.gen(function*() {
      const delays = yield* Effect.forEach(Array.from({ length: 200 }), () => Retry.delay(policy, 4)).pipe(
        Effect.withRandom(Random.make("seed"))
      )
      const ms = delays.map(Duration.toMillis)
      expect(Math.min(...ms)).toBeGreaterThanOrEqual(400)
      expect(Math.max(...ms)).toBeLessThanOrEqual(800)
      // Rows that failed together must not retry together.
      expect(new Set(ms).size).toBeGreaterThan(100)
    }))

  it.effect("is reproducible under a fixed seed", () =>
    Effect.gen(function*() {
      const run = Effect.suspend(() =>
        Effect.forEach([1, 2, 3], (n) => Retry.delay(policy, n)).pipe(Effect.withRandom(Random.make(42)))
      )
      expect((yield* run).map(Duration.toMillis)).toEqual((yield* run).map(Duration.toMillis))
    }))
})
