//! Observability end to end: the real binary runs a workload (API requests, an import from a
//! real `docker-registry`, a prune, a failing job, a scheduled policy); then its `/metrics` is
//! checked with `promtool`, against every dashboard in `dashboards/`, and through a real
//! Prometheus evaluating the alert rules of `dashboards/alerts.yml`; and its JSON log is
//! searched by job id and by request id.
//!
//! `promtool` and `prometheus` come from Debian's `prometheus` package (`.ci/run` installs
//! it); without them these tests are skipped with a message, except in CI.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::registry::{Registry, free_port};
use common::{ADMIN, Server, call, state, wait_for};
use layerline_core::oci::OCI_MANIFEST;
use reqwest::Method;
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(60);
/// The request id the workload sends with the import's submission.
const REQUEST_ID: &str = "observe-import-1";

/// Whether `tool` can run; false (with a message) when it is missing outside CI.
fn have(tool: &str) -> bool {
    if Command::new(tool).arg("--version").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var("CI").is_err(),
        "{tool} is required in CI (Debian's prometheus package)"
    );
    eprintln!("SKIPPED: {tool} is not installed");
    false
}

/// A server on a fresh SQLite database with the admin token, its JSON log in `dir/serve.log`.
fn server(dir: &Path) -> Server {
    let url = format!("sqlite://{}", dir.join("layerline.db").display());
    Server::on_database(&url, dir, &["--log-format", "json"])
}

/// What the workload did, for the checks.
struct Done {
    namespace: String,
    image: String,
    import_job: String,
    prune_job: String,
    failed_job: String,
    policy: String,
    /// Bytes the prune run reports it freed.
    bytes_freed: i64,
}

