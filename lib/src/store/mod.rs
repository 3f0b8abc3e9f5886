//! The event log and its read models on SQLite or PostgreSQL, behind the [`EventStore`] and
//! [`ReadModels`] ports.
//!
//! Both backends run the same SQL (see `sql/`): the text is written once and compiled against
//! each driver in [`backend`]. The backend is chosen by the database URL's scheme.
//!
//! # Ordering and the global feed
//! An append takes the log head row's lock first and holds it until commit, so appends commit
//! one after another in position order: positions are dense and a reader tailing
//! `position > after` never sees a later position before an earlier one becomes visible.
//! Throughput comes from batching events into one append, not from parallel writers.

mod backend;
pub mod migrate;
pub mod plans;
pub mod rows;
pub mod scratch;

use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::domain::DomainEvent;
use crate::domain::event::DecodeError;
pub use rows::ReadModelRows;

/// The stream version an append expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// Exactly this many events in the stream (0: the stream must not exist).
    Version(i64),
    /// Whatever is there (for streams with a single writer by construction).
    Any,
}

/// Who and what caused an append; stored as JSON beside each event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Metadata {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub causation: Option<String>,
}

/// An event as stored, decoded (and upcast) to the current schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    pub position: i64,
    pub stream_id: String,
    pub stream_version: i64,
    /// The schema version the event was stored with (before upcasting).
    pub stored_schema_version: i32,
    pub event: DomainEvent,
    pub metadata: String,
    pub recorded_at: String,
}

/// What an append wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// Position of the first event appended (0 when nothing was appended).
    pub first_position: i64,
    pub last_position: i64,
    /// The stream's version after the append.
    pub stream_version: i64,
    /// When the events were recorded (RFC 3339; empty when nothing was appended).
    pub recorded_at: String,
}

/// Failures of the store. Each variant says how callers handle it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The stream is not at the expected version: reload the aggregate and decide again.
    #[error("stream {stream_id} is at version {actual}, expected {expected}")]
    Conflict {
        stream_id: String,
        expected: i64,
        actual: i64,
    },
    /// A read model's uniqueness rule refused the change (e.g. a namespace name is taken).
    /// Nothing was written. `constraint` names the rule.
    #[error("unique constraint {constraint} refused the change")]
    Unique { constraint: String },
    /// A read model's reference rule refused the change (e.g. an image in a namespace that
    /// does not exist, or a namespace deleted while it has images). Nothing was written.
    #[error("reference constraint refused the change: {message}")]
    Reference { message: String },
    /// A blob digest arrived with a size other than the one already stored for it.
    #[error("blob {digest} has size {stored} here, not {given}")]
    BlobSize {
        digest: String,
        stored: i64,
        given: i64,
    },
    /// A stored event could not be decoded: the log holds something this build cannot read.
    #[error("event at position {position}: {source}")]
    Decode { position: i64, source: DecodeError },
    /// The URL names no backend we support.
    #[error("unsupported database URL (expected sqlite:… or postgres://…): {0}")]
    Url(String),
    /// The database failed or is unreachable; transient from the caller's point of view.
    #[error(transparent)]
    Database(sqlx::Error),
}

impl StoreError {
    /// A stored row this build cannot read (`what` names it and says what is wrong).
    pub fn unreadable(what: impl Into<String>) -> StoreError {
        StoreError::Database(sqlx::Error::Decode(what.into().into()))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &err {
            match db.kind() {
                sqlx::error::ErrorKind::UniqueViolation => {
                    return StoreError::Unique {
                        constraint: db
                            .constraint()
                            .map(str::to_owned)
                            .unwrap_or_else(|| db.message().to_owned()),
                    };
                }
                sqlx::error::ErrorKind::ForeignKeyViolation => {
                    return StoreError::Reference {
                        message: db.message().to_owned(),
                    };
                }
                _ => {}
            }
        }
        StoreError::Database(err)
    }
}

/// The append-only event log.
pub trait EventStore: Send + Sync {
    /// Appends `events` to `stream_id` atomically, running the inline projections in the same
    /// transaction. Fails with [`StoreError::Conflict`] when the stream is not at `expected`;
    /// then nothing is written. An empty batch writes nothing and checks nothing.
    fn append(
        &self,
        stream_id: &str,
        expected: Expected,
        events: &[DomainEvent],
        metadata: &Metadata,
    ) -> impl Future<Output = Result<Appended, StoreError>> + Send;

