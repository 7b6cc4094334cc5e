//! `claude`'s stream-json lines as protocol events (the table in the
//! module docs): a turn's text, reasoning, steps and usage, its tool uses
//! and their results, permission prompts answered through the host, and its
//! `result`.

use super::*;

/// What one turn has seen so far.
#[derive(Default)]
pub(super) struct TurnState {
    /// The model message being streamed (the latest one), assembled from
    /// Claude Code's partial messages.
    pub(super) message: Option<AnthropicMessage>,
    /// The id of the latest model message.
    pub(super) message_id: Option<String>,
    pub(super) step_index: u32,
    pub(super) usage: Usage,
    /// Text of the latest assistant message.
    pub(super) text: String,
    /// Tool-use id -> (karta tool name, input).
    /// Calls in flight: tool, input, and the jail's CPU time when it began.
    pub(super) tool_uses: HashMap<String, (String, Value, Option<Duration>)>,
    /// Tool calls a person denied, by tool-use id (else by tool and input):
    /// their results are reported as denials.
    pub(super) denied: HashSet<String>,
    /// Whether a person denied a call this turn.
    pub(super) any_denied: bool,
}

/// The karta tool behind a Claude Code tool name (`mcp__karta__calc` ->
/// `calc`); other names stay as they are.
fn karta_tool(name: &str) -> &str {
    name.strip_prefix("mcp__")
        .and_then(|rest| rest.strip_prefix(MCP_SERVER_NAME))
        .and_then(|rest| rest.strip_prefix("__"))
        .unwrap_or(name)
}

impl TurnState {
    pub(super) fn message_id(&self) -> String {
        self.message_id.clone().unwrap_or_else(new_message_id)
    }

    /// A raw Anthropic streaming event (partial messages): deltas become
    /// `text` / `reasoning`, a message's start and end become its step.
    pub(super) fn stream_event(
        &mut self,
        event: Option<&str>,
        cx: &TurnContext<'_>,
    ) -> Result<(), TurnFailure> {
        let event = event.unwrap_or("null");
        let Ok(event) = AnthropicEvent::from_json(event) else {
            tracing::debug!("claude sent a stream event that is not Anthropic's: {event}");
            return Ok(());
        };
        let starts = matches!(event, AnthropicEvent::MessageStart { .. });
        let finishes = matches!(event, AnthropicEvent::MessageDelta { .. });
        if starts {
            self.message = Some(AnthropicMessage::default());
            self.text.clear();
        }
        let Some(message) = self.message.as_mut() else {
            return Ok(());
        };
        let delta = message
            .apply(event)
            .map_err(|e| TurnFailure::new(ErrorCode::ModelError, e.to_string()))?;
        if starts {
            self.message_id = Some(message.id.clone().unwrap_or_else(new_message_id));
            cx.emit(Event::step_start(self.step_index));
        }
        let part =
            |index: usize| format!("{}_{index}", self.message_id.as_deref().unwrap_or("msg"));
        match delta {
            Some(StreamDelta::Text { index, text }) => {
                self.text.push_str(&text);
                cx.emit(Event::text(part(index), text));
            }
            Some(StreamDelta::Reasoning { index, text }) => {
                cx.emit(Event::reasoning(part(index), text));
            }
            None => {}
        }
        if finishes && let Some(message) = self.message.take() {
            let usage = message.usage();
            self.usage.add(usage);
            cx.emit(Event::step_finish(
                self.step_index,
                usage,
                message.stop_reason(),
            ));
            self.step_index += 1;
        }
        Ok(())
    }

    /// A finished assistant content block: tool calls start here.
    pub(super) fn assistant(&mut self, line: &Value, cx: &TurnContext<'_>, cpu: Option<Duration>) {
        for block in line["message"]["content"].as_array().into_iter().flatten() {
            if block["type"] != "tool_use" {
                continue;
            }
            let id = block["id"].as_str().unwrap_or_default().to_owned();
            if self.tool_uses.contains_key(&id) {
                continue;
            }
            let tool = karta_tool(block["name"].as_str().unwrap_or_default()).to_owned();
            let input = block["input"].clone();
            cx.emit(Event::tool_running(id.clone(), tool.clone(), input.clone()));
            self.tool_uses.insert(id, (tool, input, cpu));
        }
    }

