//! Embedded schema migrations, one list per backend, kept at the same versions and names.
//!
//! Applied versions are recorded in `layerline_migrations` (not sqlx's `_sqlx_migrations`,
//! which apalis' migrator uses for its own tables). An applied migration is never edited.

/// One migration: version, name (its file name without extension, `NNNN_what`) and SQL.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

macro_rules! migrations {
    ($dir:literal: $(($version:literal, $name:literal)),* $(,)?) => {
        &[$(Migration {
            version: $version,
            name: $name,
            sql: include_str!(concat!("../../../migrations/", $dir, "/", $name, ".sql")),
        }),*]
    };
}

pub const SQLITE: &[Migration] = migrations!("sqlite": (1, "0001_event_log"), (2, "0002_read_models"), (3, "0003_api"), (4, "0004_jobs"), (5, "0005_prune_plans"), (6, "0006_prune_policies"), (7, "0007_hook_events"), (8, "0008_queue_statistics"), (9, "0009_manifest_layers_packed"), (10, "0010_job_project"), (11, "0011_server_keys"), (12, "0012_manifest_subject"), (13, "0013_plan_item_subject"), (14, "0014_plan_keeps"));
pub const POSTGRES: &[Migration] = migrations!("postgres": (1, "0001_event_log"), (2, "0002_read_models"), (3, "0003_api"), (4, "0004_jobs"), (5, "0005_prune_plans"), (6, "0006_prune_policies"), (7, "0007_hook_events"), (8, "0008_queue_statistics"), (9, "0009_manifest_layers_packed"), (10, "0010_job_project"), (11, "0011_server_keys"), (12, "0012_manifest_subject"), (13, "0013_plan_item_subject"), (14, "0014_plan_keeps"));

pub const TABLE_DDL: &str = "CREATE TABLE IF NOT EXISTS layerline_migrations (\
    version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)";

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn files(dir: &str) -> BTreeSet<String> {
        let path = format!("{}/../migrations/{dir}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    }

    fn listed(list: &[Migration]) -> BTreeSet<String> {
        for m in list {
            assert!(
                m.name.starts_with(&format!("{:04}_", m.version)),
                "{}",
                m.name
            );
        }
        list.iter().map(|m| format!("{}.sql", m.name)).collect()
    }

    #[test]
    fn both_backends_have_the_same_versions_and_names_and_embed_every_file() {
        assert_eq!(listed(SQLITE), listed(POSTGRES));
        assert_eq!(files("sqlite"), listed(SQLITE));
        assert_eq!(files("postgres"), listed(POSTGRES));
        let versions: Vec<i64> = SQLITE.iter().map(|m| m.version).collect();
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "versions ascend");
    }
}