    /// Every event of one stream, in version order.
    fn read_stream(
        &self,
        stream_id: &str,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;

    /// Up to `limit` events with `position > after`, in position order: the global feed.
    fn read_all(
        &self,
        after: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;

    /// The position of the last committed event (0 for an empty log).
    fn head(&self) -> impl Future<Output = Result<i64, StoreError>> + Send;
}

/// Reads of the read models.
pub trait ReadModels: Send + Sync {
    /// Every row of every read model table, ordered by key: what `rebuild` must reproduce.
    fn read_model_rows(&self) -> impl Future<Output = Result<ReadModelRows, StoreError>> + Send;

    fn namespace(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<rows::NamespaceRow>, StoreError>> + Send;

    fn image(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<rows::ImageRow>, StoreError>> + Send;

    /// Ids of a namespace's images, by name.
    fn image_ids(
        &self,
        namespace_id: &str,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// A page of a region's namespaces.
    fn list_namespaces(
        &self,
        query: &NamespaceQuery,
    ) -> impl Future<Output = Result<Page<rows::NamespaceRow>, StoreError>> + Send;

    /// A page of a region's images, with their tag names.
    fn list_images(
        &self,
        query: &ImageQuery,
    ) -> impl Future<Output = Result<Page<ImageView>, StoreError>> + Send;

    /// One image with its region, project and tag names.
    fn image_view(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<ImageView>, StoreError>> + Send;

    /// A page of one image's tags.
    fn list_tags(
        &self,
        query: &TagQuery,
    ) -> impl Future<Output = Result<Page<rows::TagRow>, StoreError>> + Send;

    /// A keyset page of manifests; `Err(CursorError)` when the cursor cannot be followed.
    fn list_manifests(
        &self,
        query: &ManifestQuery,
    ) -> impl Future<Output = Result<Result<Vec<ManifestView>, CursorError>, StoreError>> + Send;

    /// One manifest by its `seq`.
    fn manifest_view(
        &self,
        seq: i64,
    ) -> impl Future<Output = Result<Option<ManifestView>, StoreError>> + Send;

    /// One job's descriptor.
    fn job(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<rows::JobDescriptorRow>, StoreError>> + Send;

    /// The job submitted with idempotency key `key`.
    fn job_by_idempotency_key(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<rows::JobDescriptorRow>, StoreError>> + Send;

    /// Jobs not in a final state (queued, scheduled, running) and unchanged since
    /// `changed_before` (a stored timestamp), least recently changed first.
    fn unfinished_jobs(
        &self,
        changed_before: &str,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<rows::JobDescriptorRow>, StoreError>> + Send;

    /// A page of job descriptors.
    fn list_jobs(
        &self,
        query: &JobQuery,
    ) -> impl Future<Output = Result<Page<rows::JobDescriptorRow>, StoreError>> + Send;

    /// Whether any token exists (revoked ones included).
    fn any_token(&self) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The token whose secret hashes to `secret_hash`.
    fn token_by_hash(
        &self,
        secret_hash: &str,
    ) -> impl Future<Output = Result<Option<rows::ApiTokenRow>, StoreError>> + Send;

    /// The tag with this id (tags are addressed by id in the Scaleway API).
    fn tag(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<rows::TagRow>, StoreError>> + Send;
}

/// Progress of a rebuild: events folded so far out of the log head.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Send + Sync);

/// A connected store on one of the supported backends.
#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(backend::sqlite::SqlStore),
    Postgres(backend::postgres::SqlStore),
}

/// Which backend a URL selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn of_url(url: &str) -> Result<Backend, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(StoreError::Url(url.to_owned()))
        }
    }
}

/// How long a statement waits for a lock held by another writer before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The options every SQLite connection of ours gets (also used by the benchmarks' baseline,
/// so both sides run with the same durability settings).
pub fn sqlite_options(url: &str) -> Result<SqliteConnectOptions, StoreError> {
    Ok(SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true))
}

/// Runs `$call` on whichever backend store `$self` holds.
macro_rules! dispatch {
    ($self:ident, $inner:ident => $call:expr) => {
        match $self {
            Store::Sqlite($inner) => $call,
            Store::Postgres($inner) => $call,
        }
    };
}

impl Store {
    /// Connects to `url` (`sqlite:path` — created if missing — or `postgres://…`). Runs no
    /// migrations; see [`Store::migrate`]. SQLite connections each get WAL, `synchronous =
    /// NORMAL`, a busy timeout and foreign keys, set in the connect options so every pooled
    /// connection has them. On SQLite, `max_connections` are for reads, and writes go
    /// through one more connection of their own (see `write_pool` of the backend stores).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        match Backend::of_url(url)? {
            Backend::Sqlite => {
                let pool = SqlitePoolOptions::new()
                    .max_connections(max_connections)
                    .connect_with(sqlite_options(url)?)
                    .await?;
                // A writer waits for it as long as it would wait for SQLite's lock. It is
                // taken for every group of appends and every fetch and acknowledgement of a
                // queue, and not pinged each time: an in-process connection does not go stale.
                let write = SqlitePoolOptions::new()
                    .max_connections(1)
                    .test_before_acquire(false)
                    .acquire_timeout(BUSY_TIMEOUT)
                    .connect_with(sqlite_options(url)?)
                    .await?;
                Ok(Store::Sqlite(backend::sqlite::SqlStore::new(pool, write)))
            }
            Backend::Postgres => {
                // One connection first, on its own: a server that cannot be reached is then
                // its own error (refused, unknown host, bad password) at once, where the pool
                // would wait out its acquire timeout and say only that it timed out.
                {
                    use sqlx::Connection;
                    sqlx::postgres::PgConnection::connect(url)
                        .await?
                        .close()
                        .await?;
                }
                let pool = PgPoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(BUSY_TIMEOUT)
                    .connect(url)
                    .await?;
                Ok(Store::Postgres(backend::postgres::SqlStore::new(
                    pool.clone(),
                    pool,
                )))
            }
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            Store::Sqlite(_) => Backend::Sqlite,
            Store::Postgres(_) => Backend::Postgres,
        }
    }

    /// Applies the embedded migrations not applied yet; safe to run from several processes at
    /// once. Returns the versions applied now.
    pub async fn migrate(&self) -> Result<Vec<i64>, StoreError> {
        dispatch!(self, s => s.migrate().await)
    }

    /// Whether the database answers and every embedded migration has been applied.
    pub async fn ready(&self) -> Result<bool, StoreError> {
        dispatch!(self, s => s.ready().await)
    }

    /// Drops every read model row and replays the whole log into them, in one transaction
    /// that also holds the log head lock (appends wait). Returns the number of events replayed.
    pub async fn rebuild(&self, progress: Progress<'_>) -> Result<u64, StoreError> {
        dispatch!(self, s => s.rebuild(progress).await)
    }

    /// Stores a raw event row as an older build would have written it. Only for tests and
    /// tools that check upcasting; it bypasses the domain and the projections.
    #[doc(hidden)]
    pub async fn insert_raw_event(
        &self,
        stream_id: &str,
        event_type: &str,
        schema_version: i32,
        payload: &str,
    ) -> Result<i64, StoreError> {
        dispatch!(self, s => s.insert_raw_event(stream_id, event_type, schema_version, payload)
                    .await)
    }

    /// Inserts read model rows directly, bypassing the log. Only for benchmarks that need a
    /// large read model quickly; the log does not describe what this writes.
    #[doc(hidden)]
    pub async fn bulk_load(&self, rows: &ReadModelRows) -> Result<(), StoreError> {
        dispatch!(self, s => s.bulk_load(rows).await)
    }

    /// Appends whole new streams (each from version 1) in one transaction, without
    /// projecting them. Only for benchmarks that seed the read models separately from the
    /// same aggregates ([`Store::bulk_load`]).
    #[doc(hidden)]
    pub async fn bulk_load_events(
        &self,
        streams: &[(String, Vec<DomainEvent>)],
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.bulk_load_events(streams).await)
    }

    pub async fn close(&self) {
        dispatch!(self, s => s.close().await)
    }

    /// Namespace `namespace_id`'s images (not those being deleted) with their tags and
    /// manifests, read in one transaction, and the log position they reflect.
    pub async fn prune_snapshot(&self, namespace_id: &str) -> Result<plans::Snapshot, StoreError> {
        dispatch!(self, s => s.prune_snapshot(namespace_id).await)
    }

    /// As [`Store::prune_snapshot`], handing each page of images to `on_page` while the next
    /// page is read; the position and `on_page`'s results, page by page.
    pub async fn prune_snapshot_with<T: Send + 'static>(
        &self,
        namespace_id: &str,
        on_page: plans::OnPage<T>,
    ) -> Result<(i64, Vec<T>), StoreError> {
        dispatch!(self, s => s.prune_snapshot_with(namespace_id, on_page).await)
    }

    /// Stores a prune job's plan with its items (and what it keeps, when it lists that)
    /// unless it has one; whether this stored it.
    pub async fn save_plan<'a, I>(
        &self,
        header: &plans::PlanHeader,
        items: I,
        kept: &[plans::KeptItem],
    ) -> Result<bool, StoreError>
    where
        I: IntoIterator<Item = &'a plans::PlanItem>,
        I::IntoIter: Send,
    {
        dispatch!(self, s => s.save_plan(header, items, kept).await)
    }

