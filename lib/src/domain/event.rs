//! The domain's events: their stable type names, current schema versions, payload shapes and
//! the upcast steps that read older schema versions.
//!
//! Every name in this module is persisted. Renaming an event type or changing a payload in a
//! way old readers cannot parse is a migration: add a new schema version and an upcast step.

use serde::{Deserialize, Serialize};

pub use super::job::{
    JobAccepted, JobCancelRequested, JobCancelled, JobFailed, JobProgressed, JobRetried,
    JobStarted, JobSucceeded,
};
pub use super::policy::{PolicyCreated, PolicyUpdated};

/// Stable event type names (persisted in `events.event_type`).
pub mod types {
    pub const NAMESPACE_CREATED: &str = "namespace.created";
    pub const NAMESPACE_UPDATED: &str = "namespace.updated";
    pub const NAMESPACE_DELETED: &str = "namespace.deleted";
    pub const NAMESPACE_BACKEND_SET: &str = "namespace.backend_set";
    pub const IMAGE_CREATED: &str = "image.created";
    pub const IMAGE_UPDATED: &str = "image.updated";
    pub const IMAGE_DELETED: &str = "image.deleted";
    pub const NAMESPACE_DELETION_REQUESTED: &str = "namespace.deletion_requested";
    pub const IMAGE_DELETION_REQUESTED: &str = "image.deletion_requested";
    pub const MANIFEST_RECORDED: &str = "manifest.recorded";
    pub const MANIFEST_DELETED: &str = "manifest.deleted";
    pub const TAG_PUSHED: &str = "tag.pushed";
    pub const TAG_DELETED: &str = "tag.deleted";
    pub const TOKEN_CREATED: &str = "token.created";
    pub const JOB_ACCEPTED: &str = "job.accepted";
    pub const JOB_STARTED: &str = "job.started";
    pub const JOB_PROGRESSED: &str = "job.progressed";
    pub const JOB_SUCCEEDED: &str = "job.succeeded";
    pub const JOB_RETRIED: &str = "job.retried";
    pub const JOB_FAILED: &str = "job.failed";
    pub const JOB_CANCEL_REQUESTED: &str = "job.cancel_requested";
    pub const JOB_CANCELLED: &str = "job.cancelled";
    pub const POLICY_CREATED: &str = "policy.created";
    pub const POLICY_UPDATED: &str = "policy.updated";
    pub const POLICY_DELETED: &str = "policy.deleted";
}

/// A content-addressed blob (layer or config) as a manifest references it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Blob {
    pub digest: String,
    pub size: i64,
    pub media_type: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceCreated {
    pub namespace_id: String,
    pub name: String,
    pub region: String,
    pub description: String,
    pub is_public: bool,
    pub organization_id: String,
    pub project_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceUpdated {
    pub description: Option<String>,
    pub is_public: Option<bool>,
}

/// The namespace's backend registry set (`Some`) or removed (`None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceBackendSet {
    pub backend: Option<super::source::NamespaceBackend>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageCreated {
    pub image_id: String,
    pub namespace_id: String,
    pub name: String,
    pub visibility: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageUpdated {
    pub visibility: String,
}

/// A delete job was accepted for the resource: it shows as `deleting` until the job removes
/// it. Recorded on the namespace's or the image's own stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeletionRequested {
    pub job_id: String,
}

/// A manifest stored under an image. An index has no blobs of its own and lists the digests
/// of its child manifests, which are recorded in the same image before it.
///
/// Schema v2 added `created`, `subject` and `artifact_type`; a v1 event reads with none of
/// them (created when it was recorded, attached to nothing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestRecorded {
    pub digest: String,
    pub media_type: String,
    /// `os/arch[/variant]` when the manifest was reached through an index.
    pub platform: Option<String>,
    pub config: Option<Blob>,
    pub layers: Vec<Blob>,
    pub children: Vec<String>,
    /// When the image was built (RFC 3339, as `format_time` writes it): the manifest's
    /// `org.opencontainers.image.created` annotation, else its config's `created`; `None`
    /// when neither says (or says nonsense), and the image's age is then when it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The digest of the manifest this one is attached to (OCI 1.1 `subject`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The manifest's OCI 1.1 `artifactType`, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestDeleted {
    pub digest: String,
}

