-- A collation an index or statistics object of a table the gateway reads refers to is not
-- Console's code (0038 named any that neither initdb nor a superuser made): a collation is
-- ICU's or libc's rules, and nothing of its maker's runs where the planner compares with it. A
-- review (on upgrading from 0037) found Console's case-blind collation on admins.email, made
-- with CREATE COLLATION ... (provider = icu, deterministic = false), named by `check` and, in
-- rbac_gateway_plain's quick look, refusing every write of Console's that fires the break-glass
-- or the erasure trigger, a membership change and an admin's erasure among them, with no
-- warning at `migrate`. A default's or constraint's of a table the gateway writes is named as
-- before (only what initdb made). Otherwise 0038's rbac_gateway_console_code and
-- rbac_gateway_plain. tests/api/planted.rs,
-- consoles_code_the_planner_runs_is_named_and_refused (a collation of Console's: no finding,
-- Console's writes go on). CREATE OR REPLACE keeps the grants and drops
-- restrict_nonsystem_relation_kind (0036), given again below where the server has it.
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
       -- A collation is no code: ICU's or libc's rules, whoever made it (a review: Console's
       -- case-blind collation on admins.email refused Console's own writes once upgraded).
       AND (x.on_write OR d.refclassid <> 'pg_collation'::regclass)
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

-- 0038's rbac_gateway_plain, its quick look asking no longer about a collation. Before a function of the gateway's that runs as its owner, or a transaction of the serve
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
                   -- A collation is no code (0041).
                   WHERE d.refclassid IN ('pg_proc'::regclass, 'pg_operator'::regclass, 'pg_type'::regclass,
                                          'pg_opclass'::regclass, 'pg_opfamily'::regclass)
                     AND d.refobjid::pg_catalog.int8 >= 16384
                     -- What a superuser owns is trusted (an extension's operator class).
                     AND NOT EXISTS (SELECT FROM pg_roles r WHERE r.rolsuper AND r.oid = CASE d.refclassid
                              WHEN 'pg_proc'::regclass THEN (SELECT o.proowner FROM pg_proc o WHERE o.oid = d.refobjid)
                              WHEN 'pg_operator'::regclass THEN (SELECT o.oprowner FROM pg_operator o WHERE o.oid = d.refobjid)
                              WHEN 'pg_type'::regclass THEN (SELECT o.typowner FROM pg_type o WHERE o.oid = d.refobjid)
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

$sql$, '@s.', pg_catalog.quote_ident(pg_catalog.current_schema()) OPERATOR(pg_catalog.||) '.');
    -- 0036's setting again, where the server has it (CREATE OR REPLACE dropped it).
    IF pg_catalog.current_setting('restrict_nonsystem_relation_kind', true) IS NOT NULL THEN
        EXECUTE pg_catalog.replace(
            $sql$ALTER ROUTINE @s.rbac_gateway_console_code(oid, text[], text[], text[]) SET restrict_nonsystem_relation_kind = 'view, foreign-table';
                 ALTER ROUTINE @s.rbac_gateway_plain(text[], text[]) SET restrict_nonsystem_relation_kind = 'view, foreign-table'$sql$,
            '@s.', pg_catalog.quote_ident(pg_catalog.current_schema()) OPERATOR(pg_catalog.||) '.');
    END IF;
END
$migration$;
