//! The files `claude` is given in its `HOME`, its command line, and how
//! its lines are read.

use std::os::unix::fs::symlink;

use super::home::{CLAUDE_STATE_FILE, LEGACY_RESUME_FILE};
use super::*;

fn request(base: &Path) -> TurnRequest {
    let session = crate::test_session(base);
    TurnRequest {
        system: String::new(),
        history: Vec::new(),
        text: "hi".into(),
        thinking: false,
        model: String::new(),
        agent: None,
        session,
    }
}

fn harness() -> ClaudeCodeHarness {
    ClaudeCodeHarness::new(ClaudeCodeConfig {
        program: PathBuf::from("/nonexistent/claude"),
        idle_timeout: Duration::from_secs(1),
        jail: None,
        nice: None,
    })
}

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("karta-cc-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(dir.join(".claude")).expect("mkdir");
    dir
}

#[test]
fn a_lines_head_is_read_borrowed_and_a_line_it_cannot_read_goes_whole() {
    let event = r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"say \"hi\""}}"#;
    let line = format!(
        r#"{{"type":"stream_event","event":{event},"session_id":"c1","parent_tool_use_id":null,"uuid":"u"}}"#
    );
    let head: LineHead<'_> = serde_json::from_str(&line).expect("a stream_event head");
    assert_eq!(head.kind, "stream_event");
    assert!(matches!(head.kind, std::borrow::Cow::Borrowed(_)));
    assert_eq!(
        head.event.map(RawValue::get),
        Some(event),
        "the event as written"
    );
    let parsed: AnthropicEvent =
        serde_json::from_str(head.event.expect("event").get()).expect("Anthropic's");
    assert!(matches!(parsed, AnthropicEvent::ContentBlockDelta { .. }));

    let init =
        r#"{"type":"system","subtype":"init","session_id":"c1","tools":["Bash"],"model":"m"}"#;
    let head: LineHead<'_> = serde_json::from_str(init).expect("an init head");
    assert_eq!(
        (
            head.kind.as_ref(),
            head.subtype.as_deref(),
            head.session_id.as_deref()
        ),
        ("system", Some("init"), Some("c1"))
    );
    assert!(head.event.is_none());

    // Not readable as a head: the drive loop reads these whole.
    for odd in [
        r#"{"type":"result","type":"stream_event"}"#,
        r#"{"type":7}"#,
        r#"{"subtype":"init"}"#,
        r#"[1,2]"#,
    ] {
        assert!(serde_json::from_str::<LineHead<'_>>(odd).is_err(), "{odd}");
    }
}

