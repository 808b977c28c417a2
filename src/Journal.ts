/**
 * The journal of applied events (`sync_outbox_journal`, migration 0005): what was applied, when,
 * by which worker, and which newer event covered a coalesced one. Rows are written by the
 * statement that completes them (`Leases.complete`); this module prunes them past the retention,
 * reads them back (`history`), enqueues them again (`replay`) and measures the table.
 */
import { SqlClient, type SqlError } from "@effect/sql"
import {
  Cause,
  Clock,
  Data,
  Duration,
  Effect,
  Either,
  FiberRef,
  GlobalValue,
  Metric,
  Option,
  ParseResult,
  Schedule,
  Schema,
  type Scope
} from "effect"
import * as Metrics from "./Metrics.js"
import type { EventRow } from "./Statements.js"
import { parseDuration } from "./OutboxConfig.js"

/** Input a journal query cannot use (a bad id, an unknown type, a time it cannot read); nothing was done. */
export class InvalidJournalQuery extends Data.TaggedError("InvalidJournalQuery")<{
  readonly message: string
}> {}

export interface JournalEntry {
  readonly id: string
  readonly resourceType: string
  readonly action: string
  readonly resourceId: number | null
  readonly orderingKey: string
  readonly payload: unknown
  readonly coalesce: boolean
  readonly createdAt: Date
  readonly appliedAt: Date
  /** Handler runs: failed attempts plus the applying one (none for an event a newer one covered). */
  readonly attempts: number
  /** The worker (lease owner) that completed it. */
  readonly worker: string
  /** For a coalesced event: the newer event whose apply covered it. */
  readonly supersededBy: string | null
  /**
   * For a coalesced event: whether that newer event had applied when this one was retired (false:
   * it had failed, and was retried or went dead; look it up). Null for an event applied itself.
   */
  readonly coveringApplied: boolean | null
  /** For an event `replay` enqueued: the journaled event it repeated. */
  readonly replayOf: string | null
  /** Enqueue (row created) to applied. */
  readonly latencyMs: number
}

/** A journal row: the outbox row it was (less its retry count), and how it was applied. */
interface EntryRow extends Omit<EventRow, "retry_count"> {
  readonly applied_at: Date
  readonly attempts: number
  readonly worker: string
  readonly superseded_by: string | null
  readonly covering_applied: boolean | null
  readonly replay_of: string | null
}

const entryColumns = `id::text AS id, resource_type, action, resource_id::float8 AS resource_id, ordering_key, payload,
  coalesce, created_at, applied_at, attempts, worker, superseded_by::text AS superseded_by, covering_applied, replay_of::text AS replay_of`

const toEntry = (row: EntryRow): JournalEntry => ({
  id: row.id,
  resourceType: row.resource_type,
  action: row.action,
  resourceId: row.resource_id,
  orderingKey: row.ordering_key,
  payload: row.payload,
  coalesce: row.coalesce,
  createdAt: row.created_at,
  appliedAt: row.applied_at,
  attempts: row.attempts,
  worker: row.worker,
  supersededBy: row.superseded_by,
  coveringApplied: row.covering_applied,
  replayOf: row.replay_of,
  latencyMs: Math.max(0, row.applied_at.getTime() - row.created_at.getTime())
})

// ---------------------------------------------------------------------------------------------
// Retention
// ---------------------------------------------------------------------------------------------

/** Shared by every worker on the database: whoever holds it is the one pruner. */
export const pruneLockKey = 7_351_921_013

// One batch, under a transaction-level advisory lock taken by the statement itself: a pruner
// never holds the lock between batches, never waits for it, and touches no outbox row, so it
// cannot block a claim or a completion. Rows are found on the applied_at index and deleted by
// their physical address (a TID scan).
const pruneBatchSql = `
WITH lock AS MATERIALIZED (SELECT pg_try_advisory_xact_lock($3::bigint) AS held),
victims AS (
  SELECT ctid FROM sync_outbox_journal
  WHERE applied_at < $1 AND (SELECT held FROM lock)
  ORDER BY applied_at
  LIMIT $2
), gone AS (
  DELETE FROM sync_outbox_journal WHERE ctid = ANY(ARRAY(SELECT ctid FROM victims)) RETURNING 1
)
SELECT (SELECT held FROM lock) AS held, (SELECT count(*) FROM gone)::int AS deleted`

