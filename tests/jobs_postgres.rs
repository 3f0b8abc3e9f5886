//! Several worker processes on one PostgreSQL, and PostgreSQL itself restarted under them.
//! One test function, in its own test binary: it stops the database server, which no other
//! test may see (cargo runs test binaries one after another).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{ADMIN, Server, TestDb};
use layerline_core::domain::job::JobKind;
use layerline_core::jobs::{Submission, submit};
use layerline_core::service::Registry;
use layerline_core::store::{Backend, EventStore, JobQuery, ReadModels, Store};
use layerline_jobs::{PoolConfig, Queues};
use serde_json::{Value, json};

async fn count(store: &Store, state: &str) -> i64 {
    let query = JobQuery {
        states: vec![state.to_owned()],
        limit: 1,
        ..JobQuery::default()
    };
    store.list_jobs(&query).await.unwrap().total_count
}

async fn probe(base: &str, input: Value) -> String {
    let res = reqwest::Client::new()
        .post(format!("{base}/v1/jobs"))
        .header("X-Auth-Token", ADMIN)
        .json(&json!({"kind": "probe", "input": input}))
        .send()
        .await
        .expect("submit");
    assert_eq!(res.status().as_u16(), 202);
    let body: Value = res.json().await.unwrap();
    body["data"]["job"]["id"].as_str().unwrap().to_owned()
}

async fn wait_final(store: &Store, id: &str, limit: Duration) -> String {
    let started = Instant::now();
    loop {
        if let Ok(Some(job)) = store.job(id).await
            && matches!(job.state.as_str(), "completed" | "error" | "cancelled")
        {
            return job.state;
        }
        assert!(
            started.elapsed() < limit,
            "job {id} not finished within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn pg_ctl(action: &str) {
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("a Debian PostgreSQL cluster")
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    let status = std::process::Command::new("pg_ctlcluster")
        .args([
            "--skip-systemctl-redirect",
            version.to_str().unwrap(),
            "main",
            action,
        ])
        .status()
        .expect("pg_ctlcluster");
    assert!(status.success(), "pg_ctlcluster {action}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_workers_share_jobs_once_and_survive_a_database_restart() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let store = db.store().await;
    let queues = Queues::new(store.clone(), PoolConfig::default());
    queues.migrate().await.unwrap();

    // Two worker processes drain 2 000 jobs: each runs exactly once.
    const JOBS: usize = 2000;
    let registry = Registry::new(store.clone());
    for i in 0..JOBS {
        let sub = Submission {
            kind: JobKind::Probe,
            caption: format!("probe {i}"),
            input: json!({}),
            creator: None,
            idempotency_key: None,
            marks: None,
            project_id: None,
        };
        submit(&registry, &queues, sub).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let a = Server::on_database(&db.url, dir.path(), &["--role", "worker", "--workers", "8"]);
    let b = Server::on_database(&db.url, dir.path(), &["--role", "worker", "--workers", "8"]);
    let started = Instant::now();
    while count(&store, "completed").await < JOBS as i64 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "drain too slow"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut per_job: HashMap<String, (usize, usize)> = HashMap::new();
    let mut after = 0;
    loop {
        let events = store.read_all(after, 5000).await.unwrap();
        let Some(last) = events.last() else { break };
        after = last.position;
        for e in &events {
            let entry = per_job.entry(e.stream_id.clone()).or_default();
            match e.event.event_type() {
                "job.started" => entry.0 += 1,
                "job.succeeded" => entry.1 += 1,
                _ => {}
            }
        }
    }
    let jobs: Vec<_> = per_job
        .iter()
        .filter(|(s, _)| s.starts_with("job-"))
        .collect();
    assert_eq!(jobs.len(), JOBS);
    assert!(
        jobs.iter().all(|(_, counts)| **counts == (1, 1)),
        "a job ran twice"
    );
    let Store::Postgres(pg) = &store else {
        unreachable!()
    };
    let workers: i64 = sqlx::query_scalar(
        "SELECT COUNT(DISTINCT lock_by) FROM apalis.jobs WHERE job_type = 'probe'",
    )
    .fetch_one(pg.pool())
    .await
    .unwrap();
    assert_eq!(workers, 2, "both processes took jobs");
    drop((a, b));

    // PostgreSQL goes away for 5 s while one job runs and the other queues are idle.
    let server = Server::on_database(&db.url, dir.path(), &["--orphan-timeout-secs", "8"]);
    let quick = probe(&server.base, json!({"steps": 1})).await;
    assert_eq!(
        wait_final(&store, &quick, Duration::from_secs(30)).await,
        "completed"
    );
    let long = probe(&server.base, json!({"steps": 40, "step_ms": 150})).await;
    let started = Instant::now();
    while store.job(&long).await.unwrap().unwrap().state != "running" {
        assert!(started.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    store.close().await;
    pg_ctl("stop");
    tokio::time::sleep(Duration::from_secs(5)).await;
    pg_ctl("start");
    let store = db.store().await;
    // Nothing stays running: the interrupted job finishes, and the same process takes new work.
    assert_eq!(
        wait_final(&store, &long, Duration::from_secs(120)).await,
        "completed"
    );
    let started = Instant::now();
    let after_restart = loop {
        // The API may need a moment to get connections back.
        let res = reqwest::Client::new()
            .post(format!("{}/v1/jobs", server.base))
            .header("X-Auth-Token", ADMIN)
            .json(&json!({"kind": "probe", "input": {"steps": 1}}))
            .send()
            .await
            .unwrap();
        if res.status().as_u16() == 202 {
            let body: Value = res.json().await.unwrap();
            break body["data"]["job"]["id"].as_str().unwrap().to_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "API did not come back"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(
        wait_final(&store, &after_restart, Duration::from_secs(60)).await,
        "completed"
    );
    assert_eq!(count(&store, "running").await, 0);

    // An idle service, its writer's connection kept, sees the database restart: readiness
    // says so within a second every time while it is away, and the first write after it
    // succeeds (the connection the restart ended is replaced without failing the append).
    store.close().await;
    pg_ctl("stop");
    let outage = Instant::now();
    let mut answers = 0;
    while outage.elapsed() < Duration::from_secs(5) {
        let asked = Instant::now();
        let res = reqwest::Client::new()
            .get(format!("{}/readyz", server.base))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap();
        let took = asked.elapsed();
        assert_eq!(res.status().as_u16(), 503, "/readyz during the outage");
        assert!(took < Duration::from_secs(1), "/readyz took {took:?}");
        answers += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(answers >= 3, "{answers} readiness answers in 5 s");
    pg_ctl("start");
    // `probe` asserts the submission is accepted (202).
    let first = probe(&server.base, json!({"steps": 1})).await;
    let store = db.store().await;
    assert_eq!(
        wait_final(&store, &first, Duration::from_secs(60)).await,
        "completed"
    );
}
