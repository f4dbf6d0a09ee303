-- I-6 erasure by index (issue 71): deleting an admin rewrote their text by scanning every row of
-- rbac_gateway_group_changes and rbac_gateway_alerts (1.3-1.7 s per admin at 200,000 rows a table,
-- held inside Console's DELETE). Each row now carries what the erasure looks for, in
-- erasure_keys: the ids of the admins its lines name, and the actor it was recorded under
-- (lower-cased: the erasure matches an email case-blind). The erasure finds its rows by the GIN
-- index on it, then rewrites them exactly as before (0023): the keys only find the rows.
--
-- Who writes the keys:
-- - rbac_gateway_record_group_change gains a fourth argument, the admins the line names, which
--   rbac_gateway_break_glass_change passes (the user_id of a membership row); it adds the actor.
--   The three-argument form stays for callers of earlier releases (no admin keys).
-- - the alert pass writes a break-glass session's alert with its admin, and an alert that quotes
--   recorded changes with their keys (src/stores/alerts.rs); NULL when one of them has none.
-- - rows written before this migration (NULL) are keyed by `migrate` in batches after it
--   (rbac_gateway_erasure_keys_of: the ids of the recorded form "(<id>) made/no longer a
--   permanent member", the break-glass alert's "(<id>). Justification", and the actor), and
--   until then, or where a gateway of an earlier release wrote one, the erasure searches the rows
--   without keys as before (a partial index finds them).
-- The indexes are built concurrently by `migrate` after the migrations (src/stores/migrations.rs),
-- not here: an index built in a migration's transaction blocks the writes to its table.
--
-- Changing them: a new migration with CREATE OR REPLACE FUNCTION (never edit this one).
ALTER TABLE rbac_gateway_group_changes ADD COLUMN IF NOT EXISTS erasure_keys TEXT[];
ALTER TABLE rbac_gateway_alerts ADD COLUMN IF NOT EXISTS erasure_keys TEXT[];

DO $migration$
BEGIN
    EXECUTE pg_catalog.replace($sql$
CREATE OR REPLACE FUNCTION @s.rbac_gateway_record_group_change(what text, tbl text, op text, keys text[])
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    w text;
    actor text := nullif(current_setting('rbac_gateway.actor', true), '');
BEGIN
    SELECT format('%s (declared by %s, until %s UTC)', d.reason, d.declared_by,
                  to_char(d.ends_at_utc AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'))
      INTO w
      FROM @s.rbac_gateway_deploy_windows d
     WHERE clock_timestamp() >= d.starts_at_utc AND clock_timestamp() < d.ends_at_utc
     ORDER BY d.id DESC LIMIT 1;
    -- keys NULL (a caller that names none, as the three-argument form): no keys, the row is
    -- searched by its text.
    INSERT INTO @s.rbac_gateway_group_changes (what, table_name, operation, deploy_window, erasure_keys)
    VALUES (what, tbl, op, w,
            CASE WHEN keys IS NOT NULL THEN array_remove(keys || lower(actor), NULL) END);
END;
$fn$;

CREATE OR REPLACE FUNCTION @s.rbac_gateway_record_group_change(what text, tbl text, op text) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT @s.rbac_gateway_record_group_change(what, tbl, op, NULL::text[]);
$fn$;

-- The keys of a row written before this migration, read from its text: the ids in "(<id>) made
-- a permanent member", "(<id>) no longer a permanent member" and "(<id>). Justification", and
-- the actor (lower-cased), as a recorded line, an alert quoting one (", actor <actor>,") and a
-- break-glass alert write them. Where a line names an admin whose id the pattern cannot read (one
-- with a parenthesis), the row also gets the key '*', which every erasure's search includes:
-- such a row is then searched by its text, as every row was before.
CREATE OR REPLACE FUNCTION @s.rbac_gateway_erasure_keys_of(t text, actor text) RETURNS text[]
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT coalesce(array_agg(DISTINCT k), '{}') FROM (
        SELECT m[1] AS k FROM regexp_matches(coalesce(t, ''),
            '\(([^()]*)\)(?: made a permanent member| no longer a permanent member|\. Justification)', 'g') m
        UNION ALL
        SELECT lower(m[1]) FROM regexp_matches(coalesce(t, ''), ', actor ([^,]*),', 'g') m
        UNION ALL
        SELECT lower(actor) WHERE actor IS NOT NULL
        UNION ALL
        -- a quoted actor ("a,b"@x) may hold the comma the actor pattern stops at
        SELECT '*' WHERE strpos(coalesce(t, ''), ', actor "') > 0
        UNION ALL
        SELECT '*' WHERE (SELECT count(*) FROM regexp_matches(coalesce(t, ''),
                              '\(([^()]*)\)(?: made a permanent member| no longer a permanent member|\. Justification)', 'g'))
                         < (SELECT count(*) FROM regexp_matches(coalesce(t, ''),
                              'a permanent member|\. Justification', 'g'))
    ) ks;
$fn$;

CREATE OR REPLACE FUNCTION @s.rbac_gateway_break_glass_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
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
            TG_TABLE_NAME, TG_OP, '{}');
        RETURN NULL;
    END IF;
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
           AND (TG_OP = 'INSERT' OR OLD.group_id IS DISTINCT FROM bg OR OLD.user_id <> NEW.user_id) THEN
            what := format('admin %s (%s) made a permanent member of the break-glass group',
                           coalesce((SELECT email FROM @s.admins WHERE id = NEW.user_id), '?'), NEW.user_id);
            keys := keys || NEW.user_id;
        END IF;
        IF TG_OP IN ('DELETE', 'UPDATE') AND OLD.group_id = bg
           AND (TG_OP = 'DELETE' OR NEW.group_id IS DISTINCT FROM bg OR OLD.user_id <> NEW.user_id) THEN
            what := concat_ws('; ', what, format('admin %s (%s) no longer a permanent member of the break-glass group',
                           coalesce((SELECT email FROM @s.admins WHERE id = OLD.user_id), '?'), OLD.user_id));
            keys := keys || OLD.user_id;
        END IF;
    END IF;
    IF what IS NOT NULL AND what <> '' THEN
        PERFORM @s.rbac_gateway_record_group_change(what, TG_TABLE_NAME, TG_OP, keys);
    END IF;
    RETURN NULL;
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
    -- What the rows that name this admin carry in erasure_keys (found by its GIN index); a row
    -- written before migration 0025 and not keyed yet (NULL, found by its partial index) is
    -- searched as before.
    keys text[] := ARRAY[OLD.id, lower(OLD.id), lower(OLD.email), '*'];
BEGIN
    -- Every recorded line naming this admin, under whatever email it had then.
    UPDATE @s.rbac_gateway_group_changes
       SET what = @s.rbac_gateway_erase_named(replace(what, named, erased), OLD.id)
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
       SET text = replace(@s.rbac_gateway_erase_named(replace(text, named, erased), OLD.id),
                          ', actor ' || OLD.id || ',', ', actor (erased),')
     WHERE (erasure_keys && keys OR erasure_keys IS NULL)
       AND (strpos(text, ' (' || OLD.id || ')') > 0
            OR strpos(text, ', actor ' || OLD.id || ',') > 0);
    UPDATE @s.rbac_gateway_alerts
       SET text = CASE WHEN blind
                       THEN @s.rbac_gateway_erase_token(text, ', actor ' || OLD.email || ',', ', actor (erased),')
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
    RETURN OLD;
END;
$fn$;

REVOKE EXECUTE ON FUNCTION
    @s.rbac_gateway_record_group_change(TEXT, TEXT, TEXT, TEXT[]),
    @s.rbac_gateway_erasure_keys_of(TEXT, TEXT)
    FROM PUBLIC;
$sql$, '@s.', pg_catalog.quote_ident(pg_catalog.current_schema()) OPERATOR(pg_catalog.||) '.');
    -- The alert pass gives an alert its keys (deploy/gateway-grants.sql grants the same again).
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'rbac_gateway_serve') THEN
        GRANT UPDATE (erasure_keys) ON rbac_gateway_alerts TO rbac_gateway_serve;
    END IF;
END
$migration$;
