-- One known text sealed under each vault key id (issue #17): every replica checks at start that its key of
-- that id opens it, so replicas given different keys under one id refuse to start instead of sealing secrets
-- the others cannot open.
CREATE TABLE vault_key_checks (
    key_id      text PRIMARY KEY,
    nonce       bytea NOT NULL,
    ciphertext  bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