/// A tag pointed at a digest: a new tag, or an existing one moved (same `tag_id`).
///
/// Schema v3 added `pushed_at`; older events read without it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagPushed {
    pub tag_id: String,
    pub name: String,
    pub digest: String,
    /// When the tag moved in the registry it came from (an import: its image's creation
    /// time; a notification: its timestamp); `None`: when it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagDeleted {
    pub tag_id: String,
    pub name: String,
}

/// An API token. Only the SHA-256 of its secret is ever recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenCreated {
    pub token_id: String,
    pub name: String,
    pub secret_hash: String,
    pub capabilities: Vec<String>,
    pub project_id: Option<String>,
}

/// Every event the domain records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainEvent {
    NamespaceCreated(NamespaceCreated),
    NamespaceUpdated(NamespaceUpdated),
    NamespaceDeleted,
    NamespaceDeletionRequested(DeletionRequested),
    NamespaceBackendSet(NamespaceBackendSet),
    ImageCreated(ImageCreated),
    ImageUpdated(ImageUpdated),
    ImageDeleted,
    ImageDeletionRequested(DeletionRequested),
    ManifestRecorded(ManifestRecorded),
    ManifestDeleted(ManifestDeleted),
    TagPushed(TagPushed),
    TagDeleted(TagDeleted),
    TokenCreated(TokenCreated),
    JobAccepted(JobAccepted),
    JobStarted(JobStarted),
    JobProgressed(JobProgressed),
    JobSucceeded(JobSucceeded),
    JobRetried(JobRetried),
    JobFailed(JobFailed),
    JobCancelRequested(JobCancelRequested),
    JobCancelled(JobCancelled),
    PolicyCreated(PolicyCreated),
    PolicyUpdated(PolicyUpdated),
    PolicyDeleted,
}

/// Why a stored event could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown event type `{0}`")]
    UnknownType(String),
    #[error("event `{event_type}` has schema version {version}, newer than this build knows")]
    FutureSchema { event_type: String, version: i32 },
    #[error("event `{event_type}` v{version}: {source}")]
    Payload {
        event_type: String,
        version: i32,
        source: serde_json::Error,
    },
}

