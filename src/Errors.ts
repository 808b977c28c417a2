/**
 * The typed failures of sync-outbox. Each says whose fault it is: the caller's input, the item
 * being applied, or an unavailable dependency (which must never cost an item an attempt).
 */
import { Data, Schema } from "effect"

/** An event whose payload does not match its type's schema; nothing was written. */
export class InvalidPayload extends Data.TaggedError("InvalidPayload")<{
  readonly resourceType: string
  readonly action: string
  readonly message: string
}> {}

/** An event that names no resource type or action, or an id that is not a positive integer. */
export class InvalidEvent extends Data.TaggedError("InvalidEvent")<{
  readonly message: string
}> {}

/** No handler is registered for this (resource type, action). Recorded on the row, retried. */
export class UnknownEventType extends Data.TaggedError("UnknownEventType")<{
  readonly resourceType: string
  readonly action: string
}> {
  override get message() {
    return `no handler for resource type "${this.resourceType}" and action "${this.action}"`
  }
}

/** A stored payload that its handler's schema cannot decode: permanent, so the row goes dead at once. */
export class MalformedPayload extends Data.TaggedError("MalformedPayload")<{
  readonly resourceType: string
  readonly action: string
  readonly message: string
}> {}

/**
 * The sink (Redis) cannot be reached: not the item's fault. The worker opens its breaker, hands
 * the rows back without counting an attempt, and waits for the sink to answer again.
 */
export class SinkUnavailable extends Data.TaggedError("SinkUnavailable")<{
  readonly message: string
  readonly cause?: unknown
}> {}

/** The sink answered, and refused this item's command (WRONGTYPE, a script error, ...). */
export class SinkCommandError extends Data.TaggedError("SinkCommandError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

/** A handler that ran past the worker's call timeout: the item's failure, retried with backoff. */
export class HandlerTimeout extends Data.TaggedError("HandlerTimeout")<{
  readonly message: string
}> {}

/** A configuration value that cannot be used; raised at startup, never later. */
export class InvalidConfig extends Data.TaggedError("InvalidConfig")<{
  readonly message: string
}> {}

/** The outbox row an operator named does not exist (or is not dead, for dead-letter commands). */
export class EventNotFound extends Data.TaggedError("EventNotFound")<{
  readonly id: string
}> {
  override get message() {
    return `no outbox event with id ${this.id}`
  }
}

/** A migration file failed to apply; the transaction was rolled back and nothing changed. */
export class MigrationError extends Data.TaggedError("MigrationError")<{
  readonly migration: string
  readonly message: string
  readonly cause?: unknown
}> {}

/** One entry of a row's failure history, as persisted in `sync_outbox_failures`. */
export class FailureRecord extends Schema.Class<FailureRecord>("FailureRecord")({
  attempt: Schema.Number,
  errorTag: Schema.String,
  message: Schema.String,
  failedAt: Schema.DateFromSelf
}) {}

/** Describe any failure as (tag, message) for the failure history. */
export const describeFailure = (error: unknown): { readonly tag: string; readonly message: string } => {
  if (typeof error === "object" && error !== null) {
    const tag = "_tag" in error && typeof error._tag === "string" ? error._tag : error.constructor?.name ?? "Error"
    const message = "message" in error && typeof error.message === "string" && error.message !== ""
      ? error.message
      : String(error)
    return { tag, message }
  }
  return { tag: "Unknown", message: String(error) }
}
