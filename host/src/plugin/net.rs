//! Where plugin HTTP may connect: the address check and the connector that
//! enforces it.
//!
//! A grant's `allowed_hosts` names hosts; it says nothing about where a name
//! resolves. A granted `api.example.com` can be made to resolve to
//! `127.0.0.1` (the host's own gateway and MCP ports), to `169.254.169.254`
//! (a cloud's metadata service, with its credentials) or to an address on the
//! operator's private network — at the first lookup or, by DNS rebinding, at
//! a later one. So the check is made on the *address connected to*:
//! [`GuardedConnector`] resolves a name once, drops every address
//! [`NetPolicy::check`] refuses, and connects only to what is left. Nothing
//! resolves the name a second time, so there is no window for rebinding.
//!
//! Refused unless the operator allows them by CIDR
//! (`karta serve --plugin-allow-net`): loopback, private (RFC 1918,
//! `fc00::/7`), shared/CGNAT (`100.64.0.0/10`), link-local (`169.254.0.0/16`,
//! `fe80::/10`), unspecified (`0.0.0.0/8`, `::` — Linux connects `0.0.0.0` to
//! loopback), multicast, broadcast and the other reserved IPv4 space
//! (`240.0.0.0/4`), the IETF protocol, benchmarking and documentation ranges,
//! the deprecated IPv6 site-local range and discard prefix. IPv6 forms that
//! carry an IPv4 address (mapped `::ffff:a.b.c.d`, compatible `::a.b.c.d`,
//! SIIT `::ffff:0:a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are
//! judged by the IPv4 address they reach.
//!
//! Not covered here: the host's own API port when it listens on a public
//! address of the machine (it answers only with API keys there); the gateway
//! and MCP server listen on loopback, refused unless the operator allows it.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Uri;
use hyper_util::rt::TokioIo;
use ipnet::IpNet;
use tokio::net::TcpStream;

/// The operator's exceptions to the refused ranges.
#[derive(Debug, Clone, Default)]
pub(crate) struct NetPolicy {
    allow: Vec<IpNet>,
}

impl NetPolicy {
    pub(crate) fn new(allow: Vec<IpNet>) -> Self {
        Self { allow }
    }

    /// `Ok` when a plugin may connect to `ip`; otherwise why not.
    ///
    /// An operator's CIDR allows an address when it contains the address as
    /// written or the IPv4 address an IPv6 form carries (allowing
    /// `127.0.0.1/32` allows `::ffff:127.0.0.1` too: the same destination).
    pub(crate) fn check(&self, ip: IpAddr) -> Result<(), &'static str> {
        let Some(reason) = refused_range(ip) else {
            return Ok(());
        };
        let embedded = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map(|(v4, _)| IpAddr::V4(v4)),
            IpAddr::V4(_) => None,
        };
        let allowed = self
            .allow
            .iter()
            .any(|net| net.contains(&ip) || embedded.is_some_and(|v4| net.contains(&v4)));
        if allowed { Ok(()) } else { Err(reason) }
    }
}

/// The refused range `ip` falls in, named for the error message; `None` for
/// an ordinary public address.
pub(crate) fn refused_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            // The v4 range says where it goes; the form says how it got there.
            Some((v4, form)) => refused_v4(v4).map(|_| form),
            None => refused_v6(v6),
        },
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, ..) => "unspecified (0.0.0.0/8, which Linux connects to loopback)",
        (127, ..) => "loopback",
        (10, ..) | (172, 16..=31, _) | (192, 168, _) => "private (RFC 1918)",
        (100, 64..=127, _) => "shared address space / CGNAT (100.64.0.0/10)",
        (169, 254, _) => "link-local (169.254.0.0/16, cloud metadata services)",
        (192, 0, 0) => "IETF protocol assignments (192.0.0.0/24)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (198, 18..=19, _) => "benchmarking (198.18.0.0/15)",
        (224..=239, ..) => "multicast",
        (255, 255, 255) if ip == Ipv4Addr::BROADCAST => "broadcast",
        (240..=255, ..) => "reserved (240.0.0.0/4)",
        _ => return None,
    })
}

