//! The jail's network: a namespace of its own with only a loopback, and the
//! host itself relaying the few ports the harness may use.
//!
//! The host creates the namespace (on a short-lived thread, so no thread of
//! the runtime changes namespace) and binds, *inside it*, listeners on
//! `127.0.0.1:<port>` for the gateway's and the MCP server's ports. A socket
//! belongs to the namespace it was created in, whichever thread later uses
//! it, so the host accepts on those listeners from its runtime and relays
//! each connection to the real server on the host's loopback. The harness
//! keeps using `ANTHROPIC_BASE_URL=http://127.0.0.1:<gateway port>` and the
//! MCP URL unchanged, and nothing else exists for it: no other address, no
//! route out, no abstract unix socket of the host (those are per network
//! namespace too).
//!
//! The other direction — OpenCode's own server, which the host calls — is
//! an *exposed* port: a host listener on an ephemeral loopback port whose
//! connections the host opens inside the namespace.
//!
//! This differs from ../shared/DESIGN.md's plan (unix sockets bind-mounted
//! in, relayed by a helper process inside): listeners made in the
//! namespace by the host need no helper process, no socket files in the
//! jail's tree, and one copy less.
//!
//! A server of this very process — the host's gateway and MCP server —
//! can take the jail's connections itself ([`serve_in_process`]): a
//! connection accepted on the namespace's listener for its port is handed
//! to it as it is, with no second connection to the host's loopback and no
//! copy between the two. That is the path every model call of a jailed
//! harness takes (each request carries the whole conversation, ~100 KiB
//! for a warm Claude Code turn), so the relay's hop is gone from it. A
//! port no server of this process claims is relayed as before.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinSet;

/// The servers of this process that take jails' connections to their
/// loopback port themselves, by port. A port identifies one server: no two
/// listeners of the machine share `127.0.0.1:<port>`.
static IN_PROCESS: Mutex<Option<HashMap<u16, UnboundedSender<TcpStream>>>> = Mutex::new(None);

fn in_process() -> MutexGuard<'static, Option<HashMap<u16, UnboundedSender<TcpStream>>>> {
    IN_PROCESS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Hands every connection a jail makes to `127.0.0.1:<port>` to
/// `connections`, from now until the returned registration is dropped,
/// instead of relaying it to this machine's `127.0.0.1:<port>`.
///
/// `port` must be that of a listener this process serves `connections`
/// beside (the host's `listen::spawn_way_out` does both): a jail reaches
/// exactly what it reached through the relay, only without the hop.
/// Connections come as the namespace accepted them; the server sets its
/// own socket options. When the receiving end is gone, connections are
/// relayed again.
pub fn serve_in_process(port: u16, connections: UnboundedSender<TcpStream>) -> InProcessPort {
    in_process()
        .get_or_insert_with(HashMap::new)
        .insert(port, connections.clone());
    InProcessPort { port, connections }
}

/// A port served in this process ([`serve_in_process`]); dropping it
/// returns the port to the relay.
#[derive(Debug)]
pub struct InProcessPort {
    port: u16,
    connections: UnboundedSender<TcpStream>,
}

impl Drop for InProcessPort {
    fn drop(&mut self) {
        let mut servers = in_process();
        let Some(servers) = servers.as_mut() else {
            return;
        };
        // Only this registration's own entry: a later server on a reused
        // port keeps its own.
        if servers
            .get(&self.port)
            .is_some_and(|s| s.same_channel(&self.connections))
        {
            servers.remove(&self.port);
        }
    }
}

/// Hands `stream` to the server of this process on `port`, if one takes
/// it; otherwise gives it back.
fn hand_in_process(port: u16, stream: TcpStream) -> Result<(), TcpStream> {
    let server = in_process()
        .as_ref()
        .and_then(|servers| servers.get(&port).cloned());
    match server {
        Some(server) => server.send(stream).map_err(|refused| refused.0),
        None => Err(stream),
    }
}

/// A jail's network namespace and the relays serving it.
pub struct JailNetwork {
    /// `/proc/thread-self/ns/net` of the namespace, for the child's `setns`
    /// and for making sockets inside.
    namespace: Arc<OwnedFd>,
    /// Exposed ports: inside → host.
    exposed: Vec<(u16, u16)>,
    /// Every relay; aborted when the jail ends.
    relays: JoinSet<()>,
}

