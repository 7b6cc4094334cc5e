//! The chat page `karta serve` offers end users: `GET /{org}/{project}/`
//! (and `GET /` when a folder is served in dev mode), with its script and
//! style at `/_karta/chat.js` and `/_karta/chat.css`.
//!
//! It is static — no build step, compiled into the binary — and talks to
//! the managed-agents routes of the project it is served under with a
//! session token from an embed key (`?key=pk_live_…`, optional
//! `?identity_token=`); what it does is documented at the top of
//! `chat.js`. The page holds no data, so serving it needs no credential;
//! an unknown project is 404 like everywhere else. A strict
//! Content-Security-Policy allows only this host's own script, style and
//! API, and no referrer leaves it (the embed key is in its URL).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ErrorBody};
use crate::projects::Projects;

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("chat.js");
const STYLE: &str = include_str!("chat.css");

/// Only this host's own script, style and API; no framing by other sites
/// is restricted here (an embedding site frames it on purpose).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'";

pub(super) fn routes() -> OpenApiRouter<Arc<Projects>> {
    OpenApiRouter::new()
        .routes(routes!(dev_page))
        .routes(routes!(chat_script))
        .routes(routes!(chat_style))
        .routes(routes!(project_page))
        .routes(routes!(project_page_slash))
}

/// The page's script.
#[utoipa::path(get, path = "/_karta/chat.js", tag = "page",
    responses((status = 200, description = "JavaScript", content_type = "text/javascript")))]
async fn chat_script() -> Response {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

/// The page's style.
#[utoipa::path(get, path = "/_karta/chat.css", tag = "page",
    responses((status = 200, description = "CSS", content_type = "text/css")))]
async fn chat_style() -> Response {
    asset(STYLE, "text/css; charset=utf-8")
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn page() -> Response {
    let mut response = asset(INDEX, "text/html; charset=utf-8");
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// `/`: the page of the folder `karta serve DIR` serves (dev mode only).
#[utoipa::path(get, path = "/", tag = "page",
    responses(
        (status = 200, description = "The chat page (HTML)", content_type = "text/html"),
        (status = 404, description = "Not in dev mode", body = ErrorBody),
    ))]
async fn dev_page(State(projects): State<Arc<Projects>>) -> Result<Response, ApiError> {
    if projects.dev().is_none() {
        return Err(not_found());
    }
    Ok(page())
}

/// `/{org}/{project}/`: the page of a project that exists.
#[utoipa::path(get, path = "/{org}/{project}/", tag = "page",
    params(("org" = String, Path, description = "The org's slug"), ("project" = String, Path, description = "The project's slug")),
    responses(
        (status = 200, description = "The chat page (HTML)", content_type = "text/html"),
        (status = 404, description = "No such project", body = ErrorBody),
    ))]
async fn project_page(
    State(projects): State<Arc<Projects>>,
    Path((org, project)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let auth = projects.auth();
    let org = auth.org_by_slug(&org)?.ok_or_else(not_found)?;
    auth.project_by_slug(&org.id, &project)?
        .ok_or_else(not_found)?;
    Ok(page())
}

/// `/{org}/{project}`: the same page, without the trailing slash.
#[utoipa::path(get, path = "/{org}/{project}", tag = "page",
    params(("org" = String, Path, description = "The org's slug"), ("project" = String, Path, description = "The project's slug")),
    responses(
        (status = 200, description = "The chat page (HTML)", content_type = "text/html"),
        (status = 404, description = "No such project", body = ErrorBody),
    ))]
async fn project_page_slash(
    state: State<Arc<Projects>>,
    path: Path<(String, String)>,
) -> Result<Response, ApiError> {
    project_page(state, path).await
}
