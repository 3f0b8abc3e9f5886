-- Read models maintained by the inline projections. Sizes are kept by reference counts in
-- image_blobs and namespace_blobs. Times are fixed-width RFC 3339 text (UTC, microseconds).
CREATE TABLE namespaces (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    region TEXT NOT NULL,
    description TEXT NOT NULL,
    organization_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    is_public BOOLEAN NOT NULL,
    status TEXT NOT NULL,
    size BIGINT NOT NULL,
    stored_size BIGINT NOT NULL,
    image_count BIGINT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    version BIGINT NOT NULL,
    CONSTRAINT namespaces_region_name_key UNIQUE (region, name)
);

CREATE TABLE images (
    id TEXT PRIMARY KEY,
    namespace_id TEXT NOT NULL REFERENCES namespaces (id),
    -- Copied from the namespace (they never change) so image lists need no join.
    region TEXT NOT NULL,
    project_id TEXT NOT NULL,
    organization_id TEXT NOT NULL,
    name TEXT NOT NULL,
    visibility TEXT NOT NULL,
    status TEXT NOT NULL,
    size BIGINT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    version BIGINT NOT NULL,
    CONSTRAINT images_namespace_name_key UNIQUE (namespace_id, name)
);

CREATE TABLE tags (
    id TEXT PRIMARY KEY,
    image_id TEXT NOT NULL,
    name TEXT NOT NULL,
    digest TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    pushed_version BIGINT NOT NULL,
    CONSTRAINT tags_image_name_key UNIQUE (image_id, name)
);
CREATE INDEX tags_image_digest_idx ON tags (image_id, digest);

CREATE TABLE manifests (
    image_id TEXT NOT NULL,
    digest TEXT NOT NULL,
    media_type TEXT NOT NULL,
    platform TEXT,
    config_digest TEXT,
    config_size BIGINT,
    config_media_type TEXT,
    blobs_size BIGINT NOT NULL,
    created_at TEXT NOT NULL,
    -- Position of the event that recorded the manifest: unique and in creation order, the
    -- key of manifest listings' keyset pagination.
    seq BIGINT NOT NULL,
    PRIMARY KEY (image_id, digest)
);

CREATE TABLE manifest_layers (
    image_id TEXT NOT NULL,
    manifest_digest TEXT NOT NULL,
    idx BIGINT NOT NULL,
    digest TEXT NOT NULL,
    size BIGINT NOT NULL,
    media_type TEXT NOT NULL,
    PRIMARY KEY (image_id, manifest_digest, idx)
);

CREATE TABLE manifest_children (
    image_id TEXT NOT NULL,
    parent_digest TEXT NOT NULL,
    idx BIGINT NOT NULL,
    child_digest TEXT NOT NULL,
    PRIMARY KEY (image_id, parent_digest, idx)
);

-- refs = how many of the image's manifests reference the blob.
CREATE TABLE image_blobs (
    image_id TEXT NOT NULL,
    digest TEXT NOT NULL,
    size BIGINT NOT NULL,
    refs BIGINT NOT NULL,
    PRIMARY KEY (image_id, digest)
);

-- refs = how many of the namespace's images reference the blob.
CREATE TABLE namespace_blobs (
    namespace_id TEXT NOT NULL REFERENCES namespaces (id),
    digest TEXT NOT NULL,
    size BIGINT NOT NULL,
    refs BIGINT NOT NULL,
    PRIMARY KEY (namespace_id, digest)
);
