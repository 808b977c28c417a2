/**
 * Runs a command's effect as the process: SIGINT/SIGTERM interrupt it (a worker drains), and a
 * failure becomes a short message on stderr with an exit code and, where there is one, the fix.
 */
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Logger from "effect/Logger"
import * as Option from "effect/Option"
import { exitIfStuck } from "./stuck.js"

const usageTags = new Set([
  "UsageError",
  "InvalidPayload",
  "InvalidEvent",
  "UnknownEventType",
  "EventNotFound",
  "InvalidConfig",
  "InvalidHandlersModule",
  "NotDead",
  "RowNotFound",
  "InvalidJournalQuery"
])

interface Report {
  readonly code: number
  readonly message: string
}

const tagOf = (error: unknown) =>
  typeof error === "object" && error !== null && "_tag" in error ? String(error._tag) : ""

const messageOf = (error: unknown): string => {
  if (error instanceof Error) return error.message
  if (typeof error === "object" && error !== null && "message" in error) return String(error.message)
  return String(error)
}

/** Postgres error codes that have an operator's fix. */
const sqlState = (error: unknown): string | undefined => {
  for (let e: unknown = error, depth = 0; typeof e === "object" && e !== null && depth < 4; depth++) {
    if ("code" in e && typeof e.code === "string" && /^[0-9A-Z]{5}$/.test(e.code)) return e.code
    e = "cause" in e ? e.cause : undefined
  }
  return undefined
}

interface ConfigLeaf {
  readonly _op: string
  readonly path?: ReadonlyArray<string>
  readonly message?: string
  readonly left?: ConfigLeaf
  readonly right?: ConfigLeaf
}

const configProblems = (error: ConfigLeaf): Array<string> => {
  if (error._op === "And" || error._op === "Or") {
    return [...(error.left ? configProblems(error.left) : []), ...(error.right ? configProblems(error.right) : [])]
  }
  const name = (error.path ?? []).join("_")
  if (error._op === "MissingData") return [`${name} is not set`]
  const message = error.message ?? error._op
  return [name === "" || message.startsWith(name) ? message : `${name}: ${message}`]
}

export const describe = (error: unknown): Report => {
  const tag = tagOf(error)
  const message = messageOf(error)
  if (tag === "ConfigError") {
    return { code: 2, message: [...new Set(configProblems(error as ConfigLeaf))].join("\n") }
  }
  if (tag === "SqlError") {
    const cause = (error as { cause?: unknown }).cause
    const detail = cause instanceof Error ? cause.message : ""
    const text = `database: ${message}${detail && !message.includes(detail) ? `: ${detail}` : ""}`
    const state = sqlState(error)
    if (state === "42P01") {
      const fix = /"cp_/.test(text) ? "run `sync-outbox migrate --control-plane`" : "run `sync-outbox migrate`"
      return { code: 1, message: `${text}: ${fix}` }
    }
    if (state === "3D000") return { code: 1, message: `${text}: create it, or fix DATABASE_URL` }
    // Postgres answered and cancelled the statement for its time: the URL is right, the bound is not.
    if (state === "57014") {
      return { code: 1, message: `${text} (the bound is SYNC_OUTBOX_DB_STATEMENT_TIMEOUT: raise it, or see what holds the database up)` }
    }
    if (/ECONNREFUSED|ENOTFOUND|EAI_AGAIN|timeout|password authentication/i.test(text)) {
      return { code: 1, message: `${text} (check DATABASE_URL)` }
    }
    return { code: 1, message: text }
  }
  if (tag === "SinkUnavailable") {
    // The variable that chose the Redis: cluster nodes win over REDIS_URL when set (RedisSink).
    const variable = (process.env["REDIS_CLUSTER_NODES"] ?? "") === "" ? "REDIS_URL" : "REDIS_CLUSTER_NODES"
    return { code: 1, message: `redis unavailable: ${message} (check ${variable})` }
  }
  if (tag === "MigrationError") {
    const migration = (error as { migration?: unknown }).migration
    // A file that failed to apply is named; a check over a whole set ("outbox/*") says it all already.
    const file = typeof migration === "string" && migration.endsWith(".sql") && !message.includes(migration)
    return { code: 1, message: file ? `migration ${migration}: ${message}` : message }
  }
  if (tag === "DriftFound") return { code: 3, message }
  return { code: usageTags.has(tag) ? 2 : 1, message: configNames(message) || tag }
}

