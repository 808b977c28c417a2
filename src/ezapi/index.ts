/**
 * The control-plane domain of the seed: an LLM gateway's masters, keys, models, provider groups,
 * api keys and bindings, kept in Redis for its data plane. One registration among possible others:
 * the engine does not depend on it.
 */
import { Clock, Effect, Exit } from "effect"
import { enqueue } from "../Store.js"
import { Handlers } from "../Handlers.js"
import * as OutboxEvent from "../OutboxEvent.js"

export * as ControlPlane from "./ControlPlane.js"
export * as Entities from "./Entities.js"
export * as Events from "./Events.js"
export * as Contract from "./Contract.js"
export * as DataPlane from "./DataPlane.js"
export * as Inferred from "./Inferred.js"
export * as RedisLayout from "./RedisLayout.js"
export * as Snapshots from "./Snapshots.js"
export * as SyncHandlers from "./SyncHandlers.js"
export * as SyncReconciler from "./SyncReconciler.js"
export { SyncService } from "./SyncService.js"
export type { SyncError, SyncResult, SyncServiceOptions, SyncServiceShape } from "./SyncService.js"

/**
 * The seed's way: try to apply the event now; if that fails for any reason, enqueue it so the
 * worker retries. Prefer the outbox way (`ControlPlane.create*`/`update*`/`delete*`, or `enqueue`
 * in the same transaction as your change): here a crash between the change and the enqueue
 * still loses the event, as it did in the seed.
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
