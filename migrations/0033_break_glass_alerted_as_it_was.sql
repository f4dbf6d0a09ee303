-- I-4: a break-glass session counts once its alert was delivered, and only as that alert told it.
-- The alert's key is the session's id, recorded once (ON CONFLICT DO NOTHING), and the lookup
-- asked only whether an alert of that id was delivered: after delivery, a session row changed
-- (given to another admin, granted again later to restart its 4 hours, its expiry moved later)
-- raised no new alert and went on counting, so one alert could keep superadmin alive for ever
-- (a review reproduced it: a row rewritten every few hours, one alert naming another admin).
--
-- Each break-glass alert now records the session as it alerted it: its admin
-- (session_user_id), its start (session_granted_at_utc) and its end, 4 hours at the most
-- (session_ends_at_utc). The principal counts a session only where those match the row (the
-- end no later); the alert pass raises the alert again, undelivered, for a row that no longer
-- matches (src/stores/alerts.rs), and the session counts again once that is delivered. A
-- session revoked and then restored as it was alerted counts as alerted.
--
-- Alerts recorded before this migration are given the session as it stands now: what they
-- alerted is not known, and a session they cover goes on counting through the upgrade. An alert
-- a gateway of the previous release records during a rolling deploy (without these columns) is
-- given the session as it stands when it is recorded, by a trigger (rbac_gateway_alert_session):
-- it counts once delivered, as it did, and is not raised again as changed.
--
-- Changing it: a new migration (never edit this one).
ALTER TABLE rbac_gateway_alerts ADD COLUMN IF NOT EXISTS session_user_id TEXT;
ALTER TABLE rbac_gateway_alerts ADD COLUMN IF NOT EXISTS session_granted_at_utc TIMESTAMPTZ;
ALTER TABLE rbac_gateway_alerts ADD COLUMN IF NOT EXISTS session_ends_at_utc TIMESTAMPTZ;

UPDATE rbac_gateway_alerts a
   SET session_user_id = b.user_id,
       session_granted_at_utc = b.granted_at_utc,
       session_ends_at_utc = least(b.expires_at_utc, b.granted_at_utc + interval '4 hours')
  FROM rbac_break_glass_sessions b
 WHERE a.key = 'break_glass:' || b.id AND a.session_user_id IS NULL;

DO $migration$
BEGIN
    EXECUTE pg_catalog.replace($sql$
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
          -- --break-glass-requires-alert: a session counts once its alert was delivered (I-4),
          -- and only as that alert told it: the same admin, the same start, no later end.
          AND (NOT p_requires_alert OR EXISTS (SELECT 1 FROM @s.rbac_gateway_alerts a
                                       WHERE a.key = 'break_glass:' || b.id AND a.delivered_at_utc IS NOT NULL
                                         AND a.session_user_id = b.user_id
                                         AND a.session_granted_at_utc = b.granted_at_utc
                                         AND least(b.expires_at_utc, b.granted_at_utc + interval '4 hours') <= a.session_ends_at_utc))
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

-- STABLE: it reads the inserting statement's snapshot, the one the alert's text was written from
-- (a VOLATILE function would read a session changed since, and record it as alerted).
CREATE OR REPLACE FUNCTION @s.rbac_gateway_alert_session() RETURNS trigger
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    IF NEW.session_user_id IS NULL AND NEW.key LIKE 'break_glass:%' THEN
        SELECT b.user_id, b.granted_at_utc, least(b.expires_at_utc, b.granted_at_utc + interval '4 hours')
          INTO NEW.session_user_id, NEW.session_granted_at_utc, NEW.session_ends_at_utc
          FROM @s.rbac_break_glass_sessions b
         WHERE b.id = substr(NEW.key, length('break_glass:') + 1);
    END IF;
    RETURN NEW;
END;
$fn$;
REVOKE EXECUTE ON FUNCTION @s.rbac_gateway_alert_session() FROM PUBLIC;
DROP TRIGGER IF EXISTS rbac_gateway_alert_session ON @s.rbac_gateway_alerts;
CREATE TRIGGER rbac_gateway_alert_session BEFORE INSERT ON @s.rbac_gateway_alerts
    FOR EACH ROW EXECUTE FUNCTION @s.rbac_gateway_alert_session();
$sql$, '@s.', pg_catalog.quote_ident(pg_catalog.current_schema()) OPERATOR(pg_catalog.||) '.');
    -- The alert pass raises a changed session's alert again (deploy/gateway-grants.sql grants
    -- the same again).
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'rbac_gateway_serve') THEN
        GRANT UPDATE (text, session_user_id, session_granted_at_utc, session_ends_at_utc)
            ON rbac_gateway_alerts TO rbac_gateway_serve;
    END IF;
END
$migration$;
