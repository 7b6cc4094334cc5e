//! Compiling an app's stdlib-only Python stdio MCP server into a
//! `wasi:cli/command` component with `componentize-py`.
//!
//! What is bundled: the script (its source embedded in a generated entry
//! module, see `entry.py`), every `.py` file in the script's folder and
//! below (what `import helper` finds beside a script started as
//! `python3 tools/x.py`), and the Python standard library componentize-py
//! ships. The app's data is *not* bundled: the runner mounts the app folder
//! read-only as the server's working directory, so `open("data/x.log")` reads
//! the same file as the process would.
//!
//! The `.py` files are copied into a private build folder first (regular
//! files only: a link is never followed, so a planted `tools/x.py ->
//! /etc/shadow` cannot end up inside a component), and the build runs with
//! an empty environment. componentize-py runs the entry module's import-time
//! code inside its own wasm interpreter (pre-initialization), not natively.
//!
//! Results are cached by content: the SHA-256 of the componentize-py version,
//! the entry template, the WIT, the command line and every bundled file names
//! `{cache_dir}/{digest}.wasm`, so loading the same app again compiles
//! nothing.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The pinned componentize-py (tools/componentize-py/requirements.txt).
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

/// Where `scripts/install-componentize-py.sh` installs it, relative to the
/// repository root.
pub const COMPONENTIZE_PY_LOCAL: &str = "tools/componentize-py/venv/bin/componentize-py";

/// The longest a componentize-py build may take before it is killed (a
/// build normally takes 10–20 s).
const BUILD_TIMEOUT: Duration = Duration::from_secs(300);

/// Largest script, and largest sum of bundled `.py` files.
const MAX_SCRIPT_BYTES: u64 = 4 * 1024 * 1024;
const MAX_BUNDLE_BYTES: u64 = 64 * 1024 * 1024;
/// Most `.py` files bundled from the script's folder.
const MAX_BUNDLE_FILES: usize = 10_000;

const ENTRY_TEMPLATE: &str = include_str!("entry.py");
/// The module name of the generated entry (must not clash with a script's
/// own modules, nor with the world name `server`).
const ENTRY_MODULE: &str = "karta_mcp_entry";
const WIT_FILES: &[(&str, &str)] = &[
    ("world.wit", include_str!("wit/world.wit")),
    ("deps/cli.wit", include_str!("wit/deps/cli.wit")),
    ("deps/clocks.wit", include_str!("wit/deps/clocks.wit")),
    (
        "deps/filesystem.wit",
        include_str!("wit/deps/filesystem.wit"),
    ),
    ("deps/io.wit", include_str!("wit/deps/io.wit")),
    ("deps/random.wit", include_str!("wit/deps/random.wit")),
    ("deps/sockets.wit", include_str!("wit/deps/sockets.wit")),
];

/// A Python MCP server compiled to a component file.
#[derive(Debug, Clone)]
pub struct CompiledPythonServer {
    /// The component (`{cache_dir}/{digest}.wasm`).
    pub wasm_path: PathBuf,
    /// SHA-256 of everything that went into it (the cache key), hex.
    pub digest: String,
    /// The script, relative to the app folder (`tools/sre_tools.py`).
    pub script: PathBuf,
    /// The script's own arguments (after the script path).
    pub script_args: Vec<String>,
    /// How long this call took: the componentize-py build, or only the
    /// hashing when the component was cached.
    pub compile_time: Duration,
    /// The component came from the cache (nothing was built).
    pub cached: bool,
}

/// Why a server could not be compiled; the caller runs it as a (jailed)
/// process instead. Every message says why, for `karta doctor` and the log.
#[derive(Debug, thiserror::Error)]
pub enum PyCompileError {
    /// The command is not `python`/`python3` with a script in the app.
    #[error("not a Python script server: {0}")]
    NotPython(String),
    /// The script cannot be used (outside the app, missing, a link, too big).
    #[error("the script cannot be bundled: {0}")]
    Script(String),
    /// componentize-py is not installed where the host looks.
    #[error(
        "componentize-py is not installed (looked for {looked}); install it with \
         scripts/install-componentize-py.sh or set KARTA_COMPONENTIZE_PY"
    )]
    CompilerMissing {
        /// Where the host looked.
        looked: String,
    },
    /// The script imports a module the component cannot have.
    #[error("{0}")]
    MissingModule(String),
    /// componentize-py failed (its output's last lines say why).
    #[error("componentize-py failed: {0}")]
    Build(String),
    /// Files could not be written or read.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PyCompileError {
    let what = what.into();
    move |source| PyCompileError::Io { what, source }
}

