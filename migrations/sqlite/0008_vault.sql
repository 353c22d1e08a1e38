-- Minted credentials stay behind the gate (issue #17); see migrations/postgres/0010_vault.sql.
CREATE TABLE minted_tokens (
    provider           TEXT NOT NULL,
    token_id           TEXT NOT NULL,
    name               TEXT,
    policies           TEXT NOT NULL DEFAULT 'null',
    expires_on         TEXT,
    status             TEXT NOT NULL CHECK (status IN ('active', 'rolled', 'deleted', 'expired')),
    custody            TEXT NOT NULL CHECK (custody IN ('vault', 'pass_through')),
    minted_by          TEXT NOT NULL,
    minted_by_name     TEXT NOT NULL,
    decision_id        TEXT NOT NULL,
    last_decision_id   TEXT NOT NULL,
    handle_agent_id    TEXT,
    secret_key_id      TEXT,
    secret_nonce       BLOB,
    secret_ciphertext  BLOB,
    rolls              INTEGER NOT NULL DEFAULT 0,
    created_at         TEXT NOT NULL,
    rolled_at          TEXT,
    deleted_at         TEXT,
    PRIMARY KEY (provider, token_id)
);
CREATE INDEX minted_tokens_minted_by ON minted_tokens (minted_by);
CREATE INDEX minted_tokens_handle ON minted_tokens (handle_agent_id);

ALTER TABLE agents ADD COLUMN minted_by TEXT REFERENCES agents (id);
ALTER TABLE agents ADD COLUMN minted_token_id TEXT;
