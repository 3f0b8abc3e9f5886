//! Prune runs (design §8): plan at one log position, store the plan, then (unless a dry run)
//! delete what it chose, image by image, leaving whatever changed since the plan.
//!
//! The plan is made once per job: a rerun after a crash or a retry reads the stored plan
//! back, so every attempt deletes from the same list, and a dry run and a real run of the
//! same policy on the same state store the same items.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use layerline_core::domain::DomainError;
use layerline_core::domain::event::DomainEvent;
use layerline_core::domain::format_time;
use layerline_core::domain::image::ImageCommand;
use layerline_core::domain::policy::{Policy, PruneInput};
use layerline_core::domain::retention::{self, GuardExceeded, Kept, check_guard, select};
use layerline_core::importer::{Failed, fallback_tag};
use layerline_core::metric;
use layerline_core::oci::Client;
use layerline_core::service::Registry;
use layerline_core::service::ServiceError;
use layerline_core::store::plans::{
    ItemKind, KeptItem, PlanHeader, PlanItem, Snapshot, SnapshotImage,
};
use layerline_core::store::{Metadata, Store, StoreError};
use serde_json::{Value, json};

use crate::handlers::ours;
use crate::runner::{Ctx, Failure, Outcome};

/// A plan as made: its summary, its deletions image by image, and what it keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct MadePlan {
    pub header: PlanHeader,
    /// Each image's deletions (images with at least one, in name order).
    pub images: Vec<Vec<PlanItem>>,
    /// What the plan keeps, image by image in name order: a dry run's plan lists it, a
    /// real run's does not.
    pub kept: Vec<KeptItem>,
}

/// What `policy` deletes from `snapshot` at time `now`: the plan's summary and its items,
/// image by image (images in name order, each image's tags and then its manifests), and,
/// for a dry run, what it keeps.
pub fn make_plan(
    job_id: &str,
    input: &PruneInput,
    policy: &Policy,
    snapshot: &Snapshot,
    now: DateTime<Utc>,
) -> Result<MadePlan, StoreError> {
    let selected = select_images(&snapshot.images, policy, now, input.dry_run)?;
    Ok(assemble(
        job_id,
        input,
        snapshot.position,
        now,
        vec![selected],
    ))
}

/// [`make_plan`] over namespace `policy.namespace_id` as the store holds it now, selecting
/// from each page of images while the store reads the next (the same plan as `make_plan`
/// of the whole snapshot).
pub async fn plan_from_store(
    store: &Store,
    job_id: &str,
    input: &PruneInput,
    policy: Arc<Policy>,
    now: DateTime<Utc>,
) -> Result<MadePlan, StoreError> {
    let namespace_id = policy.namespace_id.clone();
    let explain = input.dry_run;
    let on_page =
        Arc::new(move |page: Vec<SnapshotImage>| select_images(&page, &policy, now, explain));
    let (position, pages) = store.prune_snapshot_with(&namespace_id, on_page).await?;
    let pages = pages.into_iter().collect::<Result<_, _>>()?;
    Ok(assemble(job_id, input, position, now, pages))
}

/// What the rules chose in one image: its deletions and (for a dry run) its keeps.
struct Selection {
    name: Arc<str>,
    items: Vec<PlanItem>,
    kept: Vec<KeptItem>,
}

/// The plan of the selections' images: images in name order, items (and keeps) numbered in
/// that order, the header's counts taken from them.
///
/// The items stay in their images' lists, as the selection made them. Copying them into
/// one list (1.8 M items, some 200 MB, at 10 000 images) came after the last page's
/// selection, so nothing overlapped it, and `perf` put most of its time in faulting in the
/// new list's pages. A run applies its plan image by image anyway.
fn assemble(
    job_id: &str,
    input: &PruneInput,
    position: i64,
    now: DateTime<Utc>,
    selected: Vec<Vec<Selection>>,
) -> MadePlan {
    let mut selected: Vec<Selection> = selected.into_iter().flatten().collect();
    selected.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    let mut images = Vec::with_capacity(selected.len());
    let mut kept = Vec::new();
    for s in selected {
        if !s.items.is_empty() {
            images.push(s.items);
        }
        kept.extend(s.kept);
    }
    let (mut idx, mut tags, mut bytes) = (0, 0, 0);
    for item in images.iter_mut().flatten() {
        item.idx = idx;
        idx += 1;
        tags += i64::from(item.kind == ItemKind::Tag);
        // Tags free nothing (their items carry 0 bytes).
        bytes += item.bytes;
    }
    let mut kept_tags = 0;
    for (i, item) in kept.iter_mut().enumerate() {
        item.idx = i as i64;
        kept_tags += i64::from(item.kind == ItemKind::Tag);
    }
    let header = PlanHeader {
        job_id: job_id.to_owned(),
        position,
        policy_id: input.policy_id.clone(),
        policy_version: input.policy_version,
        attempt: 0,
        images: images.len() as i64,
        tags,
        manifests: idx - tags,
        bytes,
        created_at: format_time(now),
        kept_tags: input.dry_run.then_some(kept_tags),
        kept_manifests: input.dry_run.then_some(kept.len() as i64 - kept_tags),
    };
    MadePlan {
        header,
        images,
        kept,
    }
}

