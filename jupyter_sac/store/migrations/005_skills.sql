-- The skill marketplace: skills in four visibility tiers, and which agent has which installed.
CREATE TABLE skills (
    id             bigserial   PRIMARY KEY,
    -- '' for the official skills shipped in skills/ (no user owns them)
    owner          text        NOT NULL,
    command        text        NOT NULL,
    title          text        NOT NULL,
    description    text        NOT NULL,
    body           text        NOT NULL,
    parameters     jsonb       NOT NULL DEFAULT '[]'::jsonb,
    prompt         text        NOT NULL DEFAULT '',
    tags           jsonb       NOT NULL DEFAULT '[]'::jsonb,
    visibility     text        NOT NULL
                   CHECK (visibility IN ('official', 'public', 'group', 'private')),
    group_name     text        CHECK ((visibility = 'group') = (group_name IS NOT NULL)),
    version        integer     NOT NULL DEFAULT 1,
    parent_id      bigint      REFERENCES skills (id) ON DELETE SET NULL,
    bundle_sha256  text,
    checksum       text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (owner, command)
);
CREATE INDEX skills_visibility ON skills (visibility, updated_at DESC, id);

CREATE TABLE skill_installs (
    agent_id      bigint      NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    skill_id      bigint      NOT NULL REFERENCES skills (id) ON DELETE CASCADE,
    installed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent_id, skill_id)
);
CREATE INDEX skill_installs_skill ON skill_installs (skill_id);
