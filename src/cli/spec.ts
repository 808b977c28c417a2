/**
 * The commands, their arguments, options and environment, as plain data: `--help` and the parser
 * read this and nothing else, so answering `--help` loads no Effect module at all.
 */

export interface OptionSpec {
  readonly name: string
  /** Placeholder of the value; absent for a flag. */
  readonly value?: string
  readonly integer?: boolean
  readonly description: string
  readonly default?: string
  /** Accepted, not listed (kept for older scripts). */
  readonly hidden?: boolean
}

export interface ArgSpec {
  readonly name: string
  readonly description: string
  readonly optional?: boolean
}

export interface CommandSpec {
  /** The words that name it: `["dead", "list"]`. */
  readonly path: ReadonlyArray<string>
  readonly summary: string
  readonly details?: ReadonlyArray<string>
  readonly args: ReadonlyArray<ArgSpec>
  readonly options: ReadonlyArray<OptionSpec>
  /** The environment variables it reads, by name (see `environment`). */
  readonly env: ReadonlyArray<string>
  /** The module under `commands/` that implements it, loaded only when it runs. */
  readonly module: string
}

export const environment: Record<string, string> = {
  DATABASE_URL: "Postgres URL, e.g. postgres://user:password@127.0.0.1:5432/app (required)",
  SYNC_OUTBOX_DB_MAX_CONNECTIONS: "connection pool size (10)",
  SYNC_OUTBOX_DB_STATEMENT_TIMEOUT: "bound on every statement (10 seconds)",
  REDIS_URL: "Redis URL (redis://127.0.0.1:6379)",
  REDIS_CLUSTER_NODES: "comma-separated host:port of a Redis Cluster, instead of REDIS_URL",
  SYNC_OUTBOX_REDIS_COMMAND_TIMEOUT: "bound on every Redis command (2 seconds)",
  SYNC_OUTBOX_HANDLERS: "handlers module, as --handlers (default: the built-in ez-api control-plane sync)",
  SYNC_OUTBOX_MIGRATIONS_DIR: "folder of the migration files (the package's migrations/)",
  SYNC_OUTBOX_INTERVAL: "poll interval; status shows a worker as live for three of them (5 seconds)",
  SYNC_OUTBOX_RETENTION: "how long applied events stay in the journal; 0 journals nothing (7 days)",
  SYNC_OUTBOX_RECONCILE_INTERVAL: "how often a worker compares Redis with the control plane and repairs drift; off for never (5 minutes)",
  SYNC_OUTBOX_RECONCILE_RATE: "the sweep's budget of Redis commands per second (5000)",
  SYNC_OUTBOX_LOSS_CHECK_INTERVAL: "how often a worker checks whether Redis lost its data, to rebuild it at once; off for never (500 millis)",
  "SYNC_OUTBOX_*": "worker settings: ENABLED INTERVAL BATCH_SIZE MAX_RETRIES LEASE BACKOFF_BASE BACKOFF_CAP CONCURRENCY CHANNEL POLL_ONLY CALL_TIMEOUT PROBE_BASE PROBE_CAP RETENTION ASYNC_COMMIT RECONCILE_INTERVAL RECONCILE_RATE LOSS_CHECK_INTERVAL (see the README)",
  NO_COLOR: "set (non-empty) to turn colours off; they are only used on a terminal anyway"
}

const database = ["DATABASE_URL", "SYNC_OUTBOX_DB_MAX_CONNECTIONS", "SYNC_OUTBOX_DB_STATEMENT_TIMEOUT"]
const redis = ["REDIS_URL", "REDIS_CLUSTER_NODES", "SYNC_OUTBOX_REDIS_COMMAND_TIMEOUT"]

const handlersOption: OptionSpec = {
  name: "handlers",
  value: "MODULE",
  description:
    "ES module (path or package) exporting `layer` (a Handlers layer) and `eventTypes`; default: the built-in ez-api control-plane sync"
}

const json: OptionSpec = { name: "json", description: "machine-readable output (camelCase keys)" }