impl DomainEvent {
    /// The stable type name stored with the event.
    pub fn event_type(&self) -> &'static str {
        use types::*;
        match self {
            DomainEvent::NamespaceCreated(_) => NAMESPACE_CREATED,
            DomainEvent::NamespaceUpdated(_) => NAMESPACE_UPDATED,
            DomainEvent::NamespaceDeleted => NAMESPACE_DELETED,
            DomainEvent::NamespaceBackendSet(_) => NAMESPACE_BACKEND_SET,
            DomainEvent::ImageCreated(_) => IMAGE_CREATED,
            DomainEvent::ImageUpdated(_) => IMAGE_UPDATED,
            DomainEvent::ImageDeleted => IMAGE_DELETED,
            DomainEvent::NamespaceDeletionRequested(_) => NAMESPACE_DELETION_REQUESTED,
            DomainEvent::ImageDeletionRequested(_) => IMAGE_DELETION_REQUESTED,
            DomainEvent::ManifestRecorded(_) => MANIFEST_RECORDED,
            DomainEvent::ManifestDeleted(_) => MANIFEST_DELETED,
            DomainEvent::TagPushed(_) => TAG_PUSHED,
            DomainEvent::TagDeleted(_) => TAG_DELETED,
            DomainEvent::TokenCreated(_) => TOKEN_CREATED,
            DomainEvent::JobAccepted(_) => JOB_ACCEPTED,
            DomainEvent::JobStarted(_) => JOB_STARTED,
            DomainEvent::JobProgressed(_) => JOB_PROGRESSED,
            DomainEvent::JobSucceeded(_) => JOB_SUCCEEDED,
            DomainEvent::JobRetried(_) => JOB_RETRIED,
            DomainEvent::JobFailed(_) => JOB_FAILED,
            DomainEvent::JobCancelRequested(_) => JOB_CANCEL_REQUESTED,
            DomainEvent::JobCancelled(_) => JOB_CANCELLED,
            DomainEvent::PolicyCreated(_) => POLICY_CREATED,
            DomainEvent::PolicyUpdated(_) => POLICY_UPDATED,
            DomainEvent::PolicyDeleted => POLICY_DELETED,
        }
    }

    /// The schema version new events of this type are written with.
    pub fn schema_version(&self) -> i32 {
        current_schema_version(self.event_type())
    }

    /// The JSON payload, in the current schema version.
    pub fn payload(&self) -> String {
        let value = match self {
            DomainEvent::NamespaceCreated(p) => serde_json::to_string(p),
            DomainEvent::NamespaceUpdated(p) => serde_json::to_string(p),
            DomainEvent::NamespaceBackendSet(p) => serde_json::to_string(p),
            DomainEvent::ImageCreated(p) => serde_json::to_string(p),
            DomainEvent::ImageUpdated(p) => serde_json::to_string(p),
            DomainEvent::NamespaceDeletionRequested(p) | DomainEvent::ImageDeletionRequested(p) => {
                serde_json::to_string(p)
            }
            DomainEvent::ManifestRecorded(p) => serde_json::to_string(p),
            DomainEvent::ManifestDeleted(p) => serde_json::to_string(p),
            DomainEvent::TagPushed(p) => serde_json::to_string(p),
            DomainEvent::TagDeleted(p) => serde_json::to_string(p),
            DomainEvent::TokenCreated(p) => serde_json::to_string(p),
            DomainEvent::JobAccepted(p) => serde_json::to_string(p),
            DomainEvent::JobStarted(p) => serde_json::to_string(p),
            DomainEvent::JobProgressed(p) => serde_json::to_string(p),
            DomainEvent::JobSucceeded(p) => serde_json::to_string(p),
            DomainEvent::JobRetried(p) => serde_json::to_string(p),
            DomainEvent::JobFailed(p) => serde_json::to_string(p),
            DomainEvent::JobCancelRequested(p) => serde_json::to_string(p),
            DomainEvent::JobCancelled(p) => serde_json::to_string(p),
            DomainEvent::PolicyCreated(p) => serde_json::to_string(p),
            DomainEvent::PolicyUpdated(p) => serde_json::to_string(p),
            DomainEvent::NamespaceDeleted
            | DomainEvent::ImageDeleted
            | DomainEvent::PolicyDeleted => Ok("{}".to_owned()),
        };
        // Serialising plain structs of strings, numbers and options cannot fail.
        value.expect("event payloads always serialise")
    }

    /// Reads a stored event, upcasting older schema versions first. `stream_id` is needed by
    /// upcasts that derive identifiers older versions did not store.
    pub fn decode(
        event_type: &str,
        schema_version: i32,
        payload: &str,
        stream_id: &str,
    ) -> Result<DomainEvent, DecodeError> {
        use types::*;
        let current = current_schema_version(event_type);
        if current == 0 {
            return Err(DecodeError::UnknownType(event_type.to_owned()));
        }
        if schema_version > current {
            return Err(DecodeError::FutureSchema {
                event_type: event_type.to_owned(),
                version: schema_version,
            });
        }
        let err = |source| DecodeError::Payload {
            event_type: event_type.to_owned(),
            version: schema_version,
            source,
        };
        let event = match event_type {
            NAMESPACE_CREATED => DomainEvent::NamespaceCreated(parse(payload).map_err(err)?),
            NAMESPACE_UPDATED => DomainEvent::NamespaceUpdated(parse(payload).map_err(err)?),
            NAMESPACE_DELETED => DomainEvent::NamespaceDeleted,
            NAMESPACE_BACKEND_SET => DomainEvent::NamespaceBackendSet(parse(payload).map_err(err)?),
            IMAGE_CREATED => DomainEvent::ImageCreated(parse(payload).map_err(err)?),
            IMAGE_UPDATED => DomainEvent::ImageUpdated(parse(payload).map_err(err)?),
            IMAGE_DELETED => DomainEvent::ImageDeleted,
            NAMESPACE_DELETION_REQUESTED => {
                DomainEvent::NamespaceDeletionRequested(parse(payload).map_err(err)?)
            }
            IMAGE_DELETION_REQUESTED => {
                DomainEvent::ImageDeletionRequested(parse(payload).map_err(err)?)
            }
            MANIFEST_RECORDED => DomainEvent::ManifestRecorded(parse(payload).map_err(err)?),
            MANIFEST_DELETED => DomainEvent::ManifestDeleted(parse(payload).map_err(err)?),
            TAG_PUSHED if schema_version == 1 => {
                let v1: TagPushedV1 = parse(payload).map_err(err)?;
                DomainEvent::TagPushed(v1.upcast(stream_id))
            }
            TAG_PUSHED => DomainEvent::TagPushed(parse(payload).map_err(err)?),
            TAG_DELETED if schema_version == 1 => {
                let v1: TagDeletedV1 = parse(payload).map_err(err)?;
                DomainEvent::TagDeleted(v1.upcast(stream_id))
            }
            TAG_DELETED => DomainEvent::TagDeleted(parse(payload).map_err(err)?),
            TOKEN_CREATED => DomainEvent::TokenCreated(parse(payload).map_err(err)?),
            JOB_ACCEPTED => DomainEvent::JobAccepted(parse(payload).map_err(err)?),
            JOB_STARTED => DomainEvent::JobStarted(parse(payload).map_err(err)?),
            JOB_PROGRESSED => DomainEvent::JobProgressed(parse(payload).map_err(err)?),
            JOB_SUCCEEDED => DomainEvent::JobSucceeded(parse(payload).map_err(err)?),
            JOB_RETRIED => DomainEvent::JobRetried(parse(payload).map_err(err)?),
            JOB_FAILED => DomainEvent::JobFailed(parse(payload).map_err(err)?),
            JOB_CANCEL_REQUESTED => DomainEvent::JobCancelRequested(parse(payload).map_err(err)?),
            JOB_CANCELLED => DomainEvent::JobCancelled(parse(payload).map_err(err)?),
            POLICY_CREATED => DomainEvent::PolicyCreated(parse(payload).map_err(err)?),
            POLICY_UPDATED => DomainEvent::PolicyUpdated(parse(payload).map_err(err)?),
            POLICY_DELETED => DomainEvent::PolicyDeleted,
            _ => unreachable!("current_schema_version knows every type"),
        };
        Ok(event)
    }
}

