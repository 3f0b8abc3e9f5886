//! The job system with real processes on real databases: the binary's workers (apalis on
//! SQLite and PostgreSQL), killed with SIGKILL, restarted, and raced against each other.

#[macro_use]
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{ADMIN, Fixture, Server, TestDb, call, cancel_and_wait, job, state, wait_for};
use layerline_core::domain::DomainEvent;
use layerline_core::store::{Backend, EventStore, ReadModels, Store};
use reqwest::Method;
use serde_json::{Value, json};

on_both_backends!(
    scaleway_delete_shows_deleting_until_a_worker_removes_it,
    a_worker_killed_mid_job_is_taken_over_and_each_effect_happens_once,
    transient_failures_back_off_and_the_retry_survives_a_restart,
    a_permanent_failure_ends_in_error_after_one_attempt,
    cancel_stops_at_a_step_boundary_and_describes_the_work_done,
    an_idempotency_key_returns_the_same_job,
    a_job_accepted_but_never_queued_is_found_by_the_sweep,
);

/// `layerline jobs …` against `server`, with the admin token from the environment.
async fn cli(server: &Server, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(common::BIN)
        .arg("jobs")
        .args(["--url", &server.base])
        .args(args)
        .env("LAYERLINE_TOKEN", ADMIN)
        .output()
        .await
        .expect("run layerline jobs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jobs_command_lists_shows_watches_and_cancels() {
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::on_database(&db.url, dir.path(), &["--retry-base-ms", "200"]);

    // watch follows a job to its end and succeeds only when it completed.
    let id = submit_probe(&server, json!({"steps": 5, "step_ms": 100})).await;
    let out = cli(&server, &["watch", &id]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains(&format!("{id}: completed")), "{stdout}");
    let failing = submit_probe(&server, json!({"fail_attempts": 1, "failure": "permanent"})).await;
    let out = cli(&server, &["watch", &failing]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("probe fails attempt 1 on purpose"));

    // cancel stops a running job; list and show see it.
    let long = submit_probe(&server, json!({"steps": 100, "step_ms": 100})).await;
    wait_for(&server, &long, Duration::from_secs(20), |j| {
        state(j) == "running"
    })
    .await;
    let out = cli(&server, &["cancel", &long]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(&server, &long, Duration::from_secs(20), |j| {
        state(j) == "cancelled"
    })
    .await;
    let out = cli(&server, &["list", "--state", "cancelled"]).await;
    let listed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(
        listed.contains(&long) && listed.contains("cancelled"),
        "{listed}"
    );
    let out = cli(&server, &["show", &id]).await;
    let shown: Value = serde_json::from_slice(&out.stdout).expect("show prints JSON");
    assert_eq!(shown["id"], id.as_str());
    assert_eq!(shown["progress"]["done"], 5);

    // A bad token is refused with the API's message.
    let out = tokio::process::Command::new(common::BIN)
        .args(["jobs", "--url", &server.base, "--token", "nope", "list"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));

    // --url and --token may come after the subcommand too; without a token it says so.
    let out = tokio::process::Command::new(common::BIN)
        .args(["jobs", "list", "--state", "cancelled"])
        .args(["--url", &server.base, "--token", ADMIN])
        .env_remove("LAYERLINE_TOKEN")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), listed);
    let out = tokio::process::Command::new(common::BIN)
        .args(["jobs", "list", "--url", &server.base])
        .env_remove("LAYERLINE_TOKEN")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--token or LAYERLINE_TOKEN"), "{stderr}");
}

