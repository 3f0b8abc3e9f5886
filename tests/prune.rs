//! Prune runs through the real binary on both backends: the plan a run stores, what it
//! deletes, its guard, and a tag moved between planning and deleting.

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::Utc;
use common::{Fixture, Server, TestDb, call, digest, state, wait_for};
use layerline_core::domain::policy::{Policy, PruneInput};
use layerline_core::store::{Backend, ReadModels};
use layerline_jobs::prune::make_plan;
use reqwest::Method;
use serde_json::{Value, json};

on_both_backends!(
    a_dry_run_and_a_real_run_delete_exactly_the_planned_set,
    a_tag_moved_after_planning_survives_the_run,
    a_plan_over_max_deletions_deletes_nothing,
    policies_are_versioned_checked_and_run_by_id,
    schedulers_start_one_run_per_instant_and_catch_up_once,
);

const LIMIT: Duration = Duration::from_secs(60);

/// Namespace `team`: `app` with tags v1…v5 (pushed in that order, each on its own manifest
/// 1…5), `latest` on manifest 5 and untagged manifest 6; `api-gw` with v1…v3 on manifests
/// 11…13; `other` with v1…v3 on manifests 21…23. Every manifest: a 10-byte config and one
/// 100-byte layer of its own.
struct Team {
    ns: String,
    app: String,
    gw: String,
    other: String,
}

async fn team(fx: &Fixture) -> Team {
    let ns = fx.namespace("team").await;
    let app = fx.image(&ns, "app").await;
    for n in 1..=6 {
        fx.manifest(&app, n, &[(100 + n, 100)]).await;
    }
    for n in 1..=5 {
        fx.tag(&app, &format!("v{n}"), n).await;
    }
    fx.tag(&app, "latest", 5).await;
    let gw = fx.image(&ns, "api-gw").await;
    let other = fx.image(&ns, "other").await;
    for (image, base) in [(&gw, 10), (&other, 20)] {
        for n in 1..=3 {
            fx.manifest(image, base + n, &[(100 + base + n, 100)]).await;
            fx.tag(image, &format!("v{n}"), base + n).await;
        }
    }
    Team { ns, app, gw, other }
}

/// Keep the two most recent `v…` tags of `app` and `api-*` images, and no untagged manifest.
fn policy(ns: &str, max_deletions: u64) -> Value {
    json!({
        "namespace_id": ns,
        "image_names": ["app", "api-*"],
        "rules": {"tag_pattern": "^v", "keep_last": 2, "untagged": true},
        "max_deletions": max_deletions,
    })
}

async fn submit_prune(server: &Server, policy: Value, dry_run: bool) -> String {
    let (status, body) = call(
        Method::POST,
        &format!("{}/v1/images/tasks", server.base),
        Some(json!({"action": "prune", "contents": {"policy": policy, "dry_run": dry_run}})),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["data"]["action"], "prune", "{body}");
    body["data"]["job"]["id"].as_str().unwrap().to_owned()
}

async fn finished(server: &Server, id: &str) -> Value {
    wait_for(server, id, LIMIT, |j| {
        matches!(state(j), "completed" | "error" | "cancelled")
    })
    .await
}

/// Every item of job `id`'s plan, read `size` at a time; checks the pages add up.
async fn plan_items(server: &Server, id: &str, size: usize) -> (Value, Vec<Value>) {
    plan_pages(server, id, size, "").await
}

/// Every item of job `id`'s plan under `filter` (query parameters to add), read `size` at a
/// time; checks the pages add up.
async fn plan_pages(server: &Server, id: &str, size: usize, filter: &str) -> (Value, Vec<Value>) {
    let mut items = Vec::new();
    let mut header = Value::Null;
    for page in 1.. {
        let url = format!(
            "{}/v1/jobs/{id}/plan?page[number]={page}&page[size]={size}{filter}",
            server.base
        );
        let (status, body) = call(Method::GET, &url, None).await;
        assert_eq!(status, 200, "{body}");
        let got = body["data"]["items"].as_array().unwrap().clone();
        header = body["data"].clone();
        header["total"] = body["meta"]["total"].clone();
        let last = got.len() < size;
        items.extend(got);
        if last {
            break;
        }
    }
    assert_eq!(header["total"], items.len(), "meta.total counts every item");
    (header, items)
}

