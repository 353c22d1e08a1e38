-- One row per agent that created or uploaded a resource (issue #17); see the Postgres migration. SQLite
-- cannot drop a table constraint, so the table is rebuilt with the new one.
CREATE TABLE resources_new (
    id                   TEXT PRIMARY KEY,
    provider             TEXT NOT NULL,
    kind                 TEXT NOT NULL CHECK (kind IN ('dns_record', 'zone', 'workers_script',
                             'custom_certificate', 'domain_registration', 'stripe_customer', 'subscription',
                             'payment_intent', 'product', 'price')),
    resource_id          TEXT NOT NULL,
    scope                TEXT NOT NULL DEFAULT '',
    zone_id              TEXT,
    account_id           TEXT,
    stripe_account       TEXT,
    detail               TEXT NOT NULL DEFAULT '{}',
    agent_id             TEXT NOT NULL,
    agent_name           TEXT NOT NULL,
    run_id               TEXT,
    decision_id          TEXT NOT NULL,
    action               TEXT NOT NULL,
    created_at           TEXT NOT NULL,
    status               TEXT NOT NULL DEFAULT 'live' CHECK (status IN ('live', 'deleted')),
    deleted_at           TEXT,
    deleted_by_decision  TEXT,
    updated_at           TEXT,
    updated_by_decision  TEXT,
    UNIQUE (provider, kind, resource_id, scope, agent_id)
);
INSERT INTO resources_new (id, provider, kind, resource_id, scope, zone_id, account_id, stripe_account, detail,
    agent_id, agent_name, run_id, decision_id, action, created_at, status, deleted_at, deleted_by_decision)
    SELECT id, provider, kind, resource_id, scope, zone_id, account_id, stripe_account, detail, agent_id,
    agent_name, run_id, decision_id, action, created_at, status, deleted_at, deleted_by_decision
    FROM resources;
DROP TABLE resources;
ALTER TABLE resources_new RENAME TO resources;
CREATE INDEX resources_agent ON resources (agent_id, created_at);
CREATE INDEX resources_address ON resources (provider, kind, resource_id, scope);
