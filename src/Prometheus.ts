/**
 * Effect's metric registry as the Prometheus text exposition format (version 0.0.4): counters,
 * gauges and histograms, with their tags as labels, plus the process's own `process_*` and
 * `nodejs_*` families. The library installs no exporter of its own accord: a worker serves
 * `/metrics` with `layerServer` (the CLI's worker does), or an existing HTTP server returns
 * `scrape`'s text.
 */
import { SqlClient } from "@effect/sql"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import type * as MetricKey from "effect/MetricKey"
import type * as MetricPair from "effect/MetricPair"
import * as MetricState from "effect/MetricState"
import * as Option from "effect/Option"
import * as Runtime from "effect/Runtime"
import type * as Scope from "effect/Scope"
import { readdirSync } from "node:fs"
import { createServer } from "node:http"
import { monitorEventLoopDelay } from "node:perf_hooks"
import * as Journal from "./Journal.js"
import * as Metrics from "./Metrics.js"
import { Admin } from "./Admin.js"

const escapeLabel = (value: string) => value.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"')
const sanitize = (name: string) => name.replace(/[^a-zA-Z0-9_:]/g, "_")

const labels = (tags: ReadonlyArray<{ readonly key: string; readonly value: string }>, extra: Record<string, string> = {}) => {
  const all = [...tags.map((t) => [t.key, t.value] as const), ...Object.entries(extra)]
  return all.length === 0 ? "" : `{${all.map(([k, v]) => `${sanitize(k)}="${escapeLabel(v)}"`).join(",")}}`
}

const num = (n: number | bigint) =>
  typeof n === "bigint" ? n.toString() : Number.isNaN(n) ? "NaN" : n === Infinity ? "+Inf" : n === -Infinity ? "-Inf" : String(n)

/** Render metric pairs. Families are grouped so each name has one HELP and TYPE line. */
export const render = (pairs: ReadonlyArray<MetricPair.MetricPair.Untyped>): string => {
  const families = new Map<string, { help: string; type: string; lines: Array<string> }>()
  const family = (key: MetricKey.MetricKey.Untyped, type: string) => {
    const name = sanitize(key.name)
    let f = families.get(name)
    if (f === undefined) {
      f = { help: Option.getOrElse(key.description, () => key.name), type, lines: [] }
      families.set(name, f)
    }
    return { name, f }
  }
  for (const pair of pairs) {
    const key = pair.metricKey
    const state = pair.metricState
    if (MetricState.isCounterState(state)) {
      const { f, name } = family(key, "counter")
      f.lines.push(`${name}${labels(key.tags)} ${num(state.count)}`)
    } else if (MetricState.isGaugeState(state)) {
      const { f, name } = family(key, "gauge")
      f.lines.push(`${name}${labels(key.tags)} ${num(state.value)}`)
    } else if (MetricState.isHistogramState(state)) {
      const { f, name } = family(key, "histogram")
      // Effect's buckets are already cumulative counts per upper bound.
      for (const [bound, count] of state.buckets) {
        f.lines.push(`${name}_bucket${labels(key.tags, { le: num(bound) })} ${count}`)
      }
      if (!state.buckets.some(([bound]) => bound === Infinity)) {
        f.lines.push(`${name}_bucket${labels(key.tags, { le: "+Inf" })} ${state.count}`)
      }
      f.lines.push(`${name}_sum${labels(key.tags)} ${num(state.sum)}`)
      f.lines.push(`${name}_count${labels(key.tags)} ${state.count}`)
    }
  }
  const out: Array<string> = []
  for (const [name, f] of families) {
    out.push(`# HELP ${name} ${f.help.replace(/\n/g, " ")}`, `# TYPE ${name} ${f.type}`, ...f.lines)
  }
  return out.join("\n") + "\n"
}

