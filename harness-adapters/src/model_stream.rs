//! Model answers, interpreted once: the Anthropic Messages stream and the
//! OpenAI Chat Completions usage report, typed, and the one way their token
//! counts become a [`Usage`].
//!
//! Three readers share this module: the builtin loop assembles the
//! gateway's Anthropic stream into a message ([`AnthropicMessage`]); the
//! Claude Code adapter reads the same events from the CLI's partial
//! messages; the gateway meters a provider's answer as it streams through
//! ([`UsageMeter`]). Whatever reads the stream, a turn's tokens are counted
//! by the same rules:
//!
//! - Anthropic reports `input_tokens` (uncached), `cache_read_input_tokens`,
//!   `cache_creation_input_tokens` and `output_tokens`; `message_start`
//!   carries the first counts and `message_delta` repeats them as they grow
//!   (cumulative: a count present replaces the one before).
//! - OpenAI reports `prompt_tokens` *including* the cached ones
//!   (`prompt_tokens_details.cached_tokens`) and `completion_tokens`; a
//!   report is cumulative too.

use serde::Deserialize;
use serde_json::Value;

use crate::Usage;

/// A usage report of the Anthropic API (`message_start.message.usage`,
/// `message_delta.usage`, a unary message's `usage`); absent counts are
/// `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct AnthropicUsage {
    /// Input tokens read without a cache.
    #[serde(default)]
    pub input_tokens: Option<u64>,
    /// Output tokens so far.
    #[serde(default)]
    pub output_tokens: Option<u64>,
    /// Input tokens read from the cache.
    #[serde(default)]
    pub cache_read_input_tokens: Option<u64>,
    /// Input tokens written to the cache.
    #[serde(default)]
    pub cache_creation_input_tokens: Option<u64>,
}

impl AnthropicUsage {
    /// Replaces the counts of `usage` this report carries.
    pub fn update(&self, usage: &mut Usage) {
        let set = |field: &mut u64, value: Option<u64>| {
            if let Some(value) = value {
                *field = value;
            }
        };
        set(&mut usage.input_tokens, self.input_tokens);
        set(&mut usage.output_tokens, self.output_tokens);
        set(&mut usage.cache_read_tokens, self.cache_read_input_tokens);
        set(
            &mut usage.cache_write_tokens,
            self.cache_creation_input_tokens,
        );
    }
}

/// The start of an Anthropic message.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MessageStart {
    /// The message id.
    #[serde(default)]
    pub id: Option<String>,
    /// The model that answers (the provider's name for it, which may be
    /// a dated version of the name asked for). Any JSON, so that a name
    /// of an odd type does not cost the event its counts.
    #[serde(default)]
    pub model: Option<Value>,
    /// The first counts.
    #[serde(default)]
    pub usage: AnthropicUsage,
}

/// A content block delta.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BlockDelta {
    /// More text.
    TextDelta {
        /// The text.
        text: String,
    },
    /// More reasoning.
    ThinkingDelta {
        /// The reasoning.
        thinking: String,
    },
    /// The signature of a thinking block.
    SignatureDelta {
        /// The signature.
        signature: String,
    },
    /// More of a tool input's JSON.
    InputJsonDelta {
        /// A fragment of JSON text.
        partial_json: String,
    },
    /// A delta this reader does not use.
    #[serde(other)]
    Other,
}

/// `message_delta.delta`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MessageDeltaBody {
    /// Why the model stopped.
    #[serde(default)]
    pub stop_reason: Option<String>,
}

/// An error reported inside a stream.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamErrorBody {
    /// The error type.
    #[serde(default, rename = "type")]
    pub kind: String,
    /// The message.
    #[serde(default)]
    pub message: String,
}

