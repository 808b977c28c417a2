/**
 * Entry point of the `sync-outbox` command. A user mistake or an unreachable service ends in one
 * line on stderr and an exit code scripts can trust: 0 done, 1 the environment failed (database,
 * Redis, migration), 2 the command or its input was wrong.
 */
import { ValidationError } from "@effect/cli"
import { NodeContext, NodeRuntime } from "@effect/platform-node"
import { Cause, Effect, Option } from "effect"
import { run } from "./Cli.js"

const usageTags = new Set([
  "UsageError",
  "InvalidPayload",
  "InvalidEvent",
  "UnknownEventType",
  "EventNotFound",
  "InvalidConfig",
  "RowNotFound",
  "InvalidJournalQuery"
])

const describe = (error: unknown): { readonly code: number; readonly line: string | null } => {
  if (ValidationError.isValidationError(error)) return { code: 2, line: null } // @effect/cli printed it
  const tag = typeof error === "object" && error !== null && "_tag" in error ? String(error._tag) : ""
  const message = error instanceof Error ? error.message : String(error)
  if (tag === "ConfigError") {
    const missing = /Missing data at ([A-Z0-9_.]+)/.exec(String(error))
    return { code: 2, line: missing ? `${missing[1]} is not set` : `configuration: ${String(error)}` }
  }
  if (tag === "SqlError") {
    const cause = (error as { cause?: unknown }).cause
    const detail = cause instanceof Error ? cause.message : ""
    return { code: 1, line: `database: ${message}${detail && !message.includes(detail) ? `: ${detail}` : ""}` }
  }
  if (tag === "SinkUnavailable") return { code: 1, line: `redis unavailable: ${message}` }
  return { code: usageTags.has(tag) ? 2 : 1, line: message || tag }
}

run(process.argv).pipe(
  Effect.catchAllCause((cause) => {
    if (Cause.isInterruptedOnly(cause)) return Effect.void
    const failure = Cause.failureOption(cause)
    const { code, line } = Option.isSome(failure)
      ? describe(failure.value)
      : { code: 1, line: `unexpected: ${Cause.pretty(cause).split("\n")[0]}` }
    return Effect.sync(() => {
      // Schema errors are trees; a script wants one line.
      if (line !== null) process.stderr.write(`sync-outbox: ${line.replace(/\s*\n[\s└├│─]*/g, " ")}\n`)
      process.exitCode = code
    })
  }),
  Effect.provide(NodeContext.layer),
  NodeRuntime.runMain({ disableErrorReporting: true })
)
