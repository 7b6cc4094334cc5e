//! What the jail costs a harness process at start: `/bin/true` spawned
//! plainly (fork, exec, wait) against the same spawned in the full jail
//! (cgroups, network namespace with its relays, pid/mount/ipc/uts
//! namespaces, the root built and pivoted into, capabilities dropped,
//! Landlock and seccomp). The plain spawn is the floor.
//!
//! Run: `cargo bench --bench jail` (needs root, like the jail itself).

// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

mod common;

use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use karta_harness::process::{HarnessProcess, JailLimits, JailSpec, Spawn};

fn spawn_true(jail: Option<JailSpec>, cwd: PathBuf) -> Spawn {
    Spawn {
        program: PathBuf::from("/bin/true"),
        args: Vec::new(),
        cwd,
        env: [("PATH".to_owned(), "/usr/bin:/bin".to_owned())].into(),
        stdin: false,
        stdout: false,
        jail,
        nice: None,
    }
}

fn bench(c: &mut Criterion) {
    let runtime = common::runtime();
    let base = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let (workspace, home) = (base.path().join("workspace"), base.path().join("home"));
    for dir in [&workspace, &home.join("tmp")] {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    let spec = JailSpec {
        read: Vec::new(),
        write: vec![workspace.clone(), home.clone()],
        hidden: Vec::new(),
        scratch: Some(home.join("tmp")),
        connect_ports: vec![9],
        bind_ports: Vec::new(),
        limits: JailLimits::default(),
    };
    let mut group = c.benchmark_group("jail_spawn");
    for (name, jail) in [("plain", None), ("jailed", Some(spec))] {
        let spawn = spawn_true(jail, workspace.clone());
        group.bench_function(name, |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let mut process = HarnessProcess::start(&spawn).expect("starts");
                    let status = process.child.wait().await.expect("waits");
                    assert!(status.success(), "{}", process.stderr_tail());
                })
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50);
    targets = bench
}
criterion_main!(benches);
