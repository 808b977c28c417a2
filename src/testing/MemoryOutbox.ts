/**
 * The outbox in memory: the tables of migrations/outbox (`sync_outbox`, `sync_outbox_failures`,
 * `sync_outbox_workers`) as plain JavaScript, and the statements of `Statements` that the worker,
 * the operator and the producer run on them, each rewritten as the same rule over those rows.
 * The real `Worker` runs on it unchanged (it only knows `Leases`), so a user's test pays neither
 * a database start nor a statement round trip: the store's work is a few milliseconds a test.
 *
 * What it is not: a database. Its `SqlClient` understands the library's own inserts (`enqueue`,
 * `enqueueMany`) and transactions (BEGIN, COMMIT, ROLLBACK, savepoints) and refuses every other
 * statement with a `SqlError` that says so; code that runs its own SQL is tested on PGlite
 * (`OutboxTest.layer`). It keeps no journal (the kit runs with a retention of 0). The rules are
 * held to the SQL's by test/Semantics.test.ts, which runs every specification on both.
 *
 * Time is Effect's `Clock`, read by each call as the SQL version reads it for its parameters.
 */
import * as Reactivity from "@effect/experimental/Reactivity"
import { SqlClient, SqlError } from "@effect/sql"
import type { SqlConnection } from "@effect/sql"
import { PgClient } from "@effect/sql-pg"
import { Clock, Context, Effect, Stream } from "effect"
import type { AdminShape, DeadSelector, LiveWorker, Stats } from "../Admin.js"
import { EventNotFound, FailureRecord, LeaseExpired } from "../Errors.js"
import type { Claimed, Failure, LeasesShape, WorkerRow } from "../Leases.js"
import * as Statements from "../Statements.js"

// ---------------------------------------------------------------------------------------------
// Rows
// ---------------------------------------------------------------------------------------------

/** A `sync_outbox` row. Times in epoch ms; `next_retry_at` -Infinity is '-infinity' (due at once). */
interface Row {
  readonly id: bigint
  readonly resourceType: string
  readonly action: string
  readonly resourceId: bigint | null
  readonly orderingKey: string
  /** As jsonb keeps it (normalised text), parsed afresh on every read as a driver would. */
  payload: string | null
  readonly coalesce: boolean
  status: "pending" | "dead"
  retryCount: number
  attemptsBefore: number
  lastError: string | null
  nextRetryAt: number
  leaseOwner: string | null
  leaseExpiresAt: number | null
  readonly createdAt: number
}

interface FailureRow {
  readonly attempt: number
  readonly tag: string
  readonly message: string
  readonly failedAt: number
}

interface WorkerEntry {
  readonly row: WorkerRow
  readonly startedAt: number
  readonly heartbeatAt: number
}

/** An outbox row as the test driver compares it from one step to the next (`StoredRow` less two columns). */
export type SnapshotRow = Omit<Statements.StoredRow, "created_at" | "lease_owner">

/** What the test driver reads of the outbox, whichever store holds it. */
export interface OutboxRows {
  /** Every row, oldest first. */
  readonly snapshot: Effect.Effect<ReadonlyArray<SnapshotRow>, SqlError.SqlError>
  /** Ids of the rows `owner` holds leased, oldest first. */
  readonly leasedBy: (owner: string) => Effect.Effect<ReadonlyArray<string>, SqlError.SqlError>
  /** Ids of the rows with this status, oldest first. */
  readonly idsWhere: (status: "pending" | "dead") => Effect.Effect<ReadonlyArray<string>, SqlError.SqlError>
}

/** An event about to be inserted, its columns as the insert statements bind them. */
interface NewEvent {
  readonly resourceType: unknown
  readonly action: unknown
  readonly resourceId: unknown
  readonly orderingKey: unknown
  readonly payload: unknown
  readonly coalesce: unknown
  readonly createdAt: unknown
}

export interface MemoryOutboxShape {
  /** The worker's lease protocol over these rows. */
  readonly leases: LeasesShape
  /** The operator's queries over these rows. */
  readonly admin: AdminShape
  /** What the test driver reads. */
  readonly rows: OutboxRows
  /** A `SqlClient` that runs the library's inserts (and transactions) here and refuses any other SQL. */
  readonly sql: Effect.Effect<SqlClient.SqlClient>
}

// ---------------------------------------------------------------------------------------------
// Postgres's rules for the values it stores, where they can differ from JavaScript's
// ---------------------------------------------------------------------------------------------

const maxBigint = 9_223_372_036_854_775_807n

const sqlError = (message: string, cause: unknown = null) => new SqlError.SqlError({ cause, message })

