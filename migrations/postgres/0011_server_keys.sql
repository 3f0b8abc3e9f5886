-- Secrets of the server itself (the key page tokens are signed with), made by the first
-- process that needs one and shared by every process of the deployment. Not a read model:
-- `rebuild` leaves it alone, and the log never holds it.
CREATE TABLE server_keys (
    name TEXT PRIMARY KEY,
    secret TEXT NOT NULL,
    created_at TEXT NOT NULL
);
