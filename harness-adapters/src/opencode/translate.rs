//! The server's events as protocol events (the table in the module docs):
//! a turn's messages, text and reasoning parts, steps and tokens, tool
//! parts, permission requests answered through the host, and its end.

use super::*;

/// What one turn has seen so far.
#[derive(Default)]
pub(super) struct TurnState {
    /// Assistant message ids of this turn.
    pub(super) messages: Vec<String>,
    /// Message id -> role.
    pub(super) roles: HashMap<String, String>,
    /// Part id -> text so far (text parts), to turn full updates into deltas.
    pub(super) texts: BTreeMap<String, String>,
    /// Part ids of reasoning parts.
    pub(super) reasoning: HashSet<String>,
    /// The last text part, for the final answer.
    pub(super) last_text_part: Option<String>,
    /// Tool-call ids already reported running / finished.
    pub(super) running: HashSet<String>,
    pub(super) finished: HashSet<String>,
    /// Tool-call id -> its input, once known.
    pub(super) inputs: HashMap<String, Value>,
    /// Tool-call ids a person denied.
    pub(super) denied: HashSet<String>,
    pub(super) any_denied: bool,
    pub(super) step_index: u32,
    pub(super) usage: Usage,
    pub(super) error: Option<String>,
}

/// The karta tool behind an OpenCode tool name (`karta_calc` -> `calc`).
pub(super) fn karta_tool(name: &str) -> &str {
    name.strip_prefix(MCP_SERVER_NAME)
        .and_then(|rest| rest.strip_prefix('_'))
        .unwrap_or(name)
}

impl TurnState {
    pub(super) fn message_id(&self) -> String {
        self.messages.last().cloned().unwrap_or_else(new_message_id)
    }

    pub(super) fn final_text(&self) -> String {
        self.last_text_part
            .as_ref()
            .and_then(|id| self.texts.get(id))
            .cloned()
            .unwrap_or_default()
    }

    pub(super) fn finish(&mut self) -> Result<TurnStatus, TurnFailure> {
        match self.error.take() {
            Some(message) => Err(TurnFailure::new(ErrorCode::ModelError, message)),
            None => Ok(if self.any_denied {
                TurnStatus::Denied
            } else {
                TurnStatus::Completed
            }),
        }
    }

    pub(super) fn message_updated(&mut self, info: &Value) {
        let (Some(id), Some(role)) = (info["id"].as_str(), info["role"].as_str()) else {
            return;
        };
        self.roles.insert(id.to_owned(), role.to_owned());
        if role == "assistant" && !self.messages.iter().any(|m| m == id) {
            self.messages.push(id.to_owned());
        }
        if let Some(error) = info["error"].as_object() {
            let message = error
                .get("data")
                .and_then(|d| d["message"].as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| Value::Object(error.clone()).to_string());
            if error.get("name").and_then(Value::as_str) != Some("MessageAbortedError") {
                self.error = Some(message);
            }
        }
    }

    /// Whether a part (or delta) belongs to the user's message, which
    /// OpenCode echoes as parts too.
    pub(super) fn is_user_part(&self, part: &Value) -> bool {
        part["messageID"]
            .as_str()
            .and_then(|m| self.roles.get(m))
            .is_some_and(|r| r == "user")
    }

    /// A delta of a text or reasoning part.
    pub(super) fn part_delta(&mut self, p: &Value, cx: &TurnContext<'_>) {
        let (Some(part_id), Some(delta)) = (p["partID"].as_str(), p["delta"].as_str()) else {
            return;
        };
        if self.is_user_part(p) {
            return;
        }
        if self.reasoning.contains(part_id) {
            cx.emit(Event::reasoning(part_id, delta));
        } else {
            self.texts
                .entry(part_id.to_owned())
                .or_default()
                .push_str(delta);
            self.last_text_part = Some(part_id.to_owned());
            cx.emit(Event::text(part_id, delta));
        }
    }