/** A value bound to a text column: what Postgres refuses there, refused here. */
const text = (value: unknown, column: string, notNull: boolean): string | null => {
  if (value === null || value === undefined) {
    if (notNull) throw sqlError(`null value in column "${column}" of relation "sync_outbox" violates not-null constraint`)
    return null
  }
  const s = typeof value === "string" ? value : String(value)
  if (s.includes("\u0000")) throw sqlError(`invalid byte sequence for encoding "UTF8": 0x00 (column "${column}")`)
  return s
}

const bigintParam = (value: unknown, column: string): bigint | null => {
  if (value === null || value === undefined) return null
  let n: bigint
  try {
    if (typeof value === "number" && !Number.isInteger(value)) throw new Error()
    n = BigInt(typeof value === "string" ? value.trim() : (value as number | bigint))
  } catch {
    throw sqlError(`invalid input syntax for type bigint: "${String(value)}" (column "${column}")`)
  }
  if (n > maxBigint || n < -maxBigint - 1n) throw sqlError(`value "${String(value)}" is out of range for type bigint`)
  return n
}

const booleanParam = (value: unknown, column: string): boolean => {
  if (typeof value === "boolean") return value
  if (value === null || value === undefined) {
    throw sqlError(`null value in column "${column}" of relation "sync_outbox" violates not-null constraint`)
  }
  throw sqlError(`invalid input syntax for type boolean: "${String(value)}"`)
}

const timestampParam = (value: unknown, column: string): number => {
  const ms = value instanceof Date ? value.getTime() : typeof value === "string" || typeof value === "number" ? new Date(value).getTime() : NaN
  if (!Number.isFinite(ms)) throw sqlError(`invalid input syntax for type timestamp with time zone: "${String(value)}" (column "${column}")`)
  return ms
}

/** Object keys in jsonb's order: shorter first, then by their UTF-8 bytes. */
const jsonbKeyOrder = (a: string, b: string) => {
  const ab = Buffer.from(a)
  const bb = Buffer.from(b)
  return ab.length - bb.length || Buffer.compare(ab, bb)
}

const normalise = (value: unknown): unknown => {
  if (Array.isArray(value)) return value.map(normalise)
  if (typeof value === "object" && value !== null) {
    const out: Record<string, unknown> = {}
    for (const key of Object.keys(value).sort(jsonbKeyOrder)) out[key] = normalise((value as Record<string, unknown>)[key])
    return out
  }
  return value
}

/** A parameter bound as `jsonb` (JSON text, or null): stored as jsonb would give it back. */
const jsonbParam = (value: unknown): string | null => {
  if (value === null || value === undefined) return null
  let parsed: unknown
  try {
    parsed = JSON.parse(typeof value === "string" ? value : JSON.stringify(value))
  } catch (cause) {
    throw sqlError(`invalid input syntax for type json`, cause)
  }
  const stored = JSON.stringify(normalise(parsed))
  if (/\\u0000/.test(stored)) throw sqlError(`unsupported Unicode escape sequence: \\u0000 cannot be converted to text`)
  return stored
}

const idRe = /^[1-9][0-9]{0,18}$/

/** A `$n::bigint` id as `Admin` passes it: a malformed one is not there; one past int8 fails as Postgres does. */
const lookupId = (id: string): bigint | "malformed" | "out of range" => {
  if (!idRe.test(id)) return "malformed"
  const n = BigInt(id)
  return n > maxBigint ? "out of range" : n
}

// ---------------------------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------------------------

