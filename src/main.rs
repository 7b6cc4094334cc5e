//! `karta` — the command line of the Karta host.
//!
//! A thin layer over `karta-host`: it parses arguments, calls the library,
//! and prints results.
//!
//! ```text
//! karta serve [APP_DIR] [--listen ADDR] [--data DIR]   serve a folder, or every published project
//! karta publish DIR --project org/name [--activate]    publish a release
//! karta releases | activate | rollback org/name …      the active release
//! karta org | project | keys | embed-keys | tokens …   tenants and credentials
//! karta doctor [APP_DIR]                               what this machine can run
//! karta chat [URL]                                     talk to a served app
//! karta tool list  <component.wasm>                    a plugin's tools
//! karta tool call  <component.wasm> <tool> '<json>'    run one tool once
//! ```

mod chat;
mod operator;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use karta_host::plugin::{
    CallFailure, CallOptions, ErrorKind, Limits, PluginGrant, PluginRuntime, RuntimeConfig,
    WorkspaceAccess,
};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "karta",
    version,
    about = "Serve agent harness apps as metered HTTP services; every tool call runs in WebAssembly.",
    long_about = None,
)]
struct Cli {
    /// How log lines are written to stderr: `text` for people, `json` (one
    /// object per line) for log collectors. Levels come from RUST_LOG
    /// (default `info` for serve, `warn` otherwise; e.g.
    /// RUST_LOG=karta_host=debug,tower_http=debug).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `karta serve --durability`.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
enum DurabilityArg {
    /// A write is acknowledged once it survives this process dying (kill -9,
    /// a crash): sled writes its log through to the device. A machine crash
    /// or power cut can lose the last ~0.5 s.
    #[default]
    Process,
    /// Also survives a machine crash or power cut: every flush ends with a
    /// sync of the data dir's file system (one more disk sync, ~1–1.5 ms on
    /// the project's machine, on each of a turn's two flushes).
    Machine,
}

/// Installs the log subscriber: RUST_LOG filters, `format` shapes.
fn install_logging(format: LogFormat, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if let Err(e) = installed {
        eprintln!("karta: cannot install the logger: {e}");
    }
}

#[derive(Subcommand)]
enum Command {
    /// Serve a harness app (a folder with CLAUDE.md / AGENTS.md, .claude/,
    /// karta.toml) over Karta's session protocol.
    ///
    /// With no model key configured, turns run on the offline model (a
    /// deterministic development model; see docs/OFFLINE_MODEL.md). Without
    /// API keys the server runs in dev mode: one implicit org, no auth, so it
    /// binds loopback addresses only. Ctrl-C or SIGTERM stops it cleanly
    /// (running turns cancelled and saved, the data dir closed).
    Serve(ServeArgs),
    /// Report what this machine can run: the harness binaries (Claude Code,
    /// OpenCode) and their versions, the jail features of the kernel, the
    /// model upstream, and which harness an app folder would get.
    Doctor {
        /// An app folder to check (optional).
        app_dir: Option<PathBuf>,
        /// The data directory `karta serve` uses for the app (where its
        /// setup script's result is kept).
        #[arg(long, default_value = ".karta")]
        data: PathBuf,
    },
    /// Chat with a served app from the terminal: opens a session and streams
    /// replies; tool calls show as one-line summaries; approval prompts are
    /// answered at the keyboard. Type /quit to leave, /agent NAME to switch
    /// agents.
    Chat {
        /// The server's base URL.
        #[arg(default_value = "http://127.0.0.1:8000")]
        url: String,
        /// Resume this session instead of opening a new one.
        #[arg(long)]
        session: Option<String>,
        /// Start with this agent.
        #[arg(long)]
        agent: Option<String>,
    },
    /// Inspect and run tool plugins (WebAssembly components) the way the host
    /// runs them, with the same limits.
    #[command(subcommand)]
    Tool(ToolCommand),
    /// Orgs: the customers of this host (the operator's).
    Org {
        #[command(subcommand)]
        command: operator::OrgCommand,
        #[command(flatten)]
        target: operator::Target,
    },
    /// Projects: an org's published apps.
    Project {
        #[command(subcommand)]
        command: operator::ProjectCommand,
        #[command(flatten)]
        target: operator::Target,
    },
    /// API keys (`kt_live_…`; scopes read, write, admin).
    Keys {
        #[command(subcommand)]
        command: operator::KeyCommand,
        #[command(flatten)]
        target: operator::Target,
    },
    /// Embed keys (`pk_live_…`): a customer's page mints session tokens
    /// with one, from an allowed origin.
    EmbedKeys {
        #[command(subcommand)]
        command: operator::EmbedKeyCommand,
        #[command(flatten)]
        target: operator::Target,
    },
    /// An org's own model provider keys (BYOK): sealed at rest, sent only
    /// to the provider with the org's model calls.
    ProviderKeys {
        #[command(subcommand)]
        command: operator::ProviderKeyCommand,
        #[command(flatten)]
        target: operator::Target,
    },
    /// An org's webhook endpoints: signed POSTs on `session.started`,
    /// `turn.completed`, `turn.failed`, `budget.exceeded` and
    /// `release.activated` (docs/WEBHOOKS.md says how to verify them).
    Webhooks {
        #[command(subcommand)]
        command: operator::WebhookCommand,
        #[command(flatten)]
        target: operator::Target,
    },
    /// An org's usage from the ledger: tokens, fuel and cost in
    /// micro-units, optionally for one project, session or end user, by
    /// project, session, end user, day, month or model.
    Usage {
        /// The org's slug.
        #[arg(long)]
        org: String,
        /// Only this project (its slug).
        #[arg(long)]
        project: Option<String>,
        /// Only this session (with --project).
        #[arg(long)]
        session: Option<String>,
        /// Only this end user (with --project).
        #[arg(long)]
        end_user: Option<String>,
        /// From this UTC day (YYYY-MM-DD).
        #[arg(long)]
        from: Option<String>,
        /// To this UTC day (YYYY-MM-DD).
        #[arg(long)]
        to: Option<String>,
        /// none, project, session, end_user, day, month, model or key (the
        /// API key or embed key the sessions were opened with).
        #[arg(long, default_value = "none")]
        group_by: String,
        #[command(flatten)]
        target: operator::Target,
    },
    /// Cost caps per day or month: over one, turns are refused (402).
    Budgets {
        #[command(subcommand)]
        command: operator::BudgetCommand,
        #[command(flatten)]
        target: operator::Target,
    },
    /// Session tokens and end users' identity tokens.
    Tokens {
        #[command(subcommand)]
        command: operator::TokenCommand,
        #[command(flatten)]
        target: operator::Target,
    },
    /// Publish an app folder as the next release of a project: checked,
    /// packed (without .git, .env, node_modules, target), uploaded, its
    /// plugins compiled, stored immutably. Not active until activated.
    Publish {
        /// The app folder.
        dir: PathBuf,
        /// `org/project` (the project is created on first publish).
        #[arg(long)]
        project: String,
        /// Activate the release at once.
        #[arg(long)]
        activate: bool,
        #[command(flatten)]
        target: operator::Target,
    },
    /// A project's releases; `*` marks the active one.
    Releases {
        /// `org/project`.
        project: String,
        #[command(flatten)]
        target: operator::Target,
    },
    /// Make a release the one new sessions start on (running sessions stay
    /// on theirs).
    Activate {
        /// `org/project`.
        project: String,
        /// `vN`.
        version: String,
        #[command(flatten)]
        target: operator::Target,
    },
    /// Go back to the release active before (or `--to vN`).
    Rollback {
        /// `org/project`.
        project: String,
        /// The version to go back to.
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        target: operator::Target,
    },
}

#[derive(Subcommand)]
enum ToolCommand {
    /// Print the tools a plugin offers, with their input schemas, as JSON.
    List {
        /// The plugin component (`cargo build --target wasm32-wasip2`).
        component: PathBuf,
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
    /// Run one tool once, in a fresh sandboxed instance.
    ///
    /// Prints `{"output": …, "fuel_consumed": N, "duration_us": N}` and exits
    /// 0, or `{"error": {"kind": …, "message": …}, …}` and exits non-zero (2
    /// for the caller's mistakes: invalid_input, unknown_tool; 1 otherwise). Kinds:
    /// out_of_fuel, out_of_memory, timeout, trap, invalid_input, tool_error,
    /// access_denied, output_too_large, invalid_output, unknown_tool, busy,
    /// internal; invalid_component when the file is not a usable plugin.
    #[command(
        after_help = "Example:\n  karta tool call units.wasm convert '{\"value\":3,\"from\":\"mi\",\"to\":\"km\"}' --fuel 5000000"
    )]
    Call {
        /// The plugin component.
        component: PathBuf,
        /// The tool's name (see `karta tool list`).
        tool: String,
        /// The input, a JSON object as text; `-` reads it from stdin.
        #[arg(default_value = "{}")]
        input: String,
        #[command(flatten)]
        limits: LimitArgs,
        /// Mount this directory at /workspace inside the plugin, read-write;
        /// append `:ro` for read-only. Without it the plugin sees no files.
        #[arg(long, value_name = "PATH[:ro]")]
        dir: Option<String>,
        /// Allow outbound HTTP to this host (`name`, `name:port`, `*.domain`);
        /// repeat for more. Without it every request is denied.
        #[arg(long = "allow-host", value_name = "HOST")]
        allow_hosts: Vec<String>,
        /// Let the plugin reach this internal address range (CIDR, e.g.
        /// 127.0.0.1/32); repeat for more. Loopback, private, link-local and
        /// other internal addresses are refused otherwise, whatever
        /// --allow-host says.
        #[arg(long = "allow-net", value_name = "CIDR")]
        allow_net: Vec<karta_host::plugin::IpNet>,
        /// Also print what the plugin logged, to stderr.
        #[arg(long)]
        logs: bool,
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// The harness app folder, served as a project of the `dev` org (and on
    /// the flat `/v1/…` routes). Without it, every published project in the
    /// data dir is served on `/{org}/{project}/v1/…`.
    app_dir: Option<PathBuf>,
    /// Address to listen on (loopback only in dev mode: no API key exists).
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: std::net::SocketAddr,
    /// Data directory: sled database, session workspaces, compiled plugins.
    #[arg(long, default_value = ".karta")]
    data: PathBuf,
    /// What an acknowledged write (a message, a turn's end, a ledger record)
    /// survives. `machine` syncs the data dir's file system on every flush;
    /// give the data dir a file system of its own for a predictable cost.
    #[arg(long, value_enum, default_value_t = DurabilityArg::Process)]
    durability: DurabilityArg,
    /// A real model provider instead of the offline model: `anthropic` or
    /// `openai` (any OpenAI-compatible API). The key is read from
    /// KARTA_UPSTREAM_KEY, never from the command line.
    #[arg(long, value_name = "KIND")]
    upstream: Option<String>,
    /// The provider's base URL (default: `https://api.anthropic.com` or
    /// `https://api.openai.com`).
    #[arg(long, value_name = "URL")]
    upstream_url: Option<String>,
    /// Seconds a turn waits for an approval before treating it as denied.
    #[arg(long, default_value_t = 600)]
    approval_timeout_secs: u64,
    /// The harness that runs turns: `auto` follows the folder (`.claude/` or
    /// CLAUDE.md -> claude-code, `.opencode/` or AGENTS.md -> opencode) or
    /// karta.toml `harness`; `builtin`, `claude-code` or `opencode` force
    /// one. A harness whose binary is missing falls back to builtin, saying
    /// so. Binaries: KARTA_CLAUDE_BIN / KARTA_OPENCODE_BIN, else
    /// ./harnesses/node_modules/.bin (scripts/install-harnesses.sh), else PATH.
    #[arg(long, default_value = "auto", value_name = "HARNESS")]
    harness: String,
    /// Seconds a harness process (claude, opencode) may sit idle before it
    /// is stopped; the next turn starts a new one that resumes the session.
    #[arg(long, default_value_t = 600)]
    harness_idle_secs: u64,
    /// The nice value of harness processes and everything they start
    /// (-20..19). 0 runs them as the host; below 0 runs them ahead of the
    /// host's threads, which then take a busy harness's CPU less often but
    /// wait longer for one themselves — and serve every tenant
    /// (BENCHMARKS.md, thirty-first session). Below 0 needs CAP_SYS_NICE
    /// (root has it): without, the host warns and runs them at 0.
    #[arg(long, default_value_t = karta_harness::process::DEFAULT_HARNESS_NICE,
          value_parser = clap::value_parser!(i32).range(-20..=19), allow_negative_numbers = true)]
    harness_nice: i32,
    /// Warm pool: Claude Code or OpenCode processes kept started, jailed
    /// and idle per served release, so a new session's first turn skips
    /// the harness's start-up (it claims one; the pool refills in the
    /// background). 0 disables it. Sessions of an end user (their HOME is
    /// theirs) and those resuming a conversation start their own.
    #[arg(long = "pool", default_value_t = 2, value_name = "N")]
    pool: usize,
    /// The most resident memory (RSS) the idle pooled processes of one
    /// release may take together, MiB; a process that would go over it is
    /// not kept.
    #[arg(long, default_value_t = 1024, value_name = "MIB")]
    pool_memory_mib: u64,
    /// Let plugin HTTP reach this internal address range (CIDR, e.g.
    /// 10.0.8.0/24 or 127.0.0.1/32); repeat for more. Plugins are refused
    /// loopback, private (RFC 1918, fc00::/7), CGNAT, link-local (cloud
    /// metadata), multicast, unspecified, broadcast and reserved addresses,
    /// checked on every address a name resolves to, unless listed here.
    #[arg(long = "plugin-allow-net", value_name = "CIDR")]
    plugin_allow_net: Vec<karta_host::plugin::IpNet>,
    /// The longest `timeout_ms` a plugin grant may ask for; an app whose
    /// plugin asks for more is refused at start.
    #[arg(long, default_value_t = 60_000, value_name = "MS")]
    plugin_max_timeout_ms: u64,
    /// Run harness processes (claude, opencode) WITHOUT the jail: no
    /// namespaces, no seccomp, no limits — an app's code can then reach
    /// everything this user can. For machines where the jail cannot be
    /// built (not root, no Landlock); never for apps you did not write.
    #[arg(long)]
    no_jail: bool,
    /// Memory of each jailed harness process tree, MiB (cgroup limit).
    #[arg(long, default_value_t = 2048, value_name = "MIB")]
    jail_memory_mib: u64,
    /// Processes and threads of each jailed harness process tree.
    #[arg(long, default_value_t = 512, value_name = "N")]
    jail_max_processes: u64,
    /// Switch off Claude Code's and OpenCode's own acting tools (Bash,
    /// Read, Write, Edit, Grep, …; on by default, working on the session's
    /// workspace inside the jail): the model then has only the app's
    /// plugins and MCP servers.
    #[arg(long)]
    no_harness_tools: bool,
    /// Let the app's setup script reach this host (`name` or `*.domain`)
    /// through the host's proxy, besides pypi.org, files.pythonhosted.org
    /// and registry.npmjs.org; repeat for more. Every other host, and any
    /// IP address, is refused (403).
    #[arg(long = "setup-allow-host", value_name = "HOST")]
    setup_allow_hosts: Vec<String>,
    /// Let the setup proxy connect to this internal address range (CIDR)
    /// when an allowed name resolves there; repeat for more. Loopback,
    /// private, link-local and other internal addresses are refused
    /// otherwise.
    #[arg(long = "setup-allow-net", value_name = "CIDR")]
    setup_allow_net: Vec<karta_host::plugin::IpNet>,
    /// Seconds the app's setup script may run (once per app version, at
    /// start) before it is killed and the app refused.
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    setup_timeout_secs: u64,
    /// Where an org's own key for a provider sends its calls, as
    /// `PROVIDER=URL` (anthropic, openai, openrouter); repeat for more.
    /// Defaults: the providers' public APIs.
    #[arg(long = "provider-url", value_name = "PROVIDER=URL")]
    provider_urls: Vec<String>,
    /// The price table (TOML; integer micro-units per million tokens per
    /// model, and per million fuel). Default: Claude-like prices, the
    /// offline model free, fuel at 1 micro-unit per million.
    #[arg(long, value_name = "FILE")]
    prices: Option<PathBuf>,
}

