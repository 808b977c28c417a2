/**
 * The balancer's side of the contract, as far as the spec states it: how a bearer token is
 * authenticated from the auth hashes (§1 #1, #2; §3.9). Reads only what the balancer reads, so
 * tests, the demo and a reconciler can check what the data plane would decide.
 */
import { Effect } from "effect"
import type { SinkCommandError, SinkUnavailable } from "../Errors.js"
import type { RedisSinkShape } from "../RedisSink.js"
import * as Contract from "./Contract.js"
import type { Layout } from "./RedisLayout.js"

export type Authentication =
  | { readonly _tag: "Authenticated"; readonly masterId: number; readonly group: string }
  | {
    readonly _tag: "Refused"
    readonly reason: "unknown_token" | "key_suspended" | "key_expired" | "master_missing" | "master_suspended" | "revoked"
  }

/** The decision for a token's hash, from `auth:token:<h>` and its `auth:master:<id>`, at `now`. */
export const authenticateHash = (
  redis: RedisSinkShape,
  l: Layout,
  tokenHash: string,
  now: Date
): Effect.Effect<Authentication, SinkUnavailable | SinkCommandError> =>
  Effect.gen(function*() {
    const refuse = (reason: Extract<Authentication, { _tag: "Refused" }>["reason"]): Authentication => ({ _tag: "Refused", reason })
    const key = yield* redis.use((c) => c.hgetall(l.token(tokenHash)))
    if (key["status"] === undefined) return refuse("unknown_token")
    if (key["status"] !== "active") return refuse("key_suspended")
    const expiresAt = Number(key["expires_at"] ?? "0")
    if (expiresAt > 0 && expiresAt <= Contract.unixSeconds(now)) return refuse("key_expired")
    const masterId = Number(key["master_id"])
    const master = yield* redis.use((c) => c.hgetall(l.master(masterId)))
    if (master["status"] === undefined) return refuse("master_missing")
    if (master["status"] !== "active") return refuse("master_suspended")
    // §3.9: a key issued before the master's current epoch is revoked.
    if (Number(key["issued_at_epoch"] ?? "0") < Number(master["epoch"] ?? "0")) return refuse("revoked")
    return { _tag: "Authenticated", masterId, group: key["group"] ?? "default" }
  })

/** The decision for a bearer token (hashed as `tokenhash.HashToken`). */
export const authenticate = (redis: RedisSinkShape, l: Layout, token: string, now: Date) =>
  authenticateHash(redis, l, Contract.hashToken(token), now)
