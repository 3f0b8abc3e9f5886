//! `layerline bench import`: a catalog import from a local registry through our worker pool,
//! against a plain concurrent fetch of the same manifests with the same client and the same
//! concurrency, in the same run.
//!
//! The registry is Debian's `docker-registry` started here (temporary storage, a free
//! loopback port) unless `--registry` names one; the fixtures are pushed over the OCI API.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use layerline_core::domain::source::CatalogImport;
use layerline_core::oci::{Client, Credentials, OCI_MANIFEST, sha256};
use layerline_core::service::Registry;
use layerline_core::store::Store;
use layerline_jobs::{PoolConfig, Queues};
use serde_json::json;

use super::{Pool, bench_namespace, run_job};

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// Repositories pushed.
    #[arg(long, default_value_t = 20)]
    repos: usize,
    /// Tags per repository, each on a manifest of its own.
    #[arg(long, default_value_t = 50)]
    tags: usize,
    /// Manifest fetches in flight, on both sides (our import's own bound).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Rounds, each a plain fetch then an import into a namespace of its own; the ratio
    /// quoted is the median round's.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

/// A `docker-registry` of the bench's own, killed when dropped.
struct LocalRegistry {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn local_registry() -> anyhow::Result<LocalRegistry> {
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        ),
    )?;
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting Debian's docker-registry: {e}"))?;
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(20),
            "registry did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(LocalRegistry {
        child,
        base: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    })
}

/// Uploads `bytes` as a blob of `repo`; returns its digest and size.
async fn blob(
    http: reqwest::Client,
    base: String,
    repo: String,
    bytes: Vec<u8>,
) -> anyhow::Result<(String, usize)> {
    let res = http
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await?;
    let location = res.headers()["location"].to_str()?.to_owned();
    let location = if location.starts_with('/') {
        format!("{base}{location}")
    } else {
        location
    };
    let digest = sha256(&bytes);
    let sep = if location.contains('?') { '&' } else { '?' };
    let len = bytes.len();
    let res = http
        .put(format!("{location}{sep}digest={digest}"))
        .body(bytes)
        .send()
        .await?;
    anyhow::ensure!(res.status() == 201, "blob upload: {}", res.status());
    Ok((digest, len))
}

/// Pushes `repos` × `tags` manifests (a config, a layer shared by the repository and one of
/// its own each), `concurrency` requests at a time.
async fn push_fixtures(base: &str, args: &ImportArgs) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let mut tasks = tokio::task::JoinSet::new();
    for r in 0..args.repos {
        let repo = format!("bench/repo-{r:03}");
        let base_bytes = format!("base of {repo}").into_bytes();
        let (base_layer, base_len) =
            blob(http.clone(), base.to_owned(), repo.clone(), base_bytes).await?;
        for t in 0..args.tags {
            let (repo, base_layer, http, base) = (
                repo.clone(),
                base_layer.clone(),
                http.clone(),
                base.to_owned(),
            );
            tasks.spawn(async move {
                let config = json!({"architecture": "amd64", "os": "linux", "tag": t}).to_string();
                let (config_digest, config_len) = blob(
                    http.clone(),
                    base.clone(),
                    repo.clone(),
                    config.into_bytes(),
                )
                .await?;
                let layer_bytes = format!("{repo} v{t}").into_bytes();
                let (layer, layer_len) =
                    blob(http.clone(), base.clone(), repo.clone(), layer_bytes).await?;
                let body = json!({
                    "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                               "digest": config_digest, "size": config_len},
                    "layers": [
                        {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                         "digest": base_layer, "size": base_len},
                        {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                         "digest": layer, "size": layer_len},
                    ],
                })
                .to_string();
                let res = http
                    .put(format!("{base}/v2/{repo}/manifests/v{t}"))
                    .header("content-type", OCI_MANIFEST)
                    .body(body)
                    .send()
                    .await?;
                anyhow::ensure!(res.status() == 201, "manifest put: {}", res.status());
                Ok(())
            });
            while tasks.len() >= args.concurrency {
                tasks.join_next().await.expect("non-empty")??;
            }
        }
    }
    while let Some(t) = tasks.join_next().await {
        t??;
    }
    Ok(())
}

