/**
 * The Go service's `applyItem` as handler registrations: (resource type, action) to a `Projector`
 * call. A pair not listed here is an `UnknownEventType`, recorded on the row.
 */
import { Effect, Layer } from "effect"
import { handle, type Handler, Handlers } from "../Handlers.js"
import * as Events from "./Events.js"
import { Projector } from "./Projector.js"

const needId = (id: number | null) => id ?? 0

export const handlers: ReadonlyArray<Handler<Projector>> = [
  ...[Events.MasterCreate, Events.MasterUpdate, Events.MasterUpsert, Events.MasterDelete, Events.MasterSync].map((type) =>
    handle(type, ({ resourceId }) => Effect.flatMap(Projector, (s) => s.syncMaster(needId(resourceId))))
  ),
  ...[Events.KeyCreate, Events.KeyUpdate, Events.KeyUpsert, Events.KeyDelete, Events.KeySync].map((type) =>
    handle(type, ({ payload, resourceId }) => Effect.flatMap(Projector, (s) => s.syncKey(needId(resourceId), payload?.tokenHash)))
  ),
  ...[Events.ModelCreate, Events.ModelUpdate, Events.ModelUpsert, Events.ModelSync].map((type) =>
    handle(type, ({ payload, resourceId }) => Effect.flatMap(Projector, (s) => s.syncModel(needId(resourceId), payload?.name)))
  ),
  handle(Events.ModelDelete, ({ payload, resourceId }) =>
    Effect.flatMap(Projector, (s) => s.deleteModel(payload.name, resourceId ?? undefined))),
  ...[Events.ProviderGroupSyncProviders, Events.ApiKeySyncProviders, Events.SnapshotSyncProviders].map((type) =>
    handle(type, () => Effect.flatMap(Projector, (s) => s.syncProviders))
  ),
  ...[
    Events.ProviderGroupSyncBindings,
    Events.ApiKeySyncBindings,
    Events.BindingCreate,
    Events.BindingUpdate,
    Events.BindingUpsert,
    Events.BindingDelete,
    Events.BindingSync,
    Events.BindingSyncBindings,
    Events.SnapshotSyncBindings
  ].map((type) => handle(type, () => Effect.flatMap(Projector, (s) => s.syncBindings))),
  handle(Events.SnapshotSyncAll, () => Effect.flatMap(Projector, (s) => s.syncAll))
]

/** These registrations as a `Handlers` layer, for a worker that runs only the ez-api domain. */
export const layer: Layer.Layer<Handlers, never, Projector> = Handlers.layer(...handlers)
