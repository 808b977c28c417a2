/**
 * Entry point of the `sync-outbox` command. It parses the command line and answers `--help` with
 * Node alone; a command's implementation (and Effect) is loaded only when that command runs.
 * A user mistake or an unreachable service ends in a short message on stderr and an exit code
 * scripts can trust: 0 done, 1 the environment failed (database, Redis, migration), 2 the
 * command or its input was wrong, 3 `verify` found drift.
 */
import type { Effect } from "effect/Effect"
import { readFileSync } from "node:fs"
import { type CommandSpec, commands, environment, groups, type Input, type OptionSpec } from "./spec.js"
import { exitIfStuck } from "./stuck.js"

export type { Input } from "./spec.js"

class UsageFailure extends Error {
  constructor(message: string, readonly command?: CommandSpec | undefined) {
    super(message)
  }
}

const version = (): string => {
  try {
    return (JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version: string }).version
  } catch {
    return "unknown"
  }
}

// Colours only for a person at a terminal: never when piped, never under NO_COLOR or TERM=dumb.
const colour = (stream: NodeJS.WriteStream) =>
  stream.isTTY === true && (process.env["NO_COLOR"] ?? "") === "" && process.env["TERM"] !== "dumb"
const style = (stream: NodeJS.WriteStream) => {
  const on = colour(stream)
  return {
    bold: (s: string) => (on ? `\x1b[1m${s}\x1b[22m` : s),
    dim: (s: string) => (on ? `\x1b[2m${s}\x1b[22m` : s),
    red: (s: string) => (on ? `\x1b[31m${s}\x1b[39m` : s)
  }
}

const table = (rows: ReadonlyArray<readonly [string, string]>, indent = "  ") => {
  const width = Math.min(Math.max(...rows.map(([left]) => left.length)), 34)
  return rows.map(([left, right]) =>
    left.length > width ? `${indent}${left}\n${indent}${" ".repeat(width + 2)}${right}` : `${indent}${left.padEnd(width)}  ${right}`
  )
}

const optionUsage = (o: OptionSpec) => `--${o.name}${o.value === undefined ? "" : ` ${o.value}`}`

const usageLine = (c: CommandSpec) =>
  [
    "sync-outbox",
    ...c.path,
    ...c.args.map((a) => (a.optional === true ? `[${a.name}]` : a.name)),
    ...(c.options.some((o) => o.hidden !== true) ? ["[options]"] : [])
  ].join(" ")

const rootHelp = (): string => {
  const s = style(process.stdout)
  const listed: Array<readonly [string, string]> = []
  for (const c of commands) {
    const first = c.path[0]!
    if (c.path.length > 1) {
      if (!listed.some(([name]) => name === first)) listed.push([first, `${groups[first] ?? ""} (${commands.filter((d) => d.path[0] === first).map((d) => d.path[1]).join(", ")})`])
    } else listed.push([first, c.summary])
  }
  return [
    `sync-outbox ${version()}: keep Redis in step with a Postgres control plane through a transactional outbox`,
    "",
    s.bold("USAGE"),
    "  sync-outbox <command> [options]",
    "  sync-outbox <command> --help",
    "",
    s.bold("COMMANDS"),
    ...table(listed),
    "",
    s.bold("ENVIRONMENT"),
    ...table(Object.entries(environment)),
    "",
    s.bold("EXIT CODES"),
    "  0 done   1 the environment failed (database, Redis, migration)   2 the command or its input was wrong",
    "  3 verify found drift between Redis and the control plane",
    ""
  ].join("\n")
}

const groupHelp = (group: string): string => {
  const s = style(process.stdout)
  const members = commands.filter((c) => c.path[0] === group)
  return [
    `sync-outbox ${group}: ${groups[group] ?? ""}`,
    "",
    s.bold("USAGE"),
    ...members.map((c) => `  ${usageLine(c)}`),
    "",
    s.bold("COMMANDS"),
    ...table(members.map((c) => [c.path.join(" "), c.summary] as const)),
    "",
    `Run \`sync-outbox ${group} <command> --help\` for a command's options.`,
    ""
  ].join("\n")
}

