//! Serving a router: the API, the model gateway and the MCP server all go
//! through [`spawn_server`], so every accepted socket sets `TCP_NODELAY`
//! and every server stops the same way.
//!
//! `TCP_NODELAY` matters here more than usual: SSE events and JSON-RPC
//! answers are small writes, and with Nagle's algorithm on, each one waits
//! for the peer's delayed ACK — measured at ~35–40 ms per model call
//! through the gateway before this was set (BENCHMARKS.md, "overhead").

use axum::Router;
use axum::serve::ListenerExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A server running in a task of its own. Dropping it stops the server;
/// [`ServerTask::stop`] also waits for it to finish (its connections
/// closed, its state released).
pub struct ServerTask {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl ServerTask {
    /// Stops accepting, lets requests in flight finish, and waits.
    pub async fn stop(mut self) {
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
pub fn spawn_server(
    name: &'static str,
    listener: tokio::net::TcpListener,
    router: Router,
) -> ServerTask {
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
    }
}
