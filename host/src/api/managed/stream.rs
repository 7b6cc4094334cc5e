//! The managed-agents log: the session's native event log, mapped entry by
//! entry to Anthropic-style log entries, and streamed as SSE.
//!
//! Each entry keeps the **native event's `seq`**, so `?after=` and
//! `Last-Event-ID` mean the same on both logs, a reconnect gets exactly
//! what it missed, once, and a client can rebuild its cursor from
//! `GET …/sessions/{id}` (whose `events` are this mapping of the whole log).
//! Native events with no managed counterpart (later `step_start`s,
//! `system`) are skipped, so entries' `seq`s rise strictly but with gaps.
//!
//! | native event | entry |
//! | --- | --- |
//! | `step_start` (step 0: a turn begins) | `session.status_running` |
//! | `text` | `agent.message {text, part_id, delta: true}` |
//! | `reasoning` | `agent.thinking {text, part_id, delta: true}` |
//! | `tool_use` running | `agent.tool_use {tool_use_id, tool, input}` |
//! | `tool_use` completed / error | `agent.tool_result {tool_use_id, tool, input, output, is_error, error?, _meta: {fuel?, duration_ms?, cost_micros?, cpu_ms?}}` |
//! | `step_finish` | `session.usage {usage, step_index, stop_reason}` |
//! | `input_required` | `session.status_idle {stop_reason: "requires_action", request_id, tool, input, target?, message, options}` |
//! | `done` | `session.status_idle {stop_reason: "end_turn", usage, status, message_id}` |
//! | `error` | `session.error {code, message}` |
//!
//! A call a person denied has only its `agent.tool_result` (it never ran);
//! that is why the result repeats `tool` and `input`. A stream ends after
//! `session.status_idle` or `session.error` (the native stream's ends); a
//! stream that cannot go on (the session was deleted) ends with an
//! unnumbered `session.error`.

use std::convert::Infallible;
use std::time::Duration;

