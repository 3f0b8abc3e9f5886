//! Yandex/Nebius-style manifest listing (`/container-registry/v1/images`): one entry per
//! manifest with its blobs and tags, int64 values as JSON strings, lowerCamelCase keys,
//! keyset pages behind an opaque `pageToken`, gRPC-style error bodies.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;
use utoipa::{IntoParams, ToSchema};

use super::auth::{AuthError, authenticate};
use super::{AppState, Params};
use crate::domain::token::Capability;
use crate::store::{CursorError, ManifestKey, ManifestQuery, ManifestView, ReadModels, StoreError};

pub const PREFIX: &str = "/container-registry/v1";

pub fn router() -> Router<AppState> {
    Router::new()
        .route(&format!("{PREFIX}/images"), get(list_images))
        .route(&format!("{PREFIX}/images/{{id}}"), get(get_image))
}

/// Errors as gRPC statuses: `{"code": N, "message": "…", "details": []}`.
#[derive(Debug)]
pub enum ApiError {
    /// INVALID_ARGUMENT (3), HTTP 400.
    Invalid(String),
    /// NOT_FOUND (5), HTTP 404.
    NotFound(String),
    /// UNAUTHENTICATED (16), HTTP 401.
    Unauthenticated,
    /// PERMISSION_DENIED (7), HTTP 403.
    PermissionDenied(String),
    /// Any other status with its gRPC code.
    Status {
        status: StatusCode,
        code: u16,
        message: String,
    },
    /// INTERNAL (13), HTTP 500; the cause is logged, not shown.
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            ApiError::Invalid(m) => (StatusCode::BAD_REQUEST, 3, m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, 5, m),
            ApiError::Unauthenticated => (
                StatusCode::UNAUTHORIZED,
                16,
                AuthError::Unauthorized.to_string(),
            ),
            ApiError::PermissionDenied(m) => (StatusCode::FORBIDDEN, 7, m),
            ApiError::Status {
                status,
                code,
                message,
            } => (status, code, message),
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    13,
                    "internal error".to_owned(),
                )
            }
        };
        let body = StatusBody {
            code,
            message: crate::domain::validate::clip_to(
                &message,
                crate::domain::validate::MESSAGE_MAX,
            )
            .into_owned(),
            details: Vec::new(),
        };
        (status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        ApiError::Internal(err.to_string())
    }
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::Unauthorized => ApiError::Unauthenticated,
            AuthError::Forbidden(_) => ApiError::PermissionDenied(err.to_string()),
            AuthError::Store(e) => ApiError::Internal(e.to_string()),
        }
    }
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    registry_id: Option<String>,
    repository_name: Option<String>,
    folder_id: Option<String>,
    page_size: Option<String>,
    page_token: Option<String>,
    filter: Option<String>,
    order_by: Option<String>,
}

const DEFAULT_PAGE_SIZE: i64 = 100;
const MAX_PAGE_SIZE: i64 = 1000;

/// `namespace/image` → its two parts.
fn repository(name: &str) -> Result<(String, String), ApiError> {
    match name.split_once('/') {
        Some((ns, image)) if !ns.is_empty() && !image.is_empty() => {
            Ok((ns.to_owned(), image.to_owned()))
        }
        _ => Err(ApiError::Invalid(format!(
            "repository name `{name}` must be `<namespace>/<image>`"
        ))),
    }
}

/// The filter language we accept: `name="<namespace>/<image>"`.
fn parse_filter(filter: &str) -> Result<(String, String), ApiError> {
    let value = filter
        .trim()
        .strip_prefix("name")
        .map(str::trim_start)
        .and_then(|rest| rest.strip_prefix('='))
        .map(str::trim)
        .and_then(|v| v.strip_prefix('"'))
        .and_then(|v| v.strip_suffix('"'))
        .ok_or_else(|| {
            ApiError::Invalid(format!(
                "unsupported filter `{filter}`: expected name=\"<namespace>/<image>\""
            ))
        })?;
    repository(value)
}

/// `orderBy`: comma-separated `name`, `digest` or `createdAt`, each optionally `asc`/`desc`.
fn parse_order(order_by: &str) -> Result<Vec<(ManifestKey, bool)>, ApiError> {
    let mut keys = Vec::new();
    for part in order_by.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let mut words = part.split_whitespace();
        let key = match words.next() {
            Some("name") => ManifestKey::Name,
            Some("digest") => ManifestKey::Digest,
            Some("createdAt") => ManifestKey::CreatedAt,
            _ => {
                return Err(ApiError::Invalid(format!(
                    "cannot order by `{part}`: use name, digest or createdAt"
                )));
            }
        };
        let desc = match words.next() {
            None | Some("asc") => false,
            Some("desc") => true,
            Some(other) => {
                return Err(ApiError::Invalid(format!("unknown direction `{other}`")));
            }
        };
        if words.next().is_some() || keys.iter().any(|(k, _)| *k == key) {
            return Err(ApiError::Invalid(format!("bad orderBy `{order_by}`")));
        }
        keys.push((key, desc));
    }
    Ok(keys)
}

