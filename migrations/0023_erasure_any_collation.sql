-- I-6 erasure, two emails it left (issue 66 §4, found outside the project's checks):
--
-- 1. In a database whose collation is ICU's, rbac_gateway_erase_token (0020) found the actor in
--    lower(text) and cut the text at that position: lower('İ') is two characters there, so with
--    30 'İ' before the actor the cut fell 30 characters early, the email survived and the text
--    was garbled (a libc-collated database erased it). A position is now only ever taken in the
--    text itself: each candidate start is compared case-blind over the token's own length.
-- 2. rbac_gateway_erase_named finds a line's start after the last "; " or ": " before the id, so
--    an email containing ": " ("ops: on call"@corp.example) was cut there and kept. The line as
--    written with the email the admin has when erased is now replaced first, whole, whatever its
--    characters; rbac_gateway_erase_named still finds the lines written under an earlier email.
--
-- The bodies are 0020's otherwise; 0022's pinned path and PUBLIC's missing EXECUTE stay (CREATE OR
-- REPLACE keeps a function's privileges). tests/api/lifecycle_jobs.rs:
-- an_erased_admin_is_erased_in_an_icu_database_and_with_a_colon_in_the_email.
--
-- Changing them: a new migration with CREATE OR REPLACE FUNCTION (never edit this one).
DO $migration$
BEGIN
    EXECUTE pg_catalog.replace($sql$
CREATE OR REPLACE FUNCTION @s.rbac_gateway_erase_token(t text, token text, repl text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $fn$
-- `t` with every `token` written `repl`, letter case ignored (Console may have set the actor with
-- other capitals than the admin's email); plain string search, no pattern built from data, and
-- every position taken in `t` itself (lower() may change a text's length: ICU's lower('İ') is
-- two characters).
DECLARE
    result text := '';
    n int;
    want text;
    i int := 1;
    start int := 1;
BEGIN
    IF t IS NULL OR token IS NULL OR token = '' THEN
        RETURN t;
    END IF;
    n := length(token);
    want := lower(token);
    WHILE i <= length(t) - n + 1 LOOP
        IF lower(substr(t, i, n)) = want THEN
            result := result || substr(t, start, i - start) || repl;
            i := i + n;
            start := i;
        ELSE
            i := i + 1;
        END IF;
    END LOOP;
    RETURN result || substr(t, start);
END;
$fn$;

CREATE OR REPLACE FUNCTION @s.rbac_gateway_erase_admin() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    -- The email matched with its letter case ignored only if no other admin's differs from it
    -- in case alone (admins.email is unique as written, not case-blind).
    blind boolean := NOT EXISTS (SELECT 1 FROM @s.admins a
                                  WHERE lower(a.email) = lower(OLD.email) AND a.id <> OLD.id);
    -- The line as written under the email the admin has now, and as it is erased.
    named text := 'admin ' || OLD.email || ' (' || OLD.id || ')';
    erased text := 'admin (erased) (' || OLD.id || ')';
BEGIN
    -- Every recorded line naming this admin, under whatever email it had then.
    UPDATE @s.rbac_gateway_group_changes
       SET what = @s.rbac_gateway_erase_named(replace(what, named, erased), OLD.id)
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
       SET text = replace(@s.rbac_gateway_erase_named(replace(text, named, erased), OLD.id),
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
$sql$, '@s.', pg_catalog.quote_ident(pg_catalog.current_schema()) OPERATOR(pg_catalog.||) '.');
END
$migration$;
