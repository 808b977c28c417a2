/**
 * Where the data plane's values live in Redis, and the Lua scripts that write them. The default
 * layout is ez-api's contract (`ez-api-contract.md` §1): the balancer reads those keys as they are.
 *
 * The values hold only what the balancer reads. What keeps writes safe lives beside them, in
 * bookkeeping keys under `sync:` that the balancer never reads:
 *
 * - a *record* per entry (`sync:rec:{<entry key>}`, a hash `v` version, `id` owning row, `d`
 *   digest), checked and written by the same script as the entry. A write older than the record
 *   is refused; so is one of the same version with other data, and one from an older row (lower
 *   id) than the record's owner: a late delete of key 1 cannot remove key 2 that re-uses its token.
 *   A removal leaves its record as a tombstone with a TTL, so bookkeeping of gone rows is pruned.
 *   The record's name carries the entry's key as its hash tag, so both sit in one Cluster slot.
 * - indexes (`sync:key-owners`: key id -> `<token hash>:<master id>`; `sync:masters`: master ids)
 *   to find what to remove when a row is gone without an event naming it.
 *
 * Redis Cluster: the contract's names share no hash tag, and a snapshot is written with its meta
 * hash in one script. `layout({ cluster: true })` keeps the contract's `auth:*` names (their
 * records are co-slotted) and puts the snapshot and meta hashes under one tag, `{dp}`, so they stay
 * atomic there. A reconciler can reuse `layout`, the `write*` functions and the indexes below.
 */
import { Effect } from "effect"
import type { SinkCommandError, SinkUnavailable } from "../Errors.js"
import type { RedisClient, RedisSinkShape } from "../RedisSink.js"
import * as Contract from "./Contract.js"
import * as Inferred from "./Inferred.js"

export interface LayoutOptions {
  /** Prepended as is to every key and to the refresh channel (default none: the contract's names). */
  readonly prefix?: string | undefined
  /** Put the snapshot and meta hashes under one hash tag, for Redis Cluster (default false). */
  readonly cluster?: boolean | undefined
}

export interface Layout {
  readonly token: (tokenHash: string) => string
  readonly master: (id: number) => string
  readonly providers: string
  readonly providersMeta: string
  readonly bindings: string
  readonly models: string
  readonly modelsMeta: string
  readonly refreshChannel: string
  /** The bookkeeping record of a whole key (an auth hash, a snapshot hash). */
  readonly record: (key: string) => string
  readonly modelRecord: (field: string) => string
  readonly modelIdRecord: (id: number) => string
  /** Bumped by every model write: the models meta is written only over the state it was computed from. */
  readonly modelsGeneration: string
  readonly keyIndex: string
  readonly masterIndex: string
  /**
   * Written first by every full repair (`DataPlaneReconciler`): its absence means Redis lost what it
   * was told (restarted empty, failed over to an empty replica) or was never synced.
   */
  readonly generationMarker: string
}

export const layout = (options: LayoutOptions = {}): Layout => {
  const p = options.prefix ?? ""
  const snap = (name: string) => (options.cluster === true ? `${p}{dp}${name}` : `${p}${name}`)
  const record = (key: string) => (/\{[^}]+\}/.test(key) ? `${p}sync:rec:${key}` : `${p}sync:rec:{${key}}`)
  const models = snap("meta:models")
  return {
    token: (tokenHash) => `${p}auth:token:${tokenHash}`,
    master: (id) => `${p}${Inferred.masterKeyPrefix}${id}`,
    providers: snap("config:providers"),
    providersMeta: snap("meta:providers_meta"),
    bindings: snap(Inferred.bindingsKey),
    models,
    modelsMeta: snap("meta:models_meta"),
    refreshChannel: `${p}${Contract.refreshChannel}`,
    record,
    modelRecord: (field) => `${record(models)}:field:${field}`,
    modelIdRecord: (id) => `${record(models)}:id:${id}`,
    modelsGeneration: `${record(models)}:generation`,
    keyIndex: `${p}sync:key-owners`,
    masterIndex: `${p}sync:masters`,
    generationMarker: `${p}sync:generation`
  }
}

