//! Every metric the service exports: its name, its labels and its help text, and the
//! functions that record it. Names are a contract with the dashboards in `dashboards/` (a
//! test checks that every name they use is exported): renaming one is a breaking change.
//!
//! Labels are bounded: methods, route templates, statuses, job kinds and outcomes, event
//! types, and policy ids (policies are few and made by operators). Never image, tag, job or
//! request ids.
//!
//! Counters are recorded where things happen, in the process they happen in. Gauges that
//! describe the database (queue depth, log head, registry totals, next runs) are read from it
//! when the metrics are scraped ([`refresh`]), so every replica reports the same figures:
//! dashboards take `max` of them across instances.

use std::time::Duration;

use chrono::Utc;

use crate::domain::job::JobKind;
use crate::domain::schedule::Schedule;
use crate::store::Store;

/// Counter, labels `method`, `route` (the matched route template, never an id) and `status`.
pub const HTTP_REQUESTS: &str = "layerline_http_requests_total";
/// Histogram (seconds), labels `method` and `route`: time to answer a request.
pub const HTTP_DURATION: &str = "layerline_http_request_duration_seconds";

/// Counter, label `kind`: jobs accepted (a submission answered with an existing job by its
/// idempotency key is not counted again).
pub const JOBS_SUBMITTED: &str = "layerline_jobs_submitted_total";
/// Counter, label `kind`: attempts started by a worker.
pub const JOBS_STARTED: &str = "layerline_jobs_started_total";
/// Counter, labels `kind` and `outcome` (`completed`, `error`, `cancelled`): jobs ended.
pub const JOBS_FINISHED: &str = "layerline_jobs_finished_total";
/// Counter, label `kind`: attempts that failed transiently and were scheduled again.
pub const JOB_RETRIES: &str = "layerline_job_retries_total";
/// Histogram (seconds), labels `kind` and `outcome` (a [`JOBS_FINISHED`] outcome, or
/// `retry`, or `superseded` when a newer attempt took the job over): one attempt's run time.
pub const JOB_DURATION: &str = "layerline_job_duration_seconds";
/// Histogram (seconds), label `kind`: from the moment a job could start (accepted, or its
/// retry time) to its handler starting.
pub const JOB_PICKUP: &str = "layerline_job_pickup_latency_seconds";
/// Gauges, label `kind`: jobs waiting for a worker, waiting for their retry time, running.
pub const JOBS_QUEUED: &str = "layerline_jobs_queued";
pub const JOBS_SCHEDULED: &str = "layerline_jobs_scheduled";
pub const JOBS_RUNNING: &str = "layerline_jobs_running";

/// Counter, label `event_type`: events appended to the log by this process.
pub const EVENTS_APPENDED: &str = "layerline_events_appended_total";
/// Gauge: position of the newest event in the log.
pub const EVENT_LOG_HEAD: &str = "layerline_event_log_head_position";
/// Gauge, label `projection`: the log position the read models reflect. Projections are
/// written in the append's own transaction, so in any committed state this is the head; the
/// gauge is read from the database like the head, and `head - position` is the lag a
/// dashboard shows (zero unless a projection falls behind).
pub const PROJECTION_POSITION: &str = "layerline_projection_position";

/// Counters: what prune runs deleted and the bytes that freed (deduplicated per image).
pub const PRUNE_TAGS_DELETED: &str = "layerline_prune_tags_deleted_total";
pub const PRUNE_MANIFESTS_DELETED: &str = "layerline_prune_manifests_deleted_total";
pub const PRUNE_BYTES_FREED: &str = "layerline_prune_bytes_freed_total";
/// Counter, label `mode` (`dry_run`, `apply`): prune plans computed.
pub const PRUNE_PLANS: &str = "layerline_prune_plans_total";

/// Counter, label `outcome` (`recorded`, `unchanged`, `failed`): manifests an import fetched.
pub const IMPORT_MANIFESTS: &str = "layerline_import_manifests_total";
/// Counter: bytes of the manifests an import recorded (distinct blobs per manifest).
pub const IMPORT_BYTES: &str = "layerline_import_bytes_total";

