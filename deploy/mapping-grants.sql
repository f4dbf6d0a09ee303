-- Who may change the mapping (issue 46). Run once as the owner of the tables, after
-- `rbac-gateway migrate`. Role names are examples: replace them with yours.
--
-- Gateways (`serve --mapping-source database`) only read versions and activations.
-- Pushers (`rbac-gateway mapping push|activate|rollback`, a CI job or an operator) add
-- versions and activations; neither role may UPDATE or DELETE them (the tables are also
-- append-only by trigger), so history and rollback stay exact.

-- The gateway's login role (also needs what `serve` reads and writes elsewhere).
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rbac_gateway_reader') THEN
        CREATE ROLE rbac_gateway_reader NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rbac_mapping_pusher') THEN
        CREATE ROLE rbac_mapping_pusher NOLOGIN;
    END IF;
END $$;

GRANT SELECT ON rbac_mapping_store, rbac_mapping_activations TO rbac_gateway_reader;

GRANT SELECT, INSERT ON rbac_mapping_store, rbac_mapping_activations TO rbac_mapping_pusher;
GRANT USAGE ON SEQUENCE rbac_mapping_activations_id_seq TO rbac_mapping_pusher;
-- `mapping history` shows per activation what changed for each group: it reads the groups.
GRANT SELECT ON rbac_groups, rbac_group_roles, rbac_roles, rbac_role_inheritance,
    rbac_role_permissions, rbac_permissions TO rbac_mapping_pusher;

-- `mapping push` validates as `check --database-url` does, and that check also reads the
-- schema of every table `serve` uses (information_schema lists only tables a role has some
-- privilege on): a pusher with only the grants above gets "column ... is missing" errors.
-- Until push can skip that part, also grant the pusher SELECT on the gateway's other tables
-- (admin_sessions holds only token hashes), or push with a role that has them:
--   GRANT SELECT ON ALL TABLES IN SCHEMA public TO rbac_mapping_pusher;

-- Then give the roles to login users, e.g.:
--   GRANT rbac_gateway_reader TO gateway_login;
--   GRANT rbac_mapping_pusher TO ci_deployer;