fn parse<T: serde::de::DeserializeOwned>(payload: &str) -> Result<T, serde_json::Error> {
    serde_json::from_str(payload)
}

/// The schema version written today for `event_type`; 0 for an unknown type.
pub fn current_schema_version(event_type: &str) -> i32 {
    use types::*;
    match event_type {
        NAMESPACE_CREATED
        | NAMESPACE_UPDATED
        | NAMESPACE_DELETED
        | NAMESPACE_BACKEND_SET
        | IMAGE_CREATED
        | IMAGE_UPDATED
        | IMAGE_DELETED
        | NAMESPACE_DELETION_REQUESTED
        | IMAGE_DELETION_REQUESTED
        | MANIFEST_DELETED
        | TOKEN_CREATED
        | JOB_ACCEPTED
        | JOB_STARTED
        | JOB_PROGRESSED
        | JOB_SUCCEEDED
        | JOB_RETRIED
        | JOB_FAILED
        | JOB_CANCEL_REQUESTED
        | JOB_CANCELLED
        | POLICY_CREATED
        | POLICY_UPDATED
        | POLICY_DELETED => 1,
        // v2 added `created`, `subject` and `artifact_type` (read as absent from v1).
        MANIFEST_RECORDED => 2,
        // v2 added `tag_id` (tags became addressable by id for the Scaleway API).
        TAG_DELETED => 2,
        // v3 added `pushed_at` (read as absent from v2).
        TAG_PUSHED => 3,
        _ => 0,
    }
}

/// The identifier a tag gets when its events predate `tag_id`: stable for an image and a tag
/// name, so every replay derives the same one.
pub fn legacy_tag_id(stream_id: &str, tag_name: &str) -> String {
    let name = format!("{stream_id}/{tag_name}");
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes()).to_string()
}

/// `tag.pushed` v1: `{"tag": name, "digest": d}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TagPushedV1 {
    tag: String,
    digest: String,
}

impl TagPushedV1 {
    fn upcast(self, stream_id: &str) -> TagPushed {
        TagPushed {
            tag_id: legacy_tag_id(stream_id, &self.tag),
            name: self.tag,
            digest: self.digest,
            pushed_at: None,
        }
    }
}

