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

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::error::ApiError;
use crate::projects::Projects;

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("chat.js");
const STYLE: &str = include_str!("chat.css");

/// Only this host's own script, style and API; no framing by other sites
/// is restricted here (an embedding site frames it on purpose).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'";

pub(super) fn routes() -> Router<Arc<Projects>> {
    Router::new()
        .route("/", get(dev_page))
        .route(
            "/_karta/chat.js",
            get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/_karta/chat.css",
            get(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
        .route("/{org}/{project}", get(project_page))
        .route("/{org}/{project}/", get(project_page))
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
async fn dev_page(State(projects): State<Arc<Projects>>) -> Result<Response, ApiError> {
    if projects.dev().is_none() {
        return Err(not_found());
    }
    Ok(page())
}

/// `/{org}/{project}/`: the page of a project that exists.
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
