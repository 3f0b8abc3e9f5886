-- Planner statistics for apalis's task table (`Jobs`, created by apalis's own migrations).
--
-- apalis acknowledges a batch of tasks with an UPDATE joining `Jobs` on the task id and on
-- the worker holding it (`lock_by`), and marks fetched tasks running by id among the
-- claimable statuses. A database that has never been analysed gives SQLite's planner no
-- counts, and it then reads those rows through the `lock_by` index (every task the worker
-- ever finished, since a finished task keeps its `lock_by`) or the status index (every
-- pending task) instead of looking each task up by id: each batch costs time in proportion
-- to the queue's history, and a drain of n tasks costs n². These rows describe a queue table
-- in use (many tasks per worker and per status), as ANALYZE of a populated table would, so
-- the planner looks tasks up by id from the start. SQLite loads them when a connection opens
-- and when the schema changes (apalis creating its tables does). The table-wide ANALYZE of
-- an empty `Jobs` would remove them; nothing here runs one.
ANALYZE sqlite_schema;
DELETE FROM sqlite_stat1 WHERE tbl = 'Jobs' AND idx IN ('LIdx', 'idx_jobs_status_run_at');
INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES
    ('Jobs', 'LIdx', '100000 10000'),
    ('Jobs', 'idx_jobs_status_run_at', '100000 20000 1');
-- Loaded into this connection now (the others load them when they open).
ANALYZE sqlite_schema;
