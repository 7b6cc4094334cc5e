//! The operator's commands: orgs, projects, keys, embed keys, tokens,
//! publish, releases, activate, rollback.
//!
//! sled lets one process open a data dir, so every command speaks the admin
//! API: to the server `karta serve` runs on the data dir when one does (it
//! leaves its address in `<data dir>/server.json`), else to a host started
//! here for the one command, on a loopback port of its own. Both are the
//! same HTTP requests, authenticated with the operator's token from
//! `<data dir>/secrets/operator-token` — whoever can read the data dir runs
//! the host. `--server URL` with `KARTA_API_KEY` talks to a remote host as
//! an org's admin key instead.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

/// Where a running server leaves its address.
pub fn server_file(data: &Path) -> PathBuf {
    data.join("server.json")
}

/// Options every operator command takes.
#[derive(Args, Clone)]
pub struct Target {
    /// The data directory (as for `serve`).
    #[arg(long, default_value = ".karta", global = true)]
    data: PathBuf,
    /// Talk to this host's admin API with KARTA_API_KEY instead of the
    /// data dir's operator token.
    #[arg(long, value_name = "URL", global = true)]
    server: Option<String>,
    /// Print the answer as JSON (for scripts).
    #[arg(long, global = true)]
    json: bool,
}

/// `karta org …`
#[derive(Subcommand)]
pub enum OrgCommand {
    /// Create an org (slug: `[a-z0-9]`, inner `-`, ≤ 63 characters).
    Create {
        /// The org's slug.
        slug: String,
        /// A display name.
        #[arg(long)]
        name: Option<String>,
    },
    /// List orgs.
    List,
}

/// `karta project …`
#[derive(Subcommand)]
pub enum ProjectCommand {
    /// Create a project: `org/project`.
    Create {
        /// `org/project`.
        project: String,
    },
    /// List an org's projects with their active versions.
    List {
        /// The org's slug.
        org: String,
    },
}

/// `karta keys …`
#[derive(Subcommand)]
pub enum KeyCommand {
    /// Create an API key (`kt_live_…`, shown once).
    Create {
        /// The org's slug.
        #[arg(long)]
        org: String,
        /// `read`, `write` or `admin`.
        #[arg(long, default_value = "write")]
        scope: String,
        /// What it is for.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List an org's keys (prefixes only).
    List {
        /// The org's slug.
        #[arg(long)]
        org: String,
    },
    /// Revoke a key at once.
    Revoke {
        /// The org's slug.
        #[arg(long)]
        org: String,
        /// The key's id (`key_…`).
        key_id: String,
    },
}

/// `karta embed-keys …`
#[derive(Subcommand)]
pub enum EmbedKeyCommand {
    /// Create an embed key (`pk_live_…`) for a project's chat page.
    Create {
        /// `org/project`.
        project: String,
        /// An origin allowed to use it (`https://shop.example`); repeat.
        #[arg(long = "origin", required = true)]
        origins: Vec<String>,
    },
    /// List a project's embed keys.
    List {
        /// `org/project`.
        project: String,
    },
    /// Revoke an embed key.
    Revoke {
        /// `org/project`.
        project: String,
        /// The key's id (`emb_…`).
        key_id: String,
    },
}

/// `karta tokens …`
#[derive(Subcommand)]
pub enum TokenCommand {
    /// Mint a session token for a project.
    Mint {
        /// `org/project`.
        project: String,
        /// `read` or `write`.
        #[arg(long, default_value = "write")]
        scope: String,
        /// The end user it acts for.
        #[arg(long)]
        sub: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 900)]
        ttl_secs: u64,
    },
    /// Make a new signing key for session tokens (the operator only);
    /// tokens signed before still verify until they expire.
    RotateSecret,
    /// Print an identity token for an end user, as the customer's backend
    /// computes it with the project's identity secret.
    Identity {
        /// `org/project`.
        project: String,
        /// The end user's id.
        end_user: String,
    },
}

