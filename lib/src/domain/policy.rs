//! Prune policies: what a policy body says (scope, rules, schedule, guard), its checked
//! form, and the policy aggregate (each change a new version of its stream).
//!
//! A run uses a policy's body as it was at one version, or an inline body of the same shape.

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::event::DomainEvent;
use super::retention::{Rules, RulesSpec};
use super::schedule::Schedule;
use super::{Aggregate, DomainError, streams};

/// Most image-name globs a policy may list.
pub const MAX_IMAGE_NAMES: usize = 100;
/// Longest image-name glob, in bytes.
pub const MAX_GLOB_LEN: usize = 256;
/// The guard used when a body does not set `max_deletions`.
pub const DEFAULT_MAX_DELETIONS: u64 = 1_000;
/// The largest guard accepted.
pub const MAX_MAX_DELETIONS: u64 = 10_000_000;
/// Longest policy name, in bytes.
pub const MAX_NAME_LEN: usize = 100;

/// A policy body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// Required for a stored policy; an inline body of a run may leave it out.
    #[serde(default)]
    pub name: String,
    /// Images of this namespace are in scope.
    pub namespace_id: String,
    /// Globs on image names (`*` any run of characters, `?` one); empty: every image.
    #[serde(default)]
    pub image_names: Vec<String>,
    pub rules: RulesSpec,
    /// A run planning more deletions than this deletes nothing.
    #[serde(default = "default_max_deletions")]
    pub max_deletions: u64,
    /// When runs start by themselves (see [`Schedule`]); none: only when asked.
    #[serde(default)]
    pub schedule: Option<String>,
    /// The schedule's time zone (IANA name).
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// A disabled policy is not scheduled; it can still be run by hand.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
}

fn default_max_deletions() -> u64 {
    DEFAULT_MAX_DELETIONS
}

fn default_timezone() -> String {
    "UTC".to_owned()
}

fn default_enabled() -> bool {
    true
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
    /// The scheduled instant a run started by the scheduler is for.
    #[serde(default)]
    pub scheduled_for: Option<String>,
}

/// A policy checked and ready to plan with.
#[derive(Debug, Clone)]
pub struct Policy {
    pub namespace_id: String,
    image_names: Vec<Regex>,
    pub rules: Rules,
    pub max_deletions: u64,
    pub schedule: Option<Schedule>,
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
        if spec.name.len() > MAX_NAME_LEN || spec.name.chars().any(char::is_control) {
            return Err(DomainError::invalid(
                "name",
                format!("at most {MAX_NAME_LEN} bytes, no control characters"),
            ));
        }
        let rules = Rules::compile(&spec.rules)?;
        let schedule = spec
            .schedule
            .as_deref()
            .map(|e| Schedule::parse(e, &spec.timezone))
            .transpose()
            .map_err(|(field, reason)| DomainError::invalid(field, reason))?;
        // Checked without a schedule too, so a stored body never holds a zone it cannot use.
        super::schedule::time_zone(&spec.timezone)
            .map_err(|(field, reason)| DomainError::invalid(field, reason))?;
        Ok(Policy {
            namespace_id: spec.namespace_id.clone(),
            image_names,
            rules,
            max_deletions: spec.max_deletions,
            schedule,
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

/// The state of one policy stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrunePolicy {
    pub id: String,
    pub body: Option<PolicySpec>,
    pub deleted: bool,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyCommand {
    Create(PolicySpec),
    /// Replaces the body; nothing is recorded when it is unchanged.
    Update(PolicySpec),
    Delete,
}

/// A policy's first version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyCreated {
    pub policy_id: String,
    pub body: PolicySpec,
}

/// A policy's next version: its whole new body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyUpdated {
    pub body: PolicySpec,
}

/// Checks a body a stored policy may hold.
fn check(body: &PolicySpec) -> Result<(), DomainError> {
    if body.name.is_empty() {
        return Err(DomainError::invalid("name", "a policy needs a name"));
    }
    Policy::compile(body).map(drop)
}

impl PrunePolicy {
    fn live(&self, id: &str) -> Result<&PolicySpec, DomainError> {
        match &self.body {
            Some(body) if !self.deleted => Ok(body),
            _ => Err(DomainError::not_found("policy", id)),
        }
    }
}

impl Aggregate for PrunePolicy {
    type Command = PolicyCommand;

    fn stream(id: &str) -> String {
        streams::policy(id)
    }

    fn version(&self) -> i64 {
        self.version
    }

