// The event log: append with optimistic concurrency, stream and global reads, migrations.
// Included by `backend.rs` once per backend, with `Db` naming the driver.

use std::collections::HashSet;
use std::sync::Arc;

use sqlx::pool::PoolConnection;
use sqlx::{Connection, Pool, QueryBuilder, Row};
use tokio::sync::oneshot;

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
    /// Reads (and on PostgreSQL, everything).
    pub(crate) pool: Pool<Db>,
    /// Writes: see [`SqlStore::write_pool`].
    pub(crate) write: Pool<Db>,
    batcher: Arc<Batcher>,
}

impl SqlStore {
    pub fn new(pool: Pool<Db>, write: Pool<Db>) -> Self {
        SqlStore {
            pool,
            write,
            batcher: Arc::default(),
        }
    }

    /// The connection pool for reads.
    pub fn pool(&self) -> &Pool<Db> {
        &self.pool
    }

    /// The connections writes go through, shared with the job queue's storage (whose
    /// fetches and acknowledgements are writes). On SQLite that is one connection: SQLite
    /// lets one writer in at a time, and a writer on another connection that finds the lock
    /// taken sleeps in SQLite's busy handler (1 ms, then longer), where here it waits its turn
    /// in the pool and is woken when the connection is handed back. On PostgreSQL it is the
    /// pool itself.
    pub fn write_pool(&self) -> &Pool<Db> {
        &self.write
    }

    pub async fn migrate(&self) -> Result<Vec<i64>, StoreError> {
        let mut tx = self.write.begin_with(BEGIN_WRITE).await?;
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

    /// Closes the pool, once the appends under way are written.
    pub async fn close(&self) {
        *self.batcher.writer.lock().await = None;
        self.write.close().await;
        self.pool.close().await;
    }

    pub async fn ready(&self) -> Result<bool, StoreError> {
        let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM layerline_migrations")
            .fetch_one(&self.pool)
            .await?;
        Ok(applied == MIGRATIONS.len() as i64)
    }

    /// Appends `events` to `stream_id`. Appends arriving while another is being written are
    /// grouped and written together in the next transaction (see [`Batcher`]); each keeps its
    /// own version check and its own outcome.
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
                recorded_at: String::new(),
            });
        }
        let (reply, outcome) = oneshot::channel();
        let request = Request {
            stream_id: stream_id.to_owned(),
            expected,
            events: events.to_vec(),
            metadata: serde_json::to_string(metadata).expect("metadata serialises"),
            reply,
        };
        self.batcher
            .waiting
            .lock()
            .expect("never poisoned")
            .push(request);
        // Written by a task of its own, so that a caller cancelled meanwhile (a client went
        // away) neither strands its append nor the others in its group.
        tokio::spawn(drive(self.batcher.clone(), self.write.clone()));
        outcome.await.unwrap_or_else(|_| Err(lost()))
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
        let mut tx = self.write.begin_with(BEGIN_WRITE).await?;
        // Stream row first, then the head: the order every append takes its locks in.
        let version = claim_versions(&mut tx, stream_id, Expected::Any, 1).await? + 1;
        let position: i64 = sqlx::query_scalar(
            "UPDATE event_log_head SET position = position + 1 WHERE id = 1 RETURNING position",
        )
        .fetch_one(&mut *tx)
        .await?;
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

/// Appends grouped into one transaction at most (events across the group).
const BATCH_EVENTS: usize = 10_000;

/// Group commit. Every append locks the log head from its position claim to its commit
/// (so commits happen in position order), which makes the commit — a disk flush on
/// PostgreSQL — the log's bottleneck when appends are written one by one. Instead, appends
/// wait here while a transaction is being written, and the next transaction writes all that
/// gathered: one head claim, one events insert and one flush for the group, while each
/// append keeps its own stream-version check, projections and outcome.
#[derive(Debug, Default)]
struct Batcher {
    waiting: std::sync::Mutex<Vec<Request>>,
    /// Held while a group is written: one at a time per process, on a connection of the
    /// write pool, taken when missing and dropped after an error; kept between groups unless
    /// it is the pool's only one (SQLite's), which others need between groups.
    writer: Arc<tokio::sync::Mutex<Writer>>,
}

