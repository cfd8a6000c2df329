-- The audit log: every settings change and every action an administrator takes on
-- another user's resources (docs/audit.md). Rows are only ever inserted; they name
-- users and agents as text, with no foreign keys, so they outlive what they describe.
CREATE TABLE audit_log (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    actor text NOT NULL,               -- the JupyterHub user (or service) who acted
    actor_admin boolean NOT NULL DEFAULT false,
    action text NOT NULL,              -- e.g. settings.system.replace, agent.update, hitl.decide
    target_user text,                  -- whose resource it was (NULL: nobody's, e.g. system settings)
    target text NOT NULL DEFAULT '',   -- what it was done to: agent slug, skill id, request id
    before jsonb,                      -- snapshots, secrets redacted; NULL: did not exist
    after jsonb,
    request_id text,
    ip text
);

-- Listing is newest first, keyset-paged on (at, id), optionally by one column.
CREATE INDEX audit_log_newest ON audit_log (at DESC, id DESC);
CREATE INDEX audit_log_actor ON audit_log (actor, at DESC, id DESC);
CREATE INDEX audit_log_target_user ON audit_log (target_user, at DESC, id DESC)
    WHERE target_user IS NOT NULL;
CREATE INDEX audit_log_action ON audit_log (action, at DESC, id DESC);
