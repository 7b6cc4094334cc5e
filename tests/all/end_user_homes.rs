//! Issue 11: the end user is the memory boundary. The sessions of one end
//! user of a project share one persistent `HOME` (what the harness
//! remembers about them); other end users, sessions without one, and other
//! projects get their own; deleting a session never deletes a shared home.
//!
//! The host runs the Claude Code harness with a stand-in `claude` that
//! fails at once: every turn still goes through the host's side (the
//! session's HOME and state dir are made, the app's project files copied,
//! the adapter's per-session files written in the HOME), with no real
//! harness needed. With the real `claude` and `opencode` (skipped when not
//! installed), two sessions of one end user run at once, jailed, in their
//! shared HOME, and each new process resumes its own session's
//! conversation.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use karta_host::TurnStatus;
use karta_host::app::HarnessKind;
use karta_host::harness::HarnessBinaries;
use karta_host::session::{MessageRequest, SessionError, Sessions, TurnSummary};
use karta_host::{Host, HostConfig};

use crate::sessions::support_bot;

/// A `claude` that exits at once, so a turn fails after the host has
/// prepared the session for it.
fn failing_claude(dir: &Path) -> PathBuf {
    let program = dir.join("claude");
    std::fs::write(&program, "#!/bin/sh\nexit 3\n").expect("write");
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    program
}

/// A host serving the support bot (with one project file, `notes.txt`) on
/// the stand-in `claude`, unjailed (nothing runs).
async fn start(app: &Path, data: &Path, bin: &Path) -> Host {
    start_on(app, data, |config| {
        config.harness = Some(HarnessKind::ClaudeCode);
        config.harness_binaries = HarnessBinaries {
            claude: Some(failing_claude(bin)),
            opencode: None,
        };
        config.jail = None;
    })
    .await
}

/// A host serving `app` on `data`, after `configure` has had its say.
async fn start_on(app: &Path, data: &Path, configure: impl FnOnce(&mut HostConfig)) -> Host {
    let mut config = HostConfig::new(app);
    config.data_dir = data.to_path_buf();
    config.python_mcp.cache_dir =
        Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("python-mcp-cache"));
    configure(&mut config);
    Host::start(config).await.expect("host starts")
}

async fn create(sessions: &Sessions, end_user: Option<&str>) -> String {
    sessions
        .create_for(None, BTreeMap::new(), end_user.map(str::to_owned))
        .await
        .expect("create")
        .id
}

/// Runs one turn to its end (with the stand-in `claude` it fails).
async fn turn(sessions: &Arc<Sessions>, id: &str) {
    say(sessions, id, "hi").await;
}

