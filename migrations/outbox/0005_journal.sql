-- sync-outbox: the journal of applied events. The statement that completes an event (deletes its
-- outbox row) writes its journal row too, so the history costs no extra round trip and cannot
-- disagree with the outbox. Kept for SYNC_OUTBOX_RETENTION, pruned in small batches by one worker
-- at a time (see src/Journal.ts). With a retention of 0 nothing is written here.
CREATE TABLE IF NOT EXISTS sync_outbox_journal (
  -- The outbox event's id (unique in practice; not a key, so an identity reset cannot make a
  -- completion fail).
  id            bigint      NOT NULL,
  resource_type text        NOT NULL,
  action        text        NOT NULL,
  resource_id   bigint      NULL,
  ordering_key  text        NOT NULL,
  payload       jsonb       NULL,
  coalesce      boolean     NOT NULL,
  created_at    timestamptz NOT NULL,
  -- The completing worker's clock (Effect Clock), not the database's now().
  applied_at    timestamptz NOT NULL,
  -- Handler runs for this event: failed attempts, plus the one that applied it (none for an event
  -- a newer one covered).
  attempts      integer     NOT NULL,
  -- The worker (lease owner) that completed it.
  worker        text        NOT NULL,
  -- A coalesced event: the newer event of its key whose apply covered it.
  superseded_by bigint      NULL,
  -- For a coalesced event: whether the newer event had applied when this one was retired. False
  -- when it had failed (and was to be retried, or went dead): then nothing of this event reached
  -- the sink through it yet, and `applied_at` is only when it left the outbox. NULL otherwise.
  covering_applied boolean  NULL,
  -- An event enqueued by `replay`: the journaled event it repeats.
  replay_of     bigint      NULL
);

-- Carried from a replayed event's outbox row to its journal row. Nullable without a default: adding
-- it rewrites nothing, and the claim (which does not set it) stays a HOT update.
ALTER TABLE sync_outbox ADD COLUMN IF NOT EXISTS replay_of bigint NULL;

-- Pruning (oldest first) and `--since`.
CREATE INDEX IF NOT EXISTS sync_outbox_journal_applied_idx ON sync_outbox_journal (applied_at);
-- `history --resource-type T [--resource-id N]`, newest first.
CREATE INDEX IF NOT EXISTS sync_outbox_journal_resource_idx ON sync_outbox_journal (resource_type, resource_id, applied_at);
-- `replay --ids`, and following a superseded event to the one that covered it.
CREATE INDEX IF NOT EXISTS sync_outbox_journal_id_idx ON sync_outbox_journal (id);
