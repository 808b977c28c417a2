/**
 * The SQL text of every statement on the outbox tables (`sync_outbox`, `sync_outbox_failures`,
 * `sync_outbox_workers`), in one place: the producer's inserts (`Enqueue`), the lease protocol
 * (`Leases`) and the operator's queries (`Admin`). Times are parameters from Effect's `Clock`,
 * never the database's `now()` (but for display columns), so `TestClock` drives leases and
 * retries against a real database. Statements whose count matters return it as a row (`n`), so
 * that every client counts rows the same way.
 */

import { LeaseExpired } from "./Errors.js"
import type { ClaimedEvent, StoredEvent } from "./OutboxEvent.js"

/** A statement the worker runs often: prepared once per connection under `name` when it can be. */
export interface Statement {
  readonly name: string
  readonly text: string
}

// ---------------------------------------------------------------------------------------------
// Producer
// ---------------------------------------------------------------------------------------------

// `created_at` is the producer's Effect Clock, as every other time the library writes: under
// TestClock an event's age and its journal timings are then in one clock.
export const insertOne = `INSERT INTO sync_outbox (resource_type, action, resource_id, ordering_key, payload, coalesce, created_at)
VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7) RETURNING id::text AS id`

export const insertMany = `INSERT INTO sync_outbox (resource_type, action, resource_id, ordering_key, payload, coalesce, created_at)
SELECT t.*, $7::timestamptz FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::jsonb[], $6::boolean[]) AS t
RETURNING id::text AS id`

// ---------------------------------------------------------------------------------------------
// Lease protocol
// ---------------------------------------------------------------------------------------------

/**
 * The worker's completions, failures and releases may commit without waiting for their WAL to
 * reach disk: `$n` is `'off'` for that, or NULL to keep the session's setting. Losing the last
 * of those to a crash only repeats work: the row comes back still leased, and is applied again
 * once the lease expires. Leases (`claim`, `renew`) always wait: a lease a crash undid would let
 * another worker take a key whose event is still being applied. Producers' commits, the events
 * themselves, are untouched. The setting is transaction-local, so a pool shared with the
 * application's own transactions keeps its own.
 */
const commitMode = (n: number) => `(SELECT set_config('synchronous_commit', coalesce($${n}::text, current_setting('synchronous_commit')), true))`

/**
 * A lease that ran out with no outcome recorded (see `abandonedBy`) on a row whose attempt before
 * was lost the same way: it ran alone then (see `isolateSuspects`), so it is what ended that worker.
 */
const abandonedAgain = (row: string) => `(${abandonedBy(row)} IS NOT NULL AND coalesce(starts_with(${row}.last_error, 'LeaseExpired: '), false))`

/** `LeaseExpired`'s message, built in SQL around an owner expression (the claim records it). */
const leaseExpiredMessage = (owner: string) => {
  const [before, after] = new LeaseExpired({ owner: "\u0000" }).message.split("\u0000")
  return `'${before}' || ${owner} || '${after}'`
}

/**
 * The owner of a lease on `row` that ran out with no outcome recorded, else NULL (see `claim`).
 * Not the claiming worker's own: it is alive, and only failed to write that outcome (Postgres was
 * away for half a lease), which may well have been "applied".
 */
const abandonedBy = (row: string) =>
  `CASE WHEN ${row}.lease_owner IS NOT NULL AND ${row}.lease_owner <> $1 AND ${row}.lease_expires_at <= $2
    AND ${row}.next_retry_at < ${row}.lease_expires_at THEN ${row}.lease_owner END`