/// Runs a turn saying `text` to its end.
async fn say(sessions: &Arc<Sessions>, id: &str, text: &str) -> TurnSummary {
    let started = sessions
        .send(
            id,
            MessageRequest {
                text: text.into(),
                ..MessageRequest::default()
            },
        )
        .await
        .expect("send");
    let mut summary = tokio::time::timeout(Duration::from_secs(180), started.finished)
        .await
        .expect("the turn ends")
        .expect("summary");
    if summary.status != TurnStatus::Completed {
        // Say why in the assertion that follows: the turn's error event.
        let events = sessions.events_after(id, 0).unwrap_or_default();
        if let Some(error) = events
            .iter()
            .rev()
            .find(|e| matches!(e.event, karta_harness::Event::Error(_)))
        {
            summary.text = format!("{:?}", error.event);
        }
    }
    summary
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("meta").permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_of_one_end_user_share_a_home_that_outlives_them() {
    let app = support_bot();
    std::fs::write(app.path().join("notes.txt"), "the app's notes").expect("write");
    let data = tempfile::tempdir().expect("tempdir");
    let bin = tempfile::tempdir().expect("tempdir");
    let host = start(app.path(), data.path(), bin.path()).await;
    let sessions = host.sessions().clone();
    let data_dir = std::fs::canonicalize(data.path()).expect("canonical");
    let project = sessions.scope().expect("a project").project_id.clone();

    let alice_1 = create(&sessions, Some("alice")).await;
    let alice_2 = create(&sessions, Some("alice")).await;
    let bob = create(&sessions, Some("bob")).await;
    let nobody = create(&sessions, None).await;

    let home = |id: &str| sessions.home_of(id).expect("home");
    let workspace = |id: &str| data_dir.join("workspaces").join(id);
    let alice_home = home(&alice_1);
    assert_eq!(home(&alice_2), alice_home, "one end user, one home");
    assert!(
        alice_home.starts_with(data_dir.join("users").join(&project)),
        "{} is under the project's end users",
        alice_home.display()
    );
    assert_ne!(home(&bob), alice_home, "another end user, another home");
    assert_eq!(home(&nobody), data_dir.join("homes").join(&nobody));
    assert!(matches!(
        sessions.home_of("no-such-session"),
        Err(SessionError::NotFound(_))
    ));

    // A turn of each: the host makes the homes, and the adapter writes each
    // session's own MCP config (its token) into its HOME.
    turn(&sessions, &alice_1).await;
    // Alice has a home now; her second session's first turn still gets
    // the app's files (the first-turn mark is the session's, not the
    // home's).
    turn(&sessions, &alice_2).await;
    turn(&sessions, &bob).await;
    turn(&sessions, &nobody).await;
    for id in [&alice_1, &alice_2, &bob, &nobody] {
        assert_eq!(
            std::fs::read_to_string(workspace(id).join("notes.txt")).expect("read"),
            "the app's notes",
            "session {id} got the app's project files"
        );
        let mcp_config = home(id).join(format!("karta-mcp-{id}.json"));
        assert!(mcp_config.is_file(), "{}", mcp_config.display());
        assert!(
            data_dir.join("homes").join(id).is_dir(),
            "session {id} has its own state dir"
        );
    }
    assert_eq!(mode(&alice_home), 0o700, "a home is its host user's only");
    assert!(
        !home(&bob)
            .join(format!("karta-mcp-{alice_1}.json"))
            .exists(),
        "bob's home has nothing of alice's"
    );
    // Project files are copied once: what a session changed stays.
    std::fs::write(workspace(&alice_1).join("notes.txt"), "mine").expect("write");
    turn(&sessions, &alice_1).await;
    assert_eq!(
        std::fs::read_to_string(workspace(&alice_1).join("notes.txt")).expect("read"),
        "mine"
    );

    // What the harness remembered about alice survives her sessions.
    std::fs::write(alice_home.join("memory.md"), "alice likes tea").expect("write");
    sessions.delete(&alice_1).await.expect("delete");
    assert_eq!(
        std::fs::read_to_string(alice_home.join("memory.md")).expect("read"),
        "alice likes tea"
    );
    assert!(
        alice_home
            .join(format!("karta-mcp-{alice_2}.json"))
            .is_file()
    );
    assert!(!data_dir.join("homes").join(&alice_1).exists());
    sessions.delete(&alice_2).await.expect("delete");
    assert!(
        alice_home.join("memory.md").is_file(),
        "kept after her last session"
    );
    // Alice's next session finds it.
    let alice_3 = create(&sessions, Some("alice")).await;
    assert_eq!(home(&alice_3), alice_home);

    // A session without an end user keeps a scratch home, removed with it.
    let nobody_home = home(&nobody);
    assert!(nobody_home.is_dir());
    sessions.delete(&nobody).await.expect("delete");
    assert!(!nobody_home.exists());
    drop(sessions);
    host.shutdown().await;
    drop(host);

    // Another project on the same data dir (the dev org's project is named
    // after the app): the same end user id is someone else there.
    let toml = std::fs::read_to_string(app.path().join("karta.toml")).expect("read");
    std::fs::write(
        app.path().join("karta.toml"),
        toml.replace("name = \"support-bot\"", "name = \"other-bot\""),
    )
    .expect("write");
    let other = start(app.path(), data.path(), bin.path()).await;
    let sessions = other.sessions().clone();
    let other_project = sessions.scope().expect("a project").project_id.clone();
    assert_ne!(other_project, project, "another project");
    let other_alice = create(&sessions, Some("alice")).await;
    let other_home = sessions.home_of(&other_alice).expect("home");
    assert_ne!(other_home, alice_home, "another project, another home");
    assert!(other_home.starts_with(data_dir.join("users").join(&other_project)));
    turn(&sessions, &other_alice).await;
    assert!(
        !other_home.join("memory.md").exists(),
        "nothing of the other project's alice"
    );
    drop(sessions);
    other.shutdown().await;
}

/// The real harness binary, or `None` (the test is skipped) when it is not
/// installed.
fn installed(name: &str, var: &str) -> Option<PathBuf> {
    let program = std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            crate::support::root()
                .join("harnesses/node_modules/.bin")
                .join(name)
        });
    if program.exists() {
        Some(program)
    } else {
        eprintln!(
            "skipped: {} is not installed (scripts/install-harnesses.sh)",
            program.display()
        );
        None
    }
}

