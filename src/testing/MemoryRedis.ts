/**
 * An in-memory Redis that speaks the part of ioredis's API handlers use, for tests with no
 * server. Why not `ioredis-mock`: it peers on ioredis 5 (this package is on 6), and its key
 * expiry reads the wall clock, so a TTL would not follow `TestClock`. Here time comes from the
 * Effect `Clock` the test runs under, values are strings as Redis stores them, a command on a
 * key of the wrong type fails with Redis's own WRONGTYPE reply, and a command this sink does
 * not implement fails with Redis's "unknown command" reply (the item's failure, never a silent
 * success).
 *
 * It can be made unavailable: every command then fails as ioredis does when the connection is
 * closed, so `RedisSink`'s classification, and with it the worker's breaker, behave as with a
 * real Redis going away.
 */
import type { Redis } from "ioredis"

type Value =
  | { readonly type: "string"; value: string }
  | { readonly type: "hash"; readonly value: Map<string, string> }
  | { readonly type: "set"; readonly value: Set<string> }
  | { readonly type: "list"; readonly value: Array<string> }

interface Entry {
  data: Value
  /** Epoch ms, from the test's Clock; undefined: no TTL. */
  expiresAt: number | undefined
}

/** A Redis error reply, as ioredis's `ReplyError` carries it. */
export class ReplyError extends Error {
  override readonly name = "ReplyError"
}

const wrongType = () => new ReplyError("WRONGTYPE Operation against a key holding the wrong kind of value")
const notInteger = () => new ReplyError("ERR value is not an integer or out of range")
const syntax = () => new ReplyError("ERR syntax error")
const arity = (name: string) => new ReplyError(`ERR wrong number of arguments for '${name}' command`)
const unknown = (name: string) =>
  new ReplyError(
    `ERR unknown command '${name}' (sync-outbox/testing's in-memory Redis does not implement it; ` +
      `test this handler against a real Redis: OutboxTest.layerWith takes a RedisSink of your own)`
  )
const invalidExpire = (name: string) => new ReplyError(`ERR invalid expire time in '${name}' command`)

/** What ioredis throws for a command while disconnected (`enableOfflineQueue: false`). */
const closed = () => new Error("Connection is closed.")

const str = (v: unknown): string => {
  if (typeof v === "string") return v
  if (typeof v === "number" || typeof v === "bigint" || typeof v === "boolean") return String(v)
  if (v instanceof Uint8Array) return Buffer.from(v).toString()
  if (v === null || v === undefined) return ""
  return String(v)
}

const toInt = (v: unknown): number => {
  const s = str(v)
  // As Redis reads an integer: no sign but '-', no leading zeros, no spaces ("+5", "007", "-0" are refused).
  if (!/^(0|-?[1-9]\d*)$/.test(s)) throw notInteger()
  const n = Number(s)
  if (!Number.isSafeInteger(n)) throw notInteger()
  return n
}

/** Flatten `(key, value, ...)` or `({ field: value })` or `(Map)` argument forms, as ioredis does. */
const pairs = (args: ReadonlyArray<unknown>): Array<string> => {
  if (args.length === 1 && args[0] instanceof Map) return [...args[0]].flat().map(str)
  if (args.length === 1 && typeof args[0] === "object" && args[0] !== null && !Array.isArray(args[0])) {
    return Object.entries(args[0] as Record<string, unknown>).flat().map(str)
  }
  return args.flat().map(str)
}

const globToRegExp = (glob: string) =>
  new RegExp(
    "^" +
      glob.replace(/\\(.)|([.+^${}()|/])|(\*)|(\?)|\[(!?)([^\]]*)\]/g, (_m, esc, special, star, q, neg, cls) =>
        esc !== undefined ? `\\${esc}` : special !== undefined ? `\\${special}` : star ? ".*" : q ? "." : `[${neg ? "^" : ""}${cls}]`) +
      "$",
    "s"
  )

/** The arguments as ioredis sends them: `hset(key, { field: value })` and `mset({ key: value })` as pairs, arrays spread one level. */
const expand = (name: string, args: ReadonlyArray<unknown>): Array<unknown> => {
  const isPairs = (v: unknown) => v instanceof Map || (typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array))
  if ((name === "hset" || name === "hmset") && args.length === 2 && isPairs(args[1])) return [args[0], ...pairs([args[1]])]
  if (name === "mset" && args.length === 1 && isPairs(args[0])) return pairs(args)
  return args.flat()
}

