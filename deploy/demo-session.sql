-- Demo data for deploy/compose.yaml: one admin in raxx-platform-admins (console-manager,
-- console-audit-user, ...) with a session whose cookie value is "demo-token", and a ticket grant
-- on FreeScout ticket 42 (revoked when the FreeScout stand-in closes it: see compose.yaml).
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
INSERT INTO rbac_ticket_grants (id, user_id, role_id, ticket_id, customer_id, granted_by)
SELECT 'demo-ticket-grant', 'demo-admin', id, '42', 7, 'demo' FROM rbac_roles WHERE name = 'raptor-audit-support'
ON CONFLICT (id) DO NOTHING;
