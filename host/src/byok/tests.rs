//! Tests of [`Byok`] over a real sled store: round trips, what reaches
//! the disk, moved ciphertexts, wrong master keys and restarts.

use std::fs;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::*;

const ORG_A: &str = "org_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const ORG_B: &str = "org_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

/// A distinctive key: a fixed prefix and 40 random characters.
fn test_key() -> String {
    let random = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    format!("sk-ant-TESTKEY-{}", &random[..40])
}

fn secret(key: &str) -> SecretString {
    SecretString::from(key)
}

fn open(dir: &Path, master: u8) -> (Store, Byok) {
    let store = Store::open(dir).expect("store");
    let byok = Byok::open(store.clone(), MasterKey::from_bytes([master; 32])).expect("byok");
    (store, byok)
}

fn unsealed(byok: &Byok, org: &str, provider: Provider) -> Option<String> {
    byok.key_for(org, provider)
        .expect("key_for")
        .map(|k| k.expose_secret().to_owned())
}

#[test]
fn set_replace_and_remove_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, byok) = open(dir.path(), 1);
    assert_eq!(unsealed(&byok, ORG_A, Provider::Anthropic), None);
    assert!(byok.keys(ORG_A).expect("keys").is_empty());

    let first = test_key();
    let info = byok
        .set_key(ORG_A, Provider::Anthropic, secret(&first))
        .expect("set");
    assert!(info.id.starts_with("byok_"));
    assert_eq!(
        (info.org_id.as_str(), info.provider),
        (ORG_A, Provider::Anthropic)
    );
    assert_eq!(info.last4, first[first.len() - 4..]);
    assert!(info.fingerprint.starts_with("sha256:") && info.fingerprint.len() == 7 + 16);
    assert_eq!(info.replaced_at, None);
    assert_eq!(
        unsealed(&byok, ORG_A, Provider::Anthropic),
        Some(first.clone())
    );
    // One key per provider: the others are untouched.
    assert_eq!(unsealed(&byok, ORG_A, Provider::Openai), None);
    assert_eq!(unsealed(&byok, ORG_B, Provider::Anthropic), None);

    let second = test_key();
    let newer = byok
        .set_key(ORG_A, Provider::Anthropic, secret(&second))
        .expect("replace");
    assert_ne!(newer.fingerprint, info.fingerprint);
    assert_eq!(unsealed(&byok, ORG_A, Provider::Anthropic), Some(second));
    let listed = byok.keys(ORG_A).expect("keys");
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].id, info.id, "oldest first");
    assert!(listed[0].replaced_at.is_some(), "the old one is replaced");
    assert_eq!(listed[1], newer);
    let record: Value =
        serde_json::from_slice(&byok.inner.keys.get(&info.id).expect("get").expect("record"))
            .expect("json");
    assert!(record.get("sealed").is_none(), "its ciphertext is deleted");

    let openai = byok
        .set_key(ORG_A, Provider::Openai, secret("sk-proj-openai-key-000"))
        .expect("set");
    let removed = byok
        .remove_key(ORG_A, Provider::Anthropic)
        .expect("remove")
        .expect("there was one");
    assert_eq!(removed.id, newer.id);
    assert!(removed.replaced_at.is_some());
    assert_eq!(unsealed(&byok, ORG_A, Provider::Anthropic), None);
    assert_eq!(
        byok.remove_key(ORG_A, Provider::Anthropic).expect("again"),
        None
    );
    assert_eq!(
        unsealed(&byok, ORG_A, Provider::Openai).as_deref(),
        Some("sk-proj-openai-key-000")
    );
    let listed = byok.keys(ORG_A).expect("keys");
    assert_eq!(listed.len(), 3);
    assert!(
        listed
            .iter()
            .all(|k| k.replaced_at.is_some() == (k.id != openai.id))
    );
    assert!(byok.keys(ORG_B).expect("keys").is_empty(), "orgs are apart");
}

