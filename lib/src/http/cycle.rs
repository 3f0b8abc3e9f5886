//! The Cycle-style surface: jobs and image tasks (`api-contract.md` §2). Every answer is
//! `{"data": …}`; every error `{"error": {status, code, title, detail, source}, "data": null}`.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::auth::{AuthError, Principal, authenticate};
use super::{AppState, Params};
use crate::domain::DomainError;
use crate::domain::image::ImageCommand;
use crate::domain::job::{Job as JobStream, JobCommand, JobKind};
use crate::domain::policy::{Policy, PolicySpec, PruneInput};
use crate::domain::source::{CatalogImport, CredentialsRef, ImportInput, Source};
use crate::domain::token::Capability;
use crate::jobs::{MAX_IDEMPOTENCY_KEY, Mark, Submission, submit};
use crate::service::ServiceError;
use crate::store::plans::{KeptItem, PlanItem};
use crate::store::rows::{JobDescriptorRow, NamespaceRow};
use crate::store::{JobQuery, JobSort, Metadata, ReadModels};

/// Paths of this surface start with this (the rest of `/v1/…` is nobody's).
pub const PREFIX: &str = "/v1/";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/jobs", get(list_jobs).post(create_job))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/jobs/{id}/tasks", post(job_task))
        .route("/v1/jobs/{id}/plan", get(job_plan))
        .route("/v1/images/tasks", post(images_task))
        .route("/v1/images/{id}", delete(delete_image))
        .route("/v1/images/{id}/tasks", post(image_task))
        .route("/v1/images", post(create_image))
        .route("/v1/images/{id}/build-log", get(build_log))
        .route(
            "/v1/images/{id}/manifests/{digest}/referrers",
            get(referrers),
        )
}

// ---------------------------------------------------------------------------------------
// Errors

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    title: &'static str,
    detail: String,
    source: String,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            code,
            title,
            detail: detail.into(),
            source: String::new(),
        }
    }

    fn at(mut self, source: &str) -> Self {
        self.source = source.to_owned();
        self
    }

    pub(crate) fn invalid(field: &str, detail: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "422.invalid-argument",
            "Invalid argument",
            detail,
        )
        .at(&format!("/{field}"))
    }

    fn missing_job(id: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "404.job",
            "Job not found",
            format!("no job {id}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        use crate::domain::validate::{MESSAGE_MAX, clip_to};
        let body = json!({
            "error": {
                "status": self.status.as_u16(),
                "code": self.code,
                "title": self.title,
                "detail": clip_to(&self.detail, MESSAGE_MAX),
                "source": self.source,
            },
            "data": null,
        });
        (self.status, Json(body)).into_response()
    }
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::Unauthorized => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "401.auth-invalid",
                "Unauthorized",
                err.to_string(),
            ),
            AuthError::Forbidden(_) => ApiError::new(
                StatusCode::FORBIDDEN,
                "403.permissions",
                "Forbidden",
                err.to_string(),
            ),
            AuthError::Store(e) => internal(e),
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> Self {
        match err {
            ServiceError::Domain(DomainError::NotFound { resource, id }) => ApiError::new(
                StatusCode::NOT_FOUND,
                match resource {
                    "image" => "404.image",
                    "namespace" => "404.namespace",
                    "policy" => "404.policy",
                    _ => "404.job",
                },
                "Not found",
                format!("no {resource} {id}"),
            ),
            ServiceError::Domain(DomainError::Conflict { message, .. }) => {
                ApiError::new(StatusCode::CONFLICT, "409.conflict", "Conflict", message)
            }
            ServiceError::Domain(DomainError::AlreadyExists { resource, id }) => ApiError::new(
                StatusCode::CONFLICT,
                "409.duplicate-found",
                "Duplicate",
                format!("{resource} {id} already exists"),
            ),
            ServiceError::Domain(e @ DomainError::Invalid { field, .. }) => {
                ApiError::invalid(field, e.to_string())
            }
            ServiceError::Contention { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "503.not-ready",
                "Busy",
                err.to_string(),
            ),
            ServiceError::Store(e) => internal(e),
        }
    }
}

pub(crate) fn internal(err: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %err, "store failure");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "500.database",
        "Internal error",
        "the database failed; try again",
    )
}

/// Bodies: JSON only, unknown fields refused with the field named. The token is checked
/// first, so an anonymous request learns nothing from how its body would be judged (the
/// handler checks the capability).
pub struct Body<T>(pub T);

impl<T: serde::de::DeserializeOwned> axum::extract::FromRequest<AppState> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(
        req: axum::extract::Request,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        authenticate(state.store(), req.headers()).await?;
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(rejection) => {
                let status = rejection.status();
                let (status, code) = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    (status, "413.too-large")
                } else if status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
                    (status, "415.media-type")
                } else {
                    (StatusCode::BAD_REQUEST, "400.invalid-syntax")
                };
                Err(ApiError::new(
                    status,
                    code,
                    "Bad request body",
                    rejection.body_text(),
                ))
            }
        }
    }
}

pub(crate) async fn principal(
    state: &AppState,
    headers: &HeaderMap,
    cap: Capability,
) -> Result<Principal, ApiError> {
    let p = authenticate(state.store(), headers).await?;
    p.require(cap)?;
    Ok(p)
}

