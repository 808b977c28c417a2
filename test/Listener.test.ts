import { describe, expect, it } from "@effect/vitest"
import { Chunk, Effect, Fiber, Logger, Redacted, Stream, SubscriptionRef } from "effect"
import { connect, createServer, type Socket } from "node:net"
import pg from "pg"
import { beforeAll } from "vitest"
import { Listener } from "../src/index.js"
import { eventually, freshDatabase, realSleep } from "./support/harness.js"
import { startProxy } from "./support/proxy.js"
import { freePort } from "../scripts/services.js"

let url: string
beforeAll(async () => {
  url = await freshDatabase("listener")
})

const notify = (target: string, channel = "sync_outbox") =>
  Effect.promise(async () => {
    const c = new pg.Client({ connectionString: target })
    await c.connect()
    await c.query(`SELECT pg_notify($1, '')`, [channel])
    await c.end()
  })

/**
 * A proxy in front of Postgres that, while told to refuse, answers every LISTEN itself with the
 * error a hot standby gives (the connection stays up), as after a failover to a replica.
 */
const listenRefusingProxy = async (targetPort: number) => {
  const port = await freePort()
  let refusing = false
  let refused = 0
  const sockets = new Set<Socket>()
  const field = (code: string, value: string) => Buffer.from(`${code}${value}\0`)
  const body = Buffer.concat([
    field("S", "ERROR"),
    field("V", "ERROR"),
    field("C", "25006"),
    field("M", "cannot execute LISTEN during recovery"),
    Buffer.from([0])
  ])
  const header = Buffer.alloc(5)
  header.write("E", 0)
  header.writeInt32BE(body.length + 4, 1)
  const readyForQuery = Buffer.from([0x5a, 0, 0, 0, 5, 0x49])
  const server = createServer((client) => {
    const upstream = connect(targetPort, "127.0.0.1")
    for (const socket of [client, upstream]) {
      sockets.add(socket)
      socket.on("close", () => sockets.delete(socket))
      socket.on("error", () => socket.destroy())
    }
    client.on("close", () => upstream.destroy())
    upstream.on("close", () => client.destroy())
    client.on("data", (chunk) => {
      // A simple query ('Q') that is a LISTEN: answered here, never forwarded.
      if (refusing && chunk[0] === 0x51 && chunk.includes("LISTEN")) {
        refused++
        client.write(Buffer.concat([header, body, readyForQuery]))
        return
      }
      upstream.write(chunk)
    })
    upstream.pipe(client)
  })
  await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", resolve))
  return {
    port,
    refuse: (on: boolean) => {
      refusing = on
    },
    refused: () => refused,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy()
        server.close(() => resolve())
      })
  }
}

