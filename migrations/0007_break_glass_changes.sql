-- Break-glass group changes alerted from the change itself (issue 40), not from a periodic diff.
--
-- Triggers on the catalogue tables record, in the same transaction as the change, one row per
-- changed row that alters what the `break-glass` group grants: its roles (rbac_group_roles),
-- the inheritance and permissions of every role it holds after inheritance, renames of those
-- roles and permissions, the group itself (created, renamed, deleted), its permanent members
-- (rbac_user_groups), and any TRUNCATE of those tables. A change that is rolled back leaves no
-- row; a committed one always does, however soon it is undone. The gateways' alert pass turns
-- the rows of each transaction into one alert (`composition:<txid>`), exactly once across
-- replicas, and delivers it.
--
-- The functions run as their owner (SECURITY DEFINER): Console's database role needs no grant on
-- the gateway's tables for its changes to be recorded, and a change that cannot be recorded
-- fails (it is never applied unalerted).

-- A declared deploy window: changes inside one are recorded and alerted "during deploy"
-- (004 §6: "outside a scheduled deploy event"), never dropped. Console's release step inserts
-- a row; a window lasts at most 6 hours.
CREATE TABLE IF NOT EXISTS rbac_gateway_deploy_windows (
    id             BIGSERIAL PRIMARY KEY,
    starts_at_utc  TIMESTAMPTZ NOT NULL DEFAULT now(),
    ends_at_utc    TIMESTAMPTZ NOT NULL,
    declared_by    TEXT NOT NULL,
    reason         TEXT NOT NULL,
    created_at_utc TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT rbac_gateway_deploy_window_bounded
        CHECK (ends_at_utc > starts_at_utc AND ends_at_utc <= starts_at_utc + interval '6 hours')
);

-- The outbox: one row per changed row, written by the triggers below.
CREATE TABLE IF NOT EXISTS rbac_gateway_group_changes (
    id             BIGSERIAL PRIMARY KEY,
    txid           xid8 NOT NULL DEFAULT pg_current_xact_id(),
    what           TEXT NOT NULL,
    table_name     TEXT NOT NULL,
    operation      TEXT NOT NULL,
    -- who: the database login, and what Console says when it sets `rbac_gateway.actor`
    -- (SET LOCAL rbac_gateway.actor = '<admin id or email>') before the change
    db_user        TEXT NOT NULL DEFAULT session_user,
    actor          TEXT NULL DEFAULT nullif(current_setting('rbac_gateway.actor', true), ''),
    application    TEXT NULL DEFAULT nullif(current_setting('application_name', true), ''),
    client_addr    TEXT NULL DEFAULT host(inet_client_addr()),
    changed_at_utc TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    -- the deploy window the change fell in (its description), NULL outside any
    deploy_window  TEXT NULL,
    -- set by the alert pass: the alert this change went into
    alert_key      TEXT NULL
);
CREATE INDEX IF NOT EXISTS idx_rggc_unalerted ON rbac_gateway_group_changes (id) WHERE alert_key IS NULL;

-- The daily snapshot (the second net, RV-12): what the group granted, once a day.
CREATE TABLE IF NOT EXISTS rbac_gateway_break_glass_snapshots (
    taken_at_utc TIMESTAMPTZ PRIMARY KEY DEFAULT now(),
    roles        TEXT[] NOT NULL,
    permissions  TEXT[] NOT NULL,
    members      TEXT[] NOT NULL
);

