import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as ParseResult from "effect/ParseResult"
import * as Schema from "effect/Schema"
import { readFile } from "node:fs/promises"
import { InvalidPayload, UnknownEventType } from "../../Errors.js"
import type { EventType } from "../../OutboxEvent.js"
import { enqueue } from "../../Enqueue.js"
import type { Input } from "../spec.js"
import { database, integer, loadHandlers, text, UsageError } from "../shared.js"

const readStdin = async (): Promise<string> => {
  const chunks: Array<Buffer> = []
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer)
  return Buffer.concat(chunks).toString("utf8")
}

/** `--payload` as given: JSON itself, `@file`, or `-` for stdin (no argv size limit for either). */
const payloadText = (given: string | undefined): Effect.Effect<string | undefined, UsageError> => {
  if (given === undefined) return Effect.succeed(undefined)
  if (given === "-") {
    if (process.stdin.isTTY === true) return Effect.fail(new UsageError({ message: "--payload - reads stdin, but stdin is a terminal: pipe the JSON in" }))
    return Effect.tryPromise({ try: readStdin, catch: (e) => new UsageError({ message: `--payload -: cannot read stdin: ${String(e)}` }) })
  }
  if (given.startsWith("@")) {
    const path = given.slice(1)
    return Effect.tryPromise({
      try: () => readFile(path, "utf8"),
      catch: (e) => new UsageError({ message: `--payload ${given}: cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? String(e)}` })
    })
  }
  return Effect.succeed(given)
}

/** Every problem of a payload, one line each, named by its path in the payload. */
const schemaProblems = (error: ParseResult.ParseError): string =>
  ParseResult.ArrayFormatter.formatErrorSync(error)
    .map((issue) => `${issue.path.length === 0 ? "(payload)" : issue.path.map(String).join(".")}: ${issue.message}`)
    .join("\n")

export const run = ({ args, options }: Input) =>
  Effect.gen(function*() {
    const resourceType = args["RESOURCE_TYPE"]!
    const action = args["ACTION"]!
    const specifier = text(options["handlers"]) ?? process.env["SYNC_OUTBOX_HANDLERS"]
    const module = yield* loadHandlers(specifier)
    const type = module.eventTypes.find((t) => t.resourceType === resourceType && t.action === action)
    if (type === undefined) return yield* new UnknownEventType({ resourceType, action })
    const raw = yield* payloadText(text(options["payload"]))
    const json = raw === undefined ? null : yield* Effect.try({
      try: () => JSON.parse(raw) as unknown,
      catch: (e) =>
        new InvalidPayload({ resourceType, action, message: `--payload is not valid JSON: ${e instanceof Error ? e.message : String(e)}` })
    })
    const value = yield* Schema.decodeUnknown(type.payload)(json, { errors: "all" }).pipe(
      Effect.mapError((e) =>
        new InvalidPayload({ resourceType, action, message: `the payload does not fit ${resourceType}/${action}:\n${schemaProblems(e)}` })
      )
    )
    const resourceId = integer(options["resource-id"])
    const id = yield* enqueue(type as EventType<unknown, unknown>, { resourceId: resourceId ?? null, payload: value })
    yield* Console.log(`enqueued ${id}`)
  }).pipe(Effect.provide(database))

/** The event types a handlers module accepts, for `enqueue --help`. */
export const knownTypes = async (specifier: string | undefined): Promise<ReadonlyArray<string>> => {
  const module = await Effect.runPromise(loadHandlers(specifier).pipe(Effect.either)).then((either) => {
    if (either._tag === "Left") throw new Error(either.left.message)
    return either.right
  })
  const rows = module.eventTypes.map((t) => {
    const name = `${t.resourceType} ${t.action}`
    const payload = String(t.payload.ast).replace(/\s+/g, " ")
    return [name, `${t.requiresResourceId ? "--resource-id N, " : ""}payload ${payload}`] as const
  })
  const width = Math.min(Math.max(0, ...rows.map(([n]) => n.length)), 34)
  return rows.length === 0 ? ["  (none)"] : rows.map(([n, d]) => `  ${n.padEnd(width)}  ${d}`)
}

