-- The marketplace lists skills most-installed first. Counting installs per row at
-- query time made a 10,000-skill listing sort every visible row (p99 ~30 ms in
-- bench/skills_sync.py); a counter kept by a trigger lets an index give the order.
ALTER TABLE skills ADD COLUMN installs bigint NOT NULL DEFAULT 0;

UPDATE skills s SET installs = c.n
FROM (SELECT skill_id, count(*) AS n FROM skill_installs GROUP BY skill_id) c
WHERE c.skill_id = s.id;

CREATE FUNCTION skill_installs_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE skills SET installs = installs + 1 WHERE id = NEW.skill_id;
    ELSE
        UPDATE skills SET installs = installs - 1 WHERE id = OLD.skill_id;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER skill_installs_count AFTER INSERT OR DELETE ON skill_installs
    FOR EACH ROW EXECUTE FUNCTION skill_installs_count();

CREATE INDEX skills_popular ON skills (installs DESC, updated_at DESC, id DESC);

