-- See migrations/postgres/0013_vault_key_checks.sql.
CREATE TABLE vault_key_checks (
    key_id      TEXT PRIMARY KEY,
    nonce       BLOB NOT NULL,
    ciphertext  BLOB NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
