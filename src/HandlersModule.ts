/**
 * What `sync-outbox worker --handlers <module>` and `sync-outbox enqueue --handlers <module>` load:
 * an ES module of the application's that exports its `Handlers` layer and the event types it
 * handles. The worker builds the layer inside the worker's environment; `enqueue` needs only the
 * event types (to find the type by name and check the payload), so it never connects to Redis.
 *
 * ```ts
 * // handlers.ts, compiled to handlers.js
 * export const eventTypes = [PlanChanged]
 * export const layer = Handlers.layer(handle(PlanChanged, ...))
 * // optional: how the worker finds and repairs drift in your sink (see Reconciler)
 * export const reconciler = Layer.succeed(Reconciler, { detectLoss, reconcile })
 * ```
 */
import type { SqlClient } from "@effect/sql"
import type { PgClient } from "@effect/sql-pg"
import type * as Layer from "effect/Layer"
import type { PgPool } from "./Database.js"
import type { Handlers } from "./Handlers.js"
import type { OutboxConfig } from "./OutboxConfig.js"
import type { EventType } from "./OutboxEvent.js"
import type { Reconciler } from "./Reconciler.js"
import type { RedisSink } from "./RedisSink.js"

/** The services the CLI's worker offers a handlers layer. */
export type Provided = SqlClient.SqlClient | PgClient.PgClient | PgPool | RedisSink | OutboxConfig

export interface HandlersModule {
  /** The registry the worker runs; it may need any of `Provided`. */
  readonly layer: Layer.Layer<Handlers, unknown, Provided>
  /** Every event type the layer handles: what `enqueue` accepts, and what its help lists. */
  readonly eventTypes: ReadonlyArray<EventType.Any>
  /**
   * Optional: the module's `Reconciler`. The worker then also heals the sink (`Convergence`):
   * a rebuild when it lost its data, a periodic rate-limited sweep.
   */
  readonly reconciler?: Layer.Layer<Reconciler, unknown, Provided> | undefined
}
