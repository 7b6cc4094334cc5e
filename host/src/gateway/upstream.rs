//! The gateway's connections to providers: HTTP/1.1 over TCP or TLS, kept
//! alive between calls, each **driven by the task that uses it**.
//!
//! hyper's pooled client (`hyper_util`'s legacy `Client`) runs every
//! connection in a task of its own: a request is handed to that task, its
//! answer's head and every chunk of its body handed back, each hand-off a
//! wake-up of another task (often on the other worker). A model call
//! relays an answer chunk by chunk to the harness, so those hand-offs sit
//! on every call's path. Here the connection is polled where the request is
//! awaited and then inside the answer's body ([`Answer`]), in the task of
//! the harness's own connection: nothing between the provider's socket and
//! the harness's but that task.
//!
//! An idle connection goes back to the pool only once its answer was read
//! to the end (a body dropped early closes it), and is taken from it only
//! if it is still open and no older than [`IDLE_FOR`]. A request that never
//! left on a reused connection (the provider had closed it) is sent again
//! on a new one; a request that may have reached the provider is not (a
//! model call is not idempotent: it is billed).

use std::collections::HashMap;
use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper::header::{HOST, HeaderValue};
use hyper::{Request, Response, Uri};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

/// An error reaching a provider or reading its answer.
pub type UpstreamError = Box<dyn StdError + Send + Sync>;

/// How long an idle connection is kept. Providers close idle keep-alive
/// connections on their own schedule; a connection they closed is seen
/// closed when taken (see [`Idle::still_open`]), and this keeps the window
/// in which they close it as a request leaves small.
const IDLE_FOR: Duration = Duration::from_secs(30);

/// Idle connections kept per provider (scheme and authority).
const IDLE_PER_PROVIDER: usize = 32;

type Io = MaybeHttpsStream<TokioIo<TcpStream>>;
type Connection = http1::Connection<Io, Full<Bytes>>;

/// Connections to providers, kept alive between calls.
#[derive(Clone)]
pub struct Upstreams {
    connector: HttpsConnector<HttpConnector>,
    idle: Arc<Mutex<HashMap<String, Vec<Idle>>>>,
}

impl Default for Upstreams {
    fn default() -> Self {
        Self::new()
    }
}

/// A connection between calls.
struct Idle {
    send: http1::SendRequest<Full<Bytes>>,
    connection: Connection,
    since: Instant,
}

impl Idle {
    /// Whether the connection can carry another request: not too old, and
    /// not closed by the provider meanwhile — polled once, without a waker,
    /// so a close the provider sent while it sat here is read now.
    fn still_open(&mut self) -> bool {
        if self.since.elapsed() > IDLE_FOR {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        if self.connection.poll_unpin(&mut cx).is_ready() {
            return false;
        }
        self.send.is_ready() && !self.send.is_closed()
    }
}

impl Upstreams {
    /// No connection yet; each is made on first use (TCP, TLS where the
    /// URL says so, with the web's root certificates).
    pub fn new() -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        // Small SSE writes both ways: without it, Nagle's algorithm meets
        // the provider's delayed ACK (~40 ms per exchange).
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Self {
            connector,
            idle: Arc::default(),
        }
    }

