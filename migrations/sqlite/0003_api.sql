-- API tokens: only a SHA-256 of each secret is stored.
CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    capabilities TEXT NOT NULL,
    project_id TEXT,
    created_at TEXT NOT NULL,
    CONSTRAINT api_tokens_secret_hash_key UNIQUE (secret_hash)
);

CREATE UNIQUE INDEX manifests_seq_idx ON manifests (seq);
CREATE INDEX manifests_digest_idx ON manifests (digest, seq);

-- Listing orders (keyset and offset scans read these in order).
CREATE INDEX namespaces_created_idx ON namespaces (created_at, id);
CREATE INDEX namespaces_name_idx ON namespaces (name, id);
CREATE INDEX images_region_created_idx ON images (region, created_at, id);
CREATE INDEX images_region_name_idx ON images (region, name, id);
-- An exact-name filter in creation order.
CREATE INDEX images_region_name_created_idx ON images (region, name, created_at, id);
CREATE INDEX images_namespace_created_idx ON images (namespace_id, created_at, id);
CREATE INDEX images_namespace_name_idx ON images (namespace_id, name, id);
CREATE INDEX tags_image_created_idx ON tags (image_id, created_at, id);
