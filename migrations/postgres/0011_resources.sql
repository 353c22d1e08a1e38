-- Resources agents created through tollgate (issue #17): one row per create action's 2xx answer, with the id
-- the provider gave (or the name the path gave, for a Workers script; the domain, for a registration), what is
-- needed to address the resource again (zone, account, Stripe connected account), and who created it under
-- which decision. `tollgate incident report` lists them; `incident rollback-plan` turns the live ones into
-- inverse calls. A later delete through tollgate (any agent's) marks the row deleted.
--
-- `scope` is the part of the address that the id alone does not make unique ('zone:<id>', 'account:<id>',
-- 'stripe-account:<acct_…>', or ''): a replayed or idempotent create of the same resource is one row.
CREATE TABLE resources (
    id                   uuid PRIMARY KEY,
    provider             text NOT NULL,
    kind                 text NOT NULL CHECK (kind IN ('dns_record', 'zone', 'workers_script',
                             'custom_certificate', 'domain_registration', 'stripe_customer', 'subscription',
                             'payment_intent', 'product', 'price')),
    resource_id          text NOT NULL,
    scope                text NOT NULL DEFAULT '',
    zone_id              text,
    account_id           text,
    stripe_account       text,
    -- A few fields of the provider's answer the rollback plan needs (a payment intent's status, a record's
    -- name and type), as JSON; never a secret.
    detail               jsonb NOT NULL DEFAULT '{}',
    agent_id             uuid NOT NULL,
    agent_name           text NOT NULL,
    run_id               text,
    decision_id          uuid NOT NULL,
    action               text NOT NULL,
    created_at           timestamptz NOT NULL,
    status               text NOT NULL DEFAULT 'live' CHECK (status IN ('live', 'deleted')),
    deleted_at           timestamptz,
    deleted_by_decision  uuid,
    UNIQUE (provider, kind, resource_id, scope)
);
CREATE INDEX resources_agent ON resources (agent_id, created_at);
