//! The offline model: a deterministic stand-in for a real model, for tests,
//! demos and CI. **A development tool — never configure it for production.**
//!
//! It reads the last user message and follows directives, one per line:
//!
//! | directive | effect |
//! | --- | --- |
//! | `/tool NAME {json}` | call tool `NAME` with that input (once: not after its result came back) |
//! | `/think TEXT` | emit `TEXT` as reasoning first |
//! | `/say TEXT` | answer exactly `TEXT` (after any tools) |
//! | `/fail STATUS [message]` | answer HTTP `STATUS` with an error body |
//! | `/system` | answer with the system prompt it was given |
//!
//! Without directives it answers `You said: "<text>".`, followed by
//! `Earlier you said: "<text>".` for the previous user message if there is
//! one — so a test can see that a second turn remembers the first. After tool
//! results it answers `Tool NAME returned: <output>` (or `failed: …`) per
//! result, then the `/say` text if given.
//!
//! Usage is counted like a provider would, deterministically: a token per
//! four characters (at least one) of the request's messages (input), of the
//! answer (output), and of the system prompt, which is a prompt-cache
//! *write* on a conversation's first call and a cache *read* on every later
//! one (a request with an assistant message in it) — so every kind of
//! token a provider bills shows up in tests. In the OpenAI shape, which has
//! no cache writes, those count as plain input.

use serde_json::{Value, json};

/// A conversation reduced to what the offline model looks at, from either
/// wire shape.
#[derive(Debug, Default)]
pub(crate) struct Conversation {
    pub(crate) system: String,
    /// User texts, oldest first (tool-result-only messages excluded).
    pub(crate) user_texts: Vec<String>,
    /// Tool results after the last user text: (tool name, content, is_error).
    pub(crate) tool_results: Vec<(String, String, bool)>,
    /// Characters of the request's messages, for usage.
    pub(crate) request_chars: usize,
    /// Characters of its system prompt (the cached part), for usage.
    pub(crate) system_chars: usize,
    /// Whether the model answered before in this conversation (the system
    /// prompt is then read from the cache).
    pub(crate) follow_up: bool,
    /// The names of the tools the request offers.
    pub(crate) tool_names: Vec<String>,
}

/// What the offline model answers.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Reply {
    pub(crate) thinking: Option<String>,
    pub(crate) text: Option<String>,
    /// (id, name, input)
    pub(crate) tool_calls: Vec<(String, String, Value)>,
    pub(crate) input_tokens: u64,
    pub(crate) output_tokens: u64,
    pub(crate) cache_read_tokens: u64,
    pub(crate) cache_write_tokens: u64,
}

/// A directive asked for an HTTP failure.
#[derive(Debug, PartialEq)]
pub(crate) struct Failure {
    pub(crate) status: u16,
    pub(crate) message: String,
}

fn tokens(chars: usize) -> u64 {
    (chars as u64).div_ceil(4).max(1)
}

/// Runs the offline model on a conversation.
pub(crate) fn reply(conversation: &Conversation) -> Result<Reply, Failure> {
    let last = conversation.user_texts.last().cloned().unwrap_or_default();
    let mut thinking = None;
    let mut say = None;
    let mut tools = Vec::new();
    let mut plain = Vec::new();
    let mut want_system = false;
    for line in last.lines() {
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix("/tool ") {
            let rest = rest.trim();
            let (name, args) = rest.split_once(char::is_whitespace).unwrap_or((rest, "{}"));
            let input = serde_json::from_str(args.trim()).unwrap_or_else(|_| json!({}));
            tools.push((resolve_tool(name, &conversation.tool_names), input));
        } else if let Some(rest) = trimmed.strip_prefix("/think ") {
            thinking = Some(rest.trim().to_owned());
        } else if let Some(rest) = trimmed.strip_prefix("/say ") {
            say = Some(rest.trim().to_owned());
        } else if let Some(rest) = trimmed.strip_prefix("/fail ") {
            let rest = rest.trim();
            let (status, message) = rest.split_once(' ').unwrap_or((rest, ""));
            let status = status.parse().unwrap_or(500);
            let message = if message.is_empty() {
                format!("the offline model was asked to fail with {status}")
            } else {
                message.to_owned()
            };
            return Err(Failure { status, message });
        } else if trimmed == "/system" {
            want_system = true;
        } else if !trimmed.is_empty() {
            plain.push(trimmed.to_owned());
        }
    }

    let mut reply = Reply {
        thinking,
        ..Reply::default()
    };
    if conversation.tool_results.is_empty() && !tools.is_empty() {
        for (index, (name, input)) in tools.into_iter().enumerate() {
            let id = format!("toolu_offline_{}_{index}", conversation.user_texts.len());
            reply.tool_calls.push((id, name, input));
        }
    } else {
        let mut text = String::new();
        for (name, content, is_error) in &conversation.tool_results {
            let verb = if *is_error { "failed" } else { "returned" };
            text.push_str(&format!("Tool {name} {verb}: {content}\n"));
        }
        if want_system {
            text.push_str(&format!("System prompt: {}", conversation.system));
        } else if let Some(say) = say {
            text.push_str(&say);
        } else if conversation.tool_results.is_empty() {
            text.push_str(&format!("You said: \"{}\".", plain.join(" ")));
            let earlier = conversation.user_texts.iter().rev().nth(1);
            if let Some(earlier) = earlier {
                text.push_str(&format!(" Earlier you said: \"{}\".", earlier.trim()));
            }
        }
        reply.text = Some(text.trim_end().to_owned());
    }
    reply.input_tokens = tokens(conversation.request_chars);
    if conversation.system_chars > 0 {
        let cached = tokens(conversation.system_chars);
        if conversation.follow_up {
            reply.cache_read_tokens = cached;
        } else {
            reply.cache_write_tokens = cached;
        }
    }
    let out_chars = reply.text.as_ref().map_or(0, String::len)
        + reply.thinking.as_ref().map_or(0, String::len)
        + reply
            .tool_calls
            .iter()
            .map(|(_, n, i)| n.len() + i.to_string().len())
            .sum::<usize>();
    reply.output_tokens = tokens(out_chars);
    Ok(reply)
}