/** A fresh, empty outbox (ids start at 1). */
export const make: Effect.Effect<MemoryOutboxShape> = Effect.sync(() => {
  // `sync_outbox`, kept in id order (a transaction committed late can bring a lower id), with an index on id.
  const rows: Array<Row> = []
  const byKey = new Map<string, Row>()
  const failures = new Map<string, Array<FailureRow>>()
  const workers = new Map<string, WorkerEntry>()
  let sequence = 0n

  const find = (id: bigint | string) => byKey.get(String(id))

  const insertRow = (row: Row) => {
    byKey.set(String(row.id), row)
    const last = rows[rows.length - 1]
    if (last === undefined || last.id < row.id) {
      rows.push(row)
      return
    }
    let lo = 0
    let hi = rows.length
    while (lo < hi) {
      const mid = (lo + hi) >> 1
      if (rows[mid]!.id < row.id) lo = mid + 1
      else hi = mid
    }
    rows.splice(lo, 0, row)
  }

  /** DELETE, with the failure history leaving with its rows (migrations/outbox/0008_failure_cleanup.sql). */
  const deleteWhere = (doomed: (row: Row) => boolean): number => {
    let n = 0
    for (let i = rows.length - 1; i >= 0; i--) {
      const row = rows[i]!
      if (!doomed(row)) continue
      rows.splice(i, 1)
      byKey.delete(String(row.id))
      failures.delete(String(row.id))
      n++
    }
    return n
  }

  /**
   * The insert statements' rows, checked as the table's constraints check them. Ids are taken
   * from the sequence now, as `nextval` takes them (a rolled-back insert leaves a gap); the rows
   * become visible when `commit` adds them.
   */
  const prepareInsert = (events: ReadonlyArray<NewEvent>): Array<Row> =>
    events.map((e) => {
      const resourceType = text(e.resourceType, "resource_type", true)!
      const action = text(e.action, "action", true)!
      const resourceId = bigintParam(e.resourceId, "resource_id")
      const orderingKey = text(e.orderingKey, "ordering_key", true)!
      for (const [value, constraint] of [[resourceType, "resource_type"], [action, "action"]] as const) {
        if (value === "") throw sqlError(`new row for relation "sync_outbox" violates check constraint "sync_outbox_${constraint}_check"`)
      }
      if (resourceId !== null && resourceId <= 0n) {
        throw sqlError(`new row for relation "sync_outbox" violates check constraint "sync_outbox_resource_id_check"`)
      }
      const row: Row = {
        id: 0n,
        resourceType,
        action,
        resourceId,
        orderingKey,
        payload: jsonbParam(e.payload),
        coalesce: booleanParam(e.coalesce, "coalesce"),
        status: "pending",
        retryCount: 0,
        attemptsBefore: 0,
        lastError: null,
        nextRetryAt: Number.NEGATIVE_INFINITY,
        leaseOwner: null,
        leaseExpiresAt: null,
        createdAt: timestampParam(e.createdAt, "created_at")
      }
      return row
    }).map((row) => ({ ...row, id: ++sequence }))

  const commit = (inserted: ReadonlyArray<Row>) => {
    for (const row of inserted) insertRow(row)
  }

  // ---- reading rows as the statements return them -------------------------------------------

  const payloadOf = (row: Row): unknown => (row.payload === null ? null : JSON.parse(row.payload))

  const eventRow = (row: Row): Statements.EventRow => ({
    id: String(row.id),
    resource_type: row.resourceType,
    action: row.action,
    // `resource_id::float8`, as the statements select it.
    resource_id: row.resourceId === null ? null : Number(row.resourceId),
    ordering_key: row.orderingKey,
    payload: payloadOf(row),
    coalesce: row.coalesce,
    retry_count: row.retryCount,
    created_at: new Date(row.createdAt)
  })

  const storedRow = (row: Row): Statements.StoredRow => ({
    ...eventRow(row),
    status: row.status,
    last_error: row.lastError,
    // pg-types reads '-infinity' as the number -Infinity.
    next_retry_at: Number.isFinite(row.nextRetryAt) ? new Date(row.nextRetryAt) : row.nextRetryAt,
    lease_owner: row.leaseOwner,
    lease_expires_at: row.leaseExpiresAt === null ? null : new Date(row.leaseExpiresAt)
  })

  const now = Clock.currentTimeMillis

  // ---- Leases ---------------------------------------------------------------------------------

  // Statements.claim, rule by rule.
  const claim = (owner: string, leaseMs: number, limit: number) =>
    Effect.flatMap(now, (at) =>
      Effect.try({
        try: (): ReadonlyArray<Claimed> => {
          if (!Number.isInteger(limit) || limit < 0) throw sqlError(`LIMIT must be a non-negative integer, got ${limit}`)
          const leaseEnd = at + leaseMs
          if (!Number.isFinite(leaseEnd)) throw sqlError(`timestamp out of range`)
          // Per key, over pending rows: is one leased live; the oldest; the oldest non-coalescing.
          const liveLease = new Set<string>()
          const oldest = new Map<string, bigint>()
          const oldestPlain = new Map<string, bigint>()
          for (const row of rows) {
            if (row.status !== "pending") continue
            if (row.leaseExpiresAt !== null && row.leaseExpiresAt > at) liveLease.add(row.orderingKey)
            if (!oldest.has(row.orderingKey)) oldest.set(row.orderingKey, row.id)
            if (!row.coalesce && !oldestPlain.has(row.orderingKey)) oldestPlain.set(row.orderingKey, row.id)
          }
          const leaseFree = (row: Row) => row.leaseExpiresAt === null || row.leaseExpiresAt <= at
          /** An older pending row of its key comes first, unless both coalesce (the newer covers the older). */
          const waitsBehind = (row: Row) => {
            const older = (row.coalesce ? oldestPlain : oldest).get(row.orderingKey)
            return older !== undefined && older < row.id
          }
          // `picked`: due, unleased, its key not leased, nothing pending ahead of it on its key.
          const picked = new Set<Row>()
          for (const row of rows) {
            if (picked.size >= limit) break
            if (
              row.status === "pending" && row.nextRetryAt <= at && leaseFree(row) && !liveLease.has(row.orderingKey) &&
              !waitsBehind(row)
            ) picked.add(row)
          }
          // `chosen` keys, coalescing if any of its picked rows is.
          const keys = new Map<string, boolean>()
          for (const row of picked) keys.set(row.orderingKey, (keys.get(row.orderingKey) ?? false) || row.coalesce)
          // The UPDATE: the picked rows, and every leasable pending coalescing sibling of a
          // coalescing key that no pending non-coalescing row of the key is ahead of.
          const leased: Array<Row> = []
          for (const row of rows) {
            const coalescingKey = keys.get(row.orderingKey)
            if (coalescingKey === undefined || row.status !== "pending" || !leaseFree(row)) continue
            if (picked.has(row) || (coalescingKey && row.coalesce && !waitsBehind(row))) leased.push(row)
          }
          // `successor`: a pending row of the key behind it that it does not cover.
          const newest = new Map<string, bigint>()
          const newestPlain = new Map<string, bigint>()
          for (const row of rows) {
            if (row.status !== "pending") continue
            newest.set(row.orderingKey, row.id)
            if (!row.coalesce) newestPlain.set(row.orderingKey, row.id)
          }
          // A lease that ran out with no outcome recorded counts as a failed attempt
          // (`LeaseExpired`), unless the claiming worker held it (it is alive); one kept after a
          // recorded timeout does not (its retry is due no earlier than its end).
          const abandonedBy = new Map<Row, string>()
          const abandonedAgain = new Set<Row>()
          for (const row of leased) {
            if (row.leaseOwner !== null && row.leaseOwner !== owner && row.leaseExpiresAt !== null && row.nextRetryAt < row.leaseExpiresAt) {
              abandonedBy.set(row, row.leaseOwner)
              if (row.lastError?.startsWith("LeaseExpired: ") === true) abandonedAgain.add(row)
              const message = new LeaseExpired({ owner: row.leaseOwner }).message
              row.retryCount++
              row.lastError = `LeaseExpired: ${message}`
              const key = String(row.id)
              const history = failures.get(key) ?? []
              const attempt = row.attemptsBefore + row.retryCount
              if (!history.some((h) => h.attempt === attempt)) {
                history.push({ attempt, tag: "LeaseExpired", message, failedAt: at })
                history.sort((a, b) => a.attempt - b.attempt)
                failures.set(key, history)
              }
            }
            row.leaseOwner = owner
            row.leaseExpiresAt = leaseEnd
          }
          return leased.map((row) => ({
            ...Statements.toClaimedEvent(eventRow(row)),
            successor: ((row.coalesce ? newestPlain : newest).get(row.orderingKey) ?? -1n) > row.id,
            abandonedBy: abandonedBy.get(row) ?? null,
            abandonedAgain: abandonedAgain.has(row),
            lastAttemptLost: row.lastError?.startsWith("LeaseExpired: ") === true
          }))
        },
        catch: (error) => (error instanceof SqlError.SqlError ? error : sqlError("sync-outbox claim failed", error))
      }))

  const idSet = (ids: ReadonlyArray<string>) => new Set(ids.map((id) => String(bigintParam(id, "id"))))

  /** Runs `f` as one statement: a value Postgres would refuse fails it whole, having changed nothing. */
  const statement = <A>(f: () => A): Effect.Effect<A, SqlError.SqlError> =>
    Effect.try({ try: f, catch: (error) => (error instanceof SqlError.SqlError ? error : sqlError("statement failed", error)) })

  const complete = (owner: string, ids: ReadonlyArray<string>, journal?: unknown) =>
    ids.length === 0 ? Effect.succeed(0) : journal !== undefined
      // As a database without migration 0005: the kit runs with a retention of 0, so the worker never asks.
      ? Effect.fail(sqlError("sync-outbox/testing: the in-memory outbox keeps no journal (run the worker with retention 0)"))
      : statement(() => {
        const wanted = idSet(ids)
        return deleteWhere((row) => wanted.has(String(row.id)) && row.leaseOwner === owner)
      })

  const fail = (owner: string, list: ReadonlyArray<Failure>) =>
    list.length === 0 ? Effect.void : Effect.flatMap(now, (at) =>
      statement(() => {
        // Checked before anything changes: the statement fails whole or not at all.
        const input = list.map((f) => ({
          ...f,
          key: String(bigintParam(f.id, "id")),
          lastError: `${text(f.tag, "last_error", true)}: ${text(f.message, "last_error", true)}`,
          nextRetryAt: timestampParam(f.nextRetryAt, "next_retry_at")
        }))
        const done = new Set<string>()
        for (const f of input) {
          const row = find(f.key)
          // An id listed twice is updated once (UPDATE ... FROM joins a row once).
          if (row === undefined || row.leaseOwner !== owner || done.has(f.key)) continue
          done.add(f.key)
          row.retryCount = f.attempt
          row.lastError = f.lastError
          row.status = f.dead ? "dead" : "pending"
          // A kept lease still blocks the row and its key until it expires; the retry waits for it.
          const keep = f.keepLease === true
          row.nextRetryAt = keep && row.leaseExpiresAt !== null ? Math.max(f.nextRetryAt, row.leaseExpiresAt) : f.nextRetryAt
          if (!keep) {
            row.leaseOwner = null
            row.leaseExpiresAt = null
          }
          // The history numbers attempts across requeues; a number already recorded is kept (ON CONFLICT DO NOTHING).
          const history = failures.get(f.key) ?? []
          const attempt = row.attemptsBefore + f.attempt
          if (!history.some((h) => h.attempt === attempt)) {
            history.push({ attempt, tag: f.tag, message: f.message, failedAt: at })
            history.sort((a, b) => a.attempt - b.attempt)
            failures.set(f.key, history)
          }
        }
      }))

  const release = (owner: string, ids: ReadonlyArray<string>) =>
    ids.length === 0 ? Effect.succeed(0) : statement(() => {
      let n = 0
      for (const key of idSet(ids)) {
        const row = find(key)
        if (row === undefined || row.leaseOwner !== owner) continue
        row.leaseOwner = null
        row.leaseExpiresAt = null
        n++
      }
      return n
    })

  const renew = (owner: string, ids: ReadonlyArray<string>, until: Date) =>
    ids.length === 0 ? Effect.succeed(0) : statement(() => {
      const end = timestampParam(until, "lease_expires_at")
      let n = 0
      for (const key of idSet(ids)) {
        const row = find(key)
        if (row === undefined || row.leaseOwner !== owner || row.status !== "pending") continue
        row.leaseExpiresAt = end
        n++
      }
      return n
    })

  // Statements.nextWake: the earliest scheduled retry of an unleased pending row.
  const nextWakeAt = Effect.sync(() => {
    let at: number | null = null
    for (const row of rows) {
      if (row.status !== "pending" || row.leaseOwner !== null || !Number.isFinite(row.nextRetryAt)) continue
      if (at === null || row.nextRetryAt < at) at = row.nextRetryAt
    }
    return at
  })

  const heartbeat = (worker: WorkerRow) =>
    Effect.flatMap(now, (at) =>
      Effect.sync(() => {
        const known = workers.get(worker.owner)
        workers.set(worker.owner, { row: worker, startedAt: known?.startedAt ?? at, heartbeatAt: at })
      }))

  const unregister = (owner: string) => Effect.sync(() => void workers.delete(owner))

  const leases: LeasesShape = {
    claim,
    complete,
    fail,
    release,
    renew,
    nextWakeAt,
    // No planner, no statistics.
    refreshStatistics: Effect.succeed(false),
    refreshStatisticsIfOutgrown: Effect.succeed(false),
    heartbeat,
    unregister
  }

  // ---- Admin ----------------------------------------------------------------------------------

  const stats = Effect.flatMap(now, (at) =>
    Effect.sync((): Stats => {
      const groups = new Map<string, { pending: number; inFlight: number; dead: number; scheduled: number; oldest: number | null }>()
      for (const row of rows) {
        const g = groups.get(row.resourceType) ?? { pending: 0, inFlight: 0, dead: 0, scheduled: 0, oldest: null }
        groups.set(row.resourceType, g)
        if (row.status === "dead") {
          g.dead++
          continue
        }
        g.pending++
        if (row.leaseExpiresAt !== null && row.leaseExpiresAt > at) g.inFlight++
        if (row.nextRetryAt > at) g.scheduled++
        if (g.oldest === null || row.createdAt < g.oldest) g.oldest = row.createdAt
      }
      // Byte order, as the statement's `COLLATE "C"` (the same on every server, whatever its collation).
      const types = [...groups.keys()].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)))
      const all = types.map((t) => groups.get(t)!)
      const sum = (f: (g: (typeof all)[number]) => number) => all.reduce((acc, g) => acc + f(g), 0)
      const oldest = all.reduce<number | null>((acc, g) => (g.oldest === null ? acc : acc === null ? g.oldest : Math.min(acc, g.oldest)), null)
      return {
        pending: sum((g) => g.pending),
        inFlight: sum((g) => g.inFlight),
        dead: sum((g) => g.dead),
        scheduled: sum((g) => g.scheduled),
        oldestPendingAgeMs: oldest === null ? null : Math.max(0, at - oldest),
        byResourceType: types.map((resourceType) => {
          const g = groups.get(resourceType)!
          return { resourceType, pending: g.pending, inFlight: g.inFlight, dead: g.dead }
        })
      }
    }))

  const listDead = (options: { readonly resourceType?: string | undefined; readonly limit?: number | undefined } = {}) =>
    statement(() => {
      const limit = options.limit ?? 100
      if (!Number.isInteger(limit)) throw sqlError(`invalid input syntax for type bigint: "${limit}"`)
      if (limit < 0) throw sqlError("LIMIT must not be negative")
      return rows.filter((row) => row.status === "dead" && (options.resourceType === undefined || row.resourceType === options.resourceType))
        .slice(0, limit)
        .map((row) => Statements.toStoredEvent(storedRow(row)))
    })

  /** `Admin`'s check of an operator's id, then the id as the statement would bind it. */
  const operatorId = (id: string) =>
    Effect.suspend((): Effect.Effect<string, EventNotFound | SqlError.SqlError> => {
      const n = lookupId(id)
      if (n === "malformed") return Effect.fail(new EventNotFound({ id }))
      if (n === "out of range") return Effect.fail(sqlError(`value "${id}" is out of range for type bigint`))
      return Effect.succeed(String(n))
    })

  const show = (id: string) =>
    Effect.flatMap(operatorId(id), (key) =>
      Effect.suspend(() => {
        const row = find(key)
        if (row === undefined) return Effect.fail(new EventNotFound({ id }))
        return Effect.succeed({
          event: Statements.toStoredEvent(storedRow(row)),
          failures: (failures.get(key) ?? []).map((f) =>
            new FailureRecord({ attempt: f.attempt, errorTag: f.tag, message: f.message, failedAt: new Date(f.failedAt) })
          )
        })
      }))

  const selected = (selector: DeadSelector): Effect.Effect<(row: Row) => boolean, EventNotFound | SqlError.SqlError> => {
    switch (selector._tag) {
      case "One":
        return Effect.map(operatorId(selector.id), (key) => (row: Row) => row.status === "dead" && String(row.id) === key)
      case "ResourceType":
        return Effect.succeed((row: Row) => row.status === "dead" && row.resourceType === selector.resourceType)
      case "All":
        return Effect.succeed((row: Row) => row.status === "dead")
    }
  }

  /** Naming one dead letter that is not there is `EventNotFound`, as `Admin` has it. */
  const onDead = (selector: DeadSelector, apply: (matches: (row: Row) => boolean) => number) =>
    Effect.flatMap(selected(selector), (matches) => {
      const n = apply(matches)
      return selector._tag === "One" && n === 0 ? Effect.fail(new EventNotFound({ id: selector.id })) : Effect.succeed(n)
    })

  const requeue = (selector: DeadSelector) =>
    onDead(selector, (matches) => {
      let n = 0
      for (const row of rows) {
        if (!matches(row)) continue
        row.status = "pending"
        row.attemptsBefore += row.retryCount
        row.retryCount = 0
        row.nextRetryAt = Number.NEGATIVE_INFINITY
        row.leaseOwner = null
        row.leaseExpiresAt = null
        n++
      }
      return n
    })

  const purge = (selector: DeadSelector) => onDead(selector, (matches) => deleteWhere(matches))

  const liveWorkers = (staleAfterMs: number) =>
    Effect.flatMap(now, (at) =>
      Effect.sync((): ReadonlyArray<LiveWorker> =>
        [...workers.values()]
          .filter((w) => w.heartbeatAt > at - staleAfterMs)
          .sort((a, b) => a.startedAt - b.startedAt)
          .map(({ heartbeatAt, row, startedAt }) => ({
            owner: row.owner,
            hostname: row.hostname,
            pid: row.pid,
            breaker: row.breaker,
            listener: row.listener,
            loop: row.loop,
            loop_error: row.loopError,
            retention_ms: row.retentionMs ?? null,
            started_at: new Date(startedAt),
            heartbeat_age_ms: at - heartbeatAt
          }))
      ))

  const admin: AdminShape = { stats, listDead, show, requeue, purge, workers: liveWorkers }

  // ---- the driver's view ----------------------------------------------------------------------

  const outboxRows: OutboxRows = {
    snapshot: Effect.sync(() =>
      rows.map((row): SnapshotRow => {
        const { created_at: _, lease_owner: __, ...rest } = storedRow(row)
        return rest
      })
    ),
    leasedBy: (owner) => Effect.sync(() => rows.filter((row) => row.leaseOwner === owner).map((row) => String(row.id))),
    idsWhere: (status) => Effect.sync(() => rows.filter((row) => row.status === status).map((row) => String(row.id)))
  }

  return {
    leases,
    admin,
    rows: outboxRows,
    sql: makeClient({ prepareInsert, commit }).pipe(Effect.provide(Reactivity.layer))
  }
})

