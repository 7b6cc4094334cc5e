//! The Anthropic Managed Agents adapter: an event-sourced view of Karta's
//! sessions, for Karta's chat widget and headless agent client (and any
//! client of that shape), served flat (`/v1/managed-agents/…`) and on every
//! project's routes (`/{org}/{project}/v1/managed-agents/…`), with the same
//! tenancy as the native routes ([`super::tenant`]): API keys, session
//! tokens (from the embed flow: a `token_expired` 401 is recovered from by
//! minting a new one), dev mode.
//!
//! | route | |
//! | --- | --- |
//! | `POST …/sessions` | `{metadata?, idempotency_key?}` → 201 `{id, object: "session", status, …}`; a repeated key → 200, the same session |
//! | `GET …/sessions` | `?end_user=` → `{data: [{id, title, created_at, last_activity_at}]}`, newest first |
//! | `GET …/sessions/{id}` | the session object with `events`: the whole log, mapped |
//! | `POST …/sessions/{id}/events` | `user.message`, `user.tool_confirmation`, `user.interrupt` → 202 ([`events`]) |
//! | `GET …/sessions/{id}/events/stream` | SSE of log entries after `?after=` / `Last-Event-ID` ([`stream`]) |
//! | `GET …/sessions/{id}/transcript` | `?end_user=` → render-ready messages ([`transcript`]) |
//! | `POST …/sessions/{id}/files` | `{name, content_base64}` → 201 `{path: "uploads/<name>"}` ([`files`]) |
//!
//! **Idempotent creation.** `idempotency_key` (1–255 printable characters)
//! is scoped to the project and the session's end user: the first create
//! with a key makes a session (201) and stores `key → session id` in the
//! sled tree `managed_idempotency`; every later create with the key answers
//! that session (200), its metadata unchanged. Creates with one key are
//! serialized in the process and the mapping is written with a
//! compare-and-swap, so two racing creates give one session. A session
//! deleted since is made anew under the key.
//!
//! **End users.** A session's end user is the token's verified `sub`, else
//! `metadata.end_user_id` (as on the native routes). The list shows the
//! sessions of `sub`, else of `?end_user=`, else only those without an end
//! user; the transcript answers 404 unless the session's end user is that
//! same one.
//!
//! **Status.** `status` is `running` while a turn runs and does not wait
//! for a person, else `idle`; a turn paused for an approval adds
//! `requires_action: {request_id, tool, input, options}`.

mod events;
mod files;
mod stream;
mod transcript;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiQuery};
use super::in_span;
use super::tenant::{Tenant, TenantSession};
use crate::projects::Projects;
use crate::session::{SessionError, SessionObject, SessionStatus};
use crate::store::SessionRecord;

/// The sled tree of idempotency keys: project id, `0x00`, end user (or
/// nothing), `0x00`, key → session id.
const IDEMPOTENCY_TREE: &str = "managed_idempotency";

pub(super) fn routes() -> OpenApiRouter<Arc<Projects>> {
    OpenApiRouter::new()
        .routes(routes!(create_session, list_sessions))
        .routes(routes!(get_session))
        .routes(routes!(events::post_event))
        .routes(routes!(stream::stream_events))
        .routes(routes!(transcript::transcript))
        .merge(files::routes())
}

/// The managed-agents session object.
fn session_object(object: &SessionObject) -> Value {
    let mut value = json!({
        "id": object.id,
        "object": "session",
        "status": match object.status {
            SessionStatus::Running => "running",
            SessionStatus::Idle | SessionStatus::WaitingInput => "idle",
        },
        "metadata": object.metadata,
        "created_at": object.created_at,
        "updated_at": object.updated_at,
        "end_user_id": object.project.as_ref().and_then(|p| p.end_user_id.clone()),
    });
    if let Some(project) = &object.project {
        value["project"] = json!({ "ref": project.project_ref, "version": project.version });
    }
    if let Some(pending) = &object.pending_input {
        value["requires_action"] = json!({
            "request_id": pending.request_id,
            "tool": pending.tool,
            "input": pending.input,
            "options": pending.options,
        });
    }
    value
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateSession {
    /// Searchable string pairs (at most 50); `end_user_id` names the end
    /// user when the token has no verified one.
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    /// A repeated key answers the session the first create made.
    idempotency_key: Option<String>,
}

/// Creates with one idempotency key wait for each other (striped
/// by the key's hash: a create holds one stripe while it makes a session).
static CREATING: [tokio::sync::Mutex<()>; 16] = [const { tokio::sync::Mutex::const_new(()) }; 16];

fn stripe(key: &[u8]) -> &'static tokio::sync::Mutex<()> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    &CREATING[(hasher.finish() % CREATING.len() as u64) as usize]
}

/// Creates a session; a repeated `idempotency_key` answers the first one.
#[utoipa::path(post, path = "/v1/managed-agents/sessions", tag = "managed-agents", request_body = CreateSession,
    responses(
        (status = 201, description = "`{id, object: \"session\", status: \"idle\", …}`"),
        (status = 200, description = "The session an earlier create with this idempotency_key made"),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
    ))]
