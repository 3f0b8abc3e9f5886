//! Import jobs (design §7): the tags of one repository of an OCI registry into an image, or
//! every repository of a catalog (or a list) into images of a namespace named after them.
//!
//! Tag by tag: the manifest (and, for an index, every child manifest) is fetched and verified
//! against its digest first; only when all of it checks out are the manifests recorded
//! (children before their index) and the tag pushed. So bad content records nothing, and a
//! rerun after a crash records only what is missing (recording a manifest again, or pushing a
//! tag to the digest it has, changes nothing).

use layerline_core::domain::image::Image;
use layerline_core::domain::source::NamespaceBackend;
use layerline_core::domain::source::{CatalogImport, CredentialsRef, ImportInput};
use layerline_core::importer::{
    BlobsDone, Copied, Failed, Verified, copy, fetch, image_for, record_all,
};
use layerline_core::metric;
use layerline_core::oci::{Client, Credentials};
use layerline_core::store::ReadModels;
use serde_json::json;

use crate::runner::{Ctx, Failure, Outcome};

/// Requests in flight per import.
const CONCURRENCY: usize = 8;

fn failure(e: impl Into<Failed>) -> Failure {
    match e.into() {
        Failed::Transient(m) => Failure::Transient(m),
        Failed::Permanent(m) => Failure::Permanent(m),
    }
}

/// Where a backend-linked namespace's images are copied: the backend's client and the
/// repository of the image being imported.
#[derive(Clone)]
struct Target {
    client: Client,
    repository: String,
    /// The blobs this job has copied to `repository` so far.
    blobs: std::sync::Arc<BlobsDone>,
}

/// Verified tags to record into one image, each with its tag.
type Batch = Vec<(Verified, Option<String>)>;

/// One tag to import: where it comes from and the image (and backend) it goes to.
struct Item {
    repo: String,
    tag: String,
    image_id: String,
    target: Option<Target>,
}

/// Imports `items`, in one pipeline whatever repository each comes from: [`CONCURRENCY`] tags
/// are fetched and verified (and copied to their backend, when there is one) at all times, and
/// whatever is verified when one finishes is recorded, one append per image, while the next
/// ones are fetched. Progress counts tags. Returns the manifests recorded now and what the
/// copies did.
async fn import_items(
    client: &Client,
    items: Vec<Item>,
    ctx: &mut Ctx<'_>,
) -> Result<(usize, Copied), Failure> {
    let total = items.len() as i64;
    let mut next = items.into_iter();
    let mut fetching = tokio::task::JoinSet::new();
    let mut copied = Copied::default();
    let start = |fetching: &mut tokio::task::JoinSet<_>, item: Item| {
        let client = client.clone();
        fetching.spawn(async move {
            let Item {
                repo,
                tag,
                image_id,
                target,
            } = item;
            let verified = match fetch(&client, &repo, &tag).await {
                Ok(v) => v,
                Err(e) => return (image_id, repo, tag, Err(e)),
            };
            // Copied before it is recorded: what the metadata lists, the backend serves.
            let copy = match &target {
                Some(t) => copy(
                    &client,
                    &repo,
                    &t.client,
                    &t.repository,
                    &verified,
                    Some(&tag),
                    &t.blobs,
                )
                .await
                .map_err(|e| match e {
                    Failed::Permanent(m) => {
                        Failed::Permanent(format!("copying {repo}:{tag} to the backend: {m}"))
                    }
                    transient => transient,
                }),
                None => Ok(Copied::default()),
            };
            (image_id, repo, tag, copy.map(|c| (verified, c)))
        });
    };
    for item in next.by_ref().take(CONCURRENCY) {
        start(&mut fetching, item);
    }
    let (mut done, mut recorded_now) = (0, 0);
    while let Some(joined) = fetching.join_next().await {
        // Whatever else is verified by now goes in the same append.
        let mut ready = vec![joined];
        while let Some(more) = fetching.try_join_next() {
            ready.push(more);
        }
        // The pipeline stays full while these are recorded.
        for item in next.by_ref().take(ready.len()) {
            start(&mut fetching, item);
        }
        let count = ready.len() as i64;
        let mut by_image: Vec<(String, Batch)> = Vec::new();
        let mut step = String::new();
        for joined in ready {
            let (image_id, repo, tag, verified) =
                joined.map_err(|e| Failure::Transient(format!("a fetch task died: {e}")))?;
            let (verified, copy) = verified
                .inspect_err(|_| metric::imported(0, 0, 1, 0))
                .map_err(failure)?;
            copied += copy;
            if step.is_empty() {
                step = format!("import {repo}:{tag}");
            }
            match by_image.iter_mut().find(|(id, _)| *id == image_id) {
                Some((_, batch)) => batch.push((verified, Some(tag))),
                None => by_image.push((image_id, vec![(verified, Some(tag))])),
            }
        }
        ctx.boundary(done, total, &step, false).await?;
        for (image_id, batch) in by_image {
            recorded_now += record_all(ctx.registry(), batch, &image_id, &ctx.meta)
                .await
                .map_err(failure)?;
        }
        done += count;
    }
    Ok((recorded_now, copied))
}

