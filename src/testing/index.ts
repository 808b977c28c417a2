/**
 * sync-outbox/testing: a user's outbox code under `TestClock`, with no server. The real worker
 * runs on an in-memory outbox (`OutboxTest.layerMemory`, no database to start) or on the
 * library's SQL on PGlite (`OutboxTest.layer`, for code that runs SQL of its own; an optional
 * peer dependency: `npm install -D @electric-sql/pglite`); handlers write to an in-memory Redis
 * the test controls.
 */
export * as MemoryOutbox from "./MemoryOutbox.js"
export * as MemoryRedis from "./MemoryRedis.js"
export {
  DrainTimeout,
  InvalidAdvance,
  layer,
  layerMemory,
  layerWith,
  OutboxTest,
  SchemaFailed,
  SinkControl,
  TestSink
} from "./OutboxTest.js"
export type { DrainReport, EventSummary, FailedAttempt, Inspected, OutboxTestOptions, OutboxTestShape } from "./OutboxTest.js"
export * as PgliteClient from "./PgliteClient.js"
export { Pglite, PgliteMissing } from "./PgliteClient.js"
