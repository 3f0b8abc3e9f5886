-- What a dry run's plan keeps, each tag and manifest with the rule that kept it (design §11),
-- so a reviewer sees the whole image beside its deletions. Read, never applied: a run
-- deletes only `prune_plan_items`. Real runs store no keeps; their kept counts are NULL.
CREATE TABLE prune_plan_keeps (
    job_id TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    idx BIGINT NOT NULL,
    image_id TEXT NOT NULL,
    image_name TEXT NOT NULL,
    kind TEXT NOT NULL,
    tag TEXT,
    digest TEXT NOT NULL,
    reason TEXT NOT NULL,
    subject TEXT,
    PRIMARY KEY (job_id, attempt, idx)
);
ALTER TABLE prune_plans ADD COLUMN kept_tags BIGINT;
ALTER TABLE prune_plans ADD COLUMN kept_manifests BIGINT;