/// The registry client for a registry and its credentials.
pub(crate) fn client(
    registry: &str,
    credentials: Option<&CredentialsRef>,
) -> Result<Client, Failure> {
    let credentials = match credentials {
        None => Credentials::Anonymous,
        Some(c) => Credentials::Basic {
            username: c.username.clone(),
            password: std::env::var(&c.password_env).map_err(|_| {
                Failure::Permanent(format!(
                    "the worker has no environment variable {} (the source's password_env)",
                    c.password_env
                ))
            })?,
        },
    };
    Client::new(registry, credentials, CONCURRENCY).map_err(failure)
}

pub(crate) async fn import(input: ImportJob, ctx: &mut Ctx<'_>) -> Outcome {
    match input {
        ImportJob::Image(input) => import_image(input, ctx).await,
        ImportJob::Catalog(input) => import_catalog(input, ctx).await,
    }
}

/// An import job's input: one repository into an image, or a catalog into a namespace.
#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
pub enum ImportJob {
    Image(ImportInput),
    Catalog(CatalogImport),
}

async fn import_image(input: ImportInput, ctx: &mut Ctx<'_>) -> Outcome {
    let source = &input.source;
    source
        .check()
        .map_err(|e| Failure::Permanent(e.to_string()))?;
    let client = client(&source.registry, source.credentials.as_ref())?;
    let repo = &source.repository;
    let tags = match &source.tags {
        Some(tags) => tags.clone(),
        None => client.tags(repo).await.map_err(failure)?,
    };
    let total = tags.len() as i64;
    let row = ctx
        .registry()
        .store()
        .image(&input.image_id)
        .await
        .map_err(|e| Failure::Transient(e.to_string()))?
        .ok_or_else(|| Failure::Permanent(format!("image {} not found", input.image_id)))?;
    let backend = backend_of(ctx, &row.namespace_id).await?;
    let target = match &backend {
        Some(b) => Some(target(b, &row.name)?),
        None => None,
    };
    let items = tags
        .iter()
        .map(|tag| Item {
            repo: repo.clone(),
            tag: tag.clone(),
            image_id: input.image_id.clone(),
            target: target.clone(),
        })
        .collect();
    let (recorded_now, copied) = import_items(&client, items, ctx).await?;
    ctx.boundary(total, total, "done", true).await?;
    let image: Image = ctx.registry().load(&input.image_id).await?;
    let mut output = json!({
        "registry": source.registry,
        "repository": repo,
        "tags": total,
        "manifests_recorded": recorded_now,
        "image_size": image.size,
    });
    if let Some(b) = backend {
        output["backend"] = backend_output(&b, copied);
    }
    Ok(output)
}

async fn import_catalog(input: CatalogImport, ctx: &mut Ctx<'_>) -> Outcome {
    input
        .check()
        .map_err(|e| Failure::Permanent(e.to_string()))?;
    let client = client(&input.registry, input.credentials.as_ref())?;
    let repos = match &input.repositories {
        Some(r) => r.clone(),
        None => client.catalog().await.map_err(failure)?,
    };
    let total = repos.len() as i64;
    let backend = backend_of(ctx, &input.namespace_id).await?;
    // First every repository's image and tag list, then one pipeline over all the tags.
    let mut items = Vec::new();
    for (n, repo) in repos.iter().enumerate() {
        ctx.boundary(n as i64, total, &format!("list {repo}"), false)
            .await?;
        input
            .source(repo)
            .check()
            .map_err(|e| Failure::Permanent(e.to_string()))?;
        let image_id = image_for(ctx.registry(), &input.namespace_id, repo, &ctx.meta)
            .await
            .map_err(failure)?;
        let target = match &backend {
            Some(b) => Some(target(b, repo)?),
            None => None,
        };
        for tag in client.tags(repo).await.map_err(failure)? {
            items.push(Item {
                repo: repo.clone(),
                tag,
                image_id: image_id.clone(),
                target: target.clone(),
            });
        }
    }
    let tags_seen = items.len();
    let (recorded_now, copied) = import_items(&client, items, ctx).await?;
    let tags = tags_seen as i64;
    ctx.boundary(tags, tags, "done", true).await?;
    let mut output = json!({
        "registry": input.registry,
        "repositories": total,
        "tags": tags_seen,
        "manifests_recorded": recorded_now,
    });
    if let Some(b) = backend {
        output["backend"] = backend_output(&b, copied);
    }
    Ok(output)
}

/// The backend registry namespace `namespace_id` is linked to, if any.
async fn backend_of(
    ctx: &Ctx<'_>,
    namespace_id: &str,
) -> Result<Option<NamespaceBackend>, Failure> {
    Ok(ctx.registry().load_namespace(namespace_id).await?.backend)
}

/// Where image `name` goes on backend `b`.
fn target(b: &NamespaceBackend, name: &str) -> Result<Target, Failure> {
    Ok(Target {
        client: client(&b.registry, b.credentials.as_ref())?,
        repository: b.repository(name),
        blobs: Default::default(),
    })
}

fn backend_output(b: &NamespaceBackend, copied: Copied) -> serde_json::Value {
    let mut out = serde_json::to_value(copied).unwrap_or_default();
    out["registry"] = b.registry.clone().into();
    out["prefix"] = b.prefix.clone().into();
    out
}
