-- Spend budgets, reservations and human approvals.

-- One row per budget, subject and period. A new month is a new row: nothing is ever reset, so there is no
-- reset job to race. A reservation is one conditional UPDATE of this row (committed + reserved + charge <= cap),
-- which Postgres serializes on the row lock, so concurrent replicas cannot overshoot the cap.
CREATE TABLE spend_windows (
    budget           text NOT NULL,
    subject          text NOT NULL,
    period           text NOT NULL,
    provider         text NOT NULL,
    cap_cents        bigint NOT NULL CHECK (cap_cents >= 0),
    committed_cents  bigint NOT NULL DEFAULT 0 CHECK (committed_cents >= 0),
    reserved_cents   bigint NOT NULL DEFAULT 0 CHECK (reserved_cents >= 0),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (budget, subject, period)
);

-- One row per charged decision: reserved before forwarding, then committed (2xx) or released (definite
-- failure). An unknown outcome stays reserved and is flagged for review.
CREATE TABLE spend_reservations (
    decision_id      uuid PRIMARY KEY,
    budget           text NOT NULL,
    subject          text NOT NULL,
    period           text NOT NULL,
    agent_id         uuid NOT NULL,
    provider         text NOT NULL,
    cents            bigint NOT NULL CHECK (cents >= 0),
    state            text NOT NULL CHECK (state IN ('reserved', 'committed', 'released')),
    flagged          boolean NOT NULL DEFAULT false,
    idempotency_key  text,
    fingerprint      text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    settled_at       timestamptz
);
-- Stripe replays the first result for a repeated Idempotency-Key: a repeat must not be charged again.
CREATE UNIQUE INDEX spend_reservations_idempotency ON spend_reservations (agent_id, provider, idempotency_key)
    WHERE idempotency_key IS NOT NULL AND state <> 'released';

-- Approvals are bound to one request fingerprint (agent, provider, method, canonical path, canonical query,
-- body hash), used at most once, and only until they expire.
CREATE TABLE approvals (
    id                     uuid PRIMARY KEY,
    fingerprint            text NOT NULL,
    agent_id               uuid NOT NULL,
    agent_name             text NOT NULL,
    provider               text NOT NULL,
    method                 text NOT NULL,
    path                   text NOT NULL,
    query                  text NOT NULL,
    body_sha256            text NOT NULL,
    action                 text NOT NULL,
    reasons                json NOT NULL,
    charge_cents           bigint,
    status                 text NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'consumed', 'expired')),
    created_at             timestamptz NOT NULL DEFAULT now(),
    expires_at             timestamptz NOT NULL,
    requested_by_decision  uuid NOT NULL,
    decided_by             text,
    decided_at             timestamptz,
    note                   text,
    consumed_at            timestamptz,
    consumed_by_decision   uuid
);
CREATE UNIQUE INDEX approvals_one_open_per_request ON approvals (fingerprint) WHERE status IN ('pending', 'approved');
CREATE INDEX approvals_status_created ON approvals (status, created_at DESC);

-- Every state-changing admin call (approve, deny, agent create/revoke, freeze), who made it and when.
CREATE TABLE admin_actions (
    id      uuid PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    actor   text NOT NULL,
    action  text NOT NULL,
    target  text,
    detail  json
);

-- Operator switches every replica obeys (polled with the identity refresh): `frozen` refuses all agent traffic.
CREATE TABLE controls (
    key         text PRIMARY KEY,
    value       json NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text
);
INSERT INTO controls (key, value) VALUES ('frozen', 'false');