impl std::fmt::Debug for JailNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JailNetwork")
            .field("exposed", &self.exposed)
            .finish_non_exhaustive()
    }
}

impl JailNetwork {
    /// A new namespace whose `127.0.0.1:<p>` reaches the host's
    /// `127.0.0.1:<p>` for each of `forward`, and whose `127.0.0.1:<p>` for
    /// each of `expose` is reachable from the host at
    /// [`JailNetwork::host_port`].
    pub fn create(forward: &[u16], expose: &[u16]) -> std::io::Result<Self> {
        let forward_ports = forward.to_vec();
        let (namespace, listeners) = std::thread::Builder::new()
            .name("karta-netns".into())
            .spawn(move || new_namespace(&forward_ports))?
            .join()
            .map_err(|_| std::io::Error::other("the network namespace thread panicked"))??;
        let namespace = Arc::new(namespace);
        let mut relays = JoinSet::new();
        for (port, listener) in forward.iter().zip(listeners) {
            listener.set_nonblocking(true)?;
            let listener = TcpListener::from_std(listener)?;
            let target = SocketAddr::from((Ipv4Addr::LOCALHOST, *port));
            relays.spawn(relay(listener, Some(*port), move || {
                TcpStream::connect(target)
            }));
        }
        let mut exposed = Vec::new();
        for port in expose {
            let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
            listener.set_nonblocking(true)?;
            let listener = TcpListener::from_std(listener)?;
            let host_port = listener.local_addr()?.port();
            let namespace = namespace.clone();
            let target = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, *port));
            relays.spawn(relay(listener, None, move || {
                let namespace = namespace.clone();
                async move { connect_inside(namespace, target).await }
            }));
            exposed.push((*port, host_port));
        }
        Ok(Self {
            namespace,
            exposed,
            relays,
        })
    }

    /// The namespace, for the child's `setns`.
    pub(crate) fn namespace(&self) -> &OwnedFd {
        &self.namespace
    }

    /// The host port that reaches `inside` in the jail, when exposed.
    pub fn host_port(&self, inside: u16) -> Option<u16> {
        self.exposed
            .iter()
            .find(|(port, _)| *port == inside)
            .map(|(_, host)| *host)
    }

    /// Stops every relay.
    pub fn shutdown(&mut self) {
        self.relays.abort_all();
    }
}

/// On its own thread: a new network namespace with loopback up and
/// listeners on `ports`; returns the namespace's descriptor.
fn new_namespace(ports: &[u16]) -> std::io::Result<(OwnedFd, Vec<std::net::TcpListener>)> {
    super::child::unshare_network()?;
    super::child::loopback_up()?;
    let listeners = ports
        .iter()
        .map(|port| std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, *port)))
        .collect::<std::io::Result<Vec<_>>>()?;
    let namespace = std::fs::File::open("/proc/thread-self/ns/net")?;
    Ok((OwnedFd::from(namespace), listeners))
}

/// A TCP socket created inside `namespace` (on a short-lived thread, for
/// the same reason as above), connected to `target` there.
async fn connect_inside(namespace: Arc<OwnedFd>, target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = std::thread::Builder::new()
        .name("karta-netns".into())
        .spawn(move || -> std::io::Result<std::net::TcpStream> {
            super::child::enter_network(namespace.as_fd())?;
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            socket.set_nonblocking(true)?;
            Ok(socket.into())
        })?
        .join()
        .map_err(|_| std::io::Error::other("the network namespace thread panicked"))??;
    TcpSocket::from_std_stream(socket).connect(target).await
}

/// Accepts on `listener` forever, handing each connection to the server
/// of this process that serves `in_process_port` ([`serve_in_process`]),
/// else relaying it to a stream from `connect`.
async fn relay<F, Fut>(listener: TcpListener, in_process_port: Option<u16>, connect: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = std::io::Result<TcpStream>> + Send + 'static,
{
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            // Out of descriptors, most likely: back off rather than spin.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let mut inbound = match in_process_port {
            Some(port) => match hand_in_process(port, inbound) {
                Ok(()) => continue,
                Err(inbound) => inbound,
            },
            None => inbound,
        };
        let outbound = connect();
        tokio::spawn(async move {
            let Ok(mut outbound) = outbound.await else {
                return;
            };
            // Small writes (SSE frames, JSON-RPC answers) must not wait for
            // Nagle's algorithm on either leg.
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
        });
    }
}
