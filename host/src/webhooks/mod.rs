//! Webhooks: an org's endpoints, a durable outbox of deliveries, and the
//! loop that signs and sends them.
//!
//! | file | what it does |
//! | --- | --- |
//! | `types.rs` | [`EventType`], [`Endpoint`], [`Delivery`], [`WebhookConfig`], [`WebhookError`] |
//! | `mod.rs` | [`Webhooks`]: endpoints, listing deliveries, enqueueing |
//! | `deliver.rs` | [`Webhooks::start`]: the delivery loop, retries, disabling |
//! | `sign.rs` | [`sign()`] and [`verify()`] |
//!
//! ## Storage (trees of the host's sled [`Store`])
//!
//! - `webhook_endpoints`: `org 0x00 endpoint id` → the endpoint and its
//!   signing secret (JSON). The secret is kept in the clear so the host can
//!   sign; it is as protected as the data dir (not sealed like BYOK keys).
//! - `webhook_outbox`: the *pending* deliveries only, key `org 0x00
//!   endpoint id 0x00 created ms (u64 BE) delivery id` → the delivery, its
//!   body and when it is due. The loop scans only this tree, so its work is
//!   proportional to what is pending, not to history.
//! - `webhook_deliveries`: finished deliveries (delivered or failed), same
//!   keys, moved there in the transaction that records their last attempt.
//!
//! ## "In the same transaction as the event"
//!
//! [`Webhooks::prepare`] reads the subscribed endpoints and builds the rows
//! *before* the transaction (sled deadlocks on a non-transactional read
//! inside one); [`Prepared::write_in`] writes them through the caller's
//! [`TransactionalTree`] of [`Webhooks::outbox_tree`], so a caller adds the
//! outbox to the transaction that writes its event:
//!
//! ```ignore
//! let prepared = webhooks.prepare(org, EventType::TurnCompleted, &event_id, &data)?;
//! (&events, webhooks.outbox_tree()).transaction(|(events, outbox)| {
//!     events.insert(key, value)?;
//!     prepared.write_in(outbox)?;
//!     Ok(())
//! })?;
//! webhooks.wake(); // after the commit: send now rather than at the next poll
//! ```
//!
//! Either both are written or neither; sled may rerun the closure on a
//! conflict, and each run writes the same rows again.
//! Which endpoints subscribe is read before the transaction (an endpoint
//! created or deleted concurrently may or may not get the event; a deleted
//! one's row is dropped at delivery). [`Webhooks::enqueue`] is the same in a
//! transaction of its own, for an event with no other write.
//!
//! Delivery is at least once: a crash after a 2xx but before it is recorded
//! sends it again, with the same `karta-webhook-id`.

mod deliver;
mod sign;
mod types;

#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use ring::rand::SystemRandom;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{TransactionalTree, UnabortableTransactionError};

use crate::plugin::net::NetPolicy;
use crate::store::Store;

pub use deliver::DeliveryTask;
pub use sign::{sign, verify};
pub use types::{Delivery, DeliveryStatus, Endpoint, EventType, WebhookConfig, WebhookError};

/// The longest endpoint URL accepted.
const MAX_URL_LEN: usize = 2048;

/// The outbox tree's name: the store opens it for modules that write their
/// event and its deliveries in one transaction (the event log, releases).
pub const OUTBOX_TREE: &str = "webhook_outbox";

/// An endpoint as stored: the record and its signing secret.
#[derive(Serialize, Deserialize)]
struct StoredEndpoint {
    endpoint: Endpoint,
    secret: String,
}

/// A delivery as stored: what is listed, plus what sending it needs.
#[derive(Clone, Serialize, Deserialize)]
struct Row {
    delivery: Delivery,
    org_id: String,
    /// The exact body, fixed at enqueue so every attempt signs the same bytes.
    body: String,
    /// Unix milliseconds of the next attempt.
    due_ms: u64,
}

