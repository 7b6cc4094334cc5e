//! The operator routes: orgs, projects, API keys, embed keys, session
//! tokens, releases — and the one public route of the embed flow.
//!
//! | route | scope | |
//! | --- | --- | --- |
//! | `POST /v1/embed/session-tokens` | embed key + allowed `Origin` | a session token for the key's project |
//! | `GET, POST /v1/admin/orgs` | operator (GET: an admin key sees its own) | orgs |
//! | `GET, POST /v1/admin/orgs/{org}/projects` | read / admin | projects |
//! | `GET, POST /v1/admin/orgs/{org}/keys`, `DELETE …/keys/{key_id}` | admin | API keys (the secret is shown once) |
//! | `GET, POST …/projects/{project}/embed-keys`, `DELETE …/embed-keys/{key_id}` | admin | embed keys |
//! | `POST …/projects/{project}/identity-secret` | admin | the project's identity secret (`rotate: true` makes a new one) |
//! | `POST …/projects/{project}/tokens` | write | mint a session token |
//! | `GET, POST …/projects/{project}/releases` | read / admin | list; publish (the body is the app as `.tar.gz`) |
//! | `POST …/projects/{project}/activate`, `…/rollback` | admin | move the active pointer |
//! | `GET …/projects/{project}/audit` | read | who published, activated, rolled back |
//! | `POST /v1/admin/token-secret/rotate` | operator | a new signing key for session tokens |
//! | `GET, POST /v1/admin/orgs/{org}/provider-keys`, `DELETE …/provider-keys/{provider}` | admin | the org's own provider keys (BYOK): id, fingerprint, never the key |
//! | `GET /v1/admin/orgs/{org}/usage` | read | totals from the ledger: `?project=&session=&end_user=&from=&to=&group_by=` (answered after the ledger's flush) |
//! | `GET, PUT /v1/admin/orgs/{org}/budgets` | read / admin | caps on cost per day or month, per org, project, end user or key (API key or embed key id) |
//! | `GET, POST /v1/admin/orgs/{org}/webhooks`, `DELETE …/webhooks/{id}`, `POST …/{id}/enable`, `GET …/{id}/deliveries` | admin | webhook endpoints and their deliveries ([`super::webhooks`]) |
//!
//! `…` is `/v1/admin/orgs/{org}`. The org must be the caller's (the
//! operator and dev mode may address any): another org's is 404, like one
//! that does not exist.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::tenant::{Caller, no_such_org, no_such_project, not_found, path_slugs};
use crate::auth::{Org, Project, ProjectRef, Scope};
use crate::projects::Projects;
use crate::release::{PublishRequest, ReleaseError};

/// The largest release archive accepted over HTTP.
pub const MAX_ARCHIVE_BYTES: usize = 64 * 1024 * 1024;

pub(super) fn routes() -> OpenApiRouter<Arc<Projects>> {
    OpenApiRouter::new()
        .routes(routes!(embed_session_token))
        .routes(routes!(create_org, list_orgs))
        .routes(routes!(create_project, list_projects))
        .routes(routes!(create_key, list_keys))
        .routes(routes!(revoke_key))
        .routes(routes!(create_embed_key, list_embed_keys))
        .routes(routes!(revoke_embed_key))
        .routes(routes!(identity_secret))
        .routes(routes!(mint_token))
        .routes(routes!(publish, list_releases))
        .routes(routes!(activate))
        .routes(routes!(rollback))
        .routes(routes!(audit))
        .routes(routes!(rotate_token_secret))
        .routes(routes!(set_provider_key, list_provider_keys))
        .routes(routes!(remove_provider_key))
        .routes(routes!(usage))
        .routes(routes!(set_budget, list_budgets))
}

/// Runs a call that flushes sled (and so blocks) on tokio's blocking pool.
pub(super) async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(call).await.map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the operation failed unexpectedly",
        )
    })
}

