-- An event's failure history leaves with the event. A foreign key with ON DELETE CASCADE did that
-- with one trigger call per deleted row: a third of a completion's cost, paid for every applied
-- event though almost none has a history. One statement-level trigger does it per statement
-- instead, for every way rows leave the outbox (a completion, a purge, an operator's own DELETE),
-- probing the history's primary key with the deleted ids; a TRUNCATE of the outbox empties the
-- history too, as TRUNCATE ... CASCADE did through the key.
--
-- Both functions run as their owner (the migrating role, as the key's cascade ran as the table's
-- owner), on the schema of the outbox whatever the caller's search_path: a role that may delete
-- events but not history rows (a least-privilege worker) still completes them, and an operator's
-- DELETE under another search_path (the schema named, or search_path = '') clears the right table.
-- No sequential scan of the history: a session keeps the trigger's plan, and one made while the
-- history was empty (the usual case) would read all of it, testing every row against every deleted
-- id, once a burst of failures had filled it.

DO $$
DECLARE
  fk record;
BEGIN
  FOR fk IN
    SELECT conname FROM pg_constraint
    WHERE conrelid = 'sync_outbox_failures'::regclass AND confrelid = 'sync_outbox'::regclass AND contype = 'f'
  LOOP
    EXECUTE format('ALTER TABLE sync_outbox_failures DROP CONSTRAINT %I', fk.conname);
  END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION sync_outbox_forget_failures() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET enable_seqscan = off AS $$
BEGIN
  DELETE FROM sync_outbox_failures WHERE outbox_id = ANY (ARRAY(SELECT id FROM gone));
  RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS sync_outbox_forget_failures ON sync_outbox;
CREATE TRIGGER sync_outbox_forget_failures
  AFTER DELETE ON sync_outbox REFERENCING OLD TABLE AS gone
  FOR EACH STATEMENT EXECUTE FUNCTION sync_outbox_forget_failures();

CREATE OR REPLACE FUNCTION sync_outbox_forget_all_failures() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
  DELETE FROM sync_outbox_failures;
  RETURN NULL;
END
$$;

DO $$
DECLARE
  schema text := (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.oid = 'sync_outbox'::regclass);
BEGIN
  EXECUTE format('ALTER FUNCTION sync_outbox_forget_failures() SET search_path = %I, pg_temp', schema);
  EXECUTE format('ALTER FUNCTION sync_outbox_forget_all_failures() SET search_path = %I, pg_temp', schema);
END
$$;

DROP TRIGGER IF EXISTS sync_outbox_forget_all_failures ON sync_outbox;
CREATE TRIGGER sync_outbox_forget_all_failures
  AFTER TRUNCATE ON sync_outbox
  FOR EACH STATEMENT EXECUTE FUNCTION sync_outbox_forget_all_failures();