/// The componentize-py binary: `KARTA_COMPONENTIZE_PY` if set (that or
/// nothing), else [`COMPONENTIZE_PY_LOCAL`] under the working directory or
/// under a parent of the running executable (`target/debug/…` of a checkout).
pub fn locate_componentize_py() -> Result<PathBuf, PyCompileError> {
    if let Some(explicit) = std::env::var_os("KARTA_COMPONENTIZE_PY").filter(|v| !v.is_empty()) {
        let path = PathBuf::from(explicit);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(PyCompileError::CompilerMissing {
                looked: format!("KARTA_COMPONENTIZE_PY={}", path.display()),
            })
        };
    }
    let mut looked = Vec::new();
    let mut roots = vec![std::env::current_dir().ok()];
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(|p| Some(p.to_path_buf())));
    }
    for root in roots.into_iter().flatten() {
        let candidate = root.join(COMPONENTIZE_PY_LOCAL);
        if candidate.is_file() {
            return Ok(candidate);
        }
        looked.push(candidate.display().to_string());
    }
    Err(PyCompileError::CompilerMissing {
        looked: looked.into_iter().take(3).collect::<Vec<_>>().join(", "),
    })
}

/// Compiles the stdio server `command args…` of the app at `app_root` into a
/// component under `cache_dir`, with the componentize-py found by
/// [`locate_componentize_py`].
pub fn compile(
    app_root: &Path,
    command: &str,
    args: &[String],
    cache_dir: &Path,
) -> Result<CompiledPythonServer, PyCompileError> {
    let started = Instant::now();
    let (script, script_args) = python_script(command, args)?;
    let bundle = Bundle::read(app_root, &script)?;
    let digest = bundle.digest(&script, &script_args);
    let wasm_path = cache_dir.join(format!("{digest}.wasm"));
    let compiled = |cached| CompiledPythonServer {
        wasm_path: wasm_path.clone(),
        digest: digest.clone(),
        script: script.clone(),
        script_args: script_args.clone(),
        compile_time: started.elapsed(),
        cached,
    };
    if wasm_path.is_file() {
        return Ok(compiled(true));
    }
    let componentize_py = locate_componentize_py()?;
    create_private_dir(cache_dir).map_err(io(format!(
        "cannot create the cache dir {}",
        cache_dir.display()
    )))?;
    let build = tempfile::Builder::new()
        .prefix("pymcp-build-")
        .tempdir_in(cache_dir)
        .map_err(io("cannot create a build folder"))?;
    bundle.write(build.path(), &script, &script_args)?;
    let output = build.path().join("server.wasm");
    run_componentize_py(&componentize_py, build.path(), &output)?;
    // Renamed into place whole: a concurrent load never sees half a file.
    std::fs::rename(&output, &wasm_path).map_err(io(format!(
        "cannot store the component at {}",
        wasm_path.display()
    )))?;
    Ok(compiled(false))
}

/// The script path and its arguments, if `command args…` runs a Python
/// script: `python`/`python3`/`python3.N` (any folder), optional `-u`/`-B`
/// (which change nothing here), then `SCRIPT.py`.
fn python_script(command: &str, args: &[String]) -> Result<(PathBuf, Vec<String>), PyCompileError> {
    let program = Path::new(command)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let is_python = program == "python"
        || program.strip_prefix("python3").is_some_and(|rest| {
            rest.is_empty()
                || rest
                    .strip_prefix('.')
                    .is_some_and(|v| v.bytes().all(|b| b.is_ascii_digit()))
        });
    if !is_python {
        return Err(PyCompileError::NotPython(format!(
            "the command is `{command}`, not python or python3"
        )));
    }
    let mut rest = args.iter();
    for arg in rest.by_ref() {
        match arg.as_str() {
            "-u" | "-B" => continue,
            "-m" => {
                return Err(PyCompileError::NotPython(
                    "`python -m module` is not compiled; name the script file".into(),
                ));
            }
            flag if flag.starts_with('-') => {
                return Err(PyCompileError::NotPython(format!(
                    "the interpreter option `{flag}` is not supported"
                )));
            }
            script if script.ends_with(".py") => {
                return Ok((PathBuf::from(script), rest.cloned().collect()));
            }
            other => {
                return Err(PyCompileError::NotPython(format!(
                    "`{other}` is not a .py script"
                )));
            }
        }
    }
    Err(PyCompileError::NotPython(
        "no script named after the interpreter".into(),
    ))
}

/// The files that go into a component, read once (so what is hashed is what
/// is built).
struct Bundle {
    source: String,
    /// `.py` files of the script's folder, relative to it.
    modules: Vec<(PathBuf, Vec<u8>)>,
}

