/**
 * The registry from (resource type, action) to the effect that applies an event. Payloads are
 * decoded with the event type's `Schema`; an unknown pair, an undecodable payload or a missing
 * resource id is a typed failure, never a silent success. Whatever a handler does (fails, dies,
 * throws, hangs), the worker gets one typed `ApplyOutcome` per event.
 */
import { Cause, Context, Data, Duration, Effect, Either, Exit, Layer, Option, ParseResult, Schema } from "effect"
import {
  HandlerDefect,
  HandlerTimeout,
  MalformedPayload,
  MissingResourceId,
  SinkUnavailable,
  UnknownEventType
} from "./Errors.js"
import * as InFlight from "./InFlight.js"
import type { ClaimedEvent, EventType } from "./OutboxEvent.js"
import { isUnavailable } from "./RedisSink.js"

/** What a handler receives: the claimed row with its payload decoded. */
export interface Applying<A> {
  readonly id: string
  readonly resourceId: number | null
  readonly payload: A
  readonly attempt: number
  readonly event: ClaimedEvent
}

/**
 * What a batch handler reports: one `Exit` per event, in order (`Exit.void` for applied,
 * `Exit.fail(error)` for that event's own failure). A failure of the whole effect is every
 * event's failure (e.g. Redis down); a missing entry is that event's `HandlerDefect`.
 */
export type BatchResult<E = unknown> = ReadonlyArray<Exit.Exit<unknown, E>>

export interface Handler<R> {
  readonly type: EventType.Any
  readonly apply: (event: Applying<any>) => Effect.Effect<unknown, unknown, R>
  /** When present, the worker hands it every event of this type in a batch at once. */
  readonly applyBatch?: ((events: ReadonlyArray<Applying<any>>) => Effect.Effect<BatchResult, unknown, R>) | undefined
}

/**
 * What became of one event, as the worker records it:
 * - `Applied`: done; the row is deleted.
 * - `Failed`: the handler failed with a typed error; `permanent` ones (`MalformedPayload`,
 *   `MissingResourceId`) go dead at once, the others count an attempt and back off.
 * - `Defect`: the handler died or threw; counted and retried like a failure, tagged `HandlerDefect`.
 * - `TimedOut`: still running at the call timeout and interrupted; `running` are the promise calls
 *   it started that had not settled then (the worker keeps the event leased until they have).
 * - `NotStarted`: not admitted to start (shutdown, breaker open): handed back without an attempt.
 * - `Unavailable`: the sink could not be reached: handed back without an attempt, breaker opens.
 */
export type ApplyOutcome = Data.TaggedEnum<{
  Applied: {}
  Failed: { readonly error: unknown; readonly permanent: boolean }
  Defect: { readonly error: HandlerDefect }
  TimedOut: { readonly error: HandlerTimeout; readonly running: ReadonlyArray<PromiseLike<unknown>> }
  NotStarted: {}
  Unavailable: { readonly error: unknown }
}>
export const ApplyOutcome = Data.taggedEnum<ApplyOutcome>()

const isPermanent = (error: unknown) => error instanceof MalformedPayload || error instanceof MissingResourceId

/** A typed failure: the sink's unavailability, or the event's own (permanent or not). */
export const failed = (error: unknown): ApplyOutcome =>
  isUnavailable(error) ? ApplyOutcome.Unavailable({ error }) : ApplyOutcome.Failed({ error, permanent: isPermanent(error) })

/** How a handler's effect ended, as an outcome: its typed error first, else its defect. */
export const fromCause = (cause: Cause.Cause<unknown>): ApplyOutcome => {
  const failure = Cause.failureOption(cause)
  if (Option.isSome(failure)) return failed(failure.value)
  const defect = Cause.dieOption(cause)
  if (Option.isSome(defect)) {
    // `Effect.orDie` over a `RedisSink` call during an outage is still the sink, not the event.
    return defect.value instanceof SinkUnavailable
      ? ApplyOutcome.Unavailable({ error: defect.value })
      : ApplyOutcome.Defect({ error: HandlerDefect.fromDefect(defect.value) })
  }
  return ApplyOutcome.Defect({ error: new HandlerDefect({ message: "the handler interrupted itself" }) })
}

export const fromExit = (exit: Exit.Exit<unknown, unknown>): ApplyOutcome =>
  Exit.isSuccess(exit) ? ApplyOutcome.Applied() : fromCause(exit.cause)

