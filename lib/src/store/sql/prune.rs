// Prune plans: the snapshot a plan is made from, and the stored plan. Included by
// `backend.rs` once per backend.

use crate::domain::retention::{KeepReason, Reason};
use crate::store::plans::{
    ItemKind, KeptItem, OnPage, PlanHeader, PlanItem, Snapshot, SnapshotImage,
};

const PLAN_ITEM_COLUMNS: &str = "job_id, idx, image_id, image_name, kind, tag, digest, \
    pushed_version, reason, bytes, subject";
const PLAN_ITEM_INSERT_COLUMNS: &str = "job_id, attempt, idx, image_id, image_name, kind, tag, \
    digest, pushed_version, reason, bytes, subject";
const PLAN_KEEP_COLUMNS: &str = "job_id, attempt, idx, image_id, image_name, kind, tag, digest, \
    reason, subject";

/// A page of a namespace's images (`$1`), those not in status `$2` named after `$3`, each
/// with its tags, manifests (with their layers) and index children packed as text: records
/// separated by `,`, fields by a space (neither occurs in a tag name, a digest, a stored time
/// or a number). Tag: `name digest pushed_at pushed_version`; manifest: `digest recorded_at
/// subject` (`-` for none) and, with a config, `config_digest config_size`, then `;` and its
/// `layers_packed` (see
/// [`crate::store::plans::pack_layers`]); child: `parent_digest child_digest`, in list order.
/// `string_agg` and `concat_ws` (which skips NULLs) are PostgreSQL's and, since 3.44,
/// SQLite's.
const SNAPSHOT_SQL: &str = "SELECT i.id, i.name, \
     (SELECT string_agg(concat_ws(' ', t.name, t.digest, t.updated_at, t.pushed_version), ',') \
        FROM tags t WHERE t.image_id = i.id), \
     (SELECT string_agg(concat_ws(' ', m.digest, m.created_at, COALESCE(m.subject, '-'), \
        m.config_digest, m.config_size) \
        || ';' || m.layers_packed, ',') FROM manifests m WHERE m.image_id = i.id), \
     (SELECT string_agg(concat_ws(' ', c.parent_digest, c.child_digest), ',' ORDER BY c.idx) \
        FROM manifest_children c WHERE c.image_id = i.id) \
     FROM images i WHERE i.namespace_id = $1 AND i.status <> $2 AND i.name > $3 \
     ORDER BY i.name LIMIT $4";

