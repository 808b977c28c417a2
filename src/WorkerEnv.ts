/**
 * The worker, assembled from the environment: `DATABASE_URL`, `REDIS_URL` (or
 * `REDIS_CLUSTER_NODES`) and the `SYNC_OUTBOX_*` settings. Give it your handlers. The outbox
 * tables must exist (`sync-outbox migrate`): a database without them fails at start with the fix.
 *
 * `Worker.layer` is the same worker with every service given by you; this module only reads the
 * environment and wires them. (It was `SyncOutbox.layerWorker` before 0.2.)
 */
import { Effect, Layer } from "effect"
import * as Convergence from "./Convergence.js"
import * as Database from "./Database.js"
import type { Handlers } from "./Handlers.js"
import { Listener } from "./Listener.js"
import * as Migrations from "./Migrations.js"
import type { Reconciler } from "./Reconciler.js"
import { OutboxConfig } from "./OutboxConfig.js"
import { RedisSink } from "./RedisSink.js"
import { Store } from "./Store.js"
import { Worker } from "./Worker.js"

/**
 * Everything a worker process needs, with its dependencies wired: the handlers layer may
 * itself need the `SqlClient` and `RedisSink` (the ez-api handlers, `sync-outbox/ezapi`, do), and gets them here.
 * Given a `reconciler`, the worker also heals its sink (`Convergence`: a rebuild when the sink
 * lost its data, a periodic sweep; `SYNC_OUTBOX_RECONCILE_*`, `SYNC_OUTBOX_LOSS_CHECK_INTERVAL`).
 */
export const layer = <E, R, E2 = never, R2 = never>(
  handlers: Layer.Layer<Handlers, E, R>,
  options: { readonly reconciler?: Layer.Layer<Reconciler, E2, R2> | undefined } = {}
) =>
  Layer.unwrapEffect(
    Effect.gen(function*() {
      const outbox = yield* OutboxConfig
      const url = yield* Database.urlConfig()
      const listener = outbox.pollOnly ? Listener.off : Listener.layer({ url, channel: outbox.channel })
      const worker = Worker.layer.pipe(
        Layer.provide(Layer.mergeAll(Store.layerWith({ callTimeout: outbox.callTimeout, asyncCommit: outbox.asyncCommit }), listener, handlers)),
        Layer.provideMerge(Layer.succeed(OutboxConfig, outbox))
      )
      // A database that was never migrated fails here, once, with the fix, rather than in every claim.
      const checked = Layer.flatMap(Layer.effectDiscard(Migrations.verify(["outbox"])), () => worker)
      if (options.reconciler === undefined || !outbox.enabled) return checked
      return Layer.merge(
        checked,
        Convergence.layer.pipe(Layer.provide(Layer.merge(
          options.reconciler.pipe(Layer.provide(Layer.succeed(OutboxConfig, outbox))),
          Convergence.ConvergenceConfig.layerConfig()
        )))
      )
    }).pipe(Effect.provide(OutboxConfig.layerConfig()))
  ).pipe(Layer.provideMerge(Layer.merge(Database.layerConfig(), RedisSink.layerConfig())))
