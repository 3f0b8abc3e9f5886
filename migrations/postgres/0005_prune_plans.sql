-- Prune plans: what one prune job chose to delete, at which log position, and why. An attempt
-- writes its items in short transactions (a large plan must not hold the write lock for
-- long), then the summary row, which makes the plan: one per job, naming the attempt whose
-- items it is. A rerun of the job reads it back.
-- Not a read model of the log (a plan depends on the clock and the policy at planning time),
-- so `rebuild` leaves these tables alone.
CREATE TABLE prune_plans (
    job_id TEXT PRIMARY KEY,
    position BIGINT NOT NULL,
    policy_id TEXT,
    policy_version BIGINT,
    attempt BIGINT NOT NULL,
    images BIGINT NOT NULL,
    tags BIGINT NOT NULL,
    manifests BIGINT NOT NULL,
    bytes BIGINT NOT NULL,
    created_at TEXT NOT NULL
);

-- One row per planned deletion; `idx` orders them (image by image, tags before manifests).
CREATE TABLE prune_plan_items (
    job_id TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    idx BIGINT NOT NULL,
    image_id TEXT NOT NULL,
    image_name TEXT NOT NULL,
    kind TEXT NOT NULL,
    tag TEXT,
    digest TEXT NOT NULL,
    pushed_version BIGINT,
    reason TEXT NOT NULL,
    bytes BIGINT NOT NULL,
    PRIMARY KEY (job_id, attempt, idx)
);