/**
 * The claim, in one statement. `picked`: due, unleased rows in id order, skipping keys with a live
 * lease (and, for non-coalescing types, keys with an older pending row), locked with SKIP LOCKED.
 * `claimable`: `sync_outbox_claim_keys` takes an advisory transaction lock per picked key, then
 * looks again, with one fresh snapshot for them all, for a live lease on each. Every lease is
 * written under its key's lock, so a lease committed by another worker after this statement began
 * (which the statement's own snapshot cannot see) is seen there: two claims never hold one key.
 * Then the lease is written on the picked rows and, for coalescing keys, on every pending
 * coalescing row of the key that no pending non-coalescing one precedes. `successor`: another
 * pending row of its key waits behind this one (and is not covered by it), so the worker claims
 * that one as soon as this one is done rather than on the next poll.
 *
 * A lease that ran out with no outcome recorded was an attempt all the same: its worker stopped,
 * crashed or lost Postgres while applying the event (a handler that ends the process does this
 * to every worker that takes it). The claim counts it (`retry_count`, `last_error`, a history row
 * tagged `LeaseExpired`) and returns the lost owner as `abandoned_by` (and `abandoned_again` when
 * its attempt before was lost too), so such an event ends as a dead letter instead of a crash loop; `last_attempt_lost` says the last recorded attempt was
 * one of those (the worker runs such events alone: see `isolateSuspects`). A lease kept after a
 * recorded timeout is not one: its retry is due no earlier than its end (`fail`), while a claimed
 * row was due before its lease began.
 *
 * $1 owner, $2 now, $3 lease end, $4 batch size.
 */
