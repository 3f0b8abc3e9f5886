//! Import jobs (design §7): the tags of one repository of an OCI registry into an image, or
//! every repository of a catalog (or a list) into images of a namespace named after them.
//!
//! Tag by tag: the manifest (and, for an index, every child manifest) is fetched and verified
//! against its digest first; only when all of it checks out are the manifests recorded
//! (children before their index) and the tag pushed. So bad content records nothing, and a
//! rerun after a crash records only what is missing (recording a manifest again, or pushing a
//! tag to the digest it has, changes nothing).

use layerline_core::domain::image::{Image, ImageCommand};
use layerline_core::domain::source::{CatalogImport, CredentialsRef, ImportInput};
use layerline_core::domain::{DomainError, DomainEvent};
use layerline_core::oci::{Client, Credentials, OciError, Parsed, parse, recorded};
use layerline_core::service::ServiceError;
use layerline_core::store::ReadModels;
use serde_json::json;

use crate::runner::{Ctx, Failure, Outcome};

/// Requests in flight per import.
const CONCURRENCY: usize = 8;

fn failure(e: OciError) -> Failure {
    if e.is_transient() {
        Failure::Transient(e.to_string())
    } else {
        Failure::Permanent(e.to_string())
    }
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
    let mut recorded_now = 0;
    for (n, tag) in tags.iter().enumerate() {
        ctx.boundary(n as i64, total, &format!("import {repo}:{tag}"), false)
            .await?;
        recorded_now += import_tag(&client, repo, tag, &input.image_id, ctx).await?;
    }
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
        let image_id = image_for(&input.namespace_id, repo, ctx).await?;
        let tags = client.tags(repo).await.map_err(failure)?;
        for tag in &tags {
            recorded_now += import_tag(&client, repo, tag, &image_id, ctx).await?;
        }
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

/// The image of namespace `namespace_id` named `name`, created when missing. A created image
/// gets an id derived from the namespace and the name, so a rerun finds the one it made.
async fn image_for(namespace_id: &str, name: &str, ctx: &Ctx<'_>) -> Result<String, Failure> {
    let store = ctx.registry().store();
    for id in store
        .image_ids(namespace_id)
        .await
        .map_err(ServiceError::Store)?
    {
        if let Some(row) = store.image(&id).await.map_err(ServiceError::Store)?
            && row.name == name
        {
            return Ok(id);
        }
    }
    let seed = format!("import/{namespace_id}/{name}");
    let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, seed.as_bytes()).to_string();
    let create = ImageCommand::Create {
        namespace_id: namespace_id.to_owned(),
        name: name.to_owned(),
        visibility: None,
    };
    match ctx.registry().image(&id, create, &ctx.meta).await {
        Ok(_) | Err(ServiceError::Domain(DomainError::AlreadyExists { .. })) => Ok(id),
        Err(ServiceError::Domain(DomainError::NotFound { .. })) => Err(Failure::Permanent(
            format!("namespace {namespace_id} not found"),
        )),
        Err(e) => Err(refused(name, e)),
    }
}

/// Imports tag `tag` of `repo` into image `image_id`; returns the manifests it recorded.
async fn import_tag(
    client: &Client,
    repo: &str,
    tag: &str,
    image_id: &str,
    ctx: &Ctx<'_>,
) -> Result<usize, Failure> {
    let reference = format!("{repo}:{tag}");
    let top = client.manifest(repo, tag).await.map_err(failure)?;
    let parsed = parse(&reference, &top).map_err(failure)?;
    let mut manifests = Vec::new();
    if let Parsed::Index { children } = &parsed {
        for (digest, platform) in children {
            let child_ref = format!("{repo}@{digest}");
            let child = client.manifest(repo, digest).await.map_err(failure)?;
            let child_parsed = parse(&child_ref, &child).map_err(failure)?;
            if matches!(child_parsed, Parsed::Index { .. }) {
                return Err(Failure::Permanent(format!(
                    "manifest {child_ref}: an index inside an index is not supported"
                )));
            }
            manifests.push(recorded(&child, child_parsed, platform.clone()));
        }
    }
    let digest = top.digest.clone();
    manifests.push(recorded(&top, parsed, None));
    let mut recorded_now = 0;
    for m in manifests {
        let events = ctx
            .registry()
            .image(image_id, ImageCommand::RecordManifest(m), &ctx.meta)
            .await
            .map_err(|e| refused(&reference, e))?;
        recorded_now += events
            .iter()
            .filter(|e| matches!(e, DomainEvent::ManifestRecorded(_)))
            .count();
    }
    let push = ImageCommand::PushTag {
        name: tag.to_owned(),
        digest,
        new_tag_id: uuid::Uuid::now_v7().to_string(),
    };
    ctx.registry()
        .image(image_id, push, &ctx.meta)
        .await
        .map_err(|e| refused(&reference, e))?;
    Ok(recorded_now)
}

/// A refusal of the domain (a blob listed with another size than before) fails the job
/// naming the reference; a store failure is worth retrying.
fn refused(reference: &str, e: ServiceError) -> Failure {
    match e {
        ServiceError::Domain(DomainError::NotFound {
            resource: "image",
            id,
        }) => Failure::Permanent(format!("image {id} not found")),
        ServiceError::Domain(e) => Failure::Permanent(format!("{reference}: {e}")),
        e => Failure::Transient(e.to_string()),
    }
}
