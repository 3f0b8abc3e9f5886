//! Test support: a fresh database per test on either backend.
//!
//! PostgreSQL tests connect to `LAYERLINE_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`), create a database of their own and drop it
//! when done. When PostgreSQL is unreachable they are skipped with a message, except under
//! `CI=true` or `LAYERLINE_REQUIRE_POSTGRES=1`, where that is a failure.
#![allow(dead_code)]

/// Runs each named `async fn(&TestDb)` as a test on SQLite and on PostgreSQL (`sqlite::name`,
/// `postgres::name`).
#[allow(unused_macros)]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
                    super::$name(&db).await;
                }
            )*
        }
        mod postgres {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = TestDb::new(Backend::Postgres).await else { return };
                    super::$name(&db).await;
                }
            )*
        }
    };
}

pub mod registry;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use layerline_core::domain::event::{Blob, ManifestRecorded, NamespaceCreated};
use layerline_core::domain::image::ImageCommand;
use layerline_core::domain::namespace::NamespaceCommand;
use layerline_core::domain::{DomainError, DomainEvent};
use layerline_core::service::{Registry, ServiceError};
use layerline_core::store::scratch::Scratch;
use layerline_core::store::{Backend, Metadata, ReadModels, Store};
use reqwest::Method;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_layerline");

pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub fn admin_url() -> String {
    std::env::var("LAYERLINE_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

fn postgres_required() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| v == "true" || v == "1");
    set("CI") || set("LAYERLINE_REQUIRE_POSTGRES")
}

/// A database that exists for one test. Dropping it removes it.
pub struct TestDb {
    pub url: String,
    pub backend: Backend,
    scratch: Option<Scratch>,
}

impl TestDb {
    /// A new empty database, or `None` when PostgreSQL is not available and not required.
    pub async fn new(backend: Backend) -> Option<TestDb> {
        let server = match backend {
            Backend::Sqlite => "sqlite://unused".to_owned(),
            Backend::Postgres => admin_url(),
        };
        let scratch = match Scratch::create(&server, "layerline_test").await {
            Ok(scratch) => scratch,
            Err(e) if backend == Backend::Postgres && !postgres_required() => {
                eprintln!("SKIPPED: PostgreSQL unavailable at {server}: {e}");
                return None;
            }
            Err(e) => panic!("cannot create a {backend:?} test database at {server}: {e}"),
        };
        Some(TestDb {
            url: scratch.url.clone(),
            backend,
            scratch: Some(scratch),
        })
    }

    /// A migrated store on this database.
    pub async fn store(&self) -> Store {
        let store = Store::connect(&self.url, 16).await.expect("connect");
        store.migrate().await.expect("migrate");
        store
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(scratch) = self.scratch.take() else {
            return;
        };
        if scratch.backend == Backend::Sqlite {
            return;
        }
        // Drop may run inside a runtime (or while panicking): use a thread with its own.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(scratch.drop_database());
        })
        .join();
    }
}

/// `sha256:` digest number `n`, for fixtures.
pub fn digest(n: u64) -> String {
    format!("sha256:{n:064x}")
}

/// The admin token test servers are bootstrapped with (`LAYERLINE_BOOTSTRAP_TOKEN`).
pub const ADMIN: &str = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b";

/// A running `layerline serve` and the address it announced.
pub struct Server {
    child: Child,
    pub base: String,
    pub metrics: String,
    /// The secret of the admin token a first start created and showed, if it did.
    pub first_token: Option<String>,
}

/// How `serve` shows the secret of the first admin token it created.
const FIRST_TOKEN: &str = "    export LAYERLINE_TOKEN=";

impl Server {
    pub fn start(dir: &Path, args: &[&str]) -> Server {
        Server::start_with_env(dir, args, &[])
    }