/// Per image of `images` the policy covers and deletes something from (or, with `explain`,
/// keeps something of), its plan items (`idx` not yet set): its tags, then its manifests.
/// Only the images the policy covers are unpacked.
fn select_images(
    images: &[SnapshotImage],
    policy: &Policy,
    now: DateTime<Utc>,
    explain: bool,
) -> Result<Vec<Selection>, StoreError> {
    let mut out = Vec::new();
    for image in images.iter().filter(|i| policy.covers(&i.name)) {
        let state = image.state()?;
        let (plan, keeps) = match explain {
            true => retention::explain(&policy.rules, &state, now),
            false => (select(&policy.rules, &state, now), Kept::default()),
        };
        if plan.deletions() == 0 && keeps.tags.is_empty() && keeps.manifests.is_empty() {
            continue;
        }
        let item = |kind, reason, digest, subject: Option<&str>| PlanItem {
            idx: 0,
            image_id: image.id.clone(),
            image_name: image.name.clone(),
            kind,
            tag: None,
            digest,
            pushed_version: None,
            reason,
            bytes: 0,
            subject: subject.map(str::to_owned),
        };
        let mut items = Vec::with_capacity(plan.deletions());
        for t in plan.tags {
            items.push(PlanItem {
                tag: Some(t.name.to_owned()),
                pushed_version: Some(t.pushed_version),
                ..item(ItemKind::Tag, t.reason, t.digest.to_owned(), t.subject)
            });
        }
        for m in plan.manifests {
            items.push(PlanItem {
                bytes: m.bytes,
                ..item(ItemKind::Manifest, m.reason, m.digest.to_owned(), m.subject)
            });
        }
        let keep =
            |kind, tag: Option<&str>, digest: &str, reason, subject: Option<&str>| KeptItem {
                idx: 0,
                image_id: image.id.clone(),
                image_name: image.name.clone(),
                kind,
                tag: tag.map(str::to_owned),
                digest: digest.to_owned(),
                reason,
                subject: subject.map(str::to_owned),
            };
        let mut kept = Vec::with_capacity(keeps.tags.len() + keeps.manifests.len());
        for t in keeps.tags {
            kept.push(keep(
                ItemKind::Tag,
                Some(t.name),
                t.digest,
                t.reason,
                t.subject,
            ));
        }
        for m in keeps.manifests {
            kept.push(keep(
                ItemKind::Manifest,
                None,
                m.digest,
                m.reason,
                m.subject,
            ));
        }
        out.push(Selection {
            name: image.name.clone(),
            items,
            kept,
        });
    }
    Ok(out)
}

/// Images whose deletions are under way at once (their appends share the writer's group
/// commits).
const IMAGES_AT_ONCE: usize = 4;

/// Tags deleted, manifests deleted and the bytes those manifests freed, by `events`.
fn tally(events: &[DomainEvent], bytes: &HashMap<String, i64>) -> (i64, i64, i64) {
    let (mut tags, mut manifests, mut freed) = (0, 0, 0);
    for e in events {
        match e {
            DomainEvent::TagDeleted(_) => tags += 1,
            DomainEvent::ManifestDeleted(m) => {
                manifests += 1;
                freed += bytes.get(&m.digest).copied().unwrap_or(0);
            }
            _ => {}
        }
    }
    (tags, manifests, freed)
}

