/**
 * Every SQL statement on the outbox tables. The producer side (`enqueue`, `enqueueMany`,
 * `enqueueWith`) needs only a `SqlClient`, so it joins the caller's `sql.withTransaction`.
 * The worker side is the `Store` service. Times are parameters taken from Effect's `Clock`,
 * never the database's `now()`, so `TestClock` drives leases and retries against a real database.
 */
import { SqlClient, SqlError } from "@effect/sql"
import { Clock, Context, Duration, Effect, Layer, Metric, Option } from "effect"
import * as Metrics from "./Metrics.js"
import { PgPool } from "./Database.js"
import type pg from "pg"
import { EventNotFound, FailureRecord, InvalidEvent, InvalidPayload } from "./Errors.js"
import * as OutboxEvent from "./OutboxEvent.js"

// ---------------------------------------------------------------------------------------------
// Producer side
// ---------------------------------------------------------------------------------------------

const insertOne = `INSERT INTO sync_outbox (resource_type, action, resource_id, ordering_key, payload, coalesce)
VALUES ($1, $2, $3, $4, $5::jsonb, $6) RETURNING id::text AS id`

const insertMany = `INSERT INTO sync_outbox (resource_type, action, resource_id, ordering_key, payload, coalesce)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::jsonb[], $6::boolean[])
RETURNING id::text AS id`

const oneParams = (e: OutboxEvent.EncodedEvent): ReadonlyArray<unknown> => [
  e.resourceType,
  e.action,
  e.resourceId,
  e.orderingKey,
  e.payload === null ? null : JSON.stringify(e.payload),
  e.coalesce
]

const manyParams = (events: ReadonlyArray<OutboxEvent.EncodedEvent>): ReadonlyArray<unknown> => [
  events.map((e) => e.resourceType),
  events.map((e) => e.action),
  events.map((e) => e.resourceId),
  events.map((e) => e.orderingKey),
  events.map((e) => (e.payload === null ? null : JSON.stringify(e.payload))),
  events.map((e) => e.coalesce)
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
    const rows = yield* sql.unsafe<{ id: string }>(insertOne, oneParams(encoded))
    // Counted when written, even if the caller's transaction later rolls back: a count of
    // attempts to enqueue, not of commits (the outbox itself is the count of what committed).
    yield* Metric.increment(Metrics.enqueued)
    return rows[0]!.id
  }).pipe(Effect.withSpan("sync-outbox.enqueue", { attributes: { resourceType: type.resourceType, action: type.action } }))

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
    const rows = yield* sql.unsafe<{ id: string }>(insertMany, manyParams(encoded))
    yield* Metric.incrementBy(Metrics.enqueued, rows.length)
    return rows.map((row) => row.id)
  }).pipe(Effect.withSpan("sync-outbox.enqueueMany", { attributes: { count: events.length } }))

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
    const result = yield* Effect.tryPromise({
      try: () => client.query<{ id: string }>(insertOne, oneParams(encoded) as Array<unknown>),
      catch: (cause) => new SqlError.SqlError({ cause, message: "enqueueWith: insert failed" })
    })
    yield* Metric.increment(Metrics.enqueued)
    return result.rows[0]!.id
  })

// ---------------------------------------------------------------------------------------------
// Worker and operator side
// ---------------------------------------------------------------------------------------------

/** One failed attempt to record. `dead: true` parks the row; otherwise it is retried at `nextRetryAt`. */
export interface Failure {
  readonly id: string
  readonly attempt: number
  readonly tag: string
  readonly message: string
  readonly nextRetryAt: Date
  readonly dead: boolean
  /**
   * Keep the row leased until its lease expires (a call that timed out may still be running):
   * neither it nor its key is claimable before then, and its retry is due no earlier.
   */
  readonly keepLease?: boolean | undefined
}

/** A claimed event, and whether another pending event of its key waits behind it. */
export interface Claimed extends OutboxEvent.ClaimedEvent {
  readonly successor: boolean
}

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

