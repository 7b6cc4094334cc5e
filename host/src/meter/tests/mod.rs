//! The meter's cross-cutting tests: idempotency and totals against
//! reports computed independently from the records (`totals.rs`, with the
//! oracle in `oracle.rs`), crash safety (`crash.rs`: reopen, and `kill -9`
//! of a child process mid-write), and budgets with the reservation race
//! (`budgets.rs`). This file holds the shared fixtures.

mod budgets;
mod crash;
mod oracle;
mod totals;

use std::collections::BTreeMap;
use std::path::Path;

use super::*;

/// 2025-01-31T23:59:59.000Z: one second before a day *and* a month ends.
const EVE: u64 = 1_738_367_999_000;
const DAY_MS: u64 = 86_400_000;

/// Prices whose costs are exact integers, so the tests can compute them
/// without the price code: `mx-1*` 2/5/1/3 per token, anything else 1 per
/// token, 1 per unit of fuel.
fn prices() -> PriceTable {
    let per_token = |n: u64| n * 1_000_000;
    PriceTable {
        models: BTreeMap::from([(
            "mx-1".to_owned(),
            ModelPrice {
                input_per_mtok: per_token(2),
                output_per_mtok: per_token(5),
                cache_read_per_mtok: per_token(1),
                cache_write_per_mtok: per_token(3),
                long_context: None,
            },
        )]),
        default_model: ModelPrice {
            input_per_mtok: per_token(1),
            output_per_mtok: per_token(1),
            cache_read_per_mtok: per_token(1),
            cache_write_per_mtok: per_token(1),
            long_context: None,
        },
        fuel_per_mfuel: per_token(1),
    }
}

/// What `prices()` bills, computed by hand.
fn expected_cost(kind: &UsageKind) -> u64 {
    match kind {
        UsageKind::Model {
            model,
            input_tokens: i,
            output_tokens: o,
            cache_read_tokens: r,
            cache_write_tokens: w,
            ..
        } if model.starts_with("mx-1") => 2 * i + 5 * o + r + 3 * w,
        UsageKind::Model {
            input_tokens: i,
            output_tokens: o,
            cache_read_tokens: r,
            cache_write_tokens: w,
            ..
        } => i + o + r + w,
        UsageKind::Tool { fuel, .. } => *fuel,
    }
}

fn open(dir: &Path) -> (Store, Meter) {
    let store = Store::open(dir).expect("store");
    let meter = Meter::open(&store, prices()).expect("meter");
    (store, meter)
}

fn model(name: &str, input: u64, output: u64, read: u64, write: u64) -> UsageKind {
    UsageKind::Model {
        provider: "anthropic".into(),
        model: name.into(),
        input_tokens: input,
        output_tokens: output,
        cache_read_tokens: read,
        cache_write_tokens: write,
        prompt_tokens: 0,
    }
}

fn tool(fuel: u64) -> UsageKind {
    UsageKind::Tool {
        tool: "calc".into(),
        fuel,
        wall_us: 40,
    }
}

fn record(
    id: &str,
    at_ms: u64,
    org: &str,
    project: &str,
    session: &str,
    kind: UsageKind,
) -> UsageRecord {
    UsageRecord {
        id: id.into(),
        at_ms,
        org_id: org.into(),
        project_id: project.into(),
        version: 1,
        session_id: session.into(),
        end_user_id: None,
        credential_id: None,
        kind,
    }
}

/// A deterministic pseudo-random stream (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % below
    }
}

/// `n` records over two orgs that reuse each other's project, session and
/// end-user ids (so a leak between orgs would show), within two days of a
/// month boundary, with every fourth id repeated.
fn scripted(n: usize, seed: u64) -> Vec<UsageRecord> {
    let mut rng = Rng(seed);
    let mut records = Vec::new();
    for i in 0..n {
        let org = ["org_a", "org_b"][rng.next(2) as usize];
        let project = ["prj_1", "prj_2", "prj_3"][rng.next(3) as usize];
        let session = format!("ses_{}", rng.next(4));
        let at_ms = EVE - DAY_MS + rng.next(3 * DAY_MS);
        let kind = match rng.next(4) {
            0 => tool(rng.next(5_000_000)),
            1 => model(
                "mx-1",
                rng.next(9000),
                rng.next(900),
                rng.next(5000),
                rng.next(100),
            ),
            2 => model("mx-1-2025", rng.next(9000), rng.next(900), 0, 0),
            _ => model(
                "other",
                rng.next(500),
                rng.next(50),
                rng.next(50),
                rng.next(5),
            ),
        };
        let id = if i % 4 == 3 {
            format!("call-{}", i - 1)
        } else {
            format!("call-{i}")
        };
        let mut r = record(&id, at_ms, org, project, &session, kind);
        r.end_user_id =
            [None, Some("u1".to_owned()), Some("u2".to_owned())][rng.next(3) as usize].clone();
        r.credential_id = [None, Some("key_1".to_owned())][rng.next(2) as usize].clone();
        records.push(r);
    }
    records
}
