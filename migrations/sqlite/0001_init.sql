-- The embedded single-node store: the same tables and meaning as migrations/postgres, in SQLite types.
-- Ids are UUID text, times are RFC 3339 UTC text with microseconds (fixed width, so text order is time
-- order), JSON is text, money is INTEGER cents.

CREATE TABLE agents (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    team        TEXT,
    scopes      TEXT NOT NULL DEFAULT '[]',
    labels      TEXT NOT NULL DEFAULT '{}',
    key_hash    TEXT NOT NULL UNIQUE,
    key_prefix  TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    created_at  TEXT NOT NULL,
    expires_at  TEXT,
    revoked_at  TEXT,
    version     INTEGER NOT NULL
);

CREATE TABLE decisions (
    id              TEXT PRIMARY KEY,
    at              TEXT NOT NULL,
    writer_id       TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    prev_hash       TEXT NOT NULL,
    hash            TEXT NOT NULL,
    agent_id        TEXT,
    agent_name      TEXT,
    run_id          TEXT,
    on_behalf_of    TEXT,
    provider        TEXT NOT NULL,
    method          TEXT NOT NULL,
    path            TEXT NOT NULL,
    query           TEXT,
    action          TEXT NOT NULL,
    risk            TEXT NOT NULL,
    outcome         TEXT NOT NULL CHECK (outcome IN ('allow', 'deny', 'approve', 'refused')),
    code            TEXT,
    rules           TEXT NOT NULL,
    reasons         TEXT NOT NULL,
    policy_revision TEXT,
    charge_cents    INTEGER,
    approval_id     TEXT,
    input           TEXT,
    policy_outcome  TEXT,
    shadow_outcome  TEXT,
    UNIQUE (writer_id, seq)
);
CREATE INDEX decisions_at ON decisions (at DESC, id DESC);
CREATE INDEX decisions_agent_at ON decisions (agent_name, at DESC);
CREATE INDEX decisions_action_at ON decisions (action, at DESC);
CREATE TRIGGER decisions_no_update BEFORE UPDATE ON decisions BEGIN SELECT RAISE(ABORT, 'decisions are append-only'); END;
CREATE TRIGGER decisions_no_delete BEFORE DELETE ON decisions BEGIN SELECT RAISE(ABORT, 'decisions are append-only'); END;

CREATE TABLE decision_outcomes (
    decision_id      TEXT PRIMARY KEY,
    at               TEXT NOT NULL,
    upstream_status  INTEGER,
    latency_us       INTEGER NOT NULL,
    error            TEXT,
    flagged          INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE spend_windows (
    budget           TEXT NOT NULL,
    subject          TEXT NOT NULL,
    period           TEXT NOT NULL,
    provider         TEXT NOT NULL,
    cap_cents        INTEGER NOT NULL CHECK (cap_cents >= 0),
    committed_cents  INTEGER NOT NULL DEFAULT 0 CHECK (committed_cents >= 0),
    reserved_cents   INTEGER NOT NULL DEFAULT 0 CHECK (reserved_cents >= 0),
    updated_at       TEXT NOT NULL,
    PRIMARY KEY (budget, subject, period)
);

CREATE TABLE spend_reservations (
    decision_id      TEXT PRIMARY KEY,
    budget           TEXT NOT NULL,
    subject          TEXT NOT NULL,
    period           TEXT NOT NULL,
    agent_id         TEXT NOT NULL,
    provider         TEXT NOT NULL,
    cents            INTEGER NOT NULL CHECK (cents >= 0),
    state            TEXT NOT NULL CHECK (state IN ('reserved', 'committed', 'released')),
    flagged          INTEGER NOT NULL DEFAULT 0,
    idempotency_key  TEXT,
    fingerprint      TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    settled_at       TEXT
);
CREATE UNIQUE INDEX spend_reservations_idempotency ON spend_reservations (agent_id, provider, idempotency_key)
    WHERE idempotency_key IS NOT NULL AND state <> 'released';

CREATE TABLE approvals (
    id                     TEXT PRIMARY KEY,
    fingerprint            TEXT NOT NULL,
    agent_id               TEXT NOT NULL,
    agent_name             TEXT NOT NULL,
    provider               TEXT NOT NULL,
    method                 TEXT NOT NULL,
    path                   TEXT NOT NULL,
    query                  TEXT NOT NULL,
    body_sha256            TEXT NOT NULL,
    action                 TEXT NOT NULL,
    reasons                TEXT NOT NULL,
    charge_cents           INTEGER,
    status                 TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'consumed', 'expired')),
    created_at             TEXT NOT NULL,
    expires_at             TEXT NOT NULL,
    requested_by_decision  TEXT NOT NULL,
    decided_by             TEXT,
    decided_at             TEXT,
    note                   TEXT,
    consumed_at            TEXT,
    consumed_by_decision   TEXT
);
CREATE UNIQUE INDEX approvals_one_open_per_request ON approvals (fingerprint) WHERE status IN ('pending', 'approved');
CREATE INDEX approvals_status_created ON approvals (status, created_at DESC);

CREATE TABLE admin_actions (
    id      TEXT PRIMARY KEY,
    at      TEXT NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT,
    detail  TEXT
);

CREATE TABLE controls (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    updated_by  TEXT
);
INSERT INTO controls (key, value, updated_at) VALUES ('frozen', 'false', '1970-01-01T00:00:00.000000Z');
