/**
 * pg-listen as an Effect `Stream` of wake-ups. Notifications sent while the connection is down
 * are lost by nature, so every (re)connect is a wake-up too: the worker then runs a catch-up
 * claim. pg-listen never gives up reconnecting (`retryTimeout: Infinity`), payloads are passed
 * through unparsed, and the first connect is retried on a schedule, not given up either.
 */
import { Context, Duration, Effect, Layer, PubSub, Redacted, Runtime, Schedule, Stream, SubscriptionRef } from "effect"
import type pg from "pg"
import * as pgListen from "pg-listen"
import type { Options as PgListenOptions, Subscriber } from "pg-listen"

// pg-listen is CommonJS with `exports.default`; under NodeNext the types see a namespace.
const createSubscriber = ((pgListen as any).default?.default ?? (pgListen as any).default) as (
  config: pg.ClientConfig,
  options: PgListenOptions
) => Subscriber

export type Wakeup = "notification" | "connected"

export type ListenerState = "connecting" | "listening" | "reconnecting" | "off"

export interface ListenerShape {
  /** Every notification on the channel and every (re)connect, as one signal stream. */
  readonly wakeups: Stream.Stream<Wakeup>
  readonly state: SubscriptionRef.SubscriptionRef<ListenerState>
}

export interface ListenerOptions {
  readonly url: Redacted.Redacted
  readonly channel: string
  /** How often an idle connection is checked, so that a silently dead one is noticed. */
  readonly paranoidChecking?: Duration.DurationInput | undefined
}

// The least time a connect or a query of the listener may take before it counts as failed.
const minimumCallBoundMs = 5_000

const reconnectDelay = (attempt: number) => Math.min(25 * 2 ** Math.max(0, attempt - 1), 1_000)

export class Listener extends Context.Tag("sync-outbox/Listener")<Listener, ListenerShape>() {
  static readonly layer = (options: ListenerOptions): Layer.Layer<Listener> => Layer.scoped(Listener, make(options))

  /** No LISTEN connection (poll-only mode): no wake-ups beyond the worker's own timers. */
  static readonly off: Layer.Layer<Listener> = Layer.effect(
    Listener,
    Effect.map(SubscriptionRef.make<ListenerState>("off"), (state) => ({ wakeups: Stream.never, state }))
  )
}

