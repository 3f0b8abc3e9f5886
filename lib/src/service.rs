//! Commands against the registry: load an aggregate from its stream, decide, append with the
//! version it was loaded at, and retry on a concurrent change.

use crate::domain::event::NamespaceCreated;
use crate::domain::image::{Image, ImageCommand};
use crate::domain::namespace::{Namespace, NamespaceCommand};
use crate::domain::token::{CreateToken, Token, hash_secret};
use crate::domain::{Aggregate, DomainError, DomainEvent};
use crate::store::{EventStore, Expected, Metadata, ReadModels, StoreError};

/// How often a command is decided again after losing a race on its stream.
const MAX_ATTEMPTS: usize = 8;

/// Why a command did not happen. Each variant says how callers handle it.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Refused by the domain or by a read model rule: the caller's input or timing (4xx).
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// The stream kept changing under us for every attempt: retry later (503).
    #[error("{stream_id} changed concurrently {MAX_ATTEMPTS} times; try again")]
    Contention { stream_id: String },
    /// The store failed (5xx; logged, never shown).
    #[error(transparent)]
    Store(StoreError),
}

/// The registry's write side over any store.
#[derive(Clone, Debug)]
pub struct Registry<S> {
    store: S,
}

impl<S: EventStore + ReadModels> Registry<S> {
    pub fn new(store: S) -> Self {
        Registry { store }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// Folds aggregate `id` from its stream.
    pub async fn load<A: Aggregate>(&self, id: &str) -> Result<A, ServiceError> {
        let mut state = A::default();
        for e in self
            .store
            .read_stream(&A::stream(id))
            .await
            .map_err(ServiceError::Store)?
        {
            state.apply(&e.event, &e.recorded_at, e.position);
        }
        Ok(state)
    }

    pub async fn load_namespace(&self, id: &str) -> Result<Namespace, ServiceError> {
        self.load(id).await
    }

    pub async fn load_image(&self, id: &str) -> Result<Image, ServiceError> {
        self.load(id).await
    }

    /// Loads aggregate `id`, decides `cmd` and appends the events expecting the version it
    /// loaded; when another writer got there first, does it all again (at most
    /// `MAX_ATTEMPTS` times). Returns the events appended (none when nothing changed).
    pub async fn execute<A: Aggregate>(
        &self,
        id: &str,
        cmd: A::Command,
        meta: &Metadata,
    ) -> Result<Vec<DomainEvent>, ServiceError> {
        let mut state: A = self.load(id).await?;
        self.decide_and_append(id, &mut state, true, cmd, meta)
            .await
    }

    /// [`execute`](Self::execute) for a caller that keeps aggregate `id`'s state between
    /// commands (a job's runner): decides on `state` as it is, without reading the stream,
    /// and folds the appended events into it. Should the stream have moved since `state` was
    /// folded, the append's version check (or a refusal of the command) sends it back to
    /// the stream, and it is decided again on the state as stored.
    pub async fn execute_on<A: Aggregate>(
        &self,
        id: &str,
        state: &mut A,
        cmd: A::Command,
        meta: &Metadata,
    ) -> Result<Vec<DomainEvent>, ServiceError> {
        self.decide_and_append(id, state, false, cmd, meta).await
    }

    /// Decides `cmd` on `state` (just loaded when `fresh`) and appends at its version; after
    /// a conflict, or a refusal by a state that was not fresh, reads the stream again and
    /// decides afresh.
    async fn decide_and_append<A: Aggregate>(
        &self,
        id: &str,
        state: &mut A,
        mut fresh: bool,
        cmd: A::Command,
        meta: &Metadata,
    ) -> Result<Vec<DomainEvent>, ServiceError> {
        let stream_id = A::stream(id);
        for attempt in 0..MAX_ATTEMPTS {
            // Only a conflict or a refusal by a state that was not fresh comes round again.
            if attempt > 0 {
                *state = self.load(id).await?;
                fresh = true;
            }
            let events = match state.decide(id, cmd.clone()) {
                Ok(events) => events,
                Err(_) if !fresh => continue,
                Err(e) => return Err(e.into()),
            };
            match self
                .store
                .append(
                    &stream_id,
                    Expected::Version(state.version()),
                    &events,
                    meta,
                )
                .await
            {
                Ok(appended) => {
                    for (n, event) in events.iter().enumerate() {
                        let position = appended.first_position + n as i64;
                        state.apply(event, &appended.recorded_at, position);
                    }
                    return Ok(events);
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(refusal(e, &events)),
            }
        }
        Err(ServiceError::Contention { stream_id })
    }

    /// Runs a namespace command.
    pub async fn namespace(
        &self,
        id: &str,
        cmd: NamespaceCommand,
        meta: &Metadata,
    ) -> Result<Vec<DomainEvent>, ServiceError> {
        self.execute::<Namespace>(id, cmd, meta).await
    }

    /// Runs an image command.
    pub async fn image(
        &self,
        id: &str,
        cmd: ImageCommand,
        meta: &Metadata,
    ) -> Result<Vec<DomainEvent>, ServiceError> {
        self.execute::<Image>(id, cmd, meta).await
    }

    pub async fn create_namespace(
        &self,
        created: NamespaceCreated,
        meta: &Metadata,
    ) -> Result<(), ServiceError> {
        let id = created.namespace_id.clone();
        self.namespace(&id, NamespaceCommand::Create(created), meta)
            .await
            .map(drop)
    }
}

/// A token just created: its id, and its secret, which is never shown again.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub id: String,
    pub secret: String,
}

impl<S: EventStore + ReadModels> Registry<S> {
    /// On a deployment that has no token at all, creates the first one: an admin token with a
    /// random secret, under one fixed id, so that of processes starting at once on an empty
    /// database exactly one creates it, and none ever again. `None` when any token exists.
    pub async fn create_first_token(
        &self,
        meta: &Metadata,
    ) -> Result<Option<NewToken>, ServiceError> {
        if self
            .store()
            .any_token()
            .await
            .map_err(ServiceError::Store)?
        {
            return Ok(None);
        }
        let secret = uuid::Uuid::new_v4().to_string();
        let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, b"layerline first admin token");
        let cmd = CreateToken {
            name: "first-admin".to_owned(),
            secret_hash: hash_secret(&secret),
            capabilities: vec!["admin".to_owned()],
            project_id: None,
        };
        match self.execute::<Token>(&id.to_string(), cmd, meta).await {
            Ok(_) => Ok(Some(NewToken {
                id: id.to_string(),
                secret,
            })),
            Err(ServiceError::Domain(DomainError::AlreadyExists { .. })) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a token. `secret` is a UUID chosen by the caller (the bootstrap token) or, when
    /// `None`, a random UUID v4. Only its hash is recorded. A bootstrap secret always maps to
    /// the same token id, so creating it again is a no-op (`Ok(None)`).
    pub async fn create_token(
        &self,
        name: &str,
        capabilities: &[String],
        project_id: Option<String>,
        secret: Option<uuid::Uuid>,
        meta: &Metadata,
    ) -> Result<Option<NewToken>, ServiceError> {
        let given = secret.is_some();
        let secret = secret.unwrap_or_else(uuid::Uuid::new_v4).to_string();
        let secret_hash = hash_secret(&secret);
        let id = if given {
            uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, secret_hash.as_bytes()).to_string()
        } else {
            uuid::Uuid::now_v7().to_string()
        };
        let cmd = CreateToken {
            name: name.to_owned(),
            secret_hash,
            capabilities: capabilities.to_vec(),
            project_id,
        };
        match self.execute::<Token>(&id, cmd, meta).await {
            Ok(_) => Ok(Some(NewToken { id, secret })),
            Err(ServiceError::Domain(DomainError::AlreadyExists { .. })) if given => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn policy_name_taken(body: &crate::domain::policy::PolicySpec) -> DomainError {
    DomainError::Conflict {
        resource: "policy",
        message: format!(
            "a policy named {} already exists in namespace {}",
            body.name, body.namespace_id
        ),
    }
}

/// Turns a read model rule that refused an append into the domain error it stands for.
fn refusal(err: StoreError, events: &[DomainEvent]) -> ServiceError {
    let first = events.first();
    let domain = match (&err, first) {
        (StoreError::Unique { .. }, Some(DomainEvent::NamespaceCreated(c))) => {
            DomainError::Conflict {
                resource: "namespace",
                message: format!(
                    "a namespace named {} already exists in {}",
                    c.name, c.region
                ),
            }
        }
        (StoreError::Unique { .. }, Some(DomainEvent::ImageCreated(c))) => DomainError::Conflict {
            resource: "image",
            message: format!("an image named {} already exists in this namespace", c.name),
        },
        (StoreError::Reference { .. }, Some(DomainEvent::ImageCreated(c))) => {
            DomainError::NotFound {
                resource: "namespace",
                id: c.namespace_id.clone(),
            }
        }
        (StoreError::Reference { .. }, Some(DomainEvent::NamespaceDeleted)) => {
            DomainError::Conflict {
                resource: "namespace",
                message: "the namespace still has images".to_owned(),
            }
        }
        (StoreError::Unique { .. }, Some(DomainEvent::PolicyCreated(c))) => {
            policy_name_taken(&c.body)
        }
        (StoreError::Unique { .. }, Some(DomainEvent::PolicyUpdated(u))) => {
            policy_name_taken(&u.body)
        }
        (StoreError::BlobSize { .. }, _) => DomainError::Invalid {
            field: "blob",
            reason: err.to_string(),
        },
        _ => return ServiceError::Store(err),
    };
    ServiceError::Domain(domain)
}
