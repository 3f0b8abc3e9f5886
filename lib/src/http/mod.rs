//! The HTTP API: one router over the registry's services, with one module per API surface
//! (`scaleway`, `yandex`) translating only shapes. Start-up takes its listener and a shutdown
//! signal, so tests boot the real service on port 0.

pub mod archives;
pub mod auth;
pub mod backends;
pub mod cycle;
pub mod hooks;
pub mod openapi;
pub mod policies;
pub mod scaleway;
pub mod yandex;

use std::future::Future;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;

use crate::jobs::Dispatcher;
use crate::service::Registry;
use crate::store::Store;

/// The server key page tokens are signed with.
pub const PAGE_TOKEN_KEY: &str = "page-token";

/// Largest request body accepted, in bytes (413 above it).
pub const BODY_LIMIT: usize = 1024 * 1024;

/// What the API serves beside the data: the regions it answers for and the registry
/// endpoint namespaces report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    pub regions: Vec<String>,
    /// `host[:port]` clients pull from; a namespace's endpoint is this + `/` + its name.
    pub registry_endpoint: String,
    /// Largest image archive an upload may send, in bytes (413 above it).
    pub archive_max_bytes: u64,
}

#[derive(Clone, Debug)]
pub struct AppState {
    /// Commands; its store also answers the read models.
    pub registry: Registry<Store>,
    pub api: Arc<ApiConfig>,
    /// Where accepted jobs are queued.
    pub dispatcher: Dispatcher,
    /// The key page tokens are signed with, read from the database once.
    page_key: Arc<tokio::sync::OnceCell<Vec<u8>>>,
}

impl AppState {
    /// A state whose jobs are only recorded (a worker process's sweep queues them); see
    /// [`AppState::with_dispatcher`].
    pub fn new(store: Store, api: ApiConfig) -> Self {
        AppState {
            registry: Registry::new(store),
            api: Arc::new(api),
            dispatcher: Arc::new(crate::jobs::NoDispatch),
            page_key: Arc::default(),
        }
    }

    /// The key page tokens are signed with (the database's `page-token` server key).
    pub async fn page_key(&self) -> Result<&[u8], crate::store::StoreError> {
        self.page_key
            .get_or_try_init(|| self.store().server_key(PAGE_TOKEN_KEY))
            .await
            .map(Vec::as_slice)
    }

    pub fn with_dispatcher(mut self, dispatcher: Dispatcher) -> Self {
        self.dispatcher = dispatcher;
        self
    }

    pub fn store(&self) -> &Store {
        self.registry.store()
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi::openapi_json))
        .merge(scaleway::router())
        .merge(yandex::router())
        .merge(cycle::router())
        .merge(policies::router())
        .merge(hooks::router())
        .merge(backends::router())
        .merge(archives::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(observe))
        .with_state(state)
}

/// Header carrying a request's id: taken from the client when it sends a sane one, made up
/// otherwise, and always returned.
pub const REQUEST_ID: &str = "x-request-id";

/// Wraps every request in a span carrying its id, method and matched route, logs its outcome
/// and records the HTTP metrics (labelled by route template, so ids never become labels).
async fn observe(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let started = std::time::Instant::now();
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if target > MAX_URI {
        let path = crate::domain::validate::clip_to(request.uri().path(), 64).into_owned();
        return refuse(&path, Refusal::UriTooLong);
    }
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| crate::metric::UNMATCHED_ROUTE.to_owned());
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let span = tracing::info_span!("request", request_id = %request_id, %method, %route);
    let mut response = {
        use tracing::Instrument;
        next.run(request).instrument(span.clone()).await
    };
    let status = response.status().as_u16();
    let seconds = started.elapsed().as_secs_f64();
    crate::metric::http_request(&method, &route, status, seconds);
    span.in_scope(|| tracing::info!(status, millis = seconds * 1000.0, "answered"));
    if let Ok(value) = axum::http::HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// Errors raised before a handler runs, each answered in the error shape of the API surface
/// the request's path belongs to.
enum Refusal {
    NoRoute,
    MethodNotAllowed,
    BadQuery(String),
    UriTooLong,
}

/// Longest request target (path and query) accepted, in bytes (414 above it, in the
/// surface's error shape). Longer ones than the HTTP server's own limit (64 KiB) get its
/// bare 414.
pub const MAX_URI: usize = 8 * 1024;

