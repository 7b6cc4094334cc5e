//! N concurrent streaming sessions over real HTTP on loopback: every session
//! sends one message whose turn calls a wasm tool, and reads its SSE stream to
//! the end. Reports wall time, turns/s, events/s, the turn latency each
//! client saw (p50, p99) and the process's peak RSS (server and clients share
//! the process, so the figure bounds the server's).
//!
//! Run: `cargo bench --bench concurrent_sessions`. Without arguments it
//! measures N = 10, 100 and 1,000 (`KARTA_BENCH_SCALE=10,100,1000`), each
//! `KARTA_BENCH_RUNS` times (default 3) in a fresh process of its own (the
//! peak RSS of one N must not be another's), prints a table of medians and
//! writes the plot `BENCHMARKS-scale.svg` at the workspace root and the
//! medians to `target/bench-results/concurrent_sessions.json` (for
//! `scripts/bench.sh`).
//! `KARTA_BENCH_SESSIONS=N` runs one measurement in this process instead.

use std::time::{Duration, Instant};

mod common;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use karta_host::{Host, HostConfig};
use serde_json::{Value, json};

/// One run's figures.
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    sessions: usize,
    wall_s: f64,
    turns_per_s: f64,
    events_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    rss_before_mib: f64,
    peak_rss_mib: f64,
}

impl Figures {
    /// One line a parent process parses.
    fn line(&self) -> String {
        format!(
            "FIGURES {} {} {} {} {} {} {} {}",
            self.sessions,
            self.wall_s,
            self.turns_per_s,
            self.events_per_s,
            self.p50_ms,
            self.p99_ms,
            self.rss_before_mib,
            self.peak_rss_mib
        )
    }

    fn parse(line: &str) -> Option<Self> {
        let mut fields = line.strip_prefix("FIGURES ")?.split(' ');
        let mut next = || fields.next()?.parse::<f64>().ok();
        Some(Self {
            sessions: next()? as usize,
            wall_s: next()?,
            turns_per_s: next()?,
            events_per_s: next()?,
            p50_ms: next()?,
            p99_ms: next()?,
            rss_before_mib: next()?,
            peak_rss_mib: next()?,
        })
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    if let Some(n) = std::env::var("KARTA_BENCH_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio");
        let figures = rt.block_on(run(n));
        println!("concurrent_sessions: N = {n}");
        println!("  wall time          {:.2} s", figures.wall_s);
        println!("  events/s           {:.0}", figures.events_per_s);
        println!("  turns/s            {:.0}", figures.turns_per_s);
        println!(
            "  turn latency       p50 {:.1} ms, p99 {:.1} ms",
            figures.p50_ms, figures.p99_ms
        );
        println!(
            "  peak RSS           {:.0} MiB (after creating the sessions: {:.0} MiB)",
            figures.peak_rss_mib, figures.rss_before_mib
        );
        println!("{}", figures.line());
        return;
    }
    let scale: Vec<usize> = std::env::var("KARTA_BENCH_SCALE")
        .unwrap_or_else(|_| "10,100,1000".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let runs: usize = std::env::var("KARTA_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let exe = std::env::current_exe().expect("this bench's path");
    let mut medians = Vec::new();
    for &n in &scale {
        let mut all = Vec::new();
        for run in 1..=runs {
            let output = std::process::Command::new(&exe)
                .env("KARTA_BENCH_SESSIONS", n.to_string())
                .output()
                .expect("run one measurement");
            assert!(
                output.status.success(),
                "N = {n}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let stdout = String::from_utf8_lossy(&output.stdout);
            let figures = stdout
                .lines()
                .find_map(Figures::parse)
                .expect("a FIGURES line");
            println!(
                "N = {n:5} run {run}: {:6.0} turns/s, {:7.0} events/s, p50 {:6.1} ms, p99 {:6.1} ms, peak RSS {:4.0} MiB",
                figures.turns_per_s,
                figures.events_per_s,
                figures.p50_ms,
                figures.p99_ms,
                figures.peak_rss_mib
            );
            all.push(figures);
        }
        medians.push(median(&all));
    }
    println!();
    println!(
        "| sessions | wall time | turns/s | events/s | turn p50 | turn p99 | RSS before | peak RSS |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for m in &medians {
        println!(
            "| {} | {:.2} s | {:.0} | {:.0} | {:.1} ms | {:.1} ms | {:.0} MiB | {:.0} MiB |",
            m.sessions,
            m.wall_s,
            m.turns_per_s,
            m.events_per_s,
            m.p50_ms,
            m.p99_ms,
            m.rss_before_mib,
            m.peak_rss_mib
        );
    }
    let mut results = Vec::new();
    for m in &medians {
        let n = m.sessions;
        results.push((format!("turns_per_s_{n}"), m.turns_per_s, "/s"));
        results.push((format!("turn_p50_{n}"), m.p50_ms, "ms"));
        results.push((format!("peak_rss_{n}"), m.peak_rss_mib, "MiB"));
    }
    common::write_results("concurrent_sessions", &results);
    let path = common::root().join("BENCHMARKS-scale.svg");
    plot(&medians, &path).expect("plot");
    println!("\nplot: {}", path.display());
}

/// The median of each figure over runs.
fn median(runs: &[Figures]) -> Figures {
    let of = |f: fn(&Figures) -> f64| {
        let mut values: Vec<f64> = runs.iter().map(f).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    Figures {
        sessions: runs[0].sessions,
        wall_s: of(|f| f.wall_s),
        turns_per_s: of(|f| f.turns_per_s),
        events_per_s: of(|f| f.events_per_s),
        p50_ms: of(|f| f.p50_ms),
        p99_ms: of(|f| f.p99_ms),
        rss_before_mib: of(|f| f.rss_before_mib),
        peak_rss_mib: of(|f| f.peak_rss_mib),
    }
}

/// Three panels against the number of sessions (log scale): turns/s, turn
/// latency (p50, p99) and peak RSS, each with its target.
fn plot(medians: &[Figures], path: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;

    let root = SVGBackend::new(path, (1200, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 3));
    let max_n = medians.iter().map(|m| m.sessions).max().unwrap_or(10) as f64 * 1.5;
    let min_n = medians.iter().map(|m| m.sessions).min().unwrap_or(10) as f64 / 1.5;
    type Series = (&'static str, fn(&Figures) -> f64, RGBColor);
    let draw = |area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
                title: &str,
                y_label: &str,
                series: &[Series],
                target: Option<(f64, &str)>|
     -> Result<(), Box<dyn std::error::Error>> {
        let top = series
            .iter()
            .flat_map(|(_, f, _)| medians.iter().map(f))
            .chain(target.map(|(t, _)| t))
            .fold(0.0, f64::max)
            * 1.2;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d((min_n..max_n).log_scale(), 0.0..top.max(1.0))?;
        chart
            .configure_mesh()
            .x_desc("concurrent sessions")
            .y_desc(y_label)
            .draw()?;
        for (name, f, color) in series {
            let points: Vec<(f64, f64)> =
                medians.iter().map(|m| (m.sessions as f64, f(m))).collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], *color));
            chart.draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 4, color.filled())),
            )?;
        }
        if let Some((value, name)) = target {
            chart
                .draw_series(LineSeries::new(
                    [(min_n, value), (max_n, value)],
                    RED.stroke_width(1),
                ))?
                .label(name)
                .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], RED));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
        Ok(())
    };
    draw(
        &panels[0],
        "Throughput",
        "turns/s",
        &[("turns/s", |m| m.turns_per_s, BLUE)],
        Some((1000.0, "target ≥ 1,000 turns/s")),
    )?;
    draw(
        &panels[1],
        "Turn latency (POST to done)",
        "ms",
        &[("p50", |m| m.p50_ms, BLUE), ("p99", |m| m.p99_ms, MAGENTA)],
        None,
    )?;
    draw(
        &panels[2],
        "Peak RSS (server + clients)",
        "MiB",
        &[
            ("peak RSS", |m| m.peak_rss_mib, BLUE),
            ("after creating the sessions", |m| m.rss_before_mib, GREEN),
        ],
        Some((300.0, "target ≤ 300 MiB")),
    )?;
    root.present()?;
    Ok(())
}

