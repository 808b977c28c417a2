-- sync-outbox: each worker's claim loop state beside its breaker and listener, so that `status`
-- never shows a worker as healthy while its loop is restarting or has stopped.
ALTER TABLE sync_outbox_workers ADD COLUMN IF NOT EXISTS loop text NOT NULL DEFAULT 'unknown';
ALTER TABLE sync_outbox_workers ADD COLUMN IF NOT EXISTS loop_error text NULL;
