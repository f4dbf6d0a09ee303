-- The mappings a fleet ran, and since when (issue 41: `rbac-gateway rollout`'s soak times).
-- A gateway writes a row when it loads a mapping (start-up, reload) unless the fleet's latest
-- row already names that version with the same kill switch: one row per version per fleet, and
-- one more each time the fleet goes back to an earlier version (a rollback restarts the soak
-- of what it changes). `routes` holds the rules' modes as loaded, so a soak is measured from
-- the rows alone, whatever files are at hand later.
CREATE TABLE IF NOT EXISTS rbac_gateway_mapping_versions (
    id            BIGSERIAL PRIMARY KEY,
    version       TEXT NOT NULL,
    kill_switch   BOOLEAN NOT NULL,
    -- {"GET /console/x": {"mode": "shadow", "cluster": "S2", "access": "protected"}, ...}
    routes        JSONB NOT NULL,
    loaded_at_utc TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_rgmv_loaded ON rbac_gateway_mapping_versions (loaded_at_utc);
