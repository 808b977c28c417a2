/**
 * sync-outbox: keep Redis in step with a Postgres control plane through a transactional outbox.
 *
 * Producers: define `EventType`s, call `enqueue` inside their own `sql.withTransaction`.
 * Workers: provide `Handlers`, a `SqlClient`, `Leases`, `RedisSink`, `OutboxConfig`, a `Listener`,
 * and build `Worker.layer` (or `WorkerEnv.layer`, which reads all of it from the environment).
 * Operators: `Admin` (queue stats, dead letters, live workers).
 */
import { layer as WorkerEnvLayer } from "./WorkerEnv.js"

export * as Convergence from "./Convergence.js"
export { ConvergenceConfig } from "./Convergence.js"
export type { ConvergenceConfigShape, LastRun, RunReason } from "./Convergence.js"
export { Admin } from "./Admin.js"
export type { AdminShape, DeadSelector, LiveWorker, Stats } from "./Admin.js"
export * as Database from "./Database.js"
export * as InFlight from "./InFlight.js"
export * from "./Errors.js"
export { ApplyOutcome, handle, handleBatch, Handlers } from "./Handlers.js"
export type { ApplyAllOptions, Applying, BatchResult, Handler, HandlersShape } from "./Handlers.js"
export * as Journal from "./Journal.js"
export type { HandlersModule } from "./HandlersModule.js"
export { Listener } from "./Listener.js"
export type { ListenerOptions, ListenerShape, ListenerState, Wakeup } from "./Listener.js"
export * as Metrics from "./Metrics.js"
export * as Migrations from "./Migrations.js"
export { OutboxConfig } from "./OutboxConfig.js"
export type { OutboxConfigShape } from "./OutboxConfig.js"
export * as OutboxEvent from "./OutboxEvent.js"
export type { ClaimedEvent, EventInput, EventType, StoredEvent } from "./OutboxEvent.js"
export { classify, isUnavailable, RedisSink } from "./RedisSink.js"
export type { RedisClient, RedisOptions, RedisSinkShape } from "./RedisSink.js"
export { DriftCounter, driftOf, Reconciler, ReconcileError, totalDrift } from "./Reconciler.js"
export type { DriftReport, FamilyDrift, ReconcileOptions, ReconcilerShape } from "./Reconciler.js"
export * as Prometheus from "./Prometheus.js"
export * as Retry from "./Retry.js"
export { enqueue, enqueueMany, enqueueWith, event } from "./Enqueue.js"
export type { AnyEvent } from "./Enqueue.js"
export { Leases } from "./Leases.js"
export type { Claimed, Failure, Journaling, LeasesOptions, LeasesShape, WorkerRow } from "./Leases.js"
export { Store } from "./Store.js"
export type { StoreOptions, StoreShape } from "./Store.js"
export * as WorkerEnv from "./WorkerEnv.js"
/** @deprecated Renamed after 0.1.0 to `WorkerEnv.layer` (the worker assembled from the environment); kept for one release. */
export const SyncOutbox: { readonly layerWorker: typeof WorkerEnvLayer } = { layerWorker: WorkerEnvLayer }
export { Worker } from "./Worker.js"
export type { BreakerState, LoopState, WorkerShape } from "./Worker.js"