/// `tag.deleted` v1: `{"tag": name}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TagDeletedV1 {
    tag: String,
}

impl TagDeletedV1 {
    fn upcast(self, stream_id: &str) -> TagDeleted {
        TagDeleted {
            tag_id: legacy_tag_id(stream_id, &self.tag),
            name: self.tag,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_round_trips_through_its_stored_form() {
        let events = vec![
            DomainEvent::NamespaceDeleted,
            DomainEvent::NamespaceBackendSet(NamespaceBackendSet {
                backend: Some(super::super::source::NamespaceBackend {
                    registry: "https://registry.example.com".into(),
                    prefix: "mirror/team".into(),
                    credentials: None,
                }),
            }),
            DomainEvent::NamespaceBackendSet(NamespaceBackendSet { backend: None }),
            DomainEvent::JobProgressed(JobProgressed {
                attempt: 2,
                done: 1,
                total: 3,
                step: "deleted tag v1".into(),
            }),
            DomainEvent::TagPushed(TagPushed {
                tag_id: "t".into(),
                name: "v1".into(),
                digest: "sha256:00".into(),
                pushed_at: None,
            }),
            DomainEvent::ManifestRecorded(ManifestRecorded {
                digest: "sha256:aa".into(),
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                platform: Some("linux/amd64".into()),
                config: None,
                layers: vec![Blob {
                    digest: "sha256:bb".into(),
                    size: 3,
                    media_type: "x".into(),
                }],
                children: vec![],
                created: None,
                subject: None,
                artifact_type: None,
            }),
        ];
        for e in events {
            let back =
                DomainEvent::decode(e.event_type(), e.schema_version(), &e.payload(), "image-x")
                    .unwrap();
            assert_eq!(back, e);
        }
    }

    #[test]
    fn tag_pushed_v1_upcasts_with_a_stable_derived_id() {
        let payload = r#"{"tag":"latest","digest":"sha256:01"}"#;
        let a = DomainEvent::decode(types::TAG_PUSHED, 1, payload, "image-1").unwrap();
        let b = DomainEvent::decode(types::TAG_PUSHED, 1, payload, "image-1").unwrap();
        assert_eq!(a, b);
        match a {
            DomainEvent::TagPushed(t) => {
                assert_eq!(t.name, "latest");
                assert_eq!(t.tag_id, legacy_tag_id("image-1", "latest"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn unknown_types_and_future_versions_are_errors() {
        assert!(matches!(
            DomainEvent::decode("tag.renamed", 1, "{}", "s"),
            Err(DecodeError::UnknownType(_))
        ));
        assert!(matches!(
            DomainEvent::decode(types::TAG_PUSHED, 4, "{}", "s"),
            Err(DecodeError::FutureSchema { .. })
        ));
    }

    #[test]
    fn older_manifests_and_pushes_read_without_age_or_subject() {
        let manifest = r#"{"digest":"sha256:01","media_type":"m","platform":null,
            "config":null,"layers":[],"children":[]}"#;
        match DomainEvent::decode(types::MANIFEST_RECORDED, 1, manifest, "image-1").unwrap() {
            DomainEvent::ManifestRecorded(m) => {
                assert_eq!((m.created, m.subject, m.artifact_type), (None, None, None));
            }
            other => panic!("unexpected {other:?}"),
        }
        let push = r#"{"tag_id":"t","name":"v1","digest":"sha256:01"}"#;
        match DomainEvent::decode(types::TAG_PUSHED, 2, push, "image-1").unwrap() {
            DomainEvent::TagPushed(t) => assert_eq!(t.pushed_at, None),
            other => panic!("unexpected {other:?}"),
        }
        // A v3 push with its time keeps it through the stored form.
        let pushed = DomainEvent::TagPushed(TagPushed {
            tag_id: "t".into(),
            name: "v1".into(),
            digest: "sha256:01".into(),
            pushed_at: Some("2024-01-05T10:00:00.000000Z".into()),
        });
        let back = DomainEvent::decode(types::TAG_PUSHED, 3, &pushed.payload(), "image-1").unwrap();
        assert_eq!(back, pushed);
    }
}
