//! `POST /v1/hooks/registry`: CNCF distribution's notifications (`api-contract.md` §4). A
//! registry configured with this endpoint (and a token with `images-import` in an
//! `Authorization` header) reports pushes and deletes as they happen:
//!
//! * a manifest push is fetched back from the registry named in the endpoint's query (never
//!   from a URL in the payload), verified and recorded into the namespace's image named after
//!   the repository (created when missing), and the tag pushed when the event names one;
//! * a manifest delete deletes it (with its tags) from that image;
//! * anything else (blob pushes, pulls, mounts) is ignored.
//!
//! Registries redeliver: each event id is handled once. A failure worth retrying answers 503
//! (the registry sends the batch again; handled ids are skipped); a final one (a manifest that
//! fails verification) is reported in the answer and not retried.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use serde::Deserialize;
use serde_json::json;

use super::cycle::{ApiError, Data, data, internal, principal, visible_namespace};
use super::{AppState, Params};
use crate::domain::format_time;
use crate::domain::image::ImageCommand;
use crate::domain::source::Source;
use crate::domain::token::Capability;
use crate::importer::{
    BlobsDone, Failed, Linked, copy, fetch, image_for, linked_backend, record_all,
};
use crate::oci::{Client, Credentials, DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use crate::service::ServiceError;
use crate::store::Metadata;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/hooks/registry", post(registry_hook))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct HookParams {
    /// The namespace the registry's repositories are recorded in.
    namespace_id: String,
    /// The registry's base URL as this service reaches it (`https://…`, or `http://` for a
    /// loopback registry); manifests are fetched from there.
    registry: String,
}

#[derive(Deserialize)]
struct Envelope {
    events: Vec<Event>,
}

#[derive(Deserialize)]
struct Event {
    id: String,
    action: String,
    #[serde(default)]
    target: Target,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Target {
    media_type: Option<String>,
    digest: Option<String>,
    repository: Option<String>,
    tag: Option<String>,
}

/// What a delivery did.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct HookResult {
    /// Manifest pushes and deletes recorded.
    recorded: usize,
    /// Events of no interest (blob pushes, pulls, mounts) or about nothing we have.
    ignored: usize,
    /// Events handled before (redeliveries).
    duplicates: usize,
    /// Events refused for good: `{id, error}`.
    #[schema(value_type = Vec<Object>)]
    refused: Vec<serde_json::Value>,
}

/// Most events handled per delivery.
const MAX_EVENTS: usize = 1_000;

