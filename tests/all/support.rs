//! Shared test helpers: building the guest fixtures once, runtimes, a tiny
//! HTTP server on loopback.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use karta_host::plugin::{Plugin, PluginGrant, PluginRuntime, RuntimeConfig};

/// The workspace root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Builds `examples/plugins` for wasm32-wasip2 once per test run and returns
/// the directory holding the `.wasm` files.
pub fn plugins_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let manifest = root().join("examples/plugins/Cargo.toml");
        let target = root().join("examples/plugins/target");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--manifest-path",
            ])
            .arg(&manifest)
            .arg("--target-dir")
            .arg(&target)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .status()
            .expect("cargo runs");
        assert!(
            status.success(),
            "building the guest fixtures failed; is the wasm32-wasip2 target installed? \
             (rustup target add wasm32-wasip2)"
        );
        target.join("wasm32-wasip2/release")
    })
}

/// The path of the fixture component `name` (`hello`, `units`, `files`, `hostile`).
pub fn component(name: &str) -> PathBuf {
    plugins_dir().join(format!("{name}.wasm"))
}

/// One runtime shared by the tests of this binary (like one host process).
pub fn runtime() -> &'static PluginRuntime {
    static RUNTIME: OnceLock<PluginRuntime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        PluginRuntime::new(RuntimeConfig {
            max_concurrent_instances: 64,
            ..RuntimeConfig::default()
        })
        .expect("runtime starts")
    })
}

/// Loads fixture `name` under `grant` in the shared runtime.
pub async fn load(name: &str, grant: PluginGrant) -> Plugin {
    runtime()
        .load_file(&component(name), grant)
        .await
        .unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

/// A second runtime whose operator allows plugin HTTP to 127.0.0.1/32, for
/// tests that need a reachable local server (the shared one refuses
/// loopback, as `karta serve` does by default).
pub fn runtime_allowing_loopback() -> &'static PluginRuntime {
    static RUNTIME: OnceLock<PluginRuntime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        PluginRuntime::new(RuntimeConfig {
            max_concurrent_instances: 16,
            allow_net: vec!["127.0.0.1/32".parse().expect("a CIDR")],
            ..RuntimeConfig::default()
        })
        .expect("runtime starts")
    })
}

/// Loads fixture `name` under `grant` in [`runtime_allowing_loopback`].
pub async fn load_allowing_loopback(name: &str, grant: PluginGrant) -> Plugin {
    runtime_allowing_loopback()
        .load_file(&component(name), grant)
        .await
        .unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

/// A loopback HTTP server answering every request with `body`; returns its
/// address. It lives as long as the test's tokio runtime.
pub async fn http_server(body: &'static str) -> SocketAddr {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|_req| async {
                    Ok::<_, Infallible>(hyper::Response::new(http_body_util::Full::new(
                        bytes::Bytes::from_static(body.as_bytes()),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A loopback HTTP server answering every request with `body` (of
/// `content_type`), sent `chunk` bytes per frame — as a provider's stream
/// arrives in network frames that split events and characters anywhere.
pub async fn trickle_server(
    body: &'static [u8],
    content_type: &'static str,
    chunk: usize,
) -> SocketAddr {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(move |_req| async move {
                    let frames = futures_util::stream::iter(
                        body.chunks(chunk)
                            .map(|c| {
                                Ok::<_, Infallible>(hyper::body::Frame::data(
                                    bytes::Bytes::from_static(c),
                                ))
                            })
                            .collect::<Vec<_>>(),
                    );
                    let response = hyper::Response::builder()
                        .header("content-type", content_type)
                        .body(http_body_util::StreamBody::new(frames))
                        .expect("response");
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A real `karta serve` process on `app` (builtin harness, port 0).
pub struct ServeProcess {
    pub child: std::process::Child,
    /// Its API's base URL, read from its banner.
    pub url: String,
    /// Its stderr after the banner, line by line (read on a thread of its
    /// own, so the server never blocks on a full pipe).
    pub stderr: std::sync::mpsc::Receiver<String>,
}

impl ServeProcess {
    /// Starts `karta [global_args] serve app …` with `env` added.
    pub fn start(app: &Path, data: &Path, global_args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_serving(Some(app), data, global_args, &[], env)
    }

    /// Starts `karta serve app … serve_args` with `env` added.
    pub fn start_with(app: &Path, data: &Path, serve_args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_serving(Some(app), data, &[], serve_args, env)
    }

    /// Starts `karta serve` on every published project of `data`.
    pub fn start_published(data: &Path) -> Self {
        Self::start_serving(None, data, &[], &[], &[])
    }

    fn start_serving(
        app: Option<&Path>,
        data: &Path,
        global_args: &[&str],
        serve_args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_karta"))
            .args(global_args)
            .arg("serve")
            .args(app)
            .args(["--listen", "127.0.0.1:0", "--harness", "builtin", "--data"])
            .arg(data)
            .args(serve_args)
            .envs(env.iter().copied())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("karta serve starts");
        let mut lines = std::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
        let url = loop {
            let line = lines.next().expect("a banner line").expect("utf-8");
            if let Some((_, rest)) = line.split_once("listening on ") {
                break rest.split_whitespace().next().expect("url").to_owned();
            }
        };
        let (tx, stderr) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self { child, url, stderr }
    }

    /// SIGTERM (what a service manager sends); waits for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIGTERM sent");
        self.child.wait().expect("karta serve exits")
    }

    /// `kill -9`, and reaped.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServeProcess {
    /// A test that fails midway does not leave its server running (holding
    /// the test run's output open, which would keep the run from ending).
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

/// Whether this test may build jails (it runs as root); otherwise prints
/// why the test (`what`) is skipped and says no.
pub fn can_jail(what: &str) -> bool {
    let root = karta_harness::jail::privileged();
    if !root {
        eprintln!(
            "skipped: {what} needs root (the jail's namespaces and cgroups); this test runs as another user"
        );
    }
    root
}
