-- sync-outbox: live workers, so that `status` (another process) can show each worker's breaker
-- and listener state. A worker registers on start, beats on its poll interval and on every state
-- change, and removes itself on a clean shutdown; a crashed one ages out by its heartbeat.
CREATE TABLE IF NOT EXISTS sync_outbox_workers (
  owner        text PRIMARY KEY,
  hostname     text NOT NULL,
  pid          integer NOT NULL,
  started_at   timestamptz NOT NULL DEFAULT now(),
  heartbeat_at timestamptz NOT NULL DEFAULT now(),
  breaker      text NOT NULL DEFAULT 'closed',
  listener     text NOT NULL DEFAULT 'connecting'
);
