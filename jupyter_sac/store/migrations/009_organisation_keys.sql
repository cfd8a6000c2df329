-- Organisation provider keys set by administrators on the settings page (or the
-- API). Encrypted with the service's Fernet keys; a key here wins over one from the
-- service's configuration. Only a short hint of each key is ever shown again.
CREATE TABLE organisation_keys (
    provider text PRIMARY KEY,
    encrypted_key bytea NOT NULL,
    hint text NOT NULL,                -- the key's last four characters
    updated_by text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
