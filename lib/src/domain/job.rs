//! The job aggregate: the life of one unit of long work (import, prune, delete…), told by its
//! own event stream. Its descriptor (the read model clients poll) is a fold of that stream.
//!
//! Attempts fence the workers: every attempt starts by recording `job.started` with the next
//! attempt number, and every later effect of an attempt names it. An attempt that has been
//! superseded (its worker paused or died and another took over) is refused, so a stale
//! worker changes nothing.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::event::DomainEvent;
use super::{Aggregate, DomainError, streams};

/// Kinds of jobs. The names are persisted (events, queue names): renaming one is a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Import,
    Prune,
    DeleteImage,
    DeleteNamespace,
    DeleteTag,
    Gc,
    /// A diagnostic job that only walks its steps (optionally failing on purpose): checks
    /// the pool end to end and measures its overhead (`layerline bench jobs`).
    Probe,
}

impl JobKind {
    /// Every kind.
    pub const ALL: [JobKind; 7] = [
        JobKind::Import,
        JobKind::Prune,
        JobKind::DeleteImage,
        JobKind::DeleteNamespace,
        JobKind::DeleteTag,
        JobKind::Gc,
        JobKind::Probe,
    ];

    /// The kind persisted as `name`.
    pub fn parse(name: &str) -> Option<JobKind> {
        JobKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            JobKind::Import => "import",
            JobKind::Prune => "prune",
            JobKind::DeleteImage => "delete_image",
            JobKind::DeleteNamespace => "delete_namespace",
            JobKind::DeleteTag => "delete_tag",
            JobKind::Gc => "gc",
            JobKind::Probe => "probe",
        }
    }
}

/// Where a job is. `queued`: accepted, waiting for a worker; `scheduled`: waiting for its
/// retry time; `running`; and the three ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Queued,
    Scheduled,
    Running,
    Completed,
    Error,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Scheduled => "scheduled",
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Error => "error",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Error | JobState::Cancelled
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobAccepted {
    pub job_id: String,
    pub kind: JobKind,
    /// One line saying what the job does, for people.
    pub caption: String,
    pub input: Value,
    pub creator: Option<String>,
    /// A client's key: submitting again with the same key returns this job.
    pub idempotency_key: Option<String>,
    /// The project the job acts in; `None` for jobs of no project (and those accepted before
    /// jobs recorded one), which only unscoped tokens see.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobStarted {
    pub attempt: i64,
    /// The queue task (apalis task id) that runs this attempt.
    #[serde(default)]
    pub task: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobProgressed {
    pub attempt: i64,
    pub done: i64,
    pub total: i64,
    /// What the step that just finished did.
    pub step: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSucceeded {
    pub attempt: i64,
    /// The job's summary (tags deleted, bytes reclaimed, manifests imported…).
    pub output: Value,
}

/// A transient failure: the job runs again at `retry_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRetried {
    pub attempt: i64,
    pub error: String,
    pub retry_at: String,
}

/// A final failure: permanent, or out of attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFailed {
    pub attempt: i64,
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobCancelRequested {
    pub by: Option<String>,
}

/// The job stopped for a cancel: at once when it was waiting (`attempt` is `None`), or at a
/// step boundary of the running attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobCancelled {
    pub attempt: Option<i64>,
}

/// The state of one job stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Job {
    pub accepted: Option<JobAccepted>,
    pub state: Option<JobState>,
    /// Attempts started so far (the current attempt's number while running).
    pub attempts: i64,
    /// The queue task running (or that last ran) the current attempt.
    pub task: Option<String>,
    pub done: i64,
    pub total: i64,
    pub step: Option<String>,
    pub last_error: Option<String>,
    pub retry_at: Option<String>,
    pub output: Option<Value>,
    pub cancel_requested: bool,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobCommand {
    Accept(JobAccepted),
    /// Queue task `task` begins the next attempt. While the job is running under another
    /// task this is refused (a duplicate delivery), unless `takeover`: the dispatcher found
    /// no live queue task for the job, so the running attempt's worker is gone. The same task
    /// delivered again (re-queued after its worker died) always takes over.
    Start {
        task: String,
        takeover: bool,
    },
    Progress {
        attempt: i64,
        done: i64,
        total: i64,
        step: String,
    },
    Succeed {
        attempt: i64,
        output: Value,
    },
    /// `retry_at`: run again then (transient); `None`: give up (permanent or out of tries).
    Fail {
        attempt: i64,
        error: String,
        retry_at: Option<String>,
    },
    RequestCancel {
        by: Option<String>,
    },
    /// The running attempt saw the cancel request at a step boundary and stopped.
    ConfirmCancel {
        attempt: i64,
    },
}