/// `karta provider-keys …`
#[derive(Subcommand)]
pub enum ProviderKeyCommand {
    /// Set an org's own key for a provider (BYOK), read from stdin (never
    /// from the command line, where `ps` and shell history would keep it).
    Set {
        /// The org's slug.
        #[arg(long)]
        org: String,
        /// `anthropic`, `openai` or `openrouter`.
        provider: String,
    },
    /// List an org's provider keys (ids and fingerprints, never keys).
    List {
        /// The org's slug.
        #[arg(long)]
        org: String,
    },
    /// Remove an org's key for a provider.
    Remove {
        /// The org's slug.
        #[arg(long)]
        org: String,
        /// `anthropic`, `openai` or `openrouter`.
        provider: String,
    },
}

/// `karta webhooks …`
#[derive(Subcommand)]
pub enum WebhookCommand {
    /// Add an endpoint; prints its signing secret, shown only now.
    Add {
        /// The org's slug.
        #[arg(long)]
        org: String,
        /// Where to POST (`https://…`).
        url: String,
        /// Comma-separated: session.started, turn.completed, turn.failed,
        /// budget.exceeded, release.activated.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "session.started,turn.completed,turn.failed,budget.exceeded,release.activated"
        )]
        events: Vec<String>,
    },
    /// List an org's endpoints (disabled ones say so).
    List {
        /// The org's slug.
        #[arg(long)]
        org: String,
    },
    /// Remove an endpoint and its deliveries.
    Remove {
        /// The org's slug.
        #[arg(long)]
        org: String,
        /// The endpoint's id (`whk_…`).
        id: String,
    },
    /// Enable an endpoint disabled after repeated failed deliveries.
    Enable {
        /// The org's slug.
        #[arg(long)]
        org: String,
        /// The endpoint's id (`whk_…`).
        id: String,
    },
    /// An endpoint's newest deliveries: status, attempts, last answer.
    Deliveries {
        /// The org's slug.
        #[arg(long)]
        org: String,
        /// The endpoint's id (`whk_…`).
        id: String,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

/// `karta budgets …`
#[derive(Subcommand)]
pub enum BudgetCommand {
    /// Cap an org's (or a project's, an end user's or a key's) cost per day or
    /// month, in micro-units; over it, turns are refused with 402.
    Set {
        /// The org's slug.
        #[arg(long)]
        org: String,
        /// Only this project (its slug).
        #[arg(long)]
        project: Option<String>,
        /// Only this end user of the project.
        #[arg(long)]
        end_user: Option<String>,
        /// Only the sessions opened with this API key or embed key (its
        /// id, `key_…` or `emb_…`; not with --project or --end-user).
        #[arg(long, conflicts_with_all = ["project", "end_user"])]
        key: Option<String>,
        /// `day` or `month` (UTC).
        #[arg(long, default_value = "month")]
        period: String,
        /// The cap, micro-units (1,000,000 = one currency unit).
        cap_micros: u64,
    },
    /// Remove a budget.
    Remove {
        /// The org's slug.
        #[arg(long)]
        org: String,
        /// Only this project (its slug).
        #[arg(long)]
        project: Option<String>,
        /// Only this end user of the project.
        #[arg(long)]
        end_user: Option<String>,
        /// The budget of this API key or embed key (its id).
        #[arg(long, conflicts_with_all = ["project", "end_user"])]
        key: Option<String>,
        /// `day` or `month`.
        #[arg(long, default_value = "month")]
        period: String,
    },
    /// An org's budgets and what each has spent this period.
    List {
        /// The org's slug.
        #[arg(long)]
        org: String,
    },
}

/// The operator commands.
pub enum Operator {
    /// `karta usage --org ORG …`: the ledger's totals.
    Usage {
        /// The org's slug.
        org: String,
        /// `project=…&group_by=…` and the rest, as the route takes them.
        query: Vec<(String, String)>,
    },
    /// `karta budgets`.
    Budgets(BudgetCommand),
    /// `karta provider-keys`.
    ProviderKeys(ProviderKeyCommand),
    /// `karta webhooks`.
    Webhooks(WebhookCommand),
    /// `karta org`.
    Org(OrgCommand),
    /// `karta project`.
    Project(ProjectCommand),
    /// `karta keys`.
    Keys(KeyCommand),
    /// `karta embed-keys`.
    EmbedKeys(EmbedKeyCommand),
    /// `karta tokens`.
    Tokens(TokenCommand),
    /// `karta publish DIR --project org/name [--activate]`.
    Publish {
        /// The app folder.
        dir: PathBuf,
        /// `org/project` (created if missing).
        project: String,
        /// Activate the new release at once.
        activate: bool,
    },
    /// `karta releases org/name`.
    Releases {
        /// `org/project`.
        project: String,
    },
    /// `karta activate org/name vN`.
    Activate {
        /// `org/project`.
        project: String,
        /// `vN` or `N`.
        version: String,
    },
    /// `karta rollback org/name [--to vN]`.
    Rollback {
        /// `org/project`.
        project: String,
        /// `vN` or `N`.
        to: Option<String>,
    },
}

/// An admin API client.
struct Admin {
    base: String,
    credential: String,
    client: karta_harness::http::HttpClient,
    /// The host started for this command, when no server runs.
    local: Option<karta_host::Host>,
}

fn split_ref(project: &str) -> anyhow::Result<(&str, &str)> {
    project
        .split_once('/')
        .filter(|(o, p)| !o.is_empty() && !p.is_empty() && !p.contains('/'))
        .with_context(|| format!("`{project}`: name a project as org/project"))
}

fn parse_version(text: &str) -> anyhow::Result<u32> {
    text.trim_start_matches('v')
        .parse()
        .with_context(|| format!("`{text}`: a version is vN, e.g. v2"))
}

impl Admin {
    async fn connect(target: &Target) -> anyhow::Result<Self> {
        let client = karta_harness::http::HttpClient::new();
        if let Some(server) = &target.server {
            let credential = std::env::var("KARTA_API_KEY")
                .ok()
                .filter(|k| !k.trim().is_empty())
                .context("--server needs an admin key in KARTA_API_KEY")?;
            return Ok(Self {
                base: server.trim_end_matches('/').to_owned(),
                credential,
                client,
                local: None,
            });
        }
        let data = &target.data;
        let running = std::fs::read(server_file(data))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
            .and_then(|v| v["url"].as_str().map(str::to_owned));
        if let Some(url) = running {
            let credential = karta_host::projects::operator_token(data)
                .context("cannot read the data dir's operator token")?;
            let admin = Self {
                base: url,
                credential,
                client: client.clone(),
                local: None,
            };
            if admin.get("/healthz").await.is_ok() {
                return Ok(admin);
            }
        }
        // No server: a host of our own on this data dir, for this command.
        let host = karta_host::Host::start(karta_host::HostConfig::published(data))
            .await
            .with_context(|| {
                format!(
                    "cannot open the data dir {} (is a server running on it without {}?)",
                    data.display(),
                    server_file(data).display()
                )
            })?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = host.spawn_api(listener).await?;
        let credential = karta_host::projects::operator_token(data)?;
        Ok(Self {
            base: format!("http://{addr}"),
            credential,
            client,
            local: Some(host),
        })
    }

    async fn close(self) {
        if let Some(host) = self.local {
            host.shutdown().await;
        }
    }

    async fn send(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<(Bytes, &str)>,
    ) -> anyhow::Result<Value> {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.credential));
        let body = match body {
            Some((bytes, content_type)) => {
                request = request.header("content-type", content_type);
                bytes
            }
            None => Bytes::new(),
        };
        let response = self
            .client
            .request(request.body(Full::new(body))?)
            .await
            .with_context(|| format!("cannot reach {}", self.base))?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() {
            let code = value["error"].as_str().unwrap_or("error");
            let message = value["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            bail!("{message} ({code}, HTTP {})", status.as_u16());
        }
        Ok(value)
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(hyper::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let bytes = Bytes::from(serde_json::to_vec(&body)?);
        self.send(hyper::Method::POST, path, Some((bytes, "application/json")))
            .await
    }

    async fn put(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let bytes = Bytes::from(serde_json::to_vec(&body)?);
        self.send(hyper::Method::PUT, path, Some((bytes, "application/json")))
            .await
    }

    async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.send(hyper::Method::DELETE, path, None).await
    }
}

