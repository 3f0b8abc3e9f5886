//! Recording what a registry holds, the steps import jobs and the registry notification hook
//! share. A manifest (and, for an index, every child manifest) is fetched and verified before
//! anything is recorded, so bad content records nothing; recording again what is already
//! there changes nothing.

use std::collections::HashMap;
use std::sync::Arc;

use crate::domain::image::ImageCommand;
use crate::domain::{DomainError, DomainEvent};
use crate::oci::{Client, Fetched, OciError, Parsed, parse, recorded};
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

/// The client of `registry` with the credential set `credentials` names (read from this
/// process's environment), `concurrency` requests at once, reaching only what the
/// operator's egress policy allows (`oci::Egress`).
pub fn client_for(
    registry: &str,
    credentials: Option<&crate::domain::source::CredentialsRef>,
    concurrency: usize,
) -> Result<Client, Failed> {
    let env = |name: &str| std::env::var(name).ok();
    let (credentials, token_host) = match credentials {
        None => (crate::oci::Credentials::Anonymous, None),
        Some(c) => credential_set(registry, c, env)?,
    };
    Ok(Client::new(registry, credentials, concurrency)
        .and_then(Client::guarded)
        .map_err(Failed::from)?
        .with_token_host(token_host))
}

/// The credentials of the set `credentials` names, for `registry`, with the token host they
/// may also go to; `env` reads the workers' environment. Only the set's own variables
/// (`LAYERLINE_REGISTRY_<SET>_…`) are read, and a set is used only for the registry host it
/// is bound to, so a source can neither read another variable nor send a set to a host of
/// its choosing. Every refusal is permanent and names no secret.
pub fn credential_set(
    registry: &str,
    credentials: &crate::domain::source::CredentialsRef,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(crate::oci::Credentials, Option<String>), Failed> {
    use crate::domain::source::CREDENTIALS_PREFIX;
    let set = credentials
        .set_name()
        .map_err(|(field, reason)| Failed::Permanent(format!("credentials.{field}: {reason}")))?;
    let var = |what: &str| format!("{CREDENTIALS_PREFIX}{set}_{what}");
    let read = |what: &str| env(&var(what)).filter(|v| !v.is_empty());
    let host = read("HOST").ok_or_else(|| {
        Failed::Permanent(format!(
            "credential set {set} is not configured on this worker: {} names no host",
            var("HOST")
        ))
    })?;
    let wanted = crate::oci::host_of(registry);
    if wanted.as_deref() != Some(host.trim().to_ascii_lowercase().as_str()) {
        return Err(Failed::Permanent(format!(
            "credential set {set} is for {host}, not for {}; a set is only sent to its own host",
            wanted.as_deref().unwrap_or(registry)
        )));
    }
    // The legacy form names the username in the source; a set's own username wins.
    let username = read("USERNAME")
        .or_else(|| credentials.username.clone())
        .ok_or_else(|| {
            Failed::Permanent(format!(
                "credential set {set}: {} is not set",
                var("USERNAME")
            ))
        })?;
    let password = read("PASSWORD").ok_or_else(|| {
        Failed::Permanent(format!(
            "credential set {set}: {} is not set",
            var("PASSWORD")
        ))
    })?;
    Ok((
        crate::oci::Credentials::Basic { username, password },
        read("TOKEN_HOST"),
    ))
}

/// A namespace's backend registry with its client: imports copy there, prune runs and
/// notifications delete there, gc looks blobs up there.
#[derive(Debug, Clone)]
pub struct Linked {
    pub spec: crate::domain::source::NamespaceBackend,
    pub client: Client,
}

impl Linked {
    /// The backend of `spec`, `concurrency` requests at once.
    pub fn new(
        spec: crate::domain::source::NamespaceBackend,
        concurrency: usize,
    ) -> Result<Linked, Failed> {
        let client = client_for(&spec.registry, spec.credentials.as_ref(), concurrency)?;
        Ok(Linked { spec, client })
    }

    /// The backend repository of image `name`.
    pub fn repository(&self, name: &str) -> String {
        self.spec.repository(name)
    }
}

/// The backend registry namespace `namespace_id` is linked to, if any, ready to use.
pub async fn linked_backend(
    registry: &Registry<crate::store::Store>,
    namespace_id: &str,
    concurrency: usize,
) -> Result<Option<Linked>, Failed> {
    let namespace = registry
        .load_namespace(namespace_id)
        .await
        .map_err(|e| refused(namespace_id, e))?;
    namespace
        .backend
        .map(|spec| Linked::new(spec, concurrency))
        .transpose()
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
    /// The manifests as fetched, in the order of `manifests`: what a copy pushes.
    pub fetched: Vec<Fetched>,
    pub digest: String,
    /// Manifests whose config states a creation time before 1990 or in the future, which
    /// was ignored (`repository@digest`): what the import log reports.
    pub ages_ignored: Vec<String>,
}

/// Fetches manifest `reference` (a tag or a digest) of `repo` and, for an index, each child;
/// then, where the source has the OCI 1.1 referrers API, every manifest attached to those
/// (and to the attachments, at any depth). Every one is verified against its digest; nothing
/// is recorded.
pub async fn fetch(client: &Client, repo: &str, reference: &str) -> Result<Verified, Failed> {
    let named = if reference.starts_with("sha256:") {
        format!("{repo}@{reference}")
    } else {
        format!("{repo}:{reference}")
    };
    let top = client.manifest(repo, reference).await?;
    let digest = top.digest.clone();
    let (mut manifests, mut fetched) = tree(client, repo, &named, top).await?;
    // An image's age: its annotation (already read), else its config's `created`; an index
    // without an annotation is as old as its newest child.
    let mut ages_ignored = Vec::new();
    for m in manifests.iter_mut().filter(|m| m.created.is_none()) {
        if let Some(config) = &m.config {
            let (created, ignored) =
                config_created(client, repo, &named, &config.digest, config.size).await?;
            m.created = created;
            if ignored {
                ages_ignored.push(format!("{repo}@{}", m.digest));
            }
        }
    }
    // The children come first in `manifests`, the index last.
    if let Some((top, children)) = manifests.split_last_mut()
        && top.created.is_none()
    {
        top.created = children.iter().filter_map(|m| m.created.clone()).max();
    }
    // Attachments after what they are attached to, so a copy pushes a subject first. Their
    // age is their subject's business: their configs are not read (cosign's says year 1).
    let mut seen: std::collections::HashSet<String> =
        fetched.iter().map(|f| f.digest.clone()).collect();
    let mut asking: Vec<String> = fetched.iter().map(|f| f.digest.clone()).collect();
    while let Some(subject) = asking.pop() {
        let Some(referrers) = client.referrers(repo, &subject).await? else {
            // No referrers API: the tag schemes, which a tag walk sees, say the rest.
            break;
        };
        for referrer in referrers {
            if !seen.insert(referrer.clone()) {
                continue;
            }
            if seen.len() > crate::oci::MAX_REFERRERS {
                return Err(Failed::Permanent(format!(
                    "{named}: more than {} manifests attached",
                    crate::oci::MAX_REFERRERS
                )));
            }
            let at = format!("{repo}@{referrer}");
            let attachment = client.manifest(repo, &referrer).await?;
            let (more, more_fetched) = tree(client, repo, &at, attachment).await?;
            for f in &more_fetched {
                seen.insert(f.digest.clone());
                asking.push(f.digest.clone());
            }
            manifests.extend(more);
            fetched.extend(more_fetched);
        }
    }
    Ok(Verified {
        named,
        manifests,
        fetched,
        digest,
        ages_ignored,
    })
}

/// The manifests to record of fetched manifest `top` (named `named`): for an index, each
/// child (fetched and verified) first, then the index; with the manifests as fetched, in the
/// same order.
async fn tree(
    client: &Client,
    repo: &str,
    named: &str,
    top: Fetched,
) -> Result<(Vec<crate::domain::event::ManifestRecorded>, Vec<Fetched>), Failed> {
    let parsed = parse(named, &top)?;
    let (mut manifests, mut fetched) = (Vec::new(), Vec::new());
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
            fetched.push(child);
        }
    }
    manifests.push(recorded(&top, parsed, None));
    fetched.push(top);
    Ok((manifests, fetched))
}

