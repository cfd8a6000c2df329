-- Agent templates (docs/templates.md): named, versioned definitions an agent is
-- created from. `templates` holds the current version of each; `template_versions`
-- an immutable snapshot of every version, so an agent records the version it was
-- made from and an explicit update can move it to the latest.
CREATE TABLE templates (
    id bigserial PRIMARY KEY,
    scope text NOT NULL CHECK (scope IN ('organisation', 'personal')),
    -- The owner of a personal template; '' for organisation ones (so the unique
    -- index below treats every organisation template as one namespace).
    owner text NOT NULL DEFAULT '',
    name text NOT NULL,
    version integer NOT NULL DEFAULT 1,
    definition jsonb NOT NULL,
    -- Shipped with the package (loaded at the service's start): not edited in the API.
    builtin boolean NOT NULL DEFAULT false,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_by text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((scope = 'personal') = (owner <> ''))
);
CREATE UNIQUE INDEX templates_scope_owner_name ON templates (scope, owner, name);

CREATE TABLE template_versions (
    -- No foreign key: the snapshots outlive a deleted template, so the agents made
    -- from it still start with what they were made from.
    template_id bigint NOT NULL,
    version integer NOT NULL,
    definition jsonb NOT NULL,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (template_id, version)
);

-- The template (and its version) an agent was made from; a deleted template
-- leaves its agents as they are (their version's snapshot stays).
ALTER TABLE agents ADD COLUMN template_id bigint;
ALTER TABLE agents ADD COLUMN template_version integer;