export interface WorkerRow {
  readonly owner: string
  readonly hostname: string
  readonly pid: number
  readonly breaker: string
  readonly listener: string
  /** The claim loop: `running`, `restarting` (after a failure, with `loopError`), `stopped`. */
  readonly loop: string
  readonly loopError: string | null
}

/** Which dead letters an operator means. */
export type DeadSelector =
  | { readonly _tag: "One"; readonly id: string }
  | { readonly _tag: "ResourceType"; readonly resourceType: string }
  | { readonly _tag: "All" }

/**
 * The claim, in one statement. `picked`: due, unleased rows in id order, skipping keys with a live
 * lease (and, for non-coalescing types, keys with an older pending row), locked with SKIP LOCKED.
 * `claimable`: `sync_outbox_claim_keys` takes an advisory transaction lock per picked key, then
 * looks again, with one fresh snapshot for them all, for a live lease on each. Every lease is written under its
 * key's lock, so a lease committed by another worker after this statement began (which the
 * statement's own snapshot cannot see) is seen there: two claims never hold one key. Then the
 * lease is written on the picked rows and, for coalescing keys, on every pending coalescing row
 * of the key. `successor`: a non-coalescing row with another pending row of its key behind it,
 * so the worker claims that one as soon as this one is done rather than on the next poll.
 */
const claimSql = `
WITH picked AS MATERIALIZED (
  SELECT c.id, c.ordering_key, c.coalesce
  FROM sync_outbox c
  WHERE c.status = 'pending'
    AND c.next_retry_at <= $2
    AND (c.lease_expires_at IS NULL OR c.lease_expires_at <= $2)
    AND NOT coalesce((
      SELECT true FROM sync_outbox l
      WHERE l.ordering_key = c.ordering_key AND l.status = 'pending' AND l.lease_expires_at > $2
      LIMIT 1), false)
    AND (c.coalesce OR NOT EXISTS (
      SELECT 1 FROM sync_outbox e
      WHERE e.ordering_key = c.ordering_key AND e.status = 'pending' AND e.id < c.id))
  ORDER BY c.id
  LIMIT $4
  FOR UPDATE OF c SKIP LOCKED
), claimable AS MATERIALIZED (
  SELECT sync_outbox_claim_keys(ARRAY(SELECT DISTINCT ordering_key FROM picked), $2) AS ordering_keys
), keys AS MATERIALIZED (
  SELECT ordering_key, bool_or(coalesce) AS coalesce
  FROM picked
  WHERE ordering_key = ANY ((SELECT ordering_keys FROM claimable)::text[])
  GROUP BY ordering_key
)
UPDATE sync_outbox o
SET lease_owner = $1, lease_expires_at = $3
FROM keys k
WHERE o.ordering_key = k.ordering_key
  AND o.status = 'pending'
  AND (o.lease_expires_at IS NULL OR o.lease_expires_at <= $2)
  -- A coalescing handler reads current state after this claim, so it covers every coalescing
  -- event of the key committed before now: lease them all, however far past the batch limit.
  AND (o.id IN (SELECT id FROM picked) OR (k.coalesce AND o.coalesce))
RETURNING o.id::text AS id, o.resource_type, o.action, o.resource_id::float8 AS resource_id, o.ordering_key,
  o.payload, o.coalesce, o.retry_count, o.created_at,
  (NOT o.coalesce AND EXISTS (
    SELECT 1 FROM sync_outbox n
    WHERE n.ordering_key = o.ordering_key AND n.status = 'pending' AND n.id > o.id)) AS successor`

const completeSql = `DELETE FROM sync_outbox WHERE id = ANY($2::bigint[]) AND lease_owner = $1`

