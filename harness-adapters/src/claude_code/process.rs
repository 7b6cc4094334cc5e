//! One running `claude`: its pipes, the stream-json lines written to it
//! and read from it, its death told with its stderr, and the warm-up of a
//! pooled process.

use super::*;

/// One running `claude`.
pub(super) struct ClaudeProcess {
    pub(super) process: HarnessProcess,
    pub(super) stdin: ChildStdin,
    pub(super) lines: BoundedLines<ChildStdout>,
    pub(super) last_used: Instant,
    /// Whether `system/init` was reported (once per process).
    pub(super) announced: bool,
    /// The agent it runs as (`--agent`), if any.
    pub(super) agent: Option<String>,
    /// Its conversation id, as last remembered in the session's `HOME`.
    pub(super) conversation: Option<String>,
}

/// The stream-json line of a user message saying `text`.
pub(super) fn user_line(text: &str) -> Value {
    json!({
        "type": "user",
        "message": { "role": "user", "content": [{ "type": "text", "text": text }] },
        "parent_tool_use_id": null,
        "session_id": "",
    })
}

slot_process!(ClaudeProcess);

impl ClaudeProcess {
    /// The warm-up of a pooled process (see [`Harness::prestart`]):
    /// waits until none of its MCP servers is still connecting.
    ///
    /// Claude Code 2.1.332 answers `initialize` before its MCP connections
    /// are made (they go on in the background, with its other start-up
    /// work); a first message that arrives meanwhile waits for them. Its
    /// `mcp_status` control request reports each server as `pending` until
    /// then, and asks nothing of the model or of a server. What the first
    /// message does besides (the `system/init` line, the first attachments
    /// of the conversation) belongs to the conversation: no control request
    /// of this version does it without starting one (measured: none of
    /// `mcp_status`, `get_settings`, `get_status`, `get_context_usage`
    /// makes the first turn faster), so it stays with the first turn.
    pub(super) async fn warm_up(&mut self) -> Result<(), TurnFailure> {
        let settled = tokio::time::timeout(WARM_UP_TIMEOUT, async {
            loop {
                let request_id = format!("warm_{}", uuid::Uuid::new_v4().simple());
                self.send(&json!({
                    "type": "control_request",
                    "request_id": request_id,
                    "request": { "subtype": "mcp_status" },
                }))
                .await?;
                let status = loop {
                    let line = self.next_line().await?;
                    let response = &line["response"];
                    if line["type"] == "control_response" && response["request_id"] == request_id {
                        break response.clone();
                    }
                };
                if status["subtype"] == "error" {
                    return Err(TurnFailure::harness(format!(
                        "claude refused its mcp_status request: {}",
                        status["error"]
                    )));
                }
                let pending = status["response"]["mcpServers"]
                    .as_array()
                    .is_some_and(|servers| servers.iter().any(|s| s["status"] == "pending"));
                if !pending {
                    return Ok(());
                }
                tokio::time::sleep(WARM_UP_POLL).await;
            }
        })
        .await;
        settled.unwrap_or_else(|_| {
            Err(TurnFailure::harness(format!(
                "claude's MCP servers were still connecting after {}s",
                WARM_UP_TIMEOUT.as_secs()
            )))
        })
    }

