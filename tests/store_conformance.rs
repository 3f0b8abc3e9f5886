//! One conformance suite for the event store and the read models, run on SQLite and on
//! PostgreSQL; every test gets a database of its own.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use common::{Fixture, TestDb, digest, index, manifest, namespace_created, push};
use layerline_core::domain::event::NamespaceUpdated;
use layerline_core::domain::image::ImageCommand;
use layerline_core::domain::namespace::NamespaceCommand;
use layerline_core::domain::{DomainError, DomainEvent, format_time, streams};
use layerline_core::service::ServiceError;
use layerline_core::store::rows::materialize;
use layerline_core::store::{
    Backend, EventStore, Expected, Metadata, ReadModelRows, ReadModels, Store, StoreError,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
                    super::$name(db.store().await).await;
                }
            )*
        }
        mod postgres {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let Some(db) = TestDb::new(Backend::Postgres).await else { return };
                    super::$name(db.store().await).await;
                }
            )*
        }
    };
}

conformance!(
    append_assigns_stream_versions_and_dense_positions,
    a_stale_expected_version_is_a_typed_conflict_and_writes_nothing,
    a_write_is_visible_in_the_read_models_when_append_returns,
    migrations_are_idempotent,
    two_tags_of_one_image_sharing_a_layer_count_it_once,
    two_images_sharing_a_layer_count_it_in_each_and_namespace_size_is_the_sum,
    a_moved_tag_leaves_the_old_manifest_counted_and_deleting_it_frees_its_unique_blobs,
    an_index_counts_its_childrens_blobs,
    a_shared_digest_needs_force_and_force_deletes_both_tags,
    namespace_names_are_unique_per_region,
    an_image_needs_an_existing_namespace,
    deleting_a_namespace_deletes_its_images,
    a_blob_size_disagreeing_within_a_namespace_is_refused,
    a_blob_size_disagreeing_within_one_import_is_refused_whole,
    an_import_counts_shared_blobs_once_per_image_and_namespace,
    concurrent_writers_and_a_tailing_reader_see_every_event_once_in_order,
    concurrent_appends_to_one_stream_let_exactly_one_win_per_version,
    a_refused_append_among_concurrent_ones_fails_alone,
    rebuild_reproduces_random_workloads_row_for_row,
    an_event_stored_with_an_older_schema_version_still_replays,
    job_descriptors_follow_their_streams_and_survive_rebuild,
    concurrent_job_steps_written_together_each_follow_their_own_stream,
    prune_policies_follow_their_streams_and_survive_rebuild,
    a_job_keeps_the_first_plan_stored_and_only_its_items,
    a_prune_snapshot_reads_every_image_of_its_namespace_whole,
    a_prune_snapshot_read_by_two_connections_is_one_point_in_time,
    a_prune_releases_each_blob_by_the_references_it_drops,
    concurrent_prunes_written_together_release_shared_blobs_by_every_reference,
    a_plan_made_while_reading_equals_the_plan_of_the_whole_snapshot,
    a_kept_state_is_decided_on_and_read_again_once_the_stream_moved,
);

fn update(description: &str) -> DomainEvent {
    DomainEvent::NamespaceUpdated(NamespaceUpdated {
        description: Some(description.into()),
        is_public: None,
    })
}

// ---------------------------------------------------------------------------------------
// The event log

async fn append_assigns_stream_versions_and_dense_positions(store: Store) {
    let meta = Metadata::default();
    let a = streams::namespace("a");
    let b = streams::namespace("b");
    let first = store
        .append(
            &a,
            Expected::Version(0),
            &[
                DomainEvent::NamespaceCreated(namespace_created("a", "team-a")),
                update("x"),
            ],
            &meta,
        )
        .await
        .unwrap();
    assert_eq!(
        (
            first.first_position,
            first.last_position,
            first.stream_version
        ),
        (1, 2, 2)
    );
    let second = store
        .append(
            &b,
            Expected::Version(0),
            &[DomainEvent::NamespaceCreated(namespace_created(
                "b", "team-b",
            ))],
            &meta,
        )
        .await
        .unwrap();
    assert_eq!((second.first_position, second.stream_version), (3, 1));
    let third = store
        .append(&a, Expected::Version(2), &[update("y")], &meta)
        .await
        .unwrap();
    assert_eq!((third.first_position, third.stream_version), (4, 3));

    let stream = store.read_stream(&a).await.unwrap();
    let versions: Vec<i64> = stream.iter().map(|e| e.stream_version).collect();
    assert_eq!(versions, vec![1, 2, 3]);
    assert_eq!(stream[2].event, update("y"));
    assert!(
        store
            .read_stream("namespace-none")
            .await
            .unwrap()
            .is_empty()
    );

    let feed = store.read_all(1, 2).await.unwrap();
    let positions: Vec<i64> = feed.iter().map(|e| e.position).collect();
    assert_eq!(positions, vec![2, 3]);
    assert_eq!(store.head().await.unwrap(), 4);
    assert!(store.read_all(4, 10).await.unwrap().is_empty());
}

async fn a_stale_expected_version_is_a_typed_conflict_and_writes_nothing(store: Store) {
    let meta = Metadata::default();
    let s = streams::namespace("a");
    store
        .append(
            &s,
            Expected::Version(0),
            &[DomainEvent::NamespaceCreated(namespace_created(
                "a", "team-a",
            ))],
            &meta,
        )
        .await
        .unwrap();
    let err = store
        .append(&s, Expected::Version(0), &[update("again")], &meta)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            StoreError::Conflict {
                expected: 0,
                actual: 1,
                ..
            }
        ),
        "{err:?}"
    );
    let err = store
        .append(&s, Expected::Version(5), &[update("later")], &meta)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        StoreError::Conflict {
            expected: 5,
            actual: 1,
            ..
        }
    ));
    assert_eq!(store.read_stream(&s).await.unwrap().len(), 1);
    assert_eq!(store.head().await.unwrap(), 1);
    let row = store.namespace("a").await.unwrap().unwrap();
    assert_eq!(
        row.description, "",
        "a refused append changes no read model"
    );
}

async fn a_write_is_visible_in_the_read_models_when_append_returns(store: Store) {
    let f = Fixture::new(store);
    let ns = f.namespace("visible").await;
    let row = f.namespace_row(&ns).await;
    assert_eq!(
        (row.name.as_str(), row.image_count, row.size, row.version),
        ("visible", 0, 0, 1)
    );
    f.registry
        .namespace(
            &ns,
            NamespaceCommand::Update(NamespaceUpdated {
                description: Some("docs".into()),
                is_public: Some(true),
            }),
            &f.meta,
        )
        .await
        .unwrap();
    let row = f.namespace_row(&ns).await;
    assert_eq!(
        (row.description.as_str(), row.is_public, row.version),
        ("docs", true, 2)
    );
    let img = f.image(&ns, "app").await;
    assert_eq!(f.namespace_row(&ns).await.image_count, 1);
    f.image_cmd(&img, ImageCommand::SetVisibility("public".into()))
        .await
        .unwrap();
    let row = f.store().image(&img).await.unwrap().unwrap();
    assert_eq!((row.visibility.as_str(), row.version), ("public", 2));
    // The events carry the metadata they were appended with.
    let events = f.store().read_stream(&streams::image(&img)).await.unwrap();
    assert!(events[0].metadata.contains("\"actor\":\"test\""));
}

async fn migrations_are_idempotent(store: Store) {
    assert_eq!(store.migrate().await.unwrap(), Vec::<i64>::new());
    assert!(store.ready().await.unwrap());
}

/// Migration 9 packs each manifest's layers into its row; manifests recorded before it get
/// theirs from `manifest_layers`, the same text the projection writes for new ones.
// Not in `conformance!`: an upgrade runs its migrations in a process just started, so this
// test opens a second store for them. Running them on the first store's pool would leave
// its connections holding statements prepared against the old shape of `manifests`, which
// sqlx's SQLite driver reads past the end of (an index panic in `SqliteRow::current`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_the_packed_layers_migration_fills_manifests_recorded_before_it() {
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    the_packed_layers_migration_fills_manifests_recorded_before_it(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_the_packed_layers_migration_fills_manifests_recorded_before_it() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    the_packed_layers_migration_fills_manifests_recorded_before_it(&db).await;
}

async fn the_packed_layers_migration_fills_manifests_recorded_before_it(db: &TestDb) {
    let store = db.store().await;
    let f = Fixture::new(store.clone());
    random_workload(&f, 1, 250).await;
    let before = store.read_model_rows().await.unwrap();
    let layered = before
        .manifests
        .iter()
        .filter(|m| m.layers_packed.contains(' '))
        .count();
    assert!(layered >= 5, "{layered} manifests with layers: too few");

    // The database as it was before migration 9.
    let undo = "ALTER TABLE manifests DROP COLUMN layers_packed; \
                DELETE FROM layerline_migrations WHERE version = 9";
    match &store {
        Store::Sqlite(s) => drop(sqlx::raw_sql(undo).execute(s.pool()).await.unwrap()),
        Store::Postgres(p) => drop(sqlx::raw_sql(undo).execute(p.pool()).await.unwrap()),
    }
    store.close().await;

    let upgraded = Store::connect(&db.url, 4).await.expect("connect");
    assert_eq!(upgraded.migrate().await.unwrap(), [9]);
    assert_eq!(upgraded.read_model_rows().await.unwrap(), before);
    upgraded.close().await;
}

