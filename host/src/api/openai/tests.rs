//! The event mappings, event by event: a turn's events → chat completion
//! chunks and Responses stream events (text deltas, tool calls, errors,
//! usage), and the folding of a conversation.

use karta_harness::{ErrorCode, Event, ToolError, ToolErrorKind, TurnStatus, Usage};
use serde_json::{Value, json};

use super::chat::{ChatOut, Chunks};
use super::response_events::ResponseEvents;
use super::{Speaker, fold};

fn usage() -> Usage {
    Usage {
        input_tokens: 10,
        output_tokens: 5,
        cache_read_tokens: 3,
        cache_write_tokens: 2,
    }
}

fn chunk(out: &ChatOut) -> &Value {
    match out {
        ChatOut::Chunk(chunk) => chunk,
        other => panic!("not a chunk: {other:?}"),
    }
}

#[test]
fn a_lone_message_is_sent_verbatim_and_a_conversation_is_folded() {
    assert_eq!(fold(&[], &[], "/say hi"), "/say hi");
    let folded = fold(
        &["Be terse.".into()],
        &[
            (Speaker::User, "What is 2+2?".into()),
            (Speaker::Assistant, "4".into()),
        ],
        "And 3+3?",
    );
    assert_eq!(
        folded,
        "[Instructions]\nBe terse.\n\n[Conversation so far]\nUser: What is 2+2?\n\
         Assistant: 4\n\n[Message]\nAnd 3+3?"
    );
}

