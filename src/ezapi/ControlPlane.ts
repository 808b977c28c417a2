/**
 * The control plane's SQL: the reads a sync needs, and the writes of "the outbox way" — each
 * change and its outbox events in one transaction, so Redis learns of every committed change and
 * of nothing that rolled back.
 */
import { SqlClient, type SqlError } from "@effect/sql"
import { Data, Effect, Either, Option, ParseResult, Schedule, Schema } from "effect"
import type { InvalidEvent, InvalidPayload } from "../Errors.js"
import { enqueueMany, event, type AnyEvent } from "../Enqueue.js"
import * as Contract from "./Contract.js"
import { ApiKey, Binding, Key, Master, Model, ProviderGroup } from "./Entities.js"
import * as Events from "./Events.js"

/** A control-plane row that does not decode into its entity: the item's failure. */
export class InvalidRow extends Data.TaggedError("InvalidRow")<{
  readonly entity: string
  readonly message: string
}> {}

/** A write that names a row that does not exist. */
export class RowNotFound extends Data.TaggedError("RowNotFound")<{
  readonly entity: string
  readonly id: number
}> {
  override get message() {
    return `${this.entity} ${this.id} not found`
  }
}

const first = <A>(rows: ReadonlyArray<A>) => Option.fromNullable(rows[0])

/**
 * Rows decoded one by one: those that decode, and a typed `InvalidRow` for each that does not.
 * What a sweep or a rebuild reads, so that one bad row (a NULL in an array column, an `infinity`
 * timestamp) is reported and skipped instead of stopping every other row with it.
 */
export interface Decoded<A> {
  readonly rows: ReadonlyArray<A>
  readonly invalid: ReadonlyArray<InvalidRow>
}

/** A page of `Decoded` rows read by id: `lastId` is the last row's id, decoded or not (where the next page starts). */
export interface Page<A> extends Decoded<A> {
  readonly lastId: number | undefined
}

const decodeEach = <A, I>(schema: Schema.Schema<A, I>, entity: string) => {
  const decode = Schema.decodeUnknownEither(schema)
  return (raw: ReadonlyArray<Record<string, unknown>>): Page<A> => {
    const rows: Array<A> = []
    const invalid: Array<InvalidRow> = []
    for (const row of raw) {
      const result = decode(row)
      if (Either.isRight(result)) rows.push(result.right)
      else {
        const issues = ParseResult.ArrayFormatter.formatErrorSync(result.left).map((i) => `${i.path.join(".")}: ${i.message}`)
        invalid.push(new InvalidRow({ entity, message: `${entity} ${String(row["id"])}: ${issues.join(", ")}` }))
      }
    }
    const last = raw[raw.length - 1]?.["id"]
    return { rows, invalid, lastId: last === undefined ? undefined : Number(last) }
  }
}

const masterColumns = `id::float8 AS id, name, "group", status, epoch, global_qps AS "globalQps",
  default_namespace AS "defaultNamespace", namespaces, version::float8 AS version`
const keyColumns = `k.id::float8 AS id, k.master_id::float8 AS "masterId", k.token_hash AS "tokenHash", k."group", k.status,
  k.scopes, k.model_limits AS "modelLimits", k.allow_ips AS "allowIps", k.deny_ips AS "denyIps", k.expires_at AS "expiresAt",
  k.quota_limit::text AS "quotaLimit", k.quota_used::text AS "quotaUsed", k.quota_reset_at AS "quotaResetAt",
  k.issued_at_epoch AS "issuedAtEpoch", k.version::float8 AS version`
const modelColumns = `id::float8 AS id, name, kind, context_window AS "contextWindow", cost_per_token::float8 AS "costPerToken",
  max_output_tokens AS "maxOutputTokens", supports_streaming AS "supportsStreaming", supports_tools AS "supportsTools",
  supports_vision AS "supportsVision", supports_json AS "supportsJson", supports_tool_choice AS "supportsToolChoice", supports_fim AS "supportsFim",
  version::float8 AS version`
