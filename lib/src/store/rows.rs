//! The read model rows, and how they follow from folded aggregate state.
//!
//! The inline projections (`sql/projection.rs`) maintain these rows one event at a time with
//! reference counts; [`materialize`] derives the same rows from whole aggregates, which is how
//! `rebuild` writes them. The rebuild tests hold the two to the same result, row for row.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::domain::image::{Image, distinct_blobs};
use crate::domain::job::{Job, JobKind};
use crate::domain::namespace::Namespace;
use crate::domain::policy::PrunePolicy;
use crate::domain::token::Token;

/// Status of a live namespace or image (Scaleway's enum).
pub const STATUS_READY: &str = "ready";
/// Status of a namespace or image whose delete job is on its way.
pub const STATUS_DELETING: &str = "deleting";

fn status(deleting: bool) -> &'static str {
    if deleting {
        STATUS_DELETING
    } else {
        STATUS_READY
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NamespaceRow {
    pub id: String,
    pub name: String,
    pub region: String,
    pub description: String,
    pub organization_id: String,
    pub project_id: String,
    pub is_public: bool,
    pub status: String,
    /// Sum of the sizes of the namespace's images.
    pub size: i64,
    /// Bytes of the distinct blobs of all its images (each blob once).
    pub stored_size: i64,
    pub image_count: i64,
    pub created_at: String,
    pub updated_at: String,
    pub version: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageRow {
    pub id: String,
    pub namespace_id: String,
    /// The namespace's region, project and organization (fixed for its lifetime).
    pub region: String,
    pub project_id: String,
    pub organization_id: String,
    pub name: String,
    pub visibility: String,
    pub status: String,
    pub size: i64,
    pub created_at: String,
    pub updated_at: String,
    pub version: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TagRow {
    pub id: String,
    pub image_id: String,
    pub name: String,
    pub digest: String,
    pub created_at: String,
    pub updated_at: String,
    pub pushed_version: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManifestRow {
    pub image_id: String,
    pub digest: String,
    pub media_type: String,
    pub platform: Option<String>,
    pub config_digest: Option<String>,
    pub config_size: Option<i64>,
    pub config_media_type: Option<String>,
    /// Sum of the sizes of this manifest's own distinct blobs.
    pub blobs_size: i64,
    pub created_at: String,
    pub seq: i64,
    /// Its layers, packed for prune planning ([`super::plans::pack_layers`]).
    pub layers_packed: String,
    /// The digest of the manifest it is attached to (OCI 1.1 `subject`).
    pub subject: Option<String>,
    pub artifact_type: Option<String>,
}

/// A manifest attached to another (a signature, an SBOM, an attestation), and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReferrerRow {
    pub digest: String,
    pub media_type: String,
    pub artifact_type: Option<String>,
    /// `subject` (its OCI 1.1 subject names the manifest), `cosign_tag` (tagged
    /// `sha256-<hex>.sig|.att|.sbom`), `referrers_tag` (the OCI referrers tag schema's index,
    /// tagged `sha256-<hex>`) or `referrers_index` (listed by that index).
    pub attached_by: String,
    /// The tag that attaches it, for the two tag schemes.
    pub tag: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManifestLayerRow {
    pub image_id: String,
    pub manifest_digest: String,
    pub idx: i64,
    pub digest: String,
    pub size: i64,
    pub media_type: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManifestChildRow {
    pub image_id: String,
    pub parent_digest: String,
    pub idx: i64,
    pub child_digest: String,
}

/// A blob of an image and how many of its manifests reference it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageBlobRow {
    pub image_id: String,
    pub digest: String,
    pub size: i64,
    pub refs: i64,
}

/// A blob of a namespace and how many of its images reference it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NamespaceBlobRow {
    pub namespace_id: String,
    pub digest: String,
    pub size: i64,
    pub refs: i64,
}

/// An API token; `capabilities` comma-separated, `secret_hash` the SHA-256 of the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiTokenRow {
    pub id: String,
    pub name: String,
    pub secret_hash: String,
    pub capabilities: String,
    pub project_id: Option<String>,
    pub created_at: String,
}

/// A job descriptor: where a job is, what it did, what it said last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobDescriptorRow {
    pub id: String,
    pub kind: String,
    pub state: String,
    pub caption: String,
    pub creator: Option<String>,
    /// JSON.
    pub input: String,
    /// JSON, once the job succeeded.
    pub output: Option<String>,
    pub attempts: i64,
    pub progress_done: i64,
    pub progress_total: i64,
    pub progress_step: Option<String>,
    pub last_error: Option<String>,
    pub next_retry_at: Option<String>,
    pub cancel_requested: bool,
    pub idempotency_key: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    pub updated_at: String,
    pub version: i64,
    /// The project the job acts in (`None`: no project; only unscoped tokens see it).
    pub project_id: Option<String>,
}

/// A prune policy's latest version, and the newest run started for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyRow {
    pub id: String,
    pub name: String,
    pub namespace_id: String,
    /// The body, as JSON.
    pub body: String,
    pub enabled: bool,
    pub schedule: Option<String>,
    pub timezone: String,
    pub last_run_job_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub version: i64,
}