export const claim: Statement = {
  name: "sync_outbox_claim",
  text: `
WITH picked AS MATERIALIZED (
  SELECT c.id, c.ordering_key, c.coalesce, ${abandonedBy("c")} AS abandoned_by, ${abandonedAgain("c")} AS abandoned_again
  FROM sync_outbox c
  WHERE c.status = 'pending'
    AND c.next_retry_at <= $2
    AND (c.lease_expires_at IS NULL OR c.lease_expires_at <= $2)
    -- One probe of the key's pending rows for both reasons to wait: a live lease on the key, or
    -- an older pending row of it, unless both are coalescing (a newer coalescing event covers an
    -- older one; nothing covers a non-coalescing one, or jumps over it).
    AND NOT EXISTS (
      SELECT 1 FROM sync_outbox l
      WHERE l.ordering_key = c.ordering_key AND l.status = 'pending' AND l.id <> c.id
        AND (l.lease_expires_at > $2 OR (l.id < c.id AND NOT (c.coalesce AND l.coalesce))))
  ORDER BY c.id
  LIMIT $4
  FOR UPDATE OF c SKIP LOCKED
), candidates AS MATERIALIZED (
  SELECT ARRAY(SELECT DISTINCT ordering_key FROM picked) AS ordering_keys
), claimable AS MATERIALIZED (
  SELECT keys AS ordering_keys, cardinality(keys) = (SELECT cardinality(ordering_keys) FROM candidates) AS all_keys
  FROM sync_outbox_claim_keys((SELECT ordering_keys FROM candidates), $2) AS keys
), chosen AS MATERIALIZED (
  SELECT p.id, p.ordering_key, p.coalesce, p.abandoned_by, p.abandoned_again FROM picked p
  WHERE (SELECT all_keys FROM claimable) OR p.ordering_key = ANY ((SELECT ordering_keys FROM claimable)::text[])
), targets AS MATERIALIZED (
  -- By id rather than by key: a join on the key alone made the generic plan scan the table.
  -- A coalescing handler reads current state after this claim, so it covers every coalescing
  -- event of the key committed before now: lease them all, however far past the batch limit,
  -- but none behind a pending non-coalescing event of the key (that one comes first).
  -- Siblings another claim holds locked (it picked them, then lost the key to us) are skipped,
  -- not waited for: two claims waiting on each other's rows would deadlock.
  SELECT id, ordering_key, coalesce, abandoned_by, abandoned_again FROM chosen
  UNION
  SELECT id, ordering_key, coalesce, abandoned_by, abandoned_again FROM (
    SELECT o.id, o.ordering_key, o.coalesce, ${abandonedBy("o")} AS abandoned_by, ${abandonedAgain("o")} AS abandoned_again
    FROM sync_outbox o
    WHERE o.ordering_key = ANY (ARRAY(SELECT DISTINCT ordering_key FROM chosen WHERE coalesce))
      AND o.status = 'pending' AND o.coalesce AND (o.lease_expires_at IS NULL OR o.lease_expires_at <= $2)
      AND NOT EXISTS (
        SELECT 1 FROM sync_outbox x
        WHERE x.ordering_key = o.ordering_key AND x.status = 'pending' AND NOT x.coalesce AND x.id < o.id)
    FOR UPDATE OF o SKIP LOCKED
  ) siblings
), skipped AS MATERIALIZED (
  -- A key one of whose siblings was skipped, older than an event leased here, is left alone this
  -- time: the skipped one stays pending, unleased, and a later claim would apply it after the
  -- newer ones (an older payload over a newer one). Every pending, unleased coalescing event of
  -- the key older than its newest target is a target unless it was skipped: one count per key.
  -- The key goes to the next claim (another worker's, or this one's next look), whole.
  SELECT ARRAY(
    SELECT k.ordering_key
    FROM (SELECT ordering_key, max(id) AS newest, count(*) - 1 AS older FROM targets WHERE coalesce GROUP BY ordering_key) k
    WHERE (
      SELECT count(*) FROM sync_outbox s
      WHERE s.ordering_key = k.ordering_key AND s.status = 'pending' AND s.coalesce AND s.id < k.newest
        AND (s.lease_expires_at IS NULL OR s.lease_expires_at <= $2)
    ) > k.older
  ) AS ordering_keys
), abandoned AS MATERIALIZED (
  -- Usually empty. Parallel arrays: RETURNING sees the new row, and looks its old owner up here.
  SELECT ARRAY(SELECT id FROM targets WHERE abandoned_by IS NOT NULL) AS ids,
    ARRAY(SELECT abandoned_by FROM targets WHERE abandoned_by IS NOT NULL) AS owners,
    ARRAY(SELECT id FROM targets WHERE abandoned_again) AS again
), claimed AS (
  UPDATE sync_outbox o
  SET lease_owner = $1, lease_expires_at = $3,
    retry_count = o.retry_count + CASE WHEN ${abandonedBy("o")} IS NULL THEN 0 ELSE 1 END,
    last_error = CASE WHEN ${abandonedBy("o")} IS NULL THEN o.last_error ELSE 'LeaseExpired: ' || ${leaseExpiredMessage("o.lease_owner")} END
  -- An array of ids, not a join: probed in the primary key whatever the plan's estimates.
  WHERE o.id = ANY (ARRAY(SELECT id FROM targets WHERE NOT (ordering_key = ANY ((SELECT ordering_keys FROM skipped)::text[]))))
    AND o.status = 'pending'
    AND (o.lease_expires_at IS NULL OR o.lease_expires_at <= $2)
  RETURNING o.id, o.resource_type, o.action, o.resource_id, o.ordering_key,
    o.payload, o.coalesce, o.retry_count, o.created_at, o.attempts_before, o.last_error,
    (SELECT a.owners[array_position(a.ids, o.id)] FROM abandoned a) AS abandoned_by,
    o.id = ANY ((SELECT again FROM abandoned)::bigint[]) AS abandoned_again,
    EXISTS (
      SELECT 1 FROM sync_outbox n
      WHERE n.ordering_key = o.ordering_key AND n.status = 'pending' AND n.id > o.id
        AND NOT (o.coalesce AND n.coalesce)) AS successor
), lost AS (
  INSERT INTO sync_outbox_failures (outbox_id, attempt, error_tag, message, failed_at)
  SELECT id, attempts_before + retry_count, 'LeaseExpired', ${leaseExpiredMessage("abandoned_by")}, $2
  FROM claimed WHERE abandoned_by IS NOT NULL
  ON CONFLICT (outbox_id, attempt) DO NOTHING
)
SELECT id::text AS id, resource_type, action, resource_id::float8 AS resource_id, ordering_key,
  payload, coalesce, retry_count, created_at, abandoned_by, abandoned_again, successor,
  coalesce(starts_with(last_error, 'LeaseExpired: '), false) AS last_attempt_lost
FROM claimed`
}

