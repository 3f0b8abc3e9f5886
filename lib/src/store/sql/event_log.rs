// The event log: append with optimistic concurrency, stream and global reads, migrations.
// Included by `backend.rs` once per backend, with `Db` naming the driver.

use sqlx::{Pool, QueryBuilder, Row};

use crate::domain::{DomainEvent, format_time};
use crate::store::{Appended, Expected, Metadata, RecordedEvent, StoreError};

type Conn = <Db as sqlx::Database>::Connection;
type DbRow = <Db as sqlx::Database>::Row;

/// Columns of `events` read back as a [`RecordedEvent`].
const EVENT_COLUMNS: &str = "position, stream_id, stream_version, event_type, schema_version, payload, metadata, recorded_at";

/// One statement can carry at most this many events (8 parameters each stays below both
/// backends' parameter limits).
const EVENTS_PER_INSERT: usize = 1000;

/// The log and its read models on one database.
#[derive(Clone, Debug)]
pub struct SqlStore {
    pub(crate) pool: Pool<Db>,
}

impl SqlStore {
    pub fn new(pool: Pool<Db>) -> Self {
        SqlStore { pool }
    }

    /// The connection pool, shared with the job queue's storage.
    pub fn pool(&self) -> &Pool<Db> {
        &self.pool
    }

    pub async fn migrate(&self) -> Result<Vec<i64>, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        if let Some(lock) = LOCK_MIGRATIONS {
            sqlx::query(lock).execute(&mut *tx).await?;
        }
        sqlx::query(crate::store::migrate::TABLE_DDL)
            .execute(&mut *tx)
            .await?;
        let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM layerline_migrations")
            .fetch_all(&mut *tx)
            .await?;
        let mut done = Vec::new();
        for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
            sqlx::raw_sql(m.sql).execute(&mut *tx).await?;
            sqlx::query(
                "INSERT INTO layerline_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
            )
            .bind(m.version)
            .bind(m.name)
            .bind(format_time(chrono::Utc::now()))
            .execute(&mut *tx)
            .await?;
            done.push(m.version);
        }
        tx.commit().await?;
        Ok(done)
    }

    pub async fn ready(&self) -> Result<bool, StoreError> {
        let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM layerline_migrations")
            .fetch_one(&self.pool)
            .await?;
        Ok(applied == MIGRATIONS.len() as i64)
    }

    pub async fn append(
        &self,
        stream_id: &str,
        expected: Expected,
        events: &[DomainEvent],
        metadata: &Metadata,
    ) -> Result<Appended, StoreError> {
        if events.is_empty() {
            let version = match expected {
                Expected::Version(v) => v,
                Expected::Any => 0,
            };
            return Ok(Appended {
                first_position: 0,
                last_position: 0,
                stream_version: version,
            });
        }
        let count = events.len() as i64;
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        // The head row stays locked until commit: appends commit in position order.
        let last: i64 = sqlx::query_scalar(
            "UPDATE event_log_head SET position = position + $1 WHERE id = 1 RETURNING position",
        )
        .bind(count)
        .fetch_one(&mut *tx)
        .await?;
        let first = last - count + 1;
        let base = claim_versions(&mut tx, stream_id, expected, count).await?;

        let at = format_time(chrono::Utc::now());
        project_batch(&mut tx, stream_id, base, first, events, &at).await?;

        let metadata = serde_json::to_string(metadata).expect("metadata serialises");
        for (chunk_index, chunk) in events.chunks(EVENTS_PER_INSERT).enumerate() {
            let offset = (chunk_index * EVENTS_PER_INSERT) as i64;
            let mut insert = QueryBuilder::<Db>::new(
                "INSERT INTO events (position, stream_id, stream_version, event_type, \
                 schema_version, payload, metadata, recorded_at) ",
            );
            insert.push_values(chunk.iter().enumerate(), |mut row, (i, event)| {
                let n = offset + i as i64;
                row.push_bind(first + n)
                    .push_bind(stream_id.to_owned())
                    .push_bind(base + n + 1)
                    .push_bind(event.event_type())
                    .push_bind(event.schema_version())
                    .push_bind(event.payload())
                    .push_bind(metadata.clone())
                    .push_bind(at.clone());
            });
            insert.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        crate::metric::appended(events.iter().map(DomainEvent::event_type), last);
        Ok(Appended {
            first_position: first,
            last_position: last,
            stream_version: base + count,
        })
    }

    pub async fn read_stream(&self, stream_id: &str) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = $1 ORDER BY stream_version"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(stream_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(recorded).collect()
    }

    pub async fn read_all(&self, after: i64, limit: i64) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = read_page(&self.pool, after, limit).await?;
        rows.iter().map(recorded).collect()
    }

    pub async fn head(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT position FROM event_log_head WHERE id = 1")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub async fn insert_raw_event(
        &self,
        stream_id: &str,
        event_type: &str,
        schema_version: i32,
        payload: &str,
    ) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let position: i64 = sqlx::query_scalar(
            "UPDATE event_log_head SET position = position + 1 WHERE id = 1 RETURNING position",
        )
        .fetch_one(&mut *tx)
        .await?;
        let version = claim_versions(&mut tx, stream_id, Expected::Any, 1).await? + 1;
        sqlx::query(
            "INSERT INTO events (position, stream_id, stream_version, event_type, schema_version, \
             payload, metadata, recorded_at) VALUES ($1, $2, $3, $4, $5, $6, '{}', $7)",
        )
        .bind(position)
        .bind(stream_id)
        .bind(version)
        .bind(event_type)
        .bind(schema_version)
        .bind(payload)
        .bind(format_time(chrono::Utc::now()))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(position)
    }
}

