// `rebuild`: drop the read models and replay the whole log into them. The log is folded into
// aggregates in memory (the same `apply` the commands use) and the resulting rows are written
// in bulk, so a rebuild costs a read of the log plus one insert per final row.
// Included by `backend.rs` once per backend.

use std::collections::HashMap;

use crate::domain::Aggregate;
use crate::domain::image::Image;
use crate::domain::job::Job;
use crate::domain::namespace::Namespace;
use crate::domain::policy::PrunePolicy;
use crate::domain::token::Token;
use crate::store::Progress;
use crate::store::rows::{materialize, materialize_policies};

/// Read model tables, children before parents (the order rows are deleted in).
const READ_MODEL_TABLES: [&str; 11] = [
    "DELETE FROM prune_policies",
    "DELETE FROM job_descriptors",
    "DELETE FROM api_tokens",
    "DELETE FROM namespace_blobs",
    "DELETE FROM image_blobs",
    "DELETE FROM manifest_children",
    "DELETE FROM manifest_layers",
    "DELETE FROM manifests",
    "DELETE FROM tags",
    "DELETE FROM images",
    "DELETE FROM namespaces",
];

/// Events read per round trip while replaying.
const REPLAY_PAGE: i64 = 20_000;
/// Rows per bulk insert statement.
const ROWS_PER_INSERT: usize = 5_000;