impl Batcher {
    /// The waiting appends, oldest first, up to [`BATCH_EVENTS`] events (at least one) and
    /// up to the first that names a stream already in the group: a group touches each
    /// stream once, so its version checks are independent of one another.
    fn take(&self) -> Vec<Request> {
        let mut waiting = self.waiting.lock().expect("never poisoned");
        let mut events = 0;
        let mut streams = HashSet::new();
        let n = waiting
            .iter()
            .take_while(|r| {
                let fits = events == 0 || events + r.events.len() <= BATCH_EVENTS;
                events += r.events.len();
                fits && streams.insert(r.stream_id.as_str())
            })
            .count();
        waiting.drain(..n).collect()
    }
}

/// One append waiting for the writer.
#[derive(Debug)]
struct Request {
    stream_id: String,
    expected: Expected,
    events: Vec<DomainEvent>,
    metadata: String,
    reply: oneshot::Sender<Result<Appended, StoreError>>,
}

/// How writing a group failed.
enum Failed {
    /// Nothing was committed: each append may be tried on its own.
    Before(StoreError),
    /// The commit itself failed: whether it took effect is unknown.
    AtCommit(StoreError),
}

impl From<sqlx::Error> for Failed {
    fn from(err: sqlx::Error) -> Self {
        Failed::Before(err.into())
    }
}

/// The answer for an append whose writer went away without answering.
fn lost() -> StoreError {
    StoreError::Database(sqlx::Error::Io(std::io::Error::other(
        "the append's writer stopped before answering; whether it was written is unknown",
    )))
}

/// Spawned for every append once it is queued: waits for the writer, then writes groups
/// until nothing waits. Whichever task holds the writer when an append is queued, or the
/// append's own task after it, writes it.
async fn drive(batcher: Arc<Batcher>, pool: Pool<Db>) {
    let mut writer = batcher.writer.clone().lock_owned().await;
    loop {
        let batch = batcher.take();
        if batch.is_empty() {
            return;
        }
        write_batch(&pool, batch, &mut writer).await;
        if pool.options().get_max_connections() == 1 {
            *writer = None;
        }
    }
}

/// Writes `batch` and answers each append in it. Should the group fail before its commit
/// (a read model's rule refused one append, say), each append is written on its own, so
/// one refusal never fails the others.
async fn write_batch(pool: &Pool<Db>, batch: Vec<Request>, writer: &mut Writer) {
    if batch.len() > 1 {
        match write_on(pool, writer, &batch).await {
            Ok(outcomes) => {
                for (request, outcome) in batch.into_iter().zip(outcomes) {
                    let _ = request.reply.send(outcome);
                }
                return;
            }
            Err(Failed::AtCommit(err)) => {
                let message = format!("commit of a group of appends failed: {err}");
                for request in batch {
                    let err = std::io::Error::other(message.clone());
                    let _ = request.reply.send(Err(StoreError::Database(err.into())));
                }
                return;
            }
            Err(Failed::Before(err)) => {
                tracing::debug!(%err, size = batch.len(), "group append refused; one by one");
            }
        }
    }
    for request in batch {
        let outcome = match write_on(pool, writer, std::slice::from_ref(&request)).await {
            Ok(mut outcomes) => outcomes.remove(0),
            Err(Failed::Before(err) | Failed::AtCommit(err)) => Err(err),
        };
        let _ = request.reply.send(outcome);
    }
}

/// The writer's connection.
type Writer = Option<PoolConnection<Db>>;

/// Writes `batch` on the writer's connection; a failed write drops the connection, which may
/// be the reason it failed.
async fn write_on(
    pool: &Pool<Db>,
    writer: &mut Writer,
    batch: &[Request],
) -> Result<Vec<Result<Appended, StoreError>>, Failed> {
    let kept = writer.is_some();
    let conn = match writer {
        Some(conn) => conn,
        None => writer.insert(pool.acquire().await?),
    };
    let written = write_group(conn, batch).await;
    if written.is_err() {
        *writer = None;
    }
    match written {
        // A kept connection the server dropped since its last use (a database restart):
        // nothing of the group was committed, so it is written once more, on a new
        // connection. A refusal, or a failure at commit, is answered as it is.
        Err(Failed::Before(err)) if kept && is_disconnect(&err) => {
            tracing::info!(%err, "the writer's connection was lost; writing on a new one");
            let conn = writer.insert(pool.acquire().await?);
            let written = write_group(conn, batch).await;
            if written.is_err() {
                *writer = None;
            }
            written
        }
        other => other,
    }
}