export interface PruneResult {
  /** Rows deleted (applied before now minus the retention). */
  readonly deleted: number
  /** False when another pruner held the lock: this one deleted nothing more and left it the work. */
  readonly held: boolean
}

/**
 * Delete every journal row applied before `now - retention` (now from `Clock`), in batches of
 * `batchSize` (a positive integer), unless another pruner is at it. A retention of zero deletes
 * nothing (the journal is not being written; its rows are an operator's to keep), nor does an
 * infinite one.
 */
export const prune = (
  retention: Duration.Duration,
  options: { readonly batchSize?: number } = {}
): Effect.Effect<PruneResult, SqlError.SqlError, SqlClient.SqlClient> =>
  Effect.gen(function*() {
    const batchSize = options.batchSize ?? 1_000
    // A caller's bug, said as such: at 0 the loop below would never end (no batch is ever short),
    // and a negative or fractional LIMIT is only Postgres's error.
    if (!Number.isSafeInteger(batchSize) || batchSize < 1) {
      return yield* Effect.dieMessage(`Journal.prune: batchSize must be a positive integer, got ${batchSize}`)
    }
    // Zero journals nothing; an infinite retention keeps everything (its cut-off is no time at all).
    if (Duration.toMillis(retention) <= 0 || !Duration.isFinite(retention)) return { deleted: 0, held: true }
    const sql = yield* SqlClient.SqlClient
    const cutoff = new Date((yield* Clock.currentTimeMillis) - Duration.toMillis(retention))
    let deleted = 0
    for (;;) {
      const [row] = yield* sql.unsafe<{ held: boolean; deleted: number }>(pruneBatchSql, [cutoff, batchSize, pruneLockKey])
        .withoutTransform
      if (row === undefined || !row.held) return { deleted, held: false }
      deleted += row.deleted
      if (row.deleted < batchSize) return { deleted, held: true }
    }
  }).pipe(Effect.withSpan("sync-outbox.journal.prune"))

/** How often a worker prunes: a minute, or more often for a retention shorter than two minutes. */
export const pruneInterval = (retention: Duration.Duration): Duration.Duration =>
  Duration.clamp(Duration.divide(retention, 2).pipe(Option.getOrElse(() => retention)), {
    minimum: Duration.seconds(1),
    maximum: Duration.minutes(1)
  })

/**
 * True on the pruner's fiber: its timer is housekeeping, not something the worker waits on. The
 * test kit's clock (`testing/WorkerClock`) fires such a timer once time has passed it, at the next
 * step an `advance` makes anyway, instead of making a step of its own: one every minute made
 * `advance("1 day")` on PGlite take over a minute of real time, the journal's size being the only
 * thing that changed meanwhile. A real clock ignores it.
 */
export const housekeeping: FiberRef.FiberRef<boolean> = GlobalValue.globalValue(
  Symbol.for("sync-outbox/Journal/housekeeping"),
  () => FiberRef.unsafeMake(false)
)

/**
 * Start journaling, for a worker with this retention: returns whether completions should write
 * journal rows. When they should, a pruner runs for the caller's scope (every worker runs one;
 * the advisory lock lets one at a time work). A database not yet migrated to 0005 gets a warning
 * and delete-only completions rather than completions that fail.
 */