    pub fn start_with_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_logging_to(dir, args, env, Stdio::inherit())
    }

    /// Serves database `url` with the `ADMIN` token, its log appended to `serve.log` in `dir`
    /// (several processes of one test share it).
    pub fn on_database(url: &str, dir: &Path, args: &[&str]) -> Server {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("serve.log"))
            .expect("log file");
        let mut all = vec!["--database-url", url];
        all.extend_from_slice(args);
        Server::start_logging_to(
            dir,
            &all,
            &[("LAYERLINE_BOOTSTRAP_TOKEN", ADMIN)],
            Stdio::from(log),
        )
    }

    /// Starts the server with its log (stderr) going to `log`.
    pub fn start_logging_to(dir: &Path, args: &[&str], env: &[(&str, &str)], log: Stdio) -> Server {
        let mut child = Command::new(BIN)
            .current_dir(dir)
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("LAYERLINE_DATABASE_URL")
            // The tests' registries are on loopback, which a server reaches only when the
            // operator lists it; a test may set another list.
            .env("LAYERLINE_REGISTRY_ALLOW", "127.0.0.1")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start layerline");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                for prefix in [FIRST_TOKEN, "listening on ", "metrics on "] {
                    if let Some(url) = line.strip_prefix(prefix) {
                        let _ = tx.send((prefix, url.to_owned()));
                    }
                }
            }
        });
        // The API line comes first, unless the process runs no API (`--role worker`); the
        // metrics line always comes, last.
        let (mut base, mut first_token) = (String::new(), None);
        let metrics = loop {
            let (prefix, text) = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("the server announced its addresses");
            match prefix {
                FIRST_TOKEN => first_token = Some(text),
                "listening on " => base = text,
                _ => break text,
            }
        };
        Server {
            child,
            base,
            metrics,
            first_token,
        }
    }

    /// The current Prometheus exposition from the metrics listener.
    pub async fn scrape(&self) -> String {
        reqwest::get(&self.metrics)
            .await
            .expect("scrape")
            .text()
            .await
            .expect("exposition")
    }

    /// Sends SIGTERM and returns whether the process exited successfully within 10 s.
    pub fn terminate(mut self) -> bool {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        for _ in 0..100 {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Fixtures

/// The registry's commands on a test database, with helpers that build fixtures.
pub struct Fixture {
    pub registry: Registry<Store>,
    pub meta: Metadata,
}

impl Fixture {
    pub fn new(store: Store) -> Self {
        Fixture {
            registry: Registry::new(store),
            meta: Metadata {
                actor: Some("test".into()),
                ..Metadata::default()
            },
        }
    }

    pub fn store(&self) -> &Store {
        self.registry.store()
    }

    pub async fn namespace(&self, name: &str) -> String {
        let id = uuid::Uuid::now_v7().to_string();
        self.registry
            .create_namespace(namespace_created(&id, name), &self.meta)
            .await
            .expect("create namespace");
        id
    }

    pub async fn image(&self, namespace_id: &str, name: &str) -> String {
        let id = uuid::Uuid::now_v7().to_string();
        self.image_cmd(
            &id,
            ImageCommand::Create {
                namespace_id: namespace_id.into(),
                name: name.into(),
                visibility: None,
            },
        )
        .await
        .expect("create image");
        id
    }

    pub async fn image_cmd(
        &self,
        id: &str,
        cmd: ImageCommand,
    ) -> Result<Vec<DomainEvent>, ServiceError> {
        self.registry.image(id, cmd, &self.meta).await
    }

    /// Records manifest `n` with a config of 10 bytes (digest 10_000 + n) and `layers`.
    pub async fn manifest(&self, image_id: &str, n: u64, layers: &[(u64, i64)]) {
        self.image_cmd(image_id, ImageCommand::RecordManifest(manifest(n, layers)))
            .await
            .expect("record manifest");
    }

    pub async fn tag(&self, image_id: &str, name: &str, n: u64) {
        self.image_cmd(image_id, push(name, n))
            .await
            .expect("push tag");
    }

    /// Deletes every image of the namespace, then the namespace, as the delete job does
    /// (without its steps).
    pub async fn delete_namespace(&self, id: &str) -> Result<(), ServiceError> {
        for image_id in self
            .store()
            .image_ids(id)
            .await
            .map_err(ServiceError::Store)?
        {
            match self
                .registry
                .image(&image_id, ImageCommand::Delete, &self.meta)
                .await
            {
                Ok(_) | Err(ServiceError::Domain(DomainError::NotFound { .. })) => {}
                Err(e) => return Err(e),
            }
        }
        self.registry
            .namespace(id, NamespaceCommand::Delete, &self.meta)
            .await
            .map(drop)
    }

    pub async fn image_size(&self, id: &str) -> i64 {
        self.store()
            .image(id)
            .await
            .unwrap()
            .expect("image row")
            .size
    }

    pub async fn namespace_row(&self, id: &str) -> layerline_core::store::rows::NamespaceRow {
        self.store()
            .namespace(id)
            .await
            .unwrap()
            .expect("namespace row")
    }

    pub async fn tag_names(&self, image_id: &str) -> Vec<String> {
        let rows = self.store().read_model_rows().await.unwrap();
        let mut names: Vec<String> = rows
            .tags
            .into_iter()
            .filter(|t| t.image_id == image_id)
            .map(|t| t.name)
            .collect();
        names.sort();
        names
    }
}

pub fn namespace_created(id: &str, name: &str) -> NamespaceCreated {
    NamespaceCreated {
        namespace_id: id.into(),
        name: name.into(),
        region: "fr-par".into(),
        description: String::new(),
        is_public: false,
        organization_id: "org".into(),
        project_id: "proj".into(),
    }
}

pub fn blob(n: u64, size: i64) -> Blob {
    Blob {
        digest: digest(n),
        size,
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
    }
}

pub fn manifest(n: u64, layers: &[(u64, i64)]) -> ManifestRecorded {
    ManifestRecorded {
        digest: digest(n),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        platform: None,
        config: Some(Blob {
            digest: digest(10_000 + n),
            size: 10,
            media_type: "application/vnd.oci.image.config.v1+json".into(),
        }),
        layers: layers.iter().map(|(d, s)| blob(*d, *s)).collect(),
        children: vec![],
        created: None,
        subject: None,
        artifact_type: None,
    }
}

pub fn index(n: u64, children: &[u64]) -> ManifestRecorded {
    ManifestRecorded {
        digest: digest(n),
        media_type: "application/vnd.oci.image.index.v1+json".into(),
        platform: None,
        config: None,
        layers: vec![],
        children: children.iter().map(|c| digest(*c)).collect(),
        created: None,
        subject: None,
        artifact_type: None,
    }
}

pub fn push(name: &str, n: u64) -> ImageCommand {
    ImageCommand::PushTag {
        name: name.into(),
        digest: digest(n),
        new_tag_id: uuid::Uuid::new_v4().to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// The HTTP API as the admin sees it

/// A token with `caps` (and `project`) on database `db_url`, made with the real CLI.
pub fn token(db_url: &str, caps: &str, project: Option<&str>) -> String {
    let mut cmd = Command::new(BIN);
    cmd.args(["token", "create", "--name", "t", "--capabilities", caps]);
    cmd.args(["--database-url", db_url]);
    if let Some(p) = project {
        cmd.args(["--project-id", p]);
    }
    let out = cmd.output().expect("run layerline token create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `method url` with the admin token and a JSON body; the status and the JSON answer.
pub async fn call(method: Method, url: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, url)
        .header("X-Auth-Token", ADMIN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.expect("request");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

pub async fn job(server: &Server, id: &str) -> Value {
    let (status, body) = call(Method::GET, &format!("{}/v1/jobs/{id}", server.base), None).await;
    assert_eq!(status, 200, "{body}");
    body["data"].clone()
}

/// Polls job `id` every 100 ms until `done(job)` holds, failing after `limit`.
pub async fn wait_for(
    server: &Server,
    id: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    wait_for_every(server, id, limit, Duration::from_millis(100), done).await
}

/// [`wait_for`], polling every `every`.
pub async fn wait_for_every(
    server: &Server,
    id: &str,
    limit: Duration,
    every: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let j = job(server, id).await;
        if done(&j) {
            return j;
        }
        assert!(
            started.elapsed() < limit,
            "job {id} did not get there in {limit:?}: {j}"
        );
        tokio::time::sleep(every).await;
    }
}

pub fn state(j: &Value) -> &str {
    j["state"]["current"].as_str().unwrap_or_default()
}

/// Asks to cancel job `id`, then waits (at most `limit`) for it to end; returns the job.
pub async fn cancel_and_wait(server: &Server, id: &str, limit: Duration) -> Value {
    let (status, body) = call(
        Method::POST,
        &format!("{}/v1/jobs/{id}/tasks", server.base),
        Some(serde_json::json!({"action": "cancel"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    wait_for(server, id, limit, |j| {
        !matches!(state(j), "running" | "queued")
    })
    .await
}