/// Outbox rows built by [`Webhooks::prepare`], not written yet.
#[derive(Debug, Clone, Default)]
#[must_use = "nothing is queued until `write_in` runs in a transaction"]
pub struct Prepared {
    rows: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Prepared {
    /// Writes the rows through `outbox`, the caller's transactional view of
    /// [`Webhooks::outbox_tree`]. Safe to rerun when sled retries the
    /// closure: it writes the same keys again. Answers how many.
    pub fn write_in(
        &self,
        outbox: &TransactionalTree,
    ) -> Result<usize, UnabortableTransactionError> {
        for (key, value) in &self.rows {
            outbox.insert(key.as_slice(), value.as_slice())?;
        }
        Ok(self.rows.len())
    }

    /// Its rows (outbox key, value), for the store's journal.
    pub(crate) fn rows(&self) -> &[(Vec<u8>, Vec<u8>)] {
        &self.rows
    }

    /// How many deliveries it holds.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no endpoint is subscribed.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// An org's webhooks; cheap to clone.
#[derive(Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: sled::Tree,
    outbox: sled::Tree,
    finished: sled::Tree,
    /// Events sent at most once (`budget.exceeded` per budget and period):
    /// their keys, written with their deliveries.
    once: sled::Tree,
    allow: Vec<IpNet>,
    policy: NetPolicy,
    config: WebhookConfig,
    rng: SystemRandom,
    wake: tokio::sync::Notify,
}

impl Webhooks {
    /// Opens the webhook trees of `store`. `allow_net` is the operator's
    /// exceptions to the refused address ranges — the same CIDR list as
    /// `karta serve --plugin-allow-net`, judged by the same check
    /// (`plugin::net`) on every address a delivery connects to.
    pub fn open(
        store: Store,
        allow_net: Vec<IpNet>,
        config: WebhookConfig,
    ) -> Result<Self, WebhookError> {
        Ok(Self {
            inner: Arc::new(Inner {
                endpoints: store.tree("webhook_endpoints")?,
                outbox: store.tree(OUTBOX_TREE)?,
                finished: store.tree("webhook_deliveries")?,
                once: store.tree("webhook_once")?,
                policy: NetPolicy::new(allow_net.clone()),
                allow: allow_net,
                config,
                rng: SystemRandom::new(),
                wake: tokio::sync::Notify::new(),
            }),
        })
    }

    /// Adds an endpoint for `org_id`; answers it with its signing secret,
    /// which is shown only here.
    ///
    /// The URL must be `https://`; `http://` is accepted only to an IP
    /// address inside the operator's allow-list (a receiver on the
    /// operator's own network). An IP literal the policy refuses (loopback,
    /// private, link-local, …) is refused here; a *name* is judged by what
    /// it resolves to at each delivery, so a name resolving to loopback
    /// fails there, with the reason in the delivery's `last_error`.
    pub fn create_endpoint(
        &self,
        org_id: &str,
        url: &str,
        events: Vec<EventType>,
    ) -> Result<(Endpoint, SecretString), WebhookError> {
        check_org(org_id)?;
        self.check_url(url)?;
        let mut events = events;
        events.sort_by_key(|e| e.as_str());
        events.dedup();
        if events.is_empty() {
            return Err(WebhookError::Invalid(
                "an endpoint needs at least one event type".into(),
            ));
        }
        let secret = sign::new_secret(&self.inner.rng).map_err(|_| WebhookError::Random)?;
        let endpoint = Endpoint {
            id: format!("whk_{}", uuid::Uuid::new_v4().simple()),
            org_id: org_id.to_owned(),
            url: url.to_owned(),
            events,
            created_at: rfc3339(now_ms()),
            disabled_at: None,
            consecutive_failures: 0,
        };
        let stored = StoredEndpoint {
            endpoint: endpoint.clone(),
            secret: secret.clone(),
        };
        self.inner.endpoints.insert(
            endpoint_key(org_id, &endpoint.id),
            serde_json::to_vec(&stored)?,
        )?;
        Ok((endpoint, SecretString::from(secret)))
    }

    /// The org's endpoints, oldest id first.
    pub fn endpoints(&self, org_id: &str) -> Result<Vec<Endpoint>, WebhookError> {
        check_org(org_id)?;
        self.inner
            .endpoints
            .scan_prefix(prefix(&[org_id]))
            .map(|item| {
                let (_, value) = item?;
                Ok(serde_json::from_slice::<StoredEndpoint>(&value)?.endpoint)
            })
            .collect()
    }