/// Moves the stream from its expected version to `expected + count` and returns the version
/// it was at. Concurrent appends to one stream queue on the stream row; all but one then find
/// the version moved and fail with a conflict.
async fn claim_versions(
    conn: &mut Conn,
    stream_id: &str,
    expected: Expected,
    count: i64,
) -> Result<i64, StoreError> {
    let claimed = match expected {
        Expected::Any => {
            let version: i64 = sqlx::query_scalar(
                "INSERT INTO event_streams (stream_id, version) VALUES ($1, $2) \
                 ON CONFLICT (stream_id) DO UPDATE SET version = event_streams.version + $2 \
                 RETURNING version",
            )
            .bind(stream_id)
            .bind(count)
            .fetch_one(&mut *conn)
            .await?;
            return Ok(version - count);
        }
        Expected::Version(0) => sqlx::query(
            "INSERT INTO event_streams (stream_id, version) VALUES ($1, $2) \
             ON CONFLICT (stream_id) DO NOTHING",
        )
        .bind(stream_id)
        .bind(count)
        .execute(&mut *conn)
        .await?
        .rows_affected(),
        Expected::Version(v) => sqlx::query(
            "UPDATE event_streams SET version = $1 WHERE stream_id = $2 AND version = $3",
        )
        .bind(v + count)
        .bind(stream_id)
        .bind(v)
        .execute(&mut *conn)
        .await?
        .rows_affected(),
    };
    let Expected::Version(expected) = expected else {
        unreachable!("Any returned above")
    };
    if claimed == 1 {
        return Ok(expected);
    }
    let actual: Option<i64> =
        sqlx::query_scalar("SELECT version FROM event_streams WHERE stream_id = $1")
            .bind(stream_id)
            .fetch_optional(&mut *conn)
            .await?;
    Err(StoreError::Conflict {
        stream_id: stream_id.to_owned(),
        expected,
        actual: actual.unwrap_or(0),
    })
}

async fn read_page<'c, E>(executor: E, after: i64, limit: i64) -> Result<Vec<DbRow>, StoreError>
where
    E: sqlx::Executor<'c, Database = Db>,
{
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2"
    );
    Ok(sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(after)
        .bind(limit)
        .fetch_all(executor)
        .await?)
}

fn recorded(row: &DbRow) -> Result<RecordedEvent, StoreError> {
    let position: i64 = row.try_get("position")?;
    let stream_id: String = row.try_get("stream_id")?;
    let event_type: String = row.try_get("event_type")?;
    let schema_version: i32 = row.try_get("schema_version")?;
    let payload: String = row.try_get("payload")?;
    let event = DomainEvent::decode(&event_type, schema_version, &payload, &stream_id)
        .map_err(|source| StoreError::Decode { position, source })?;
    Ok(RecordedEvent {
        position,
        stream_version: row.try_get("stream_version")?,
        stream_id,
        stored_schema_version: schema_version,
        event,
        metadata: row.try_get("metadata")?,
        recorded_at: row.try_get("recorded_at")?,
    })
}
