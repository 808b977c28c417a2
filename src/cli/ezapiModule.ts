/** The built-in control-plane sync as a handlers module: what the CLI runs without `--handlers`. */
import * as Layer from "effect/Layer"
import type { HandlersModule } from "../HandlersModule.js"
import * as SyncHandlers from "../sync/SyncHandlers.js"
import * as SyncReconciler from "../sync/SyncReconciler.js"
import { SyncService } from "../sync/SyncService.js"

export const module: HandlersModule = {
  layer: SyncHandlers.layer.pipe(Layer.provide(SyncService.layer())),
  eventTypes: SyncHandlers.handlers.map((handler) => handler.type),
  reconciler: SyncReconciler.layer().pipe(Layer.provide(SyncService.layer()))
}
