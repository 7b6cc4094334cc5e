//! The setup script's only way out: an HTTP proxy in the host that reaches
//! the hosts the operator allows and nothing else.
//!
//! A setup script runs in a jail whose network namespace has only a
//! loopback; the host relays one port into it — this proxy's (the jail
//! binds `127.0.0.1:<port>` inside, like the gateway's for a harness). The
//! script's environment names it (`HTTPS_PROXY`, `HTTP_PROXY`, `PIP_PROXY`,
//! `npm_config_proxy`, …), which is how pip, npm, curl and Python's
//! `urllib` find it. It speaks:
//!
//! - `CONNECT host:port` — a TCP tunnel (HTTPS; TLS runs end to end between
//!   the script and the registry, the proxy sees only the name);
//! - `GET http://host[:port]/path` — plain HTTP, forwarded one request per
//!   connection (`Connection: close` towards the server), which is all a
//!   package manager's occasional plain-HTTP index needs.
//!
//! Every request's host is checked **before anything is resolved or
//! connected**: it must be a name on the allow-list (exactly, or under a
//! `*.domain` entry); an IP literal is refused whatever the list says (the
//! list names hosts, and an address would bypass it). Then the name is
//! resolved once in the host and every address is judged by the plugin
//! runtime's [`NetPolicy`] — loopback, private, link-local (cloud
//! metadata), … are refused unless the operator allowed the range — and
//! only what passed is connected to, so a name cannot be made to point at
//! the host's own ports or the operator's network. A refusal is a `403`
//! whose body says why, and a warning in the host's log.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::plugin::net::NetPolicy;

/// The largest request head read (request line and headers).
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// How long a client has to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// How long resolving a name, or connecting to one address, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// How many refusals are remembered (for the failure message).
const MAX_REFUSALS_KEPT: usize = 32;

/// Which hosts a setup script may reach.
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    /// Host names (lowercase, no trailing dot), or `*.domain` for any name
    /// under `domain`.
    hosts: Vec<String>,
    /// The address check, with the operator's exceptions.
    net: NetPolicy,
}

impl EgressPolicy {
    /// Allows the names in `hosts` (`name` or `*.domain`), connecting only to
    /// public addresses and those in `allow_net`.
    pub fn new(hosts: &[String], allow_net: Vec<IpNet>) -> Self {
        Self {
            hosts: hosts.iter().map(|h| normalize(h)).collect(),
            net: NetPolicy::new(allow_net),
        }
    }

    /// Whether `host` may be asked for at all (before any lookup): a name
    /// on the list. `Err` says why not.
    pub fn check_name(&self, host: &str) -> Result<String, String> {
        let host = normalize(host);
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if bare.parse::<IpAddr>().is_ok() {
            return Err(
                "an IP address: the setup allow-list names hosts, and addresses are refused".into(),
            );
        }
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err("not a host name".into());
        }
        let listed = self
            .hosts
            .iter()
            .any(|entry| match entry.strip_prefix("*.") {
                Some(domain) => host
                    .strip_suffix(domain)
                    .is_some_and(|rest| rest.ends_with('.')),
                None => *entry == host,
            });
        if !listed {
            return Err(
                "not on the setup allow-list (the operator adds hosts with `karta serve --setup-allow-host`)"
                    .into(),
            );
        }
        Ok(host)
    }

    /// Resolves an allowed `host` once and keeps the addresses the policy
    /// allows; `Err` says why none is left.
    async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        let found = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| "resolving it timed out".to_owned())?
            .map_err(|e| format!("cannot resolve it: {e}"))?;
        let mut allowed = Vec::new();
        let mut refused = Vec::new();
        for addr in found {
            match self.net.check(addr.ip()) {
                Ok(()) => allowed.push(addr),
                Err(reason) => refused.push(format!("{} ({reason})", addr.ip())),
            }
        }
        if allowed.is_empty() {
            return Err(if refused.is_empty() {
                "it resolves to no address".to_owned()
            } else {
                format!(
                    "it resolves only to refused addresses: {} (the operator allows ranges with `--setup-allow-net`)",
                    refused.join(", ")
                )
            });
        }
        Ok(allowed)
    }
}

/// Lowercase, without the trailing dot of a fully qualified name.
fn normalize(host: &str) -> String {
    host.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// A running proxy on a loopback port of the host; stopped when dropped.
#[derive(Debug)]
pub struct EgressProxy {
    addr: SocketAddr,
    refused: Arc<Mutex<Vec<String>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        // The accept task owns every connection's task: all end with it.
        self.accept.abort();
    }
}

