//! Webhooks against a real receiver on 127.0.0.1 (allowed by the policy the
//! tests build, as an operator would with `--plugin-allow-net 127.0.0.1/32`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use secrecy::ExposeSecret;

use super::*;

/// A receiver answering the scripted statuses in turn, then `fallback`;
/// records every request.
#[derive(Clone)]
struct Receiver {
    script: Arc<Mutex<VecDeque<u16>>>,
    fallback: u16,
    seen: Arc<Mutex<Vec<(HeaderMap, Bytes, Instant)>>>,
    url: String,
}

impl Receiver {
    async fn start(script: &[u16], fallback: u16) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let receiver = Receiver {
            script: Arc::new(Mutex::new(script.iter().copied().collect())),
            fallback,
            seen: Arc::default(),
            url: format!("http://127.0.0.1:{port}/hook"),
        };
        let state = receiver.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move {
                    state
                        .seen
                        .lock()
                        .expect("test step")
                        .push((headers, body, Instant::now()));
                    let code = state
                        .script
                        .lock()
                        .expect("test step")
                        .pop_front()
                        .unwrap_or(state.fallback);
                    StatusCode::from_u16(code).expect("test step")
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        receiver
    }

    fn seen(&self) -> Vec<(HeaderMap, Bytes, Instant)> {
        self.seen.lock().expect("test step").clone()
    }
}

fn test_config() -> WebhookConfig {
    WebhookConfig {
        base_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(2),
        max_attempts: 3,
        timeout: Duration::from_secs(5),
        disable_after: 2,
        poll_interval: Duration::from_millis(20),
        concurrency: 4,
    }
}

fn loopback_allowed() -> Vec<IpNet> {
    vec!["127.0.0.1/32".parse().expect("cidr")]
}

fn open(dir: &std::path::Path, allow: Vec<IpNet>) -> Webhooks {
    Webhooks::open(Store::open(dir).expect("store"), allow, test_config()).expect("webhooks")
}

/// Waits until `done` holds, up to 10 s.
async fn until(mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers[name].to_str().expect("ascii").to_owned()
}

#[tokio::test]
async fn a_delivery_arrives_signed_and_verifies() {
    let dir = tempfile::tempdir().expect("test step");
    let receiver = Receiver::start(&[], 200).await;
    let hooks = open(dir.path(), loopback_allowed());
    let (endpoint, secret) = hooks
        .create_endpoint("org1", &receiver.url, vec![EventType::TurnCompleted])
        .expect("test step");
    let data = serde_json::json!({"session_id": "s1"});
    assert_eq!(
        hooks
            .enqueue("org1", EventType::TurnFailed, "ev0", &data)
            .expect("test step"),
        0
    );
    assert_eq!(
        hooks
            .enqueue("org1", EventType::TurnCompleted, "ev1", &data)
            .expect("test step"),
        1
    );
    let task = hooks.start();
    until(|| !receiver.seen().is_empty()).await;
    let (headers, body, _) = receiver.seen().remove(0);
    let timestamp: u64 = header(&headers, "karta-webhook-timestamp")
        .parse()
        .expect("test step");
    let signature = header(&headers, "karta-signature");
    let secret = secret.expose_secret();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("test step")
        .as_secs();
    assert!(verify(secret, &signature, timestamp, &body, now, 300));
    assert!(!verify(
        secret,
        &signature,
        timestamp,
        b"{\"tampered\":1}",
        now,
        300
    ));
    assert!(
        !verify(secret, &signature, timestamp, &body, now + 301, 300),
        "stale"
    );
    let json: serde_json::Value = serde_json::from_slice(&body).expect("test step");
    assert_eq!(json["id"], "ev1");
    assert_eq!(json["type"], "turn.completed");
    assert_eq!(json["data"], data);
    until(|| {
        hooks
            .deliveries("org1", &endpoint.id, 10)
            .expect("test step")[0]
            .status
            == DeliveryStatus::Delivered
    })
    .await;
    let delivery = &hooks
        .deliveries("org1", &endpoint.id, 10)
        .expect("test step")[0];
    assert_eq!(header(&headers, "karta-webhook-id"), delivery.id);
    assert_eq!((delivery.attempts, delivery.last_status), (1, Some(200)));
    task.stop().await;
}