fn refused_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    Some(if ip.is_unspecified() {
        "unspecified"
    } else if ip.is_loopback() {
        "loopback"
    } else if s[0] & 0xfe00 == 0xfc00 {
        "private (unique local fc00::/7)"
    } else if s[0] & 0xffc0 == 0xfe80 {
        "link-local (fe80::/10)"
    } else if s[0] & 0xffc0 == 0xfec0 {
        "site-local (fec0::/10, deprecated)"
    } else if s[0] & 0xff00 == 0xff00 {
        "multicast"
    } else if s[0] == 0x2001 && s[1] == 0x0db8 {
        "documentation (2001:db8::/32)"
    } else if s[0] == 0x2001 && s[1] < 0x0200 {
        // Teredo, ORCHID, AS112 and friends: not ordinary destinations.
        "IETF protocol assignments (2001::/23)"
    } else if s[0] == 0x0100 && s[1..4] == [0, 0, 0] {
        "discard (100::/64)"
    } else if s[0] == 0x0064 && s[1] == 0xff9b && s[2] == 0x0001 {
        "local-use NAT64 (64:ff9b:1::/48)"
    } else {
        return None;
    })
}

/// The IPv4 address an IPv6 form carries, and the name of the form.
fn embedded_v4(ip: Ipv6Addr) -> Option<(Ipv4Addr, &'static str)> {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some((low, "IPv4-mapped IPv6 of a refused IPv4 range")),
        [0, 0, 0, 0, 0xffff, 0, _, _] => Some((low, "SIIT IPv6 of a refused IPv4 range")),
        // `::` and `::1` are IPv6's own unspecified and loopback addresses.
        [0, 0, 0, 0, 0, 0, 0, 0 | 1] => None,
        [0, 0, 0, 0, 0, 0, _, _] => Some((low, "IPv4-compatible IPv6 of a refused IPv4 range")),
        [0x0064, 0xff9b, 0, 0, 0, 0, _, _] => Some((low, "NAT64 IPv6 of a refused IPv4 range")),
        [0x2002, hi, lo, ..] => Some((
            Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8),
            "6to4 IPv6 of a refused IPv4 range",
        )),
        _ => None,
    }
}

/// A connection refused by the policy: the name and every address it had,
/// with the reason for each. The HTTP import finds this in the client's error
/// chain and answers the guest `access-denied` with it.
#[derive(Debug, thiserror::Error)]
#[error(
    "{host} is not reachable from plugins: {}; an operator can allow a range with \
     `karta serve --plugin-allow-net CIDR`",
    describe(.refused)
)]
pub(crate) struct NetDenied {
    host: String,
    refused: Vec<(IpAddr, &'static str)>,
}

fn describe(refused: &[(IpAddr, &'static str)]) -> String {
    if refused.is_empty() {
        return "it resolves to no address".into();
    }
    refused
        .iter()
        .map(|(ip, why)| format!("{ip} is {why}"))
        .collect::<Vec<_>>()
        .join(", ")
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The TCP connector under the HTTP client: resolve once, filter by the
/// policy, connect only to the addresses that passed.
#[derive(Clone)]
pub(crate) struct GuardedConnector {
    policy: Arc<NetPolicy>,
    connect_timeout: Duration,
}

impl GuardedConnector {
    pub(crate) fn new(policy: NetPolicy, connect_timeout: Duration) -> Self {
        Self {
            policy: Arc::new(policy),
            connect_timeout,
        }
    }
}

impl tower_service::Service<Uri> for GuardedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let policy = self.policy.clone();
        let timeout = self.connect_timeout;
        Box::pin(async move { connect(&policy, timeout, &uri).await })
    }
}

/// Resolves `host` (an IP literal is its own answer) and splits the answer
/// into the addresses the policy allows and those it refuses.
pub(crate) async fn resolve_checked(
    policy: &NetPolicy,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, BoxError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let resolved: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((bare, port))
            .await
            .map_err(|e| format!("cannot resolve {bare}: {e}"))?
            .collect(),
    };
    let mut allowed = Vec::new();
    let mut refused = Vec::new();
    for addr in resolved {
        match policy.check(addr.ip()) {
            Ok(()) => allowed.push(addr),
            Err(why) => refused.push((addr.ip(), why)),
        }
    }
    if allowed.is_empty() {
        return Err(Box::new(NetDenied {
            host: bare.to_owned(),
            refused,
        }));
    }
    Ok(allowed)
}

async fn connect(
    policy: &NetPolicy,
    timeout: Duration,
    uri: &Uri,
) -> Result<TokioIo<TcpStream>, BoxError> {
    let host = uri.host().ok_or("the URL has no host")?;
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    let addrs = resolve_checked(policy, host, port).await?;
    let mut last = String::new();
    // Only the checked addresses, in the resolver's order.
    for addr in addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                // Small requests and answers: do not wait for delayed ACKs.
                let _ = stream.set_nodelay(true);
                return Ok(TokioIo::new(stream));
            }
            Ok(Err(e)) => last = format!("connecting to {addr} failed: {e}"),
            Err(_) => last = format!("connecting to {addr} timed out after {timeout:?}"),
        }
    }
    Err(last.into())
}

