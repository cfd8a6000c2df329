-- Marketplace text search through an index (docs/skills.md#search). Until now
-- `q` was a substring match (ILIKE) over command, title and description, which
-- reads every row: p99 34 ms at 10,000 skills for a word only one skill has.
--
-- Full text, not trigrams: pg_trgm is a contrib extension, and the PostgreSQL the
-- embedded stack runs (pgserver's) ships none, so the built-in text search it is.
-- What people type in a marketplace box is words and the start of words as they
-- type ("hist", "plot-hist", "/forecast"): each word of the query matches as a
-- prefix of a word of the skill. The 'simple' configuration lowercases and does
-- not stem or drop stop words: names are not English prose, and a skill may be
-- written in any language.

-- Words of a text, punctuation turned to spaces, for a skill and a query alike. The
-- parser would keep "df.plot", "report.csv" or "/plot" as one token each, where
-- people search for "plot" or "csv"; and no tsquery operator survives it.
CREATE FUNCTION skills_search_words(t text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN regexp_replace(t, '[[:punct:]]+', ' ', 'g');

-- What a skill is found by: its name (command and title), tags and description,
-- weighted in that order (A, B, C). The body (instructions for the model) is left
-- out: its common words would match most skills for any short query.
ALTER TABLE skills ADD COLUMN search tsvector GENERATED ALWAYS AS (
    setweight(to_tsvector('simple', skills_search_words(command || ' ' || title)), 'A')
    || setweight(to_tsvector('simple', skills_search_words(tags::text)), 'B')
    || setweight(to_tsvector('simple', skills_search_words(description)), 'C')
) STORED;
-- Its name alone: a search ranks the skills with every word in their name first,
-- and asks this index whether any such skill is outside the most installed.
ALTER TABLE skills ADD COLUMN search_name tsvector GENERATED ALWAYS AS (
    to_tsvector('simple', skills_search_words(command || ' ' || title))
) STORED;

-- Written straight into the index, not through a pending list that every search
-- would read until a vacuum merges it (and that makes the planner prefer reading
-- every row): skills are written seldom and searched often.
CREATE INDEX skills_search ON skills USING gin (search) WITH (fastupdate = off);
CREATE INDEX skills_search_name ON skills USING gin (search_name) WITH (fastupdate = off);

-- The skill a search names by its command comes first wherever it is.
CREATE INDEX skills_command ON skills (command);

-- A query: every word of `q` as a prefix, all required. NULL when `q` has no word
-- (only punctuation), which matches nothing.
CREATE FUNCTION skills_search_query(q text) RETURNS tsquery
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN (
        SELECT string_agg('''' || replace(replace(w, '\', '\\'), '''', '''''') || ''':*', ' & ')
            ::tsquery
        FROM unnest(tsvector_to_array(to_tsvector('simple', skills_search_words(q)))) AS w
    );
