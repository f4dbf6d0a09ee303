-- The change feed's server identity (found by a review): its cursor is a snapshot, which means
-- something on the server that took it only. After a crash restart (a backend killed, the
-- postmaster reinitialising) PostgreSQL may hand out again the transaction ids whose WAL never
-- reached the disk, ids a snapshot taken before shows finished; after a failover the promoted
-- standby may do the same. pg_postmaster_start_time() changes with neither a crash restart nor
-- (necessarily) a failover. An UNLOGGED table is emptied by crash recovery and is empty on a
-- promoted standby, so a token kept in one changes exactly when the cursor's snapshot stops
-- meaning anything: the feed reads it with each snapshot (the server's start time in its place
-- while it is missing), makes it again when it is missing (the gateway's role needs INSERT,
-- deploy/gateway-grants.sql; without it the feed warns and goes on), and clears every cache when
-- it changed (src/stores/feed.rs). A clean restart keeps it (no id is handed out twice then).
-- The row is made here too, so a gateway that may not insert starts with one.
CREATE UNLOGGED TABLE IF NOT EXISTS rbac_gateway_feed_epoch (
    id    INTEGER PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    token TEXT NOT NULL DEFAULT gen_random_uuid()::text
);
INSERT INTO rbac_gateway_feed_epoch DEFAULT VALUES ON CONFLICT (id) DO NOTHING;