export const start = (
  retention: Duration.Duration
): Effect.Effect<boolean, never, SqlClient.SqlClient | Scope.Scope> =>
  Effect.gen(function*() {
    if (Duration.toMillis(retention) <= 0) return false
    const sql = yield* SqlClient.SqlClient
    const present = yield* sql.unsafe<{ present: boolean }>(
      `SELECT to_regclass('sync_outbox_journal') IS NOT NULL AS present`
    ).withoutTransform.pipe(
      Effect.map((rows) => rows[0]?.present === true),
      // Postgres unreachable at startup: the migration is the documented first step, assume it ran.
      Effect.orElseSucceed(() => true)
    )
    if (!present) {
      yield* Effect.logWarning(
        "sync-outbox: table sync_outbox_journal is missing (run `sync-outbox migrate`); applied events are not journaled"
      )
      return false
    }
    // A failing pruner is said once per streak of failures (and once when it recovers): a journal
    // that silently stops shrinking would only be noticed when the disk fills.
    let failing = false
    const round = prune(retention).pipe(
      Effect.zipRight(refreshMetrics),
      Effect.zipRight(Effect.suspend(() => {
        if (!failing) return Effect.void
        failing = false
        return Effect.logInfo("sync-outbox: journal pruning works again")
      })),
      Effect.catchAllCause((cause) => {
        if (failing) return Effect.logDebug("sync-outbox: journal pruning failed again", cause)
        failing = true
        return Effect.logWarning(`sync-outbox: journal pruning failed, will try again every ${Duration.format(pruneInterval(retention))}: ${Cause.squash(cause) instanceof Error ? (Cause.squash(cause) as Error).message : String(Cause.squash(cause))}`)
      })
    )
    yield* Effect.forkScoped(
      Effect.repeat(round, Schedule.spaced(pruneInterval(retention))).pipe(Effect.locally(housekeeping, true))
    )
    return true
  })

// ---------------------------------------------------------------------------------------------
// Size
// ---------------------------------------------------------------------------------------------

export interface JournalStats {
  /** Rows in the journal; exact up to 100,000, then the planner's estimate. */
  readonly rows: number
  readonly approximate: boolean
  readonly oldestAppliedAt: Date | null
  readonly bytes: number
}

const exactUpTo = 100_000

/** The journal's size and oldest entry, cheaply (no full count of a big table). Zero without the table. */
export const stats: Effect.Effect<JournalStats, SqlError.SqlError, SqlClient.SqlClient> = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const [row] = yield* sql.unsafe<{ present: boolean; estimate: number | null; bytes: number | null }>(
    `SELECT c.oid IS NOT NULL AS present, c.reltuples::float8 AS estimate,
       CASE WHEN c.oid IS NULL THEN 0 ELSE pg_total_relation_size(c.oid)::float8 END AS bytes
     FROM (SELECT to_regclass('sync_outbox_journal')::oid AS oid) r LEFT JOIN pg_class c ON c.oid = r.oid`
  ).withoutTransform
  if (row === undefined || !row.present) return { rows: 0, approximate: false, oldestAppliedAt: null, bytes: 0 }
  const [oldest] = yield* sql.unsafe<{ at: Date | null }>(`SELECT min(applied_at) AS at FROM sync_outbox_journal`)
    .withoutTransform
  // reltuples is -1 before the first ANALYZE.
  const estimate = row.estimate ?? -1
  const approximate = estimate >= exactUpTo
  const rows = approximate
    ? Math.round(estimate)
    : (yield* sql.unsafe<{ n: number }>(`SELECT count(*)::float8 AS n FROM sync_outbox_journal`).withoutTransform)[0]!.n
  return { rows, approximate, oldestAppliedAt: oldest?.at ?? null, bytes: row.bytes ?? 0 }
})

/** Set `sync_outbox_journal_rows` and `sync_outbox_journal_oldest_age_seconds` from the database. */
export const refreshMetrics: Effect.Effect<JournalStats, SqlError.SqlError, SqlClient.SqlClient> = Effect.gen(function*() {
  const s = yield* stats
  const at = yield* Clock.currentTimeMillis
  yield* Metric.set(Metrics.journalRows, s.rows)
  yield* Metric.set(
    Metrics.journalOldestAge,
    s.oldestAppliedAt === null ? 0 : Math.max(0, at - s.oldestAppliedAt.getTime()) / 1_000
  )
  return s
})

// ---------------------------------------------------------------------------------------------
// Reading it back
// ---------------------------------------------------------------------------------------------

const idRe = /^[1-9][0-9]{0,18}$/
const maxBigint = 9_223_372_036_854_775_807n

const firstDay = Date.parse("0001-01-01T00:00:00Z")

