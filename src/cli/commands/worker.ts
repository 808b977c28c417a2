import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Runtime from "effect/Runtime"
import { oneLine } from "../../Errors.js"
import * as Migrations from "../../Migrations.js"
import { OutboxConfig } from "../../OutboxConfig.js"
import * as Prometheus from "../../Prometheus.js"
import { Admin } from "../../Admin.js"
import * as WorkerEnv from "../../WorkerEnv.js"
import type { Input } from "../spec.js"
import { database, integer, loadHandlers, text, UsageError } from "../shared.js"

export const run = ({ options }: Input) =>
  Effect.gen(function*() {
    // What can be checked without a server is checked first: a typo is not a connection problem.
    const port = integer(options["metrics-port"])
    if (port !== undefined && (port < 0 || port > 65_535)) {
      return yield* new UsageError({ message: `--metrics-port must be from 0 (a free port) to 65535, got ${port}` })
    }
    yield* OutboxConfig.pipe(Effect.provide(OutboxConfig.layerConfig()))
    const specifier = text(options["handlers"]) ?? process.env["SYNC_OUTBOX_HANDLERS"]
    const handlers = yield* loadHandlers(specifier)
    // The built-in sync reads the control-plane tables: say so now rather than on every event.
    if (specifier === undefined || specifier === "") {
      yield* Migrations.verify(["outbox", "control-plane"]).pipe(Effect.provide(database))
    }
    yield* Effect.scoped(
      Effect.gen(function*() {
        yield* survivingStrayRejections
        if (port !== undefined) {
          const host = text(options["metrics-host"]) ?? "127.0.0.1"
          const address = yield* Prometheus.serve({ port, host }).pipe(Effect.provide(Admin.layer))
          yield* Console.log(`metrics on http://${address.host}:${address.port}/metrics`)
        }
        const config = yield* OutboxConfig
        if (!config.enabled) {
          yield* Console.log("worker disabled (SYNC_OUTBOX_ENABLED=false): it claims nothing; SIGTERM or Ctrl-C stops it")
          return yield* Effect.never
        }
        yield* Console.log(
          `worker running (${specifier === undefined || specifier === "" ? "built-in ez-api control-plane sync" : `handlers ${specifier}`}, ${handlers.eventTypes.length} event types; ${handlers.reconciler === undefined ? "no reconciler" : "reconciler on"}; batch ${config.batchSize}, concurrency ${config.concurrency}, ${config.pollOnly ? "poll-only" : "LISTEN " + config.channel}); SIGTERM or Ctrl-C drains and stops`
        )
        return yield* Effect.never
      }).pipe(Effect.provide(Layer.mergeAll(WorkerEnv.layer(handlers.layer, { reconciler: handlers.reconciler }), OutboxConfig.layerConfig())))
    )
  })

/**
 * A promise that rejects with nobody to handle it (a handler's command not awaited, such as
 * `c.expire(key, 60)` beside the awaited write, during a Redis outage) ends a Node process by
 * default. Here it would end the worker with nothing recorded: the event, still leased, comes back
 * after its lease with no attempt counted, to end the next worker the same way, for ever. The
 * worker owns this process: such a rejection is logged as the error it is, and the worker goes on.
 */
const survivingStrayRejections = Effect.acquireRelease(
  Effect.map(Effect.runtime<never>(), (runtime) => {
    const onRejection = (reason: unknown) => {
      // In the command's runtime: its logger.
      Runtime.runFork(runtime)(Effect.logError(
        `sync-outbox: a promise rejected with nothing to handle it (a call not awaited in a handler?); the worker carries on: ${oneLine(reason)}`
      ))
    }
    process.on("unhandledRejection", onRejection)
    return onRejection
  }),
  (onRejection) => Effect.sync(() => process.off("unhandledRejection", onRejection))
)
