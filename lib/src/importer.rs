//! Recording what a registry holds, the steps import jobs and the registry notification hook
//! share. A manifest (and, for an index, every child manifest) is fetched and verified before
//! anything is recorded, so bad content records nothing; recording again what is already
//! there changes nothing.

use crate::domain::image::ImageCommand;
use crate::domain::{DomainError, DomainEvent};
use crate::oci::{Client, OciError, Parsed, parse, recorded};
use crate::service::{Registry, ServiceError};
use crate::store::{EventStore, Metadata, ReadModels};

/// Why a step failed: worth retrying later, or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failed {
    Transient(String),
    Permanent(String),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Transient(m) | Failed::Permanent(m) => f.write_str(m),
        }
    }
}

impl From<OciError> for Failed {
    fn from(e: OciError) -> Self {
        if e.is_transient() {
            Failed::Transient(e.to_string())
        } else {
            Failed::Permanent(e.to_string())
        }
    }
}

/// A refusal of the domain (a blob listed with another size than before) names the
/// reference and is final; a store failure is worth retrying.
pub fn refused(reference: &str, e: ServiceError) -> Failed {
    match e {
        ServiceError::Domain(DomainError::NotFound {
            resource: "image",
            id,
        }) => Failed::Permanent(format!("image {id} not found")),
        ServiceError::Domain(e) => Failed::Permanent(format!("{reference}: {e}")),
        e => Failed::Transient(e.to_string()),
    }
}

/// The image of namespace `namespace_id` named `name`, created when missing. A created image
/// gets an id derived from the namespace and the name, so a rerun finds the one it made.
pub async fn image_for(
    registry: &Registry<crate::store::Store>,
    namespace_id: &str,
    name: &str,
    meta: &Metadata,
) -> Result<String, Failed> {
    let found = registry
        .store()
        .image_by_name(namespace_id, name)
        .await
        .map_err(|e| Failed::Transient(e.to_string()))?;
    if let Some(row) = found {
        return Ok(row.id);
    }
    let seed = format!("import/{namespace_id}/{name}");
    let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, seed.as_bytes()).to_string();
    let create = ImageCommand::Create {
        namespace_id: namespace_id.to_owned(),
        name: name.to_owned(),
        visibility: None,
    };
    match registry.image(&id, create, meta).await {
        Ok(_) | Err(ServiceError::Domain(DomainError::AlreadyExists { .. })) => Ok(id),
        Err(ServiceError::Domain(DomainError::NotFound { .. })) => Err(Failed::Permanent(format!(
            "namespace {namespace_id} not found"
        ))),
        Err(e) => Err(refused(name, e)),
    }
}

/// A manifest fetched and verified with everything it needs: the manifests to record (an
/// index's children first) and the digest a tag should point at.
#[derive(Debug, Clone)]
pub struct Verified {
    /// `repository:tag` or `repository@digest`, for messages.
    pub named: String,
    pub manifests: Vec<crate::domain::event::ManifestRecorded>,
    pub digest: String,
}

/// Fetches manifest `reference` (a tag or a digest) of `repo` and, for an index, each child;
/// every one verified against its digest. Nothing is recorded.
pub async fn fetch(client: &Client, repo: &str, reference: &str) -> Result<Verified, Failed> {
    let named = if reference.starts_with("sha256:") {
        format!("{repo}@{reference}")
    } else {
        format!("{repo}:{reference}")
    };
    let top = client.manifest(repo, reference).await?;
    let parsed = parse(&named, &top)?;
    let mut manifests = Vec::new();
    if let Parsed::Index { children } = &parsed {
        for (digest, platform) in children {
            let child_ref = format!("{repo}@{digest}");
            let child = client.manifest(repo, digest).await?;
            let child_parsed = parse(&child_ref, &child)?;
            if matches!(child_parsed, Parsed::Index { .. }) {
                return Err(Failed::Permanent(format!(
                    "manifest {child_ref}: an index inside an index is not supported"
                )));
            }
            manifests.push(recorded(&child, child_parsed, platform.clone()));
        }
    }
    let digest = top.digest.clone();
    manifests.push(recorded(&top, parsed, None));
    Ok(Verified {
        named,
        manifests,
        digest,
    })
}

/// Records several verified manifests, each with the tag to point at it (if any), into
/// image `image_id` in one append. Returns the manifests recorded now (0 when all were
/// there).
pub async fn record_all<S: EventStore + ReadModels>(
    registry: &Registry<S>,
    batch: Vec<(Verified, Option<String>)>,
    image_id: &str,
    meta: &Metadata,
) -> Result<usize, Failed> {
    let named: Vec<String> = batch.iter().map(|(v, _)| v.named.clone()).collect();
    let mut manifests = Vec::new();
    let mut tags = Vec::new();
    for (v, tag) in batch {
        if let Some(tag) = tag {
            tags.push((tag, v.digest.clone(), uuid::Uuid::now_v7().to_string()));
        }
        manifests.extend(v.manifests);
    }
    let fetched = manifests.len();
    let events = registry
        .image(image_id, ImageCommand::Import { manifests, tags }, meta)
        .await
        .map_err(|e| refused(&named.join(", "), e))?;
    let (mut recorded, mut bytes) = (0, 0);
    for e in &events {
        if let DomainEvent::ManifestRecorded(m) = e {
            recorded += 1;
            bytes += m
                .config
                .iter()
                .chain(&m.layers)
                .map(|b| b.size)
                .sum::<i64>();
        }
    }
    crate::metric::imported(
        recorded as u64,
        fetched.saturating_sub(recorded) as u64,
        0,
        bytes.max(0) as u64,
    );
    Ok(recorded)
}

/// Fetches, verifies and records manifest `reference` of `repo` into image `image_id`, and
/// points `tag` at it when given. Returns the manifests recorded now.
pub async fn import_manifest(
    registry: &Registry<crate::store::Store>,
    client: &Client,
    repo: &str,
    reference: &str,
    tag: Option<&str>,
    image_id: &str,
    meta: &Metadata,
) -> Result<usize, Failed> {
    let verified = fetch(client, repo, reference).await?;
    let batch = vec![(verified, tag.map(str::to_owned))];
    record_all(registry, batch, image_id, meta).await
}
