//! [`Auth::authenticate`]: one bearer credential, an API key or a session
//! token, to the [`Principal`] it acts as.
//!
//! The prefix decides the kind: `kt_live_…` is an API key (see
//! `keys.rs`), anything else must be a session token (see `tokens.rs`).
//! Whatever is wrong with a credential — unknown, malformed, forged, or
//! naming an org or project that is gone — the answer is the same
//! [`AuthError::Invalid`], so guessing teaches nothing.

use super::keys::API_KEY_PREFIX;
use super::{Auth, AuthError, CredentialKind, Principal, ProjectRef};

/// Longer bearer strings are refused before any parsing; a real token is
/// a few hundred bytes.
const MAX_TOKEN_BYTES: usize = 4096;

impl Auth {
    /// Resolves a bearer credential to a principal: a `kt_live_…` API key,
    /// else a session token.
    ///
    /// API keys: unknown → [`AuthError::Invalid`], revoked →
    /// [`AuthError::Revoked`]; `last_used_at` is updated at most once a
    /// minute. Session tokens: a bad signature, an unknown `kid`, another
    /// algorithm, or an org or project that no longer exists →
    /// [`AuthError::Invalid`]; past `exp` (plus 5 s) →
    /// [`AuthError::Expired`].
    pub fn authenticate(&self, bearer: &str) -> Result<Principal, AuthError> {
        if bearer.starts_with(API_KEY_PREFIX) {
            self.authenticate_api_key(bearer)
        } else {
            self.authenticate_session_token(bearer)
        }
    }

    fn authenticate_session_token(&self, token: &str) -> Result<Principal, AuthError> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Invalid);
        }
        let claims = self.verify(token)?;
        let org = self.org(&claims.org_id)?.ok_or(AuthError::Invalid)?;
        let project = self
            .org_project(&org.id, &claims.project_id)
            .map_err(|error| match error {
                AuthError::NotFound => AuthError::Invalid,
                other => other,
            })?
            .project;
        Ok(Principal {
            org_id: org.id,
            org_slug: org.slug,
            project: Some(ProjectRef::from(&project)),
            scope: claims.scope,
            sub: claims.sub,
            credential_id: claims.jti,
            kind: CredentialKind::SessionToken,
            embed_key_id: claims.emb,
        })
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};

    use super::super::testing::{auth, kid_of, project_ref};
    use super::super::tokens::{Claims, unix_now};
    use super::super::{Scope, new_id};
    use super::*;

    #[test]
    fn forged_and_unsigned_tokens_are_invalid() {
        let (_dir, auth) = auth();
        let (org_id, project) = project_ref(&auth);
        let minted = auth
            .mint_session_token(&org_id, &project, Scope::Admin, None, None)
            .expect("mint");
        let claims = auth.verify(&minted.token).expect("verify");
        let kid = kid_of(&minted.token);

        // The right kid, another key.
        let mut header = Header::new(Algorithm::HS256);
        header.kid = kid.clone();
        let forged = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&[7u8; 32]))
            .expect("encode");
        assert!(matches!(
            auth.authenticate(&forged),
            Err(AuthError::Invalid)
        ));

        // alg: none, no signature.
        let none_header = serde_json::json!({"alg": "none", "typ": "JWT", "kid": kid});
        let encode = |v: &serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let payload = encode(&serde_json::to_value(&claims).expect("claims"));
        let unsigned = format!("{}.{payload}.", encode(&none_header));
        assert!(matches!(
            auth.authenticate(&unsigned),
            Err(AuthError::Invalid)
        ));

        // A payload swapped under a genuine signature.
        let mut parts: Vec<&str> = minted.token.split('.').collect();
        let other = encode(&serde_json::json!({"scope": "admin", "org_id": "org_x"}));
        parts[1] = &other;
        assert!(matches!(
            auth.authenticate(&parts.join(".")),
            Err(AuthError::Invalid)
        ));

        for junk in [
            "",
            "abc",
            "a.b.c",
            &"x".repeat(MAX_TOKEN_BYTES + 1),
            "pk_live_abc",
        ] {
            assert!(
                matches!(auth.authenticate(junk), Err(AuthError::Invalid)),
                "{junk:?}"
            );
        }
    }

    #[test]
    fn tokens_of_unknown_projects_are_invalid() {
        let (_dir, auth) = auth();
        let (org_id, project) = project_ref(&auth);
        let minted = auth
            .mint_session_token(&org_id, &project, Scope::Write, None, None)
            .expect("mint");
        // The project is deleted (there is no API for it yet: remove the
        // record as a deletion would).
        auth.trees()
            .projects
            .remove(project.id.as_bytes())
            .expect("remove");
        assert!(matches!(
            auth.authenticate(&minted.token),
            Err(AuthError::Invalid)
        ));

        let orphan = Claims {
            org_id: "org_gone".into(),
            project_id: "prj_gone".into(),
            project_slug: "gone".into(),
            scope: Scope::Admin,
            exp: unix_now() + 600,
            iat: unix_now(),
            jti: new_id("tok"),
            sub: None,
            emb: None,
        };
        let token = auth.sign(&orphan).expect("sign");
        assert!(matches!(auth.authenticate(&token), Err(AuthError::Invalid)));
    }
}
