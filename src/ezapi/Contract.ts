/**
 * ez-api's data-plane rules, as `ez-api-contract.md` states them (each tagged V or D there):
 * token hashing, group and model-id normalization, model references, selector resolution, the
 * meta checksum, model kinds and the refresh event. Pure functions, pinned by the spec's own test
 * vectors (test/Contract.test.ts). The inferred points are in `Inferred.ts`.
 */
import { createHash } from "node:crypto"
import { createContext, Script } from "node:vm"

/** §3.1 `tokenhash.HashToken`: sha256 of the raw token bytes, lowercase hex; no trimming. */
export const hashToken = (token: string): string => createHash("sha256").update(token, "utf8").digest("hex")

/** §3.2 `group.Normalize`: blank becomes `default`; anything else is returned unchanged (not trimmed). */
export const normalizeGroup = (group: string): string => (trim(group) === "" ? "default" : group)

/**
 * Go's `strings.TrimSpace`: Unicode White_Space at both ends. Not JS `trim`, which also strips
 * U+FEFF (not a space to Go) and keeps U+0085 (a space to Go): the two would disagree on routes.
 */
const goSpace = "[\\t\\n\\v\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"
const goTrim = new RegExp(`^${goSpace}+|${goSpace}+$`, "g")
export const trim = (s: string): string => s.replace(goTrim, "")

export type ModelRef = { readonly namespace: string; readonly publicModel: string }

/**
 * §3.3 `routing.ParseModelRef`: trim; split at the first dot and trim both halves, or take the
 * trimmed default namespace. `undefined` for what ez-api rejects.
 */
export const parseModelRef = (model: string, defaultNamespace: string): ModelRef | undefined => {
  const m = trim(model)
  if (m === "") return undefined
  const dot = m.indexOf(".")
  if (dot >= 0) {
    const namespace = trim(m.slice(0, dot))
    const publicModel = trim(m.slice(dot + 1))
    return namespace === "" || publicModel === "" ? undefined : { namespace, publicModel }
  }
  const namespace = trim(defaultNamespace)
  return namespace === "" ? undefined : { namespace, publicModel: m }
}

/** §3.3 `ModelRef.Key`: `ns.public_model` from the trimmed parts, `""` when either is empty. */
export const modelRefKey = (namespace: string, publicModel: string): string => {
  const ns = trim(namespace)
  const pm = trim(publicModel)
  return ns === "" || pm === "" ? "" : `${ns}.${pm}`
}

/** §3.4 `routing.NormalizeModelID`: lowercase, trim, keep what follows the last `/` (unless last), trim. */
export const normalizeModelId = (id: string): string => {
  const s = trim(id.toLowerCase())
  const slash = s.lastIndexOf("/")
  return trim(slash >= 0 && slash < s.length - 1 ? s.slice(slash + 1) : s)
}

export type Resolution =
  | { readonly _tag: "Resolved"; readonly model: string }
  | { readonly _tag: "Unresolved"; readonly reason: string }

const resolved = (model: string): Resolution => ({ _tag: "Resolved", model })
const unresolved = (reason: string): Resolution => ({ _tag: "Unresolved", reason })

/**
 * Go RE2 compiled into a JS RegExp, or `undefined` where RE2 would refuse the pattern. RE2 has no
 * lookaround and no backreferences; its leading `(?flags)` group becomes JS flags.
 */
