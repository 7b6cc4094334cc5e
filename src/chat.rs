//! `karta chat`: a terminal client for a served app.
//!
//! Opens (or resumes) a session, then for each line typed sends a streaming
//! message and prints the events as they arrive: text as it comes, reasoning
//! dimmed, tool calls as one-line summaries, approval prompts answered at the
//! keyboard (the answer goes back with `PUT …/inputs/{request_id}` while the
//! stream goes on).

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Chat {
    client: HttpClient,
    base: String,
    session: String,
    agent: Option<String>,
    stdin: tokio::io::Lines<tokio::io::BufReader<tokio::io::Stdin>>,
}

/// Runs the chat loop until EOF or `/quit`.
pub async fn run(
    url: &str,
    session: Option<String>,
    agent: Option<String>,
) -> anyhow::Result<ExitCode> {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let base = url.trim_end_matches('/').to_owned();
    let mut body = json!({});
    if let Some(id) = session {
        body["session_id"] = json!(id);
    }
    let created = request(&client, "POST", &format!("{base}/v1/sessions"), Some(body))
        .await
        .with_context(|| format!("cannot open a session at {base} (is `karta serve` running?)"))?;
    let session = created["id"]
        .as_str()
        .context("the server answered without a session id")?
        .to_owned();
    eprintln!("session {session} — type a message, /agent NAME to switch agents, /quit to leave");
    let mut chat = Chat {
        client,
        base,
        session,
        agent,
        stdin: tokio::io::BufReader::new(tokio::io::stdin()).lines(),
    };
    loop {
        eprint!("> ");
        let _ = std::io::stderr().flush();
        let Some(line) = chat.stdin.next_line().await? else {
            break;
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line == "/quit" {
            break;
        }
        if let Some(name) = line.strip_prefix("/agent ") {
            chat.agent = Some(name.trim().to_owned());
            eprintln!("(next messages go to agent `{}`)", name.trim());
            continue;
        }
        if let Err(e) = chat.turn(line).await {
            eprintln!("error: {e:#}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A JSON request; non-2xx answers become errors carrying the server's message.
async fn request(
    client: &HttpClient,
    method: &str,
    url: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let response = client.request(request).await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if !status.is_success() {
        bail!(
            "HTTP {}: {}",
            status.as_u16(),
            value["message"]
                .as_str()
                .unwrap_or(&String::from_utf8_lossy(&bytes))
        );
    }
    Ok(value)
}

impl Chat {
    async fn turn(&mut self, text: &str) -> anyhow::Result<()> {
        let mut body = json!({ "text": text, "stream": true });
        if let Some(agent) = &self.agent {
            body["agent"] = json!(agent);
        }
        let url = format!("{}/v1/sessions/{}/messages", self.base, self.session);
        let request = hyper::Request::post(&url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))?;
        let response = self.client.request(request).await?;
        if !response.status().is_success() {
            let status = response.status();
            let bytes = response.into_body().collect().await?.to_bytes();
            let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            bail!(
                "HTTP {}: {}",
                status.as_u16(),
                value["message"].as_str().unwrap_or("error")
            );
        }
        let mut body = response.into_body();
        let mut buffer = String::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            buffer.push_str(&String::from_utf8_lossy(&data));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let data: String = block
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .collect();
                if let Ok(event) = serde_json::from_str::<Value>(&data) {
                    self.show(&event).await?;
                }
            }
        }
        Ok(())
    }

    async fn show(&mut self, event: &Value) -> anyhow::Result<()> {
        let data = &event["data"];
        let mut out = std::io::stdout();
        match event["type"].as_str() {
            Some("text") => {
                print!("{}", data["part"]["text"].as_str().unwrap_or_default());
            }
            Some("reasoning") => {
                println!(
                    "\x1b[2m{}\x1b[0m",
                    data["part"]["text"].as_str().unwrap_or_default()
                );
            }
            Some("tool_use") => {
                let part = &data["part"];
                let tool = part["tool"].as_str().unwrap_or("?");
                match part["state"]["status"].as_str() {
                    Some("running") => println!("\n  ⚙ {tool} {}", part["state"]["input"]),
                    Some("completed") => println!(
                        "  ✓ {tool} → {} (fuel {}, {} ms)",
                        part["state"]["output"], data["fuel"], data["duration_ms"]
                    ),
                    _ => println!(
                        "  ✗ {tool}: {} {}",
                        part["state"]["error"]["kind"].as_str().unwrap_or(""),
                        part["state"]["error"]["message"].as_str().unwrap_or("")
                    ),
                }
            }
            Some("input_required") => {
                println!(
                    "\n  ? {} {}",
                    data["message"].as_str().unwrap_or("approval needed"),
                    data["input"]
                );
                let decision = loop {
                    eprint!("    [o]nce / [s]ession / [d]eny: ");
                    let _ = std::io::stderr().flush();
                    let answer = self.stdin.next_line().await?.unwrap_or_default();
                    match answer.trim() {
                        "o" | "once" | "y" => break "approve_once",
                        "s" | "session" => break "approve_session",
                        "d" | "deny" | "n" => break "deny",
                        _ => continue,
                    }
                };
                let url = format!(
                    "{}/v1/sessions/{}/inputs/{}",
                    self.base,
                    self.session,
                    data["request_id"].as_str().unwrap_or_default()
                );
                // The answer's continuation also arrives on the open stream;
                // the body is not needed here.
                let client = self.client.clone();
                tokio::spawn(async move {
                    if let Err(e) =
                        request(&client, "PUT", &url, Some(json!({ "decision": decision }))).await
                    {
                        eprintln!("error answering: {e:#}");
                    }
                });
            }
            Some("error") => println!(
                "\n  error {}: {}",
                data["code"].as_str().unwrap_or(""),
                data["message"].as_str().unwrap_or("")
            ),
            Some("done") => {
                let usage = &data["usage"];
                let status = data["status"].as_str().unwrap_or("completed");
                let note = if status == "completed" {
                    String::new()
                } else {
                    format!(", {status}")
                };
                println!(
                    "\n\x1b[2m({} tokens in, {} out{note})\x1b[0m",
                    usage["input_tokens"], usage["output_tokens"]
                );
            }
            _ => {}
        }
        let _ = out.flush();
        Ok(())
    }
}
