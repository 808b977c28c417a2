/**
 * The ioredis client as a layer, single node or cluster, and the classification of its errors.
 * The outbox row is the durable queue, so ioredis keeps none of its own: no offline queue, no
 * per-request retries, a command timeout. A failure is either "Redis unavailable" (not the
 * item's fault: the worker's breaker opens and no attempt is counted) or the item's own.
 */
import { Config, Context, Duration, Effect, Layer, Option, Redacted } from "effect"
import { Cluster, Redis } from "ioredis"
import { InvalidConfig, SinkCommandError, SinkUnavailable } from "./Errors.js"
import * as InFlight from "./InFlight.js"
import { durationConfig } from "./OutboxConfig.js"

export type RedisClient = Redis | Cluster

const unavailablePatterns: ReadonlyArray<RegExp> = [
  /ECONNREFUSED|ECONNRESET|EPIPE|ETIMEDOUT|EHOSTUNREACH|ENETUNREACH|ENOTFOUND|EAI_AGAIN|ECONNABORTED/,
  /Connection is closed/i,
  /Stream isn't writeable/i,
  /Command timed out/i,
  /max retries per request/i,
  /^(LOADING|MASTERDOWN|CLUSTERDOWN|TRYAGAIN|BUSY|READONLY)\b/,
  /failover/i,
  /None of startup nodes is available/i,
  /Cluster isn't ready/i,
  /Failed to refresh slots cache/i,
  /socket (closed|hang up)/i,
  /connect ETIMEDOUT|Connection timeout/i
]

/** True when the error says Redis cannot be reached or cannot serve now, whatever the command. */
export const isUnavailable = (error: unknown): boolean => {
  if (error instanceof SinkUnavailable) return true
  if (error instanceof SinkCommandError) return false
  const text = errorText(error)
  return unavailablePatterns.some((re) => re.test(text))
}

const errorText = (error: unknown): string => {
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code
    return `${typeof code === "string" ? `${code} ` : ""}${error.message}`
  }
  return String(error)
}

// ioredis's words for "not connected", in an operator's.
const plain = (text: string) =>
  /Stream isn't writeable|Connection is closed|Cluster isn't ready/i.test(text) ? `not connected to Redis (${text})` : text

/** Turn what ioredis threw into the typed error that says whose fault it is. */
export const classify = (error: unknown): SinkUnavailable | SinkCommandError =>
  error instanceof SinkUnavailable || error instanceof SinkCommandError
    ? error
    : isUnavailable(error)
    ? new SinkUnavailable({ message: plain(errorText(error)), cause: error })
    : new SinkCommandError({ message: errorText(error), cause: error })

export interface RedisOptions {
  /** A single node, e.g. `redis://127.0.0.1:6379`. Ignored when `clusterNodes` is given. */
  readonly url?: Redacted.Redacted | undefined
  /** Cluster seed nodes as `host:port`; the client discovers the rest. */
  readonly clusterNodes?: ReadonlyArray<string> | undefined
  readonly commandTimeout?: Duration.DurationInput | undefined
  readonly connectTimeout?: Duration.DurationInput | undefined
}

export interface RedisSinkShape {
  readonly client: RedisClient
  /**
   * Run commands; a failure comes back classified. The signal is aborted when the call is
   * interrupted (the worker's call timeout); until the promise settles, the worker keeps the
   * event leased, so a call that outlives its timeout never overlaps the event's retry.
   */
  readonly use: <A>(
    f: (client: RedisClient, signal: AbortSignal) => Promise<A>
  ) => Effect.Effect<A, SinkUnavailable | SinkCommandError>
  /** The breaker's cheap probe. */
  readonly ping: Effect.Effect<void, SinkUnavailable | SinkCommandError>
}

// Reconnect fast and keep trying: the breaker decides when work resumes, not ioredis. A refused
// connect costs microseconds, so a 50 ms ceiling keeps recovery well under the 250 ms goal.
const retryStrategy = (times: number) => Math.min(times * 5, 50)

const acquire = (options: RedisOptions): RedisClient => {
  const commandTimeout = Duration.toMillis(options.commandTimeout ?? Duration.seconds(2))
  const connectTimeout = Duration.toMillis(options.connectTimeout ?? Duration.seconds(2))
  const common = {
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    commandTimeout,
    // A connection that stops answering without closing (a flow a firewall or NAT dropped, a
    // failover behind a virtual IP: TCP keeps it "open" for hours) is destroyed once a command has
    // waited this long for any byte, and ioredis connects afresh. Without it, `commandTimeout`
    // only failed each command: the breaker's probe timed out on that same dead socket forever,
    // while a new connection would have been served. Just past the command timeout, so that a
    // slow command reports as timed out itself.
    socketTimeout: commandTimeout + 500,
    connectTimeout,
    // Off: ioredis's auto-pipelining can throw from a callback (an uncaught TypeError that ends
    // the process) when a pipeline meets a command defined after it was made or a connection that
    // closes under it (ioredis issues #1931, #2109). Handlers pipeline explicitly where it pays.
    enableAutoPipelining: false,
    retryStrategy
  }
  if (options.clusterNodes !== undefined && options.clusterNodes.length > 0) {
    const nodes = options.clusterNodes.map(clusterNode)
    return new Cluster(nodes, {
      enableOfflineQueue: false,
      enableAutoPipelining: false,
      clusterRetryStrategy: retryStrategy,
      redisOptions: common
    })
  }
  const url = options.url === undefined ? "redis://127.0.0.1:6379" : Redacted.value(options.url)
  return new Redis(url, common)
}

