-- One row per agent that created or uploaded a resource (issue #17): a second agent's upload to the same
-- Workers script (or any create answered with an id already recorded) is its own row, so the resource shows
-- in both agents' reports, and a rollback plan sees that someone else's work is now in it. A delete through
-- tollgate marks every agent's row of the resource. The same agent's later create or upload of a resource it
-- has live (a re-upload of its script) moves `updated_at`/`updated_by_decision`, so `--since` finds it.
ALTER TABLE resources DROP CONSTRAINT resources_provider_kind_resource_id_scope_key;
ALTER TABLE resources ADD CONSTRAINT resources_per_agent UNIQUE (provider, kind, resource_id, scope, agent_id);
CREATE INDEX resources_address ON resources (provider, kind, resource_id, scope);
ALTER TABLE resources ADD COLUMN updated_at timestamptz;
ALTER TABLE resources ADD COLUMN updated_by_decision uuid;
