/**
 * The two snapshots that are rebuilt whole: providers (one entry per api key, joined with its
 * group) and bindings (one entry per `namespace.public_model`, a list of candidates with their
 * resolved upstreams). Pure functions of the control-plane rows, so that the data-plane contract
 * can be pinned by golden files.
 */
import { createHash } from "node:crypto"
import type { ApiKey, Binding, ProviderGroup } from "./Entities.js"

export interface Snapshot {
  /** Field name to JSON value, in a stable order. */
  readonly entries: ReadonlyArray<readonly [string, string]>
  /** sha256 of the entries, hex: a reader can tell two snapshots apart without reading them. */
  readonly checksum: string
}

export const providerName = (group: ProviderGroup, key: ApiKey) => `${group.name}#${key.id}`

const iso = (d: Date | null) => (d === null ? null : d.toISOString())

export const checksum = (entries: ReadonlyArray<readonly [string, string]>): string => {
  const hash = createHash("sha256")
  for (const [field, value] of entries) hash.update(field).update("\u0000").update(value).update("\u0001")
  return hash.digest("hex")
}

const snapshot = (entries: Array<readonly [string, string]>): Snapshot => {
  entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
  return { entries, checksum: checksum(entries) }
}

/** Every api key with its group: what the data plane needs to call an upstream provider. */
export const providers = (groups: ReadonlyArray<ProviderGroup>, keys: ReadonlyArray<ApiKey>): Snapshot => {
  const byId = new Map(groups.map((g) => [g.id, g]))
  const entries: Array<readonly [string, string]> = []
  for (const key of keys) {
    const group = byId.get(key.groupId)
    if (group === undefined) continue
    const name = providerName(group, key)
    entries.push([
      name,
      JSON.stringify({
        name,
        api_key_id: key.id,
        group_id: group.id,
        group: group.name,
        type: group.type,
        base_url: group.baseUrl,
        google_project: group.googleProject,
        google_location: group.googleLocation,
        models: group.models,
        api_key: key.apiKey,
        weight: key.weight,
        status: key.status,
        group_status: group.status,
        auto_ban: key.autoBan,
        ban_until: iso(key.banUntil)
      })
    ])
  }
  return snapshot(entries)
}

export type SelectorResult = { readonly model: string } | { readonly error: "config_error" }

const normalize = (s: string) => s.toLowerCase().replace(/[^a-z0-9]/g, "")

/** Which of the group's models a binding's selector picks; the public model name when the selector is empty. */
export const resolveSelector = (binding: Binding, group: ProviderGroup): SelectorResult => {
  const wanted = binding.selectorValue === "" ? binding.publicModel : binding.selectorValue
  switch (binding.selectorType) {
    case "exact":
      return group.models.includes(wanted) ? { model: wanted } : { error: "config_error" }
    case "normalize_exact": {
      const target = normalize(wanted)
      const found = group.models.find((m) => normalize(m) === target)
      return found === undefined ? { error: "config_error" } : { model: found }
    }
    case "regex": {
      let re: RegExp
      try {
        re = new RegExp(`^(?:${wanted})$`)
      } catch {
        return { error: "config_error" }
      }
      const found = group.models.find((m) => re.test(m))
      return found === undefined ? { error: "config_error" } : { model: found }
    }
  }
}

/**
 * Routing: for each `namespace.public_model`, the candidates in binding order. A candidate has
 * `upstreams` (provider name to upstream model, over the group's active api keys) or an `error`:
 * `config_error` when the selector matches none of the group's models, `no_provider` when the
 * group is suspended or has no active api key.
 */
export const bindings = (
  bindingRows: ReadonlyArray<Binding>,
  groups: ReadonlyArray<ProviderGroup>,
  keys: ReadonlyArray<ApiKey>
): Snapshot => {
  const groupById = new Map(groups.map((g) => [g.id, g]))
  const activeKeys = new Map<number, Array<ApiKey>>()
  for (const key of keys) {
    if (key.status !== "active") continue
    const list = activeKeys.get(key.groupId)
    if (list === undefined) activeKeys.set(key.groupId, [key])
    else list.push(key)
  }
  const routes = new Map<string, Array<Record<string, unknown>>>()
  const ordered = [...bindingRows].sort((a, b) => a.id - b.id)
  for (const binding of ordered) {
    const group = groupById.get(binding.groupId)
    if (group === undefined) continue
    const route = `${binding.namespace}.${binding.publicModel}`
    const candidate: Record<string, unknown> = {
      binding_id: binding.id,
      group_id: group.id,
      group: group.name,
      weight: binding.weight,
      selector: { type: binding.selectorType, value: binding.selectorValue },
      status: binding.status
    }
    const resolved = resolveSelector(binding, group)
    const providersOfGroup = group.status === "active" ? (activeKeys.get(group.id) ?? []) : []
    if ("error" in resolved) {
      candidate["error"] = resolved.error
    } else if (providersOfGroup.length === 0) {
      candidate["error"] = "no_provider"
    } else {
      candidate["upstreams"] = Object.fromEntries(
        [...providersOfGroup].sort((a, b) => a.id - b.id).map((key) => [providerName(group, key), resolved.model])
      )
    }
    const list = routes.get(route)
    if (list === undefined) routes.set(route, [candidate])
    else list.push(candidate)
  }
  return snapshot([...routes].map(([route, candidates]) => [route, JSON.stringify(candidates)] as const))
}
