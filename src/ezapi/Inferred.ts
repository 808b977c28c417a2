/**
 * Every point of the data-plane contract that `ez-api-contract.md` marks *inferred* (I): what
 * could not be read from ez-api or the balancer, built as the spec states it. They live here, and
 * only here, so that a correction is a one-line change; the README lists them. Everything else in
 * `Contract.ts` is verified (V) or documented (D).
 */

/** §1 #2, §5.1: the master hash's name (I: by analogy with `auth:token:`). */
export const masterKeyPrefix = "auth:master:"
/** §1 #5, §5.3: the bindings hash's name (I: by symmetry with `config:providers`). */
export const bindingsKey = "config:bindings"

/** §1 #3, §5.4: a provider's field in `config:providers` is its api key id, in decimal. */
export const providerField = (apiKeyId: number): string => String(apiKeyId)

/**
 * §5.5: a provider's `status` is its api key's status, except that a suspended provider group
 * makes every key of it `manual_disabled` (the data plane must not route to it).
 */
export const providerStatus = (keyStatus: string, groupStatus: string): string =>
  groupStatus === "active" ? keyStatus : "manual_disabled"

/** §2.1: `weight` is omitted when 0 (so a zero-weight provider matches the golden exactly). */
export const providerWeightOmitEmpty = true

/** §2.2, §5.5: a candidate's `route_group` is the provider group's name. */
export const routeGroup = (groupName: string): string => groupName

/**
 * §2.2: a binding key's snapshot `status`: `active` when any of its rows is active, else
 * `suspended` (our control plane has one row per candidate).
 */
export const bindingStatus = (rowStatuses: ReadonlyArray<string>): string =>
  rowStatuses.includes("active") ? "active" : "suspended"

/** §3.6: `no_provider` when the group is suspended or has no active api key. */
export const usableProvider = (groupStatus: string, keyStatus: string): boolean =>
  groupStatus === "active" && keyStatus === "active"

/**
 * §2.3, §5.7: an admin-defined model is filed in `meta:models` under the binding key a client
 * would reach it by: its name parsed as `routing.ParseModelRef` does with this default
 * namespace (a name with a dot names its namespace: `ns.m`; `gpt-4o` becomes `default.gpt-4o`).
 */
export const modelDefaultNamespace = "default"
/** §2.4: `meta:models_meta` `source` for models written by this control plane. */
export const modelsMetaSource = "control-plane"

/** §2.5, §5.2: list-valued key fields are comma-separated (as `scopes`), times unix seconds. */
export const listSeparator = ","
/**
 * §2.5: `model_limits` is the comma-separated list of the limited model names (the keys of our
 * `model_limits` object, sorted), `model_limits_enabled` `1` when that list is not empty.
 */
export const modelLimitNames = (limits: Record<string, unknown>): ReadonlyArray<string> => Object.keys(limits).sort()
/** §2.5: `quota_limit` of a key without a quota (ez-api's convention for "unlimited"). */
export const unlimitedQuota = "-1"

/** §2.6, §5.1: `namespaces` in the master hash is comma-separated. */
export const namespacesSeparator = ","

/** §2.7, §5.8: the `resource` names of refresh events, published after every snapshot or meta write. */
export const refreshResource = {
  providers: "providers",
  bindings: "bindings",
  models: "models"
} as const
