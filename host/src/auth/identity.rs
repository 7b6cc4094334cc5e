//! End user identity: each project's identity secret, the identity tokens
//! a customer's backend makes with it, and what an end user id may be.
//!
//! An identity token is
//! `<base64url-nopad(end_user_id)>.<hex(HMAC-SHA256(secret_bytes, end_user_id))>`,
//! where `secret_bytes` are the 32 bytes the secret's 64 hex characters
//! encode. The id travels in the clear (it is not a secret, only a claim)
//! and the HMAC proves the customer's backend vouched for it; it is checked
//! with `ring::hmac::verify`, in constant time.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use secrecy::{ExposeSecret, SecretString};

use super::orgs::ProjectRecord;
use super::{Auth, AuthError, update};

/// Longest end user id, in characters.
const MAX_END_USER_ID_CHARS: usize = 200;

/// Longest identity token accepted: a 200-character id of 4-byte
/// characters in base64, a dot and 64 hex digits, with room to spare.
const MAX_IDENTITY_TOKEN_BYTES: usize = 2048;

/// Bytes of an identity secret.
const SECRET_BYTES: usize = 32;

/// Checks an end user id: 1 to 200 characters, no `/`, `\`, `..`, control
/// characters, or leading `.`. Ids end up in paths and logs (a per-user
/// workspace, a transcript's sender), so nothing that could climb out of a
/// directory or forge a log line gets through.
/// [`AuthError::InvalidEndUserId`] (400, `invalid_end_user_id`) otherwise.
pub fn valid_end_user_id(id: &str) -> Result<(), AuthError> {
    let reason = if id.is_empty() {
        "it is empty"
    } else if id.chars().count() > MAX_END_USER_ID_CHARS {
        "it is longer than 200 characters"
    } else if id.contains(['/', '\\']) {
        "it contains a slash or a backslash"
    } else if id.contains("..") {
        "it contains '..'"
    } else if id.starts_with('.') {
        "it starts with '.'"
    } else if id.chars().any(char::is_control) {
        "it contains a control character"
    } else {
        return Ok(());
    };
    Err(AuthError::InvalidEndUserId { reason })
}

/// The HMAC key of a secret given as hex. A secret that is not hex is
/// used as its bytes: the result simply never verifies against a real
/// secret, which is the right answer for a wrong secret.
fn hmac_key(secret: &str) -> hmac::Key {
    let bytes = secrecy::SecretSlice::from(
        hex::decode(secret).unwrap_or_else(|_| secret.as_bytes().to_vec()),
    );
    hmac::Key::new(hmac::HMAC_SHA256, bytes.expose_secret())
}

