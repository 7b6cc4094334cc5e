//! Releases (issue 11): publishing immutable versions of a project's app,
//! the active pointer with rollback, hostile uploads, and the pointer
//! surviving `kill -9` at any instant.
//!
//! Real sled stores and file systems in temporary directories; the crash
//! test re-runs this binary as a child (`releases::activation_child`) and
//! kills it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use flate2::Compression;
use flate2::write::GzEncoder;
use karta_host::plugin::{ArtifactSource, PluginRuntime, RuntimeConfig};
use karta_host::release::{
    PublishRequest, ReleaseError, Releases, UploadLimits, git_commit, pack_dir, unpack,
};
use karta_host::store::Store;
use tar::{EntryType, Header};

use crate::sessions::support_bot;
use crate::support::{component, root, runtime};

const PROJECT: &str = "org/hello";

/// `examples/hello`, packed once.
fn hello_archive() -> &'static [u8] {
    static ARCHIVE: OnceLock<Vec<u8>> = OnceLock::new();
    ARCHIVE.get_or_init(|| pack_dir(&root().join("examples/hello")).expect("packs"))
}

/// Opens the releases of a data dir.
fn open(data: &Path) -> Releases {
    let store = Store::open(&data.join("db")).expect("store opens");
    Releases::open(store, data).expect("releases open")
}

fn request<'a>(project_id: &'a str, archive: &'a [u8]) -> PublishRequest<'a> {
    PublishRequest {
        project_id,
        archive,
        publisher: "alice",
        git_commit: Some("abc123".into()),
        app_name: None,
    }
}