impl From<crate::meter::MeterError> for ApiError {
    fn from(error: crate::meter::MeterError) -> Self {
        let status =
            StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!("ledger failure: {error}");
            return Self::new(status, error.code(), "the usage ledger failed; try again");
        }
        Self::new(status, error.code(), error.to_string())
    }
}

impl From<crate::byok::ByokError> for ApiError {
    fn from(error: crate::byok::ByokError) -> Self {
        let status =
            StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!("provider key store failure: {error}");
            return Self::new(status, error.code(), "the provider key store failed");
        }
        Self::new(status, error.code(), error.to_string())
    }
}

impl From<ReleaseError> for ApiError {
    fn from(error: ReleaseError) -> Self {
        let status =
            StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!("release failure: {error}");
        }
        if status == StatusCode::NOT_FOUND {
            return Self::new(status, "not_found", error.to_string());
        }
        Self::new(status, error.code(), error.to_string())
    }
}

#[derive(Deserialize)]
struct KeyPath {
    key_id: String,
}

/// An org route's org, resolved from the path before anything else is read
/// (so a stranger gets 401 or 404, never a complaint about the body).
pub(super) struct OrgAccess {
    pub(super) caller: Caller,
    pub(super) org: Org,
}

/// A project route's org and project, resolved like [`OrgAccess`].
struct ProjectAccess {
    caller: Caller,
    org: Org,
    project: Project,
}

/// The org a route names, if the caller may act in it (else 404).
fn org_for(projects: &Projects, caller: &Caller, slug: &str) -> Result<Org, ApiError> {
    let org = projects
        .auth()
        .org_by_slug(slug)?
        .ok_or_else(|| no_such_org(caller, slug))?;
    if !caller.in_org(&org.id) {
        return Err(not_found());
    }
    // A session token acts in its project, not as its org's administrator.
    if let Caller::Principal(p) = caller
        && p.project.is_some()
    {
        return Err(not_found());
    }
    Ok(org)
}

impl FromRequestParts<Arc<Projects>> for OrgAccess {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        projects: &Arc<Projects>,
    ) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, projects).await?;
        let (org, _) = path_slugs(parts, projects).await;
        let org = org_for(projects, &caller, &org.unwrap_or_default())?;
        Ok(Self { caller, org })
    }
}

impl FromRequestParts<Arc<Projects>> for ProjectAccess {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        projects: &Arc<Projects>,
    ) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, projects).await?;
        let (org, project) = path_slugs(parts, projects).await;
        let org = org_for(projects, &caller, &org.unwrap_or_default())?;
        let slug = project.unwrap_or_default();
        let project = projects
            .auth()
            .project_by_slug(&org.id, &slug)?
            .ok_or_else(|| no_such_project(&caller, &org, &slug))?;
        Ok(Self {
            caller,
            org,
            project,
        })
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct EmbedTokenRequest {
    /// The project's publishable key (`pk_live_…`).
    embed_key: String,
    /// The end user's id signed by the customer's backend
    /// (`base64url(id).hex(HMAC-SHA256(identity secret, id))`).
    identity_token: Option<String>,
}

/// A session token for an embed key's project, from a page of an allowed
/// origin.
#[utoipa::path(post, path = "/v1/embed/session-tokens", tag = "auth", request_body = EmbedTokenRequest,
    responses(
        (status = 201, description = "`{token, expires_in, expires_at}`"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ))]
async fn embed_session_token(
    State(projects): State<Arc<Projects>>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<EmbedTokenRequest>,
) -> Result<Response, ApiError> {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let minted = projects.auth().mint_embed_token(
        &request.embed_key,
        origin,
        request.identity_token.as_deref(),
    )?;
    Ok((StatusCode::CREATED, axum::Json(json!(minted))).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateOrg {
    /// `[a-z0-9]`, inner `-`, at most 63 characters.
    slug: String,
    /// A display name.
    name: Option<String>,
}

/// Creates an org (the operator only).
#[utoipa::path(post, path = "/v1/admin/orgs", tag = "admin", request_body = CreateOrg,
    responses((status = 201, description = "The org"), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_org(
    State(projects): State<Arc<Projects>>,
    caller: Caller,
    ApiJson(request): ApiJson<CreateOrg>,
) -> Result<Response, ApiError> {
    if matches!(caller, Caller::Principal(_)) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only the host's operator creates orgs",
        ));
    }
    let org = projects
        .auth()
        .create_org(&request.slug, request.name.as_deref())?;
    Ok((StatusCode::CREATED, axum::Json(json!(org))).into_response())
}

