//! Session tokens: HS256 JWTs bound to one project.
//!
//! Verification is offline: the signature, `exp` (5 s of leeway for clock
//! skew between hosts, no more), and that the org and project still exist.
//! Only HS256 is accepted — `alg: none` and every other algorithm fail to
//! parse or fail the algorithm check — and the header's `kid` picks the
//! key, so tokens signed before a rotation verify until they expire.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use super::{Auth, AuthError, MintedToken, ProjectRef, Scope, new_id, valid_end_user_id};

/// How long a session token lives unless asked otherwise.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);

/// The longest a session token may live.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Clock skew forgiven when checking `exp`, in seconds.
const LEEWAY_SECS: u64 = 5;

/// A session token's claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Claims {
    pub(super) org_id: String,
    pub(super) project_id: String,
    pub(super) project_slug: String,
    pub(super) scope: Scope,
    /// Expiry, seconds since the epoch.
    pub(super) exp: u64,
    /// Issued at, seconds since the epoch.
    pub(super) iat: u64,
    /// The token's id (`tok_…`), the principal's `credential_id`.
    pub(super) jti: String,
    /// The verified end user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) sub: Option<String>,
    /// The embed key the token was traded for, if it was (the principal's
    /// `embed_key_id`: its sessions are billed to that key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) emb: Option<String>,
}