/// An item as `image tag-or-manifest`, for comparing plans.
fn key(item: &Value) -> String {
    match item["kind"].as_str() {
        Some("tag") => format!("{} tag {}", item["image_name"], item["tag"]),
        _ => format!("{} manifest {}", item["image_name"], item["digest"]),
    }
}

async fn a_dry_run_and_a_real_run_delete_exactly_the_planned_set(db: &TestDb) {
    let fx = Fixture::new(db.store().await);
    let t = team(&fx).await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::on_database(&db.url, dir.path(), &[]);

    let dry = submit_prune(&server, policy(&t.ns, 100), true).await;
    let j = finished(&server, &dry).await;
    assert_eq!(state(&j), "completed", "{j}");
    assert_eq!(j["output"]["dry_run"], true);
    let (header, dry_items) = plan_items(&server, &dry, 2).await;
    let planned: BTreeSet<String> = dry_items.iter().map(key).collect();
    let expected: BTreeSet<String> = [
        "\"app\" tag \"v1\"".to_owned(),
        "\"app\" tag \"v2\"".to_owned(),
        "\"app\" tag \"v3\"".to_owned(),
        "\"api-gw\" tag \"v1\"".to_owned(),
    ]
    .into_iter()
    .chain([1, 2, 3, 6].map(|n| format!("\"app\" manifest \"{}\"", digest(n))))
    .chain([format!("\"api-gw\" manifest \"{}\"", digest(11))])
    .collect();
    assert_eq!(planned, expected);
    // Each deleted manifest frees its own config and layer.
    assert_eq!(header["bytes"], 5 * 110);
    let reasons: BTreeSet<&str> = dry_items
        .iter()
        .map(|i| i["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        BTreeSet::from(["keep_last", "tags_deleted", "untagged"])
    );
    // It lists what it keeps, each with its rule, paged as the deletions are: everything of
    // the covered images that does not go (`other` is not covered).
    let (kept_header, kept) = plan_pages(&server, &dry, 2, "&filter[decision]=keep").await;
    assert_eq!(
        (&kept_header["kept_tags"], &kept_header["kept_manifests"]),
        (&json!(5), &json!(4)),
        "{kept_header}"
    );
    let kept: BTreeSet<(String, &str)> = kept
        .iter()
        .map(|i| (key(i), i["reason"].as_str().unwrap()))
        .collect();
    let expected: BTreeSet<(String, &str)> = [
        ("\"app\" tag \"latest\"".to_owned(), "not_matched"),
        ("\"app\" tag \"v4\"".to_owned(), "keep_last"),
        ("\"app\" tag \"v5\"".to_owned(), "keep_last"),
        ("\"api-gw\" tag \"v2\"".to_owned(), "keep_last"),
        ("\"api-gw\" tag \"v3\"".to_owned(), "keep_last"),
    ]
    .into_iter()
    .chain([4, 5].map(|n| (format!("\"app\" manifest \"{}\"", digest(n)), "kept_tag")))
    .chain([12, 13].map(|n| (format!("\"api-gw\" manifest \"{}\"", digest(n)), "kept_tag")))
    .collect();
    assert_eq!(kept, expected);
    let url = format!("{}/v1/jobs/{dry}/plan?filter[decision]=maybe", server.base);
    let (status, body) = call(Method::GET, &url, None).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["source"], "/filter[decision]", "{body}");

    // A dry run deletes nothing.
    assert_eq!(fx.tag_names(&t.app).await.len(), 6);
    assert_eq!(fx.image_size(&t.app).await, 6 * 110);

    let real = submit_prune(&server, policy(&t.ns, 100), false).await;
    let j = finished(&server, &real).await;
    assert_eq!(state(&j), "completed", "{j}");
    let (_, real_items) = plan_items(&server, &real, 1000).await;
    let applied: BTreeSet<String> = real_items.iter().map(key).collect();
    assert_eq!(
        applied, planned,
        "the real run planned what the dry run did"
    );
    let out = &j["output"];
    assert_eq!(out["tags_deleted"], 4, "{out}");
    assert_eq!(out["manifests_deleted"], 5, "{out}");
    assert_eq!(out["bytes_freed"], 5 * 110, "{out}");
    assert_eq!(out["skipped"], 0, "{out}");

    // Exactly the planned set is gone.
    assert_eq!(fx.tag_names(&t.app).await, ["latest", "v4", "v5"]);
    assert_eq!(fx.tag_names(&t.gw).await, ["v2", "v3"]);
    assert_eq!(fx.tag_names(&t.other).await, ["v1", "v2", "v3"]);
    assert_eq!(fx.image_size(&t.app).await, 2 * 110);
    assert_eq!(fx.image_size(&t.gw).await, 2 * 110);
    assert_eq!(fx.image_size(&t.other).await, 3 * 110);
    server.terminate();
}