/// The offered tool that `name` means: Karta's tool of that name as a
/// harness names it (`mcp__karta__calc` in Claude Code, `karta_calc` in
/// OpenCode for `calc`) — first, so a plugin `write` is not taken for
/// OpenCode's own `write` — else the tool named exactly that (a harness's
/// own `Bash`, an app server's `mcp__sre__count`), else one a harness named
/// after it, so one directive works under every harness.
fn resolve_tool(name: &str, offered: &[String]) -> String {
    let karta = [format!("mcp__karta__{name}"), format!("karta_{name}")];
    if let Some(tool) = offered.iter().find(|t| karta.contains(t)) {
        return tool.clone();
    }
    if offered.iter().any(|t| t == name) {
        return name.to_owned();
    }
    offered
        .iter()
        .find(|t| {
            t.strip_suffix(name)
                .is_some_and(|prefix| prefix.ends_with("__") || prefix.ends_with('_'))
        })
        .cloned()
        .unwrap_or_else(|| name.to_owned())
}

/// Whether a text block is harness context rather than the user's words
/// (Claude Code puts `CLAUDE.md` and reminders in `<system-reminder>` blocks
/// of the user message).
fn is_reminder(text: &str) -> bool {
    text.trim_start().starts_with("<system-reminder>")
}

/// Text of an Anthropic `content` (a string or a list of blocks).
fn anthropic_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter(|b| b["type"] == "text")
            .filter_map(|b| b["text"].as_str())
            .filter(|t| !is_reminder(t))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// What the user said in one Anthropic user message: its last text block
/// that is not a harness reminder. (A harness may merge a message whose turn
/// failed with the next one, as separate blocks; the newest block is what
/// the user says now.)
fn user_text(content: &Value) -> String {
    match content {
        Value::Array(blocks) => blocks
            .iter()
            .filter(|b| b["type"] == "text")
            .filter_map(|b| b["text"].as_str())
            .rfind(|t| !is_reminder(t))
            .unwrap_or_default()
            .to_owned(),
        other => anthropic_text(other),
    }
}

/// Reads an Anthropic Messages request.
pub(crate) fn from_anthropic(request: &Value) -> Conversation {
    let mut conversation = Conversation {
        system: match &request["system"] {
            Value::String(s) => s.clone(),
            Value::Array(blocks) => blocks
                .iter()
                .filter_map(|b| b["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n"),
            _ => String::new(),
        },
        request_chars: request["messages"].to_string().len(),
        system_chars: match &request["system"] {
            Value::Null => 0,
            other => other.to_string().len(),
        },
        follow_up: request["messages"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["role"] == "assistant")),
        tool_names: request["tools"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["name"].as_str().map(str::to_owned))
            .collect(),
        ..Conversation::default()
    };
    // tool_use id -> tool name, to name results.
    let mut names = std::collections::HashMap::new();
    for message in request["messages"].as_array().into_iter().flatten() {
        // Claude Code may put `role: "system"` entries after the first user
        // message; they are not the user's words.
        match message["role"].as_str() {
            Some("assistant") => {
                for block in message["content"].as_array().into_iter().flatten() {
                    if block["type"] == "tool_use" {
                        names.insert(
                            block["id"].as_str().unwrap_or_default().to_owned(),
                            block["name"].as_str().unwrap_or_default().to_owned(),
                        );
                    }
                }
            }
            Some("user") => {
                let blocks = message["content"].as_array();
                let results: Vec<&Value> = blocks
                    .into_iter()
                    .flatten()
                    .filter(|b| b["type"] == "tool_result")
                    .collect();
                if results.is_empty() {
                    let text = user_text(&message["content"]);
                    // A message of reminders only is the harness talking.
                    let reminders_only = text.trim().is_empty() && message["content"].is_array();
                    if !reminders_only {
                        conversation.user_texts.push(text);
                        conversation.tool_results.clear();
                    }
                } else {
                    for result in results {
                        let id = result["tool_use_id"].as_str().unwrap_or_default();
                        let name = names.get(id).cloned().unwrap_or_else(|| id.to_owned());
                        let content = anthropic_text(&result["content"]);
                        let is_error = result["is_error"].as_bool().unwrap_or(false);
                        conversation.tool_results.push((name, content, is_error));
                    }
                }
            }
            _ => {}
        }
    }
    conversation
}