export const compileRe2 = (pattern: string): RegExp | undefined => {
  let source = pattern
  let flags = ""
  const lead = /^\(\?([imsU]+)\)/.exec(source)
  if (lead !== null) {
    if (lead[1]!.includes("U")) return undefined // ungreedy swap: no JS equivalent
    flags = [...new Set(lead[1]!.split(""))].join("")
    source = source.slice(lead[0].length)
  }
  if (/\(\?<?[=!]/.test(source) || /\\[1-9]/.test(source)) return undefined
  // RE2 spellings JS lacks: named groups `(?P<n>`, text anchors `\A` and `\z`.
  source = source.replace(/\(\?P</g, "(?<").replace(/(?<!\\)\\A/g, "^").replace(/(?<!\\)\\z/g, "$(?![\\s\\S])")
  // Inline flag groups other than a leading one have no JS equivalent here.
  if (/\(\?[a-zA-Z]/.test(source)) return undefined
  try {
    return new RegExp(source, flags)
  } catch {
    return undefined
  }
}

/**
 * How long one regex selector may take over a group's models. RE2 runs in linear time; a JS
 * RegExp backtracks, and a pattern such as `(a+)+$` over `aaaa…!` would run for minutes, blocking
 * the worker's whole process (every event, lease and heartbeat) on one binding row. Past this
 * budget the selector is unresolved (`config_error`), as a pattern RE2 refuses is.
 */
export const regexBudgetMs = 50

const regexRun = new Script("models.filter((m) => m !== '' && re.test(m))")
const regexContext = createContext({ re: /$^/, models: [] as ReadonlyArray<string> })

/**
 * Results by pattern and models: a budgeted run costs a fraction of a millisecond, and every
 * bindings rebuild resolves the same selectors again. Bounded; cleared when full. The regex
 * is compiled from the pattern alone, so pattern, flags and models decide the result.
 */
const regexCache = new Map<string, ReadonlyArray<string>>()

/** The trimmed models `re` matches, or `undefined` past `regexBudgetMs`. */
const regexHits = (re: RegExp, models: ReadonlyArray<string>): ReadonlyArray<string> | undefined => {
  const key = JSON.stringify([re.source, re.flags, models])
  const cached = regexCache.get(key)
  if (cached !== undefined) return cached
  const hits = regexHitsNow(re, models)
  // A run past the budget is not kept: it may have been a slow moment, not the pattern.
  if (hits !== undefined) {
    if (regexCache.size >= 10_000) regexCache.clear()
    regexCache.set(key, hits)
  }
  return hits
}

const regexHitsNow = (re: RegExp, models: ReadonlyArray<string>): ReadonlyArray<string> | undefined => {
  regexContext["re"] = re
  regexContext["models"] = models
  try {
    return [...(regexRun.runInContext(regexContext, { timeout: regexBudgetMs }) as ReadonlyArray<string>)]
  } catch (error) {
    if ((error as { code?: unknown }).code === "ERR_SCRIPT_EXECUTION_TIMEOUT") return undefined
    throw error
  } finally {
    regexContext["models"] = []
  }
}

/**
 * §3.5 `routing.ResolveUpstreamModel`: which of a provider group's models a selector picks.
 * `exact` (or `""`): the first model equal after trimming; `regex`: unanchored, exactly one hit;
 * `normalize_exact`: exactly one hit by `normalizeModelId`. An empty value means the public model.
 */
export const resolveUpstreamModel = (
  selectorType: string,
  selectorValue: string,
  publicModel: string,
  providerModels: ReadonlyArray<string>
): Resolution => {
  const wanted = trim(selectorValue) !== "" ? trim(selectorValue) : trim(publicModel)
  if (wanted === "") return unresolved("empty selector and public model")
  switch (selectorType) {
    case "":
    case "exact": {
      const hit = providerModels.find((m) => trim(m) === wanted)
      return hit === undefined ? unresolved(`no model ${wanted}`) : resolved(trim(hit))
    }
    case "regex": {
      const re = compileRe2(wanted)
      if (re === undefined) return unresolved(`invalid regex ${wanted}`)
      const hits = regexHits(re, providerModels.map(trim))
      if (hits === undefined) return unresolved(`regex ${wanted} took over ${regexBudgetMs} ms (it backtracks; RE2 would not)`)
      return hits.length === 1 ? resolved(hits[0]!) : unresolved(`regex ${wanted} matched ${hits.length} models`)
    }
    case "normalize_exact": {
      const target = normalizeModelId(wanted)
      const hits = providerModels.map(trim).filter((m) => normalizeModelId(m) === target)
      return hits.length === 1 ? resolved(hits[0]!) : unresolved(`normalize_exact ${wanted} matched ${hits.length} models`)
    }
    default:
      return unresolved(`unsupported selector type ${selectorType}`)
  }
}

/**
 * §2.4 `modelcap.ChecksumFromPayloads`: fields sorted by UTF-8 bytes, each `field \n value \n`,
 * sha256, lowercase hex.
 */
export const checksumFromPayloads = (payloads: Iterable<readonly [string, string]>): string => {
  const entries = [...payloads].map(([field, value]) => [Buffer.from(field, "utf8"), value] as const)
  entries.sort(([a], [b]) => Buffer.compare(a, b))
  const hash = createHash("sha256")
  for (const [field, value] of entries) hash.update(field).update("\n").update(value, "utf8").update("\n")
  return hash.digest("hex")
}

/** §2.3 `modelcap.NormalizeKind`. */
export const normalizeKind = (kind: string): "chat" | "embedding" | "rerank" | "other" => {
  const k = trim(kind.toLowerCase())
  if (k === "") return "chat"
  return k === "chat" || k === "embedding" || k === "rerank" || k === "other" ? k : "other"
}

/** §3.7: the Vertex family, whose blank `google_location` defaults to `global`. */
export const vertexFamily: ReadonlySet<string> = new Set(["vertex", "vertex-express"])
/** `provider.NormalizeType`: lowercase, trimmed. */
export const normalizeProviderType = (type: string): string => trim(type.toLowerCase())
/** `provider.DefaultGoogleLocation`: the location trimmed (always, as Go does), blank `global` for the Vertex family. */
export const defaultGoogleLocation = (type: string, location: string): string =>
  vertexFamily.has(normalizeProviderType(type)) && trim(location) === "" ? "global" : trim(location)

/** Unix seconds, as every time foundation puts in a JSON value or the meta hashes. */
export const unixSeconds = (d: Date): number => Math.floor(d.getTime() / 1000)

/** §2.7 `contract.DPConfigRefreshChannel`. */
export const refreshChannel = "dp:config:refresh"

/** §2.7 `DPConfigRefreshEvent`: `resource`, `version` (omitempty), `active_key` (omitempty), `timestamp`. */
export const refreshEvent = (resource: string, version: string, timestamp: number): string =>
  JSON.stringify({ resource, ...(version === "" ? {} : { version }), timestamp })