/// The orgs the caller may see.
#[utoipa::path(get, path = "/v1/admin/orgs", tag = "admin",
    responses((status = 200, description = "`{orgs}`"), (status = 401, body = ErrorBody)))]
async fn list_orgs(
    State(projects): State<Arc<Projects>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(Scope::Read)?;
    let orgs: Vec<Org> = projects
        .auth()
        .orgs()?
        .into_iter()
        .filter(|org| match &caller {
            Caller::Principal(p) => p.project.is_none() && p.org_id == org.id,
            _ => true,
        })
        .collect();
    Ok(axum::Json(json!({ "orgs": orgs })).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateProject {
    /// `[a-z0-9]`, inner `-`, at most 63 characters.
    slug: String,
}

/// Creates a project in an org.
#[utoipa::path(post, path = "/v1/admin/orgs/{org}/projects", tag = "admin", request_body = CreateProject,
    responses((status = 201, description = "The project"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_project(
    State(projects): State<Arc<Projects>>,
    OrgAccess { caller, org }: OrgAccess,
    ApiJson(request): ApiJson<CreateProject>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Admin)?;
    let project = projects.auth().create_project(&org.id, &request.slug)?;
    Ok((StatusCode::CREATED, axum::Json(json!(project))).into_response())
}

/// An org's projects, each with its active version.
#[utoipa::path(get, path = "/v1/admin/orgs/{org}/projects", tag = "admin",
    responses((status = 200, description = "`{projects}`"), (status = 404, body = ErrorBody)))]
async fn list_projects(
    State(projects): State<Arc<Projects>>,
    OrgAccess { caller, org }: OrgAccess,
) -> Result<Response, ApiError> {
    caller.require(Scope::Read)?;
    let mut list = Vec::new();
    for project in projects.auth().projects(Some(&org.id))? {
        let active = projects.releases().active(&project.id)?.map(|r| r.version);
        list.push(json!({ "project": project, "active_version": active }));
    }
    Ok(axum::Json(json!({ "projects": list })).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    /// `read`, `write` or `admin`.
    #[schema(value_type = String)]
    scope: Scope,
    /// What the key is for.
    #[serde(default)]
    name: String,
}

/// Creates an API key; its secret is in this answer only.
#[utoipa::path(post, path = "/v1/admin/orgs/{org}/keys", tag = "admin", request_body = CreateKey,
    responses((status = 201, description = "`{key, info}`"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn create_key(
    State(projects): State<Arc<Projects>>,
    OrgAccess { caller, org }: OrgAccess,
    ApiJson(request): ApiJson<CreateKey>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Admin)?;
    let (info, secret) = projects
        .auth()
        .create_api_key(&org.id, request.scope, &request.name)?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "key": secret.expose_secret(), "info": info })),
    )
        .into_response())
}

/// An org's API keys (prefixes, never secrets).
#[utoipa::path(get, path = "/v1/admin/orgs/{org}/keys", tag = "admin",
    responses((status = 200, description = "`{keys}`"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_keys(
    State(projects): State<Arc<Projects>>,
    OrgAccess { caller, org }: OrgAccess,
) -> Result<Response, ApiError> {
    caller.require(Scope::Admin)?;
    let keys = projects.auth().api_keys(&org.id)?;
    Ok(axum::Json(json!({ "keys": keys })).into_response())
}

/// Revokes an API key at once.
#[utoipa::path(delete, path = "/v1/admin/orgs/{org}/keys/{key_id}", tag = "admin",
    responses((status = 200, description = "The revoked key"), (status = 404, body = ErrorBody)))]