/// Every path under `dir` (recursively, links not followed) with its size.
fn files_under(dir: &Path) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries.flatten() {
            let meta = std::fs::symlink_metadata(entry.path()).expect("stat");
            out.insert(entry.path(), meta.len());
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    out
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_lists_gets_and_shares_one_read_only_tree() {
    let data = tempfile::tempdir().expect("tempdir");
    let releases = open(data.path());
    let archive = hello_archive();
    assert_eq!(
        pack_dir(&root().join("examples/hello")).expect("packs"),
        archive,
        "packing is deterministic"
    );

    let started = Instant::now();
    let v1 = releases
        .publish(runtime(), request(PROJECT, archive))
        .await
        .expect("publishes");
    eprintln!("publish of examples/hello: {:?}", started.elapsed());
    assert_eq!(v1.version, 1);
    assert_eq!(
        (v1.project_id.as_str(), v1.publisher.as_str()),
        (PROJECT, "alice")
    );
    assert_eq!(v1.git_commit.as_deref(), Some("abc123"));
    assert_eq!(
        (v1.app_name.as_str(), v1.harness.as_str()),
        ("hello", "claude-code")
    );
    assert_eq!((v1.files, v1.size_bytes), (1, archive.len() as u64));
    assert!(v1.plugins.is_empty());
    assert!(v1.digest.len() == 64 && v1.digest.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(
        v1.created_at.starts_with("20") && v1.created_at.ends_with('Z'),
        "RFC 3339: {}",
        v1.created_at
    );
    assert_eq!(
        releases.active(PROJECT).expect("reads"),
        None,
        "publish never activates"
    );

    let v2 = releases
        .publish(runtime(), request(PROJECT, archive))
        .await
        .expect("publishes again");
    assert_eq!((v2.version, &v2.digest), (2, &v1.digest));
    assert_eq!(releases.app_dir(&v1), releases.app_dir(&v2), "one tree");
    assert_eq!(
        names_in(&data.path().join("releases/trees")),
        [v1.digest.as_str()]
    );
    assert_eq!(
        names_in(&data.path().join("releases/blobs")),
        [format!("{}.tar.gz", v1.digest)]
    );
    assert_eq!(
        std::fs::read(releases.archive_path(&v1)).expect("blob"),
        archive,
        "the blob is the archive as uploaded"
    );
    assert!(names_in(&data.path().join("releases/staging")).is_empty());

    assert_eq!(
        releases.list(PROJECT).expect("lists"),
        [v1.clone(), v2.clone()]
    );
    assert_eq!(releases.get(PROJECT, 1).expect("gets"), Some(v1.clone()));
    assert_eq!(releases.get(PROJECT, 3).expect("gets"), None);
    assert!(releases.list("org/other").expect("lists").is_empty());
    let actions: Vec<_> = releases
        .audit(PROJECT)
        .expect("audit")
        .into_iter()
        .map(|e| (e.action, e.from, e.to))
        .collect();
    assert_eq!(
        actions,
        [("publish".into(), None, 1), ("publish".into(), None, 2)]
    );

    let dir = releases.app_dir(&v1);
    let app = karta_host::app::load(&dir).expect("the tree loads");
    // Without `karta.toml` `name` the app is named after its folder (the
    // digest), so the release names it after the project instead.
    assert_eq!(app.name, v1.digest);
    assert!(app.instructions.contains("friendly assistant"));
    for (path, _) in files_under(&dir).into_iter().chain([(dir.clone(), 0)]) {
        let meta = std::fs::symlink_metadata(&path).expect("stat");
        let mode = meta.permissions().mode() & 0o7777;
        let expected = if meta.is_dir() { 0o555 } else { 0o444 };
        assert_eq!(mode, expected, "{} is read-only", path.display());
    }

    // Versions survive a restart.
    drop(releases);
    let releases = open(data.path());
    assert_eq!(releases.list(PROJECT).expect("lists"), [v1, v2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_compiles_plugins_into_the_runtime_cache() {
    let app = support_bot();
    let archive = pack_dir(app.path()).expect("packs");
    let data = tempfile::tempdir().expect("tempdir");
    let cache = data.path().join("components");
    let config = || RuntimeConfig {
        cache_dir: Some(cache.clone()),
        max_concurrent_instances: 4,
        ..RuntimeConfig::default()
    };
    let releases = open(data.path());
    let info = releases
        .publish(
            &PluginRuntime::new(config()).expect("runtime"),
            request("org/bot", &archive),
        )
        .await
        .expect("publishes");
    assert_eq!(info.app_name, "support-bot");
    assert_eq!(info.plugins, ["units", "files"]);
    assert!(
        names_in(&cache).len() >= 2,
        "both components compiled to disk: {:?}",
        names_in(&cache)
    );

    // Serving the release later (a new process: a new runtime on the same
    // cache) loads artifacts and never compiles.
    let spec = karta_host::app::load(&releases.app_dir(&info)).expect("loads");
    let later = PluginRuntime::new(config()).expect("runtime");
    for plugin in &spec.plugins {
        assert!(plugin.path.starts_with(releases.app_dir(&info)));
        let loaded = later
            .load_file(&plugin.path, plugin.grant.clone())
            .await
            .expect("loads");
        assert_eq!(
            loaded.artifact_source(),
            ArtifactSource::Disk,
            "{}",
            plugin.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activate_rollback_and_the_audit_log() {
    let data = tempfile::tempdir().expect("tempdir");
    let releases = open(data.path());
    assert_eq!(releases.active(PROJECT).expect("reads"), None);
    let e = releases
        .rollback(PROJECT, None, "bob")
        .expect_err("nothing active");
    assert_eq!((e.status(), e.code()), (404, "not_found"), "{e}");
    for _ in 0..2 {
        releases
            .publish(runtime(), request(PROJECT, hello_archive()))
            .await
            .expect("publishes");
    }

    let a = releases.activate(PROJECT, 1, "bob").expect("activates v1");
    assert_eq!((a.previous, a.active), (None, 1));
    let e = releases
        .rollback(PROJECT, None, "bob")
        .expect_err("v1 was first");
    assert!(e.to_string().contains("first version activated"), "{e}");
    let a = releases.activate(PROJECT, 2, "bob").expect("activates v2");
    assert_eq!((a.previous, a.active), (Some(1), 2));
    let a = releases
        .rollback(PROJECT, None, "carol")
        .expect("rolls back");
    assert_eq!((a.previous, a.active), (Some(2), 1));
    assert_eq!(
        releases.active(PROJECT).expect("reads").map(|r| r.version),
        Some(1)
    );

    let log = releases.audit(PROJECT).expect("audit");
    let actions: Vec<_> = log
        .iter()
        .map(|e| (e.action.as_str(), e.from, e.to))
        .collect();
    assert_eq!(
        actions,
        [
            ("publish", None, 1),
            ("publish", None, 2),
            ("activate", None, 1),
            ("activate", Some(1), 2),
            ("rollback", Some(2), 1),
        ]
    );
    assert_eq!(log[4].actor, "carol");

    let a = releases
        .rollback(PROJECT, Some(2), "carol")
        .expect("rolls to v2");
    assert_eq!((a.previous, a.active), (Some(1), 2));

    // A missing version: NotFound, and nothing changes.
    let before = releases.audit(PROJECT).expect("audit").len();
    for e in [
        releases.activate(PROJECT, 9, "bob").expect_err("no v9"),
        releases
            .rollback(PROJECT, Some(0), "bob")
            .expect_err("no v0"),
        releases
            .activate("org/none", 1, "bob")
            .expect_err("no project"),
    ] {
        assert_eq!((e.status(), e.code()), (404, "not_found"), "{e}");
    }
    assert_eq!(
        releases.active(PROJECT).expect("reads").map(|r| r.version),
        Some(2)
    );
    assert_eq!(releases.audit(PROJECT).expect("audit").len(), before);
    assert_eq!(releases.active("org/none").expect("reads"), None);

    // The pointer is durable.
    drop(releases);
    let releases = open(data.path());
    assert_eq!(
        releases.active(PROJECT).expect("reads").map(|r| r.version),
        Some(2)
    );
}

// ---- hostile uploads -------------------------------------------------

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes).expect("compresses");
    encoder.finish().expect("compresses")
}

/// A tar of members written by `build`.
fn tar_gz(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    build(&mut builder);
    gz(&builder.into_inner().expect("tar"))
}

/// A header of `kind` whose name field holds `name` as is (`set_path`
/// refuses `..` and absolute names; an attacker's tool does not).
fn raw_header(name: &[u8], kind: EntryType, size: u64) -> Header {
    let mut header = Header::new_gnu();
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_size(size);
    header.set_mtime(0);
    header.set_cksum();
    header
}

fn file(builder: &mut tar::Builder<Vec<u8>>, name: &[u8], data: &[u8]) {
    let header = raw_header(name, EntryType::Regular, data.len() as u64);
    builder.append(&header, data).expect("appends");
}

fn special(builder: &mut tar::Builder<Vec<u8>>, name: &str, kind: EntryType, link: Option<&str>) {
    let mut header = raw_header(name.as_bytes(), kind, 0);
    if let Some(link) = link {
        header.set_link_name_literal(link).expect("link name");
    }
    if kind == EntryType::Char {
        header.set_device_major(1).expect("major");
        header.set_device_minor(3).expect("minor");
    }
    header.set_cksum();
    builder.append(&header, std::io::empty()).expect("appends");
}

/// A PAX header (`x`) giving the next member `path`.
fn pax_path(builder: &mut tar::Builder<Vec<u8>>, path: &str) {
    let rest = format!(" path={path}\n");
    let mut len = rest.len() + 1;
    while len.to_string().len() + rest.len() != len {
        len += 1;
    }
    let record = format!("{len}{rest}");
    let header = raw_header(b"pax", EntryType::XHeader, record.len() as u64);
    builder.append(&header, record.as_bytes()).expect("appends");
}

/// Unpacks `archive` (made knowing the test's base directory) into
/// `base/parent/dest`, asserts the refusal, and that nothing was written
/// outside `dest`.
fn refused(
    limits: &UploadLimits,
    archive: impl FnOnce(&Path) -> Vec<u8>,
    (status, code): (u16, &str),
    says: &str,
) -> ReleaseError {
    let base = tempfile::tempdir().expect("tempdir");
    let dest = base.path().join("parent/dest");
    std::fs::create_dir_all(&dest).expect("mkdir");
    std::fs::write(base.path().join("parent/sibling"), "keep").expect("write");
    let archive = archive(base.path());
    let before = files_under(base.path());
    let error = unpack(&archive, &dest, limits).expect_err("refused");
    assert_eq!((error.status(), error.code()), (status, code), "{error}");
    assert!(
        error.to_string().contains(says),
        "{error:?} should say {says:?}"
    );
    let outside = |all: BTreeMap<PathBuf, u64>| {
        all.into_iter()
            .filter(|(path, _)| !path.starts_with(&dest))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(
        outside(files_under(base.path())),
        outside(before),
        "nothing outside dest"
    );
    error
}

const BAD: (u16, &str) = (400, "invalid_archive");
const BIG: (u16, &str) = (413, "archive_too_large");

#[test]
fn hostile_names_links_and_special_files_are_refused() {
    let limits = UploadLimits::default();
    let ok = |b: &mut tar::Builder<Vec<u8>>| file(b, b"CLAUDE.md", b"hi");
    refused(
        &limits,
        |_| {
            tar_gz(|b| {
                ok(b);
                file(b, b"../escape", b"x")
            })
        },
        BAD,
        "../escape",
    );
    refused(
        &limits,
        |_| tar_gz(|b| file(b, b"a/../../b", b"x")),
        BAD,
        "a/../../b",
    );
    refused(
        &limits,
        |base| {
            let target = base.join("abs/path");
            tar_gz(|b| file(b, target.to_str().expect("utf-8").as_bytes(), b"x"))
        },
        BAD,
        "absolute",
    );
    refused(
        &limits,
        |_| tar_gz(|b| pax_path(b, "x")),
        BAD,
        "missing member",
    );
    refused(
        &limits,
        |_| {
            tar_gz(|b| {
                pax_path(b, "../pax");
                file(b, b"innocent", b"x")
            })
        },
        BAD,
        "../pax",
    );
    refused(
        &limits,
        |_| tar_gz(|b| special(b, "passwd", EntryType::Symlink, Some("/etc/passwd"))),
        BAD,
        "passwd: symbolic link",
    );
    refused(
        &limits,
        |_| tar_gz(|b| special(b, "passwd", EntryType::Link, Some("/etc/passwd"))),
        BAD,
        "passwd: hard link",
    );
    refused(
        &limits,
        |_| tar_gz(|b| special(b, "null", EntryType::Char, None)),
        BAD,
        "null: character device",
    );
    refused(
        &limits,
        |_| tar_gz(|b| special(b, "pipe", EntryType::Fifo, None)),
        BAD,
        "pipe: FIFO",
    );
    refused(
        &limits,
        |_| tar_gz(|b| file(b, b"caf\xe9.md", b"x")),
        BAD,
        "not UTF-8",
    );
    refused(
        &limits,
        |_| {
            tar_gz(|b| {
                ok(b);
                ok(b)
            })
        },
        BAD,
        "CLAUDE.md: a second member",
    );
    refused(
        &limits,
        |_| {
            tar_gz(|b| {
                ok(b);
                file(b, b"CLAUDE.md/x", b"x")
            })
        },
        BAD,
        "CLAUDE.md/x",
    );
    let deep = vec!["d"; 40].join("/");
    refused(
        &limits,
        |_| tar_gz(|b| file(b, deep.as_bytes(), b"x")),
        BAD,
        "deeper than 32",
    );
    let long = "n".repeat(2000);
    refused(
        &limits,
        |_| {
            tar_gz(|b| {
                let mut header = Header::new_gnu();
                header.set_size(1);
                b.append_data(&mut header, &long, &b"x"[..])
                    .expect("long name");
            })
        },
        BAD,
        "a member name of 2001 bytes",
    );
    refused(
        &limits,
        |_| b"this is not gzip at all".to_vec(),
        BAD,
        "not a gzip",
    );
    refused(&limits, |_| gz(&[0x5a; 4096]), BAD, "not a valid tar");
    refused(&limits, |_| gz(&[]), BAD, "empty");
}

#[test]
fn too_many_members_are_refused() {
    let small = UploadLimits {
        max_entries: 100,
        ..UploadLimits::default()
    };
    let members = |n: usize| {
        move |_: &Path| {
            tar_gz(|b| {
                for i in 0..n {
                    file(b, format!("f{i:05}").as_bytes(), b"");
                }
            })
        }
    };
    refused(&small, members(101), BIG, "more than 100 members");
    // 100 is fine.
    let dest = tempfile::tempdir().expect("tempdir");
    let stats = unpack(&members(100)(dest.path()), dest.path(), &small).expect("unpacks");
    assert_eq!((stats.files, stats.bytes), (100, 0));
    // And at the default limits (20 000).
    refused(
        &UploadLimits::default(),
        members(20_001),
        BIG,
        "more than 20000 members",
    );
}

#[test]
fn bombs_stop_at_the_decompressed_limit() {
    let limits = UploadLimits {
        max_unpacked_bytes: 8 * 1024 * 1024,
        ..UploadLimits::default()
    };
    // 1 GiB of zeros, compressed as it is made (about 1 MiB of gzip).
    let bomb = {
        let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
        let mut header = Header::new_gnu();
        header.set_size(1 << 30);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, "zeros", std::io::repeat(0).take(1 << 30))
            .expect("appends");
        builder.into_inner().expect("tar").finish().expect("gzip")
    };
    assert!(bomb.len() < 8 * 1024 * 1024, "{} bytes", bomb.len());
    let started = Instant::now();
    refused(&limits, |_| bomb, BIG, "more than 8388608 bytes");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stopped early: {:?}",
        started.elapsed()
    );

    // Files under the limit one by one, over it together: stops after 8.
    let dest = tempfile::tempdir().expect("tempdir");
    let many = tar_gz(|b| {
        for i in 0..20 {
            file(b, format!("m{i:02}").as_bytes(), &vec![0; 1024 * 1024]);
        }
    });
    let e = unpack(&many, dest.path(), &limits).expect_err("refused");
    assert_eq!(e.code(), "archive_too_large", "{e}");
    let written: u64 = files_under(dest.path()).values().sum();
    assert!(
        written <= limits.max_unpacked_bytes,
        "{written} bytes written"
    );

    // Headers alone (no file data) count as they are decompressed.
    let headers = UploadLimits {
        max_unpacked_bytes: 1024 * 1024,
        ..UploadLimits::default()
    };
    refused(
        &headers,
        |_| {
            tar_gz(|b| {
                for i in 0..10_000 {
                    special(b, &format!("d{i:05}/"), EntryType::Directory, None);
                }
            })
        },
        BIG,
        "unpacks to more than 1048576 bytes",
    );

    // An archive over the upload limit is refused before anything.
    let tiny = UploadLimits {
        max_archive_bytes: 100,
        ..UploadLimits::default()
    };
    refused(&tiny, |_| hello_archive().to_vec(), BIG, "at most 100");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_apps_and_plugins_are_refused_and_leave_nothing() {
    let data = tempfile::tempdir().expect("tempdir");
    let releases = open(data.path());
    let app = |files: &[(&str, &[u8])]| {
        tar_gz(|b| {
            for (name, data) in files {
                file(b, name.as_bytes(), data);
            }
        })
    };
    let not_a_plugin = std::fs::read(component("not-a-plugin")).expect("fixture");
    let cases: Vec<(Vec<u8>, (u16, &str), &str)> = vec![
        (
            app(&[
                ("CLAUDE.md", b"hi"),
                ("karta.toml", b"name = \"x\"\nbuildpack = \"python\"\n"),
            ]),
            (400, "invalid_app"),
            "karta.toml:2: `buildpack` is not supported",
        ),
        (
            app(&[
                ("CLAUDE.md", b"hi"),
                ("karta.toml", b"[[plugins]]\npath = \"/etc/passwd\"\n"),
            ]),
            (400, "invalid_app"),
            "outside the app folder",
        ),
        (
            app(&[
                ("CLAUDE.md", b"hi"),
                ("karta.toml", b"[[plugins]]\npath = \"p/bad.wasm\"\n"),
                ("p/bad.wasm", &not_a_plugin),
            ]),
            (400, "invalid_plugin"),
            "plugin `bad` does not load",
        ),
        (app(&[("../x", b"hi")]), BAD, "../x"),
    ];
    for (archive, (status, code), says) in cases {
        let e = releases
            .publish(runtime(), request(PROJECT, &archive))
            .await
            .expect_err(says);
        assert_eq!((e.status(), e.code()), (status, code), "{e}");
        assert!(e.to_string().contains(says), "{e} should say {says:?}");
        assert!(
            !e.to_string().contains("staging"),
            "named as the publisher knows it: {e}"
        );
    }
    let big = releases
        .clone()
        .with_limits(UploadLimits {
            max_archive_bytes: 10,
            ..UploadLimits::default()
        })
        .publish(runtime(), request(PROJECT, hello_archive()))
        .await
        .expect_err("too big");
    assert_eq!((big.status(), big.code()), BIG);

    assert!(releases.list(PROJECT).expect("lists").is_empty());
    assert!(releases.audit(PROJECT).expect("audit").is_empty());
    for dir in ["staging", "trees", "blobs"] {
        assert!(
            names_in(&data.path().join("releases").join(dir)).is_empty(),
            "{dir}"
        );
    }
}

/// A publish interrupted by a crash leaves its staging directory (maybe
/// already read-only); the next open removes it.
#[test]
fn open_sweeps_what_an_interrupted_publish_left() {
    let data = tempfile::tempdir().expect("tempdir");
    drop(open(data.path()));
    let left = data.path().join("releases/staging/0123/abc/sub");
    std::fs::create_dir_all(&left).expect("mkdir");
    std::fs::write(left.join("f"), "x").expect("write");
    for dir in [left.clone(), left.parent().expect("parent").to_path_buf()] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    }
    drop(open(data.path()));
    assert!(names_in(&data.path().join("releases/staging")).is_empty());
}

// ---- packing -----------------------------------------------------------

#[test]
fn pack_skips_secrets_and_build_output_and_refuses_links_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    for (name, text) in [
        ("CLAUDE.md", "hi"),
        (".env", "SECRET=1"),
        ("sub/.env", "SECRET=2"),
        (".git/config", "x"),
        (".karta/db", "x"),
        ("node_modules/a/index.js", "x"),
        ("target/debug/x", "x"),
        ("tools/__pycache__/x.pyc", "x"),
        ("tools/run.sh", "#!/bin/sh\n"),
    ] {
        std::fs::create_dir_all(root.join(name).parent().expect("parent")).expect("mkdir");
        std::fs::write(root.join(name), text).expect("write");
    }
    std::fs::set_permissions(
        root.join("tools/run.sh"),
        std::fs::Permissions::from_mode(0o700),
    )
    .expect("chmod");
    std::os::unix::fs::symlink("CLAUDE.md", root.join("AGENTS.md")).expect("link");

    let archive = pack_dir(root).expect("packs");
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive.as_slice()));
    let mut members = Vec::new();
    for entry in tar.entries().expect("tar") {
        let mut entry = entry.expect("entry");
        let header = entry.header();
        assert_eq!(
            (header.mtime().ok(), header.uid().ok(), header.gid().ok()),
            (Some(0), Some(0), Some(0))
        );
        let mode = header.mode().expect("mode");
        let path = entry.path().expect("path").to_string_lossy().into_owned();
        let mut text = String::new();
        entry.read_to_string(&mut text).expect("read");
        members.push((path, mode, text));
    }
    let names: Vec<_> = members.iter().map(|(p, m, _)| (p.as_str(), *m)).collect();
    assert_eq!(
        names,
        [
            ("AGENTS.md", 0o644),
            ("CLAUDE.md", 0o644),
            ("sub", 0o755),
            ("tools", 0o755),
            ("tools/run.sh", 0o755),
        ],
        "sorted, secrets and build output skipped"
    );
    assert_eq!(members[0].2, "hi", "a link inside is packed as its file");
    assert_eq!(pack_dir(root).expect("packs"), archive, "deterministic");

    // A link out, or a FIFO, is an error naming it.
    std::os::unix::fs::symlink("/etc/passwd", root.join("passwd")).expect("link");
    let e = pack_dir(root).expect_err("a link out");
    assert!(
        e.to_string().contains("passwd") && e.to_string().contains("leaves"),
        "{e}"
    );
    std::fs::remove_file(root.join("passwd")).expect("rm");
    let fifo = Command::new("mkfifo")
        .arg(root.join("pipe"))
        .status()
        .expect("mkfifo");
    assert!(fifo.success());
    let e = pack_dir(root).expect_err("a FIFO");
    assert!(
        e.to_string().contains("pipe") && e.to_string().contains("FIFO"),
        "{e}"
    );
}

#[test]
fn git_commit_names_the_checkout_and_says_dirty() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert_eq!(git_commit(dir.path()), None, "not a checkout");
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(dir.path())
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !git(&["init", "-q"]) {
        eprintln!("skipped: no git");
        return;
    }
    std::fs::write(dir.path().join("CLAUDE.md"), "hi").expect("write");
    assert!(git(&["add", "."]) && git(&["commit", "-q", "-m", "x"]));
    let clean = git_commit(dir.path()).expect("a commit");
    assert!(
        clean.len() == 40 && clean.bytes().all(|b| b.is_ascii_hexdigit()),
        "{clean}"
    );
    std::fs::write(dir.path().join("new.md"), "x").expect("write");
    assert_eq!(git_commit(dir.path()), Some(format!("{clean}-dirty")));
}

// ---- crash safety ----------------------------------------------------

const CHILD_ENV: &str = "KARTA_ACTIVATION_CHILD";

/// Run by `activation_survives_kill_9` in a child process: flips the
/// pointer between v1, v2 and v3 until killed.
#[test]
#[ignore = "a child process of activation_survives_kill_9"]
fn activation_child() {
    let Ok(data) = std::env::var(CHILD_ENV) else {
        return;
    };
    let releases = open(Path::new(&data));
    releases.activate(PROJECT, 1, "child").expect("activates");
    println!("ready");
    std::io::stdout().flush().expect("flush");
    for version in [2, 3, 1].into_iter().cycle() {
        releases
            .activate(PROJECT, version, "child")
            .expect("activates");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activation_survives_kill_9() {
    let data = tempfile::tempdir().expect("tempdir");
    {
        let releases = open(data.path());
        for _ in 0..3 {
            releases
                .publish(runtime(), request(PROJECT, hello_archive()))
                .await
                .expect("publishes");
        }
    }
    // A small generator is enough for the wait; seeded per run.
    let mut seed =
        std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), 0u8) | 1;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let exe = std::env::current_exe().expect("test binary");
    let mut seen = std::collections::BTreeSet::new();
    for round in 0..50 {
        let mut child = Command::new(&exe)
            .args([
                "releases::activation_child",
                "--exact",
                "--nocapture",
                "--include-ignored",
            ])
            .env(CHILD_ENV, data.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("child starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = lines
            .by_ref()
            .map_while(Result::ok)
            .any(|line| line == "ready");
        assert!(ready, "round {round}: the child never got ready");
        std::thread::sleep(Duration::from_millis(5 + next() % 56));
        child.kill().expect("SIGKILL");
        child
            .wait()
            .expect("the child exits (and lets go of sled's lock)");

        let releases = open(data.path());
        let active = releases
            .active(PROJECT)
            .expect("reads")
            .expect("a version is active");
        assert!(
            (1..=3).contains(&active.version),
            "round {round}: v{}",
            active.version
        );
        let last = releases
            .audit(PROJECT)
            .expect("audit")
            .pop()
            .expect("entries");
        assert_eq!(
            last.to, active.version,
            "round {round}: the log agrees with the pointer"
        );
        let dir = releases.app_dir(&active);
        karta_host::app::load(&dir).unwrap_or_else(|e| panic!("round {round}: {e}"));
        seen.insert(active.version);
    }
    eprintln!("active versions seen after kill -9: {seen:?}");
}