/** The current registry, rendered; by default only sync-outbox's own families. */
export const snapshot = (prefix: string | null = "sync_outbox_"): Effect.Effect<string> =>
  Effect.map(Metric.snapshot, (pairs) => render(prefix === null ? pairs : pairs.filter((p) => p.metricKey.name.startsWith(prefix))))

// ---------------------------------------------------------------------------------------------
// Process metrics, named as prom-client names them so existing dashboards work.

let loopDelay: ReturnType<typeof monitorEventLoopDelay> | undefined

/** `process_*` and `nodejs_*` families for this process, rendered now. */
export const processMetrics = (): string => {
  if (loopDelay === undefined) {
    loopDelay = monitorEventLoopDelay({ resolution: 20 })
    loopDelay.enable()
  }
  const cpu = process.cpuUsage()
  const memory = process.memoryUsage()
  const families: Array<readonly [name: string, type: string, help: string, value: number]> = [
    ["process_cpu_user_seconds_total", "counter", "User CPU time spent, in seconds", cpu.user / 1e6],
    ["process_cpu_system_seconds_total", "counter", "System CPU time spent, in seconds", cpu.system / 1e6],
    ["process_cpu_seconds_total", "counter", "User and system CPU time spent, in seconds", (cpu.user + cpu.system) / 1e6],
    ["process_start_time_seconds", "gauge", "Start time of the process since the Unix epoch, in seconds", Math.round(Date.now() / 1000 - process.uptime())],
    ["process_resident_memory_bytes", "gauge", "Resident memory size, in bytes", memory.rss],
    ["nodejs_heap_size_total_bytes", "gauge", "V8 heap size, in bytes", memory.heapTotal],
    ["nodejs_heap_size_used_bytes", "gauge", "V8 heap used, in bytes", memory.heapUsed],
    ["nodejs_external_memory_bytes", "gauge", "Memory of C++ objects bound to JavaScript objects, in bytes", memory.external],
    ["nodejs_eventloop_lag_p50_seconds", "gauge", "Median event loop delay since the previous scrape, in seconds", nanosToSeconds(loopDelay.percentile(50))],
    ["nodejs_eventloop_lag_p99_seconds", "gauge", "99th percentile event loop delay since the previous scrape, in seconds", nanosToSeconds(loopDelay.percentile(99))],
    ["nodejs_eventloop_lag_max_seconds", "gauge", "Largest event loop delay since the previous scrape, in seconds", nanosToSeconds(loopDelay.max)]
  ]
  loopDelay.reset()
  const fds = openFileDescriptors()
  if (fds !== null) families.push(["process_open_fds", "gauge", "Open file descriptors", fds])
  return families.map(([name, type, help, value]) => `# HELP ${name} ${help}\n# TYPE ${name} ${type}\n${name} ${num(value)}\n`).join("")
}

const nanosToSeconds = (n: number) => (Number.isFinite(n) ? n / 1e9 : 0)

const openFileDescriptors = (): number | null => {
  try {
    return readdirSync("/proc/self/fd").length
  } catch {
    return null // not Linux
  }
}

/**
 * What a scrape returns: sync-outbox's families and the process's. When `Admin` is in the
 * context, the queue gauges (`sync_outbox_pending`, `_dead`, `_oldest_pending_age_seconds`) are
 * refreshed from the database first (bounded: a slow database leaves the previous values).
 */