/**
 * A point in time as an operator gives it: an ISO 8601 date or timestamp (`2026-11-30`,
 * `2026-11-30T12:00:00Z`), or a duration back from now (`15m`, `2 hours`, `7d`).
 */
export const parseSince = (text: string): Effect.Effect<Date, InvalidJournalQuery> =>
  Effect.gen(function*() {
    const trimmed = text.trim()
    if (/^\d{4}-\d{2}-\d{2}/.test(trimmed)) {
      const ms = Date.parse(trimmed)
      if (Number.isFinite(ms)) return new Date(ms)
    } else {
      const duration = parseDuration(trimmed)
      // A duration back past the year 1 (`99999999 days`) is no point in time either: Postgres
      // would refuse it as out of range, an error of the database's for the operator's typo.
      const at = Option.isSome(duration) ? new Date((yield* Clock.currentTimeMillis) - Duration.toMillis(duration.value)) : undefined
      if (at !== undefined && at.getTime() >= firstDay) return at
    }
    return yield* new InvalidJournalQuery({
      message: `--since wants an ISO date or timestamp (2026-11-30T12:00:00Z) or a duration back from now (15m, 2 hours, 7d), got "${text}"`
    })
  })

export interface HistoryQuery {
  readonly resourceType?: string | undefined
  readonly resourceId?: number | undefined
  /** Applied at or after. */
  readonly since?: Date | undefined
  /** At most this many (default 100, up to 10,000). */
  readonly limit?: number | undefined
}

/** Journaled events, newest applied first, with their enqueue-to-applied timings. */
export const history = (
  query: HistoryQuery = {}
): Effect.Effect<ReadonlyArray<JournalEntry>, InvalidJournalQuery | SqlError.SqlError, SqlClient.SqlClient> =>
  Effect.gen(function*() {
    const limit = query.limit ?? 100
    if (!Number.isInteger(limit) || limit < 1 || limit > 10_000) {
      return yield* new InvalidJournalQuery({ message: `--limit must be an integer from 1 to 10000, got ${limit}` })
    }
    if (query.resourceId !== undefined && (!Number.isSafeInteger(query.resourceId) || query.resourceId < 1)) {
      return yield* new InvalidJournalQuery({ message: `--resource-id must be a positive integer, got ${query.resourceId}` })
    }
    if (query.resourceType !== undefined && query.resourceType.trim() === "") {
      return yield* new InvalidJournalQuery({ message: "--resource-type must not be empty" })
    }
    if (query.since !== undefined && !Number.isFinite(query.since.getTime())) {
      return yield* new InvalidJournalQuery({ message: "--since is not a valid time" })
    }
    const sql = yield* SqlClient.SqlClient
    const rows = yield* sql.unsafe<EntryRow>(
      `SELECT ${entryColumns} FROM sync_outbox_journal
       WHERE ($1::text IS NULL OR resource_type = $1)
         AND ($2::bigint IS NULL OR resource_id = $2)
         AND ($3::timestamptz IS NULL OR applied_at >= $3)
       ORDER BY applied_at DESC, id DESC
       LIMIT $4`,
      [query.resourceType?.trim() ?? null, query.resourceId ?? null, query.since ?? null, limit]
    ).withoutTransform
    return rows.map(toEntry)
  })

// ---------------------------------------------------------------------------------------------
// Replay
// ---------------------------------------------------------------------------------------------

/** Which journaled events to enqueue again. */
export type ReplaySelector =
  | { readonly _tag: "Ids"; readonly ids: ReadonlyArray<string> }
  | { readonly _tag: "Range"; readonly resourceType: string; readonly since: Date }

export interface ReplayOptions {
  /** Select and check, enqueue nothing. */
  readonly dryRun?: boolean | undefined
  /**
   * The registered (resource type, action) pairs: every event replayed must have a handler, so a
   * replay cannot fill the outbox with events no worker can apply. Unchecked when absent.
   */
  readonly registered?:
    | ReadonlyArray<{ readonly resourceType: string; readonly action: string; readonly payload?: Schema.Schema<any, any, never> }>
    | undefined
  /** Refuse a selection larger than this (default 100,000): narrow it instead. */
  readonly maxEvents?: number | undefined
}