/** How many arguments each command takes, the key included (Redis's arity, less the command's name). */
const arities: Record<string, readonly [min: number, max: number]> = {
  ping: [0, 1], echo: [1, 1],
  get: [1, 1], set: [2, Infinity], setnx: [2, 2], mget: [1, Infinity], mset: [2, Infinity],
  incr: [1, 1], decr: [1, 1], incrby: [2, 2], decrby: [2, 2],
  del: [1, Infinity], unlink: [1, Infinity], exists: [1, Infinity], type: [1, 1], keys: [1, 1],
  expire: [2, Infinity], pexpire: [2, Infinity], expireat: [2, Infinity], pexpireat: [2, Infinity],
  persist: [1, 1], pttl: [1, 1], ttl: [1, 1],
  hset: [3, Infinity], hmset: [3, Infinity], hsetnx: [3, 3], hget: [2, 2], hmget: [2, Infinity], hgetall: [1, 1],
  hdel: [2, Infinity], hexists: [2, 2], hlen: [1, 1], hkeys: [1, 1], hvals: [1, 1], hincrby: [3, 3],
  sadd: [2, Infinity], srem: [2, Infinity], smembers: [1, 1], sismember: [2, 2], scard: [1, 1],
  lpush: [2, Infinity], rpush: [2, Infinity], lpop: [1, 2], rpop: [1, 2], llen: [1, 1], lrange: [3, 3],
  publish: [2, 2], flushall: [0, 1], flushdb: [0, 1], dbsize: [0, 0]
}

export interface MemoryRedisOptions {
  /** The current time in epoch ms; the test kit passes its Clock's, so TTLs follow `TestClock`. */
  readonly now: () => number
}

type Command = (...args: Array<any>) => unknown

/**
 * The store and its commands. Every command is synchronous here and wrapped into a promise by
 * the client, a pipeline or a transaction.
 */
class Engine {
  readonly keys = new Map<string, Entry>()
  readonly published: Array<{ readonly channel: string; readonly message: string }> = []
  constructor(readonly now: () => number) {}

  private live(key: string): Entry | undefined {
    const entry = this.keys.get(key)
    if (entry === undefined) return undefined
    if (entry.expiresAt !== undefined && entry.expiresAt <= this.now()) {
      this.keys.delete(key)
      return undefined
    }
    return entry
  }
  private typed<T extends Value["type"]>(key: string, type: T): Extract<Value, { type: T }> | undefined {
    const entry = this.live(key)
    if (entry === undefined) return undefined
    if (entry.data.type !== type) throw wrongType()
    return entry.data as Extract<Value, { type: T }>
  }
  private create<T extends Value["type"]>(key: string, type: T, make: () => Extract<Value, { type: T }>) {
    const existing = this.typed(key, type)
    if (existing !== undefined) return existing
    const data = make()
    this.keys.set(key, { data, expiresAt: undefined })
    return data
  }
  private dropIfEmpty(key: string, size: number) {
    if (size === 0) this.keys.delete(key)
  }
  /** EXPIRE and its kin, with Redis 7's conditions (NX, XX, GT, LT: no TTL counts as forever). */
  private expire(key: unknown, at: number, options: ReadonlyArray<unknown>) {
    const given = new Set<string>()
    for (const option of options.map((o) => str(o).toUpperCase())) {
      if (option !== "NX" && option !== "XX" && option !== "GT" && option !== "LT") throw new ReplyError(`ERR Unsupported option ${str(option)}`)
      given.add(option)
    }
    if (given.has("NX") && given.size > 1) throw new ReplyError("ERR NX and XX, GT or LT options at the same time are not compatible")
    if (given.has("GT") && given.has("LT")) throw new ReplyError("ERR GT and LT options at the same time are not compatible")
    const entry = this.live(str(key))
    if (entry === undefined) return 0
    const current = entry.expiresAt ?? Infinity
    if (
      (given.has("NX") && entry.expiresAt !== undefined) || (given.has("XX") && entry.expiresAt === undefined) ||
      (given.has("GT") && !(at > current)) || (given.has("LT") && !(at < current))
    ) return 0
    return this.setExpiry(str(key), at)
  }
  /** LPOP / RPOP: one element, or with a count (Redis 6.2) an array of up to that many; none: null. */
  private pop(key: unknown, count: unknown, take: (list: Array<string>, n: number) => Array<string>) {
    const n = count === undefined ? undefined : toInt(count)
    if (n !== undefined && n < 0) throw new ReplyError("ERR value is out of range, must be positive")
    const k = str(key)
    const list = this.typed(k, "list")?.value
    if (list === undefined) return null
    const taken = take(list, n ?? 1)
    this.dropIfEmpty(k, list.length)
    return n === undefined ? taken[0] ?? null : taken
  }
  private setExpiry(key: string, at: number | undefined) {
    const entry = this.live(key)
    if (entry === undefined) return 0
    if (at !== undefined && at <= this.now()) {
      this.keys.delete(key)
      return 1
    }
    entry.expiresAt = at
    return 1
  }

