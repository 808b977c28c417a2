/**
 * The README's "Testing your outbox code" example, run as written (the README's copy is compared
 * with the part between the markers below, imports aside), so the README cannot drift from the API.
 */
import { describe, expect, it } from "@effect/vitest"
import { readFileSync } from "node:fs"
// README:begin
import { Data, Duration, Effect, Schema } from "effect"
import { enqueue, handle, Handlers, OutboxEvent } from "../src/index.js"
import { OutboxTest } from "../src/testing/index.js"

class Refused extends Data.TaggedError("Refused")<{ readonly message: string }> {}
const PlanChanged = OutboxEvent.make({ resourceType: "plan", action: "update", payload: Schema.String })
const handlers = Handlers.layer(handle(PlanChanged, ({ payload }) => new Refused({ message: `no ${payload}` })))

it.effect("a refused plan change is retried on its schedule, then parked as a dead letter", () =>
  Effect.gen(function*() {
    const outbox = yield* OutboxTest
    const id = yield* enqueue(PlanChanged, { resourceId: 1, payload: "pro" })
    expect((yield* outbox.drain).failed.map((f) => f.attempt)).toEqual([1]) // at once
    expect((yield* outbox.advance("499 millis")).failed).toEqual([]) // retry 1 is due in [0.5 s, 1 s]
    const rest = yield* outbox.advance("10 seconds") // stops at each due time on the way
    expect(rest.failed.map((f) => f.attempt)).toEqual([2, 3])
    expect(rest.dead.map((f) => f.event.id)).toEqual([id])
    const [dead] = yield* outbox.dead
    expect(dead!.failures.map((f) => `${f.attempt} ${f.errorTag}: ${f.message}`)).toEqual(["1 Refused: no pro", "2 Refused: no pro", "3 Refused: no pro"])
  }).pipe(Effect.provide(OutboxTest.layerMemory({ handlers, config: { maxRetries: 3, backoffBase: Duration.seconds(1) } }))))
// README:end

describe("README", () => {
  it("shows the example above, word for word", () => {
    const source = readFileSync(new URL(import.meta.url), "utf8")
    const example = source.slice(source.indexOf("// README:begin\n") + 16, source.indexOf("// README:end"))
      .replace(`"../src/index.js"`, `"sync-outbox"`)
      .replace(`"../src/testing/index.js"`, `"sync-outbox/testing"`)
    const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8")
    const section = readme.slice(readme.indexOf("## Testing your outbox code"))
    const block = section.slice(section.indexOf("```ts\n") + 6, section.indexOf("```\n", section.indexOf("```ts\n") + 6))
    expect(block).toBe(`import { expect, it } from "@effect/vitest"\n${example}`)
  })

  it("names the vitest and @effect/vitest a user installs, at versions this repository's own tests run on (npm's latest are for effect 4)", () => {
    const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8")
    const section = readme.slice(readme.indexOf("## Testing your outbox code"), readme.indexOf("## Configuration"))
    const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as {
      devDependencies: Record<string, string>
    }
    // `^1.2` as npm reads it: the same major, at least that minor; under 1.0, the same minor.
    const caretAllows = (range: string, version: string) => {
      const [major, minor] = range.replace(/^\^/, "").split(".").map(Number)
      const [vMajor, vMinor] = version.replace(/^\D*/, "").split(".").map(Number)
      return vMajor === major && (major === 0 ? vMinor === minor : vMinor! >= minor!)
    }
    for (const name of ["vitest", "@effect/vitest"]) {
      const named = new RegExp(`npm i -D[^\\n]*\\s${name.replace("/", "\\/")}@(\\^[0-9.]+)`, "m").exec(section)
      expect(named, `README's testing section installs ${name} with a version`).not.toBeNull()
      expect(caretAllows(named![1]!, pkg.devDependencies[name]!), `${name}@${named![1]} vs ours ${pkg.devDependencies[name]}`).toBe(true)
    }
    // The first test on PGlite outlives vitest's default 5 s on a busy machine: the README says so.
    expect(section).toMatch(/testTimeout/)
  })
})