/// Deletes one image's planned items, `list` (and, with `target`, the manifests this job
/// deleted at the backend repository); returns the tags, manifests and bytes this job
/// deleted from the image in all its attempts, and the manifests deleted at the backend now.
async fn prune_image(
    registry: Registry<Store>,
    target: Option<(Client, String)>,
    meta: Metadata,
    job_id: String,
    rerun: bool,
    list: Vec<PlanItem>,
) -> Result<((i64, i64, i64), i64), Failure> {
    let image_id = list[0].image_id.clone();
    let tags = list
        .iter()
        .filter(|i| i.kind == ItemKind::Tag)
        .filter_map(|i| Some((i.tag.clone()?, i.pushed_version?)))
        .collect();
    let bytes: HashMap<String, i64> = list
        .iter()
        .filter(|i| i.kind == ItemKind::Manifest)
        .map(|i| (i.digest.clone(), i.bytes))
        .collect();
    let manifests = bytes.keys().cloned().collect();
    // The manifests something planned here is attached to: only those can have a referrers
    // index a copy wrote at the backend.
    let subjects: std::collections::HashSet<&str> = list
        .iter()
        .filter(|i| i.kind == ItemKind::Manifest)
        .filter_map(|i| i.subject.as_deref())
        .collect();
    let cmd = ImageCommand::Prune { tags, manifests };
    let appended = match registry.image(&image_id, cmd, &meta).await {
        Ok(events) => events,
        Err(ServiceError::Domain(DomainError::NotFound { .. })) => Vec::new(),
        Err(e) => return Err(Failure::from(e)),
    };
    // The metrics count this attempt's deletions; the output counts what every attempt of
    // this job deleted.
    let (tags, manifests, freed) = tally(&appended, &bytes);
    metric::pruned(tags as u64, manifests as u64, freed as u64);
    let events = if rerun {
        ours(&registry, &job_id, &image_id).await?
    } else {
        appended
    };
    // Every manifest this job deleted, again on a rerun (one already gone is not an error),
    // so a crash between the two leaves nothing behind; and, for one that had attachments, the
    // referrers index a copy wrote there for it (a backend without the referrers API), which
    // lists only what went with it.
    let mut at_backend = 0;
    if let Some((client, repository)) = &target {
        let failed = |e: layerline_core::oci::OciError| match Failed::from(e) {
            Failed::Transient(m) => Failure::Transient(m),
            Failed::Permanent(m) => {
                Failure::Permanent(format!("deleting from the backend {repository}: {m}"))
            }
        };
        for e in &events {
            if let DomainEvent::ManifestDeleted(m) = e {
                client
                    .delete_manifest(repository, &m.digest)
                    .await
                    .map_err(failed)?;
                at_backend += 1;
                if !subjects.contains(m.digest.as_str()) {
                    continue;
                }
                let fallback = fallback_tag(&m.digest);
                if let Some(index) = client
                    .resolve(repository, &fallback)
                    .await
                    .map_err(failed)?
                {
                    client
                        .delete_manifest(repository, &index)
                        .await
                        .map_err(failed)?;
                }
            }
        }
    }
    Ok((tally(&events, &bytes), at_backend))
}