/// `text` percent-encoded for a query value (all but unreserved bytes).
fn percent(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn project_path(project: &str) -> anyhow::Result<String> {
    let (org, name) = split_ref(project)?;
    Ok(format!("/v1/admin/orgs/{org}/projects/{name}"))
}

/// Runs one operator command.
pub async fn run(command: Operator, target: Target) -> anyhow::Result<ExitCode> {
    let admin = Admin::connect(&target).await?;
    let result = execute(&admin, command).await;
    admin.close().await;
    let (answer, text) = result?;
    if target.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        println!("{text}");
    }
    Ok(ExitCode::SUCCESS)
}

/// One line per item of `answer[field]`.
/// `karta webhooks …`: the answer and its text.
async fn webhooks(admin: &Admin, command: WebhookCommand) -> anyhow::Result<(Value, String)> {
    let endpoint_line = |w: &Value| {
        let events: Vec<&str> = w["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        format!(
            "{}  {}  {}{}",
            text(w, "id"),
            text(w, "url"),
            events.join(","),
            if w["disabled_at"].is_string() {
                format!(
                    "  (DISABLED after {} failed deliveries; `karta webhooks enable`)",
                    w["consecutive_failures"]
                )
            } else {
                String::new()
            }
        )
    };
    Ok(match command {
        WebhookCommand::Add { org, url, events } => {
            let answer = admin
                .post(
                    &format!("/v1/admin/orgs/{org}/webhooks"),
                    json!({ "url": url, "events": events }),
                )
                .await?;
            let text = format!(
                "{}\nsigning secret (shown only now; verify with it, see docs/WEBHOOKS.md):\n{}",
                endpoint_line(&answer["webhook"]),
                text(&answer, "secret")
            );
            (answer, text)
        }
        WebhookCommand::List { org } => {
            let answer = admin.get(&format!("/v1/admin/orgs/{org}/webhooks")).await?;
            let text = lines(&answer, "webhooks", endpoint_line);
            (answer, text)
        }
        WebhookCommand::Remove { org, id } => {
            let answer = admin
                .delete(&format!("/v1/admin/orgs/{org}/webhooks/{id}"))
                .await?;
            (answer, format!("{org}: webhook {id} removed"))
        }
        WebhookCommand::Enable { org, id } => {
            let answer = admin
                .post(
                    &format!("/v1/admin/orgs/{org}/webhooks/{id}/enable"),
                    json!({}),
                )
                .await?;
            let text = endpoint_line(&answer);
            (answer, text)
        }
        WebhookCommand::Deliveries { org, id, limit } => {
            let answer = admin
                .get(&format!(
                    "/v1/admin/orgs/{org}/webhooks/{id}/deliveries?limit={limit}"
                ))
                .await?;
            let text = lines(&answer, "deliveries", |d| {
                format!(
                    "{}  {}  {}  {} attempt(s){}{}",
                    text(d, "created_at"),
                    text(d, "event_type"),
                    text(d, "status"),
                    d["attempts"],
                    d["last_status"]
                        .as_u64()
                        .map(|s| format!("  last HTTP {s}"))
                        .unwrap_or_default(),
                    d["last_error"]
                        .as_str()
                        .map(|e| format!("  ({e})"))
                        .unwrap_or_default(),
                )
            });
            (answer, text)
        }
    })
}

