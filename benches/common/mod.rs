//! Fixtures shared by the benches: the guest plugins built from source, and
//! a one-plugin app around `units.wasm`.

#![allow(dead_code)] // each bench uses a part

use std::path::{Path, PathBuf};
use std::process::Command;

/// `examples/plugins`.
pub fn plugins() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/plugins")
}

/// Builds the guest plugins for wasm32-wasip2 (and, with `native`, the
/// native packages named) and returns the wasm output directory.
pub fn build_plugins(native: &[&str]) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target = plugins().join("target");
    let mut builds = vec![vec!["--target".to_owned(), "wasm32-wasip2".to_owned()]];
    for package in native {
        builds.push(vec!["-p".to_owned(), (*package).to_owned()]);
    }
    for extra in builds {
        let status = Command::new(&cargo)
            .args(["build", "--release", "--manifest-path"])
            .arg(plugins().join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .args(extra)
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the bench fixtures failed");
    }
    target.join("wasm32-wasip2/release")
}

/// A temporary app: `AGENTS.md` and the `units` plugin.
pub fn calculator_app() -> tempfile::TempDir {
    let wasm = build_plugins(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("AGENTS.md"), "You are a calculator.").expect("write");
    std::fs::create_dir(dir.path().join("plugins")).expect("mkdir");
    std::fs::copy(
        wasm.join("units.wasm"),
        dir.path().join("plugins/units.wasm"),
    )
    .expect("copy");
    std::fs::write(
        dir.path().join("karta.toml"),
        "[[plugins]]\npath = \"plugins/units.wasm\"\n",
    )
    .expect("write");
    dir
}