impl Bundle {
    fn read(app_root: &Path, script: &Path) -> Result<Self, PyCompileError> {
        let bad = |m: String| PyCompileError::Script(m);
        if script.is_absolute()
            || script
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(bad(format!(
                "`{}` must be a plain path inside the app (no `..`, not absolute)",
                script.display()
            )));
        }
        let path = app_root.join(script);
        let source = read_regular(&path, MAX_SCRIPT_BYTES)
            .map_err(|e| bad(format!("{}: {e}", script.display())))?;
        let source = String::from_utf8(source)
            .map_err(|_| bad(format!("{} is not UTF-8", script.display())))?;
        let folder = path.parent().unwrap_or(app_root);
        let mut modules = Vec::new();
        let mut total = 0u64;
        collect_py(folder, Path::new(""), &mut modules, &mut total)?;
        modules.sort();
        Ok(Self { source, modules })
    }

    fn digest(&self, script: &Path, args: &[String]) -> String {
        let mut hash = Sha256::new();
        let mut field = |bytes: &[u8]| {
            // Length-prefixed, so no two different inputs hash alike.
            hash.update((bytes.len() as u64).to_le_bytes());
            hash.update(bytes);
        };
        field(COMPONENTIZE_PY_VERSION.as_bytes());
        field(ENTRY_TEMPLATE.as_bytes());
        for (name, text) in WIT_FILES {
            field(name.as_bytes());
            field(text.as_bytes());
        }
        field(script.to_string_lossy().as_bytes());
        for arg in args {
            field(arg.as_bytes());
        }
        field(self.source.as_bytes());
        for (name, bytes) in &self.modules {
            field(name.to_string_lossy().as_bytes());
            field(bytes);
        }
        hex::encode(hash.finalize())
    }

    /// Lays out `build/`: `wit/`, `src/` (the script's `.py` files and the
    /// entry module).
    fn write(&self, build: &Path, script: &Path, args: &[String]) -> Result<(), PyCompileError> {
        for (name, text) in WIT_FILES {
            let path = build.join("wit").join(name);
            write_file(&path, text.as_bytes())?;
        }
        let src = build.join("src");
        for (name, bytes) in &self.modules {
            write_file(&src.join(name), bytes)?;
        }
        // JSON strings and arrays of strings are valid Python literals.
        let literal = |v: &serde_json::Value| v.to_string();
        let entry = ENTRY_TEMPLATE
            .replace(
                "__KARTA_SCRIPT_PATH__",
                &literal(&script.to_string_lossy().into_owned().into()),
            )
            .replace("__KARTA_SCRIPT_ARGS__", &literal(&serde_json::json!(args)))
            .replace(
                "__KARTA_SCRIPT_SOURCE__",
                &literal(&self.source.clone().into()),
            );
        write_file(&src.join(format!("{ENTRY_MODULE}.py")), entry.as_bytes())
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), PyCompileError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(io(format!("cannot create {}", parent.display())))?;
    }
    std::fs::write(path, bytes).map_err(io(format!("cannot write {}", path.display())))
}

/// Reads a regular file (never through a link), at most `max` bytes.
fn read_regular(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    if !meta.file_type().is_file() {
        return Err("not a regular file (links are not followed)".into());
    }
    if meta.len() > max {
        return Err(format!("{} bytes, more than {max}", meta.len()));
    }
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    // Bounded again on the open file: it may have grown since the stat.
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > max {
        return Err(format!("more than {max} bytes"));
    }
    Ok(bytes)
}

