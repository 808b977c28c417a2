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
  const postgres = process.env["TEST_DATABASE_URL"] ?? (await remember(startPostgres())).url
  const redis = process.env["TEST_REDIS_URL"] ?? (await remember(startRedis())).url
  project.provide("postgresUrl", postgres)
  project.provide("redisUrl", redis)
}

export async function teardown() {
  await Promise.all(started.map((s) => s.stop()))
}

const remember = async <S extends RunningService>(service: Promise<S>): Promise<S> => {
  const s = await service
  started.push(s)
  return s
}