// ---------------------------------------------------------------------------------------
// Worked size examples (design §4)

async fn two_tags_of_one_image_sharing_a_layer_count_it_once(store: Store) {
    let f = Fixture::new(store);
    let ns = f.namespace("sizes").await;
    let img = f.image(&ns, "app").await;
    f.manifest(&img, 1, &[(100, 1000), (101, 200)]).await;
    f.manifest(&img, 2, &[(100, 1000), (102, 30)]).await;
    f.tag(&img, "v1", 1).await;
    f.tag(&img, "v2", 2).await;
    // layers 1000 + 200 + 30, configs 10 + 10: layer 100 once
    assert_eq!(f.image_size(&img).await, 1250);
    assert_eq!(f.namespace_row(&ns).await.size, 1250);
}

async fn two_images_sharing_a_layer_count_it_in_each_and_namespace_size_is_the_sum(store: Store) {
    let f = Fixture::new(store);
    let ns = f.namespace("sizes").await;
    let a = f.image(&ns, "a").await;
    let b = f.image(&ns, "b").await;
    f.manifest(&a, 1, &[(100, 1000), (101, 5)]).await;
    f.manifest(&b, 2, &[(100, 1000), (102, 7)]).await;
    assert_eq!(f.image_size(&a).await, 1015);
    assert_eq!(f.image_size(&b).await, 1017);
    let row = f.namespace_row(&ns).await;
    assert_eq!(row.size, 1015 + 1017);
    assert_eq!(row.image_count, 2);
    // Stored bytes count layer 100 once across the namespace.
    assert_eq!(row.stored_size, 1000 + 5 + 7 + 10 + 10);
}

async fn a_moved_tag_leaves_the_old_manifest_counted_and_deleting_it_frees_its_unique_blobs(
    store: Store,
) {
    let f = Fixture::new(store);
    let ns = f.namespace("sizes").await;
    let img = f.image(&ns, "app").await;
    f.manifest(&img, 1, &[(100, 1000), (101, 200)]).await;
    f.manifest(&img, 2, &[(100, 1000), (102, 30)]).await;
    f.tag(&img, "latest", 1).await;
    let before = f.store().read_model_rows().await.unwrap();
    let tag_id = before.tags[0].id.clone();
    f.tag(&img, "latest", 2).await;
    // Moved: same tag id, new digest; manifest 1 is untagged but still stored and counted.
    let tag = f.store().tag(&tag_id).await.unwrap().unwrap();
    assert_eq!(tag.digest, digest(2));
    assert_eq!(f.image_size(&img).await, 1000 + 200 + 30 + 20);
    let rows = f.store().read_model_rows().await.unwrap();
    assert_eq!(rows.manifests.len(), 2);
    // Deleting the untagged manifest frees layer 101 and its config; layer 100 stays.
    f.image_cmd(&img, ImageCommand::DeleteManifest { digest: digest(1) })
        .await
        .unwrap();
    assert_eq!(f.image_size(&img).await, 1000 + 30 + 10);
    let ns_row = f.namespace_row(&ns).await;
    assert_eq!((ns_row.size, ns_row.stored_size), (1040, 1040));
}

async fn an_index_counts_its_childrens_blobs(store: Store) {
    let f = Fixture::new(store);
    let ns = f.namespace("sizes").await;
    let img = f.image(&ns, "multi").await;
    f.manifest(&img, 1, &[(100, 1000)]).await; // linux/amd64
    f.manifest(&img, 2, &[(101, 500)]).await; // linux/arm64
    f.image_cmd(&img, ImageCommand::RecordManifest(index(9, &[1, 2])))
        .await
        .unwrap();
    f.tag(&img, "latest", 9).await;
    assert_eq!(f.image_size(&img).await, 1520);
    let rows = f.store().read_model_rows().await.unwrap();
    let children: Vec<&str> = rows
        .manifest_children
        .iter()
        .map(|c| c.child_digest.as_str())
        .collect();
    assert_eq!(children, vec![digest(1), digest(2)]);
    // Deleting the index's only tag deletes the index and its children with it.
    f.image_cmd(
        &img,
        ImageCommand::DeleteTag {
            name: "latest".into(),
            force: false,
        },
    )
    .await
    .unwrap();
    assert_eq!(f.image_size(&img).await, 0);
    let rows = f.store().read_model_rows().await.unwrap();
    assert!(rows.manifests.is_empty());
    assert!(
        rows.manifest_children.is_empty(),
        "the index's child rows go with it"
    );
}

async fn a_shared_digest_needs_force_and_force_deletes_both_tags(store: Store) {
    let f = Fixture::new(store);
    let ns = f.namespace("sizes").await;
    let img = f.image(&ns, "app").await;
    f.manifest(&img, 1, &[(100, 1000)]).await;
    f.manifest(&img, 2, &[(101, 7)]).await;
    f.tag(&img, "v1", 1).await;
    f.tag(&img, "latest", 1).await;
    f.tag(&img, "other", 2).await;
    let err = f
        .image_cmd(
            &img,
            ImageCommand::DeleteTag {
                name: "v1".into(),
                force: false,
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ServiceError::Domain(DomainError::Conflict {
                resource: "tag",
                ..
            })
        ),
        "{err:?}"
    );
    assert_eq!(f.tag_names(&img).await, vec!["latest", "other", "v1"]);
    f.image_cmd(
        &img,
        ImageCommand::DeleteTag {
            name: "v1".into(),
            force: true,
        },
    )
    .await
    .unwrap();
    assert_eq!(f.tag_names(&img).await, vec!["other"]);
    assert_eq!(f.image_size(&img).await, 17);
}

// ---------------------------------------------------------------------------------------
// Rules the read models enforce across aggregates

async fn namespace_names_are_unique_per_region(store: Store) {
    let f = Fixture::new(store);
    f.namespace("taken").await;
    let err = f
        .registry
        .create_namespace(namespace_created("other-id", "taken"), &f.meta)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ServiceError::Domain(DomainError::Conflict {
                resource: "namespace",
                ..
            })
        ),
        "{err:?}"
    );
    assert!(
        f.store()
            .read_stream(&streams::namespace("other-id"))
            .await
            .unwrap()
            .is_empty()
    );
    let mut elsewhere = namespace_created("third-id", "taken");
    elsewhere.region = "nl-ams".into();
    f.registry
        .create_namespace(elsewhere, &f.meta)
        .await
        .unwrap();
}

async fn an_image_needs_an_existing_namespace(store: Store) {
    let f = Fixture::new(store);
    let err = f
        .image_cmd(
            "img",
            ImageCommand::Create {
                namespace_id: "missing".into(),
                name: "app".into(),
                visibility: None,
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ServiceError::Domain(DomainError::NotFound {
                resource: "namespace",
                ..
            })
        ),
        "{err:?}"
    );
    assert_eq!(f.store().head().await.unwrap(), 0);
}

async fn deleting_a_namespace_deletes_its_images(store: Store) {
    let f = Fixture::new(store);
    let ns = f.namespace("doomed").await;
    let keep = f.namespace("kept").await;
    for name in ["a", "b"] {
        let img = f.image(&ns, name).await;
        f.manifest(&img, 1, &[(100, 5)]).await;
        f.tag(&img, "v", 1).await;
    }
    let other = f.image(&keep, "a").await;
    f.manifest(&other, 1, &[(100, 5)]).await;
    // The namespace row cannot go while images reference it.
    let err = f
        .registry
        .namespace(&ns, NamespaceCommand::Delete, &f.meta)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ServiceError::Domain(DomainError::Conflict { .. })),
        "{err:?}"
    );
    f.delete_namespace(&ns).await.unwrap();
    let rows = f.store().read_model_rows().await.unwrap();
    assert_eq!(rows.namespaces.len(), 1);
    assert_eq!(rows.images.len(), 1);
    assert_eq!(rows.tags.len(), 0);
    assert!(rows.namespace_blobs.iter().all(|b| b.namespace_id == keep));
    assert_eq!(f.namespace_row(&keep).await.size, 15);
}

async fn a_blob_size_disagreeing_within_a_namespace_is_refused(store: Store) {
    let f = Fixture::new(store);
    let ns = f.namespace("sizes").await;
    let a = f.image(&ns, "a").await;
    let b = f.image(&ns, "b").await;
    f.manifest(&a, 1, &[(100, 1000)]).await;
    let head = f.store().head().await.unwrap();
    let err = f
        .image_cmd(&b, ImageCommand::RecordManifest(manifest(2, &[(100, 999)])))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ServiceError::Domain(DomainError::Invalid { field: "blob", .. })
        ),
        "{err:?}"
    );
    assert_eq!(f.store().head().await.unwrap(), head);
    assert_eq!(f.image_size(&b).await, 0);
}

