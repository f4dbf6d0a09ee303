-- Console's role owns Console's tables, and the owner of a table may attach code to it that
-- runs as whoever reads or writes it, with no CREATE in any schema: a row-level security policy,
-- a cast of a column's type it made (to_jsonb calls an enum's cast to json; an implicit cast to
-- text runs in a comparison), a rule, a view or an inheritance child in the table's place, and,
-- where the gateway writes (rbac_grants_audit, rbac_ticket_grants), a trigger or its WHEN, a
-- default (built-ins such as query_to_xml run SQL), a constraint, an index expression. Two
-- reviews reproduced each running as the serve login or as the owner of the gateway's tables
-- (inside its SECURITY DEFINER functions): wiping access_audit_events, forging a delivered
-- break-glass alert, marking pending alerts delivered unsent, with `check` passing.
--
-- What this migration makes of it (docs/design/security.md):
-- 1. Every function of the gateway's runs with row_security = off (as every session and
--    transaction of the gateway's does: src/stores/db.rs, src/stores/migrations.rs): a read a
--    policy would filter fails with 42501 instead of running the policy.
-- 2. rbac_gateway_log_change reads the one column its trigger names (and token_sha256) by name,
--    only where it is text or varchar; otherwise it records a change of the whole table.
-- 3. rbac_gateway_console_code says what of Console's tables is not in the shape the interface
--    gives them (a list of what is accepted, not of what is refused); `check`, the sweep and the
--    alert pass ask it before they read anything of Console's.
-- 4. rbac_gateway_plain (before a function of the gateway's that runs as its owner reads
--    Console's tables: the break-glass record and roles here, the erasure in 0035) and
--    rbac_gateway_guard_writes (in the first statement of a transaction that writes Console's
--    tables) lock the tables and refuse, in the same transaction, what is not in that shape.
--
-- tests/api/planted.rs plants each. Changing them: a new migration (never edit this one). A
-- function a later migration makes or re-creates states `SET row_security = off` itself (`check`
-- names one that does not).
DO $migration$
DECLARE
    f pg_catalog.regprocedure;
BEGIN
    EXECUTE pg_catalog.replace($sql$
CREATE OR REPLACE FUNCTION @s.rbac_gateway_log_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET row_security = off AS $fn$
DECLARE
    col   text := TG_ARGV[0];
    texts oid[] := ARRAY['pg_catalog.text'::regtype::oid, 'pg_catalog.varchar'::regtype::oid];
    pick  text;
    who   text;
    token text;
BEGIN
    IF TG_LEVEL = 'ROW' AND col IS NOT NULL AND EXISTS (
           SELECT FROM pg_attribute a
            WHERE a.attrelid = TG_RELID AND a.attname = col::name AND NOT a.attisdropped
              AND a.atttypid = ANY (texts)) THEN
        pick := format('SELECT ($1).%I::pg_catalog.text, %s', col,
                       CASE WHEN EXISTS (SELECT FROM pg_attribute a
                                          WHERE a.attrelid = TG_RELID AND a.attname = 'token_sha256'::name
                                            AND NOT a.attisdropped AND a.atttypid = ANY (texts))
                            THEN '($1).token_sha256::pg_catalog.text' ELSE 'NULL::pg_catalog.text' END);
        IF TG_OP <> 'INSERT' THEN
            EXECUTE pick INTO who, token USING OLD;
            INSERT INTO @s.rbac_change_log (table_name, admin_id, token_sha256)
            VALUES (TG_TABLE_NAME, who, token);
        END IF;
        IF TG_OP <> 'DELETE' THEN
            EXECUTE pick INTO who, token USING NEW;
            INSERT INTO @s.rbac_change_log (table_name, admin_id, token_sha256)
            VALUES (TG_TABLE_NAME, who, token);
        END IF;
    ELSE
        INSERT INTO @s.rbac_change_log (table_name) VALUES (TG_TABLE_NAME);
    END IF;
    PERFORM pg_notify('rbac_gateway_changes'::text, TG_TABLE_NAME::text);
    RETURN NULL;
END;
$fn$;

-- What of another role's would run as the gateway where it reads p_tables (the columns
-- p_columns, each `table.column`) or writes p_written, all in the schema p_schema: each finding
-- as a sentence, none where the tables are as the interface describes them. What is accepted is
-- listed, not what is refused (a review found each list of refusals incomplete): a table the
-- gateway reads or writes is a plain table (no view, partition or inheritance child under it),
-- with no row-level security and no rule, and each column the gateway reads (every column of
-- one it writes) of a built-in base type a superuser owns (no enum, domain, range or composite:
-- a cast or check of those runs code of their owner's), and each column it compares of exactly
-- the interface's type. A table it writes has, besides, no trigger but the gateway's own and a
-- built-in trigger function's without a WHEN; nothing but built-ins referred to by its
-- defaults, constraints and indexes (pg_depend); defaults that are
-- constants, now() or a sequence; CHECK constraints and index predicates that call nothing;
-- indexes on plain columns with built-in operator classes; no exclusion constraint. Run by
-- `check --database-url`, and, under a lock, by rbac_gateway_guard_writes (before the gateway
-- writes) and rbac_gateway_plain (before a function of the gateway's that runs as its owner
-- reads).
CREATE OR REPLACE FUNCTION @s.rbac_gateway_console_code(p_schema oid, p_tables text[], p_columns text[], p_written text[])
RETURNS SETOF text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp SET row_security = off AS $fn$
    WITH t AS (
        SELECT c.oid, c.relname::text AS name, c.relkind, c.relrowsecurity, c.relforcerowsecurity,
               c.relname::text = ANY (p_written) AS written
          FROM pg_class c
         WHERE c.relnamespace = p_schema AND c.relname::text = ANY (p_tables || p_written)
    ), superusers(role) AS (
        SELECT r.oid FROM pg_roles r WHERE r.rolsuper
    ), gateways(owner) AS (
        SELECT c.relowner FROM pg_class c WHERE c.relnamespace = p_schema AND c.relname = 'rbac_change_log'
    ), calls(pattern) AS (
        -- A name followed by "(" once the syntax that reads so is taken out: a function call.
        SELECT '[A-Za-z0-9_"$]\s*\(|OPERATOR\(|::[^ ,()\[\]]*\.'
    )
    SELECT format('%s is a %s, not a table: what it calls runs as the role that reads it', t.name,
                  CASE t.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' WHEN 'f' THEN 'foreign table'
                                 WHEN 'p' THEN 'partitioned table' ELSE format('relation of kind %s', t.relkind) END)
      FROM t WHERE t.relkind <> 'r'
    UNION ALL
    SELECT format('%s has row-level security (%s): its policies would run as the role that reads it, the gateway''s among them, so the gateway reads it with row_security off and every statement of the gateway''s through it fails (ALTER TABLE %I DISABLE ROW LEVEL SECURITY, NO FORCE ROW LEVEL SECURITY, and drop its policies)',
                  t.name,
                  concat_ws(', ', CASE WHEN t.relrowsecurity THEN 'enabled' END, CASE WHEN t.relforcerowsecurity THEN 'forced' END,
                            (SELECT format('policies: %s', count(*)) FROM pg_policy p WHERE p.polrelid = t.oid HAVING count(*) > 0)),
                  t.name)
      FROM t WHERE t.relrowsecurity OR t.relforcerowsecurity OR EXISTS (SELECT FROM pg_policy p WHERE p.polrelid = t.oid)
    UNION ALL
    -- What the owner of the gateway's tables (as which rbac_gateway_plain and
    -- rbac_gateway_guard_writes lock) may not lock: those reads and writes would fail.
    SELECT format('the owner of the gateway''s tables (%s) may not lock %s: it needs %s on it, table-wide (GRANT %s ON %I TO %I, as its owner)',
                  pg_get_userbyid(g.owner), t.name, x.needs, x.needs, t.name, pg_get_userbyid(g.owner))
      FROM t CROSS JOIN gateways g
      CROSS JOIN LATERAL (SELECT CASE WHEN t.written THEN 'SELECT, INSERT, UPDATE' ELSE 'SELECT' END AS needs) x
     WHERE NOT has_table_privilege(g.owner, t.oid, 'SELECT')
        OR (t.written AND NOT has_table_privilege(g.owner, t.oid, 'INSERT, UPDATE'))
    UNION ALL
    SELECT format('rule %s on %s rewrites what the gateway reads or writes there, and what it calls runs as the gateway', r.rulename, t.name)
      FROM t JOIN pg_rewrite r ON r.ev_class = t.oid WHERE r.rulename <> '_RETURN'
    UNION ALL
    SELECT format('%s has %s under it: its rows and what runs on them are read or written as the gateway''s', t.name,
                  string_agg(h.inhrelid::regclass::text, ', ' ORDER BY h.inhrelid::regclass::text))
      FROM t JOIN pg_inherits h ON h.inhparent = t.oid GROUP BY t.name
    UNION ALL
    SELECT format('column %s.%s is of type %s (%s, owned by %s): only a built-in base type is read or written as the gateway (a cast or check of another type runs its owner''s code)',
                  t.name, a.attname, a.atttypid::regtype,
                  CASE ty.typtype WHEN 'e' THEN 'an enum' WHEN 'd' THEN 'a domain' WHEN 'r' THEN 'a range' WHEN 'm' THEN 'a multirange'
                                  WHEN 'c' THEN 'a composite' WHEN 'p' THEN 'a pseudo-type' ELSE 'a base type' END,
                  pg_get_userbyid(ty.typowner))
      FROM t JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped
             JOIN pg_type ty ON ty.oid = a.atttypid
     WHERE (ty.typtype <> 'b' OR ty.typowner NOT IN (SELECT role FROM superusers))
       AND (t.written OR format('%s.%s', t.name, a.attname) = ANY (p_columns))
    UNION ALL
    -- A column the gateway compares has exactly the interface's type: with another built-in
    -- (varchar, an integer for a text id) the comparison needs an operator pg_catalog has not
    -- for exactly those types, and one Console's role made in the schema would match better.
    SELECT format('column %s.%s is of type %s where the interface gives it %s: the gateway''s comparisons of it then take an operator another role may define (ALTER TABLE %I ALTER COLUMN %I TYPE %s)',
                  t.name, a.attname, format_type(a.atttypid, NULL), x.expected, t.name, a.attname, x.expected)
      FROM t JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped
             CROSS JOIN LATERAL (SELECT CASE WHEN a.attname::text LIKE '%\_at\_utc' THEN 'timestamp with time zone'
                                             WHEN a.attname::text = 'customer_id' THEN 'integer'
                                             ELSE 'text' END AS expected) x
     WHERE format('%s.%s', t.name, a.attname) = ANY (p_columns)
       AND format_type(a.atttypid, NULL) <> x.expected
    UNION ALL
    SELECT format('trigger %s on %s runs %s as the role that writes %s, the gateway among them (only the gateway''s own triggers, and a built-in trigger function without a WHEN, run there): drop it, or put what it does in Console''s own statements',
                  tg.tgname, t.name, p.oid::regprocedure, t.name)
      FROM t JOIN pg_trigger tg ON tg.tgrelid = t.oid AND NOT tg.tgisinternal
             JOIN pg_proc p ON p.oid = tg.tgfoid
     WHERE t.written
       AND NOT (p.pronamespace = p_schema AND p.proname::text LIKE 'rbac\_gateway\_%' AND p.proowner IN (SELECT owner FROM gateways)
                AND tg.tgqual IS NULL)
       AND NOT (p.pronamespace = 'pg_catalog'::regnamespace AND p.oid < 16384 AND tg.tgqual IS NULL)
    UNION ALL
    SELECT format('the default of %s.%s is %s: only a constant, now() or a sequence runs as the role that writes %s, the gateway among them',
                  t.name, a.attname, pg_get_expr(ad.adbin, ad.adrelid), t.name)
      FROM t JOIN pg_attrdef ad ON ad.adrelid = t.oid
             JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = ad.adnum
     WHERE t.written
       AND pg_get_expr(ad.adbin, ad.adrelid) !~ ('^(now\(\)|CURRENT_TIMESTAMP|nextval\(''[^'']*''::regclass\)|NULL(::[a-z ]+(\[\])?)?|''[^'']*''(::[a-z ]+(\[\])?)?|-?[0-9.]+|true|false)$')
    UNION ALL
    SELECT format('constraint %s on %s (%s) calls what runs as the role that writes %s, the gateway among them: only a CHECK that calls nothing runs there',
                  co.conname, t.name, pg_get_constraintdef(co.oid), t.name)
      FROM t JOIN pg_constraint co ON co.conrelid = t.oid
     WHERE t.written
       AND (co.contype = 'x'
            OR (co.contype = 'c' AND regexp_replace(pg_get_constraintdef(co.oid), '\m(CHECK|ANY|ALL|IN|NOT|AND|OR)\s*\(', '(', 'g')
                                     ~ (SELECT pattern FROM calls)))
    UNION ALL
    -- What a default, constraint or index of a written table refers to that is not built in
    -- (built-ins are pinned, and have no pg_depend row): an operator IS DISTINCT FROM or CASE
    -- prints without its name, a function, a type, a collation another role made.
    SELECT format('%s of %s refers to %s, which is not built in: it runs, or decides, as the role that writes %s, the gateway among them',
                  x.what, t.name, pg_describe_object(d.refclassid, d.refobjid, d.refobjsubid), t.name)
      FROM t
      JOIN LATERAL (
            SELECT 'a default' AS what, 'pg_attrdef'::regclass AS classid, ad.oid AS objid
              FROM pg_attrdef ad WHERE ad.adrelid = t.oid
            UNION ALL
            SELECT format('constraint %s', co.conname), 'pg_constraint'::regclass, co.oid
              FROM pg_constraint co WHERE co.conrelid = t.oid
            UNION ALL
            SELECT format('index %s', i.indexrelid::regclass), 'pg_class'::regclass, i.indexrelid
              FROM pg_index i WHERE i.indrelid = t.oid
           ) x ON t.written
      JOIN pg_depend d ON d.classid = x.classid AND d.objid = x.objid
     WHERE d.refclassid IN ('pg_proc'::regclass, 'pg_operator'::regclass, 'pg_type'::regclass,
                            'pg_collation'::regclass, 'pg_opclass'::regclass, 'pg_opfamily'::regclass)
       -- initdb's own objects (below FirstNormalObjectId, 16384): its collations are not pinned
       AND d.refobjid >= 16384
    UNION ALL
    SELECT format('index %s on %s is not on plain columns with built-in operator classes, or its predicate calls what runs as the role that writes %s, the gateway among them',
                  i.indexrelid::regclass, t.name, t.name)
      FROM t JOIN pg_index i ON i.indrelid = t.oid
     WHERE t.written
       AND (i.indexprs IS NOT NULL
            OR EXISTS (SELECT FROM unnest(i.indclass::oid[]) oc JOIN pg_opclass o ON o.oid = oc
                        WHERE o.opcowner NOT IN (SELECT role FROM superusers))
            OR coalesce(regexp_replace(pg_get_expr(i.indpred, i.indrelid), '\m(ANY|ALL|IN|NOT|AND|OR)\s*\(', '(', 'g')
                        ~ (SELECT pattern FROM calls), false))
    ORDER BY 1
$fn$;
REVOKE EXECUTE ON FUNCTION @s.rbac_gateway_console_code(oid, text[], text[], text[]) FROM PUBLIC;

-- Before the gateway writes a table of Console's (p_tables, of rbac_grants_audit and
-- rbac_ticket_grants), in the transaction's first writing statement: the tables locked as a
-- write locks them (ROW EXCLUSIVE, which CREATE TRIGGER, CREATE RULE, CREATE POLICY and ALTER
-- TABLE wait for until the transaction ends), then nothing of another role's that the writes
-- would run as the gateway may be on them, or the statement fails (insufficient_privilege)
-- naming it. True otherwise. It runs as its owner only to lock (LOCK asks for a table-wide
-- INSERT or UPDATE; the serve role holds UPDATE on two columns of rbac_ticket_grants): it reads
-- the catalogues and runs nothing of another's, and locks no other table.
CREATE OR REPLACE FUNCTION @s.rbac_gateway_guard_writes(p_tables text[]) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET row_security = off AS $fn$
DECLARE
    ns    oid := (SELECT c.relnamespace FROM pg_class c WHERE c.oid = '@s.rbac_change_log'::regclass);
    t     text;
    found text;
