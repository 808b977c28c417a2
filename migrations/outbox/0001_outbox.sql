-- sync-outbox: the outbox table, its failure history, the wake-up trigger and an SQL enqueue
-- function. Plain SQL, so a project with its own migration tool can apply it as it is.

CREATE TABLE IF NOT EXISTS sync_outbox (
  id               bigserial PRIMARY KEY,
  resource_type    text        NOT NULL CHECK (resource_type <> ''),
  action           text        NOT NULL CHECK (action <> ''),
  resource_id      bigint      NULL CHECK (resource_id > 0),
  -- Events with one ordering key are applied one at a time, in id order.
  ordering_key     text        NOT NULL,
  payload          jsonb       NULL,
  -- A newer event of the same key makes this one redundant (the handler syncs state).
  coalesce         boolean     NOT NULL DEFAULT false,
  status           text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'dead')),
  retry_count      integer     NOT NULL DEFAULT 0,
  last_error       text        NULL,
  -- '-infinity' = due at once, whatever the skew between the database's and a worker's clock.
  next_retry_at    timestamptz NOT NULL DEFAULT '-infinity',
  lease_owner      text        NULL,
  lease_expires_at timestamptz NULL,
  created_at       timestamptz NOT NULL DEFAULT now()
)
-- Room on each page, so that a claim (which only sets the lease, an unindexed column) is a HOT
-- update: no new index entries, no index bloat from claim churn.
WITH (fillfactor = 70);

-- The claim walks pending rows in id order.
CREATE INDEX IF NOT EXISTS sync_outbox_pending_idx ON sync_outbox (id) WHERE status = 'pending';
-- Ordering: is any row of this key leased, or pending ahead of this one?
CREATE INDEX IF NOT EXISTS sync_outbox_key_idx ON sync_outbox (ordering_key, id) WHERE status = 'pending';
-- The due timer: the earliest scheduled retry.
CREATE INDEX IF NOT EXISTS sync_outbox_retry_idx ON sync_outbox (next_retry_at)
  WHERE status = 'pending' AND next_retry_at > '-infinity';
CREATE INDEX IF NOT EXISTS sync_outbox_dead_idx ON sync_outbox (resource_type, id) WHERE status = 'dead';

-- Append-only: one row per failed attempt, kept while the event lives (dead letters keep theirs).
CREATE TABLE IF NOT EXISTS sync_outbox_failures (
  outbox_id  bigint      NOT NULL REFERENCES sync_outbox (id) ON DELETE CASCADE,
  attempt    integer     NOT NULL,
  error_tag  text        NOT NULL,
  message    text        NOT NULL,
  failed_at  timestamptz NOT NULL,
  PRIMARY KEY (outbox_id, attempt)
);

-- One NOTIFY per statement with a constant payload: a transaction that enqueues a thousand
-- events sends one notification, and takes the global notify lock once. Switch it off for a
-- session or database with `SET sync_outbox.notify = 'off'`, or for good with
-- `ALTER TABLE sync_outbox DISABLE TRIGGER sync_outbox_notify` (poll-only mode).
CREATE OR REPLACE FUNCTION sync_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF coalesce(current_setting('sync_outbox.notify', true), '') <> 'off' THEN
    PERFORM pg_notify(coalesce(nullif(current_setting('sync_outbox.channel', true), ''), 'sync_outbox'), '');
  END IF;
  RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS sync_outbox_notify ON sync_outbox;
CREATE TRIGGER sync_outbox_notify
  AFTER INSERT ON sync_outbox
  FOR EACH STATEMENT EXECUTE FUNCTION sync_outbox_notify();

-- Enqueue from any client (psql, another language) inside its own transaction. The payload is
-- not checked against a schema here: a worker that cannot decode it parks the row as dead.
CREATE OR REPLACE FUNCTION sync_outbox_enqueue(
  p_resource_type text,
  p_action        text,
  p_resource_id   bigint DEFAULT NULL,
  p_payload       jsonb  DEFAULT NULL,
  p_ordering_key  text   DEFAULT NULL,
  p_coalesce      boolean DEFAULT false
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
  new_id bigint;
BEGIN
  IF coalesce(btrim(p_resource_type), '') = '' OR coalesce(btrim(p_action), '') = '' THEN
    RAISE EXCEPTION 'sync_outbox_enqueue: resource_type and action are required' USING ERRCODE = '22023';
  END IF;
  INSERT INTO sync_outbox (resource_type, action, resource_id, ordering_key, payload, coalesce)
  VALUES (
    btrim(p_resource_type), btrim(p_action), p_resource_id,
    coalesce(p_ordering_key, btrim(p_resource_type) || ':' || coalesce(p_resource_id::text, '')),
    p_payload, p_coalesce
  )
  RETURNING id INTO new_id;
  RETURN new_id;
END
$$;
