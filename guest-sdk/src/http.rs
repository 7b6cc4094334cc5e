//! Outbound HTTP to the hosts the plugin's grant lists.
//!
//! A request to any other host fails with [`HttpError::AccessDenied`] before a
//! byte leaves the machine. Redirects are not followed.
//!
//! ```no_run
//! # fn demo() -> Result<(), karta_guest::ToolError> {
//! let response = karta_guest::http::get("https://api.example.com/v1/rates")?;
//! let text = response.text()?;
//! # Ok(()) }
//! ```

use crate::__bindings::karta::plugin::http as wit;
use crate::ToolError;

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The headers, as `(name, value)` pairs.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The body as UTF-8 text.
    pub fn text(&self) -> Result<String, HttpError> {
        String::from_utf8(self.body.clone())
            .map_err(|_| HttpError::Failed("the response body is not UTF-8".into()))
    }

    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request produced no response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The host is not in this plugin's grant.
    AccessDenied(String),
    /// The request was malformed.
    InvalidRequest(String),
    /// The exchange failed.
    Failed(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AccessDenied(m) => write!(f, "access denied: {m}"),
            Self::InvalidRequest(m) => write!(f, "invalid request: {m}"),
            Self::Failed(m) => write!(f, "request failed: {m}"),
        }
    }
}

impl std::error::Error for HttpError {}

impl From<HttpError> for ToolError {
    fn from(error: HttpError) -> Self {
        match error {
            HttpError::AccessDenied(m) => ToolError::AccessDenied(m),
            HttpError::InvalidRequest(m) => ToolError::InvalidInput(m),
            HttpError::Failed(m) => ToolError::Failed(m),
        }
    }
}

/// Sends a request with any method, headers and body.
pub fn fetch(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, HttpError> {
    let request = wit::Request {
        method: method.to_owned(),
        url: url.to_owned(),
        headers: headers
            .iter()
            .map(|(name, value)| wit::Header {
                name: (*name).to_owned(),
                value: (*value).to_owned(),
            })
            .collect(),
        body: body.to_vec(),
    };
    match wit::fetch(&request) {
        Ok(r) => Ok(Response {
            status: r.status,
            headers: r.headers.into_iter().map(|h| (h.name, h.value)).collect(),
            body: r.body,
        }),
        Err(wit::HttpError::AccessDenied(m)) => Err(HttpError::AccessDenied(m)),
        Err(wit::HttpError::InvalidRequest(m)) => Err(HttpError::InvalidRequest(m)),
        Err(wit::HttpError::Failed(m)) => Err(HttpError::Failed(m)),
    }
}

/// Sends a `GET` request.
pub fn get(url: &str) -> Result<Response, HttpError> {
    fetch("GET", url, &[], &[])
}

/// Sends a `POST` request with a JSON body.
pub fn post_json(url: &str, body: &serde_json::Value) -> Result<Response, HttpError> {
    let bytes = serde_json::to_vec(body)
        .map_err(|e| HttpError::InvalidRequest(format!("could not encode the body: {e}")))?;
    fetch("POST", url, &[("content-type", "application/json")], &bytes)
}