    /// Sends `request` (its URI absolute: `https://host/path`) and returns
    /// the answer's head; its body reads on from the same connection.
    pub async fn request(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Answer>, UpstreamError> {
        let (mut request, key) = origin_form(request)?;
        // The first try may take a kept connection; the second (only when
        // the first request never left) makes a new one.
        let mut reused = self.take_idle(&key);
        loop {
            let fresh = reused.is_none();
            let (mut send, connection) = match reused.take() {
                Some(idle) => (idle.send, idle.connection),
                None => self.connect(&key).await?,
            };
            let mut connection = Some(connection);
            let mut answer = std::pin::pin!(send.try_send_request(request));
            let outcome = std::future::poll_fn(|cx| {
                // Drive the connection, then see whether the answer's head
                // is in. A connection that ended fails the request on its
                // next poll (hyper cancels what it holds).
                if let Some(open) = connection.as_mut()
                    && open.poll_unpin(cx).is_ready()
                {
                    connection = None;
                }
                answer.as_mut().poll(cx)
            })
            .await;
            match outcome {
                Ok(response) => {
                    let (head, body) = response.into_parts();
                    let kept = connection.map(|connection| Kept {
                        send,
                        connection,
                        key,
                    });
                    return Ok(Response::from_parts(
                        head,
                        Answer {
                            body,
                            kept,
                            upstreams: self.clone(),
                        },
                    ));
                }
                Err(mut error) => match error.take_message() {
                    Some(unsent) if !fresh => request = unsent,
                    _ => return Err(error.into_error().into()),
                },
            }
        }
    }

    /// A kept connection to `key` that is still open, if any; the ones
    /// found closed or too old are dropped on the way.
    fn take_idle(&self, key: &str) -> Option<Idle> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let kept = idle.get_mut(key)?;
        // The most recently used first: the likeliest to be open.
        while let Some(mut candidate) = kept.pop() {
            if candidate.still_open() {
                return Some(candidate);
            }
        }
        None
    }

    /// A new connection to the provider `key` (`https://host:port`).
    async fn connect(
        &self,
        key: &str,
    ) -> Result<(http1::SendRequest<Full<Bytes>>, Connection), UpstreamError> {
        let target: Uri = key.parse()?;
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx)).await?;
        let io = connector.call(target).await?;
        Ok(http1::handshake(io).await?)
    }

    /// Keeps a connection whose answer was read to its end.
    fn keep(&self, kept: Kept) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(kept.key).or_default();
        list.retain(|idle| idle.since.elapsed() <= IDLE_FOR);
        if list.len() < IDLE_PER_PROVIDER {
            list.push(Idle {
                send: kept.send,
                connection: kept.connection,
                since: Instant::now(),
            });
        }
    }

    /// Kept connections (for tests).
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.values().map(Vec::len).sum()
    }
}

/// `request` with its URI in origin form (`/v1/messages`) and a `Host`
/// header, as HTTP/1.1 sends it; and its provider's key
/// (`https://api.anthropic.com`).
fn origin_form(
    mut request: Request<Full<Bytes>>,
) -> Result<(Request<Full<Bytes>>, String), UpstreamError> {
    let uri = request.uri().clone();
    let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
        return Err(format!("not an absolute URL: {uri}").into());
    };
    let key = format!("{scheme}://{authority}");
    let host = HeaderValue::from_str(authority.as_str())?;
    request.headers_mut().entry(HOST).or_insert(host);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    *request.uri_mut() = path.parse()?;
    Ok((request, key))
}

/// A connection in use, to be kept once its answer is read.
struct Kept {
    send: http1::SendRequest<Full<Bytes>>,
    connection: Connection,
    key: String,
}

/// A provider's answer's body, driving its connection as it is read.
pub struct Answer {
    body: Incoming,
    kept: Option<Kept>,
    upstreams: Upstreams,
}

