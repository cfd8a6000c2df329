-- Agents: one row per JupyterHub named server that SAC manages.
CREATE TABLE agents (
    id              bigserial PRIMARY KEY,
    owner           text        NOT NULL,
    slug            text        NOT NULL,
    display_name    text        NOT NULL,
    runtime         text        NOT NULL DEFAULT 'claude',
    provider        text        NOT NULL,
    model           text        NOT NULL,
    base_url        text,
    -- Fernet token of the agent's own provider key; NULL means "use the organisation key".
    encrypted_key   bytea,
    overrides       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (owner, slug)
);
CREATE INDEX agents_owner_created ON agents (owner, created_at, id);

-- Settings overrides: scope 'system' (subject '') and 'user' (subject = user name).
-- Agent-level overrides live in agents.overrides.
CREATE TABLE settings_overrides (
    scope       text        NOT NULL CHECK (scope IN ('system', 'user')),
    subject     text        NOT NULL DEFAULT '',
    overrides   jsonb       NOT NULL DEFAULT '{}'::jsonb,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text,
    PRIMARY KEY (scope, subject)
);

-- Per-agent credential-proxy tokens. Only a SHA-256 of the token is kept.
CREATE TABLE agent_tokens (
    token_hash  bytea       PRIMARY KEY,
    agent_id    bigint      NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX agent_tokens_agent ON agent_tokens (agent_id);

-- Model usage metered by the credential proxy, per agent per UTC day.
-- No foreign key: usage outlives a deleted agent (owner and slug are kept).
CREATE TABLE usage_daily (
    agent_id                    bigint  NOT NULL,
    owner                       text    NOT NULL,
    agent_slug                  text    NOT NULL,
    day                         date    NOT NULL,
    requests                    bigint  NOT NULL DEFAULT 0,
    input_tokens                bigint  NOT NULL DEFAULT 0,
    output_tokens               bigint  NOT NULL DEFAULT 0,
    cache_creation_input_tokens bigint  NOT NULL DEFAULT 0,
    cache_read_input_tokens     bigint  NOT NULL DEFAULT 0,
    PRIMARY KEY (agent_id, day)
);
CREATE INDEX usage_daily_owner_day ON usage_daily (owner, day);

-- Conversation events: one row per transcript entry. The time column is part of
-- the key because a TimescaleDB hypertable requires it in every unique index.
CREATE TABLE conversation_events (
    agent_id    bigint      NOT NULL,
    owner       text        NOT NULL,
    agent_slug  text        NOT NULL,
    session_id  text        NOT NULL,
    entry_uuid  text        NOT NULL,
    ts          timestamptz NOT NULL,
    kind        text        NOT NULL,
    payload     jsonb       NOT NULL,
    PRIMARY KEY (agent_id, session_id, entry_uuid, ts)
);
CREATE INDEX conversation_events_ts ON conversation_events (ts DESC);
CREATE INDEX conversation_events_owner_ts ON conversation_events (owner, ts DESC);
