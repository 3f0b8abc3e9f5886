//! Scaleway Container Registry v1 (`/registry/v1/regions/{region}/…`): namespaces, images and
//! tags, in Scaleway's shapes, error families and pagination. Handlers are thin: check the
//! token, call the registry or a read model, translate.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, IntoResponses, ToSchema};

use super::auth::{AuthError, Principal, authenticate};
use super::{AppState, Params};
use crate::domain::DomainError;
use crate::domain::event::{NamespaceCreated, NamespaceUpdated};
use crate::domain::image::ImageCommand;
use crate::domain::namespace::NamespaceCommand;
use crate::domain::token::Capability;
use crate::jobs::{Mark, Submission};
use crate::service::ServiceError;
use crate::store::rows::{ImageRow, NamespaceRow, TagRow};
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
        use crate::domain::validate::{MESSAGE_MAX, clip, clip_to};
        let body = |message: String, kind: &str| ErrorBody {
            message,
            kind: kind.to_owned(),
            resource: None,
            resource_id: None,
            details: None,
        };
        let detail = |pairs: &[(&str, &str)]| {
            let map: serde_json::Map<String, Value> = pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
                .collect();
            Some(vec![map])
        };
        let (status, body) = match self {
            ApiError::NotFound { resource, id } => (
                StatusCode::NOT_FOUND,
                ErrorBody {
                    resource: Some(resource.to_owned()),
                    resource_id: Some(clip(&id).into_owned()),
                    ..body(format!("{resource} not found"), "not_found")
                },
            ),
            ApiError::Invalid { argument, help } => (
                StatusCode::BAD_REQUEST,
                ErrorBody {
                    details: detail(&[
                        ("argument_name", &argument),
                        ("reason", "constraint"),
                        ("help_message", &help),
                    ]),
                    ..body(
                        format!("invalid argument(s): {argument}: {help}"),
                        "invalid_arguments",
                    )
                },
            ),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                body(AuthError::Unauthorized.to_string(), "unauthorized"),
            ),
            ApiError::Forbidden { resource, action } => (
                StatusCode::FORBIDDEN,
                ErrorBody {
                    details: detail(&[("resource", resource), ("action", action)]),
                    ..body("insufficient permissions".to_owned(), "permissions_denied")
                },
            ),
            ApiError::Conflict { resource, message } => (
                StatusCode::CONFLICT,
                ErrorBody {
                    resource: Some(resource.to_owned()),
                    ..body(message, "conflict")
                },
            ),
            ApiError::Route {
                status,
                kind,
                message,
            } => (status, body(message, kind)),
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    body("internal error".to_owned(), "internal"),
                )
            }
        };
        let body = ErrorBody {
            message: clip_to(&body.message, MESSAGE_MAX).into_owned(),
            ..body
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
    let principal = authenticate(state.store(), headers)
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

/// A JSON body: rejections become Scaleway errors (400 naming the field, 413, 415). The token
/// is checked first (401), so an anonymous request learns nothing from how its body would be
/// judged; the handler checks the capability.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        authenticate(state.store(), req.headers())
            .await
            .map_err(|e| auth_error(e, "body", "write"))?;
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
pub(super) fn quoted_field(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_owned())
}

// ---------------------------------------------------------------------------------------
// Pagination and ordering

/// Query parameters of lists, kept as text so bad values get Scaleway errors naming them.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
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

/// The request's `Idempotency-Key`: a repeated delete answers the same job.
fn key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    super::cycle::idempotency_key(headers).map_err(|_| ApiError::Invalid {
        argument: "Idempotency-Key".to_owned(),
        help: "Idempotency-Key must be 1 to 255 visible ASCII characters".to_owned(),
    })
}

fn meta(principal: &Principal) -> Metadata {
    Metadata {
        actor: Some(principal.actor()),
        ..Metadata::default()
    }
}

// ---------------------------------------------------------------------------------------
// Shapes