async fn a_blob_size_disagreeing_within_one_import_is_refused_whole(store: Store) {
    let f = Fixture::new(store);
    let ns = f.namespace("sizes").await;
    let a = f.image(&ns, "a").await;
    let head = f.store().head().await.unwrap();
    let cmd = ImageCommand::Import {
        manifests: vec![manifest(1, &[(100, 1000)]), manifest(2, &[(100, 999)])],
        tags: vec![("v1".into(), digest(1), "t1".into())],
        pushed_at: None,
    };
    let err = f.image_cmd(&a, cmd).await.unwrap_err();
    assert!(
        matches!(
            err,
            ServiceError::Domain(DomainError::Invalid { field: "blob", .. })
        ),
        "{err:?}"
    );
    assert_eq!(f.store().head().await.unwrap(), head);
    assert_eq!(f.image_size(&a).await, 0);
}

async fn an_import_counts_shared_blobs_once_per_image_and_namespace(store: Store) {
    let f = Fixture::new(store);
    let ns = f.namespace("imports").await;
    let a = f.image(&ns, "a").await;
    let b = f.image(&ns, "b").await;
    // Blob 100 twice in the run, blob 101 once; each manifest its own 10-byte config.
    let cmd = ImageCommand::Import {
        manifests: vec![
            manifest(1, &[(100, 1000), (101, 50)]),
            manifest(2, &[(100, 1000)]),
        ],
        tags: vec![],
        pushed_at: None,
    };
    f.image_cmd(&a, cmd.clone()).await.unwrap();
    assert_eq!(f.image_size(&a).await, 1000 + 50 + 10 + 10);
    f.image_cmd(&b, cmd).await.unwrap();
    assert_eq!(f.image_size(&b).await, 1070);
    let row = f.namespace_row(&ns).await;
    assert_eq!(row.size, 2140, "each image counts them");
    assert_eq!(row.stored_size, 1070, "stored once in the namespace");
}

// ---------------------------------------------------------------------------------------
// Concurrency

async fn concurrent_writers_and_a_tailing_reader_see_every_event_once_in_order(store: Store) {
    const WRITERS: usize = 8;
    const APPENDS: usize = 25;
    let meta = Metadata::default();
    let mut expected_events = 0;
    for w in 0..WRITERS {
        let id = format!("w{w}");
        store
            .append(
                &streams::namespace(&id),
                Expected::Version(0),
                &[DomainEvent::NamespaceCreated(namespace_created(
                    &id,
                    &format!("writer-{w}"),
                ))],
                &meta,
            )
            .await
            .unwrap();
        expected_events += 1;
    }
    let start = store.head().await.unwrap();
    let total = start + (WRITERS * APPENDS * 3) as i64;
    let _ = expected_events;

    let reader = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut seen: Vec<(i64, String, i64)> = Vec::new();
            let mut after = start;
            while after < total {
                let page = store.read_all(after, 37).await.unwrap();
                for e in &page {
                    assert_eq!(
                        e.position,
                        after + 1,
                        "the feed skipped or repeated a position"
                    );
                    after = e.position;
                    seen.push((e.position, e.stream_id.clone(), e.stream_version));
                }
                if page.is_empty() {
                    tokio::task::yield_now().await;
                }
            }
            seen
        })
    };
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let stream = streams::namespace(&format!("w{w}"));
                let mut version = 1;
                for i in 0..APPENDS {
                    let batch: Vec<DomainEvent> =
                        (0..3).map(|j| update(&format!("{w}-{i}-{j}"))).collect();
                    let done = store
                        .append(
                            &stream,
                            Expected::Version(version),
                            &batch,
                            &Metadata::default(),
                        )
                        .await
                        .unwrap();
                    version = done.stream_version;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let seen = tokio::time::timeout(std::time::Duration::from_secs(60), reader)
        .await
        .expect("reader caught up")
        .unwrap();
    assert_eq!(seen.len(), WRITERS * APPENDS * 3);
    let unique: HashSet<(String, i64)> = seen.iter().map(|(_, s, v)| (s.clone(), *v)).collect();
    assert_eq!(unique.len(), seen.len(), "an event was delivered twice");
    for w in 0..WRITERS {
        let stream = streams::namespace(&format!("w{w}"));
        for v in 2..=(1 + APPENDS as i64 * 3) {
            assert!(
                unique.contains(&(stream.clone(), v)),
                "missing {stream} v{v}"
            );
        }
    }
}

async fn concurrent_appends_to_one_stream_let_exactly_one_win_per_version(store: Store) {
    const CONTENDERS: usize = 8;
    const ROUNDS: i64 = 15;
    let store = Arc::new(store);
    let stream = streams::namespace("race");
    for version in 0..ROUNDS {
        let tasks: Vec<_> = (0..CONTENDERS)
            .map(|c| {
                let store = store.clone();
                let stream = stream.clone();
                tokio::spawn(async move {
                    let event = if version == 0 {
                        DomainEvent::NamespaceCreated(namespace_created("race", "race-ns"))
                    } else {
                        update(&format!("{version}-{c}"))
                    };
                    store
                        .append(
                            &stream,
                            Expected::Version(version),
                            &[event],
                            &Metadata::default(),
                        )
                        .await
                })
            })
            .collect();
        let mut wins = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(a) => {
                    assert_eq!(a.stream_version, version + 1);
                    wins += 1;
                }
                Err(StoreError::Conflict { .. }) => {}
                Err(other) => panic!("unexpected error: {other:?}"),
            }
        }
        assert_eq!(wins, 1, "round {version}");
    }
    let events = store.read_stream(&stream).await.unwrap();
    assert_eq!(events.len() as i64, ROUNDS);
    assert_eq!(store.head().await.unwrap(), ROUNDS);
}

/// Appends arriving together are written as groups in one transaction; a read model
/// refusing one of them (a namespace name already taken) must fail that append alone.
async fn a_refused_append_among_concurrent_ones_fails_alone(store: Store) {
    const OTHERS: usize = 48;
    const SAME_NAME: usize = 8;
    let store = Arc::new(store);
    let mut tasks = Vec::new();
    for i in 0..OTHERS + SAME_NAME {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            // Every append creates a namespace of its own; the last few all want one name.
            let name = if i < OTHERS {
                format!("ns-{i}")
            } else {
                "taken".to_owned()
            };
            let id = format!("n{i}");
            let event = DomainEvent::NamespaceCreated(namespace_created(&id, &name));
            let appended = store
                .append(
                    &streams::namespace(&id),
                    Expected::Version(0),
                    &[event],
                    &Metadata::default(),
                )
                .await;
            (i, appended)
        }));
    }
    let mut positions = Vec::new();
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            (_, Ok(a)) => positions.push(a.first_position),
            (i, Err(StoreError::Unique { .. })) if i >= OTHERS => refused += 1,
            (i, Err(other)) => panic!("append {i} failed: {other:?}"),
        }
    }
    assert_eq!(positions.len(), OTHERS + 1, "every other append lands");
    assert_eq!(refused, SAME_NAME - 1, "one of the same-named appends wins");
    positions.sort_unstable();
    let dense: Vec<i64> = (1..=positions.len() as i64).collect();
    assert_eq!(positions, dense, "positions stay dense");
    let log = store.read_all(0, 1000).await.unwrap();
    assert_eq!(log.len(), OTHERS + 1);
    let listed = store.head().await.unwrap();
    assert_eq!(listed, OTHERS as i64 + 1);
}

// ---------------------------------------------------------------------------------------
// Rebuild

