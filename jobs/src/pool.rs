//! The worker pool on apalis: one apalis worker per queue (queue = job kind, explicit names),
//! writing through the store's write connections, plus the sweep. Each gap listed in
//! `apalis-notes.md` is closed here, in our code, never by patching the crate:
//!
//! * queue names are `queue::*` constants, never type paths;
//! * idle pickup polls every `poll`, instead of waiting for the next heartbeat (on SQLite
//!   by reading which queues have tasks due, [`due_loop`]); the ticks are ours
//!   ([`Ticks`]), because apalis's interval strategy does not arm its next tick; a
//!   task pushed from this process wakes this process's worker of its queue at once
//!   ([`Nudged`]), and on PostgreSQL so does one pushed by any process ([`listen_loop`]);
//! * a worker whose stream ends (one database error ends it) is rebuilt by `serve_queue`
//!   under a fresh name, with backoff, until shutdown;
//! * a dead worker's tasks are re-queued by apalis once it missed `missed_heartbeats`
//!   heartbeats of `heartbeat` each: we configure both (`orphan_after`);
//! * retries are ours (`runner.rs`): a new task at the retry time, recorded in the job stream
//!   first, so they survive restarts; apalis never retries;
//! * the sweep re-queues any unfinished job without a live apalis task, whatever lost it;
//! * SQLite pragmas come from our connect options; only apalis's migrations are run.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apalis::prelude::*;
use apalis_core::backend::ext::poll_strategy::{PollSnapshot, PollStrategy, Strategy};
use apalis_postgres::PostgresStorage;
use apalis_sqlite::SqliteStorage;
use chrono::{DateTime, Utc};
use layerline_core::config;
use layerline_core::domain::job::JobKind;
use layerline_core::domain::{format_time, parse_time};
use layerline_core::jobs::{Dispatch, DispatchFuture};
use layerline_core::store::{ReadModels, Store};
use tokio::sync::watch;

use crate::queue;
use crate::runner::{Runner, Ticket};

/// A poll every `interval`. apalis's `IntervalStrategy` replaces a tick that fired with a
/// new timer without polling it, so nothing wakes the worker for the next tick unless
/// something else polls it first: idle pickups then waited for the next heartbeat (seen as
/// ~4 s stalls on SQLite, 5 s heartbeats). Each tick here is armed as soon as it is made.
struct Ticks {
    interval: Duration,
    next: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl Ticks {
    fn new(interval: Duration) -> Self {
        Ticks {
            interval,
            next: Box::pin(tokio::time::sleep(interval)),
        }
    }
}

impl PollStrategy for Ticks {
    fn poll_drive(
        &mut self,
        cx: &mut std::task::Context<'_>,
        _: &PollSnapshot,
    ) -> std::task::Poll<Option<()>> {
        use std::future::Future;
        if self.next.as_mut().poll(cx).is_pending() {
            return std::task::Poll::Pending;
        }
        let at = tokio::time::Instant::now() + self.interval;
        self.next.as_mut().reset(at);
        // Armed now: the worker is woken at the next tick whether or not it polls before.
        let _ = self.next.as_mut().poll(cx);
        std::task::Poll::Ready(Some(()))
    }
}

/// Per queue, what wakes this process's worker of that queue when this process pushes a
/// task to it. Pushes from other processes are found by polling (and on PostgreSQL by its
/// insert notifications).
#[derive(Debug)]
struct Nudges(std::collections::HashMap<&'static str, Arc<tokio::sync::Notify>>);

impl Default for Nudges {
    fn default() -> Self {
        Nudges(queue::ALL.iter().map(|&q| (q, Arc::default())).collect())
    }
}

/// Ready whenever this process pushed a task to the queue (one wake-up for any number of
/// pushes since the last one); the worker then fetches at once instead of at its next tick.
struct Nudged {
    notify: Arc<tokio::sync::Notify>,
    // `Mutex` only to be `Sync`, as apalis asks of a strategy; never contended.
    next: std::sync::Mutex<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl Nudged {
    fn new(notify: Arc<tokio::sync::Notify>) -> Self {
        let next = std::sync::Mutex::new(Self::wait(&notify));
        Nudged { notify, next }
    }

    fn wait(
        notify: &Arc<tokio::sync::Notify>,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        let notify = notify.clone();
        Box::pin(async move { notify.notified().await })
    }
}

impl PollStrategy for Nudged {
    fn poll_drive(
        &mut self,
        cx: &mut std::task::Context<'_>,
        _: &PollSnapshot,
    ) -> std::task::Poll<Option<()>> {
        let next = self.next.get_mut().unwrap_or_else(|e| e.into_inner());
        if next.as_mut().poll(cx).is_pending() {
            return std::task::Poll::Pending;
        }
        // Armed now, like a tick. A push made since this one fired is served by the fetch
        // about to happen: its stored wake-up is taken here, and the next wait armed.
        *next = Self::wait(&self.notify);
        if next.as_mut().poll(cx).is_ready() {
            *next = Self::wait(&self.notify);
            let _ = next.as_mut().poll(cx);
        }
        std::task::Poll::Ready(Some(()))
    }
}

/// Timing of the pool.
#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    /// Jobs running at once in this process.
    pub workers: usize,
    /// How often an idle worker looks for new tasks.
    pub poll: Duration,
    /// After how long without a heartbeat a worker's tasks are re-queued.
    pub orphan_after: Duration,
    /// How often the sweep runs.
    pub sweep_every: Duration,
    /// How long an unfinished job may sit unchanged before the sweep checks it has a task.
    pub stale_after: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            workers: config::DEFAULT_WORKERS,
            poll: Duration::from_millis(100),
            orphan_after: Duration::from_secs(config::DEFAULT_ORPHAN_TIMEOUT_SECS),
            sweep_every: Duration::from_secs(5),
            stale_after: Duration::from_secs(10),
        }
    }
}

