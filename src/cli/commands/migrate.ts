import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Migrations from "../../Migrations.js"
import type { Input } from "../spec.js"
import { database, text, UsageError } from "../shared.js"

export const run = ({ options }: Input) =>
  Effect.gen(function*() {
    if (options["control-plane"] === true && options["engine-only"] === true) {
      return yield* new UsageError({ message: "--control-plane and --engine-only contradict each other" })
    }
    const directory = text(options["dir"])
    const before = yield* Migrations.applied
    // The control plane is opt-in; a database that already has it is kept up to date.
    const controlPlane = options["control-plane"] === true ||
      (options["engine-only"] !== true && before.some((name) => name.startsWith("control-plane/")))
    const applied = yield* Migrations.run(controlPlane ? ["outbox", "control-plane"] : ["outbox"], { directory })
    yield* Console.log(applied.length === 0 ? "up to date" : applied.map((name) => `applied ${name}`).join("\n"))
  }).pipe(Effect.provide(database))
