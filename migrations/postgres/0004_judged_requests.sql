-- Idempotency as the provider sees it, settlement by people, and approvals bound to the judged headers.

-- One row per Idempotency-Key as forwarded (namespaced per agent by tollgate) and the account headers it was
-- sent with: Stripe replays the first result of a repeated key for 24 hours, so a repeat of the same request
-- within the provider's window is not charged again. A repeat after the window, or after the first request's
-- reservation was released, takes the row over and is charged as new.
CREATE TABLE idempotency_keys (
    provider     text NOT NULL,
    account      text NOT NULL,
    key          text NOT NULL,
    agent_id     uuid NOT NULL,
    fingerprint  text NOT NULL,
    decision_id  uuid NOT NULL,
    first_seen   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, account, key)
);
-- Replaced by idempotency_keys, which knows the account and the provider's window.
DROP INDEX spend_reservations_idempotency;

-- A flagged reservation (unknown outcome) is settled by an operator: who, and why.
ALTER TABLE spend_reservations ADD COLUMN settled_by text;
ALTER TABLE spend_reservations ADD COLUMN settle_note text;
CREATE INDEX spend_reservations_flagged ON spend_reservations (created_at) WHERE flagged AND state = 'reserved';

-- The request headers that change what the provider does (account, API version, body type), as judged and
-- bound into the approval's fingerprint; shown to the reviewer.
ALTER TABLE approvals ADD COLUMN headers text NOT NULL DEFAULT '';
