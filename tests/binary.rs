//! The real `layerline` binary, started as a process and spoken to over HTTP.

mod common;

use std::process::Command;

use common::{BIN, Server, TestDb};
use layerline_core::store::Backend;

async fn get(url: &str) -> (u16, serde_json::Value) {
    let response = reqwest::get(url).await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

#[tokio::test]
async fn serve_creates_its_sqlite_database_in_a_fresh_directory_and_becomes_ready() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    assert!(
        dir.path().join("layerline.db").exists(),
        "default database created"
    );
    let (status, body) = get(&format!("{}/readyz", server.base)).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ready")));
    let (status, _) = get(&format!("{}/healthz", server.base)).await;
    assert_eq!(status, 200);
    // Metrics are served on their own listener, not on the API's.
    let scrape = reqwest::get(&server.metrics).await.unwrap();
    assert_eq!(scrape.status().as_u16(), 200);
    let text = scrape.text().await.unwrap();
    // One event: the first admin token this start created.
    assert!(
        text.contains("layerline_event_log_head_position 1"),
        "{text}"
    );
    let on_api = reqwest::get(format!("{}/metrics", server.base))
        .await
        .unwrap();
    assert_eq!(on_api.status().as_u16(), 404);
    assert!(server.terminate(), "clean exit on SIGTERM");
}

/// The first start of a deployment with no token configured creates one admin token and
/// shows its secret once, on stdout and never in the log; the secret works; later starts show
/// none, and the token still works.
#[tokio::test]
async fn a_first_start_creates_an_admin_token_and_shows_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = |dir: &std::path::Path| {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("serve.log"))
            .unwrap();
        std::process::Stdio::from(file)
    };
    let namespaces = |base: &str, secret: &str| {
        let url = format!("{base}/registry/v1/regions/fr-par/namespaces");
        let secret = secret.to_owned();
        async move {
            let res = reqwest::Client::new()
                .get(url)
                .header("X-Auth-Token", secret)
                .send()
                .await
                .unwrap();
            res.status().as_u16()
        }
    };
    let server = Server::start_logging_to(dir.path(), &[], &[], log(dir.path()));
    let secret = server
        .first_token
        .clone()
        .expect("shown at the first start");
    assert_eq!(namespaces(&server.base, &secret).await, 200);
    let other = "6f1c2a3b-4d5e-4f60-8a7b-000000000000";
    assert_eq!(namespaces(&server.base, other).await, 401);
    assert!(server.terminate());

    let again = Server::start_logging_to(dir.path(), &[], &[], log(dir.path()));
    assert_eq!(again.first_token, None, "shown once only");
    assert_eq!(namespaces(&again.base, &secret).await, 200);
    assert!(again.terminate());
    let logged = std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
    assert!(logged.contains("created the first admin token"), "{logged}");
    assert!(!logged.contains(&secret), "the secret is never logged");
    assert!(
        !logged.contains('\x1b'),
        "no colour codes in a log file: {logged}"
    );
}

/// `--version` and the build-info metric name the commit the binary was built from.
#[tokio::test]
async fn the_version_names_its_commit() {
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let head = String::from_utf8(head.stdout).unwrap().trim().to_owned();
    assert_eq!(head.len(), 12, "the tests run in a git checkout");
    let out = Command::new(BIN).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.starts_with(&format!(
            "layerline {} (commit {head}, ",
            env!("CARGO_PKG_VERSION")
        )),
        "{version}"
    );
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let text = reqwest::get(&server.metrics)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let info = text
        .lines()
        .find(|l| l.starts_with("layerline_build_info{"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(info.contains(&format!("commit=\"{head}\"")), "{info}");
    assert!(server.terminate());
}

/// A failure the user can act on is one line naming it, exit code 1, and no backtrace even
/// with `RUST_BACKTRACE=1`.
#[test]
fn a_failure_is_one_line_without_a_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .args(["migrate", "--database-url", "mysql://nobody@127.0.0.1/x"])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(
        stderr.contains("mysql://"),
        "names what was wrong: {stderr}"
    );
    assert!(!stderr.contains("backtrace"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");

    // A PostgreSQL server nobody listens for: the cause, not a pool's timeout.
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .args([
            "migrate",
            "--database-url",
            "postgres://postgres@127.0.0.1:1/x",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("127.0.0.1:1"),
        "names the database: {stderr}"
    );
    assert!(
        stderr.to_lowercase().contains("refused"),
        "says why: {stderr}"
    );
    assert!(!stderr.contains("timed out"), "{stderr}");
}

/// With `LAYERLINE_BOOTSTRAP_TOKEN` set, or a token made before the first start, no first
/// token is made.
#[tokio::test]
async fn no_first_token_when_one_is_configured_or_exists() {
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = [("LAYERLINE_BOOTSTRAP_TOKEN", common::ADMIN)];
    let server = Server::start_with_env(dir.path(), &[], &bootstrap);
    assert_eq!(server.first_token, None);
    assert!(server.terminate());

    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .args([
            "token",
            "create",
            "--name",
            "ci",
            "--capabilities",
            "images-view",
        ])
        .env_remove("LAYERLINE_DATABASE_URL")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let server = Server::start(dir.path(), &[]);
    assert_eq!(server.first_token, None);
    assert!(server.terminate());
}

#[tokio::test]
async fn serve_on_postgres_becomes_ready() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--database-url", &db.url]);
    let (status, body) = get(&format!("{}/readyz", server.base)).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ready")));
    assert!(
        !dir.path().join("layerline.db").exists(),
        "no SQLite file when on PostgreSQL"
    );
    assert!(server.terminate());
}

#[tokio::test]
async fn flags_beat_the_environment_which_beats_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("layerline.toml"),
        "database_url = \"sqlite://from-file.db\"\nmax_connections = 4\n",
    )
    .unwrap();
    // The file alone decides the database.
    let server = Server::start(dir.path(), &["--config", "layerline.toml"]);
    assert!(dir.path().join("from-file.db").exists());
    assert!(server.terminate());
    // A flag beats the file.
    let server = Server::start(
        dir.path(),
        &[
            "--config",
            "layerline.toml",
            "--database-url",
            "sqlite://from-flag.db",
        ],
    );
    assert!(dir.path().join("from-flag.db").exists());
    assert!(server.terminate());
    // The environment beats the file but not the flag.
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .args(["--config", "layerline.toml", "migrate"])
        .env("LAYERLINE_DATABASE_URL", "sqlite://from-env.db")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("from-env.db").exists());
}