CREATE OR REPLACE FUNCTION rbac_gateway_record_group_change(what text, tbl text, op text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    w text;
BEGIN
    SELECT format('%s (declared by %s, until %s UTC)', d.reason, d.declared_by,
                  to_char(d.ends_at_utc AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'))
      INTO w
      FROM rbac_gateway_deploy_windows d
     WHERE clock_timestamp() >= d.starts_at_utc AND clock_timestamp() < d.ends_at_utc
     ORDER BY d.id DESC LIMIT 1;
    INSERT INTO rbac_gateway_group_changes (what, table_name, operation, deploy_window)
    VALUES (what, tbl, op, w);
END;
$$;

-- Every role the break-glass group holds, after inheritance (the child holds what its parents grant).
CREATE OR REPLACE FUNCTION rbac_gateway_break_glass_roles() RETURNS TABLE (role_id text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path FROM CURRENT AS $$
    WITH RECURSIVE e(role_id) AS (
        SELECT gr.role_id FROM rbac_group_roles gr JOIN rbac_groups g ON g.id = gr.group_id
         WHERE g.name = 'break-glass'
        UNION
        SELECT ri.parent_role_id FROM rbac_role_inheritance ri JOIN e ON ri.child_role_id = e.role_id
    )
    SELECT role_id FROM e;
$$;

CREATE OR REPLACE FUNCTION rbac_gateway_break_glass_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    bg   text;
    role text;
    what text;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM rbac_gateway_record_group_change(
            format('TRUNCATE of %s (what the break-glass group grants may have changed)', TG_TABLE_NAME),
            TG_TABLE_NAME, TG_OP);
        RETURN NULL;
    END IF;
    SELECT id INTO bg FROM rbac_groups WHERE name = 'break-glass';
    IF TG_TABLE_NAME = 'rbac_group_roles' THEN
        IF TG_OP = 'INSERT' AND NEW.group_id = bg THEN
            what := format('role %s added to the break-glass group',
                           coalesce((SELECT name FROM rbac_roles WHERE id = NEW.role_id), 'id ' || NEW.role_id));
        ELSIF TG_OP = 'DELETE' AND OLD.group_id = bg THEN
            what := format('role %s removed from the break-glass group',
                           coalesce((SELECT name FROM rbac_roles WHERE id = OLD.role_id), 'id ' || OLD.role_id || ' (deleted)'));
        ELSIF TG_OP = 'UPDATE' AND (OLD.group_id = bg OR NEW.group_id = bg)
              AND (OLD.group_id, OLD.role_id) IS DISTINCT FROM (NEW.group_id, NEW.role_id) THEN
            what := format('a break-glass group role row changed: role %s in group %s became role %s in group %s',
                           coalesce((SELECT name FROM rbac_roles WHERE id = OLD.role_id), OLD.role_id),
                           coalesce((SELECT name FROM rbac_groups WHERE id = OLD.group_id), OLD.group_id),
                           coalesce((SELECT name FROM rbac_roles WHERE id = NEW.role_id), NEW.role_id),
                           coalesce((SELECT name FROM rbac_groups WHERE id = NEW.group_id), NEW.group_id));
        END IF;
    ELSIF TG_TABLE_NAME = 'rbac_role_inheritance' THEN
        IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.child_role_id IN (SELECT role_id FROM rbac_gateway_break_glass_roles()) THEN
            what := format('role %s (held by the break-glass group) now inherits role %s',
                           (SELECT name FROM rbac_roles WHERE id = NEW.child_role_id),
                           (SELECT name FROM rbac_roles WHERE id = NEW.parent_role_id));
        END IF;
        IF TG_OP IN ('DELETE', 'UPDATE') AND OLD.child_role_id IN (SELECT role_id FROM rbac_gateway_break_glass_roles()) THEN
            what := concat_ws('; ', what, format('role %s (held by the break-glass group) no longer inherits role %s',
                           (SELECT name FROM rbac_roles WHERE id = OLD.child_role_id),
                           coalesce((SELECT name FROM rbac_roles WHERE id = OLD.parent_role_id), 'id ' || OLD.parent_role_id || ' (deleted)')));
        END IF;
    ELSIF TG_TABLE_NAME = 'rbac_role_permissions' THEN
        IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.role_id IN (SELECT role_id FROM rbac_gateway_break_glass_roles()) THEN
            what := format('permission %s granted to role %s (held by the break-glass group)',
                           (SELECT name FROM rbac_permissions WHERE id = NEW.permission_id),
                           (SELECT name FROM rbac_roles WHERE id = NEW.role_id));
        END IF;
        IF TG_OP IN ('DELETE', 'UPDATE') AND OLD.role_id IN (SELECT role_id FROM rbac_gateway_break_glass_roles()) THEN
            what := concat_ws('; ', what, format('permission %s withdrawn from role %s (held by the break-glass group)',
                           coalesce((SELECT name FROM rbac_permissions WHERE id = OLD.permission_id), 'id ' || OLD.permission_id || ' (deleted)'),
                           (SELECT name FROM rbac_roles WHERE id = OLD.role_id)));
        END IF;
    ELSIF TG_TABLE_NAME = 'rbac_groups' THEN
        IF TG_OP = 'INSERT' AND NEW.name = 'break-glass' THEN
            what := 'a group named break-glass was created';
        ELSIF TG_OP = 'DELETE' AND OLD.name = 'break-glass' THEN
            what := 'the break-glass group was deleted (with its roles)';
        ELSIF TG_OP = 'UPDATE' AND OLD.name IS DISTINCT FROM NEW.name AND 'break-glass' IN (OLD.name, NEW.name) THEN
            what := format('group %s renamed to %s', OLD.name, NEW.name);
        END IF;
    ELSIF TG_TABLE_NAME = 'rbac_roles' THEN
        IF TG_OP = 'UPDATE' AND OLD.name IS DISTINCT FROM NEW.name
           AND NEW.id IN (SELECT role_id FROM rbac_gateway_break_glass_roles()) THEN
            what := format('role %s (held by the break-glass group) renamed to %s', OLD.name, NEW.name);
        END IF;
    ELSIF TG_TABLE_NAME = 'rbac_permissions' THEN
        IF TG_OP = 'UPDATE' AND OLD.name IS DISTINCT FROM NEW.name
           AND EXISTS (SELECT 1 FROM rbac_role_permissions rp
                        WHERE rp.permission_id = NEW.id
                          AND rp.role_id IN (SELECT role_id FROM rbac_gateway_break_glass_roles())) THEN
            what := format('permission %s (granted by the break-glass group) renamed to %s', OLD.name, NEW.name);
        END IF;
    ELSIF TG_TABLE_NAME = 'rbac_user_groups' THEN
        IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.group_id = bg
           AND (TG_OP = 'INSERT' OR OLD.group_id IS DISTINCT FROM bg OR OLD.user_id <> NEW.user_id) THEN
            what := format('admin %s (%s) made a permanent member of the break-glass group',
                           coalesce((SELECT email FROM admins WHERE id = NEW.user_id), '?'), NEW.user_id);
        END IF;
        IF TG_OP IN ('DELETE', 'UPDATE') AND OLD.group_id = bg
           AND (TG_OP = 'DELETE' OR NEW.group_id IS DISTINCT FROM bg OR OLD.user_id <> NEW.user_id) THEN
            what := concat_ws('; ', what, format('admin %s (%s) no longer a permanent member of the break-glass group',
                           coalesce((SELECT email FROM admins WHERE id = OLD.user_id), '?'), OLD.user_id));
        END IF;
    END IF;
    IF what IS NOT NULL AND what <> '' THEN
        PERFORM rbac_gateway_record_group_change(what, TG_TABLE_NAME, TG_OP);
    END IF;
    RETURN NULL;
END;
$$;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['rbac_group_roles', 'rbac_role_inheritance', 'rbac_role_permissions',
                             'rbac_groups', 'rbac_roles', 'rbac_permissions', 'rbac_user_groups'] LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS rbac_gateway_break_glass ON %I', t);
        EXECUTE format('DROP TRIGGER IF EXISTS rbac_gateway_break_glass_truncate ON %I', t);
        EXECUTE format('CREATE TRIGGER rbac_gateway_break_glass AFTER INSERT OR UPDATE OR DELETE ON %I '
                       'FOR EACH ROW EXECUTE FUNCTION rbac_gateway_break_glass_change()', t);
        EXECUTE format('CREATE TRIGGER rbac_gateway_break_glass_truncate AFTER TRUNCATE ON %I '
                       'FOR EACH STATEMENT EXECUTE FUNCTION rbac_gateway_break_glass_change()', t);
    END LOOP;
END;
$$;

-- The sweep's per-item failures (issue 40): a grant or break-glass session whose audit row or
-- revocation failed, retried on every sweep; `/readyz` names those that failed N sweeps.
CREATE TABLE IF NOT EXISTS rbac_gateway_sweep_failures (
    item            TEXT PRIMARY KEY,   -- 'grant:<id>' or 'break_glass:<session id>'
    failures        INTEGER NOT NULL,
    last_error      TEXT NOT NULL,
    first_failed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_failed_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
