//! `karta chat`: a terminal client for a served app.
//!
//! Opens (or resumes) a session, then for each line typed sends a streaming
//! message and prints the events as they arrive: text as it comes, reasoning
//! dimmed, tool calls as one-line summaries, approval prompts answered at the
//! keyboard. A turn's stream ends at an approval prompt (as the protocol
//! says); the answer goes back with `PUT …/inputs/{request_id}`, whose
//! reply carries the rest of the turn.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use karta_harness::http::{HttpClient, MAX_EVENT_BYTES};
use karta_harness::{Decision, Event, InputRequiredData, StreamItem, TurnStatus, sse};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

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
    let client = HttpClient::new();
    let base = url.trim_end_matches('/').to_owned();
    let mut body = json!({});
    if let Some(id) = session {
        body["session_id"] = json!(id);
    }
    let created = request_json(&client, "POST", &format!("{base}/v1/sessions"), Some(body))
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
            eprintln!("error: {}", crate::error_chain(&e));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A JSON request; non-2xx answers become errors carrying the server's message.
async fn request_json(
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
    /// One message: streams its turn; at an approval prompt asks here, and
    /// shows the continuation the answer returns, until the turn ends.
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
        let mut stream = sse::body_events(response.into_body(), MAX_EVENT_BYTES);
        let mut last = None;
        while let Some(frame) = stream.next().await {
            let frame = frame?;
            match sse::json_data::<StreamItem>(&frame) {
                Some(StreamItem::Logged(envelope)) => {
                    self.show(&envelope.event);
                    last = Some(envelope.event);
                }
                Some(StreamItem::Unlogged(event)) => self.show(&event),
                None => {}
            }
        }
        // A stream ends at an approval prompt; its answer returns the rest.
        while let Some(Event::InputRequired(request)) = last.take() {
            let decision = self.ask(&request).await?;
            let url = format!(
                "{}/v1/sessions/{}/inputs/{}",
                self.base, self.session, request.request_id
            );
            let answer = request_json(
                &self.client,
                "PUT",
                &url,
                Some(json!({ "decision": decision })),
            )
            .await?;
            let items: Vec<StreamItem> = serde_json::from_value(answer["events"].clone())
                .context("the host's continuation is not a list of events")?;
            for item in items {
                match item {
                    StreamItem::Logged(envelope) => {
                        self.show(&envelope.event);
                        last = Some(envelope.event);
                    }
                    StreamItem::Unlogged(event) => self.show(&event),
                }
            }
        }
        Ok(())
    }

    /// Asks at the keyboard whether a tool call may run.
    async fn ask(&mut self, request: &InputRequiredData) -> anyhow::Result<Decision> {
        Ok(loop {
            eprint!("    [o]nce / [s]ession / [d]eny: ");
            let _ = std::io::stderr().flush();
            let answer = self.stdin.next_line().await?.unwrap_or_default();
            match answer.trim() {
                "o" | "once" | "y" => break Decision::ApproveOnce,
                "s" | "session" => break Decision::ApproveSession,
                "d" | "deny" | "n" => break Decision::Deny,
                _ if answer.is_empty() => bail!("no answer to `{}`", request.message),
                _ => continue,
            }
        })
    }

    fn show(&self, event: &Event) {
        let mut out = std::io::stdout();
        match event {
            Event::Text(data) => print!("{}", data.part.text),
            Event::Reasoning(data) => println!("\x1b[2m{}\x1b[0m", data.part.text),
            Event::ToolUse(data) => {
                let part = &data.part;
                let fuel = data.fuel.map_or("-".into(), |f| f.to_string());
                let ms = data.duration_ms.unwrap_or(0);
                match (&part.state.output, &part.state.error) {
                    (_, Some(error)) => {
                        println!("  ✗ {}: {} {}", part.tool, error.kind, error.message)
                    }
                    (Some(output), None) => {
                        println!("  ✓ {} → {output} (fuel {fuel}, {ms} ms)", part.tool)
                    }
                    (None, None) => println!("\n  ⚙ {} {}", part.tool, part.state.input),
                }
            }
            Event::InputRequired(request) => {
                println!("\n  ? {} {}", request.message, request.input);
            }
            Event::Error(error) => println!("\n  error {}: {}", error.code, error.message),
            Event::Done(done) => {
                let note = match done.status {
                    TurnStatus::Completed => String::new(),
                    other => format!(", {}", other.as_str()),
                };
                println!(
                    "\n\x1b[2m({} tokens in, {} out{note})\x1b[0m",
                    done.usage.input_tokens
                        + done.usage.cache_read_tokens
                        + done.usage.cache_write_tokens,
                    done.usage.output_tokens
                );
            }
            Event::StepStart(_) | Event::StepFinish(_) | Event::System(_) => {}
        }
        let _ = out.flush();
    }
}