#[test]
fn a_bad_config_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.toml"), "databse_url = \"x\"\n").unwrap();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .args(["--config", "bad.toml", "migrate"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.toml") && stderr.contains("databse_url"),
        "{stderr}"
    );
}

#[test]
fn every_command_explains_itself_with_help() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["migrate", "--help"],
        vec!["rebuild", "--help"],
        vec!["bench", "append", "--help"],
        vec!["bench", "jobs", "--help"],
        vec!["jobs", "--help"],
        vec!["jobs", "watch", "--help"],
    ] {
        let out = Command::new(BIN).args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage:"), "{args:?}: {text}");
        assert!(
            text.contains("--database-url"),
            "{args:?} documents the database flag"
        );
    }
    let out = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--metrics-listen",
        "LAYERLINE_LISTEN",
        "127.0.0.1:8080",
    ] {
        assert!(text.contains(flag), "serve --help mentions {flag}");
    }
    let out = Command::new(BIN).args(["jobs", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for word in [
        "--url",
        "--token",
        "LAYERLINE_TOKEN",
        "list",
        "show",
        "watch",
        "cancel",
    ] {
        assert!(text.contains(word), "jobs --help mentions {word}");
    }
}

#[tokio::test]
async fn migrate_then_rebuild_on_a_populated_database() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("r.db").display());
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .args(["--database-url", &url])
            .output()
            .unwrap()
    };
    let out = run(&["migrate"]);
    assert!(out.status.success());
    let all = layerline_core::store::migrate::SQLITE.len();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("applied {all} migration(s)")));
    let out = run(&["migrate"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("applied 0 migration(s)"));

    // Populate through the library, rebuild through the binary, compare.
    let store = layerline_core::store::Store::connect(&url, 2)
        .await
        .unwrap();
    let registry = layerline_core::service::Registry::new(store.clone());
    registry
        .create_namespace(
            layerline_core::domain::event::NamespaceCreated {
                namespace_id: "n1".into(),
                name: "team".into(),
                region: "fr-par".into(),
                description: "d".into(),
                is_public: false,
                organization_id: "o".into(),
                project_id: "p".into(),
            },
            &Default::default(),
        )
        .await
        .unwrap();
    use layerline_core::store::ReadModels;
    let before = store.read_model_rows().await.unwrap();
    store.close().await;
    let out = run(&["rebuild"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("rebuilt read models from 1 events"));
    let store = layerline_core::store::Store::connect(&url, 2)
        .await
        .unwrap();
    assert_eq!(store.read_model_rows().await.unwrap(), before);
}

#[tokio::test]
async fn requests_are_counted_by_route_template_and_logged_with_their_id() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let token = "5b0c3f1e-2a4d-4e6f-8a9b-0c1d2e3f4a5b";
    let server = Server::start_logging_to(
        dir.path(),
        &["--log-format", "json"],
        &[("LAYERLINE_BOOTSTRAP_TOKEN", token)],
        log.into(),
    );
    let client = reqwest::Client::new();
    let id = uuid::Uuid::new_v4();
    let url = format!("{}/registry/v1/regions/fr-par/namespaces/{id}", server.base);
    let resp = client
        .get(&url)
        .header("X-Auth-Token", token)
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    assert_eq!(
        resp.headers()["x-request-id"],
        "trace-me-42",
        "the id comes back"
    );
    let resp = client
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .unwrap();
    assert!(
        resp.headers().contains_key("x-request-id"),
        "an id is made up when none is sent"
    );
    client
        .get(format!("{}/no/such/{id}", server.base))
        .send()
        .await
        .unwrap();

    let text = server.scrape().await;
    let line = |needle: &str| text.lines().any(|l| l.starts_with(needle));
    assert!(
        line(
            r#"layerline_http_requests_total{method="GET",route="/registry/v1/regions/{region}/namespaces/{namespace_id}",status="404"} 1"#
        ),
        "{text}"
    );
    assert!(line(
        r#"layerline_http_requests_total{method="GET",route="/healthz",status="200"}"#
    ));
    assert!(line(
        r#"layerline_http_requests_total{method="GET",route="unmatched",status="404"} 1"#
    ));
    assert!(
        line("layerline_http_request_duration_seconds_bucket{"),
        "a histogram"
    );
    assert!(!text.contains(&id.to_string()), "ids never become labels");
    assert!(server.terminate());

    let log = std::fs::read_to_string(&log_path).unwrap();
    let traced: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v.to_string().contains("trace-me-42"))
        .collect();
    assert!(
        !traced.is_empty(),
        "the request's log lines carry its id: {log}"
    );
    assert!(
        traced.iter().any(|v| v["fields"]["status"] == 404),
        "{traced:?}"
    );
    assert!(!log.contains(token), "secrets are never logged");
}
