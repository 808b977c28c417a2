/**
 * Projects the control plane onto ez-api's data plane: reads a row (or the rows a snapshot is
 * built from) and writes its entry in Redis (`RedisLayout`), or removes it. The Go service's
 * `SyncService`; here it is what every handler and the reconciler call.
 * Every write is versioned and owned by its row (stale ones are refused by Redis itself). A row
 * that is gone when its event is applied removes its data-plane entry instead of failing until
 * dead, leaving a tombstone record that out-versions any stale write of that row. Snapshots are
 * fenced by the control plane (`ControlPlane.snapshotSource`), so whichever path rebuilds them
 * (worker, `sync-all`, `syncNowOrEnqueue`), an older one never replaces a newer one.
 */
import { SqlClient, type SqlError } from "@effect/sql"
import { Clock, Context, Duration, Effect, Layer, Metric, Option } from "effect"
import type { SinkCommandError, SinkUnavailable } from "../Errors.js"
import { RedisSink } from "../RedisSink.js"
import * as ControlPlane from "./ControlPlane.js"
import type { Key, Model } from "./Entities.js"
import * as RedisLayout from "./RedisLayout.js"
import type { Layout, WriteResult } from "./RedisLayout.js"
import * as Snapshots from "./Snapshots.js"

/** What one sync did to Redis. `absent`: nothing to write and nothing to remove. */
export type ProjectorResult = "written" | "stale" | "removed" | "absent"

export type ProjectorError = SqlError.SqlError | ControlPlane.InvalidRow | SinkUnavailable | SinkCommandError

export interface ProjectorOptions {
  /** Prepended as is to every Redis key and the refresh channel (default none: the contract's names). */
  readonly prefix?: string | undefined
  /**
   * The Redis Cluster layout: snapshot and meta hashes share the hash tag `{dp}`. Default: true
   * on a Redis Cluster, false on a single node (the contract's names exactly).
   */
  readonly cluster?: boolean | undefined
  /** How long a removal's tombstone record guards against stale writes (default one day). */
  readonly tombstoneTtl?: Duration.DurationInput | undefined
}

export const staleWrites = Metric.counter("sync_outbox_stale_writes_total", {
  description: "Writes refused by Redis because it held a newer version",
  incremental: true
})

/**
 * When a key's `auth:token:*` expires: Redis drops an active key's entry by itself at its
 * `expires_at`, so it stops authenticating on time. Shared with the reconciler.
 */
export const keyExpiry = (k: Key): Date | null => (k.status === "active" ? k.expiresAt : null)

export interface ProjectorShape {
  readonly layout: Layout
  /** How long a removal's tombstone record lives, in milliseconds. */
  readonly tombstoneMs: number
  /** A master's `auth:master:<id>`; when the master is gone, its keys' `auth:token:*` go too. */
  readonly syncMaster: (id: number) => Effect.Effect<ProjectorResult, ProjectorError>
  /** `tokenHash`: the hash the event knew, to remove the entry of a deleted or re-hashed key. */
  readonly syncKey: (id: number, tokenHash?: string | undefined) => Effect.Effect<ProjectorResult, ProjectorError>
  /** `name`: the name the event knew, to remove the field of a deleted model. A rename moves the field. */
  readonly syncModel: (id: number, name?: string | undefined) => Effect.Effect<ProjectorResult, ProjectorError>
  /** The Go service's `SyncModelDeleteNow`; when a model of that name exists again, it is synced instead. */
  readonly deleteModel: (name: string, id?: number | undefined) => Effect.Effect<ProjectorResult, ProjectorError>
  readonly syncProviders: Effect.Effect<ProjectorResult, ProjectorError>
  readonly syncBindings: Effect.Effect<ProjectorResult, ProjectorError>
  /** Everything: snapshots, every master, key and model, and entries whose rows are gone. */
  readonly syncAll: Effect.Effect<{ readonly written: number; readonly stale: number; readonly removed: number }, ProjectorError>
}