    /// Removes an endpoint and its deliveries, pending or not. Another
    /// org's endpoint is [`WebhookError::NotFound`].
    pub fn delete_endpoint(&self, org_id: &str, id: &str) -> Result<(), WebhookError> {
        check_org(org_id)?;
        if self
            .inner
            .endpoints
            .remove(endpoint_key(org_id, id))?
            .is_none()
        {
            return Err(WebhookError::NotFound);
        }
        // A row an attempt re-inserts after this finds no endpoint and is
        // dropped by the loop.
        for tree in [&self.inner.outbox, &self.inner.finished] {
            for key in tree.scan_prefix(prefix(&[org_id, id])).keys() {
                tree.remove(key?)?;
            }
        }
        Ok(())
    }

    /// The endpoint's newest `limit` deliveries, pending and finished,
    /// newest first. Another org's endpoint is [`WebhookError::NotFound`].
    pub fn deliveries(
        &self,
        org_id: &str,
        endpoint_id: &str,
        limit: usize,
    ) -> Result<Vec<Delivery>, WebhookError> {
        check_org(org_id)?;
        if !self
            .inner
            .endpoints
            .contains_key(endpoint_key(org_id, endpoint_id))?
        {
            return Err(WebhookError::NotFound);
        }
        let prefix = prefix(&[org_id, endpoint_id]);
        let mut rows = Vec::new();
        for tree in [&self.inner.outbox, &self.inner.finished] {
            for item in tree.scan_prefix(&prefix).rev().take(limit) {
                let (key, value) = item?;
                rows.push((key, serde_json::from_slice::<Row>(&value)?.delivery));
            }
        }
        // Keys order by creation time within an endpoint.
        rows.sort_by(|a, b| b.0.cmp(&a.0));
        Ok(rows.into_iter().take(limit).map(|(_, d)| d).collect())
    }

    /// The tree to add to a transaction that calls [`Prepared::write_in`].
    pub fn outbox_tree(&self) -> &sled::Tree {
        &self.inner.outbox
    }

    /// The outbox rows for `event_type` — one pending delivery for each
    /// enabled endpoint of `org_id` subscribed to it — read and built now,
    /// to be written by [`Prepared::write_in`] inside the caller's
    /// transaction. (sled deadlocks on a non-transactional read inside a
    /// transaction, so the endpoints are read here, before it.) The body is
    /// `{"id": event_id, "type", "created_at", "data": data}`.
    pub fn prepare(
        &self,
        org_id: &str,
        event_type: EventType,
        event_id: &str,
        data: &serde_json::Value,
    ) -> Result<Prepared, WebhookError> {
        check_org(org_id)?;
        let now = now_ms();
        let created_at = rfc3339(now);
        let body = serde_json::json!({
            "id": event_id,
            "type": event_type,
            "created_at": created_at,
            "data": data,
        })
        .to_string();
        let mut rows = Vec::new();
        for endpoint in self.endpoints(org_id)? {
            if endpoint.disabled_at.is_some() || !endpoint.events.contains(&event_type) {
                continue;
            }
            let id = format!("dlv_{}", uuid::Uuid::new_v4().simple());
            let row = Row {
                delivery: Delivery {
                    id: id.clone(),
                    endpoint_id: endpoint.id.clone(),
                    event_type,
                    event_id: event_id.to_owned(),
                    attempts: 0,
                    status: DeliveryStatus::Pending,
                    last_status: None,
                    last_error: None,
                    next_attempt_at: Some(created_at.clone()),
                    created_at: created_at.clone(),
                },
                org_id: org_id.to_owned(),
                body: body.clone(),
                due_ms: now,
            };
            let key = delivery_key(org_id, &endpoint.id, now, &id);
            rows.push((key, serde_json::to_vec(&row)?));
        }
        Ok(Prepared { rows })
    }

