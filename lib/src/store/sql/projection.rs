// Inline projections: each event updates the read models inside the append transaction.
// Sizes move by reference counts: a blob adds its size when its first reference appears and
// removes it when its last one goes; nothing is ever summed by scanning.
// Included by `backend.rs` once per backend.

use std::collections::BTreeMap;

use crate::domain::event::{ManifestRecorded, TagPushed};
use crate::domain::image::distinct_blobs;
use crate::domain::streams;
use crate::store::rows::{STATUS_DELETING, STATUS_READY};

/// Applies `events`, appended to `stream_id` after version `base` at log positions from
/// `first`, recorded at `at`.
///
/// Runs of tag pushes are written with one statement per run, runs of tag and manifest
/// deletions with a few statements per run, and the image row (size, version, time) is
/// updated once for the whole batch: a batch of 100 pushes or of 100 deletions costs a few
/// statements, not a hundred.
async fn project_batch(
    conn: &mut Conn,
    stream_id: &str,
    base: i64,
    first: i64,
    events: &[DomainEvent],
    at: &str,
) -> Result<(), StoreError> {
    let image_id = stream_id.strip_prefix(streams::IMAGE).unwrap_or_default();
    let mut image_change: Option<i64> = None;
    let mut pushes: Vec<(&TagPushed, i64)> = Vec::new();
    let mut records: Vec<(&ManifestRecorded, i64)> = Vec::new();
    let mut deletes = Deletions {
        image_id,
        ..Deletions::default()
    };
    for (i, event) in events.iter().enumerate() {
        let version = base + i as i64 + 1;
        match event {
            // Recorded manifests and pushed tags do not depend on each other's rows: both
            // runs go on across the other kind.
            DomainEvent::TagPushed(t) => {
                *image_change.get_or_insert(0) += deletes.flush(conn).await?;
                pushes.push((t, version));
                continue;
            }
            DomainEvent::ManifestRecorded(m) => {
                *image_change.get_or_insert(0) += deletes.flush(conn).await?;
                records.push((m, first + i as i64));
                continue;
            }
            DomainEvent::TagDeleted(t) => {
                upsert_tags(conn, image_id, &mut pushes, at).await?;
                *image_change.get_or_insert(0) +=
                    record_manifests(conn, image_id, &mut records, at).await?;
                deletes.tags.push(&t.tag_id);
                continue;
            }
            DomainEvent::ManifestDeleted(d) => {
                upsert_tags(conn, image_id, &mut pushes, at).await?;
                *image_change.get_or_insert(0) +=
                    record_manifests(conn, image_id, &mut records, at).await?;
                deletes.manifests.push(&d.digest);
                continue;
            }
            _ => {}
        }
        upsert_tags(conn, image_id, &mut pushes, at).await?;
        if !records.is_empty() {
            *image_change.get_or_insert(0) +=
                record_manifests(conn, image_id, &mut records, at).await?;
        }
        // Only a run of deletions changes the image here: an event of another stream (a
        // job's, a namespace's) leaves the image row alone.
        if !deletes.is_empty() {
            *image_change.get_or_insert(0) += deletes.flush(conn).await?;
        }
        let position = first + i as i64;
        if let Some(delta) = project(conn, stream_id, version, position, event, at).await? {
            *image_change.get_or_insert(0) += delta;
        }
    }
    if !pushes.is_empty() || !records.is_empty() {
        image_change.get_or_insert(0);
    }
    upsert_tags(conn, image_id, &mut pushes, at).await?;
    if let Some(change) = image_change.as_mut() {
        *change += record_manifests(conn, image_id, &mut records, at).await?;
    }
    let freed = deletes.flush(conn).await?;
    if let Some(delta) = image_change {
        touch_image(
            conn,
            image_id,
            delta + freed,
            base + events.len() as i64,
            at,
        )
        .await?;
    }
    Ok(())
}

/// A run of tag and manifest deletions of one image, written together. Within a run the
/// order does not matter: tag rows and manifest rows do not depend on each other, and each
/// manifest is deleted at most once.
#[derive(Default)]
struct Deletions<'a> {
    image_id: &'a str,
    tags: Vec<&'a str>,
    manifests: Vec<&'a str>,
}

/// Digests per statement in a deletion run (well under both backends' bind limits: a
/// digest may go with its owner's id, two values each).
const DIGESTS_PER_STATEMENT: usize = 1_000;

impl<'a> Deletions<'a> {
    /// An append made only of tag and manifest deletions of an image (a prune's or a bulk
    /// delete's): its run, which the writer may write together with other images' runs.
    fn of_append(stream_id: &'a str, events: &'a [DomainEvent]) -> Option<Deletions<'a>> {
        let image_id = stream_id.strip_prefix(streams::IMAGE)?;
        if events.is_empty() {
            return None;
        }
        let mut run = Deletions {
            image_id,
            ..Deletions::default()
        };
        for event in events {
            match event {
                DomainEvent::TagDeleted(t) => run.tags.push(&t.tag_id),
                DomainEvent::ManifestDeleted(d) => run.manifests.push(&d.digest),
                _ => return None,
            }
        }
        Some(run)
    }

    fn is_empty(&self) -> bool {
        self.tags.is_empty() && self.manifests.is_empty()
    }

    /// Writes the run and empties it; returns how much the image's size changed.
    async fn flush(&mut self, conn: &mut Conn) -> Result<i64, StoreError> {
        if self.is_empty() {
            return Ok(0);
        }
        let delta = delete_runs(conn, std::slice::from_ref(self)).await?[0];
        self.tags.clear();
        self.manifests.clear();
        Ok(delta)
    }
}

