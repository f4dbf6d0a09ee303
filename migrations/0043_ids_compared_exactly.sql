-- I-4: the principal compared an admin's id with Console's columns under their collation, which
-- migration 0041 lets Console make case-blind (CREATE COLLATION ... deterministic = false, a
-- review). Under it, admin 'l' counted admin 'L''s break-glass session on the alert that named
-- 'L', and held 'L''s groups (the break-glass group's permanent membership among them, alerted
-- as 'L''s); and the alert pass's join of the sessions with admins matched both, so a session
-- given from 'L' to 'l' stopped every break-glass alert ("ON CONFLICT DO UPDATE command cannot
-- affect row a second time"). The ids are compared under the database's default collation, as
-- the gateway's own columns are and as Console's indexes on them are built, so a plan is the
-- same where Console has no collation of its own: rbac_gateway_principal here, the alert pass's
-- join and the CLI's reads in src/stores/ (break_glass_alerted!). Otherwise 0033's body.
-- tests/api/invariants.rs, a_case_blind_id_of_consoles_counts_no_other_admins_session.
-- CREATE OR REPLACE keeps the grants and drops the settings it does not state: row_security =
-- off (0034) is stated, restrict_nonsystem_relation_kind (0036) given again below where the
-- server has it.
--
-- Changing it: a new migration (never edit this one).
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
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET row_security = off AS $fn$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH RECURSIVE
    bg AS (
        -- I-4: a session ends 4 hours after it was granted at the latest.
        SELECT min(least(b.expires_at_utc, b.granted_at_utc + interval '4 hours')) AS until,
               max(least(b.expires_at_utc, b.granted_at_utc + interval '4 hours')) AS last
        FROM @s.rbac_break_glass_sessions b
        WHERE b.user_id = p_admin_id COLLATE pg_catalog."default" AND b.revoked_at_utc IS NULL
          AND least(b.expires_at_utc, b.granted_at_utc + interval '4 hours') > now()
          -- I-4: a session starts when it was granted; a row dated later grants nothing yet.
          AND b.granted_at_utc <= now()
          -- --break-glass-requires-alert: a session counts once its alert was delivered (I-4),
          -- and only as that alert told it: the same admin, the same start, no later end.
          AND (NOT p_requires_alert OR EXISTS (SELECT 1 FROM @s.rbac_gateway_alerts a
                                       WHERE a.key = 'break_glass:' || b.id AND a.delivered_at_utc IS NOT NULL
                                         AND a.session_user_id = b.user_id COLLATE pg_catalog."default"
                                         AND a.session_granted_at_utc = b.granted_at_utc
                                         AND least(b.expires_at_utc, b.granted_at_utc + interval '4 hours') <= a.session_ends_at_utc))
    ),
    grp AS (
        SELECT ug.group_id AS id FROM @s.rbac_user_groups ug WHERE ug.user_id = p_admin_id COLLATE pg_catalog."default"
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
$sql$, '@s.', pg_catalog.quote_ident(pg_catalog.current_schema()) OPERATOR(pg_catalog.||) '.');
    IF pg_catalog.current_setting('restrict_nonsystem_relation_kind', true) IS NOT NULL THEN
        EXECUTE pg_catalog.replace(
            $sql$ALTER ROUTINE @s.rbac_gateway_principal(text, boolean) SET restrict_nonsystem_relation_kind = 'view, foreign-table'$sql$,
            '@s.', pg_catalog.quote_ident(pg_catalog.current_schema()) OPERATOR(pg_catalog.||) '.');
    END IF;
END
$migration$;