/// One event of an Anthropic Messages stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AnthropicEvent {
    /// The message begins.
    MessageStart {
        /// Its id and first counts.
        message: MessageStart,
    },
    /// A content block begins (`text`, `thinking`, `tool_use`).
    ContentBlockStart {
        /// The block's index.
        index: usize,
        /// The block as it starts.
        content_block: Value,
    },
    /// More of a block.
    ContentBlockDelta {
        /// The block's index.
        index: usize,
        /// What is new.
        delta: BlockDelta,
    },
    /// A block is complete.
    ContentBlockStop {
        /// The block's index.
        index: usize,
    },
    /// Stop reason and the grown counts.
    MessageDelta {
        /// The stop reason.
        #[serde(default)]
        delta: MessageDeltaBody,
        /// The counts.
        #[serde(default)]
        usage: Option<AnthropicUsage>,
    },
    /// The message is complete.
    MessageStop,
    /// A keep-alive.
    Ping,
    /// The provider failed mid-stream.
    Error {
        /// What failed.
        error: StreamErrorBody,
    },
    /// An event this reader does not use.
    #[serde(other)]
    Other,
}

impl AnthropicEvent {
    /// Reads one event from its JSON text: what
    /// `serde_json::from_str::<AnthropicEvent>` reads, read faster. The
    /// derived reader of an internally tagged enum first copies every event
    /// into a tree of serde's own (it cannot know the variant before it has
    /// seen `type`, which may come last), then reads the variant from that
    /// copy; this reads the event's fields by name in one pass, keeping the
    /// ones a variant needs as borrowed JSON text, and reads only those once
    /// `type` says which. The gateway's meter and the Claude Code adapter
    /// read every event of every answer, a dozen or more a turn, each
    /// beside a harness that wants the CPU.
    ///
    /// Where the event is one the derived reader accepts, the result is the
    /// same (`the_fast_reader_reads_what_the_derived_one_reads`); a field a
    /// variant needs that is missing or of another type is an error here as
    /// there. One leniency: a `null` given for a field the derived reader
    /// defaults when it is missing (`message_delta`'s `delta`) reads as
    /// missing here, where the derived reader refuses the event.
    pub fn from_json(data: &str) -> serde_json::Result<Self> {
        use serde::de::Error as _;
        use serde_json::value::RawValue;

        /// Every field of every variant, unread.
        #[derive(Deserialize)]
        struct Fields<'a> {
            #[serde(rename = "type", borrow)]
            kind: std::borrow::Cow<'a, str>,
            #[serde(default, borrow)]
            message: Option<&'a RawValue>,
            #[serde(default, borrow)]
            index: Option<&'a RawValue>,
            #[serde(default, borrow)]
            content_block: Option<&'a RawValue>,
            #[serde(default, borrow)]
            delta: Option<&'a RawValue>,
            #[serde(default, borrow)]
            usage: Option<&'a RawValue>,
            #[serde(default, borrow)]
            error: Option<&'a RawValue>,
        }
        /// A required field, read.
        fn required<'a, T: Deserialize<'a>>(
            field: Option<&'a RawValue>,
            name: &'static str,
        ) -> serde_json::Result<T> {
            match field {
                Some(raw) => serde_json::from_str(raw.get()),
                None => Err(serde_json::Error::missing_field(name)),
            }
        }
        /// A defaulted field (`#[serde(default)]`), read.
        fn defaulted<'a, T: Deserialize<'a> + Default>(
            field: Option<&'a RawValue>,
        ) -> serde_json::Result<T> {
            field.map_or_else(|| Ok(T::default()), |raw| serde_json::from_str(raw.get()))
        }

        let fields: Fields<'_> = serde_json::from_str(data)?;
        Ok(match fields.kind.as_ref() {
            "message_start" => Self::MessageStart {
                message: required(fields.message, "message")?,
            },
            "content_block_start" => Self::ContentBlockStart {
                index: required(fields.index, "index")?,
                content_block: required(fields.content_block, "content_block")?,
            },
            "content_block_delta" => Self::ContentBlockDelta {
                index: required(fields.index, "index")?,
                delta: BlockDelta::from_json(
                    fields
                        .delta
                        .ok_or_else(|| serde_json::Error::missing_field("delta"))?
                        .get(),
                )?,
            },
            "content_block_stop" => Self::ContentBlockStop {
                index: required(fields.index, "index")?,
            },
            "message_delta" => Self::MessageDelta {
                delta: defaulted(fields.delta)?,
                usage: defaulted(fields.usage)?,
            },
            "message_stop" => Self::MessageStop,
            "ping" => Self::Ping,
            "error" => Self::Error {
                error: required(fields.error, "error")?,
            },
            _ => Self::Other,
        })
    }
}

