//! Issue 13: the Anthropic Managed Agents adapter over real HTTP, exactly as
//! a browser client (Karta's chat widget) drives it: an embed key and an
//! allowed `Origin` give a session token; with it, idempotent creation,
//! messages, the log streamed after a seq and resumed mid-turn, tool
//! confirmations (approve, the `allow` alias, deny), an interrupt, uploads
//! (hostile names and a planted link refused or defused) read by a turn,
//! the end user's list, the transcript, and the cursor rebuilt from the
//! session's log. An expired token is a 401 a client recovers from by
//! minting a new one.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use karta_harness::sse;
use karta_host::auth::Scope;
use serde_json::{Value, json};

use crate::tenancy::{Answer, Platform};

const ORIGIN: &str = "https://shop.example";
const API: &str = "/acme/bot/v1/managed-agents";

/// The platform with acme/bot running the support bot (its `read` and
/// `write` tools need approval), an embed key for it, and the data dir.
async fn platform() -> (Platform, String, PathBuf, tempfile::TempDir) {
    let data_dir = Arc::new(Mutex::new(PathBuf::new()));
    let seen = data_dir.clone();
    let platform = Platform::start_with(move |config| {
        *seen.lock().expect("lock") = config.data_dir.clone();
    })
    .await;
    let _admin = platform.key("acme", Scope::Admin);
    let app = crate::sessions::support_bot();
    let bot = platform.add_project("acme", "bot", app.path()).await;
    let (acme_id, _) = platform.project("acme", "shop");
    let projects = platform.host.projects();
    let embed = projects
        .auth()
        .create_embed_key(&acme_id, &bot.id, vec![ORIGIN.into()])
        .expect("embed key");
    let dir = data_dir.lock().expect("lock").clone();
    (platform, embed.key, dir, app)
}

/// `POST /v1/embed/session-tokens` from `origin`.
async fn mint(platform: &Platform, embed_key: &str, origin: &str) -> Answer {
    platform
        .request(
            "POST",
            "/v1/embed/session-tokens",
            &[("content-type", "application/json"), ("origin", origin)],
            Bytes::from(json!({ "embed_key": embed_key }).to_string()),
        )
        .await
}

/// The log entries of `…/events/stream?after=`, until the stream ends or
/// `limit` entries came (then the connection is dropped). Checks each
/// frame: `event:` is the entry's type, `id:` its seq.
async fn stream(
    platform: &Platform,
    token: &str,
    id: &str,
    after: u64,
    limit: usize,
) -> Vec<Value> {
    let url = format!(
        "http://{}{API}/sessions/{id}/events/stream?after={after}",
        platform.addr
    );
    let request = hyper::Request::builder()
        .uri(url)
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = Client::builder(TokioExecutor::new())
        .build_http()
        .request(request)
        .await
        .expect("response");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut frames = sse::body_events(response.into_body(), 16 * 1024 * 1024);
    let mut entries = Vec::new();
    while entries.len() < limit {
        let Some(frame) = frames.next().await else {
            break;
        };
        let frame = frame.expect("a well-formed SSE stream");
        let entry: Value = sse::json_data(&frame).expect("JSON data");
        assert_eq!(frame.event.as_deref(), entry["type"].as_str(), "{entry}");
        assert_eq!(frame.id, Some(entry["seq"].to_string()), "{entry}");
        entries.push(entry);
    }
    entries
}

fn kinds(entries: &[Value]) -> Vec<&str> {
    entries.iter().filter_map(|e| e["type"].as_str()).collect()
}

fn seqs(entries: &[Value]) -> Vec<u64> {
    entries.iter().filter_map(|e| e["seq"].as_u64()).collect()
}

fn text(entries: &[Value]) -> String {
    entries
        .iter()
        .filter(|e| e["type"] == "agent.message")
        .filter_map(|e| e["text"].as_str())
        .collect()
}

/// Posts a user event; asserts 202 and returns its `after`.
async fn event(platform: &Platform, token: &str, id: &str, body: Value) -> u64 {
    let answer = platform
        .call(
            "POST",
            &format!("{API}/sessions/{id}/events"),
            Some(token),
            body,
        )
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    answer.json()["after"].as_u64().expect("after")
}

