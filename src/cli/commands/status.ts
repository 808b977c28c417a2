import * as Console from "effect/Console"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Convergence from "../../Convergence.js"
import { OutboxConfig } from "../../OutboxConfig.js"
import { Admin } from "../../Admin.js"
import type { Input } from "../spec.js"
import { retentionLine } from "../journal.js"
import { ms, oneLine, pad, adminLayer } from "../shared.js"

const statusOnce = (json: boolean, watching = false) =>
  Effect.gen(function*() {
    const admin = yield* Admin
    const config = yield* OutboxConfig
    const stats = yield* admin.stats
    const workers = (yield* admin.workers(Duration.toMillis(config.interval) * 3)).map((w) => ({
      owner: w.owner,
      hostname: w.hostname,
      pid: w.pid,
      loop: w.loop,
      loopError: w.loop_error,
      retentionMs: w.retention_ms,
      breaker: w.breaker,
      listener: w.listener,
      startedAt: w.started_at,
      heartbeatAgeMs: Math.round(w.heartbeat_age_ms)
    }))
    const retention = yield* retentionLine(config, workers.flatMap((w) => (w.retentionMs === null ? [] : [w.retentionMs])))
    // A database migrated before reconciles were recorded has none to show.
    const reconciles = yield* Convergence.lastRuns.pipe(Effect.orElseSucceed(() => []))
    // Watched, one document per line (a stream a program can split); once, pretty for a person.
    if (json) return yield* Console.log(JSON.stringify({ ...stats, workers, retention: retention.json, reconciles }, null, watching ? undefined : 2))
    const lines = [
      `pending ${stats.pending}   in flight ${stats.inFlight}   scheduled retry ${stats.scheduled}   dead ${stats.dead}   oldest pending ${ms(stats.oldestPendingAgeMs)}`,
      retention.line
    ]
    if (stats.byResourceType.length > 0) {
      lines.push("", `${"resource type".padEnd(16)} ${pad("pending", 8)} ${pad("in flight", 10)} ${pad("dead", 6)}`)
      for (const r of stats.byResourceType) {
        lines.push(`${r.resourceType.padEnd(16)} ${pad(r.pending, 8)} ${pad(r.inFlight, 10)} ${pad(r.dead, 6)}`)
      }
    }
    lines.push("", workers.length === 0 ? "no live workers" : "workers:")
    for (const w of workers) {
      lines.push(
        `  ${w.owner}  loop ${w.loop}${w.loopError ? ` (${oneLine(w.loopError)})` : ""}  breaker ${w.breaker}  listener ${w.listener}  heartbeat ${ms(w.heartbeatAgeMs)} ago`
      )
    }
    lines.push("", reconciles.length === 0 ? "reconcile: never run" : "reconcile (last of each kind):")
    for (const r of reconciles) {
      const age = ms(Date.now() - r.startedAt.getTime())
      const outcome = r.error !== null
        ? `failed: ${oneLine(r.error)}`
        : r.finishedAt === null
        ? "running"
        : `drift ${r.drift ?? 0}${r.repair ? `, repaired ${r.repaired ?? 0}` : " (not repaired)"}, took ${ms(r.durationMs)}`
      lines.push(`  ${r.reason.padEnd(8)} ${age} ago by ${r.runner}: ${outcome}`)
    }
    yield* Console.log(lines.join("\n"))
  })

export const run = ({ options }: Input) => {
  const json = options["json"] === true
  // Redraw in place only on a terminal; piped, each refresh is appended under a time stamp.
  const clear = process.stdout.isTTY === true && !json
  const header = Effect.suspend(() =>
    json ? Effect.void : Console.log(clear ? "\x1b[H\x1b[2J" + new Date().toISOString() : `--- ${new Date().toISOString()}`)
  )
  const once = options["watch"] === true
    ? Effect.forever(header.pipe(Effect.zipRight(statusOnce(json, true)), Effect.zipRight(Effect.sleep(Duration.seconds(1)))))
    : statusOnce(json)
  return once.pipe(Effect.provide(Layer.merge(adminLayer, OutboxConfig.layerConfig())))
}
