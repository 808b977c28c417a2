-- sync-outbox: each worker's claim loop state beside its breaker and listener, so that `status`
-- never shows a worker as healthy while its loop is restarting or has stopped.
ALTER TABLE sync_outbox_workers ADD COLUMN IF NOT EXISTS loop text NOT NULL DEFAULT 'unknown';
ALTER TABLE sync_outbox_workers ADD COLUMN IF NOT EXISTS loop_error text NULL;
-- The journal retention the worker runs with (what `status` shows is the workers', not its own).
ALTER TABLE sync_outbox_workers ADD COLUMN IF NOT EXISTS retention_ms bigint NULL;
