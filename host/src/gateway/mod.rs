//! The model gateway: the only model endpoint a harness ever sees.
//!
//! It listens on a loopback port of its own and speaks two wire shapes:
//! Anthropic Messages (`POST /v1/messages`, unary and SSE) and OpenAI Chat
//! Completions (`POST /v1/chat/completions`, unary and SSE). Each request
//! carries a per-session gateway key (`x-api-key` or `Authorization: Bearer`),
//! so the gateway knows whose turn it is and records the tokens used; an
//! unknown key is refused with 401.
//!
//! Behind it sits either the [offline model](offline) or a real upstream
//! (Anthropic, or any OpenAI-compatible base URL) reached with the
//! platform's key or the org's own (BYOK, chosen per call by the host's
//! [`CallRouter`]), which the harness never sees.
//!
//! The model name picks the provider ([`translate::pick`]):
//! `openai/gpt-4o-mini`, `openrouter/…` or `anthropic/…` goes to that
//! provider with the prefix stripped; a bare name stays with the request's
//! own shape. When the provider speaks the other shape, the request and
//! its answer are [translated](translate) — a Claude Code app can run on
//! an OpenAI-compatible provider and an OpenCode app on Anthropic. A named
//! provider needs the org's key for it or a platform upstream of its shape;
//! with neither the call is refused (`provider_not_configured`), except
//! that a host with no upstream and an org with no keys at all answers
//! with the offline model, as it does any call.

pub mod offline;
mod relay;
pub mod translate;
mod upstream;
mod wire;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use karta_harness::Usage;
use karta_harness::builtin::{ModelResponse, ModelService};
use karta_harness::model_stream::WireShape;
use serde_json::{Value, json};

use crate::credentials::{Credentials, KeyHolder};
use crate::listen::ServerTask;
use crate::metrics::Metrics;

/// Which wire shape an upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamKind {
    /// Anthropic Messages (`/v1/messages`).
    Anthropic,
    /// OpenAI-compatible Chat Completions (`/v1/chat/completions`).
    Openai,
}

impl UpstreamKind {
    /// `anthropic` or `openai`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Anthropic => "anthropic",
            Self::Openai => "openai",
        }
    }

    fn shape(self) -> WireShape {
        match self {
            Self::Anthropic => WireShape::Anthropic,
            Self::Openai => WireShape::OpenAi,
        }
    }
}

/// A real model provider behind the gateway.
#[derive(Clone)]
pub struct Upstream {
    /// The wire shape.
    pub kind: UpstreamKind,
    /// Base URL, e.g. `https://api.anthropic.com` (no trailing `/v1`).
    pub base_url: String,
    /// The platform's key for it. Never logged, never given to a harness.
    pub api_key: String,
    /// Whether the key is an org's own (BYOK): a provider refusing it is
    /// the org's problem to fix, answered as `byok_key_rejected` (422).
    pub org_key: bool,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key: a Debug line ends up in logs.
        f.debug_struct("Upstream")
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

/// Which provider a call asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// A bare model name: a provider of the request's own shape
    /// (Anthropic; OpenAI, else OpenRouter).
    Shape(UpstreamKind),
    /// The model name's prefix named this provider.
    Provider(crate::byok::Provider),
}

/// Where one model call goes, decided by the host per call: an org's own
/// provider key (BYOK) for the session's org, say. `Ok(None)` leaves the
/// call to the gateway's own upstream (the platform's, or the offline
/// model); `Err` refuses the call with that message.
pub trait CallRouter: Send + Sync {
    /// The upstream for a call of `session` asking for `wanted`; its `kind`
    /// is the wire shape of the provider it reaches.
    fn upstream_for(&self, session: &str, wanted: Wanted) -> Result<Option<Upstream>, String>;

    /// Whether `session`'s org has any provider key of its own (a call
    /// naming a provider it has no key for is then refused rather than
    /// answered by the offline model).
    fn has_own_keys(&self, _session: &str) -> bool {
        false
    }

