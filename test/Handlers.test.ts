import { describe, expect, it } from "@effect/vitest"
import { Data, Duration, Effect, Exit, ParseResult, Schema } from "effect"
import { type ApplyOutcome, handle, handleBatch, Handlers, InFlight, OutboxEvent, type ClaimedEvent } from "../src/index.js"

class Refused extends Data.TaggedError("Refused")<{ readonly message: string }> {}

const Thing = OutboxEvent.make({ resourceType: "thing", action: "set", payload: Schema.String })
const Batched = OutboxEvent.make({ resourceType: "batched", action: "set", payload: Schema.String })
const Needy = OutboxEvent.make({ resourceType: "needy", action: "update", payload: Schema.Null, requiresResourceId: true })

let nextId = 1
const claimed = (type: OutboxEvent.EventType.Any, payload: unknown, resourceId: number | null = 1): ClaimedEvent => ({
  id: String(nextId++),
  resourceType: type.resourceType,
  action: type.action,
  resourceId,
  orderingKey: `${type.resourceType}:${nextId}`,
  payload,
  coalesce: false,
  retryCount: 0,
  createdAt: new Date()
})

/** Each payload says how the handler behaves. */
const behave = (payload: string) =>
  Effect.gen(function*() {
    switch (payload) {
      case "ok":
        return
      case "fail":
        return yield* new Refused({ message: "refused" })
      case "throw":
        return yield* Effect.sync(() => {
          throw new Error("thrown inside Effect.sync")
        })
      case "die":
        return yield* Effect.die(new TypeError("died on purpose"))
      case "reject":
        return yield* Effect.promise(() => Promise.reject(new Error("the promise rejected")))
      case "hang":
        return yield* Effect.never
    }
  })

const registry = Handlers.layer(
  handle(Thing, ({ payload }) => behave(payload)),
  handleBatch(Batched, (events) =>
    Effect.gen(function*() {
      if (events.some((e) => e.payload === "throw-all")) throw new Error("the batch handler threw")
      if (events.some((e) => e.payload === "short")) return [Exit.void]
      // A value where an Exit belongs (a handler that returned its Redis replies, say).
      if (events.some((e) => e.payload === "not-an-exit")) return events.map((e) => (e.payload === "not-an-exit" ? "OK" : Exit.void)) as any
      return yield* Effect.forEach(events, (e) => Effect.exit(behave(e.payload)))
    })),
  handle(Needy, () => Effect.void)
)

const applyAll = (events: ReadonlyArray<ClaimedEvent>, timeout = Duration.seconds(5)) =>
  Effect.flatMap(Handlers, (h) => h.applyAll(events, { concurrency: 4, timeout }))

const tags = (outcomes: ReadonlyArray<ApplyOutcome>) => outcomes.map((o) => o._tag)

const defectMessage = (outcome: ApplyOutcome | undefined) =>
  outcome?._tag === "Defect" ? outcome.error.message : `not a defect: ${outcome?._tag}`