/// Heartbeats per orphan timeout: a worker is dead after missing this many.
const MISSED_HEARTBEATS: u32 = 4;

/// Whether apalis marks each task `Running` when its handler starts. Its fetch has already
/// taken the task for the worker (`Queued`, `lock_by` set), its orphan recovery re-queues
/// `Queued` tasks as well as `Running` ones, and our sweep counts any unfinished task as
/// live; nothing of ours reads the difference. The mark costs a write transaction in the
/// worker's one loop of fetches and acknowledgements whenever a job outlasts the loop's
/// turn (every job that writes to the database), and that loop fetches nothing meanwhile.
const LOCK_TASKS: bool = false;

/// The job queues on the store's database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Queues {
    store: Store,
    config: PoolConfig,
    nudges: Arc<Nudges>,
}

impl Queues {
    pub fn new(store: Store, config: PoolConfig) -> Self {
        Queues {
            store,
            config,
            nudges: Arc::default(),
        }
    }

    /// What wakes this process's worker of queue `name` when this process pushes to it.
    fn nudged(&self, name: &str) -> Nudged {
        Nudged::new(self.nudges.0[name].clone())
    }

    /// When the worker of queue `name` fetches: at once after a push from this process, and
    /// on PostgreSQL at every tick. On SQLite a fetch takes the database's one write lock
    /// even when it finds nothing, so an idle queue polling every tick stalls whatever else
    /// writes (seven queues at 100 ms are 70 lock takes a second); there [`due_loop`] reads
    /// which queues have tasks due and nudges only those, and the ticks are only a backstop
    /// at the heartbeat's pace.
    fn wake_ups(&self, name: &str) -> Strategy {
        let tick = match self.store {
            Store::Sqlite(_) => self.heartbeat(),
            Store::Postgres(_) => self.config.poll,
        };
        Strategy::new()
            .apply(self.nudged(name))
            .apply(Ticks::new(tick))
    }

    /// Creates or upgrades apalis's own tables (PostgreSQL schema `apalis`; SQLite tables
    /// `Jobs`, `Workers`). Its migrator keeps its own `_sqlx_migrations` table; ours is
    /// `layerline_migrations`, so they never meet.
    pub async fn migrate(&self) -> Result<(), sqlx::Error> {
        match &self.store {
            Store::Sqlite(s) => SqliteStorage::migrations().run(s.write_pool()).await?,
            Store::Postgres(s) => PostgresStorage::migrations().run(s.write_pool()).await?,
        }
        Ok(())
    }