    /// Before a call goes out: the host may refuse it (`Err` with the
    /// reason: the tenant's budget cannot pay for it) or hold room for it
    /// until [`CallRouter::end`]. `max_tokens` is what the request allows
    /// the answer, `request_bytes` its size (an estimate of its input).
    fn begin(
        &self,
        _call: &ModelCall,
        _max_tokens: u64,
        _request_bytes: usize,
    ) -> Result<(), String> {
        Ok(())
    }

    /// The call's answer has passed (or the call failed, or its client
    /// went away): what [`CallRouter::begin`] held is released.
    fn end(&self, _call: &ModelCall) {}

    /// One increment of a call's usage, as the answer passes (before the
    /// bytes that reported it go on to the harness): the host's ledger.
    /// `seq` numbers the call's increments from 0, so `(call.id, seq)` is
    /// unique and a retried write is not counted twice. `answered_by` is
    /// the model the answer says answered, when it has said so (it may
    /// differ from `call.model`, the one asked for). `prompt_tokens` is
    /// the call's whole prompt — input, cache reads and writes — as the
    /// answer has reported it so far: an output increment is priced by
    /// its call's prompt too (long-context prices).
    fn record(
        &self,
        _call: &ModelCall,
        _seq: u32,
        _usage: Usage,
        _answered_by: Option<&str>,
        _prompt_tokens: u64,
    ) {
    }
}

/// One model call through the gateway.
#[derive(Debug, Clone)]
pub struct ModelCall {
    /// Unique per call (`mc_…`).
    pub id: String,
    /// The session whose key made it.
    pub session: String,
    /// The model asked for.
    pub model: String,
    /// `anthropic`, `openai` or `offline`.
    pub provider: String,
}

/// What the gateway metered for one session and has not handed to a turn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeteredUsage {
    /// Model requests.
    pub requests: u64,
    /// Their tokens.
    pub usage: Usage,
}

/// The gateway's shared state.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<GatewayInner>,
}

struct GatewayInner {
    upstream: Option<Upstream>,
    credentials: Arc<Credentials>,
    metrics: Arc<Metrics>,
    /// session id -> what was metered since its turn last took it.
    usage: Mutex<HashMap<String, MeteredUsage>>,
    /// The last request bodies received, newest last, when
    /// [`Gateway::keep_recent_requests`] asked for them (tests that assert
    /// what reached the model, a stand-in provider). Kept as the bytes that
    /// arrived — parsing and copying a harness's 100 KiB request on every
    /// call cost more than the rest of the hop.
    recent: Mutex<Option<VecDeque<Bytes>>>,
    /// The host's per-call choice of upstream (BYOK), if it set one.
    router: std::sync::OnceLock<Arc<dyn CallRouter>>,
    /// Connections to providers, each driven by the call using it.
    upstreams: upstream::Upstreams,
}

/// Requests kept in [`Gateway::recent_requests`].
const RECENT_REQUESTS: usize = 32;

/// Largest request body the gateway accepts.
const MAX_REQUEST_BYTES: usize = 32 * 1024 * 1024;

/// Largest single SSE event of an upstream answer.
const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// Largest unary upstream answer read for its usage.
const MAX_UNARY_BYTES: usize = 32 * 1024 * 1024;

