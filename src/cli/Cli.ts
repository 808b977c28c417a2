/**
 * The operator's command line: migrate, run a worker (with `/metrics`), status, dead letters,
 * enqueue one event, force a full resync. Built on the public API only. Environment:
 * DATABASE_URL, REDIS_URL (or REDIS_CLUSTER_NODES) and the SYNC_OUTBOX_* settings.
 */
import { Args, Command, Options } from "@effect/cli"
import { SqlClient } from "@effect/sql"
import { Config, Console, Duration, Effect, Layer, Metric, Option, Schema } from "effect"
import { createServer } from "node:http"
import {
  Database,
  enqueue,
  Handlers,
  InvalidPayload,
  Metrics,
  Migrations,
  OutboxConfig,
  OutboxEvent,
  RedisSink,
  Store,
  SyncOutbox
} from "../index.js"
import * as Journal from "../Journal.js"
import * as Prometheus from "../Prometheus.js"
import { journalCommands, retentionLine } from "./journal.js"
import { SyncHandlers, SyncService } from "../sync/index.js"
import { Events } from "../sync/index.js"

const database = Database.layerConfig()
const storeLayer = Store.layer.pipe(Layer.provideMerge(database))
const syncHandlers = SyncHandlers.layer.pipe(Layer.provideMerge(SyncService.layer()))

const ms = (n: number | null) =>
  n === null ? "-" : n < 1_000 ? `${Math.round(n)}ms` : n < 120_000 ? `${(n / 1_000).toFixed(1)}s` : `${Math.round(n / 60_000)}m`
const pad = (s: string | number, n: number) => String(s).padStart(n)

// ---------------------------------------------------------------------------------------------

const migrate = Command.make(
  "migrate",
  { engineOnly: Options.boolean("engine-only").pipe(Options.withDescription("Only the outbox tables, not the control-plane schema")) },
  ({ engineOnly }) =>
    Effect.gen(function*() {
      const applied = yield* Migrations.run(engineOnly ? ["outbox"] : ["outbox", "control-plane"])
      yield* Console.log(applied.length === 0 ? "up to date" : applied.map((name) => `applied ${name}`).join("\n"))
    }).pipe(Effect.provide(database))
).pipe(Command.withDescription("Apply pending migrations, once each, under an advisory lock"))

/** Serve Prometheus text on /metrics; queue gauges are refreshed from the database per scrape. */
const metricsServer = (port: number, host: string) =>
  Effect.gen(function*() {
    const store = yield* Store
    const sql = yield* SqlClient.SqlClient
    const runtime = yield* Effect.runtime<never>()
    const refresh = Effect.gen(function*() {
      const stats = yield* store.stats
      yield* Metric.set(Metrics.queueDepth, stats.pending)
      yield* Metric.set(Metrics.deadDepth, stats.dead)
      yield* Metric.set(Metrics.oldestAge, (stats.oldestPendingAgeMs ?? 0) / 1_000)
      yield* Effect.provideService(Journal.refreshMetrics, SqlClient.SqlClient, sql)
    }).pipe(Effect.timeout(Duration.seconds(2)), Effect.ignore)
    const server = createServer((req, res) => {
      if (req.method !== "GET" || req.url?.split("?")[0] !== "/metrics") {
        res.writeHead(404, { "content-type": "text/plain" }).end("not found\n")
        return
      }
      import("effect/Runtime").then(({ runPromise }) =>
        runPromise(runtime)(Effect.zipRight(refresh, Prometheus.snapshot())).then(
          (body) => res.writeHead(200, { "content-type": "text/plain; version=0.0.4; charset=utf-8" }).end(body),
          () => res.writeHead(500).end()
        )
      )
    })
    yield* Effect.acquireRelease(
      Effect.async<void, Error>((resume) => {
        server.once("error", (e) => resume(Effect.fail(e)))
        server.listen(port, host, () => resume(Effect.void))
      }),
      () =>
        Effect.async<void>((resume) => {
          server.close(() => resume(Effect.void))
        })
    )
    const address = server.address()
    const bound = typeof address === "object" && address !== null ? address.port : port
    yield* Console.log(`metrics on http://${host}:${bound}/metrics`)
  })

const worker = Command.make(
  "worker",
  {
    metricsPort: Options.integer("metrics-port").pipe(
      Options.withDescription("Serve Prometheus metrics on this port (0 picks a free one)"),
      Options.optional
    ),
    metricsHost: Options.text("metrics-host").pipe(Options.withDefault("127.0.0.1"))
  },
  ({ metricsHost, metricsPort }) =>
    Effect.gen(function*() {
      if (Option.isSome(metricsPort)) yield* metricsServer(metricsPort.value, metricsHost).pipe(Effect.provide(Store.layer))
      const config = yield* OutboxConfig
      yield* Console.log(
        `worker running (batch ${config.batchSize}, concurrency ${config.concurrency}, ${config.pollOnly ? "poll-only" : "LISTEN " + config.channel}); SIGTERM or Ctrl-C drains and stops`
      )
      return yield* Effect.never
    }).pipe(
      Effect.scoped,
      Effect.provide(Layer.mergeAll(SyncOutbox.layerWorker(syncHandlers), OutboxConfig.layerConfig()))
    )
).pipe(Command.withDescription("Run a worker until SIGTERM; in-flight work finishes, unstarted claims are handed back"))

