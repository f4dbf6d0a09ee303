-- I-6, 0019 made thorough (found by reviews): 0019 matched an erased admin's copies by the email
-- the admin has when erased, and found a break-glass alert through its session's row. So a change
-- recorded under an email the admin had before, and the alert of a session Console had already
-- deleted, kept the email (and the alert its justification). Now the copies are found by the
-- admin's id, which every recorded line and alert carries as "<email> (<id>)": each
-- "admin <email> (<id>) made a permanent member" / "... no longer a permanent member" becomes
-- "admin (erased) (<id>) ..." (rbac_gateway_erase_named: plain string search, no pattern built
-- from data, so any id or email, spaces included, is matched as written), and a break-glass alert
-- naming the id is rewritten whole. An actor is erased when it is this admin's id or the email it
-- has now (unique among admins), never an email it had before, which another admin may hold now.
-- What stays: the pseudonymous id, which nothing links to a person once `admins` has no row for
-- it, and an actor recorded under an email the admin no longer has (noted on the issue).
--
-- tests/api/lifecycle_jobs.rs: an_erased_admin_leaves_no_email_or_justification_in_the_gateways_tables
-- (an email changed before erasure, a session deleted before its admin, another admin whose id
-- and email contain this one's untouched, an id with regular-expression characters, an email
-- with a space).
--
-- Changing it: a new migration with CREATE OR REPLACE FUNCTION (never edit this one).
DO $migration$
BEGIN
    EXECUTE replace($sql$
CREATE OR REPLACE FUNCTION @s.rbac_gateway_erase_named(t text, id text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $fn$
-- `t` with every "admin <email> (<id>) made a permanent member" or "... no longer a permanent
-- member" of this id (the lines 0007's trigger records, as recorded and as alerts quote them)
-- written "admin (erased) (<id>) ...": the email is whatever lies between the nearest "admin "
-- before and the id, spaces included. No pattern is built from data (an id or an email is
-- matched as written, whatever its characters or length).
DECLARE
    tag text := ' (' || id || ')';
    result text := '';
    rest text := t;
    head text;
    p int;
    p2 int;
    r int;
BEGIN
    IF t IS NULL OR id IS NULL THEN
        RETURN t;
    END IF;
    LOOP
        p := strpos(rest, tag || ' made a permanent member');
        p2 := strpos(rest, tag || ' no longer a permanent member');
        IF p = 0 OR (p2 > 0 AND p2 < p) THEN
            p := p2;
        END IF;
        EXIT WHEN p = 0;
        head := left(rest, p - 1);
        r := strpos(reverse(head), ' nimda');
        IF r > 0 THEN
            result := result || left(head, length(head) - r - 5) || 'admin (erased)' || tag;
        ELSE
            result := result || head || tag;
        END IF;
        rest := substr(rest, p + length(tag));
    END LOOP;
    RETURN result || rest;
END;
$fn$;

CREATE OR REPLACE FUNCTION @s.rbac_gateway_erase_admin() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    -- Every recorded line naming this admin, under whatever email it had then.
    UPDATE @s.rbac_gateway_group_changes
       SET what = @s.rbac_gateway_erase_named(what, OLD.id)
     WHERE strpos(what, ' (' || OLD.id || ')') > 0;
    -- The actor, when Console named this admin by its id or the email it has now (unique among
    -- admins; an email it had before may be another admin's now, and is left).
    UPDATE @s.rbac_gateway_group_changes
       SET actor = '(erased)'
     WHERE actor = OLD.id OR lower(actor) = lower(OLD.email);
    -- A break-glass alert names the admin and quotes the justification: rewritten whole.
    UPDATE @s.rbac_gateway_alerts
       SET text = format('Break-glass session %s opened for an admin since erased (its text was erased with the admin, I-6).',
                         substr(key, length('break_glass:') + 1))
     WHERE key LIKE 'break_glass:%'
       AND (key IN (SELECT 'break_glass:' || b.id FROM @s.rbac_break_glass_sessions b WHERE b.user_id = OLD.id)
            OR strpos(text, ' (' || OLD.id || '). Justification: ') > 0);
    -- The other alerts quote the recorded lines and the actor.
    UPDATE @s.rbac_gateway_alerts
       SET text = replace(replace(@s.rbac_gateway_erase_named(text, OLD.id),
                                  ', actor ' || OLD.id || ',', ', actor (erased),'),
                          ', actor ' || OLD.email || ',', ', actor (erased),')
     WHERE strpos(text, ' (' || OLD.id || ')') > 0
        OR strpos(text, ', actor ' || OLD.id || ',') > 0
        OR strpos(text, ', actor ' || OLD.email || ',') > 0;
    UPDATE @s.rbac_gateway_break_glass_snapshots
       SET members = array_remove(members, OLD.id)
     WHERE OLD.id = ANY (members);
    RETURN OLD;
END;
$fn$;
$sql$, '@s.', quote_ident(current_schema()) || '.');
END
$migration$;