async fn revoke_key(
    State(projects): State<Arc<Projects>>,
    OrgAccess { caller, org }: OrgAccess,
    ApiPath(KeyPath { key_id }): ApiPath<KeyPath>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Admin)?;
    let info = projects.auth().revoke_api_key(&org.id, &key_id)?;
    Ok(axum::Json(json!(info)).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateEmbedKey {
    /// Origins whose pages may use the key (`https://shop.example`).
    allowed_origins: Vec<String>,
}

/// Creates an embed key for a project.
#[utoipa::path(post, path = "/v1/admin/orgs/{org}/projects/{project}/embed-keys", tag = "admin",
    request_body = CreateEmbedKey,
    responses((status = 201, description = "The embed key"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn create_embed_key(
    State(projects): State<Arc<Projects>>,
    ProjectAccess {
        caller,
        org,
        project,
    }: ProjectAccess,
    ApiJson(request): ApiJson<CreateEmbedKey>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Admin)?;
    let key = projects
        .auth()
        .create_embed_key(&org.id, &project.id, request.allowed_origins)?;
    Ok((StatusCode::CREATED, axum::Json(json!(key))).into_response())
}

/// A project's embed keys.
#[utoipa::path(get, path = "/v1/admin/orgs/{org}/projects/{project}/embed-keys", tag = "admin",
    responses((status = 200, description = "`{embed_keys}`"), (status = 404, body = ErrorBody)))]
async fn list_embed_keys(
    State(projects): State<Arc<Projects>>,
    ProjectAccess {
        caller,
        org,
        project,
    }: ProjectAccess,
) -> Result<Response, ApiError> {
    caller.require(Scope::Admin)?;
    let keys = projects.auth().embed_keys(&org.id, Some(&project.id))?;
    Ok(axum::Json(json!({ "embed_keys": keys })).into_response())
}

/// Revokes an embed key.
#[utoipa::path(delete, path = "/v1/admin/orgs/{org}/projects/{project}/embed-keys/{key_id}", tag = "admin",
    responses((status = 200, description = "The revoked key"), (status = 404, body = ErrorBody)))]
async fn revoke_embed_key(
    State(projects): State<Arc<Projects>>,
    ProjectAccess { caller, org, .. }: ProjectAccess,
    ApiPath(KeyPath { key_id }): ApiPath<KeyPath>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Admin)?;
    let key = projects.auth().revoke_embed_key(&org.id, &key_id)?;
    Ok(axum::Json(json!(key)).into_response())
}

#[derive(Deserialize, utoipa::ToSchema, Default)]
#[serde(deny_unknown_fields)]
struct IdentitySecretRequest {
    /// Make a new secret (identity tokens signed with the old one stop
    /// working).
    #[serde(default)]
    rotate: bool,
}

/// The project's identity secret, for the customer's backend to sign end
/// user ids with.
#[utoipa::path(post, path = "/v1/admin/orgs/{org}/projects/{project}/identity-secret", tag = "admin",
    request_body = IdentitySecretRequest,
    responses((status = 200, description = "`{identity_secret}`"), (status = 404, body = ErrorBody)))]
async fn identity_secret(
    State(projects): State<Arc<Projects>>,
    ProjectAccess {
        caller,
        org,
        project,
    }: ProjectAccess,
    ApiJson(request): ApiJson<IdentitySecretRequest>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Admin)?;
    let secret = if request.rotate {
        projects
            .auth()
            .rotate_identity_secret(&org.id, &project.id)?
    } else {
        projects.auth().identity_secret(&org.id, &project.id)?
    };
    Ok(axum::Json(json!({ "identity_secret": secret.expose_secret() })).into_response())
}

