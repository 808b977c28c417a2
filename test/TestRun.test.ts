import { execFile } from "node:child_process"
import { describe, expect, it } from "vitest"

/** `npm test` (the README's test command) on one fixture, with the servers the suite starts itself. */
const npmTest = (fixture: string) => {
  const env = { ...process.env } as Record<string, string>
  // The embedded defaults: the suite boots its own Postgres and Redis, as on a fresh machine.
  delete env["TEST_DATABASE_URL"]
  delete env["TEST_REDIS_URL"]
  return new Promise<{ code: number; output: string }>((resolve) =>
    execFile(
      "npm",
      ["test", "--", "--config", "test/fixtures/vitest.config.ts", `test/fixtures/${fixture}`],
      { env, timeout: 150_000 },
      (error, stdout, stderr) =>
        resolve({ code: error ? (typeof error.code === "number" ? error.code : -1) : 0, output: stdout + stderr })
    )
  )
}

describe("the test command", () => {
  it("exits non-zero when a test fails, also when it started its own servers", async () => {
    const { code, output } = await npmTest("red.fixture.ts")
    expect(output).toMatch(/1 failed/)
    expect(code, output).not.toBe(0)
  }, 180_000)

  it("exits 0 when every test passes", async () => {
    const { code, output } = await npmTest("green.fixture.ts")
    expect(code, output).toBe(0)
    expect(output).toMatch(/1 passed/)
  }, 180_000)
})
