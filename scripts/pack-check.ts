/**
 * The package as a user gets it: `npm pack`, the tarball installed with its peers (at this
 * project's lockfile versions) into a fresh project, and then, with plain `node` and no tsx:
 *
 * - the README's quick start, extracted from the README and run as written, against a real
 *   Postgres and Redis (TEST_DATABASE_URL / TEST_REDIS_URL when set, else private servers);
 * - the quick start type-checked under `strict`, `nodenext`, `declaration` and the other strict
 *   flags a consumer may use, with the library checks on (no `skipLibCheck`);
 * - one copy of `effect` and of `ioredis` in the consumer's tree (`npm ls`);
 * - every `exports` entry imported and required by plain node, and type-checked by a consumer
 *   whose tsc resolves as a bundler does;
 * - the installed CLI: `--help` loads no Effect module (enforced with a resolve hook) and its
 *   time is reported; `migrate`, `enqueue --handlers`, `worker --handlers`, `status --json`.
 *
 * Usage: `npm run pack-check` (or `npx tsx scripts/pack-check.ts`). Exits 0 when all is well, 1
 * with the failing step otherwise. Bounded: every step has a timeout and the whole run stops
 * after PACK_CHECK_TIMEOUT_MS (default 8 minutes). Leaves nothing behind (KEEP=1 keeps the
 * temporary project for a look).
 */
import { type ChildProcess, spawn } from "node:child_process"
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join, resolve } from "node:path"
import { Redis } from "ioredis"
import { createDatabase, type RunningService, startPostgres, startRedis } from "./services.js"

const root = resolve(import.meta.dirname, "..")
const started: Array<RunningService> = []
const children = new Set<ChildProcess>()
let work: string | undefined

const log = (line: string) => process.stdout.write(`pack-check: ${line}\n`)

class StepFailed extends Error {}
const fail = (message: string): never => {
  throw new StepFailed(message)
}

interface Ran {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
  readonly ms: number
}

/** Run a command to its end, bounded; its whole process group is killed on timeout. */
const run = (
  command: string,
  args: ReadonlyArray<string>,
  options: { readonly cwd: string; readonly env?: Record<string, string>; readonly timeoutMs: number; readonly input?: string }
): Promise<Ran> =>
  new Promise((resolvePromise) => {
    const began = performance.now()
    const child = spawn(command, args, {
      cwd: options.cwd,
      env: { ...process.env, ...options.env },
      detached: true,
      stdio: ["pipe", "pipe", "pipe"]
    })
    children.add(child)
    let stdout = ""
    let stderr = ""
    child.stdout!.on("data", (d) => (stdout += String(d)))
    child.stderr!.on("data", (d) => (stderr += String(d)))
    child.stdin!.end(options.input ?? "")
    const timer = setTimeout(() => {
      stderr += `\n(timed out after ${options.timeoutMs} ms)`
      killGroup(child)
    }, options.timeoutMs)
    child.on("close", (code) => {
      clearTimeout(timer)
      children.delete(child)
      resolvePromise({ code, stdout, stderr, ms: performance.now() - began })
    })
  })

const killGroup = (child: ChildProcess, signal: NodeJS.Signals = "SIGKILL") => {
  try {
    if (child.pid !== undefined) process.kill(-child.pid, signal)
  } catch {
    // already gone
  }
}

const expectOk = (what: string, ran: Ran): Ran => {
  if (ran.code !== 0) fail(`${what} exited ${ran.code}\n--- stdout\n${ran.stdout}\n--- stderr\n${ran.stderr}`)
  return ran
}

/** The code blocks of the README's quick start, by their `<!-- pack-check: NAME -->` marker. */
const readmeBlocks = (): Map<string, string> => {
  const readme = readFileSync(join(root, "README.md"), "utf8")
  const blocks = new Map<string, string>()
  for (const match of readme.matchAll(/<!-- pack-check: ([\w.-]+) -->\n```\w*\n([\s\S]*?)\n```/g)) {
    blocks.set(match[1]!, match[2]!)
  }
  for (const name of ["shell", "handlers.ts", "main.ts", "run"]) {
    if (!blocks.has(name)) fail(`README.md has no <!-- pack-check: ${name} --> code block`)
  }
  return blocks
}

