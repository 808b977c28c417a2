import { describe, expect, it } from "@effect/vitest"
import { ConfigError, ConfigProvider, Effect, Layer, Redacted, Schema } from "effect"
import { execFileSync } from "node:child_process"
import { Cluster, ReplyError } from "ioredis"
import { afterAll, beforeAll } from "vitest"
import { startRedis, type PrivateRedis } from "../scripts/services.js"
import { isClusterNodes } from "../src/RedisSink.js"
import { classify, enqueueMany, event, handle, Handlers, OutboxEvent, RedisSink, SinkCommandError, SinkUnavailable } from "../src/index.js"
import { countRows, eventually, freshDatabase, prefix, redisUrl, sqlLayer, workerLayer } from "./support/harness.js"

const replyError = (message: string) => new (ReplyError as new (m: string) => Error)(message)
const withCode = (message: string, code: string) => Object.assign(new Error(message), { code })

describe("RedisSink: classification", () => {
  it.each([
    ["connection refused", withCode("connect ECONNREFUSED 127.0.0.1:6390", "ECONNREFUSED")],
    ["connection reset", withCode("read ECONNRESET", "ECONNRESET")],
    ["socket closed", new Error("Connection is closed.")],
    ["offline queue off while disconnected", new Error("Stream isn't writeable and enableOfflineQueue options is false")],
    ["command timeout", new Error("Command timed out")],
    ["retries exhausted", new Error("Reached the max retries per request limit (which is 0).")],
    ["LOADING", replyError("LOADING Redis is loading the dataset in memory")],
    ["MASTERDOWN", replyError("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.")],
    ["CLUSTERDOWN", replyError("CLUSTERDOWN The cluster is down")],
    ["TRYAGAIN", replyError("TRYAGAIN Multiple keys request during rehashing of slot")],
    ["failover", replyError("READONLY You can't write against a read only replica.")],
    ["cluster not ready", new Error("Cluster isn't ready and enableOfflineQueue options is false")]
  ])("%s: Redis unavailable, not the item's fault", (_, error) => {
    expect(classify(error)).toBeInstanceOf(SinkUnavailable)
  })

  it.each([
    ["WRONGTYPE", replyError("WRONGTYPE Operation against a key holding the wrong kind of value")],
    ["script error", replyError("ERR Error running script (call to f_abc): user_script:1: attempt to compare nil")],
    ["unknown command", replyError("ERR unknown command 'FOO'")],
    ["anything else", new Error("row failed validation")]
  ])("%s: the item's own failure", (_, error) => {
    expect(classify(error)).toBeInstanceOf(SinkCommandError)
  })

  it.effect("an unreachable Redis gives a typed SinkUnavailable from use(), and the layer still shuts down", () =>
    Effect.gen(function*() {
      const redis = yield* RedisSink
      const error = yield* Effect.flip(redis.ping)
      expect(error._tag).toBe("SinkUnavailable")
    }).pipe(Effect.provide(RedisSink.layer({ url: Redacted.make("redis://127.0.0.1:1") }))))
})

describe("RedisSink: start-up", () => {
  it.live("the first command after the layer is built is served: the sink waits for its connection", () =>
    Effect.gen(function*() {
      // Without the wait, with no offline queue, these failed as "not connected" on a fresh client.
      for (let i = 0; i < 20; i++) {
        const pong = yield* Effect.flatMap(RedisSink, (r) => r.use((c) => c.ping())).pipe(
          Effect.provide(RedisSink.layer({ url: Redacted.make(redisUrl()) }))
        )
        expect(pong).toBe("PONG")
      }
    }))

  it.live("a Redis that refuses the connection's set-up (a database it does not have) is InvalidConfig, not a silent database 0", () =>
    Effect.gen(function*() {
      const url = new URL(redisUrl())
      url.pathname = "/99999"
      const error = yield* Effect.flip(Effect.flatMap(RedisSink, (r) => r.ping).pipe(Effect.provide(RedisSink.layer({ url: Redacted.make(url.toString()) }))))
      expect(error._tag).toBe("InvalidConfig")
      expect(error.message).toMatch(/DB index is out of range.*check REDIS_URL/)
    }))

  it.live("an unreachable Redis does not hold the layer up: it is built at once, and commands fail typed", () =>
    Effect.gen(function*() {
      const started = Date.now()
      const error = yield* Effect.flip(
        Effect.flatMap(RedisSink, (r) => r.ping).pipe(Effect.provide(RedisSink.layer({ url: Redacted.make("redis://127.0.0.1:1") })))
      )
      expect(error._tag).toBe("SinkUnavailable")
      expect(Date.now() - started).toBeLessThan(1_900)
    }))
})

