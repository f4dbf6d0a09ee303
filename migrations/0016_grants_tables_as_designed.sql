-- The rest of 004 §3.2 (interface.md: rbac_ticket_grants, rbac_break_glass_sessions and
-- rbac_grants_audit "as in §3.2 of 004"): 0001 made the tables and one index each; this adds the
-- other indexes §3.2 declares and its append-only rule for rbac_grants_audit (console_app may
-- insert and read it, never update, delete or truncate it: §3.2 names UPDATE and DELETE; a
-- TRUNCATE deletes too).
--
-- In production Console's own migration (its 0021) made all of it. PostgreSQL checks a table's
-- ownership before it looks for an index of the name (CREATE INDEX IF NOT EXISTS on a table of
-- another role fails), and only the owner may revoke every grant; so each statement runs only
-- where the migrating role owns the table or is a member of its owner (development, tests,
-- demo, a database the gateway's migrations made; a superuser counts as every role's member, so
-- a superuser's migrate adds what is missing on Console's tables too), and is skipped elsewhere:
-- a database whose tables Console's own role owns is left as Console made it.
--
-- Not here: §3.2's idx_rbg_user predicate `AND expires_at_utc > NOW()`. PostgreSQL refuses
-- a function that is not immutable in an index predicate ("functions in index predicate must be
-- marked IMMUTABLE"), so 0001's index stops at `revoked_at_utc IS NULL`.
--
-- No trigger refuses UPDATE or DELETE for every role, as access_audit_events has: §3.2 deletes
-- an admin's rows with the admin (ON DELETE CASCADE), which such a trigger would refuse.
--
-- Each table is found as its statements find it (to_regclass, by search_path).
--
-- Changing it: a new migration (never edit this one).
DO $$
BEGIN
    IF pg_has_role((SELECT relowner FROM pg_class WHERE oid = to_regclass('rbac_grants_audit')),
                   'USAGE') THEN
        CREATE INDEX IF NOT EXISTS idx_rga_ticket ON rbac_grants_audit (ticket_id)
            WHERE ticket_id IS NOT NULL;
        CREATE INDEX IF NOT EXISTS idx_rga_expires ON rbac_grants_audit (expires_at_utc)
            WHERE expires_at_utc IS NOT NULL;
        -- Not where console_app owns the table: revoking would take the owner's own DELETE,
        -- which ON DELETE CASCADE needs to erase an admin's rows with the admin.
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'console_app')
           AND (SELECT pg_get_userbyid(relowner) FROM pg_class
                 WHERE oid = to_regclass('rbac_grants_audit')) <> 'console_app' THEN
            REVOKE UPDATE, DELETE, TRUNCATE ON rbac_grants_audit FROM console_app;
            GRANT INSERT, SELECT ON rbac_grants_audit TO console_app;
        END IF;
    END IF;
    IF pg_has_role((SELECT relowner FROM pg_class WHERE oid = to_regclass('rbac_ticket_grants')),
                   'USAGE') THEN
        CREATE INDEX IF NOT EXISTS idx_rtg_ticket ON rbac_ticket_grants (ticket_id)
            WHERE revoked_at_utc IS NULL;
        CREATE INDEX IF NOT EXISTS idx_rtg_customer ON rbac_ticket_grants (customer_id)
            WHERE revoked_at_utc IS NULL;
    END IF;
END
$$;
