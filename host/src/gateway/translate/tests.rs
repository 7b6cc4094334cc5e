//! The translators, fed as the relay feeds them: requests both ways,
//! unary answers both ways, and streams chunk by chunk through the shared
//! SSE reader — split inside a multi-byte character at every byte, with a
//! tool call whose arguments arrive in several deltas — read back by the
//! caller's own stream reader.

use bytes::Bytes;
use karta_harness::Usage;
use karta_harness::model_stream::{AnthropicEvent, AnthropicMessage, UsageMeter, WireShape};
use serde_json::{Value, json};

use super::stream::StreamTranslator;
use super::{finish_reason, pick, request, response, shape_of, stop_reason};
use crate::byok::Provider;
use crate::gateway::UpstreamKind;
use crate::gateway::relay::EventFeed;

fn value(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("JSON")
}

#[test]
fn an_anthropic_request_becomes_an_openai_one() {
    let body = json!({
        "model": "openai/gpt-4o-mini",
        "system": [{ "type": "text", "text": "Be brief." }],
        "max_tokens": 300, "temperature": 0.2, "stop_sequences": ["END"], "stream": true,
        "tools": [
            { "name": "convert", "description": "Units", "input_schema": { "type": "object", "properties": { "v": { "type": "number" } } } },
            { "type": "web_search_20250305", "name": "web_search" },
        ],
        "tool_choice": { "type": "any", "disable_parallel_tool_use": true },
        "messages": [
            { "role": "user", "content": [
                { "type": "text", "text": "3 mi?" },
                { "type": "image", "source": { "type": "base64", "media_type": "image/png", "data": "AAAA" } },
            ]},
            { "role": "assistant", "content": [
                { "type": "thinking", "thinking": "hm", "signature": "s" },
                { "type": "text", "text": "Converting." },
                { "type": "tool_use", "id": "toolu_1", "name": "convert", "input": { "v": 3 } },
            ]},
            { "role": "user", "content": [
                { "type": "tool_result", "tool_use_id": "toolu_1", "content": [{ "type": "text", "text": "4.83 km" }] },
                { "type": "text", "text": "Thanks" },
            ]},
        ],
    });
    let out = request::anthropic_to_openai(body.to_string().as_bytes(), "gpt-4o-mini")
        .expect("translates");
    assert!(!out.include_usage);
    assert_eq!(
        value(&out.body),
        json!({
            "model": "gpt-4o-mini",
            "max_tokens": 300, "temperature": 0.2, "stop": ["END"],
            "stream": true, "stream_options": { "include_usage": true },
            "tools": [{ "type": "function", "function": {
                "name": "convert", "description": "Units",
                "parameters": { "type": "object", "properties": { "v": { "type": "number" } } },
            }}],
            "tool_choice": "required", "parallel_tool_calls": false,
            "messages": [
                { "role": "system", "content": "Be brief." },
                { "role": "user", "content": [
                    { "type": "text", "text": "3 mi?" },
                    { "type": "image_url", "image_url": { "url": "data:image/png;base64,AAAA" } },
                ]},
                { "role": "assistant", "content": "Converting.", "tool_calls": [{
                    "id": "toolu_1", "type": "function",
                    "function": { "name": "convert", "arguments": "{\"v\":3}" },
                }]},
                { "role": "tool", "tool_call_id": "toolu_1", "content": "4.83 km" },
                { "role": "user", "content": "Thanks" },
            ],
        })
    );
    let refused = request::anthropic_to_openai(br#"{"messages": 3}"#, "m");
    assert!(refused.is_err_and(|e| e.contains("not an Anthropic Messages request")));
}

#[test]
fn an_openai_request_becomes_an_anthropic_one() {
    let body = json!({
        "model": "anthropic/claude-haiku-4-5",
        "max_completion_tokens": 200, "stop": "END", "stream": true,
        "stream_options": { "include_usage": true },
        "tools": [{ "type": "function", "function": { "name": "convert", "parameters": { "type": "object" } } }],
        "tool_choice": { "type": "function", "function": { "name": "convert" } },
        "parallel_tool_calls": false,
        "messages": [
            { "role": "system", "content": "Be brief." },
            { "role": "developer", "content": [{ "type": "text", "text": "Use tools." }] },
            { "role": "user", "content": [
                { "type": "text", "text": "3 mi?" },
                { "type": "image_url", "image_url": { "url": "data:image/jpeg;base64,BBBB" } },
            ]},
            { "role": "assistant", "content": null, "tool_calls": [
                { "id": "call_1", "type": "function", "function": { "name": "convert", "arguments": "{\"v\":3}" } },
                { "id": "call_2", "type": "function", "function": { "name": "convert", "arguments": "" } },
            ]},
            { "role": "tool", "tool_call_id": "call_1", "content": "4.83 km" },
            { "role": "tool", "tool_call_id": "call_2", "content": "?" },
            { "role": "user", "content": "Thanks" },
        ],
    });
    let out = request::openai_to_anthropic(body.to_string().as_bytes(), "claude-haiku-4-5")
        .expect("translates");
    assert!(out.include_usage);
    assert_eq!(
        value(&out.body),
        json!({
            "model": "claude-haiku-4-5",
            "system": "Be brief.\n\nUse tools.",
            "max_tokens": 200, "stop_sequences": ["END"], "stream": true,
            "tools": [{ "name": "convert", "input_schema": { "type": "object" } }],
            "tool_choice": { "type": "tool", "name": "convert", "disable_parallel_tool_use": true },
            "messages": [
                { "role": "user", "content": [
                    { "type": "text", "text": "3 mi?" },
                    { "type": "image", "source": { "type": "base64", "media_type": "image/jpeg", "data": "BBBB" } },
                ]},
                { "role": "assistant", "content": [
                    { "type": "tool_use", "id": "call_1", "name": "convert", "input": { "v": 3 } },
                    { "type": "tool_use", "id": "call_2", "name": "convert", "input": {} },
                ]},
                // The tool results and the user's next words: one user turn.
                { "role": "user", "content": [
                    { "type": "tool_result", "tool_use_id": "call_1", "content": "4.83 km" },
                    { "type": "tool_result", "tool_use_id": "call_2", "content": "?" },
                    { "type": "text", "text": "Thanks" },
                ]},
            ],
        })
    );
    // Without a limit Anthropic still needs one.
    let bare =
        request::openai_to_anthropic(br#"{"messages":[{"role":"user","content":"hi"}]}"#, "m")
            .expect("translates");
    assert_eq!(value(&bare.body)["max_tokens"], 4096);
}

#[test]
fn unary_answers_translate_both_ways_with_their_usage() {
    let completion = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini",
        "choices": [{ "index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "Let me check.",
            "tool_calls": [{ "id": "call_1", "type": "function", "function": { "name": "convert", "arguments": "{\"v\":3}" } }],
        }}],
        "usage": { "prompt_tokens": 20, "completion_tokens": 7, "prompt_tokens_details": { "cached_tokens": 5 } },
    });
    let message =
        response::openai_to_anthropic(completion.to_string().as_bytes()).expect("translates");
    assert_eq!(message["stop_reason"], "tool_use");
    assert_eq!(
        message["content"],
        json!([
            { "type": "text", "text": "Let me check." },
            { "type": "tool_use", "id": "call_1", "name": "convert", "input": { "v": 3 } },
        ])
    );
    // What the caller reads is what the provider reported (and metered).
    let provider =
        UsageMeter::new(WireShape::OpenAi).observe_unary(completion.to_string().as_bytes());
    let caller =
        UsageMeter::new(WireShape::Anthropic).observe_unary(message.to_string().as_bytes());
    assert_eq!(caller, provider);
    assert_eq!(provider.cache_read_tokens, 5);

    let anthropic = json!({
        "id": "msg_1", "type": "message", "model": "claude-haiku-4-5",
        "content": [{ "type": "text", "text": "4.83 km" }],
        "stop_reason": "max_tokens",
        "usage": { "input_tokens": 10, "output_tokens": 4, "cache_read_input_tokens": 2, "cache_creation_input_tokens": 1 },
    });
    let completion =
        response::anthropic_to_openai(anthropic.to_string().as_bytes()).expect("translates");
    assert_eq!(completion["choices"][0]["finish_reason"], "length");
    assert_eq!(completion["choices"][0]["message"]["content"], "4.83 km");
    assert_eq!(completion["usage"]["prompt_tokens"], 13);
    assert_eq!(completion["usage"]["completion_tokens"], 4);
    assert_eq!(
        completion["usage"]["prompt_tokens_details"]["cached_tokens"],
        2
    );

    assert_eq!(
        response::error_message(
            br#"{"type":"error","error":{"type":"overloaded_error","message":"busy"}}"#
        ),
        "busy"
    );
    assert_eq!(response::error_message(b"Bad Gateway"), "Bad Gateway");
}