    fn apply(&mut self, event: &DomainEvent, at: &str, _position: i64) {
        self.version += 1;
        self.updated_at = at.to_owned();
        match event {
            DomainEvent::PolicyCreated(c) => {
                self.id = c.policy_id.clone();
                self.body = Some(c.body.clone());
                self.created_at = at.to_owned();
            }
            DomainEvent::PolicyUpdated(u) => self.body = Some(u.body.clone()),
            DomainEvent::PolicyDeleted => self.deleted = true,
            _ => {}
        }
    }

    fn decide(&self, id: &str, cmd: PolicyCommand) -> Result<Vec<DomainEvent>, DomainError> {
        match cmd {
            PolicyCommand::Create(body) => {
                if self.body.is_some() {
                    return Err(DomainError::AlreadyExists {
                        resource: "policy",
                        id: id.to_owned(),
                    });
                }
                check(&body)?;
                Ok(vec![DomainEvent::PolicyCreated(PolicyCreated {
                    policy_id: id.to_owned(),
                    body,
                })])
            }
            PolicyCommand::Update(body) => {
                if *self.live(id)? == body {
                    return Ok(vec![]);
                }
                check(&body)?;
                Ok(vec![DomainEvent::PolicyUpdated(PolicyUpdated { body })])
            }
            PolicyCommand::Delete => {
                self.live(id)?;
                Ok(vec![DomainEvent::PolicyDeleted])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(image_names: &[&str]) -> PolicySpec {
        PolicySpec {
            name: "keep-3".into(),
            namespace_id: "ns".into(),
            image_names: image_names.iter().map(|s| (*s).into()).collect(),
            rules: RulesSpec::default(),
            max_deletions: 10,
            schedule: Some("0 3 * * *".into()),
            timezone: "UTC".into(),
            enabled: true,
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
        let mut s = spec(&[]);
        s.schedule = Some("every day".into());
        assert_eq!(field(s), "schedule");
        let mut s = spec(&[]);
        s.schedule = None;
        s.timezone = "Nowhere/Else".into();
        assert_eq!(field(s), "timezone");
    }

    /// Given a stream's events, a command decides these events or this error.
    fn decide(given: &[DomainEvent], cmd: PolicyCommand) -> Result<Vec<DomainEvent>, DomainError> {
        let mut state = PrunePolicy::default();
        given.iter().for_each(|e| state.apply(e, "t", 0));
        state.decide("p1", cmd)
    }

    #[test]
    fn each_change_is_a_new_version_and_an_unchanged_body_records_nothing() {
        let created = decide(&[], PolicyCommand::Create(spec(&[]))).unwrap();
        assert_eq!(created.len(), 1);
        let mut changed = spec(&[]);
        changed.max_deletions = 20;
        let updated = decide(&created, PolicyCommand::Update(changed.clone())).unwrap();
        assert_eq!(
            updated,
            [DomainEvent::PolicyUpdated(PolicyUpdated { body: changed })]
        );
        assert_eq!(
            decide(&created, PolicyCommand::Update(spec(&[]))),
            Ok(vec![])
        );
        let mut state = PrunePolicy::default();
        created
            .iter()
            .chain(&updated)
            .for_each(|e| state.apply(e, "t", 0));
        assert_eq!(state.version, 2);
        assert_eq!(state.body.unwrap().max_deletions, 20);
    }

    #[test]
    fn stored_policies_need_a_name_and_a_valid_body() {
        let mut unnamed = spec(&[]);
        unnamed.name.clear();
        assert!(matches!(
            decide(&[], PolicyCommand::Create(unnamed)),
            Err(DomainError::Invalid { field: "name", .. })
        ));
        let created = decide(&[], PolicyCommand::Create(spec(&[]))).unwrap();
        let mut bad = spec(&[]);
        bad.rules.older_than = Some("soon".into());
        assert!(matches!(
            decide(&created, PolicyCommand::Update(bad)),
            Err(DomainError::Invalid {
                field: "rules.older_than",
                ..
            })
        ));
    }

    #[test]
    fn a_deleted_policy_is_gone() {
        let mut events = decide(&[], PolicyCommand::Create(spec(&[]))).unwrap();
        events.extend(decide(&events, PolicyCommand::Delete).unwrap());
        assert!(matches!(
            decide(&events, PolicyCommand::Update(spec(&[]))),
            Err(DomainError::NotFound { .. })
        ));
        assert!(matches!(
            decide(&events, PolicyCommand::Delete),
            Err(DomainError::NotFound { .. })
        ));
        assert!(matches!(
            decide(&events, PolicyCommand::Create(spec(&[]))),
            Err(DomainError::AlreadyExists { .. })
        ));
    }
}
