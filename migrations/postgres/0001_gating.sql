-- The gating data path: agents, the append-only decision log and what happened upstream afterwards.
-- Money is BIGINT cents everywhere; times are timestamptz (UTC).

CREATE TABLE agents (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    team        text,
    scopes      text[] NOT NULL DEFAULT '{}',
    labels      jsonb NOT NULL DEFAULT '{}',
    -- SHA-256 of the key. Keys carry 238 bits of randomness, so a fast hash is enough: there is nothing
    -- to brute-force that a slow hash would protect.
    key_hash    text NOT NULL UNIQUE,
    -- The first characters of the key, so an operator can tell keys apart without the secret.
    key_prefix  text NOT NULL,
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    revoked_at  timestamptz,
    -- Bumped on every change; replicas poll max(version) to drop cached identities within a second.
    version     bigserial NOT NULL
);
CREATE INDEX agents_version ON agents (version);

-- One row per request that reached tollgate, allowed or refused. Written only by the group-commit
-- writer, never updated or deleted (a trigger enforces it). Each writer process chains its rows:
-- hash = sha256(prev_hash || canonical record), seq increasing without gaps per writer. rules, reasons and
-- input are `json`, not `jsonb`, so the stored text is byte-for-byte what was hashed.
CREATE TABLE decisions (
    id              uuid PRIMARY KEY,
    at              timestamptz NOT NULL,
    writer_id       uuid NOT NULL,
    seq             bigint NOT NULL,
    prev_hash       text NOT NULL,
    hash            text NOT NULL,
    agent_id        uuid,
    agent_name      text,
    run_id          text,
    on_behalf_of    text,
    provider        text NOT NULL,
    method          text NOT NULL,
    path            text NOT NULL,
    query           text,
    action          text NOT NULL,
    risk            text NOT NULL,
    outcome         text NOT NULL CHECK (outcome IN ('allow', 'deny', 'approve', 'refused')),
    code            text,
    rules           json NOT NULL,
    reasons         json NOT NULL,
    policy_revision text,
    charge_cents    bigint,
    approval_id     text,
    input           json,
    UNIQUE (writer_id, seq)
);
CREATE INDEX decisions_at ON decisions (at DESC, id DESC);
CREATE INDEX decisions_agent_at ON decisions (agent_name, at DESC);
CREATE INDEX decisions_action_at ON decisions (action, at DESC);

CREATE FUNCTION decisions_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'decisions are append-only';
END $$;
CREATE TRIGGER decisions_append_only BEFORE UPDATE OR DELETE ON decisions
    FOR EACH ROW EXECUTE FUNCTION decisions_append_only();

-- What happened after an allowed request was forwarded: the upstream status and latency, or the error.
CREATE TABLE decision_outcomes (
    decision_id      uuid PRIMARY KEY,
    at               timestamptz NOT NULL,
    upstream_status  integer,
    latency_us       bigint NOT NULL,
    error            text,
    -- True when the outcome is unknown (a timeout after the request was sent): someone should look.
    flagged          boolean NOT NULL DEFAULT false
);
