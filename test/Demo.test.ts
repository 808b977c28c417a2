import { execFile } from "node:child_process"
import { describe, expect, it } from "vitest"

describe("the demo (the README's first command)", () => {
  it("boots its own servers, survives a Redis cut, verifies convergence, stops everything and exits 0", async () => {
    const env = { ...process.env } as Record<string, string>
    // The demo must work on a machine with nothing configured: no URLs given.
    delete env["DATABASE_URL"]
    delete env["REDIS_URL"]
    const { code, stdout } = await new Promise<{ code: number; stdout: string }>((resolve) =>
      execFile(process.execPath, ["--import", "tsx", "scripts/demo.ts"], { env, timeout: 120_000 }, (error, stdout) =>
        resolve({ code: error ? (typeof error.code === "number" ? error.code : 1) : 0, stdout }))
    )
    expect(code, stdout).toBe(0)
    expect(stdout).toContain("Redis converged")
    // The contract's keys, printed as the balancer reads them, and a revocation by epoch.
    for (const key of ["auth:token:", "auth:master:1", "config:providers", "meta:providers_meta", "config:bindings", "meta:models", "meta:models_meta"]) {
      expect(stdout).toContain(key)
    }
    expect(stdout).toMatch(/secret-1-0 now refused \(revoked\)/)
    expect(stdout).toMatch(/deleted tenant-2: its 5 auth:token hashes are gone/)
    expect(stdout).toContain("breaker OPEN")
    expect(stdout).toMatch(/events with an attempt counted against them: 0\n/)
    expect(stdout).toMatch(/backlog drained \d+ ms after Redis came back/)
    expect(stdout).toContain("every version in Redis matches the control plane")
    expect(stdout).toContain("outbox: 0 pending, 0 dead")
    expect(stdout).toContain("done: every change reached Redis, nothing was lost")
  }, 150_000)
})