/** Register how one event type is applied. */
export const handle = <A, I, E, R>(
  type: EventType<A, I>,
  apply: (event: Applying<A>) => Effect.Effect<unknown, E, R>
): Handler<R> => ({ type, apply })

/**
 * Register a handler that applies many events of one type at once (one Redis pipeline for a
 * whole batch rather than one round trip, and one fiber rather than one per event). It returns
 * one `Exit` per event, in order: `Exit.void`, or `Exit.fail(error)` for a poison event.
 */
export const handleBatch = <A, I, E, R>(
  type: EventType<A, I>,
  applyBatch: (events: ReadonlyArray<Applying<A>>) => Effect.Effect<BatchResult, E, R>
): Handler<R> => ({
  type,
  applyBatch,
  apply: (event) =>
    Effect.flatMap(applyBatch([event]), (results) =>
      results[0] === undefined ? Effect.dieMessage("the batch handler returned no outcome for the event") : results[0])
})

/** A value as a message shows it: its JSON, cut short (a handler's stray reply may be large). */
const shortly = (value: unknown): string => {
  let text: string | undefined
  try {
    text = JSON.stringify(value)
  } catch {
    text = undefined
  }
  text ??= String(value)
  return text.length > 80 ? `${text.slice(0, 77)}...` : text
}

const pairKey = (resourceType: string, action: string) => `${resourceType}\u0000${action}`

export interface ApplyAllOptions {
  readonly concurrency: number
  /** One timer for the whole call: what has not finished is interrupted and `TimedOut`. */
  readonly timeout: Duration.Duration
  /** Asked before each piece of work starts; `false` reports its events as `NotStarted`. */
  readonly admit?: Effect.Effect<boolean> | undefined
}

