//! `layerline`: the command line. Parses flags, resolves configuration and hands over to the
//! library; everything with behaviour lives in `layerline-core` or in `bin/` modules below.

mod bench;
mod jobs_cli;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use layerline_core::config::{Layer, LogFormat, Role, Settings};
use layerline_core::http::{self, ApiConfig, AppState};
use layerline_core::metric;
use layerline_core::service::Registry;
use layerline_core::store::{Metadata, Store};
use layerline_jobs::scheduler::Scheduler;
use layerline_jobs::{PoolConfig, Queues, RetryPolicy, Runner};
use tokio::net::TcpListener;

#[derive(Parser, Debug)]
#[command(
    name = "layerline",
    version = layerline_core::VERSION,
    about = "Event-sourced control plane for container registries",
    long_about = "Layerline records every change to namespaces, images, tags, manifests and \
                  layers in an append-only event log and serves listings and sizes from read \
                  models built from it. It runs on SQLite by default and on PostgreSQL to scale \
                  out.\n\nConfiguration comes from flags, then LAYERLINE_* environment variables, \
                  then an optional TOML file (--config), then defaults."
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug)]
struct GlobalArgs {
    /// TOML file with settings (keys as the flag names with `_`, e.g. `database_url`).
    #[arg(long, global = true, env = "LAYERLINE_CONFIG")]
    config: Option<PathBuf>,
    /// Database URL: `sqlite://PATH` (created if missing) or `postgres://USER@HOST/DB`.
    /// [default: sqlite://layerline.db]
    #[arg(long, global = true, env = "LAYERLINE_DATABASE_URL")]
    database_url: Option<String>,
    /// Connections in the database pool. [default: 10]
    #[arg(long, global = true, env = "LAYERLINE_MAX_CONNECTIONS")]
    max_connections: Option<u32>,
    /// Log format: `text` or `json`. [default: text]
    #[arg(long, global = true, env = "LAYERLINE_LOG_FORMAT")]
    log_format: Option<LogFormat>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the HTTP API (migrating the database first). Stops cleanly on SIGTERM or Ctrl-C.
    Serve(ServeArgs),
    /// Apply pending database migrations and exit.
    Migrate,
    /// Drop the read models and replay the whole event log into them.
    Rebuild,
    /// Manage API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// List, show, follow and cancel jobs of a running service (over its HTTP API).
    Jobs(jobs_cli::JobsArgs),
    /// Run a stored prune policy now (or only plan it with --dry-run) and follow the run
    /// to its end, printing what it planned.
    Prune(jobs_cli::PruneArgs),
    /// Import a repository (or one tag) from an OCI registry into a namespace, creating the
    /// image if needed, and follow the import job to its end.
    Import(jobs_cli::ImportArgs),
    /// Measure throughput against a plain-SQL baseline on the configured database.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Address of the HTTP API. [default: 127.0.0.1:8080]
    #[arg(long, env = "LAYERLINE_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// Address of the Prometheus metrics listener. [default: 127.0.0.1:9464]
    #[arg(long, env = "LAYERLINE_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Regions the Scaleway API answers for, comma-separated. [default: fr-par]
    #[arg(long, env = "LAYERLINE_REGIONS", value_delimiter = ',')]
    regions: Option<Vec<String>>,
    /// Registry `host[:port]` namespaces report as their endpoint (+ `/name`).
    /// [default: localhost:5000]
    #[arg(long, env = "LAYERLINE_REGISTRY_ENDPOINT")]
    registry_endpoint: Option<String>,
    /// What this process runs: `all` (API and job workers), `api` or `worker`. Several
    /// processes on one PostgreSQL database share the jobs. [default: all]
    #[arg(long, env = "LAYERLINE_ROLE")]
    role: Option<Role>,
    /// Jobs this process runs at once. [default: 4]
    #[arg(long, env = "LAYERLINE_WORKERS")]
    workers: Option<usize>,
    /// Seconds without a heartbeat after which a worker counts as dead and its jobs are
    /// taken over by another (or by itself after a restart). [default: 20]
    #[arg(long, env = "LAYERLINE_ORPHAN_TIMEOUT_SECS")]
    orphan_timeout_secs: Option<u64>,
    /// First retry delay of a job that failed transiently, in milliseconds; it doubles with
    /// each attempt (at most 5 attempts). [default: 2000]
    #[arg(long, env = "LAYERLINE_RETRY_BASE_MS")]
    retry_base_ms: Option<u64>,
    /// How often this process's prune scheduler looks for policies due to run, in
    /// milliseconds (50 to 60000). Every worker process schedules; each scheduled instant
    /// of a policy still starts one job. [default: 500]
    #[arg(long, env = "LAYERLINE_SCHEDULER_TICK_MS")]
    scheduler_tick_ms: Option<u64>,
    /// Largest image archive `POST /v1/images/{id}/archive` accepts, in bytes; the upload is
    /// kept in a temporary file while it is imported. [default: 2147483648 (2 GiB)]
    #[arg(long, env = "LAYERLINE_ARCHIVE_MAX_BYTES")]
    archive_max_bytes: Option<u64>,
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Create an API token and print its secret (shown once; only a hash is stored).
    Create(TokenCreateArgs),
}