impl Job {
    fn current(&self, id: &str) -> Result<JobState, DomainError> {
        self.state.ok_or_else(|| DomainError::not_found("job", id))
    }

    /// Refuses an effect of `attempt` unless it is the running attempt.
    fn fenced(&self, id: &str, attempt: i64) -> Result<(), DomainError> {
        match self.current(id)? {
            JobState::Running if attempt == self.attempts => Ok(()),
            state => Err(DomainError::Conflict {
                resource: "job",
                message: format!(
                    "attempt {attempt} of job {id} is stale (job is {} at attempt {})",
                    state.as_str(),
                    self.attempts
                ),
            }),
        }
    }
}

impl Aggregate for Job {
    type Command = JobCommand;

    fn stream(id: &str) -> String {
        streams::job(id)
    }

    fn version(&self) -> i64 {
        self.version
    }

    fn apply(&mut self, event: &DomainEvent, at: &str, _position: i64) {
        self.version += 1;
        self.updated_at = at.to_owned();
        match event {
            DomainEvent::JobAccepted(a) => {
                self.accepted = Some(a.clone());
                self.state = Some(JobState::Queued);
                self.created_at = at.to_owned();
            }
            DomainEvent::JobStarted(s) => {
                self.attempts = s.attempt;
                self.task = s.task.clone();
                self.state = Some(JobState::Running);
                self.retry_at = None;
                self.started_at.get_or_insert_with(|| at.to_owned());
            }
            DomainEvent::JobProgressed(p) => {
                self.done = p.done;
                self.total = p.total;
                self.step = Some(p.step.clone());
            }
            DomainEvent::JobSucceeded(s) => {
                self.state = Some(JobState::Completed);
                self.output = Some(s.output.clone());
                self.completed_at = Some(at.to_owned());
            }
            DomainEvent::JobRetried(r) => {
                self.state = Some(JobState::Scheduled);
                self.last_error = Some(r.error.clone());
                self.retry_at = Some(r.retry_at.clone());
            }
            DomainEvent::JobFailed(f) => {
                self.state = Some(JobState::Error);
                self.last_error = Some(f.error.clone());
                self.completed_at = Some(at.to_owned());
            }
            DomainEvent::JobCancelRequested(_) => self.cancel_requested = true,
            DomainEvent::JobCancelled(_) => {
                self.state = Some(JobState::Cancelled);
                self.completed_at = Some(at.to_owned());
            }
            _ => {}
        }
    }

