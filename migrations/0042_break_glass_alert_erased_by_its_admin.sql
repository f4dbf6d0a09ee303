-- I-6 and I-4: Console's role could rewrite the break-glass alert of an admin it did not erase (a
-- review). The erasure trigger found a break-glass alert of a session Console deleted first by
-- the admin's erasure keys and by its text (" (<id>). Justification: "), and rewrote it whole as
-- "opened for an admin since erased". The keys mix ids and lower-cased emails, and the text
-- quotes Console's email and justification: erasing an admin Console made, whose email is
-- another admin's id and whose id that admin's justification quotes as " (<id>). Justification:
-- ", rewrote the living admin's alert. Undelivered, it then reached the operators as an erased
-- admin's; and it lost the last sentence the alert pass looks for in an alert the previous
-- release raised as "ended" (src/stores/alerts.rs, raise_break_glass_sessions), so a session
-- restored since counted on it. The two generic alert rewrites (an admin's recorded line, an
-- actor) also reached into a break-glass alert's justification.
--
-- A break-glass alert is now rewritten where the admin recorded with it (session_user_id,
-- written with its text since 0033) is the one erased; by its text only where its text does not
-- name the admin recorded with it (0033 recorded, for an alert raised before it, the session's
-- admin as it stood then); and with this admin's session where its recorded admin is no more
-- (an id Console changed since). The generic rewrites leave break-glass alerts. A rewritten
-- break-glass alert no longer vouches for a session (its session_user_id is cleared): Console
-- can still make an admin's id missing or doubled for the moment of a DELETE, and the alert pass
-- then raises the alert again, whole and undelivered, for a session that lives on (I-4).
--
-- The deleted row's columns are read after the look (rbac_gateway_plain), never in a DECLARE:
-- OLD.id of a type of Console's, read there, ran its cast to text as the owner (0038's body too).
-- Everything read of Console's tables is read right after the look, before any statement that
-- may wait: a third review had Console hold a row lock on a recorded line, so the erasure's
-- UPDATE of it waited, and create a statistics object meanwhile (ACCESS SHARE does not hold
-- one back), which the next read of Console's tables, planned after the wait, ran as the owner.
-- The gateway's alerts are locked before the look (a fourth review: the read of them right after
-- it waited for a migration's lock, and planned a read of admins after the wait). Ids are
-- compared under the database's default collation, which its indexes use.
--
-- The erased admin's id and email are compared as text of the database's collation: a review
-- of the first version made admins.id case-blind (CREATE COLLATION ... deterministic = false,
-- which 0041 lets Console have), and erasing an admin 'l' rewrote the living 'L''s alert, its
-- actor and its lines; a search of a text for the id failed and refused Console's DELETE.
-- Otherwise 0038's body. tests/api/lifecycle_jobs.rs,
-- an_admin_console_erases_leaves_another_admins_break_glass_alert and
-- a_case_blind_id_of_consoles_erases_only_its_own_admin; tests/api/planted.rs,
-- the_erasure_reads_the_deleted_row_only_after_its_look,
-- the_erasure_reads_consoles_tables_before_it_may_wait and
-- the_erasure_waits_for_the_alerts_before_its_look.
-- CREATE OR REPLACE keeps the trigger and drops restrict_nonsystem_relation_kind (0036), given
-- again below where the server has it.
--
-- Changing it: a new migration (never edit this one).
DO $migration$
BEGIN
    EXECUTE pg_catalog.replace($sql$
CREATE OR REPLACE FUNCTION @s.rbac_gateway_erase_admin() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET row_security = off AS $fn$
DECLARE
    -- Nothing here reads the deleted row: its columns are read after the look below, as the
    -- tables are (a review: OLD.id of a type of Console's, read in a DECLARE, ran its cast to
    -- text as this function's owner before the look refused the type; so did 0038's body).
    --
    -- The admin's id and email as text of the database's collation (deterministic), whatever
    -- Console's columns have: where Console makes admins.id case-blind (a nondeterministic
    -- collation), OLD.id compared 'l' equal to another admin's 'L' (a review), and a search in
    -- a text for it failed.
    old_id text;
    old_email text;
    -- The email matched with its letter case ignored only if no other admin's differs from it
    -- in case alone (admins.email is unique as written, not case-blind): read after the check.
    blind boolean;
    -- The line as written under the email the admin has now, and as it is erased.
    named text;
    erased text;
    -- What the rows that name this admin carry in erasure_keys (found by its GIN index); a row
    -- written before migration 0025 and not keyed yet (NULL, found by its partial index) is
    -- searched as before.
    keys text[];
    -- The alerts of this admin's sessions, and the admins recorded with them that are no more:
    -- read, with blind, right after the look, before any statement that may wait (a review: a
    -- statement of Console's tables planned after a wait on a row lock saw a statistics object
    -- Console made meanwhile, which ACCESS SHARE does not hold back, and ran its code as the
    -- owner).
    session_keys text[];
    gone text[];
