//! The module's public types — [`Provider`], [`ByokKeyInfo`],
//! [`ByokError`] — and the light checks a key and an org id get before
//! they are sealed.

use std::fmt;
use std::str::FromStr;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::StoreError;

/// The longest key accepted, in bytes. Provider keys are ~100 bytes; the
/// cap only keeps a pasted file out of the database.
pub const MAX_KEY_BYTES: usize = 512;

/// The longest org id accepted, in bytes (ours are `org_` + 32 hex).
const MAX_ORG_ID_BYTES: usize = 128;

/// Keys shorter than this get no `last4`: four characters of a short key
/// are too large a share of it to show.
const MIN_KEY_CHARS_FOR_LAST4: usize = 16;

/// A model provider an org can bring its own key for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Anthropic's Messages API (`x-api-key`).
    Anthropic,
    /// OpenAI's API (`Authorization: Bearer`).
    Openai,
    /// OpenRouter's OpenAI-compatible API (`Authorization: Bearer`).
    Openrouter,
}

impl Provider {
    /// Every provider, in wire-name order.
    pub const ALL: [Provider; 3] = [Provider::Anthropic, Provider::Openai, Provider::Openrouter];

    /// The wire name: `anthropic`, `openai` or `openrouter`.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Anthropic => "anthropic",
            Provider::Openai => "openai",
            Provider::Openrouter => "openrouter",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Provider {
    type Err = ByokError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Provider::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                ByokError::BadKey(format!(
                    "unknown provider {s:?}: expected anthropic, openai or openrouter"
                ))
            })
    }
}

/// What may be shown about a stored key: never the key itself. Its serde
/// shape is what the admin API answers with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByokKeyInfo {
    /// `byok_` and a random uuid.
    pub id: String,
    /// The org the key belongs to.
    pub org_id: String,
    /// The provider it is for.
    pub provider: Provider,
    /// `sha256:` and the first 16 hex digits of the key's SHA-256, so an
    /// operator can tell which key is stored without seeing it.
    pub fingerprint: String,
    /// The key's last four characters, as provider dashboards show them;
    /// empty for keys under 16 characters, where four would be too much.
    pub last4: String,
    /// When it was stored (RFC 3339).
    pub created_at: String,
    /// When it stopped being the active key — replaced by a newer one, or
    /// removed (RFC 3339). Its ciphertext was deleted then.
    pub replaced_at: Option<String>,
}

/// Why a BYOK call failed.
#[derive(Debug, thiserror::Error)]
pub enum ByokError {
    /// A key, provider or org id the call cannot take (400,
    /// `invalid_request`). The message never repeats the key.
    #[error("{0}")]
    BadKey(String),
    /// A sealed key does not open: the host runs with another master key
    /// than the one it was sealed under, or the record was altered or
    /// moved; or the master key itself is malformed or unreadable (500).
    #[error("master key: {0}")]
    MasterKey(String),
    /// The database failed (503).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The master key file or the system random source failed (500).
    #[error("byok: {0}")]
    Io(#[from] std::io::Error),
}

impl ByokError {
    /// The HTTP status the API answers with.
    pub fn status(&self) -> u16 {
        match self {
            ByokError::BadKey(_) => 400,
            ByokError::MasterKey(_) | ByokError::Io(_) => 500,
            ByokError::Store(_) => 503,
        }
    }

    /// The protocol's error code for the answer's body.
    pub fn code(&self) -> &'static str {
        match self {
            ByokError::BadKey(_) => "invalid_request",
            ByokError::MasterKey(_) | ByokError::Io(_) => "internal",
            ByokError::Store(_) => "storage_unavailable",
        }
    }
}

impl From<sled::Error> for ByokError {
    fn from(error: sled::Error) -> Self {
        ByokError::Store(StoreError::Sled(error))
    }
}

impl From<serde_json::Error> for ByokError {
    fn from(error: serde_json::Error) -> Self {
        ByokError::Store(StoreError::Codec(error))
    }
}

impl From<sled::transaction::TransactionError<ByokError>> for ByokError {
    fn from(error: sled::transaction::TransactionError<ByokError>) -> Self {
        match error {
            sled::transaction::TransactionError::Abort(error) => error,
            sled::transaction::TransactionError::Storage(error) => error.into(),
        }
    }
}

