//! What the Karta host adds to a warm Claude Code turn, against the bare
//! `claude` CLI on the same flags and the same model endpoint (issue 8;
//! goal: the host adds ≤ 2 ms at the median).
//!
//! Run: `scripts/install-harnesses.sh && cargo bench --bench overhead`
//!
//! Both paths talk to one "provider": a standalone gateway on the offline
//! model, on a loopback port of its own, standing in for a real provider.
//!
//! - `overhead/karta_warm_turn`: a Karta host serves the support-bot app on
//!   Claude Code, with the provider as its upstream, so every model call goes
//!   harness → Karta's gateway → provider, as in a deployment. A client POSTs
//!   a message with `stream: true` to the HTTP API (a real socket,
//!   `TCP_NODELAY`, the connection driven in the timing task itself, like
//!   curl) and reads the SSE stream; the time is from the
//!   request to the complete `done` event, which Karta publishes only once
//!   the turn is saved and flushed. The session's `claude` process is
//!   already running (two untimed turns first).
//! - `overhead/bare_cli_warm_turn`: the same `claude` started by this bench,
//!   with the exact argv and environment read from `/proc` of the Karta
//!   session's process, except `ANTHROPIC_BASE_URL` / `ANTHROPIC_API_KEY`,
//!   which point straight at the provider (as a peer server would), no
//!   `--resume`, and copies of that process's `HOME` and working directory
//!   (`HOME`, `TMPDIR` and the `--mcp-config` path moved with them), so the
//!   two share no state: Karta rewrites the session's workspace before each
//!   turn, and a `claude` sharing it burns CPU during Karta's turns. It
//!   reaches the same MCP server (Karta's, the session's token). No jail.
//!   It is driven like Karta's adapter drives it (`initialize` control
//!   request, then one `user` line a turn); the time is from writing the
//!   `user` line to reading the `result` line. Two untimed turns first.
//!
//! The host logs as `karta serve` does: the same subscriber at its default
//! level (`info`, or `RUST_LOG`), formatting every line it writes, into a
//! sink rather than stderr (the bench's own output is there). So the
//! request spans and log lines of the API, the gateway and the MCP server
//! are in Karta's time (the provider, a gateway too, logs into it as well,
//! on both paths).
//!
//! Every timed turn starts once all `claude` processes are idle: `claude`
//! keeps working for a while after its `result` line, and a turn timed
//! meanwhile would pay for it (a person's think time does the same).
//!
//! After the criterion group it prints the median of every turn criterion
//! timed on each path and the difference, then runs `KARTA_OVERHEAD_ROUNDS`
//! (default 800) interleaved rounds — one turn of each path per round, the
//! order rotating, so the shared machine's drift hits both alike — over
//! `KARTA_OVERHEAD_PROCESSES` (default 20) pairs of `claude` processes: every
//! so many rounds a new Karta session and a new bare CLI (from that
//! session's process image) replace the old, warmed by two untimed turns.
//! Two `claude`s started alike differ by a millisecond or more a turn for
//! as long as they live, so one pair would read its own difference as the
//! host's. It prints the medians, the median of the per-round differences
//! over all pairs (Karta minus bare; the headline figure, written with the
//! medians to `target/bench-results/overhead.json` for
//! `scripts/bench.sh`), the same per pair, and over the pairs: the median
//! and mean of their differences with its standard error — the pairs are
//! the samples that say how sure the figure is (a pair's own difference
//! moves by one to several ms, so the five pairs this used to run left a
//! 2 ms goal to chance; see BENCHMARKS.md). It prints the CPU time per
//! turn of this process (provider, client, and for Karta the host; also
//! by thread: tokio workers, sled's I/O threads, the meter's writer, the
//! main thread that is the client) and of each `claude` — during the
//! timed turn, and until that `claude` is idle again. The second is the
//! one to compare between routes: a `claude` works on after
//! its `result` line, and Karta's `done` comes later than the bare CLI's
//! `result`, so more of that work falls inside Karta's timed turn.
//! Each timed turn adds one exchange to its own conversation, so the
//! conversations grow alike (to a few dozen exchanges a pair). It also prints
//! the host's own two parts of a Karta turn, from the host's
//! `karta_turn_host_seconds` metric (means over every Karta turn of the
//! run): message accepted → harness handed the turn, and harness returned
//! → `done` published. Those do not carry `claude`'s run-to-run spread.
//! Then, for each Karta route, every timed turn as the host timed it
//! (`karta_turn_duration_seconds` and `karta_turn_host_seconds`, read
//! before and after it): its start, the harness (turn handed over →
//! `result` line read, which is `claude`'s own time plus the adapter's) and
//! its end, what lies outside the host's turn (the client's `done` minus
//! it: the API's request on its way in, the last frame on its way out),
//! and the harness's per-round difference from the bare turn.
//! Last, every route's turn split at its model call, by the provider's
//! clock (a middleware on the provider stamps each request's arrival and
//! its answer): the way to the model (the host's start, `claude` building
//! its request, the gateway's hop in), the provider's own time, and the
//! way back (the answer through the gateway, `claude` reading it, the
//! host's end), each with its per-round difference from the bare turn.
//!
//! A filter that skips criterion (`cargo bench --bench overhead -- zzz`)
//! runs the interleaved rounds alone.
//!
//! With `KARTA_OVERHEAD_BREAKDOWN=1` two more paths run, to see where the
//! time goes: `overhead/karta_in_process_turn` (a second Karta session
//! driven through `Sessions::send` / `subscribe`: no HTTP API) and
//! `overhead/bare_cli_via_karta_gateway` (a second bare CLI pointed at
//! Karta's own gateway with the session's key: the gateway hop alone).
//!
//! With `KARTA_OVERHEAD_FLOOR=1` one more path runs: `floor_relay_turn`,
//! the floor of any host of Karta's shape — a bare CLI behind a minimal
//! HTTP API (the `user` line written, the first text delta and the
//! `result` streamed back as SSE) whose model calls go through a bare
//! proxy (read whole, sent on, streamed back). The same two hops as
//! Karta's, with no session, log, store, jail, key check or metering
//! behind them; it prints Karta's `done` over this floor's as well, and
//! both differences over the pairs. `KARTA_OVERHEAD_FLOOR_SPAWN=karta`
//! starts the floor's `claude` with Karta's own code for an unjailed
//! harness (`karta_harness::process::HarnessProcess`) instead of tokio's
//! `Command`; `KARTA_OVERHEAD_FLOOR_FRAMES=karta` makes it send the frames
//! Karta sends (`step_start`, the first text at once, later text held for
//! Karta's 10 ms window) instead of two; `KARTA_OVERHEAD_FLOOR_GATEWAY=karta`
//! sends its model calls through Karta's gateway (the session's key)
//! instead of the bare proxy.
//!
//! With `KARTA_OVERHEAD_JAIL=0` the host runs its `claude` processes
//! unjailed (`karta serve --no-jail`), to tell what the jail costs a turn
//! from what the host's own steps cost. With
//! `KARTA_OVERHEAD_HARNESS_NICE=N` the host starts its `claude` processes
//! at nice N (`karta serve --harness-nice N`; -5: ahead of its own
//! threads) instead of its own (0); the bare routes' `claude` runs at the
//! bench's own, as a user runs the CLI. With `KARTA_OVERHEAD_BARE_BURN_US=N`
//! each timed bare turn also keeps one more thread of this process busy for
//! N µs from the `user` line on (about the host's CPU a turn, beside
//! `claude`), to see what CPU spent beside `claude` costs its turn on this
//! machine. With `KARTA_OVERHEAD_BARE_THRASH_KIB=N` a thread of this
//! process copies N KiB from one buffer to another every millisecond of each
//! timed bare turn (until its `result`), to see whether memory moved beside
//! `claude` (as the host moves requests and answers) slows it through the
//! caches it shares. With `KARTA_OVERHEAD_BARE_HOME=fresh` each bare CLI starts from
//! a new `HOME` holding only what the host writes before a session's first
//! spawn (the MCP configuration, a first `.claude.json`), as Karta's own
//! `claude` did, instead of a copy of that `claude`'s `HOME` after its first
//! turns (its caches, transcripts and state). With
//! `KARTA_OVERHEAD_KARTA_NICE=N` every thread of the Karta routes' `claude`
//! is set to nice value N (`renice`, before each timed turn, outside its
//! time; e.g. -5), so that it wins the CPU from the host's threads — to see
//! whether the host's CPU beside `claude` is what slows its turn;
//! `KARTA_OVERHEAD_BARE_NICE=N` does the same for the bare route's `claude`
//! (both at -5: each route's `claude` ahead of every thread of this
//! process, so the routes compare alike). Each renice runs the `renice`
//! program, and a process started by this one before a Karta turn is
//! itself enough to change that turn (BENCHMARKS.md, thirty-first
//! session): `KARTA_OVERHEAD_KARTA_SPAWN=1` runs `true` before each timed
//! Karta turn, outside its time, and nothing else;
//! `KARTA_OVERHEAD_KARTA_SPAWN=sigchld` sends this process the `SIGCHLD`
//! such a child's end sends, with no child, and `=block` blocks the
//! bench's thread for 2 ms instead (about what the spawn blocks it).
//! More kinds, to tell what in the spawn acts (BENCHMARKS.md,
//! thirty-second session): `thread` makes and joins a thread that does
//! nothing; `thread-keep` makes one that never ends (parked for the
//! rest of the run); `thread-here` the same as `thread`, started on the
//! CPU this thread runs on; `other` runs `true` from such a thread; `spin` keeps this thread
//! busy for 1 ms; `wake` wakes a parked thread of this process pinned to
//! each CPU (every idle CPU woken, no task made or ended after the first
//! turn, which makes those threads). A kind ending
//! in `-late` (`thread-late`) acts after the wait for quiet, just before
//! the turn, not ≥10 ms before it.
//!
//! With `KARTA_OVERHEAD_CPUS` each part of the run is kept to CPUs of its
//! own (`sched_setaffinity` on every thread, before each timed turn):
//! `bench=0;karta=1;bare=1` puts this process (host, provider, client) on
//! CPU 0 and both routes' `claude` on CPU 1; parts not named keep what they
//! inherit (a `claude` inherits the mask of the thread that started it, so
//! name `bare=0-1` to leave the bare CLI free when `bench` is confined).
//! With `KARTA_OVERHEAD_MARKERS=1` each timed turn is marked at its start
//! and end for a `perf` trace, which `scripts/sched_waits.py` reads: where
//! each route's `claude` waited for a CPU, and what ran instead
//! (BENCHMARKS.md, thirty-second session).
//!
//! Skipped, with a line saying so, when the `claude` binary is not installed.

// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper_util::rt::TokioIo;
use karta_host::app::HarnessKind;
use karta_host::gateway::{Upstream, UpstreamKind};
use karta_host::harness::HarnessBinaries;
use karta_host::session::Sessions;
use karta_host::{Host, HostConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, ChildStdout};

/// What every timed turn says (the offline model answers `You said: …`).
const TEXT: &str = "hello there";

/// The pinned `claude`, if installed.
fn claude_binary() -> Option<PathBuf> {
    Some(common::root().join("harnesses/node_modules/.bin/claude")).filter(|p| p.exists())
}

/// When a turn's answer started and when the turn ended, from the moment
/// the message was sent.
#[derive(Debug, Clone, Copy)]
struct Timing {
    /// The first text delta: a `text` event (Karta), a `text_delta`
    /// `stream_event` line (bare).
    first_text: Duration,
    /// The complete `done` event (Karta), the `result` line (bare).
    done: Duration,
}

/// A client of the Karta HTTP API on one kept-alive loopback socket, as
/// `curl` is: hyper's HTTP/1 connection is driven in the caller's own task
/// instead of a spawned dispatch task, so the request leaves and each frame
/// reaches the timing code in the same wake-up that touches the socket, as
/// the bare route writes and reads its pipes itself. (Until the fourteenth
/// session the bench used hyper's pooled client, whose dispatch task put a
/// hand-off between the timing task and the socket both ways.)
struct ApiClient {
    addr: SocketAddr,
    sender: SendRequest<Full<Bytes>>,
    connection: Pin<Box<Connection<TokioIo<TcpStream>, Full<Bytes>>>>,
}

impl ApiClient {
    async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect to the API");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("an HTTP/1 connection");
        Self {
            addr,
            sender,
            connection: Box::pin(connection),
        }
    }

    fn post(&self, path: &str, body: &Value) -> hyper::Request<Full<Bytes>> {
        hyper::Request::post(path)
            .header("host", self.addr.to_string())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("a valid request")
    }

    /// Runs `work` (which uses `sender`) while this task drives the
    /// connection: the connection is polled before `work`, so bytes it reads
    /// are there for `work` in the same poll, and after it, so a request
    /// `work` queued is written at once.
    async fn driving<T>(
        connection: &mut Pin<Box<Connection<TokioIo<TcpStream>, Full<Bytes>>>>,
        work: impl Future<Output = T>,
    ) -> T {
        let mut work = std::pin::pin!(work);
        let mut drive = |cx: &mut Context<'_>| {
            if let Poll::Ready(result) = connection.as_mut().poll(cx) {
                panic!("the API closed the connection: {result:?}");
            }
        };
        std::future::poll_fn(|cx| {
            drive(cx);
            let polled = work.as_mut().poll(cx);
            if polled.is_pending() {
                drive(cx);
            }
            polled
        })
        .await
    }

    /// Sends `request` and reads its whole answer body, calling `frame`
    /// with each data frame and the time since the request was sent.
    async fn exchange(
        &mut self,
        request: hyper::Request<Full<Bytes>>,
        mut frame: impl FnMut(&[u8], Duration),
    ) -> hyper::StatusCode {
        let Self {
            sender, connection, ..
        } = self;
        Self::driving(connection, async {
            sender.ready().await.expect("the connection is ready");
            let started = Instant::now();
            let response = sender.send_request(request).await.expect("an answer");
            let status = response.status();
            let mut body = response.into_body();
            while let Some(next) = body.frame().await {
                if let Ok(data) = next.expect("a body frame").into_data() {
                    frame(&data, started.elapsed());
                }
            }
            status
        })
        .await
    }

    async fn create_session(&mut self) -> String {
        let request = self.post("/v1/sessions", &json!({}));
        let mut bytes = Vec::new();
        let status = self
            .exchange(request, |data, _| bytes.extend_from_slice(data))
            .await;
        assert!(status.is_success(), "{status}");
        let session: Value = serde_json::from_slice(&bytes).expect("a JSON session");
        session["id"].as_str().expect("a session id").to_owned()
    }

    /// One streamed turn, timed from sending the request to the end of the
    /// `done` event. Reads the stream to its end (untimed).
    async fn turn(&mut self, id: &str, text: &str) -> Timing {
        let request = self.post(
            &format!("/v1/sessions/{id}/messages"),
            &json!({ "text": text, "stream": true }),
        );
        let mut buffer = String::new();
        let mut first_text = None;
        let mut done = None;
        let status = self
            .exchange(request, |data, elapsed| {
                if done.is_some() {
                    return;
                }
                buffer.push_str(&String::from_utf8_lossy(data));
                // Complete SSE events only: each ends with a blank line.
                while let Some(end) = buffer.find("\n\n") {
                    let event: String = buffer.drain(..end + 2).collect();
                    let kind = event.lines().find_map(|l| l.strip_prefix("event: "));
                    match kind {
                        Some("text") if first_text.is_none() => first_text = Some(elapsed),
                        Some("done") => done = Some(elapsed),
                        Some("error") => panic!("the turn failed: {event}"),
                        _ => {}
                    }
                }
            })
            .await;
        assert!(status.is_success(), "{status}");
        Timing {
            first_text: first_text.expect("the stream carried a text event"),
            done: done.expect("the stream carried a done event"),
        }
    }
}

/// One turn through the session manager in-process: from `send` to the
/// `done` event.
async fn in_process_turn(sessions: &Arc<Sessions>, id: &str, text: &str) -> Timing {
    let (first_text, done) = common::in_process_turn(sessions, id, text).await;
    Timing { first_text, done }
}

/// A running process as `/proc` shows it.
struct ProcessImage {
    argv: Vec<String>,
    cwd: PathBuf,
    env: Vec<(String, String)>,
}

fn nul_separated(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn process_image(pid: u32) -> ProcessImage {
    let read = |what: &str| {
        std::fs::read(format!("/proc/{pid}/{what}"))
            .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/{what}: {e}"))
    };
    let argv = nul_separated(&read("cmdline"));
    let env = nul_separated(&read("environ"))
        .into_iter()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect();
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).expect("the process's cwd");
    ProcessImage { argv, cwd, env }
}

impl ProcessImage {
    fn var(&self, name: &str) -> &str {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("the harness process has no {name}"))
    }
}

/// Copies a directory tree (files, directories, symbolic links). The
/// process whose tree it is still runs: what it removes meanwhile (its
/// temporary files) is skipped.
fn copy_tree(from: &Path, to: &Path) {
    let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    std::fs::create_dir_all(to).expect("mkdir");
    let entries = match std::fs::read_dir(from) {
        Ok(entries) => entries,
        Err(e) if gone(&e) => return,
        Err(e) => panic!("read_dir {}: {e}", from.display()),
    };
    for entry in entries.flatten() {
        let target = to.join(entry.file_name());
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            copy_tree(&entry.path(), &target);
        } else if kind.is_symlink() {
            match std::fs::read_link(entry.path()) {
                Ok(link) => std::os::unix::fs::symlink(link, &target).expect("symlink"),
                Err(e) if gone(&e) => {}
                Err(e) => panic!("read_link: {e}"),
            }
        } else if kind.is_file() {
            match std::fs::copy(entry.path(), &target) {
                Ok(_) => {}
                Err(e) if gone(&e) => {}
                Err(e) => panic!("copy {}: {e}", entry.path().display()),
            }
        }
    }
}

/// A `claude` started by the bench, outside Karta, driven over its pipes.
struct BareCli {
    process: BareProcess,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    /// Its copies of the session's `HOME` and workspace, and its stderr.
    scratch: tempfile::TempDir,
}

/// `KARTA_OVERHEAD_BARE_HOME=fresh` (see the module docs).
fn fresh_bare_home() -> bool {
    std::env::var("KARTA_OVERHEAD_BARE_HOME").is_ok_and(|v| v == "fresh")
}

/// `KARTA_OVERHEAD_BARE_BURN_US`, if set (see the module docs).
fn bare_burn() -> Option<Duration> {
    static BURN: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    *BURN.get_or_init(|| {
        std::env::var("KARTA_OVERHEAD_BARE_BURN_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_micros)
            .filter(|burn| !burn.is_zero())
    })
}

/// `KARTA_OVERHEAD_BARE_THRASH_KIB`, if set (see the module docs).
fn bare_thrash() -> Option<usize> {
    static THRASH: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *THRASH.get_or_init(|| {
        std::env::var("KARTA_OVERHEAD_BARE_THRASH_KIB")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|kib| *kib > 0)
    })
}