impl Gateway {
    /// A gateway in front of `upstream`, or of the offline model when
    /// `None`, accepting the gateway keys of `credentials`.
    pub fn new(
        upstream: Option<Upstream>,
        credentials: Arc<Credentials>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            inner: Arc::new(GatewayInner {
                upstream,
                credentials,
                metrics,
                usage: Mutex::default(),
                recent: Mutex::default(),
                router: std::sync::OnceLock::new(),
                upstreams: upstream::Upstreams::new(),
            }),
        }
    }

    /// A gateway with a credentials registry and metrics of its own (for
    /// tests and tools that run one alone), keeping its recent requests.
    pub fn standalone(upstream: Option<Upstream>) -> Self {
        let gateway = Self::new(upstream, Arc::default(), Arc::default());
        gateway.keep_recent_requests(true);
        gateway
    }

    /// Whether to keep the last 32 request bodies for
    /// [`Gateway::recent_requests`]. Off unless asked for (a host's gateway
    /// keeps none: they are its end users' conversations, each up to
    /// 32 MiB); turning it off drops what was kept.
    pub fn keep_recent_requests(&self, keep: bool) {
        let mut recent = lock(&self.inner.recent);
        if keep {
            recent.get_or_insert_with(VecDeque::new);
        } else {
            *recent = None;
        }
    }

    /// Lets `router` pick the upstream of each call (once; a second call is
    /// ignored). The host does this at start.
    pub fn set_router(&self, router: Arc<dyn CallRouter>) {
        let _ = self.inner.router.set(router);
    }

    /// The upstream for one call: the router's choice (the org's own
    /// key), else the gateway's own if it can serve what the model name
    /// asks for, else the offline model (`None`) — or a refusal, when the
    /// model names a provider nothing here has a key for and the call
    /// cannot fall back to the offline model (see the module docs).
    fn upstream_for(&self, session: &str, wanted: Wanted) -> Result<Option<Upstream>, Refusal> {
        let router = self.inner.router.get();
        if let Some(router) = router
            && let Some(upstream) = router
                .upstream_for(session, wanted)
                .map_err(Refusal::Unavailable)?
        {
            return Ok(Some(upstream));
        }
        let platform = self.inner.upstream.clone();
        let Wanted::Provider(provider) = wanted else {
            return Ok(platform);
        };
        match platform {
            Some(upstream) if upstream.kind == translate::shape_of(provider) => Ok(Some(upstream)),
            None if !router.is_some_and(|r| r.has_own_keys(session)) => Ok(None),
            _ => Err(Refusal::NoKey(provider)),
        }
    }

    /// The credentials whose gateway keys it accepts.
    pub fn credentials(&self) -> &Arc<Credentials> {
        &self.inner.credentials
    }

    /// Whether a real upstream is configured.
    pub fn upstream(&self) -> Option<&Upstream> {
        self.inner.upstream.as_ref()
    }

    /// What the gateway metered for `session_id` since a turn last took it.
    pub fn usage(&self, session_id: &str) -> MeteredUsage {
        lock(&self.inner.usage)
            .get(session_id)
            .copied()
            .unwrap_or_default()
    }

    /// Takes what was metered for `session_id` (a turn takes its own at its
    /// end).
    pub fn take_usage(&self, session_id: &str) -> Usage {
        lock(&self.inner.usage)
            .remove(session_id)
            .map(|m| m.usage)
            .unwrap_or_default()
    }

    /// The last requests the gateway received (bodies, as JSON), oldest
    /// first; none unless [`Gateway::keep_recent_requests`] asked for them.
    pub fn recent_requests(&self) -> Vec<Value> {
        lock(&self.inner.recent)
            .iter()
            .flatten()
            .map(|bytes| serde_json::from_slice(bytes).unwrap_or(Value::Null))
            .collect()
    }

    /// The router: `/v1/messages`, `/v1/chat/completions`, each request in
    /// a span naming its session ([`crate::listen::with_request_spans`]).
    pub fn router(&self) -> Router {
        let routes = Router::new()
            .route("/v1/messages", post(anthropic_messages))
            .route("/v1/chat/completions", post(openai_chat))
            .with_state(self.clone());
        crate::listen::with_request_spans(routes, "gateway")
    }

    /// The gateway as an in-process [`ModelService`] for the builtin loop:
    /// each request goes through [`Gateway::router`] — the handler that
    /// serves TCP clients, so admission, budgets, BYOK routing and metering
    /// have one implementation — without a socket in between.
    pub fn service(&self) -> Arc<dyn ModelService> {
        Arc::new(InProcess {
            router: self.router(),
        })
    }

    /// Serves the gateway on `listener` until the returned task is stopped
    /// or dropped; returns its base URL.
    pub fn serve(
        &self,
        listener: tokio::net::TcpListener,
    ) -> std::io::Result<(String, ServerTask)> {
        let addr = listener.local_addr()?;
        let task = crate::listen::spawn_server("model gateway", listener, self.router());
        Ok((format!("http://{addr}"), task))
    }

    /// [`Gateway::serve`] as a harness's way out: jailed harness processes'
    /// connections to it are also taken in-process, without the jail's
    /// relay ([`crate::listen::spawn_way_out`]).
    pub fn serve_harnesses(
        &self,
        listener: tokio::net::TcpListener,
    ) -> std::io::Result<(String, ServerTask)> {
        let addr = listener.local_addr()?;
        let task = crate::listen::spawn_way_out("model gateway", listener, self.router())?;
        Ok((format!("http://{addr}"), task))
    }

    fn key_holder(&self, headers: &HeaderMap) -> Option<KeyHolder> {
        let key = headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .or_else(|| {
                headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
            })?;
        self.inner.credentials.gateway_key_holder(key.trim())
    }

    /// Counts a request.
    fn count_request(&self, session: &str) {
        lock(&self.inner.usage)
            .entry(session.to_owned())
            .or_default()
            .requests += 1;
    }

    /// Meters tokens of `call` to its session as they pass, and hands
    /// them to the host's ledger with the model the answer named so far.
    /// Counts `usage`, one increment of `call`'s answer that `meter` has
    /// read (the model it says answered, and the prompt so far, come from
    /// it).
    fn meter(
        &self,
        call: &ModelCall,
        seq: &mut u32,
        usage: Usage,
        meter: &karta_harness::model_stream::UsageMeter,
    ) {
        if usage.is_zero() {
            return;
        }
        lock(&self.inner.usage)
            .entry(call.session.clone())
            .or_default()
            .usage
            .add(usage);
        self.inner.metrics.record_tokens(usage);
        if let Some(router) = self.inner.router.get() {
            router.record(
                call,
                *seq,
                usage,
                meter.model(),
                meter.usage().prompt_tokens(),
            );
        }
        *seq += 1;
    }

    fn remember(&self, body: &Bytes) {
        if let Some(recent) = lock(&self.inner.recent).as_mut() {
            if recent.len() == RECENT_REQUESTS {
                recent.pop_front();
            }
            recent.push_back(body.clone());
        }
    }
}

