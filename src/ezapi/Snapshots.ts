/**
 * The values ez-api's balancer reads, built from control-plane rows: the provider and binding
 * snapshots (rebuilt whole), a model's capability entry, and the flat fields of the auth hashes.
 * Pure functions, so that the contract is pinned by the spec's golden values (test/Contract.test.ts)
 * and by golden files. Field order follows the Go structs (the checksum hashes the exact bytes);
 * `omitempty` fields are left out when zero.
 */
import * as Contract from "./Contract.js"
import type { ApiKey, Binding, Key, Master, Model, ProviderGroup } from "./Entities.js"
import * as Inferred from "./Inferred.js"

export interface Snapshot {
  /** Field name to JSON value, sorted by field. */
  readonly entries: ReadonlyArray<readonly [string, string]>
  /** `modelcap.ChecksumFromPayloads` over the entries (§2.4). */
  readonly checksum: string
}

const snapshot = (entries: Array<readonly [string, string]>): Snapshot => {
  entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
  return { entries, checksum: Contract.checksumFromPayloads(entries) }
}

/** Drop the fields Go's `omitempty` drops: 0, "", false, and empty arrays or objects. */
const omitEmpty = <T extends Record<string, unknown>>(value: T, fields: ReadonlyArray<keyof T>): Partial<T> => {
  const out: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(value)) {
    const empty = v === 0 || v === "" || v === false || v === undefined || v === null ||
      (Array.isArray(v) && v.length === 0) ||
      (typeof v === "object" && v !== null && !Array.isArray(v) && Object.keys(v).length === 0)
    if (empty && fields.includes(k as keyof T)) continue
    out[k] = v
  }
  return out as Partial<T>
}

export const providerName = (group: ProviderGroup, key: ApiKey) => `${group.name}#${key.id}`

/** §2.1: one api key joined with its group, exactly as `contract/testdata/provider_snapshot.json`. */
export const providerValue = (group: ProviderGroup, key: ApiKey): Record<string, unknown> => {
  const type = Contract.normalizeProviderType(group.type)
  return omitEmpty({
    id: key.id,
    name: providerName(group, key),
    type,
    base_url: group.baseUrl,
    api_key: key.apiKey,
    google_project: group.googleProject ?? "",
    google_location: Contract.defaultGoogleLocation(type, group.googleLocation ?? ""),
    group_id: group.id,
    group: Contract.normalizeGroup(group.routingGroup),
    models: group.models,
    status: Inferred.providerStatus(key.status, group.status),
    auto_ban: key.autoBan,
    ban_until: key.banUntil === null ? 0 : Contract.unixSeconds(key.banUntil),
    weight: key.weight
  }, Inferred.providerWeightOmitEmpty ? ["ban_until", "weight"] : ["ban_until"])
}

/** `config:providers`: field = api key id (I), one entry per api key of an existing group. */
export const providers = (groups: ReadonlyArray<ProviderGroup>, keys: ReadonlyArray<ApiKey>): Snapshot => {
  const byId = new Map(groups.map((g) => [g.id, g]))
  const entries: Array<readonly [string, string]> = []
  for (const key of keys) {
    const group = byId.get(key.groupId)
    if (group === undefined) continue
    entries.push([Inferred.providerField(key.id), JSON.stringify(providerValue(group, key))])
  }
  return snapshot(entries)
}

/** A binding's `BindingCandidate` (§2.2): upstreams over the group's usable providers, or an error. */
export const candidate = (
  binding: Binding,
  group: ProviderGroup,
  keysOfGroup: ReadonlyArray<ApiKey>
): Record<string, unknown> => {
  const resolution = Contract.resolveUpstreamModel(binding.selectorType, binding.selectorValue, binding.publicModel, group.models)
  const usable = keysOfGroup.filter((k) => Inferred.usableProvider(group.status, k.status)).sort((a, b) => a.id - b.id)
  const error = resolution._tag === "Unresolved" ? "config_error" : usable.length === 0 ? "no_provider" : ""
  const upstreams = resolution._tag === "Resolved" && error === ""
    ? Object.fromEntries(usable.map((k) => [Inferred.providerField(k.id), resolution.model]))
    : null
  return {
    group_id: group.id,
    route_group: Inferred.routeGroup(group.name),
    ...omitEmpty({
      weight: binding.weight,
      selector_type: binding.selectorType,
      selector_value: binding.selectorValue,
      status: binding.status,
      error
    }, ["weight", "selector_type", "selector_value", "status", "error"]),
    upstreams
  }
}

