//! `layerline bench jobs`: no-op jobs through our pool against a bare apalis worker with a
//! trivial handler on the same database in the same run, then the idle pickup latency.
//!
//! Both sides drain a queue filled beforehand, with the same concurrency, batch size and poll
//! interval. Ours does what every job does: folds the job's stream, records `job.started`
//! (fencing the attempt), runs the handler, records `job.succeeded`, with the descriptor
//! projected in the same transactions. The bare worker only acknowledges.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use apalis::prelude::*;
use apalis_core::backend::ext::poll_strategy::{IntervalStrategy, Strategy};
use apalis_postgres::PostgresStorage;
use apalis_sqlite::SqliteStorage;
use clap::Args;
use layerline_core::domain::job::JobKind;
use layerline_core::jobs::{Submission, submit};
use layerline_core::service::Registry;
use layerline_core::store::{JobQuery, ReadModels, Store};
use layerline_jobs::{PoolConfig, Queues};
use rand::Rng;
use serde_json::json;
use tokio::sync::Notify;

use super::{Pool, quantiles};

#[derive(Args, Debug)]
pub struct JobsArgs {
    /// Jobs each side drains.
    #[arg(long, default_value_t = 5000)]
    jobs: usize,
    /// Jobs running at once, on both sides.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Poll interval of idle workers, in milliseconds (as `serve` uses).
    #[arg(long, default_value_t = 100)]
    poll_ms: u64,
    /// Idle pickups measured (one job at a time, 50–250 ms apart).
    #[arg(long, default_value_t = 200)]
    pickups: usize,
}

/// The bare side's queue: its own name, so it never meets ours.
const BARE_QUEUE: &str = "bench_bare";

/// How often the bench counts our completed jobs while ours drain. The count is a query on
/// the database the pool is using, and it costs more as jobs complete (about 1 ms at 5 000 on
/// PostgreSQL). Every 10 ms it took up to 13 % of PostgreSQL's busy time by the drain's end,
/// which the bare side, counting in its handler, never paid. At 50 ms the drain's time is
/// overstated by at most 50 ms.
const DRAIN_CHECK: Duration = Duration::from_millis(50);

