/**
 * The worker's clock in the test kit: `TestClock`'s time, and timers of the kit's own.
 *
 * Under `TestClock` alone, every timeout the worker starts (one per statement, per batch, per
 * heartbeat) leaves a sleep in `TestClock`'s list even after the call it guarded returned, and
 * each sleep an adjustment passes wakes it and then waits for every fiber to suspend (several
 * real event-loop turns). Those leftover sleeps were most of a test's time. Here a timer that is
 * interrupted is gone, and the driver fires the due ones itself, in time order, then waits for
 * the worker with its own, cheaper, notion of settled (see `Driver`).
 *
 * The time read is `TestClock`'s, so the worker, the handlers and the test agree on "now",
 * except within an `advance`: there the driver may move the worker alone to a due time on the
 * way (`moveTo`) when nothing of the test's own sleeps on `TestClock` before it, and moves
 * `TestClock` once, at the end (each `TestClock` move waits several event-loop turns for every
 * fiber to suspend). The worker's time never goes back, and once the advance ends the two agree.
 */
import { Clock, Duration, Effect, FiberRef } from "effect"
import * as Journal from "../Journal.js"

interface Timer {
  readonly at: number
  readonly wake: () => void
  /**
   * Housekeeping (`Journal.housekeeping`: the journal's pruner): fired by `fireDue` once time has
   * passed it, but never a due time of its own (`nextAt`), so an advance does not stop for it.
   */
  readonly background: boolean
}

export class WorkerClock implements Clock.Clock {
  readonly [Clock.ClockTypeId]: Clock.ClockTypeId = Clock.ClockTypeId
  private timers: Array<Timer> = []
  /** Where `moveTo` put the worker, while `TestClock` is behind it; null when they agree. */
  private ahead: number | null = null

  /**
   * @param callsFrom The first `InFlight` call of this kit's (`InFlight.nextCall()` as it starts):
   * a call an earlier test left running (a promise that never settles) does not hold this one's time.
   */
  constructor(private readonly time: Clock.Clock, readonly callsFrom = 0) {}

  unsafeCurrentTimeMillis(): number {
    const time = this.time.unsafeCurrentTimeMillis()
    return this.ahead !== null && this.ahead > time ? this.ahead : time
  }

  unsafeCurrentTimeNanos(): bigint {
    const time = this.time.unsafeCurrentTimeNanos()
    // As TestClock counts them: its millis can have a fraction (a jittered sleep ends there).
    const ahead = this.ahead === null ? null : BigInt(Math.floor(this.ahead * 1_000_000))
    return ahead !== null && ahead > time ? ahead : time
  }

  /** Moves the worker's time (never back) to `at`, ahead of `TestClock`'s until `caughtUp`. */
  moveTo(at: number): void {
    if (at > this.unsafeCurrentTimeMillis()) this.ahead = at
  }

  /** `TestClock` has reached (or passed) the worker's time: read it alone again. */
  caughtUp(): void {
    this.ahead = null
  }

  readonly currentTimeMillis: Effect.Effect<number> = Effect.sync(() => this.unsafeCurrentTimeMillis())

  readonly currentTimeNanos: Effect.Effect<bigint> = Effect.sync(() => this.unsafeCurrentTimeNanos())

  sleep(duration: Duration.Duration): Effect.Effect<void> {
    return Effect.flatMap(FiberRef.get(Journal.housekeeping), (background) => this.timer(duration, background))
  }

  private timer(duration: Duration.Duration, background: boolean): Effect.Effect<void> {
    return Effect.async<void>((resume) => {
      const ms = Duration.toMillis(duration)
      if (!(ms > 0)) return resume(Effect.void)
      const timer: Timer = { at: this.unsafeCurrentTimeMillis() + ms, wake: () => resume(Effect.void), background }
      this.timers.push(timer)
      if (this.closing) this.pump()
      // An interrupted sleep (a timeout whose call returned, a wait cut short by a wake-up) is forgotten.
      return Effect.sync(() => {
        this.timers = this.timers.filter((t) => t !== timer)
      })
    })
  }

  private closing = false
  private pumping: ReturnType<typeof setTimeout> | undefined

  /**
   * The kit's scope is closing: nothing will drain or advance again. The worker's finalizer waits
   * for its in-flight handlers, bounded by `callTimeout` on this clock; so that a handler still
   * hung (a test that ended on a `DrainTimeout`) does not hold the teardown forever, every timer
   * (those set from now on too) fires after a few milliseconds of real time. A teardown with
   * nothing in flight ends before that.
   */
  close(): void {
    this.closing = true
    if (this.timers.length > 0) this.pump()
  }

  private pump(): void {
    if (this.pumping !== undefined) return
    this.pumping = setTimeout(() => {
      this.pumping = undefined
      const all = this.timers.sort((a, b) => a.at - b.at)
      this.timers = []
      for (const timer of all) timer.wake()
    }, 50)
  }

  /** When the earliest timer falls due, if any (housekeeping aside). */
  nextAt(): number | null {
    let next: number | null = null
    for (const timer of this.timers) if (!timer.background && (next === null || timer.at < next)) next = timer.at
    return next
  }

  /** Wakes every timer due at the current time, earliest first; how many it woke. */
  fireDue(): number {
    const now = this.unsafeCurrentTimeMillis()
    const due = this.timers.filter((t) => t.at <= now).sort((a, b) => a.at - b.at)
    if (due.length === 0) return 0
    this.timers = this.timers.filter((t) => t.at > now)
    for (const timer of due) timer.wake()
    return due.length
  }
}
