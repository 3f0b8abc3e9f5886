//! `/openapi.json`: the OpenAPI 3.1 description of every route, generated from the handlers'
//! annotations and the response types they return, so it cannot drift from the code.

use std::sync::LazyLock;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{archives, backends, cycle, hooks, policies, scaleway, yandex};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Layerline",
        description = "Event-sourced control plane for container registries: Scaleway \
                       Container Registry v1, a Yandex-style manifest listing and Cycle-style jobs."
    ),
    paths(
        super::healthz,
        super::readyz,
        openapi_json,
        scaleway::list_namespaces,
        scaleway::create_namespace,
        scaleway::get_namespace,
        scaleway::update_namespace,
        scaleway::delete_namespace,
        scaleway::list_images,
        scaleway::get_image,
        scaleway::update_image,
        scaleway::delete_image,
        scaleway::list_tags,
        scaleway::get_tag,
        scaleway::delete_tag,
        yandex::list_images,
        yandex::get_image,
        cycle::list_jobs,
        cycle::create_job,
        cycle::get_job,
        cycle::job_task,
        cycle::job_plan,
        cycle::images_task,
        cycle::delete_image,
        cycle::image_task,
        cycle::create_image,
        cycle::build_log,
        cycle::referrers,
        policies::list_policies,
        policies::create_policy,
        policies::get_policy,
        policies::update_policy,
        policies::delete_policy,
        hooks::registry_hook,
        backends::get_backend,
        backends::set_backend,
        backends::unlink_backend,
        archives::upload_archive,
    ),
    modifiers(&TokenSchemes),
    tags(
        (name = "scaleway", description = "Scaleway Container Registry v1"),
        (name = "yandex", description = "Yandex/Nebius-style manifest listing"),
        (name = "jobs", description = "Cycle-style jobs and image tasks"),
        (name = "policies", description = "Prune policies"),
        (name = "service", description = "Health, readiness and this description")
    )
)]
pub struct ApiDoc;

/// Tokens travel in `X-Auth-Token` (Scaleway's header) or `Authorization: Bearer`.
struct TokenSchemes;

impl Modify for TokenSchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Auth-Token"))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "service",
    summary = "This OpenAPI description",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json"))
)]
pub(crate) async fn openapi_json() -> impl IntoResponse {
    // The document never changes while the process runs: render it once.
    static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
        ApiDoc::openapi()
            .to_json()
            .expect("the OpenAPI document serialises")
    });
    ([(CONTENT_TYPE, "application/json")], DOCUMENT.as_str())
}