  readonly commands: Record<string, Command> = {
    ping: (message?: unknown) => (message === undefined ? "PONG" : str(message)),
    echo: (message: unknown) => str(message),
    // Strings
    get: (key: string) => {
      const v = this.typed(str(key), "string")
      return v === undefined ? null : v.value
    },
    set: (key: unknown, value: unknown, ...options: Array<unknown>) => {
      const k = str(key)
      let at: number | undefined
      let keepTtl = false
      let mode: "NX" | "XX" | undefined
      let get = false
      // Redis refuses a second expiry (EX with PX, or with KEEPTTL), NX with XX, and an expiry that
      // is not positive: a TTL computed as 0 is an error there, not a key that is never seen.
      let expiry = false
      for (let i = 0; i < options.length; i++) {
        const option = str(options[i]).toUpperCase()
        const amount = () => {
          if (i + 1 >= options.length || expiry || keepTtl) throw syntax()
          expiry = true
          const n = toInt(options[++i])
          if (n <= 0) throw invalidExpire("set")
          return n
        }
        if (option === "EX") at = this.now() + amount() * 1000
        else if (option === "PX") at = this.now() + amount()
        else if (option === "EXAT") at = amount() * 1000
        else if (option === "PXAT") at = amount()
        else if ((option === "NX" || option === "XX") && (mode === undefined || mode === option)) mode = option
        else if (option === "KEEPTTL" && !expiry) keepTtl = true
        else if (option === "GET") get = true
        else throw syntax()
      }
      const previous = this.live(k)
      if (get && previous !== undefined && previous.data.type !== "string") throw wrongType()
      const old = previous?.data.type === "string" ? previous.data.value : null
      if ((mode === "NX" && previous !== undefined) || (mode === "XX" && previous === undefined)) return get ? old : null
      this.keys.set(k, { data: { type: "string", value: str(value) }, expiresAt: keepTtl ? previous?.expiresAt : at })
      return get ? old : "OK"
    },
    setnx: (key: unknown, value: unknown) => (this.commands["set"]!(key, value, "NX") === "OK" ? 1 : 0),
    mget: (...keys: Array<unknown>) =>
      keys.flat().map((k) => {
        const entry = this.live(str(k))
        return entry?.data.type === "string" ? entry.data.value : null
      }),
    mset: (...args: Array<unknown>) => {
      const flat = pairs(args)
      if (flat.length === 0 || flat.length % 2 !== 0) throw arity("mset")
      for (let i = 0; i < flat.length; i += 2) this.keys.set(flat[i]!, { data: { type: "string", value: flat[i + 1]! }, expiresAt: undefined })
      return "OK"
    },
    incr: (key: unknown) => this.commands["incrby"]!(key, 1),
    decr: (key: unknown) => this.commands["incrby"]!(key, -1),
    decrby: (key: unknown, by: unknown) => this.commands["incrby"]!(key, -toInt(by)),
    incrby: (key: unknown, by: unknown) => {
      const k = str(key)
      const current = this.typed(k, "string")
      const next = (current === undefined ? 0 : toInt(current.value)) + toInt(by)
      if (!Number.isSafeInteger(next)) throw notInteger()
      if (current === undefined) this.keys.set(k, { data: { type: "string", value: String(next) }, expiresAt: undefined })
      else current.value = String(next)
      return next
    },
    // Keys
    del: (...keys: Array<unknown>) => keys.flat().reduce<number>((n, k) => n + (this.live(str(k)) !== undefined && this.keys.delete(str(k)) ? 1 : 0), 0),
    unlink: (...keys: Array<unknown>) => this.commands["del"]!(...keys),
    exists: (...keys: Array<unknown>) => keys.flat().reduce<number>((n, k) => n + (this.live(str(k)) === undefined ? 0 : 1), 0),
    type: (key: unknown) => this.live(str(key))?.data.type ?? "none",
    keys: (pattern: unknown) => {
      const re = globToRegExp(str(pattern))
      return [...this.keys.keys()].filter((k) => re.test(k) && this.live(k) !== undefined)
    },
    expire: (key: unknown, seconds: unknown, ...options: Array<unknown>) => this.expire(key, this.now() + toInt(seconds) * 1000, options),
    pexpire: (key: unknown, ms: unknown, ...options: Array<unknown>) => this.expire(key, this.now() + toInt(ms), options),
    expireat: (key: unknown, at: unknown, ...options: Array<unknown>) => this.expire(key, toInt(at) * 1000, options),
    pexpireat: (key: unknown, at: unknown, ...options: Array<unknown>) => this.expire(key, toInt(at), options),
    persist: (key: unknown) => {
      const entry = this.live(str(key))
      if (entry === undefined || entry.expiresAt === undefined) return 0
      entry.expiresAt = undefined
      return 1
    },
    pttl: (key: unknown) => {
      const entry = this.live(str(key))
      return entry === undefined ? -2 : entry.expiresAt === undefined ? -1 : entry.expiresAt - this.now()
    },
    ttl: (key: unknown) => {
      const ms = this.commands["pttl"]!(key) as number
      return ms < 0 ? ms : Math.round(ms / 1000)
    },
    // Hashes
    hset: (key: unknown, ...args: Array<unknown>) => {
      const flat = pairs(args)
      if (flat.length === 0 || flat.length % 2 !== 0) throw arity("hset")
      const hash = this.create(str(key), "hash", () => ({ type: "hash", value: new Map() })).value
      let added = 0
      for (let i = 0; i < flat.length; i += 2) {
        if (!hash.has(flat[i]!)) added++
        hash.set(flat[i]!, flat[i + 1]!)
      }
      return added
    },
    hmset: (key: unknown, ...args: Array<unknown>) => {
      this.commands["hset"]!(key, ...args)
      return "OK"
    },
    hsetnx: (key: unknown, field: unknown, value: unknown) => {
      const hash = this.create(str(key), "hash", () => ({ type: "hash", value: new Map() })).value
      if (hash.has(str(field))) return 0
      hash.set(str(field), str(value))
      return 1
    },
    hget: (key: unknown, field: unknown) => this.typed(str(key), "hash")?.value.get(str(field)) ?? null,
    hmget: (key: unknown, ...fields: Array<unknown>) => {
      const hash = this.typed(str(key), "hash")?.value
      return fields.flat().map((f) => hash?.get(str(f)) ?? null)
    },
    hgetall: (key: unknown) => Object.fromEntries(this.typed(str(key), "hash")?.value ?? []),
    hdel: (key: unknown, ...fields: Array<unknown>) => {
      const k = str(key)
      const hash = this.typed(k, "hash")?.value
      if (hash === undefined) return 0
      const n = fields.flat().reduce<number>((n, f) => n + (hash.delete(str(f)) ? 1 : 0), 0)
      this.dropIfEmpty(k, hash.size)
      return n
    },
    hexists: (key: unknown, field: unknown) => (this.typed(str(key), "hash")?.value.has(str(field)) ? 1 : 0),
    hlen: (key: unknown) => this.typed(str(key), "hash")?.value.size ?? 0,
    hkeys: (key: unknown) => [...(this.typed(str(key), "hash")?.value.keys() ?? [])],
    hvals: (key: unknown) => [...(this.typed(str(key), "hash")?.value.values() ?? [])],
    hincrby: (key: unknown, field: unknown, by: unknown) => {
      const hash = this.create(str(key), "hash", () => ({ type: "hash", value: new Map() })).value
      const current = hash.get(str(field))
      const increment = toInt(by)
      let value = 0
      if (current !== undefined) {
        try {
          value = toInt(current)
        } catch {
          throw new ReplyError("ERR hash value is not an integer")
        }
      }
      const next = value + increment
      if (!Number.isSafeInteger(next)) throw notInteger()
      hash.set(str(field), String(next))
      return next
    },
    // Sets
    sadd: (key: unknown, ...members: Array<unknown>) => {
      const set = this.create(str(key), "set", () => ({ type: "set", value: new Set() })).value
      return members.flat().reduce<number>((n, m) => (set.has(str(m)) ? n : (set.add(str(m)), n + 1)), 0)
    },
    srem: (key: unknown, ...members: Array<unknown>) => {
      const k = str(key)
      const set = this.typed(k, "set")?.value
      if (set === undefined) return 0
      const n = members.flat().reduce<number>((n, m) => n + (set.delete(str(m)) ? 1 : 0), 0)
      this.dropIfEmpty(k, set.size)
      return n
    },
    smembers: (key: unknown) => [...(this.typed(str(key), "set")?.value ?? [])],
    sismember: (key: unknown, member: unknown) => (this.typed(str(key), "set")?.value.has(str(member)) ? 1 : 0),
    scard: (key: unknown) => this.typed(str(key), "set")?.value.size ?? 0,
    // Lists
    lpush: (key: unknown, ...values: Array<unknown>) => {
      const list = this.create(str(key), "list", () => ({ type: "list", value: [] })).value
      for (const v of values.flat()) list.unshift(str(v))
      return list.length
    },
    rpush: (key: unknown, ...values: Array<unknown>) => {
      const list = this.create(str(key), "list", () => ({ type: "list", value: [] })).value
      for (const v of values.flat()) list.push(str(v))
      return list.length
    },
    lpop: (key: unknown, count?: unknown) => this.pop(key, count, (list, n) => list.splice(0, n)),
    rpop: (key: unknown, count?: unknown) => this.pop(key, count, (list, n) => list.splice(Math.max(0, list.length - n)).reverse()),
    llen: (key: unknown) => this.typed(str(key), "list")?.value.length ?? 0,
    lrange: (key: unknown, start: unknown, stop: unknown) => {
      const list = this.typed(str(key), "list")?.value ?? []
      // As Redis does: both ends counted from the tail when negative, the start clamped at 0; a
      // stop still negative (before the head) is an empty range, where slice would count it from the end.
      const from = Math.max(0, toInt(start) < 0 ? list.length + toInt(start) : toInt(start))
      const to = toInt(stop) < 0 ? list.length + toInt(stop) : toInt(stop)
      return to < from ? [] : list.slice(from, to + 1)
    },
    // Pub/sub: recorded, so a test can see what its handler announced.
    publish: (channel: unknown, message: unknown) => {
      this.published.push({ channel: str(channel), message: str(message) })
      return 0
    },
    flushall: () => {
      this.keys.clear()
      return "OK"
    },
    flushdb: () => this.commands["flushall"]!(),
    dbsize: () => [...this.keys.keys()].filter((k) => this.live(k) !== undefined).length
  }