    /// Tool results: each finishes a tool call, with what it cost — the
    /// MCP call's fuel for Karta's tools, the jail's CPU time for the
    /// harness's own.
    pub(super) fn tool_results(
        &mut self,
        line: &Value,
        cx: &TurnContext<'_>,
        cpu: Option<Duration>,
    ) {
        for block in line["message"]["content"].as_array().into_iter().flatten() {
            if block["type"] != "tool_result" {
                continue;
            }
            let id = block["tool_use_id"].as_str().unwrap_or_default();
            let Some((tool, input, cpu_at_start)) = self.tool_uses.get(id).cloned() else {
                continue;
            };
            let text = result_text(&block["content"]);
            let is_error = block["is_error"].as_bool().unwrap_or(false);
            let denied = self.denied.remove(id) || self.denied.remove(&denial_key(&tool, &input));
            let run = cx.host.take_tool_run(&tool, &input);
            let reported = ReportedResult {
                text,
                is_error,
                denied,
            };
            let mut event = finished_tool_use(id.to_owned(), tool, input, run, reported);
            if let (Event::ToolUse(data), Some(start), Some(now)) = (&mut event, cpu_at_start, cpu)
                && data.fuel.is_none()
            {
                data.cpu_ms = Some(now.saturating_sub(start).as_millis() as u64);
            }
            cx.emit(event);
        }
    }

    /// The turn's `result` line: how it ended.
    pub(super) fn result(&mut self, line: &Value) -> Result<TurnStatus, TurnFailure> {
        if line["is_error"].as_bool().unwrap_or(false) {
            let message = line["result"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .unwrap_or_else(|| {
                    format!("claude ended the turn with an error ({})", line["subtype"])
                });
            return Err(TurnFailure::new(ErrorCode::ModelError, message));
        }
        if let Some(text) = line["result"].as_str().filter(|t| !t.is_empty()) {
            self.text = text.to_owned();
        }
        // Claude Code's own total of the turn; the steps' sum is what the
        // turn reports (the host replaces both with what the gateway metered).
        if let Ok(reported) = serde_json::from_value::<AnthropicUsage>(line["usage"].clone()) {
            let mut total = Usage::default();
            reported.update(&mut total);
            if total != self.usage {
                tracing::debug!(
                    "claude's turn usage {total:?} differs from its steps' {:?}",
                    self.usage
                );
            }
        }
        Ok(if self.any_denied {
            TurnStatus::Denied
        } else {
            TurnStatus::Completed
        })
    }
}

/// How a denied call without a tool-use id is remembered.
fn denial_key(tool: &str, input: &Value) -> String {
    format!("{tool}\u{0}{input}")
}

/// The text of a `tool_result` content (a string or text blocks).
fn result_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        other => other.to_string(),
    }
}

/// Answers a control request from claude: permission prompts go to a
/// person (unless the tool needs no approval); anything else is declined.
pub(super) async fn answer_control_request(
    line: &Value,
    cx: &TurnContext<'_>,
    turn: &mut TurnState,
) -> Value {
    let request_id = line["request_id"].clone();
    let request = &line["request"];
    if request["subtype"] != "can_use_tool" {
        return json!({
            "type": "control_response",
            "response": {
                "subtype": "error",
                "request_id": request_id,
                "error": format!("the Karta host does not handle `{}` requests", request["subtype"].as_str().unwrap_or("?")),
            },
        });
    }
    let tool = karta_tool(request["tool_name"].as_str().unwrap_or_default()).to_owned();
    let input = request["input"].clone();
    let response = match cx.approve(&tool, &input).await {
        Ok(()) => json!({ "behavior": "allow", "updatedInput": input }),
        Err(why) => {
            turn.any_denied = true;
            turn.denied.insert(match request["tool_use_id"].as_str() {
                Some(id) => id.to_owned(),
                None => denial_key(&tool, &input),
            });
            json!({ "behavior": "deny", "message": format!("Tool call denied: {why}.") })
        }
    };
    json!({
        "type": "control_response",
        "response": { "subtype": "success", "request_id": request_id, "response": response },
    })
}