#[derive(Args, Debug)]
struct TokenCreateArgs {
    /// A name to recognise the token by.
    #[arg(long)]
    name: String,
    /// Comma-separated capabilities: images-view, images-manage, images-import, jobs-view,
    /// policies-manage, admin.
    #[arg(long, value_delimiter = ',', required = true)]
    capabilities: Vec<String>,
    /// Confine the token to one project: other projects' resources are invisible to it.
    #[arg(long)]
    project_id: Option<String>,
}

fn settings(cli: &Cli) -> anyhow::Result<Settings> {
    let serve = match &cli.command {
        Command::Serve(a) => Some(a),
        _ => None,
    };
    let flags = Layer {
        listen: serve.and_then(|a| a.listen),
        metrics_listen: serve.and_then(|a| a.metrics_listen),
        regions: serve.and_then(|a| a.regions.clone()),
        registry_endpoint: serve.and_then(|a| a.registry_endpoint.clone()),
        role: serve.and_then(|a| a.role),
        workers: serve.and_then(|a| a.workers),
        orphan_timeout_secs: serve.and_then(|a| a.orphan_timeout_secs),
        retry_base_ms: serve.and_then(|a| a.retry_base_ms),
        scheduler_tick_ms: serve.and_then(|a| a.scheduler_tick_ms),
        archive_max_bytes: serve.and_then(|a| a.archive_max_bytes),
        database_url: cli.global.database_url.clone(),
        max_connections: cli.global.max_connections,
        log_format: cli.global.log_format,
    };
    let file = match &cli.global.config {
        Some(path) => Layer::from_file(path)?,
        None => Layer::default(),
    };
    Ok(flags.over(file).resolve()?)
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LAYERLINE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal: a log file or a pipe gets plain text.
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Runs the command; a failure is one line on stderr (the error and its causes, never a
/// backtrace, whatever `RUST_BACKTRACE` says: it is the user's error or the world's, not a
/// crash) and exit code 1. Usage errors are clap's: exit code 2.
fn main() -> std::process::ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build();
    let result = match runtime {
        Ok(runtime) => runtime.block_on(run()),
        Err(e) => Err(anyhow::Error::new(e).context("starting the async runtime")),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The causes, outermost first; one its outer message already repeats is left out.
            let mut line = String::new();
            for cause in e.chain().map(|c| c.to_string()) {
                if !line.contains(&cause) {
                    let sep = if line.is_empty() { "" } else { ": " };
                    line = format!("{line}{sep}{cause}");
                }
            }
            eprintln!("error: {line}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = settings(&cli)?;
    init_logging(settings.log_format);
    match cli.command {
        Command::Serve(_) => serve(settings).await,
        Command::Migrate => {
            let store = connect(&settings).await?;
            let applied = store.migrate().await?;
            queues(&store, &settings).migrate().await?;
            println!("applied {} migration(s): {applied:?}", applied.len());
            Ok(())
        }
        Command::Rebuild => rebuild(settings).await,
        Command::Token(TokenCommand::Create(args)) => {
            let store = connect(&settings).await?;
            store.migrate().await?;
            let registry = Registry::new(store.clone());
            let meta = Metadata {
                actor: Some("cli".to_owned()),
                ..Metadata::default()
            };
            let token = registry
                .create_token(&args.name, &args.capabilities, args.project_id, None, &meta)
                .await?
                .expect("a random secret never collides");
            eprintln!(
                "created token {} ({}); the secret is shown once:",
                token.id, args.name
            );
            println!("{}", token.secret);
            Ok(())
        }
        Command::Jobs(args) => jobs_cli::run(args).await,
        Command::Prune(args) => jobs_cli::prune(args).await,
        Command::Import(args) => jobs_cli::import(args).await,
        Command::Bench(cmd) => bench::run(cmd, &settings).await,
    }
}

/// The job queues on the store's database, timed by the settings.
fn queues(store: &Store, settings: &Settings) -> Queues {
    Queues::new(
        store.clone(),
        PoolConfig {
            workers: settings.workers,
            orphan_after: Duration::from_secs(settings.orphan_timeout_secs),
            ..PoolConfig::default()
        },
    )
}

async fn connect(settings: &Settings) -> anyhow::Result<Store> {
    Store::connect(&settings.database_url, settings.max_connections)
        .await
        .with_context(|| format!("connecting to {}", redact(&settings.database_url)))
}

/// The URL with any password replaced, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let store = connect(&settings).await?;
    let applied = store.migrate().await?;
    if !applied.is_empty() {
        tracing::info!(?applied, "applied migrations");
    }
    let queues = queues(&store, &settings);
    queues
        .migrate()
        .await
        .context("migrating the job queue tables")?;
    let first_token = bootstrap_token(&store).await?;
    let prometheus = metrics_recorder()?;
    metric::describe();

    // A worker-only process serves no API, so it takes no API port.
    let listener = match settings.role.serves_api() {
        true => Some(
            TcpListener::bind(settings.listen)
                .await
                .with_context(|| format!("binding {}", settings.listen))?,
        ),
        false => None,
    };
    let metrics_listener = TcpListener::bind(settings.metrics_listen)
        .await
        .with_context(|| format!("binding {}", settings.metrics_listen))?;
    let metrics_local = metrics_listener.local_addr()?;
    // Signals are ours before the addresses are announced: whoever reads them may stop us
    // at once.
    let signal = shutdown_signal()?;
    tracing::info!(role = ?settings.role, metrics = %metrics_local, database = %redact(&settings.database_url), "serving");
    // Plain lines on stdout say where we listen (useful with `--listen 127.0.0.1:0`); the
    // metrics line comes last.
    if let Some(secret) = first_token {
        let api = match &listener {
            Some(l) => l.local_addr()?.to_string(),
            None => settings.listen.to_string(),
        };
        println!(
            "No token existed, so this created an admin token. Its secret is shown this once, \
             never again:\n\n    export LAYERLINE_TOKEN={secret}\n\nThen, for example:\n\n    \
             curl -H \"X-Auth-Token: $LAYERLINE_TOKEN\" \
             http://{api}/registry/v1/regions/{region}/namespaces\n    \
             layerline token create --name ci --capabilities images-view   # more tokens\n",
            region = settings.regions.first().map_or("fr-par", String::as_str),
        );
    }
    if let Some(listener) = &listener {
        println!("listening on http://{}", listener.local_addr()?);
    }
    println!("metrics on http://{metrics_local}/metrics");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_watch = stop_rx.clone();
    let stopped = move || {
        let mut rx = stop_watch.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let metrics_task = tokio::spawn(http::serve_metrics(
        metrics_listener,
        store.clone(),
        move || prometheus.render(),
        stopped(),
    ));
    tokio::spawn(async move {
        signal.await;
        tracing::info!("shutdown signal received; finishing in-flight requests");
        let _ = stop_tx.send(true);
    });
    let workers = settings.role.runs_workers().then(|| {
        let retry = RetryPolicy {
            base: Duration::from_millis(settings.retry_base_ms),
            ..RetryPolicy::default()
        };
        let runner = Runner::new(
            store.clone(),
            Arc::new(queues.clone()),
            retry,
            settings.workers,
        );
        tracing::info!(workers = settings.workers, "job workers started");
        let scheduler = Scheduler::new(store.clone(), Arc::new(queues.clone()));
        let scheduler = tokio::spawn(layerline_jobs::scheduler::run(
            scheduler,
            Duration::from_millis(settings.scheduler_tick_ms),
            stop_rx.clone(),
        ));
        let pool = tokio::spawn(layerline_jobs::pool::run(
            queues.clone(),
            Arc::new(runner),
            stop_rx.clone(),
        ));
        (pool, scheduler)
    });
    match listener {
        Some(listener) => {
            let api = ApiConfig {
                regions: settings.regions.clone(),
                registry_endpoint: settings.registry_endpoint.clone(),
                archive_max_bytes: settings.archive_max_bytes,
            };
            let state = AppState::new(store.clone(), api).with_dispatcher(Arc::new(queues));
            http::serve(listener, state, stopped()).await?;
        }
        None => stopped().await,
    }
    if let Some((pool, scheduler)) = workers {
        pool.await?;
        scheduler.await?;
    }
    metrics_task.await??;
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Installs the Prometheus recorder with each histogram's buckets. Gauges not set for
/// [`metric::GAUGE_IDLE_TIMEOUT`] are dropped (every scrape sets the live ones), so a
/// deleted policy's gauge goes away.
fn metrics_recorder() -> anyhow::Result<metrics_exporter_prometheus::PrometheusHandle> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let buckets: [(&str, &[f64]); 3] = [
        (metric::HTTP_DURATION, &metric::HTTP_DURATION_BUCKETS),
        (metric::JOB_PICKUP, &metric::JOB_PICKUP_BUCKETS),
        (metric::JOB_DURATION, &metric::JOB_DURATION_BUCKETS),
    ];
    let mut builder = PrometheusBuilder::new().idle_timeout(
        metrics_util::MetricKindMask::GAUGE,
        Some(metric::GAUGE_IDLE_TIMEOUT),
    );
    for (name, values) in buckets {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.to_owned()), values)
            .context("configuring histogram buckets")?;
    }
    builder
        .install_recorder()
        .context("installing the metrics recorder")
}

/// Creates the admin token `LAYERLINE_BOOTSTRAP_TOKEN` names (a UUID), once. Without it, on
/// a deployment that has no token yet, creates a first admin token and returns its secret,
/// for `serve` to show once: the only time it exists outside the process.
async fn bootstrap_token(store: &Store) -> anyhow::Result<Option<String>> {
    let meta = Metadata {
        actor: Some("bootstrap".to_owned()),
        ..Metadata::default()
    };
    let Ok(value) = std::env::var("LAYERLINE_BOOTSTRAP_TOKEN") else {
        let created = Registry::new(store.clone())
            .create_first_token(&meta)
            .await?;
        if let Some(token) = &created {
            // The id only: the secret is never logged.
            tracing::info!(token_id = %token.id, "created the first admin token");
        }
        return Ok(created.map(|t| t.secret));
    };
    // Tokens are accepted only in the spelling they were made with, the canonical one.
    let secret = uuid::Uuid::parse_str(value.trim())
        .ok()
        .filter(|u| u.hyphenated().to_string() == value.trim())
        .context(
            "LAYERLINE_BOOTSTRAP_TOKEN must be a UUID in lowercase with hyphens \
             (as /proc/sys/kernel/random/uuid prints one)",
        )?;
    let created = Registry::new(store.clone())
        .create_token(
            "bootstrap",
            &["admin".to_owned()],
            None,
            Some(secret),
            &meta,
        )
        .await?;
    if let Some(token) = created {
        tracing::info!(token_id = %token.id, "created the bootstrap admin token");
    }
    Ok(None)
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C). The handlers are installed when this is
/// called, not when the future is first polled: a signal that arrives after the call is
/// never taken by the default action, which would end the process without a clean stop.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("handling SIGINT")?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

async fn rebuild(settings: Settings) -> anyhow::Result<()> {
    let store = connect(&settings).await?;
    store.migrate().await?;
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "{spinner} replaying [{bar:40}] {pos}/{len} events ({per_sec})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let started = Instant::now();
    let replayed = store
        .rebuild(&|done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })
        .await?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "rebuilt read models from {replayed} events in {secs:.2}s ({:.0} events/s)",
        replayed as f64 / secs.max(1e-9)
    );
    Ok(())
}
