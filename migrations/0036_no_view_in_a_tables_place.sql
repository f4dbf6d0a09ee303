-- A view Console's role puts in place of one of its tables (rename the table, create a view under
-- its name calling a function of its own, grant SELECT on it) ran, with its function, as whoever
-- read it: as the serve login in the session lookups of every cold request, unseen until the
-- next alert pass raised an alert naming the view (the request path checks nothing per request:
-- migration 0034 locks and checks only where the gateway's functions run as their owner or
-- write). The server refuses it now, before any of its code runs: every function of the
-- gateway's runs with restrict_nonsystem_relation_kind = 'view, foreign-table' (PostgreSQL's fix
-- of CVE-2024-7348 for pg_dump: 17, and 16.4, 15.8, 14.13, 13.16 and 12.20 of August 2024), as
-- every transaction of the gateway's does on such a server (src/stores/db.rs, settings), so
-- opening a view or foreign table that is not PostgreSQL's own fails (55000), and the lookup
-- answers 503. The gateway has no view of its own; the catalogue's views (pg_roles,
-- pg_settings) are the system's. A function stored with the setting fails on a server that
-- lacks it: keep standbys on the primary's minor release or later.
--
-- A server without the setting is left as it is (a notice says so; `check` warns). `rbac-gateway
-- migrate` gives the setting again, at every run, to a function of the gateway's without it
-- (src/stores/schema.rs, restrict_functions): one a later migration re-creates (CREATE OR
-- REPLACE drops the settings it does not state, and a migration cannot state this one on a
-- server that lacks it), or one made before the server's minor release had it.
-- tests/api/planted.rs, a_view_in_place_of_consoles_table_never_runs_on_the_request_path.
DO $migration$
DECLARE
    f pg_catalog.regprocedure;
BEGIN
    IF pg_catalog.current_setting('restrict_nonsystem_relation_kind', true) IS NULL THEN
        RAISE NOTICE 'this PostgreSQL has no restrict_nonsystem_relation_kind (before the minor releases of August 2024): a view in place of a table of Console''s runs as the gateway''s login, unseen until the alert pass raises an alert';
        RETURN;
    END IF;
    FOR f IN
        SELECT p.oid FROM pg_catalog.pg_proc p
         WHERE p.pronamespace OPERATOR(pg_catalog.=) (SELECT n.oid FROM pg_catalog.pg_namespace n
                                                       WHERE n.nspname OPERATOR(pg_catalog.=) pg_catalog.current_schema())
           AND (p.proname::text OPERATOR(pg_catalog.~~) 'rbac\_gateway\_%'
                OR p.proname::text OPERATOR(pg_catalog.~~) 'rbac\_mapping\_%'
                OR p.proname::text OPERATOR(pg_catalog.=) 'access_audit_events_append_only')
           AND p.prokind OPERATOR(pg_catalog.<>) 'a'
           AND pg_catalog.pg_has_role(p.proowner, 'USAGE')
    LOOP
        EXECUTE pg_catalog.format('ALTER ROUTINE %s SET restrict_nonsystem_relation_kind = %L',
                                  f, 'view, foreign-table');
    END LOOP;
END
$migration$;