/// The figures the metrics read from the database on each scrape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricTotals {
    /// The log head. Read models are written in the append's transaction, so it is also the
    /// position the totals below reflect (all are read in one snapshot).
    pub head: i64,
    pub namespaces: i64,
    pub images: i64,
    pub tags: i64,
    /// Bytes stored, each blob once per namespace.
    pub stored_bytes: i64,
    /// Unfinished jobs: (kind, state, count).
    pub jobs: Vec<(String, String, i64)>,
}

/// Every read model row, each table sorted by its primary key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadModelRows {
    pub namespaces: Vec<NamespaceRow>,
    pub images: Vec<ImageRow>,
    pub tags: Vec<TagRow>,
    pub manifests: Vec<ManifestRow>,
    pub manifest_layers: Vec<ManifestLayerRow>,
    pub manifest_children: Vec<ManifestChildRow>,
    pub image_blobs: Vec<ImageBlobRow>,
    pub namespace_blobs: Vec<NamespaceBlobRow>,
    pub api_tokens: Vec<ApiTokenRow>,
    pub job_descriptors: Vec<JobDescriptorRow>,
    pub prune_policies: Vec<PolicyRow>,
}

impl ReadModelRows {
    /// Sorts every table by its primary key, as the database reads them back.
    pub fn sort(&mut self) {
        self.namespaces.sort_by(|a, b| a.id.cmp(&b.id));
        self.images.sort_by(|a, b| a.id.cmp(&b.id));
        self.tags.sort_by(|a, b| a.id.cmp(&b.id));
        self.manifests
            .sort_by(|a, b| (&a.image_id, &a.digest).cmp(&(&b.image_id, &b.digest)));
        self.manifest_layers.sort_by(|a, b| {
            (&a.image_id, &a.manifest_digest, a.idx).cmp(&(&b.image_id, &b.manifest_digest, b.idx))
        });
        self.manifest_children.sort_by(|a, b| {
            (&a.image_id, &a.parent_digest, a.idx).cmp(&(&b.image_id, &b.parent_digest, b.idx))
        });
        self.image_blobs
            .sort_by(|a, b| (&a.image_id, &a.digest).cmp(&(&b.image_id, &b.digest)));
        self.namespace_blobs
            .sort_by(|a, b| (&a.namespace_id, &a.digest).cmp(&(&b.namespace_id, &b.digest)));
        self.api_tokens.sort_by(|a, b| a.id.cmp(&b.id));
        self.job_descriptors.sort_by(|a, b| a.id.cmp(&b.id));
        self.prune_policies.sort_by(|a, b| a.id.cmp(&b.id));
    }
}

