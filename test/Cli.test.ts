import { describe, expect, it } from "vitest"
import { execFile, spawn } from "node:child_process"
import { Redis } from "ioredis"
import pg from "pg"
import { freePort } from "../scripts/services.js"
import { freshDatabase, prefix, redisUrl } from "./support/harness.js"
import { createDatabase } from "../scripts/services.js"
import { postgresUrl } from "./support/harness.js"

const bin = new URL("../bin/sync-outbox.js", import.meta.url).pathname

interface Result {
  readonly code: number
  readonly stdout: string
  readonly stderr: string
}

const cli = (args: ReadonlyArray<string>, env: Record<string, string>): Promise<Result> =>
  new Promise((resolve) => {
    execFile("node", [bin, ...args], { env: { ...process.env, ...env }, timeout: 30_000 }, (error, stdout, stderr) => {
      resolve({ code: error ? (typeof error.code === "number" ? error.code : 1) : 0, stdout, stderr })
    })
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

describe("sync-outbox CLI", () => {
  it("migrate applies the engine and control-plane schemas once; --engine-only skips the domain", async () => {
    const url = await createDatabase(postgresUrl(), `so_cli_migrate_${Date.now()}`)
    const engine = await cli(["migrate", "--engine-only"], { DATABASE_URL: url })
    expect(engine).toMatchObject({ code: 0, stderr: "" })
    expect(engine.stdout).toContain("applied outbox/0001_outbox.sql")
    expect(engine.stdout).not.toContain("control-plane")
    const all = await cli(["migrate"], { DATABASE_URL: url })
    expect(all.stdout.trim()).toBe("applied control-plane/0001_control_plane.sql\napplied control-plane/0002_ez_api_contract.sql")
    expect((await cli(["migrate"], { DATABASE_URL: url })).stdout.trim()).toBe("up to date")
  }, 60_000)

  it("enqueue validates against the registry; status counts it; bad input exits 2 with one line", async () => {
    const url = await freshDatabase("cli_enqueue", ["outbox", "control-plane"])
    const env = { DATABASE_URL: url }
    const ok = await cli(["enqueue", "master", "update", "--resource-id", "4"], env)
    expect(ok.code).toBe(0)
    expect(ok.stdout).toMatch(/^enqueued \d+\n$/)
    const del = await cli(["enqueue", "model", "delete", "--payload", '{"name":"gpt-4o"}'], env)
    expect(del.code).toBe(0)

    for (const [args, fragment] of [
      [["enqueue", "tenant", "create"], `no handler for resource type "tenant"`],
      [["enqueue", "model", "delete", "--payload", "{nope"], "--payload is not valid JSON"],
      [["enqueue", "model", "delete", "--payload", '{"name":""}'], "name"],
      [["enqueue", "master", "update"], "needs a resource id"],
      [["dead", "show", "12345"], "no outbox event with id 12345"],
      [["dead", "show", "abc"], "no outbox event with id abc"],
      [["dead", "requeue"], "exactly one of"]
    ] as const) {
      const result = await cli(args, env)
      expect(result.code, args.join(" ")).toBe(2)
      expect(result.stderr).toContain(fragment)
      expect(result.stderr.trim().split("\n")).toHaveLength(1)
      expect(result.stderr).not.toContain("    at ")
    }
    const unknownCommand = await cli(["frobnicate"], env)
    expect(unknownCommand.code).toBe(2)

    const status = await cli(["status", "--json"], env)
    expect(status.code).toBe(0)
    const parsed = JSON.parse(status.stdout)
    expect(parsed.pending).toBe(2)
    expect(parsed.byResourceType.map((r: { resourceType: string }) => r.resourceType)).toEqual(["master", "model"])
    const text = await cli(["status"], env)
    expect(text.stdout).toContain("pending 2")
    expect(text.stdout).toContain("no live workers")
  }, 60_000)

  it("dead list / show / requeue / purge work on real dead letters", async () => {
    const url = await freshDatabase("cli_dead", ["outbox", "control-plane"])
    const env = { DATABASE_URL: url }
    const rows = await query<{ id: string }>(
      url,
      `INSERT INTO sync_outbox (resource_type, action, ordering_key, status, retry_count, last_error)
       VALUES ('master', 'update', 'master:1', 'dead', 10, 'Boom: no'), ('key', 'update', 'key:1', 'dead', 10, 'Boom: no'),
              ('key', 'update', 'key:2', 'dead', 10, 'Boom: no')
       RETURNING id::text AS id`
    )
    await query(url, `INSERT INTO sync_outbox_failures VALUES ($1, 1, 'Boom', 'first', now()), ($1, 2, 'Boom', 'second', now())`, [rows[0]!.id])
    const list = await cli(["dead", "list"], env)
    expect(list.stdout.split("\n").filter((l) => l.includes("Boom: no"))).toHaveLength(3)
    const show = await cli(["dead", "show", rows[0]!.id], env)
    expect(show.stdout).toContain("#1")
    expect(show.stdout).toContain("Boom: second")
    expect((await cli(["dead", "requeue", rows[0]!.id], env)).stdout.trim()).toBe("requeued 1")
    expect((await cli(["dead", "purge", "--resource-type", "key"], env)).stdout.trim()).toBe("purged 2")
    expect((await cli(["dead", "list"], env)).stdout.trim()).toBe("no dead letters")
  }, 60_000)

  it("an unreachable database or a missing DATABASE_URL exits 1 or 2 with one clear line", async () => {
    const down = await cli(["status"], { DATABASE_URL: "postgres://postgres@127.0.0.1:1/none" })
    expect(down.code).toBe(1)
    expect(down.stderr.trim()).toMatch(/^sync-outbox: database: cannot connect to Postgres: .*ECONNREFUSED/)
    const env = { ...process.env } as Record<string, string>
    delete env["DATABASE_URL"]
    const missing = await new Promise<Result>((resolve) =>
      execFile("node", [bin, "status"], { env }, (error, stdout, stderr) =>
        resolve({ code: typeof error?.code === "number" ? error.code : 0, stdout, stderr }))
    )
    expect(missing.code).toBe(2)
    expect(missing.stderr.trim()).toBe("sync-outbox: DATABASE_URL is not set")
  }, 60_000)

  it("--help works on every command", async () => {
    for (const args of [[], ["migrate"], ["worker"], ["status"], ["dead"], ["dead", "list"], ["dead", "requeue"], ["enqueue"], ["sync-all"]]) {
      const result = await cli([...args, "--help"], {})
      expect(result.code, args.join(" ")).toBe(0)
      expect(result.stdout).toContain("USAGE")
    }
  }, 120_000)

  it("worker applies events, serves /metrics (scraped and parsed), shows in status, drains on SIGTERM; sync-all resyncs", async () => {
    const url = await freshDatabase("cli_worker", ["outbox", "control-plane"])
    const p = prefix()
    const port = await freePort()
    const env = { DATABASE_URL: url, REDIS_URL: redisUrl() }
    const redis = new Redis(redisUrl())
    // The worker's sync handlers write the contract's names (no prefix); isolate by a QPS no other test uses.
    const qps = String(100_000 + Math.floor(Math.random() * 1_000_000))
    const [master] = await query<{ id: number }>(url, `INSERT INTO cp_masters (name, global_qps) VALUES ($1, $2) RETURNING id::float8 AS id`, [p, qps])
    // Bookkeeping a previous run left for this id (its database's versions) would refuse this one's writes.
    await redis.del(`auth:master:${master!.id}`, `sync:rec:{auth:master:${master!.id}}`)
    const child = spawn("node", [bin, "worker", "--metrics-port", String(port)], { env: { ...process.env, ...env } })
    let out = ""
    child.stdout.on("data", (d) => (out += String(d)))
    child.stderr.on("data", (d) => (out += String(d)))
    try {
      const deadline = Date.now() + 20_000
      while (!out.includes("worker running") && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50))
      expect((await cli(["enqueue", "master", "update", "--resource-id", String(master!.id)], env)).code).toBe(0)
      let seen: string | null = null
      while (seen !== qps && Date.now() < deadline) {
        seen = await redis.hget(`auth:master:${master!.id}`, "global_qps")
        await new Promise((r) => setTimeout(r, 50))
      }
      expect(seen).toBe(qps)

      const body = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text()
      const samples = new Map(
        body.split("\n").filter((l) => l !== "" && !l.startsWith("#")).map((l) => {
          const at = l.lastIndexOf(" ")
          return [l.slice(0, at), Number(l.slice(at + 1))] as const
        })
      )
      expect([...samples.values()].every((v) => Number.isFinite(v))).toBe(true)
      expect(samples.get("sync_outbox_applied_total")).toBeGreaterThanOrEqual(1)
      expect(samples.get("sync_outbox_pending"), body).toBe(0)
      expect(samples.get("sync_outbox_breaker_open")).toBe(0)
      expect(samples.get("sync_outbox_apply_latency_ms_count")).toBeGreaterThanOrEqual(1)
      expect(body).toContain("# TYPE sync_outbox_apply_latency_ms histogram")
      expect(samples.has(`sync_outbox_apply_latency_ms_bucket{le="+Inf"}`)).toBe(true)
      expect((await fetch(`http://127.0.0.1:${port}/other`)).status).toBe(404)

      const status = JSON.parse((await cli(["status", "--json"], env)).stdout)
      expect(status.workers).toHaveLength(1)
      expect(status.workers[0]).toMatchObject({ breaker: "closed", listener: "listening" })

      // sync-all rewrites what a lost Redis write left behind.
      await redis.del(`auth:master:${master!.id}`, `sync:rec:{auth:master:${master!.id}}`)
      const all = await cli(["sync-all"], env)
      expect(all.code).toBe(0)
      expect(all.stdout).toMatch(/written \d+/)
      expect(await redis.hget(`auth:master:${master!.id}`, "global_qps")).toBe(qps)
    } finally {
      child.kill("SIGTERM")
      const code = await new Promise<number | null>((resolve) => child.once("exit", (c) => resolve(c)))
      redis.disconnect()
      expect(code).toBe(0)
    }
    const after = JSON.parse((await cli(["status", "--json"], env)).stdout)
    expect(after.workers).toHaveLength(0)
  }, 90_000)
})