const statusOnce = (json: boolean) =>
  Effect.gen(function*() {
    const store = yield* Store
    const config = yield* OutboxConfig
    const stats = yield* store.stats
    const workers = yield* store.workers(Duration.toMillis(config.interval) * 3)
    const retention = yield* retentionLine(config)
    if (json) {
      return yield* Console.log(JSON.stringify({ ...stats, workers, retention: retention.json }, null, 2))
    }
    const lines = [
      `pending ${stats.pending}   in flight ${stats.inFlight}   scheduled retry ${stats.scheduled}   dead ${stats.dead}   oldest pending ${ms(stats.oldestPendingAgeMs)}`,
      retention.line
    ]
    if (stats.byResourceType.length > 0) {
      lines.push("", `${"resource type".padEnd(16)} ${pad("pending", 8)} ${pad("in flight", 10)} ${pad("dead", 6)}`)
      for (const r of stats.byResourceType) {
        lines.push(`${r.resourceType.padEnd(16)} ${pad(r.pending, 8)} ${pad(r.inFlight, 10)} ${pad(r.dead, 6)}`)
      }
    }
    lines.push("", workers.length === 0 ? "no live workers" : "workers:")
    for (const w of workers) {
      lines.push(`  ${w.owner}  loop ${w.loop}${w.loop_error ? ` (${w.loop_error})` : ""}  breaker ${w.breaker}  listener ${w.listener}  heartbeat ${ms(w.heartbeat_age_ms)} ago`)
    }
    yield* Console.log(lines.join("\n"))
  })

const status = Command.make(
  "status",
  {
    watch: Options.boolean("watch").pipe(Options.withDescription("Refresh every second, in place, until Ctrl-C")),
    json: Options.boolean("json").pipe(Options.withDescription("Machine-readable output"))
  },
  ({ json, watch }) =>
    (watch
      ? Effect.forever(
        Effect.zipRight(Console.log("\x1b[H\x1b[2J" + new Date().toISOString()), statusOnce(json)).pipe(
          Effect.zipRight(Effect.sleep(Duration.seconds(1)))
        )
      )
      : statusOnce(json)).pipe(Effect.provide(Layer.merge(storeLayer, OutboxConfig.layerConfig())))
).pipe(Command.withDescription("Pending, in flight and dead events by resource type; oldest age; each worker's breaker and listener"))

// ---------------------------------------------------------------------------------------------

/** A usage error the commands raise themselves: exit code 2, like a bad flag. */
export class UsageError extends Schema.TaggedError<UsageError>()("UsageError", { message: Schema.String }) {}

const selector = (id: Option.Option<string>, resourceType: Option.Option<string>, all: boolean) => {
  const given = [Option.isSome(id), Option.isSome(resourceType), all].filter(Boolean).length
  if (given !== 1) return Effect.fail(new UsageError({ message: "name exactly one of: an ID, --resource-type TYPE, --all" }))
  if (Option.isSome(id)) return Effect.succeed({ _tag: "One" as const, id: id.value })
  if (Option.isSome(resourceType)) return Effect.succeed({ _tag: "ResourceType" as const, resourceType: resourceType.value })
  return Effect.succeed({ _tag: "All" as const })
}

const selection = {
  id: Args.text({ name: "ID" }).pipe(Args.optional),
  resourceType: Options.text("resource-type").pipe(Options.optional),
  all: Options.boolean("all")
}

const deadList = Command.make(
  "list",
  { resourceType: Options.text("resource-type").pipe(Options.optional), limit: Options.integer("limit").pipe(Options.withDefault(50)) },
  ({ limit, resourceType }) =>
    Effect.gen(function*() {
      const store = yield* Store
      const rows = yield* store.listDead({ resourceType: Option.getOrUndefined(resourceType), limit })
      if (rows.length === 0) return yield* Console.log("no dead letters")
      yield* Console.log(`${pad("id", 8)}  ${"type/action".padEnd(28)} ${pad("resource", 9)} ${pad("attempts", 8)}  last error`)
      for (const r of rows) {
        yield* Console.log(
          `${pad(r.id, 8)}  ${`${r.resourceType}/${r.action}`.padEnd(28)} ${pad(r.resourceId ?? "-", 9)} ${pad(r.retryCount, 8)}  ${r.lastError ?? ""}`
        )
      }
    }).pipe(Effect.provide(storeLayer))
).pipe(Command.withDescription("List dead letters, oldest first"))

