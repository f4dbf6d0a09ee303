-- rbac_mapping_pusher may run rbac_gateway_console_code. `mapping push` reads Console's role
-- catalogue (the names the mapping uses, and its tests' groups) as the pusher, and the planner
-- evaluates an index's or statistics object's expression on those tables as whoever plans the
-- read (0038): Console's role could run its code as a role that stores and activates mappings.
-- A command now looks first and refuses to read where the look finds anything, or where its
-- role may not look (src/cli/toolbox.rs, console_looked; tests/api/planted.rs,
-- commands_refuse_to_read_consoles_tables_with_its_code_on_them). deploy/mapping-grants.sql
-- grants the same again; a pusher made after this migration gets it there.
--
-- Changing it: a new migration (never edit this one).
DO $migration$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'rbac_mapping_pusher') THEN
        GRANT EXECUTE ON FUNCTION rbac_gateway_console_code(oid, text[], text[], text[]) TO rbac_mapping_pusher;
    END IF;
END
$migration$;