/// A namespace as Scaleway shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Namespace {
    id: String,
    name: String,
    description: String,
    organization_id: String,
    project_id: String,
    /// `unknown`, `ready`, `deleting`, `error` or `locked`.
    status: String,
    status_message: Option<String>,
    /// Where clients pull from: the registry endpoint, `/`, the namespace name.
    endpoint: String,
    is_public: bool,
    /// Sum of the sizes of the namespace's images, in bytes.
    size: i64,
    image_count: i64,
    region: String,
    created_at: String,
    updated_at: String,
}

impl Namespace {
    fn new(state: &AppState, n: &NamespaceRow, status: &str) -> Self {
        Namespace {
            id: n.id.clone(),
            name: n.name.clone(),
            description: n.description.clone(),
            organization_id: n.organization_id.clone(),
            project_id: n.project_id.clone(),
            status: status.to_owned(),
            status_message: None,
            endpoint: format!("{}/{}", state.api.registry_endpoint, n.name),
            is_public: n.is_public,
            size: n.size,
            image_count: n.image_count,
            region: n.region.clone(),
            created_at: n.created_at.clone(),
            updated_at: n.updated_at.clone(),
        }
    }
}

/// An image (repository) as Scaleway shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Image {
    id: String,
    name: String,
    namespace_id: String,
    status: String,
    status_message: Option<String>,
    /// `visibility_unknown`, `inherit`, `public` or `private`.
    visibility: String,
    /// Sum of the sizes of the distinct blobs of all its manifests, in bytes.
    size: i64,
    created_at: String,
    updated_at: String,
    /// Names of its tags.
    tags: Vec<String>,
}

impl Image {
    fn new(v: &ImageView, status: &str) -> Self {
        let i = &v.image;
        Image {
            id: i.id.clone(),
            name: i.name.clone(),
            namespace_id: i.namespace_id.clone(),
            status: status.to_owned(),
            status_message: None,
            visibility: i.visibility.clone(),
            size: i.size,
            created_at: i.created_at.clone(),
            updated_at: i.updated_at.clone(),
            tags: v.tags.clone(),
        }
    }
}

/// A tag as Scaleway shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Tag {
    id: String,
    name: String,
    image_id: String,
    status: String,
    /// The manifest digest the tag points at.
    digest: String,
    created_at: String,
    updated_at: String,
}

impl Tag {
    fn new(t: &TagRow, status: &str) -> Self {
        Tag {
            id: t.id.clone(),
            name: t.name.clone(),
            image_id: t.image_id.clone(),
            status: status.to_owned(),
            digest: t.digest.clone(),
            created_at: t.created_at.clone(),
            updated_at: t.updated_at.clone(),
        }
    }
}

