//! Sealing a key: AES-256-GCM (`ring`) under a key derived from the
//! master key, a fresh random 96-bit nonce per seal, and additional
//! authenticated data binding the ciphertext to its org, provider and key
//! id.
//!
//! The AES key is HKDF-SHA256(master key, info `karta byok aes-256-gcm
//! v1`) rather than the master key itself, so the master key can seal
//! other kinds of secret later without two uses sharing one AES key.
//!
//! The additional data is `karta-byok-v1 0x00 provider 0x00 key id 0x00
//! org id`: the provider and the key id never hold `0x00` and the org id
//! comes last, so no two triples give the same bytes. A ciphertext copied
//! into another org's or provider's record therefore fails to open,
//! rather than opening as that org's key.
//!
//! Random nonces are safe for about 2³² seals under one key; a host seals
//! once per key an admin sets.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf::{HKDF_SHA256, Salt};
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::{ByokError, MasterKey, Provider};

/// The sealed format this build writes and opens.
const VERSION: u32 = 1;

/// HKDF's `info`: what the derived key is for.
const HKDF_INFO: &[u8] = b"karta byok aes-256-gcm v1";

/// A sealed key as stored in its record.
#[derive(Clone, Serialize, Deserialize)]
pub(super) struct Sealed {
    /// The format: 1.
    pub(super) v: u32,
    /// [`MasterKey::id`] of the master key it was sealed under.
    pub(super) master_key_id: String,
    /// The 12-byte nonce, base64.
    pub(super) nonce: String,
    /// The ciphertext followed by the 16-byte tag, base64.
    pub(super) ciphertext: String,
}

/// Seals and opens keys with one master key.
pub(super) struct Sealer {
    key: LessSafeKey,
    master_key_id: String,
    rng: SystemRandom,
}

/// The additional authenticated data of a key's ciphertext.
fn aad(org_id: &str, provider: Provider, key_id: &str) -> Vec<u8> {
    [
        b"karta-byok-v1".as_slice(),
        provider.as_str().as_bytes(),
        key_id.as_bytes(),
        org_id.as_bytes(),
    ]
    .join(&0u8)
}

impl Sealer {
    /// A sealer for `master`; the master key itself is not kept.
    pub(super) fn new(master: &MasterKey) -> Result<Self, ByokError> {
        let prk = Salt::new(HKDF_SHA256, &[]).extract(master.expose());
        let okm = prk
            .expand(&[HKDF_INFO], &AES_256_GCM)
            // Fails only for outputs over 255 hashes long; 32 bytes is not.
            .map_err(|_| ByokError::MasterKey("deriving the sealing key failed".into()))?;
        Ok(Sealer {
            key: LessSafeKey::new(UnboundKey::from(okm)),
            master_key_id: master.id(),
            rng: SystemRandom::new(),
        })
    }

    /// The id of the master key this sealer uses.
    pub(super) fn master_key_id(&self) -> &str {
        &self.master_key_id
    }