    /// Prune policy `id`'s read model row.
    pub async fn policy(&self, id: &str) -> Result<Option<rows::PolicyRow>, StoreError> {
        dispatch!(self, s => s.policy(id).await)
    }

    /// A page of policies (oldest first), of `project`'s namespaces and of `namespace_id`
    /// when given.
    pub async fn list_policies(
        &self,
        project: Option<&str>,
        namespace_id: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> Result<Page<rows::PolicyRow>, StoreError> {
        dispatch!(self, s => s.list_policies(project, namespace_id, limit, offset).await)
    }

    /// Namespace `namespace_id`'s distinct blobs: how many, and their bytes.
    pub async fn namespace_blobs(&self, namespace_id: &str) -> Result<(i64, i64), StoreError> {
        dispatch!(self, s => s.namespace_blobs(namespace_id).await)
    }

    /// The digests of namespace `namespace_id`'s blobs (those its manifests reference).
    pub async fn namespace_blob_digests(
        &self,
        namespace_id: &str,
    ) -> Result<Vec<String>, StoreError> {
        dispatch!(self, s => s.namespace_blob_digests(namespace_id).await)
    }

    /// The totals the metrics report: log head, registry sizes and unfinished jobs.
    pub async fn metric_totals(&self) -> Result<rows::MetricTotals, StoreError> {
        dispatch!(self, s => s.metric_totals().await)
    }

    /// Every enabled policy with a schedule.
    pub async fn scheduled_policies(&self) -> Result<Vec<rows::PolicyRow>, StoreError> {
        dispatch!(self, s => s.scheduled_policies().await)
    }

    /// The greatest idempotency key of a job starting with `prefix` (taken literally).
    pub async fn last_job_key(&self, prefix: &str) -> Result<Option<String>, StoreError> {
        dispatch!(self, s => s.last_job_key(prefix).await)
    }

    /// The manifests of image `image_id` attached to its manifest `digest`, each once, with
    /// how (see [`rows::ReferrerRow`]); only those of `artifact_type`, when given.
    pub async fn referrers(
        &self,
        image_id: &str,
        digest: &str,
        artifact_type: Option<&str>,
    ) -> Result<Vec<rows::ReferrerRow>, StoreError> {
        dispatch!(self, s => s.referrers(image_id, digest, artifact_type).await)
    }

    /// Whether image `image_id` has manifest `digest`.
    pub async fn has_manifest(&self, image_id: &str, digest: &str) -> Result<bool, StoreError> {
        dispatch!(self, s => s.has_manifest(image_id, digest).await)
    }

    /// Namespace `namespace_id`'s image named `name`.
    pub async fn image_by_name(
        &self,
        namespace_id: &str,
        name: &str,
    ) -> Result<Option<rows::ImageRow>, StoreError> {
        dispatch!(self, s => s.image_by_name(namespace_id, name).await)
    }

    /// The newest import job into image `image_id`.
    pub async fn last_import_job(&self, image_id: &str) -> Result<Option<String>, StoreError> {
        dispatch!(self, s => s.last_import_job(image_id).await)
    }

    /// Whether registry notification event `id` was handled already.
    pub async fn hook_event_seen(&self, id: &str) -> Result<bool, StoreError> {
        dispatch!(self, s => s.hook_event_seen(id).await)
    }

    /// Notes registry notification event `id` as handled.
    pub async fn record_hook_event(&self, id: &str, at: &str) -> Result<(), StoreError> {
        dispatch!(self, s => s.record_hook_event(id, at).await)
    }

    /// The server's secret key `name`: 32 bytes made by the first process that asks (two v4
    /// UUIDs from the operating system's generator, 244 random bits), stored in the database
    /// so every process of the deployment shares it.
    pub async fn server_key(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        use crate::domain::token::{from_hex, to_hex};
        let random: Vec<u8> = [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()]
            .iter()
            .flat_map(|u| u.into_bytes())
            .collect();
        let hex = dispatch!(self, s => s.server_key(name, &to_hex(&random)).await)?;
        from_hex(&hex).filter(|k| k.len() == 32).ok_or_else(|| {
            StoreError::Database(sqlx::Error::Decode(
                format!("server key {name} is not 32 bytes of hex").into(),
            ))
        })
    }

    /// Job `job_id`'s stored plan, if it has one.
    pub async fn plan(&self, job_id: &str) -> Result<Option<plans::PlanHeader>, StoreError> {
        dispatch!(self, s => s.plan(job_id).await)
    }

    /// Items `from..from + limit` of job `job_id`'s plan, in plan order.
    pub async fn plan_items(
        &self,
        job_id: &str,
        from: i64,
        limit: i64,
    ) -> Result<Vec<plans::PlanItem>, StoreError> {
        dispatch!(self, s => s.plan_items(job_id, from, limit).await)
    }

    /// Items `from..from + limit` of what job `job_id`'s plan keeps, in plan order.
    pub async fn plan_keeps(
        &self,
        job_id: &str,
        from: i64,
        limit: i64,
    ) -> Result<Vec<plans::KeptItem>, StoreError> {
        dispatch!(self, s => s.plan_keeps(job_id, from, limit).await)
    }
}

impl EventStore for Store {
    async fn append(
        &self,
        stream_id: &str,
        expected: Expected,
        events: &[DomainEvent],
        metadata: &Metadata,
    ) -> Result<Appended, StoreError> {
        dispatch!(self, s => s.append(stream_id, expected, events, metadata).await)
    }