/// Feeds `wire` to a translator through the shared reader in `chunks`,
/// metering the provider's events as the relay does; returns the caller's
/// bytes and the metered usage.
fn translate(from: UpstreamKind, include_usage: bool, chunks: &[&[u8]]) -> (Vec<u8>, Usage) {
    let mut feed = EventFeed::new();
    let mut translator = StreamTranslator::new(from, "asked-model", include_usage);
    let mut meter = UsageMeter::new(if from == UpstreamKind::Openai {
        WireShape::OpenAi
    } else {
        WireShape::Anthropic
    });
    let mut metered = Usage::default();
    let mut out = Vec::new();
    for chunk in chunks {
        feed.push(Bytes::copy_from_slice(chunk), |data| {
            metered.add(meter.observe(data));
            translator.event(data, &mut out);
        });
    }
    translator.finish(&mut out);
    (out, metered)
}

/// The data of each SSE event of `bytes`, read by the shared reader.
fn events_of(bytes: &[u8]) -> Vec<String> {
    let mut feed = EventFeed::new();
    let mut data = Vec::new();
    feed.push(Bytes::copy_from_slice(bytes), |d| data.push(d.to_owned()));
    data
}

/// Every way to cut `wire` in two inside `needle`, and one byte a chunk.
fn splits<'a>(wire: &'a [u8], needle: &str) -> Vec<Vec<&'a [u8]>> {
    let at = wire
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())
        .expect("the needle is in the wire");
    let mut splits: Vec<Vec<&[u8]>> = (at..=at + needle.len())
        .map(|split| vec![&wire[..split], &wire[split..]])
        .collect();
    splits.push(wire.chunks(1).collect());
    splits
}

