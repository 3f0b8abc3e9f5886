//! What each kind of job does, step by step. A step is one effect (one append to the
//! affected stream); between steps the handler passes a boundary, where a cancel stops it and
//! progress is recorded.

use std::time::Duration;

use layerline_core::domain::DomainError;
use layerline_core::domain::image::{Image, ImageCommand};
use layerline_core::domain::job::JobKind;
use layerline_core::domain::namespace::{Namespace, NamespaceCommand};
use layerline_core::domain::{Aggregate, DomainEvent};
use layerline_core::service::{Registry, ServiceError};
use layerline_core::store::{EventStore, ReadModels, Store};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::runner::{Ctx, Failure, Outcome};

pub(crate) async fn run(kind: JobKind, input: &Value, ctx: &mut Ctx<'_>) -> Outcome {
    match kind {
        JobKind::DeleteImage => delete_image(parse(input)?, ctx).await,
        JobKind::DeleteNamespace => delete_namespace(parse(input)?, ctx).await,
        JobKind::DeleteTag => delete_tags(parse(input)?, ctx).await,
        JobKind::Probe => probe(parse(input)?, ctx).await,
        JobKind::Prune => crate::prune::prune(parse(input)?, ctx).await,
        JobKind::Import => crate::import::import(parse(input)?, ctx).await,
        JobKind::Gc => crate::gc::gc(parse(input)?, ctx).await,
    }
}

