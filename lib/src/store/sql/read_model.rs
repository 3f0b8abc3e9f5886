// Reads of the read models. Included by `backend.rs` once per backend.

use crate::store::rows::{
    ApiTokenRow, ImageBlobRow, ImageRow, JobDescriptorRow, ManifestChildRow, ManifestLayerRow,
    ManifestRow, NamespaceBlobRow, NamespaceRow, PolicyRow, ReadModelRows, TagRow,
};

const NAMESPACE_COLUMNS: &str = "id, name, region, description, organization_id, project_id, \
    is_public, status, size, stored_size, image_count, created_at, updated_at, version";
const IMAGE_COLUMNS: &str = "id, namespace_id, region, project_id, organization_id, name, \
    visibility, status, size, created_at, updated_at, version";
const TAG_COLUMNS: &str = "id, image_id, name, digest, created_at, updated_at, pushed_version";
const MANIFEST_COLUMNS: &str = "image_id, digest, media_type, platform, config_digest, \
    config_size, config_media_type, blobs_size, created_at, seq, layers_packed, subject, \
    artifact_type";
const MANIFEST_LAYER_COLUMNS: &str = "image_id, manifest_digest, idx, digest, size, media_type";
const MANIFEST_CHILD_COLUMNS: &str = "image_id, parent_digest, idx, child_digest";
const IMAGE_BLOB_COLUMNS: &str = "image_id, digest, size, refs";
const NAMESPACE_BLOB_COLUMNS: &str = "namespace_id, digest, size, refs";
/// Manifests with their repository's names and project, for listings (add `WHERE`, order).
const MANIFEST_VIEWS: &str = "SELECT m.*, n.name AS ns_name, i.name AS image_name, \
    i.project_id AS image_project FROM manifests m JOIN images i ON i.id = m.image_id \
    JOIN namespaces n ON n.id = i.namespace_id";
const API_TOKEN_COLUMNS: &str = "id, name, secret_hash, capabilities, project_id, created_at";
const JOB_DESCRIPTOR_COLUMNS: &str = "id, kind, state, caption, creator, input, output, \
    attempts, progress_done, progress_total, progress_step, last_error, next_retry_at, \
    cancel_requested, idempotency_key, created_at, started_at, completed_at, updated_at, version, \
    project_id";

const POLICY_COLUMNS: &str = "id, name, namespace_id, body, enabled, schedule, timezone, \
    last_run_job_id, created_at, updated_at, version";

/// A row of [`SqlStore::referrers`]' query: digest, media type, artifact type, how it is
/// attached, the tag that attaches it.
type ReferrerTuple = (String, String, Option<String>, String, Option<String>);

fn policy_row(r: &DbRow) -> Result<PolicyRow, sqlx::Error> {
    Ok(PolicyRow {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        namespace_id: r.try_get("namespace_id")?,
        body: r.try_get("body")?,
        enabled: r.try_get("enabled")?,
        schedule: r.try_get("schedule")?,
        timezone: r.try_get("timezone")?,
        last_run_job_id: r.try_get("last_run_job_id")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        version: r.try_get("version")?,
    })
}

fn namespace_row(r: &DbRow) -> Result<NamespaceRow, sqlx::Error> {
    Ok(NamespaceRow {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        region: r.try_get("region")?,
        description: r.try_get("description")?,
        organization_id: r.try_get("organization_id")?,
        project_id: r.try_get("project_id")?,
        is_public: r.try_get("is_public")?,
        status: r.try_get("status")?,
        size: r.try_get("size")?,
        stored_size: r.try_get("stored_size")?,
        image_count: r.try_get("image_count")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        version: r.try_get("version")?,
    })
}

fn image_row(r: &DbRow) -> Result<ImageRow, sqlx::Error> {
    Ok(ImageRow {
        id: r.try_get("id")?,
        namespace_id: r.try_get("namespace_id")?,
        region: r.try_get("region")?,
        project_id: r.try_get("project_id")?,
        organization_id: r.try_get("organization_id")?,
        name: r.try_get("name")?,
        visibility: r.try_get("visibility")?,
        status: r.try_get("status")?,
        size: r.try_get("size")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        version: r.try_get("version")?,
    })
}

fn tag_row(r: &DbRow) -> Result<TagRow, sqlx::Error> {
    Ok(TagRow {
        id: r.try_get("id")?,
        image_id: r.try_get("image_id")?,
        name: r.try_get("name")?,
        digest: r.try_get("digest")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        pushed_version: r.try_get("pushed_version")?,
    })
}

