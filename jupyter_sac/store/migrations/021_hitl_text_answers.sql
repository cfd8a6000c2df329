-- Terminal prompts that take text ("Enter a name:", Claude Code's "Type something."):
-- the sandbox says how long an answer the prompt takes (text_max; NULL: none, the
-- prompt is answered with one of its options), and the person's answer is kept
-- with the decision, as the option is.
ALTER TABLE hitl_requests
    ADD COLUMN text_max integer CHECK (text_max BETWEEN 1 AND 2000),
    ADD COLUMN answer_text text;