/// Answers the approval that `paused` (a turn's log up to its pause) ends
/// with, and reads the rest of the turn.
async fn answer(
    platform: &Platform,
    token: &str,
    id: &str,
    paused: &[Value],
    result: &str,
) -> Vec<Value> {
    let request_id = paused.last().expect("pause")["request_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let after = event(
        platform,
        token,
        id,
        json!({ "type": "user.tool_confirmation", "request_id": request_id, "result": result }),
    )
    .await;
    stream(platform, token, id, after, usize::MAX).await
}

/// Sends `text` and reads the turn's log up to where it stops.
async fn turn(platform: &Platform, token: &str, id: &str, text: &str) -> Vec<Value> {
    let after = event(
        platform,
        token,
        id,
        json!({ "type": "user.message", "text": text }),
    )
    .await;
    let entries = stream(platform, token, id, after, usize::MAX).await;
    assert_eq!(
        kinds(&entries).first(),
        Some(&"session.status_running"),
        "{entries:?}"
    );
    entries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_client_does_every_step() {
    let (platform, embed_key, data_dir, _app) = platform().await;

    // The embed flow: an allowed origin gets a token, another does not.
    let refused = mint(&platform, &embed_key, "https://evil.example").await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    let minted = mint(&platform, &embed_key, ORIGIN).await;
    assert_eq!(minted.status, 201, "{}", minted.body);
    let token = minted.json()["token"].as_str().expect("token").to_owned();
    let token = token.as_str();

    // Idempotent creation: one key, one session, also when racing.
    let create = |key: &'static str| {
        let platform = &platform;
        async move {
            platform
                .call(
                    "POST",
                    &format!("{API}/sessions"),
                    Some(token),
                    json!({ "metadata": { "end_user_id": "alice" }, "idempotency_key": key }),
                )
                .await
        }
    };
    let first = create("conversation-1").await;
    assert_eq!(first.status, 201, "{}", first.body);
    let session = first.json();
    assert_eq!(session["object"], "session");
    assert_eq!(session["status"], "idle");
    let id = session["id"].as_str().expect("id").to_owned();
    let id = id.as_str();
    let again = create("conversation-1").await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.json()["id"], id);
    let (a, b) = tokio::join!(create("conversation-2"), create("conversation-2"));
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [200, 201], "{} / {}", a.body, b.body);
    assert_eq!(a.json()["id"], b.json()["id"]);
    assert_ne!(a.json()["id"], id);

    // A message, streamed after its seq.
    let entries = turn(&platform, token, id, "hello").await;
    assert_eq!(kinds(&entries).last(), Some(&"session.status_idle"));
    assert_eq!(entries.last().expect("end")["stop_reason"], "end_turn");
    assert!(
        entries.iter().any(|e| e["type"] == "session.usage"),
        "{entries:?}"
    );
    assert!(
        text(&entries).contains("You said: \"hello\""),
        "{entries:?}"
    );
    let seen = seqs(&entries);
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    assert!(
        entries
            .iter()
            .filter(|e| e["type"] == "agent.message")
            .all(|e| e["delta"] == true)
    );
    let unknown = platform
        .call(
            "POST",
            &format!("{API}/sessions/{id}/events"),
            Some(token),
            json!({ "type": "user.dance" }),
        )
        .await;
    assert_eq!(unknown.status, 400, "{}", unknown.body);

    // Disconnect mid-stream, reconnect after the last seq seen: exactly the
    // rest, once.
    let after = event(
        &platform,
        token,
        id,
        json!({ "type": "user.message", "text": "/tool convert {\"value\": 3, \"from\": \"mi\", \"to\": \"km\"}\n/say done" }),
    )
    .await;
    let head = stream(&platform, token, id, after, 2).await;
    assert_eq!(head.len(), 2);
    let last_seen = *seqs(&head).last().expect("seq");
    let tail = stream(&platform, token, id, last_seen, usize::MAX).await;
    let whole: Vec<Value> = head.iter().chain(&tail).cloned().collect();
    let log = platform
        .call(
            "GET",
            &format!("{API}/sessions/{id}"),
            Some(token),
            Value::Null,
        )
        .await
        .json();
    let logged: Vec<Value> = log["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["seq"].as_u64() > Some(after))
        .cloned()
        .collect();
    assert_eq!(whole, logged);
    assert!(kinds(&whole).contains(&"agent.tool_use"), "{whole:?}");
    let result = whole
        .iter()
        .find(|e| e["type"] == "agent.tool_result")
        .expect("result");
    assert_eq!(result["tool"], "convert");
    assert!(
        result["_meta"]["fuel"].as_u64().is_some_and(|f| f > 0),
        "{result}"
    );
    assert!(result["_meta"]["duration_ms"].is_u64(), "{result}");

    // Upload a file, then a turn reads it with a tool that needs approval.
    let upload = |name: &str, content: &str| {
        use base64::Engine;
        let body = json!({
            "name": name,
            "content_base64": base64::engine::general_purpose::STANDARD.encode(content),
        });
        let platform = &platform;
        async move {
            platform
                .call(
                    "POST",
                    &format!("{API}/sessions/{id}/files"),
                    Some(token),
                    body,
                )
                .await
        }
    };
    let placed = upload("notes.txt", "secret-sauce-42\n").await;
    assert_eq!(placed.status, 201, "{}", placed.body);
    assert_eq!(placed.json()["path"], "uploads/notes.txt");
    let read = "/tool read {\"path\": \"uploads/notes.txt\"}";
    let paused = turn(&platform, token, id, read).await;
    let pause = paused.last().expect("pause");
    assert_eq!(pause["type"], "session.status_idle", "{paused:?}");
    assert_eq!(pause["stop_reason"], "requires_action");
    assert_eq!(pause["tool"], "read");
    assert_eq!(
        pause["options"],
        json!(["approve_once", "approve_session", "deny"])
    );
    let request_id = pause["request_id"].as_str().expect("request_id");
    // Mid-turn (the turn waits): a reconnect after the first entry gets
    // exactly the rest of what was logged.
    let again = stream(
        &platform,
        token,
        id,
        paused[0]["seq"].as_u64().expect("seq"),
        usize::MAX,
    )
    .await;
    assert_eq!(again, paused[1..]);
    let session = platform
        .call(
            "GET",
            &format!("{API}/sessions/{id}"),
            Some(token),
            Value::Null,
        )
        .await
        .json();
    assert_eq!(
        session["requires_action"]["request_id"], request_id,
        "{session}"
    );
    let busy = platform
        .call(
            "POST",
            &format!("{API}/sessions/{id}/events"),
            Some(token),
            json!({ "type": "user.message", "text": "hi" }),
        )
        .await;
    assert_eq!(busy.status, 409, "{}", busy.body);
    let after = event(
        &platform,
        token,
        id,
        json!({ "type": "user.tool_confirmation", "request_id": request_id, "result": "approve_once" }),
    )
    .await;
    assert!(after >= pause["seq"].as_u64().expect("seq"));
    let rest = stream(
        &platform,
        token,
        id,
        pause["seq"].as_u64().expect("seq"),
        usize::MAX,
    )
    .await;
    let result = rest
        .iter()
        .find(|e| e["type"] == "agent.tool_result")
        .expect("result");
    assert!(
        result["output"].to_string().contains("secret-sauce-42"),
        "{result}"
    );
    assert_eq!(result["is_error"], false);
    assert!(
        result["_meta"]["fuel"].as_u64().is_some_and(|f| f > 0),
        "{result}"
    );
    assert_eq!(
        rest.last().expect("end")["stop_reason"],
        "end_turn",
        "{rest:?}"
    );
    assert!(text(&rest).contains("Tool read returned"), "{rest:?}");

    // The old `allow` alias approves too; `deny` denies.
    let paused = turn(&platform, token, id, read).await;
    let rest = answer(&platform, token, id, &paused, "allow").await;
    assert_eq!(rest.last().expect("end")["status"], "completed", "{rest:?}");
    let paused = turn(&platform, token, id, read).await;
    let rest = answer(&platform, token, id, &paused, "deny").await;
    let denied = rest
        .iter()
        .find(|e| e["type"] == "agent.tool_result")
        .expect("result");
    assert_eq!(denied["is_error"], true, "{denied}");
    assert_eq!(denied["tool"], "read");
    let end = rest.last().expect("end");
    assert_eq!(
        (&end["stop_reason"], &end["status"]),
        (&json!("end_turn"), &json!("denied"))
    );

    // An interrupt stops the running (here: waiting) turn.
    let paused = turn(&platform, token, id, read).await;
    let after = event(&platform, token, id, json!({ "type": "user.interrupt" })).await;
    assert!(after >= paused.last().expect("pause")["seq"].as_u64().expect("seq"));
    let rest = stream(&platform, token, id, after, usize::MAX).await;
    let end = rest.last().expect("end");
    assert_eq!(
        (&end["type"], &end["status"]),
        (&json!("session.status_idle"), &json!("cancelled")),
        "{rest:?}"
    );

    // Hostile uploads: refused; a link planted at `uploads` is not followed.
    for name in ["../x", "a/b", ".hidden", "a\0b", "..", ""] {
        let refused = upload(name, "x").await;
        assert_eq!(refused.status, 400, "{name:?}: {}", refused.body);
        assert_eq!(refused.json()["error"], "invalid_file_name", "{name:?}");
    }
    let not_base64 = platform
        .call(
            "POST",
            &format!("{API}/sessions/{id}/files"),
            Some(token),
            json!({ "name": "a.txt", "content_base64": "%%%" }),
        )
        .await;
    assert_eq!(not_base64.status, 400, "{}", not_base64.body);
    let workspace = data_dir.join("workspaces").join(id);
    let outside = tempfile::tempdir().expect("tempdir");
    std::fs::remove_dir_all(workspace.join("uploads")).expect("rm uploads");
    std::os::unix::fs::symlink(outside.path(), workspace.join("uploads")).expect("plant link");
    let placed = upload("planted.txt", "inside").await;
    assert_eq!(placed.status, 201, "{}", placed.body);
    assert!(
        std::fs::read_dir(outside.path())
            .expect("ls")
            .next()
            .is_none(),
        "nothing outside"
    );
    assert!(
        !std::fs::symlink_metadata(workspace.join("uploads"))
            .expect("stat")
            .is_symlink()
    );
    assert_eq!(
        std::fs::read_to_string(workspace.join("uploads/planted.txt")).expect("read"),
        "inside"
    );
    let victim = outside.path().join("victim.txt");
    std::fs::write(&victim, "untouched").expect("write");
    std::os::unix::fs::symlink(&victim, workspace.join("uploads/link.txt")).expect("plant link");
    assert_eq!(upload("link.txt", "new").await.status, 201);
    assert_eq!(std::fs::read_to_string(&victim).expect("read"), "untouched");
    // Size: past the 1 MiB JSON limit is fine, past 10 MiB decoded is 413.
    let big = "x".repeat(2 * 1024 * 1024);
    assert_eq!(upload("big.txt", &big).await.status, 201);
    let huge = "x".repeat(10 * 1024 * 1024 + 1);
    let refused = upload("huge.txt", &huge).await;
    assert_eq!(refused.status, 413, "{}", refused.body);
    assert_eq!(refused.json()["error"], "file_too_large");
    // Count: 100 files at most; replacing one is fine.
    for n in 0..100 {
        std::fs::write(workspace.join(format!("uploads/f{n}.txt")), "x").expect("write");
    }
    let refused = upload("one-more.txt", "x").await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_eq!(refused.json()["error"], "too_many_files");
    assert_eq!(upload("f7.txt", "replaced").await.status, 201);
    // The flat routes serve the token's project too.
    let flat = platform
        .call(
            "GET",
            &format!("/v1/managed-agents/sessions/{id}"),
            Some(token),
            Value::Null,
        )
        .await;
    assert_eq!(flat.status, 200, "{}", flat.body);
    assert_eq!(flat.json()["id"], id);

    // The end user's conversations, newest first; the project's own
    // (without an end user) apart.
    let anonymous = platform
        .call("POST", &format!("{API}/sessions"), Some(token), json!({}))
        .await;
    assert_eq!(anonymous.status, 201, "{}", anonymous.body);
    let list = platform
        .call(
            "GET",
            &format!("{API}/sessions?end_user=alice"),
            Some(token),
            Value::Null,
        )
        .await;
    assert_eq!(list.status, 200, "{}", list.body);
    let data = list.json()["data"].clone();
    let ids: Vec<&str> = data
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert_eq!(ids.len(), 2, "{data}");
    assert_eq!(ids[1], id, "newest first");
    assert_eq!(data[1]["title"], "hello");
    assert!(data[1]["last_activity_at"].is_string() && data[1]["created_at"].is_string());
    let mine = platform
        .call("GET", &format!("{API}/sessions"), Some(token), Value::Null)
        .await
        .json();
    assert_eq!(mine["data"].as_array().map(Vec::len), Some(1), "{mine}");
    assert_eq!(mine["data"][0]["id"], anonymous.json()["id"]);

    // A verified end user's token lists its own sessions, whatever the
    // query says, and cannot reach alice's.
    let bob = platform.token("acme", "bot", Some("bob"), None);
    let listed = platform
        .call(
            "GET",
            &format!("{API}/sessions?end_user=alice"),
            Some(&bob),
            Value::Null,
        )
        .await;
    assert_eq!(listed.json()["data"], json!([]), "{}", listed.body);
    for path in [
        format!("{API}/sessions/{id}"),
        format!("{API}/sessions/{id}/transcript?end_user=alice"),
    ] {
        let refused = platform.call("GET", &path, Some(&bob), Value::Null).await;
        assert_eq!(refused.status, 404, "{path}: {}", refused.body);
    }

    // The transcript, for its end user only.
    let transcript = platform
        .call(
            "GET",
            &format!("{API}/sessions/{id}/transcript?end_user=alice"),
            Some(token),
            Value::Null,
        )
        .await;
    assert_eq!(transcript.status, 200, "{}", transcript.body);
    let messages = transcript.json()["messages"].clone();
    assert_eq!(messages[0]["role"], "user");
    assert_eq!(
        messages[0]["parts"],
        json!([{ "type": "text", "text": "hello" }])
    );
    assert_eq!(messages[1]["role"], "assistant");
    assert!(
        messages[1]["parts"][0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("You said"))
    );
    let tool = messages
        .as_array()
        .expect("messages")
        .iter()
        .flat_map(|m| m["parts"].as_array().cloned().unwrap_or_default())
        .find(|p| p["type"] == "tool" && p["tool"] == "read" && p["is_error"] == false)
        .expect("the read tool's part");
    assert_eq!(tool["input"], json!({ "path": "uploads/notes.txt" }));
    assert!(
        tool["output"].to_string().contains("secret-sauce-42"),
        "{tool}"
    );
    for other in ["?end_user=bob", ""] {
        let refused = platform
            .call(
                "GET",
                &format!("{API}/sessions/{id}/transcript{other}"),
                Some(token),
                Value::Null,
            )
            .await;
        assert_eq!(refused.status, 404, "{other}: {}", refused.body);
    }

    // The cursor, rebuilt from the log: its last seq is the stream's.
    let session = platform
        .call(
            "GET",
            &format!("{API}/sessions/{id}"),
            Some(token),
            Value::Null,
        )
        .await
        .json();
    let events = session["events"].as_array().expect("events");
    assert_eq!(events.last().expect("last")["seq"], end["seq"], "{session}");
    assert!(seqs(events).windows(2).all(|w| w[0] < w[1]));
    assert_eq!(session["status"], "idle");
    assert!(
        stream(
            &platform,
            token,
            id,
            end["seq"].as_u64().expect("seq"),
            usize::MAX
        )
        .await
        .is_empty()
    );
}

