//! Every metric name the service exports, with its help text. Names are a contract with the
//! dashboards: renaming one is a breaking change.

/// Counter, label `event_type`: events appended to the log.
pub const EVENTS_APPENDED: &str = "layerline_events_appended_total";
/// Gauge: position of the last event appended by this process (or seen at start-up).
pub const EVENT_LOG_HEAD: &str = "layerline_event_log_head_position";

/// Counter, labels `method`, `route` (the matched route template, never an id) and `status`.
pub const HTTP_REQUESTS: &str = "layerline_http_requests_total";
/// Histogram (seconds), labels `method` and `route`: time to answer a request.
pub const HTTP_DURATION: &str = "layerline_http_request_duration_seconds";

/// Buckets of [`HTTP_DURATION`], in seconds.
pub const HTTP_DURATION_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The route label of a request that matched no route (so unknown paths cannot add labels).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Registers the help text of every metric with the installed recorder.
pub fn describe() {
    metrics::describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by method, matched route and status."
    );
    metrics::describe_histogram!(
        HTTP_DURATION,
        metrics::Unit::Seconds,
        "Time to answer an HTTP request, by method and matched route."
    );
    metrics::describe_counter!(
        EVENTS_APPENDED,
        "Events appended to the event log, by type."
    );
    metrics::describe_gauge!(
        EVENT_LOG_HEAD,
        "Position of the newest event in the log as last seen by this process."
    );
}

/// Records an answered request.
pub fn http_request(method: &str, route: &str, status: u16, seconds: f64) {
    let (method, route) = (method.to_owned(), route.to_owned());
    metrics::counter!(HTTP_REQUESTS, "method" => method.clone(), "route" => route.clone(),
        "status" => status.to_string())
    .increment(1);
    metrics::histogram!(HTTP_DURATION, "method" => method, "route" => route).record(seconds);
}

/// Records a committed append.
pub fn appended(event_types: impl Iterator<Item = &'static str>, last_position: i64) {
    for event_type in event_types {
        metrics::counter!(EVENTS_APPENDED, "event_type" => event_type).increment(1);
    }
    metrics::gauge!(EVENT_LOG_HEAD).set(last_position as f64);
}
