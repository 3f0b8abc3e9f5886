-- The append-only event log. `position` is assigned from event_log_head while its row is
-- locked, so positions are dense and commit in order.
CREATE TABLE events (
    position BIGINT PRIMARY KEY,
    stream_id TEXT NOT NULL,
    stream_version BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    payload TEXT NOT NULL,
    metadata TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, stream_version)
);

-- Current version of every stream: the optimistic concurrency check.
CREATE TABLE event_streams (
    stream_id TEXT PRIMARY KEY,
    version BIGINT NOT NULL
);

CREATE TABLE event_log_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    position BIGINT NOT NULL
);
INSERT INTO event_log_head (id, position) VALUES (1, 0);
