//! Where an import reads from: a registry, a repository, optionally some tags, and how to
//! authenticate. Passwords are never stored, nor chosen by a caller: a source names a
//! *credential set* the operator configured on the workers ([`CREDENTIALS_PREFIX`]), which
//! is bound to the one registry host it is for.

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

/// Where credential sets are configured: set `NAME` is the workers' environment variables
/// `LAYERLINE_REGISTRY_<NAME>_HOST` (the registry host, `host[:port]`, it is for),
/// `…_USERNAME` and `…_PASSWORD`, and optionally `…_TOKEN_HOST` (the host of the registry's
/// token service when it is another one). No other variable is ever read for a source.
pub const CREDENTIALS_PREFIX: &str = "LAYERLINE_REGISTRY_";

/// Credentials by reference: the name of a credential set (`{"set": "ghcr"}`). The older form
/// `{"username", "password_env"}` is still read, but only for a `password_env` of the form
/// `LAYERLINE_REGISTRY_<NAME>_PASSWORD`, which names set `NAME` (with this username).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
}

impl CredentialsRef {
    /// Credentials of set `name`.
    pub fn set(name: &str) -> Self {
        CredentialsRef {
            set: Some(name.to_owned()),
            username: None,
            password_env: None,
        }
    }

    /// The credential set this names, as its variables spell it (`GHCR`), or the refusal:
    /// `(field, reason)`. Checked on every request and again before a job reads a variable,
    /// so a stored input from before this rule cannot read one either.
    pub fn set_name(&self) -> Result<String, (&'static str, String)> {
        let valid = |n: &str| {
            !n.is_empty()
                && n.len() <= 64
                && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        };
        match (&self.set, &self.username, &self.password_env) {
            (Some(set), None, None) if valid(set) => Ok(set.to_ascii_uppercase()),
            (Some(_), None, None) => Err((
                "set",
                "a credential set's name: 1 to 64 of A-Z, a-z, 0-9 and _".to_owned(),
            )),
            (None, Some(user), Some(env)) if !user.is_empty() => env
                .strip_prefix(CREDENTIALS_PREFIX)
                .and_then(|rest| rest.strip_suffix("_PASSWORD"))
                .filter(|n| valid(n) && !n.bytes().any(|b| b.is_ascii_lowercase()))
                .map(str::to_owned)
                .ok_or_else(|| {
                    (
                        "password_env",
                        format!(
                            "only a credential set's variable,                              {CREDENTIALS_PREFIX}<NAME>_PASSWORD, may be named; better, name                              the set: {{\"set\": \"<NAME>\"}}"
                        ),
                    )
                }),
            _ => Err((
                "set",
                "name a credential set: {\"set\": \"<NAME>\"}, configured on the workers \
                 as LAYERLINE_REGISTRY_<NAME>_HOST, _USERNAME and _PASSWORD"
                    .to_owned(),
            )),
        }
    }
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
                "an OCI repository name: lowercase path components of a-z and 0-9 joined by \
                 '.', '_', '__' or dashes, separated by '/'",
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
                "an OCI repository path of at most 128 bytes: lowercase components of a-z \
                 and 0-9 joined by '.', '_', '__' or dashes, separated by '/'",
            ));
        }
        check_credentials("credentials", self.credentials.as_ref())
    }

    /// The backend repository of image `name`.
    pub fn repository(&self, name: &str) -> String {
        format!("{}/{name}", self.prefix)
    }
}

/// Whether `name` is a repository path by the OCI distribution grammar (no empty, `.` or
/// `..` component, nothing that could leave `/v2/<name>/` in a request's path).
fn repository_ok(name: &str) -> bool {
    super::validate::image_name(name).is_ok()
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
    c.set_name().map(drop).map_err(|(inner, reason)| {
        // The field names the part refused: `source.credentials.password_env`, …
        let named: &'static str = match (field, inner) {
            ("source.credentials", "password_env") => "source.credentials.password_env",
            ("source.credentials", _) => "source.credentials.set",
            (_, "password_env") => "credentials.password_env",
            _ => "credentials.set",
        };
        DomainError::invalid(named, reason)
    })
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
        for steering in ["../../secret/../x", "a/../b", "./a", "a/.", "-a", "a_"] {
            assert_eq!(field(source("https://x", steering)), "source.repository");
        }
    }

    #[test]
    fn credentials_name_a_set_never_another_variable() {
        let legacy = |username: &str, env: &str| CredentialsRef {
            set: None,
            username: Some(username.into()),
            password_env: Some(env.into()),
        };
        assert_eq!(
            CredentialsRef::set("ghcr_ro").set_name(),
            Ok("GHCR_RO".into())
        );
        assert_eq!(
            legacy("ci", "LAYERLINE_REGISTRY_GHCR_PASSWORD").set_name(),
            Ok("GHCR".into())
        );
        for env in [
            "LAYERLINE_BOOTSTRAP_TOKEN",
            "AWS_SECRET_ACCESS_KEY",
            "LAYERLINE_REGISTRY_GHCR_HOST",
            "LAYERLINE_REGISTRY__PASSWORD",
            "LAYERLINE_REGISTRY_ghcr_PASSWORD",
        ] {
            let refused = legacy("ci", env).set_name().unwrap_err();
            assert_eq!(refused.0, "password_env", "{env}");
        }
        for set in ["", "a-b", "../x", &"x".repeat(65)] {
            assert_eq!(
                CredentialsRef::set(set).set_name().unwrap_err().0,
                "set",
                "{set:?}"
            );
        }
        let mut both = CredentialsRef::set("ghcr");
        both.password_env = Some("LAYERLINE_REGISTRY_GHCR_PASSWORD".into());
        assert!(both.set_name().is_err());
        let mut s = source("https://x", "a");
        s.credentials = Some(legacy("ci", "HOME"));
        assert!(matches!(
            s.check(),
            Err(DomainError::Invalid {
                field: "source.credentials.password_env",
                ..
            })
        ));
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
