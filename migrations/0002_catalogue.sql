-- The role catalogue of the design documents: 003 "Legend of roles cited" and 004 §3.3/§4.
-- Inserted by name (ON CONFLICT DO NOTHING), so a database where Console already seeded them
-- keeps its own ids; assignments are looked up by name.

INSERT INTO rbac_roles (id, name, description) VALUES
    (gen_random_uuid()::text, 'console-user', 'Any authenticated Console operator (0012)'),
    (gen_random_uuid()::text, 'console-ops', 'Composition: console-user + console-audit-user; no group (0012)'),
    (gen_random_uuid()::text, 'console-audit-user', 'Reads Console audit (console:audit:read) (0012)'),
    (gen_random_uuid()::text, 'console-flag-admin', 'Operational writes on flags and polling (0012)'),
    (gen_random_uuid()::text, 'console-secrets-user', 'Reads secret SOP/runbook links (0012)'),
    (gen_random_uuid()::text, 'console-secrets-admin', 'Manages and rotates secrets (0012)'),
    (gen_random_uuid()::text, 'console-invite-admin', 'Invites admins, manages groups (0012)'),
    (gen_random_uuid()::text, 'console-env-admin', 'Manages environments (0012)'),
    (gen_random_uuid()::text, 'console-manager', 'Composition: superadmin-equivalent working role (0012)'),
    (gen_random_uuid()::text, 'console-billing-read', 'Reads billing (0014)'),
    (gen_random_uuid()::text, 'console-billing-write', 'Writes billing (0052)'),
    (gen_random_uuid()::text, 'console-flag_promotion_queue-read', 'Reads the flag promotion queue (0097)'),
    (gen_random_uuid()::text, 'console-flag_promotion_queue-write', 'Writes the flag promotion queue (0097)'),
    (gen_random_uuid()::text, 'console-prod-services-write', 'Production mutations (0097)'),
    (gen_random_uuid()::text, 'console-staging-services-write', 'Staging mutations (0097)'),
    (gen_random_uuid()::text, 'antlers-audit-self', 'Customer reads own Dim 1 + Dim 2 audit events (0021)'),
    (gen_random_uuid()::text, 'raptor-audit-support', 'Support reads Dim 1-3, ticket-scoped (0021)'),
    (gen_random_uuid()::text, 'raptor-audit-admin', 'Reads all dims, all customers (0021)'),
    (gen_random_uuid()::text, 'raptor-audit-compliance', 'SOC-2 auditor, read-only, no notification (0021)')
ON CONFLICT (name) DO NOTHING;

INSERT INTO rbac_permissions (id, name, description) VALUES
    (gen_random_uuid()::text, 'console:audit:read', 'Read Console audit'),
    (gen_random_uuid()::text, 'console:admins:invite', 'Invite admins'),
    (gen_random_uuid()::text, 'console:groups:write', 'Change group membership'),
    (gen_random_uuid()::text, 'raptor:audit:read-self', 'Read own Dim 1 + Dim 2 events'),
    (gen_random_uuid()::text, 'raptor:audit:read-support', 'Read Dim 1-3 with ticket linkage'),
    (gen_random_uuid()::text, 'raptor:audit:read-admin', 'Read all dims, all customers (notifies)'),
    (gen_random_uuid()::text, 'raptor:audit:read-compliance', 'Read all dims, all customers, no notification')
ON CONFLICT (name) DO NOTHING;

INSERT INTO rbac_groups (id, name, description) VALUES
    (gen_random_uuid()::text, 'raxx-platform-admins', 'Platform administrators (0012)'),
    (gen_random_uuid()::text, 'raxx-support-team', 'Support (0012)'),
    (gen_random_uuid()::text, 'raxx-devops-team', 'DevOps (0012)'),
    (gen_random_uuid()::text, 'break-glass', 'Time-limited emergency access, via rbac_break_glass_sessions (0012, 004 §6)'),
    (gen_random_uuid()::text, 'ops-admins', 'Production operations (0097)'),
    (gen_random_uuid()::text, 'staging-admins', 'Staging operations (0097)')
ON CONFLICT (name) DO NOTHING;

INSERT INTO rbac_role_permissions (role_id, permission_id)
SELECT r.id, p.id FROM (VALUES
    ('console-audit-user', 'console:audit:read'),
    ('console-invite-admin', 'console:admins:invite'),
    ('console-invite-admin', 'console:groups:write'),
    ('antlers-audit-self', 'raptor:audit:read-self'),
    ('raptor-audit-support', 'raptor:audit:read-support'),
    ('raptor-audit-admin', 'raptor:audit:read-admin'),
    ('raptor-audit-compliance', 'raptor:audit:read-compliance')
) AS v(role, perm)
JOIN rbac_roles r ON r.name = v.role
JOIN rbac_permissions p ON p.name = v.perm
ON CONFLICT DO NOTHING;

-- child holds everything the parent grants
INSERT INTO rbac_role_inheritance (child_role_id, parent_role_id)
SELECT c.id, p.id FROM (VALUES
    ('console-ops', 'console-user'),                   -- 003 legend
    ('console-ops', 'console-audit-user'),             -- 003 legend
    ('console-manager', 'console-flag-admin'),         -- 003 legend: "via console-manager"
    ('console-manager', 'console-invite-admin'),       -- 003 legend: "via console-manager"
    ('console-manager', 'console-env-admin'),          -- 003 legend: "via console-manager"
    ('console-secrets-admin', 'console-secrets-user'), -- 003 legend: "via console-secrets-admin inheritance"
    ('raptor-audit-support', 'antlers-audit-self'),    -- 004 §3.3
    ('raptor-audit-admin', 'raptor-audit-support')     -- 004 §3.3
) AS v(child, parent)
JOIN rbac_roles c ON c.name = v.child
JOIN rbac_roles p ON p.name = v.parent
ON CONFLICT DO NOTHING;

INSERT INTO rbac_group_roles (group_id, role_id)
SELECT g.id, r.id FROM (VALUES
    ('raxx-platform-admins', 'console-user'),
    ('raxx-platform-admins', 'console-audit-user'),
    ('raxx-platform-admins', 'console-secrets-admin'),
    ('raxx-platform-admins', 'console-manager'),
    ('raxx-platform-admins', 'console-billing-read'),   -- added in 0016
    ('raxx-platform-admins', 'console-billing-write'),  -- "implied" (0052)
    ('raxx-platform-admins', 'raptor-audit-admin'),     -- 004 §3.3
    ('raxx-support-team', 'console-user'),
    ('raxx-support-team', 'console-audit-user'),
    ('raxx-support-team', 'raptor-audit-support'),      -- 004 §3.3
    ('raxx-devops-team', 'console-user'),
    ('raxx-devops-team', 'console-audit-user'),
    ('raxx-devops-team', 'console-flag-admin'),
    ('raxx-devops-team', 'console-env-admin'),
    ('break-glass', 'console-secrets-admin'),
    ('break-glass', 'console-invite-admin'),
    ('break-glass', 'console-manager'),                 -- 003 §9: console-manager held by platform admins and break-glass
    ('ops-admins', 'console-flag_promotion_queue-read'),
    ('ops-admins', 'console-flag_promotion_queue-write'),
    ('ops-admins', 'console-prod-services-write'),
    ('ops-admins', 'console-staging-services-write'),
    ('staging-admins', 'console-flag_promotion_queue-read'),
    ('staging-admins', 'console-staging-services-write')
) AS v(grp, role)
JOIN rbac_groups g ON g.name = v.grp
JOIN rbac_roles r ON r.name = v.role
ON CONFLICT DO NOTHING;