/// Largest image config read for its creation time, in bytes.
const MAX_CONFIG_BYTES: i64 = 1024 * 1024;

/// The creation time image config `digest` (of `size` bytes) of `repo` states, when it states
/// a sane one, and whether it stated one that was ignored: a time before 1990 or in the
/// future is logged and ignored, and the image's age is then when it is recorded.
async fn config_created(
    client: &Client,
    repo: &str,
    named: &str,
    digest: &str,
    size: i64,
) -> Result<(Option<String>, bool), Failed> {
    if !(0..=MAX_CONFIG_BYTES).contains(&size) {
        return Ok((None, false));
    }
    let (res, _) = client.blob(repo, digest).await?;
    let bytes = res
        .bytes()
        .await
        .map_err(|e| Failed::Transient(format!("config {digest} of {named}: {e}")))?;
    let (created, stated) = crate::oci::config_created(&bytes, chrono::Utc::now());
    let ignored = created.is_none() && stated;
    if ignored {
        tracing::warn!(
            manifest = named,
            config = digest,
            "the image config's creation time is before 1990 or in the future; its age is \
             taken as the time it is recorded"
        );
    }
    Ok((created, ignored))
}

/// Records several verified manifests, each with the tag to point at it (if any), into
/// image `image_id` in one append, the tags pushed at `pushed_at` when the source said when
/// (else at their image's creation time). Returns the manifests recorded now (0 when all
/// were there).
pub async fn record_all<S: EventStore + ReadModels>(
    registry: &Registry<S>,
    batch: Vec<(Verified, Option<String>)>,
    pushed_at: Option<String>,
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
        .image(
            image_id,
            ImageCommand::Import {
                manifests,
                tags,
                pushed_at,
            },
            meta,
        )
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

/// What copying to a backend registry did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Copied {
    /// Blobs the backend had already, blobs it mounted from another of its repositories,
    /// blobs uploaded (and their bytes).
    pub blobs_present: u64,
    pub blobs_mounted: u64,
    pub blobs_uploaded: u64,
    pub bytes_uploaded: u64,
    pub manifests_pushed: u64,
}