fn lines(answer: &Value, field: &str, line: impl Fn(&Value) -> String) -> String {
    answer[field]
        .as_array()
        .into_iter()
        .flatten()
        .map(line)
        .collect::<Vec<_>>()
        .join("\n")
}

/// `  (revoked)` for a revoked key.
fn revoked(key: &Value) -> &'static str {
    if key["revoked_at"].is_string() {
        "  (revoked)"
    } else {
        ""
    }
}

/// A string field, or nothing.
fn text<'a>(value: &'a Value, field: &str) -> &'a str {
    value[field].as_str().unwrap_or("")
}

fn releases_text(answer: &Value) -> String {
    let active = answer["active_version"].as_u64();
    let mut lines = Vec::new();
    for release in answer["releases"].as_array().into_iter().flatten() {
        let version = release["version"].as_u64().unwrap_or(0);
        lines.push(format!(
            "{} v{version}  {}  {}  {} by {}{}",
            if Some(version) == active { "*" } else { " " },
            release["created_at"].as_str().unwrap_or(""),
            &release["digest"].as_str().unwrap_or("")
                [..12.min(release["digest"].as_str().unwrap_or("").len())],
            release["app_name"].as_str().unwrap_or(""),
            release["publisher"].as_str().unwrap_or(""),
            release["git_commit"]
                .as_str()
                .map(|c| format!(" at {c}"))
                .unwrap_or_default(),
        ));
    }
    if lines.is_empty() {
        "no releases yet: karta publish DIR --project org/name".into()
    } else {
        lines.join("\n")
    }
}

