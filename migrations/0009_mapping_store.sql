-- Mapping versions kept in the database (issue 46): `rbac-gateway mapping push` stores a
-- mapping file's exact text under its version, `mapping activate`/`rollback` append to the
-- activation log, and gateways started with `--mapping-source database` apply the latest
-- activation within a second (the change feed's 250 ms read also reads the active activation
-- id; the NOTIFY below wakes it at once).
--
-- Both tables are append-only: an UPDATE or DELETE is refused by a trigger, so history and
-- rollback stay exact. A gateway re-hashes every text it loads and refuses one that does not
-- hash to its version (a row changed by someone who could bypass the trigger).
-- Grants for a gateway role (SELECT only) and a pusher role: deploy/mapping-grants.sql.

CREATE TABLE IF NOT EXISTS rbac_mapping_store (
    -- The version `serve` reports (mapping_version): the first 12 hex digits of the SHA-256 of
    -- the text's bytes.
    version        TEXT PRIMARY KEY,
    -- The whole SHA-256 of the text, hex.
    sha256         TEXT NOT NULL,
    -- The file, byte for byte (a mapping is UTF-8 TOML).
    text           TEXT NOT NULL,
    -- Who pushed it: the database user, and the person or job named with --actor.
    pushed_by      TEXT NOT NULL DEFAULT current_user,
    actor          TEXT NULL,
    pushed_at_utc  TIMESTAMPTZ NOT NULL DEFAULT now(),
    message        TEXT NULL
);

CREATE TABLE IF NOT EXISTS rbac_mapping_activations (
    id                BIGSERIAL PRIMARY KEY,
    version           TEXT NOT NULL REFERENCES rbac_mapping_store (version),
    -- The version active before this one (NULL: the first activation).
    previous_version  TEXT NULL REFERENCES rbac_mapping_store (version),
    -- 'push', 'activate' or 'rollback'.
    kind              TEXT NOT NULL,
    activated_by      TEXT NOT NULL DEFAULT current_user,
    actor             TEXT NULL,
    activated_at_utc  TIMESTAMPTZ NOT NULL DEFAULT now(),
    message           TEXT NULL
);

-- Append-only: history and rollback rely on every row staying as written.
CREATE OR REPLACE FUNCTION rbac_mapping_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: push a new version or activate another one', TG_TABLE_NAME;
END;
$$;

DROP TRIGGER IF EXISTS rbac_mapping_append_only ON rbac_mapping_store;
CREATE TRIGGER rbac_mapping_append_only BEFORE UPDATE OR DELETE ON rbac_mapping_store
    FOR EACH ROW EXECUTE FUNCTION rbac_mapping_append_only();
DROP TRIGGER IF EXISTS rbac_mapping_append_only ON rbac_mapping_activations;
CREATE TRIGGER rbac_mapping_append_only BEFORE UPDATE OR DELETE ON rbac_mapping_activations
    FOR EACH ROW EXECUTE FUNCTION rbac_mapping_append_only();

-- An activation wakes every gateway's change feed at once (without it, the feed's next poll
-- finds it within 250 ms). No rbac_change_log row: an activation changes no cached session.
CREATE OR REPLACE FUNCTION rbac_mapping_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('rbac_gateway_changes', 'rbac_mapping_activations');
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS rbac_mapping_notify ON rbac_mapping_activations;
CREATE TRIGGER rbac_mapping_notify AFTER INSERT ON rbac_mapping_activations
    FOR EACH STATEMENT EXECUTE FUNCTION rbac_mapping_notify();