const renewSql = `UPDATE sync_outbox SET lease_expires_at = $3
WHERE id = ANY($2::bigint[]) AND lease_owner = $1 AND status = 'pending'`
// The same completion, journaled in the same statement (see migrations/outbox/0005_journal.sql):
// `$3` is the worker's Clock, `$4`/`$5` link coalesced events to the event that covered them.
const completeJournaledSql = `
WITH done AS (
  DELETE FROM sync_outbox o WHERE o.id = ANY($2::bigint[]) AND o.lease_owner = $1
  RETURNING o.id, o.resource_type, o.action, o.resource_id, o.ordering_key, o.payload, o.coalesce, o.created_at, o.retry_count,
    o.replay_of
), links AS (
  SELECT * FROM unnest($4::bigint[], $5::bigint[]) AS t(id, superseded_by)
)
INSERT INTO sync_outbox_journal (id, resource_type, action, resource_id, ordering_key, payload, coalesce, created_at,
  applied_at, attempts, worker, superseded_by, replay_of)
SELECT d.id, d.resource_type, d.action, d.resource_id, d.ordering_key, d.payload, d.coalesce, d.created_at,
  $3, d.retry_count + CASE WHEN l.superseded_by IS NULL THEN 1 ELSE 0 END, $1, l.superseded_by, d.replay_of
FROM done d LEFT JOIN links l ON l.id = d.id`

/** What `complete` journals: when, and which completed events a newer one covered (id -> newer id). */
export interface Journaling {
  readonly appliedAt: Date
  readonly supersededBy: ReadonlyMap<string, string>
}

const releaseSql = `UPDATE sync_outbox SET lease_owner = NULL, lease_expires_at = NULL
WHERE id = ANY($2::bigint[]) AND lease_owner = $1`

const failSql = `
WITH input AS (
  SELECT * FROM unnest($2::bigint[], $3::text[], $4::text[], $5::timestamptz[], $6::boolean[], $7::integer[], $9::boolean[])
    AS t(id, tag, message, next_retry_at, dead, attempt, keep_lease)
), updated AS (
  UPDATE sync_outbox o
  SET retry_count = i.attempt,
      last_error = i.tag || ': ' || i.message,
      status = CASE WHEN i.dead THEN 'dead' ELSE 'pending' END,
      -- A kept lease still blocks the row and its key until it expires; the retry waits for it.
      next_retry_at = CASE WHEN i.keep_lease THEN greatest(i.next_retry_at, o.lease_expires_at) ELSE i.next_retry_at END,
      lease_owner = CASE WHEN i.keep_lease THEN o.lease_owner END,
      lease_expires_at = CASE WHEN i.keep_lease THEN o.lease_expires_at END
  FROM input i
  WHERE o.id = i.id AND o.lease_owner = $1
  RETURNING o.id, i.attempt, i.tag, i.message
)
INSERT INTO sync_outbox_failures (outbox_id, attempt, error_tag, message, failed_at)
SELECT id, attempt, tag, message, $8 FROM updated
ON CONFLICT (outbox_id, attempt) DO NOTHING`

// A retry already due counts too: it may have fallen due while the worker was busy. Lease
// expiry is not looked up (no index on it, so that a claim stays a HOT update): the poll finds
// expired leases, at most one interval late.
const nextWakeSql = `
SELECT min(next_retry_at) AS at FROM sync_outbox
WHERE status = 'pending' AND next_retry_at > '-infinity' AND lease_owner IS NULL`

interface ClaimRow {
  readonly successor?: boolean
  readonly id: string
  readonly resource_type: string
  readonly action: string
  readonly resource_id: number | null
  readonly ordering_key: string
  readonly payload: unknown
  readonly coalesce: boolean
  readonly retry_count: number
  readonly created_at: Date
}

interface StoredRow extends ClaimRow {
  readonly status: "pending" | "dead"
  readonly last_error: string | null
  readonly next_retry_at: Date | number
  readonly lease_owner: string | null
  readonly lease_expires_at: Date | null
}

const toClaimed = (row: ClaimRow): OutboxEvent.ClaimedEvent => ({
  id: row.id,
  resourceType: row.resource_type,
  action: row.action,
  resourceId: row.resource_id,
  orderingKey: row.ordering_key,
  payload: row.payload,
  coalesce: row.coalesce,
  retryCount: row.retry_count,
  createdAt: row.created_at
})