/** Delete completed rows, fenced on the lease owner. $1 owner, $2 ids, $3 commit mode. */
export const complete: Statement = {
  name: "sync_outbox_complete",
  text: `WITH done AS (
  DELETE FROM sync_outbox WHERE id = ANY($2::bigint[]) AND lease_owner = $1 RETURNING 1
)
SELECT count(*)::int AS n FROM done, ${commitMode(3)} AS commit_mode(setting)`
}

/**
 * The same completion, journaled in the same statement (see migrations/outbox/0005_journal.sql),
 * so there is never a journal row for a deletion that did not happen: `$3` is the worker's
 * Clock, `$4`/`$5` link coalesced events to the event that covered them, `$6` lists those whose
 * covering event had not applied (it failed, or is held). $7 commit mode.
 */
export const completeJournaled: Statement = {
  name: "sync_outbox_complete_journaled",
  text: `
WITH done AS (
  DELETE FROM sync_outbox o WHERE o.id = ANY($2::bigint[]) AND o.lease_owner = $1
  RETURNING o.id, o.resource_type, o.action, o.resource_id, o.ordering_key, o.payload, o.coalesce, o.created_at, o.retry_count,
    o.replay_of, o.attempts_before
), links AS (
  SELECT * FROM unnest($4::bigint[], $5::bigint[]) AS t(id, superseded_by)
), journaled AS (
  INSERT INTO sync_outbox_journal (id, resource_type, action, resource_id, ordering_key, payload, coalesce, created_at,
    applied_at, attempts, worker, superseded_by, covering_applied, replay_of)
  SELECT d.id, d.resource_type, d.action, d.resource_id, d.ordering_key, d.payload, d.coalesce, d.created_at,
    -- Every handler run: those before a requeue (attempts_before) count too, as in the failure history.
    $3, d.attempts_before + d.retry_count + CASE WHEN l.superseded_by IS NULL THEN 1 ELSE 0 END, $1, l.superseded_by,
    CASE WHEN l.superseded_by IS NULL THEN NULL ELSE NOT (d.id = ANY($6::bigint[])) END, d.replay_of
  FROM done d LEFT JOIN links l ON l.id = d.id
)
SELECT count(*)::int AS n FROM done, ${commitMode(7)} AS commit_mode(setting)`
}

/** Extend this owner's leases (committed durably, as every lease). $1 owner, $2 ids, $3 new end. */
export const renew: Statement = {
  name: "sync_outbox_renew",
  text: `WITH renewed AS (
  UPDATE sync_outbox SET lease_expires_at = $3
  WHERE id = ANY($2::bigint[]) AND lease_owner = $1 AND status = 'pending'
  RETURNING 1
)
SELECT count(*)::int AS n FROM renewed`
}

/** Hand rows back unattempted. $1 owner, $2 ids, $3 commit mode. */
export const release: Statement = {
  name: "sync_outbox_release",
  text: `WITH released AS (
  UPDATE sync_outbox SET lease_owner = NULL, lease_expires_at = NULL
  WHERE id = ANY($2::bigint[]) AND lease_owner = $1
  RETURNING 1
)
SELECT count(*)::int AS n FROM released, ${commitMode(3)} AS commit_mode(setting)`
}

/**
 * Record failed attempts (history row each; dead, or due again at `next_retry_at`), fenced on
 * the lease owner. $1 owner, $2..$7 and $9 one array entry per failure, $8 now, $10 commit mode.
 */
export const fail: Statement = {
  name: "sync_outbox_fail",
  text: `
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
  RETURNING o.id, o.attempts_before + i.attempt AS attempt, i.tag, i.message
), history AS (
  INSERT INTO sync_outbox_failures (outbox_id, attempt, error_tag, message, failed_at)
  SELECT id, attempt, tag, message, $8 FROM updated
  ON CONFLICT (outbox_id, attempt) DO NOTHING
)
SELECT count(*)::int AS n FROM updated, ${commitMode(10)} AS commit_mode(setting)`
}