/// A row of [`SNAPSHOT_SQL`]: id, name, and the packed tags, manifests, children.
type PackedImage = (
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// The images of a page of [`SNAPSHOT_SQL`] rows (left packed: see [`SnapshotImage`]).
fn snapshot_images(page: Vec<PackedImage>) -> Vec<SnapshotImage> {
    page.into_iter()
        .map(|(id, name, tags, manifests, children)| SnapshotImage {
            id: id.into(),
            name: name.into(),
            tags: tags.unwrap_or_default(),
            manifests: manifests.unwrap_or_default(),
            children: children.unwrap_or_default(),
        })
        .collect()
}

/// Applies [`PRUNE_SNAPSHOT_SETTINGS`] to a snapshot's read transaction.
async fn snapshot_settings(conn: &mut Conn) -> Result<(), sqlx::Error> {
    if let Some(settings) = PRUNE_SNAPSHOT_SETTINGS {
        sqlx::query(settings).execute(conn).await?;
    }
    Ok(())
}

/// The page of [`SNAPSHOT_SQL`] after image name `after`.
async fn snapshot_page(
    conn: &mut Conn,
    namespace_id: &str,
    after: &str,
) -> Result<Vec<PackedImage>, sqlx::Error> {
    sqlx::query_as(SNAPSHOT_SQL)
        .bind(namespace_id)
        .bind(STATUS_DELETING)
        .bind(after)
        .bind(SNAPSHOT_PAGE)
        .fetch_all(conn)
        .await
}

async fn join_page<T>(page: tokio::task::JoinHandle<T>) -> Result<T, StoreError> {
    page.await
        .map_err(|e| StoreError::unreadable(format!("a snapshot page's handler failed: {e}")))
}

/// Images a snapshot reads per query.
const SNAPSHOT_PAGE: i64 = 500;

impl SqlStore {
    /// Reads namespace `namespace_id`'s images (not those being deleted), tags and manifests
    /// in one transaction, with the log position they reflect: read models are written in
    /// the append's own transaction, so the head read with them is their position.
    ///
    /// Each image comes back as one row, its tags, manifests, layers and index children
    /// packed by the database into text (see [`SNAPSHOT_SQL`]): a namespace of a million
    /// tags is ten thousand rows to decode, not four million. Images are read a page at a
    /// time, in name order, so the packed text held at once stays bounded. The images stay
    /// packed until their state is asked for ([`SnapshotImage::state`]). On PostgreSQL a
    /// second connection reads every other page at the same exported snapshot, so the
    /// database's work is spread over two backends (10 000 images: the read 1.80 s → 1.22 s).
    pub async fn prune_snapshot(&self, namespace_id: &str) -> Result<Snapshot, StoreError> {
        let (position, pages) = self
            .prune_snapshot_with(namespace_id, std::sync::Arc::new(|page| page))
            .await?;
        Ok(Snapshot {
            position,
            images: pages.into_iter().flatten().collect(),
        })
    }

    /// As [`Self::prune_snapshot`], handing each page of images to `on_page` as it is read,
    /// on a blocking thread while the database reads the next page; returns the position and
    /// what `on_page` returned, page by page.
    pub async fn prune_snapshot_with<T: Send + 'static>(
        &self,
        namespace_id: &str,
        on_page: OnPage<T>,
    ) -> Result<(i64, Vec<T>), StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_SNAPSHOT).await?;
        snapshot_settings(&mut tx).await?;
        let position: i64 = sqlx::query_scalar("SELECT position FROM event_log_head WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        // Where each page starts: after the last name of the page before it.
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM images WHERE namespace_id = $1 AND status <> $2 ORDER BY name",
        )
        .bind(namespace_id)
        .bind(STATUS_DELETING)
        .fetch_all(&mut *tx)
        .await?;
        let page = SNAPSHOT_PAGE as usize;
        let starts: Vec<&str> = std::iter::once("")
            .chain(
                names
                    .iter()
                    .skip(page - 1)
                    .step_by(page)
                    .map(String::as_str),
            )
            .take(names.len().div_ceil(page).max(1))
            .collect();
        // A second reader of the same snapshot, where the backend can share one and the pool
        // has a connection to spare: the database's half of the read then runs on two cores.
        let mut spare = match EXPORT_SNAPSHOT {
            Some(export) if starts.len() > 1 => self.pool.try_acquire().map(|c| (c, export)),
            _ => None,
        };
        let mut second = None;
        if let Some((conn, export)) = spare.as_mut() {
            let id: String = sqlx::query_scalar(*export).fetch_one(&mut *tx).await?;
            // The id is the server's own; checked anyway, as it is spliced into the SQL
            // (`SET TRANSACTION SNAPSHOT` takes no parameters).
            if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                return Err(StoreError::unreadable(format!("snapshot id {id:?}")));
            }
            let mut tx2 = conn.begin_with(BEGIN_SNAPSHOT).await?;
            let set = format!("SET TRANSACTION SNAPSHOT '{id}'");
            sqlx::raw_sql(sqlx::AssertSqlSafe(set))
                .execute(&mut *tx2)
                .await?;
            snapshot_settings(&mut tx2).await?;
            second = Some(tx2);
        }
        let mut out = Vec::new();
        // Pages in `on_page`'s hands, oldest first; at most one per core while the database
        // reads the next.
        let in_flight = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut handling = std::collections::VecDeque::new();
        let readers = if second.is_some() { 2 } else { 1 };
        for pair in starts.chunks(readers) {
            let pages = match (pair, second.as_mut()) {
                ([a, b], Some(tx2)) => {
                    let (a, b) = tokio::join!(
                        snapshot_page(&mut tx, namespace_id, a),
                        snapshot_page(tx2, namespace_id, b)
                    );
                    vec![a?, b?]
                }
                _ => vec![snapshot_page(&mut tx, namespace_id, pair[0]).await?],
            };
            for page in pages {
                while handling.len() >= in_flight {
                    let oldest = handling.pop_front().expect("not empty");
                    out.push(join_page(oldest).await?);
                }
                let on_page = on_page.clone();
                handling.push_back(tokio::task::spawn_blocking(move || {
                    on_page(snapshot_images(page))
                }));
            }
        }
        for page in handling {
            out.push(join_page(page).await?);
        }
        if let Some(tx2) = second {
            tx2.commit().await?;
        }
        tx.commit().await?;
        Ok((position, out))
    }

    /// Stores job `header.job_id`'s plan, made by attempt `header.attempt`, unless the job
    /// has one; returns whether this call stored it. The items (and what the plan keeps) go
    /// first, a few thousand per transaction, so a large plan never holds the write lock for
    /// long; the summary row goes last and makes them the plan (items of an attempt that
    /// lost the race are deleted).
    pub async fn save_plan<'a, I>(
        &self,
        header: &PlanHeader,
        items: I,
        kept: &[KeptItem],
    ) -> Result<bool, StoreError>
    where
        I: IntoIterator<Item = &'a PlanItem>,
        I::IntoIter: Send,
    {
        if self.plan(&header.job_id).await?.is_some() {
            return Ok(false);
        }
        self.insert_rows(header, "prune_plan_items", PLAN_ITEM_INSERT_COLUMNS, items)
            .await?;
        self.insert_rows(header, "prune_plan_keeps", PLAN_KEEP_COLUMNS, kept)
            .await?;
        let mut tx = self.write.begin_with(BEGIN_WRITE).await?;
        let inserted = sqlx::query(
            "INSERT INTO prune_plans (job_id, position, policy_id, policy_version, attempt, \
             images, tags, manifests, bytes, created_at, kept_tags, kept_manifests) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (job_id) DO NOTHING",
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
        .bind(header.kept_tags)
        .bind(header.kept_manifests)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        if inserted == 0 {
            // Another attempt's plan won: ours is not the plan.
            for table in ["prune_plan_items", "prune_plan_keeps"] {
                let sql = format!("DELETE FROM {table} WHERE job_id = $1 AND attempt = $2");
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(&header.job_id)
                    .bind(header.attempt)
                    .execute(&self.write)
                    .await?;
            }
        }
        Ok(inserted > 0)
    }

    /// Inserts `rows` (serialised, with `header`'s job and attempt) into plan table `table`,
    /// a few thousand per transaction; a row already there stays.
    async fn insert_rows<'a, T, I>(
        &self,
        header: &PlanHeader,
        table: &str,
        columns: &str,
        rows: I,
    ) -> Result<(), StoreError>
    where
        T: serde::Serialize + 'a,
        I: IntoIterator<Item = &'a T>,
        I::IntoIter: Send,
    {
        let sql = format!(
            "{} WHERE TRUE ON CONFLICT (job_id, attempt, idx) DO NOTHING",
            bulk_insert_sql(table, columns)
        );
        let mut rows = rows.into_iter().peekable();
        while rows.peek().is_some() {
            let batch: Vec<serde_json::Value> = rows
                .by_ref()
                .take(ROWS_PER_INSERT)
                .map(|item| {
                    let mut row = serde_json::to_value(item).unwrap_or_default();
                    row["job_id"] = header.job_id.clone().into();
                    row["attempt"] = header.attempt.into();
                    row
                })
                .collect();
            let mut tx = self.write.begin_with(BEGIN_WRITE).await?;
            sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(serde_json::Value::Array(batch).to_string())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        Ok(())
    }

    pub async fn plan(&self, job_id: &str) -> Result<Option<PlanHeader>, StoreError> {
        let row = sqlx::query(
            "SELECT job_id, position, policy_id, policy_version, attempt, images, tags, \
             manifests, bytes, created_at, kept_tags, kept_manifests \
             FROM prune_plans WHERE job_id = $1",
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
            kept_tags: r.try_get("kept_tags")?,
            kept_manifests: r.try_get("kept_manifests")?,
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
        let rows = self
            .plan_rows("prune_plan_items", PLAN_ITEM_COLUMNS, job_id, from, limit)
            .await?;
        let mut image = SharedImage::default();
        rows.iter()
            .map(|r| {
                let (image_id, image_name) = image.of(r)?;
                Ok(PlanItem {
                    idx: r.try_get("idx")?,
                    image_id,
                    image_name,
                    kind: parsed(r, "kind", ItemKind::parse)?,
                    tag: r.try_get("tag")?,
                    digest: r.try_get("digest")?,
                    pushed_version: r.try_get("pushed_version")?,
                    reason: parsed(r, "reason", Reason::parse)?,
                    bytes: r.try_get("bytes")?,
                    subject: r.try_get("subject")?,
                })
            })
            .collect()
    }

    /// Items `from..from + limit` of what job `job_id`'s plan keeps (the attempt its summary
    /// names), in plan order.
    pub async fn plan_keeps(
        &self,
        job_id: &str,
        from: i64,
        limit: i64,
    ) -> Result<Vec<KeptItem>, StoreError> {
        let rows = self
            .plan_rows("prune_plan_keeps", PLAN_KEEP_COLUMNS, job_id, from, limit)
            .await?;
        let mut image = SharedImage::default();
        rows.iter()
            .map(|r| {
                let (image_id, image_name) = image.of(r)?;
                Ok(KeptItem {
                    idx: r.try_get("idx")?,
                    image_id,
                    image_name,
                    kind: parsed(r, "kind", ItemKind::parse)?,
                    tag: r.try_get("tag")?,
                    digest: r.try_get("digest")?,
                    reason: parsed(r, "reason", KeepReason::parse)?,
                    subject: r.try_get("subject")?,
                })
            })
            .collect()
    }

    /// Rows `from..from + limit` of plan table `table` (one of this module's), the attempt
    /// job `job_id`'s summary names, in plan order.
    async fn plan_rows(
        &self,
        table: &str,
        columns: &str,
        job_id: &str,
        from: i64,
        limit: i64,
    ) -> Result<Vec<DbRow>, StoreError> {
        let sql = format!(
            "SELECT {columns} FROM {table} WHERE job_id = $1 \
             AND attempt = (SELECT attempt FROM prune_plans WHERE job_id = $1) \
             AND idx >= $2 ORDER BY idx LIMIT $3"
        );
        Ok(sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(job_id)
            .bind(from)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
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
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// The server's secret key `name` (hex), made from `candidate` by the first caller: every
    /// process of the deployment reads the same one. Kept beside the read models, never in
    /// the log, and untouched by `rebuild`.
    pub async fn server_key(&self, name: &str, candidate: &str) -> Result<String, StoreError> {
        sqlx::query(
            "INSERT INTO server_keys (name, secret, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(candidate)
        .bind(crate::domain::format_time(chrono::Utc::now()))
        .execute(&self.write)
        .await?;
        Ok(
            sqlx::query_scalar("SELECT secret FROM server_keys WHERE name = $1")
                .bind(name)
                .fetch_one(&self.write)
                .await?,
        )
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

/// A plan row's `column`, read by `parse`; a name it does not know is an error naming it.
fn parsed<T>(
    row: &DbRow,
    column: &str,
    parse: fn(&str) -> Option<T>,
) -> Result<T, StoreError> {
    let name: String = row.try_get(column)?;
    parse(&name).ok_or_else(|| StoreError::unreadable(format!("plan {column} {name:?} is unknown")))
}

/// Plan rows come image by image: consecutive rows share their image's id and name.
#[derive(Default)]
struct SharedImage(Option<(std::sync::Arc<str>, std::sync::Arc<str>)>);

impl SharedImage {
    /// The id and name of `row`'s image, shared with the row before when it is the same.
    fn of(
        &mut self,
        row: &DbRow,
    ) -> Result<(std::sync::Arc<str>, std::sync::Arc<str>), StoreError> {
        let (id, name): (&str, &str) = (row.try_get("image_id")?, row.try_get("image_name")?);
        Ok(match &self.0 {
            Some((i, n)) if **i == *id && **n == *name => (i.clone(), n.clone()),
            _ => self.0.insert((id.into(), name.into())).clone(),
        })
    }
}
