-- Minted credentials stay behind the gate (issue #17). Every Cloudflare API token an agent creates, rolls or
-- deletes through tollgate is a row here. In vault mode the token's secret is stored only as AES-256-GCM
-- ciphertext (`secret_ciphertext`, with its `secret_nonce` and the id of the vault key that sealed it; the
-- associated data binds it to (provider, token_id), so a ciphertext moved to another row does not open),
-- and the agent holds a handle instead: a tollgate key of a child agent (`agents.minted_by`).
CREATE TABLE minted_tokens (
    provider           text NOT NULL,
    token_id           text NOT NULL,
    name               text,
    -- The policies the create request granted (its `policies` array), as JSON.
    policies           jsonb NOT NULL DEFAULT 'null',
    expires_on         timestamptz,
    status             text NOT NULL CHECK (status IN ('active', 'rolled', 'deleted', 'expired')),
    -- 'vault': the agent got a handle; 'pass_through': the agent got the secret (vault.pass_through_labels).
    custody            text NOT NULL CHECK (custody IN ('vault', 'pass_through')),
    minted_by          uuid NOT NULL,
    minted_by_name     text NOT NULL,
    decision_id        uuid NOT NULL,
    -- The decision of the latest roll or delete.
    last_decision_id   uuid NOT NULL,
    handle_agent_id    uuid,
    secret_key_id      text,
    secret_nonce       bytea,
    secret_ciphertext  bytea,
    rolls              bigint NOT NULL DEFAULT 0,
    created_at         timestamptz NOT NULL,
    rolled_at          timestamptz,
    deleted_at         timestamptz,
    PRIMARY KEY (provider, token_id)
);
CREATE INDEX minted_tokens_minted_by ON minted_tokens (minted_by);
CREATE INDEX minted_tokens_handle ON minted_tokens (handle_agent_id);

-- A handle's agent: the agent that minted the token, and the token it stands for.
ALTER TABLE agents ADD COLUMN minted_by uuid REFERENCES agents (id);
ALTER TABLE agents ADD COLUMN minted_token_id text;