// ---------------------------------------------------------------------------------------------
// The producer's SqlClient
// ---------------------------------------------------------------------------------------------

interface InsertTarget {
  readonly prepareInsert: (events: ReadonlyArray<NewEvent>) => Array<Row>
  readonly commit: (rows: ReadonlyArray<Row>) => void
}

/** The refusal of any statement the kit does not run: says why, and what to use instead. */
const notRun = (statement: string) =>
  sqlError(
    `sync-outbox/testing: the in-memory outbox (OutboxTest.layerMemory) runs no SQL but the library's own inserts ` +
      `(enqueue, enqueueMany) and transactions; refused: ${oneLineOf(statement)}. Code that runs its own SQL ` +
      `(a handler reading your tables, a raw query in the test) needs a database: use OutboxTest.layer (PGlite).`
  )

const oneLineOf = (statement: string) => {
  const line = statement.replace(/\s+/g, " ").trim()
  return line.length > 120 ? `${line.slice(0, 117)}...` : line
}

const insertOneEvent = (params: ReadonlyArray<unknown>): Array<NewEvent> => [{
  resourceType: params[0],
  action: params[1],
  resourceId: params[2],
  orderingKey: params[3],
  payload: params[4],
  coalesce: params[5],
  createdAt: params[6]
}]