/// `KARTA_OVERHEAD_KARTA_NICE`, if set (see the module docs).
fn karta_nice() -> Option<i32> {
    env_nice("KARTA_OVERHEAD_KARTA_NICE")
}

/// `KARTA_OVERHEAD_KARTA_SPAWN`, if set: one of [`SPAWN_KINDS`], which may
/// end in `-late` (see the module docs and [`before_karta_turn`]). Anything
/// else stops the bench with a message saying so.
fn karta_spawn() -> Option<String> {
    let kind = std::env::var("KARTA_OVERHEAD_KARTA_SPAWN").ok()?;
    assert!(
        SPAWN_KINDS.contains(&kind.trim_end_matches("-late")),
        "KARTA_OVERHEAD_KARTA_SPAWN={kind}: not one of {SPAWN_KINDS:?} (each may end in -late)"
    );
    Some(kind)
}

/// What `KARTA_OVERHEAD_KARTA_SPAWN` may name.
const SPAWN_KINDS: [&str; 9] = [
    "1",
    "sigchld",
    "block",
    "thread",
    "thread-keep",
    "thread-here",
    "spin",
    "wake",
    "other",
];

/// With `KARTA_OVERHEAD_MARKERS=1`, marks a point of the run in a `perf`
/// trace (`-e syscalls:sys_enter_kill`): a `kill(pid, 0)` — no signal, only
/// the check — for pid `TRACE_MARKER_BASE + code`, above the kernel's
/// largest pid (`PID_MAX_LIMIT`, 4,194,304), so no process is ever there.
/// Each timed turn is marked at its start (`2 × route index`) and end
/// (`2 × route index + 1`).
fn trace_marker(code: i32) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let on = *ON.get_or_init(|| std::env::var("KARTA_OVERHEAD_MARKERS").as_deref() == Ok("1"));
    if let Some(pid) = rustix::process::Pid::from_raw(TRACE_MARKER_BASE + code).filter(|_| on) {
        let _ = rustix::process::test_kill_process(pid);
    }
}

/// Where [`trace_marker`]'s pids start.
const TRACE_MARKER_BASE: i32 = 5_000_000;

/// `KARTA_OVERHEAD_CPUS`: which CPUs each part of the run may use, as
/// `part=list` pairs split by `;` — parts `bench` (this process: host,
/// provider and client), `karta` (the Karta routes' `claude`), `bare` (the
/// bare route's `claude`); lists as `0`, `1`, `0-1`, `0,1`. Parts not named
/// keep what they inherit. E.g. `bench=0;karta=1;bare=0-1`.
fn cpu_plan() -> Vec<(String, rustix::thread::CpuSet)> {
    let Ok(spec) = std::env::var("KARTA_OVERHEAD_CPUS") else {
        return Vec::new();
    };
    spec.split(';')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (name, list) = part
                .split_once('=')
                .unwrap_or_else(|| panic!("KARTA_OVERHEAD_CPUS: {part:?} is not part=list"));
            let mut set = rustix::thread::CpuSet::new();
            for item in list.split(',') {
                let (lo, hi) = item.split_once('-').unwrap_or((item, item));
                let cpu = |n: &str| {
                    n.parse::<usize>()
                        .unwrap_or_else(|_| panic!("KARTA_OVERHEAD_CPUS: {n:?} is not a CPU"))
                };
                for cpu in cpu(lo)..=cpu(hi) {
                    set.set(cpu);
                }
            }
            (name.to_owned(), set)
        })
        .collect()
}

/// Puts every thread of `pid` on the CPUs `part` has in `plan`, if any.
fn apply_cpus(plan: &[(String, rustix::thread::CpuSet)], part: &str, pid: u32) {
    let Some((_, set)) = plan.iter().find(|(name, _)| name == part) else {
        return;
    };
    for task in tasks(pid) {
        let tid = task
            .file_name()
            .and_then(|n| n.to_str()?.parse::<i32>().ok());
        if let Some(tid) = tid.and_then(rustix::process::Pid::from_raw) {
            let _ = rustix::thread::sched_setaffinity(Some(tid), set);
        }
    }
}

/// One thread pinned to each CPU this process may use, parked until
/// [`CpuWakers::wake_all`] wakes every one and waits for each to answer:
/// each idle CPU woken, with no task made or ended
/// (`KARTA_OVERHEAD_KARTA_SPAWN=wake`).
struct CpuWakers {
    wake: Vec<std::sync::mpsc::Sender<()>>,
    answered: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl CpuWakers {
    fn wake_all(&self) {
        let answered = self.answered.lock().expect("one caller at a time");
        for wake in &self.wake {
            wake.send(()).expect("the waker runs");
        }
        for _ in &self.wake {
            answered.recv().expect("the waker answers");
        }
    }
}

/// The process's [`CpuWakers`], started on first use.
fn cpu_wakers() -> &'static CpuWakers {
    static WAKERS: std::sync::OnceLock<CpuWakers> = std::sync::OnceLock::new();
    WAKERS.get_or_init(|| {
        let mine = rustix::thread::sched_getaffinity(None).expect("this thread's CPUs");
        let (answer, answered) = std::sync::mpsc::channel();
        let wake = (0..rustix::thread::CpuSet::MAX_CPU)
            .filter(|cpu| mine.is_set(*cpu))
            .map(|cpu| {
                let (wake, woken) = std::sync::mpsc::channel::<()>();
                let answer = answer.clone();
                std::thread::Builder::new()
                    .name(format!("cpu-waker-{cpu}"))
                    .spawn(move || {
                        let mut only = rustix::thread::CpuSet::new();
                        only.set(cpu);
                        rustix::thread::sched_setaffinity(None, &only).expect("pinned");
                        while woken.recv().is_ok() {
                            let _ = answer.send(());
                        }
                    })
                    .expect("a waker thread");
                wake
            })
            .collect();
        CpuWakers {
            wake,
            answered: std::sync::Mutex::new(answered),
        }
    })
}

/// What `KARTA_OVERHEAD_KARTA_SPAWN=kind` does before a timed Karta turn
/// (see the module docs); a kind ending in `-late` does it after the wait
/// for quiet, just before the turn, instead of before that wait.
fn before_karta_turn(kind: &str) {
    match kind.trim_end_matches("-late") {
        "1" => {
            let _ = std::process::Command::new("true").status();
        }
        // SIGCHLD with no child behind it: what the spawn does to this
        // process's runtime, alone.
        "sigchld" => {
            let _ = rustix::process::kill_process(
                rustix::process::getpid(),
                rustix::process::Signal::CHILD,
            );
        }
        // This thread blocked about as long as such a spawn blocks it,
        // with no process.
        "block" => std::thread::sleep(Duration::from_millis(2)),
        // A thread made and ended: a task created and exited in this
        // process, no new process.
        "thread" => {
            let _ = std::thread::spawn(|| {}).join();
        }
        // A thread made that never ends (parked for the rest of the run):
        // a task created, none exited.
        "thread-keep" => {
            let (started, start) = std::sync::mpsc::channel::<()>();
            let (never, parked) = std::sync::mpsc::channel::<()>();
            std::mem::forget(never);
            std::thread::spawn(move || {
                let _ = started.send(());
                let _ = parked.recv();
            });
            let _ = start.recv();
        }
        // As `thread`, the new thread held to the CPU this one runs on
        // (so it starts there, not on an idle CPU).
        "thread-here" => {
            let mine = rustix::thread::sched_getaffinity(None).expect("this thread's CPUs");
            let mut here = rustix::thread::CpuSet::new();
            here.set(rustix::thread::sched_getcpu());
            rustix::thread::sched_setaffinity(None, &here).expect("held");
            let _ = std::thread::spawn(|| {}).join();
            rustix::thread::sched_setaffinity(None, &mine).expect("freed");
        }
        // This thread busy for 1 ms: CPU use, no task.
        "spin" => {
            let until = Instant::now() + Duration::from_millis(1);
            while Instant::now() < until {}
        }
        // Every CPU woken by a thread of this process parked there, no
        // task made or ended.
        "wake" => cpu_wakers().wake_all(),
        // `true` started from another thread of this process than the
        // one that drives the turn.
        "other" => {
            let _ = std::thread::spawn(|| std::process::Command::new("true").status()).join();
        }
        unknown => panic!(
            "KARTA_OVERHEAD_KARTA_SPAWN={unknown}: not one of {SPAWN_KINDS:?} (each may end in -late)"
        ),
    }
}

/// `KARTA_OVERHEAD_BARE_NICE`, if set (see the module docs).
fn bare_nice() -> Option<i32> {
    env_nice("KARTA_OVERHEAD_BARE_NICE")
}

/// A nice value from the environment variable `name`, if set and a number.
fn env_nice(name: &str) -> Option<i32> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Sets every thread of process `pid` to nice value `nice` (Linux keeps a
/// nice value per thread; threads made later inherit their maker's).
fn renice_threads(pid: u32, nice: i32) {
    let threads: Vec<String> = tasks(pid)
        .filter_map(|task| Some(task.file_name()?.to_str()?.to_owned()))
        .collect();
    let status = std::process::Command::new("renice")
        .args(["-n", &nice.to_string(), "-p"])
        .args(&threads)
        .stdout(Stdio::null())
        .status()
        .expect("renice runs");
    assert!(
        status.success(),
        "renice -n {nice} failed for {pid}'s threads"
    );
}

/// Who starts a [`BareCli`]'s process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spawner {
    /// This bench, with tokio's `Command` (its stderr to a file).
    Bench,
    /// Karta's own code for an unjailed harness
    /// ([`karta_harness::process::HarnessProcess`]: its stderr piped to
    /// the host, the parent-death signal, inherited descriptors closed).
    Karta,
}