async fn a_tag_moved_after_planning_survives_the_run(db: &TestDb) {
    let store = db.store().await;
    let fx = Fixture::new(store.clone());
    let t = team(&fx).await;
    let dir = tempfile::tempdir().unwrap();

    // An API-only process accepts the run; no worker takes it yet.
    let api = Server::on_database(&db.url, dir.path(), &["--role", "api"]);
    let id = submit_prune(&api, policy(&t.ns, 100), false).await;
    assert!(api.terminate());

    // The run's planning step, as a worker that planned and then died would leave it: the
    // plan is stored at the current log position.
    let input = PruneInput {
        policy_id: None,
        policy_version: None,
        policy: serde_json::from_value(policy(&t.ns, 100)).unwrap(),
        dry_run: false,
        scheduled_for: None,
    };
    let compiled = Policy::compile(&input.policy).unwrap();
    let snapshot = store.prune_snapshot(&t.ns).await.unwrap();
    let plan = make_plan(&id, &input, &compiled, &snapshot, Utc::now()).unwrap();
    let items: Vec<_> = plan.images.into_iter().flatten().collect();
    assert!(store.save_plan(&plan.header, &items, &[]).await.unwrap());
    assert!(items.iter().any(|i| i.tag.as_deref() == Some("v2")));

    // After the plan: v2 is pushed again (moved to manifest 5), and a new tag points at the
    // planned manifest 3.
    fx.tag(&t.app, "v2", 5).await;
    fx.tag(&t.app, "hotfix", 3).await;

    // A worker runs the job from its stored plan.
    let server = Server::on_database(&db.url, dir.path(), &[]);
    let j = finished(&server, &id).await;
    assert_eq!(state(&j), "completed", "{j}");
    assert_eq!(
        fx.tag_names(&t.app).await,
        ["hotfix", "latest", "v2", "v4", "v5"]
    );
    let v2 = fx
        .store()
        .list_tags(&layerline_core::store::TagQuery {
            image_id: t.app.clone(),
            name: Some("v2".to_owned()),
            sort: None,
            limit: 10,
            offset: 0,
        })
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|tag| tag.name == "v2")
        .unwrap();
    assert_eq!(
        v2.digest,
        digest(5),
        "the moved tag still points where it moved"
    );
    let out = &j["output"];
    // v1 and v3 went; v2 (moved) and manifest 3 (tagged again) were skipped.
    assert_eq!(out["tags_deleted"], 3, "v1, v3 and api-gw's v1: {out}");
    assert_eq!(out["skipped"], 2, "{out}");
    assert_eq!(out["planned"]["position"], plan.header.position);
    // Manifest 3 stays (hotfix); 1, 2 (untagged once v2 moved, as planned) and 6 went.
    assert_eq!(
        fx.image_size(&t.app).await,
        3 * 110,
        "manifests 3, 4, 5 remain"
    );
    server.terminate();
}