impl BlockDelta {
    /// Reads a delta from its JSON text in one pass, as
    /// [`AnthropicEvent::from_json`] reads an event.
    pub fn from_json(data: &str) -> serde_json::Result<Self> {
        use serde::de::Error as _;

        #[derive(Deserialize)]
        struct Fields<'a> {
            #[serde(rename = "type", borrow)]
            kind: std::borrow::Cow<'a, str>,
            #[serde(default)]
            text: Option<String>,
            #[serde(default)]
            thinking: Option<String>,
            #[serde(default)]
            signature: Option<String>,
            #[serde(default)]
            partial_json: Option<String>,
        }
        let required = |field: Option<String>, name: &'static str| {
            field.ok_or_else(|| serde_json::Error::missing_field(name))
        };
        let fields: Fields<'_> = serde_json::from_str(data)?;
        Ok(match fields.kind.as_ref() {
            "text_delta" => Self::TextDelta {
                text: required(fields.text, "text")?,
            },
            "thinking_delta" => Self::ThinkingDelta {
                thinking: required(fields.thinking, "thinking")?,
            },
            "signature_delta" => Self::SignatureDelta {
                signature: required(fields.signature, "signature")?,
            },
            "input_json_delta" => Self::InputJsonDelta {
                partial_json: required(fields.partial_json, "partial_json")?,
            },
            _ => Self::Other,
        })
    }
}

/// An OpenAI usage report (a completion's or the last chunk's `usage`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct OpenAiUsage {
    /// Input tokens, cached ones included.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Output tokens.
    #[serde(default)]
    pub completion_tokens: u64,
    /// The cached part of the input.
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

/// `usage.prompt_tokens_details`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct PromptTokensDetails {
    /// Input tokens read from the cache.
    #[serde(default)]
    pub cached_tokens: Option<u64>,
}

impl OpenAiUsage {
    /// The same counts, split as Karta counts them.
    pub fn to_usage(&self) -> Usage {
        let cached = self
            .prompt_tokens_details
            .and_then(|d| d.cached_tokens)
            .unwrap_or(0)
            .min(self.prompt_tokens);
        Usage {
            input_tokens: self.prompt_tokens - cached,
            output_tokens: self.completion_tokens,
            cache_read_tokens: cached,
            cache_write_tokens: 0,
        }
    }
}

/// Anything OpenAI-shaped that may carry a usage report (a chunk, a
/// completion).
#[derive(Debug, Deserialize)]
struct OpenAiUsageCarrier {
    #[serde(default)]
    usage: Option<OpenAiUsage>,
    /// Any JSON, as in [`MessageStart::model`].
    #[serde(default)]
    model: Option<Value>,
}

/// Which wire shape a model answer has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireShape {
    /// Anthropic Messages.
    Anthropic,
    /// OpenAI Chat Completions.
    OpenAi,
}

/// Counts one model answer's tokens as it passes, report by report, and
/// says at each report what it added — so a meter can record usage while a
/// stream is still running and the sum of what it recorded is the answer's
/// usage.
#[derive(Debug, Clone)]
pub struct UsageMeter {
    shape: WireShape,
    so_far: Usage,
    /// The model the answer says answered (its first mention).
    model: Option<String>,
}

impl UsageMeter {
    /// A meter for one answer of `shape`.
    pub fn new(shape: WireShape) -> Self {
        Self {
            shape,
            so_far: Usage::default(),
            model: None,
        }
    }