impl std::ops::AddAssign for Copied {
    fn add_assign(&mut self, o: Copied) {
        self.blobs_present += o.blobs_present;
        self.blobs_mounted += o.blobs_mounted;
        self.blobs_uploaded += o.blobs_uploaded;
        self.bytes_uploaded += o.bytes_uploaded;
        self.manifests_pushed += o.manifests_pushed;
    }
}

/// How a blob came to be in the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlobCopy {
    Present,
    Mounted,
    Uploaded,
}

/// The blobs and manifests one job has put in (or found in) a backend repository, so tags
/// copied at once that share a layer or a manifest move it once: the first to need it copies
/// it, the others wait for it.
#[derive(Debug, Default)]
pub struct BlobsDone {
    blobs: std::sync::Mutex<HashMap<String, Arc<tokio::sync::OnceCell<BlobCopy>>>>,
    /// Manifests pushed; held while pushing.
    manifests: tokio::sync::Mutex<std::collections::HashSet<String>>,
}

impl BlobsDone {
    fn cell(&self, digest: &str) -> Arc<tokio::sync::OnceCell<BlobCopy>> {
        let mut cells = self.blobs.lock().expect("never poisoned");
        cells.entry(digest.to_owned()).or_default().clone()
    }
}

/// Copies verified manifest `v` of `repo` at `source` to `target_repo` at `backend`: each
/// blob the backend lacks (mounted from `repo` when both are the same registry, else
/// streamed across; the backend checks the bytes against the digest), then each manifest by
/// digest, children before their index, and the tag last. Everything is keyed by digest, so
/// a rerun pushes nothing twice that is already there; `done` spares blobs that concurrent
/// copies of the same job share.
pub async fn copy(
    source: &Client,
    repo: &str,
    backend: &Client,
    target_repo: &str,
    v: &Verified,
    tag: Option<&str>,
    done: &BlobsDone,
) -> Result<Copied, Failed> {
    let mut copied = Copied::default();
    let same_registry = source.base() == backend.base();
    for manifest in &v.manifests {
        for blob in manifest.config.iter().chain(&manifest.layers) {
            let cell = done.cell(&blob.digest);
            let mine = std::sync::atomic::AtomicBool::new(false);
            let how = cell
                .get_or_try_init(|| async {
                    mine.store(true, std::sync::atomic::Ordering::Relaxed);
                    if backend.has_blob(target_repo, &blob.digest).await? {
                        return Ok::<_, Failed>(BlobCopy::Present);
                    }
                    if same_registry
                        && repo != target_repo
                        && backend.mount_blob(target_repo, &blob.digest, repo).await?
                    {
                        return Ok(BlobCopy::Mounted);
                    }
                    copy_blob(source, repo, backend, target_repo, &blob.digest).await?;
                    Ok(BlobCopy::Uploaded)
                })
                .await?;
            if !mine.load(std::sync::atomic::Ordering::Relaxed) {
                continue;
            }
            match how {
                BlobCopy::Present => copied.blobs_present += 1,
                BlobCopy::Mounted => copied.blobs_mounted += 1,
                BlobCopy::Uploaded => {
                    copied.blobs_uploaded += 1;
                    copied.bytes_uploaded += blob.size.max(0) as u64;
                }
            }
        }
    }
    // One manifest write at a time per repository: CNCF distribution's filesystem storage
    // rewrites a manifest in place, so an index checked while its child is being written
    // again (the child's own tag, copied at once) can fail. Manifests are small; the blobs
    // above are what runs in parallel.
    let mut pushed = done.manifests.lock().await;
    copied.manifests_pushed += push_manifests(backend, target_repo, v, tag, &mut pushed).await?;
    Ok(copied)
}

