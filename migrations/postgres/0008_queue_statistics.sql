-- SQLite only: planner statistics for apalis's task table (see the SQLite migration).
-- PostgreSQL gathers its own by autovacuum's ANALYZE, so there is nothing to do here.
SELECT 1;