/// Namespace `id` when it exists and the caller sees its project; 404 otherwise (another
/// project's namespace is as unknown as a missing one).
pub(crate) async fn visible_namespace(
    state: &AppState,
    p: &Principal,
    id: &str,
) -> Result<NamespaceRow, ApiError> {
    let namespace = state.store().namespace(id).await.map_err(internal)?;
    namespace.filter(|n| p.sees(&n.project_id)).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "404.namespace",
            "Not found",
            format!("no namespace {id}"),
        )
    })
}

/// Image `id`, when the principal sees its project; otherwise 404, as if it did not exist.
pub(crate) async fn visible_image(
    state: &AppState,
    p: &Principal,
    id: &str,
) -> Result<crate::store::rows::ImageRow, ApiError> {
    let image = state.store().image(id).await.map_err(internal)?;
    image.filter(|i| p.sees(&i.project_id)).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "404.image",
            "Not found",
            format!("no image {id}"),
        )
    })
}

/// Job `id`, when the principal sees its project; otherwise 404, as if it did not exist. A
/// job of no project is seen only by unscoped tokens.
pub(crate) async fn visible_job(
    state: &AppState,
    p: &Principal,
    id: &str,
) -> Result<JobDescriptorRow, ApiError> {
    let job = state.store().job(id).await.map_err(internal)?;
    job.filter(|j| p.sees_job(j.project_id.as_deref()))
        .ok_or_else(|| ApiError::missing_job(id))
}

/// The request's `Idempotency-Key`, checked (other surfaces map the error to their shape).
pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY => Ok(Some(k.to_owned())),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "400.invalid-syntax",
            "Bad Idempotency-Key",
            format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
        )),
    }
}

// ---------------------------------------------------------------------------------------
// Shapes