/// Pushes `v`'s manifests by digest (children first) unless `pushed` holds them, then `tag`
/// (when given) to the top one; returns how many manifests it pushed.
///
/// A manifest with a `subject` pushed to a registry without the referrers API (it does not
/// answer `OCI-Subject`) is also listed, as OCI distribution 1.1 asks of a client, in the
/// index the referrers tag schema names `sha256-<subject hex>` there, so clients find it at
/// the backend as they did at the source; unless `tag` is that very index, copied whole from
/// a source that kept one.
pub async fn push_manifests(
    backend: &Client,
    target_repo: &str,
    v: &Verified,
    tag: Option<&str>,
    pushed: &mut std::collections::HashSet<String>,
) -> Result<u64, OciError> {
    let mut count = 0;
    // Per subject, the descriptors its fallback index must list.
    let mut unlisted: Vec<(&str, serde_json::Value)> = Vec::new();
    for (f, m) in v.fetched.iter().zip(&v.manifests) {
        if pushed.contains(&f.digest) {
            continue;
        }
        let processed = backend
            .put_manifest(target_repo, &f.digest, &f.media_type, &f.body)
            .await?;
        pushed.insert(f.digest.clone());
        count += 1;
        if let (false, Some(subject)) = (processed, m.subject.as_deref())
            && tag != Some(fallback_tag(subject).as_str())
        {
            unlisted.push((subject, referrer_descriptor(f)));
        }
    }
    let mut subjects: Vec<&str> = Vec::new();
    for (s, _) in &unlisted {
        if !subjects.contains(s) {
            subjects.push(s);
        }
    }
    for subject in subjects {
        let listed = unlisted
            .iter()
            .filter(|(s, _)| *s == subject)
            .map(|(_, d)| d);
        list_referrers(backend, target_repo, subject, listed).await?;
    }
    let top = v.fetched.iter().find(|f| f.digest == v.digest);
    if let (Some(tag), Some(top)) = (tag, top) {
        backend
            .put_manifest(target_repo, tag, &top.media_type, &top.body)
            .await?;
    }
    Ok(count)
}

