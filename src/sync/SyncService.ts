/**
 * The seed's `SyncService`: reads the control plane, writes the data plane. Every write is
 * versioned (stale ones are refused by Redis itself). A row that is gone when its event is
 * applied removes its data-plane entry instead of failing until dead: a removal leaves a
 * short-lived tombstone carrying a fresh version, so no stale write can resurrect the entry.
 */
import { SqlClient, type SqlError } from "@effect/sql"
import { Clock, Context, Duration, Effect, Layer, Metric, Option } from "effect"
import type { SinkCommandError, SinkUnavailable } from "../Errors.js"
import { RedisSink } from "../RedisSink.js"
import * as ControlPlane from "./ControlPlane.js"
import type { Key, Master, Model } from "./Entities.js"
import { layout, type Layout, writeHash, writeModel, writeSnapshot } from "./RedisLayout.js"
import * as Snapshots from "./Snapshots.js"

/** What one sync did to Redis. `absent`: nothing to write and nothing to remove. */
export type SyncResult = "written" | "stale" | "removed" | "absent"

export type SyncError = SqlError.SqlError | ControlPlane.InvalidRow | SinkUnavailable | SinkCommandError

export interface SyncServiceOptions {
  /** Prefix of every Redis key (default `sync`). */
  readonly prefix?: string | undefined
  /** How long a removal's tombstone guards against stale writes (default one day). */
  readonly tombstoneTtl?: Duration.DurationInput | undefined
}

export const staleWrites = Metric.counter("sync_outbox_stale_writes_total", {
  description: "Writes refused by Redis because it held a newer version",
  incremental: true
})

export interface SyncServiceShape {
  readonly layout: Layout
  readonly syncMaster: (id: number) => Effect.Effect<SyncResult, SyncError>
  /** `tokenHash`: the hash the event knew, to remove the entry of a deleted or re-hashed key. */
  readonly syncKey: (id: number, tokenHash?: string | undefined) => Effect.Effect<SyncResult, SyncError>
  /** `name`: the name the event knew, to remove the field of a deleted or renamed model. */
  readonly syncModel: (id: number, name?: string | undefined) => Effect.Effect<SyncResult, SyncError>
  /** The seed's `SyncModelDeleteNow`; when a model of that name exists again, it is synced instead. */
  readonly deleteModel: (name: string) => Effect.Effect<SyncResult, SyncError>
  readonly syncProviders: Effect.Effect<SyncResult, SyncError>
  readonly syncBindings: Effect.Effect<SyncResult, SyncError>
  /** Everything: snapshots, every master, key and model, and model fields no longer in the control plane. */
  readonly syncAll: Effect.Effect<{ readonly written: number; readonly stale: number; readonly removed: number }, SyncError>
}

const json = (value: unknown) => JSON.stringify(value)
const ms = (d: Date | null) => (d === null ? "" : String(d.getTime()))

const masterFields = (m: Master): Record<string, string> => ({
  id: String(m.id),
  name: m.name,
  status: m.status,
  epoch: String(m.epoch),
  group: m.group,
  global_qps: String(m.globalQps),
  default_namespace: m.defaultNamespace,
  namespaces: json(m.namespaces)
})

const keyFields = (k: Key): Record<string, string> =>
  k.status === "suspended"
    // A suspended key keeps nothing that could authenticate a request.
    ? { id: String(k.id), master_id: String(k.masterId), status: "suspended" }
    : {
      id: String(k.id),
      master_id: String(k.masterId),
      status: k.status,
      group: k.group,
      epoch: String(k.masterEpoch),
      master_status: k.masterStatus,
      scopes: json(k.scopes),
      model_limits: json(k.modelLimits),
      allow_ips: json(k.allowIps),
      deny_ips: json(k.denyIps),
      expires_at: ms(k.expiresAt),
      quota_limit: k.quotaLimit === null ? "" : String(k.quotaLimit),
      quota_used: String(k.quotaUsed),
      quota_reset_at: ms(k.quotaResetAt)
    }

export const modelJson = (m: Model) =>
  json({
    id: m.id,
    name: m.name,
    kind: m.kind,
    context_window: m.contextWindow,
    cost_per_token: m.costPerToken,
    max_output_tokens: m.maxOutputTokens,
    supports_streaming: m.supportsStreaming,
    supports_tools: m.supportsTools,
    supports_vision: m.supportsVision,
    supports_json: m.supportsJson,
    version: m.version
  })

