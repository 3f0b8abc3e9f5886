//! Import jobs (design §7): the tags of one repository of an OCI registry into an image, or
//! every repository of a catalog (or a list) into images of a namespace named after them.
//!
//! Tag by tag: the manifest (and, for an index, every child manifest) is fetched and verified
//! against its digest first; only when all of it checks out are the manifests recorded
//! (children before their index) and the tag pushed. So bad content records nothing, and a
//! rerun after a crash records only what is missing (recording a manifest again, or pushing a
//! tag to the digest it has, changes nothing).

use layerline_core::domain::image::Image;
use layerline_core::domain::source::{CatalogImport, CredentialsRef, ImportInput};
use layerline_core::importer::{
    BlobsDone, Copied, Failed, Linked, Verified, client_for, copy, fetch, image_for,
    linked_backend, record_all,
};
use layerline_core::metric;
use layerline_core::oci::Client;
use layerline_core::store::ReadModels;
use serde_json::json;

use crate::runner::{Ctx, Failure, Outcome};

/// Requests in flight per import.
pub(crate) const CONCURRENCY: usize = 8;

pub(crate) fn failure(e: impl Into<Failed>) -> Failure {
    match e.into() {
        Failed::Transient(m) => Failure::Transient(m),
        Failed::Permanent(m) => Failure::Permanent(m),
    }
}

/// Where a backend-linked namespace's images are copied: the backend's client and the
/// repository of the image being imported.
#[derive(Clone)]
struct Target {
    client: Client,
    repository: String,
    /// The blobs this job has copied to `repository` so far.
    blobs: std::sync::Arc<BlobsDone>,
}

/// Verified tags to record into one image, each with its tag.
type Batch = Vec<(Verified, Option<String>)>;

/// One tag to import: where it comes from and the image (and backend) it goes to.
struct Item {
    repo: String,
    tag: String,
    image_id: String,
    target: Option<Target>,
}

/// How often an import stops at a step boundary (progress, cancel): it first waits for what
/// was fetched to be recorded, so a cancel leaves nothing recorded after it.
const BOUNDARY_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Imports `items`, in one pipeline whatever repository each comes from: [`CONCURRENCY`] tags
/// are fetched and verified (and copied to their backend, when there is one) at all times,
/// while a recorder task records what is verified, everything waiting at once in one append
/// per image. Progress counts tags. Returns the manifests recorded now, what the copies did,
/// and the manifests whose stated creation time was ignored.
async fn import_items(
    client: &Client,
    items: Vec<Item>,
    ctx: &mut Ctx<'_>,
) -> Result<(usize, Copied, Vec<String>), Failure> {
    let total = items.len() as i64;
    let (to_record, queue) = tokio::sync::mpsc::unbounded_channel();
    let (recorded_tx, mut recorded) = tokio::sync::watch::channel(0_i64);
    let recording = tokio::spawn(recorder(
        ctx.registry().clone(),
        ctx.meta.clone(),
        queue,
        recorded_tx,
    ));
    let fetched = fetch_all(client, items, ctx, total, &to_record, &mut recorded).await;
    drop(to_record);
    match fetched {
        Ok((copied, ages_ignored)) => {
            let manifests = recording
                .await
                .map_err(|e| Failure::Transient(format!("the recorder died: {e}")))?
                .map_err(failure)?;
            Ok((manifests, copied, ages_ignored))
        }
        Err(f) => {
            // What was verified before the failure is recorded (a cancel waited for the
            // recorder, so nothing is left); a recorder failure is the cause.
            match recording.await {
                Ok(Err(e)) => Err(failure(e)),
                _ => Err(f),
            }
        }
    }
}

