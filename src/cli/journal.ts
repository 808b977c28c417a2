/**
 * `history` and `replay`: the journal of applied events, for an operator. The logic is in
 * functions (`showHistory`, `runReplay`, `retentionLine`) that need only a `SqlClient`;
 * `commands/history.ts` and `commands/replay.ts` wire them to flags and to the environment.
 */
import type { SqlClient, SqlError } from "@effect/sql"
import * as Console from "effect/Console"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Journal from "../Journal.js"
import type { OutboxConfigShape } from "../OutboxConfig.js"

const ms = (n: number) =>
  n < 1_000 ? `${Math.round(n)}ms` : n < 120_000 ? `${(n / 1_000).toFixed(1)}s` : n < 7_200_000 ? `${Math.round(n / 60_000)}m` : `${(n / 3_600_000).toFixed(1)}h`

const entryJson = (e: Journal.JournalEntry) => ({
  ...e,
  createdAt: e.createdAt.toISOString(),
  appliedAt: e.appliedAt.toISOString()
})

/** One line per event: when applied, what, by whom, how long after enqueue. */
export const formatHistory = (entries: ReadonlyArray<Journal.JournalEntry>): string => {
  if (entries.length === 0) return "no journaled events"
  const lines = [
    `${"applied at".padEnd(24)} ${"id".padStart(8)}  ${"type/action".padEnd(26)} ${"resource".padStart(9)} ${"latency".padStart(8)} ${"tries".padStart(5)}  worker`
  ]
  for (const e of entries) {
    lines.push(
      `${e.appliedAt.toISOString().padEnd(24)} ${e.id.padStart(8)}  ${`${e.resourceType}/${e.action}`.padEnd(26)} ${
        String(e.resourceId ?? "-").padStart(9)
      } ${ms(e.latencyMs).padStart(8)} ${String(e.attempts).padStart(5)}  ${e.worker}${
        e.supersededBy === null ? "" : `  (covered by ${e.supersededBy}${e.coveringApplied === false ? ", which had not applied: see dead show / history" : ""})`
      }${e.replayOf === null ? "" : `  (replay of ${e.replayOf})`}`
    )
  }
  return lines.join("\n")
}

export interface HistoryFlags {
  readonly resourceType?: string | undefined
  readonly resourceId?: number | undefined
  readonly since?: string | undefined
  readonly limit?: number | undefined
  readonly json?: boolean | undefined
}

/** `sync-outbox history`: newest first. */
export const showHistory = (
  flags: HistoryFlags
): Effect.Effect<void, Journal.InvalidJournalQuery | SqlError.SqlError, SqlClient.SqlClient> =>
  Effect.gen(function*() {
    const since = flags.since === undefined ? undefined : yield* Journal.parseSince(flags.since)
    const entries = yield* Journal.history({
      resourceType: flags.resourceType,
      resourceId: flags.resourceId,
      since,
      limit: flags.limit
    })
    yield* Console.log(flags.json === true ? JSON.stringify(entries.map(entryJson), null, 2) : formatHistory(entries))
  })

export interface ReplayFlags {
  /** Comma- or space-separated event ids. */
  readonly ids?: string | undefined
  readonly resourceType?: string | undefined
  readonly since?: string | undefined
  readonly dryRun?: boolean | undefined
  readonly json?: boolean | undefined
  readonly registered?: Journal.ReplayOptions["registered"]
}

/** The flags as a selector: exactly one of `--ids` or `--resource-type` with `--since`. */
export const replaySelector = (flags: ReplayFlags): Effect.Effect<Journal.ReplaySelector, Journal.InvalidJournalQuery> =>
  Effect.gen(function*() {
    const usage = "give either --ids ID,ID,… or --resource-type TYPE --since WHEN"
    if (flags.ids !== undefined) {
      if (flags.resourceType !== undefined || flags.since !== undefined) {
        return yield* new Journal.InvalidJournalQuery({ message: `${usage}, not both` })
      }
      return { _tag: "Ids" as const, ids: flags.ids.split(/[\s,]+/).filter((id) => id !== "") }
    }
    if (flags.resourceType === undefined || flags.since === undefined) {
      return yield* new Journal.InvalidJournalQuery({ message: usage })
    }
    return { _tag: "Range" as const, resourceType: flags.resourceType, since: yield* Journal.parseSince(flags.since) }
  })

