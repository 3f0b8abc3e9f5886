//! Prune plans as stored: the state a plan was made from, and what it chose.

use serde::{Deserialize, Serialize};

use crate::domain::retention::ImageState;

/// The images of one namespace with their tags and manifests, read in one transaction, and
/// the log position they are current at.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub position: i64,
    pub images: Vec<SnapshotImage>,
}

#[derive(Debug, Clone)]
pub struct SnapshotImage {
    pub id: String,
    pub name: String,
    pub state: ImageState,
}

/// A stored plan's summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanHeader {
    pub job_id: String,
    /// The log position the plan was made at.
    pub position: i64,
    pub policy_id: Option<String>,
    pub policy_version: Option<i64>,
    /// The job attempt that made the plan.
    pub attempt: i64,
    /// Images with at least one deletion.
    pub images: i64,
    pub tags: i64,
    pub manifests: i64,
    pub bytes: i64,
    pub created_at: String,
}

/// One planned deletion: a tag (`kind` `tag`, with its name and the version that last
/// pushed it) or a manifest (`kind` `manifest`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanItem {
    pub idx: i64,
    pub image_id: String,
    pub image_name: String,
    pub kind: String,
    pub tag: Option<String>,
    pub digest: String,
    pub pushed_version: Option<i64>,
    /// The rule that chose it (`keep_last`, `older_than`, `untagged`…).
    pub reason: String,
    /// Bytes only this deletion frees (manifests; 0 for tags).
    pub bytes: i64,
}

pub const KIND_TAG: &str = "tag";
pub const KIND_MANIFEST: &str = "manifest";