    fn sqlite_config(&self, name: &str) -> apalis_sqlite::Config {
        apalis_sqlite::Config::default()
            .queue(name)
            .heartbeat_interval(self.heartbeat())
            .missed_heartbeats(MISSED_HEARTBEATS as usize)
            .batch_size(self.config.workers.max(1))
            .lock_tasks(LOCK_TASKS)
    }

    fn postgres_config(&self, name: &str) -> apalis_postgres::Config {
        apalis_postgres::Config::default()
            .queue(name)
            .heartbeat_interval(self.heartbeat())
            .missed_heartbeats(MISSED_HEARTBEATS as usize)
            .batch_size(self.config.workers.max(1))
            .lock_tasks(LOCK_TASKS)
    }

    fn heartbeat(&self) -> Duration {
        (self.config.orphan_after / MISSED_HEARTBEATS).max(Duration::from_secs(1))
    }

    /// Queues one run of `job_id` on its kind's queue.
    pub async fn push(
        &self,
        kind: JobKind,
        job_id: &str,
        run_at: Option<DateTime<Utc>>,
        takeover: bool,
    ) -> Result<(), String> {
        let ticket = Ticket {
            job_id: job_id.to_owned(),
            takeover,
        };
        // The key names the job, so the sweep can ask whether a live task exists for it;
        // the random part lets the same job be queued again later.
        let key = format!("{job_id}:{}", uuid::Uuid::new_v4().simple());
        let mut task = TaskBuilder::new(ticket).idempotency_key(key);
        if let Some(at) = run_at {
            // apalis keeps whole seconds: round up, so the task never runs before its time.
            let secs = at.timestamp() + i64::from(at.timestamp_subsec_nanos() > 0);
            task = task.run_at_timestamp(secs.max(0) as u64);
        }
        let task = task.build();
        let name = kind.as_str();
        match &self.store {
            Store::Sqlite(s) => {
                let mut storage = SqliteStorage::<Ticket>::new(s.write_pool())
                    .with_config(self.sqlite_config(name));
                storage.push_task(task).await.map_err(|e| e.to_string())?
            }
            Store::Postgres(s) => {
                let mut storage = PostgresStorage::<Ticket>::new(s.write_pool())
                    .with_config(self.postgres_config(name));
                storage.push_task(task).await.map_err(|e| e.to_string())?
            }
        }
        self.nudge(name);
        Ok(())
    }

    /// Wakes this process's worker of queue `name` (an unknown name wakes nothing).
    fn nudge(&self, name: &str) {
        if let Some(notify) = self.nudges.0.get(name) {
            notify.notify_one();
        }
    }

    /// The jobs that have a queue task still waiting or running (the job id is the part of
    /// the task's idempotency key before `:`), in one pass over apalis's table.
    async fn jobs_with_live_tasks(&self) -> Result<HashSet<String>, sqlx::Error> {
        let ids: Vec<String> =
            match &self.store {
                Store::Sqlite(s) => sqlx::query_scalar(
                    "SELECT DISTINCT substr(idempotency_key, 1, instr(idempotency_key, ':') - 1) \
                     FROM Jobs WHERE idempotency_key IS NOT NULL \
                     AND status NOT IN ('Done', 'Failed', 'Killed')",
                )
                .fetch_all(s.pool())
                .await?,
                Store::Postgres(s) => {
                    sqlx::query_scalar(
                        "SELECT DISTINCT split_part(idempotency_key, ':', 1) FROM apalis.jobs \
                     WHERE idempotency_key IS NOT NULL \
                     AND status NOT IN ('Done', 'Failed', 'Killed')",
                    )
                    .fetch_all(s.pool())
                    .await?
                }
            };
        Ok(ids.into_iter().collect())
    }

    /// One pass of the sweep: every unfinished job unchanged for `stale_after` that is due
    /// and has no live task gets one. Returns how many were queued.
    pub async fn sweep(&self) -> Result<usize, String> {
        let stale =
            Utc::now() - chrono::Duration::from_std(self.config.stale_after).unwrap_or_default();
        let jobs = self
            .store
            .unfinished_jobs(&format_time(stale), 500)
            .await
            .map_err(|e| e.to_string())?;
        let due: Vec<_> = jobs
            .into_iter()
            .filter(|job| match job.state.as_str() {
                "scheduled" => job
                    .next_retry_at
                    .as_deref()
                    .and_then(parse_time)
                    .is_none_or(|t| t <= stale),
                _ => true,
            })
            .collect();
        if due.is_empty() {
            return Ok(0);
        }
        let live = self
            .jobs_with_live_tasks()
            .await
            .map_err(|e| e.to_string())?;
        let mut queued = 0;
        for job in due.iter().filter(|j| !live.contains(&j.id)) {
            let Some(kind) = JobKind::parse(&job.kind) else {
                continue;
            };
            let takeover = job.state == "running";
            tracing::info!(
                job_id = job.id,
                state = job.state,
                "sweep: job had no live task; queued again"
            );
            self.push(kind, &job.id, None, takeover).await?;
            queued += 1;
        }
        Ok(queued)
    }
}