/// The refusals every route of this surface may answer, for the OpenAPI description.
#[derive(IntoResponses)]
#[allow(dead_code)] // describes responses; never built
enum Refusals {
    /// Invalid arguments
    #[response(status = 400)]
    Invalid(ErrorBody),
    /// No valid token
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The token lacks the capability
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// Unknown region or resource
    #[response(status = 404)]
    NotFound(ErrorBody),
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NamespaceList {
    namespaces: Vec<Namespace>,
    total_count: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImageList {
    images: Vec<Image>,
    total_count: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TagList {
    tags: Vec<Tag>,
    total_count: i64,
}

/// Scaleway's error body. `type` names the family; the other fields depend on it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    message: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Vec<serde_json::Map<String, Value>>>,
}

// ---------------------------------------------------------------------------------------
// Namespaces

async fn visible_namespace(
    state: &AppState,
    principal: &Principal,
    region: &str,
    id: &str,
) -> Result<NamespaceRow, ApiError> {
    match state.store().namespace(id).await? {
        Some(n) if n.region == region && principal.sees(&n.project_id) => Ok(n),
        _ => Err(ApiError::NotFound {
            resource: "namespace",
            id: id.to_owned(),
        }),
    }
}

#[utoipa::path(
    get,
    path = "/registry/v1/regions/{region}/namespaces",
    tag = "scaleway",
    summary = "List namespaces (capability images-view)",
    params(("region" = String, Path), ListParams),
    responses(
        (status = 200, description = "A page of namespaces", body = NamespaceList),
        Refusals
    ),
    security(("token" = []))
)]
pub(crate) async fn list_namespaces(
    State(state): State<AppState>,
    Path(region): Path<String>,
    Params(params): Params<ListParams>,
    headers: HeaderMap,
) -> Result<Json<NamespaceList>, ApiError> {
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
        return Ok(Json(NamespaceList {
            namespaces: Vec::new(),
            total_count: 0,
        }));
    };
    let page = state
        .store()
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
    Ok(Json(NamespaceList {
        namespaces: page
            .items
            .iter()
            .map(|n| Namespace::new(&state, n, &n.status))
            .collect(),
        total_count: page.total_count,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNamespace {
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

#[utoipa::path(
    post,
    path = "/registry/v1/regions/{region}/namespaces",
    tag = "scaleway",
    summary = "Create a namespace (images-manage)",
    params(("region" = String, Path)), request_body = CreateNamespace,
    responses(
        (status = 200, description = "The namespace", body = Namespace),
        (status = 409, description = "Name taken in this region", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        Refusals
    ),
    security(("token" = []))
)]
pub(crate) async fn create_namespace(
    State(state): State<AppState>,
    Path(region): Path<String>,
    headers: HeaderMap,
    Body(body): Body<CreateNamespace>,
) -> Result<Json<Namespace>, ApiError> {
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
    if !principal.sees(&project_id) {
        return Err(ApiError::Forbidden {
            resource: "namespace",
            action: "write",
        });
    }
    let organization_id = body.organization_id.unwrap_or_else(|| project_id.clone());
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
    Ok(Json(Namespace::new(&state, &n, &n.status)))
}

#[utoipa::path(
    get,
    path = "/registry/v1/regions/{region}/namespaces/{namespace_id}",
    tag = "scaleway",
    summary = "Get a namespace (images-view)",
    params(("region" = String, Path), ("namespace_id" = String, Path)),
    responses(
        (status = 200, description = "The namespace", body = Namespace),
        Refusals
    ),
    security(("token" = []))
)]
pub(crate) async fn get_namespace(
    State(state): State<AppState>,
    Path((region, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Namespace>, ApiError> {
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
    Ok(Json(Namespace::new(&state, &n, &n.status)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateNamespace {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    is_public: Option<bool>,
}

#[utoipa::path(
    patch,
    path = "/registry/v1/regions/{region}/namespaces/{namespace_id}",
    tag = "scaleway",
    summary = "Update a namespace (images-manage)",
    params(("region" = String, Path), ("namespace_id" = String, Path)), request_body = UpdateNamespace,
    responses(
        (status = 200, description = "The namespace", body = Namespace),
        Refusals
    ),
    security(("token" = []))
)]
pub(crate) async fn update_namespace(
    State(state): State<AppState>,
    Path((region, id)): Path<(String, String)>,
    headers: HeaderMap,
    Body(body): Body<UpdateNamespace>,
) -> Result<Json<Namespace>, ApiError> {
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
    Ok(Json(Namespace::new(&state, &n, &n.status)))
}

#[utoipa::path(
    delete,
    path = "/registry/v1/regions/{region}/namespaces/{namespace_id}",
    tag = "scaleway",
    summary = "Delete a namespace and its images (images-manage)",
    params(("region" = String, Path), ("namespace_id" = String, Path)),
    responses(
        (status = 200, description = "The namespace, status deleting", body = Namespace),
        Refusals
    ),
    security(("token" = []))
)]
/// Accepts a job deleting the namespace and its images and answers the namespace in
/// `deleting`; it answers 404 once the job is done.
pub(crate) async fn delete_namespace(
    State(state): State<AppState>,
    Path((region, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Namespace>, ApiError> {
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
    let sub = Submission::delete(
        Mark::Namespace(id.clone()),
        &n.name,
        &n.project_id,
        principal.actor(),
        key(&headers)?,
    );
    crate::jobs::submit(&state.registry, state.dispatcher.as_ref(), sub).await?;
    Ok(Json(Namespace::new(&state, &n, "deleting")))
}

// ---------------------------------------------------------------------------------------
// Images

/// The image with its tag names, when the token may see it in this region (404 otherwise).
async fn visible_image(
    state: &AppState,
    principal: &Principal,
    region: &str,
    id: &str,
) -> Result<ImageView, ApiError> {
    match state.store().image_view(id).await? {
        Some(v) if is_visible(&v.image, principal, region) => Ok(v),
        _ => Err(image_not_found(id)),
    }
}

/// Succeeds when the image exists and the token may see it in this region; reads the image
/// row only (no tags), for handlers that answer something else.
async fn check_image_visible(
    state: &AppState,
    principal: &Principal,
    region: &str,
    id: &str,
) -> Result<(), ApiError> {
    match state.store().image(id).await? {
        Some(image) if is_visible(&image, principal, region) => Ok(()),
        _ => Err(image_not_found(id)),
    }
}

fn is_visible(image: &ImageRow, principal: &Principal, region: &str) -> bool {
    image.region == region && principal.sees(&image.project_id)
}

fn image_not_found(id: &str) -> ApiError {
    ApiError::NotFound {
        resource: "image",
        id: id.to_owned(),
    }
}

#[utoipa::path(
    get,
    path = "/registry/v1/regions/{region}/images",
    tag = "scaleway",
    summary = "List images (images-view)",
    params(("region" = String, Path), ListParams),
    responses(
        (status = 200, description = "A page of images", body = ImageList),
        Refusals
    ),
    security(("token" = []))
)]
pub(crate) async fn list_images(
    State(state): State<AppState>,
    Path(region): Path<String>,
    Params(params): Params<ListParams>,
    headers: HeaderMap,
) -> Result<Json<ImageList>, ApiError> {
    let principal = allow(&state, &headers, Capability::ImagesView, "image", "list").await?;
    check_region(&state, &region)?;
    let (limit, offset) = page(&params)?;
    let sort = order(&params, &IMAGE_ORDERS)?;
    let Some(project_id) = scoped(&principal, params.project_id.clone()) else {
        return Ok(Json(ImageList {
            images: Vec::new(),
            total_count: 0,
        }));
    };
    let page = state
        .store()
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
    Ok(Json(ImageList {
        images: page
            .items
            .iter()
            .map(|v| Image::new(v, &v.image.status))
            .collect(),
        total_count: page.total_count,
    }))
}

#[utoipa::path(
    get,
    path = "/registry/v1/regions/{region}/images/{image_id}",
    tag = "scaleway",
    summary = "Get an image (images-view)",
    params(("region" = String, Path), ("image_id" = String, Path)),
    responses(
        (status = 200, description = "The image", body = Image),
        Refusals
    ),
    security(("token" = []))
)]
pub(crate) async fn get_image(
    State(state): State<AppState>,
    Path((region, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Image>, ApiError> {
    let principal = allow(&state, &headers, Capability::ImagesView, "image", "read").await?;
    check_region(&state, &region)?;
    let v = visible_image(&state, &principal, &region, &id).await?;
    Ok(Json(Image::new(&v, &v.image.status)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateImage {
    #[serde(default)]
    visibility: Option<String>,
}

#[utoipa::path(
    patch,
    path = "/registry/v1/regions/{region}/images/{image_id}",
    tag = "scaleway",
    summary = "Update an image's visibility (images-manage)",
    params(("region" = String, Path), ("image_id" = String, Path)), request_body = UpdateImage,
    responses(
        (status = 200, description = "The image", body = Image),
        Refusals
    ),
    security(("token" = []))
)]
pub(crate) async fn update_image(
    State(state): State<AppState>,
    Path((region, id)): Path<(String, String)>,
    headers: HeaderMap,
    Body(body): Body<UpdateImage>,
) -> Result<Json<Image>, ApiError> {
    let principal = allow(&state, &headers, Capability::ImagesManage, "image", "write").await?;
    check_region(&state, &region)?;
    check_image_visible(&state, &principal, &region, &id).await?;
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
    Ok(Json(Image::new(&v, &v.image.status)))
}

#[utoipa::path(
    delete,
    path = "/registry/v1/regions/{region}/images/{image_id}",
    tag = "scaleway",
    summary = "Delete an image (images-manage)",
    params(("region" = String, Path), ("image_id" = String, Path)),
    responses(
        (status = 200, description = "The image, status deleting", body = Image),
        Refusals
    ),
    security(("token" = []))
)]
pub(crate) async fn delete_image(
    State(state): State<AppState>,
    Path((region, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Image>, ApiError> {
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
    let sub = Submission::delete(
        Mark::Image(id.clone()),
        &v.image.name,
        &v.image.project_id,
        principal.actor(),
        key(&headers)?,
    );
    crate::jobs::submit(&state.registry, state.dispatcher.as_ref(), sub).await?;
    Ok(Json(Image::new(&v, "deleting")))
}

// ---------------------------------------------------------------------------------------
// Tags

#[utoipa::path(
    get,
    path = "/registry/v1/regions/{region}/images/{image_id}/tags",
    tag = "scaleway",
    summary = "List an image's tags (images-view)",
    params(("region" = String, Path), ("image_id" = String, Path), ListParams),
    responses(
        (status = 200, description = "A page of tags", body = TagList),
        Refusals
    ),
    security(("token" = []))
)]
pub(crate) async fn list_tags(
    State(state): State<AppState>,
    Path((region, image_id)): Path<(String, String)>,
    Params(params): Params<ListParams>,
    headers: HeaderMap,
) -> Result<Json<TagList>, ApiError> {
    let principal = allow(&state, &headers, Capability::ImagesView, "tag", "list").await?;
    check_region(&state, &region)?;
    let (limit, offset) = page(&params)?;
    let sort = order(&params, &TAG_ORDERS)?;
    check_image_visible(&state, &principal, &region, &image_id).await?;
    let page = state
        .store()
        .list_tags(&TagQuery {
            image_id,
            name: params.name,
            sort,
            limit,
            offset,
        })
        .await?;
    Ok(Json(TagList {
        tags: page.items.iter().map(|t| Tag::new(t, "ready")).collect(),
        total_count: page.total_count,
    }))
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
    let tag = state.store().tag(id).await?.ok_or_else(not_found)?;
    match check_image_visible(state, principal, region, &tag.image_id).await {
        Ok(()) => Ok(tag),
        // The tag's image is invisible: so is the tag. Other failures stay what they are.
        Err(ApiError::NotFound { .. }) => Err(not_found()),
        Err(e) => Err(e),
    }
}

#[utoipa::path(
    get,
    path = "/registry/v1/regions/{region}/tags/{tag_id}",
    tag = "scaleway",
    summary = "Get a tag (images-view)",
    params(("region" = String, Path), ("tag_id" = String, Path)),
    responses(
        (status = 200, description = "The tag", body = Tag),
        Refusals
    ),
    security(("token" = []))
)]
pub(crate) async fn get_tag(
    State(state): State<AppState>,
    Path((region, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Tag>, ApiError> {
    let principal = allow(&state, &headers, Capability::ImagesView, "tag", "read").await?;
    check_region(&state, &region)?;
    let tag = visible_tag(&state, &principal, &region, &id).await?;
    Ok(Json(Tag::new(&tag, "ready")))
}

/// `force`: `true`/`false` (also `True`/`False`).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteTagParams {
    force: Option<String>,
}

#[utoipa::path(
    delete,
    path = "/registry/v1/regions/{region}/tags/{tag_id}",
    tag = "scaleway",
    summary = "Delete a tag; its manifest goes when no other tag points to it (images-manage)",
    params(("region" = String, Path), ("tag_id" = String, Path), DeleteTagParams),
    responses(
        (status = 200, description = "The tag, status deleting", body = Tag),
        (status = 409, description = "Another tag shares the digest and force is not set", body = ErrorBody),
        Refusals
    ),
    security(("token" = []))
)]
pub(crate) async fn delete_tag(
    State(state): State<AppState>,
    Path((region, id)): Path<(String, String)>,
    Params(params): Params<DeleteTagParams>,
    headers: HeaderMap,
) -> Result<Json<Tag>, ApiError> {
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
    Ok(Json(Tag::new(&tag, "deleting")))
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