#[test]
fn bad_input_is_refused_and_nothing_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, byok) = open(dir.path(), 1);
    for key in ["", "sk-ant with-space", "sk-ant-newline\n"] {
        let error = byok
            .set_key(ORG_A, Provider::Anthropic, secret(key))
            .expect_err(key);
        assert_eq!((error.status(), error.code()), (400, "invalid_request"));
    }
    let error = byok
        .set_key("org\0x", Provider::Openai, secret("sk-fine"))
        .expect_err("org id");
    assert!(matches!(error, ByokError::BadKey(_)));
    assert!(byok.keys(ORG_A).expect("keys").is_empty());
    assert!(byok.inner.keys.is_empty());
}

/// Every file under `dir`, read whole.
fn files(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for entry in fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push((path.display().to_string(), fs::read(&path).expect("read")));
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn the_bytes_on_disk_hold_no_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = test_key();
    let (store, byok) = open(dir.path(), 1);
    let info = byok
        .set_key(ORG_A, Provider::Anthropic, secret(&key))
        .expect("set");
    // A replaced key must not linger either.
    let later = test_key();
    byok.set_key(ORG_A, Provider::Openrouter, secret(&later))
        .expect("set");
    store.db().flush().expect("flush");
    drop((byok, store));

    let mut needles = Vec::new();
    for k in [&key, &later] {
        let bytes = k.as_bytes();
        needles.push(bytes.to_vec());
        needles.push(bytes["sk-ant-TESTKEY-".len()..].to_vec());
        needles.push(hex::encode(bytes).into_bytes());
        needles.push(hex::encode_upper(bytes).into_bytes());
        needles.push(STANDARD.encode(bytes).into_bytes());
        // base64 at each of the three alignments, without the edges that
        // depend on neighbouring bytes.
        for skip in 0..3 {
            for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
                let encoded = engine.encode(&bytes[skip..]);
                needles.push(encoded.as_bytes()[..encoded.len() - 4].to_vec());
            }
        }
    }
    let mut all = Vec::new();
    files(dir.path(), &mut all);
    assert!(!all.is_empty());
    // The scan reads what sled wrote: the record's id and fingerprint are
    // there (so a key written the same way would be found).
    assert!(all.iter().any(|(_, b)| contains(b, info.id.as_bytes())));
    assert!(
        all.iter()
            .any(|(_, b)| contains(b, info.fingerprint.as_bytes()))
    );
    for (path, bytes) in &all {
        for needle in &needles {
            assert!(
                !contains(bytes, needle),
                "{path} holds a key or an encoding of one"
            );
        }
    }
}

#[test]
fn nothing_shown_holds_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = test_key();
    let (store, byok) = open(dir.path(), 1);
    let info = byok
        .set_key(ORG_A, Provider::Anthropic, secret(&key))
        .expect("set");
    let unsealed = byok
        .key_for(ORG_A, Provider::Anthropic)
        .expect("key_for")
        .expect("some");
    let wrong = Byok::open(store, MasterKey::from_bytes([2; 32])).expect("byok");
    let master_error = wrong
        .key_for(ORG_A, Provider::Anthropic)
        .expect_err("wrong master");
    let bad_error = byok
        .set_key(ORG_A, Provider::Openai, secret(&format!("{key} x")))
        .expect_err("space");
    let shown = [
        format!("{byok:?}"),
        format!("{info:?}"),
        format!("{unsealed:?}"),
        format!("{:?}", MasterKey::from_bytes([1; 32])),
        format!("{master_error} {master_error:?}"),
        format!("{bad_error} {bad_error:?}"),
        format!("{} {:?}", Provider::Anthropic, Provider::Anthropic),
        serde_json::to_string(&byok.keys(ORG_A).expect("keys")).expect("json"),
    ];
    let tail = &key["sk-ant-TESTKEY-".len()..];
    for text in shown {
        assert!(!text.contains(tail), "{text}");
    }
}

