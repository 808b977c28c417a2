// Type-checked by CI (tsc): the README's quick start, kept true to the API. Regenerate it when the README changes.
import { SqlClient } from "@effect/sql"
import { Effect, Schema } from "effect"
import { enqueue, handle, Handlers, OutboxEvent, RedisSink, SyncOutbox } from "../../src/index.js"

// 1. An event type, shared by the code that enqueues and the code that applies.
export const PlanChanged = OutboxEvent.make({
  resourceType: "plan",
  action: "update",
  payload: Schema.Struct({ tier: Schema.Literal("free", "pro") }),
  requiresResourceId: true,
  coalesce: true // the handler syncs current state: ten pending edits of one plan collapse into one apply
})

// 2. Enqueue inside your own transaction: a rollback leaves no event, a commit guarantees delivery.
const upgrade = (id: number) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    yield* sql.withTransaction(
      Effect.gen(function*() {
        yield* sql`UPDATE plans SET tier = 'pro' WHERE id = ${id}`
        yield* enqueue(PlanChanged, { resourceId: id, payload: { tier: "pro" } }) // InvalidPayload if it does not fit the schema
      })
    )
  })

// 3. A worker: the handlers, and everything else from the environment (DATABASE_URL, REDIS_URL, SYNC_OUTBOX_*).
const handlers = Handlers.layer(
  handle(PlanChanged, ({ payload, resourceId }) =>
    Effect.flatMap(RedisSink, (redis) => redis.use((c) => c.hset(`plan:${resourceId}`, "tier", payload.tier))))
)
const WorkerLive = SyncOutbox.layerWorker(handlers) // a scoped layer: one worker per scope, drained on close

export const _check = [upgrade, WorkerLive] as const
