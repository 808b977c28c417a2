import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Chunk, ConfigProvider, Duration, Effect, Fiber, Layer, Logger, Metric, Option, Ref, TestClock } from "effect"
import { beforeAll } from "vitest"
import {
  Convergence,
  ConvergenceConfig,
  DriftCounter,
  InvalidConfig,
  Metrics,
  Reconciler,
  ReconcileError,
  type ReconcilerShape
} from "../src/index.js"
import { eventually, freshDatabase, realSleep, sqlLayer } from "./support/harness.js"

let url: string
beforeAll(async () => {
  url = await freshDatabase("convergence")
})

/**
 * A toy domain: `source` is the truth, `sink` what was written. The sink "loses its data" when
 * its generation marker is gone; a repair re-arms the marker first, then copies the truth.
 */
const toyDomain = (options: { readonly failRebuilds?: number } = {}) =>
  Effect.gen(function*() {
    const source = new Map<string, string>([["a", "1"], ["b", "2"], ["c", "3"]])
    const sink = new Map<string, string>(source)
    const state = { marker: true, rebuilds: 0, failuresLeft: options.failRebuilds ?? 0, paced: 0 }
    const reconciler: ReconcilerShape = {
      detectLoss: Effect.sync(() => (state.marker ? Option.none() : Option.some("generation marker missing"))),
      reconcile: ({ pace, repair }) =>
        Effect.gen(function*() {
          if (repair && state.failuresLeft > 0) {
            state.failuresLeft--
            return yield* Effect.fail(new ReconcileError({ message: "sink went away mid-rebuild" }))
          }
          if (repair) state.marker = true
          const drift = new DriftCounter("things")
          for (const [key, value] of source) {
            drift.checked++
            const seen = sink.get(key)
            if (seen === undefined) drift.found("missing", key)
            else if (seen !== value) drift.found("stale", key)
            else continue
            if (repair) {
              sink.set(key, value)
              drift.repaired++
            }
          }
          for (const key of [...sink.keys()]) {
            if (source.has(key)) continue
            drift.found("orphaned", key)
            if (repair) {
              sink.delete(key)
              drift.repaired++
            }
          }
          yield* pace(drift.checked)
          state.paced += drift.checked
          if (repair) state.rebuilds++
          return { families: [drift.result()], repair }
        })
    }
    return { source, sink, state, layer: Layer.succeed(Reconciler, reconciler) }
  })

const configFrom = (env: Record<string, string>) =>
  ConvergenceConfig.pipe(
    Effect.provide(
      ConvergenceConfig.layerConfig().pipe(
        Layer.provide(Layer.setConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(env)), { pathDelim: "_" })))
      )
    )
  )

