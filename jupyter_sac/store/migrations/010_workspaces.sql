-- Workspace files (docs/workspaces.md): one row per file of a space, the agent's own
-- ("agent:<id>", paths under private/ and output/), the organisation's ("public") or
-- a group's ("group:<name>"). Content lives in the object store under a key made of
-- the space and the content's sha256, so a row is written only after its object
-- exists, and re-uploading what is already stored costs nothing.
CREATE TABLE workspace_files (
    space text NOT NULL,
    path text NOT NULL,
    size bigint NOT NULL CHECK (size >= 0),
    sha256 text NOT NULL,
    mtime timestamptz NOT NULL,
    version bigint NOT NULL DEFAULT 1,
    written_by text NOT NULL,          -- "user" or "user/agent"
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (space, path)
);
CREATE INDEX workspace_files_sha ON workspace_files (space, sha256);

-- A counter per space, bumped by every change: the sandbox's manifest ETag.
CREATE TABLE workspace_spaces (
    space text PRIMARY KEY,
    generation bigint NOT NULL DEFAULT 0
);

-- Group quotas are settings of a new level, "group" (subject: the group's name).
ALTER TABLE settings_overrides DROP CONSTRAINT settings_overrides_scope_check;
ALTER TABLE settings_overrides ADD CONSTRAINT settings_overrides_scope_check
    CHECK (scope IN ('system', 'user', 'group'));
