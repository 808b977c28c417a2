/**
 * ez-api's control-plane domain: an LLM gateway's masters, keys, models, provider groups,
 * api keys and bindings, kept in Redis for its data plane. One registration among possible others:
 * the engine does not depend on it.
 */
import { Clock, Effect, Exit } from "effect"
import { enqueue } from "../Enqueue.js"
import { Handlers } from "../Handlers.js"
import * as OutboxEvent from "../OutboxEvent.js"
import { Projector, type ProjectorError, type ProjectorOptions, type ProjectorResult, type ProjectorShape } from "./Projector.js"

export * as ControlPlane from "./ControlPlane.js"
export * as Entities from "./Entities.js"
export * as Events from "./Events.js"
export * as Contract from "./Contract.js"
export * as DataPlane from "./DataPlane.js"
export * as Inferred from "./Inferred.js"
export * as RedisLayout from "./RedisLayout.js"
export * as Snapshots from "./Snapshots.js"
export * as Dispatch from "./Dispatch.js"
export * as DataPlaneReconciler from "./DataPlaneReconciler.js"
export { Projector } from "./Projector.js"
export type { ProjectorError, ProjectorOptions, ProjectorResult, ProjectorShape } from "./Projector.js"

// The names of 0.1.0, kept for one release so that code written against them still compiles;
// each says what it became.
/** @deprecated Renamed to `Dispatch` (the event-type to `Projector` registrations); kept for one release. */
export * as SyncHandlers from "./Dispatch.js"
/** @deprecated Renamed to `DataPlaneReconciler`; kept for one release. */
export * as SyncReconciler from "./DataPlaneReconciler.js"
/** @deprecated Renamed to `Projector` (it projects control-plane rows onto the data plane); kept for one release. */
export const SyncService: typeof Projector = Projector
/** @deprecated Renamed to `Projector`; kept for one release. */
export type SyncService = Projector
/** @deprecated Renamed to `ProjectorError`; kept for one release. */
export type SyncError = ProjectorError
/** @deprecated Renamed to `ProjectorResult`; kept for one release. */
export type SyncResult = ProjectorResult
/** @deprecated Renamed to `ProjectorOptions`; kept for one release. */
export type SyncServiceOptions = ProjectorOptions
/** @deprecated Renamed to `ProjectorShape`; kept for one release. */
export type SyncServiceShape = ProjectorShape

/**
 * The Go service's way: try to apply the event now; if that fails for any reason, enqueue it so the
 * worker retries. Prefer the outbox way (`ControlPlane.create*`/`update*`/`delete*`, or `enqueue`
 * in the same transaction as your change): here a crash between the change and the enqueue
 * still loses the event, as it did in the Go service.
 */
export const syncNowOrEnqueue = <A, I>(type: OutboxEvent.EventType<A, I>, input: OutboxEvent.EventInput<NoInfer<A>>) =>
  Effect.gen(function*() {
    const handlers = yield* Handlers
    const encoded = yield* OutboxEvent.encode(type, input)
    const now = yield* Clock.currentTimeMillis
    const exit = yield* Effect.exit(
      handlers.apply({
        id: "0",
        resourceType: encoded.resourceType,
        action: encoded.action,
        resourceId: encoded.resourceId,
        orderingKey: encoded.orderingKey,
        payload: encoded.payload,
        coalesce: encoded.coalesce,
        retryCount: 0,
        createdAt: new Date(now)
      })
    )
    if (Exit.isSuccess(exit)) return { _tag: "Applied" as const }
    const id = yield* enqueue(type, input)
    return { _tag: "Enqueued" as const, id }
  })
