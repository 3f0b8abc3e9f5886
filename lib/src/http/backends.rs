//! A namespace's backend registry (`/v1/namespaces/{namespace_id}/backend`), in the Cycle
//! surface's shapes. Imports into a linked namespace copy blobs and manifests there, and
//! prune runs delete manifests there. Reading needs `images-view`; linking and unlinking
//! `images-manage`. Credentials are only referenced: `{"set": "NAME"}` names a credential set
//! configured on the workers (`LAYERLINE_REGISTRY_<NAME>_HOST`, `_USERNAME`, `_PASSWORD`).

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::cycle::{ApiError, Body, Data, data, principal, visible_namespace};
use crate::domain::namespace::NamespaceCommand;
use crate::domain::source::NamespaceBackend;
use crate::domain::token::Capability;
use crate::store::Metadata;

pub fn router() -> Router<AppState> {
    Router::new().route(
        "/v1/namespaces/{namespace_id}/backend",
        get(get_backend).put(set_backend).delete(unlink_backend),
    )
}

/// A namespace's backend registry.
#[derive(Debug, Serialize, ToSchema)]
pub struct BackendView {
    namespace_id: String,
    /// `https://host[:port]` (or `http://` for a loopback registry).
    registry: String,
    /// Repository path the namespace's images go under: image `app` is `<prefix>/app`.
    prefix: String,
    /// `{"set": "NAME"}`, the credential set the backend is reached with, if any.
    #[schema(value_type = Option<Object>)]
    credentials: Option<serde_json::Value>,
}

impl BackendView {
    fn new(namespace_id: &str, b: NamespaceBackend) -> Self {
        BackendView {
            namespace_id: namespace_id.to_owned(),
            registry: b.registry,
            prefix: b.prefix,
            credentials: b
                .credentials
                .map(|c| serde_json::to_value(c).unwrap_or_default()),
        }
    }
}

fn unlinked(namespace_id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "404.backend",
        "Not found",
        format!("namespace {namespace_id} has no backend registry"),
    )
}

#[utoipa::path(
    get, path = "/v1/namespaces/{namespace_id}/backend", tag = "jobs",
    params(("namespace_id" = String, Path)),
    summary = "The namespace's backend registry (images-view)",
    responses((status = 401, description = "No valid token"), (status = 403, description = "The token lacks the capability"), (status = 200, description = "The backend", body = Data<BackendView>), (status = 404, description = "No such namespace, or it has no backend")),
    security(("token" = []), ("bearer" = []))
)]
pub(crate) async fn get_backend(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(namespace_id): Path<String>,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers, Capability::ImagesView).await?;
    visible_namespace(&state, &p, &namespace_id).await?;
    let namespace = state.registry.load_namespace(&namespace_id).await?;
    let backend = namespace.backend.ok_or_else(|| unlinked(&namespace_id))?;
    Ok(data(
        StatusCode::OK,
        BackendView::new(&namespace_id, backend),
    ))
}

#[utoipa::path(
    put, path = "/v1/namespaces/{namespace_id}/backend", tag = "jobs",
    params(("namespace_id" = String, Path)),
    request_body(content = Object, description = "`{registry, prefix, credentials?: {set}}`"),
    summary = "Link the namespace to a backend registry, or change it (images-manage)",
    responses((status = 401, description = "No valid token"), (status = 403, description = "The token lacks the capability"), (status = 200, description = "The backend", body = Data<BackendView>), (status = 404, description = "No such namespace"), (status = 422, description = "A field is invalid; `source` names it")),
    security(("token" = []), ("bearer" = []))
)]
pub(crate) async fn set_backend(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(namespace_id): Path<String>,
    Body(backend): Body<NamespaceBackend>,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers, Capability::ImagesManage).await?;
    visible_namespace(&state, &p, &namespace_id).await?;
    let meta = Metadata {
        actor: Some(p.actor()),
        ..Metadata::default()
    };
    state
        .registry
        .namespace(
            &namespace_id,
            NamespaceCommand::SetBackend(Some(backend.clone())),
            &meta,
        )
        .await?;
    Ok(data(
        StatusCode::OK,
        BackendView::new(&namespace_id, backend),
    ))
}

#[utoipa::path(
    delete, path = "/v1/namespaces/{namespace_id}/backend", tag = "jobs",
    params(("namespace_id" = String, Path)),
    summary = "Unlink the namespace from its backend registry (images-manage); nothing is deleted there",
    responses((status = 401, description = "No valid token"), (status = 403, description = "The token lacks the capability"), (status = 204, description = "Unlinked"), (status = 404, description = "No such namespace, or it has no backend")),
    security(("token" = []), ("bearer" = []))
)]
pub(crate) async fn unlink_backend(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(namespace_id): Path<String>,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers, Capability::ImagesManage).await?;
    visible_namespace(&state, &p, &namespace_id).await?;
    let events = state
        .registry
        .namespace(
            &namespace_id,
            NamespaceCommand::SetBackend(None),
            &Metadata {
                actor: Some(p.actor()),
                ..Metadata::default()
            },
        )
        .await?;
    if events.is_empty() {
        return Err(unlinked(&namespace_id));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
