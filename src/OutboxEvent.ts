/**
 * What an outbox event is. An `EventType` is shared by the code that enqueues and the code that
 * applies: it names the (resource type, action), the payload's `Schema`, the ordering key that
 * serialises events of one resource, and whether a newer event makes older ones redundant.
 */
import { Effect, Either, ParseResult, Schema } from "effect"
import { InvalidEvent, InvalidPayload } from "./Errors.js"

export interface EventType<A, I = A> {
  readonly resourceType: string
  readonly action: string
  readonly payload: Schema.Schema<A, I, never>
  /**
   * Events with the same ordering key are never applied concurrently nor out of order.
   * Defaults to `<resourceType>:<resourceId>`.
   */
  readonly orderingKey: (event: { readonly resourceId: number | null; readonly payload: A }) => string
  /**
   * When true, applying this event makes every other pending coalescing event with the same
   * ordering key redundant (the handler syncs current state rather than replaying a delta): they
   * are collapsed into one apply and counted as superseded. Types that share an ordering key
   * should agree on this flag.
   */
  readonly coalesce: boolean
  /** Whether events of this type must name a resource id (a master, a key) or may not (a snapshot). */
  readonly requiresResourceId: boolean
}

export declare namespace EventType {
  export type Any = EventType<any, any>
  export type Payload<T> = T extends EventType<infer A, any> ? A : never
}

const nameRe = /^[a-z][a-z0-9_.-]*$/

/** Define an event type. Names are lower-case identifiers, as the Go service's vocabulary. */
export const make = <A, I = A>(options: {
  readonly resourceType: string
  readonly action: string
  readonly payload: Schema.Schema<A, I, never>
  readonly orderingKey?: (event: { readonly resourceId: number | null; readonly payload: A }) => string
  readonly coalesce?: boolean
  readonly requiresResourceId?: boolean
}): EventType<A, I> => {
  if (!nameRe.test(options.resourceType) || !nameRe.test(options.action)) {
    throw new Error(`invalid event type name ${options.resourceType}/${options.action}`)
  }
  const prefix = options.resourceType
  return {
    resourceType: options.resourceType,
    action: options.action,
    payload: options.payload,
    orderingKey: options.orderingKey ?? (({ resourceId }) => `${prefix}:${resourceId ?? ""}`),
    coalesce: options.coalesce ?? false,
    requiresResourceId: options.requiresResourceId ?? false
  }
}

/** What a producer hands to `enqueue`. */
export interface EventInput<A> {
  readonly resourceId?: number | null | undefined
  readonly payload: A
}

/** An event ready to be written: validated, payload encoded as JSON, ordering key computed. */
export interface EncodedEvent {
  readonly resourceType: string
  readonly action: string
  readonly resourceId: number | null
  readonly orderingKey: string
  readonly payload: unknown
  readonly coalesce: boolean
}

// A NUL, or half of a surrogate pair without the other half: JSON can carry them, Postgres's
// jsonb cannot (the insert would fail, aborting the caller's transaction).
const unstorable = /\u0000|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/

/** Where in a JSON value a string (or a key) holds what jsonb refuses, and what; or undefined. */
const findUnstorable = (value: unknown, path: string): string | undefined => {
  if (typeof value === "string") {
    const match = unstorable.exec(value)
    if (match === null) return undefined
    const what = match[0] === "\u0000" ? "a NUL character (\\u0000)" : "a lone surrogate (invalid UTF-16)"
    return `${path} contains ${what}, which Postgres cannot store`
  }
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const found = findUnstorable(value[i], `${path}[${i}]`)
      if (found !== undefined) return found
    }
    return undefined
  }
  if (typeof value === "object" && value !== null) {
    for (const [key, item] of Object.entries(value)) {
      const keyed = `${path}.${unstorable.test(key) ? JSON.stringify(key) : key}`
      if (unstorable.test(key)) return `the key ${keyed} contains a character Postgres cannot store`
      const found = findUnstorable(item, keyed)
      if (found !== undefined) return found
    }
  }
  return undefined
}

/**
 * Where a value would not survive JSON as itself: NaN and ±Infinity become `null`, and so does
 * `undefined` in an array. Stored, they would come back as something the schema never accepted.
 */
const findNotJson = (value: unknown, path: string): string | undefined => {
  if (typeof value === "number") return Number.isFinite(value) ? undefined : `${path} is ${value}, which JSON cannot carry (it would be stored as null)`
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      if (value[i] === undefined) return `${path}[${i}] is undefined, which JSON cannot carry in an array (it would be stored as null)`
      const found = findNotJson(value[i], `${path}[${i}]`)
      if (found !== undefined) return found
    }
    return undefined
  }
  if (typeof value === "object" && value !== null && typeof (value as { toJSON?: unknown }).toJSON !== "function") {
    for (const [key, item] of Object.entries(value)) {
      const found = findNotJson(item, `${path}.${key}`)
      if (found !== undefined) return found
    }
  }
  return undefined
}