const make = (options: ProjectorOptions) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const redis = yield* RedisSink
    // On a Redis Cluster the contract's snapshot and meta names sit in different slots: unless told
    // otherwise, use the Cluster layout there (see RedisLayout).
    const l = RedisLayout.layout({ prefix: options.prefix, cluster: options.cluster ?? redis.client.isCluster })
    const tombstoneMs = Duration.toMillis(options.tombstoneTtl ?? Duration.days(1))
    const withSql = <A, E>(effect: Effect.Effect<A, E, SqlClient.SqlClient>) =>
      Effect.provideService(effect, SqlClient.SqlClient, sql)
    const now = Effect.map(Clock.currentTimeMillis, (ms) => new Date(ms))
    const counted = (result: WriteResult) =>
      result === "stale" ? Effect.as(Metric.increment(staleWrites), result) : Effect.succeed(result)
    const removed = (result: WriteResult): Effect.Effect<ProjectorResult> =>
      result === "written" ? Effect.succeed("removed") : counted(result)
    /** A version no row has had yet: a removal beats every earlier write of its row. */
    const fresh = withSql(ControlPlane.nextVersion)

    const writeKey = (k: Key) =>
      Effect.gen(function*() {
        const result = yield* RedisLayout.writeEntry(redis, l, l.token(k.tokenHash), { version: k.version, owner: k.id }, Snapshots.keyFields(k), keyExpiry(k))
        yield* RedisLayout.indexKey(redis, l, k)
        return yield* counted(result)
      })

    /**
     * A key row that does not decode cannot be written, and what the event carried is unknown: a
     * suspension, a revocation. Its entry is removed (fenced, with a tombstone, as a deletion), so
     * the key fails closed: it stops authenticating until its row is fixed (an UPDATE, a newer
     * version), rather than authenticating as it last did. The event still fails as `InvalidRow`.
     */
    const failClosed = (id: number, hint: string | undefined, invalid: ControlPlane.InvalidRow) =>
      Effect.gen(function*() {
        const known = hint ?? (yield* RedisLayout.indexedKeyHash(redis, l, id))
        if (known !== undefined) {
          const version = yield* fresh
          yield* RedisLayout.removeEntry(redis, l, l.token(known), { version, owner: id }, tombstoneMs)
          yield* RedisLayout.unindexKey(redis, l, id)
        }
        return yield* Effect.fail(invalid)
      })

    const syncKey = (id: number, hint?: string) =>
      Effect.gen(function*() {
        const row = yield* withSql(ControlPlane.getKey(id)).pipe(
          Effect.catchIf((e): e is ControlPlane.InvalidRow => e instanceof ControlPlane.InvalidRow, (e) => failClosed(id, hint, e))
        )
        if (Option.isNone(row)) {
          const known = hint ?? (yield* RedisLayout.indexedKeyHash(redis, l, id))
          if (known === undefined) return "absent" as const
          // Re-created with the same secret: the new key owns the entry, it stays.
          const holder = yield* withSql(ControlPlane.getKeyByHash(known))
          const result = Option.isSome(holder)
            ? yield* writeKey(holder.value)
            : yield* Effect.flatMap(fresh, (version) =>
              RedisLayout.removeEntry(redis, l, l.token(known), { version, owner: id }, tombstoneMs)).pipe(Effect.flatMap(removed))
          yield* RedisLayout.unindexKey(redis, l, id)
          return result
        }
        const k = row.value
        // Re-hashed since the event (or since the last write, for an event that named no hash): the old entry goes.
        const previous = hint ?? (yield* RedisLayout.indexedKeyHash(redis, l, id))
        if (previous !== undefined && previous !== k.tokenHash) {
          const version = yield* fresh
          yield* RedisLayout.removeEntry(redis, l, l.token(previous), { version, owner: id }, tombstoneMs)
        }
        return yield* writeKey(k)
      }).pipe(Effect.withSpan("sync.key", { attributes: { id } }))

    /**
     * A master row that does not decode: as for a key (`failClosed`), what its event carried is
     * unknown (a suspension, an epoch bump revoking its keys), so its entry is removed, fenced and
     * tombstoned: its keys stop authenticating (no master) until the row is fixed. The event
     * still fails as `InvalidRow`.
     */
    const masterFailsClosed = (id: number, invalid: ControlPlane.InvalidRow) =>
      Effect.flatMap(fresh, (version) => RedisLayout.removeEntry(redis, l, l.master(id), { version, owner: id }, tombstoneMs)).pipe(
        Effect.zipRight(Effect.fail(invalid))
      )

    const syncMaster = (id: number): Effect.Effect<ProjectorResult, ProjectorError> =>
      Effect.gen(function*() {
        const row = yield* withSql(ControlPlane.getMaster(id)).pipe(
          Effect.catchIf((e): e is ControlPlane.InvalidRow => e instanceof ControlPlane.InvalidRow, (e) => masterFailsClosed(id, e))
        )
        if (Option.isSome(row)) {
          const m = row.value
          const result = yield* RedisLayout.writeEntry(redis, l, l.master(id), { version: m.version, owner: id }, Snapshots.masterFields(m))
          yield* RedisLayout.indexMaster(redis, l, id)
          return yield* counted(result)
        }
        // Gone: its keys were cascade-deleted with no event of their own; remove them here.
        const result = yield* Effect.flatMap(fresh, (version) =>
          RedisLayout.removeEntry(redis, l, l.master(id), { version, owner: id }, tombstoneMs)).pipe(Effect.flatMap(removed))
        for (const k of yield* RedisLayout.indexedKeys(redis, l)) {
          if (k.masterId === id) yield* syncKey(k.id, k.tokenHash)
        }
        yield* RedisLayout.unindexMaster(redis, l, id)
        return result
      }).pipe(Effect.withSpan("sync.master", { attributes: { id } }))

    const fieldOf = (m: Model) => {
      const field = Snapshots.modelField(m.name)
      return field === undefined
        ? Effect.fail(new ControlPlane.InvalidRow({ entity: "model", message: `model ${m.id}: name ${JSON.stringify(m.name)} is not a model reference` }))
        : Effect.succeed(field)
    }

    const afterModels = Effect.flatMap(now, (at) => RedisLayout.refreshModelsMeta(redis, l, at))

    /**
     * The newest model other than `except` that files under `field`: several names do (`gpt-4o`,
     * `default.gpt-4o`, ` gpt-4o`), and when the one that held the field goes (deleted, renamed),
     * the field is the next one's, not nobody's.
     */
    const heirOf = (field: string, except: number) =>
      withSql(ControlPlane.modelsMaybeUnder(field)).pipe(
        Effect.map((rows) => rows.find((m) => m.id !== except && Snapshots.modelField(m.name) === field))
      )

    /**
     * `heir`: written as another model's heir, so its own rename is not followed (the sweep does):
     * one step, never a chain.
     */
    const writeOneModel = (m: Model, heir = false): Effect.Effect<ProjectorResult, ProjectorError> =>
      Effect.gen(function*() {
        const field = yield* fieldOf(m)
        // Held by a newer row that is gone (deleted, with or without its event): it fences nothing now.
        const owner = yield* RedisLayout.modelOwner(redis, l, field)
        const gone = owner > m.id && !(yield* withSql(ControlPlane.rowExists("cp_models", owner))) ? owner : 0
        const previous = heir ? null : yield* redis.use((c) => c.hget(l.modelIdRecord(m.id), "f").catch(() => null))
        const result = yield* RedisLayout.writeModel(redis, l, field, { version: m.version, owner: m.id }, Snapshots.modelValue(field, m), tombstoneMs, gone)
        // Renamed: the script removed its old field; another model of that name takes it.
        if (result === "written" && previous !== null && previous !== "" && previous !== field) {
          const next = yield* heirOf(previous, m.id)
          if (next !== undefined) yield* writeOneModel(next, true)
        }
        return yield* counted(result)
      })

    const removeModelField = (field: string, owner: number) =>
      Effect.gen(function*() {
        // Another model files under the same field: it is that model's now.
        const next = yield* heirOf(field, owner)
        if (next !== undefined) return yield* writeOneModel(next, true)
        const version = yield* fresh
        const by = owner > 0 ? owner : yield* RedisLayout.modelOwner(redis, l, field)
        return yield* removed(yield* RedisLayout.writeModel(redis, l, field, { version, owner: by }, null, tombstoneMs))
      })

    const syncModel = (id: number, hint?: string) =>
      Effect.gen(function*() {
        const row = yield* withSql(ControlPlane.getModel(id))
        if (Option.isSome(row)) return yield* writeOneModel(row.value)
        const known = (hint === undefined ? undefined : Snapshots.modelField(hint)) ??
          (yield* redis.use((c) => c.hget(l.modelIdRecord(id), "f"))) ?? undefined
        return known === undefined ? ("absent" as const) : yield* removeModelField(known, id)
      }).pipe(Effect.tap(() => afterModels), Effect.withSpan("sync.model", { attributes: { id } }))

    const deleteModel = (name: string, id?: number): Effect.Effect<ProjectorResult, ProjectorError> =>
      withSql(ControlPlane.getModelByName(name)).pipe(
        Effect.flatMap(Option.match({
          onSome: (m): Effect.Effect<ProjectorResult, ProjectorError> => writeOneModel(m),
          onNone: () => {
            const field = Snapshots.modelField(name)
            return field === undefined ? Effect.succeed("absent" as const) : removeModelField(field, id ?? 0)
          }
        })),
        Effect.tap(() => afterModels),
        Effect.withSpan("sync.model.delete", { attributes: { name } })
      )

    const rebuild = (which: ControlPlane.SnapshotName) =>
      Effect.gen(function*() {
        const source = yield* withSql(ControlPlane.snapshotSource(which))
        const snap = which === "providers"
          ? Snapshots.providers(source.groups, source.apiKeys)
          : Snapshots.bindings(source.bindings, source.groups, source.apiKeys)
        const result = yield* RedisLayout.writeSnapshot(redis, l, which, source.generation, snap.checksum, snap.entries, yield* now)
        // Written without the rows that do not decode (every other change reaches the data plane);
        // the rebuild is still their typed failure, so that the event says which rows to fix.
        if (source.invalid.length > 0) {
          return yield* new ControlPlane.InvalidRow({
            entity: [...new Set(source.invalid.map((e) => e.entity))].join(","),
            message: `the ${which} snapshot was written without ${source.invalid.length} row(s) that do not decode: ${
              source.invalid.map((e) => e.message).join("; ")
            }`
          })
        }
        return yield* counted(result)
      }).pipe(Effect.withSpan(`sync.${which}`))

    const syncAll = Effect.gen(function*() {
      const results: Array<ProjectorResult> = []
      // A row that does not decode fails its own entry, not the rest: collected, reported at the end.
      const invalid: Array<ControlPlane.InvalidRow> = []
      const each = (effect: Effect.Effect<ProjectorResult, ProjectorError>) =>
        Effect.catchIf(
          Effect.map(effect, (r) => void results.push(r)),
          (e): e is ControlPlane.InvalidRow => e instanceof ControlPlane.InvalidRow,
          (e) => Effect.sync(() => void invalid.push(e))
        )
      yield* each(rebuild("providers"))
      yield* each(rebuild("bindings"))
      const masterIds = yield* withSql(ControlPlane.allMasterIds)
      const liveMasters = new Set(masterIds)
      for (const id of masterIds) yield* each(syncMaster(id))
      for (const id of yield* RedisLayout.indexedMasters(redis, l)) {
        if (!liveMasters.has(id)) yield* each(syncMaster(id))
      }
      const keyIds = yield* withSql(ControlPlane.allKeyIds)
      const liveKeys = new Set(keyIds)
      for (const id of keyIds) yield* each(syncKey(id))
      for (const k of yield* RedisLayout.indexedKeys(redis, l)) {
        if (!liveKeys.has(k.id)) yield* each(syncKey(k.id, k.tokenHash))
      }
      const { invalid: badModels, names, rows: models } = yield* withSql(ControlPlane.allModelsDecoded)
      invalid.push(...badModels)
      // The fields of models that do not decode stay as they are (not pruned as gone).
      const fields = new Set<string>(names.flatMap((name) => Snapshots.modelField(name) ?? []))
      for (const m of models) {
        const field = Snapshots.modelField(m.name)
        // One unroutable name (a row from before migration 0002's check) must not stop the rest.
        if (field === undefined) {
          yield* Effect.logWarning(`sync-all: model ${m.id} skipped: ${JSON.stringify(m.name)} is not a model reference`)
          continue
        }
        fields.add(field)
        yield* each(writeOneModel(m))
      }
      // Only fields this service wrote (they have an owner): another writer of `meta:models`
      // (ez-api's models.dev registry) keeps its own.
      for (const field of yield* redis.use((c) => c.hkeys(l.models))) {
        if (fields.has(field)) continue
        const owner = yield* RedisLayout.modelOwner(redis, l, field)
        if (owner > 0) yield* each(removeModelField(field, owner))
      }
      yield* afterModels
      if (invalid.length > 0) {
        return yield* new ControlPlane.InvalidRow({
          entity: [...new Set(invalid.map((e) => e.entity))].join(","),
          message: `sync-all wrote everything else; ${invalid.length} row(s) do not decode: ${invalid.map((e) => e.message).join("; ")}`
        })
      }
      return {
        written: results.filter((r) => r === "written").length,
        stale: results.filter((r) => r === "stale").length,
        removed: results.filter((r) => r === "removed").length
      }
    }).pipe(Effect.withSpan("sync.all"))

    return {
      layout: l,
      tombstoneMs,
      syncMaster,
      syncKey,
      syncModel,
      deleteModel,
      syncProviders: rebuild("providers"),
      syncBindings: rebuild("bindings"),
      syncAll
    } satisfies ProjectorShape
  })

export class Projector extends Context.Tag("sync-outbox/ezapi/Projector")<Projector, ProjectorShape>() {
  static readonly layer = (options: ProjectorOptions = {}): Layer.Layer<Projector, never, SqlClient.SqlClient | RedisSink> =>
    Layer.effect(Projector, make(options))
}
