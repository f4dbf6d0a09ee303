-- rbac_gateway_console_code (0034) found Console's tables in pg_class by a text comparison
-- (relname::text = ANY (...)), which no index serves: each call read the whole of pg_class. The
-- alert pass calls it every second on every replica, and rbac_gateway_plain and
-- rbac_gateway_guard_writes call it under their locks, so its cost grew with the catalogue,
-- whatever Console's schema holds besides its RBAC tables: some 5-11 ms a call at 300-1,500 more
-- tables of Console's once autovacuum has analyzed them, and about 110 ms before
-- (scripts/bench/alert-pass.sh; docs/performance-log.md, 2026-11-30).
--
-- The function finds the tables by name through pg_class's index
-- on (relname, relnamespace): the names cast to `name`, and compared as text too, so a name over
-- 63 bytes (which the cast would cut) still matches nothing. And its dependency look goes from
-- the written tables' defaults, constraints and indexes to pg_depend, never the other way: with
-- the catalogue's statistics taken before Console's objects were made (autovacuum behind its
-- DDL), the planner started from every dependency on an object of Console's (5,000 at 1,500
-- tables), 140 ms a call.
--
-- And it names, besides, an index or statistics object of any table the gateway reads (before:
-- an index of a table it writes) that refers to what is not built in, and rbac_gateway_plain's
-- quick look asks for one too: the planner evaluates an index's and a statistics object's
-- expressions (a call of an immutable function with constant arguments) and compares with an
-- index's operator class as the role that plans a statement on the table, so a read ran such
-- code of Console's role as the gateway's login, and inside the gateway's functions as their
-- owner (a review: an expression index on rbac_groups ran as the owner when Console's update of
-- rbac_permissions fired the break-glass trigger). What a superuser owns is trusted there (an
-- extension's operator class, pg_trgm's or citext's, is no code of Console's role: a second
-- review found Console's writes refused beside such an index). A table the gateway reads or
-- writes that is a partition is named too (its parent's key is evaluated on every write to it,
-- as the writer), and rbac_gateway_plain's quick look asks for one. The erasure trigger (0035)
-- read admins in its DECLARE, as it was entered and before its look: that read now follows the
-- look. rbac_gateway_reader may run rbac_gateway_console_code (`rollout` and the cockpit look
-- before they read Console's tables for I-4). tests/api/planted.rs,
-- consoles_code_the_planner_runs_is_named_and_refused. CREATE OR REPLACE keeps its grants
-- and drops restrict_nonsystem_relation_kind (0036), given again below where the server has it.
-- tests/api/planted.rs, console_code_reads_the_catalogue_by_index, holds the plan.
--
-- Changing it: a new migration (never edit this one).
DO $migration$
BEGIN
    EXECUTE pg_catalog.replace($sql$
CREATE OR REPLACE FUNCTION @s.rbac_gateway_console_code(p_schema oid, p_tables text[], p_columns text[], p_written text[])
RETURNS SETOF text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp SET row_security = off AS $fn$
    WITH t AS (
        SELECT c.oid, c.relname::text AS name, c.relkind, c.relrowsecurity, c.relforcerowsecurity, c.relispartition,
               c.relname::text = ANY (p_written) AS written
          FROM pg_class c
         WHERE c.relnamespace = p_schema AND c.relname = ANY ((p_tables || p_written)::name[])
           AND c.relname::text = ANY (p_tables || p_written)
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
    -- A partition: its parent's key is evaluated on every write to it, as the writer (0038).
    SELECT format('%s is a partition of %s: its partition key is evaluated as the role that writes it, the gateway among them', t.name,
                  (SELECT string_agg(h.inhparent::regclass::text, ', ') FROM pg_inherits h WHERE h.inhrelid = t.oid))
      FROM t WHERE t.relispartition
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
    -- What a default or constraint of a written table, and an index or statistics object of any
    -- table the gateway reads or writes, refers to that is not built in (built-ins are pinned,
    -- and have no pg_depend row): an operator IS DISTINCT FROM or CASE prints without its name,
    -- a function, a type, a collation, an operator class another role made. The planner itself
    -- evaluates an index's and a statistics object's expressions (their constant parts, an
    -- immutable function's call) and compares with an index's operator class, as the role that
    -- plans a statement on the table: a read runs them too.
    SELECT format('%s of %s refers to %s, which is not built in: it runs, or decides, as the role that %s %s, the gateway among them',
                  x.what, t.name, pg_describe_object(d.refclassid, d.refobjid, d.refobjsubid),
                  CASE WHEN x.on_write THEN 'writes' ELSE 'reads or writes' END, t.name)
      FROM t
      JOIN LATERAL (
            SELECT 'a default' AS what, 'pg_attrdef'::regclass AS classid, ad.oid AS objid, true AS on_write
              FROM pg_attrdef ad WHERE ad.adrelid = t.oid AND t.written
            UNION ALL
            SELECT format('constraint %s', co.conname), 'pg_constraint'::regclass, co.oid, true
              FROM pg_constraint co WHERE co.conrelid = t.oid AND t.written
            UNION ALL
            SELECT format('index %s', i.indexrelid::regclass), 'pg_class'::regclass, i.indexrelid, false
              FROM pg_index i WHERE i.indrelid = t.oid
            UNION ALL
            SELECT format('statistics object %s', s.stxname), 'pg_statistic_ext'::regclass, s.oid, false
              FROM pg_statistic_ext s WHERE s.stxrelid = t.oid
           ) x ON true
      -- Each object's dependencies by pg_depend's index on the depender, a lookup of its own
      -- (OFFSET 0): with statistics taken before Console's objects were made, the planner
      -- otherwise read all of pg_depend for each table.
      CROSS JOIN LATERAL (SELECT d.refclassid, d.refobjid, d.refobjsubid FROM pg_depend d
                           WHERE d.classid = x.classid AND d.objid = x.objid OFFSET 0) d
     WHERE d.refclassid IN ('pg_proc'::regclass, 'pg_operator'::regclass, 'pg_type'::regclass,
                            'pg_collation'::regclass, 'pg_opclass'::regclass, 'pg_opfamily'::regclass)
       -- An index's or statistics object's: what a superuser owns is trusted (an extension's
       -- operator class, such as pg_trgm's or citext's, is no code of Console's role); a
       -- default's or constraint's of a written table: only what initdb made.
       AND (x.on_write OR
            CASE d.refclassid
                 WHEN 'pg_proc'::regclass THEN (SELECT o.proowner FROM pg_proc o WHERE o.oid = d.refobjid)
                 WHEN 'pg_operator'::regclass THEN (SELECT o.oprowner FROM pg_operator o WHERE o.oid = d.refobjid)
                 WHEN 'pg_type'::regclass THEN (SELECT o.typowner FROM pg_type o WHERE o.oid = d.refobjid)
                 WHEN 'pg_collation'::regclass THEN (SELECT o.collowner FROM pg_collation o WHERE o.oid = d.refobjid)
                 WHEN 'pg_opclass'::regclass THEN (SELECT o.opcowner FROM pg_opclass o WHERE o.oid = d.refobjid)
                 WHEN 'pg_opfamily'::regclass THEN (SELECT o.opfowner FROM pg_opfamily o WHERE o.oid = d.refobjid)
            END NOT IN (SELECT role FROM superusers))
       -- initdb's own objects (below FirstNormalObjectId, 16384): its collations are not pinned.
       -- Compared as int8, which no index of pg_depend serves: the look goes from the tables'
       -- own few objects to pg_depend by its index on the depender, whatever the statistics
       -- say (taken before Console's objects were made, they put none at or above 16384, and
       -- the planner went from each of them to every default, constraint and index instead).
       AND d.refobjid::pg_catalog.int8 >= 16384
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

-- 0034's rbac_gateway_plain, its quick look asking besides for an index or statistics object that
-- refers to what is not built in. Before a function of the gateway's that runs as its owner, or a transaction of the serve
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
                   OR c.relhasrules OR c.relhassubclass OR c.relispartition)
       OR EXISTS (SELECT 1 FROM unnest(p_columns) w(col)
                    JOIN pg_class c ON c.relnamespace = ns AND c.relname = split_part(w.col, '.', 1)::name
                    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = split_part(w.col, '.', 2)::name
                                       AND NOT a.attisdropped
                   WHERE format_type(a.atttypid, NULL)
                         <> CASE WHEN a.attname::text LIKE '%\_at\_utc' THEN 'timestamp with time zone'
                                 WHEN a.attname::text = 'customer_id' THEN 'integer' ELSE 'text' END)
       -- An index or statistics object that refers to what is not built in (0038): the planner
       -- evaluates its expressions, and compares with its operator class, as the owner here.
       OR EXISTS (SELECT 1 FROM unnest(p_tables) w(name)
                    JOIN pg_class c ON c.relnamespace = ns AND c.relname = w.name::name
                    JOIN LATERAL (SELECT 'pg_class'::regclass AS classid, i.indexrelid AS objid
                                    FROM pg_index i WHERE i.indrelid = c.oid
                                  UNION ALL
                                  SELECT 'pg_statistic_ext'::regclass, s.oid
                                    FROM pg_statistic_ext s WHERE s.stxrelid = c.oid) x ON true
                    CROSS JOIN LATERAL (SELECT d.refclassid, d.refobjid FROM pg_depend d
                                         WHERE d.classid = x.classid AND d.objid = x.objid OFFSET 0) d
                   WHERE d.refclassid IN ('pg_proc'::regclass, 'pg_operator'::regclass, 'pg_type'::regclass,
                                          'pg_collation'::regclass, 'pg_opclass'::regclass, 'pg_opfamily'::regclass)
                     AND d.refobjid::pg_catalog.int8 >= 16384
                     -- What a superuser owns is trusted (an extension's operator class).
                     AND NOT EXISTS (SELECT FROM pg_roles r WHERE r.rolsuper AND r.oid = CASE d.refclassid
                              WHEN 'pg_proc'::regclass THEN (SELECT o.proowner FROM pg_proc o WHERE o.oid = d.refobjid)
                              WHEN 'pg_operator'::regclass THEN (SELECT o.oprowner FROM pg_operator o WHERE o.oid = d.refobjid)
                              WHEN 'pg_type'::regclass THEN (SELECT o.typowner FROM pg_type o WHERE o.oid = d.refobjid)
                              WHEN 'pg_collation'::regclass THEN (SELECT o.collowner FROM pg_collation o WHERE o.oid = d.refobjid)
                              WHEN 'pg_opclass'::regclass THEN (SELECT o.opcowner FROM pg_opclass o WHERE o.oid = d.refobjid)
                              WHEN 'pg_opfamily'::regclass THEN (SELECT o.opfowner FROM pg_opfamily o WHERE o.oid = d.refobjid)
                         END)) THEN
        SELECT string_agg(w, '; ') INTO found FROM @s.rbac_gateway_console_code(ns::oid, p_tables::text[], p_columns::text[], '{}'::text[]) w;
        IF found IS NOT NULL THEN
            RAISE EXCEPTION 'the gateway does not read a table of Console''s as its owner where code of another role would run: %', found
                USING ERRCODE = 'insufficient_privilege';
        END IF;
    END IF;
END;
$fn$;

-- 0035's erasure trigger, its one read of admins before the check moved after it: a DECLARE
-- initialiser runs as the function is entered, so admins was planned as the owner before
-- rbac_gateway_plain had looked (a review: a statistics object of Console's ran there, as the
-- owner, and dropped itself before the look). Otherwise 0035's body.
CREATE OR REPLACE FUNCTION @s.rbac_gateway_erase_admin() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET row_security = off AS $fn$
DECLARE
    -- The email matched with its letter case ignored only if no other admin's differs from it
    -- in case alone (admins.email is unique as written, not case-blind): read after the check.
    blind boolean;
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
    blind := NOT EXISTS (SELECT 1 FROM @s.admins a
                          WHERE lower(a.email) = lower(OLD.email) AND a.id <> OLD.id);
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
    -- 0036's setting again, where the server has it (CREATE OR REPLACE dropped it).
    IF pg_catalog.current_setting('restrict_nonsystem_relation_kind', true) IS NOT NULL THEN
        EXECUTE pg_catalog.replace(
            $sql$ALTER ROUTINE @s.rbac_gateway_console_code(oid, text[], text[], text[]) SET restrict_nonsystem_relation_kind = 'view, foreign-table';
                 ALTER ROUTINE @s.rbac_gateway_plain(text[], text[]) SET restrict_nonsystem_relation_kind = 'view, foreign-table';
                 ALTER ROUTINE @s.rbac_gateway_erase_admin() SET restrict_nonsystem_relation_kind = 'view, foreign-table'$sql$,
            '@s.', pg_catalog.quote_ident(pg_catalog.current_schema()) OPERATOR(pg_catalog.||) '.');
    END IF;
    -- `rollout` and the cockpit, as rbac_gateway_reader, look for Console's code before they
    -- read Console's tables for I-4 (deploy/mapping-grants.sql grants the same again).
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'rbac_gateway_reader') THEN
        GRANT EXECUTE ON FUNCTION rbac_gateway_console_code(oid, text[], text[], text[]) TO rbac_gateway_reader;
    END IF;
END
$migration$;