/// The Cycle job descriptor answered on every submission.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobDescriptor {
    pub action: String,
    pub job: DescriptorJob,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DescriptorJob {
    pub id: String,
    pub accepted: bool,
    pub queue: String,
    pub schedule: String,
    pub parallel: Parallel,
    pub tasks: Vec<DescriptorTask>,
    /// Ours: where the job is now.
    pub state: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Parallel {
    pub sub_queue: Option<String>,
    pub tasks: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DescriptorTask {
    pub caption: String,
    pub header: String,
    pub steps: Option<Vec<Step>>,
    #[schema(value_type = Object)]
    pub input: Value,
}

impl JobDescriptor {
    fn new(row: &JobDescriptorRow) -> Self {
        JobDescriptor {
            action: row.kind.clone(),
            job: DescriptorJob {
                id: row.id.clone(),
                accepted: true,
                queue: row.kind.clone(),
                schedule: row
                    .next_retry_at
                    .clone()
                    .unwrap_or_else(|| row.created_at.clone()),
                parallel: Parallel {
                    sub_queue: None,
                    tasks: false,
                },
                tasks: vec![DescriptorTask {
                    caption: row.caption.clone(),
                    header: row.kind.clone(),
                    steps: None,
                    input: parse(&row.input),
                }],
                state: row.state.clone(),
            },
        }
    }
}

/// A job as `GET /v1/jobs/{id}` shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Job {
    pub id: String,
    pub queue: String,
    pub caption: String,
    pub schedule: String,
    pub expires: Option<String>,
    pub events: JobEvents,
    pub tasks: Vec<Task>,
    pub hash: Option<String>,
    pub limit_duplicates: bool,
    pub creator: Option<String>,
    pub state: JobStateView,
    /// Ours: attempts started, the progress counters, the last error, the retry time.
    pub attempts: i64,
    pub progress: Progress,
    pub last_error: Option<String>,
    pub next_retry_at: Option<String>,
    pub cancel_requested: bool,
    #[schema(value_type = Object)]
    pub output: Option<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobEvents {
    pub queued: String,
    pub started: Option<String>,
    pub completed: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Task {
    pub id: String,
    pub caption: String,
    pub header: String,
    pub events: JobEvents,
    pub steps: Vec<Step>,
    pub state: TaskState,
    #[schema(value_type = Object)]
    pub input: Value,
    #[schema(value_type = Object)]
    pub output: Option<Value>,
    pub error: Option<ErrorMessage>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Step {
    pub caption: String,
    pub description: String,
    pub started: Option<String>,
    pub completed: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TaskState {
    pub current: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobStateView {
    pub current: String,
    pub changed: String,
    pub error: Option<ErrorMessage>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorMessage {
    pub message: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Progress {
    pub done: i64,
    pub total: i64,
    pub step: Option<String>,
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

impl Job {
    pub fn new(row: &JobDescriptorRow) -> Self {
        let events = || JobEvents {
            queued: row.created_at.clone(),
            started: row.started_at.clone(),
            completed: row.completed_at.clone(),
        };
        let error = match row.state.as_str() {
            "error" => row
                .last_error
                .clone()
                .map(|message| ErrorMessage { message }),
            _ => None,
        };
        let task_state = match row.state.as_str() {
            "queued" | "scheduled" => "pending",
            "running" => "running",
            "completed" => "completed",
            _ => "error",
        };
        let output = row.output.as_deref().map(parse);
        let steps = row
            .progress_step
            .iter()
            .map(|s| Step {
                caption: s.clone(),
                description: format!("{} of {} steps done", row.progress_done, row.progress_total),
                started: row.started_at.clone(),
                completed: row.completed_at.clone(),
            })
            .collect();
        Job {
            id: row.id.clone(),
            queue: row.kind.clone(),
            caption: row.caption.clone(),
            schedule: row
                .next_retry_at
                .clone()
                .unwrap_or_else(|| row.created_at.clone()),
            expires: None,
            events: events(),
            tasks: vec![Task {
                id: format!("{}-0", row.id),
                caption: row.caption.clone(),
                header: row.kind.clone(),
                events: events(),
                steps,
                state: TaskState {
                    current: task_state.to_owned(),
                },
                input: parse(&row.input),
                output: output.clone(),
                error: match row.state.as_str() {
                    "error" => row
                        .last_error
                        .clone()
                        .map(|message| ErrorMessage { message }),
                    _ => None,
                },
            }],
            hash: None,
            limit_duplicates: false,
            creator: row.creator.clone(),
            state: JobStateView {
                current: row.state.clone(),
                changed: row.updated_at.clone(),
                error,
            },
            attempts: row.attempts,
            progress: Progress {
                done: row.progress_done,
                total: row.progress_total,
                step: row.progress_step.clone(),
            },
            last_error: row.last_error.clone(),
            next_retry_at: row.next_retry_at.clone(),
            cancel_requested: row.cancel_requested,
            output,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Data<T> {
    pub data: T,
}

pub(crate) fn data<T: Serialize>(status: StatusCode, value: T) -> Response {
    (status, Json(json!({ "data": value }))).into_response()
}

// ---------------------------------------------------------------------------------------
// Handlers

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct JobListParams {
    #[serde(rename = "page[number]")]
    #[param(rename = "page[number]")]
    page_number: Option<String>,
    #[serde(rename = "page[size]")]
    #[param(rename = "page[size]")]
    page_size: Option<String>,
    /// Comma-separated states.
    #[serde(rename = "filter[state]")]
    #[param(rename = "filter[state]")]
    filter_state: Option<String>,
    /// Comma-separated kinds (queues).
    #[serde(rename = "filter[kind]")]
    #[param(rename = "filter[kind]")]
    filter_kind: Option<String>,
    /// `created_at` (default `-created_at`), `updated_at`, `state` or `kind`; `-` for descending.
    sort: Option<String>,
    /// `total`: also answer `"meta": {"total": N}`, the number of jobs matching the filters.
    meta: Option<String>,
}

const STATES: [&str; 7] = [
    "new",
    "queued",
    "scheduled",
    "running",
    "completed",
    "error",
    "cancelled",
];
const MAX_PAGE_SIZE: i64 = 100;

pub(crate) fn number(
    field: &str,
    v: Option<&str>,
    default: i64,
    max: i64,
) -> Result<i64, ApiError> {
    match v {
        None => Ok(default),
        Some(s) => match s.parse::<i64>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::invalid(
                field,
                format!("{field} must be an integer from 1 to {max}"),
            )),
        },
    }
}

fn list(field: &str, v: Option<&str>, allowed: &[&str]) -> Result<Vec<String>, ApiError> {
    let Some(v) = v else { return Ok(Vec::new()) };
    v.split(',')
        .map(|s| {
            if allowed.contains(&s) {
                Ok(s.to_owned())
            } else {
                Err(ApiError::invalid(
                    field,
                    format!("unknown value `{s}` (one of {})", allowed.join(", ")),
                ))
            }
        })
        .collect()
}

#[utoipa::path(
    get, path = "/v1/jobs", tag = "jobs", params(JobListParams),
    summary = "List jobs (jobs-view)",
    responses((status = 401, description = "No valid token"), (status = 403, description = "The token lacks the capability"), (status = 200, description = "A page of jobs", body = Data<Vec<Job>>)),
    security(("token" = []), ("bearer" = []))
)]
pub(crate) async fn list_jobs(
    State(state): State<AppState>,
    headers: HeaderMap,
    Params(p): Params<JobListParams>,
) -> Result<Response, ApiError> {
    let principal = principal(&state, &headers, Capability::JobsView).await?;
    let size = number("page[size]", p.page_size.as_deref(), 20, MAX_PAGE_SIZE)?;
    let page = number("page[number]", p.page_number.as_deref(), 1, 1_000_000)?;
    let kinds: Vec<&str> = JobKind::ALL.iter().map(|k| k.as_str()).collect();
    let (desc, sort) = match p.sort.as_deref() {
        None => (true, JobSort::CreatedAt),
        Some(s) => {
            let (desc, key) = s.strip_prefix('-').map_or((false, s), |k| (true, k));
            let key = match key {
                "created_at" | "id" => JobSort::CreatedAt,
                "updated_at" => JobSort::UpdatedAt,
                "state" => JobSort::State,
                "kind" => JobSort::Kind,
                other => {
                    return Err(ApiError::invalid(
                        "sort",
                        format!("cannot sort by `{other}` (created_at, updated_at, state, kind)"),
                    ));
                }
            };
            (desc, key)
        }
    };
    let query = JobQuery {
        states: list("filter[state]", p.filter_state.as_deref(), &STATES)?,
        kinds: list("filter[kind]", p.filter_kind.as_deref(), &kinds)?,
        project_id: principal.project_id,
        sort,
        desc,
        limit: size,
        offset: (page - 1) * size,
    };
    let page = state.store().list_jobs(&query).await.map_err(internal)?;
    let jobs: Vec<Job> = page.items.iter().map(Job::new).collect();
    // A list is `{"data": […]}`; the count only when asked for.
    let body = match p.meta.as_deref() {
        None => json!({ "data": jobs }),
        Some("total") => json!({"data": jobs, "meta": {"total": page.total_count}}),
        Some(other) => {
            return Err(ApiError::invalid(
                "meta",
                format!("unknown meta `{other}` (total)"),
            ));
        }
    };
    Ok((StatusCode::OK, Json(body)).into_response())
}

#[utoipa::path(
    get, path = "/v1/jobs/{id}", tag = "jobs", params(("id" = String, Path)),
    summary = "One job (jobs-view)",
    responses((status = 401, description = "No valid token"), (status = 403, description = "The token lacks the capability"), (status = 200, description = "The job", body = Data<Job>), (status = 404, description = "No such job")),
    security(("token" = []), ("bearer" = []))
)]
pub(crate) async fn get_job(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers, Capability::JobsView).await?;
    let row = visible_job(&state, &p, &id).await?;
    Ok(data(StatusCode::OK, Job::new(&row)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    action: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    contents: Value,
}

#[utoipa::path(
    post, path = "/v1/jobs/{id}/tasks", tag = "jobs", params(("id" = String, Path)),
    request_body = TaskRequest,
    summary = "Cancel a job: {\"action\": \"cancel\"} (images-manage)",
    responses((status = 401, description = "No valid token"), (status = 403, description = "The token lacks the capability"), (status = 200, description = "The job", body = Data<Job>), (status = 404, description = "No such job"), (status = 409, description = "Already finished")),
    security(("token" = []), ("bearer" = []))
)]
pub(crate) async fn job_task(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Body(req): Body<TaskRequest>,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers, Capability::ImagesManage).await?;
    if req.action != "cancel" {
        return Err(ApiError::invalid(
            "action",
            format!("unknown action `{}` (cancel)", req.action),
        ));
    }
    let before = visible_job(&state, &p, &id).await?;
    let by = Some(p.actor());
    let meta = Metadata {
        actor: by.clone(),
        ..Metadata::default()
    };
    let events = state
        .registry
        .execute::<JobStream>(&id, JobCommand::RequestCancel { by }, &meta)
        .await?;
    // A job no attempt was running ends here; a running one ends at its next step.
    if events
        .iter()
        .any(|e| matches!(e, crate::domain::DomainEvent::JobCancelled(_)))
        && let Some(kind) = crate::domain::job::JobKind::parse(&before.kind)
    {
        crate::metric::job_finished(kind, "cancelled");
    }
    let row = state
        .store()
        .job(&id)
        .await
        .map_err(internal)?
        .ok_or_else(|| ApiError::missing_job(&id))?;
    Ok(data(StatusCode::OK, Job::new(&row)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProbeRequest {
    /// Only `probe`: a diagnostic job (admin).
    kind: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    input: Value,
}

#[utoipa::path(
    post, path = "/v1/jobs", tag = "jobs", request_body = ProbeRequest,
    summary = "Submit a diagnostic probe job (admin)",
    responses((status = 401, description = "No valid token"), (status = 403, description = "The token lacks the capability"), (status = 202, description = "Accepted", body = Data<JobDescriptor>)),
    security(("token" = []), ("bearer" = []))
)]
pub(crate) async fn create_job(
    State(state): State<AppState>,
    headers: HeaderMap,
    Body(req): Body<ProbeRequest>,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers, Capability::Admin).await?;
    // A probe checks the whole service's pool and belongs to no project, so a token
    // confined to one project may not start it.
    if p.project_id.is_some() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "403.permissions",
            "Forbidden",
            "probe jobs are for admin tokens of no project",
        ));
    }
    if req.kind != JobKind::Probe.as_str() {
        return Err(ApiError::invalid(
            "kind",
            "only `probe` jobs are submitted here",
        ));
    }
    let input = if req.input.is_null() {
        json!({})
    } else {
        req.input
    };
    let sub = Submission {
        kind: JobKind::Probe,
        caption: "probe".to_owned(),
        input,
        creator: Some(p.actor()),
        idempotency_key: idempotency_key(&headers)?,
        marks: None,
        // A diagnostic of the whole service, in no project.
        project_id: None,
    };
    accepted(&state, sub, StatusCode::ACCEPTED).await
}

async fn accepted(
    state: &AppState,
    sub: Submission,
    status: StatusCode,
) -> Result<Response, ApiError> {
    let job = submit(&state.registry, state.dispatcher.as_ref(), sub).await?;
    Ok(data(status, JobDescriptor::new(&job)))
}

#[utoipa::path(
    post, path = "/v1/images/tasks", tag = "jobs", request_body = TaskRequest,
    summary = "Image tasks (images-manage): {\"action\": \"delete_tags\", \"contents\": {\"tag_ids\": [...], \"force\": false}} or {\"action\": \"prune\", \"contents\": {\"policy_id\": \"...\" or \"policy\": {...}, \"dry_run\": true}} or {\"action\": \"gc\", \"contents\": {\"namespace_id\": \"...\"}}",
    responses((status = 401, description = "No valid token"), (status = 403, description = "The token lacks the capability"), (status = 202, description = "Accepted", body = Data<JobDescriptor>)),
    security(("token" = []), ("bearer" = []))
)]
pub(crate) async fn images_task(
    State(state): State<AppState>,
    headers: HeaderMap,
    Body(req): Body<TaskRequest>,
) -> Result<Response, ApiError> {
    if req.action == "import" {
        let p = principal(&state, &headers, Capability::ImagesImport).await?;
        return catalog_import_task(&state, &headers, &p, req.contents).await;
    }
    let p = principal(&state, &headers, Capability::ImagesManage).await?;
    match req.action.as_str() {
        "delete_tags" => delete_tags_task(&state, &headers, &p, req.contents).await,
        "prune" => prune_task(&state, &headers, &p, req.contents).await,
        "gc" => gc_task(&state, &headers, &p, req.contents).await,
        other => Err(ApiError::invalid(
            "action",
            format!("unknown action `{other}` (delete_tags, prune, gc, import)"),
        )),
    }
}