    fn decide(&self, id: &str, cmd: JobCommand) -> Result<Vec<DomainEvent>, DomainError> {
        let event = match cmd {
            JobCommand::Accept(a) => {
                if self.accepted.is_some() {
                    return Err(DomainError::AlreadyExists {
                        resource: "job",
                        id: id.to_owned(),
                    });
                }
                DomainEvent::JobAccepted(a)
            }
            JobCommand::Start { task, takeover } => {
                let state = self.current(id)?;
                if state.is_final() {
                    return Err(DomainError::Conflict {
                        resource: "job",
                        message: format!("job {id} is {}", state.as_str()),
                    });
                }
                if state == JobState::Running
                    && !takeover
                    && self.task.as_deref() != Some(task.as_str())
                {
                    return Err(DomainError::Conflict {
                        resource: "job",
                        message: format!(
                            "job {id} is running attempt {} under another task",
                            self.attempts
                        ),
                    });
                }
                if self.cancel_requested {
                    // The attempt that saw the request died before confirming it.
                    DomainEvent::JobCancelled(JobCancelled { attempt: None })
                } else {
                    DomainEvent::JobStarted(JobStarted {
                        attempt: self.attempts + 1,
                        task: Some(task),
                    })
                }
            }
            JobCommand::Progress {
                attempt,
                done,
                total,
                step,
            } => {
                self.fenced(id, attempt)?;
                if done < 0 || total < done {
                    return Err(DomainError::invalid("progress", "0 <= done <= total"));
                }
                DomainEvent::JobProgressed(JobProgressed {
                    attempt,
                    done,
                    total,
                    step,
                })
            }
            JobCommand::Succeed { attempt, output } => {
                self.fenced(id, attempt)?;
                DomainEvent::JobSucceeded(JobSucceeded { attempt, output })
            }
            JobCommand::Fail {
                attempt,
                error,
                retry_at,
            } => {
                self.fenced(id, attempt)?;
                match retry_at {
                    Some(retry_at) => DomainEvent::JobRetried(JobRetried {
                        attempt,
                        error,
                        retry_at,
                    }),
                    None => DomainEvent::JobFailed(JobFailed { attempt, error }),
                }
            }
            JobCommand::RequestCancel { by } => match self.current(id)? {
                state if state.is_final() => {
                    return Err(DomainError::Conflict {
                        resource: "job",
                        message: format!("job {id} is already {}", state.as_str()),
                    });
                }
                JobState::Queued | JobState::Scheduled => {
                    DomainEvent::JobCancelled(JobCancelled { attempt: None })
                }
                _ if self.cancel_requested => return Ok(vec![]),
                _ => DomainEvent::JobCancelRequested(JobCancelRequested { by }),
            },
            JobCommand::ConfirmCancel { attempt } => {
                self.fenced(id, attempt)?;
                if !self.cancel_requested {
                    return Err(DomainError::Conflict {
                        resource: "job",
                        message: format!("job {id} was not asked to cancel"),
                    });
                }
                DomainEvent::JobCancelled(JobCancelled {
                    attempt: Some(attempt),
                })
            }
        };
        Ok(vec![event])
    }
}

#[cfg(test)]
mod tests {
    //! Given events → when a command → then events or an error. No database.
    use super::*;

    struct Given(Job);

    fn accepted() -> Given {
        let mut g = Given(Job::default());
        g.when(JobCommand::Accept(JobAccepted {
            job_id: "j".into(),
            kind: JobKind::DeleteImage,
            caption: "delete image app".into(),
            input: serde_json::json!({"image_id": "i"}),
            creator: Some("token:t".into()),
            idempotency_key: None,
            project_id: None,
        }))
        .unwrap();
        g
    }

    impl Given {
        fn when(&mut self, cmd: JobCommand) -> Result<Vec<DomainEvent>, DomainError> {
            let events = self.0.decide("j", cmd)?;
            events.iter().for_each(|e| self.0.apply(e, "t", 0));
            Ok(events)
        }