// `unnest` of arrays of different lengths pads the shorter ones with NULL (which the table then refuses).
const insertManyEvents = (params: ReadonlyArray<unknown>): Array<NewEvent> => {
  const columns = params.slice(0, 6).map((p, i) => {
    if (p === null || p === undefined) return []
    if (!Array.isArray(p)) throw sqlError(`malformed array literal for parameter $${i + 1}`)
    return p as ReadonlyArray<unknown>
  })
  const n = Math.max(0, ...columns.map((c) => c.length))
  return Array.from({ length: n }, (_, i) => ({
    resourceType: columns[0]![i] ?? null,
    action: columns[1]![i] ?? null,
    resourceId: columns[2]![i] ?? null,
    orderingKey: columns[3]![i] ?? null,
    payload: columns[4]![i] ?? null,
    coalesce: columns[5]![i] ?? null,
    createdAt: params[6]
  }))
}

type Command =
  | { readonly _tag: "Insert"; readonly events: Array<NewEvent> }
  | { readonly _tag: "Begin" }
  | { readonly _tag: "Commit" }
  | { readonly _tag: "Rollback" }
  | { readonly _tag: "Savepoint"; readonly name: string }
  | { readonly _tag: "RollbackTo"; readonly name: string }
  | { readonly _tag: "Release"; readonly name: string }