pub async fn run(args: &ImportArgs, url: &str, max_connections: u32) -> anyhow::Result<()> {
    let registry = local_registry().await?;
    // The import jobs reach only what the operator allows, loopback included.
    layerline_core::oci::Egress::from_env()
        .check_url(&registry.base)
        .map_err(|e| {
            anyhow::anyhow!("{e}; run the bench with LAYERLINE_REGISTRY_ALLOW=127.0.0.1")
        })?;
    let started = Instant::now();
    push_fixtures(&registry.base, args).await?;
    let manifests = args.repos * args.tags;
    println!(
        "pushed {} repositories × {} tags to {} in {:.1} s",
        args.repos,
        args.tags,
        registry.base,
        started.elapsed().as_secs_f64()
    );

    let store = Store::connect(url, max_connections).await?;
    store.migrate().await?;
    let queues = Queues::new(store.clone(), PoolConfig::default());
    queues.migrate().await?;
    let pool = Pool::start(&store, &queues, PoolConfig::default().workers);
    println!(
        "backend: {:?}; {manifests} manifests, {} at once on both sides",
        store.backend(),
        args.concurrency
    );
    // Two baselines: manifests only (what an import needed before it read each image's
    // age), and manifests with their configs (what reading the age costs any importer).
    println!(
        "| round | plain fetch, s | manifests/s | plain fetch with configs, s | our import job, s \
         | manifests/s | ratio to plain | ratio to plain with configs | inside the job: listing, \
         fetching and recording, ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut rounds = Vec::new();
    for round in 1..=args.rounds.max(1) {
        let plain = plain_fetch(&registry.base, args.concurrency, manifests, false).await?;
        let configs = plain_fetch(&registry.base, args.concurrency, manifests, true).await?;
        let (ours, output) = import_once(&store, &queues, &registry.base, manifests).await?;
        println!(
            "| {round} | {plain:.2} | {:.0} | {configs:.2} | {ours:.2} | {:.0} | {:.2} | {:.2} \
             | {} + {} |",
            manifests as f64 / plain,
            manifests as f64 / ours,
            plain / ours,
            configs / ours,
            output["timings_ms"]["list"],
            output["timings_ms"]["import"]
        );
        rounds.push((plain / ours, configs / ours, plain, ours));
    }
    pool.stop().await?;
    rounds.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (ratio, with_configs, plain, ours) = rounds[rounds.len() / 2];
    println!(
        "median round: plain {:.0} manifests/s, ours {:.0} manifests/s, ratio (ours / plain) \
         {ratio:.2}, to plain with configs {with_configs:.2}",
        manifests as f64 / plain,
        manifests as f64 / ours
    );
    store.close().await;
    Ok(())
}

/// Baseline: the same client fetches (and verifies) every manifest, `concurrency` at once,
/// and with `configs` each image manifest's config blob too.
/// Returns the seconds it took.
async fn plain_fetch(
    base: &str,
    concurrency: usize,
    manifests: usize,
    configs: bool,
) -> anyhow::Result<f64> {
    let client = Client::new(base, Credentials::Anonymous, concurrency)?;
    let t = Instant::now();
    let repos = client.catalog().await?;
    let mut fetches = tokio::task::JoinSet::new();
    let mut fetched = 0;
    for repo in &repos {
        for tag in client.tags(repo).await? {
            let (client, repo) = (client.clone(), repo.clone());
            fetches.spawn(async move {
                let m = client.manifest(&repo, &tag).await?;
                if configs {
                    let body: serde_json::Value =
                        serde_json::from_slice(&m.body).unwrap_or_default();
                    if let Some(digest) = body["config"]["digest"].as_str() {
                        let (res, _) = client.blob(&repo, digest).await?;
                        res.bytes()
                            .await
                            .map_err(|e| layerline_core::oci::OciError::Transport(e.to_string()))?;
                    }
                }
                Ok::<_, layerline_core::oci::OciError>(m)
            });
            while fetches.len() >= concurrency {
                fetches.join_next().await.expect("non-empty")??;
                fetched += 1;
            }
        }
    }
    while let Some(f) = fetches.join_next().await {
        f??;
        fetched += 1;
    }
    anyhow::ensure!(fetched == manifests, "fetched {fetched} of {manifests}");
    Ok(t.elapsed().as_secs_f64())
}

/// Ours: a catalog import job of the registry at `base` into a new namespace, through the
/// worker pool (submit → completed). Returns the seconds it took and the job's output.
async fn import_once(
    store: &Store,
    queues: &Queues,
    base: &str,
    manifests: usize,
) -> anyhow::Result<(f64, serde_json::Value)> {
    let ns_id = uuid::Uuid::now_v7().to_string();
    Registry::new(store.clone())
        .create_namespace(
            bench_namespace(ns_id.clone(), format!("import-{ns_id}")),
            &layerline_core::store::Metadata::default(),
        )
        .await?;
    let input = CatalogImport {
        namespace_id: ns_id,
        registry: base.to_owned(),
        repositories: None,
        credentials: None,
    };
    let t = Instant::now();
    let kind = layerline_core::domain::job::JobKind::Import;
    let output = run_job(store, queues, kind, serde_json::to_value(&input)?).await?;
    let ours = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        output["manifests_recorded"].as_u64() == Some(manifests as u64),
        "recorded {} of {manifests}",
        output["manifests_recorded"]
    );
    Ok((ours, output))
}
