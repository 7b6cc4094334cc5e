//! The delivery loop: finds due rows in the outbox, sends each (a task per
//! attempt, at most `concurrency` at once), and records the outcome —
//! delivered, retry later, or failed for good — in one transaction with the
//! endpoint's failure count.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use ring::rand::SecureRandom;
use sled::Transactional;
use sled::transaction::ConflictableTransactionError;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{
    DeliveryStatus, Inner, Row, StoredEndpoint, Webhooks, endpoint_key, now_ms, prefix, rfc3339,
};
use crate::plugin::net::{GuardedConnector, find_denial};

type HttpClient = Client<hyper_rustls::HttpsConnector<GuardedConnector>, Full<Bytes>>;

/// The running delivery loop; dropping it (or [`DeliveryTask::stop`]) stops
/// it. Attempts in flight are abandoned and stay pending, sent again at the
/// next start.
pub struct DeliveryTask {
    cancel: CancellationToken,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl DeliveryTask {
    /// Stops the loop and waits for it to end.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(handle) = self.handle.take() {
            let _ = handle.await;
        }
    }
}

impl Drop for DeliveryTask {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// What one attempt came to.
enum Outcome {
    /// A 2xx answer.
    Delivered(u16),
    /// Another answer, or none; retried while attempts remain.
    Failed { status: Option<u16>, error: String },
    /// Not attempted: the endpoint is disabled. Fails the delivery without
    /// counting against the endpoint.
    Abandoned(&'static str),
    /// The endpoint was deleted: the row goes too.
    Gone,
}

impl Webhooks {
    /// Starts the delivery loop on the current tokio runtime (see
    /// [`DeliveryTask`]). Must be called from within a runtime.
    pub fn start(&self) -> DeliveryTask {
        let cancel = CancellationToken::new();
        // The same connector as plugin HTTP: resolve once, drop every
        // address the policy refuses, connect only to what passed.
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(GuardedConnector::new(
                self.inner.policy.clone(),
                self.inner.config.timeout,
            ));
        let client: HttpClient = Client::builder(TokioExecutor::new()).build(connector);
        let inner = self.inner.clone();
        let handle = tokio::spawn(run(inner, client, cancel.clone()));
        DeliveryTask {
            cancel,
            handle: Some(handle),
        }
    }
}

async fn run(inner: Arc<Inner>, client: HttpClient, cancel: CancellationToken) {
    let in_flight: Arc<Mutex<HashSet<Vec<u8>>>> = Arc::default();
    let mut attempts = JoinSet::new();
    let poll = inner.config.poll_interval;
    loop {
        while attempts.try_join_next().is_some() {}
        let now = now_ms();
        let mut wait = poll;
        for item in inner.outbox.iter() {
            let Ok((key, value)) = item else {
                tracing::warn!("webhook outbox unreadable; retrying");
                break;
            };
            let Ok(row) = serde_json::from_slice::<Row>(&value) else {
                tracing::warn!("webhook outbox row does not decode; left in place");
                continue;
            };
            if row.due_ms > now {
                wait = wait.min(Duration::from_millis(row.due_ms - now));
                continue;
            }
            if attempts.len() >= inner.config.concurrency.max(1) {
                break; // the join branch below wakes us when one ends
            }
            if !in_flight
                .lock()
                .expect("in-flight set")
                .insert(key.to_vec())
            {
                continue;
            }
            // Read again now that the key is held: an attempt that ended
            // between the listing's read and the claim has recorded its
            // outcome (it leaves the in-flight set only after that), and
            // the row read above would send a delivered event twice.
            let row = match inner.outbox.get(&key) {
                Ok(Some(value)) => serde_json::from_slice::<Row>(&value)
                    .ok()
                    .filter(|row| row.due_ms <= now),
                _ => None,
            };
            let Some(row) = row else {
                in_flight
                    .lock()
                    .expect("in-flight set")
                    .remove(key.as_ref());
                continue;
            };
            let (inner, client, in_flight) = (inner.clone(), client.clone(), in_flight.clone());
            attempts.spawn(async move {
                let outcome = attempt(&inner, &client, &row).await;
                if let Err(e) = record(&inner, &key, outcome) {
                    tracing::warn!(delivery = %row.delivery.id, "recording a webhook attempt failed: {e}");
                }
                in_flight.lock().expect("in-flight set").remove(key.as_ref());
            });
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = inner.wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
            Some(_) = attempts.join_next(), if !attempts.is_empty() => {}
        }
    }
    attempts.shutdown().await;
}

/// Sends `row` once to its endpoint, signed with the endpoint's secret.
async fn attempt(inner: &Inner, client: &HttpClient, row: &Row) -> Outcome {
    let key = endpoint_key(&row.org_id, &row.delivery.endpoint_id);
    let stored = match inner.endpoints.get(&key) {
        Ok(Some(v)) => match serde_json::from_slice::<StoredEndpoint>(&v) {
            Ok(s) => s,
            Err(e) => {
                return Outcome::Failed {
                    status: None,
                    error: format!("endpoint record: {e}"),
                };
            }
        },
        Ok(None) => return Outcome::Gone,
        Err(e) => {
            return Outcome::Failed {
                status: None,
                error: format!("storage: {e}"),
            };
        }
    };
    if stored.endpoint.disabled_at.is_some() {
        return Outcome::Abandoned("the endpoint is disabled");
    }
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let request = hyper::Request::post(stored.endpoint.url.as_str())
        .header("content-type", "application/json")
        .header("user-agent", "karta-webhooks/1")
        .header("karta-webhook-id", row.delivery.id.as_str())
        .header("karta-webhook-timestamp", timestamp.to_string())
        .header(
            "karta-signature",
            super::sign(&stored.secret, timestamp, row.body.as_bytes()),
        )
        .body(Full::new(Bytes::from(row.body.clone())));
    let request = match request {
        Ok(r) => r,
        Err(e) => {
            return Outcome::Failed {
                status: None,
                error: format!("bad request: {e}"),
            };
        }
    };
    // The answer's head decides; its body is not read (the connection is
    // dropped with it, not reused — a receiver's body is not worth waiting for).
    match tokio::time::timeout(inner.config.timeout, client.request(request)).await {
        Err(_) => Outcome::Failed {
            status: None,
            error: format!("no answer within {:?}", inner.config.timeout),
        },
        Ok(Err(e)) => Outcome::Failed {
            status: None,
            error: match find_denial(&e) {
                Some(denied) => format!("refused by the network policy: {denied}"),
                None => format!("{e:#}"),
            },
        },
        Ok(Ok(answer)) if answer.status().is_success() => {
            Outcome::Delivered(answer.status().as_u16())
        }
        Ok(Ok(answer)) => Outcome::Failed {
            status: Some(answer.status().as_u16()),
            error: format!("the endpoint answered {}", answer.status()),
        },
    }
}

/// Records `outcome` for the row at `key`: its new state, where it lives
/// (outbox while pending, history once finished) and the endpoint's failure
/// count, in one transaction. Disabling an endpoint then fails its other
/// pending rows.
fn record(inner: &Inner, key: &[u8], outcome: Outcome) -> Result<(), sled::Error> {
    let config = &inner.config;
    let jitter = jitter(inner);
    let now = now_ms();
    let disabled = (&inner.outbox, &inner.finished, &inner.endpoints).transaction(
        |(outbox, finished, endpoints)| {
            let Some(value) = outbox.get(key)? else {
                return Ok(None); // deleted meanwhile
            };
            let mut row: Row = serde_json::from_slice(&value).map_err(abort)?;
            let ep_key = endpoint_key(&row.org_id, &row.delivery.endpoint_id);
            let mut stored = match endpoints.get(&ep_key)? {
                Some(v) => serde_json::from_slice::<StoredEndpoint>(&v).map_err(abort)?,
                None => {
                    outbox.remove(key)?;
                    return Ok(None);
                }
            };
            let d = &mut row.delivery;
            let mut failed_for_good = false;
            match &outcome {
                Outcome::Gone => {
                    outbox.remove(key)?;
                    return Ok(None);
                }
                Outcome::Delivered(status) => {
                    d.attempts += 1;
                    d.status = DeliveryStatus::Delivered;
                    d.last_status = Some(*status);
                    d.last_error = None;
                    stored.endpoint.consecutive_failures = 0;
                }
                Outcome::Failed { status, error } => {
                    d.attempts += 1;
                    d.last_status = *status;
                    d.last_error = Some(error.clone());
                    if d.attempts >= config.max_attempts {
                        d.status = DeliveryStatus::Failed;
                        failed_for_good = true;
                    } else {
                        let delay = backoff(config, d.attempts, jitter);
                        row.due_ms = now + delay.as_millis() as u64;
                    }
                }
                Outcome::Abandoned(why) => {
                    d.status = DeliveryStatus::Failed;
                    d.last_error = Some((*why).to_owned());
                }
            }
            let mut newly_disabled = false;
            if failed_for_good {
                stored.endpoint.consecutive_failures += 1;
                if stored.endpoint.consecutive_failures >= config.disable_after
                    && stored.endpoint.disabled_at.is_none()
                {
                    stored.endpoint.disabled_at = Some(rfc3339(now));
                    newly_disabled = true;
                }
            }
            let d = &mut row.delivery;
            if d.status == DeliveryStatus::Pending {
                d.next_attempt_at = Some(rfc3339(row.due_ms));
                outbox.insert(key, serde_json::to_vec(&row).map_err(abort)?)?;
            } else {
                d.next_attempt_at = None;
                outbox.remove(key)?;
                finished.insert(key, serde_json::to_vec(&row).map_err(abort)?)?;
            }
            endpoints.insert(ep_key, serde_json::to_vec(&stored).map_err(abort)?)?;
            Ok(newly_disabled.then(|| (row.org_id.clone(), row.delivery.endpoint_id.clone())))
        },
    );
    let disabled = match disabled {
        Ok(d) => d,
        Err(sled::transaction::TransactionError::Storage(e)) => return Err(e),
        Err(sled::transaction::TransactionError::Abort(e)) => {
            tracing::warn!("a webhook record does not decode: {e}");
            None
        }
    };
    if let Some((org, endpoint)) = disabled {
        tracing::info!(%org, %endpoint, "webhook endpoint disabled after repeated failed deliveries");
        for pending in inner.outbox.scan_prefix(prefix(&[&org, &endpoint])).keys() {
            record(
                inner,
                &pending?,
                Outcome::Abandoned("the endpoint was disabled"),
            )?;
        }
    }
    Ok(())
}

fn abort(e: serde_json::Error) -> ConflictableTransactionError<String> {
    ConflictableTransactionError::Abort(e.to_string())
}

/// A factor in [0.8, 1.2], from the system's random source.
fn jitter(inner: &Inner) -> f64 {
    let mut bytes = [0u8; 4];
    if inner.rng.fill(&mut bytes).is_err() {
        return 1.0;
    }
    0.8 + 0.4 * (u32::from_le_bytes(bytes) as f64 / u32::MAX as f64)
}

/// The wait after the `attempts`-th failed attempt: `base * 2^(attempts-1)`,
/// capped at `max_delay`, times `jitter` — so retries of many deliveries
/// that failed together spread out rather than arrive together.
fn backoff(config: &super::WebhookConfig, attempts: u32, jitter: f64) -> Duration {
    let exp = attempts.saturating_sub(1).min(30);
    let delay = config
        .base_delay
        .saturating_mul(1 << exp)
        .min(config.max_delay);
    delay.mul_f64(jitter)
}