    pub(super) fn part_updated(&mut self, p: &Value, cx: &TurnContext<'_>) {
        let part = &p["part"];
        if self.is_user_part(part) {
            return;
        }
        let id = part["id"].as_str().unwrap_or_default().to_owned();
        match part["type"].as_str() {
            Some("text") => {
                let full = part["text"].as_str().unwrap_or_default();
                let seen = self.texts.entry(id.clone()).or_default();
                // Updates carry the whole text; report only what is new.
                if let Some(new) = full.strip_prefix(seen.as_str())
                    && !new.is_empty()
                {
                    cx.emit(Event::text(id.clone(), new));
                }
                *seen = full.to_owned();
                self.last_text_part = Some(id);
            }
            Some("reasoning") => {
                let first = self.reasoning.insert(id.clone());
                let text = part["text"].as_str().unwrap_or_default();
                if first && !text.is_empty() {
                    cx.emit(Event::reasoning(id, text));
                }
            }
            Some("step-start") => cx.emit(Event::step_start(self.step_index)),
            Some("step-finish") => {
                let usage = opencode_usage(&part["tokens"]);
                self.usage.add(usage);
                cx.emit(Event::step_finish(
                    self.step_index,
                    usage,
                    part["reason"].as_str().unwrap_or("stop"),
                ));
                self.step_index += 1;
            }
            Some("tool") => self.tool_part(part, cx),
            _ => {}
        }
    }

    pub(super) fn tool_part(&mut self, part: &Value, cx: &TurnContext<'_>) {
        let call = part["callID"]
            .as_str()
            .or_else(|| part["id"].as_str())
            .unwrap_or_default()
            .to_owned();
        let tool = karta_tool(part["tool"].as_str().unwrap_or_default()).to_owned();
        let state = &part["state"];
        let input = state["input"].clone();
        if input.as_object().is_some_and(|o| !o.is_empty()) {
            self.inputs.insert(call.clone(), input.clone());
        }
        match state["status"].as_str() {
            Some("running") if self.running.insert(call.clone()) => {
                cx.emit(Event::tool_running(call, tool, input));
            }
            Some(status @ ("completed" | "error")) if self.finished.insert(call.clone()) => {
                let run = cx.host.take_tool_run(&tool, &input);
                let denied = self.denied.remove(&call);
                let text = state["output"]
                    .as_str()
                    .or_else(|| state["error"].as_str())
                    .unwrap_or_default()
                    .to_owned();
                let reported = ReportedResult {
                    text,
                    is_error: status == "error",
                    denied,
                };
                cx.emit(finished_tool_use(call, tool, input, run, reported));
            }
            _ => {}
        }
    }
}

/// A step's tokens as OpenCode reports them (`{input, output, reasoning,
/// cache: {read, write}}`), split as Karta counts them: its `input` excludes
/// the cache, and reasoning is output.
pub(super) fn opencode_usage(tokens: &Value) -> Usage {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    Usage {
        input_tokens: n(&tokens["input"]),
        output_tokens: n(&tokens["output"]) + n(&tokens["reasoning"]),
        cache_read_tokens: n(&tokens["cache"]["read"]),
        cache_write_tokens: n(&tokens["cache"]["write"]),
    }
}

/// Asks a person about an OpenCode permission request (unless the tool
/// needs no approval); returns the reply body.
pub(super) async fn answer_permission(
    p: &Value,
    cx: &TurnContext<'_>,
    turn: &mut TurnState,
) -> Value {
    let tool = karta_tool(p["permission"].as_str().unwrap_or_default()).to_owned();
    let call = p["tool"]["callID"].as_str().unwrap_or_default().to_owned();
    let input = turn.inputs.get(&call).cloned().unwrap_or_else(|| json!({}));
    match cx.approve(&tool, &input).await {
        Ok(()) => json!({ "reply": "once" }),
        Err(_) => {
            turn.any_denied = true;
            turn.denied.insert(call);
            // With a message the model hears why and the turn goes on.
            json!({ "reply": "reject", "message": "A person denied this tool call." })
        }
    }
}