async fn submit_probe(server: &Server, input: Value) -> String {
    let (status, body) = call(
        Method::POST,
        &format!("{}/v1/jobs", server.base),
        Some(json!({"kind": "probe", "input": input})),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    body["data"]["job"]["id"].as_str().unwrap().to_owned()
}

/// An image with `tags` tags, each on its own manifest.
async fn big_image(fx: &Fixture, ns: &str, name: &str, tags: u64) -> String {
    let image = fx.image(ns, name).await;
    for n in 0..tags {
        fx.manifest(&image, 10_000 + n, &[(n, 100)]).await;
        fx.tag(&image, &format!("t{n:05}"), 10_000 + n).await;
    }
    image
}

/// The events of `stream` by type name.
async fn event_counts(store: &Store, stream: &str) -> HashMap<&'static str, usize> {
    let mut counts = HashMap::new();
    for e in store.read_stream(stream).await.unwrap() {
        *counts.entry(e.event.event_type()).or_insert(0) += 1;
    }
    counts
}

async fn scaleway_delete_shows_deleting_until_a_worker_removes_it(db: &TestDb) {
    let store = db.store().await;
    let fx = Fixture::new(store.clone());
    let ns = fx.namespace("doomed").await;
    let image = big_image(&fx, &ns, "app", 3).await;
    let keep_ns = fx.namespace("kept").await;
    let other = big_image(&fx, &keep_ns, "lib", 2).await;

    // An API-only process: jobs are accepted and wait for a worker.
    let dir = tempfile::tempdir().unwrap();
    let api = Server::on_database(&db.url, dir.path(), &["--role", "api"]);
    let base = format!("{}/registry/v1/regions/fr-par", api.base);
    let (status, body) = call(Method::DELETE, &format!("{base}/images/{other}"), None).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("deleting")));
    let (status, body) = call(Method::DELETE, &format!("{base}/namespaces/{ns}"), None).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("deleting")));
    for path in [format!("/images/{other}"), format!("/namespaces/{ns}")] {
        let (status, body) = call(Method::GET, &format!("{base}{path}"), None).await;
        assert_eq!(
            (status, body["status"].as_str()),
            (200, Some("deleting")),
            "{path}"
        );
    }
    // Deleting again answers the same job instead of a second one.
    call(Method::DELETE, &format!("{base}/images/{other}"), None).await;
    let (_, jobs) = call(
        Method::GET,
        &format!("{}/v1/jobs?filter[state]=queued&meta=total", api.base),
        None,
    )
    .await;
    assert_eq!(jobs["meta"]["total"], 2, "{jobs}");

    // A worker process picks them up; polling GET ends in 404.
    let worker = Server::on_database(&db.url, dir.path(), &["--role", "worker"]);
    assert!(
        worker.base.is_empty(),
        "a worker-only process serves no API"
    );
    for path in [
        format!("/images/{other}"),
        format!("/namespaces/{ns}"),
        format!("/images/{image}"),
    ] {
        let started = Instant::now();
        loop {
            let (status, body) = call(Method::GET, &format!("{base}{path}"), None).await;
            if status == 404 {
                break;
            }
            assert_eq!(body["status"], "deleting", "{path}: {body}");
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{path} still there"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The jobs record their success just after their last effect.
    let started = Instant::now();
    let jobs = loop {
        let (_, jobs) = call(
            Method::GET,
            &format!(
                "{}/v1/jobs?filter[state]=completed&sort=created_at",
                api.base
            ),
            None,
        )
        .await;
        let jobs = jobs["data"].as_array().unwrap().clone();
        if jobs.len() == 2 || started.elapsed() > Duration::from_secs(10) {
            break jobs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[0]["queue"], "delete_image");
    assert_eq!(jobs[0]["output"]["tags_deleted"], 2);
    assert_eq!(jobs[1]["queue"], "delete_namespace");
    assert_eq!(jobs[1]["output"]["images_deleted"], 1);
    // The namespace that was not deleted is still there.
    let (status, _) = call(Method::GET, &format!("{base}/namespaces/{keep_ns}"), None).await;
    assert_eq!(status, 200);
}

async fn a_worker_killed_mid_job_is_taken_over_and_each_effect_happens_once(db: &TestDb) {
    const TAGS: u64 = 1200;
    let store = db.store().await;
    let fx = Fixture::new(store.clone());
    let ns = fx.namespace("bulky").await;
    let image = big_image(&fx, &ns, "app", TAGS).await;

    let dir = tempfile::tempdir().unwrap();
    let timing = ["--orphan-timeout-secs", "4"];
    let first = Server::on_database(&db.url, dir.path(), &timing);
    let (status, body) = call(
        Method::DELETE,
        &format!("{}/v1/images/{image}", first.base),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let id = body["data"]["job"]["id"].as_str().unwrap().to_owned();
    wait_for(&first, &id, Duration::from_secs(60), |j| {
        j["progress"]["done"].as_i64().unwrap_or(0) >= 50
    })
    .await;
    drop(first); // SIGKILL: no chance to finish or hand anything back.
    let mid = store.job(&id).await.unwrap().unwrap();
    assert_eq!(mid.state, "running", "killed in the middle");
    assert!(mid.progress_done < mid.progress_total);

    // SQLite: the same machine restarts it. PostgreSQL: another worker process takes over
    // while an API-only process answers.
    let (_worker, watcher) = match db.backend {
        Backend::Sqlite => (None, Server::on_database(&db.url, dir.path(), &timing)),
        Backend::Postgres => {
            let worker = ["--role", "worker", "--orphan-timeout-secs", "4"];
            (
                Some(Server::on_database(&db.url, dir.path(), &worker)),
                Server::on_database(&db.url, dir.path(), &["--role", "api"]),
            )
        }
    };
    let done = wait_for(&watcher, &id, Duration::from_secs(90), |j| {
        state(j) != "running"
    })
    .await;
    assert_eq!(state(&done), "completed", "{done}");
    assert_eq!(done["attempts"], 2, "{done}");
    assert_eq!(done["output"]["tags_deleted"], TAGS);

    // Every effect exactly once in the log.
    let stream = format!("image-{image}");
    let mut names = HashMap::new();
    for e in store.read_stream(&stream).await.unwrap() {
        if let DomainEvent::TagDeleted(t) = &e.event {
            *names.entry(t.name.clone()).or_insert(0) += 1;
        }
    }
    assert_eq!(names.len() as u64, TAGS);
    assert!(names.values().all(|&n| n == 1), "a tag deleted twice");
    let counts = event_counts(&store, &stream).await;
    assert_eq!(counts.get("manifest.deleted"), Some(&(TAGS as usize)));
    assert_eq!(counts.get("image.deleted"), Some(&1));
    let job_events = event_counts(&store, &format!("job-{id}")).await;
    assert_eq!(job_events.get("job.started"), Some(&2));
    assert_eq!(job_events.get("job.succeeded"), Some(&1));
}

async fn transient_failures_back_off_and_the_retry_survives_a_restart(db: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--retry-base-ms", "1500"];
    let first = Server::on_database(&db.url, dir.path(), &args);
    let id = submit_probe(&first, json!({"steps": 1, "fail_attempts": 2})).await;
    let waiting = wait_for(&first, &id, Duration::from_secs(20), |j| {
        state(j) == "scheduled"
    })
    .await;
    assert_eq!(waiting["attempts"], 1);
    assert!(waiting["next_retry_at"].is_string());
    // Stop the process while the retry waits; the retry lives in the database.
    assert!(first.terminate(), "clean stop");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = Server::on_database(&db.url, dir.path(), &args);
    let done = wait_for(&second, &id, Duration::from_secs(30), |j| {
        state(j) == "completed"
    })
    .await;
    assert_eq!(done["attempts"], 3, "{done}");
    assert_eq!(done["last_error"], "probe fails attempt 2 on purpose");

    // Each retry waited until its time, and the second wait was longer than the first.
    let store = db.store().await;
    let mut failed_at = Vec::new();
    let mut retry_at = Vec::new();
    let mut started_at = Vec::new();
    let time = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap();
    for e in store.read_stream(&format!("job-{id}")).await.unwrap() {
        match &e.event {
            DomainEvent::JobRetried(r) => {
                failed_at.push(time(&e.recorded_at));
                retry_at.push(time(&r.retry_at));
            }
            DomainEvent::JobStarted(_) => started_at.push(time(&e.recorded_at)),
            _ => {}
        }
    }
    assert_eq!((failed_at.len(), started_at.len()), (2, 3));
    let waits: Vec<_> = (0..2).map(|i| retry_at[i] - failed_at[i]).collect();
    assert!(waits[1] > waits[0], "backoff grows: {waits:?}");
    for i in 0..2 {
        assert!(
            started_at[i + 1] >= retry_at[i],
            "attempt {} ran before its retry time",
            i + 2
        );
    }
}

async fn a_permanent_failure_ends_in_error_after_one_attempt(db: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::on_database(&db.url, dir.path(), &["--retry-base-ms", "100"]);
    let id = submit_probe(
        &server,
        json!({"steps": 2, "fail_attempts": 5, "failure": "permanent"}),
    )
    .await;
    let done = wait_for(&server, &id, Duration::from_secs(20), |j| {
        state(j) == "error"
    })
    .await;
    assert_eq!(done["attempts"], 1);
    assert_eq!(
        done["state"]["error"]["message"],
        "probe fails attempt 1 on purpose"
    );
    // Bad input is permanent too, and named.
    let id = submit_probe(&server, json!({"steps": -1})).await;
    let done = wait_for(&server, &id, Duration::from_secs(20), |j| {
        state(j) == "error"
    })
    .await;
    assert_eq!(done["attempts"], 1);
    assert!(
        done["state"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("steps")
    );
    // Nothing comes back later.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(job(&server, &id).await["attempts"], 1);
}

async fn cancel_stops_at_a_step_boundary_and_describes_the_work_done(db: &TestDb) {
    const TAGS: u64 = 1000;
    let store = db.store().await;
    let fx = Fixture::new(store.clone());
    let ns = fx.namespace("half").await;
    let image = big_image(&fx, &ns, "app", TAGS).await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::on_database(&db.url, dir.path(), &[]);
    let (_, body) = call(
        Method::DELETE,
        &format!("{}/v1/images/{image}", server.base),
        None,
    )
    .await;
    let id = body["data"]["job"]["id"].as_str().unwrap().to_owned();
    wait_for(&server, &id, Duration::from_secs(30), |j| {
        j["progress"]["done"].as_i64().unwrap_or(0) >= 20
    })
    .await;
    let done = cancel_and_wait(&server, &id, Duration::from_secs(30)).await;
    assert_eq!(state(&done), "cancelled", "{done}");
    let described = done["progress"]["done"].as_i64().unwrap();
    assert!(described > 0 && described < TAGS as i64 + 1, "{done}");

    // The work done is exactly what the descriptor says; nothing after it was applied.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let deleted = event_counts(&store, &format!("image-{image}")).await;
    let tags_deleted = *deleted.get("tag.deleted").unwrap_or(&0) as i64;
    assert_eq!(tags_deleted, described);
    assert_eq!(deleted.get("image.deleted"), None);
    assert_eq!(
        fx.tag_names(&image).await.len() as i64,
        TAGS as i64 - described
    );
    // A finished job cannot be cancelled again.
    let (status, body) = call(
        Method::POST,
        &format!("{}/v1/jobs/{id}/tasks", server.base),
        Some(json!({"action": "cancel"})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("409.conflict"))
    );
}

async fn an_idempotency_key_returns_the_same_job(db: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::on_database(&db.url, dir.path(), &["--role", "api"]);
    let submit = |key: &'static str| {
        let url = format!("{}/v1/jobs", server.base);
        async move {
            let res = reqwest::Client::new()
                .post(url)
                .header("X-Auth-Token", ADMIN)
                .header("Idempotency-Key", key)
                .json(&json!({"kind": "probe", "input": {"steps": 1}}))
                .send()
                .await
                .unwrap();
            let body: Value = res.json().await.unwrap();
            body["data"]["job"]["id"].as_str().unwrap().to_owned()
        }
    };
    let (a, b) = tokio::join!(submit("k-1"), submit("k-1"));
    assert_eq!(a, b, "concurrent submissions with one key make one job");
    assert_eq!(submit("k-1").await, a);
    assert_ne!(submit("k-2").await, a);
    let (_, jobs) = call(Method::GET, &format!("{}/v1/jobs", server.base), None).await;
    assert_eq!(
        jobs.as_object().unwrap().len(),
        1,
        "a list is only its data: {jobs}"
    );
    assert_eq!(jobs["data"].as_array().unwrap().len(), 2);
    let (_, jobs) = call(
        Method::GET,
        &format!("{}/v1/jobs?meta=total", server.base),
        None,
    )
    .await;
    assert_eq!(jobs["meta"]["total"], 2);
    // Bad input is refused in the Cycle error shape and creates nothing.
    let (status, body) = call(
        Method::GET,
        &format!("{}/v1/jobs?page[size]=1000", server.base),
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("422.invalid-argument"))
    );
    let (status, body) = call(
        Method::POST,
        &format!("{}/v1/jobs", server.base),
        Some(json!({"kind": "import"})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("422.invalid-argument"))
    );
    let (status, _) = call(Method::GET, &format!("{}/v1/jobs/nope", server.base), None).await;
    assert_eq!(status, 404);
    let res = reqwest::Client::new()
        .get(format!("{}/v1/jobs", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    let (_, jobs) = call(
        Method::GET,
        &format!("{}/v1/jobs?meta=total", server.base),
        None,
    )
    .await;
    assert_eq!(jobs["meta"]["total"], 2);
}

async fn a_job_accepted_but_never_queued_is_found_by_the_sweep(db: &TestDb) {
    // As if the process died between recording the job and queueing it.
    let store = db.store().await;
    let registry = layerline_core::service::Registry::new(store.clone());
    let sub = layerline_core::jobs::Submission {
        kind: layerline_core::domain::job::JobKind::Probe,
        caption: "lost".to_owned(),
        input: json!({"steps": 1}),
        creator: None,
        idempotency_key: None,
        marks: None,
        project_id: None,
    };
    let job = layerline_core::jobs::submit(&registry, &layerline_core::jobs::NoDispatch, sub)
        .await
        .unwrap();
    assert_eq!(job.state, "queued");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::on_database(&db.url, dir.path(), &[]);
    // The sweep looks at jobs unchanged for 10 s, every 5 s.
    let done = wait_for(&server, &job.id, Duration::from_secs(40), |j| {
        state(j) == "completed"
    })
    .await;
    assert_eq!(done["attempts"], 1);
}

/// Our worker pool in this process, on `store` (apalis's tables migrated first), polling
/// every `poll`; stopped by sending `true` on the returned sender, then awaiting the handle.
async fn start_pool(
    store: &Store,
    poll: Duration,
) -> (
    layerline_jobs::Queues,
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let config = layerline_jobs::PoolConfig {
        poll,
        ..layerline_jobs::PoolConfig::default()
    };
    start_pool_with(store, config).await
}

async fn start_pool_with(
    store: &Store,
    config: layerline_jobs::PoolConfig,
) -> (
    layerline_jobs::Queues,
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    use layerline_jobs::{Queues, RetryPolicy, Runner};
    use std::sync::Arc;
    let queues = Queues::new(store.clone(), config);
    queues.migrate().await.unwrap();
    let runner = Runner::new(
        store.clone(),
        Arc::new(queues.clone()),
        RetryPolicy::default(),
        4,
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let pool = tokio::spawn(layerline_jobs::pool::run(
        queues.clone(),
        Arc::new(runner),
        stopped,
    ));
    (queues, stop, pool)
}

/// Submits a probe with `input` through `queues` and waits (up to 60 s) until it completes.
async fn probe_to_completion(store: &Store, queues: &layerline_jobs::Queues, input: Value) {
    let sub = layerline_core::jobs::Submission {
        kind: layerline_core::domain::job::JobKind::Probe,
        caption: "probe".to_owned(),
        input,
        creator: None,
        idempotency_key: None,
        marks: None,
        project_id: None,
    };
    let registry = layerline_core::service::Registry::new(store.clone());
    let job = layerline_core::jobs::submit(&registry, queues, sub)
        .await
        .unwrap();
    let submitted = Instant::now();
    loop {
        let row = store.job(&job.id).await.unwrap().unwrap();
        if row.state == "completed" {
            return;
        }
        assert!(
            submitted.elapsed() < Duration::from_secs(60),
            "the probe did not complete: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// apalis fetches from a queue each time it polls the queue's worker with a free slot, and
/// it polled the worker at every wake-up of a running handler: a job with many steps kept
/// its queue fetching back to back (some 500 fetches a second during an import). Now a
/// queue is fetched at its ticks (every 500 ms here), when a submission wakes it (our nudge
/// and PostgreSQL's insert notification) and when one of its jobs ends, whatever the job
/// does meanwhile. PostgreSQL counts the calls to apalis's fetch function
/// (`track_functions`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_does_not_make_its_queue_fetch_at_each_wake_up() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let counted = format!("{}?options=-c%20track_functions%3Dall", db.url);
    let store = Store::connect(&counted, 16).await.unwrap();
    store.migrate().await.unwrap();
    const POLL: Duration = Duration::from_millis(500);
    let pool_started = Instant::now();
    let (queues, stop, pool) = start_pool(&store, POLL).await;
    // 300 steps of 2 ms: at least 300 wake-ups of the handler.
    const STEPS: i64 = 300;
    probe_to_completion(&store, &queues, json!({"steps": STEPS, "step_ms": 2})).await;
    let _ = stop.send(true);
    pool.await.unwrap();
    let lifetime = pool_started.elapsed();
    // A backend reports its function counts when its session ends.
    store.close().await;
    let reader = Store::connect(&db.url, 1).await.unwrap();
    let Store::Postgres(pg) = &reader else {
        unreachable!("a PostgreSQL test database")
    };
    // Each query is a transaction of its own, which reads the statistics afresh.
    let fetches = loop {
        let (sessions, calls): (i64, Option<i64>) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM pg_stat_activity \
                     WHERE datname = current_database() AND pid <> pg_backend_pid()), \
                    (SELECT sum(calls)::bigint FROM pg_stat_user_functions \
                     WHERE schemaname = 'apalis' AND funcname = 'get_jobs')",
        )
        .fetch_one(pg.pool())
        .await
        .unwrap();
        if sessions == 0 {
            break calls.unwrap_or(0);
        }
        assert!(
            pool_started.elapsed() < Duration::from_secs(90),
            "sessions stay"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let queues_count = layerline_jobs::queue::ALL.len() as i64;
    assert!(
        fetches >= queues_count,
        "each queue's worker fetches at least once: {fetches} fetches counted"
    );
    // Per queue: one per tick and a few at start (each wake-up of the worker while it
    // registers); then a couple for the submission (our nudge, the insert notification) and
    // one for the job's end.
    let ticks = (lifetime.as_millis() / POLL.as_millis()) as i64;
    let allowed = queues_count * (ticks + 5) + 10;
    eprintln!("{fetches} fetches in {lifetime:?} (allowed {allowed})");
    assert!(
        fetches <= allowed,
        "{fetches} fetches for a {STEPS}-step job in {lifetime:?} on {queues_count} queues \
         (allowed {allowed})"
    );
}

/// A task pushed by another process wakes this process's worker at once on PostgreSQL: one
/// connection listens for apalis's insert notifications and nudges the queue each one
/// names. The pool here polls once an hour, so only the notification can start the job; the
/// pushing `Queues` is a second instance, as another process's would be, whose own nudges
/// reach no worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_pushed_by_another_process_wakes_the_worker_on_postgres() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let store = db.store().await;
    let (_, stop, pool) = start_pool(&store, Duration::from_secs(3600)).await;
    // One listening session (not one per queue), once it is up and the first fetches are
    // over.
    let Store::Postgres(pg) = &store else {
        unreachable!("a PostgreSQL test database")
    };
    let started = Instant::now();
    loop {
        let listening: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND query LIKE 'LISTEN %'",
        )
        .fetch_one(pg.pool())
        .await
        .unwrap();
        assert!(listening <= 1, "{listening} listening sessions");
        if listening == 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "nobody listens"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let elsewhere =
        layerline_jobs::Queues::new(store.clone(), layerline_jobs::PoolConfig::default());
    probe_to_completion(&store, &elsewhere, json!({"steps": 1})).await;
    let _ = stop.send(true);
    pool.await.unwrap();
}

/// On SQLite an idle queue does not fetch at every tick (a fetch takes the database's write
/// lock even when it finds nothing); one read per tick finds the queues with tasks due and
/// wakes only their workers. Here the ticks that still fetch come at the heartbeat's pace,
/// every 150 s (a 600 s orphan timeout), so a task pushed by another process (a second
/// `Queues`, whose nudges reach no worker here) completes within the probe's 60 s only
/// because that read found it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_pushed_by_another_process_is_found_by_the_due_read_on_sqlite() {
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let store = db.store().await;
    let config = layerline_jobs::PoolConfig {
        poll: Duration::from_millis(100),
        orphan_after: Duration::from_secs(600),
        ..layerline_jobs::PoolConfig::default()
    };
    let (_, stop, pool) = start_pool_with(&store, config).await;
    // Past the workers' first fetches at start.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let elsewhere = layerline_jobs::Queues::new(store.clone(), config);
    let started = Instant::now();
    probe_to_completion(&store, &elsewhere, json!({"steps": 1})).await;
    eprintln!("picked up and completed in {:?}", started.elapsed());
    let _ = stop.send(true);
    pool.await.unwrap();
}

/// How SQLite plans the two statements apalis runs per batch of tasks (the shapes of its
/// acknowledgement and of its lock, which our pool turns off but apalis's default runs; the
/// values are placeholders), as a connection of `pool` sees them.
async fn queue_plans(pool: &sqlx::SqlitePool) -> Vec<String> {
    let statements = [
        "EXPLAIN QUERY PLAN UPDATE Jobs SET status = 'Done', done_at = 1 \
         FROM (SELECT value AS task_id FROM json_each('[]')) AS j \
         WHERE Jobs.id = j.task_id AND Jobs.lock_by = 'worker'",
        "EXPLAIN QUERY PLAN UPDATE Jobs SET status = 'Running', lock_by = 'worker' \
         WHERE id IN (SELECT value FROM json_each('[]')) \
         AND (status = 'Queued' OR status = 'Pending' \
              OR (status = 'Failed' AND attempts < max_attempts))",
    ];
    let mut plans = Vec::new();
    for sql in statements {
        let rows: Vec<(i64, i64, i64, String)> = sqlx::query_as(sql).fetch_all(pool).await.unwrap();
        plans.push(rows.into_iter().map(|r| r.3).collect::<Vec<_>>().join("; "));
    }
    plans
}

/// On a new SQLite database, apalis's per-batch statements look each task up by its id.
/// Without statistics SQLite's planner read them through the worker's index (every task
/// that worker ever finished) or the status index (every pending task), so each batch cost
/// time in proportion to the queue's history.
#[tokio::test]
async fn sqlite_looks_queued_tasks_up_by_id_from_the_first_start() {
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let store = db.store().await;
    let queues = layerline_jobs::Queues::new(store.clone(), layerline_jobs::PoolConfig::default());
    queues.migrate().await.unwrap();
    let Store::Sqlite(s) = &store else {
        unreachable!("a SQLite store")
    };
    // The connection that ran the migrations, the store's readers, and one opened afterwards.
    let fresh = sqlx::SqlitePool::connect(&db.url).await.unwrap();
    for pool in [s.write_pool(), s.pool(), &fresh] {
        for plan in queue_plans(pool).await {
            assert!(
                plan.contains("sqlite_autoindex_Jobs_1 (id=?)"),
                "not looked up by id: {plan}"
            );
        }
    }
    fresh.close().await;
}
