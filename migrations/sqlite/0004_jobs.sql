-- Job descriptors: each the fold of one job's event stream. (Not named `jobs`: apalis keeps a
-- `Jobs` table, and SQLite's names are case-insensitive.)
CREATE TABLE job_descriptors (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    caption TEXT NOT NULL,
    creator TEXT,
    input TEXT NOT NULL,
    output TEXT,
    attempts BIGINT NOT NULL,
    progress_done BIGINT NOT NULL,
    progress_total BIGINT NOT NULL,
    progress_step TEXT,
    last_error TEXT,
    next_retry_at TEXT,
    cancel_requested BOOLEAN NOT NULL,
    idempotency_key TEXT,
    created_at TEXT NOT NULL,
    started_at TEXT,
    completed_at TEXT,
    updated_at TEXT NOT NULL,
    version BIGINT NOT NULL,
    CONSTRAINT job_descriptors_idempotency_key_key UNIQUE (idempotency_key)
);
CREATE INDEX job_descriptors_created_idx ON job_descriptors (created_at, id);
CREATE INDEX job_descriptors_state_idx ON job_descriptors (state, created_at, id);