/** Terminate the listener's backend, as an operator's `pg_terminate_backend` or a failover would. */
const killListenerBackend = Effect.promise(async () => {
  const c = new pg.Client({ connectionString: url })
  await c.connect()
  await c.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity
    WHERE application_name = 'sync-outbox-listener' AND datname = current_database()`)
  await c.end()
})

/** Collect the first `n` wake-ups into a fiber. */
const collect = (n: number) =>
  Effect.flatMap(Listener, (l) => Effect.fork(Stream.runCollect(Stream.take(l.wakeups, n))))

/** A notification sent now reaches the listener as a wake-up: it is listening. */
const hearsANotification = Effect.gen(function*() {
  const next = yield* collect(1)
  yield* realSleep(50)
  yield* notify(url)
  expect(Chunk.toReadonlyArray(yield* Fiber.join(next))).toEqual(["notification"])
})

describe("Listener", () => {
  it.scopedLive("turns every notification on its channel into a wake-up, and ignores other channels", () =>
    Effect.gen(function*() {
      const listener = yield* Listener
      yield* eventually(SubscriptionRef.get(listener.state), (s) => s === "listening")
      const fiber = yield* collect(1)
      yield* realSleep(50)
      yield* notify(url, "some_other_channel")
      yield* notify(url)
      const got = yield* Fiber.join(fiber)
      expect(Chunk.toReadonlyArray(got)).toEqual(["notification"])
    }).pipe(Effect.provide(Listener.layer({ url: Redacted.make(url), channel: "sync_outbox" }))))

  it.scopedLive("started while its database is unreachable, it keeps trying and connects once it can", () =>
    Effect.gen(function*() {
      const target = new URL(url)
      const proxy = yield* Effect.acquireRelease(Effect.promise(() => startProxy(Number(target.port || 5432))), (p) => Effect.promise(p.close))
      yield* Effect.promise(proxy.cut)
      const viaProxy = new URL(url)
      viaProxy.host = `127.0.0.1:${proxy.port}`
      yield* Effect.gen(function*() {
        const listener = yield* Listener
        const fiber = yield* collect(1)
        yield* realSleep(500)
        expect(yield* SubscriptionRef.get(listener.state)).toBe("connecting")
        yield* Effect.promise(proxy.restore)
        // The connect announces itself: that is the worker's cue for a catch-up claim.
        expect(Chunk.toReadonlyArray(yield* Fiber.join(fiber))).toEqual(["connected"])
        yield* eventually(SubscriptionRef.get(listener.state), (s) => s === "listening", { timeout: 5_000 })
        yield* hearsANotification
      }).pipe(Effect.provide(Listener.layer({ url: Redacted.make(viaProxy.toString()), channel: "sync_outbox" })))
    }), 30_000)

  it.scopedLive("a killed backend reconnects by itself and says so with a 'connected' wake-up", () =>
    Effect.gen(function*() {
      const listener = yield* Listener
      yield* eventually(SubscriptionRef.get(listener.state), (s) => s === "listening")
      const fiber = yield* collect(1)
      yield* realSleep(50)
      yield* killListenerBackend
      expect(Chunk.toReadonlyArray(yield* Fiber.join(fiber))).toEqual(["connected"])
      yield* hearsANotification
    }).pipe(Effect.provide(Listener.layer({ url: Redacted.make(url), channel: "sync_outbox" }))), 30_000)

  it.live("a killed backend is one warning when the connection goes and one line when it is back, not silence", () =>
    Effect.gen(function*() {
      const lines: Array<string> = []
      const logger = Logger.add(Logger.make(({ logLevel, message }) => {
        lines.push(`${logLevel.label} ${(Array.isArray(message) ? message : [message]).map(String).join(" ")}`)
      }))
      yield* Effect.gen(function*() {
        const listener = yield* Listener
        yield* eventually(SubscriptionRef.get(listener.state), (s) => s === "listening")
        const fiber = yield* collect(1)
        yield* realSleep(50)
        yield* killListenerBackend
        expect(Chunk.toReadonlyArray(yield* Fiber.join(fiber))).toEqual(["connected"])
        yield* eventually(Effect.sync(() => lines.filter((l) => l.includes("sync-outbox listener"))), (l) => l.length >= 2, { timeout: 5_000 })
        expect(lines.filter((l) => l.includes("sync-outbox listener"))).toEqual([
          expect.stringMatching(/^WARN sync-outbox listener: connection lost, reconnecting/),
          "INFO sync-outbox listener: reconnected"
        ])
      }).pipe(Effect.scoped, Effect.provide(Listener.layer({ url: Redacted.make(url), channel: "sync_outbox" })), Effect.provide(logger))
    }), 30_000)

  it.scopedLive("a connection that stops answering without closing is given up by the timed-out paranoid check, and replaced", () =>
    Effect.gen(function*() {
      const target = new URL(url)
      const proxy = yield* Effect.acquireRelease(Effect.promise(() => startProxy(Number(target.port || 5432))), (p) => Effect.promise(p.close))
      const viaProxy = new URL(url)
      viaProxy.host = `127.0.0.1:${proxy.port}`
      yield* Effect.gen(function*() {
        const listener = yield* Listener
        yield* eventually(SubscriptionRef.get(listener.state), (s) => s === "listening")
        const fiber = yield* collect(1)
        // The listening connection hangs (TCP would keep it "open" for many minutes); the server is fine.
        proxy.stall()
        // The next check waits out its bound (5 s at least), then a new connection listens.
        expect(Chunk.toReadonlyArray(yield* Fiber.join(fiber))).toEqual(["connected"])
        yield* eventually(SubscriptionRef.get(listener.state), (s) => s === "listening")
        yield* hearsANotification
      }).pipe(Effect.provide(Listener.layer({ url: Redacted.make(viaProxy.toString()), channel: "sync_outbox", paranoidChecking: "500 millis" })))
    }).pipe(Effect.timeout("30 seconds")), 40_000)

  it.scopedLive("a LISTEN refused on the new connection after a reconnect (a standby answering after a failover) is tried again until it holds: not deaf for the connection's life", () =>
    Effect.gen(function*() {
      const target = new URL(url)
      const proxy = yield* Effect.acquireRelease(
        Effect.promise(() => listenRefusingProxy(Number(target.port || 5432))),
        (p) => Effect.promise(p.close)
      )
      const viaProxy = new URL(url)
      viaProxy.host = `127.0.0.1:${proxy.port}`
      yield* Effect.gen(function*() {
        const listener = yield* Listener
        yield* eventually(SubscriptionRef.get(listener.state), (s) => s === "listening")
        proxy.refuse(true)
        const fiber = yield* collect(1)
        yield* killListenerBackend
        // Reconnected, but its LISTEN refused (more than once: it is tried again), and so not listening.
        yield* eventually(Effect.sync(() => proxy.refused()), (n) => n >= 2, { timeout: 10_000 })
        expect(yield* SubscriptionRef.get(listener.state)).toBe("reconnecting")
        expect(fiber.unsafePoll()).toBeNull()
        proxy.refuse(false)
        expect(Chunk.toReadonlyArray(yield* Fiber.join(fiber))).toEqual(["connected"])
        yield* eventually(SubscriptionRef.get(listener.state), (s) => s === "listening")
        yield* hearsANotification
      }).pipe(Effect.provide(Listener.layer({ url: Redacted.make(viaProxy.toString()), channel: "sync_outbox", paranoidChecking: "200 millis" })))
    }).pipe(Effect.timeout("30 seconds")), 40_000)

  it.scopedLive("Listener.off (poll-only) never wakes anyone and says so", () =>
    Effect.gen(function*() {
      const listener = yield* Listener
      expect(yield* SubscriptionRef.get(listener.state)).toBe("off")
      const fiber = yield* collect(1)
      yield* notify(url)
      yield* realSleep(200)
      expect(fiber.unsafePoll()).toBeNull()
    }).pipe(Effect.provide(Listener.off)))
})