impl Auth {
    /// The identity token of `end_user_id` under `secret` (the hex string
    /// [`Auth::identity_secret`] returns): what a customer's backend
    /// computes. See the module doc for the format.
    pub fn identity_token(secret: &str, end_user_id: &str) -> String {
        let tag = hmac::sign(&hmac_key(secret), end_user_id.as_bytes());
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(end_user_id),
            hex::encode(tag.as_ref())
        )
    }

    /// The project's identity secret as 64 hex characters, made on the
    /// first call. [`AuthError::NotFound`] unless the project belongs to
    /// the org.
    pub fn identity_secret(
        &self,
        org_id: &str,
        project_id: &str,
    ) -> Result<SecretString, AuthError> {
        let record = self.org_project(org_id, project_id)?;
        if let Some(secret) = record.identity_secret {
            return Ok(SecretString::from(secret));
        }
        self.set_identity_secret(org_id, project_id, false)
    }

    /// Replaces the project's identity secret; identity tokens made with
    /// the old one stop verifying at once.
    pub fn rotate_identity_secret(
        &self,
        org_id: &str,
        project_id: &str,
    ) -> Result<SecretString, AuthError> {
        self.org_project(org_id, project_id)?;
        self.set_identity_secret(org_id, project_id, true)
    }

    /// Stores a new secret (or, unless `replace`, keeps one another caller
    /// stored first) and answers the project's secret.
    fn set_identity_secret(
        &self,
        org_id: &str,
        project_id: &str,
        replace: bool,
    ) -> Result<SecretString, AuthError> {
        let mut bytes = [0u8; SECRET_BYTES];
        self.random(&mut bytes)?;
        let fresh = SecretString::from(hex::encode(bytes));
        bytes = [0; SECRET_BYTES];
        std::hint::black_box(&bytes);
        let record = update(
            &self.trees().projects,
            project_id.as_bytes(),
            |record: &mut ProjectRecord| {
                if record.project.org_id != org_id {
                    return Err(AuthError::NotFound);
                }
                if record.identity_secret.is_some() && !replace {
                    return Ok(false);
                }
                record.identity_secret = Some(fresh.expose_secret().to_owned());
                Ok(true)
            },
        )?
        .ok_or(AuthError::NotFound)?;
        self.flush()?;
        record
            .identity_secret
            .map(SecretString::from)
            .ok_or(AuthError::NotFound)
    }

    /// The end user id an identity token vouches for, checked against the
    /// project's secret. [`AuthError::BadIdentity`] when it is malformed,
    /// its HMAC does not verify, or the project has no secret yet;
    /// [`AuthError::InvalidEndUserId`] when it verifies but the id is not
    /// acceptable.
    pub(super) fn verify_identity_token(
        record: &ProjectRecord,
        token: &str,
    ) -> Result<String, AuthError> {
        let secret = record
            .identity_secret
            .as_deref()
            .ok_or(AuthError::BadIdentity)?;
        if token.len() > MAX_IDENTITY_TOKEN_BYTES {
            return Err(AuthError::BadIdentity);
        }
        let (id, tag) = token.split_once('.').ok_or(AuthError::BadIdentity)?;
        let id = URL_SAFE_NO_PAD
            .decode(id)
            .map_err(|_| AuthError::BadIdentity)?;
        let tag = hex::decode(tag).map_err(|_| AuthError::BadIdentity)?;
        hmac::verify(&hmac_key(secret), &id, &tag).map_err(|_| AuthError::BadIdentity)?;
        let id = String::from_utf8(id).map_err(|_| AuthError::InvalidEndUserId {
            reason: "it is not UTF-8",
        })?;
        valid_end_user_id(&id)?;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{auth, org_and_project};
    use super::*;

    #[test]
    fn end_user_ids() {
        let long = "x".repeat(201);
        let table: &[(&str, bool)] = &[
            ("user-42", true),
            ("alice@example.com", true),
            ("Ünïcödé 用户", true),
            ("a.b", true),
            (&"é".repeat(200), true),
            ("", false),
            (&long, false),
            ("a/b", false),
            ("a\\b", false),
            ("..", false),
            ("a..b", false),
            (".hidden", false),
            ("line\nbreak", false),
            ("nul\0", false),
            ("tab\t", false),
            ("del\u{7f}", false),
        ];
        for (id, ok) in table {
            let result = valid_end_user_id(id);
            assert_eq!(result.is_ok(), *ok, "{id:?}: {result:?}");
            if let Err(error) = result {
                assert_eq!((error.status(), error.code()), (400, "invalid_end_user_id"));
            }
        }
    }

    #[test]
    fn identity_tokens_verify_against_the_project_secret() {
        let (_dir, auth) = auth();
        let (org, project) = org_and_project(&auth);
        let secret = auth.identity_secret(&org.id, &project.id).expect("secret");
        assert_eq!(secret.expose_secret().len(), 64);
        let again = auth.identity_secret(&org.id, &project.id).expect("secret");
        assert_eq!(again.expose_secret(), secret.expose_secret(), "made once");

        let record = auth.org_project(&org.id, &project.id).expect("record");
        let token = Auth::identity_token(secret.expose_secret(), "user-42");
        let id = Auth::verify_identity_token(&record, &token).expect("verifies");
        assert_eq!(id, "user-42");

        // The format, computed by hand as a customer's backend would.
        let key = hmac::Key::new(
            hmac::HMAC_SHA256,
            &hex::decode(secret.expose_secret()).expect("hex"),
        );
        let by_hand = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode("user-42"),
            hex::encode(hmac::sign(&key, b"user-42").as_ref())
        );
        assert_eq!(token, by_hand);

        let (_, tag) = token.split_once('.').expect("dot");
        let tampered = [
            format!("{}.{tag}", URL_SAFE_NO_PAD.encode("user-43")),
            Auth::identity_token(&"00".repeat(32), "user-42"),
            token.replace('.', ""),
            format!("{token}00"),
            "not a token".into(),
        ];
        for bad in &tampered {
            assert!(
                matches!(
                    Auth::verify_identity_token(&record, bad),
                    Err(AuthError::BadIdentity)
                ),
                "{bad:?}"
            );
        }

        let signed_but_bad = Auth::identity_token(secret.expose_secret(), "../etc");
        assert!(matches!(
            Auth::verify_identity_token(&record, &signed_but_bad),
            Err(AuthError::InvalidEndUserId { .. })
        ));
    }

    #[test]
    fn rotating_the_identity_secret_invalidates_old_tokens() {
        let (_dir, auth) = auth();
        let (org, project) = org_and_project(&auth);
        let old = auth.identity_secret(&org.id, &project.id).expect("secret");
        let token = Auth::identity_token(old.expose_secret(), "user-1");
        let new = auth
            .rotate_identity_secret(&org.id, &project.id)
            .expect("rotate");
        assert_ne!(new.expose_secret(), old.expose_secret());
        let record = auth.org_project(&org.id, &project.id).expect("record");
        assert!(matches!(
            Auth::verify_identity_token(&record, &token),
            Err(AuthError::BadIdentity)
        ));
        let stranger = auth.create_org("beta", None).expect("org");
        assert!(matches!(
            auth.identity_secret(&stranger.id, &project.id),
            Err(AuthError::NotFound)
        ));
        assert!(matches!(
            auth.rotate_identity_secret(&stranger.id, &project.id),
            Err(AuthError::NotFound)
        ));
    }

    #[test]
    fn project_without_a_secret_accepts_no_identity() {
        let (_dir, auth) = auth();
        let (org, project) = org_and_project(&auth);
        let record = auth.org_project(&org.id, &project.id).expect("record");
        let token = Auth::identity_token(&"ab".repeat(32), "user-1");
        assert!(matches!(
            Auth::verify_identity_token(&record, &token),
            Err(AuthError::BadIdentity)
        ));
    }
}
