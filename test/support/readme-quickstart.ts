// Type-checked by `tsc --noEmit -p .`: the README's quick start (handlers.ts and main.ts), kept
// true to the API; scripts/pack-check.ts runs the README's own text against the packed package.
import { SqlClient } from "@effect/sql"
import { Effect, Layer, Schema } from "effect"
import { enqueue, handle, Handlers, type HandlersModule, OutboxEvent, Prometheus, RedisSink, Store, WorkerEnv } from "../../src/index.js"

// 1. An event type, shared by the code that enqueues and the code that applies.
export const PlanChanged = OutboxEvent.make({
  resourceType: "plan",
  action: "update",
  payload: Schema.Struct({ tier: Schema.Literal("free", "pro") }),
  requiresResourceId: true,
  coalesce: true // the handler syncs current state: ten pending edits of one plan collapse into one apply
})

// 2. How it is applied: one handler per event type, in one Handlers layer.
export const layer = Handlers.layer(
  handle(PlanChanged, ({ payload, resourceId }) =>
    Effect.flatMap(RedisSink, (redis) => redis.use((c) => c.hset(`plan:${resourceId}`, "tier", payload.tier))))
)

// What `sync-outbox enqueue --handlers ./dist/handlers.js` accepts and its --help lists.
export const eventTypes = [PlanChanged]

// 3. Enqueue inside your own transaction: a rollback leaves no event, a commit guarantees delivery.
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

// 4. A worker: your handlers, everything else from the environment (DATABASE_URL, REDIS_URL, SYNC_OUTBOX_*).
const WorkerLive = WorkerEnv.layer(layer)

// 5. A plan changes; moments later Redis has it.
const program = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql`CREATE TABLE IF NOT EXISTS plans (id serial PRIMARY KEY, tier text NOT NULL DEFAULT 'free')`
  const [plan] = yield* sql<{ id: number }>`INSERT INTO plans DEFAULT VALUES RETURNING id`
  yield* upgrade(plan!.id)
  const redis = yield* RedisSink
  const tier = yield* redis.use((c) => c.hget(`plan:${plan!.id}`, "tier")).pipe(
    Effect.delay("20 millis"),
    Effect.repeat({ until: (tier) => tier === "pro" }),
    Effect.timeout("10 seconds")
  )
  yield* Effect.log(`plan ${plan!.id} is ${tier} in Redis`)
})

// The README's /metrics example.
const AppLive = Prometheus.layerServer({ port: 9464 }).pipe(
  Layer.provide(Store.layer),
  Layer.provideMerge(WorkerEnv.layer(layer))
)

// The module shape the CLI loads with --handlers.
export const _check = [program.pipe(Effect.provide(WorkerLive)), AppLive, { layer, eventTypes } satisfies HandlersModule] as const