/// Requests, an import of `team/app` (three tags sharing a base layer), a prune keeping the
/// newest tag, an import of a repository the registry does not have (fails), and a policy
/// with a daily schedule.
async fn workload(server: &Server, reg: &Registry) -> Done {
    for tag in ["v1", "v2", "v3"] {
        let own = format!("app {tag}");
        reg.image("team/app", tag, OCI_MANIFEST, &["base layer", &own])
            .await;
    }
    let (status, ns) = call(
        Method::POST,
        &format!("{}/registry/v1/regions/fr-par/namespaces", server.base),
        Some(json!({"name": "observed", "project_id": "p"})),
    )
    .await;
    assert_eq!(status, 200, "{ns}");
    let namespace = ns["id"].as_str().unwrap().to_owned();
    // A refused request and an unknown route, for the error panels.
    let (status, _) = call(
        Method::GET,
        &format!(
            "{}/registry/v1/regions/fr-par/images/{namespace}",
            server.base
        ),
        None,
    )
    .await;
    assert_eq!(status, 404);

    let res = reqwest::Client::new()
        .post(format!("{}/v1/images", server.base))
        .header("X-Auth-Token", ADMIN)
        .header("x-request-id", REQUEST_ID)
        .json(&json!({"name": "app", "namespace_id": namespace,
                      "source": {"registry": reg.base, "repository": "team/app"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 201);
    let created: Value = res.json().await.unwrap();
    let image = created["data"]["id"].as_str().unwrap().to_owned();
    let import_job = created["data"]["import_job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let j = wait_for(server, &import_job, LIMIT, |j| {
        matches!(state(j), "completed" | "error")
    })
    .await;
    assert_eq!(state(&j), "completed", "{j}");

    let policy = json!({"namespace_id": namespace, "image_names": ["app"],
                        "rules": {"tag_pattern": "^v", "keep_last": 1}});
    let (status, body) = call(
        Method::POST,
        &format!("{}/v1/images/tasks", server.base),
        Some(json!({"action": "prune", "contents": {"policy": policy, "dry_run": false}})),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let prune_job = body["data"]["job"]["id"].as_str().unwrap().to_owned();
    let j = wait_for(server, &prune_job, LIMIT, |j| {
        matches!(state(j), "completed" | "error")
    })
    .await;
    assert_eq!(state(&j), "completed", "{j}");
    let output = &j["output"];
    assert_eq!(output["tags_deleted"], 2, "{j}");
    let bytes_freed = output["bytes_freed"].as_i64().unwrap();
    assert!(bytes_freed > 0, "{j}");

    let (status, body) = call(
        Method::POST,
        &format!("{}/v1/images/{image}/tasks", server.base),
        Some(json!({"action": "import", "contents": {"source":
            {"registry": reg.base, "repository": "team/missing"}}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let failed_job = body["data"]["job"]["id"].as_str().unwrap().to_owned();
    let j = wait_for(server, &failed_job, LIMIT, |j| {
        matches!(state(j), "completed" | "error")
    })
    .await;
    assert_eq!(state(&j), "error", "{j}");

    let (status, body) = call(
        Method::POST,
        &format!("{}/v1/prune-policies", server.base),
        Some(
            json!({"name": "nightly", "namespace_id": namespace, "image_names": ["app"],
                    "rules": {"tag_pattern": "^v", "keep_last": 5},
                    "schedule": "0 3 * * *", "timezone": "UTC", "enabled": true}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let policy = body["data"]["id"].as_str().unwrap().to_owned();
    Done {
        namespace,
        image,
        import_job,
        prune_job,
        failed_job,
        policy,
        bytes_freed,
    }
}

/// Every dashboard in `dashboards/`: file name and parsed JSON.
fn dashboards() -> Vec<(String, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards");
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let parsed =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"));
            (name, parsed)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(out.len() >= 5, "the five dashboards are there: {out:?}");
    out
}

/// Every panel's (title, expressions) of a dashboard.
fn panels(board: &Value) -> Vec<(String, Vec<String>)> {
    board["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let exprs = p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["expr"].as_str().unwrap().to_owned())
                .collect();
            (p["title"].as_str().unwrap().to_owned(), exprs)
        })
        .collect()
}

/// The metric names an expression uses (ours all start with `layerline_`), histogram
/// series suffixes removed.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("layerline_") {
        let start = i + at;
        let boundary = start == 0 || {
            let b = bytes[start - 1];
            !(b.is_ascii_alphanumeric() || b == b'_')
        };
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            let name = &expr[start..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            names.insert(base.to_owned());
        }
        i = end;
    }
    names
}

/// Metric families in an exposition (from its `# TYPE` lines).
fn exposed(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The value of the sample `series` (name and labels as exposed), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workloads_exposition_passes_promtool_and_has_every_dashboard_metric() {
    if !have("promtool") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::start().await;
    let server = server(dir.path());
    let done = workload(&server, &reg).await;
    let text = server.scrape().await;

    // promtool's linter: names, help, types, units, suffixes.
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = check.stdin.take().unwrap();
        stdin.write_all(text.as_bytes()).unwrap();
    }
    let out = check.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool: {report}\n{text}"
    );

    // The workload shows in the figures.
    let value = |series: &str| {
        sample(&text, series).unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
    };
    assert_eq!(
        value(r#"layerline_jobs_finished_total{kind="import",outcome="completed"}"#),
        1.0
    );
    assert_eq!(
        value(r#"layerline_jobs_finished_total{kind="import",outcome="error"}"#),
        1.0
    );
    assert_eq!(
        value(r#"layerline_jobs_finished_total{kind="prune",outcome="completed"}"#),
        1.0
    );
    assert_eq!(
        value(r#"layerline_jobs_submitted_total{kind="import"}"#),
        2.0
    );
    assert_eq!(value("layerline_prune_tags_deleted_total"), 2.0);
    assert_eq!(value("layerline_prune_manifests_deleted_total"), 2.0);
    assert_eq!(
        value("layerline_prune_bytes_freed_total"),
        done.bytes_freed as f64
    );
    assert_eq!(value(r#"layerline_prune_plans_total{mode="apply"}"#), 1.0);
    assert_eq!(
        value(r#"layerline_events_appended_total{event_type="namespace.created"}"#),
        1.0
    );
    assert_eq!(
        value(r#"layerline_import_manifests_total{outcome="recorded"}"#),
        3.0
    );
    assert_eq!(
        value(r#"layerline_import_manifests_total{outcome="failed"}"#),
        0.0,
        "the failing import failed listing tags, before any manifest"
    );
    assert!(value("layerline_import_bytes_total") > 0.0);
    assert_eq!(
        value(r#"layerline_job_pickup_latency_seconds_count{kind="import"}"#),
        2.0
    );
    assert_eq!(value(r#"layerline_jobs_queued{kind="import"}"#), 0.0);
    assert_eq!(value(r#"layerline_jobs_running{kind="prune"}"#), 0.0);
    assert_eq!(value("layerline_namespaces"), 1.0);
    assert_eq!(value("layerline_images"), 1.0);
    assert_eq!(value("layerline_tags"), 1.0, "v3 is left");
    assert!(value("layerline_stored_bytes") > 0.0);
    assert_eq!(value("layerline_database_up"), 1.0);
    let head = value("layerline_event_log_head_position");
    assert!(head > 0.0);
    assert_eq!(
        value(r#"layerline_projection_position{projection="read_models"}"#),
        head
    );
    let next_run = value(&format!(
        r#"layerline_policy_next_run_timestamp_seconds{{policy_id="{}"}}"#,
        done.policy
    ));
    let now = chrono::Utc::now().timestamp() as f64;
    assert!(
        next_run > now && next_run <= now + 86_400.0,
        "next 03:00 UTC: {next_run}"
    );
    assert!(
        value(
            r#"layerline_http_requests_total{method="GET",route="/registry/v1/regions/{region}/images/{image_id}",status="404"}"#
        ) >= 1.0
    );
    for id in [
        &done.namespace,
        &done.image,
        &done.import_job,
        &done.prune_job,
        &done.failed_job,
        &REQUEST_ID.to_owned(),
    ] {
        assert!(!text.contains(id.as_str()), "{id} became a label");
    }

    // Every dashboard: the fields Grafana needs, a Prometheus datasource variable, no fixed
    // datasource uid, and only metric names the service exports.
    let families = exposed(&text);
    for (name, board) in dashboards() {
        for field in [
            "title",
            "uid",
            "schemaVersion",
            "panels",
            "templating",
            "time",
        ] {
            assert!(!board[field].is_null(), "{name} has no {field}");
        }
        assert!(board["schemaVersion"].as_i64().unwrap() >= 36, "{name}");
        let vars = board["templating"]["list"].as_array().unwrap();
        assert!(
            vars.iter()
                .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
            "{name} has a Prometheus datasource variable"
        );
        let mut uids = BTreeSet::new();
        for panel in board["panels"].as_array().unwrap() {
            for field in ["id", "type", "title", "gridPos", "targets"] {
                assert!(!panel[field].is_null(), "{name}: a panel without {field}");
            }
            uids.insert(panel["datasource"]["uid"].to_string());
            for t in panel["targets"].as_array().unwrap() {
                uids.insert(t["datasource"]["uid"].to_string());
                assert!(t["refId"].is_string(), "{name}: a target without refId");
            }
        }
        assert_eq!(
            uids,
            BTreeSet::from([json!("${datasource}").to_string()]),
            "{name}: every panel and target uses the variable"
        );
        // An environment variable (the scrape job), and every series of every query in it,
        // so that two deployments scraped by one Prometheus do not mix.
        assert!(
            vars.iter().any(|v| v["name"] == "job"
                && v["type"] == "query"
                && v["query"]["query"] == "label_values(layerline_build_info, job)"),
            "{name} has a job variable"
        );
        let mut used = BTreeSet::new();
        for (title, exprs) in panels(&board) {
            assert!(!exprs.is_empty(), "{name}: {title} has no query");
            for e in &exprs {
                let names = metric_names(e);
                assert!(!names.is_empty(), "{name}: {title}: no metric in {e}");
                let selectors = e.matches("layerline_").count();
                let scoped = e.matches("{job=~\"$job\"").count();
                assert_eq!(
                    selectors, scoped,
                    "{name}: {title}: a series not in $job: {e}"
                );
                used.extend(names);
            }
        }
        let missing: Vec<_> = used.difference(&families).collect();
        assert!(
            missing.is_empty(),
            "{name} uses metrics the service does not export: {missing:?}"
        );
    }
    // And the alert rules.
    let used = metric_names(&alert_rules());
    assert!(used.len() >= 6, "{used:?}");
    let missing: Vec<_> = used.difference(&families).collect();
    assert!(
        missing.is_empty(),
        "alerts.yml uses metrics the service does not export: {missing:?}"
    );
    assert!(server.terminate());
}

/// The text of `dashboards/alerts.yml`.
fn alert_rules() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards/alerts.yml");
    std::fs::read_to_string(path).unwrap()
}

/// The alert rules are valid, and promtool's unit tests of them (`alerts.test.yml`: each
/// alert fires on the series that should raise it, not before its `for`, not on healthy
/// series) pass.
#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    if !have("promtool") {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards");
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
    ] {
        let out = Command::new("promtool")
            .current_dir(&dir)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A Prometheus of its own on a free loopback port, scraping `target` every second.
struct Prometheus {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(dir.path().join("alerts.yml"), alert_rules()).unwrap();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files: ['alerts.yml']\n\
                 scrape_configs:\n  - job_name: layerline\n    static_configs:\n      \
                 - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        let base = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            if let Ok(r) = reqwest::get(format!("{base}/-/ready")).await
                && r.status().is_success()
            {
                break;
            }
            assert!(started.elapsed() < LIMIT, "prometheus did not get ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Prometheus {
            child,
            base,
            _dir: dir,
        }
    }

    /// The instant query's answer: Ok(result) or Err(the error Prometheus gave).
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let res = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", expr)])
            .send()
            .await
            .unwrap();
        let body: Value = res.json().await.unwrap();
        match body["status"].as_str() {
            Some("success") => Ok(body["data"]["result"]
                .as_array()
                .cloned()
                .unwrap_or_default()),
            _ => Err(format!("{}: {}", body["errorType"], body["error"])),
        }
    }

    /// Waits until `expr` returns a series.
    async fn wait_for(&self, expr: &str) -> Vec<Value> {
        let started = Instant::now();
        loop {
            let result = self.query(expr).await.unwrap();
            if !result.is_empty() {
                return result;
            }
            assert!(started.elapsed() < LIMIT, "{expr} returned nothing");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A dashboard expression as Grafana would send it for a short recent range, with the
/// environment variable set to the scrape job of the test's Prometheus.
fn as_sent(expr: &str) -> String {
    expr.replace("$job", "layerline")
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "10m")
}

/// The largest value of an instant query's result.
fn largest(result: &[Value]) -> f64 {
    result
        .iter()
        .filter_map(|s| s["value"][1].as_str()?.parse::<f64>().ok())
        .filter(|v| v.is_finite())
        .fold(f64::NEG_INFINITY, f64::max)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_answers_every_dashboard_expression() {
    if !have("prometheus") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::start().await;
    let server = server(dir.path());
    let target = server
        .metrics
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_owned();
    let prometheus = Prometheus::start(&target).await;
    // Scraped before the workload, so the counters' first samples are their zeros.
    prometheus.wait_for("layerline_build_info").await;
    let done = workload(&server, &reg).await;
    prometheus
        .wait_for(&format!(
            "layerline_prune_bytes_freed_total == {}",
            done.bytes_freed
        ))
        .await;
    prometheus
        .wait_for(r#"layerline_jobs_finished_total{kind="import",outcome="error"} == 1"#)
        .await;

    let mut key = Vec::new();
    for (name, board) in dashboards() {
        for (title, exprs) in panels(&board) {
            for expr in exprs {
                let sent = as_sent(&expr);
                let result = prometheus
                    .query(&sent)
                    .await
                    .unwrap_or_else(|e| panic!("{name}: {title}: {sent}: {e}"));
                if matches!(
                    title.as_str(),
                    "Job throughput" | "Queue depth" | "Bytes freed"
                ) {
                    key.push((title.clone(), sent, result));
                }
            }
        }
    }
    let titles: BTreeSet<_> = key.iter().map(|(t, _, _)| t.as_str()).collect();
    assert_eq!(
        titles,
        BTreeSet::from(["Job throughput", "Queue depth", "Bytes freed"])
    );
    for (title, sent, result) in &key {
        assert!(!result.is_empty(), "{title}: {sent} returned no data");
        match title.as_str() {
            "Job throughput" => assert!(largest(result) > 0.0, "{title}: {result:?}"),
            "Bytes freed" => assert!(
                largest(result) >= done.bytes_freed as f64,
                "{title}: {result:?} (freed {})",
                done.bytes_freed
            ),
            _ => {}
        }
    }

    // The alert rules, evaluated by this Prometheus on this service: the failed import raises
    // LayerlineJobsFailing and nothing else fires; every rule evaluates without error.
    prometheus
        .wait_for(r#"ALERTS{alertname="LayerlineJobsFailing",kind="import",alertstate="firing"}"#)
        .await;
    let firing: BTreeSet<String> = prometheus
        .query(r#"ALERTS{alertstate="firing"}"#)
        .await
        .unwrap()
        .iter()
        .map(|a| a["metric"]["alertname"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(firing, BTreeSet::from(["LayerlineJobsFailing".to_owned()]));
    let rules: Value = reqwest::get(format!("{}/api/v1/rules", prometheus.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rules = rules["data"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(rules.len(), 8, "{rules:?}");
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "{rule}");
    }
    assert!(server.terminate());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_and_a_requests_log_lines_are_found_by_their_ids() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::start().await;
    let server = server(dir.path());
    let done = workload(&server, &reg).await;
    assert!(server.terminate());
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    // A line belongs to whatever its spans carry.
    let carrying = |field: &str, value: &str| -> Vec<String> {
        lines
            .iter()
            .filter(|l| {
                l["spans"]
                    .as_array()
                    .is_some_and(|spans| spans.iter().any(|s| s[field] == value))
                    || l["fields"][field] == value
            })
            .map(|l| {
                l["fields"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    };

    let import = carrying("job_id", &done.import_job);
    for message in ["attempt started", "completed"] {
        assert!(
            import.iter().any(|m| m == message),
            "{message} in the import's lines: {import:?}"
        );
    }
    let failed = carrying("job_id", &done.failed_job);
    assert!(
        failed.iter().any(|m| m == "failed"),
        "the failing job's lines: {failed:?}"
    );
    let prune = carrying("job_id", &done.prune_job);
    assert!(prune.iter().any(|m| m == "completed"), "{prune:?}");

    let request = carrying("request_id", REQUEST_ID);
    assert!(
        request.iter().any(|m| m == "answered"),
        "the request's lines: {request:?}"
    );
    // The request that submitted the import names its job: one leads to the other.
    assert!(
        lines.iter().any(|l| {
            l["fields"]["job_id"] == done.import_job.as_str()
                && l["spans"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|s| s["request_id"] == REQUEST_ID))
        }),
        "a line of request {REQUEST_ID} names job {}",
        done.import_job
    );
    assert!(!log.contains(ADMIN), "secrets are never logged");
}
