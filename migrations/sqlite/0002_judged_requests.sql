-- Idempotency as the provider sees it, settlement by people, and approvals bound to the judged headers
-- (the Postgres migration 0004 explains each).
CREATE TABLE idempotency_keys (
    provider     TEXT NOT NULL,
    account      TEXT NOT NULL,
    key          TEXT NOT NULL,
    agent_id     TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    decision_id  TEXT NOT NULL,
    first_seen   TEXT NOT NULL,
    PRIMARY KEY (provider, account, key)
);
DROP INDEX spend_reservations_idempotency;

ALTER TABLE spend_reservations ADD COLUMN settled_by TEXT;
ALTER TABLE spend_reservations ADD COLUMN settle_note TEXT;
CREATE INDEX spend_reservations_flagged ON spend_reservations (created_at) WHERE flagged AND state = 'reserved';

ALTER TABLE approvals ADD COLUMN headers TEXT NOT NULL DEFAULT '';
