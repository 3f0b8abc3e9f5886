//! `POST /v1/hooks/registry`: CNCF distribution's notifications (`api-contract.md` §4). A
//! registry configured with this endpoint (and a token with `images-import` in an
//! `Authorization` header) reports pushes and deletes as they happen:
//!
//! An event is a claim, checked against the registry before anything is recorded:
//!
//! * a manifest push is fetched back from the registry named in the endpoint's query (never
//!   from a URL in the payload) and verified; when the event names a tag, the registry must
//!   resolve that tag to the pushed digest. Only then is it recorded into the namespace's
//!   image named after the repository (created when missing), with its tag;
//! * a manifest delete is applied only when the registry answers 404 for the manifest (it is
//!   really gone), and only for a token that may delete (`images-manage`);
//! * anything else (blob pushes, pulls, mounts) is ignored.
//!
//! Malformed repositories, digests, tags and ids are refused for good before any request.
//! Registries redeliver: each event id that was recorded is handled once. A failure worth
//! retrying answers 503 (the registry sends the batch again; handled ids are skipped); a
//! final one is reported in the answer and not retried. A refused or ignored event stores
//! nothing — no image, no event id — so one request stores at most [`MAX_EVENTS`] ids.

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
    /// When it happened at the registry (RFC 3339): a pushed tag's push time.
    #[serde(default)]
    timestamp: Option<String>,
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
pub const MAX_EVENTS: usize = 1_000;

/// Longest event id kept (CNCF distribution's are UUIDs).
const MAX_EVENT_ID: usize = 200;

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
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers, Capability::ImagesImport).await?;
    // After the token: an anonymous caller learns nothing of the body's fate.
    let body = body.map_err(|rejection| {
        let status = rejection.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "413.too-large"
        } else {
            "400.invalid-syntax"
        };
        ApiError::new(status, code, "Bad request body", rejection.body_text())
    })?;
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
        .and_then(Client::guarded)
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
        let outcome = handle(
            &state,
            &client,
            backend.as_ref(),
            &q.namespace_id,
            &p,
            event,
            &meta,
        )
        .await;
        let id = crate::domain::validate::clip(&event.id);
        match outcome {
            Ok(true) => {
                recorded += 1;
                let at = format_time(chrono::Utc::now());
                store
                    .record_hook_event(&event.id, &at)
                    .await
                    .map_err(internal)?;
            }
            Ok(false) => ignored += 1,
            Err(Failed::Transient(message)) => {
                // The detail (an address, a connection error) is for the log only.
                tracing::warn!(event_id = %id, error = %message, "notification not handled; the registry will redeliver");
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "503.not-ready",
                    "Try again",
                    format!(
                        "event {id} could not be checked against the registry now; redeliver it"
                    ),
                ));
            }
            Err(Failed::Permanent(message)) => {
                tracing::warn!(event_id = %id, error = %message, "notification refused");
                refused.push(json!({"id": id, "error": message}));
            }
        }
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

/// What one event does, once checked: `Ok(true)` when it was recorded, `Ok(false)` when it
/// is of no interest or changes nothing.
#[allow(clippy::too_many_arguments)]
async fn handle(
    state: &AppState,
    client: &Client,
    backend: Option<&(Linked, BlobsDone)>,
    namespace_id: &str,
    p: &crate::http::auth::Principal,
    event: &Event,
    meta: &Metadata,
) -> Result<bool, Failed> {
    let manifest = event
        .target
        .media_type
        .as_deref()
        .is_some_and(|t| [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].contains(&t));
    let push_event = event.action == "push" && manifest;
    let delete_event = event.action == "delete";
    if !push_event && !delete_event {
        return Ok(false);
    }
    let t = &event.target;
    let (Some(repo), Some(digest)) = (&t.repository, &t.digest) else {
        return Err(Failed::Permanent(
            "the event names no repository or no digest".to_owned(),
        ));
    };
    claimed(&event.id, repo, digest, t.tag.as_deref())?;
    if push_event {
        // The registry's own time of the push, when it is a sane one.
        let at = event
            .timestamp
            .as_deref()
            .and_then(|ts| crate::oci::creation_time(ts, chrono::Utc::now()));
        return push(
            state,
            client,
            backend,
            namespace_id,
            repo,
            digest,
            t.tag.as_deref(),
            at,
            meta,
        )
        .await;
    }
    if p.require(Capability::ImagesManage).is_err() {
        return Err(Failed::Permanent(
            "a delete needs a token with images-manage; this one may only record pushes".to_owned(),
        ));
    }
    // Only what the registry no longer has is deleted here.
    if client.resolve(repo, digest).await?.is_some() {
        return Err(Failed::Permanent(format!(
            "the registry still serves {repo}@{digest}; nothing was deleted"
        )));
    }
    let deleted = delete(state, namespace_id, repo, digest, meta).await;
    match (&deleted, backend) {
        (Ok(_), Some((b, _))) => b
            .client
            .delete_manifest(&b.repository(repo), digest)
            .await
            .map_err(Failed::from)
            .and(deleted),
        _ => deleted,
    }
}

/// Refuses, for good, an event whose id, repository, digest or tag is malformed (before any
/// request is made with them). The reason repeats at most the start of what was sent.
fn claimed(id: &str, repo: &str, digest: &str, tag: Option<&str>) -> Result<(), Failed> {
    use crate::domain::validate::{self, clip};
    let refuse = |what: String| Err(Failed::Permanent(what));
    if id.is_empty() || id.len() > MAX_EVENT_ID {
        return refuse(format!("an event id must be 1 to {MAX_EVENT_ID} bytes"));
    }
    if validate::image_name(repo).is_err() {
        return refuse(format!("`{}` is not an OCI repository name", clip(repo)));
    }
    if validate::digest("digest", digest).is_err() {
        return refuse(format!(
            "`{}` is not a sha256 or sha512 digest",
            clip(digest)
        ));
    }
    if let Some(tag) = tag
        && validate::tag_name(tag).is_err()
    {
        return refuse(format!("`{}` is not a tag name", clip(tag)));
    }
    Ok(())
}

/// Records manifest `digest` of `repo` (and `tag`) into the namespace's image named `repo`
/// (created when missing), fetched and verified from the notifying registry, and only when
/// the registry resolves `tag` to `digest`; copied first to the namespace's backend, when it
/// has one.
#[allow(clippy::too_many_arguments)]
async fn push(
    state: &AppState,
    client: &Client,
    backend: Option<&(Linked, BlobsDone)>,
    namespace_id: &str,
    repo: &str,
    digest: &str,
    tag: Option<&str>,
    pushed_at: Option<String>,
    meta: &Metadata,
) -> Result<bool, Failed> {
    let verified = fetch(client, repo, digest).await?;
    if let Some(tag) = tag {
        match client.resolve(repo, tag).await? {
            Some(at) if at == verified.digest => {}
            Some(at) => {
                return Err(Failed::Permanent(format!(
                    "tag {tag} of {repo} is at {at} in the registry, not at {digest}; not recorded"
                )));
            }
            None => {
                return Err(Failed::Permanent(format!(
                    "the registry has no tag {tag} in {repo}; not recorded"
                )));
            }
        }
    }
    let image = image_for(&state.registry, namespace_id, repo, meta).await?;
    let image = image.as_str();
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
    record_all(&state.registry, batch, pushed_at, image, meta).await?;
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