const commandHelp = (c: CommandSpec, extra: ReadonlyArray<string>): string => {
  const s = style(process.stdout)
  const options = c.options.filter((o) => o.hidden !== true)
  return [
    `sync-outbox ${c.path.join(" ")}: ${c.summary}`,
    ...(c.details === undefined ? [] : ["", ...c.details.map((line) => `  ${line}`)]),
    "",
    s.bold("USAGE"),
    `  ${usageLine(c)}`,
    ...(c.args.length === 0 ? [] : ["", s.bold("ARGUMENTS"), ...table(c.args.map((a) => [a.name, a.description] as const))]),
    ...(options.length === 0 ? [] : [
      "",
      s.bold("OPTIONS"),
      ...table(options.map((o) => [optionUsage(o), `${o.description}${o.default === undefined ? "" : ` (default ${o.default})`}`] as const))
    ]),
    "",
    s.bold("ENVIRONMENT"),
    ...table(c.env.map((name) => [name, environment[name] ?? ""] as const)),
    ...extra,
    ""
  ].join("\n")
}

type Parsed =
  | { readonly _tag: "Help"; readonly text: () => string | Promise<string> }
  | { readonly _tag: "Version" }
  | { readonly _tag: "Run"; readonly input: Input }

const parse = (argv: ReadonlyArray<string>): Parsed => {
  // `sync-outbox help dead list` is `sync-outbox dead list --help`.
  const asked = argv[0] === "help" ? [...argv.slice(1), "--help"] : argv
  const help = asked.includes("--help") || asked.includes("-h")
  const words = asked.filter((a) => a !== "--help" && a !== "-h")
  if (words.length === 0) return { _tag: "Help", text: rootHelp }
  if (words[0] === "--version" || words[0] === "-V") return { _tag: "Version" }
  const first = words[0]!
  if (first.startsWith("-")) throw new UsageFailure(`unknown option ${first}; see sync-outbox --help`)
  let command = commands.find((c) => c.path.length === 1 && c.path[0] === first)
  let rest = words.slice(1)
  if (command === undefined && first in groups) {
    const second = words[1]
    command = commands.find((c) => c.path[0] === first && c.path[1] === second)
    if (command === undefined) {
      if (help || second === undefined) return { _tag: "Help", text: () => groupHelp(first) }
      throw new UsageFailure(`unknown command "${first} ${second}"; the ${first} commands are: ${commands.filter((c) => c.path[0] === first).map((c) => c.path[1]).join(", ")}`)
    }
    rest = words.slice(2)
  }
  if (command === undefined) {
    throw new UsageFailure(`unknown command "${first}"; the commands are: ${[...new Set(commands.map((c) => c.path[0]))].join(", ")} (see sync-outbox --help)`)
  }
  const found = command
  if (help) {
    return {
      _tag: "Help",
      text: async () => {
        const extra: Array<string> = []
        if (found.module === "enqueue") {
          // Listing the event types means loading the handlers module: only for this help.
          const handlers = optionValue(rest, "handlers") ?? process.env["SYNC_OUTBOX_HANDLERS"]
          const { knownTypes } = await import("./commands/enqueue.js")
          extra.push("", style(process.stdout).bold("EVENT TYPES") + (handlers === undefined ? " (the built-in ez-api control-plane sync; --handlers for yours)" : ` (${handlers})`), ...(await knownTypes(handlers)))
        }
        return commandHelp(found, extra)
      }
    }
  }
  const args: Record<string, string | undefined> = {}
  const options: Record<string, string | number | boolean | undefined> = {}
  const positional: Array<string> = []
  for (let i = 0; i < rest.length; i++) {
    const word = rest[i]!
    if (word === "--") {
      positional.push(...rest.slice(i + 1))
      break
    }
    if (!word.startsWith("--") || word === "-") {
      positional.push(word)
      continue
    }
    const eq = word.indexOf("=")
    const name = word.slice(2, eq === -1 ? undefined : eq)
    const spec = found.options.find((o) => o.name === name)
    if (spec === undefined) {
      throw new UsageFailure(`unknown option --${name} for ${found.path.join(" ")}; see sync-outbox ${found.path.join(" ")} --help`, found)
    }
    if (name in options) throw new UsageFailure(`--${name} given twice`, found)
    if (spec.value === undefined) {
      if (eq !== -1) throw new UsageFailure(`--${name} is a flag and takes no value`, found)
      options[name] = true
      continue
    }
    let value: string
    if (eq !== -1) value = word.slice(eq + 1)
    else {
      const next = rest[i + 1]
      if (next === undefined) throw new UsageFailure(`--${name} needs a value (${spec.value})`, found)
      value = next
      i++
    }
    // `--handlers "$HANDLERS"` with the variable unset: an empty value would mean "the default"
    // further on (for --handlers, the built-in ez-api sync instead of the user's handlers).
    if (value.trim() === "") throw new UsageFailure(`--${name} needs a value (${spec.value}), got an empty one`, found)
    if (spec.integer === true) {
      if (!/^-?\d+$/.test(value.trim())) throw new UsageFailure(`--${name} must be an integer, got "${value}"`, found)
      // Past 2^53 the number is no longer the one typed, and the database would refuse it as out
      // of range: an exit 1 ("the environment failed") for what is the command line's mistake.
      if (!Number.isSafeInteger(Number(value))) throw new UsageFailure(`--${name} is out of range, got "${value}"`, found)
      options[name] = Number(value)
    } else options[name] = value
  }
  for (const spec of found.options) {
    if (!(spec.name in options) && spec.default !== undefined) options[spec.name] = spec.integer === true ? Number(spec.default) : spec.default
  }
  for (const [i, arg] of found.args.entries()) {
    const value = positional[i]
    if (value === undefined && arg.optional !== true) {
      throw new UsageFailure(`missing ${arg.name}; usage: ${usageLine(found)}`, found)
    }
    args[arg.name] = value
  }
  if (positional.length > found.args.length) {
    throw new UsageFailure(`unexpected argument "${positional[found.args.length]}"; usage: ${usageLine(found)}`, found)
  }
  return { _tag: "Run", input: { command: found, args, options } }
}

