//! Budgets: admission at the cap, `affordable`, periods, overruns, and
//! the reservation race.

use std::sync::Arc;

use super::*;

#[test]
fn concurrent_reservations_never_pass_the_cap() {
    const THREADS: usize = 128;
    const AMOUNT: u64 = 7;
    const CAP: u64 = 10_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, meter) = open(dir.path());
    let scopes = BudgetScope::for_call("org_a", "prj_1", Some("u1"), Some("key_1"));
    let org = scopes[0].clone();
    meter
        .set_budget(&Budget {
            scope: org.clone(),
            period: Period::Day,
            cap_micros: CAP,
        })
        .expect("budget");
    let scopes = Arc::new(scopes);
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (meter, scopes) = (meter.clone(), Arc::clone(&scopes));
            std::thread::spawn(move || {
                let mut refused = 0;
                for i in 0..1000 {
                    match meter.reserve(&scopes, AMOUNT, EVE) {
                        Ok(reservation) => {
                            // Costs exactly what it reserved: 7 tokens at 1.
                            let mut r = record(
                                &format!("{t}/{i}"),
                                EVE,
                                "org_a",
                                "prj_1",
                                "s",
                                model("other", AMOUNT, 0, 0, 0),
                            );
                            r.end_user_id = Some("u1".into());
                            r.credential_id = Some("key_1".into());
                            assert!(matches!(
                                reservation.settle(&r),
                                Ok(Recorded::New {
                                    cost_micros: AMOUNT
                                })
                            ));
                        }
                        Err(MeterError::Exhausted(e)) => {
                            assert_eq!(
                                (e.scope.clone(), e.cap_micros),
                                (
                                    BudgetScope::Org {
                                        org_id: "org_a".into()
                                    },
                                    CAP
                                )
                            );
                            refused += 1;
                            if refused == 3 {
                                break;
                            }
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                refused
            })
        })
        .collect();
    for thread in threads {
        assert_eq!(
            thread.join().expect("thread"),
            3,
            "every thread ran into the cap"
        );
    }
    let spent = meter.spent(&org, Period::Day, EVE).expect("spent");
    assert!(spent <= CAP, "spent {spent} > cap {CAP}");
    assert!(spent + AMOUNT > CAP, "the cap was used: {spent}");
    assert_eq!(spent, CAP / AMOUNT * AMOUNT);
    for scope in scopes.iter() {
        assert_eq!(
            meter.reserved_micros(scope),
            0,
            "{scope}: nothing left in flight"
        );
    }
    let filter = UsageFilter {
        org_id: "org_a".into(),
        ..UsageFilter::default()
    };
    let total = &meter.totals(&filter, GroupBy::None).expect("totals")[0];
    assert_eq!(
        (total.cost_micros, total.model_calls),
        (spent, spent / AMOUNT)
    );
}

#[test]
fn check_refuses_at_the_cap_and_affordable_is_cap_minus_spent_minus_reserved() {
    let dir = tempfile::tempdir().expect("tempdir");
    let scopes = BudgetScope::for_call("org_a", "prj_1", None, None);
    let project = scopes[1].clone();
    {
        let (_store, meter) = open(dir.path());
        assert_eq!(
            meter.affordable(&scopes, EVE).expect("affordable"),
            None,
            "no budget: unlimited"
        );
        meter.check(&scopes, EVE).expect("no budget, no refusal");
        meter
            .set_budget(&Budget {
                scope: project.clone(),
                period: Period::Day,
                cap_micros: 100,
            })
            .expect("budget");
        meter
            .set_budget(&Budget {
                scope: project.clone(),
                period: Period::Month,
                cap_micros: 1_000,
            })
            .expect("budget");
        // Another org's budget on a scope of the same ids: never seen.
        let other = BudgetScope::Project {
            org_id: "org_b".into(),
            project_id: "prj_1".into(),
        };
        meter
            .set_budget(&Budget {
                scope: other,
                period: Period::Day,
                cap_micros: 1,
            })
            .expect("budget");
        meter.flush().expect("flush");
    }
    // Budgets come back from disk.
    let (_store, meter) = open(dir.path());
    assert_eq!(meter.budgets("org_a").expect("budgets").len(), 2);
    assert_eq!(meter.budgets("org_b").expect("budgets").len(), 1);

    meter
        .record(&record("r1", EVE, "org_a", "prj_1", "s", tool(60)))
        .expect("record");
    meter.check(&scopes, EVE).expect("60 of 100");
    assert_eq!(
        meter.affordable(&scopes, EVE).expect("affordable"),
        Some(40)
    );
    let thirty = meter.reserve(&scopes, 30, EVE).expect("fits");
    assert_eq!(
        meter.affordable(&scopes, EVE).expect("affordable"),
        Some(10)
    );
    meter.check(&scopes, EVE).expect("90 of 100");
    let refused = meter.reserve(&scopes, 11, EVE).expect_err("11 > 10 left");
    let MeterError::Exhausted(exhausted) = &refused else {
        panic!("{refused}");
    };
    assert_eq!(
        (
            exhausted.period,
            exhausted.spent_micros,
            exhausted.reserved_micros,
            exhausted.cap_micros
        ),
        (Period::Day, 60, 30, 100)
    );
    assert_eq!(
        (refused.status(), refused.code()),
        (402, "budget_exhausted")
    );
    let ten = meter.reserve(&scopes, 10, EVE).expect("exactly the rest");
    let at_cap = meter.check(&scopes, EVE).expect_err("100 of 100");
    assert_eq!(at_cap.status(), 402);
    assert!(meter.reserve(&scopes, 0, EVE).is_err(), "no room at all");
    assert_eq!(meter.affordable(&scopes, EVE).expect("affordable"), Some(0));
    // The next UTC day: nothing spent, the reservations still in flight.
    let tomorrow = EVE + DAY_MS;
    assert_eq!(
        meter.affordable(&scopes, tomorrow).expect("affordable"),
        Some(60)
    );
    drop(ten);
    assert_eq!(
        meter.affordable(&scopes, EVE).expect("affordable"),
        Some(10)
    );
    // A call that costs more than it reserved passes the cap by the excess.
    thirty
        .settle(&record("r2", EVE, "org_a", "prj_1", "s", tool(45)))
        .expect("settle");
    assert_eq!(meter.spent(&project, Period::Day, EVE).expect("spent"), 105);
    assert_eq!(meter.affordable(&scopes, EVE).expect("affordable"), Some(0));
    assert!(meter.check(&scopes, EVE).is_err());
    assert_eq!(meter.reserved_micros(&project), 0);
    // Removing the day budget leaves the month's: 1000 - 105.
    assert!(meter.remove_budget(&project, Period::Day).expect("remove"));
    assert!(!meter.remove_budget(&project, Period::Day).expect("remove"));
    assert_eq!(
        meter.affordable(&scopes, EVE).expect("affordable"),
        Some(895)
    );
    meter.check(&scopes, EVE).expect("under the month's cap");
}