    /// The second half of a pooled process's warm-up: one throwaway
    /// exchange, then `/clear`.
    ///
    /// A conversation's first message costs Claude Code 2.1.332 ~60–80 ms
    /// that a later one does not (the first run of its per-message code,
    /// measured unjailed: message → model request 93–131 ms first, 23–43 ms
    /// second), and no control request does that work without a message.
    /// So the warm-up sends one — its model call is the pool slot's, which
    /// the gateway answers itself (a fixed `ok`, no provider, nothing
    /// metered) — and then `/clear`, which starts a new, empty
    /// conversation (a new conversation id: the session's first message
    /// is its first, and the request carries nothing of the warm-up; the
    /// pool test asserts it). Measured the same way, the first message
    /// after this costs 40–55 ms, a later one 24–31 ms. The warm-up's own
    /// transcript is removed from `home`, so the session's `HOME` holds
    /// only its own conversation. Apps with hooks skip this (see
    /// [`app_has_no_hooks`]).
    pub(super) async fn warm_up_conversation(&mut self, home: &Path) -> Result<(), TurnFailure> {
        let exchanged = tokio::time::timeout(WARM_UP_TIMEOUT, async {
            self.send(&user_line(WARM_UP_MESSAGE)).await?;
            let warm = self.until_result().await?;
            self.send(&user_line("/clear")).await?;
            self.until_result().await?;
            Ok::<_, TurnFailure>(warm)
        })
        .await
        .unwrap_or_else(|_| {
            Err(TurnFailure::harness(format!(
                "claude's warm-up exchange took more than {}s",
                WARM_UP_TIMEOUT.as_secs()
            )))
        })?;
        if let Some(conversation) = exchanged["session_id"].as_str() {
            forget_transcript(home, conversation);
        }
        Ok(())
    }

    /// Reads to the next `result` line; anything asking for an answer on
    /// the way (a warm-up never should) fails the warm-up.
    pub(super) async fn until_result(&mut self) -> Result<Value, TurnFailure> {
        loop {
            let line = self.next_line().await?;
            match line["type"].as_str() {
                Some("result") if line["is_error"] == true => {
                    return Err(TurnFailure::harness(format!(
                        "claude's warm-up exchange failed: {}",
                        line["result"]
                    )));
                }
                Some("result") => return Ok(line),
                Some("control_request") => {
                    return Err(TurnFailure::harness(
                        "claude asked for an answer during its warm-up",
                    ));
                }
                _ => {}
            }
        }
    }

    pub(super) async fn send(&mut self, line: &Value) -> Result<(), TurnFailure> {
        let mut bytes = serde_json::to_vec(line)
            .map_err(|e| TurnFailure::harness(format!("cannot encode: {e}")))?;
        bytes.push(b'\n');
        let written = async {
            self.stdin.write_all(&bytes).await?;
            self.stdin.flush().await
        }
        .await;
        written.map_err(|e| self.died(&format!("cannot write to claude: {e}")))
    }

    /// The next JSON line; the process ending is an error.
    pub(super) async fn next_line(&mut self) -> Result<Value, TurnFailure> {
        loop {
            let line = self.next_text_line().await?;
            match serde_json::from_str(&line) {
                Ok(value) => return Ok(value),
                // Claude Code writes only JSON here; anything else is noise
                // worth a log line, not a failed turn.
                Err(_) => tracing::debug!("claude wrote a non-JSON line: {line}"),
            }
        }
    }

    /// The next line that is not blank, trimmed; the process ending is an
    /// error.
    pub(super) async fn next_text_line(&mut self) -> Result<String, TurnFailure> {
        loop {
            let line = match self.lines.next_line().await {
                Ok(Some(Line::Text(line))) => line,
                // Not kept: the line would grow the host, outside the
                // jail's memory limit. The turn fails and the process goes.
                Ok(Some(Line::TooLong { .. })) => {
                    return Err(TurnFailure::harness(format!(
                        "claude wrote a line longer than {} MiB",
                        MAX_LINE_BYTES >> 20
                    )));
                }
                Ok(None) => return Err(self.died("claude exited")),
                Err(e) => return Err(self.died(&format!("cannot read claude's output: {e}"))),
            };
            let trimmed = line.trim();
            if trimmed.is_empty() {
                continue;
            }
            return Ok(if trimmed.len() == line.len() {
                line
            } else {
                trimmed.to_owned()
            });
        }
    }

    pub(super) fn died(&mut self, what: &str) -> TurnFailure {
        let status = self.process.child.try_wait().ok().flatten();
        let tail = self.process.stderr_tail();
        let mut message = what.to_owned();
        if let Some(status) = status {
            message.push_str(&format!(" ({status})"));
        }
        if !tail.is_empty() {
            message.push_str(&format!("; its last words: {tail}"));
        }
        TurnFailure::harness(message)
    }
}
