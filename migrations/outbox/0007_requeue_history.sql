-- Attempts made before the last requeue of a dead letter. A requeue gives a fresh attempt budget
-- (retry_count back to 0) but keeps the failure history: the history numbers attempts from
-- attempts_before + retry_count, so a requeued event's new failures are recorded, not dropped as
-- duplicates of the old attempt numbers.
ALTER TABLE sync_outbox ADD COLUMN IF NOT EXISTS attempts_before integer NOT NULL DEFAULT 0;
