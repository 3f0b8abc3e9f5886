// Prune plans: the snapshot a plan is made from, and the stored plan. Included by
// `backend.rs` once per backend.

use crate::domain::parse_time;
use crate::domain::retention::{ImageState, ManifestState, TagState};
use crate::store::plans::{PlanHeader, PlanItem, Snapshot, SnapshotImage};

const PLAN_ITEM_COLUMNS: &str =
    "job_id, idx, image_id, image_name, kind, tag, digest, pushed_version, reason, bytes";
const PLAN_ITEM_INSERT_COLUMNS: &str = "job_id, attempt, idx, image_id, image_name, kind, tag, \
    digest, pushed_version, reason, bytes";

impl SqlStore {
    /// Reads namespace `namespace_id`'s images (not those being deleted), tags and manifests
    /// in one transaction, with the log position they reflect: read models are written in
    /// the append's own transaction, so the head read with them is their position.
    pub async fn prune_snapshot(&self, namespace_id: &str) -> Result<Snapshot, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_SNAPSHOT).await?;
        let position: i64 = sqlx::query_scalar("SELECT position FROM event_log_head WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        let images = sqlx::query("SELECT id, name, status FROM images WHERE namespace_id = $1")
            .bind(namespace_id)
            .fetch_all(&mut *tx)
            .await?;
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut out = Vec::with_capacity(images.len());
        for r in &images {
            let status: String = r.try_get("status")?;
            if status == STATUS_DELETING {
                continue;
            }
            let id: String = r.try_get("id")?;
            index.insert(id.clone(), out.len());
            out.push(SnapshotImage {
                id,
                name: r.try_get("name")?,
                state: ImageState::default(),
            });
        }
        let time = |t: String| {
            parse_time(&t).ok_or_else(|| {
                StoreError::Database(sqlx::Error::Decode(format!("bad stored time {t}").into()))
            })
        };
        let tags = sqlx::query(
            "SELECT t.image_id, t.name, t.digest, t.updated_at, t.pushed_version FROM tags t \
             JOIN images i ON i.id = t.image_id WHERE i.namespace_id = $1",
        )
        .bind(namespace_id)
        .fetch_all(&mut *tx)
        .await?;
        for r in &tags {
            let image_id: String = r.try_get("image_id")?;
            let Some(&i) = index.get(&image_id) else {
                continue;
            };
            out[i].state.tags.push(TagState {
                name: r.try_get("name")?,
                digest: r.try_get("digest")?,
                pushed_at: time(r.try_get("updated_at")?)?,
                pushed_version: r.try_get("pushed_version")?,
            });
        }
        let manifests = sqlx::query(
            "SELECT m.image_id, m.digest, m.created_at, m.config_digest, m.config_size \
             FROM manifests m JOIN images i ON i.id = m.image_id WHERE i.namespace_id = $1",
        )
        .bind(namespace_id)
        .fetch_all(&mut *tx)
        .await?;
        // (image, digest) → index into that image's manifests.
        let mut at: HashMap<(usize, String), usize> = HashMap::new();
        for r in &manifests {
            let image_id: String = r.try_get("image_id")?;
            let Some(&i) = index.get(&image_id) else {
                continue;
            };
            let digest: String = r.try_get("digest")?;
            let config: Option<String> = r.try_get("config_digest")?;
            let config_size: Option<i64> = r.try_get("config_size")?;
            let blobs = config.into_iter().zip(config_size).collect();
            let list = &mut out[i].state.manifests;
            at.insert((i, digest.clone()), list.len());
            list.push(ManifestState {
                digest,
                recorded_at: time(r.try_get("created_at")?)?,
                children: Vec::new(),
                blobs,
            });
        }
        let layers = sqlx::query(
            "SELECT l.image_id, l.manifest_digest, l.digest, l.size FROM manifest_layers l \
             JOIN images i ON i.id = l.image_id WHERE i.namespace_id = $1",
        )
        .bind(namespace_id)
        .fetch_all(&mut *tx)
        .await?;
        for r in &layers {
            let image_id: String = r.try_get("image_id")?;
            let Some(&i) = index.get(&image_id) else {
                continue;
            };
            if let Some(&m) = at.get(&(i, r.try_get("manifest_digest")?)) {
                let blob = (r.try_get("digest")?, r.try_get("size")?);
                out[i].state.manifests[m].blobs.push(blob);
            }
        }
        let children = sqlx::query(
            "SELECT c.image_id, c.parent_digest, c.child_digest FROM manifest_children c \
             JOIN images i ON i.id = c.image_id WHERE i.namespace_id = $1 ORDER BY c.idx",
        )
        .bind(namespace_id)
        .fetch_all(&mut *tx)
        .await?;
        for r in &children {
            let image_id: String = r.try_get("image_id")?;
            let Some(&i) = index.get(&image_id) else {
                continue;
            };
            if let Some(&m) = at.get(&(i, r.try_get("parent_digest")?)) {
                out[i].state.manifests[m]
                    .children
                    .push(r.try_get("child_digest")?);
            }
        }
        tx.commit().await?;
        Ok(Snapshot {
            position,
            images: out,
        })
    }

    /// Stores job `header.job_id`'s plan, made by attempt `header.attempt`, unless the job
    /// has one; returns whether this call stored it. The items go first, a few thousand per
    /// transaction, so a large plan never holds the write lock for long; the summary row goes
    /// last and makes them the plan (items of an attempt that lost the race are deleted).
    pub async fn save_plan(
        &self,
        header: &PlanHeader,
        items: &[PlanItem],
    ) -> Result<bool, StoreError> {
        if self.plan(&header.job_id).await?.is_some() {
            return Ok(false);
        }
        let sql = format!(
            "{} WHERE TRUE ON CONFLICT (job_id, attempt, idx) DO NOTHING",
            bulk_insert_sql("prune_plan_items", PLAN_ITEM_INSERT_COLUMNS)
        );
        for chunk in items.chunks(ROWS_PER_INSERT) {
            let rows: Vec<serde_json::Value> = chunk
                .iter()
                .map(|item| {
                    let mut row = serde_json::to_value(item).unwrap_or_default();
                    row["job_id"] = header.job_id.clone().into();
                    row["attempt"] = header.attempt.into();
                    row
                })
                .collect();
            let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
            sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(serde_json::Value::Array(rows).to_string())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let inserted = sqlx::query(
            "INSERT INTO prune_plans (job_id, position, policy_id, policy_version, attempt, \
             images, tags, manifests, bytes, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (job_id) DO NOTHING",
        )
        .bind(&header.job_id)
        .bind(header.position)
        .bind(&header.policy_id)
        .bind(header.policy_version)
        .bind(header.attempt)
        .bind(header.images)
        .bind(header.tags)
        .bind(header.manifests)
        .bind(header.bytes)
        .bind(&header.created_at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        if inserted == 0 {
            // Another attempt's plan won: ours is not the plan.
            sqlx::query("DELETE FROM prune_plan_items WHERE job_id = $1 AND attempt = $2")
                .bind(&header.job_id)
                .bind(header.attempt)
                .execute(&self.pool)
                .await?;
        }
        Ok(inserted > 0)
    }

    pub async fn plan(&self, job_id: &str) -> Result<Option<PlanHeader>, StoreError> {
        let row = sqlx::query(
            "SELECT job_id, position, policy_id, policy_version, attempt, images, tags, \
             manifests, bytes, created_at FROM prune_plans WHERE job_id = $1",
        )
        .bind(job_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(PlanHeader {
            job_id: r.try_get("job_id")?,
            position: r.try_get("position")?,
            policy_id: r.try_get("policy_id")?,
            policy_version: r.try_get("policy_version")?,
            attempt: r.try_get("attempt")?,
            images: r.try_get("images")?,
            tags: r.try_get("tags")?,
            manifests: r.try_get("manifests")?,
            bytes: r.try_get("bytes")?,
            created_at: r.try_get("created_at")?,
        }))
    }

    /// Items `from..from + limit` of job `job_id`'s plan (the attempt its summary names), in
    /// plan order.
    pub async fn plan_items(
        &self,
        job_id: &str,
        from: i64,
        limit: i64,
    ) -> Result<Vec<PlanItem>, StoreError> {
        let sql = format!(
            "SELECT {PLAN_ITEM_COLUMNS} FROM prune_plan_items WHERE job_id = $1 \
             AND attempt = (SELECT attempt FROM prune_plans WHERE job_id = $1) \
             AND idx >= $2 ORDER BY idx LIMIT $3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(job_id)
            .bind(from)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(PlanItem {
                    idx: r.try_get("idx")?,
                    image_id: r.try_get("image_id")?,
                    image_name: r.try_get("image_name")?,
                    kind: r.try_get("kind")?,
                    tag: r.try_get("tag")?,
                    digest: r.try_get("digest")?,
                    pushed_version: r.try_get("pushed_version")?,
                    reason: r.try_get("reason")?,
                    bytes: r.try_get("bytes")?,
                })
            })
            .collect()
    }

    /// Whether registry notification event `id` was handled already.
    pub async fn hook_event_seen(&self, id: &str) -> Result<bool, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM hook_events WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
        Ok(n > 0)
    }

    /// Notes registry notification event `id` as handled.
    pub async fn record_hook_event(&self, id: &str, at: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO hook_events (id, received_at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The newest import job into image `image_id` (import inputs start with the image id).
    pub async fn last_import_job(&self, image_id: &str) -> Result<Option<String>, StoreError> {
        let pattern = format!(
            "{{\"image_id\":\"{}\",%",
            image_id
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        Ok(sqlx::query_scalar(
            "SELECT id FROM job_descriptors WHERE kind = 'import' \
             AND input LIKE $1 ESCAPE '\\' ORDER BY created_at DESC, id DESC LIMIT 1",
        )
        .bind(pattern)
        .fetch_optional(&self.pool)
        .await?)
    }
}