/**
 * `config:bindings` (§2.2, §3.6): one `BindingSnapshot` per `namespace.public_model`, its
 * candidates in binding order, written even when none has an upstream.
 */
export const bindings = (
  bindingRows: ReadonlyArray<Binding>,
  groups: ReadonlyArray<ProviderGroup>,
  keys: ReadonlyArray<ApiKey>
): Snapshot => {
  const groupById = new Map(groups.map((g) => [g.id, g]))
  const keysByGroup = new Map<number, Array<ApiKey>>()
  for (const key of keys) {
    const list = keysByGroup.get(key.groupId)
    if (list === undefined) keysByGroup.set(key.groupId, [key])
    else list.push(key)
  }
  const routes = new Map<string, Array<Binding>>()
  for (const binding of [...bindingRows].sort((a, b) => a.id - b.id)) {
    const route = Contract.modelRefKey(binding.namespace, binding.publicModel)
    if (route === "" || !groupById.has(binding.groupId)) continue
    const list = routes.get(route)
    if (list === undefined) routes.set(route, [binding])
    else list.push(binding)
  }
  const entries: Array<readonly [string, string]> = []
  for (const [route, rows] of routes) {
    const updatedAt = Math.max(...rows.map((b) => Contract.unixSeconds(b.updatedAt)))
    entries.push([
      route,
      JSON.stringify({
        namespace: Contract.trim(rows[0]!.namespace),
        public_model: Contract.trim(rows[0]!.publicModel),
        ...omitEmpty({ status: Inferred.bindingStatus(rows.map((b) => b.status)), updated_at: updatedAt }, ["status", "updated_at"]),
        candidates: rows.map((b) => candidate(b, groupById.get(b.groupId)!, keysByGroup.get(b.groupId) ?? []))
      })
    ])
  }
  return snapshot(entries)
}

/** The `meta:models` field of a model: its binding key (I), or `undefined` for a name ez-api cannot parse. */
export const modelField = (name: string): string | undefined => {
  const ref = Contract.parseModelRef(name, Inferred.modelDefaultNamespace)
  return ref === undefined ? undefined : Contract.modelRefKey(ref.namespace, ref.publicModel)
}

/** §2.3 `modelcap.Model`, filed under (and named by) its binding key. */
export const modelValue = (field: string, m: Model): string =>
  JSON.stringify({
    name: field,
    ...omitEmpty({
      kind: Contract.normalizeKind(m.kind),
      context_window: m.contextWindow,
      cost_per_token: m.costPerToken,
      supports_vision: m.supportsVision,
      supports_functions: m.supportsTools,
      supports_tool_choice: m.supportsToolChoice,
      supports_fim: m.supportsFim,
      supports_stream: m.supportsStreaming,
      max_output_tokens: m.maxOutputTokens
    }, [
      "kind",
      "context_window",
      "cost_per_token",
      "supports_vision",
      "supports_functions",
      "supports_tool_choice",
      "supports_fim",
      "supports_stream",
      "max_output_tokens"
    ])
  })

const list = (values: ReadonlyArray<string>) => values.join(Inferred.listSeparator)
const seconds = (d: Date | null) => (d === null ? "0" : String(Contract.unixSeconds(d)))

/** §2.5 `auth:token:<sha256>`: flat fields as go-redis writes them. A suspended key keeps its fields; its status says no. */
export const keyFields = (k: Key): Record<string, string> => {
  const limits = Inferred.modelLimitNames(k.modelLimits)
  return {
    master_id: String(k.masterId),
    issued_at_epoch: String(k.issuedAtEpoch),
    status: k.status,
    group: Contract.normalizeGroup(k.group),
    scopes: list(k.scopes),
    expires_at: seconds(k.expiresAt),
    allow_ips: list(k.allowIps),
    deny_ips: list(k.denyIps),
    model_limits: list(limits),
    model_limits_enabled: limits.length > 0 ? "1" : "0",
    quota_limit: k.quotaLimit === null ? Inferred.unlimitedQuota : String(k.quotaLimit),
    quota_used: String(k.quotaUsed),
    quota_reset_at: seconds(k.quotaResetAt)
  }
}

/** §2.6 `auth:master:<id>` (I). */
export const masterFields = (m: Master): Record<string, string> => ({
  epoch: String(m.epoch),
  status: m.status,
  group: Contract.normalizeGroup(m.group),
  global_qps: String(m.globalQps),
  default_namespace: m.defaultNamespace,
  namespaces: m.namespaces.join(Inferred.namespacesSeparator)
})