#[utoipa::path(
    post, path = "/v1/hooks/registry", tag = "jobs", params(HookParams),
    request_body(content = Object, description = "A CNCF distribution notification envelope: {\"events\": [...]}"),
    summary = "Registry notifications: pushes and deletes recorded as they happen (images-import)",
    responses((status = 401, description = "No valid token"), (status = 403, description = "The token lacks the capability"), (status = 200, description = "What was recorded, skipped and refused", body = Data<HookResult>), (status = 404, description = "No such namespace"), (status = 503, description = "Try again (the registry redelivers)")),
    security(("token" = []), ("bearer" = []))
)]
pub(crate) async fn registry_hook(
    State(state): State<AppState>,
    headers: HeaderMap,
    Params(q): Params<HookParams>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers, Capability::ImagesImport).await?;
    let check = Source {
        registry: q.registry.clone(),
        repository: "x".into(),
        tags: None,
        credentials: None,
    };
    check.check().map_err(ServiceError::Domain)?;
    visible_namespace(&state, &p, &q.namespace_id).await?;
    let envelope: Envelope = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "400.invalid-syntax",
            "Bad request body",
            format!("not a notification envelope: {e}"),
        )
    })?;
    if envelope.events.len() > MAX_EVENTS {
        return Err(ApiError::invalid(
            "events",
            format!("at most {MAX_EVENTS} events per delivery"),
        ));
    }
    let client = Client::new(&q.registry, Credentials::Anonymous, 4)
        .map_err(|e| ApiError::invalid("registry", e.to_string()))?;
    // A backend-linked namespace mirrors the notifying registry: pushes are copied there
    // before they are recorded, deletes follow.
    let backend = linked_backend(&state.registry, &q.namespace_id, 4)
        .await
        .map_err(|e| match e {
            Failed::Transient(m) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "503.not-ready",
                "Try again",
                m,
            ),
            Failed::Permanent(m) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "502.backend",
                "Backend registry unusable",
                m,
            ),
        })?
        .map(|b| (b, BlobsDone::default()));
    let meta = Metadata {
        actor: Some(p.actor()),
        ..Metadata::default()
    };
    let store = state.store();
    let (mut recorded, mut ignored, mut duplicates) = (0, 0, 0);
    let mut refused = Vec::new();
    for event in &envelope.events {
        if store.hook_event_seen(&event.id).await.map_err(internal)? {
            duplicates += 1;
            continue;
        }
        let manifest =
            event.target.media_type.as_deref().is_some_and(|t| {
                [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].contains(&t)
            });
        let outcome = match (
            event.action.as_str(),
            &event.target.repository,
            &event.target.digest,
        ) {
            ("push", Some(repo), Some(digest)) if manifest => {
                let image = image_for(&state.registry, &q.namespace_id, repo, &meta).await;
                match image {
                    Ok(image) => {
                        let tag = event.target.tag.as_deref();
                        push(
                            &state,
                            &client,
                            backend.as_ref(),
                            repo,
                            digest,
                            tag,
                            &image,
                            &meta,
                        )
                        .await
                    }
                    Err(e) => Err(e),
                }
            }
            ("delete", Some(repo), Some(digest)) => {
                let deleted = delete(&state, &q.namespace_id, repo, digest, &meta).await;
                match (&deleted, &backend) {
                    (Ok(_), Some((b, _))) => b
                        .client
                        .delete_manifest(&b.repository(repo), digest)
                        .await
                        .map_err(Failed::from)
                        .and(deleted),
                    _ => deleted,
                }
            }
            _ => Ok(false),
        };
        match outcome {
            Ok(true) => recorded += 1,
            Ok(false) => ignored += 1,
            Err(Failed::Transient(message)) => {
                tracing::warn!(event_id = %event.id, error = %message, "notification not handled; the registry will redeliver");
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "503.not-ready",
                    "Try again",
                    message,
                ));
            }
            Err(Failed::Permanent(message)) => {
                tracing::warn!(event_id = %event.id, error = %message, "notification refused");
                refused.push(json!({"id": event.id, "error": message}));
            }
        }
        let at = format_time(chrono::Utc::now());
        store
            .record_hook_event(&event.id, &at)
            .await
            .map_err(internal)?;
    }
    Ok(data(
        StatusCode::OK,
        HookResult {
            recorded,
            ignored,
            duplicates,
            refused,
        },
    ))
}

/// Records manifest `digest` of `repo` (and `tag`) into `image`, fetched and verified from
/// the notifying registry; copied first to the namespace's backend, when it has one.
#[allow(clippy::too_many_arguments)]
async fn push(
    state: &AppState,
    client: &Client,
    backend: Option<&(Linked, BlobsDone)>,
    repo: &str,
    digest: &str,
    tag: Option<&str>,
    image: &str,
    meta: &Metadata,
) -> Result<bool, Failed> {
    let verified = fetch(client, repo, digest).await?;
    if let Some((b, done)) = backend {
        copy(
            client,
            repo,
            &b.client,
            &b.repository(repo),
            &verified,
            tag,
            done,
        )
        .await?;
    }
    let batch = vec![(verified, tag.map(str::to_owned))];
    record_all(&state.registry, batch, image, meta).await?;
    Ok(true)
}

/// Deletes manifest `digest` (with its tags) from the namespace's image named `repo`; an image
/// or manifest we do not have is nothing to do.
async fn delete(
    state: &AppState,
    namespace_id: &str,
    repo: &str,
    digest: &str,
    meta: &Metadata,
) -> Result<bool, Failed> {
    let found = state
        .store()
        .image_by_name(namespace_id, repo)
        .await
        .map_err(|e| Failed::Transient(e.to_string()))?;
    let Some(image) = found else {
        return Ok(false);
    };
    let cmd = ImageCommand::DeleteManifest {
        digest: digest.to_owned(),
    };
    match state.registry.image(&image.id, cmd, meta).await {
        Ok(events) => Ok(!events.is_empty()),
        Err(ServiceError::Domain(_)) => Ok(false),
        Err(e) => Err(Failed::Transient(e.to_string())),
    }
}
