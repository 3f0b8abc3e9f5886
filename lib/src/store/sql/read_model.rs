// Reads of the read models. Included by `backend.rs` once per backend.

use crate::store::rows::{
    ImageBlobRow, ImageRow, ManifestChildRow, ManifestLayerRow, ManifestRow, NamespaceBlobRow,
    NamespaceRow, ReadModelRows, TagRow,
};

const NAMESPACE_COLUMNS: &str = "id, name, region, description, organization_id, project_id, \
    is_public, status, size, stored_size, image_count, created_at, updated_at, version";
const IMAGE_COLUMNS: &str =
    "id, namespace_id, name, visibility, status, size, created_at, updated_at, version";
const TAG_COLUMNS: &str = "id, image_id, name, digest, created_at, updated_at, pushed_version";
const MANIFEST_COLUMNS: &str = "image_id, digest, media_type, platform, config_digest, \
    config_size, config_media_type, blobs_size, created_at";
const MANIFEST_LAYER_COLUMNS: &str = "image_id, manifest_digest, idx, digest, size, media_type";
const MANIFEST_CHILD_COLUMNS: &str = "image_id, parent_digest, idx, child_digest";
const IMAGE_BLOB_COLUMNS: &str = "image_id, digest, size, refs";
const NAMESPACE_BLOB_COLUMNS: &str = "namespace_id, digest, size, refs";

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
        })
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

    pub async fn image_ids(&self, namespace_id: &str) -> Result<Vec<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT id FROM images WHERE namespace_id = $1 ORDER BY name")
                .bind(namespace_id)
                .fetch_all(&self.pool)
                .await?,
        )
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
