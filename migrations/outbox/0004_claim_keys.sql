-- sync-outbox: per-key exclusion without a window. The claim statement decides on its snapshot,
-- taken when it began; another worker's claim may commit a lease on the same key after that
-- snapshot and before this claim takes the key's advisory lock. This function takes the locks of
-- the keys a claim picked, then looks again: a VOLATILE function's query takes a fresh snapshot
-- (READ COMMITTED, the default), and every lease is written under its key's lock, so a lease
-- committed before a lock was granted is seen here. Returns the keys this claim may lease: those
-- no concurrent claim holds locked and no live lease holds. One fresh snapshot for all keys.
CREATE OR REPLACE FUNCTION sync_outbox_claim_keys(p_keys text[], p_now timestamptz) RETURNS text[]
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  locked text[];
BEGIN
  SELECT coalesce(array_agg(k), '{}') INTO locked
  FROM unnest(p_keys) AS k
  WHERE pg_try_advisory_xact_lock(hashtextextended(k, 7351));
  RETURN ARRAY(
    SELECT k FROM unnest(locked) AS k
    WHERE NOT EXISTS (
      SELECT 1 FROM sync_outbox
      WHERE ordering_key = k AND status = 'pending' AND lease_expires_at > p_now
    )
  );
END
$$;