/// Whether `err` says the connection is gone (closed, reset, or ended by the server), not
/// that the database refused a statement.
fn is_disconnect(err: &StoreError) -> bool {
    match err {
        StoreError::Database(sqlx::Error::Io(_) | sqlx::Error::Protocol(_)) => true,
        // Class 08 (connection exception) and 57P01-57P03 (the server is shutting down or
        // restarting), by SQLSTATE.
        StoreError::Database(sqlx::Error::Database(e)) => e
            .code()
            .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")),
        _ => false,
    }
}

/// One transaction for the group: stream versions claimed, then the head, then projections
/// and events in arrival order, then the descriptor changes of the group's job steps, one
/// statement per kind of step. Consecutive appends that only delete tags and manifests
/// (a prune's images) are projected together, with one set of statements for all of them,
/// before the next append of another kind. An append whose stream moved gets its conflict
/// and writes nothing.
async fn write_group(
    conn: &mut Conn,
    batch: &[Request],
) -> Result<Vec<Result<Appended, StoreError>>, Failed> {
    let mut tx = conn.begin_with(BEGIN_WRITE).await?;
    // Per append: the version it found (its base), or its conflict.
    let mut claims: Vec<Option<Result<i64, StoreError>>> = (0..batch.len()).map(|_| None).collect();
    // In stream order, so that concurrent groups tend to lock streams in one order (should
    // two ever deadlock, PostgreSQL aborts one and its appends are retried one by one).
    // Appends to streams at a known version (most of them) claim theirs in one statement,
    // a round trip per group instead of one per append.
    let mut order: Vec<usize> = (0..batch.len()).collect();
    order.sort_by(|&a, &b| batch[a].stream_id.cmp(&batch[b].stream_id));
    let (known, new): (Vec<usize>, Vec<usize>) = order
        .into_iter()
        .partition(|&i| matches!(batch[i].expected, Expected::Version(v) if v > 0));
    let moves: Vec<(&str, i64, i64)> = known
        .iter()
        .map(|&i| {
            let r = &batch[i];
            let Expected::Version(v) = r.expected else {
                unreachable!("partitioned above")
            };
            (r.stream_id.as_str(), v, r.events.len() as i64)
        })
        .collect();
    let known_claims = claim_known(&mut tx, &moves).await.map_err(Failed::Before)?;
    for (i, claim) in known.into_iter().zip(known_claims) {
        claims[i] = Some(claim);
    }
    for i in new {
        let r = &batch[i];
        match claim_versions(&mut tx, &r.stream_id, r.expected, r.events.len() as i64).await {
            Err(e) if !matches!(e, StoreError::Conflict { .. }) => return Err(Failed::Before(e)),
            claim => claims[i] = Some(claim),
        }
    }

    let total: i64 = batch
        .iter()
        .zip(&claims)
        .filter(|(_, claim)| matches!(claim, Some(Ok(_))))
        .map(|(r, _)| r.events.len() as i64)
        .sum();
    let mut next = 0;
    if total > 0 {
        // The head row stays locked until commit: groups commit in position order.
        let last: i64 = sqlx::query_scalar(
            "UPDATE event_log_head SET position = position + $1 WHERE id = 1 RETURNING position",
        )
        .bind(total)
        .fetch_one(&mut *tx)
        .await?;
        next = last - total + 1;
    }
    let at = format_time(chrono::Utc::now());
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut rows = Vec::with_capacity(total as usize);
    // Descriptor changes of single job events, written after the loop a kind at a time.
    let mut job_updates = Vec::new();
    // Runs of tag and manifest deletions (a prune's images), written together.
    let mut deletions = GroupDeletions::default();
    for (r, claim) in batch.iter().zip(claims) {
        let base = match claim.expect("every append was claimed") {
            Ok(base) => base,
            Err(conflict) => {
                outcomes.push(Err(conflict));
                continue;
            }
        };
        let count = r.events.len() as i64;
        if let Some(update) = deferred_job_update(&r.stream_id, base, &r.events) {
            job_updates.push(update);
        } else if let Some(run) = Deletions::of_append(&r.stream_id, &r.events) {
            deletions.push(run, base + count);
        } else {
            // Whatever the deletions gathered so far touch is written before this append.
            deletions
                .flush(&mut tx, &at)
                .await
                .map_err(Failed::Before)?;
            project_batch(&mut tx, &r.stream_id, base, next, &r.events, &at)
                .await
                .map_err(Failed::Before)?;
        }
        for (n, event) in r.events.iter().enumerate() {
            rows.push((next + n as i64, r, base + n as i64 + 1, event));
        }
        outcomes.push(Ok(Appended {
            first_position: next,
            last_position: next + count - 1,
            stream_version: base + count,
            recorded_at: at.clone(),
        }));
        next += count;
    }
    deletions
        .flush(&mut tx, &at)
        .await
        .map_err(Failed::Before)?;
    job_updates.sort_by_key(|u: &JobUpdate| u.set);
    for run in job_updates.chunk_by(|a, b| a.set == b.set) {
        write_job_updates(&mut tx, &at, run)
            .await
            .map_err(Failed::Before)?;
    }
    for chunk in rows.chunks(EVENTS_PER_INSERT) {
        let mut insert = QueryBuilder::<Db>::new(
            "INSERT INTO events (position, stream_id, stream_version, event_type, \
             schema_version, payload, metadata, recorded_at) ",
        );
        insert.push_values(chunk, |mut row, (position, r, version, event)| {
            row.push_bind(*position)
                .push_bind(r.stream_id.clone())
                .push_bind(*version)
                .push_bind(event.event_type())
                .push_bind(event.schema_version())
                .push_bind(event.payload())
                .push_bind(r.metadata.clone())
                .push_bind(at.clone());
        });
        insert.build().execute(&mut *tx).await?;
    }
    tx.commit().await.map_err(|e| Failed::AtCommit(e.into()))?;
    for (r, outcome) in batch.iter().zip(&outcomes) {
        if let Ok(appended) = outcome {
            crate::metric::appended(
                r.events.iter().map(DomainEvent::event_type),
                appended.last_position,
            );
        }
    }
    Ok(outcomes)
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
    match expected {
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
            Ok(version - count)
        }
        Expected::Version(0) => {
            let created = sqlx::query(
                "INSERT INTO event_streams (stream_id, version) VALUES ($1, $2) \
                 ON CONFLICT (stream_id) DO NOTHING",
            )
            .bind(stream_id)
            .bind(count)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            match created {
                1 => Ok(0),
                _ => Err(conflict(conn, stream_id, 0).await?),
            }
        }
        Expected::Version(v) => claim_known(conn, &[(stream_id, v, count)]).await?.remove(0),
    }
}

