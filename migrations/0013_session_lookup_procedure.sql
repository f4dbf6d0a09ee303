-- The cold lookup behind a pooler as a CALL (issue 51). Sent as one simple query with its values
-- written in (src/stores/sql_text.rs), `SELECT ... FROM rbac_gateway_session_principal(...)`
-- (0012) is parsed, analysed and planned on every call; a CALL of this procedure is not planned
-- (a utility statement), and the one statement inside it, the live session joined with its
-- admin's principal (rbac_gateway_principal, 0011), keeps its plan in the server connection as
-- every PL/pgSQL statement does. pgbench -M simple -c8 on one session: 153-156 µs of
-- PostgreSQL's CPU a lookup against 170-175 µs (docs/performance-log.md).
--
-- Its answer is always one row: the session's admin and principal, or every column NULL when no
-- live session has the hash. The `WHERE` is rbac_gateway_session_principal's, and the named
-- statement's on the gateway's own sessions (src/stores/identity.rs); tests/api/round_trips.rs
-- holds that they answer alike.
--
-- Changing it: a new migration with CREATE OR REPLACE PROCEDURE (never edit this one). EXECUTE is
-- granted to PUBLIC, as for every new routine; deploy/mapping-grants.sql grants it to the
-- gateway's role too, for databases whose default privileges revoke it.
CREATE OR REPLACE PROCEDURE rbac_gateway_session_lookup(
    p_token_sha256 TEXT,
    p_requires_alert BOOLEAN,
    INOUT admin_id TEXT DEFAULT NULL,
    INOUT seconds_left FLOAT8 DEFAULT NULL,
    INOUT roles TEXT[] DEFAULT NULL,
    INOUT permissions TEXT[] DEFAULT NULL,
    INOUT break_glass_seconds FLOAT8 DEFAULT NULL,
    INOUT break_glass_until TIMESTAMPTZ DEFAULT NULL
)
LANGUAGE plpgsql AS $fn$
BEGIN
    SELECT s.admin_id, EXTRACT(EPOCH FROM (s.expires_at_utc - now()))::float8,
           p.roles, p.permissions, p.break_glass_seconds, p.break_glass_until
      INTO admin_id, seconds_left, roles, permissions, break_glass_seconds, break_glass_until
      FROM admin_sessions s
      CROSS JOIN LATERAL rbac_gateway_principal(s.admin_id, p_requires_alert) p
     WHERE s.token_sha256 = p_token_sha256 AND s.revoked_at_utc IS NULL AND s.expires_at_utc > now();
END
$fn$;
