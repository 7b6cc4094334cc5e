//! Answers pass through here on their way to the harness: a provider's,
//! forwarded with the platform's key, and the offline model's alike. Their
//! tokens are metered as they pass — an SSE answer event by event, before
//! the event is sent on, so a harness never sees the end of an answer
//! whose tokens are not yet counted; a unary answer when it is complete,
//! before its last chunk is sent on. Nothing is buffered but the event
//! being read (and, for a unary answer, a copy of the JSON to read its
//! usage from).

use std::convert::Infallible;

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{FutureExt, Stream, StreamExt};
use http_body_util::{BodyExt, Full};
use karta_harness::model_stream::{UsageMeter, WireShape};
use karta_harness::sse;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::{
    CallGuard, Gateway, MAX_EVENT_BYTES, MAX_UNARY_BYTES, ModelCall, Upstream, UpstreamKind,
    error_response,
};

/// A body relaying `chunks` while metering them to `session`, in the
/// connection's own task (no task or channel in between).
pub(super) fn metered<S, E>(
    gateway: Gateway,
    call: ModelCall,
    guard: CallGuard,
    shape: WireShape,
    streaming: bool,
    chunks: S,
) -> Body
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Into<axum::BoxError> + 'static,
{
    let mut meter = UsageMeter::new(shape);
    let mut seq = 0u32;
    if streaming {
        // The SSE reader is fed chunk by chunk and drained at once: every
        // complete event is metered before its bytes go on.
        let (feed, fed) = mpsc::unbounded_channel::<Bytes>();
        let mut events = sse::events(
            UnboundedReceiverStream::new(fed).map(Ok::<_, Infallible>),
            MAX_EVENT_BYTES,
        );
        return Body::from_stream(chunks.map(move |chunk| {
            // Held until the body is done or dropped.
            let _held = &guard;
            if let Ok(chunk) = &chunk {
                let _ = feed.send(chunk.clone());
                while let Some(Some(event)) = events.next().now_or_never() {
                    match event {
                        Ok(event) => {
                            if let Some(data) = event.data.as_deref() {
                                gateway.meter(&call, &mut seq, meter.observe(data));
                            }
                        }
                        Err(e) => tracing::warn!("cannot read the model's stream for usage: {e}"),
                    }
                }
            }
            chunk
        }));
    }
    // A unary answer: hold each chunk back until the next one arrives, so
    // the last goes on only once the whole answer is metered.
    struct Unary<S> {
        chunks: std::pin::Pin<Box<S>>,
        held: Option<Bytes>,
        copy: Vec<u8>,
        done: bool,
        gateway: Gateway,
        call: ModelCall,
        seq: u32,
        meter: UsageMeter,
        /// Held until the body is done or dropped.
        _guard: CallGuard,
    }
    let state = Unary {
        chunks: Box::pin(chunks),
        held: None,
        copy: Vec::new(),
        done: false,
        gateway,
        call,
        seq,
        meter,
        _guard: guard,
    };
    Body::from_stream(futures_util::stream::unfold(
        state,
        |mut state| async move {
            while !state.done {
                match state.chunks.next().await {
                    Some(Ok(chunk)) => {
                        if state.copy.len() + chunk.len() <= MAX_UNARY_BYTES {
                            state.copy.extend_from_slice(&chunk);
                        }
                        if let Some(previous) = state.held.replace(chunk) {
                            return Some((Ok::<_, axum::BoxError>(previous), state));
                        }
                    }
                    Some(Err(e)) => {
                        state.done = true;
                        return Some((Err(e.into()), state));
                    }
                    None => {
                        state.done = true;
                        let usage = state.meter.observe_unary(&state.copy);
                        state.gateway.meter(&state.call, &mut state.seq, usage);
                        return state.held.take().map(|last| (Ok(last), state));
                    }
                }
            }
            None
        },
    ))
}

/// Sends the request on to the real provider with the platform's key and
/// relays its answer back, metered.
pub(super) async fn forward(
    gateway: &Gateway,
    upstream: &Upstream,
    kind: UpstreamKind,
    call: ModelCall,
    guard: CallGuard,
    bytes: Bytes,
    streaming: bool,
) -> Response {
    let path = match upstream.kind {
        UpstreamKind::Anthropic => "/v1/messages",
        UpstreamKind::Openai => "/v1/chat/completions",
    };
    if upstream.kind != kind {
        return error_response(
            kind,
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            &format!(
                "this gateway's upstream speaks {:?}; use {path}",
                upstream.kind
            ),
        );
    }
    let url = format!("{}{path}", upstream.base_url.trim_end_matches('/'));
    let mut builder = hyper::Request::post(url).header("content-type", "application/json");
    builder = match kind {
        UpstreamKind::Anthropic => builder
            .header("x-api-key", &upstream.api_key)
            .header("anthropic-version", "2023-06-01"),
        UpstreamKind::Openai => {
            builder.header("authorization", format!("Bearer {}", upstream.api_key))
        }
    };
    let Ok(outbound) = builder.body(Full::new(bytes)) else {
        return error_response(
            kind,
            StatusCode::BAD_GATEWAY,
            "api_error",
            "bad upstream URL",
        );
    };
    let response = match gateway.inner.client.request(outbound).await {
        Ok(response) => response,
        Err(e) => {
            tracing::warn!("upstream unreachable: {e:#}");
            return error_response(
                kind,
                StatusCode::BAD_GATEWAY,
                "api_error",
                "the model provider could not be reached",
            );
        }
    };
    let status = response.status();
    if upstream.org_key && (status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN) {
        // The org's own key, refused: say so (422), not as a model
        // failure the platform could fix.
        let said = http_body_util::Limited::new(response.into_body(), 64 * 1024)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let said: serde_json::Value = serde_json::from_slice(&said).unwrap_or_default();
        let reason = said["error"]["message"]
            .as_str()
            .unwrap_or("no reason given");
        return error_response(
            kind,
            StatusCode::UNPROCESSABLE_ENTITY,
            "byok_key_rejected",
            &format!(
                "the org's own {} key was rejected by the provider (HTTP {}): {reason}",
                upstream.kind.as_str(),
                status.as_u16()
            ),
        );
    }
    let content_type = response.headers().get("content-type").cloned();
    let chunks = http_body_util::BodyDataStream::new(response.into_body());
    let body = metered(
        gateway.clone(),
        call,
        guard,
        kind.shape(),
        streaming,
        chunks,
    );
    let mut response = Response::builder().status(status);
    if let Some(content_type) = content_type {
        response = response.header("content-type", content_type);
    }
    response
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