async fn a_plan_over_max_deletions_deletes_nothing(db: &TestDb) {
    let fx = Fixture::new(db.store().await);
    let t = team(&fx).await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::on_database(&db.url, dir.path(), &[]);

    let id = submit_prune(&server, policy(&t.ns, 8), false).await;
    let j = finished(&server, &id).await;
    assert_eq!(state(&j), "error", "{j}");
    assert_eq!(j["attempts"], 1, "a guard is not retried: {j}");
    let error = j["last_error"].as_str().unwrap();
    assert!(
        error.contains("9 items, more than max_deletions (8)"),
        "{error}"
    );
    // The plan is kept, to show what the run would have done; nothing was deleted.
    let (header, items) = plan_items(&server, &id, 100).await;
    assert_eq!(items.len(), 9);
    assert_eq!(header["tags"], 4);
    assert_eq!(fx.tag_names(&t.app).await.len(), 6);
    assert_eq!(fx.tag_names(&t.gw).await.len(), 3);
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_prune_requests_are_refused_and_nothing_is_queued() {
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let fx = Fixture::new(db.store().await);
    let ns = fx.namespace("team").await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::on_database(&db.url, dir.path(), &["--role", "api"]);
    let url = format!("{}/v1/images/tasks", server.base);

    let refused = |contents: Value| {
        let url = url.clone();
        async move {
            let body = json!({"action": "prune", "contents": contents});
            call(Method::POST, &url, Some(body)).await
        }
    };
    let mut bad_regex = policy(&ns, 10);
    bad_regex["rules"]["tag_pattern"] = json!("(unclosed");
    let (status, body) = refused(json!({"policy": bad_regex})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["source"], "/rules.tag_pattern", "{body}");

    let mut bad_age = policy(&ns, 10);
    bad_age["rules"]["older_than"] = json!("30 days");
    let (status, body) = refused(json!({"policy": bad_age})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["source"], "/rules.older_than", "{body}");

    let (status, body) = refused(json!({"dry_run": true})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["source"], "/contents/policy", "{body}");

    let (status, body) = refused(json!({"policy": policy(&ns, 10), "dryrun": true})).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["detail"].as_str().unwrap().contains("dryrun"),
        "{body}"
    );

    let (status, body) = refused(json!({"policy": policy("no-such-namespace", 10)})).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "404.namespace", "{body}");

    // A token that may only read jobs cannot start one.
    let viewer = fx
        .registry
        .create_token("viewer", &["jobs-view".to_owned()], None, None, &fx.meta)
        .await
        .unwrap()
        .unwrap();
    let res = reqwest::Client::new()
        .post(&url)
        .header("X-Auth-Token", &viewer.secret)
        .json(&json!({"action": "prune", "contents": {"policy": policy(&ns, 10)}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 403);

    let (status, body) = call(
        Method::GET,
        &format!("{}/v1/jobs?meta=total", server.base),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["meta"]["total"], 0, "no job was accepted: {body}");
    server.terminate();
}

async fn policies_are_versioned_checked_and_run_by_id(db: &TestDb) {
    let fx = Fixture::new(db.store().await);
    let t = team(&fx).await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::on_database(&db.url, dir.path(), &[]);
    let url = format!("{}/v1/prune-policies", server.base);
    let mut body = policy(&t.ns, 100);
    body["name"] = json!("keep-2");
    body["schedule"] = json!("0 3 * * *");
    body["timezone"] = json!("Europe/Paris");

    let (status, created) = call(Method::POST, &url, Some(body.clone())).await;
    assert_eq!(status, 201, "{created}");
    let p = &created["data"];
    let id = p["id"].as_str().unwrap().to_owned();
    assert_eq!(p["version"], 1);
    assert_eq!(p["rules"]["keep_last"], 2);
    assert_eq!(p["enabled"], true);
    assert!(
        p["next_run_at"]
            .as_str()
            .unwrap()
            .ends_with(":00:00.000000Z"),
        "{p}"
    );
    assert_eq!(p["last_run"], Value::Null);

    // Each bad field is refused by name, and nothing is recorded.
    for (field, value, source) in [
        ("schedule", json!("every night"), "/schedule"),
        ("timezone", json!("Mars/Olympus"), "/timezone"),
        ("rules", json!({"tag_pattern": "("}), "/rules.tag_pattern"),
        (
            "rules",
            json!({"older_than": "a while"}),
            "/rules.older_than",
        ),
        ("max_deletions", json!(0), "/max_deletions"),
        ("name", json!(""), "/name"),
    ] {
        let mut bad = body.clone();
        bad["name"] = json!("other");
        bad[field] = value;
        let (status, answer) = call(Method::POST, &url, Some(bad)).await;
        assert_eq!(status, 422, "{field}: {answer}");
        assert_eq!(answer["error"]["source"], source, "{answer}");
    }
    let (status, answer) = call(Method::POST, &url, Some(body.clone())).await;
    assert_eq!(status, 409, "the name is taken: {answer}");
    let mut elsewhere = body.clone();
    elsewhere["namespace_id"] = json!("no-such-namespace");
    let (status, _) = call(Method::POST, &url, Some(elsewhere)).await;
    assert_eq!(status, 404);
    let (status, list) = call(Method::GET, &url, None).await;
    assert_eq!(status, 200);
    assert_eq!(list["meta"]["total"], 1, "{list}");

    // A change is a new version; the same body again records nothing.
    body["max_deletions"] = json!(50);
    let one = format!("{url}/{id}");
    let (status, updated) = call(Method::PUT, &one, Some(body.clone())).await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["data"]["version"], 2);
    assert_eq!(updated["data"]["max_deletions"], 50);
    let (_, again) = call(Method::PUT, &one, Some(body.clone())).await;
    assert_eq!(again["data"]["version"], 2);

    // A run by id uses the current version and shows as the policy's last run.
    let (status, answer) = call(
        Method::POST,
        &format!("{}/v1/images/tasks", server.base),
        Some(json!({"action": "prune", "contents": {"policy_id": id, "dry_run": true}})),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    let job = answer["data"]["job"]["id"].as_str().unwrap().to_owned();
    let j = finished(&server, &job).await;
    assert_eq!(state(&j), "completed", "{j}");
    assert_eq!(j["output"]["policy_id"], id.as_str());
    assert_eq!(j["output"]["policy_version"], 2);
    assert_eq!(j["output"]["planned"]["tags"], 4);
    let (_, shown) = call(Method::GET, &one, None).await;
    assert_eq!(shown["data"]["last_run"]["job_id"], job.as_str(), "{shown}");
    assert_eq!(shown["data"]["last_run"]["state"], "completed");

    // Only policies-manage may touch policies.
    let viewer = fx
        .registry
        .create_token("viewer", &["jobs-view".to_owned()], None, None, &fx.meta)
        .await
        .unwrap()
        .unwrap();
    let res = reqwest::Client::new()
        .get(&one)
        .header("X-Auth-Token", &viewer.secret)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 403);

    let (status, _) = call(Method::DELETE, &one, None).await;
    assert_eq!(status, 204);
    let (status, gone) = call(Method::GET, &one, None).await;
    assert_eq!(status, 404, "{gone}");
    assert_eq!(gone["error"]["code"], "404.policy");
    let (status, _) = call(
        Method::POST,
        &format!("{}/v1/images/tasks", server.base),
        Some(json!({"action": "prune", "contents": {"policy_id": id}})),
    )
    .await;
    assert_eq!(status, 404);
    server.terminate();
}