impl EgressProxy {
    /// Starts a proxy for `policy` on `127.0.0.1` (an ephemeral port).
    pub async fn start(policy: EgressPolicy) -> std::io::Result<Self> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let refused = Arc::new(Mutex::new(Vec::new()));
        let accept = tokio::spawn(accept_loop(listener, Arc::new(policy), refused.clone()));
        Ok(Self {
            addr,
            refused,
            accept,
        })
    }

    /// The port it listens on (on the host's loopback; relayed into the
    /// jail at the same number).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:<port>`, as proxy variables name it.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What it refused so far (`host:port: why`), oldest first, bounded.
    pub fn refused(&self) -> Vec<String> {
        self.refused.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

async fn accept_loop(
    listener: TcpListener,
    policy: Arc<EgressPolicy>,
    refused: Arc<Mutex<Vec<String>>>,
) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let Ok((client, _)) = listener.accept().await else {
            // Out of descriptors, most likely: back off rather than spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        connections.spawn(serve(client, policy.clone(), refused.clone()));
    }
}

/// One client connection: one request, then a tunnel or a forwarded
/// exchange.
async fn serve(mut client: TcpStream, policy: Arc<EgressPolicy>, refused: Arc<Mutex<Vec<String>>>) {
    let _ = client.set_nodelay(true);
    let (head, rest) = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut client)).await {
        Ok(Ok(read)) => read,
        Ok(Err(message)) => {
            respond(&mut client, 400, "Bad Request", &message).await;
            return;
        }
        Err(_) => return,
    };
    let request = match Request::parse(&head) {
        Ok(request) => request,
        Err(message) => {
            respond(&mut client, 400, "Bad Request", &message).await;
            return;
        }
    };
    let (host, port) = match request.destination() {
        Ok(destination) => destination,
        Err(message) => {
            respond(&mut client, 400, "Bad Request", &message).await;
            return;
        }
    };
    let refuse = |why: &str| {
        tracing::warn!(
            target: "karta_host::setup",
            "setup proxy refused {host}:{port}: {why}"
        );
        if let Ok(mut list) = refused.lock()
            && list.len() < MAX_REFUSALS_KEPT
        {
            list.push(format!("{host}:{port}: {why}"));
        }
    };
    let name = match policy.check_name(&host) {
        Ok(name) => name,
        Err(why) => {
            refuse(&why);
            respond(&mut client, 403, "Forbidden", &format!("{host}: {why}")).await;
            return;
        }
    };
    let addresses = match policy.resolve(&name, port).await {
        Ok(addresses) => addresses,
        Err(why) => {
            refuse(&why);
            respond(&mut client, 403, "Forbidden", &format!("{host}: {why}")).await;
            return;
        }
    };
    let Some(mut upstream) = connect_any(&addresses).await else {
        respond(
            &mut client,
            502,
            "Bad Gateway",
            &format!("{host}:{port}: cannot connect"),
        )
        .await;
        return;
    };
    tracing::debug!(target: "karta_host::setup", "setup proxy: {} {host}:{port}", request.method);
    let opening = if request.method.eq_ignore_ascii_case("CONNECT") {
        if client
            .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
        rest
    } else {
        let mut forwarded = request.origin_form_head();
        forwarded.extend_from_slice(&rest);
        forwarded
    };
    if upstream.write_all(&opening).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

async fn connect_any(addresses: &[SocketAddr]) -> Option<TcpStream> {
    for addr in addresses {
        if let Ok(Ok(stream)) =
            tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await
        {
            let _ = stream.set_nodelay(true);
            return Some(stream);
        }
    }
    None
}

/// Reads up to the end of the request head; returns the head (with its
/// blank line) and whatever the client sent after it.
async fn read_head(client: &mut TcpStream) -> Result<(Vec<u8>, Vec<u8>), String> {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let read = client
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the request: {e}"))?;
        if read == 0 {
            return Err("the connection closed before the request ended".into());
        }
        // Search from a little before the new bytes: the blank line may
        // straddle two reads.
        let from = buffer.len().saturating_sub(3);
        buffer.extend_from_slice(&chunk[..read]);
        if let Some(at) = buffer[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            let end = from + at + 4;
            let rest = buffer.split_off(end);
            return Ok((buffer, rest));
        }
        if buffer.len() > MAX_HEAD_BYTES {
            return Err(format!(
                "the request head is longer than {MAX_HEAD_BYTES} bytes"
            ));
        }
    }
}

/// A request head, as far as the proxy reads it.
#[derive(Debug)]
struct Request {
    method: String,
    target: String,
    version: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn parse(head: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(head).map_err(|_| "the request head is not text")?;
        let mut lines = text.split("\r\n");
        let line = lines.next().unwrap_or_default();
        let mut parts = line.split(' ');
        let (Some(method), Some(target), Some(version), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("not a request line: {line:?}"));
        };
        if !version.starts_with("HTTP/1.") || method.is_empty() || target.is_empty() {
            return Err(format!("not an HTTP/1 request line: {line:?}"));
        }
        let headers = lines
            .take_while(|l| !l.is_empty())
            .map(|l| match l.split_once(':') {
                Some((name, value)) => Ok((name.trim().to_owned(), value.trim().to_owned())),
                None => Err(format!("not a header line: {l:?}")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            method: method.to_owned(),
            target: target.to_owned(),
            version: version.to_owned(),
            headers,
        })
    }

