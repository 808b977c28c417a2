/**
 * The package as its manifest describes it to a package manager. npm hoists everything into one
 * node_modules, so an import of a package that sync-outbox does not declare works there by luck;
 * pnpm (without hoisting) and Yarn Plug'n'Play resolve a package's imports only from what it
 * declares, and such an import fails for the user at run time and in their `tsc`.
 */
import { readdirSync, readFileSync } from "node:fs"
import { builtinModules } from "node:module"
import { join } from "node:path"
import { describe, expect, it } from "vitest"

const root = new URL("..", import.meta.url).pathname
const manifest = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as {
  readonly dependencies: Record<string, string>
  readonly peerDependencies: Record<string, string>
}

const sources = (dir: string): Array<string> =>
  readdirSync(dir, { withFileTypes: true }).flatMap((entry) =>
    entry.isDirectory() ? sources(join(dir, entry.name)) : entry.name.endsWith(".ts") && !entry.name.endsWith(".test.ts") ? [join(dir, entry.name)] : []
  )

/** The package a bare specifier names: `@effect/sql/SqlClient` is `@effect/sql`, `effect/Effect` is `effect`. */
const packageOf = (specifier: string) => specifier.split("/").slice(0, specifier.startsWith("@") ? 2 : 1).join("/")

describe("Package", () => {
  it("every package the shipped code imports (values or types) is a dependency or a peer dependency of sync-outbox", () => {
    const declared = new Set([...Object.keys(manifest.dependencies), ...Object.keys(manifest.peerDependencies)])
    const imported = new Map<string, string>()
    for (const file of sources(join(root, "src"))) {
      const text = readFileSync(file, "utf8")
      for (const match of text.matchAll(/(?:\bfrom\s*|\bimport\s*\(\s*|^\s*import\s+)"([^"]+)"/gm)) {
        const specifier = match[1]!
        if (specifier.startsWith(".") || specifier.startsWith("node:") || builtinModules.includes(specifier)) continue
        imported.set(packageOf(specifier), file.slice(root.length))
      }
    }
    expect(imported.size).toBeGreaterThan(5)
    const undeclared = [...imported].filter(([name]) => !declared.has(name)).map(([name, file]) => `${name} (imported by ${file})`)
    expect(undeclared).toEqual([])
  })
})