/// The scheduled instants of the scheduler's prune jobs, in order.
async fn scheduled_instants(store: &layerline_core::store::Store) -> Vec<String> {
    let rows = store.read_model_rows().await.unwrap();
    let mut instants: Vec<String> = rows
        .job_descriptors
        .iter()
        .filter(|j| j.creator.as_deref() == Some(layerline_jobs::scheduler::CREATOR))
        .map(|j| {
            let input: Value = serde_json::from_str(&j.input).unwrap();
            input["scheduled_for"].as_str().unwrap().to_owned()
        })
        .collect();
    instants.sort();
    instants
}

fn seconds(a: &str, b: &str) -> i64 {
    let t = |s: &str| layerline_core::domain::parse_time(s).unwrap();
    (t(b) - t(a)).num_seconds()
}

/// A policy on an every-second schedule that deletes nothing.
async fn every_second(fx: &Fixture, ns: &str) -> String {
    use layerline_core::domain::policy::{PolicyCommand, PrunePolicy};
    let id = uuid::Uuid::now_v7().to_string();
    let mut body = policy(ns, 100);
    body["name"] = json!("tick");
    body["schedule"] = json!("* * * * * *");
    body["rules"] = json!({"tag_pattern": "^none$"});
    let body = serde_json::from_value(body).unwrap();
    fx.registry
        .execute::<PrunePolicy>(&id, PolicyCommand::Create(body), &fx.meta)
        .await
        .unwrap();
    id
}