impl Body for Answer {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        // The connection first: it reads the socket into the body.
        if let Some(kept) = this.kept.as_mut()
            && kept.connection.poll_unpin(cx).is_ready()
        {
            this.kept = None;
        }
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(None) = frame
            && let Some(mut kept) = this.kept.take()
        {
            // Read to the end: once more, so the connection takes in that
            // its exchange is over, then keep it if it can carry another.
            if kept.connection.poll_unpin(cx).is_pending()
                && kept.send.is_ready()
                && !kept.send.is_closed()
            {
                this.upstreams.keep(kept);
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// What the test provider does with each connection.
    #[derive(Clone, Copy)]
    enum Provider {
        /// Answers every request (`ok`), keeping the connection open.
        KeepsAlive,
        /// Answers one request, then closes the connection 10 ms later
        /// (an idle close, with no `connection: close` said).
        ClosesAfterOne,
        /// Sends an answer's head and a first chunk, then nothing more.
        Stalls,
    }

    /// A provider on a loopback port speaking HTTP/1.1 by hand; its address
    /// and how many connections it accepted.
    async fn provider(behaviour: Provider) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = format!("http://{}", listener.local_addr().expect("address"));
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    loop {
                        // One request: its head, then its content-length body.
                        let head_end = loop {
                            if let Some(end) = find(&buffer, b"\r\n\r\n") {
                                break end + 4;
                            }
                            if !read_more(&mut stream, &mut buffer).await {
                                return;
                            }
                        };
                        let head = String::from_utf8_lossy(&buffer[..head_end]).to_lowercase();
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        while buffer.len() < head_end + length {
                            if !read_more(&mut stream, &mut buffer).await {
                                return;
                            }
                        }
                        buffer.drain(..head_end + length);
                        match behaviour {
                            Provider::Stalls => {
                                let _ = stream
                                    .write_all(
                                        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n",
                                    )
                                    .await;
                                std::future::pending::<()>().await;
                            }
                            _ => {
                                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                                if stream.write_all(answer).await.is_err() {
                                    return;
                                }
                            }
                        }
                        if let Provider::ClosesAfterOne = behaviour {
                            // After the client kept the connection.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            return;
                        }
                    }
                });
            }
        });
        (address, accepted)
    }

    /// Reads what the socket has onto `buffer`; false at its end.
    async fn read_more(stream: &mut tokio::net::TcpStream, buffer: &mut Vec<u8>) -> bool {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                buffer.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        haystack.windows(needle.len()).position(|w| w == needle)
    }

    /// A POST to `address` read to its end: status and body.
    async fn call(upstreams: &Upstreams, address: &str) -> (u16, String) {
        let request = Request::post(format!("{address}/v1/messages"))
            .body(Full::new(Bytes::from_static(b"{\"model\":\"m\"}")))
            .expect("request");
        let response = upstreams.request(request).await.expect("answer");
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn an_answer_read_to_its_end_leaves_its_connection_for_the_next_call() {
        let (address, accepted) = provider(Provider::KeepsAlive).await;
        let upstreams = Upstreams::new();
        for _ in 0..3 {
            assert_eq!(call(&upstreams, &address).await, (200, "ok".into()));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection, reused");
        assert_eq!(upstreams.idle_count(), 1);
    }

    /// Either of two things saves such a call, and the test fails only
    /// without both: the closed connection is seen closed when taken
    /// ([`Idle::still_open`]), or its request, refused unsent, goes again
    /// on a new connection.
    #[tokio::test]
    async fn a_connection_the_provider_closed_while_idle_is_not_used_again() {
        let (address, accepted) = provider(Provider::ClosesAfterOne).await;
        let upstreams = Upstreams::new();
        for round in 1..=3 {
            assert_eq!(call(&upstreams, &address).await, (200, "ok".into()));
            assert_eq!(
                upstreams.idle_count(),
                1,
                "kept before the provider closed it"
            );
            // Let the provider's close reach this side before the next call.
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(accepted.load(Ordering::SeqCst), round);
        }
    }

    #[tokio::test]
    async fn an_answer_dropped_before_its_end_closes_its_connection() {
        let (address, accepted) = provider(Provider::Stalls).await;
        let upstreams = Upstreams::new();
        for round in 1..=2 {
            let request = Request::post(format!("{address}/v1/messages"))
                .body(Full::new(Bytes::from_static(b"{}")))
                .expect("request");
            let response = upstreams.request(request).await.expect("answer");
            let mut body = response.into_body();
            let first = body.frame().await.expect("a frame").expect("data");
            assert_eq!(first.into_data().expect("data"), Bytes::from_static(b"ok"));
            drop(body);
            assert_eq!(
                upstreams.idle_count(),
                0,
                "a connection mid-answer is not kept"
            );
            assert_eq!(accepted.load(Ordering::SeqCst), round);
        }
    }

    #[tokio::test]
    async fn a_relative_url_is_refused() {
        let request = Request::post("/v1/messages")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let error = Upstreams::new()
            .request(request)
            .await
            .err()
            .expect("refused");
        assert!(error.to_string().contains("not an absolute URL"), "{error}");
    }
}
