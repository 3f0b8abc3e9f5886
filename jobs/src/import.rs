//! Import jobs (design §7): the tags of one repository of an OCI registry into an image, or
//! every repository of a catalog (or a list) into images of a namespace named after them.
//!
//! Tag by tag: the manifest (and, for an index, every child manifest) is fetched and verified
//! against its digest first; only when all of it checks out are the manifests recorded
//! (children before their index) and the tag pushed. So bad content records nothing, and a
//! rerun after a crash records only what is missing (recording a manifest again, or pushing a
//! tag to the digest it has, changes nothing).

use layerline_core::domain::image::Image;
use layerline_core::domain::source::{CatalogImport, CredentialsRef, ImportInput};
use layerline_core::importer::{Failed, fetch, image_for, record_all};
use layerline_core::metric;
use layerline_core::oci::{Client, Credentials};
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

/// Imports `tags` of `repo` into image `image_id`: up to [`CONCURRENCY`] tags are fetched and
/// verified at once, and each is recorded as soon as it is verified. Progress counts tags
/// (`done` of `total` from `at`) when `total` counts them, else stays at `at`.
async fn import_tags(
    client: &Client,
    repo: &str,
    tags: &[String],
    image_id: &str,
    at: i64,
    total: i64,
    ctx: &mut Ctx<'_>,
) -> Result<usize, Failure> {
    let per_tag = total == tags.len() as i64;
    let mut next = tags.iter();
    let mut fetching = tokio::task::JoinSet::new();
    let start = |fetching: &mut tokio::task::JoinSet<_>, tag: &String| {
        let (client, repo, tag) = (client.clone(), repo.to_owned(), tag.clone());
        fetching.spawn(async move {
            let verified = fetch(&client, &repo, &tag).await;
            (tag, verified)
        });
    };
    for tag in next.by_ref().take(CONCURRENCY) {
        start(&mut fetching, tag);
    }
    let (mut done, mut recorded_now) = (0, 0);
    while let Some(joined) = fetching.join_next().await {
        // Whatever else is verified by now goes in the same append.
        let mut ready = vec![joined];
        while let Some(more) = fetching.try_join_next() {
            ready.push(more);
        }
        let mut batch = Vec::with_capacity(ready.len());
        for joined in ready {
            let (tag, verified) =
                joined.map_err(|e| Failure::Transient(format!("a fetch task died: {e}")))?;
            let verified = verified.inspect_err(|_| metric::imported(0, 0, 1, 0));
            batch.push((verified.map_err(failure)?, Some(tag)));
        }
        let progress = if per_tag { at + done } else { at };
        let step = format!(
            "import {repo}:{}",
            batch[0].1.as_deref().unwrap_or_default()
        );
        ctx.boundary(progress, total, &step, false).await?;
        let count = batch.len();
        recorded_now += record_all(ctx.registry(), batch, image_id, &ctx.meta)
            .await
            .map_err(failure)?;
        done += count as i64;
        for tag in next.by_ref().take(count) {
            start(&mut fetching, tag);
        }
    }
    Ok(recorded_now)
}

/// The registry client for a source's registry and credentials.
fn client(registry: &str, credentials: Option<&CredentialsRef>) -> Result<Client, Failure> {
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
    let recorded_now = import_tags(&client, repo, &tags, &input.image_id, 0, total, ctx).await?;
    ctx.boundary(total, total, "done", true).await?;
    let image: Image = ctx.registry().load(&input.image_id).await?;
    Ok(json!({
        "registry": source.registry,
        "repository": repo,
        "tags": total,
        "manifests_recorded": recorded_now,
        "image_size": image.size,
    }))
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
    let (mut recorded_now, mut tags_seen) = (0, 0);
    for (n, repo) in repos.iter().enumerate() {
        ctx.boundary(n as i64, total, &format!("import {repo}"), false)
            .await?;
        input
            .source(repo)
            .check()
            .map_err(|e| Failure::Permanent(e.to_string()))?;
        let image_id = image_for(ctx.registry(), &input.namespace_id, repo, &ctx.meta)
            .await
            .map_err(failure)?;
        let tags = client.tags(repo).await.map_err(failure)?;
        recorded_now += import_tags(&client, repo, &tags, &image_id, n as i64, total, ctx).await?;
        tags_seen += tags.len();
    }
    ctx.boundary(total, total, "done", true).await?;
    Ok(json!({
        "registry": input.registry,
        "repositories": total,
        "tags": tags_seen,
        "manifests_recorded": recorded_now,
    }))
}