async fn schedulers_start_one_run_per_instant_and_catch_up_once(db: &TestDb) {
    use layerline_core::jobs::NoDispatch;
    use layerline_jobs::scheduler::Scheduler;
    use std::sync::Arc;
    let store = db.store().await;
    let fx = Fixture::new(store.clone());
    let t = team(&fx).await;
    let id = every_second(&fx, &t.ns).await;
    let created = fx.store().policy(&id).await.unwrap().unwrap().updated_at;
    let t0 = layerline_core::domain::parse_time(&created).unwrap() + chrono::Duration::seconds(10);
    let second = chrono::Duration::seconds(1);

    // Two replicas tick at the same moments: each instant gets one job.
    let mut a = Scheduler::new(store.clone(), Arc::new(NoDispatch));
    let mut b = Scheduler::new(store.clone(), Arc::new(NoDispatch));
    for i in 0..6 {
        let now = t0 + second * i;
        let (ra, rb) = tokio::join!(a.tick(now), b.tick(now));
        ra.unwrap();
        rb.unwrap();
    }
    let instants = scheduled_instants(&store).await;
    assert_eq!(instants.len(), 6, "{instants:?}");
    for pair in instants.windows(2) {
        assert_eq!(
            seconds(&pair[0], &pair[1]),
            1,
            "no gap, no duplicate: {instants:?}"
        );
    }
    // The first run is for the latest instant before the first tick, not for every instant
    // since the policy was created.
    let first = layerline_core::domain::parse_time(&instants[0]).unwrap();
    assert!(first > t0 - second * 2 && first < t0, "{first} vs {t0}");

    // Ten instants pass with no tick (every replica down): the next tick runs once.
    let later = t0 + second * 16;
    assert_eq!(a.tick(later).await.unwrap(), 1);
    assert_eq!(
        a.tick(later).await.unwrap(),
        0,
        "the same moment again starts nothing"
    );
    // A replica that starts afresh knows the last run from the jobs.
    let mut fresh = Scheduler::new(store.clone(), Arc::new(NoDispatch));
    assert_eq!(fresh.tick(later).await.unwrap(), 0);
    let instants = scheduled_instants(&store).await;
    assert_eq!(instants.len(), 7, "{instants:?}");
    assert_eq!(seconds(&instants[5], &instants[6]), 11);

    // Each of those runs is a real prune job of the policy's current version.
    let row = fx.store().policy(&id).await.unwrap().unwrap();
    let last = fx
        .store()
        .job(row.last_run_job_id.as_deref().unwrap())
        .await
        .unwrap()
        .unwrap();
    let input: Value = serde_json::from_str(&last.input).unwrap();
    assert_eq!(input["scheduled_for"], instants[6].as_str());
    assert_eq!(input["policy_version"], 1);
    assert_eq!(last.kind, "prune");
}

