//! API tokens: a name, capabilities and an optional project scope. A token's secret is a
//! random UUID (v4: official Scaleway clients check the secret key is a UUID), shown once at
//! creation; only its SHA-256 is recorded. A UUID v4 carries 122 random bits, so a plain
//! fast hash is enough: there is nothing to brute-force.

use sha2::{Digest, Sha256};

use super::event::{DomainEvent, TokenCreated};
use super::{Aggregate, DomainError, streams, validate};

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
    to_hex(&Sha256::digest(secret.as_bytes()))
}

/// `bytes` in lowercase hex.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes lowercase or uppercase hex `text` spells; `None` for anything that is not hex.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
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

/// Creates token `id` whose secret hashes to `secret_hash` (tokens are never changed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateToken {
    pub name: String,
    pub secret_hash: String,
    pub capabilities: Vec<String>,
    pub project_id: Option<String>,
}

impl Aggregate for Token {
    type Command = CreateToken;

    fn stream(id: &str) -> String {
        streams::token(id)
    }

    fn version(&self) -> i64 {
        self.version
    }

    fn apply(&mut self, event: &DomainEvent, at: &str, _position: i64) {
        self.version += 1;
        if let DomainEvent::TokenCreated(c) = event {
            self.created = Some(c.clone());
            self.created_at = at.to_owned();
        }
    }

    fn decide(&self, id: &str, cmd: CreateToken) -> Result<Vec<DomainEvent>, DomainError> {
        if self.created.is_some() {
            return Err(DomainError::AlreadyExists {
                resource: "token",
                id: id.to_owned(),
            });
        }
        if cmd.name.is_empty() || cmd.name.len() > 100 {
            return Err(DomainError::invalid("name", "1 to 100 characters"));
        }
        let mut parsed = Vec::new();
        for c in &cmd.capabilities {
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
        if let Some(p) = &cmd.project_id {
            validate::project_id("project_id", p)?;
        }
        Ok(vec![DomainEvent::TokenCreated(TokenCreated {
            token_id: id.to_owned(),
            name: cmd.name,
            secret_hash: cmd.secret_hash,
            capabilities: parsed.iter().map(|c| c.as_str().to_owned()).collect(),
            project_id: cmd.project_id,
        })])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(caps: &[&str]) -> CreateToken {
        CreateToken {
            name: "ci".into(),
            secret_hash: "h".into(),
            capabilities: caps.iter().map(|c| (*c).to_owned()).collect(),
            project_id: None,
        }
    }

    #[test]
    fn capabilities_are_validated_sorted_and_deduplicated() {
        let t = Token::default();
        let caps = create(&["images-view", "admin", "images-view"]);
        let events = t.decide("t1", caps).unwrap();
        match &events[0] {
            DomainEvent::TokenCreated(c) => {
                assert_eq!(c.capabilities, vec!["images-view", "admin"])
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            t.decide("t1", create(&["images-delete"])),
            Err(DomainError::Invalid {
                field: "capabilities",
                ..
            })
        ));
        assert!(t.decide("t1", create(&[])).is_err());
        let mut created = Token::default();
        created.apply(&events[0], "t", 1);
        assert!(matches!(
            created.decide("t1", create(&["admin"])),
            Err(DomainError::AlreadyExists { .. })
        ));
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