/// Seconds since the epoch.
pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl Auth {
    /// Mints a session token for one of an org's projects.
    ///
    /// The token carries `scope` as given: a caller minting for a principal
    /// must not pass a scope above the principal's own. `sub`, when given,
    /// must pass [`valid_end_user_id`]. `ttl` defaults to
    /// [`DEFAULT_TOKEN_TTL`] and must be 1 s to [`MAX_TOKEN_TTL`]. The
    /// project's slug is taken from the store, not from `project`.
    /// [`AuthError::NotFound`] unless the project belongs to the org.
    pub fn mint_session_token(
        &self,
        org_id: &str,
        project: &ProjectRef,
        scope: Scope,
        sub: Option<&str>,
        ttl: Option<Duration>,
    ) -> Result<MintedToken, AuthError> {
        self.mint_token(org_id, project, scope, sub, ttl, None)
    }

    /// [`Auth::mint_session_token`], naming the embed key it was traded
    /// for (`emb`).
    pub(super) fn mint_token(
        &self,
        org_id: &str,
        project: &ProjectRef,
        scope: Scope,
        sub: Option<&str>,
        ttl: Option<Duration>,
        embed_key_id: Option<&str>,
    ) -> Result<MintedToken, AuthError> {
        let ttl = ttl.unwrap_or(DEFAULT_TOKEN_TTL);
        if ttl < Duration::from_secs(1) || ttl > MAX_TOKEN_TTL {
            return Err(AuthError::bad_input(
                "ttl",
                format!("from 1 to {} seconds", MAX_TOKEN_TTL.as_secs()),
            ));
        }
        if let Some(sub) = sub {
            valid_end_user_id(sub)?;
        }
        if self.org(org_id)?.is_none() {
            return Err(AuthError::NotFound);
        }
        let record = self.org_project(org_id, &project.id)?;
        let iat = unix_now();
        let claims = Claims {
            org_id: org_id.to_owned(),
            project_id: record.project.id,
            project_slug: record.project.slug,
            scope,
            exp: iat + ttl.as_secs(),
            iat,
            jti: new_id("tok"),
            sub: sub.map(str::to_owned),
            emb: embed_key_id.map(str::to_owned),
        };
        let token = self.sign(&claims)?;
        Ok(MintedToken {
            token,
            expires_in: ttl.as_secs(),
            expires_at: humantime::format_rfc3339_seconds(
                UNIX_EPOCH + Duration::from_secs(claims.exp),
            )
            .to_string(),
        })
    }

    /// Signs `claims` with the current key, naming it in `kid`.
    pub(super) fn sign(&self, claims: &Claims) -> Result<String, AuthError> {
        let keys = self.signing();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(keys.current.kid.clone());
        let key = EncodingKey::from_secret(keys.current.secret.expose_secret());
        // Encoding owned, well-formed claims with an HMAC key cannot fail;
        // should it, it is an internal failure, not the caller's.
        jsonwebtoken::encode(&header, claims, &key)
            .map_err(|e| AuthError::Io(std::io::Error::other(format!("signing a token: {e}"))))
    }

    /// Checks a token's signature and expiry and returns its claims.
    pub(super) fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
        if header.alg != Algorithm::HS256 {
            return Err(AuthError::Invalid);
        }
        let kid = header.kid.ok_or(AuthError::Invalid)?;
        let key = {
            let keys = self.signing();
            let key = keys.get(&kid).ok_or(AuthError::Invalid)?;
            DecodingKey::from_secret(key.secret.expose_secret())
        };
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "iat"]);
        // The signature is checked before the claims, so a forged token
        // is Invalid even when its `exp` is past.
        match jsonwebtoken::decode::<Claims>(token, &key, &validation) {
            Ok(data) => Ok(data.claims),
            Err(error) if matches!(error.kind(), ErrorKind::ExpiredSignature) => {
                Err(AuthError::Expired)
            }
            Err(_) => Err(AuthError::Invalid),
        }
    }

    /// Makes a new current signing key; the previous two stay valid for
    /// verification, so live tokens keep working until they expire. The
    /// file is written before the new key is used.
    pub fn rotate_token_secret(&self) -> Result<(), AuthError> {
        let mut keys = self
            .inner
            .signing
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let rotated = keys.rotated(&self.inner.rng)?;
        rotated.save(&self.inner.signing_path)?;
        *keys = rotated;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{auth, kid_of, project_ref};
    use super::super::{CredentialKind, Store};
    use super::*;

    #[test]
    fn token_round_trip_carries_the_claims() {
        let (_dir, auth) = auth();
        let (org_id, project) = project_ref(&auth);
        let minted = auth
            .mint_session_token(&org_id, &project, Scope::Write, Some("user-42"), None)
            .expect("mint");
        assert_eq!(minted.expires_in, DEFAULT_TOKEN_TTL.as_secs());
        assert!(humantime::parse_rfc3339(&minted.expires_at).is_ok());

        let claims = auth.verify(&minted.token).expect("verify");
        assert_eq!(claims.org_id, org_id);
        assert_eq!(
            (claims.project_id.as_str(), claims.project_slug.as_str()),
            (project.id.as_str(), "support")
        );
        assert_eq!(claims.exp - claims.iat, DEFAULT_TOKEN_TTL.as_secs());
        assert!(claims.jti.starts_with("tok_"));

        let principal = auth.authenticate(&minted.token).expect("authenticate");
        assert_eq!(principal.org_id, org_id);
        assert_eq!(principal.org_slug, "acme");
        assert_eq!(principal.project, Some(project.clone()));
        assert_eq!(principal.scope, Scope::Write);
        assert_eq!(principal.sub.as_deref(), Some("user-42"));
        assert_eq!(principal.credential_id, claims.jti);
        assert_eq!(principal.kind, CredentialKind::SessionToken);

        let anonymous = auth
            .mint_session_token(
                &org_id,
                &project,
                Scope::Read,
                None,
                Some(Duration::from_secs(60)),
            )
            .expect("mint");
        assert_eq!(anonymous.expires_in, 60);
        assert_eq!(auth.authenticate(&anonymous.token).expect("auth").sub, None);
    }

    #[test]
    fn minting_checks_its_arguments() {
        let (_dir, auth) = auth();
        let (org_id, project) = project_ref(&auth);
        let mint = |ttl: Option<Duration>, sub: Option<&str>| {
            auth.mint_session_token(&org_id, &project, Scope::Read, sub, ttl)
        };
        for ttl in [Duration::ZERO, MAX_TOKEN_TTL + Duration::from_secs(1)] {
            assert!(matches!(
                mint(Some(ttl), None),
                Err(AuthError::BadInput { field: "ttl", .. })
            ));
        }
        assert!(mint(Some(MAX_TOKEN_TTL), None).is_ok());
        assert!(matches!(
            mint(None, Some("../x")),
            Err(AuthError::InvalidEndUserId { .. })
        ));
        let stranger = auth.create_org("beta", None).expect("org");
        assert!(matches!(
            auth.mint_session_token(&stranger.id, &project, Scope::Read, None, None),
            Err(AuthError::NotFound)
        ));
    }

    #[test]
    fn expired_tokens_are_refused() {
        let (_dir, auth) = auth();
        let (org_id, project) = project_ref(&auth);
        let now = unix_now();
        let claims = Claims {
            org_id,
            project_id: project.id,
            project_slug: project.slug,
            scope: Scope::Write,
            exp: now - 60,
            iat: now - 120,
            jti: new_id("tok"),
            sub: None,
            emb: None,
        };
        let token = auth.sign(&claims).expect("sign");
        let error = auth.authenticate(&token).expect_err("expired");
        assert!(matches!(error, AuthError::Expired), "{error:?}");
        assert_eq!(error.code(), "token_expired");

        // Within the leeway it still passes.
        let fresh = auth
            .sign(&Claims {
                exp: now - 1,
                ..claims
            })
            .expect("sign");
        assert!(auth.authenticate(&fresh).is_ok());
    }

    #[test]
    fn rotation_keeps_old_tokens_valid_for_a_while() {
        let (_dir, auth) = auth();
        let (org_id, project) = project_ref(&auth);
        let mint = || {
            auth.mint_session_token(&org_id, &project, Scope::Write, None, None)
                .expect("mint")
                .token
        };
        let old = mint();
        auth.rotate_token_secret().expect("rotate");
        assert!(auth.authenticate(&old).is_ok(), "one rotation: still valid");
        let new = mint();
        assert_ne!(kid_of(&new), kid_of(&old));
        assert_eq!(
            kid_of(&new).as_deref(),
            Some(auth.signing().current.kid.as_str())
        );
        assert!(auth.authenticate(&new).is_ok());

        auth.rotate_token_secret().expect("rotate");
        assert!(auth.authenticate(&old).is_ok(), "two rotations: still kept");
        auth.rotate_token_secret().expect("rotate");
        assert!(
            matches!(auth.authenticate(&old), Err(AuthError::Invalid)),
            "its key is gone"
        );
        assert!(auth.authenticate(&new).is_ok());
    }

    #[test]
    fn keys_survive_reopening() {
        use std::os::unix::fs::PermissionsExt;

        let dir = tempfile::tempdir().expect("tempdir");
        let open = || {
            let store = Store::open(&dir.path().join("db")).expect("store");
            Auth::open(store, dir.path()).expect("auth")
        };
        let auth = open();
        let (org_id, project) = project_ref(&auth);
        auth.rotate_token_secret().expect("rotate");
        let token = auth
            .mint_session_token(&org_id, &project, Scope::Write, None, None)
            .expect("mint")
            .token;
        drop(auth);

        let path = dir.path().join("secrets").join("token-signing.json");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let reopened = open();
        let principal = reopened
            .authenticate(&token)
            .expect("verifies after reopen");
        assert_eq!(principal.project, Some(project));
    }
}
