-- I-6, 0019 made thorough (found by a review): 0019 matched an erased admin's copies by the
-- email the admin has when erased, and found a break-glass alert through its session's row. So
-- a change recorded under an email the admin had before, and the alert of a session Console had
-- already deleted, kept the email (and the alert its justification). Now the copies are found by
-- the admin's id, which every recorded line and alert carries as "<email> (<id>)": each
-- "admin <email> (<id>)" of the recorded changes and alerts becomes "admin (erased) (<id>)", every
-- email those lines ever gave the admin (and the current one) is erased wherever an alert or an
-- actor repeats it, and a break-glass alert naming the id is rewritten whole. What stays: the
-- pseudonymous id, which nothing links to a person once `admins` has no row for it, and an actor
-- Console recorded under an email of the admin's that no recorded line names (noted on issue).
--
-- tests/api/lifecycle_jobs.rs: an_erased_admin_leaves_no_email_or_justification_in_the_gateways_tables
-- (an email changed before erasure, a session deleted before its admin).
--
-- Changing it: a new migration with CREATE OR REPLACE FUNCTION (never edit this one).
DO $migration$
BEGIN
    EXECUTE replace($sql$
CREATE OR REPLACE FUNCTION @s.rbac_gateway_erase_admin() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    -- The id as a regular expression that matches it literally.
    idre text := regexp_replace(OLD.id, '([^[:alnum:]_-])', '\\\1', 'g');
    named text := 'admin \S* \(' || idre || '\)';
    erased text := 'admin (erased) (' || OLD.id || ')';
    emails text[];
    e text;
BEGIN
    SELECT coalesce(array_agg(DISTINCT m[1]), '{}') INTO emails
      FROM @s.rbac_gateway_group_changes g,
           regexp_matches(g.what, 'admin (\S+) \(' || idre || '\)', 'g') m
     WHERE strpos(g.what, OLD.id) > 0 AND strpos(m[1], '@') > 0;
    IF strpos(coalesce(OLD.email, ''), '@') > 0 THEN
        emails := array_append(emails, OLD.email);
    END IF;
    UPDATE @s.rbac_gateway_group_changes
       SET what = regexp_replace(what, named, erased, 'g')
     WHERE strpos(what, OLD.id) > 0;
    UPDATE @s.rbac_gateway_group_changes
       SET actor = '(erased)'
     WHERE actor = OLD.id OR lower(actor) = ANY (SELECT lower(x) FROM unnest(emails) x);
    -- A break-glass alert names the admin and quotes the justification: rewritten whole.
    UPDATE @s.rbac_gateway_alerts
       SET text = format('Break-glass session %s opened for an admin since erased (its text was erased with the admin, I-6).',
                         substr(key, length('break_glass:') + 1))
     WHERE key LIKE 'break_glass:%'
       AND (key IN (SELECT 'break_glass:' || b.id FROM @s.rbac_break_glass_sessions b WHERE b.user_id = OLD.id)
            OR strpos(text, ' (' || OLD.id || '). Justification: ') > 0);
    UPDATE @s.rbac_gateway_alerts
       SET text = regexp_replace(text, named, erased, 'g')
     WHERE strpos(text, OLD.id) > 0;
    FOREACH e IN ARRAY emails LOOP
        UPDATE @s.rbac_gateway_alerts SET text = replace(text, e, '(erased)') WHERE strpos(text, e) > 0;
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
