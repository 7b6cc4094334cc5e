//! Issue 12: the usage ledger and budgets over real HTTP — what the ledger
//! bills equals what the gateway metered and the turns reported; a turn
//! over budget is refused with 402 before it runs; a tool gets only the
//! fuel the budget still buys; and racing sessions never spend past a cap.

use std::time::Duration;

use karta_host::auth::Scope;
use karta_host::meter::PriceTable;
use serde_json::{Value, json};

use crate::tenancy::Platform;

/// Prices for the tests: the offline model priced like a real one, fuel
/// at 1,000 micro-units per million.
fn prices() -> PriceTable {
    PriceTable::from_toml(
        "fuel_per_mfuel = 1000\n\
         [models.karta-offline]\n\
         input_per_mtok = 3000000\n\
         output_per_mtok = 15000000\n\
         cache_read_per_mtok = 300000\n\
         cache_write_per_mtok = 3750000\n\
         [default_model]\n\
         input_per_mtok = 3000000\n\
         output_per_mtok = 15000000\n\
         cache_read_per_mtok = 300000\n\
         cache_write_per_mtok = 3750000\n",
    )
    .expect("prices")
}

/// A platform whose acme/bot runs the support-bot app (plugins included).
async fn platform_with_bot(prices: PriceTable) -> (Platform, String) {
    platform_with_bot_on(prices, |_| {}).await
}

/// [`platform_with_bot`] after `configure` (a harness, say) has had its say.
async fn platform_with_bot_on(
    prices: PriceTable,
    configure: impl FnOnce(&mut karta_host::HostConfig),
) -> (Platform, String) {
    let platform = Platform::start_with(move |config| {
        config.prices = prices;
        configure(config);
    })
    .await;
    let app = crate::sessions::support_bot();
    platform.add_project("acme", "bot", app.path()).await;
    let admin = platform.key("acme", Scope::Admin);
    (platform, admin)
}

const CONVERT: &str = "/tool convert {\"value\":3,\"from\":\"mi\",\"to\":\"km\"}";

async fn new_session(platform: &Platform, admin: &str) -> String {
    let created = platform
        .call("POST", "/acme/bot/v1/sessions", Some(admin), json!({}))
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    created.json()["id"].as_str().expect("id").to_owned()
}

/// Sets a budget of acme (`budget`: the route's body).
async fn set_budget(platform: &Platform, admin: &str, budget: Value) {
    let set = platform
        .call("PUT", "/v1/admin/orgs/acme/budgets", Some(admin), budget)
        .await;
    assert_eq!(set.status, 200, "{}", set.body);
}

/// Sends `text` to a session of acme/bot.
async fn send(
    platform: &Platform,
    admin: &str,
    session: &str,
    text: &str,
) -> crate::tenancy::Answer {
    platform
        .call(
            "POST",
            &format!("/acme/bot/v1/sessions/{session}/messages"),
            Some(admin),
            json!({ "text": text }),
        )
        .await
}

/// What acme's first budget has spent this period.
async fn spent(platform: &Platform, admin: &str) -> u64 {
    let budgets = platform
        .call(
            "GET",
            "/v1/admin/orgs/acme/budgets",
            Some(admin),
            Value::Null,
        )
        .await;
    budgets.json()["budgets"][0]["spent_micros"]
        .as_u64()
        .expect("spent")
}

/// The session's events, from its log.
async fn logged_events(platform: &Platform, admin: &str, session: &str) -> Vec<Value> {
    let log = platform
        .call(
            "GET",
            &format!("/acme/bot/v1/sessions/{session}/events?after=0"),
            Some(admin),
            Value::Null,
        )
        .await;
    assert_eq!(log.status, 200, "{}", log.body);
    log.body
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter_map(|data| serde_json::from_str::<Value>(data).ok())
        .collect()
}

