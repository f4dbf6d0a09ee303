-- What the gateway's login role needs to run `serve` (with every background job: the change
-- feed, the audit writer and its spool replay, the alert pass, the sweep, FreeScout's webhook,
-- the mapping versions recorded for `rollout`, the break-glass snapshots) and `rbac-gateway
-- sweep`. Run once as the owner of the tables, after `rbac-gateway migrate` (again after an
-- upgrade whose notes say so), e.g. `psql "$OWNER_URL" -v ON_ERROR_STOP=1 -f gateway-grants.sql`.
-- Where Console's tables have another owner than the gateway's, run it as a member of both owner
-- roles: a GRANT on a table the running role may not grant only warns ("no privileges were
-- granted"). Then give the role to the gateway's login:
--   GRANT rbac_gateway_serve TO gateway_login;
--   GRANT rbac_gateway_reader TO gateway_login;   -- with --mapping-source database (mapping-grants.sql)
--
-- Idempotent, and exact: everything rbac_gateway_serve held on this schema's tables, sequences
-- and functions is revoked first, then granted again below, in one transaction (a gateway
-- running meanwhile never sees the role without its grants). UPDATE is granted on the columns
-- the gateway writes only: it never changes who a grant is for or a row of the audit trail
-- (access_audit_events is also append-only by trigger); an alert's text only where its
-- break-glass session changed after it was delivered, and it is raised again (migration 0033).
-- tests/api/grants.rs runs `serve` and `sweep` as a login holding this role alone.
--
-- Not granted here: CONNECT on the database and USAGE on the schema, which PUBLIC holds by
-- default (where they were revoked, the database's owner grants them); the mapping store
-- (deploy/mapping-grants.sql); `migrate`, which needs the tables' owner; `check
-- --database-url`, `explain`, `matrix`, `rollout`, `drift` and the cockpit, which read tables
-- beyond these (access_audit_events, the mapping store).

BEGIN;

-- Roles are cluster-wide: created once, by whichever database runs this first (two at once:
-- the second finds it made). Where it exists, an owner without CREATEROLE runs this too
-- (PostgreSQL checks CREATEROLE before it looks for the role, so CREATE ROLE is only tried when
-- missing).
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rbac_gateway_serve') THEN
        BEGIN
            CREATE ROLE rbac_gateway_serve NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END;
    END IF;
END $$;

DO $$ BEGIN
    EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM rbac_gateway_serve', current_schema());
    EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA %I FROM rbac_gateway_serve', current_schema());
    EXECUTE format('REVOKE ALL ON ALL ROUTINES IN SCHEMA %I FROM rbac_gateway_serve', current_schema());
END $$;

-- The functions serve calls. No function of the gateway's is PUBLIC's to run (migration 0022
-- revokes it: any login could otherwise call rbac_gateway_record_group_change, which runs as its
-- owner, and have a forged break-glass alert delivered); these six are this role's, and
-- mapping-grants.sql gives rbac_gateway_reader the lookups. None other is callable by a login:
-- the trigger functions need no EXECUTE to fire (docs/design/security.md).
-- Request path: a cold session lookup, one call of rbac_gateway_session_principals (0014; it
-- runs as the caller, so it reads the tables below as this role).
GRANT EXECUTE ON FUNCTION rbac_gateway_session_principals(TEXT[], BOOLEAN) TO rbac_gateway_serve;
-- Request path: a cached session's principal (0011), also called by the function above.
GRANT EXECUTE ON FUNCTION rbac_gateway_principal(TEXT, BOOLEAN) TO rbac_gateway_serve;
-- Request path: the live ticket grants of a rule with customer_param (0012).
GRANT EXECUTE ON FUNCTION rbac_gateway_ticket_grants(TEXT, INTEGER, TEXT[]) TO rbac_gateway_serve;
-- Sweep: before it writes rbac_grants_audit or rbac_ticket_grants, the guard that locks them
-- and finds nothing of Console's role's that would run as this role there (0034; runs as its
-- owner, to lock); and the lint it asks, which `check --database-url` asks as this role too
-- (reads the catalogues only, as the caller).
GRANT EXECUTE ON FUNCTION rbac_gateway_guard_writes(TEXT[]),
    rbac_gateway_console_code(OID, TEXT[], TEXT[], TEXT[]) TO rbac_gateway_serve;
-- Sweep, alert pass, FreeScout's webhook: before a transaction reads Console's tables, the lock
-- and the check that they are in the interface's shape (0034; runs as the caller).
GRANT EXECUTE ON FUNCTION rbac_gateway_plain(TEXT[], TEXT[]) TO rbac_gateway_serve;

-- Request path: the live session of a cookie's hash (session lookup).
GRANT SELECT ON admin_sessions TO rbac_gateway_serve;
-- Request path, alert pass (the group's roles and members, the daily snapshot), reader API,
-- the mapping's names checked at load: the catalogue and group membership.
GRANT SELECT ON rbac_groups, rbac_group_roles, rbac_roles, rbac_role_inheritance,
    rbac_role_permissions, rbac_permissions, rbac_user_groups TO rbac_gateway_serve;
-- Request path (an active session adds the break-glass group), alert pass (new sessions),
-- sweep (ended sessions, their break_glass_expire row).
GRANT SELECT ON rbac_break_glass_sessions TO rbac_gateway_serve;
-- Alert pass: the admin's email in a break-glass session's alert; nothing else of an admin's row.
GRANT SELECT (id, email) ON admins TO rbac_gateway_serve;
-- Request path (ticket grants), reader API (/api/rbac/me), sweep and FreeScout's webhook
-- (the active grants; each re-read under a row lock, SELECT ... FOR UPDATE).
GRANT SELECT ON rbac_ticket_grants TO rbac_gateway_serve;
-- Sweep and FreeScout's webhook: a grant revoked (I-9, after its ticket_expire row).
GRANT UPDATE (revoked_at_utc, revoke_reason) ON rbac_ticket_grants TO rbac_gateway_serve;
-- Sweep and FreeScout's webhook: ticket_expire and break_glass_expire rows (ON CONFLICT (id)
-- and the sweep's "row written yet?" read need SELECT; Console's rows are never changed).
GRANT SELECT, INSERT ON rbac_grants_audit TO rbac_gateway_serve;

-- Sweep and FreeScout's webhook: each of those rows owed to Console's audit writer (I-5), in
-- the same statement. Outbox job: the due rows claimed and read with their audit row (above),
-- each delivery or failure and its backoff, the ops alert of an overdue row, /readyz's count.
GRANT SELECT, INSERT ON rbac_gateway_audit_outbox TO rbac_gateway_serve;
GRANT UPDATE (attempts, next_attempt_utc, delivered_at_utc, alerted_at_utc, last_error)
    ON rbac_gateway_audit_outbox TO rbac_gateway_serve;

-- Audit writer: the access_denied / access_denied_shadow / rbac_drift rows.
GRANT INSERT ON access_audit_events TO rbac_gateway_serve;
-- Audit spool replay: ON CONFLICT (id) DO NOTHING reads the id, and only the id (the rows
-- themselves are never read back by serve).
GRANT SELECT (id) ON access_audit_events TO rbac_gateway_serve;

-- Change feed: the log read by transaction-id cursor.
GRANT SELECT ON rbac_change_log TO rbac_gateway_serve;
-- Change feed: rows older than a day pruned (without it the log only grows).
GRANT DELETE ON rbac_change_log TO rbac_gateway_serve;
-- Alert pass: a delivered break-glass alert re-resolves its admin on every replica
-- (--break-glass-requires-alert), one log row and its id.
GRANT INSERT ON rbac_change_log TO rbac_gateway_serve;
GRANT USAGE ON SEQUENCE rbac_change_log_id_seq TO rbac_gateway_serve;
-- Change feed: the server's token read with each snapshot, made after a crash or a failover.
GRANT SELECT, INSERT ON rbac_gateway_feed_epoch TO rbac_gateway_serve;

-- Alert pass: alerts recorded once by key (a break-glass session's raised again when the session
-- changed after it), the due ones read; request path with --break-glass-requires-alert (was the
-- session's alert delivered, for the session as it is?).
GRANT SELECT, INSERT ON rbac_gateway_alerts TO rbac_gateway_serve;
-- Alert pass: a delivery, or a failed one and its backoff; a break-glass session changed after
-- its alert, raised again as it now stands (migration 0033); a finding that came back, raised
-- again and stamped (migration 0037).
GRANT UPDATE (delivered_at_utc, attempts, last_error, next_attempt_utc, erasure_keys,
              text, session_user_id, session_granted_at_utc, session_ends_at_utc, raised_at_utc)
    ON rbac_gateway_alerts TO rbac_gateway_serve;
-- Alert pass: the break-glass group changes the triggers recorded.
GRANT SELECT ON rbac_gateway_group_changes TO rbac_gateway_serve;
-- Alert pass: each change marked with the alert that names it.
GRANT UPDATE (alert_key) ON rbac_gateway_group_changes TO rbac_gateway_serve;
-- Alert pass: deploy windows declared, alerted when declared.
GRANT SELECT ON rbac_gateway_deploy_windows TO rbac_gateway_serve;
-- Alert pass: the daily snapshot of what the break-glass group grants, read and taken.
GRANT SELECT, INSERT ON rbac_gateway_break_glass_snapshots TO rbac_gateway_serve;

-- Sweep: items whose rows failed, counted (INSERT ... ON CONFLICT DO UPDATE), cleared once
-- written or settled, and named by /readyz.
GRANT SELECT, INSERT, DELETE ON rbac_gateway_sweep_failures TO rbac_gateway_serve;
GRANT UPDATE (failures, last_error, last_failed_at) ON rbac_gateway_sweep_failures
    TO rbac_gateway_serve;

-- I-11 (docs/invariants.md): FLAG_RBAC_V2's row of Console's console_flag_promotions, read
-- where 002 Phase 2 created the table (production gateways, `check`, `rollout`, the cockpit).
DO $$
BEGIN
    IF to_regclass('console_flag_promotions') IS NOT NULL THEN
        GRANT SELECT ON console_flag_promotions TO rbac_gateway_serve;
    END IF;
END $$;

-- Mapping version recording (`rollout`'s soak times): the fleet's latest row read, a new one
-- written, and its id.
GRANT SELECT, INSERT ON rbac_gateway_mapping_versions TO rbac_gateway_serve;
GRANT USAGE ON SEQUENCE rbac_gateway_mapping_versions_id_seq TO rbac_gateway_serve;

-- The schema's migrations, compared with the binary's: `/readyz` answers 503 while one of the
-- binary's is not applied as it has it, and `check` says so (each one's version, whether it
-- succeeded and its checksum only).
GRANT SELECT (version, success, checksum) ON _sqlx_migrations TO rbac_gateway_serve;

COMMIT;