/// Counter: scheduler ticks (each looks for due policies).
pub const CRON_TICKS: &str = "layerline_cron_ticks_total";
/// Counter: scheduled prune runs submitted by this process's scheduler.
pub const CRON_RUNS: &str = "layerline_cron_runs_submitted_total";
/// Gauge, label `policy_id`: Unix time of each enabled policy's next scheduled run.
pub const POLICY_NEXT_RUN: &str = "layerline_policy_next_run_timestamp_seconds";

/// Gauges: the registry's totals.
pub const NAMESPACES: &str = "layerline_namespaces";
pub const IMAGES: &str = "layerline_images";
pub const TAGS: &str = "layerline_tags";
/// Gauge: bytes stored, each blob counted once per namespace.
pub const STORED_BYTES: &str = "layerline_stored_bytes";
/// Gauge: 1 when the last scrape could read the database, else 0.
pub const DATABASE_UP: &str = "layerline_database_up";
/// Gauge, labels `version`, `commit` and `commit_date`: always 1.
pub const BUILD_INFO: &str = "layerline_build_info";

/// Buckets of [`HTTP_DURATION`], in seconds.
pub const HTTP_DURATION_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Buckets of [`JOB_PICKUP`], in seconds.
pub const JOB_PICKUP_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0,
];
/// Buckets of [`JOB_DURATION`], in seconds.
pub const JOB_DURATION_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0,
];

/// The route label of a request that matched no route (so unknown paths cannot add labels).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Job outcomes of [`JOBS_FINISHED`].
const FINAL_OUTCOMES: [&str; 3] = ["completed", "error", "cancelled"];