/// Bytes of the page token's tag kept (96 bits).
const TAG_BYTES: usize = 12;

/// The HMAC of a page position within its listing (filters, project, order), keyed by the
/// server's own page-token key: a client can neither make a token nor move one to another
/// listing or position.
fn token_mac(key: &[u8], query: &ManifestQuery, seq: i64) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    let text = format!(
        "{seq}|{:?}|{:?}|{:?}|{:?}",
        query.namespace_id, query.project_id, query.repository, query.order
    );
    mac.update(text.as_bytes());
    mac
}

/// A page token: the last row's `seq` and its tag (see [`token_mac`]).
fn page_token(key: &[u8], query: &ManifestQuery, seq: i64) -> String {
    let tag = token_mac(key, query, seq).finalize().into_bytes();
    format!("{seq}.{}", crate::domain::token::to_hex(&tag[..TAG_BYTES]))
}

/// The position a token this listing issued points at; any other token is refused.
fn parse_page_token(key: &[u8], query: &ManifestQuery, token: &str) -> Result<i64, ApiError> {
    let bad = || ApiError::Invalid("pageToken is not a token this listing issued".to_owned());
    if token.len() > 100 {
        return Err(bad());
    }
    let (seq, hex) = token.split_once('.').ok_or_else(bad)?;
    let seq: i64 = seq.parse().map_err(|_| bad())?;
    let tag = crate::domain::token::from_hex(hex)
        .filter(|t| t.len() == TAG_BYTES)
        .ok_or_else(bad)?;
    token_mac(key, query, seq)
        .verify_truncated_left(&tag)
        .map_err(|_| bad())?;
    Ok(seq)
}

/// A blob (config or layer) of a listed manifest; sizes are int64 as strings.
#[derive(Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BlobBody {
    id: String,
    digest: String,
    size: String,
    urls: Vec<String>,
}

impl BlobBody {
    fn new(digest: &str, size: i64) -> Self {
        BlobBody {
            id: digest.to_owned(),
            digest: digest.to_owned(),
            size: size.to_string(),
            urls: Vec::new(),
        }
    }
}

/// One manifest, as the Yandex/Nebius image list shows it.
#[derive(Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageBody {
    /// Stable for the life of the manifest.
    id: String,
    /// The repository: `<namespace>/<image>`.
    name: String,
    digest: String,
    /// Bytes of the manifest's distinct blobs, as a string.
    compressed_size: String,
    config: Option<BlobBody>,
    layers: Vec<BlobBody>,
    tags: Vec<String>,
    created_at: String,
    /// Ours, beside the reference's fields: for an attachment (a signature, an SBOM, a
    /// referrers index), the manifest it belongs to; absent for any other manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    attached_to: Option<AttachedToBody>,
}

/// The manifest an attachment belongs to.
#[derive(Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttachedToBody {
    digest: String,
    /// `subject`, `cosign_tag` or `referrers_tag`: what makes it an attachment.
    by: String,
    /// The repository has no such manifest (prune's `untagged` rule deletes orphans).
    orphan: bool,
}