const groupColumns = `id::float8 AS id, name, type, base_url AS "baseUrl", google_project AS "googleProject",
  google_location AS "googleLocation", models, status, routing_group AS "routingGroup", version::float8 AS version`
const apiKeyColumns = `id::float8 AS id, group_id::float8 AS "groupId", api_key AS "apiKey", weight, status, auto_ban AS "autoBan",
  ban_until AS "banUntil", version::float8 AS version`
const bindingColumns = `id::float8 AS id, namespace, public_model AS "publicModel", group_id::float8 AS "groupId", weight,
  selector_type AS "selectorType", selector_value AS "selectorValue", status, updated_at AS "updatedAt", version::float8 AS version`

/** Every row decoded, or the first that does not decode as an `InvalidRow` naming it (entity, id, field). */
const decodeRows = <A, I>(schema: Schema.Schema<A, I>, entity: string) => (rows: ReadonlyArray<unknown>) =>
  allDecoded(decodeEach(schema, entity)(rows as ReadonlyArray<Record<string, unknown>>))

const allDecoded = <A>(page: Decoded<A>): Effect.Effect<ReadonlyArray<A>, InvalidRow> =>
  page.invalid.length > 0 ? Effect.fail(page.invalid[0]!) : Effect.succeed(page.rows)

// -------------------------------------------------------------------------------------------
// Reads
// -------------------------------------------------------------------------------------------

export const getMaster = (id: number) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql.unsafe(`SELECT ${masterColumns} FROM cp_masters WHERE id = $1`, [id]).withoutTransform
  ).pipe(Effect.flatMap(decodeRows(Master, "master")), Effect.map(first))

export const getKey = (id: number) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql.unsafe(`SELECT ${keyColumns} FROM cp_keys k WHERE k.id = $1`, [id]).withoutTransform
  ).pipe(Effect.flatMap(decodeRows(Key, "key")), Effect.map(first))

/** The key that holds a token hash now, if any (token hashes are unique). */
export const getKeyByHash = (tokenHash: string) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql.unsafe(`SELECT ${keyColumns} FROM cp_keys k WHERE k.token_hash = $1`, [tokenHash]).withoutTransform
  ).pipe(Effect.flatMap(decodeRows(Key, "key")), Effect.map(first))

export const getModel = (id: number) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql.unsafe(`SELECT ${modelColumns} FROM cp_models WHERE id = $1`, [id]).withoutTransform
  ).pipe(Effect.flatMap(decodeRows(Model, "model")), Effect.map(first))

export const getModelByName = (name: string) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql.unsafe(`SELECT ${modelColumns} FROM cp_models WHERE name = $1`, [name]).withoutTransform
  ).pipe(Effect.flatMap(decodeRows(Model, "model")), Effect.map(first))

export const allMasterIds = Effect.flatMap(SqlClient.SqlClient, (sql) =>
  sql.unsafe<{ id: number }>(`SELECT id::float8 AS id FROM cp_masters ORDER BY id`).withoutTransform
).pipe(Effect.map((rows) => rows.map((r) => r.id)))

export const allKeyIds = Effect.flatMap(SqlClient.SqlClient, (sql) =>
  sql.unsafe<{ id: number }>(`SELECT id::float8 AS id FROM cp_keys ORDER BY id`).withoutTransform
).pipe(Effect.map((rows) => rows.map((r) => r.id)))

/** Keys with an id above `afterId`, by id, at most `limit`: a reconciler reads the table in pages. */
export const keysAfter = (afterId: number, limit: number) => Effect.flatMap(keyPageAfter(afterId, limit), allDecoded)

/** Masters with an id above `afterId`, by id, at most `limit`. */
export const mastersAfter = (afterId: number, limit: number) => Effect.flatMap(masterPageAfter(afterId, limit), allDecoded)