const parse = (statement: string, params: ReadonlyArray<unknown>): Command => {
  if (statement === Statements.insertOne) return { _tag: "Insert", events: insertOneEvent(params) }
  if (statement === Statements.insertMany) return { _tag: "Insert", events: insertManyEvents(params) }
  const words = statement.trim().replace(/;$/, "").split(/\s+/).map((w) => w.toUpperCase())
  const name = (at: number) => statement.trim().replace(/;$/, "").split(/\s+/)[at]
  const [a, b, c] = words
  if (words.length === 1 && (a === "BEGIN" || a === "START")) return { _tag: "Begin" }
  if (words.length === 2 && a === "START" && b === "TRANSACTION") return { _tag: "Begin" }
  if (words.length === 1 && (a === "COMMIT" || a === "END")) return { _tag: "Commit" }
  if (words.length === 1 && (a === "ROLLBACK" || a === "ABORT")) return { _tag: "Rollback" }
  if (words.length === 2 && a === "SAVEPOINT") return { _tag: "Savepoint", name: name(1)! }
  if (words.length === 4 && a === "ROLLBACK" && b === "TO" && c === "SAVEPOINT") return { _tag: "RollbackTo", name: name(3)! }
  if (words.length === 3 && a === "ROLLBACK" && b === "TO") return { _tag: "RollbackTo", name: name(2)! }
  if (words.length === 3 && a === "RELEASE" && b === "SAVEPOINT") return { _tag: "Release", name: name(2)! }
  if (words.length === 2 && a === "RELEASE") return { _tag: "Release", name: name(1)! }
  throw notRun(statement)
}