/// The sum of `field` of the `kind` events' data.
fn sum_of(events: &[Value], kind: &str, field: &str) -> u64 {
    events
        .iter()
        .filter(|event| event["type"] == kind)
        .filter_map(|event| event["data"][field].as_u64())
        .sum()
}

/// The fuel the session's `tool_use` events report, from its log.
async fn logged_fuel(platform: &Platform, admin: &str, session: &str) -> u64 {
    sum_of(
        &logged_events(platform, admin, session).await,
        "tool_use",
        "fuel",
    )
}

/// The ledger's totals equal what the turns reported (`usage` of each
/// answer, `fuel` of each tool call) and what the gateway metered, and the
/// cost is the price table's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_bills_exactly_what_the_turns_used() {
    let (platform, admin) = platform_with_bot(prices()).await;
    ledger_equals_turns(&platform, &admin, &[CONVERT, "hello", CONVERT], 2).await;
}

/// The same on the real Claude Code CLI, jailed: its model calls through
/// the gateway and its tool calls through the MCP server are billed as
/// exactly as the builtin loop's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_bills_a_claude_code_session_exactly() {
    if !crate::support::can_jail("the_ledger_bills_a_claude_code_session_exactly") {
        return;
    }
    let binaries = crate::harnesses::binaries();
    let (platform, admin) = platform_with_bot_on(prices(), move |config| {
        config.harness = Some(karta_host::app::HarnessKind::ClaudeCode);
        config.harness_binaries = binaries;
    })
    .await;
    ledger_equals_turns(&platform, &admin, &[CONVERT, "hello"], 1).await;
}

/// A budget too small for Claude Code's first model call: the gateway
/// refuses it with 402, the CLI calls that a model error, and the turn
/// ends with `budget_exhausted` — what the client needs to know.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_reports_a_refused_model_call_as_budget_exhausted() {
    if !crate::support::can_jail("claude_code_reports_a_refused_model_call_as_budget_exhausted") {
        return;
    }
    let binaries = crate::harnesses::binaries();
    let (platform, admin) = platform_with_bot_on(prices(), move |config| {
        config.harness = Some(karta_host::app::HarnessKind::ClaudeCode);
        config.harness_binaries = binaries;
    })
    .await;
    set_budget(
        &platform,
        &admin,
        json!({ "project": "bot", "period": "day", "cap_micros": 1 }),
    )
    .await;
    let session = new_session(&platform, &admin).await;
    let turn = send(&platform, &admin, &session, "hello").await;
    assert_eq!(turn.json()["status"], "error", "{}", turn.body);
    let events = logged_events(&platform, &admin, &session).await;
    let error = events
        .iter()
        .find(|e| e["type"] == "error")
        .expect("an error event");
    assert_eq!(error["data"]["code"], "budget_exhausted", "{error}");
    assert!(
        error["data"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("budget")),
        "{error}"
    );
    assert_eq!(spent(&platform, &admin).await, 0);
}

