-- One round trip per database step (issue 51): a cold request's whole lookup, session ->
-- admin -> effective roles and permissions, is one call of rbac_gateway_session_principal, and
-- a rule with customer_param reads the live ticket grants with one call of
-- rbac_gateway_ticket_grants. The gateway sends each call as one simple query with its values
-- written in (src/stores/sql_text.rs): no prepared statement is left on a server connection a
-- transaction pooler may hand to another client (issue 44), and a PL/pgSQL function's plans are
-- kept by the server connection that ran it, so the lookup is not planned on every call.
--
-- Changing the algorithm: a new migration with CREATE OR REPLACE FUNCTION (never edit this one).
-- EXECUTE is granted to PUBLIC, as for every new function; deploy/mapping-grants.sql grants it
-- to the gateway's role too, for databases whose default privileges revoke it.

-- The live session whose cookie hashes to p_token_sha256 (not revoked, not expired), and its
-- admin's principal as rbac_gateway_principal (0011) resolves it; no row when there is no such
-- session.
CREATE OR REPLACE FUNCTION rbac_gateway_session_principal(p_token_sha256 TEXT, p_requires_alert BOOLEAN)
RETURNS TABLE (
    admin_id TEXT,
    seconds_left FLOAT8,
    roles TEXT[],
    permissions TEXT[],
    break_glass_seconds FLOAT8,
    break_glass_until TIMESTAMPTZ
)
LANGUAGE plpgsql STABLE AS $fn$
#variable_conflict use_column
DECLARE
    v_admin TEXT;
    v_left FLOAT8;
BEGIN
    SELECT s.admin_id, EXTRACT(EPOCH FROM (s.expires_at_utc - now()))::float8
      INTO v_admin, v_left
      FROM admin_sessions s
     WHERE s.token_sha256 = p_token_sha256 AND s.revoked_at_utc IS NULL AND s.expires_at_utc > now();
    IF NOT FOUND THEN
        RETURN;
    END IF;
    RETURN QUERY
    SELECT v_admin, v_left, p.roles, p.permissions, p.break_glass_seconds, p.break_glass_until
      FROM rbac_gateway_principal(v_admin, p_requires_alert) p;
END
$fn$;

-- An admin's live ticket grants for one customer (004 §5), inheritance expanded, restricted to
-- p_only tickets when not NULL: the roles and permissions they add, and "ticket role" pairs.
CREATE OR REPLACE FUNCTION rbac_gateway_ticket_grants(p_admin_id TEXT, p_customer_id INTEGER, p_only TEXT[])
RETURNS TABLE (
    roles TEXT[],
    permissions TEXT[],
    tickets TEXT[]
)
LANGUAGE plpgsql STABLE AS $fn$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH RECURSIVE
    t AS (
        SELECT tg.role_id, tg.ticket_id FROM rbac_ticket_grants tg
        WHERE tg.user_id = p_admin_id AND tg.customer_id = p_customer_id AND tg.revoked_at_utc IS NULL
          AND (tg.expires_at_utc IS NULL OR tg.expires_at_utc > now())
          AND (p_only IS NULL OR tg.ticket_id = ANY(p_only))
    ),
    expanded(role_id) AS (
        SELECT t.role_id FROM t
        UNION
        SELECT ri.parent_role_id FROM rbac_role_inheritance ri JOIN expanded e ON ri.child_role_id = e.role_id
    )
    SELECT
        COALESCE((SELECT array_agg(r.name ORDER BY r.name) FROM rbac_roles r WHERE r.id IN (SELECT e.role_id FROM expanded e)), '{}'),
        COALESCE((SELECT array_agg(DISTINCT p.name ORDER BY p.name) FROM rbac_role_permissions rp
                  JOIN rbac_permissions p ON p.id = rp.permission_id WHERE rp.role_id IN (SELECT e.role_id FROM expanded e)), '{}'),
        COALESCE((SELECT array_agg(t.ticket_id || ' ' || r.name ORDER BY t.ticket_id) FROM t JOIN rbac_roles r ON r.id = t.role_id), '{}');
END
$fn$;
