//! The pure domain: commands are decided against aggregate state into events, and events are
//! folded into state. Nothing here does I/O or reads the clock; time arrives as an argument.

pub mod event;
pub mod image;
pub mod job;
pub mod namespace;
pub mod policy;
pub mod retention;
pub mod schedule;
pub mod source;
pub mod token;
pub mod validate;

pub use event::{Blob, DomainEvent};

/// Stream id prefixes (persisted: renaming one is a migration).
pub mod streams {
    pub const NAMESPACE: &str = "namespace-";
    pub const IMAGE: &str = "image-";
    pub const TOKEN: &str = "token-";
    pub const JOB: &str = "job-";
    pub const POLICY: &str = "policy-";

    pub fn namespace(id: &str) -> String {
        format!("{NAMESPACE}{id}")
    }

    pub fn image(id: &str) -> String {
        format!("{IMAGE}{id}")
    }

    pub fn token(id: &str) -> String {
        format!("{TOKEN}{id}")
    }

    pub fn job(id: &str) -> String {
        format!("{JOB}{id}")
    }

    pub fn policy(id: &str) -> String {
        format!("{POLICY}{id}")
    }
}

/// State folded from one stream that decides commands into events. The service loads,
/// decides and appends every aggregate the same way through this; `rebuild` folds them.
pub trait Aggregate: Default + Send {
    type Command: Clone + Send + Sync;
    /// The stream id of aggregate `id`.
    fn stream(id: &str) -> String;
    /// Events folded so far: the version an append must expect.
    fn version(&self) -> i64;
    /// Folds one event recorded at `at` (RFC 3339) at log `position`.
    fn apply(&mut self, event: &DomainEvent, at: &str, position: i64);
    /// The events `cmd` produces on aggregate `id`; none when it would change nothing.
    fn decide(&self, id: &str, cmd: Self::Command) -> Result<Vec<DomainEvent>, DomainError>;
}

/// Why a command was refused. Each variant says how the API answers it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// Bad input (400): `field` names the argument, `reason` says what is wrong with it.
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// The resource does not exist or was deleted (404).
    #[error("{resource} {id} not found")]
    NotFound { resource: &'static str, id: String },
    /// The resource already exists (409); creating it again is refused.
    #[error("{resource} {id} already exists")]
    AlreadyExists { resource: &'static str, id: String },
    /// The command is valid but conflicts with the current state (409).
    #[error("{resource}: {message}")]
    Conflict {
        resource: &'static str,
        message: String,
    },
}

impl DomainError {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        DomainError::Invalid {
            field,
            reason: reason.into(),
        }
    }

    pub(crate) fn not_found(resource: &'static str, id: impl Into<String>) -> Self {
        DomainError::NotFound {
            resource,
            id: id.into(),
        }
    }
}

/// Renders a time the way every timestamp is stored and served: RFC 3339, UTC, microseconds.
/// Fixed width, so stored timestamps sort as text on both backends.
pub fn format_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Reads an RFC 3339 time (as [`format_time`] writes them) in UTC; `None` when it is not one.
pub fn parse_time(t: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}