#[derive(Deserialize, utoipa::ToSchema, Default)]
#[serde(deny_unknown_fields)]
struct MintToken {
    /// `read` or `write` (default), at most the key's own.
    #[schema(value_type = Option<String>)]
    scope: Option<Scope>,
    /// The end user the token acts for (verified by the minting key).
    sub: Option<String>,
    /// Lifetime in seconds (default 900).
    ttl_secs: Option<u64>,
}

/// Mints a session token for a project (a `write` key's server does this
/// for its browser).
#[utoipa::path(post, path = "/v1/admin/orgs/{org}/projects/{project}/tokens", tag = "admin",
    request_body = MintToken,
    responses((status = 201, description = "`{token, expires_in, expires_at}`"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn mint_token(
    State(projects): State<Arc<Projects>>,
    ProjectAccess {
        caller,
        org,
        project,
    }: ProjectAccess,
    ApiJson(request): ApiJson<MintToken>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Write)?;
    let scope = request.scope.unwrap_or(Scope::Write);
    caller.require(scope)?;
    if let Some(sub) = &request.sub {
        crate::auth::valid_end_user_id(sub)?;
    }
    let minted = projects.auth().mint_session_token(
        &org.id,
        &ProjectRef {
            id: project.id.clone(),
            slug: project.slug.clone(),
        },
        scope,
        request.sub.as_deref(),
        request.ttl_secs.map(std::time::Duration::from_secs),
    )?;
    Ok((StatusCode::CREATED, axum::Json(json!(minted))).into_response())
}

#[derive(Deserialize)]
struct PublishQuery {
    git_commit: Option<String>,
    app_name: Option<String>,
}

/// Publishes a release: the body is the app folder as a `.tar.gz`. It is
/// unpacked (hostile archives refused), loaded, its plugins compiled, and
/// stored as the next version. It is not activated.
#[utoipa::path(post, path = "/v1/admin/orgs/{org}/projects/{project}/releases", tag = "admin",
    params(
        ("git_commit" = Option<String>, Query, description = "The commit the archive was packed from"),
        ("app_name" = Option<String>, Query, description = "The folder's name: the app's name when its karta.toml gives none"),
    ),
    request_body(content = Vec<u8>, content_type = "application/gzip"),
    responses(
        (status = 201, description = "The release"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
    ))]
async fn publish(
    State(projects): State<Arc<Projects>>,
    ProjectAccess {
        caller,
        org: _,
        project,
    }: ProjectAccess,
    ApiQuery(query): ApiQuery<PublishQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    caller.require(Scope::Admin)?;
    let archive = http_body_util::Limited::new(body, MAX_ARCHIVE_BYTES)
        .collect()
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "archive_too_large",
                format!("a release archive may be at most {MAX_ARCHIVE_BYTES} bytes"),
            )
        })?
        .to_bytes();
    let info = projects
        .releases()
        .publish(
            projects.runtime(),
            PublishRequest {
                project_id: &project.id,
                archive: &archive,
                publisher: &caller.actor(),
                git_commit: query.git_commit,
                app_name: query.app_name,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, axum::Json(json!(info))).into_response())
}

/// A project's releases and which is active.
#[utoipa::path(get, path = "/v1/admin/orgs/{org}/projects/{project}/releases", tag = "admin",
    responses((status = 200, description = "`{releases, active_version}`"), (status = 404, body = ErrorBody)))]
async fn list_releases(
    State(projects): State<Arc<Projects>>,
    ProjectAccess {
        caller,
        org: _,
        project,
    }: ProjectAccess,
) -> Result<Response, ApiError> {
    caller.require(Scope::Read)?;
    let releases = projects.releases().list(&project.id)?;
    let active = projects.releases().active(&project.id)?.map(|r| r.version);
    Ok(axum::Json(json!({ "releases": releases, "active_version": active })).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ActivateRequest {
    /// The version to make active.
    version: u32,
}

/// Makes a release the one new sessions start on (sessions already
/// running stay on theirs).
#[utoipa::path(post, path = "/v1/admin/orgs/{org}/projects/{project}/activate", tag = "admin",
    request_body = ActivateRequest,
    responses((status = 200, description = "`{previous, active}`"), (status = 404, body = ErrorBody)))]