BEGIN
    FOREACH t IN ARRAY p_tables LOOP
        IF t IS NULL OR t NOT IN ('rbac_grants_audit', 'rbac_ticket_grants') THEN
            RAISE EXCEPTION 'rbac_gateway_guard_writes locks rbac_grants_audit and rbac_ticket_grants only, not %', t
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        BEGIN
            EXECUTE format('LOCK TABLE %I.%I IN ROW EXCLUSIVE MODE', (SELECT n.nspname FROM pg_namespace n WHERE n.oid = ns), t);
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE EXCEPTION 'the owner of the gateway''s functions (%) may not lock % before the gateway writes it: it needs INSERT or UPDATE on it, table-wide (GRANT INSERT, UPDATE ON % TO %, as its owner)',
                current_user, t, t, current_user USING ERRCODE = 'insufficient_privilege';
        END;
    END LOOP;
    -- The columns the gateway writes or compares there (the interface's; src/stores/schema.rs
    -- CONSOLE_TABLES lists the same), which must have exactly the interface's types.
    SELECT string_agg(w, '; ') INTO found
      FROM @s.rbac_gateway_console_code(ns::oid, '{}'::text[],
               ARRAY(SELECT c FROM unnest('{rbac_grants_audit.id,rbac_grants_audit.event_type,rbac_grants_audit.target_user_id,rbac_grants_audit.role_id,rbac_grants_audit.ticket_id,rbac_grants_audit.customer_id,rbac_grants_audit.justification,rbac_grants_audit.granted_by,rbac_grants_audit.expires_at_utc,rbac_grants_audit.group_id,rbac_grants_audit.created_at_utc,rbac_ticket_grants.id,rbac_ticket_grants.user_id,rbac_ticket_grants.role_id,rbac_ticket_grants.customer_id,rbac_ticket_grants.ticket_id,rbac_ticket_grants.expires_at_utc,rbac_ticket_grants.revoked_at_utc,rbac_ticket_grants.revoke_reason}'::text[]) c
                      WHERE split_part(c, '.', 1) = ANY (p_tables)),
               p_tables::text[]) w;
    IF found IS NOT NULL THEN
        RAISE EXCEPTION 'the gateway does not write a table of Console''s where code of another role would run as the gateway: %', found
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN true;
END;
$fn$;
REVOKE EXECUTE ON FUNCTION @s.rbac_gateway_guard_writes(text[]) FROM PUBLIC;

