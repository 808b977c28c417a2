-- sync-outbox: what ez-api's data-plane contract needs from the control plane. Additive only:
-- 0001 may already be applied in users' databases.

-- A key remembers its master's epoch when it was issued (§3.9 of the contract): bumping the
-- master's epoch then revokes every key issued before, on the data plane, with no key write.
ALTER TABLE cp_keys ADD COLUMN IF NOT EXISTS issued_at_epoch integer;
UPDATE cp_keys k SET issued_at_epoch = m.epoch FROM cp_masters m WHERE m.id = k.master_id AND k.issued_at_epoch IS NULL;
ALTER TABLE cp_keys ALTER COLUMN issued_at_epoch SET NOT NULL;

CREATE OR REPLACE FUNCTION cp_key_issued_at_epoch() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.issued_at_epoch IS NULL THEN
    SELECT epoch INTO NEW.issued_at_epoch FROM cp_masters WHERE id = NEW.master_id;
  END IF;
  RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS cp_keys_issued_at_epoch ON cp_keys;
CREATE TRIGGER cp_keys_issued_at_epoch BEFORE INSERT ON cp_keys
  FOR EACH ROW EXECUTE FUNCTION cp_key_issued_at_epoch();

-- modelcap.Model's capability flags that 0001 lacked.
ALTER TABLE cp_models ADD COLUMN IF NOT EXISTS supports_tool_choice boolean NOT NULL DEFAULT false;
ALTER TABLE cp_models ADD COLUMN IF NOT EXISTS supports_fim boolean NOT NULL DEFAULT false;

-- The provider snapshot's routing `group` (normalized to `default` when blank).
ALTER TABLE cp_provider_groups ADD COLUMN IF NOT EXISTS routing_group text NOT NULL DEFAULT '';

-- ParseModelRef splits at the first dot: a namespace with a dot can never be addressed.
-- NOT VALID: rows already there are left alone; new and changed rows are checked.
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'cp_bindings_namespace_routable') THEN
    ALTER TABLE cp_bindings ADD CONSTRAINT cp_bindings_namespace_routable
      CHECK (position('.' in namespace) = 0 AND btrim(namespace) <> '' AND btrim(public_model) <> '') NOT VALID;
  END IF;
END
$$;

-- One fence row per snapshot: a rebuild takes the next generation in the transaction that reads
-- its rows, so generations follow the order of the reads (see ControlPlane.snapshotSource).
CREATE TABLE IF NOT EXISTS cp_snapshot_fences (
  name       text PRIMARY KEY,
  generation bigint NOT NULL DEFAULT 1
);
INSERT INTO cp_snapshot_fences (name) VALUES ('providers'), ('bindings') ON CONFLICT DO NOTHING;

-- A model is filed under the binding key its name parses to (ParseModelRef, default namespace
-- `default`): a name that does not parse (blank, or a blank half around its first dot) is refused.
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'cp_models_name_routable') THEN
    ALTER TABLE cp_models ADD CONSTRAINT cp_models_name_routable CHECK (
      btrim(name) <> '' AND (
        position('.' in name) = 0 OR (
          btrim(split_part(name, '.', 1)) <> '' AND btrim(substr(name, position('.' in name) + 1)) <> ''
        )
      )
    ) NOT VALID;
  END IF;
END
$$;
