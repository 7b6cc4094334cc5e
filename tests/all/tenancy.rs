//! Issue 11: many orgs and projects on one host, over real HTTP. The
//! tenancy test is generated from the route table (`/openapi.json`), so a
//! new route cannot be forgotten: every route × every way of reaching
//! another tenant's data → the right status, and no byte of the other
//! tenant's data in the body.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use karta_host::auth::{ProjectRef, Scope};
use karta_host::release::PublishRequest;
use karta_host::{Host, HostConfig};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::support::root;

/// A host serving published projects: acme/shop, acme/help, globex/shop,
/// globex/help — two orgs with two projects each — each with examples/hello
/// published and active as v1.
pub struct Platform {
    pub addr: SocketAddr,
    pub host: Host,
    _data: tempfile::TempDir,
}

/// An answer: status and body text.
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

impl Platform {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// [`Platform::start`] after `configure` has had its say.
    pub async fn start_with(configure: impl FnOnce(&mut HostConfig)) -> Self {
        let data = tempfile::tempdir().expect("tempdir");
        let mut config = HostConfig::published(data.path());
        config.harness = Some(karta_host::app::HarnessKind::Builtin);
        config.approval_timeout = Duration::from_secs(30);
        configure(&mut config);
        let host = Host::start(config).await.expect("host starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = host.spawn_api(listener).await.expect("serve");
        let platform = Self {
            addr,
            host,
            _data: data,
        };
        let auth = platform.host.projects().auth();
        for (org, projects) in [
            ("acme", &["shop", "help"][..]),
            ("globex", &["shop", "help"][..]),
        ] {
            let org = auth.create_org(org, None).expect("org");
            for project in projects {
                let project = auth.create_project(&org.id, project).expect("project");
                platform.publish(&project.id, "examples/hello").await;
                platform
                    .host
                    .projects()
                    .releases()
                    .activate(&project.id, 1, "test")
                    .expect("activate");
            }
        }
        platform
    }

    /// Creates `org`'s project `slug` running the app folder `app`,
    /// published and active as v1.
    pub async fn add_project(
        &self,
        org: &str,
        slug: &str,
        app: &std::path::Path,
    ) -> karta_host::auth::Project {
        let (org_id, _) = self.project(org, "shop");
        let projects = self.host.projects();
        let project = projects
            .auth()
            .create_project(&org_id, slug)
            .expect("project");
        self.publish_dir(&project.id, app).await;
        projects
            .releases()
            .activate(&project.id, 1, "test")
            .expect("activate");
        project
    }

    /// Publishes an example folder as the project's next release.
    pub async fn publish(&self, project_id: &str, example: &str) -> u32 {
        self.publish_dir(project_id, &root().join(example)).await
    }

    /// Publishes the app folder `dir` as the project's next release.
    pub async fn publish_dir(&self, project_id: &str, dir: &std::path::Path) -> u32 {
        let archive = karta_host::release::pack_dir(dir).expect("pack");
        let projects = self.host.projects();
        projects
            .releases()
            .publish(
                projects.runtime(),
                PublishRequest {
                    project_id,
                    archive: &archive,
                    publisher: "test",
                    git_commit: None,
                    app_name: None,
                },
            )
            .await
            .expect("publish")
            .version
    }

    /// `(org id, project ref)` of `org/project`.
    pub fn project(&self, org: &str, project: &str) -> (String, ProjectRef) {
        let auth = self.host.projects().auth();
        let org = auth.org_by_slug(org).expect("read").expect("org");
        let project = auth
            .project_by_slug(&org.id, project)
            .expect("read")
            .expect("project");
        (
            org.id,
            ProjectRef {
                id: project.id,
                slug: project.slug,
            },
        )
    }

    /// A new API key of `org`.
    pub fn key(&self, org: &str, scope: Scope) -> String {
        let auth = self.host.projects().auth();
        let org = auth.org_by_slug(org).expect("read").expect("org");
        let (_, secret) = auth.create_api_key(&org.id, scope, "test").expect("key");
        secret.expose_secret().to_owned()
    }

    /// The operator's credential (what the CLI uses on this data dir).
    pub fn operator(&self) -> String {
        karta_host::projects::operator_token(self._data.path()).expect("operator token")
    }

    /// A session token for `org/project`.
    pub fn token(&self, org: &str, project: &str, sub: Option<&str>, ttl: Option<u64>) -> String {
        let (org_id, project) = self.project(org, project);
        self.host
            .projects()
            .auth()
            .mint_session_token(
                &org_id,
                &project,
                Scope::Write,
                sub,
                ttl.map(Duration::from_secs),
            )
            .expect("mint")
            .token
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Answer {
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let client = Client::builder(TokioExecutor::new()).build_http();
        let response = client
            .request(builder.body(Full::new(body)).expect("request"))
            .await
            .expect("response");
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        Answer {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    /// A JSON request with `credential` (if any).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        credential: Option<&str>,
        body: Value,
    ) -> Answer {
        let bearer = credential.map(|c| format!("Bearer {c}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(bearer) = &bearer {
            headers.push(("authorization", bearer.as_str()));
        }
        let body = if body.is_null() {
            Bytes::new()
        } else {
            Bytes::from(body.to_string())
        };
        self.request(method, path, &headers, body).await
    }
}

/// A valid body for each route, so the answer is about who asks, not what
/// they sent.
fn body_for(method: &str, path: &str, archive: &Bytes) -> (Bytes, &'static str) {
    let json = |value: Value| (Bytes::from(value.to_string()), "application/json");
    match (method, path.rsplit('/').next().unwrap_or("")) {
        ("POST", "sessions") => json(json!({})),
        ("POST", "messages") => json(json!({ "text": "hi" })),
        ("POST", "events") => json(json!({ "type": "user.interrupt" })),
        ("POST", "files") => json(json!({ "name": "a.txt", "content_base64": "aGk=" })),
        ("POST", "completions") => json(json!({
            "model": "m", "messages": [{ "role": "user", "content": "hi" }],
        })),
        ("POST", "responses") => json(json!({ "model": "m", "input": "hi" })),
        ("PUT", "budgets") => json(json!({ "period": "day", "cap_micros": 1000 })),
        ("PUT", _) => json(json!({ "decision": "deny" })),
        ("POST", "orgs") => json(json!({ "slug": "newco" })),
        ("POST", "projects") => json(json!({ "slug": "new-project" })),
        ("POST", "keys") => json(json!({ "scope": "read" })),
        ("POST", "embed-keys") => json(json!({ "allowed_origins": ["https://a.example"] })),
        ("POST", "activate") => json(json!({ "version": 1 })),
        ("POST", "provider-keys") => {
            json(json!({ "provider": "anthropic", "key": "sk-test-1234567890abcdef" }))
        }
        ("POST", "rollback") => json(json!({ "to": 1 })),
        ("POST", "webhooks") => json(json!({
            "url": "https://hooks.example/new",
            "events": ["turn.completed"],
        })),
        ("POST", "releases") => (archive.clone(), "application/gzip"),
        ("POST", _) => json(json!({})),
        _ => (Bytes::new(), "application/json"),
    }
}

/// Routes anyone may call. (The chat page and its assets hold no data:
/// what the page shows comes through the session routes, with a token.)
fn public(path: &str) -> bool {
    matches!(
        path,
        "/healthz"
            | "/readyz"
            | "/metrics"
            | "/openapi.json"
            | "/v1/embed/session-tokens"
            | "/"
            | "/_karta/chat.js"
            | "/_karta/chat.css"
            | "/{org}/{project}"
            | "/{org}/{project}/"
    )
}

/// Every route × every way of reaching acme/shop's data without the right
/// to → 401, 403 or 404 as the protocol says, and none of acme's ids in
/// the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_other_tenants() {
    let platform = Platform::start().await;
    let acme_admin = platform.key("acme", Scope::Admin);
    let acme_read = platform.key("acme", Scope::Read);
    let globex_admin = platform.key("globex", Scope::Admin);
    let help_token = platform.token("acme", "help", None, None);
    let shop_token = platform.token("acme", "shop", None, None);
    // A forged signature: the same claims, another signature.
    let forged = {
        let (rest, signature) = shop_token.rsplit_once('.').expect("jwt");
        let flipped: String = signature
            .chars()
            .map(|c| if c == 'A' { 'B' } else { 'A' })
            .collect();
        format!("{rest}.{flipped}")
    };
    // `alg: none` with acme/shop's claims.
    let unsigned = {
        let mut parts = shop_token.split('.');
        let _header = parts.next();
        let claims = parts.next().expect("claims");
        format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{claims}.")
    };
    // acme/shop's data the answers must never show a stranger.
    let session = platform
        .call(
            "POST",
            "/acme/shop/v1/sessions",
            Some(&acme_admin),
            json!({ "metadata": { "customer_id": "c-secret-7" } }),
        )
        .await;
    assert_eq!(session.status, 201, "{}", session.body);
    let session_id = session.json()["id"].as_str().expect("id").to_owned();
    let (acme_id, shop) = platform.project("acme", "shop");
    let key_id = platform
        .host
        .projects()
        .auth()
        .api_keys(&acme_id)
        .expect("keys")[0]
        .id
        .clone();
    let embed = platform
        .host
        .projects()
        .auth()
        .create_embed_key(&acme_id, &shop.id, vec!["https://shop.example".into()])
        .expect("embed key");
    let (webhook, _) = platform
        .host
        .projects()
        .webhooks()
        .create_endpoint(
            &acme_id,
            "https://hooks.acme.example/k",
            vec![karta_host::webhooks::EventType::TurnCompleted],
        )
        .expect("webhook");
    let secrets = [
        session_id.as_str(),
        "c-secret-7",
        acme_id.as_str(),
        shop.id.as_str(),
        key_id.as_str(),
        embed.id.as_str(),
        webhook.id.as_str(),
        "hooks.acme.example",
    ];
    let archive =
        Bytes::from(karta_host::release::pack_dir(&root().join("examples/hello")).expect("pack"));

    let document = platform
        .call("GET", "/openapi.json", None, Value::Null)
        .await;
    let document: Value = serde_json::from_str(&document.body).expect("openapi");
    let mut routes = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("item").keys() {
            routes.push((method.to_uppercase(), path.clone()));
        }
    }
    assert!(routes.len() > 30, "{routes:?}");

    let mut checked = 0;
    for (method, template) in &routes {
        if public(template) {
            continue;
        }
        let key_in_path = if template.contains("embed-keys") {
            &embed.id
        } else {
            &key_id
        };
        let path = template
            .replace("{org}", "acme")
            .replace("{project}", "shop")
            .replace("{id}", &session_id)
            .replace("{request_id}", "req_none")
            .replace("{provider}", "anthropic")
            .replace("{key_id}", key_in_path)
            .replace("{webhook_id}", &webhook.id);
        let flat_session_route = path.starts_with("/v1/sessions");
        let names_acme = path.contains("acme") || path.contains(&session_id);
        let (body, content_type) = body_for(method, &path, &archive);
        let mut cases: Vec<(&str, Option<&str>, u16)> = vec![
            ("no credential", None, 401),
            ("forged signature", Some(&forged), 401),
            ("alg none", Some(&unsigned), 401),
            (
                "unknown key",
                Some("kt_live_00000000000000000000000000000000"),
                401,
            ),
        ];
        // Another org's admin key, another project's token: 404 wherever
        // the route names acme's things.
        if names_acme {
            cases.push(("another org's key", Some(&globex_admin), 404));
            cases.push(("another project's token", Some(&help_token), 404));
        }
        // Too small a scope: a read key may only read (and not keys).
        let read_ok = method == "GET" && !path.ends_with("/keys") && !path.ends_with("/embed-keys");
        if !read_ok && !flat_session_route {
            cases.push(("read key", Some(&acme_read), 403));
        }
        for (case, credential, expected) in cases {
            let bearer = credential.map(|c| format!("Bearer {c}"));
            let mut headers = vec![("content-type", content_type)];
            if let Some(bearer) = &bearer {
                headers.push(("authorization", bearer.as_str()));
            }
            let answer = platform
                .request(method, &path, &headers, body.clone())
                .await;
            assert_eq!(
                answer.status, expected,
                "{method} {path} with {case}: {}",
                answer.body
            );
            for secret in secrets {
                assert!(
                    !answer.body.contains(secret),
                    "{method} {path} with {case} shows {secret}: {}",
                    answer.body
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 150, "{checked} checks");
    // Nothing was changed by any of it.
    let sessions = platform
        .call(
            "GET",
            "/acme/shop/v1/sessions",
            Some(&acme_admin),
            Value::Null,
        )
        .await;
    assert_eq!(sessions.json()["total"], 1, "{}", sessions.body);
    assert!(
        platform
            .host
            .projects()
            .auth()
            .org_by_slug("newco")
            .expect("read")
            .is_none()
    );
}

/// A token past its `exp` is refused (401) on every session route.
/// A route naming an org or project that does not exist says which to the
/// operator (who sees every org) and, for a project, to a key of that org;
/// to anyone else it answers exactly as for another org's things, so it
/// tells nobody what exists elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_org_or_project_is_named_only_to_whom_may_know_of_it() {
    let platform = Platform::start().await;
    let operator = platform.operator();
    let acme_admin = platform.key("acme", Scope::Admin);
    let help_token = platform.token("acme", "help", None, None);
    let get = |path: &'static str, credential: String| {
        let platform = &platform;
        async move {
            platform
                .call("GET", path, Some(&credential), Value::Null)
                .await
        }
    };

    let answer = get("/v1/admin/orgs/initech/keys", operator.clone()).await;
    assert_eq!(answer.status, 404, "{}", answer.body);
    assert!(
        answer.body.contains("no org `initech`")
            && answer.body.contains("karta org create initech"),
        "the operator is told which org and how to make it: {}",
        answer.body
    );
    let answer = get(
        "/v1/admin/orgs/acme/projects/nope/releases",
        operator.clone(),
    )
    .await;
    assert_eq!(answer.status, 404, "{}", answer.body);
    assert!(answer.body.contains("`acme/nope`"), "{}", answer.body);

    // acme's admin: its own org's missing project is named…
    for path in [
        "/v1/admin/orgs/acme/projects/nope/releases",
        "/acme/nope/v1/sessions",
    ] {
        let answer = get(path, acme_admin.clone()).await;
        assert_eq!(answer.status, 404, "{path}: {}", answer.body);
        assert!(
            answer.body.contains("`acme/nope`"),
            "{path}: {}",
            answer.body
        );
    }
    // …but a missing org, another org's missing project and another org's
    // real one all read the same, naming nothing.
    let same = [
        ("/v1/admin/orgs/initech/keys", "/v1/admin/orgs/globex/keys"),
        (
            "/v1/admin/orgs/globex/projects/nope/releases",
            "/v1/admin/orgs/globex/projects/shop/releases",
        ),
        ("/initech/shop/v1/sessions", "/globex/shop/v1/sessions"),
        ("/globex/nope/v1/sessions", "/globex/shop/v1/sessions"),
    ];
    for (missing, theirs) in same {
        let missing_answer = get(missing, acme_admin.clone()).await;
        let theirs_answer = get(theirs, acme_admin.clone()).await;
        assert_eq!(
            missing_answer.status, 404,
            "{missing}: {}",
            missing_answer.body
        );
        assert_eq!(
            (missing_answer.status, &missing_answer.body),
            (theirs_answer.status, &theirs_answer.body),
            "{missing} against {theirs}"
        );
        assert!(!missing_answer.body.contains("nope") && !missing_answer.body.contains("initech"));
    }
    // A session token sees its project, not its org: another project of
    // its org, real or not, is the same 404.
    let missing = get("/acme/nope/v1/sessions", help_token.clone()).await;
    let sibling = get("/acme/shop/v1/sessions", help_token.clone()).await;
    assert_eq!(missing.status, 404, "{}", missing.body);
    assert_eq!(
        (missing.status, &missing.body),
        (sibling.status, &sibling.body)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tokens_are_refused() {
    let platform = Platform::start().await;
    let token = platform.token("acme", "shop", None, Some(1));
    let fresh = platform
        .call("POST", "/acme/shop/v1/sessions", Some(&token), json!({}))
        .await;
    assert_eq!(fresh.status, 201, "{}", fresh.body);
    // 1 s of life and 5 s of leeway for clock skew.
    tokio::time::sleep(Duration::from_millis(7_500)).await;
    for (method, path) in [
        ("POST", "/acme/shop/v1/sessions".to_owned()),
        ("GET", "/acme/shop/v1/sessions".to_owned()),
        ("POST", "/v1/sessions".to_owned()),
        (
            "GET",
            format!("/v1/sessions/{}", fresh.json()["id"].as_str().expect("id")),
        ),
    ] {
        let answer = platform.call(method, &path, Some(&token), json!({})).await;
        assert_eq!(answer.status, 401, "{method} {path}: {}", answer.body);
        assert_eq!(answer.json()["error"], "token_expired", "{}", answer.body);
    }
}

/// The embed flow: an embed key and an allowed `Origin` → a session token
/// for its project, which works on the flat and the project routes; another
/// origin, no origin, a revoked key → refused; an identity token makes the
/// verified end user the token's `sub`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embed_keys_mint_tokens_for_allowed_origins_only() {
    let platform = Platform::start().await;
    let (acme_id, shop) = platform.project("acme", "shop");
    let auth = platform.host.projects().auth();
    let embed = auth
        .create_embed_key(&acme_id, &shop.id, vec!["https://shop.example".into()])
        .expect("embed key");
    let mint = |origin: Option<&'static str>, body: Value| {
        let platform = &platform;
        async move {
            let mut headers = vec![("content-type", "application/json")];
            if let Some(origin) = origin {
                headers.push(("origin", origin));
            }
            platform
                .request(
                    "POST",
                    "/v1/embed/session-tokens",
                    &headers,
                    Bytes::from(body.to_string()),
                )
                .await
        }
    };
    let minted = mint(
        Some("https://shop.example"),
        json!({ "embed_key": embed.key }),
    )
    .await;
    assert_eq!(minted.status, 201, "{}", minted.body);
    let token = minted.json()["token"].as_str().expect("token").to_owned();
    assert!(minted.json()["expires_in"].as_u64().is_some_and(|s| s > 60));
    let created = platform
        .call("POST", "/v1/sessions", Some(&token), json!({}))
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(
        created.json()["project"]["ref"],
        "acme/shop",
        "{}",
        created.body
    );
    assert_eq!(created.json()["project"]["version"], 1);
    let turn = platform
        .call(
            "POST",
            &format!(
                "/acme/shop/v1/sessions/{}/messages",
                created.json()["id"].as_str().expect("id")
            ),
            Some(&token),
            json!({ "text": "hello" }),
        )
        .await;
    assert_eq!(turn.status, 200, "{}", turn.body);
    assert!(
        turn.json()["text"]
            .as_str()
            .is_some_and(|t| t.contains("hello")),
        "{}",
        turn.body
    );

    for (origin, why) in [
        (Some("https://evil.example"), "another origin"),
        (Some("http://shop.example"), "another scheme"),
        (None, "no origin"),
    ] {
        let refused = mint(origin, json!({ "embed_key": embed.key })).await;
        assert_eq!(refused.status, 403, "{why}: {}", refused.body);
        assert!(
            !refused.body.contains("eyJ"),
            "{why}: no token: {}",
            refused.body
        );
    }
    let unknown = mint(
        Some("https://shop.example"),
        json!({ "embed_key": "pk_live_nope" }),
    )
    .await;
    assert_eq!(unknown.status, 401, "{}", unknown.body);

    // A verified end user.
    let secret = auth.identity_secret(&acme_id, &shop.id).expect("secret");
    let identity = karta_host::auth::Auth::identity_token(secret.expose_secret(), "alice");
    let minted = mint(
        Some("https://shop.example"),
        json!({ "embed_key": embed.key, "identity_token": identity }),
    )
    .await;
    assert_eq!(minted.status, 201, "{}", minted.body);
    let alice = minted.json()["token"].as_str().expect("token").to_owned();
    let session = platform
        .call("POST", "/v1/sessions", Some(&alice), json!({}))
        .await;
    assert_eq!(
        session.json()["metadata"]["end_user_id"],
        "alice",
        "{}",
        session.body
    );
    // A forged identity: alice's signature on bob's id.
    let forged = format!(
        "{}.{}",
        base64_url("bob"),
        identity.rsplit_once('.').expect("token").1
    );
    let refused = mint(
        Some("https://shop.example"),
        json!({ "embed_key": embed.key, "identity_token": forged }),
    )
    .await;
    assert_eq!(refused.status, 401, "{}", refused.body);

    auth.revoke_embed_key(&acme_id, &embed.id).expect("revoke");
    let revoked = mint(
        Some("https://shop.example"),
        json!({ "embed_key": embed.key }),
    )
    .await;
    assert_eq!(revoked.status, 401, "{}", revoked.body);
}

fn base64_url(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

/// End users are the memory boundary: two end users of one project, and
/// one id in two projects, never see each other's sessions; a verified
/// `sub` overrides a query's `end_user` and a conflicting
/// `metadata.end_user_id` (403); bad ids are 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_users_see_only_their_own_sessions() {
    let platform = Platform::start().await;
    let alice = platform.token("acme", "shop", Some("alice"), None);
    let bob = platform.token("acme", "shop", Some("bob"), None);
    let alice_help = platform.token("acme", "help", Some("alice"), None);
    let mut ids = BTreeMap::new();
    for (who, token, path) in [
        ("alice", &alice, "/acme/shop/v1/sessions"),
        ("bob", &bob, "/acme/shop/v1/sessions"),
        ("alice@help", &alice_help, "/acme/help/v1/sessions"),
    ] {
        let answer = platform.call("POST", path, Some(token), json!({})).await;
        assert_eq!(answer.status, 201, "{}", answer.body);
        ids.insert(who, answer.json()["id"].as_str().expect("id").to_owned());
    }
    for (token, own, others) in [
        (&alice, "alice", ["bob", "alice@help"]),
        (&bob, "bob", ["alice", "alice@help"]),
    ] {
        // The query asks for someone else; the verified sub wins.
        let listed = platform
            .call(
                "GET",
                "/acme/shop/v1/sessions?end_user=bob&per_page=100",
                Some(token),
                Value::Null,
            )
            .await;
        assert_eq!(listed.status, 200, "{}", listed.body);
        assert_eq!(listed.json()["total"], 1, "{}", listed.body);
        assert_eq!(listed.json()["sessions"][0]["id"], ids[own].as_str());
        for other in others {
            assert!(
                !listed.body.contains(ids[other].as_str()),
                "{}",
                listed.body
            );
            for path in [
                format!("/acme/shop/v1/sessions/{}", ids[other]),
                format!("/acme/shop/v1/sessions/{}/transcript", ids[other]),
                format!("/acme/help/v1/sessions/{}", ids[other]),
            ] {
                let answer = platform.call("GET", &path, Some(token), Value::Null).await;
                assert_eq!(answer.status, 404, "{path}: {}", answer.body);
            }
        }
    }
    // The project's admin key sees both, and one end user by query.
    let admin = platform.key("acme", Scope::Admin);
    let all = platform
        .call("GET", "/acme/shop/v1/sessions", Some(&admin), Value::Null)
        .await;
    assert_eq!(all.json()["total"], 2, "{}", all.body);
    let bobs = platform
        .call(
            "GET",
            "/acme/shop/v1/sessions?end_user=bob",
            Some(&admin),
            Value::Null,
        )
        .await;
    assert_eq!(bobs.json()["total"], 1, "{}", bobs.body);

    let mismatch = platform
        .call(
            "POST",
            "/acme/shop/v1/sessions",
            Some(&alice),
            json!({ "metadata": { "end_user_id": "bob" } }),
        )
        .await;
    assert_eq!(mismatch.status, 403, "{}", mismatch.body);
    assert_eq!(mismatch.json()["error"], "identity_mismatch");
    for bad in [
        "",
        "../x",
        "a/b",
        "a\\b",
        ".hidden",
        "a\u{7}b",
        &"x".repeat(201),
    ] {
        let answer = platform
            .call(
                "POST",
                "/acme/shop/v1/sessions",
                Some(&admin),
                json!({ "metadata": { "end_user_id": bad } }),
            )
            .await;
        assert_eq!(answer.status, 400, "{bad:?}: {}", answer.body);
        assert_eq!(
            answer.json()["error"],
            "invalid_end_user_id",
            "{}",
            answer.body
        );
    }
    // Resuming someone else's session by id is not a way in.
    let hijack = platform
        .call(
            "POST",
            "/acme/shop/v1/sessions",
            Some(&bob),
            json!({ "session_id": ids["alice"] }),
        )
        .await;
    assert_eq!(hijack.status, 409, "{}", hijack.body);
    assert!(!hijack.body.contains("alice"), "{}", hijack.body);
}

/// Publish two versions, sessions on each; activate and roll back over
/// HTTP; a pinned session keeps running on its release; a project with no
/// active release answers 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_stay_on_their_release() {
    let platform = Platform::start().await;
    let admin = platform.key("acme", Scope::Admin);
    let on_release = |answer: &Answer| answer.json()["project"]["version"].as_u64();

    let v1_session = platform
        .call("POST", "/acme/shop/v1/sessions", Some(&admin), json!({}))
        .await;
    assert_eq!(on_release(&v1_session), Some(1), "{}", v1_session.body);
    let v1_id = v1_session.json()["id"].as_str().expect("id").to_owned();

    // v2 is published over HTTP, as `karta publish` does.
    let archive = karta_host::release::pack_dir(&root().join("examples/support-bot-lite"))
        .or_else(|_| karta_host::release::pack_dir(&root().join("examples/hello")))
        .expect("pack");
    let bearer = format!("Bearer {admin}");
    let published = platform
        .request(
            "POST",
            "/v1/admin/orgs/acme/projects/shop/releases?git_commit=abc123",
            &[
                ("authorization", &bearer),
                ("content-type", "application/gzip"),
            ],
            Bytes::from(archive),
        )
        .await;
    assert_eq!(published.status, 201, "{}", published.body);
    assert_eq!(published.json()["version"], 2);
    assert_eq!(published.json()["git_commit"], "abc123");
    let activated = platform
        .call(
            "POST",
            "/v1/admin/orgs/acme/projects/shop/activate",
            Some(&admin),
            json!({ "version": 2 }),
        )
        .await;
    assert_eq!(activated.status, 200, "{}", activated.body);
    assert_eq!(activated.json()["active"], 2);

    let v2_session = platform
        .call("POST", "/acme/shop/v1/sessions", Some(&admin), json!({}))
        .await;
    assert_eq!(on_release(&v2_session), Some(2), "{}", v2_session.body);
    // The v1 session still runs, on v1.
    let turn = platform
        .call(
            "POST",
            &format!("/acme/shop/v1/sessions/{v1_id}/messages"),
            Some(&admin),
            json!({ "text": "still here?" }),
        )
        .await;
    assert_eq!(turn.status, 200, "{}", turn.body);
    let again = platform
        .call(
            "GET",
            &format!("/acme/shop/v1/sessions/{v1_id}"),
            Some(&admin),
            Value::Null,
        )
        .await;
    assert_eq!(on_release(&again), Some(1), "{}", again.body);

    let rolled = platform
        .call(
            "POST",
            "/v1/admin/orgs/acme/projects/shop/rollback",
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!(rolled.status, 200, "{}", rolled.body);
    assert_eq!(rolled.json()["active"], 1, "{}", rolled.body);
    let v1_again = platform
        .call("POST", "/acme/shop/v1/sessions", Some(&admin), json!({}))
        .await;
    assert_eq!(on_release(&v1_again), Some(1), "{}", v1_again.body);
    let audit = platform
        .call(
            "GET",
            "/v1/admin/orgs/acme/projects/shop/audit",
            Some(&admin),
            Value::Null,
        )
        .await;
    let audit = audit.json();
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(
        actions.ends_with(&["publish", "activate", "rollback"]),
        "{actions:?}"
    );

    // A project with nothing active: 409, not a crash, not another's app.
    let auth = platform.host.projects().auth();
    let (acme_id, _) = platform.project("acme", "shop");
    auth.create_project(&acme_id, "empty").expect("project");
    let none = platform
        .call("POST", "/acme/empty/v1/sessions", Some(&admin), json!({}))
        .await;
    assert_eq!(none.status, 409, "{}", none.body);
    assert_eq!(none.json()["error"], "no_active_release");

    // Hostile and oversized uploads over HTTP: refused with the reason.
    let garbage = platform
        .request(
            "POST",
            "/v1/admin/orgs/acme/projects/shop/releases",
            &[
                ("authorization", &bearer),
                ("content-type", "application/gzip"),
            ],
            Bytes::from_static(b"this is not a tarball"),
        )
        .await;
    assert_eq!(garbage.status, 400, "{}", garbage.body);
    assert_eq!(
        garbage.json()["error"],
        "invalid_archive",
        "{}",
        garbage.body
    );
    let huge = platform
        .request(
            "POST",
            "/v1/admin/orgs/acme/projects/shop/releases",
            &[
                ("authorization", &bearer),
                ("content-type", "application/gzip"),
            ],
            Bytes::from(vec![0u8; 65 * 1024 * 1024]),
        )
        .await;
    assert_eq!(huge.status, 413, "{}", huge.body);
    let releases = platform
        .call(
            "GET",
            "/v1/admin/orgs/acme/projects/shop/releases",
            Some(&admin),
            Value::Null,
        )
        .await;
    assert_eq!(
        releases.json()["releases"].as_array().map(Vec::len),
        Some(2),
        "{}",
        releases.body
    );
}

/// BYOK: an org's own provider key reaches the provider with that org's
/// model calls and nowhere else — not another org's calls, not any answer
/// of any route, not the data dir in the clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orgs_own_provider_key_reaches_the_provider_and_nowhere_else() {
    use karta_host::gateway::Gateway;
    // The "provider": a gateway of the offline model that accepts only the
    // key it issued — to acme, as acme's Anthropic key.
    let provider = Gateway::standalone(None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let (provider_url, _provider_server) = provider.serve(listener).expect("serve");
    let acme_key = provider.credentials().for_session("acme-byok").gateway_key;
    let url = provider_url.clone();
    let platform = Platform::start_with(move |config| {
        config
            .provider_urls
            .0
            .insert(karta_host::byok::Provider::Anthropic, url);
    })
    .await;
    let acme_admin = platform.key("acme", Scope::Admin);
    let globex_admin = platform.key("globex", Scope::Admin);
    let set = platform
        .call(
            "POST",
            "/v1/admin/orgs/acme/provider-keys",
            Some(&acme_admin),
            json!({ "provider": "anthropic", "key": acme_key }),
        )
        .await;
    assert_eq!(set.status, 201, "{}", set.body);
    assert!(
        set.json()["fingerprint"]
            .as_str()
            .is_some_and(|f| f.starts_with("sha256:"))
    );
    // Another org cannot set, see or remove acme's keys.
    for (method, path) in [
        ("GET", "/v1/admin/orgs/acme/provider-keys"),
        ("DELETE", "/v1/admin/orgs/acme/provider-keys/anthropic"),
    ] {
        let answer = platform
            .call(method, path, Some(&globex_admin), Value::Null)
            .await;
        assert_eq!(answer.status, 404, "{method} {path}: {}", answer.body);
    }

    // acme's turn goes to the provider with acme's key…
    for (org, admin) in [("acme", &acme_admin), ("globex", &globex_admin)] {
        let session = platform
            .call(
                "POST",
                &format!("/{org}/shop/v1/sessions"),
                Some(admin),
                json!({}),
            )
            .await;
        let id = session.json()["id"].as_str().expect("id").to_owned();
        let turn = platform
            .call(
                "POST",
                &format!("/{org}/shop/v1/sessions/{id}/messages"),
                Some(admin),
                json!({ "text": format!("hello from {org}") }),
            )
            .await;
        assert_eq!(turn.status, 200, "{}", turn.body);
        assert!(
            turn.body.contains(&format!("hello from {org}")),
            "{}",
            turn.body
        );
    }
    // …and only acme's: globex (no key, no platform upstream) stayed on
    // the host's offline model.
    let at_provider = provider.usage("acme-byok");
    assert_eq!(at_provider.requests, 1, "{at_provider:?}");
    let asked = provider.recent_requests();
    assert!(
        asked
            .iter()
            .any(|r| r.to_string().contains("hello from acme"))
    );
    assert!(
        !asked
            .iter()
            .any(|r| r.to_string().contains("hello from globex"))
    );

    // No answer shows the key; the data dir holds it only sealed.
    let listed = platform
        .call(
            "GET",
            "/v1/admin/orgs/acme/provider-keys",
            Some(&acme_admin),
            Value::Null,
        )
        .await;
    assert_eq!(listed.status, 200);
    for answer in [&set, &listed] {
        assert!(!answer.body.contains(&acme_key), "{}", answer.body);
    }
    platform
        .host
        .projects()
        .store()
        .flush()
        .await
        .expect("flush");
    let mut stack = vec![platform._data.path().to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                assert!(
                    !bytes
                        .windows(acme_key.len())
                        .any(|w| w == acme_key.as_bytes()),
                    "{} holds the key in the clear",
                    path.display()
                );
            }
        }
    }
    // A key the provider refuses: 422 byok_key_rejected (unary), an
    // error event of that code (stream) — not a platform failure.
    let wrong = platform
        .call(
            "POST",
            "/v1/admin/orgs/acme/provider-keys",
            Some(&acme_admin),
            json!({ "provider": "anthropic", "key": "sk-ant-not-a-key-the-provider-knows" }),
        )
        .await;
    assert_eq!(wrong.status, 201, "{}", wrong.body);
    let session = platform
        .call(
            "POST",
            "/acme/shop/v1/sessions",
            Some(&acme_admin),
            json!({}),
        )
        .await;
    let id = session.json()["id"].as_str().expect("id").to_owned();
    let refused = platform
        .call(
            "POST",
            &format!("/acme/shop/v1/sessions/{id}/messages"),
            Some(&acme_admin),
            json!({ "text": "hello?" }),
        )
        .await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert_eq!(
        refused.json()["error"],
        "byok_key_rejected",
        "{}",
        refused.body
    );
    assert!(
        !refused.body.contains("sk-ant-not-a-key"),
        "{}",
        refused.body
    );
    let streamed = platform
        .call(
            "POST",
            &format!("/acme/shop/v1/sessions/{id}/messages"),
            Some(&acme_admin),
            json!({ "text": "hello?", "stream": true }),
        )
        .await;
    assert!(
        streamed.body.contains("\"code\":\"byok_key_rejected\""),
        "{}",
        streamed.body
    );
    let removed = platform
        .call(
            "DELETE",
            "/v1/admin/orgs/acme/provider-keys/anthropic",
            Some(&acme_admin),
            Value::Null,
        )
        .await;
    assert_eq!(removed.status, 200, "{}", removed.body);
}
