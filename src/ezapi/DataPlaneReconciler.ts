/**
 * The ez-api domain's `Reconciler`: how the engine's `Convergence` notices that Redis forgot ez-api's
 * data plane, and how it compares and repairs it, family by family.
 *
 * - Loss: every full repair first writes a generation marker (`sync:generation`, bookkeeping the
 *   balancer never reads); the loss check asks whether it, and `meta:providers_meta`, still exist
 *   (two commands). An empty, never-synced Redis counts as lost: that is the initial build.
 * - Compare: the expected entries are computed from the control plane with the handlers' own code
 *   (`Snapshots`, `RedisLayout`, `Projector`), read in pages by id; Redis is read in pipelined
 *   pages and SCANned (on every master of a Cluster) for entries with no row behind them.
 * - Repair: missing and stale entries go through the handlers' version-fenced scripts, written
 *   with the row's own version, so an event applied meanwhile from a newer row always wins;
 *   orphans are removed through `Projector` itself (it reads the row again, and writes instead
 *   when a row holds the entry by then; a removal is owned by the gone row, so a newer row's
 *   write is never undone).
 */
import { SqlClient } from "@effect/sql"
import { Clock, Effect, Fiber, Layer, Option } from "effect"
import type { Cluster } from "ioredis"
import { hostname } from "node:os"
import { DriftCounter, type DriftReport, type FamilyDrift, Reconciler, ReconcileError, type ReconcilerShape, type ReconcileOptions } from "../Reconciler.js"
import { RedisSink, type RedisClient } from "../RedisSink.js"
import * as Contract from "./Contract.js"
import * as ControlPlane from "./ControlPlane.js"
import type { Key, Master, Model } from "./Entities.js"
import * as RedisLayout from "./RedisLayout.js"
import * as Snapshots from "./Snapshots.js"
import { keyExpiry, Projector } from "./Projector.js"

/** The families a report lists, in the order they are compared. */
export const families = ["tokens", "masters", "providers", "bindings", "models"] as const

export interface DataPlaneReconcilerOptions {
  /** Rows read from the control plane per query (default 1,000; at most 200 under a rate limit). */
  readonly pageSize?: number | undefined
  /** Entries read from Redis per pipelined round trip under a rate limit (default 100; 1,000 unpaced). */
  readonly chunkSize?: number | undefined
}

/** @deprecated The 0.1.0 name of `DataPlaneReconcilerOptions` (as `SyncReconciler.SyncReconcilerOptions`); removed in the next release. */
export type SyncReconcilerOptions = DataPlaneReconcilerOptions

type Pace = ReconcileOptions["pace"]

/** Redis commands `Projector.syncKey` spends on a gone key's entry: a removal or a write, and the index. */
const orphanKeyCommands = 3

/** How much one step takes on: entries per Redis round trip, round trips at once, rows per query. */
interface Sizes {
  readonly chunk: number
  readonly parallel: number
  readonly rowsPerQuery: number
}

const describeError = (error: unknown): ReconcileError => {
  if (error instanceof ReconcileError) return error
  const tag = typeof error === "object" && error !== null && "_tag" in error ? String(error._tag) : ""
  const message = typeof error === "object" && error !== null && "message" in error ? String(error.message) : String(error)
  const where = tag === "SqlError" || tag === "InvalidRow" ? "control plane" : tag.startsWith("Sink") ? "redis" : "reconcile"
  return new ReconcileError({ message: `${where}: ${message}`, cause: error })
}

/** A glob that matches `text` literally (SCAN MATCH). */
const literal = (text: string) => text.replace(/[*?[\]\\]/g, "\\$&")

const sameFields = (seen: Record<string, string>, expected: Record<string, string>) => {
  const keys = Object.keys(expected)
  if (Object.keys(seen).length !== keys.length) return false
  for (const k of keys) if (seen[k] !== expected[k]) return false
  return true
}

/**
 * What a key that is not a hash (a hand-made string, say) reads as: a field no entry has, so it
 * compares as stale, and the repair's script replaces it (it deletes whatever was there first).
 */
const notAHash = (): Record<string, string> => ({ "(not a hash)": "" })
const noRecord = (): Array<string | null> => [null, null, null]

type Verdict = "same" | "missing" | "stale" | "newer"

/**
 * One auth hash against its row. `newer`: the record says a later write (a newer version of the
 * row, or a newer row) got there after the control plane was read: not drift, not ours to touch.
 */