fn parse<T: serde::de::DeserializeOwned>(input: &Value) -> Result<T, Failure> {
    serde_json::from_value(input.clone())
        .map_err(|e| Failure::Permanent(format!("bad job input: {e}")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteImage {
    pub image_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteNamespace {
    pub namespace_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteTags {
    pub tag_ids: Vec<String>,
    /// Also delete other tags sharing a deleted tag's manifest (else such a tag is refused).
    #[serde(default)]
    pub force: bool,
}

/// A diagnostic job: `steps` steps of `step_ms` each; the first `fail_attempts` attempts fail
/// (`failure`: `transient`, retried with backoff, or `permanent`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    #[serde(default)]
    pub steps: i64,
    #[serde(default)]
    pub step_ms: u64,
    #[serde(default)]
    pub fail_attempts: i64,
    #[serde(default)]
    pub failure: Option<String>,
}

/// Largest probe: bounded so a caller cannot park a worker for long.
pub const PROBE_MAX_STEPS: i64 = 100_000;
pub const PROBE_MAX_STEP_MS: u64 = 10_000;

async fn probe(p: Probe, ctx: &mut Ctx<'_>) -> Outcome {
    if !(0..=PROBE_MAX_STEPS).contains(&p.steps) || p.step_ms > PROBE_MAX_STEP_MS {
        return Err(Failure::Permanent(format!(
            "a probe has 0 to {PROBE_MAX_STEPS} steps of at most {PROBE_MAX_STEP_MS} ms"
        )));
    }
    for done in 0..p.steps {
        ctx.boundary(done, p.steps, &format!("step {}", done + 1), false)
            .await?;
        if p.step_ms > 0 {
            tokio::time::sleep(Duration::from_millis(p.step_ms)).await;
        }
    }
    if ctx.attempt <= p.fail_attempts {
        let message = format!("probe fails attempt {} on purpose", ctx.attempt);
        return Err(match p.failure.as_deref() {
            Some("permanent") => Failure::Permanent(message),
            _ => Failure::Transient(message),
        });
    }
    if p.steps > 0 {
        ctx.boundary(p.steps, p.steps, "done", true).await?;
    }
    Ok(json!({"steps": p.steps, "attempt": ctx.attempt}))
}

async fn delete_image(d: DeleteImage, ctx: &mut Ctx<'_>) -> Outcome {
    let image: Image = ctx.registry().load(&d.image_id).await?;
    let tags = live_tags(&image);
    let total = tags.len() as i64 + 1;
    let bytes = image.size;
    remove_image(&d.image_id, tags, 0, total, ctx).await?;
    ctx.boundary(total, total, "done", true).await?;
    let tags_deleted = effects(ctx, &d.image_id, |e| {
        matches!(e, DomainEvent::TagDeleted(_))
    })
    .await?;
    Ok(json!({
        "image_id": d.image_id,
        "tags_deleted": tags_deleted,
        "bytes_reclaimed": bytes,
    }))
}

async fn delete_namespace(d: DeleteNamespace, ctx: &mut Ctx<'_>) -> Outcome {
    let namespace: Namespace = ctx.registry().load(&d.namespace_id).await?;
    if namespace.created.is_none() || namespace.deleted {
        return Ok(
            json!({"namespace_id": d.namespace_id, "images_deleted": 0, "already_gone": true}),
        );
    }
    let ids = ctx
        .registry()
        .store()
        .image_ids(&d.namespace_id)
        .await
        .map_err(ServiceError::Store)?;
    let mut images = Vec::with_capacity(ids.len());
    for id in ids {
        let image: Image = ctx.registry().load(&id).await?;
        images.push((id, live_tags(&image), image.size));
    }
    let total = images
        .iter()
        .map(|(_, t, _)| t.len() as i64 + 1)
        .sum::<i64>()
        + 1;
    let mut done = 0;
    let mut bytes = 0;
    for (id, tags, size) in &images {
        let steps = tags.len() as i64 + 1;
        remove_image(id, tags.clone(), done, total, ctx).await?;
        done += steps;
        bytes += size;
    }
    ctx.boundary(done, total, "delete the namespace", false)
        .await?;
    match ctx
        .registry()
        .namespace(&d.namespace_id, NamespaceCommand::Delete, &ctx.meta)
        .await
    {
        Ok(_) | Err(ServiceError::Domain(DomainError::NotFound { .. })) => {}
        Err(e) => return Err(e.into()),
    }
    ctx.boundary(total, total, "done", true).await?;
    Ok(json!({
        "namespace_id": d.namespace_id,
        "images_deleted": images.len(),
        "bytes_reclaimed": bytes,
    }))
}

async fn delete_tags(d: DeleteTags, ctx: &mut Ctx<'_>) -> Outcome {
    let total = d.tag_ids.len() as i64;
    let mut refused = Vec::new();
    for (i, tag_id) in d.tag_ids.iter().enumerate() {
        ctx.boundary(i as i64, total, &format!("delete tag {tag_id}"), false)
            .await?;
        // Gone already (deleted by an earlier attempt, or by hand): nothing to do.
        let Some(tag) = ctx
            .registry()
            .store()
            .tag(tag_id)
            .await
            .map_err(ServiceError::Store)?
        else {
            continue;
        };
        let cmd = ImageCommand::DeleteTag {
            name: tag.name.clone(),
            force: d.force,
        };
        match ctx.registry().image(&tag.image_id, cmd, &ctx.meta).await {
            Ok(_) | Err(ServiceError::Domain(DomainError::NotFound { .. })) => {}
            Err(ServiceError::Domain(e)) => {
                refused.push(json!({"tag_id": tag_id, "error": e.to_string()}))
            }
            Err(e) => return Err(e.into()),
        }
    }
    ctx.boundary(total, total, "done", true).await?;
    Ok(json!({"tags_requested": total, "refused": refused}))
}

fn live_tags(image: &Image) -> Vec<String> {
    if image.created.is_none() || image.deleted {
        return Vec::new();
    }
    image.tags.keys().cloned().collect()
}

/// Tags deleted per step (one append each): small enough that a cancel lands soon, large
/// enough that the image is not folded again for every tag.
const TAGS_PER_STEP: usize = 10;

/// Deletes an image a few tags at a time (each tag counts as one step, numbered from
/// `done`), then the image with whatever manifests are left.
async fn remove_image(
    id: &str,
    tags: Vec<String>,
    done: i64,
    total: i64,
    ctx: &mut Ctx<'_>,
) -> Result<(), Failure> {
    let mut at = done;
    for chunk in tags.chunks(TAGS_PER_STEP) {
        ctx.boundary(at, total, &format!("delete tags {}…", chunk[0]), false)
            .await?;
        let cmd = ImageCommand::DeleteTags {
            names: chunk.to_vec(),
        };
        match ctx.registry().image(id, cmd, &ctx.meta).await {
            Ok(_) | Err(ServiceError::Domain(DomainError::NotFound { .. })) => {}
            Err(e) => return Err(e.into()),
        }
        at += chunk.len() as i64;
    }
    ctx.boundary(at, total, &format!("delete image {id}"), false)
        .await?;
    match ctx
        .registry()
        .image(id, ImageCommand::Delete, &ctx.meta)
        .await
    {
        Ok(_) | Err(ServiceError::Domain(DomainError::NotFound { .. })) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// How many events on image `id`'s stream this job recorded that match `which` (over all
/// its attempts: the summary is the log's, not one attempt's).
async fn effects(
    ctx: &Ctx<'_>,
    id: &str,
    which: impl Fn(&DomainEvent) -> bool,
) -> Result<i64, Failure> {
    let events = ours(ctx.registry(), &ctx.job_id, id).await?;
    Ok(events.iter().filter(|e| which(e)).count() as i64)
}

/// The events on image `id`'s stream that job `job_id` recorded, over all its attempts.
pub(crate) async fn ours(
    registry: &Registry<Store>,
    job_id: &str,
    id: &str,
) -> Result<Vec<DomainEvent>, Failure> {
    let events = registry
        .store()
        .read_stream(&Image::stream(id))
        .await
        .map_err(|e| Failure::Transient(e.to_string()))?;
    let mine = |metadata: &str| {
        serde_json::from_str::<Value>(metadata).is_ok_and(|m| m["job_id"].as_str() == Some(job_id))
    };
    Ok(events
        .into_iter()
        .filter(|e| mine(&e.metadata))
        .map(|e| e.event)
        .collect())
}
