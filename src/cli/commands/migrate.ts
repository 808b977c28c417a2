import * as Console from "effect/Console"
import { existsSync } from "node:fs"
import { join, resolve } from "node:path"
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
    const sets = controlPlane ? ["outbox", "control-plane"] as const : ["outbox"] as const
    // The operator's own folder: the library's message names its `directory` option, and a wrong
    // path is a usage error, not the environment's.
    if (directory !== undefined) {
      const missing = sets.filter((set) => !existsSync(join(resolve(directory), set)))
      if (missing.length > 0) {
        return yield* new UsageError({
          message: `--dir ${directory} is not a migrations folder: it has no ${missing.join("/ or ")}/ inside (the package's is node_modules/sync-outbox/migrations)`
        })
      }
    }
    const applied = yield* Migrations.run(sets, { directory })
    yield* Console.log(applied.length === 0 ? "up to date" : applied.map((name) => `applied ${name}`).join("\n"))
  }).pipe(Effect.provide(database))