/// Sends `texts` as turns of a new acme/bot session and checks the ledger
/// against them.
async fn ledger_equals_turns(platform: &Platform, admin: &str, texts: &[&str], tool_calls: u64) {
    let admin = admin.to_owned();
    let session = new_session(platform, &admin).await;
    let mut input = 0;
    let mut output = 0;
    let mut cache_read = 0;
    let mut cache_write = 0;
    for text in texts {
        let turn = platform
            .call(
                "POST",
                &format!("/acme/bot/v1/sessions/{session}/messages"),
                Some(&admin),
                json!({ "text": text }),
            )
            .await;
        assert_eq!(turn.status, 200, "{}", turn.body);
        let answer = turn.json();
        input += answer["usage"]["input_tokens"].as_u64().expect("input");
        output += answer["usage"]["output_tokens"].as_u64().expect("output");
        cache_read += answer["usage"]["cache_read_tokens"].as_u64().unwrap_or(0);
        cache_write += answer["usage"]["cache_write_tokens"].as_u64().unwrap_or(0);
    }
    let fuel = logged_fuel(platform, &admin, &session).await;
    assert!(fuel > 0, "the tool calls used fuel");
    let usage = platform
        .call(
            "GET",
            &format!("/v1/admin/orgs/acme/usage?project=bot&session={session}"),
            Some(&admin),
            Value::Null,
        )
        .await;
    assert_eq!(usage.status, 200, "{}", usage.body);
    let row = &usage.json()["rows"][0];
    assert_eq!(row["input_tokens"], input, "{}", usage.body);
    assert_eq!(row["output_tokens"], output, "{}", usage.body);
    assert_eq!(row["fuel"], fuel, "{}", usage.body);
    assert_eq!(row["cache_read_tokens"], cache_read, "{}", usage.body);
    assert_eq!(row["cache_write_tokens"], cache_write, "{}", usage.body);
    assert_eq!(row["tool_calls"], tool_calls, "{}", usage.body);
    let expected_cost = prices().cost_micros(&karta_host::meter::UsageKind::Model {
        provider: "offline".into(),
        model: "karta-offline".into(),
        input_tokens: input,
        output_tokens: output,
        cache_read_tokens: cache_read,
        cache_write_tokens: cache_write,
        prompt_tokens: 0,
    });
    let expected_cost = expected_cost
        + prices().cost_micros(&karta_host::meter::UsageKind::Tool {
            tool: "convert".into(),
            fuel,
            wall_us: 0,
        });
    let cost = row["cost_micros"].as_u64().expect("cost");
    // Per-record rounding up: the sum of records is at least the cost of
    // the sum, and at most one micro-unit more per record.
    assert!(cost >= expected_cost, "{cost} < {expected_cost}");
    assert!(cost <= expected_cost + 20, "{cost} ≫ {expected_cost}");
    // The turns' `done` events carry the same cost, and the tool calls'
    // `tool_use` events theirs.
    let events = logged_events(platform, &admin, &session).await;
    assert_eq!(sum_of(&events, "done", "cost_micros"), cost);
    assert!(sum_of(&events, "tool_use", "cost_micros") > 0);
    // Another org sees none of it.
    let globex = platform.key("globex", Scope::Admin);
    let theirs = platform
        .call(
            "GET",
            "/v1/admin/orgs/globex/usage",
            Some(&globex),
            Value::Null,
        )
        .await;
    assert_eq!(theirs.status, 200, "{}", theirs.body);
    assert_eq!(
        theirs.json()["rows"][0]["cost_micros"]
            .as_u64()
            .unwrap_or(0),
        0,
        "{}",
        theirs.body
    );
}