/// The policy rows that follow from folded policies and jobs: a live policy's latest body,
/// with the newest prune job (by id: ids are time-ordered) whose input names it.
pub fn materialize_policies<'a>(
    policies: impl IntoIterator<Item = &'a PrunePolicy>,
    jobs: impl IntoIterator<Item = &'a Job>,
) -> Vec<PolicyRow> {
    let mut last_run: BTreeMap<&str, &str> = BTreeMap::new();
    for job in jobs {
        let Some(a) = job.accepted.as_ref().filter(|a| a.kind == JobKind::Prune) else {
            continue;
        };
        if let Some(policy) = a.input["policy_id"].as_str() {
            let newest = last_run.entry(policy).or_insert(&a.job_id);
            if a.job_id.as_str() > *newest {
                *newest = &a.job_id;
            }
        }
    }
    policies
        .into_iter()
        .filter(|p| !p.deleted)
        .filter_map(|p| {
            let body = p.body.as_ref()?;
            Some(PolicyRow {
                id: p.id.clone(),
                name: body.name.clone(),
                namespace_id: body.namespace_id.clone(),
                body: serde_json::to_string(body).unwrap_or_default(),
                enabled: body.enabled,
                schedule: body.schedule.clone(),
                timezone: body.timezone.clone(),
                last_run_job_id: last_run.get(p.id.as_str()).map(|s| (*s).to_owned()),
                created_at: p.created_at.clone(),
                updated_at: p.updated_at.clone(),
                version: p.version,
            })
        })
        .collect()
}