/// Collects the `.py` files under `dir` (not following links; `__pycache__`
/// and hidden folders skipped).
fn collect_py(
    dir: &Path,
    relative: &Path,
    out: &mut Vec<(PathBuf, Vec<u8>)>,
    total: &mut u64,
) -> Result<(), PyCompileError> {
    let entries = std::fs::read_dir(dir).map_err(io(format!("cannot list {}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(io(format!("cannot list {}", dir.display())))?;
        let name = entry.file_name();
        let Some(name_str) = name.to_str() else {
            continue;
        };
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let rel = relative.join(&name);
        if kind.is_dir() {
            if name_str.starts_with('.') || name_str == "__pycache__" {
                continue;
            }
            collect_py(&entry.path(), &rel, out, total)?;
        } else if kind.is_file() && name_str.ends_with(".py") {
            if out.len() >= MAX_BUNDLE_FILES {
                return Err(PyCompileError::Script(format!(
                    "more than {MAX_BUNDLE_FILES} .py files beside the script"
                )));
            }
            let bytes = read_regular(&entry.path(), MAX_SCRIPT_BYTES)
                .map_err(|e| PyCompileError::Script(format!("{}: {e}", rel.display())))?;
            *total += bytes.len() as u64;
            if *total > MAX_BUNDLE_BYTES {
                return Err(PyCompileError::Script(format!(
                    "the .py files beside the script exceed {MAX_BUNDLE_BYTES} bytes"
                )));
            }
            out.push((rel, bytes));
        }
        // Links and special files are left out: never followed.
    }
    Ok(())
}

/// Runs `componentize-py -d wit -w server componentize -p src ENTRY -o out`
/// in `build`, with an empty environment and a deadline.
fn run_componentize_py(
    componentize_py: &Path,
    build: &Path,
    output: &Path,
) -> Result<(), PyCompileError> {
    let log_path = build.join("componentize-py.log");
    let log = std::fs::File::create(&log_path).map_err(io("cannot create the build log"))?;
    let log_err = log.try_clone().map_err(io("cannot create the build log"))?;
    let mut child = Command::new(componentize_py)
        .current_dir(build)
        // No VIRTUAL_ENV and no host variables: componentize-py would add a
        // virtualenv's site-packages to what it bundles.
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .args(["-d", "wit", "-w", "server", "componentize", "-p", "src"])
        .arg(ENTRY_MODULE)
        .arg("-o")
        .arg(output)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(io(format!("cannot start {}", componentize_py.display())))?;
    let deadline = Instant::now() + BUILD_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let text = read_regular(&log_path, 16 * 1024 * 1024)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    match status {
        Some(status) if status.success() && output.is_file() => Ok(()),
        Some(status) => Err(build_error(&text, &status.to_string())),
        None => Err(PyCompileError::Build(format!(
            "no result after {} s; killed",
            BUILD_TIMEOUT.as_secs()
        ))),
    }
}

/// The reason in componentize-py's output: our own missing-module line if
/// there is one, else the last Python exception line, else the tail.
fn build_error(text: &str, status: &str) -> PyCompileError {
    if let Some(line) = text.lines().find(|l| l.contains("KARTA_MISSING_MODULE: ")) {
        let reason = line
            .split_once("KARTA_MISSING_MODULE: ")
            .map(|(_, r)| r)
            .unwrap_or(line);
        return PyCompileError::MissingModule(reason.trim().to_owned());
    }
    // componentize-py prints the guest's traceback, then its own
    // "Caused by:" chain and a Rust backtrace; the exception line is the
    // last line of the traceback before "Caused by:".
    let head = text.split("Stack backtrace:").next().unwrap_or(text);
    let reason = head
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .rfind(|l| l.contains("Error") || l.contains("error") || l.contains("Exception"))
        .unwrap_or("no output")
        .to_owned();
    PyCompileError::Build(format!("{reason} ({status})"))
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn recognises_python_scripts() {
        let (script, rest) =
            python_script("python3", &args(&["-u", "tools/x.py", "--flag"])).expect("python");
        assert_eq!(script, Path::new("tools/x.py"));
        assert_eq!(rest, ["--flag"]);
        assert!(python_script("/usr/bin/python3.11", &args(&["x.py"])).is_ok());
        assert!(python_script("python", &args(&["x.py"])).is_ok());
        for (command, a) in [
            ("node", &["x.js"][..]),
            ("python3", &["-m", "server"][..]),
            ("python3", &["-c", "print()"][..]),
            ("python3", &[][..]),
            ("python3x", &["x.py"][..]),
        ] {
            assert!(
                matches!(
                    python_script(command, &args(a)),
                    Err(PyCompileError::NotPython(_))
                ),
                "{command} {a:?}"
            );
        }
    }

    #[test]
    fn scripts_outside_the_app_are_refused() {
        let app = tempfile::tempdir().expect("tempdir");
        for script in ["../x.py", "/etc/x.py"] {
            assert!(matches!(
                Bundle::read(app.path(), Path::new(script)),
                Err(PyCompileError::Script(_))
            ));
        }
    }

    #[test]
    fn the_reason_of_a_failed_build_is_found() {
        let text = "Traceback (most recent call last):\n  File \"x\", line 3\n\
            ImportError: KARTA_MISSING_MODULE: tools/x.py imports `numpy`, which ...\n\
            Caused by:\n    ImportError: ...\nStack backtrace:\n 0: anyhow";
        assert!(matches!(
            build_error(text, "exit status: 1"),
            PyCompileError::MissingModule(m) if m.starts_with("tools/x.py imports `numpy`")
        ));
        let text = "Traceback\nSyntaxError: invalid syntax\nStack backtrace:\n0: x Error";
        assert!(build_error(text, "1").to_string().contains("SyntaxError"));
    }
}
