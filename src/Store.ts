/**
 * The outbox as one service, for callers written before it was split: `Store` is `Leases` (the
 * worker's lease protocol) and `Admin` (the operator's queries) behind one tag, and this module
 * re-exports the producer's `enqueue` family. `Store.layer` provides all three tags, so a worker
 * built on it finds its `Leases`. New code asks for `Leases` or `Admin`, and imports `Enqueue`.
 */
import type { SqlClient } from "@effect/sql"
import { Context, Duration, Effect, Layer } from "effect"
import { Admin, type AdminShape } from "./Admin.js"
import { Leases, type LeasesOptions, type LeasesShape } from "./Leases.js"

export { type AnyEvent, enqueue, enqueueMany, enqueueWith, event } from "./Enqueue.js"
export type { DeadSelector, LiveWorker, Stats } from "./Admin.js"
export type { Claimed, Failure, Journaling, WorkerRow } from "./Leases.js"

export interface StoreShape extends LeasesShape, AdminShape {}

/** Options of `Store.layerWith` (those of `Leases.layerWith`). */
export type StoreOptions = LeasesOptions

export class Store extends Context.Tag("sync-outbox/Store")<Store, StoreShape>() {
  static readonly layerWith = (options: StoreOptions): Layer.Layer<Store | Leases | Admin, never, SqlClient.SqlClient> =>
    Layer.provideMerge(
      Layer.effect(Store, Effect.map(Effect.all([Leases, Admin]), ([leases, admin]): StoreShape => ({ ...leases, ...admin }))),
      Layer.merge(Leases.layerWith(options), Admin.layer)
    )
  /** With the default `callTimeout` (10 s) for a `SqlClient` without a `PgPool`. */
  static readonly layer: Layer.Layer<Store | Leases | Admin, never, SqlClient.SqlClient> = Store.layerWith({
    callTimeout: Duration.seconds(10)
  })
}