/// A namespace-wide import (images-import): every repository of a registry's catalog, or
/// the ones named, into images of the namespace named after them.
async fn catalog_import_task(
    state: &AppState,
    headers: &HeaderMap,
    p: &Principal,
    contents: Value,
) -> Result<Response, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct CatalogSource {
        registry: String,
        #[serde(default)]
        repositories: Option<Vec<String>>,
        #[serde(default)]
        credentials: Option<CredentialsRef>,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Contents {
        namespace_id: String,
        source: CatalogSource,
    }
    let c: Contents = serde_json::from_value(contents)
        .map_err(|e| ApiError::invalid("contents", format!("contents: {e}")))?;
    let input = CatalogImport {
        namespace_id: c.namespace_id,
        registry: c.source.registry,
        repositories: c.source.repositories,
        credentials: c.source.credentials,
    };
    input.check().map_err(ServiceError::Domain)?;
    let namespace = visible_namespace(state, p, &input.namespace_id).await?;
    let what = match &input.repositories {
        Some(r) => format!("{} repositories", r.len()),
        None => "the catalog".to_owned(),
    };
    let sub = Submission {
        kind: JobKind::Import,
        caption: format!(
            "import {what} of {} into namespace {}",
            input.registry.trim_end_matches('/'),
            namespace.name
        ),
        input: serde_json::to_value(&input).map_err(internal)?,
        creator: Some(p.actor()),
        idempotency_key: idempotency_key(headers)?,
        marks: None,
        project_id: Some(namespace.project_id),
    };
    accepted(state, sub, StatusCode::ACCEPTED).await
}

