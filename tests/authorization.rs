//! Who may see and do what, through the real binary on both backends: project scope on every
//! route (walked from `/openapi.json`, so a new route cannot be left out), idempotency keys
//! bound to their request, and the canonical token spelling.

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{ADMIN, Fixture, Server, TestDb, call, namespace_created, state, token, wait_for};
use layerline_core::store::{Backend, EventStore, ReadModels};
use reqwest::Method;
use serde_json::{Value, json};

on_both_backends!(
    an_import_source_can_name_only_a_credential_set_and_only_for_its_host,
    no_route_shows_or_changes_another_projects_resources,
    an_idempotency_key_reused_for_another_request_is_refused,
    tokens_are_accepted_only_in_their_canonical_spelling,
    oversized_requests_get_json_refusals_that_repeat_little,
    outgoing_requests_reach_only_what_the_operator_allows,
    the_token_is_checked_before_the_body_is_read,
    page_tokens_are_signed_by_the_deployment,
);

/// `method url` with `token` and an optional JSON body: the status and the body's text.
async fn send(method: &Method, url: &str, token: &str, body: Option<&Value>) -> (u16, String) {
    let mut req = reqwest::Client::new()
        .request(method.clone(), url)
        .header("X-Auth-Token", token);
    if let Some(b) = body {
        req = req.json(b);
    }
    let res = req.send().await.unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

/// The ids of project `p2`'s resources, by the path parameter (or role) they fill.
struct Theirs {
    namespace: String,
    namespace_name: String,
    image: String,
    tag: String,
    job: String,
    policy: String,
    /// A manifest's id in the Yandex listing.
    manifest: String,
    /// A manifest's digest.
    digest: String,
}

impl Theirs {
    fn all(&self) -> [&str; 8] {
        [
            &self.namespace,
            &self.namespace_name,
            &self.image,
            &self.tag,
            &self.job,
            &self.policy,
            &self.manifest,
            &self.digest,
        ]
    }

    /// `template` with its path parameters filled with p2's ids. A parameter this test does
    /// not know fails the test: a new route must be added here.
    fn fill(&self, template: &str) -> String {
        let mut out = Vec::new();
        let mut previous = "";
        for segment in template.split('/') {
            let filled = match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                None => segment.to_owned(),
                Some("region") => "fr-par".to_owned(),
                Some(_) => match (template.starts_with("/container-registry"), previous) {
                    (true, "images") => self.manifest.clone(),
                    (false, "images") => self.image.clone(),
                    (_, "namespaces") => self.namespace.clone(),
                    (_, "tags") => self.tag.clone(),
                    (_, "jobs") => self.job.clone(),
                    (_, "prune-policies") => self.policy.clone(),
                    (_, "manifests") => self.digest.clone(),
                    _ => panic!("{template}: no id of another project for {segment}"),
                },
            };
            previous = segment;
            out.push(filled);
        }
        out.join("/")
    }

    /// The requests sent to `method template`, each `(query, body)`, all naming p2's
    /// resources (or none, for a plain list). Valid bodies, so that only the project check
    /// stands between the request and its effect.
    fn requests(&self, method: &str, template: &str) -> Vec<(String, Option<Value>)> {
        let ns = &self.namespace;
        let source = json!({"registry": "http://127.0.0.1:9", "repository": "x/y"});
        let policy = json!({"name": "stolen", "namespace_id": ns, "image_names": ["*"],
                            "rules": {"tag_pattern": ".*", "keep_last": 1}});
        let one = |body: Value| vec![(String::new(), Some(body))];
        match (method, template) {
            ("post", "/v1/jobs/{id}/tasks") => one(json!({"action": "cancel"})),
            ("post", "/v1/jobs") => one(json!({"kind": "probe"})),
            ("post", "/v1/images/tasks") => [
                json!({"action": "delete_tags", "contents": {"tag_ids": [self.tag]}}),
                json!({"action": "prune", "contents": {"policy_id": self.policy}}),
                json!({"action": "prune", "contents": {"policy": policy}}),
                json!({"action": "gc", "contents": {"namespace_id": ns}}),
                json!({"action": "import", "contents": {"namespace_id": ns,
                    "source": {"registry": "http://127.0.0.1:9", "repositories": ["x"]}}}),
            ]
            .into_iter()
            .map(|b| (String::new(), Some(b)))
            .collect(),
            ("post", "/v1/images/{id}/tasks") => {
                one(json!({"action": "import", "contents": {"source": source}}))
            }
            ("post", "/v1/images") => {
                one(json!({"name": "stolen", "namespace_id": ns, "source": source}))
            }
            ("post", "/v1/images/{id}/archive") => one(json!({})),
            ("put", "/v1/namespaces/{namespace_id}/backend") => {
                one(json!({"registry": "http://127.0.0.1:9", "prefix": "x"}))
            }
            ("post", "/v1/hooks/registry") => vec![(
                format!("?namespace_id={ns}&registry=http://127.0.0.1:9"),
                Some(json!({"events": []})),
            )],
            ("post", "/v1/prune-policies") | ("put", "/v1/prune-policies/{id}") => one(policy),
            ("get", "/v1/prune-policies") => vec![(format!("?filter[namespace_id]={ns}"), None)],
            ("patch", t) if t.ends_with("/namespaces/{namespace_id}") => {
                one(json!({"description": "stolen"}))
            }
            ("post", t) if t.ends_with("/namespaces") => {
                one(json!({"name": "stolen-namespace", "project_id": "p2"}))
            }
            ("patch", t) if t.ends_with("/images/{image_id}") => {
                one(json!({"visibility": "public"}))
            }
            ("get", t) if t.ends_with("/regions/{region}/images") => {
                vec![(format!("?namespace_id={ns}"), None)]
            }
            ("get", "/container-registry/v1/images") => {
                vec![(format!("?repositoryName={}/app", self.namespace_name), None)]
            }
            ("post" | "put" | "patch", _) => one(json!({})),
            _ => vec![(String::new(), None)],
        }
    }
}

