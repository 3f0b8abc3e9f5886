//! The namespace aggregate: its identity, description and visibility.
//!
//! Cross-aggregate rules (a name is unique per region, a namespace with images cannot be
//! deleted) are enforced by the read model's constraints inside the append transaction.

use super::event::{
    DeletionRequested, DomainEvent, NamespaceBackendSet, NamespaceCreated, NamespaceUpdated,
};
use super::source::NamespaceBackend;
use super::{Aggregate, DomainError, streams, validate};

/// The state of one namespace stream, folded from its events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Namespace {
    /// `None` until `namespace.created`.
    pub created: Option<NamespaceCreated>,
    pub deleted: bool,
    /// The delete job that will remove the namespace, once one was accepted.
    pub deleting: Option<String>,
    /// The registry imports copy to and prune runs delete from, when linked.
    pub backend: Option<NamespaceBackend>,
    /// Number of events folded so far (the stream version).
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceCommand {
    Create(NamespaceCreated),
    Update(NamespaceUpdated),
    /// Marks the namespace `deleting` for delete job `job_id`; nothing when already marked.
    RequestDelete {
        job_id: String,
    },
    Delete,
    /// Links the namespace to a backend registry (`Some`) or unlinks it (`None`).
    SetBackend(Option<NamespaceBackend>),
}

impl Namespace {
    fn live(&self, id: &str) -> Result<&NamespaceCreated, DomainError> {
        match &self.created {
            Some(c) if !self.deleted => Ok(c),
            _ => Err(DomainError::not_found("namespace", id)),
        }
    }
}

impl Aggregate for Namespace {
    type Command = NamespaceCommand;

    fn stream(id: &str) -> String {
        streams::namespace(id)
    }

    fn version(&self) -> i64 {
        self.version
    }

    /// Folds one event recorded at `at` (RFC 3339) into the state.
    fn apply(&mut self, event: &DomainEvent, at: &str, _position: i64) {
        self.version += 1;
        self.updated_at = at.to_owned();
        match event {
            DomainEvent::NamespaceCreated(c) => {
                self.created = Some(c.clone());
                self.created_at = at.to_owned();
            }
            DomainEvent::NamespaceUpdated(u) => {
                if let Some(c) = self.created.as_mut() {
                    if let Some(d) = &u.description {
                        c.description = d.clone();
                    }
                    if let Some(p) = u.is_public {
                        c.is_public = p;
                    }
                }
            }
            DomainEvent::NamespaceDeleted => self.deleted = true,
            DomainEvent::NamespaceDeletionRequested(r) => self.deleting = Some(r.job_id.clone()),
            DomainEvent::NamespaceBackendSet(b) => self.backend = b.backend.clone(),
            _ => {}
        }
    }

    /// Decides the events for `cmd` on namespace `id`. Returns no events when the command
    /// would change nothing.
    fn decide(&self, id: &str, cmd: NamespaceCommand) -> Result<Vec<DomainEvent>, DomainError> {
        match cmd {
            NamespaceCommand::Create(c) => {
                if self.created.is_some() {
                    return Err(DomainError::AlreadyExists {
                        resource: "namespace",
                        id: id.to_owned(),
                    });
                }
                validate::namespace_name(&c.name)?;
                validate::project_id("project_id", &c.project_id)?;
                validate::project_id("organization_id", &c.organization_id)?;
                if c.description.len() > 1024 {
                    return Err(DomainError::invalid("description", "at most 1024 bytes"));
                }
                Ok(vec![DomainEvent::NamespaceCreated(c)])
            }
            NamespaceCommand::Update(u) => {
                let current = self.live(id)?;
                if u.description.as_ref().is_some_and(|d| d.len() > 1024) {
                    return Err(DomainError::invalid("description", "at most 1024 bytes"));
                }
                let changes = NamespaceUpdated {
                    description: u.description.filter(|d| *d != current.description),
                    is_public: u.is_public.filter(|p| *p != current.is_public),
                };
                if changes.description.is_none() && changes.is_public.is_none() {
                    return Ok(vec![]);
                }
                Ok(vec![DomainEvent::NamespaceUpdated(changes)])
            }
            NamespaceCommand::RequestDelete { job_id } => {
                self.live(id)?;
                if self.deleting.is_some() {
                    return Ok(vec![]);
                }
                Ok(vec![DomainEvent::NamespaceDeletionRequested(
                    DeletionRequested { job_id },
                )])
            }
            NamespaceCommand::Delete => {
                self.live(id)?;
                Ok(vec![DomainEvent::NamespaceDeleted])
            }
            NamespaceCommand::SetBackend(backend) => {
                self.live(id)?;
                if let Some(b) = &backend {
                    b.check()?;
                }
                if backend == self.backend {
                    return Ok(vec![]);
                }
                Ok(vec![DomainEvent::NamespaceBackendSet(
                    NamespaceBackendSet { backend },
                )])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn created(name: &str) -> NamespaceCreated {
        NamespaceCreated {
            namespace_id: "n1".into(),
            name: name.into(),
            region: "fr-par".into(),
            description: String::new(),
            is_public: false,
            organization_id: "o".into(),
            project_id: "p".into(),
        }
    }

    fn given(events: &[DomainEvent]) -> Namespace {
        let mut ns = Namespace::default();
        events.iter().for_each(|e| ns.apply(e, "t", 0));
        ns
    }

    #[test]
    fn create_validates_the_name_and_happens_once() {
        let ns = Namespace::default();
        assert!(matches!(
            ns.decide("n1", NamespaceCommand::Create(created("Bad_Name"))),
            Err(DomainError::Invalid { field: "name", .. })
        ));
        let mut bad_project = created("team");
        bad_project.project_id = "not a project".into();
        assert!(matches!(
            ns.decide("n1", NamespaceCommand::Create(bad_project)),
            Err(DomainError::Invalid {
                field: "project_id",
                ..
            })
        ));
        let events = ns
            .decide("n1", NamespaceCommand::Create(created("team")))
            .unwrap();
        let ns = given(&events);
        assert!(matches!(
            ns.decide("n1", NamespaceCommand::Create(created("team"))),
            Err(DomainError::AlreadyExists { .. })
        ));
    }

    #[test]
    fn update_records_only_what_changes() {
        let ns = given(&[DomainEvent::NamespaceCreated(created("team"))]);
        let same = NamespaceUpdated {
            description: Some(String::new()),
            is_public: Some(false),
        };
        assert_eq!(ns.decide("n1", NamespaceCommand::Update(same)), Ok(vec![]));
        let public = NamespaceUpdated {
            description: None,
            is_public: Some(true),
        };
        assert_eq!(
            ns.decide("n1", NamespaceCommand::Update(public.clone())),
            Ok(vec![DomainEvent::NamespaceUpdated(public)])
        );
    }

    #[test]
    fn a_deleted_namespace_is_gone() {
        let ns = given(&[
            DomainEvent::NamespaceCreated(created("team")),
            DomainEvent::NamespaceDeleted,
        ]);
        assert!(matches!(
            ns.decide("n1", NamespaceCommand::Delete),
            Err(DomainError::NotFound { .. })
        ));
    }
}