fn peak_rss_mib() -> f64 {
    common::status_kib(std::process::id(), "VmHWM") / 1024.0
}

async fn run(n: usize) -> Figures {
    let app = common::calculator_app();
    let data = tempfile::tempdir().expect("tempdir");
    let mut config = HostConfig::new(app.path());
    // The app has an AGENTS.md; these benches measure the builtin loop.
    config.harness = Some(karta_host::app::HarnessKind::Builtin);
    config.data_dir = data.path().to_path_buf();
    let host = Host::start(config).await.expect("host");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = host.clone();
    tokio::spawn(async move { server.serve(listener, std::future::pending()).await });

    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(n)
        .build(connector);
    let post = move |path: String, body: Value| {
        let client = client.clone();
        async move {
            let request = hyper::Request::post(format!("http://{addr}{path}"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.to_string())))
                .expect("request");
            client.request(request).await.expect("response")
        }
    };

    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let response = post("/v1/sessions".into(), json!({})).await;
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let session: Value = serde_json::from_slice(&bytes).expect("JSON");
        ids.push(session["id"].as_str().expect("id").to_owned());
    }
    let rss_before = peak_rss_mib();

    let started = Instant::now();
    let tasks: Vec<_> = ids
        .into_iter()
        .map(|id| {
            let post = post.clone();
            tokio::spawn(async move {
                let sent = Instant::now();
                let response = post(
                    format!("/v1/sessions/{id}/messages"),
                    json!({ "text": "/tool calc {\"expression\": \"6*7\"}", "stream": true }),
                )
                .await;
                let mut body = response.into_body();
                let mut events = 0usize;
                let mut done = false;
                while let Some(frame) = body.frame().await {
                    let Ok(data) = frame.expect("frame").into_data() else {
                        continue;
                    };
                    let text = String::from_utf8_lossy(&data);
                    events += text.matches("\nid: ").count();
                    done |= text.contains("event: done");
                }
                assert!(done, "every stream ends with done");
                (events, sent.elapsed())
            })
        })
        .collect();
    let mut events = 0;
    let mut latencies: Vec<Duration> = Vec::with_capacity(n);
    for task in tasks {
        let (e, latency) = task.await.expect("task");
        events += e;
        latencies.push(latency);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let at = |q: f64| {
        latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)].as_secs_f64()
            * 1000.0
    };
    Figures {
        sessions: n,
        wall_s: elapsed,
        turns_per_s: n as f64 / elapsed,
        events_per_s: events as f64 / elapsed,
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        rss_before_mib: rss_before,
        peak_rss_mib: peak_rss_mib(),
    }
}
