-- The change feed (issue 5): every change that can alter a cached authorization answer is
-- recorded durably, then announced with NOTIFY. Gateways LISTEN for a prompt wake-up and read
-- the log by cursor, so a lost notification, a dropped connection or a PostgreSQL restart
-- never leaves a stale cache entry: they catch up from the log.
--
-- `txid` lets a reader know when it has seen everything: every row of a transaction older than
-- the snapshot's xmin is visible, so "read rows with txid >= previous xmin" misses nothing,
-- whatever order concurrent transactions commit in.

CREATE TABLE IF NOT EXISTS rbac_change_log (
    id             BIGSERIAL PRIMARY KEY,
    txid           xid8 NOT NULL DEFAULT pg_current_xact_id(),
    table_name     TEXT NOT NULL,
    -- the admin whose answers change; NULL: catalogue change, everyone is affected
    admin_id       TEXT NULL,
    -- for admin_sessions: which session (its token hash) changed
    token_sha256   TEXT NULL,
    created_at_utc TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_rbac_change_log_txid ON rbac_change_log (txid);
CREATE INDEX IF NOT EXISTS idx_rbac_change_log_created ON rbac_change_log (created_at_utc);

-- Row-level: TG_ARGV[0] names the column holding the affected admin. Statement-level (no
-- argument): a catalogue change, everyone is affected.
CREATE OR REPLACE FUNCTION rbac_gateway_log_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    col text := TG_ARGV[0];
    r jsonb;
BEGIN
    IF TG_LEVEL = 'STATEMENT' OR col IS NULL THEN
        INSERT INTO rbac_change_log (table_name) VALUES (TG_TABLE_NAME);
    ELSE
        FOREACH r IN ARRAY ARRAY[
            CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END,
            CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END
        ] LOOP
            CONTINUE WHEN r IS NULL;
            INSERT INTO rbac_change_log (table_name, admin_id, token_sha256)
            VALUES (TG_TABLE_NAME, r ->> col, r ->> 'token_sha256');
        END LOOP;
    END IF;
    PERFORM pg_notify('rbac_gateway_changes', TG_TABLE_NAME);
    RETURN NULL;
END;
$$;

DO $$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT * FROM (VALUES
        ('rbac_user_groups', 'user_id'),
        ('rbac_break_glass_sessions', 'user_id'),
        ('rbac_ticket_grants', 'user_id'),
        ('admin_sessions', 'admin_id'),
        ('admins', 'id'),
        ('rbac_group_roles', NULL),
        ('rbac_role_inheritance', NULL),
        ('rbac_role_permissions', NULL),
        ('rbac_roles', NULL),
        ('rbac_groups', NULL)
    ) AS v(tbl, col) LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS rbac_gateway_change ON %I', t.tbl);
        EXECUTE format('DROP TRIGGER IF EXISTS rbac_gateway_change_truncate ON %I', t.tbl);
        IF t.col IS NULL THEN
            EXECUTE format('CREATE TRIGGER rbac_gateway_change AFTER INSERT OR UPDATE OR DELETE ON %I '
                           'FOR EACH STATEMENT EXECUTE FUNCTION rbac_gateway_log_change()', t.tbl);
        ELSE
            EXECUTE format('CREATE TRIGGER rbac_gateway_change AFTER INSERT OR UPDATE OR DELETE ON %I '
                           'FOR EACH ROW EXECUTE FUNCTION rbac_gateway_log_change(%L)', t.tbl, t.col);
        END IF;
        EXECUTE format('CREATE TRIGGER rbac_gateway_change_truncate AFTER TRUNCATE ON %I '
                       'FOR EACH STATEMENT EXECUTE FUNCTION rbac_gateway_log_change()', t.tbl);
    END LOOP;
END;
$$;
