/**
 * The operator's view of the outbox: queue statistics, dead letters (list, show with their
 * failure history, requeue, purge) and the live workers. What `sync-outbox status` and
 * `sync-outbox dead` and the `/metrics` queue gauges read. None of it is on the worker's hot path;
 * it runs through the `SqlClient`. The SQL is in `Statements`.
 */
import { SqlClient, type SqlError } from "@effect/sql"
import { Clock, Context, Effect, Layer } from "effect"
import { EventNotFound, FailureRecord } from "./Errors.js"
import type { WorkerRow } from "./Leases.js"
import type * as OutboxEvent from "./OutboxEvent.js"
import * as Statements from "./Statements.js"

export interface Stats {
  readonly pending: number
  readonly inFlight: number
  readonly dead: number
  readonly scheduled: number
  readonly oldestPendingAgeMs: number | null
  readonly byResourceType: ReadonlyArray<{
    readonly resourceType: string
    readonly pending: number
    readonly inFlight: number
    readonly dead: number
  }>
}

/** Which dead letters an operator means. */
export type DeadSelector =
  | { readonly _tag: "One"; readonly id: string }
  | { readonly _tag: "ResourceType"; readonly resourceType: string }
  | { readonly _tag: "All" }

/** A registered worker, as `status` shows it (the columns as they are named). */
export interface LiveWorker extends Omit<WorkerRow, "loopError" | "retentionMs"> {
  readonly loop_error: string | null
  readonly retention_ms: number | null
  readonly started_at: Date
  readonly heartbeat_age_ms: number
}

export interface AdminShape {
  readonly stats: Effect.Effect<Stats, SqlError.SqlError>
  readonly listDead: (
    options?: { readonly resourceType?: string | undefined; readonly limit?: number | undefined }
  ) => Effect.Effect<ReadonlyArray<OutboxEvent.StoredEvent>, SqlError.SqlError>
  /** One event with its whole failure history. */
  readonly show: (
    id: string
  ) => Effect.Effect<
    { readonly event: OutboxEvent.StoredEvent; readonly failures: ReadonlyArray<FailureRecord> },
    EventNotFound | SqlError.SqlError
  >
  /**
   * Dead letters back to pending, due at once, with a fresh attempt budget. Their failure
   * history stays (attempt numbers keep growing), so the whole story of an event is kept.
   */
  readonly requeue: (selector: DeadSelector) => Effect.Effect<number, EventNotFound | SqlError.SqlError>
  readonly purge: (selector: DeadSelector) => Effect.Effect<number, EventNotFound | SqlError.SqlError>
  /** Workers whose heartbeat is younger than `staleAfterMs`. */
  readonly workers: (staleAfterMs: number) => Effect.Effect<ReadonlyArray<LiveWorker>, SqlError.SqlError>
}

const deadWhere = (selector: DeadSelector): { readonly where: string; readonly params: ReadonlyArray<unknown> } => {
  switch (selector._tag) {
    case "One":
      return { where: `status = 'dead' AND id = $1::bigint`, params: [selector.id] }
    case "ResourceType":
      return { where: `status = 'dead' AND resource_type = $1`, params: [selector.resourceType] }
    case "All":
      return { where: `status = 'dead'`, params: [] }
  }
}

const idRe = /^[1-9][0-9]{0,18}$/
const checkId = (id: string) => (idRe.test(id) ? Effect.void : Effect.fail(new EventNotFound({ id })))

export const make: Effect.Effect<AdminShape, never, SqlClient.SqlClient> = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const count = (text: string, params: ReadonlyArray<unknown>) =>
    Effect.map(sql.unsafe<{ n: number }>(text, params).withoutTransform, (rows) => rows[0]?.n ?? 0)

  const stats = Effect.gen(function*() {
    const at = yield* Clock.currentTimeMillis
    const rows = yield* sql.unsafe<{
      resource_type: string
      pending: number
      in_flight: number
      dead: number
      scheduled: number
      oldest: Date | null
    }>(Statements.stats, [new Date(at)]).withoutTransform
    const oldest = rows.reduce<number | null>(
      (acc, row) => (row.oldest === null ? acc : acc === null ? row.oldest.getTime() : Math.min(acc, row.oldest.getTime())),
      null
    )
    const sum = (f: (r: (typeof rows)[number]) => number) => rows.reduce((acc, r) => acc + f(r), 0)
    return {
      pending: sum((r) => r.pending),
      inFlight: sum((r) => r.in_flight),
      dead: sum((r) => r.dead),
      scheduled: sum((r) => r.scheduled),
      oldestPendingAgeMs: oldest === null ? null : Math.max(0, at - oldest),
      byResourceType: rows.map((r) => ({
        resourceType: r.resource_type,
        pending: r.pending,
        inFlight: r.in_flight,
        dead: r.dead
      }))
    } satisfies Stats
  })

  const listDead = (options: { readonly resourceType?: string | undefined; readonly limit?: number | undefined } = {}) =>
    sql.unsafe<Statements.StoredRow>(Statements.listDead, [options.resourceType ?? null, options.limit ?? 100]).withoutTransform.pipe(
      Effect.map((rows) => rows.map(Statements.toStoredEvent))
    )

  const show = (id: string) =>
    Effect.gen(function*() {
      yield* checkId(id)
      const [row] = yield* sql.unsafe<Statements.StoredRow>(Statements.showEvent, [id]).withoutTransform
      if (row === undefined) return yield* new EventNotFound({ id })
      const failures = yield* sql.unsafe<{ attempt: number; error_tag: string; message: string; failed_at: Date }>(
        Statements.showFailures,
        [id]
      ).withoutTransform
      return {
        event: Statements.toStoredEvent(row),
        failures: failures.map((f) =>
          new FailureRecord({ attempt: f.attempt, errorTag: f.error_tag, message: f.message, failedAt: f.failed_at })
        )
      }
    })

  /** Run a statement on the selected dead letters; naming one that is not there is `EventNotFound`. */
  const onDead = (statement: (where: string) => string, selector: DeadSelector) =>
    Effect.gen(function*() {
      if (selector._tag === "One") yield* checkId(selector.id)
      const { params, where } = deadWhere(selector)
      const n = yield* count(statement(where), params)
      if (selector._tag === "One" && n === 0) return yield* new EventNotFound({ id: selector.id })
      return n
    })

  const requeue = (selector: DeadSelector) =>
    // Requeued rows are due now: wake the workers as an insert would.
    Effect.tap(onDead(Statements.requeue, selector), (n) => (n > 0 ? sql.unsafe(Statements.notify) : Effect.void))

  const purge = (selector: DeadSelector) => onDead(Statements.purge, selector)

  const workers = (staleAfterMs: number) => sql.unsafe<LiveWorker>(Statements.workers, [staleAfterMs]).withoutTransform

  return { stats, listDead, show, requeue, purge, workers } satisfies AdminShape
})

export class Admin extends Context.Tag("sync-outbox/Admin")<Admin, AdminShape>() {
  static readonly layer: Layer.Layer<Admin, never, SqlClient.SqlClient> = Layer.effect(Admin, make)
}
