-- The change feed's trigger function (0004) runs as its owner, as 0007's break-glass functions
-- do, and every function of the gateway's that runs as its owner resolves names in the
-- migration's schema and never in the caller's temporary tables.
--
-- Until now rbac_gateway_log_change ran as the role that wrote Console's table: its INSERT into
-- rbac_change_log (and that table's sequence) was checked against Console's own database role,
-- which has no grant on the gateway's tables, so once `rbac-gateway migrate` had run every write
-- Console made to a watched table as a role other than the tables' owner (a login's
-- admin_sessions row, a group change) failed with "permission denied for sequence
-- rbac_change_log_id_seq". Tests ran as a superuser and never saw it; tests/api/coherence.rs now
-- writes as a role with only Console's grants. As owner, Console's role needs no grant on
-- rbac_change_log, and a change that cannot be recorded still fails with the write (it is never
-- applied unannounced).
--
-- A function that runs as its owner must not let the caller choose what its names mean: 0007's
-- `SET search_path FROM CURRENT` kept the migration's path ("$user", public), and without
-- pg_temp named PostgreSQL searches the caller's temporary schema first, so a role that may
-- write a watched table could create a temporary rbac_change_log (with a trigger of its own) and
-- have it written, and run, as the owner. The path is now the migration's schema and then
-- pg_temp, last (pg_catalog is searched first, always): PostgreSQL's advice for SECURITY DEFINER
-- functions. tests/api/coherence.rs tries it; `check --database-url` names a function that is
-- not so.
--
-- Changing it: a new migration (never edit this one).
DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY[
        'rbac_gateway_log_change()',
        'rbac_gateway_record_group_change(text, text, text)',
        'rbac_gateway_break_glass_roles()',
        'rbac_gateway_break_glass_change()'
    ] LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = %I, pg_temp',
                       f, current_schema());
    END LOOP;
END
$$;