/// The tag the OCI referrers tag schema gives the index of `subject`'s referrers.
pub fn fallback_tag(subject: &str) -> String {
    subject.replacen(':', "-", 1)
}

/// The descriptor of referrer `f` as a referrers list holds it: its media type, digest and
/// size, its `artifactType` (else its config's media type) and its annotations.
fn referrer_descriptor(f: &Fetched) -> serde_json::Value {
    let body: serde_json::Value = serde_json::from_slice(&f.body).unwrap_or_default();
    let mut d = serde_json::json!({
        "mediaType": f.media_type,
        "digest": f.digest,
        "size": f.body.len(),
    });
    let artifact_type = body
        .get("artifactType")
        .or_else(|| body.get("config").and_then(|c| c.get("mediaType")));
    if let Some(t) = artifact_type {
        d["artifactType"] = t.clone();
    }
    if let Some(a) = body.get("annotations") {
        d["annotations"] = a.clone();
    }
    d
}

/// Adds `descriptors` (those it lacks) to `subject`'s referrers tag schema index in
/// `repository` at `backend`, starting an empty one when there is none. Anything but an OCI
/// index under that tag is an error naming it. The index it replaces stays, untagged: it may
/// be one the metadata records (copied from a source), which only a prune may delete.
async fn list_referrers(
    backend: &Client,
    repository: &str,
    subject: &str,
    descriptors: impl Iterator<Item = &serde_json::Value>,
) -> Result<(), OciError> {
    let tag = fallback_tag(subject);
    let mut index = match backend.manifest(repository, &tag).await {
        Ok(found) => {
            let index: serde_json::Value = serde_json::from_slice(&found.body).unwrap_or_default();
            if index["mediaType"] != crate::oci::OCI_INDEX || !index["manifests"].is_array() {
                return Err(OciError::BadManifest {
                    reference: format!("{repository}:{tag}"),
                    reason: "the referrers tag schema's tag holds something else than an \
                             OCI index"
                        .to_owned(),
                });
            }
            index
        }
        Err(OciError::NotFound { .. }) => {
            serde_json::json!({"schemaVersion": 2, "mediaType": crate::oci::OCI_INDEX,
                               "manifests": []})
        }
        Err(e) => return Err(e),
    };
    let list = index["manifests"].as_array_mut().expect("checked");
    let mut added = false;
    for d in descriptors {
        if !list.iter().any(|l| l["digest"] == d["digest"]) {
            list.push(d.clone());
            added = true;
        }
    }
    if !added {
        return Ok(());
    }
    let body = index.to_string().into_bytes();
    backend
        .put_manifest(repository, &tag, crate::oci::OCI_INDEX, &body)
        .await?;
    Ok(())
}

/// Streams blob `digest` from `source` to `backend`, trying again (from the start) when a
/// transfer fails transiently: a stream sent once cannot be resent.
async fn copy_blob(
    source: &Client,
    repo: &str,
    backend: &Client,
    target_repo: &str,
    digest: &str,
) -> Result<(), Failed> {
    const TRIES: u32 = 3;
    let mut tried = 0;
    loop {
        tried += 1;
        let (res, size) = source.blob(repo, digest).await?;
        let body = reqwest::Body::wrap_stream(res.bytes_stream());
        match backend.push_blob(target_repo, digest, size, body).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() && tried < TRIES => {
                tracing::warn!(%e, digest, "copying a blob failed; trying again");
            }
            Err(e) => return Err(e.into()),
        }
    }
}
