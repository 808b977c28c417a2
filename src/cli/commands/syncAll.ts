import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { RedisSink } from "../../RedisSink.js"
import { enqueue } from "../../Enqueue.js"
import * as Events from "../../ezapi/Events.js"
import { Projector } from "../../ezapi/Projector.js"
import type { Input } from "../spec.js"
import { database } from "../shared.js"

export const run = ({ options }: Input): Effect.Effect<void, unknown> =>
  options["enqueue"] === true
    ? Effect.flatMap(enqueue(Events.SnapshotSyncAll, { payload: null }), (id) => Console.log(`enqueued ${id}`)).pipe(
      Effect.provide(database)
    )
    : Effect.gen(function*() {
      const sync = yield* Projector
      const result = yield* sync.syncAll
      yield* Console.log(`written ${result.written}, removed ${result.removed}, refused as stale ${result.stale}`)
    }).pipe(Effect.provide(Projector.layer().pipe(Layer.provideMerge(Layer.merge(database, RedisSink.layerConfig())))))
