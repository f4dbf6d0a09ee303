-- What the login of `serve --lookup-database-url` needs: the request path's reads of Console's
-- tables (a cold session and its principal, a cached session's principal, a rule's live ticket
-- grants, the reader API, the mapping's role and permission names) and nothing else. Such a
-- read may run code of Console's role (a column retyped to a type with an implicit cast to
-- text, an index or statistics expression calling its immutable function:
-- docs/design/security.md), as the reading login: each read is a read-only transaction, and
-- on this login the code can write nothing of the gateway's either, so it cannot mark a
-- break-glass alert or an audit outbox row delivered unsent.
-- `serve` logs an error at start-up where the login may write or run more of the gateway's than
-- the owner of Console's tables may (`check --lookup-database-url` says the same, exit 1).
--
-- Run once as the owner of the tables, after `rbac-gateway migrate` (again after an upgrade
-- whose notes say so), e.g. `psql "$OWNER_URL" -v ON_ERROR_STOP=1 -f lookup-grants.sql`. Where
-- Console's tables have another owner than the gateway's, run it as a member of both owner
-- roles. Then give the role, and only it, to a login of its own (or to Console's own login,
-- which holds nothing beyond Console's role: docs/deploy/heroku.md):
--   CREATE ROLE rbac_gateway_lookup_login LOGIN PASSWORD '...';
--   GRANT rbac_gateway_lookup TO rbac_gateway_lookup_login;
-- Idempotent, as deploy/gateway-grants.sql is: what the role held on this schema's tables,
-- sequences and functions is revoked first, in the same transaction (roles granted to it are
-- not: `check --lookup-database-url` names what they give beyond Console's role).

BEGIN;

DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rbac_gateway_lookup') THEN
        BEGIN
            CREATE ROLE rbac_gateway_lookup NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END;
    END IF;
END $$;

DO $$ BEGIN
    EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM rbac_gateway_lookup', current_schema());
    EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA %I FROM rbac_gateway_lookup', current_schema());
    EXECUTE format('REVOKE ALL ON ALL ROUTINES IN SCHEMA %I FROM rbac_gateway_lookup', current_schema());
END $$;

-- The three lookups (0011, 0012, 0014; each runs as the caller, reading the tables below as
-- this role).
GRANT EXECUTE ON FUNCTION rbac_gateway_session_principals(TEXT[], BOOLEAN),
    rbac_gateway_principal(TEXT, BOOLEAN),
    rbac_gateway_ticket_grants(TEXT, INTEGER, TEXT[]) TO rbac_gateway_lookup;
-- A cold session; the catalogue and group membership (a principal, the reader API, the
-- mapping's names); an active break-glass session; a rule's and the reader API's ticket grants.
GRANT SELECT ON admin_sessions, rbac_groups, rbac_group_roles, rbac_roles, rbac_role_inheritance,
    rbac_role_permissions, rbac_permissions, rbac_user_groups, rbac_break_glass_sessions,
    rbac_ticket_grants TO rbac_gateway_lookup;
-- --break-glass-requires-alert (the default): was the session's alert delivered, as it stands?
-- Read only: the alert pass, on serve's own login, writes it.
GRANT SELECT (key, delivered_at_utc, session_user_id, session_granted_at_utc, session_ends_at_utc)
    ON rbac_gateway_alerts TO rbac_gateway_lookup;

COMMIT;
