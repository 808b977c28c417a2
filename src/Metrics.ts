/**
 * The library's metrics, as Effect `Metric`s. Nothing is exported anywhere by the library itself:
 * the CLI's worker serves them as Prometheus text, and an application may read them its own way.
 */
import { Metric, MetricBoundaries } from "effect"

export const enqueued = Metric.counter("sync_outbox_enqueued_total", {
  description: "Events written to the outbox by this process",
  incremental: true
})
export const applied = Metric.counter("sync_outbox_applied_total", {
  description: "Events applied and deleted",
  incremental: true
})
export const failed = Metric.counter("sync_outbox_failed_total", {
  description: "Failed attempts counted against an event",
  incremental: true
})
export const dead = Metric.counter("sync_outbox_dead_total", {
  description: "Events parked as dead letters",
  incremental: true
})
export const superseded = Metric.counter("sync_outbox_superseded_total", {
  description: "Pending events collapsed into a newer event of the same resource",
  incremental: true
})
export const released = Metric.counter("sync_outbox_released_total", {
  description: "Claimed events handed back without an attempt (sink unavailable, shutdown)",
  incremental: true
})
export const leasesLost = Metric.counter("sync_outbox_leases_lost_total", {
  description: "Leases this worker's claims found run out with no outcome recorded (a worker killed, crashed or cut off from Postgres), each counted as a failed attempt",
  incremental: true
})
export const breakerTransitions = Metric.counter("sync_outbox_breaker_transitions_total", {
  description: "Breaker openings and closings",
  incremental: true
})
/** 1 while the breaker is open (Redis unavailable), 0 while closed. */
export const breakerOpen = Metric.gauge("sync_outbox_breaker_open", {
  description: "1 while the sink is unavailable and claiming is paused"
})
export const loopErrors = Metric.counter("sync_outbox_loop_errors_total", {
  description: "Times the worker loop failed (Postgres unreachable, a statement timed out) and restarted",
  incremental: true
})
export const latency = Metric.histogram(
  "sync_outbox_apply_latency_ms",
  MetricBoundaries.fromIterable([0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 5_000, 30_000]),
  "Enqueue (row created) to applied, in milliseconds"
)
export const queueDepth = Metric.gauge("sync_outbox_pending", { description: "Pending events" })
export const deadDepth = Metric.gauge("sync_outbox_dead", { description: "Dead letters" })
export const oldestAge = Metric.gauge("sync_outbox_oldest_pending_age_seconds", {
  description: "Age of the oldest pending event"
})

// Convergence (see Convergence.ts): tagged by family (and kind: missing, stale, orphaned).
export const driftFound = Metric.counter("sync_outbox_drift_found_total", {
  description: "Data-plane entries found missing, stale or orphaned by a reconcile",
  incremental: true
})
export const driftRepaired = Metric.counter("sync_outbox_drift_repaired_total", {
  description: "Data-plane entries written or removed by a reconcile",
  incremental: true
})
export const dataLoss = Metric.counter("sync_outbox_sink_data_loss_total", {
  description: "Incidents of the sink losing its data (restarted empty, failover), each followed by a rebuild",
  incremental: true
})
export const reconcileLastRun = Metric.gauge("sync_outbox_reconcile_last_run_timestamp_seconds", {
  description: "When this process last finished a reconcile (unix seconds)"
})
export const reconcileDuration = Metric.gauge("sync_outbox_reconcile_duration_ms", {
  description: "How long this process's last reconcile took, in milliseconds"
})
export const journalRows = Metric.gauge("sync_outbox_journal_rows", {
  description: "Applied events kept in the journal (exact up to 100,000, then the planner's estimate)"
})
export const journalOldestAge = Metric.gauge("sync_outbox_journal_oldest_age_seconds", {
  description: "Age of the oldest journal entry (0 when empty); about the retention when pruning keeps up"
})
