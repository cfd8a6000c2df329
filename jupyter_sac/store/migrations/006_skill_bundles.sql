-- What a skill's attachment bundle holds (the bytes live in the object store under
-- skill-bundles/<sha256>.tar.gz), so listings show it without reading the store.
ALTER TABLE skills
    ADD COLUMN bundle_files jsonb  NOT NULL DEFAULT '[]'::jsonb,
    ADD COLUMN bundle_size  bigint NOT NULL DEFAULT 0;
