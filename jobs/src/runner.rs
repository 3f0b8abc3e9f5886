//! Runs one delivery of a job: starts an attempt on the job's stream, walks the kind's steps,
//! and records how it ended. Backend-agnostic; the pool (`pool.rs`) feeds it from apalis.
//!
//! Every effect a handler makes is an event on the affected stream, decided from that
//! stream's current state and appended at the version it was decided on, so running a step
//! twice (a rerun after a crash, a duplicate delivery) finds it done and changes nothing.

use std::time::{Duration, Instant};

use chrono::Utc;
use layerline_core::domain::job::{Job, JobCommand, JobKind, JobState};
use layerline_core::domain::{DomainError, parse_time};
use layerline_core::jobs::Dispatcher;
use layerline_core::metric;
use layerline_core::service::{Registry, ServiceError};
use layerline_core::store::{Metadata, ReadModels, Store, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::handlers;

/// What the queue carries: which job to run. Everything else is in the job's stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    pub job_id: String,
    /// Set by the sweep for a job recorded as running with no live queue task: the attempt's
    /// worker is gone, take the job over.
    #[serde(default)]
    pub takeover: bool,
}

/// How transient failures are retried: `base · 2^(attempt-1)`, at most `max_delay`, for at
/// most `max_attempts` attempts in all.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max_delay: Duration,
    pub max_attempts: i64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_millis(layerline_core::config::DEFAULT_RETRY_BASE_MS),
            max_delay: Duration::from_secs(600),
            max_attempts: 5,
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1`.
    pub fn delay(&self, attempt: i64) -> Duration {
        let exp = u32::try_from(attempt.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
        self.base
            .saturating_mul(2u32.saturating_pow(exp))
            .min(self.max_delay)
    }
}

/// How a handler stopped short of success.
#[derive(Debug)]
pub enum Failure {
    /// Worth retrying (the database went away, a registry answered 503).
    Transient(String),
    /// Retrying cannot help (bad input); the job ends in `error`.
    Permanent(String),
    /// A cancel request was honoured at a step boundary (already recorded).
    Cancelled,
    /// A newer attempt took the job over; this one stops and records nothing.
    Stale,
}

impl From<ServiceError> for Failure {
    fn from(err: ServiceError) -> Self {
        match err {
            ServiceError::Domain(e) => Failure::Permanent(e.to_string()),
            e => Failure::Transient(e.to_string()),
        }
    }
}

pub type Outcome = Result<Value, Failure>;

/// Runs jobs. Shared by every queue's worker in a process.
#[derive(Debug)]
pub struct Runner {
    pub registry: Registry<Store>,
    pub dispatcher: Dispatcher,
    pub retry: RetryPolicy,
    /// Jobs running at once in this process, across queues (`--workers`).
    slots: Semaphore,
}

impl Runner {
    pub fn new(store: Store, dispatcher: Dispatcher, retry: RetryPolicy, workers: usize) -> Self {
        Runner {
            registry: Registry::new(store),
            dispatcher,
            retry,
            slots: Semaphore::new(workers.max(1)),
        }
    }

    /// Handles one delivery of `ticket` by queue task `task`. Errors are the store's (the
    /// job's outcome could not be recorded); the sweep then delivers the job again.
    pub async fn run(&self, ticket: &Ticket, task: &str) -> Result<(), ServiceError> {
        let _slot = self
            .slots
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let id = ticket.job_id.as_str();
        // The job's stream answers the checks before the attempt, and is the state the
        // attempt's commands are decided on from then on (see `Ctx::job`).
        let mut job: Job = match self.registry.load(id).await {
            Ok(job) => job,
            Err(ServiceError::Store(e @ StoreError::Decode { .. })) => {
                tracing::warn!(job_id = id, error = %e, "job stream unreadable by this build; dropped");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let Some(accepted) = &job.accepted else {
            tracing::warn!(job_id = id, "queued job has no stream; dropped");
            return Ok(());
        };
        let (kind, input) = (accepted.kind, accepted.input.clone());
        match job.state {
            Some(state) if state.is_final() => return Ok(()),
            // An early duplicate: the retry's own delivery is queued for its time.
            Some(JobState::Scheduled) if due_later(job.retry_at.as_deref()) => return Ok(()),
            _ => {}
        }
        // Runnable since its acceptance, or since its retry time; a takeover waited for the
        // orphan timeout, which says nothing about the queue.
        let runnable_since = match job.state {
            Some(JobState::Scheduled) => job.retry_at.clone(),
            _ => Some(job.created_at.clone()),
        };
        let meta = Metadata {
            job_id: Some(id.to_owned()),
            actor: Some(format!("job:{}", kind.as_str())),
            ..Metadata::default()
        };
        let start = JobCommand::Start {
            task: task.to_owned(),
            takeover: ticket.takeover,
        };
        let attempt = match self.registry.execute_on(id, &mut job, start, &meta).await {
            Ok(events) => match events.first() {
                Some(layerline_core::domain::DomainEvent::JobStarted(s)) => s.attempt,
                // Its cancel outlived a dead attempt.
                Some(layerline_core::domain::DomainEvent::JobCancelled(_)) => {
                    metric::job_finished(kind, "cancelled");
                    return Ok(());
                }
                _ => return Ok(()),
            },
            Err(ServiceError::Domain(DomainError::Conflict { message, .. })) => {
                tracing::debug!(job_id = id, message, "duplicate delivery ignored");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let waited = runnable_since
            .as_deref()
            .and_then(parse_time)
            .filter(|_| !ticket.takeover)
            .map(|t| (Utc::now() - t).to_std().unwrap_or_default());
        metric::job_started(kind, waited);
        let started = Instant::now();
        let span = tracing::info_span!("job", job_id = id, kind = kind.as_str(), attempt);
        async {
            tracing::info!("attempt started");
            let mut ctx = Ctx {
                runner: self,
                job_id: id.to_owned(),
                attempt,
                meta,
                job,
                last_progress: None,
            };
            let outcome = handlers::run(kind, &input, &mut ctx).await;
            let ended = self.finish(kind, &mut ctx, outcome).await?;
            metric::job_attempt_ended(kind, ended, started.elapsed());
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Records the attempt's outcome; returns how it ended, for the metrics: `completed`,
    /// `error`, `cancelled`, `retry` or `superseded`.
    async fn finish(
        &self,
        kind: JobKind,
        ctx: &mut Ctx<'_>,
        outcome: Outcome,
    ) -> Result<&'static str, ServiceError> {
        let (id, attempt) = (ctx.job_id.as_str(), ctx.attempt);
        let (cmd, ended) = match outcome {
            Ok(output) => {
                tracing::info!("completed");
                (JobCommand::Succeed { attempt, output }, "completed")
            }
            Err(Failure::Cancelled) => {
                tracing::info!("cancelled at a step boundary");
                return Ok("cancelled");
            }
            Err(Failure::Stale) => {
                tracing::info!("superseded by a newer attempt; stopped");
                return Ok("superseded");
            }
            Err(Failure::Permanent(error)) => {
                tracing::warn!(error, "failed");
                let cmd = JobCommand::Fail {
                    attempt,
                    error,
                    retry_at: None,
                };
                (cmd, "error")
            }
            Err(Failure::Transient(error)) if attempt >= self.retry.max_attempts => {
                tracing::warn!(error, "failed; out of attempts");
                let cmd = JobCommand::Fail {
                    attempt,
                    error: format!("{error} (gave up after {attempt} attempts)"),
                    retry_at: None,
                };
                (cmd, "error")
            }
            Err(Failure::Transient(error)) => {
                let delay = self.retry.delay(attempt);
                let at = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
                tracing::warn!(
                    error,
                    retry_in_ms = delay.as_millis() as u64,
                    "failed; will retry"
                );
                let cmd = JobCommand::Fail {
                    attempt,
                    error,
                    retry_at: Some(layerline_core::domain::format_time(at)),
                };
                return match self
                    .registry
                    .execute_on(id, &mut ctx.job, cmd, &ctx.meta)
                    .await
                {
                    Ok(_) => {
                        if let Err(error) =
                            self.dispatcher.dispatch(kind, id, Some(at), false).await
                        {
                            tracing::warn!(error, "queueing the retry failed; the sweep will");
                        }
                        Ok("retry")
                    }
                    Err(ServiceError::Domain(_)) => Ok("superseded"),
                    Err(e) => Err(e),
                };
            }
        };
        match self
            .registry
            .execute_on(id, &mut ctx.job, cmd, &ctx.meta)
            .await
        {
            Ok(_) => Ok(ended),
            // Refused: a newer attempt owns the job now.
            Err(ServiceError::Domain(_)) => Ok("superseded"),
            Err(e) => Err(e),
        }
    }
}

/// Whether an RFC 3339 retry time is still more than a moment away.
fn due_later(retry_at: Option<&str>) -> bool {
    retry_at
        .and_then(parse_time)
        .is_some_and(|t| t > Utc::now() + chrono::Duration::milliseconds(500))
}

/// How often progress is recorded at most (every step is still a cancel boundary).
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// What a handler sees of its attempt.
pub struct Ctx<'a> {
    pub runner: &'a Runner,
    pub job_id: String,
    pub attempt: i64,
    /// Metadata for the effects' events: they name the job.
    pub meta: Metadata,
    /// The job as this attempt last wrote or read its stream: its own commands are decided
    /// on it without reading the stream again (a change made meanwhile by anyone else fails
    /// the append's version check, and the stream is read then).
    job: Job,
    last_progress: Option<Instant>,
}

impl<'a> Ctx<'a> {
    pub fn registry(&self) -> &'a Registry<Store> {
        &self.runner.registry
    }

    /// A step boundary: stops here when a cancel was requested or a newer attempt took the
    /// job over; otherwise records progress (`done` of `total`, `step` says what comes next)
    /// when the last record is older than a moment, or when `force`.
    pub async fn boundary(
        &mut self,
        done: i64,
        total: i64,
        step: &str,
        force: bool,
    ) -> Result<(), Failure> {
        // The descriptor row (projected in the same transaction as the job's events) answers
        // without folding the job's stream at every step.
        let job = self
            .registry()
            .store()
            .job(&self.job_id)
            .await
            .map_err(|e| Failure::Transient(e.to_string()))?
            .ok_or(Failure::Stale)?;
        if job.state != JobState::Running.as_str() || job.attempts != self.attempt {
            return Err(Failure::Stale);
        }
        if job.cancel_requested {
            let cmd = JobCommand::ConfirmCancel {
                attempt: self.attempt,
            };
            if !(done == job.progress_done && total == job.progress_total) {
                self.progress(done, total, step).await?;
            }
            return match self
                .registry()
                .execute_on(&self.job_id, &mut self.job, cmd, &self.meta)
                .await
            {
                Ok(_) => Err(Failure::Cancelled),
                Err(ServiceError::Domain(_)) => Err(Failure::Stale),
                Err(e) => Err(e.into()),
            };
        }
        let due = self
            .last_progress
            .is_none_or(|t| t.elapsed() >= PROGRESS_EVERY);
        if force || due {
            self.progress(done, total, step).await?;
        }
        Ok(())
    }

    async fn progress(&mut self, done: i64, total: i64, step: &str) -> Result<(), Failure> {
        let cmd = JobCommand::Progress {
            attempt: self.attempt,
            done,
            total,
            step: step.to_owned(),
        };
        match self
            .registry()
            .execute_on(&self.job_id, &mut self.job, cmd, &self.meta)
            .await
        {
            Ok(_) => {
                self.last_progress = Some(Instant::now());
                Ok(())
            }
            Err(ServiceError::Domain(DomainError::Conflict { .. })) => Err(Failure::Stale),
            Err(e) => Err(e.into()),
        }
    }
}
