//! Service configuration: flags beat `LAYERLINE_*` environment variables, which beat the
//! optional TOML file, which beats the defaults here.

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";
pub const DEFAULT_DATABASE_URL: &str = "sqlite://layerline.db";
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;
pub const DEFAULT_REGIONS: &str = "fr-par";
pub const DEFAULT_REGISTRY_ENDPOINT: &str = "localhost:5000";
pub const DEFAULT_WORKERS: usize = 4;
/// A killed worker's job is picked up again within about this long (plus one sweep).
pub const DEFAULT_ORPHAN_TIMEOUT_SECS: u64 = 20;
pub const DEFAULT_RETRY_BASE_MS: u64 = 2000;
/// How often the prune scheduler looks for due policies.
pub const DEFAULT_SCHEDULER_TICK_MS: u64 = 500;
/// Largest image archive an upload may send: 2 GiB.
pub const DEFAULT_ARCHIVE_MAX_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// One layer of settings, every field optional: what the flags and environment gave, or what
/// the TOML file says. Unknown keys in the file are an error, so a typo is not ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    pub listen: Option<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
    pub database_url: Option<String>,
    pub max_connections: Option<u32>,
    pub log_format: Option<LogFormat>,
    pub regions: Option<Vec<String>>,
    pub registry_endpoint: Option<String>,
    pub role: Option<Role>,
    pub workers: Option<usize>,
    pub orphan_timeout_secs: Option<u64>,
    pub retry_base_ms: Option<u64>,
    pub scheduler_tick_ms: Option<u64>,
    pub archive_max_bytes: Option<u64>,
}

/// What a `serve` process runs: the HTTP API, the job workers, or both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    All,
    Api,
    Worker,
}

impl Role {
    pub fn serves_api(self) -> bool {
        matches!(self, Role::All | Role::Api)
    }

    pub fn runs_workers(self) -> bool {
        matches!(self, Role::All | Role::Worker)
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "all" => Ok(Role::All),
            "api" => Ok(Role::Api),
            "worker" => Ok(Role::Worker),
            other => Err(format!("unknown role `{other}` (all, api or worker)")),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format `{other}` (text or json)")),
        }
    }
}

/// Resolved settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub database_url: String,
    pub max_connections: u32,
    pub log_format: LogFormat,
    pub regions: Vec<String>,
    pub registry_endpoint: String,
    pub role: Role,
    pub workers: usize,
    pub orphan_timeout_secs: u64,
    pub retry_base_ms: u64,
    pub scheduler_tick_ms: u64,
    pub archive_max_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid region `{0}`: regions look like `fr-par` (two letters, '-', three letters)")]
    Region(String),
    #[error("config file {path}: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
}

impl Layer {
    /// Reads a TOML file whose keys are the flag names with `_` for `-`.
    pub fn from_file(path: &Path) -> Result<Layer, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: shown,
            source,
        })
    }

    /// `self` where set, else `lower`.
    pub fn over(self, lower: Layer) -> Layer {
        Layer {
            listen: self.listen.or(lower.listen),
            metrics_listen: self.metrics_listen.or(lower.metrics_listen),
            database_url: self.database_url.or(lower.database_url),
            max_connections: self.max_connections.or(lower.max_connections),
            log_format: self.log_format.or(lower.log_format),
            regions: self.regions.or(lower.regions),
            registry_endpoint: self.registry_endpoint.or(lower.registry_endpoint),
            role: self.role.or(lower.role),
            workers: self.workers.or(lower.workers),
            orphan_timeout_secs: self.orphan_timeout_secs.or(lower.orphan_timeout_secs),
            retry_base_ms: self.retry_base_ms.or(lower.retry_base_ms),
            scheduler_tick_ms: self.scheduler_tick_ms.or(lower.scheduler_tick_ms),
            archive_max_bytes: self.archive_max_bytes.or(lower.archive_max_bytes),
        }
    }

    /// Fills what is still unset with the defaults and checks the regions.
    pub fn resolve(self) -> Result<Settings, ConfigError> {
        let regions = self
            .regions
            .unwrap_or_else(|| vec![DEFAULT_REGIONS.to_owned()]);
        for r in &regions {
            if !valid_region(r) {
                return Err(ConfigError::Region(r.clone()));
            }
        }
        Ok(Settings {
            regions,
            registry_endpoint: self
                .registry_endpoint
                .unwrap_or_else(|| DEFAULT_REGISTRY_ENDPOINT.to_owned()),
            listen: self
                .listen
                .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default")),
            metrics_listen: self
                .metrics_listen
                .unwrap_or_else(|| DEFAULT_METRICS_LISTEN.parse().expect("valid default")),
            database_url: self
                .database_url
                .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned()),
            max_connections: self.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
            log_format: self.log_format.unwrap_or_default(),
            role: self.role.unwrap_or_default(),
            workers: self.workers.unwrap_or(DEFAULT_WORKERS).max(1),
            orphan_timeout_secs: self
                .orphan_timeout_secs
                .unwrap_or(DEFAULT_ORPHAN_TIMEOUT_SECS)
                .max(2),
            retry_base_ms: self.retry_base_ms.unwrap_or(DEFAULT_RETRY_BASE_MS),
            scheduler_tick_ms: self
                .scheduler_tick_ms
                .unwrap_or(DEFAULT_SCHEDULER_TICK_MS)
                .clamp(50, 60_000),
            archive_max_bytes: self.archive_max_bytes.unwrap_or(DEFAULT_ARCHIVE_MAX_BYTES),
        })
    }
}

/// Region names as Scaleway's clients accept them: `xx-yyy`, lowercase letters.
pub fn valid_region(r: &str) -> bool {
    let b = r.as_bytes();
    b.len() == 6
        && b[2] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 2 || c.is_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_the_file_which_beats_defaults() {
        let file: Layer =
            toml::from_str("listen = \"0.0.0.0:1\"\ndatabase_url = \"postgres://x/y\"").unwrap();
        let flags = Layer {
            listen: Some("127.0.0.1:2".parse().unwrap()),
            ..Layer::default()
        };
        let s = flags.over(file).resolve().unwrap();
        assert_eq!(s.listen.port(), 2);
        assert_eq!(s.database_url, "postgres://x/y");
        assert_eq!(s.metrics_listen.to_string(), DEFAULT_METRICS_LISTEN);
        assert_eq!(s.regions, vec!["fr-par"]);
        let bad = Layer {
            regions: Some(vec!["paris".into()]),
            ..Layer::default()
        };
        assert!(matches!(bad.resolve(), Err(ConfigError::Region(_))));
    }

    #[test]
    fn unknown_keys_in_the_file_are_errors() {
        assert!(toml::from_str::<Layer>("listn = \"0.0.0.0:1\"").is_err());
    }
}