BEGIN
    -- The gateway's alerts, locked as the statements below lock them, before the look: the
    -- read of them right after it would otherwise wait for a lock another holds (a migration's
    -- ACCESS EXCLUSIVE), and the read of Console's admins in it be planned after the wait, with
    -- what Console made meanwhile (a fourth review).
    LOCK TABLE @s.rbac_gateway_alerts IN ROW EXCLUSIVE MODE;
    -- What this reads of Console's, as this function's owner: plain tables, built-in types
    -- (migration 0034).
    PERFORM @s.rbac_gateway_plain('{admins,rbac_break_glass_sessions}'::text[],
        '{admins.id,admins.email,rbac_break_glass_sessions.id,rbac_break_glass_sessions.user_id}'::text[]);
    old_id := OLD.id;
    old_email := OLD.email;
    named := 'admin ' || old_email || ' (' || old_id || ')';
    erased := 'admin (erased) (' || old_id || ')';
    keys := ARRAY[old_id, lower(old_id), lower(old_email), '*'];
    blind := NOT EXISTS (SELECT 1 FROM @s.admins a
                          WHERE lower(a.email) = lower(old_email) AND a.id <> old_id COLLATE pg_catalog."default");
    SELECT coalesce(array_agg('break_glass:' || b.id), '{}') INTO session_keys
      FROM @s.rbac_break_glass_sessions b WHERE b.user_id = old_id COLLATE pg_catalog."default";
    SELECT coalesce(array_agg(DISTINCT al.session_user_id), '{}') INTO gone
      FROM @s.rbac_gateway_alerts al
     WHERE al.key = ANY (session_keys) AND al.session_user_id IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM @s.admins a WHERE a.id = al.session_user_id COLLATE pg_catalog."default");
    -- Nothing of Console's is read below.
    -- Every recorded line naming this admin, under whatever email it had then.
    UPDATE @s.rbac_gateway_group_changes
       SET what = @s.rbac_gateway_erase_named(replace(what, named, erased), old_id::text)
     WHERE (erasure_keys && keys OR erasure_keys IS NULL)
       AND strpos(what, ' (' || old_id || ')') > 0;
    -- The actor, when Console named this admin by its id or the email it has now (unique among
    -- admins; an email it had before may be another admin's now, and is left).
    UPDATE @s.rbac_gateway_group_changes
       SET actor = '(erased)'
     WHERE (erasure_keys && keys OR erasure_keys IS NULL)
       AND (actor = old_id OR actor = old_email OR (blind AND lower(actor) = lower(old_email)));
    -- A break-glass alert names the admin its session had when it was raised (session_user_id,
    -- written with its text since 0033) and quotes the justification: rewritten whole where it
    -- names this admin, found by its session (the key) and by the admin's keys for a session
    -- Console deleted first. Never by its text alone: the text quotes Console's email and
    -- justification, and the keys mix ids and emails. One whose text does not name the admin
    -- recorded with it (raised before 0033 for a session Console gave to another admin since, or
    -- before the admin was recorded) is still found where its text names this one, as before;
    -- and one of this admin's session whose recorded admin, the one its text names, is no more
    -- (an id Console changed) is rewritten with the session. A rewritten alert vouches for no
    -- session: its recorded admin is cleared, so the session it told of counts no more, and the
    -- alert pass raises it again, whole and undelivered, should that session live on (a review:
    -- Console could still have an admin's id missing or doubled for the moment of a DELETE).
    UPDATE @s.rbac_gateway_alerts
       SET text = format('Break-glass session %s opened for an admin since erased (its text was erased with the admin, I-6).',
                         substr(key, length('break_glass:') + 1)),
           session_user_id = NULL
     WHERE key = ANY (session_keys)
       AND (session_user_id = old_id
            OR ((session_user_id IS NULL OR strpos(text, ' (' || session_user_id || '). Justification: ') = 0)
                AND strpos(text, ' (' || old_id || '). Justification: ') > 0)
            -- the admin recorded with it, and named by it, is no more (its id changed since, the
            -- session with it)
            OR (strpos(text, ' (' || session_user_id || '). Justification: ') > 0
                AND session_user_id = ANY (gone)));
    UPDATE @s.rbac_gateway_alerts
       SET text = format('Break-glass session %s opened for an admin since erased (its text was erased with the admin, I-6).',
                         substr(key, length('break_glass:') + 1)),
           session_user_id = NULL
     WHERE (erasure_keys && keys OR erasure_keys IS NULL)
       AND key LIKE 'break_glass:%'
       AND (session_user_id = old_id
            OR ((session_user_id IS NULL OR strpos(text, ' (' || session_user_id || '). Justification: ') = 0)
                AND strpos(text, ' (' || old_id || '). Justification: ') > 0));
    -- The other alerts quote the recorded lines and the actor (a break-glass alert quotes
    -- neither: its justification is Console's text, never rewritten in part).
    UPDATE @s.rbac_gateway_alerts
       SET text = replace(@s.rbac_gateway_erase_named(replace(text, named, erased), old_id::text),
                          ', actor ' || old_id || ',', ', actor (erased),')
     WHERE (erasure_keys && keys OR erasure_keys IS NULL)
       AND NOT starts_with(key, 'break_glass:')
       AND (strpos(text, ' (' || old_id || ')') > 0
            OR strpos(text, ', actor ' || old_id || ',') > 0);
    UPDATE @s.rbac_gateway_alerts
       SET text = CASE WHEN blind
                       THEN @s.rbac_gateway_erase_token(text, (', actor ' || old_email || ',')::text, ', actor (erased),'::text)
                       ELSE replace(text, ', actor ' || old_email || ',', ', actor (erased),') END
     WHERE (erasure_keys && keys OR erasure_keys IS NULL)
       AND NOT starts_with(key, 'break_glass:')
       AND strpos(lower(text), lower(', actor ' || old_email || ',')) > 0;
    -- The keys themselves name the email (an actor): it is replaced by '*' (the row is then
    -- searched by its text, as a row whose keys are unknown), never kept. Lower-cased keys of
    -- two admins whose emails differ in case alone are one key: '*' serves both.
    UPDATE @s.rbac_gateway_group_changes
       SET erasure_keys = array_replace(erasure_keys, lower(old_email), '*')
     WHERE erasure_keys && ARRAY[lower(old_email)];
    UPDATE @s.rbac_gateway_alerts
       SET erasure_keys = array_replace(erasure_keys, lower(old_email), '*')
     WHERE erasure_keys && ARRAY[lower(old_email)];
    UPDATE @s.rbac_gateway_break_glass_snapshots
       SET members = array_remove(members, old_id)
     WHERE old_id = ANY (members);
    -- A deploy window this admin declared (declared_by is free text: its id or the email it
    -- has now, the email case-blind where no other admin's differs in case alone), in the
    -- lines recorded during it and in its alert, then in the window itself (I-6; before this
    -- migration the three kept the email). Only where the admin declared one: the lines are
    -- found by their text (no index), which an erasure of anyone else never reads.
    IF EXISTS (SELECT 1 FROM @s.rbac_gateway_deploy_windows d
                WHERE d.declared_by = old_id OR d.declared_by = old_email
                   OR (blind AND lower(d.declared_by) = lower(old_email))) THEN
        UPDATE @s.rbac_gateway_group_changes g
           SET deploy_window = replace(g.deploy_window, ' (declared by ' || d.declared_by || ', until ',
                                       ' (declared by (erased), until ')
          FROM @s.rbac_gateway_deploy_windows d
         WHERE (d.declared_by = old_id OR d.declared_by = old_email OR (blind AND lower(d.declared_by) = lower(old_email)))
           AND g.deploy_window IS NOT NULL
           AND strpos(g.deploy_window, ' (declared by ' || d.declared_by || ', until ') > 0;
        UPDATE @s.rbac_gateway_alerts a
           SET text = replace(a.text, 'Deploy window declared by ' || d.declared_by || ': ',
                              'Deploy window declared by (erased): ')
          FROM @s.rbac_gateway_deploy_windows d
         WHERE (d.declared_by = old_id OR d.declared_by = old_email OR (blind AND lower(d.declared_by) = lower(old_email)))
           AND a.key = 'deploy_window:' || d.id::text;
        UPDATE @s.rbac_gateway_deploy_windows d
           SET declared_by = '(erased)'
         WHERE d.declared_by = old_id OR d.declared_by = old_email OR (blind AND lower(d.declared_by) = lower(old_email));
    END IF;
    RETURN OLD;
END;
$fn$;
$sql$, '@s.', pg_catalog.quote_ident(pg_catalog.current_schema()) OPERATOR(pg_catalog.||) '.');
    IF pg_catalog.current_setting('restrict_nonsystem_relation_kind', true) IS NOT NULL THEN
        EXECUTE pg_catalog.replace(
            $sql$ALTER ROUTINE @s.rbac_gateway_erase_admin() SET restrict_nonsystem_relation_kind = 'view, foreign-table'$sql$,
            '@s.', pg_catalog.quote_ident(pg_catalog.current_schema()) OPERATOR(pg_catalog.||) '.');
    END IF;
END
$migration$;
