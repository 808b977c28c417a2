-- sync-outbox: the control plane of the seed (an LLM gateway), trimmed to what its data plane
-- reads from Redis. Optional: a project with its own schema skips this set and keeps the engine.

-- One sequence for every row of every entity: a version is never reused, so a model deleted and
-- created again under the same name always carries a newer version than before.
CREATE SEQUENCE IF NOT EXISTS cp_version_seq;

CREATE OR REPLACE FUNCTION cp_bump_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  NEW.version := nextval('cp_version_seq');
  NEW.updated_at := now();
  RETURN NEW;
END
$$;

CREATE TABLE IF NOT EXISTS cp_masters (
  id                bigserial PRIMARY KEY,
  name              text    NOT NULL CHECK (name <> ''),
  "group"           text    NOT NULL DEFAULT 'default',
  status            text    NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
  epoch             integer NOT NULL DEFAULT 1 CHECK (epoch > 0),
  global_qps        integer NOT NULL DEFAULT 0 CHECK (global_qps >= 0),
  default_namespace text    NOT NULL DEFAULT 'default',
  namespaces        text[]  NOT NULL DEFAULT '{default}',
  version           bigint  NOT NULL DEFAULT 0,
  updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS cp_keys (
  id              bigserial PRIMARY KEY,
  master_id       bigint  NOT NULL REFERENCES cp_masters (id) ON DELETE CASCADE,
  -- sha256 of the secret, hex: the secret itself is never stored.
  token_hash      text    NOT NULL UNIQUE CHECK (token_hash ~ '^[0-9a-f]{64}$'),
  "group"         text    NOT NULL DEFAULT 'default',
  status          text    NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
  scopes          text[]  NOT NULL DEFAULT '{}',
  model_limits    jsonb   NOT NULL DEFAULT '{}',
  allow_ips       text[]  NOT NULL DEFAULT '{}',
  deny_ips        text[]  NOT NULL DEFAULT '{}',
  expires_at      timestamptz NULL,
  quota_limit     bigint  NULL CHECK (quota_limit >= 0),
  quota_used      bigint  NOT NULL DEFAULT 0 CHECK (quota_used >= 0),
  quota_reset_at  timestamptz NULL,
  version         bigint  NOT NULL DEFAULT 0,
  updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS cp_keys_master_idx ON cp_keys (master_id);

CREATE TABLE IF NOT EXISTS cp_models (
  id                 bigserial PRIMARY KEY,
  name               text    NOT NULL UNIQUE CHECK (name <> ''),
  kind               text    NOT NULL DEFAULT 'chat' CHECK (kind IN ('chat', 'embedding', 'rerank', 'other')),
  context_window     integer NOT NULL DEFAULT 0 CHECK (context_window >= 0),
  cost_per_token     numeric NOT NULL DEFAULT 0 CHECK (cost_per_token >= 0),
  max_output_tokens  integer NOT NULL DEFAULT 0 CHECK (max_output_tokens >= 0),
  supports_streaming boolean NOT NULL DEFAULT true,
  supports_tools     boolean NOT NULL DEFAULT false,
  supports_vision    boolean NOT NULL DEFAULT false,
  supports_json      boolean NOT NULL DEFAULT false,
  version            bigint  NOT NULL DEFAULT 0,
  updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS cp_provider_groups (
  id               bigserial PRIMARY KEY,
  name             text   NOT NULL UNIQUE CHECK (name <> '' AND position('#' in name) = 0),
  type             text   NOT NULL CHECK (type <> ''),
  base_url         text   NOT NULL DEFAULT '',
  google_project   text   NULL,
  google_location  text   NULL,
  models           text[] NOT NULL DEFAULT '{}',
  status           text   NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
  version          bigint NOT NULL DEFAULT 0,
  updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS cp_api_keys (
  id         bigserial PRIMARY KEY,
  group_id   bigint  NOT NULL REFERENCES cp_provider_groups (id) ON DELETE CASCADE,
  api_key    text    NOT NULL CHECK (api_key <> ''),
  weight     integer NOT NULL DEFAULT 1 CHECK (weight >= 0),
  status     text    NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'auto_disabled', 'manual_disabled')),
  auto_ban   boolean NOT NULL DEFAULT true,
  ban_until  timestamptz NULL,
  version    bigint  NOT NULL DEFAULT 0,
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS cp_api_keys_group_idx ON cp_api_keys (group_id);

CREATE TABLE IF NOT EXISTS cp_bindings (
  id              bigserial PRIMARY KEY,
  namespace       text    NOT NULL CHECK (namespace <> ''),
  public_model    text    NOT NULL CHECK (public_model <> ''),
  group_id        bigint  NOT NULL REFERENCES cp_provider_groups (id) ON DELETE CASCADE,
  weight          integer NOT NULL DEFAULT 1 CHECK (weight >= 0),
  selector_type   text    NOT NULL DEFAULT 'exact' CHECK (selector_type IN ('exact', 'regex', 'normalize_exact')),
  selector_value  text    NOT NULL DEFAULT '',
  status          text    NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
  version         bigint  NOT NULL DEFAULT 0,
  updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS cp_bindings_group_idx ON cp_bindings (group_id);

DO $$
DECLARE t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['cp_masters', 'cp_keys', 'cp_models', 'cp_provider_groups', 'cp_api_keys', 'cp_bindings'] LOOP
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %I', t || '_version', t);
    EXECUTE format(
      'CREATE TRIGGER %I BEFORE INSERT OR UPDATE ON %I FOR EACH ROW EXECUTE FUNCTION cp_bump_version()',
      t || '_version', t);
  END LOOP;
END
$$;