const make = (options: RedisOptions) =>
  Effect.gen(function*() {
    const client = yield* Effect.acquireRelease(
      Effect.sync(() => {
        const client = acquire(options)
        // ioredis emits "error" on every failed reconnect; unhandled, Node would crash. The
        // breaker sees failures through the commands themselves.
        client.on("error", () => undefined)
        return client
      }),
      (client) =>
        // quit() waits for Redis; when Redis is down that would hang shutdown, so bound it
        // (interruptibly: a release runs uninterruptibly, where a timeout would wait for its effect).
        Effect.interruptible(Effect.promise(() => client.quit().catch(() => undefined))).pipe(
          Effect.timeoutOption(Duration.millis(500)),
          Effect.ensuring(Effect.sync(() => client.disconnect()))
        )
    )
    // Wait for the first connection, briefly: with no offline queue, a command sent before it
    // fails as "unavailable" although Redis is up. Redis down answers at once (refused), and then
    // the layer is built all the same: the breaker is what reports and waits out an outage.
    yield* Effect.async<void, InvalidConfig>((resume) => {
      if (client.status === "ready") return resume(Effect.void)
      const settle = (error?: unknown) => {
        forget()
        // The server answered and refused the connection's set-up (SELECT of a database it does
        // not have, AUTH with a wrong password): ioredis would go on, on database 0 or forever
        // retrying. That is a configuration to fix, not an outage to wait out.
        resume(
          error instanceof Error && error.name === "ReplyError"
            ? Effect.fail(new InvalidConfig({ message: `Redis refused the connection: ${error.message} (check ${client instanceof Cluster ? "REDIS_CLUSTER_NODES" : "REDIS_URL"})` }))
            : Effect.void
        )
      }
      const forget = () => {
        client.off("ready", settle)
        client.off("error", settle)
        client.off("end", settle)
      }
      client.once("ready", settle)
      client.once("error", settle)
      client.once("end", settle)
      return Effect.sync(forget)
    }).pipe(Effect.timeoutOption(options.connectTimeout ?? Duration.seconds(2)))
    const use = <A>(f: (client: RedisClient, signal: AbortSignal) => Promise<A>) =>
      InFlight.tryPromise({ try: (signal) => f(client, signal), catch: classify })
    const ping = Effect.asVoid(use((c) => c.ping()))
    return { client, use, ping } satisfies RedisSinkShape
  })

/**
 * A cluster seed node: `host:port`, `host` (port 6379) or `[v6 address]:port`. Anything else is
 * `undefined`: a port that is not one (`:abc` would be NaN, `:99999` refused by Node) or an empty
 * entry (a trailing comma) would otherwise reach ioredis and read later as "cluster not ready".
 */
const clusterNodeRe = /^(?:\[([0-9A-Fa-f:.]+)\]|([^\s:[\]]+))(?::([0-9]{1,5}))?$/
const parseClusterNode = (node: string): { readonly host: string; readonly port: number } | undefined => {
  const match = clusterNodeRe.exec(node.trim())
  if (match === null) return undefined
  const port = match[3] === undefined ? 6379 : Number(match[3])
  return port >= 1 && port <= 65_535 ? { host: match[1] ?? match[2]!, port } : undefined
}
const clusterNode = (node: string) => parseClusterNode(node) ?? { host: node, port: 6379 }

/** Whether every entry of REDIS_CLUSTER_NODES is a seed node ioredis can connect to. */
export const isClusterNodes = (nodes: ReadonlyArray<string>): boolean =>
  nodes.length > 0 && nodes.every((node) => parseClusterNode(node) !== undefined)

/** What ioredis can connect to: a `redis://` or `rediss://` URL, or a Unix socket's path. */
export const isRedisUrl = (value: string): boolean => {
  if (value.startsWith("/")) return true
  try {
    const url = new URL(value)
    // The path names a database by its index: `/abc` would be sent as SELECT NaN.
    const db = url.pathname.replace(/^\//, "")
    return (url.protocol === "redis:" || url.protocol === "rediss:") && (db === "" || /^(0|[1-9][0-9]{0,4})$/.test(db))
  } catch {
    return false
  }
}

export class RedisSink extends Context.Tag("sync-outbox/RedisSink")<RedisSink, RedisSinkShape>() {
  static readonly layer = (options: RedisOptions = {}): Layer.Layer<RedisSink, InvalidConfig> => Layer.scoped(RedisSink, make(options))

  /** REDIS_URL, REDIS_CLUSTER_NODES (comma separated), SYNC_OUTBOX_REDIS_COMMAND_TIMEOUT. */
  static readonly layerConfig = (
    config: Config.Config<RedisOptions> = Config.all({
      url: Config.redacted("REDIS_URL").pipe(
        Config.validate({
          message: "REDIS_URL is not a Redis URL; expected one such as redis://127.0.0.1:6379 (or rediss://, or a socket path)",
          validation: (url) => isRedisUrl(Redacted.value(url))
        }),
        Config.option,
        Config.map(Option.getOrUndefined)
      ),
      clusterNodes: Config.array(Config.string(), "REDIS_CLUSTER_NODES").pipe(
        Config.validate({
          message: "REDIS_CLUSTER_NODES is not a list of Redis nodes; expected host:port entries separated by commas, such as 10.0.0.1:7000,10.0.0.2:7000",
          validation: isClusterNodes
        }),
        Config.option,
        Config.map(Option.getOrUndefined)
      ),
      commandTimeout: durationConfig("SYNC_OUTBOX_REDIS_COMMAND_TIMEOUT").pipe(Config.withDefault(Duration.seconds(2)))
    })
  ) => Layer.unwrapEffect(Effect.map(config, RedisSink.layer))
}
