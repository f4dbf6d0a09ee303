-- Who may change the mapping (issue 46). Run once as the owner of the tables, after
-- `rbac-gateway migrate`. Role names are examples: replace them with yours.
--
-- Gateways (`serve --mapping-source database`) only read versions and activations.
-- Pushers (`rbac-gateway mapping push|activate|rollback`, a CI job or an operator) add
-- versions and activations; neither role may UPDATE or DELETE them (the tables are also
-- append-only by trigger), so history and rollback stay exact.

-- The gateway's login role (also needs rbac_gateway_serve: deploy/gateway-grants.sql).
-- Roles are cluster-wide: made by whichever database runs this first (two at once: the second
-- finds them made). Where they exist, an owner without CREATEROLE runs this too (PostgreSQL
-- checks CREATEROLE before it looks for the role, so CREATE ROLE is only tried when missing).
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rbac_gateway_reader') THEN
        BEGIN
            CREATE ROLE rbac_gateway_reader NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rbac_mapping_pusher') THEN
        BEGIN
            CREATE ROLE rbac_mapping_pusher NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END;
    END IF;
END $$;

GRANT SELECT ON rbac_mapping_store, rbac_mapping_activations TO rbac_gateway_reader;
-- I-11 (docs/invariants.md): FLAG_RBAC_V2's row of Console's console_flag_promotions, read
-- where 002 Phase 2 created the table (production gateways, `check`, `rollout`, the cockpit).
DO $$
BEGIN
    IF to_regclass('console_flag_promotions') IS NOT NULL THEN
        GRANT SELECT ON console_flag_promotions TO rbac_gateway_reader;
    END IF;
END $$;
-- A principal's roles (migration 0011). No function of the gateway's is PUBLIC's to run
-- (migration 0022): each role is granted what it calls, here and in gateway-grants.sql.
GRANT EXECUTE ON FUNCTION rbac_gateway_principal(TEXT, BOOLEAN) TO rbac_gateway_reader;
-- What of Console's role's would run where Console's tables are read (migration 0038): asked
-- before a command reads them (I-4 in `rollout` and the cockpit's board, `matrix`, `test`).
GRANT EXECUTE ON FUNCTION rbac_gateway_console_code(OID, TEXT[], TEXT[], TEXT[]) TO rbac_gateway_reader;
-- A customer's ticket grants, one call (migration 0012).
GRANT EXECUTE ON FUNCTION rbac_gateway_ticket_grants(TEXT, INTEGER, TEXT[]) TO rbac_gateway_reader;
-- The cold lookups waiting at one time, one call behind a pooler (migration 0014).
GRANT EXECUTE ON FUNCTION rbac_gateway_session_principals(TEXT[], BOOLEAN) TO rbac_gateway_reader;
-- A session's principal, one call (migration 0012): what the releases before 0014 send behind a
-- pooler; kept while gateways of those releases may run.
GRANT EXECUTE ON FUNCTION rbac_gateway_session_principal(TEXT, BOOLEAN) TO rbac_gateway_reader;
-- A cold lookup behind a pooler, one CALL (migration 0013): what the release before batched
-- lookups sends; kept while gateways of that release may run.
GRANT EXECUTE ON PROCEDURE rbac_gateway_session_lookup(TEXT, BOOLEAN, TEXT, FLOAT8, TEXT[], TEXT[], FLOAT8, TIMESTAMPTZ) TO rbac_gateway_reader;

GRANT SELECT, INSERT ON rbac_mapping_store, rbac_mapping_activations TO rbac_mapping_pusher;
GRANT USAGE ON SEQUENCE rbac_mapping_activations_id_seq TO rbac_mapping_pusher;
-- `mapping history` shows per activation what changed for each group: it reads the groups.
GRANT SELECT ON rbac_groups, rbac_group_roles, rbac_roles, rbac_role_inheritance,
    rbac_role_permissions, rbac_permissions TO rbac_mapping_pusher;
-- Before it reads them, a command looks for code of Console's role on Console's tables that the
-- read would run as the pusher (migrations 0038, 0040): no look, no read.
GRANT EXECUTE ON FUNCTION rbac_gateway_console_code(OID, TEXT[], TEXT[], TEXT[]) TO rbac_mapping_pusher;

-- `mapping push` validates as `check --database-url` does (same messages), with the role and
-- permission names read from the catalogue above; of the schema check it covers the tables this
-- role may read (the two above and the catalogue), and says which ones it skipped: check the
-- rest with `rbac-gateway check --database-url` as the gateway's role. These grants are all a
-- pusher needs (tests/api/mapping_store.rs pushes as a role with exactly these).

-- Signed versions (migration 0010, README "Mapping in the database"): the grants stay the same
-- (the signature is a column of rbac_mapping_store). With gateways started with
-- --mapping-public-key, these grants alone cannot open a route: a version is applied only with a
-- signature by the private key, which lives outside the database and the repository.

-- The mapping's tests (migration 0030, issue 70): `mapping push` runs them before it stores
-- anything and records what they gave in columns of rbac_mapping_store (tests_result,
-- tests_sha256, tests_cases, tests_files), which the grants above cover (INSERT and SELECT are
-- on the table). The tests read the catalogue granted above; a test that names an admin
-- (`admin = "..."`) also reads that admin's groups, sessions and ticket grants, as `matrix
-- --database-url` does: grant those reads to the pusher only if its tests name admins (the
-- shipped routes.test.toml names none: its principals are given by their groups and roles).

-- Then give the roles to login users, e.g.:
--   GRANT rbac_gateway_reader TO gateway_login;
--   GRANT rbac_mapping_pusher TO ci_deployer;
