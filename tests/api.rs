//! The registry APIs over real HTTP: the real binary serving a real database (SQLite and
//! PostgreSQL), images and tags recorded through the library's domain commands on the same
//! database, as an importer would.

mod common;

use std::collections::HashSet;

use common::{ADMIN, Fixture, Server, TestDb, digest};
use layerline_core::domain::event::ManifestRecorded;
use layerline_core::domain::image::ImageCommand;
use layerline_core::store::{Backend, Metadata, Store};
use reqwest::Method;
use serde_json::{Value, json};

const REGION: &str = "fr-par";

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
                    super::$name(Env::start(&db).await).await;
                }
            )*
        }
        mod postgres {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = TestDb::new(Backend::Postgres).await else { return };
                    super::$name(Env::start(&db).await).await;
                }
            )*
        }
    };
}

on_both_backends!(
    namespaces_round_trip_with_every_field,
    every_order_by_sorts_three_rows,
    pages_are_bounded_and_past_the_end_is_empty,
    filters_select_exact_names_projects_and_namespaces,
    bad_input_gets_scaleway_errors_and_changes_nothing,
    images_and_tags_show_sizes_that_follow_pushes_moves_and_deletes,
    tag_delete_needs_force_when_the_digest_is_shared,
    every_route_checks_its_token,
    yandex_listing_walks_every_manifest_once_while_others_are_inserted,
    yandex_listing_shapes_filters_and_errors,
    openapi_describes_every_route_with_schemas,
    yandex_routes_check_their_token,
    the_official_scaleway_python_sdk_works_unchanged,
);

