//! Bearer-token authentication and capability checks, shared by every API surface. Each
//! surface renders [`AuthError`] in its own error shape.

use axum::http::HeaderMap;

use crate::domain::token::{Capability, constant_time_eq, hash_secret};
use crate::store::{ReadModels, Store, StoreError};

/// Who is calling: the token's id, what it may do, and the project it is confined to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub token_id: String,
    pub capabilities: Vec<Capability>,
    /// When set, resources of other projects are invisible to this token.
    pub project_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No token, a malformed one, or one we do not know (401).
    #[error("a valid token is required (X-Auth-Token or Authorization: Bearer)")]
    Unauthorized,
    /// The token lacks the capability (403).
    #[error("this token lacks the {} capability", .0.as_str())]
    Forbidden(Capability),
    /// The token store failed (500).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Principal {
    /// How the log names this caller (`actor` in event metadata, a job's `creator`).
    pub fn actor(&self) -> String {
        format!("token:{}", self.token_id)
    }

    /// Succeeds when the token has `capability` (or `admin`).
    pub fn require(&self, capability: Capability) -> Result<(), AuthError> {
        if self.capabilities.contains(&capability) || self.capabilities.contains(&Capability::Admin)
        {
            Ok(())
        } else {
            Err(AuthError::Forbidden(capability))
        }
    }

    /// Whether a resource of `project_id` is visible to this token.
    pub fn sees(&self, project_id: &str) -> bool {
        self.project_id.as_deref().is_none_or(|p| p == project_id)
    }

    /// Whether a job of `project_id` is visible to this token: a scoped token sees only its
    /// project's jobs, never those of no project.
    pub fn sees_job(&self, project_id: Option<&str>) -> bool {
        match (&self.project_id, project_id) {
            (None, _) => true,
            (Some(mine), Some(theirs)) => mine == theirs,
            (Some(_), None) => false,
        }
    }
}

/// The secret from `X-Auth-Token` or `Authorization: Bearer`.
fn presented_secret(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get("x-auth-token") {
        return v.to_str().ok().map(str::trim);
    }
    let auth = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = auth.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Authenticates the request. Secrets are UUIDs in their canonical spelling; anything else is
/// refused before any lookup.
/// The lookup is by the secret's SHA-256, and the stored hash is compared again in constant
/// time, so response timing tells nothing about the secret.
pub async fn authenticate(store: &Store, headers: &HeaderMap) -> Result<Principal, AuthError> {
    let secret = presented_secret(headers).ok_or(AuthError::Unauthorized)?;
    // One spelling per secret: the lowercase, hyphenated one it was shown in. The parser
    // also takes upper case, no hyphens, braces and `urn:uuid:`, which would make one
    // token answer to several strings.
    let parsed = uuid::Uuid::parse_str(secret).map_err(|_| AuthError::Unauthorized)?;
    if parsed.hyphenated().to_string() != secret {
        return Err(AuthError::Unauthorized);
    }
    let hash = hash_secret(secret);
    let row = store
        .token_by_hash(&hash)
        .await?
        .ok_or(AuthError::Unauthorized)?;
    if !constant_time_eq(&row.secret_hash, &hash) {
        return Err(AuthError::Unauthorized);
    }
    Ok(Principal {
        token_id: row.id,
        capabilities: row
            .capabilities
            .split(',')
            .filter_map(Capability::parse)
            .collect(),
        project_id: row.project_id,
    })
}
