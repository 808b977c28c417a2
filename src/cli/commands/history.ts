import * as Effect from "effect/Effect"
import type { Input } from "../spec.js"
import { showHistory } from "../journal.js"
import { database, integer, text } from "../shared.js"

export const run = ({ options }: Input) =>
  showHistory({
    resourceType: text(options["resource-type"]),
    resourceId: integer(options["resource-id"]),
    since: text(options["since"]),
    limit: integer(options["limit"]) ?? 100,
    json: options["json"] === true
  }).pipe(Effect.provide(database))