const OPENAI_WIRE: &str = concat!(
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
    "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Caf\u{e9} \u{1F600}\"}}]}\n\n",
    "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"convert\",\"arguments\":\"\"}}]}}]}\n\n",
    "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"val\"}}]}}]}\n\n",
    "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"ue\\\": 3,\"}}]}}]}\n\n",
    "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\" \\\"to\\\": \\\"km\\\"}\"}}]}}]}\n\n",
    "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
    "data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":31,\"completion_tokens\":12,\"total_tokens\":43,\"prompt_tokens_details\":{\"cached_tokens\":8}}}\n\n",
    "data: [DONE]\n\n",
);

#[test]
fn an_openai_stream_becomes_anthropic_events_at_every_split() {
    let wire = OPENAI_WIRE.as_bytes();
    let reported = Usage {
        input_tokens: 23,
        output_tokens: 12,
        cache_read_tokens: 8,
        cache_write_tokens: 0,
    };
    for chunks in splits(wire, "\u{1F600}") {
        let (out, metered) = translate(UpstreamKind::Openai, false, &chunks);
        assert_eq!(metered, reported, "metered once, as the provider reported");
        let mut message = AnthropicMessage::default();
        let mut names = Vec::new();
        for data in events_of(&out) {
            let event: AnthropicEvent = serde_json::from_str(&data).expect("an Anthropic event");
            names.push(
                value(data.as_bytes())["type"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            );
            message.apply(event).expect("applies");
        }
        assert_eq!(names.first().map(String::as_str), Some("message_start"));
        assert_eq!(&names[names.len() - 2..], ["message_delta", "message_stop"]);
        assert!(message.is_complete());
        assert_eq!(message.stop_reason(), "tool_use");
        assert_eq!(
            message.content(),
            [
                json!({ "type": "text", "text": "Caf\u{e9} \u{1F600}" }),
                json!({ "type": "tool_use", "id": "call_1", "name": "convert", "input": { "value": 3, "to": "km" } }),
            ]
        );
        // The caller reads the same usage as was metered.
        assert_eq!(message.usage(), reported);
        // The arguments went on as they came: three fragments.
        let fragments = events_of(&out)
            .iter()
            .filter(|d| d.contains("input_json_delta"))
            .count();
        assert_eq!(fragments, 3);
    }
}

#[test]
fn an_openai_stream_cut_off_after_its_finish_is_closed_and_one_cut_before_is_not() {
    let wire = OPENAI_WIRE.replace("data: [DONE]\n\n", "");
    let (out, _) = translate(UpstreamKind::Openai, false, &[wire.as_bytes()]);
    assert!(
        events_of(&out)
            .last()
            .is_some_and(|d| d.contains("message_stop"))
    );
    let cut = &OPENAI_WIRE[..OPENAI_WIRE.find("finish_reason").expect("finish")];
    let (out, _) = translate(UpstreamKind::Openai, false, &[cut.as_bytes()]);
    assert!(!events_of(&out).iter().any(|d| d.contains("message_stop")));
    let error = translate(
        UpstreamKind::Openai,
        false,
        &[b"data: {\"error\":{\"message\":\"rate limited\"}}\n\n"],
    )
    .0;
    let error = value(events_of(&error)[0].as_bytes());
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["message"], "rate limited");
}