/** Effect's `(Invalid data at SYNC_OUTBOX.INTERVAL: "…")` in the names an operator sets. */
const configNames = (message: string) =>
  message.replace(/\(?Invalid data at ([A-Z0-9_.]+): "(.*?)"\)?(?=$|\s*(?:and|or)?\s*\()/g, (_, path: string, detail: string) =>
    `${path.replace(/\./g, "_")}: ${detail}`)

/**
 * "Service not found" is a defect our own code cannot raise (its layers are type-checked): it
 * comes from a `--handlers` module's layers, which the CLI loads untyped. Either its `layer` (or
 * `reconciler`) does not provide what it is exported as, or it needs a service of the
 * application's that the worker does not offer. Both are the module's mistake (exit 2), and
 * both have a fix worth saying.
 */
const missingService = (message: string): Report | undefined => {
  const service = /^Service not found: (\S+)/.exec(message)?.[1]
  if (service === undefined) return undefined
  if (service === "sync-outbox/Handlers" || service === "sync-outbox/Reconciler") {
    const [exported, built] = service === "sync-outbox/Handlers"
      ? ["layer", "Handlers.layer(handle(...))"]
      : ["reconciler", "Layer.succeed(Reconciler, ...)"]
    return { code: 2, message: `handlers: the module's \`${exported}\` does not provide ${service.slice("sync-outbox/".length)}: export ${built}` }
  }
  return {
    code: 2,
    message: `handlers: the module's layers need the service ${service}, which the worker does not provide (it provides SqlClient, PgClient, PgPool, RedisSink and OutboxConfig): provide it inside the module, e.g. with Layer.provide`
  }
}

const report = (cause: Cause.Cause<unknown>, stopIsSuccess: boolean): number => {
  // SIGTERM or Ctrl-C: the way to stop a worker or a watch (a clean stop); a one-shot command cut
  // short did not finish.
  if (Cause.isInterruptedOnly(cause)) return stopIsSuccess ? 0 : 130
  const failure = Cause.failureOption(cause)
  const defect = Cause.squash(cause)
  const { code, message } = Option.isSome(failure)
    ? describe(failure.value)
    // A handlers module that registers one (resource type, action) twice is the user's mistake.
    : /registered twice/.test(messageOf(defect))
    ? { code: 2, message: `handlers: ${messageOf(defect)}` }
    : missingService(messageOf(defect)) ?? { code: 1, message: `unexpected: ${Cause.pretty(cause).split("\n")[0]}` }
  // A message of several lines (a schema's paths) keeps them, indented under the first.
  const [first, ...rest] = message.split("\n")
  process.stderr.write(`sync-outbox: ${first}\n${rest.map((line) => `  ${line.trimStart()}\n`).join("")}`)
  return code
}

export const runMain = (program: Effect.Effect<void, unknown>, options: { readonly stopIsSuccess: boolean }): void => {
  // `status --watch | head`: the reader has gone, which ends the command, not as a crash.
  process.stdout.on("error", (error: NodeJS.ErrnoException) => {
    if (error.code === "EPIPE") process.exit(0)
    throw error
  })
  // logfmt, quoted and escaped: a message carries what a handler or a database said, and Effect's
  // default logger wrote its newlines and terminal escapes raw (a line that forges another, a
  // colour that sticks to the operator's terminal).
  const fiber = Effect.runFork(Effect.provide(program, Logger.logFmt))
  let signalled = false
  const onSignal = () => {
    // A second signal means "now": do not wait for the drain.
    if (signalled) process.exit(130)
    signalled = true
    Effect.runFork(Fiber.interrupt(fiber))
  }
  process.on("SIGINT", onSignal)
  process.on("SIGTERM", onSignal)
  const finished = exitIfStuck(
    "the command cannot finish: it waits on a promise that never settles, with nothing left running (e.g. a handlers module whose top-level await never resolves)"
  )
  fiber.addObserver((exit) => {
    process.off("SIGINT", onSignal)
    process.off("SIGTERM", onSignal)
    finished()
    const code = Exit.isSuccess(exit) ? 0 : report(exit.cause, options.stopIsSuccess)
    process.exitCode = code
    // Everything the command opened is closed by now; a library's stray handle must not keep the
    // process alive, but what is written to stdout must get out first.
    setTimeout(() => process.exit(code), 200).unref()
  })
}
