//! An org's webhook endpoints and their deliveries (admin scope):
//!
//! | route | |
//! | --- | --- |
//! | `POST /v1/admin/orgs/{org}/webhooks` | adds an endpoint: `{url, events}`; answers it with its signing secret, shown only here |
//! | `GET /v1/admin/orgs/{org}/webhooks` | the org's endpoints (never a secret) |
//! | `DELETE …/webhooks/{webhook_id}` | removes one and its deliveries |
//! | `POST …/webhooks/{webhook_id}/enable` | enables one disabled after repeated failures |
//! | `GET …/webhooks/{webhook_id}/deliveries?limit=` | its newest deliveries: attempts, last status and error, next attempt |
//!
//! What is sent, how it is signed and retried: `docs/WEBHOOKS.md` and
//! [`crate::webhooks`]. Another org's endpoint is 404 like one that does
//! not exist.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::admin::{OrgAccess, blocking};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use crate::auth::Scope;
use crate::projects::Projects;
use crate::webhooks::{EventType, WebhookError};

/// The most deliveries one listing answers.
const MAX_DELIVERIES: usize = 1000;

pub(super) fn routes() -> OpenApiRouter<Arc<Projects>> {
    OpenApiRouter::new()
        .routes(routes!(create_webhook, list_webhooks))
        .routes(routes!(delete_webhook))
        .routes(routes!(enable_webhook))
        .routes(routes!(list_deliveries))
}

impl From<WebhookError> for ApiError {
    fn from(error: WebhookError) -> Self {
        match error {
            WebhookError::NotFound => {
                Self::new(StatusCode::NOT_FOUND, "not_found", error.to_string())
            }
            WebhookError::Invalid(_) => Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                error.to_string(),
            ),
            WebhookError::Refused(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "webhook_target_refused",
                error.to_string(),
            ),
            WebhookError::Store(_)
            | WebhookError::Json(_)
            | WebhookError::Open(_)
            | WebhookError::Random => {
                tracing::error!("webhook store failure: {error}");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    "the webhook store failed; try again",
                )
            }
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateWebhook {
    /// `https://…`; `http://` only to an address the operator allowed.
    url: String,
    /// Which events it is sent: `session.started`, `turn.completed`,
    /// `turn.failed`, `budget.exceeded`, `release.activated`.
    events: Vec<EventType>,
}

#[derive(Deserialize)]
struct WebhookPath {
    webhook_id: String,
}

#[derive(Deserialize)]
struct DeliveriesQuery {
    limit: Option<usize>,
}

/// Adds a webhook endpoint; the answer holds its signing secret, which is
/// never shown again.
#[utoipa::path(post, path = "/v1/admin/orgs/{org}/webhooks", tag = "admin",
    request_body = CreateWebhook,
    responses((status = 201, description = "`{webhook, secret}`"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, description = "The URL points where the operator's network policy refuses", body = ErrorBody)))]
async fn create_webhook(
    State(projects): State<Arc<Projects>>,
    OrgAccess { caller, org }: OrgAccess,
    ApiJson(request): ApiJson<CreateWebhook>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Admin)?;
    let webhooks = projects.webhooks().clone();
    let (endpoint, secret) =
        blocking(move || webhooks.create_endpoint(&org.id, &request.url, request.events)).await??;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "webhook": endpoint, "secret": secret.expose_secret() })),
    )
        .into_response())
}

/// The org's webhook endpoints.
#[utoipa::path(get, path = "/v1/admin/orgs/{org}/webhooks", tag = "admin",
    responses((status = 200, description = "`{webhooks}`"), (status = 404, body = ErrorBody)))]
async fn list_webhooks(
    State(projects): State<Arc<Projects>>,
    OrgAccess { caller, org }: OrgAccess,
) -> Result<Response, ApiError> {
    caller.require(Scope::Admin)?;
    let endpoints = projects.webhooks().endpoints(&org.id)?;
    Ok(axum::Json(json!({ "webhooks": endpoints })).into_response())
}

/// Removes a webhook endpoint and its deliveries.
#[utoipa::path(delete, path = "/v1/admin/orgs/{org}/webhooks/{webhook_id}", tag = "admin",
    responses((status = 200, description = "`{deleted: true}`"), (status = 404, body = ErrorBody)))]
async fn delete_webhook(
    State(projects): State<Arc<Projects>>,
    OrgAccess { caller, org }: OrgAccess,
    ApiPath(WebhookPath { webhook_id }): ApiPath<WebhookPath>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Admin)?;
    let webhooks = projects.webhooks().clone();
    blocking(move || webhooks.delete_endpoint(&org.id, &webhook_id)).await??;
    Ok(axum::Json(json!({ "deleted": true })).into_response())
}

/// Enables an endpoint disabled after repeated failed deliveries.
#[utoipa::path(post, path = "/v1/admin/orgs/{org}/webhooks/{webhook_id}/enable", tag = "admin",
    responses((status = 200, description = "The endpoint"), (status = 404, body = ErrorBody)))]
async fn enable_webhook(
    State(projects): State<Arc<Projects>>,
    OrgAccess { caller, org }: OrgAccess,
    ApiPath(WebhookPath { webhook_id }): ApiPath<WebhookPath>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Admin)?;
    let endpoint = projects.webhooks().enable_endpoint(&org.id, &webhook_id)?;
    Ok(axum::Json(json!(endpoint)).into_response())
}

/// An endpoint's newest deliveries (default 100, at most 1000): pending,
/// delivered and failed, with their attempts and last answer.
#[utoipa::path(get, path = "/v1/admin/orgs/{org}/webhooks/{webhook_id}/deliveries", tag = "admin",
    params(("limit" = Option<usize>, Query, description = "How many (default 100, at most 1000)")),
    responses((status = 200, description = "`{deliveries}`"), (status = 404, body = ErrorBody)))]
async fn list_deliveries(
    State(projects): State<Arc<Projects>>,
    OrgAccess { caller, org }: OrgAccess,
    ApiPath(WebhookPath { webhook_id }): ApiPath<WebhookPath>,
    ApiQuery(query): ApiQuery<DeliveriesQuery>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Admin)?;
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_DELIVERIES);
    let deliveries = projects
        .webhooks()
        .deliveries(&org.id, &webhook_id, limit)?;
    Ok(axum::Json(json!({ "deliveries": deliveries })).into_response())
}
