//! What `opencode` is given in its `HOME`, and the warm-up's conditions.

use std::os::unix::fs::symlink;

use super::home::LEGACY_RESUME_FILE;
use super::*;

/// A turn's request saying "hi" to model `m` in `session`.
fn request(session: &SessionInfo) -> TurnRequest {
    TurnRequest {
        system: String::new(),
        history: Vec::new(),
        text: "hi".into(),
        thinking: false,
        model: "m".into(),
        agent: None,
        session: session.clone(),
    }
}

#[test]
fn a_warm_up_prompt_only_in_apps_without_plugins() {
    let app = std::env::temp_dir().join(format!("karta-oc-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(app.join(".opencode/agent")).expect("mkdir");
    assert!(app_has_no_plugins(&app));
    std::fs::write(app.join("opencode.json"), r#"{"agent": {}}"#).expect("write");
    assert!(app_has_no_plugins(&app));
    std::fs::write(
        app.join(".opencode/opencode.jsonc"),
        r#"{ "plugin": ["x"] }"#,
    )
    .expect("write");
    assert!(!app_has_no_plugins(&app));
    std::fs::remove_file(app.join(".opencode/opencode.jsonc")).expect("rm");
    std::fs::create_dir_all(app.join(".opencode/plugin")).expect("mkdir");
    assert!(!app_has_no_plugins(&app));
    std::fs::remove_dir(app.join(".opencode/plugin")).expect("rm");
    // A link where a plugin directory goes counts as one.
    symlink("/tmp", app.join(".opencode/plugins")).expect("link");
    assert!(!app_has_no_plugins(&app));
    std::fs::remove_dir_all(&app).ok();
}

#[test]
fn regression_issue9_links_in_opencode_home_are_replaced_not_followed() {
    let base = std::env::temp_dir().join(format!("karta-oc-{}", uuid::Uuid::new_v4().simple()));
    let session = crate::test_session(&base);
    let outside = base.join("outside");
    std::fs::create_dir_all(&outside).expect("mkdir");
    std::fs::write(outside.join("secret"), "ses_secret").expect("write");
    std::fs::write(outside.join("target.json"), "untouched").expect("write");
    let home = &session.home;
    let (resume, config_name) = (resume_file(&session), config_file(&session));
    let [config_dir, cache_dir] = xdg_dirs(&session);
    symlink(outside.join("secret"), home.join(&resume)).expect("link");
    symlink(outside.join("secret"), home.join(LEGACY_RESUME_FILE)).expect("link");
    symlink("../../outside/target.json", home.join(&config_name)).expect("link");
    // The per-session dirs' parent, planted as a link out of the HOME.
    symlink("../../outside", home.join(".karta")).expect("link");
    std::fs::write(
        session.workspace.join("opencode.json"),
        r#"{"mcp": {"x": {"type": "local", "command": ["touch", "/tmp/x"]}}}"#,
    )
    .expect("write");
    std::fs::write(session.workspace.join("AGENTS.md"), "Be brief.").expect("write");

    assert_eq!(
        remembered_conversation(&session),
        None,
        "a link is not read"
    );
    let harness = OpencodeHarness::new(OpencodeConfig {
        program: PathBuf::from("/nonexistent/opencode"),
        idle_timeout: Duration::from_secs(1),
        client: HttpClient::new(),
        jail: None,
        nice: None,
    });
    let spawn = harness.spawn_for(&request(&session), 4096).expect("spawn");
    assert_eq!(
        std::fs::read_to_string(outside.join("target.json")).expect("read"),
        "untouched"
    );
    assert_eq!(
        std::fs::read_dir(&outside).expect("read").count(),
        2,
        "nothing created through the .karta link"
    );
    for path in [
        Path::new(&config_name),
        Path::new(".karta"),
        &config_dir,
        &cache_dir,
    ] {
        let meta = std::fs::symlink_metadata(home.join(path)).expect("meta");
        assert!(!meta.file_type().is_symlink(), "{} is real", path.display());
    }
    assert!(
        !session.workspace.join("opencode.json").exists(),
        "the project config is removed"
    );
    assert_eq!(spawn.env["OPENCODE_DISABLE_PROJECT_CONFIG"], "1");
    assert_eq!(
        spawn.env["XDG_CONFIG_HOME"],
        home.join(&config_dir).display().to_string(),
        "the config dir is the session's own"
    );
    let config: Value =
        serde_json::from_slice(&std::fs::read(home.join(&config_name)).expect("read"))
            .expect("json");
    assert_eq!(
        config["instructions"],
        json!([session.workspace.join("AGENTS.md").display().to_string()])
    );
    std::fs::remove_dir_all(&base).expect("cleanup");
}

#[test]
fn sessions_sharing_a_home_keep_their_own_config_dirs_and_conversation() {
    let base = std::env::temp_dir().join(format!("karta-oc-{}", uuid::Uuid::new_v4().simple()));
    // Two sessions of one end user: one HOME, their own workspaces,
    // gateway keys and MCP tokens.
    let first = crate::test_session(&base);
    let mut second = first.clone();
    second.id = "s2".into();
    second.workspace = base.join("workspaces/s2");
    second.gateway_key = "other-key".into();
    second.mcp_url = "http://127.0.0.1:2/mcp/other-token".into();
    std::fs::create_dir_all(&second.workspace).expect("mkdir");
    let home = first.home.clone();
    let harness = OpencodeHarness::new(OpencodeConfig {
        program: PathBuf::from("/nonexistent/opencode"),
        idle_timeout: Duration::from_secs(1),
        client: HttpClient::new(),
        jail: None,
        nice: None,
    });
    let spawn = |session: &SessionInfo| harness.spawn_for(&request(session), 4096).expect("spawn");
    let (one, two) = (spawn(&first), spawn(&second));
    for name in ["OPENCODE_CONFIG", "XDG_CONFIG_HOME", "XDG_CACHE_HOME"] {
        assert_ne!(one.env[name], two.env[name], "{name} is per session");
    }
    for (spawn, session) in [(&one, &first), (&two, &second)] {
        assert_eq!(spawn.env["HOME"], home.display().to_string(), "one HOME");
        for name in ["XDG_CONFIG_HOME", "XDG_CACHE_HOME"] {
            assert!(Path::new(&spawn.env[name]).is_dir(), "{name} is made");
        }
        let config: Value =
            serde_json::from_slice(&std::fs::read(&spawn.env["OPENCODE_CONFIG"]).expect("read"))
                .expect("json");
        assert_eq!(
            config["mcp"][MCP_SERVER_NAME]["url"], session.mcp_url,
            "its own MCP token"
        );
        assert_eq!(
            config["provider"][PROVIDER_ID]["options"]["apiKey"], session.gateway_key,
            "its own gateway key"
        );
    }
    // OpenCode's data dir (its conversations) is the HOME's default,
    // shared.
    assert!(!one.env.contains_key("XDG_DATA_HOME"));

    // Each remembers and continues its own conversation.
    assert_ne!(resume_file(&first), resume_file(&second));
    remember(&home, &resume_file(&first), "ses_one");
    remember(&home, &resume_file(&second), "ses_two");
    assert_eq!(remembered_conversation(&first).as_deref(), Some("ses_one"));
    assert_eq!(remembered_conversation(&second).as_deref(), Some("ses_two"));
    std::fs::remove_dir_all(&base).expect("cleanup");
}

#[test]
fn a_conversation_remembered_under_the_old_name_is_continued() {
    let base = std::env::temp_dir().join(format!("karta-oc-{}", uuid::Uuid::new_v4().simple()));
    let session = crate::test_session(&base);
    // A session whose HOME was its own, from before homes were shared.
    std::fs::write(session.home.join(LEGACY_RESUME_FILE), "ses_old").expect("write");
    assert_eq!(
        remembered_conversation(&session).as_deref(),
        Some("ses_old")
    );
    // Its own file wins once written.
    remember(&session.home, &resume_file(&session), "ses_new");
    assert_eq!(
        remembered_conversation(&session).as_deref(),
        Some("ses_new")
    );
    std::fs::remove_dir_all(&base).expect("cleanup");
}