/// Parses `--harness`.
fn harness_arg(value: &str) -> anyhow::Result<Option<karta_host::app::HarnessKind>> {
    use karta_host::app::HarnessKind;
    Ok(match value {
        "auto" => None,
        "builtin" => Some(HarnessKind::Builtin),
        "claude-code" | "claude_code" | "claude" => Some(HarnessKind::ClaudeCode),
        "opencode" => Some(HarnessKind::Opencode),
        other => {
            anyhow::bail!("--harness must be auto, builtin, claude-code or opencode, not `{other}`")
        }
    })
}

#[derive(Args)]
struct LimitArgs {
    /// Fuel (deterministic work budget) for the call.
    #[arg(long, default_value_t = Limits::default().fuel)]
    fuel: u64,
    /// Memory cap in MiB.
    #[arg(long = "memory-mib", default_value_t = Limits::default().memory_mib)]
    memory_mib: u32,
    /// Wall-clock deadline in milliseconds.
    #[arg(long = "timeout-ms", default_value_t = Limits::default().timeout_ms)]
    timeout_ms: u64,
    /// Largest output the tool may return, in bytes.
    #[arg(long = "max-output-bytes", default_value_t = Limits::default().max_output_bytes)]
    max_output_bytes: u64,
}

#[derive(Args)]
struct RuntimeArgs {
    /// Where compiled components are cached (later runs skip compiling).
    /// Defaults to $XDG_CACHE_HOME/karta or ~/.cache/karta.
    #[arg(long, env = "KARTA_CACHE_DIR", value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Compile every time; keep nothing on disk.
    #[arg(long)]
    no_cache: bool,
}