/// A [`BareCli`]'s process.
enum BareProcess {
    Bench(Child),
    Karta(Box<karta_harness::process::HarnessProcess>),
}

impl BareCli {
    /// Starts `claude` as `image` shows it, talking to `base_url` with
    /// `api_key`, in copies of its `HOME` and working directory; waits for
    /// its `initialize` answer.
    async fn start(image: &ProcessImage, base_url: &str, api_key: &str) -> Self {
        Self::start_by(image, base_url, api_key, Spawner::Bench).await
    }

    /// [`BareCli::start`], the process started by `spawner`.
    async fn start_by(
        image: &ProcessImage,
        base_url: &str,
        api_key: &str,
        spawner: Spawner,
    ) -> Self {
        let scratch = tempfile::tempdir().expect("tempdir");
        // Copies of its `HOME` and of its working directory: Karta rewrites
        // the session's workspace before every turn, and a `claude` sharing
        // it re-reads `.claude/` and was measured burning CPU during Karta's
        // turns.
        let old_home = image.var("HOME").to_owned();
        let new_home = scratch.path().join("home");
        if fresh_bare_home() {
            // Only what the host writes before a session's first spawn: the
            // MCP configuration, `.claude.json` (rewritten below) and `tmp`.
            std::fs::create_dir_all(new_home.join("tmp")).expect("mkdir");
            for entry in std::fs::read_dir(&old_home)
                .expect("the session's HOME")
                .flatten()
            {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with("karta-") {
                    std::fs::copy(entry.path(), new_home.join(&*name)).expect("copy");
                }
            }
            let first = json!({
                "hasCompletedOnboarding": true,
                "projects": { image.cwd.display().to_string(): { "hasTrustDialogAccepted": true } },
            });
            std::fs::write(new_home.join(".claude.json"), first.to_string()).expect("write");
        } else {
            copy_tree(Path::new(&old_home), &new_home);
        }
        let new_home = new_home.display().to_string();
        let old_cwd = image.cwd.display().to_string();
        let new_cwd = scratch.path().join("workspace");
        copy_tree(&image.cwd, &new_cwd);
        let new_cwd = new_cwd.display().to_string();
        // The workspace is trusted in `$HOME/.claude.json` by its path.
        let claude_json = Path::new(&new_home).join(".claude.json");
        if let Ok(text) = std::fs::read_to_string(&claude_json) {
            std::fs::write(&claude_json, text.replace(&old_cwd, &new_cwd)).expect("write");
        }
        let moved = |value: &str| {
            for (old, new) in [(&old_home, &new_home), (&old_cwd, &new_cwd)] {
                if let Some(rest) = value.strip_prefix(old.as_str())
                    && (rest.is_empty() || rest.starts_with('/'))
                {
                    return format!("{new}{rest}");
                }
            }
            value.to_owned()
        };

        // The same arguments, minus `--resume <id>`; paths into the old
        // `HOME` (the MCP config) read from the copy.
        let mut args = Vec::new();
        let mut rest = image.argv.iter().skip(1);
        while let Some(arg) = rest.next() {
            if arg == "--resume" {
                rest.next();
                continue;
            }
            args.push(moved(arg));
        }
        let env = image.env.iter().map(|(k, v)| {
            let v = match k.as_str() {
                "ANTHROPIC_BASE_URL" => base_url.to_owned(),
                "ANTHROPIC_API_KEY" => api_key.to_owned(),
                _ => moved(v),
            };
            (k.clone(), v)
        });
        let (process, stdin, stdout) = match spawner {
            Spawner::Bench => {
                let stderr =
                    std::fs::File::create(scratch.path().join("stderr")).expect("stderr file");
                let mut child = tokio::process::Command::new(&image.argv[0])
                    .args(&args)
                    .env_clear()
                    .envs(env)
                    .current_dir(&new_cwd)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::from(stderr))
                    .process_group(0)
                    .kill_on_drop(true)
                    .spawn()
                    .expect("the bare claude starts");
                let stdin = child.stdin.take().expect("stdin");
                let stdout = child.stdout.take().expect("stdout");
                (BareProcess::Bench(child), stdin, stdout)
            }
            Spawner::Karta => {
                let mut process =
                    karta_harness::process::HarnessProcess::start(&karta_harness::process::Spawn {
                        program: PathBuf::from(&image.argv[0]),
                        args,
                        cwd: PathBuf::from(&new_cwd),
                        env: env.collect(),
                        stdin: true,
                        stdout: true,
                        jail: None,
                        // Started as a user starts the bare CLI: at the
                        // bench's own priority.
                        nice: None,
                    })
                    .expect("the claude starts as Karta starts it");
                let stdin = process.child.stdin.take().expect("stdin");
                let stdout = process.child.stdout.take().expect("stdout");
                (BareProcess::Karta(Box::new(process)), stdin, stdout)
            }
        };
        let mut bare = Self {
            process,
            stdin,
            lines: BufReader::with_capacity(64 * 1024, stdout).lines(),
            scratch,
        };
        bare.send(&json!({
            "type": "control_request",
            "request_id": "init_1",
            "request": { "subtype": "initialize", "hooks": null },
        }))
        .await;
        let answer = bare.until("control_response").await;
        assert_ne!(answer["response"]["subtype"], "error", "{answer}");
        bare
    }

    async fn send(&mut self, line: &Value) {
        let mut bytes = serde_json::to_vec(line).expect("JSON");
        bytes.push(b'\n');
        self.write(&bytes).await;
    }

    async fn write(&mut self, bytes: &[u8]) {
        self.stdin.write_all(bytes).await.expect("write to claude");
        self.stdin.flush().await.expect("flush to claude");
    }

    /// The next JSON line of its output.
    async fn next_value(&mut self) -> Value {
        loop {
            let line = self
                .lines
                .next_line()
                .await
                .expect("read claude's output")
                .unwrap_or_else(|| panic!("claude exited: {}", self.stderr_tail()));
            if let Ok(value) = serde_json::from_str::<Value>(line.trim()) {
                if value["type"] == "control_request" {
                    panic!("claude asked something: {value}");
                }
                return value;
            }
        }
    }

    /// Reads output lines until one of type `kind`, and returns it.
    async fn until(&mut self, kind: &str) -> Value {
        loop {
            let value = self.next_value().await;
            if value["type"] == kind {
                return value;
            }
        }
    }

    fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(self.scratch.path().join("stderr")).unwrap_or_default();
        let start = text.len().saturating_sub(2000);
        text.get(start..).unwrap_or_default().to_owned()
    }

    /// One turn, timed from writing the `user` line to reading the `result`
    /// line.
    async fn turn(&mut self, text: &str) -> Timing {
        let line = user_line(text);
        let started = Instant::now();
        self.write(&line).await;
        if let Some(burn) = bare_burn() {
            std::thread::spawn(move || {
                let until = Instant::now() + burn;
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
            });
        }
        let thrash = bare_thrash().map(|kib| {
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let stopped = stop.clone();
            std::thread::spawn(move || {
                let from = vec![1u8; kib * 1024];
                let mut to = vec![0u8; kib * 1024];
                while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                    to.copy_from_slice(&from);
                    std::hint::black_box(&mut to);
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
            stop
        });
        let mut first_text = None;
        loop {
            let value = self.next_value().await;
            match value["type"].as_str() {
                Some("stream_event")
                    if first_text.is_none() && value["event"]["delta"]["type"] == "text_delta" =>
                {
                    first_text = Some(started.elapsed());
                }
                Some("result") => {
                    let done = started.elapsed();
                    if let Some(stop) = thrash {
                        stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    assert_ne!(value["is_error"], true, "the bare turn failed: {value}");
                    return Timing {
                        first_text: first_text.expect("a text delta"),
                        done,
                    };
                }
                _ => {}
            }
        }
    }

    fn pid(&self) -> Option<u32> {
        match &self.process {
            BareProcess::Bench(child) => child.id(),
            BareProcess::Karta(process) => process.pid(),
        }
    }

    /// Kills its process group and waits for it.
    async fn stop(self) {
        kill_group(self.pid());
        match self.process {
            BareProcess::Bench(mut child) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
            BareProcess::Karta(process) => process.kill().await,
        }
    }
}

/// A turn's `user` line, as Karta's adapter writes it.
fn user_line(text: &str) -> Vec<u8> {
    let mut line = serde_json::to_vec(&json!({
        "type": "user",
        "message": { "role": "user", "content": [{ "type": "text", "text": text }] },
        "parent_tool_use_id": null,
        "session_id": "",
    }))
    .expect("JSON");
    line.push(b'\n');
    line
}

/// The floor of any host (`KARTA_OVERHEAD_FLOOR=1`): the two hops every
/// host of this shape adds, and nothing else. A bare CLI (started as the
/// bare route's) whose model calls go through [`common::bare_proxy`] (the
/// request read whole and sent on, the answer streamed back: no key, no
/// parse, no metering), and whose turns are driven by a minimal HTTP API
/// on this runtime: `POST /v1/sessions/relay/messages` writes the `user`
/// line and streams back a `text` event at the first text delta and a
/// `done` event at the `result` line — no session, no log, no store, no
/// jail. The same client as Karta's route reads it.
struct Relay {
    api: ApiClient,
    claude: Arc<tokio::sync::Mutex<BareCli>>,
    pid: Option<u32>,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl Relay {
    async fn start(image: &ProcessImage, ends: &Ends) -> Self {
        let (proxy_url, proxy) =
            common::bare_proxy(ends.provider_url.clone(), ends.provider_key.clone()).await;
        let spawner = match std::env::var("KARTA_OVERHEAD_FLOOR_SPAWN").as_deref() {
            Ok("karta") => Spawner::Karta,
            _ => Spawner::Bench,
        };
        // With `KARTA_OVERHEAD_FLOOR_GATEWAY=karta` its model calls go
        // through Karta's gateway instead (the session's key), to tell the
        // gateway's part of Karta's cost from the rest.
        let (model_url, model_key) = match std::env::var("KARTA_OVERHEAD_FLOOR_GATEWAY").as_deref()
        {
            Ok("karta") => (
                ends.gateway_url.clone(),
                image.var("ANTHROPIC_API_KEY").to_owned(),
            ),
            _ => (proxy_url, ends.provider_key.clone()),
        };
        let claude = BareCli::start_by(image, &model_url, &model_key, spawner).await;
        let pid = claude.pid();
        let claude = Arc::new(tokio::sync::Mutex::new(claude));
        let as_karta = std::env::var("KARTA_OVERHEAD_FLOOR_FRAMES").is_ok_and(|v| v == "karta");
        let router = axum::Router::new()
            .route(
                "/v1/sessions/{id}/messages",
                axum::routing::post(relay_turn),
            )
            .with_state((claude.clone(), as_karta));
        let (addr, server) = common::serve_on_loopback(router).await;
        let mut relay = Self {
            api: ApiClient::connect(addr).await,
            claude,
            pid,
            tasks: [proxy, server],
        };
        relay.turn("warm up").await;
        relay.turn("warm up again").await;
        relay
    }

    async fn turn(&mut self, text: &str) -> Timing {
        self.api.turn("relay", text).await
    }

    async fn stop(self) {
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
        drop(self.api);
        match Arc::try_unwrap(self.claude) {
            Ok(claude) => claude.into_inner().stop().await,
            // A connection's task of the API, still ending, holds it: its
            // process group goes now, the child is reaped when that task
            // drops it.
            Err(_) => kill_group(self.pid),
        }
    }
}

/// Kills the process group `pid` leads (a [`BareCli`]'s: `process_group(0)`).
fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .status();
    }
}

/// [`Relay`]'s one route: the message's text to `claude`, its first text
/// delta and its `result` back as SSE events. With
/// `KARTA_OVERHEAD_FLOOR_FRAMES=karta` it sends the frames Karta sends
/// instead: a `step_start` at the answer's first stream event, the first
/// text delta at once, the later ones held and sent together 10 ms after
/// the first of them (Karta's delta window), then `done`.
async fn relay_turn(
    axum::extract::State((claude, as_karta)): axum::extract::State<(
        Arc<tokio::sync::Mutex<BareCli>>,
        bool,
    )>,
    body: Bytes,
) -> axum::response::Response {
    let message: Value = serde_json::from_slice(&body).expect("a JSON message");
    let mut claude = claude.lock_owned().await;
    claude
        .write(&user_line(message["text"].as_str().unwrap_or_default()))
        .await;
    let state = RelayFrames {
        claude,
        as_karta,
        stepped: false,
        texted: false,
        held: Vec::new(),
        send_held_at: None,
        ended: false,
    };
    let events = futures_util::stream::unfold(state, |mut state| async move {
        let frame = state.next().await?;
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(frame)), state))
    });
    axum::response::Response::builder()
        .header("content-type", "text/event-stream")
        .body(axum::body::Body::from_stream(events))
        .expect("a response")
}