impl SqlStore {
    pub async fn rebuild(&self, progress: Progress<'_>) -> Result<u64, StoreError> {
        let mut tx = self.write.begin_with(BEGIN_WRITE).await?;
        // Holding the head row keeps appends (and their projections) out until we commit.
        let head: i64 = sqlx::query_scalar(
            "UPDATE event_log_head SET position = position WHERE id = 1 RETURNING position",
        )
        .fetch_one(&mut *tx)
        .await?;
        for delete in READ_MODEL_TABLES {
            sqlx::query(delete).execute(&mut *tx).await?;
        }

        let mut namespaces: HashMap<String, Namespace> = HashMap::new();
        let mut images: HashMap<String, Image> = HashMap::new();
        let mut tokens: HashMap<String, Token> = HashMap::new();
        let mut jobs: HashMap<String, Job> = HashMap::new();
        let mut policies: HashMap<String, PrunePolicy> = HashMap::new();
        let (mut after, mut replayed) = (0_i64, 0_u64);
        loop {
            let page = read_page(&mut *tx, after, REPLAY_PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.try_get("position")?;
            for row in &page {
                let e = recorded(row)?;
                let stream = e.stream_id.as_str();
                if stream.starts_with(streams::NAMESPACE) {
                    fold(&mut namespaces, &e);
                } else if stream.starts_with(streams::IMAGE) {
                    fold(&mut images, &e);
                } else if stream.starts_with(streams::JOB) {
                    fold(&mut jobs, &e);
                } else if stream.starts_with(streams::TOKEN) {
                    fold(&mut tokens, &e);
                } else if stream.starts_with(streams::POLICY) {
                    fold(&mut policies, &e);
                }
                replayed += 1;
            }
            progress(replayed, head as u64);
        }

        let mut rows = materialize(
            namespaces.values(),
            images.values(),
            tokens.values(),
            jobs.values(),
        );
        rows.prune_policies = materialize_policies(policies.values(), jobs.values());
        insert_rows(&mut tx, &rows).await?;
        tx.commit().await?;
        Ok(replayed)
    }
}

impl SqlStore {
    /// Appends whole new streams in bulk, without projecting them (benchmarks seed the read
    /// models with `bulk_load` from the same aggregates).
    pub async fn bulk_load_events(
        &self,
        streams: &[(String, Vec<DomainEvent>)],
    ) -> Result<(), StoreError> {
        #[derive(serde::Serialize)]
        struct EventRow<'a> {
            position: i64,
            stream_id: &'a str,
            stream_version: i64,
            event_type: &'static str,
            schema_version: i32,
            payload: String,
            metadata: &'static str,
            recorded_at: &'a str,
        }
        #[derive(serde::Serialize)]
        struct StreamRow<'a> {
            stream_id: &'a str,
            version: i64,
        }
        let total: i64 = streams.iter().map(|(_, e)| e.len() as i64).sum();
        let at = format_time(chrono::Utc::now());
        let mut tx = self.write.begin_with(BEGIN_WRITE).await?;
        let last: i64 = sqlx::query_scalar(
            "UPDATE event_log_head SET position = position + $1 WHERE id = 1 RETURNING position",
        )
        .bind(total)
        .fetch_one(&mut *tx)
        .await?;
        let mut position = last - total;
        let mut rows = Vec::with_capacity(ROWS_PER_INSERT);
        let events_sql = bulk_insert_sql(
            "events",
            "position, stream_id, stream_version, event_type, schema_version, payload, \
             metadata, recorded_at",
        );
        for (stream_id, events) in streams {
            for (i, event) in events.iter().enumerate() {
                position += 1;
                rows.push(EventRow {
                    position,
                    stream_id,
                    stream_version: i as i64 + 1,
                    event_type: event.event_type(),
                    schema_version: event.schema_version(),
                    payload: event.payload(),
                    metadata: "{}",
                    recorded_at: &at,
                });
                if rows.len() == ROWS_PER_INSERT {
                    let json = serde_json::to_string(&rows).expect("rows serialise");
                    sqlx::query(sqlx::AssertSqlSafe(events_sql.clone()))
                        .bind(json)
                        .execute(&mut *tx)
                        .await?;
                    rows.clear();
                }
            }
        }
        if !rows.is_empty() {
            let json = serde_json::to_string(&rows).expect("rows serialise");
            sqlx::query(sqlx::AssertSqlSafe(events_sql))
                .bind(json)
                .execute(&mut *tx)
                .await?;
        }
        let versions: Vec<StreamRow> = streams
            .iter()
            .map(|(stream_id, events)| StreamRow {
                stream_id,
                version: events.len() as i64,
            })
            .collect();
        let sql = bulk_insert_sql("event_streams", "stream_id, version");
        for chunk in versions.chunks(ROWS_PER_INSERT) {
            let json = serde_json::to_string(chunk).expect("rows serialise");
            sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(json)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn bulk_load(&self, rows: &ReadModelRows) -> Result<(), StoreError> {
        let mut tx = self.write.begin_with(BEGIN_WRITE).await?;
        let tables = insert_rows(&mut tx, rows).await?;
        tx.commit().await?;
        // Planner statistics of the loaded tables, as a database in steady state has them
        // (PostgreSQL's autovacuum would gather them some time after a bulk load). Only
        // these: on SQLite, analysing an empty queue table would drop the statistics its
        // migration gives it.
        for table in tables {
            sqlx::query(sqlx::AssertSqlSafe(format!("ANALYZE {table}")))
                .execute(&self.write)
                .await?;
        }
        Ok(())
    }
}

/// Folds a recorded event into the aggregate of its stream.
fn fold<A: Aggregate>(aggregates: &mut HashMap<String, A>, e: &RecordedEvent) {
    aggregates
        .entry(e.stream_id.clone())
        .or_default()
        .apply(&e.event, &e.recorded_at, e.position);
}

/// Writes `rows` into the read-model tables; returns the tables it wrote.
async fn insert_rows(
    conn: &mut Conn,
    rows: &ReadModelRows,
) -> Result<Vec<&'static str>, StoreError> {
    Ok(vec![
        bulk_insert(conn, "namespaces", NAMESPACE_COLUMNS, &rows.namespaces).await?,
        bulk_insert(conn, "images", IMAGE_COLUMNS, &rows.images).await?,
        bulk_insert(conn, "tags", TAG_COLUMNS, &rows.tags).await?,
        bulk_insert(conn, "manifests", MANIFEST_COLUMNS, &rows.manifests).await?,
        bulk_insert(
            conn,
            "manifest_layers",
            MANIFEST_LAYER_COLUMNS,
            &rows.manifest_layers,
        )
        .await?,
        bulk_insert(
            conn,
            "manifest_children",
            MANIFEST_CHILD_COLUMNS,
            &rows.manifest_children,
        )
        .await?,
        bulk_insert(conn, "image_blobs", IMAGE_BLOB_COLUMNS, &rows.image_blobs).await?,
        bulk_insert(
            conn,
            "namespace_blobs",
            NAMESPACE_BLOB_COLUMNS,
            &rows.namespace_blobs,
        )
        .await?,
        bulk_insert(conn, "api_tokens", API_TOKEN_COLUMNS, &rows.api_tokens).await?,
        bulk_insert(
            conn,
            "job_descriptors",
            JOB_DESCRIPTOR_COLUMNS,
            &rows.job_descriptors,
        )
        .await?,
        bulk_insert(conn, "prune_policies", POLICY_COLUMNS, &rows.prune_policies).await?,
    ])
}

/// Inserts `rows` into `table`, [`ROWS_PER_INSERT`] at a time, each batch sent as one JSON
/// array that the database unpacks itself ([`bulk_insert_sql`]): one bound parameter per
/// batch instead of one per value. `table` and `columns` are constants of this module.
/// Returns `table`.
async fn bulk_insert<T: serde::Serialize>(
    conn: &mut Conn,
    table: &'static str,
    columns: &'static str,
    rows: &[T],
) -> Result<&'static str, StoreError> {
    let sql = bulk_insert_sql(table, columns);
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let json = serde_json::to_string(chunk).expect("rows serialise");
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(json)
            .execute(&mut *conn)
            .await?;
    }
    Ok(table)
}