  /**
   * The command and its arguments as Redis checks them before it runs anything (as it queues a
   * MULTI's): an unknown command, or the wrong number of arguments, is thrown.
   */
  check(name: string, args: ReadonlyArray<unknown>): readonly [Command, Array<unknown>] {
    const lower = name.toLowerCase()
    const command = this.commands[lower]
    if (command === undefined) throw unknown(name)
    const flat = expand(lower, args)
    // Redis counts the arguments before it runs a command: \`SADD key\` with no member (a spread
    // empty list) is an error there, not an empty set, and an extra argument is not ignored.
    const [min, max] = arities[lower] ?? [0, Infinity]
    if (flat.length < min || flat.length > max) throw arity(lower)
    return [command, flat]
  }

  /** Run one command now; a reply error is thrown. */
  run(name: string, args: ReadonlyArray<unknown>): unknown {
    const [command, flat] = this.check(name, args)
    return command(...flat)
  }

  implements(name: string): boolean {
    return name.toLowerCase() in this.commands
  }

  /** Every live key, with its value, in plain JS (strings, objects, arrays). */
  dump(): Record<string, unknown> {
    const out: Record<string, unknown> = {}
    for (const key of [...this.keys.keys()].sort()) {
      const entry = this.live(key)
      if (entry === undefined) continue
      const d = entry.data
      out[key] = d.type === "string" ? d.value : d.type === "hash" ? Object.fromEntries(d.value) : d.type === "set" ? [...d.value].sort() : [...d.value]
    }
    return out
  }
}

