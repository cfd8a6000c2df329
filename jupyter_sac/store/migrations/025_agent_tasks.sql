-- Tasks (docs/api.md#tasks): one prompt run as one chat turn of an agent, in the
-- background. The leader's task runner (service/tasks.py) claims queued rows
-- (FOR UPDATE SKIP LOCKED), starts the agent if needed, asks its server to run the
-- turn and records how it ended. Deleting the agent deletes its tasks.
CREATE TABLE agent_tasks (
    id               uuid        PRIMARY KEY,
    agent_id         bigint      NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    owner            text        NOT NULL,
    agent_slug       text        NOT NULL,
    prompt           text        NOT NULL,
    timeout_seconds  integer     NOT NULL CHECK (timeout_seconds > 0),
    -- {"url", "ref", "secret"?}: checked out into the workspace first. The secret
    -- is the name of one of the owner's secrets (its value is never stored here).
    repository       jsonb,
    status           text        NOT NULL DEFAULT 'queued' CHECK (status IN
                        ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'timed-out')),
    result           text,
    error            text,
    -- The chat session the turn ran in (the agent's sac/api/chat).
    session_id       text,
    -- [{"path", "size", "sha256"}]: files written under output/ during the task.
    artifacts        jsonb       NOT NULL DEFAULT '[]',
    cancel_requested boolean     NOT NULL DEFAULT false,
    created_by       text        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz
);
CREATE INDEX agent_tasks_owner ON agent_tasks (owner, created_at DESC);
CREATE INDEX agent_tasks_agent ON agent_tasks (agent_id, created_at DESC);
CREATE INDEX agent_tasks_open ON agent_tasks (created_at) WHERE status IN ('queued', 'running');