        fn state(&self) -> &'static str {
            self.0.state.unwrap().as_str()
        }
    }

    fn start(task: &str) -> JobCommand {
        JobCommand::Start {
            task: task.into(),
            takeover: false,
        }
    }

    fn progress(attempt: i64, done: i64) -> JobCommand {
        JobCommand::Progress {
            attempt,
            done,
            total: 3,
            step: format!("step {done}"),
        }
    }

    #[test]
    fn a_job_runs_through_its_steps_to_completion() {
        let mut g = accepted();
        assert_eq!(g.state(), "queued");
        g.when(start("a")).unwrap();
        assert_eq!((g.state(), g.0.attempts), ("running", 1));
        g.when(progress(1, 1)).unwrap();
        g.when(progress(1, 3)).unwrap();
        g.when(JobCommand::Succeed {
            attempt: 1,
            output: serde_json::json!({"tags_deleted": 3}),
        })
        .unwrap();
        assert_eq!((g.state(), g.0.done, g.0.total), ("completed", 3, 3));
        assert!(
            g.when(start("a")).is_err(),
            "a finished job never runs again"
        );
    }

    #[test]
    fn a_new_attempt_fences_off_the_previous_one() {
        let mut g = accepted();
        g.when(start("a")).unwrap();
        g.when(progress(1, 1)).unwrap();
        // The worker died; another one takes the job over.
        g.when(start("a")).unwrap();
        assert_eq!(g.0.attempts, 2);
        let stale = g.when(progress(1, 2)).unwrap_err();
        assert!(matches!(
            stale,
            DomainError::Conflict {
                resource: "job",
                ..
            }
        ));
        assert!(
            g.when(JobCommand::Succeed {
                attempt: 1,
                output: Value::Null
            })
            .is_err()
        );
        g.when(progress(2, 2)).unwrap();
        g.when(JobCommand::Succeed {
            attempt: 2,
            output: Value::Null,
        })
        .unwrap();
        assert_eq!(g.state(), "completed");
    }

    #[test]
    fn a_transient_failure_schedules_a_retry_and_a_permanent_one_ends_the_job() {
        let mut g = accepted();
        g.when(start("a")).unwrap();
        g.when(JobCommand::Fail {
            attempt: 1,
            error: "database away".into(),
            retry_at: Some("2026-11-22T05:00:00.000000Z".into()),
        })
        .unwrap();
        assert_eq!(g.state(), "scheduled");
        assert_eq!(g.0.retry_at.as_deref(), Some("2026-11-22T05:00:00.000000Z"));
        g.when(start("a")).unwrap();
        assert_eq!(
            (g.state(), g.0.attempts, g.0.retry_at.as_ref()),
            ("running", 2, None)
        );
        g.when(JobCommand::Fail {
            attempt: 2,
            error: "image not found".into(),
            retry_at: None,
        })
        .unwrap();
        assert_eq!(
            (g.state(), g.0.last_error.as_deref()),
            ("error", Some("image not found"))
        );
    }

    #[test]
    fn cancel_is_immediate_while_waiting_and_at_a_step_boundary_while_running() {
        let mut waiting = accepted();
        waiting
            .when(JobCommand::RequestCancel { by: None })
            .unwrap();
        assert_eq!(waiting.state(), "cancelled");

        let mut g = accepted();
        g.when(start("a")).unwrap();
        g.when(progress(1, 1)).unwrap();
        g.when(JobCommand::RequestCancel {
            by: Some("me".into()),
        })
        .unwrap();
        assert_eq!((g.state(), g.0.cancel_requested), ("running", true));
        assert_eq!(g.when(JobCommand::RequestCancel { by: None }), Ok(vec![]));
        g.when(JobCommand::ConfirmCancel { attempt: 1 }).unwrap();
        assert_eq!(
            (g.state(), g.0.done),
            ("cancelled", 1),
            "work done so far stays described"
        );
        assert!(g.when(JobCommand::RequestCancel { by: None }).is_err());
    }

    #[test]
    fn a_cancel_request_outlives_the_attempt_that_saw_it() {
        let mut g = accepted();
        g.when(start("a")).unwrap();
        g.when(JobCommand::RequestCancel { by: None }).unwrap();
        // The worker died before its next step boundary: the rerun cancels, never runs.
        let events = g.when(start("a")).unwrap();
        assert!(matches!(
            events[0],
            DomainEvent::JobCancelled(JobCancelled { attempt: None })
        ));
        assert_eq!(g.state(), "cancelled");
    }

    #[test]
    fn a_duplicate_delivery_does_not_disturb_the_running_attempt() {
        let mut g = accepted();
        g.when(start("a")).unwrap();
        assert!(g.when(start("b")).is_err(), "another task while running");
        assert_eq!((g.0.attempts, g.0.task.as_deref()), (1, Some("a")));
        g.when(JobCommand::Start {
            task: "c".into(),
            takeover: true,
        })
        .unwrap();
        assert_eq!((g.0.attempts, g.0.task.as_deref()), (2, Some("c")));
    }

    #[test]
    fn progress_is_checked() {
        let mut g = accepted();
        g.when(start("a")).unwrap();
        assert!(
            g.when(JobCommand::Progress {
                attempt: 1,
                done: 4,
                total: 3,
                step: "x".into(),
            })
            .is_err()
        );
    }
}
