import * as Effect from "effect/Effect"
import type { Input } from "../spec.js"
import { runReplay } from "../journal.js"
import { database, loadHandlers, text } from "../shared.js"

export const run = ({ args, options }: Input) =>
  Effect.gen(function*() {
    // Only event types a worker can apply are replayed: the same registry as `worker`/`enqueue`.
    const handlers = yield* loadHandlers(text(options["handlers"]) ?? process.env["SYNC_OUTBOX_HANDLERS"])
    const given = [text(options["ids"]), args["IDS"]].filter((s): s is string => s !== undefined && s !== "")
    yield* runReplay({
      ids: given.length === 0 ? undefined : given.join(","),
      resourceType: text(options["resource-type"]),
      since: text(options["since"]),
      dryRun: options["dry-run"] === true,
      json: options["json"] === true,
      registered: handlers.eventTypes
    }).pipe(Effect.provide(database))
  })