/**
 * The earliest scheduled retry (one already due counts too: it may have fallen due while the
 * worker was busy). Lease expiry is not looked up: there is no index on it, so that a claim stays
 * a HOT update; the poll finds expired leases, at most one interval late.
 */
export const nextWake: Statement = {
  name: "sync_outbox_next_wake",
  text: `SELECT min(next_retry_at) AS at FROM sync_outbox
WHERE status = 'pending' AND next_retry_at > '-infinity' AND lease_owner IS NULL`
}

/** Register or refresh a worker's row (the database's clock: it is for display). */
export const heartbeat: Statement = {
  name: "sync_outbox_heartbeat",
  text: `INSERT INTO sync_outbox_workers (owner, hostname, pid, breaker, listener, loop, loop_error, retention_ms)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (owner) DO UPDATE SET heartbeat_at = now(), breaker = EXCLUDED.breaker, listener = EXCLUDED.listener,
  loop = EXCLUDED.loop, loop_error = EXCLUDED.loop_error, retention_ms = EXCLUDED.retention_ms`
}

// The table has grown to four times the pages its statistics describe, and past 1 MB (some 3,000
// small events at the outbox's fillfactor). Read off the file's size: a commit's row counts reach
// the statistics views up to seconds later (each backend reports them at most once a second).
// Or, while the statistics describe a small table (under 2,500 rows), more than four times as many
// rows are pending as they count (and over 1,000), counted up to that bound (10,001 rows at most):
// the file does not grow when a burst fills the room an earlier one left (a table emptied and
// analyzed keeps its pages, with no rows in them, until a VACUUM can truncate it, which a dead
// letter or any row near its end prevents).
const grown = `(pg_relation_size(c.oid) / current_setting('block_size')::bigint > greatest(128, 4 * c.relpages::bigint)
  OR (c.reltuples < 2500 AND (SELECT count(*) FROM (SELECT FROM sync_outbox p WHERE p.status = 'pending'
    LIMIT greatest(1000, 4 * c.reltuples)::bigint + 1) n) > greatest(1000, 4 * c.reltuples)))`

/**
 * Whether the outbox changed by more than its whole size (and at least 1,000 rows) since its
 * statistics were taken, or grew well past them: a brand-new database, or a burst into a table
 * analyzed while empty.
 */
export const statisticsStale: Statement = {
  name: "sync_outbox_statistics_stale",
  text: `SELECT ${grown} OR coalesce(s.n_mod_since_analyze > greatest(1000, c.reltuples), false) AS stale
FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE c.oid = 'sync_outbox'::regclass`
}

/**
 * Whether the outbox grew well past its statistics, from its size or a bounded count of its
 * pending rows, not from the statistics views: true at once after a burst. Rarely true of a
 * small, busy table, whose rows change faster than its size: the file must have grown fourfold
 * since the last ANALYZE, or the pending rows passed 1,000 and four times its count.
 */
export const statisticsOutgrown: Statement = {
  name: "sync_outbox_statistics_outgrown",
  // Only for a role that may ANALYZE it (the table's owner, the database's, a superuser): for
  // another, ANALYZE is skipped with a warning, the table would look outgrown at every look, and
  // the warning would fill the server's log four times a second. The check beside the claims
  // still tries, at most once per poll interval: the warning tells the operator.
  text: `SELECT (pg_has_role(c.relowner, 'USAGE')
    OR pg_has_role((SELECT d.datdba FROM pg_database d WHERE d.datname = current_database()), 'USAGE'))
  AND ${grown} AS stale
FROM pg_class c WHERE c.oid = 'sync_outbox'::regclass`
}

/** Skipped, not waited for, while autovacuum (or another worker) is at it. */
export const analyze: Statement = {
  name: "sync_outbox_analyze",
  text: `ANALYZE (SKIP_LOCKED) sync_outbox`
}