async fn create_session(
    State(projects): State<Arc<Projects>>,
    tenant: Tenant,
    ApiJson(mut request): ApiJson<CreateSession>,
) -> Result<Response, ApiError> {
    let end_user = tenant.end_user_for(&mut request.metadata)?;
    let Some(key) = request.idempotency_key else {
        let sessions = projects
            .for_new_session(&tenant.org, &tenant.project)
            .await?;
        let object = sessions
            .create_billed(
                None,
                request.metadata,
                end_user,
                tenant.caller.billing_credential(),
            )
            .await?;
        in_span(&object.id);
        return Ok((StatusCode::CREATED, axum::Json(session_object(&object))).into_response());
    };
    if key.is_empty() || key.len() > 255 || key.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "`idempotency_key` must be 1-255 characters, none of them control characters",
        ));
    }
    let mut index = tenant.project.id.as_bytes().to_vec();
    index.push(0);
    index.extend_from_slice(end_user.as_deref().unwrap_or_default().as_bytes());
    index.push(0);
    index.extend_from_slice(key.as_bytes());
    let store = projects.store();
    let tree = store.tree(IDEMPOTENCY_TREE).map_err(SessionError::from)?;
    let _creating = stripe(&index).lock().await;
    let known = tree
        .get(&index)
        .map_err(|e| SessionError::Store(e.into()))?;
    if let Some(existing) = &known {
        let id = String::from_utf8_lossy(existing).into_owned();
        if let Some(record) = store.session(&id).map_err(SessionError::from)? {
            return existing_session(&projects, &tenant, &record).await;
        }
    }
    let sessions = projects
        .for_new_session(&tenant.org, &tenant.project)
        .await?;
    let object = sessions
        .create_billed(
            None,
            request.metadata,
            end_user,
            tenant.caller.billing_credential(),
        )
        .await?;
    in_span(&object.id);
    let swapped = tree
        .compare_and_swap(&index, known, Some(object.id.as_bytes()))
        .map_err(|e| SessionError::Store(e.into()))?;
    if let Err(lost) = swapped {
        // Another process wrote the key first (not this one: creates with
        // one key are serialized here): its session is the answer, and
        // the one made here is dropped.
        let _ = sessions.delete(&object.id).await;
        let id = lost
            .current
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default();
        let record = store
            .session(&id)
            .map_err(SessionError::from)?
            .ok_or_else(super::tenant::not_found)?;
        return existing_session(&projects, &tenant, &record).await;
    }
    store.flush().await.map_err(SessionError::from)?;
    Ok((StatusCode::CREATED, axum::Json(session_object(&object))).into_response())
}

/// The answer to a repeated create: the session, 200.
async fn existing_session(
    projects: &Projects,
    tenant: &Tenant,
    record: &SessionRecord,
) -> Result<Response, ApiError> {
    if !tenant.owns(projects, record) {
        return Err(super::tenant::not_found());
    }
    in_span(&record.id);
    let sessions = projects.for_record(record).await?;
    let object = sessions.object(&record.id).await?;
    Ok((StatusCode::OK, axum::Json(session_object(&object))).into_response())
}

/// The session object with `events`: its whole log as managed-agents
/// entries (the last one's `seq` is where a stream resumes).
#[utoipa::path(get, path = "/v1/managed-agents/sessions/{id}", tag = "managed-agents",
    responses((status = 200, description = "The session object with `events`"), (status = 404, body = ErrorBody)))]
async fn get_session(
    TenantSession { id, sessions, .. }: TenantSession,
) -> Result<Response, ApiError> {
    let object = sessions.object(&id).await?;
    let events = sessions.events_after(&id, 0)?;
    let mut value = session_object(&object);
    value["events"] = json!(stream::entries(&events));
    Ok(axum::Json(value).into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    end_user: Option<String>,
    limit: Option<String>,
}

/// How many records a listing of sessions without an end user reads at
/// most (it skips those with one).
const LIST_SCAN: usize = 1000;

/// An end user's sessions (the token's `sub`, else `?end_user=`; neither:
/// the sessions without an end user), newest first, at most `limit`
/// (1–100, default 50).
#[utoipa::path(get, path = "/v1/managed-agents/sessions", tag = "managed-agents",
    params(
        ("end_user" = Option<String>, Query, description = "Whose sessions (a verified token's end user wins)"),
        ("limit" = Option<u64>, Query, description = "At most this many, 1-100 (default 50)"),
    ),
    responses((status = 200, description = "`{data: [{id, title, created_at, last_activity_at}]}`"), (status = 400, body = ErrorBody)))]
async fn list_sessions(
    State(projects): State<Arc<Projects>>,
    tenant: Tenant,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    let limit = match query.limit {
        None => 50,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| ApiError::bad_request("`limit` must be a whole number, 1-100"))?,
    };
    let end_user = tenant.end_user.clone().or(query.end_user);
    let scope = tenant.listing_key(end_user.as_deref());
    let store = projects.store();
    let mut records = Vec::new();
    let mut page = 1;
    // Without an end user the project's listing also holds end users'
    // sessions: skip them, reading at most `LIST_SCAN` records.
    while records.len() < limit && (page - 1) * 100 < LIST_SCAN {
        let found = crate::session::list_page(store, Some(&scope), &BTreeMap::new(), page, 100)?;
        let done = found.records.len() < 100;
        records.extend(found.records.into_iter().filter(|record| {
            end_user.is_some()
                || record
                    .scope
                    .as_ref()
                    .is_none_or(|scope| scope.end_user_id.is_none())
        }));
        if done {
            break;
        }
        page += 1;
    }
    records.truncate(limit);
    let mut data = Vec::new();
    for record in records {
        let title = store
            .first_message(&record.id)
            .map_err(SessionError::from)?
            .map(|message| transcript::title(&message.text));
        data.push(json!({
            "id": record.id,
            "title": title,
            "created_at": record.created_at,
            "last_activity_at": record.updated_at,
        }));
    }
    Ok(axum::Json(json!({ "data": data })).into_response())
}