/** Commands of a shell block, without comments. */
const shellLines = (block: string) =>
  block.split("\n").map((line) => line.replace(/\s+#.*$/, "").trim()).filter((line) => line !== "" && !line.startsWith("#"))

const lockedVersion = (name: string): string => {
  const lock = JSON.parse(readFileSync(join(root, "package-lock.json"), "utf8")) as {
    packages: Record<string, { version?: string }>
  }
  const version = lock.packages[`node_modules/${name}`]?.version
  return version ?? fail(`package-lock.json has no ${name}`)
}

const remember = async <S extends RunningService>(service: Promise<S>): Promise<S> => {
  const s = await service
  started.push(s)
  return s
}

const withRedis = async <A>(url: string, f: (redis: Redis) => Promise<A>): Promise<A> => {
  const redis = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1 })
  try {
    await redis.connect()
    return await f(redis)
  } finally {
    redis.disconnect()
  }
}

const main = async () => {
  const blocks = readmeBlocks()
  work = mkdtempSync(join(tmpdir(), "sync-outbox-pack-"))
  const app = join(work, "app")

  // Servers first: a private Postgres takes a while, and everything below needs one.
  const serverUrl = process.env["TEST_DATABASE_URL"] ?? (await remember(startPostgres())).url
  const redisUrl = process.env["TEST_REDIS_URL"] ?? (await remember(startRedis())).url
  const databaseUrl = await createDatabase(serverUrl, `so_pack_${process.pid}_${Date.now()}`)
  const env = { DATABASE_URL: databaseUrl, REDIS_URL: redisUrl, NO_COLOR: "", npm_config_update_notifier: "false" }
  log(`postgres ${process.env["TEST_DATABASE_URL"] ? "from TEST_DATABASE_URL" : "private"}, redis ${process.env["TEST_REDIS_URL"] ? "from TEST_REDIS_URL" : "private"}`)

  // 1. The tarball (prepack builds dist/).
  const packed = expectOk("npm pack", await run("npm", ["pack", "--json", "--pack-destination", work], { cwd: root, timeoutMs: 180_000 }))
  const info = (JSON.parse(packed.stdout.slice(packed.stdout.indexOf("["))) as Array<{ filename: string; files: Array<{ path: string }> }>)[0]!
  const files = new Set(info.files.map((f) => f.path))
  for (const needed of ["dist/index.js", "dist/index.d.ts", "dist/ezapi/index.js", "dist/cli/main.js", "bin/sync-outbox.js", "migrations/outbox/0001_outbox.sql", "migrations/control-plane/0001_control_plane.sql", "LICENSE", "README.md"]) {
    if (!files.has(needed)) fail(`the tarball lacks ${needed}`)
  }
  const stray = [...files].filter((f) => /^(test|bench|scripts|\.ci)\//.test(f) || f.endsWith(".test.ts"))
  if (stray.length > 0) fail(`the tarball ships ${stray.join(", ")}`)
  log(`packed ${info.filename} (${files.size} files)`)

  // 2. A fresh project: the tarball and its peers at this project's lockfile versions.
  const pinned = (names: ReadonlyArray<string>) => Object.fromEntries(names.map((n) => [n, lockedVersion(n)]))
  mkdirSync(app)
  writeFileSync(
    join(app, "package.json"),
    JSON.stringify({
      name: "consumer",
      private: true,
      type: "module",
      dependencies: {
        "sync-outbox": `file:../${info.filename}`,
        ...pinned(["effect", "@effect/sql", "@effect/sql-pg", "@effect/platform", "@effect/experimental"])
      },
      devDependencies: pinned(["typescript", "@types/node"])
    }, null, 2)
  )
  expectOk("npm install", await run("npm", ["install", "--no-audit", "--no-fund", "--prefer-offline"], { cwd: app, env, timeoutMs: 240_000 }))
  log("installed the tarball and its peers")

  // 3. One copy of effect and of ioredis.
  for (const name of ["effect", "ioredis"]) {
    const ls = await run("npm", ["ls", name, "--all", "--parseable"], { cwd: app, env, timeoutMs: 60_000 })
    const copies = [...new Set(ls.stdout.split("\n").filter((l) => l.includes(`node_modules/${name}`)))]
    if (ls.code !== 0 || copies.length !== 1) fail(`expected one copy of ${name}, found ${copies.length}:\n${ls.stdout}${ls.stderr}`)
  }
  log("npm ls: one effect, one ioredis")

  // 4. The quick start as written: files from the README, the shell lines from the README. Its
  //    plan is plan:1 (a fresh database): a key left by an earlier run must not count.
  await withRedis(redisUrl, (redis) => redis.del("plan:1"))
  writeFileSync(join(app, "handlers.ts"), blocks.get("handlers.ts")!)
  writeFileSync(join(app, "main.ts"), blocks.get("main.ts")!)
  const shell = async (line: string, timeoutMs = 120_000) =>
    expectOk(line, await run("bash", ["-c", line], { cwd: app, env, timeoutMs }))
  for (const line of shellLines(blocks.get("shell")!)) {
    if (line.startsWith("npm i")) {
      // Installed above at the lockfile's versions; the README's own specs must resolve too
      // (with today's registry: npm's `latest` of effect is 4.x, so unpinned specs fail).
      const specs = line.replace(/^npm i(nstall)?\s+/, "").split(/\s+/).map((w) => (w === "sync-outbox" ? `../${info.filename}` : w))
      log(`$ npm install --dry-run ${specs.join(" ")}`)
      expectOk(`the README's "${line}"`, await run("npm", ["install", "--dry-run", "--no-audit", "--no-fund", ...specs], { cwd: app, env, timeoutMs: 180_000 }))
      continue
    }
    if (line.startsWith("export ")) continue // the environment is given
    log(`$ ${line}`)
    process.stdout.write((await shell(line)).stdout)
  }
  let quickStartOutput = ""
  for (const line of shellLines(blocks.get("run")!)) {
    log(`$ ${line}`)
    const ran = await shell(line, 90_000)
    quickStartOutput += ran.stdout + ran.stderr
  }
  if (!/plan 1 is pro in Redis/.test(quickStartOutput)) fail(`the quick start did not report the plan in Redis:\n${quickStartOutput}`)
  const status = JSON.parse(expectOk("status", await run("npx", ["sync-outbox", "status", "--json"], { cwd: app, env, timeoutMs: 60_000 })).stdout) as { pending: number; dead: number }
  if (status.pending !== 0 || status.dead !== 0) fail(`after the quick start the outbox holds ${JSON.stringify(status)}`)
  log("quick start ran: the event was applied and deleted")

  // 5. A consumer's type-check of the same files under strict settings, with declarations.
  writeFileSync(
    join(app, "tsconfig.json"),
    JSON.stringify({
      compilerOptions: {
        target: "ES2022",
        module: "NodeNext",
        moduleResolution: "NodeNext",
        strict: true,
        declaration: true,
        noImplicitReturns: true,
        noUncheckedIndexedAccess: true,
        exactOptionalPropertyTypes: true,
        skipLibCheck: false,
        outDir: "typecheck",
        types: ["node"]
      },
      files: ["handlers.ts", "main.ts", "renamed.ts"]
    }, null, 2)
  )
  // The names of 0.1.0 still compile and are the same values as the new ones (deprecated aliases).
  writeFileSync(
    join(app, "renamed.ts"),
    [
      `import { SyncOutbox, WorkerEnv } from "sync-outbox"`,
      `import { DataPlaneReconciler, Dispatch, Projector, SyncHandlers, SyncReconciler, SyncService } from "sync-outbox/ezapi"`,
      `import * as Old from "sync-outbox/sync"`,
      `const service: SyncService | undefined = undefined`,
      `export const options: SyncReconciler.SyncReconcilerOptions | undefined = undefined`,
      `export const same = service === undefined && SyncOutbox.layerWorker === WorkerEnv.layer && SyncService === Projector &&`,
      `  Old.Projector === Projector && SyncHandlers.layer === Dispatch.layer && SyncReconciler.layer === DataPlaneReconciler.layer`,
      ``
    ].join("\n")
  )
  const tsc = expectOk("tsc (strict, nodenext, declaration)", await run("npx", ["tsc", "-p", "tsconfig.json"], { cwd: app, env, timeoutMs: 180_000 }))
  log(`consumer tsc passed in ${(tsc.ms / 1000).toFixed(1)} s`)
  const aliases = expectOk("the renamed names", await run("node", ["--input-type=module", "-e", `import { same } from "./typecheck/renamed.js"; console.log(same)`], { cwd: app, env, timeoutMs: 60_000 }))
  if (aliases.stdout.trim() !== "true") fail(`the deprecated aliases are not the renamed values: ${aliases.stdout}`)
  log("sync-outbox/ezapi, and the deprecated sync-outbox/sync, SyncOutbox and SyncService: one module, the same values")

  // 5b. Every entry point, as plain Node loads it (import and require) and as a bundler-resolving
  //     tsc reads it: an entry the quick start does not touch (testing, sync) breaks silently otherwise.
  const exported = (JSON.parse(readFileSync(join(app, "node_modules/sync-outbox/package.json"), "utf8")) as { exports: Record<string, unknown> }).exports
  const entries = Object.keys(exported).filter((k) => k !== "./package.json").map((k) => (k === "." ? "sync-outbox" : `sync-outbox/${k.slice(2)}`))
  for (const entry of entries) {
    const imported = await run("node", ["--input-type=module", "-e", `const m = await import(${JSON.stringify(entry)}); if (Object.keys(m).length === 0) throw new Error("no exports")`], { cwd: app, env, timeoutMs: 60_000 })
    expectOk(`import("${entry}") in plain node`, imported)
    const required = await run("node", ["-e", `const m = require(${JSON.stringify(entry)}); if (Object.keys(m).length === 0) throw new Error("no exports")`], { cwd: app, env, timeoutMs: 60_000 })
    expectOk(`require("${entry}") in plain node`, required)
  }
  writeFileSync(join(app, "entries.ts"), entries.map((e, i) => `import * as E${i} from "${e}"
export const e${i}: object = E${i}
`).join(""))
  writeFileSync(
    join(app, "tsconfig.bundler.json"),
    JSON.stringify({
      compilerOptions: {
        target: "ES2022",
        module: "ESNext",
        moduleResolution: "bundler",
        strict: true,
        exactOptionalPropertyTypes: true,
        skipLibCheck: false,
        noEmit: true,
        types: ["node"]
      },
      files: ["handlers.ts", "main.ts", "renamed.ts", "entries.ts"]
    }, null, 2)
  )
  expectOk("tsc (strict, bundler resolution, every entry)", await run("npx", ["tsc", "-p", "tsconfig.bundler.json"], { cwd: app, env, timeoutMs: 180_000 }))
  log(`every entry point (${entries.join(", ")}): import and require in plain node, and tsc with bundler resolution`)

  // 6. The installed CLI.
  const cli = (args: ReadonlyArray<string>, extra: { env?: Record<string, string>; input?: string } = {}) =>
    run("node", ["node_modules/sync-outbox/bin/sync-outbox.js", ...args], {
      cwd: app,
      env: { ...env, ...extra.env },
      timeoutMs: 60_000,
      ...(extra.input === undefined ? {} : { input: extra.input })
    })
  // --help must not load Effect: a resolve hook refuses any module under effect or @effect.
  const hook = join(work, "no-effect.mjs")
  writeFileSync(
    hook,
    `import { register } from "node:module"\n` +
      `register("data:text/javascript," + encodeURIComponent(${JSON.stringify(
        `export async function resolve(specifier, context, next) {
          const result = await next(specifier, context)
          if (/\\/node_modules\\/(effect|@effect\\/[^/]+)\\//.test(result.url)) throw new Error("--help loaded " + result.url)
          return result
        }`
      )}))\n`
  )
  const timings: Array<number> = []
  for (let i = 0; i < 5; i++) {
    const help = expectOk("sync-outbox --help (no Effect module)", await cli(["--help"], { env: { NODE_OPTIONS: `--import=${hook}` } }))
    if (!help.stdout.includes("ENVIRONMENT") || /\x1b\[/.test(help.stdout)) fail(`--help output is wrong:\n${help.stdout}`)
    timings.push((await cli(["--help"])).ms)
  }
  timings.sort((a, b) => a - b)
  log(`sync-outbox --help: median ${timings[2]!.toFixed(0)} ms over 5 runs (min ${timings[0]!.toFixed(0)}, max ${timings[4]!.toFixed(0)}); loads no Effect module`)

  const enqueueHelp = expectOk("enqueue --help --handlers", await cli(["enqueue", "--help", "--handlers", "./dist/handlers.js"]))
  if (!/plan\s+update/.test(enqueueHelp.stdout)) fail(`enqueue --help --handlers does not list plan update:\n${enqueueHelp.stdout}`)
  const resourceId = 1_000_000 + Math.floor(Math.random() * 1_000_000)
  const enq = expectOk(
    "enqueue --handlers --payload -",
    await cli(["enqueue", "plan", "update", "--resource-id", String(resourceId), "--payload", "-", "--handlers", "./dist/handlers.js"], {
      input: `{"tier":"pro"}\n`
    })
  )
  if (!/^enqueued \d+\n$/.test(enq.stdout)) fail(`enqueue printed ${JSON.stringify(enq.stdout)}`)
  await withRedis(redisUrl, async (redis) => {
    const worker = spawn("node", ["node_modules/sync-outbox/bin/sync-outbox.js", "worker", "--handlers", "./dist/handlers.js"], {
      cwd: app,
      env: { ...process.env, ...env },
      stdio: ["ignore", "pipe", "pipe"]
    })
    children.add(worker)
    let output = ""
    worker.stdout.on("data", (d) => (output += String(d)))
    worker.stderr.on("data", (d) => (output += String(d)))
    const exited = new Promise<number | null>((r) => worker.once("exit", (code) => r(code)))
    const deadline = Date.now() + 60_000
    let tier: string | null = null
    while (tier !== "pro" && Date.now() < deadline && worker.exitCode === null) {
      tier = await redis.hget(`plan:${resourceId}`, "tier")
      await new Promise((r) => setTimeout(r, 100))
    }
    worker.kill("SIGTERM")
    const code = await Promise.race([exited, new Promise<"hung">((r) => setTimeout(() => r("hung"), 30_000))])
    children.delete(worker)
    if (tier !== "pro") fail(`worker --handlers did not apply the event:\n${output}`)
    if (code !== 0) fail(`worker --handlers did not stop cleanly on SIGTERM (${code}):\n${output}`)
    await redis.del(`plan:${resourceId}`)
  })
  log("CLI: enqueue and worker with --handlers ./dist/handlers.js")
}

const cleanup = async () => {
  for (const child of children) killGroup(child)
  await Promise.all(started.map((s) => s.stop().catch(() => undefined)))
  if (work !== undefined && process.env["KEEP"] !== "1") rmSync(work, { recursive: true, force: true })
  else if (work !== undefined) log(`kept ${work}`)
}

const limit = Number(process.env["PACK_CHECK_TIMEOUT_MS"] ?? 8 * 60_000)
const overall = setTimeout(() => {
  log(`FAILED: gave up after ${limit / 1000} s`)
  void cleanup().finally(() => process.exit(1))
}, limit)

main().then(
  async () => {
    clearTimeout(overall)
    await cleanup()
    log("OK")
    process.exit(0)
  },
  async (error) => {
    clearTimeout(overall)
    log(`FAILED: ${error instanceof StepFailed ? error.message : error instanceof Error ? error.stack : String(error)}`)
    await cleanup()
    process.exit(1)
  }
)
