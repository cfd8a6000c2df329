-- Human-in-the-loop: per-agent policies and the requests agents file.
CREATE TABLE hitl_policies (
    agent_id    bigint      PRIMARY KEY REFERENCES agents (id) ON DELETE CASCADE,
    policy      jsonb       NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text
);

-- Requests outlive a deleted agent (owner and slug are kept) as decision history.
CREATE TABLE hitl_requests (
    id                uuid        PRIMARY KEY,
    agent_id          bigint      NOT NULL,
    owner             text        NOT NULL,
    agent_slug        text        NOT NULL,
    session_id        text,
    kind              text        NOT NULL CHECK (kind IN ('tool', 'terminal')),
    tool              text,
    input             jsonb       NOT NULL DEFAULT '{}'::jsonb,
    question          text,
    options           jsonb       NOT NULL DEFAULT '[]'::jsonb,
    dedupe_key        text,
    status            text        NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'approved', 'denied', 'timed_out', 'cancelled')),
    decision          text        CHECK (decision IN ('allow', 'deny')),
    option            text,
    reason            text,
    decided_by        text,
    default_decision  text        NOT NULL CHECK (default_decision IN ('allow', 'deny')),
    created_at        timestamptz NOT NULL DEFAULT now(),
    decided_at        timestamptz,
    expires_at        timestamptz NOT NULL
);
CREATE INDEX hitl_requests_owner_created ON hitl_requests (owner, created_at DESC, id);
CREATE INDEX hitl_requests_created ON hitl_requests (created_at DESC, id);
CREATE INDEX hitl_requests_pending_expiry ON hitl_requests (expires_at) WHERE status = 'pending';
-- One pending request per agent and prompt: re-filing the same prompt finds it.
CREATE UNIQUE INDEX hitl_requests_pending_dedupe ON hitl_requests (agent_id, dedupe_key)
    WHERE status = 'pending' AND dedupe_key IS NOT NULL;
