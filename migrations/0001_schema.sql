-- The tables the gateway reads (Console's RBAC V2 schema, 004 §3) and writes (access_audit_events).
-- In production Console already owns most of them: every statement is IF NOT EXISTS so that
-- `rbac-gateway migrate` only fills what is missing (development, tests, demo).

CREATE TABLE IF NOT EXISTS admins (
    id             TEXT PRIMARY KEY,
    email          TEXT UNIQUE NOT NULL,
    created_at_utc TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS admin_sessions (
    id             TEXT PRIMARY KEY,
    admin_id       TEXT NOT NULL REFERENCES admins(id) ON DELETE CASCADE,
    -- lowercase hex SHA-256 of the cookie value; the token itself is never stored (I-1)
    token_sha256   TEXT UNIQUE NOT NULL,
    created_at_utc TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at_utc TIMESTAMPTZ NOT NULL,
    revoked_at_utc TIMESTAMPTZ NULL
);
CREATE INDEX IF NOT EXISTS idx_admin_sessions_admin ON admin_sessions (admin_id);

CREATE TABLE IF NOT EXISTS rbac_groups (
    id             TEXT PRIMARY KEY,
    name           TEXT UNIQUE NOT NULL,
    description    TEXT,
    idp_group_name TEXT
);

CREATE TABLE IF NOT EXISTS rbac_roles (
    id          TEXT PRIMARY KEY,
    name        TEXT UNIQUE NOT NULL,
    description TEXT
);

CREATE TABLE IF NOT EXISTS rbac_permissions (
    id          TEXT PRIMARY KEY,
    name        TEXT UNIQUE NOT NULL,
    description TEXT
);

CREATE TABLE IF NOT EXISTS rbac_role_permissions (
    role_id       TEXT NOT NULL REFERENCES rbac_roles(id) ON DELETE CASCADE,
    permission_id TEXT NOT NULL REFERENCES rbac_permissions(id) ON DELETE CASCADE,
    PRIMARY KEY (role_id, permission_id)
);

-- the child holds everything the parent grants
CREATE TABLE IF NOT EXISTS rbac_role_inheritance (
    child_role_id  TEXT NOT NULL REFERENCES rbac_roles(id) ON DELETE CASCADE,
    parent_role_id TEXT NOT NULL REFERENCES rbac_roles(id) ON DELETE CASCADE,
    PRIMARY KEY (child_role_id, parent_role_id)
);

CREATE TABLE IF NOT EXISTS rbac_group_roles (
    group_id TEXT NOT NULL REFERENCES rbac_groups(id) ON DELETE CASCADE,
    role_id  TEXT NOT NULL REFERENCES rbac_roles(id) ON DELETE CASCADE,
    PRIMARY KEY (group_id, role_id)
);

CREATE TABLE IF NOT EXISTS rbac_user_groups (
    user_id        TEXT NOT NULL REFERENCES admins(id) ON DELETE CASCADE,
    group_id       TEXT NOT NULL REFERENCES rbac_groups(id) ON DELETE CASCADE,
    granted_by     TEXT,
    granted_at_utc TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, group_id)
);

-- 004 §3.2
CREATE TABLE IF NOT EXISTS rbac_grants_audit (
    id             TEXT PRIMARY KEY,
    event_type     TEXT NOT NULL CHECK (event_type IN ('grant','revoke','ticket_grant','ticket_expire',
                                                       'break_glass_grant','break_glass_expire')),
    target_user_id TEXT NOT NULL REFERENCES admins(id) ON DELETE CASCADE,
    group_id       TEXT REFERENCES rbac_groups(id) ON DELETE SET NULL,
    role_id        TEXT REFERENCES rbac_roles(id) ON DELETE SET NULL,
    ticket_id      TEXT,
    customer_id    INTEGER,
    justification  TEXT,
    granted_by     TEXT NOT NULL,
    expires_at_utc TIMESTAMPTZ,
    created_at_utc TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_rga_target ON rbac_grants_audit (target_user_id, created_at_utc DESC);

CREATE TABLE IF NOT EXISTS rbac_ticket_grants (
    id             TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL REFERENCES admins(id) ON DELETE CASCADE,
    role_id        TEXT NOT NULL REFERENCES rbac_roles(id) ON DELETE CASCADE,
    ticket_id      TEXT NOT NULL,
    customer_id    INTEGER NOT NULL,
    granted_by     TEXT NOT NULL,
    granted_at_utc TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at_utc TIMESTAMPTZ,
    revoked_at_utc TIMESTAMPTZ,
    revoke_reason  TEXT
);
CREATE INDEX IF NOT EXISTS idx_rtg_user ON rbac_ticket_grants (user_id) WHERE revoked_at_utc IS NULL;

CREATE TABLE IF NOT EXISTS rbac_break_glass_sessions (
    id             TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL REFERENCES admins(id) ON DELETE CASCADE,
    justification  TEXT NOT NULL,
    granted_by     TEXT NOT NULL,
    granted_at_utc TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at_utc TIMESTAMPTZ NOT NULL,
    revoked_at_utc TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS idx_rbg_user ON rbac_break_glass_sessions (user_id) WHERE revoked_at_utc IS NULL;

CREATE TABLE IF NOT EXISTS access_audit_events (
    id             TEXT PRIMARY KEY,
    event_type     TEXT NOT NULL,
    admin_id       TEXT NULL,
    method         TEXT NOT NULL,
    path           TEXT NOT NULL,
    route          TEXT NULL,
    required       TEXT NULL,
    reason         TEXT NOT NULL,
    request_id     TEXT NOT NULL,
    client_ip      TEXT NULL,
    user_agent     TEXT NULL,
    created_at_utc TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_aae_created ON access_audit_events (created_at_utc);
CREATE INDEX IF NOT EXISTS idx_aae_request ON access_audit_events (request_id);

-- Append-only: any UPDATE, DELETE or TRUNCATE of the audit trail fails, whoever runs it.
CREATE OR REPLACE FUNCTION access_audit_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'access_audit_events is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

DROP TRIGGER IF EXISTS access_audit_events_no_update ON access_audit_events;
CREATE TRIGGER access_audit_events_no_update
    BEFORE UPDATE OR DELETE ON access_audit_events
    FOR EACH ROW EXECUTE FUNCTION access_audit_events_append_only();

DROP TRIGGER IF EXISTS access_audit_events_no_truncate ON access_audit_events;
CREATE TRIGGER access_audit_events_no_truncate
    BEFORE TRUNCATE ON access_audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION access_audit_events_append_only();