#[test]
fn text_deltas_become_chunks_after_the_role_then_finish_usage_and_done() {
    let mut chunks = Chunks::new("gpt-x", true);
    let role = chunks.role();
    assert_eq!(role["object"], "chat.completion.chunk");
    assert_eq!(role["model"], "gpt-x");
    assert_eq!(role["choices"][0]["delta"]["role"], "assistant");
    assert!(role["choices"][0]["finish_reason"].is_null());
    let mut content = String::new();
    for event in [
        Event::step_start(0),
        Event::text("p1", "Hello"),
        Event::text("p1", " world"),
        Event::text("p2", "Again"),
    ] {
        for out in chunks.on_event(&event) {
            let chunk = chunk(&out);
            assert_eq!(chunk["id"], role["id"], "one id for every chunk");
            assert!(chunk["usage"].is_null());
            content.push_str(
                chunk["choices"][0]["delta"]["content"]
                    .as_str()
                    .expect("text"),
            );
        }
    }
    // Text parts split by something else are a paragraph apart.
    assert_eq!(content, "Hello world\n\nAgain");
    let end = chunks.on_event(&Event::done("m1", usage(), TurnStatus::Completed));
    assert_eq!(end.len(), 3, "{end:?}");
    assert_eq!(chunk(&end[0])["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunk(&end[0])["choices"][0]["delta"], json!({}));
    assert_eq!(chunk(&end[1])["choices"], json!([]));
    assert_eq!(
        chunk(&end[1])["usage"],
        json!({
            "prompt_tokens": 15, "completion_tokens": 5, "total_tokens": 20,
            "prompt_tokens_details": { "cached_tokens": 3 },
        })
    );
    assert_eq!(end[2], ChatOut::Done);
    let completion = chunks.completion(&usage());
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(
        completion["choices"][0]["message"]["content"],
        "Hello world\n\nAgain"
    );
    assert_eq!(completion["usage"]["total_tokens"], 20);
}

#[test]
fn without_include_usage_there_is_no_usage_chunk() {
    let mut chunks = Chunks::new("m", false);
    assert!(chunks.role().get("usage").is_none());
    let end = chunks.on_event(&Event::done("m1", usage(), TurnStatus::Completed));
    assert_eq!(end.len(), 2);
    assert_eq!(end[1], ChatOut::Done);
}

#[test]
fn tool_calls_and_reasoning_are_not_offered_to_a_chat_client() {
    let mut chunks = Chunks::new("m", false);
    for event in [
        Event::reasoning("r1", "thinking"),
        Event::tool_running("t1", "convert", json!({ "value": 3 })),
        Event::tool_finished(
            "t1",
            "convert",
            json!({}),
            Ok(json!("4.8")),
            Some(7),
            Some(1),
        ),
    ] {
        assert!(chunks.on_event(&event).is_empty(), "{event:?}");
    }
}

#[test]
fn a_failed_turn_ends_a_chat_stream_with_an_error_object() {
    let mut chunks = Chunks::new("m", false);
    let out = chunks.on_event(&Event::error(ErrorCode::BudgetExhausted, "spent"));
    let [ChatOut::Error(error)] = &out[..] else {
        panic!("{out:?}");
    };
    assert_eq!(error.status.as_u16(), 402);
    let body = error.body();
    assert_eq!(body["error"]["code"], "budget_exhausted");
    assert_eq!(body["error"]["message"], "spent");
    let out = chunks.on_event(&Event::error(ErrorCode::ModelError, "broke"));
    let [ChatOut::Error(error)] = &out[..] else {
        panic!("{out:?}");
    };
    assert_eq!(error.status.as_u16(), 500);
    assert_eq!(error.body()["error"]["type"], "server_error");
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["type"].as_str().expect("type"))
        .collect()
}

#[test]
fn responses_stream_text_as_deltas_of_only_the_new_text() {
    let mut response = ResponseEvents::new("gpt-x", Some("Be kind.".into()), None, "app");
    let mut events = response.start();
    events.extend(response.on_event(&Event::text("p1", "Hel")));
    events.extend(response.on_event(&Event::text("p1", "lo")));
    events.extend(response.on_event(&Event::done("m1", usage(), TurnStatus::Completed)));
    assert_eq!(
        kinds(&events),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    for (index, event) in events.iter().enumerate() {
        assert_eq!(event["sequence_number"], index as u64);
    }
    assert_eq!(events[0]["response"]["status"], "in_progress");
    assert_eq!(events[0]["response"]["instructions"], "Be kind.");
    assert_eq!(events[2]["item"]["content"], json!([]));
    assert_eq!(events[4]["delta"], "Hel");
    assert_eq!(events[5]["delta"], "lo");
    assert_eq!(events[6]["text"], "Hello");
    let item = &events[8]["item"];
    assert_eq!(item["status"], "completed");
    assert_eq!(item["content"][0]["text"], "Hello");
    assert_eq!(item["id"], events[4]["item_id"]);
    let completed = &events[9]["response"];
    assert_eq!(completed["id"], events[0]["response"]["id"]);
    assert_eq!(completed["status"], "completed");
    assert_eq!(completed["output"][0], *item);
    assert_eq!(
        completed["usage"],
        json!({
            "input_tokens": 15,
            "input_tokens_details": { "cached_tokens": 3, "cache_write_tokens": 2 },
            "output_tokens": 5,
            "output_tokens_details": { "reasoning_tokens": 0 },
            "total_tokens": 20,
        })
    );
}

#[test]
fn tool_calls_are_mcp_call_items_between_messages() {
    let mut response = ResponseEvents::new("m", None, Some("resp_before".into()), "support-bot");
    let mut events = Vec::new();
    let denied = ToolError {
        kind: ToolErrorKind::Denied,
        message: "a person said no".into(),
    };
    for event in [
        Event::text("p1", "Let me convert."),
        Event::tool_running("t1", "convert", json!({ "value": 3 })),
        Event::tool_finished(
            "t1",
            "convert",
            json!({ "value": 3 }),
            Ok(json!({ "km": 4.8 })),
            Some(9),
            Some(1),
        ),
        Event::tool_finished("t2", "write", json!({}), Err(denied), None, None),
        Event::text("p2", "Done."),
        Event::done("m1", usage(), TurnStatus::Denied),
    ] {
        events.extend(response.on_event(&event));
    }
    let completed = &events.last().expect("events")["response"];
    assert_eq!(completed["previous_response_id"], "resp_before");
    let output = completed["output"].as_array().expect("output");
    let types: Vec<&str> = output
        .iter()
        .map(|i| i["type"].as_str().expect("type"))
        .collect();
    assert_eq!(types, ["message", "mcp_call", "mcp_call", "message"]);
    assert_eq!(output[0]["content"][0]["text"], "Let me convert.");
    assert_eq!(
        output[0]["status"], "completed",
        "closed before the tool call"
    );
    let convert = &output[1];
    assert_eq!(convert["name"], "convert");
    assert_eq!(convert["server_label"], "support-bot");
    assert_eq!(convert["arguments"], "{\"value\":3}");
    assert_eq!(convert["status"], "completed");
    assert_eq!(convert["output"], "{\"km\":4.8}");
    let write = &output[2];
    assert_eq!(write["status"], "failed");
    assert_eq!(write["error"]["type"], "mcp_tool_execution_error");
    assert_eq!(write["error"]["content"]["kind"], "denied");
    assert_eq!(output[3]["content"][0]["text"], "Done.");
    // Each call: added once (in progress), done once.
    let added: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "response.output_item.added")
        .map(|e| &e["item"])
        .collect();
    assert_eq!(added.len(), 4);
    assert_eq!(added[1]["status"], "in_progress");
    assert_eq!(added[2]["status"], "in_progress");
    let done = events
        .iter()
        .filter(|e| e["type"] == "response.output_item.done")
        .count();
    assert_eq!(done, 4);
}

#[test]
fn a_failed_turn_is_response_failed() {
    let mut response = ResponseEvents::new("m", None, None, "app");
    let mut events = response.on_event(&Event::text("p1", "partial"));
    events.extend(response.on_event(&Event::error(ErrorCode::ModelError, "the model broke")));
    assert_eq!(
        kinds(&events)[events.len() - 4..],
        [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.failed",
        ]
    );
    let failed = &events.last().expect("failed")["response"];
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"]["code"], "server_error");
    assert_eq!(failed["error"]["message"], "model_error: the model broke");
    assert!(failed["usage"].is_null());
}
