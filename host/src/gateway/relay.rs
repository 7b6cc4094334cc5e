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
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{FutureExt, Stream, StreamExt};
use http_body_util::{BodyExt, Full};
use karta_harness::model_stream::{UsageMeter, WireShape};
use karta_harness::sse;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::translate::stream::StreamTranslator;
use super::translate::{self, request, response};
use super::{
    CallGuard, Gateway, MAX_EVENT_BYTES, MAX_UNARY_BYTES, ModelCall, Upstream, UpstreamKind,
    error_response, invalid_request,
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
        let mut feed = EventFeed::new();
        return Body::from_stream(chunks.map(move |chunk| {
            // Held until the body is done or dropped.
            let _held = &guard;
            if let Ok(chunk) = &chunk {
                feed.push(chunk.clone(), |data| {
                    let usage = meter.observe(data);
                    gateway.meter(&call, &mut seq, usage, &meter);
                });
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
                        state
                            .gateway
                            .meter(&state.call, &mut state.seq, usage, &state.meter);
                        return state.held.take().map(|last| (Ok(last), state));
                    }
                }
            }
            None
        },
    ))
}

/// The SSE reader of an answer, fed chunk by chunk as the chunks pass and
/// drained at once: each complete event's data is handed on before the
/// chunk that completed it goes anywhere.
pub(super) struct EventFeed {
    feed: mpsc::UnboundedSender<Bytes>,
    events: sse::SseStream,
}

impl EventFeed {
    pub(super) fn new() -> Self {
        let (feed, fed) = mpsc::unbounded_channel::<Bytes>();
        let events = sse::events(
            UnboundedReceiverStream::new(fed).map(Ok::<_, Infallible>),
            MAX_EVENT_BYTES,
        );
        Self { feed, events }
    }

    /// Takes in a chunk; calls `each` with the data of every event it
    /// completed.
    pub(super) fn push(&mut self, chunk: Bytes, mut each: impl FnMut(&str)) {
        let _ = self.feed.send(chunk);
        while let Some(Some(event)) = self.events.next().now_or_never() {
            match event {
                Ok(event) => {
                    if let Some(data) = event.data.as_deref() {
                        each(data);
                    }
                }
                Err(e) => tracing::warn!("cannot read the model's stream: {e}"),
            }
        }
    }
}

/// A request on its way to a provider.
pub(super) struct Outbound<'a> {
    /// The caller's shape.
    pub kind: UpstreamKind,
    /// The caller's body.
    pub bytes: Bytes,
    /// Whether the answer streams.
    pub streaming: bool,
    /// The model as the caller named it.
    pub asked: &'a str,
    /// The model as the provider knows it (its prefix stripped).
    pub model: &'a str,
    /// The caller's request headers (see [`provider_headers`]).
    pub headers: &'a HeaderMap,
}

/// The API version Karta speaks to Anthropic when the caller named none
/// (or spoke the OpenAI shape).
const ANTHROPIC_VERSION: &str = "2023-06-01";

/// What of the caller's headers goes on to the provider, besides the
/// provider's key: the client's `user-agent`, and, when the body goes on in
/// the caller's own Anthropic shape, its `anthropic-version` and every
/// `anthropic-beta`. Claude Code's requests carry beta fields
/// (`context_management`, `output_config`, …) that Anthropic's API accepts
/// only with the `anthropic-beta` header naming them, so without it every
/// turn of a real provider would be refused. A translated body holds no
/// beta field and gets none. Nothing else passes: the caller's key, its
/// cookies, its session ids stay here.
fn provider_headers(
    mut builder: hyper::http::request::Builder,
    upstream: &Upstream,
    out: &Outbound<'_>,
) -> hyper::http::request::Builder {
    if let Some(agent) = out.headers.get(header::USER_AGENT) {
        builder = builder.header(header::USER_AGENT, agent);
    }
    match upstream.kind {
        UpstreamKind::Anthropic => {
            let same_shape = out.kind == UpstreamKind::Anthropic;
            let version = out
                .headers
                .get("anthropic-version")
                .filter(|_| same_shape)
                .cloned()
                .unwrap_or(HeaderValue::from_static(ANTHROPIC_VERSION));
            builder = builder
                .header("x-api-key", &upstream.api_key)
                .header("anthropic-version", version);
            if same_shape {
                for beta in out.headers.get_all("anthropic-beta") {
                    builder = builder.header("anthropic-beta", beta);
                }
            }
            builder
        }
        UpstreamKind::Openai => {
            builder.header("authorization", format!("Bearer {}", upstream.api_key))
        }
    }
}

