//! The prune scheduler: starts each enabled policy's runs at its cron instants.
//!
//! Every worker process runs one, and none is in charge: each (policy, instant) run is
//! submitted with the idempotency key `cron:<policy>:<instant>`, and the job read model's
//! unique key lets exactly one such job exist, whichever replica gets there first (the
//! others are answered with that job).
//!
//! A tick submits at most one run per policy: the one for the latest instant that has
//! passed since the policy's last scheduled run (or since its last change, when later).
//! Instants missed while every scheduler was down are thus run once, not once each.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use layerline_core::domain::job::JobKind;
use layerline_core::domain::policy::{PolicySpec, PruneInput};
use layerline_core::domain::schedule::Schedule;
use layerline_core::domain::{format_time, parse_time};
use layerline_core::jobs::{Dispatch, Submission, submit};
use layerline_core::service::{Registry, ServiceError};
use layerline_core::store::rows::PolicyRow;
use layerline_core::store::{ReadModels, Store};
use tokio::sync::watch;

/// Who the scheduler's jobs are by (their creator).
pub const CREATOR: &str = "scheduler";

/// The idempotency key of policy `id`'s run for `instant` (before `submit` prefixes the
/// creator). Instants are fixed-width, so keys of one policy sort by instant.
fn key(policy_id: &str, instant: &str) -> String {
    format!("cron:{policy_id}:{instant}")
}

pub struct Scheduler {
    registry: Registry<Store>,
    dispatcher: std::sync::Arc<dyn Dispatch>,
    /// The latest instant each policy is known to have run for.
    last: HashMap<String, DateTime<Utc>>,
}

impl Scheduler {
    pub fn new(store: Store, dispatcher: std::sync::Arc<dyn Dispatch>) -> Self {
        Scheduler {
            registry: Registry::new(store),
            dispatcher,
            last: HashMap::new(),
        }
    }

    /// Submits the runs due at `now`; returns how many policies were due.
    pub async fn tick(&mut self, now: DateTime<Utc>) -> Result<usize, ServiceError> {
        let policies = self
            .registry
            .store()
            .scheduled_policies()
            .await
            .map_err(ServiceError::Store)?;
        let mut due = 0;
        for row in policies {
            let Some(instant) = self.due(&row, now).await? else {
                continue;
            };
            self.start(&row, instant).await?;
            self.last.insert(row.id.clone(), instant);
            due += 1;
        }
        Ok(due)
    }

    /// The instant policy `row` should run for now, if any.
    async fn due(
        &mut self,
        row: &PolicyRow,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, ServiceError> {
        let Some(expr) = row.schedule.as_deref() else {
            return Ok(None);
        };
        let Ok(schedule) = Schedule::parse(expr, &row.timezone) else {
            return Ok(None);
        };
        let Some(latest) = schedule.latest_before(now) else {
            return Ok(None);
        };
        let last = match self.last.get(&row.id) {
            Some(t) => Some(*t),
            None => {
                let prefix = format!("{CREATOR}:{}", key(&row.id, ""));
                let stored = self
                    .registry
                    .store()
                    .last_job_key(&prefix)
                    .await
                    .map_err(ServiceError::Store)?;
                stored.and_then(|k| parse_time(&k[prefix.len()..]))
            }
        };
        // A policy changed since its last run starts its schedule afresh from the change.
        let changed = parse_time(&row.updated_at);
        let since = last.max(changed);
        Ok(since.is_none_or(|s| latest > s).then_some(latest))
    }

    async fn start(&self, row: &PolicyRow, instant: DateTime<Utc>) -> Result<(), ServiceError> {
        let Ok(policy) = serde_json::from_str::<PolicySpec>(&row.body) else {
            tracing::warn!(policy_id = %row.id, "stored policy body does not parse; not scheduled");
            return Ok(());
        };
        // The run is in its namespace's project, as a run started over the API is.
        let project_id = self
            .registry
            .store()
            .namespace(&policy.namespace_id)
            .await
            .map_err(ServiceError::Store)?
            .map(|n| n.project_id);
        let at = format_time(instant);
        let input = PruneInput {
            policy_id: Some(row.id.clone()),
            policy_version: Some(row.version),
            policy,
            dry_run: false,
            scheduled_for: Some(at.clone()),
        };
        let sub = Submission {
            kind: JobKind::Prune,
            caption: format!("prune by policy {} (scheduled for {at})", row.name),
            input: serde_json::to_value(&input).unwrap_or_default(),
            creator: Some(CREATOR.to_owned()),
            idempotency_key: Some(key(&row.id, &at)),
            marks: None,
            project_id,
        };
        let job = submit(&self.registry, self.dispatcher.as_ref(), sub).await?;
        tracing::info!(policy_id = %row.id, job_id = %job.id, scheduled_for = %at, "scheduled prune run");
        Ok(())
    }
}

/// Ticks every `every` until `shutdown` turns true.
pub async fn run(mut scheduler: Scheduler, every: Duration, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        match scheduler.tick(Utc::now()).await {
            Ok(due) => layerline_core::metric::cron_ticked(due),
            Err(error) => {
                layerline_core::metric::cron_ticked(0);
                tracing::warn!(%error, "scheduler tick failed; trying again next tick");
            }
        }
    }
}