impl Dispatch for Queues {
    fn dispatch<'a>(
        &'a self,
        kind: JobKind,
        job_id: &'a str,
        run_at: Option<DateTime<Utc>>,
        takeover: bool,
    ) -> DispatchFuture<'a> {
        Box::pin(self.push(kind, job_id, run_at, takeover))
    }
}

/// The apalis task handler: hands the ticket to the runner. An error here means the job's
/// outcome could not be recorded; the task fails and the sweep queues the job again.
///
/// The job runs on a tokio task of its own. apalis polls a worker's running handlers inside
/// the worker's task, and each time that task is polled with a free slot it fetches from
/// the queue; run inline, every wake-up of a job (each response, each statement) set off a
/// fetch: some 500 a second during an import on PostgreSQL, each a write. Spawned, the job's
/// wake-ups are its own, and the worker wakes when it ends (or at its ticks).
async fn handle(
    ticket: Ticket,
    task_id: TaskId,
    runner: Data<Arc<Runner>>,
) -> Result<(), BoxDynError> {
    use tracing::Instrument;
    let runner = Arc::clone(&runner);
    let task = task_id.to_string();
    tokio::spawn(async move { runner.run(&ticket, &task).await }.in_current_span())
        .await
        .map_err(|e| format!("the job's task ended abnormally: {e}"))??;
    Ok(())
}

/// Runs the pool until `shutdown` turns true: a worker per queue and the sweep.
pub async fn run(queues: Queues, runner: Arc<Runner>, shutdown: watch::Receiver<bool>) {
    let mut tasks = Vec::new();
    for name in queue::ALL {
        tasks.push(tokio::spawn(serve_queue(
            queues.clone(),
            runner.clone(),
            name,
            shutdown.clone(),
        )));
    }
    tasks.push(tokio::spawn(listen_loop(queues.clone(), shutdown.clone())));
    tasks.push(tokio::spawn(due_loop(queues.clone(), shutdown.clone())));
    tasks.push(tokio::spawn(sweep_loop(queues, shutdown)));
    for t in tasks {
        let _ = t.await;
    }
}

/// The channel apalis's trigger on `apalis.jobs` notifies of each task due now, with the
/// task's queue as `job_type` in a JSON payload.
const INSERT_CHANNEL: &str = "apalis::job::insert";

