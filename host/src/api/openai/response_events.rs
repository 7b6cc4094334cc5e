//! The Responses stream events of a turn's events ([`ResponseEvents`]),
//! as `responses` sends them (streaming) or keeps the last `response`
//! object of (unary): message items of `output_text` built from text
//! deltas, one `mcp_call` item per tool call the app ran (`in_progress` when
//! it starts, `completed` or `failed` with its output or error at its end),
//! `response.completed` with the turn's usage, `response.failed` with its
//! error. `sequence_number` rises by one from 0 over every event.

use karta_harness::{Event, ToolStatus, Usage};
use serde_json::{Value, json};

use super::{new_id, now_secs};

/// OpenAI's response `usage` of a turn's metered usage.
fn usage(usage: &Usage) -> Value {
    let input = usage.prompt_tokens();
    json!({
        "input_tokens": input,
        "input_tokens_details": {
            "cached_tokens": usage.cache_read_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        },
        "output_tokens": usage.output_tokens,
        "output_tokens_details": { "reasoning_tokens": 0 },
        "total_tokens": input + usage.output_tokens,
    })
}

/// An output item being built.
enum Item {
    Message {
        id: String,
        part: String,
        text: String,
        done: bool,
    },
    Tool {
        part: String,
        json: Value,
    },
}

impl Item {
    fn json(&self) -> Value {
        match self {
            Self::Message { id, text, done, .. } => {
                let content = if *done {
                    json!([output_text(text)])
                } else {
                    json!([])
                };
                let status = if *done { "completed" } else { "in_progress" };
                json!({ "id": id, "type": "message", "role": "assistant", "status": status, "content": content })
            }
            Self::Tool { json, .. } => json.clone(),
        }
    }
}

fn output_text(text: &str) -> Value {
    json!({ "type": "output_text", "text": text, "annotations": [], "logprobs": [] })
}

/// A turn's events as Responses stream events.
pub(super) struct ResponseEvents {
    pub(super) id: String,
    created_at: u64,
    model: String,
    instructions: Option<String>,
    previous_response_id: Option<String>,
    server_label: String,
    sequence: u64,
    output: Vec<Item>,
    /// The index of the message being written.
    open: Option<usize>,
    status: &'static str,
    usage: Value,
    error: Value,
    completed_at: Option<u64>,
}

impl ResponseEvents {
    pub(super) fn new(
        model: &str,
        instructions: Option<String>,
        previous_response_id: Option<String>,
        server_label: &str,
    ) -> Self {
        Self {
            id: new_id("resp_"),
            created_at: now_secs(),
            model: model.to_owned(),
            instructions,
            previous_response_id,
            server_label: server_label.to_owned(),
            sequence: 0,
            output: Vec::new(),
            open: None,
            status: "in_progress",
            usage: Value::Null,
            error: Value::Null,
            completed_at: None,
        }
    }

    /// The `response` object as it stands.
    pub(super) fn response(&self) -> Value {
        json!({
            "id": self.id, "object": "response", "created_at": self.created_at,
            "status": self.status, "model": self.model,
            "output": self.output.iter().map(Item::json).collect::<Vec<_>>(),
            "parallel_tool_calls": true, "tool_choice": "auto", "tools": [],
            "usage": self.usage, "error": self.error, "incomplete_details": null,
            "instructions": self.instructions, "metadata": {},
            "previous_response_id": self.previous_response_id,
            "temperature": null, "top_p": null, "completed_at": self.completed_at,
        })
    }

