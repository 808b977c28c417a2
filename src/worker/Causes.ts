/** Causes as the worker logs them: one line each. */
import { Cause, Option } from "effect"
import { oneLine } from "../Errors.js"

/** A cause in one line: its first failure, else its first defect, else "interrupted". */
export const causeLine = (cause: Cause.Cause<unknown>): string =>
  Option.match(Cause.failureOption(cause), {
    onSome: oneLine,
    onNone: () => Option.match(Cause.dieOption(cause), { onSome: oneLine, onNone: () => "interrupted" })
  })
