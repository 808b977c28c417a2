/**
 * The control plane's entities, as the data plane needs them. Rows are decoded with these
 * schemas, so a row that breaks the contract is a typed failure, not a bad Redis write.
 */
import { Schema } from "effect"
import * as Inferred from "./Inferred.js"

const Id = Schema.Number.pipe(Schema.int(), Schema.positive())
const Version = Schema.Number.pipe(Schema.int(), Schema.nonNegative())
const Strings = Schema.Array(Schema.String)
/**
 * A list the auth hashes hold as one comma-separated field (§2.5: `scopes`, the IP lists, the
 * limited models' names; §2.6 `namespaces`): an item holding the separator would be read back as
 * two (a scope `read,admin` grants `admin` on the data plane), so it is refused, and the row is
 * its `InvalidRow` (a key or master then fails closed).
 */
const separated = (separator: string) =>
  Schema.String.pipe(Schema.filter((s) => !s.includes(separator), {
    message: () => `must not contain "${separator}": the data plane reads this list comma-separated`
  }))
const FlatList = Schema.Array(separated(Inferred.listSeparator))
/**
 * A time the data plane can hold: Postgres keeps timestamps past JavaScript's last date (year
 * 275760), which node-postgres reads as an Invalid Date. `DateFromSelf` lets that through, and it
 * reached Redis as `expires_at: NaN` (no TTL: a key that never expires, in a field no decimal
 * reader accepts). Refused here, as `infinity` is, it is the row's `InvalidRow`: a key fails closed.
 */
const Time = Schema.ValidDateFromSelf

export class Master extends Schema.Class<Master>("Master")({
  id: Id,
  name: Schema.String,
  group: Schema.String,
  status: Schema.Literal("active", "suspended"),
  epoch: Schema.Number,
  globalQps: Schema.Number,
  defaultNamespace: Schema.String,
  namespaces: Schema.Array(separated(Inferred.namespacesSeparator)),
  version: Version
}) {}

export class Key extends Schema.Class<Key>("Key")({
  id: Id,
  masterId: Id,
  tokenHash: Schema.String.pipe(Schema.pattern(/^[0-9a-f]{64}$/)),
  group: Schema.String,
  status: Schema.Literal("active", "suspended"),
  scopes: FlatList,
  // Checked as a whole: a refined key schema would drop such a key silently (a limit lifted).
  modelLimits: Schema.Record({ key: Schema.String, value: Schema.Unknown }).pipe(
    Schema.filter((limits) => Object.keys(limits).every((name) => !name.includes(Inferred.listSeparator)), {
      message: () => `a model name must not contain "${Inferred.listSeparator}": the data plane reads this list comma-separated`
    })
  ),
  allowIps: FlatList,
  denyIps: FlatList,
  expiresAt: Schema.NullOr(Time),
  /**
   * `bigint` columns, read exactly (as decimal text): through a JS number, 9223372036854775807 (the
   * usual "no limit") reached Redis as 9223372036854776000, past int64, which the balancer's
   * integer parsing refuses.
   */
  quotaLimit: Schema.NullOr(Schema.BigInt),
  quotaUsed: Schema.BigInt,
  quotaResetAt: Schema.NullOr(Time),
  /** The master's epoch when the key was issued: the key is revoked once the master's epoch exceeds it. */
  issuedAtEpoch: Schema.Number,
  version: Version
}) {}

export class Model extends Schema.Class<Model>("Model")({
  id: Id,
  name: Schema.String,
  kind: Schema.Literal("chat", "embedding", "rerank", "other"),
  contextWindow: Schema.Number,
  /** `numeric` takes `NaN` (and passes `>= 0`) and `Infinity`: JSON has neither (they came out as `null`). */
  costPerToken: Schema.Number.pipe(Schema.finite()),
  maxOutputTokens: Schema.Number,
  supportsStreaming: Schema.Boolean,
  supportsTools: Schema.Boolean,
  supportsVision: Schema.Boolean,
  supportsJson: Schema.Boolean,
  supportsToolChoice: Schema.Boolean,
  supportsFim: Schema.Boolean,
  version: Version
}) {}

export class ProviderGroup extends Schema.Class<ProviderGroup>("ProviderGroup")({
  id: Id,
  name: Schema.String,
  type: Schema.String,
  baseUrl: Schema.String,
  googleProject: Schema.NullOr(Schema.String),
  googleLocation: Schema.NullOr(Schema.String),
  models: Strings,
  status: Schema.Literal("active", "suspended"),
  /** The routing group the data plane matches a key's `group` against (blank: `default`). */
  routingGroup: Schema.String,
  version: Version
}) {}

export class ApiKey extends Schema.Class<ApiKey>("ApiKey")({
  id: Id,
  groupId: Id,
  apiKey: Schema.String,
  weight: Schema.Number,
  status: Schema.Literal("active", "auto_disabled", "manual_disabled"),
  autoBan: Schema.Boolean,
  banUntil: Schema.NullOr(Time),
  version: Version
}) {}

export class Binding extends Schema.Class<Binding>("Binding")({
  id: Id,
  namespace: Schema.String,
  publicModel: Schema.String,
  groupId: Id,
  weight: Schema.Number,
  selectorType: Schema.Literal("exact", "regex", "normalize_exact"),
  selectorValue: Schema.String,
  status: Schema.Literal("active", "suspended"),
  updatedAt: Time,
  version: Version
}) {}