// RETURNING has no order; callers get events oldest first.
const byId = (a: { readonly id: string }, b: { readonly id: string }) =>
  a.id.length - b.id.length || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)

const toStored = (row: StoredRow): OutboxEvent.StoredEvent => ({
  ...toClaimed(row),
  status: row.status,
  lastError: row.last_error,
  // pg-types reads '-infinity' as the number -Infinity: "due at once".
  nextRetryAt: row.next_retry_at instanceof Date ? row.next_retry_at : null,
  leaseOwner: row.lease_owner,
  leaseExpiresAt: row.lease_expires_at
})

const storedColumns = `id::text AS id, resource_type, action, resource_id::float8 AS resource_id, ordering_key, payload,
  coalesce, retry_count, created_at, status, last_error, next_retry_at, lease_owner, lease_expires_at`

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

const make = (options: StoreOptions) => Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const pool = yield* Effect.serviceOption(PgPool)
  const now = Effect.map(Clock.currentTimeMillis, (ms) => new Date(ms))

  /**
   * The worker's hot statements: named prepared statements on the raw pool when there is one
   * (planned once per connection: a claim costs a third), else through the `SqlClient`.
   */
  const hot = <A extends object>(name: string, text: string, params: ReadonlyArray<unknown>) =>
    Option.match(pool, {
      // A client of the caller's own may have no timeouts: bound the call here.
      onNone: () =>
        Effect.map(sql.unsafe<A>(text, params).raw, (result) => {
          const r = result as { rows?: ReadonlyArray<A>; rowCount?: number | null }
          return { rows: r.rows ?? [], rowCount: Number(r.rowCount ?? 0) }
        }).pipe(
          Effect.timeoutFail({
            duration: options.callTimeout,
            onTimeout: () => new SqlError.SqlError({ cause: null, message: `sync-outbox ${name} timed out` })
          })
        ),
      // The pool enforces statement_timeout and query_timeout itself (Database.layer): no timer here.
      onSome: (p) =>
        Effect.tryPromise({
          try: () => p.query<A>({ name: `sync_outbox_${name}`, text, values: params as Array<unknown> }),
          catch: (cause) => new SqlError.SqlError({ cause, message: `sync-outbox ${name} failed` })
        }).pipe(Effect.map((r) => ({ rows: r.rows as ReadonlyArray<A>, rowCount: Number(r.rowCount ?? 0) })))
    })

  const claim = (owner: string, leaseMs: number, limit: number) =>
    Effect.flatMap(now, (at) => hot<ClaimRow>("claim", claimSql, [owner, at, new Date(at.getTime() + leaseMs), limit])).pipe(
      Effect.map(({ rows }) => rows.map((row): Claimed => ({ ...toClaimed(row), successor: row.successor === true })).sort(byId))
    )

  /** Delete completed rows; with `journal`, write their journal rows in the same statement. */
  const complete = (owner: string, ids: ReadonlyArray<string>, journal?: Journaling) =>
    ids.length === 0
      ? Effect.succeed(0)
      : Effect.map(
        journal === undefined
          ? hot("complete", completeSql, [owner, ids])
          : hot("complete_journaled", completeJournaledSql, [
            owner,
            ids,
            journal.appliedAt,
            [...journal.supersededBy.keys()],
            [...journal.supersededBy.values()]
          ]),
        (r) => r.rowCount
      )

  /** Extend this owner's leases (a timed-out call still running), fenced on the owner. */
  const renew = (owner: string, ids: ReadonlyArray<string>, until: Date) =>
    ids.length === 0 ? Effect.succeed(0) : Effect.map(hot("renew", renewSql, [owner, ids, until]), (r) => r.rowCount)

  const release = (owner: string, ids: ReadonlyArray<string>) =>
    ids.length === 0 ? Effect.succeed(0) : Effect.map(hot("release", releaseSql, [owner, ids]), (r) => r.rowCount)

  const fail = (owner: string, failures: ReadonlyArray<Failure>) =>
    failures.length === 0 ? Effect.void : Effect.flatMap(now, (at) =>
      hot("fail", failSql, [
        owner,
        failures.map((f) => f.id),
        failures.map((f) => f.tag),
        failures.map((f) => f.message),
        failures.map((f) => f.nextRetryAt),
        failures.map((f) => f.dead),
        failures.map((f) => f.attempt),
        at,
        failures.map((f) => f.keepLease === true)
      ])).pipe(Effect.asVoid)

  /** When the worker must look again even if nothing notifies it: the earliest scheduled retry. */
  const nextWakeAt = hot<{ at: Date | null }>("next_wake", nextWakeSql, []).pipe(
    Effect.map(({ rows }) => {
      const at = rows[0]?.at
      return at instanceof Date ? at.getTime() : null
    })
  )

  const stats = Effect.gen(function*() {
    const at = yield* now
    const rows = yield* sql.unsafe<{
      resource_type: string
      pending: number
      in_flight: number
      dead: number
      scheduled: number
      oldest: Date | null
    }>(
      `SELECT resource_type,
         count(*) FILTER (WHERE status = 'pending')::int AS pending,
         count(*) FILTER (WHERE status = 'pending' AND lease_expires_at > $1)::int AS in_flight,
         count(*) FILTER (WHERE status = 'dead')::int AS dead,
         count(*) FILTER (WHERE status = 'pending' AND next_retry_at > $1)::int AS scheduled,
         min(created_at) FILTER (WHERE status = 'pending') AS oldest
       FROM sync_outbox GROUP BY resource_type ORDER BY resource_type`,
      [at]
    ).withoutTransform
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
      oldestPendingAgeMs: oldest === null ? null : Math.max(0, at.getTime() - oldest),
      byResourceType: rows.map((r) => ({
        resourceType: r.resource_type,
        pending: r.pending,
        inFlight: r.in_flight,
        dead: r.dead
      }))
    } satisfies Stats
  })

  const listDead = (options: { readonly resourceType?: string | undefined; readonly limit?: number | undefined } = {}) =>
    sql.unsafe<StoredRow>(
      `SELECT ${storedColumns} FROM sync_outbox
       WHERE status = 'dead' AND ($1::text IS NULL OR resource_type = $1)
       ORDER BY id LIMIT $2`,
      [options.resourceType ?? null, options.limit ?? 100]
    ).withoutTransform.pipe(Effect.map((rows) => rows.map(toStored)))

  const checkId = (id: string) => (idRe.test(id) ? Effect.void : Effect.fail(new EventNotFound({ id })))

  /** One event with its whole failure history. */
  const show = (id: string) =>
    Effect.gen(function*() {
      yield* checkId(id)
      const rows = yield* sql.unsafe<StoredRow>(`SELECT ${storedColumns} FROM sync_outbox WHERE id = $1::bigint`, [id])
        .withoutTransform
      const row = rows[0]
      if (row === undefined) return yield* new EventNotFound({ id })
      const failures = yield* sql.unsafe<{ attempt: number; error_tag: string; message: string; failed_at: Date }>(
        `SELECT attempt, error_tag, message, failed_at FROM sync_outbox_failures WHERE outbox_id = $1::bigint ORDER BY attempt`,
        [id]
      ).withoutTransform
      return {
        event: toStored(row),
        failures: failures.map((f) =>
          new FailureRecord({ attempt: f.attempt, errorTag: f.error_tag, message: f.message, failedAt: f.failed_at })
        )
      }
    })

  /**
   * Dead letters back to pending, due at once, with a fresh attempt budget. Their failure
   * history stays (attempt numbers keep growing), so the whole story of an event is kept.
   */
  const requeue = (selector: DeadSelector) =>
    Effect.gen(function*() {
      if (selector._tag === "One") yield* checkId(selector.id)
      const { params, where } = deadWhere(selector)
      const result = yield* sql.unsafe(
        `UPDATE sync_outbox SET status = 'pending', retry_count = 0, next_retry_at = '-infinity',
           lease_owner = NULL, lease_expires_at = NULL
         WHERE ${where}`,
        params
      ).raw
      const count = rowCount(result)
      if (selector._tag === "One" && count === 0) return yield* new EventNotFound({ id: selector.id })
      // Requeued rows are due now: wake the workers as an insert would.
      if (count > 0) {
        yield* sql.unsafe(
          `SELECT pg_notify(coalesce(nullif(current_setting('sync_outbox.channel', true), ''), 'sync_outbox'), '')`
        )
      }
      return count
    })

  const purge = (selector: DeadSelector) =>
    Effect.gen(function*() {
      if (selector._tag === "One") yield* checkId(selector.id)
      const { params, where } = deadWhere(selector)
      const count = rowCount(yield* sql.unsafe(`DELETE FROM sync_outbox WHERE ${where}`, params).raw)
      if (selector._tag === "One" && count === 0) return yield* new EventNotFound({ id: selector.id })
      return count
    })

  /** Register or refresh this worker's row (the database's clock: it is for display). */
  const heartbeat = (worker: WorkerRow) =>
    hot(
      "heartbeat",
      `INSERT INTO sync_outbox_workers (owner, hostname, pid, breaker, listener, loop, loop_error)
       VALUES ($1, $2, $3, $4, $5, $6, $7)
       ON CONFLICT (owner) DO UPDATE SET heartbeat_at = now(), breaker = EXCLUDED.breaker, listener = EXCLUDED.listener,
         loop = EXCLUDED.loop, loop_error = EXCLUDED.loop_error`,
      [worker.owner, worker.hostname, worker.pid, worker.breaker, worker.listener, worker.loop, worker.loopError]
    ).pipe(Effect.asVoid)

  const unregister = (owner: string) =>
    sql.unsafe(`DELETE FROM sync_outbox_workers WHERE owner = $1`, [owner]).raw.pipe(Effect.asVoid)

  /** Workers whose heartbeat is younger than `staleAfterMs`. */
  const workers = (staleAfterMs: number) =>
    sql.unsafe<{
      owner: string
      hostname: string
      pid: number
      breaker: string
      listener: string
      loop: string
      loop_error: string | null
      started_at: Date
      heartbeat_age_ms: number
    }>(
      `SELECT owner, hostname, pid, breaker, listener, loop, loop_error, started_at,
         (extract(epoch FROM now() - heartbeat_at) * 1000)::float8 AS heartbeat_age_ms
       FROM sync_outbox_workers
       WHERE heartbeat_at > now() - make_interval(secs => $1::float8 / 1000)
       ORDER BY started_at`,
      [staleAfterMs]
    ).withoutTransform

  return {
    heartbeat,
    unregister,
    workers,
    claim,
    complete,
    renew,
    release,
    fail,
    nextWakeAt,
    stats,
    listDead,
    show,
    requeue,
    purge
  } as const
})

const rowCount = (result: unknown): number => {
  if (typeof result === "object" && result !== null && "rowCount" in result) {
    return Number((result as { rowCount: number | null }).rowCount ?? 0)
  }
  return 0
}

export interface StoreOptions {
  /** Bounds the worker's statements when they go through a `SqlClient` without a `PgPool`. */
  readonly callTimeout: Duration.Duration
}

export class Store extends Context.Tag("sync-outbox/Store")<Store, Effect.Effect.Success<ReturnType<typeof make>>>() {
  static readonly layer: Layer.Layer<Store, never, SqlClient.SqlClient> = Layer.effect(
    Store,
    make({ callTimeout: Duration.seconds(10) })
  )
  static readonly layerWith = (options: StoreOptions): Layer.Layer<Store, never, SqlClient.SqlClient> =>
    Layer.effect(Store, make(options))
}