/**
 * A session. Outside a transaction an insert is visible at once (autocommit). Inside one, its
 * rows wait for COMMIT (ROLLBACK drops them, ROLLBACK TO SAVEPOINT those since the savepoint):
 * the worker cannot see an event before the producer's transaction commits, as with Postgres.
 */
const makeSession = (target: InsertTarget, transactional: boolean) => {
  let open = false
  let pending: Array<Row> = []
  let savepoints: Array<{ readonly name: string; readonly at: number }> = []
  const run = (statement: string, params: ReadonlyArray<unknown>): { readonly command: string; readonly rows: Array<{ id: string }> } => {
    const command = parse(statement, params)
    switch (command._tag) {
      case "Insert": {
        const inserted = target.prepareInsert(command.events)
        if (open) pending.push(...inserted)
        else target.commit(inserted)
        return { command: "INSERT", rows: inserted.map((row) => ({ id: String(row.id) })) }
      }
      case "Begin":
        if (!transactional) throw notRun(statement)
        open = true
        return { command: "BEGIN", rows: [] }
      case "Commit":
        if (open) target.commit(pending)
        open = false
        pending = []
        savepoints = []
        return { command: "COMMIT", rows: [] }
      case "Rollback":
        open = false
        pending = []
        savepoints = []
        return { command: "ROLLBACK", rows: [] }
      case "Savepoint":
        if (!open) throw sqlError("SAVEPOINT can only be used in transaction blocks")
        savepoints.push({ name: command.name, at: pending.length })
        return { command: "SAVEPOINT", rows: [] }
      case "RollbackTo":
      case "Release": {
        const i = savepoints.map((s) => s.name).lastIndexOf(command.name)
        if (!open || i < 0) throw sqlError(`savepoint "${command.name}" does not exist`)
        if (command._tag === "RollbackTo") {
          pending = pending.slice(0, savepoints[i]!.at)
          // The savepoint itself stays, as in Postgres; those after it go.
          savepoints = savepoints.slice(0, i + 1)
          return { command: "ROLLBACK", rows: [] }
        }
        savepoints = savepoints.slice(0, i)
        return { command: "RELEASE", rows: [] }
      }
    }
  }
  const attempt = <A>(f: () => A) =>
    Effect.try({ try: f, catch: (error) => (error instanceof SqlError.SqlError ? error : sqlError("Failed to execute statement", error)) })
  const rowsOf = (statement: string, params: ReadonlyArray<unknown>) => attempt((): ReadonlyArray<any> => run(statement, params).rows)
  const execute = (
    statement: string,
    params: ReadonlyArray<unknown>,
    transformRows: (<A extends object>(row: ReadonlyArray<A>) => ReadonlyArray<A>) | undefined
  ) => (transformRows ? Effect.map(rowsOf(statement, params), transformRows) : rowsOf(statement, params))
  const connection: SqlConnection.Connection = {
    execute,
    executeRaw: (statement, params) =>
      attempt(() => {
        const result = run(statement, params)
        return { command: result.command, rows: result.rows, rowCount: result.rows.length }
      }),
    executeStream: (statement, params, transformRows) => Stream.flatMap(execute(statement, params, transformRows), Stream.fromIterable),
    executeValues: (statement, params) => Effect.map(rowsOf(statement, params), (rows) => rows.map((row) => Object.values(row))),
    executeUnprepared: execute
  }
  return connection
}

const makeClient = (target: InsertTarget): Effect.Effect<SqlClient.SqlClient, never, Reactivity.Reactivity> =>
  Effect.gen(function*() {
    const autocommit = makeSession(target, false)
    return yield* SqlClient.make({
      acquirer: Effect.succeed(autocommit),
      // Each transaction its own session, its inserts its own until COMMIT.
      transactionAcquirer: Effect.sync(() => makeSession(target, true)),
      // Postgres's compiler: a statement the kit refuses is shown as Postgres would have received it.
      compiler: PgClient.makeCompiler(),
      spanAttributes: [["db.system.name", "postgresql"], ["db.namespace", "sync-outbox-memory"]]
    })
  })

/** The in-memory outbox behind a test layer (`OutboxTest.layerMemory`), for a test that wants it directly. */
export class MemoryOutbox extends Context.Tag("sync-outbox/testing/MemoryOutbox")<MemoryOutbox, MemoryOutboxShape>() {}
