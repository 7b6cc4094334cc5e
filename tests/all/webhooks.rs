//! Issue 12: webhooks over real HTTP — an org's endpoint hears of its
//! sessions, turns, budgets and releases (and no other org's), signed as
//! docs/WEBHOOKS.md says; a failed delivery is retried; an endpoint that
//! keeps failing is disabled, with its deliveries visible to the org; and a
//! URL that points inside the operator's network is refused, or never
//! connected to when a name resolves there.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use karta_host::auth::Scope;
use karta_host::meter::{ModelPrice, PriceTable};
use serde_json::{Value, json};

use crate::tenancy::Platform;

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: String,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("a JSON body")
    }

    fn event_type(&self) -> String {
        self.json()["type"].as_str().unwrap_or_default().to_owned()
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

/// A webhook receiver on a loopback port: records every request and
/// answers the statuses of its script in turn, then `then`.
#[derive(Clone)]
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<VecDeque<u16>>>,
    then: Arc<Mutex<u16>>,
}

impl Receiver {
    async fn start() -> Self {
        let receiver = Self {
            addr: "127.0.0.1:0".parse().expect("addr"),
            got: Arc::default(),
            script: Arc::default(),
            then: Arc::new(Mutex::new(200)),
        };
        let state = receiver.clone();
        let app = axum::Router::new().fallback(move |headers: HeaderMap, body: String| {
            let state = state.clone();
            async move {
                state
                    .got
                    .lock()
                    .expect("got")
                    .push(Received { headers, body });
                let status = state
                    .script
                    .lock()
                    .expect("script")
                    .pop_front()
                    .unwrap_or(*state.then.lock().expect("then"));
                StatusCode::from_u16(status).expect("status")
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, ..receiver }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn got(&self) -> Vec<Received> {
        self.got.lock().expect("got").clone()
    }

    /// Waits until `done` holds of what arrived (at most 30 s).
    async fn wait_for(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        for _ in 0..600 {
            let got = self.got();
            if done(&got) {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "waited 30 s for {what}; got {:?}",
            self.got()
                .iter()
                .map(Received::event_type)
                .collect::<Vec<_>>()
        );
    }
}

/// A platform whose webhooks may reach loopback (the receivers) and retry
/// fast; the offline model priced like a real one, so budgets bite.
async fn platform() -> Platform {
    Platform::start_with(|config| {
        config.plugin_allow_net = vec!["127.0.0.0/8".parse().expect("cidr")];
        config.webhooks = karta_host::webhooks::WebhookConfig {
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(200),
            max_attempts: 2,
            disable_after: 2,
            poll_interval: Duration::from_millis(50),
            ..Default::default()
        };
        config.prices = PriceTable {
            models: [("karta-offline".to_owned(), ModelPrice::SONNET_4)].into(),
            ..PriceTable::default()
        };
    })
    .await
}

/// Adds an endpoint of `org` for `events`; answers `(id, secret)`.
async fn add_endpoint(
    platform: &Platform,
    admin: &str,
    org: &str,
    url: &str,
    events: &[&str],
) -> (String, String) {
    let created = platform
        .call(
            "POST",
            &format!("/v1/admin/orgs/{org}/webhooks"),
            Some(admin),
            json!({ "url": url, "events": events }),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let answer = created.json();
    let secret = answer["secret"].as_str().expect("secret").to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    (
        answer["webhook"]["id"].as_str().expect("id").to_owned(),
        secret,
    )
}

async fn new_session(platform: &Platform, admin: &str) -> String {
    let created = platform
        .call("POST", "/acme/shop/v1/sessions", Some(admin), json!({}))
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    created.json()["id"].as_str().expect("id").to_owned()
}

async fn send(
    platform: &Platform,
    admin: &str,
    session: &str,
    text: &str,
) -> crate::tenancy::Answer {
    platform
        .call(
            "POST",
            &format!("/acme/shop/v1/sessions/{session}/messages"),
            Some(admin),
            json!({ "text": text }),
        )
        .await
}

async fn deliveries(platform: &Platform, admin: &str, endpoint: &str) -> Vec<Value> {
    let listed = platform
        .call(
            "GET",
            &format!("/v1/admin/orgs/acme/webhooks/{endpoint}/deliveries"),
            Some(admin),
            Value::Null,
        )
        .await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    listed.json()["deliveries"]
        .as_array()
        .expect("deliveries")
        .clone()
}

fn verified(received: &Received, secret: &str) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let timestamp: u64 = received
        .header("karta-webhook-timestamp")
        .parse()
        .expect("a timestamp header");
    karta_host::webhooks::verify(
        secret,
        received.header("karta-signature"),
        timestamp,
        received.body.as_bytes(),
        now,
        300,
    )
}

/// Every event type reaches acme's endpoint, signed, with what it is
/// about; globex's endpoint hears nothing of acme; a budget refusing
/// twice is told once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_org_hears_its_events_signed() {
    let platform = platform().await;
    let admin = platform.key("acme", Scope::Admin);
    let globex_admin = platform.key("globex", Scope::Admin);
    let acme = Receiver::start().await;
    let globex = Receiver::start().await;
    let all = [
        "session.started",
        "turn.completed",
        "turn.failed",
        "budget.exceeded",
        "release.activated",
    ];
    let (endpoint, secret) = add_endpoint(&platform, &admin, "acme", &acme.url(), &all).await;
    add_endpoint(&platform, &globex_admin, "globex", &globex.url(), &all).await;
    // The secret is shown once: the listing has the endpoint, not it.
    let listed = platform
        .call(
            "GET",
            "/v1/admin/orgs/acme/webhooks",
            Some(&admin),
            Value::Null,
        )
        .await;
    assert_eq!(listed.json()["webhooks"][0]["id"], endpoint.as_str());
    assert!(!listed.body.contains(&secret), "{}", listed.body);

    // A session, a turn that completes, one that fails.
    let session = new_session(&platform, &admin).await;
    // Free turns first: the budget comes after.
    platform
        .host
        .projects()
        .ledger()
        .meter()
        .set_prices(PriceTable {
            models: [("karta-offline".to_owned(), ModelPrice::FREE)].into(),
            ..PriceTable::default()
        });
    let done = send(&platform, &admin, &session, "hello").await;
    assert_eq!(done.status, 200, "{}", done.body);
    let failed = send(&platform, &admin, &session, "/fail 500 boom").await;
    assert!(failed.body.contains("error"), "{}", failed.body);
    // A release activated over HTTP.
    let (_, shop) = platform.project("acme", "shop");
    let version = platform.publish(&shop.id, "examples/hello").await;
    let activated = platform
        .call(
            "POST",
            "/v1/admin/orgs/acme/projects/shop/activate",
            Some(&admin),
            json!({ "version": version }),
        )
        .await;
    assert_eq!(activated.status, 200, "{}", activated.body);
    // A budget too small for one model call, priced again: refused twice,
    // told once.
    platform
        .host
        .projects()
        .ledger()
        .meter()
        .set_prices(PriceTable {
            models: [("karta-offline".to_owned(), ModelPrice::SONNET_4)].into(),
            ..PriceTable::default()
        });
    let set = platform
        .call(
            "PUT",
            "/v1/admin/orgs/acme/budgets",
            Some(&admin),
            json!({ "project": "shop", "period": "day", "cap_micros": 1 }),
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.body);
    for _ in 0..2 {
        let refused = send(&platform, &admin, &session, "over budget").await;
        // Refused mid-turn (its model call's reservation does not fit):
        // the unary answer's status is `error`, the log's event says why.
        assert!(
            refused.status == 402 || refused.json()["status"] == "error",
            "{}",
            refused.body
        );
    }

    let got = acme
        .wait_for("every event type", |got| {
            all.iter().all(|t| got.iter().any(|r| r.event_type() == *t))
        })
        .await;
    for received in &got {
        assert!(
            verified(received, &secret),
            "not signed with the secret: {received:?}"
        );
        assert!(!verified(received, "whsec_another"), "{received:?}");
        assert_eq!(received.header("content-type"), "application/json");
        assert!(received.header("karta-webhook-id").starts_with("dlv_"));
    }
    let of = |t: &str| -> Vec<Value> {
        got.iter()
            .filter(|r| r.event_type() == t)
            .map(Received::json)
            .collect()
    };
    let started = &of("session.started")[0]["data"];
    assert_eq!(started["session_id"], session.as_str());
    assert_eq!(started["project"], "acme/shop");
    let completed = &of("turn.completed")[0]["data"];
    assert_eq!(completed["session_id"], session.as_str());
    assert_eq!(completed["status"], "completed", "{completed}");
    assert!(
        completed["usage"]["output_tokens"].as_u64() > Some(0),
        "{completed}"
    );
    // `/fail` first, then each refusal mid-turn: each a failed turn.
    let failures = of("turn.failed");
    assert!(failures.len() >= 2, "{failures:?}");
    assert!(
        failures
            .iter()
            .any(|f| f["data"]["error"]["code"] == "budget_exhausted"),
        "{failures:?}"
    );
    let release = &of("release.activated")[0]["data"];
    assert_eq!(release["project"], "acme/shop");
    assert_eq!(release["version"], version);
    assert_eq!(release["previous"], 1);
    assert_eq!(of("budget.exceeded").len(), 1, "told once: {got:?}");
    let exceeded = &of("budget.exceeded")[0]["data"];
    assert_eq!(exceeded["cap_micros"], 1);
    assert_eq!(exceeded["scope"]["type"], "project", "{exceeded}");
    // The org sees its deliveries: delivered at the first attempt. (The
    // last refusal's `turn.failed` may still be on its way: the wait above
    // ends once every type has come, not every delivery.)
    let mut listed = deliveries(&platform, &admin, &endpoint).await;
    for _ in 0..100 {
        if listed.iter().all(|d| d["status"] != "pending") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        listed = deliveries(&platform, &admin, &endpoint).await;
    }
    assert!(listed.len() >= got.len(), "{listed:?}");
    assert!(
        listed
            .iter()
            .all(|d| d["status"] == "delivered" && d["attempts"] == 1),
        "{listed:?}"
    );
    // globex heard of none of it (its own org had no event).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(globex.got().is_empty(), "{:?}", globex.got());
}

/// A 500 is retried (the same delivery id, signed again); an endpoint whose
/// deliveries keep failing is disabled, nothing more is sent to it, its
/// deliveries say why; enabled again, it gets the next event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_then_the_endpoint_is_disabled() {
    let platform = platform().await;
    let admin = platform.key("acme", Scope::Admin);
    let receiver = Receiver::start().await;
    receiver.script.lock().expect("script").push_back(500);
    let (endpoint, secret) = add_endpoint(
        &platform,
        &admin,
        "acme",
        &receiver.url(),
        &["session.started"],
    )
    .await;

    new_session(&platform, &admin).await;
    let got = receiver.wait_for("a retry", |got| got.len() >= 2).await;
    assert_eq!(
        got[0].header("karta-webhook-id"),
        got[1].header("karta-webhook-id")
    );
    assert!(verified(&got[1], &secret));
    let listed = deliveries(&platform, &admin, &endpoint).await;
    assert_eq!(listed[0]["status"], "delivered", "{listed:?}");
    assert_eq!(listed[0]["attempts"], 2, "{listed:?}");

    // From now on it fails: two deliveries out of attempts disable it.
    *receiver.then.lock().expect("then") = 500;
    new_session(&platform, &admin).await;
    new_session(&platform, &admin).await;
    // 2 before + 2 attempts each.
    receiver
        .wait_for("both failures", |got| got.len() >= 6)
        .await;
    let mut disabled = Value::Null;
    for _ in 0..200 {
        let listed = platform
            .call(
                "GET",
                "/v1/admin/orgs/acme/webhooks",
                Some(&admin),
                Value::Null,
            )
            .await;
        disabled = listed.json()["webhooks"][0].clone();
        if disabled["disabled_at"].is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(disabled["disabled_at"].is_string(), "{disabled}");
    let listed = deliveries(&platform, &admin, &endpoint).await;
    let failed: Vec<&Value> = listed.iter().filter(|d| d["status"] == "failed").collect();
    assert_eq!(failed.len(), 2, "{listed:?}");
    for delivery in failed {
        assert_eq!(delivery["last_status"], 500, "{delivery}");
        assert_eq!(delivery["attempts"], 2, "{delivery}");
        assert!(
            delivery["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("500"))
        );
    }
    // Disabled: a new session queues nothing and sends nothing.
    let before = receiver.got().len();
    new_session(&platform, &admin).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.got().len(), before);
    assert_eq!(deliveries(&platform, &admin, &endpoint).await.len(), 3);
    // The CLI's route enables it again; the next event arrives.
    *receiver.then.lock().expect("then") = 200;
    let enabled = platform
        .call(
            "POST",
            &format!("/v1/admin/orgs/acme/webhooks/{endpoint}/enable"),
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!(enabled.status, 200, "{}", enabled.body);
    assert!(enabled.json()["disabled_at"].is_null(), "{}", enabled.body);
    new_session(&platform, &admin).await;
    receiver
        .wait_for("the event after enabling", |got| got.len() > before)
        .await;
    // Deleted: gone from the listing, its deliveries too; another org's
    // admin cannot see or delete it.
    let globex_admin = platform.key("globex", Scope::Admin);
    let stranger = platform
        .call(
            "DELETE",
            &format!("/v1/admin/orgs/globex/webhooks/{endpoint}"),
            Some(&globex_admin),
            Value::Null,
        )
        .await;
    assert_eq!(stranger.status, 404, "{}", stranger.body);
    let deleted = platform
        .call(
            "DELETE",
            &format!("/v1/admin/orgs/acme/webhooks/{endpoint}"),
            Some(&admin),
            Value::Null,
        )
        .await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    let listed = platform
        .call(
            "GET",
            "/v1/admin/orgs/acme/webhooks",
            Some(&admin),
            Value::Null,
        )
        .await;
    assert_eq!(listed.json()["webhooks"], json!([]), "{}", listed.body);
}

/// Where an endpoint may point: not inside the operator's network (unless
/// allowed), https only, no credentials in the URL; a name that resolves
/// to loopback is accepted but never connected to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_cannot_point_inside_the_network() {
    // No allow-list: loopback and private ranges are refused.
    let platform = Platform::start_with(|config| {
        config.webhooks.poll_interval = Duration::from_millis(50);
        config.webhooks.max_attempts = 1;
    })
    .await;
    let admin = platform.key("acme", Scope::Admin);
    let receiver = Receiver::start().await;
    for (url, status) in [
        (receiver.url(), 422),
        (format!("https://{}/hook", receiver.addr), 422),
        ("https://10.1.2.3/hook".into(), 422),
        ("https://169.254.169.254/latest/meta-data".into(), 422),
        ("https://[::1]/hook".into(), 422),
        ("http://hooks.example/plain".into(), 400),
        ("https://user:pass@hooks.example/hook".into(), 400),
        ("ftp://hooks.example/hook".into(), 400),
        ("not a url".into(), 400),
    ] {
        let created = platform
            .call(
                "POST",
                "/v1/admin/orgs/acme/webhooks",
                Some(&admin),
                json!({ "url": url, "events": ["session.started"] }),
            )
            .await;
        assert_eq!(created.status, status, "{url}: {}", created.body);
    }
    let bad_event = platform
        .call(
            "POST",
            "/v1/admin/orgs/acme/webhooks",
            Some(&admin),
            json!({ "url": "https://hooks.example/h", "events": ["turn.exploded"] }),
        )
        .await;
    assert_eq!(bad_event.status, 400, "{}", bad_event.body);
    // `localhost` is a name: accepted, judged by what it resolves to at
    // delivery — loopback — and never connected to.
    let url = format!("https://localhost:{}/hook", receiver.addr.port());
    let (endpoint, _) = add_endpoint(&platform, &admin, "acme", &url, &["session.started"]).await;
    new_session(&platform, &admin).await;
    let mut listed = Vec::new();
    for _ in 0..200 {
        listed = deliveries(&platform, &admin, &endpoint).await;
        if listed.first().is_some_and(|d| d["status"] == "failed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(listed[0]["status"], "failed", "{listed:?}");
    assert!(
        listed[0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("network policy")),
        "{listed:?}"
    );
    assert!(receiver.got().is_empty(), "{:?}", receiver.got());
}
