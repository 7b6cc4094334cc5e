//! The light jail around harness processes (Landlock), tried from inside
//! with a shell: what it may read, write and connect to.
//!
//! Not covered, because it is not guaranteed yet: a process running as root
//! can still read `/proc/<host pid>/environ` (Landlock's ptrace scoping does
//! not stop that here); a uid of its own or a pid namespace is the next
//! step (docs/HARNESSES.md).

use std::path::PathBuf;

use karta_harness::process::{HarnessProcess, JailSpec, Spawn, landlock_available};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confined_process_reaches_only_what_its_jail_allows() {
    assert!(
        landlock_available(),
        "this kernel does not enforce Landlock; harness processes would run unconfined"
    );
    // Outside /tmp, like a real data dir.
    let base = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let workspace = base.path().join("workspace");
    let home = base.path().join("home");
    let other = base.path().join("other-session");
    for dir in [&workspace, &home, &other] {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    std::fs::write(other.join("secret.txt"), "another session's file").expect("write");
    let allowed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let denied = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = |l: &tokio::net::TcpListener| l.local_addr().expect("addr").port();
    let (allowed_port, denied_port) = (port(&allowed), port(&denied));
    tokio::spawn(async move {
        loop {
            let _ = allowed.accept().await;
        }
    });
    tokio::spawn(async move {
        loop {
            let _ = denied.accept().await;
        }
    });

    let script = format!(
        "cat {other}/secret.txt >/dev/null 2>&1 && echo READ_OTHER_SESSION
         echo hi > {ws}/note 2>/dev/null && echo WROTE_WORKSPACE
         echo hi > {home}/note 2>/dev/null && echo WROTE_HOME
         echo hi > {other}/planted 2>/dev/null && echo WROTE_OTHER_SESSION
         echo hi > /tmp/karta-jail-probe-$$ 2>/dev/null && echo WROTE_TMP
         (echo > /dev/tcp/127.0.0.1/{allowed_port}) 2>/dev/null && echo CONNECTED_ALLOWED
         (echo > /dev/tcp/127.0.0.1/{denied_port}) 2>/dev/null && echo CONNECTED_DENIED
         echo DONE",
        other = other.display(),
        ws = workspace.display(),
        home = home.display(),
    );
    let spawn = Spawn {
        program: PathBuf::from("/bin/bash"),
        args: vec!["-c".into(), script],
        cwd: workspace.clone(),
        env: [("PATH", "/usr/bin:/bin")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        stdin: false,
        stdout: true,
        jail: Some(JailSpec {
            read: Vec::new(),
            write: vec![workspace.clone(), home.clone()],
            connect_ports: vec![allowed_port],
            bind_ports: Vec::new(),
        }),
    };
    let mut process = HarnessProcess::start(&spawn).expect("starts");
    assert!(process.confined());
    let mut stdout = process.child.stdout.take().expect("stdout");
    let mut output = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut output)
        .await
        .expect("read");
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(
        lines,
        ["WROTE_WORKSPACE", "WROTE_HOME", "CONNECTED_ALLOWED", "DONE"],
        "stderr: {}",
        process.stderr_tail()
    );
    assert!(!other.join("planted").exists());
}
