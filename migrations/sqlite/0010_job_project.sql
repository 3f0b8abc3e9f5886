-- The project a job acts in (the project of the namespace or image it names; null for jobs
-- of no project, such as probes, and for jobs accepted before this column existed). A token
-- scoped to a project sees only that project's jobs.
ALTER TABLE job_descriptors ADD COLUMN project_id TEXT;
CREATE INDEX job_descriptors_project_idx ON job_descriptors (project_id, created_at, id);
