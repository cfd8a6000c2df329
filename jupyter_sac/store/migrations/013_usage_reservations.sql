-- Tokens held by model calls under way (the credential proxy), so that calls made at
-- once cannot together pass a monthly budget: a call goes out only if this month's
-- usage, the live reservations and its own reservation fit in the budget, decided
-- in one statement under the owner's lock (store/usage.py). A call settles its row
-- when it ends (its real usage goes to usage_daily in the same transaction). A row
-- whose call never settled (the service died) stops counting at expires_at; calls
-- still running push expires_at forward.
CREATE TABLE usage_reservations (
    id          bigserial   PRIMARY KEY,
    agent_id    bigint      NOT NULL,
    owner       text        NOT NULL,
    tokens      bigint      NOT NULL CHECK (tokens >= 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX usage_reservations_owner ON usage_reservations (owner, expires_at);
