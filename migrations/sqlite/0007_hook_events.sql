-- Registry notification events already handled, by the id the registry gave them: a
-- redelivered event is skipped. Not a read model of the log; `rebuild` leaves it alone.
CREATE TABLE hook_events (
    id TEXT PRIMARY KEY,
    received_at TEXT NOT NULL
);
