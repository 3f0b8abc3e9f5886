//! `layerline bench prune`: a prune policy over a namespace of many images with many tags.
//!
//! Two identical namespaces are seeded in bulk: one with its event streams and read models
//! (ours), one with read models only (the baseline's). Planning is timed in-process (the
//! snapshot read with the selection overlapping it, as a run does them; the read alone; and
//! the selection alone, unpacking included, on one thread, from a snapshot in memory) and,
//! separately, inside a real prune job run by our worker pool, which then applies its plan.
//! The baseline deletes the same tag and manifest rows with plain SQL, one transaction per
//! image, in the same run.

use std::time::Instant;

use clap::Args;
use layerline_core::domain::event::{ImageCreated, ManifestRecorded, TagPushed};
use layerline_core::domain::image::Image;
use layerline_core::domain::namespace::Namespace;
use layerline_core::domain::policy::{Policy, PolicySpec, PruneInput};
use layerline_core::domain::{Aggregate, Blob, DomainEvent, format_time, streams};
use layerline_core::store::Store;
use layerline_core::store::plans::{ItemKind, PlanItem};
use layerline_core::store::rows::materialize;
use layerline_jobs::prune::{make_plan, plan_from_store};
use layerline_jobs::{PoolConfig, Queues};

use super::{Pool, bench_namespace, quantiles, run_job};

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Images in each namespace.
    #[arg(long, default_value_t = 10_000)]
    images: usize,
    /// Tags per image, each on a manifest of its own.
    #[arg(long, default_value_t = 100)]
    tags: usize,
    /// Tags the policy keeps per image (`keep_last`); the rest go with their manifests.
    #[arg(long, default_value_t = 10)]
    keep: u32,
    /// In-process planning runs (the median is reported).
    #[arg(long, default_value_t = 3)]
    plans: usize,
    /// Sign every tag's manifest as cosign does: a signature manifest of its own (a config
    /// and a layer) tagged `sha256-<hex>.sig`, which goes with its subject.
    #[arg(long)]
    signed: bool,
}

/// Images seeded per bulk write (bounds the memory the seeding holds).
const CHUNK: usize = 1_000;

