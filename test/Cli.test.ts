/**
 * The `sync-outbox` command as an operator runs it: the compiled CLI (`dist/`, built once below)
 * under plain `node`, against a real Postgres and Redis. Generous timeouts: each call is a fresh
 * Node process, and the machine may be busy.
 */
import { execFile, spawn } from "node:child_process"
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { Redis } from "ioredis"
import pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { SqlError } from "@effect/sql"
import { createDatabase, freePort } from "../scripts/services.js"
import { describe as describeFailure } from "../src/cli/run.js"
import { freshDatabase, postgresUrl, prefix, redisUrl } from "./support/harness.js"

const root = new URL("..", import.meta.url).pathname
const bin = join(root, "bin/sync-outbox.js")
const callTimeout = 120_000

// Files the tests write (handlers modules, migration folders, payloads): inside the package, so
// that a handlers module resolves "sync-outbox" and "effect" as a user's would; removed after.
let scratch = ""
afterAll(() => rmSync(scratch, { recursive: true, force: true }))

beforeAll(() => {
  mkdirSync(join(root, ".tmp"), { recursive: true })
  scratch = mkdtempSync(join(root, ".tmp", "cli-test-"))
  // The CLI users run is the compiled one: the global setup built it from the current sources.
}, 300_000)

interface Result {
  readonly code: number
  readonly stdout: string
  readonly stderr: string
}

const cli = (
  args: ReadonlyArray<string>,
  env: Record<string, string | undefined>,
  options: { readonly input?: string; readonly cwd?: string } = {}
): Promise<Result> =>
  new Promise((resolve) => {
    const child = execFile(
      "node",
      [bin, ...args],
      { env: { ...process.env, ...env } as NodeJS.ProcessEnv, timeout: callTimeout, cwd: options.cwd ?? root, maxBuffer: 16 * 1024 * 1024 },
      (error, stdout, stderr) => {
        resolve({ code: error ? (typeof error.code === "number" ? error.code : 1) : 0, stdout, stderr })
      }
    )
    child.stdin?.end(options.input ?? "")
  })

const query = async <A extends Record<string, unknown>>(url: string, text: string, params: Array<unknown> = []) => {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    return (await client.query<A>(text, params)).rows
  } finally {
    await client.end()
  }
}

/**
 * A handlers module in its own folder of the scratch directory: one event type, `touched/set`
 * with a resource id, handled by `handler` (the source of a function of the event).
 */
const touchedModule = (name: string, handler: string): string => {
  const dir = join(scratch, name)
  mkdirSync(dir, { recursive: true })
  const module = join(dir, "handlers.js")
  writeFileSync(
    module,
    `import { Effect, Schema } from "effect"
import { handle, Handlers, OutboxEvent, RedisSink } from "sync-outbox"
export const Touched = OutboxEvent.make({ resourceType: "touched", action: "set", requiresResourceId: true, payload: Schema.Struct({}) })
export const eventTypes = [Touched]
export const layer = Handlers.layer(handle(Touched, ${handler}))
`
  )
  return module
}

const camelOnly = (value: unknown): Array<string> => {
  if (Array.isArray(value)) return value.flatMap(camelOnly)
  if (typeof value !== "object" || value === null) return []
  return Object.entries(value).flatMap(([key, inner]) => [...(key.includes("_") ? [key] : []), ...camelOnly(inner)])
}

