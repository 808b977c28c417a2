/** What several commands share; loaded only once a command runs. */
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { createRequire } from "node:module"
import { isAbsolute, resolve } from "node:path"
import { pathToFileURL } from "node:url"
import * as Database from "../Database.js"
import type { HandlersModule } from "../HandlersModule.js"
import { Admin } from "../Admin.js"

export const database = Database.layerConfig()
export const adminLayer = Admin.layer.pipe(Layer.provideMerge(database))

/** A usage error the commands raise themselves: exit code 2, like a bad flag. */
export class UsageError extends Data.TaggedError("UsageError")<{ readonly message: string }> {}

/** A `--handlers` module that cannot be loaded or does not export what the CLI needs. */
export class InvalidHandlersModule extends Data.TaggedError("InvalidHandlersModule")<{ readonly message: string }> {}

export const ms = (n: number | null) =>
  n === null ? "-" : n < 1_000 ? `${Math.round(n)}ms` : n < 120_000 ? `${(n / 1_000).toFixed(1)}s` : `${Math.round(n / 60_000)}m`
export const pad = (s: string | number, n: number) => String(s).padStart(n)

/** One line, whatever the text holds: for tables and lists. */
export const oneLine = (text: string, max = 160) => {
  const flat = text.replace(/\s*[\r\n]+\s*/g, " ⏎ ").replace(/[\x00-\x08\x0b-\x1f\x7f]/g, "?")
  return flat.length > max ? `${flat.slice(0, max - 1)}…` : flat
}

/** Resolve a `--handlers` specifier as the user means it: a path from the current directory, or a package. */
const specifierUrl = (specifier: string): string => {
  if (specifier.startsWith("file:")) return specifier
  if (specifier.startsWith(".") || isAbsolute(specifier)) return pathToFileURL(resolve(specifier)).href
  // A package name: resolved from the user's project, not from where sync-outbox is installed.
  try {
    return pathToFileURL(createRequire(resolve("package.json")).resolve(specifier)).href
  } catch {
    return specifier
  }
}


/**
 * The handlers the worker runs and `enqueue` checks against: the module named by `--handlers`
 * (or SYNC_OUTBOX_HANDLERS), else the built-in ez-api control-plane sync.
 */
export const loadHandlers = (specifier: string | undefined): Effect.Effect<HandlersModule, InvalidHandlersModule> =>
  Effect.tryPromise({
    try: async (): Promise<HandlersModule> => {
      if (specifier === undefined || specifier === "") return (await import("./ezapiModule.js")).module
      const loaded = (await import(specifierUrl(specifier))) as Record<string, unknown>
      const source = (typeof loaded["default"] === "object" && loaded["default"] !== null && "layer" in loaded["default"]
        ? loaded["default"]
        : loaded) as Record<string, unknown>
      const problems: Array<string> = []
      if (!Layer.isLayer(source["layer"])) problems.push("`layer` (a Layer providing Handlers, e.g. Handlers.layer(handle(...)))")
      const types = source["eventTypes"]
      if (
        !Array.isArray(types) ||
        types.some((t) => typeof t !== "object" || t === null || typeof t.resourceType !== "string" || typeof t.action !== "string")
      ) {
        problems.push("`eventTypes` (an array of the OutboxEvent.make types it handles)")
      }
      if (source["reconciler"] !== undefined && !Layer.isLayer(source["reconciler"])) {
        problems.push("`reconciler`, when given, as a Layer providing Reconciler")
      }
      if (problems.length > 0) throw new Error(`handlers module ${specifier} must export ${problems.join(" and ")}`)
      return source as unknown as HandlersModule
    },
    catch: (cause) => {
      const message = cause instanceof Error ? cause.message : String(cause)
      return new InvalidHandlersModule({
        message: /must export/.test(message)
          ? message
          : `cannot load handlers module ${specifier}: ${message}${/\.ts\b/.test(specifier ?? "") ? " (plain node loads JavaScript: compile it, or run with node --import tsx)" : ""}`
      })
    }
  })

/** Options of a parsed command, typed at the point of use. */
export const text = (value: string | number | boolean | undefined): string | undefined =>
  typeof value === "string" ? value : undefined
export const integer = (value: string | number | boolean | undefined): number | undefined =>
  typeof value === "number" ? value : undefined
