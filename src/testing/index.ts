/**
 * sync-outbox/testing: a user's outbox code under `TestClock`, with no server. The real worker
 * and SQL run on PGlite (an optional peer dependency: `npm install -D @electric-sql/pglite`),
 * handlers write to an in-memory Redis the test controls.
 */
export * as MemoryRedis from "./MemoryRedis.js"
export {
  DrainTimeout,
  InvalidAdvance,
  layer,
  OutboxTest,
  layerWith,
  SchemaFailed,
  SinkControl,
  TestSink
} from "./OutboxTest.js"
export type { DrainReport, EventSummary, FailedAttempt, Inspected, OutboxTestOptions, OutboxTestShape } from "./OutboxTest.js"
export * as PgliteClient from "./PgliteClient.js"
export { Pglite, PgliteMissing } from "./PgliteClient.js"
