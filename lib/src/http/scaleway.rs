//! Scaleway Container Registry v1 (`/registry/v1/regions/{region}/…`): namespaces, images and
//! tags, in Scaleway's shapes, error families and pagination. Handlers are thin: check the
//! token, call the registry or a read model, translate.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::AppState;
use super::auth::{AuthError, Principal, authenticate};
use crate::domain::event::{NamespaceCreated, NamespaceUpdated};
use crate::domain::image::ImageCommand;
use crate::domain::namespace::NamespaceCommand;
use crate::domain::token::Capability;
use crate::domain::{DomainError, validate};
use crate::service::ServiceError;
use crate::store::rows::{NamespaceRow, TagRow};
use crate::store::{
    ImageQuery, ImageView, Metadata, NamespaceQuery, ReadModels, SortKey, StoreError, TagQuery,
};

const BASE: &str = "/registry/v1/regions/{region}";

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            &format!("{BASE}/namespaces"),
            get(list_namespaces).post(create_namespace),
        )
        .route(
            &format!("{BASE}/namespaces/{{namespace_id}}"),
            get(get_namespace)
                .patch(update_namespace)
                .delete(delete_namespace),
        )
        .route(&format!("{BASE}/images"), get(list_images))
        .route(
            &format!("{BASE}/images/{{image_id}}"),
            get(get_image).patch(update_image).delete(delete_image),
        )
        .route(&format!("{BASE}/images/{{image_id}}/tags"), get(list_tags))
        .route(
            &format!("{BASE}/tags/{{tag_id}}"),
            get(get_tag).delete(delete_tag),
        )
}

// ---------------------------------------------------------------------------------------
// Errors: Scaleway's families, decided in one place.

/// Every error this surface answers, each rendered in Scaleway's shape by `into_response`.
#[derive(Debug)]
pub enum ApiError {
    NotFound {
        resource: &'static str,
        id: String,
    },
    Invalid {
        argument: String,
        help: String,
    },
    Unauthorized,
    Forbidden {
        resource: &'static str,
        action: &'static str,
    },
    Conflict {
        resource: &'static str,
        message: String,
    },
    /// Routing and protocol errors (404 unknown route, 405, 413, 415).
    Route {
        status: StatusCode,
        kind: &'static str,
        message: String,
    },
    /// Anything else: logged with its cause, answered without it.
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            ApiError::NotFound { resource, id } => (
                StatusCode::NOT_FOUND,
                json!({"message": format!("{resource} not found"), "type": "not_found",
                       "resource": resource, "resource_id": id}),
            ),
            ApiError::Invalid { argument, help } => (
                StatusCode::BAD_REQUEST,
                json!({"message": format!("invalid argument(s): {argument}: {help}"),
                       "type": "invalid_arguments",
                       "details": [{"argument_name": argument, "reason": "constraint",
                                    "help_message": help}]}),
            ),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                json!({"message": AuthError::Unauthorized.to_string(), "type": "unauthorized"}),
            ),
            ApiError::Forbidden { resource, action } => (
                StatusCode::FORBIDDEN,
                json!({"message": "insufficient permissions", "type": "permissions_denied",
                       "details": [{"resource": resource, "action": action}]}),
            ),
            ApiError::Conflict { resource, message } => (
                StatusCode::CONFLICT,
                json!({"message": message, "type": "conflict", "resource": resource}),
            ),
            ApiError::Route {
                status,
                kind,
                message,
            } => (status, json!({"message": message, "type": kind})),
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"message": "internal error", "type": "internal"}),
                )
            }
        };
        (status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        ApiError::Internal(err.to_string())
    }
}

impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> Self {
        match err {
            ServiceError::Domain(DomainError::Invalid { field, reason }) => ApiError::Invalid {
                argument: field.to_owned(),
                help: reason,
            },
            ServiceError::Domain(DomainError::NotFound { resource, id }) => {
                ApiError::NotFound { resource, id }
            }
            ServiceError::Domain(DomainError::AlreadyExists { resource, id }) => {
                ApiError::Conflict {
                    resource,
                    message: format!("{resource} {id} already exists"),
                }
            }
            ServiceError::Domain(DomainError::Conflict { resource, message }) => {
                ApiError::Conflict { resource, message }
            }
            ServiceError::Contention { .. } => ApiError::Route {
                status: StatusCode::SERVICE_UNAVAILABLE,
                kind: "transient_state",
                message: err.to_string(),
            },
            ServiceError::Store(e) => ApiError::Internal(e.to_string()),
        }
    }
}

/// Maps an authentication failure for an action on `resource`.
fn auth_error(err: AuthError, resource: &'static str, action: &'static str) -> ApiError {
    match err {
        AuthError::Unauthorized => ApiError::Unauthorized,
        AuthError::Forbidden(_) => ApiError::Forbidden { resource, action },
        AuthError::Store(e) => ApiError::Internal(e.to_string()),
    }
}

/// Authenticates and checks the capability for `action` on `resource`.
async fn allow(
    state: &AppState,
    headers: &HeaderMap,
    capability: Capability,
    resource: &'static str,
    action: &'static str,
) -> Result<Principal, ApiError> {
    let principal = authenticate(&state.store, headers)
        .await
        .map_err(|e| auth_error(e, resource, action))?;
    principal
        .require(capability)
        .map_err(|e| auth_error(e, resource, action))?;
    Ok(principal)
}

fn check_region(state: &AppState, region: &str) -> Result<(), ApiError> {
    if state.api.regions.iter().any(|r| r == region) {
        Ok(())
    } else {
        Err(ApiError::NotFound {
            resource: "region",
            id: region.to_owned(),
        })
    }
}

/// A JSON body: rejections become Scaleway errors (400 naming the field, 413, 415).
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Body(value)),
            Err(rejection) => Err(body_error(rejection)),
        }
    }
}

fn body_error(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::Route {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            kind: "unsupported_media_type",
            message: "the body must be JSON (Content-Type: application/json)".to_owned(),
        },
        JsonRejection::JsonDataError(e) => {
            let detail = e.body_text();
            ApiError::Invalid {
                argument: quoted_field(&detail).unwrap_or_else(|| "body".to_owned()),
                help: detail,
            }
        }
        JsonRejection::JsonSyntaxError(e) => ApiError::Invalid {
            argument: "body".to_owned(),
            help: e.body_text(),
        },
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::Route {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            kind: "request_too_large",
            message: format!("request bodies are limited to {} bytes", super::BODY_LIMIT),
        },
        other => ApiError::Route {
            status: other.status(),
            kind: "invalid_request",
            message: other.body_text(),
        },
    }
}

/// The field serde names in "unknown field `x`" / "missing field `x`" / "… at `x`".
fn quoted_field(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_owned())
}

// ---------------------------------------------------------------------------------------
// Pagination and ordering

/// Query parameters of lists, kept as text so bad values get Scaleway errors naming them.
#[derive(Debug, Default, Deserialize)]
pub struct ListParams {
    page: Option<String>,
    page_size: Option<String>,
    order_by: Option<String>,
    name: Option<String>,
    namespace_id: Option<String>,
    project_id: Option<String>,
    organization_id: Option<String>,
}

const MAX_PAGE_SIZE: i64 = 100;
const DEFAULT_PAGE_SIZE: i64 = 20;

/// (limit, offset) from `page` (≥ 1) and `page_size` (1..=100).
fn page(params: &ListParams) -> Result<(i64, i64), ApiError> {
    let number = |name: &str, value: &Option<String>, default: i64, max: i64| {
        let Some(text) = value else {
            return Ok(default);
        };
        match text.parse::<i64>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::Invalid {
                argument: name.to_owned(),
                help: format!("must be an integer from 1 to {max}"),
            }),
        }
    };
    let size = number(
        "page_size",
        &params.page_size,
        DEFAULT_PAGE_SIZE,
        MAX_PAGE_SIZE,
    )?;
    // Pages beyond this would skip more rows than any registry holds.
    let page = number("page", &params.page, 1, 10_000_000)?;
    Ok((size, (page - 1) * size))
}

