//! A small HTTP/1 client for loopback JSON and Server-Sent-Events, shared by
//! the process harnesses that talk HTTP (OpenCode).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::sync::mpsc;

/// The largest JSON answer read.
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// The largest single SSE event kept.
const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// A loopback HTTP client.
#[derive(Clone)]
pub struct LoopbackClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for LoopbackClient {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }
}

impl LoopbackClient {
    async fn send(
        &self,
        method: &str,
        url: &str,
        body: Option<&Value>,
        accept: &str,
    ) -> Result<hyper::Response<Incoming>, String> {
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let request = hyper::Request::builder()
            .method(method)
            .uri(url)
            .header("content-type", "application/json")
            .header("accept", accept)
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| format!("bad request to {url}: {e}"))?;
        self.client
            .request(request)
            .await
            .map_err(|e| format!("{method} {url}: {e}"))
    }

    /// Sends a JSON request; returns the status and the JSON answer (`null`
    /// when empty or not JSON).
    pub async fn json(
        &self,
        method: &str,
        url: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), String> {
        let response = self.send(method, url, body, "application/json").await?;
        let status = response.status().as_u16();
        let bytes = http_body_util::Limited::new(response.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| format!("{method} {url}: reading the answer: {e}"))?
            .to_bytes();
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// Opens an SSE stream and forwards each event's `data` (parsed as JSON)
    /// to `events` until the stream ends or nobody listens.
    pub async fn subscribe(
        &self,
        url: &str,
        events: mpsc::UnboundedSender<Value>,
    ) -> Result<(), String> {
        let response = self.send("GET", url, None, "text/event-stream").await?;
        if !response.status().is_success() {
            return Err(format!("GET {url}: {}", response.status()));
        }
        let mut body = response.into_body();
        tokio::spawn(async move {
            let mut buffer: Vec<u8> = Vec::new();
            while let Some(Ok(frame)) = body.frame().await {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                buffer.extend_from_slice(&data);
                while let Some(end) = find_event_end(&buffer) {
                    let event: Vec<u8> = buffer.drain(..end).collect();
                    if let Some(value) = parse_event(&event)
                        && events.send(value).is_err()
                    {
                        return;
                    }
                }
                if buffer.len() > MAX_EVENT_BYTES {
                    tracing::warn!("dropping an SSE event larger than {MAX_EVENT_BYTES} bytes");
                    buffer.clear();
                }
            }
        });
        Ok(())
    }
}

/// The end (exclusive, past the blank line) of the first complete event.
fn find_event_end(buffer: &[u8]) -> Option<usize> {
    let lf = buffer.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The JSON of an event's `data:` lines.
fn parse_event(event: &[u8]) -> Option<Value> {
    let text = std::str::from_utf8(event).ok()?;
    let data: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect();
    if data.is_empty() {
        return None;
    }
    serde_json::from_str(&data.join("\n")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_parses_events() {
        let stream = b"data: {\"a\":1}\n\nevent: x\ndata: {\"b\":\ndata: 2}\r\n\r\ndata: partial";
        let end = find_event_end(stream).expect("first");
        assert_eq!(
            parse_event(&stream[..end]),
            Some(serde_json::json!({"a": 1}))
        );
        let rest = &stream[end..];
        let end2 = find_event_end(rest).expect("second");
        assert_eq!(
            parse_event(&rest[..end2]),
            Some(serde_json::json!({"b": 2}))
        );
        assert_eq!(find_event_end(&rest[end2..]), None);
    }
}