/// On PostgreSQL, one connection listens for apalis's insert notifications (tasks pushed by
/// any process) and wakes the worker of the queue each one names. apalis's own listener
/// (`Pubsub`) holds a pooled connection per queue for good (7 of the pool's 10 by default)
/// and wakes every queue's worker at every insert, each wake-up a fetch. A notification
/// missed while the connection is down is made up for by the ticks.
async fn listen_loop(queues: Queues, mut shutdown: watch::Receiver<bool>) {
    let Store::Postgres(s) = &queues.store else {
        return;
    };
    let mut backoff = Restarts::new(Duration::from_secs(10));
    loop {
        let started = Instant::now();
        let failed = tokio::select! {
            Err(e) = listen(&queues, s.pool()) => e,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let delay = backoff.after(started.elapsed());
        tracing::warn!(
            error = %failed,
            retry_in_ms = delay.as_millis() as u64,
            "listening for queued tasks failed"
        );
        if !wait_unless_stopped(delay, &mut shutdown).await {
            return;
        }
    }
}

/// Listens on [`INSERT_CHANNEL`] and nudges the queue each notification names, until the
/// connection fails for good.
async fn listen(
    queues: &Queues,
    pool: &sqlx::PgPool,
) -> Result<std::convert::Infallible, sqlx::Error> {
    #[derive(serde::Deserialize)]
    struct Inserted {
        job_type: String,
    }
    let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
    listener.listen(INSERT_CHANNEL).await?;
    loop {
        // After a lost connection, `recv` reconnects and listens again by itself.
        let notification = listener.recv().await?;
        match serde_json::from_str::<Inserted>(notification.payload()) {
            Ok(inserted) => queues.nudge(&inserted.job_type),
            Err(e) => tracing::warn!(
                error = %e,
                payload = notification.payload(),
                "unexpected insert notification; ignored"
            ),
        }
    }
}

/// The queues with a task that apalis's fetch would take now (as its SQLite fetch chooses
/// them: pending and unlocked, or failed with attempts left, and due).
const DUE_QUEUES: &str = "SELECT DISTINCT job_type FROM Jobs \
    WHERE ((status = 'Pending' AND lock_by IS NULL) \
        OR (status = 'Failed' AND attempts < max_attempts)) \
    AND (run_at IS NULL OR run_at <= ?1)";

/// On SQLite, reads every `poll` which queues have tasks due (a read, which takes no lock
/// from writers) and nudges their workers, so that only those fetch. Tasks pushed by this
/// process nudge their worker at once without it; this finds those pushed by another
/// process, and retries coming due.
async fn due_loop(queues: Queues, mut shutdown: watch::Receiver<bool>) {
    let Store::Sqlite(s) = &queues.store else {
        return;
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(queues.config.poll) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let due = sqlx::query_scalar::<_, String>(DUE_QUEUES)
            .bind(Utc::now().timestamp())
            .fetch_all(s.pool())
            .await;
        match due {
            Ok(names) => names.iter().for_each(|name| queues.nudge(name)),
            // The heartbeat's ticks still fetch meanwhile.
            Err(e) => tracing::debug!(error = %e, "reading which queues have tasks due failed"),
        }
    }
}

async fn sweep_loop(queues: Queues, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(queues.config.sweep_every) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        if let Err(error) = queues.sweep().await {
            tracing::warn!(error, "sweep failed; trying again later");
        }
    }
}

/// Keeps one apalis worker serving `name` until shutdown, rebuilding it whenever its stream
/// ends (apalis ends it on the first database error).
async fn serve_queue(
    queues: Queues,
    runner: Arc<Runner>,
    name: &'static str,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Restarts::new(Duration::from_secs(5));
    loop {
        // A fresh name per worker: apalis refuses a name still registered as alive.
        let worker = format!("{name}-{}", uuid::Uuid::new_v4().simple());
        let started = Instant::now();
        let stop = {
            let mut rx = shutdown.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
                Ok::<(), std::io::Error>(())
            }
        };
        let result = match &queues.store {
            Store::Sqlite(s) => {
                let storage = SqliteStorage::<Ticket>::new(s.write_pool())
                    .with_config(queues.sqlite_config(name))
                    .poll_with_strategy(queues.wake_ups(name));
                WorkerBuilder::new(worker.as_str())
                    .backend(storage)
                    .concurrency(queues.config.workers.max(1))
                    .data(runner.clone())
                    .build(handle)
                    .run_until(stop)
                    .await
            }
            Store::Postgres(s) => {
                let storage = PostgresStorage::<Ticket>::new(s.write_pool())
                    .with_config(queues.postgres_config(name))
                    .poll_with_strategy(queues.wake_ups(name));
                WorkerBuilder::new(worker.as_str())
                    .backend(storage)
                    .concurrency(queues.config.workers.max(1))
                    .data(runner.clone())
                    .build(handle)
                    .run_until(stop)
                    .await
            }
        };
        if *shutdown.borrow() {
            return;
        }
        let delay = backoff.after(started.elapsed());
        tracing::warn!(
            queue = name,
            worker,
            ?result,
            retry_in_ms = delay.as_millis() as u64,
            "worker stopped; starting a new one"
        );
        if !wait_unless_stopped(delay, &mut shutdown).await {
            return;
        }
    }
}

/// Delays before restarting something that failed: 200 ms, doubling up to a cap, and 200 ms
/// again after a run that lasted 30 s.
struct Restarts {
    next: Duration,
    cap: Duration,
}

impl Restarts {
    const FIRST: Duration = Duration::from_millis(200);