    async fn read_stream(&self, stream_id: &str) -> Result<Vec<RecordedEvent>, StoreError> {
        dispatch!(self, s => s.read_stream(stream_id).await)
    }

    async fn read_all(&self, after: i64, limit: i64) -> Result<Vec<RecordedEvent>, StoreError> {
        dispatch!(self, s => s.read_all(after, limit).await)
    }

    async fn head(&self) -> Result<i64, StoreError> {
        dispatch!(self, s => s.head().await)
    }
}

impl ReadModels for Store {
    async fn read_model_rows(&self) -> Result<ReadModelRows, StoreError> {
        dispatch!(self, s => s.read_model_rows().await)
    }

    async fn namespace(&self, id: &str) -> Result<Option<rows::NamespaceRow>, StoreError> {
        dispatch!(self, s => s.namespace(id).await)
    }

    async fn image(&self, id: &str) -> Result<Option<rows::ImageRow>, StoreError> {
        dispatch!(self, s => s.image(id).await)
    }

    async fn image_ids(&self, namespace_id: &str) -> Result<Vec<String>, StoreError> {
        dispatch!(self, s => s.image_ids(namespace_id).await)
    }

    async fn tag(&self, id: &str) -> Result<Option<rows::TagRow>, StoreError> {
        dispatch!(self, s => s.tag(id).await)
    }

