-- Incident containment (issue #17) deletes an agent's minted tokens at the provider with tollgate's own
-- credential, which needs the route the token lives under: a Cloudflare account token
-- (/accounts/{account_id}/tokens/{id}) or a user token (/user/tokens/{id}, account_id NULL).
ALTER TABLE minted_tokens ADD COLUMN account_id text;
