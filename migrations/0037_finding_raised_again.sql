-- A finding of the alert pass's (a trigger of the gateway's silenced, Console's code on its
-- tables, a read of Console's tables the database refused) is alerted under a key of its state
-- and the UTC day. A gateway that saw it, then saw it gone, raises the same key's alert again,
-- undelivered, when it comes back the same day (src/stores/alerts.rs, raise_finding). Two
-- replicas that both saw it gone must not both raise it again: the first to see it back does,
-- and stamps when (raised_at_utc); the other finds it raised since it saw it gone, and leaves it.
-- Compared with when the alert was delivered instead, a first alert delivered late (the webhook
-- down while the finding stood, delivered after it was gone) left the recurrence unalerted
-- until the next day (a review reproduced it).
--
-- raised_at_utc is NULL until an alert is raised again (created_at_utc is when it was raised
-- first). Nullable and without a default: adding it rewrites nothing and takes its lock briefly.
--
-- Changing it: a new migration (never edit this one).
ALTER TABLE rbac_gateway_alerts ADD COLUMN IF NOT EXISTS raised_at_utc TIMESTAMPTZ;

DO $migration$
BEGIN
    -- The alert pass stamps it (deploy/gateway-grants.sql grants the same again).
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'rbac_gateway_serve') THEN
        GRANT UPDATE (raised_at_utc) ON rbac_gateway_alerts TO rbac_gateway_serve;
    END IF;
END
$migration$;