/// Over a cap, a turn is refused with 402 before it runs; under it, a
/// tool gets only the fuel what is left buys (and fails out of fuel, not
/// past the budget).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_refuse_turns_and_cap_tool_fuel() {
    // Model calls free, fuel expensive: a budget of 5 micro-units buys
    // 5,000 fuel — far less than the tool's own limit.
    let prices = PriceTable::from_toml("fuel_per_mfuel = 1000\n").expect("prices");
    let prices = PriceTable {
        models: [(
            "karta-offline".to_owned(),
            karta_host::meter::ModelPrice::FREE,
        )]
        .into(),
        default_model: karta_host::meter::ModelPrice::FREE,
        ..prices
    };
    let (platform, admin) = platform_with_bot(prices).await;
    set_budget(
        &platform,
        &admin,
        json!({ "project": "bot", "period": "day", "cap_micros": 5 }),
    )
    .await;
    let session = new_session(&platform, &admin).await;
    let turn = send(&platform, &admin, &session, CONVERT).await;
    assert_eq!(turn.status, 200, "{}", turn.body);
    assert!(
        turn.body.contains("out_of_fuel"),
        "the tool ran out of the budget's fuel: {}",
        turn.body
    );
    let fuel = logged_fuel(&platform, &admin, &session).await;
    assert!(fuel <= 5_000, "{fuel} fuel: more than 5 micro-units buy");
    // The budget is spent: the next turn is refused before it runs.
    let refused = send(&platform, &admin, &session, "hello").await;
    assert_eq!(refused.status, 402, "{}", refused.body);
    assert_eq!(refused.json()["error"], "budget_exhausted");
    // So is one through the Managed Agents route, and a fresh OpenAI chat.
    let managed = platform
        .call(
            "POST",
            &format!("/acme/bot/v1/managed-agents/sessions/{session}/events"),
            Some(&admin),
            json!({ "type": "user.message", "text": "hello" }),
        )
        .await;
    assert_eq!(managed.status, 402, "{}", managed.body);
    let chat = platform
        .call(
            "POST",
            "/acme/bot/v1/chat/completions",
            Some(&admin),
            json!({ "model": "karta", "messages": [{ "role": "user", "content": "hello" }] }),
        )
        .await;
    assert_eq!(chat.status, 402, "{}", chat.body);
    let spent = spent(&platform, &admin).await;
    assert!(spent <= 5, "spent {spent} of a 5 micro-unit cap");
    // Another project of the org is not under that budget.
    let other = platform
        .call("POST", "/acme/shop/v1/sessions", Some(&admin), json!({}))
        .await;
    let id = other.json()["id"].as_str().expect("id").to_owned();
    let fine = platform
        .call(
            "POST",
            &format!("/acme/shop/v1/sessions/{id}/messages"),
            Some(&admin),
            json!({ "text": "hi" }),
        )
        .await;
    assert_eq!(fine.status, 200, "{}", fine.body);
}

/// 100 sessions race one small cap with tool calls: the budget is used up,
/// and never passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_sessions_never_spend_past_a_cap() {
    let prices = PriceTable {
        models: [(
            "karta-offline".to_owned(),
            karta_host::meter::ModelPrice::FREE,
        )]
        .into(),
        default_model: karta_host::meter::ModelPrice::FREE,
        ..PriceTable::from_toml("fuel_per_mfuel = 1000\n").expect("prices")
    };
    let (platform, admin) = platform_with_bot(prices).await;
    const CAP: u64 = 200;
    set_budget(
        &platform,
        &admin,
        json!({ "period": "month", "cap_micros": CAP }),
    )
    .await;
    let platform = std::sync::Arc::new(platform);
    let mut sessions = Vec::new();
    for _ in 0..100 {
        sessions.push(new_session(&platform, &admin).await);
    }
    let mut racers = tokio::task::JoinSet::new();
    for session in sessions {
        let platform = platform.clone();
        let admin = admin.clone();
        racers.spawn(async move {
            platform
                .call(
                    "POST",
                    &format!("/acme/bot/v1/sessions/{session}/messages"),
                    Some(&admin),
                    json!({ "text": CONVERT }),
                )
                .await
                .status
        });
    }
    let mut statuses = Vec::new();
    while let Some(status) = racers.join_next().await {
        statuses.push(status.expect("racer"));
    }
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 402),
        "{statuses:?}"
    );
    let spent = spent(&platform, &admin).await;
    assert!(spent <= CAP, "spent {spent} past a cap of {CAP}");
    // The cap was actually reached (the race was a race): every tool call
    // costs a few micro-units, and 100 of them want more than the cap.
    assert!(
        spent + 50 >= CAP,
        "spent only {spent} of {CAP}: {statuses:?}"
    );
    let meter = platform.host.projects().ledger().meter();
    let (acme_id, _) = platform.project("acme", "shop");
    let org = karta_host::meter::BudgetScope::Org { org_id: acme_id };
    assert_eq!(meter.reserved_micros(&org), 0, "nothing left reserved");
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// A budget running out mid-turn: the first model call and the tool fit,
/// the second model call's reservation does not — the gateway refuses it
/// and the turn ends with an `error` event `budget_exhausted`; nothing
/// was spent past the cap and the ledger still equals the budget's count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_running_out_mid_turn_ends_it_with_budget_exhausted() {
    let prices = PriceTable::from_toml(
        "fuel_per_mfuel = 3000000\n\
         [models.karta-offline]\n\
         input_per_mtok = 3000000\n\
         output_per_mtok = 15000000\n\
         cache_read_per_mtok = 300000\n\
         cache_write_per_mtok = 3750000\n",
    )
    .expect("prices");
    let (platform, admin) = platform_with_bot(prices).await;
    // One model call reserves ~63,000 (4,096 output tokens at 15 units a
    // million, and its request's size as input); the tool (~15,000 fuel
    // at 3 units a million fuel) ~46,000.
    const CAP: u64 = 90_000;
    set_budget(
        &platform,
        &admin,
        json!({ "project": "bot", "period": "day", "cap_micros": CAP }),
    )
    .await;
    let session = new_session(&platform, &admin).await;
    let turn = send(&platform, &admin, &session, CONVERT).await;
    assert_eq!(turn.status, 200, "{}", turn.body);
    let events = logged_events(&platform, &admin, &session).await;
    let last = events.last().expect("events");
    assert_eq!(last["type"], "error", "{last}");
    assert_eq!(last["data"]["code"], "budget_exhausted", "{last}");
    assert!(
        sum_of(&events, "tool_use", "fuel") > 0,
        "the tool ran first"
    );
    let spent = spent(&platform, &admin).await;
    assert!(spent > 0 && spent <= CAP, "spent {spent} of {CAP}");
    let usage = platform
        .call(
            "GET",
            "/v1/admin/orgs/acme/usage?project=bot",
            Some(&admin),
            Value::Null,
        )
        .await;
    assert_eq!(
        usage.json()["rows"][0]["cost_micros"],
        spent,
        "{}",
        usage.body
    );
    let (acme_id, _) = platform.project("acme", "shop");
    let org = karta_host::meter::BudgetScope::Org { org_id: acme_id };
    assert_eq!(
        platform
            .host
            .projects()
            .ledger()
            .meter()
            .reserved_micros(&org),
        0,
        "every call's room was released"
    );
}

