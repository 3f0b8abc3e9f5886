//! Submitting jobs: the port to the job queue, and the one way every API surface starts a job.
//!
//! A job is accepted by appending `job.accepted` to its own stream (that is the durable
//! record), then handed to the queue. The queue is only a doorbell: when handing over fails
//! or the process dies in between, the dispatcher's sweep finds the job still waiting and
//! rings again, and a second ring is harmless because attempts are fenced by the job stream.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::domain::DomainError;
use crate::domain::image::ImageCommand;
use crate::domain::job::{Job, JobAccepted, JobCommand, JobKind};
use crate::domain::namespace::NamespaceCommand;
use crate::service::{Registry, ServiceError};
use crate::store::rows::{JobDescriptorRow, STATUS_DELETING};
use crate::store::{EventStore, Metadata, ReadModels, StoreError};

/// Largest `Idempotency-Key` accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

pub type DispatchFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// Hands a job to the queue of its kind. Implemented over apalis by `layerline-jobs`.
pub trait Dispatch: Send + Sync + std::fmt::Debug {
    /// Queues one run of job `job_id`, not before `run_at` (now when `None`). `takeover`: the
    /// caller found no live queue task for a job recorded as running, so the run may take
    /// the job over from the attempt that died.
    fn dispatch<'a>(
        &'a self,
        kind: JobKind,
        job_id: &'a str,
        run_at: Option<DateTime<Utc>>,
        takeover: bool,
    ) -> DispatchFuture<'a>;
}

pub type Dispatcher = Arc<dyn Dispatch>;

/// What a client asks for.
#[derive(Debug, Clone)]
pub struct Submission {
    pub kind: JobKind,
    pub caption: String,
    pub input: Value,
    /// `token:<id>` of the caller.
    pub creator: Option<String>,
    /// The client's `Idempotency-Key`, if it sent one.
    pub idempotency_key: Option<String>,
    /// The resource marked `deleting` by a delete job.
    pub marks: Option<Mark>,
    /// The project the job acts in: the project of the namespace or image it names. Tokens
    /// scoped to another project never see the job.
    pub project_id: Option<String>,
}

impl Submission {
    /// The delete job of an image or a namespace (with its images), as every surface
    /// submits it: it marks the resource `deleting`.
    pub fn delete(
        mark: Mark,
        name: &str,
        project_id: &str,
        creator: String,
        idempotency_key: Option<String>,
    ) -> Self {
        let (kind, caption, input) = match &mark {
            Mark::Image(id) => (
                JobKind::DeleteImage,
                format!("delete image {name}"),
                serde_json::json!({"image_id": id}),
            ),
            Mark::Namespace(id) => (
                JobKind::DeleteNamespace,
                format!("delete namespace {name} and its images"),
                serde_json::json!({"namespace_id": id}),
            ),
        };
        Submission {
            kind,
            caption,
            input,
            creator: Some(creator),
            idempotency_key,
            marks: Some(mark),
            project_id: Some(project_id.to_owned()),
        }
    }
}

/// A resource a delete job marks as `deleting` when it is accepted.
#[derive(Debug, Clone)]
pub enum Mark {
    Image(String),
    Namespace(String),
}

/// Accepts a job (or finds the one submitted before with the same idempotency key, or the
/// delete job already running for the same resource) and queues it. Returns that job.
pub async fn submit<S: EventStore + ReadModels>(
    registry: &Registry<S>,
    dispatcher: &dyn Dispatch,
    sub: Submission,
) -> Result<JobDescriptorRow, ServiceError> {
    // Keys are the caller's own: two tokens using the same key do not meet.
    let key = sub
        .idempotency_key
        .as_ref()
        .map(|k| format!("{}:{k}", sub.creator.as_deref().unwrap_or("")));
    if let Some(key) = &key
        && let Some(job) = by_key(registry, key).await?
    {
        return same_request(sub.kind, &sub.input, job);
    }
    if let Some(existing) = running_delete(registry, sub.marks.as_ref()).await? {
        return Ok(existing);
    }
    let job_id = uuid::Uuid::now_v7().to_string();
    let meta = Metadata {
        actor: sub.creator.clone(),
        job_id: Some(job_id.clone()),
        ..Metadata::default()
    };
    let accepted = JobAccepted {
        job_id: job_id.clone(),
        kind: sub.kind,
        caption: sub.caption,
        input: sub.input.clone(),
        creator: sub.creator,
        idempotency_key: key.clone(),
        project_id: sub.project_id,
    };
    match registry
        .execute::<Job>(&job_id, JobCommand::Accept(accepted), &meta)
        .await
    {
        Ok(_) => {
            tracing::info!(job_id, kind = sub.kind.as_str(), "job accepted");
            crate::metric::job_submitted(sub.kind);
        }
        // Another request with the same key won the race: answer its job.
        Err(ServiceError::Store(StoreError::Unique { .. })) if key.is_some() => {
            let key = key.as_deref().unwrap_or_default();
            if let Some(job) = by_key(registry, key).await? {
                return same_request(sub.kind, &sub.input, job);
            }
        }
        Err(e) => return Err(e),
    }
    let marked = match sub.marks {
        Some(Mark::Image(id)) => registry
            .image(
                &id,
                ImageCommand::RequestDelete {
                    job_id: job_id.clone(),
                },
                &meta,
            )
            .await
            .map(drop),
        Some(Mark::Namespace(id)) => registry
            .namespace(
                &id,
                NamespaceCommand::RequestDelete {
                    job_id: job_id.clone(),
                },
                &meta,
            )
            .await
            .map(drop),
        None => Ok(()),
    };
    // The resource went away in between: the job then finds nothing to delete.
    if let Err(e) = marked
        && !matches!(e, ServiceError::Domain(DomainError::NotFound { .. }))
    {
        return Err(e);
    }
    if let Err(error) = dispatcher.dispatch(sub.kind, &job_id, None, false).await {
        // Accepted all the same: the sweep queues it again.
        tracing::warn!(
            job_id,
            error,
            "queueing the job failed; the sweep will retry"
        );
    }
    let job = registry
        .store()
        .job(&job_id)
        .await
        .map_err(ServiceError::Store)?
        .ok_or_else(|| ServiceError::Domain(DomainError::not_found("job", &job_id)))?;
    Ok(job)
}