export interface ReplayResult {
  /** The journaled events selected, oldest (lowest id) first: the order they are enqueued in. */
  readonly events: ReadonlyArray<JournalEntry>
  /** The new events' ids, one per selected event in the same order; empty on a dry run. */
  readonly enqueued: ReadonlyArray<string>
}

// One statement, in the selection's order, so new ids keep the original order per key (the
// claim's ordering and coalescing then apply as to any new event); the insert trigger notifies.
const replayInsertSql = `
INSERT INTO sync_outbox (resource_type, action, resource_id, ordering_key, payload, coalesce, replay_of, created_at)
SELECT t.resource_type, t.action, t.resource_id, t.ordering_key, t.payload, t.coalesce, t.replay_of, $8::timestamptz
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::jsonb[], $6::boolean[], $7::bigint[])
  WITH ORDINALITY AS t(resource_type, action, resource_id, ordering_key, payload, coalesce, replay_of, ord)
ORDER BY t.ord
RETURNING id::text AS id`

/**
 * Enqueue journaled events again, as new events. All-or-nothing: a malformed or unknown id, an
 * unknown resource type or a selection too large is an `InvalidJournalQuery` and nothing is
 * enqueued. An empty time range is not an error: nothing to do.
 */
export const replay = (
  selector: ReplaySelector,
  options: ReplayOptions = {}
): Effect.Effect<ReplayResult, InvalidJournalQuery | SqlError.SqlError, SqlClient.SqlClient> =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const maxEvents = options.maxEvents ?? 100_000
    // It becomes the statement's LIMIT: a negative or fractional bound would be Postgres's error, not ours.
    if (!Number.isSafeInteger(maxEvents) || maxEvents < 0) {
      return yield* new InvalidJournalQuery({ message: `maxEvents must be an integer from 0, got ${maxEvents}` })
    }
    const registered = options.registered === undefined
      ? undefined
      : new Set(options.registered.map((t) => `${t.resourceType}\u0000${t.action}`))
    let rows: ReadonlyArray<EntryRow>
    if (selector._tag === "Ids") {
      const ids = [...new Set(selector.ids.map((id) => id.trim()).filter((id) => id !== ""))]
      if (ids.length === 0) return yield* new InvalidJournalQuery({ message: "--ids names no event" })
      const malformed = ids.filter((id) => !idRe.test(id) || BigInt(id) > maxBigint)
      if (malformed.length > 0) {
        return yield* new InvalidJournalQuery({ message: `not an event id: ${malformed.slice(0, 10).join(", ")}` })
      }
      if (ids.length > maxEvents) {
        return yield* new InvalidJournalQuery({ message: `${ids.length} ids; at most ${maxEvents} at once` })
      }
      // The latest journal row of each id (an id is journaled once, unless its sequence was reset).
      rows = yield* sql.unsafe<EntryRow>(
        // By the bigint, not the text alias: replay enqueues in this order ("10" < "9" as text).
        `SELECT DISTINCT ON (sync_outbox_journal.id) ${entryColumns} FROM sync_outbox_journal
         WHERE id = ANY($1::bigint[]) ORDER BY sync_outbox_journal.id, applied_at DESC`,
        [ids]
      ).withoutTransform
      const found = new Set(rows.map((r) => r.id))
      const missing = ids.filter((id) => !found.has(id))
      if (missing.length > 0) {
        // An id still in the outbox was never applied: say where it is, not only where it is not.
        const outbox = yield* sql.unsafe<{ id: string; status: string }>(
          `SELECT id::text AS id, status FROM sync_outbox WHERE id = ANY($1::bigint[]) ORDER BY id`,
          [missing]
        ).withoutTransform
        const status = new Map(outbox.map((r) => [r.id, r.status]))
        const list = (xs: ReadonlyArray<string>) =>
          `${xs.slice(0, 10).join(", ")}${xs.length > 10 ? ` and ${xs.length - 10} more` : ""}`
        const pending = missing.filter((id) => status.get(id) === "pending")
        const dead = missing.filter((id) => status.get(id) === "dead")
        const absent = missing.filter((id) => !status.has(id))
        const parts = [
          ...(absent.length > 0 ? [`not in the journal (never applied, or pruned): ${list(absent)}`] : []),
          ...(pending.length > 0 ? [`still pending in the outbox, not applied yet: ${list(pending)}`] : []),
          ...(dead.length > 0 ? [`dead letters, never applied (requeue them instead): ${list(dead)}`] : [])
        ]
        return yield* new InvalidJournalQuery({ message: parts.join("; ") })
      }
    } else {
      const resourceType = selector.resourceType.trim()
      if (resourceType === "") return yield* new InvalidJournalQuery({ message: "--resource-type must not be empty" })
      if (!Number.isFinite(selector.since.getTime())) {
        return yield* new InvalidJournalQuery({ message: "--since is not a valid time" })
      }
      if (registered !== undefined && !options.registered!.some((t) => t.resourceType === resourceType)) {
        return yield* new InvalidJournalQuery({ message: `unknown resource type "${resourceType}": no handler is registered for it` })
      }
      rows = yield* sql.unsafe<EntryRow>(
        `SELECT ${entryColumns} FROM sync_outbox_journal
         WHERE resource_type = $1 AND applied_at >= $2
         ORDER BY sync_outbox_journal.id
         LIMIT $3`,
        [resourceType, selector.since, maxEvents + 1]
      ).withoutTransform
      if (rows.length > maxEvents) {
        return yield* new InvalidJournalQuery({
          message: `more than ${maxEvents} events selected: narrow the range with a later --since`
        })
      }
    }
    if (registered !== undefined) {
      const unknown = [...new Set(rows.filter((r) => !registered.has(`${r.resource_type}\u0000${r.action}`))
        .map((r) => `${r.resource_type}/${r.action}`))]
      if (unknown.length > 0) {
        return yield* new InvalidJournalQuery({ message: `no handler is registered for ${unknown.join(", ")}: nothing replayed` })
      }
    }
    if (options.registered !== undefined) {
      // A payload the handler's schema no longer accepts would only go dead: say so now instead.
      const schemas = new Map(options.registered.map((t) => [`${t.resourceType}\u0000${t.action}`, t.payload] as const))
      const misfits: Array<string> = []
      for (const row of rows) {
        const schema = schemas.get(`${row.resource_type}\u0000${row.action}`)
        if (schema === undefined) continue
        const decoded = Schema.decodeUnknownEither(schema)(row.payload)
        if (Either.isLeft(decoded)) {
          misfits.push(`${row.id} (${row.resource_type}/${row.action}): ${ParseResult.TreeFormatter.formatErrorSync(decoded.left).replace(/\s*\n\s*/g, " ")}`)
        }
      }
      if (misfits.length > 0) {
        return yield* new InvalidJournalQuery({
          message: `payloads the current handlers no longer accept, nothing replayed: ${misfits.slice(0, 3).join("; ")}${
            misfits.length > 3 ? `; and ${misfits.length - 3} more` : ""
          }`
        })
      }
    }
    const events = rows.map(toEntry).sort((a, b) => a.id.length - b.id.length || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
    if (options.dryRun === true || events.length === 0) return { events, enqueued: [] }
    const inserted = yield* sql.unsafe<{ id: string }>(replayInsertSql, [
      events.map((e) => e.resourceType),
      events.map((e) => e.action),
      events.map((e) => e.resourceId),
      events.map((e) => e.orderingKey),
      events.map((e) => (e.payload === null ? null : JSON.stringify(e.payload))),
      events.map((e) => e.coalesce),
      events.map((e) => e.id),
      new Date(yield* Clock.currentTimeMillis)
    ]).withoutTransform
    yield* Metric.incrementBy(Metrics.enqueued, inserted.length)
    const enqueued = inserted.map((r) => r.id).sort((a, b) => a.length - b.length || (a < b ? -1 : a > b ? 1 : 0))
    return { events, enqueued }
  }).pipe(Effect.withSpan("sync-outbox.journal.replay", { attributes: { selector: selector._tag } }))
