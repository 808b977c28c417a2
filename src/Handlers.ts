/**
 * The registry from (resource type, action) to the effect that applies an event. Payloads are
 * decoded with the event type's `Schema`; an unknown pair or an undecodable payload is a typed
 * failure, never a silent success.
 */
import { Context, Duration, Effect, Layer, ParseResult, Schema } from "effect"
import { HandlerTimeout, MalformedPayload, UnknownEventType } from "./Errors.js"
import type { ClaimedEvent, EventType } from "./OutboxEvent.js"

/** What a handler receives: the claimed row with its payload decoded. */
export interface Applying<A> {
  readonly id: string
  readonly resourceId: number | null
  readonly payload: A
  readonly attempt: number
  readonly event: ClaimedEvent
}

export interface Handler<R> {
  readonly type: EventType.Any
  readonly apply: (event: Applying<any>) => Effect.Effect<void, unknown, R>
  /** When present, the worker hands it every event of this type in a batch at once. */
  readonly applyBatch?: ((events: ReadonlyArray<Applying<any>>) => Effect.Effect<BatchResult, unknown, R>) | undefined
}

/**
 * What a batch handler reports: one entry per event, in order, `undefined` for applied or the
 * event's own error. A failure of the whole effect is every event's failure (e.g. Redis down).
 */
export type BatchResult = ReadonlyArray<unknown>

/** `applyAll`'s entry for an event whose work was not admitted to start: hand it back untouched. */
export const NotStarted: unique symbol = Symbol.for("sync-outbox/NotStarted")

/** Register how one event type is applied. */
export const handle = <A, I, E, R>(
  type: EventType<A, I>,
  apply: (event: Applying<A>) => Effect.Effect<void, E, R>
): Handler<R> => ({ type, apply })

/**
 * Register a handler that applies many events of one type at once (one Redis pipeline for a
 * whole batch rather than one round trip, and one fiber rather than one per event).
 */
export const handleBatch = <A, I, E, R>(
  type: EventType<A, I>,
  applyBatch: (events: ReadonlyArray<Applying<A>>) => Effect.Effect<BatchResult, E, R>
): Handler<R> => ({
  type,
  applyBatch,
  apply: (event) =>
    Effect.flatMap(applyBatch([event]), (results) => (results[0] === undefined ? Effect.void : Effect.fail(results[0])))
})

const pairKey = (resourceType: string, action: string) => `${resourceType}\u0000${action}`

export interface ApplyAllOptions {
  readonly concurrency: number
  /** One timer for the whole call: what has not finished fails with `HandlerTimeout`. */
  readonly timeout: Duration.Duration
  /** Asked before each piece of work starts; `false` reports its events as `NotStarted`. */
  readonly admit?: Effect.Effect<boolean> | undefined
}

export interface HandlersShape {
  /** Decode the payload and run the registered handler. */
  readonly apply: (event: ClaimedEvent) => Effect.Effect<void, unknown>
  /**
   * Apply many events: batch handlers get theirs in one call, the others one by one with the
   * given concurrency. Returns one entry per event, in order: `undefined` or its error.
   */
  readonly applyAll: (
    events: ReadonlyArray<ClaimedEvent>,
    options: ApplyAllOptions
  ) => Effect.Effect<ReadonlyArray<unknown>>
  /** The event type registered for a pair, for callers that enqueue by name (the CLI). */
  readonly lookup: (resourceType: string, action: string) => Effect.Effect<EventType.Any, UnknownEventType>
  readonly types: ReadonlyArray<EventType.Any>
}

export class Handlers extends Context.Tag("sync-outbox/Handlers")<Handlers, HandlersShape>() {
  /**
   * A registry from handlers; the services they need are taken from the layer's context once,
   * so the worker calls them without knowing what they require. A pair registered twice is a
   * programming error and dies at construction.
   */
  static readonly layer = <const Hs extends ReadonlyArray<Handler<any>>>(
    ...handlers: Hs
  ): Layer.Layer<Handlers, never, Hs[number] extends Handler<infer R> ? R : never> =>
    Layer.effect(Handlers, make(handlers))

  /** Several registries merged into one (the engine's user's handlers beside `sync/`'s). */
  static readonly merge = (...registries: ReadonlyArray<ReadonlyArray<Handler<any>>>) =>
    Handlers.layer(...registries.flat())
}