/**
 * A key the script reads or writes as a hash that holds something else (a hand edit) is dropped
 * first: it holds nothing a hash could, and left there it would fail every write to it (WRONGTYPE).
 */
const hashOrNothing = (key: string) => `if redis.call('TYPE', ${key}).ok ~= 'hash' then redis.call('DEL', ${key}) end`

/**
 * Is a write (version, owner, digest) older than the record `cur` (`v`, `id`, `d`)? Shared by the
 * scripts: a newer owner wins; for one owner, a higher version; an equal version only with equal data.
 */
const refuseOlder = (cur: string, version: string, owner: string, digest: string) => `
${hashOrNothing(cur)}
local cur = redis.call('HMGET', ${cur}, 'v', 'id', 'd')
if cur[1] then
  local cv, cid = tonumber(cur[1]) or 0, tonumber(cur[2]) or 0
  if cid > tonumber(${owner}) then return 0 end
  if cid == tonumber(${owner}) then
    if cv > tonumber(${version}) then return 0 end
    if cv == tonumber(${version}) and cur[3] ~= ${digest} then return 0 end
  end
end`

/**
 * Put or remove one auth hash. KEYS: entry, record.
 * ARGV: mode (put|remove), version, owner id, digest, expire-at ms (0: none), tombstone ttl ms, field, value, ...
 */
const putEntry = `
${refuseOlder("KEYS[2]", "ARGV[2]", "ARGV[3]", "ARGV[4]")}
redis.call('DEL', KEYS[1])
if ARGV[1] == 'put' then
  if #ARGV >= 8 then redis.call('HSET', KEYS[1], unpack(ARGV, 7, #ARGV)) end
  local at = tonumber(ARGV[5])
  if at > 0 then redis.call('PEXPIREAT', KEYS[1], at) end
  redis.call('HSET', KEYS[2], 'v', ARGV[2], 'id', ARGV[3], 'd', ARGV[4])
  redis.call('PERSIST', KEYS[2])
else
  redis.call('HSET', KEYS[2], 'v', ARGV[2], 'id', ARGV[3], 'd', 'removed')
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
end
return 1`

/**
 * Put or remove one model field. KEYS: models, field record, id record, record of the field the
 * id had (as read before the call), generation.
 * ARGV: mode, field, version, owner id (0: unknown), digest, json, that previous field ('' none),
 * tombstone ttl ms, gone owner (0: none).
 * Returns -1 when the id's field changed since it was read (the caller reads again).
 *
 * Several names file under one field (`gpt-4o`, `default.gpt-4o`): the newest row owns it, and an
 * older one's write is refused. Once that owner's row is gone (the caller checked: ids are never
 * reused), it fences nothing any more: a write naming it as the gone owner replaces its record,
 * which then remembers it, so that its late writes and removals stay refused.
 */
const putModel = `
${hashOrNothing("KEYS[1]")}
${hashOrNothing("KEYS[2]")}
${hashOrNothing("KEYS[3]")}
${hashOrNothing("KEYS[4]")}
if redis.call('TYPE', KEYS[5]).ok ~= 'string' then redis.call('DEL', KEYS[5]) end
local gone = redis.call('HGET', KEYS[2], 'gone')
if gone == ARGV[4] then return 0 end
if tonumber(ARGV[9]) > 0 and redis.call('HGET', KEYS[2], 'id') == ARGV[9] then
  redis.call('DEL', KEYS[2])
  gone = ARGV[9]
end
if tonumber(ARGV[4]) > 0 and tonumber(redis.call('HGET', KEYS[3], 'v') or '0') > tonumber(ARGV[3]) then return 0 end
${refuseOlder("KEYS[2]", "ARGV[3]", "ARGV[4]", "ARGV[5]")}
if tonumber(ARGV[4]) > 0 then
  local old = redis.call('HGET', KEYS[3], 'f') or ''
  if old ~= ARGV[7] then return -1 end
  -- Renamed: the old name's field goes, if this model still owns it.
  if old ~= '' and old ~= ARGV[2] and redis.call('HGET', KEYS[4], 'id') == ARGV[4] then
    redis.call('HDEL', KEYS[1], old)
    redis.call('DEL', KEYS[4])
  end
end
if ARGV[1] == 'put' then
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[6])
  redis.call('HSET', KEYS[2], 'v', ARGV[3], 'id', ARGV[4], 'd', ARGV[5])
  redis.call('PERSIST', KEYS[2])
  redis.call('HSET', KEYS[3], 'v', ARGV[3], 'f', ARGV[2])
  redis.call('PERSIST', KEYS[3])
else
  redis.call('HDEL', KEYS[1], ARGV[2])
  redis.call('HSET', KEYS[2], 'v', ARGV[3], 'id', ARGV[4], 'd', 'removed')
  redis.call('PEXPIRE', KEYS[2], ARGV[8])
  if tonumber(ARGV[4]) > 0 then
    redis.call('HSET', KEYS[3], 'v', ARGV[3], 'f', ARGV[2])
    redis.call('PEXPIRE', KEYS[3], ARGV[8])
  end
end
if gone then redis.call('HSET', KEYS[2], 'gone', gone) end
redis.call('INCR', KEYS[5])
return 1`