/// `tree[id]`'s JSON record.
fn record(tree: &sled::Tree, id: &str) -> Value {
    serde_json::from_slice(&tree.get(id).expect("get").expect("record")).expect("json")
}

#[test]
fn a_ciphertext_moved_to_another_org_or_provider_does_not_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, byok) = open(dir.path(), 1);
    let key_a = test_key();
    let a = byok
        .set_key(ORG_A, Provider::Anthropic, secret(&key_a))
        .expect("set a");
    let b = byok
        .set_key(ORG_B, Provider::Anthropic, secret(&test_key()))
        .expect("set b");
    let a_openai = byok
        .set_key(ORG_A, Provider::Openai, secret(&test_key()))
        .expect("set a openai");
    let tree = store.tree("byok_keys").expect("tree");
    let sealed_a = record(&tree, &a.id)["sealed"].clone();

    // A's ciphertext into B's record, and into A's openai record.
    for (org, provider, id) in [
        (ORG_B, Provider::Anthropic, &b.id),
        (ORG_A, Provider::Openai, &a_openai.id),
    ] {
        let mut moved = record(&tree, id);
        moved["sealed"] = sealed_a.clone();
        tree.insert(id.as_bytes(), serde_json::to_vec(&moved).expect("json"))
            .expect("insert");
        let error = byok.key_for(org, provider).expect_err("moved");
        assert!(matches!(error, ByokError::MasterKey(_)), "{error}");
        assert!(error.to_string().contains("moved"), "{error}");
        assert!(!error.to_string().contains(&key_a));
    }

    // A's whole record made B's active key.
    let active = store.tree("byok_active").expect("tree");
    active
        .insert(slot(ORG_B, Provider::Anthropic), a.id.as_bytes())
        .expect("insert");
    let error = byok.key_for(ORG_B, Provider::Anthropic).expect_err("moved");
    assert!(matches!(error, ByokError::MasterKey(_)), "{error}");
    // A itself still opens.
    assert_eq!(unsealed(&byok, ORG_A, Provider::Anthropic), Some(key_a));
}

#[test]
fn a_wrong_master_key_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, byok) = open(dir.path(), 1);
    let key = test_key();
    byok.set_key(ORG_A, Provider::Anthropic, secret(&key))
        .expect("set");
    let wrong = Byok::open(store, MasterKey::from_bytes([2; 32])).expect("byok");
    let error = wrong
        .key_for(ORG_A, Provider::Anthropic)
        .expect_err("wrong master key");
    let message = error.to_string();
    assert!(matches!(error, ByokError::MasterKey(_)), "{message}");
    assert_eq!((error.status(), error.code()), (500, "internal"));
    assert!(message.contains(byok.master_key_id()), "{message}");
    assert!(message.contains(wrong.master_key_id()), "{message}");
    assert!(message.contains("KARTA_MASTER_KEY"), "{message}");
    // Listing needs no master key; setting anew replaces the unreadable one.
    assert_eq!(wrong.keys(ORG_A).expect("keys").len(), 1);
    wrong
        .set_key(ORG_A, Provider::Anthropic, secret("sk-ant-new-key"))
        .expect("set");
    assert_eq!(
        unsealed(&wrong, ORG_A, Provider::Anthropic).as_deref(),
        Some("sk-ant-new-key")
    );
}

#[test]
fn a_key_sealed_before_a_restart_opens_after() {
    let data = tempfile::tempdir().expect("tempdir");
    let key = test_key();
    let db = data.path().join("db");
    {
        let master = MasterKey::load_from(None, data.path()).expect("master");
        let byok = Byok::open(Store::open(&db).expect("store"), master).expect("byok");
        byok.set_key(ORG_A, Provider::Openrouter, secret(&key))
            .expect("set");
    }
    let master = MasterKey::load_from(None, data.path()).expect("master again");
    let byok = Byok::open(Store::open(&db).expect("store"), master).expect("byok");
    assert_eq!(unsealed(&byok, ORG_A, Provider::Openrouter), Some(key));
}
