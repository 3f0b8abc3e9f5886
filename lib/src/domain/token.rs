//! API tokens: a name, capabilities and an optional project scope. A token's secret is a
//! random UUID (v4: official Scaleway clients check the secret key is a UUID), shown once at
//! creation; only its SHA-256 is recorded. A UUID v4 carries 122 random bits, so a plain
//! fast hash is enough: there is nothing to brute-force.

use sha2::{Digest, Sha256};

use super::event::{DomainEvent, TokenCreated};
use super::{DomainError, validate};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Capability {
    ImagesView,
    ImagesManage,
    ImagesImport,
    JobsView,
    PoliciesManage,
    /// Everything, including creating tokens.
    Admin,
}

impl Capability {
    pub const ALL: [Capability; 6] = [
        Capability::ImagesView,
        Capability::ImagesManage,
        Capability::ImagesImport,
        Capability::JobsView,
        Capability::PoliciesManage,
        Capability::Admin,
    ];

    /// The persisted, user-facing name.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::ImagesView => "images-view",
            Capability::ImagesManage => "images-manage",
            Capability::ImagesImport => "images-import",
            Capability::JobsView => "jobs-view",
            Capability::PoliciesManage => "policies-manage",
            Capability::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Capability> {
        Capability::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// The SHA-256 of a secret, lowercase hex: what is stored and looked up.
pub fn hash_secret(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compares two equal-length strings in time independent of where they differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The state of one token stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Token {
    pub created: Option<TokenCreated>,
    pub version: i64,
    pub created_at: String,
}

impl Token {
    pub fn apply(&mut self, event: &DomainEvent, at: &str) {
        self.version += 1;
        if let DomainEvent::TokenCreated(c) = event {
            self.created = Some(c.clone());
            self.created_at = at.to_owned();
        }
    }

    /// Decides the creation of token `id` whose secret hashes to `secret_hash`.
    pub fn decide_create(
        &self,
        id: &str,
        name: &str,
        secret_hash: &str,
        capabilities: &[String],
        project_id: Option<String>,
    ) -> Result<Vec<DomainEvent>, DomainError> {
        if self.created.is_some() {
            return Err(DomainError::AlreadyExists {
                resource: "token",
                id: id.to_owned(),
            });
        }
        if name.is_empty() || name.len() > 100 {
            return Err(DomainError::invalid("name", "1 to 100 characters"));
        }
        let mut parsed = Vec::new();
        for c in capabilities {
            let cap = Capability::parse(c).ok_or_else(|| {
                let known: Vec<&str> = Capability::ALL.iter().map(|c| c.as_str()).collect();
                DomainError::invalid(
                    "capabilities",
                    format!("unknown capability `{c}` (known: {})", known.join(", ")),
                )
            })?;
            parsed.push(cap);
        }
        if parsed.is_empty() {
            return Err(DomainError::invalid("capabilities", "at least one"));
        }
        parsed.sort();
        parsed.dedup();
        if let Some(p) = &project_id {
            validate::project_id(p)?;
        }
        Ok(vec![DomainEvent::TokenCreated(TokenCreated {
            token_id: id.to_owned(),
            name: name.to_owned(),
            secret_hash: secret_hash.to_owned(),
            capabilities: parsed.iter().map(|c| c.as_str().to_owned()).collect(),
            project_id,
        })])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_are_validated_sorted_and_deduplicated() {
        let t = Token::default();
        let caps = vec![
            "images-view".to_owned(),
            "admin".into(),
            "images-view".into(),
        ];
        let events = t.decide_create("t1", "ci", "h", &caps, None).unwrap();
        match &events[0] {
            DomainEvent::TokenCreated(c) => {
                assert_eq!(c.capabilities, vec!["images-view", "admin"])
            }
            other => panic!("{other:?}"),
        }
        let bad = vec!["images-delete".to_owned()];
        assert!(matches!(
            t.decide_create("t1", "ci", "h", &bad, None),
            Err(DomainError::Invalid {
                field: "capabilities",
                ..
            })
        ));
        assert!(t.decide_create("t1", "ci", "h", &[], None).is_err());
    }

    #[test]
    fn hashes_are_stable_hex_and_compared_in_constant_time() {
        let h = hash_secret("abc");
        assert_eq!(
            h,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(constant_time_eq(&h, &hash_secret("abc")));
        assert!(!constant_time_eq(&h, &hash_secret("abd")));
        assert!(!constant_time_eq("a", "ab"));
    }
}