/** The models hash and its generation, read together. KEYS: models, generation. */
const readModels = `
local generation = redis.call('TYPE', KEYS[2]).ok == 'string' and redis.call('GET', KEYS[2]) or '0'
return { generation, redis.call('TYPE', KEYS[1]).ok == 'hash' and redis.call('HGETALL', KEYS[1]) or {} }`

/**
 * Write `meta:models_meta` unless the models changed since it was computed; publish when it
 * changed. KEYS: meta, generation. ARGV: generation, version, updated_at, source, checksum, channel, event.
 */
const putModelsMeta = `
${hashOrNothing("KEYS[1]")}
if redis.call('TYPE', KEYS[2]).ok ~= 'string' then redis.call('DEL', KEYS[2]) end
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[1] then return 0 end
-- Already there, whole: every field the contract requires, not the checksum alone (a hand edit).
local cur = redis.call('HMGET', KEYS[1], 'checksum', 'version', 'updated_at', 'source')
if cur[1] == ARGV[5] and cur[2] == ARGV[2] and cur[3] and cur[4] == ARGV[4] then return 1 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'updated_at', ARGV[3], 'source', ARGV[4], 'checksum', ARGV[5])
redis.call('PUBLISH', ARGV[6], ARGV[7])
return 1`

/**
 * Replace a snapshot hash (and its meta hash) in one step, then publish the refresh event: a
 * reader sees the old snapshot or the new one. KEYS: hash, meta (or the record when none), record.
 * ARGV: generation, checksum, timestamp, with meta (1|0), channel, event, field, value, ...
 * The generation is the control plane's fence: a higher one was read later (see ControlPlane).
 */
const putSnapshot = `
${hashOrNothing("KEYS[3]")}
local cur = redis.call('HMGET', KEYS[3], 'v', 'd')
if cur[1] then
  local cv = tonumber(cur[1]) or 0
  if cv > tonumber(ARGV[1]) then return 0 end
  if cv == tonumber(ARGV[1]) and cur[2] ~= ARGV[2] then return 0 end
end
redis.call('DEL', KEYS[1])
for i = 7, #ARGV, 200 do
  redis.call('HSET', KEYS[1], unpack(ARGV, i, math.min(i + 199, #ARGV)))
end
if ARGV[4] == '1' then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[2], 'version', ARGV[1], 'timestamp', ARGV[3], 'checksum', ARGV[2])
end
redis.call('HSET', KEYS[3], 'v', ARGV[1], 'd', ARGV[2])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1`

type Scripted = RedisClient & {
  syncOutboxPutEntry(entry: string, record: string, ...args: Array<string | number>): Promise<number>
  syncOutboxPutModel(...keysAndArgs: Array<string | number>): Promise<number>
  syncOutboxReadModels(models: string, generation: string): Promise<[string, Array<string>]>
  syncOutboxPutModelsMeta(meta: string, generation: string, ...args: Array<string | number>): Promise<number>
  syncOutboxPutSnapshot(hash: string, meta: string, record: string, ...args: Array<string | number>): Promise<number>
}

