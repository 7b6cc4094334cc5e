//! How the offline model reads a request's body: into structs that borrow
//! its strings and skip every field the model does not look at.
//!
//! A request carries the whole conversation (~100 KiB for a warm Claude
//! Code turn). Building a `serde_json::Value` of it and writing its
//! messages out again to count them cost about a millisecond of CPU a call
//! (the bench's provider is this model: half of the overhead bench's CPU
//! went there). Here the body is read once into the few fields the model
//! uses, its messages are kept as raw JSON, read a second time into their
//! fields, and measured by transcoding them into a byte counter — the
//! length `Value::to_string` would have given, without the text.
//!
//! Every field is lenient, as indexing a `Value` was: a field of another
//! JSON type than the API gives it reads as absent, so the offline model
//! answers any JSON. One thing it refuses: an object with a field named
//! twice (serde's derived readers refuse it, where a `Value` kept the last).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::{Conversation, is_reminder};
use crate::gateway::UpstreamKind;

/// What the offline model reads of a request.
#[derive(Debug, Default)]
pub(crate) struct Request {
    pub(crate) conversation: Conversation,
    /// The model the request names.
    pub(crate) model: Option<String>,
    /// OpenAI's `stream_options.include_usage`.
    pub(crate) include_usage: bool,
}

/// Reads a request body of either wire shape. The error says why a body
/// could not be read (a field named twice).
pub(crate) fn read(kind: UpstreamKind, body: &[u8]) -> Result<Request, String> {
    match kind {
        UpstreamKind::Anthropic => anthropic(body),
        UpstreamKind::Openai => openai(body),
    }
    .map_err(|e| format!("the offline model cannot read this request: {e}"))
}

// ---- the lenient readers ----------------------------------------------------

/// The visitor methods for the JSON values a lenient reader does not take:
/// each reads as the reader's default (lists and objects read through).
/// `numbers` covers null too.
macro_rules! otherwise_default {
    (scalars) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        otherwise_default!(numbers);
    };
    (numbers) => {
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
    };
    (str) => {
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
    };
    (seq) => {
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(Default::default())
        }
    };
    (map) => {
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(Default::default())
        }
    };
}

/// A string, borrowed from the body when it has no escapes; any other JSON
/// value reads as absent.
#[derive(Debug, Default)]
struct Text<'a>(Option<Cow<'a, str>>);

impl Text<'_> {
    fn get(&self) -> Option<&str> {
        self.0.as_deref()
    }

    fn is(&self, expected: &str) -> bool {
        self.get() == Some(expected)
    }

    fn owned(&self) -> String {
        self.get().unwrap_or_default().to_owned()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for TextVisitor<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Owned(v))))
            }
            otherwise_default!(scalars);
            otherwise_default!(seq);
            otherwise_default!(map);
        }
        deserializer.deserialize_any(TextVisitor(PhantomData))
    }
}

/// `true` or `false`; any other JSON value reads as `false`.
#[derive(Debug, Default)]
struct Flag(bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FlagVisitor;
        impl<'de> Visitor<'de> for FlagVisitor {
            type Value = Flag;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Flag(v))
            }
            otherwise_default!(numbers);
            otherwise_default!(str);
            otherwise_default!(seq);
            otherwise_default!(map);
        }
        deserializer.deserialize_any(FlagVisitor)
    }
}

/// A list; any other JSON value reads as an empty one.
#[derive(Debug)]
struct List<T>(Vec<T>);

impl<T> Default for List<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for List<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for ListVisitor<T> {
            type Value = List<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                items(seq).map(List)
            }
            otherwise_default!(scalars);
            otherwise_default!(str);
            otherwise_default!(map);
        }
        deserializer.deserialize_any(ListVisitor(PhantomData))
    }
}

/// An object read as `T` (a derived reader whose fields all default); any
/// other JSON value reads as `T::default()`.
#[derive(Debug, Default)]
struct Object<T>(T);

impl<'de, T: Deserialize<'de> + Default> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de> + Default> Visitor<'de> for ObjectVisitor<T> {
            type Value = Object<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Object)
            }
            otherwise_default!(scalars);
            otherwise_default!(str);
            otherwise_default!(seq);
        }
        deserializer.deserialize_any(ObjectVisitor(PhantomData))
    }
}

/// A message's `content` (or Anthropic's `system`): a string, or a list of
/// blocks; anything else reads as neither.
#[derive(Debug, Default)]
enum Content<'a> {
    Text(Cow<'a, str>),
    Blocks(Vec<Object<Block<'a>>>),
    #[default]
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ContentVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for ContentVisitor<'a> {
            type Value = Content<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Owned(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                items(seq).map(Content::Blocks)
            }
            otherwise_default!(scalars);
            otherwise_default!(map);
        }
        deserializer.deserialize_any(ContentVisitor(PhantomData))
    }
}

