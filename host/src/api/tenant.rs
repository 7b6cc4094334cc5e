//! Who is asking, and for which project: the [`Caller`] from the
//! `Authorization` header and the [`Tenant`] a session route acts in.
//!
//! Default deny. A request is one of:
//!
//! - **an API key** (`kt_live_…`) of one org, or **a session token** (a JWT
//!   bound to one project, perhaps to one end user as `sub`);
//! - **the operator**: the token in `<data dir>/secrets/operator-token`
//!   (whoever can read the data dir runs the host; the CLI uses it to talk
//!   to a running server);
//! - **dev mode**: no credential, while no API key exists at all, from
//!   loopback only (`super::loopback`'s checks: a page of another site
//!   or a rebound name is refused). `karta serve` says so at start-up and
//!   refuses to listen beyond loopback in dev mode.
//!
//! A project route (`/{org}/{project}/v1/…`) names its project; the org
//! (and, for a session token, the project) must be the caller's, else
//! **404** — the same answer as for a project that does not exist, so a
//! stranger learns nothing. A flat route (`/v1/…`) acts in the session
//! token's project, or in the folder `karta serve DIR` serves (for an API
//! key of its org, the operator, or dev mode).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, header};

use super::error::ApiError;
use super::extract::ApiPath;
use crate::auth::{AuthError, Org, Principal, Project, Scope};
use crate::projects::{ProjectError, Projects};
use crate::session::Sessions;
use crate::store::{SessionRecord, SessionScope};

/// Who sent a request.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No credential, in dev mode.
    Dev,
    /// The host's operator.
    Operator,
    /// An API key or a session token.
    Principal(Principal),
}

impl Caller {
    /// Whether the caller may act in `org` at all.
    pub fn in_org(&self, org_id: &str) -> bool {
        match self {
            Self::Dev | Self::Operator => true,
            Self::Principal(p) => p.org_id == org_id,
        }
    }

    /// Refuses (403) a caller whose scope is below `needed`.
    pub fn require(&self, needed: Scope) -> Result<(), ApiError> {
        match self {
            Self::Dev | Self::Operator => Ok(()),
            Self::Principal(p) => p.require(needed).map_err(ApiError::from),
        }
    }

    /// The credential sessions this caller creates are billed to (per-key
    /// budgets): see [`Principal::billing_credential`]; `None` for dev
    /// mode and the operator.
    pub fn billing_credential(&self) -> Option<String> {
        match self {
            Self::Dev | Self::Operator => None,
            Self::Principal(p) => p.billing_credential().map(str::to_owned),
        }
    }

    /// Who, for audit entries and release metadata.
    pub fn actor(&self) -> String {
        match self {
            Self::Dev => "dev".into(),
            Self::Operator => "operator".into(),
            Self::Principal(p) => p.credential_id.clone(),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        let status =
            StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!("auth failure: {error}");
            return Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                "the credential store failed; try again",
            );
        }
        let mut answer = Self::new(status, error.code(), error.to_string());
        if status == StatusCode::NOT_FOUND {
            // One answer for "not there" and "not yours".
            answer = not_found();
        }
        answer
    }
}

impl From<ProjectError> for ApiError {
    fn from(error: ProjectError) -> Self {
        match error {
            ProjectError::NoActiveRelease => {
                Self::new(StatusCode::CONFLICT, "no_active_release", error.to_string())
            }
            ProjectError::Unavailable { .. } => {
                tracing::error!("{error}");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "release_unavailable",
                    error.to_string(),
                )
            }
            ProjectError::Store(e) => crate::session::SessionError::Store(e).into(),
        }
    }
}

/// The one 404 of every tenant check.
pub fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "not found")
}

/// A 404 for an org the route names that does not exist. The operator (and
/// dev mode) sees every org, so it is told which one and how to make it;
/// anyone else gets the one [`not_found`], the same as for another org's.
pub fn no_such_org(caller: &Caller, slug: &str) -> ApiError {
    match caller {
        Caller::Dev | Caller::Operator => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no org `{slug}` on this host (`karta org create {slug}` makes one)"),
        ),
        Caller::Principal(_) => not_found(),
    }
}