-- Before a function of the gateway's that runs as its owner, or a transaction of the serve
-- login's (the sweep's and the alert pass's reads), reads tables of Console's (p_tables, the
-- columns p_columns): the tables locked (ACCESS SHARE, until the transaction
-- ends: a rename, a view in a table's place or a column's new type waits for it), then nothing
-- of another role's that the reads would run as the owner may be on them, or the statement
-- fails (insufficient_privilege) naming it: Console's write that fired the trigger fails. It
-- runs as its owner to lock (LOCK asks for a table-wide SELECT, which the serve role does not
-- hold on admins); it reads the catalogues only, and runs nothing of another's.
CREATE OR REPLACE FUNCTION @s.rbac_gateway_plain(p_tables text[], p_columns text[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET row_security = off AS $fn$
DECLARE
    ns    oid := (SELECT c.relnamespace FROM pg_class c WHERE c.oid = '@s.rbac_change_log'::regclass);
    found text;
BEGIN
    BEGIN
        EXECUTE format('LOCK TABLE %s IN ACCESS SHARE MODE',
                       (SELECT string_agg(format('%I.%I', n.nspname, w.name), ', ')
                          FROM unnest(p_tables) w(name), pg_namespace n WHERE n.oid = ns));
    EXCEPTION WHEN insufficient_privilege THEN
        RAISE EXCEPTION 'the owner of the gateway''s functions (%) may not lock % before the gateway reads them: it needs SELECT on each, table-wide (GRANT SELECT ON ... TO %, as their owner)',
            current_user, array_to_string(p_tables, ', '), current_user USING ERRCODE = 'insufficient_privilege';
    END;
    -- The quick look first (its plan kept for the session: this runs for every row Console
    -- writes to the break-glass trigger's tables); the whole one only where it finds anything.
    IF EXISTS (SELECT 1 FROM unnest(p_tables) w(name)
                 LEFT JOIN pg_class c ON c.relnamespace = ns AND c.relname = w.name::name
                WHERE c.oid IS NULL OR c.relkind <> 'r' OR c.relrowsecurity OR c.relforcerowsecurity
                   OR c.relhasrules OR c.relhassubclass)
       OR EXISTS (SELECT 1 FROM unnest(p_columns) w(col)
                    JOIN pg_class c ON c.relnamespace = ns AND c.relname = split_part(w.col, '.', 1)::name
                    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = split_part(w.col, '.', 2)::name
                                       AND NOT a.attisdropped
                   WHERE format_type(a.atttypid, NULL)
                         <> CASE WHEN a.attname::text LIKE '%\_at\_utc' THEN 'timestamp with time zone'
                                 WHEN a.attname::text = 'customer_id' THEN 'integer' ELSE 'text' END) THEN
        SELECT string_agg(w, '; ') INTO found FROM @s.rbac_gateway_console_code(ns::oid, p_tables::text[], p_columns::text[], '{}'::text[]) w;
        IF found IS NOT NULL THEN
            RAISE EXCEPTION 'the gateway does not read a table of Console''s as its owner where code of another role would run: %', found
                USING ERRCODE = 'insufficient_privilege';
        END IF;
    END IF;
END;
$fn$;
REVOKE EXECUTE ON FUNCTION @s.rbac_gateway_plain(text[], text[]) FROM PUBLIC;

-- Every role the break-glass group holds, after inheritance: 0017's, read after the check above
-- (so VOLATILE: it locks). No login calls it (the alert pass reads the roles itself).
CREATE OR REPLACE FUNCTION @s.rbac_gateway_break_glass_roles() RETURNS TABLE (role_id text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET row_security = off AS $fn$
#variable_conflict use_column
BEGIN
    PERFORM @s.rbac_gateway_plain(
        '{rbac_groups,rbac_group_roles,rbac_role_inheritance}'::text[],
        '{rbac_groups.id,rbac_groups.name,rbac_group_roles.group_id,rbac_group_roles.role_id,rbac_role_inheritance.child_role_id,rbac_role_inheritance.parent_role_id}'::text[]);
    RETURN QUERY
    WITH RECURSIVE e(role_id) AS (
        SELECT gr.role_id FROM @s.rbac_group_roles gr JOIN @s.rbac_groups g ON g.id = gr.group_id
         WHERE g.name = 'break-glass'
        UNION
        SELECT ri.parent_role_id FROM @s.rbac_role_inheritance ri JOIN e ON ri.child_role_id = e.role_id
    )
    SELECT e.role_id FROM e;
END;
$fn$;

-- The break-glass record (0032's body), after the check above.
CREATE OR REPLACE FUNCTION @s.rbac_gateway_break_glass_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET row_security = off AS $fn$
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
    -- What this reads of Console's, as this function's owner: plain tables, built-in types.
    PERFORM @s.rbac_gateway_plain(
        '{rbac_groups,rbac_roles,rbac_permissions,rbac_role_permissions,rbac_role_inheritance,rbac_group_roles,rbac_user_groups,admins}'::text[],
        '{rbac_groups.id,rbac_groups.name,rbac_roles.id,rbac_roles.name,rbac_permissions.id,rbac_permissions.name,rbac_role_permissions.role_id,rbac_role_permissions.permission_id,rbac_role_inheritance.child_role_id,rbac_role_inheritance.parent_role_id,rbac_group_roles.group_id,rbac_group_roles.role_id,rbac_user_groups.user_id,rbac_user_groups.group_id,admins.id,admins.email}'::text[]);
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
$sql$, '@s.', pg_catalog.quote_ident(pg_catalog.current_schema()) OPERATOR(pg_catalog.||) '.');
    -- serve's sweep writes through the guard, and `check` run as its login asks the lint
    -- (deploy/gateway-grants.sql grants the same again).
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'rbac_gateway_serve') THEN
        GRANT EXECUTE ON FUNCTION rbac_gateway_guard_writes(text[]), rbac_gateway_console_code(oid, text[], text[], text[]),
            rbac_gateway_plain(text[], text[]) TO rbac_gateway_serve;
        -- No login calls it since the alert pass reads the roles itself; it runs as its owner.
        REVOKE EXECUTE ON FUNCTION rbac_gateway_break_glass_roles() FROM rbac_gateway_serve;
    END IF;
    FOR f IN
        SELECT p.oid::pg_catalog.regprocedure FROM pg_catalog.pg_proc p
         WHERE p.pronamespace OPERATOR(pg_catalog.=) pg_catalog.to_regnamespace(pg_catalog.quote_ident(pg_catalog.current_schema()))::oid
           AND (p.proname::text OPERATOR(pg_catalog.~~) 'rbac\_gateway\_%'
                OR p.proname::text OPERATOR(pg_catalog.~~) 'rbac\_mapping\_%'
                OR p.proname::text OPERATOR(pg_catalog.=) 'access_audit_events_append_only')
    LOOP
        EXECUTE pg_catalog.format('ALTER ROUTINE %s SET row_security = off', f);
    END LOOP;
END
$migration$;
