//! Issue 13: the chat page in a real browser — headless Chromium (Debian's
//! package) driven by playwright-core (`browser/chat_page.mjs`, installed
//! by `scripts/install-browser.sh`). An end user on a phone-sized screen
//! sends a message and sees it answered, uploads a file, asks for a tool
//! that needs approval, reloads while the turn waits, approves from the
//! reloaded page and sees the tool's output with its fuel, then finds the
//! conversation in the list and reopens it. A screenshot is kept in
//! `target/test-artifacts/chat-page.png`.

use std::process::Command;

use karta_host::auth::Scope;
use serde_json::Value;

use crate::support::root;
use crate::tenancy::Platform;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_page_works_in_chromium() {
    let driver = root().join("browser/node_modules/playwright-core");
    assert!(
        driver.exists(),
        "playwright-core is missing: run scripts/install-browser.sh (scripts/test.sh does)"
    );
    let platform = Platform::start().await;
    let _admin = platform.key("acme", Scope::Admin);
    // acme/bot runs the support bot: its `read` tool needs approval.
    let app = crate::sessions::support_bot();
    let bot = platform.add_project("acme", "bot", app.path()).await;
    let (acme_id, _) = platform.project("acme", "shop");
    let projects = platform.host.projects();
    let origin = format!("http://{}", platform.addr);
    let embed = projects
        .auth()
        .create_embed_key(&acme_id, &bot.id, vec![origin.clone()])
        .expect("embed key");
    let url = format!("{origin}/acme/bot/?key={}", embed.key);
    let artifacts = root().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    let screenshot = artifacts.join("chat-page.png");
    let _ = std::fs::remove_file(&screenshot);

    let script = root().join("browser/chat_page.mjs");
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .arg(url)
            .arg(&screenshot)
            .output()
            .expect("node runs")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let seen: Value = stdout
        .lines()
        .last()
        .and_then(|line| serde_json::from_str(line).ok())
        .unwrap_or(Value::Null);
    assert!(
        output.status.success() && seen["step"] == "done",
        "the browser run failed at {}: {}\nstdout: {stdout}\nstderr: {stderr}",
        seen["step"],
        seen["error"]
    );
    assert!(
        seen["answer"]
            .as_str()
            .is_some_and(|a| a.contains("You said: \"hello from the browser\"")),
        "{seen}"
    );
    assert_eq!(
        seen["options"],
        serde_json::json!(["Allow once", "Allow for this chat", "Deny"]),
        "{seen}"
    );
    assert!(
        seen["fuel"]
            .as_str()
            .is_some_and(|f| f.starts_with("fuel ")),
        "{seen}"
    );
    assert!(seen["conversations"].as_u64() >= Some(1), "{seen}");
    assert!(seen["reopened"].as_u64() >= Some(2), "{seen}");
    assert_eq!(seen["tab_lands_on"], "file", "{seen}");
    assert!(
        root().join("target/test-artifacts/chat-page.png").exists(),
        "a screenshot"
    );
}
