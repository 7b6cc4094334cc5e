//! The records and answers of the auth module: scopes, orgs, projects, key
//! descriptions, minted tokens and the [`Principal`] a credential resolves
//! to. The serde shapes of `Org`, `Project`, `ApiKeyInfo` and
//! `EmbedKeyInfo` are also what the HTTP API shows.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::AuthError;

/// What a credential may do. Ordered: `Read < Write < Admin`, so a check is
/// `principal.scope >= needed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Read sessions, transcripts and listings.
    Read,
    /// Also create sessions, send messages, mint session tokens.
    Write,
    /// Also manage keys, projects and releases.
    Admin,
}

impl Scope {
    /// The scope's wire name: `read`, `write` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = AuthError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Scope::Read),
            "write" => Ok(Scope::Write),
            "admin" => Ok(Scope::Admin),
            _ => Err(AuthError::BadInput {
                field: "scope",
                message: format!("unknown scope {s:?}: expected read, write or admin"),
            }),
        }
    }
}

/// An organisation: the owner of projects and API keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Org {
    /// `org_` and a random uuid.
    pub id: String,
    /// A lowercase slug, unique among orgs (the `{org}` of project routes).
    pub slug: String,
    /// A display name (the slug unless one was given).
    pub name: String,
    /// RFC 3339.
    pub created_at: String,
}

/// A project: one published app of an org.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    /// `prj_` and a random uuid.
    pub id: String,
    /// The org it belongs to.
    pub org_id: String,
    /// A lowercase slug, unique within the org (the `{project}` of routes).
    pub slug: String,
    /// RFC 3339.
    pub created_at: String,
}

/// An API key as it may be shown: everything but the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyInfo {
    /// `key_` and a random uuid.
    pub id: String,
    /// The org the key acts for (all of its projects).
    pub org_id: String,
    /// The key's first 12 characters, e.g. `kt_live_AbCd`, so a person can
    /// tell keys apart; too short to guess the rest from.
    pub prefix: String,
    /// What the key may do.
    pub scope: Scope,
    /// A label chosen by whoever made the key.
    pub name: String,
    /// RFC 3339.
    pub created_at: String,
    /// When the key last authenticated a request (updated at most once a
    /// minute).
    pub last_used_at: Option<String>,
    /// When the key was revoked; a revoked key authenticates nothing.
    pub revoked_at: Option<String>,
}

/// An embed key: a publishable key bound to one project and a list of
/// origins, for a chat page on a customer's site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbedKeyInfo {
    /// `emb_` and a random uuid.
    pub id: String,
    /// The org of the project.
    pub org_id: String,
    /// The project whose session tokens it mints.
    pub project_id: String,
    /// `pk_live_` and 32 random base62 characters. Publishable (it sits in
    /// a web page), so it is stored and shown as is: what protects it is
    /// the origin list and the short life of what it mints.
    pub key: String,
    /// Normalised origins (`scheme://host[:port]`, lowercase, no default
    /// port) whose pages may use the key.
    pub allowed_origins: Vec<String>,
    /// RFC 3339.
    pub created_at: String,
    /// When the key was revoked.
    pub revoked_at: Option<String>,
}

/// A session token as it is handed out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MintedToken {
    /// The JWT (a bearer credential: not printed by `Debug`).
    pub token: String,
    /// Seconds from now until it expires.
    pub expires_in: u64,
    /// When it expires, RFC 3339.
    pub expires_at: String,
}

impl fmt::Debug for MintedToken {
    // A token is a credential for its whole life; keep it out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MintedToken")
            .field("token", &"[REDACTED]")
            .field("expires_in", &self.expires_in)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Which kind of credential a [`Principal`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// A `kt_live_…` API key (acts for the whole org).
    ApiKey,
    /// A session token (acts for one project).
    SessionToken,
}

/// A project named by id and slug.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectRef {
    /// The project's id.
    pub id: String,
    /// The project's slug.
    pub slug: String,
}

impl From<&Project> for ProjectRef {
    fn from(project: &Project) -> Self {
        ProjectRef {
            id: project.id.clone(),
            slug: project.slug.clone(),
        }
    }
}

/// Who a request acts as, once its credential is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The org the credential belongs to.
    pub org_id: String,
    /// That org's slug (to match the `{org}` of a project route).
    pub org_slug: String,
    /// `Some` for session tokens (bound to one project); `None` for API
    /// keys, which act for the whole org.
    pub project: Option<ProjectRef>,
    /// What the credential may do.
    pub scope: Scope,
    /// The verified end user id: set for session tokens minted with an
    /// identity token or by a caller that named one.
    pub sub: Option<String>,
    /// The API key's id, or the session token's `jti`.
    pub credential_id: String,
    /// Which kind of credential it was.
    pub kind: CredentialKind,
    /// The embed key a session token was traded for (`None` for API keys
    /// and for tokens minted otherwise).
    pub embed_key_id: Option<String>,
}

impl Principal {
    /// The credential a session this principal creates is billed to (its
    /// per-key budgets): the API key, or the embed key behind a session
    /// token; `None` for a token minted without one.
    pub fn billing_credential(&self) -> Option<&str> {
        match self.kind {
            CredentialKind::ApiKey => Some(&self.credential_id),
            CredentialKind::SessionToken => self.embed_key_id.as_deref(),
        }
    }

    /// `Ok` when the principal's scope covers `scope`, else
    /// [`AuthError::Forbidden`] naming the scope needed.
    pub fn require(&self, scope: Scope) -> Result<(), AuthError> {
        if self.scope >= scope {
            Ok(())
        } else {
            Err(AuthError::Forbidden { needed: scope })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_ordered_and_round_trip() {
        assert!(Scope::Read < Scope::Write && Scope::Write < Scope::Admin);
        for scope in [Scope::Read, Scope::Write, Scope::Admin] {
            assert_eq!(scope.to_string().parse::<Scope>().ok(), Some(scope));
            let json = serde_json::to_string(&scope).expect("serialize");
            assert_eq!(json, format!("\"{scope}\""));
        }
        assert!(matches!(
            "Admin".parse::<Scope>(),
            Err(AuthError::BadInput { field: "scope", .. })
        ));
    }

    #[test]
    fn require_compares_scopes() {
        let principal = Principal {
            org_id: "org_1".into(),
            org_slug: "acme".into(),
            project: None,
            scope: Scope::Write,
            sub: None,
            credential_id: "key_1".into(),
            kind: CredentialKind::ApiKey,
            embed_key_id: None,
        };
        assert!(principal.require(Scope::Read).is_ok());
        assert!(principal.require(Scope::Write).is_ok());
        assert!(matches!(
            principal.require(Scope::Admin),
            Err(AuthError::Forbidden {
                needed: Scope::Admin
            })
        ));
    }

    #[test]
    fn minted_token_debug_hides_the_token() {
        let minted = MintedToken {
            token: "eyJsecret".into(),
            expires_in: 900,
            expires_at: "2030-01-01T00:00:00Z".into(),
        };
        let shown = format!("{minted:?}");
        assert!(!shown.contains("eyJsecret"), "{shown}");
        assert!(shown.contains("900"));
    }
}