/// Registers the help text of every metric with the installed recorder and creates every
/// counter with a bounded label set at zero, so a rate over a window that saw the first
/// event is not lost (Prometheus needs a sample before the first increment).
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by method, matched route and status."
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "Time to answer an HTTP request, by method and matched route."
    );
    describe_counter!(JOBS_SUBMITTED, "Jobs accepted, by kind.");
    describe_counter!(JOBS_STARTED, "Job attempts started, by kind.");
    describe_counter!(
        JOBS_FINISHED,
        "Jobs ended, by kind and outcome (completed, error, cancelled)."
    );
    describe_counter!(
        JOB_RETRIES,
        "Job attempts that failed transiently and were scheduled again, by kind."
    );
    describe_histogram!(
        JOB_DURATION,
        Unit::Seconds,
        "Run time of one job attempt, by kind and outcome."
    );
    describe_histogram!(
        JOB_PICKUP,
        Unit::Seconds,
        "Time from a job becoming runnable to its handler starting, by kind."
    );
    describe_gauge!(JOBS_QUEUED, "Jobs waiting for a worker, by kind.");
    describe_gauge!(
        JOBS_SCHEDULED,
        "Jobs waiting for their retry time, by kind."
    );
    describe_gauge!(JOBS_RUNNING, "Jobs running, by kind.");
    describe_counter!(
        EVENTS_APPENDED,
        "Events appended to the event log by this process, by type."
    );
    describe_gauge!(EVENT_LOG_HEAD, "Position of the newest event in the log.");
    describe_gauge!(
        PROJECTION_POSITION,
        "Log position the read models reflect, by projection."
    );
    describe_counter!(PRUNE_TAGS_DELETED, "Tags deleted by prune runs.");
    describe_counter!(PRUNE_MANIFESTS_DELETED, "Manifests deleted by prune runs.");
    describe_counter!(
        PRUNE_BYTES_FREED,
        Unit::Bytes,
        "Bytes freed by prune runs (blobs no remaining manifest of the image uses)."
    );
    describe_counter!(
        PRUNE_PLANS,
        "Prune plans computed, by mode (dry_run, apply)."
    );
    describe_counter!(
        IMPORT_MANIFESTS,
        "Manifests fetched by imports, by outcome (recorded, unchanged, failed)."
    );
    describe_counter!(
        IMPORT_BYTES,
        Unit::Bytes,
        "Bytes of the manifests imports recorded."
    );
    describe_counter!(CRON_TICKS, "Prune scheduler ticks.");
    describe_counter!(
        CRON_RUNS,
        "Scheduled prune runs submitted by this process's scheduler."
    );
    describe_gauge!(
        POLICY_NEXT_RUN,
        "Unix time of the next scheduled run of each enabled prune policy."
    );
    describe_gauge!(NAMESPACES, "Namespaces in the registry.");
    describe_gauge!(IMAGES, "Images in the registry.");
    describe_gauge!(TAGS, "Tags in the registry.");
    describe_gauge!(
        STORED_BYTES,
        Unit::Bytes,
        "Bytes stored, each blob counted once per namespace."
    );
    describe_gauge!(
        DATABASE_UP,
        "Whether the last scrape could read the database (1) or not (0)."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version, commit and commit date are its labels."
    );

    metrics::gauge!(
        BUILD_INFO,
        "version" => env!("CARGO_PKG_VERSION"),
        "commit" => crate::COMMIT,
        "commit_date" => crate::COMMIT_DATE,
    )
    .set(1.0);
    for kind in JobKind::ALL {
        let kind = kind.as_str();
        metrics::counter!(JOBS_SUBMITTED, "kind" => kind).absolute(0);
        metrics::counter!(JOBS_STARTED, "kind" => kind).absolute(0);
        metrics::counter!(JOB_RETRIES, "kind" => kind).absolute(0);
        for outcome in FINAL_OUTCOMES {
            metrics::counter!(JOBS_FINISHED, "kind" => kind, "outcome" => outcome).absolute(0);
        }
    }
    for counter in [
        PRUNE_TAGS_DELETED,
        PRUNE_MANIFESTS_DELETED,
        PRUNE_BYTES_FREED,
        IMPORT_BYTES,
        CRON_TICKS,
        CRON_RUNS,
    ] {
        metrics::counter!(counter).absolute(0);
    }
    for mode in ["dry_run", "apply"] {
        metrics::counter!(PRUNE_PLANS, "mode" => mode).absolute(0);
    }
    for outcome in ["recorded", "unchanged", "failed"] {
        metrics::counter!(IMPORT_MANIFESTS, "outcome" => outcome).absolute(0);
    }
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

/// Records an accepted job.
pub fn job_submitted(kind: JobKind) {
    metrics::counter!(JOBS_SUBMITTED, "kind" => kind.as_str()).increment(1);
}

/// Records an attempt's start, `waited` after the job became runnable (none for an attempt
/// taking over from a dead worker, whose wait is the orphan timeout, not the queue's).
pub fn job_started(kind: JobKind, waited: Option<Duration>) {
    metrics::counter!(JOBS_STARTED, "kind" => kind.as_str()).increment(1);
    if let Some(waited) = waited {
        metrics::histogram!(JOB_PICKUP, "kind" => kind.as_str()).record(waited.as_secs_f64());
    }
}

/// Records the end of an attempt that ran for `ran`: `outcome` is `completed`, `error`,
/// `cancelled` (the job ended), `retry` or `superseded`.
pub fn job_attempt_ended(kind: JobKind, outcome: &'static str, ran: Duration) {
    metrics::histogram!(JOB_DURATION, "kind" => kind.as_str(), "outcome" => outcome)
        .record(ran.as_secs_f64());
    match outcome {
        "retry" => metrics::counter!(JOB_RETRIES, "kind" => kind.as_str()).increment(1),
        "superseded" => {}
        _ => job_finished(kind, outcome),
    }
}

/// Records a job that ended without an attempt ending it (cancelled while waiting).
pub fn job_finished(kind: JobKind, outcome: &'static str) {
    metrics::counter!(JOBS_FINISHED, "kind" => kind.as_str(), "outcome" => outcome).increment(1);
}

