//! `karta serve`: the host started from the command line — the upstream
//! or the offline model, dev mode's loopback rule, what is served said on
//! stderr — and stopped cleanly on a signal.

use std::process::ExitCode;

use anyhow::Context;
use serde_json::json;

use crate::{DurabilityArg, ServeArgs, harness_arg, operator};

/// `karta serve`: one app folder, or every published project of the data
/// dir, until SIGINT or SIGTERM.
pub(crate) async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
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