/// [`Gateway::service`]: the router, called as a tower service.
struct InProcess {
    router: Router,
}

impl ModelService for InProcess {
    fn call(
        &self,
        request: hyper::Request<Full<Bytes>>,
    ) -> karta_harness::BoxFuture<'static, ModelResponse> {
        let mut router = self.router.clone();
        Box::pin(async move {
            let response = tower_service::Service::call(&mut router, request)
                .await
                .map_err(|e: Infallible| e.to_string())?;
            Ok(response.map(|body| body.map_err(std::io::Error::other).boxed_unsync()))
        })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The shape of an error answer, per wire format.
fn error_response(kind: UpstreamKind, status: StatusCode, code: &str, message: &str) -> Response {
    let body = match kind {
        UpstreamKind::Anthropic => json!({
            "type": "error", "error": { "type": code, "message": message },
        }),
        UpstreamKind::Openai => json!({
            "error": { "type": code, "code": code, "message": message },
        }),
    };
    (status, axum::Json(body)).into_response()
}

/// A request refused as malformed (400 `invalid_request_error`), in the
/// caller's shape.
fn invalid_request(kind: UpstreamKind, message: &str) -> Response {
    error_response(
        kind,
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        message,
    )
}

/// Why a call has no upstream.
enum Refusal {
    /// The org's key could not be read.
    Unavailable(String),
    /// The model names a provider with neither an org key nor a platform
    /// upstream.
    NoKey(crate::byok::Provider),
}

/// What the gateway reads of a request when it forwards it: whether the
/// answer streams, the model and the answer's limit (the rest is checked
/// to be JSON, not built). serde refuses a field named twice — however
/// its name is spelt, `\u` escapes decoded — so a request cannot show the
/// ledger one model and the provider another.
#[derive(serde::Deserialize, Default)]
struct RequestHead {
    #[serde(default)]
    stream: Option<bool>,
    /// The model asked for (what the ledger prices the call by).
    #[serde(default)]
    model: Option<String>,
    /// The most the answer may hold (Anthropic's and OpenAI's name).
    #[serde(default)]
    max_tokens: Option<u64>,
    /// OpenAI's newer name for it.
    #[serde(default)]
    max_completion_tokens: Option<u64>,
}

/// What a call's answer may hold when its request does not say.
const DEFAULT_MAX_TOKENS: u64 = 4096;

/// Holds a call open with the host's [`CallRouter`] until dropped — when
/// the answer's body is done or dropped, or the call failed before it.
pub(crate) struct CallGuard {
    router: Option<Arc<dyn CallRouter>>,
    call: ModelCall,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if let Some(router) = &self.router {
            router.end(&self.call);
        }
    }
}