export interface HandlersShape {
  /** Decode the payload and run the registered handler. */
  readonly apply: (event: ClaimedEvent) => Effect.Effect<unknown, unknown>
  /**
   * Apply many events: batch handlers get theirs in one call, the others one by one with the
   * given concurrency. Returns one outcome per event, in order; it never fails.
   */
  readonly applyAll: (
    events: ReadonlyArray<ClaimedEvent>,
    options: ApplyAllOptions
  ) => Effect.Effect<ReadonlyArray<ApplyOutcome>>
  /** The event type registered for a pair, for callers that enqueue by name (the CLI). */
  readonly lookup: (resourceType: string, action: string) => Effect.Effect<EventType.Any, UnknownEventType>
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
      handlers.map((h) =>
        [pairKey(h.type.resourceType, h.type.action), {
          now: Schema.decodeUnknownEither(h.type.payload),
          effect: Schema.decodeUnknown(h.type.payload)
        }] as const
      )
    )
    const lookup = (resourceType: string, action: string) => {
      const handler = table.get(pairKey(resourceType, action))
      return handler === undefined
        ? Effect.fail(new UnknownEventType({ resourceType, action }))
        : Effect.succeed(handler.type)
    }
    const malformed = (event: ClaimedEvent, error: ParseResult.ParseError) =>
      new MalformedPayload({
        resourceType: event.resourceType,
        action: event.action,
        message: ParseResult.TreeFormatter.formatErrorSync(error)
      })
    const applying = (event: ClaimedEvent, payload: unknown): Applying<unknown> => ({
      id: event.id,
      resourceId: event.resourceId,
      payload,
      attempt: event.retryCount + 1,
      event
    })
    type Decoded = Either.Either<Applying<unknown>, MalformedPayload | MissingResourceId>
    /**
     * Decode without an effect when the schema allows it (a thousand events cost a thousand
     * effects otherwise); `undefined` when only `decode` can tell (a refusal, or an asynchronous schema).
     */
    const decodeNow = (event: ClaimedEvent, key: string): Decoded | undefined => {
      // A row written by SQL (`sync_outbox_enqueue`) skipped `enqueue`'s checks: the type knows.
      if (event.resourceId === null && table.get(key)!.type.requiresResourceId) {
        return Either.left(new MissingResourceId({ resourceType: event.resourceType, action: event.action }))
      }
      const result = decoders.get(key)!.now(event.payload)
      // Any refusal is decided by the effectful decoder: an asynchronous part anywhere in the
      // schema (a field, an element, a member) fails here even when the payload is fine.
      return Either.isRight(result) ? Either.right(applying(event, result.right)) : undefined
    }
    const decode = (event: ClaimedEvent, key: string): Effect.Effect<Applying<unknown>, MalformedPayload | MissingResourceId> => {
      const now = decodeNow(event, key)
      if (now !== undefined) return now
      return decoders.get(key)!.effect(event.payload).pipe(
        Effect.mapError((error) => malformed(event, error)),
        Effect.map((payload) => applying(event, payload))
      )
    }

    // Without the context provided: callers provide it once around many calls. A handler that
    // throws while building its effect is caught by `suspend`, as a defect.
    const applyBare = (event: ClaimedEvent): Effect.Effect<unknown, unknown, R> => {
      const key = pairKey(event.resourceType, event.action)
      const handler = table.get(key)
      if (handler === undefined) {
        return Effect.fail(new UnknownEventType({ resourceType: event.resourceType, action: event.action }))
      }
      return Effect.flatMap(decode(event, key), (decoded) => Effect.suspend(() => handler.apply(decoded)))
    }

    const apply = (event: ClaimedEvent) => Effect.provide(applyBare(event), context)

    const applyAll = (events: ReadonlyArray<ClaimedEvent>, options: ApplyAllOptions) =>
      Effect.gen(function*() {
        // Undefined until the piece of work that owns the event has finished.
        const outcomes: Array<ApplyOutcome | undefined> = new Array(events.length).fill(undefined)
        const calls: Array<InFlight.Calls | undefined> = new Array(events.length).fill(undefined)
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
              const exit = decodeNow(events[i]!, key) ?? (yield* Effect.either(decode(events[i]!, key)))
              if (exit._tag === "Left") {
                outcomes[i] = failed(exit.left)
              } else {
                decoded.push(exit.right)
                at.push(i)
              }
            }
            if (decoded.length === 0) return
            const tracked = new InFlight.Calls()
            for (const i of at) calls[i] = tracked
            const exit = yield* Effect.exit(
              Effect.suspend(() => table.get(key)!.applyBatch!(decoded)).pipe(InFlight.trackIn(tracked))
            )
            for (let j = 0; j < at.length; j++) {
              if (Exit.isFailure(exit)) {
                outcomes[at[j]!] = fromCause(exit.cause)
                continue
              }
              const result = Array.isArray(exit.value) ? exit.value[j] : undefined
              outcomes[at[j]!] = Exit.isExit(result)
                ? fromExit(result)
                : ApplyOutcome.Defect({
                  error: new HandlerDefect({
                    // Which mistake it was: a count that was wrong reads otherwise than a value that is no Exit.
                    message: `the batch handler for ${key.replace("\u0000", "/")} returned ${
                      !Array.isArray(exit.value)
                        ? "no array of Exits"
                        : exit.value.length !== at.length
                        ? `${exit.value.length} outcomes for ${at.length} events`
                        : `${shortly(result)}, not an Exit, for event ${j + 1} of ${at.length}`
                    }`
                  })
                })
            }
          })
        const runSingle = (i: number) => {
          const tracked = new InFlight.Calls()
          calls[i] = tracked
          return Effect.flatMap(Effect.exit(applyBare(events[i]!).pipe(InFlight.trackIn(tracked))), (exit) =>
            Effect.sync(() => {
              outcomes[i] = fromExit(exit)
            }))
        }
        const admitted = (indexes: ReadonlyArray<number>, run: Effect.Effect<void, never, R>) =>
          options.admit === undefined ? run : Effect.flatMap(options.admit, (ok) =>
            ok ? run : Effect.sync(() => {
              for (const i of indexes) outcomes[i] = ApplyOutcome.NotStarted()
            }))
        const work: Array<Effect.Effect<void, never, R>> = [
          ...[...batches].map(([key, indexes]) => admitted(indexes, runBatch(key, indexes))),
          ...singles.map((i) => admitted([i], runSingle(i)))
        ]
        // One fiber per piece of work, none at all for a single piece, and one timer for all:
        // what has not finished when it fires is interrupted and reported as timed out.
        yield* (work.length === 1 ? work[0]! : Effect.all(work, { concurrency: options.concurrency, discard: true })).pipe(
          Effect.timeout(options.timeout),
          Effect.ignore
        )
        return outcomes.map((outcome, i) =>
          outcome ?? ApplyOutcome.TimedOut({
            error: new HandlerTimeout({ message: `handler did not finish within ${Duration.format(options.timeout)}` }),
            running: calls[i]?.running() ?? []
          })
        )
      }).pipe(Effect.provide(context))

    return { apply, applyAll, lookup }
  })