export const make = <R>(handlers: ReadonlyArray<Handler<R>>): Effect.Effect<HandlersShape, never, R> =>
  Effect.gen(function*() {
    const context = yield* Effect.context<R>()
    const table = new Map<string, Handler<R>>()
    for (const handler of handlers) {
      const key = pairKey(handler.type.resourceType, handler.type.action)
      if (table.has(key)) {
        return yield* Effect.dieMessage(
          `handler for ${handler.type.resourceType}/${handler.type.action} registered twice`
        )
      }
      table.set(key, handler)
    }
    const decoders = new Map(
      handlers.map((h) => [pairKey(h.type.resourceType, h.type.action), Schema.decodeUnknown(h.type.payload)] as const)
    )
    const lookup = (resourceType: string, action: string) => {
      const handler = table.get(pairKey(resourceType, action))
      return handler === undefined
        ? Effect.fail(new UnknownEventType({ resourceType, action }))
        : Effect.succeed(handler.type)
    }
    const decode = (event: ClaimedEvent, key: string): Effect.Effect<Applying<unknown>, MalformedPayload> =>
      decoders.get(key)!(event.payload).pipe(
        Effect.mapError((error) =>
          new MalformedPayload({
            resourceType: event.resourceType,
            action: event.action,
            message: ParseResult.TreeFormatter.formatErrorSync(error)
          })
        ),
        Effect.map((payload) => ({ id: event.id, resourceId: event.resourceId, payload, attempt: event.retryCount + 1, event }))
      )

    // Without the context provided: callers provide it once around many calls.
    const applyBare = (event: ClaimedEvent): Effect.Effect<void, unknown, R> => {
      const key = pairKey(event.resourceType, event.action)
      const handler = table.get(key)
      if (handler === undefined) {
        return Effect.fail(new UnknownEventType({ resourceType: event.resourceType, action: event.action }))
      }
      return Effect.flatMap(decode(event, key), handler.apply)
    }

    const apply = (event: ClaimedEvent) => Effect.provide(applyBare(event), context)

    const applyAll = (events: ReadonlyArray<ClaimedEvent>, options: ApplyAllOptions) =>
      Effect.gen(function*() {
        const results: Array<unknown> = new Array(events.length).fill(undefined)
        const done: Array<boolean> = new Array(events.length).fill(false)
        const batches = new Map<string, Array<number>>()
        const singles: Array<number> = []
        for (let i = 0; i < events.length; i++) {
          const event = events[i]!
          const key = pairKey(event.resourceType, event.action)
          if (table.get(key)?.applyBatch !== undefined) {
            const list = batches.get(key)
            if (list === undefined) batches.set(key, [i])
            else list.push(i)
          } else {
            singles.push(i)
          }
        }
        const runBatch = (key: string, indexes: ReadonlyArray<number>) =>
          Effect.gen(function*() {
            const decoded: Array<Applying<unknown>> = []
            const at: Array<number> = []
            for (const i of indexes) {
              const exit = yield* Effect.either(decode(events[i]!, key))
              if (exit._tag === "Left") {
                results[i] = exit.left
                done[i] = true
              } else {
                decoded.push(exit.right)
                at.push(i)
              }
            }
            if (decoded.length === 0) return
            const outcome = yield* Effect.either(table.get(key)!.applyBatch!(decoded))
            for (let j = 0; j < at.length; j++) {
              results[at[j]!] = outcome._tag === "Left" ? outcome.left : outcome.right[j]
              done[at[j]!] = true
            }
          })
        const runSingle = (i: number) =>
          Effect.flatMap(Effect.either(applyBare(events[i]!)), (e) =>
            Effect.sync(() => {
              results[i] = e._tag === "Left" ? e.left : undefined
              done[i] = true
            }))
        const admitted = (indexes: ReadonlyArray<number>, run: Effect.Effect<void, never, R>) =>
          options.admit === undefined ? run : Effect.flatMap(options.admit, (ok) =>
            ok ? run : Effect.sync(() => {
              for (const i of indexes) {
                results[i] = NotStarted
                done[i] = true
              }
            }))
        const work: Array<Effect.Effect<void, never, R>> = [
          ...[...batches].map(([key, indexes]) => admitted(indexes, runBatch(key, indexes))),
          ...singles.map((i) => admitted([i], runSingle(i)))
        ]
        // One fiber per piece of work, none at all for a single piece, and one timer for all:
        // what has not finished when it fires is interrupted and fails with HandlerTimeout.
        yield* (work.length === 1 ? work[0]! : Effect.all(work, { concurrency: options.concurrency, discard: true })).pipe(
          Effect.timeout(options.timeout),
          Effect.ignore
        )
        for (let i = 0; i < events.length; i++) {
          if (!done[i]) {
            results[i] = new HandlerTimeout({ message: `handler did not finish within ${Duration.format(options.timeout)}` })
          }
        }
        return results
      }).pipe(Effect.provide(context))

    return { apply, applyAll, lookup, types: handlers.map((h) => h.type) }
  })
