//! Signing a delivery and checking a signature (what a receiver does).
//!
//! The signature is `v1=` followed by the lowercase hex of
//! HMAC-SHA256(key = the endpoint's secret as UTF-8 bytes, message =
//! `"{timestamp}.{body}"`), where `timestamp` is the decimal unix seconds
//! sent in `karta-webhook-timestamp` and `body` the exact request body.
//! Signing the timestamp with the body lets a receiver refuse a replayed
//! request: the timestamp cannot be changed without breaking the signature.

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The prefix of the signature scheme this build writes; a later scheme
/// would be `v2=` and could be sent beside it.
const SCHEME: &str = "v1=";

/// The `karta-signature` value for `body` sent at `timestamp` (unix
/// seconds): `v1=<hex HMAC-SHA256(secret, "{timestamp}.{body}")>`.
pub fn sign(secret: &str, timestamp: u64, body: &[u8]) -> String {
    let tag = hmac::sign(&key(secret), &message(timestamp, body));
    format!("{SCHEME}{}", hex::encode(tag.as_ref()))
}

/// Whether `header` (a `karta-signature` value) signs `body` at `timestamp`
/// with `secret`, and `timestamp` is within `tolerance_secs` of `now` (unix
/// seconds) either way.
///
/// The header may list several comma-separated signatures (a secret being
/// rotated); one valid `v1=` is enough. The comparison is constant-time
/// (`ring::hmac::verify`).
pub fn verify(
    secret: &str,
    header: &str,
    timestamp: u64,
    body: &[u8],
    now: u64,
    tolerance_secs: u64,
) -> bool {
    if now.abs_diff(timestamp) > tolerance_secs {
        return false;
    }
    let key = key(secret);
    let message = message(timestamp, body);
    header
        .split(',')
        .filter_map(|part| part.trim().strip_prefix(SCHEME))
        .filter_map(|hex_tag| hex::decode(hex_tag).ok())
        .any(|tag| hmac::verify(&key, &message, &tag).is_ok())
}

fn key(secret: &str) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes())
}

fn message(timestamp: u64, body: &[u8]) -> Vec<u8> {
    let mut message = format!("{timestamp}.").into_bytes();
    message.extend_from_slice(body);
    message
}

/// A new signing secret: `whsec_` and 32 random bytes (base64url).
pub(super) fn new_secret(rng: &SystemRandom) -> Result<String, ring::error::Unspecified> {
    let mut bytes = [0u8; 32];
    rng.fill(&mut bytes)?;
    Ok(format!("whsec_{}", URL_SAFE_NO_PAD.encode(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_a_change_does_not() {
        let header = sign("whsec_x", 1_700_000_000, b"{\"a\":1}");
        assert!(
            header.starts_with("v1=") && header.len() == 3 + 64,
            "{header}"
        );
        assert!(verify(
            "whsec_x",
            &header,
            1_700_000_000,
            b"{\"a\":1}",
            1_700_000_010,
            300
        ));
        assert!(!verify(
            "whsec_x",
            &header,
            1_700_000_000,
            b"{\"a\":2}",
            1_700_000_010,
            300
        ));
        assert!(!verify(
            "whsec_y",
            &header,
            1_700_000_000,
            b"{\"a\":1}",
            1_700_000_010,
            300
        ));
        // The same signature claimed for another second.
        assert!(!verify(
            "whsec_x",
            &header,
            1_700_000_001,
            b"{\"a\":1}",
            1_700_000_010,
            300
        ));
        // Stale, and from the future.
        assert!(!verify(
            "whsec_x",
            &header,
            1_700_000_000,
            b"{\"a\":1}",
            1_700_000_301,
            300
        ));
        assert!(!verify(
            "whsec_x",
            &header,
            1_700_000_000,
            b"{\"a\":1}",
            1_699_999_000,
            300
        ));
        let rotated = format!("v1=00, {header}");
        assert!(verify(
            "whsec_x",
            &rotated,
            1_700_000_000,
            b"{\"a\":1}",
            1_700_000_000,
            300
        ));
        assert!(!verify(
            "whsec_x",
            "v1=zz",
            1_700_000_000,
            b"{\"a\":1}",
            1_700_000_000,
            300
        ));
    }

    #[test]
    fn the_signature_matches_a_known_vector() {
        // python3 -c 'import hmac,hashlib;print(hmac.new(b"secret", b"1.hello", hashlib.sha256).hexdigest())'
        assert_eq!(
            sign("secret", 1, b"hello"),
            "v1=408428ff793aadef5e352345498782b65e3b6984774ce3d3e69ccdecae458305"
        );
    }
}