/// Records a computed prune plan.
pub fn prune_planned(dry_run: bool) {
    let mode = if dry_run { "dry_run" } else { "apply" };
    metrics::counter!(PRUNE_PLANS, "mode" => mode).increment(1);
}

/// Records what an applied prune deleted.
pub fn pruned(tags: u64, manifests: u64, bytes: u64) {
    metrics::counter!(PRUNE_TAGS_DELETED).increment(tags);
    metrics::counter!(PRUNE_MANIFESTS_DELETED).increment(manifests);
    metrics::counter!(PRUNE_BYTES_FREED).increment(bytes);
}

/// Records manifests an import fetched: `recorded` new ones of `bytes` in all,
/// `unchanged` ones already recorded, `failed` ones refused.
pub fn imported(recorded: u64, unchanged: u64, failed: u64, bytes: u64) {
    metrics::counter!(IMPORT_MANIFESTS, "outcome" => "recorded").increment(recorded);
    metrics::counter!(IMPORT_MANIFESTS, "outcome" => "unchanged").increment(unchanged);
    metrics::counter!(IMPORT_MANIFESTS, "outcome" => "failed").increment(failed);
    metrics::counter!(IMPORT_BYTES).increment(bytes);
}

/// Records a scheduler tick that submitted `runs` prune runs.
pub fn cron_ticked(runs: usize) {
    metrics::counter!(CRON_TICKS).increment(1);
    metrics::counter!(CRON_RUNS).increment(runs as u64);
}

/// How long gauges with ids in their labels (policies) survive without being set again: a
/// deleted policy's next-run gauge disappears after this.
pub const GAUGE_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Sets the gauges read from the database. A database that cannot be read leaves them as
/// they were and sets [`DATABASE_UP`] to 0.
pub async fn refresh(store: &Store) {
    match store.metric_totals().await {
        Ok(totals) => {
            metrics::gauge!(DATABASE_UP).set(1.0);
            metrics::gauge!(EVENT_LOG_HEAD).set(totals.head as f64);
            // The read models commit with the events they project: in the snapshot the
            // totals come from, the position they reflect is the head.
            metrics::gauge!(PROJECTION_POSITION, "projection" => "read_models")
                .set(totals.head as f64);
            metrics::gauge!(NAMESPACES).set(totals.namespaces as f64);
            metrics::gauge!(IMAGES).set(totals.images as f64);
            metrics::gauge!(TAGS).set(totals.tags as f64);
            metrics::gauge!(STORED_BYTES).set(totals.stored_bytes as f64);
            for kind in JobKind::ALL {
                let count = |state: &str| {
                    totals
                        .jobs
                        .iter()
                        .find(|(k, s, _)| k == kind.as_str() && s == state)
                        .map_or(0, |(_, _, n)| *n) as f64
                };
                let kind_label = kind.as_str();
                metrics::gauge!(JOBS_QUEUED, "kind" => kind_label).set(count("queued"));
                metrics::gauge!(JOBS_SCHEDULED, "kind" => kind_label).set(count("scheduled"));
                metrics::gauge!(JOBS_RUNNING, "kind" => kind_label).set(count("running"));
            }
        }
        Err(error) => {
            tracing::warn!(%error, "reading the metrics' gauges failed");
            metrics::gauge!(DATABASE_UP).set(0.0);
            return;
        }
    }
    if let Ok(policies) = store.scheduled_policies().await {
        let now = Utc::now();
        for row in policies {
            let next = row
                .schedule
                .as_deref()
                .and_then(|expr| Schedule::parse(expr, &row.timezone).ok())
                .and_then(|s| s.next_after(now));
            if let Some(next) = next {
                metrics::gauge!(POLICY_NEXT_RUN, "policy_id" => row.id)
                    .set(next.timestamp() as f64);
            }
        }
    }
}
