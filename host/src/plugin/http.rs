//! The `karta:plugin/http` import: outbound HTTP behind the grant's
//! allow-list.
//!
//! The check happens here, in the host implementation of the import, before
//! any connection is made: a host not listed answers `access-denied`. Redirects
//! are not followed (the next hop could be a host not granted), response
//! bodies are capped, and the whole exchange counts against the call's
//! wall-clock deadline.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::bindings::karta::plugin::http::{self as wit, Header, HttpError, Request, Response};
use super::error::RuntimeError;
use super::state::CallState;

/// Largest response body a plugin may receive.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Largest request body a plugin may send.
const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

/// A shared HTTP(S) client; cheap to clone.
#[derive(Clone)]
pub(crate) struct HttpClient {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl HttpClient {
    pub(crate) fn new() -> Result<Self, RuntimeError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self { client })
    }

    async fn send(&self, request: hyper::Request<Full<Bytes>>) -> Result<Response, HttpError> {
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| HttpError::Failed(format!("{e:#}")))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .filter_map(|(name, value)| {
                Some(Header {
                    name: name.as_str().to_owned(),
                    value: value.to_str().ok()?.to_owned(),
                })
            })
            .collect();
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| {
                HttpError::Failed(format!(
                    "reading the response failed (bodies are capped at {MAX_RESPONSE_BYTES} bytes): {e}"
                ))
            })?
            .to_bytes();
        Ok(Response {
            status,
            headers,
            body: body.to_vec(),
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

impl wit::Host for CallState {
    async fn fetch(&mut self, request: Request) -> Result<Response, HttpError> {
        let url = request.url.clone();
        let result = match prepare(self, request) {
            Ok(request) => self.http.send(request).await,
            Err(e) => Err(e),
        };
        match &result {
            Ok(r) => self.log.push("http", &format!("{url} -> {}", r.status)),
            Err(e) => self.log.push("http", &format!("{url} -> {e:?}")),
        }
        result
    }
}
