//! The SSE writer: a subscription's items as Server-Sent Events, through
//! axum's `Sse` with a keep-alive comment every 15 s (so a turn waiting
//! for a person is not cut by proxies).
//!
//! An event is `event: <type>`, `id: <seq>`, `data: <envelope>`; a failed
//! stream ends with an unnumbered `event: error` whose data is the bare
//! event, `{"type": "error", "data": {code, message}}`
//! ([`karta_harness::StreamItem`] reads either back).

use std::convert::Infallible;
use std::time::Duration;

use crate::session::{Published, Subscription};
use axum::response::sse::{Event as Frame, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use karta_harness::{ErrorCode, ErrorData, Event};

/// Where a stream resumes: `?after=` if given, else the `Last-Event-ID`
/// header a reconnecting `EventSource` sends, else the start (0).
pub(super) fn resume_after(
    query: Option<String>,
    headers: &axum::http::HeaderMap,
) -> Result<u64, super::error::ApiError> {
    let header = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match query.or(header) {
        None => Ok(0),
        Some(text) => text.trim().parse::<u64>().map_err(|_| {
            super::error::ApiError::bad_request(
                "`after` / `Last-Event-ID` must be an event sequence number",
            )
        }),
    }
}

/// One SSE frame of a subscription item.
fn frame(item: Published) -> Frame {
    let built = match item {
        Published::Event(envelope) => Frame::default()
            .event(envelope.event.kind())
            .id(envelope.seq.to_string())
            .json_data(&*envelope),
        Published::Failed(error) => Frame::default()
            .event("error")
            .json_data(Event::Error(error)),
    };
    built.unwrap_or_else(|e| {
        tracing::error!("cannot encode an event: {e}");
        let failure = Event::Error(ErrorData {
            code: ErrorCode::Internal,
            message: "an event could not be encoded".into(),
        });
        Frame::default()
            .event("error")
            .json_data(failure)
            .unwrap_or_default()
    })
}

/// The items of `events` as an SSE response.
pub(super) fn stream(events: Subscription) -> Response {
    let frames: std::pin::Pin<Box<dyn Stream<Item = Result<Frame, Infallible>> + Send>> =
        Box::pin(events.into_stream().map(|item| Ok(frame(item))));
    Sse::new(frames)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
