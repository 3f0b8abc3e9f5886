//! Prune policies: what a policy body says (scope, rules, guard) and its checked form.
//!
//! A run uses a policy's body as it was at one version, or an inline body of the same shape.

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::DomainError;
use super::retention::{Rules, RulesSpec};

/// Most image-name globs a policy may list.
pub const MAX_IMAGE_NAMES: usize = 100;
/// Longest image-name glob, in bytes.
pub const MAX_GLOB_LEN: usize = 256;
/// The guard used when a body does not set `max_deletions`.
pub const DEFAULT_MAX_DELETIONS: u64 = 1_000;
/// The largest guard accepted.
pub const MAX_MAX_DELETIONS: u64 = 10_000_000;

/// A policy body's scope, rules and guard (the fields a run needs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// Images of this namespace are in scope.
    pub namespace_id: String,
    /// Globs on image names (`*` any run of characters, `?` one); empty: every image.
    #[serde(default)]
    pub image_names: Vec<String>,
    pub rules: RulesSpec,
    /// A run planning more deletions than this deletes nothing.
    #[serde(default = "default_max_deletions")]
    pub max_deletions: u64,
}

fn default_max_deletions() -> u64 {
    DEFAULT_MAX_DELETIONS
}

/// A prune job's input: the policy body it runs (inline, or a stored policy's body at
/// `policy_version`, copied in when the job is submitted).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruneInput {
    #[serde(default)]
    pub policy_id: Option<String>,
    #[serde(default)]
    pub policy_version: Option<i64>,
    pub policy: PolicySpec,
    #[serde(default)]
    pub dry_run: bool,
}

/// A policy checked and ready to plan with.
#[derive(Debug, Clone)]
pub struct Policy {
    pub namespace_id: String,
    image_names: Vec<Regex>,
    pub rules: Rules,
    pub max_deletions: u64,
}

impl Policy {
    /// Checks every field; an error names the field that is wrong.
    pub fn compile(spec: &PolicySpec) -> Result<Policy, DomainError> {
        if spec.namespace_id.is_empty() || spec.namespace_id.len() > 64 {
            return Err(DomainError::invalid("namespace_id", "1 to 64 characters"));
        }
        if spec.image_names.len() > MAX_IMAGE_NAMES {
            return Err(DomainError::invalid(
                "image_names",
                format!("at most {MAX_IMAGE_NAMES} globs"),
            ));
        }
        let image_names = spec
            .image_names
            .iter()
            .map(|g| glob(g))
            .collect::<Result<Vec<_>, _>>()?;
        if !(1..=MAX_MAX_DELETIONS).contains(&spec.max_deletions) {
            return Err(DomainError::invalid(
                "max_deletions",
                format!("from 1 to {MAX_MAX_DELETIONS}"),
            ));
        }
        Ok(Policy {
            namespace_id: spec.namespace_id.clone(),
            image_names,
            rules: Rules::compile(&spec.rules)?,
            max_deletions: spec.max_deletions,
        })
    }

    /// Whether image `name` is in scope.
    pub fn covers(&self, name: &str) -> bool {
        self.image_names.is_empty() || self.image_names.iter().any(|g| g.is_match(name))
    }
}

/// A glob as an anchored regex: `*` matches any run of characters (slashes too), `?` one.
fn glob(pattern: &str) -> Result<Regex, DomainError> {
    if pattern.is_empty() || pattern.len() > MAX_GLOB_LEN {
        return Err(DomainError::invalid(
            "image_names",
            format!("a glob has 1 to {MAX_GLOB_LEN} bytes"),
        ));
    }
    let mut re = String::from("^");
    for c in pattern.chars() {
        match c {
            '*' => re.push_str(".*"),
            '?' => re.push('.'),
            c => re.push_str(&regex::escape(c.encode_utf8(&mut [0; 4]))),
        }
    }
    re.push('$');
    Regex::new(&re).map_err(|e| DomainError::invalid("image_names", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(image_names: &[&str]) -> PolicySpec {
        PolicySpec {
            namespace_id: "ns".into(),
            image_names: image_names.iter().map(|s| (*s).into()).collect(),
            rules: RulesSpec::default(),
            max_deletions: 10,
        }
    }

    #[test]
    fn globs_match_whole_names() {
        let p = Policy::compile(&spec(&["app", "api-*", "t?st"])).unwrap();
        for name in ["app", "api-", "api-gateway", "api-a/b", "test", "tost"] {
            assert!(p.covers(name), "{name}");
        }
        for name in ["apps", "my-app", "api", "tst", "teest", "a.p"] {
            assert!(!p.covers(name), "{name}");
        }
    }

    #[test]
    fn glob_metacharacters_other_than_star_and_question_are_literal() {
        let p = Policy::compile(&spec(&["a.p", "(x)+"])).unwrap();
        assert!(p.covers("a.p") && p.covers("(x)+"));
        assert!(!p.covers("axp") && !p.covers("xx"));
    }

    #[test]
    fn no_globs_cover_every_image() {
        assert!(
            Policy::compile(&spec(&[]))
                .unwrap()
                .covers("anything/at-all")
        );
    }

    #[test]
    fn errors_name_the_field() {
        let field = |s: PolicySpec| match Policy::compile(&s) {
            Err(DomainError::Invalid { field, .. }) => field,
            other => panic!("expected an error, got {other:?}"),
        };
        assert_eq!(field(spec(&[""])), "image_names");
        let mut s = spec(&[]);
        s.max_deletions = 0;
        assert_eq!(field(s), "max_deletions");
        let mut s = spec(&[]);
        s.namespace_id = String::new();
        assert_eq!(field(s), "namespace_id");
        let mut s = spec(&[]);
        s.rules.tag_pattern = Some("(".into());
        assert_eq!(field(s), "rules.tag_pattern");
    }
}
