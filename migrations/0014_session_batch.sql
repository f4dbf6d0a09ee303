-- The cold lookups of several sessions in one call (issue 51): the live sessions of an array of
-- token hashes (not revoked, not expired), each joined with its admin's principal as
-- rbac_gateway_principal (0011) resolves it, and the hash each row answers for (the gateway
-- matches rows by that hash, never by position); no row for a hash without a live session.
--
-- Behind a pooler the gateway sends `SELECT ... FROM rbac_gateway_session_principals(ARRAY[..],
-- false)` as one simple query with its values written in (src/stores/sql_text.rs): the outer
-- statement is one function scan, cheap to plan, and the join inside keeps its plan in the server
-- connection as every PL/pgSQL statement does (no client's state: safe behind a pooler, issue
-- 44). Its join is the text of the named statement on the gateway's own sessions (BATCH_SQL in
-- src/stores/session_batch.rs; tests/api/round_trips.rs holds that they answer alike), so a
-- cold lookup costs the server the same per session in both modes. Before, the pooled form called
-- rbac_gateway_session_principal (0012) once per hash, a second PL/pgSQL level for each session:
-- about 20 µs more of the server's CPU per cold request (docs/performance-log.md, 2026-11-27).
--
-- Changing it: a new migration with CREATE OR REPLACE FUNCTION (never edit this one). EXECUTE is
-- granted to PUBLIC, as for every new routine; deploy/mapping-grants.sql grants it to the
-- gateway's role too, for databases whose default privileges revoke it. 0012's function and
-- 0013's procedure stay for gateways of earlier releases during a rolling deploy.
CREATE OR REPLACE FUNCTION rbac_gateway_session_principals(p_hashes TEXT[], p_requires_alert BOOLEAN)
RETURNS TABLE (
    admin_id TEXT,
    seconds_left FLOAT8,
    roles TEXT[],
    permissions TEXT[],
    break_glass_seconds FLOAT8,
    break_glass_until TIMESTAMPTZ,
    token_sha256 TEXT
)
LANGUAGE plpgsql STABLE AS $fn$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT s.admin_id, EXTRACT(EPOCH FROM (s.expires_at_utc - now()))::float8,
           p.roles, p.permissions, p.break_glass_seconds, p.break_glass_until, h
      FROM unnest(p_hashes) h
      JOIN admin_sessions s ON s.token_sha256 = h AND s.revoked_at_utc IS NULL AND s.expires_at_utc > now()
      CROSS JOIN LATERAL rbac_gateway_principal(s.admin_id, p_requires_alert) p;
END
$fn$;
