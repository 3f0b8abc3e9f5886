//! Prune policies (`/v1/prune-policies`), in the Cycle surface's shapes. Every route needs
//! `policies-manage`; a policy is visible to a token that sees its namespace's project.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::auth::Principal;
use super::cycle::{ApiError, Body, Data, data, internal, number, principal, visible_namespace};
use super::{AppState, Params};
use crate::domain::format_time;
use crate::domain::policy::{PolicyCommand, PolicySpec, PrunePolicy};
use crate::domain::schedule::Schedule;
use crate::domain::token::Capability;
use crate::store::rows::PolicyRow;
use crate::store::{Metadata, ReadModels};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/prune-policies", get(list_policies).post(create_policy))
        .route(
            "/v1/prune-policies/{id}",
            get(get_policy).put(update_policy).delete(delete_policy),
        )
}

/// A policy as the API shows it: its body's fields, its version, when it runs next and how
/// its last run went.
#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyView {
    id: String,
    /// Bumped by every change; each run records the version it used.
    version: i64,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    body: Value,
    /// The next scheduled instant (none when disabled or unscheduled).
    next_run_at: Option<String>,
    /// The newest run started for this policy: `{job_id, state, at}`.
    #[schema(value_type = Object)]
    last_run: Option<Value>,
    created_at: String,
    updated_at: String,
}

async fn view(state: &AppState, row: PolicyRow) -> Result<PolicyView, ApiError> {
    let body: Value = serde_json::from_str(&row.body).map_err(internal)?;
    let next_run_at = match (&row.schedule, row.enabled) {
        (Some(expr), true) => Schedule::parse(expr, &row.timezone)
            .ok()
            .and_then(|s| s.next_after(Utc::now()))
            .map(format_time),
        _ => None,
    };
    let last_run = match &row.last_run_job_id {
        Some(id) => state
            .store()
            .job(id)
            .await
            .map_err(internal)?
            .map(|j| json!({"job_id": j.id, "state": j.state, "at": j.created_at})),
        None => None,
    };
    Ok(PolicyView {
        id: row.id,
        version: row.version,
        body,
        next_run_at,
        last_run,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

fn missing(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "404.policy",
        "Not found",
        format!("no policy {id}"),
    )
}

/// Policy `id` when the caller may see it.
async fn visible(state: &AppState, p: &Principal, id: &str) -> Result<PolicyRow, ApiError> {
    let row = state
        .store()
        .policy(id)
        .await
        .map_err(internal)?
        .ok_or_else(|| missing(id))?;
    let namespace = state
        .store()
        .namespace(&row.namespace_id)
        .await
        .map_err(internal)?;
    match namespace {
        Some(n) if p.sees(&n.project_id) => Ok(row),
        _ => Err(missing(id)),
    }
}

/// Refuses a body whose namespace the caller cannot see (or that does not exist).
async fn check_namespace(
    state: &AppState,
    p: &Principal,
    body: &PolicySpec,
) -> Result<(), ApiError> {
    visible_namespace(state, p, &body.namespace_id)
        .await
        .map(drop)
}

fn meta(p: &Principal) -> Metadata {
    Metadata {
        actor: Some(p.actor()),
        ..Metadata::default()
    }
}

async fn stored(state: &AppState, id: &str) -> Result<Response, ApiError> {
    let row = state
        .store()
        .policy(id)
        .await
        .map_err(internal)?
        .ok_or_else(|| missing(id))?;
    Ok(data(StatusCode::OK, view(state, row).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PolicyListParams {
    #[serde(rename = "page[number]")]
    #[param(rename = "page[number]")]
    page_number: Option<String>,
    /// 1 to 100 (default 20).
    #[serde(rename = "page[size]")]
    #[param(rename = "page[size]")]
    page_size: Option<String>,
    /// Only this namespace's policies.
    #[serde(rename = "filter[namespace_id]")]
    #[param(rename = "filter[namespace_id]")]
    filter_namespace_id: Option<String>,
}

#[utoipa::path(
    get, path = "/v1/prune-policies", tag = "policies", params(PolicyListParams),
    summary = "List prune policies, oldest first (policies-manage)",
    responses((status = 401, description = "No valid token"), (status = 403, description = "The token lacks the capability"), (status = 200, description = "A page of policies, with meta.total", body = Data<Vec<PolicyView>>)),
    security(("token" = []), ("bearer" = []))
)]
pub(crate) async fn list_policies(
    State(state): State<AppState>,
    headers: HeaderMap,
    Params(q): Params<PolicyListParams>,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers, Capability::PoliciesManage).await?;
    let size = number("page[size]", q.page_size.as_deref(), 20, 100)?;
    let page = number("page[number]", q.page_number.as_deref(), 1, 1_000_000)?;
    let rows = state
        .store()
        .list_policies(
            p.project_id.as_deref(),
            q.filter_namespace_id.as_deref(),
            size,
            (page - 1) * size,
        )
        .await
        .map_err(internal)?;
    let mut views = Vec::with_capacity(rows.items.len());
    for row in rows.items {
        views.push(view(&state, row).await?);
    }
    let body = json!({"data": views, "meta": {"total": rows.total_count}});
    Ok((StatusCode::OK, Json(body)).into_response())
}

#[utoipa::path(
    post, path = "/v1/prune-policies", tag = "policies", request_body(content = Object, description = "A policy body: name, namespace_id, image_names, rules, schedule, timezone, enabled, max_deletions"),
    summary = "Create a prune policy (policies-manage)",
    responses((status = 401, description = "No valid token"), (status = 403, description = "The token lacks the capability"), (status = 201, description = "The policy, version 1", body = Data<PolicyView>), (status = 404, description = "No such namespace"), (status = 409, description = "The namespace has a policy of that name"), (status = 422, description = "A field is invalid; `source` names it")),
    security(("token" = []), ("bearer" = []))
)]
pub(crate) async fn create_policy(
    State(state): State<AppState>,
    headers: HeaderMap,
    Body(body): Body<PolicySpec>,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers, Capability::PoliciesManage).await?;
    check_namespace(&state, &p, &body).await?;
    let id = uuid::Uuid::now_v7().to_string();
    state
        .registry
        .execute::<PrunePolicy>(&id, PolicyCommand::Create(body), &meta(&p))
        .await?;
    let mut response = stored(&state, &id).await?;
    *response.status_mut() = StatusCode::CREATED;
    Ok(response)
}

