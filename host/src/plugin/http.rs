//! The `karta:plugin/http` import: outbound HTTP behind the grant's
//! allow-list and the operator's network policy.
//!
//! Two checks, both before any byte is sent: the URL's host must be in the
//! grant's `allowed_hosts` (here, in [`prepare`]), and every address the host
//! name resolves to is judged by [`super::net::NetPolicy`] inside the
//! connector, which connects only to addresses that passed — so a granted
//! name that resolves to loopback or a metadata address is refused. Either
//! refusal answers the guest `access-denied`, saying why. Redirects are not
//! followed (the next hop could be a host not granted), and the whole
//! exchange counts against the call's wall-clock deadline.
//!
//! Host memory: the response body is read into one buffer (no second copy)
//! capped at the smaller of [`MAX_RESPONSE_BYTES`] and what the guest's
//! memory cap has left — the guest must copy the body into its own memory,
//! so a larger one could only fail there, after the host held it. Every byte
//! the guest sends or receives is charged as fuel (see
//! [`super::state::FUEL_PER_HOST_BYTE`]).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::bindings::karta::plugin::http::{self as wit, Header, HttpError, Request, Response};
use super::error::RuntimeError;
use super::net::{GuardedConnector, NetPolicy, find_denial};
use super::state::CallState;

/// Largest response body a plugin may receive (less when its memory cap
/// leaves less room).
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Largest request body a plugin may send.
const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

/// A shared HTTP(S) client; cheap to clone.
#[derive(Clone)]
pub(crate) struct HttpClient {
    client: Client<hyper_rustls::HttpsConnector<GuardedConnector>, Full<Bytes>>,
}

impl HttpClient {
    pub(crate) fn new(policy: NetPolicy) -> Result<Self, RuntimeError> {
        let http = GuardedConnector::new(policy, Duration::from_secs(10));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self { client })
    }

    /// Sends `request` and reads the answer, its body capped at `cap` bytes.
    async fn send(
        &self,
        request: hyper::Request<Full<Bytes>>,
        cap: usize,
    ) -> Result<Response, HttpError> {
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| match find_denial(&e) {
                Some(denied) => HttpError::AccessDenied(denied.to_string()),
                None => HttpError::Failed(format!("{e:#}")),
            })?;
        let status = response.status().as_u16();
        let mut header_bytes = 0usize;
        let headers: Vec<Header> = response
            .headers()
            .iter()
            .filter_map(|(name, value)| {
                let header = Header {
                    name: name.as_str().to_owned(),
                    value: value.to_str().ok()?.to_owned(),
                };
                header_bytes += header.name.len() + header.value.len();
                Some(header)
            })
            .collect();
        // Headers land in the guest's memory too.
        let cap = cap.saturating_sub(header_bytes);
        let too_large = || {
            HttpError::Failed(format!(
                "the response body is larger than {cap} bytes, the most this call may \
                 receive (the smaller of {MAX_RESPONSE_BYTES} bytes and what the plugin's \
                 memory cap leaves)"
            ))
        };
        let announced = response
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|n| n > cap as u64) {
            return Err(too_large());
        }
        // One buffer, filled frame by frame: the only host-side copy.
        let mut body = Vec::with_capacity(announced.map_or(0, |n| n as usize));
        let mut incoming = response.into_body();
        while let Some(frame) = incoming.frame().await {
            let frame = frame
                .map_err(|e| HttpError::Failed(format!("reading the response failed: {e}")))?;
            if let Ok(data) = frame.into_data() {
                if body.len() + data.len() > cap {
                    return Err(too_large());
                }
                body.extend_from_slice(&data);
            }
        }
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

/// Checks `request` against the grant and turns it into a hyper request.
fn prepare(state: &CallState, request: Request) -> Result<hyper::Request<Full<Bytes>>, HttpError> {
    let uri: hyper::Uri = request
        .url
        .parse()
        .map_err(|e| HttpError::InvalidRequest(format!("bad URL `{}`: {e}", request.url)))?;
    let scheme = uri.scheme_str().unwrap_or("");
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        _ => {
            return Err(HttpError::InvalidRequest(format!(
                "only http:// and https:// URLs are supported, not `{}`",
                request.url
            )));
        }
    };
    let host = uri
        .host()
        .ok_or_else(|| HttpError::InvalidRequest(format!("no host in `{}`", request.url)))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(default_port);
    if !state.grant.allows_host(host, port) {
        return Err(HttpError::AccessDenied(format!(
            "{host}:{port} is not in this plugin's allowed_hosts"
        )));
    }
    let method = match request.method.to_ascii_uppercase().as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD") => m.to_owned(),
        other => {
            return Err(HttpError::InvalidRequest(format!(
                "method `{other}` is not supported"
            )));
        }
    };
    if request.body.len() > MAX_REQUEST_BYTES {
        return Err(HttpError::InvalidRequest(format!(
            "request bodies are capped at {MAX_REQUEST_BYTES} bytes"
        )));
    }
    let mut builder = hyper::Request::builder().method(method.as_str()).uri(uri);
    for Header { name, value } in &request.headers {
        if name.eq_ignore_ascii_case("host") || name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        builder = builder.header(name.as_str(), value.as_str());
    }
    builder
        .body(Full::new(Bytes::from(request.body)))
        .map_err(|e| HttpError::InvalidRequest(format!("bad request: {e}")))
}

/// The first characters of a URL, for a log line (the whole of it is the
/// guest's to size).
fn shown(url: &str) -> &str {
    match url.char_indices().nth(200) {
        Some((end, _)) => &url[..end],
        None => url,
    }
}

impl wit::Host for CallState {
    async fn fetch(&mut self, request: Request) -> Result<Response, HttpError> {
        // What the guest handed over was copied out of its memory: charge it.
        let sent = request.url.len()
            + request.body.len()
            + request
                .headers
                .iter()
                .map(|h| h.name.len() + h.value.len())
                .sum::<usize>();
        self.charge_host_bytes(sent);
        let line = shown(&request.url).to_owned();
        let cap = MAX_RESPONSE_BYTES.min(self.limiter.room());
        let result = match prepare(self, request) {
            Ok(request) => self.http.send(request, cap).await,
            Err(e) => Err(e),
        };
        match &result {
            Ok(r) => {
                let received = r.body.len()
                    + r.headers
                        .iter()
                        .map(|h| h.name.len() + h.value.len())
                        .sum::<usize>();
                self.charge_host_bytes(received);
                self.log.push("http", &format!("{line} -> {}", r.status));
            }
            Err(e) => self.log.push("http", &format!("{line} -> {e:?}")),
        }
        result
    }
}
