-- Deleted agents, remembered until the maintenance has removed what they left in
-- the workspace (their space "agent:<id>": index rows here, objects in the object
-- store) once deleted_agent_grace_days have passed. Tokens, skill installs and
-- the HITL policy go with the agent row itself (ON DELETE CASCADE); usage and
-- conversation history are kept by owner and slug (history until
-- history_retention_days).
CREATE TABLE deleted_agents (
    agent_id    bigint      PRIMARY KEY,
    owner       text        NOT NULL,
    slug        text        NOT NULL,
    deleted_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX deleted_agents_deleted_at ON deleted_agents (deleted_at, agent_id);

-- Agents deleted before this migration left their workspace behind with no date:
-- their grace period starts now. Owner and slug from their usage or history, if any.
INSERT INTO deleted_agents (agent_id, owner, slug)
SELECT gone.id,
       coalesce(u.owner, s.owner, ''),
       coalesce(u.agent_slug, s.agent_slug, '')
FROM (
    SELECT substr(space, 7)::bigint AS id FROM workspace_spaces WHERE space ~ '^agent:[0-9]+$'
    UNION
    SELECT substr(space, 7)::bigint FROM workspace_files WHERE space ~ '^agent:[0-9]+$'
) AS gone
LEFT JOIN LATERAL (
    SELECT owner, agent_slug FROM usage_daily WHERE agent_id = gone.id LIMIT 1
) AS u ON true
LEFT JOIN LATERAL (
    SELECT owner, agent_slug FROM conversation_sessions WHERE agent_id = gone.id LIMIT 1
) AS s ON true
WHERE NOT EXISTS (SELECT 1 FROM agents WHERE agents.id = gone.id);

-- History retention deletes by time across all owners.
CREATE INDEX conversation_sessions_last_ts ON conversation_sessions (last_ts);
