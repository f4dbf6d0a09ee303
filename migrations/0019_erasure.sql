-- I-6: "DSR erasure cascades via FK ... purged with it on erasure". Console erases an admin by
-- deleting the `admins` row; its sessions, group memberships and break-glass rows go with it
-- (ON DELETE CASCADE). The gateway's own tables kept copies in free text, with no key to cascade
-- on:
--   rbac_gateway_group_changes.what   "admin <email> (<id>) made a permanent member of ..."
--   rbac_gateway_group_changes.actor  what Console set as rbac_gateway.actor (an email or id)
--   rbac_gateway_alerts.text          those lines and actors, and each break-glass session's
--                                     "opened for <email> (<id>). Justification: <text>"
--   rbac_gateway_break_glass_snapshots.members   the break-glass group's members' ids
-- Before the row goes, this trigger rewrites them: the email becomes "(erased)", a break-glass
-- alert's text loses the admin and the justification, the actor is erased, and the id leaves
-- the snapshots. The facts stay (a member was added, a session was opened, by the same
-- pseudonymous id, which nothing links to a person once `admins` has no row for it), so the
-- record of what the break-glass group granted keeps its shape.
--
-- It runs as its owner (Console's role has no grant on these tables), with the search_path and
-- schema-qualified names of 0017; `check --database-url` names it if it is not so.
-- tests/api/lifecycle_jobs.rs: an_erased_admin_leaves_no_email_or_justification_in_the_gateways_tables.
--
-- Changing it: a new migration with CREATE OR REPLACE FUNCTION (never edit this one).
DO $migration$
BEGIN
    EXECUTE replace($sql$
CREATE OR REPLACE FUNCTION @s.rbac_gateway_erase_admin() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    who text := format('admin %s (%s)', OLD.email, OLD.id);
    erased text := format('admin (erased) (%s)', OLD.id);
BEGIN
    UPDATE @s.rbac_gateway_group_changes
       SET what = replace(what, who, erased)
     WHERE strpos(what, who) > 0;
    UPDATE @s.rbac_gateway_group_changes
       SET actor = '(erased)'
     WHERE actor IN (OLD.email, OLD.id);
    UPDATE @s.rbac_gateway_alerts
       SET text = format('Break-glass session %s opened for an admin since erased (its text was erased with the admin, I-6).',
                         substr(key, length('break_glass:') + 1))
     WHERE key IN (SELECT 'break_glass:' || b.id FROM @s.rbac_break_glass_sessions b WHERE b.user_id = OLD.id);
    UPDATE @s.rbac_gateway_alerts
       SET text = replace(replace(text, who, erased), 'actor ' || OLD.email, 'actor (erased)')
     WHERE strpos(text, who) > 0 OR strpos(text, 'actor ' || OLD.email) > 0;
    UPDATE @s.rbac_gateway_break_glass_snapshots
       SET members = array_remove(members, OLD.id)
     WHERE OLD.id = ANY (members);
    RETURN OLD;
END;
$fn$;
DROP TRIGGER IF EXISTS rbac_gateway_erase_admin ON @s.admins;
CREATE TRIGGER rbac_gateway_erase_admin BEFORE DELETE ON @s.admins
    FOR EACH ROW EXECUTE FUNCTION @s.rbac_gateway_erase_admin();
$sql$, '@s.', quote_ident(current_schema()) || '.');
END
$migration$;