/// The fetching side of [`import_items`]: keeps [`CONCURRENCY`] fetches in flight and hands
/// what is verified to the recorder. Every [`BOUNDARY_EVERY`] it passes a step boundary: it
/// waits for the recorder to record what it was handed, then checks for a cancel and records
/// progress. Fetches go on meanwhile, but what they verify is held back until the boundary is
/// passed, so a cancel there leaves nothing recorded after the progress it describes.
async fn fetch_all(
    client: &Client,
    items: Vec<Item>,
    ctx: &mut Ctx<'_>,
    total: i64,
    to_record: &tokio::sync::mpsc::UnboundedSender<ToRecord>,
    recorded: &mut tokio::sync::watch::Receiver<i64>,
) -> Result<(Copied, Vec<String>), Failure> {
    let mut next = items.into_iter();
    let mut fetching = tokio::task::JoinSet::new();
    let mut copied = Copied::default();
    let mut ages_ignored = Vec::new();
    let start = |fetching: &mut tokio::task::JoinSet<_>, item: Item| {
        let client = client.clone();
        fetching.spawn(async move {
            let Item {
                repo,
                tag,
                image_id,
                target,
            } = item;
            let verified = match fetch(&client, &repo, &tag).await {
                Ok(v) => v,
                Err(e) => return (image_id, repo, tag, Err(e)),
            };
            // Copied before it is recorded: what the metadata lists, the backend serves.
            let copy = match &target {
                Some(t) => copy(
                    &client,
                    &repo,
                    &t.client,
                    &t.repository,
                    &verified,
                    Some(&tag),
                    &t.blobs,
                )
                .await
                .map_err(|e| match e {
                    Failed::Permanent(m) => {
                        Failed::Permanent(format!("copying {repo}:{tag} to the backend: {m}"))
                    }
                    transient => transient,
                }),
                None => Ok(Copied::default()),
            };
            (image_id, repo, tag, copy.map(|c| (verified, c)))
        });
    };
    for item in next.by_ref().take(CONCURRENCY) {
        start(&mut fetching, item);
    }
    ctx.boundary(0, total, "import", false).await?;
    let send = |tag: ToRecord| {
        to_record
            .send(tag)
            .map_err(|_| Failure::Transient("the recorder stopped".to_owned()))
    };
    let mut gate = Gate::Open(ctx, recorded);
    let (mut sent, mut last_boundary) = (0_i64, std::time::Instant::now());
    // Verified while a boundary was being passed.
    let mut held = Vec::new();
    loop {
        let passing = matches!(gate, Gate::Passing(_));
        if fetching.is_empty() && !passing {
            break;
        }
        tokio::select! {
            Some(joined) = fetching.join_next(), if !fetching.is_empty() => {
                if let Some(item) = next.next() {
                    start(&mut fetching, item);
                }
                let (image_id, repo, tag, verified) =
                    joined.map_err(|e| Failure::Transient(format!("a fetch task died: {e}")))?;
                let (verified, copy) = verified
                    .inspect_err(|_| metric::imported(0, 0, 1, 0))
                    .map_err(failure)?;
                copied += copy;
                ages_ignored.extend(verified.ages_ignored.iter().cloned());
                let due = !passing && last_boundary.elapsed() >= BOUNDARY_EVERY;
                let step = due.then(|| format!("import {repo}:{tag}"));
                let tag = ToRecord::Tag(image_id, verified, tag);
                if passing {
                    held.push(tag);
                    continue;
                }
                send(tag)?;
                sent += 1;
                if let Some(step) = step {
                    send(ToRecord::Flush)?;
                    let Gate::Open(ctx, recorded) = std::mem::replace(&mut gate, Gate::Gone) else {
                        unreachable!("not passing a boundary");
                    };
                    gate = Gate::Passing(Box::pin(pass(ctx, recorded, sent, total, step)));
                }
            }
            (ctx, recorded, passed) = async {
                match &mut gate {
                    Gate::Passing(pass) => pass.await,
                    _ => std::future::pending().await,
                }
            }, if passing => {
                passed?;
                gate = Gate::Open(ctx, recorded);
                last_boundary = std::time::Instant::now();
                for tag in held.drain(..) {
                    send(tag)?;
                    sent += 1;
                }
            }
        }
    }
    Ok((copied, ages_ignored))
}

/// The import log's note of the creation times ignored (at most the first 20 named).
fn ages_note(output: &mut serde_json::Value, ignored: &[String]) {
    if ignored.is_empty() {
        return;
    }
    output["creation_times_ignored"] = json!({
        "count": ignored.len(),
        "reason": "before 1990 or in the future: these images count as recorded now",
        "manifests": ignored.iter().take(20).collect::<Vec<_>>(),
    });
}

/// Passing a step boundary of [`fetch_all`]: hands back what it borrowed, and the result.
type Passing<'a, 'c> = std::pin::Pin<
    Box<
        dyn Future<
                Output = (
                    &'a mut Ctx<'c>,
                    &'a mut tokio::sync::watch::Receiver<i64>,
                    Result<(), Failure>,
                ),
            > + Send
            + 'a,
    >,
>;