/** `sync-outbox replay`: enqueue journaled events again (or, with `dryRun`, say what it would). */
export const runReplay = (
  flags: ReplayFlags
): Effect.Effect<Journal.ReplayResult, Journal.InvalidJournalQuery | SqlError.SqlError, SqlClient.SqlClient> =>
  Effect.gen(function*() {
    const selector = yield* replaySelector(flags)
    const result = yield* Journal.replay(selector, { dryRun: flags.dryRun, registered: flags.registered })
    if (flags.json === true) {
      yield* Console.log(JSON.stringify(
        { dryRun: flags.dryRun === true, events: result.events.map(entryJson), enqueued: result.enqueued },
        null,
        2
      ))
      return result
    }
    if (result.events.length === 0) {
      yield* Console.log("no journaled events selected; nothing enqueued")
      return result
    }
    const shown = 50
    const lines = result.events.slice(0, shown).map((e, i) =>
      `  ${e.id.padStart(8)} ${`${e.resourceType}/${e.action}`.padEnd(26)} ${String(e.resourceId ?? "-").padStart(9)}${
        flags.dryRun === true ? "" : `  -> new event ${result.enqueued[i]}`
      }`
    )
    if (result.events.length > shown) lines.push(`  … and ${result.events.length - shown} more`)
    yield* Console.log(
      [
        flags.dryRun === true
          ? `dry run: would enqueue ${result.events.length} event(s) again, in this order:`
          : `enqueued ${result.enqueued.length} event(s) again:`,
        ...lines
      ].join("\n")
    )
    return result
  })

/**
 * For `status`: the retention in force and what the journal holds. The live workers' retention is
 * the one in force (they prune); this process's own setting is shown only when none is live.
 */
export const retentionLine = (
  config: OutboxConfigShape,
  workerRetentions: ReadonlyArray<number> = []
): Effect.Effect<{ readonly line: string; readonly json: unknown }, SqlError.SqlError, SqlClient.SqlClient> =>
  Effect.gen(function*() {
    const distinct = [...new Set(workerRetentions)].sort((a, b) => a - b)
    const retentionMs = distinct.length > 0 ? distinct[0]! : Duration.toMillis(config.retention)
    const source = distinct.length === 0
      ? " (no live worker says; this environment's SYNC_OUTBOX_RETENTION)"
      : distinct.length > 1
      ? ` (workers differ: ${distinct.map((ms) => Duration.format(Duration.millis(ms))).join(", ")}; the shortest prunes)`
      : ""
    const stats = yield* Journal.stats
    const now = Date.now()
    const oldest = stats.oldestAppliedAt === null ? null : now - stats.oldestAppliedAt.getTime()
    return {
      line: retentionMs === 0
        ? `retention off (SYNC_OUTBOX_RETENTION=0: applied events are deleted, not journaled)${source}${
          stats.rows > 0 ? `; journal still holds ${stats.rows} row(s)` : ""
        }`
        : `retention ${Duration.format(Duration.millis(retentionMs))}${source}   journal ${stats.approximate ? "~" : ""}${stats.rows} event(s)${
          oldest === null ? "" : `, oldest applied ${ms(oldest)} ago`
        }`,
      json: {
        retentionMs,
        retentionFrom: distinct.length === 0 ? "environment" : "workers",
        journal: { rows: stats.rows, approximate: stats.approximate, oldestAppliedAt: stats.oldestAppliedAt, bytes: stats.bytes }
      }
    }
  })