/// Runs `commands` random commands over a small universe of names and digests, so that
/// collisions (shared layers, moved tags, shared digests, indexes) are frequent.
async fn random_workload(f: &Fixture, seed: u64, commands: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let ns_names = ["alpha", "bravo", "charlie", "delta", "echo"];
    let image_names = ["app", "api", "web", "db"];
    let tag_names = ["latest", "v1", "v2", "stable", "dev"];
    // Live namespaces, and live images with their namespace.
    let mut namespaces: Vec<String> = Vec::new();
    let mut images: Vec<(String, String)> = Vec::new();
    // Blob n has size 100 + n everywhere, so sizes always agree.
    let layer = |n: u64| (n, 100 + n as i64);
    let mut refused = 0;
    for _ in 0..commands {
        let image =
            (!images.is_empty()).then(|| images[rng.random_range(0..images.len())].0.clone());
        let namespace = (!namespaces.is_empty())
            .then(|| namespaces[rng.random_range(0..namespaces.len())].clone());
        let result = match (rng.random_range(0..100), namespace, image) {
            (0..4, _, _) => {
                let id = uuid::Uuid::from_u128(rng.random()).to_string();
                let name = ns_names[rng.random_range(0..ns_names.len())];
                let r = f
                    .registry
                    .create_namespace(namespace_created(&id, name), &f.meta)
                    .await;
                if r.is_ok() {
                    namespaces.push(id);
                }
                r
            }
            (4..7, Some(ns), _) => {
                let cmd = NamespaceCommand::Update(NamespaceUpdated {
                    description: Some(format!("d{}", rng.random_range(0..3))),
                    is_public: Some(rng.random()),
                });
                f.registry.namespace(&ns, cmd, &f.meta).await.map(drop)
            }
            (7..8, Some(ns), _) => {
                let r = f.delete_namespace(&ns).await;
                if r.is_ok() {
                    namespaces.retain(|n| *n != ns);
                    images.retain(|(_, n)| *n != ns);
                }
                r
            }
            (8..18, Some(ns), _) => {
                let id = uuid::Uuid::from_u128(rng.random()).to_string();
                let cmd = ImageCommand::Create {
                    namespace_id: ns.clone(),
                    name: image_names[rng.random_range(0..image_names.len())].into(),
                    visibility: None,
                };
                let r = f.image_cmd(&id, cmd).await.map(drop);
                if r.is_ok() {
                    images.push((id, ns));
                }
                r
            }
            (18..21, _, Some(id)) => {
                let v = ["inherit", "public", "private"][rng.random_range(0..3)];
                f.image_cmd(&id, ImageCommand::SetVisibility(v.into()))
                    .await
                    .map(drop)
            }
            (21..30, _, Some(id)) => {
                // An import: several manifests (sharing layers, now and then the same one
                // twice) and tags on some of them, in one append.
                let mut manifests = Vec::new();
                let mut tags = Vec::new();
                for _ in 0..rng.random_range(1..6) {
                    let n = rng.random_range(1..8);
                    let layers: Vec<(u64, i64)> = (0..rng.random_range(0..4))
                        .map(|_| layer(rng.random_range(0..15)))
                        .collect();
                    manifests.push(manifest(n, &layers));
                    if rng.random_bool(0.5) {
                        let name = tag_names[rng.random_range(0..tag_names.len())];
                        let tag_id = uuid::Uuid::from_u128(rng.random()).to_string();
                        tags.push((name.to_owned(), digest(n), tag_id));
                    }
                }
                let cmd = ImageCommand::Import {
                    manifests,
                    tags,
                    pushed_at: None,
                };
                f.image_cmd(&id, cmd).await.map(drop)
            }
            (30..46, _, Some(id)) => {
                let n = rng.random_range(1..11);
                let m = if n > 7 {
                    // An index with two platform manifests, recorded first.
                    let children = [rng.random_range(1..4), rng.random_range(4..6)];
                    for c in children {
                        let child = manifest(c, &[layer(rng.random_range(0..15))]);
                        let recorded = f.image_cmd(&id, ImageCommand::RecordManifest(child)).await;
                        assert!(
                            !matches!(recorded, Err(ServiceError::Store(_))),
                            "{recorded:?}"
                        );
                    }
                    index(n, &children)
                } else {
                    let layers: Vec<(u64, i64)> = (0..rng.random_range(0..4))
                        .map(|_| layer(rng.random_range(0..15)))
                        .collect();
                    manifest(n, &layers)
                };
                f.image_cmd(&id, ImageCommand::RecordManifest(m))
                    .await
                    .map(drop)
            }
            (94..96, _, Some(id)) => {
                let job_id = format!("job-{}", rng.random_range(0..1000));
                f.image_cmd(&id, ImageCommand::RequestDelete { job_id })
                    .await
                    .map(drop)
            }
            (96..97, Some(ns), _) => {
                let job_id = format!("job-{}", rng.random_range(0..1000));
                f.registry
                    .namespace(&ns, NamespaceCommand::RequestDelete { job_id }, &f.meta)
                    .await
                    .map(drop)
            }
            (97..99, _, Some(id)) => {
                let names = (0..2)
                    .map(|_| tag_names[rng.random_range(0..tag_names.len())].to_owned())
                    .collect();
                f.image_cmd(&id, ImageCommand::DeleteTags { names })
                    .await
                    .map(drop)
            }
            (46..80 | 99.., _, Some(id)) => {
                let name = tag_names[rng.random_range(0..tag_names.len())];
                f.image_cmd(&id, push(name, rng.random_range(1..11)))
                    .await
                    .map(drop)
            }
            (80..86, _, Some(id)) => {
                let name = tag_names[rng.random_range(0..tag_names.len())];
                let cmd = ImageCommand::DeleteTag {
                    name: name.into(),
                    force: rng.random(),
                };
                f.image_cmd(&id, cmd).await.map(drop)
            }
            (86..92, _, Some(id)) => {
                let cmd = ImageCommand::DeleteManifest {
                    digest: digest(rng.random_range(1..11)),
                };
                f.image_cmd(&id, cmd).await.map(drop)
            }
            (92..94, _, Some(id)) => {
                let r = f.image_cmd(&id, ImageCommand::Delete).await.map(drop);
                if r.is_ok() {
                    images.retain(|(i, _)| *i != id);
                }
                r
            }
            _ => continue,
        };
        match result {
            Ok(()) => {}
            Err(ServiceError::Domain(_)) => refused += 1,
            Err(other) => panic!("store failure in random workload: {other:?}"),
        }
    }
    // Keep the workload honest: most commands must have done something.
    assert!(refused < commands / 2, "{refused} of {commands} refused");
}

async fn rebuild_reproduces_random_workloads_row_for_row(store: Store) {
    for seed in [1_u64, 7, 42] {
        let f = Fixture::new(store.clone());
        random_workload(&f, seed, 250).await;
        let caps = ["images-view".to_owned(), "jobs-view".to_owned()];
        f.registry
            .create_token(
                &format!("t{seed}"),
                &caps,
                Some("proj".into()),
                None,
                &f.meta,
            )
            .await
            .unwrap();
    }
    // Whatever the random marks left standing, one image and one namespace end `deleting`.
    let rows = store.read_model_rows().await.unwrap();
    let f = Fixture::new(store.clone());
    let job_id = "job-last".to_owned();
    let image = rows.images.last().expect("an image survives");
    let cmd = ImageCommand::RequestDelete {
        job_id: job_id.clone(),
    };
    f.image_cmd(&image.id, cmd).await.unwrap();
    let cmd = NamespaceCommand::RequestDelete { job_id };
    let ns = &rows.namespaces[0].id;
    f.registry.namespace(ns, cmd, &f.meta).await.unwrap();
    let incremental = store.read_model_rows().await.unwrap();
    let counts = (
        incremental.images.len(),
        incremental.tags.len(),
        incremental.manifests.len(),
        incremental.manifest_children.len(),
    );
    assert!(
        counts.0 >= 3
            && counts.1 >= 5
            && counts.2 >= 5
            && counts.3 >= 1
            && incremental.api_tokens.len() == 3,
        "workload too thin to test anything: (images, tags, manifests, children) = {counts:?}"
    );
    assert!(
        incremental.images.iter().any(|i| i.status == "deleting")
            && incremental
                .namespaces
                .iter()
                .any(|n| n.status == "deleting"),
        "the workload leaves an image and a namespace marked for deletion"
    );

    // Sizes agree with the blobs the rows say each image has.
    let mut by_image: BTreeMap<&str, i64> = BTreeMap::new();
    for b in &incremental.image_blobs {
        *by_image.entry(&b.image_id).or_default() += b.size;
    }
    for img in &incremental.images {
        assert_eq!(
            img.size,
            by_image.get(img.id.as_str()).copied().unwrap_or(0),
            "{}",
            img.id
        );
    }

    let head = store.head().await.unwrap();
    let replayed = store.rebuild(&|_, _| {}).await.unwrap();
    assert_eq!(replayed as i64, head);
    let rebuilt = store.read_model_rows().await.unwrap();
    assert_eq!(rebuilt, incremental);
}

