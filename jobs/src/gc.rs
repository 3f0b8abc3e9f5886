//! `gc` jobs: which blobs of a namespace no manifest references any more.
//!
//! The read models keep, per namespace, the blobs its remaining manifests reference (with a
//! count). A blob that an image of the namespace ever recorded (its stream says so) and that
//! no remaining manifest references is reclaimable: a registry's own garbage collector may
//! remove it. In a namespace linked to a backend registry, each reclaimable blob is also
//! looked up there (`HEAD`), to report what the backend still stores. Nothing is deleted: the
//! OCI API has no blob deletion a registry must honour, and a registry's collector is the one
//! that knows what its other repositories use.

use std::collections::{BTreeMap, HashSet};

use layerline_core::domain::Aggregate;
use layerline_core::domain::DomainEvent;
use layerline_core::domain::image::Image;
use layerline_core::importer::Linked;
use layerline_core::store::{EventStore, ReadModels};
use serde::Deserialize;
use serde_json::json;

use crate::runner::{Ctx, Failure, Outcome};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcInput {
    pub namespace_id: String,
}

pub(crate) async fn gc(input: GcInput, ctx: &mut Ctx<'_>) -> Outcome {
    let transient = |e: layerline_core::store::StoreError| Failure::Transient(e.to_string());
    let ns = &input.namespace_id;
    let namespace = ctx.registry().load_namespace(ns).await?;
    if namespace.created.is_none() || namespace.deleted {
        return Err(Failure::Permanent(format!("namespace {ns} not found")));
    }
    let store = ctx.registry().store().clone();
    let referenced: HashSet<String> = store
        .namespace_blob_digests(ns)
        .await
        .map_err(transient)?
        .into_iter()
        .collect();
    let images = store.image_ids(ns).await.map_err(transient)?;
    let total = images.len() as i64;
    // Each blob ever recorded in the namespace: its size and an image name that recorded it.
    let mut recorded: BTreeMap<String, (i64, String)> = BTreeMap::new();
    for (n, image_id) in images.iter().enumerate() {
        ctx.boundary(n as i64, total, "scan image", false).await?;
        let events = store
            .read_stream(&Image::stream(image_id))
            .await
            .map_err(transient)?;
        let mut name = String::new();
        for e in events {
            match e.event {
                DomainEvent::ImageCreated(c) => name = c.name,
                DomainEvent::ManifestRecorded(m) => {
                    for b in m.config.iter().chain(&m.layers) {
                        recorded
                            .entry(b.digest.clone())
                            .or_insert_with(|| (b.size, name.clone()));
                    }
                }
                _ => {}
            }
        }
    }
    let reclaimable: Vec<(&String, &(i64, String))> = recorded
        .iter()
        .filter(|(digest, _)| !referenced.contains(*digest))
        .collect();
    let bytes: i64 = reclaimable.iter().map(|(_, (size, _))| size).sum();
    let mut output = json!({
        "namespace_id": ns,
        "images": total,
        "blobs": {
            "recorded": recorded.len(),
            "referenced": referenced.len(),
            "reclaimable": reclaimable.len(),
            "reclaimable_bytes": bytes,
        },
    });
    if let Some(spec) = namespace.backend {
        let b = Linked::new(spec, crate::import::CONCURRENCY).map_err(crate::import::failure)?;
        let client = &b.client;
        let (mut present, mut present_bytes) = (0_u64, 0_i64);
        for (n, (digest, (size, image))) in reclaimable.iter().enumerate() {
            if n % 100 == 0 {
                ctx.boundary(total, total, "look up blobs in the backend", false)
                    .await?;
            }
            let there = client
                .has_blob(&b.repository(image), digest)
                .await
                .map_err(|e| Failure::Transient(e.to_string()))?;
            if there {
                present += 1;
                present_bytes += size;
            }
        }
        output["backend"] = json!({
            "registry": b.spec.registry,
            "prefix": b.spec.prefix,
            "reclaimable_present": present,
            "reclaimable_present_bytes": present_bytes,
        });
    }
    ctx.boundary(total, total, "done", true).await?;
    Ok(output)
}
