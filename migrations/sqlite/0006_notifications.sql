-- Approval notifications (issue #16): the durable outbox of webhook deliveries. One row per (webhook, event
-- key): every replica's sweep enqueues the events it sees with ON CONFLICT DO NOTHING, so an event becomes
-- one row however many replicas saw it, and a delivery claims its row with a lease (lease_until/lease_owner;
-- the store's one connection serializes claims), so one replica sends it at a time. The body is rendered once, at enqueue, and
-- stored as text: what is signed and sent is exactly what is stored.
CREATE TABLE notifications (
    id               TEXT PRIMARY KEY,
    webhook          TEXT NOT NULL,
    event            TEXT NOT NULL CHECK (event IN ('approval_required', 'approval_decided', 'budget_threshold', 'freeze')),
    -- What makes two sightings the same event, e.g. `approval_required:<approval id>`.
    event_key        TEXT NOT NULL,
    -- The approval id, budget window or control the event is about (for the console).
    subject          TEXT,
    body             TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    created_at       TEXT NOT NULL,
    next_attempt_at  TEXT NOT NULL,
    lease_until      TEXT,
    lease_owner      TEXT,
    last_attempt_at  TEXT,
    -- The receiver's HTTP status of the last attempt (absent when it never answered).
    last_status      INTEGER,
    last_error       TEXT,
    delivered_at     TEXT,
    UNIQUE (webhook, event_key)
);
CREATE INDEX notifications_due ON notifications (next_attempt_at) WHERE status = 'pending';
CREATE INDEX notifications_created ON notifications (created_at DESC);

-- The sweep looks for approvals decided since a moment.
CREATE INDEX approvals_decided_at ON approvals (decided_at) WHERE decided_at IS NOT NULL;
