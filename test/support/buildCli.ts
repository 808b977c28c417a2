import { execFileSync } from "node:child_process"
import { fileURLToPath } from "node:url"

/**
 * The CLI users run is the compiled one (`dist/`), and several files run it: build it from the
 * current sources once, before any file starts, so no two builds race and no test runs a stale one.
 */
export function setup() {
  const root = fileURLToPath(new URL("../..", import.meta.url))
  execFileSync(process.execPath, [`${root}node_modules/typescript/bin/tsc`, "-p", "tsconfig.build.json"], { cwd: root, stdio: "inherit" })
}