async fn delete_tags_task(
    state: &AppState,
    headers: &HeaderMap,
    p: &Principal,
    contents: Value,
) -> Result<Response, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Contents {
        tag_ids: Vec<String>,
        #[serde(default)]
        force: bool,
    }
    let c: Contents = serde_json::from_value(contents)
        .map_err(|e| ApiError::invalid("contents", format!("contents: {e}")))?;
    if c.tag_ids.is_empty() || c.tag_ids.len() > 10_000 {
        return Err(ApiError::invalid("contents/tag_ids", "1 to 10000 tag ids"));
    }
    // Tags of projects the token cannot see are refused as unknown. The job is in the
    // tags' project when they share one (an unscoped token may name tags of several).
    let mut projects = std::collections::BTreeSet::new();
    for id in &c.tag_ids {
        let project = match state.store().tag(id).await.map_err(internal)? {
            Some(tag) => state
                .store()
                .image(&tag.image_id)
                .await
                .map_err(internal)?
                .map(|image| image.project_id)
                .filter(|project| p.sees(project)),
            None => None,
        };
        if let Some(project) = project {
            projects.insert(project);
        } else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "404.tag",
                "Not found",
                format!("no tag {id}"),
            ));
        }
    }
    let sub = Submission {
        kind: JobKind::DeleteTag,
        caption: format!("delete {} tag(s)", c.tag_ids.len()),
        input: json!({"tag_ids": c.tag_ids, "force": c.force}),
        creator: Some(p.actor()),
        idempotency_key: idempotency_key(headers)?,
        marks: None,
        project_id: (projects.len() == 1)
            .then(|| projects.pop_first())
            .flatten(),
    };
    accepted(state, sub, StatusCode::ACCEPTED).await
}

/// A `gc` job: which blobs of the namespace no manifest references any more (and, for a
/// backend-linked namespace, which of them the backend still stores).
async fn gc_task(
    state: &AppState,
    headers: &HeaderMap,
    p: &Principal,
    contents: Value,
) -> Result<Response, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Contents {
        namespace_id: String,
    }
    let c: Contents = serde_json::from_value(contents)
        .map_err(|e| ApiError::invalid("contents", format!("contents: {e}")))?;
    let namespace = visible_namespace(state, p, &c.namespace_id).await?;
    let sub = Submission {
        kind: JobKind::Gc,
        caption: format!("gc of namespace {}", namespace.name),
        input: json!({"namespace_id": c.namespace_id}),
        creator: Some(p.actor()),
        idempotency_key: idempotency_key(headers)?,
        marks: None,
        project_id: Some(namespace.project_id),
    };
    accepted(state, sub, StatusCode::ACCEPTED).await
}

