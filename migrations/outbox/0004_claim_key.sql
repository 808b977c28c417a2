-- sync-outbox: per-key exclusion without a window. The claim statement decides on its snapshot,
-- taken when it began; another worker's claim may commit a lease on the same key after that
-- snapshot and before this claim takes the key's advisory lock. This function takes the lock and
-- then looks again: a VOLATILE function's query takes a fresh snapshot (READ COMMITTED, the
-- default), and every lease is written under its key's lock, so a lease committed before the lock
-- was granted is seen here. False when the key is locked by a concurrent claim or leased.
CREATE OR REPLACE FUNCTION sync_outbox_claim_key(p_key text, p_now timestamptz) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  IF NOT pg_try_advisory_xact_lock(hashtextextended(p_key, 7351)) THEN
    RETURN false;
  END IF;
  RETURN NOT EXISTS (
    SELECT 1 FROM sync_outbox
    WHERE ordering_key = p_key AND status = 'pending' AND lease_expires_at > p_now
  );
END
$$;