/// The read model rows that follow from folded aggregates (deleted ones contribute nothing).
pub fn materialize<'a>(
    namespaces: impl IntoIterator<Item = &'a Namespace>,
    images: impl IntoIterator<Item = &'a Image>,
    tokens: impl IntoIterator<Item = &'a Token>,
    jobs: impl IntoIterator<Item = &'a Job>,
) -> ReadModelRows {
    let mut rows = ReadModelRows::default();
    for job in jobs {
        let (Some(a), Some(state)) = (&job.accepted, job.state) else {
            continue;
        };
        rows.job_descriptors.push(JobDescriptorRow {
            id: a.job_id.clone(),
            kind: a.kind.as_str().to_owned(),
            state: state.as_str().to_owned(),
            caption: a.caption.clone(),
            creator: a.creator.clone(),
            input: a.input.to_string(),
            output: job.output.as_ref().map(|o| o.to_string()),
            attempts: job.attempts,
            progress_done: job.done,
            progress_total: job.total,
            progress_step: job.step.clone(),
            last_error: job.last_error.clone(),
            next_retry_at: job.retry_at.clone(),
            cancel_requested: job.cancel_requested,
            idempotency_key: a.idempotency_key.clone(),
            created_at: job.created_at.clone(),
            started_at: job.started_at.clone(),
            completed_at: job.completed_at.clone(),
            updated_at: job.updated_at.clone(),
            version: job.version,
            project_id: a.project_id.clone(),
        });
    }
    for token in tokens {
        if let Some(c) = &token.created {
            rows.api_tokens.push(ApiTokenRow {
                id: c.token_id.clone(),
                name: c.name.clone(),
                secret_hash: c.secret_hash.clone(),
                capabilities: c.capabilities.join(","),
                project_id: c.project_id.clone(),
                created_at: token.created_at.clone(),
            });
        }
    }
    let mut ns_index: BTreeMap<String, usize> = BTreeMap::new();
    for ns in namespaces {
        let Some(c) = ns.created.as_ref().filter(|_| !ns.deleted) else {
            continue;
        };
        ns_index.insert(c.namespace_id.clone(), rows.namespaces.len());
        rows.namespaces.push(NamespaceRow {
            id: c.namespace_id.clone(),
            name: c.name.clone(),
            region: c.region.clone(),
            description: c.description.clone(),
            organization_id: c.organization_id.clone(),
            project_id: c.project_id.clone(),
            is_public: c.is_public,
            status: status(ns.deleting.is_some()).to_owned(),
            size: 0,
            stored_size: 0,
            image_count: 0,
            created_at: ns.created_at.clone(),
            updated_at: ns.updated_at.clone(),
            version: ns.version,
        });
    }
    let mut ns_blobs: BTreeMap<(String, String), NamespaceBlobRow> = BTreeMap::new();
    for img in images {
        let Some(c) = img.created.as_ref().filter(|_| !img.deleted) else {
            continue;
        };
        let image_id = c.image_id.clone();
        // A live image's namespace is live (the read model's reference rule).
        let Some(&ns) = ns_index.get(&c.namespace_id) else {
            continue;
        };
        rows.namespaces[ns].size += img.size;
        rows.namespaces[ns].image_count += 1;
        let namespace = &rows.namespaces[ns];
        rows.images.push(ImageRow {
            id: image_id.clone(),
            namespace_id: c.namespace_id.clone(),
            region: namespace.region.clone(),
            project_id: namespace.project_id.clone(),
            organization_id: namespace.organization_id.clone(),
            name: c.name.clone(),
            visibility: c.visibility.clone(),
            status: status(img.deleting.is_some()).to_owned(),
            size: img.size,
            created_at: img.created_at.clone(),
            updated_at: img.updated_at.clone(),
            version: img.version,
        });
        for (name, tag) in &img.tags {
            rows.tags.push(TagRow {
                id: tag.id.clone(),
                image_id: image_id.clone(),
                name: name.clone(),
                digest: tag.digest.clone(),
                created_at: tag.created_at.clone(),
                updated_at: tag.updated_at.clone(),
                pushed_version: tag.pushed_version,
            });
        }
        for (digest, m) in &img.manifests {
            let r = &m.recorded;
            rows.manifests.push(ManifestRow {
                image_id: image_id.clone(),
                digest: digest.clone(),
                media_type: r.media_type.clone(),
                platform: r.platform.clone(),
                config_digest: r.config.as_ref().map(|b| b.digest.clone()),
                config_size: r.config.as_ref().map(|b| b.size),
                config_media_type: r.config.as_ref().map(|b| b.media_type.clone()),
                blobs_size: distinct_blobs(r).iter().map(|b| b.size).sum(),
                created_at: m.created_at.clone(),
                seq: m.seq,
                layers_packed: super::plans::pack_layers(&r.layers),
                subject: r.subject.clone(),
                artifact_type: r.artifact_type.clone(),
            });
            for (idx, layer) in r.layers.iter().enumerate() {
                rows.manifest_layers.push(ManifestLayerRow {
                    image_id: image_id.clone(),
                    manifest_digest: digest.clone(),
                    idx: idx as i64,
                    digest: layer.digest.clone(),
                    size: layer.size,
                    media_type: layer.media_type.clone(),
                });
            }
            for (idx, child) in r.children.iter().enumerate() {
                rows.manifest_children.push(ManifestChildRow {
                    image_id: image_id.clone(),
                    parent_digest: digest.clone(),
                    idx: idx as i64,
                    child_digest: child.clone(),
                });
            }
        }
        for (digest, blob) in &img.blobs {
            rows.image_blobs.push(ImageBlobRow {
                image_id: image_id.clone(),
                digest: digest.clone(),
                size: blob.size,
                refs: blob.refs,
            });
            let entry = ns_blobs
                .entry((c.namespace_id.clone(), digest.clone()))
                .or_insert_with(|| NamespaceBlobRow {
                    namespace_id: c.namespace_id.clone(),
                    digest: digest.clone(),
                    size: blob.size,
                    refs: 0,
                });
            entry.refs += 1;
        }
    }
    for blob in ns_blobs.values() {
        if let Some(&i) = ns_index.get(&blob.namespace_id) {
            rows.namespaces[i].stored_size += blob.size;
        }
    }
    rows.namespace_blobs = ns_blobs.into_values().collect();
    rows.sort();
    rows
}