impl RuntimeArgs {
    fn runtime(&self, allow_net: Vec<karta_host::plugin::IpNet>) -> anyhow::Result<PluginRuntime> {
        let cache_dir = if self.no_cache {
            None
        } else {
            self.cache_dir.clone().or_else(default_cache_dir)
        };
        let config = RuntimeConfig {
            cache_dir: cache_dir.map(|d| d.join("components")),
            // One call per process: pre-reserving a pool buys nothing here.
            pooling: false,
            // The person at the terminal is the operator and chose
            // --timeout-ms; no pool slot is held for anyone else.
            max_timeout: std::time::Duration::MAX,
            allow_net,
            ..RuntimeConfig::default()
        };
        PluginRuntime::new(config).context("cannot start the plugin runtime")
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("karta"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache").join("karta"))
}

/// `karta doctor`: what this machine can run.
/// `doctor`'s warm-pool section: what `serve` pools by default, and the
/// slots a host serving this data dir holds now (each pooled process has a
/// directory `<data>/pool/pool.<id>` while it is idle or starting).
fn print_pool(binaries: &karta_host::harness::HarnessBinaries, data_dir: &Path) {
    println!("warm pool:");
    let pooled: Vec<&str> = [
        ("claude_code", binaries.claude.is_some()),
        ("opencode", binaries.opencode.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, installed)| installed.then_some(name))
    .collect();
    if pooled.is_empty() {
        println!("  nothing to pool: neither claude_code nor opencode is installed");
    } else {
        println!(
            "  `serve` keeps 2 started, jailed {} processes per served release (--pool N, 0 disables;",
            pooled.join(" / ")
        );
        println!(
            "  --pool-memory-mib bounds their RSS, default 1024); live: GET /metrics karta_pool_*"
        );
    }
    let slots = std::fs::read_dir(data_dir.join("pool"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(karta_host::session::SLOT_PREFIX)
        })
        .count();
    println!(
        "  {slots} pooled process slot(s) in {} (idle or starting, of a host serving this data dir)",
        data_dir.join("pool").display()
    );
}

async fn doctor(app_dir: Option<PathBuf>, data_dir: &Path) -> anyhow::Result<ExitCode> {
    use karta_host::app::HarnessKind;
    use karta_host::harness::{self, HarnessBinaries};

    let binaries = HarnessBinaries::locate();
    println!("harnesses:");
    println!("  builtin      ready (native loop, no binary needed)");
    for (kind, pinned) in [
        (HarnessKind::ClaudeCode, harness::CLAUDE_CODE_VERSION),
        (HarnessKind::Opencode, harness::OPENCODE_VERSION),
    ] {
        let name = kind.as_str();
        match binaries.for_kind(kind) {
            None => println!(
                "  {name:<12} not installed: {}",
                harness::install_hint(kind)
            ),
            Some(path) => match harness::binary_version(path).await {
                Ok(version) => {
                    let note = if version.contains(pinned) {
                        String::new()
                    } else {
                        format!(" (Karta is tested with {pinned})")
                    };
                    println!("  {name:<12} ready: {version} at {}{note}", path.display());
                }
                Err(e) => println!("  {name:<12} broken: {} {e}", path.display()),
            },
        }
    }
    println!("jail features of this kernel:");
    for feature in harness::jail_features() {
        let state = if feature.available { "yes" } else { "no " };
        println!("  {state} {:<20} {}", feature.name, feature.detail);
    }
    println!("  (harness processes run jailed: pid, mount, net, ipc and uts namespaces, a");
    println!("   read-only root with only the session's workspace and HOME writable, no");
    println!("   capabilities, Landlock, seccomp, rlimits, cgroups; a jail that cannot be");
    println!("   built refuses to start them unless `serve --no-jail` is passed)");
    if karta_harness::process::may_set_nice(-1) {
        println!(
            "  yes priority             `serve --harness-nice -N` may run harness processes ahead of the host's threads"
        );
    } else {
        println!(
            "  no  priority             no CAP_SYS_NICE: harness processes run at the host's own nice value"
        );
    }
    println!("harness files (kept the app's before every process-harness turn):");
    println!("  {}", karta_host::app::harness_file_check());
    print_pool(&binaries, data_dir);
    println!("model upstream:");
    match std::env::var("KARTA_UPSTREAM_KEY") {
        Ok(key) if !key.trim().is_empty() => {
            println!(
                "  KARTA_UPSTREAM_KEY is set: `serve --upstream anthropic|openai` forwards to a real provider"
            )
        }
        _ => println!(
            "  none configured: turns use the OFFLINE model (set KARTA_UPSTREAM_KEY and pass --upstream)"
        ),
    }
    if let Some(dir) = app_dir {
        match karta_host::app::load(&dir) {
            Ok(app) => {
                let selection = harness::select(
                    app.harness,
                    &binaries,
                    std::time::Duration::from_secs(1),
                    &karta_harness::http::HttpClient::new(),
                    Some(Default::default()),
                    None,
                );
                let running = selection.harness.as_ref().map_or("builtin", |h| h.name());
                println!("app `{}` ({}):", app.name, dir.display());
                let version = app
                    .harness_version
                    .as_ref()
                    .map(|v| format!(" (version {v})"))
                    .unwrap_or_default();
                println!(
                    "  asks for {}{version}; would run on {running}",
                    app.harness.as_str()
                );
                if let Some(notice) = selection.notice {
                    println!("  {notice}");
                }
                print_app_settings(&app);
                print_setup_state(&app, data_dir);
                print_app_tools(&app, running, data_dir);
            }
            Err(e) => {
                println!("app {}: {e}", dir.display());
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `karta doctor APP` says of the tools the model will be offered:
/// the app's plugins (wasm), the harness's own tools (in the jail), and
/// each MCP server with how it runs.
fn print_app_tools(app: &karta_host::app::AppSpec, running: &str, data_dir: &Path) {
    let plugins: Vec<&str> = app.plugins.iter().map(|p| p.name.as_str()).collect();
    println!(
        "  plugins (WebAssembly, fuel-metered, through Karta's MCP server): {}",
        if plugins.is_empty() {
            "none".to_owned()
        } else {
            plugins.join(", ")
        }
    );
    match running {
        "claude_code" => println!(
            "  Claude Code's own tools, in the jail: Bash, Read, Edit, Write, NotebookEdit, Agent, Skill, … (WebFetch and WebSearch off; `serve --no-harness-tools` turns the rest off)"
        ),
        "opencode" => println!(
            "  OpenCode's own tools, in the jail: bash, read, edit, write, glob, grep, task, skill, … (webfetch off; `serve --no-harness-tools` turns the rest off)"
        ),
        _ => println!("  the builtin harness offers only the app's plugins and skills"),
    }
    for server in &app.command_servers {
        let how = if running == "builtin" {
            "not started (the builtin harness does not start commands)".to_owned()
        } else if std::path::Path::new(&server.command)
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("python"))
        {
            // Compiled into the data dir's cache, as `karta serve` would
            // (then it starts without compiling): the answer is the real one.
            use karta_host::plugin::python_mcp::compile;
            match compile(
                &app.root,
                &server.command,
                &server.args,
                &data_dir.join("python-mcp"),
            ) {
                Ok(compiled) => format!(
                    "compiled to a WebAssembly component ({}; fuel-metered, in wasmtime)",
                    if compiled.cached {
                        "cached".to_owned()
                    } else {
                        format!(
                            "compiled now in {:.1} s",
                            compiled.compile_time.as_secs_f64()
                        )
                    }
                ),
                Err(why) => format!("a process in each session's jail (not compiled: {why})"),
            }
        } else {
            "a process in each session's jail, from the app's read-only folder (CPU metered)"
                .to_owned()
        };
        println!(
            "  MCP server `{}` ({} {}): {how}",
            server.name,
            server.command,
            server.args.join(" ")
        );
    }
}

/// What `karta doctor APP` says of the app's setup script: not run for
/// this version of the app, done (with the version's hash), or failed
/// (with the end of its output).
fn print_setup_state(app: &karta_host::app::AppSpec, data_dir: &Path) {
    use karta_host::setup::{SetupRecord, SetupState};

    let Some(script) = &app.setup_script else {
        println!("  setup script: none");
        return;
    };
    let script = script.display();
    match karta_host::setup::state(app, data_dir) {
        Err(e) => println!("  setup script {script}: cannot tell its state: {e}"),
        Ok(SetupState::NoScript) => println!("  setup script: none"),
        Ok(SetupState::NotRun { hash }) => println!(
            "  setup script {script}: not run for this version of the app (hash {hash}); `karta serve --data {}` runs it at start",
            data_dir.display()
        ),
        Ok(SetupState::Ran(SetupRecord::Done {
            hash, duration_ms, ..
        })) => println!(
            "  setup script {script}: done (hash {hash}, {:.1} s); every session's harness starts from its HOME, read-only",
            duration_ms as f64 / 1000.0
        ),
        Ok(SetupState::Ran(SetupRecord::Failed {
            hash, how, output, ..
        })) => {
            println!(
                "  setup script {script}: FAILED (hash {hash}): it {how}; the next `karta serve` runs it again. Its last output:"
            );
            let lines: Vec<&str> = output.lines().collect();
            for line in &lines[lines.len().saturating_sub(20)..] {
                println!("    | {line}");
            }
        }
    }
}

/// What `karta doctor APP` says of the app's Karta files: env names (never
/// their values), the setup script, the permission mode, unknown keys.
fn print_app_settings(app: &karta_host::app::AppSpec) {
    use karta_host::app::EnvSource;

    let names = |host: bool, bound: bool| -> Vec<String> {
        app.env_vars
            .iter()
            .filter(|v| (v.source == Some(EnvSource::Host)) == host && v.source.is_some() == bound)
            .map(|v| match (v.source, &v.description) {
                (Some(EnvSource::Host), _) => v.name.clone(),
                (Some(source), _) => format!("{} ({})", v.name, source.as_str()),
                (None, Some(d)) => format!("{} (optional: {d})", v.name),
                (None, None) => format!("{} (optional)", v.name),
            })
            .collect()
    };
    let list = |items: Vec<String>| {
        if items.is_empty() {
            "none".to_owned()
        } else {
            items.join(", ")
        }
    };
    println!("  env bound: {}", list(names(false, true)));
    println!("  env unbound: {}", list(names(false, false)));
    let host = names(true, true);
    if !host.is_empty() {
        println!(
            "  env set by the host (the app's value is not used): {}",
            host.join(", ")
        );
    }
    println!("  permission mode: {}", app.permission_mode.as_str());
    if app.unknown_keys.is_empty() {
        println!("  unknown keys: none");
    } else {
        println!("  unknown keys (warned, ignored):");
        for key in &app.unknown_keys {
            println!("    {key}");
        }
    }
    for notice in &app.notices {
        println!("  {notice}");
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    install_logging(cli.log_format, default_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("karta: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("karta: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, `: `-separated, each cause once.
/// Many of the library's errors already say their cause in their own
/// message (`the app is invalid: {0}`) and name it as their `source`
/// too; anyhow's `{:#}` would print it twice.
pub(crate) fn error_chain(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    use karta_host::gateway::{Upstream, UpstreamKind};

    let upstream = match args.upstream.as_deref() {
        None => None,
        Some(kind) => {
            let (kind, default_url) = match kind {
                "anthropic" => (UpstreamKind::Anthropic, "https://api.anthropic.com"),
                "openai" => (UpstreamKind::Openai, "https://api.openai.com"),
                other => anyhow::bail!("--upstream must be `anthropic` or `openai`, not `{other}`"),
            };
            let api_key = std::env::var("KARTA_UPSTREAM_KEY")
                .ok()
                .filter(|k| !k.trim().is_empty())
                .context("--upstream needs the provider key in KARTA_UPSTREAM_KEY")?;
            Some(Upstream {
                kind,
                base_url: args
                    .upstream_url
                    .clone()
                    .unwrap_or_else(|| default_url.into()),
                api_key,
                org_key: false,
            })
        }
    };
    if !args.listen.ip().is_loopback() {
        // Refused before anything starts: dev mode (no API key in the data
        // dir) has no auth, so it binds loopback only.
        let keys = {
            std::fs::create_dir_all(&args.data)
                .with_context(|| format!("cannot use the data dir {}", args.data.display()))?;
            let store = karta_host::store::Store::open(&args.data.join("db"))?;
            karta_host::auth::Auth::open(store, &args.data)?.has_api_keys()?
        };
        anyhow::ensure!(
            keys,
            "refusing to listen on {}: without API keys Karta runs in dev mode (no auth), \
             which only binds loopback addresses such as 127.0.0.1 (create one: karta keys create --org ORG --scope admin)",
            args.listen
        );
    }
    let mut config = match &args.app_dir {
        Some(dir) => karta_host::HostConfig::new(dir),
        None => karta_host::HostConfig::published(&args.data),
    };
    config.data_dir = args.data.clone();
    config.durability = match args.durability {
        DurabilityArg::Process => karta_host::store::Durability::Process,
        DurabilityArg::Machine => karta_host::store::Durability::Machine,
    };
    config.upstream = upstream;
    config.approval_timeout = std::time::Duration::from_secs(args.approval_timeout_secs);
    config.harness = harness_arg(&args.harness)?;
    config.harness_idle_timeout = std::time::Duration::from_secs(args.harness_idle_secs.max(1));
    config.harness_nice = args.harness_nice;
    config.pool = karta_host::session::PoolConfig {
        size: args.pool,
        memory_bytes: args.pool_memory_mib << 20,
    };
    config.plugin_allow_net = args.plugin_allow_net.clone();
    config.plugin_max_timeout = std::time::Duration::from_millis(args.plugin_max_timeout_ms);
    config.jail = (!args.no_jail).then(|| karta_harness::process::JailLimits {
        memory_bytes: args.jail_memory_mib.max(64) << 20,
        max_processes: args.jail_max_processes.max(16),
        ..Default::default()
    });
    config.harness_tools = !args.no_harness_tools;
    config
        .setup
        .allow_hosts
        .extend(args.setup_allow_hosts.iter().cloned());
    config.setup.allow_net = args.setup_allow_net.clone();
    config.setup.timeout = std::time::Duration::from_secs(args.setup_timeout_secs.max(1));
    if let Some(file) = &args.prices {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the price table {}", file.display()))?;
        config.prices = karta_host::meter::PriceTable::from_toml(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    }
    for pair in &args.provider_urls {
        let (provider, url) = pair
            .split_once('=')
            .with_context(|| format!("--provider-url {pair}: write PROVIDER=URL"))?;
        let provider: karta_host::byok::Provider = provider
            .parse()
            .map_err(|e| anyhow::anyhow!("--provider-url {pair}: {e}"))?;
        config
            .provider_urls
            .0
            .insert(provider, url.trim_end_matches('/').to_owned());
    }
    if args.no_jail {
        eprintln!(
            "karta: WARNING: --no-jail: harness processes run UNCONFINED; an app's code (and any tool a model runs) can read and write everything this user can"
        );
    }
    let host = karta_host::Host::start(config).await?;
    let dev_mode = !host.projects().auth().has_api_keys()?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    if host.projects().dev().is_some() {
        describe_folder(&host);
    } else {
        describe_projects(&host)?;
    }
    match host.projects().upstream() {
        Some(upstream) => eprintln!(
            "karta: model: {:?} upstream at {}",
            upstream.kind, upstream.base_url
        ),
        None => eprintln!(
            "karta: model: the OFFLINE model (deterministic, for development; see docs/OFFLINE_MODEL.md)"
        ),
    }
    eprintln!(
        "karta: data in {} ({})",
        args.data.display(),
        match args.durability {
            DurabilityArg::Process =>
                "writes survive this process dying; --durability machine for power cuts too",
            DurabilityArg::Machine => "writes survive a machine crash: every flush syncs the disk",
        }
    );
    if dev_mode {
        eprintln!("karta: DEV MODE: no API key exists, so no auth; loopback only");
    } else {
        eprintln!("karta: API keys exist: every request needs a credential");
    }
    let addr = host.spawn_api(listener).await?;
    // The operator commands find this server here (sled lets one process
    // open the data dir, so they talk to it instead). Written before the
    // banner, so whoever waits for the banner finds it.
    let server_file = operator::server_file(&args.data);
    let connect = if addr.ip().is_unspecified() {
        std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    std::fs::write(
        &server_file,
        serde_json::to_vec(
            &json!({ "url": format!("http://{connect}"), "pid": std::process::id() }),
        )?,
    )
    .with_context(|| format!("cannot write {}", server_file.display()))?;
    eprintln!(
        "karta: listening on http://{addr} (metrics at /metrics, the API described at /openapi.json)"
    );
    stop_signal().await;
    eprintln!("karta: shutting down (running turns are cancelled and saved)");
    let _ = std::fs::remove_file(&server_file);
    host.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// Waits for Ctrl-C (SIGINT) or SIGTERM — what a service manager (systemd,
/// a container runtime) sends to stop a service — so both shut the host
/// down: turns cancelled and saved, the store closed.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Prints the published projects `karta serve` without a folder serves.
fn describe_projects(host: &karta_host::Host) -> anyhow::Result<()> {
    let projects = host.projects();
    let mut any = false;
    for project in projects.auth().projects(None)? {
        let org = projects.auth().org(&project.org_id)?;
        let active = projects.releases().active(&project.id)?;
        any = true;
        eprintln!(
            "karta: project {}/{}: {}",
            org.map(|o| o.slug).unwrap_or_default(),
            project.slug,
            active.map_or(
                "no active release (409 until one is activated)".into(),
                |r| { format!("v{} active ({})", r.version, r.app_name) }
            )
        );
    }
    if !any {
        eprintln!("karta: no projects yet: karta publish DIR --project org/name --activate");
    }
    Ok(())
}

/// Prints what `karta serve DIR` serves.
fn describe_folder(host: &karta_host::Host) {
    let app = host.app();
    eprintln!(
        "karta: serving app `{}` from {} as project {}/{} (and on /v1/…)",
        app.name,
        app.root.display(),
        karta_host::projects::DEV_ORG,
        host.projects()
            .dev()
            .map(|d| d.project.slug.as_str())
            .unwrap_or("")
    );
    match host.harness_notice() {
        Some(notice) => eprintln!("karta: {notice}"),
        None => eprintln!("karta: harness: {}", host.harness_name()),
    }
    eprintln!(
        "karta: {} agent(s), {} skill(s), {} plugin(s)",
        app.agents.len(),
        app.skills.len(),
        app.plugins.len()
    );
    for server in &app.command_servers {
        if host.harness_name() == "builtin" {
            eprintln!(
                "karta: MCP server `{}` runs a command ({}); the builtin harness does not start commands, its tools are unavailable",
                server.name, server.command
            );
        } else if host
            .sessions()
            .compiled_mcp_servers()
            .contains(&server.name)
        {
            eprintln!(
                "karta: MCP server `{}` ({}) is compiled to a WebAssembly component: its calls run in wasmtime, fuel-metered",
                server.name, server.command
            );
        } else {
            eprintln!(
                "karta: MCP server `{}` ({}) runs in each session's jail, from the app's folder",
                server.name, server.command
            );
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Doctor { app_dir, data } => doctor(app_dir, &data).await,
        Command::Org { command, target } => {
            operator::run(operator::Operator::Org(command), target).await
        }
        Command::Project { command, target } => {
            operator::run(operator::Operator::Project(command), target).await
        }
        Command::Keys { command, target } => {
            operator::run(operator::Operator::Keys(command), target).await
        }
        Command::EmbedKeys { command, target } => {
            operator::run(operator::Operator::EmbedKeys(command), target).await
        }
        Command::ProviderKeys { command, target } => {
            operator::run(operator::Operator::ProviderKeys(command), target).await
        }
        Command::Webhooks { command, target } => {
            operator::run(operator::Operator::Webhooks(command), target).await
        }
        Command::Usage {
            org,
            project,
            session,
            end_user,
            from,
            to,
            group_by,
            target,
        } => {
            let query = [
                ("project", project),
                ("session", session),
                ("end_user", end_user),
                ("from", from),
                ("to", to),
                ("group_by", Some(group_by)),
            ]
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_owned(), v?)))
            .collect();
            operator::run(operator::Operator::Usage { org, query }, target).await
        }
        Command::Budgets { command, target } => {
            operator::run(operator::Operator::Budgets(command), target).await
        }
        Command::Tokens { command, target } => {
            operator::run(operator::Operator::Tokens(command), target).await
        }
        Command::Publish {
            dir,
            project,
            activate,
            target,
        } => {
            operator::run(
                operator::Operator::Publish {
                    dir,
                    project,
                    activate,
                },
                target,
            )
            .await
        }
        Command::Releases { project, target } => {
            operator::run(operator::Operator::Releases { project }, target).await
        }
        Command::Activate {
            project,
            version,
            target,
        } => operator::run(operator::Operator::Activate { project, version }, target).await,
        Command::Rollback {
            project,
            to,
            target,
        } => operator::run(operator::Operator::Rollback { project, to }, target).await,
        Command::Chat {
            url,
            session,
            agent,
        } => chat::run(&url, session, agent).await,
        Command::Tool(ToolCommand::List { component, runtime }) => {
            let runtime = runtime.runtime(Vec::new())?;
            match runtime.load_file(&component, PluginGrant::default()).await {
                Ok(plugin) => {
                    println!("{}", serde_json::to_string_pretty(plugin.tools())?);
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Ok(print_error("invalid_component", &e.to_string())),
            }
        }
        Command::Tool(ToolCommand::Call {
            component,
            tool,
            input,
            limits,
            dir,
            allow_hosts,
            allow_net,
            logs,
            runtime,
        }) => {
            let input = read_input(input)?;
            let (workspace, access) = match dir.as_deref() {
                Some(spec) => {
                    let (path, access) = parse_dir(spec);
                    let path = std::fs::canonicalize(path)
                        .with_context(|| format!("--dir {spec}: no such directory"))?;
                    anyhow::ensure!(path.is_dir(), "--dir {spec}: not a directory");
                    (Some(path), access)
                }
                None => (None, WorkspaceAccess::None),
            };
            let grant = PluginGrant {
                limits: Limits {
                    fuel: limits.fuel,
                    memory_mib: limits.memory_mib,
                    timeout_ms: limits.timeout_ms,
                    max_output_bytes: limits.max_output_bytes,
                },
                workspace: access,
                allowed_hosts: allow_hosts,
            };
            let runtime = runtime.runtime(allow_net)?;
            let plugin = match runtime.load_file(&component, grant).await {
                Ok(plugin) => plugin,
                Err(e) => return Ok(print_error("invalid_component", &e.to_string())),
            };
            let options = CallOptions {
                workspace,
                fuel_cap: None,
            };
            match plugin.call(&tool, &input, &options).await {
                Ok(outcome) => {
                    if logs {
                        print_logs(&outcome.logs);
                    }
                    let answer = json!({
                        "output": outcome.output,
                        "fuel_consumed": outcome.fuel_consumed,
                        "duration_us": outcome.duration_us,
                    });
                    println!("{answer}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(failure) => {
                    if logs {
                        print_logs(&failure.logs);
                    }
                    Ok(print_failure(&failure))
                }
            }
        }
    }
}

/// `PATH` or `PATH:ro` (also `:rw`, the default).
fn parse_dir(spec: &str) -> (&Path, WorkspaceAccess) {
    if let Some(path) = spec.strip_suffix(":ro") {
        (Path::new(path), WorkspaceAccess::ReadOnly)
    } else if let Some(path) = spec.strip_suffix(":rw") {
        (Path::new(path), WorkspaceAccess::ReadWrite)
    } else {
        (Path::new(spec), WorkspaceAccess::ReadWrite)
    }
}

fn read_input(input: String) -> anyhow::Result<String> {
    if input != "-" {
        return Ok(input);
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
        .context("cannot read the input from stdin")?;
    Ok(text)
}

fn print_logs(logs: &[karta_host::plugin::LogLine]) {
    for line in logs {
        eprintln!("[{}] {}", line.level, line.message);
    }
}

fn print_error(kind: &str, message: &str) -> ExitCode {
    println!(
        "{}",
        json!({ "error": { "kind": kind, "message": message } })
    );
    ExitCode::FAILURE
}

fn print_failure(failure: &CallFailure) -> ExitCode {
    let answer = json!({
        "error": { "kind": failure.kind, "message": failure.message },
        "fuel_consumed": failure.fuel_consumed,
        "duration_us": failure.duration_us,
    });
    println!("{answer}");
    // Distinct exit codes let scripts tell the caller's mistakes (2) from
    // the plugin's failures (1).
    match failure.kind {
        ErrorKind::InvalidInput | ErrorKind::UnknownTool => ExitCode::from(2),
        _ => ExitCode::FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_specs_parse() {
        assert_eq!(
            parse_dir("a/b:ro"),
            (Path::new("a/b"), WorkspaceAccess::ReadOnly)
        );
        assert_eq!(
            parse_dir("a:rw"),
            (Path::new("a"), WorkspaceAccess::ReadWrite)
        );
        assert_eq!(parse_dir("a"), (Path::new("a"), WorkspaceAccess::ReadWrite));
    }

    #[test]
    fn an_error_chain_names_each_cause_once() {
        // A message that already says its source, as `HostError::App` does.
        #[derive(Debug)]
        struct Invalid(std::io::Error);
        impl std::fmt::Display for Invalid {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "the app is invalid: {}", self.0)
            }
        }
        impl std::error::Error for Invalid {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let root = std::io::Error::other("karta.toml: plugin `x.wasm` does not exist");
        let error = anyhow::Error::from(Invalid(root)).context("cannot serve");
        assert_eq!(
            error_chain(&error),
            "cannot serve: the app is invalid: karta.toml: plugin `x.wasm` does not exist"
        );
        // A cause its parent does not repeat is kept.
        let plain = anyhow::anyhow!("root cause").context("outer");
        assert_eq!(error_chain(&plain), "outer: root cause");
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