/// A 404 for a project the route names in an org the caller may act in.
/// Naming it tells the caller only about its own org, so every caller but a
/// session token (which sees one project, not its org) is told which.
pub fn no_such_project(caller: &Caller, org: &Org, slug: &str) -> ApiError {
    match caller {
        Caller::Principal(Principal {
            project: Some(_), ..
        }) => not_found(),
        _ => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no project `{}/{slug}` (`karta publish DIR --project {}/{slug}` makes one)",
                org.slug, org.slug
            ),
        ),
    }
}

/// Whether the host has any API key (dev mode when not): as the loopback
/// guard found it for this request, else read.
fn api_keys_made(parts: &Parts, projects: &Projects) -> Result<bool, ApiError> {
    match parts.extensions.get::<super::loopback::ApiKeysMade>() {
        Some(made) => Ok(made.0),
        None => Ok(projects.auth().has_api_keys()?),
    }
}

/// The scope a request needs by its method: reading needs `read`, anything
/// else `write` (admin routes ask for more themselves).
fn scope_for(method: &Method) -> Scope {
    if method == Method::GET || method == Method::HEAD {
        Scope::Read
    } else {
        Scope::Write
    }
}

impl FromRequestParts<Arc<Projects>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        projects: &Arc<Projects>,
    ) -> Result<Self, ApiError> {
        let bearer = match parts.headers.get(header::AUTHORIZATION) {
            None => None,
            Some(value) => {
                let text = value.to_str().ok().and_then(|v| {
                    let (kind, token) = v.trim().split_once(' ')?;
                    kind.eq_ignore_ascii_case("bearer").then(|| token.trim())
                });
                Some(text.ok_or_else(|| {
                    ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "the Authorization header must be `Bearer <credential>`",
                    )
                })?)
            }
        };
        match bearer {
            Some(token) if projects.is_operator_token(token) => Ok(Self::Operator),
            Some(token) => Ok(Self::Principal(projects.auth().authenticate(token)?)),
            // (`super::loopback::guard` already refused a foreign `Host` or
            // `Origin`.)
            None if !api_keys_made(parts, projects)? => Ok(Self::Dev),
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this route needs `Authorization: Bearer <API key or session token>`",
            )),
        }
    }
}

/// The `org` and `project` path parameters, when the route has them.
pub(super) async fn path_slugs(
    parts: &mut Parts,
    projects: &Arc<Projects>,
) -> (Option<String>, Option<String>) {
    let mut org = None;
    let mut project = None;
    if let Ok(params) = RawPathParams::from_request_parts(parts, projects).await {
        for (name, value) in &params {
            match name {
                "org" => org = Some(value.to_owned()),
                "project" => project = Some(value.to_owned()),
                _ => {}
            }
        }
    }
    (org, project)
}

/// The project a session route acts in, and for whom.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// Who asked.
    pub caller: Caller,
    /// The project's org.
    pub org: Org,
    /// The project.
    pub project: Project,
    /// The verified end user (a session token's `sub`).
    pub end_user: Option<String>,
}

impl FromRequestParts<Arc<Projects>> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        projects: &Arc<Projects>,
    ) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, projects).await?;
        caller.require(scope_for(&parts.method))?;
        let (org_slug, project_slug) = path_slugs(parts, projects).await;
        let auth = projects.auth();
        let (org, project) = match (org_slug, project_slug) {
            (Some(org_slug), Some(project_slug)) => {
                let org = auth
                    .org_by_slug(&org_slug)?
                    .ok_or_else(|| no_such_org(&caller, &org_slug))?;
                if !caller.in_org(&org.id) {
                    return Err(not_found());
                }
                let project = auth
                    .project_by_slug(&org.id, &project_slug)?
                    .ok_or_else(|| no_such_project(&caller, &org, &project_slug))?;
                (org, project)
            }
            _ => match &caller {
                // A session token names its project.
                Caller::Principal(Principal {
                    project: Some(bound),
                    org_id,
                    ..
                }) => {
                    let org = auth.org(org_id)?.ok_or_else(not_found)?;
                    let project = auth.project(&bound.id)?.ok_or_else(not_found)?;
                    (org, project)
                }
                // Otherwise the folder this host serves, if it serves one.
                _ => {
                    let dev = projects.dev().ok_or_else(|| {
                        ApiError::new(
                            StatusCode::NOT_FOUND,
                            "not_found",
                            "this host serves published projects: use /{org}/{project}/v1/…",
                        )
                    })?;
                    (dev.org.clone(), dev.project.clone())
                }
            },
        };
        if !caller.in_org(&org.id) {
            return Err(not_found());
        }
        let end_user = match &caller {
            Caller::Principal(p) => {
                if p.project
                    .as_ref()
                    .is_some_and(|bound| bound.id != project.id)
                {
                    return Err(not_found());
                }
                p.sub.clone()
            }
            _ => None,
        };
        Ok(Self {
            caller,
            org,
            project,
            end_user,
        })
    }
}