/// Writes several images' runs of deletions with one set of statements for all of them
/// (chunked by [`DIGESTS_PER_STATEMENT`]); returns each run's change in its image's size.
/// A prune's images are written a group at a time this way, so the writer's round trips
/// per group do not grow with the images in it.
async fn delete_runs(conn: &mut Conn, runs: &[Deletions<'_>]) -> Result<Vec<i64>, StoreError> {
    let tags: Vec<&str> = runs.iter().flat_map(|r| r.tags.iter().copied()).collect();
    for chunk in tags.chunks(DIGESTS_PER_STATEMENT) {
        let mut q = QueryBuilder::<Db>::new("DELETE FROM tags WHERE id IN (");
        push_list(&mut q, chunk);
        q.build().execute(&mut *conn).await?;
    }
    let manifests: Vec<(&str, &str)> = runs
        .iter()
        .flat_map(|r| r.manifests.iter().map(|d| (r.image_id, *d)))
        .collect();
    let mut removed: HashMap<String, i64> = HashMap::new();
    for chunk in manifests.chunks(DIGESTS_PER_STATEMENT) {
        for (image_id, bytes) in delete_manifests(conn, chunk).await? {
            *removed.entry(image_id).or_default() += bytes;
        }
    }
    Ok(runs
        .iter()
        .map(|r| -removed.get(r.image_id).copied().unwrap_or(0))
        .collect())
}

/// Consecutive appends of a group that only delete tags and manifests (see
/// [`Deletions::of_append`]), each with the image version it moves to, written together.
#[derive(Default)]
struct GroupDeletions<'a> {
    runs: Vec<Deletions<'a>>,
    versions: Vec<i64>,
}

impl<'a> GroupDeletions<'a> {
    fn push(&mut self, run: Deletions<'a>, version: i64) {
        self.runs.push(run);
        self.versions.push(version);
    }

    /// Writes the runs gathered and their images' rows, and empties the list.
    async fn flush(&mut self, conn: &mut Conn, at: &str) -> Result<(), StoreError> {
        if self.runs.is_empty() {
            return Ok(());
        }
        let deltas = delete_runs(conn, &self.runs).await?;
        let changes: Vec<(&str, i64, i64)> = self
            .runs
            .iter()
            .zip(deltas)
            .zip(&self.versions)
            .map(|((run, delta), version)| (run.image_id, delta, *version))
            .collect();
        touch_images(conn, &changes, at).await?;
        self.runs.clear();
        self.versions.clear();
        Ok(())
    }
}

/// Pushes the condition that `(owner_column, digest_column)` is one of `keys`: with a single
/// owner, `owner = $ AND digest IN (…)` (one index range); otherwise a row-value list.
fn push_keys(
    q: &mut QueryBuilder<Db>,
    owner_column: &str,
    digest_column: &str,
    keys: &[(&str, &str)],
) {
    let owner = keys[0].0;
    if keys.iter().all(|(o, _)| *o == owner) {
        q.push(format!("{owner_column} = "))
            .push_bind(owner.to_owned())
            .push(format!(" AND {digest_column} IN ("));
        let digests: Vec<&str> = keys.iter().map(|(_, d)| *d).collect();
        push_list(q, &digests);
        return;
    }
    q.push(format!("({owner_column}, {digest_column}) IN (VALUES "));
    let mut list = q.separated(", ");
    for (owner, digest) in keys {
        list.push("(")
            .push_bind_unseparated((*owner).to_owned())
            .push_unseparated(", ")
            .push_bind_unseparated((*digest).to_owned())
            .push_unseparated(")");
    }
    list.push_unseparated(")");
}

