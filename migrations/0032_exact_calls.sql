-- Every call of a function of the gateway's, from its own functions and triggers, with arguments
-- of exactly the types it was declared with. A function is named with its schema (`@s.`), but
-- when that schema is one Console's role may create in (`public` before PostgreSQL 15, Heroku's
-- default credential), Console's role may add a function of the same name there: where a call's
-- argument is not of the declared type, an overload that takes that type matches better and runs
-- instead, with the caller's privileges.
-- - rbac_gateway_break_glass_change (SECURITY DEFINER) passed TG_TABLE_NAME, of type `name`,
--   where `text` is declared: an overload taking `name` ran as the owner of the gateway's tables,
--   and could forge alerts, suppress the recorded change and delete access_denied rows.
-- - rbac_gateway_erase_admin passed admins.id and admins.email as Console's table types them,
--   and a literal of unknown type.
-- - the session lookups passed admin_sessions.admin_id as Console's table types it (TEXT in
--   the interface; a column altered to another type would have let an overload answer).
-- Each argument is now cast to its declared type: an exact match, which no function in another
-- schema and no other function of the same schema can beat (one schema cannot declare the same
-- signature twice). An overload with more arguments that have defaults makes the call
-- ambiguous, which fails it (and the write or lookup with it: fail closed; the alert pass calls
-- none by name); `check` names every function in the gateway's schema under one of its names
-- that is not one of its own.
--
-- The bodies are 0025's (the triggers) and 0022's (the lookups), the casts aside; CREATE OR
-- REPLACE keeps each function's grants. Changing them: a new migration with CREATE OR REPLACE
-- FUNCTION (never edit this one).
DO $migration$
BEGIN
    EXECUTE pg_catalog.replace($sql$
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
            TG_TABLE_NAME::text, TG_OP::text, '{}'::text[]);
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
        PERFORM @s.rbac_gateway_record_group_change(what, TG_TABLE_NAME::text, TG_OP::text, keys);
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
    RETURN OLD;
END;
$fn$;


CREATE OR REPLACE FUNCTION @s.rbac_gateway_session_principal(p_token_sha256 TEXT, p_requires_alert BOOLEAN)
RETURNS TABLE (
    admin_id TEXT,
    seconds_left FLOAT8,
    roles TEXT[],
    permissions TEXT[],
    break_glass_seconds FLOAT8,
    break_glass_until TIMESTAMPTZ
)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
#variable_conflict use_column
DECLARE
    v_admin TEXT;
    v_left FLOAT8;
BEGIN
    SELECT s.admin_id, EXTRACT(EPOCH FROM (s.expires_at_utc - now()))::float8
      INTO v_admin, v_left
      FROM @s.admin_sessions s
     WHERE s.token_sha256 = p_token_sha256 AND s.revoked_at_utc IS NULL AND s.expires_at_utc > now();
    IF NOT FOUND THEN
        RETURN;
    END IF;
    RETURN QUERY
    SELECT v_admin, v_left, p.roles, p.permissions, p.break_glass_seconds, p.break_glass_until
      FROM @s.rbac_gateway_principal(v_admin::text, p_requires_alert::boolean) p;
END
$fn$;

CREATE OR REPLACE PROCEDURE @s.rbac_gateway_session_lookup(
    p_token_sha256 TEXT,
    p_requires_alert BOOLEAN,
    INOUT admin_id TEXT DEFAULT NULL,
    INOUT seconds_left FLOAT8 DEFAULT NULL,
    INOUT roles TEXT[] DEFAULT NULL,
    INOUT permissions TEXT[] DEFAULT NULL,
    INOUT break_glass_seconds FLOAT8 DEFAULT NULL,
    INOUT break_glass_until TIMESTAMPTZ DEFAULT NULL
)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    SELECT s.admin_id, EXTRACT(EPOCH FROM (s.expires_at_utc - now()))::float8,
           p.roles, p.permissions, p.break_glass_seconds, p.break_glass_until
      INTO admin_id, seconds_left, roles, permissions, break_glass_seconds, break_glass_until
      FROM @s.admin_sessions s
      CROSS JOIN LATERAL @s.rbac_gateway_principal(s.admin_id::text, p_requires_alert::boolean) p
     WHERE s.token_sha256 = p_token_sha256 AND s.revoked_at_utc IS NULL AND s.expires_at_utc > now();
END
$fn$;

CREATE OR REPLACE FUNCTION @s.rbac_gateway_session_principals(p_hashes TEXT[], p_requires_alert BOOLEAN)
RETURNS TABLE (
    admin_id TEXT,
    seconds_left FLOAT8,
    roles TEXT[],
    permissions TEXT[],
    break_glass_seconds FLOAT8,
    break_glass_until TIMESTAMPTZ,
    token_sha256 TEXT
)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET plan_cache_mode = force_generic_plan AS $fn$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT s.admin_id, EXTRACT(EPOCH FROM (s.expires_at_utc - now()))::float8,
           p.roles, p.permissions, p.break_glass_seconds, p.break_glass_until, h
      FROM unnest(p_hashes) h
      JOIN @s.admin_sessions s ON s.token_sha256 = h AND s.revoked_at_utc IS NULL AND s.expires_at_utc > now()
      CROSS JOIN LATERAL @s.rbac_gateway_principal(s.admin_id::text, p_requires_alert::boolean) p;
END
$fn$;
$sql$, '@s.', pg_catalog.quote_ident(pg_catalog.current_schema()) OPERATOR(pg_catalog.||) '.');
END
$migration$;
