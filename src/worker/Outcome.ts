/**
 * What the worker does with each claimed event once its handler is done, and how a claim is
 * grouped by ordering key before anything runs.
 */
import type { HandlerTimeout } from "../Errors.js"
import type { ApplyOutcome } from "../Handlers.js"
import type { Claimed } from "../Leases.js"
import type { ClaimedEvent } from "../OutboxEvent.js"

export type Outcome =
  | { readonly _tag: "Applied"; readonly event: Claimed; readonly superseded: ReadonlyArray<string> }
  | {
    readonly _tag: "Failed"
    readonly event: Claimed
    readonly superseded: ReadonlyArray<string>
    readonly error: unknown
    readonly permanent: boolean
    readonly keepLease: boolean
  }
  | {
    // Timed out: recorded once its call can no longer be running (see `Recorder`).
    readonly _tag: "Held"
    readonly event: Claimed
    readonly superseded: ReadonlyArray<string>
    readonly error: HandlerTimeout
    readonly running: ReadonlyArray<PromiseLike<unknown>>
    readonly leaseEndsAt: number
  }
  | { readonly _tag: "Released"; readonly ids: ReadonlyArray<string>; readonly unavailable: boolean }
  | {
    // Its last two attempts were leases that ran out in other workers' hands (counted by the
    // claim), and it has no attempts left: parked as a dead letter without running its handler again.
    readonly _tag: "Abandoned"
    readonly event: Claimed & { readonly abandonedBy: string }
  }

export type Held = Extract<Outcome, { readonly _tag: "Held" }>

/** A handler's typed outcome for one event (and the older events it covered), as the worker records it. */
export const fromApply = (
  event: Claimed,
  superseded: ReadonlyArray<string>,
  outcome: ApplyOutcome,
  leaseEndsAt: number
): Outcome => {
  switch (outcome._tag) {
    case "Applied":
      return { _tag: "Applied", event, superseded }
    case "Failed":
      return { _tag: "Failed", event, superseded, error: outcome.error, permanent: outcome.permanent, keepLease: false }
    case "Defect":
      return { _tag: "Failed", event, superseded, error: outcome.error, permanent: false, keepLease: false }
    case "TimedOut":
      return { _tag: "Held", event, superseded, error: outcome.error, running: outcome.running, leaseEndsAt }
    case "NotStarted":
      return { _tag: "Released", ids: [event.id, ...superseded], unavailable: false }
    case "Unavailable":
      return { _tag: "Released", ids: [event.id, ...superseded], unavailable: true }
  }
}

/**
 * Split off the events whose last attempt was a lease that ran out (the claim counted it), after
 * one before it lost the same way (so it ran alone: it ended that worker itself), and that have no
 * attempts left: a handler that ends the process would otherwise end every worker that takes its
 * event, forever. One lost lease alone parks nothing: at MAX_RETRIES=1 a single kill would make
 * dead letters of the whole batch the worker held.
 */
export const partitionAbandoned = (
  events: ReadonlyArray<Claimed>,
  maxRetries: number
): { readonly live: ReadonlyArray<Claimed>; readonly abandoned: ReadonlyArray<Extract<Outcome, { readonly _tag: "Abandoned" }>> } => {
  const spent = (event: Claimed) => event.abandonedBy !== null && event.abandonedAgain && event.retryCount >= maxRetries
  let parked: Array<Claimed & { readonly abandonedBy: string }> | undefined
  for (const event of events) if (spent(event)) (parked ??= []).push(event as Claimed & { readonly abandonedBy: string })
  if (parked === undefined) return { live: events, abandoned: [] }
  // A coalescing event that a newer coalescing event of its key in this claim covers is not
  // parked: that one runs, and completes it as superseded whatever its own outcome.
  const newestLive = new Map<string, bigint>()
  for (const event of events) {
    if (!event.coalesce || spent(event)) continue
    const id = BigInt(event.id)
    if ((newestLive.get(event.orderingKey) ?? -1n) < id) newestLive.set(event.orderingKey, id)
  }
  parked = parked.filter((event) => !(event.coalesce && (newestLive.get(event.orderingKey) ?? -1n) > BigInt(event.id)))
  const ids = new Set(parked.map((e) => e.id))
  return { live: events.filter((e) => !ids.has(e.id)), abandoned: parked.map((event) => ({ _tag: "Abandoned", event })) }
}

/** Events of one ordering key in one claim: coalescing ones collapse into the newest; any other mix goes one at a time, in order. */
export interface Group<E extends ClaimedEvent = ClaimedEvent> {
  readonly target: E
  readonly superseded: ReadonlyArray<string>
  /** Non-coalescing events of one key, in order (only when the claim returned several). */
  readonly sequence: ReadonlyArray<E>
}

export const groupByKey = <E extends ClaimedEvent>(events: ReadonlyArray<E>): ReadonlyArray<Group<E>> => {
  const byKey = new Map<string, Array<E>>()
  for (const event of events) {
    const list = byKey.get(event.orderingKey)
    if (list === undefined) byKey.set(event.orderingKey, [event])
    else list.push(event)
  }
  const groups: Array<Group<E>> = []
  for (const list of byKey.values()) {
    if (list.length === 1) {
      groups.push({ target: list[0]!, superseded: [], sequence: [] })
      continue
    }
    list.sort((a, b) => (BigInt(a.id) < BigInt(b.id) ? -1 : 1))
    // Only coalescing events collapse: one that does not coalesce is applied itself, in its turn
    // (the claim never hands over such a mix, but nothing here depends on that).
    if (list.every((e) => e.coalesce)) {
      groups.push({ target: list[list.length - 1]!, superseded: list.slice(0, -1).map((e) => e.id), sequence: [] })
    } else {
      groups.push({ target: list[0]!, superseded: [], sequence: list })
    }
  }
  return groups
}

/**
 * A worker that died with a batch in hand leaves every event of it with a lost attempt, though
 * one of them at most was the cause (a handler that ends the process). Groups holding an event
 * whose last attempt was lost that way are suspects: one runs alone, once the rest of the batch is
 * written down, the others go back unattempted for the next claim. If it ends this worker too,
 * only it is counted again; the fewest lost attempts first, so that the cause, counted each time,
 * sinks behind the events it took down with it until it is a dead letter.
 */
export const isolateSuspects = <E extends Claimed>(
  groups: ReadonlyArray<Group<E>>,
  events: ReadonlyArray<E>
): { readonly plain: ReadonlyArray<Group<E>>; readonly alone: Group<E> | undefined; readonly back: ReadonlyArray<string> } => {
  let suspects: Set<string> | undefined
  for (const event of events) if (event.lastAttemptLost) (suspects ??= new Set()).add(event.id)
  if (suspects === undefined) return { plain: groups, alone: undefined, back: [] }
  const ids = (g: Group<E>) => g.sequence.length > 0 ? g.sequence.map((e) => e.id) : [g.target.id, ...g.superseded]
  const plain: Array<Group<E>> = []
  const suspect: Array<Group<E>> = []
  for (const group of groups) (ids(group).some((id) => suspects.has(id)) ? suspect : plain).push(group)
  const first = (g: Group<E>) => (g.sequence.length > 0 ? g.sequence[0]! : g.target)
  suspect.sort((a, b) => first(a).retryCount - first(b).retryCount || (BigInt(first(a).id) < BigInt(first(b).id) ? -1 : 1))
  const [alone, ...rest] = suspect
  return { plain, alone, back: rest.flatMap(ids) }
}