const ANTHROPIC_WIRE: &str = concat!(
    "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"usage\":{\"input_tokens\":40,\"cache_read_input_tokens\":6,\"cache_creation_input_tokens\":2,\"output_tokens\":1}}}\n\n",
    "event: ping\ndata: {\"type\":\"ping\"}\n\n",
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"\u{00fc}ber \u{1F600}\"}}\n\n",
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"convert\",\"input\":{}}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"value\\\"\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\": 3}\"}}\n\n",
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
    "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":17}}\n\n",
    "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
);

#[test]
fn an_anthropic_stream_becomes_openai_chunks_at_every_split() {
    let reported = Usage {
        input_tokens: 40,
        output_tokens: 17,
        cache_read_tokens: 6,
        cache_write_tokens: 2,
    };
    for chunks in splits(ANTHROPIC_WIRE.as_bytes(), "\u{1F600}") {
        let (out, metered) = translate(UpstreamKind::Anthropic, true, &chunks);
        assert_eq!(metered, reported);
        let data = events_of(&out);
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
        let chunks: Vec<Value> = data[..data.len() - 1]
            .iter()
            .map(|d| value(d.as_bytes()))
            .collect();
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "\u{00fc}ber \u{1F600}");
        let calls: Vec<&Value> = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
            .collect();
        assert_eq!(calls[0]["id"], "toolu_1");
        assert_eq!(calls[0]["function"]["name"], "convert");
        let arguments: String = calls
            .iter()
            .filter_map(|c| c["function"]["arguments"].as_str())
            .collect();
        assert_eq!(value(arguments.as_bytes()), json!({ "value": 3 }));
        let finish = &chunks[chunks.len() - 2];
        assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");
        // The usage chunk, which the caller's meter reads as it was
        // metered (cache writes counted as plain input by OpenAI).
        let usage = &chunks[chunks.len() - 1];
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["prompt_tokens"], 48);
        assert_eq!(usage["usage"]["completion_tokens"], 17);
        assert_eq!(usage["usage"]["prompt_tokens_details"]["cached_tokens"], 6);
    }
    // Without `include_usage` no usage chunk.
    let (out, _) = translate(UpstreamKind::Anthropic, false, &[ANTHROPIC_WIRE.as_bytes()]);
    assert!(!events_of(&out).iter().any(|d| d.contains("\"usage\"")));
}

#[test]
fn the_prefix_picks_the_provider_and_is_stripped() {
    assert_eq!(
        pick("openai/gpt-4o-mini"),
        (Some(Provider::Openai), "gpt-4o-mini")
    );
    assert_eq!(
        pick("openrouter/anthropic/claude-sonnet-4"),
        (Some(Provider::Openrouter), "anthropic/claude-sonnet-4")
    );
    assert_eq!(
        pick("anthropic/claude-haiku-4-5"),
        (Some(Provider::Anthropic), "claude-haiku-4-5")
    );
    assert_eq!(pick("claude-sonnet-4-5"), (None, "claude-sonnet-4-5"));
    assert_eq!(pick("meta/llama-3"), (None, "meta/llama-3"));
    assert_eq!(pick("openai/"), (None, "openai/"));
    assert_eq!(shape_of(Provider::Openrouter), UpstreamKind::Openai);
}

#[test]
fn stop_reasons_map_both_ways() {
    for (finish, stop) in [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
    ] {
        assert_eq!(stop_reason(finish), stop);
        assert_eq!(finish_reason(stop), finish);
    }
    assert_eq!(finish_reason("stop_sequence"), "stop");
    assert_eq!(stop_reason("function_call"), "tool_use");
}