async fn activate(
    State(projects): State<Arc<Projects>>,
    ProjectAccess {
        caller,
        org,
        project,
    }: ProjectAccess,
    ApiJson(request): ApiJson<ActivateRequest>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Admin)?;
    // sled's flush blocks: off the async workers.
    let releases = projects.releases().clone();
    let actor = caller.actor();
    let name = format!("{}/{}", org.slug, project.slug);
    let activation = blocking(move || releases.activate(&project.id, request.version, &actor))
        .await?
        .map_err(|e| e.in_project(&name))?;
    Ok(axum::Json(json!(activation)).into_response())
}

#[derive(Deserialize, utoipa::ToSchema, Default)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    /// The version to go back to (default: the one active before).
    to: Option<u32>,
}

/// Goes back to an earlier release.
#[utoipa::path(post, path = "/v1/admin/orgs/{org}/projects/{project}/rollback", tag = "admin",
    request_body = RollbackRequest,
    responses((status = 200, description = "`{previous, active}`"), (status = 404, body = ErrorBody)))]
async fn rollback(
    State(projects): State<Arc<Projects>>,
    ProjectAccess {
        caller,
        org,
        project,
    }: ProjectAccess,
    ApiJson(request): ApiJson<RollbackRequest>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Admin)?;
    let releases = projects.releases().clone();
    let actor = caller.actor();
    let name = format!("{}/{}", org.slug, project.slug);
    let activation = blocking(move || releases.rollback(&project.id, request.to, &actor))
        .await?
        .map_err(|e| e.in_project(&name))?;
    Ok(axum::Json(json!(activation)).into_response())
}

/// Who published, activated and rolled back, in order.
#[utoipa::path(get, path = "/v1/admin/orgs/{org}/projects/{project}/audit", tag = "admin",
    responses((status = 200, description = "`{entries}`"), (status = 404, body = ErrorBody)))]
async fn audit(
    State(projects): State<Arc<Projects>>,
    ProjectAccess {
        caller,
        org: _,
        project,
    }: ProjectAccess,
) -> Result<Response, ApiError> {
    caller.require(Scope::Read)?;
    let entries = projects.releases().audit(&project.id)?;
    Ok(axum::Json(json!({ "entries": entries })).into_response())
}

/// Rotates the key session tokens are signed with (the operator only).
/// Tokens signed with the two keys before still verify until they expire.
#[utoipa::path(post, path = "/v1/admin/token-secret/rotate", tag = "admin",
    responses((status = 200, description = "`{rotated: true}`"), (status = 403, body = ErrorBody)))]
async fn rotate_token_secret(
    State(projects): State<Arc<Projects>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    if matches!(caller, Caller::Principal(_)) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only the host's operator rotates the token secret",
        ));
    }
    let auth = projects.auth().clone();
    blocking(move || auth.rotate_token_secret()).await??;
    Ok(axum::Json(json!({ "rotated": true })).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SetProviderKey {
    /// `anthropic`, `openai` or `openrouter`.
    #[schema(value_type = String)]
    provider: crate::byok::Provider,
    /// The provider's API key. Sealed at once; no route ever returns it.
    #[schema(value_type = String)]
    key: secrecy::SecretString,
}

#[derive(Deserialize)]
struct ProviderPath {
    provider: String,
}

/// Sets the org's own key for a provider (replacing the one before): the
/// gateway sends the org's model calls of that provider's shape with it.
#[utoipa::path(post, path = "/v1/admin/orgs/{org}/provider-keys", tag = "admin",
    request_body = SetProviderKey,
    responses((status = 201, description = "The key's id and fingerprint (never the key)"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn set_provider_key(
    State(projects): State<Arc<Projects>>,
    OrgAccess { caller, org }: OrgAccess,
    ApiJson(request): ApiJson<SetProviderKey>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Admin)?;
    let byok = projects.byok().clone();
    let info = blocking(move || byok.set_key(&org.id, request.provider, request.key)).await??;
    Ok((StatusCode::CREATED, axum::Json(json!(info))).into_response())
}

/// The org's provider keys: ids, fingerprints, which is active.
#[utoipa::path(get, path = "/v1/admin/orgs/{org}/provider-keys", tag = "admin",
    responses((status = 200, description = "`{provider_keys}`"), (status = 404, body = ErrorBody)))]