pub async fn run(args: &JobsArgs, url: &str, max_connections: u32) -> anyhow::Result<()> {
    let store = Store::connect(url, max_connections).await?;
    store.migrate().await?;
    let config = PoolConfig {
        workers: args.workers,
        poll: Duration::from_millis(args.poll_ms),
        ..PoolConfig::default()
    };
    let queues = Queues::new(store.clone(), config);
    queues.migrate().await?;

    // Bare apalis: fill, then drain with a handler that only counts.
    let bare = bare_drain(&store, &config, args.jobs).await?;
    let bare_rate = args.jobs as f64 / bare.as_secs_f64();

    // Ours: accept and queue every job first (not timed), then drain through the pool.
    let registry = Registry::new(store.clone());
    for i in 0..args.jobs {
        submit(&registry, &queues, probe(i)).await?;
    }
    let started = Instant::now();
    let pool = Pool::start(&store, &queues, args.workers);
    while completed(&store).await? < args.jobs as i64 {
        tokio::time::sleep(DRAIN_CHECK).await;
    }
    let ours = started.elapsed();
    let ours_rate = args.jobs as f64 / ours.as_secs_f64();

    // Idle pickup: the pool waits with nothing to do; one job at a time, at random moments
    // (so the submissions do not fall in step with the poll interval).
    let mut samples = Vec::with_capacity(args.pickups);
    for i in 0..args.pickups {
        let pause = rand::rng().random_range(50..250);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let submitted = Instant::now();
        let job = submit(&registry, &queues, probe(args.jobs + i)).await?;
        loop {
            let row = store.job(&job.id).await?.expect("the job exists");
            if row.started_at.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        samples.push(submitted.elapsed().as_secs_f64() * 1000.0);
    }
    pool.stop().await?;
    let (p50, p99) = quantiles(&mut samples);

    println!(
        "backend: {:?}, {} jobs per side, concurrency {}",
        store.backend(),
        args.jobs,
        args.workers
    );
    println!("| side | seconds | jobs/s |");
    println!("|---|---|---|");
    println!(
        "| bare apalis worker, trivial handler | {:.2} | {bare_rate:.0} |",
        bare.as_secs_f64()
    );
    println!(
        "| our pool, no-op probe jobs | {:.2} | {ours_rate:.0} |",
        ours.as_secs_f64()
    );
    println!("ratio (ours / bare): {:.2}", ours_rate / bare_rate);
    println!(
        "idle pickup (submit → job.started seen), {} samples: p50 {p50:.1} ms, p99 {p99:.1} ms",
        args.pickups
    );
    store.close().await;
    Ok(())
}

fn probe(i: usize) -> Submission {
    Submission {
        kind: JobKind::Probe,
        caption: format!("bench {i}"),
        input: json!({}),
        creator: None,
        idempotency_key: None,
        marks: None,
        project_id: None,
    }
}

async fn completed(store: &Store) -> anyhow::Result<i64> {
    let query = JobQuery {
        states: vec!["completed".to_owned()],
        limit: 1,
        ..JobQuery::default()
    };
    Ok(store.list_jobs(&query).await?.total_count)
}

/// The bare worker's state: how many tasks it has handled, and a bell for the last one.
#[derive(Clone)]
struct Count {
    done: Arc<AtomicUsize>,
    target: usize,
    finished: Arc<Notify>,
}

async fn count(_: u64, count: Data<Count>) -> Result<(), BoxDynError> {
    if count.done.fetch_add(1, Ordering::SeqCst) + 1 == count.target {
        count.finished.notify_one();
    }
    Ok(())
}

/// Pushes `n` tasks onto a queue of their own, then times one apalis worker, configured as
/// ours are, draining them.
async fn bare_drain(store: &Store, config: &PoolConfig, n: usize) -> anyhow::Result<Duration> {
    let count_state = Count {
        done: Arc::new(AtomicUsize::new(0)),
        target: n,
        finished: Arc::new(Notify::new()),
    };
    let finished = count_state.finished.clone();
    let strategy = || Strategy::new().apply(IntervalStrategy::new(config.poll));
    let stop = async move {
        finished.notified().await;
        Ok::<(), std::io::Error>(())
    };
    let name = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let started;
    match store {
        Store::Sqlite(s) => {
            let cfg = apalis_sqlite::Config::default()
                .queue(BARE_QUEUE)
                .batch_size(config.workers);
            let mut storage = SqliteStorage::<u64>::new(s.write_pool()).with_config(cfg);
            for chunk in (0..n as u64).collect::<Vec<_>>().chunks(500) {
                storage.push_bulk(chunk.to_vec()).await?;
            }
            started = Instant::now();
            WorkerBuilder::new(name.as_str())
                .backend(storage.poll_with_strategy(strategy()))
                .concurrency(config.workers)
                .data(count_state)
                .build(count)
                .run_until(stop)
                .await?;
        }
        Store::Postgres(s) => {
            let cfg = apalis_postgres::Config::default()
                .queue(BARE_QUEUE)
                .batch_size(config.workers);
            let mut storage = PostgresStorage::<u64>::new(s.write_pool()).with_config(cfg);
            for chunk in (0..n as u64).collect::<Vec<_>>().chunks(500) {
                storage.push_bulk(chunk.to_vec()).await?;
            }
            started = Instant::now();
            WorkerBuilder::new(name.as_str())
                .backend(storage.poll_with_strategy(strategy()))
                .concurrency(config.workers)
                .data(count_state)
                .build(count)
                .run_until(stop)
                .await?;
        }
    }
    Ok(started.elapsed())
}