/// A served database, the library's commands on the same database (`Fixture`, reached
/// through `Deref`), and an admin token.
struct Env {
    server: Server,
    db_url: String,
    fx: Fixture,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Env {
    async fn start(db: &TestDb) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start_with_env(
            dir.path(),
            &["--database-url", &db.url, "--regions", "fr-par,nl-ams"],
            &[("LAYERLINE_BOOTSTRAP_TOKEN", ADMIN)],
        );
        let store = Store::connect(&db.url, 4).await.unwrap();
        Env {
            server,
            db_url: db.url.clone(),
            fx: Fixture::new(store),
            client: reqwest::Client::new(),
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/registry/v1/regions/{REGION}{path}", self.server.base)
    }

    async fn call(
        &self,
        method: Method,
        url: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.client.request(method, url);
        if let Some(t) = token {
            req = req.header("X-Auth-Token", t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let body =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
        (status, body)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(Method::GET, &self.url(path), Some(ADMIN), None)
            .await
    }

    /// Polls `path` until it answers 404 (a delete job finished), failing after 30 s.
    async fn gone(&self, path: &str) {
        let started = std::time::Instant::now();
        loop {
            let (status, body) = self.get(path).await;
            if status == 404 {
                return;
            }
            assert_eq!(
                body["status"], "deleting",
                "{path} while its delete job runs"
            );
            assert!(started.elapsed().as_secs() < 30, "{path} was never deleted");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    async fn send(&self, method: Method, path: &str, body: Value) -> (u16, Value) {
        self.call(method, &self.url(path), Some(ADMIN), Some(body))
            .await
    }

    async fn create_namespace(&self, name: &str, project: &str) -> Value {
        let (status, body) = self
            .send(
                Method::POST,
                "/namespaces",
                json!({"name": name, "project_id": project}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// A token with `caps`, made with the real CLI.
    fn token(&self, db_url: &str, caps: &str, project: Option<&str>) -> String {
        common::token(db_url, caps, project)
    }
}

/// POSTs a JSON body one byte longer than the 1 MiB limit and reads the answer.
async fn oversized_post(url: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const LIMIT: usize = layerline_core::http::BODY_LIMIT;
    let url = reqwest::Url::parse(url).unwrap();
    let mut stream = tokio::net::TcpStream::connect((url.host_str().unwrap(), url.port().unwrap()))
        .await
        .unwrap();
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {ADMIN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        url.path(),
        LIMIT + 1
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut body = vec![b' '; LIMIT + 1];
    body[0] = b'"';
    body[LIMIT] = b'"';
    stream.write_all(&body).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut response),
    )
    .await;
    let text = String::from_utf8_lossy(&response);
    let status: u16 = text.split(' ').nth(1).unwrap().parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    (
        status,
        serde_json::from_str(body.trim()).unwrap_or_else(|_| panic!("not JSON: {text}")),
    )
}

/// `value` is an object with exactly these fields, of these JSON types.
fn assert_fields(value: &Value, fields: &[(&str, &str)]) {
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"));
    let keys: HashSet<&str> = object.keys().map(String::as_str).collect();
    let expected: HashSet<&str> = fields.iter().map(|(k, _)| *k).collect();
    assert_eq!(keys, expected, "{value}");
    for (key, kind) in fields {
        let v = &object[*key];
        let actual = match v {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        assert_eq!(actual, *kind, "{key} in {value}");
    }
}

impl std::ops::Deref for Env {
    type Target = Fixture;

    fn deref(&self) -> &Fixture {
        &self.fx
    }
}

fn names(list: &Value, key: &str) -> Vec<String> {
    list[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------

async fn namespaces_round_trip_with_every_field(env: Env) {
    let created = env.create_namespace("team-one", "proj-a").await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok());
    let keys: HashSet<&str> = created
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let expected: HashSet<&str> = [
        "id",
        "name",
        "description",
        "organization_id",
        "project_id",
        "status",
        "status_message",
        "endpoint",
        "is_public",
        "size",
        "image_count",
        "region",
        "created_at",
        "updated_at",
    ]
    .into();
    assert_eq!(keys, expected);
    assert_eq!(created["endpoint"], "localhost:5000/team-one");
    assert_eq!(created["status"], "ready");
    assert_eq!(created["status_message"], Value::Null);
    assert_eq!(created["is_public"], false);
    assert_eq!(created["size"], 0);
    assert_eq!(created["organization_id"], "proj-a");
    assert_eq!(created["region"], REGION);
    let at = created["created_at"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(at).is_ok() && at.ends_with('Z'),
        "{at}"
    );

    let (status, got) = env.get(&format!("/namespaces/{id}")).await;
    assert_eq!((status, &got), (200, &created));

    let (status, patched) = env
        .send(
            Method::PATCH,
            &format!("/namespaces/{id}"),
            json!({"description": "docs", "is_public": true}),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(
        (
            patched["description"].as_str(),
            patched["is_public"].as_bool()
        ),
        (Some("docs"), Some(true))
    );

    let (status, list) = env.get("/namespaces").await;
    assert_eq!(status, 200);
    assert_eq!(list["total_count"], 1);
    assert_eq!(list["namespaces"][0]["description"], "docs");

    // DELETE answers the resource (status `deleting`), then it is gone.
    let (status, deleted) = env
        .send(Method::DELETE, &format!("/namespaces/{id}"), json!({}))
        .await;
    assert_eq!(
        (status, deleted["status"].as_str()),
        (200, Some("deleting"))
    );
    env.gone(&format!("/namespaces/{id}")).await;
    let (status, body) = env.get(&format!("/namespaces/{id}")).await;
    assert_eq!(
        (status, body["type"].as_str(), body["resource"].as_str()),
        (404, Some("not_found"), Some("namespace"))
    );
    // The same namespace in another region is not found either.
    let other = format!("{}/registry/v1/regions/nl-ams/namespaces", env.server.base);
    let (_, list) = env.call(Method::GET, &other, Some(ADMIN), None).await;
    assert_eq!(list["total_count"], 0);
}

async fn every_order_by_sorts_three_rows(env: Env) {
    // Created in this order; names and descriptions sort differently.
    let mut ids = Vec::new();
    for (name, description) in [("bravo", "3"), ("alpha", "1"), ("charlie", "2")] {
        let ns = env.create_namespace(name, "p").await;
        let id = ns["id"].as_str().unwrap().to_owned();
        env.send(
            Method::PATCH,
            &format!("/namespaces/{id}"),
            json!({"description": description}),
        )
        .await;
        ids.push(id);
    }
    let cases = [
        ("created_at_asc", ["bravo", "alpha", "charlie"]),
        ("created_at_desc", ["charlie", "alpha", "bravo"]),
        ("name_asc", ["alpha", "bravo", "charlie"]),
        ("name_desc", ["charlie", "bravo", "alpha"]),
        ("description_asc", ["alpha", "charlie", "bravo"]),
        ("description_desc", ["bravo", "charlie", "alpha"]),
    ];
    for (order, expected) in cases {
        let (status, list) = env.get(&format!("/namespaces?order_by={order}")).await;
        assert_eq!(status, 200, "{order}: {list}");
        assert_eq!(names(&list, "namespaces"), expected, "{order}");
    }
    for order in ["status_asc", "status_desc", "region"] {
        let (status, list) = env.get(&format!("/namespaces?order_by={order}")).await;
        assert_eq!(
            (status, list["total_count"].as_i64()),
            (200, Some(3)),
            "{order}"
        );
    }

    for name in ["web", "api", "db"] {
        env.image(&ids[0], name).await;
    }
    let image_cases = [
        ("created_at_asc", ["web", "api", "db"]),
        ("created_at_desc", ["db", "api", "web"]),
        ("name_asc", ["api", "db", "web"]),
        ("name_desc", ["web", "db", "api"]),
    ];
    for (order, expected) in image_cases {
        let (_, list) = env.get(&format!("/images?order_by={order}")).await;
        assert_eq!(names(&list, "images"), expected, "images {order}");
    }

    let img = env.image(&ids[1], "app").await;
    env.manifest(&img, 1, &[(100, 1)]).await;
    for tag in ["v2", "v1", "v3"] {
        env.tag(&img, tag, 1).await;
    }
    let tag_cases = [
        ("created_at_asc", ["v2", "v1", "v3"]),
        ("created_at_desc", ["v3", "v1", "v2"]),
        ("name_asc", ["v1", "v2", "v3"]),
        ("name_desc", ["v3", "v2", "v1"]),
    ];
    for (order, expected) in tag_cases {
        let (_, list) = env
            .get(&format!("/images/{img}/tags?order_by={order}"))
            .await;
        assert_eq!(names(&list, "tags"), expected, "tags {order}");
    }
    let (status, body) = env.get("/namespaces?order_by=size_desc").await;
    assert_eq!(
        (status, body["details"][0]["argument_name"].as_str()),
        (400, Some("order_by"))
    );
}

async fn pages_are_bounded_and_past_the_end_is_empty(env: Env) {
    for name in ["n-one", "n-two", "n-three"] {
        env.create_namespace(name, "p").await;
    }
    for query in [
        "page_size=0",
        "page_size=101",
        "page=0",
        "page=-1",
        "page_size=abc",
    ] {
        let (status, body) = env.get(&format!("/namespaces?{query}")).await;
        assert_eq!(status, 400, "{query}");
        assert_eq!(body["type"], "invalid_arguments");
        let arg = query.split('=').next().unwrap();
        assert_eq!(body["details"][0]["argument_name"], arg, "{query}");
    }
    let (_, first) = env.get("/namespaces?page_size=2&page=1").await;
    let (_, second) = env.get("/namespaces?page_size=2&page=2").await;
    let (status, past) = env.get("/namespaces?page_size=2&page=3").await;
    assert_eq!(names(&first, "namespaces"), ["n-one", "n-two"]);
    assert_eq!(names(&second, "namespaces"), ["n-three"]);
    assert_eq!(
        (status, past["namespaces"].as_array().unwrap().len()),
        (200, 0)
    );
    assert_eq!(past["total_count"], 3);
    let (status, _) = env.get("/namespaces?page_size=100").await;
    assert_eq!(status, 200);
}

async fn filters_select_exact_names_projects_and_namespaces(env: Env) {
    let a = env.create_namespace("team-a", "proj-a").await;
    let b = env.create_namespace("team-b", "proj-b").await;
    let (a, b) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    env.image(a, "app").await;
    env.image(a, "app-two").await;
    env.image(b, "app").await;

    let (_, list) = env.get("/namespaces?name=team-a").await;
    assert_eq!(names(&list, "namespaces"), ["team-a"]);
    let (_, list) = env.get("/namespaces?name=team").await;
    assert_eq!(list["total_count"], 0, "names match exactly");
    let (_, list) = env.get("/namespaces?project_id=proj-b").await;
    assert_eq!(names(&list, "namespaces"), ["team-b"]);
    let (_, list) = env.get("/namespaces?organization_id=proj-a").await;
    assert_eq!(names(&list, "namespaces"), ["team-a"]);

    let (_, list) = env.get("/images?name=app").await;
    assert_eq!(list["total_count"], 2);
    let (_, list) = env
        .get(&format!("/images?namespace_id={a}&order_by=name_asc"))
        .await;
    assert_eq!(names(&list, "images"), ["app", "app-two"]);
    let (_, list) = env.get("/images?project_id=proj-b").await;
    assert_eq!(list["images"][0]["namespace_id"], b);
}

async fn bad_input_gets_scaleway_errors_and_changes_nothing(env: Env) {
    let ns = env.create_namespace("taken", "p").await;
    let id = ns["id"].as_str().unwrap();
    let (status, body) = env
        .send(
            Method::POST,
            "/namespaces",
            json!({"name": "taken", "project_id": "p"}),
        )
        .await;
    assert_eq!(
        (status, body["type"].as_str(), body["resource"].as_str()),
        (409, Some("conflict"), Some("namespace"))
    );
    let (status, body) = env
        .send(
            Method::POST,
            "/namespaces",
            json!({"name": "Bad_Name", "project_id": "p"}),
        )
        .await;
    assert_eq!(
        (status, body["details"][0]["argument_name"].as_str()),
        (400, Some("name"))
    );
    let (status, body) = env
        .send(
            Method::POST,
            "/namespaces",
            json!({"name": "fine-name", "project_id": "p", "colour": "red"}),
        )
        .await;
    assert_eq!(
        (status, body["details"][0]["argument_name"].as_str()),
        (400, Some("colour"))
    );
    let (status, body) = env
        .send(Method::POST, "/namespaces", json!({"name": "no-project"}))
        .await;
    assert_eq!(
        (status, body["details"][0]["argument_name"].as_str()),
        (400, Some("project_id"))
    );

    let img = env.image(id, "app").await;
    let (status, body) = env
        .send(
            Method::PATCH,
            &format!("/images/{img}"),
            json!({"visibility": "secret"}),
        )
        .await;
    assert_eq!(
        (status, body["details"][0]["argument_name"].as_str()),
        (400, Some("visibility"))
    );
    let (_, image) = env.get(&format!("/images/{img}")).await;
    assert_eq!(
        image["visibility"], "inherit",
        "a refused change changes nothing"
    );

    for path in [
        format!("/namespaces/{}", uuid::Uuid::new_v4()),
        format!("/images/{}", uuid::Uuid::new_v4()),
        format!("/tags/{}", uuid::Uuid::new_v4()),
    ] {
        let (status, body) = env.get(&path).await;
        assert_eq!(
            (status, body["type"].as_str()),
            (404, Some("not_found")),
            "{path}"
        );
        assert!(
            body["resource"].is_string() && body["resource_id"].is_string(),
            "{body}"
        );
    }
    let wrong_region = format!("{}/registry/v1/regions/xx-yyy/namespaces", env.server.base);
    let (status, body) = env
        .call(Method::GET, &wrong_region, Some(ADMIN), None)
        .await;
    assert_eq!((status, body["resource"].as_str()), (404, Some("region")));

    // Protocol errors are JSON too, in this surface's shape.
    let (status, body) = env.get("/namespaces?page=1&page=2").await;
    assert_eq!(
        (status, body["type"].as_str()),
        (400, Some("invalid_arguments"))
    );
    assert_eq!(body["details"][0]["argument_name"], "page", "{body}");
    let (status, body) = env
        .call(
            Method::GET,
            &format!("{}/registry/v1/nowhere", env.server.base),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!((status, body["type"].as_str()), (404, Some("not_found")));
    let (status, body) = env
        .call(Method::PUT, &env.url("/namespaces"), Some(ADMIN), None)
        .await;
    assert_eq!(
        (status, body["type"].as_str()),
        (405, Some("method_not_allowed"))
    );
    let resp = env
        .client
        .post(env.url("/namespaces"))
        .header("X-Auth-Token", ADMIN)
        .body("name=x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 415);
    assert!(resp.json::<Value>().await.unwrap()["message"].is_string());
    // A body one byte over the limit is refused once that byte arrives (the whole body is
    // sent, so the answer cannot race the upload).
    let (status, body) = oversized_post(&env.url("/namespaces")).await;
    assert_eq!(
        (status, body["type"].as_str()),
        (413, Some("request_too_large"))
    );
    // GET and DELETE with the `{}` body official clients send are accepted.
    let (status, _) = env
        .call(
            Method::GET,
            &env.url("/namespaces"),
            Some(ADMIN),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200);
    let (_, list) = env.get("/namespaces").await;
    assert_eq!(list["total_count"], 1);
}

async fn images_and_tags_show_sizes_that_follow_pushes_moves_and_deletes(env: Env) {
    let ns = env.create_namespace("sizes", "p").await;
    let ns_id = ns["id"].as_str().unwrap();
    let a = env.image(ns_id, "a").await;
    let b = env.image(ns_id, "b").await;
    env.manifest(&a, 1, &[(100, 1000), (101, 200)]).await;
    env.manifest(&a, 2, &[(100, 1000), (102, 30)]).await;
    env.manifest(&b, 3, &[(100, 1000)]).await;
    env.tag(&a, "v1", 1).await;
    env.tag(&a, "latest", 1).await;
    env.tag(&b, "v1", 3).await;

    let (_, image) = env.get(&format!("/images/{a}")).await;
    assert_eq!(image["size"], 1000 + 200 + 30 + 20);
    assert_eq!(image["tags"], json!(["latest", "v1"]));
    assert_fields(
        &image,
        &[
            ("id", "string"),
            ("name", "string"),
            ("namespace_id", "string"),
            ("status", "string"),
            ("status_message", "null"),
            ("visibility", "string"),
            ("size", "number"),
            ("created_at", "string"),
            ("updated_at", "string"),
            ("tags", "array"),
        ],
    );
    assert_eq!(
        (image["status"].as_str(), image["visibility"].as_str()),
        (Some("ready"), Some("inherit"))
    );
    let (_, tags) = env
        .get(&format!("/images/{a}/tags?order_by=name_asc"))
        .await;
    assert_fields(&tags, &[("tags", "array"), ("total_count", "number")]);
    assert_fields(
        &tags["tags"][0],
        &[
            ("id", "string"),
            ("name", "string"),
            ("image_id", "string"),
            ("status", "string"),
            ("digest", "string"),
            ("created_at", "string"),
            ("updated_at", "string"),
        ],
    );
    let (_, images) = env.get("/images").await;
    assert_fields(&images, &[("images", "array"), ("total_count", "number")]);
    let (_, ns) = env.get(&format!("/namespaces/{ns_id}")).await;
    assert_eq!(
        (ns["size"].as_i64(), ns["image_count"].as_i64()),
        (Some(1250 + 1010), Some(2))
    );

    // Move `latest` to manifest 2: sizes unchanged (both manifests are still stored).
    env.tag(&a, "latest", 2).await;
    let (_, tags) = env.get(&format!("/images/{a}/tags?name=latest")).await;
    assert_eq!(tags["tags"][0]["digest"], digest(2));
    let (_, image) = env.get(&format!("/images/{a}")).await;
    assert_eq!(image["size"], 1250);

    // Delete tag v1 through the API: manifest 1 goes, its unique blobs with it.
    let (_, tags) = env.get(&format!("/images/{a}/tags?name=v1")).await;
    let tag_id = tags["tags"][0]["id"].as_str().unwrap().to_owned();
    let (status, deleted) = env
        .send(Method::DELETE, &format!("/tags/{tag_id}"), json!({}))
        .await;
    assert_eq!((status, deleted["name"].as_str()), (200, Some("v1")));
    let (_, image) = env.get(&format!("/images/{a}")).await;
    assert_eq!(image["size"], 1000 + 30 + 10);
    let (status, _) = env.get(&format!("/tags/{tag_id}")).await;
    assert_eq!(status, 404);

    // Delete image b: the namespace shrinks by its size and count.
    let (status, gone) = env
        .send(Method::DELETE, &format!("/images/{b}"), json!({}))
        .await;
    assert_eq!((status, gone["status"].as_str()), (200, Some("deleting")));
    env.gone(&format!("/images/{b}")).await;
    let (_, ns) = env.get(&format!("/namespaces/{ns_id}")).await;
    assert_eq!(
        (ns["size"].as_i64(), ns["image_count"].as_i64()),
        (Some(1040), Some(1))
    );
    let (status, _) = env.get(&format!("/images/{b}")).await;
    assert_eq!(status, 404);
}

async fn tag_delete_needs_force_when_the_digest_is_shared(env: Env) {
    let ns = env.create_namespace("force", "p").await;
    let img = env.image(ns["id"].as_str().unwrap(), "app").await;
    env.manifest(&img, 1, &[(100, 5)]).await;
    env.tag(&img, "v1", 1).await;
    env.tag(&img, "latest", 1).await;
    let (_, tags) = env.get(&format!("/images/{img}/tags?name=v1")).await;
    let id = tags["tags"][0]["id"].as_str().unwrap().to_owned();
    let (status, body) = env
        .send(Method::DELETE, &format!("/tags/{id}"), json!({}))
        .await;
    assert_eq!((status, body["type"].as_str()), (409, Some("conflict")));
    let (status, _) = env
        .send(
            Method::DELETE,
            &format!("/tags/{id}?force=False"),
            json!({}),
        )
        .await;
    assert_eq!(status, 409);
    let (status, _) = env
        .send(Method::DELETE, &format!("/tags/{id}?force=True"), json!({}))
        .await;
    assert_eq!(status, 200);
    let (_, tags) = env.get(&format!("/images/{img}/tags")).await;
    assert_eq!(tags["total_count"], 0);
}

async fn every_route_checks_its_token(env: Env) {
    let ns = env.create_namespace("mine", "proj-a").await;
    let ns_id = ns["id"].as_str().unwrap().to_owned();
    let img = env.image(&ns_id, "app").await;
    env.manifest(&img, 1, &[(100, 5)]).await;
    env.tag(&img, "v1", 1).await;
    let (_, tags) = env.get(&format!("/images/{img}/tags")).await;
    let tag_id = tags["tags"][0]["id"].as_str().unwrap().to_owned();
    let db_url = env.db_url.clone();
    let viewer = env.token(&db_url, "images-view", None);
    let jobs_only = env.token(&db_url, "jobs-view", None);
    let other_project = env.token(&db_url, "images-view,images-manage", Some("proj-b"));
    let own_project = env.token(&db_url, "images-view,images-manage", Some("proj-a"));

    // (method, path, body, needs manage)
    let routes: Vec<(Method, String, Option<Value>, bool)> = vec![
        (Method::GET, "/namespaces".into(), None, false),
        (Method::GET, format!("/namespaces/{ns_id}"), None, false),
        (
            Method::PATCH,
            format!("/namespaces/{ns_id}"),
            Some(json!({"description": "x"})),
            true,
        ),
        (Method::GET, "/images".into(), None, false),
        (Method::GET, format!("/images/{img}"), None, false),
        (
            Method::PATCH,
            format!("/images/{img}"),
            Some(json!({"visibility": "public"})),
            true,
        ),
        (Method::GET, format!("/images/{img}/tags"), None, false),
        (Method::GET, format!("/tags/{tag_id}"), None, false),
        (
            Method::POST,
            "/namespaces".into(),
            Some(json!({"name": "created-by-matrix", "project_id": "proj-a"})),
            true,
        ),
    ];
    for (method, path, body, manage) in &routes {
        let url = env.url(path);
        let call = |token: Option<String>| {
            let (method, url, body) = (method.clone(), url.clone(), body.clone());
            let env = &env;
            async move { env.call(method, &url, token.as_deref(), body).await }
        };
        let (status, body_) = call(None).await;
        assert_eq!(
            (status, body_["type"].as_str()),
            (401, Some("unauthorized")),
            "{method} {path} without token"
        );
        let (status, _) = call(Some("not-a-uuid".into())).await;
        assert_eq!(status, 401, "{method} {path} malformed token");
        let (status, _) = call(Some(uuid::Uuid::new_v4().to_string())).await;
        assert_eq!(status, 401, "{method} {path} unknown token");
        let (status, body_) = call(Some(jobs_only.clone())).await;
        assert_eq!(
            (status, body_["type"].as_str()),
            (403, Some("permissions_denied")),
            "{method} {path} lacking capability"
        );
        if *manage {
            let (status, _) = call(Some(viewer.clone())).await;
            assert_eq!(status, 403, "{method} {path} viewer cannot write");
        }
        let (status, body_) = call(Some(other_project.clone())).await;
        match (method.as_str(), path.as_str()) {
            ("GET", "/namespaces") | ("GET", "/images") => {
                assert_eq!(
                    (status, body_["total_count"].as_i64()),
                    (200, Some(0)),
                    "{path} hides other projects"
                );
            }
            ("POST", _) => assert_eq!(status, 403, "creating in another project"),
            _ => assert_eq!(
                status, 404,
                "{method} {path} is invisible to another project"
            ),
        }
        let (status, body_) = call(Some(own_project.clone())).await;
        assert_eq!(status, 200, "{method} {path} with the right token: {body_}");
    }
    // Deletes, last: other project → 404, right token → 200.
    for path in [
        format!("/tags/{tag_id}"),
        format!("/images/{img}"),
        format!("/namespaces/{ns_id}"),
    ] {
        let (status, _) = env.call(Method::DELETE, &env.url(&path), None, None).await;
        assert_eq!(status, 401);
        let (status, _) = env
            .call(Method::DELETE, &env.url(&path), Some(&viewer), None)
            .await;
        assert_eq!(status, 403);
        let (status, _) = env
            .call(Method::DELETE, &env.url(&path), Some(&other_project), None)
            .await;
        assert_eq!(status, 404);
        let (status, _) = env
            .call(Method::DELETE, &env.url(&path), Some(&own_project), None)
            .await;
        assert_eq!(status, 200, "DELETE {path}");
    }
    // Authorization: Bearer works like X-Auth-Token; health stays public.
    let resp = env
        .client
        .get(env.url("/namespaces"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let resp = env
        .client
        .get(format!("{}/readyz", env.server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

async fn yandex_routes_check_their_token(env: Env) {
    let ns = env.create_namespace("mine", "proj-a").await;
    let img = env.image(ns["id"].as_str().unwrap(), "app").await;
    env.manifest(&img, 1, &[(100, 5)]).await;
    let list = format!("{}/container-registry/v1/images", env.server.base);
    let (_, page) = env.call(Method::GET, &list, Some(ADMIN), None).await;
    let one = format!("{list}/{}", page["images"][0]["id"].as_str().unwrap());
    let db_url = env.db_url.clone();
    let jobs_only = env.token(&db_url, "jobs-view", None);
    let other_project = env.token(&db_url, "images-view", Some("proj-b"));
    let own_project = env.token(&db_url, "images-view", Some("proj-a"));
    for url in [&list, &one] {
        let (status, body) = env.call(Method::GET, url, None, None).await;
        assert_eq!((status, body["code"].as_i64()), (401, Some(16)), "{url}");
        let (status, _) = env.call(Method::GET, url, Some("not-a-uuid"), None).await;
        assert_eq!(status, 401, "{url}");
        let (status, _) = env
            .call(
                Method::GET,
                url,
                Some(&uuid::Uuid::new_v4().to_string()),
                None,
            )
            .await;
        assert_eq!(status, 401, "{url}");
        let (status, body) = env.call(Method::GET, url, Some(&jobs_only), None).await;
        assert_eq!((status, body["code"].as_i64()), (403, Some(7)), "{url}");
        let (status, _) = env.call(Method::GET, url, Some(&own_project), None).await;
        assert_eq!(status, 200, "{url}");
    }
    let (status, page) = env
        .call(Method::GET, &list, Some(&other_project), None)
        .await;
    assert_eq!(
        (status, page["images"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    let (status, body) = env
        .call(Method::GET, &one, Some(&other_project), None)
        .await;
    assert_eq!((status, body["code"].as_i64()), (404, Some(5)));
}

fn yandex_url(env: &Env, query: &str) -> String {
    format!("{}/container-registry/v1/images?{query}", env.server.base)
}

async fn yandex_listing_walks_every_manifest_once_while_others_are_inserted(env: Env) {
    let ns = env.create_namespace("walk", "p").await;
    let ns_id = ns["id"].as_str().unwrap().to_owned();
    let img = env.image(&ns_id, "app").await;
    for n in 1..=40 {
        env.manifest(&img, n, &[(100 + n, 10)]).await;
    }
    let writer = {
        let registry = env.registry.clone();
        let img = img.clone();
        tokio::spawn(async move {
            for n in 1000..1040 {
                let m = ManifestRecorded {
                    digest: digest(n),
                    media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                    platform: None,
                    config: None,
                    layers: vec![],
                    children: vec![],
                    created: None,
                    subject: None,
                    artifact_type: None,
                };
                registry
                    .image(&img, ImageCommand::RecordManifest(m), &Metadata::default())
                    .await
                    .unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        })
    };
    for order in ["", "&orderBy=digest", "&orderBy=name%20desc,digest"] {
        let mut seen: Vec<String> = Vec::new();
        let mut token = String::new();
        for _ in 0..100 {
            let url = yandex_url(&env, &format!("pageSize=7&pageToken={token}{order}"));
            let (status, page) = env.call(Method::GET, &url, Some(ADMIN), None).await;
            assert_eq!(status, 200, "{page}");
            let images = page["images"].as_array().unwrap();
            assert!(images.len() <= 7);
            seen.extend(
                images
                    .iter()
                    .map(|i| i["digest"].as_str().unwrap().to_owned()),
            );
            match page["nextPageToken"].as_str() {
                Some(t) => token = t.to_owned(),
                None => break,
            }
        }
        let unique: HashSet<&String> = seen.iter().collect();
        assert_eq!(
            unique.len(),
            seen.len(),
            "{order}: a manifest appeared twice"
        );
        for n in 1..=40 {
            assert!(unique.contains(&digest(n)), "{order}: manifest {n} missing");
        }
    }
    writer.await.unwrap();
}

async fn yandex_listing_shapes_filters_and_errors(env: Env) {
    let ns = env.create_namespace("shape", "p").await;
    let ns_id = ns["id"].as_str().unwrap().to_owned();
    let app = env.image(&ns_id, "app").await;
    let web = env.image(&ns_id, "web").await;
    env.manifest(&app, 1, &[(100, 1000), (101, 5)]).await;
    env.manifest(&web, 2, &[(100, 1000)]).await;
    env.tag(&app, "v1", 1).await;

    let (status, page) = env
        .call(
            Method::GET,
            &yandex_url(&env, "repositoryName=shape/app"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let images = page["images"].as_array().unwrap();
    assert_eq!(images.len(), 1);
    let image = &images[0];
    assert_fields(
        image,
        &[
            ("id", "string"),
            ("name", "string"),
            ("digest", "string"),
            ("compressedSize", "string"),
            ("config", "object"),
            ("layers", "array"),
            ("tags", "array"),
            ("createdAt", "string"),
        ],
    );
    assert_fields(
        &image["config"],
        &[
            ("id", "string"),
            ("digest", "string"),
            ("size", "string"),
            ("urls", "array"),
        ],
    );
    assert_eq!(image["name"], "shape/app");
    assert_eq!(image["digest"], digest(1));
    assert_eq!(image["compressedSize"], "1015", "int64 as a string");
    assert_eq!(image["config"]["size"], "10");
    assert_eq!(image["config"]["digest"], digest(10_001));
    assert_eq!(image["layers"][1]["size"], "5");
    assert_eq!(image["layers"][0]["urls"], json!([]));
    assert_eq!(image["tags"], json!(["v1"]));
    assert!(
        page.get("nextPageToken").is_none(),
        "no token on the last page"
    );

    let id = image["id"].as_str().unwrap();
    let (status, one) = env
        .call(
            Method::GET,
            &format!("{}/container-registry/v1/images/{id}", env.server.base),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!((status, &one), (200, image));

    let (_, page) = env
        .call(
            Method::GET,
            &yandex_url(&env, "filter=name%3D%22shape%2Fweb%22"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(page["images"][0]["digest"], digest(2));
    let (_, page) = env
        .call(
            Method::GET,
            &yandex_url(&env, &format!("registryId={ns_id}&orderBy=name%20desc")),
            Some(ADMIN),
            None,
        )
        .await;
    let order: Vec<&str> = page["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["shape/web", "shape/app"]);

    for bad in [
        "pageSize=0",
        "pageSize=1001",
        "orderBy=size",
        "filter=tag%3D1",
        "pageToken=nope",
        "pageSize=1&pageSize=2",
    ] {
        let (status, body) = env
            .call(Method::GET, &yandex_url(&env, bad), Some(ADMIN), None)
            .await;
        assert_eq!(
            (status, body["code"].as_i64()),
            (400, Some(3)),
            "{bad}: {body}"
        );
        assert!(body["details"].is_array());
    }
    let (status, body) = env
        .call(
            Method::GET,
            &format!("{}/container-registry/v1/images/999999", env.server.base),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!((status, body["code"].as_i64()), (404, Some(5)));
    let (status, body) = env
        .call(
            Method::GET,
            &format!("{}/container-registry/v1/nothing", env.server.base),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!((status, body["code"].as_i64()), (404, Some(5)));
}

async fn openapi_describes_every_route_with_schemas(env: Env) {
    let resp = env
        .client
        .get(format!("{}/openapi.json", env.server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        200,
        "public, like the health checks"
    );
    let doc: Value = resp.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let base = "/registry/v1/regions/{region}";
    let routes = [
        ("get", format!("{base}/namespaces"), None),
        (
            "post",
            format!("{base}/namespaces"),
            Some("CreateNamespace"),
        ),
        ("get", format!("{base}/namespaces/{{namespace_id}}"), None),
        (
            "patch",
            format!("{base}/namespaces/{{namespace_id}}"),
            Some("UpdateNamespace"),
        ),
        (
            "delete",
            format!("{base}/namespaces/{{namespace_id}}"),
            None,
        ),
        ("get", format!("{base}/images"), None),
        ("get", format!("{base}/images/{{image_id}}"), None),
        (
            "patch",
            format!("{base}/images/{{image_id}}"),
            Some("UpdateImage"),
        ),
        ("delete", format!("{base}/images/{{image_id}}"), None),
        ("get", format!("{base}/images/{{image_id}}/tags"), None),
        ("get", format!("{base}/tags/{{tag_id}}"), None),
        ("delete", format!("{base}/tags/{{tag_id}}"), None),
        ("get", "/container-registry/v1/images".to_owned(), None),
        ("get", "/container-registry/v1/images/{id}".to_owned(), None),
        ("get", "/healthz".to_owned(), None),
        ("get", "/readyz".to_owned(), None),
        ("get", "/openapi.json".to_owned(), None),
        ("get", "/v1/jobs".to_owned(), None),
        ("post", "/v1/jobs".to_owned(), Some("ProbeRequest")),
        ("get", "/v1/jobs/{id}".to_owned(), None),
        (
            "post",
            "/v1/jobs/{id}/tasks".to_owned(),
            Some("TaskRequest"),
        ),
        ("post", "/v1/images/tasks".to_owned(), Some("TaskRequest")),
        ("delete", "/v1/images/{id}".to_owned(), None),
        ("get", "/v1/jobs/{id}/plan".to_owned(), None),
        (
            "post",
            "/v1/images/{id}/tasks".to_owned(),
            Some("TaskRequest"),
        ),
        ("post", "/v1/images".to_owned(), Some("CreateImage")),
        ("post", "/v1/hooks/registry".to_owned(), None),
        ("get", "/v1/images/{id}/build-log".to_owned(), None),
        (
            "get",
            "/v1/images/{id}/manifests/{digest}/referrers".to_owned(),
            None,
        ),
        ("get", "/v1/prune-policies".to_owned(), None),
        ("post", "/v1/prune-policies".to_owned(), None),
        ("get", "/v1/prune-policies/{id}".to_owned(), None),
        ("put", "/v1/prune-policies/{id}".to_owned(), None),
        ("delete", "/v1/prune-policies/{id}".to_owned(), None),
        (
            "get",
            "/v1/namespaces/{namespace_id}/backend".to_owned(),
            None,
        ),
        (
            "put",
            "/v1/namespaces/{namespace_id}/backend".to_owned(),
            None,
        ),
        (
            "delete",
            "/v1/namespaces/{namespace_id}/backend".to_owned(),
            None,
        ),
        ("post", "/v1/images/{id}/archive".to_owned(), None),
    ];
    let described: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_object().unwrap().len())
        .sum();
    assert_eq!(described, routes.len(), "every route, and nothing else");
    for (method, path, request) in &routes {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is described");
        // Job submissions answer 202 Accepted, creations 201, deletions without a body 204;
        // everything else 200.
        let ok = ["200", "201", "202", "204"]
            .iter()
            .map(|code| &op["responses"][code])
            .find(|r| r.is_object())
            .unwrap_or(&Value::Null);
        assert!(ok.is_object(), "{method} {path} documents its success");
        if op["responses"]["204"].is_object() {
            assert!(ok["content"].is_null(), "{method} {path}: 204 has no body");
            assert!(
                op["responses"]["401"].is_object(),
                "{method} {path} documents 401"
            );
        } else if path.starts_with("/registry")
            || path.starts_with("/container-registry")
            || path.starts_with("/v1/")
        {
            let schema = &ok["content"]["application/json"]["schema"]["$ref"];
            assert!(
                schema.is_string(),
                "{method} {path} names its response schema"
            );
            assert!(
                op["responses"]["401"].is_object(),
                "{method} {path} documents 401"
            );
            assert!(
                op["security"].is_array(),
                "{method} {path} declares its token"
            );
        }
        if let Some(name) = request {
            let schema = &op["requestBody"]["content"]["application/json"]["schema"]["$ref"];
            assert_eq!(
                schema.as_str(),
                Some(format!("#/components/schemas/{name}").as_str())
            );
        }
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for name in [
        "Namespace",
        "Image",
        "Tag",
        "ErrorBody",
        "ImageBody",
        "StatusBody",
    ] {
        assert!(schemas.contains_key(name), "schema {name}");
    }
    let namespace = &schemas["Namespace"]["properties"];
    for field in ["endpoint", "image_count", "status_message", "region"] {
        assert!(namespace[field].is_object(), "Namespace.{field}");
    }
    assert!(doc["components"]["securitySchemes"]["token"].is_object());
}

/// Scaleway's own Python SDK (`pip install scaleway==2.12.0`; `.ci/run` installs it) against
/// the real server. Skipped with a message when the SDK is missing, except in CI.
async fn the_official_scaleway_python_sdk_works_unchanged(env: Env) {
    let present = std::process::Command::new("python3")
        .args(["-c", "import scaleway"])
        .status()
        .is_ok_and(|s| s.success());
    if !present {
        assert!(
            std::env::var("CI").is_err(),
            "the scaleway Python SDK is required in CI (pip install scaleway==2.12.0)"
        );
        eprintln!("SKIPPED: the scaleway Python SDK is not installed");
        return;
    }
    let ns = env
        .create_namespace("sdk-fixture", "11111111-1111-4111-8111-111111111111")
        .await;
    let img = env.image(ns["id"].as_str().unwrap(), "app").await;
    env.manifest(&img, 1, &[(100, 1000)]).await;
    env.tag(&img, "v1", 1).await;
    env.tag(&img, "latest", 1).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/scaleway_sdk.py");
    let out = tokio::process::Command::new("python3")
        .args([script, &env.server.base, ADMIN, &img])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("scaleway sdk: ok"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
