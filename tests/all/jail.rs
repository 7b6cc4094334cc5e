//! The jail around harness processes, attacked from inside with a shell
//! (issue 9): every way out that a harness's Bash tool could try, each
//! asserted denied with its specific symptom, and the few ways it must work.
//!
//! These need root (namespaces, cgroups); CI runs as root. Without root
//! each test prints why it is skipped.

use std::path::{Path, PathBuf};
use std::time::Duration;

use karta_harness::process::{HarnessProcess, JailLimits, JailSpec, Spawn};

struct Fixture {
    _base: tempfile::TempDir,
    workspace: PathBuf,
    home: PathBuf,
    other: PathBuf,
    data_secret: PathBuf,
}

fn fixture() -> Fixture {
    // Outside /tmp, like a real data dir.
    let base = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let workspace = base.path().join("sessions/s1/workspace");
    let home = base.path().join("sessions/s1/home");
    let other = base.path().join("sessions/s2/workspace");
    for dir in [&workspace, &home.join("tmp"), &other] {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    std::fs::write(other.join("secret.txt"), "another session's file").expect("write");
    let data_secret = base.path().join("db.secret");
    std::fs::write(&data_secret, "the store").expect("write");
    Fixture {
        _base: base,
        workspace,
        home,
        other,
        data_secret,
    }
}

fn jailed_shell(f: &Fixture, script: &str, connect: Vec<u16>, limits: JailLimits) -> Spawn {
    Spawn {
        program: PathBuf::from("/bin/bash"),
        args: vec!["-c".into(), script.into()],
        cwd: f.workspace.clone(),
        env: [
            ("PATH", "/usr/bin:/bin"),
            ("HOME", &f.home.display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
        stdin: false,
        stdout: true,
        jail: Some(JailSpec {
            read: Vec::new(),
            write: vec![f.workspace.clone(), f.home.clone()],
            hidden: Vec::new(),
            scratch: Some(f.home.join("tmp")),
            connect_ports: connect,
            bind_ports: Vec::new(),
            limits,
        }),
        nice: None,
    }
}

async fn output_of(spawn: &Spawn) -> (Vec<String>, HarnessProcess) {
    let mut process = HarnessProcess::start(spawn).expect("the jail starts");
    assert!(process.confined());
    let mut stdout = process.child.stdout.take().expect("stdout");
    let mut output = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut output)
        .await
        .expect("read");
    let lines = output.lines().map(str::to_owned).collect();
    (lines, process)
}

/// What `spawn`'s shell prints when run without its jail.
async fn unjailed_output(spawn: &Spawn) -> Vec<String> {
    let mut unjailed = spawn.clone();
    unjailed.jail = None;
    let mut process = HarnessProcess::start(&unjailed).expect("starts");
    assert!(!process.confined());
    let mut stdout = process.child.stdout.take().expect("stdout");
    let mut output = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut output)
        .await
        .expect("read");
    output.lines().map(str::to_owned).collect()
}

async fn accept_forever(listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let _ = listener.accept().await;
        }
    })
}