    /// The host and port the request is for.
    fn destination(&self) -> Result<(String, u16), String> {
        if self.method.eq_ignore_ascii_case("CONNECT") {
            return split_authority(&self.target, None);
        }
        let Some(rest) = strip_prefix_ignore_case(&self.target, "http://") else {
            return Err(format!(
                "{} is not an absolute http:// URL (HTTPS goes through CONNECT)",
                self.target
            ));
        };
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        split_authority(&rest[..end], Some(80))
    }

    /// The head to send the server: the path only on the request line,
    /// the proxy's own headers dropped, one request per connection.
    fn origin_form_head(&self) -> Vec<u8> {
        let rest = strip_prefix_ignore_case(&self.target, "http://").unwrap_or(&self.target);
        let path = match rest.find(['/', '?']) {
            Some(at) if rest[at..].starts_with('/') => rest[at..].to_owned(),
            Some(at) => format!("/{}", &rest[at..]),
            None => "/".to_owned(),
        };
        let mut head = format!("{} {path} {}\r\n", self.method, self.version);
        for (name, value) in &self.headers {
            let lower = name.to_ascii_lowercase();
            if matches!(
                lower.as_str(),
                "proxy-connection" | "proxy-authorization" | "connection" | "keep-alive"
            ) {
                continue;
            }
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("Connection: close\r\n\r\n");
        head.into_bytes()
    }
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// `host:port` (or `[v6]:port`), the port defaulting to `default`.
fn split_authority(authority: &str, default: Option<u16>) -> Result<(String, u16), String> {
    if authority.contains('@') {
        return Err("credentials in the URL are not supported".into());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        match v6.split_once(']') {
            Some((host, rest)) => (format!("[{host}]"), rest.strip_prefix(':')),
            None => return Err(format!("{authority} is not host:port")),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (authority.to_owned(), None),
        }
    };
    let port = match (port, default) {
        (Some(port), _) => port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{authority}: not a port"))?,
        (None, Some(default)) => default,
        (None, None) => return Err(format!("{authority} is not host:port")),
    };
    Ok((host, port))
}

async fn respond(client: &mut TcpStream, code: u16, reason: &str, message: &str) {
    let body = format!("karta setup proxy: {message}\n");
    let response = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(response.as_bytes()).await;
    let _ = client.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> EgressPolicy {
        EgressPolicy::new(&["pypi.org".into(), "*.npmjs.org".into()], Vec::new())
    }

    #[test]
    fn names_on_the_list_pass_and_nothing_else() {
        let p = policy();
        assert_eq!(p.check_name("PyPI.org.").as_deref(), Ok("pypi.org"));
        assert!(p.check_name("registry.npmjs.org").is_ok());
        assert!(p.check_name("npmjs.org").is_err(), "*.x is under x only");
        assert!(p.check_name("evilnpmjs.org").is_err());
        assert!(p.check_name("pypi.org.evil.com").is_err());
        for literal in ["127.0.0.1", "[::1]", "::1", "169.254.169.254"] {
            let why = p.check_name(literal).expect_err(literal);
            assert!(why.contains("IP address"), "{literal}: {why}");
        }
        assert!(p.check_name("a b").is_err());
    }

    #[test]
    fn destinations_and_forwarded_heads() {
        let head = b"GET http://pypi.org:8080/simple?x=1 HTTP/1.1\r\nHost: pypi.org:8080\r\nProxy-Connection: keep-alive\r\n\r\n";
        let request = Request::parse(head).expect("parse");
        assert_eq!(request.destination(), Ok(("pypi.org".to_owned(), 8080)));
        assert_eq!(
            String::from_utf8_lossy(&request.origin_form_head()),
            "GET /simple?x=1 HTTP/1.1\r\nHost: pypi.org:8080\r\nConnection: close\r\n\r\n"
        );
        let connect = Request::parse(b"CONNECT pypi.org:443 HTTP/1.1\r\n\r\n").expect("parse");
        assert_eq!(connect.destination(), Ok(("pypi.org".to_owned(), 443)));
        let v6 = Request::parse(b"CONNECT [::1]:443 HTTP/1.1\r\n\r\n").expect("parse");
        assert_eq!(v6.destination(), Ok(("[::1]".to_owned(), 443)));
        let plain = Request::parse(b"GET http://pypi.org HTTP/1.1\r\n\r\n").expect("parse");
        assert_eq!(plain.destination(), Ok(("pypi.org".to_owned(), 80)));
        assert!(
            Request::parse(b"GET /x HTTP/1.1\r\n\r\n")
                .expect("parse")
                .destination()
                .is_err()
        );
        assert!(
            Request::parse(b"CONNECT pypi.org HTTP/1.1\r\n\r\n")
                .expect("parse")
                .destination()
                .is_err()
        );
    }
}