/// The body for the provider: the caller's translated to the provider's
/// shape, or with the model renamed, or as it came; and whether an
/// OpenAI-shaped caller wants a usage chunk.
fn outbound_body(upstream: &Upstream, out: &Outbound<'_>) -> Result<(Bytes, bool), String> {
    if upstream.kind != out.kind {
        let translated = match out.kind {
            UpstreamKind::Anthropic => request::anthropic_to_openai(&out.bytes, out.model)?,
            UpstreamKind::Openai => request::openai_to_anthropic(&out.bytes, out.model)?,
        };
        return Ok((Bytes::from(translated.body), translated.include_usage));
    }
    if out.asked == out.model {
        return Ok((out.bytes.clone(), false));
    }
    let mut body: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&out.bytes)
            .map_err(|e| format!("the body is not a JSON object: {e}"))?;
    body.insert("model".into(), out.model.into());
    let bytes = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
    Ok((Bytes::from(bytes), false))
}

/// Sends the request on to the real provider with the platform's (or the
/// org's) key — translated first when the provider speaks the other shape
/// — and relays its answer back, metered (and translated back).
pub(super) async fn forward(
    gateway: &Gateway,
    upstream: &Upstream,
    call: ModelCall,
    guard: CallGuard,
    out: Outbound<'_>,
) -> Response {
    let kind = out.kind;
    let path = match upstream.kind {
        UpstreamKind::Anthropic => "/v1/messages",
        UpstreamKind::Openai => "/v1/chat/completions",
    };
    let (bytes, include_usage) = match outbound_body(upstream, &out) {
        Ok(body) => body,
        Err(message) => {
            return invalid_request(kind, &message);
        }
    };
    let url = format!("{}{path}", upstream.base_url.trim_end_matches('/'));
    let builder = provider_headers(
        hyper::Request::post(url).header("content-type", "application/json"),
        upstream,
        &out,
    );
    let Ok(outbound) = builder.body(Full::new(bytes)) else {
        return error_response(
            kind,
            StatusCode::BAD_GATEWAY,
            "api_error",
            "bad upstream URL",
        );
    };
    let response = match gateway.inner.upstreams.request(outbound).await {
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
    let advice = retry_advice(response.headers());
    let refused_key =
        upstream.org_key && (status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN);
    if refused_key || (upstream.kind != kind && !status.is_success()) {
        let said = http_body_util::Limited::new(response.into_body(), 64 * 1024)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let reason = response::error_message(&said);
        if refused_key {
            // The org's own key, refused: say so (422), not as a model
            // failure the platform could fix.
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
        // The provider's error, in the caller's shape.
        let mut answer = error_response(
            kind,
            status,
            translate::error_type(status.as_u16()),
            &reason,
        );
        answer.headers_mut().extend(advice);
        return answer;
    }
    let content_type = response.headers().get("content-type").cloned();
    let chunks = http_body_util::BodyDataStream::new(response.into_body());
    if upstream.kind != kind {
        let mut translated = if out.streaming {
            let translator = StreamTranslator::new(upstream.kind, out.asked, include_usage);
            let body = translated_stream(
                gateway.clone(),
                call,
                guard,
                upstream.kind,
                translator,
                chunks,
            );
            answer(status, "text/event-stream", body)
        } else {
            translated_unary(gateway, call, upstream.kind, kind, chunks).await
        };
        translated.headers_mut().extend(advice);
        return translated;
    }
    let body = metered(
        gateway.clone(),
        call,
        guard,
        kind.shape(),
        out.streaming,
        chunks,
    );
    let mut response = Response::builder().status(status);
    if let Some(content_type) = content_type {
        response = response.header("content-type", content_type);
    }
    let mut response = response
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    response.headers_mut().extend(advice);
    response
}

/// What of a provider's answer headers goes back to the caller besides its
/// content type: when and whether to retry — Claude Code's and OpenCode's
/// SDKs honour these on a 429 or 529; without them a harness retries on its
/// own schedule, sooner than the provider asked — and the provider's
/// request id, which its support asks for. Nothing else (cookies, rate
/// limit figures of the platform's account) passes.
const RETRY_ADVICE: &[&str] = &[
    "retry-after",
    "retry-after-ms",
    "x-should-retry",
    "request-id",
    "x-request-id",
];

fn retry_advice(headers: &HeaderMap) -> HeaderMap {
    let mut advice = HeaderMap::new();
    for name in RETRY_ADVICE {
        if let Some(value) = headers.get(*name) {
            advice.insert(*name, value.clone());
        }
    }
    advice
}

fn answer(status: StatusCode, content_type: &str, body: Body) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("cache-control", "no-cache")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// A streamed answer of shape `from`, metered event by event in that shape
/// and rewritten into the caller's as it passes.
fn translated_stream<S, E>(
    gateway: Gateway,
    call: ModelCall,
    guard: CallGuard,
    from: UpstreamKind,
    translator: StreamTranslator,
    chunks: S,
) -> Body
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Into<axum::BoxError> + 'static,
{
    struct Translating<S> {
        chunks: std::pin::Pin<Box<S>>,
        feed: EventFeed,
        translator: StreamTranslator,
        meter: UsageMeter,
        gateway: Gateway,
        call: ModelCall,
        seq: u32,
        done: bool,
        /// Held until the body is done or dropped.
        _guard: CallGuard,
    }
    let state = Translating {
        chunks: Box::pin(chunks),
        feed: EventFeed::new(),
        translator,
        meter: UsageMeter::new(from.shape()),
        gateway,
        call,
        seq: 0,
        done: false,
        _guard: guard,
    };
    Body::from_stream(futures_util::stream::unfold(state, |mut s| async move {
        while !s.done {
            let mut out = Vec::new();
            match s.chunks.next().await {
                Some(Ok(chunk)) => {
                    let Translating {
                        feed,
                        translator,
                        meter,
                        gateway,
                        call,
                        seq,
                        ..
                    } = &mut s;
                    feed.push(chunk, |data| {
                        let usage = meter.observe(data);
                        gateway.meter(call, seq, usage, meter);
                        translator.event(data, &mut out);
                    });
                }
                Some(Err(e)) => {
                    s.done = true;
                    return Some((Err::<Bytes, axum::BoxError>(e.into()), s));
                }
                None => {
                    s.done = true;
                    s.translator.finish(&mut out);
                }
            }
            if !out.is_empty() {
                return Some((Ok(Bytes::from(out)), s));
            }
        }
        None
    }))
}

/// A unary answer of shape `from`: read whole, metered in that shape, and
/// answered in the caller's.
async fn translated_unary<S, E>(
    gateway: &Gateway,
    call: ModelCall,
    from: UpstreamKind,
    to: UpstreamKind,
    chunks: S,
) -> Response
where
    S: Stream<Item = Result<Bytes, E>> + Send,
    E: std::fmt::Display,
{
    let mut chunks = std::pin::pin!(chunks);
    let mut body = Vec::new();
    while let Some(chunk) = chunks.next().await {
        match chunk {
            Ok(chunk) if body.len() + chunk.len() <= MAX_UNARY_BYTES => {
                body.extend_from_slice(&chunk);
            }
            Ok(_) => {
                return error_response(
                    to,
                    StatusCode::BAD_GATEWAY,
                    "api_error",
                    "the provider's answer is too large",
                );
            }
            Err(e) => {
                tracing::warn!("the provider's answer broke off: {e}");
                return error_response(
                    to,
                    StatusCode::BAD_GATEWAY,
                    "api_error",
                    "the provider's answer broke off",
                );
            }
        }
    }
    let mut seq = 0;
    let mut meter = UsageMeter::new(from.shape());
    let usage = meter.observe_unary(&body);
    gateway.meter(&call, &mut seq, usage, &meter);
    let translated = match from {
        UpstreamKind::Openai => response::openai_to_anthropic(&body),
        UpstreamKind::Anthropic => response::anthropic_to_openai(&body),
    };
    match translated {
        Ok(value) => answer(
            StatusCode::OK,
            "application/json",
            Body::from(value.to_string()),
        ),
        Err(message) => error_response(to, StatusCode::BAD_GATEWAY, "api_error", &message),
    }
}