/// A prune run of an inline policy body: checked here (bad input is refused before a job
/// exists), planned and applied by the job.
async fn prune_task(
    state: &AppState,
    headers: &HeaderMap,
    p: &Principal,
    contents: Value,
) -> Result<Response, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Contents {
        policy_id: Option<String>,
        policy: Option<PolicySpec>,
        #[serde(default)]
        dry_run: bool,
    }
    let c: Contents = serde_json::from_value(contents)
        .map_err(|e| ApiError::invalid("contents", format!("contents: {e}")))?;
    // A stored policy runs the body of its current version, and the run records which.
    let (policy_id, policy_version, policy) = match (c.policy_id, c.policy) {
        (Some(id), None) => {
            let row = state
                .store()
                .policy(&id)
                .await
                .map_err(internal)?
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::NOT_FOUND,
                        "404.policy",
                        "Not found",
                        format!("no policy {id}"),
                    )
                })?;
            let body: PolicySpec = serde_json::from_str(&row.body).map_err(internal)?;
            (Some(id), Some(row.version), body)
        }
        (None, Some(policy)) => (None, None, policy),
        _ => {
            return Err(ApiError::invalid(
                "contents/policy",
                "name the policy to run: `policy_id` (a stored policy) or `policy` (a body), \
                 not both",
            ));
        }
    };
    Policy::compile(&policy).map_err(ServiceError::Domain)?;
    let namespace = state
        .store()
        .namespace(&policy.namespace_id)
        .await
        .map_err(internal)?;
    let Some(namespace) = namespace.filter(|n| p.sees(&n.project_id)) else {
        // A stored policy of another project is as unknown as its namespace.
        let (code, what) = match &policy_id {
            Some(id) => ("404.policy", format!("no policy {id}")),
            None => (
                "404.namespace",
                format!("no namespace {}", policy.namespace_id),
            ),
        };
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            code,
            "Not found",
            what,
        ));
    };
    let caption = match &policy_id {
        Some(_) => format!(
            "prune namespace {} by policy {}",
            namespace.name, policy.name
        ),
        None => format!("prune namespace {}", namespace.name),
    };
    let input = PruneInput {
        policy_id,
        policy_version,
        policy,
        dry_run: c.dry_run,
        scheduled_for: None,
    };
    let sub = Submission {
        kind: JobKind::Prune,
        caption: format!("{caption}{}", if c.dry_run { " (dry run)" } else { "" }),
        input: serde_json::to_value(&input).map_err(internal)?,
        creator: Some(p.actor()),
        idempotency_key: idempotency_key(headers)?,
        marks: None,
        project_id: Some(namespace.project_id),
    };
    accepted(state, sub, StatusCode::ACCEPTED).await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ReferrerParams {
    /// Only attachments of this artifact type.
    #[serde(rename = "filter[artifact_type]")]
    #[param(rename = "filter[artifact_type]")]
    filter_artifact_type: Option<String>,
}

/// A manifest attached to another: a signature, an SBOM, an attestation.
#[derive(Debug, Serialize, ToSchema)]
pub struct Referrer {
    digest: String,
    media_type: String,
    artifact_type: Option<String>,
    /// How it is attached: `subject` (OCI 1.1), `cosign_tag` (`sha256-<hex>.sig|.att|.sbom`),
    /// `referrers_tag` (the OCI referrers tag schema's index, `sha256-<hex>`) or
    /// `referrers_index` (listed by that index).
    attached_by: String,
    /// The tag that attaches it, for the two tag schemes.
    tag: Option<String>,
}

#[utoipa::path(
    get, path = "/v1/images/{id}/manifests/{digest}/referrers", tag = "jobs",
    params(("id" = String, Path), ("digest" = String, Path), ReferrerParams),
    summary = "The manifests attached to a manifest of the image (images-view)",
    responses((status = 401, description = "No valid token"), (status = 403, description = "The token lacks the capability"), (status = 200, description = "Its attachments", body = Data<Vec<Referrer>>), (status = 404, description = "No such image or manifest")),
    security(("token" = []), ("bearer" = []))
)]
pub(crate) async fn referrers(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, digest)): Path<(String, String)>,
    Params(q): Params<ReferrerParams>,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers, Capability::ImagesView).await?;
    visible_image(&state, &p, &id).await?;
    let missing = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "404.manifest",
            "Not found",
            format!("image {id} has no manifest {digest}"),
        )
    };
    if crate::domain::validate::digest("digest", &digest).is_err()
        || !state
            .store()
            .has_manifest(&id, &digest)
            .await
            .map_err(internal)?
    {
        return Err(missing());
    }
    let rows = state
        .store()
        .referrers(&id, &digest, q.filter_artifact_type.as_deref())
        .await
        .map_err(internal)?;
    let list: Vec<Referrer> = rows
        .into_iter()
        .map(|r| Referrer {
            digest: r.digest,
            media_type: r.media_type,
            artifact_type: r.artifact_type,
            attached_by: r.attached_by,
            tag: r.tag,
        })
        .collect();
    Ok(data(StatusCode::OK, list))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PlanParams {
    #[serde(rename = "page[number]")]
    #[param(rename = "page[number]")]
    page_number: Option<String>,
    /// Items per page, 1 to 1000 (default 100).
    #[serde(rename = "page[size]")]
    #[param(rename = "page[size]")]
    page_size: Option<String>,
    /// `delete` (the default): the planned deletions; `keep`: what the plan keeps, each with
    /// the rule that kept it (dry runs only).
    #[serde(rename = "filter[decision]")]
    #[param(rename = "filter[decision]")]
    filter_decision: Option<String>,
}

const MAX_PLAN_PAGE: i64 = 1_000;

/// A stored prune plan: its summary and one page of its items.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlanPage {
    job_id: String,
    /// The log position the plan was made at.
    position: i64,
    policy_id: Option<String>,
    policy_version: Option<i64>,
    /// Images with at least one deletion.
    images: i64,
    tags: i64,
    manifests: i64,
    /// Bytes the planned deletions free.
    bytes: i64,
    created_at: String,
    /// Tags and manifests the plan keeps, when it lists them (a dry run's plan does; null
    /// for a real run's).
    kept_tags: Option<i64>,
    kept_manifests: Option<i64>,
    /// Which items this page lists: `delete` or `keep` (`filter[decision]`).
    decision: &'static str,
    /// Deletions: `{idx, image_id, image_name, kind: tag|manifest, tag, digest,
    /// pushed_version, reason, bytes, subject}`, in plan order; `subject` is the digest an
    /// `attachment_of` item is attached to (null otherwise). Keeps: `{idx, image_id,
    /// image_name, kind, tag, digest, reason, subject}`, the reason one of `not_matched`,
    /// `keep_tag_pattern`, `keep_last`, `newer_than`, `attachment_of`, `kept_tag`,
    /// `child_of_kept`, `untagged_not_set`.
    #[schema(value_type = Vec<Object>)]
    items: PlanItems,
}