async fn an_event_stored_with_an_older_schema_version_still_replays(store: Store) {
    let f = Fixture::new(store);
    let ns = f.namespace("legacy").await;
    let img = f.image(&ns, "app").await;
    f.manifest(&img, 1, &[(100, 5)]).await;
    // A tag pushed by a build that wrote `tag.pushed` v1 (no tag id).
    let stream = streams::image(&img);
    let payload = format!(r#"{{"tag":"old","digest":"{}"}}"#, digest(1));
    f.store()
        .insert_raw_event(&stream, "tag.pushed", 1, &payload)
        .await
        .unwrap();
    let events = f.store().read_stream(&stream).await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(last.stored_schema_version, 1);
    let expected_id = layerline_core::domain::event::legacy_tag_id(&stream, "old");
    assert!(matches!(&last.event, DomainEvent::TagPushed(t) if t.tag_id == expected_id));

    f.store().rebuild(&|_, _| {}).await.unwrap();
    let tag = f
        .store()
        .tag(&expected_id)
        .await
        .unwrap()
        .expect("tag replayed");
    assert_eq!(tag.name, "old");
    // And the aggregate folds it: deleting the tag by name works.
    f.image_cmd(
        &img,
        ImageCommand::DeleteTag {
            name: "old".into(),
            force: false,
        },
    )
    .await
    .unwrap();
    assert!(f.store().tag(&expected_id).await.unwrap().is_none());
    // The folded state and the rows agree.
    let image = f.registry.load_image(&img).await.unwrap();
    let namespace = f.registry.load_namespace(&ns).await.unwrap();
    let rows = f.store().read_model_rows().await.unwrap();
    assert_eq!(materialize([&namespace], [&image], [], []), rows);
}

async fn job_descriptors_follow_their_streams_and_survive_rebuild(store: Store) {
    use layerline_core::domain::Aggregate;
    use layerline_core::domain::job::{Job, JobAccepted, JobCommand, JobKind};
    let f = Fixture::new(store);
    let run = |id: &'static str, cmd: JobCommand| {
        let registry = f.registry.clone();
        async move { registry.execute::<Job>(id, cmd, &Metadata::default()).await }
    };
    let accept = |id: &str, key: Option<&str>| {
        JobCommand::Accept(JobAccepted {
            job_id: id.into(),
            kind: JobKind::DeleteImage,
            caption: "delete image app".into(),
            input: serde_json::json!({"image_id": "i1"}),
            creator: Some("token:t".into()),
            idempotency_key: key.map(str::to_owned),
            project_id: None,
        })
    };
    run("j1", accept("j1", Some("k-1"))).await.unwrap();
    let row = f.store().job("j1").await.unwrap().unwrap();
    assert_eq!(
        (row.state.as_str(), row.attempts, row.kind.as_str()),
        ("queued", 0, "delete_image")
    );
    assert_eq!(row.input, r#"{"image_id":"i1"}"#);

    run(
        "j1",
        JobCommand::Start {
            task: "t".into(),
            takeover: false,
        },
    )
    .await
    .unwrap();
    let progress = |attempt, done| JobCommand::Progress {
        attempt,
        done,
        total: 4,
        step: format!("deleted tag {done}"),
    };
    run("j1", progress(1, 1)).await.unwrap();
    run(
        "j1",
        JobCommand::Fail {
            attempt: 1,
            error: "database away".into(),
            retry_at: Some("2026-11-22T06:00:00.000000Z".into()),
        },
    )
    .await
    .unwrap();
    let row = f.store().job("j1").await.unwrap().unwrap();
    assert_eq!(
        (row.state.as_str(), row.next_retry_at.as_deref()),
        ("scheduled", Some("2026-11-22T06:00:00.000000Z"))
    );
    assert_eq!(row.last_error.as_deref(), Some("database away"));

    run(
        "j1",
        JobCommand::Start {
            task: "t".into(),
            takeover: false,
        },
    )
    .await
    .unwrap();
    // The first attempt's worker wakes up late: its effects are refused.
    let stale = run("j1", progress(1, 2)).await.unwrap_err();
    assert!(
        matches!(
            stale,
            ServiceError::Domain(DomainError::Conflict {
                resource: "job",
                ..
            })
        ),
        "{stale:?}"
    );
    run("j1", progress(2, 4)).await.unwrap();
    run(
        "j1",
        JobCommand::Succeed {
            attempt: 2,
            output: serde_json::json!({"tags_deleted": 4}),
        },
    )
    .await
    .unwrap();
    let row = f.store().job("j1").await.unwrap().unwrap();
    assert_eq!(
        (
            row.state.as_str(),
            row.attempts,
            row.progress_done,
            row.progress_total
        ),
        ("completed", 2, 4, 4)
    );
    assert_eq!(row.output.as_deref(), Some(r#"{"tags_deleted":4}"#));
    assert!(row.started_at.is_some() && row.completed_at.is_some());

    // A second job may not reuse the idempotency key.
    let err = f
        .store()
        .append(
            &streams::job("j2"),
            Expected::Version(0),
            &Job::default()
                .decide("j2", accept("j2", Some("k-1")))
                .unwrap(),
            &Metadata::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unique { .. }), "{err:?}");

    run("j3", accept("j3", None)).await.unwrap();
    run(
        "j3",
        JobCommand::Start {
            task: "t".into(),
            takeover: false,
        },
    )
    .await
    .unwrap();
    run(
        "j3",
        JobCommand::RequestCancel {
            by: Some("me".into()),
        },
    )
    .await
    .unwrap();
    assert!(f.store().job("j3").await.unwrap().unwrap().cancel_requested);
    run("j3", JobCommand::ConfirmCancel { attempt: 1 })
        .await
        .unwrap();
    assert_eq!(
        f.store().job("j3").await.unwrap().unwrap().state,
        "cancelled"
    );

    let before = f.store().read_model_rows().await.unwrap();
    assert_eq!(before.job_descriptors.len(), 2);
    let jobs = [
        f.registry.load::<Job>("j1").await.unwrap(),
        f.registry.load::<Job>("j3").await.unwrap(),
    ];
    assert_eq!(
        materialize([], [], [], jobs.iter()).job_descriptors,
        before.job_descriptors
    );
    f.store().rebuild(&|_, _| {}).await.unwrap();
    assert_eq!(f.store().read_model_rows().await.unwrap(), before);
}

/// The writer claims the versions of a group's appends in one statement and updates its
/// jobs' descriptors a statement per step kind: many jobs stepping at once (started,
/// progressed, succeeded, retried, cancelled), with a losing duplicate start per job in the
/// mix, must leave every descriptor as its own stream says, and the losers write nothing.
async fn concurrent_job_steps_written_together_each_follow_their_own_stream(store: Store) {
    use layerline_core::domain::Aggregate;
    use layerline_core::domain::job::{Job, JobAccepted, JobCommand, JobKind};
    use layerline_core::service::Registry;
    const JOBS: usize = 40;
    fn job_id(i: usize) -> String {
        format!("job-{i:02}")
    }
    fn accept(i: usize) -> JobCommand {
        JobCommand::Accept(JobAccepted {
            job_id: job_id(i),
            kind: JobKind::Probe,
            caption: format!("probe {i}"),
            input: serde_json::json!({}),
            creator: None,
            idempotency_key: None,
            project_id: None,
        })
    }
    /// Runs `commands` on job `i` in order, on a task of its own.
    fn walk(
        registry: &Registry<Store>,
        i: usize,
        commands: Vec<JobCommand>,
    ) -> tokio::task::JoinHandle<Result<(), ServiceError>> {
        let registry = registry.clone();
        tokio::spawn(async move {
            for cmd in commands {
                registry
                    .execute::<Job>(&job_id(i), cmd, &Metadata::default())
                    .await?;
            }
            Ok(())
        })
    }
    let f = Fixture::new(store);
    let accepts: Vec<_> = (0..JOBS)
        .map(|i| walk(&f.registry, i, vec![accept(i)]))
        .collect();
    for accepted in accepts {
        accepted.await.unwrap().unwrap();
    }

    // Two workers start each job from the same state: one start lands per job.
    let mut starts = Vec::new();
    for i in 0..JOBS {
        let mut job = Job::default();
        for e in &Job::default().decide(&job_id(i), accept(i)).unwrap() {
            job.apply(e, "2026-11-30T00:00:00.000000Z", 1);
        }
        let start = JobCommand::Start {
            task: "t".into(),
            takeover: false,
        };
        let started = job.decide(&job_id(i), start).unwrap();
        for _ in 0..2 {
            let (store, started) = (f.store().clone(), started.clone());
            starts.push(tokio::spawn(async move {
                let stream = streams::job(&job_id(i));
                let meta = Metadata::default();
                store
                    .append(&stream, Expected::Version(1), &started, &meta)
                    .await
            }));
        }
    }
    let (mut won, mut lost) = (0, 0);
    for s in starts {
        match s.await.unwrap() {
            Ok(a) => {
                assert_eq!(a.stream_version, 2);
                won += 1;
            }
            Err(StoreError::Conflict {
                expected, actual, ..
            }) => {
                assert_eq!((expected, actual), (1, 2));
                lost += 1;
            }
            Err(other) => panic!("unexpected error: {other:?}"),
        }
    }
    assert_eq!((won, lost), (JOBS, JOBS));

    // Then every job walks its own steps, all jobs at once.
    let walks: Vec<_> = (0..JOBS)
        .map(|i| {
            let progress = JobCommand::Progress {
                attempt: 1,
                done: i as i64,
                total: 100,
                step: format!("step {i}"),
            };
            let end = match i % 3 {
                0 => vec![JobCommand::Succeed {
                    attempt: 1,
                    output: serde_json::json!({ "n": i }),
                }],
                1 => vec![JobCommand::Fail {
                    attempt: 1,
                    error: format!("away {i}"),
                    retry_at: Some("2026-12-01T00:00:00.000000Z".into()),
                }],
                _ => vec![
                    JobCommand::RequestCancel { by: None },
                    JobCommand::ConfirmCancel { attempt: 1 },
                ],
            };
            walk(&f.registry, i, [vec![progress], end].concat())
        })
        .collect();
    for walked in walks {
        walked.await.unwrap().unwrap();
    }

    for i in 0..JOBS {
        let row = f.store().job(&job_id(i)).await.unwrap().unwrap();
        let state = ["completed", "scheduled", "cancelled"][i % 3];
        let step = format!("step {i}");
        assert_eq!(
            (row.state.as_str(), row.attempts, row.progress_done),
            (state, 1, i as i64),
            "job {i}"
        );
        assert_eq!(row.progress_step.as_deref(), Some(step.as_str()));
    }
    let before = f.store().read_model_rows().await.unwrap();
    let mut jobs = Vec::new();
    for i in 0..JOBS {
        jobs.push(f.registry.load::<Job>(&job_id(i)).await.unwrap());
    }
    assert_eq!(
        materialize([], [], [], jobs.iter()).job_descriptors,
        before.job_descriptors
    );
    // The steps were written in groups: one transaction's events share their time.
    let log = f.store().read_all(0, 10_000).await.unwrap();
    let mut streams_at: BTreeMap<&str, HashSet<&str>> = BTreeMap::new();
    for e in &log {
        streams_at
            .entry(e.recorded_at.as_str())
            .or_default()
            .insert(e.stream_id.as_str());
    }
    assert!(
        streams_at.values().any(|s| s.len() > 1),
        "no two jobs' steps were written together"
    );
    f.store().rebuild(&|_, _| {}).await.unwrap();
    assert_eq!(f.store().read_model_rows().await.unwrap(), before);
}

async fn prune_policies_follow_their_streams_and_survive_rebuild(store: Store) {
    use layerline_core::domain::job::{Job, JobAccepted, JobCommand, JobKind};
    use layerline_core::domain::policy::{PolicyCommand, PolicySpec, PrunePolicy};
    use layerline_core::store::rows::materialize_policies;
    let f = Fixture::new(store);
    let ns = f.namespace("team").await;
    let body = |name: &str, keep_last: u32| -> PolicySpec {
        serde_json::from_value(serde_json::json!({
            "name": name, "namespace_id": ns, "rules": {"keep_last": keep_last},
            "schedule": "0 3 * * *", "timezone": "Europe/Paris",
        }))
        .unwrap()
    };
    let policy = |id: &'static str, cmd: PolicyCommand| {
        let registry = f.registry.clone();
        async move {
            registry
                .execute::<PrunePolicy>(id, cmd, &Metadata::default())
                .await
        }
    };
    policy("p1", PolicyCommand::Create(body("keep-3", 3)))
        .await
        .unwrap();
    // Names are unique per namespace.
    let taken = policy("p2", PolicyCommand::Create(body("keep-3", 5)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            taken,
            ServiceError::Domain(DomainError::Conflict {
                resource: "policy",
                ..
            })
        ),
        "{taken:?}"
    );
    assert!(f.store().policy("p2").await.unwrap().is_none());
    policy("p2", PolicyCommand::Create(body("keep-5", 5)))
        .await
        .unwrap();
    policy("p1", PolicyCommand::Update(body("keep-3", 4)))
        .await
        .unwrap();
    policy("p2", PolicyCommand::Delete).await.unwrap();

    let row = f.store().policy("p1").await.unwrap().unwrap();
    assert_eq!(row.version, 2);
    assert_eq!(row.schedule.as_deref(), Some("0 3 * * *"));
    assert_eq!(row.timezone, "Europe/Paris");
    let stored: PolicySpec = serde_json::from_str(&row.body).unwrap();
    assert_eq!(stored, body("keep-3", 4));
    assert!(f.store().policy("p2").await.unwrap().is_none());
    assert_eq!(row.last_run_job_id, None);

    // Runs naming the policy: the newest is its last run, whatever order they land in.
    let accept = |id: &'static str| {
        let registry = f.registry.clone();
        async move {
            let cmd = JobCommand::Accept(JobAccepted {
                job_id: id.into(),
                kind: JobKind::Prune,
                caption: "prune".into(),
                input: serde_json::json!({"policy_id": "p1"}),
                creator: None,
                idempotency_key: None,
                project_id: None,
            });
            registry
                .execute::<Job>(id, cmd, &Metadata::default())
                .await
                .unwrap();
        }
    };
    accept("0190-b").await;
    accept("0190-a").await;
    let row = f.store().policy("p1").await.unwrap().unwrap();
    assert_eq!(row.last_run_job_id.as_deref(), Some("0190-b"));

    let before = f.store().read_model_rows().await.unwrap();
    assert_eq!(before.prune_policies.len(), 1);
    let policies = [
        f.registry.load::<PrunePolicy>("p1").await.unwrap(),
        f.registry.load::<PrunePolicy>("p2").await.unwrap(),
    ];
    let jobs = [
        f.registry.load::<Job>("0190-a").await.unwrap(),
        f.registry.load::<Job>("0190-b").await.unwrap(),
    ];
    assert_eq!(
        materialize_policies(policies.iter(), jobs.iter()),
        before.prune_policies
    );
    f.store().rebuild(&|_, _| {}).await.unwrap();
    assert_eq!(f.store().read_model_rows().await.unwrap(), before);
}

