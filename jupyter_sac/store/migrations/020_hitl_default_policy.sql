-- The organisation's default HITL policy: what an agent without a policy of its
-- own follows (admins set it on the Approvals page or PUT api/hitl/default-policy).
-- One row at most; none means the built-in default (rules/hitl.py DEFAULT_POLICY).
CREATE TABLE hitl_default_policy (
    only_row    boolean     PRIMARY KEY DEFAULT true CHECK (only_row),
    policy      jsonb       NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text        NOT NULL
);
