//! The webhook records, configuration and errors.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What happened, as a receiver sees it in the body's `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum EventType {
    /// A session was created.
    #[serde(rename = "session.started")]
    SessionStarted,
    /// A turn ended with `done`.
    #[serde(rename = "turn.completed")]
    TurnCompleted,
    /// A turn ended with an error.
    #[serde(rename = "turn.failed")]
    TurnFailed,
    /// A budget refused a turn or a model call.
    #[serde(rename = "budget.exceeded")]
    BudgetExceeded,
    /// A release became a project's active one.
    #[serde(rename = "release.activated")]
    ReleaseActivated,
}

impl EventType {
    /// The wire name (`"turn.completed"`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::SessionStarted => "session.started",
            EventType::TurnCompleted => "turn.completed",
            EventType::TurnFailed => "turn.failed",
            EventType::BudgetExceeded => "budget.exceeded",
            EventType::ReleaseActivated => "release.activated",
        }
    }
}

/// Where an org's events go. The signing secret is not part of it: it is
/// shown once, by [`super::Webhooks::create_endpoint`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Endpoint {
    /// `whk_` and 32 hex digits.
    pub id: String,
    /// The org it belongs to; no other org sees it.
    pub org_id: String,
    /// `https://…` (or `http://` to an address the operator allowed).
    pub url: String,
    /// The events it is sent.
    pub events: Vec<EventType>,
    /// RFC 3339.
    pub created_at: String,
    /// Set when it was disabled after repeated failed deliveries; nothing
    /// is queued or sent to it since.
    pub disabled_at: Option<String>,
    /// Deliveries that failed for good since the last one delivered.
    pub consecutive_failures: u32,
}

/// Where one delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Queued or waiting for a retry.
    Pending,
    /// A 2xx answer arrived.
    Delivered,
    /// Out of attempts, or its endpoint was disabled.
    Failed,
}

/// One event sent (or to be sent) to one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Delivery {
    /// `dlv_` and 32 hex digits; sent as `karta-webhook-id`, the same on
    /// every attempt, so a receiver can drop a repeat.
    pub id: String,
    /// The endpoint it goes to.
    pub endpoint_id: String,
    /// The event's type.
    pub event_type: EventType,
    /// The caller's id of the event (the body's `id`).
    pub event_id: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// The HTTP status of the last attempt, if one answered.
    pub last_status: Option<u16>,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
    /// RFC 3339, while pending.
    pub next_attempt_at: Option<String>,
    /// RFC 3339.
    pub created_at: String,
}

/// How deliveries are retried and endpoints disabled.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// The first retry's delay; attempt `n` waits `base * 2^(n-1)`, ± 20 %.
    pub base_delay: Duration,
    /// The longest wait between attempts.
    pub max_delay: Duration,
    /// Attempts before a delivery fails for good.
    pub max_attempts: u32,
    /// One attempt's limit: connecting, sending and the answer's head.
    pub timeout: Duration,
    /// Failed deliveries in a row that disable an endpoint.
    pub disable_after: u32,
    /// How often the loop looks for due deliveries when nothing woke it.
    pub poll_interval: Duration,
    /// Attempts in flight at once, across all orgs.
    pub concurrency: usize,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(3600),
            max_attempts: 8,
            timeout: Duration::from_secs(10),
            disable_after: 5,
            poll_interval: Duration::from_secs(1),
            concurrency: 16,
        }
    }
}

/// What a webhook call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// No such endpoint in this org (another org's is "not found" too).
    #[error("webhook endpoint not found")]
    NotFound,
    /// The request is malformed: a bad URL, no events, a bad org id.
    #[error("{0}")]
    Invalid(String),
    /// The URL's address is one the operator's network policy refuses.
    #[error("{0}")]
    Refused(String),
    /// Storage failed.
    #[error("webhook storage: {0}")]
    Store(#[from] sled::Error),
    /// A stored record does not decode.
    #[error("webhook record: {0}")]
    Json(#[from] serde_json::Error),
    /// The store could not be opened.
    #[error(transparent)]
    Open(#[from] crate::store::StoreError),
    /// The system's random source failed.
    #[error("no randomness for a webhook secret")]
    Random,
}
