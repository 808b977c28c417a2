import * as Console from "effect/Console"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import * as Convergence from "../../Convergence.js"
import * as Migrations from "../../Migrations.js"
import { OutboxConfig } from "../../OutboxConfig.js"
import { driftOf, type DriftReport, ReconcileError, totalDrift } from "../../Reconciler.js"
import { RedisSink } from "../../RedisSink.js"
import type { Input } from "../spec.js"
import { database, loadHandlers, pad, text, UsageError } from "../shared.js"

/** The data plane differs from the control plane: exit code 3, after the report. */
export class DriftFound extends Data.TaggedError("DriftFound")<{ readonly message: string }> {}

/** Another process holds the reconcile lock (a worker's sweep or rebuild, another verify). */
export class ReconcileBusy extends Data.TaggedError("ReconcileBusy")<{ readonly message: string }> {}

const repairedOf = (report: DriftReport) => report.families.reduce((n, f) => n + f.repaired, 0)

const print = (report: DriftReport, json: boolean, tookMs: number) => {
  const drift = totalDrift(report)
  const repaired = repairedOf(report)
  if (json) {
    return Console.log(JSON.stringify({ inSync: drift === 0, repair: report.repair, drift, repaired, durationMs: tookMs, families: report.families }, null, 2))
  }
  const lines = [
    `${"family".padEnd(10)} ${pad("checked", 9)} ${pad("missing", 8)} ${pad("stale", 8)} ${pad("orphaned", 9)}${report.repair ? ` ${pad("repaired", 9)}` : ""}`
  ]
  for (const f of report.families) {
    lines.push(
      `${f.family.padEnd(10)} ${pad(f.checked, 9)} ${pad(f.missing, 8)} ${pad(f.stale, 8)} ${pad(f.orphaned, 9)}${report.repair ? ` ${pad(f.repaired, 9)}` : ""}`
    )
  }
  const examples = report.families.flatMap((f) =>
    (["missing", "stale", "orphaned"] as const).filter((kind) => f.examples[kind].length > 0).map((kind) =>
      `  ${f.family} ${kind}: ${f.examples[kind].join(", ")}${f[kind] > f.examples[kind].length ? ", …" : ""}`
    )
  )
  if (examples.length > 0) lines.push("", "examples:", ...examples)
  lines.push(
    "",
    drift === 0
      ? `in sync (${tookMs} ms)`
      : report.repair
      ? `drift: ${drift} entries, ${repaired} written or removed (${tookMs} ms)`
      : `drift: ${drift} entries; run \`sync-outbox verify --repair\` to fix it (${tookMs} ms)`
  )
  return Console.log(lines.join("\n"))
}

export const run = ({ options }: Input) =>
  Effect.gen(function*() {
    const json = options["json"] === true
    const repair = options["repair"] === true
    const specifier = text(options["handlers"]) ?? process.env["SYNC_OUTBOX_HANDLERS"]
    const builtIn = specifier === undefined || specifier === ""
    const handlers = yield* loadHandlers(specifier)
    if (handlers.reconciler === undefined) {
      return yield* new UsageError({ message: `handlers module ${specifier} exports no \`reconciler\`: there is nothing to verify its sink with` })
    }
    yield* Migrations.verify(builtIn ? ["outbox", "control-plane"] : ["outbox"])
    // No offline queue: wait (briefly) for the connection rather than failing the first command.
    const redis = yield* RedisSink
    yield* redis.ping.pipe(Effect.retry({ schedule: Schedule.spaced("20 millis"), times: 100 }))
    const started = Date.now()
    const result = yield* Convergence.runOnce("manual", { repair }).pipe(
      Effect.provide(handlers.reconciler),
      // Rows of the control plane that do not decode: every other entry was still compared (and
      // repaired), so that table is shown, and the run ends as drift (3), not as the environment failing.
      Effect.catchIf(
        (e): e is ReconcileError & { readonly report: DriftReport } => e instanceof ReconcileError && e.report !== undefined,
        (e) =>
          Effect.zipRight(
            print(e.report, json, Date.now() - started),
            Effect.fail(new DriftFound({ message: `${e.message} (exit 3)` }))
          )
      )
    )
    if (Option.isNone(result)) {
      return yield* new ReconcileBusy({ message: "another reconcile is running (a worker's sweep or rebuild, or another verify); try again shortly" })
    }
    const report = result.value
    yield* print(report, json, Date.now() - started)
    const drift = totalDrift(report)
    // Repaired: fine when everything found was written or removed (a newer event may also have won).
    const left = repair ? report.families.reduce((n, f) => n + Math.max(0, driftOf(f) - f.repaired), 0) : drift
    if (left > 0) {
      return yield* new DriftFound({
        message: repair
          ? `${left} of ${drift} drifted entries could not be repaired (refused as older than what Redis holds, or changed meanwhile); run verify again`
          : `drift found: ${drift} entries differ from the control plane (exit 3)`
      })
    }
  }).pipe(Effect.provide(Layer.mergeAll(database, RedisSink.layerConfig(), OutboxConfig.layerConfig())))
