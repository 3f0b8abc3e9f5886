//! Layerline's jobs: the kinds of long work (import, prune, delete, gc), their queues, what
//! each does (`handlers`), how one delivery runs (`runner`) and the pool on apalis (`pool`).
//!
//! Queue names are persisted, because queued jobs outlive a deploy: renaming one orphans every
//! job waiting under the old name, so they are explicit constants, never Rust type paths.

pub mod gc;
pub mod handlers;
pub mod import;
pub mod pool;
pub mod prune;
pub mod runner;
pub mod scheduler;

pub use pool::{PoolConfig, Queues};
pub use runner::{RetryPolicy, Runner, Ticket};

/// Queue names, one per job kind: the kind's persisted name (`layerline_core`'s `JobKind`).
pub mod queue {
    use layerline_core::domain::job::JobKind;

    /// Every queue, for workers that serve them all: each kind's `JobKind::as_str`.
    pub const ALL: [&str; JobKind::ALL.len()] = {
        let mut names = [""; JobKind::ALL.len()];
        let mut i = 0;
        while i < names.len() {
            names[i] = JobKind::ALL[i].as_str();
            i += 1;
        }
        names
    };
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