/// A page of a plan's deletions or of its keeps.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum PlanItems {
    Delete(Vec<PlanItem>),
    Keep(Vec<KeptItem>),
}

#[utoipa::path(
    get, path = "/v1/jobs/{id}/plan", tag = "jobs", params(("id" = String, Path), PlanParams),
    summary = "A prune job's stored plan, a page of its items at a time (jobs-view)",
    responses((status = 401, description = "No valid token"), (status = 403, description = "The token lacks the capability"), (status = 200, description = "The plan's summary and a page of items, with meta.total", body = Data<PlanPage>), (status = 404, description = "No such job, or it has no plan (yet)")),
    security(("token" = []), ("bearer" = []))
)]
pub(crate) async fn job_plan(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Params(q): Params<PlanParams>,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers, Capability::JobsView).await?;
    let size = number("page[size]", q.page_size.as_deref(), 100, MAX_PLAN_PAGE)?;
    let page = number("page[number]", q.page_number.as_deref(), 1, 1_000_000)?;
    let keeps = match q.filter_decision.as_deref() {
        None | Some("delete") => false,
        Some("keep") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "filter[decision]",
                format!("{other:?} is neither delete nor keep"),
            ));
        }
    };
    visible_job(&state, &p, &id).await?;
    let Some(header) = state.store().plan(&id).await.map_err(internal)? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "404.plan",
            "No plan",
            format!("job {id} has no plan (not a prune job, or not planned yet)"),
        ));
    };
    let from = (page - 1) * size;
    let (total, items) = match (keeps, header.kept_tags, header.kept_manifests) {
        (false, _, _) => {
            let items = state.store().plan_items(&id, from, size).await;
            (
                header.tags + header.manifests,
                PlanItems::Delete(items.map_err(internal)?),
            )
        }
        (true, Some(tags), Some(manifests)) => {
            let items = state.store().plan_keeps(&id, from, size).await;
            (tags + manifests, PlanItems::Keep(items.map_err(internal)?))
        }
        (true, _, _) => {
            return Err(ApiError::invalid(
                "filter[decision]",
                format!(
                    "job {id}'s plan lists only its deletions: a dry run's plan lists what \
                     it keeps"
                ),
            ));
        }
    };
    let plan = PlanPage {
        job_id: header.job_id,
        position: header.position,
        policy_id: header.policy_id,
        policy_version: header.policy_version,
        images: header.images,
        tags: header.tags,
        manifests: header.manifests,
        bytes: header.bytes,
        created_at: header.created_at,
        kept_tags: header.kept_tags,
        kept_manifests: header.kept_manifests,
        decision: if keeps { "keep" } else { "delete" },
        items,
    };
    Ok((
        StatusCode::OK,
        Json(json!({"data": plan, "meta": {"total": total}})),
    )
        .into_response())
}

#[utoipa::path(
    delete, path = "/v1/images/{id}", tag = "jobs", params(("id" = String, Path)),
    summary = "Delete an image with a job (images-manage)",
    responses((status = 401, description = "No valid token"), (status = 403, description = "The token lacks the capability"), (status = 200, description = "The delete job", body = Data<JobDescriptor>), (status = 404, description = "No such image")),
    security(("token" = []), ("bearer" = []))
)]
pub(crate) async fn delete_image(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers, Capability::ImagesManage).await?;
    let image = visible_image(&state, &p, &id).await?;
    let sub = Submission::delete(
        Mark::Image(image.id),
        &image.name,
        &image.project_id,
        p.actor(),
        idempotency_key(&headers)?,
    );
    accepted(&state, sub, StatusCode::OK).await
}

#[utoipa::path(
    post, path = "/v1/images/{id}/tasks", tag = "jobs", params(("id" = String, Path)),
    request_body = TaskRequest,
    summary = "Import into an image (images-import): {\"action\": \"import\", \"contents\": {\"source\": {\"registry\", \"repository\", \"tags\", \"credentials\": {\"set\"}}}}",
    responses((status = 401, description = "No valid token"), (status = 403, description = "The token lacks the capability"), (status = 200, description = "The import job", body = Data<JobDescriptor>), (status = 404, description = "No such image"), (status = 422, description = "A field is invalid; `source` names it")),
    security(("token" = []), ("bearer" = []))
)]
pub(crate) async fn image_task(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Body(req): Body<TaskRequest>,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers, Capability::ImagesImport).await?;
    if req.action != "import" {
        return Err(ApiError::invalid(
            "action",
            format!("unknown action `{}` (import)", req.action),
        ));
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Contents {
        source: Source,
    }
    let c: Contents = serde_json::from_value(req.contents)
        .map_err(|e| ApiError::invalid("contents", format!("contents: {e}")))?;
    c.source.check().map_err(ServiceError::Domain)?;
    let image = visible_image(&state, &p, &id).await?;
    let caption = format!(
        "import {}/{} into {}",
        c.source.registry.trim_end_matches('/'),
        c.source.repository,
        image.name
    );
    let input = ImportInput {
        image_id: image.id,
        source: c.source,
    };
    let sub = Submission {
        kind: JobKind::Import,
        caption,
        input: serde_json::to_value(&input).map_err(internal)?,
        creator: Some(p.actor()),
        idempotency_key: idempotency_key(&headers)?,
        marks: None,
        project_id: Some(image.project_id),
    };
    accepted(&state, sub, StatusCode::OK).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateImage {
    /// The image's name in its namespace (an OCI repository path).
    name: String,
    namespace_id: String,
    /// Where to import it from: `{"registry", "repository", "tags", "credentials": {"set"}}`,
    /// the set one the workers have configured for that registry's host.
    #[schema(value_type = Object)]
    source: Source,
}

/// An image created for an import, with the import job started for it.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedImage {
    id: String,
    name: String,
    namespace_id: String,
    status: String,
    size: i64,
    created_at: String,
    import_job_id: String,
}