const deadShow = Command.make("show", { id: Args.text({ name: "ID" }) }, ({ id }) =>
  Effect.gen(function*() {
    const store = yield* Store
    const { event, failures } = yield* store.show(id)
    yield* Console.log(
      [
        `event ${event.id}: ${event.resourceType}/${event.action} resource ${event.resourceId ?? "-"} (${event.status})`,
        `ordering key ${event.orderingKey}, created ${event.createdAt.toISOString()}, attempts ${event.retryCount}`,
        `payload ${JSON.stringify(event.payload)}`,
        "failure history:",
        ...(failures.length === 0
          ? ["  (none)"]
          : failures.map((f) => `  #${f.attempt} ${f.failedAt.toISOString()} ${f.errorTag}: ${f.message}`))
      ].join("\n")
    )
  }).pipe(Effect.provide(storeLayer))).pipe(Command.withDescription("One event with its whole failure history"))

const deadRequeue = Command.make("requeue", selection, ({ all, id, resourceType }) =>
  Effect.gen(function*() {
    const store = yield* Store
    const n = yield* store.requeue(yield* selector(id, resourceType, all))
    yield* Console.log(`requeued ${n}`)
  }).pipe(Effect.provide(storeLayer))).pipe(Command.withDescription("Dead letters back to pending, due now, with a fresh attempt budget"))

const deadPurge = Command.make("purge", selection, ({ all, id, resourceType }) =>
  Effect.gen(function*() {
    const store = yield* Store
    const n = yield* store.purge(yield* selector(id, resourceType, all))
    yield* Console.log(`purged ${n}`)
  }).pipe(Effect.provide(storeLayer))).pipe(Command.withDescription("Delete dead letters and their history"))

const dead = Command.make("dead").pipe(
  Command.withSubcommands([deadList, deadShow, deadRequeue, deadPurge]),
  Command.withDescription("Inspect, requeue and purge dead letters")
)

const enqueueCommand = Command.make(
  "enqueue",
  {
    resourceType: Args.text({ name: "RESOURCE_TYPE" }),
    action: Args.text({ name: "ACTION" }),
    resourceId: Options.integer("resource-id").pipe(Options.optional),
    payload: Options.text("payload").pipe(Options.withDescription("JSON, checked against the event type's schema"), Options.optional)
  },
  ({ action, payload, resourceId, resourceType }) =>
    Effect.gen(function*() {
      const handlers = yield* Handlers
      const type = yield* handlers.lookup(resourceType, action)
      const decoded = Option.isNone(payload)
        ? null
        : yield* Effect.try({
          try: () => JSON.parse(payload.value) as unknown,
          catch: () => new InvalidPayload({ resourceType, action, message: "--payload is not valid JSON" })
        })
      const value = yield* Schema.decodeUnknown(type.payload)(decoded).pipe(
        Effect.mapError((e) => new InvalidPayload({ resourceType, action, message: String(e.message) }))
      )
      const id = yield* enqueue(type as OutboxEvent.EventType<unknown, unknown>, {
        resourceId: Option.getOrNull(resourceId),
        payload: value
      })
      yield* Console.log(`enqueued ${id}`)
    }).pipe(
      // Only the registry is needed to validate: it is built without Redis.
      Effect.provide(Handlers.layer(...SyncHandlers.handlers).pipe(
        Layer.provide(Layer.succeed(SyncService, {} as never)),
        Layer.provideMerge(database)
      ))
    )
).pipe(Command.withDescription("Enqueue one event of a registered type (the seed's vocabulary)"))

const syncAll = Command.make(
  "sync-all",
  { enqueueOnly: Options.boolean("enqueue").pipe(Options.withDescription("Enqueue snapshot/sync_all for the workers instead")) },
  ({ enqueueOnly }): Effect.Effect<void, unknown> =>
    enqueueOnly
      ? Effect.flatMap(enqueue(Events.SnapshotSyncAll, { payload: null }), (id) => Console.log(`enqueued ${id}`)).pipe(
        Effect.provide(database)
      )
      : Effect.gen(function*() {
        const sync = yield* SyncService
        const result = yield* sync.syncAll
        yield* Console.log(`written ${result.written}, removed ${result.removed}, refused as stale ${result.stale}`)
      }).pipe(Effect.provide(SyncService.layer().pipe(Layer.provideMerge(Layer.merge(database, RedisSink.layerConfig())))))
).pipe(Command.withDescription("Force a full resync of the control plane into Redis, now"))

export const root = Command.make("sync-outbox").pipe(
  Command.withSubcommands([migrate, worker, status, dead, enqueueCommand, syncAll, ...journalCommands]),
  Command.withDescription("Keep Redis in step with a Postgres control plane through a transactional outbox")
)

export const run = Command.run(root, { name: "sync-outbox", version: "0.1.0" })

/** Whether the database URL is set: every command needs it. */
export const requireDatabaseUrl = Config.string("DATABASE_URL")
