//! `layerline bench …`: throughput of our code against a plain-SQL baseline measured in the
//! same run, on the same database server, with the same pool settings.
//!
//! Every benchmark works in a scratch database of its own (a temporary SQLite file, or a
//! `layerline_bench_*` database created next to the configured PostgreSQL one and dropped
//! afterwards), so it never touches real data.

use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use layerline_core::config::Settings;
use layerline_core::domain::event::{Blob, ManifestRecorded, NamespaceCreated, TagPushed};
use layerline_core::domain::image::ImageCommand;
use layerline_core::domain::{DomainEvent, format_time, streams};
use layerline_core::service::Registry;
use layerline_core::store::scratch::Scratch;
use layerline_core::store::{EventStore, Expected, Metadata, ReadModels, Store};

mod import;
mod jobs;
mod prune;

/// The median and the 99th percentile of `samples` (sorted in place).
fn quantiles(samples: &mut [f64]) -> (f64, f64) {
    samples.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    (at(0.50), at(0.99))
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Event appends (batches of 100 and single events) vs plain INSERTs of the same rows
    /// into a bare table; then `rebuild` throughput over the log written.
    Append(AppendArgs),
    /// No-op jobs through our worker pool vs a bare apalis worker on the same database, and
    /// the pool's idle pickup latency.
    Jobs(jobs::JobsArgs),
    /// A catalog import from a local docker-registry through our pool, against a plain
    /// concurrent fetch of the same manifests.
    Import(import::ImportArgs),
    /// A prune policy over 10 000 images × 100 tags: planning time, and deletion rate of
    /// a real prune job against plain SQL deleting the same rows.
    Prune(prune::PruneArgs),
    /// Latency of the registry APIs over HTTP at two scales of the same run: 10 000 images
    /// with 10 000 tags, then 100 000 images with 1 000 000 tags (seeded in bulk).
    Api(ApiArgs),
}

#[derive(Args, Debug)]
pub struct ApiArgs {
    /// Images at the large scale.
    #[arg(long, default_value_t = 100_000)]
    images: usize,
    /// Tags at the large scale.
    #[arg(long, default_value_t = 1_000_000)]
    tags: usize,
    /// Images at the small scale, one tag each.
    #[arg(long, default_value_t = 10_000)]
    small_images: usize,
    /// Requests per measured query (enough that the p99 rests on 50 samples).
    #[arg(long, default_value_t = 5000)]
    requests: usize,
}

#[derive(Args, Debug)]
pub struct AppendArgs {
    /// Number of 100-event batches to append (and of 100-row raw transactions).
    #[arg(long, default_value_t = 500)]
    batches: usize,
    /// Number of single-event appends (and of one-row raw transactions).
    #[arg(long, default_value_t = 2000)]
    singles: usize,
    /// Images in the registry history replayed by the rebuild measurement (250 events each:
    /// 50 CI pushes, each recording a manifest, pushing a build tag and moving `latest`,
    /// with a retention of 10 builds deleting older tags and manifests).
    #[arg(long, default_value_t = 1000)]
    history_images: usize,
}

const BATCH: usize = 100;

pub async fn run(cmd: BenchCommand, settings: &Settings) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Append(args) => {
            let scratch = Scratch::create(&settings.database_url, "layerline_bench").await?;
            let result = append(&args, &scratch.url, settings.max_connections).await;
            scratch.drop_database().await;
            result
        }
        BenchCommand::Jobs(args) => {
            let scratch = Scratch::create(&settings.database_url, "layerline_bench").await?;
            let result = jobs::run(&args, &scratch.url, settings.max_connections).await;
            scratch.drop_database().await;
            result
        }
        BenchCommand::Import(args) => {
            let scratch = Scratch::create(&settings.database_url, "layerline_bench").await?;
            let result = import::run(&args, &scratch.url, settings.max_connections).await;
            scratch.drop_database().await;
            result
        }
        BenchCommand::Prune(args) => {
            let scratch = Scratch::create(&settings.database_url, "layerline_bench").await?;
            let result = prune::run(&args, &scratch.url, settings.max_connections).await;
            scratch.drop_database().await;
            result
        }
        BenchCommand::Api(args) => {
            let scratch = Scratch::create(&settings.database_url, "layerline_bench").await?;
            let result = api::run(&args, &scratch.url, settings.max_connections).await;
            scratch.drop_database().await;
            result
        }
    }
}