/** `keysAfter`, each row decoded on its own (see `Decoded`). */
export const keyPageAfter = (afterId: number, limit: number) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql.unsafe<Record<string, unknown>>(`SELECT ${keyColumns} FROM cp_keys k WHERE k.id > $1 ORDER BY k.id LIMIT $2`, [afterId, limit])
      .withoutTransform
  ).pipe(Effect.map(decodeEach(Key, "key")))

/** `mastersAfter`, each row decoded on its own (see `Decoded`). */
export const masterPageAfter = (afterId: number, limit: number) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql.unsafe<Record<string, unknown>>(`SELECT ${masterColumns} FROM cp_masters WHERE id > $1 ORDER BY id LIMIT $2`, [afterId, limit])
      .withoutTransform
  ).pipe(Effect.map(decodeEach(Master, "master")))

/** Which of these token hashes a key holds now (whether or not its row decodes). */
export const heldTokenHashes = (tokenHashes: ReadonlyArray<string>) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql.unsafe<{ h: string }>(`SELECT token_hash AS h FROM cp_keys WHERE token_hash = ANY($1)`, [tokenHashes]).withoutTransform
  ).pipe(Effect.map((rows) => new Set(rows.map((r) => r.h))))

/** Does a row with this id exist in `table` (whether or not it decodes)? */
export const rowExists = (table: "cp_keys" | "cp_masters" | "cp_models", id: number) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql.unsafe(`SELECT 1 FROM ${table} WHERE id = $1`, [id]).withoutTransform
  ).pipe(Effect.map((rows) => rows.length > 0))

/** The keys that hold these token hashes now. */
export const keysByHash = (tokenHashes: ReadonlyArray<string>) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql.unsafe(`SELECT ${keyColumns} FROM cp_keys k WHERE k.token_hash = ANY($1)`, [tokenHashes]).withoutTransform
  ).pipe(Effect.flatMap(decodeRows(Key, "key")))

/**
 * The models that may file under `field` (`ns.public_model`), newest first: every name holding its
 * public model, which the caller narrows by parsing (`Snapshots.modelField`). Rows that do not
 * decode are left out.
 */
export const modelsMaybeUnder = (field: string) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql.unsafe<Record<string, unknown>>(
      `SELECT ${modelColumns} FROM cp_models WHERE strpos(name, $1) > 0 ORDER BY id DESC`,
      [field.slice(field.indexOf(".") + 1)]
    ).withoutTransform
  ).pipe(Effect.map((raw) => decodeEach(Model, "model")(raw).rows))

export const allModels = Effect.suspend(() => Effect.flatMap(allModelsDecoded, allDecoded))

/** `allModels`, each row decoded on its own (see `Decoded`), with the name of every row. */
export const allModelsDecoded = Effect.flatMap(SqlClient.SqlClient, (sql) =>
  sql.unsafe<Record<string, unknown>>(`SELECT ${modelColumns} FROM cp_models ORDER BY id`).withoutTransform
).pipe(Effect.map((raw) => ({ ...decodeEach(Model, "model")(raw), names: raw.map((r) => String(r["name"])) })))

/**
 * A version no row has had yet: what a removal writes, so that it beats every earlier write and
 * loses to every later one.
 */
export const nextVersion = Effect.flatMap(SqlClient.SqlClient, (sql) =>
  sql.unsafe<{ v: number }>(`SELECT nextval('cp_version_seq')::float8 AS v`).withoutTransform
).pipe(Effect.map((rows) => rows[0]!.v))

export interface SnapshotSource {
  readonly groups: ReadonlyArray<ProviderGroup>
  readonly apiKeys: ReadonlyArray<ApiKey>
  readonly bindings: ReadonlyArray<Binding>
  /**
   * Rows that do not decode, left out of the rows above: the snapshot is built without them (so
   * one bad row does not hold back every other change) and its rebuild then fails with them.
   */
  readonly invalid: ReadonlyArray<InvalidRow>
  /** The snapshot's fence: a higher generation was read later, and saw everything a lower one saw. */
  readonly generation: number
}