async fn a_job_keeps_the_first_plan_stored_and_only_its_items(store: Store) {
    use layerline_core::domain::retention::KeepReason;
    use layerline_core::domain::retention::Reason;
    use layerline_core::store::plans::{ItemKind, KeptItem, PlanHeader, PlanItem};
    let header = |attempt: i64, tags: i64| PlanHeader {
        job_id: "j1".into(),
        position: 10 * attempt,
        policy_id: None,
        policy_version: None,
        attempt,
        images: 1,
        tags,
        manifests: 0,
        bytes: 0,
        created_at: "2026-11-23T00:00:00.000000Z".into(),
        kept_tags: Some(2 * attempt + 1),
        kept_manifests: Some(0),
    };
    // Each attempt keeps `2 * attempt + 1` tags.
    let kept = |attempt: i64| -> Vec<KeptItem> {
        (0..2 * attempt + 1)
            .map(|idx| KeptItem {
                idx,
                image_id: "i1".into(),
                image_name: "app".into(),
                kind: ItemKind::Tag,
                tag: Some(format!("a{attempt}-kept{idx}")),
                digest: digest(1000 + idx as u64),
                reason: KeepReason::ALL[idx as usize % KeepReason::ALL.len()],
                subject: (idx == 1).then(|| digest(1)),
            })
            .collect()
    };
    let items = |attempt: i64, n: i64| -> Vec<PlanItem> {
        (0..n)
            .map(|idx| PlanItem {
                idx,
                image_id: "i1".into(),
                image_name: "app".into(),
                kind: ItemKind::Tag,
                tag: Some(format!("a{attempt}-t{idx}")),
                digest: digest(idx as u64),
                pushed_version: Some(idx + 1),
                reason: if idx % 2 == 0 {
                    Reason::KeepLast
                } else {
                    Reason::AttachmentOf
                },
                bytes: 0,
                subject: (idx % 2 == 1).then(|| digest(idx as u64 - 1)),
            })
            .collect()
    };
    // Two attempts plan (a takeover): the first summary stored makes the plan.
    assert!(
        store
            .save_plan(&header(1, 12_000), &items(1, 12_000), &kept(1))
            .await
            .unwrap()
    );
    assert!(
        !store
            .save_plan(&header(2, 3), &items(2, 3), &kept(2))
            .await
            .unwrap()
    );
    let plan = store.plan("j1").await.unwrap().unwrap();
    assert_eq!((plan.attempt, plan.tags, plan.position), (1, 12_000, 10));
    let page = store.plan_items("j1", 11_998, 10).await.unwrap();
    let tags: Vec<_> = page.iter().map(|i| i.tag.clone().unwrap()).collect();
    assert_eq!(tags, ["a1-t11998", "a1-t11999"]);
    let all = store.plan_items("j1", 0, i64::MAX).await.unwrap();
    assert_eq!(all, items(1, 12_000), "every field reads back as stored");
    assert!(
        all.iter()
            .all(|i| i.tag.as_deref().unwrap().starts_with("a1-"))
    );
    // What the plan keeps is the winning attempt's too, read back as stored.
    assert_eq!((plan.kept_tags, plan.kept_manifests), (Some(3), Some(0)));
    assert_eq!(store.plan_keeps("j1", 0, 10).await.unwrap(), kept(1));
    assert!(store.plan("j2").await.unwrap().is_none());
    assert!(store.plan_items("j2", 0, 10).await.unwrap().is_empty());
    assert!(store.plan_keeps("j2", 0, 10).await.unwrap().is_empty());
}

