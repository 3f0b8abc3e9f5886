//! The two backends. The SQL in `sql/` is written once, in the dialect SQLite and
//! PostgreSQL share (`$N` parameters, `ON CONFLICT`, `RETURNING`), and compiled here against
//! each driver; the few statements that differ are the constants at the top of each module.

pub mod sqlite {
    use sqlx::Sqlite as Db;

    use super::super::migrate::{Migration, SQLITE};

    const MIGRATIONS: &[Migration] = SQLITE;
    /// Takes SQLite's write lock at once, so a transaction never has to upgrade a read lock
    /// (which would fail with SQLITE_BUSY instead of waiting).
    const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";
    /// The write lock taken by `BEGIN IMMEDIATE` already serialises migrations.
    const LOCK_MIGRATIONS: Option<&str> = None;
    /// A read transaction: in WAL mode it reads one snapshot from its first read on.
    const BEGIN_SNAPSHOT: &str = "BEGIN";
    /// Nothing to set for a prune snapshot's read.
    const PRUNE_SNAPSHOT_SETTINGS: Option<&str> = None;
    /// A read transaction's snapshot cannot be shared with another connection.
    const EXPORT_SNAPSHOT: Option<&str> = None;

    /// `INSERT … SELECT` from a JSON array bound as `$1` (one object per row, keys named as
    /// the columns).
    fn bulk_insert_sql(table: &str, columns: &str) -> String {
        let values: Vec<String> = columns
            .split(", ")
            .map(|c| format!("value ->> '{c}'"))
            .collect();
        format!(
            "INSERT INTO {table} ({columns}) SELECT {} FROM json_each($1)",
            values.join(", ")
        )
    }

    include!("sql/event_log.rs");
    include!("sql/projection.rs");
    include!("sql/read_model.rs");
    include!("sql/rebuild.rs");
    include!("sql/prune.rs");
}

pub mod postgres {
    use sqlx::Postgres as Db;

    use super::super::migrate::{Migration, POSTGRES};

    const MIGRATIONS: &[Migration] = POSTGRES;
    const BEGIN_WRITE: &str = "BEGIN";
    /// Several processes may start at once; one migrates while the others wait.
    const LOCK_MIGRATIONS: Option<&str> = Some("SELECT pg_advisory_xact_lock(7215081342)");
    /// Every statement of the transaction reads the snapshot its first one saw.
    const BEGIN_SNAPSHOT: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";
    /// The snapshot query's estimated cost is high enough for PostgreSQL to JIT-compile it,
    /// for every page, and the compiling costs more than it saves: on a 10 000-image
    /// namespace, 10 ms of 50 per page of 500 images.
    const PRUNE_SNAPSHOT_SETTINGS: Option<&str> = Some("SET LOCAL jit = off");
    /// Names the transaction's snapshot, for a second connection to read the same one.
    const EXPORT_SNAPSHOT: Option<&str> = Some("SELECT pg_export_snapshot()");

    /// `INSERT … SELECT` from a JSON array bound as `$1`; PostgreSQL maps the keys onto the
    /// table's columns by name.
    fn bulk_insert_sql(table: &str, columns: &str) -> String {
        format!(
            "INSERT INTO {table} ({columns}) SELECT {columns} \
             FROM json_populate_recordset(NULL::{table}, $1::json)"
        )
    }

    include!("sql/event_log.rs");
    include!("sql/projection.rs");
    include!("sql/read_model.rs");
    include!("sql/rebuild.rs");
    include!("sql/prune.rs");
}
