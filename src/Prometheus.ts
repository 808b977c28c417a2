/**
 * Effect's metric registry as the Prometheus text exposition format (version 0.0.4): counters,
 * gauges and histograms, with their tags as labels. The library installs no exporter; the CLI's
 * worker serves this on `/metrics`.
 */
import { Effect, Metric, MetricState, Option } from "effect"
import type { MetricKey, MetricPair } from "effect"

const escapeLabel = (value: string) => value.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"')
const sanitize = (name: string) => name.replace(/[^a-zA-Z0-9_:]/g, "_")

const labels = (tags: ReadonlyArray<{ readonly key: string; readonly value: string }>, extra: Record<string, string> = {}) => {
  const all = [...tags.map((t) => [t.key, t.value] as const), ...Object.entries(extra)]
  return all.length === 0 ? "" : `{${all.map(([k, v]) => `${sanitize(k)}="${escapeLabel(v)}"`).join(",")}}`
}

const num = (n: number | bigint) =>
  typeof n === "bigint" ? n.toString() : Number.isNaN(n) ? "NaN" : n === Infinity ? "+Inf" : n === -Infinity ? "-Inf" : String(n)

/** Render metric pairs. Families are grouped so each name has one HELP and TYPE line. */
export const render = (pairs: ReadonlyArray<MetricPair.MetricPair.Untyped>): string => {
  const families = new Map<string, { help: string; type: string; lines: Array<string> }>()
  const family = (key: MetricKey.MetricKey.Untyped, type: string) => {
    const name = sanitize(key.name)
    let f = families.get(name)
    if (f === undefined) {
      f = { help: Option.getOrElse(key.description, () => key.name), type, lines: [] }
      families.set(name, f)
    }
    return { name, f }
  }
  for (const pair of pairs) {
    const key = pair.metricKey
    const state = pair.metricState
    if (MetricState.isCounterState(state)) {
      const { f, name } = family(key, "counter")
      f.lines.push(`${name}${labels(key.tags)} ${num(state.count)}`)
    } else if (MetricState.isGaugeState(state)) {
      const { f, name } = family(key, "gauge")
      f.lines.push(`${name}${labels(key.tags)} ${num(state.value)}`)
    } else if (MetricState.isHistogramState(state)) {
      const { f, name } = family(key, "histogram")
      // Effect's buckets are already cumulative counts per upper bound.
      for (const [bound, count] of state.buckets) {
        f.lines.push(`${name}_bucket${labels(key.tags, { le: num(bound) })} ${count}`)
      }
      if (!state.buckets.some(([bound]) => bound === Infinity)) {
        f.lines.push(`${name}_bucket${labels(key.tags, { le: "+Inf" })} ${state.count}`)
      }
      f.lines.push(`${name}_sum${labels(key.tags)} ${num(state.sum)}`)
      f.lines.push(`${name}_count${labels(key.tags)} ${state.count}`)
    }
  }
  const out: Array<string> = []
  for (const [name, f] of families) {
    out.push(`# HELP ${name} ${f.help.replace(/\n/g, " ")}`, `# TYPE ${name} ${f.type}`, ...f.lines)
  }
  return out.join("\n") + "\n"
}

/** The current registry, rendered; by default only sync-outbox's own families. */
export const snapshot = (prefix: string | null = "sync_outbox_"): Effect.Effect<string> =>
  Effect.map(Metric.snapshot, (pairs) => render(prefix === null ? pairs : pairs.filter((p) => p.metricKey.name.startsWith(prefix))))
