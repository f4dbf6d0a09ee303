-- The trust boundary in the shared database (issue 66): no function of the gateway's resolves a
-- name through a schema another role may create in, and none is PUBLIC's to run.
--
-- 1. The lookups (0011/0018's principal, 0012's functions, 0013's procedure, 0014/0015's batch)
--    and the three trigger functions of 0001 and 0009 ran with the caller's search_path. A role
--    that may create in the schema (Console's, where it owns the schema or PostgreSQL is older
--    than 15) could define there a function or operator that matches a call better than the
--    built-in (an exact-type unnest(text[]) beats pg_catalog's unnest(anyarray); an
--    array_agg(text) beats array_agg(anynonarray)) and have it run as the gateway's login: a
--    valid session logged out, a role added to every admin. Each is now re-created with its
--    search_path pinned to pg_catalog, then pg_temp (functions are never looked up there), and
--    every table and function of the gateway's named with its schema: the migration's, written
--    in where `@s.` stands below, as 0017 does. The bodies are otherwise unchanged (0018's
--    principal, 0012's functions, 0013's procedure, 0014's batch with 0015's generic plan).
-- 2. A new function is PUBLIC's to execute by default. Every function of the gateway's is now
--    executable only by its owner and the roles deploy/gateway-grants.sql and
--    deploy/mapping-grants.sql name (granted again below where those roles exist): any login
--    could call rbac_gateway_record_group_change (SECURITY DEFINER) and have a forged
--    break-glass alert delivered. Trigger functions need no EXECUTE to fire.
--
-- The calls this migration makes itself are written pg_catalog.name(...): it runs as the
-- tables' owner. docs/design/security.md says how the gateway's own statements are pinned;
-- `check --database-url` names any function of the gateway's whose path is not pinned or that
-- PUBLIC may run; tests/api/trust_boundary.rs plants shadows and calls every function as a login
-- with no grants.
--
-- Changing a function: a new migration with CREATE OR REPLACE FUNCTION, `SET search_path =
-- pg_catalog, pg_temp`, `@s.` before every name of the gateway's, and REVOKE EXECUTE ... FROM
-- PUBLIC for a new one (never edit this one).
DO $migration$
BEGIN
    EXECUTE pg_catalog.replace($sql$
CREATE OR REPLACE FUNCTION @s.access_audit_events_append_only() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    RAISE EXCEPTION 'access_audit_events is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$fn$;

CREATE OR REPLACE FUNCTION @s.rbac_mapping_append_only() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    RAISE EXCEPTION '% is append-only: push a new version or activate another one', TG_TABLE_NAME;
END;
$fn$;

CREATE OR REPLACE FUNCTION @s.rbac_mapping_notify() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    PERFORM pg_notify('rbac_gateway_changes', 'rbac_mapping_activations');
    RETURN NULL;
END;
$fn$;

CREATE OR REPLACE FUNCTION @s.rbac_gateway_principal(p_admin_id TEXT, p_requires_alert BOOLEAN)
RETURNS TABLE (
    roles TEXT[],
    permissions TEXT[],
    break_glass_seconds FLOAT8,
    break_glass_until TIMESTAMPTZ
)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH RECURSIVE
    bg AS (
        -- I-4: a session ends 4 hours after it was granted at the latest.
        SELECT min(least(b.expires_at_utc, b.granted_at_utc + interval '4 hours')) AS until,
               max(least(b.expires_at_utc, b.granted_at_utc + interval '4 hours')) AS last
        FROM @s.rbac_break_glass_sessions b
        WHERE b.user_id = p_admin_id AND b.revoked_at_utc IS NULL
          AND least(b.expires_at_utc, b.granted_at_utc + interval '4 hours') > now()
          -- I-4: a session starts when it was granted; a row dated later grants nothing yet.
          AND b.granted_at_utc <= now()
          -- --break-glass-requires-alert: a session counts once its alert was delivered (I-4).
          AND (NOT p_requires_alert OR EXISTS (SELECT 1 FROM @s.rbac_gateway_alerts a
                                       WHERE a.key = 'break_glass:' || b.id AND a.delivered_at_utc IS NOT NULL))
    ),
    grp AS (
        SELECT ug.group_id AS id FROM @s.rbac_user_groups ug WHERE ug.user_id = p_admin_id
        UNION
        SELECT g.id FROM @s.rbac_groups g, bg WHERE g.name = 'break-glass' AND bg.until IS NOT NULL
    ),
    expanded(role_id) AS (
        SELECT gr.role_id FROM @s.rbac_group_roles gr JOIN grp ON grp.id = gr.group_id
        UNION
        SELECT ri.parent_role_id FROM @s.rbac_role_inheritance ri JOIN expanded e ON ri.child_role_id = e.role_id
    )
    SELECT
        COALESCE((SELECT array_agg(r.name ORDER BY r.name) FROM @s.rbac_roles r WHERE r.id IN (SELECT role_id FROM expanded)), '{}') AS roles,
        COALESCE((SELECT array_agg(DISTINCT p.name ORDER BY p.name) FROM @s.rbac_role_permissions rp
                  JOIN @s.rbac_permissions p ON p.id = rp.permission_id
                  WHERE rp.role_id IN (SELECT role_id FROM expanded)), '{}') AS permissions,
        (SELECT EXTRACT(EPOCH FROM (until - now()))::float8 FROM bg) AS break_glass_seconds,
        (SELECT last FROM bg) AS break_glass_until;
END
$fn$;

CREATE OR REPLACE FUNCTION @s.rbac_gateway_session_principal(p_token_sha256 TEXT, p_requires_alert BOOLEAN)
RETURNS TABLE (
    admin_id TEXT,
    seconds_left FLOAT8,
    roles TEXT[],
    permissions TEXT[],
    break_glass_seconds FLOAT8,
    break_glass_until TIMESTAMPTZ
)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
#variable_conflict use_column
DECLARE
    v_admin TEXT;
    v_left FLOAT8;
BEGIN
    SELECT s.admin_id, EXTRACT(EPOCH FROM (s.expires_at_utc - now()))::float8
      INTO v_admin, v_left
      FROM @s.admin_sessions s
     WHERE s.token_sha256 = p_token_sha256 AND s.revoked_at_utc IS NULL AND s.expires_at_utc > now();
    IF NOT FOUND THEN
        RETURN;
    END IF;
    RETURN QUERY
    SELECT v_admin, v_left, p.roles, p.permissions, p.break_glass_seconds, p.break_glass_until
      FROM @s.rbac_gateway_principal(v_admin, p_requires_alert) p;
END
$fn$;

CREATE OR REPLACE FUNCTION @s.rbac_gateway_ticket_grants(p_admin_id TEXT, p_customer_id INTEGER, p_only TEXT[])
RETURNS TABLE (
    roles TEXT[],
    permissions TEXT[],
    tickets TEXT[]
)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH RECURSIVE
    t AS (
        SELECT tg.role_id, tg.ticket_id FROM @s.rbac_ticket_grants tg
        WHERE tg.user_id = p_admin_id AND tg.customer_id = p_customer_id AND tg.revoked_at_utc IS NULL
          AND (tg.expires_at_utc IS NULL OR tg.expires_at_utc > now())
          AND (p_only IS NULL OR tg.ticket_id = ANY(p_only))
    ),
    expanded(role_id) AS (
        SELECT t.role_id FROM t
        UNION
        SELECT ri.parent_role_id FROM @s.rbac_role_inheritance ri JOIN expanded e ON ri.child_role_id = e.role_id
    )
    SELECT
        COALESCE((SELECT array_agg(r.name ORDER BY r.name) FROM @s.rbac_roles r WHERE r.id IN (SELECT e.role_id FROM expanded e)), '{}'),
        COALESCE((SELECT array_agg(DISTINCT p.name ORDER BY p.name) FROM @s.rbac_role_permissions rp
                  JOIN @s.rbac_permissions p ON p.id = rp.permission_id WHERE rp.role_id IN (SELECT e.role_id FROM expanded e)), '{}'),
        COALESCE((SELECT array_agg(t.ticket_id || ' ' || r.name ORDER BY t.ticket_id) FROM t JOIN @s.rbac_roles r ON r.id = t.role_id), '{}');
END
$fn$;

CREATE OR REPLACE PROCEDURE @s.rbac_gateway_session_lookup(
    p_token_sha256 TEXT,
    p_requires_alert BOOLEAN,
    INOUT admin_id TEXT DEFAULT NULL,
    INOUT seconds_left FLOAT8 DEFAULT NULL,
    INOUT roles TEXT[] DEFAULT NULL,
    INOUT permissions TEXT[] DEFAULT NULL,
    INOUT break_glass_seconds FLOAT8 DEFAULT NULL,
    INOUT break_glass_until TIMESTAMPTZ DEFAULT NULL
)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    SELECT s.admin_id, EXTRACT(EPOCH FROM (s.expires_at_utc - now()))::float8,
           p.roles, p.permissions, p.break_glass_seconds, p.break_glass_until
      INTO admin_id, seconds_left, roles, permissions, break_glass_seconds, break_glass_until
      FROM @s.admin_sessions s
      CROSS JOIN LATERAL @s.rbac_gateway_principal(s.admin_id, p_requires_alert) p
     WHERE s.token_sha256 = p_token_sha256 AND s.revoked_at_utc IS NULL AND s.expires_at_utc > now();
END
$fn$;

CREATE OR REPLACE FUNCTION @s.rbac_gateway_session_principals(p_hashes TEXT[], p_requires_alert BOOLEAN)
RETURNS TABLE (
    admin_id TEXT,
    seconds_left FLOAT8,
    roles TEXT[],
    permissions TEXT[],
    break_glass_seconds FLOAT8,
    break_glass_until TIMESTAMPTZ,
    token_sha256 TEXT
)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET plan_cache_mode = force_generic_plan AS $fn$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT s.admin_id, EXTRACT(EPOCH FROM (s.expires_at_utc - now()))::float8,
           p.roles, p.permissions, p.break_glass_seconds, p.break_glass_until, h
      FROM unnest(p_hashes) h
      JOIN @s.admin_sessions s ON s.token_sha256 = h AND s.revoked_at_utc IS NULL AND s.expires_at_utc > now()
      CROSS JOIN LATERAL @s.rbac_gateway_principal(s.admin_id, p_requires_alert) p;
END
$fn$;

REVOKE EXECUTE ON FUNCTION
    @s.access_audit_events_append_only(),
    @s.rbac_mapping_append_only(),
    @s.rbac_mapping_notify(),
    @s.rbac_gateway_principal(TEXT, BOOLEAN),
    @s.rbac_gateway_session_principal(TEXT, BOOLEAN),
    @s.rbac_gateway_ticket_grants(TEXT, INTEGER, TEXT[]),
    @s.rbac_gateway_session_principals(TEXT[], BOOLEAN),
    @s.rbac_gateway_log_change(),
    @s.rbac_gateway_record_group_change(TEXT, TEXT, TEXT),
    @s.rbac_gateway_break_glass_roles(),
    @s.rbac_gateway_break_glass_change(),
    @s.rbac_gateway_erase_admin(),
    @s.rbac_gateway_erase_named(TEXT, TEXT),
    @s.rbac_gateway_erase_token(TEXT, TEXT, TEXT)
    FROM PUBLIC;
REVOKE EXECUTE ON PROCEDURE
    @s.rbac_gateway_session_lookup(TEXT, BOOLEAN, TEXT, FLOAT8, TEXT[], TEXT[], FLOAT8, TIMESTAMPTZ)
    FROM PUBLIC;
$sql$, '@s.', pg_catalog.quote_ident(pg_catalog.current_schema()) OPERATOR(pg_catalog.||) '.');

    -- Where deploy/gateway-grants.sql and deploy/mapping-grants.sql ran before this release, their
    -- roles keep what they called while PUBLIC could (both files grant the same again).
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'rbac_gateway_serve') THEN
        EXECUTE pg_catalog.replace($sql$
GRANT EXECUTE ON FUNCTION
    @s.rbac_gateway_session_principals(TEXT[], BOOLEAN),
    @s.rbac_gateway_principal(TEXT, BOOLEAN),
    @s.rbac_gateway_ticket_grants(TEXT, INTEGER, TEXT[]),
    @s.rbac_gateway_break_glass_roles()
    TO rbac_gateway_serve;
$sql$, '@s.', pg_catalog.quote_ident(pg_catalog.current_schema()) OPERATOR(pg_catalog.||) '.');
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'rbac_gateway_reader') THEN
        EXECUTE pg_catalog.replace($sql$
GRANT EXECUTE ON FUNCTION
    @s.rbac_gateway_principal(TEXT, BOOLEAN),
    @s.rbac_gateway_ticket_grants(TEXT, INTEGER, TEXT[]),
    @s.rbac_gateway_session_principals(TEXT[], BOOLEAN),
    @s.rbac_gateway_session_principal(TEXT, BOOLEAN)
    TO rbac_gateway_reader;
GRANT EXECUTE ON PROCEDURE
    @s.rbac_gateway_session_lookup(TEXT, BOOLEAN, TEXT, FLOAT8, TEXT[], TEXT[], FLOAT8, TIMESTAMPTZ)
    TO rbac_gateway_reader;
$sql$, '@s.', pg_catalog.quote_ident(pg_catalog.current_schema()) OPERATOR(pg_catalog.||) '.');
    END IF;
END
$migration$;