const defined = new WeakSet<object>()
const scripted = (client: RedisClient): Scripted => {
  if (!defined.has(client)) {
    // EVALSHA with a transparent fallback to EVAL, on a single node or a cluster alike.
    client.defineCommand("syncOutboxPutEntry", { numberOfKeys: 2, lua: putEntry })
    client.defineCommand("syncOutboxPutModel", { numberOfKeys: 5, lua: putModel })
    client.defineCommand("syncOutboxReadModels", { numberOfKeys: 2, lua: readModels })
    client.defineCommand("syncOutboxPutModelsMeta", { numberOfKeys: 2, lua: putModelsMeta })
    client.defineCommand("syncOutboxPutSnapshot", { numberOfKeys: 3, lua: putSnapshot })
    defined.add(client)
  }
  return client as Scripted
}

/** What a versioned write did: `written`, or `stale` when Redis already held newer (or conflicting) data. */
export type WriteResult = "written" | "stale"

const result = (n: number): WriteResult => (n === 1 ? "written" : "stale")

type Fail = SinkUnavailable | SinkCommandError

/** A digest of a write's content: what an equal version must match to be accepted. */
export const digest = (fields: Record<string, string> | string): string =>
  Contract.checksumFromPayloads(typeof fields === "string" ? [["", fields]] : Object.entries(fields))

/** Where a write stands: the row's version and the row that owns the entry. */
export interface Versioned {
  readonly version: number
  /** The row that owns the entry (a key id, a master id): an older row never overwrites a newer one. */
  readonly owner: number
}

const put = (
  redis: RedisSinkShape,
  key: string,
  record: string,
  at: Versioned,
  fields: Record<string, string>,
  expireAt: Date | null = null
): Effect.Effect<WriteResult, Fail> =>
  redis.use((c) =>
    scripted(c).syncOutboxPutEntry(key, record, "put", at.version, at.owner, digest(fields), expireAt?.getTime() ?? 0, 0, ...Object.entries(fields).flat())
  ).pipe(Effect.map(result))

/** Write an auth hash (`auth:token:*`, `auth:master:*`) with its record. */
export const writeEntry = (
  redis: RedisSinkShape,
  l: Layout,
  key: string,
  at: Versioned,
  fields: Record<string, string>,
  expireAt: Date | null = null
) => put(redis, key, l.record(key), at, fields, expireAt)

/** One auth hash to write with `writeEntries`. */
export interface EntryWrite {
  readonly key: string
  readonly at: Versioned
  readonly fields: Record<string, string>
  readonly expireAt?: Date | null | undefined
}

/**
 * `writeEntry` for many entries at once, through the same script, pipelined in one round trip
 * (a reconciler's repair): each is fenced on its own, as if written alone.
 */
export const writeEntries = (
  redis: RedisSinkShape,
  l: Layout,
  entries: ReadonlyArray<EntryWrite>
): Effect.Effect<ReadonlyArray<WriteResult>, Fail> =>
  entries.length === 0
    ? Effect.succeed([])
    : redis.use((c) =>
      Promise.all(entries.map((e) =>
        scripted(c).syncOutboxPutEntry(
          e.key,
          l.record(e.key),
          "put",
          e.at.version,
          e.at.owner,
          digest(e.fields),
          e.expireAt?.getTime() ?? 0,
          0,
          ...Object.entries(e.fields).flat()
        )
      ))
    ).pipe(Effect.map((results) => results.map(result)))

/** Remove an auth hash, leaving a tombstone record for `tombstoneMs`. */
export const removeEntry = (
  redis: RedisSinkShape,
  l: Layout,
  key: string,
  at: Versioned,
  tombstoneMs: number
): Effect.Effect<WriteResult, Fail> =>
  redis.use((c) => scripted(c).syncOutboxPutEntry(key, l.record(key), "remove", at.version, at.owner, "removed", 0, tombstoneMs))
    .pipe(Effect.map(result))

