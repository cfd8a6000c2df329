-- Conversation history queries: events of an agent (optionally of one session) in
-- time order, and a per-session summary kept up to date by ingest.
-- Reads go by (owner, agent_slug): history outlives a deleted agent row.
CREATE INDEX conversation_events_agent_time
    ON conversation_events (owner, agent_slug, ts, session_id, entry_uuid);
CREATE INDEX conversation_events_session_time
    ON conversation_events (owner, agent_slug, session_id, ts, entry_uuid);

CREATE TABLE conversation_sessions (
    agent_id         bigint      NOT NULL,
    owner            text        NOT NULL,
    agent_slug       text        NOT NULL,
    session_id       text        NOT NULL,
    first_prompt     text,
    first_prompt_ts  timestamptz,
    events           bigint      NOT NULL DEFAULT 0,
    prompts          bigint      NOT NULL DEFAULT 0,
    first_ts         timestamptz NOT NULL,
    last_ts          timestamptz NOT NULL,
    PRIMARY KEY (agent_id, session_id)
);
CREATE INDEX conversation_sessions_agent_last
    ON conversation_sessions (owner, agent_slug, last_ts DESC, session_id DESC);