/// Per-key budgets: two API keys of one org, a small cap on one. That
/// key's session gets only the fuel the cap buys and its next turn is
/// refused with 402; the other key's session runs on. Usage by key
/// splits them; a session opened with a token traded for an embed key is
/// billed to the embed key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_budget_caps_that_keys_sessions_only() {
    let prices = PriceTable {
        models: [(
            "karta-offline".to_owned(),
            karta_host::meter::ModelPrice::FREE,
        )]
        .into(),
        default_model: karta_host::meter::ModelPrice::FREE,
        ..PriceTable::from_toml("fuel_per_mfuel = 1000\n").expect("prices")
    };
    let (platform, admin) = platform_with_bot(prices).await;
    let auth = platform.host.projects().auth();
    let (acme_id, _) = platform.project("acme", "shop");
    let new_key = |name: &str| {
        let (info, secret) = auth
            .create_api_key(&acme_id, Scope::Write, name)
            .expect("key");
        (
            info.id,
            secrecy::ExposeSecret::expose_secret(&secret).to_owned(),
        )
    };
    let (capped_id, capped) = new_key("capped");
    let (free_id, free) = new_key("free");
    // 5 micro-units buy 5,000 fuel: less than the tool needs.
    set_budget(
        &platform,
        &admin,
        json!({ "key": capped_id, "period": "day", "cap_micros": 5 }),
    )
    .await;
    let capped_session = new_session(&platform, &capped).await;
    let free_session = new_session(&platform, &free).await;

    let turn = send(&platform, &capped, &capped_session, CONVERT).await;
    assert_eq!(turn.status, 200, "{}", turn.body);
    assert!(turn.body.contains("out_of_fuel"), "{}", turn.body);
    let fuel = logged_fuel(&platform, &admin, &capped_session).await;
    assert!(fuel <= 5_000, "{fuel} fuel: more than 5 micro-units buy");
    let refused = send(&platform, &capped, &capped_session, "hello").await;
    assert_eq!(refused.status, 402, "{}", refused.body);
    assert_eq!(refused.json()["error"], "budget_exhausted");
    // The budget follows the session's key, not the caller's: the admin
    // key cannot run the capped session's turn either.
    let still = send(&platform, &admin, &capped_session, "hello").await;
    assert_eq!(still.status, 402, "{}", still.body);

    // The other key is not under that budget.
    for _ in 0..2 {
        let turn = send(&platform, &free, &free_session, CONVERT).await;
        assert_eq!(turn.status, 200, "{}", turn.body);
        assert!(!turn.body.contains("out_of_fuel"), "{}", turn.body);
    }
    let free_fuel = logged_fuel(&platform, &admin, &free_session).await;
    assert!(free_fuel > 10_000, "{free_fuel} fuel");

    let usage = platform
        .call(
            "GET",
            "/v1/admin/orgs/acme/usage?group_by=key",
            Some(&admin),
            Value::Null,
        )
        .await;
    assert_eq!(usage.status, 200, "{}", usage.body);
    let rows = usage.json()["rows"].as_array().cloned().unwrap_or_default();
    let cost_of = |id: &str| {
        rows.iter()
            .find(|row| row["key"] == id)
            .and_then(|row| row["cost_micros"].as_u64())
    };
    let capped_cost = cost_of(&capped_id).expect("the capped key's row");
    assert!(capped_cost <= 5, "{}", usage.body);
    assert!(
        cost_of(&free_id).expect("the free key's row") > 10,
        "{}",
        usage.body
    );
    assert!(spent(&platform, &admin).await <= 5);

    // An embed key's token: its sessions are billed to the embed key.
    let (_, bot) = platform.project("acme", "bot");
    let origin = "https://shop.example";
    let embed = auth
        .create_embed_key(&acme_id, &bot.id, vec![origin.into()])
        .expect("embed key");
    let token = auth
        .mint_embed_token(&embed.key, Some(origin), None)
        .expect("token")
        .token;
    let created = platform
        .call("POST", "/v1/sessions", Some(&token), json!({}))
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.json()["id"].as_str().expect("id").to_owned();
    let record = platform
        .host
        .projects()
        .store()
        .session(&id)
        .expect("read")
        .expect("session");
    assert_eq!(
        record.scope.and_then(|scope| scope.credential_id),
        Some(embed.id)
    );
}