/// Where [`relay_turn`]'s stream is.
struct RelayFrames {
    claude: tokio::sync::OwnedMutexGuard<BareCli>,
    as_karta: bool,
    stepped: bool,
    texted: bool,
    /// Text deltas held for the window.
    held: Vec<Value>,
    send_held_at: Option<tokio::time::Instant>,
    ended: bool,
}

impl RelayFrames {
    /// The next SSE frame; `None` after `done`.
    async fn next(&mut self) -> Option<String> {
        if self.ended {
            return None;
        }
        loop {
            let value = match self.send_held_at {
                // `next_line` is cancel-safe: a line half read stays.
                Some(at) => tokio::select! {
                    value = self.claude.next_value() => value,
                    () = tokio::time::sleep_until(at) => {
                        self.send_held_at = None;
                        return Some(self.held_frame());
                    }
                },
                None => self.claude.next_value().await,
            };
            match value["type"].as_str() {
                Some("stream_event") if self.as_karta && !self.stepped => {
                    self.stepped = true;
                    return Some("event: step_start\ndata: {}\n\n".to_owned());
                }
                Some("stream_event") if value["event"]["delta"]["type"] == "text_delta" => {
                    let delta = value["event"]["delta"].clone();
                    if !self.texted {
                        self.texted = true;
                        return Some(format!("event: text\ndata: {delta}\n\n"));
                    }
                    if self.as_karta {
                        self.held.push(delta);
                        self.send_held_at.get_or_insert_with(|| {
                            tokio::time::Instant::now() + Duration::from_millis(10)
                        });
                    }
                }
                Some("result") => {
                    self.ended = true;
                    let held = match self.held.is_empty() {
                        true => String::new(),
                        false => self.held_frame(),
                    };
                    return Some(format!("{held}event: done\ndata: {}\n\n", value["usage"]));
                }
                _ => {}
            }
        }
    }

    fn held_frame(&mut self) -> String {
        let held = std::mem::take(&mut self.held);
        format!("event: text\ndata: {}\n\n", Value::Array(held))
    }
}

/// The ways a turn is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Karta over its HTTP API.
    Karta,
    /// The same Karta session through `Sessions`, no HTTP API.
    InProcess,
    /// The bare CLI straight to the provider.
    Bare,
    /// A bare CLI through Karta's gateway to the provider.
    ViaGateway,
    /// A bare CLI behind the floor of any host ([`Relay`]).
    Relay,
}

impl Route {
    const ALL: [Self; 5] = [
        Self::Karta,
        Self::InProcess,
        Self::Bare,
        Self::ViaGateway,
        Self::Relay,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Karta => "karta_warm_turn",
            Self::InProcess => "karta_in_process_turn",
            Self::Bare => "bare_cli_warm_turn",
            Self::ViaGateway => "bare_cli_via_karta_gateway",
            Self::Relay => "floor_relay_turn",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Everything a turn of any route needs.
struct Rig {
    api: ApiClient,
    sessions: Arc<Sessions>,
    /// The session the HTTP route drives.
    id: String,
    /// The session the in-process route drives (its own `claude`, so every
    /// route's conversation grows alike).
    in_process_id: Option<String>,
    bare: BareCli,
    via_gateway: Option<BareCli>,
    relay: Option<Relay>,
}

/// Where the routes' model calls go.
struct Ends {
    provider_url: String,
    provider_key: String,
    /// Karta's own gateway (the breakdown's `bare_cli_via_karta_gateway`).
    gateway_url: String,
}

impl Rig {
    /// A Karta session and a bare CLI started from its process's image
    /// (and the other `routes`' own), each warmed up by two untimed turns.
    async fn start(
        mut api: ApiClient,
        sessions: Arc<Sessions>,
        ends: &Ends,
        routes: &[Route],
    ) -> Self {
        let id = api.create_session().await;
        api.turn(&id, "warm up").await;
        api.turn(&id, "warm up again").await;
        let pid = sessions
            .harness_process_id(&id)
            .expect("the session's claude runs");
        let image = process_image(pid);
        let mut bare = BareCli::start(&image, &ends.provider_url, &ends.provider_key).await;
        bare.turn("warm up").await;
        bare.turn("warm up again").await;
        let (in_process_id, via_gateway) = if routes.contains(&Route::InProcess) {
            let in_process_id = api.create_session().await;
            in_process_turn(&sessions, &in_process_id, "warm up").await;
            in_process_turn(&sessions, &in_process_id, "warm up again").await;
            let key = image.var("ANTHROPIC_API_KEY").to_owned();
            let mut via = BareCli::start(&image, &ends.gateway_url, &key).await;
            via.turn("warm up").await;
            via.turn("warm up again").await;
            (Some(in_process_id), Some(via))
        } else {
            (None, None)
        };
        let relay = match routes.contains(&Route::Relay) {
            true => Some(Relay::start(&image, ends).await),
            false => None,
        };
        Rig {
            api,
            sessions,
            id,
            in_process_id,
            bare,
            via_gateway,
            relay,
        }
    }

    /// Stops every route's `claude` and deletes the sessions.
    async fn stop(self) {
        let Rig {
            sessions,
            id,
            in_process_id,
            bare,
            via_gateway,
            relay,
            ..
        } = self;
        bare.stop().await;
        if let Some(via) = via_gateway {
            via.stop().await;
        }
        if let Some(relay) = relay {
            relay.stop().await;
        }
        sessions.delete(&id).await.expect("delete the session");
        if let Some(id) = in_process_id {
            sessions.delete(&id).await.expect("delete the session");
        }
    }

    /// The same routes on new `claude` processes: two processes started
    /// alike differ by up to a few milliseconds a turn for as long as they
    /// live (their JIT, their heap), so one pair alone would read that as
    /// the host's overhead, or hide some of it.
    async fn renew(&mut self, ends: &Ends, routes: &[Route]) {
        let api = ApiClient::connect(self.api.addr).await;
        let fresh = Rig::start(api, self.sessions.clone(), ends, routes).await;
        std::mem::replace(self, fresh).stop().await;
    }

    async fn turn(&mut self, route: Route) -> Timing {
        match route {
            Route::Karta => self.api.turn(&self.id, TEXT).await,
            Route::InProcess => {
                let id = self.in_process_id.as_deref().expect("the breakdown");
                in_process_turn(&self.sessions, id, TEXT).await
            }
            Route::Bare => self.bare.turn(TEXT).await,
            Route::ViaGateway => {
                let via = self.via_gateway.as_mut().expect("the breakdown");
                via.turn(TEXT).await
            }
            Route::Relay => {
                let relay = self.relay.as_mut().expect("the floor");
                relay.turn(TEXT).await
            }
        }
    }

    /// The `claude` process a route's turns run in, if the route runs.
    fn claude_pid(&self, route: Route) -> Option<u32> {
        match route {
            Route::Karta => self.sessions.harness_process_id(&self.id),
            Route::InProcess => self
                .in_process_id
                .as_deref()
                .and_then(|id| self.sessions.harness_process_id(id)),
            Route::Bare => self.bare.pid(),
            Route::ViaGateway => self.via_gateway.as_ref().and_then(BareCli::pid),
            Route::Relay => self.relay.as_ref().and_then(|relay| relay.pid),
        }
    }
}

impl Rig {
    /// Waits until every `claude` is idle: each keeps working for a while
    /// after its `result` line (writing its transcript, collecting garbage),
    /// and a turn timed meanwhile would pay for another's. A person's think
    /// time does the same between real turns.
    async fn settle(&self) {
        let pids: Vec<u32> = Route::ALL
            .into_iter()
            .filter_map(|r| self.claude_pid(r))
            .collect();
        let busy = || pids.iter().map(|p| cpu_time(*p)).sum::<Duration>();
        let started = Instant::now();
        let mut last = busy();
        while started.elapsed() < SETTLE_MAX {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let now = busy();
            if now.saturating_sub(last) < Duration::from_micros(300) {
                return;
            }
            last = now;
        }
    }
}

/// The longest [`Rig::settle`] waits.
const SETTLE_MAX: Duration = Duration::from_millis(500);

/// The CPU time all threads of `pid` have run so far
/// (`/proc/<pid>/task/*/schedstat`, nanoseconds).
fn cpu_time(pid: u32) -> Duration {
    tasks(pid).map(|task| task_use(&task).cpu).sum()
}

/// This process's CPU time by thread name (digits dropped, so
/// `sled-io-3` counts as `sled-io-`), with how often those threads were
/// put on a CPU: which part of the process — the tokio workers (host and
/// provider), sled's I/O threads, the meter's writer, the main thread
/// (the client) — did the work, and in how many wake-ups.
fn cpu_by_thread(pid: u32) -> BTreeMap<String, ThreadUse> {
    let mut out = BTreeMap::<String, ThreadUse>::new();
    for task in tasks(pid) {
        let name = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        let name = name.trim().trim_end_matches(|c: char| c.is_ascii_digit());
        *out.entry(name.to_owned()).or_default() += task_use(&task);
    }
    out
}

/// What threads used: time on a CPU, time spent runnable but waiting for
/// one, and the number of times they were put on one (`schedstat`'s three
/// fields).
#[derive(Default, Clone, Copy)]
struct ThreadUse {
    cpu: Duration,
    waited: Duration,
    runs: u64,
}

impl std::ops::AddAssign for ThreadUse {
    fn add_assign(&mut self, other: ThreadUse) {
        self.cpu += other.cpu;
        self.waited += other.waited;
        self.runs += other.runs;
    }
}

impl ThreadUse {
    fn since(self, before: ThreadUse) -> ThreadUse {
        ThreadUse {
            cpu: self.cpu.saturating_sub(before.cpu),
            waited: self.waited.saturating_sub(before.waited),
            runs: self.runs.saturating_sub(before.runs),
        }
    }
}

/// The `/proc` directories of `pid`'s threads.
fn tasks(pid: u32) -> impl Iterator<Item = PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|task| task.path())
}