impl Tenant {
    /// Whether a stored session is this tenant's: its project (sessions
    /// from before projects belong to the served folder's), and its end
    /// user when the caller is bound to one.
    pub fn owns(&self, projects: &Projects, record: &SessionRecord) -> bool {
        match &record.scope {
            Some(scope) => {
                scope.project_id == self.project.id
                    && self
                        .end_user
                        .as_ref()
                        .is_none_or(|user| scope.end_user_id.as_ref() == Some(user))
            }
            None => {
                self.end_user.is_none()
                    && projects
                        .dev()
                        .is_some_and(|dev| dev.project.id == self.project.id)
            }
        }
    }

    /// The sessions of the release session `id` is pinned to, if the
    /// session is this tenant's (else 404, whether or not it exists).
    pub async fn session(&self, projects: &Projects, id: &str) -> Result<Arc<Sessions>, ApiError> {
        let record = projects
            .store()
            .session(id)
            .map_err(crate::session::SessionError::from)?
            .filter(|record| self.owns(projects, record))
            .ok_or_else(not_found)?;
        Ok(projects
            .for_record_of(&self.org, &self.project, &record)
            .await?)
    }

    /// The end user a new session belongs to: the verified `sub`, or the
    /// metadata's `end_user_id` (written back into the metadata, so it can
    /// be listed by); both and different → 403 `identity_mismatch`.
    pub fn end_user_for(
        &self,
        metadata: &mut BTreeMap<String, String>,
    ) -> Result<Option<String>, ApiError> {
        let claimed = metadata.get("end_user_id").cloned();
        let user = match (&self.end_user, claimed) {
            (Some(verified), Some(claimed)) if *verified != claimed => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "identity_mismatch",
                    "metadata.end_user_id differs from the end user the token was minted for",
                ));
            }
            (Some(verified), _) => Some(verified.clone()),
            (None, claimed) => claimed,
        };
        if let Some(user) = &user {
            crate::auth::valid_end_user_id(user)?;
            metadata.insert("end_user_id".into(), user.clone());
        }
        Ok(user)
    }

    /// The listing index key of what this tenant may list: the end user's
    /// sessions (the verified `sub` overrides a query's `end_user`), else
    /// the project's.
    pub fn listing_key(&self, query_end_user: Option<&str>) -> Vec<u8> {
        match self.end_user.as_deref().or(query_end_user) {
            Some(user) => SessionScope::end_user_key(&self.project.id, user),
            None => SessionScope::project_key(&self.project.id),
        }
    }
}

/// A route's `{id}` (its other parameters are read elsewhere).
#[derive(serde::Deserialize)]
struct SessionId {
    id: String,
}

/// The session a route names (`{id}`) once it is known to be the caller's
/// tenant's (anything else is the same 404 as a missing one), with its id
/// in the request's span. The session routes' and the Managed Agents
/// routes' `{id}`.
pub(super) struct TenantSession {
    /// The session's id.
    pub(super) id: String,
    /// The sessions of its project's release.
    pub(super) sessions: Arc<Sessions>,
    /// Who asks, and for which project.
    pub(super) tenant: Tenant,
}

impl FromRequestParts<Arc<Projects>> for TenantSession {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        projects: &Arc<Projects>,
    ) -> Result<Self, ApiError> {
        let tenant = Tenant::from_request_parts(parts, projects).await?;
        let ApiPath(SessionId { id }) = ApiPath::from_request_parts(parts, projects).await?;
        super::in_span(&id);
        let sessions = tenant.session(projects, &id).await?;
        Ok(Self {
            id,
            sessions,
            tenant,
        })
    }
}