    /// Seals `key` for `(org_id, provider, key_id)`.
    pub(super) fn seal(
        &self,
        key: &SecretString,
        org_id: &str,
        provider: Provider,
        key_id: &str,
    ) -> Result<Sealed, ByokError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| std::io::Error::other("the system random source failed"))?;
        let plain = key.expose_secret().as_bytes();
        // Room for the tag up front: a reallocation would leave a copy of
        // the key in freed memory. The buffer is wiped when dropped.
        let mut buf = Zeroizing::new(Vec::with_capacity(plain.len() + AES_256_GCM.tag_len()));
        buf.extend_from_slice(plain);
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(org_id, provider, key_id)),
                &mut *buf,
            )
            .map_err(|_| ByokError::MasterKey("sealing failed".into()))?;
        Ok(Sealed {
            v: VERSION,
            master_key_id: self.master_key_id.clone(),
            nonce: STANDARD.encode(nonce),
            ciphertext: STANDARD.encode(buf.as_slice()),
        })
    }

    /// Opens `sealed` as the key of `(org_id, provider, key_id)`. A key
    /// sealed under another master key, and one that does not
    /// authenticate (altered, or moved from another org, provider or
    /// record), are [`ByokError::MasterKey`] errors saying which.
    pub(super) fn open(
        &self,
        sealed: &Sealed,
        org_id: &str,
        provider: Provider,
        key_id: &str,
    ) -> Result<SecretString, ByokError> {
        if sealed.master_key_id != self.master_key_id {
            return Err(ByokError::MasterKey(format!(
                "the {provider} key {key_id} of org {org_id} was sealed under master key {}, \
                 but this host runs with master key {}: start it with the master key the keys \
                 were sealed under (KARTA_MASTER_KEY or <data_dir>/secrets/master.key), or set \
                 the org's key again",
                sealed.master_key_id, self.master_key_id
            )));
        }
        let unreadable = |why: &str| {
            ByokError::MasterKey(format!(
                "the {provider} key {key_id} of org {org_id} does not open under master key {} \
                 (the one it names): {why}",
                self.master_key_id
            ))
        };
        if sealed.v != VERSION {
            return Err(unreadable(&format!(
                "sealed format {} is unknown",
                sealed.v
            )));
        }
        let nonce: [u8; NONCE_LEN] = STANDARD
            .decode(&sealed.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or_else(|| unreadable("its nonce is malformed"))?;
        let mut buf = Zeroizing::new(
            STANDARD
                .decode(&sealed.ciphertext)
                .map_err(|_| unreadable("its ciphertext is not base64"))?,
        );
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(org_id, provider, key_id)),
                &mut buf[..],
            )
            .map_err(|_| {
                unreadable("it was altered, or moved from another org, provider or record")
            })?;
        let text = std::str::from_utf8(plain).map_err(|_| unreadable("it is not text"))?;
        Ok(SecretString::from(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(byte: u8) -> Sealer {
        Sealer::new(&MasterKey::from_bytes([byte; 32])).expect("sealer")
    }

    #[test]
    fn seals_open_only_for_their_org_provider_and_id() {
        let s = sealer(1);
        let key = SecretString::from("sk-ant-api03-round-trip");
        let sealed = s
            .seal(&key, "org_a", Provider::Anthropic, "byok_1")
            .expect("seal");
        let opened = s
            .open(&sealed, "org_a", Provider::Anthropic, "byok_1")
            .expect("open");
        assert_eq!(opened.expose_secret(), key.expose_secret());

        for (org, provider, id) in [
            ("org_b", Provider::Anthropic, "byok_1"),
            ("org_a", Provider::Openai, "byok_1"),
            ("org_a", Provider::Anthropic, "byok_2"),
        ] {
            let error = s.open(&sealed, org, provider, id).expect_err(org);
            assert!(error.to_string().contains("moved"), "{error}");
        }
        let mut flipped = sealed.clone();
        let mut bytes = STANDARD.decode(&flipped.ciphertext).expect("b64");
        bytes[0] ^= 1;
        flipped.ciphertext = STANDARD.encode(bytes);
        assert!(
            s.open(&flipped, "org_a", Provider::Anthropic, "byok_1")
                .is_err()
        );
    }

    #[test]
    fn each_seal_has_its_own_nonce() {
        let s = sealer(1);
        let key = SecretString::from("sk-same");
        let a = s.seal(&key, "o", Provider::Openai, "i").expect("seal");
        let b = s.seal(&key, "o", Provider::Openai, "i").expect("seal");
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ciphertext, b.ciphertext);
    }

    #[test]
    fn another_master_key_is_named_not_tried() {
        let sealed = sealer(1)
            .seal(&SecretString::from("sk-x"), "o", Provider::Openai, "i")
            .expect("seal");
        let other = sealer(2);
        let error = other
            .open(&sealed, "o", Provider::Openai, "i")
            .expect_err("other master key");
        let message = error.to_string();
        assert!(message.contains(&sealed.master_key_id), "{message}");
        assert!(message.contains(other.master_key_id()), "{message}");
        assert!(message.contains("KARTA_MASTER_KEY"), "{message}");

        // Even with the id forged, the other key does not open it.
        let mut forged = sealed.clone();
        forged.master_key_id = other.master_key_id().to_owned();
        assert!(other.open(&forged, "o", Provider::Openai, "i").is_err());
    }
}
