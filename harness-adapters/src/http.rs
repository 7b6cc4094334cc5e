//! The HTTP client the harnesses share: one connection pool for OpenCode's
//! loopback server (and the builtin loop, when it is given a gateway URL
//! rather than the host's in-process gateway), created once by the host and
//! cloned into every turn.
//!
//! Every connection sets `TCP_NODELAY`: requests and SSE events here are
//! small writes, and Nagle's algorithm meeting the peer's delayed ACK costs
//! ~40 ms per exchange on Linux (measured on the gateway path: see
//! BENCHMARKS.md, "overhead").

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::sse;

/// The largest JSON answer read.
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// The largest single SSE event kept.
pub const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// A pooled HTTP/1 client for plain-HTTP peers on loopback (cheap to clone).
#[derive(Clone)]
pub struct HttpClient {
    client: hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
    /// A client whose connections set `TCP_NODELAY` and give up connecting
    /// after 5 s.
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        Self {
            client: hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                .build(connector),
        }
    }

    /// Sends a request.
    pub async fn request(
        &self,
        request: hyper::Request<Full<Bytes>>,
    ) -> Result<hyper::Response<Incoming>, hyper_util::client::legacy::Error> {
        self.client.request(request).await
    }

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
        self.request(request)
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
        use futures_util::StreamExt;

        let response = self.send("GET", url, None, "text/event-stream").await?;
        if !response.status().is_success() {
            return Err(format!("GET {url}: {}", response.status()));
        }
        let mut stream = sse::body_events(response.into_body(), MAX_EVENT_BYTES);
        let url = url.to_owned();
        tokio::spawn(async move {
            while let Some(event) = stream.next().await {
                match event {
                    Ok(event) => {
                        if let Some(value) = sse::json_data::<Value>(&event)
                            && events.send(value).is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!("the event stream {url} ended: {e}");
                        return;
                    }
                }
            }
        });
        Ok(())
    }
}