/// A namespace of the benchmarks' own project in `fr-par`.
fn bench_namespace(id: impl Into<String>, name: impl Into<String>) -> NamespaceCreated {
    NamespaceCreated {
        namespace_id: id.into(),
        name: name.into(),
        region: "fr-par".into(),
        description: String::new(),
        is_public: false,
        organization_id: "bench".into(),
        project_id: "bench".into(),
    }
}

/// Our worker pool on `queues`, running until [`Pool::stop`].
struct Pool {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Pool {
    fn start(store: &Store, queues: &layerline_jobs::Queues, workers: usize) -> Pool {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let runner = std::sync::Arc::new(layerline_jobs::Runner::new(
            store.clone(),
            std::sync::Arc::new(queues.clone()),
            layerline_jobs::RetryPolicy::default(),
            workers,
        ));
        let task = tokio::spawn(layerline_jobs::pool::run(queues.clone(), runner, stopped));
        Pool { stop, task }
    }

    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        Ok(self.task.await?)
    }
}

/// Submits a job of `kind` with `input` and waits for it to end (its descriptor polled every
/// 20 ms); its output, or an error when it did not complete.
async fn run_job(
    store: &Store,
    queues: &layerline_jobs::Queues,
    kind: layerline_core::domain::job::JobKind,
    input: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let sub = layerline_core::jobs::Submission {
        kind,
        caption: format!("bench {}", kind.as_str()),
        input,
        creator: None,
        idempotency_key: None,
        marks: None,
        project_id: None,
    };
    let job = layerline_core::jobs::submit(&Registry::new(store.clone()), queues, sub).await?;
    let row = loop {
        let row = store.job(&job.id).await?.expect("the job exists");
        if matches!(row.state.as_str(), "completed" | "error" | "cancelled") {
            break row;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    anyhow::ensure!(
        row.state == "completed",
        "the {} job ended {}: {:?}",
        kind.as_str(),
        row.state,
        row.last_error
    );
    Ok(serde_json::from_str(row.output.as_deref().unwrap_or("{}"))?)
}

fn rate(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(1e-9)
}

async fn append(args: &AppendArgs, url: &str, max_connections: u32) -> anyhow::Result<()> {
    let store = Store::connect(url, max_connections).await?;
    store.migrate().await?;
    let registry = Registry::new(store.clone());
    let meta = Metadata::default();

    // One namespace and image with one manifest; the events are tag pushes onto it, each
    // projected into the tags read model inside the append.
    let ns_id = uuid::Uuid::new_v4().to_string();
    registry
        .create_namespace(bench_namespace(ns_id.clone(), "bench"), &meta)
        .await?;
    let image_id = uuid::Uuid::now_v7().to_string();
    let digest = format!("sha256:{:064x}", 1);
    registry
        .image(
            &image_id,
            ImageCommand::Create {
                namespace_id: ns_id,
                name: "app".into(),
                visibility: None,
            },
            &meta,
        )
        .await?;
    registry
        .image(
            &image_id,
            ImageCommand::RecordManifest(ManifestRecorded {
                digest: digest.clone(),
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                platform: None,
                config: Some(Blob {
                    digest: format!("sha256:{:064x}", 2),
                    size: 10,
                    media_type: "application/vnd.oci.image.config.v1+json".into(),
                }),
                layers: vec![],
                children: vec![],
                created: None,
                subject: None,
                artifact_type: None,
            }),
            &meta,
        )
        .await?;
    let stream = streams::image(&image_id);
    let mut version = registry.load_image(&image_id).await?.version;
    let push = |n: usize| {
        DomainEvent::TagPushed(TagPushed {
            tag_id: uuid::Uuid::now_v7().to_string(),
            name: format!("t{n}"),
            digest: digest.clone(),
            pushed_at: None,
        })
    };

    let mut next_tag = 0;
    let started = Instant::now();
    for _ in 0..args.batches {
        let events: Vec<DomainEvent> = (0..BATCH).map(|i| push(next_tag + i)).collect();
        next_tag += BATCH;
        version = store
            .append(&stream, Expected::Version(version), &events, &meta)
            .await?
            .stream_version;
    }
    let batched = started.elapsed();

    let started = Instant::now();
    for _ in 0..args.singles {
        let events = [push(next_tag)];
        next_tag += 1;
        version = store
            .append(&stream, Expected::Version(version), &events, &meta)
            .await?
            .stream_version;
    }
    let singles = started.elapsed();

    // The baseline: the same rows, plain INSERTs into a bare table, same transaction sizes.
    let sample = push(0);
    let row = RawRow {
        stream_id: stream.clone(),
        event_type: sample.event_type(),
        schema_version: sample.schema_version(),
        payload: sample.payload(),
        metadata: serde_json::to_string(&meta)?,
    };
    let raw = match &store {
        Store::Sqlite(_) => {
            let pool = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(max_connections)
                .connect_with(layerline_core::store::sqlite_options(url)?)
                .await?;
            raw::sqlite(&pool, &row, args.batches, args.singles).await?
        }
        Store::Postgres(_) => {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(max_connections)
                .connect(url)
                .await?;
            raw::postgres(&pool, &row, args.batches, args.singles).await?
        }
    };

    // Rebuild, worst case: this log, where every event created a tag row of its own.
    let started = Instant::now();
    let worst_replayed = store.rebuild(&|_, _| {}).await?;
    let worst = started.elapsed();
    store.close().await;

    // Rebuild, a registry's history: retention keeps the state much smaller than the log.
    let history = Scratch::create(url, "layerline_bench").await?;
    let history_store = Store::connect(&history.url, max_connections).await?;
    history_store.migrate().await?;
    write_history(&history_store, args.history_images).await?;
    let started = Instant::now();
    let replayed = history_store.rebuild(&|_, _| {}).await?;
    let rebuild = started.elapsed();
    history_store.close().await;
    history.drop_database().await;

    let batched_events = args.batches * BATCH;
    let ours_b = rate(batched_events, batched);
    let raw_b = rate(batched_events, raw.batched);
    let raw_m = rate(batched_events, raw.batched_multi_row);
    let ours_s = rate(args.singles, singles);
    let raw_s = rate(args.singles, raw.singles);
    println!(
        "bench append on {:?} ({} events batched, {} single)",
        store.backend(),
        batched_events,
        args.singles
    );
    println!(
        "{:<34} {:>12} {:>12} {:>8}",
        "case", "ours ev/s", "raw rows/s", "ratio"
    );
    println!(
        "{:<34} {:>12.0} {:>12.0} {:>8.2}",
        "batches of 100 (1 tx per batch)",
        ours_b,
        raw_b,
        ours_b / raw_b
    );
    println!(
        "{:<34} {:>12.0} {:>12.0} {:>8.2}",
        "batches of 100, raw multi-row",
        ours_b,
        raw_m,
        ours_b / raw_m
    );
    println!(
        "{:<34} {:>12.0} {:>12.0} {:>8.2}",
        "one event per transaction",
        ours_s,
        raw_s,
        ours_s / raw_s
    );
    println!(
        "rebuild, registry history:         {replayed} events in {:.2}s = {:.0} events/s",
        rebuild.as_secs_f64(),
        rate(replayed as usize, rebuild)
    );
    println!(
        "rebuild, every event a new tag:    {worst_replayed} events in {:.2}s = {:.0} events/s",
        worst.as_secs_f64(),
        rate(worst_replayed as usize, worst)
    );
    Ok(())
}

/// Writes the history of `images` images of one namespace, each with 50 CI pushes: a
/// manifest (a base layer shared by every image, a layer shared within the image and a
/// layer and config of its own), a `build-N` tag, `latest` moved to it, and from the 11th
/// push on the tag and manifest of build N-10 deleted. The events are built directly (they
/// are what the domain decides for those commands) and appended 10 pushes per append.
async fn write_history(store: &Store, images: usize) -> anyhow::Result<()> {
    use layerline_core::domain::event::{ImageCreated, ManifestDeleted, TagDeleted};
    const PUSHES: u64 = 50;
    const KEEP: u64 = 10;
    let meta = Metadata::default();
    let ns_id = uuid::Uuid::now_v7().to_string();
    store
        .append(
            &streams::namespace(&ns_id),
            Expected::Version(0),
            &[DomainEvent::NamespaceCreated(bench_namespace(
                ns_id.clone(),
                "history",
            ))],
            &meta,
        )
        .await?;
    let sha = |kind: u64, image: u64, n: u64| format!("sha256:{kind:016x}{image:024x}{n:024x}");
    let layer = |digest: String, size: i64| Blob {
        digest,
        size,
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
    };
    for img in 0..images as u64 {
        let image_id = uuid::Uuid::now_v7().to_string();
        let stream = streams::image(&image_id);
        let mut events = vec![DomainEvent::ImageCreated(ImageCreated {
            image_id: image_id.clone(),
            namespace_id: ns_id.clone(),
            name: format!("app-{img}"),
            visibility: "inherit".into(),
        })];
        let latest_id = uuid::Uuid::now_v7().to_string();
        let mut build_ids = Vec::new();
        let mut version = 0;
        for n in 0..PUSHES {
            let manifest = sha(1, img, n);
            events.push(DomainEvent::ManifestRecorded(ManifestRecorded {
                digest: manifest.clone(),
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                platform: None,
                config: Some(Blob {
                    digest: sha(2, img, n),
                    size: 1_500,
                    media_type: "application/vnd.oci.image.config.v1+json".into(),
                }),
                layers: vec![
                    layer(sha(3, 0, 0), 30_000_000),
                    layer(sha(4, img, 0), 5_000_000),
                    layer(sha(5, img, n), 200_000 + n as i64),
                ],
                children: vec![],
                created: None,
                subject: None,
                artifact_type: None,
            }));
            let build_id = uuid::Uuid::now_v7().to_string();
            build_ids.push(build_id.clone());
            events.push(DomainEvent::TagPushed(TagPushed {
                tag_id: build_id,
                name: format!("build-{n}"),
                digest: manifest.clone(),
                pushed_at: None,
            }));
            events.push(DomainEvent::TagPushed(TagPushed {
                tag_id: latest_id.clone(),
                name: "latest".into(),
                digest: manifest,
                pushed_at: None,
            }));
            if n >= KEEP {
                let old = n - KEEP;
                events.push(DomainEvent::TagDeleted(TagDeleted {
                    tag_id: build_ids[old as usize].clone(),
                    name: format!("build-{old}"),
                }));
                events.push(DomainEvent::ManifestDeleted(ManifestDeleted {
                    digest: sha(1, img, old),
                }));
            }
            if n % 10 == 9 {
                let done = store
                    .append(&stream, Expected::Version(version), &events, &meta)
                    .await?;
                version = done.stream_version;
                events.clear();
            }
        }
    }
    Ok(())
}

struct RawRow {
    stream_id: String,
    event_type: &'static str,
    schema_version: i32,
    payload: String,
    metadata: String,
}

/// The baseline writer, once per driver: one plain INSERT per row.
mod raw {
    use super::*;

    const CREATE: &str = "CREATE TABLE bench_raw_events (position BIGINT PRIMARY KEY, \
        stream_id TEXT NOT NULL, stream_version BIGINT NOT NULL, event_type TEXT NOT NULL, \
        schema_version INTEGER NOT NULL, payload TEXT NOT NULL, metadata TEXT NOT NULL, \
        recorded_at TEXT NOT NULL)";
    const INSERT: &str = "INSERT INTO bench_raw_events (position, stream_id, stream_version, \
        event_type, schema_version, payload, metadata, recorded_at) \
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
    const MULTI_ROW_INSERT: &str = "INSERT INTO bench_raw_events (position, stream_id, \
        stream_version, event_type, schema_version, payload, metadata, recorded_at) ";

    pub struct RawTimes {
        pub batched: Duration,
        pub singles: Duration,
        pub batched_multi_row: Duration,
    }

    macro_rules! raw_writer {
        ($name:ident, $pool:ty) => {
            pub async fn $name(
                pool: &$pool,
                row: &RawRow,
                batches: usize,
                singles: usize,
            ) -> anyhow::Result<RawTimes> {
                sqlx::query(CREATE).execute(pool).await?;
                let mut position = 0_i64;
                let mut timed = Vec::new();
                for (transactions, per_tx) in [(batches, BATCH), (singles, 1)] {
                    let started = Instant::now();
                    for _ in 0..transactions {
                        let mut tx = pool.begin().await?;
                        let at = format_time(chrono::Utc::now());
                        for _ in 0..per_tx {
                            position += 1;
                            sqlx::query(INSERT)
                                .bind(position)
                                .bind(&row.stream_id)
                                .bind(position)
                                .bind(row.event_type)
                                .bind(row.schema_version)
                                .bind(&row.payload)
                                .bind(&row.metadata)
                                .bind(&at)
                                .execute(&mut *tx)
                                .await?;
                        }
                        tx.commit().await?;
                    }
                    timed.push(started.elapsed());
                }
                // The fastest plain form: one multi-row INSERT per 100-row transaction.
                let started = Instant::now();
                for _ in 0..batches {
                    let mut tx = pool.begin().await?;
                    let at = format_time(chrono::Utc::now());
                    let mut insert = sqlx::QueryBuilder::new(MULTI_ROW_INSERT);
                    insert.push_values(0..BATCH, |mut b, _| {
                        position += 1;
                        b.push_bind(position)
                            .push_bind(row.stream_id.clone())
                            .push_bind(position)
                            .push_bind(row.event_type)
                            .push_bind(row.schema_version)
                            .push_bind(row.payload.clone())
                            .push_bind(row.metadata.clone())
                            .push_bind(at.clone());
                    });
                    insert.build().execute(&mut *tx).await?;
                    tx.commit().await?;
                }
                Ok(RawTimes {
                    batched: timed[0],
                    singles: timed[1],
                    batched_multi_row: started.elapsed(),
                })
            }
        };
    }

    raw_writer!(sqlite, sqlx::SqlitePool);
    raw_writer!(postgres, sqlx::PgPool);
}

/// `bench api`: the read paths of the HTTP API, measured through a real server.
mod api {
    use std::collections::BTreeMap;

    use layerline_core::domain::Aggregate;
    use layerline_core::domain::event::{ImageCreated, ManifestRecorded};
    use layerline_core::domain::image::Image;
    use layerline_core::domain::namespace::Namespace;
    use layerline_core::http::{ApiConfig, AppState};
    use layerline_core::store::rows::materialize;
    use rand::{Rng, SeedableRng};

    use super::*;

    const IMAGES_PER_NAMESPACE: usize = 1_000;

    /// Builds images `from..to` (`tags` tags each, on one manifest of two layers) as
    /// aggregates and writes their read model rows in bulk; namespaces are created as needed.
    async fn seed(
        store: &Store,
        from: usize,
        to: usize,
        tags: usize,
    ) -> anyhow::Result<Vec<String>> {
        let mut namespaces: BTreeMap<usize, Namespace> = BTreeMap::new();
        let mut images = Vec::new();
        let at = format_time(chrono::Utc::now());
        for i in from..to {
            let ns_index = i / IMAGES_PER_NAMESPACE;
            let ns_id = format!("00000000-0000-4000-8000-{ns_index:012}");
            if i % IMAGES_PER_NAMESPACE == 0 {
                let mut ns = Namespace::default();
                ns.apply(
                    &DomainEvent::NamespaceCreated(bench_namespace(
                        ns_id.clone(),
                        format!("team-{ns_index:04}"),
                    )),
                    &at,
                    0,
                );
                namespaces.insert(ns_index, ns);
            }
            let image_id = uuid::Uuid::now_v7().to_string();
            let mut img = Image::default();
            let sha = |kind: u64, n: u64| format!("sha256:{kind:016x}{n:048x}");
            let blob = |digest: String, size: i64| Blob {
                digest,
                size,
                media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            };
            let mut events = vec![
                DomainEvent::ImageCreated(ImageCreated {
                    image_id: image_id.clone(),
                    namespace_id: ns_id,
                    name: format!("app-{i:06}"),
                    visibility: "inherit".into(),
                }),
                DomainEvent::ManifestRecorded(ManifestRecorded {
                    digest: sha(1, i as u64),
                    media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                    platform: None,
                    config: Some(blob(sha(2, i as u64), 1_000)),
                    layers: vec![blob(sha(3, 0), 30_000_000), blob(sha(4, i as u64), 100_000)],
                    children: vec![],
                    created: None,
                    subject: None,
                    artifact_type: None,
                }),
            ];
            for t in 0..tags {
                events.push(DomainEvent::TagPushed(TagPushed {
                    tag_id: uuid::Uuid::now_v7().to_string(),
                    name: format!("v{t}"),
                    digest: sha(1, i as u64),
                    pushed_at: None,
                }));
            }
            for (n, e) in events.iter().enumerate() {
                // Positions only need to be unique per manifest: derive one per image.
                img.apply(e, &at, (i * 100 + n) as i64 + 1);
            }
            images.push(img);
        }
        // Rounds start at a namespace boundary (checked by `run`), so every namespace here is new.
        let rows = materialize(namespaces.values(), images.iter(), [], []);
        store.bulk_load(&rows).await?;
        Ok(rows.images.iter().map(|i| i.id.clone()).collect())
    }

    struct Measured {
        name: &'static str,
        p50: f64,
        p99: f64,
    }

    async fn measure(
        client: &reqwest::Client,
        name: &'static str,
        requests: usize,
        mut url: impl FnMut() -> String,
    ) -> anyhow::Result<Measured> {
        let mut samples = Vec::with_capacity(requests);
        for i in 0..requests + 20 {
            let u = url();
            let started = Instant::now();
            let resp = client.get(&u).header("X-Auth-Token", TOKEN).send().await?;
            let status = resp.status();
            let _ = resp.bytes().await?;
            let elapsed = started.elapsed().as_secs_f64() * 1000.0;
            anyhow::ensure!(status.is_success(), "{u} answered {status}");
            if i >= 20 {
                // The first 20 warm caches and connections.
                samples.push(elapsed);
            }
        }
        let (p50, p99) = quantiles(&mut samples);
        Ok(Measured { name, p50, p99 })
    }

    const TOKEN: &str = "0b8e4f8a-3c1d-4e2f-9a6b-7c8d9e0f1a2b";

    async fn measure_all(
        base: &str,
        image_ids: &[String],
        images: usize,
        requests: usize,
    ) -> anyhow::Result<Vec<Measured>> {
        let client = reqwest::Client::new();
        let scw = format!("{base}/registry/v1/regions/fr-par");
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut out = Vec::new();
        out.push(
            measure(&client, "images, first page", requests, || {
                format!("{scw}/images?page_size=20")
            })
            .await?,
        );
        out.push(
            measure(&client, "images, page 500", requests, || {
                format!("{scw}/images?page=500&page_size=20")
            })
            .await?,
        );
        let mut r = rng.clone();
        out.push(
            measure(&client, "images, name filter", requests, || {
                format!("{scw}/images?name=app-{:06}", r.random_range(0..images))
            })
            .await?,
        );
        out.push(
            measure(&client, "images, name_desc", requests, || {
                format!("{scw}/images?order_by=name_desc&page_size=20")
            })
            .await?,
        );
        out.push(
            measure(&client, "tags of one image", requests, || {
                let id = &image_ids[rng.random_range(0..image_ids.len())];
                format!("{scw}/images/{id}/tags")
            })
            .await?,
        );
        // Yandex: the page that starts 1 000 manifests deep.
        let first: serde_json::Value = client
            .get(format!("{base}/container-registry/v1/images?pageSize=1000"))
            .header("X-Auth-Token", TOKEN)
            .send()
            .await?
            .json()
            .await?;
        let token = first["nextPageToken"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        out.push(
            measure(&client, "yandex, 1 000 deep", requests, || {
                format!("{base}/container-registry/v1/images?pageSize=100&pageToken={token}")
            })
            .await?,
        );
        Ok(out)
    }

    pub async fn run(args: &ApiArgs, url: &str, max_connections: u32) -> anyhow::Result<()> {
        anyhow::ensure!(
            args.small_images.is_multiple_of(IMAGES_PER_NAMESPACE)
                && args.small_images < args.images,
            "--small-images must be a multiple of {IMAGES_PER_NAMESPACE} below --images"
        );
        let store = Store::connect(url, max_connections).await?;
        store.migrate().await?;
        Registry::new(store.clone())
            .create_token(
                "bench",
                &["admin".to_owned()],
                None,
                Some(uuid::Uuid::parse_str(TOKEN)?),
                &Metadata::default(),
            )
            .await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let state = AppState::new(
            store.clone(),
            ApiConfig {
                regions: vec!["fr-par".into()],
                registry_endpoint: "localhost:5000".into(),
                archive_max_bytes: layerline_core::config::DEFAULT_ARCHIVE_MAX_BYTES,
            },
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(layerline_core::http::serve(listener, state, async {
            let _ = stopped.await;
        }));

        let started = Instant::now();
        let mut ids = seed(&store, 0, args.small_images, 1).await?;
        eprintln!(
            "seeded {} images in {:.1}s",
            args.small_images,
            started.elapsed().as_secs_f64()
        );
        let small = measure_all(&base, &ids, args.small_images, args.requests).await?;
        let started = Instant::now();
        let rest = args.images - args.small_images;
        anyhow::ensure!(
            args.tags >= args.small_images && (args.tags - args.small_images).is_multiple_of(rest),
            "the tags beyond the small scale must spread evenly over the images beyond it"
        );
        let tags_each = (args.tags - args.small_images) / rest;
        ids.extend(seed(&store, args.small_images, args.images, tags_each).await?);
        eprintln!(
            "seeded {} images in {:.1}s",
            args.images,
            started.elapsed().as_secs_f64()
        );
        let large = measure_all(&base, &ids, args.images, args.requests).await?;
        let _ = stop.send(());
        server.await??;
        store.close().await;

        println!(
            "bench api on {:?}: {} requests per query, sequential, over HTTP",
            store.backend(),
            args.requests
        );
        println!(
            "{:<22} {:>22} {:>24} {:>9}",
            "query",
            format!("{} tags p50/p99 ms", args.small_images),
            format!("{} tags p50/p99 ms", args.tags),
            "p99 ratio"
        );
        for (s, l) in small.iter().zip(&large) {
            println!(
                "{:<22} {:>10.2} / {:>9.2} {:>11.2} / {:>10.2} {:>9.2}",
                s.name,
                s.p50,
                s.p99,
                l.p50,
                l.p99,
                l.p99 / s.p99
            );
        }
        Ok(())
    }
}
