-- Console sign-ins (issue #16). The browser holds a random session value in an HttpOnly cookie; only its
-- SHA-256 is stored. A session is bound to the credential it was opened with (`credential_hash`: the SHA-256 of
-- the reviewer token, or of the bootstrap token; `sso:<email>` for single sign-on), so rotating or revoking a
-- reviewer ends their sessions on every replica at once. The CSRF token travels in every console form.
CREATE TABLE console_sessions (
    id_hash          text PRIMARY KEY,
    -- NULL for the bootstrap admin, who has no reviewer row.
    reviewer_id      uuid REFERENCES reviewers (id),
    reviewer_name    text NOT NULL,
    credential_hash  text NOT NULL,
    csrf_token       text NOT NULL,
    created_at       timestamptz NOT NULL,
    expires_at       timestamptz NOT NULL,
    ended_at         timestamptz
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);

-- Reviewer names are what the record shows as the actor; `admin` and `Admin` must not both exist (a reader
-- could not tell their actions apart), so names are unique ignoring case.
CREATE UNIQUE INDEX reviewers_name_ci ON reviewers (lower(name));

-- The review queue: a new approval counts the agent's pending ones first (`approvals.max_pending_per_agent`),
-- and the console lists them oldest first.
CREATE INDEX approvals_pending_by_agent ON approvals (agent_id, created_at) WHERE status = 'pending';

-- Agent names likewise: `buyer` and `BUYER` would be two agents a reviewer cannot tell apart in the queue.
CREATE UNIQUE INDEX agents_name_ci ON agents (lower(name));
