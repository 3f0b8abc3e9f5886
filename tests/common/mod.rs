//! Test support: a fresh database per test on either backend.
//!
//! PostgreSQL tests connect to `LAYERLINE_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`), create a database of their own and drop it
//! when done. When PostgreSQL is unreachable they are skipped with a message, except under
//! `CI=true` or `LAYERLINE_REQUIRE_POSTGRES=1`, where that is a failure.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use layerline_core::store::{Backend, Store};
use sqlx::Connection;

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
    _dir: Option<tempfile::TempDir>,
    pg_name: Option<String>,
}

impl TestDb {
    /// A new empty database, or `None` when PostgreSQL is not available and not required.
    pub async fn new(backend: Backend) -> Option<TestDb> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("test.db").display());
                Some(TestDb {
                    url,
                    backend,
                    _dir: Some(dir),
                    pg_name: None,
                })
            }
            Backend::Postgres => {
                let admin = admin_url();
                let mut conn = match sqlx::PgConnection::connect(&admin).await {
                    Ok(c) => c,
                    Err(e) if !postgres_required() => {
                        eprintln!("SKIPPED: PostgreSQL unavailable at {admin}: {e}");
                        return None;
                    }
                    Err(e) => panic!("PostgreSQL is required (CI) but unavailable at {admin}: {e}"),
                };
                let name = format!("layerline_test_{}", uuid::Uuid::new_v4().simple());
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                let base = admin.rsplit_once('/').expect("URL with a database").0;
                Some(TestDb {
                    url: format!("{base}/{name}"),
                    backend,
                    _dir: None,
                    pg_name: Some(name),
                })
            }
        }
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
        let Some(name) = self.pg_name.take() else {
            return;
        };
        // Drop may run inside a runtime (or while panicking): use a thread with its own.
        let admin = admin_url();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

/// `sha256:` digest number `n`, for fixtures.
pub fn digest(n: u64) -> String {
    format!("sha256:{n:064x}")
}

/// A running `layerline serve` and the address it announced.
pub struct Server {
    child: Child,
    pub base: String,
    pub metrics: String,
}

impl Server {
    pub fn start(dir: &Path, args: &[&str]) -> Server {
        Server::start_with_env(dir, args, &[])
    }

    pub fn start_with_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_logging_to(dir, args, env, Stdio::inherit())
    }

    /// Starts the server with its log (stderr) going to `log`.
    pub fn start_logging_to(dir: &Path, args: &[&str], env: &[(&str, &str)], log: Stdio) -> Server {
        let mut child = Command::new(BIN)
            .current_dir(dir)
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("LAYERLINE_DATABASE_URL")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start layerline");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                for prefix in ["listening on ", "metrics on "] {
                    if let Some(url) = line.strip_prefix(prefix) {
                        let _ = tx.send(url.to_owned());
                    }
                }
            }
        });
        let announced = || {
            rx.recv_timeout(Duration::from_secs(30))
                .expect("the server announced its addresses")
        };
        let base = announced();
        let metrics = announced();
        Server {
            child,
            base,
            metrics,
        }
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