/// A list's items.
fn items<'de, T: Deserialize<'de>, A: SeqAccess<'de>>(mut seq: A) -> Result<Vec<T>, A::Error> {
    let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
    while let Some(item) = seq.next_element()? {
        items.push(item);
    }
    Ok(items)
}

impl Content<'_> {
    /// The blocks, when the content is a list of them.
    fn blocks(&self) -> &[Object<Block<'_>>] {
        match self {
            Content::Blocks(blocks) => blocks,
            _ => &[],
        }
    }

    /// Its text blocks' texts, or the string itself.
    fn texts(&self) -> impl Iterator<Item = &str> {
        self.blocks()
            .iter()
            .filter(|b| b.0.kind.is("text"))
            .filter_map(|b| b.0.text.get())
    }

    /// Its text: the string itself, or its text blocks that are not a
    /// harness's reminders, one a line.
    fn text(&self) -> String {
        match self {
            Content::Text(text) => text.clone().into_owned(),
            Content::Blocks(_) => self
                .texts()
                .filter(|t| !is_reminder(t))
                .collect::<Vec<_>>()
                .join("\n"),
            Content::Other => String::new(),
        }
    }

    /// What the user says in it: its last text block that is not a
    /// harness's reminder. (A harness may merge a message whose turn failed
    /// with the next one, as separate blocks; the newest block is what the
    /// user says now.)
    fn user_text(&self) -> String {
        match self {
            Content::Blocks(_) => self
                .texts()
                .filter(|t| !is_reminder(t))
                .last()
                .unwrap_or_default()
                .to_owned(),
            other => other.text(),
        }
    }
}

/// A content block, of either shape: the fields the offline model reads.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Block<'a> {
    #[serde(borrow, rename = "type")]
    kind: Text<'a>,
    #[serde(borrow)]
    text: Text<'a>,
    /// A `tool_use`'s id.
    #[serde(borrow)]
    id: Text<'a>,
    /// A `tool_use`'s tool.
    #[serde(borrow)]
    name: Text<'a>,
    /// A `tool_result`'s call.
    #[serde(borrow)]
    tool_use_id: Text<'a>,
    /// A `tool_result`'s output.
    #[serde(borrow)]
    content: Content<'a>,
    is_error: Flag,
}

/// Something with a name: a tool, a function.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Named<'a> {
    #[serde(borrow)]
    name: Text<'a>,
}

/// How long a JSON text is written compactly — what `Value::to_string`
/// gives for it — measured without writing it.
fn compact_len(raw: &RawValue) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    let mut from = serde_json::Deserializer::from_str(raw.get());
    let mut to = serde_json::Serializer::new(&mut counter);
    match serde_transcode::transcode(&mut from, &mut to) {
        Ok(()) => counter.0,
        Err(_) => raw.get().len(),
    }
}

/// A request's `messages` (kept raw: read into `T`s and measured).
fn messages<'a, T: Deserialize<'a> + Default>(
    raw: Option<&'a RawValue>,
) -> Result<(Vec<T>, usize), serde_json::Error> {
    match raw {
        Some(raw) => {
            let List(messages) = serde_json::from_str::<List<Object<T>>>(raw.get())?;
            Ok((
                messages.into_iter().map(|m| m.0).collect(),
                compact_len(raw),
            ))
        }
        // `Value::Null.to_string()`, as before.
        None => Ok((Vec::new(), "null".len())),
    }
}

// ---- Anthropic Messages -----------------------------------------------------

#[derive(Default, Deserialize)]
#[serde(default)]
struct AnthropicRequest<'a> {
    #[serde(borrow)]
    model: Text<'a>,
    #[serde(borrow)]
    system: Option<&'a RawValue>,
    #[serde(borrow)]
    messages: Option<&'a RawValue>,
    #[serde(borrow)]
    tools: List<Object<Named<'a>>>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct AnthropicMessage<'a> {
    #[serde(borrow)]
    role: Text<'a>,
    #[serde(borrow)]
    content: Content<'a>,
}