#[test]
fn a_warm_up_exchange_only_in_apps_without_hooks_or_plugins() {
    let app = scratch();
    let settings = app.join(".claude/settings.json");
    assert!(app_has_no_hooks(&app), "no settings at all");
    for (text, quiet) in [
        (r#"{"permissions": {"allow": ["Read"]}}"#, true),
        (r#"{"hooks": {}}"#, true),
        (
            r#"{"hooks": {"Stop": [{"hooks": [{"type": "command", "command": "x"}]}]}}"#,
            false,
        ),
        (r#"{"enabledPlugins": {"p@m": true}}"#, false),
        ("not json", false),
    ] {
        std::fs::write(&settings, text).expect("write");
        assert_eq!(app_has_no_hooks(&app), quiet, "{text}");
    }
    // Hooks in the local settings count too; a link is not followed
    // and counts as hooks.
    std::fs::write(&settings, "{}").expect("write");
    std::fs::write(
        app.join(".claude/settings.local.json"),
        r#"{"hooks": {"Stop": [1]}}"#,
    )
    .expect("write");
    assert!(!app_has_no_hooks(&app));
    std::fs::remove_file(app.join(".claude/settings.local.json")).expect("rm");
    let elsewhere = scratch();
    std::fs::write(elsewhere.join("empty.json"), "{}").expect("write");
    std::fs::remove_file(&settings).expect("rm");
    symlink(elsewhere.join("empty.json"), &settings).expect("link");
    assert!(!app_has_no_hooks(&app));
    std::fs::remove_dir_all(&app).ok();
    std::fs::remove_dir_all(&elsewhere).ok();
}

#[test]
fn the_warm_up_transcript_is_removed_without_following_links() {
    let home = scratch();
    let project = home.join(".claude/projects/-tmp-ws");
    std::fs::create_dir_all(&project).expect("mkdir");
    std::fs::write(project.join("warm.jsonl"), "warm-up").expect("write");
    std::fs::write(project.join("other.jsonl"), "kept").expect("write");
    // A directory the process linked elsewhere holds a file of the same
    // name: it stays.
    let outside = scratch();
    std::fs::write(outside.join("warm.jsonl"), "not the home's").expect("write");
    symlink(&outside, home.join(".claude/projects/linked")).expect("link");
    forget_transcript(&home, "warm");
    forget_transcript(&home, "../other");
    assert!(!project.join("warm.jsonl").exists());
    assert!(project.join("other.jsonl").exists());
    assert!(outside.join("warm.jsonl").exists());
    std::fs::remove_dir_all(&home).ok();
    std::fs::remove_dir_all(&outside).ok();
}

#[test]
fn regression_issue9_links_in_claude_home_are_replaced_not_followed() {
    let base = std::env::temp_dir().join(format!("karta-cc-{}", uuid::Uuid::new_v4().simple()));
    let request = request(&base);
    let home = &request.session.home;
    let (resume, mcp_config) = (
        resume_file(&request.session),
        mcp_config_file(&request.session),
    );
    let outside = base.join("outside");
    std::fs::create_dir_all(&outside).expect("mkdir");
    std::fs::write(outside.join("secret"), "sk-ant-the-upstream-key").expect("write");
    std::fs::write(outside.join("target.json"), "untouched").expect("write");
    std::fs::write(outside.join("claude.json"), r#"{"mine": true}"#).expect("write");
    // What the process could leave in its HOME for the next start.
    symlink(outside.join("secret"), home.join(&resume)).expect("link");
    symlink(outside.join("secret"), home.join(LEGACY_RESUME_FILE)).expect("link");
    symlink("../../outside/target.json", home.join(&mcp_config)).expect("link");
    symlink(outside.join("claude.json"), home.join(CLAUDE_STATE_FILE)).expect("link");

    let spawn = harness().spawn_for(&request).expect("spawn");
    assert!(
        !spawn
            .args
            .iter()
            .any(|a| a.contains("sk-ant") || a == "--resume"),
        "the secret is not on the command line: {:?}",
        spawn.args
    );
    for (file, content) in [
        ("secret", "sk-ant-the-upstream-key"),
        ("target.json", "untouched"),
        ("claude.json", r#"{"mine": true}"#),
    ] {
        assert_eq!(
            std::fs::read_to_string(outside.join(file)).expect("read"),
            content,
            "{file} outside the home is unchanged"
        );
    }
    for file in [mcp_config.as_str(), CLAUDE_STATE_FILE] {
        assert!(
            std::fs::symlink_metadata(home.join(file))
                .expect("meta")
                .is_file(),
            "{file} is now a real file"
        );
    }
    let mcp: Value = serde_json::from_slice(&std::fs::read(home.join(&mcp_config)).expect("read"))
        .expect("json");
    assert_eq!(
        mcp["mcpServers"][MCP_SERVER_NAME]["url"],
        request.session.mcp_url
    );

    // A FIFO, or text that is not an id, is not taken either; a plain
    // id is, and remembering replaces a link rather than writing
    // through it.
    std::fs::remove_file(home.join(&resume)).expect("rm");
    let fifo = std::process::Command::new("mkfifo")
        .arg(home.join(&resume))
        .status()
        .expect("mkfifo");
    assert!(fifo.success());
    assert_eq!(remembered(home, &resume), None);
    std::fs::remove_file(home.join(&resume)).expect("rm");
    std::fs::write(home.join(&resume), "x --dangerously-skip-permissions").expect("write");
    assert_eq!(remembered(home, &resume), None);
    std::fs::remove_file(home.join(&resume)).expect("rm");
    symlink(outside.join("secret"), home.join(&resume)).expect("link");
    remember(home, &resume, "0b5c7c2e-1111-4222-8333-944445555666");
    assert_eq!(
        std::fs::read_to_string(outside.join("secret")).expect("read"),
        "sk-ant-the-upstream-key"
    );
    let spawn = harness().spawn_for(&request).expect("spawn");
    assert!(
        spawn
            .args
            .windows(2)
            .any(|w| w[0] == "--resume" && w[1] == "0b5c7c2e-1111-4222-8333-944445555666"),
        "{:?}",
        spawn.args
    );
    std::fs::remove_dir_all(&base).expect("cleanup");
}

/// The `--mcp-config` and `--resume` arguments of `spawn`.
fn mcp_config_and_resume(spawn: &Spawn) -> (String, Option<String>) {
    let after = |flag: &str| {
        spawn
            .args
            .windows(2)
            .find(|w| w[0] == flag)
            .map(|w| w[1].clone())
    };
    (
        after("--mcp-config").expect("--mcp-config"),
        after("--resume"),
    )
}

#[test]
fn sessions_sharing_a_home_keep_their_own_mcp_config_and_conversation() {
    let base = std::env::temp_dir().join(format!("karta-cc-{}", uuid::Uuid::new_v4().simple()));
    // Two sessions of one end user: one HOME, their own workspaces and
    // MCP tokens.
    let first = request(&base);
    let mut second = first.clone();
    second.session.id = "s2".into();
    second.session.workspace = base.join("workspaces/s2");
    second.session.mcp_url = "http://127.0.0.1:2/mcp/other-token".into();
    std::fs::create_dir_all(&second.session.workspace).expect("mkdir");
    let home = first.session.home.clone();

    let one = harness().spawn_for(&first).expect("spawn");
    let two = harness().spawn_for(&second).expect("spawn");
    let (config_one, resume_one) = mcp_config_and_resume(&one);
    let (config_two, resume_two) = mcp_config_and_resume(&two);
    assert_ne!(config_one, config_two, "one MCP config per session");
    assert_eq!((resume_one, resume_two), (None, None));
    for (config, session) in [
        (&config_one, &first.session),
        (&config_two, &second.session),
    ] {
        assert_eq!(Path::new(config).parent(), Some(home.as_path()));
        let mcp: Value =
            serde_json::from_slice(&std::fs::read(config).expect("read")).expect("json");
        assert_eq!(
            mcp["mcpServers"][MCP_SERVER_NAME]["url"], session.mcp_url,
            "{config} names its own session's MCP token"
        );
    }

    // Each remembers and resumes its own conversation.
    remember(&home, &resume_file(&first.session), "conversation-one");
    remember(&home, &resume_file(&second.session), "conversation-two");
    assert_ne!(resume_file(&first.session), resume_file(&second.session));
    let (_, resume_one) = mcp_config_and_resume(&harness().spawn_for(&first).expect("spawn"));
    let (_, resume_two) = mcp_config_and_resume(&harness().spawn_for(&second).expect("spawn"));
    assert_eq!(resume_one.as_deref(), Some("conversation-one"));
    assert_eq!(resume_two.as_deref(), Some("conversation-two"));

    // Forgetting one leaves the other's.
    forget_conversation(&first.session);
    assert_eq!(remembered_conversation(&first.session), None);
    assert_eq!(
        remembered_conversation(&second.session).as_deref(),
        Some("conversation-two")
    );
    std::fs::remove_dir_all(&base).expect("cleanup");
}

#[test]
fn a_conversation_remembered_under_the_old_name_is_resumed_then_forgotten() {
    let base = std::env::temp_dir().join(format!("karta-cc-{}", uuid::Uuid::new_v4().simple()));
    let request = request(&base);
    let home = &request.session.home;
    // A session whose HOME was its own, from before homes were shared.
    std::fs::write(home.join(LEGACY_RESUME_FILE), "old-conversation").expect("write");
    let (_, resume) = mcp_config_and_resume(&harness().spawn_for(&request).expect("spawn"));
    assert_eq!(resume.as_deref(), Some("old-conversation"));
    // Its own file wins once written.
    remember(home, &resume_file(&request.session), "new-conversation");
    assert_eq!(
        remembered_conversation(&request.session).as_deref(),
        Some("new-conversation")
    );
    // A forgotten conversation does not come back through the old name.
    forget_conversation(&request.session);
    assert_eq!(remembered_conversation(&request.session), None);
    std::fs::remove_dir_all(&base).expect("cleanup");
}
