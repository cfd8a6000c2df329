-- Pinned skill installs (docs/skills.md#versions-and-pinned-installs). Until now an
-- install followed its skill: the owner's next edit reached every installer's agent
-- at its next sync, unreviewed. Now each version of a skill's content is kept, and
-- an install names the version it runs and the checksum of what the sandbox gets
-- for it; moving to a newer version is the installer's own action.

-- Every version's content. The row of the current version is written with it (so
-- `skills` stays the fast head for listings); an older one is kept while an install
-- pins it and deleted once none does.
CREATE TABLE skill_versions (
    skill_id       bigint      NOT NULL REFERENCES skills (id) ON DELETE CASCADE,
    version        integer     NOT NULL,
    title          text        NOT NULL,
    description    text        NOT NULL,
    body           text        NOT NULL,
    parameters     jsonb       NOT NULL,
    prompt         text        NOT NULL,
    tags           jsonb       NOT NULL,
    bundle_sha256  text,
    bundle_files   jsonb       NOT NULL DEFAULT '[]'::jsonb,
    bundle_size    bigint      NOT NULL DEFAULT 0,
    -- the content checksum, as skills.checksum (change detection, not delivery)
    checksum       text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (skill_id, version)
);
-- "Is this bundle object still used?" is asked of old versions too.
CREATE INDEX skill_versions_bundle ON skill_versions (bundle_sha256)
    WHERE bundle_sha256 IS NOT NULL;

INSERT INTO skill_versions (skill_id, version, title, description, body, parameters, prompt,
                            tags, bundle_sha256, bundle_files, bundle_size, checksum, created_at)
SELECT id, version, title, description, body, parameters, prompt, tags, bundle_sha256,
       bundle_files, bundle_size, checksum, updated_at
FROM skills;

-- Existing installs are pinned at their skill's current version: what their agents
-- have (or get at their next sync). Their checksum is the sha256 of the canonical
-- JSON a sandbox receives, which only the Python code computes: the service fills
-- it in at start (Skills.fill_install_checksums), before it serves any manifest.
ALTER TABLE skill_installs
    ADD COLUMN version  integer,
    ADD COLUMN checksum text;
UPDATE skill_installs i SET version = s.version FROM skills s WHERE s.id = i.skill_id;
ALTER TABLE skill_installs
    ALTER COLUMN version SET NOT NULL,
    -- NO ACTION, not CASCADE: deleting a version an install still pins is a bug to be
    -- refused, never a silent uninstall. (Deleting the skill removes both at once.)
    ADD CONSTRAINT skill_installs_version FOREIGN KEY (skill_id, version)
        REFERENCES skill_versions (skill_id, version);