    fn new(cap: Duration) -> Self {
        Restarts {
            next: Self::FIRST,
            cap,
        }
    }

    /// The delay after a run that lasted `ran_for`.
    fn after(&mut self, ran_for: Duration) -> Duration {
        if ran_for > Duration::from_secs(30) {
            self.next = Self::FIRST;
        }
        let delay = self.next;
        self.next = (delay * 2).min(self.cap);
        delay
    }
}

/// Sleeps `delay`; false when shutdown came first.
async fn wait_unless_stopped(delay: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = shutdown.wait_for(|s| *s) => false,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll, Wake, Waker};

    use super::*;

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_push_from_this_process_wakes_that_queues_worker_at_once() {
        let scratch = layerline_core::store::scratch::Scratch::create("sqlite://unused", "nudge")
            .await
            .unwrap();
        let store = Store::connect(&scratch.url, 2).await.unwrap();
        let queues = Queues::new(store, PoolConfig::default());
        queues.migrate().await.unwrap();
        let (probe, import) = (Arc::new(Wakes::default()), Arc::new(Wakes::default()));
        let (probe_waker, import_waker) = (Waker::from(probe.clone()), Waker::from(import.clone()));
        let mut probe_worker = queues.nudged(JobKind::Probe.as_str());
        let mut import_worker = queues.nudged(JobKind::Import.as_str());
        let snapshot = PollSnapshot::default();
        let mut probe_cx = Context::from_waker(&probe_waker);
        let mut import_cx = Context::from_waker(&import_waker);
        assert!(
            probe_worker
                .poll_drive(&mut probe_cx, &snapshot)
                .is_pending()
        );
        assert!(
            import_worker
                .poll_drive(&mut import_cx, &snapshot)
                .is_pending()
        );

        queues
            .push(JobKind::Probe, "job-1", None, false)
            .await
            .unwrap();
        queues
            .push(JobKind::Probe, "job-2", None, false)
            .await
            .unwrap();
        assert_eq!(probe.0.load(Ordering::SeqCst), 1, "woken by the push");
        assert_eq!(
            import.0.load(Ordering::SeqCst),
            0,
            "another queue's worker sleeps on"
        );
        assert_eq!(
            probe_worker.poll_drive(&mut probe_cx, &snapshot),
            Poll::Ready(Some(()))
        );
        // Both pushes were answered by that one fetch; the next push wakes it again.
        assert!(
            probe_worker
                .poll_drive(&mut probe_cx, &snapshot)
                .is_pending()
        );
        queues
            .push(JobKind::Probe, "job-3", None, false)
            .await
            .unwrap();
        assert_eq!(probe.0.load(Ordering::SeqCst), 2);
        assert!(
            import_worker
                .poll_drive(&mut import_cx, &snapshot)
                .is_pending()
        );
        scratch.drop_database().await;
    }

    #[test]
    fn restarts_double_up_to_their_cap_and_start_over_after_a_long_run() {
        let mut restarts = Restarts::new(Duration::from_secs(1));
        let short = Duration::from_secs(1);
        let delays: Vec<u64> = (0..5)
            .map(|_| restarts.after(short).as_millis() as u64)
            .collect();
        assert_eq!(delays, [200, 400, 800, 1000, 1000]);
        assert_eq!(restarts.after(Duration::from_secs(31)).as_millis(), 200);
        assert_eq!(restarts.after(short).as_millis(), 400);
    }

    #[tokio::test]
    async fn a_tick_that_fired_arms_the_next_one() {
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut ticks = Ticks::new(Duration::from_millis(10));
        let snapshot = PollSnapshot::default();
        assert!(ticks.poll_drive(&mut cx, &snapshot).is_pending());
        // The first tick wakes the waker it was polled with; then it is ready.
        while wakes.0.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(ticks.poll_drive(&mut cx, &snapshot), Poll::Ready(Some(())));
        // Nobody polls again: the next tick must still wake the worker by itself.
        let after_first = wakes.0.load(Ordering::SeqCst);
        for _ in 0..1000 {
            if wakes.0.load(Ordering::SeqCst) > after_first {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(
            wakes.0.load(Ordering::SeqCst) > after_first,
            "the next tick never woke the worker"
        );
        assert_eq!(ticks.poll_drive(&mut cx, &snapshot), Poll::Ready(Some(())));
    }
}