describe("Convergence", () => {
  it.live("a sink that lost its data is rebuilt at once, counted and logged once per incident", () =>
    Effect.gen(function*() {
      const toy = yield* toyDomain({ failRebuilds: 2 })
      const before = (yield* Metric.value(Metrics.dataLoss)).count
      yield* Effect.gen(function*() {
        // Redis restarted empty: the marker and every entry are gone.
        toy.sink.clear()
        toy.state.marker = false
        yield* eventually(Effect.sync(() => toy.sink.size), (n) => n === 3, { timeout: 10_000 })
        expect([...toy.sink]).toEqual([...toy.source])
        // Two failed rebuilds and a good one: still a single incident.
        expect((yield* Metric.value(Metrics.dataLoss)).count - before).toBe(1)
        // A second loss later is a second incident.
        toy.sink.delete("a")
        toy.state.marker = false
        yield* eventually(Effect.sync(() => toy.sink.has("a")), (has) => has)
        expect((yield* Metric.value(Metrics.dataLoss)).count - before).toBe(2)
      }).pipe(
        Effect.provide(Convergence.layer.pipe(
          Layer.provide(ConvergenceConfig.layer({ interval: Option.none(), lossCheckInterval: Option.some(Duration.millis(20)) })),
          Layer.provide(toy.layer)
        ))
      )
      const runs = yield* Convergence.lastRuns
      expect(runs.find((r) => r.reason === "loss")).toMatchObject({ repair: true, error: null })
    }).pipe(Effect.provide(sqlLayer(url)), Effect.scoped))

  it.live("a reconciler that dies (a bug: it throws) stops neither loop: said once at error level, the sink still healed", () =>
    Effect.gen(function*() {
      const toy = yield* toyDomain()
      const reconciler = yield* Reconciler.pipe(Effect.provide(toy.layer))
      let lossChecksToDie = 5
      let sweepsToDie = 2
      let sweepsAfter = 0
      const buggy: ReconcilerShape = {
        detectLoss: Effect.suspend(() => {
          if (lossChecksToDie > 0) {
            lossChecksToDie--
            throw new Error("bug in detectLoss")
          }
          return reconciler.detectLoss
        }),
        reconcile: (options) =>
          Effect.suspend(() => {
            if (!options.repair || options.rate === undefined) return reconciler.reconcile(options)
            if (sweepsToDie > 0) {
              sweepsToDie--
              return Effect.die(new Error("bug in reconcile"))
            }
            sweepsAfter++
            return reconciler.reconcile(options)
          })
      }
      const logs: Array<{ level: string; message: string }> = []
      const logger = Logger.replace(Logger.defaultLogger, Logger.make(({ logLevel, message }) => {
        logs.push({ level: logLevel.label, message: Array.isArray(message) ? String(message[0]) : String(message) })
      }))
      yield* Effect.gen(function*() {
        toy.sink.clear()
        toy.state.marker = false
        // The loss check died five times; the sixth finds the loss and the sink is rebuilt.
        yield* eventually(Effect.sync(() => toy.sink.size), (n) => n === 3, { timeout: 10_000 })
        // The sweep died twice and still runs.
        yield* eventually(Effect.sync(() => sweepsAfter), (n) => n > 0, { timeout: 10_000 })
      }).pipe(
        Effect.provide(Convergence.layer.pipe(
          Layer.provide(ConvergenceConfig.layer({ interval: Option.some(Duration.millis(50)), lossCheckInterval: Option.some(Duration.millis(20)) })),
          Layer.provide(Layer.succeed(Reconciler, buggy))
        )),
        Effect.provide(logger)
      )
      const errors = logs.filter((l) => l.level === "ERROR").map((l) => l.message)
      expect(errors.filter((m) => m.includes("the loss check died"))).toHaveLength(1)
      expect(errors.filter((m) => m.includes("reconcile died"))).toHaveLength(2)
    }).pipe(Effect.provide(sqlLayer(url)), Effect.scoped))

  it.live("the periodic sweep repairs missing, stale and orphaned entries, and records what it found", () =>
    Effect.gen(function*() {
      const toy = yield* toyDomain()
      toy.sink.delete("a")
      toy.sink.set("b", "old")
      toy.sink.set("zombie", "9")
      yield* Effect.gen(function*() {
        yield* eventually(Effect.sync(() => [...toy.sink].sort()), (entries) => JSON.stringify(entries) === JSON.stringify([...toy.source].sort()))
        yield* eventually(Convergence.lastRuns, (runs) => runs.some((r) => r.reason === "periodic" && r.finishedAt !== null))
      }).pipe(
        Effect.provide(Convergence.layer.pipe(
          Layer.provide(ConvergenceConfig.layer({ interval: Option.some(Duration.millis(50)), lossCheckInterval: Option.none() })),
          Layer.provide(toy.layer)
        ))
      )
      const periodic = (yield* Convergence.lastRuns).find((r) => r.reason === "periodic")
      expect(periodic).toBeDefined()
      expect(periodic!.error).toBeNull()
      expect((yield* Metric.value(Metrics.driftRepaired.pipe(Metric.tagged("family", "things")))).count).toBeGreaterThanOrEqual(3)
    }).pipe(Effect.provide(sqlLayer(url)), Effect.scoped))

  it.scoped("a sweep is paced by the rate limit, in Clock time", () =>
    Effect.gen(function*() {
      const toy = yield* toyDomain()
      // Three entries at 1 command per second: the sweep waits three seconds before it ends.
      const fiber = yield* Effect.fork(Convergence.runOnce("manual", { repair: false, rate: 1 }).pipe(Effect.provide(toy.layer)))
      // The lock is taken in real time first: move the clock only once the sweep is waiting on it.
      yield* eventually(Effect.map(TestClock.sleeps(), Chunk.size), (n) => n > 0)
      yield* TestClock.adjust(Duration.seconds(2))
      expect(Option.isNone(yield* Fiber.poll(fiber))).toBe(true)
      yield* TestClock.adjust(Duration.seconds(1))
      const report = yield* Fiber.join(fiber)
      expect(Option.map(report, (r) => r.families[0]!.checked)).toEqual(Option.some(3))
    }).pipe(Effect.provide(sqlLayer(url))))

  it.live("one reconcile at a time among processes: a second one finds the lock held and does nothing", () =>
    Effect.gen(function*() {
      const toy = yield* toyDomain()
      const release = yield* Ref.make(false)
      const holder = yield* Effect.fork(
        Convergence.exclusively(Effect.repeat(realSleep(10), { until: () => Effect.runSync(Ref.get(release)) }))
          .pipe(Effect.provide(sqlLayer(url)), Effect.scoped)
      )
      yield* realSleep(300)
      // Another pool: another session, as another process would have.
      const second = yield* Convergence.runOnce("manual", { repair: true }).pipe(Effect.provide(Layer.merge(toy.layer, sqlLayer(url))))
      expect(Option.isNone(second)).toBe(true)
      yield* Ref.set(release, true)
      expect(Option.isSome(yield* Fiber.join(holder))).toBe(true)
      const third = yield* Convergence.runOnce("manual", { repair: true }).pipe(Effect.provide(Layer.merge(toy.layer, sqlLayer(url))))
      expect(Option.isSome(third)).toBe(true)
    }))

  it.effect("reads SYNC_OUTBOX_RECONCILE_INTERVAL, _LOSS_CHECK_INTERVAL and _RECONCILE_RATE; off turns a part off", () =>
    Effect.gen(function*() {
      const defaults = yield* configFrom({})
      expect(Option.map(defaults.interval, Duration.toMillis)).toEqual(Option.some(300_000))
      expect(Option.map(defaults.lossCheckInterval, Duration.toMillis)).toEqual(Option.some(500))
      const set = yield* configFrom({
        SYNC_OUTBOX_RECONCILE_INTERVAL: "off",
        SYNC_OUTBOX_LOSS_CHECK_INTERVAL: "250 millis",
        SYNC_OUTBOX_RECONCILE_RATE: "500"
      })
      expect(Option.isNone(set.interval)).toBe(true)
      expect(Option.map(set.lossCheckInterval, Duration.toMillis)).toEqual(Option.some(250))
      expect(set.rate).toBe(500)
      // Go's form, as every other duration setting reads it; 0 is off too.
      const goForm = yield* configFrom({ SYNC_OUTBOX_RECONCILE_INTERVAL: "1m30s", SYNC_OUTBOX_LOSS_CHECK_INTERVAL: "0" })
      expect(Option.map(goForm.interval, Duration.toMillis)).toEqual(Option.some(90_000))
      expect(Option.isNone(goForm.lossCheckInterval)).toBe(true)
      for (const bad of [{ SYNC_OUTBOX_RECONCILE_INTERVAL: "soon" }, { SYNC_OUTBOX_RECONCILE_RATE: "0" }, { SYNC_OUTBOX_RECONCILE_RATE: "5e3" }, { SYNC_OUTBOX_LOSS_CHECK_INTERVAL: "-1 seconds" }]) {
        const error = yield* Effect.flip(configFrom(bad))
        expect(error).toBeInstanceOf(InvalidConfig)
      }
    }))
})

// Keep the SqlClient import honest for readers: the lock lives in Postgres.
export type { SqlClient }