// Property reads that are not commands (promise detection, inspection, ioredis introspection).
const notCommands = new Set(["then", "catch", "finally", "constructor", "toJSON", "inspect", "asymmetricMatch", "nodeType", "$$typeof"])

/**
 * The in-memory Redis, typed as ioredis's client so that handlers written against `RedisSink`
 * take it unchanged. `available` and `dump` are the test's controls.
 */
export interface MemoryRedis {
  /** What a handler receives from `RedisSink.use` / `client`. */
  readonly client: Redis
  /** Make every command fail as on a closed connection (true) or serve again (false). */
  readonly setAvailable: (available: boolean) => void
  readonly isAvailable: () => boolean
  /** Every live key and its value. */
  readonly dump: () => Record<string, unknown>
  /** Messages published so far. */
  readonly published: () => ReadonlyArray<{ readonly channel: string; readonly message: string }>
  /** Drop every key and published message. */
  readonly reset: () => void
}

export const make = (options: MemoryRedisOptions): MemoryRedis => {
  const engine = new Engine(options.now)
  let available = true

  const call = (name: string, given: ReadonlyArray<unknown>): Promise<unknown> => {
    // ioredis takes an optional node-style callback last, besides returning a promise.
    const last = given[given.length - 1]
    const callback = typeof last === "function" ? (last as (error: unknown, result?: unknown) => void) : undefined
    const args = callback === undefined ? given : given.slice(0, -1)
    let result: Promise<unknown>
    if (!available) {
      result = Promise.reject(closed())
    } else {
      try {
        result = Promise.resolve(engine.run(name, args))
      } catch (error) {
        result = Promise.reject(error)
      }
    }
    if (callback !== undefined) result.then((value) => callback(null, value), (error) => callback(error))
    return result
  }

  // A pipeline or MULTI: commands queued, run in order on exec, each reply [error, result].
  // MULTI runs them all at once with nothing in between, as Redis does (no rollback on a
  // failing command, also as Redis does), and runs nothing when one was refused as it was
  // queued (unknown, or the wrong number of arguments): EXEC fails with EXECABORT, as there.
  // A command this sink does not implement fails the whole pipeline too: Redis would have run
  // it, so an [error, result] reply a handler never reads would be a silent success here.
  const batch = (transaction: boolean, initial: ReadonlyArray<ReadonlyArray<unknown>> = []) => {
    const queued: Array<readonly [string, ReadonlyArray<unknown>]> = initial.map(([name, ...args]) => [str(name), args] as const)
    const self: Record<string, unknown> = new Proxy({}, {
      get: (_target, prop) => {
        if (typeof prop !== "string" || notCommands.has(prop)) return undefined
        if (prop === "length") return queued.length
        if (prop === "exec") {
          return async (): Promise<Array<[Error | null, unknown]>> => {
            if (!available) throw closed()
            const missing = queued.find(([name]) => !engine.implements(name))
            if (transaction) {
              const previousErrors = queued.flatMap(([name, args]) => {
                try {
                  engine.check(name, args)
                  return []
                } catch (error) {
                  return [error as Error]
                }
              })
              if (previousErrors.length > 0) {
                throw Object.assign(new ReplyError("EXECABORT Transaction discarded because of previous errors."), { previousErrors })
              }
            } else if (missing !== undefined) {
              throw unknown(missing[0])
            }
            return queued.map(([name, args]) => {
              try {
                return [null, engine.run(name, args)]
              } catch (error) {
                return [error as Error, null]
              }
            })
          }
        }
        if (prop === "discard") return () => void queued.splice(0)
        return (...args: Array<unknown>) => {
          // \`.call(name, ...args)\` queues that command, as ioredis's does.
          queued.push(prop === "call" ? [str(args[0]), args.slice(1)] : [prop, args])
          return self
        }
      }
    })
    return self
  }

  const own: Record<string, unknown> = {
    status: "ready",
    pipeline: (commands?: ReadonlyArray<ReadonlyArray<unknown>>) => batch(false, commands),
    multi: (commands?: ReadonlyArray<ReadonlyArray<unknown>>) => batch(true, commands),
    on: () => client,
    once: () => client,
    off: () => client,
    removeListener: () => client,
    quit: () => Promise.resolve("OK"),
    disconnect: () => undefined,
    duplicate: () => client,
    call: (name: unknown, ...args: Array<unknown>) => call(str(name), args)
  }

  const client: Redis = new Proxy(own, {
    get: (target, prop) => {
      if (typeof prop !== "string") return undefined
      if (prop in target) return target[prop]
      if (notCommands.has(prop)) return undefined
      return (...args: Array<unknown>) => call(prop, args)
    }
  }) as unknown as Redis

  return {
    client,
    setAvailable: (next) => {
      available = next
    },
    isAvailable: () => available,
    dump: () => engine.dump(),
    published: () => [...engine.published],
    reset: () => {
      engine.keys.clear()
      engine.published.splice(0)
    }
  }
}