/// Finds a [`NetDenied`] in an error's source chain.
pub(crate) fn find_denial<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a NetDenied> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(denied) = e.downcast_ref::<NetDenied>() {
            return Some(denied);
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> Option<&'static str> {
        refused_range(text.parse().expect("an IP address"))
    }

    #[test]
    fn internal_ipv4_ranges_are_refused() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "127.255.0.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "169.254.169.254",
            "192.0.0.8",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
        ] {
            assert!(refused(ip).is_some(), "{ip} must be refused");
        }
        assert_eq!(refused("127.0.0.1"), Some("loopback"));
        assert_eq!(refused("255.255.255.255"), Some("broadcast"));
        assert!(refused("169.254.169.254").is_some_and(|r| r.starts_with("link-local")));
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "192.169.0.1",
            "2606:4700::1111",
            "2a00:1450::1",
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert_eq!(refused(ip), None, "{ip} must pass");
        }
    }

    #[test]
    fn internal_ipv6_ranges_and_ipv4_forms_are_refused() {
        for ip in [
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "2001::1",
            "100::1",
            "64:ff9b:1::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:0:10.0.0.1",
            "::127.0.0.1",
            "::0.0.0.2",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::",
        ] {
            assert!(refused(ip).is_some(), "{ip} must be refused");
        }
        assert_eq!(refused("::1"), Some("loopback"));
        assert_eq!(
            refused("::ffff:127.0.0.1"),
            Some("IPv4-mapped IPv6 of a refused IPv4 range")
        );
    }

    #[test]
    fn the_operator_allows_by_cidr_including_mapped_forms() {
        let policy = NetPolicy::new(vec![
            "127.0.0.1/32".parse().expect("cidr"),
            "fd00::/8".parse().expect("cidr"),
        ]);
        assert_eq!(policy.check("127.0.0.1".parse().expect("ip")), Ok(()));
        assert_eq!(
            policy.check("::ffff:127.0.0.1".parse().expect("ip")),
            Ok(())
        );
        assert_eq!(policy.check("fd00::5".parse().expect("ip")), Ok(()));
        assert_eq!(
            policy.check("127.0.0.2".parse().expect("ip")),
            Err("loopback")
        );
        assert_eq!(policy.check("::1".parse().expect("ip")), Err("loopback"));
        assert!(
            policy
                .check("169.254.169.254".parse().expect("ip"))
                .is_err()
        );
        assert_eq!(policy.check("1.1.1.1".parse().expect("ip")), Ok(()));
    }

    #[tokio::test]
    async fn a_name_is_judged_by_what_it_resolves_to() {
        let policy = NetPolicy::default();
        let error = resolve_checked(&policy, "localhost", 80)
            .await
            .expect_err("localhost resolves to loopback");
        let denied = find_denial(error.as_ref()).expect("a policy denial");
        assert!(denied.to_string().contains("loopback"), "{denied}");
        let error = resolve_checked(&policy, "[::ffff:127.0.0.1]", 80)
            .await
            .expect_err("mapped loopback");
        assert!(find_denial(error.as_ref()).is_some());
    }
}
