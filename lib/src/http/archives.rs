//! Archive uploads (`POST /v1/images/{id}/archive`, `images-import`): an OCI image layout tar
//! or a `docker save` tar, streamed to a temporary file (at most the configured size), checked
//! whole, copied to the namespace's backend registry when it has one, and recorded into the
//! image in one append. The upload is imported inside the request: the answer says what was
//! recorded.

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use http_body_util::BodyExt;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use utoipa::ToSchema;

use super::AppState;
use super::cycle::{ApiError, Data, data, internal, principal, visible_image};
use crate::archive::{self, ArchiveError};
use crate::domain::token::Capability;
use crate::importer::{Copied, Failed, linked_backend, record_all};
use crate::store::Metadata;

pub fn router() -> Router<AppState> {
    Router::new().route(
        "/v1/images/{id}/archive",
        post(upload_archive).layer(DefaultBodyLimit::disable()),
    )
}

/// What an archive upload recorded.
#[derive(Debug, Serialize, ToSchema)]
pub struct ArchiveImported {
    image_id: String,
    /// Manifests in the archive (an index's children included).
    manifests: usize,
    /// Of those, the ones not recorded before.
    manifests_recorded: usize,
    /// Tags the archive names, now pointing at their manifests.
    tags: Vec<String>,
    /// What was copied to the namespace's backend registry, when it has one.
    #[schema(value_type = Option<Object>)]
    backend: Option<Copied>,
}

#[utoipa::path(
    post, path = "/v1/images/{id}/archive", tag = "jobs", params(("id" = String, Path)),
    request_body(content = Vec<u8>, content_type = "application/x-tar", description = "An OCI image layout or a `docker save` tar"),
    summary = "Import an image archive into the image (images-import)",
    responses((status = 401, description = "No valid token"), (status = 403, description = "The token lacks the capability"), (status = 200, description = "What was recorded", body = Data<ArchiveImported>), (status = 404, description = "No such image"), (status = 413, description = "Larger than the configured maximum"), (status = 422, description = "Not a valid archive; the message names the file or reference"), (status = 502, description = "The backend registry refused the copy"), (status = 503, description = "The database or the backend is unavailable; try again")),
    security(("token" = []), ("bearer" = []))
)]
pub(crate) async fn upload_archive(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers, Capability::ImagesImport).await?;
    let image = visible_image(&state, &p, &id).await?;
    let max = state.api.archive_max_bytes;
    let spool = spool(body, max).await?;
    let path = spool.path().to_owned();
    let loaded = tokio::task::spawn_blocking(move || archive::load(&path))
        .await
        .map_err(internal)?
        .map_err(|e| {
            let message = match e {
                ArchiveError::Tar(m) => format!("not a readable tar archive: {m}"),
                ArchiveError::Invalid(m) => m,
            };
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "422.archive",
                "Invalid archive",
                message,
            )
        })?;
    let manifests = loaded.images.iter().map(|(v, _)| v.manifests.len()).sum();
    let tags: Vec<String> = loaded
        .images
        .iter()
        .filter_map(|(_, t)| t.clone())
        .collect();

    // Copied before it is recorded: what the metadata lists, the backend serves.
    let linked = linked_backend(&state.registry, &image.namespace_id, 4)
        .await
        .map_err(|e| match e {
            Failed::Transient(m) => unavailable(m),
            Failed::Permanent(m) => backend_refused(m),
        })?;
    let backend = match &linked {
        Some(b) => {
            let copied = archive::push(&loaded, &b.client, &b.repository(&image.name))
                .await
                .map_err(|e| match e.is_transient() {
                    true => unavailable(format!("the backend registry: {e}")),
                    false => backend_refused(e.to_string()),
                })?;
            Some(copied)
        }
        None => None,
    };
    let meta = Metadata {
        actor: Some(p.actor()),
        ..Metadata::default()
    };
    let recorded = record_all(&state.registry, loaded.images, None, &id, &meta)
        .await
        .map_err(|e| match e {
            Failed::Permanent(m) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "422.archive",
                "Invalid archive",
                m,
            ),
            Failed::Transient(m) => unavailable(m),
        })?;
    drop(spool);
    Ok(data(
        StatusCode::OK,
        ArchiveImported {
            image_id: id,
            manifests,
            manifests_recorded: recorded,
            tags,
            backend,
        },
    ))
}

fn unavailable(message: String) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "503.unavailable",
        "Unavailable",
        message,
    )
}

fn backend_refused(message: String) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "502.backend",
        "Backend registry refused",
        message,
    )
}

/// Writes the request body to a temporary file (removed when dropped), refusing it as soon as
/// it passes `max` bytes.
async fn spool(body: axum::body::Body, max: u64) -> Result<tempfile::NamedTempFile, ApiError> {
    let file = tempfile::Builder::new()
        .prefix("layerline-archive-")
        .suffix(".tar")
        .tempfile()
        .map_err(internal)?;
    let reopened = file.reopen().map_err(internal)?;
    let mut writer = tokio::io::BufWriter::new(tokio::fs::File::from_std(reopened));
    let mut body = body;
    let mut written: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "400.body",
                "Bad request",
                format!("reading the upload: {e}"),
            )
        })?;
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        written += chunk.len() as u64;
        if written > max {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "413.archive",
                "Too large",
                format!("archives are limited to {max} bytes"),
            ));
        }
        writer.write_all(&chunk).await.map_err(internal)?;
    }
    writer.flush().await.map_err(internal)?;
    Ok(file)
}
