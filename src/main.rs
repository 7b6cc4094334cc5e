//! `karta` — the command line of the Karta host.
//!
//! A thin layer over `karta-host`: it parses arguments, calls the library,
//! and prints results.
//!
//! | file | what it does |
//! | --- | --- |
//! | `main.rs` | every command and option (clap), logging, the dispatch |
//! | `serve.rs` | `karta serve` |
//! | `doctor.rs` | `karta doctor` |
//! | `tool.rs` | `karta tool list` / `call` |
//! | `chat.rs` | `karta chat` |
//! | `operator.rs` | orgs, projects, keys, tokens, usage, budgets, webhooks, publish and releases |
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
mod doctor;
mod operator;
mod serve;
mod tool;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use karta_host::plugin::{Limits, PluginRuntime, RuntimeConfig};

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
    /// model, with optional long-context prices for prompts over a
    /// threshold, and per million fuel). Default: Claude-like prices
    /// (Sonnet's long-context ones over 200,000 tokens), the offline model
    /// free, fuel at 1 micro-unit per million.
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

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve::serve(args).await,
        Command::Doctor { app_dir, data } => doctor::doctor(app_dir, &data).await,
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
        Command::Tool(command) => tool::run(command).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