#[utoipa::path(
    get, path = "/v1/prune-policies/{id}", tag = "policies", params(("id" = String, Path)),
    summary = "One prune policy (policies-manage)",
    responses((status = 401, description = "No valid token"), (status = 403, description = "The token lacks the capability"), (status = 200, description = "The policy", body = Data<PolicyView>), (status = 404, description = "No such policy")),
    security(("token" = []), ("bearer" = []))
)]
pub(crate) async fn get_policy(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers, Capability::PoliciesManage).await?;
    let row = visible(&state, &p, &id).await?;
    Ok(data(StatusCode::OK, view(&state, row).await?))
}

#[utoipa::path(
    put, path = "/v1/prune-policies/{id}", tag = "policies", params(("id" = String, Path)),
    request_body(content = Object, description = "The whole new body"),
    summary = "Replace a prune policy's body: a new version (policies-manage)",
    responses((status = 401, description = "No valid token"), (status = 403, description = "The token lacks the capability"), (status = 200, description = "The policy", body = Data<PolicyView>), (status = 404, description = "No such policy or namespace"), (status = 422, description = "A field is invalid; `source` names it")),
    security(("token" = []), ("bearer" = []))
)]
pub(crate) async fn update_policy(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Body(body): Body<PolicySpec>,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers, Capability::PoliciesManage).await?;
    visible(&state, &p, &id).await?;
    check_namespace(&state, &p, &body).await?;
    state
        .registry
        .execute::<PrunePolicy>(&id, PolicyCommand::Update(body), &meta(&p))
        .await?;
    stored(&state, &id).await
}

#[utoipa::path(
    delete, path = "/v1/prune-policies/{id}", tag = "policies", params(("id" = String, Path)),
    summary = "Delete a prune policy (policies-manage)",
    responses((status = 401, description = "No valid token"), (status = 403, description = "The token lacks the capability"), (status = 204, description = "Deleted"), (status = 404, description = "No such policy")),
    security(("token" = []), ("bearer" = []))
)]
pub(crate) async fn delete_policy(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers, Capability::PoliciesManage).await?;
    visible(&state, &p, &id).await?;
    state
        .registry
        .execute::<PrunePolicy>(&id, PolicyCommand::Delete, &meta(&p))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