/// One answer of an Anthropic-shaped provider: `usage` at its start
/// (`message_start`'s, with `model` saying who answered), `text`, then
/// `output_tokens` in all at its end.
fn provider_answer(model: &str, usage: &str, text: &str, output_tokens: u64) -> Vec<u8> {
    format!(
        "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"id\":\"m1\",\"model\":\"{model}\",\"usage\":{usage}}}}}\n\n\
         event: content_block_start\ndata: {{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{{\"type\":\"text\",\"text\":\"\"}}}}\n\n\
         event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{text}\"}}}}\n\n\
         event: content_block_stop\ndata: {{\"type\":\"content_block_stop\",\"index\":0}}\n\n\
         event: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"end_turn\"}},\"usage\":{{\"output_tokens\":{output_tokens}}}}}\n\n\
         event: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n"
    )
    .into_bytes()
}

/// What one builtin turn of a new session costs when every model call is
/// answered with `answer` by a provider behind the gateway (the platform
/// key, `model` asked for), at `prices`, under a roomy budget; the turn's
/// text must contain `text`.
async fn spent_on_one_answer(answer: Vec<u8>, text: &str, model: &str, prices: PriceTable) -> u64 {
    // The provider serves it for as long as the test runs.
    let answer: &'static [u8] = Box::leak(answer.into_boxed_slice());
    let provider = crate::support::trickle_server(answer, "text/event-stream", 64).await;
    let (platform, admin) = platform_with_bot_on(prices, |config| {
        config.harness = Some(karta_host::app::HarnessKind::Builtin);
        config.default_model = model.into();
        config.upstream = Some(karta_host::gateway::Upstream {
            kind: karta_host::gateway::UpstreamKind::Anthropic,
            base_url: format!("http://{provider}"),
            api_key: "platform".into(),
            org_key: false,
        });
    })
    .await;
    set_budget(
        &platform,
        &admin,
        json!({ "project": "bot", "period": "day", "cap_micros": 10_000_000 }),
    )
    .await;
    let session = new_session(&platform, &admin).await;
    let turn = send(&platform, &admin, &session, "hello").await;
    assert_eq!(turn.status, 200, "{}", turn.body);
    assert!(turn.body.contains(text), "{}", turn.body);
    spent(&platform, &admin).await
}

