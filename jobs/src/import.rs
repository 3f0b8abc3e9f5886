//! Import jobs: the tags of one repository of an OCI registry into an image (design §7).
//!
//! Tag by tag: the manifest (and, for an index, every child manifest) is fetched and verified
//! against its digest first; only when all of it checks out are the manifests recorded
//! (children before their index) and the tag pushed. So bad content records nothing, and a
//! rerun after a crash records only what is missing (recording a manifest again, or pushing a
//! tag to the digest it has, changes nothing).

use layerline_core::domain::image::{Image, ImageCommand};
use layerline_core::domain::source::ImportInput;
use layerline_core::domain::{DomainError, DomainEvent};
use layerline_core::oci::{Client, Credentials, OciError, Parsed, parse, recorded};
use layerline_core::service::ServiceError;
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

pub(crate) async fn import(input: ImportInput, ctx: &mut Ctx<'_>) -> Outcome {
    let source = &input.source;
    source
        .check()
        .map_err(|e| Failure::Permanent(e.to_string()))?;
    let credentials = match &source.credentials {
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
    let client = Client::new(&source.registry, credentials, CONCURRENCY).map_err(failure)?;
    let image: Image = ctx.registry().load(&input.image_id).await?;
    if image.created.is_none() || image.deleted {
        return Err(Failure::Permanent(format!(
            "image {} not found",
            input.image_id
        )));
    }
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
        for m in manifests {
            let events = ctx
                .registry()
                .image(&input.image_id, ImageCommand::RecordManifest(m), &ctx.meta)
                .await
                .map_err(|e| refused(&reference, e))?;
            recorded_now += events
                .iter()
                .filter(|e| matches!(e, DomainEvent::ManifestRecorded(_)))
                .count();
        }
        let push = ImageCommand::PushTag {
            name: tag.clone(),
            digest,
            new_tag_id: uuid::Uuid::now_v7().to_string(),
        };
        ctx.registry()
            .image(&input.image_id, push, &ctx.meta)
            .await
            .map_err(|e| refused(&reference, e))?;
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
