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

/**
 * An event whose type needs a resource id (a master, a key) but whose row names none, e.g.
 * `sync_outbox_enqueue('master', 'update')`: permanent, so the row goes dead at once.
 */
export class MissingResourceId extends Data.TaggedError("MissingResourceId")<{
  readonly resourceType: string
  readonly action: string
}> {
  override get message() {
    return `${this.resourceType}/${this.action} needs a resource id (${this.resourceType} id missing)`
  }
}

/**
 * A handler that died rather than failed: it threw inside `Effect.sync`, called `Effect.die`,
 * or a promise of `Effect.promise` rejected. That event's failure (an attempt counted, retried
 * with backoff, dead at MAX_RETRIES), never the worker's. The message ends with where it was thrown.
 */
export class HandlerDefect extends Data.TaggedError("HandlerDefect")<{
  readonly message: string
}> {
  /** The defect's name and message, and the first frame of its stack. */
  static readonly fromDefect = (defect: unknown): HandlerDefect => {
    if (defect instanceof Error) {
      const frame = defect.stack?.split("\n").map((line) => line.trim()).find((line) => line.startsWith("at "))
      const text = `${defect.name}: ${defect.message}`
      return new HandlerDefect({ message: frame === undefined ? text : `${text} (${frame})` })
    }
    const { message, tag } = describeFailure(defect)
    return new HandlerDefect({ message: tag === "Unknown" ? message : `${tag}: ${message}` })
  }
}

/** A handler that ran past the worker's call timeout: the item's failure, retried with backoff. */
export class HandlerTimeout extends Data.TaggedError("HandlerTimeout")<{
  readonly message: string
}> {}

/**
 * A worker's lease on an event ran out with no outcome recorded: the worker was killed, crashed
 * (a handler that calls `process.exit`, say) or lost Postgres while applying it. The next claim
 * counts that run as the event's failed attempt, so an event that ends every worker taking it
 * becomes a dead letter after MAX_RETRIES instead of a crash loop.
 */
export class LeaseExpired extends Data.TaggedError("LeaseExpired")<{
  /** The worker that held the lease. */
  readonly owner: string
}> {
  override get message() {
    return `worker ${this.owner} held this event until its lease ran out without recording an outcome (it stopped, crashed or lost Postgres while applying it)`
  }
}

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

/**
 * One line for a log: the error's tag and message, and its cause's message when it has one (a
 * `SqlError`'s "canceling statement due to statement timeout", say), never a stack.
 */
export const oneLine = (error: unknown): string => {
  const { message, tag } = describeFailure(error)
  const cause = typeof error === "object" && error !== null && "cause" in error ? error.cause : undefined
  const detail = cause instanceof Error ? cause.message : typeof cause === "string" ? cause : ""
  const head = message.startsWith(`${tag}:`) ? message : `${tag}: ${message}`
  return (detail !== "" && !message.includes(detail) ? `${head}: ${detail}` : head).replace(/\s*\n\s*/g, " ")
}