/// A call whose prompt is over its model's long-context threshold costs
/// the long-context prices for the whole call: its input at the answer's
/// start and its output at the answer's end, a record that carries no
/// input of its own. (Before, the output was billed at the base price.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_prompt_bills_its_whole_call_at_the_long_context_prices() {
    // The provider: a 250-token prompt (150 new, 100 read from the cache),
    // then 11 tokens of output.
    let answer = provider_answer(
        "claude-x",
        r#"{"input_tokens":150,"cache_read_input_tokens":100,"output_tokens":1}"#,
        "long",
        11,
    );
    // A token costs 1 micro-unit in and out, the cache nothing; over a
    // 200-token prompt, 10 in, 20 out, 2 a cached token.
    let prices = PriceTable::from_toml(
        "[default_model]\n\
         input_per_mtok = 1000000\n\
         output_per_mtok = 1000000\n\
         cache_read_per_mtok = 0\n\
         cache_write_per_mtok = 0\n\
         [default_model.long_context]\n\
         above_prompt_tokens = 200\n\
         input_per_mtok = 10000000\n\
         output_per_mtok = 20000000\n\
         cache_read_per_mtok = 2000000\n\
         cache_write_per_mtok = 0\n",
    )
    .expect("prices");
    // 150 × 10 + 100 × 2 in, 11 × 20 out: 1,500 + 200 + 220. At the base
    // prices the output would be 11, and the whole call 161.
    assert_eq!(
        spent_on_one_answer(answer, "long", "claude-x", prices).await,
        1_920
    );
}

/// A provider may answer with another model than the one asked for (a
/// fallback it chose, as OpenRouter's `models` list makes it do): the
/// ledger bills the dearer of the two, so a harness cannot ask for a cheap
/// model and be served a dear one at the cheap price.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_answered_by_a_dearer_model_than_asked_is_billed_as_that_model() {
    // The provider: every answer says `claude-opus-4` answered it.
    let answer = provider_answer(
        "claude-opus-4",
        r#"{"input_tokens":1000,"output_tokens":1}"#,
        "served",
        10,
    );
    // Everything is cheap but the model that answers.
    let prices = PriceTable::from_toml(
        "[models.claude-opus-4]\n\
         input_per_mtok = 100000000\n\
         output_per_mtok = 100000000\n\
         cache_read_per_mtok = 0\n\
         cache_write_per_mtok = 0\n\
         [default_model]\n\
         input_per_mtok = 1000000\n\
         output_per_mtok = 1000000\n\
         cache_read_per_mtok = 0\n\
         cache_write_per_mtok = 0\n",
    )
    .expect("prices");
    // 1,000 input and 10 output tokens at claude-opus-4's price (100 a
    // token), not at the price of the model asked for (1 a token).
    assert_eq!(
        spent_on_one_answer(answer, "served", "claude-3-haiku", prices).await,
        101_000
    );
}