/// Adds each `(image, size change, version)` to its image's size and marks it changed at
/// that version, in one statement (images gone are left alone).
async fn touch_images(
    conn: &mut Conn,
    changes: &[(&str, i64, i64)],
    at: &str,
) -> Result<(), StoreError> {
    if let [(image_id, delta, version)] = changes {
        return touch_image(conn, image_id, *delta, *version, at).await;
    }
    for chunk in changes.chunks(DIGESTS_PER_STATEMENT) {
        let mut q = QueryBuilder::<Db>::new(
            "UPDATE images SET size = size + v.column2, version = v.column3, updated_at = ",
        );
        q.push_bind(at.to_owned()).push(" FROM (VALUES ");
        let mut list = q.separated(", ");
        for (image_id, delta, version) in chunk {
            list.push("(")
                .push_bind_unseparated((*image_id).to_owned())
                .push_unseparated(", ")
                .push_bind_unseparated(*delta)
                .push_unseparated(", ")
                .push_bind_unseparated(*version)
                .push_unseparated(")");
        }
        q.push(") AS v WHERE images.id = v.column1");
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Pushes `(v1, v2, …)` as bound values, closing the parenthesis.
fn push_list(q: &mut QueryBuilder<Db>, values: &[&str]) {
    let mut list = q.separated(", ");
    for v in values {
        list.push_bind((*v).to_owned());
    }
    list.push_unseparated(")");
}

/// Writes a run of tag pushes (new tags or moves) in one statement and empties `pushes`.
/// A tag pushed twice in the run keeps its last push (one statement may not update a row
/// twice).
async fn upsert_tags(
    conn: &mut Conn,
    image_id: &str,
    pushes: &mut Vec<(&TagPushed, i64)>,
    at: &str,
) -> Result<(), StoreError> {
    if pushes.is_empty() {
        return Ok(());
    }
    let mut last: HashMap<&str, usize> = HashMap::with_capacity(pushes.len());
    for (i, (t, _)) in pushes.iter().enumerate() {
        last.insert(&t.tag_id, i);
    }
    let kept: Vec<&(&TagPushed, i64)> = pushes
        .iter()
        .enumerate()
        .filter(|(i, (t, _))| last[t.tag_id.as_str()] == *i)
        .map(|(_, push)| push)
        .collect();
    for chunk in kept.chunks(ROWS_PER_INSERT) {
        let mut insert = QueryBuilder::<Db>::new(
            "INSERT INTO tags (id, image_id, name, digest, created_at, updated_at, pushed_version) ",
        );
        insert.push_values(chunk, |mut row, (t, version)| {
            // When it moved in its source registry, if that is known; else now.
            let pushed_at = t.pushed_at.as_deref().unwrap_or(at);
            row.push_bind(t.tag_id.clone())
                .push_bind(image_id.to_owned())
                .push_bind(t.name.clone())
                .push_bind(t.digest.clone())
                .push_bind(pushed_at.to_owned())
                .push_bind(pushed_at.to_owned())
                .push_bind(*version);
        });
        insert.push(
            " ON CONFLICT (id) DO UPDATE SET digest = excluded.digest, \
             updated_at = excluded.updated_at, pushed_version = excluded.pushed_version",
        );
        insert.build().execute(&mut *conn).await?;
    }
    pushes.clear();
    Ok(())
}

/// Applies one event of `stream_id`, which has become version `version`, recorded at `at`.
/// Returns how much the event changed its image's size, when it changed the image: the
/// caller applies the sum of those, with the last version and time, once per append (see
/// [`touch_image`]), so a batch of tag pushes costs one image update, not one per tag.
async fn project(
    conn: &mut Conn,
    stream_id: &str,
    version: i64,
    position: i64,
    event: &DomainEvent,
    at: &str,
) -> Result<Option<i64>, StoreError> {
    let namespace_id = stream_id
        .strip_prefix(streams::NAMESPACE)
        .unwrap_or_default();
    let image_id = stream_id.strip_prefix(streams::IMAGE).unwrap_or_default();
    match event {
        DomainEvent::NamespaceCreated(c) => {
            sqlx::query(
                "INSERT INTO namespaces (id, name, region, description, organization_id, \
                 project_id, is_public, status, size, stored_size, image_count, created_at, \
                 updated_at, version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, 0, 0, $9, $10, $11)",
            )
            .bind(&c.namespace_id)
            .bind(&c.name)
            .bind(&c.region)
            .bind(&c.description)
            .bind(&c.organization_id)
            .bind(&c.project_id)
            .bind(c.is_public)
            .bind(STATUS_READY)
            .bind(at)
            .bind(at)
            .bind(version)
            .execute(&mut *conn)
            .await?;
        }
        DomainEvent::NamespaceUpdated(u) => {
            sqlx::query(
                "UPDATE namespaces SET description = COALESCE($1, description), \
                 is_public = COALESCE($2, is_public), updated_at = $3, version = $4 WHERE id = $5",
            )
            .bind(&u.description)
            .bind(u.is_public)
            .bind(at)
            .bind(version)
            .bind(namespace_id)
            .execute(&mut *conn)
            .await?;
        }
        DomainEvent::NamespaceBackendSet(_) => {
            // Not in the read model (workers fold the namespace's stream); the row's version
            // follows its stream.
            sqlx::query("UPDATE namespaces SET updated_at = $1, version = $2 WHERE id = $3")
                .bind(at)
                .bind(version)
                .bind(namespace_id)
                .execute(&mut *conn)
                .await?;
        }
        DomainEvent::NamespaceDeleted => {
            // Images reference their namespace: deleting one that still has images fails.
            sqlx::query("DELETE FROM namespaces WHERE id = $1")
                .bind(namespace_id)
                .execute(&mut *conn)
                .await?;
        }
        DomainEvent::ImageCreated(c) => {
            let inserted = sqlx::query(
                "INSERT INTO images (id, namespace_id, region, project_id, organization_id, \
                 name, visibility, status, size, created_at, updated_at, version) \
                 SELECT $1, n.id, n.region, n.project_id, n.organization_id, $2, $3, $4, 0, \
                 $5, $6, $7 FROM namespaces n WHERE n.id = $8",
            )
            .bind(&c.image_id)
            .bind(&c.name)
            .bind(&c.visibility)
            .bind(STATUS_READY)
            .bind(at)
            .bind(at)
            .bind(version)
            .bind(&c.namespace_id)
            .execute(&mut *conn)
            .await?;
            if inserted.rows_affected() == 0 {
                return Err(StoreError::Reference {
                    message: format!("namespace {} does not exist", c.namespace_id),
                });
            }
            sqlx::query("UPDATE namespaces SET image_count = image_count + 1 WHERE id = $1")
                .bind(&c.namespace_id)
                .execute(&mut *conn)
                .await?;
        }
        DomainEvent::ImageUpdated(u) => {
            sqlx::query("UPDATE images SET visibility = $1 WHERE id = $2")
                .bind(&u.visibility)
                .bind(image_id)
                .execute(&mut *conn)
                .await?;
            return Ok(Some(0));
        }
        DomainEvent::NamespaceDeletionRequested(_) => {
            sqlx::query(
                "UPDATE namespaces SET status = $1, updated_at = $2, version = $3 WHERE id = $4",
            )
            .bind(STATUS_DELETING)
            .bind(at)
            .bind(version)
            .bind(namespace_id)
            .execute(&mut *conn)
            .await?;
        }
        DomainEvent::ImageDeletionRequested(_) => {
            sqlx::query("UPDATE images SET status = $1 WHERE id = $2")
                .bind(STATUS_DELETING)
                .bind(image_id)
                .execute(&mut *conn)
                .await?;
            return Ok(Some(0));
        }
        DomainEvent::ImageDeleted => {
            // Its tags and manifests were deleted by the events before this one, so its size
            // is already zero.
            let namespace: Option<String> =
                sqlx::query_scalar("DELETE FROM images WHERE id = $1 RETURNING namespace_id")
                    .bind(image_id)
                    .fetch_optional(&mut *conn)
                    .await?;
            sqlx::query("UPDATE namespaces SET image_count = image_count - 1 WHERE id = $1")
                .bind(namespace)
                .execute(&mut *conn)
                .await?;
        }
        DomainEvent::ManifestRecorded(m) => {
            return record_manifests(conn, image_id, &mut vec![(m, position)], at)
                .await
                .map(Some);
        }
        // Written in runs by `project_batch`.
        DomainEvent::ManifestDeleted(_) | DomainEvent::TagDeleted(_) => {}
        DomainEvent::TagPushed(t) => {
            upsert_tags(conn, image_id, &mut vec![(t, version)], at).await?;
            return Ok(Some(0));
        }
        DomainEvent::TokenCreated(t) => {
            sqlx::query(
                "INSERT INTO api_tokens (id, name, secret_hash, capabilities, project_id, \
                 created_at) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&t.token_id)
            .bind(&t.name)
            .bind(&t.secret_hash)
            .bind(t.capabilities.join(","))
            .bind(&t.project_id)
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        DomainEvent::JobAccepted(_)
        | DomainEvent::JobStarted(_)
        | DomainEvent::JobProgressed(_)
        | DomainEvent::JobSucceeded(_)
        | DomainEvent::JobRetried(_)
        | DomainEvent::JobFailed(_)
        | DomainEvent::JobCancelRequested(_)
        | DomainEvent::JobCancelled(_) => {
            let job_id = stream_id.strip_prefix(streams::JOB).unwrap_or_default();
            project_job(conn, job_id, version, event, at).await?;
        }
        DomainEvent::PolicyCreated(c) => {
            sqlx::query(
                "INSERT INTO prune_policies (id, name, namespace_id, body, enabled, schedule, \
                 timezone, created_at, updated_at, version) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9)",
            )
            .bind(&c.policy_id)
            .bind(&c.body.name)
            .bind(&c.body.namespace_id)
            .bind(policy_body(&c.body))
            .bind(c.body.enabled)
            .bind(&c.body.schedule)
            .bind(&c.body.timezone)
            .bind(at)
            .bind(version)
            .execute(&mut *conn)
            .await?;
        }
        DomainEvent::PolicyUpdated(u) => {
            let policy_id = stream_id.strip_prefix(streams::POLICY).unwrap_or_default();
            sqlx::query(
                "UPDATE prune_policies SET name = $2, namespace_id = $3, body = $4, enabled = $5, \
                 schedule = $6, timezone = $7, updated_at = $8, version = $9 WHERE id = $1",
            )
            .bind(policy_id)
            .bind(&u.body.name)
            .bind(&u.body.namespace_id)
            .bind(policy_body(&u.body))
            .bind(u.body.enabled)
            .bind(&u.body.schedule)
            .bind(&u.body.timezone)
            .bind(at)
            .bind(version)
            .execute(&mut *conn)
            .await?;
        }
        DomainEvent::PolicyDeleted => {
            let policy_id = stream_id.strip_prefix(streams::POLICY).unwrap_or_default();
            sqlx::query("DELETE FROM prune_policies WHERE id = $1")
                .bind(policy_id)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(None)
}

fn policy_body(body: &crate::domain::policy::PolicySpec) -> String {
    serde_json::to_string(body).unwrap_or_default()
}

/// Moves a job's descriptor along with its stream.
async fn project_job(
    conn: &mut Conn,
    job_id: &str,
    version: i64,
    event: &DomainEvent,
    at: &str,
) -> Result<(), StoreError> {
    use crate::domain::job::JobState;
    if let Some(update) = JobUpdate::of(job_id, version, event) {
        return write_job_updates(conn, at, std::slice::from_ref(&update)).await;
    }
    let DomainEvent::JobAccepted(a) = event else {
        return Ok(());
    };
    if a.kind == crate::domain::job::JobKind::Prune
        && let Some(policy_id) = a.input["policy_id"].as_str()
    {
        // The newest run of the policy (job ids are time-ordered).
        sqlx::query(
            "UPDATE prune_policies SET last_run_job_id = $2 \
             WHERE id = $1 AND (last_run_job_id IS NULL OR last_run_job_id < $2)",
        )
        .bind(policy_id)
        .bind(&a.job_id)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query(
        "INSERT INTO job_descriptors (id, kind, state, caption, creator, input, \
         attempts, progress_done, progress_total, cancel_requested, idempotency_key, \
         created_at, updated_at, version, project_id) \
         VALUES ($1, $2, $3, $4, $5, $6, 0, 0, 0, FALSE, $7, $8, $9, $10, $11)",
    )
    .bind(&a.job_id)
    .bind(a.kind.as_str())
    .bind(JobState::Queued.as_str())
    .bind(&a.caption)
    .bind(&a.creator)
    .bind(a.input.to_string())
    .bind(&a.idempotency_key)
    .bind(at)
    .bind(at)
    .bind(version)
    .bind(&a.project_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// What one job event changes in its descriptor row, as a `SET` clause over a row `u` of
/// values (`u.job`, `u.v`, then the event's own `u.a1`…) and the append's time `t.at`.
/// Events of one kind share
/// their clause, so the writer updates every job of a group that took the same step in one
/// statement ([`write_job_updates`]).
#[derive(Debug)]
struct JobUpdate {
    set: &'static str,
    job_id: String,
    version: i64,
    args: Vec<JobArg>,
}

/// A value of a [`JobUpdate`]'s row.
#[derive(Debug)]
enum JobArg {
    Text(String),
    Int(i64),
}

impl JobUpdate {
    /// The change `event` makes to job `job_id`'s descriptor; `None` for `job.accepted`
    /// (which inserts the row) and for events that are not a job's.
    fn of(job_id: &str, version: i64, event: &DomainEvent) -> Option<JobUpdate> {
        use crate::domain::job::JobState;
        use JobArg::{Int, Text};
        let state = |s: JobState| Text(s.as_str().to_owned());
        let (set, args) = match event {
            DomainEvent::JobStarted(s) => (
                "state = u.a1, attempts = u.a2, next_retry_at = NULL, \
                 started_at = COALESCE(started_at, t.at)",
                vec![state(JobState::Running), Int(s.attempt)],
            ),
            DomainEvent::JobProgressed(p) => (
                "progress_done = u.a1, progress_total = u.a2, progress_step = u.a3",
                vec![Int(p.done), Int(p.total), Text(p.step.clone())],
            ),
            DomainEvent::JobSucceeded(s) => (
                "state = u.a1, output = u.a2, completed_at = t.at",
                vec![state(JobState::Completed), Text(s.output.to_string())],
            ),
            DomainEvent::JobRetried(r) => (
                "state = u.a1, last_error = u.a2, next_retry_at = u.a3",
                vec![
                    state(JobState::Scheduled),
                    Text(r.error.clone()),
                    Text(r.retry_at.clone()),
                ],
            ),
            DomainEvent::JobFailed(f) => (
                "state = u.a1, last_error = u.a2, completed_at = t.at",
                vec![state(JobState::Error), Text(f.error.clone())],
            ),
            DomainEvent::JobCancelRequested(_) => ("cancel_requested = TRUE", vec![]),
            DomainEvent::JobCancelled(_) => (
                "state = u.a1, completed_at = t.at",
                vec![state(JobState::Cancelled)],
            ),
            _ => return None,
        };
        Some(JobUpdate {
            set,
            job_id: job_id.to_owned(),
            version,
            args,
        })
    }
}

/// The descriptor change of an append of one job event, which the writer may hold back and
/// write with the group's others of its kind: nothing else in the append transaction reads
/// descriptor rows, and a group touches each job's row once.
fn deferred_job_update(stream_id: &str, base: i64, events: &[DomainEvent]) -> Option<JobUpdate> {
    let job_id = stream_id.strip_prefix(streams::JOB)?;
    match events {
        [event] => JobUpdate::of(job_id, base + 1, event),
        _ => None,
    }
}

/// Descriptor rows updated per statement at most (5 values each).
const JOB_UPDATES_PER_STATEMENT: usize = 1000;

/// Writes `updates`, which share one `SET` clause and touch distinct jobs, made at `at`, in
/// one statement per [`JOB_UPDATES_PER_STATEMENT`].
async fn write_job_updates(
    conn: &mut Conn,
    at: &str,
    updates: &[JobUpdate],
) -> Result<(), StoreError> {
    for chunk in updates.chunks(JOB_UPDATES_PER_STATEMENT) {
        let first = &chunk[0];
        debug_assert!(chunk.iter().all(|u| u.set == first.set));
        let mut q = QueryBuilder::<Db>::new("WITH t(at) AS (SELECT ");
        q.push_bind(at.to_owned()).push("), u(job, v");
        for i in 1..=first.args.len() {
            q.push(format!(", a{i}"));
        }
        q.push(") AS (");
        q.push_values(chunk, |mut row, u| {
            row.push_bind(u.job_id.clone()).push_bind(u.version);
            for arg in &u.args {
                match arg {
                    JobArg::Text(t) => row.push_bind(t.clone()),
                    JobArg::Int(n) => row.push_bind(*n),
                };
            }
        });
        q.push(") UPDATE job_descriptors SET ")
            .push(first.set)
            .push(", updated_at = t.at, version = u.v FROM u, t WHERE job_descriptors.id = u.job");
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Adds `size_delta` to the image's size and marks it changed at `version` (a no-op when the
/// image row is gone).
async fn touch_image(
    conn: &mut Conn,
    image_id: &str,
    size_delta: i64,
    version: i64,
    at: &str,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE images SET size = size + $1, updated_at = $2, version = $3 WHERE id = $4")
        .bind(size_delta)
        .bind(at)
        .bind(version)
        .bind(image_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn namespace_of(conn: &mut Conn, image_id: &str) -> Result<String, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT namespace_id FROM images WHERE id = $1")
            .bind(image_id)
            .fetch_one(&mut *conn)
            .await?,
    )
}

async fn add_to_namespace(
    conn: &mut Conn,
    namespace_id: &str,
    size_delta: i64,
    stored_delta: i64,
) -> Result<(), StoreError> {
    if size_delta == 0 && stored_delta == 0 {
        return Ok(());
    }
    sqlx::query(
        "UPDATE namespaces SET size = size + $1, stored_size = stored_size + $2 WHERE id = $3",
    )
    .bind(size_delta)
    .bind(stored_delta)
    .bind(namespace_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Rows per statement when a run of recorded manifests is written.
const MANIFESTS_PER_STATEMENT: usize = 500;

/// Writes a run of recorded manifests (each with the log position of its event) and empties
/// it: their rows, layer and child rows, and their blobs' references, counted per image and
/// per namespace. A blob adds its size to the image when its first reference appears, and
/// to the namespace's stored bytes when no image of it had it. A few statements per run,
/// whatever its length. Returns how much the image's size grew.
async fn record_manifests(
    conn: &mut Conn,
    image_id: &str,
    run: &mut Vec<(&ManifestRecorded, i64)>,
    at: &str,
) -> Result<i64, StoreError> {
    if run.is_empty() {
        return Ok(0);
    }
    // References per blob: one per manifest that lists it (once however often it lists it).
    let mut refs: std::collections::BTreeMap<&str, (i64, i64)> = Default::default();
    for (m, _) in run.iter() {
        for blob in distinct_blobs(m) {
            let entry = refs.entry(&blob.digest).or_insert((blob.size, 0));
            if entry.0 != blob.size {
                return Err(StoreError::BlobSize {
                    digest: blob.digest.clone(),
                    stored: entry.0,
                    given: blob.size,
                });
            }
            entry.1 += 1;
        }
    }
    for chunk in run.chunks(MANIFESTS_PER_STATEMENT) {
        let mut insert = QueryBuilder::<Db>::new(
            "INSERT INTO manifests (image_id, digest, media_type, platform, config_digest, \
             config_size, config_media_type, blobs_size, created_at, seq, layers_packed, \
             subject, artifact_type) ",
        );
        insert.push_values(chunk, |mut row, (m, position)| {
            row.push_bind(image_id.to_owned())
                .push_bind(m.digest.clone())
                .push_bind(m.media_type.clone())
                .push_bind(m.platform.clone())
                .push_bind(m.config.as_ref().map(|b| b.digest.clone()))
                .push_bind(m.config.as_ref().map(|b| b.size))
                .push_bind(m.config.as_ref().map(|b| b.media_type.clone()))
                .push_bind(distinct_blobs(m).iter().map(|b| b.size).sum::<i64>())
                // The image's creation time, when the manifest says; else now.
                .push_bind(m.created.clone().unwrap_or_else(|| at.to_owned()))
                .push_bind(*position)
                .push_bind(crate::store::plans::pack_layers(&m.layers))
                .push_bind(m.subject.clone())
                .push_bind(m.artifact_type.clone());
        });
        insert.build().execute(&mut *conn).await?;
    }
    let layers: Vec<(&str, usize, &crate::domain::event::Blob)> = run
        .iter()
        .flat_map(|(m, _)| {
            m.layers
                .iter()
                .enumerate()
                .map(|(idx, layer)| (m.digest.as_str(), idx, layer))
        })
        .collect();
    for chunk in layers.chunks(MANIFESTS_PER_STATEMENT) {
        let mut insert = QueryBuilder::<Db>::new(
            "INSERT INTO manifest_layers (image_id, manifest_digest, idx, digest, size, media_type) ",
        );
        insert.push_values(chunk, |mut row, (manifest, idx, layer)| {
            row.push_bind(image_id.to_owned())
                .push_bind((*manifest).to_owned())
                .push_bind(*idx as i64)
                .push_bind(layer.digest.clone())
                .push_bind(layer.size)
                .push_bind(layer.media_type.clone());
        });
        insert.build().execute(&mut *conn).await?;
    }
    let children: Vec<(&str, usize, &str)> = run
        .iter()
        .flat_map(|(m, _)| {
            m.children
                .iter()
                .enumerate()
                .map(|(idx, child)| (m.digest.as_str(), idx, child.as_str()))
        })
        .collect();
    for chunk in children.chunks(MANIFESTS_PER_STATEMENT) {
        let mut insert = QueryBuilder::<Db>::new(
            "INSERT INTO manifest_children (image_id, parent_digest, idx, child_digest) ",
        );
        insert.push_values(chunk, |mut row, (parent, idx, child)| {
            row.push_bind(image_id.to_owned())
                .push_bind((*parent).to_owned())
                .push_bind(*idx as i64)
                .push_bind((*child).to_owned());
        });
        insert.build().execute(&mut *conn).await?;
    }
    run.clear();

    // The image's references; a blob is new to the image when its count is all this run's.
    let refs: Vec<(&str, i64, i64)> = refs.into_iter().map(|(d, (s, n))| (d, s, n)).collect();
    let mut new_to_image: Vec<(String, i64)> = Vec::new();
    for chunk in refs.chunks(MANIFESTS_PER_STATEMENT) {
        let mut upsert =
            QueryBuilder::<Db>::new("INSERT INTO image_blobs (image_id, digest, size, refs) ");
        upsert.push_values(chunk, |mut row, (digest, size, n)| {
            row.push_bind(image_id.to_owned())
                .push_bind((*digest).to_owned())
                .push_bind(*size)
                .push_bind(*n);
        });
        upsert.push(
            " ON CONFLICT (image_id, digest) DO UPDATE SET refs = image_blobs.refs + excluded.refs \
             RETURNING digest, refs",
        );
        let rows = upsert.build().fetch_all(&mut *conn).await?;
        let added: HashMap<&str, (i64, i64)> =
            chunk.iter().map(|(d, s, n)| (*d, (*s, *n))).collect();
        for row in rows {
            let digest: String = row.try_get(0)?;
            let total: i64 = row.try_get(1)?;
            let (size, n) = added[digest.as_str()];
            if total == n {
                new_to_image.push((digest, size));
            }
        }
    }
    let added: i64 = new_to_image.iter().map(|(_, size)| size).sum();
    if new_to_image.is_empty() {
        return Ok(0);
    }
    // The namespace's references: one per image holding the blob.
    let namespace_id = namespace_of(conn, image_id).await?;
    let mut stored_added = 0;
    for chunk in new_to_image.chunks(MANIFESTS_PER_STATEMENT) {
        let mut upsert = QueryBuilder::<Db>::new(
            "INSERT INTO namespace_blobs (namespace_id, digest, size, refs) ",
        );
        upsert.push_values(chunk, |mut row, (digest, size)| {
            row.push_bind(namespace_id.clone())
                .push_bind(digest.clone())
                .push_bind(*size)
                .push_bind(1_i64);
        });
        upsert.push(
            " ON CONFLICT (namespace_id, digest) DO UPDATE SET refs = namespace_blobs.refs + 1 \
             RETURNING digest, refs, size",
        );
        let rows = upsert.build().fetch_all(&mut *conn).await?;
        let given: HashMap<&str, i64> = chunk.iter().map(|(d, s)| (d.as_str(), *s)).collect();
        for row in rows {
            let digest: String = row.try_get(0)?;
            let (refs, stored): (i64, i64) = (row.try_get(1)?, row.try_get(2)?);
            let size = given[digest.as_str()];
            if stored != size {
                // A digest names one content, so one size; a disagreement is bad input.
                return Err(StoreError::BlobSize {
                    digest,
                    stored,
                    given: size,
                });
            }
            if refs == 1 {
                stored_added += size;
            }
        }
    }
    add_to_namespace(conn, &namespace_id, added, stored_added).await?;
    Ok(added)
}

/// Deletes manifests `keys` (each `(image, digest)`) and releases the blobs they held: a
/// blob leaves an image when no remaining manifest of it references it, and leaves the
/// namespace's stored blobs when no image of it does. Returns, per image that lost any,
/// the bytes its size lost.
///
/// The manifest rows' own `layers_packed` and config say which blobs they held, read back
/// as they are deleted: one statement, rather than a read of their layer rows first.
async fn delete_manifests(
    conn: &mut Conn,
    keys: &[(&str, &str)],
) -> Result<HashMap<String, i64>, StoreError> {
    let mut q = QueryBuilder::<Db>::new("DELETE FROM manifests WHERE ");
    push_keys(&mut q, "image_id", "digest", keys);
    // Each image's namespace, and whether each manifest lists children, come back with the
    // rows: round trips fewer on the writer's connection, which every append waits on.
    q.push(
        " RETURNING image_id, digest, config_digest, config_size, layers_packed, \
         (SELECT namespace_id FROM images WHERE images.id = manifests.image_id) \
         AS namespace_id, EXISTS (SELECT 1 FROM manifest_children c \
         WHERE c.image_id = manifests.image_id AND c.parent_digest = manifests.digest) \
         AS has_children",
    );
    let deleted = q.build().fetch_all(&mut *conn).await?;
    let mut any_children = false;
    // Each image's blobs with the number of deleted manifests referencing them (a manifest
    // counts once however often it lists the blob). Sizes come back from the rows released.
    let mut refs: BTreeMap<(&str, String), i64> = BTreeMap::new();
    let mut namespaces: HashMap<&str, String> = HashMap::new();
    for row in &deleted {
        let image_id: &str = row.try_get("image_id")?;
        let digest: &str = row.try_get("digest")?;
        let config: Option<&str> = row.try_get("config_digest")?;
        let config_size: Option<i64> = row.try_get("config_size")?;
        let packed: &str = row.try_get("layers_packed")?;
        any_children |= row.try_get::<bool, _>("has_children")?;
        if !namespaces.contains_key(image_id) {
            let namespace_id: Option<String> = row.try_get("namespace_id")?;
            let namespace_id = namespace_id.ok_or(sqlx::Error::RowNotFound)?;
            namespaces.insert(image_id, namespace_id);
        }
        let unreadable = |e: String| {
            StoreError::unreadable(format!("manifest {digest} of image {image_id}: {e}"))
        };
        let mut blobs: Vec<(&str, i64)> = match (config, config_size) {
            (Some(c), Some(size)) => vec![(c, size)],
            (Some(c), None) => return Err(unreadable(format!("config {c} has no size"))),
            (None, _) => Vec::new(),
        };
        crate::store::plans::unpack_layers(packed, &mut blobs).map_err(unreadable)?;
        blobs.sort_unstable();
        blobs.dedup_by(|a, b| a.0 == b.0);
        for (blob, _) in blobs {
            *refs.entry((image_id, blob.to_owned())).or_default() += 1;
        }
    }
    // Child rows only when a deleted manifest is an index.
    for (table, column, any) in [
        ("manifest_layers", "manifest_digest", true),
        ("manifest_children", "parent_digest", any_children),
    ] {
        if !any {
            continue;
        }
        let mut q = QueryBuilder::<Db>::new(format!("DELETE FROM {table} WHERE "));
        push_keys(&mut q, "image_id", column, keys);
        q.build().execute(&mut *conn).await?;
    }
    let mut removed: HashMap<String, i64> = HashMap::new();
    if refs.is_empty() {
        return Ok(removed);
    }

    let released: Vec<Release> = refs
        .iter()
        .map(|((image_id, digest), &n)| (*image_id, digest.as_str(), n))
        .collect();
    let gone = release(conn, "image_blobs", "image_id", &released).await?;
    // A blob gone from an image drops one reference from its namespace.
    let mut by_namespace: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    // Per namespace: the image bytes and the stored bytes it loses.
    let mut size_change: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for (image_id, digest, size) in &gone {
        *removed.entry(image_id.clone()).or_default() += size;
        let namespace_id = namespaces[image_id.as_str()].as_str();
        size_change.entry(namespace_id).or_default().0 += size;
        *by_namespace
            .entry((namespace_id, digest.as_str()))
            .or_default() += 1;
    }
    if gone.is_empty() {
        return Ok(removed);
    }
    let once: Vec<Release> = by_namespace
        .iter()
        .map(|(&(namespace_id, digest), &n)| (namespace_id, digest, n))
        .collect();
    let stored_gone = release(conn, "namespace_blobs", "namespace_id", &once).await?;
    for (namespace_id, _, size) in &stored_gone {
        // A blob leaves a namespace only when one of its images released it.
        if let Some(change) = size_change.get_mut(namespace_id.as_str()) {
            change.1 += size;
        }
    }
    for (namespace_id, (size, stored)) in size_change {
        add_to_namespace(conn, namespace_id, -size, -stored).await?;
    }
    Ok(removed)
}

/// References to drop: `(owner, blob digest, references)`.
type Release<'a> = (&'a str, &'a str, i64);

/// Drops each `(owner, digest, refs)`'s `refs` references in `table` (`image_blobs` or
/// `namespace_blobs`, keyed by `owner_column`) and removes the rows left at zero; returns
/// those rows as `(owner, digest, size)`.
///
/// Blobs losing the same number of references share their statements: a run usually drops
/// one reference from most blobs and a few more from shared ones, so that is a group or two,
/// each an index lookup per blob. (A per-row `CASE digest WHEN …` over every blob costs a
/// comparison per blob per row, which a prune of hundreds of blobs an image felt.) The
/// distinct counts are few: `k` of them need at least `1 + 2 + … + k` references in all.
///
/// A row losing its last reference is deleted straight away rather than first updated to
/// zero: writing a new row version and its index entry only to delete it cost PostgreSQL
/// about as much as the rest of a prune's projection. Only the blobs still referenced
/// afterwards are updated.
async fn release(
    conn: &mut Conn,
    table: &'static str,
    owner_column: &'static str,
    blobs: &[Release<'_>],
) -> Result<Vec<(String, String, i64)>, StoreError> {
    let mut by_count: BTreeMap<i64, Vec<(&str, &str)>> = BTreeMap::new();
    for &(owner, digest, refs) in blobs {
        by_count.entry(refs).or_default().push((owner, digest));
    }
    let mut gone: Vec<(String, String, i64)> = Vec::new();
    for (refs, keys) in &by_count {
        for chunk in keys.chunks(DIGESTS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Db>::new(format!("DELETE FROM {table} WHERE refs <= "));
            q.push_bind(*refs).push(" AND ");
            push_keys(&mut q, owner_column, "digest", chunk);
            q.push(format!(" RETURNING {owner_column} AS owner, digest, size"));
            let deleted = q.build().fetch_all(&mut *conn).await?;
            let before = gone.len();
            for r in deleted {
                gone.push((
                    r.try_get("owner")?,
                    r.try_get("digest")?,
                    r.try_get("size")?,
                ));
            }
            if gone.len() - before < chunk.len() {
                let went: HashSet<(&str, &str)> = gone[before..]
                    .iter()
                    .map(|(o, d, _)| (o.as_str(), d.as_str()))
                    .collect();
                let left: Vec<(&str, &str)> = chunk
                    .iter()
                    .copied()
                    .filter(|k| !went.contains(k))
                    .collect();
                let mut q = QueryBuilder::<Db>::new(format!("UPDATE {table} SET refs = refs - "));
                q.push_bind(*refs).push(" WHERE ");
                push_keys(&mut q, owner_column, "digest", &left);
                q.build().execute(&mut *conn).await?;
            }
        }
    }
    Ok(gone)
}