async fn execute(admin: &Admin, command: Operator) -> anyhow::Result<(Value, String)> {
    Ok(match command {
        Operator::Org(OrgCommand::Create { slug, name }) => {
            let org = admin
                .post("/v1/admin/orgs", json!({ "slug": slug, "name": name }))
                .await?;
            let text = format!("org {} ({})", text(&org, "slug"), text(&org, "id"));
            (org, text)
        }
        Operator::Org(OrgCommand::List) => {
            let answer = admin.get("/v1/admin/orgs").await?;
            let text = lines(&answer, "orgs", |o| {
                format!("{}  {}", text(o, "slug"), text(o, "id"))
            });
            (answer, text)
        }
        Operator::Project(ProjectCommand::Create { project }) => {
            let (org, name) = split_ref(&project)?;
            let created = admin
                .post(
                    &format!("/v1/admin/orgs/{org}/projects"),
                    json!({ "slug": name }),
                )
                .await?;
            (created, format!("project {project}"))
        }
        Operator::Project(ProjectCommand::List { org }) => {
            let answer = admin.get(&format!("/v1/admin/orgs/{org}/projects")).await?;
            let text = lines(&answer, "projects", |p| {
                format!(
                    "{org}/{}  active: {}",
                    text(&p["project"], "slug"),
                    p["active_version"]
                        .as_u64()
                        .map_or("none".into(), |v| format!("v{v}"))
                )
            });
            (answer, text)
        }
        Operator::Keys(KeyCommand::Create { org, scope, name }) => {
            let answer = admin
                .post(
                    &format!("/v1/admin/orgs/{org}/keys"),
                    json!({ "scope": scope, "name": name }),
                )
                .await?;
            let text = format!(
                "{}\n(the key is shown once; id {}, scope {})",
                answer["key"].as_str().unwrap_or(""),
                answer["info"]["id"].as_str().unwrap_or(""),
                answer["info"]["scope"].as_str().unwrap_or("")
            );
            (answer, text)
        }
        Operator::Keys(KeyCommand::List { org }) => {
            let answer = admin.get(&format!("/v1/admin/orgs/{org}/keys")).await?;
            let text = lines(&answer, "keys", |k| {
                format!(
                    "{}  {}…  {}  {}{}",
                    text(k, "id"),
                    text(k, "prefix"),
                    text(k, "scope"),
                    text(k, "name"),
                    revoked(k)
                )
            });
            (answer, text)
        }
        Operator::Keys(KeyCommand::Revoke { org, key_id }) => {
            let answer = admin
                .delete(&format!("/v1/admin/orgs/{org}/keys/{key_id}"))
                .await?;
            (answer, format!("revoked {key_id}"))
        }
        Operator::EmbedKeys(EmbedKeyCommand::Create { project, origins }) => {
            let answer = admin
                .post(
                    &format!("{}/embed-keys", project_path(&project)?),
                    json!({ "allowed_origins": origins }),
                )
                .await?;
            let text = format!(
                "{}  (for {project}, from {})",
                answer["key"].as_str().unwrap_or(""),
                origins.join(", ")
            );
            (answer, text)
        }
        Operator::EmbedKeys(EmbedKeyCommand::List { project }) => {
            let answer = admin
                .get(&format!("{}/embed-keys", project_path(&project)?))
                .await?;
            let text = lines(&answer, "embed_keys", |k| {
                format!(
                    "{}  {}  {}{}",
                    text(k, "id"),
                    text(k, "key"),
                    k["allowed_origins"],
                    revoked(k)
                )
            });
            (answer, text)
        }
        Operator::EmbedKeys(EmbedKeyCommand::Revoke { project, key_id }) => {
            let answer = admin
                .delete(&format!("{}/embed-keys/{key_id}", project_path(&project)?))
                .await?;
            (answer, format!("revoked {key_id}"))
        }
        Operator::Tokens(TokenCommand::Mint {
            project,
            scope,
            sub,
            ttl_secs,
        }) => {
            let answer = admin
                .post(
                    &format!("{}/tokens", project_path(&project)?),
                    json!({ "scope": scope, "sub": sub, "ttl_secs": ttl_secs }),
                )
                .await?;
            let text = answer["token"].as_str().unwrap_or("").to_owned();
            (answer, text)
        }
        Operator::Usage { org, query } => {
            let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let answer = admin
                .get(&format!("/v1/admin/orgs/{org}/usage?{}", query.join("&")))
                .await?;
            let text = lines(&answer, "rows", |r| {
                format!(
                    "{:<24} {:>12} µ  in {:>9}  out {:>9}  cache {:>9}/{:<9} fuel {:>12}  {} model / {} tool calls",
                    text(r, "key"),
                    r["cost_micros"],
                    r["input_tokens"],
                    r["output_tokens"],
                    r["cache_read_tokens"],
                    r["cache_write_tokens"],
                    r["fuel"],
                    r["model_calls"],
                    r["tool_calls"],
                )
            });
            (answer, text)
        }
        Operator::Budgets(BudgetCommand::Set {
            org,
            project,
            end_user,
            key,
            period,
            cap_micros,
        }) => {
            let answer = admin
                .put(
                    &format!("/v1/admin/orgs/{org}/budgets"),
                    json!({
                        "project": project, "end_user": end_user, "key": key,
                        "period": period, "cap_micros": cap_micros,
                    }),
                )
                .await?;
            (
                answer,
                format!("{org}: a {period} budget of {cap_micros} micro-units"),
            )
        }
        Operator::Budgets(BudgetCommand::Remove {
            org,
            project,
            end_user,
            key,
            period,
        }) => {
            let answer = admin
                .put(
                    &format!("/v1/admin/orgs/{org}/budgets"),
                    json!({
                        "project": project, "end_user": end_user, "key": key,
                        "period": period, "cap_micros": null,
                    }),
                )
                .await?;
            (answer, format!("{org}: the {period} budget removed"))
        }
        Operator::Budgets(BudgetCommand::List { org }) => {
            let answer = admin.get(&format!("/v1/admin/orgs/{org}/budgets")).await?;
            let text = lines(&answer, "budgets", |b| {
                format!(
                    "{}  {}  {} of {} micro-units spent",
                    b["budget"]["scope"],
                    text(&b["budget"], "period"),
                    b["spent_micros"],
                    b["budget"]["cap_micros"]
                )
            });
            (answer, text)
        }
        Operator::ProviderKeys(ProviderKeyCommand::Set { org, provider }) => {
            let mut key = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut key)
                .context("cannot read the key from stdin")?;
            let key = key.trim();
            anyhow::ensure!(
                !key.is_empty(),
                "give the key on stdin, e.g. `karta provider-keys set --org ORG anthropic < key.txt`"
            );
            let answer = admin
                .post(
                    &format!("/v1/admin/orgs/{org}/provider-keys"),
                    json!({ "provider": provider, "key": key }),
                )
                .await?;
            let text = format!(
                "{org}: {provider} key {} ({}) sealed; the org's {provider} calls use it",
                text(&answer, "id"),
                text(&answer, "fingerprint")
            );
            (answer, text)
        }
        Operator::ProviderKeys(ProviderKeyCommand::List { org }) => {
            let answer = admin
                .get(&format!("/v1/admin/orgs/{org}/provider-keys"))
                .await?;
            let text = lines(&answer, "provider_keys", |k| {
                format!(
                    "{}  {}  {}{}",
                    text(k, "id"),
                    text(k, "provider"),
                    text(k, "fingerprint"),
                    if k["replaced_at"].is_string() {
                        "  (replaced)"
                    } else {
                        ""
                    }
                )
            });
            (answer, text)
        }
        Operator::ProviderKeys(ProviderKeyCommand::Remove { org, provider }) => {
            let answer = admin
                .delete(&format!("/v1/admin/orgs/{org}/provider-keys/{provider}"))
                .await?;
            (answer, format!("{org}: {provider} key removed"))
        }
        Operator::Webhooks(command) => webhooks(admin, command).await?,
        Operator::Tokens(TokenCommand::RotateSecret) => {
            let answer = admin
                .post("/v1/admin/token-secret/rotate", json!({}))
                .await?;
            (
                answer,
                "rotated: new session tokens are signed with a new key".into(),
            )
        }
        Operator::Tokens(TokenCommand::Identity { project, end_user }) => {
            let answer = admin
                .post(
                    &format!("{}/identity-secret", project_path(&project)?),
                    json!({}),
                )
                .await?;
            let secret = answer["identity_secret"].as_str().unwrap_or("");
            let token = karta_host::auth::Auth::identity_token(secret, &end_user);
            (json!({ "identity_token": token }), token)
        }
        Operator::Publish {
            dir,
            project,
            activate,
        } => publish(admin, &dir, &project, activate).await?,
        Operator::Releases { project } => {
            let answer = admin
                .get(&format!("{}/releases", project_path(&project)?))
                .await?;
            let text = releases_text(&answer);
            (answer, text)
        }
        Operator::Activate { project, version } => {
            let version = parse_version(&version)?;
            let answer = admin
                .post(
                    &format!("{}/activate", project_path(&project)?),
                    json!({ "version": version }),
                )
                .await?;
            let text = format!("{project}: v{version} is active");
            (answer, text)
        }
        Operator::Rollback { project, to } => {
            let to = to.as_deref().map(parse_version).transpose()?;
            let answer = admin
                .post(
                    &format!("{}/rollback", project_path(&project)?),
                    json!({ "to": to }),
                )
                .await?;
            let text = format!(
                "{project}: back to v{} (was {})",
                answer["active"],
                answer["previous"]
                    .as_u64()
                    .map_or("none".into(), |v| format!("v{v}"))
            );
            (answer, text)
        }
    })
}