#[tokio::test]
async fn failures_are_retried_with_growing_delays() {
    let dir = tempfile::tempdir().expect("test step");
    let receiver = Receiver::start(&[500, 500], 200).await;
    let hooks = open(dir.path(), loopback_allowed());
    let (endpoint, _) = hooks
        .create_endpoint("org1", &receiver.url, vec![EventType::SessionStarted])
        .expect("test step");
    hooks
        .enqueue(
            "org1",
            EventType::SessionStarted,
            "ev1",
            &serde_json::json!({}),
        )
        .expect("test step");
    let task = hooks.start();
    until(|| {
        hooks
            .deliveries("org1", &endpoint.id, 10)
            .expect("test step")[0]
            .status
            == DeliveryStatus::Delivered
    })
    .await;
    let seen = receiver.seen();
    assert_eq!(seen.len(), 3);
    let first = seen[1].2 - seen[0].2;
    let second = seen[2].2 - seen[1].2;
    // base 100 ms ± 20 %, then 200 ms ± 20 %.
    assert!(first >= Duration::from_millis(80), "{first:?}");
    assert!(
        second >= Duration::from_millis(160) && second > first,
        "{first:?} {second:?}"
    );
    let id = header(&seen[0].0, "karta-webhook-id");
    assert!(
        seen.iter()
            .all(|(h, ..)| header(h, "karta-webhook-id") == id),
        "same id on retries"
    );
    let delivery = &hooks
        .deliveries("org1", &endpoint.id, 10)
        .expect("test step")[0];
    assert_eq!((delivery.attempts, delivery.last_status), (3, Some(200)));
    assert_eq!(
        hooks.endpoints("org1").expect("test step")[0].consecutive_failures,
        0
    );
    task.stop().await;
}

#[tokio::test]
async fn an_always_failing_endpoint_is_disabled() {
    let dir = tempfile::tempdir().expect("test step");
    let receiver = Receiver::start(&[], 503).await;
    let hooks = open(dir.path(), loopback_allowed());
    let (endpoint, _) = hooks
        .create_endpoint("org1", &receiver.url, vec![EventType::TurnFailed])
        .expect("test step");
    for i in 0..2 {
        hooks
            .enqueue(
                "org1",
                EventType::TurnFailed,
                &format!("ev{i}"),
                &serde_json::json!({}),
            )
            .expect("test step");
    }
    let task = hooks.start();
    until(|| {
        hooks.endpoints("org1").expect("test step")[0]
            .disabled_at
            .is_some()
    })
    .await;
    let endpoint_now = &hooks.endpoints("org1").expect("test step")[0];
    assert_eq!(endpoint_now.consecutive_failures, 2);
    let deliveries = hooks
        .deliveries("org1", &endpoint.id, 10)
        .expect("test step");
    assert_eq!(deliveries.len(), 2);
    for d in &deliveries {
        assert_eq!(
            (d.status, d.attempts, d.last_status),
            (DeliveryStatus::Failed, 3, Some(503))
        );
        assert!(d.next_attempt_at.is_none());
    }
    assert_eq!(receiver.seen().len(), 6);
    // Nothing more is queued for a disabled endpoint.
    assert_eq!(
        hooks
            .enqueue("org1", EventType::TurnFailed, "ev9", &serde_json::json!({}))
            .expect("test step"),
        0
    );
    task.stop().await;
}

