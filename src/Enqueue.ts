/**
 * The producer's side of the outbox: write events in the caller's transaction. Only a
 * `SqlClient` is needed, so `enqueue` joins the caller's `sql.withTransaction`; `enqueueWith`
 * does the same on a raw `pg` client. Every payload is encoded with its type's schema first: an
 * invalid one writes nothing and leaves the caller's transaction usable.
 */
import { SqlClient, SqlError } from "@effect/sql"
import { Clock, Effect, Metric } from "effect"
import type pg from "pg"
import type { InvalidEvent, InvalidPayload } from "./Errors.js"
import * as Metrics from "./Metrics.js"
import * as OutboxEvent from "./OutboxEvent.js"
import * as Statements from "./Statements.js"

const oneParams = (e: OutboxEvent.EncodedEvent, now: number): ReadonlyArray<unknown> => [
  e.resourceType,
  e.action,
  e.resourceId,
  e.orderingKey,
  e.payload === null ? null : JSON.stringify(e.payload),
  e.coalesce,
  new Date(now)
]

const manyParams = (events: ReadonlyArray<OutboxEvent.EncodedEvent>, now: number): ReadonlyArray<unknown> => [
  events.map((e) => e.resourceType),
  events.map((e) => e.action),
  events.map((e) => e.resourceId),
  events.map((e) => e.orderingKey),
  events.map((e) => (e.payload === null ? null : JSON.stringify(e.payload))),
  events.map((e) => e.coalesce),
  new Date(now)
]

/**
 * Write one event in the current transaction (or on its own when there is none). Returns its
 * id. The payload is encoded with the type's schema first: an invalid one writes nothing.
 */
export const enqueue = <A, I>(
  type: OutboxEvent.EventType<A, I>,
  input: OutboxEvent.EventInput<NoInfer<A>>
): Effect.Effect<string, InvalidPayload | InvalidEvent | SqlError.SqlError, SqlClient.SqlClient> =>
  Effect.gen(function*() {
    const encoded = yield* OutboxEvent.encode(type, input)
    const sql = yield* SqlClient.SqlClient
    const rows = yield* sql.unsafe<{ id: string }>(Statements.insertOne, oneParams(encoded, yield* Clock.currentTimeMillis))
    // Counted when written, even if the caller's transaction later rolls back: a count of
    // attempts to enqueue, not of commits (the outbox itself is the count of what committed).
    yield* Metric.increment(Metrics.enqueued)
    return rows[0]!.id
  }).pipe(Effect.withSpan("sync-outbox.enqueue", {
    attributes: { resourceType: type.resourceType, action: type.action },
    // The call site is the caller's own span already; a stack trace per event costs more than the insert's own work.
    captureStackTrace: false
  }))

/** An event of any type, as `enqueueMany` takes them. */
export interface AnyEvent {
  readonly type: OutboxEvent.EventType.Any
  readonly input: OutboxEvent.EventInput<any>
}

/** Pair a type with its input, keeping the payload's type checked. */
export const event = <A, I>(type: OutboxEvent.EventType<A, I>, input: OutboxEvent.EventInput<NoInfer<A>>): AnyEvent => ({
  type,
  input
})

/** Write many events in one statement (one NOTIFY). All are validated before any is written. */
export const enqueueMany = (
  events: ReadonlyArray<AnyEvent>
): Effect.Effect<ReadonlyArray<string>, InvalidPayload | InvalidEvent | SqlError.SqlError, SqlClient.SqlClient> =>
  Effect.gen(function*() {
    if (events.length === 0) return []
    const encoded = yield* Effect.forEach(events, (e) => OutboxEvent.encode(e.type, e.input))
    const sql = yield* SqlClient.SqlClient
    const rows = yield* sql.unsafe<{ id: string }>(Statements.insertMany, manyParams(encoded, yield* Clock.currentTimeMillis))
    yield* Metric.incrementBy(Metrics.enqueued, rows.length)
    return rows.map((row) => row.id)
  }).pipe(Effect.withSpan("sync-outbox.enqueueMany", { attributes: { count: events.length }, captureStackTrace: false }))

/**
 * For callers on a raw `pg` client (inside their own `BEGIN`/`COMMIT`): the same validation,
 * the same row. Run it with `Effect.runPromise`.
 */
export const enqueueWith = <A, I>(
  client: pg.ClientBase | pg.Pool,
  type: OutboxEvent.EventType<A, I>,
  input: OutboxEvent.EventInput<NoInfer<A>>
): Effect.Effect<string, InvalidPayload | InvalidEvent | SqlError.SqlError> =>
  Effect.gen(function*() {
    const encoded = yield* OutboxEvent.encode(type, input)
    const now = yield* Clock.currentTimeMillis
    const result = yield* Effect.tryPromise({
      try: () => client.query<{ id: string }>(Statements.insertOne, oneParams(encoded, now) as Array<unknown>),
      catch: (cause) => new SqlError.SqlError({ cause, message: "enqueueWith: insert failed" })
    })
    yield* Metric.increment(Metrics.enqueued)
    return result.rows[0]!.id
  })