export const unregister: Statement = {
  name: "sync_outbox_unregister",
  text: `DELETE FROM sync_outbox_workers WHERE owner = $1`
}

// ---------------------------------------------------------------------------------------------
// Operator
// ---------------------------------------------------------------------------------------------

/** $1 now. */
export const stats = `SELECT resource_type,
  count(*) FILTER (WHERE status = 'pending')::int AS pending,
  count(*) FILTER (WHERE status = 'pending' AND lease_expires_at > $1)::int AS in_flight,
  count(*) FILTER (WHERE status = 'dead')::int AS dead,
  count(*) FILTER (WHERE status = 'pending' AND next_retry_at > $1)::int AS scheduled,
  min(created_at) FILTER (WHERE status = 'pending') AS oldest
FROM sync_outbox GROUP BY resource_type ORDER BY resource_type COLLATE "C"`

export const storedColumns = `id::text AS id, resource_type, action, resource_id::float8 AS resource_id, ordering_key, payload,
  coalesce, retry_count, created_at, status, last_error, next_retry_at, lease_owner, lease_expires_at`

/** An outbox row as `claim` returns it and `storedColumns` select it. */
export interface EventRow {
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

export interface StoredRow extends EventRow {
  readonly status: "pending" | "dead"
  readonly last_error: string | null
  readonly next_retry_at: Date | number
  readonly lease_owner: string | null
  readonly lease_expires_at: Date | null
}

export const toClaimedEvent = (row: EventRow): ClaimedEvent => ({
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

export const toStoredEvent = (row: StoredRow): StoredEvent => ({
  ...toClaimedEvent(row),
  status: row.status,
  lastError: row.last_error,
  // pg-types reads '-infinity' as the number -Infinity: "due at once".
  nextRetryAt: row.next_retry_at instanceof Date ? row.next_retry_at : null,
  leaseOwner: row.lease_owner,
  leaseExpiresAt: row.lease_expires_at
})

/** $1 resource type or null, $2 limit. Oldest first: by the bigint, not the text alias ("10" < "9"). */
export const listDead = `SELECT ${storedColumns} FROM sync_outbox
WHERE status = 'dead' AND ($1::text IS NULL OR resource_type = $1)
ORDER BY sync_outbox.id LIMIT $2`

/** $1 id. */
export const showEvent = `SELECT ${storedColumns} FROM sync_outbox WHERE id = $1::bigint`

/** $1 id. */
export const showFailures = `SELECT attempt, error_tag, message, failed_at FROM sync_outbox_failures
WHERE outbox_id = $1::bigint ORDER BY attempt`

/** Dead letters back to pending, due at once, with a fresh attempt budget. */
export const requeue = (where: string) =>
  `WITH requeued AS (
  UPDATE sync_outbox SET status = 'pending', attempts_before = attempts_before + retry_count, retry_count = 0,
    next_retry_at = '-infinity',
    lease_owner = NULL, lease_expires_at = NULL
  WHERE ${where}
  RETURNING 1
)
SELECT count(*)::int AS n FROM requeued`

export const purge = (where: string) =>
  `WITH purged AS (DELETE FROM sync_outbox WHERE ${where} RETURNING 1)
SELECT count(*)::int AS n FROM purged`

/** Wake the workers as an insert would (the channel the trigger uses). */
export const notify = `SELECT pg_notify(coalesce(nullif(current_setting('sync_outbox.channel', true), ''), 'sync_outbox'), '')`

/** $1 staleness in ms. */
export const workers = `SELECT owner, hostname, pid, breaker, listener, loop, loop_error, retention_ms::float8 AS retention_ms, started_at,
  (extract(epoch FROM now() - heartbeat_at) * 1000)::float8 AS heartbeat_age_ms
FROM sync_outbox_workers
WHERE heartbeat_at > now() - make_interval(secs => $1::float8 / 1000)
ORDER BY started_at`
