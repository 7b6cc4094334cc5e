//! Issue 11 item 6: the operator's commands work whether or not a server
//! holds the data dir — publish, releases, activate, rollback, keys and
//! tokens — with `--json` for scripts.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::support::{ServeProcess, root};

/// `karta ARGS --data DATA`: success, stdout, stderr.
fn karta(data: &Path, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_karta"))
        .args(args)
        .arg("--data")
        .arg(data)
        .output()
        .expect("karta runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `karta ARGS --json`, which must succeed: its answer.
fn karta_json(data: &Path, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let (ok, stdout, stderr) = karta(data, &args);
    assert!(ok, "karta {args:?} failed: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// The whole release cycle twice on one data dir: first with no server (the
/// CLI opens the data dir itself), then while `karta serve` holds it (sled
/// lets one process in, so the CLI must talk to the server).
#[test]
fn publish_activate_rollback_with_and_without_a_server() {
    let data = tempfile::tempdir().expect("tempdir");
    let hello = root().join("examples/hello");
    let hello = hello.to_str().expect("utf-8");

    let org = karta_json(data.path(), &["org", "create", "acme"]);
    assert_eq!(org["slug"], "acme");
    let (ok, _, stderr) = karta(data.path(), &["org", "create", "Bad Slug"]);
    assert!(!ok && stderr.contains("400"), "{stderr}");
    // A typo in an org's name says which org and how to make it.
    let (ok, _, stderr) = karta(data.path(), &["keys", "create", "--org", "acne"]);
    assert!(
        !ok && stderr.contains("no org `acne`") && stderr.contains("karta org create acne"),
        "{stderr}"
    );
    let v1 = karta_json(data.path(), &["publish", hello, "--project", "acme/shop"]);
    assert_eq!(v1["version"], 1, "{v1}");
    assert_eq!(v1["app_name"], "hello", "the folder's name: {v1}");
    let (ok, stdout, stderr) = karta(data.path(), &["activate", "acme/shop", "v1"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("v1 is active"), "{stdout}");
    let (ok, _, stderr) = karta(data.path(), &["activate", "acme/shop", "v9"]);
    assert!(
        !ok && stderr.contains("404") && stderr.contains("acme/shop: no release v9"),
        "names the project as typed, not by its id: {stderr}"
    );
    let key = karta_json(
        data.path(),
        &["keys", "create", "--org", "acme", "--scope", "admin"],
    );
    let key = key["key"].as_str().expect("key").to_owned();
    assert!(key.starts_with("kt_live_"), "{key}");

    // Now a server holds the data dir.
    let mut server = ServeProcess::start_published(data.path());
    let v2 = karta_json(
        data.path(),
        &["publish", hello, "--project", "acme/shop", "--activate"],
    );
    assert_eq!(v2["version"], 2, "{v2}");
    let releases = karta_json(data.path(), &["releases", "acme/shop"]);
    assert_eq!(releases["active_version"], 2, "{releases}");
    assert_eq!(releases["releases"].as_array().map(Vec::len), Some(2));
    let (ok, stdout, _) = karta(data.path(), &["releases", "acme/shop"]);
    assert!(ok && stdout.contains("* v2"), "{stdout}");
    let rolled = karta_json(data.path(), &["rollback", "acme/shop"]);
    assert_eq!(rolled["active"], 1, "{rolled}");
    assert_eq!(rolled["previous"], 2, "{rolled}");
    let token = karta_json(
        data.path(),
        &["tokens", "mint", "acme/shop", "--sub", "alice"],
    );
    assert!(
        token["token"]
            .as_str()
            .is_some_and(|t| t.starts_with("eyJ")),
        "{token}"
    );
    // A rotated signing key: tokens minted before still work.
    let (ok, _, stderr) = karta(data.path(), &["tokens", "rotate-secret"]);
    assert!(ok, "{stderr}");
    let token = token["token"].as_str().expect("token").to_owned();
    let embed = karta_json(
        data.path(),
        &[
            "embed-keys",
            "create",
            "acme/shop",
            "--origin",
            "https://shop.example",
        ],
    );
    assert!(
        embed["key"]
            .as_str()
            .is_some_and(|k| k.starts_with("pk_live_")),
        "{embed}"
    );
    let budget = karta_json(
        data.path(),
        &[
            "budgets", "set", "--org", "acme", "--period", "day", "5000000",
        ],
    );
    assert_eq!(budget["budgets"][0]["cap_micros"], 5_000_000, "{budget}");
    // A key's budget, by the key's id; a key that is not acme's is 404.
    let key_id = karta_json(data.path(), &["keys", "list", "--org", "acme"])["keys"][0]["id"]
        .as_str()
        .expect("key id")
        .to_owned();
    let budget = karta_json(
        data.path(),
        &["budgets", "set", "--org", "acme", "--key", &key_id, "7"],
    );
    assert!(
        budget.to_string().contains(&key_id),
        "the key's budget is listed: {budget}"
    );
    let (ok, _, stderr) = karta(
        data.path(),
        &["budgets", "set", "--org", "acme", "--key", "key_none", "7"],
    );
    assert!(!ok && stderr.contains("404"), "{stderr}");
    let (ok, _, stderr) = karta(
        data.path(),
        &[
            "budgets",
            "set",
            "--org",
            "acme",
            "--key",
            &key_id,
            "--project",
            "shop",
            "7",
        ],
    );
    assert!(!ok && stderr.contains("cannot be used with"), "{stderr}");
    let by_key = karta_json(
        data.path(),
        &["usage", "--org", "acme", "--group-by", "key"],
    );
    assert!(by_key["rows"].is_array(), "{by_key}");
    let usage = karta_json(
        data.path(),
        &["usage", "--org", "acme", "--group-by", "project"],
    );
    assert!(usage["rows"].is_array(), "{usage}");
    let (ok, _, stderr) = karta(
        data.path(),
        &["usage", "--org", "acme", "--group-by", "weekday"],
    );
    assert!(!ok && stderr.contains("400"), "{stderr}");
    let keys = karta_json(data.path(), &["keys", "list", "--org", "acme"]);
    assert!(
        !keys.to_string().contains(&key),
        "a listing never shows a key: {keys}"
    );

    // The server serves what the CLI activated, to the key it made.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let post = |credential: String| {
        let url = format!("{}/acme/shop/v1/sessions", server.url);
        async move {
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http();
            let request = hyper::Request::post(url)
                .header("authorization", format!("Bearer {credential}"))
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
                .expect("request");
            let response = client.request(request).await.expect("response");
            let status = response.status().as_u16();
            use http_body_util::BodyExt;
            let body = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            (
                status,
                serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
            )
        }
    };
    let (status, by_token) = runtime.block_on(post(token.clone()));
    assert_eq!(status, 201, "a token from before the rotation: {by_token}");
    assert_eq!(by_token["metadata"]["end_user_id"], "alice", "{by_token}");
    let session: Value = runtime.block_on(async {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let request = hyper::Request::post(format!("{}/acme/shop/v1/sessions", server.url))
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
            .expect("request");
        let response = client.request(request).await.expect("response");
        assert_eq!(response.status(), 201);
        use http_body_util::BodyExt;
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        serde_json::from_slice(&body).expect("json")
    });
    assert_eq!(session["project"]["ref"], "acme/shop", "{session}");
    assert_eq!(session["project"]["version"], 1, "{session}");
    server.kill();
}