const optionValue = (words: ReadonlyArray<string>, name: string): string | undefined => {
  for (let i = 0; i < words.length; i++) {
    if (words[i] === `--${name}`) return words[i + 1]
    if (words[i]!.startsWith(`--${name}=`)) return words[i]!.slice(name.length + 3)
  }
  return undefined
}

// Static imports for bundlers; each is loaded only when its command runs.
const implementations: Record<string, () => Promise<{ readonly run: (input: Input) => Effect<void, unknown> }>> = {
  migrate: () => import("./commands/migrate.js"),
  worker: () => import("./commands/worker.js"),
  status: () => import("./commands/status.js"),
  dead: () => import("./commands/dead.js"),
  enqueue: () => import("./commands/enqueue.js"),
  syncAll: () => import("./commands/syncAll.js"),
  history: () => import("./commands/history.js"),
  replay: () => import("./commands/replay.js"),
  verify: () => import("./commands/verify.js")
}

const main = async (argv: ReadonlyArray<string>) => {
  let parsed: Parsed
  try {
    parsed = parse(argv)
  } catch (error) {
    if (!(error instanceof UsageFailure)) throw error
    process.stderr.write(`${style(process.stderr).red("sync-outbox:")} ${error.message}\n`)
    process.exitCode = 2
    return
  }
  switch (parsed._tag) {
    case "Version":
      process.stdout.write(`${version()}\n`)
      return
    case "Help": {
      // `enqueue --help` loads the handlers module: one whose top-level await never settles
      // would leave node nothing to wait on, and it would end with 0 and no help (see runMain).
      const settled = exitIfStuck("--help cannot finish: loading the handlers module waits on a promise that never settles")
      try {
        process.stdout.write(await parsed.text())
      } catch (error) {
        process.stderr.write(`sync-outbox: ${error instanceof Error ? error.message : String(error)}\n`)
        process.exitCode = 2
      } finally {
        settled()
      }
      return
    }
    case "Run": {
      const [{ runMain }, implementation] = await Promise.all([import("./run.js"), implementations[parsed.input.command.module]!()])
      const { command, options } = parsed.input
      runMain(implementation.run(parsed.input), { stopIsSuccess: command.module === "worker" || options["watch"] === true })
    }
  }
}

await main(process.argv.slice(2))
