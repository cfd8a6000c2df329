-- Users' webhook subscriptions (api/webhooks): where to post which kinds of the
-- user's events (user_events, migration 017), in which format, signed with a
-- secret kept encrypted with the service's Fernet keys (shown once, at creation).
-- The cursor is the last event id queued for delivery: the deliverer reads the
-- owner's events after it, so a service restart neither skips nor repeats one.
CREATE TABLE webhooks (
    id               uuid        PRIMARY KEY,
    owner            text        NOT NULL,
    url              text        NOT NULL,
    format           text        NOT NULL CHECK (format IN ('json', 'slack')),
    kinds            text[]      NOT NULL,
    encrypted_secret bytea       NOT NULL,
    enabled          boolean     NOT NULL DEFAULT true,
    cursor_event_id  bigint      NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhooks_owner ON webhooks (owner, created_at);

-- One row per event to post to one subscription (queued before the first
-- attempt, updated after each): pending until delivered or failed. A restart
-- resumes the pending ones (at least once: receivers dedupe by its id, sent as
-- X-SAC-Delivery). Kept bounded: the newest finished rows of each subscription
-- and none older than the events' retention (the deliverer prunes them).
CREATE TABLE webhook_deliveries (
    id              uuid        PRIMARY KEY,
    webhook_id      uuid        NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    -- The user_events row it tells (NULL for a test delivery).
    event_id        bigint,
    kind            text        NOT NULL,
    -- The event as the json format sends it, frozen when queued (the event
    -- itself may be pruned before the last retry).
    payload         jsonb       NOT NULL,
    status          text        NOT NULL DEFAULT 'pending'
                                CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,
    last_status     integer,
    last_error      text,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX webhook_deliveries_event ON webhook_deliveries (webhook_id, event_id)
    WHERE event_id IS NOT NULL;
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_recent ON webhook_deliveries (webhook_id, created_at DESC);