    fn event(&mut self, kind: &str, mut fields: Value) -> Value {
        fields["type"] = json!(kind);
        fields["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        fields
    }

    /// `response.created` and `response.in_progress`.
    pub(super) fn start(&mut self) -> Vec<Value> {
        let created = self.event("response.created", json!({ "response": self.response() }));
        let progress = self.event(
            "response.in_progress",
            json!({ "response": self.response() }),
        );
        vec![created, progress]
    }

    /// Ends the message being written, if one is.
    fn close_message(&mut self) -> Vec<Value> {
        let Some(index) = self.open.take() else {
            return Vec::new();
        };
        let Item::Message { id, text, done, .. } = &mut self.output[index] else {
            return Vec::new();
        };
        *done = true;
        let (id, text) = (id.clone(), text.clone());
        let at = json!({ "item_id": id, "output_index": index, "content_index": 0 });
        let mut text_done = at.clone();
        text_done["text"] = json!(text);
        text_done["logprobs"] = json!([]);
        let mut part_done = at;
        part_done["part"] = output_text(&text);
        let item = self.output[index].json();
        vec![
            self.event("response.output_text.done", text_done),
            self.event("response.content_part.done", part_done),
            self.event(
                "response.output_item.done",
                json!({ "output_index": index, "item": item }),
            ),
        ]
    }

    /// What `event` adds to the stream.
    pub(super) fn on_event(&mut self, event: &Event) -> Vec<Value> {
        let mut out = Vec::new();
        match event {
            Event::Text(data) if !data.part.text.is_empty() => {
                let current = self.open.filter(|&i| {
                    matches!(&self.output[i], Item::Message { part, .. } if *part == data.part.id)
                });
                let index = match current {
                    Some(index) => index,
                    None => {
                        out.extend(self.close_message());
                        let index = self.output.len();
                        let id = new_id("msg_");
                        self.output.push(Item::Message {
                            id: id.clone(),
                            part: data.part.id.clone(),
                            text: String::new(),
                            done: false,
                        });
                        self.open = Some(index);
                        let item = self.output[index].json();
                        out.push(self.event(
                            "response.output_item.added",
                            json!({ "output_index": index, "item": item }),
                        ));
                        out.push(self.event(
                            "response.content_part.added",
                            json!({ "item_id": id, "output_index": index, "content_index": 0, "part": output_text("") }),
                        ));
                        index
                    }
                };
                let Item::Message { id, text, .. } = &mut self.output[index] else {
                    return out;
                };
                text.push_str(&data.part.text);
                let id = id.clone();
                out.push(self.event(
                    "response.output_text.delta",
                    json!({ "item_id": id, "output_index": index, "content_index": 0, "delta": data.part.text, "logprobs": [] }),
                ));
            }
            Event::ToolUse(data) => {
                out.extend(self.close_message());
                let part = &data.part;
                let (status, output, error) = match part.state.status {
                    ToolStatus::Running => ("in_progress", Value::Null, Value::Null),
                    ToolStatus::Completed => {
                        let output = match &part.state.output {
                            Some(Value::String(text)) => json!(text),
                            Some(value) => json!(value.to_string()),
                            None => json!(""),
                        };
                        ("completed", output, Value::Null)
                    }
                    ToolStatus::Error => (
                        "failed",
                        Value::Null,
                        json!({ "type": "mcp_tool_execution_error", "content": part.state.error }),
                    ),
                };
                let json = json!({
                    "id": format!("mcp_{}", part.id), "type": "mcp_call", "name": part.tool,
                    "arguments": part.state.input.to_string(), "server_label": self.server_label,
                    "status": status, "output": output, "error": error, "approval_request_id": null,
                });
                let found = self
                    .output
                    .iter()
                    .position(|item| matches!(item, Item::Tool { part: p, .. } if *p == part.id));
                let index = match found {
                    Some(index) => index,
                    None => {
                        self.output.push(Item::Tool {
                            part: part.id.clone(),
                            json: json.clone(),
                        });
                        let index = self.output.len() - 1;
                        let mut added = json.clone();
                        added["status"] = json!("in_progress");
                        out.push(self.event(
                            "response.output_item.added",
                            json!({ "output_index": index, "item": added }),
                        ));
                        index
                    }
                };
                self.output[index] = Item::Tool {
                    part: part.id.clone(),
                    json: json.clone(),
                };
                if status != "in_progress" {
                    out.push(self.event(
                        "response.output_item.done",
                        json!({ "output_index": index, "item": json }),
                    ));
                }
            }
            Event::Done(done) => {
                out.extend(self.close_message());
                self.status = "completed";
                self.usage = usage(&done.usage);
                self.completed_at = Some(now_secs());
                let response = self.response();
                out.push(self.event("response.completed", json!({ "response": response })));
            }
            Event::Error(error) => {
                out.extend(self.close_message());
                self.status = "failed";
                self.error = json!({
                    "code": "server_error",
                    "message": format!("{}: {}", error.code, error.message),
                });
                let response = self.response();
                out.push(self.event("response.failed", json!({ "response": response })));
            }
            _ => {}
        }
        out
    }
}
