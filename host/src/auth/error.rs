//! [`AuthError`]: every way an auth call fails, each with the HTTP status
//! and the protocol's error code the API answers with.
//!
//! The credential errors say little on purpose: an unknown key, a malformed
//! token, a forged signature and a token whose project is gone are all
//! `Invalid`, so a caller probing with guesses learns nothing about which
//! part was wrong.

use crate::store::StoreError;

use super::Scope;

/// Why an auth call failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No credential, or one that is unknown, malformed, forged, or whose
    /// org or project no longer exists (401).
    #[error("invalid credential")]
    Invalid,
    /// A session token past its `exp` (401, `token_expired`: the client
    /// mints a new one).
    #[error("the token has expired")]
    Expired,
    /// A revoked API key or embed key (401).
    #[error("the key has been revoked")]
    Revoked,
    /// The credential is valid but its scope is too small (403).
    #[error("this needs the {needed} scope")]
    Forbidden {
        /// The scope the operation needs.
        needed: Scope,
    },
    /// An unknown org, project or key — or one of another org, which must
    /// look the same (404).
    #[error("not found")]
    NotFound,
    /// The slug is taken (409).
    #[error("that slug is already taken")]
    Conflict,
    /// A malformed argument: a bad slug, origin, name or ttl (400).
    #[error("invalid {field}: {message}")]
    BadInput {
        /// The argument at fault.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// An end user id that is empty, too long, or holds characters that
    /// could escape a path (400, `invalid_end_user_id`).
    #[error("invalid end user id: {reason}")]
    InvalidEndUserId {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The request's `Origin` is absent or not in the embed key's list
    /// (403).
    #[error("this origin may not use the embed key")]
    OriginNotAllowed,
    /// The identity token is malformed or its HMAC does not verify with
    /// the project's identity secret (401).
    #[error("invalid identity token")]
    BadIdentity,
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading or writing the signing keys failed.
    #[error("secrets file: {0}")]
    Io(#[from] std::io::Error),
}

impl AuthError {
    /// The HTTP status the API answers with.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Invalid
            | AuthError::Expired
            | AuthError::Revoked
            | AuthError::BadIdentity => 401,
            AuthError::Forbidden { .. } | AuthError::OriginNotAllowed => 403,
            AuthError::NotFound => 404,
            AuthError::Conflict => 409,
            AuthError::BadInput { .. } | AuthError::InvalidEndUserId { .. } => 400,
            AuthError::Store(_) | AuthError::Io(_) => 503,
        }
    }

    /// The protocol's error code for the answer's body.
    pub fn code(&self) -> &'static str {
        match self {
            // A revoked key is as useless as an unknown one; the client's
            // remedy (a new credential) is the same.
            AuthError::Invalid | AuthError::Revoked => "unauthorized",
            AuthError::Expired => "token_expired",
            AuthError::Forbidden { .. } => "forbidden",
            AuthError::NotFound => "not_found",
            AuthError::Conflict => "conflict",
            AuthError::BadInput { .. } => "invalid_request",
            AuthError::InvalidEndUserId { .. } => "invalid_end_user_id",
            AuthError::OriginNotAllowed => "origin_not_allowed",
            AuthError::BadIdentity => "invalid_identity_token",
            AuthError::Store(_) | AuthError::Io(_) => "storage_unavailable",
        }
    }

    /// A [`AuthError::BadInput`].
    pub(crate) fn bad_input(field: &'static str, message: impl Into<String>) -> Self {
        AuthError::BadInput {
            field,
            message: message.into(),
        }
    }
}

impl From<sled::Error> for AuthError {
    fn from(error: sled::Error) -> Self {
        AuthError::Store(StoreError::Sled(error))
    }
}

impl From<serde_json::Error> for AuthError {
    fn from(error: serde_json::Error) -> Self {
        AuthError::Store(StoreError::Codec(error))
    }
}

impl From<sled::transaction::TransactionError<AuthError>> for AuthError {
    fn from(error: sled::transaction::TransactionError<AuthError>) -> Self {
        match error {
            sled::transaction::TransactionError::Abort(error) => error,
            sled::transaction::TransactionError::Storage(error) => error.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_codes() {
        let table = [
            (AuthError::Invalid, 401, "unauthorized"),
            (AuthError::Expired, 401, "token_expired"),
            (AuthError::Revoked, 401, "unauthorized"),
            (
                AuthError::Forbidden {
                    needed: Scope::Admin,
                },
                403,
                "forbidden",
            ),
            (AuthError::NotFound, 404, "not_found"),
            (AuthError::Conflict, 409, "conflict"),
            (AuthError::bad_input("slug", "x"), 400, "invalid_request"),
            (
                AuthError::InvalidEndUserId { reason: "x" },
                400,
                "invalid_end_user_id",
            ),
            (AuthError::OriginNotAllowed, 403, "origin_not_allowed"),
            (AuthError::BadIdentity, 401, "invalid_identity_token"),
            (
                AuthError::Io(std::io::Error::other("x")),
                503,
                "storage_unavailable",
            ),
        ];
        for (error, status, code) in table {
            assert_eq!((error.status(), error.code()), (status, code), "{error}");
        }
    }
}
