//! Serving a router: the API, the model gateway and the MCP server all go
//! through [`spawn_server`] (the latter two through [`spawn_way_out`]), so
//! every accepted socket sets `TCP_NODELAY` and every server stops the
//! same way.
//!
//! `TCP_NODELAY` matters here more than usual: SSE events and JSON-RPC
//! answers are small writes, and with Nagle's algorithm on, each one waits
//! for the peer's delayed ACK — measured at ~35–40 ms per model call
//! through the gateway before this was set (BENCHMARKS.md, "overhead").
//!
//! Every connection also closes *lingering* ([`Lingering`]), as nginx
//! does: a server that answers before reading a request's whole body (a
//! body over the limit gets its 413 once the limit is read) and then closes
//! leaves the rest unread, and a socket closed with unread data is reset.
//! The reset makes the client's write fail and throws away the answer it
//! had not read yet. So once hyper is done with a connection, the host
//! ends its side of it and reads and discards what still comes, for at
//! most [`LINGER_FOR`] and [`LINGER_BYTES`], before it closes.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::MatchedPath;
use axum::http::Request;
use axum::serve::{Listener, ListenerExt};
use karta_harness::jail::net::InProcessPort;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower_http::trace::{DefaultOnFailure, DefaultOnResponse, TraceLayer};
use tracing::Level;

/// Gives every request of `router` a `request` span — the server's name,
/// the method, the route as declared (never the path itself: the MCP
/// server's carries a session's token) and, once a handler knows it, the
/// session (`Span::current().record("session", …)`) — so whatever is
/// logged while it is served says for whom. Its answer is logged at DEBUG
/// (these are the harness's calls, several a turn; the API logs each turn's
/// request at INFO), a server error at WARN.
///
/// Used for the model gateway and the MCP server; the API has its own
/// span (`api::router`), with the path.
pub fn with_request_spans(router: Router, server: &'static str) -> Router {
    router.route_layer(
        TraceLayer::new_for_http()
            .make_span_with(move |request: &Request<_>| {
                let route = request
                    .extensions()
                    .get::<MatchedPath>()
                    .map_or("", MatchedPath::as_str);
                tracing::info_span!(
                    "request",
                    server,
                    method = %request.method(),
                    route,
                    session = tracing::field::Empty,
                )
            })
            .on_request(())
            .on_response(DefaultOnResponse::new().level(Level::DEBUG))
            .on_failure(DefaultOnFailure::new().level(Level::WARN)),
    )
}

/// A server running in a task of its own. Dropping it stops the server;
/// [`ServerTask::stop`] also waits for it to finish (its connections
/// closed, its state released).
pub struct ServerTask {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
    /// A way out's claim on jails' connections to its port
    /// ([`spawn_way_out`]); released first when it stops.
    in_process: Option<InProcessPort>,
}

impl ServerTask {
    /// Stops accepting, lets requests in flight finish, and waits.
    pub async fn stop(mut self) {
        self.in_process = None;
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ServerTask {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Serves `router` on `listener` in a new task; `name` names it in logs.
pub fn spawn_server(name: &'static str, listener: TcpListener, router: Router) -> ServerTask {
    spawn_on(name, listener, router)
}

/// Serves one of a harness's two ways out (the model gateway, the MCP
/// server) like [`spawn_server`], and also takes the connections jailed
/// harness processes make to its port straight from their network
/// namespace ([`karta_harness::jail::net::serve_in_process`]), so their
/// model calls and MCP requests skip the jail's relay: no second loopback
/// connection, no copy of each request between the two.
pub fn spawn_way_out(
    name: &'static str,
    listener: TcpListener,
    router: Router,
) -> std::io::Result<ServerTask> {
    let port = listener.local_addr()?.port();
    let (connections, handed) = mpsc::unbounded_channel();
    let claim = karta_harness::jail::net::serve_in_process(port, connections);
    let mut task = spawn_on(
        name,
        WayOut {
            listener,
            handed: Some(handed),
        },
        router,
    );
    task.in_process = Some(claim);
    Ok(task)
}

/// A way out's listener: its loopback socket, and the connections jails
/// hand over in-process.
struct WayOut {
    listener: TcpListener,
    /// `None` once every sender is gone (the server is stopping).
    handed: Option<mpsc::UnboundedReceiver<TcpStream>>,
}

impl Listener for WayOut {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            let Some(handed) = self.handed.as_mut() else {
                return Listener::accept(&mut self.listener).await;
            };
            tokio::select! {
                accepted = Listener::accept(&mut self.listener) => return accepted,
                stream = handed.recv() => match stream {
                    Some(stream) => {
                        // The jail's side of the loopback, in its namespace.
                        let peer = stream
                            .peer_addr()
                            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
                        return (stream, peer);
                    }
                    None => self.handed = None,
                },
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

fn spawn_on<L>(name: &'static str, listener: L, router: Router) -> ServerTask
where
    L: Listener<Io = TcpStream, Addr = SocketAddr>,
{
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let listener = Lingered(listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY on an accepted socket: {e}");
        }
    }));
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { stopped.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!("the {name} stopped: {e}");
        }
    });
    ServerTask {
        stop,
        task: Some(task),
        in_process: None,
    }
}

/// The longest a closing connection keeps reading what its client still
/// sends ([`Lingering`]); nginx's `lingering_timeout` is 5 s.
pub const LINGER_FOR: Duration = Duration::from_secs(2);

/// The most a closing connection reads and discards ([`Lingering`]): a
/// request body over the API's limit by up to this much is read to its
/// end, so its client reads the answer.
pub const LINGER_BYTES: u64 = 64 * 1024 * 1024;

/// A listener whose connections close lingering ([`Lingering`]).
struct Lingered<L>(L);

impl<L> Listener for Lingered<L>
where
    L: Listener<Io = TcpStream, Addr = SocketAddr>,
{
    type Io = Lingering;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Lingering, SocketAddr) {
        let (tcp, addr) = self.0.accept().await;
        (Lingering(Some(tcp)), addr)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// An accepted connection that, when dropped (hyper is done with it),
/// hands its socket to a task that ends the host's side, then reads and
/// discards what the client still sends until it ends its side, for at
/// most [`LINGER_FOR`] and [`LINGER_BYTES`], and only then closes it (see
/// the module docs). Reads and writes go straight to the socket.
pub struct Lingering(Option<TcpStream>);

impl Lingering {
    fn tcp(&mut self) -> &mut TcpStream {
        self.0.as_mut().expect("a connection in use has its socket")
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(tcp) = self.0.take() else { return };
        // Outside a runtime (never, in the host) the socket just closes.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(linger(tcp));
        }
    }
}

/// The lingering close itself: FIN first (the answer is complete), then
/// read until the client's FIN, an error, or the bounds.
async fn linger(mut tcp: TcpStream) {
    let _ = tcp.shutdown().await;
    // `copy`'s own small buffer: a flood of closing connections costs a
    // few KiB each, not a buffer sized for the bound.
    let mut rest = (&mut tcp).take(LINGER_BYTES);
    let mut discard = tokio::io::sink();
    let drain = tokio::io::copy(&mut rest, &mut discard);
    let _ = tokio::time::timeout(LINGER_FOR, drain).await;
}

impl AsyncRead for Lingering {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(self.tcp()).poll_read(cx, buf)
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.tcp()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.tcp()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.tcp()).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.tcp()).poll_shutdown(cx)
    }
}