#[utoipa::path(
    post, path = "/v1/images", tag = "jobs", request_body = CreateImage,
    summary = "Create an image and import it from a registry (images-import)",
    responses((status = 401, description = "No valid token"), (status = 403, description = "The token lacks the capability"), (status = 201, description = "The image, with its import job", body = Data<CreatedImage>), (status = 404, description = "No such namespace"), (status = 409, description = "The namespace has an image of that name"), (status = 422, description = "A field is invalid; `source` names it")),
    security(("token" = []), ("bearer" = []))
)]
pub(crate) async fn create_image(
    State(state): State<AppState>,
    headers: HeaderMap,
    Body(req): Body<CreateImage>,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers, Capability::ImagesImport).await?;
    req.source.check().map_err(ServiceError::Domain)?;
    crate::domain::validate::image_name(&req.name).map_err(ServiceError::Domain)?;
    let key = idempotency_key(&headers)?;
    let namespace = visible_namespace(&state, &p, &req.namespace_id).await?;
    let image_id = uuid::Uuid::now_v7().to_string();
    let meta = Metadata {
        actor: Some(p.actor()),
        ..Metadata::default()
    };
    let create = ImageCommand::Create {
        namespace_id: req.namespace_id.clone(),
        name: req.name.clone(),
        visibility: None,
    };
    state.registry.image(&image_id, create, &meta).await?;
    let caption = format!(
        "import {}/{} into {}",
        req.source.registry.trim_end_matches('/'),
        req.source.repository,
        req.name
    );
    let input = ImportInput {
        image_id: image_id.clone(),
        source: req.source,
    };
    let sub = Submission {
        kind: JobKind::Import,
        caption,
        input: serde_json::to_value(&input).map_err(internal)?,
        creator: Some(p.actor()),
        idempotency_key: key,
        marks: None,
        project_id: Some(namespace.project_id),
    };
    let job = submit(&state.registry, state.dispatcher.as_ref(), sub).await?;
    let image = state
        .store()
        .image(&image_id)
        .await
        .map_err(internal)?
        .ok_or_else(|| internal("the image just created is missing"))?;
    Ok(data(
        StatusCode::CREATED,
        CreatedImage {
            id: image.id,
            name: image.name,
            namespace_id: image.namespace_id,
            status: image.status,
            size: image.size,
            created_at: image.created_at,
            import_job_id: job.id,
        },
    ))
}

/// An image's latest import, as lines of text.
#[derive(Debug, Serialize, ToSchema)]
pub struct BuildLog {
    /// The import job the log is of.
    job_id: String,
    /// One line per step: the time, then what happened.
    log: String,
}

#[utoipa::path(
    get, path = "/v1/images/{id}/build-log", tag = "jobs", params(("id" = String, Path)),
    summary = "The log of the image's latest import (images-view)",
    responses((status = 401, description = "No valid token"), (status = 403, description = "The token lacks the capability"), (status = 200, description = "The log", body = Data<BuildLog>), (status = 404, description = "No such image, or never imported")),
    security(("token" = []), ("bearer" = []))
)]
pub(crate) async fn build_log(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    use crate::domain::DomainEvent as E;
    use crate::store::EventStore;
    let p = principal(&state, &headers, Capability::ImagesView).await?;
    visible_image(&state, &p, &id).await?;
    let Some(job_id) = state.store().last_import_job(&id).await.map_err(internal)? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "404.build-log",
            "Not found",
            format!("image {id} was never imported"),
        ));
    };
    let events = state
        .store()
        .read_stream(&crate::domain::streams::job(&job_id))
        .await
        .map_err(internal)?;
    let mut log = String::new();
    for e in events {
        let line = match &e.event {
            E::JobAccepted(a) => format!("accepted: {}", a.caption),
            E::JobStarted(s) => format!("attempt {} started", s.attempt),
            E::JobProgressed(p) => format!("{}/{}: {}", p.done, p.total, p.step),
            E::JobRetried(r) => format!(
                "attempt {} failed, retrying at {}: {}",
                r.attempt, r.retry_at, r.error
            ),
            E::JobFailed(f) => format!("attempt {} failed: {}", f.attempt, f.error),
            E::JobSucceeded(s) => format!("completed: {}", s.output),
            E::JobCancelRequested(_) => "cancel requested".to_owned(),
            E::JobCancelled(_) => "cancelled".to_owned(),
            _ => continue,
        };
        log.push_str(&format!("{} {line}\n", e.recorded_at));
    }
    Ok(data(StatusCode::OK, BuildLog { job_id, log }))
}
