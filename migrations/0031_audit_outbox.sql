-- I-5 (issue 69 §2): every rbac_grants_audit row the gateway writes reaches Console's audit
-- writer (customer_audit_events, SC-A3). The gateway never writes that chained table itself: it
-- records here, in the same statement as the audit row (src/stores/revocation.rs,
-- src/stores/sweep.rs: `WITH written AS (INSERT INTO rbac_grants_audit ... RETURNING id) INSERT INTO
-- rbac_gateway_audit_outbox ...`), that the row is owed to the writer, and serve's outbox job
-- (src/jobs/audit_outbox.rs) delivers it with the row's id as the idempotency key. A crash
-- between the two loses nothing: both are one transaction. Only the gateway's own rows are
-- entered (no trigger on rbac_grants_audit): Console sends its own. The gateway's rows written
-- before this migration, or by an older binary during the upgrade, are entered by the job
-- (stores::audit_outbox::adopt_unowed), not here: no long statement inside migrate.
--   audit_id          the rbac_grants_audit row's id (the idempotency key the writer is sent)
--   attempts          deliveries tried (each claim counts one)
--   next_attempt_utc  when it may be tried next: claimed (a lease of one replica) or backed off
--   delivered_at_utc  the writer answered 2xx; NULL: still owed
--   alerted_at_utc    the ops alert of a row undelivered past --audit-writer-alert-after
--   last_error        the last failure, as the job saw it
-- No personal data: the payload is read from rbac_grants_audit when it is sent.
CREATE TABLE IF NOT EXISTS rbac_gateway_audit_outbox (
    audit_id         TEXT PRIMARY KEY,
    created_at_utc   TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_utc TIMESTAMPTZ NOT NULL DEFAULT now(),
    delivered_at_utc TIMESTAMPTZ NULL,
    alerted_at_utc   TIMESTAMPTZ NULL,
    last_error       TEXT NULL
);
CREATE INDEX IF NOT EXISTS idx_rgao_undelivered ON rbac_gateway_audit_outbox (next_attempt_utc)
    WHERE delivered_at_utc IS NULL;
