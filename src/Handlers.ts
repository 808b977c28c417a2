/**
 * The registry from (resource type, action) to the effect that applies an event. Payloads are
 * decoded with the event type's `Schema`; an unknown pair or an undecodable payload is a typed
 * failure, never a silent success.
 */
import { Context, Effect, Layer, ParseResult, Schema } from "effect"
import { MalformedPayload, UnknownEventType } from "./Errors.js"
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
}

/** Register how one event type is applied. */
export const handle = <A, I, E, R>(
  type: EventType<A, I>,
  apply: (event: Applying<A>) => Effect.Effect<void, E, R>
): Handler<R> => ({ type, apply })

const pairKey = (resourceType: string, action: string) => `${resourceType}\u0000${action}`

export interface HandlersShape {
  /** Decode the payload and run the registered handler. */
  readonly apply: (event: ClaimedEvent) => Effect.Effect<void, unknown>
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
    const apply = (event: ClaimedEvent): Effect.Effect<void, unknown> => {
      const key = pairKey(event.resourceType, event.action)
      const handler = table.get(key)
      if (handler === undefined) {
        return Effect.fail(new UnknownEventType({ resourceType: event.resourceType, action: event.action }))
      }
      return decoders.get(key)!(event.payload).pipe(
        Effect.mapError((error) =>
          new MalformedPayload({
            resourceType: event.resourceType,
            action: event.action,
            message: ParseResult.TreeFormatter.formatErrorSync(error)
          })
        ),
        Effect.flatMap((payload) =>
          handler.apply({
            id: event.id,
            resourceId: event.resourceId,
            payload,
            attempt: event.retryCount + 1,
            event
          })
        ),
        Effect.provide(context)
      )
    }
    return { apply, lookup, types: handlers.map((h) => h.type) }
  })