/// Whether [`fetch_all`] is passing a step boundary (which then holds the job's context).
enum Gate<'a, 'c> {
    Open(&'a mut Ctx<'c>, &'a mut tokio::sync::watch::Receiver<i64>),
    Passing(Passing<'a, 'c>),
    Gone,
}

/// Waits until the recorder has recorded the `sent` tags handed to it, then passes a step
/// boundary at `sent` of `total`.
fn pass<'a, 'c>(
    ctx: &'a mut Ctx<'c>,
    recorded: &'a mut tokio::sync::watch::Receiver<i64>,
    sent: i64,
    total: i64,
    step: String,
) -> Passing<'a, 'c> {
    Box::pin(async move {
        let caught_up = recorded.wait_for(|n| *n >= sent).await.is_ok();
        let passed = match caught_up {
            true => ctx.boundary(sent, total, &step, false).await,
            false => Err(Failure::Transient("the recorder stopped".to_owned())),
        };
        (ctx, recorded, passed)
    })
}

/// What [`fetch_all`] hands the recorder: a verified tag (image id, manifests, tag), or a
/// request to record what it holds now (before a step boundary).
enum ToRecord {
    Tag(String, Verified, String),
    Flush,
}

/// Most tags one append records.
const RECORD_AT_MOST: usize = 64;
/// How long the recorder lets tags gather before it records them: appends cost a read of
/// the image's stream and a commit each, so fewer, larger ones record more per second.
const RECORD_GATHER: std::time::Duration = std::time::Duration::from_millis(15);

/// Records what [`fetch_all`] verified: what gathers within [`RECORD_GATHER`] of the first
/// (or until a flush), one append per image; counts the tags recorded on `recorded`. Returns
/// the manifests recorded now.
async fn recorder(
    registry: layerline_core::service::Registry<layerline_core::store::Store>,
    meta: layerline_core::store::Metadata,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<ToRecord>,
    recorded: tokio::sync::watch::Sender<i64>,
) -> Result<usize, Failed> {
    let mut manifests = 0;
    let mut open = true;
    while open {
        let mut ready = Vec::new();
        let mut deadline = None;
        while ready.len() < RECORD_AT_MOST {
            let next = match deadline {
                None => queue.recv().await,
                Some(at) => match tokio::time::timeout_at(at, queue.recv()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
            };
            match next {
                Some(ToRecord::Tag(image_id, verified, tag)) => {
                    ready.push((image_id, verified, tag));
                    deadline.get_or_insert_with(|| tokio::time::Instant::now() + RECORD_GATHER);
                }
                Some(ToRecord::Flush) => break,
                None => {
                    open = false;
                    break;
                }
            }
        }
        let count = ready.len() as i64;
        let mut by_image: Vec<(String, Batch)> = Vec::new();
        for (image_id, verified, tag) in ready {
            match by_image.iter_mut().find(|(id, _)| *id == image_id) {
                Some((_, batch)) => batch.push((verified, Some(tag))),
                None => by_image.push((image_id, vec![(verified, Some(tag))])),
            }
        }
        for (image_id, batch) in by_image {
            manifests += record_all(&registry, batch, None, &image_id, &meta).await?;
        }
        recorded.send_modify(|n| *n += count);
    }
    Ok(manifests)
}

/// The registry client for a source's registry and credentials.
fn client(registry: &str, credentials: Option<&CredentialsRef>) -> Result<Client, Failure> {
    client_for(registry, credentials, CONCURRENCY).map_err(failure)
}

/// The backend namespace `namespace_id` is linked to, if any, with one client for the job.
pub(crate) async fn backend_of(
    ctx: &Ctx<'_>,
    namespace_id: &str,
) -> Result<Option<Linked>, Failure> {
    linked_backend(ctx.registry(), namespace_id, CONCURRENCY)
        .await
        .map_err(failure)
}

pub(crate) async fn import(input: ImportJob, ctx: &mut Ctx<'_>) -> Outcome {
    match input {
        ImportJob::Image(input) => import_image(input, ctx).await,
        ImportJob::Catalog(input) => import_catalog(input, ctx).await,
    }
}

/// An import job's input: one repository into an image, or a catalog into a namespace.
#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
pub enum ImportJob {
    Image(ImportInput),
    Catalog(CatalogImport),
}

async fn import_image(input: ImportInput, ctx: &mut Ctx<'_>) -> Outcome {
    let source = &input.source;
    source
        .check()
        .map_err(|e| Failure::Permanent(e.to_string()))?;
    let client = client(&source.registry, source.credentials.as_ref())?;
    let repo = &source.repository;
    let tags = match &source.tags {
        Some(tags) => tags.clone(),
        None => client.tags(repo).await.map_err(failure)?,
    };
    let total = tags.len() as i64;
    let row = ctx
        .registry()
        .store()
        .image(&input.image_id)
        .await
        .map_err(|e| Failure::Transient(e.to_string()))?
        .ok_or_else(|| Failure::Permanent(format!("image {} not found", input.image_id)))?;
    let backend = backend_of(ctx, &row.namespace_id).await?;
    let target = backend.as_ref().map(|b| target(b, &row.name));
    let items = tags
        .iter()
        .map(|tag| Item {
            repo: repo.clone(),
            tag: tag.clone(),
            image_id: input.image_id.clone(),
            target: target.clone(),
        })
        .collect();
    let (recorded_now, copied, ages_ignored) = import_items(&client, items, ctx).await?;
    ctx.boundary(total, total, "done", true).await?;
    let image: Image = ctx.registry().load(&input.image_id).await?;
    let mut output = json!({
        "registry": source.registry,
        "repository": repo,
        "tags": total,
        "manifests_recorded": recorded_now,
        "image_size": image.size,
    });
    ages_note(&mut output, &ages_ignored);
    if let Some(b) = backend {
        output["backend"] = backend_output(&b, copied);
    }
    Ok(output)
}

async fn import_catalog(input: CatalogImport, ctx: &mut Ctx<'_>) -> Outcome {
    input
        .check()
        .map_err(|e| Failure::Permanent(e.to_string()))?;
    let client = client(&input.registry, input.credentials.as_ref())?;
    let repos = match &input.repositories {
        Some(r) => r.clone(),
        None => client.catalog().await.map_err(failure)?,
    };
    let total = repos.len() as i64;
    let backend = backend_of(ctx, &input.namespace_id).await?;
    // First every repository's image and tag list ([`CONCURRENCY`] repositories at once, so
    // the images' creations share commits), then one pipeline over all the tags.
    let listing = std::time::Instant::now();
    for repo in &repos {
        input
            .source(repo)
            .check()
            .map_err(|e| Failure::Permanent(e.to_string()))?;
    }
    let mut lists = tokio::task::JoinSet::new();
    let mut pending = repos.iter().enumerate();
    let (registry, meta) = (ctx.registry().clone(), ctx.meta.clone());
    let list = |lists: &mut tokio::task::JoinSet<_>, (n, repo): (usize, &String)| {
        let (registry, client, meta) = (registry.clone(), client.clone(), meta.clone());
        let (namespace_id, repo) = (input.namespace_id.clone(), repo.clone());
        lists.spawn(async move {
            let image_id = image_for(&registry, &namespace_id, &repo, &meta).await?;
            let tags = client.tags(&repo).await?;
            Ok::<_, Failed>((n, image_id, tags))
        });
    };
    for next in pending.by_ref().take(CONCURRENCY) {
        list(&mut lists, next);
    }
    let mut listed = vec![None; repos.len()];
    let mut done = 0;
    while let Some(joined) = lists.join_next().await {
        if let Some(next) = pending.next() {
            list(&mut lists, next);
        }
        let (n, image_id, tags) = joined
            .map_err(|e| Failure::Transient(format!("a listing task died: {e}")))?
            .map_err(failure)?;
        listed[n] = Some((image_id, tags));
        done += 1;
        ctx.boundary(done, total, &format!("listed {}", repos[n]), false)
            .await?;
    }
    let mut items = Vec::new();
    for (repo, listed) in repos.iter().zip(listed) {
        let (image_id, tags) = listed.expect("every repository was listed");
        let target = backend.as_ref().map(|b| target(b, repo));
        for tag in tags {
            items.push(Item {
                repo: repo.clone(),
                tag,
                image_id: image_id.clone(),
                target: target.clone(),
            });
        }
    }
    let tags_seen = items.len();
    let listed_ms = listing.elapsed().as_millis() as u64;
    let importing = std::time::Instant::now();
    let (recorded_now, copied, ages_ignored) = import_items(&client, items, ctx).await?;
    let imported_ms = importing.elapsed().as_millis() as u64;
    let tags = tags_seen as i64;
    ctx.boundary(tags, tags, "done", true).await?;
    let mut output = json!({
        "registry": input.registry,
        "repositories": total,
        "tags": tags_seen,
        "manifests_recorded": recorded_now,
        "timings_ms": {"list": listed_ms, "import": imported_ms},
    });
    ages_note(&mut output, &ages_ignored);
    if let Some(b) = backend {
        output["backend"] = backend_output(&b, copied);
    }
    Ok(output)
}

/// Where image `name` goes on backend `b` (its client shared by every image of the job).
fn target(b: &Linked, name: &str) -> Target {
    Target {
        client: b.client.clone(),
        repository: b.repository(name),
        blobs: Default::default(),
    }
}

fn backend_output(b: &Linked, copied: Copied) -> serde_json::Value {
    let mut out = serde_json::to_value(copied).unwrap_or_default();
    out["registry"] = b.spec.registry.clone().into();
    out["prefix"] = b.spec.prefix.clone().into();
    out
}