impl ImageBody {
    fn new(v: &ManifestView) -> Self {
        let m = &v.manifest;
        ImageBody {
            id: m.seq.to_string(),
            name: format!("{}/{}", v.namespace_name, v.image_name),
            digest: m.digest.clone(),
            compressed_size: m.blobs_size.to_string(),
            config: match (&m.config_digest, m.config_size) {
                (Some(d), Some(s)) => Some(BlobBody::new(d, s)),
                _ => None,
            },
            layers: v
                .layers
                .iter()
                .map(|l| BlobBody::new(&l.digest, l.size))
                .collect(),
            tags: v.tags.clone(),
            created_at: m.created_at.clone(),
            attached_to: v.attached_to.as_ref().map(|a| AttachedToBody {
                digest: a.digest.clone(),
                by: a.by.to_owned(),
                orphan: a.orphan,
            }),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageListBody {
    images: Vec<ImageBody>,
    /// Absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_page_token: Option<String>,
}

/// A gRPC status as JSON.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusBody {
    code: u16,
    message: String,
    details: Vec<Value>,
}

#[utoipa::path(
    get,
    path = "/container-registry/v1/images",
    tag = "yandex",
    summary = "List manifests, one entry each, in keyset pages (images-view)",
    params(ListParams),
    responses(
        (status = 200, description = "A page of manifests", body = ImageListBody),
        (status = 400, description = "INVALID_ARGUMENT", body = StatusBody),
        (status = 401, description = "UNAUTHENTICATED", body = StatusBody),
        (status = 403, description = "PERMISSION_DENIED", body = StatusBody)
    ),
    security(("token" = []))
)]
pub(crate) async fn list_images(
    State(state): State<AppState>,
    Params(params): Params<ListParams>,
    headers: HeaderMap,
) -> Result<Json<ImageListBody>, ApiError> {
    let principal = authenticate(state.store(), &headers).await?;
    principal.require(Capability::ImagesView)?;
    let limit = match params.page_size.as_deref() {
        None => DEFAULT_PAGE_SIZE,
        Some(text) => match text.parse::<i64>() {
            Ok(n) if (1..=MAX_PAGE_SIZE).contains(&n) => n,
            _ => {
                return Err(ApiError::Invalid(format!(
                    "pageSize must be an integer from 1 to {MAX_PAGE_SIZE}"
                )));
            }
        },
    };
    // As in the reference: a repository name wins over a registry id, which wins over a
    // folder id.
    let mut query = ManifestQuery {
        limit: limit + 1,
        ..ManifestQuery::default()
    };
    if let Some(name) = &params.repository_name {
        query.repository = Some(repository(name)?);
    } else if let Some(id) = &params.registry_id {
        query.namespace_id = Some(id.clone());
    } else if let Some(folder) = &params.folder_id {
        query.project_id = Some(folder.clone());
    }
    if let Some(filter) = params.filter.as_deref().filter(|f| !f.trim().is_empty()) {
        let named = parse_filter(filter)?;
        if query.repository.as_ref().is_some_and(|r| *r != named) {
            return Ok(Json(ImageListBody {
                images: Vec::new(),
                next_page_token: None,
            }));
        }
        query.repository = Some(named);
    }
    if let Some(own) = &principal.project_id {
        if query.project_id.as_ref().is_some_and(|p| p != own) {
            return Ok(Json(ImageListBody {
                images: Vec::new(),
                next_page_token: None,
            }));
        }
        query.project_id = Some(own.clone());
    }
    query.order = match params.order_by.as_deref() {
        Some(o) => parse_order(o)?,
        None => Vec::new(),
    };
    let key = state.page_key().await?;
    if let Some(token) = params.page_token.as_deref().filter(|t| !t.is_empty()) {
        query.after_seq = Some(parse_page_token(key, &query, token)?);
    }
    let mut rows = match state.store().list_manifests(&query).await? {
        Ok(rows) => rows,
        Err(CursorError::Gone) => {
            return Err(ApiError::Invalid(
                "the manifest this pageToken points at was deleted; list again from the first page"
                    .to_owned(),
            ));
        }
    };
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next_page_token = rows
        .last()
        .filter(|_| more)
        .map(|last| page_token(key, &query, last.manifest.seq));
    Ok(Json(ImageListBody {
        images: rows.iter().map(ImageBody::new).collect(),
        next_page_token,
    }))
}

#[utoipa::path(
    get,
    path = "/container-registry/v1/images/{id}",
    tag = "yandex",
    summary = "Get one manifest entry by id (images-view)",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "The manifest", body = ImageBody),
        (status = 401, description = "UNAUTHENTICATED", body = StatusBody),
        (status = 403, description = "PERMISSION_DENIED", body = StatusBody),
        (status = 404, description = "NOT_FOUND", body = StatusBody)
    ),
    security(("token" = []))
)]
pub(crate) async fn get_image(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<ImageBody>, ApiError> {
    let principal = authenticate(state.store(), &headers).await?;
    principal.require(Capability::ImagesView)?;
    let not_found = || ApiError::NotFound(format!("image {id} not found"));
    let seq: i64 = id.parse().map_err(|_| not_found())?;
    let view = state
        .store()
        .manifest_view(seq)
        .await?
        .ok_or_else(not_found)?;
    if !principal.sees(&view.project_id) {
        return Err(not_found());
    }
    Ok(Json(ImageBody::new(&view)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_and_orders_parse_or_say_why_not() {
        assert_eq!(
            parse_filter(r#"name="team/app""#).unwrap(),
            ("team".to_owned(), "app".to_owned())
        );
        assert!(parse_filter("digest=\"x\"").is_err());
        assert_eq!(
            parse_order("name desc, createdAt").unwrap(),
            vec![(ManifestKey::Name, true), (ManifestKey::CreatedAt, false)]
        );
        assert!(parse_order("size").is_err());
        assert!(parse_order("name sideways").is_err());
        assert!(parse_order("name, name").is_err());
    }

    #[test]
    fn page_tokens_belong_to_their_listing_and_their_server() {
        let key = b"the server's key";
        let q = ManifestQuery::default();
        let token = page_token(key, &q, 42);
        assert!(token.len() <= 100);
        assert_eq!(parse_page_token(key, &q, &token).unwrap(), 42);
        let other = ManifestQuery {
            order: vec![(ManifestKey::Digest, false)],
            ..ManifestQuery::default()
        };
        assert!(parse_page_token(key, &other, &token).is_err());
        assert!(parse_page_token(key, &q, "garbage").is_err());
        // Another position with the same tag, or the same token under another key.
        let (_, tag) = token.split_once('.').unwrap();
        assert!(parse_page_token(key, &q, &format!("41.{tag}")).is_err());
        assert!(parse_page_token(b"another key", &q, &token).is_err());
        // The unkeyed fingerprint of before is no longer a token.
        assert!(parse_page_token(key, &q, "42.0123456789ab").is_err());
    }
}
