/**
 * `npx tsx bench/plans.ts [pending]`: does the claim's cost depend on the table's statistics?
 * In a database of its own (on `DATABASE_URL`, else the local server), with autovacuum off for the
 * outbox: the worker's named claim and completion are prepared and run while the table is empty
 * (so Postgres caches plans made for an empty table), then `pending` events (default 20,000) are
 * inserted and (at most 20,000 of them) drained 500 at a time, four ways: as they are; after reading every row once
 * (hint bits set, still no statistics); after `ANALYZE`; as inserted, with the look a worker
 * takes before a drain's first claim (`Leases.refreshStatisticsIfOutgrown`) timed in, right after
 * the insert's commit, as a notified worker would. Set PLAN=1 to print the first claim's plan.
 * Prints the drain time of each; a way that has not drained them within a minute is reported as such.
 */
import { Effect, Redacted } from "effect"
import { performance } from "node:perf_hooks"
import pg from "pg"
import { createDatabase } from "../scripts/services.js"
import { Database, Migrations } from "../src/index.js"
import * as Statements from "../src/Statements.js"

const server = process.env["DATABASE_URL"] ?? "postgres://postgres@127.0.0.1:5432/postgres"
const pending = Number(process.argv[2] ?? 20_000)
// Of a big backlog, the first 20,000 are enough to measure a rate (a bad plan is quadratic).
const measured = Math.min(pending, 20_000)
// A plan that is quadratic in the backlog can take minutes per claim at a million pending.
const budgetMs = 60_000

type Prepare = "as inserted" | "rows read once" | "analyzed" | "as inserted, with the worker's statistics check"

const drain = async (prepare: Prepare) => {
  const name = `sync_outbox_plans_${process.pid}`
  const url = await createDatabase(server, name)
  await Effect.runPromise(Migrations.run(["outbox"]).pipe(Effect.provide(Database.layer({ url: Redacted.make(url) }))))
  const c = new pg.Client({ connectionString: url })
  await c.connect()
  try {
    await c.query("ALTER TABLE sync_outbox SET (autovacuum_enabled = false)")
    const claim = (n: number) =>
      c.query<{ id: string }>({ name: Statements.claim.name, text: Statements.claim.text, values: ["w", new Date(), new Date(Date.now() + 30_000), n] })
    const complete = (ids: ReadonlyArray<string>) =>
      c.query({ name: Statements.complete.name, text: Statements.complete.text, values: ["w", ids, "off"] })
    // More than five runs: Postgres then settles on a generic plan, made for an empty table.
    for (let i = 0; i < 8; i++) {
      await claim(500)
      await complete(["1"])
    }
    // Inserted by another session, as a producer would; its counts reach the statistics views
    // within a second or so.
    const producer = new pg.Client({ connectionString: url })
    await producer.connect()
    await producer.query(
      `INSERT INTO sync_outbox (resource_type, action, ordering_key, payload)
       SELECT 'bench', 'set', 'bench:k-' || g, jsonb_build_object('k', 'k-' || g, 'v', 'x') FROM generate_series(1, $1::int) g`,
      [pending]
    )
    await producer.end()
    const worker = prepare === "as inserted, with the worker's statistics check"
    // The counts reach the statistics views within a second or so; a worker does not wait for them.
    if (!worker) await new Promise((resolve) => setTimeout(resolve, 1_500))
    if (prepare === "rows read once") await c.query("SELECT count(*) FROM sync_outbox")
    if (prepare === "analyzed") await c.query("ANALYZE sync_outbox")
    if (process.env["PLAN"] === "1") {
      const plan = await c.query(`EXPLAIN (ANALYZE, COSTS OFF, SUMMARY ON) EXECUTE ${Statements.claim.name}('w', now(), now() + interval '30 s', 500)`)
      console.log(plan.rows.map((r) => r["QUERY PLAN"]).join("\n"))
      await c.query("UPDATE sync_outbox SET lease_owner = NULL, lease_expires_at = NULL")
    }
    const start = performance.now()
    if (worker) {
      const { rows } = await c.query<{ stale: boolean }>({ name: Statements.statisticsOutgrown.name, text: Statements.statisticsOutgrown.text })
      if (rows[0]?.stale === true) await c.query(Statements.analyze.text)
      else console.log("the look did not find the table outgrown")
    }
    await c.query(`SET statement_timeout = '${budgetMs}ms'`)
    let done = 0
    try {
      while (done < measured && performance.now() - start < budgetMs) {
        const { rows } = await claim(500)
        if (rows.length === 0) break
        await complete(rows.map((r) => r.id))
        done += rows.length
      }
    } catch (error) {
      if (!String(error).includes("statement timeout")) throw error
    }
    return { ms: performance.now() - start, done }
  } finally {
    await c.end()
    const admin = new pg.Client({ connectionString: server })
    await admin.connect()
    await admin.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`).finally(() => admin.end())
  }
}

for (const prepare of ["as inserted", "rows read once", "analyzed", "as inserted, with the worker's statistics check"] as const) {
  const { ms, done } = await drain(prepare)
  const rate = `${((done / ms) * 1000).toFixed(0)} items/s`
  console.log(
    done === measured
      ? `${pending.toLocaleString("en")} pending, ${prepare}: ${measured.toLocaleString("en")} drained in ${ms.toFixed(0)} ms (${rate})`
      : `${pending.toLocaleString("en")} pending, ${prepare}: only ${done.toLocaleString("en")} of ${measured.toLocaleString("en")} drained in ${(budgetMs / 1000).toFixed(0)} s (${rate})`
  )
}