/// Reads an OpenAI Chat Completions request.
pub(crate) fn from_openai(request: &Value) -> Conversation {
    let mut conversation = Conversation {
        request_chars: request["messages"].to_string().len(),
        follow_up: request["messages"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["role"] == "assistant")),
        tool_names: request["tools"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["function"]["name"].as_str().map(str::to_owned))
            .collect(),
        ..Conversation::default()
    };
    let mut names = std::collections::HashMap::new();
    for message in request["messages"].as_array().into_iter().flatten() {
        let text = match &message["content"] {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .filter(|t| !is_reminder(t))
                .collect::<Vec<_>>()
                .join("\n"),
            _ => String::new(),
        };
        match message["role"].as_str() {
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
                for call in message["tool_calls"].as_array().into_iter().flatten() {
                    names.insert(
                        call["id"].as_str().unwrap_or_default().to_owned(),
                        call["function"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                    );
                }
            }
            Some("tool") => {
                let id = message["tool_call_id"].as_str().unwrap_or_default();
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
    conversation
}

/// Splits text into word-sized deltas, the way a provider streams.
pub(crate) fn deltas(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        current.push(c);
        if c == ' ' && current.len() >= 8 {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conversation(messages: Value) -> Conversation {
        from_anthropic(&json!({ "system": "Be brief.", "messages": messages }))
    }

    #[test]
    fn answers_plainly_and_remembers() {
        let c = conversation(json!([
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
            {"role": "user", "content": [{"type": "text", "text": "second"}]},
        ]));
        let r = reply(&c).expect("reply");
        assert_eq!(
            r.text.as_deref(),
            Some("You said: \"second\". Earlier you said: \"first\".")
        );
        assert!(r.input_tokens > 0 && r.output_tokens > 0);
    }

    #[test]
    fn calls_a_tool_once_then_reports_its_result() {
        let ask = json!({"role": "user", "content": "/tool convert {\"value\": 1}\n/say done"});
        let r = reply(&conversation(json!([ask]))).expect("reply");
        assert_eq!(r.tool_calls.len(), 1);
        assert_eq!(r.tool_calls[0].1, "convert");
        assert_eq!(r.tool_calls[0].2, json!({"value": 1}));
        assert_eq!(r.text, None);

        let c = conversation(json!([
            ask,
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "convert", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "{\"v\":2}"}]},
        ]));
        let r = reply(&c).expect("reply");
        assert!(r.tool_calls.is_empty());
        assert_eq!(
            r.text.as_deref(),
            Some("Tool convert returned: {\"v\":2}\ndone")
        );
    }

    #[test]
    fn fails_thinks_and_shows_the_system_prompt() {
        let f = reply(&conversation(
            json!([{"role": "user", "content": "/fail 429 slow down"}]),
        ));
        assert_eq!(
            f,
            Err(Failure {
                status: 429,
                message: "slow down".into()
            })
        );
        let r = reply(&conversation(
            json!([{"role": "user", "content": "/think hmm\n/system"}]),
        ))
        .expect("reply");
        assert_eq!(r.thinking.as_deref(), Some("hmm"));
        assert_eq!(r.text.as_deref(), Some("System prompt: Be brief."));
    }

    #[test]
    fn directives_name_tools_as_any_harness_does() {
        let offered = vec!["Agent".to_owned(), "mcp__karta__calc".to_owned()];
        assert_eq!(resolve_tool("calc", &offered), "mcp__karta__calc");
        assert_eq!(resolve_tool("Agent", &offered), "Agent");
        assert_eq!(resolve_tool("alc", &offered), "alc");
        assert_eq!(
            resolve_tool("calc", &["karta_calc".to_owned()]),
            "karta_calc"
        );
        let c = conversation(json!([{"role": "user", "content": [
            {"type": "text", "text": "<system-reminder>\n/say not me\n</system-reminder>"},
            {"type": "text", "text": "hello"},
        ]}]));
        assert_eq!(c.user_texts, vec!["hello".to_owned()]);
        let merged = conversation(json!([{"role": "user", "content": [
            {"type": "text", "text": "/fail 500 boom"},
            {"type": "text", "text": "after"},
        ]}]));
        assert_eq!(merged.user_texts, vec!["after".to_owned()]);
    }

    #[test]
    fn reads_openai_shapes() {
        let c = from_openai(&json!({"messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "/tool t {}"},
            {"role": "assistant", "tool_calls": [{"id": "c1", "function": {"name": "t", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
        ]}));
        assert_eq!(c.system, "sys");
        assert_eq!(
            c.tool_results,
            vec![("t".to_owned(), "42".to_owned(), false)]
        );
        assert_eq!(
            reply(&c).expect("reply").text.as_deref(),
            Some("Tool t returned: 42")
        );
    }
}