fn manifest_row(r: &DbRow) -> Result<ManifestRow, sqlx::Error> {
    Ok(ManifestRow {
        image_id: r.try_get("image_id")?,
        digest: r.try_get("digest")?,
        media_type: r.try_get("media_type")?,
        platform: r.try_get("platform")?,
        config_digest: r.try_get("config_digest")?,
        config_size: r.try_get("config_size")?,
        config_media_type: r.try_get("config_media_type")?,
        blobs_size: r.try_get("blobs_size")?,
        created_at: r.try_get("created_at")?,
        seq: r.try_get("seq")?,
        layers_packed: r.try_get("layers_packed")?,
        subject: r.try_get("subject")?,
        artifact_type: r.try_get("artifact_type")?,
    })
}

fn manifest_layer_row(r: &DbRow) -> Result<ManifestLayerRow, sqlx::Error> {
    Ok(ManifestLayerRow {
        image_id: r.try_get("image_id")?,
        manifest_digest: r.try_get("manifest_digest")?,
        idx: r.try_get("idx")?,
        digest: r.try_get("digest")?,
        size: r.try_get("size")?,
        media_type: r.try_get("media_type")?,
    })
}

fn manifest_child_row(r: &DbRow) -> Result<ManifestChildRow, sqlx::Error> {
    Ok(ManifestChildRow {
        image_id: r.try_get("image_id")?,
        parent_digest: r.try_get("parent_digest")?,
        idx: r.try_get("idx")?,
        child_digest: r.try_get("child_digest")?,
    })
}

fn image_blob_row(r: &DbRow) -> Result<ImageBlobRow, sqlx::Error> {
    Ok(ImageBlobRow {
        image_id: r.try_get("image_id")?,
        digest: r.try_get("digest")?,
        size: r.try_get("size")?,
        refs: r.try_get("refs")?,
    })
}

fn namespace_blob_row(r: &DbRow) -> Result<NamespaceBlobRow, sqlx::Error> {
    Ok(NamespaceBlobRow {
        namespace_id: r.try_get("namespace_id")?,
        digest: r.try_get("digest")?,
        size: r.try_get("size")?,
        refs: r.try_get("refs")?,
    })
}

fn job_descriptor_row(r: &DbRow) -> Result<JobDescriptorRow, sqlx::Error> {
    Ok(JobDescriptorRow {
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        state: r.try_get("state")?,
        caption: r.try_get("caption")?,
        creator: r.try_get("creator")?,
        input: r.try_get("input")?,
        output: r.try_get("output")?,
        attempts: r.try_get("attempts")?,
        progress_done: r.try_get("progress_done")?,
        progress_total: r.try_get("progress_total")?,
        progress_step: r.try_get("progress_step")?,
        last_error: r.try_get("last_error")?,
        next_retry_at: r.try_get("next_retry_at")?,
        cancel_requested: r.try_get("cancel_requested")?,
        idempotency_key: r.try_get("idempotency_key")?,
        created_at: r.try_get("created_at")?,
        started_at: r.try_get("started_at")?,
        completed_at: r.try_get("completed_at")?,
        updated_at: r.try_get("updated_at")?,
        version: r.try_get("version")?,
        project_id: r.try_get("project_id")?,
    })
}

fn api_token_row(r: &DbRow) -> Result<ApiTokenRow, sqlx::Error> {
    Ok(ApiTokenRow {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        secret_hash: r.try_get("secret_hash")?,
        capabilities: r.try_get("capabilities")?,
        project_id: r.try_get("project_id")?,
        created_at: r.try_get("created_at")?,
    })
}

