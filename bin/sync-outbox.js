#!/usr/bin/env node
// The compiled CLI (`npm run build`, run by `prepare` and `prepack`).
import("../dist/cli/main.js").catch((error) => {
  if (error?.code === "ERR_MODULE_NOT_FOUND" && String(error.message).includes("dist/cli/main.js")) {
    process.stderr.write("sync-outbox: the package is not built (no dist/): run `npm run build`\n")
    process.exit(1)
  }
  throw error
})