/// The job `job` found under the submission's idempotency key, when it was submitted for the
/// same request (same kind, same input); a key reused for another request is refused
/// (`Invalid` naming `Idempotency-Key`), so the second request is never silently dropped.
fn same_request(
    kind: JobKind,
    input: &Value,
    job: JobDescriptorRow,
) -> Result<JobDescriptorRow, ServiceError> {
    let stored: Option<Value> = serde_json::from_str(&job.input).ok();
    if job.kind == kind.as_str() && stored.as_ref() == Some(input) {
        return Ok(job);
    }
    // The stored key is `<creator>:<the client's key>`.
    let stored_key = job.idempotency_key.as_deref().unwrap_or_default();
    let creator = format!("{}:", job.creator.as_deref().unwrap_or_default());
    let key = stored_key.strip_prefix(&creator).unwrap_or(stored_key);
    Err(ServiceError::Domain(DomainError::invalid(
        "Idempotency-Key",
        format!(
            "the key `{}` was used for another request (job {}, {}); use a new key for a \
             new request",
            crate::domain::validate::clip(key),
            job.id,
            job.kind
        ),
    )))
}

async fn by_key<S: EventStore + ReadModels>(
    registry: &Registry<S>,
    key: &str,
) -> Result<Option<JobDescriptorRow>, ServiceError> {
    registry
        .store()
        .job_by_idempotency_key(key)
        .await
        .map_err(ServiceError::Store)
}

/// The unfinished delete job that already marked the resource, if any. The read model
/// says whether it is marked; only then is its stream folded to learn the job.
async fn running_delete<S: EventStore + ReadModels>(
    registry: &Registry<S>,
    mark: Option<&Mark>,
) -> Result<Option<JobDescriptorRow>, ServiceError> {
    let store = registry.store();
    let status = match mark {
        Some(Mark::Image(id)) => store.image(id).await.map(|r| r.map(|r| r.status)),
        Some(Mark::Namespace(id)) => store.namespace(id).await.map(|r| r.map(|r| r.status)),
        None => return Ok(None),
    }
    .map_err(ServiceError::Store)?;
    if status.as_deref() != Some(STATUS_DELETING) {
        return Ok(None);
    }
    let job_id = match mark {
        Some(Mark::Image(id)) => registry.load_image(id).await?.deleting,
        Some(Mark::Namespace(id)) => registry.load_namespace(id).await?.deleting,
        None => None,
    };
    let Some(job_id) = job_id else {
        return Ok(None);
    };
    let job = store.job(&job_id).await.map_err(ServiceError::Store)?;
    Ok(job.filter(|j| !matches!(j.state.as_str(), "completed" | "error" | "cancelled")))
}

/// A dispatcher that queues nothing, for a process that only reads (and for tests of the
/// API alone): accepted jobs wait until a worker process's sweep queues them.
#[derive(Debug, Default)]
pub struct NoDispatch;

impl Dispatch for NoDispatch {
    fn dispatch<'a>(
        &'a self,
        _kind: JobKind,
        _job_id: &'a str,
        _run_at: Option<DateTime<Utc>>,
        _takeover: bool,
    ) -> DispatchFuture<'a> {
        Box::pin(async { Ok(()) })
    }
}
