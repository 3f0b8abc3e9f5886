// `rebuild`: drop the read models and replay the whole log into them. The log is folded into
// aggregates in memory (the same `apply` the commands use) and the resulting rows are written
// in bulk, so a rebuild costs a read of the log plus one insert per final row.
// Included by `backend.rs` once per backend.

use std::collections::HashMap;

use crate::domain::image::Image;
use crate::domain::namespace::Namespace;
use crate::store::Progress;
use crate::store::rows::materialize;

/// Read model tables, children before parents (the order rows are deleted in).
const READ_MODEL_TABLES: [&str; 8] = [
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
/// Rows per bulk insert statement (at most 14 columns: within both parameter limits).
const ROWS_PER_INSERT: usize = 1_000;

impl SqlStore {
    pub async fn rebuild(&self, progress: Progress<'_>) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
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
        let (mut after, mut replayed) = (0_i64, 0_u64);
        loop {
            let page = read_page(&mut *tx, after, REPLAY_PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.try_get("position")?;
            for row in &page {
                let e = recorded(row)?;
                if e.stream_id.starts_with(streams::NAMESPACE) {
                    namespaces
                        .entry(e.stream_id)
                        .or_default()
                        .apply(&e.event, &e.recorded_at);
                } else if e.stream_id.starts_with(streams::IMAGE) {
                    images
                        .entry(e.stream_id)
                        .or_default()
                        .apply(&e.event, &e.recorded_at);
                }
                replayed += 1;
            }
            progress(replayed, head as u64);
        }

        let rows = materialize(namespaces.values(), images.values());
        insert_rows(&mut tx, &rows).await?;
        tx.commit().await?;
        Ok(replayed)
    }
}

async fn insert_rows(conn: &mut Conn, rows: &ReadModelRows) -> Result<(), StoreError> {
    for chunk in rows.namespaces.chunks(ROWS_PER_INSERT) {
        let mut q = QueryBuilder::<Db>::new(format!("INSERT INTO namespaces ({NAMESPACE_COLUMNS}) "));
        q.push_values(chunk, |mut b, r| {
            b.push_bind(r.id.clone())
                .push_bind(r.name.clone())
                .push_bind(r.region.clone())
                .push_bind(r.description.clone())
                .push_bind(r.organization_id.clone())
                .push_bind(r.project_id.clone())
                .push_bind(r.is_public)
                .push_bind(r.status.clone())
                .push_bind(r.size)
                .push_bind(r.stored_size)
                .push_bind(r.image_count)
                .push_bind(r.created_at.clone())
                .push_bind(r.updated_at.clone())
                .push_bind(r.version);
        });
        q.build().execute(&mut *conn).await?;
    }
    for chunk in rows.images.chunks(ROWS_PER_INSERT) {
        let mut q = QueryBuilder::<Db>::new(format!("INSERT INTO images ({IMAGE_COLUMNS}) "));
        q.push_values(chunk, |mut b, r| {
            b.push_bind(r.id.clone())
                .push_bind(r.namespace_id.clone())
                .push_bind(r.name.clone())
                .push_bind(r.visibility.clone())
                .push_bind(r.status.clone())
                .push_bind(r.size)
                .push_bind(r.created_at.clone())
                .push_bind(r.updated_at.clone())
                .push_bind(r.version);
        });
        q.build().execute(&mut *conn).await?;
    }
    for chunk in rows.tags.chunks(ROWS_PER_INSERT) {
        let mut q = QueryBuilder::<Db>::new(format!("INSERT INTO tags ({TAG_COLUMNS}) "));
        q.push_values(chunk, |mut b, r| {
            b.push_bind(r.id.clone())
                .push_bind(r.image_id.clone())
                .push_bind(r.name.clone())
                .push_bind(r.digest.clone())
                .push_bind(r.created_at.clone())
                .push_bind(r.updated_at.clone())
                .push_bind(r.pushed_version);
        });
        q.build().execute(&mut *conn).await?;
    }
    for chunk in rows.manifests.chunks(ROWS_PER_INSERT) {
        let mut q = QueryBuilder::<Db>::new(
            "INSERT INTO manifests (image_id, digest, media_type, platform, config_digest, \
             config_size, config_media_type, blobs_size, created_at) ",
        );
        q.push_values(chunk, |mut b, r| {
            b.push_bind(r.image_id.clone())
                .push_bind(r.digest.clone())
                .push_bind(r.media_type.clone())
                .push_bind(r.platform.clone())
                .push_bind(r.config_digest.clone())
                .push_bind(r.config_size)
                .push_bind(r.config_media_type.clone())
                .push_bind(r.blobs_size)
                .push_bind(r.created_at.clone());
        });
        q.build().execute(&mut *conn).await?;
    }
    for chunk in rows.manifest_layers.chunks(ROWS_PER_INSERT) {
        let mut q = QueryBuilder::<Db>::new(
            "INSERT INTO manifest_layers (image_id, manifest_digest, idx, digest, size, media_type) ",
        );
        q.push_values(chunk, |mut b, r| {
            b.push_bind(r.image_id.clone())
                .push_bind(r.manifest_digest.clone())
                .push_bind(r.idx)
                .push_bind(r.digest.clone())
                .push_bind(r.size)
                .push_bind(r.media_type.clone());
        });
        q.build().execute(&mut *conn).await?;
    }
    for chunk in rows.manifest_children.chunks(ROWS_PER_INSERT) {
        let mut q = QueryBuilder::<Db>::new(
            "INSERT INTO manifest_children (image_id, parent_digest, idx, child_digest) ",
        );
        q.push_values(chunk, |mut b, r| {
            b.push_bind(r.image_id.clone())
                .push_bind(r.parent_digest.clone())
                .push_bind(r.idx)
                .push_bind(r.child_digest.clone());
        });
        q.build().execute(&mut *conn).await?;
    }
    for chunk in rows.image_blobs.chunks(ROWS_PER_INSERT) {
        let mut q =
            QueryBuilder::<Db>::new("INSERT INTO image_blobs (image_id, digest, size, refs) ");
        q.push_values(chunk, |mut b, r| {
            b.push_bind(r.image_id.clone())
                .push_bind(r.digest.clone())
                .push_bind(r.size)
                .push_bind(r.refs);
        });
        q.build().execute(&mut *conn).await?;
    }
    for chunk in rows.namespace_blobs.chunks(ROWS_PER_INSERT) {
        let mut q = QueryBuilder::<Db>::new(
            "INSERT INTO namespace_blobs (namespace_id, digest, size, refs) ",
        );
        q.push_values(chunk, |mut b, r| {
            b.push_bind(r.namespace_id.clone())
                .push_bind(r.digest.clone())
                .push_bind(r.size)
                .push_bind(r.refs);
        });
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}