#[tokio::test]
async fn loopback_is_refused_by_default() {
    let dir = tempfile::tempdir().expect("test step");
    let hooks = open(dir.path(), Vec::new());
    for url in [
        "https://127.0.0.1/hook",
        "https://[::1]/hook",
        "https://169.254.169.254/",
    ] {
        let error = hooks
            .create_endpoint("org1", url, vec![EventType::TurnCompleted])
            .expect_err("refused");
        assert!(matches!(error, WebhookError::Refused(_)), "{url}: {error}");
    }
    let error = hooks
        .create_endpoint(
            "org1",
            "https://127.0.0.1/hook",
            vec![EventType::TurnCompleted],
        )
        .expect_err("refused");
    assert!(error.to_string().contains("loopback"), "{error}");
    // Plain http to a public name, and other schemes.
    for url in [
        "http://example.com/hook",
        "ftp://example.com/",
        "https://u:p@example.com/",
    ] {
        let error = hooks
            .create_endpoint("org1", url, vec![EventType::TurnCompleted])
            .expect_err("refused");
        assert!(matches!(error, WebhookError::Invalid(_)), "{url}: {error}");
    }
    // A name is judged by what it resolves to, at delivery.
    let receiver = Receiver::start(&[], 200).await;
    let port = receiver
        .url
        .split(':')
        .nth(2)
        .expect("test step")
        .trim_end_matches("/hook")
        .to_owned();
    let (endpoint, _) = hooks
        .create_endpoint(
            "org1",
            &format!("https://localhost:{port}/hook"),
            vec![EventType::TurnCompleted],
        )
        .expect("test step");
    hooks
        .enqueue(
            "org1",
            EventType::TurnCompleted,
            "ev1",
            &serde_json::json!({}),
        )
        .expect("test step");
    let task = hooks.start();
    until(|| {
        hooks
            .deliveries("org1", &endpoint.id, 1)
            .expect("test step")[0]
            .attempts
            > 0
    })
    .await;
    let delivery = &hooks
        .deliveries("org1", &endpoint.id, 1)
        .expect("test step")[0];
    let error = delivery.last_error.as_deref().expect("test step");
    assert!(
        error.contains("refused by the network policy") && error.contains("loopback"),
        "{error}"
    );
    assert!(receiver.seen().is_empty());
    task.stop().await;
}

#[tokio::test]
async fn another_org_sees_nothing() {
    let dir = tempfile::tempdir().expect("test step");
    let hooks = open(dir.path(), loopback_allowed());
    let (endpoint, _) = hooks
        .create_endpoint(
            "org1",
            "https://example.com/hook",
            vec![EventType::BudgetExceeded],
        )
        .expect("test step");
    // `org` is a prefix of `org1`: keys must not let it match.
    for other in ["org2", "org"] {
        assert!(hooks.endpoints(other).expect("test step").is_empty());
        assert!(matches!(
            hooks.deliveries(other, &endpoint.id, 10),
            Err(WebhookError::NotFound)
        ));
        assert!(matches!(
            hooks.delete_endpoint(other, &endpoint.id),
            Err(WebhookError::NotFound)
        ));
        assert_eq!(
            hooks
                .enqueue(
                    other,
                    EventType::BudgetExceeded,
                    "e",
                    &serde_json::json!({})
                )
                .expect("test step"),
            0
        );
    }
    assert_eq!(
        hooks.endpoints("org1").expect("test step"),
        vec![endpoint.clone()]
    );
    hooks
        .delete_endpoint("org1", &endpoint.id)
        .expect("test step");
    assert!(hooks.endpoints("org1").expect("test step").is_empty());
}

#[tokio::test]
async fn the_outbox_survives_a_restart() {
    let dir = tempfile::tempdir().expect("test step");
    let receiver = Receiver::start(&[], 200).await;
    let endpoint = {
        let store = Store::open(dir.path()).expect("test step");
        let hooks =
            Webhooks::open(store.clone(), loopback_allowed(), test_config()).expect("test step");
        let (endpoint, _) = hooks
            .create_endpoint("org1", &receiver.url, vec![EventType::ReleaseActivated])
            .expect("test step");
        // The caller's own event and its delivery, in one transaction.
        let events = store.tree("test_events").expect("test step");
        let prepared = hooks
            .prepare(
                "org1",
                EventType::ReleaseActivated,
                "rel_1",
                &serde_json::json!({}),
            )
            .expect("test step");
        let written = (&events, hooks.outbox_tree())
            .transaction(|(events, outbox)| {
                events.insert("rel_1", "activated")?;
                let n = prepared.write_in(outbox)?;
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(n)
            })
            .expect("test step");
        assert_eq!(written, 1);
        store.flush().await.expect("test step");
        endpoint
    }; // dropped without ever starting the loop
    assert!(receiver.seen().is_empty());
    let hooks = open(dir.path(), loopback_allowed());
    assert_eq!(
        hooks
            .deliveries("org1", &endpoint.id, 10)
            .expect("test step")[0]
            .status,
        DeliveryStatus::Pending
    );
    let task = hooks.start();
    until(|| receiver.seen().len() == 1).await;
    let json: serde_json::Value = serde_json::from_slice(&receiver.seen()[0].1).expect("test step");
    assert_eq!(json["type"], "release.activated");
    task.stop().await;
}
