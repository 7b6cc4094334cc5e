//! The session routes: a session's record here (create or resume, list,
//! describe, delete, transcript); its turns in `turns.rs` (a message, an
//! approval's answer, the event stream, cancel).

mod turns;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiQuery};
use super::in_span;
use super::tenant::{Tenant, TenantSession};
use crate::projects::Projects;

pub(super) fn routes() -> OpenApiRouter<Arc<Projects>> {
    OpenApiRouter::new()
        .routes(routes!(create_session, list_sessions))
        .routes(routes!(get_session, delete_session))
        .routes(routes!(transcript))
        .merge(turns::routes())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateSession {
    /// Searchable string pairs (at most 50), e.g. `customer_id`.
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    /// Resume this session if it exists, else create it with this id
    /// (`[A-Za-z0-9_-]{1,64}`).
    session_id: Option<String>,
}

/// Creates a session, or resumes the one `session_id` names.
#[utoipa::path(post, path = "/v1/sessions", tag = "sessions", request_body = CreateSession,
    responses(
        (status = 201, description = "The session object"),
        (status = 400, body = ErrorBody), (status = 413, body = ErrorBody), (status = 503, body = ErrorBody),
    ))]
async fn create_session(
    State(projects): State<Arc<Projects>>,
    tenant: Tenant,
    ApiJson(mut request): ApiJson<CreateSession>,
) -> Result<Response, ApiError> {
    let end_user = tenant.end_user_for(&mut request.metadata)?;
    // A known id resumes — the caller's own session only. Another
    // tenant's id is taken, and saying more would tell whose it is.
    if let Some(id) = &request.session_id {
        let existing = projects
            .store()
            .session(id)
            .map_err(crate::session::SessionError::from)?;
        if let Some(record) = existing {
            if !tenant.owns(&projects, &record) {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "session_id_taken",
                    "this session_id is in use; choose another",
                ));
            }
            let sessions = projects.for_record(&record).await?;
            let object = sessions.object(id).await?;
            in_span(&object.id);
            return Ok((StatusCode::CREATED, axum::Json(object)).into_response());
        }
    }
    let sessions = projects
        .for_new_session(&tenant.org, &tenant.project)
        .await?;
    let object = sessions
        .create_billed(
            request.session_id,
            request.metadata,
            end_user,
            tenant.caller.billing_credential(),
        )
        .await?;
    in_span(&object.id);
    Ok((StatusCode::CREATED, axum::Json(object)).into_response())
}

/// Lists the project's sessions, newest first; every query parameter but
/// `page`, `per_page` (1–100, default 20) and `end_user` (that end user's
/// sessions; a token's verified end user overrides it) filters on
/// metadata.
#[utoipa::path(get, path = "/v1/sessions", tag = "sessions",
    params(
        ("page" = Option<u64>, Query, description = "1-based page"),
        ("per_page" = Option<u64>, Query, description = "Sessions per page, 1-100"),
        ("end_user" = Option<String>, Query, description = "Only this end user's sessions"),
    ),
    responses((status = 200, description = "`{sessions, page, per_page, total}`"), (status = 400, body = ErrorBody)))]
async fn list_sessions(
    State(projects): State<Arc<Projects>>,
    tenant: Tenant,
    ApiQuery(mut query): ApiQuery<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    let number = |value: Option<String>, name: &str, default: usize| match value {
        None => Ok(default),
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| ApiError::bad_request(format!("`{name}` must be a whole number ≥ 1"))),
    };
    let page = number(query.remove("page"), "page", 1)?;
    let per_page = number(query.remove("per_page"), "per_page", 20)?.min(100);
    let end_user = query.remove("end_user");
    let scope = tenant.listing_key(end_user.as_deref());
    let (list, total) = projects.list_sessions(&scope, &query, page, per_page)?;
    Ok(axum::Json(json!({
        "sessions": list, "page": page, "per_page": per_page, "total": total,
    }))
    .into_response())
}

/// The session object.
#[utoipa::path(get, path = "/v1/sessions/{id}", tag = "sessions",
    responses((status = 200, description = "The session object"), (status = 404, body = ErrorBody)))]
async fn get_session(
    TenantSession { id, sessions, .. }: TenantSession,
) -> Result<Response, ApiError> {
    Ok(axum::Json(sessions.object(&id).await?).into_response())
}

/// Deletes a session (cancelling its turn).
#[utoipa::path(delete, path = "/v1/sessions/{id}", tag = "sessions",
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorBody)))]
async fn delete_session(
    TenantSession { id, sessions, .. }: TenantSession,
) -> Result<Response, ApiError> {
    sessions.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The transcript: every message with its sender.
#[utoipa::path(get, path = "/v1/sessions/{id}/transcript", tag = "sessions",
    responses((status = 200, description = "`{session_id, messages}`"), (status = 404, body = ErrorBody)))]
async fn transcript(
    TenantSession { id, sessions, .. }: TenantSession,
) -> Result<Response, ApiError> {
    let messages = sessions.transcript(&id)?;
    Ok(axum::Json(json!({ "session_id": id, "messages": messages })).into_response())
}