export type SnapshotName = "providers" | "bindings"

const serializationFailure = (error: unknown) => {
  const code = (error as { cause?: { code?: unknown } }).cause?.code
  return code === "40001" || code === "40P01"
}

/**
 * Groups, api keys and bindings as of one instant (one REPEATABLE READ transaction), with the
 * snapshot's generation taken in that same transaction from `cp_snapshot_fences`. Two rebuilds of
 * one snapshot cannot both take a generation over the same fence row unless the later one's read
 * began after the earlier one committed (else Postgres fails it, 40001, and it reads again): so a
 * higher generation always carries a newer read, and Redis refuses a lower one. This holds
 * whatever calls it (the worker, `sync-all`, `syncNowOrEnqueue`), with no ordering key needed.
 */
export const snapshotSource = (
  which: SnapshotName
): Effect.Effect<SnapshotSource, SqlError.SqlError | InvalidRow, SqlClient.SqlClient> =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    return yield* sql.withTransaction(
      Effect.gen(function*() {
        yield* sql.unsafe(`SET TRANSACTION ISOLATION LEVEL REPEATABLE READ`)
        const rows = yield* readRows(which === "bindings")
        const [fence] = yield* sql.unsafe<{ generation: number }>(
          `INSERT INTO cp_snapshot_fences (name) VALUES ($1)
           ON CONFLICT (name) DO UPDATE SET generation = cp_snapshot_fences.generation + 1
           RETURNING generation::float8 AS generation`,
          [which]
        ).withoutTransform
        return { ...rows, generation: fence!.generation }
      })
    ).pipe(
      Effect.retry({
        while: serializationFailure,
        // 5 ms doubling, at most 200 ms apart, jittered: rebuilds that collided do not collide again.
        schedule: Schedule.exponential("5 millis").pipe(
          Schedule.either(Schedule.spaced("200 millis")),
          Schedule.jittered,
          Schedule.intersect(Schedule.recurs(30))
        )
      })
    )
  })

const readRows = (withBindings: boolean) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const groups = yield* sql.unsafe<Record<string, unknown>>(`SELECT ${groupColumns} FROM cp_provider_groups ORDER BY id`)
      .withoutTransform.pipe(Effect.map(decodeEach(ProviderGroup, "provider_group")))
    const apiKeys = yield* sql.unsafe<Record<string, unknown>>(`SELECT ${apiKeyColumns} FROM cp_api_keys ORDER BY id`)
      .withoutTransform.pipe(Effect.map(decodeEach(ApiKey, "api_key")))
    const bindings = withBindings
      ? yield* sql.unsafe<Record<string, unknown>>(`SELECT ${bindingColumns} FROM cp_bindings ORDER BY id`).withoutTransform.pipe(
        Effect.map(decodeEach(Binding, "binding"))
      )
      : { rows: [], invalid: [] }
    // A group left out takes its api keys and bindings out with it (the snapshots skip rows whose
    // group is missing): what cannot be read is not routed to.
    return {
      groups: groups.rows,
      apiKeys: apiKeys.rows,
      bindings: bindings.rows,
      invalid: [...groups.invalid, ...apiKeys.invalid, ...bindings.invalid]
    }
  })

/**
 * Groups, api keys and bindings as of one instant, read only and without a generation: what a
 * check or a reconciler compares Redis against (it does not take part in the fence).
 */
export const snapshotRows: Effect.Effect<Omit<SnapshotSource, "generation">, SqlError.SqlError | InvalidRow, SqlClient.SqlClient> =
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    return yield* sql.withTransaction(
      Effect.gen(function*() {
        yield* sql.unsafe(`SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY`)
        return yield* readRows(true)
      })
    )
  })