async fn publish(
    admin: &Admin,
    dir: &Path,
    project: &str,
    activate: bool,
) -> anyhow::Result<(Value, String)> {
    let (org, name) = split_ref(project)?;
    // The app is checked here first, so a mistake is named before anything
    // is packed or sent.
    let app = karta_host::app::load(dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    eprintln!("karta: packing {} ({})", app.name, dir.display());
    let archive = karta_host::release::pack_dir(dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    let commit = karta_host::release::git_commit(dir);
    eprintln!("karta: {} KiB packed", archive.len().div_ceil(1024));
    // The project is made on first publish.
    match admin
        .post(
            &format!("/v1/admin/orgs/{org}/projects"),
            json!({ "slug": name }),
        )
        .await
    {
        Ok(_) => eprintln!("karta: created project {project}"),
        Err(e) if e.to_string().contains("409") => {}
        Err(e) => return Err(e),
    }
    let mut path = format!(
        "{}/releases?app_name={}",
        project_path(project)?,
        percent(&app.name)
    );
    if let Some(commit) = &commit {
        path.push_str(&format!("&git_commit={}", percent(commit)));
    }
    // The server unpacks, loads and compiles while we wait: a spinner with
    // the time so far on a terminal (indicatif draws nothing otherwise).
    let spinner = indicatif::ProgressBar::new_spinner().with_message(format!(
        "publishing {project}: unpacking, checking, compiling {} plugin(s)",
        app.plugins.len()
    ));
    spinner.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let release = admin
        .send(
            hyper::Method::POST,
            &path,
            Some((Bytes::from(archive), "application/gzip")),
        )
        .await;
    spinner.finish_and_clear();
    let release = release?;
    let version = release["version"].as_u64().unwrap_or(0);
    let mut text = format!(
        "published {project} v{version} ({}){}",
        release["digest"].as_str().unwrap_or(""),
        commit.map(|c| format!(" from {c}")).unwrap_or_default()
    );
    if activate {
        admin
            .post(
                &format!("{}/activate", project_path(project)?),
                json!({ "version": version }),
            )
            .await?;
        text.push_str(&format!("\n{project}: v{version} is active"));
    } else {
        text.push_str(&format!(
            "\nnot active yet: karta activate {project} v{version}"
        ));
    }
    Ok((release, text))
}
