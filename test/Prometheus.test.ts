import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { enqueue, Prometheus, Store } from "../src/index.js"
import { freshDatabase, SetValue, sqlLayer } from "./support/harness.js"

const parse = (body: string) =>
  new Map(
    body.split("\n").filter((l) => l !== "" && !l.startsWith("#")).map((l) => {
      const at = l.lastIndexOf(" ")
      return [l.slice(0, at), Number(l.slice(at + 1))] as const
    })
  )

describe("Prometheus", () => {
  it.scopedLive("serve: /metrics with sync-outbox's families, queue gauges from the Store, and the process's own", () =>
    Effect.gen(function*() {
      const url = yield* Effect.promise(() => freshDatabase("prometheus"))
      const layer = Store.layer.pipe(Layer.provideMerge(sqlLayer(url)))
      yield* Effect.gen(function*() {
        yield* enqueue(SetValue, { resourceId: 1, payload: { key: "k", value: "v" } })
        yield* enqueue(SetValue, { resourceId: 2, payload: { key: "k", value: "v" } })
        const { port } = yield* Prometheus.serve({ port: 0 })
        const body = yield* Effect.promise(() => fetch(`http://127.0.0.1:${port}/metrics`).then((r) => r.text()))
        const samples = parse(body)
        expect(samples.get("sync_outbox_pending"), body).toBe(2)
        expect(samples.get("sync_outbox_dead")).toBe(0)
        expect(samples.get("process_resident_memory_bytes")).toBeGreaterThan(0)
        expect(samples.get("process_cpu_seconds_total")).toBeGreaterThan(0)
        expect(samples.get("nodejs_heap_size_used_bytes")).toBeGreaterThan(0)
        expect([...samples.values()].every(Number.isFinite)).toBe(true)
        // Every family once: one HELP and one TYPE line per name.
        const types = body.split("\n").filter((l) => l.startsWith("# TYPE ")).map((l) => l.split(" ")[2])
        expect(new Set(types).size).toBe(types.length)
        const other = yield* Effect.promise(() => fetch(`http://127.0.0.1:${port}/other`))
        expect(other.status).toBe(404)
      }).pipe(Effect.provide(layer))
    }))

  it.scopedLive("serve: a port that is taken is a typed MetricsServerError", () =>
    Effect.gen(function*() {
      const { port } = yield* Prometheus.serve({ port: 0 })
      const error = yield* Prometheus.serve({ port }).pipe(Effect.flip)
      expect(error._tag).toBe("MetricsServerError")
      expect(error.message).toContain(`cannot serve metrics on 127.0.0.1:${port}`)
    }))

  it.scopedLive("serve: a port Node cannot listen on (out of range, negative, not an integer, NaN) is a typed MetricsServerError, not a defect", () =>
    Effect.gen(function*() {
      for (const port of [70_000, -1, 1.5, Number.NaN, "9464x" as unknown as number]) {
        const error = yield* Prometheus.serve({ port }).pipe(Effect.flip)
        expect(error._tag).toBe("MetricsServerError")
        expect(error.message).toContain("the port must be an integer from 0")
      }
    }))

  it.effect("scrape leaves the process families out when asked", () =>
    Effect.gen(function*() {
      const text = yield* Prometheus.scrape({ process: false })
      expect(text).not.toContain("process_cpu_seconds_total")
      expect(yield* Prometheus.scrape()).toContain("# TYPE process_cpu_seconds_total counter")
    }))
})