/// Waits (up to 30 s) until the harness process of `id` is gone.
async fn until_stopped(sessions: &Sessions, id: &str) {
    for _ in 0..300 {
        if sessions.harness_process_id(id).is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the harness process of {id} still runs");
}

/// With the real harness, jailed: two sessions of one end user run at once
/// in their shared HOME, and each new process resumes its own session's
/// conversation (the remembered ids are per session).
async fn two_sessions_of_one_end_user_resume_their_own_conversations(kind: HarnessKind) {
    let (name, var) = match kind {
        HarnessKind::ClaudeCode => ("claude", "KARTA_CLAUDE_BIN"),
        _ => ("opencode", "KARTA_OPENCODE_BIN"),
    };
    let Some(program) = installed(name, var) else {
        return;
    };
    let app = support_bot();
    let data = tempfile::tempdir().expect("tempdir");
    let host = start_on(app.path(), data.path(), |config| {
        config.harness = Some(kind);
        config.harness_binaries = HarnessBinaries {
            claude: (kind == HarnessKind::ClaudeCode).then(|| program.clone()),
            opencode: (kind == HarnessKind::Opencode).then(|| program.clone()),
        };
        config.harness_idle_timeout = Duration::from_secs(1);
    })
    .await;
    let sessions = host.sessions().clone();
    let one = create(&sessions, Some("alice")).await;
    let two = create(&sessions, Some("alice")).await;
    assert_eq!(
        sessions.home_of(&one).expect("home"),
        sessions.home_of(&two).expect("home")
    );

    let (first_one, first_two) = tokio::join!(
        say(&sessions, &one, "apples"),
        say(&sessions, &two, "bananas")
    );
    for first in [&first_one, &first_two] {
        assert_eq!(first.status, TurnStatus::Completed, "{}", first.text);
    }
    // Both processes stop when idle; the next ones resume from the
    // remembered ids in the shared HOME.
    until_stopped(&sessions, &one).await;
    until_stopped(&sessions, &two).await;
    let (second_one, second_two) =
        tokio::join!(say(&sessions, &one, "again"), say(&sessions, &two, "again"));
    assert!(
        second_one.text.contains("Earlier you said: \"apples\"."),
        "{}",
        second_one.text
    );
    assert!(
        second_two.text.contains("Earlier you said: \"bananas\"."),
        "{}",
        second_two.text
    );
    drop(sessions);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_sessions_of_one_end_user_resume_their_own_conversations() {
    two_sessions_of_one_end_user_resume_their_own_conversations(HarnessKind::ClaudeCode).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opencode_sessions_of_one_end_user_resume_their_own_conversations() {
    two_sessions_of_one_end_user_resume_their_own_conversations(HarnessKind::Opencode).await;
}

/// A harness's output is read into the host, outside the jail's memory
/// limit: a `claude` that writes hundreds of MiB on stdout and stderr with
/// no newline, then hangs, must fail its turn once a line passes the
/// adapter's limit — not have the host buffer the line while it waits for
/// a newline that never comes (the turn used to hang, holding all of it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_claude_flooding_one_endless_line_fails_its_turn_unbuffered() {
    let app = support_bot();
    let data = tempfile::tempdir().expect("tempdir");
    let bin = tempfile::tempdir().expect("tempdir");
    let program = bin.path().join("claude");
    std::fs::write(
        &program,
        "#!/bin/sh\nhead -c 67108864 /dev/zero | tr '\\0' e >&2\n\
         head -c 209715200 /dev/zero | tr '\\0' o\nexec sleep 600\n",
    )
    .expect("write");
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let host = start_on(app.path(), data.path(), |config| {
        config.harness = Some(HarnessKind::ClaudeCode);
        config.harness_binaries = HarnessBinaries {
            claude: Some(program),
            opencode: None,
        };
        config.jail = None;
    })
    .await;
    let sessions = host.sessions().clone();
    let id = create(&sessions, None).await;
    let summary = tokio::time::timeout(Duration::from_secs(60), say(&sessions, &id, "hi"))
        .await
        .expect("the turn fails once the line passes the limit, without waiting for its end");
    assert_eq!(summary.status, TurnStatus::Error, "{}", summary.text);
    assert!(
        summary
            .text
            .contains("claude wrote a line longer than 16 MiB"),
        "{}",
        summary.text
    );
    drop(sessions);
    host.shutdown().await;
}