    /// The model the answer says answered it, once an event (or the
    /// unary body) has named it: Anthropic's `message_start`, any OpenAI
    /// chunk. A provider may answer with another model than the one
    /// asked for (a dated version of it; a fallback it chose), and what
    /// answered is what costs.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    fn saw_model(&mut self, model: Option<&Value>) {
        if self.model.is_none()
            && let Some(model) = model.and_then(Value::as_str).filter(|m| !m.is_empty())
        {
            self.model = Some(model.to_owned());
        }
    }

    /// The answer's usage so far.
    pub fn usage(&self) -> Usage {
        self.so_far
    }

    /// Takes in one stream event's data (a JSON text); returns the tokens it
    /// adds (zero for events without counts, and for data that is not
    /// JSON, such as `[DONE]`).
    pub fn observe(&mut self, data: &str) -> Usage {
        match self.shape {
            WireShape::Anthropic => match AnthropicEvent::from_json(data) {
                Ok(event) => self.observe_anthropic(&event),
                Err(_) => Usage::default(),
            },
            WireShape::OpenAi => self.observe_openai_json(data),
        }
    }

    /// Takes in a whole (unary) answer body.
    pub fn observe_unary(&mut self, body: &[u8]) -> Usage {
        match self.shape {
            WireShape::Anthropic => {
                #[derive(Deserialize)]
                struct Message {
                    #[serde(default)]
                    usage: AnthropicUsage,
                    #[serde(default)]
                    model: Option<Value>,
                }
                match serde_json::from_slice::<Message>(body) {
                    Ok(message) => {
                        self.saw_model(message.model.as_ref());
                        self.report(|u| message.usage.update(u))
                    }
                    Err(_) => Usage::default(),
                }
            }
            WireShape::OpenAi => match std::str::from_utf8(body) {
                Ok(text) => self.observe_openai_json(text),
                Err(_) => Usage::default(),
            },
        }
    }

    /// Takes in an Anthropic event.
    pub fn observe_anthropic(&mut self, event: &AnthropicEvent) -> Usage {
        match event {
            AnthropicEvent::MessageStart { message } => {
                self.saw_model(message.model.as_ref());
                self.report(|u| message.usage.update(u))
            }
            AnthropicEvent::MessageDelta {
                usage: Some(usage), ..
            } => self.report(|u| usage.update(u)),
            _ => Usage::default(),
        }
    }

    fn observe_openai_json(&mut self, data: &str) -> Usage {
        match serde_json::from_str::<OpenAiUsageCarrier>(data) {
            Ok(OpenAiUsageCarrier { usage, model }) => {
                self.saw_model(model.as_ref());
                match usage {
                    Some(usage) => {
                        let total = usage.to_usage();
                        self.report(|u| *u = total)
                    }
                    None => Usage::default(),
                }
            }
            Err(_) => Usage::default(),
        }
    }

    /// Applies a cumulative report; returns what it added. A count that
    /// went down (which no provider should send) adds nothing.
    fn report(&mut self, update: impl FnOnce(&mut Usage)) -> Usage {
        let before = self.so_far;
        let mut after = before;
        update(&mut after);
        let grow = |new: u64, old: u64| new.max(old);
        self.so_far = Usage {
            input_tokens: grow(after.input_tokens, before.input_tokens),
            output_tokens: grow(after.output_tokens, before.output_tokens),
            cache_read_tokens: grow(after.cache_read_tokens, before.cache_read_tokens),
            cache_write_tokens: grow(after.cache_write_tokens, before.cache_write_tokens),
        };
        Usage {
            input_tokens: self.so_far.input_tokens - before.input_tokens,
            output_tokens: self.so_far.output_tokens - before.output_tokens,
            cache_read_tokens: self.so_far.cache_read_tokens - before.cache_read_tokens,
            cache_write_tokens: self.so_far.cache_write_tokens - before.cache_write_tokens,
        }
    }
}

/// Text or reasoning that a stream event added to a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamDelta {
    /// Text of content block `index`.
    Text {
        /// The block.
        index: usize,
        /// The new text.
        text: String,
    },
    /// Reasoning of content block `index`.
    Reasoning {
        /// The block.
        index: usize,
        /// The new reasoning.
        text: String,
    },
}

/// Why a model stream could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelStreamError {
    /// The provider reported an error inside the stream.
    #[error("the model's stream reported an error: {0}")]
    Reported(String),
    /// A tool's input is not JSON.
    #[error("the model sent tool input that is not JSON ({error}): {input}")]
    ToolInput {
        /// The parser's complaint.
        error: String,
        /// The input text.
        input: String,
    },
}