fn anthropic(body: &[u8]) -> Result<Request, serde_json::Error> {
    let Object(request) = serde_json::from_slice::<Object<AnthropicRequest>>(body)?;
    let (messages, request_chars) = messages::<AnthropicMessage>(request.messages)?;
    let (system, system_chars) = match request.system {
        Some(raw) => (
            serde_json::from_str::<Content>(raw.get())?,
            compact_len(raw),
        ),
        None => (Content::Other, 0),
    };
    let mut conversation = Conversation {
        system: match &system {
            Content::Text(text) => text.clone().into_owned(),
            // Every block's text, whatever its type.
            blocks => blocks
                .blocks()
                .iter()
                .filter_map(|b| b.0.text.get())
                .collect::<Vec<_>>()
                .join("\n"),
        },
        request_chars,
        system_chars,
        follow_up: messages.iter().any(|m| m.role.is("assistant")),
        tool_names: request
            .tools
            .0
            .iter()
            .filter_map(|t| t.0.name.get().map(str::to_owned))
            .collect(),
        ..Conversation::default()
    };
    // tool_use id -> tool name, to name results.
    let mut names = HashMap::new();
    for message in &messages {
        // Claude Code may put `role: "system"` entries after the first user
        // message; they are not the user's words.
        match message.role.get() {
            Some("assistant") => {
                for block in message.content.blocks() {
                    if block.0.kind.is("tool_use") {
                        names.insert(block.0.id.owned(), block.0.name.owned());
                    }
                }
            }
            Some("user") => {
                let results: Vec<&Block> = message
                    .content
                    .blocks()
                    .iter()
                    .map(|b| &b.0)
                    .filter(|b| b.kind.is("tool_result"))
                    .collect();
                if results.is_empty() {
                    let text = message.content.user_text();
                    // A message of reminders only is the harness talking.
                    let reminders_only =
                        text.trim().is_empty() && matches!(message.content, Content::Blocks(_));
                    if !reminders_only {
                        conversation.user_texts.push(text);
                        conversation.tool_results.clear();
                    }
                } else {
                    for result in results {
                        let id = result.tool_use_id.get().unwrap_or_default();
                        let name = names.get(id).cloned().unwrap_or_else(|| id.to_owned());
                        conversation.tool_results.push((
                            name,
                            result.content.text(),
                            result.is_error.0,
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(Request {
        conversation,
        model: request.model.get().map(str::to_owned),
        include_usage: false,
    })
}

// ---- OpenAI Chat Completions ------------------------------------------------

#[derive(Default, Deserialize)]
#[serde(default)]
struct OpenaiRequest<'a> {
    #[serde(borrow)]
    model: Text<'a>,
    #[serde(borrow)]
    messages: Option<&'a RawValue>,
    #[serde(borrow)]
    tools: List<Object<OpenaiTool<'a>>>,
    stream_options: Object<StreamOptions>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct OpenaiTool<'a> {
    #[serde(borrow)]
    function: Object<Named<'a>>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct StreamOptions {
    include_usage: Flag,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct OpenaiMessage<'a> {
    #[serde(borrow)]
    role: Text<'a>,
    #[serde(borrow)]
    content: Content<'a>,
    #[serde(borrow)]
    tool_calls: List<Object<OpenaiCall<'a>>>,
    #[serde(borrow)]
    tool_call_id: Text<'a>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct OpenaiCall<'a> {
    #[serde(borrow)]
    id: Text<'a>,
    #[serde(borrow)]
    function: Object<Named<'a>>,
}

fn openai(body: &[u8]) -> Result<Request, serde_json::Error> {
    let Object(request) = serde_json::from_slice::<Object<OpenaiRequest>>(body)?;
    let (messages, request_chars) = messages::<OpenaiMessage>(request.messages)?;
    let mut conversation = Conversation {
        request_chars,
        follow_up: messages.iter().any(|m| m.role.is("assistant")),
        tool_names: request
            .tools
            .0
            .iter()
            .filter_map(|t| t.0.function.0.name.get().map(str::to_owned))
            .collect(),
        ..Conversation::default()
    };
    let mut names = HashMap::new();
    for message in &messages {
        // A part's text, whatever its type.
        let text = match &message.content {
            Content::Text(text) => text.clone().into_owned(),
            blocks => blocks
                .blocks()
                .iter()
                .filter_map(|b| b.0.text.get())
                .filter(|t| !is_reminder(t))
                .collect::<Vec<_>>()
                .join("\n"),
        };
        match message.role.get() {
            Some("system" | "developer") => {
                if !conversation.system.is_empty() {
                    conversation.system.push('\n');
                }
                conversation.system.push_str(&text);
            }
            Some("user") => {
                conversation.user_texts.push(text);
                conversation.tool_results.clear();
            }
            Some("assistant") => {
                for call in &message.tool_calls.0 {
                    names.insert(call.0.id.owned(), call.0.function.0.name.owned());
                }
            }
            Some("tool") => {
                let id = message.tool_call_id.get().unwrap_or_default();
                let name = names.get(id).cloned().unwrap_or_else(|| id.to_owned());
                conversation.tool_results.push((name, text, false));
            }
            _ => {}
        }
    }
    // The system messages are the cached part of the prompt.
    conversation.system_chars = conversation.system.len();
    conversation.request_chars = conversation
        .request_chars
        .saturating_sub(conversation.system_chars);
    Ok(Request {
        conversation,
        model: request.model.get().map(str::to_owned),
        include_usage: request.stream_options.0.include_usage.0,
    })
}
