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

mod read;

pub(crate) use read::read;

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

impl Reply {
    /// What the reply's usage object says, in any wire shape.
    pub(crate) fn usage(&self) -> karta_harness::Usage {
        karta_harness::Usage {
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cache_read_tokens: self.cache_read_tokens,
            cache_write_tokens: self.cache_write_tokens,
        }
    }
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

    use crate::gateway::UpstreamKind;

    fn conversation(messages: Value) -> Conversation {
        let body = json!({ "system": "Be brief.", "messages": messages }).to_string();
        read(UpstreamKind::Anthropic, body.as_bytes())
            .expect("readable")
            .conversation
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
        let body = json!({"messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "/tool t {}"},
            {"role": "assistant", "tool_calls": [{"id": "c1", "function": {"name": "t", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
        ], "tools": [{"type": "function", "function": {"name": "t"}}],
           "stream_options": {"include_usage": true}, "model": "m"});
        let request = read(UpstreamKind::Openai, body.to_string().as_bytes()).expect("readable");
        assert_eq!(request.model.as_deref(), Some("m"));
        assert!(request.include_usage);
        let c = request.conversation;
        assert_eq!(c.tool_names, vec!["t".to_owned()]);
        assert!(c.follow_up);
        let messages_chars = body["messages"].to_string().len();
        assert_eq!(c.system_chars, 3);
        assert_eq!(c.request_chars, messages_chars - 3);
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

    /// What the usage is counted from: the messages' and the system
    /// prompt's length as `Value::to_string` writes them, however the
    /// request was written (spaces, escapes that need none, numbers in
    /// other forms, characters beyond ASCII).
    #[test]
    fn usage_counts_the_messages_as_written_compactly() {
        let messages = json!([
            {"role": "user", "content": [
                {"type": "text", "text": "quote \" backslash \\ tab \t newline \n bell \u{7} é 😀 </tag>"},
                {"type": "image", "source": {"data": "AAAA", "n": [1, -2, 3.5, 1e21, 0.000001]}},
            ]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "t1", "name": "calc", "input": {"a": null, "b": [true, false], "c": {}}},
            ]},
        ]);
        let system = json!([{"type": "text", "text": "Be brief.\n", "cache_control": {"type": "ephemeral"}}]);
        let compact = json!({"model": "m", "system": system, "messages": messages}).to_string();
        // The same request, written the way another client might write it.
        let loose = serde_json::to_string_pretty(
            &json!({"model": "m", "system": system, "messages": messages}),
        )
        .expect("pretty")
        .replace("é", "\\u00e9")
        .replace("3.5", "35e-1");
        for body in [compact, loose] {
            let c = read(UpstreamKind::Anthropic, body.as_bytes())
                .expect("readable")
                .conversation;
            assert_eq!(c.request_chars, messages.to_string().len(), "{body}");
            assert_eq!(c.system_chars, system.to_string().len(), "{body}");
            assert_eq!(c.system, "Be brief.\n");
            assert!(c.follow_up);
            assert_eq!(c.user_texts.len(), 1);
            assert!(c.user_texts[0].starts_with("quote \" backslash \\ tab \t"));
        }
        // No messages at all counts as `null`, as before.
        let empty = read(UpstreamKind::Anthropic, b"{}").expect("readable");
        assert_eq!(empty.conversation.request_chars, 4);
        assert_eq!(empty.conversation.system_chars, 0);
    }

    /// Fields of other types than the API gives them read as absent, so
    /// any JSON gets an answer; only an object naming a field twice is
    /// refused, with a reason.
    #[test]
    fn reads_any_shape_leniently_and_refuses_only_a_field_named_twice() {
        let odd = [
            json!([1, 2]),
            json!("text"),
            json!(5),
            json!(null),
            json!({"messages": "not a list", "system": 7, "tools": {"name": "x"}, "model": 3}),
            json!({"messages": [5, "x", null, {"role": 3, "content": 4},
                {"role": "user", "content": [7, {"type": 1, "text": "no"}, {"type": "text", "text": ["no"]}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": 9, "content": {"a": 1}, "is_error": "yes"}]}],
                "tools": ["x", 5, {"name": 3}, {"name": "kept"}]}),
        ];
        for body in odd {
            for kind in [UpstreamKind::Anthropic, UpstreamKind::Openai] {
                let request = read(kind, body.to_string().as_bytes())
                    .unwrap_or_else(|e| panic!("{body}: {e}"));
                reply(&request.conversation).expect("an answer");
            }
        }
        let last = read(
            UpstreamKind::Anthropic,
            json!({"messages": [
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": 9, "content": {"a": 1}, "is_error": "yes"}]}],
                "tools": ["x", 5, {"name": 3}, {"name": "kept"}]})
            .to_string()
            .as_bytes(),
        )
        .expect("readable")
        .conversation;
        assert_eq!(last.tool_names, vec!["kept".to_owned()]);
        assert_eq!(
            last.tool_results,
            vec![(String::new(), String::new(), false)]
        );

        let twice = r#"{"messages": [{"role": "user", "role": "assistant", "content": "hi"}]}"#;
        let error = read(UpstreamKind::Anthropic, twice.as_bytes()).expect_err("refused");
        assert!(
            error.contains("cannot read this request") && error.contains("duplicate field `role`"),
            "{error}"
        );
    }
}