/// An Anthropic message assembled from its stream: its content blocks (text,
/// thinking with signature, tool uses with parsed input), stop reason and
/// usage.
#[derive(Debug, Default)]
pub struct AnthropicMessage {
    /// The message id, from `message_start`.
    pub id: Option<String>,
    blocks: Vec<Value>,
    /// Partial JSON of tool inputs, by block index.
    partial_inputs: Vec<String>,
    stop_reason: Option<String>,
    usage: Option<UsageMeter>,
    stopped: bool,
}

impl AnthropicMessage {
    /// Folds one event in; returns the text or reasoning it added.
    pub fn apply(
        &mut self,
        event: AnthropicEvent,
    ) -> Result<Option<StreamDelta>, ModelStreamError> {
        self.usage
            .get_or_insert_with(|| UsageMeter::new(WireShape::Anthropic))
            .observe_anthropic(&event);
        match event {
            AnthropicEvent::MessageStart { message } => self.id = message.id,
            AnthropicEvent::ContentBlockStart {
                index,
                content_block,
            } => {
                if self.blocks.len() <= index {
                    self.blocks.resize(index + 1, Value::Null);
                    self.partial_inputs.resize(index + 1, String::new());
                }
                self.blocks[index] = content_block;
            }
            AnthropicEvent::ContentBlockDelta { index, delta } => {
                let Some(block) = self.blocks.get_mut(index) else {
                    return Ok(None);
                };
                match delta {
                    BlockDelta::TextDelta { text } => {
                        append(block, "text", &text);
                        return Ok(Some(StreamDelta::Text { index, text }));
                    }
                    BlockDelta::ThinkingDelta { thinking } => {
                        append(block, "thinking", &thinking);
                        return Ok(Some(StreamDelta::Reasoning {
                            index,
                            text: thinking,
                        }));
                    }
                    BlockDelta::SignatureDelta { signature } => {
                        block["signature"] = Value::String(signature);
                    }
                    BlockDelta::InputJsonDelta { partial_json } => {
                        if let Some(partial) = self.partial_inputs.get_mut(index) {
                            partial.push_str(&partial_json);
                        }
                    }
                    BlockDelta::Other => {}
                }
            }
            AnthropicEvent::ContentBlockStop { index } => {
                let partial = self.partial_inputs.get(index).map_or("", String::as_str);
                if let Some(block) = self.blocks.get_mut(index)
                    && block["type"] == "tool_use"
                    && !partial.is_empty()
                {
                    block["input"] =
                        serde_json::from_str(partial).map_err(|e| ModelStreamError::ToolInput {
                            error: e.to_string(),
                            input: partial.to_owned(),
                        })?;
                }
            }
            AnthropicEvent::MessageDelta { delta, .. } => {
                if delta.stop_reason.is_some() {
                    self.stop_reason = delta.stop_reason;
                }
            }
            AnthropicEvent::MessageStop => self.stopped = true,
            AnthropicEvent::Error { error } => {
                let message = if error.message.is_empty() {
                    error.kind
                } else {
                    error.message
                };
                return Err(ModelStreamError::Reported(message));
            }
            AnthropicEvent::Ping | AnthropicEvent::Other => {}
        }
        Ok(None)
    }

    /// Whether `message_stop` arrived.
    pub fn is_complete(&self) -> bool {
        self.stopped
    }

    /// The message's usage so far.
    pub fn usage(&self) -> Usage {
        self.usage
            .as_ref()
            .map(UsageMeter::usage)
            .unwrap_or_default()
    }

    /// Why the model stopped (`end_turn` when it did not say).
    pub fn stop_reason(&self) -> &str {
        self.stop_reason.as_deref().unwrap_or("end_turn")
    }

    /// The content blocks, in order.
    pub fn content(&self) -> Vec<Value> {
        self.blocks
            .iter()
            .filter(|b| !b.is_null())
            .cloned()
            .collect()
    }
}