/// On PostgreSQL a snapshot's pages are read by two connections sharing one exported
/// snapshot. A writer pushes tag `t{k}` to the first image and then to the last (pages
/// apart, read by different connections) while snapshots are taken: in each, the last
/// image's tags are the first's, or all but the newest.
async fn a_prune_snapshot_read_by_two_connections_is_one_point_in_time(store: Store) {
    let f = Fixture::new(store.clone());
    let ns = f.namespace("lockstep").await;
    let first = f.image(&ns, "a-first").await;
    for i in 0..1500 {
        f.image(&ns, &format!("m-{i:04}")).await;
    }
    let last = f.image(&ns, "z-last").await;
    for img in [&first, &last] {
        f.manifest(img, 1, &[(100, 10)]).await;
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (f, stop) = (Fixture::new(store.clone()), stop.clone());
        let (first, last) = (first.clone(), last.clone());
        tokio::spawn(async move {
            let mut k = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.tag(&first, &format!("t{k}"), 1).await;
                f.tag(&last, &format!("t{k}"), 1).await;
                k += 1;
            }
            k
        })
    };
    let tags = |image: &layerline_core::store::plans::SnapshotImage| -> HashSet<String> {
        let state = image.state().unwrap();
        state.tags.iter().map(|t| t.name.to_owned()).collect()
    };
    let mut seen = HashSet::new();
    for _ in 0..20 {
        let snapshot = store.prune_snapshot(&ns).await.unwrap();
        assert_eq!(snapshot.images.len(), 1502);
        let a = tags(snapshot.images.first().unwrap());
        let z = tags(snapshot.images.last().unwrap());
        assert!(
            z.is_subset(&a) && a.len() - z.len() <= 1,
            "the last image has {} tags, the first {}: not one point in time",
            z.len(),
            a.len()
        );
        seen.insert(a.len());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let pushed = writer.await.unwrap();
    assert!(
        pushed > 0 && seen.len() > 1,
        "the writer ran between snapshots"
    );
}

async fn a_prune_snapshot_reads_every_image_of_its_namespace_whole(store: Store) {
    let f = Fixture::new(store);
    let ns = f.namespace("snap").await;
    let other = f.namespace("elsewhere").await;
    let multi = f.image(&ns, "multi").await;
    f.manifest(&multi, 1, &[(100, 1000), (102, 7)]).await;
    f.manifest(&multi, 2, &[(101, 500)]).await;
    // Children listed out of digest order: the snapshot keeps the index's order.
    f.image_cmd(&multi, ImageCommand::RecordManifest(index(9, &[2, 1])))
        .await
        .unwrap();
    f.tag(&multi, "latest", 9).await;
    f.tag(&multi, "v1", 1).await;
    let stranger = f.image(&other, "multi").await;
    f.manifest(&stranger, 3, &[(103, 1)]).await;
    f.tag(&stranger, "v9", 3).await;
    // More images than one page of the snapshot's read, each without tags or manifests.
    for i in 0..501 {
        f.image(&ns, &format!("empty-{i:03}")).await;
    }

    let position = f.store().head().await.unwrap();
    let snapshot = f.store().prune_snapshot(&ns).await.unwrap();
    assert_eq!(snapshot.position, position);
    assert_eq!(snapshot.images.len(), 502);
    let names: std::collections::BTreeSet<&str> =
        snapshot.images.iter().map(|i| &*i.name).collect();
    assert_eq!(names.len(), 502, "no image read twice");
    for image in snapshot.images.iter().filter(|i| &*i.name != "multi") {
        assert_eq!(image.state().unwrap(), Default::default(), "{}", image.name);
    }
    let image = snapshot.images.iter().find(|i| *i.id == *multi).unwrap();
    let state = image.state().unwrap();
    let mut tags: Vec<(&str, &str)> = state.tags.iter().map(|t| (t.name, t.digest)).collect();
    tags.sort();
    assert_eq!(
        tags,
        [("latest", digest(9).as_str()), ("v1", digest(1).as_str())]
    );
    let rows = f.store().read_model_rows().await.unwrap();
    for tag in &state.tags {
        let row = rows
            .tags
            .iter()
            .find(|r| r.name == tag.name && r.image_id == multi);
        let row = row.unwrap();
        assert_eq!(tag.pushed_version, row.pushed_version);
        assert_eq!(format_time(tag.pushed_at), row.updated_at);
    }
    let manifest = |n: u64| {
        let m = state.manifests.iter().find(|m| m.digest == digest(n));
        m.unwrap_or_else(|| panic!("manifest {n} missing"))
    };
    assert_eq!(state.manifests.len(), 3);
    let mut blobs = manifest(1).blobs.clone();
    blobs.sort();
    assert_eq!(
        blobs,
        [
            (digest(100).as_str(), 1000),
            (digest(102).as_str(), 7),
            (digest(10_001).as_str(), 10)
        ]
    );
    assert_eq!(manifest(2).blobs.len(), 2);
    assert!(manifest(9).blobs.is_empty());
    assert_eq!(manifest(9).children, [digest(2), digest(1)]);
    assert!(manifest(1).children.is_empty());
}

async fn a_prune_releases_each_blob_by_the_references_it_drops(store: Store) {
    let f = Fixture::new(store);
    let ns = f.namespace("release").await;
    let img = f.image(&ns, "app").await;
    // Layer 100 is in all three manifests, 101 in the first two, 102 only in the third.
    f.manifest(&img, 1, &[(100, 1000), (101, 200)]).await;
    f.manifest(&img, 2, &[(100, 1000), (101, 200)]).await;
    f.manifest(&img, 3, &[(100, 1000), (102, 30)]).await;
    for (tag, n) in [("a", 1), ("b", 2), ("c", 3)] {
        f.tag(&img, tag, n).await;
    }
    // Another image of the namespace holds 101 too.
    let other = f.image(&ns, "other").await;
    f.manifest(&other, 4, &[(101, 200)]).await;
    let versions: BTreeMap<String, i64> = f
        .store()
        .read_model_rows()
        .await
        .unwrap()
        .tags
        .into_iter()
        .map(|t| (t.name, t.pushed_version))
        .collect();
    // One prune drops two references from 100 and 101 and one from each config.
    let cmd = ImageCommand::Prune {
        tags: vec![("a".into(), versions["a"]), ("b".into(), versions["b"])],
        manifests: vec![digest(1), digest(2)],
    };
    f.image_cmd(&img, cmd).await.unwrap();

    let rows = f.store().read_model_rows().await.unwrap();
    let refs = |owner: &str| -> BTreeMap<String, i64> {
        rows.image_blobs
            .iter()
            .filter(|b| b.image_id == owner)
            .map(|b| (b.digest.clone(), b.refs))
            .collect()
    };
    let expected: BTreeMap<String, i64> = [(digest(100), 1), (digest(102), 1), (digest(10_003), 1)]
        .into_iter()
        .collect();
    assert_eq!(refs(&img), expected);
    assert_eq!(f.image_size(&img).await, 1000 + 30 + 10);
    // 101 left the image but not the namespace; the configs of 1 and 2 left both.
    let expected: BTreeMap<String, i64> = [100, 101, 102, 10_003, 10_004]
        .into_iter()
        .map(|n| (digest(n), 1))
        .collect();
    assert_eq!(namespace_refs(&rows, &ns), expected);
    let ns_row = f.namespace_row(&ns).await;
    assert_eq!(ns_row.stored_size, 1000 + 200 + 30 + 10 + 10);
}

/// The stored blobs of namespace `ns` in `rows`, each with its reference count.
fn namespace_refs(rows: &ReadModelRows, ns: &str) -> BTreeMap<String, i64> {
    rows.namespace_blobs
        .iter()
        .filter(|b| b.namespace_id == ns)
        .map(|b| (b.digest.clone(), b.refs))
        .collect()
}

