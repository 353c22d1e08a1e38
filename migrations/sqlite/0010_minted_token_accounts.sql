-- See migrations/postgres/0012_minted_token_accounts.sql.
ALTER TABLE minted_tokens ADD COLUMN account_id TEXT;