const make = (options: SyncServiceOptions) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const redis = yield* RedisSink
    const l = layout(options.prefix ?? "sync")
    const tombstoneMs = Duration.toMillis(options.tombstoneTtl ?? Duration.days(1))
    const withSql = <A, E>(effect: Effect.Effect<A, E, SqlClient.SqlClient>) =>
      Effect.provideService(effect, SqlClient.SqlClient, sql)
    const counted = (result: "written" | "stale") =>
      result === "stale" ? Effect.as(Metric.increment(staleWrites), result) : Effect.succeed(result)

    const tombstone = (key: string) =>
      Effect.gen(function*() {
        const version = yield* withSql(ControlPlane.nextVersion)
        const result = yield* writeHash(redis, key, version, { status: "deleted" }, { ttlMs: tombstoneMs })
        return result === "written" ? ("removed" as const) : yield* counted(result)
      })

    const syncMaster = (id: number) =>
      withSql(ControlPlane.getMaster(id)).pipe(
        Effect.flatMap(Option.match({
          onNone: () => tombstone(l.master(id)),
          onSome: (m) => Effect.flatMap(writeHash(redis, l.master(id), m.version, masterFields(m)), counted)
        })),
        Effect.withSpan("sync.master", { attributes: { id } })
      )

    const syncKey = (id: number, hint?: string) =>
      Effect.gen(function*() {
        const row = yield* withSql(ControlPlane.getKey(id))
        if (Option.isNone(row)) {
          const known = hint ?? (yield* redis.use((c) => c.hget(l.keyIndex, String(id)))) ?? undefined
          if (known === undefined) return "absent" as const
          const result = yield* tombstone(l.key(known))
          yield* redis.use((c) => c.hdel(l.keyIndex, String(id)))
          return result
        }
        const k = row.value
        if (hint !== undefined && hint !== k.tokenHash) yield* tombstone(l.key(hint))
        const result = yield* writeHash(redis, l.key(k.tokenHash), k.version, keyFields(k), {
          // Redis drops an expired key by itself: it stops authenticating on time.
          expireAt: k.status === "active" ? k.expiresAt : null
        })
        yield* redis.use((c) => c.hset(l.keyIndex, String(id), k.tokenHash))
        return yield* counted(result)
      }).pipe(Effect.withSpan("sync.key", { attributes: { id } }))

    const removeModel = (name: string) =>
      Effect.gen(function*() {
        const version = yield* withSql(ControlPlane.nextVersion)
        const result = yield* writeModel(redis, l, name, version, null, null)
        return result === "written" ? ("removed" as const) : yield* counted(result)
      })

    const writeOneModel = (m: Model) => Effect.flatMap(writeModel(redis, l, m.name, m.version, modelJson(m), m.id), counted)

    const syncModel = (id: number, hint?: string) =>
      Effect.gen(function*() {
        const row = yield* withSql(ControlPlane.getModel(id))
        if (Option.isNone(row)) {
          const known = hint ?? (yield* redis.use((c) => c.hget(l.modelIds, String(id)))) ?? undefined
          return known === undefined ? ("absent" as const) : yield* deleteModel(known)
        }
        const m = row.value
        // Renamed since the event: the old name's field goes.
        if (hint !== undefined && hint !== m.name) yield* deleteModel(hint)
        return yield* writeOneModel(m)
      }).pipe(Effect.withSpan("sync.model", { attributes: { id } }))

    const deleteModel = (name: string): Effect.Effect<SyncResult, SyncError> =>
      withSql(ControlPlane.getModelByName(name)).pipe(
        Effect.flatMap(Option.match({ onNone: () => removeModel(name), onSome: writeOneModel })),
        Effect.withSpan("sync.model.delete", { attributes: { name } })
      )

    const rebuild = (which: "providers" | "bindings") =>
      Effect.gen(function*() {
        const source = yield* withSql(ControlPlane.snapshotSource)
        const snap = which === "providers"
          ? Snapshots.providers(source.groups, source.apiKeys)
          : Snapshots.bindings(source.bindings, source.groups, source.apiKeys)
        const now = new Date(yield* Clock.currentTimeMillis)
        const [hash, meta] = which === "providers" ? [l.providers, l.providersMeta] : [l.bindings, l.bindingsMeta]
        return yield* Effect.flatMap(writeSnapshot(redis, hash, meta, source.version, now, snap.checksum, snap.entries), counted)
      }).pipe(Effect.withSpan(`sync.${which}`))

    const syncAll = Effect.gen(function*() {
      const results: Array<SyncResult> = []
      results.push(yield* rebuild("providers"), yield* rebuild("bindings"))
      for (const id of yield* withSql(ControlPlane.allMasterIds)) results.push(yield* syncMaster(id))
      for (const id of yield* withSql(ControlPlane.allKeyIds)) results.push(yield* syncKey(id))
      const models = yield* withSql(ControlPlane.allModels)
      for (const m of models) results.push(yield* writeOneModel(m))
      const names = new Set(models.map((m) => m.name))
      for (const field of yield* redis.use((c) => c.hkeys(l.models))) {
        if (!names.has(field)) results.push(yield* removeModel(field))
      }
      return {
        written: results.filter((r) => r === "written").length,
        stale: results.filter((r) => r === "stale").length,
        removed: results.filter((r) => r === "removed").length
      }
    }).pipe(Effect.withSpan("sync.all"))

    return {
      layout: l,
      syncMaster,
      syncKey,
      syncModel,
      deleteModel,
      syncProviders: rebuild("providers"),
      syncBindings: rebuild("bindings"),
      syncAll
    } satisfies SyncServiceShape
  })

export class SyncService extends Context.Tag("sync-outbox/SyncService")<SyncService, SyncServiceShape>() {
  static readonly layer = (options: SyncServiceOptions = {}): Layer.Layer<SyncService, never, SqlClient.SqlClient | RedisSink> =>
    Layer.effect(SyncService, make(options))
}