/// A token past its `exp` is a 401 `token_expired`; the client mints a new
/// one from its embed key once and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_recovered_by_minting_again() {
    let (platform, embed_key, _data, _app) = platform().await;
    let old = platform.token("acme", "bot", None, Some(1));
    let created = platform
        .call("POST", &format!("{API}/sessions"), Some(&old), json!({}))
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.json()["id"].as_str().expect("id").to_owned();
    // 1 s of life and 5 s of leeway for clock skew.
    tokio::time::sleep(Duration::from_millis(7_500)).await;
    let path = format!("{API}/sessions/{id}/events");
    let body = json!({ "type": "user.message", "text": "hello again" });
    let expired = platform.call("POST", &path, Some(&old), body.clone()).await;
    assert_eq!(expired.status, 401, "{}", expired.body);
    assert_eq!(expired.json()["error"], "token_expired");
    let minted = mint(&platform, &embed_key, ORIGIN).await;
    assert_eq!(minted.status, 201, "{}", minted.body);
    let fresh = minted.json()["token"].as_str().expect("token").to_owned();
    let accepted = platform.call("POST", &path, Some(&fresh), body).await;
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    let entries = stream(&platform, &fresh, &id, 0, usize::MAX).await;
    assert!(text(&entries).contains("hello again"), "{entries:?}");
}