export const commands: ReadonlyArray<CommandSpec> = [
  {
    path: ["migrate"],
    summary: "Apply pending migrations, each once, in one transaction under an advisory lock",
    details: [
      "Creates the outbox tables (sync_outbox, sync_outbox_failures, sync_outbox_workers, sync_outbox_journal,",
      "sync_outbox_reconciles) and the function sync_outbox_enqueue.",
      "The control-plane schema (cp_* tables, the built-in ez-api domain) only with --control-plane;",
      "once applied, later runs keep it up to date without the flag."
    ],
    args: [],
    options: [
      { name: "control-plane", description: "also create the built-in ez-api domain's cp_* tables" },
      { name: "engine-only", description: "the default now; kept for older scripts", hidden: true },
      { name: "dir", value: "PATH", description: "folder of the migration files (default: the package's migrations/)" }
    ],
    env: [...database, "SYNC_OUTBOX_MIGRATIONS_DIR"],
    module: "migrate"
  },
  {
    path: ["worker"],
    summary: "Run a worker until SIGTERM or Ctrl-C; in-flight work finishes, unstarted claims are handed back",
    details: [
      "With the built-in sync (or a handlers module exporting `reconciler`), it also heals Redis: a",
      "rebuild at once when Redis lost its data, and a periodic, rate-limited sweep that repairs drift."
    ],
    args: [],
    options: [
      handlersOption,
      { name: "metrics-port", value: "PORT", integer: true, description: "serve Prometheus text on /metrics at this port (0 picks a free one)" },
      { name: "metrics-host", value: "HOST", description: "address to serve metrics on", default: "127.0.0.1" }
    ],
    env: [
      ...database,
      ...redis,
      "SYNC_OUTBOX_HANDLERS",
      "SYNC_OUTBOX_RECONCILE_INTERVAL",
      "SYNC_OUTBOX_RECONCILE_RATE",
      "SYNC_OUTBOX_LOSS_CHECK_INTERVAL",
      "SYNC_OUTBOX_*"
    ],
    module: "worker"
  },
  {
    path: ["status"],
    summary: "Pending, in flight and dead events by resource type; oldest age; the retention and journal; each worker's loop, breaker and listener; the last reconcile of each kind",
    args: [],
    options: [{ name: "watch", description: "refresh every second until Ctrl-C" }, json],
    env: [...database, "SYNC_OUTBOX_INTERVAL", "SYNC_OUTBOX_RETENTION"],
    module: "status"
  },
  {
    path: ["dead", "list"],
    summary: "List dead letters, oldest first, one line each",
    args: [],
    options: [
      { name: "resource-type", value: "TYPE", description: "only this resource type" },
      { name: "limit", value: "N", integer: true, description: "at most N rows", default: "50" },
      json
    ],
    env: database,
    module: "dead"
  },
  {
    path: ["dead", "show"],
    summary: "One dead letter with its whole failure history",
    args: [{ name: "ID", description: "the event's id" }],
    options: [json],
    env: database,
    module: "dead"
  },
  {
    path: ["dead", "requeue"],
    summary: "Dead letters back to pending, due now, with a fresh attempt budget (history kept)",
    args: [{ name: "ID", description: "one event", optional: true }],
    options: [
      { name: "resource-type", value: "TYPE", description: "every dead letter of this resource type" },
      { name: "all", description: "every dead letter" }
    ],
    env: database,
    module: "dead"
  },
  {
    path: ["dead", "purge"],
    summary: "Delete dead letters and their history",
    args: [{ name: "ID", description: "one event", optional: true }],
    options: [
      { name: "resource-type", value: "TYPE", description: "every dead letter of this resource type" },
      { name: "all", description: "every dead letter" }
    ],
    env: database,
    module: "dead"
  },
  {
    path: ["enqueue"],
    summary: "Enqueue one event of a known type, its payload checked against the type's schema",
    args: [
      { name: "RESOURCE_TYPE", description: "e.g. master" },
      { name: "ACTION", description: "e.g. update" }
    ],
    options: [
      { name: "resource-id", value: "N", integer: true, description: "the resource's id (required by most types)" },
      { name: "payload", value: "JSON|@FILE|-", description: "the payload as JSON, read from FILE, or from stdin with -" },
      handlersOption
    ],
    env: [...database, "SYNC_OUTBOX_HANDLERS"],
    module: "enqueue"
  },
  {
    path: ["history"],
    summary: "Applied events from the journal, newest first, with enqueue-to-applied timings and the worker",
    args: [],
    options: [
      { name: "resource-type", value: "TYPE", description: "only events of this resource type" },
      { name: "resource-id", value: "N", integer: true, description: "only events of this resource" },
      { name: "since", value: "WHEN", description: "applied since: an ISO time, or a duration back from now (15m, 2 hours, 7d)" },
      { name: "limit", value: "N", integer: true, description: "at most N events", default: "100" },
      json
    ],
    env: database,
    module: "history"
  },
  {
    path: ["replay"],
    summary: "Enqueue journaled events again as new events (ordering and coalescing as usual)",
    details: [
      "Select either by id (--ids 12,13 or as arguments) or by --resource-type TYPE --since WHEN.",
      "All or nothing: an unknown id or an event type no handler serves enqueues nothing (exit 2)."
    ],
    args: [{ name: "IDS", description: "journaled event ids, comma-separated (as --ids)", optional: true }],
    options: [
      { name: "ids", value: "ID,ID", description: "journaled event ids, comma-separated" },
      { name: "resource-type", value: "TYPE", description: "every journaled event of this type applied since --since" },
      { name: "since", value: "WHEN", description: "with --resource-type: an ISO time, or a duration back from now (1h, 2 days)" },
      { name: "dry-run", description: "print what would be enqueued; enqueue nothing" },
      handlersOption,
      json
    ],
    env: [...database, "SYNC_OUTBOX_HANDLERS"],
    module: "replay"
  },
  {
    path: ["verify"],
    summary: "Compare Redis with the control plane: drift per family (missing, stale, orphaned); --repair fixes it",
    details: [
      "Reads every row and the whole data plane (paged, pipelined), under the reconcile lock a worker's",
      "sweep takes too. Exit codes: 0 in sync (or everything found was repaired), 3 drift found (or left",
      "unrepaired), 1 the environment failed or another reconcile is running, 2 wrong usage."
    ],
    args: [],
    options: [
      { name: "repair", description: "write what is missing or stale, remove orphans (version-fenced, beside running workers)" },
      handlersOption,
      json
    ],
    env: [...database, ...redis, "SYNC_OUTBOX_HANDLERS"],
    module: "verify"
  },
  {
    path: ["sync-all"],
    summary: "Force a full resync of the built-in control plane into Redis, now",
    args: [],
    options: [{ name: "enqueue", description: "enqueue snapshot/sync_all for the workers instead" }],
    env: [...database, ...redis],
    module: "syncAll"
  }
]

/** Commands with subcommands (`dead`), by their first word. */
export const groups: Record<string, string> = {
  dead: "Inspect, requeue and purge dead letters"
}

/** A parsed command line, as a command's implementation receives it. */
export interface Input {
  readonly command: CommandSpec
  readonly args: Readonly<Record<string, string | undefined>>
  readonly options: Readonly<Record<string, string | number | boolean | undefined>>
}
