/**
 * The Go service's dispatch vocabulary as event types. Every handler here syncs current state (it reads
 * the control plane when applied), so every type coalesces: a newer event of the same resource
 * makes older pending ones redundant. Ordering keys serialise what must not interleave: one
 * master, one key, one model *name* (so a delete never overtakes a newer create of that name),
 * and each snapshot. Correctness does not rest on them alone: every write is versioned and owned
 * by its row, and snapshots are fenced (see RedisLayout, ControlPlane.snapshotSource), so paths
 * that bypass ordering (`sync-all`, `syncNowOrEnqueue`, `snapshot:all` beside `snapshot:providers`)
 * cannot put older data back.
 */
import { createHash } from "node:crypto"
import { Schema } from "effect"
import * as OutboxEvent from "../OutboxEvent.js"

const TokenHash = Schema.String.pipe(Schema.pattern(/^[0-9a-f]{64}$/))
/** The Go service's events carried no payload: null or any object is accepted. */
const NoPayload = Schema.NullOr(Schema.Struct({}))
const KeyPayload = Schema.NullOr(Schema.Struct({ tokenHash: Schema.optional(TokenHash) }))
const ModelPayload = Schema.NullOr(Schema.Struct({ name: Schema.optional(Schema.NonEmptyTrimmedString) }))
/** The row is gone when a model delete is applied: the name must travel with the event. */
const ModelDeletePayload = Schema.Struct({ name: Schema.NonEmptyTrimmedString })

/**
 * The Go service reloads the row for any action of a master, key or model (but a model's `delete`),
 * and rebuilds the bindings for any binding action: these are the actions its callers used,
 * `upsert` and `sync` included. Any other pair stays an `UnknownEventType`.
 */
export const MasterActions = ["create", "update", "upsert", "delete", "sync"] as const
export const KeyActions = ["create", "update", "upsert", "delete", "sync"] as const
export const ModelActions = ["create", "update", "upsert", "sync"] as const

const master = (action: (typeof MasterActions)[number]) =>
  OutboxEvent.make({ resourceType: "master", action, payload: NoPayload, coalesce: true, requiresResourceId: true })
const key = (action: (typeof KeyActions)[number]) =>
  OutboxEvent.make({ resourceType: "key", action, payload: KeyPayload, coalesce: true, requiresResourceId: true })
/**
 * A model's ordering key is its name. The outbox refuses keys over 2,000 bytes (Postgres's index on
 * the key holds little more), so a longer name is keyed by its digest: the same name, the same key.
 */
const modelKey = (name: string) =>
  new TextEncoder().encode(name).length <= 1_024 ? `model:${name}` : `model:sha256:${createHash("sha256").update(name, "utf8").digest("hex")}`

const model = (action: (typeof ModelActions)[number]) =>
  OutboxEvent.make({
    resourceType: "model",
    action,
    payload: ModelPayload,
    coalesce: true,
    requiresResourceId: true,
    orderingKey: ({ payload, resourceId }) => (payload?.name ? modelKey(payload.name) : `model:#${resourceId}`)
  })
const snapshot = (resourceType: string, action: string, which: "providers" | "bindings" | "all") =>
  OutboxEvent.make({ resourceType, action, payload: NoPayload, coalesce: true, orderingKey: () => `snapshot:${which}` })

export const MasterCreate = master("create")
export const MasterUpdate = master("update")
export const MasterUpsert = master("upsert")
export const MasterDelete = master("delete")
export const MasterSync = master("sync")

export const KeyCreate = key("create")
export const KeyUpdate = key("update")
export const KeyUpsert = key("upsert")
export const KeyDelete = key("delete")
export const KeySync = key("sync")

export const ModelCreate = model("create")
export const ModelUpdate = model("update")
export const ModelUpsert = model("upsert")
export const ModelSync = model("sync")
export const ModelDelete = OutboxEvent.make({
  resourceType: "model",
  action: "delete",
  payload: ModelDeletePayload,
  coalesce: true,
  orderingKey: ({ payload }) => modelKey(payload.name)
})

export const ProviderGroupSyncProviders = snapshot("provider_group", "sync_providers", "providers")
export const ProviderGroupSyncBindings = snapshot("provider_group", "sync_bindings", "bindings")
export const ApiKeySyncProviders = snapshot("api_key", "sync_providers", "providers")
export const ApiKeySyncBindings = snapshot("api_key", "sync_bindings", "bindings")

export const BindingCreate = snapshot("binding", "create", "bindings")
export const BindingUpdate = snapshot("binding", "update", "bindings")
export const BindingUpsert = snapshot("binding", "upsert", "bindings")
export const BindingDelete = snapshot("binding", "delete", "bindings")
export const BindingSync = snapshot("binding", "sync", "bindings")
export const BindingSyncBindings = snapshot("binding", "sync_bindings", "bindings")

export const SnapshotSyncAll = snapshot("snapshot", "sync_all", "all")
export const SnapshotSyncBindings = snapshot("snapshot", "sync_bindings", "bindings")
export const SnapshotSyncProviders = snapshot("snapshot", "sync_providers", "providers")
