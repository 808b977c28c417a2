-- The last reconcile of each kind (loss rebuild, periodic sweep, manual verify --repair), so that
-- `status` in any process can show when the data plane was last compared and what was found.
CREATE TABLE IF NOT EXISTS sync_outbox_reconciles (
  reason text PRIMARY KEY,
  runner text NOT NULL,
  started_at timestamptz NOT NULL,
  finished_at timestamptz,
  duration_ms integer,
  repair boolean NOT NULL,
  drift integer,
  repaired integer,
  report jsonb,
  error text
);
