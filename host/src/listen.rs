//! Serving a router: the API, the model gateway and the MCP server all go
//! through [`spawn_server`] (the latter two through [`spawn_way_out`]), so
//! every accepted socket sets `TCP_NODELAY` and every server stops the
//! same way.
//!
//! `TCP_NODELAY` matters here more than usual: SSE events and JSON-RPC
//! answers are small writes, and with Nagle's algorithm on, each one waits
//! for the peer's delayed ACK — measured at ~35–40 ms per model call
//! through the gateway before this was set (BENCHMARKS.md, "overhead").

use std::net::SocketAddr;

use axum::Router;
use axum::serve::{Listener, ListenerExt};
use karta_harness::jail::net::InProcessPort;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

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
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY on an accepted socket: {e}");
        }
    });
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