/// Claims several appends' versions, each `(stream, expected version, event count)` of a
/// distinct stream, in one statement per [`CLAIMS_PER_STATEMENT`]; per append, the version it
/// found (its expected one) or its conflict.
async fn claim_known(
    conn: &mut Conn,
    appends: &[(&str, i64, i64)],
) -> Result<Vec<Result<i64, StoreError>>, StoreError> {
    let mut moved = HashSet::new();
    for chunk in appends.chunks(CLAIMS_PER_STATEMENT) {
        let mut q = QueryBuilder::<Db>::new("WITH c(stream, expected, next) AS (");
        q.push_values(chunk, |mut row, &(stream_id, expected, count)| {
            row.push_bind(stream_id.to_owned())
                .push_bind(expected)
                .push_bind(expected + count);
        });
        q.push(
            ") UPDATE event_streams SET version = c.next FROM c \
             WHERE event_streams.stream_id = c.stream AND event_streams.version = c.expected \
             RETURNING event_streams.stream_id",
        );
        let ids: Vec<String> = q.build_query_scalar().fetch_all(&mut *conn).await?;
        moved.extend(ids);
    }
    let mut out = Vec::with_capacity(appends.len());
    for &(stream_id, expected, _) in appends {
        out.push(match moved.contains(stream_id) {
            true => Ok(expected),
            false => Err(conflict(conn, stream_id, expected).await?),
        });
    }
    Ok(out)
}

/// Streams whose versions one statement claims at most (3 values each).
const CLAIMS_PER_STATEMENT: usize = 1000;

/// The conflict of an append that expected `stream_id` at version `expected`.
async fn conflict(
    conn: &mut Conn,
    stream_id: &str,
    expected: i64,
) -> Result<StoreError, StoreError> {
    let actual: Option<i64> =
        sqlx::query_scalar("SELECT version FROM event_streams WHERE stream_id = $1")
            .bind(stream_id)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(StoreError::Conflict {
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
