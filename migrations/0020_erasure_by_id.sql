-- I-6, 0019 made thorough (found by reviews): 0019 matched an erased admin's copies by the email
-- the admin has when erased, and found a break-glass alert through its session's row. So a change
-- recorded under an email the admin had before, and the alert of a session Console had already
-- deleted, kept the email (and the alert its justification). Now the copies are found by the
-- admin's id, which every recorded line and alert carries as "<email> (<id>)": each
-- "admin <email> (<id>)" of the recorded changes and alerts becomes "admin (erased) (<id>)", and a
-- break-glass alert naming the id is rewritten whole. Only this admin's text is touched: the
-- patterns are anchored on the id (written literally into the expression and the replacement,
-- whatever its characters), and an actor is erased when it is this admin's id or an email the
-- recorded lines gave it or it has now, never one another admin holds now. What stays: the
-- pseudonymous id, which nothing links to a person once `admins` has no row for it, and an actor
-- recorded under an email of the admin's that no recorded line names (noted on the issue).
--
-- tests/api/lifecycle_jobs.rs: an_erased_admin_leaves_no_email_or_justification_in_the_gateways_tables
-- (an email changed before erasure, a session deleted before its admin, another admin's text
-- untouched, an id with regular-expression characters).
--
-- Changing it: a new migration with CREATE OR REPLACE FUNCTION (never edit this one).
DO $migration$
BEGIN
    EXECUTE replace($sql$
CREATE OR REPLACE FUNCTION @s.rbac_gateway_erase_admin() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    -- The id as a regular expression that matches it literally, and as a replacement that
    -- writes it literally (E'' literals: the same whatever standard_conforming_strings says).
    idre text := regexp_replace(OLD.id, E'([^[:alnum:]_-])', E'\\\\\\1', 'g');
    named text := E'admin \\S* \\(' || idre || E'\\)';
    erased text := replace('admin (erased) (' || OLD.id || ')', E'\\', E'\\\\');
    -- The emails the recorded lines gave this admin and the one it has now, but none another
    -- admin holds now: an actor or alert naming one of those is another admin's.
    emails text[];
    e text;
BEGIN
    SELECT coalesce(array_agg(DISTINCT lower(m[1])), '{}') INTO emails
      FROM @s.rbac_gateway_group_changes g,
           regexp_matches(g.what, E'admin (\\S+) \\(' || idre || E'\\)', 'g') m
     WHERE strpos(g.what, OLD.id) > 0;
    emails := array_append(emails, lower(OLD.email));
    SELECT coalesce(array_agg(DISTINCT x), '{}') INTO emails
      FROM unnest(emails) x
     WHERE strpos(x, '@') > 0
       AND NOT EXISTS (SELECT 1 FROM @s.admins a WHERE lower(a.email) = x AND a.id <> OLD.id);
    -- Every recorded line naming this admin, under whatever email it had then.
    UPDATE @s.rbac_gateway_group_changes
       SET what = regexp_replace(what, named, erased, 'g')
     WHERE strpos(what, OLD.id) > 0;
    -- The actor, when Console named this admin by its id or one of those emails.
    UPDATE @s.rbac_gateway_group_changes
       SET actor = '(erased)'
     WHERE actor = OLD.id OR lower(actor) = ANY (emails);
    -- A break-glass alert names the admin and quotes the justification: rewritten whole.
    UPDATE @s.rbac_gateway_alerts
       SET text = format('Break-glass session %s opened for an admin since erased (its text was erased with the admin, I-6).',
                         substr(key, length('break_glass:') + 1))
     WHERE key LIKE 'break_glass:%'
       AND (key IN (SELECT 'break_glass:' || b.id FROM @s.rbac_break_glass_sessions b WHERE b.user_id = OLD.id)
            OR strpos(text, ' (' || OLD.id || '). Justification: ') > 0);
    -- The other alerts quote the recorded lines and the actor.
    UPDATE @s.rbac_gateway_alerts
       SET text = regexp_replace(text, named, erased, 'g')
     WHERE strpos(text, OLD.id) > 0;
    UPDATE @s.rbac_gateway_alerts
       SET text = replace(text, ', actor ' || OLD.id || ',', ', actor (erased),')
     WHERE strpos(text, ', actor ' || OLD.id || ',') > 0;
    FOREACH e IN ARRAY emails LOOP
        UPDATE @s.rbac_gateway_alerts
           SET text = regexp_replace(text, ', actor ' || regexp_replace(e, E'([^[:alnum:]_-])', E'\\\\\\1', 'g') || ',',
                                     ', actor (erased),', 'gi')
         WHERE strpos(lower(text), ', actor ' || e || ',') > 0;
    END LOOP;
    UPDATE @s.rbac_gateway_break_glass_snapshots
       SET members = array_remove(members, OLD.id)
     WHERE OLD.id = ANY (members);
    RETURN OLD;
END;
$fn$;
$sql$, '@s.', quote_ident(current_schema()) || '.');
END
$migration$;
