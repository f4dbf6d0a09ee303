-- Demo data for deploy/compose.yaml: one admin in raxx-platform-admins (console-manager,
-- console-audit-user, ...) with a session whose cookie value is "demo-token".
--   docker compose -f deploy/compose.yaml exec -T postgres psql -U console console < deploy/demo-session.sql
--   curl -i -b console_session=demo-token localhost:8080/ops
-- Never run against a real Console database.
INSERT INTO admins (id, email) VALUES ('demo-admin', 'demo@example.invalid')
ON CONFLICT DO NOTHING;
INSERT INTO rbac_user_groups (user_id, group_id)
SELECT 'demo-admin', id FROM rbac_groups WHERE name = 'raxx-platform-admins'
ON CONFLICT DO NOTHING;
INSERT INTO admin_sessions (id, admin_id, token_sha256, expires_at_utc)
VALUES ('demo-session', 'demo-admin', encode(sha256('demo-token'::bytea), 'hex'), now() + interval '7 days')
ON CONFLICT (id) DO UPDATE SET expires_at_utc = EXCLUDED.expires_at_utc, revoked_at_utc = NULL;
