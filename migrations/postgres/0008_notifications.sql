-- Approval notifications (issue #16): the durable outbox of webhook deliveries. One row per (webhook, event
-- key): every replica's sweep enqueues the events it sees with ON CONFLICT DO NOTHING, so an event becomes
-- one row however many replicas saw it, and a delivery claims its row with a lease (FOR UPDATE SKIP LOCKED +
-- lease_until/lease_owner), so one replica sends it at a time. The body is rendered once, at enqueue, and
-- stored as text: what is signed and sent is exactly what is stored.
CREATE TABLE notifications (
    id               uuid PRIMARY KEY,
    webhook          text NOT NULL,
    event            text NOT NULL CHECK (event IN ('approval_required', 'approval_decided', 'budget_threshold', 'freeze')),
    -- What makes two sightings the same event, e.g. `approval_required:<approval id>`.
    event_key        text NOT NULL,
    -- The approval id, budget window or control the event is about (for the console).
    subject          text,
    body             text NOT NULL,
    status           text NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL,
    next_attempt_at  timestamptz NOT NULL,
    lease_until      timestamptz,
    lease_owner      uuid,
    last_attempt_at  timestamptz,
    -- The receiver's HTTP status of the last attempt (absent when it never answered).
    last_status      integer,
    last_error       text,
    delivered_at     timestamptz,
    UNIQUE (webhook, event_key)
);
CREATE INDEX notifications_due ON notifications (next_attempt_at) WHERE status = 'pending';
CREATE INDEX notifications_created ON notifications (created_at DESC);

-- The sweep looks for approvals decided since a moment.
CREATE INDEX approvals_decided_at ON approvals (decided_at) WHERE decided_at IS NOT NULL;