/**
 * The ordering key is indexed (`sync_outbox_key_idx`), and an index entry holds some 2,700 bytes
 * at most: a longer key that does not compress failed the insert, and so aborted the caller's
 * transaction. Refused before it, with a bound any key under it meets whether it compresses or not.
 */
const maxOrderingKeyBytes = 2_000
const tooLongKey = (key: string): string | undefined => {
  // Three bytes at most per UTF-16 unit (a lone surrogate is refused before this).
  if (key.length * 3 <= maxOrderingKeyBytes) return undefined
  const bytes = new TextEncoder().encode(key).length
  return bytes <= maxOrderingKeyBytes
    ? undefined
    : `the ordering key is ${bytes.toLocaleString("en-US")} bytes; at most ${maxOrderingKeyBytes.toLocaleString("en-US")} fit Postgres's index on it (hash a long key)`
}

const validResourceId = (id: number | null | undefined): id is number | null | undefined =>
  id === null || id === undefined || (Number.isSafeInteger(id) && id > 0)

/** Validate and encode an event with its type's schema; an invalid one fails, nothing is written. */
export const encode = <A, I>(
  type: EventType<A, I>,
  input: EventInput<NoInfer<A>>
): Effect.Effect<EncodedEvent, InvalidPayload | InvalidEvent> =>
  Effect.suspend((): Effect.Effect<EncodedEvent, InvalidPayload | InvalidEvent> => {
    if (!validResourceId(input.resourceId)) {
      return Effect.fail(new InvalidEvent({ message: `resource id must be a positive integer, got ${String(input.resourceId)}` }))
    }
    const resourceId = input.resourceId ?? null
    if (resourceId === null && type.requiresResourceId) {
      return Effect.fail(new InvalidEvent({ message: `${type.resourceType}/${type.action} needs a resource id` }))
    }
    const invalid = (message: string) => new InvalidPayload({ resourceType: type.resourceType, action: type.action, message })
    // What follows the schema's encoding, in plain code: an enqueue is on the caller's hot path.
    const finish = (encoded: I): Either.Either<EncodedEvent, InvalidPayload> => {
      const notJson = findNotJson(encoded, "payload")
      if (notJson !== undefined) return Either.left(invalid(notJson))
      let event: EncodedEvent
      try {
        event = {
          resourceType: type.resourceType,
          action: type.action,
          resourceId,
          orderingKey: type.orderingKey({ resourceId, payload: input.payload }),
          // Round-trip through JSON so that what we store is exactly what a reader decodes.
          payload: encoded === undefined ? null : JSON.parse(JSON.stringify(encoded)),
          coalesce: type.coalesce
        }
      } catch (cause) {
        return Either.left(invalid(`payload is not JSON-serialisable: ${String(cause)}`))
      }
      // The ordering key is usually built from the payload, and is stored as text.
      const problem = findUnstorable(event.payload, "payload") ?? findUnstorable(event.orderingKey, "the ordering key") ??
        (event.orderingKey.trim() === "" ? "the ordering key is empty: events of every resource would share it" : undefined) ??
        tooLongKey(event.orderingKey)
      return problem === undefined ? Either.right(event) : Either.left(invalid(problem))
    }
    const encodedNow = Schema.encodeEither(type.payload)(input.payload)
    if (Either.isRight(encodedNow)) return finish(encodedNow.right)
    // A refusal is decided by the effectful encoder: an asynchronous part anywhere in the schema
    // (a field, an element, a member) fails synchronously even when the payload is fine.
    return Schema.encode(type.payload)(input.payload).pipe(
      Effect.mapError((error) => invalid(ParseResult.TreeFormatter.formatErrorSync(error))),
      Effect.flatMap(finish)
    )
  })

/** An event as the worker holds it after a claim. */
export interface ClaimedEvent {
  readonly id: string
  readonly resourceType: string
  readonly action: string
  readonly resourceId: number | null
  readonly orderingKey: string
  readonly payload: unknown
  readonly coalesce: boolean
  readonly retryCount: number
  readonly createdAt: Date
}

/** An event as operators see it (status, dead letters). */
export interface StoredEvent extends ClaimedEvent {
  readonly status: "pending" | "dead"
  readonly lastError: string | null
  readonly nextRetryAt: Date | null
  readonly leaseOwner: string | null
  readonly leaseExpiresAt: Date | null
}