export const scrape = (options: { readonly prefix?: string | null | undefined; readonly process?: boolean | undefined } = {}): Effect.Effect<string> =>
  Effect.gen(function*() {
    const admin = yield* Effect.serviceOption(Admin)
    if (Option.isSome(admin)) {
      yield* Effect.gen(function*() {
        const stats = yield* admin.value.stats
        yield* Metric.set(Metrics.queueDepth, stats.pending)
        yield* Metric.set(Metrics.deadDepth, stats.dead)
        yield* Metric.set(Metrics.oldestAge, (stats.oldestPendingAgeMs ?? 0) / 1_000)
      }).pipe(Effect.timeout("2 seconds"), Effect.ignore)
    }
    const sql = yield* Effect.serviceOption(SqlClient.SqlClient)
    if (Option.isSome(sql)) {
      // The journal's size and age (a database without the journal leaves them at 0).
      yield* Journal.refreshMetrics.pipe(
        Effect.provideService(SqlClient.SqlClient, sql.value),
        Effect.timeout("2 seconds"),
        Effect.ignore
      )
    }
    const own = yield* snapshot(options.prefix === undefined ? "sync_outbox_" : options.prefix)
    return options.process === false ? own : own + processMetrics()
  })

/** The metrics HTTP server could not listen (port taken, host not local, ...). */
export class MetricsServerError extends Data.TaggedError("MetricsServerError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

export interface ServerOptions {
  /** 0 picks a free port. */
  readonly port: number
  /** Default 127.0.0.1: metrics are not for the whole network unless asked. */
  readonly host?: string | undefined
  /** Default `/metrics`. */
  readonly path?: string | undefined
  /** Include the `process_*` and `nodejs_*` families (default true). */
  readonly process?: boolean | undefined
}

/**
 * Serve `scrape` over HTTP for the lifetime of the scope; returns the bound address. Give it
 * `Admin` (`Store.layer` provides it too) to have the queue gauges refreshed per scrape.
 */
export const serve = (
  options: ServerOptions
): Effect.Effect<{ readonly host: string; readonly port: number }, MetricsServerError, Scope.Scope> =>
  Effect.gen(function*() {
    const host = options.host ?? "127.0.0.1"
    const path = options.path ?? "/metrics"
    // Node throws from `listen` on a port it cannot use (70000, -1, NaN from an unset variable),
    // and takes a string that is not a number for a pipe's name: either would escape as a defect
    // or a socket file, where the caller was promised a MetricsServerError.
    const port: unknown = options.port
    if (typeof port !== "number" || !Number.isInteger(port) || port < 0 || port > 65_535) {
      return yield* new MetricsServerError({
        message: `cannot serve metrics on ${host}:${String(port)}: the port must be an integer from 0 (a free one) to 65535`
      })
    }
    const runtime = yield* Effect.runtime<never>()
    const run = Runtime.runPromise(runtime)
    const body = scrape({ process: options.process })
    const server = createServer((req, res) => {
      if (req.method !== "GET" || req.url?.split("?")[0] !== path) {
        res.writeHead(404, { "content-type": "text/plain" }).end("not found\n")
        return
      }
      run(body).then(
        (text) => res.writeHead(200, { "content-type": "text/plain; version=0.0.4; charset=utf-8" }).end(text),
        () => res.writeHead(500).end()
      )
    })
    yield* Effect.acquireRelease(
      Effect.async<void, MetricsServerError>((resume) => {
        server.once("error", (cause) =>
          resume(Effect.fail(new MetricsServerError({ message: `cannot serve metrics on ${host}:${options.port}: ${cause.message}`, cause }))))
        server.listen(options.port, host, () => resume(Effect.void))
      }),
      () =>
        Effect.async<void>((resume) => {
          server.close(() => resume(Effect.void))
          server.closeAllConnections()
        })
    )
    const address = server.address()
    return { host, port: typeof address === "object" && address !== null ? address.port : options.port }
  })

/** `serve` as a layer: the server lives as long as the layer; queue gauges come from `Admin`. */
export const layerServer = (options: ServerOptions): Layer.Layer<never, MetricsServerError, Admin> =>
  Layer.scopedDiscard(
    Effect.flatMap(Admin, (admin) =>
      Effect.flatMap(serve(options), ({ host, port }) =>
        Effect.logInfo(`sync-outbox: metrics on http://${host}:${port}${options.path ?? "/metrics"}`)).pipe(
        Effect.provideService(Admin, admin)
      ))
  )