    /// Whether an enabled endpoint of `org_id` is subscribed to
    /// `event_type`, so that a caller builds an event's data only for a
    /// notice someone will get (every turn's end asks). A store that cannot
    /// answer says yes: [`Webhooks::prepare`] then reports the error.
    pub fn subscribed(&self, org_id: &str, event_type: EventType) -> bool {
        self.endpoints(org_id).map_or(true, |endpoints| {
            endpoints
                .iter()
                .any(|e| e.disabled_at.is_none() && e.events.contains(&event_type))
        })
    }

    /// [`Webhooks::prepare`] and [`Prepared::write_in`] in a transaction of
    /// its own, then [`Webhooks::wake`]: for a caller whose event is nothing
    /// but this notification (no other write to share a transaction with).
    /// Answers how many deliveries were queued.
    pub fn enqueue(
        &self,
        org_id: &str,
        event_type: EventType,
        event_id: &str,
        data: &serde_json::Value,
    ) -> Result<usize, WebhookError> {
        let prepared = self.prepare(org_id, event_type, event_id, data)?;
        (self.outbox_tree(),)
            .transaction(|(outbox,)| Ok(prepared.write_in(outbox)?))
            .map_err(|e: sled::transaction::TransactionError<()>| match e {
                sled::transaction::TransactionError::Storage(e) => WebhookError::Store(e),
                sled::transaction::TransactionError::Abort(()) => {
                    WebhookError::Invalid("enqueue aborted".into())
                }
            })?;
        self.wake();
        Ok(prepared.len())
    }

    /// [`Webhooks::enqueue`] for an event that is sent at most once per
    /// `once_key` (a budget exceeded is told once per budget, cap and
    /// period, not at every refusal): the key is written in the
    /// transaction that queues the deliveries, so two racing callers queue
    /// one set. Answers how many deliveries were queued (0 when the key was
    /// seen before, or no endpoint is subscribed).
    pub fn enqueue_once(
        &self,
        org_id: &str,
        event_type: EventType,
        once_key: &[u8],
        data: &serde_json::Value,
    ) -> Result<usize, WebhookError> {
        let mut key = prefix(&[org_id, event_type.as_str()]);
        key.extend_from_slice(once_key);
        if self.inner.once.contains_key(&key)? {
            return Ok(0);
        }
        let event_id = format!("evt_{}", uuid::Uuid::new_v4().simple());
        let prepared = self.prepare(org_id, event_type, &event_id, data)?;
        let queued = (&self.inner.outbox, &self.inner.once)
            .transaction(|(outbox, once)| {
                if once.insert(key.as_slice(), &[])?.is_some() {
                    return Ok(0);
                }
                Ok(prepared.write_in(outbox)?)
            })
            .map_err(|e: sled::transaction::TransactionError<()>| match e {
                sled::transaction::TransactionError::Storage(e) => WebhookError::Store(e),
                sled::transaction::TransactionError::Abort(()) => {
                    WebhookError::Invalid("enqueue aborted".into())
                }
            })?;
        if queued > 0 {
            self.wake();
        }
        Ok(queued)
    }

    /// Enables a disabled endpoint again (its failure count starts over);
    /// deliveries failed while it was disabled stay failed. Another org's
    /// endpoint is [`WebhookError::NotFound`].
    pub fn enable_endpoint(&self, org_id: &str, id: &str) -> Result<Endpoint, WebhookError> {
        check_org(org_id)?;
        let key = endpoint_key(org_id, id);
        let Some(value) = self.inner.endpoints.get(&key)? else {
            return Err(WebhookError::NotFound);
        };
        let mut stored: StoredEndpoint = serde_json::from_slice(&value)?;
        stored.endpoint.disabled_at = None;
        stored.endpoint.consecutive_failures = 0;
        // Compare-and-swap: a delivery recording its outcome meanwhile
        // (which rewrites the endpoint) makes this fail rather than be lost.
        self.inner
            .endpoints
            .compare_and_swap(&key, Some(value), Some(serde_json::to_vec(&stored)?))?
            .map_err(|_| {
                WebhookError::Invalid("the endpoint changed meanwhile; try again".into())
            })?;
        Ok(stored.endpoint)
    }

