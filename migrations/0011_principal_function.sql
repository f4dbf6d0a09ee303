-- The resolution algorithm of 004 §3.4 (a principal's effective roles and permissions, and
-- its live break-glass session) as a function, so that its plan is kept by each server
-- connection and shared by every client of it.
--
-- The gateway sends no named prepared statement (a transaction pooler such as PgBouncer would
-- hand it to another client: issue 44), so the statement as text was planned on every lookup:
-- 1.1-1.4 ms of the server's time per principal against 0.33-0.38 ms for this function once
-- PL/pgSQL keeps a generic plan (psql `\timing`, 2,000 admins; docs/performance-log.md,
-- 2026-11-26). A PL/pgSQL plan lives in the server connection that ran it and belongs to no
-- client, so it is safe behind a pooler in any mode.
--
-- `UNION` (not `UNION ALL`) makes the recursive walk stop on a cycle in rbac_role_inheritance:
-- it only ever adds new role ids. A break-glass session ends at
-- least(b.expires_at_utc, b.granted_at_utc + interval '4 hours') (I-4: "1h default, 4h max"),
-- the text of `break_glass_end!()` in src/stores/identity.rs (a unit test there holds them
-- equal). `p_requires_alert` is `--break-glass-requires-alert`: a session counts only once its
-- alert was delivered.
--
-- Changing the algorithm: a new migration with CREATE OR REPLACE FUNCTION (never edit this one).
-- EXECUTE is granted to PUBLIC, as for every new function; deploy/mapping-grants.sql grants it
-- to the gateway's role too, for databases whose default privileges revoke it.

CREATE OR REPLACE FUNCTION rbac_gateway_principal(p_admin_id TEXT, p_requires_alert BOOLEAN)
RETURNS TABLE (
    roles TEXT[],
    permissions TEXT[],
    break_glass_seconds FLOAT8,
    break_glass_until TIMESTAMPTZ
)
LANGUAGE plpgsql STABLE AS $fn$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH RECURSIVE
    bg AS (
        -- I-4: a session ends 4 hours after it was granted at the latest.
        SELECT min(least(b.expires_at_utc, b.granted_at_utc + interval '4 hours')) AS until,
               max(least(b.expires_at_utc, b.granted_at_utc + interval '4 hours')) AS last
        FROM rbac_break_glass_sessions b
        WHERE b.user_id = p_admin_id AND b.revoked_at_utc IS NULL
          AND least(b.expires_at_utc, b.granted_at_utc + interval '4 hours') > now()
          -- --break-glass-requires-alert: a session counts once its alert was delivered (I-4).
          AND (NOT p_requires_alert OR EXISTS (SELECT 1 FROM rbac_gateway_alerts a
                                       WHERE a.key = 'break_glass:' || b.id AND a.delivered_at_utc IS NOT NULL))
    ),
    grp AS (
        SELECT ug.group_id AS id FROM rbac_user_groups ug WHERE ug.user_id = p_admin_id
        UNION
        SELECT g.id FROM rbac_groups g, bg WHERE g.name = 'break-glass' AND bg.until IS NOT NULL
    ),
    expanded(role_id) AS (
        SELECT gr.role_id FROM rbac_group_roles gr JOIN grp ON grp.id = gr.group_id
        UNION
        SELECT ri.parent_role_id FROM rbac_role_inheritance ri JOIN expanded e ON ri.child_role_id = e.role_id
    )
    SELECT
        COALESCE((SELECT array_agg(r.name ORDER BY r.name) FROM rbac_roles r WHERE r.id IN (SELECT role_id FROM expanded)), '{}') AS roles,
        COALESCE((SELECT array_agg(DISTINCT p.name ORDER BY p.name) FROM rbac_role_permissions rp
                  JOIN rbac_permissions p ON p.id = rp.permission_id
                  WHERE rp.role_id IN (SELECT role_id FROM expanded)), '{}') AS permissions,
        (SELECT EXTRACT(EPOCH FROM (until - now()))::float8 FROM bg) AS break_glass_seconds,
        (SELECT last FROM bg) AS break_glass_until;
END
$fn$;