/// Appends `text` to the string field `key` of a block.
fn append(block: &mut Value, key: &str, text: &str) {
    match block.get_mut(key) {
        Some(Value::String(existing)) => existing.push_str(text),
        _ => block[key] = Value::String(text.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(value: Value) -> AnthropicEvent {
        serde_json::from_value(value).expect("an Anthropic event")
    }

    /// `AnthropicEvent::from_json` reads every event the derived reader
    /// reads as it does, and refuses what it refuses.
    #[test]
    fn the_fast_reader_reads_what_the_derived_one_reads() {
        let accepted = [
            r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-x","content":[],"stop_reason":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":3,"cache_read_input_tokens":0,"output_tokens":1}}}"#,
            r#"{"message":{"model":7,"usage":{}},"type":"message_start"}"#,
            r#"{"type":"message_start","message":{}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"t","name":"x","input":{}}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello, \"w\u00f6rld\" \ud83d\ude00"}}"#,
            r#"{"delta":{"text":"late type","type":"text_delta"},"index":2,"type":"content_block_delta"}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hmm"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"sig"}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a\": 1"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"citations_delta","citation":{}}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}"#,
            r#"{"type":"message_delta","usage":null}"#,
            r#"{"type":"message_delta"}"#,
            r#"{"type":"message_stop"}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"error","error":{"type":"overloaded_error","message":"busy"}}"#,
            r#"{"type":"something_new","index":"not a number","delta":[1,2]}"#,
        ];
        for data in accepted {
            let derived: AnthropicEvent = serde_json::from_str(data).expect(data);
            let fast = AnthropicEvent::from_json(data).expect(data);
            assert_eq!(format!("{fast:?}"), format!("{derived:?}"), "{data}");
        }
        let refused = [
            "not json",
            "[DONE]",
            r#"{"no_type":1}"#,
            r#"{"type":"message_start"}"#,
            r#"{"type":"message_start","message":{"usage":{"input_tokens":-1}}}"#,
            r#"{"type":"content_block_start","content_block":{}}"#,
            r#"{"type":"content_block_delta","index":0}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":5}}"#,
            r#"{"type":"content_block_delta","index":-1,"delta":{"type":"text_delta","text":"x"}}"#,
            r#"{"type":"content_block_stop","index":"0"}"#,
            r#"{"type":"message_delta","usage":{"output_tokens":"many"}}"#,
            r#"{"type":"error"}"#,
            r#"{"type":"message_stop","type":"ping"}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a"#,
        ];
        // The leniency the docs name.
        let lenient = r#"{"type":"message_delta","delta":null,"usage":{"output_tokens":2}}"#;
        assert!(serde_json::from_str::<AnthropicEvent>(lenient).is_err());
        let AnthropicEvent::MessageDelta { delta, usage } =
            AnthropicEvent::from_json(lenient).expect("read")
        else {
            panic!("a message delta");
        };
        assert_eq!(delta.stop_reason, None);
        assert_eq!(usage.and_then(|u| u.output_tokens), Some(2));
        for data in refused {
            assert!(
                serde_json::from_str::<AnthropicEvent>(data).is_err(),
                "the derived reader refuses {data}"
            );
            assert!(AnthropicEvent::from_json(data).is_err(), "{data}");
        }
    }

    #[test]
    fn assembles_a_message_with_text_and_a_tool_call() {
        let mut message = AnthropicMessage::default();
        let events = [
            json!({"type": "message_start", "message": {"id": "m1", "usage": {"input_tokens": 10, "cache_read_input_tokens": 4, "output_tokens": 1}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}}),
            json!({"type": "ping"}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "t1", "name": "calc", "input": {}}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"x\":"}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "1}"}}),
            json!({"type": "content_block_stop", "index": 1}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 12}}),
            json!({"type": "message_stop"}),
        ];
        let mut deltas = Vec::new();
        for e in events {
            if let Some(delta) = message.apply(event(e)).expect("applies") {
                deltas.push(delta);
            }
        }
        assert_eq!(
            deltas,
            [
                StreamDelta::Text {
                    index: 0,
                    text: "Hel".into()
                },
                StreamDelta::Text {
                    index: 0,
                    text: "lo".into()
                }
            ]
        );
        assert!(message.is_complete());
        assert_eq!(message.id.as_deref(), Some("m1"));
        assert_eq!(message.stop_reason(), "tool_use");
        assert_eq!(
            message.content(),
            [
                json!({"type": "text", "text": "Hello"}),
                json!({"type": "tool_use", "id": "t1", "name": "calc", "input": {"x": 1}}),
            ]
        );
        assert_eq!(
            message.usage(),
            Usage {
                input_tokens: 10,
                output_tokens: 12,
                cache_read_tokens: 4,
                cache_write_tokens: 0,
            }
        );
    }

    #[test]
    fn bad_tool_input_and_stream_errors_are_errors() {
        let mut message = AnthropicMessage::default();
        message
            .apply(event(json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t", "name": "x"}})))
            .expect("start");
        message
            .apply(event(json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{oops"}})))
            .expect("delta");
        let error = message
            .apply(event(json!({"type": "content_block_stop", "index": 0})))
            .expect_err("not JSON");
        assert!(error.to_string().contains("not JSON"), "{error}");
        let error = message
            .apply(event(
                json!({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}),
            ))
            .expect_err("reported");
        assert_eq!(error, ModelStreamError::Reported("busy".into()));
    }

    #[test]
    fn the_meter_counts_each_token_once_as_reports_grow() {
        let mut meter = UsageMeter::new(WireShape::Anthropic);
        let added = [
            r#"{"type":"message_start","message":{"usage":{"input_tokens":10,"cache_creation_input_tokens":3,"output_tokens":1}}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}}"#,
            r#"{"type":"message_delta","delta":{},"usage":{"output_tokens":5}}"#,
            r#"{"type":"message_delta","delta":{},"usage":{"output_tokens":9,"input_tokens":10}}"#,
            "not json",
        ]
        .map(|data| meter.observe(data));
        let mut sum = Usage::default();
        for usage in added {
            sum.add(usage);
        }
        assert_eq!(sum, meter.usage());
        assert_eq!(
            sum,
            Usage {
                input_tokens: 10,
                output_tokens: 9,
                cache_read_tokens: 0,
                cache_write_tokens: 3,
            }
        );

        let mut openai = UsageMeter::new(WireShape::OpenAi);
        assert!(
            openai
                .observe(r#"{"choices":[{"delta":{"content":"hi"}}]}"#)
                .is_zero()
        );
        assert!(openai.observe("[DONE]").is_zero());
        let usage = openai.observe(
            r#"{"choices":[],"usage":{"prompt_tokens":20,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":15}}}"#,
        );
        assert_eq!(
            usage,
            Usage {
                input_tokens: 5,
                output_tokens: 4,
                cache_read_tokens: 15,
                cache_write_tokens: 0,
            }
        );
        assert_eq!(usage.total(), 24);
        let unary = UsageMeter::new(WireShape::Anthropic).observe_unary(
            br#"{"type":"message","usage":{"input_tokens":3,"output_tokens":2,"cache_read_input_tokens":1}}"#,
        );
        assert_eq!(unary.total(), 6);
    }

    #[test]
    fn the_meter_keeps_the_model_the_answer_first_names() {
        let mut anthropic = UsageMeter::new(WireShape::Anthropic);
        assert_eq!(anthropic.model(), None);
        anthropic.observe(
            r#"{"type":"message_start","message":{"model":"claude-opus-4-20250514","usage":{"input_tokens":1}}}"#,
        );
        anthropic.observe(r#"{"type":"message_delta","delta":{},"usage":{"output_tokens":2}}"#);
        assert_eq!(anthropic.model(), Some("claude-opus-4-20250514"));

        let mut openai = UsageMeter::new(WireShape::OpenAi);
        openai.observe(r#"{"model":"","choices":[]}"#);
        assert_eq!(openai.model(), None, "an empty name names nothing");
        let counted = openai.observe(r#"{"model":7,"choices":[],"usage":{"prompt_tokens":2}}"#);
        assert_eq!(counted.input_tokens, 2, "an odd name costs no counts");
        assert_eq!(openai.model(), None);
        openai.observe(r#"{"model":"gpt-4o-2024-08-06","choices":[{"delta":{"content":"hi"}}]}"#);
        openai.observe(r#"{"model":"gpt-4o-mini","choices":[]}"#);
        assert_eq!(openai.model(), Some("gpt-4o-2024-08-06"), "the first name");

        let mut unary = UsageMeter::new(WireShape::Anthropic);
        unary.observe_unary(br#"{"model":"claude-3-haiku","usage":{"input_tokens":3}}"#);
        assert_eq!(unary.model(), Some("claude-3-haiku"));
    }
}