const make = (options: ListenerOptions) =>
  Effect.gen(function*() {
    const hub = yield* PubSub.sliding<Wakeup>(1)
    const state = yield* SubscriptionRef.make<ListenerState>("connecting")
    // pg-listen calls back outside any fiber; a sliding hub takes an offer synchronously, so a
    // notification costs no fiber on its way to the worker.
    const publish = (wakeup: Wakeup) => {
      hub.unsafeOffer(wakeup)
    }
    const setState = (next: ListenerState) => {
      Effect.runFork(SubscriptionRef.set(state, next))
    }
    // Logged through the layer's own runtime: the application's logger, not the default one.
    const log = Runtime.runFork(yield* Effect.runtime<never>())
    // A lost connection is said once, when it goes, and once when it is back: a Postgres restart
    // under an idle worker (its pool reconnects as quietly) otherwise left no trace at all.
    let lost = false
    // The layer is being released: no LISTEN is tried again.
    let closing = false
    const lose = () => {
      setState("reconnecting")
      if (lost) return
      lost = true
      log(Effect.logWarning("sync-outbox listener: connection lost, reconnecting (notifications sent meanwhile are caught up by a claim once it is back)"))
    }

    const connectOnce = Effect.acquireRelease(
      Effect.tryPromise({
        try: async (): Promise<Subscriber> => {
          const paranoidMs = Duration.toMillis(options.paranoidChecking ?? Duration.seconds(5))
          // Every connect and every query of the subscriber (LISTEN, the paranoid check) is bounded.
          // Without a bound, a connection that stops answering without closing (a server that hung,
          // a flow a firewall dropped: TCP keeps it "open" for many minutes) left the paranoid
          // check waiting forever: no reconnect, no wake-up, and the state still "listening".
          // A check that fails by timing out reconnects, like one that fails outright.
          const boundMs = Math.max(paranoidMs, minimumCallBoundMs)
          const subscriber = createSubscriber(
            {
              connectionString: Redacted.value(options.url),
              application_name: "sync-outbox-listener",
              connectionTimeoutMillis: boundMs,
              query_timeout: boundMs
            },
            {
              retryTimeout: Infinity,
              retryInterval: reconnectDelay,
              paranoidChecking: paranoidMs,
              parse: (payload: string) => payload,
              serialize: (payload: unknown) => String(payload)
            }
          )
          const listening = () => {
            setState("listening")
            publish("connected")
            if (lost) {
              lost = false
              log(Effect.logInfo("sync-outbox listener: reconnected"))
            }
          }
          // pg-listen reconnects by itself, then runs LISTEN again; when that LISTEN fails on the
          // new connection (a standby answering after a failover, a LISTEN that timed out), it
          // says so once and leaves the connection up but deaf: its check of the connection
          // passes, so it never tries again, and no notification ever arrives. LISTEN is tried
          // again here until it holds (or pg-listen's next reconnect does it), with its backoff.
          let relistening = false
          let reconnected = 0
          const relisten = async () => {
            if (relistening) return
            relistening = true
            const since = reconnected
            try {
              for (let attempt = 1; !closing && reconnected === since; attempt++) {
                await new Promise((resolve) => setTimeout(resolve, reconnectDelay(attempt)))
                if (closing || reconnected !== since) return
                try {
                  // Out of pg-listen's list first: `listenTo` runs LISTEN only for a channel it does not know.
                  await Promise.resolve(subscriber.unlisten(options.channel)).catch(() => undefined)
                  await subscriber.listenTo(options.channel)
                  if (!closing) listening()
                  return
                } catch {
                  // Still refused, or the connection went: pg-listen reconnects it; try again.
                }
              }
            } finally {
              relistening = false
            }
          }
          // Without a listener, an "error" event would throw; errors here are reconnects in progress.
          subscriber.events.on("error", (error: unknown) => {
            lose()
            if (error instanceof Error && error.message.startsWith("Re-initializing the PostgreSQL notification client")) void relisten()
          })
          subscriber.events.on("reconnect", lose)
          try {
            await subscriber.connect()
            await subscriber.listenTo(options.channel)
          } catch (error) {
            await subscriber.close().catch(() => undefined)
            throw error
          }
          subscriber.events.on("notification", () => publish("notification"))
          subscriber.events.on("connected", () => {
            reconnected++
            listening()
          })
          return subscriber
        },
        catch: (cause) => cause
      }),
      // Interruptible inside: a release runs uninterruptibly, where a timeout would wait for its effect.
      (subscriber) =>
        Effect.zipRight(
          Effect.sync(() => {
            closing = true
          }),
          Effect.interruptible(Effect.promise(() => subscriber.close().catch(() => undefined))).pipe(Effect.timeoutOption(Duration.seconds(2)))
        )
    )

    // The first connect is retried for as long as the layer lives: a worker that starts before
    // its database does catches up once the database is there.
    // One warning per streak of failed connects, not one per attempt.
    let warned = false
    yield* Effect.forkScoped(
      connectOnce.pipe(
        Effect.tapError((error) =>
          Effect.zipRight(
            SubscriptionRef.set(state, "connecting"),
            warned ? Effect.void : Effect.zipRight(
              Effect.sync(() => {
                warned = true
              }),
              Effect.logWarning("sync-outbox listener: cannot connect, retrying until it can", String(error))
            )
          )
        ),
        Effect.retry(Schedule.exponential(Duration.millis(50)).pipe(Schedule.either(Schedule.spaced(Duration.seconds(2))))),
        Effect.tap(() => SubscriptionRef.set(state, "listening")),
        Effect.tap(() => (warned ? Effect.logInfo("sync-outbox listener: connected") : Effect.void)),
        Effect.tap(() => PubSub.publish(hub, "connected")),
        Effect.zipRight(Effect.never)
      )
    )

    return { wakeups: Stream.fromPubSub(hub), state } satisfies ListenerShape
  })