/// Prunes of many images arriving at once are written as one group with one set of
/// statements (design §4's reference counts must still hold per image and per namespace).
async fn concurrent_prunes_written_together_release_shared_blobs_by_every_reference(store: Store) {
    let f = Fixture::new(store.clone());
    let ns_a = f.namespace("group-a").await;
    let ns_b = f.namespace("group-b").await;
    // Every image keeps manifest `n*10 + 1` (tag `keep`) and loses `n*10 + 2` (tag `old`).
    // Blob 100 is in every manifest (it stays); 101 is in the lost manifests of a0..a3 (it
    // leaves namespace A, four references at once) and of b0, and in b1's kept one (it
    // stays in B); 102 is in the lost manifests of a4 and a5 and in a6's kept one (it stays
    // in A with one reference); each image has a blob of its own in its lost manifest.
    let mut images = Vec::new();
    for n in 0..8_u64 {
        let img = f.image(&ns_a, &format!("a{n}")).await;
        let kept: Vec<(u64, i64)> = match n {
            6 => vec![(100, 1000), (102, 300)],
            _ => vec![(100, 1000)],
        };
        let mut lost = vec![(100, 1000), (1000 + n, 7)];
        match n {
            0..=3 => lost.push((101, 200)),
            4 | 5 => lost.push((102, 300)),
            _ => {}
        }
        f.manifest(&img, n * 10 + 1, &kept).await;
        f.manifest(&img, n * 10 + 2, &lost).await;
        images.push((img, n));
    }
    for n in 8..12_u64 {
        let img = f.image(&ns_b, &format!("b{n}")).await;
        let kept = match n {
            9 => vec![(100, 1000), (101, 200)],
            _ => vec![(100, 1000)],
        };
        let lost = match n {
            8 => vec![(100, 1000), (101, 200), (1000 + n, 7)],
            _ => vec![(100, 1000), (1000 + n, 7)],
        };
        f.manifest(&img, n * 10 + 1, &kept).await;
        f.manifest(&img, n * 10 + 2, &lost).await;
        images.push((img, n));
    }
    // a7's lost manifest is also listed by an index, which goes with it.
    let (a7, _) = &images[7];
    f.image_cmd(a7, ImageCommand::RecordManifest(index(73, &[72])))
        .await
        .unwrap();
    for (img, n) in &images {
        f.tag(img, "keep", n * 10 + 1).await;
        f.tag(img, "old", n * 10 + 2).await;
    }
    let versions: BTreeMap<String, i64> = store
        .read_model_rows()
        .await
        .unwrap()
        .tags
        .into_iter()
        .filter(|t| t.name == "old")
        .map(|t| (t.image_id, t.pushed_version))
        .collect();

    let barrier = Arc::new(tokio::sync::Barrier::new(images.len()));
    let mut prunes = Vec::new();
    for (img, n) in images.clone() {
        let mut manifests = vec![digest(n * 10 + 2)];
        if n == 7 {
            manifests.push(digest(73));
        }
        let cmd = ImageCommand::Prune {
            tags: vec![("old".into(), versions[&img])],
            manifests,
        };
        let (registry, barrier) = (f.registry.clone(), barrier.clone());
        prunes.push(tokio::spawn(async move {
            barrier.wait().await;
            registry.image(&img, cmd, &Metadata::default()).await
        }));
    }
    for prune in prunes {
        let events = prune.await.unwrap().unwrap();
        assert!(events.len() >= 2, "each prune deletes its tag and manifest");
    }

    // The path under test ran: some transaction wrote several images' prunes (a group's
    // events share their `recorded_at`).
    let log = store.read_all(0, 100_000).await.unwrap();
    let mut groups: BTreeMap<&str, HashSet<&str>> = BTreeMap::new();
    for e in &log {
        if matches!(e.event, DomainEvent::TagDeleted(_)) {
            groups
                .entry(e.recorded_at.as_str())
                .or_default()
                .insert(&e.stream_id);
        }
    }
    let largest = groups.values().map(HashSet::len).max().unwrap_or(0);
    assert!(largest >= 2, "no group held two images' prunes: {groups:?}");

    let rows = store.read_model_rows().await.unwrap();
    // A keeps 100 (eight images), 102 (a6) and the configs of the kept manifests.
    let mut expected: BTreeMap<String, i64> =
        [(digest(100), 8), (digest(102), 1)].into_iter().collect();
    expected.extend((0..8).map(|n| (digest(10_000 + n * 10 + 1), 1)));
    assert_eq!(namespace_refs(&rows, &ns_a), expected);
    let mut expected: BTreeMap<String, i64> =
        [(digest(100), 4), (digest(101), 1)].into_iter().collect();
    expected.extend((8..12).map(|n| (digest(10_000 + n * 10 + 1), 1)));
    assert_eq!(namespace_refs(&rows, &ns_b), expected);
    assert!(
        rows.manifest_children.is_empty(),
        "the index's child rows went"
    );
    assert_eq!(rows.tags.len(), 12, "only the kept tags remain");
    for (img, n) in &images {
        let own = if *n == 6 { 300 } else { 0 } + if *n == 9 { 200 } else { 0 };
        assert_eq!(f.image_size(img).await, 1000 + 10 + own, "image {n}");
    }
    let a = f.namespace_row(&ns_a).await;
    assert_eq!((a.size, a.stored_size), (8 * 1010 + 300, 1000 + 300 + 80));
    let b = f.namespace_row(&ns_b).await;
    assert_eq!((b.size, b.stored_size), (4 * 1010 + 200, 1000 + 200 + 40));

    // And the log replays to the same rows, versions and sizes included.
    store.rebuild(&|_, _| {}).await.unwrap();
    assert_eq!(store.read_model_rows().await.unwrap(), rows);
}

async fn a_plan_made_while_reading_equals_the_plan_of_the_whole_snapshot(store: Store) {
    use layerline_core::domain::policy::{Policy, PruneInput};
    use layerline_jobs::prune::{make_plan, plan_from_store};

    let f = Fixture::new(store);
    let ns = f.namespace("pages").await;
    // More than a page of images; names whose byte order differs from a locale's
    // (PostgreSQL pages in its database collation, which need not be byte order; plans
    // list images in byte order).
    for i in 0..501 {
        f.image(&ns, &format!("empty-{i:03}")).await;
    }
    for (i, name) in ["a-z", "a.b", "ab", "a_c", "a0"].iter().enumerate() {
        let img = f.image(&ns, name).await;
        for t in 0..4_u64 {
            let n = 100 * i as u64 + t;
            f.manifest(&img, n, &[(1_000 + n, 10), (99, 1)]).await;
            f.tag(&img, &format!("v{t}"), n).await;
        }
    }
    let input: PruneInput = serde_json::from_value(serde_json::json!({
        "policy": {"namespace_id": ns, "rules": {"keep_last": 1}},
    }))
    .unwrap();
    let policy = Arc::new(Policy::compile(&input.policy).unwrap());
    let now = chrono::Utc::now();

    let plan = plan_from_store(f.store(), "job", &input, policy.clone(), now)
        .await
        .unwrap();
    let snapshot = f.store().prune_snapshot(&ns).await.unwrap();
    let whole = make_plan("job", &input, &policy, &snapshot, now).unwrap();
    assert_eq!(plan, whole);
    let (header, images) = (plan.header, plan.images);
    assert!(
        images
            .iter()
            .all(|list| list.iter().all(|i| i.image_id == list[0].image_id)),
        "each list is one image's"
    );
    let items: Vec<_> = images.into_iter().flatten().collect();
    assert_eq!((header.images, header.tags, header.manifests), (5, 15, 15));
    let names: Vec<&str> = items.iter().map(|i| &*i.image_name).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "images in byte order");
    assert!(items.iter().enumerate().all(|(n, i)| i.idx == n as i64));
}

/// A job's runner keeps its job's state between commands (`Registry::execute_on`): each
/// command is decided on that state and folded into it as stored. Once another writer has
/// moved the stream, a command decided on the kept state is decided again on the stream as
/// stored, whether the version check stopped it (a progress) or the kept state refused it
/// (confirming a cancel it had not seen); either way it is written once.
async fn a_kept_state_is_decided_on_and_read_again_once_the_stream_moved(store: Store) {
    use layerline_core::domain::Aggregate;
    use layerline_core::domain::job::{Job, JobAccepted, JobCommand, JobKind, JobState};
    use layerline_core::service::Registry;
    let registry = Registry::new(store.clone());
    let meta = Metadata::default();
    let progress = |done| JobCommand::Progress {
        attempt: 1,
        done,
        total: 10,
        step: format!("step {done}"),
    };
    for id in ["job-progress", "job-cancel"] {
        let accept = JobCommand::Accept(JobAccepted {
            job_id: id.to_owned(),
            kind: JobKind::Probe,
            caption: "probe".to_owned(),
            input: serde_json::json!({}),
            creator: None,
            idempotency_key: None,
            project_id: None,
        });
        registry.execute::<Job>(id, accept, &meta).await.unwrap();
        let mut kept: Job = registry.load(id).await.unwrap();
        let start = JobCommand::Start {
            task: "task-1".to_owned(),
            takeover: false,
        };
        registry
            .execute_on(id, &mut kept, start, &meta)
            .await
            .unwrap();
        let stored: Job = registry.load(id).await.unwrap();
        assert_eq!(kept, stored, "{id}: the kept state is folded as stored");
        assert_eq!(kept.version(), 2);

        // Another writer moves the stream behind the kept state's back.
        let other = match id {
            "job-progress" => progress(1),
            _ => JobCommand::RequestCancel {
                by: Some("someone".to_owned()),
            },
        };
        registry.execute::<Job>(id, other, &meta).await.unwrap();
        let ours = match id {
            "job-progress" => progress(2),
            _ => JobCommand::ConfirmCancel { attempt: 1 },
        };
        let events = registry
            .execute_on(id, &mut kept, ours, &meta)
            .await
            .unwrap();
        assert_eq!(events.len(), 1, "{id}");
        let stored: Job = registry.load(id).await.unwrap();
        assert_eq!(kept, stored, "{id}: read again, then folded as stored");
        assert_eq!(stored.version(), 4, "{id}: each command written once");
        let expected = match id {
            "job-progress" => (JobState::Running, 2),
            _ => (JobState::Cancelled, 0),
        };
        assert_eq!(
            (stored.state, stored.done),
            (Some(expected.0), expected.1),
            "{id}"
        );
    }
}