describe("RedisSink: configuration", () => {
  const fromEnv = (env: Record<string, string>) =>
    Layer.build(RedisSink.layerConfig()).pipe(
      Effect.scoped,
      Effect.flip,
      Effect.provide(Layer.setConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(env)))))
    )

  it.effect.each(["127.0.0.1:abc", "10.0.0.1:99999", "10.0.0.1:7000,", "", "10.0.0.1:7000 10.0.0.2:7000"])(
    "REDIS_CLUSTER_NODES=%j is refused as a configuration error naming the variable, before any connection",
    (nodes) =>
      Effect.gen(function*() {
        const error = yield* fromEnv({ REDIS_CLUSTER_NODES: nodes })
        expect(ConfigError.isConfigError(error)).toBe(true)
        expect(String(error)).toContain("REDIS_CLUSTER_NODES is not a list of Redis nodes")
      })
  )

  it.effect("REDIS_CLUSTER_NODES takes host:port, a bare host (port 6379) and a bracketed IPv6 address", () =>
    Effect.sync(() => {
      expect(isClusterNodes(["10.0.0.1:7000", "redis-b", "[::1]:7001"])).toBe(true)
      expect(isClusterNodes([])).toBe(false)
    }))
})

describe("RedisSink: Redis Cluster", () => {
  let nodes: Array<PrivateRedis> = []
  let url: string
  beforeAll(async () => {
    nodes = await Promise.all(
      [0, 1, 2].map(() =>
        startRedis(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"])
      )
    )
    execFileSync("redis-cli", ["--cluster", "create", ...nodes.map((n) => `127.0.0.1:${n.port}`), "--cluster-replicas", "0", "--cluster-yes"], {
      stdio: "ignore"
    })
    for (;;) {
      const info = execFileSync("redis-cli", ["-p", String(nodes[0]!.port), "cluster", "info"], { encoding: "utf8" })
      if (info.includes("cluster_state:ok")) break
      await new Promise((r) => setTimeout(r, 100))
    }
    url = await freshDatabase("cluster")
  }, 60_000)
  afterAll(async () => {
    await Promise.all(nodes.map((n) => n.stop()))
  })

  it.live("the worker applies events across slots, and hash-tagged keys go together atomically", () =>
    Effect.gen(function*() {
      const p = prefix()
      const Pair = OutboxEvent.make({ resourceType: "pair", action: "set", payload: Schema.Number })
      const handlers = Handlers.layer(
        handle(Pair, ({ payload }) =>
          Effect.flatMap(RedisSink, (redis) =>
            redis.use((c) =>
              // Two keys in one MULTI: only possible in a cluster because they share a hash tag.
              c.multi().set(`{${p}${payload}}:data`, String(payload)).set(`{${p}${payload}}:meta`, "v1").exec()
            )))
      )
      const cluster = RedisSink.layer({ clusterNodes: nodes.map((n) => `127.0.0.1:${n.port}`) })
      yield* Effect.gen(function*() {
        yield* enqueueMany(Array.from({ length: 200 }, (_, i) => event(Pair, { resourceId: i + 1, payload: i })))
        yield* eventually(countRows(), (n) => n === 0, { timeout: 20_000 })
      }).pipe(
        Effect.provide(
          workerLayer({ url, handlers, redis: cluster })
        )
      )
      const check = new Cluster(nodes.map((n) => ({ host: "127.0.0.1", port: n.port })))
      const values = yield* Effect.promise(() =>
        Promise.all(Array.from({ length: 200 }, (_, i) => Promise.all([check.get(`{${p}${i}}:data`), check.get(`{${p}${i}}:meta`)])))
      )
      const slots = new Set(yield* Effect.promise(() => Promise.all(Array.from({ length: 200 }, (_, i) => check.cluster("KEYSLOT", `{${p}${i}}:data`)))))
      yield* Effect.promise(() => check.quit())
      expect(values.every(([d, m], i) => d === String(i) && m === "v1")).toBe(true)
      // The events really were spread over the cluster's nodes.
      expect(slots.size).toBeGreaterThan(100)
    }).pipe(Effect.provide(sqlLayer(url))), 60_000)
})