/// Checks `instants` are one-second steps; returns where the steps break (the index after
/// each break).
fn breaks(instants: &[String]) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, pair) in instants.windows(2).enumerate() {
        let step = seconds(&pair[0], &pair[1]);
        assert!(step >= 1, "a duplicate instant: {instants:?}");
        if step > 1 {
            out.push(i + 1);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_serve_processes_on_postgres_start_each_scheduled_run_once() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let store = db.store().await;
    let fx = Fixture::new(store.clone());
    let t = team(&fx).await;
    let dir = tempfile::tempdir().unwrap();
    let args = ["--scheduler-tick-ms", "200"];
    let a = Server::on_database(&db.url, dir.path(), &args);
    let b = Server::on_database(&db.url, dir.path(), &args);
    every_second(&fx, &t.ns).await;
    tokio::time::sleep(Duration::from_secs(11)).await;
    // One replica stops; the other goes on alone.
    assert!(a.terminate());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(b.terminate());
    let instants = scheduled_instants(&store).await;
    assert!(instants.len() >= 11, "{instants:?}");
    assert_eq!(breaks(&instants), Vec::<usize>::new(), "{instants:?}");

    // Every scheduler down across several instants, then one back: one run for all of them.
    let before = instants.len();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let c = Server::on_database(&db.url, dir.path(), &args);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(c.terminate());
    let instants = scheduled_instants(&store).await;
    assert_eq!(breaks(&instants), vec![before], "{instants:?}");
    assert!(
        seconds(&instants[before - 1], &instants[before]) >= 4,
        "several instants were missed: {instants:?}"
    );

    // The runs themselves went through the workers.
    let rows = store.read_model_rows().await.unwrap();
    let prune_jobs: Vec<_> = rows
        .job_descriptors
        .iter()
        .filter(|j| j.kind == "prune")
        .collect();
    assert_eq!(prune_jobs.len(), instants.len());
    let completed = prune_jobs.iter().filter(|j| j.state == "completed").count();
    assert!(
        completed >= instants.len() - 2,
        "{completed} of {}",
        instants.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prune_command_runs_a_policy_and_prints_its_plan() {
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let fx = Fixture::new(db.store().await);
    let t = team(&fx).await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::on_database(&db.url, dir.path(), &[]);
    let mut body = policy(&t.ns, 8);
    body["name"] = json!("keep-2");
    let (status, created) = call(
        Method::POST,
        &format!("{}/v1/prune-policies", server.base),
        Some(body),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["data"]["id"].as_str().unwrap().to_owned();
    let prune = |extra: &'static [&'static str]| {
        let (base, id) = (server.base.clone(), id.clone());
        async move {
            tokio::process::Command::new(common::BIN)
                .args(["prune", "--url", &base, "--policy", &id])
                .args(extra)
                .env("LAYERLINE_TOKEN", common::ADMIN)
                .output()
                .await
                .unwrap()
        }
    };

    let out = prune(&["--dry-run"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(": completed"), "{stdout}");
    assert!(
        stdout.contains("4 tag(s), 5 manifest(s), 550 bytes"),
        "{stdout}"
    );
    assert!(
        stdout.contains("app: tag v1 (keep_last, 0 bytes)"),
        "{stdout}"
    );
    assert_eq!(
        fx.tag_names(&t.app).await.len(),
        6,
        "a dry run deletes nothing"
    );

    // Nine deletions planned, eight allowed: the run fails, deletes nothing, shows its plan.
    let out = prune(&[]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("more than max_deletions (8)"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("4 tag(s)"));
    assert_eq!(fx.tag_names(&t.app).await.len(), 6);
    server.terminate();
}
