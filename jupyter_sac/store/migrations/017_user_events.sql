-- What happened to a user's agents that the user may want to hear of at once
-- (a HITL request filed or decided, ...): read by the event stream
-- (GET api/events, Server-Sent Events) and, later, by whatever delivers them
-- elsewhere (webhooks). The id is the stream's event id: it only grows, so a
-- client that reconnects with the last id it saw gets exactly what it missed.
-- Rows are kept for a bounded window (the service prunes them, see
-- docs/architecture.md#the-users-event-stream).
CREATE TABLE user_events (
    id          bigserial   PRIMARY KEY,
    username    text        NOT NULL,
    kind        text        NOT NULL,
    agent_slug  text,
    data        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    -- An event that must be told once (a budget spent this month): a second
    -- append with the same key for the user is dropped.
    dedupe_key  text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX user_events_dedupe ON user_events (username, dedupe_key)
    WHERE dedupe_key IS NOT NULL;
-- A user's events after an id, in order (the stream, resuming).
CREATE INDEX user_events_user_id ON user_events (username, id);
-- Pruning by age.
CREATE INDEX user_events_created ON user_events (created_at);
