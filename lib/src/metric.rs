//! Every metric name the service exports, with its help text. Names are a contract with the
//! dashboards: renaming one is a breaking change.

/// Counter, label `event_type`: events appended to the log.
pub const EVENTS_APPENDED: &str = "layerline_events_appended_total";
/// Gauge: position of the last event appended by this process (or seen at start-up).
pub const EVENT_LOG_HEAD: &str = "layerline_event_log_head_position";

/// Registers the help text of every metric with the installed recorder.
pub fn describe() {
    metrics::describe_counter!(
        EVENTS_APPENDED,
        "Events appended to the event log, by type."
    );
    metrics::describe_gauge!(
        EVENT_LOG_HEAD,
        "Position of the newest event in the log as last seen by this process."
    );
}

/// Records a committed append.
pub fn appended(event_types: impl Iterator<Item = &'static str>, last_position: i64) {
    for event_type in event_types {
        metrics::counter!(EVENTS_APPENDED, "event_type" => event_type).increment(1);
    }
    metrics::gauge!(EVENT_LOG_HEAD).set(last_position as f64);
}
