-- I-6: an erased admin's email stayed in three places of the gateway's (a review found it): a
-- deploy window the admin declared (rbac_gateway_deploy_windows.declared_by), the lines recorded
-- during that window (rbac_gateway_group_changes.deploy_window: "... (declared by <email>,
-- until ...)") and the window's alert ("Deploy window declared by <email>: ..."). The erasure
-- trigger now rewrites all three to "(erased)", where declared_by is the admin's id or the email
-- it has now (case-blind where no other admin's email differs from it in case alone, as the
-- actor's is matched). Its body is 0032's otherwise, with 0034's row_security = off and its
-- check of the tables it reads (rbac_gateway_plain).
-- tests/api/lifecycle_jobs.rs, an_erased_admin_who_declared_a_deploy_window_leaves_no_email.
--
-- Changing it: a new migration with CREATE OR REPLACE FUNCTION (never edit this one).
DO $migration$
BEGIN
    EXECUTE pg_catalog.replace($sql$
CREATE OR REPLACE FUNCTION @s.rbac_gateway_erase_admin() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET row_security = off AS $fn$
DECLARE
    -- The email matched with its letter case ignored only if no other admin's differs from it
    -- in case alone (admins.email is unique as written, not case-blind).
    blind boolean := NOT EXISTS (SELECT 1 FROM @s.admins a
                                  WHERE lower(a.email) = lower(OLD.email) AND a.id <> OLD.id);
    -- The line as written under the email the admin has now, and as it is erased.
    named text := 'admin ' || OLD.email || ' (' || OLD.id || ')';
    erased text := 'admin (erased) (' || OLD.id || ')';
    -- What the rows that name this admin carry in erasure_keys (found by its GIN index); a row
    -- written before migration 0025 and not keyed yet (NULL, found by its partial index) is
    -- searched as before.
    keys text[] := ARRAY[OLD.id, lower(OLD.id), lower(OLD.email), '*'];
BEGIN
    -- What this reads of Console's, as this function's owner: plain tables, built-in types
    -- (migration 0034).
    PERFORM @s.rbac_gateway_plain('{admins,rbac_break_glass_sessions}'::text[],
        '{admins.id,admins.email,rbac_break_glass_sessions.id,rbac_break_glass_sessions.user_id}'::text[]);
    -- Every recorded line naming this admin, under whatever email it had then.
    UPDATE @s.rbac_gateway_group_changes
       SET what = @s.rbac_gateway_erase_named(replace(what, named, erased), OLD.id::text)
     WHERE (erasure_keys && keys OR erasure_keys IS NULL)
       AND strpos(what, ' (' || OLD.id || ')') > 0;
    -- The actor, when Console named this admin by its id or the email it has now (unique among
    -- admins; an email it had before may be another admin's now, and is left).
    UPDATE @s.rbac_gateway_group_changes
       SET actor = '(erased)'
     WHERE (erasure_keys && keys OR erasure_keys IS NULL)
       AND (actor = OLD.id OR actor = OLD.email OR (blind AND lower(actor) = lower(OLD.email)));
    -- A break-glass alert names the admin and quotes the justification: rewritten whole. Found
    -- by its session (the key), and by the admin's keys for a session Console deleted first.
    UPDATE @s.rbac_gateway_alerts
       SET text = format('Break-glass session %s opened for an admin since erased (its text was erased with the admin, I-6).',
                         substr(key, length('break_glass:') + 1))
     WHERE key IN (SELECT 'break_glass:' || b.id FROM @s.rbac_break_glass_sessions b WHERE b.user_id = OLD.id);
    UPDATE @s.rbac_gateway_alerts
       SET text = format('Break-glass session %s opened for an admin since erased (its text was erased with the admin, I-6).',
                         substr(key, length('break_glass:') + 1))
     WHERE (erasure_keys && keys OR erasure_keys IS NULL)
       AND key LIKE 'break_glass:%'
       AND strpos(text, ' (' || OLD.id || '). Justification: ') > 0;
    -- The other alerts quote the recorded lines and the actor.
    UPDATE @s.rbac_gateway_alerts
       SET text = replace(@s.rbac_gateway_erase_named(replace(text, named, erased), OLD.id::text),
                          ', actor ' || OLD.id || ',', ', actor (erased),')
     WHERE (erasure_keys && keys OR erasure_keys IS NULL)
       AND (strpos(text, ' (' || OLD.id || ')') > 0
            OR strpos(text, ', actor ' || OLD.id || ',') > 0);
    UPDATE @s.rbac_gateway_alerts
       SET text = CASE WHEN blind
                       THEN @s.rbac_gateway_erase_token(text, (', actor ' || OLD.email || ',')::text, ', actor (erased),'::text)
                       ELSE replace(text, ', actor ' || OLD.email || ',', ', actor (erased),') END
     WHERE (erasure_keys && keys OR erasure_keys IS NULL)
       AND strpos(lower(text), lower(', actor ' || OLD.email || ',')) > 0;
    -- The keys themselves name the email (an actor): it is replaced by '*' (the row is then
    -- searched by its text, as a row whose keys are unknown), never kept. Lower-cased keys of
    -- two admins whose emails differ in case alone are one key: '*' serves both.
    UPDATE @s.rbac_gateway_group_changes
       SET erasure_keys = array_replace(erasure_keys, lower(OLD.email), '*')
     WHERE erasure_keys && ARRAY[lower(OLD.email)];
    UPDATE @s.rbac_gateway_alerts
       SET erasure_keys = array_replace(erasure_keys, lower(OLD.email), '*')
     WHERE erasure_keys && ARRAY[lower(OLD.email)];
    UPDATE @s.rbac_gateway_break_glass_snapshots
       SET members = array_remove(members, OLD.id)
     WHERE OLD.id = ANY (members);
    -- A deploy window this admin declared (declared_by is free text: its id or the email it
    -- has now, the email case-blind where no other admin's differs in case alone), in the
    -- lines recorded during it and in its alert, then in the window itself (I-6; before this
    -- migration the three kept the email). Only where the admin declared one: the lines are
    -- found by their text (no index), which an erasure of anyone else never reads.
    IF EXISTS (SELECT 1 FROM @s.rbac_gateway_deploy_windows d
                WHERE d.declared_by = OLD.id OR d.declared_by = OLD.email
                   OR (blind AND lower(d.declared_by) = lower(OLD.email))) THEN
        UPDATE @s.rbac_gateway_group_changes g
           SET deploy_window = replace(g.deploy_window, ' (declared by ' || d.declared_by || ', until ',
                                       ' (declared by (erased), until ')
          FROM @s.rbac_gateway_deploy_windows d
         WHERE (d.declared_by = OLD.id OR d.declared_by = OLD.email OR (blind AND lower(d.declared_by) = lower(OLD.email)))
           AND g.deploy_window IS NOT NULL
           AND strpos(g.deploy_window, ' (declared by ' || d.declared_by || ', until ') > 0;
        UPDATE @s.rbac_gateway_alerts a
           SET text = replace(a.text, 'Deploy window declared by ' || d.declared_by || ': ',
                              'Deploy window declared by (erased): ')
          FROM @s.rbac_gateway_deploy_windows d
         WHERE (d.declared_by = OLD.id OR d.declared_by = OLD.email OR (blind AND lower(d.declared_by) = lower(OLD.email)))
           AND a.key = 'deploy_window:' || d.id::text;
        UPDATE @s.rbac_gateway_deploy_windows d
           SET declared_by = '(erased)'
         WHERE d.declared_by = OLD.id OR d.declared_by = OLD.email OR (blind AND lower(d.declared_by) = lower(OLD.email));
    END IF;
    RETURN OLD;
END;
$fn$;
$sql$, '@s.', pg_catalog.quote_ident(pg_catalog.current_schema()) OPERATOR(pg_catalog.||) '.');
END
$migration$;