describe("Handlers: one typed outcome per event, whatever the handler does", () => {
  it.effect("applied, failed, and each kind of defect are told apart, each event on its own", () =>
    Effect.gen(function*() {
      const outcomes = yield* applyAll(["ok", "fail", "throw", "die", "reject", "ok"].map((p) => claimed(Thing, p)))
      expect(tags(outcomes)).toEqual(["Applied", "Failed", "Defect", "Defect", "Defect", "Applied"])
      const failed = outcomes[1]!
      expect(failed._tag === "Failed" && failed.error).toBeInstanceOf(Refused)
      expect(failed._tag === "Failed" && failed.permanent).toBe(false)
    }).pipe(Effect.provide(registry)))

  it.effect("a defect carries the thrown message and the first line of its stack", () =>
    Effect.gen(function*() {
      const [thrown, died, rejected] = yield* applyAll(["throw", "die", "reject"].map((p) => claimed(Thing, p)))
      expect(defectMessage(thrown)).toMatch(/^Error: thrown inside Effect\.sync \(at .+Handlers\.test\.ts:\d+:\d+\)?\)$/)
      expect(defectMessage(died)).toMatch(/^TypeError: died on purpose \(at .+\)$/)
      expect(defectMessage(rejected)).toMatch(/^Error: the promise rejected \(at .+\)$/)
      expect(thrown?._tag === "Defect" && thrown.error._tag).toBe("HandlerDefect")
    }).pipe(Effect.provide(registry)))

  it.effect("a batch handler's per-event Exits are per-event outcomes; a throw or a short answer is every event's defect", () =>
    Effect.gen(function*() {
      const mixed = yield* applyAll(["ok", "fail", "die", "ok"].map((p) => claimed(Batched, p)))
      expect(tags(mixed)).toEqual(["Applied", "Failed", "Defect", "Applied"])
      const thrown = yield* applyAll(["ok", "throw-all"].map((p) => claimed(Batched, p)))
      expect(tags(thrown)).toEqual(["Defect", "Defect"])
      expect(defectMessage(thrown[0])).toContain("the batch handler threw")
      const short = yield* applyAll(["ok", "short", "ok"].map((p) => claimed(Batched, p)))
      expect(tags(short)).toEqual(["Applied", "Defect", "Defect"])
      expect(defectMessage(short[1])).toContain("returned 1 outcomes for 3 events")
      const junk = yield* applyAll(["ok", "not-an-exit"].map((p) => claimed(Batched, p)))
      expect(tags(junk)).toEqual(["Applied", "Defect"])
      expect(defectMessage(junk[1])).toBe(`the batch handler for batched/set returned "OK", not an Exit, for event 2 of 2`)
    }).pipe(Effect.provide(registry)))

  it.effect("a type that needs a resource id, given none, is a permanent MissingResourceId and its handler never runs", () =>
    Effect.gen(function*() {
      const [missing, present] = yield* applyAll([claimed(Needy, null, null), claimed(Needy, null, 7)])
      expect(missing?._tag).toBe("Failed")
      if (missing?._tag !== "Failed") return
      expect(missing.permanent).toBe(true)
      expect(missing.error).toMatchObject({ _tag: "MissingResourceId", message: "needy/update needs a resource id (needy id missing)" })
      expect(present?._tag).toBe("Applied")
    }).pipe(Effect.provide(registry)))

  it.live("a payload schema with an asynchronous part, at the top or in a field, is decoded; a payload it rejects is a permanent MalformedPayload", () =>
    Effect.gen(function*() {
      // A transformation that needs an effect: the synchronous decoder cannot run it.
      const Upper = Schema.transformOrFail(Schema.String, Schema.String, {
        strict: true,
        decode: (s) =>
          Effect.delay(
            s === "bad" ? ParseResult.fail(new ParseResult.Type(Schema.String.ast, s, "bad payload")) : ParseResult.succeed(s.toUpperCase()),
            Duration.millis(1)
          ),
        encode: ParseResult.succeed
      })
      const Top = OutboxEvent.make({ resourceType: "slow", action: "top", payload: Upper })
      const Nested = OutboxEvent.make({ resourceType: "slow", action: "nested", payload: Schema.Struct({ name: Upper, tags: Schema.Array(Upper) }) })
      const seen: Array<unknown> = []
      const record = (events: ReadonlyArray<{ readonly payload: unknown }>) =>
        Effect.sync(() =>
          events.map((e) => {
            seen.push(e.payload)
            return Exit.void
          })
        )
      const handlers = yield* Effect.provide(Handlers, Handlers.layer(handleBatch(Top, record), handleBatch(Nested, record)))
      const outcomes = yield* handlers.applyAll([
        claimed(Top, "fine"),
        claimed(Nested, { name: "ann", tags: ["a", "b"] }),
        claimed(Top, "bad"),
        claimed(Nested, { name: "bob", tags: ["bad"] })
      ], { concurrency: 1, timeout: Duration.seconds(5) })
      expect(outcomes.map((o) => o._tag)).toEqual(["Applied", "Applied", "Failed", "Failed"])
      expect(seen).toEqual(["FINE", { name: "ANN", tags: ["A", "B"] }])
      for (const bad of outcomes.slice(2)) expect(bad).toMatchObject({ _tag: "Failed", permanent: true, error: { _tag: "MalformedPayload" } })
    }))

  it.live("what outlives the call timeout is TimedOut; its promise calls still running are handed over, their signal aborted", () =>
    Effect.gen(function*() {
      let aborted = false
      let release: () => void = () => undefined
      const stillRunning = new Promise<void>((resolve) => {
        release = resolve
      })
      const Slow = OutboxEvent.make({ resourceType: "slow", action: "set", payload: Schema.String })
      const slow = Handlers.layer(
        handle(Slow, () =>
          InFlight.tryPromise({
            try: (signal) => {
              signal.addEventListener("abort", () => {
                aborted = true
              })
              return stillRunning
            },
            catch: (e) => e
          })),
        handle(Thing, ({ payload }) => behave(payload))
      )
      const outcomes = yield* applyAll([claimed(Slow, "x"), claimed(Thing, "hang"), claimed(Thing, "ok")], Duration.millis(200)).pipe(
        Effect.provide(slow)
      )
      expect(tags(outcomes)).toEqual(["TimedOut", "TimedOut", "Applied"])
      const [timedOut, hung] = outcomes
      expect(aborted).toBe(true)
      // The promise call is still running: the worker must keep the event leased until it settles.
      expect(timedOut?._tag === "TimedOut" && timedOut.running).toHaveLength(1)
      // An Effect-native handler stops when interrupted: nothing of it runs on.
      expect(hung?._tag === "TimedOut" && hung.running).toHaveLength(0)
      release()
    }))
})
