//! The OCI distribution client against a real registry: Debian's `docker-registry` (CNCF
//! distribution 2.8), started by the test on a free loopback port with its storage in a
//! temporary directory, and fed fixture images over the OCI API.

#[macro_use]
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::registry::{Registry, free_port};

use layerline_core::oci::{
    Client, Credentials, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, OciError, Parsed, parse, sha256,
};
use serde_json::json;

/// `team/multi`: manifests tagged `amd64` and `arm64` (digest and bytes), and `latest`, an
/// OCI index of the two with their platforms.
struct Multi {
    amd64: (String, Vec<u8>),
    arm64: (String, Vec<u8>),
    index: String,
}

async fn push_multi(reg: &Registry) -> Multi {
    let amd64 = reg
        .image("team/multi", "amd64", OCI_MANIFEST, &["x86 build"])
        .await;
    let arm64 = reg
        .image("team/multi", "arm64", OCI_MANIFEST, &["arm build"])
        .await;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": amd64.0, "size": amd64.1.len(),
             "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": OCI_MANIFEST, "digest": arm64.0, "size": arm64.1.len(),
             "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        ],
    })
    .to_string();
    let index = reg
        .manifest("team/multi", "latest", OCI_INDEX, index.as_bytes())
        .await;
    Multi {
        amd64,
        arm64,
        index,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_lists_fetches_and_verifies_manifests_of_a_real_registry() {
    let reg = Registry::start().await;
    let (v1, v1_body) = reg
        .image("team/app", "v1", OCI_MANIFEST, &["base layer", "app v1"])
        .await;
    let (v2, _) = reg
        .image("team/app", "v2", OCI_MANIFEST, &["base layer", "app v2!"])
        .await;
    reg.image("team/api", "latest", DOCKER_MANIFEST, &["api layer"])
        .await;
    let multi = push_multi(&reg).await;
    let (amd64, arm64, index_digest) = (
        multi.amd64.0.clone(),
        multi.arm64.0.clone(),
        multi.index.clone(),
    );

    // Pages of one entry: every page is reached through the Link header.
    let client = Client::new(&reg.base, Credentials::Anonymous, 4)
        .unwrap()
        .with_page_size(1);
    client.probe().await.unwrap();
    assert_eq!(
        client.catalog().await.unwrap(),
        ["team/api", "team/app", "team/multi"]
    );
    assert_eq!(client.tags("team/app").await.unwrap(), ["v1", "v2"]);

    // A manifest by tag and by digest: verified, typed and parsed.
    let fetched = client.manifest("team/app", "v1").await.unwrap();
    assert_eq!(fetched.digest, v1);
    assert_eq!(fetched.body, v1_body);
    assert_eq!(fetched.media_type, OCI_MANIFEST);
    match parse("team/app:v1", &fetched).unwrap() {
        Parsed::Image { config, layers } => {
            assert!(config.unwrap().size > 0);
            let sizes: Vec<i64> = layers.iter().map(|l| l.size).collect();
            assert_eq!(sizes, [10, 6]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(client.manifest("team/app", &v1).await.unwrap(), fetched);
    let docker = client.manifest("team/api", "latest").await.unwrap();
    assert_eq!(docker.media_type, DOCKER_MANIFEST);
    assert!(matches!(
        parse("team/api:latest", &docker).unwrap(),
        Parsed::Image { .. }
    ));
    let multi = client.manifest("team/multi", "latest").await.unwrap();
    assert_eq!(multi.digest, index_digest);
    assert_eq!(
        parse("team/multi:latest", &multi).unwrap(),
        Parsed::Index {
            children: vec![
                (amd64, Some("linux/amd64".to_owned())),
                (arm64, Some("linux/arm64/v8".to_owned())),
            ]
        }
    );

    // What is not there is a NotFound naming it.
    let err = client.manifest("team/app", "nope").await.unwrap_err();
    assert!(matches!(err, OciError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("team/app:nope"), "{err}");
    let err = client.tags("team/none").await.unwrap_err();
    assert!(matches!(err, OciError::NotFound { .. }), "{err:?}");

    // Deleting a manifest: it is gone, and deleting it again is no error.
    client.delete_manifest("team/app", &v2).await.unwrap();
    let err = client.manifest("team/app", &v2).await.unwrap_err();
    assert!(matches!(err, OciError::NotFound { .. }), "{err:?}");
    client.delete_manifest("team/app", &v2).await.unwrap();
}

/// A stand-in registry for what the real one cannot be made to do: serve a manifest whose
/// bytes do not match its digest, challenge for a bearer token from a realm of its own, and
/// answer 503 with `Retry-After` before it answers.
mod fake {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;

    use super::*;

    pub const MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#;

    #[derive(Clone, Default)]
    pub struct Counts {
        pub busy: Arc<AtomicUsize>,
        pub tokens: Arc<AtomicUsize>,
    }

    /// Serves on a free loopback port; returns its base URL.
    pub async fn start(counts: Counts) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let realm = format!("{base}/token");
        let app = Router::new()
            .route(
                "/v2/",
                get(move |headers: HeaderMap| async move { authorized(&headers, &realm) }),
            )
            .route("/token", get(token))
            .route("/v2/team/app/manifests/{reference}", get(tampered))
            .route("/v2/team/busy/tags/list", get(busy))
            .with_state(counts);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        base
    }

    /// `{}` with the right bearer token; a challenge naming the realm otherwise.
    fn authorized(headers: &HeaderMap, realm: &str) -> Response {
        if headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            == Some("Bearer good-token")
        {
            return "{}".into_response();
        }
        let challenge = format!(
            r#"Bearer realm="{realm}",service="fake",scope="registry:catalog:*,repository:x:pull""#
        );
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, challenge)],
        )
            .into_response()
    }

    /// Hands out a token for `user:secret` (basic auth) only.
    async fn token(State(counts): State<Counts>, headers: HeaderMap) -> Response {
        counts.tokens.fetch_add(1, Ordering::SeqCst);
        // base64("user:secret")
        if headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            != Some("Basic dXNlcjpzZWNyZXQ=")
        {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        axum::Json(json!({"token": "good-token"})).into_response()
    }

    /// The manifest, with a digest header that is not its bytes'.
    async fn tampered() -> Response {
        let wrong = sha256(b"something else");
        (
            [
                (header::CONTENT_TYPE, OCI_MANIFEST.to_owned()),
                (
                    header::HeaderName::from_static("docker-content-digest"),
                    wrong,
                ),
            ],
            MANIFEST,
        )
            .into_response()
    }

    /// 503 with `Retry-After: 1` twice, then the tags.
    async fn busy(State(counts): State<Counts>) -> Response {
        if counts.busy.fetch_add(1, Ordering::SeqCst) < 2 {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "1")],
            )
                .into_response();
        }
        axum::Json(json!({"name": "team/busy", "tags": ["v1"]})).into_response()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_manifest_is_refused_naming_its_reference() {
    let base = fake::start(fake::Counts::default()).await;
    let client = Client::new(&base, Credentials::Anonymous, 2).unwrap();
    let err = client.manifest("team/app", "v1").await.unwrap_err();
    match &err {
        OciError::DigestMismatch {
            reference, actual, ..
        } => {
            assert_eq!(reference, "team/app:v1");
            assert_eq!(*actual, sha256(fake::MANIFEST.as_bytes()));
        }
        other => panic!("{other:?}"),
    }
    // Asked for by digest, the bytes must hash to that digest.
    let wanted = sha256(b"the manifest I asked for");
    let err = client.manifest("team/app", &wanted).await.unwrap_err();
    assert!(matches!(err, OciError::DigestMismatch { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_challenge_is_answered_with_a_token_from_its_realm() {
    let counts = fake::Counts::default();
    let base = fake::start(counts.clone()).await;
    let good = Credentials::Basic {
        username: "user".into(),
        password: "secret".into(),
    };
    let client = Client::new(&base, good, 2).unwrap();
    client.probe().await.unwrap();
    client.probe().await.unwrap();
    assert_eq!(
        counts.tokens.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the token is kept"
    );
    let bad = Credentials::Basic {
        username: "user".into(),
        password: "wrong".into(),
    };
    let err = Client::new(&base, bad, 2)
        .unwrap()
        .probe()
        .await
        .unwrap_err();
    assert!(matches!(err, OciError::Unauthorized { .. }), "{err:?}");
    // The password never shows in debug output.
    assert!(
        !format!(
            "{:?}",
            Credentials::Basic {
                username: "u".into(),
                password: "p4ss".into()
            }
        )
        .contains("p4ss")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_answers_are_retried_after_the_time_the_registry_asks() {
    let counts = fake::Counts::default();
    let base = fake::start(counts.clone()).await;
    let client = Client::new(&base, Credentials::Anonymous, 2).unwrap();
    let started = Instant::now();
    assert_eq!(client.tags("team/busy").await.unwrap(), ["v1"]);
    assert_eq!(counts.busy.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "two waits of Retry-After: 1"
    );
}

/// A front for a real registry adding what CNCF distribution 2.8 lacks, the OCI 1.1
/// referrers API: `GET /v2/<name>/referrers/<digest>` answers from what the test registered
/// with [`Front::refer`], one descriptor per page with a `Link` to the next (so a client must
/// follow the pages); every other request goes to the registry untouched. A stand-in only for
/// that one endpoint: manifests and blobs are the real registry's.
mod referrers_api {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::extract::State;
    use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
    use axum::response::{IntoResponse, Response};

    use super::*;

    type Known = Arc<Mutex<HashMap<String, Vec<serde_json::Value>>>>;

    pub struct Front {
        pub base: String,
        known: Known,
    }

    impl Front {
        /// Serves on a free loopback port in front of the registry at `registry`.
        pub async fn start(registry: &str) -> Front {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let known = Known::default();
            let app = Router::new()
                .fallback(handle)
                .with_state((registry.to_owned(), known.clone()));
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            Front { base, known }
        }

        /// Lists `descriptor` among the referrers of `subject`.
        pub fn refer(&self, subject: &str, descriptor: serde_json::Value) {
            let mut known = self.known.lock().unwrap();
            known
                .entry(subject.to_owned())
                .or_default()
                .push(descriptor);
        }
    }

    async fn handle(
        State((registry, known)): State<(String, Known)>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
    ) -> Response {
        let path = uri.path().to_owned();
        if let Some((_, digest)) = path
            .strip_prefix("/v2/")
            .and_then(|p| p.rsplit_once("/referrers/"))
        {
            let page: usize = uri
                .query()
                .and_then(|q| q.strip_prefix("page="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let listed = known
                .lock()
                .unwrap()
                .get(digest)
                .cloned()
                .unwrap_or_default();
            let body = json!({
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": listed.get(page).into_iter().collect::<Vec<_>>(),
            });
            let mut res = ([(header::CONTENT_TYPE, OCI_INDEX)], body.to_string()).into_response();
            if page + 1 < listed.len() {
                let next = format!("<{path}?page={}>; rel=\"next\"", page + 1);
                res.headers_mut()
                    .insert(header::LINK, next.parse().unwrap());
            }
            return res;
        }
        let target = format!(
            "{registry}{}",
            uri.path_and_query().map_or("", |p| p.as_str())
        );
        let mut req = reqwest::Client::new().request(method, target);
        for name in [header::ACCEPT, header::AUTHORIZATION] {
            if let Some(v) = headers.get(&name) {
                req = req.header(name, v);
            }
        }
        let Ok(res) = req.send().await else {
            return StatusCode::BAD_GATEWAY.into_response();
        };
        let mut out = Response::builder().status(res.status());
        for name in [
            "content-type",
            "docker-content-digest",
            "link",
            "content-length",
        ] {
            if let Some(v) = res.headers().get(name) {
                out = out.header(name, v);
            }
        }
        let body = res.bytes().await.unwrap_or_default();
        out.body(axum::body::Body::from(body)).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_are_read_page_by_page_and_a_registry_without_the_api_is_asked_once() {
    let reg = Registry::start().await;
    let (app, app_body) = reg.image("team/app", "v1", OCI_MANIFEST, &["app"]).await;
    // CNCF distribution 2.8 has no referrers API: it answers 404, and is not asked again.
    let plain = Client::new(&reg.base, Credentials::Anonymous, 2).unwrap();
    assert_eq!(plain.referrers("team/app", &app).await.unwrap(), None);
    assert_eq!(plain.referrers("team/app", &app).await.unwrap(), None);

    let front = referrers_api::Front::start(&reg.base).await;
    let mut listed = Vec::new();
    for kind in ["application/spdx+json", "application/vnd.in-toto+json"] {
        let (digest, _, d) = push_referrer(&reg, "team/app", &app, &app_body, kind).await;
        front.refer(&app, d);
        listed.push(digest);
    }
    let client = Client::new(&front.base, Credentials::Anonymous, 2).unwrap();
    assert_eq!(
        client.referrers("team/app", &app).await.unwrap(),
        Some(listed),
        "both pages"
    );
    assert_eq!(
        client.referrers("team/app", &listed_none()).await.unwrap(),
        Some(vec![])
    );
    // A listed "digest" that is not one is refused, naming the manifest.
    front.refer(&app, json!({"digest": "v1"}));
    let err = client.referrers("team/app", &app).await.unwrap_err();
    assert!(
        matches!(&err, OciError::BadManifest { reference, .. } if reference.contains(&app)),
        "{err:?}"
    );
}

/// A digest nothing refers to.
fn listed_none() -> String {
    sha256(b"nothing refers to this")
}

// ---------------------------------------------------------------------------------------
// Import jobs, through the real binary

use common::{Fixture, Server, TestDb, call, cancel_and_wait, state, wait_for, wait_for_every};
use layerline_core::domain::Aggregate;
use layerline_core::domain::image::Image;
use layerline_core::store::{Backend, EventStore, ReadModels, Store};
use reqwest::Method;
use serde_json::Value;

on_both_backends!(
    attachments_listed_by_the_referrers_api_are_imported_mirrored_and_pruned,
    signed_releases_are_pruned_with_their_attachments_and_nothing_else,
    attachments_are_found_by_subject_and_by_both_tag_schemes,
    imported_images_keep_their_real_age,
    forged_notifications_change_nothing_until_the_registry_agrees,
    an_import_records_tags_manifests_and_the_registrys_sizes_once,
    an_import_killed_midway_completes_after_a_restart_recording_each_manifest_once,
    a_cancelled_import_records_exactly_the_progress_it_reports,
    a_catalog_import_creates_an_image_per_repository_and_a_reimport_records_nothing,
);

/// The size of an image holding `manifests` (bodies as pushed): each distinct blob (config
/// or layer) once.
fn expected_size(manifests: &[&[u8]]) -> i64 {
    let mut blobs = std::collections::BTreeMap::new();
    for body in manifests {
        let m: Value = serde_json::from_slice(body).unwrap();
        let config = m["config"].clone();
        for d in m["layers"].as_array().unwrap().iter().chain([&config]) {
            blobs.insert(
                d["digest"].as_str().unwrap().to_owned(),
                d["size"].as_i64().unwrap(),
            );
        }
    }
    blobs.values().sum()
}

async fn import(server: &Server, image: &str, source: Value) -> Value {
    let (status, body) = call(
        Method::POST,
        &format!("{}/v1/images/{image}/tasks", server.base),
        Some(json!({"action": "import", "contents": {"source": source}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let id = body["data"]["job"]["id"].as_str().unwrap().to_owned();
    wait_for(server, &id, Duration::from_secs(60), |j| {
        matches!(state(j), "completed" | "error")
    })
    .await
}

async fn an_import_records_tags_manifests_and_the_registrys_sizes_once(db: &TestDb) {
    let reg = Registry::start().await;
    let (_, v1) = reg
        .image("team/app", "v1", OCI_MANIFEST, &["base layer", "app v1"])
        .await;
    let (_, v2) = reg
        .image(
            "team/app",
            "v2",
            DOCKER_MANIFEST,
            &["base layer", "app v2!"],
        )
        .await;
    let multi_images = push_multi(&reg).await;
    let (amd64, amd64_body) = multi_images.amd64.clone();
    let (arm64, arm64_body) = multi_images.arm64.clone();
    let index_digest = multi_images.index.clone();

    let store = db.store().await;
    let fx = Fixture::new(store.clone());
    let ns = fx.namespace("team").await;
    let app = fx.image(&ns, "app").await;
    let multi = fx.image(&ns, "multi").await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::on_database(&db.url, dir.path(), &[]);

    // Every tag of a repository: tags and sizes as the registry has them.
    let j = import(
        &server,
        &app,
        json!({"registry": reg.base, "repository": "team/app"}),
    )
    .await;
    assert_eq!(state(&j), "completed", "{j}");
    assert_eq!(j["output"]["manifests_recorded"], 2, "{j}");
    assert_eq!(fx.tag_names(&app).await, ["v1", "v2"]);
    assert_eq!(fx.image_size(&app).await, expected_size(&[&v1, &v2]));

    // An index with its children, each child with its platform.
    let j = import(
        &server,
        &multi,
        json!({"registry": reg.base, "repository": "team/multi", "tags": ["latest"]}),
    )
    .await;
    assert_eq!(state(&j), "completed", "{j}");
    assert_eq!(j["output"]["manifests_recorded"], 3, "{j}");
    let rows = store.read_model_rows().await.unwrap();
    let mut platforms: Vec<(String, Option<String>)> = rows
        .manifests
        .iter()
        .filter(|m| m.image_id == multi)
        .map(|m| (m.digest.clone(), m.platform.clone()))
        .collect();
    platforms.sort();
    let mut expected = vec![
        (amd64.clone(), Some("linux/amd64".to_owned())),
        (arm64.clone(), Some("linux/arm64/v8".to_owned())),
        (index_digest.clone(), None),
    ];
    expected.sort();
    assert_eq!(platforms, expected);
    let tag = rows.tags.iter().find(|t| t.image_id == multi).unwrap();
    assert_eq!(
        (tag.name.as_str(), tag.digest.as_str()),
        ("latest", index_digest.as_str())
    );
    assert_eq!(
        fx.image_size(&multi).await,
        expected_size(&[&amd64_body, &arm64_body])
    );

    // Importing the same again records nothing.
    let version = store.read_stream(&Image::stream(&app)).await.unwrap().len();
    let j = import(
        &server,
        &app,
        json!({"registry": reg.base, "repository": "team/app"}),
    )
    .await;
    assert_eq!(state(&j), "completed", "{j}");
    assert_eq!(j["output"]["manifests_recorded"], 0, "{j}");
    assert_eq!(
        store.read_stream(&Image::stream(&app)).await.unwrap().len(),
        version
    );

    // A tag the registry does not have fails the job by name, after one attempt.
    let j = import(
        &server,
        &app,
        json!({"registry": reg.base, "repository": "team/app", "tags": ["nope"]}),
    )
    .await;
    assert_eq!(state(&j), "error", "{j}");
    assert_eq!(j["attempts"], 1);
    assert!(
        j["last_error"].as_str().unwrap().contains("team/app:nope"),
        "{j}"
    );
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_import_command_creates_the_image_and_follows_the_job() {
    let reg = Registry::start().await;
    let (_, v1) = reg
        .image("team/app", "v1", OCI_MANIFEST, &["base", "one"])
        .await;
    let (_, v2) = reg
        .image("team/app", "v2", OCI_MANIFEST, &["base", "two"])
        .await;
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let store = db.store().await;
    let fx = Fixture::new(store.clone());
    let ns = fx.namespace("team").await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::on_database(&db.url, dir.path(), &[]);
    let host = reg.base.trim_start_matches("http://").to_owned();
    let run = |args: Vec<String>| {
        let base = server.base.clone();
        async move {
            tokio::process::Command::new(common::BIN)
                .arg("import")
                .args(args)
                .args(["--url", &base])
                .env("LAYERLINE_TOKEN", common::ADMIN)
                .output()
                .await
                .unwrap()
        }
    };

    // One tag, into a new image named after the repository (http: a loopback registry).
    let out = run(vec![
        format!("{host}/team/app:v1"),
        "--namespace".into(),
        "team".into(),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(": completed"), "{stdout}");
    let image = store
        .read_model_rows()
        .await
        .unwrap()
        .images
        .into_iter()
        .find(|i| i.namespace_id == ns && i.name == "team/app")
        .expect("the image was created");
    assert_eq!(fx.tag_names(&image.id).await, ["v1"]);

    // The whole repository into the image that now exists.
    let out = run(vec![
        format!("{host}/team/app"),
        "--namespace".into(),
        "team".into(),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fx.tag_names(&image.id).await, ["v1", "v2"]);
    assert_eq!(fx.image_size(&image.id).await, expected_size(&[&v1, &v2]));

    let out = run(vec![
        format!("{host}/team/app"),
        "--namespace".into(),
        "nope".into(),
    ])
    .await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no namespace named nope"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.terminate();
}

/// Pushes `tags` tags `t0000`… to `repo` of `reg`, each a manifest of its own with a config,
/// a layer shared by all and one of its own.
async fn push_many(reg: &Registry, repo: &str, tags: usize) {
    let base_layer = reg.blob(repo, b"shared base layer").await;
    for n in 0..tags {
        let config = json!({"architecture": "amd64", "os": "linux", "n": n}).to_string();
        let config_digest = reg.blob(repo, config.as_bytes()).await;
        let layer = format!("layer {n}");
        let layer_digest = reg.blob(repo, layer.as_bytes()).await;
        let body = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": config.len()},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                 "digest": base_layer, "size": 17},
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                 "digest": layer_digest, "size": layer.len()},
            ],
        })
        .to_string();
        reg.manifest(repo, &format!("t{n:04}"), OCI_MANIFEST, body.as_bytes())
            .await;
    }
}

/// Tags of `team/big` for the tests that stop an import midway: enough that the import passes
/// several of its step boundaries (one per 100 ms) on a fast machine. With 600, and progress
/// polled every 100 ms, a run on a fast machine saw the import complete between two polls.
const BIG_TAGS: usize = 1_200;

/// A registry holding `tags` tags of `team/big` (see [`push_many`]) and, on `db`, the image
/// `big` of namespace `team` to import them into: the registry, the store, a fixture on it
/// and the image's id.
async fn team_big(db: &TestDb, tags: usize) -> (Registry, Store, Fixture, String) {
    let reg = Registry::start().await;
    push_many(&reg, "team/big", tags).await;
    let store = db.store().await;
    let fx = Fixture::new(store.clone());
    let ns = fx.namespace("team").await;
    let image = fx.image(&ns, "big").await;
    (reg, store, fx, image)
}

/// Submits an import of all of `team/big` at `registry` into `image` on `server`, and waits
/// until 50 tags are done; returns the job id.
async fn import_big_until_50(server: &Server, registry: &str, image: &str) -> String {
    let (status, body) = call(
        Method::POST,
        &format!("{}/v1/images/{image}/tasks", server.base),
        Some(json!({"action": "import", "contents": {"source":
            {"registry": registry, "repository": "team/big"}}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let id = body["data"]["job"]["id"].as_str().unwrap().to_owned();
    // Polled every 10 ms rather than 100: the import records its progress every 100 ms, and
    // the test must catch it between two of those, still running.
    let every = Duration::from_millis(10);
    wait_for_every(server, &id, Duration::from_secs(60), every, |j| {
        j["progress"]["done"].as_i64().unwrap_or(0) >= 50
    })
    .await;
    id
}

async fn an_import_killed_midway_completes_after_a_restart_recording_each_manifest_once(
    db: &TestDb,
) {
    const TAGS: usize = BIG_TAGS;
    let (reg, store, fx, image) = team_big(db, TAGS).await;
    let dir = tempfile::tempdir().unwrap();
    let timing = ["--orphan-timeout-secs", "4"];
    let first = Server::on_database(&db.url, dir.path(), &timing);
    let id = import_big_until_50(&first, &reg.base, &image).await;
    drop(first); // SIGKILL
    let mid = store.job(&id).await.unwrap().unwrap();
    assert_eq!(mid.state, "running", "killed in the middle");

    let second = Server::on_database(&db.url, dir.path(), &timing);
    let done = wait_for(&second, &id, Duration::from_secs(120), |j| {
        state(j) != "running" && state(j) != "queued"
    })
    .await;
    assert_eq!(state(&done), "completed", "{done}");
    assert_eq!(done["attempts"], 2, "{done}");
    assert_eq!(fx.tag_names(&image).await.len(), TAGS);

    // Each manifest recorded once and each tag pushed once, over both attempts.
    let mut manifests = std::collections::HashMap::new();
    let mut tags = std::collections::HashMap::new();
    for e in store.read_stream(&Image::stream(&image)).await.unwrap() {
        match &e.event {
            layerline_core::domain::DomainEvent::ManifestRecorded(m) => {
                *manifests.entry(m.digest.clone()).or_insert(0) += 1
            }
            layerline_core::domain::DomainEvent::TagPushed(t) => {
                *tags.entry(t.name.clone()).or_insert(0) += 1
            }
            _ => {}
        }
    }
    assert_eq!(manifests.len(), TAGS);
    assert!(
        manifests.values().all(|&n| n == 1),
        "a manifest recorded twice"
    );
    assert_eq!(tags.len(), TAGS);
    assert!(tags.values().all(|&n| n == 1), "a tag pushed twice");
    second.terminate();
}

/// A cancel stops an import at a step boundary: what it recorded is exactly the progress its
/// descriptor reports, although fetches were still going on when the cancel was seen.
async fn a_cancelled_import_records_exactly_the_progress_it_reports(db: &TestDb) {
    const TAGS: usize = BIG_TAGS;
    let (reg, store, fx, image) = team_big(db, TAGS).await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::on_database(&db.url, dir.path(), &[]);
    let id = import_big_until_50(&server, &reg.base, &image).await;
    let done = cancel_and_wait(&server, &id, Duration::from_secs(60)).await;
    assert_eq!(state(&done), "cancelled", "{done}");
    let described = done["progress"]["done"].as_i64().unwrap();
    assert!(described >= 50 && described < TAGS as i64, "{done}");
    assert_eq!(fx.tag_names(&image).await.len() as i64, described);
    let recorded = store
        .read_stream(&Image::stream(&image))
        .await
        .unwrap()
        .iter()
        .filter(|e| {
            matches!(
                e.event,
                layerline_core::domain::DomainEvent::ManifestRecorded(_)
            )
        })
        .count();
    assert_eq!(
        recorded as i64, described,
        "a manifest per tag, none beyond"
    );
    server.terminate();
}

async fn a_catalog_import_creates_an_image_per_repository_and_a_reimport_records_nothing(
    db: &TestDb,
) {
    let reg = Registry::start().await;
    let (_, app1) = reg
        .image("team/app", "v1", OCI_MANIFEST, &["base", "app one"])
        .await;
    let (_, app2) = reg
        .image("team/app", "v2", DOCKER_MANIFEST, &["base", "app two"])
        .await;
    let (_, api) = reg
        .image("team/api", "latest", OCI_MANIFEST, &["base", "api"])
        .await;
    let (_, util) = reg.image("lib/util", "1.0", OCI_MANIFEST, &["util"]).await;
    let store = db.store().await;
    let fx = Fixture::new(store.clone());
    let ns = fx.namespace("mirror").await;
    // One image exists already under a repository's name: the import fills it.
    let existing = fx.image(&ns, "team/api").await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::on_database(&db.url, dir.path(), &[]);
    let run = || async {
        let (status, body) = call(
            Method::POST,
            &format!("{}/v1/images/tasks", server.base),
            Some(json!({"action": "import", "contents": {
                "namespace_id": ns, "source": {"registry": reg.base}}})),
        )
        .await;
        assert_eq!(status, 202, "{body}");
        let id = body["data"]["job"]["id"].as_str().unwrap().to_owned();
        wait_for(&server, &id, Duration::from_secs(60), |j| {
            matches!(state(j), "completed" | "error")
        })
        .await
    };

    let j = run().await;
    assert_eq!(state(&j), "completed", "{j}");
    assert_eq!(j["output"]["repositories"], 3, "{j}");
    assert_eq!(j["output"]["manifests_recorded"], 4, "{j}");
    let images: std::collections::BTreeMap<String, String> = store
        .read_model_rows()
        .await
        .unwrap()
        .images
        .into_iter()
        .filter(|i| i.namespace_id == ns)
        .map(|i| (i.name, i.id))
        .collect();
    assert_eq!(
        images.keys().collect::<Vec<_>>(),
        ["lib/util", "team/api", "team/app"]
    );
    assert_eq!(images["team/api"], existing);
    assert_eq!(fx.tag_names(&images["team/app"]).await, ["v1", "v2"]);
    assert_eq!(
        fx.image_size(&images["team/app"]).await,
        expected_size(&[&app1, &app2])
    );
    assert_eq!(fx.image_size(&existing).await, expected_size(&[&api]));
    assert_eq!(
        fx.image_size(&images["lib/util"]).await,
        expected_size(&[&util])
    );
    // The namespace's size is the sum of its images' sizes.
    let row = fx.namespace_row(&ns).await;
    assert_eq!(
        row.size,
        expected_size(&[&app1, &app2]) + expected_size(&[&api]) + expected_size(&[&util])
    );

    // The same catalog again: nothing new on any image's stream.
    let mut lengths = Vec::new();
    for id in images.values() {
        lengths.push(store.read_stream(&Image::stream(id)).await.unwrap().len());
    }
    let j = run().await;
    assert_eq!(state(&j), "completed", "{j}");
    assert_eq!(j["output"]["manifests_recorded"], 0, "{j}");
    for (id, before) in images.values().zip(lengths) {
        assert_eq!(
            store.read_stream(&Image::stream(id)).await.unwrap().len(),
            before
        );
    }
    server.terminate();
}

/// Polls `check` until it holds, failing after 30 s.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what}: never happened"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A `docker-registry` whose notifications go to `server`'s hook for namespace `ns`, with
/// the admin token in their headers.
async fn notifying_registry(server: &Server, ns: &str) -> Registry {
    let port = free_port();
    let hook = format!(
        "{}/v1/hooks/registry?namespace_id={ns}&registry=http://127.0.0.1:{port}",
        server.base
    );
    let notifications = format!(
        "notifications:\n  endpoints:\n    - name: layerline\n      url: {hook}\n      headers:\n        Authorization: [Bearer {}]\n      timeout: 2s\n      threshold: 3\n      backoff: 200ms\n",
        common::ADMIN
    );
    Registry::start_at(port, &notifications).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_notifications_record_pushes_and_deletes_and_redeliveries_change_nothing() {
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let store = db.store().await;
    let fx = Fixture::new(store.clone());
    let ns = fx.namespace("mirror").await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::on_database(&db.url, dir.path(), &[]);
    let reg = notifying_registry(&server, &ns).await;
    let registry = reg.base.clone();
    let hook = format!(
        "{}/v1/hooks/registry?namespace_id={ns}&registry={registry}",
        server.base
    );
    let image_of = |name: &'static str| {
        let store = store.clone();
        let ns = ns.clone();
        async move {
            store
                .read_model_rows()
                .await
                .unwrap()
                .images
                .into_iter()
                .find(|i| i.namespace_id == ns && i.name == name)
                .map(|i| i.id)
        }
    };
    let tags_of = |name: &'static str| {
        let fx = &fx;
        let image_of = &image_of;
        async move {
            match image_of(name).await {
                Some(id) => fx.tag_names(&id).await,
                None => Vec::new(),
            }
        }
    };

    // Pushes show up in the read models: the image, its manifests, its tags, its size.
    let (v1, v1_body) = reg
        .image("team/app", "v1", OCI_MANIFEST, &["base", "one"])
        .await;
    let (_, v2_body) = reg
        .image("team/app", "v2", OCI_MANIFEST, &["base", "two"])
        .await;
    eventually("both tags recorded", || async {
        tags_of("team/app").await == ["v1", "v2"]
    })
    .await;
    let app = image_of("team/app").await.unwrap();
    assert_eq!(
        fx.image_size(&app).await,
        expected_size(&[&v1_body, &v2_body])
    );

    // A delete in the registry deletes the manifest and its tag here.
    let res = reqwest::Client::new()
        .delete(format!("{registry}/v2/team/app/manifests/{v1}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    eventually("v1 deleted", || async {
        tags_of("team/app").await == ["v2"]
    })
    .await;
    assert_eq!(fx.image_size(&app).await, expected_size(&[&v2_body]));

    // A redelivered event changes nothing, even after the tag it names has moved on. (The
    // registry tags v2 `stable` first: a push is recorded only when its tag resolves there.)
    let v2_digest = reg
        .manifest("team/app", "stable", OCI_MANIFEST, &v2_body)
        .await;
    assert_eq!(v2_digest, sha256(&v2_body));
    let envelope = json!({"events": [{
        "id": "delivery-1", "action": "push",
        "target": {"mediaType": OCI_MANIFEST, "digest": v2_digest, "size": v2_body.len(),
                   "repository": "team/app", "tag": "stable"},
    }]});
    let deliver = || async {
        let res = reqwest::Client::new()
            .post(&hook)
            .header("authorization", format!("Bearer {}", common::ADMIN))
            .header(
                "content-type",
                "application/vnd.docker.distribution.events.v1+json",
            )
            .body(envelope.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.json::<Value>().await.unwrap()
    };
    assert_eq!(deliver().await["data"]["recorded"], 1);
    let (v3, _) = reg
        .image("team/app", "stable", OCI_MANIFEST, &["base", "three"])
        .await;
    let stable_digest = || async {
        store
            .read_model_rows()
            .await
            .unwrap()
            .tags
            .into_iter()
            .find(|t| t.image_id == app && t.name == "stable")
            .map(|t| t.digest)
    };
    eventually("stable moved", || async {
        stable_digest().await.as_deref() == Some(v3.as_str())
    })
    .await;
    let events = store.read_stream(&Image::stream(&app)).await.unwrap().len();
    let answer = deliver().await;
    assert_eq!(answer["data"]["duplicates"], 1, "{answer}");
    assert_eq!(stable_digest().await.as_deref(), Some(v3.as_str()));
    assert_eq!(
        store.read_stream(&Image::stream(&app)).await.unwrap().len(),
        events
    );

    // Without a token the hook refuses.
    let res = reqwest::Client::new()
        .post(&hook)
        .body(envelope.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_behind_tls_is_reached_when_its_ca_is_trusted() {
    let dir = tempfile::tempdir().unwrap();
    // A CA of the test's own, and the registry's certificate signed by it.
    let path = |name: &str| dir.path().join(name).display().to_string();
    let openssl = |args: &[&str]| {
        let ok = Command::new("openssl")
            .args(args)
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "openssl {args:?}");
    };
    std::fs::write(path("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    let (ca, ca_key) = (path("ca.pem"), path("ca.key"));
    let (cert, key, csr) = (path("cert.pem"), path("key.pem"), path("leaf.csr"));
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=layerline test CA",
        "-keyout",
        &ca_key,
        "-out",
        &ca,
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &key,
        "-out",
        &csr,
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &path("ext.cnf"),
        "-out",
        &cert,
    ]);
    let port = free_port();
    let tls = format!("  tls:\n    certificate: {cert}\n    key: {key}\n");
    let reg = Registry::start_with(port, &tls, "", dir).await;
    assert!(reg.base.starts_with("https://"));
    let pem = std::fs::read(reg.dir.path().join("ca.pem")).unwrap();

    let trusting = Client::new(&reg.base, Credentials::Anonymous, 2)
        .unwrap()
        .with_root_certificate(&pem)
        .unwrap();
    trusting.probe().await.unwrap();
    assert_eq!(trusting.catalog().await.unwrap(), Vec::<String>::new());

    // The public roots alone do not vouch for it.
    let plain = Client::new(&reg.base, Credentials::Anonymous, 2).unwrap();
    let err = plain.probe().await.unwrap_err();
    assert!(matches!(err, OciError::Transport(_)), "{err:?}");
    assert!(err.to_string().contains("certificate"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Backend-linked namespaces: imports copy there, prune runs delete there

/// Links namespace `ns` to `registry` under `prefix`; the API's answer.
async fn link(server: &Server, ns: &str, registry: &str, prefix: &str) -> (u16, Value) {
    call(
        Method::PUT,
        &format!("{}/v1/namespaces/{ns}/backend", server.base),
        Some(json!({"registry": registry, "prefix": prefix})),
    )
    .await
}

/// Creates image `name` in `ns` by importing `repository` of `registry`; the finished job.
async fn import_new(server: &Server, ns: &str, name: &str, registry: &str, repo: &str) -> Value {
    let (status, body) = call(
        Method::POST,
        &format!("{}/v1/images", server.base),
        Some(json!({"name": name, "namespace_id": ns,
                    "source": {"registry": registry, "repository": repo}})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let id = body["data"]["import_job_id"].as_str().unwrap().to_owned();
    wait_for(server, &id, Duration::from_secs(60), |j| {
        matches!(state(j), "completed" | "error")
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_linked_namespace_gets_copies_of_imports_and_loses_what_prune_deletes() {
    let source = Registry::start().await;
    let backend = Registry::start().await;
    let mut app = Vec::new();
    for (tag, media_type) in [
        ("v1", OCI_MANIFEST),
        ("v2", DOCKER_MANIFEST),
        ("v3", OCI_MANIFEST),
    ] {
        let own = format!("app {tag}");
        app.push(
            source
                .image("team/app", tag, media_type, &["base layer", &own])
                .await,
        );
    }
    let multi = push_multi(&source).await;
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let fx = Fixture::new(db.store().await);
    let ns = fx.namespace("team").await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::on_database(&db.url, dir.path(), &[]);
    let url = format!("{}/v1/namespaces/{ns}/backend", server.base);

    // Bad input changes nothing; an unlinked namespace has no backend.
    let (status, body) = link(&server, &ns, "http://registry.example.com", "mirror").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["source"], "/registry", "{body}");
    let (status, body) = link(&server, &ns, &backend.base, "Mirror!").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["source"], "/prefix", "{body}");
    let (status, _) = call(Method::GET, &url, None).await;
    assert_eq!(status, 404);

    let (status, body) = link(&server, &ns, &backend.base, "mirror").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(Method::GET, &url, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["registry"], backend.base.as_str());
    assert_eq!(body["data"]["prefix"], "mirror");

    // Import: every blob and manifest lands in the backend, tags too.
    let j = import_new(&server, &ns, "app", &source.base, "team/app").await;
    assert_eq!(state(&j), "completed", "{j}");
    let app_id = j["tasks"][0]["input"]["image_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let copied = &j["output"]["backend"];
    assert_eq!(copied["manifests_pushed"], 3, "{j}");
    // base layer once, a layer and a config per tag.
    assert_eq!(copied["blobs_uploaded"], 7, "{j}");
    let j = import_new(&server, &ns, "multi", &source.base, "team/multi").await;
    assert_eq!(state(&j), "completed", "{j}");

    let pull = Client::new(&backend.base, Credentials::Anonymous, 4).unwrap();
    for (n, (digest, body)) in app.iter().enumerate() {
        let tag = format!("v{}", n + 1);
        let got = pull.manifest("mirror/app", &tag).await.unwrap();
        assert_eq!(&got.digest, digest, "{tag}");
        assert_eq!(&got.body, body, "{tag}: the same bytes");
        let m: Value = serde_json::from_slice(body).unwrap();
        for d in m["layers"].as_array().unwrap().iter().chain([&m["config"]]) {
            let blob = d["digest"].as_str().unwrap();
            assert!(pull.has_blob("mirror/app", blob).await.unwrap(), "{blob}");
        }
    }
    let index = pull.manifest("mirror/multi", "latest").await.unwrap();
    assert_eq!(index.digest, multi.index);
    for child in [&multi.amd64.0, &multi.arm64.0] {
        pull.manifest("mirror/multi", child).await.unwrap();
    }

    // A prune keeping the newest `v…` tag deletes the other two there too. (The three were
    // recorded in one append, so which one is newest is the selection's tie-break.)
    let (status, body) = call(
        Method::POST,
        &format!("{}/v1/images/tasks", server.base),
        Some(json!({"action": "prune", "contents": {"policy": {
            "namespace_id": ns, "image_names": ["app"],
            "rules": {"tag_pattern": "^v", "keep_last": 1}}}})),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let id = body["data"]["job"]["id"].as_str().unwrap().to_owned();
    let j = wait_for(&server, &id, Duration::from_secs(60), |j| {
        matches!(state(j), "completed" | "error")
    })
    .await;
    assert_eq!(state(&j), "completed", "{j}");
    assert_eq!(j["output"]["manifests_deleted"], 2, "{j}");
    assert_eq!(j["output"]["backend"]["manifests_deleted"], 2, "{j}");
    // Their own layers and configs are referenced by nothing left in the namespace.
    assert_eq!(j["output"]["blobs"]["reclaimed"], 4, "{j}");
    let (status, tags) = call(
        Method::GET,
        &format!(
            "{}/registry/v1/regions/fr-par/images/{app_id}/tags",
            server.base
        ),
        None,
    )
    .await;
    assert_eq!(status, 200, "{tags}");
    let kept: Vec<&str> = tags["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(kept.len(), 1, "{tags}");
    for (n, (digest, _)) in app.iter().enumerate() {
        let tag = format!("v{}", n + 1);
        let there = pull.manifest("mirror/app", digest).await;
        if kept.contains(&tag.as_str()) {
            assert_eq!(there.unwrap().digest, *digest, "the kept {tag} still pulls");
            pull.manifest("mirror/app", &tag).await.unwrap();
        } else {
            assert!(
                matches!(there, Err(OciError::NotFound { .. })),
                "{tag} {digest}: {there:?}"
            );
        }
    }
    pull.manifest("mirror/multi", "latest").await.unwrap();

    // A gc job finds the four blobs nothing references any more, still stored in the backend
    // (a registry's own collector removes them).
    let (status, body) = call(
        Method::POST,
        &format!("{}/v1/images/tasks", server.base),
        Some(json!({"action": "gc", "contents": {"namespace_id": ns}})),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let id = body["data"]["job"]["id"].as_str().unwrap().to_owned();
    let gc = wait_for(&server, &id, Duration::from_secs(60), |j| {
        matches!(state(j), "completed" | "error")
    })
    .await;
    assert_eq!(state(&gc), "completed", "{gc}");
    let out = &gc["output"];
    assert_eq!(out["blobs"]["reclaimable"], 4, "{gc}");
    assert_eq!(
        out["blobs"]["reclaimable_bytes"], j["output"]["blobs"]["bytes"],
        "{gc}"
    );
    assert_eq!(out["backend"]["reclaimable_present"], 4, "{gc}");
    assert_eq!(
        out["blobs"]["recorded"].as_i64().unwrap() - out["blobs"]["referenced"].as_i64().unwrap(),
        4,
        "{gc}"
    );

    // Linked to the registry it imports from, blobs are mounted, not uploaded.
    let same = fx.namespace("same").await;
    let (status, body) = link(&server, &same, &source.base, "copies").await;
    assert_eq!(status, 200, "{body}");
    let j = import_new(&server, &same, "app", &source.base, "team/app").await;
    assert_eq!(state(&j), "completed", "{j}");
    assert_eq!(j["output"]["backend"]["blobs_mounted"], 7, "{j}");
    assert_eq!(j["output"]["backend"]["blobs_uploaded"], 0, "{j}");
    let own = Client::new(&source.base, Credentials::Anonymous, 4).unwrap();
    assert_eq!(
        own.manifest("copies/app", "v2").await.unwrap().digest,
        app[1].0
    );

    // Unlinking stops nothing that ran; the namespace has no backend afterwards.
    let (status, _) = call(Method::DELETE, &url, None).await;
    assert_eq!(status, 204);
    let (status, _) = call(Method::GET, &url, None).await;
    assert_eq!(status, 404);
}

// ---------------------------------------------------------------------------------------
// Image archives: OCI layouts and `docker save` tars uploaded into an image

/// A tar of `files` (path, content), in that order.
fn tar_of(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        b.append_data(&mut header, name, bytes.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

fn blob_entry(bytes: &[u8]) -> (String, Vec<u8>) {
    let digest = sha256(bytes);
    (
        format!("blobs/sha256/{}", digest.trim_start_matches("sha256:")),
        bytes.to_vec(),
    )
}

/// An OCI image layout: `v1` and `v2` (image manifests sharing a base layer) and `multi`
/// (an index of two platform manifests). Returns the tar, the manifests' digests by tag
/// and the size an image holding all of them has.
fn oci_layout() -> (Vec<u8>, Vec<(&'static str, String)>, i64) {
    let mut files = vec![(
        "oci-layout".to_owned(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    )];
    let mut blobs = std::collections::BTreeMap::new();
    let mut image = |files: &mut Vec<(String, Vec<u8>)>, name: &str, layers: &[&str]| {
        let config = json!({"architecture": "amd64", "os": "linux", "name": name}).to_string();
        let mut descriptors = Vec::new();
        for l in layers {
            files.push(blob_entry(l.as_bytes()));
            blobs.insert(sha256(l.as_bytes()), l.len() as i64);
            descriptors.push(
                json!({"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                    "digest": sha256(l.as_bytes()), "size": l.len()}),
            );
        }
        files.push(blob_entry(config.as_bytes()));
        blobs.insert(sha256(config.as_bytes()), config.len() as i64);
        let manifest = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": sha256(config.as_bytes()), "size": config.len()},
            "layers": descriptors})
        .to_string();
        files.push(blob_entry(manifest.as_bytes()));
        (sha256(manifest.as_bytes()), manifest.len())
    };
    let v1 = image(&mut files, "v1", &["base layer", "v1 layer"]);
    let v2 = image(&mut files, "v2", &["base layer", "v2 layer!"]);
    let amd = image(&mut files, "amd", &["amd64 build"]);
    let arm = image(&mut files, "arm", &["arm64 build"]);
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": amd.0, "size": amd.1,
         "platform": {"os": "linux", "architecture": "amd64"}},
        {"mediaType": OCI_MANIFEST, "digest": arm.0, "size": arm.1,
         "platform": {"os": "linux", "architecture": "arm64"}}]})
    .to_string();
    files.push(blob_entry(index.as_bytes()));
    let multi = (sha256(index.as_bytes()), index.len());
    let top = |d: &(String, usize), mt: &str, tag: &str| {
        json!({"mediaType": mt, "digest": d.0, "size": d.1,
               "annotations": {"org.opencontainers.image.ref.name": tag}})
    };
    let index_json = json!({"schemaVersion": 2, "manifests": [
        top(&v1, OCI_MANIFEST, "v1"), top(&v2, OCI_MANIFEST, "v2"),
        top(&multi, OCI_INDEX, "multi")]})
    .to_string();
    // index.json last, as `docker save` writes it: the reader must not depend on order.
    files.push(("index.json".to_owned(), index_json.into_bytes()));
    let size = blobs.values().sum();
    (
        tar_of(&files),
        vec![("v1", v1.0), ("v2", v2.0), ("multi", multi.0)],
        size,
    )
}

async fn upload(server: &Server, image: &str, archive: Vec<u8>) -> (u16, Value) {
    let res = reqwest::Client::new()
        .post(format!("{}/v1/images/{image}/archive", server.base))
        .header("X-Auth-Token", common::ADMIN)
        .header("content-type", "application/x-tar")
        .body(archive)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// The image's tags as `name → digest`.
async fn tags_of(server: &Server, image: &str) -> std::collections::BTreeMap<String, String> {
    let (status, body) = call(
        Method::GET,
        &format!(
            "{}/registry/v1/regions/fr-par/images/{image}/tags",
            server.base
        ),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_owned(),
                t["digest"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archives_are_imported_checked_whole_and_copied_to_a_backend() {
    let backend = Registry::start().await;
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let store = db.store().await;
    let fx = Fixture::new(store.clone());
    let plain = fx.namespace("plain").await;
    let boxed = fx.image(&plain, "box").await;
    let tool = fx.image(&plain, "tool").await;
    let linked = fx.namespace("linked").await;
    let app = fx.image(&linked, "app").await;
    let dir = tempfile::tempdir().unwrap();
    // Above the API's 1 MiB body limit: archives have a limit of their own.
    let server = Server::on_database(&db.url, dir.path(), &["--archive-max-bytes", "2000000"]);

    // An OCI layout: every manifest and tag recorded, sizes from the archive's blobs.
    let (layout, digests, size) = oci_layout();
    let (status, body) = upload(&server, &boxed, layout.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["manifests"], 5, "{body}");
    assert_eq!(body["data"]["manifests_recorded"], 5, "{body}");
    let tags = tags_of(&server, &boxed).await;
    for (tag, digest) in &digests {
        assert_eq!(tags.get(*tag), Some(digest), "{tags:?}");
    }
    assert_eq!(store.image(&boxed).await.unwrap().unwrap().size, size);
    let (status, body) = upload(&server, &boxed, layout.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["manifests_recorded"], 0, "again: nothing new");

    // A `docker save` tar: a manifest written for it, the tag from RepoTags.
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let layer = b"a saved layer, larger than a request body may be. ".repeat(30_000);
    let saved = json!([{"Config": "cfg.json", "Layers": ["0123/layer.tar"],
                        "RepoTags": ["registry.example.com:5000/team/tool:1.0"]}]);
    let archive = tar_of(&[
        ("cfg.json".to_owned(), config.clone()),
        ("0123/layer.tar".to_owned(), layer.clone()),
        ("manifest.json".to_owned(), saved.to_string().into_bytes()),
    ]);
    let (status, body) = upload(&server, &tool, archive).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["tags"], json!(["1.0"]), "{body}");
    assert!(tags_of(&server, &tool).await.contains_key("1.0"));
    assert_eq!(
        store.image(&tool).await.unwrap().unwrap().size,
        (config.len() + layer.len()) as i64
    );

    // Bad archives are refused whole, naming what is wrong, and change nothing.
    let head = store.head().await.unwrap();
    // A blob whose bytes are not those its name (a digest) says.
    let mut files = vec![blob_entry(b"real")];
    files[0].1 = b"tampered".to_vec();
    files.push((
        "index.json".to_owned(),
        br#"{"schemaVersion":2,"manifests":[]}"#.to_vec(),
    ));
    let (status, body) = upload(&server, &boxed, tar_of(&files)).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains(&files[0].0), "{body}");
    let missing_layer = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256(b"cfg"), "size": 3},
        "layers": []})
    .to_string();
    let index = json!({"schemaVersion": 2, "manifests": [{"mediaType": OCI_MANIFEST,
        "digest": sha256(missing_layer.as_bytes()), "size": missing_layer.len(),
        "annotations": {"org.opencontainers.image.ref.name": "broken"}}]});
    let (status, body) = upload(
        &server,
        &boxed,
        tar_of(&[
            blob_entry(missing_layer.as_bytes()),
            ("index.json".to_owned(), index.to_string().into_bytes()),
        ]),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains(&sha256(b"cfg")), "{body}");
    let (status, body) = upload(&server, &boxed, b"not a tar at all".repeat(100)).await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = upload(&server, &boxed, vec![0u8; 2_100_000]).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(store.head().await.unwrap(), head, "nothing was recorded");
    assert!(!tags_of(&server, &boxed).await.contains_key("broken"));

    // Into a backend-linked namespace: blobs uploaded from the archive, then manifests.
    let (status, body) = link(&server, &linked, &backend.base, "up").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = upload(&server, &app, layout).await;
    assert_eq!(status, 200, "{body}");
    // Five layers (one shared by v1 and v2) and four configs.
    assert_eq!(body["data"]["backend"]["blobs_uploaded"], 9, "{body}");
    let pull = Client::new(&backend.base, Credentials::Anonymous, 4).unwrap();
    for (tag, digest) in &digests {
        let got = pull.manifest("up/app", tag).await.unwrap();
        assert_eq!(&got.digest, digest, "{tag}");
    }
    assert_eq!(tags_of(&server, &app).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_into_a_backend_linked_namespace_mirror_pushes_and_deletes_there() {
    let backend = Registry::start().await;
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let fx = Fixture::new(db.store().await);
    let ns = fx.namespace("mirror").await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::on_database(&db.url, dir.path(), &[]);
    let (status, body) = link(&server, &ns, &backend.base, "copy").await;
    assert_eq!(status, 200, "{body}");
    let reg = notifying_registry(&server, &ns).await;
    let source = reg.base.clone();
    let pull = Client::new(&backend.base, Credentials::Anonymous, 2).unwrap();

    // A push to the source shows up in the backend, tag and all.
    let (v1, _) = reg
        .image("team/app", "v1", OCI_MANIFEST, &["base", "one"])
        .await;
    eventually("v1 copied to the backend", || async {
        pull.manifest("copy/team/app", "v1")
            .await
            .is_ok_and(|m| m.digest == v1)
    })
    .await;

    // A delete at the source deletes it there too.
    let res = reqwest::Client::new()
        .delete(format!("{source}/v2/team/app/manifests/{v1}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    eventually("v1 deleted from the backend", || async {
        matches!(
            pull.manifest("copy/team/app", &v1).await,
            Err(OciError::NotFound { .. })
        )
    })
    .await;
}

/// Notifications are claims, checked against the real registry: a push is recorded only
/// when the registry serves the manifest and resolves its tag to it, a delete only once the
/// registry answers 404 for the manifest (and only for a token with `images-manage`);
/// malformed events are refused for good (never 503) without a request or an echo of the
/// registry's answers; and a refused or ignored event stores nothing, neither an image nor
/// its id.
async fn forged_notifications_change_nothing_until_the_registry_agrees(db: &TestDb) {
    let reg = Registry::start().await;
    let store = db.store().await;
    let fx = Fixture::new(store.clone());
    let ns = fx.namespace("mirror").await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::on_database(&db.url, dir.path(), &["--role", "api"]);
    let hook = format!(
        "{}/v1/hooks/registry?namespace_id={ns}&registry={}",
        server.base, reg.base
    );
    let importer = common::token(&db.url, "images-import", None);
    let deliver = |token: String, events: Value| {
        let hook = hook.clone();
        async move {
            let res = reqwest::Client::new()
                .post(&hook)
                .header("authorization", format!("Bearer {token}"))
                .json(&json!({ "events": events }))
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            let text = res.text().await.unwrap();
            assert_eq!(status, 200, "{text}");
            assert!(
                !text.contains("docker/registry"),
                "a storage path was echoed: {text}"
            );
            serde_json::from_str::<Value>(&text).unwrap()["data"].clone()
        }
    };
    let admin = common::ADMIN.to_owned();
    let event = |id: &str, action: &str, repo: &str, digest: &str, tag: Option<&str>| {
        json!({"id": id, "action": action, "target": {"mediaType": OCI_MANIFEST,
               "digest": digest, "repository": repo, "tag": tag}})
    };
    let images = || async {
        let rows = store.read_model_rows().await.unwrap();
        let mut names: Vec<String> = rows.images.into_iter().map(|i| i.name).collect();
        names.sort();
        names
    };
    let (v1, v1_body) = reg
        .image("team/app", "v1", OCI_MANIFEST, &["base", "one"])
        .await;

    let done = deliver(
        admin.clone(),
        json!([event("push-1", "push", "team/app", &v1, Some("v1"))]),
    )
    .await;
    assert_eq!(done["recorded"], 1, "{done}");
    let app = store
        .image_by_name(&ns, "team/app")
        .await
        .unwrap()
        .unwrap()
        .id;
    assert_eq!(fx.tag_names(&app).await, ["v1"]);

    // A push's time is the registry's timestamp of it, where the event has one.
    reg.manifest("team/app", "stamped", OCI_MANIFEST, &v1_body)
        .await;
    let mut stamped = event("push-2", "push", "team/app", &v1, Some("stamped"));
    stamped["timestamp"] = json!("2025-06-01T12:00:00.5Z");
    let done = deliver(admin.clone(), json!([stamped])).await;
    assert_eq!(done["recorded"], 1, "{done}");
    let rows = store.read_model_rows().await.unwrap();
    let tag = rows.tags.iter().find(|t| t.name == "stamped").unwrap();
    assert_eq!(tag.created_at, "2025-06-01T12:00:00.500000Z");
    assert_eq!(fx.tag_names(&app).await, ["stamped", "v1"]);

    // Claims the registry does not back: a tag it does not have for that digest, a
    // repository it does not have, malformed digests, tags and repositories.
    let forged = json!([
        event("tag-1", "push", "team/app", &v1, Some("v-url")),
        event("ghost-1", "push", "team/ghost", &v1, Some("v1")),
        event("md5-1", "push", "team/app", "md5:abc", None),
        event("tag-2", "push", "team/app", &v1, Some("-bad")),
        event("path-1", "push", "../../secret/../x", &v1, None),
        event("del-1", "delete", "team/app", &v1, None),
    ]);
    let before = store.head().await.unwrap();
    for _ in 0..2 {
        let done = deliver(admin.clone(), forged.clone()).await;
        assert_eq!(
            (done["recorded"].as_i64(), done["duplicates"].as_i64()),
            (Some(0), Some(0)),
            "{done}"
        );
        let refused: Vec<&str> = done["refused"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        assert_eq!(
            refused,
            ["tag-1", "ghost-1", "md5-1", "tag-2", "path-1", "del-1"],
            "{done}"
        );
    }
    assert_eq!(store.head().await.unwrap(), before, "nothing was appended");
    assert_eq!(images().await, ["team/app"], "no image was created");
    assert_eq!(fx.tag_names(&app).await, ["stamped", "v1"]);
    for id in ["tag-1", "ghost-1", "md5-1", "del-1"] {
        assert!(!store.hook_event_seen(id).await.unwrap(), "{id} was stored");
    }

    // Ignored events store nothing either: a delivery of 1 000 pulls.
    let pulls: Vec<Value> = (0..1000)
        .map(|i| json!({"id": format!("pull-{i}"), "action": "pull", "target": {}}))
        .collect();
    let done = deliver(admin.clone(), Value::Array(pulls)).await;
    assert_eq!(done["ignored"], 1000, "{done}");
    assert!(!store.hook_event_seen("pull-0").await.unwrap());
    assert!(store.hook_event_seen("push-1").await.unwrap());

    // Once the registry has deleted it, the delete applies — for a token that may delete.
    let res = reqwest::Client::new()
        .delete(format!("{}/v2/team/app/manifests/{v1}", reg.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let done = deliver(
        importer,
        json!([event("del-2", "delete", "team/app", &v1, None)]),
    )
    .await;
    assert_eq!(done["recorded"], 0, "{done}");
    assert!(
        done["refused"][0]["error"]
            .as_str()
            .unwrap()
            .contains("images-manage"),
        "{done}"
    );
    assert_eq!(fx.tag_names(&app).await, ["stamped", "v1"]);
    let done = deliver(
        admin,
        json!([event("del-3", "delete", "team/app", &v1, None)]),
    )
    .await;
    assert_eq!(done["recorded"], 1, "{done}");
    assert!(fx.tag_names(&app).await.is_empty());
}

/// Pushes `repo:tag` with a config stating `created` (and an annotation, when given) and one
/// layer of its own; returns the manifest's digest.
async fn built_at(
    reg: &Registry,
    repo: &str,
    tag: &str,
    created: &str,
    annotated: Option<&str>,
) -> String {
    let config = json!({"architecture": "amd64", "os": "linux", "created": created,
                        "config": {"Labels": {"tag": tag}}})
    .to_string();
    let config_digest = reg.blob(repo, config.as_bytes()).await;
    let layer = format!("layer of {tag}");
    let layer_digest = reg.blob(repo, layer.as_bytes()).await;
    let mut body = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest, "size": layer.len()}],
    });
    if let Some(at) = annotated {
        body["annotations"] = json!({"org.opencontainers.image.created": at});
    }
    reg.manifest(repo, tag, OCI_MANIFEST, body.to_string().as_bytes())
        .await
}

/// Imported images keep their real age: the tags of an import are ordered by when their
/// images were built (the annotation, else the config's `created`), not by name or by the
/// order the import walked or the registry got them, so `keep_last` keeps the newest and
/// `older_than` measures the build time; the API shows it as the tag's `created_at`; a
/// config from before 1990 or from the future counts as recorded now.
async fn imported_images_keep_their_real_age(db: &TestDb) {
    let reg = Registry::start().await;
    // Pushed v10 first, then v8, v9; built 2024-03, 2024-01, 2024-02 (v9's annotation wins
    // over its config's year-2000 time).
    let v10 = built_at(&reg, "team/app", "v10", "2024-03-05T10:00:00Z", None).await;
    let v8 = built_at(&reg, "team/app", "v8", "2024-01-05T10:00:00Z", None).await;
    let v9 = built_at(
        &reg,
        "team/app",
        "v9",
        "2000-01-01T00:00:00Z",
        Some("2024-02-05T10:00:00+00:00"),
    )
    .await;
    // Nonsense times: before 1990, and next century.
    let old = built_at(&reg, "team/odd", "old", "1970-01-01T00:00:00Z", None).await;
    let future = built_at(&reg, "team/odd", "future", "2199-01-01T00:00:00Z", None).await;

    let store = db.store().await;
    let fx = Fixture::new(store.clone());
    let ns = fx.namespace("team").await;
    let app = fx.image(&ns, "app").await;
    let odd = fx.image(&ns, "odd").await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::on_database(&db.url, dir.path(), &[]);
    let started = chrono::Utc::now();
    for (image, repo) in [(&app, "team/app"), (&odd, "team/odd")] {
        let j = import(
            &server,
            image,
            json!({"registry": reg.base, "repository": repo}),
        )
        .await;
        assert_eq!(state(&j), "completed", "{j}");
    }
    let rows = store.read_model_rows().await.unwrap();
    let created = |digest: &str| {
        let tag = rows.tags.iter().find(|t| t.digest == digest).unwrap();
        let manifest = rows.manifests.iter().find(|m| m.digest == digest).unwrap();
        assert_eq!(tag.created_at, manifest.created_at, "{digest}");
        tag.created_at.clone()
    };
    assert_eq!(created(&v10), "2024-03-05T10:00:00.000000Z");
    assert_eq!(created(&v8), "2024-01-05T10:00:00.000000Z");
    assert_eq!(created(&v9), "2024-02-05T10:00:00.000000Z");
    for odd_one in [&old, &future] {
        let at = chrono::DateTime::parse_from_rfc3339(&created(odd_one)).unwrap();
        assert!(at >= started && at <= chrono::Utc::now(), "{odd_one}: {at}");
    }
    // The import log says which creation times it ignored.
    let (_, log) = call(
        Method::GET,
        &format!("{}/v1/images/{odd}/build-log", server.base),
        None,
    )
    .await;
    let log = log["data"]["log"].as_str().unwrap_or_default().to_owned();
    assert!(log.contains("creation_times_ignored"), "{log}");
    for odd_one in [&old, &future] {
        assert!(log.contains(&format!("team/odd@{odd_one}")), "{log}");
    }
    // The Scaleway tag shows it.
    let (_, tags) = call(
        Method::GET,
        &format!(
            "{}/registry/v1/regions/fr-par/images/{app}/tags?order_by=created_at_asc",
            server.base
        ),
        None,
    )
    .await;
    let listed: Vec<(&str, &str)> = tags["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap(),
                t["created_at"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed.iter().map(|t| t.0).collect::<Vec<_>>(),
        ["v8", "v9", "v10"],
        "{tags}"
    );
    assert!(listed[2].1.starts_with("2024-03-05T10:00:00"), "{tags}");

    // Keep the newest: v10, though it was pushed first and sorts first by name.
    let plan = |rules: Value| {
        let server = &server;
        let ns = ns.clone();
        async move {
            let policy = json!({"namespace_id": ns, "image_names": ["app"], "rules": rules});
            let (status, body) = call(
                Method::POST,
                &format!("{}/v1/images/tasks", server.base),
                Some(json!({"action": "prune", "contents": {"policy": policy, "dry_run": true}})),
            )
            .await;
            assert_eq!(status, 202, "{body}");
            let id = body["data"]["job"]["id"].as_str().unwrap().to_owned();
            let j = wait_for(server, &id, Duration::from_secs(60), |j| {
                matches!(state(j), "completed" | "error")
            })
            .await;
            assert_eq!(state(&j), "completed", "{j}");
            let (_, plan) = call(
                Method::GET,
                &format!("{}/v1/jobs/{id}/plan", server.base),
                None,
            )
            .await;
            let mut tags: Vec<String> = plan["data"]["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|i| i["kind"] == "tag")
                .map(|i| i["tag"].as_str().unwrap().to_owned())
                .collect();
            tags.sort();
            tags
        }
    };
    assert_eq!(
        plan(json!({"tag_pattern": ".*", "keep_last": 1})).await,
        ["v8", "v9"]
    );
    assert_eq!(
        plan(json!({"tag_pattern": ".*", "keep_last": 2})).await,
        ["v8"]
    );
    // Built in 2024: older than 300 days, though imported a minute ago.
    assert_eq!(
        plan(json!({"tag_pattern": ".*", "older_than": "300d"})).await,
        ["v10", "v8", "v9"]
    );
    assert!(
        plan(json!({"tag_pattern": ".*", "older_than": "36500d"}))
            .await
            .is_empty()
    );
    rebuild_reproduces(&store).await;
}

/// Rebuilt from the log, the read models are row for row what they were.
async fn rebuild_reproduces(store: &Store) {
    let before = store.read_model_rows().await.unwrap();
    store.rebuild(&|_, _| {}).await.unwrap();
    assert_eq!(store.read_model_rows().await.unwrap(), before);
}

/// Pushes to `repo` an SBOM of `subject` (bytes `subject_body`) as a client writes one to a
/// registry without the referrers API: an untagged manifest with `subject` and
/// `artifactType`, and the referrers tag schema's index, tagged `sha256-<hex>`, listing it.
/// Returns the SBOM's and the index's digests.
async fn attach_sbom(
    reg: &Registry,
    repo: &str,
    subject: &str,
    subject_body: &[u8],
) -> (String, String) {
    let sbom_type = "application/spdx+json";
    let (sbom, _, descriptor) = push_referrer(reg, repo, subject, subject_body, sbom_type).await;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [descriptor],
    })
    .to_string();
    let hex = subject.strip_prefix("sha256:").unwrap();
    let index_digest = reg
        .manifest(repo, &format!("sha256-{hex}"), OCI_INDEX, index.as_bytes())
        .await;
    (sbom, index_digest)
}

/// Signs `subject` in `repo` as `cosign sign` does by default: a manifest whose layer is the
/// simple-signing payload naming the digest (its signature in an annotation), with cosign's
/// config (created at year 1, which an import ignores), tagged `sha256-<hex>.sig`. Returns
/// the signature manifest's digest and bytes.
async fn cosign_sign(reg: &Registry, repo: &str, subject: &str) -> (String, Vec<u8>) {
    let payload =
        json!({"critical": {"identity": {"docker-reference": format!("127.0.0.1/{repo}")},
                                      "image": {"docker-manifest-digest": subject},
                                      "type": "cosign container image signature"},
                         "optional": null})
        .to_string();
    let layer = reg.blob(repo, payload.as_bytes()).await;
    let config = json!({"architecture": "", "created": "0001-01-01T00:00:00Z", "os": "",
                        "rootfs": {"type": "layers", "diff_ids": [layer]}, "config": {}})
    .to_string();
    let config_digest = reg.blob(repo, config.as_bytes()).await;
    let body = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                    "digest": layer, "size": payload.len(),
                    "annotations": {"dev.cosignproject.cosign/signature": "MEUCIQDfake"}}],
    })
    .to_string()
    .into_bytes();
    let hex = subject.strip_prefix("sha256:").unwrap();
    let digest = reg
        .manifest(repo, &format!("sha256-{hex}.sig"), OCI_MANIFEST, &body)
        .await;
    (digest, body)
}

/// Runs prune `policy` (a dry run or not) and waits for it; the finished job and its plan's
/// items.
async fn run_prune(server: &Server, policy: Value, dry_run: bool) -> (Value, Vec<Value>) {
    let (status, body) = call(
        Method::POST,
        &format!("{}/v1/images/tasks", server.base),
        Some(json!({"action": "prune", "contents": {"policy": policy, "dry_run": dry_run}})),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let id = body["data"]["job"]["id"].as_str().unwrap().to_owned();
    let j = wait_for(server, &id, Duration::from_secs(60), |j| {
        matches!(state(j), "completed" | "error")
    })
    .await;
    assert_eq!(state(&j), "completed", "{j}");
    let (status, plan) = call(
        Method::GET,
        &format!("{}/v1/jobs/{id}/plan?page[size]=1000", server.base),
        None,
    )
    .await;
    assert_eq!(status, 200, "{plan}");
    let items = plan["data"]["items"].as_array().unwrap().clone();
    (j, items)
}

/// An image with the three kinds of attachment a registry without the referrers API holds,
/// written as their tools write them: a cosign signature tagged `sha256-<hex>.sig`, an SBOM
/// (an untagged manifest with `subject` and `artifactType`) and the OCI referrers tag
/// schema's index tagged `sha256-<hex>` listing it. After an import, the image's manifest
/// lists all three, each once, with how it is attached, and `filter[artifact_type]` keeps
/// the SBOM.
async fn attachments_are_found_by_subject_and_by_both_tag_schemes(db: &TestDb) {
    let reg = Registry::start().await;
    let (app, app_body) = reg.image("team/app", "v1", OCI_MANIFEST, &["app"]).await;
    let hex = app.strip_prefix("sha256:").unwrap().to_owned();
    let (sig, _) = reg
        .image(
            "team/app",
            &format!("sha256-{hex}.sig"),
            OCI_MANIFEST,
            &["signature"],
        )
        .await;
    let sbom_type = "application/spdx+json";
    let (sbom_digest, index_digest) = attach_sbom(&reg, "team/app", &app, &app_body).await;
    // A signature of a manifest the repository lacks (another tool deleted it): an orphan.
    let missing = common::digest(9);
    let orphan_tag = format!("sha256-{}.sig", missing.strip_prefix("sha256:").unwrap());
    let (orphan, _) = reg
        .image("team/app", &orphan_tag, OCI_MANIFEST, &["stray signature"])
        .await;
    let store = db.store().await;
    let fx = Fixture::new(store.clone());
    let ns = fx.namespace("team").await;
    let image = fx.image(&ns, "app").await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::on_database(&db.url, dir.path(), &["--role", "all"]);
    let j = import(
        &server,
        &image,
        json!({"registry": reg.base, "repository": "team/app"}),
    )
    .await;
    assert_eq!(state(&j), "completed", "{j}");
    let url = |query: &str| {
        format!(
            "{}/v1/images/{image}/manifests/{app}/referrers{query}",
            server.base
        )
    };
    let (status, body) = call(Method::GET, &url(""), None).await;
    assert_eq!(status, 200, "{body}");
    let mut found: Vec<(String, String)> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["digest"].as_str().unwrap().to_owned(),
                r["attached_by"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    found.sort();
    let mut expected = vec![
        (sig.clone(), "cosign_tag".to_owned()),
        (sbom_digest.clone(), "subject".to_owned()),
        (index_digest.clone(), "referrers_tag".to_owned()),
    ];
    expected.sort();
    assert_eq!(found, expected, "{body}");
    let (_, only) = call(
        Method::GET,
        &url(&format!(
            "?filter[artifact_type]={}",
            sbom_type.replace('+', "%2B")
        )),
        None,
    )
    .await;
    let only: Vec<&str> = only["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["digest"].as_str().unwrap())
        .collect();
    assert_eq!(only, [sbom_digest.as_str()]);
    // The signature itself has none; a digest the image lacks is 404.
    let (status, none) = call(
        Method::GET,
        &format!(
            "{}/v1/images/{image}/manifests/{sig}/referrers",
            server.base
        ),
        None,
    )
    .await;
    assert_eq!(
        (status, none["data"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{none}"
    );
    let (status, _) = call(
        Method::GET,
        &format!(
            "{}/v1/images/{image}/manifests/{}/referrers",
            server.base,
            common::digest(9)
        ),
        None,
    )
    .await;
    assert_eq!(status, 404);

    // The manifest listing says what each manifest is attached to, and which is an orphan.
    let (status, list) = call(
        Method::GET,
        &format!(
            "{}/container-registry/v1/images?repositoryName=team/app",
            server.base
        ),
        None,
    )
    .await;
    assert_eq!(status, 200, "{list}");
    let attached: std::collections::BTreeMap<String, Value> = list["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let digest = m["digest"].as_str().unwrap().to_owned();
            (digest, m.get("attachedTo").cloned().unwrap_or(Value::Null))
        })
        .collect();
    let to = |digest: &str, by: &str, orphan: bool| json!({"digest": digest, "by": by, "orphan": orphan});
    let expected: std::collections::BTreeMap<String, Value> = [
        (app.clone(), Value::Null),
        (sig.clone(), to(&app, "cosign_tag", false)),
        (sbom_digest.clone(), to(&app, "subject", false)),
        (index_digest.clone(), to(&app, "referrers_tag", false)),
        (orphan.clone(), to(&missing, "cosign_tag", true)),
    ]
    .into();
    assert_eq!(attached, expected, "{list}");
    rebuild_reproduces(&store).await;
}

/// Tags v10, v8 and v9 of `repo`, pushed in that order and built 2024-03, -01 and -02 (their
/// configs' `created`): their digests by tag, and their bytes by digest.
async fn push_releases(
    reg: &Registry,
    repo: &str,
) -> (
    std::collections::BTreeMap<&'static str, String>,
    std::collections::BTreeMap<String, Vec<u8>>,
) {
    let client = Client::new(&reg.base, Credentials::Anonymous, 4).unwrap();
    let (mut built, mut bodies) = (
        std::collections::BTreeMap::new(),
        std::collections::BTreeMap::new(),
    );
    for (tag, at) in [
        ("v10", "2024-03-05T10:00:00Z"),
        ("v8", "2024-01-05T10:00:00Z"),
        ("v9", "2024-02-05T10:00:00Z"),
    ] {
        let digest = built_at(reg, repo, tag, at, None).await;
        bodies.insert(
            digest.clone(),
            client.manifest(repo, &digest).await.unwrap().body,
        );
        built.insert(tag, digest);
    }
    (built, bodies)
}

/// A server on `db` whose namespace `team` is linked to the registry at `backend` (prefix
/// `mirror`), with image `app` imported into it from `repo` at `source`.
struct Linked {
    store: Store,
    server: Server,
    ns: String,
    app: String,
    _dir: tempfile::TempDir,
}

async fn import_linked(db: &TestDb, source: &str, backend: &str, repo: &str) -> Linked {
    let store = db.store().await;
    let ns = Fixture::new(store.clone()).namespace("team").await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::on_database(&db.url, dir.path(), &["--role", "all"]);
    let (status, body) = link(&server, &ns, backend, "mirror").await;
    assert_eq!(status, 200, "{body}");
    let j = import_new(&server, &ns, "app", source, repo).await;
    assert_eq!(state(&j), "completed", "{j}");
    let app = j["tasks"][0]["input"]["image_id"]
        .as_str()
        .unwrap()
        .to_owned();
    Linked {
        store,
        server,
        ns,
        app,
        _dir: dir,
    }
}

/// One item a plan keeps: kind, tag name or digest, reason, subject.
type Kept = (String, String, String, Option<String>);

/// What dry-run job `j`'s plan keeps (one page of up to 100), and the page.
async fn plan_keeps(server: &Server, j: &Value) -> (Value, std::collections::BTreeSet<Kept>) {
    let url = format!(
        "{}/v1/jobs/{}/plan?filter[decision]=keep",
        server.base,
        j["id"].as_str().unwrap()
    );
    let (status, plan) = call(Method::GET, &url, None).await;
    assert_eq!(status, 200, "{plan}");
    let kept = plan["data"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let key = if i["kind"] == "tag" { "tag" } else { "digest" };
            let field = |k: &str| i[k].as_str().unwrap().to_owned();
            let subject = i["subject"].as_str().map(str::to_owned);
            (field("kind"), field(key), field("reason"), subject)
        })
        .collect();
    (plan, kept)
}

/// `(kind, name, reason, subject)` as [`plan_keeps`] gives them.
fn keeps(kind: &str, name: &str, reason: &str, subject: Option<&str>) -> Kept {
    (
        kind.into(),
        name.into(),
        reason.into(),
        subject.map(str::to_owned),
    )
}

/// The image's size as the Scaleway API shows it.
async fn image_size(server: &Server, image: &str) -> Value {
    let url = format!("{}/registry/v1/regions/fr-par/images/{image}", server.base);
    call(Method::GET, &url, None).await.1["size"].clone()
}

/// The backend's `mirror/app` serves each of `digests` by digest, but those `gone` says,
/// which answer 404.
async fn assert_backend<'a>(
    backend: &Client,
    digests: impl IntoIterator<Item = &'a String>,
    gone: impl Fn(&str) -> bool,
) {
    for digest in digests {
        let there = backend.manifest("mirror/app", digest).await;
        if gone(digest) {
            assert!(
                matches!(there, Err(OciError::NotFound { .. })),
                "{digest}: {there:?}"
            );
        } else {
            assert_eq!(there.unwrap().digest, *digest, "kept at the backend");
        }
    }
}

/// The retention-truth scenario (design §11), on a real registry: tags v8, v9, v10 built
/// 2024-01, -02, -03 and pushed v10 first, each signed as cosign does, v10 carrying an SBOM
/// by `subject` with the referrers tag schema's index. Imported into a namespace linked to a
/// backend registry, "keep the last 1" of every tag (with `untagged`) and of the `v` tags
/// both plan to delete exactly v8, v9 and their signatures (the signatures `attachment_of`
/// their images) and keep v10 with its signature, SBOM and index; the bytes freed and the
/// image's size count the attachments; the real run leaves exactly that in the read models
/// and in the backend (over its HTTP API); a rebuild reproduces the read models.
async fn signed_releases_are_pruned_with_their_attachments_and_nothing_else(db: &TestDb) {
    let source = Registry::start().await;
    let backend = Registry::start().await;
    let repo = "team/app";
    let (built, mut bodies) = push_releases(&source, repo).await;
    let mut signature = std::collections::BTreeMap::new();
    for (tag, digest) in &built {
        let (sig, sig_body) = cosign_sign(&source, repo, digest).await;
        bodies.insert(sig.clone(), sig_body);
        signature.insert(*tag, sig);
    }
    let v10 = built["v10"].clone();
    let (sbom, index) = attach_sbom(&source, repo, &v10, &bodies[&v10]).await;
    let pull_source = Client::new(&source.base, Credentials::Anonymous, 4).unwrap();
    let sbom_body = pull_source.manifest(repo, &sbom).await.unwrap().body;
    bodies.insert(sbom.clone(), sbom_body);
    let hex = |d: &str| d.strip_prefix("sha256:").unwrap().to_owned();

    let Linked {
        store,
        server,
        ns,
        app,
        ..
    } = import_linked(db, &source.base, &backend.base, repo).await;

    // What goes: v8 and v9 with their signatures; the rest stays.
    let gone_manifests: std::collections::BTreeSet<String> = [
        built["v8"].clone(),
        built["v9"].clone(),
        signature["v8"].clone(),
        signature["v9"].clone(),
    ]
    .into();
    let sig_tag = |tag: &str| format!("sha256-{}.sig", hex(&built[tag]));
    let gone_tags: std::collections::BTreeSet<String> =
        ["v8".into(), "v9".into(), sig_tag("v8"), sig_tag("v9")].into();
    let kept: Vec<&[u8]> = [&v10, &signature["v10"], &sbom]
        .iter()
        .map(|d| bodies[*d].as_slice())
        .collect();
    let all: Vec<&[u8]> = bodies.values().map(Vec::as_slice).collect();
    let freed = expected_size(&all) - expected_size(&kept);

    let policies = [
        json!({"tag_pattern": ".*", "keep_last": 1, "untagged": true}),
        json!({"tag_pattern": "^v", "keep_last": 1}),
    ];
    for rules in &policies {
        let policy = json!({"namespace_id": ns, "image_names": ["app"], "rules": rules});
        let (j, items) = run_prune(&server, policy, true).await;
        let of_kind = |kind: &str| -> std::collections::BTreeSet<String> {
            items
                .iter()
                .filter(|i| i["kind"] == kind)
                .map(|i| {
                    i[if kind == "tag" { "tag" } else { "digest" }]
                        .as_str()
                        .unwrap()
                        .to_owned()
                })
                .collect()
        };
        assert_eq!(of_kind("tag"), gone_tags, "{rules}: {items:?}");
        assert_eq!(of_kind("manifest"), gone_manifests, "{rules}: {items:?}");
        for tag in ["v8", "v9"] {
            let item = |key: &str, value: &str| {
                items
                    .iter()
                    .find(|i| i[key] == value)
                    .unwrap_or_else(|| panic!("{value}"))
            };
            for sig in [item("tag", &sig_tag(tag)), item("digest", &signature[tag])] {
                assert_eq!(sig["reason"], "attachment_of", "{sig}");
                assert_eq!(sig["subject"], built[tag].as_str(), "{sig}");
            }
        }
        assert_eq!(j["output"]["planned"]["bytes"], freed, "{rules}: {j}");

        // The dry run also says what it keeps, and why: v10 as the last one, with what is
        // attached to it.
        let (plan, kept_items) = plan_keeps(&server, &j).await;
        let data = &plan["data"];
        assert_eq!(
            (
                &data["decision"],
                &data["kept_tags"],
                &data["kept_manifests"]
            ),
            (&json!("keep"), &json!(3), &json!(4)),
            "{plan}"
        );
        assert_eq!(plan["meta"]["total"], 7, "{plan}");
        assert_eq!(
            j["output"]["kept"],
            json!({"tags": 3, "manifests": 4}),
            "{j}"
        );
        let (v10_sig, v10_index) = (sig_tag("v10"), format!("sha256-{}", hex(&v10)));
        let to_v10 = Some(v10.as_str());
        let expected: std::collections::BTreeSet<Kept> = [
            keeps("tag", "v10", "keep_last", None),
            keeps("tag", &v10_sig, "attachment_of", to_v10),
            keeps("tag", &v10_index, "attachment_of", to_v10),
            keeps("manifest", &v10, "kept_tag", None),
            keeps("manifest", &signature["v10"], "attachment_of", to_v10),
            keeps("manifest", &sbom, "attachment_of", to_v10),
            keeps("manifest", &index, "attachment_of", to_v10),
        ]
        .into();
        assert_eq!(kept_items, expected, "{rules}: {plan}");
    }

    // The real run, in the metadata and at the backend.
    let policy = json!({"namespace_id": ns, "image_names": ["app"], "rules": policies[0]});
    let (j, _) = run_prune(&server, policy, false).await;
    // A real run's plan lists only its deletions.
    let (status, body) = call(
        Method::GET,
        &format!(
            "{}/v1/jobs/{}/plan?filter[decision]=keep",
            server.base,
            j["id"].as_str().unwrap()
        ),
        None,
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("only its deletions"), "{body}");
    assert_eq!(j["output"]["manifests_deleted"], 4, "{j}");
    assert_eq!(j["output"]["backend"]["manifests_deleted"], 4, "{j}");
    let rows = store.read_model_rows().await.unwrap();
    let tags: std::collections::BTreeSet<&str> = rows
        .tags
        .iter()
        .filter(|t| t.image_id == app)
        .map(|t| t.name.as_str())
        .collect();
    let (v10_index, v10_sig) = (format!("sha256-{}", hex(&v10)), sig_tag("v10"));
    let expected_tags: std::collections::BTreeSet<&str> =
        ["v10", v10_sig.as_str(), v10_index.as_str()]
            .into_iter()
            .collect();
    assert_eq!(tags, expected_tags);
    let manifests: std::collections::BTreeSet<&str> = rows
        .manifests
        .iter()
        .filter(|m| m.image_id == app)
        .map(|m| m.digest.as_str())
        .collect();
    let expected_manifests: std::collections::BTreeSet<&str> = [
        v10.as_str(),
        signature["v10"].as_str(),
        sbom.as_str(),
        index.as_str(),
    ]
    .into();
    assert_eq!(manifests, expected_manifests);
    assert_eq!(image_size(&server, &app).await, expected_size(&kept));

    let pull = Client::new(&backend.base, Credentials::Anonymous, 4).unwrap();
    assert_backend(&pull, bodies.keys().chain([&index]), |d| {
        gone_manifests.contains(d)
    })
    .await;
    let mut backend_tags = pull.tags("mirror/app").await.unwrap();
    backend_tags.sort();
    let mut expected: Vec<String> = expected_tags.iter().map(|t| t.to_string()).collect();
    expected.sort();
    assert_eq!(backend_tags, expected);
    // The backend's referrers tag holds the source's own index, copied whole.
    let fallback = format!("sha256-{}", hex(&v10));
    assert_eq!(
        pull.resolve("mirror/app", &fallback).await.unwrap(),
        Some(index.clone())
    );

    rebuild_reproduces(&store).await;
}

/// Pushes to `repo` an artifact of `artifact_type` attached to `subject` (its bytes
/// `subject_body`) by its `subject` field alone, untagged, as a client writes one to a
/// registry with the referrers API; returns its digest, bytes and its descriptor as the
/// referrers API lists it.
async fn push_referrer(
    reg: &Registry,
    repo: &str,
    subject: &str,
    subject_body: &[u8],
    artifact_type: &str,
) -> (String, Vec<u8>, Value) {
    let empty = reg.blob(repo, b"{}").await;
    let content = format!("{artifact_type} of {subject}");
    let layer = reg.blob(repo, content.as_bytes()).await;
    let body = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [{"mediaType": artifact_type, "digest": layer, "size": content.len()}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": subject_body.len()},
    })
    .to_string()
    .into_bytes();
    let digest = sha256(&body);
    reg.manifest(repo, &digest, OCI_MANIFEST, &body).await;
    let descriptor = json!({"mediaType": OCI_MANIFEST, "digest": digest, "size": body.len(),
                            "artifactType": artifact_type});
    (digest, body, descriptor)
}

/// The retention-truth scenario with attachments only the OCI 1.1 referrers API lists (no
/// tag names them), through a stand-in for that API in front of a real registry (CNCF
/// distribution 2.8 has none; see [`referrers_api`]): v8, v9, v10 built 2024-01, -02, -03 and
/// pushed v10 first, each signed by `subject`; v10 carries an SBOM, which is signed too (a
/// signature of the SBOM), v10's two referrers listed on two pages. Imported into a
/// namespace linked to a backend (without the referrers API), every attachment is recorded
/// with its subject and mirrored, listed there in its subject's referrers tag schema index;
/// both policies plan to delete exactly v8, v9 and their signatures (bytes freed
/// counted from the registry's manifests) and keep v10 with its signature, SBOM and the
/// SBOM's signature, saying why; the real run leaves exactly that in the read models and the
/// backend; a rebuild reproduces the read models.
async fn attachments_listed_by_the_referrers_api_are_imported_mirrored_and_pruned(db: &TestDb) {
    let source = Registry::start().await;
    let backend = Registry::start().await;
    let front = referrers_api::Front::start(&source.base).await;
    let repo = "team/app";
    let sig_type = "application/vnd.dev.cosign.artifact.sig.v1+json";
    let (built, mut bodies) = push_releases(&source, repo).await;
    let mut signature = std::collections::BTreeMap::new();
    for (tag, digest) in &built {
        let body = &bodies[digest];
        let (sig, sig_body, d) = push_referrer(&source, repo, digest, body, sig_type).await;
        front.refer(digest, d);
        bodies.insert(sig.clone(), sig_body);
        signature.insert(*tag, sig);
    }
    let v10 = built["v10"].clone();
    let (sbom, sbom_body, d) =
        push_referrer(&source, repo, &v10, &bodies[&v10], "application/spdx+json").await;
    front.refer(&v10, d);
    let (sbom_sig, sbom_sig_body, d) =
        push_referrer(&source, repo, &sbom, &sbom_body, sig_type).await;
    front.refer(&sbom, d);
    bodies.insert(sbom.clone(), sbom_body);
    bodies.insert(sbom_sig.clone(), sbom_sig_body);

    let Linked {
        store,
        server,
        ns,
        app,
        ..
    } = import_linked(db, &front.base, &backend.base, repo).await;

    // Recorded with their subjects: what the referrers endpoint lists.
    let referrers = |digest: String| {
        let url = format!(
            "{}/v1/images/{app}/manifests/{digest}/referrers",
            server.base
        );
        async move {
            let (status, body) = call(Method::GET, &url, None).await;
            assert_eq!(status, 200, "{body}");
            let mut found: Vec<(String, String)> = body["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    let field = |k: &str| r[k].as_str().unwrap().to_owned();
                    (field("digest"), field("attached_by"))
                })
                .collect();
            found.sort();
            found
        }
    };
    let by_subject = |ds: &[&String]| {
        let mut v: Vec<(String, String)> = ds
            .iter()
            .map(|d| ((*d).clone(), "subject".to_owned()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        referrers(v10.clone()).await,
        by_subject(&[&signature["v10"], &sbom])
    );
    assert_eq!(referrers(sbom.clone()).await, by_subject(&[&sbom_sig]));
    assert_eq!(
        referrers(built["v8"].clone()).await,
        by_subject(&[&signature["v8"]])
    );
    // Mirrored: the backend serves every one of them by digest; it has no referrers API, so
    // each subject's referrers are listed in its referrers tag schema index there too.
    let pull = Client::new(&backend.base, Credentials::Anonymous, 4).unwrap();
    assert_backend(&pull, bodies.keys(), |_| false).await;
    let listed = |subject: String| {
        let pull = pull.clone();
        async move {
            let tag = format!("sha256-{}", subject.strip_prefix("sha256:").unwrap());
            let index = pull.manifest("mirror/app", &tag).await?;
            let index: Value = serde_json::from_slice(&index.body).unwrap();
            assert_eq!(index["mediaType"], OCI_INDEX, "{index}");
            let mut found: Vec<(String, String)> = index["manifests"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| {
                    let field = |k: &str| d[k].as_str().unwrap().to_owned();
                    (field("digest"), field("artifactType"))
                })
                .collect();
            found.sort();
            Ok::<_, OciError>(found)
        }
    };
    let mut expected = vec![
        (signature["v10"].clone(), sig_type.to_owned()),
        (sbom.clone(), "application/spdx+json".to_owned()),
    ];
    expected.sort();
    assert_eq!(listed(v10.clone()).await.unwrap(), expected);
    assert_eq!(
        listed(sbom.clone()).await.unwrap(),
        [(sbom_sig.clone(), sig_type.to_owned())]
    );
    assert_eq!(
        listed(built["v8"].clone()).await.unwrap(),
        [(signature["v8"].clone(), sig_type.to_owned())]
    );

    let gone: std::collections::BTreeSet<&str> = [
        &built["v8"],
        &built["v9"],
        &signature["v8"],
        &signature["v9"],
    ]
    .map(String::as_str)
    .into();
    let kept: Vec<&[u8]> = bodies
        .iter()
        .filter(|(d, _)| !gone.contains(d.as_str()))
        .map(|(_, b)| b.as_slice())
        .collect();
    let all: Vec<&[u8]> = bodies.values().map(Vec::as_slice).collect();
    let freed = expected_size(&all) - expected_size(&kept);
    let policies = [
        json!({"tag_pattern": ".*", "keep_last": 1, "untagged": true}),
        json!({"tag_pattern": "^v", "keep_last": 1}),
    ];
    for rules in &policies {
        let policy = json!({"namespace_id": ns, "image_names": ["app"], "rules": rules});
        let (j, items) = run_prune(&server, policy, true).await;
        let tags: std::collections::BTreeSet<&str> = items
            .iter()
            .filter(|i| i["kind"] == "tag")
            .map(|i| i["tag"].as_str().unwrap())
            .collect();
        assert_eq!(tags, ["v8", "v9"].into(), "{rules}: {items:?}");
        let planned: std::collections::BTreeMap<&str, (&str, Value)> = items
            .iter()
            .filter(|i| i["kind"] == "manifest")
            .map(|i| {
                let why = (i["reason"].as_str().unwrap(), i["subject"].clone());
                (i["digest"].as_str().unwrap(), why)
            })
            .collect();
        let expected: std::collections::BTreeMap<&str, (&str, Value)> = [
            (built["v8"].as_str(), ("tags_deleted", Value::Null)),
            (built["v9"].as_str(), ("tags_deleted", Value::Null)),
            (
                signature["v8"].as_str(),
                ("attachment_of", json!(built["v8"])),
            ),
            (
                signature["v9"].as_str(),
                ("attachment_of", json!(built["v9"])),
            ),
        ]
        .into();
        assert_eq!(planned, expected, "{rules}: {items:?}");
        assert_eq!(j["output"]["planned"]["bytes"], freed, "{rules}: {j}");
        // What it keeps, and why.
        let (plan, kept_items) = plan_keeps(&server, &j).await;
        let (to_v10, to_sbom) = (Some(v10.as_str()), Some(sbom.as_str()));
        let expected: std::collections::BTreeSet<Kept> = [
            keeps("tag", "v10", "keep_last", None),
            keeps("manifest", &v10, "kept_tag", None),
            keeps("manifest", &signature["v10"], "attachment_of", to_v10),
            keeps("manifest", &sbom, "attachment_of", to_v10),
            keeps("manifest", &sbom_sig, "attachment_of", to_sbom),
        ]
        .into();
        assert_eq!(kept_items, expected, "{rules}: {plan}");
    }

    // The real run, in the read models and at the backend.
    let policy = json!({"namespace_id": ns, "image_names": ["app"], "rules": policies[0]});
    let (j, _) = run_prune(&server, policy, false).await;
    assert_eq!(j["output"]["manifests_deleted"], 4, "{j}");
    assert_eq!(j["output"]["backend"]["manifests_deleted"], 4, "{j}");
    let rows = store.read_model_rows().await.unwrap();
    let left: std::collections::BTreeSet<&str> = rows
        .manifests
        .iter()
        .filter(|m| m.image_id == app)
        .map(|m| m.digest.as_str())
        .collect();
    let expected: std::collections::BTreeSet<&str> = bodies
        .keys()
        .map(String::as_str)
        .filter(|d| !gone.contains(d))
        .collect();
    assert_eq!(left, expected);
    let tags: Vec<&str> = rows
        .tags
        .iter()
        .filter(|t| t.image_id == app)
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(tags, ["v10"]);
    assert_eq!(image_size(&server, &app).await, expected_size(&kept));
    // The referrers indexes of what went, went with it; v10's and the SBOM's stay.
    for tag in ["v8", "v9"] {
        let index = listed(built[tag].clone()).await;
        assert!(
            matches!(index, Err(OciError::NotFound { .. })),
            "{tag}: {index:?}"
        );
    }
    assert_eq!(listed(v10.clone()).await.unwrap().len(), 2);
    assert_eq!(listed(sbom.clone()).await.unwrap().len(), 1);
    assert_backend(&pull, bodies.keys(), |d| gone.contains(d)).await;

    rebuild_reproduces(&store).await;
}
