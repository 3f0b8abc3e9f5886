-- Prune policies: each the fold of one policy stream (its latest body), plus the last run
-- started for it (the newest prune job whose input names the policy).
CREATE TABLE prune_policies (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    namespace_id TEXT NOT NULL,
    body TEXT NOT NULL,
    enabled BOOLEAN NOT NULL,
    schedule TEXT,
    timezone TEXT NOT NULL,
    last_run_job_id TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    version BIGINT NOT NULL,
    CONSTRAINT prune_policies_namespace_name_key UNIQUE (namespace_id, name)
);
CREATE INDEX prune_policies_created_idx ON prune_policies (created_at, id);