fn refuse(path: &str, refusal: Refusal) -> Response {
    if path.starts_with(cycle::PREFIX) {
        let (status, code, message) = match refusal {
            Refusal::NoRoute => (
                StatusCode::NOT_FOUND,
                "404.route",
                format!("no route for {path}"),
            ),
            Refusal::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "405.method",
                format!("method not allowed on {path}"),
            ),
            Refusal::BadQuery(m) => (StatusCode::BAD_REQUEST, "400.invalid-syntax", m),
            Refusal::UriTooLong => (
                StatusCode::URI_TOO_LONG,
                "414.too-long",
                format!("the request target is longer than {MAX_URI} bytes"),
            ),
        };
        return cycle::ApiError::new(status, code, "Refused", message).into_response();
    }
    let yandex = path.starts_with(yandex::PREFIX);
    match (refusal, yandex) {
        (Refusal::NoRoute, true) => {
            yandex::ApiError::NotFound(format!("no route for {path}")).into_response()
        }
        (Refusal::NoRoute, false) => scaleway::ApiError::Route {
            status: StatusCode::NOT_FOUND,
            kind: "not_found",
            message: format!("no route for {path}"),
        }
        .into_response(),
        (Refusal::MethodNotAllowed, true) => yandex::ApiError::Status {
            status: StatusCode::METHOD_NOT_ALLOWED,
            code: 12,
            message: format!("method not allowed on {path}"),
        }
        .into_response(),
        (Refusal::MethodNotAllowed, false) => scaleway::ApiError::Route {
            status: StatusCode::METHOD_NOT_ALLOWED,
            kind: "method_not_allowed",
            message: format!("method not allowed on {path}"),
        }
        .into_response(),
        (Refusal::BadQuery(message), true) => yandex::ApiError::Invalid(message).into_response(),
        (Refusal::UriTooLong, true) => yandex::ApiError::Status {
            status: StatusCode::URI_TOO_LONG,
            code: 3,
            message: format!("the request target is longer than {MAX_URI} bytes"),
        }
        .into_response(),
        (Refusal::UriTooLong, false) => scaleway::ApiError::Route {
            status: StatusCode::URI_TOO_LONG,
            kind: "invalid_arguments",
            message: format!("the request target is longer than {MAX_URI} bytes"),
        }
        .into_response(),
        (Refusal::BadQuery(message), false) => scaleway::ApiError::Invalid {
            argument: scaleway::quoted_field(&message).unwrap_or_else(|| "query".to_owned()),
            help: message,
        }
        .into_response(),
    }
}

async fn not_found(uri: Uri) -> Response {
    refuse(uri.path(), Refusal::NoRoute)
}

async fn method_not_allowed(uri: Uri) -> Response {
    refuse(uri.path(), Refusal::MethodNotAllowed)
}

/// Query parameters; a query string that does not parse (a repeated parameter, bad
/// encoding) is refused in the surface's error shape, not as axum's plain text.
pub struct Params<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S>
    for Params<T>
{
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Params(value)),
            Err(rejection) => Err(refuse(
                parts.uri.path(),
                Refusal::BadQuery(rejection.body_text()),
            )),
        }
    }
}

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "service",
    summary = "Liveness",
    responses((status = 200, description = "The process answers", content_type = "application/json"))
)]
pub(crate) async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Longest `/readyz` waits for the database before answering 503.
pub const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(800);

/// Readiness: the database answers (within [`READY_TIMEOUT`]) and every migration has been
/// applied.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "service",
    summary = "Readiness",
    responses(
        (status = 200, description = "Ready", content_type = "application/json"),
        (status = 503, description = "Database unavailable or migrations pending", content_type = "application/json")
    )
)]
pub(crate) async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    // A database that does not answer is not ready: say so at once rather than after the
    // pool's own timeout, so a load balancer's probe gets its answer within its timeout.
    let ready = tokio::time::timeout(READY_TIMEOUT, state.store().ready())
        .await
        .unwrap_or_else(|_| {
            Err(crate::store::StoreError::Database(
                sqlx::Error::PoolTimedOut,
            ))
        });
    match ready {
        Ok(true) => (StatusCode::OK, Json(json!({"status": "ready"}))),
        Ok(false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": "migrations pending"})),
        ),
        Err(err) => {
            tracing::warn!(error = %err, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "not_ready", "reason": "database unavailable"})),
            )
        }
    }
}

/// Serves the Prometheus exposition `render` produces at `GET /metrics` on its own listener
/// (kept apart from the API so it can be firewalled separately), until `shutdown` resolves.
/// Each scrape first reads the gauges that describe `store`'s database.
pub async fn serve_metrics(
    listener: TcpListener,
    store: Store,
    render: impl Fn() -> String + Clone + Send + Sync + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let (render, store) = (render.clone(), store.clone());
            async move {
                // The gauges that describe the database are read when scraped.
                crate::metric::refresh(&store).await;
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    render(),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serves the API on `listener` until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