// -------------------------------------------------------------------------------------------
// Writes, the outbox way
// -------------------------------------------------------------------------------------------

type Fail = SqlError.SqlError | InvalidPayload | InvalidEvent | RowNotFound

/** sha256 hex of a key's secret: what the control plane and Redis keep instead of the secret. */
export const tokenHash = (secret: string): string => Contract.hashToken(secret)

const columnsOf = (input: Record<string, unknown>, names: Record<string, string>) => {
  const cols: Array<string> = []
  const values: Array<unknown> = []
  for (const [field, column] of Object.entries(names)) {
    const value = input[field]
    if (value === undefined) continue
    cols.push(column)
    values.push(
      Array.isArray(value) || value === null || typeof value !== "object" || value instanceof Date
        ? value
        : JSON.stringify(value)
    )
  }
  return { cols, values }
}

/** Insert a row, enqueue the events its id implies, in one transaction; returns the id. */
const insert = (
  table: string,
  names: Record<string, string>,
  input: Record<string, unknown>,
  events: (id: number) => ReadonlyArray<AnyEvent>
): Effect.Effect<number, Fail, SqlClient.SqlClient> =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const { cols, values } = columnsOf(input, names)
    return yield* sql.withTransaction(
      Effect.gen(function*() {
        const [row] = yield* sql.unsafe<{ id: number }>(
          `INSERT INTO ${table} (${cols.join(", ")}) VALUES (${cols.map((_, i) => `$${i + 1}`).join(", ")})
           RETURNING id::float8 AS id`,
          values
        ).withoutTransform
        yield* enqueueMany(events(row!.id))
        return row!.id
      })
    )
  })

const update = (
  table: string,
  entity: string,
  names: Record<string, string>,
  id: number,
  patch: Record<string, unknown>,
  events: (row: Record<string, unknown>) => ReadonlyArray<AnyEvent>,
  returning = "id"
): Effect.Effect<void, Fail, SqlClient.SqlClient> =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const { cols, values } = columnsOf(patch, names)
    const set = cols.length === 0 ? "id = id" : cols.map((c, i) => `${c} = $${i + 2}`).join(", ")
    yield* sql.withTransaction(
      Effect.gen(function*() {
        const rows = yield* sql.unsafe<Record<string, unknown>>(
          `UPDATE ${table} SET ${set} WHERE id = $1 RETURNING ${returning}`,
          [id, ...values]
        ).withoutTransform
        if (rows.length === 0) return yield* new RowNotFound({ entity, id })
        yield* enqueueMany(events(rows[0]!))
      })
    )
  })

const remove = (
  table: string,
  entity: string,
  id: number,
  events: (row: Record<string, unknown>) => ReadonlyArray<AnyEvent>,
  returning = "id"
): Effect.Effect<void, Fail, SqlClient.SqlClient> =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    yield* sql.withTransaction(
      Effect.gen(function*() {
        const rows = yield* sql.unsafe<Record<string, unknown>>(`DELETE FROM ${table} WHERE id = $1 RETURNING ${returning}`, [id])
          .withoutTransform
        if (rows.length === 0) return yield* new RowNotFound({ entity, id })
        yield* enqueueMany(events(rows[0]!))
      })
    )
  })

export interface MasterInput {
  readonly name: string
  readonly group?: string
  readonly status?: "active" | "suspended"
  readonly epoch?: number
  readonly globalQps?: number
  readonly defaultNamespace?: string
  readonly namespaces?: ReadonlyArray<string>
}
const masterNames = {
  name: "name",
  group: `"group"`,
  status: "status",
  epoch: "epoch",
  globalQps: "global_qps",
  defaultNamespace: "default_namespace",
  namespaces: "namespaces"
}
export const createMaster = (input: MasterInput) =>
  insert("cp_masters", masterNames, { ...input }, (id) => [event(Events.MasterCreate, { resourceId: id, payload: null })])
