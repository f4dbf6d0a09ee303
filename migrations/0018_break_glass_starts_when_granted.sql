-- A break-glass session starts when it was granted (I-4: "4h max").
--
-- 0011 counted a row as active while least(expires_at_utc, granted_at_utc + 4 hours) lay ahead,
-- and never asked whether granted_at_utc had come: a row granted 20 hours from now and expiring
-- in 24 (a clock that runs ahead, a hand-written row, a Console bug) granted the break-glass
-- group's roles at once and for 24 hours, past the 4-hour cap. Now a row counts from
-- granted_at_utc, the text of `break_glass_started!()` in src/stores/identity.rs (a unit test
-- there holds them equal); the body is 0011's otherwise unchanged. A principal resolved before
-- such a row starts is cached without it (fail closed) until the cache's TTL or the next
-- change to the admin's rows.
--
-- tests/api/identity.rs: break_glass_ends_four_hours_after_it_was_granted_whatever_its_expiry.
--
-- Changing the algorithm: a new migration with CREATE OR REPLACE FUNCTION (never edit this one).

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
          -- I-4: a session starts when it was granted; a row dated later grants nothing yet.
          AND b.granted_at_utc <= now()
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
