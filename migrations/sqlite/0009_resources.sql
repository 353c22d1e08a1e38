-- Resources agents created through tollgate (issue #17); see migrations/postgres/0011_resources.sql.
CREATE TABLE resources (
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
    UNIQUE (provider, kind, resource_id, scope)
);
CREATE INDEX resources_agent ON resources (agent_id, created_at);