async fn list_provider_keys(
    State(projects): State<Arc<Projects>>,
    OrgAccess { caller, org }: OrgAccess,
) -> Result<Response, ApiError> {
    caller.require(Scope::Admin)?;
    let keys = projects.byok().keys(&org.id)?;
    Ok(axum::Json(json!({ "provider_keys": keys })).into_response())
}

/// Removes the org's key for a provider (its calls fall back to the
/// platform's upstream, if the operator configured one).
#[utoipa::path(delete, path = "/v1/admin/orgs/{org}/provider-keys/{provider}", tag = "admin",
    responses((status = 200, description = "`{removed}`"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn remove_provider_key(
    State(projects): State<Arc<Projects>>,
    OrgAccess { caller, org }: OrgAccess,
    ApiPath(ProviderPath { provider }): ApiPath<ProviderPath>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Admin)?;
    let provider: crate::byok::Provider = provider.parse()?;
    let byok = projects.byok().clone();
    let removed = blocking(move || byok.remove_key(&org.id, provider)).await??;
    Ok(axum::Json(json!({ "removed": removed })).into_response())
}

#[derive(Deserialize)]
struct UsageQuery {
    project: Option<String>,
    session: Option<String>,
    end_user: Option<String>,
    from: Option<String>,
    to: Option<String>,
    group_by: Option<crate::meter::GroupBy>,
}

/// The org's usage from the ledger: tokens, fuel and cost (integer
/// micro-units), optionally narrowed and grouped.
#[utoipa::path(get, path = "/v1/admin/orgs/{org}/usage", tag = "admin",
    params(
        ("project" = Option<String>, Query, description = "A project's slug"),
        ("session" = Option<String>, Query, description = "A session id (with project)"),
        ("end_user" = Option<String>, Query, description = "An end user (with project)"),
        ("from" = Option<String>, Query, description = "First UTC day, YYYY-MM-DD"),
        ("to" = Option<String>, Query, description = "Last UTC day, YYYY-MM-DD"),
        ("group_by" = Option<String>, Query, description = "none, project, session, end_user, day, month, model, key"),
    ),
    responses((status = 200, description = "`{rows}`"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn usage(
    State(projects): State<Arc<Projects>>,
    OrgAccess { caller, org }: OrgAccess,
    ApiQuery(query): ApiQuery<UsageQuery>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Read)?;
    let project_id = match &query.project {
        Some(slug) => Some(
            projects
                .auth()
                .project_by_slug(&org.id, slug)?
                .ok_or_else(not_found)?
                .id,
        ),
        None => None,
    };
    let day = |text: &Option<String>| -> Result<Option<crate::meter::Day>, ApiError> {
        text.as_deref()
            .map(|t| {
                t.parse()
                    .map_err(|_| ApiError::bad_request(format!("`{t}` is not a day (YYYY-MM-DD)")))
            })
            .transpose()
    };
    let filter = crate::meter::UsageFilter {
        org_id: org.id.clone(),
        project_id,
        session_id: query.session.clone(),
        end_user_id: query.end_user.clone(),
        from_day: day(&query.from)?,
        to_day: day(&query.to)?,
    };
    // Acknowledged before it is reported: what the ledger has queued is
    // committed and on disk first.
    let meter = projects.ledger().meter().clone();
    let group_by = query.group_by.unwrap_or_default();
    let rows = blocking(move || {
        meter.flush()?;
        meter.totals(&filter, group_by)
    })
    .await??;
    Ok(axum::Json(json!({ "org": org.slug, "unit": "micro", "rows": rows })).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SetBudget {
    /// A project's slug (else the whole org).
    project: Option<String>,
    /// An end user of that project.
    end_user: Option<String>,
    /// A credential of the org (an API key's or embed key's id): caps the
    /// sessions created with it (not with `project` or `end_user`).
    key: Option<String>,
    /// `day` or `month` (UTC).
    #[schema(value_type = String)]
    period: crate::meter::Period,
    /// The cap, micro-units per period; `null` removes the budget.
    cap_micros: Option<u64>,
}

/// Sets (or, with `cap_micros: null`, removes) a budget: over it, turns
/// are refused with 402 before they run and tool calls get only the fuel
/// what is left buys.
#[utoipa::path(put, path = "/v1/admin/orgs/{org}/budgets", tag = "admin", request_body = SetBudget,
    responses((status = 200, description = "`{budgets}`"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn set_budget(
    State(projects): State<Arc<Projects>>,
    OrgAccess { caller, org }: OrgAccess,
    ApiJson(request): ApiJson<SetBudget>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Admin)?;
    use crate::meter::BudgetScope;
    let scope = match (&request.project, &request.end_user) {
        (None, None) if request.key.is_some() => {
            let key = request.key.clone().unwrap_or_default();
            let auth = projects.auth();
            let known = auth.api_keys(&org.id)?.iter().any(|k| k.id == key)
                || auth.embed_keys(&org.id, None)?.iter().any(|k| k.id == key);
            if !known {
                return Err(not_found());
            }
            BudgetScope::Key {
                org_id: org.id.clone(),
                credential_id: key,
            }
        }
        _ if request.key.is_some() => {
            return Err(ApiError::bad_request(
                "a key's budget names no project or end user",
            ));
        }
        (None, None) => BudgetScope::Org {
            org_id: org.id.clone(),
        },
        (None, Some(_)) => {
            return Err(ApiError::bad_request(
                "an end user's budget names its project",
            ));
        }
        (Some(slug), end_user) => {
            let project = projects
                .auth()
                .project_by_slug(&org.id, slug)?
                .ok_or_else(not_found)?;
            match end_user {
                None => BudgetScope::Project {
                    org_id: org.id.clone(),
                    project_id: project.id,
                },
                Some(user) => {
                    crate::auth::valid_end_user_id(user)?;
                    BudgetScope::EndUser {
                        org_id: org.id.clone(),
                        project_id: project.id,
                        end_user_id: user.clone(),
                    }
                }
            }
        }
    };
    let meter = projects.ledger().meter().clone();
    let org_id = org.id.clone();
    let budgets = blocking(move || -> Result<_, crate::meter::MeterError> {
        match request.cap_micros {
            Some(cap_micros) => meter.set_budget(&crate::meter::Budget {
                scope,
                period: request.period,
                cap_micros,
            })?,
            None => {
                meter.remove_budget(&scope, request.period)?;
            }
        }
        meter.budgets(&org_id)
    })
    .await??;
    Ok(axum::Json(json!({ "budgets": budgets })).into_response())
}

/// The org's budgets with what each has spent this period.
#[utoipa::path(get, path = "/v1/admin/orgs/{org}/budgets", tag = "admin",
    responses((status = 200, description = "`{budgets}`"), (status = 404, body = ErrorBody)))]
async fn list_budgets(
    State(projects): State<Arc<Projects>>,
    OrgAccess { caller, org }: OrgAccess,
) -> Result<Response, ApiError> {
    caller.require(Scope::Read)?;
    let meter = projects.ledger().meter().clone();
    blocking({
        let meter = meter.clone();
        move || meter.flush()
    })
    .await??;
    let now = crate::billing::now_ms();
    let mut list = Vec::new();
    for budget in meter.budgets(&org.id)? {
        let spent = meter.spent(&budget.scope, budget.period, now)?;
        list.push(json!({ "budget": budget, "spent_micros": spent }));
    }
    Ok(axum::Json(json!({ "budgets": list })).into_response())
}