fn processes_with(marker: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(marker).then_some(cmdline)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_issue9_a_jailed_shell_is_denied_every_way_out() {
    if !crate::support::can_jail("the jail") {
        return;
    }
    let f = fixture();
    let relayed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let other_port = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    // 127.0.0.2 stands in for "outside": tests never send traffic to a real
    // outside or private address.
    let outside = tokio::net::TcpListener::bind("127.0.0.2:0")
        .await
        .expect("bind");
    let udp = tokio::net::UdpSocket::bind("127.0.0.2:0")
        .await
        .expect("udp");
    let port = |l: &tokio::net::TcpListener| l.local_addr().expect("addr").port();
    let (relayed_port, other_port_n, outside_port) =
        (port(&relayed), port(&other_port), port(&outside));
    let udp_port = udp.local_addr().expect("addr").port();
    let _servers = [
        accept_forever(relayed).await,
        accept_forever(other_port).await,
        accept_forever(outside).await,
    ];
    let host_pid = std::process::id();

    let script = format!(
        r#"
        cat {other}/secret.txt >/dev/null 2>&1 && echo READ_OTHER_SESSION
        cat {data} >/dev/null 2>&1 && echo READ_DATA_DIR
        ls /root >/dev/null 2>&1 && echo SAW_ROOT_HOME
        cat /proc/{host_pid}/environ >/dev/null 2>&1 && echo READ_HOST_ENVIRON
        echo "PIDS $(ls /proc | grep -cE '^[0-9]+$')"
        kill -9 {host_pid} 2>/dev/null && echo KILLED_HOST
        echo hi > {ws}/note 2>/dev/null && echo WROTE_WORKSPACE
        echo hi > {home}/note 2>/dev/null && echo WROTE_HOME
        echo hi > /tmp/scratch 2>/dev/null && echo WROTE_TMP
        echo hi > /usr/karta-probe 2>/dev/null && echo WROTE_USR
        echo hi >> /etc/passwd 2>/dev/null && echo WROTE_ETC
        echo hi > /karta-probe 2>/dev/null && echo WROTE_ROOT
        echo hi > {other}/planted 2>/dev/null && echo WROTE_OTHER_SESSION
        (echo > /dev/tcp/127.0.0.1/{relayed_port}) 2>/dev/null && echo CONNECTED_RELAY
        (echo > /dev/tcp/127.0.0.1/{other_port_n}) 2>/dev/null && echo CONNECTED_OTHER_HOST_PORT
        (echo > /dev/tcp/127.0.0.2/{outside_port}) 2>/dev/null && echo CONNECTED_OUTSIDE
        echo probe > /dev/udp/127.0.0.2/{udp_port} 2>/dev/null
        mount -t tmpfs none /mnt 2>/dev/null && echo MOUNTED
        unshare -r true 2>/dev/null && echo UNSHARED
        perl -e '$r = syscall(101, 16, 1, 0, 0); print "PTRACE ", ($r == -1 ? $!+0 : "ok"), "\n"'
        echo "HOSTNAME $(hostname)"
        grep -E '^(CapEff|CapBnd|Seccomp|NoNewPrivs):' /proc/self/status | tr -s '\t ' ' '
        setsid sleep 987654 >/dev/null 2>&1 < /dev/null &
        echo DONE
        "#,
        other = f.other.display(),
        data = f.data_secret.display(),
        ws = f.workspace.display(),
        home = f.home.display(),
    );
    let spawn = jailed_shell(&f, &script, vec![relayed_port], JailLimits::default());
    let (lines, mut process) = output_of(&spawn).await;
    let status = process.child.wait().await.expect("wait");
    assert!(status.success(), "{status}: {}", process.stderr_tail());
    let pids_seen: usize = lines
        .iter()
        .find_map(|l| l.strip_prefix("PIDS "))
        .and_then(|n| n.trim().parse().ok())
        .expect("PIDS line");
    assert!(
        pids_seen <= 4,
        "the jail sees only its own processes, saw {pids_seen}"
    );
    let lines: Vec<&str> = lines
        .iter()
        .map(String::as_str)
        .filter(|l| !l.starts_with("PIDS "))
        .collect();
    assert_eq!(
        lines,
        [
            "WROTE_WORKSPACE",
            "WROTE_HOME",
            "WROTE_TMP",
            "CONNECTED_RELAY",
            "PTRACE 1",
            "HOSTNAME karta",
            "CapEff: 0000000000000000",
            "CapBnd: 0000000000000000",
            "NoNewPrivs: 1",
            "Seccomp: 2",
            "DONE",
        ],
        "stderr: {}",
        process.stderr_tail()
    );
    // The /tmp write landed in the session's own scratch dir, not the host's.
    assert!(f.home.join("tmp/scratch").exists());
    assert!(!f.other.join("planted").exists());
    assert!(!Path::new("/usr/karta-probe").exists());
    // No datagram reached the host side.
    let mut buf = [0u8; 64];
    assert!(
        udp.try_recv_from(&mut buf).is_err(),
        "a UDP datagram left the jail"
    );
    // The setsid grandchild died with the jail's pid 1.
    wait_until_gone("sleep 987654").await;
}

/// Polls until no process runs `marker` (the kernel kills a pid namespace's
/// processes asynchronously); fails after a generous bound.
async fn wait_until_gone(marker: &str) {
    for _ in 0..200 {
        if processes_with(marker).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("still running: {:?}", processes_with(marker));
}

/// The probes above are real: without the jail the same shell reads the
/// other session and the data dir, writes the other session and reaches the
/// "outside" listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_attacks_succeed_without_the_jail() {
    let f = fixture();
    let outside = tokio::net::TcpListener::bind("127.0.0.2:0")
        .await
        .expect("bind");
    let outside_port = outside.local_addr().expect("addr").port();
    let _server = accept_forever(outside).await;
    let script = format!(
        r#"
        cat {other}/secret.txt >/dev/null 2>&1 && echo READ_OTHER_SESSION
        cat {data} >/dev/null 2>&1 && echo READ_DATA_DIR
        echo hi > {other}/planted 2>/dev/null && echo WROTE_OTHER_SESSION
        (echo > /dev/tcp/127.0.0.2/{outside_port}) 2>/dev/null && echo CONNECTED_OUTSIDE
        "#,
        other = f.other.display(),
        data = f.data_secret.display(),
    );
    let spawn = jailed_shell(&f, &script, Vec::new(), JailLimits::default());
    assert_eq!(
        unjailed_output(&spawn).await,
        [
            "READ_OTHER_SESSION",
            "READ_DATA_DIR",
            "WROTE_OTHER_SESSION",
            "CONNECTED_OUTSIDE"
        ]
    );
}

/// A descriptor the host holds without close-on-exec — one its own parent
/// passed down (a supervisor's socket, a shell's pipe, cargo's jobserver)
/// — must not reach a jailed process, which could otherwise read or write
/// whatever it names, outside every rule of the jail. Here: a file of the
/// data dir, open for reading and writing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_descriptor_the_host_inherited_does_not_reach_the_jail() {
    if !crate::support::can_jail("the jail") {
        return;
    }
    let f = fixture();
    let inherited = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&f.data_secret)
        .expect("open");
    rustix::io::fcntl_setfd(&inherited, rustix::io::FdFlags::empty()).expect("clear FD_CLOEXEC");
    let fd = std::os::fd::AsRawFd::as_raw_fd(&inherited);
    let script = format!(
        r#"
        [ -e /proc/self/fd/{fd} ] && echo HOLDS_THE_DESCRIPTOR
        grep -q store <&{fd} 2>/dev/null && echo READ_THROUGH_IT
        echo planted >&{fd} 2>/dev/null && echo WROTE_THROUGH_IT
        echo DONE
        "#
    );
    let spawn = jailed_shell(&f, &script, Vec::new(), JailLimits::default());
    let (lines, mut process) = output_of(&spawn).await;
    let status = process.child.wait().await.expect("wait");
    assert!(status.success(), "{status}: {}", process.stderr_tail());
    assert_eq!(lines, ["DONE"], "stderr: {}", process.stderr_tail());
    // An unjailed harness (`--no-jail`) gets no descriptor of the host's
    // either (it could open the file itself: this is hygiene, not a wall).
    assert_eq!(unjailed_output(&spawn).await, ["DONE"]);
    drop(inherited);
    assert_eq!(
        std::fs::read_to_string(&f.data_secret).expect("read"),
        "the store"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_issue9_a_fork_bomb_stops_at_the_process_limit() {
    if !crate::support::can_jail("the jail") {
        return;
    }
    let f = fixture();
    let limits = JailLimits {
        max_processes: 24,
        ..JailLimits::default()
    };
    // Forks until the kernel refuses; children sleep (and die with the
    // jail's pid 1 when the script ends).
    let script = r#"perl -e 'my $n = 0; for (1..500) { my $p = fork(); last unless defined $p; if ($p == 0) { sleep 60; exit 0 } $n++ } print "FORKED $n\n"'; echo DONE"#;
    let spawn = jailed_shell(&f, script, Vec::new(), limits);
    let (lines, mut process) = output_of(&spawn).await;
    let _ = process.child.wait().await;
    let forked: u64 = lines
        .iter()
        .find_map(|l| l.strip_prefix("FORKED "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no FORKED line: {lines:?} {}", process.stderr_tail()));
    assert!(
        forked < limits.max_processes,
        "forked {forked} processes past a limit of {}",
        limits.max_processes
    );
    assert_eq!(lines.last().map(String::as_str), Some("DONE"));
}

/// The jail's CPU time (what a turn's `cpu_ms` and the meter charge) is
/// what its processes burn, read again on each ask (the cgroup file stays
/// open and is read from its start each time).
#[tokio::test]
async fn the_jails_cpu_time_counts_what_its_processes_burn() {
    if !crate::support::can_jail("the jail") {
        return;
    }
    let f = fixture();
    // ~0.3 s of CPU in a child, then wait to be told to end.
    let script =
        r#"perl -e 'my $t = times; while ((times)[0] - $t < 0.3) {}'; echo BURNT; read -t 30 x"#;
    let mut spawn = jailed_shell(&f, script, Vec::new(), JailLimits::default());
    spawn.stdin = true;
    let mut process = HarnessProcess::start(&spawn).expect("the jail starts");
    let Some(before) = process.cpu_time() else {
        eprintln!("skipped: no CPU accounting controller here");
        return;
    };
    let stdout = process.child.stdout.take().expect("stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let line = lines.next_line().await.expect("read");
    assert_eq!(line.as_deref(), Some("BURNT"), "{}", process.stderr_tail());
    let after = process.cpu_time().expect("CPU time");
    assert!(
        after.saturating_sub(before) >= std::time::Duration::from_millis(250),
        "the jail burnt ~300 ms of CPU; its account says {before:?} -> {after:?}"
    );
    let again = process.cpu_time().expect("CPU time");
    assert!(again >= after, "read again: {after:?} -> {again:?}");
    drop(process.child.stdin.take());
    let _ = process.child.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_issue9_a_memory_bomb_is_killed_and_the_host_lives_on() {
    if !crate::support::can_jail("the jail") {
        return;
    }
    let f = fixture();
    let limits = JailLimits {
        memory_bytes: 96 << 20,
        ..JailLimits::default()
    };
    // 512 MiB touched, against a 96 MiB limit: the kernel kills it (137).
    let script = r#"perl -e '$x = "a" x (512 * 1024 * 1024); print "SURVIVED\n"'; echo "EXIT $?""#;
    let spawn = jailed_shell(&f, script, Vec::new(), limits);
    let (lines, mut process) = output_of(&spawn).await;
    let _ = process.child.wait().await;
    assert_eq!(lines, ["EXIT 137"], "stderr: {}", process.stderr_tail());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jail_that_cannot_be_built_refuses_to_start_and_says_which_step() {
    if !crate::support::can_jail("the jail") {
        return;
    }
    let f = fixture();
    // A tree that does not exist: refused while planning, nothing started.
    let mut spawn = jailed_shell(&f, "echo STARTED", Vec::new(), JailLimits::default());
    if let Some(jail) = spawn.jail.as_mut() {
        jail.read.push(PathBuf::from("/nonexistent/karta-package"));
    }
    let error = HarnessProcess::start(&spawn)
        .err()
        .expect("refused")
        .to_string();
    assert!(error.contains("cannot plan the jail's root"), "{error}");

    // A working directory that is not in the jail: the child's step fails
    // and is named.
    let mut spawn = jailed_shell(&f, "echo STARTED", Vec::new(), JailLimits::default());
    spawn.cwd = f.other.clone();
    let error = HarnessProcess::start(&spawn)
        .err()
        .expect("refused")
        .to_string();
    assert!(error.contains("entering the workspace failed"), "{error}");
}

/// Deleting a session kills its process group; the jail's pid namespace
/// takes with it what left the group (`setsid`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_issue9_a_setsid_grandchild_dies_when_the_process_is_killed() {
    if !crate::support::can_jail("the jail") {
        return;
    }
    let f = fixture();
    // The number is built at run time, so only the grandchild's command
    // line holds it (not the shell's own `-c` script).
    let script =
        "N=9876; setsid sleep ${N}55 >/dev/null 2>&1 < /dev/null & echo STARTED; exec sleep 1000";
    let spawn = jailed_shell(&f, script, Vec::new(), JailLimits::default());
    let mut process = HarnessProcess::start(&spawn).expect("starts");
    let mut stdout = process.child.stdout.take().expect("stdout");
    let mut first = [0u8; 8];
    tokio::io::AsyncReadExt::read_exact(&mut stdout, &mut first)
        .await
        .expect("read");
    assert_eq!(&first, b"STARTED\n");
    // The grandchild left the process group but runs in the jail.
    for _ in 0..200 {
        if !processes_with("sleep 987655").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!processes_with("sleep 987655").is_empty());
    process.kill().await;
    wait_until_gone("sleep 987655").await;
}

/// The harness writes its HOME, so it can leave links where the jail's
/// `/tmp` and `/dev/shm` come from: they are replaced, never followed — the
/// jail never binds what a link points at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_issue9_links_planted_for_tmp_and_shm_are_not_bound() {
    if !crate::support::can_jail("the jail") {
        return;
    }
    let f = fixture();
    let outside = f.other.clone();
    std::fs::remove_dir_all(f.home.join("tmp")).expect("rm");
    std::os::unix::fs::symlink(&outside, f.home.join("tmp")).expect("link");
    std::os::unix::fs::symlink(&outside, f.home.join(".shm")).expect("link");
    let script = "echo x > /tmp/from-tmp && echo x > /dev/shm/from-shm && echo WROTE";
    let spawn = jailed_shell(&f, script, Vec::new(), JailLimits::default());
    let (lines, mut process) = output_of(&spawn).await;
    let _ = process.child.wait().await;
    assert_eq!(lines, ["WROTE"], "stderr: {}", process.stderr_tail());
    assert!(!outside.join("from-tmp").exists());
    assert!(!outside.join("from-shm").exists());
    assert!(f.home.join("tmp/from-tmp").is_file());
    assert!(f.home.join(".shm/from-shm").is_file());
    assert!(outside.join("secret.txt").is_file());
}

/// A server that answers each connection's first line with `answer`.
async fn answering(listener: tokio::net::TcpListener, answer: &'static str) {
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(answer_once(stream, answer));
        }
    });
}

async fn answer_once(stream: tokio::net::TcpStream, answer: &'static str) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut stream = tokio::io::BufReader::new(stream);
    let mut line = String::new();
    if stream.read_line(&mut line).await.is_ok() {
        let _ = stream.get_mut().write_all(answer.as_bytes()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_way_out_served_in_process_takes_the_jails_connections_without_the_relay() {
    if !crate::support::can_jail("the jail") {
        return;
    }
    let f = fixture();
    // The host's listener on the port: what the relay reaches.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    answering(listener, "relayed\n").await;
    let script = format!(
        r#"
        exec 3<>/dev/tcp/127.0.0.1/{port} || exit 1
        echo ping >&3
        read -r line <&3
        echo "got:$line"
        "#
    );
    let spawn = jailed_shell(&f, &script, vec![port], JailLimits::default());

    // Claimed: the connection the jail makes is the one handed over.
    let (connections, mut handed) = tokio::sync::mpsc::unbounded_channel();
    let claim = karta_harness::jail::net::serve_in_process(port, connections);
    let server = tokio::spawn(async move {
        let mut served = 0;
        while let Some(stream) = handed.recv().await {
            answer_once(stream, "in-process\n").await;
            served += 1;
        }
        served
    });
    let (lines, _process) = output_of(&spawn).await;
    assert_eq!(lines, ["got:in-process"]);

    // Released: the port is relayed again.
    drop(claim);
    let (lines, _process) = output_of(&spawn).await;
    assert_eq!(lines, ["got:relayed"]);
    assert_eq!(
        server.await.expect("the in-process server"),
        1,
        "one connection was handed over, and the channel closed with the claim"
    );
}

/// A harness process runs at the nice value its spawn asks for, and so does
/// everything it starts; inside the jail it cannot take a higher priority
/// than the host gave it (no `CAP_SYS_NICE` there), while the same shell
/// unjailed, run by root, can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_harness_runs_at_the_nice_value_it_is_given_and_cannot_raise_its_priority() {
    if !crate::support::can_jail("the jail") {
        return;
    }
    let f = fixture();
    // Field 19 of `stat` is the nice value (`cut`'s own name has no space).
    let script = r#"
        echo "SHELL $(cut -d' ' -f19 /proc/self/stat)"
        sh -c 'echo "CHILD $(cut -d" " -f19 /proc/self/stat)"'
        perl -e 'print setpriority(0, 0, -10) ? "RAISED\n" : "REFUSED\n"'
        "#;
    let mut spawn = jailed_shell(&f, script, Vec::new(), JailLimits::default());
    spawn.nice = Some(-5);
    let (lines, mut process) = output_of(&spawn).await;
    let _ = process.child.wait().await;
    assert_eq!(
        lines,
        ["SHELL -5", "CHILD -5", "REFUSED"],
        "stderr: {}",
        process.stderr_tail()
    );

    // Unjailed, the same value; root's shell may then change it.
    let unjailed = unjailed_output(&spawn).await;
    assert_eq!(unjailed, ["SHELL -5", "CHILD -5", "RAISED"]);

    // No value: the host's own.
    spawn.nice = None;
    let own = karta_harness::process::nice_of(std::process::id()).expect("the host's nice");
    let (lines, mut process) = output_of(&spawn).await;
    let _ = process.child.wait().await;
    assert_eq!(lines[..2], [format!("SHELL {own}"), format!("CHILD {own}")]);
}