/// Project p2's namespace with an image of two tags, a stored policy and a finished dry
/// run of it (with its plan); a token of project p1 with every capability (`admin`) walks
/// every route of `/openapi.json` at them. Each request (other than a list) that names p2's
/// resources is answered 403 or 404, lists answer 200, no answer shows an id of p2 the
/// request did not name, and the log has not grown.
async fn no_route_shows_or_changes_another_projects_resources(db: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::on_database(&db.url, dir.path(), &[]);
    let fx = Fixture::new(db.store().await);
    let ns = uuid::Uuid::now_v7().to_string();
    let mut created = namespace_created(&ns, "team-two");
    created.project_id = "p2".into();
    fx.registry
        .create_namespace(created, &fx.meta)
        .await
        .unwrap();
    let img = fx.image(&ns, "app").await;
    for n in 1..=2 {
        fx.manifest(&img, n, &[(100 + n, 5)]).await;
        fx.tag(&img, &format!("v{n}"), n).await;
    }
    let rows = fx.store().read_model_rows().await.unwrap();
    let tag = rows
        .tags
        .iter()
        .find(|t| t.image_id == img)
        .unwrap()
        .id
        .clone();
    let base = &server.base;
    let (status, body) = call(
        Method::POST,
        &format!("{base}/v1/prune-policies"),
        Some(
            json!({"name": "keep-one", "namespace_id": ns, "image_names": ["*"],
                    "rules": {"tag_pattern": ".*", "keep_last": 1}}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let policy = body["data"]["id"].as_str().unwrap().to_owned();
    let (status, body) = call(
        Method::POST,
        &format!("{base}/v1/images/tasks"),
        Some(json!({"action": "prune", "contents": {"policy_id": policy, "dry_run": true}})),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let job = body["data"]["job"]["id"].as_str().unwrap().to_owned();
    wait_for(&server, &job, Duration::from_secs(60), |j| {
        state(j) == "completed"
    })
    .await;
    let (status, plan) = call(Method::GET, &format!("{base}/v1/jobs/{job}/plan"), None).await;
    assert_eq!(
        (status, plan["data"]["tags"].as_i64()),
        (200, Some(1)),
        "{plan}"
    );
    let (_, listing) = call(
        Method::GET,
        &format!("{base}/container-registry/v1/images?repositoryName=team-two/app"),
        None,
    )
    .await;
    let manifest = listing["images"][0]["id"].as_str().unwrap().to_owned();
    let theirs = Theirs {
        namespace: ns.clone(),
        namespace_name: "team-two".into(),
        image: img.clone(),
        tag,
        job: job.clone(),
        policy,
        manifest,
        digest: common::digest(1),
    };

    let mine = token(&db.url, "admin", Some("p1"));
    let head = fx.store().head().await.unwrap();
    let (_, doc) = call(Method::GET, &format!("{base}/openapi.json"), None).await;
    let paths = doc["paths"].as_object().unwrap();
    let mut walked = BTreeMap::new();
    for (template, item) in paths {
        if ["/healthz", "/readyz", "/openapi.json"].contains(&template.as_str()) {
            continue;
        }
        for method in item.as_object().unwrap().keys() {
            let path = theirs.fill(template);
            let verb = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            for (query, body) in theirs.requests(method, template) {
                let url = format!("{base}{path}{query}");
                let (status, text) = send(&verb, &url, &mine, body.as_ref()).await;
                let asked = format!(
                    "{url} {}",
                    body.as_ref().map(Value::to_string).unwrap_or_default()
                );
                for id in theirs.all() {
                    // A short id (a manifest's number) only as a whole JSON string.
                    let shown = if id.len() < 8 {
                        text.contains(&format!("\"{id}\""))
                    } else {
                        text.contains(id)
                    };
                    assert!(
                        asked.contains(id) || !shown,
                        "{method} {url} shows {id} of another project: {text}"
                    );
                }
                // A list answers 200 and shows nothing of theirs, even when it filters by
                // their ids; every other request names their resources and is refused
                // (but the probe, which belongs to no project, so no scoped token may
                // start it).
                let ids_in_path =
                    template.matches('{').count() - usize::from(template.contains("{region}"));
                let list = method == "get" && ids_in_path == 0;
                if !list {
                    assert!(
                        status == 403 || status == 404,
                        "{method} {url} {body:?} answered {status} to another project: {text}"
                    );
                } else {
                    assert_eq!(status, 200, "{method} {url}: {text}");
                }
                *walked.entry(format!("{method} {template}")).or_insert(0) += 1;
            }
        }
    }
    assert!(walked.len() >= 30, "every route was walked: {walked:?}");
    assert_eq!(
        fx.store().head().await.unwrap(),
        head,
        "nothing was appended"
    );
    let (status, j) = call(Method::GET, &format!("{base}/v1/jobs/{job}"), None).await;
    assert_eq!((status, state(&j["data"])), (200, "completed"), "{j}");
    let after = fx.store().read_model_rows().await.unwrap();
    assert_eq!(after.tags.iter().filter(|t| t.image_id == img).count(), 2);
    assert!(after.namespaces.iter().any(|n| n.id == ns));
}

/// The same key with the same body answers the same job; with another action, or the same
/// action on another resource, it is refused (422 naming the key) and queues nothing.
async fn an_idempotency_key_reused_for_another_request_is_refused(db: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::on_database(&db.url, dir.path(), &["--role", "api"]);
    let fx = Fixture::new(db.store().await);
    let ns = fx.namespace("team").await;
    let other = fx.namespace("other").await;
    let img = fx.image(&ns, "app").await;
    fx.manifest(&img, 1, &[(100, 5)]).await;
    fx.tag(&img, "v1", 1).await;
    let rows = fx.store().read_model_rows().await.unwrap();
    let tag = rows.tags[0].id.clone();
    let url = format!("{}/v1/images/tasks", server.base);
    let submit = |body: Value| {
        let url = url.clone();
        async move {
            let res = reqwest::Client::new()
                .post(&url)
                .header("X-Auth-Token", ADMIN)
                .header("Idempotency-Key", "nightly-1")
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap())
        }
    };
    let gc = json!({"action": "gc", "contents": {"namespace_id": ns}});
    let (status, first) = submit(gc.clone()).await;
    assert_eq!(status, 202, "{first}");
    let (status, again) = submit(gc).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(first["data"]["job"]["id"], again["data"]["job"]["id"]);
    for body in [
        json!({"action": "delete_tags", "contents": {"tag_ids": [tag]}}),
        json!({"action": "gc", "contents": {"namespace_id": other}}),
    ] {
        let (status, refused) = submit(body.clone()).await;
        assert_eq!(status, 422, "{body}: {refused}");
        assert_eq!(refused["error"]["source"], "/Idempotency-Key", "{refused}");
        let detail = refused["error"]["detail"].as_str().unwrap();
        assert!(detail.contains("nightly-1"), "{detail}");
    }
    let (_, jobs) = call(
        Method::GET,
        &format!("{}/v1/jobs?meta=total", server.base),
        None,
    )
    .await;
    assert_eq!(jobs["meta"]["total"], 1, "{jobs}");
}

/// A secret is a UUID in its one lowercase, hyphenated spelling; the other spellings a UUID
/// parser takes (upper case, no hyphens, braces, `urn:uuid:`) are refused as unknown tokens.
async fn tokens_are_accepted_only_in_their_canonical_spelling(db: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::on_database(&db.url, dir.path(), &["--role", "api"]);
    let url = format!("{}/v1/jobs", server.base);
    let (status, _) = send(&Method::GET, &url, ADMIN, None).await;
    assert_eq!(status, 200);
    let simple = ADMIN.replace('-', "");
    for spelling in [
        ADMIN.to_uppercase(),
        simple,
        format!("{{{ADMIN}}}"),
        format!("urn:uuid:{ADMIN}"),
    ] {
        let (status, body) = send(&Method::GET, &url, &spelling, None).await;
        assert_eq!(status, 401, "{spelling}: {body}");
    }
}

/// A listener posing as a registry: it records the `Authorization` header of every request
/// (`None` when there was none) and answers each with a `Basic` challenge.
async fn recording_registry() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<Option<String>>>>,
) {
    use axum::http::{HeaderMap, StatusCode, header};
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let app = axum::Router::new().fallback(move |headers: HeaderMap| {
        let record = record.clone();
        async move {
            let auth = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            record.lock().unwrap().push(auth);
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, r#"Basic realm="listener""#)],
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (host, seen)
}

/// The exfiltration of issue #29: an `images-import` token named the bootstrap secret's
/// variable as `password_env`, and the worker sent it to the source's registry. Now a source
/// names a credential set: any other variable is refused (422 naming the field), a set bound
/// to another host is never sent, and a set is sent to its own host only after that host
/// challenged the worker.
async fn an_import_source_can_name_only_a_credential_set_and_only_for_its_host(db: &TestDb) {
    let (host, seen) = recording_registry().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_logging_to(
        dir.path(),
        &["--database-url", &db.url],
        &[
            ("LAYERLINE_BOOTSTRAP_TOKEN", ADMIN),
            ("LAYERLINE_REGISTRY_ELSEWHERE_HOST", "registry.example.com"),
            ("LAYERLINE_REGISTRY_ELSEWHERE_USERNAME", "u"),
            ("LAYERLINE_REGISTRY_ELSEWHERE_PASSWORD", "elsewhere-secret"),
            ("LAYERLINE_REGISTRY_LISTENER_HOST", &host),
            ("LAYERLINE_REGISTRY_LISTENER_USERNAME", "ci"),
            ("LAYERLINE_REGISTRY_LISTENER_PASSWORD", "listener-secret"),
        ],
        std::process::Stdio::null(),
    );
    let fx = Fixture::new(db.store().await);
    let ns = fx.namespace("team").await;
    let img = fx.image(&ns, "app").await;
    let importer = token(&db.url, "images-import,jobs-view", None);
    let url = format!("{}/v1/images/{img}/tasks", server.base);
    let import = |credentials: Value| {
        let body = json!({"action": "import", "contents": {"source": {
            "registry": format!("http://{host}"), "repository": "x/y", "credentials": credentials}}});
        let (url, importer) = (url.clone(), importer.clone());
        async move {
            let (status, text) = send(&Method::POST, &url, &importer, Some(&body)).await;
            (status, serde_json::from_str::<Value>(&text).unwrap())
        }
    };
    let ended = |id: String| {
        let server = &server;
        async move {
            wait_for(server, &id, Duration::from_secs(60), |j| {
                matches!(state(j), "completed" | "error")
            })
            .await
        }
    };

    for variable in [
        "LAYERLINE_BOOTSTRAP_TOKEN",
        "HOME",
        "LAYERLINE_REGISTRY_LISTENER_HOST",
    ] {
        let (status, body) = import(json!({"username": "exfil", "password_env": variable})).await;
        assert_eq!(status, 422, "{variable}: {body}");
        assert_eq!(
            body["error"]["source"], "/source.credentials.password_env",
            "{body}"
        );
    }
    let (status, body) = import(json!({"set": "../x"})).await;
    assert_eq!(
        (status, body["error"]["source"].as_str()),
        (422, Some("/source.credentials.set"))
    );

    let (status, body) = import(json!({"set": "elsewhere"})).await;
    assert_eq!(status, 200, "{body}");
    let job = ended(body["data"]["job"]["id"].as_str().unwrap().to_owned()).await;
    assert_eq!(state(&job), "error", "{job}");
    let error = job["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("is for registry.example.com"), "{job}");
    assert!(!error.contains("elsewhere-secret"), "{job}");
    assert!(
        seen.lock().unwrap().is_empty(),
        "a set bound elsewhere reached the listener"
    );

    // The older spelling of a set, then its name: sent only after the challenge.
    for credentials in [
        json!({"username": "ci", "password_env": "LAYERLINE_REGISTRY_LISTENER_PASSWORD"}),
        json!({"set": "listener"}),
    ] {
        seen.lock().unwrap().clear();
        let (status, body) = import(credentials.clone()).await;
        assert_eq!(status, 200, "{body}");
        let job = ended(body["data"]["job"]["id"].as_str().unwrap().to_owned()).await;
        assert_eq!(state(&job), "error", "the listener refuses everyone: {job}");
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen.first(),
            Some(&None),
            "{credentials}: the first request is anonymous"
        );
        // base64("ci:listener-secret")
        let basic = Some("Basic Y2k6bGlzdGVuZXItc2VjcmV0".to_owned());
        assert!(
            seen.contains(&basic),
            "{credentials}: answered the challenge: {seen:?}"
        );
    }
    // base64("exfil:<the bootstrap secret>") never left the worker.
    let leaked = "ZXhmaWw6NmYxYzJhM2ItNGQ1ZS00ZjYwLThhN2ItOWMwZDFlMmYzYTRi";
    assert!(
        !seen
            .lock()
            .unwrap()
            .iter()
            .flatten()
            .any(|h| h.contains(leaked))
    );
}

/// Every refusal is JSON in its surface's shape and of bounded size: a request target over
/// 8 KiB (414), a hook body over 1 MiB (413, and only after the token is checked), ids of any
/// length in 404s (clipped), and a schedule no date matches (422 instead of a policy that
/// never runs).
async fn oversized_requests_get_json_refusals_that_repeat_little(db: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::on_database(&db.url, dir.path(), &["--role", "api"]);
    let base = &server.base;
    let json_of = |status: u16, text: &str| -> Value {
        serde_json::from_str(text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"))
    };
    let long = "a".repeat(9000);
    let (status, text) = send(&Method::GET, &format!("{base}/v1/jobs/{long}"), ADMIN, None).await;
    assert_eq!(status, 414, "{text}");
    assert_eq!(json_of(status, &text)["error"]["code"], "414.too-long");
    assert!(text.len() < 1000, "{} bytes", text.len());
    let url = format!("{base}/registry/v1/regions/fr-par/images/{long}");
    let (status, text) = send(&Method::GET, &url, ADMIN, None).await;
    assert_eq!(status, 414, "{text}");
    assert_eq!(json_of(status, &text)["type"], "invalid_arguments");

    let id = "b".repeat(4000);
    let (status, text) = send(&Method::GET, &format!("{base}/v1/jobs/{id}"), ADMIN, None).await;
    assert_eq!(status, 404, "{text}");
    assert!(text.len() < 1000, "a 404 of {} bytes", text.len());
    let url = format!("{base}/registry/v1/regions/fr-par/images/{id}");
    let (status, text) = send(&Method::GET, &url, ADMIN, None).await;
    assert_eq!(status, 404, "{text}");
    assert!(text.len() < 1000, "a 404 of {} bytes", text.len());

    let hook = format!("{base}/v1/hooks/registry?namespace_id=x&registry=http://127.0.0.1:9");
    let huge = format!(
        "{{\"events\": [], \"pad\": \"{}\"}}",
        "c".repeat(1024 * 1024)
    );
    for (token, expected) in [(None, 401), (Some(ADMIN), 413)] {
        let mut req = reqwest::Client::new().post(&hook).body(huge.clone());
        if let Some(t) = token {
            req = req.header("X-Auth-Token", t);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        assert_eq!(status, expected, "{text}");
        let body = json_of(status, &text);
        assert_eq!(body["error"]["status"], expected, "{body}");
    }

    let fx = Fixture::new(db.store().await);
    let ns = fx.namespace("team").await;
    let policy = json!({"name": "never", "namespace_id": ns, "image_names": ["*"],
                        "rules": {"tag_pattern": ".*", "keep_last": 1}, "schedule": "0 0 30 2 *"});
    let (status, body) = call(
        Method::POST,
        &format!("{base}/v1/prune-policies"),
        Some(policy),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["source"], "/schedule", "{body}");
}

/// Where the workers and the hook may connect: with no `LAYERLINE_REGISTRY_ALLOW`, public
/// addresses only — a loopback address given as an IP or as a name (`localhost`, refused once
/// resolved) and the link-local metadata address are refused, naming the host and not the
/// connection's error chain; with a list, only the hosts it names. Nothing reaches the
/// listener in between.
async fn outgoing_requests_reach_only_what_the_operator_allows(db: &TestDb) {
    let (host, seen) = recording_registry().await;
    let port = host.rsplit_once(':').unwrap().1.to_owned();
    let fx = Fixture::new(db.store().await);
    let ns = fx.namespace("team").await;
    let img = fx.image(&ns, "app").await;
    for (allow, registries) in [
        (
            "",
            vec![format!("http://{host}"), format!("http://localhost:{port}")],
        ),
        ("registry.example.com", vec![format!("http://{host}")]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start_logging_to(
            dir.path(),
            &["--database-url", &db.url],
            &[
                ("LAYERLINE_BOOTSTRAP_TOKEN", ADMIN),
                ("LAYERLINE_REGISTRY_ALLOW", allow),
            ],
            std::process::Stdio::null(),
        );
        for registry in registries {
            let body = json!({"action": "import", "contents": {"source": {
                "registry": registry, "repository": "x/y"}}});
            let url = format!("{}/v1/images/{img}/tasks", server.base);
            let (status, body) = call(Method::POST, &url, Some(body)).await;
            assert_eq!(status, 200, "{body}");
            let id = body["data"]["job"]["id"].as_str().unwrap().to_owned();
            let job = wait_for(&server, &id, Duration::from_secs(60), |j| {
                matches!(state(j), "completed" | "error")
            })
            .await;
            let error = job["last_error"].as_str().unwrap_or_default();
            assert_eq!(state(&job), "error", "{allow:?} {registry}: {job}");
            let named = registry.trim_start_matches("http://").to_owned();
            assert!(
                error.contains(&named) || error.contains("localhost"),
                "{allow:?} {registry}: {error}"
            );
            assert!(error.contains("LAYERLINE_REGISTRY_ALLOW"), "{error}");
            assert!(!error.contains("tcp connect error"), "{error}");
        }
        // The hook names its registry in the query: refused before any connection.
        let hook = format!(
            "{}/v1/hooks/registry?namespace_id={ns}&registry=https://169.254.169.254",
            server.base
        );
        let (status, body) = call(Method::POST, &hook, Some(json!({"events": []}))).await;
        assert_eq!(status, 422, "{body}");
        let detail = body["error"]["detail"].as_str().unwrap();
        assert!(detail.contains("169.254.169.254"), "{detail}");
        assert!(!detail.contains("error trying to connect"), "{detail}");
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "the listener was reached: {:?}",
        seen.lock()
    );

    // A repository that would leave /v2/<name>/ is refused before any request.
    let dir = tempfile::tempdir().unwrap();
    let server = Server::on_database(&db.url, dir.path(), &["--role", "api"]);
    let body = json!({"action": "import", "contents": {"source": {
        "registry": format!("http://{host}"), "repository": "../../secret/../x"}}});
    let url = format!("{}/v1/images/{img}/tasks", server.base);
    let (status, body) = call(Method::POST, &url, Some(body)).await;
    assert_eq!(
        (status, body["error"]["source"].as_str()),
        (422, Some("/source.repository"))
    );
}

/// Every route that takes a body checks the token before it reads the body: a malformed body
/// sent without a valid token is answered 401, on every write route of `/openapi.json`.
async fn the_token_is_checked_before_the_body_is_read(db: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::on_database(&db.url, dir.path(), &["--role", "api"]);
    let base = &server.base;
    let (_, doc) = call(Method::GET, &format!("{base}/openapi.json"), None).await;
    let mut walked = 0;
    for (template, item) in doc["paths"].as_object().unwrap() {
        let path = template
            .replace("{region}", "fr-par")
            .split('/')
            .map(|s| {
                if s.starts_with('{') {
                    "00000000-0000-4000-8000-000000000000"
                } else {
                    s
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        for method in item.as_object().unwrap().keys() {
            if !matches!(method.as_str(), "post" | "put" | "patch") {
                continue;
            }
            let verb = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            for token in [None, Some(uuid::Uuid::new_v4().to_string())] {
                // The hook's query is read first (it names where the events come from).
                let query = if template == "/v1/hooks/registry" {
                    "?namespace_id=x&registry=https://registry.example.com"
                } else {
                    ""
                };
                let mut req = reqwest::Client::new()
                    .request(verb.clone(), format!("{base}{path}{query}"))
                    .header("content-type", "application/json")
                    .body("{\"not\": json");
                if let Some(t) = &token {
                    req = req.header("X-Auth-Token", t);
                }
                let res = req.send().await.unwrap();
                let status = res.status().as_u16();
                let text = res.text().await.unwrap();
                assert_eq!(status, 401, "{method} {template} with {token:?}: {text}");
                assert!(serde_json::from_str::<Value>(&text).is_ok(), "{text}");
            }
            walked += 1;
        }
    }
    assert!(walked >= 12, "{walked} write routes");
}

/// Yandex page tokens are signed with a key the deployment keeps in its database: a token
/// one process issued pages on in another, and a token whose position was changed, or made
/// up, is refused.
async fn page_tokens_are_signed_by_the_deployment(db: &TestDb) {
    let fx = Fixture::new(db.store().await);
    let ns = fx.namespace("team").await;
    let img = fx.image(&ns, "app").await;
    for n in 1..=3 {
        fx.manifest(&img, n, &[(100 + n, 5)]).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let a = Server::on_database(&db.url, dir.path(), &["--role", "api"]);
    let b = Server::on_database(&db.url, dir.path(), &["--role", "api"]);
    let list = |server: &Server, token: &str| {
        format!(
            "{}/container-registry/v1/images?repositoryName=team/app&pageSize=1&pageToken={token}",
            server.base
        )
    };
    let (status, first) = call(Method::GET, &list(&a, ""), None).await;
    assert_eq!(status, 200, "{first}");
    let token = first["nextPageToken"].as_str().unwrap().to_owned();
    let (status, second) = call(Method::GET, &list(&b, &token), None).await;
    assert_eq!(status, 200, "another process pages on: {second}");
    assert_ne!(second["images"][0]["id"], first["images"][0]["id"]);
    let (seq, tag) = token.split_once('.').unwrap();
    let moved = format!("{}.{tag}", seq.parse::<i64>().unwrap() + 1);
    for forged in [
        moved,
        format!("{seq}.000000000000000000000000"),
        "1.abc".to_owned(),
    ] {
        let (status, body) = call(Method::GET, &list(&b, &forged), None).await;
        assert_eq!(
            (status, body["code"].as_i64()),
            (400, Some(3)),
            "{forged}: {body}"
        );
    }
}
