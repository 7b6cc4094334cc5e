//! The HTTP API: Karta's session protocol on axum.
//!
//! [`router`] is a plain function of the shared state, so tests can drive it
//! without a socket and `karta serve` puts it on one. Routes are registered
//! through `utoipa-axum`, which builds the OpenAPI document served at
//! `GET /openapi.json` from the same handler annotations that route — the
//! document cannot drift from the routes. The session routes are served
//! flat (`/v1/…`: a session token's project, or the folder `karta serve
//! DIR` serves) and on every project's routes (`/{org}/{project}/v1/…`);
//! `tenant` decides who may reach which (another org's anything is 404).
//! The operator routes (`/v1/admin/…`) and the embed flow are in `admin`.
//!
//! | route | |
//! | --- | --- |
//! | `GET /healthz`, `GET /readyz` | liveness, readiness (one read of the store) |
//! | `GET /metrics` | Prometheus text |
//! | `GET /openapi.json` | this API, described |
//! | `POST /v1/sessions` | create or resume (`session_id`) |
//! | `GET /v1/sessions` | list; query = metadata filters, `page`, `per_page` |
//! | `GET /v1/sessions/{id}` | the session object |
//! | `DELETE /v1/sessions/{id}` | delete (cancels a running turn) |
//! | `POST /v1/sessions/{id}/messages` | start a turn; `stream: true` answers SSE |
//! | `PUT /v1/sessions/{id}/inputs/{request_id}` | answer an approval; the continuation |
//! | `GET /v1/sessions/{id}/transcript` | messages with senders |
//! | `GET /v1/sessions/{id}/events` | SSE replay (`?after=` / `Last-Event-ID`), then live until the turn ends or pauses |
//! | `POST /v1/sessions/{id}/cancel` | stop the running turn |
//! | `/v1/managed-agents/sessions…` | the Anthropic Managed Agents adapter (`managed/`) |
//! | `POST /v1/chat/completions` | OpenAI Chat Completions: a turn of a fresh session (`openai`) |
//! | `POST /v1/responses` | OpenAI Responses: a turn; `previous_response_id` continues its session |
//! | `GET /{org}/{project}/`, `GET /` (dev mode) | the chat page for end users (`page/`), its assets at `/_karta/` |
//!
//! Errors are `{"error": "<code>", "message": "…"}` with the protocol's
//! status codes; internal details are logged, not sent. Every request runs
//! in a `request` span (method, path, and the session id once known).
//!
//! Dev mode (no API key exists in the data dir) has no credentials, so
//! `loopback::guard` refuses credential-less requests addressed to a
//! non-loopback `Host` (DNS rebinding) or sent by a page of a non-loopback
//! `Origin` (CSRF), and [`ApiJson`] requires `Content-Type:
//! application/json`.

mod admin;
mod error;
mod extract;
mod loopback;
mod managed;
mod openai;
mod page;
mod sessions;
mod sse;
mod tenant;
mod webhooks;

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tower_http::trace::{DefaultOnFailure, DefaultOnResponse, TraceLayer};
use tracing::Level;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::{ApiError, ErrorBody};
pub use extract::ApiJson;
pub use tenant::{Caller, Tenant};

use crate::projects::Projects;

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Karta host",
        description = "Karta's session protocol: sessions, turns streamed as Server-Sent Events, approvals, transcripts. See PROTOCOL.md."
    ),
    tags(
        (name = "sessions", description = "Sessions and their turns"),
        (name = "managed-agents", description = "The Anthropic Managed Agents adapter: sessions as event logs"),
        (name = "openai", description = "OpenAI Chat Completions and Responses over the app's turns"),
        (name = "operations", description = "Health, readiness, metrics"),
        (name = "auth", description = "The embed flow: session tokens for a customer's page"),
        (name = "admin", description = "Orgs, projects, keys, releases (operator routes)"),
        (name = "page", description = "The chat page for end users (HTML) and its assets")
    )
)]
struct ApiDoc;

/// The OpenAPI document, built once (it depends only on the code).
static OPENAPI: OnceLock<String> = OnceLock::new();

/// The router over the projects a host serves.
pub fn router(projects: Arc<Projects>) -> Router {
    let (router, document) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi))
        .merge(sessions::routes())
        .nest("/{org}/{project}", sessions::routes())
        .merge(managed::routes())
        .nest("/{org}/{project}", managed::routes())
        .merge(openai::routes())
        .nest("/{org}/{project}", openai::routes())
        .merge(admin::routes())
        .merge(webhooks::routes())
        .merge(page::routes())
        .split_for_parts();
    OPENAPI.get_or_init(|| document.to_pretty_json().unwrap_or_else(|_| "{}".into()));
    router
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // Dev mode (no API key exists): only loopback callers (see
        // `loopback`). Inside the trace layer, so refusals are logged too.
        .layer(axum::middleware::from_fn_with_state(
            projects.clone(),
            loopback::guard,
        ))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request<_>| {
                    tracing::info_span!(
                        "request",
                        method = %request.method(),
                        path = %request.uri().path(),
                        session = tracing::field::Empty,
                    )
                })
                .on_response(DefaultOnResponse::new().level(Level::INFO))
                .on_failure(DefaultOnFailure::new().level(Level::WARN)),
        )
        .with_state(projects)
}

/// Names the session in the request's span (the `session` field of the
/// span [`router`]'s trace layer opens).
fn in_span(id: &str) {
    tracing::Span::current().record("session", id);
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The host is up")))]
async fn healthz() -> Response {
    axum::Json(json!({ "status": "ok" })).into_response()
}

/// Readiness: the store answers (one read, whatever its size).
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready"),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ))]
async fn readyz(State(projects): State<Arc<Projects>>) -> Response {
    match projects.store().check() {
        Ok(()) => {
            let app = projects.dev().map(|dev| dev.sessions.app().name.clone());
            axum::Json(json!({ "status": "ready", "app": app })).into_response()
        }
        Err(e) => {
            tracing::error!("not ready: {e}");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "the store is unavailable",
            )
            .into_response()
        }
    }
}

/// Metrics in Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
async fn metrics(State(projects): State<Arc<Projects>>) -> Response {
    let metrics = projects.metrics();
    metrics
        .harness_processes
        .set(projects.harness_process_count() as i64);
    let pools = projects.pool_stats();
    metrics
        .pool_size
        .set(pools.iter().map(|p| p.size as i64).sum());
    metrics
        .pool_idle
        .set(pools.iter().map(|p| p.idle as i64).sum());
    metrics.pool_idle_rss_bytes.set(
        pools
            .iter()
            .flat_map(|p| p.idle_rss_bytes.iter())
            .map(|b| *b as i64)
            .sum(),
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}

/// This API as an OpenAPI 3.1 document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI document")))]
async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        OPENAPI.get().cloned().unwrap_or_default(),
    )
        .into_response()
}
