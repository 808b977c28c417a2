/** The built-in ez-api control-plane sync as a handlers module: what the CLI runs without `--handlers`. */
import * as Layer from "effect/Layer"
import type { HandlersModule } from "../HandlersModule.js"
import * as Dispatch from "../ezapi/Dispatch.js"
import * as DataPlaneReconciler from "../ezapi/DataPlaneReconciler.js"
import { Projector } from "../ezapi/Projector.js"

export const module: HandlersModule = {
  layer: Dispatch.layer.pipe(Layer.provide(Projector.layer())),
  eventTypes: Dispatch.handlers.map((handler) => handler.type),
  reconciler: DataPlaneReconciler.layer().pipe(Layer.provide(Projector.layer()))
}