/**
 * Put (json) or remove (null) the model field `field` for model `owner` (0: unknown). When the
 * model had another field (renamed), that field goes in the same step. `gone`: the field's
 * recorded owner, when the caller found its row gone (see `putModel`).
 */
export const writeModel = (
  redis: RedisSinkShape,
  l: Layout,
  field: string,
  at: Versioned,
  json: string | null,
  tombstoneMs: number,
  gone = 0
): Effect.Effect<WriteResult, Fail> =>
  Effect.gen(function*() {
    for (let attempt = 0; attempt < 5; attempt++) {
      const previous = at.owner > 0 ? (yield* redis.use((c) => c.hget(l.modelIdRecord(at.owner), "f"))) ?? "" : ""
      const n = yield* redis.use((c) =>
        scripted(c).syncOutboxPutModel(
          l.models,
          l.modelRecord(field),
          l.modelIdRecord(at.owner),
          l.modelRecord(previous === "" ? field : previous),
          l.modelsGeneration,
          json === null ? "remove" : "put",
          field,
          at.version,
          at.owner,
          json === null ? "removed" : digest(json),
          json ?? "",
          previous,
          tombstoneMs,
          gone
        )
      )
      if (n !== -1) return result(n)
    }
    return "stale" as const
  })

/** The owner recorded for a model field, if any. */
export const modelOwner = (redis: RedisSinkShape, l: Layout, field: string) =>
  redis.use((c) => c.hget(l.modelRecord(field), "id").catch(wrongType<string | null>(null))).pipe(
    Effect.map((id) => (id === null ? 0 : Number(id) || 0))
  )

/**
 * Recompute `meta:models_meta` from the models hash (§2.4: `ChecksumFromPayloads` over every
 * field) and write it unless a model write happened meanwhile (that writer recomputes).
 */
export const refreshModelsMeta = (redis: RedisSinkShape, l: Layout, now: Date): Effect.Effect<void, Fail> =>
  Effect.gen(function*() {
    const [generation, flat] = yield* redis.use((c) => scripted(c).syncOutboxReadModels(l.models, l.modelsGeneration))
    const entries: Array<readonly [string, string]> = []
    for (let i = 0; i < flat.length; i += 2) entries.push([flat[i]!, flat[i + 1]!])
    const checksum = Contract.checksumFromPayloads(entries)
    // Opaque (§2.4): a content id, so equal content always carries an equal version.
    const version = checksum.slice(0, 16)
    const timestamp = Contract.unixSeconds(now)
    yield* redis.use((c) =>
      scripted(c).syncOutboxPutModelsMeta(
        l.modelsMeta,
        l.modelsGeneration,
        generation,
        version,
        timestamp,
        Inferred.modelsMetaSource,
        checksum,
        l.refreshChannel,
        Contract.refreshEvent(Inferred.refreshResource.models, version, timestamp)
      )
    )
  })

export type SnapshotName = "providers" | "bindings"

/** Replace a whole snapshot (and, for providers, `meta:providers_meta`), fenced by its generation. */
export const writeSnapshot = (
  redis: RedisSinkShape,
  l: Layout,
  which: SnapshotName,
  generation: number,
  checksum: string,
  entries: ReadonlyArray<readonly [string, string]>,
  now: Date
): Effect.Effect<WriteResult, Fail> => {
  const hash = which === "providers" ? l.providers : l.bindings
  const record = l.record(hash)
  const timestamp = Contract.unixSeconds(now)
  return redis.use((c) =>
    scripted(c).syncOutboxPutSnapshot(
      hash,
      which === "providers" ? l.providersMeta : record,
      record,
      generation,
      checksum,
      timestamp,
      which === "providers" ? "1" : "0",
      l.refreshChannel,
      Contract.refreshEvent(Inferred.refreshResource[which], String(generation), timestamp),
      ...entries.flat()
    )
  ).pipe(Effect.map(result))
}

// -------------------------------------------------------------------------------------------
// Indexes: what was written for which row, to remove it when the row is gone unannounced.
// -------------------------------------------------------------------------------------------

export interface IndexedKey {
  readonly id: number
  readonly tokenHash: string
  readonly masterId: number
}