    async fn list_namespaces(
        &self,
        query: &NamespaceQuery,
    ) -> Result<Page<rows::NamespaceRow>, StoreError> {
        dispatch!(self, s => s.list_namespaces(query).await)
    }

    async fn list_images(&self, query: &ImageQuery) -> Result<Page<ImageView>, StoreError> {
        dispatch!(self, s => s.list_images(query).await)
    }

    async fn image_view(&self, id: &str) -> Result<Option<ImageView>, StoreError> {
        dispatch!(self, s => s.image_view(id).await)
    }

    async fn list_tags(&self, query: &TagQuery) -> Result<Page<rows::TagRow>, StoreError> {
        dispatch!(self, s => s.list_tags(query).await)
    }

    async fn list_manifests(
        &self,
        query: &ManifestQuery,
    ) -> Result<Result<Vec<ManifestView>, CursorError>, StoreError> {
        dispatch!(self, s => s.list_manifests(query).await)
    }

    async fn manifest_view(&self, seq: i64) -> Result<Option<ManifestView>, StoreError> {
        dispatch!(self, s => s.manifest_view(seq).await)
    }

    async fn job(&self, id: &str) -> Result<Option<rows::JobDescriptorRow>, StoreError> {
        dispatch!(self, s => s.job(id).await)
    }

    async fn job_by_idempotency_key(
        &self,
        key: &str,
    ) -> Result<Option<rows::JobDescriptorRow>, StoreError> {
        dispatch!(self, s => s.job_by_idempotency_key(key).await)
    }

    async fn unfinished_jobs(
        &self,
        changed_before: &str,
        limit: i64,
    ) -> Result<Vec<rows::JobDescriptorRow>, StoreError> {
        dispatch!(self, s => s.unfinished_jobs(changed_before, limit).await)
    }

