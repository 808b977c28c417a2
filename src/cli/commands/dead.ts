import * as Console from "effect/Console"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import { Admin, type DeadSelector } from "../../Admin.js"
import type { Input } from "../spec.js"
import { integer, oneLine, pad, adminLayer, text, UsageError } from "../shared.js"

/** `dead show` of an event that is still pending: not a dead letter, and not shown as one. */
export class NotDead extends Data.TaggedError("NotDead")<{ readonly message: string }> {}

// An event id is a Postgres bigint: anything else names no event, and is said so here rather than
// sent to the database, whose "out of range for type bigint" would read as the environment failing.
const maxId = 9_223_372_036_854_775_807n
const isEventId = (id: string) => /^[1-9][0-9]{0,18}$/.test(id) && BigInt(id) <= maxId

const selector = (input: Input): Effect.Effect<DeadSelector, UsageError> => {
  const id = input.args["ID"]
  const resourceType = text(input.options["resource-type"])
  const all = input.options["all"] === true
  const given = [id !== undefined, resourceType !== undefined, all].filter(Boolean).length
  if (given !== 1) return Effect.fail(new UsageError({ message: "name exactly one of: an ID, --resource-type TYPE, --all" }))
  if (id !== undefined) {
    return isEventId(id)
      ? Effect.succeed({ _tag: "One", id })
      : Effect.fail(new UsageError({ message: `not an event id: ${oneLine(id, 40)} (ids are positive integers)` }))
  }
  if (resourceType !== undefined) return Effect.succeed({ _tag: "ResourceType", resourceType })
  return Effect.succeed({ _tag: "All" })
}

const list = (input: Input) =>
  Effect.gen(function*() {
    const admin = yield* Admin
    const limit = integer(input.options["limit"]) ?? 50
    if (limit < 1) return yield* new UsageError({ message: "--limit must be at least 1" })
    const rows = yield* admin.listDead({ resourceType: text(input.options["resource-type"]), limit })
    if (input.options["json"] === true) {
      return yield* Console.log(JSON.stringify(rows.map((r) => ({
        id: r.id,
        resourceType: r.resourceType,
        action: r.action,
        resourceId: r.resourceId,
        attempts: r.retryCount,
        createdAt: r.createdAt,
        lastError: r.lastError
      })), null, 2))
    }
    if (rows.length === 0) return yield* Console.log("no dead letters")
    const lines = [`${pad("id", 8)}  ${"type/action".padEnd(28)} ${pad("resource", 9)} ${pad("attempts", 8)}  last error`]
    for (const r of rows) {
      // One line per row whatever the error says: a stack or a multi-line message is folded.
      lines.push(
        `${pad(r.id, 8)}  ${oneLine(`${r.resourceType}/${r.action}`, 28).padEnd(28)} ${pad(r.resourceId ?? "-", 9)} ${pad(r.retryCount, 8)}  ${oneLine(r.lastError ?? "")}`
      )
    }
    yield* Console.log(lines.join("\n"))
  })

const show = (input: Input) =>
  Effect.gen(function*() {
    const admin = yield* Admin
    const id = input.args["ID"]!
    if (!isEventId(id)) return yield* new UsageError({ message: `not an event id: ${oneLine(id, 40)} (ids are positive integers)` })
    const { event, failures } = yield* admin.show(id)
    if (event.status !== "dead") {
      return yield* new NotDead({
        message: `event ${event.id} is ${event.status}, not a dead letter (${event.retryCount} failed attempts so far${event.nextRetryAt === null ? "" : `, next attempt ${event.nextRetryAt.toISOString()}`}); see sync-outbox status`
      })
    }
    if (input.options["json"] === true) {
      return yield* Console.log(JSON.stringify({
        id: event.id,
        resourceType: event.resourceType,
        action: event.action,
        resourceId: event.resourceId,
        orderingKey: event.orderingKey,
        status: event.status,
        attempts: event.retryCount,
        createdAt: event.createdAt,
        lastError: event.lastError,
        payload: event.payload,
        failures: failures.map((f) => ({ attempt: f.attempt, failedAt: f.failedAt, errorTag: f.errorTag, message: f.message }))
      }, null, 2))
    }
    yield* Console.log(
      [
        `dead letter ${event.id}: ${event.resourceType}/${event.action} resource ${event.resourceId ?? "-"}`,
        `ordering key ${event.orderingKey}, created ${event.createdAt.toISOString()}, attempts ${event.retryCount}`,
        `payload ${JSON.stringify(event.payload)}`,
        "failure history:",
        ...(failures.length === 0
          ? ["  (none recorded)"]
          : failures.map((f) => `  #${f.attempt} ${f.failedAt.toISOString()} ${f.errorTag}: ${oneLine(f.message, 400)}`))
      ].join("\n")
    )
  })

/** One named event that the dead-letter command did not find dead: say whether it exists at all. */
const notDeadOrMissing = (id: string) =>
  Effect.flatMap(Admin, (admin) =>
    admin.show(id).pipe(
      Effect.flatMap(({ event }) =>
        new NotDead({ message: `event ${id} is ${event.status === "pending" ? "pending" : event.status}, not a dead letter: nothing done` })
      )
    ))

/** `requeue` and `purge`: the same selection, the same answer for a named event that is not dead. */
const onDeadLetters = (verb: "requeue" | "purge", done: string) => (input: Input) =>
  Effect.gen(function*() {
    const admin = yield* Admin
    const which = yield* selector(input)
    const n = yield* admin[verb](which).pipe(
      Effect.catchTag("EventNotFound", (e) => which._tag === "One" ? notDeadOrMissing(which.id) : Effect.fail(e))
    )
    yield* Console.log(`${done} ${n}`)
  })

const requeue = onDeadLetters("requeue", "requeued")
const purge = onDeadLetters("purge", "purged")

const byName: Record<string, (input: Input) => Effect.Effect<void, unknown, Admin>> = { list, show, requeue, purge }

export const run = (input: Input) => byName[input.command.path[1]!]!(input).pipe(Effect.provide(adminLayer))