export const updateMaster = (id: number, patch: Partial<MasterInput>) =>
  update("cp_masters", "master", masterNames, id, { ...patch }, () => [event(Events.MasterUpdate, { resourceId: id, payload: null })])
export const deleteMaster = (id: number) =>
  remove("cp_masters", "master", id, () => [event(Events.MasterDelete, { resourceId: id, payload: null })])

export interface KeyInput {
  readonly masterId: number
  /** The secret: only its sha256 is stored. */
  readonly secret: string
  readonly group?: string
  readonly status?: "active" | "suspended"
  readonly scopes?: ReadonlyArray<string>
  readonly modelLimits?: Record<string, unknown>
  readonly allowIps?: ReadonlyArray<string>
  readonly denyIps?: ReadonlyArray<string>
  readonly expiresAt?: Date | null
  /** `bigint` for amounts past 2^53 (the column is a bigint; a number cannot hold 9223372036854775807). */
  readonly quotaLimit?: number | bigint | null
  readonly quotaUsed?: number | bigint
  readonly quotaResetAt?: Date | null
  /** Default: the master's epoch when the key is created. */
  readonly issuedAtEpoch?: number
}
const keyNames = {
  masterId: "master_id",
  tokenHash: "token_hash",
  group: `"group"`,
  status: "status",
  scopes: "scopes",
  modelLimits: "model_limits",
  allowIps: "allow_ips",
  denyIps: "deny_ips",
  expiresAt: "expires_at",
  quotaLimit: "quota_limit",
  quotaUsed: "quota_used",
  quotaResetAt: "quota_reset_at",
  issuedAtEpoch: "issued_at_epoch"
}
export const createKey = ({ secret, ...input }: KeyInput) => {
  const hash = tokenHash(secret)
  return insert("cp_keys", keyNames, { ...input, tokenHash: hash }, (id) => [
    event(Events.KeyCreate, { resourceId: id, payload: { tokenHash: hash } })
  ])
}
export const updateKey = (id: number, patch: Partial<Omit<KeyInput, "secret" | "masterId">>) =>
  update("cp_keys", "key", keyNames, id, { ...patch }, (row) => [
    event(Events.KeyUpdate, { resourceId: id, payload: { tokenHash: String(row["token_hash"]) } })
  ], "token_hash")
export const deleteKey = (id: number) =>
  remove("cp_keys", "key", id, (row) => [
    event(Events.KeyDelete, { resourceId: id, payload: { tokenHash: String(row["token_hash"]) } })
  ], "token_hash")

export interface ModelInput {
  readonly name: string
  readonly kind?: "chat" | "embedding" | "rerank" | "other"
  readonly contextWindow?: number
  readonly costPerToken?: number
  readonly maxOutputTokens?: number
  readonly supportsStreaming?: boolean
  readonly supportsTools?: boolean
  readonly supportsVision?: boolean
  readonly supportsJson?: boolean
  readonly supportsToolChoice?: boolean
  readonly supportsFim?: boolean
}
const modelNames = {
  name: "name",
  kind: "kind",
  contextWindow: "context_window",
  costPerToken: "cost_per_token",
  maxOutputTokens: "max_output_tokens",
  supportsStreaming: "supports_streaming",
  supportsTools: "supports_tools",
  supportsVision: "supports_vision",
  supportsJson: "supports_json",
  supportsToolChoice: "supports_tool_choice",
  supportsFim: "supports_fim"
}
export const createModel = (input: ModelInput) =>
  insert("cp_models", modelNames, { ...input }, (id) => [event(Events.ModelCreate, { resourceId: id, payload: { name: input.name } })])
export const updateModel = (id: number, patch: Partial<ModelInput>) =>
  update("cp_models", "model", modelNames, id, { ...patch }, (row) => [
    event(Events.ModelUpdate, { resourceId: id, payload: { name: String(row["name"]) } })
  ], "name")
