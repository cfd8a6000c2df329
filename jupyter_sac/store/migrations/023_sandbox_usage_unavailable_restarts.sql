-- Live usage on Kubernetes (issue 21): where a sandbox's figures cannot be read
-- (no metrics API in the cluster, the pod not sampled yet) the spawner says why
-- instead of leaving blanks; and how often the agent's server was restarted since
-- it started (a container restarted in place by its kubelet: a crash loop).
ALTER TABLE sandbox_usage
    ADD COLUMN unavailable text,
    ADD COLUMN restarts    integer;
