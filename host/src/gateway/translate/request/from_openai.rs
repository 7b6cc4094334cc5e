//! An OpenAI Chat Completions request (OpenCode's) for Anthropic.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{OpenAiToolCall, Translated, insert_some, tool_input};

#[derive(Deserialize)]
struct OpenAiRequest {
    #[serde(default)]
    messages: Vec<OpenAiMessage>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    tools: Vec<OpenAiTool>,
    #[serde(default)]
    tool_choice: Option<OpenAiToolChoice>,
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
enum OpenAiMessage {
    System {
        content: OpenAiContent,
    },
    Developer {
        content: OpenAiContent,
    },
    User {
        content: OpenAiContent,
    },
    Assistant {
        #[serde(default)]
        content: Option<OpenAiContent>,
        #[serde(default)]
        tool_calls: Vec<OpenAiToolCall>,
    },
    Tool {
        tool_call_id: String,
        #[serde(default)]
        content: Option<OpenAiContent>,
    },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OpenAiContent {
    Text(String),
    Parts(Vec<OpenAiPart>),
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum OpenAiPart {
    Text {
        text: String,
    },
    ImageUrl {
        image_url: ImageUrl,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct ImageUrl {
    url: String,
}

#[derive(Deserialize)]
struct OpenAiTool {
    #[serde(default)]
    function: Option<FunctionDef>,
}

#[derive(Deserialize)]
struct FunctionDef {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OpenAiToolChoice {
    Mode(String),
    Function { function: NamedFunction },
}

#[derive(Deserialize)]
struct NamedFunction {
    name: String,
}

impl OpenAiContent {
    /// As Anthropic content blocks.
    fn blocks(self) -> Vec<Value> {
        match self {
            Self::Text(text) if text.is_empty() => Vec::new(),
            Self::Text(text) => vec![json!({ "type": "text", "text": text })],
            Self::Parts(parts) => parts
                .into_iter()
                .filter_map(|part| match part {
                    OpenAiPart::Text { text } => Some(json!({ "type": "text", "text": text })),
                    OpenAiPart::ImageUrl { image_url } => Some(image_block(&image_url.url)),
                    OpenAiPart::Other => None,
                })
                .collect(),
        }
    }

    fn text(self) -> String {
        self.blocks()
            .iter()
            .filter_map(|b| b["text"].as_str().map(str::to_owned))
            .collect::<Vec<_>>()
            .join("\n\n")
    }
}

/// An image part's URL (a `data:` URL or a link) as an Anthropic image.
fn image_block(url: &str) -> Value {
    if let Some(rest) = url.strip_prefix("data:")
        && let Some((media_type, data)) = rest.split_once(";base64,")
    {
        return json!({ "type": "image", "source": {
            "type": "base64", "media_type": media_type, "data": data,
        }});
    }
    json!({ "type": "image", "source": { "type": "url", "url": url } })
}

/// An OpenAI Chat Completions request as an Anthropic Messages one for
/// `model`.
pub(crate) fn openai_to_anthropic(body: &[u8], model: &str) -> Result<Translated, String> {
    let request: OpenAiRequest = serde_json::from_slice(body)
        .map_err(|e| format!("not an OpenAI Chat Completions request: {e}"))?;
    let mut system = Vec::new();
    // (role, content blocks); consecutive turns of one role are merged.
    let mut messages: Vec<(&'static str, Vec<Value>)> = Vec::new();
    let mut push = |role: &'static str, blocks: Vec<Value>| {
        if blocks.is_empty() {
            return;
        }
        match messages.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(blocks),
            _ => messages.push((role, blocks)),
        }
    };
    for message in request.messages {
        match message {
            OpenAiMessage::System { content } | OpenAiMessage::Developer { content } => {
                system.push(content.text());
            }
            OpenAiMessage::User { content } => push("user", content.blocks()),
            OpenAiMessage::Assistant {
                content,
                tool_calls,
            } => {
                let mut blocks = content.map(OpenAiContent::blocks).unwrap_or_default();
                for call in tool_calls {
                    blocks.push(json!({
                        "type": "tool_use", "id": call.id, "name": call.function.name,
                        "input": tool_input(&call.function.arguments),
                    }));
                }
                push("assistant", blocks);
            }
            OpenAiMessage::Tool {
                tool_call_id,
                content,
            } => push(
                "user",
                vec![json!({
                    "type": "tool_result", "tool_use_id": tool_call_id,
                    "content": content.map(OpenAiContent::text).unwrap_or_default(),
                })],
            ),
        }
    }
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    if !system.is_empty() {
        out.insert("system".into(), json!(system.join("\n\n")));
    }
    let messages = messages
        .into_iter()
        .map(|(role, content)| json!({ "role": role, "content": content }))
        .collect();
    out.insert("messages".into(), Value::Array(messages));
    let max_tokens = request
        .max_completion_tokens
        .or(request.max_tokens)
        .unwrap_or(crate::gateway::DEFAULT_MAX_TOKENS);
    out.insert("max_tokens".into(), json!(max_tokens));
    insert_some(&mut out, "temperature", request.temperature);
    insert_some(&mut out, "top_p", request.top_p);
    match request.stop {
        Some(Stop::One(stop)) => {
            out.insert("stop_sequences".into(), json!([stop]));
        }
        Some(Stop::Many(stops)) if !stops.is_empty() => {
            out.insert("stop_sequences".into(), json!(stops));
        }
        _ => {}
    }
    let tools: Vec<Value> = request
        .tools
        .into_iter()
        .filter_map(|tool| tool.function)
        .map(|f| {
            let mut tool = json!({
                "name": f.name,
                "input_schema": f.parameters.unwrap_or_else(|| json!({ "type": "object" })),
            });
            if let Some(description) = f.description {
                tool["description"] = json!(description);
            }
            tool
        })
        .collect();
    let has_tools = !tools.is_empty();
    if has_tools {
        out.insert("tools".into(), Value::Array(tools));
    }
    let serial = request.parallel_tool_calls == Some(false);
    let choice = match request.tool_choice {
        Some(OpenAiToolChoice::Mode(mode)) => match mode.as_str() {
            "none" => Some(json!({ "type": "none" })),
            "required" => Some(json!({ "type": "any" })),
            _ => Some(json!({ "type": "auto" })),
        },
        Some(OpenAiToolChoice::Function { function }) => {
            Some(json!({ "type": "tool", "name": function.name }))
        }
        None if serial => Some(json!({ "type": "auto" })),
        None => None,
    };
    if let Some(mut choice) = choice.filter(|_| has_tools) {
        if serial && choice["type"] != "none" {
            choice["disable_parallel_tool_use"] = json!(true);
        }
        out.insert("tool_choice".into(), choice);
    }
    if request.stream {
        out.insert("stream".into(), json!(true));
    }
    Ok(Translated {
        body: serde_json::to_vec(&Value::Object(out)).map_err(|e| e.to_string())?,
        include_usage: request.stream_options.is_some_and(|o| o.include_usage),
    })
}