/// What [`admit`] lets through: who holds the key, the body, whether the
/// answer streams, and the model asked for.
struct Admitted {
    holder: KeyHolder,
    bytes: Bytes,
    streaming: bool,
    model: String,
    max_tokens: u64,
}

/// Reads and checks a request: key, size, JSON.
async fn admit(
    gateway: &Gateway,
    kind: UpstreamKind,
    headers: &HeaderMap,
    body: Body,
) -> Result<Admitted, Response> {
    let Some(holder) = gateway.key_holder(headers) else {
        return Err(error_response(
            kind,
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "unknown gateway key: the gateway serves only keys the Karta host issued",
        ));
    };
    let bytes = match http_body_util::Limited::new(body, MAX_REQUEST_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Err(error_response(
                kind,
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                "the request body is larger than the gateway accepts",
            ));
        }
    };
    let head = match serde_json::from_slice::<RequestHead>(&bytes) {
        Ok(head) => head,
        // Valid JSON that is not an object: the offline model answers it,
        // a provider refuses it.
        Err(e) if e.is_data() && !is_object(&bytes) => RequestHead::default(),
        // An object whose head reads more than one way (a field twice) or
        // not at all (a field of the wrong type): the call is priced and
        // routed by these fields, so it is refused, not guessed at.
        Err(e) if e.is_data() => {
            return Err(invalid_request(
                kind,
                &format!(
                    "the request's `model`, `stream`, `max_tokens` or `max_completion_tokens` \
                     is given twice or has the wrong type ({e}); the gateway routes and prices \
                     the call by them, so each may appear once, as the API defines it"
                ),
            ));
        }
        Err(e) => {
            return Err(invalid_request(
                kind,
                &format!("the body is not valid JSON: {e}"),
            ));
        }
    };
    if let KeyHolder::Session(_) = holder {
        gateway.remember(&bytes);
    }
    Ok(Admitted {
        holder,
        bytes,
        streaming: head.stream.unwrap_or(false),
        model: head.model.unwrap_or_else(|| "unknown".into()),
        max_tokens: head
            .max_tokens
            .or(head.max_completion_tokens)
            .unwrap_or(DEFAULT_MAX_TOKENS),
    })
}

