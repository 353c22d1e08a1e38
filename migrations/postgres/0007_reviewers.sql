-- Reviewer accounts (issue #16): the people who read the log, approve held requests and operate tollgate,
-- each with a role and a token of their own. Only the SHA-256 of the token is stored (tokens carry 238 bits of
-- randomness, like agent keys, so a fast hash is enough). A revoked reviewer keeps its row, for the record.
CREATE TABLE reviewers (
    id            uuid PRIMARY KEY,
    name          text NOT NULL UNIQUE,
    email         text,
    role          text NOT NULL CHECK (role IN ('viewer', 'approver', 'operator', 'admin')),
    token_hash    text NOT NULL UNIQUE,
    -- The first characters of the token, so a reviewer can tell tokens apart without the secret.
    token_prefix  text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    text NOT NULL,
    revoked_at    timestamptz,
    rotated_at    timestamptz,
    last_used     timestamptz
);

-- Single sign-on through an authenticating reverse proxy maps its identity header (an email) to one active
-- reviewer: at most one active reviewer per email, compared case-insensitively.
CREATE UNIQUE INDEX reviewers_active_email ON reviewers (lower(email)) WHERE revoked_at IS NULL AND email IS NOT NULL;

-- Who created an agent through the admin API (a reviewer's name; `local:<user>` from the CLI). Separation of
-- duties: a reviewer may not approve a request of an agent they created.
ALTER TABLE agents ADD COLUMN created_by text;

-- On whose behalf the request that opened an approval was made (`Tollgate-On-Behalf-Of`). It is part of the
-- approval fingerprint, so the approval is consumed only by a request on behalf of the same person, and a
-- reviewer may not approve a request made on their own behalf.
ALTER TABLE approvals ADD COLUMN on_behalf_of text;