/// `order_by` among `allowed` (`created_at_asc` when absent).
fn order(params: &ListParams, allowed: &[&str]) -> Result<Option<(SortKey, bool)>, ApiError> {
    let Some(value) = params.order_by.as_deref() else {
        return Ok(None);
    };
    if !allowed.contains(&value) {
        return Err(ApiError::Invalid {
            argument: "order_by".to_owned(),
            help: format!("must be one of {}", allowed.join(", ")),
        });
    }
    let sort = match value {
        "region" => (SortKey::Region, false),
        other => {
            let (key, dir) = other
                .rsplit_once('_')
                .expect("allowed values have a direction");
            let key = match key {
                "created_at" => SortKey::CreatedAt,
                "name" => SortKey::Name,
                "description" => SortKey::Description,
                _ => SortKey::Status,
            };
            (key, dir == "desc")
        }
    };
    Ok(Some(sort))
}

const NAMESPACE_ORDERS: [&str; 9] = [
    "created_at_asc",
    "created_at_desc",
    "name_asc",
    "name_desc",
    "description_asc",
    "description_desc",
    "status_asc",
    "status_desc",
    "region",
];
const IMAGE_ORDERS: [&str; 6] = [
    "created_at_asc",
    "created_at_desc",
    "name_asc",
    "name_desc",
    "status_asc",
    "status_desc",
];
const TAG_ORDERS: [&str; 4] = ["created_at_asc", "created_at_desc", "name_asc", "name_desc"];

/// Narrows a project filter to the token's project. `None` when the two exclude each other
/// (the list is then empty: other projects are invisible).
fn scoped(principal: &Principal, requested: Option<String>) -> Option<Option<String>> {
    match (&principal.project_id, requested) {
        (None, requested) => Some(requested),
        (Some(own), None) => Some(Some(own.clone())),
        (Some(own), Some(r)) if *own == r => Some(Some(r)),
        _ => None,
    }
}

fn meta(principal: &Principal) -> Metadata {
    Metadata {
        actor: Some(format!("token:{}", principal.token_id)),
        ..Metadata::default()
    }
}

// ---------------------------------------------------------------------------------------
// Shapes

fn namespace_json(state: &AppState, n: &NamespaceRow, status: &str) -> Value {
    json!({
        "id": n.id,
        "name": n.name,
        "description": n.description,
        "organization_id": n.organization_id,
        "project_id": n.project_id,
        "status": status,
        "status_message": Value::Null,
        "endpoint": format!("{}/{}", state.api.registry_endpoint, n.name),
        "is_public": n.is_public,
        "size": n.size,
        "image_count": n.image_count,
        "region": n.region,
        "created_at": n.created_at,
        "updated_at": n.updated_at,
    })
}

fn image_json(v: &ImageView, status: &str) -> Value {
    let i = &v.image;
    json!({
        "id": i.id,
        "name": i.name,
        "namespace_id": i.namespace_id,
        "status": status,
        "status_message": Value::Null,
        "visibility": i.visibility,
        "size": i.size,
        "created_at": i.created_at,
        "updated_at": i.updated_at,
        "tags": v.tags,
    })
}

fn tag_json(t: &TagRow, status: &str) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "image_id": t.image_id,
        "status": status,
        "digest": t.digest,
        "created_at": t.created_at,
        "updated_at": t.updated_at,
    })
}

// ---------------------------------------------------------------------------------------
// Namespaces