use axum::http::HeaderMap;
use axum::response::sse::{Event as Frame, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use karta_harness::{Envelope, Event, ToolStatus};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::super::error::{ApiError, ErrorBody};
use super::super::extract::ApiQuery;
use super::super::tenant::TenantSession;
use crate::session::{Published, Subscription};

/// The managed-agents log entry of a native event (`None`: it has none).
pub(super) fn entry(envelope: &Envelope) -> Option<Value> {
    let (kind, mut fields) = match &envelope.event {
        Event::StepStart(data) if data.step_index == 0 => ("session.status_running", json!({})),
        Event::StepStart(_) | Event::System(_) => return None,
        Event::Text(data) => (
            "agent.message",
            json!({ "text": data.part.text, "part_id": data.part.id, "delta": true }),
        ),
        Event::Reasoning(data) => (
            "agent.thinking",
            json!({ "text": data.part.text, "part_id": data.part.id, "delta": true }),
        ),
        Event::ToolUse(data) if data.part.state.status == ToolStatus::Running => (
            "agent.tool_use",
            json!({
                "tool_use_id": data.part.id,
                "tool": data.part.tool,
                "input": data.part.state.input,
            }),
        ),
        Event::ToolUse(data) => {
            let state = &data.part.state;
            let mut meta = Map::new();
            for (name, value) in [
                ("fuel", data.fuel),
                ("duration_ms", data.duration_ms),
                ("cost_micros", data.cost_micros),
                ("cpu_ms", data.cpu_ms),
            ] {
                if let Some(value) = value {
                    meta.insert(name.into(), value.into());
                }
            }
            let mut fields = json!({
                "tool_use_id": data.part.id,
                "tool": data.part.tool,
                "input": state.input,
                "is_error": state.status == ToolStatus::Error,
                "_meta": meta,
            });
            match (&state.output, &state.error) {
                (_, Some(error)) => {
                    fields["output"] = json!(error.message);
                    fields["error"] = json!(error);
                }
                (Some(output), None) => fields["output"] = output.clone(),
                (None, None) => fields["output"] = Value::Null,
            }
            ("agent.tool_result", fields)
        }
        Event::StepFinish(data) => (
            "session.usage",
            json!({
                "usage": data.usage,
                "step_index": data.step_index,
                "stop_reason": data.stop_reason,
            }),
        ),
        Event::InputRequired(data) => {
            let mut fields = json!({
                "stop_reason": "requires_action",
                "request_id": data.request_id,
                "tool": data.tool,
                "input": data.input,
                "message": data.message,
                "options": data.options,
            });
            if let Some(target) = target_of(&data.input) {
                fields["target"] = json!(target);
            }
            ("session.status_idle", fields)
        }
        Event::Done(data) => (
            "session.status_idle",
            json!({
                "stop_reason": "end_turn",
                "usage": data.usage,
                "status": data.status,
                "message_id": data.message_id,
            }),
        ),
        Event::Error(data) => (
            "session.error",
            json!({ "code": data.code, "message": data.message }),
        ),
    };
    fields["type"] = json!(kind);
    fields["seq"] = json!(envelope.seq);
    fields["timestamp"] = json!(envelope.timestamp);
    Some(fields)
}

/// What a tool call acts on, for an approval prompt: its input's `path`,
/// `file`, `url` or `command`, when it has one.
fn target_of(input: &Value) -> Option<&str> {
    ["path", "file", "url", "command"]
        .iter()
        .find_map(|name| input.get(*name).and_then(Value::as_str))
}

/// Every entry of the log after `after`.
pub(super) fn entries(events: &[Envelope]) -> Vec<Value> {
    events.iter().filter_map(entry).collect()
}

/// One SSE frame of a subscription item (`None`: nothing to send).
fn frame(item: Published) -> Option<Frame> {
    let (kind, id, data) = match item {
        Published::Event(envelope) => {
            let data = entry(&envelope)?;
            let kind = data["type"].as_str().unwrap_or("session.error").to_owned();
            (kind, Some(envelope.seq), data)
        }
        Published::Failed(error) => (
            "session.error".to_owned(),
            None,
            json!({ "type": "session.error", "code": error.code, "message": error.message }),
        ),
    };
    let mut frame = Frame::default().event(kind);
    if let Some(id) = id {
        frame = frame.id(id.to_string());
    }
    Some(frame.json_data(&data).unwrap_or_else(|e| {
        tracing::error!("cannot encode a log entry: {e}");
        Frame::default().event("session.error").data(
            json!({ "type": "session.error", "code": "internal", "message": "an entry could not be encoded" })
                .to_string(),
        )
    }))
}

/// A subscription's entries as an SSE response.
fn sse(events: Subscription) -> Response {
    let frames: std::pin::Pin<Box<dyn Stream<Item = Result<Frame, Infallible>> + Send>> = Box::pin(
        events
            .into_stream()
            .filter_map(|item| async move { frame(item).map(Ok) }),
    );
    Sse::new(frames)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

#[derive(Deserialize)]
pub(super) struct StreamQuery {
    after: Option<String>,
}

/// The session's log entries as SSE: every entry after `after` (or
/// `Last-Event-ID`), then the running turn live; the stream closes after
/// `session.status_idle` or `session.error`.
#[utoipa::path(get, path = "/v1/managed-agents/sessions/{id}/events/stream", tag = "managed-agents",
    params(("after" = Option<u64>, Query, description = "Only entries above this seq")),
    responses((status = 200, description = "text/event-stream of log entries"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn stream_events(
    TenantSession { id, sessions, .. }: TenantSession,
    ApiQuery(query): ApiQuery<StreamQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let after = super::super::sse::resume_after(query.after, &headers)?;
    let events = sessions.subscribe(&id, after).await?;
    Ok(sse(events))
}

#[cfg(test)]
mod tests {
    use super::*;
    use karta_harness::{Source, TurnStatus, Usage};

    fn envelope(seq: u64, event: Event) -> Envelope {
        Envelope {
            event,
            source: Source::Karta,
            session_id: "ses_x".into(),
            timestamp: "2025-01-01T00:00:00.000Z".into(),
            seq,
            raw: None,
        }
    }

    #[test]
    fn a_turn_maps_to_entries_with_its_seqs() {
        let log = [
            envelope(1, Event::step_start(0)),
            envelope(2, Event::text("p1", "Hel")),
            envelope(3, Event::tool_running("t1", "read", json!({"path": "a"}))),
            envelope(
                4,
                Event::tool_finished(
                    "t1",
                    "read",
                    json!({"path": "a"}),
                    Ok(json!("x")),
                    Some(7),
                    Some(2),
                ),
            ),
            envelope(5, Event::step_finish(0, Usage::default(), "tool_use")),
            envelope(6, Event::step_start(1)),
            envelope(
                7,
                Event::done("m1", Usage::default(), TurnStatus::Completed),
            ),
        ];
        let entries = entries(&log);
        let kinds: Vec<&str> = entries.iter().filter_map(|e| e["type"].as_str()).collect();
        assert_eq!(
            kinds,
            [
                "session.status_running",
                "agent.message",
                "agent.tool_use",
                "agent.tool_result",
                "session.usage",
                "session.status_idle"
            ]
        );
        let seqs: Vec<u64> = entries.iter().filter_map(|e| e["seq"].as_u64()).collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5, 7]);
        assert_eq!(entries[1]["part_id"], "p1");
        assert_eq!(entries[1]["delta"], true);
        assert_eq!(entries[3]["_meta"], json!({"fuel": 7, "duration_ms": 2}));
        assert_eq!(entries[3]["is_error"], false);
        assert_eq!(entries[5]["stop_reason"], "end_turn");
    }
}
