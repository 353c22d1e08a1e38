-- A same-key retry of an approved call is the same call (issue #15): the Idempotency-Key (as forwarded,
-- namespaced per agent) that the consuming request carried is kept with the approval, so a retry that repeats
-- it, for the identical call within the provider's replay window and the approval's lifetime, is forwarded
-- again instead of refused; the provider deduplicates it and the ledger charges it once. NULL when the
-- consuming request had no key. `retries` counts such retries: an approval a retry went out under is never
-- handed back (made usable for another call) by a refusal of the request that consumed it.
ALTER TABLE approvals ADD COLUMN consumed_key text;
ALTER TABLE approvals ADD COLUMN retries integer NOT NULL DEFAULT 0;
