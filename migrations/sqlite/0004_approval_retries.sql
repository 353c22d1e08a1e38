-- A same-key retry of an approved call is the same call (issue #15): the Idempotency-Key (as forwarded,
-- namespaced per agent) that the consuming request carried is kept with the approval, so a retry that repeats
-- it, for the identical call within the provider's replay window, is forwarded again instead of refused;
-- the provider deduplicates it and the ledger charges it once. NULL when the consuming request had no key.
ALTER TABLE approvals ADD COLUMN consumed_key TEXT;
