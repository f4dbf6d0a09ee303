-- Lifecycle alerts (issue 14): what the gateway must tell operators, recorded before it is
-- delivered and retried until it is. `key` makes each alert exactly-once across replicas
-- ('break_glass:<session id>', 'composition:<id>').
CREATE TABLE IF NOT EXISTS rbac_gateway_alerts (
    key              TEXT PRIMARY KEY,
    text             TEXT NOT NULL,
    created_at_utc   TIMESTAMPTZ NOT NULL DEFAULT now(),
    delivered_at_utc TIMESTAMPTZ NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_utc TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error       TEXT NULL
);
CREATE INDEX IF NOT EXISTS idx_rga_undelivered ON rbac_gateway_alerts (next_attempt_utc)
    WHERE delivered_at_utc IS NULL;

-- The roles of every group as last seen: a change to the break-glass group's roles is alerted.
CREATE TABLE IF NOT EXISTS rbac_gateway_group_roles_snapshot (
    group_name TEXT NOT NULL,
    role_name  TEXT NOT NULL,
    PRIMARY KEY (group_name, role_name)
);
