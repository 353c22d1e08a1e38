-- What the policy itself said (allow, deny, approve; null when the request was refused before the policy
-- ran), separate from the final outcome, so `tollgate replay` compares like with like; and what the shadow
-- bundle said, if one is configured.
ALTER TABLE decisions ADD COLUMN policy_outcome text;
ALTER TABLE decisions ADD COLUMN shadow_outcome text;
