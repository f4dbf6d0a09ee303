-- I-5: the break-glass trigger compared an admin's id under the collation of Console's column,
-- which migration 0041 lets Console make case-blind (CREATE COLLATION ... deterministic =
-- false; a review of the seventeenth session). With rbac_user_groups.user_id case-blind,
-- `UPDATE rbac_user_groups SET user_id = 'l' WHERE user_id = 'L' COLLATE "C"` moved a permanent
-- break-glass membership from admin 'L' to admin 'l' unrecorded (`OLD.user_id <> NEW.user_id`
-- was false), and no alert named 'l', who held the group's roles from then on: the principal
-- compares ids exactly since 0043. And the admin's email was read by `admins.id = NEW.user_id`
-- under that collation, which matched 'L' and 'l' both and failed the trigger ("more than one
-- row returned by a subquery"), refusing Console's change. The ids are now compared under the
-- database's default collation, as the principal's (0043) and the erasure's (0042) are; the
-- email read is one row whatever Console holds (an id doubled, its key dropped). Group ids stay
-- compared under Console's collation, as the principal compares them. Otherwise 0034's body.
-- rbac_gateway_ticket_grants (a request's ticket grants) likewise: with rbac_ticket_grants.user_id
-- case-blind, admin 'l' held admin 'L''s ticket grants. Otherwise 0022's body; the CLI's and the
-- reader API's reads of an admin's grants (src/stores/ticket.rs) compare alike.
-- tests/api/invariants.rs, a_break_glass_membership_moved_to_a_case_twin_is_recorded.
-- CREATE OR REPLACE keeps the grants, the owner and the triggers that call them, and drops the
-- settings they do not state: row_security = off (0034) is stated, restrict_nonsystem_relation_kind
-- (0036) given again below where the server has it.
--
-- Changing it: a new migration (never edit this one).
DO $migration$
BEGIN
    EXECUTE pg_catalog.replace($sql$
CREATE OR REPLACE FUNCTION @s.rbac_gateway_break_glass_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET row_security = off AS $fn$
DECLARE
    bg   text;
    role text;
    what text;
    -- The admins a line names, where the erasure of one finds it (I-6).
    keys text[] := '{}';
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM @s.rbac_gateway_record_group_change(
            format('TRUNCATE of %s (what the break-glass group grants may have changed)', TG_TABLE_NAME),
            TG_TABLE_NAME::text, TG_OP::text, '{}'::text[]);
        RETURN NULL;
    END IF;
    -- What this reads of Console's, as this function's owner: plain tables, built-in types.
    PERFORM @s.rbac_gateway_plain(
        '{rbac_groups,rbac_roles,rbac_permissions,rbac_role_permissions,rbac_role_inheritance,rbac_group_roles,rbac_user_groups,admins}'::text[],
        '{rbac_groups.id,rbac_groups.name,rbac_roles.id,rbac_roles.name,rbac_permissions.id,rbac_permissions.name,rbac_role_permissions.role_id,rbac_role_permissions.permission_id,rbac_role_inheritance.child_role_id,rbac_role_inheritance.parent_role_id,rbac_group_roles.group_id,rbac_group_roles.role_id,rbac_user_groups.user_id,rbac_user_groups.group_id,admins.id,admins.email}'::text[]);
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
           AND (TG_OP = 'INSERT' OR OLD.group_id IS DISTINCT FROM bg
                OR OLD.user_id COLLATE pg_catalog."default" <> NEW.user_id COLLATE pg_catalog."default") THEN
            what := format('admin %s (%s) made a permanent member of the break-glass group',
                           coalesce((SELECT pg_catalog.min(email) FROM @s.admins
                                      WHERE id = NEW.user_id COLLATE pg_catalog."default"), '?'), NEW.user_id);
            keys := keys || NEW.user_id;
        END IF;
        IF TG_OP IN ('DELETE', 'UPDATE') AND OLD.group_id = bg
           AND (TG_OP = 'DELETE' OR NEW.group_id IS DISTINCT FROM bg
                OR OLD.user_id COLLATE pg_catalog."default" <> NEW.user_id COLLATE pg_catalog."default") THEN
            what := concat_ws('; ', what, format('admin %s (%s) no longer a permanent member of the break-glass group',
                           coalesce((SELECT pg_catalog.min(email) FROM @s.admins
                                      WHERE id = OLD.user_id COLLATE pg_catalog."default"), '?'), OLD.user_id));
            keys := keys || OLD.user_id;
        END IF;
    END IF;
    IF what IS NOT NULL AND what <> '' THEN
        PERFORM @s.rbac_gateway_record_group_change(what, TG_TABLE_NAME::text, TG_OP::text, keys);
    END IF;
    RETURN NULL;
END;
$fn$;
$sql$, '@s.', pg_catalog.quote_ident(pg_catalog.current_schema()) OPERATOR(pg_catalog.||) '.');
    EXECUTE pg_catalog.replace($sql$
CREATE OR REPLACE FUNCTION @s.rbac_gateway_ticket_grants(p_admin_id TEXT, p_customer_id INTEGER, p_only TEXT[])
RETURNS TABLE (
    roles TEXT[],
    permissions TEXT[],
    tickets TEXT[]
)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET row_security = off AS $fn$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH RECURSIVE
    t AS (
        SELECT tg.role_id, tg.ticket_id FROM @s.rbac_ticket_grants tg
        WHERE tg.user_id = p_admin_id COLLATE pg_catalog."default" AND tg.customer_id = p_customer_id AND tg.revoked_at_utc IS NULL
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
$sql$, '@s.', pg_catalog.quote_ident(pg_catalog.current_schema()) OPERATOR(pg_catalog.||) '.');
    IF pg_catalog.current_setting('restrict_nonsystem_relation_kind', true) IS NOT NULL THEN
        EXECUTE pg_catalog.replace(
            $sql$ALTER ROUTINE @s.rbac_gateway_break_glass_change() SET restrict_nonsystem_relation_kind = 'view, foreign-table'$sql$,
            '@s.', pg_catalog.quote_ident(pg_catalog.current_schema()) OPERATOR(pg_catalog.||) '.');
        EXECUTE pg_catalog.replace(
            $sql$ALTER ROUTINE @s.rbac_gateway_ticket_grants(text, integer, text[]) SET restrict_nonsystem_relation_kind = 'view, foreign-table'$sql$,
            '@s.', pg_catalog.quote_ident(pg_catalog.current_schema()) OPERATOR(pg_catalog.||) '.');
    END IF;
END
$migration$;
