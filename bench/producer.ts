/**
 * The open-loop producer of the latency phase, in a process of its own (as a control-plane
 * service would be): it enqueues `n` events at `rate` per second, each in its own transaction,
 * whatever the worker does, and prints `<key> <start> <commit>` per event on stdout, in
 * milliseconds on the machine-wide clock (`performance.timeOrigin + performance.now()`). It
 * first writes `warm` events, eight at a time, unmeasured (keys `warm-<i>`): a cold process
 * (its JIT, its pool's first connections) otherwise falls behind the schedule in its first
 * second and what is measured is its own queue.
 *
 * `ours` enqueues in an Effect service's way (`sql.withTransaction(enqueue(...))`); `ours-pg` in a
 * plain `pg` client's transaction (`enqueueWith`), the way the bare producer writes: the two apart
 * are what the caller's own Effect transaction costs, not the outbox.
 *
 *   tsx bench/producer.ts <ours|ours-pg|bare> <databaseUrl> <rate> <n> <warm>
 */
import { SqlClient } from "@effect/sql"
import { Effect, Redacted, Runtime, Schema } from "effect"
import { performance } from "node:perf_hooks"
import pg from "pg"
import { Database, enqueue, enqueueWith, OutboxEvent } from "../src/index.js"

const [mode, url, rateArg, nArg, warmArg] = process.argv.slice(2)
const rate = Number(rateArg)
const n = Number(nArg)
const warm = Number(warmArg ?? 0)
const now = () => performance.timeOrigin + performance.now()
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))

const Item = OutboxEvent.make({
  resourceType: "bench",
  action: "set",
  payload: Schema.Struct({ k: Schema.String, v: Schema.String }),
  orderingKey: ({ payload }) => `bench:${payload.k}`
})

const run = async (produce: (k: string) => Promise<void>) => {
  // Eight at a time: the pool opens the connections the schedule will use.
  await Promise.all(Array.from({ length: 8 }, async (_, lane) => {
    for (let i = lane; i < warm; i += 8) await produce(`warm-${i}`)
  }))
  const t0 = performance.now()
  const inflight: Array<Promise<void>> = []
  const lines: Array<string> = []
  for (let i = 0; i < n; i++) {
    const wait = t0 + (i * 1000) / rate - performance.now()
    if (wait > 1) await sleep(wait)
    const k = `lat-${i}`
    const start = now()
    inflight.push(produce(k).then(() => void lines.push(`${k} ${start} ${now()}`)))
  }
  await Promise.all(inflight)
  process.stdout.write(lines.join("\n") + "\n")
}

if (mode === "ours") {
  await Effect.runPromise(
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const runtime = yield* Effect.runtime<SqlClient.SqlClient>()
      yield* Effect.promise(() =>
        run((k) => Runtime.runPromise(runtime)(sql.withTransaction(enqueue(Item, { payload: { k, v: "x" } }))).then(() => undefined))
      )
    }).pipe(Effect.scoped, Effect.provide(Database.layer({ url: Redacted.make(url!), maxConnections: 20 })))
  )
} else {
  // Like our producer, the bare one writes inside a transaction of its own; `ours-pg` is ours on the same client.
  const pool = new pg.Pool({ connectionString: url, max: 20 })
  await run(async (k) => {
    const client = await pool.connect()
    try {
      await client.query("BEGIN")
      if (mode === "ours-pg") await Effect.runPromise(enqueueWith(client, Item, { payload: { k, v: "x" } }))
      else await client.query(`INSERT INTO bare_queue (k, v) VALUES ($1, 'x')`, [k])
      await client.query("COMMIT")
    } finally {
      client.release()
    }
  })
  await pool.end()
}
