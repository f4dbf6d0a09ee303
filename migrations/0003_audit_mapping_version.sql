-- Which mapping decided: the version (content hash) of routes.toml at the time of the event.
ALTER TABLE access_audit_events ADD COLUMN IF NOT EXISTS mapping_version TEXT NULL;
CREATE INDEX IF NOT EXISTS idx_aae_type_created ON access_audit_events (event_type, created_at_utc);