/// Whether a JSON text is an object (its first non-blank byte is `{`).
fn is_object(json: &[u8]) -> bool {
    json.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

async fn anthropic_messages(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(gateway, UpstreamKind::Anthropic, headers, body).await
}

async fn openai_chat(State(gateway): State<Gateway>, headers: HeaderMap, body: Body) -> Response {
    handle(gateway, UpstreamKind::Openai, headers, body).await
}

/// One model request in either shape: admit it, then forward it to the
/// upstream or answer it with the offline model in the same shape. Either
/// answer passes through [`relay::metered`], which meters its tokens to the
/// session as it goes.
async fn handle(gateway: Gateway, kind: UpstreamKind, headers: HeaderMap, body: Body) -> Response {
    let Admitted {
        holder,
        bytes,
        streaming,
        model,
        max_tokens,
    } = match admit(&gateway, kind, &headers, body).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let session = match holder {
        KeyHolder::Session(session) => session,
        KeyHolder::PoolSlot(_) => return warm_up_answer(kind, streaming, &model),
    };
    tracing::Span::current().record("session", session.as_str());
    gateway.count_request(&session);
    // The model name picks the provider; the ledger prices the name the
    // provider knows.
    let (picked, upstream_model) = translate::pick(&model);
    let wanted = picked.map_or(Wanted::Shape(kind), Wanted::Provider);
    let upstream = match gateway.upstream_for(&session, wanted) {
        Ok(upstream) => upstream,
        Err(Refusal::Unavailable(message)) => {
            return error_response(kind, StatusCode::BAD_GATEWAY, "api_error", &message);
        }
        Err(Refusal::NoKey(provider)) => {
            return error_response(
                kind,
                StatusCode::UNPROCESSABLE_ENTITY,
                "provider_not_configured",
                &format!(
                    "the model `{model}` asks for the provider {provider}, but this org has no \
                     {provider} key and the platform has no {provider} upstream: add the org's \
                     key with `karta provider-keys set --org <org> {provider}` (the key on stdin) \
                     or POST /v1/admin/orgs/<org>/provider-keys, or name a model of a provider \
                     the org has a key for"
                ),
            );
        }
    };
    let provider = match (&upstream, picked) {
        (None, _) => "offline",
        (Some(_), Some(provider)) => provider.as_str(),
        (Some(upstream), None) => upstream.kind.as_str(),
    };
    let call = ModelCall {
        id: format!("mc_{}", uuid::Uuid::new_v4().simple()),
        session: session.clone(),
        model: upstream_model.to_owned(),
        provider: provider.to_owned(),
    };
    // The tenant's budget holds room for the call before it goes out.
    let router = gateway.inner.router.get().cloned();
    if let Some(router) = &router
        && let Err(message) = router.begin(&call, max_tokens, bytes.len())
    {
        return error_response(
            kind,
            StatusCode::PAYMENT_REQUIRED,
            "budget_exhausted",
            &message,
        );
    }
    let guard = CallGuard {
        router,
        call: call.clone(),
    };
    if let Some(upstream) = upstream {
        let out = relay::Outbound {
            kind,
            bytes,
            streaming,
            asked: &model,
            model: upstream_model,
            headers: &headers,
        };
        return relay::forward(&gateway, &upstream, call, guard, out).await;
    }
    // The offline model reads the whole conversation.
    let request = match offline::read(kind, &bytes) {
        Ok(request) => request,
        Err(message) => {
            return invalid_request(kind, &message);
        }
    };
    let reply = match offline::reply(&request.conversation) {
        Ok(reply) => reply,
        Err(failure) => {
            let status = StatusCode::from_u16(failure.status).unwrap_or(StatusCode::BAD_GATEWAY);
            return error_response(kind, status, "api_error", &failure.message);
        }
    };
    let model = request.model.as_deref().unwrap_or("karta-offline");
    let (content_type, answer) =
        wire::answer(kind, streaming, request.include_usage, &reply, model);
    let chunks = futures_util::stream::iter([Ok::<_, Infallible>(Bytes::from(answer))]);
    let body = relay::metered(gateway, call, guard, kind.shape(), streaming, chunks);
    Response::builder()
        .header("content-type", content_type)
        .header("cache-control", "no-cache")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// What a pooled process's warm-up call gets: a fixed short answer in the
/// shape it asked for, made here — no provider is called, no token is
/// metered, no budget is touched, nothing is recorded. A slot's key is
/// nobody's until a session claims it ([`Credentials::rebind`]), and
/// its process only ever asks during its warm-up, whose exchange it
/// clears or deletes before it is offered (the Claude Code and OpenCode
/// adapters of `karta_harness`).
fn warm_up_answer(kind: UpstreamKind, streaming: bool, model: &str) -> Response {
    let reply = offline::Reply {
        text: Some("ok".into()),
        ..offline::Reply::default()
    };
    let (content_type, answer) = wire::answer(kind, streaming, false, &reply, model);
    Response::builder()
        .header("content-type", content_type)
        .header("cache-control", "no-cache")
        .body(Body::from(answer))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