/// Checks a key lightly: 1 to [`MAX_KEY_BYTES`] bytes of printable ASCII
/// without whitespace (every provider's keys are; a stray newline from a
/// pasted file is the usual mistake). Messages never repeat the key.
pub(super) fn check_key(key: &SecretString) -> Result<(), ByokError> {
    let key = key.expose_secret();
    if key.is_empty() {
        return Err(ByokError::BadKey("the key is empty".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(ByokError::BadKey(format!(
            "the key is longer than {MAX_KEY_BYTES} bytes"
        )));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ByokError::BadKey(
            "the key holds whitespace or a character that is not printable ASCII".into(),
        ));
    }
    Ok(())
}

/// Checks an org id: 1 to 128 bytes, no control characters — so `0x00`,
/// the index trees' separator, never appears in one.
pub(super) fn check_org(org_id: &str) -> Result<(), ByokError> {
    if org_id.is_empty() || org_id.len() > MAX_ORG_ID_BYTES || org_id.chars().any(char::is_control)
    {
        return Err(ByokError::BadKey(format!(
            "invalid org id: 1 to {MAX_ORG_ID_BYTES} bytes, no control characters"
        )));
    }
    Ok(())
}

/// `sha256:` and the first 16 hex digits of the key's SHA-256. 64 bits
/// tell keys apart; a hash of a high-entropy key gives nothing away.
pub(super) fn fingerprint(key: &SecretString) -> String {
    let digest = Sha256::digest(key.expose_secret().as_bytes());
    format!("sha256:{}", hex::encode(&digest[..8]))
}

/// The last four characters of a key of at least 16, else empty. Keys are
/// ASCII (checked first), so byte slicing is character slicing.
pub(super) fn last4(key: &SecretString) -> String {
    let key = key.expose_secret();
    if key.len() < MIN_KEY_CHARS_FOR_LAST4 {
        return String::new();
    }
    key[key.len() - 4..].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_parses_and_displays_its_wire_name() {
        for (name, provider) in [
            ("anthropic", Provider::Anthropic),
            ("openai", Provider::Openai),
            ("openrouter", Provider::Openrouter),
        ] {
            assert_eq!(name.parse::<Provider>().expect("parse"), provider);
            assert_eq!(provider.to_string(), name);
            assert_eq!(provider.as_str(), name);
            let json = serde_json::to_string(&provider).expect("json");
            assert_eq!(json, format!("\"{name}\""));
            assert_eq!(
                serde_json::from_str::<Provider>(&json).expect("from json"),
                provider
            );
        }
        for bad in ["", "Anthropic", "OPENAI", "google", "openai "] {
            let error = bad.parse::<Provider>().expect_err(bad);
            assert!(matches!(error, ByokError::BadKey(_)), "{bad:?}");
            assert_eq!(error.status(), 400);
        }
    }

    #[test]
    fn key_validation() {
        let ok = |k: &str| check_key(&SecretString::from(k));
        assert!(ok("sk-ant-api03-abc_DEF-123").is_ok());
        assert!(ok("x").is_ok());
        assert!(ok(&"a".repeat(MAX_KEY_BYTES)).is_ok());
        for bad in [
            String::new(),
            "a".repeat(MAX_KEY_BYTES + 1),
            "sk-with space".into(),
            "sk-trailing-newline\n".into(),
            "sk-tab\there".into(),
            "sk-ключ".into(),
            "sk-nul\0".into(),
        ] {
            let error = ok(&bad).expect_err(&bad);
            assert!(matches!(error, ByokError::BadKey(_)));
            // The message describes the problem, never the key.
            if !bad.is_empty() {
                assert!(!error.to_string().contains(bad.trim()), "{error}");
            }
        }
    }

    #[test]
    fn org_ids_are_checked() {
        assert!(check_org("org_0123456789abcdef0123456789abcdef").is_ok());
        for bad in ["", "a\0b", "a\nb", &"o".repeat(MAX_ORG_ID_BYTES + 1)] {
            assert!(check_org(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn fingerprint_and_last4() {
        let key = SecretString::from("sk-proj-0123456789abcdefWXYZ");
        let shown = fingerprint(&key);
        let full = hex::encode(Sha256::digest(key.expose_secret().as_bytes()));
        assert_eq!(shown, format!("sha256:{}", &full[..16]));
        assert_eq!(last4(&key), "WXYZ");
        assert_eq!(last4(&SecretString::from("short-key-123")), "");
    }

    #[test]
    fn statuses_and_codes() {
        let table = [
            (ByokError::BadKey("x".into()), 400, "invalid_request"),
            (ByokError::MasterKey("x".into()), 500, "internal"),
            (ByokError::Io(std::io::Error::other("x")), 500, "internal"),
            (
                ByokError::Store(StoreError::Injected),
                503,
                "storage_unavailable",
            ),
        ];
        for (error, status, code) in table {
            assert_eq!((error.status(), error.code()), (status, code), "{error}");
        }
    }
}