pub(crate) async fn prune(input: PruneInput, ctx: &mut Ctx<'_>) -> Outcome {
    let policy = Policy::compile(&input.policy).map_err(|e| Failure::Permanent(e.to_string()))?;
    let policy = Arc::new(policy);
    let store = ctx.registry().store();
    let transient = |e: layerline_core::store::StoreError| Failure::Transient(e.to_string());
    // What this attempt spent planning, storing the plan and deleting, in milliseconds.
    let mut timings = serde_json::Map::new();
    let ms = |since: Instant| Value::from(since.elapsed().as_millis() as u64);
    // The plan's items, when this attempt stored them: then they need not be read back.
    let (header, planned_here) = match store.plan(&ctx.job_id).await.map_err(transient)? {
        Some(header) => (header, None),
        None => {
            ctx.boundary(0, 1, "plan", true).await?;
            let started = Instant::now();
            let MadePlan {
                mut header,
                images: items,
                kept,
            } = plan_from_store(store, &ctx.job_id, &input, policy.clone(), Utc::now())
                .await
                .map_err(transient)?;
            header.attempt = ctx.attempt;
            timings.insert("plan".into(), ms(started));
            metric::prune_planned(input.dry_run);
            let started = Instant::now();
            let ours = store
                .save_plan(&header, items.iter().flatten(), &kept)
                .await
                .map_err(transient)?;
            timings.insert("store".into(), ms(started));
            if ours {
                (header, Some(items))
            } else {
                // Another attempt stored its plan first: the stored one is the plan.
                let stored = store.plan(&ctx.job_id).await.map_err(transient)?;
                let stored = stored
                    .ok_or_else(|| Failure::Transient("the stored plan vanished".to_owned()))?;
                (stored, None)
            }
        }
    };
    let planned = json!({
        "position": header.position,
        "images": header.images,
        "tags": header.tags,
        "manifests": header.manifests,
        "bytes": header.bytes,
    });
    let mut summary = json!({
        "policy_id": header.policy_id,
        "policy_version": header.policy_version,
        "dry_run": input.dry_run,
        "planned": planned,
    });
    if let (Some(tags), Some(manifests)) = (header.kept_tags, header.kept_manifests) {
        summary["kept"] = json!({"tags": tags, "manifests": manifests});
    }
    if input.dry_run {
        ctx.boundary(1, 1, "planned (dry run)", true).await?;
        summary["timings_ms"] = timings.into();
        return Ok(summary);
    }
    let deletions = (header.tags + header.manifests) as usize;
    check_guard(deletions, policy.max_deletions as usize)
        .map_err(|e: GuardExceeded| Failure::Permanent(e.to_string()))?;

    let started = Instant::now();
    // Each image's items: as planned here, or as stored (in plan order, an image's together).
    let by_image: Vec<Vec<PlanItem>> = match planned_here {
        Some(images) => images,
        None => {
            let items = store
                .plan_items(&ctx.job_id, 0, i64::MAX)
                .await
                .map_err(transient)?;
            let mut images: Vec<Vec<PlanItem>> = Vec::new();
            for item in items {
                match images.last_mut() {
                    Some(list) if list[0].image_id == item.image_id => list.push(item),
                    _ => images.push(vec![item]),
                }
            }
            images
        }
    };
    let total = by_image.len() as i64;
    let (mut tags_deleted, mut manifests_deleted, mut bytes_freed) = (0_i64, 0_i64, 0_i64);
    // A backend-linked namespace's manifests are deleted there too, after the metadata.
    let backend = crate::import::backend_of(ctx, &policy.namespace_id).await?;
    let mut backend_deleted = 0_i64;
    let blobs_before = store
        .namespace_blobs(&policy.namespace_id)
        .await
        .map_err(transient)?;
    // Images are deleted a few at once, a new one starting as soon as one ends, so that the
    // writer always has the next appends waiting while it writes a group. Each start is a
    // step boundary; when one stops the run, the images already started finish first.
    let mut tasks = tokio::task::JoinSet::new();
    let mut pending = by_image.into_iter();
    let mut done = 0;
    let mut stopped = None;
    loop {
        while stopped.is_none() && tasks.len() < IMAGES_AT_ONCE {
            let Some(list) = pending.next() else {
                break;
            };
            let image_name = list[0].image_name.clone();
            let step = format!("prune image {image_name}");
            if let Err(stop) = ctx.boundary(done, total, &step, false).await {
                stopped = Some(stop);
                break;
            }
            let registry = ctx.registry().clone();
            let target = backend
                .as_ref()
                .map(|b| (b.client.clone(), b.repository(&image_name)));
            let meta = ctx.meta.clone();
            let (job_id, rerun) = (ctx.job_id.clone(), ctx.attempt > 1);
            tasks.spawn(prune_image(registry, target, meta, job_id, rerun, list));
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        let ((tags, manifests, freed), at_backend) =
            joined.map_err(|e| Failure::Transient(format!("an image's task died: {e}")))??;
        backend_deleted += at_backend;
        tags_deleted += tags;
        manifests_deleted += manifests;
        bytes_freed += freed;
        done += 1;
    }
    if let Some(stop) = stopped {
        return Err(stop);
    }
    ctx.boundary(total, total, "done", true).await?;
    timings.insert("apply".into(), ms(started));
    summary["timings_ms"] = timings.into();
    let skipped = deletions as i64 - tags_deleted - manifests_deleted;
    summary["tags_deleted"] = tags_deleted.into();
    summary["manifests_deleted"] = manifests_deleted.into();
    summary["bytes_freed"] = bytes_freed.into();
    summary["skipped"] = skipped.into();
    // Blobs no manifest of the namespace references any more, by this attempt's deletions
    // (and whatever else changed the namespace meanwhile).
    let blobs_after = store
        .namespace_blobs(&policy.namespace_id)
        .await
        .map_err(transient)?;
    summary["blobs"] = json!({
        "reclaimed": (blobs_before.0 - blobs_after.0).max(0),
        "bytes": (blobs_before.1 - blobs_after.1).max(0),
    });
    if let Some(b) = &backend {
        summary["backend"] = json!({
            "registry": b.spec.registry,
            "prefix": b.spec.prefix,
            "manifests_deleted": backend_deleted,
        });
    }
    Ok(summary)
}