async fn visible_namespace(
    state: &AppState,
    principal: &Principal,
    region: &str,
    id: &str,
) -> Result<NamespaceRow, ApiError> {
    match state.store.namespace(id).await? {
        Some(n) if n.region == region && principal.sees(&n.project_id) => Ok(n),
        _ => Err(ApiError::NotFound {
            resource: "namespace",
            id: id.to_owned(),
        }),
    }
}

async fn list_namespaces(
    State(state): State<AppState>,
    Path(region): Path<String>,
    Query(params): Query<ListParams>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let principal = allow(
        &state,
        &headers,
        Capability::ImagesView,
        "namespace",
        "list",
    )
    .await?;
    check_region(&state, &region)?;
    let (limit, offset) = page(&params)?;
    let sort = order(&params, &NAMESPACE_ORDERS)?;
    let Some(project_id) = scoped(&principal, params.project_id.clone()) else {
        return Ok(Json(json!({"namespaces": [], "total_count": 0})));
    };
    let page = state
        .store
        .list_namespaces(&NamespaceQuery {
            region,
            name: params.name,
            project_id,
            organization_id: params.organization_id,
            sort,
            limit,
            offset,
        })
        .await?;
    let items: Vec<Value> = page
        .items
        .iter()
        .map(|n| namespace_json(&state, n, &n.status))
        .collect();
    Ok(Json(
        json!({"namespaces": items, "total_count": page.total_count}),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateNamespace {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    is_public: Option<bool>,
    #[serde(default)]
    project_id: Option<String>,
    #[serde(default)]
    organization_id: Option<String>,
}

async fn create_namespace(
    State(state): State<AppState>,
    Path(region): Path<String>,
    headers: HeaderMap,
    Body(body): Body<CreateNamespace>,
) -> Result<Json<Value>, ApiError> {
    let principal = allow(
        &state,
        &headers,
        Capability::ImagesManage,
        "namespace",
        "write",
    )
    .await?;
    check_region(&state, &region)?;
    // Scaleway: a project id, or (deprecated) an organization id whose default project is
    // the organization itself. A project-scoped token defaults to its project.
    let project_id = body
        .project_id
        .clone()
        .or_else(|| body.organization_id.clone())
        .or_else(|| principal.project_id.clone())
        .ok_or_else(|| ApiError::Invalid {
            argument: "project_id".to_owned(),
            help: "project_id (or organization_id) is required".to_owned(),
        })?;
    validate::project_id(&project_id).map_err(ServiceError::Domain)?;
    if !principal.sees(&project_id) {
        return Err(ApiError::Forbidden {
            resource: "namespace",
            action: "write",
        });
    }
    let organization_id = body.organization_id.unwrap_or_else(|| project_id.clone());
    validate::project_id(&organization_id).map_err(ServiceError::Domain)?;
    let id = uuid::Uuid::now_v7().to_string();
    state
        .registry
        .create_namespace(
            NamespaceCreated {
                namespace_id: id.clone(),
                name: body.name,
                region: region.clone(),
                description: body.description.unwrap_or_default(),
                is_public: body.is_public.unwrap_or(false),
                organization_id,
                project_id,
            },
            &meta(&principal),
        )
        .await?;
    let n = visible_namespace(&state, &principal, &region, &id).await?;
    Ok(Json(namespace_json(&state, &n, &n.status)))
}

async fn get_namespace(
    State(state): State<AppState>,
    Path((region, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let principal = allow(
        &state,
        &headers,
        Capability::ImagesView,
        "namespace",
        "read",
    )
    .await?;
    check_region(&state, &region)?;
    let n = visible_namespace(&state, &principal, &region, &id).await?;
    Ok(Json(namespace_json(&state, &n, &n.status)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateNamespace {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    is_public: Option<bool>,
}

async fn update_namespace(
    State(state): State<AppState>,
    Path((region, id)): Path<(String, String)>,
    headers: HeaderMap,
    Body(body): Body<UpdateNamespace>,
) -> Result<Json<Value>, ApiError> {
    let principal = allow(
        &state,
        &headers,
        Capability::ImagesManage,
        "namespace",
        "write",
    )
    .await?;
    check_region(&state, &region)?;
    visible_namespace(&state, &principal, &region, &id).await?;
    let cmd = NamespaceCommand::Update(NamespaceUpdated {
        description: body.description,
        is_public: body.is_public,
    });
    state
        .registry
        .namespace(&id, cmd, &meta(&principal))
        .await?;
    let n = visible_namespace(&state, &principal, &region, &id).await?;
    Ok(Json(namespace_json(&state, &n, &n.status)))
}

/// Deletes the namespace and its images and answers it as it was, in `deleting`. (Until the
/// job system lands, the deletion runs within the request.)
async fn delete_namespace(
    State(state): State<AppState>,
    Path((region, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let principal = allow(
        &state,
        &headers,
        Capability::ImagesManage,
        "namespace",
        "delete",
    )
    .await?;
    check_region(&state, &region)?;
    let n = visible_namespace(&state, &principal, &region, &id).await?;
    state
        .registry
        .delete_namespace(&id, &meta(&principal))
        .await?;
    Ok(Json(namespace_json(&state, &n, "deleting")))
}

// ---------------------------------------------------------------------------------------
// Images

async fn visible_image(
    state: &AppState,
    principal: &Principal,
    region: &str,
    id: &str,
) -> Result<ImageView, ApiError> {
    match state.store.image_view(id).await? {
        Some(v) if v.image.region == region && principal.sees(&v.image.project_id) => Ok(v),
        _ => Err(ApiError::NotFound {
            resource: "image",
            id: id.to_owned(),
        }),
    }
}

async fn list_images(
    State(state): State<AppState>,
    Path(region): Path<String>,
    Query(params): Query<ListParams>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let principal = allow(&state, &headers, Capability::ImagesView, "image", "list").await?;
    check_region(&state, &region)?;
    let (limit, offset) = page(&params)?;
    let sort = order(&params, &IMAGE_ORDERS)?;
    let Some(project_id) = scoped(&principal, params.project_id.clone()) else {
        return Ok(Json(json!({"images": [], "total_count": 0})));
    };
    let page = state
        .store
        .list_images(&ImageQuery {
            region,
            name: params.name,
            namespace_id: params.namespace_id,
            project_id,
            organization_id: params.organization_id,
            sort,
            limit,
            offset,
        })
        .await?;
    let items: Vec<Value> = page
        .items
        .iter()
        .map(|v| image_json(v, &v.image.status))
        .collect();
    Ok(Json(
        json!({"images": items, "total_count": page.total_count}),
    ))
}

async fn get_image(
    State(state): State<AppState>,
    Path((region, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let principal = allow(&state, &headers, Capability::ImagesView, "image", "read").await?;
    check_region(&state, &region)?;
    let v = visible_image(&state, &principal, &region, &id).await?;
    Ok(Json(image_json(&v, &v.image.status)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateImage {
    #[serde(default)]
    visibility: Option<String>,
}

async fn update_image(
    State(state): State<AppState>,
    Path((region, id)): Path<(String, String)>,
    headers: HeaderMap,
    Body(body): Body<UpdateImage>,
) -> Result<Json<Value>, ApiError> {
    let principal = allow(&state, &headers, Capability::ImagesManage, "image", "write").await?;
    check_region(&state, &region)?;
    visible_image(&state, &principal, &region, &id).await?;
    if let Some(visibility) = body.visibility {
        state
            .registry
            .image(
                &id,
                ImageCommand::SetVisibility(visibility),
                &meta(&principal),
            )
            .await?;
    }
    let v = visible_image(&state, &principal, &region, &id).await?;
    Ok(Json(image_json(&v, &v.image.status)))
}

async fn delete_image(
    State(state): State<AppState>,
    Path((region, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let principal = allow(
        &state,
        &headers,
        Capability::ImagesManage,
        "image",
        "delete",
    )
    .await?;
    check_region(&state, &region)?;
    let v = visible_image(&state, &principal, &region, &id).await?;
    state
        .registry
        .image(&id, ImageCommand::Delete, &meta(&principal))
        .await?;
    Ok(Json(image_json(&v, "deleting")))
}

// ---------------------------------------------------------------------------------------
// Tags

async fn list_tags(
    State(state): State<AppState>,
    Path((region, image_id)): Path<(String, String)>,
    Query(params): Query<ListParams>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let principal = allow(&state, &headers, Capability::ImagesView, "tag", "list").await?;
    check_region(&state, &region)?;
    let (limit, offset) = page(&params)?;
    let sort = order(&params, &TAG_ORDERS)?;
    visible_image(&state, &principal, &region, &image_id).await?;
    let page = state
        .store
        .list_tags(&TagQuery {
            image_id,
            name: params.name,
            sort,
            limit,
            offset,
        })
        .await?;
    let items: Vec<Value> = page.items.iter().map(|t| tag_json(t, "ready")).collect();
    Ok(Json(
        json!({"tags": items, "total_count": page.total_count}),
    ))
}

async fn visible_tag(
    state: &AppState,
    principal: &Principal,
    region: &str,
    id: &str,
) -> Result<TagRow, ApiError> {
    let not_found = || ApiError::NotFound {
        resource: "tag",
        id: id.to_owned(),
    };
    let tag = state.store.tag(id).await?.ok_or_else(not_found)?;
    visible_image(state, principal, region, &tag.image_id)
        .await
        .map_err(|_| not_found())?;
    Ok(tag)
}

async fn get_tag(
    State(state): State<AppState>,
    Path((region, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let principal = allow(&state, &headers, Capability::ImagesView, "tag", "read").await?;
    check_region(&state, &region)?;
    let tag = visible_tag(&state, &principal, &region, &id).await?;
    Ok(Json(tag_json(&tag, "ready")))
}

#[derive(Debug, Default, Deserialize)]
struct DeleteTagParams {
    force: Option<String>,
}

async fn delete_tag(
    State(state): State<AppState>,
    Path((region, id)): Path<(String, String)>,
    Query(params): Query<DeleteTagParams>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let principal = allow(&state, &headers, Capability::ImagesManage, "tag", "delete").await?;
    check_region(&state, &region)?;
    // Official clients send booleans as `true`/`false` or Python's `True`/`False`.
    let force = match params.force.as_deref() {
        None => false,
        Some(v) if v.eq_ignore_ascii_case("true") => true,
        Some(v) if v.eq_ignore_ascii_case("false") => false,
        Some(_) => {
            return Err(ApiError::Invalid {
                argument: "force".to_owned(),
                help: "must be true or false".to_owned(),
            });
        }
    };
    let tag = visible_tag(&state, &principal, &region, &id).await?;
    let cmd = ImageCommand::DeleteTag {
        name: tag.name.clone(),
        force,
    };
    state
        .registry
        .image(&tag.image_id, cmd, &meta(&principal))
        .await?;
    Ok(Json(tag_json(&tag, "deleting")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_field_names_are_found_in_messages() {
        assert_eq!(
            quoted_field("unknown field `colour`, expected one of `a`").as_deref(),
            Some("colour")
        );
        assert_eq!(quoted_field("no field here"), None);
    }

    #[test]
    fn pages_are_bounded() {
        let params = |page: &str, size: &str| ListParams {
            page: Some(page.into()),
            page_size: Some(size.into()),
            ..ListParams::default()
        };
        assert_eq!(page(&params("1", "100")).unwrap(), (100, 0));
        assert_eq!(page(&params("3", "10")).unwrap(), (10, 20));
        for (p, s) in [
            ("0", "10"),
            ("1", "0"),
            ("1", "101"),
            ("x", "1"),
            ("-1", "5"),
        ] {
            assert!(page(&params(p, s)).is_err(), "{p} {s}");
        }
    }
}
