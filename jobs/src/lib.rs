//! Layerline's jobs: the kinds of long work (import, prune, delete, gc), their queues, what
//! each does (`handlers`), how one delivery runs (`runner`) and the pool on apalis (`pool`).
//!
//! Queue names are persisted, because queued jobs outlive a deploy: renaming one orphans every
//! job waiting under the old name, so they are explicit constants, never Rust type paths.

pub mod handlers;
pub mod pool;
pub mod runner;

pub use pool::{PoolConfig, Queues};
pub use runner::{RetryPolicy, Runner, Ticket};

/// Queue names, one per job kind: the kind's persisted name (`layerline_core`'s `JobKind`).
pub mod queue {
    use layerline_core::domain::job::JobKind;

    pub const IMPORT: &str = JobKind::Import.as_str();
    pub const PRUNE: &str = JobKind::Prune.as_str();
    pub const DELETE_IMAGE: &str = JobKind::DeleteImage.as_str();
    pub const DELETE_NAMESPACE: &str = JobKind::DeleteNamespace.as_str();
    pub const DELETE_TAG: &str = JobKind::DeleteTag.as_str();
    pub const GC: &str = JobKind::Gc.as_str();
    pub const PROBE: &str = JobKind::Probe.as_str();

    /// Every queue, for workers that serve them all.
    pub const ALL: [&str; 7] = [
        IMPORT,
        PRUNE,
        DELETE_IMAGE,
        DELETE_NAMESPACE,
        DELETE_TAG,
        GC,
        PROBE,
    ];
}

#[cfg(test)]
mod tests {
    use super::queue;

    #[test]
    fn queue_names_are_distinct_and_do_not_collide_with_apalis_tables() {
        let mut names = queue::ALL.to_vec();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), queue::ALL.len());
        // apalis keeps `Jobs` and `Workers` tables; SQLite names are case-insensitive.
        assert!(names.iter().all(|n| !["jobs", "workers"].contains(n)));
    }
}
