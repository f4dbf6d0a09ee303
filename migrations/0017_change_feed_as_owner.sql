-- The functions the gateway's triggers on Console's tables run (0004's change feed, 0007's
-- break-glass record) run as their owner, and nothing a caller can create changes what their
-- names mean.
--
-- 1. rbac_gateway_log_change ran as the role that wrote Console's table: its INSERT into
--    rbac_change_log (and that table's sequence) was checked against Console's own database
--    role, which has no grant on the gateway's tables, so once `rbac-gateway migrate` had run,
--    every write Console made to a watched table as a role other than the tables' owner (a
--    login's admin_sessions row, a group change) failed with "permission denied for sequence
--    rbac_change_log_id_seq". Tests ran as a superuser and never saw it. It is now SECURITY
--    DEFINER, as 0007's functions are: Console's role needs no grant on rbac_change_log, and a
--    change that cannot be recorded still fails with the write (never applied unannounced).
--
-- 2. A function that runs as its owner must not let the caller choose what its names mean.
--    0007's `SET search_path FROM CURRENT` kept the migration's path ("$user", public): without
--    pg_temp named, PostgreSQL searches the caller's temporary schema first for tables, so a
--    role that may write a watched table could create a temporary rbac_change_log or
--    rbac_gateway_group_changes (with a trigger of its own) and have it written, and run, as the
--    owner. And with public on the path, a role that may create in public could define a
--    function that matches a call better than the built-in (pg_notify(text, name) beats
--    pg_catalog's (text, text) for TG_TABLE_NAME) and have it run as the owner. So the path is
--    now pg_catalog and then pg_temp (functions are never looked up in pg_temp), and every
--    table and function of the gateway's is named with its schema: the migration's, written in
--    where `@s.` stands below. The bodies are 0004's and 0007's otherwise unchanged.
--
-- tests/api/coherence.rs writes as Console's role with a temporary rbac_change_log and a
-- pg_notify(text, name) of its own in public; `check --database-url` names a function whose
-- path is not exactly pg_catalog, pg_temp or that does not run as its owner.
--
-- Changing them: a new migration with CREATE OR REPLACE FUNCTION (never edit this one).
DO $migration$
BEGIN
    EXECUTE replace($sql$
CREATE OR REPLACE FUNCTION @s.rbac_gateway_log_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    col text := TG_ARGV[0];
    r jsonb;
BEGIN
    IF TG_LEVEL = 'STATEMENT' OR col IS NULL THEN
        INSERT INTO @s.rbac_change_log (table_name) VALUES (TG_TABLE_NAME);
    ELSE
        FOREACH r IN ARRAY ARRAY[
            CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END,
            CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END
        ] LOOP
            CONTINUE WHEN r IS NULL;
            INSERT INTO @s.rbac_change_log (table_name, admin_id, token_sha256)
            VALUES (TG_TABLE_NAME, r ->> col, r ->> 'token_sha256');
        END LOOP;
    END IF;
    PERFORM pg_notify('rbac_gateway_changes', TG_TABLE_NAME);
    RETURN NULL;
END;
$fn$;

CREATE OR REPLACE FUNCTION @s.rbac_gateway_record_group_change(what text, tbl text, op text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    w text;
BEGIN
    SELECT format('%s (declared by %s, until %s UTC)', d.reason, d.declared_by,
                  to_char(d.ends_at_utc AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'))
      INTO w
      FROM @s.rbac_gateway_deploy_windows d
     WHERE clock_timestamp() >= d.starts_at_utc AND clock_timestamp() < d.ends_at_utc
     ORDER BY d.id DESC LIMIT 1;
    INSERT INTO @s.rbac_gateway_group_changes (what, table_name, operation, deploy_window)
    VALUES (what, tbl, op, w);
END;
$fn$;

-- Every role the break-glass group holds, after inheritance (the child holds what its parents grant).
CREATE OR REPLACE FUNCTION @s.rbac_gateway_break_glass_roles() RETURNS TABLE (role_id text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
    WITH RECURSIVE e(role_id) AS (
        SELECT gr.role_id FROM @s.rbac_group_roles gr JOIN @s.rbac_groups g ON g.id = gr.group_id
         WHERE g.name = 'break-glass'
        UNION
        SELECT ri.parent_role_id FROM @s.rbac_role_inheritance ri JOIN e ON ri.child_role_id = e.role_id
    )
    SELECT role_id FROM e;
$fn$;

CREATE OR REPLACE FUNCTION @s.rbac_gateway_break_glass_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    bg   text;
    role text;
    what text;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM @s.rbac_gateway_record_group_change(
            format('TRUNCATE of %s (what the break-glass group grants may have changed)', TG_TABLE_NAME),
            TG_TABLE_NAME, TG_OP);
        RETURN NULL;
    END IF;
    SELECT id INTO bg FROM @s.rbac_groups WHERE name = 'break-glass';
    IF TG_TABLE_NAME = 'rbac_group_roles' THEN
        IF TG_OP = 'INSERT' AND NEW.group_id = bg THEN
            what := format('role %s added to the break-glass group',
                           coalesce((SELECT name FROM @s.rbac_roles WHERE id = NEW.role_id), 'id ' || NEW.role_id));
        ELSIF TG_OP = 'DELETE' AND OLD.group_id = bg THEN
            what := format('role %s removed from the break-glass group',
                           coalesce((SELECT name FROM @s.rbac_roles WHERE id = OLD.role_id), 'id ' || OLD.role_id || ' (deleted)'));
        ELSIF TG_OP = 'UPDATE' AND (OLD.group_id = bg OR NEW.group_id = bg)
              AND (OLD.group_id, OLD.role_id) IS DISTINCT FROM (NEW.group_id, NEW.role_id) THEN
            what := format('a break-glass group role row changed: role %s in group %s became role %s in group %s',
                           coalesce((SELECT name FROM @s.rbac_roles WHERE id = OLD.role_id), OLD.role_id),
                           coalesce((SELECT name FROM @s.rbac_groups WHERE id = OLD.group_id), OLD.group_id),
                           coalesce((SELECT name FROM @s.rbac_roles WHERE id = NEW.role_id), NEW.role_id),
                           coalesce((SELECT name FROM @s.rbac_groups WHERE id = NEW.group_id), NEW.group_id));
        END IF;
    ELSIF TG_TABLE_NAME = 'rbac_role_inheritance' THEN
        IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.child_role_id IN (SELECT role_id FROM @s.rbac_gateway_break_glass_roles()) THEN
            what := format('role %s (held by the break-glass group) now inherits role %s',
                           (SELECT name FROM @s.rbac_roles WHERE id = NEW.child_role_id),
                           (SELECT name FROM @s.rbac_roles WHERE id = NEW.parent_role_id));
        END IF;
        IF TG_OP IN ('DELETE', 'UPDATE') AND OLD.child_role_id IN (SELECT role_id FROM @s.rbac_gateway_break_glass_roles()) THEN
            what := concat_ws('; ', what, format('role %s (held by the break-glass group) no longer inherits role %s',
                           (SELECT name FROM @s.rbac_roles WHERE id = OLD.child_role_id),
                           coalesce((SELECT name FROM @s.rbac_roles WHERE id = OLD.parent_role_id), 'id ' || OLD.parent_role_id || ' (deleted)')));
        END IF;
    ELSIF TG_TABLE_NAME = 'rbac_role_permissions' THEN
        IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.role_id IN (SELECT role_id FROM @s.rbac_gateway_break_glass_roles()) THEN
            what := format('permission %s granted to role %s (held by the break-glass group)',
                           (SELECT name FROM @s.rbac_permissions WHERE id = NEW.permission_id),
                           (SELECT name FROM @s.rbac_roles WHERE id = NEW.role_id));
        END IF;
        IF TG_OP IN ('DELETE', 'UPDATE') AND OLD.role_id IN (SELECT role_id FROM @s.rbac_gateway_break_glass_roles()) THEN
            what := concat_ws('; ', what, format('permission %s withdrawn from role %s (held by the break-glass group)',
                           coalesce((SELECT name FROM @s.rbac_permissions WHERE id = OLD.permission_id), 'id ' || OLD.permission_id || ' (deleted)'),
                           (SELECT name FROM @s.rbac_roles WHERE id = OLD.role_id)));
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
           AND NEW.id IN (SELECT role_id FROM @s.rbac_gateway_break_glass_roles()) THEN
            what := format('role %s (held by the break-glass group) renamed to %s', OLD.name, NEW.name);
        END IF;
    ELSIF TG_TABLE_NAME = 'rbac_permissions' THEN
        IF TG_OP = 'UPDATE' AND OLD.name IS DISTINCT FROM NEW.name
           AND EXISTS (SELECT 1 FROM @s.rbac_role_permissions rp
                        WHERE rp.permission_id = NEW.id
                          AND rp.role_id IN (SELECT role_id FROM @s.rbac_gateway_break_glass_roles())) THEN
            what := format('permission %s (granted by the break-glass group) renamed to %s', OLD.name, NEW.name);
        END IF;
    ELSIF TG_TABLE_NAME = 'rbac_user_groups' THEN
        IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.group_id = bg
           AND (TG_OP = 'INSERT' OR OLD.group_id IS DISTINCT FROM bg OR OLD.user_id <> NEW.user_id) THEN
            what := format('admin %s (%s) made a permanent member of the break-glass group',
                           coalesce((SELECT email FROM @s.admins WHERE id = NEW.user_id), '?'), NEW.user_id);
        END IF;
        IF TG_OP IN ('DELETE', 'UPDATE') AND OLD.group_id = bg
           AND (TG_OP = 'DELETE' OR NEW.group_id IS DISTINCT FROM bg OR OLD.user_id <> NEW.user_id) THEN
            what := concat_ws('; ', what, format('admin %s (%s) no longer a permanent member of the break-glass group',
                           coalesce((SELECT email FROM @s.admins WHERE id = OLD.user_id), '?'), OLD.user_id));
        END IF;
    END IF;
    IF what IS NOT NULL AND what <> '' THEN
        PERFORM @s.rbac_gateway_record_group_change(what, TG_TABLE_NAME, TG_OP);
    END IF;
    RETURN NULL;
END;
$fn$;

$sql$, '@s.', quote_ident(current_schema()) || '.');
END
$migration$;
