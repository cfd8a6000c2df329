-- Each running agent's own server token (its JUPYTERHUB_API_TOKEN, which the hub
-- gives the sandbox and which opens only that server), encrypted with the Fernet
-- keys, so the `sac` service calls the agent's server with a credential the
-- sandbox already holds rather than its own (which opened every server). Written
-- by the hub's spawner at each start, removed at stop and with the agent.
CREATE TABLE agent_server_tokens (
    agent_id        bigint PRIMARY KEY REFERENCES agents(id) ON DELETE CASCADE,
    token_encrypted bytea       NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
