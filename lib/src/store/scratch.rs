//! Throwaway databases for tests and benchmarks: a temporary SQLite file, or a database of
//! its own created on a PostgreSQL server (and dropped with [`Scratch::drop_database`]).

use sqlx::Connection;

use super::{Backend, StoreError};

/// A database that exists for one test or benchmark run.
#[derive(Debug)]
pub struct Scratch {
    /// Where to connect.
    pub url: String,
    pub backend: Backend,
    /// PostgreSQL: the server URL it was created from, and its name.
    postgres: Option<(String, String)>,
    /// SQLite: the directory holding the file, removed on drop.
    _dir: Option<tempfile::TempDir>,
}

impl Scratch {
    /// A new empty database next to `server_url`'s: a temporary SQLite file for a `sqlite:`
    /// URL, or `<prefix>_<random>` on the server of a `postgres://` URL. Fails when the
    /// server cannot be reached.
    pub async fn create(server_url: &str, prefix: &str) -> Result<Scratch, StoreError> {
        let backend = Backend::of_url(server_url)?;
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::Builder::new()
                    .prefix(prefix)
                    .tempdir()
                    .map_err(|e| StoreError::Database(sqlx::Error::Io(e)))?;
                Ok(Scratch {
                    url: format!("sqlite://{}", dir.path().join("scratch.db").display()),
                    backend,
                    postgres: None,
                    _dir: Some(dir),
                })
            }
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(server_url).await?;
                let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await?;
                let base = server_url
                    .split('?')
                    .next()
                    .and_then(|u| u.rsplit_once('/'))
                    .map(|(base, _)| base)
                    .ok_or_else(|| StoreError::Url(server_url.to_owned()))?;
                Ok(Scratch {
                    url: format!("{base}/{name}"),
                    backend,
                    postgres: Some((server_url.to_owned(), name)),
                    _dir: None,
                })
            }
        }
    }

    /// Drops a PostgreSQL scratch database, closing its connections (SQLite's goes with the
    /// value). Best effort: a server gone away leaves the database behind.
    pub async fn drop_database(&self) {
        let Some((server_url, name)) = &self.postgres else {
            return;
        };
        if let Ok(mut conn) = sqlx::PgConnection::connect(server_url).await {
            let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await;
        }
    }
}