    async fn list_jobs(
        &self,
        query: &JobQuery,
    ) -> Result<Page<rows::JobDescriptorRow>, StoreError> {
        dispatch!(self, s => s.list_jobs(query).await)
    }

    async fn any_token(&self) -> Result<bool, StoreError> {
        dispatch!(self, s => s.any_token().await)
    }

    async fn token_by_hash(
        &self,
        secret_hash: &str,
    ) -> Result<Option<rows::ApiTokenRow>, StoreError> {
        dispatch!(self, s => s.token_by_hash(secret_hash).await)
    }
}

/// A page of a list and the number of rows matching its filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total_count: i64,
}

/// Sort keys of Scaleway-style lists; every order ends with the row id so pages are stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    CreatedAt,
    Name,
    Description,
    Status,
    Region,
}

impl SortKey {
    fn column(self) -> &'static str {
        match self {
            SortKey::CreatedAt => "created_at",
            SortKey::Name => "name",
            SortKey::Description => "description",
            SortKey::Status => "status",
            SortKey::Region => "region",
        }
    }
}

/// Filters and page of a namespace list. `limit`/`offset` are already validated.
#[derive(Debug, Clone, Default)]
pub struct NamespaceQuery {
    pub region: String,
    pub name: Option<String>,
    pub project_id: Option<String>,
    pub organization_id: Option<String>,
    pub sort: Option<(SortKey, bool)>,
    pub limit: i64,
    pub offset: i64,
}

/// Filters and page of an image list (images of the region's namespaces).
#[derive(Debug, Clone, Default)]
pub struct ImageQuery {
    pub region: String,
    pub name: Option<String>,
    pub namespace_id: Option<String>,
    pub project_id: Option<String>,
    pub organization_id: Option<String>,
    pub sort: Option<(SortKey, bool)>,
    pub limit: i64,
    pub offset: i64,
}

/// Filters and page of one image's tags.
#[derive(Debug, Clone, Default)]
pub struct TagQuery {
    pub image_id: String,
    pub name: Option<String>,
    pub sort: Option<(SortKey, bool)>,
    pub limit: i64,
    pub offset: i64,
}

/// Sort keys of job lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JobSort {
    #[default]
    CreatedAt,
    UpdatedAt,
    State,
    Kind,
}

impl JobSort {
    fn column(self) -> &'static str {
        match self {
            JobSort::CreatedAt => "created_at",
            JobSort::UpdatedAt => "updated_at",
            JobSort::State => "state",
            JobSort::Kind => "kind",
        }
    }
}

/// Filters and page of a job list: any of `states`, any of `kinds` (empty: all), one project.
#[derive(Debug, Clone, Default)]
pub struct JobQuery {
    pub states: Vec<String>,
    pub kinds: Vec<String>,
    /// Only jobs of this project (a scoped token's list).
    pub project_id: Option<String>,
    pub sort: JobSort,
    pub desc: bool,
    pub limit: i64,
    pub offset: i64,
}

/// An image with what its listings show beside the row: its tag names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageView {
    pub image: rows::ImageRow,
    pub tags: Vec<String>,
}

/// Sort keys of manifest listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKey {
    /// The repository name (`namespace/image`).
    Name,
    Digest,
    CreatedAt,
}

/// A manifest listing: filters, order and a keyset cursor (the `seq` of the last row of the
/// previous page), so a page costs the same however deep it is, and rows inserted between
/// pages neither shift nor repeat it.
#[derive(Debug, Clone, Default)]
pub struct ManifestQuery {
    pub namespace_id: Option<String>,
    pub project_id: Option<String>,
    /// (namespace name, image name)
    pub repository: Option<(String, String)>,
    /// Keys and whether each is descending; `seq` ascending breaks ties.
    pub order: Vec<(ManifestKey, bool)>,
    pub after_seq: Option<i64>,
    pub limit: i64,
}

/// One manifest as listings show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestView {
    pub manifest: rows::ManifestRow,
    pub namespace_name: String,
    pub image_name: String,
    /// The project the manifest's namespace belongs to.
    pub project_id: String,
    pub layers: Vec<rows::ManifestLayerRow>,
    pub tags: Vec<String>,
    /// What the manifest is attached to, if it is an attachment (design §11).
    pub attached_to: Option<crate::domain::retention::AttachedTo>,
}

/// Why a manifest cursor could not be followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorError {
    /// The row the cursor points at was deleted; the listing must restart.
    Gone,
}
