//! Where an import reads from: a registry, a repository, optionally some tags, and how to
//! authenticate. Passwords are never stored: a source names the environment variable of the
//! worker that holds one (`password_env`).

use serde::{Deserialize, Serialize};

use super::DomainError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// `https://host[:port]`, or `http://` for a loopback registry.
    pub registry: String,
    pub repository: String,
    /// The tags to import; absent: every tag of the repository.
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    #[serde(default)]
    pub credentials: Option<CredentialsRef>,
}

/// Basic credentials by reference: the password is read from the worker's environment
/// variable `password_env` when the job runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsRef {
    pub username: String,
    pub password_env: String,
}

/// Most tags one import names.
pub const MAX_TAGS: usize = 10_000;

impl Source {
    /// Checks the fields; an error names the field (`source.registry`, …).
    pub fn check(&self) -> Result<(), DomainError> {
        check_registry("source.registry", &self.registry)?;
        if !repository_ok(&self.repository) {
            return Err(DomainError::invalid(
                "source.repository",
                "a repository name: lowercase path components of a-z, 0-9, '.', '_', '-'",
            ));
        }
        if let Some(tags) = &self.tags {
            if tags.is_empty() || tags.len() > MAX_TAGS {
                return Err(DomainError::invalid(
                    "source.tags",
                    format!("1 to {MAX_TAGS} tags, or leave it out for all"),
                ));
            }
            for t in tags {
                super::validate::tag_name(t)
                    .map_err(|_| DomainError::invalid("source.tags", format!("bad tag `{t}`")))?;
            }
        }
        check_credentials("source.credentials", self.credentials.as_ref())
    }
}

/// The registry a namespace is backed by: imports into the namespace also copy blobs and
/// manifests there, under `prefix/<image name>`, and prune runs delete manifests there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceBackend {
    /// `https://host[:port]`, or `http://` for a loopback registry.
    pub registry: String,
    /// Repository path the namespace's images go under (`team` → `team/<image>`).
    pub prefix: String,
    #[serde(default)]
    pub credentials: Option<CredentialsRef>,
}

impl NamespaceBackend {
    /// Checks the fields; an error names the field (`registry`, `prefix`, `credentials`).
    pub fn check(&self) -> Result<(), DomainError> {
        check_registry("registry", &self.registry)?;
        if !repository_ok(&self.prefix) || self.prefix.len() > 128 {
            return Err(DomainError::invalid(
                "prefix",
                "a repository path of at most 128 bytes: lowercase components of a-z, 0-9, \
                 '.', '_', '-'",
            ));
        }
        check_credentials("credentials", self.credentials.as_ref())
    }

    /// The backend repository of image `name`.
    pub fn repository(&self, name: &str) -> String {
        format!("{}/{name}", self.prefix)
    }
}

/// Whether `name` is a repository path: lowercase components of a-z, 0-9, `.`, `_`, `-`.
fn repository_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.split('/').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        })
}

/// Checks a registry URL: `https://host[:port]`, or `http://` for a loopback host.
fn check_registry(field: &'static str, url: &str) -> Result<(), DomainError> {
    let r = url.trim_end_matches('/');
    let host = r
        .strip_prefix("https://")
        .map(|h| (h, true))
        .or_else(|| r.strip_prefix("http://").map(|h| (h, false)));
    let Some((host, tls)) = host.filter(|(h, _)| !h.is_empty() && !h.contains('/')) else {
        return Err(DomainError::invalid(
            field,
            "an https:// URL of a registry (host and optional port, no path)",
        ));
    };
    let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let loopback = matches!(name, "localhost" | "127.0.0.1" | "[::1]");
    if !tls && !loopback {
        return Err(DomainError::invalid(
            field,
            "plain http:// is only for loopback registries; use https://",
        ));
    }
    Ok(())
}

fn check_credentials(
    field: &'static str,
    credentials: Option<&CredentialsRef>,
) -> Result<(), DomainError> {
    let Some(c) = credentials else {
        return Ok(());
    };
    let env_ok = !c.password_env.is_empty()
        && c.password_env
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if c.username.is_empty() || !env_ok {
        return Err(DomainError::invalid(
            field,
            "a username and password_env, the name of an environment variable (A-Z, 0-9, _) \
             of the workers holding the password",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(registry: &str, repository: &str) -> Source {
        Source {
            registry: registry.into(),
            repository: repository.into(),
            tags: None,
            credentials: None,
        }
    }

    #[test]
    fn plain_http_only_for_loopback() {
        assert!(
            source("https://registry.example.com", "team/app")
                .check()
                .is_ok()
        );
        assert!(source("http://127.0.0.1:5000", "team/app").check().is_ok());
        assert!(source("http://localhost:5000/", "app").check().is_ok());
        let field = |s: Source| match s.check() {
            Err(DomainError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            field(source("http://registry.example.com", "a")),
            "source.registry"
        );
        assert_eq!(field(source("ftp://x", "a")), "source.registry");
        assert_eq!(field(source("https://x/v2", "a")), "source.registry");
        assert_eq!(field(source("https://x", "Team/App")), "source.repository");
        assert_eq!(field(source("https://x", "a//b")), "source.repository");
    }
}

/// An import job's input: what to read, and the image it goes into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportInput {
    pub image_id: String,
    pub source: Source,
}

/// A namespace-wide import: every repository of a registry's catalog (or the ones named)
/// into images of the namespace named after them, created as needed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogImport {
    pub namespace_id: String,
    pub registry: String,
    /// The repositories to import; absent: the registry's whole catalog.
    #[serde(default)]
    pub repositories: Option<Vec<String>>,
    #[serde(default)]
    pub credentials: Option<CredentialsRef>,
}

impl CatalogImport {
    /// The source of one of its repositories (every tag).
    pub fn source(&self, repository: &str) -> Source {
        Source {
            registry: self.registry.clone(),
            repository: repository.to_owned(),
            tags: None,
            credentials: self.credentials.clone(),
        }
    }

    /// Checks the fields as a source of each named repository would be.
    pub fn check(&self) -> Result<(), DomainError> {
        let repos = self
            .repositories
            .clone()
            .unwrap_or_else(|| vec!["x".into()]);
        if repos.is_empty() || repos.len() > MAX_TAGS {
            return Err(DomainError::invalid(
                "source.repositories",
                format!("1 to {MAX_TAGS} repositories, or leave it out for the whole catalog"),
            ));
        }
        for r in &repos {
            self.source(r).check()?;
        }
        Ok(())
    }
}
