-- Users' secrets (a Git token, a cloud key): encrypted with the service's Fernet
-- keys, never shown again (api/secrets). Agents list the ones their sandbox gets
-- in agents.secrets: [{"name": ..., "env": ...?, "file": ...?}] (rules/secrets.py).
CREATE TABLE user_secrets (
    owner text NOT NULL,
    name text NOT NULL,
    encrypted_value bytea NOT NULL,
    description text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_by text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, name)
);

ALTER TABLE agents ADD COLUMN secrets jsonb NOT NULL DEFAULT '[]';