describe("sync-outbox CLI", () => {
  it("migrate creates the engine's tables; the control plane only with --control-plane, then keeps it up to date", async () => {
    const url = await createDatabase(postgresUrl(), `so_cli_migrate_${Date.now()}`)
    const engine = await cli(["migrate"], { DATABASE_URL: url })
    expect(engine).toMatchObject({ code: 0, stderr: "" })
    expect(engine.stdout).toContain("applied outbox/0001_outbox.sql")
    expect(engine.stdout).not.toContain("control-plane")
    expect(await query(url, `SELECT to_regclass('cp_masters') AS t`)).toEqual([{ t: null }])
    // The old flag still works and changes nothing.
    expect((await cli(["migrate", "--engine-only"], { DATABASE_URL: url })).stdout.trim()).toBe("up to date")
    const all = await cli(["migrate", "--control-plane"], { DATABASE_URL: url })
    expect(all.stdout.trim()).toBe("applied control-plane/0001_control_plane.sql\napplied control-plane/0002_ez_api_contract.sql")
    expect((await cli(["migrate"], { DATABASE_URL: url })).stdout.trim()).toBe("up to date")

    // A later control-plane file reaches a database that has the control plane, without the flag.
    const dir = join(scratch, "migrations")
    for (const set of ["outbox", "control-plane"]) mkdirSync(join(dir, set), { recursive: true })
    for (const file of ["0001_outbox.sql", "0002_workers.sql"]) writeFileSync(join(dir, "outbox", file), "SELECT 1;")
    writeFileSync(join(dir, "control-plane", "0001_control_plane.sql"), "SELECT 1;")
    writeFileSync(join(dir, "control-plane", "0002_later.sql"), "CREATE TABLE cp_later (id int);")
    const later = await cli(["migrate", "--dir", dir], { DATABASE_URL: url })
    expect(later).toMatchObject({ code: 0, stdout: "applied control-plane/0002_later.sql\n" })
    const missing = await cli(["migrate", "--dir", join(dir, "nope")], { DATABASE_URL: url })
    // The operator's mistake, in the operator's terms: the flag, exit 2 (it was exit 1 and named
    // the library's `directory` option).
    expect(missing.code).toBe(2)
    expect(missing.stderr).toMatch(/--dir .*nope is not a migrations folder: it has no outbox\/ or control-plane\/ inside/)
  }, 300_000)

  it("a database that was never migrated: status, dead list and worker say to run migrate", async () => {
    const url = await createDatabase(postgresUrl(), `so_cli_unmigrated_${Date.now()}`)
    for (const args of [["status"], ["dead", "list"], ["worker"], ["worker", "--handlers", "./nope.js"]]) {
      const result = await cli(args, { DATABASE_URL: url, REDIS_URL: redisUrl() })
      if (args[1] === "--handlers") {
        expect(result.code, args.join(" ")).toBe(2)
        expect(result.stderr).toContain("cannot load handlers module ./nope.js")
        continue
      }
      expect(result.code, args.join(" ")).toBe(1)
      expect(result.stderr).toContain("run `sync-outbox migrate`")
      expect(result.stderr).not.toContain("    at ")
      expect(result.stderr.trim().split("\n")).toHaveLength(1)
    }
    // A user's handlers on that database: the library's worker layer says the same.
    const dir = join(scratch, "unmigrated")
    mkdirSync(dir, { recursive: true })
    writeFileSync(join(dir, "handlers.js"), `import { Handlers } from "sync-outbox"\nexport const layer = Handlers.layer()\nexport const eventTypes = []\n`)
    const own = await cli(["worker", "--handlers", join(dir, "handlers.js")], { DATABASE_URL: url, REDIS_URL: redisUrl() })
    expect(own.code).toBe(1)
    expect(own.stderr.trim()).toBe(
      "sync-outbox: tables sync_outbox, sync_outbox_failures, sync_outbox_workers do not exist in this database: run `sync-outbox migrate` (or Migrations.run())"
    )
    // The built-in sync needs the control plane as well.
    await cli(["migrate"], { DATABASE_URL: url })
    const worker = await cli(["worker"], { DATABASE_URL: url, REDIS_URL: redisUrl() })
    expect(worker.code).toBe(1)
    expect(worker.stderr).toContain("run `sync-outbox migrate --control-plane`")
  }, 300_000)

  it("enqueue validates against the registry; status counts it; bad input exits 2 with the problem", async () => {
    const url = await freshDatabase("cli_enqueue", ["outbox", "control-plane"])
    const env = { DATABASE_URL: url }
    const ok = await cli(["enqueue", "master", "update", "--resource-id", "4"], env)
    expect(ok.code).toBe(0)
    expect(ok.stdout).toMatch(/^enqueued \d+\n$/)
    expect((await cli(["enqueue", "model", "delete", "--payload", '{"name":"gpt-4o"}'], env)).code).toBe(0)

    for (const [args, fragment] of [
      [["enqueue", "tenant", "create"], `no handler for resource type "tenant"`],
      [["enqueue", "model", "delete", "--payload", "{nope"], "--payload is not valid JSON"],
      [["enqueue", "master", "update"], "needs a resource id"],
      [["enqueue", "master", "update", "--resource-id", "x"], "--resource-id must be an integer"],
      [["dead", "list", "--limit", "99999999999999999999"], `--limit is out of range, got "99999999999999999999"`],
      [["enqueue", "master"], "missing ACTION"],
      [["enqueue", "model", "delete", "--payload", "@/nonexistent/p.json"], "cannot read /nonexistent/p.json: ENOENT"],
      [["enqueue", "model", "delete", "--bogus"], "unknown option --bogus"],
      [["dead", "show", "12345"], "no outbox event with id 12345"],
      [["dead", "show", "abc"], "not an event id: abc"],
      [["dead", "requeue"], "exactly one of"],
      [["dead", "frob"], `unknown command "dead frob"`],
      [["frobnicate"], `unknown command "frobnicate"`]
    ] as const) {
      const result = await cli(args, env)
      expect(result.code, args.join(" ")).toBe(2)
      expect(result.stderr).toContain(fragment)
      expect(result.stderr.trim().split("\n"), args.join(" ")).toHaveLength(1)
      expect(result.stderr).not.toContain("    at ")
    }

    // A payload that does not fit: every problem, each on its own line, named by its path.
    const bad = await cli(["enqueue", "key", "update", "--resource-id", "1", "--payload", '{"tokenHash":"short"}'], env)
    expect(bad.code).toBe(2)
    const lines = bad.stderr.trim().split("\n")
    expect(lines[0]).toBe("sync-outbox: the payload does not fit key/update:")
    expect(lines.slice(1).some((line) => /^ {2}tokenHash: /.test(line))).toBe(true)
    const empty = await cli(["enqueue", "model", "delete", "--payload", '{"name":""}'], env)
    expect(empty.stderr).toMatch(/\n {2}name: /)

    // Large payloads come from a file or stdin (argv has a size limit).
    const big = JSON.stringify({ name: "m".repeat(200 * 1024) })
    const file = join(scratch, "payload.json")
    writeFileSync(file, big)
    expect((await cli(["enqueue", "model", "delete", "--payload", `@${file}`], env)).stdout).toMatch(/^enqueued \d+\n$/)
    expect((await cli(["enqueue", "model", "delete", "--payload", "-"], env, { input: big })).stdout).toMatch(/^enqueued \d+\n$/)
    const stored = await query<{ n: number }>(url, `SELECT count(*)::int AS n FROM sync_outbox WHERE length(payload->>'name') = $1`, [200 * 1024])
    expect(stored).toEqual([{ n: 2 }])

    const status = await cli(["status", "--json"], env)
    expect(status.code).toBe(0)
    const parsed = JSON.parse(status.stdout)
    expect(parsed.pending).toBe(4)
    expect(parsed.byResourceType.map((r: { resourceType: string }) => r.resourceType)).toEqual(["master", "model"])
    expect(camelOnly(parsed)).toEqual([])
    const text = await cli(["status"], env)
    expect(text.stdout).toContain("pending 4")
    expect(text.stdout).toContain("no live workers")
  }, 300_000)

  it("dead list / show / requeue / purge work on real dead letters, one line per row; pending events are not dead", async () => {
    const url = await freshDatabase("cli_dead", ["outbox", "control-plane"])
    const env = { DATABASE_URL: url }
    const rows = await query<{ id: string }>(
      url,
      `INSERT INTO sync_outbox (resource_type, action, ordering_key, status, retry_count, last_error)
       VALUES ('master', 'update', 'master:1', 'dead', 10, 'Boom: no'), ('key', 'update', 'key:1', 'dead', 10, E'Boom: no\nat line two\n  at three'),
              ('key', 'update', 'key:2', 'dead', 10, 'Boom: no'), ('key', 'update', 'key:3', 'pending', 2, 'Boom: not yet')
       RETURNING id::text AS id`
    )
    await query(url, `INSERT INTO sync_outbox_failures VALUES ($1, 1, 'Boom', 'first', now()), ($1, 2, 'Boom', E'second\nline', now())`, [rows[0]!.id])
    const list = await cli(["dead", "list"], env)
    const listed = list.stdout.trim().split("\n")
    expect(listed).toHaveLength(4) // a header and one line per dead letter, whatever the errors hold
    expect(listed.filter((l) => l.includes("Boom: no"))).toHaveLength(3)
    expect(list.stdout).not.toContain("not yet")
    const json = JSON.parse((await cli(["dead", "list", "--json"], env)).stdout)
    expect(json).toHaveLength(3)
    expect(json[1].lastError).toBe("Boom: no\nat line two\n  at three")
    expect(camelOnly(json)).toEqual([])

    const show = await cli(["dead", "show", rows[0]!.id], env)
    expect(show.code).toBe(0)
    expect(show.stdout).toContain("dead letter")
    expect(show.stdout).toContain("#1")
    expect(show.stdout).toContain("Boom: second ⏎ line")
    const pending = await cli(["dead", "show", rows[3]!.id], env)
    expect(pending.code).toBe(2)
    expect(pending.stdout).toBe("")
    expect(pending.stderr).toContain(`event ${rows[3]!.id} is pending, not a dead letter`)

    // A pending event named to requeue or purge is said to be pending, not missing; a non-id is not an id.
    for (const verb of ["requeue", "purge"]) {
      const refused = await cli(["dead", verb, rows[3]!.id], env)
      expect(refused.code, verb).toBe(2)
      expect(refused.stderr.trim(), verb).toBe(`sync-outbox: event ${rows[3]!.id} is pending, not a dead letter: nothing done`)
    }
    // Past a bigint is no id either (not the database's "out of range", which reads as exit 1).
    for (const args of [["dead", "show", "abc"], ["dead", "requeue", "-1"], ["dead", "purge", "1.5"], ["dead", "show", "9999999999999999999"], ["dead", "requeue", "9223372036854775808"]]) {
      const bad = await cli(args, env)
      expect(bad.code, args.join(" ")).toBe(2)
      expect(bad.stderr, args.join(" ")).toContain("not an event id")
    }
    expect((await cli(["dead", "requeue", "999999"], env)).stderr).toContain("no outbox event with id 999999")

    expect((await cli(["dead", "requeue", rows[0]!.id], env)).stdout.trim()).toBe("requeued 1")
    expect((await cli(["dead", "purge", "--resource-type", "key"], env)).stdout.trim()).toBe("purged 2")
    expect((await cli(["dead", "list"], env)).stdout.trim()).toBe("no dead letters")
  }, 300_000)

  it("a statement Postgres cancelled for its time names SYNC_OUTBOX_DB_STATEMENT_TIMEOUT, not the URL", () => {
    // What SYNC_OUTBOX_DB_STATEMENT_TIMEOUT=1ms makes of the pool's first SELECT 1 (not reproducible
    // on demand against a real server: a SELECT 1 often finishes within a millisecond).
    const cause = Object.assign(new Error("canceling statement due to statement timeout"), { code: "57014" })
    const report = describeFailure(new SqlError.SqlError({ cause, message: "cannot connect to Postgres: canceling statement due to statement timeout" }))
    expect(report.code).toBe(1)
    expect(report.message).toContain("SYNC_OUTBOX_DB_STATEMENT_TIMEOUT")
    expect(report.message).not.toContain("check DATABASE_URL")
  })

  it("configuration mistakes exit with one clear line: unreachable, not a URL, not set", async () => {
    const down = await cli(["status"], { DATABASE_URL: "postgres://postgres@127.0.0.1:1/none" })
    expect(down.code).toBe(1)
    expect(down.stderr.trim()).toMatch(/^sync-outbox: database: cannot connect to Postgres: .*ECONNREFUSED.*\(check DATABASE_URL\)$/)
    const notUrl = await cli(["status"], { DATABASE_URL: "not-a-url" })
    expect(notUrl.code).toBe(2)
    expect(notUrl.stderr.trim()).toBe(
      "sync-outbox: DATABASE_URL is not a Postgres URL; expected one such as postgres://user:password@127.0.0.1:5432/app"
    )
    const redisNotUrl = await cli(["sync-all"], { DATABASE_URL: "postgres://postgres@127.0.0.1:1/none", REDIS_URL: "not-a-url" })
    expect(redisNotUrl.code).toBe(2)
    expect(redisNotUrl.stderr.trim()).toMatch(/^sync-outbox: REDIS_URL is not a Redis URL; expected one such as redis:\/\/127\.0\.0\.1:6379/)
    const missing = await cli(["status"], { DATABASE_URL: undefined })
    expect(missing.code).toBe(2)
    expect(missing.stderr.trim()).toBe("sync-outbox: DATABASE_URL is not set")
    // A database index that is not a number would be sent as SELECT NaN.
    const badIndex = await cli(["sync-all"], { DATABASE_URL: "postgres://postgres@127.0.0.1:1/none", REDIS_URL: "redis://127.0.0.1:6379/abc" })
    expect(badIndex.code).toBe(2)
    expect(badIndex.stderr).toContain("REDIS_URL is not a Redis URL")
    const badPort = await cli(["worker", "--metrics-port", "99999"], { DATABASE_URL: "postgres://postgres@127.0.0.1:1/none" })
    expect(badPort.code).toBe(2)
    expect(badPort.stderr.trim()).toBe("sync-outbox: --metrics-port must be from 0 (a free port) to 65535, got 99999")
    const badNodes = await cli(["sync-all"], { DATABASE_URL: "postgres://postgres@127.0.0.1:1/none", REDIS_CLUSTER_NODES: "127.0.0.1:abc" })
    expect(badNodes.code).toBe(2)
    expect(badNodes.stderr.trim()).toMatch(/^sync-outbox: REDIS_CLUSTER_NODES is not a list of Redis nodes; expected host:port/)
    // `--handlers "$HANDLERS"` with HANDLERS unset ran the built-in ez-api sync instead of the user's handlers.
    for (const args of [["worker", "--handlers", ""], ["worker", "--handlers="], ["dead", "list", "--resource-type", " "]]) {
      const empty = await cli(args, { DATABASE_URL: "postgres://postgres@127.0.0.1:1/none" })
      expect(empty.code, args.join(" ")).toBe(2)
      expect(empty.stderr.trim()).toMatch(/^sync-outbox: --(handlers|resource-type) needs a value \((MODULE|TYPE)\), got an empty one$/)
    }
    const badConfig = await cli(["worker"], { DATABASE_URL: "postgres://postgres@127.0.0.1:1/none", SYNC_OUTBOX_BATCH_SIZE: "0" })
    expect(badConfig.code).toBe(2)
    expect(badConfig.stderr).toContain("SYNC_OUTBOX_BATCH_SIZE")
  }, 300_000)

  it("--help works on every command, lists the environment and enqueue's event types, and has no colours when piped", async () => {
    for (const args of [[], ["migrate"], ["worker"], ["status"], ["dead"], ["dead", "list"], ["dead", "requeue"], ["enqueue"], ["sync-all"]]) {
      const result = await cli([...args, "--help"], {})
      expect(result.code, args.join(" ")).toBe(0)
      expect(result.stdout).toContain("USAGE")
      expect(result.stdout).not.toContain("\x1b[")
      expect(result.stdout).not.toContain("A user-defined piece of text")
      if (args.length === 1 && args[0] !== "dead") expect(result.stdout, args.join(" ")).toContain("ENVIRONMENT")
    }
    const root = await cli(["--help"], {})
    expect(root.stdout).toContain("DATABASE_URL")
    expect(root.stdout).toContain("REDIS_URL")
    const enqueue = await cli(["enqueue", "--help"], {})
    expect(enqueue.stdout).toContain("EVENT TYPES")
    expect(enqueue.stdout).toMatch(/model delete\s+payload/)
    expect((await cli(["--version"], {})).stdout.trim()).toMatch(/^\d+\.\d+\.\d+/)
  }, 300_000)

  it("worker and enqueue run a user's handlers module (--handlers); the built-in sync needs no flag", async () => {
    const url = await freshDatabase("cli_handlers", ["outbox"])
    const p = prefix()
    const dir = join(scratch, "handlers")
    mkdirSync(dir, { recursive: true })
    // Inside the package, so "sync-outbox" resolves to this package (self-reference) and "effect" to ours.
    const module = join(dir, "handlers.js")
    writeFileSync(
      module,
      `import { Effect, Schema } from "effect"
import { handle, Handlers, OutboxEvent, RedisSink } from "sync-outbox"
export const TenantRenamed = OutboxEvent.make({
  resourceType: "tenant", action: "rename", requiresResourceId: true,
  payload: Schema.Struct({ name: Schema.NonEmptyString })
})
export const eventTypes = [TenantRenamed]
export const layer = Handlers.layer(handle(TenantRenamed, ({ payload, resourceId }) =>
  Effect.flatMap(RedisSink, (redis) => redis.use((c) => c.set(${JSON.stringify(p)} + ":tenant:" + resourceId, payload.name)))))
`
    )
    const env = { DATABASE_URL: url, REDIS_URL: redisUrl(), SYNC_OUTBOX_HANDLERS: module }
    const help = await cli(["enqueue", "--help"], env)
    expect(help.stdout).toMatch(/tenant rename\s+--resource-id N, payload/)
    expect(help.stdout).not.toContain("master create")
    const wrong = await cli(["enqueue", "master", "update", "--resource-id", "1"], env)
    expect(wrong.code).toBe(2)
    expect(wrong.stderr).toContain(`no handler for resource type "master"`)
    const ok = await cli(["enqueue", "tenant", "rename", "--resource-id", "7", "--payload", '{"name":"acme"}'], env)
    expect(ok).toMatchObject({ code: 0, stderr: "" })

    const badModule = join(dir, "bad.js")
    writeFileSync(badModule, "export const layer = 1\n")
    const bad = await cli(["enqueue", "tenant", "rename"], { ...env, SYNC_OUTBOX_HANDLERS: badModule })
    expect(bad.code).toBe(2)
    expect(bad.stderr).toContain("must export `layer`")

    const child = spawn("node", [bin, "worker", "--handlers", module], { env: { ...process.env, ...env }, cwd: root })
    let out = ""
    child.stdout.on("data", (d) => (out += String(d)))
    child.stderr.on("data", (d) => (out += String(d)))
    const redis = new Redis(redisUrl())
    try {
      const deadline = Date.now() + 60_000
      let name: string | null = null
      while (name !== "acme" && Date.now() < deadline && child.exitCode === null) {
        name = await redis.get(`${p}:tenant:7`)
        await new Promise((r) => setTimeout(r, 100))
      }
      expect(name, out).toBe("acme")
      expect(out).toContain(`handlers ${module}, 1 event types`)
    } finally {
      child.kill("SIGTERM")
      const code = await new Promise<number | null>((resolve) => child.once("exit", (c) => resolve(c)))
      await redis.del(`${p}:tenant:7`)
      redis.disconnect()
      expect(code, out).toBe(0)
    }
  }, 300_000)

  it("a handler that leaves a promise to reject unawaited does not end the worker: the rejection is logged, every event is applied, SIGTERM exits 0", async () => {
    const url = await freshDatabase("cli_stray", ["outbox"])
    const p = prefix()
    // The un-awaited call (a second command beside the awaited write) fails: Node's default
    // ended the process on it, with the event still leased and no attempt counted.
    const module = touchedModule("stray", `({ resourceId }) =>
  Effect.flatMap(RedisSink, (redis) => redis.use((c) => {
    void Promise.reject(new Error("stray rejection " + resourceId))
    return c.set(${JSON.stringify(p)} + ":touched:" + resourceId, "1")
  }))`)
    const env = { DATABASE_URL: url, REDIS_URL: redisUrl() }
    const child = spawn("node", [bin, "worker", "--handlers", module], { env: { ...process.env, ...env }, cwd: root })
    let out = ""
    child.stdout.on("data", (d) => (out += String(d)))
    child.stderr.on("data", (d) => (out += String(d)))
    const redis = new Redis(redisUrl())
    const keys = [1, 2, 3].map((id) => `${p}:touched:${id}`)
    try {
      for (const id of [1, 2, 3]) {
        await query(url, "SELECT sync_outbox_enqueue('touched', 'set', $1, '{}')", [id])
      }
      const deadline = Date.now() + 60_000
      const logged = /level=ERROR .*a promise rejected with nothing to handle it .*stray rejection \d/
      let values: Array<string | null> = []
      // The log line comes through a pipe: it may reach us after Redis shows the writes.
      while (Date.now() < deadline && child.exitCode === null) {
        values = await redis.mget(keys)
        if (values.every((v) => v === "1") && logged.test(out)) break
        await new Promise((r) => setTimeout(r, 100))
      }
      expect(values, out).toEqual(["1", "1", "1"])
      expect(child.exitCode, out).toBeNull()
      expect(out).toMatch(logged)
    } finally {
      child.kill("SIGTERM")
      const code = child.exitCode ?? await new Promise<number | null>((resolve) => child.once("exit", (c) => resolve(c)))
      await redis.del(...keys)
      redis.disconnect()
      expect(code, out).toBe(0)
    }
  }, 300_000)

  it("a handler that ends the process, restarted by a supervisor: its event is a dead letter after MAX_RETRIES lost leases, every other event of its batch is applied, each having lost one attempt at most", async () => {
    const url = await freshDatabase("cli_poison", ["outbox"])
    const p = prefix()
    const module = touchedModule("poison", `({ resourceId }) =>
  resourceId === 3
    ? Effect.sync(() => process.exit(1))
    : Effect.flatMap(RedisSink, (redis) => redis.use((c) => c.set(${JSON.stringify(p)} + ":touched:" + resourceId, "1")))`)
    const env = {
      DATABASE_URL: url,
      REDIS_URL: redisUrl(),
      SYNC_OUTBOX_MAX_RETRIES: "3",
      SYNC_OUTBOX_LEASE: "2s",
      SYNC_OUTBOX_CALL_TIMEOUT: "1s",
      SYNC_OUTBOX_INTERVAL: "200ms"
    }
    // One batch: all six are pending before the first worker starts.
    for (const id of [1, 2, 3, 4, 5, 6]) await query(url, "SELECT sync_outbox_enqueue('touched', 'set', $1, '{}')", [id])
    const [poison] = await query<{ id: string }>(url, "SELECT id::text AS id FROM sync_outbox WHERE resource_id = 3")
    const redis = new Redis(redisUrl())
    const keys = [1, 2, 4, 5, 6].map((id) => `${p}:touched:${id}`)
    const crashes: Array<number | null> = []
    let out = ""
    try {
      // A supervisor: each worker that exits is replaced at once, ten times at most.
      for (let run = 0; run < 10; run++) {
        const child = spawn("node", [bin, "worker", "--handlers", module], { env: { ...process.env, ...env }, cwd: root })
        child.stdout.on("data", (d) => (out += String(d)))
        child.stderr.on("data", (d) => (out += String(d)))
        const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)))
        const deadline = Date.now() + 60_000
        let settled = false
        while (Date.now() < deadline && child.exitCode === null) {
          const [row] = await query<{ status: string }>(url, "SELECT status FROM sync_outbox WHERE id = $1::bigint", [poison!.id])
          const [{ pending }] = await query<{ pending: number }>(url, "SELECT count(*)::int AS pending FROM sync_outbox WHERE status = 'pending'") as [{ pending: number }]
          if (row?.status === "dead" && pending === 0 && /is dead after 3 attempt/.test(out)) {
            settled = true
            break
          }
          await new Promise((r) => setTimeout(r, 100))
        }
        if (settled) {
          child.kill("SIGTERM")
          expect(await exited, out).toBe(0)
          break
        }
        crashes.push(await exited)
      }
      expect(crashes, out).toEqual([1, 1, 1])
      expect(await redis.mget(keys)).toEqual(["1", "1", "1", "1", "1"])
      const history = await query<{ outbox_id: string; error_tag: string }>(
        url,
        "SELECT outbox_id::text, error_tag FROM sync_outbox_failures ORDER BY outbox_id, attempt"
      )
      // Only the poison event's history is left (the applied ones' went with their rows): three lost leases.
      expect(history).toEqual([1, 2, 3].map(() => ({ outbox_id: poison!.id, error_tag: "LeaseExpired" })))
      const [dead] = await query<{ retry_count: number; last_error: string }>(url, "SELECT retry_count, last_error FROM sync_outbox WHERE id = $1::bigint", [poison!.id])
      expect(dead!.retry_count).toBe(3)
      expect(dead!.last_error).toMatch(/^LeaseExpired: worker \S+ held this event until its lease ran out/)
      // The others lost one attempt at most (the first crash took the whole batch down), in the journal.
      const journal = await query<{ attempts: number }>(url, "SELECT attempts FROM sync_outbox_journal ORDER BY id")
      expect(journal).toHaveLength(5)
      for (const row of journal) expect(row.attempts).toBeLessThanOrEqual(2)
    } finally {
      await redis.del(...keys)
      redis.disconnect()
    }
  }, 300_000)

  it("a handler's error message with newlines and terminal escapes is logged on one escaped line: it cannot forge a log line or colour the terminal", async () => {
    const url = await freshDatabase("cli_log_escape", ["outbox"])
    const module = touchedModule("log-escape", `() =>
  Effect.fail(new Error("upstream said:\\ntimestamp=2026-01-01T00:00:00.000Z level=INFO message=forged \\u001b[31mred"))`)
    const env = { DATABASE_URL: url, REDIS_URL: redisUrl(), SYNC_OUTBOX_MAX_RETRIES: "1" }
    const child = spawn("node", [bin, "worker", "--handlers", module], { env: { ...process.env, ...env }, cwd: root })
    let out = ""
    child.stdout.on("data", (d) => (out += String(d)))
    child.stderr.on("data", (d) => (out += String(d)))
    try {
      await query(url, "SELECT sync_outbox_enqueue('touched', 'set', 1, '{}')")
      const deadline = Date.now() + 60_000
      while (Date.now() < deadline && child.exitCode === null && !/is dead after 1 attempt/.test(out)) {
        await new Promise((r) => setTimeout(r, 100))
      }
      const line = out.split("\n").find((l) => l.includes("is dead after 1 attempt"))
      expect(line, out).toBeDefined()
      expect(line).toContain("upstream said:\\ntimestamp=2026-01-01T00:00:00.000Z level=INFO message=forged \\u001b[31mred")
      expect(out.split("\n").filter((l) => l.startsWith("timestamp=2026-01-01"))).toEqual([])
      expect(out).not.toContain("\u001b")
    } finally {
      child.kill("SIGTERM")
      const code = child.exitCode ?? await new Promise<number | null>((resolve) => child.once("exit", (c) => resolve(c)))
      expect(code, out).toBe(0)
    }
  }, 300_000)

  it("a handlers module whose layers lack what they promise, need what the worker lacks, or never finish loading: exit 2, 2, 2, 1 with the fix, never an unexpected line or a silent 0", async () => {
    const url = await freshDatabase("cli_bad_layers", ["outbox"])
    const dir = join(scratch, "bad-layers")
    mkdirSync(dir, { recursive: true })
    const event = `const E = OutboxEvent.make({ resourceType: "plan", action: "update", payload: Schema.Unknown })
export const eventTypes = [E]
`
    const head = `import { Context, Effect, Layer, Schema } from "effect"\nimport { handle, Handlers, OutboxEvent } from "sync-outbox"\n${event}`
    const modules = {
      // A layer, but not a Handlers one.
      empty: `${head}export const layer = Layer.empty\n`,
      // Handlers that need a service of the application's the module did not provide.
      needs: `${head}class MyDb extends Context.Tag("app/MyDb")() {}
export const layer = Handlers.layer(handle(E, () => Effect.void)).pipe(Layer.provide(Layer.effectDiscard(MyDb)))\n`,
      // A reconciler that provides no Reconciler: the worker said "reconciler on" and never reconciled.
      noReconciler: `${head}export const layer = Handlers.layer(handle(E, () => Effect.void))\nexport const reconciler = Layer.empty\n`,
      // A top-level await that never settles, holding nothing: node would end the process with 0.
      hangs: `await new Promise(() => {})\nexport const layer = 1\n`
    }
    for (const [name, text] of Object.entries(modules)) writeFileSync(join(dir, `${name}.js`), text)
    const env = { DATABASE_URL: url, REDIS_URL: redisUrl() }
    const run = (name: string, command: ReadonlyArray<string> = ["worker"]) => cli([...command, "--handlers", join(dir, `${name}.js`)], env)
    const expectOne = (result: Result, code: number, text: string) => {
      expect(result.code, result.stderr).toBe(code)
      expect(result.stderr).toContain(text)
      expect(result.stderr).not.toContain("unexpected")
      expect(result.stderr.trim().split("\n")).toHaveLength(1)
    }
    expectOne(await run("empty"), 2, "the module's `layer` does not provide Handlers")
    expectOne(await run("needs"), 2, "need the service app/MyDb, which the worker does not provide")
    expectOne(await run("noReconciler"), 2, "the module's `reconciler` does not provide Reconciler")
    expectOne(await run("noReconciler", ["verify"]), 2, "the module's `reconciler` does not provide Reconciler")
    expectOne(await run("hangs"), 1, "the command cannot finish")
    expectOne(await run("hangs", ["enqueue", "--help"]), 1, "--help cannot finish")
  }, 300_000)

  it("worker applies events, serves /metrics (scraped and parsed), shows in status, drains on SIGTERM; sync-all resyncs", async () => {
    const url = await freshDatabase("cli_worker", ["outbox", "control-plane"])
    const p = prefix()
    const port = await freePort()
    // The shared Redis holds other databases' entries under the contract's names: this worker must
    // not reconcile them away as orphans (test/DataPlaneReconciler.test.ts covers that, on a private Redis).
    const env = { DATABASE_URL: url, REDIS_URL: redisUrl(), SYNC_OUTBOX_RECONCILE_INTERVAL: "off", SYNC_OUTBOX_LOSS_CHECK_INTERVAL: "off" }
    const redis = new Redis(redisUrl())
    // The worker's ez-api handlers write the contract's names (no prefix); isolate by a QPS no other test uses.
    const qps = String(100_000 + Math.floor(Math.random() * 1_000_000))
    const [master] = await query<{ id: number }>(url, `INSERT INTO cp_masters (name, global_qps) VALUES ($1, $2) RETURNING id::float8 AS id`, [p, qps])
    // Bookkeeping a previous run left for this id (its database's versions) would refuse this one's writes.
    await redis.del(`auth:master:${master!.id}`, `sync:rec:{auth:master:${master!.id}}`)
    const child = spawn("node", [bin, "worker", "--metrics-port", String(port)], { env: { ...process.env, ...env } })
    let out = ""
    child.stdout.on("data", (d) => (out += String(d)))
    child.stderr.on("data", (d) => (out += String(d)))
    try {
      const deadline = Date.now() + 90_000
      while (!out.includes("worker running") && Date.now() < deadline && child.exitCode === null) await new Promise((r) => setTimeout(r, 50))
      expect(out).toContain("worker running")
      expect((await cli(["enqueue", "master", "update", "--resource-id", String(master!.id)], env)).code).toBe(0)
      let seen: string | null = null
      while (seen !== qps && Date.now() < deadline) {
        seen = await redis.hget(`auth:master:${master!.id}`, "global_qps")
        await new Promise((r) => setTimeout(r, 50))
      }
      expect(seen).toBe(qps)

      // The event is in Redis before its row is deleted and counted (written down in the
      // background): scrape until that has happened too.
      const scrape = async () => {
        const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text()
        const parsed = new Map(
          text.split("\n").filter((l) => l !== "" && !l.startsWith("#")).map((l) => {
            const at = l.lastIndexOf(" ")
            return [l.slice(0, at), Number(l.slice(at + 1))] as const
          })
        )
        return { body: text, samples: parsed }
      }
      let { body, samples } = await scrape()
      while ((samples.get("sync_outbox_pending") !== 0 || !(samples.get("sync_outbox_applied_total")! >= 1)) && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 50))
        ;({ body, samples } = await scrape())
      }
      expect([...samples.values()].every((v) => Number.isFinite(v))).toBe(true)
      expect(samples.get("sync_outbox_applied_total")).toBeGreaterThanOrEqual(1)
      expect(samples.get("sync_outbox_pending"), body).toBe(0)
      expect(samples.get("sync_outbox_breaker_open")).toBe(0)
      expect(samples.get("sync_outbox_apply_latency_ms_count")).toBeGreaterThanOrEqual(1)
      expect(body).toContain("# TYPE sync_outbox_apply_latency_ms histogram")
      expect(samples.has(`sync_outbox_apply_latency_ms_bucket{le="+Inf"}`)).toBe(true)
      // Process metrics, under prom-client's names.
      expect(samples.get("process_resident_memory_bytes")).toBeGreaterThan(0)
      expect(samples.get("process_cpu_seconds_total")).toBeGreaterThan(0)
      expect(body).toContain("# TYPE process_cpu_seconds_total counter")
      expect(samples.has("nodejs_heap_size_used_bytes")).toBe(true)
      expect((await fetch(`http://127.0.0.1:${port}/other`)).status).toBe(404)

      const status = JSON.parse((await cli(["status", "--json"], env)).stdout)
      expect(status.workers).toHaveLength(1)
      expect(status.workers[0]).toMatchObject({ breaker: "closed", listener: "listening" })
      expect(typeof status.workers[0].heartbeatAgeMs).toBe("number")
      expect(camelOnly(status)).toEqual([])

      // sync-all rewrites what a lost Redis write left behind.
      await redis.del(`auth:master:${master!.id}`, `sync:rec:{auth:master:${master!.id}}`)
      const all = await cli(["sync-all"], env)
      expect(all.code).toBe(0)
      expect(all.stdout).toMatch(/written \d+/)
      expect(await redis.hget(`auth:master:${master!.id}`, "global_qps")).toBe(qps)
      // An unreachable Redis names the variable that chose it: the cluster nodes win over REDIS_URL.
      const noCluster = await cli(["sync-all"], { ...env, REDIS_CLUSTER_NODES: "127.0.0.1:1" })
      expect(noCluster.code).toBe(1)
      expect(noCluster.stderr.trim()).toMatch(/^sync-outbox: redis unavailable: .*\(check REDIS_CLUSTER_NODES\)$/)
    } finally {
      child.kill("SIGTERM")
      const code = await new Promise<number | null>((resolve) => child.once("exit", (c) => resolve(c)))
      redis.disconnect()
      expect(code, out).toBe(0)
    }
    const after = JSON.parse((await cli(["status", "--json"], env)).stdout)
    expect(after.workers).toHaveLength(0)
  }, 300_000)
})
