-- I-6, 0019 made thorough (found by reviews): 0019 matched an erased admin's copies by the email
-- the admin has when erased, and found a break-glass alert through its session's row. So a change
-- recorded under an email the admin had before, and the alert of a session Console had already
-- deleted, kept the email (and the alert its justification). Now the copies are found by the
-- admin's id, which every recorded line and alert carries as "<email> (<id>)": each
-- "admin <email> (<id>) made a permanent member" / "... no longer a permanent member" becomes
-- "admin (erased) (<id>) ..." (rbac_gateway_erase_named: plain string search from the id back to
-- the line's start, no pattern built from data, so any id or email, spaces included, is matched
-- as written), and a break-glass alert naming the id is rewritten whole. An actor is erased when
-- it is this admin's id or the email it has now (letter case ignored unless another admin's email
-- differs from it in case alone), never an email it had before, which another admin may hold now.
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
    n int;
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
        -- The line starts after the last "; " or ": " (recorded lines are joined with "; ", an
        -- alert quotes them after ": "), or at the start; it is erased when it is "admin ...".
        r := least(nullif(strpos(reverse(head), ' ;'), 0), nullif(strpos(reverse(head), ' :'), 0));
        -- n: the length of the line up to the id (the characters after the separator).
        n := coalesce(r - 1, length(head));
        IF left(right(head, n), 6) = 'admin ' THEN
            result := result || left(head, length(head) - n) || 'admin (erased)' || tag;
        ELSE
            result := result || head || tag;
        END IF;
        rest := substr(rest, p + length(tag));
    END LOOP;
    RETURN result || rest;
END;
$fn$;

CREATE OR REPLACE FUNCTION @s.rbac_gateway_erase_token(t text, token text, repl text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $fn$
-- `t` with every `token` written `repl`, letter case ignored (Console may have set the actor with
-- other capitals than the admin's email); plain string search, no pattern built from data.
DECLARE
    result text := '';
    rest text := t;
    p int;
BEGIN
    IF t IS NULL OR token IS NULL OR token = '' THEN
        RETURN t;
    END IF;
    LOOP
        p := strpos(lower(rest), lower(token));
        EXIT WHEN p = 0;
        result := result || left(rest, p - 1) || repl;
        rest := substr(rest, p + length(token));
    END LOOP;
    RETURN result || rest;
END;
$fn$;

CREATE OR REPLACE FUNCTION @s.rbac_gateway_erase_admin() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    -- The email matched with its letter case ignored only if no other admin's differs from it
    -- in case alone (admins.email is unique as written, not case-blind).
    blind boolean := NOT EXISTS (SELECT 1 FROM @s.admins a
                                  WHERE lower(a.email) = lower(OLD.email) AND a.id <> OLD.id);
BEGIN
    -- Every recorded line naming this admin, under whatever email it had then.
    UPDATE @s.rbac_gateway_group_changes
       SET what = @s.rbac_gateway_erase_named(what, OLD.id)
     WHERE strpos(what, ' (' || OLD.id || ')') > 0;
    -- The actor, when Console named this admin by its id or the email it has now (unique among
    -- admins; an email it had before may be another admin's now, and is left).
    UPDATE @s.rbac_gateway_group_changes
       SET actor = '(erased)'
     WHERE actor = OLD.id OR actor = OLD.email OR (blind AND lower(actor) = lower(OLD.email));
    -- A break-glass alert names the admin and quotes the justification: rewritten whole.
    UPDATE @s.rbac_gateway_alerts
       SET text = format('Break-glass session %s opened for an admin since erased (its text was erased with the admin, I-6).',
                         substr(key, length('break_glass:') + 1))
     WHERE key LIKE 'break_glass:%'
       AND (key IN (SELECT 'break_glass:' || b.id FROM @s.rbac_break_glass_sessions b WHERE b.user_id = OLD.id)
            OR strpos(text, ' (' || OLD.id || '). Justification: ') > 0);
    -- The other alerts quote the recorded lines and the actor.
    UPDATE @s.rbac_gateway_alerts
       SET text = replace(@s.rbac_gateway_erase_named(text, OLD.id),
                          ', actor ' || OLD.id || ',', ', actor (erased),')
     WHERE strpos(text, ' (' || OLD.id || ')') > 0
        OR strpos(text, ', actor ' || OLD.id || ',') > 0;
    UPDATE @s.rbac_gateway_alerts
       SET text = CASE WHEN blind
                       THEN @s.rbac_gateway_erase_token(text, ', actor ' || OLD.email || ',', ', actor (erased),')
                       ELSE replace(text, ', actor ' || OLD.email || ',', ', actor (erased),') END
     WHERE strpos(lower(text), lower(', actor ' || OLD.email || ',')) > 0;
    UPDATE @s.rbac_gateway_break_glass_snapshots
       SET members = array_remove(members, OLD.id)
     WHERE OLD.id = ANY (members);
    RETURN OLD;
END;
$fn$;
$sql$, '@s.', quote_ident(current_schema()) || '.');
END
$migration$;
