-- Console's role owns Console's tables, and the owner of a table may attach code to it that
-- runs as whoever reads or writes it. A review reproduced two ways for Console's role to run
-- its own code as the gateway's roles through Console's tables alone (no CREATE in any schema
-- needed), wipe the append-only access_audit_events, forge a delivered break-glass alert and
-- mark pending alerts delivered unsent, with `check` still passing:
--
-- 1. Row-level security. A policy's expression runs as the role that reads the table: as the
--    owner of the gateway's tables inside its SECURITY DEFINER functions (the break-glass
--    record, the alert pass's break-glass roles, the erasure), as the serve login in the
--    lookups. `ALTER TABLE rbac_groups ENABLE (and FORCE) ROW LEVEL SECURITY` and a policy
--    `USING (public.f())` ran f as the owner on Console's next group change. Every function of
--    the gateway's now runs with `row_security = off` (as every session of the gateway's does:
--    src/stores/db.rs, src/stores/migrations.rs): a read a policy would filter fails with
--    42501 instead of running the policy. A lookup then answers 503 (fail closed), Console's
--    write to a watched table fails, and `check --database-url` names the table.
--
-- 2. Casts. rbac_gateway_log_change serialised Console's whole row (`to_jsonb(OLD)`,
--    `to_jsonb(NEW)`), and `to_jsonb` converts a column of a type Console's role made (an enum,
--    a range) with that type's cast to json, which its owner may define: a column added to
--    admin_sessions ran its cast as the owner on every login. The change feed now reads the one
--    column its trigger names (and admin_sessions' token_sha256) by name, and only where that
--    column is text or varchar, which no cast of another's touches; otherwise it records the
--    change for the whole table, and every gateway drops every cached answer (never stale).
--
-- What `check --database-url` reports besides (src/stores/schema.rs, `console_code`): a table
-- the gateway reads that is not a table, carries rules or row-level security, or a column the
-- gateway reads of a type outside pg_catalog; a table the gateway writes (rbac_grants_audit,
-- rbac_ticket_grants) with a trigger, default, constraint or index whose function runs as the
-- writer. tests/api/planted.rs plants each.
--
-- Changing them: a new migration (never edit this one). A function a later migration makes or
-- re-creates states `SET row_security = off` itself (`check` names one that does not).
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
-- as a sentence. Run by `check --database-url` and, before the gateway writes a table of
-- Console's, by rbac_gateway_guard_writes. A function, type, operator or operator class a
-- superuser owns is trusted (the built-ins, an extension's); one Console's role owns runs with
-- the privileges of whoever reads or writes, unless it is SECURITY DEFINER (then as its owner).
CREATE OR REPLACE FUNCTION @s.rbac_gateway_console_code(p_schema oid, p_tables text[], p_columns text[], p_written text[])
RETURNS SETOF text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp SET row_security = off AS $fn$
    WITH t AS (
        SELECT c.oid, c.relname::text AS name, c.relkind, c.relrowsecurity, c.relforcerowsecurity,
               c.relname::text = ANY (p_written) AS written
          FROM pg_class c
         WHERE c.relnamespace = p_schema AND c.relname::text = ANY (p_tables || p_written)
    ), untrusted(role) AS (
        SELECT r.oid FROM pg_roles r WHERE NOT r.rolsuper
    )
    SELECT format('%s is a %s, not a table: what it calls runs as the role that reads it', t.name,
                  CASE t.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' WHEN 'f' THEN 'foreign table'
                                 ELSE format('relation of kind %s', t.relkind) END)
      FROM t WHERE t.relkind NOT IN ('r', 'p')
    UNION ALL
    SELECT format('%s has row-level security (%s): its policies would run as the role that reads it, the gateway''s among them, so the gateway reads it with row_security off and every statement of the gateway''s through it fails (ALTER TABLE %I DISABLE ROW LEVEL SECURITY, NO FORCE ROW LEVEL SECURITY, and drop its policies)',
                  t.name,
                  concat_ws(', ', CASE WHEN t.relrowsecurity THEN 'enabled' END, CASE WHEN t.relforcerowsecurity THEN 'forced' END,
                            (SELECT format('policies: %s', count(*)) FROM pg_policy p WHERE p.polrelid = t.oid HAVING count(*) > 0)),
                  t.name)
      FROM t WHERE t.relrowsecurity OR t.relforcerowsecurity OR EXISTS (SELECT FROM pg_policy p WHERE p.polrelid = t.oid)
    UNION ALL
    SELECT format('rule %s on %s rewrites what the gateway reads or writes there, and what it calls runs as the gateway', r.rulename, t.name)
      FROM t JOIN pg_rewrite r ON r.ev_class = t.oid WHERE r.rulename <> '_RETURN'
    UNION ALL
    SELECT format('column %s.%s is of type %s, which %s owns: a cast of it that role defines runs as the gateway wherever the gateway compares, copies or writes it', t.name, a.attname, a.atttypid::regtype, pg_get_userbyid(ty.typowner))
      FROM t JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped
             JOIN pg_type ty ON ty.oid = a.atttypid
     WHERE ty.typowner IN (SELECT role FROM untrusted)
       AND (t.written OR format('%s.%s', t.name, a.attname) = ANY (p_columns))
    UNION ALL
    SELECT format('trigger %s on %s runs %s as the role that writes %s, the gateway among them: make that function SECURITY DEFINER (it then runs as %s), or drop the trigger', tg.tgname, t.name, p.oid::regprocedure, t.name, pg_get_userbyid(p.proowner))
      FROM t JOIN pg_trigger tg ON tg.tgrelid = t.oid AND NOT tg.tgisinternal
             JOIN pg_proc p ON p.oid = tg.tgfoid
     WHERE t.written AND NOT p.prosecdef AND p.proowner IN (SELECT role FROM untrusted)
    UNION ALL
    SELECT format('%s of %s uses %s, which runs as the role that writes %s, the gateway among them', x.what, t.name, y.obj, t.name)
      FROM t
      JOIN LATERAL (
            SELECT 'a default or generated column' AS what, d.refclassid, d.refobjid
              FROM pg_attrdef ad JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid
             WHERE ad.adrelid = t.oid
            UNION ALL
            SELECT format('constraint %s', co.conname), d.refclassid, d.refobjid
              FROM pg_constraint co JOIN pg_depend d ON d.classid = 'pg_constraint'::regclass AND d.objid = co.oid
             WHERE co.conrelid = t.oid
            UNION ALL
            SELECT format('index %s', i.indexrelid::regclass), d.refclassid, d.refobjid
              FROM pg_index i JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = i.indexrelid
             WHERE i.indrelid = t.oid
           ) x ON t.written
      JOIN LATERAL (
            SELECT format('function %s', p.oid::regprocedure) AS obj FROM pg_proc p
             WHERE x.refclassid = 'pg_proc'::regclass AND p.oid = x.refobjid AND NOT p.prosecdef
               AND p.proowner IN (SELECT role FROM untrusted)
            UNION ALL
            SELECT format('operator %s', o.oid::regoperator) FROM pg_operator o
             WHERE x.refclassid = 'pg_operator'::regclass AND o.oid = x.refobjid AND o.oprowner IN (SELECT role FROM untrusted)
            UNION ALL
            SELECT format('operator class %s', oc.opcname) FROM pg_opclass oc
             WHERE x.refclassid = 'pg_opclass'::regclass AND oc.oid = x.refobjid AND oc.opcowner IN (SELECT role FROM untrusted)
           ) y ON true
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
        EXECUTE format('LOCK TABLE %I.%I IN ROW EXCLUSIVE MODE', (SELECT n.nspname FROM pg_namespace n WHERE n.oid = ns), t);
    END LOOP;
    SELECT string_agg(w, '; ') INTO found FROM @s.rbac_gateway_console_code(ns::oid, '{}'::text[], '{}'::text[], p_tables::text[]) w;
    IF found IS NOT NULL THEN
        RAISE EXCEPTION 'the gateway does not write a table of Console''s where code of another role would run as the gateway: %', found
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN true;
END;
$fn$;
REVOKE EXECUTE ON FUNCTION @s.rbac_gateway_guard_writes(text[]) FROM PUBLIC;
$sql$, '@s.', pg_catalog.quote_ident(pg_catalog.current_schema()) OPERATOR(pg_catalog.||) '.');
    -- serve's sweep writes through the guard, and `check` run as its login asks the lint
    -- (deploy/gateway-grants.sql grants the same again).
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'rbac_gateway_serve') THEN
        GRANT EXECUTE ON FUNCTION rbac_gateway_guard_writes(text[]), rbac_gateway_console_code(oid, text[], text[], text[])
            TO rbac_gateway_serve;
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