/// One thread's time on a CPU, its time waiting for one, and its number
/// of runs there.
fn task_use(task: &Path) -> ThreadUse {
    let stat = std::fs::read_to_string(task.join("schedstat")).unwrap_or_default();
    let mut fields = stat
        .split_whitespace()
        .map(|v| v.parse::<u64>().unwrap_or(0));
    let cpu = fields.next().unwrap_or(0);
    let waited = fields.next().unwrap_or(0);
    let runs = fields.next().unwrap_or(0);
    ThreadUse {
        cpu: Duration::from_nanos(cpu),
        waited: Duration::from_nanos(waited),
        runs,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut values: Vec<f64>) -> f64 {
    assert!(!values.is_empty(), "no timed turns");
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// One figure of every turn in `timings`.
fn each(timings: &[Timing], figure: fn(&Timing) -> Duration) -> Vec<Duration> {
    timings.iter().map(figure).collect()
}

/// The median of the per-round differences `a - b`, in milliseconds.
/// Prints the median, the mean with its standard error and the standard
/// deviation of the pairs' differences (`done`, ms; the last two NaN with
/// fewer than two pairs) after `label`; returns the mean and its error.
fn print_over_pairs(label: &str, pairs: &[f64]) -> (f64, f64) {
    let count = pairs.len() as f64;
    let mean = pairs.iter().sum::<f64>() / count;
    let sd = if pairs.len() > 1 {
        (pairs.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (count - 1.0)).sqrt()
    } else {
        f64::NAN
    };
    let se = sd / count.sqrt();
    println!(
        "  {label}over the {} pairs: done difference median {:+.2} ms, mean {mean:+.2} ms ± {se:.2} ms (standard error; pairs' SD {sd:.2} ms)",
        pairs.len(),
        median(pairs.to_vec()),
    );
    (mean, se)
}

fn median_difference(a: &[Duration], b: &[Duration]) -> f64 {
    median(a.iter().zip(b).map(|(a, b)| ms(*a) - ms(*b)).collect())
}

/// Interleaved turns of one route, with the CPU time they took.
#[derive(Default)]
struct Interleaved {
    timings: Vec<Timing>,
    /// This process: the provider, the client, and for Karta the host.
    own_cpu: Vec<Duration>,
    /// The same, summed over the route's turns by thread name.
    own_cpu_by_thread: BTreeMap<String, ThreadUse>,
    /// The route's `claude` during the timed turn, by thread name.
    claude_cpu_by_thread: BTreeMap<String, ThreadUse>,
    /// The route's `claude` process, during the timed turn.
    claude_cpu: Vec<Duration>,
    /// The route's `claude` process, from the turn's start until it is
    /// idle again: a `claude` keeps working after its `result` line, and
    /// a turn timed to Karta's `done` (later than the bare CLI's `result`)
    /// sees more of that work than one timed to `result`.
    claude_cpu_to_idle: Vec<Duration>,
    /// The other routes' `claude` processes, idle meanwhile (or not).
    idle_claude_cpu: Vec<Duration>,
    /// Karta routes: the turn as the host timed it (message accepted →
    /// terminal event published, `karta_turn_duration_seconds`) and its
    /// own two parts of it (`karta_turn_host_seconds`), seconds.
    host: Vec<HostSums>,
    /// The turn's model call as the provider saw it (the last one, when a
    /// turn made more than one).
    model_call: Vec<Option<ModelCallTiming>>,
}

/// The sums of the host's turn metrics: the whole turn, its start part and
/// its end part, seconds. The difference across one turn is that turn's.
#[derive(Debug, Default, Clone, Copy)]
struct HostSums {
    turn: f64,
    start: f64,
    end: f64,
}

impl HostSums {
    fn read(sessions: &Sessions) -> Self {
        let metrics = sessions.metrics().render();
        let value = |series: &str| -> f64 {
            metrics
                .lines()
                .find_map(|l| {
                    l.strip_prefix(series)?
                        .strip_prefix(' ')?
                        .trim()
                        .parse()
                        .ok()
                })
                .unwrap_or(0.0)
        };
        let phase = |phase: &str| {
            value(&format!(
                "karta_turn_host_seconds_sum{{harness=\"claude_code\",phase=\"{phase}\"}}"
            ))
        };
        Self {
            turn: value("karta_turn_duration_seconds_sum{harness=\"claude_code\"}"),
            start: phase("start"),
            end: phase("end"),
        }
    }

    fn since(self, before: Self) -> Self {
        Self {
            turn: self.turn - before.turn,
            start: self.start - before.start,
            end: self.end - before.end,
        }
    }
}

/// When the provider received each model request (its head) and when its
/// answer was ready: it splits a timed turn into the way to the model, the
/// model, and the way back, on one clock for every route.
#[derive(Clone, Default)]
struct ProviderClock(Arc<std::sync::Mutex<Vec<(Instant, Instant)>>>);

impl ProviderClock {
    /// `router` with every request it answers stamped on this clock.
    fn around(&self, router: axum::Router) -> axum::Router {
        let clock = self.clone();
        router.layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let clock = clock.clone();
                async move {
                    let arrived = Instant::now();
                    let response = next.run(request).await;
                    clock.lock().push((arrived, Instant::now()));
                    response
                }
            },
        ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Instant, Instant)>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The calls stamped since the last `take`.
    fn take(&self) -> Vec<(Instant, Instant)> {
        std::mem::take(&mut *self.lock())
    }
}

/// A timed turn's one model call, from the turn's start: when the request
/// reached the provider and when the provider's answer was ready.
#[derive(Debug, Clone, Copy)]
struct ModelCallTiming {
    arrived: Duration,
    answered: Duration,
}

fn bench(c: &mut Criterion) {
    let Some(claude) = claude_binary() else {
        println!("overhead: claude is not installed (scripts/install-harnesses.sh); skipped");
        return;
    };
    let breakdown = std::env::var("KARTA_OVERHEAD_BREAKDOWN").is_ok_and(|v| v == "1");
    let floor = std::env::var("KARTA_OVERHEAD_FLOOR").is_ok_and(|v| v == "1");
    let jailed = !std::env::var("KARTA_OVERHEAD_JAIL").is_ok_and(|v| v == "0");
    let rounds: usize = std::env::var("KARTA_OVERHEAD_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(800)
        .max(1);
    let pairs: usize = std::env::var("KARTA_OVERHEAD_PROCESSES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
        .clamp(1, rounds);
    let per_pair = rounds.div_ceil(pairs);
    let routes: Vec<Route> = Route::ALL
        .into_iter()
        .filter(|r| match r {
            Route::Karta | Route::Bare => true,
            Route::InProcess | Route::ViaGateway => breakdown,
            Route::Relay => floor,
        })
        .collect();
    // `karta serve`'s logger (see the module docs), into a sink.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::sink)
        .try_init();
    let rt = common::runtime();
    let app = common::support_bot_app();
    let data = tempfile::tempdir().expect("tempdir");

    // The provider, and a Karta host whose gateway forwards to it.
    let provider_clock = ProviderClock::default();
    let (provider, provider_key, provider_url, provider_server) =
        common::offline_provider_around(&rt, |router| provider_clock.around(router));
    let host = rt.block_on(async {
        let mut config = HostConfig::new(app.path());
        config.data_dir = data.path().to_path_buf();
        config.harness = Some(HarnessKind::ClaudeCode);
        config.harness_binaries = HarnessBinaries {
            claude: Some(claude),
            opencode: None,
        };
        config.upstream = Some(Upstream {
            kind: UpstreamKind::Anthropic,
            base_url: provider_url.clone(),
            api_key: provider_key.clone(),
            org_key: false,
        });
        if !jailed {
            config.jail = None;
        }
        if let Some(nice) = env_nice("KARTA_OVERHEAD_HARNESS_NICE") {
            config.harness_nice = nice;
        }
        Host::start(config).await.expect("host starts")
    });
    let model_calls = || provider.usage("provider").requests;

    // Two untimed turns on each path, so every `claude` is up and warm.
    let ends = Ends {
        provider_url: provider_url.clone(),
        provider_key: provider_key.clone(),
        gateway_url: host.gateway_url().to_owned(),
    };
    let (mut rig, calls) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let api = ApiClient::connect(host.spawn_api(listener).await.expect("the API serves")).await;
        let mut rig = Rig::start(api, host.sessions().clone(), &ends, &routes).await;
        // A third untimed turn on every route (so their conversations stay
        // alike), counting the model calls of a warm one.
        let mut calls = [0; Route::ALL.len()];
        for &route in &routes {
            let before = model_calls();
            rig.turn(route).await;
            calls[route.index()] = model_calls() - before;
        }
        (rig, calls)
    });

    // Criterion: each route in turn.
    let mut sequential: [Vec<Timing>; Route::ALL.len()] = Default::default();
    let mut group = c.benchmark_group("overhead");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6))
        .sampling_mode(SamplingMode::Flat);
    for &route in &routes {
        group.bench_function(route.name(), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        rig.settle().await;
                        let timing = rig.turn(route).await;
                        sequential[route.index()].push(timing);
                        total += timing.done;
                    }
                    total
                })
            })
        });
    }
    group.finish();

    // Interleaved: one turn of each route per round, the order rotated, so
    // drift on the shared machine hits every route alike. First, untimed
    // turns bring every conversation to the same length.
    let exchanges = 3 + routes
        .iter()
        .map(|r| sequential[r.index()].len())
        .max()
        .unwrap_or(0);
    let mut interleaved: [Interleaved; Route::ALL.len()] = Default::default();
    let own = std::process::id();
    let cpus = cpu_plan();
    // Read once: a kind it does not know stops the run here, not at its
    // first turn.
    let spawn_kind = karta_spawn();
    rt.block_on(async {
        for &route in &routes {
            for _ in sequential[route.index()].len()..exchanges - 3 {
                rig.turn(route).await;
            }
        }
        for round in 0..rounds {
            if round > 0 && round % per_pair == 0 {
                rig.renew(&ends, &routes).await;
            }
            for i in 0..routes.len() {
                let route = routes[(round + i) % routes.len()];
                let claude = rig.claude_pid(route).expect("its claude runs");
                let others: Vec<u32> = routes
                    .iter()
                    .filter(|r| **r != route)
                    .filter_map(|r| rig.claude_pid(*r))
                    .collect();
                let others_cpu = || others.iter().map(|p| cpu_time(*p)).sum::<Duration>();
                let nice = match route {
                    Route::Bare => bare_nice(),
                    _ => karta_nice(),
                };
                if let Some(nice) = nice {
                    renice_threads(claude, nice);
                }
                apply_cpus(&cpus, "bench", own);
                for r in &routes {
                    let part = if *r == Route::Bare { "bare" } else { "karta" };
                    if let Some(pid) = rig.claude_pid(*r) {
                        apply_cpus(&cpus, part, pid);
                    }
                }
                let spawn = spawn_kind.as_deref().filter(|_| route != Route::Bare);
                let late = spawn.is_some_and(|kind| kind.ends_with("-late"));
                if let Some(kind) = spawn.filter(|_| !late) {
                    before_karta_turn(kind);
                }
                rig.settle().await;
                let host_before = HostSums::read(&rig.sessions);
                let before = (cpu_time(own), cpu_time(claude), others_cpu());
                let threads_before = cpu_by_thread(own);
                let claude_threads_before = cpu_by_thread(claude);
                if let Some(kind) = spawn.filter(|_| late) {
                    before_karta_turn(kind);
                }
                provider_clock.take();
                let begun = Instant::now();
                trace_marker(2 * route.index() as i32);
                let timing = rig.turn(route).await;
                trace_marker(2 * route.index() as i32 + 1);
                let model_call =
                    provider_clock
                        .take()
                        .last()
                        .map(|(arrived, answered)| ModelCallTiming {
                            arrived: arrived.duration_since(begun),
                            answered: answered.duration_since(begun),
                        });
                let entry = &mut interleaved[route.index()];
                entry.timings.push(timing);
                entry.model_call.push(model_call);
                entry.own_cpu.push(cpu_time(own).saturating_sub(before.0));
                for (name, used) in cpu_by_thread(own) {
                    let was = threads_before.get(&name).copied().unwrap_or_default();
                    *entry.own_cpu_by_thread.entry(name).or_default() += used.since(was);
                }
                for (name, used) in cpu_by_thread(claude) {
                    let was = claude_threads_before
                        .get(&name)
                        .copied()
                        .unwrap_or_default();
                    *entry.claude_cpu_by_thread.entry(name).or_default() += used.since(was);
                }
                entry
                    .claude_cpu
                    .push(cpu_time(claude).saturating_sub(before.1));
                entry
                    .idle_claude_cpu
                    .push(others_cpu().saturating_sub(before.2));
                rig.settle().await;
                entry
                    .claude_cpu_to_idle
                    .push(cpu_time(claude).saturating_sub(before.1));
                entry
                    .host
                    .push(HostSums::read(&rig.sessions).since(host_before));
            }
        }
    });
    let request_kib = provider
        .recent_requests()
        .last()
        .map_or(0.0, |r| r.to_string().len() as f64 / 1024.0);

    println!();
    println!(
        "overhead: model calls per warm turn: karta {}, bare {}; last model request {request_kib:.0} KiB",
        calls[Route::Karta.index()],
        calls[Route::Bare.index()]
    );
    if routes.iter().any(|r| sequential[r.index()].is_empty()) {
        // `cargo bench --bench overhead -- <filter>` skipped (some of) the
        // criterion group: only the interleaved rounds below compare.
        println!("overhead: sequential: not every route ran in criterion (filtered out)");
    } else {
        println!("overhead: sequential (the criterion runs; median of every timed turn):");
        let seq = |route: Route| {
            median(
                sequential[route.index()]
                    .iter()
                    .map(|t| ms(t.done))
                    .collect(),
            )
        };
        for &route in &routes {
            let turns = sequential[route.index()].len();
            println!(
                "  {:<28} {:8.2} ms  ({turns} turns)",
                route.name(),
                seq(route)
            );
        }
        println!(
            "  karta - bare                 {:8.2} ms  (goal ≤ 2 ms)",
            seq(Route::Karta) - seq(Route::Bare)
        );
    }
    println!(
        "overhead: interleaved ({rounds} rounds over {pairs} pairs of claude processes, the first from {exchanges} exchanges on, the others from 2; one turn of each route per round; medians; CPU: this process = provider, client and host; the route's claude during the timed turn, and until it is idle again; the other, idle claudes):"
    );
    println!(
        "  {:<28} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "route", "first text", "done", "own CPU", "claude CPU", "to idle", "idle CPU"
    );
    for &route in &routes {
        let entry = &interleaved[route.index()];
        println!(
            "  {:<28} {:>7.2} ms {:>7.2} ms {:>7.2} ms {:>7.2} ms {:>7.2} ms {:>7.2} ms",
            route.name(),
            median(entry.timings.iter().map(|t| ms(t.first_text)).collect()),
            median(entry.timings.iter().map(|t| ms(t.done)).collect()),
            median(entry.own_cpu.iter().copied().map(ms).collect()),
            median(entry.claude_cpu.iter().copied().map(ms).collect()),
            median(entry.claude_cpu_to_idle.iter().copied().map(ms).collect()),
            median(entry.idle_claude_cpu.iter().copied().map(ms).collect()),
        );
    }
    // Where this process's CPU went, by thread, and the route's claude's.
    let by_thread = |threads: &BTreeMap<String, ThreadUse>, turns: f64| {
        threads
            .iter()
            .filter(|(_, used)| ms(used.cpu) / turns >= 0.005)
            .map(|(name, used)| {
                format!(
                    "{name} {:.2} ({:.1}; {:.2})",
                    ms(used.cpu) / turns,
                    used.runs as f64 / turns,
                    ms(used.waited) / turns,
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    for &route in &routes {
        let entry = &interleaved[route.index()];
        let turns = entry.timings.len().max(1) as f64;
        println!(
            "  {}: own CPU by thread, ms per turn (means; in brackets, times on a CPU; ms waiting for a CPU): {}",
            route.name(),
            by_thread(&entry.own_cpu_by_thread, turns)
        );
        println!(
            "  {}: its claude's CPU by thread during the turn (the same figures): {}",
            route.name(),
            by_thread(&entry.claude_cpu_by_thread, turns)
        );
    }
    // Per-round differences against the bare CLI.
    let bare = &interleaved[Route::Bare.index()];
    for &route in routes.iter().filter(|r| **r != Route::Bare) {
        let entry = &interleaved[route.index()];
        let paired = |figure: fn(&Timing) -> Duration| {
            median_difference(&each(&entry.timings, figure), &each(&bare.timings, figure))
        };
        println!(
            "  {} - bare (median of per-round differences): first text {:+.2} ms, done {:+.2} ms",
            route.name(),
            paired(|t| t.first_text),
            paired(|t| t.done),
        );
    }

    // Karta against another route of the same rounds.
    let karta_over = |other: Route, what: &str| {
        let karta = &interleaved[Route::Karta.index()].timings;
        let others = &interleaved[other.index()].timings;
        let paired = |figure: fn(&Timing) -> Duration| {
            median_difference(&each(karta, figure), &each(others, figure))
        };
        println!(
            "  karta_warm_turn - {} ({what}; median of per-round differences): first text {:+.2} ms, done {:+.2} ms",
            other.name(),
            paired(|t| t.first_text),
            paired(|t| t.done),
        );
    };
    // The comparison issue 8 names: the bare CLI on the *same* gateway as
    // Karta's (the offline model behind it), so the difference is the host
    // alone — the API, the session, the log, the adapter — without the
    // metering hop every deployment has.
    if breakdown {
        karta_over(Route::ViaGateway, "same gateway: the host alone");
    }
    // What Karta adds over the floor of any host: the same two hops (an
    // HTTP API in front of the CLI, a proxy in front of the provider)
    // with nothing behind them.
    if floor {
        karta_over(Route::Relay, "Karta over the floor of any host");
    }

    // The host's own two parts of every Karta turn this process ran
    // (warm-up, criterion and interleaved), from its metrics: what the
    // host adds around the harness, without `claude`'s own spread.
    let metrics = rig.sessions.metrics().render();
    let phase = |phase: &str| {
        let value = |what: &str| -> Option<f64> {
            let prefix = format!(
                "karta_turn_host_seconds_{what}{{harness=\"claude_code\",phase=\"{phase}\"}} "
            );
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(&prefix))?
                .trim()
                .parse()
                .ok()
        };
        match (value("sum"), value("count")) {
            (Some(sum), Some(count)) if count > 0.0 => format!("{:.2} ms", sum / count * 1e3),
            _ => "not measured".to_owned(),
        }
    };
    println!(
        "  karta's host, mean per turn (karta_turn_host_seconds): message accepted -> harness {}, harness returned -> done published {}",
        phase("start"),
        phase("end"),
    );

    // Each Karta turn as the host timed it, against what its client saw
    // and against the bare CLI's turn of the same round: where a gap sits
    // (in the host's steps, in the harness, or outside the host's turn:
    // the API's request and the stream's last frame).
    for &route in routes
        .iter()
        .filter(|r| matches!(r, Route::Karta | Route::InProcess))
    {
        let entry = &interleaved[route.index()];
        let ms_of = |f: fn(&HostSums) -> f64| -> Vec<f64> {
            entry.host.iter().map(|h| f(h) * 1e3).collect()
        };
        let harness = ms_of(|h| h.turn - h.start - h.end);
        let outside: Vec<f64> = entry
            .timings
            .iter()
            .zip(&entry.host)
            .map(|(t, h)| ms(t.done) - h.turn * 1e3)
            .collect();
        let harness_over_bare: Vec<f64> = harness
            .iter()
            .zip(&interleaved[Route::Bare.index()].timings)
            .map(|(h, bare)| h - ms(bare.done))
            .collect();
        println!(
            "  {}: the host's turn {:.2} ms = start {:.2} + harness {:.2} + end {:.2} (medians); outside it (client's done - host's turn) {:.2} ms; harness - bare done (per round) {:+.2} ms",
            route.name(),
            median(ms_of(|h| h.turn)),
            median(ms_of(|h| h.start)),
            median(harness),
            median(ms_of(|h| h.end)),
            median(outside),
            median(harness_over_bare),
        );
    }

    // Each route's turn split at its model call, as the provider saw it:
    // the way to the model (the host's start, the harness building its
    // request, the gateway's hop in), the provider's own time, and the way
    // back (the gateway's hop out, the harness reading the answer, the
    // host's end). The per-round differences from the bare turn say which
    // side of the model call a gap sits on.
    let split = |route: Route| -> Vec<Option<[f64; 3]>> {
        let entry = &interleaved[route.index()];
        entry
            .timings
            .iter()
            .zip(&entry.model_call)
            .map(|(timing, call)| {
                call.map(|c| {
                    [
                        ms(c.arrived),
                        ms(c.answered) - ms(c.arrived),
                        ms(timing.done) - ms(c.answered),
                    ]
                })
            })
            .collect()
    };
    let bare_split = split(Route::Bare);
    for &route in &routes {
        let parts = split(route);
        let part = |i: usize| median(parts.iter().flatten().map(|p| p[i]).collect());
        let over_bare = |i: usize| {
            let differences: Vec<f64> = parts
                .iter()
                .zip(&bare_split)
                .filter_map(|(a, b)| Some(a.as_ref()?[i] - b.as_ref()?[i]))
                .collect();
            if route == Route::Bare || differences.is_empty() {
                String::new()
            } else {
                format!(" ({:+.2} ms over bare)", median(differences))
            }
        };
        if parts.iter().flatten().next().is_none() {
            continue;
        }
        println!(
            "  {}: to the model {:.2} ms{}, at the provider {:.2} ms{}, back to done {:.2} ms{} (medians; per-round differences)",
            route.name(),
            part(0),
            over_bare(0),
            part(1),
            over_bare(1),
            part(2),
            over_bare(2),
        );
    }

    // The same differences by pair of `claude` processes.
    let (karta, bare) = (
        &interleaved[Route::Karta.index()],
        &interleaved[Route::Bare.index()],
    );
    let (karta_done, bare_done) = (
        each(&karta.timings, |t| t.done),
        each(&bare.timings, |t| t.done),
    );
    let (karta_first, bare_first) = (
        each(&karta.timings, |t| t.first_text),
        each(&bare.timings, |t| t.first_text),
    );
    let mut pair_done = Vec::new();
    for (pair, from) in (0..rounds).step_by(per_pair).enumerate() {
        let to = (from + per_pair).min(rounds);
        pair_done.push(median_difference(
            &karta_done[from..to],
            &bare_done[from..to],
        ));
        println!(
            "  pair {} of claude processes, {} rounds: karta - bare: first text {:+.2} ms, done {:+.2} ms; claude CPU to idle {:+.2} ms (karta {:.2} ms, bare {:.2} ms)",
            pair + 1,
            to - from,
            median_difference(&karta_first[from..to], &bare_first[from..to]),
            median_difference(&karta_done[from..to], &bare_done[from..to]),
            median_difference(
                &karta.claude_cpu_to_idle[from..to],
                &bare.claude_cpu_to_idle[from..to]
            ),
            median(karta_done[from..to].iter().copied().map(ms).collect()),
            median(bare_done[from..to].iter().copied().map(ms).collect()),
        );
    }
    // Each pair carries its own persistent difference (two `claude`s started
    // alike differ for as long as they live): the pairs are the samples
    // that say how sure the figure is.
    let (pair_mean, pair_se) = print_over_pairs("", &pair_done);
    // The floor's pairs alike: each round's three `claude`s were started
    // together, from the same image.
    if floor {
        let relay_done = each(&interleaved[Route::Relay.index()].timings, |t| t.done);
        for (name, a, b) in [
            ("floor_relay_turn - bare", &relay_done, &bare_done),
            (
                "karta_warm_turn - floor_relay_turn",
                &karta_done,
                &relay_done,
            ),
        ] {
            let pairs: Vec<f64> = (0..rounds)
                .step_by(per_pair)
                .map(|from| {
                    let to = (from + per_pair).min(rounds);
                    median_difference(&a[from..to], &b[from..to])
                })
                .collect();
            print_over_pairs(&format!("{name}, "), &pairs);
        }
    }
    common::write_results(
        "overhead",
        &[
            (
                "done_over_bare_p50".into(),
                median_difference(&karta_done, &bare_done),
                "ms",
            ),
            ("done_over_bare_pair_mean".into(), pair_mean, "ms"),
            ("done_over_bare_pair_se".into(), pair_se, "ms"),
            (
                "first_text_over_bare_p50".into(),
                median_difference(&karta_first, &bare_first),
                "ms",
            ),
            (
                "karta_done_p50".into(),
                median(karta_done.iter().copied().map(ms).collect()),
                "ms",
            ),
            (
                "bare_done_p50".into(),
                median(bare_done.iter().copied().map(ms).collect()),
                "ms",
            ),
        ],
    );

    rt.block_on(async {
        rig.stop().await;
        host.shutdown().await;
        drop(provider_server);
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
