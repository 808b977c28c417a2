/**
 * The data-plane contract: which Redis keys hold what, and the Lua scripts that write them.
 * Every write carries the source row's version and is refused when Redis already holds a newer
 * one, so a slow worker whose lease expired cannot put old data back. Keys written together
 * share a hash tag (`{models}`, `{providers}`, `{bindings}`), so Redis Cluster accepts them.
 */
import { Effect } from "effect"
import type { SinkCommandError, SinkUnavailable } from "../Errors.js"
import type { RedisClient, RedisSinkShape } from "../RedisSink.js"

export interface Layout {
  readonly master: (id: number) => string
  readonly key: (tokenHash: string) => string
  /** id -> token hash, to find a deleted key's entry when its event did not carry the hash. */
  readonly keyIndex: string
  readonly models: string
  readonly modelVersions: string
  readonly modelIds: string
  readonly providers: string
  readonly providersMeta: string
  readonly bindings: string
  readonly bindingsMeta: string
}

export const layout = (prefix: string): Layout => ({
  master: (id) => `${prefix}:master:${id}`,
  key: (tokenHash) => `${prefix}:key:${tokenHash}`,
  keyIndex: `${prefix}:key-index`,
  models: `${prefix}:{models}`,
  modelVersions: `${prefix}:{models}:versions`,
  modelIds: `${prefix}:{models}:ids`,
  providers: `${prefix}:{providers}`,
  providersMeta: `${prefix}:{providers}:meta`,
  bindings: `${prefix}:{bindings}`,
  bindingsMeta: `${prefix}:{bindings}:meta`
})

/** Replace a whole hash, unless it holds a newer version. ARGV: version, expire-at ms (0: none), ttl ms (0: none), field, value, ... */
const putHash = `
local current = redis.call('HGET', KEYS[1], 'version')
if current and tonumber(current) > tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'version', ARGV[1])
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
local at = tonumber(ARGV[2])
if at > 0 then redis.call('PEXPIREAT', KEYS[1], at) end
local ttl = tonumber(ARGV[3])
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1`

/**
 * Set or delete one model field, unless a newer version of that name was written.
 * KEYS: models, versions, ids. ARGV: name, version, json ('' deletes), id ('' when unknown).
 */
const putModel = `
local current = redis.call('HGET', KEYS[2], ARGV[1])
if current and tonumber(current) > tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  if ARGV[4] ~= '' then redis.call('HDEL', KEYS[3], ARGV[4]) end
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  if ARGV[4] ~= '' then redis.call('HSET', KEYS[3], ARGV[4], ARGV[1]) end
end
return 1`

/**
 * Replace a snapshot hash and its meta entry in one step: a reader sees the old snapshot or the
 * new one, never a mix. KEYS: hash, meta. ARGV: version, updated_at, checksum, field, value, ...
 */
const putSnapshot = `
local current = redis.call('HGET', KEYS[2], 'version')
if current and tonumber(current) > tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[2], 'version', ARGV[1], 'updated_at', ARGV[2], 'checksum', ARGV[3], 'count', tostring((#ARGV - 3) / 2))
return 1`

type Scripted = RedisClient & {
  syncOutboxPutHash(key: string, ...args: Array<string | number>): Promise<number>
  syncOutboxPutModel(models: string, versions: string, ids: string, ...args: Array<string | number>): Promise<number>
  syncOutboxPutSnapshot(hash: string, meta: string, ...args: Array<string | number>): Promise<number>
}

const defined = new WeakSet<object>()
const scripted = (client: RedisClient): Scripted => {
  if (!defined.has(client)) {
    // EVALSHA with a transparent fallback to EVAL, on a single node or a cluster alike.
    client.defineCommand("syncOutboxPutHash", { numberOfKeys: 1, lua: putHash })
    client.defineCommand("syncOutboxPutModel", { numberOfKeys: 3, lua: putModel })
    client.defineCommand("syncOutboxPutSnapshot", { numberOfKeys: 2, lua: putSnapshot })
    defined.add(client)
  }
  return client as Scripted
}

/** What a versioned write did: `written`, or `stale` when Redis already held newer data. */
export type WriteResult = "written" | "stale"

const result = (n: number): WriteResult => (n === 1 ? "written" : "stale")

type Fail = SinkUnavailable | SinkCommandError

export const writeHash = (
  redis: RedisSinkShape,
  key: string,
  version: number,
  fields: Record<string, string>,
  options: { readonly expireAt?: Date | null | undefined; readonly ttlMs?: number | undefined } = {}
): Effect.Effect<WriteResult, Fail> =>
  redis.use((c) =>
    scripted(c).syncOutboxPutHash(
      key,
      version,
      options.expireAt?.getTime() ?? 0,
      options.ttlMs ?? 0,
      ...Object.entries(fields).flat()
    )
  ).pipe(Effect.map(result))

export const writeModel = (
  redis: RedisSinkShape,
  l: Layout,
  name: string,
  version: number,
  json: string | null,
  id: number | null
): Effect.Effect<WriteResult, Fail> =>
  redis.use((c) =>
    scripted(c).syncOutboxPutModel(l.models, l.modelVersions, l.modelIds, name, version, json ?? "", id === null ? "" : String(id))
  ).pipe(Effect.map(result))

export const writeSnapshot = (
  redis: RedisSinkShape,
  hash: string,
  meta: string,
  version: number,
  updatedAt: Date,
  checksum: string,
  entries: ReadonlyArray<readonly [string, string]>
): Effect.Effect<WriteResult, Fail> =>
  redis.use((c) =>
    scripted(c).syncOutboxPutSnapshot(hash, meta, version, updatedAt.toISOString(), checksum, ...entries.flat())
  ).pipe(Effect.map(result))