export const indexKey = (redis: RedisSinkShape, l: Layout, k: IndexedKey) =>
  redis.use((c) => c.hset(l.keyIndex, String(k.id), `${k.tokenHash}:${k.masterId}`))
/** `indexKey` for many keys in one command (a reconciler's repair). */
export const indexKeys = (redis: RedisSinkShape, l: Layout, keys: ReadonlyArray<IndexedKey>) =>
  keys.length === 0
    ? Effect.succeed(0)
    : redis.use((c) => c.hset(l.keyIndex, ...keys.flatMap((k) => [String(k.id), `${k.tokenHash}:${k.masterId}`])))
export const unindexKey = (redis: RedisSinkShape, l: Layout, id: number) => redis.use((c) => c.hdel(l.keyIndex, String(id)))

/** An index overwritten with another type (a hand edit) reads as empty; a repair replaces it (`resetIndexes`). */
const wrongType = <A>(empty: A) => (error: unknown): A => {
  if (error instanceof Error && error.message.startsWith("WRONGTYPE")) return empty
  throw error
}

/** Drop an index that holds another type than its own, so that the writes after it rebuild it. */
export const resetIndexes = (redis: RedisSinkShape, l: Layout) =>
  redis.use((c) =>
    Promise.all(([[l.keyIndex, "hash"], [l.masterIndex, "set"]] as const).map(async ([key, type]) => {
      const held = await c.type(key)
      if (held !== "none" && held !== type) await c.del(key)
    }))
  )

/** A row id as the indexes hold it: a positive decimal integer, nothing else. */
const rowId = (text: string): number | undefined => {
  const n = Number(text)
  return Number.isSafeInteger(n) && n > 0 && String(n) === text ? n : undefined
}

/**
 * Every key the index holds (HSCAN, so a large index does not block Redis). An entry that names
 * no row (a hand edit: not an id, not a token hash) is skipped: it could only fail the SQL that
 * looks its row up, and with it the sweep or `sync_all` that read it.
 */
export const indexedKeys = (redis: RedisSinkShape, l: Layout): Effect.Effect<ReadonlyArray<IndexedKey>, Fail> =>
  Effect.gen(function*() {
    const out: Array<IndexedKey> = []
    let cursor = "0"
    do {
      const [next, flat] = yield* redis.use((c) => c.hscan(l.keyIndex, cursor, "COUNT", 1000).catch(wrongType<[string, Array<string>]>(["0", []])))
      for (let i = 0; i < flat.length; i += 2) {
        const [tokenHash, masterId] = flat[i + 1]!.split(":")
        const id = rowId(flat[i]!)
        if (id === undefined || !/^[0-9a-f]{64}$/.test(tokenHash ?? "")) continue
        out.push({ id, tokenHash: tokenHash!, masterId: rowId(masterId ?? "") ?? 0 })
      }
      cursor = next
    } while (cursor !== "0")
    return out
  })

export const indexedKeyHash = (redis: RedisSinkShape, l: Layout, id: number) =>
  redis.use((c) => c.hget(l.keyIndex, String(id))).pipe(Effect.map((v) => (v === null ? undefined : v.split(":")[0])))

export const indexMaster = (redis: RedisSinkShape, l: Layout, id: number) => redis.use((c) => c.sadd(l.masterIndex, String(id)))
/** `indexMaster` for many masters in one command. */
export const indexMasters = (redis: RedisSinkShape, l: Layout, ids: ReadonlyArray<number>) =>
  ids.length === 0 ? Effect.succeed(0) : redis.use((c) => c.sadd(l.masterIndex, ...ids.map(String)))
export const unindexMaster = (redis: RedisSinkShape, l: Layout, id: number) => redis.use((c) => c.srem(l.masterIndex, String(id)))
/** Every master id the index holds; a member that is not an id (a hand edit) is skipped. */
export const indexedMasters = (redis: RedisSinkShape, l: Layout) =>
  redis.use((c) => c.smembers(l.masterIndex).catch(wrongType<Array<string>>([]))).pipe(Effect.map((ids) => ids.flatMap((id) => rowId(id) ?? [])))
