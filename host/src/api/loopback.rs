//! The dev-mode guard: the API answers only requests that name it by a
//! loopback address and that no other web site's page sent.
//!
//! In dev mode the API has no credentials, so "it listens on 127.0.0.1" is
//! its only protection — and a browser on the same machine breaks that:
//!
//! - **Cross-site requests (CSRF).** Any page may `fetch()` a POST with a
//!   `text/plain` or form body to `http://127.0.0.1:8000` without a CORS
//!   preflight; it cannot read the answer, but the session is created and
//!   the message sent. Browsers put the page's `Origin` on every such
//!   request (and on every POST, PUT and DELETE), and a page cannot remove
//!   or forge it, so an `Origin` that is not loopback is refused.
//! - **DNS rebinding.** A page at `evil.example` whose name is re-pointed at
//!   127.0.0.1 is same-origin with the API as far as the browser knows, so
//!   it can also *read* the answers. Its requests still carry
//!   `Host: evil.example[:port]` (a header pages cannot set), so a `Host`
//!   that is not a loopback name or address is refused.
//!
//! A request without `Host` (HTTP/1.0, or an embedder driving the router
//! in process) or without `Origin` (curl, the CLI, an SDK) passes: browsers
//! always send `Host`, and send `Origin` on every request that changes
//! something. GETs they send without `Origin` (a link, an `<img>`) are
//! cross-origin reads the browser will not let the page see.
//!
//! The other half of CSRF, the content types a page may send without a
//! preflight, is [`super::ApiJson`]'s: a JSON body must say
//! `application/json`.
//!
//! It applies to dev mode only: [`guard`] checks every request without a
//! credential while no API key exists (but the embed route, whose callers
//! are pages of customers' sites by design, and which checks their
//! `Origin` against the embed key). A request with a credential needs no
//! such guard — a browser never attaches an
//! `Authorization` header a page did not set, and rebinding gives a page
//! the address, not the credential.
//! The model gateway and the MCP server do not get it: they are reached by
//! harness processes, not browsers, and every request to them must carry a
//! session's unguessable key or token, which no web page knows — rebinding
//! gives a page the address, not the credential.

use std::net::{IpAddr, Ipv6Addr};

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::projects::Projects;

use super::error::ApiError;

/// The guard, as `axum::middleware::from_fn_with_state` middleware.
pub(super) async fn guard(
    State(projects): State<Arc<Projects>>,
    mut request: Request,
    next: Next,
) -> Response {
    let dev_request = !request.headers().contains_key(header::AUTHORIZATION)
        && request.uri().path() != "/v1/embed/session-tokens";
    if dev_request {
        // No API key at all: dev mode. (A store that cannot answer is
        // treated as dev mode here: the caller's check is the stricter one,
        // and reads again.)
        let has_keys = projects.auth().has_api_keys();
        if let Ok(has_keys) = has_keys {
            // The caller's check reads this instead of the store again.
            request.extensions_mut().insert(ApiKeysMade(has_keys));
        }
        let dev_mode = !has_keys.unwrap_or(false);
        if dev_mode && let Err(refusal) = check(request.headers()) {
            return refusal.into_response();
        }
    }
    next.run(request).await
}

/// Whether the host had any API key when [`guard`] looked, for a request
/// without credentials: the caller's own dev-mode check
/// (`super::tenant::Caller`) takes it from the request instead of reading
/// the store a second time.
#[derive(Debug, Clone, Copy)]
pub(super) struct ApiKeysMade(pub(super) bool);

/// Refuses a non-loopback `Host` (421: this server does not serve that
/// name) and a non-loopback `Origin` (403).
pub(super) fn check(headers: &HeaderMap) -> Result<(), ApiError> {
    if let Some(host) = headers.get(header::HOST) {
        // Not text, or not a loopback authority: either way not us.
        let loopback = host.to_str().is_ok_and(is_loopback_authority);
        if !loopback {
            return Err(ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                "host_not_allowed",
                "in dev mode the API answers only requests addressed to a loopback name \
                 (localhost, 127.0.0.1, [::1]); the Host header names another",
            ));
        }
    }
    // Several `Origin` headers are not something a browser sends; every one
    // must be loopback.
    for origin in headers.get_all(header::ORIGIN) {
        let loopback = origin.to_str().is_ok_and(is_loopback_origin);
        if !loopback {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                "in dev mode the API refuses requests from web pages of other origins; \
                 only http(s)://localhost, 127.0.0.1 and [::1] origins may call it",
            ));
        }
    }
    Ok(())
}

/// `http://` or `https://` plus a loopback authority, nothing after it
/// (`null`, other schemes and paths are not loopback origins).
fn is_loopback_origin(origin: &str) -> bool {
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    authority.is_some_and(is_loopback_authority)
}

/// `host[:port]` where host is `localhost`, an IPv4 address in 127.0.0.0/8
/// or `[::1]` (or an IPv4-mapped form of a 127 address).
fn is_loopback_authority(authority: &str) -> bool {
    let (host, port) = match authority.strip_prefix('[') {
        // `[v6]` or `[v6]:port`.
        Some(rest) => match rest.split_once(']') {
            Some((v6, after)) => match after.strip_prefix(':') {
                Some(port) => (Host::V6(v6), Some(port)),
                None if after.is_empty() => (Host::V6(v6), None),
                None => return false,
            },
            None => return false,
        },
        None => match authority.split_once(':') {
            Some((name, port)) => (Host::Name(name), Some(port)),
            None => (Host::Name(authority), None),
        },
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.parse::<u16>().is_ok());
    let host_ok = match host {
        Host::V6(v6) => v6.parse::<Ipv6Addr>().is_ok_and(is_loopback_v6),
        // `localhost` is loopback by definition (RFC 6761); browsers never
        // resolve it through DNS, so a rebinding page cannot use it.
        Host::Name(name) => {
            name.eq_ignore_ascii_case("localhost")
                || name
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| matches!(ip, IpAddr::V4(v4) if v4.is_loopback()))
        }
    };
    port_ok && host_ok
}

enum Host<'a> {
    V6(&'a str),
    Name(&'a str),
}

fn is_loopback_v6(ip: Ipv6Addr) -> bool {
    ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_authorities() {
        for ok in [
            "localhost",
            "LocalHost:8000",
            "127.0.0.1",
            "127.0.0.1:8000",
            "127.1.2.3:1",
            "[::1]",
            "[::1]:8000",
            "[::ffff:127.0.0.1]:80",
        ] {
            assert!(is_loopback_authority(ok), "{ok}");
        }
        for refused in [
            "evil.example",
            "evil.example:8000",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "10.0.0.1:8000",
            "0.0.0.0:8000",
            "[::]:8000",
            "[::1",
            "[::1]x",
            "127.0.0.1:",
            "127.0.0.1:99999",
            "127.0.0.1:80:80",
            "",
        ] {
            assert!(!is_loopback_authority(refused), "{refused}");
        }
    }

    #[test]
    fn loopback_origins() {
        for ok in [
            "http://localhost:3000",
            "https://127.0.0.1",
            "http://[::1]:8000",
        ] {
            assert!(is_loopback_origin(ok), "{ok}");
        }
        for refused in [
            "https://evil.example",
            "null",
            "file://",
            "http://localhost:3000/",
            "ftp://localhost",
            "http://localhost@evil.example",
        ] {
            assert!(!is_loopback_origin(refused), "{refused}");
        }
    }
}