const judge = (
  entry: Record<string, string>,
  record: ReadonlyArray<string | null>,
  fields: Record<string, string>,
  at: RedisLayout.Versioned
): Verdict => {
  if (record[0] != null) {
    const version = Number(record[0])
    const owner = Number(record[1] ?? 0)
    if (owner > at.owner || (owner === at.owner && version > at.version)) return "newer"
  }
  if (Object.keys(entry).length === 0) return "missing"
  if (!sameFields(entry, fields)) return "stale"
  if (record[0] == null || Number(record[0]) !== at.version || Number(record[1]) !== at.owner || record[2] !== RedisLayout.digest(fields)) {
    return "stale"
  }
  return "same"
}

const make = (options: DataPlaneReconcilerOptions) =>
  Effect.gen(function*() {
    const sync = yield* Projector
    const redis = yield* RedisSink
    const sql = yield* SqlClient.SqlClient
    const l = sync.layout
    const page = Math.max(1, Math.floor(options.pageSize ?? 1_000))
    const pacedChunk = Math.max(1, Math.floor(options.chunkSize ?? 100))
    const withSql = <A, E>(effect: Effect.Effect<A, E, SqlClient.SqlClient>) => Effect.provideService(effect, SqlClient.SqlClient, sql)
    const runner = `${hostname()}:${process.pid}`

    /** Every master of a Cluster, or the one node. */
    const nodes = (): ReadonlyArray<RedisClient> =>
      redis.client.isCluster ? (redis.client as Cluster).nodes("master") : [redis.client]

    /** SCAN every node for keys under `prefix`, a page at a time; `onPage` gets what follows the prefix. */
    const scan = (prefix: string, pace: Pace, onPage: (suffixes: ReadonlyArray<string>) => void) =>
      Effect.gen(function*() {
        for (const node of nodes()) {
          let cursor = "0"
          do {
            const [next, keys] = yield* redis.use(() => node.scan(cursor, "MATCH", `${literal(prefix)}*`, "COUNT", 1_000))
            onPage(keys.map((key) => key.slice(prefix.length)))
            yield* pace(1)
            cursor = next
          } while (cursor !== "0")
        }
      })

    const detectLoss: ReconcilerShape["detectLoss"] = redis.use((c) =>
      Promise.all([c.exists(l.generationMarker), c.exists(l.providersMeta)])
    ).pipe(
      Effect.map(([marker, meta]) => {
        if (marker === 1 && meta === 1) return Option.none()
        if (marker === 0 && meta === 0) {
          return Option.some(`${l.generationMarker} and ${l.providersMeta} are missing: Redis restarted empty, failed over, or was never synced`)
        }
        return Option.some(`${marker === 0 ? `the generation marker ${l.generationMarker}` : l.providersMeta} is missing`)
      }),
      Effect.mapError(describeError)
    )

    // ---------------------------------------------------------------------------------------
    // auth:token:* and auth:master:*
    // ---------------------------------------------------------------------------------------

    /**
     * A row that does not decode is one item's failure, not the sweep's: it is collected here,
     * left as Redis holds it, and reported once every other entry was compared (and repaired).
     */
    const skipInvalid = (invalid: Array<ControlPlane.InvalidRow>) =>
    <A, E, R>(effect: Effect.Effect<A, E | ControlPlane.InvalidRow, R>) =>
      Effect.catchIf(
        effect,
        (e): e is ControlPlane.InvalidRow => e instanceof ControlPlane.InvalidRow,
        (e) => Effect.sync(() => void invalid.push(e))
      ) as Effect.Effect<A | undefined, Exclude<E, ControlPlane.InvalidRow>, R>

    const tokens = (repair: boolean, pace: Pace, { chunk, parallel, rowsPerQuery }: Sizes, invalid: Array<ControlPlane.InvalidRow>) =>
      Effect.gen(function*() {
        const drift = new DriftCounter("tokens")
        const tolerate = skipInvalid(invalid)
        const now = yield* Clock.currentTimeMillis
        const held = new Set<string>()
        const rowIds = new Set<number>()

        const checkChunk = (part: ReadonlyArray<Key>) =>
          Effect.gen(function*() {
            const [entries, records, indexed] = yield* redis.use((c) =>
              Promise.all([
                Promise.all(part.map((k) => c.hgetall(l.token(k.tokenHash)).catch(notAHash))),
                Promise.all(part.map((k) => c.hmget(l.record(l.token(k.tokenHash)), "v", "id", "d").catch(noRecord))),
                c.hmget(l.keyIndex, ...part.map((k) => String(k.id))).catch((): Array<string | null> => part.map(() => null))
              ])
            )
            const writes: Array<Key> = []
            const reindex: Array<Key> = []
            part.forEach((k, i) => {
              drift.checked++
              const verdict = judge(entries[i]!, records[i]!, Snapshots.keyFields(k), { version: k.version, owner: k.id })
              if (verdict === "newer") return
              if (verdict !== "same") {
                drift.found(verdict, `${l.token(k.tokenHash)} (key ${k.id})`)
                writes.push(k)
              } else if (indexed[i] !== `${k.tokenHash}:${k.masterId}`) {
                drift.found("stale", `${l.keyIndex}[${k.id}] (key ${k.id})`)
                reindex.push(k)
              }
            })
            yield* pace(part.length * 2 + 1)
            if (!repair) return
            // The handlers' own write: the entry and its record in one fenced script, then the index.
            const written = yield* RedisLayout.writeEntries(redis, l, writes.map((k) => ({
              key: l.token(k.tokenHash),
              at: { version: k.version, owner: k.id },
              fields: Snapshots.keyFields(k),
              expireAt: keyExpiry(k)
            })))
            yield* RedisLayout.indexKeys(redis, l, [...writes, ...reindex])
            drift.repaired += written.filter((r) => r === "written").length + reindex.length
            yield* pace(writes.length + 1)
          })

        // The next page of rows is read while this one is compared.
        let next = yield* Effect.fork(withSql(ControlPlane.keyPageAfter(0, rowsPerQuery)))
        for (;;) {
          const { invalid: bad, lastId, rows }: ControlPlane.Page<Key> = yield* Fiber.join(next)
          if (lastId === undefined) break
          next = yield* Effect.fork(withSql(ControlPlane.keyPageAfter(lastId, rowsPerQuery)))
          // Their entries stay as they are: held (the orphan step asks Postgres, not this page).
          invalid.push(...bad)
          const live: Array<Key> = []
          const expired: Array<Key> = []
          for (const k of rows) {
            held.add(k.tokenHash)
            rowIds.add(k.id)
            const expiry = keyExpiry(k)
            // Expired: Redis dropped (or drops) its entry by itself, as the handlers arranged.
            if (expiry === null || expiry.getTime() > now) live.push(k)
            else expired.push(k)
          }
          // ...unless an entry came back without its TTL (a hand edit, a restore): it would
          // authenticate an expired key for ever. The handlers' write removes it (its expiry is past).
          if (expired.length > 0) {
            const present = yield* redis.use((c) => Promise.all(expired.map((k) => c.exists(l.token(k.tokenHash)))))
            yield* pace(expired.length)
            const strays = expired.filter((_, i) => present[i] === 1)
            drift.checked += expired.length
            for (const k of strays) drift.found("stale", `${l.token(k.tokenHash)} (key ${k.id}, expired)`)
            if (repair && strays.length > 0) {
              const written = yield* RedisLayout.writeEntries(redis, l, strays.map((k) => ({
                key: l.token(k.tokenHash),
                at: { version: k.version, owner: k.id },
                fields: Snapshots.keyFields(k),
                expireAt: keyExpiry(k)
              })))
              drift.repaired += written.filter((r) => r === "written").length
              yield* pace(strays.length)
            }
          }
          // Pipelined chunks: under a rate limit small and one at a time, paced in between, so that a
          // sweep never holds Redis (or this process) for long; unpaced, large and overlapping.
          const parts: Array<ReadonlyArray<Key>> = []
          for (let at = 0; at < live.length; at += chunk) parts.push(live.slice(at, at + chunk))
          yield* Effect.forEach(parts, checkChunk, { concurrency: parallel, discard: true })
        }

        // Orphans: entries whose token no row holds, and index entries of gone keys.
        const candidates: Array<string> = []
        yield* scan(l.token(""), pace, (hashes) => {
          for (const hash of hashes) if (!held.has(hash)) candidates.push(hash)
        })
        const handled = new Set<number>()
        for (let i = 0; i < candidates.length; i += page) {
          const batch = candidates.slice(i, i + page)
          // Held by a row created since the read above (written by its event), or by a row that
          // does not decode (reported, left alone): not an orphan.
          const nowHeld = yield* withSql(ControlPlane.heldTokenHashes(batch))
          const orphans = batch.filter((hash) => !nowHeld.has(hash))
          const owners = yield* redis.use((c) => Promise.all(orphans.map((hash) => c.hget(l.record(l.token(hash)), "id"))))
          yield* pace(orphans.length + 1)
          for (const [j, hash] of orphans.entries()) {
            const owner = Number(owners[j] ?? 0) || 0
            drift.found("orphaned", `${l.token(hash)}${owner > 0 ? ` (key ${owner}, gone)` : ""}`)
            // Its index entry is the same orphan: counted (and removed) once.
            handled.add(owner)
            if (!repair) continue
            // The handler's path for a gone key: the removal is owned by the gone row (or by no
            // row), so it cannot undo the write of a newer row holding the same token.
            const result = yield* tolerate(sync.syncKey(owner, hash))
            // `written`: the gone token was a live key's old one (re-hashed): removed, the key rewritten.
            if (result === "removed" || result === "written") drift.repaired++
            // What the handler spent: at most a removal, a write and an index update.
            yield* pace(orphanKeyCommands)
          }
        }
        const indexed = yield* RedisLayout.indexedKeys(redis, l)
        yield* pace(Math.ceil(indexed.length / 1_000) + 1)
        for (const k of indexed) {
          if (rowIds.has(k.id) || handled.has(k.id)) continue
          if (yield* withSql(ControlPlane.rowExists("cp_keys", k.id))) continue
          drift.found("orphaned", `${l.keyIndex}[${k.id}] (key ${k.id}, gone)`)
          if (!repair) continue
          if ((yield* tolerate(sync.syncKey(k.id, k.tokenHash))) !== undefined) drift.repaired++
          yield* pace(orphanKeyCommands)
        }
        return drift.result()
      })

    const masters = (repair: boolean, pace: Pace, { chunk, rowsPerQuery }: Sizes, invalid: Array<ControlPlane.InvalidRow>) =>
      Effect.gen(function*() {
        const drift = new DriftCounter("masters")
        const tolerate = skipInvalid(invalid)
        const rowIds = new Set<number>()
        let after = 0
        for (;;) {
          const { invalid: bad, lastId, rows }: ControlPlane.Page<Master> = yield* withSql(ControlPlane.masterPageAfter(after, rowsPerQuery))
          if (lastId === undefined) break
          after = lastId
          invalid.push(...bad)
          for (const m of rows) rowIds.add(m.id)
          for (let at = 0; at < rows.length; at += chunk) {
            const part = rows.slice(at, at + chunk)
            const [entries, records, indexed] = yield* redis.use((c) =>
              Promise.all([
                Promise.all(part.map((m) => c.hgetall(l.master(m.id)).catch(notAHash))),
                Promise.all(part.map((m) => c.hmget(l.record(l.master(m.id)), "v", "id", "d").catch(noRecord))),
                c.smismember(l.masterIndex, ...part.map((m) => String(m.id))).catch((): Array<number> => part.map(() => 0))
              ])
            )
            const writes: Array<Master> = []
            const reindex: Array<Master> = []
            part.forEach((m, i) => {
              drift.checked++
              const verdict = judge(entries[i]!, records[i]!, Snapshots.masterFields(m), { version: m.version, owner: m.id })
              if (verdict === "newer") return
              if (verdict !== "same") {
                drift.found(verdict, `${l.master(m.id)}`)
                writes.push(m)
              } else if (indexed[i] !== 1) {
                drift.found("stale", `${l.masterIndex} lacks ${m.id}`)
                reindex.push(m)
              }
            })
            yield* pace(part.length * 2 + 1)
            if (!repair) continue
            const written = yield* RedisLayout.writeEntries(redis, l, writes.map((m) => ({
              key: l.master(m.id),
              at: { version: m.version, owner: m.id },
              fields: Snapshots.masterFields(m)
            })))
            yield* RedisLayout.indexMasters(redis, l, [...writes, ...reindex].map((m) => m.id))
            drift.repaired += written.filter((r) => r === "written").length + reindex.length
            yield* pace(writes.length + 1)
          }
        }

        const candidates = new Set<number>()
        yield* scan(l.master(0).slice(0, -1), pace, (ids) => {
          for (const id of ids) {
            const n = Number(id)
            if (Number.isSafeInteger(n) && n > 0 && String(n) === id && !rowIds.has(n)) candidates.add(n)
          }
        })
        for (const id of yield* RedisLayout.indexedMasters(redis, l)) if (!rowIds.has(id)) candidates.add(id)
        yield* pace(1)
        for (const id of candidates) {
          // Created since the read above (its event writes it), or a row that does not decode (reported).
          if (yield* withSql(ControlPlane.rowExists("cp_masters", id))) continue
          drift.found("orphaned", `${l.master(id)} (master ${id}, gone)`)
          if (!repair) continue
          // The handler's path for a gone master: its entry, and its keys' entries, go.
          const result = yield* tolerate(sync.syncMaster(id))
          if (result === "removed" || result === "absent") drift.repaired++
          // Its removal, the key index read and its own unindexing (its keys' removals are few and rare).
          yield* pace(3)
        }
        return drift.result()
      })

    // ---------------------------------------------------------------------------------------
    // config:providers (+ meta:providers_meta), config:bindings
    // ---------------------------------------------------------------------------------------

    const compareSnapshot = (
      drift: DriftCounter,
      name: string,
      expected: Snapshots.Snapshot,
      seen: Record<string, string>
    ) => {
      for (const [field, value] of expected.entries) {
        drift.checked++
        const current = seen[field]
        if (current === undefined) drift.found("missing", `${name}[${field}]`)
        else if (current !== value) drift.found("stale", `${name}[${field}]`)
      }
      const wanted = new Set(expected.entries.map(([field]) => field))
      for (const field of Object.keys(seen)) if (!wanted.has(field)) drift.found("orphaned", `${name}[${field}]`)
    }

    const snapshots = (repair: boolean, pace: Pace, invalid: Array<ControlPlane.InvalidRow>) =>
      Effect.gen(function*() {
        // Rows that do not decode are left out, as the handlers' rebuild leaves them out.
        const rows = yield* withSql(ControlPlane.snapshotRows)
        invalid.push(...rows.invalid)
        const expected = {
          providers: Snapshots.providers(rows.groups, rows.apiKeys),
          bindings: Snapshots.bindings(rows.bindings, rows.groups, rows.apiKeys)
        }
        const [providers, meta, providersRecord, bindings, bindingsRecord] = yield* redis.use((c) =>
          Promise.all([
            c.hgetall(l.providers).catch(notAHash),
            c.hgetall(l.providersMeta).catch((): Record<string, string> => ({})),
            c.hget(l.record(l.providers), "d").catch(() => null),
            c.hgetall(l.bindings).catch(notAHash),
            c.hget(l.record(l.bindings), "d").catch(() => null)
          ])
        )
        yield* pace(5)
        const report: Array<FamilyDrift> = []
        for (const which of ["providers", "bindings"] as const) {
          const drift = new DriftCounter(which)
          const hash = which === "providers" ? l.providers : l.bindings
          const snapshot = expected[which]
          compareSnapshot(drift, hash, snapshot, which === "providers" ? providers : bindings)
          const record = which === "providers" ? providersRecord : bindingsRecord
          if (which === "providers") {
            drift.checked++
            if (Object.keys(meta).length === 0) drift.found("missing", l.providersMeta)
            // Every field the data plane reads (§2.4), not the checksum alone: one lost by a hand edit is stale.
            else if (meta["checksum"] !== snapshot.checksum || !meta["version"] || !meta["timestamp"]) drift.found("stale", l.providersMeta)
          }
          // The fence's record: without it an older rebuild still in flight could replace this one.
          if (snapshot.entries.length > 0 && record !== snapshot.checksum && drift.missing + drift.stale + drift.orphaned === 0) {
            drift.found("stale", l.record(hash))
          }
          const found = drift.missing + drift.stale + drift.orphaned
          if (repair && found > 0) {
            // The handlers' rebuild: a new generation of the fence, so it replaces any older one.
            // With rows left out, the rebuild writes the rest and then fails with them (counted above).
            const result = yield* (which === "providers" ? sync.syncProviders : sync.syncBindings).pipe(
              Effect.catchIf((e) => e instanceof ControlPlane.InvalidRow && rows.invalid.length > 0, () => Effect.succeed("written" as const))
            )
            if (result === "written") drift.repaired += found
            yield* pace(1)
          }
          report.push(drift.result())
        }
        return report
      })

    // ---------------------------------------------------------------------------------------
    // meta:models (+ meta:models_meta)
    // ---------------------------------------------------------------------------------------

    const models = (repair: boolean, pace: Pace, invalid: Array<ControlPlane.InvalidRow>) =>
      Effect.gen(function*() {
        const drift = new DriftCounter("models")
        const tolerate = skipInvalid(invalid)
        const { invalid: bad, names, rows } = yield* withSql(ControlPlane.allModelsDecoded)
        invalid.push(...bad)
        // Fields of rows that do not decode stay as they are: not orphans.
        const named = new Set(names.map(Snapshots.modelField))
        // By id: two names for one field (`gpt-4o`, `default.gpt-4o`) end as the newer row's, as the handlers leave it.
        const byField = new Map<string, Model>()
        for (const m of rows) {
          const field = Snapshots.modelField(m.name)
          if (field !== undefined) byField.set(field, m)
        }
        const expected = [...byField]
        const [hash, records] = yield* redis.use((c) =>
          Promise.all([
            // Not a hash (a hand edit): every model is missing; the handlers' script replaces it.
            c.hgetall(l.models).catch((): Record<string, string> => ({})),
            Promise.all(expected.map(([field]) => c.hmget(l.modelRecord(field), "v", "id", "d").catch(noRecord)))
          ])
        )
        yield* pace(expected.length + 1)
        // Fields held by a newer row than the one expected: newer (created since the read), unless
        // that row is gone (deleted, its removal applied or not): then the field is the expected
        // row's, and the repair takes it over from the gone one.
        const goneOwners = new Set<number>()
        for (const [i, [, m]] of expected.entries()) {
          const owner = Number(records[i]![1] ?? 0) || 0
          if (owner > m.id && !(yield* withSql(ControlPlane.rowExists("cp_models", owner)))) goneOwners.add(owner)
        }
        const writes: Array<readonly [string, Model, string, number]> = []
        expected.forEach(([field, m], i) => {
          drift.checked++
          const value = Snapshots.modelValue(field, m)
          const record = records[i]!
          const recordOwner = Number(record[1] ?? 0) || 0
          const gone = recordOwner > m.id && goneOwners.has(recordOwner) ? recordOwner : 0
          if (record[0] != null && gone === 0) {
            const version = Number(record[0])
            const owner = Number(record[1] ?? 0)
            if (owner > m.id || (owner === m.id && version > m.version)) return
          }
          const current = hash[field]
          const verdict = current === undefined
            ? "missing"
            : current !== value || Number(record[0]) !== m.version || Number(record[1]) !== m.id || record[2] !== RedisLayout.digest(value)
            ? "stale"
            : "same"
          if (verdict === "same") return
          drift.found(verdict, `${l.models}[${field}] (model ${m.id}${gone > 0 ? `, held by model ${gone}, gone` : ""})`)
          writes.push([field, m, value, gone])
        })
        let changed = false
        if (repair) {
          const written = yield* Effect.forEach(writes, ([field, m, value, gone]) =>
            RedisLayout.writeModel(redis, l, field, { version: m.version, owner: m.id }, value, sync.tombstoneMs, gone), {
              concurrency: "unbounded"
            })
          drift.repaired += written.filter((r) => r === "written").length
          changed = writes.length > 0
          yield* pace(writes.length * 2)
        }
        // Orphans: fields this service wrote (they have an owner) with no model behind them now.
        // Another writer of meta:models (ez-api's models.dev registry) keeps its own.
        const strays = Object.keys(hash).filter((field) => !byField.has(field) && !named.has(field))
        const owners = yield* redis.use((c) => Promise.all(strays.map((field) => c.hget(l.modelRecord(field), "id"))))
        yield* pace(strays.length)
        for (const [i, field] of strays.entries()) {
          const owner = Number(owners[i] ?? 0) || 0
          if (owner <= 0) continue
          const row = yield* tolerate(withSql(ControlPlane.getModel(owner)))
          // Renamed or created since the read above: its event moves the field.
          if (row === undefined || (Option.isSome(row) && Snapshots.modelField(row.value.name) === field)) continue
          drift.found("orphaned", `${l.models}[${field}] (model ${owner}${Option.isNone(row) ? ", gone" : ", renamed"})`)
          if (!repair) continue
          // The handler's path: the field goes (or moves to the model's new name), fenced by its owner.
          const result = yield* tolerate(sync.syncModel(owner))
          if (result === "removed" || result === "written") drift.repaired++
          changed = true
          // Two reads of its records, the fenced write, and the models meta read and written again.
          yield* pace(5)
        }
        // meta:models_meta: the checksum over every field the hash holds now (§2.4).
        const [now, meta] = yield* redis.use((c) =>
          Promise.all([
            changed ? c.hgetall(l.models) : Promise.resolve(hash),
            c.hgetall(l.modelsMeta).catch((): Record<string, string> => ({ checksum: "(not a hash)" }))
          ])
        )
        yield* pace(2)
        drift.checked++
        const checksum = Contract.checksumFromPayloads(Object.entries(now))
        // Every field §2.4 requires, not the checksum alone: one lost by a hand edit is stale.
        if (meta["checksum"] !== checksum || !meta["version"] || !meta["updated_at"] || !meta["source"]) {
          drift.found(Object.keys(meta).length === 0 ? "missing" : "stale", l.modelsMeta)
          if (repair) {
            yield* RedisLayout.refreshModelsMeta(redis, l, new Date(yield* Clock.currentTimeMillis))
            drift.repaired++
          }
        } else if (changed) {
          yield* RedisLayout.refreshModelsMeta(redis, l, new Date(yield* Clock.currentTimeMillis))
        }
        return drift.result()
      })

    const reconcile = ({ pace, rate, repair }: ReconcileOptions): Effect.Effect<DriftReport, ReconcileError> =>
      Effect.gen(function*() {
        let paced = pace
        // Unpaced, as fast as it goes; under a budget, small round trips (and small pages of rows to
        // decode) that the event path can slip between.
        const fast: Sizes = { chunk: 500, parallel: 4, rowsPerQuery: page }
        let sizes: Sizes = rate === undefined ? fast : { chunk: pacedChunk, parallel: 1, rowsPerQuery: Math.min(page, 200) }
        if (repair) {
          const armed = yield* redis.use((c) => c.exists(l.generationMarker))
          // First, before any entry: a loss during this repair removes it again, and is seen again.
          const at = new Date(yield* Clock.currentTimeMillis).toISOString()
          yield* redis.use((c) => c.set(l.generationMarker, JSON.stringify({ at, by: runner })))
          // An index overwritten with another type would fail every write to it: the repair rebuilds it.
          yield* RedisLayout.resetIndexes(redis, l)
          // Redis forgot everything: a rebuild, as fast as it goes (the rate limit is for sweeps).
          if (armed === 0) {
            paced = () => Effect.void
            sizes = fast
          }
        }
        const report: Array<FamilyDrift> = []
        const invalid: Array<ControlPlane.InvalidRow> = []
        report.push(yield* tokens(repair, paced, sizes, invalid))
        report.push(yield* masters(repair, paced, sizes, invalid))
        report.push(...(yield* snapshots(repair, paced, invalid)))
        report.push(yield* models(repair, paced, invalid))
        // Everything else was compared (and repaired) first; the rows that could not be read are
        // this run's typed failure, so that they are seen (log, `status`, `verify`'s exit code).
        if (invalid.length > 0) {
          return yield* new ReconcileError({
            message: `control plane: ${invalid.length} row(s) do not decode and were skipped; every other entry was ${
              repair ? "compared and repaired" : "compared"
            }: ${invalid.slice(0, 3).map((e) => e.message).join("; ")}${invalid.length > 3 ? "; ..." : ""}`,
            cause: invalid,
            report: { families: report, repair }
          })
        }
        return { families: report, repair }
      }).pipe(
        Effect.mapError(describeError),
        Effect.withSpan("sync.reconcile", { attributes: { repair } })
      )

    return { detectLoss, reconcile } satisfies ReconcilerShape
  })

/**
 * The ez-api domain's `Reconciler`, over the `Projector` the handlers use (same layout, prefix
 * and tombstones). Give it to `WorkerEnv.layer(handlers, { reconciler })`.
 */
export const layer = (options: DataPlaneReconcilerOptions = {}): Layer.Layer<Reconciler, never, Projector | RedisSink | SqlClient.SqlClient> =>
  Layer.effect(Reconciler, make(options))