impl SqlStore {
    /// Reads a whole table in primary key order. `sql` is a constant of this module.
    async fn all_rows<T>(
        &self,
        sql: &'static str,
        map: fn(&DbRow) -> Result<T, sqlx::Error>,
    ) -> Result<Vec<T>, StoreError> {
        let rows = sqlx::query(sql).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(map).collect::<Result<_, _>>()?)
    }

    pub async fn read_model_rows(&self) -> Result<ReadModelRows, StoreError> {
        Ok(ReadModelRows {
            namespaces: self
                .all_rows("SELECT * FROM namespaces ORDER BY id", namespace_row)
                .await?,
            images: self
                .all_rows("SELECT * FROM images ORDER BY id", image_row)
                .await?,
            tags: self
                .all_rows("SELECT * FROM tags ORDER BY id", tag_row)
                .await?,
            manifests: self
                .all_rows(
                    "SELECT * FROM manifests ORDER BY image_id, digest",
                    manifest_row,
                )
                .await?,
            manifest_layers: self
                .all_rows(
                    "SELECT * FROM manifest_layers ORDER BY image_id, manifest_digest, idx",
                    manifest_layer_row,
                )
                .await?,
            manifest_children: self
                .all_rows(
                    "SELECT * FROM manifest_children ORDER BY image_id, parent_digest, idx",
                    manifest_child_row,
                )
                .await?,
            image_blobs: self
                .all_rows(
                    "SELECT * FROM image_blobs ORDER BY image_id, digest",
                    image_blob_row,
                )
                .await?,
            namespace_blobs: self
                .all_rows(
                    "SELECT * FROM namespace_blobs ORDER BY namespace_id, digest",
                    namespace_blob_row,
                )
                .await?,
            api_tokens: self
                .all_rows("SELECT * FROM api_tokens ORDER BY id", api_token_row)
                .await?,
            job_descriptors: self
                .all_rows(
                    "SELECT * FROM job_descriptors ORDER BY id",
                    job_descriptor_row,
                )
                .await?,
            prune_policies: self
                .all_rows("SELECT * FROM prune_policies ORDER BY id", policy_row)
                .await?,
        })
    }

    pub async fn policy(&self, id: &str) -> Result<Option<PolicyRow>, StoreError> {
        let sql = format!("SELECT {POLICY_COLUMNS} FROM prune_policies WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(policy_row).transpose()?)
    }

    /// Every enabled policy with a schedule.
    pub async fn scheduled_policies(&self) -> Result<Vec<PolicyRow>, StoreError> {
        let sql = format!(
            "SELECT {POLICY_COLUMNS} FROM prune_policies \
             WHERE enabled = TRUE AND schedule IS NOT NULL ORDER BY id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(policy_row).collect::<Result<_, _>>()?)
    }

    /// The greatest idempotency key of a job starting with `prefix`.
    pub async fn last_job_key(&self, prefix: &str) -> Result<Option<String>, StoreError> {
        let pattern = format!(
            "{}%",
            prefix
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        Ok(sqlx::query_scalar(
            "SELECT MAX(idempotency_key) FROM job_descriptors \
             WHERE idempotency_key LIKE $1 ESCAPE '\\'",
        )
        .bind(pattern)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Policies oldest first, of namespaces of `project` when given, of `namespace_id` when
    /// given.
    pub async fn list_policies(
        &self,
        project: Option<&str>,
        namespace_id: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> Result<Page<PolicyRow>, StoreError> {
        fn filters(q: &mut QueryBuilder<Db>, project: Option<&str>, ns: Option<&str>) {
            if let Some(project) = project {
                q.push(" AND n.project_id = ").push_bind(project.to_owned());
            }
            if let Some(ns) = ns {
                q.push(" AND p.namespace_id = ").push_bind(ns.to_owned());
            }
        }
        const FROM: &str =
            " FROM prune_policies p JOIN namespaces n ON n.id = p.namespace_id WHERE 1 = 1";
        let mut count = QueryBuilder::<Db>::new(format!("SELECT COUNT(*){FROM}"));
        filters(&mut count, project, namespace_id);
        let total_count: i64 = count.build_query_scalar().fetch_one(&self.pool).await?;
        let mut list = QueryBuilder::<Db>::new(format!("SELECT p.*{FROM}"));
        filters(&mut list, project, namespace_id);
        list.push(" ORDER BY p.created_at, p.id LIMIT ")
            .push_bind(limit)
            .push(" OFFSET ")
            .push_bind(offset);
        let items = list
            .build()
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(policy_row)
            .collect::<Result<_, _>>()?;
        Ok(Page { items, total_count })
    }

    pub async fn namespace(&self, id: &str) -> Result<Option<NamespaceRow>, StoreError> {
        let sql = format!("SELECT {NAMESPACE_COLUMNS} FROM namespaces WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(namespace_row).transpose()?)
    }

    pub async fn image(&self, id: &str) -> Result<Option<ImageRow>, StoreError> {
        let sql = format!("SELECT {IMAGE_COLUMNS} FROM images WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(image_row).transpose()?)
    }

    /// Namespace `namespace_id`'s image named `name` (the unique key of the pair).
    /// The manifests of image `image_id` attached to its manifest `digest` (see
    /// [`ReferrerRow`]): by their `subject` (indexed), by a tag of cosign's scheme or of the
    /// OCI referrers tag schema (by the tags' unique name index), and the manifests that
    /// schema's index lists. Each once, the first way found; `artifact_type` filters.
    pub async fn referrers(
        &self,
        image_id: &str,
        digest: &str,
        artifact_type: Option<&str>,
    ) -> Result<Vec<crate::store::rows::ReferrerRow>, StoreError> {
        // The tag schemes name sha256 digests only; others are found by subject alone.
        let fallback = digest
            .strip_prefix("sha256:")
            .map(|hex| format!("sha256-{hex}"))
            .unwrap_or_default();
        let rows: Vec<ReferrerTuple> = sqlx::query_as(
            "SELECT m.digest, m.media_type, m.artifact_type, 'subject', CAST(NULL AS TEXT) \
             FROM manifests m WHERE m.image_id = $1 AND m.subject = $2 \
             UNION ALL \
             SELECT m.digest, m.media_type, m.artifact_type, \
                    CASE WHEN t.name = $3 THEN 'referrers_tag' ELSE 'cosign_tag' END, t.name \
             FROM tags t JOIN manifests m ON m.image_id = t.image_id AND m.digest = t.digest \
             WHERE t.image_id = $1 AND t.name IN ($3, $4, $5, $6) \
             UNION ALL \
             SELECT m.digest, m.media_type, m.artifact_type, 'referrers_index', \
                    CAST(NULL AS TEXT) \
             FROM tags t JOIN manifest_children c \
                  ON c.image_id = t.image_id AND c.parent_digest = t.digest \
             JOIN manifests m ON m.image_id = c.image_id AND m.digest = c.child_digest \
             WHERE t.image_id = $1 AND t.name = $3",
        )
        .bind(image_id)
        .bind(digest)
        .bind(&fallback)
        .bind(format!("{fallback}.sig"))
        .bind(format!("{fallback}.att"))
        .bind(format!("{fallback}.sbom"))
        .fetch_all(&self.pool)
        .await?;
        // (Without a sha256 digest the tag names are empty or start with '.': no tag has one.)
        let mut seen = std::collections::HashSet::new();
        Ok(rows
            .into_iter()
            .filter(|r| artifact_type.is_none_or(|a| r.2.as_deref() == Some(a)))
            .filter(|r| seen.insert(r.0.clone()))
            .map(
                |(digest, media_type, artifact_type, attached_by, tag)| {
                    crate::store::rows::ReferrerRow {
                        digest,
                        media_type,
                        artifact_type,
                        attached_by,
                        tag,
                    }
                },
            )
            .collect())
    }

    /// Whether image `image_id` has manifest `digest`.
    pub async fn has_manifest(&self, image_id: &str, digest: &str) -> Result<bool, StoreError> {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM manifests WHERE image_id = $1 AND digest = $2")
                .bind(image_id)
                .bind(digest)
                .fetch_one(&self.pool)
                .await?;
        Ok(n > 0)
    }

    pub async fn image_by_name(
        &self,
        namespace_id: &str,
        name: &str,
    ) -> Result<Option<ImageRow>, StoreError> {
        let sql =
            format!("SELECT {IMAGE_COLUMNS} FROM images WHERE namespace_id = $1 AND name = $2");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(namespace_id)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(image_row).transpose()?)
    }

    pub async fn image_ids(&self, namespace_id: &str) -> Result<Vec<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT id FROM images WHERE namespace_id = $1 ORDER BY name")
                .bind(namespace_id)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    pub async fn job(&self, id: &str) -> Result<Option<JobDescriptorRow>, StoreError> {
        let sql = format!("SELECT {JOB_DESCRIPTOR_COLUMNS} FROM job_descriptors WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(job_descriptor_row).transpose()?)
    }

    pub async fn job_by_idempotency_key(
        &self,
        key: &str,
    ) -> Result<Option<JobDescriptorRow>, StoreError> {
        let sql = format!(
            "SELECT {JOB_DESCRIPTOR_COLUMNS} FROM job_descriptors WHERE idempotency_key = $1"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(job_descriptor_row).transpose()?)
    }

    /// Jobs not yet in a final state and unchanged since `changed_before`, least recently
    /// changed first.
    pub async fn unfinished_jobs(
        &self,
        changed_before: &str,
        limit: i64,
    ) -> Result<Vec<JobDescriptorRow>, StoreError> {
        let sql = format!(
            "SELECT {JOB_DESCRIPTOR_COLUMNS} FROM job_descriptors \
             WHERE state IN ('queued', 'scheduled', 'running') AND updated_at <= $1 \
             ORDER BY updated_at, id LIMIT $2"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(changed_before)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(job_descriptor_row)
            .collect::<Result<_, _>>()?)
    }

    pub async fn list_jobs(&self, query: &JobQuery) -> Result<Page<JobDescriptorRow>, StoreError> {
        fn filters(q: &mut QueryBuilder<Db>, query: &JobQuery) {
            for (column, values) in [("state", &query.states), ("kind", &query.kinds)] {
                if values.is_empty() {
                    continue;
                }
                q.push(format!(" AND {column} IN ("));
                let mut list = q.separated(", ");
                for v in values {
                    list.push_bind(v.clone());
                }
                list.push_unseparated(")");
            }
            if let Some(project) = &query.project_id {
                q.push(" AND project_id = ").push_bind(project.clone());
            }
        }
        let mut count = QueryBuilder::<Db>::new("SELECT COUNT(*) FROM job_descriptors WHERE 1 = 1");
        filters(&mut count, query);
        let total_count: i64 = count.build_query_scalar().fetch_one(&self.pool).await?;

        let mut list = QueryBuilder::<Db>::new(format!(
            "SELECT {JOB_DESCRIPTOR_COLUMNS} FROM job_descriptors WHERE 1 = 1"
        ));
        filters(&mut list, query);
        let dir = if query.desc { "DESC" } else { "ASC" };
        list.push(format!(
            " ORDER BY {} {dir}, id {dir} LIMIT ",
            query.sort.column()
        ));
        list.push_bind(query.limit)
            .push(" OFFSET ")
            .push_bind(query.offset);
        let items = list
            .build()
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(job_descriptor_row)
            .collect::<Result<_, _>>()?;
        Ok(Page { items, total_count })
    }

    pub async fn any_token(&self) -> Result<bool, StoreError> {
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM api_tokens LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
    }

    pub async fn token_by_hash(
        &self,
        secret_hash: &str,
    ) -> Result<Option<ApiTokenRow>, StoreError> {
        let sql = format!("SELECT {API_TOKEN_COLUMNS} FROM api_tokens WHERE secret_hash = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(secret_hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(api_token_row).transpose()?)
    }

    pub async fn tag(&self, id: &str) -> Result<Option<TagRow>, StoreError> {
        let sql = format!("SELECT {TAG_COLUMNS} FROM tags WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(tag_row).transpose()?)
    }
}

use crate::store::{
    CursorError, ImageQuery, ImageView, JobQuery, ManifestKey, ManifestQuery, ManifestView,
    NamespaceQuery, Page, SortKey, TagQuery,
};

/// `ORDER BY` for a Scaleway list: the key (created_at ascending by default), then the id in
/// the same direction, so equal keys keep a stable order across pages.
fn order_by(alias: &str, sort: Option<(SortKey, bool)>) -> String {
    let (key, desc) = sort.unwrap_or((SortKey::CreatedAt, false));
    let dir = if desc { "DESC" } else { "ASC" };
    format!(" ORDER BY {alias}.{} {dir}, {alias}.id {dir}", key.column())
}

/// Appends `AND column = value` for each filter that is set.
fn push_filters(q: &mut QueryBuilder<Db>, filters: &[(&str, &Option<String>)]) {
    for (column, value) in filters {
        if let Some(v) = value {
            q.push(format!(" AND {column} = ")).push_bind(v.clone());
        }
    }
}

impl SqlStore {
    pub async fn list_namespaces(
        &self,
        query: &NamespaceQuery,
    ) -> Result<Page<NamespaceRow>, StoreError> {
        let filters = [
            ("n.name", &query.name),
            ("n.project_id", &query.project_id),
            ("n.organization_id", &query.organization_id),
        ];
        let mut count =
            QueryBuilder::<Db>::new("SELECT COUNT(*) FROM namespaces n WHERE n.region = ");
        count.push_bind(query.region.clone());
        push_filters(&mut count, &filters);
        let total_count: i64 = count.build_query_scalar().fetch_one(&self.pool).await?;

        let mut list = QueryBuilder::<Db>::new(format!(
            "SELECT {} FROM namespaces n WHERE n.region = ",
            NAMESPACE_COLUMNS
        ));
        list.push_bind(query.region.clone());
        push_filters(&mut list, &filters);
        list.push(order_by("n", query.sort));
        list.push(" LIMIT ").push_bind(query.limit);
        list.push(" OFFSET ").push_bind(query.offset);
        let rows = list.build().fetch_all(&self.pool).await?;
        Ok(Page {
            items: rows.iter().map(namespace_row).collect::<Result<_, _>>()?,
            total_count,
        })
    }

    pub async fn list_images(&self, query: &ImageQuery) -> Result<Page<ImageView>, StoreError> {
        let filters = [
            ("i.name", &query.name),
            ("i.namespace_id", &query.namespace_id),
            ("i.project_id", &query.project_id),
            ("i.organization_id", &query.organization_id),
        ];
        // Without a name filter the count is the sum of the namespaces' maintained image
        // counts: a few rows, however many images there are.
        let mut count = match &query.name {
            None => {
                let mut q = QueryBuilder::<Db>::new(
                    "SELECT CAST(COALESCE(SUM(n.image_count), 0) AS BIGINT) FROM namespaces n \
                     WHERE n.region = ",
                );
                q.push_bind(query.region.clone());
                push_filters(
                    &mut q,
                    &[
                        ("n.id", &query.namespace_id),
                        ("n.project_id", &query.project_id),
                        ("n.organization_id", &query.organization_id),
                    ],
                );
                q
            }
            Some(_) => {
                let mut q =
                    QueryBuilder::<Db>::new("SELECT COUNT(*) FROM images i WHERE i.region = ");
                q.push_bind(query.region.clone());
                push_filters(&mut q, &filters);
                q
            }
        };
        let total_count: i64 = count.build_query_scalar().fetch_one(&self.pool).await?;

        let mut list = QueryBuilder::<Db>::new(format!(
            "SELECT {} FROM images i WHERE i.region = ",
            IMAGE_COLUMNS
        ));
        list.push_bind(query.region.clone());
        push_filters(&mut list, &filters);
        list.push(order_by("i", query.sort));
        list.push(" LIMIT ").push_bind(query.limit);
        list.push(" OFFSET ").push_bind(query.offset);
        let rows = list.build().fetch_all(&self.pool).await?;
        let items = self.image_views(&rows).await?;
        Ok(Page { items, total_count })
    }

    /// One image with its tag names.
    pub async fn image_view(&self, id: &str) -> Result<Option<ImageView>, StoreError> {
        let sql = format!("SELECT {IMAGE_COLUMNS} FROM images WHERE id = $1");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        Ok(self.image_views(&rows).await?.pop())
    }

    /// Images with their tag names, fetched in one query for the whole page.
    async fn image_views(&self, rows: &[DbRow]) -> Result<Vec<ImageView>, StoreError> {
        let mut views: Vec<ImageView> = Vec::with_capacity(rows.len());
        for r in rows {
            views.push(ImageView {
                image: image_row(r)?,
                tags: Vec::new(),
            });
        }
        if views.is_empty() {
            return Ok(views);
        }
        let mut q = QueryBuilder::<Db>::new("SELECT image_id, name FROM tags WHERE image_id IN (");
        let mut ids = q.separated(", ");
        for v in &views {
            ids.push_bind(v.image.id.clone());
        }
        q.push(") ORDER BY image_id, name");
        let mut by_image: HashMap<String, Vec<String>> = HashMap::new();
        for r in q.build().fetch_all(&self.pool).await? {
            by_image
                .entry(r.try_get("image_id")?)
                .or_default()
                .push(r.try_get("name")?);
        }
        for v in &mut views {
            v.tags = by_image.remove(&v.image.id).unwrap_or_default();
        }
        Ok(views)
    }

    pub async fn list_tags(&self, query: &TagQuery) -> Result<Page<TagRow>, StoreError> {
        let filters = [("t.name", &query.name)];
        let mut count = QueryBuilder::<Db>::new("SELECT COUNT(*) FROM tags t WHERE t.image_id = ");
        count.push_bind(query.image_id.clone());
        push_filters(&mut count, &filters);
        let total_count: i64 = count.build_query_scalar().fetch_one(&self.pool).await?;

        let mut list = QueryBuilder::<Db>::new(format!(
            "SELECT {} FROM tags t WHERE t.image_id = ",
            TAG_COLUMNS
        ));
        list.push_bind(query.image_id.clone());
        push_filters(&mut list, &filters);
        list.push(order_by("t", query.sort));
        list.push(" LIMIT ").push_bind(query.limit);
        list.push(" OFFSET ").push_bind(query.offset);
        let rows = list.build().fetch_all(&self.pool).await?;
        Ok(Page {
            items: rows.iter().map(tag_row).collect::<Result<_, _>>()?,
            total_count,
        })
    }

    /// A page of manifests after the cursor. Fails with [`CursorError::Gone`] when the
    /// cursor's row no longer exists and the order needs its keys.
    pub async fn list_manifests(
        &self,
        query: &ManifestQuery,
    ) -> Result<Result<Vec<ManifestView>, CursorError>, StoreError> {
        // The order's columns, then `seq` (unique) so every row has one place.
        let mut keys: Vec<(&'static str, bool)> = Vec::new();
        for (key, desc) in &query.order {
            let columns: &[&'static str] = match key {
                ManifestKey::Name => &["n.name", "i.name"],
                ManifestKey::Digest => &["m.digest"],
                ManifestKey::CreatedAt => &["m.seq"],
            };
            keys.extend(columns.iter().map(|c| (*c, *desc)));
        }
        if !keys.iter().any(|(c, _)| *c == "m.seq") {
            keys.push(("m.seq", false));
        }

        // The cursor row's key values. Creation order needs only the seq itself; other
        // orders read the cursor row's keys, which must still exist.
        let cursor: Option<Vec<KeyValue>> = match query.after_seq {
            None => None,
            Some(seq) if keys.len() == 1 => Some(vec![KeyValue::Int(seq)]),
            Some(seq) => {
                let sql = "SELECT n.name AS \"n.name\", i.name AS \"i.name\", \
                           m.digest AS \"m.digest\", m.seq AS \"m.seq\" FROM manifests m \
                           JOIN images i ON i.id = m.image_id \
                           JOIN namespaces n ON n.id = i.namespace_id WHERE m.seq = $1";
                let Some(row) = sqlx::query(sql)
                    .bind(seq)
                    .fetch_optional(&self.pool)
                    .await?
                else {
                    return Ok(Err(CursorError::Gone));
                };
                let values = keys
                    .iter()
                    .map(|(c, _)| {
                        Ok(if *c == "m.seq" {
                            KeyValue::Int(row.try_get(*c)?)
                        } else {
                            KeyValue::Text(row.try_get(*c)?)
                        })
                    })
                    .collect::<Result<_, sqlx::Error>>()?;
                Some(values)
            }
        };

        let mut q = QueryBuilder::<Db>::new(MANIFEST_VIEWS);
        q.push(" WHERE 1 = 1");
        push_filters(
            &mut q,
            &[
                ("i.namespace_id", &query.namespace_id),
                ("i.project_id", &query.project_id),
            ],
        );
        if let Some((ns, image)) = &query.repository {
            q.push(" AND n.name = ").push_bind(ns.clone());
            q.push(" AND i.name = ").push_bind(image.clone());
        }
        if let Some(values) = cursor {
            // (k1 > v1) OR (k1 = v1 AND k2 > v2) OR …, with < for descending keys.
            q.push(" AND (");
            for i in 0..keys.len().min(values.len()) {
                if i > 0 {
                    q.push(" OR ");
                }
                q.push("(");
                for (j, value) in values.iter().enumerate().take(i) {
                    q.push(format!("{} = ", keys[j].0));
                    value.bind(&mut q);
                    q.push(" AND ");
                }
                let (column, desc) = keys[i];
                q.push(format!("{column} {} ", if desc { "<" } else { ">" }));
                values[i].bind(&mut q);
                q.push(")");
            }
            q.push(")");
        }
        let order: Vec<String> = keys
            .iter()
            .map(|(c, d)| format!("{c} {}", if *d { "DESC" } else { "ASC" }))
            .collect();
        q.push(format!(" ORDER BY {} LIMIT ", order.join(", ")));
        q.push_bind(query.limit);
        let rows = q.build().fetch_all(&self.pool).await?;
        self.manifest_views(&rows).await.map(Ok)
    }

    /// One manifest by its `seq`.
    pub async fn manifest_view(&self, seq: i64) -> Result<Option<ManifestView>, StoreError> {
        let mut q = QueryBuilder::<Db>::new(MANIFEST_VIEWS);
        q.push(" WHERE m.seq = ").push_bind(seq);
        let rows = q.build().fetch_all(&self.pool).await?;
        Ok(self.manifest_views(&rows).await?.pop())
    }

    /// Manifests with their layers and tags, each fetched in one query for the whole page.
    async fn manifest_views(&self, rows: &[DbRow]) -> Result<Vec<ManifestView>, StoreError> {
        let mut views = Vec::with_capacity(rows.len());
        for r in rows {
            views.push(ManifestView {
                manifest: manifest_row(r)?,
                namespace_name: r.try_get("ns_name")?,
                project_id: r.try_get("image_project")?,
                image_name: r.try_get("image_name")?,
                layers: Vec::new(),
                tags: Vec::new(),
                attached_to: None,
            });
        }
        if views.is_empty() {
            return Ok(views);
        }
        let mut layers = QueryBuilder::<Db>::new(format!(
            "SELECT {MANIFEST_LAYER_COLUMNS} FROM manifest_layers WHERE (image_id, manifest_digest) IN (VALUES "
        ));
        push_manifest_keys(&mut layers, &views);
        layers.push(") ORDER BY image_id, manifest_digest, idx");
        let mut by_manifest: HashMap<(String, String), Vec<ManifestLayerRow>> = HashMap::new();
        for r in layers.build().fetch_all(&self.pool).await? {
            let layer = manifest_layer_row(&r)?;
            by_manifest
                .entry((layer.image_id.clone(), layer.manifest_digest.clone()))
                .or_default()
                .push(layer);
        }
        let mut tags = QueryBuilder::<Db>::new(
            "SELECT image_id, digest, name FROM tags WHERE (image_id, digest) IN (VALUES ",
        );
        push_manifest_keys(&mut tags, &views);
        tags.push(") ORDER BY name");
        let mut tags_by: HashMap<(String, String), Vec<String>> = HashMap::new();
        for r in tags.build().fetch_all(&self.pool).await? {
            tags_by
                .entry((r.try_get("image_id")?, r.try_get("digest")?))
                .or_default()
                .push(r.try_get("name")?);
        }
        for v in &mut views {
            let key = (v.manifest.image_id.clone(), v.manifest.digest.clone());
            v.layers = by_manifest.remove(&key).unwrap_or_default();
            v.tags = tags_by.remove(&key).unwrap_or_default();
        }
        self.attach(&mut views).await?;
        Ok(views)
    }

    /// Sets what each of `views` is attached to, by the rules prune follows
    /// ([`crate::domain::retention::attached_to`]), with one query for which of the digests
    /// they name their images have.
    async fn attach(&self, views: &mut [ManifestView]) -> Result<(), StoreError> {
        use crate::domain::retention::{attached_to, named_subjects};
        let named: Vec<Vec<(String, &'static str)>> = views
            .iter()
            .map(|v| named_subjects(v.manifest.subject.as_deref(), &v.tags))
            .collect();
        let keys: Vec<(&str, &str)> = views
            .iter()
            .zip(&named)
            .flat_map(|(v, n)| n.iter().map(|(s, _)| (v.manifest.image_id.as_str(), s.as_str())))
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        let mut q = QueryBuilder::<Db>::new("SELECT image_id, digest FROM manifests WHERE ");
        push_keys(&mut q, "image_id", "digest", &keys);
        let mut present: std::collections::HashSet<(String, String)> = Default::default();
        for r in q.build().fetch_all(&self.pool).await? {
            present.insert((r.try_get("image_id")?, r.try_get("digest")?));
        }
        for v in views.iter_mut() {
            let m = &v.manifest;
            let has = |d: &str| present.contains(&(m.image_id.clone(), d.to_owned()));
            v.attached_to = attached_to(&m.digest, m.subject.as_deref(), &v.tags, has);
        }
        Ok(())
    }
}

/// `(image_id, digest), …` of each view, as a `VALUES` list.
fn push_manifest_keys(q: &mut QueryBuilder<Db>, views: &[ManifestView]) {
    for (i, v) in views.iter().enumerate() {
        if i > 0 {
            q.push(", ");
        }
        q.push("(")
            .push_bind(v.manifest.image_id.clone())
            .push(", ")
            .push_bind(v.manifest.digest.clone())
            .push(")");
    }
}

/// A key value of a keyset cursor.
enum KeyValue {
    Text(String),
    Int(i64),
}

impl KeyValue {
    fn bind(&self, q: &mut QueryBuilder<Db>) {
        match self {
            KeyValue::Text(s) => q.push_bind(s.clone()),
            KeyValue::Int(i) => q.push_bind(*i),
        };
    }
}

impl SqlStore {
    pub async fn namespace_blobs(&self, namespace_id: &str) -> Result<(i64, i64), StoreError> {
        Ok(sqlx::query_as(
            "SELECT COUNT(*), CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM namespace_blobs \
             WHERE namespace_id = $1",
        )
        .bind(namespace_id)
        .fetch_one(&self.pool)
        .await?)
    }

    pub async fn namespace_blob_digests(
        &self,
        namespace_id: &str,
    ) -> Result<Vec<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT digest FROM namespace_blobs WHERE namespace_id = $1")
                .bind(namespace_id)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// The totals the metrics report, read in one snapshot.
    pub async fn metric_totals(&self) -> Result<crate::store::rows::MetricTotals, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_SNAPSHOT).await?;
        let head: i64 = sqlx::query_scalar("SELECT position FROM event_log_head WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        let (namespaces, stored_bytes): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), CAST(COALESCE(SUM(stored_size), 0) AS BIGINT) FROM namespaces",
        )
        .fetch_one(&mut *tx)
        .await?;
        let images: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM images")
            .fetch_one(&mut *tx)
            .await?;
        let tags: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tags")
            .fetch_one(&mut *tx)
            .await?;
        let jobs: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT kind, state, COUNT(*) FROM job_descriptors \
             WHERE state IN ('queued', 'scheduled', 'running') GROUP BY kind, state",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(crate::store::rows::MetricTotals {
            head,
            namespaces,
            images,
            tags,
            stored_bytes,
            jobs,
        })
    }
}
