-- Whether an agent's own JupyterHub token may drive its owner's other agents
-- (list, create, start, stop, restart and chat with them from a notebook). Off by
-- default; only a person (the owner or an administrator) turns it on, and it
-- applies from the agent's next start (docs/security.md#principals).
ALTER TABLE agents ADD COLUMN drive_agents boolean NOT NULL DEFAULT false;