pub async fn run(args: &PruneArgs, url: &str, max_connections: u32) -> anyhow::Result<()> {
    let store = Store::connect(url, max_connections).await?;
    store.migrate().await?;
    let config = PoolConfig::default();
    let queues = Queues::new(store.clone(), config);
    queues.migrate().await?;

    let started = Instant::now();
    let ours = seed(&store, "prune-ours", args, true).await?;
    let plain = seed(&store, "prune-plain", args, false).await?;
    println!(
        "seeded 2 namespaces × {} images × {} tags in {:.1} s",
        args.images,
        args.tags,
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    settle(&store).await?;
    println!("settled in {:.1} s", started.elapsed().as_secs_f64());

    let spec = |namespace_id: &str| -> anyhow::Result<PolicySpec> {
        Ok(serde_json::from_value(serde_json::json!({
            "namespace_id": namespace_id,
            "rules": {"tag_pattern": "^v", "keep_last": args.keep},
            "max_deletions": 10_000_000,
        }))?)
    };
    let input = |namespace_id: &str| -> anyhow::Result<PruneInput> {
        Ok(PruneInput {
            policy_id: None,
            policy_version: None,
            policy: spec(namespace_id)?,
            dry_run: false,
            scheduled_for: None,
        })
    };

    // Planning, in-process, as a run does it (selection overlapping the read), and the
    // snapshot read alone for comparison.
    let ours_input = input(&ours)?;
    let policy = std::sync::Arc::new(Policy::compile(&ours_input.policy)?);
    let mut plans = Vec::new();
    let mut reads = Vec::new();
    let mut selections = Vec::new();
    let mut planned = 0;
    for _ in 0..args.plans.max(1) {
        let t = Instant::now();
        let plan = plan_from_store(
            &store,
            "bench",
            &ours_input,
            policy.clone(),
            chrono::Utc::now(),
        )
        .await?;
        plans.push(t.elapsed().as_secs_f64());
        planned = plan.header.tags;
        drop(plan);
        let t = Instant::now();
        let snapshot = store.prune_snapshot(&ours).await?;
        reads.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let plan = make_plan("bench", &ours_input, &policy, &snapshot, chrono::Utc::now())?;
        selections.push(t.elapsed().as_secs_f64());
        drop(plan);
        drop(snapshot);
    }
    let (plan, _) = quantiles(&mut plans);
    let (read, _) = quantiles(&mut reads);
    let (selection, _) = quantiles(&mut selections);

    // Ours: a real prune job through the worker pool (it plans again, stores, applies).
    let pool = Pool::start(&store, &queues, config.workers);
    let kind = layerline_core::domain::job::JobKind::Prune;
    let output = run_job(&store, &queues, kind, serde_json::to_value(&ours_input)?).await?;
    pool.stop().await?;
    let timing = |k: &str| output["timings_ms"][k].as_f64().unwrap_or(f64::NAN) / 1000.0;
    let tags_deleted = output["tags_deleted"].as_i64().unwrap_or(0);
    let manifests_deleted = output["manifests_deleted"].as_i64().unwrap_or(0);
    let apply = timing("apply");
    let ours_rate = tags_deleted as f64 / apply;

    // Baseline: the same rows of the twin namespace, deleted with plain SQL.
    let plain_input = input(&plain)?;
    let plain_policy = std::sync::Arc::new(Policy::compile(&plain_input.policy)?);
    let now = chrono::Utc::now();
    let images = plan_from_store(&store, "bench", &plain_input, plain_policy, now)
        .await?
        .images;
    let plain_tags = images
        .iter()
        .flatten()
        .filter(|i| i.kind == ItemKind::Tag)
        .count();
    let t = Instant::now();
    plain_delete(&store, &images).await?;
    let plain_secs = t.elapsed().as_secs_f64();
    let plain_rate = plain_tags as f64 / plain_secs;

    println!(
        "backend: {:?}; policy keeps the last {} of {} tags per image{}",
        store.backend(),
        args.keep,
        args.tags,
        if args.signed {
            ", every tag signed (its signature tag and manifest go with it)"
        } else {
            ""
        }
    );
    println!("| step | seconds | rate |");
    println!("|---|---|---|");
    println!(
        "| plan in-process: selection overlapping the read (median of {}) | {plan:.2} | {planned} tags planned |",
        args.plans.max(1)
    );
    println!("| the snapshot read alone (median) | {read:.2} | |");
    println!(
        "| the selection alone, unpacking included, one thread, from the read snapshot (median) | {selection:.2} | |"
    );
    println!(
        "| plan inside the job | {:.2} | stored in {:.2} s |",
        timing("plan"),
        timing("store")
    );
    println!(
        "| ours: apply the plan (job) | {apply:.2} | {ours_rate:.0} tags/s ({tags_deleted} tags, {manifests_deleted} manifests) |"
    );
    println!(
        "| plain SQL delete of the same rows | {plain_secs:.2} | {plain_rate:.0} tags/s ({plain_tags} tags) |"
    );
    println!("ratio (ours / plain): {:.2}", ours_rate / plain_rate);
    store.close().await;
    Ok(())
}

/// A namespace of `args.images` images, each with `args.tags` tags `v0…` on manifests of
/// their own (a config and two layers, every blob the image's own), each signed with
/// `args.signed`; returns its id. With
/// `events`, the event streams are written too; the read models always are.
async fn seed(store: &Store, name: &str, args: &PruneArgs, events: bool) -> anyhow::Result<String> {
    let at = format_time(chrono::Utc::now());
    let ns_id = uuid::Uuid::now_v7().to_string();
    let created = DomainEvent::NamespaceCreated(bench_namespace(ns_id.clone(), name));
    let mut namespace = Namespace::default();
    namespace.apply(&created, &at, 0);
    if events {
        store
            .bulk_load_events(&[(streams::namespace(&ns_id), vec![created])])
            .await?;
    }
    let blob = |digest: String, size: i64| Blob {
        digest,
        size,
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
    };
    let mut first = true;
    for chunk in (0..args.images).collect::<Vec<_>>().chunks(CHUNK) {
        let mut images = Vec::with_capacity(chunk.len());
        let mut stream_events = Vec::with_capacity(chunk.len());
        for &i in chunk {
            let image_id = uuid::Uuid::now_v7().to_string();
            // Digests unique to this namespace, image and manifest.
            let salt = if events { 1 } else { 2 };
            let sha =
                |kind: u64, n: u64| format!("sha256:{kind:08x}{salt:08x}{:024x}{n:024x}", i as u64);
            let mut list = vec![DomainEvent::ImageCreated(ImageCreated {
                image_id: image_id.clone(),
                namespace_id: ns_id.clone(),
                name: format!("app-{i:06}"),
                visibility: "inherit".into(),
            })];
            for t in 0..args.tags as u64 {
                list.push(DomainEvent::ManifestRecorded(ManifestRecorded {
                    digest: sha(1, t),
                    media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                    platform: None,
                    config: Some(blob(sha(2, t), 1_500)),
                    layers: vec![blob(sha(3, 0), 30_000_000), blob(sha(4, t), 200_000)],
                    children: vec![],
                    created: None,
                    subject: None,
                    artifact_type: None,
                }));
                list.push(DomainEvent::TagPushed(TagPushed {
                    tag_id: uuid::Uuid::now_v7().to_string(),
                    name: format!("v{t}"),
                    digest: sha(1, t),
                    pushed_at: None,
                }));
            }
            for t in (0..args.tags as u64).filter(|_| args.signed) {
                list.push(DomainEvent::ManifestRecorded(ManifestRecorded {
                    digest: sha(5, t),
                    media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                    platform: None,
                    config: Some(blob(sha(6, t), 250)),
                    layers: vec![blob(sha(7, t), 300)],
                    children: vec![],
                    created: None,
                    subject: None,
                    artifact_type: None,
                }));
                let subject = sha(1, t);
                list.push(DomainEvent::TagPushed(TagPushed {
                    tag_id: uuid::Uuid::now_v7().to_string(),
                    name: format!("{}.sig", subject.replace(':', "-")),
                    digest: sha(5, t),
                    pushed_at: None,
                }));
            }
            let mut img = Image::default();
            // Manifest `seq`s must be unique across both namespaces.
            let seq_base = if events { 0 } else { 1_000_000_000_000 } + (i * list.len()) as i64;
            for (n, e) in list.iter().enumerate() {
                // Tags must look pushed in order: a second apart, oldest first.
                let pushed =
                    chrono::Utc::now() - chrono::Duration::seconds((list.len() - n) as i64);
                img.apply(e, &format_time(pushed), seq_base + n as i64 + 1);
            }
            images.push(img);
            if events {
                stream_events.push((streams::image(&image_id), list));
            }
        }
        let mut rows = materialize([&namespace], images.iter(), [], []);
        // The namespace row goes in once (its size counts only the first chunk: nothing
        // here reads it).
        if !first {
            rows.namespaces.clear();
        }
        first = false;
        store.bulk_load(&rows).await?;
        if events {
            store.bulk_load_events(&stream_events).await?;
        }
    }
    Ok(ns_id)
}

/// Brings the freshly seeded tables to the state a running registry's are in. The bulk
/// loads already analysed the read models. On PostgreSQL, `VACUUM (ANALYZE)` as well, as
/// autovacuum would have done long before a prune reads rows written over weeks: without
/// it, the first read of each bulk-loaded page (the event streams' above all) sets its rows'
/// hint bits and writes the page again, a cost of the seeding, not of pruning. Nothing on
/// SQLite: a database-wide `ANALYZE` there would replace the statistics migration 0008
/// gives apalis's still empty task table.
async fn settle(store: &Store) -> anyhow::Result<()> {
    if let Store::Postgres(s) = store {
        sqlx::query("VACUUM (ANALYZE)").execute(s.pool()).await?;
    }
    Ok(())
}

/// Deletes the planned tag and manifest rows (with the manifests' layer rows), one
/// transaction per image, three statements each.
async fn plain_delete(store: &Store, images: &[Vec<PlanItem>]) -> anyhow::Result<()> {
    let mut by_image: Vec<(&str, Vec<&str>, Vec<&str>)> = Vec::new();
    for list in images {
        let (mut tags, mut manifests) = (Vec::new(), Vec::new());
        for item in list {
            match item.kind {
                ItemKind::Manifest => manifests.push(item.digest.as_str()),
                ItemKind::Tag => tags.push(item.tag.as_deref().unwrap_or_default()),
            }
        }
        by_image.push((&list[0].image_id, tags, manifests));
    }
    macro_rules! delete_all {
        ($pool:expr, $db:ty) => {
            for (image_id, tags, manifests) in &by_image {
                let mut tx = $pool.begin().await?;
                for (sql, values) in [
                    ("DELETE FROM tags WHERE image_id = ", tags),
                    ("DELETE FROM manifest_layers WHERE image_id = ", manifests),
                    ("DELETE FROM manifests WHERE image_id = ", manifests),
                ] {
                    let column = if sql.contains("tags") {
                        "name"
                    } else if sql.contains("layers") {
                        "manifest_digest"
                    } else {
                        "digest"
                    };
                    let mut q = sqlx::QueryBuilder::<$db>::new(sql);
                    q.push_bind(image_id.to_string())
                        .push(format!(" AND {column} IN ("));
                    let mut list = q.separated(", ");
                    for v in values {
                        list.push_bind(v.to_string());
                    }
                    list.push_unseparated(")");
                    q.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }
        };
    }
    match store {
        Store::Sqlite(s) => delete_all!(s.pool(), sqlx::Sqlite),
        Store::Postgres(s) => delete_all!(s.pool(), sqlx::Postgres),
    }
    Ok(())
}
