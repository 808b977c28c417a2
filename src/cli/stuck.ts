/**
 * Node ends a process whose event loop has nothing left to wait on, with code 0, even while a
 * command still awaits a promise that can never settle and holds no handle (a handlers module
 * whose top-level await never resolves): the command would end silently "successfully". Until
 * the returned function is called, that moment is said on stderr and the process exits 1.
 * No imports: `--help` uses it and must not load Effect.
 */
export const exitIfStuck = (message: string): (() => void) => {
  const stuck = () => {
    process.stderr.write(`sync-outbox: ${message}\n`)
    process.exit(1)
  }
  process.once("beforeExit", stuck)
  return () => {
    process.off("beforeExit", stuck)
  }
}
