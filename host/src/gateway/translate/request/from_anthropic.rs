//! An Anthropic Messages request (Claude Code's) for an OpenAI-compatible
//! provider.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Translated, insert_some};

#[derive(Deserialize)]
struct AnthropicRequest {
    #[serde(default)]
    system: Option<AnthropicContent>,
    #[serde(default)]
    messages: Vec<AnthropicMessage>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    stop_sequences: Vec<String>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    tools: Vec<AnthropicTool>,
    #[serde(default)]
    tool_choice: Option<AnthropicToolChoice>,
}

#[derive(Deserialize)]
struct AnthropicMessage {
    role: String,
    content: AnthropicContent,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum AnthropicContent {
    Text(String),
    Blocks(Vec<AnthropicBlock>),
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum AnthropicBlock {
    Text {
        text: String,
    },
    Image {
        source: ImageSource,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    ToolResult {
        tool_use_id: String,
        #[serde(default)]
        content: Option<AnthropicContent>,
        #[serde(default)]
        is_error: bool,
    },
    /// Thinking (its signature means nothing to another provider) and
    /// anything newer.
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ImageSource {
    Base64 {
        media_type: String,
        data: String,
    },
    Url {
        url: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct AnthropicTool {
    name: String,
    #[serde(default)]
    description: Option<String>,
    /// Absent on Anthropic's server tools (web search…), which have no
    /// OpenAI counterpart.
    #[serde(default)]
    input_schema: Option<Value>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum AnthropicToolChoice {
    Auto {
        #[serde(default)]
        disable_parallel_tool_use: bool,
    },
    Any {
        #[serde(default)]
        disable_parallel_tool_use: bool,
    },
    Tool {
        name: String,
        #[serde(default)]
        disable_parallel_tool_use: bool,
    },
    None,
}

impl AnthropicContent {
    fn blocks(self) -> Vec<AnthropicBlock> {
        match self {
            Self::Text(text) => vec![AnthropicBlock::Text { text }],
            Self::Blocks(blocks) => blocks,
        }
    }

    /// The text of its text blocks, joined.
    fn text(self) -> String {
        let texts: Vec<String> = self
            .blocks()
            .into_iter()
            .filter_map(|b| match b {
                AnthropicBlock::Text { text } => Some(text),
                _ => None,
            })
            .collect();
        texts.join("\n\n")
    }
}

/// An Anthropic Messages request as an OpenAI Chat Completions one for
/// `model`.
pub(crate) fn anthropic_to_openai(body: &[u8], model: &str) -> Result<Translated, String> {
    let request: AnthropicRequest = serde_json::from_slice(body)
        .map_err(|e| format!("not an Anthropic Messages request: {e}"))?;
    let mut messages = Vec::new();
    if let Some(system) = request.system {
        messages.push(json!({ "role": "system", "content": system.text() }));
    }
    for message in request.messages {
        let mut parts = Vec::new();
        let mut text = Vec::new();
        let mut tool_calls = Vec::new();
        for block in message.content.blocks() {
            match block {
                AnthropicBlock::Text { text: t } => {
                    parts.push(json!({ "type": "text", "text": t }));
                    text.push(t);
                }
                AnthropicBlock::Image { source } => {
                    let url = match source {
                        ImageSource::Base64 { media_type, data } => {
                            format!("data:{media_type};base64,{data}")
                        }
                        ImageSource::Url { url } => url,
                        ImageSource::Other => continue,
                    };
                    parts.push(json!({ "type": "image_url", "image_url": { "url": url } }));
                }
                AnthropicBlock::ToolUse { id, name, input } => tool_calls.push(json!({
                    "id": id, "type": "function",
                    "function": { "name": name, "arguments": input.to_string() },
                })),
                AnthropicBlock::ToolResult {
                    tool_use_id,
                    content,
                    is_error,
                } => {
                    let mut result = content.map(AnthropicContent::text).unwrap_or_default();
                    if is_error {
                        result = format!("Error: {result}");
                    }
                    // A tool's answer comes before what the user adds.
                    messages.push(
                        json!({ "role": "tool", "tool_call_id": tool_use_id, "content": result }),
                    );
                }
                AnthropicBlock::Other => {}
            }
        }
        if message.role == "assistant" {
            if text.is_empty() && tool_calls.is_empty() {
                continue;
            }
            let mut out = json!({ "role": "assistant", "content": text.join("") });
            if !tool_calls.is_empty() {
                out["tool_calls"] = Value::Array(tool_calls);
            }
            messages.push(out);
        } else if !parts.is_empty() {
            let content = if parts.iter().all(|p| p["type"] == "text") {
                Value::String(text.join("\n\n"))
            } else {
                Value::Array(parts)
            };
            messages.push(json!({ "role": "user", "content": content }));
        }
    }
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    out.insert("messages".into(), Value::Array(messages));
    if let Some(max) = request.max_tokens {
        out.insert("max_tokens".into(), json!(max));
    }
    insert_some(&mut out, "temperature", request.temperature);
    insert_some(&mut out, "top_p", request.top_p);
    if !request.stop_sequences.is_empty() {
        out.insert("stop".into(), json!(request.stop_sequences));
    }
    let tools: Vec<Value> = request
        .tools
        .into_iter()
        .filter_map(|tool| {
            let schema = tool.input_schema?;
            let mut function = json!({ "name": tool.name, "parameters": schema });
            if let Some(description) = tool.description {
                function["description"] = json!(description);
            }
            Some(json!({ "type": "function", "function": function }))
        })
        .collect();
    let has_tools = !tools.is_empty();
    if has_tools {
        out.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = request.tool_choice.filter(|_| has_tools) {
        let (choice, serial) = match choice {
            AnthropicToolChoice::Auto {
                disable_parallel_tool_use,
            } => (json!("auto"), disable_parallel_tool_use),
            AnthropicToolChoice::Any {
                disable_parallel_tool_use,
            } => (json!("required"), disable_parallel_tool_use),
            AnthropicToolChoice::Tool {
                name,
                disable_parallel_tool_use,
            } => (
                json!({ "type": "function", "function": { "name": name } }),
                disable_parallel_tool_use,
            ),
            AnthropicToolChoice::None => (json!("none"), false),
        };
        out.insert("tool_choice".into(), choice);
        if serial {
            out.insert("parallel_tool_calls".into(), json!(false));
        }
    }
    if request.stream {
        out.insert("stream".into(), json!(true));
        out.insert("stream_options".into(), json!({ "include_usage": true }));
    }
    Ok(Translated {
        body: serde_json::to_vec(&Value::Object(out)).map_err(|e| e.to_string())?,
        include_usage: false,
    })
}