    /// Tells a running delivery loop to look at the outbox now (call it after
    /// the transaction that wrote [`Prepared`] rows commits).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Refuses a URL that is not http(s), has credentials or names a
    /// refused address literally.
    fn check_url(&self, url: &str) -> Result<(), WebhookError> {
        let bad = |why: &str| WebhookError::Invalid(format!("bad webhook URL: {why}"));
        if url.len() > MAX_URL_LEN {
            return Err(bad(&format!("longer than {MAX_URL_LEN} bytes")));
        }
        let uri: hyper::Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("credentials in the URL are not accepted"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let ip = host.parse::<IpAddr>().ok();
        if let Some(ip) = ip {
            self.inner
                .policy
                .check(ip)
                .map_err(|why| WebhookError::Refused(refused_message(ip, why)))?;
        }
        match uri.scheme_str() {
            Some("https") => Ok(()),
            Some("http")
                if ip.is_some_and(|ip| self.inner.allow.iter().any(|n| n.contains(&ip))) =>
            {
                Ok(())
            }
            Some("http") => Err(bad(
                "http:// is accepted only to an address the operator allowed; use https://",
            )),
            _ => Err(bad("only https:// URLs are accepted")),
        }
    }
}

/// The meter's hook ([`crate::meter::Meter::on_exhausted`]) that queues
/// `budget.exceeded` for the budget's org: once per budget, cap and period
/// (a budget refusing every call of a busy day is told once, not at each).
pub fn budget_exceeded_hook(webhooks: Webhooks) -> crate::meter::ExhaustedHook {
    Arc::new(move |exhausted: &crate::meter::BudgetExhausted| {
        let org_id = exhausted.scope.org_id().to_owned();
        let today = rfc3339(now_ms());
        let period = match exhausted.period {
            crate::meter::Period::Day => &today[..10],
            crate::meter::Period::Month => &today[..7],
        };
        let once = format!(
            "{}\0{}\0{}\0{}",
            exhausted.scope, exhausted.period, period, exhausted.cap_micros
        );
        let data = serde_json::json!({
            "scope": exhausted.scope,
            "period": exhausted.period,
            "period_start": period,
            "cap_micros": exhausted.cap_micros,
            "spent_micros": exhausted.spent_micros,
            "reserved_micros": exhausted.reserved_micros,
        });
        let webhooks = webhooks.clone();
        // Off the caller's thread: a refusal answers at once, and the
        // queueing (a read and a transaction) is not on its path.
        let queue = move || {
            if let Err(e) =
                webhooks.enqueue_once(&org_id, EventType::BudgetExceeded, once.as_bytes(), &data)
            {
                tracing::error!(org = %org_id, "cannot queue the budget.exceeded webhook: {e}");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(queue)),
            Err(_) => queue(),
        }
    })
}

fn refused_message(ip: IpAddr, why: &str) -> String {
    format!(
        "webhook URLs may not point at {ip}: it is {why}; an operator can allow a range \
         with `karta serve --plugin-allow-net CIDR`"
    )
}

fn check_org(org_id: &str) -> Result<(), WebhookError> {
    if org_id.is_empty() || org_id.contains('\0') {
        return Err(WebhookError::Invalid(format!("bad org id `{org_id}`")));
    }
    Ok(())
}

/// `a 0x00 b 0x00 …` with a trailing 0x00, so `org1` never matches `org10`.
fn prefix(parts: &[&str]) -> Vec<u8> {
    let mut key = Vec::new();
    for part in parts {
        key.extend_from_slice(part.as_bytes());
        key.push(0);
    }
    key
}

fn endpoint_key(org_id: &str, id: &str) -> Vec<u8> {
    let mut key = prefix(&[org_id]);
    key.extend_from_slice(id.as_bytes());
    key
}

fn delivery_key(org_id: &str, endpoint_id: &str, created_ms: u64, id: &str) -> Vec<u8> {
    let mut key = prefix(&[org_id, endpoint_id]);
    key.extend_from_slice(&created_ms.to_be_bytes());
    key.extend_from_slice(id.as_bytes());
    key
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}