/** The row is gone when the event is applied, so the event carries the name (the Go service's contract). */
export const deleteModel = (id: number) =>
  remove("cp_models", "model", id, (row) => [event(Events.ModelDelete, { resourceId: id, payload: { name: String(row["name"]) } })], "name")

const rebuildBoth = (resourceType: "provider_group" | "api_key", id: number): ReadonlyArray<AnyEvent> =>
  resourceType === "provider_group"
    ? [
      event(Events.ProviderGroupSyncProviders, { resourceId: id, payload: null }),
      event(Events.ProviderGroupSyncBindings, { resourceId: id, payload: null })
    ]
    : [
      event(Events.ApiKeySyncProviders, { resourceId: id, payload: null }),
      event(Events.ApiKeySyncBindings, { resourceId: id, payload: null })
    ]

export interface ProviderGroupInput {
  readonly name: string
  readonly type: string
  readonly baseUrl?: string
  readonly googleProject?: string | null
  readonly googleLocation?: string | null
  readonly models?: ReadonlyArray<string>
  readonly status?: "active" | "suspended"
  /** The routing group a key's `group` is matched against (blank: `default`). */
  readonly routingGroup?: string
}
const groupNames = {
  name: "name",
  type: "type",
  baseUrl: "base_url",
  googleProject: "google_project",
  googleLocation: "google_location",
  models: "models",
  status: "status",
  routingGroup: "routing_group"
}
export const createProviderGroup = (input: ProviderGroupInput) =>
  insert("cp_provider_groups", groupNames, { ...input }, (id) => rebuildBoth("provider_group", id))
export const updateProviderGroup = (id: number, patch: Partial<ProviderGroupInput>) =>
  update("cp_provider_groups", "provider_group", groupNames, id, { ...patch }, () => rebuildBoth("provider_group", id))
export const deleteProviderGroup = (id: number) =>
  remove("cp_provider_groups", "provider_group", id, () => rebuildBoth("provider_group", id))

export interface ApiKeyInput {
  readonly groupId: number
  readonly apiKey: string
  readonly weight?: number
  readonly status?: "active" | "auto_disabled" | "manual_disabled"
  readonly autoBan?: boolean
  readonly banUntil?: Date | null
}
const apiKeyNames = {
  groupId: "group_id",
  apiKey: "api_key",
  weight: "weight",
  status: "status",
  autoBan: "auto_ban",
  banUntil: "ban_until"
}
export const createApiKey = (input: ApiKeyInput) => insert("cp_api_keys", apiKeyNames, { ...input }, (id) => rebuildBoth("api_key", id))
export const updateApiKey = (id: number, patch: Partial<ApiKeyInput>) =>
  update("cp_api_keys", "api_key", apiKeyNames, id, { ...patch }, () => rebuildBoth("api_key", id))
export const deleteApiKey = (id: number) => remove("cp_api_keys", "api_key", id, () => rebuildBoth("api_key", id))

export interface BindingInput {
  readonly namespace: string
  readonly publicModel: string
  readonly groupId: number
  readonly weight?: number
  readonly selectorType?: "exact" | "regex" | "normalize_exact"
  readonly selectorValue?: string
  readonly status?: "active" | "suspended"
}
const bindingNames = {
  namespace: "namespace",
  publicModel: "public_model",
  groupId: "group_id",
  weight: "weight",
  selectorType: "selector_type",
  selectorValue: "selector_value",
  status: "status"
}
export const createBinding = (input: BindingInput) =>
  insert("cp_bindings", bindingNames, { ...input }, (id) => [event(Events.BindingCreate, { resourceId: id, payload: null })])
export const updateBinding = (id: number, patch: Partial<BindingInput>) =>
  update("cp_bindings", "binding", bindingNames, id, { ...patch }, () => [event(Events.BindingUpdate, { resourceId: id, payload: null })])
export const deleteBinding = (id: number) =>
  remove("cp_bindings", "binding", id, () => [event(Events.BindingDelete, { resourceId: id, payload: null })])
