/**
 * The test kit's in-memory Redis against a real Redis: the same commands, the same replies
 * (errors compared by their first word, which is what a handler or classification reads).
 */
import { describe, expect, it } from "vitest"
import { Redis } from "ioredis"
import { afterAll, beforeAll } from "vitest"
import { MemoryRedis } from "../src/testing/index.js"
import { prefix, redisUrl } from "./support/harness.js"

let real: Redis
beforeAll(() => {
  real = new Redis(redisUrl())
})
afterAll(() => {
  real.disconnect()
})

type Step = readonly [command: string, ...args: Array<unknown>]

/** Run each step on a client, replies or error first words, key names prefixed on the real one. */
const run = async (client: Redis, steps: ReadonlyArray<Step>) => {
  const out: Array<unknown> = []
  for (const [command, ...args] of steps) {
    try {
      const reply = await (client as unknown as Record<string, (...a: Array<unknown>) => Promise<unknown>>)[command]!(...args)
      out.push(Array.isArray(reply) && (command === "smembers" || command === "keys") ? [...reply].sort() : reply)
    } catch (error) {
      out.push(`error ${String((error as Error).message).split(" ")[0]}`)
    }
  }
  return out
}

describe("MemoryRedis speaks Redis", () => {
  it("strings, hashes, sets, lists, expiry and errors reply as a real Redis does", async () => {
    const p = prefix()
    const k = (name: string) => `${p}${name}`
    let now = Date.now()
    const memory = MemoryRedis.make({ now: () => now })
    const steps: ReadonlyArray<Step> = [
      ["set", k("s"), "1"],
      ["get", k("s")],
      ["incr", k("s")],
      ["incrby", k("s"), 10],
      ["decr", k("s")],
      ["set", k("s"), "x", "NX"],
      ["set", k("n"), "y", "XX"],
      ["set", k("s"), "z", "GET"],
      ["incr", k("s")],
      ["mget", k("s"), k("missing")],
      ["hset", k("h"), "a", "1", "b", "2"],
      ["hset", k("h"), { b: "3", c: "4" }],
      ["hget", k("h"), "b"],
      ["hmget", k("h"), "a", "zz"],
      ["hgetall", k("h")],
      ["hincrby", k("h"), "a", 5],
      ["hdel", k("h"), "a", "zz"],
      ["hexists", k("h"), "a"],
      ["hlen", k("h")],
      ["hgetall", k("nothing")],
      ["get", k("h")],
      ["hset", k("s"), "f", "v"],
      ["sadd", k("set"), "a", "b", "a"],
      ["sismember", k("set"), "b"],
      ["srem", k("set"), "a", "q"],
      ["smembers", k("set")],
      ["scard", k("set")],
      ["rpush", k("l"), "1", "2"],
      ["lpush", k("l"), "0"],
      ["lrange", k("l"), 0, -1],
      ["lrange", k("l"), -2, -1],
      ["llen", k("l")],
      ["lpop", k("l")],
      ["type", k("l")],
      ["type", k("h")],
      ["type", k("none")],
      ["exists", k("s"), k("h"), k("none")],
      ["del", k("s"), k("none")],
      ["exists", k("s")],
      ["pexpire", k("h"), 60_000],
      ["persist", k("h")],
      ["pttl", k("h")],
      ["ttl", k("none")],
      ["srem", k("set"), "b"],
      ["exists", k("set")],
      ["ping"]
    ]
    expect(await run(memory.client, steps)).toEqual(await run(real, steps))
    // Expiry on the given clock: due exactly at its time.
    await memory.client.set("e", "v", "PX", 100)
    now += 99
    expect(await memory.client.get("e")).toBe("v")
    now += 1
    expect(await memory.client.get("e")).toBeNull()
  })

  it("refuses what a real Redis refuses: an expiry that is not positive, clashing SET options, a missing or extra argument, an integer Redis would not read", async () => {
    const p = prefix()
    const k = (name: string) => `${p}${name}`
    const memory = MemoryRedis.make({ now: Date.now })
    const steps: ReadonlyArray<Step> = [
      // A TTL computed as 0 is an error in production, not a key nobody sees.
      ["set", k("a"), "v", "EX", 0],
      ["set", k("a"), "v", "PX", -5],
      ["set", k("a"), "v", "EX", 10, "PX", 100],
      ["set", k("a"), "v", "EX", 10, "KEEPTTL"],
      ["set", k("a"), "v", "NX", "XX"],
      ["exists", k("a")],
      // A spread empty list: no member is no command, not an empty key.
      ["sadd", k("s")],
      ["rpush", k("l")],
      ["lpush", k("l"), []],
      ["del"],
      ["mget"],
      ["exists", k("s"), k("l")],
      ["get", k("a"), "extra"],
      ["hget", k("h"), "f", "extra"],
      ["incr", k("a"), 5],
      ["ttl", k("a"), 3],
      // EXPIRE's conditions (Redis 7).
      ["set", k("e"), "v", "EX", 100],
      ["expire", k("e"), 10, "NX"],
      ["expire", k("e"), 1000, "LT"],
      ["expire", k("e"), 1000, "GT"],
      ["ttl", k("e")],
      ["expire", k("e"), 10, "NX", "XX"],
      ["expire", k("e"), 10, "GT", "LT"],
      ["expire", k("e"), 10, "SOON"],
      ["set", k("n"), "v"],
      ["expire", k("n"), 10, "XX"],
      ["expire", k("n"), 10, "GT"],
      ["expire", k("n"), 10, "LT"],
      ["ttl", k("n")],
      // Integers as Redis reads them.
      ["set", k("i"), "+5"],
      ["incr", k("i")],
      ["set", k("i"), "007"],
      ["incr", k("i")],
      ["incrby", k("j"), "+3"],
      ["hset", k("h"), "f", "x"],
      ["hincrby", k("h"), "f", 1]
    ]
    expect(await run(memory.client, steps)).toEqual(await run(real, steps))
  })

  it("lists reply as a real Redis does: LRANGE past either end, LPOP / RPOP with a count", async () => {
    const p = prefix()
    const k = (name: string) => `${p}${name}`
    const memory = MemoryRedis.make({ now: Date.now })
    const steps: ReadonlyArray<Step> = [
      ["rpush", k("l"), "a", "b", "c", "d", "e"],
      ["lrange", k("l"), 0, -6],
      ["lrange", k("l"), 0, -7],
      ["lrange", k("l"), -100, 1],
      ["lrange", k("l"), 2, 100],
      ["lrange", k("l"), 3, 1],
      ["lpop", k("l"), 2],
      ["rpop", k("l"), 1],
      ["lpop", k("l"), 0],
      ["lpop", k("l"), -1],
      ["rpop", k("l"), 5],
      ["exists", k("l")],
      ["lpop", k("l"), 2],
      ["lpop", k("l")]
    ]
    expect(await run(memory.client, steps)).toEqual(await run(real, steps))
  })

  it("MULTI and pipelines reply [error, result] per command, as ioredis gives them", async () => {
    const p = prefix()
    const memory = MemoryRedis.make({ now: Date.now })
    const script = (c: Redis) => c.multi().set(`${p}a`, "1").hset(`${p}a`, "f", "v").incr(`${p}a`).exec()
    const simplify = (replies: Array<[Error | null, unknown]> | null) =>
      (replies ?? []).map(([error, value]) => (error === null ? value : `error ${error.message.split(" ")[0]}`))
    expect(simplify(await script(memory.client))).toEqual(simplify(await script(real)))
    const pipelined = (c: Redis) => c.pipeline().set(`${p}b`, "2").get(`${p}b`).exec()
    expect(simplify(await pipelined(memory.client))).toEqual(simplify(await pipelined(real)))
  })

  it("unavailable: every command, pipeline and ping fails as ioredis does on a closed connection", async () => {
    const memory = MemoryRedis.make({ now: Date.now })
    memory.setAvailable(false)
    await expect(memory.client.get("a")).rejects.toThrow("Connection is closed.")
    await expect(memory.client.pipeline().get("a").exec()).rejects.toThrow("Connection is closed.")
    memory.setAvailable(true)
    expect(await memory.client.ping()).toBe("PONG")
  })

  it("a command it does not implement fails with Redis's unknown-command reply, never a silent success", async () => {
    const memory = MemoryRedis.make({ now: Date.now })
    await expect(memory.client.zadd("z", 1, "m")).rejects.toThrow(/^ERR unknown command 'zadd'/)
    await expect(memory.client.eval("return 1", 0)).rejects.toThrow(/^ERR unknown command 'eval'/)
    // And what to do about it: the same driver runs over a real Redis.
    await expect(memory.client.zadd("z", 1, "m")).rejects.toThrow(/a real Redis.*OutboxTest\.layerWith/)
  })

  it("a MULTI with a command Redis refuses as it queues it runs nothing: EXEC fails with EXECABORT", async () => {
    const p = prefix()
    const memory = MemoryRedis.make({ now: Date.now })
    const script = (c: Redis) => c.multi().set(`${p}a`, "1").call("get", `${p}a`, "extra").exec()
    const outcome = async (c: Redis) => {
      const error = await script(c).then(() => "none", (e: Error) => e.message)
      return [error, await c.exists(`${p}a`)]
    }
    expect(await outcome(memory.client)).toEqual(await outcome(real))
    expect(await outcome(memory.client)).toEqual(["EXECABORT Transaction discarded because of previous errors.", 0])
  })

  it("a MULTI or a pipeline holding a command it does not implement fails whole, rather than apply the rest and answer with an error nobody reads", async () => {
    const memory = MemoryRedis.make({ now: Date.now })
    await expect(memory.client.multi().set("a", "1").zadd("z", 1, "m").exec()).rejects.toThrow(/^EXECABORT/)
    await expect(memory.client.pipeline().set("a", "1").zadd("z", 1, "m").exec()).rejects.toThrow(/^ERR unknown command 'zadd'/)
    expect(memory.dump()).toEqual({})
  })
})
