-- What each agent's sandbox uses now, sampled by its spawner (CPU, memory and
-- processes from its cgroups, disk of its home and workspace, bytes through its
-- network relays) and the limits that hold on it (null: not enforced there).
-- One row per agent, replaced at every sample; while the agent is stopped only
-- its disk use is kept (the spawner checks the disk limit at the next start).
CREATE TABLE sandbox_usage (
    agent_id           bigint PRIMARY KEY REFERENCES agents(id) ON DELETE CASCADE,
    sampled_at         timestamptz NOT NULL DEFAULT now(),
    running            boolean     NOT NULL,
    cpu_seconds        double precision,
    cpu_percent        double precision,
    memory_bytes       bigint,
    processes          integer,
    disk_bytes         bigint,
    net_sent_bytes     bigint,
    net_received_bytes bigint,
    limits             jsonb       NOT NULL DEFAULT '{}'
);
