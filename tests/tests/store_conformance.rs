//! One suite, two backends: every `Store` operation behaves the same on Postgres and on the embedded SQLite
//! file, including reservations and approval consumption under concurrency.

use std::sync::Arc;

use chrono::{Duration as Days, Utc};
use secrecy::SecretString;
use serde_json::json;
use tollgate::audit::{AuditWriter, DecisionRecord};
use tollgate::metrics::Metrics;
use tollgate::resources::ResourceKind;
use tollgate::store::{
    AgentRow, ApprovalRow, ConsoleSessionRow, DecisionFilter, DeliveryAttempt, Idempotency,
    ManualSettlement, MintedStatus, MintedTokenRow, NewNotification, NewReservation, NextStep,
    NotificationStatus, Opened, Reservation, ResourceRow, ResourceStatus, ReviewerRow, Store,
    StoreError, TokenRoll, TokenUpdate, WindowKey,
};
use tollgate::vault::{Custody, SealedSecret};
use tollgate_tests::TestDatabase;
use uuid::Uuid;

/// Keeps whatever backs a store alive for the test.
enum Backing {
    Postgres(#[allow(dead_code)] TestDatabase),
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
}

async fn postgres() -> (Store, Backing) {
    let db = TestDatabase::create().await.expect("database");
    let store = Store::connect(&SecretString::from(db.url().to_string()), 16)
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    (store, Backing::Postgres(db))
}

async fn sqlite() -> (Store, Backing) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite:{}", dir.path().join("tollgate.db").display());
    let store = Store::connect(&SecretString::from(url), 16)
        .await
        .expect("open");
    store.migrate().await.expect("migrate");
    (store, Backing::Sqlite(dir))
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod on_postgres {
            $(#[tokio::test]
            async fn $name() {
                let (store, _backing) = super::postgres().await;
                super::$name(&store).await;
            })*
        }
        mod on_sqlite {
            $(#[tokio::test]
            async fn $name() {
                let (store, _backing) = super::sqlite().await;
                super::$name(&store).await;
            })*
        }
    };
}

conformance!(
    agents_are_unique_found_by_hash_and_revocation_bumps_the_version,
    decisions_commit_in_batches_with_outcomes_filters_and_an_intact_chain,
    forty_concurrent_reservations_admit_exactly_the_cap,
    settlement_commits_releases_and_flags,
    reservations_left_unsettled_are_flagged_by_the_sweep,
    idempotency_keys_replay_and_conflict,
    flagged_reservations_are_settled_by_an_operator,
    approvals_open_once_decide_once_and_consume_once,
    controls_and_admin_actions,
    reviewers_are_unique_found_by_hash_revoked_and_rotated,
    agents_and_approvals_keep_creator_and_on_behalf_of,
    console_sessions_open_resume_end_and_expire,
    decisions_filter_by_provider_and_until_and_agents_are_last_seen,
    notifications_queue_once_and_are_claimed_under_a_lease,
    twelve_concurrent_openers_get_exactly_the_cap_of_pending_approvals,
    notification_sweeps_see_pending_and_decided_approvals_and_the_freeze,
    minted_tokens_are_recorded_rolled_and_deleted_with_their_handles,
    vault_key_checks_keep_the_first_per_id,
    created_resources_are_recorded_once_and_marked_deleted,
    an_incident_report_reads_an_agent_and_its_handles,
);

fn agent(name: &str) -> AgentRow {
    AgentRow {
        id: Uuid::now_v7(),
        name: name.to_string(),
        team: Some("web".into()),
        scopes: vec!["dns:write".into(), "billing:spend".into()],
        labels: json!({"env": "dev"}),
        key_hash: format!("hash-of-{name}"),
        key_prefix: "tg_abcdef".into(),
        status: "active".into(),
        created_at: Utc::now(),
        expires_at: Some(Utc::now() + Days::days(1)),
        revoked_at: None,
        created_by: None,
        minted_by: None,
        minted_token_id: None,
    }
}

async fn agents_are_unique_found_by_hash_and_revocation_bumps_the_version(store: &Store) {
    let a = agent("deployer");
    store.insert_agent(&a).await.unwrap();
    let v1 = store.agents_version().await.unwrap();
    assert!(matches!(
        store.insert_agent(&agent("deployer")).await,
        Err(StoreError::Conflict(_))
    ));
    let found = store
        .agent_by_key_hash("hash-of-deployer")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (found.id, found.scopes.clone(), found.labels.clone()),
        (a.id, a.scopes.clone(), a.labels.clone())
    );
    assert_eq!(found.team.as_deref(), Some("web"));
    assert!(store.agent_by_key_hash("nope").await.unwrap().is_none());
    store.insert_agent(&agent("second")).await.unwrap();
    let v2 = store.agents_version().await.unwrap();
    assert!(v2 > v1);
    assert!(store.revoke_agent("deployer").await.unwrap());
    assert!(
        !store.revoke_agent("deployer").await.unwrap(),
        "already revoked"
    );
    assert!(store.agents_version().await.unwrap() > v2);
    let listed = store.list_agents().await.unwrap();
    assert_eq!(
        listed.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
        vec!["deployer", "second"]
    );
    assert_eq!(listed[0].status, "revoked");
    assert!(listed[0].revoked_at.is_some());
}

fn record(agent: &str, outcome: &str, action: &str) -> DecisionRecord {
    DecisionRecord {
        id: Uuid::now_v7(),
        at: Utc::now(),
        agent_id: Some(Uuid::now_v7()),
        agent_name: Some(agent.into()),
        run_id: Some("run-1".into()),
        on_behalf_of: None,
        provider: "cloudflare".into(),
        method: "GET".into(),
        path: "/client/v4/zones".into(),
        query: Some("page=1".into()),
        action: action.into(),
        risk: "read".into(),
        outcome: outcome.into(),
        code: None,
        rules: vec!["r.one".into()],
        reasons: json!([{"rule": "r.one", "message": "m"}]),
        policy_revision: Some("abc".into()),
        charge_cents: Some(1044),
        approval_id: None,
        policy_outcome: Some(outcome.into()),
        shadow_outcome: None,
        input: Some(json!({"request": {"body": {"n": 1.5, "s": "é\"x"}}}).to_string()),
    }
}

async fn decisions_commit_in_batches_with_outcomes_filters_and_an_intact_chain(store: &Store) {
    let metrics = Arc::new(Metrics::new());
    // Three writers on one queue: batches commit side by side, each writer keeps its own unbroken chain.
    let (audit, task) = AuditWriter::start(
        store.clone(),
        3,
        64,
        tollgate::audit::Checkpoints::default(),
        metrics.clone(),
    );
    let mut ids = Vec::new();
    let mut pending = Vec::new();
    for i in 0..30 {
        let r = record(
            if i % 2 == 0 { "even" } else { "odd" },
            if i % 3 == 0 { "deny" } else { "allow" },
            "cloudflare.zone.read",
        );
        ids.push(r.id);
        let audit = audit.clone();
        pending.push(tokio::spawn(async move {
            audit.record(r).await.map(|rec| rec.decision_id())
        }));
    }
    for p in pending {
        p.await.unwrap().unwrap();
    }
    audit.record_outcome(tollgate::store::OutcomeRow {
        decision_id: ids[1],
        at: Utc::now(),
        upstream_status: Some(201),
        latency_us: 1234,
        error: None,
        flagged: false,
    });
    // Nobody waits for an outcome; dropping the last handle lets the writers drain the queue and stop.
    drop(audit);
    task.await.unwrap();
    let (row, outcome) = store.decision(ids[1]).await.unwrap().unwrap();
    assert_eq!(row.agent_name.as_deref(), Some("odd"));
    assert_eq!(row.charge_cents, Some(1044));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(row.input.as_deref().unwrap()).unwrap()["request"]
            ["body"]["s"],
        "é\"x"
    );
    let outcome = outcome.unwrap();
    assert_eq!(
        (outcome.upstream_status, outcome.latency_us),
        (Some(201), 1234)
    );

    let page = |before| DecisionFilter {
        agent: Some("even".into()),
        limit: 5,
        before,
        ..DecisionFilter::default()
    };
    let first = store.list_decisions(&page(None)).await.unwrap();
    assert_eq!(first.len(), 5);
    assert!(
        first
            .windows(2)
            .all(|w| (w[0].0.at, w[0].0.id) > (w[1].0.at, w[1].0.id)),
        "newest first"
    );
    let last = &first[4].0;
    let second = store
        .list_decisions(&page(Some((last.at, last.id))))
        .await
        .unwrap();
    assert!(
        second
            .iter()
            .all(|(d, _)| (d.at, d.id) < (last.at, last.id)),
        "keyset cursor continues"
    );
    let denied = DecisionFilter {
        outcome: Some("deny".into()),
        limit: 100,
        ..DecisionFilter::default()
    };
    assert_eq!(store.list_decisions(&denied).await.unwrap().len(), 10);

    let reports = tollgate::audit::verify(store, None).await.unwrap();
    assert!((1..=3).contains(&reports.len()), "{reports:?}");
    assert_eq!(reports.iter().map(|r| r.records).sum::<usize>(), 30);
    for r in &reports {
        assert!(r.problems.is_empty(), "{:?}", r.problems);
    }
    let replay = store.replayable_decisions(None, 1000).await.unwrap();
    assert_eq!(replay.len(), 30);
}

fn window() -> WindowKey {
    WindowKey {
        budget: "agent-provider-month".into(),
        subject: "agent:a/stripe".into(),
        period: "2026-11".into(),
    }
}

fn reservation<'a>(
    w: &'a WindowKey,
    decision: Uuid,
    cents: i64,
    key: Option<&'a str>,
    fingerprint: &'a str,
) -> NewReservation<'a> {
    NewReservation {
        window: w,
        provider: "stripe",
        agent_id: Uuid::nil(),
        decision_id: decision,
        cents,
        cap_cents: 10_000,
        idempotency: key.map(|key| Idempotency {
            key,
            account: "",
            window_secs: 86_400,
        }),
        fingerprint,
    }
}

async fn forty_concurrent_reservations_admit_exactly_the_cap(store: &Store) {
    let w = window();
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let store = store.clone();
        let w = w.clone();
        tasks.push(tokio::spawn(async move {
            store
                .reserve(&reservation(&w, Uuid::now_v7(), 1000, None, "f"))
                .await
                .unwrap()
        }));
    }
    let mut reserved = 0;
    for t in tasks {
        match t.await.unwrap() {
            Reservation::Reserved => reserved += 1,
            Reservation::Exceeded {
                cap_cents,
                committed_cents,
                reserved_cents,
            } => {
                assert_eq!(cap_cents, 10_000);
                assert_eq!(committed_cents + reserved_cents, 10_000);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(reserved, 10);
    assert_eq!(store.window_spent(&w).await.unwrap(), 10_000);
}

async fn settlement_commits_releases_and_flags(store: &Store) {
    let w = window();
    let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    for id in [a, b, c] {
        assert_eq!(
            store
                .reserve(&reservation(&w, id, 2000, None, "f"))
                .await
                .unwrap(),
            Reservation::Reserved
        );
    }
    assert_eq!(store.settle(a, true).await.unwrap(), Some(2000));
    assert_eq!(store.settle(a, true).await.unwrap(), None, "settled once");
    assert_eq!(store.settle(b, false).await.unwrap(), Some(2000));
    store.flag_reservation(c).await.unwrap();
    let rows = store.spend("2026-11").await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (
            rows[0].committed_cents,
            rows[0].reserved_cents,
            rows[0].flagged_cents
        ),
        (2000, 2000, 2000)
    );
    assert_eq!(store.window_spent(&w).await.unwrap(), 4000);
}

/// A reservation whose request never settled it (the store away for longer than the retries, a killed
/// process) is flagged by the sweep once it is old enough; settled or fresh ones are left alone.
async fn reservations_left_unsettled_are_flagged_by_the_sweep(store: &Store) {
    let w = window();
    let (stuck, settled) = (Uuid::now_v7(), Uuid::now_v7());
    for id in [stuck, settled] {
        store
            .reserve(&reservation(&w, id, 700, None, "f"))
            .await
            .unwrap();
    }
    store.settle(settled, true).await.unwrap();
    let an_hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    assert_eq!(store.flag_stale_reservations(an_hour_ago).await.unwrap(), 0);
    assert!(store.flagged_reservations().await.unwrap().is_empty());
    let later = chrono::Utc::now() + chrono::Duration::seconds(1);
    assert_eq!(store.flag_stale_reservations(later).await.unwrap(), 1);
    assert_eq!(
        store.flag_stale_reservations(later).await.unwrap(),
        0,
        "once"
    );
    let flagged = store.flagged_reservations().await.unwrap();
    assert_eq!(flagged.len(), 1);
    assert_eq!(flagged[0].decision_id, stuck);
}

async fn idempotency_keys_replay_and_conflict(store: &Store) {
    let w = window();
    let first = Uuid::now_v7();
    assert_eq!(
        store
            .reserve(&reservation(&w, first, 1500, Some("k1"), "f1"))
            .await
            .unwrap(),
        Reservation::Reserved
    );
    // While the first use has no answer, a repeat waits: if the first fails validation the provider keeps
    // nothing, and the repeat would run as a new request.
    assert_eq!(
        store
            .reserve(&reservation(&w, Uuid::now_v7(), 1500, Some("k1"), "f1"))
            .await
            .unwrap(),
        Reservation::IdempotencyInFlight
    );
    store.settle(first, true).await.unwrap();
    assert_eq!(
        store
            .reserve(&reservation(&w, Uuid::now_v7(), 1500, Some("k1"), "f1"))
            .await
            .unwrap(),
        Reservation::Replayed
    );
    assert_eq!(
        store
            .reserve(&reservation(&w, Uuid::now_v7(), 1500, Some("k1"), "f2"))
            .await
            .unwrap(),
        Reservation::IdempotencyConflict
    );
    assert_eq!(store.window_spent(&w).await.unwrap(), 1500);

    // The same key on another connected account is another key at the provider: charged.
    let mut other_account = reservation(&w, Uuid::now_v7(), 1500, Some("k1"), "f1");
    other_account.idempotency = Some(Idempotency {
        key: "k1",
        account: "acct_b|",
        window_secs: 86_400,
    });
    assert_eq!(
        store.reserve(&other_account).await.unwrap(),
        Reservation::Reserved
    );
    assert_eq!(store.window_spent(&w).await.unwrap(), 3000);

    // A key whose first use was released (a definite failure) is free again: the retry is charged.
    let first = Uuid::now_v7();
    assert_eq!(
        store
            .reserve(&reservation(&w, first, 1000, Some("k2"), "f1"))
            .await
            .unwrap(),
        Reservation::Reserved
    );
    store.settle(first, false).await.unwrap();
    assert_eq!(
        store
            .reserve(&reservation(&w, Uuid::now_v7(), 1000, Some("k2"), "f1"))
            .await
            .unwrap(),
        Reservation::Reserved
    );
    assert_eq!(store.window_spent(&w).await.unwrap(), 4000);

    // Past the provider's window a repeat is a new request (the provider forgot the key): charged again,
    // and then it is the live use of the key.
    let short = |decision, fingerprint| {
        let mut r = reservation(&w, decision, 500, Some("k3"), fingerprint);
        r.idempotency = Some(Idempotency {
            key: "k3",
            account: "",
            window_secs: 1,
        });
        r
    };
    let first = Uuid::now_v7();
    assert_eq!(
        store.reserve(&short(first, "f1")).await.unwrap(),
        Reservation::Reserved
    );
    store.settle(first, true).await.unwrap();
    assert_eq!(
        store.reserve(&short(Uuid::now_v7(), "f1")).await.unwrap(),
        Reservation::Replayed
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        store.reserve(&short(Uuid::now_v7(), "f2")).await.unwrap(),
        Reservation::Reserved
    );
    assert_eq!(
        store.reserve(&short(Uuid::now_v7(), "f1")).await.unwrap(),
        Reservation::IdempotencyConflict
    );
    assert_eq!(store.window_spent(&w).await.unwrap(), 5000);
    // A first use with an unknown outcome (flagged): the retry is the same call (the provider acts on the
    // key at most once), so it takes the flagged reservation over — the call is counted once.
    let unknown = Uuid::now_v7();
    assert_eq!(
        store
            .reserve(&reservation(&w, unknown, 200, Some("k5"), "f1"))
            .await
            .unwrap(),
        Reservation::Reserved
    );
    store.flag_reservation(unknown).await.unwrap();
    assert_eq!(
        store
            .reserve(&reservation(&w, Uuid::now_v7(), 200, Some("k5"), "f1"))
            .await
            .unwrap(),
        Reservation::ReservedReplacing(unknown),
        "the retry's answer will settle the call"
    );
    assert_eq!(store.window_spent(&w).await.unwrap(), 5200);
    assert!(
        store.flagged_reservations().await.unwrap().is_empty(),
        "the replaced attempt is no longer waiting for an operator"
    );
    assert_eq!(
        store.settle(unknown, false).await.unwrap(),
        None,
        "it holds no money any more"
    );
    // Concurrent retries of a flagged attempt (found by an attacker: on Postgres a locking join re-checked
    // the key row against an old snapshot of the reservations and took a live use for a released one):
    // exactly one takes the money over, the same call again waits for its answer, another body conflicts.
    let flagged = Uuid::now_v7();
    assert_eq!(
        store
            .reserve(&reservation(&w, flagged, 300, Some("k6"), "f1"))
            .await
            .unwrap(),
        Reservation::Reserved
    );
    store.flag_reservation(flagged).await.unwrap();
    let before = store.window_spent(&w).await.unwrap();
    let ids: Vec<Uuid> = (0..12).map(|_| Uuid::now_v7()).collect();
    let attempts: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let store = store.clone();
            let w = w.clone();
            let id = *id;
            tokio::spawn(async move {
                let fingerprint = if i % 2 == 0 { "f1" } else { "f2" };
                store
                    .reserve(&reservation(&w, id, 300, Some("k6"), fingerprint))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut results = Vec::new();
    for attempt in attempts {
        results.push(attempt.await.unwrap());
    }
    let replacing = results
        .iter()
        .filter(|r| matches!(r, Reservation::ReservedReplacing(e) if *e == flagged))
        .count();
    assert_eq!(replacing, 1, "{results:?}");
    for (i, r) in results.iter().enumerate() {
        match r {
            Reservation::ReservedReplacing(_) => assert_eq!(i % 2, 0),
            Reservation::IdempotencyInFlight => assert_eq!(i % 2, 0, "{results:?}"),
            Reservation::IdempotencyConflict => assert_eq!(i % 2, 1, "{results:?}"),
            other => panic!("attempt {i}: {other:?} ({results:?})"),
        }
    }
    assert_eq!(
        store.window_spent(&w).await.unwrap(),
        before,
        "the call is still counted once"
    );
    // A reservation refused over the cap does not claim the key.
    let mut big = reservation(&w, Uuid::now_v7(), 9_000, Some("k4"), "f1");
    big.cap_cents = 10_000;
    assert!(matches!(
        store.reserve(&big).await.unwrap(),
        Reservation::Exceeded { .. }
    ));
    assert_eq!(
        store
            .reserve(&reservation(&w, Uuid::now_v7(), 100, Some("k4"), "f1"))
            .await
            .unwrap(),
        Reservation::Reserved
    );
}

async fn flagged_reservations_are_settled_by_an_operator(store: &Store) {
    let w = window();
    let (flagged, plain) = (Uuid::now_v7(), Uuid::now_v7());
    for id in [flagged, plain] {
        store
            .reserve(&reservation(&w, id, 2500, None, "f"))
            .await
            .unwrap();
    }
    store.flag_reservation(flagged).await.unwrap();
    let listed = store.flagged_reservations().await.unwrap();
    assert_eq!(
        listed.iter().map(|r| r.decision_id).collect::<Vec<_>>(),
        vec![flagged]
    );
    assert_eq!(listed[0].cents, 2500);
    // Only a flagged reservation can be settled by hand.
    assert_eq!(
        store
            .settle_flagged(plain, ManualSettlement::Released, "ops", "n")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .settle_flagged(
                flagged,
                ManualSettlement::Released,
                "alice",
                "no charge at Stripe"
            )
            .await
            .unwrap(),
        Some(2500)
    );
    assert_eq!(store.window_spent(&w).await.unwrap(), 2500);
    assert!(store.flagged_reservations().await.unwrap().is_empty());
    // Settled once: a second settlement finds nothing open.
    assert_eq!(
        store
            .settle_flagged(flagged, ManualSettlement::Committed, "bob", "n")
            .await
            .unwrap(),
        None
    );
    let again = Uuid::now_v7();
    store
        .reserve(&reservation(&w, again, 1000, None, "f"))
        .await
        .unwrap();
    store.flag_reservation(again).await.unwrap();
    assert_eq!(
        store
            .settle_flagged(again, ManualSettlement::Committed, "alice", "charged")
            .await
            .unwrap(),
        Some(1000)
    );
    assert_eq!(store.window_spent(&w).await.unwrap(), 3500);
}

fn approval(fingerprint: &str) -> ApprovalRow {
    let now = Utc::now();
    ApprovalRow {
        id: Uuid::now_v7(),
        fingerprint: fingerprint.into(),
        agent_id: Uuid::now_v7(),
        agent_name: "buyer".into(),
        provider: "stripe".into(),
        method: "POST".into(),
        path: "/v1/payment_intents".into(),
        query: String::new(),
        headers: "content-type: application/x-www-form-urlencoded\n".into(),
        body_sha256: "00".into(),
        action: "stripe.payment.create".into(),
        reasons: json!([{"rule": "spend.single_charge", "message": "over $50"}]),
        charge_cents: Some(6000),
        status: "pending".into(),
        created_at: now,
        expires_at: now + Days::hours(1),
        requested_by_decision: Uuid::now_v7(),
        on_behalf_of: None,
        decided_by: None,
        decided_at: None,
        note: None,
        consumed_at: None,
        consumed_by_decision: None,
    }
}

async fn approvals_open_once_decide_once_and_consume_once(store: &Store) {
    let first = store.open_approval(&approval("fp")).await.unwrap();
    let again = store.open_approval(&approval("fp")).await.unwrap();
    assert_eq!(first.id, again.id, "one open approval per request");
    let (pending, oldest) = store.pending_approvals().await.unwrap();
    assert_eq!(pending, 1);
    assert!(oldest.is_some_and(|t| t <= Utc::now()));
    assert!(
        !store
            .consume_approval(first.id, "fp", Uuid::now_v7(), None)
            .await
            .unwrap(),
        "pending is not usable"
    );
    let decided = store
        .decide_approval(first.id, true, "alice", Some("ok"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (decided.status.as_str(), decided.decided_by.as_deref()),
        ("approved", Some("alice"))
    );
    assert!(
        store
            .decide_approval(first.id, false, "bob", None)
            .await
            .unwrap()
            .is_none(),
        "decided once"
    );
    assert!(
        !store
            .consume_approval(first.id, "other", Uuid::now_v7(), None)
            .await
            .unwrap(),
        "bound to its fingerprint"
    );
    let (x, y) = tokio::join!(
        store.consume_approval(first.id, "fp", Uuid::now_v7(), Some("key-a")),
        store.consume_approval(first.id, "fp", Uuid::now_v7(), Some("key-b"))
    );
    assert_eq!(
        [x.unwrap(), y.unwrap()].iter().filter(|w| **w).count(),
        1,
        "consumed exactly once"
    );
    // The winner's forwarded Idempotency-Key is kept: a retry with it (same call, recent) finds the
    // consuming decision; another key, another call or an older consumption does not.
    let consumer = store
        .approval(first.id)
        .await
        .unwrap()
        .unwrap()
        .consumed_by_decision
        .unwrap();
    let recent = Utc::now() - Days::seconds(60);
    let (a, b) = (
        store
            .approval_retry(first.id, "fp", "key-a", recent)
            .await
            .unwrap(),
        store
            .approval_retry(first.id, "fp", "key-b", recent)
            .await
            .unwrap(),
    );
    assert_eq!(
        [a, b].iter().flatten().collect::<Vec<_>>(),
        vec![&consumer],
        "exactly the winner's key retries"
    );
    let winner = if a.is_some() { "key-a" } else { "key-b" };
    assert_eq!(
        store
            .approval_retry(first.id, "other", winner, recent)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .approval_retry(first.id, "fp", winner, Utc::now() + Days::seconds(60))
            .await
            .unwrap(),
        None,
        "only within the window"
    );
    // An approval a retry went out under is never handed back: the call may have been made.
    store.restore_approval(first.id).await.unwrap();
    assert_eq!(
        store.approval(first.id).await.unwrap().unwrap().status,
        "consumed",
        "not handed back after a retry"
    );
    // Without retries it is handed back, and then has no consuming request to retry.
    let second = store.open_approval(&approval("fp3")).await.unwrap();
    store
        .decide_approval(second.id, true, "alice", None)
        .await
        .unwrap();
    assert!(
        store
            .consume_approval(second.id, "fp3", Uuid::now_v7(), Some("key-c"))
            .await
            .unwrap()
    );
    store.restore_approval(second.id).await.unwrap();
    assert_eq!(
        store
            .approval_retry(second.id, "fp3", "key-c", recent)
            .await
            .unwrap(),
        None,
        "a handed-back approval has no consuming request"
    );
    assert!(
        store
            .consume_approval(second.id, "fp3", Uuid::now_v7(), None)
            .await
            .unwrap(),
        "restored approvals are usable again"
    );
    assert_eq!(
        store
            .approval_retry(second.id, "fp3", "key-c", recent)
            .await
            .unwrap(),
        None,
        "a consumption without a key has nothing to retry"
    );
    // An expired approval is not retried either (consent is about now).
    let mut short = approval("fp4");
    short.expires_at = Utc::now() + Days::milliseconds(300);
    let short = store.open_approval(&short).await.unwrap();
    store
        .decide_approval(short.id, true, "alice", None)
        .await
        .unwrap();
    assert!(
        store
            .consume_approval(short.id, "fp4", Uuid::now_v7(), Some("key-d"))
            .await
            .unwrap()
    );
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(
        store
            .approval_retry(short.id, "fp4", "key-d", recent)
            .await
            .unwrap(),
        None,
        "expired"
    );
    assert_eq!(
        store.approval(first.id).await.unwrap().unwrap().status,
        "consumed"
    );
    // A new request for the same call opens a new approval; expired ones are reported as expired.
    let mut stale = approval("fp2");
    stale.expires_at = Utc::now() - Days::seconds(1);
    let stale = store.open_approval(&stale).await.unwrap();
    let fresh = store.open_approval(&approval("fp2")).await.unwrap();
    assert_ne!(stale.id, fresh.id);
    let expired = store.list_approvals(Some("expired"), 10).await.unwrap();
    assert_eq!(
        expired.iter().map(|a| a.id).collect::<Vec<_>>(),
        vec![stale.id]
    );
    assert_eq!(
        store
            .list_approvals(Some("pending"), 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        store
            .decide_approval(stale.id, true, "alice", None)
            .await
            .unwrap()
            .is_none(),
        "expired cannot be approved"
    );
}

async fn controls_and_admin_actions(store: &Store) {
    assert!(!store.frozen().await.unwrap());
    let initial = store.freeze_state().await.unwrap();
    assert_eq!(
        (
            initial.frozen,
            initial.changed_by,
            initial.changed_at,
            initial.reason
        ),
        (false, None, None, None)
    );
    store.set_frozen(true, "alice").await.unwrap();
    assert!(store.frozen().await.unwrap());
    store.set_frozen(false, "alice").await.unwrap();
    assert!(!store.frozen().await.unwrap());
    store
        .record_admin_action("alice", "freeze", None, &json!({"why": "test"}))
        .await
        .unwrap();
    // The reason is the latest freeze/unfreeze action's, and only while it agrees with the switch.
    store.set_frozen(true, "bob").await.unwrap();
    store
        .record_admin_action("bob", "freeze", None, &json!({"reason": "incident 7"}))
        .await
        .unwrap();
    let state = store.freeze_state().await.unwrap();
    assert!(state.frozen);
    assert_eq!(state.changed_by.as_deref(), Some("bob"));
    assert!(state.changed_at.is_some());
    assert_eq!(state.reason.as_deref(), Some("incident 7"));
    store.set_frozen(false, "carol").await.unwrap();
    let state = store.freeze_state().await.unwrap();
    assert_eq!(
        (state.frozen, state.changed_by.as_deref(), state.reason),
        (false, Some("carol"), None)
    );
    store
        .record_admin_action("carol", "unfreeze", None, &json!({"reason": "all clear"}))
        .await
        .unwrap();
    assert_eq!(
        store.freeze_state().await.unwrap().reason.as_deref(),
        Some("all clear")
    );
    assert!(store.ping().await);
}

#[tokio::test]
async fn a_second_server_on_one_sqlite_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let url = SecretString::from(format!("sqlite:{}", dir.path().join("t.db").display()));
    let a = Store::connect(&url, 4).await.unwrap();
    let b = Store::connect(&url, 4).await.unwrap();
    a.lock_for_serving().unwrap();
    let err = b.lock_for_serving().unwrap_err();
    assert!(
        err.to_string().contains("another tollgate is serving"),
        "{err}"
    );
}

fn reviewer(name: &str, role: &str) -> ReviewerRow {
    ReviewerRow {
        id: Uuid::now_v7(),
        name: name.to_string(),
        email: Some(format!("{name}@example.com")),
        role: role.to_string(),
        token_hash: format!("token-hash-of-{name}"),
        token_prefix: "tgr_abcdef".into(),
        created_at: Utc::now(),
        created_by: "bootstrap-admin".into(),
        revoked_at: None,
        rotated_at: None,
        last_used: None,
    }
}

async fn reviewers_are_unique_found_by_hash_revoked_and_rotated(store: &Store) {
    let alice = reviewer("alice", "approver");
    store.insert_reviewer(&alice).await.unwrap();
    assert!(matches!(
        store.insert_reviewer(&reviewer("alice", "admin")).await,
        Err(StoreError::Conflict(_))
    ));
    // A role outside the four is refused by the table itself.
    assert!(
        store
            .insert_reviewer(&reviewer("mallory", "root"))
            .await
            .is_err()
    );
    let found = store
        .reviewer_by_token_hash("token-hash-of-alice")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            found.id,
            found.role.as_str(),
            found.email.as_deref(),
            found.created_by.as_str()
        ),
        (
            alice.id,
            "approver",
            Some("alice@example.com"),
            "bootstrap-admin"
        )
    );
    assert!(found.last_used.is_none() && found.revoked_at.is_none());
    assert!(
        store
            .reviewer_by_token_hash("nope")
            .await
            .unwrap()
            .is_none()
    );

    // last_used is written, and at most once a minute.
    store.touch_reviewer(alice.id).await.unwrap();
    let used = store
        .reviewer_by_token_hash("token-hash-of-alice")
        .await
        .unwrap()
        .unwrap()
        .last_used
        .unwrap();
    store.touch_reviewer(alice.id).await.unwrap();
    let again = store
        .reviewer_by_token_hash("token-hash-of-alice")
        .await
        .unwrap()
        .unwrap()
        .last_used
        .unwrap();
    assert_eq!(used, again);

    // Rotation swaps the hash: the old one finds nobody.
    assert!(
        store
            .rotate_reviewer("alice", "token-hash-2", "tgr_zzzzzz")
            .await
            .unwrap()
    );
    assert!(
        store
            .reviewer_by_token_hash("token-hash-of-alice")
            .await
            .unwrap()
            .is_none()
    );
    let rotated = store
        .reviewer_by_token_hash("token-hash-2")
        .await
        .unwrap()
        .unwrap();
    assert!(rotated.rotated_at.is_some());
    assert_eq!(rotated.token_prefix, "tgr_zzzzzz");
    assert!(!store.rotate_reviewer("nobody", "h", "p").await.unwrap());

    store
        .insert_reviewer(&reviewer("bob", "viewer"))
        .await
        .unwrap();
    assert!(store.revoke_reviewer("alice").await.unwrap());
    assert!(
        !store.revoke_reviewer("alice").await.unwrap(),
        "already revoked"
    );
    // A revoked reviewer's row stays (for the record) and says so; rotating it is refused.
    let revoked = store
        .reviewer_by_token_hash("token-hash-2")
        .await
        .unwrap()
        .unwrap();
    assert!(revoked.revoked_at.is_some());
    assert!(
        !store
            .rotate_reviewer("alice", "token-hash-3", "p")
            .await
            .unwrap()
    );
    let listed = store.list_reviewers().await.unwrap();
    assert_eq!(
        listed.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        vec!["alice", "bob"]
    );
    // Single sign-on finds the active reviewer by email, ignoring case; one active reviewer per email.
    let bob = store
        .reviewer_by_email("BOB@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bob.name, "bob");
    assert!(
        store
            .reviewer_by_email("alice@example.com")
            .await
            .unwrap()
            .is_none(),
        "revoked"
    );
    let mut twin = reviewer("bobby", "admin");
    twin.email = Some("Bob@Example.com".into());
    assert!(matches!(
        store.insert_reviewer(&twin).await,
        Err(StoreError::Conflict(_))
    ));
    // Alice's email is free again once she is revoked.
    let mut again = reviewer("alice2", "viewer");
    again.email = Some("alice@example.com".into());
    store.insert_reviewer(&again).await.unwrap();
}

async fn agents_and_approvals_keep_creator_and_on_behalf_of(store: &Store) {
    let mut a = agent("made-by-alice");
    a.created_by = Some("alice".into());
    store.insert_agent(&a).await.unwrap();
    store.insert_agent(&agent("old")).await.unwrap();
    assert_eq!(
        store.agent_created_by(a.id).await.unwrap().as_deref(),
        Some("alice")
    );
    let listed = store.list_agents().await.unwrap();
    assert_eq!(listed[0].created_by.as_deref(), Some("alice"));
    assert_eq!(store.agent_created_by(Uuid::now_v7()).await.unwrap(), None);
    let mut ap = approval("fp-obo");
    ap.on_behalf_of = Some("bob@example.com".into());
    let opened = store.open_approval(&ap).await.unwrap();
    assert_eq!(opened.on_behalf_of.as_deref(), Some("bob@example.com"));
    let read = store.approval(opened.id).await.unwrap().unwrap();
    assert_eq!(read.on_behalf_of.as_deref(), Some("bob@example.com"));
    let listed = store.list_approvals(None, 10).await.unwrap();
    assert_eq!(listed[0].on_behalf_of.as_deref(), Some("bob@example.com"));
}

fn session(id_hash: &str, reviewer: Option<&ReviewerRow>, expires_in: Days) -> ConsoleSessionRow {
    ConsoleSessionRow {
        id_hash: id_hash.to_string(),
        reviewer_id: reviewer.map(|r| r.id),
        reviewer_name: reviewer.map_or("bootstrap-admin".to_string(), |r| r.name.clone()),
        credential_hash: reviewer.map_or("hash-of-bootstrap".to_string(), |r| r.token_hash.clone()),
        csrf_token: format!("csrf-{id_hash}"),
        created_at: Utc::now(),
        expires_at: Utc::now() + expires_in,
    }
}

async fn console_sessions_open_resume_end_and_expire(store: &Store) {
    let alice = reviewer("alice", "approver");
    store.insert_reviewer(&alice).await.unwrap();
    // Names are unique ignoring case: the record could not tell `alice` from `ALICE`.
    let mut shouting = reviewer("ALICE", "admin");
    shouting.email = None;
    assert!(matches!(
        store.insert_reviewer(&shouting).await,
        Err(StoreError::Conflict(_))
    ));
    let found = store.reviewer_by_id(alice.id).await.unwrap().unwrap();
    assert_eq!(
        (found.name.as_str(), found.token_hash.as_str()),
        ("alice", "token-hash-of-alice")
    );
    assert!(
        store
            .reviewer_by_id(Uuid::now_v7())
            .await
            .unwrap()
            .is_none()
    );

    store
        .insert_console_session(&session("s1", Some(&alice), Days::hours(8)))
        .await
        .unwrap();
    store
        .insert_console_session(&session("s2", None, Days::hours(8)))
        .await
        .unwrap();
    let s1 = store.console_session("s1").await.unwrap().unwrap();
    assert_eq!(s1.reviewer_id, Some(alice.id));
    assert_eq!(
        (s1.reviewer_name.as_str(), s1.csrf_token.as_str()),
        ("alice", "csrf-s1")
    );
    assert_eq!(s1.credential_hash, "token-hash-of-alice");
    let s2 = store.console_session("s2").await.unwrap().unwrap();
    assert_eq!(
        (s2.reviewer_id, s2.reviewer_name.as_str()),
        (None, "bootstrap-admin")
    );
    assert!(store.console_session("nope").await.unwrap().is_none());
    // A session id is unique.
    assert!(
        store
            .insert_console_session(&session("s1", Some(&alice), Days::hours(1)))
            .await
            .is_err()
    );

    // Ended: gone at once; ending twice is harmless.
    store.end_console_session("s1").await.unwrap();
    store.end_console_session("s1").await.unwrap();
    assert!(store.console_session("s1").await.unwrap().is_none());
    assert!(
        store.console_session("s2").await.unwrap().is_some(),
        "only that one"
    );
    // Expired: not honoured.
    store
        .insert_console_session(&session("s3", Some(&alice), Days::seconds(-1)))
        .await
        .unwrap();
    assert!(store.console_session("s3").await.unwrap().is_none());
    // Sessions long expired are swept when the next one opens.
    store
        .insert_console_session(&session("old", None, Days::days(-3)))
        .await
        .unwrap();
    store
        .insert_console_session(&session("s4", None, Days::hours(1)))
        .await
        .unwrap();
    assert!(
        store
            .insert_console_session(&session("old", None, Days::hours(1)))
            .await
            .is_ok(),
        "the old row was deleted"
    );
}

async fn decisions_filter_by_provider_and_until_and_agents_are_last_seen(store: &Store) {
    let seen = agent("seen");
    store.insert_agent(&seen).await.unwrap();
    store.insert_agent(&agent("never")).await.unwrap();
    let metrics = Arc::new(Metrics::new());
    let (audit, task) = AuditWriter::start(
        store.clone(),
        1,
        64,
        tollgate::audit::Checkpoints::default(),
        metrics,
    );
    let mut stripe = record("seen", "allow", "stripe.payment.create");
    stripe.provider = "stripe".into();
    stripe.at = Utc::now() - Days::hours(2);
    let cloudflare = record("seen", "allow", "cloudflare.zone.read");
    let (stripe_id, cloudflare_id) = (stripe.id, cloudflare.id);
    audit.record(stripe).await.unwrap();
    audit.record(cloudflare).await.unwrap();
    drop(audit);
    task.await.unwrap();

    let only = |provider: Option<&str>, until| DecisionFilter {
        provider: provider.map(str::to_string),
        until,
        limit: 10,
        ..DecisionFilter::default()
    };
    let ids = |rows: Vec<(
        tollgate::store::DecisionRow,
        Option<tollgate::store::OutcomeRow>,
    )>| { rows.into_iter().map(|(d, _)| d.id).collect::<Vec<_>>() };
    assert_eq!(
        ids(store
            .list_decisions(&only(Some("stripe"), None))
            .await
            .unwrap()),
        vec![stripe_id]
    );
    assert_eq!(
        ids(store
            .list_decisions(&only(Some("cloudflare"), None))
            .await
            .unwrap()),
        vec![cloudflare_id]
    );
    assert!(
        store
            .list_decisions(&only(Some("github"), None))
            .await
            .unwrap()
            .is_empty()
    );
    let an_hour_ago = Some(Utc::now() - Days::hours(1));
    assert_eq!(
        ids(store
            .list_decisions(&only(None, an_hour_ago))
            .await
            .unwrap()),
        vec![stripe_id]
    );

    let last = store.agents_last_seen().await.unwrap();
    assert_eq!(last.len(), 1, "an agent never seen is absent: {last:?}");
    assert_eq!(last[0].0, "seen");
    assert!(
        Utc::now() - last[0].1 < Days::minutes(5),
        "the newest decision: {:?}",
        last[0].1
    );
}

fn notification(webhook: &str, key: &str, at: chrono::DateTime<Utc>) -> NewNotification {
    NewNotification {
        id: Uuid::now_v7(),
        webhook: webhook.into(),
        event: "approval_required".into(),
        event_key: key.into(),
        subject: Some("a1".into()),
        body: format!("{{\"key\":\"{key}\"}}"),
        created_at: at,
    }
}

fn attempt(at: chrono::DateTime<Utc>, status: Option<i32>, next: NextStep) -> DeliveryAttempt {
    DeliveryAttempt {
        at,
        http_status: status,
        error: (next != NextStep::Delivered).then(|| "the receiver answered 500".to_string()),
        next,
    }
}

/// The outbox: one row per (webhook, event key) however often it is queued (every replica queues what it
/// sees); a claim leases rows so no other claim gets them until the lease runs out, counts the attempt, and
/// only the lease's owner may record it; retries wait for their time; delivered and failed rows are done.
async fn notifications_queue_once_and_are_claimed_under_a_lease(store: &Store) {
    let t0 = Utc::now();
    let webhooks = vec!["chat".to_string(), "siem".to_string()];
    let first = notification("chat", "approval_required:a1", t0);
    assert_eq!(
        store
            .enqueue_notifications(&[
                first.clone(),
                notification("siem", "approval_required:a1", t0)
            ])
            .await
            .unwrap(),
        2
    );
    // The same event seen again (another replica, a later sweep): nothing new; the first row is kept.
    assert_eq!(
        store
            .enqueue_notifications(&[notification("chat", "approval_required:a1", t0)])
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.notifications_pending(&webhooks).await.unwrap(), 2);
    assert_eq!(
        store.notifications_pending(&webhooks[..1]).await.unwrap(),
        1
    );
    let listed = store.list_notifications(10).await.unwrap();
    assert_eq!(listed.len(), 2);
    let row = listed.iter().find(|n| n.webhook == "chat").unwrap();
    assert_eq!((row.id, row.body.as_str()), (first.id, first.body.as_str()));
    assert_eq!((row.status, row.attempts), (NotificationStatus::Pending, 0));

    // Only the webhooks asked for; a second claim meanwhile gets nothing.
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let lease = t0 + Days::seconds(10);
    let claimed = store
        .claim_notifications(&webhooks[..1], t0, lease, a, 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!((claimed[0].id, claimed[0].attempts), (first.id, 1));
    assert!(
        store
            .claim_notifications(&webhooks[..1], t0, lease, b, 10)
            .await
            .unwrap()
            .is_empty(),
        "leased"
    );
    // Only the lease's owner records the attempt.
    let retry_at = t0 + Days::seconds(20);
    assert!(
        !store
            .finish_notification(
                first.id,
                b,
                &attempt(t0, Some(500), NextStep::RetryAt(retry_at))
            )
            .await
            .unwrap()
    );
    assert!(
        store
            .finish_notification(
                first.id,
                a,
                &attempt(t0, Some(500), NextStep::RetryAt(retry_at))
            )
            .await
            .unwrap()
    );
    // Not due before its retry time.
    assert!(
        store
            .claim_notifications(
                &webhooks[..1],
                t0 + Days::seconds(15),
                t0 + Days::seconds(25),
                b,
                10
            )
            .await
            .unwrap()
            .is_empty()
    );
    let claimed = store
        .claim_notifications(
            &webhooks[..1],
            retry_at,
            retry_at + Days::seconds(10),
            a,
            10,
        )
        .await
        .unwrap();
    assert_eq!(claimed[0].attempts, 2);
    assert_eq!(claimed[0].last_status, Some(500));
    // The claimer went away: once its lease ran out, another claim takes the row, and the first one's late
    // record is refused.
    let later = retry_at + Days::seconds(11);
    let claimed = store
        .claim_notifications(&webhooks[..1], later, later + Days::seconds(10), b, 10)
        .await
        .unwrap();
    assert_eq!(claimed[0].attempts, 3);
    assert!(
        !store
            .finish_notification(first.id, a, &attempt(later, Some(200), NextStep::Delivered))
            .await
            .unwrap()
    );
    assert!(
        store
            .finish_notification(first.id, b, &attempt(later, Some(200), NextStep::Delivered))
            .await
            .unwrap()
    );
    // Delivered is done: never claimed again.
    let far = later + Days::days(1);
    assert!(
        store
            .claim_notifications(&webhooks[..1], far, far + Days::seconds(10), a, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // The other one gives up.
    let claimed = store
        .claim_notifications(&webhooks, far, far + Days::seconds(10), a, 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].webhook, "siem");
    assert!(
        store
            .finish_notification(claimed[0].id, a, &attempt(far, None, NextStep::GiveUp))
            .await
            .unwrap()
    );
    assert_eq!(store.notifications_pending(&webhooks).await.unwrap(), 0);
    let listed = store.list_notifications(10).await.unwrap();
    let chat = listed.iter().find(|n| n.webhook == "chat").unwrap();
    assert_eq!(
        (
            chat.status,
            chat.attempts,
            chat.last_status,
            chat.last_error.as_deref()
        ),
        (NotificationStatus::Delivered, 3, Some(200), None)
    );
    assert!(chat.delivered_at.is_some());
    let siem = listed.iter().find(|n| n.webhook == "siem").unwrap();
    assert_eq!(
        (
            siem.status,
            siem.attempts,
            siem.last_status,
            siem.last_error.as_deref()
        ),
        (
            NotificationStatus::Failed,
            1,
            None,
            Some("the receiver answered 500")
        )
    );
    assert!(siem.delivered_at.is_none());
}

/// What the notification sweep reads: pending approvals whatever their age, approvals decided since a
/// moment, and who last set the freeze control.
async fn notification_sweeps_see_pending_and_decided_approvals_and_the_freeze(store: &Store) {
    let before = Utc::now() - Days::seconds(1);
    let pending = store.open_approval(&approval("fp-pending")).await.unwrap();
    let decided = store.open_approval(&approval("fp-decided")).await.unwrap();
    store
        .decide_approval(decided.id, false, "rita", Some("no"))
        .await
        .unwrap()
        .unwrap();
    let now = Utc::now();
    let seen = store.approvals_to_announce(before, now, 100).await.unwrap();
    let ids: Vec<Uuid> = seen.iter().map(|a| a.id).collect();
    assert_eq!(ids, vec![decided.id, pending.id], "newest first");
    assert_eq!(seen[0].decided_by.as_deref(), Some("rita"));
    // Decided before `since`: only the pending one is left.
    let seen = store
        .approvals_to_announce(now + Days::minutes(1), now, 100)
        .await
        .unwrap();
    assert_eq!(
        seen.iter().map(|a| a.id).collect::<Vec<_>>(),
        vec![pending.id]
    );

    let initial = store.freeze_state().await.unwrap();
    assert!(!initial.frozen);
    assert_eq!(initial.changed_by, None, "nobody set it yet");
    store.set_frozen(true, "olga").await.unwrap();
    let frozen = store.freeze_state().await.unwrap();
    assert!(frozen.frozen);
    assert_eq!(frozen.changed_by.as_deref(), Some("olga"));
    assert!(frozen.changed_at.unwrap() >= before);
}

/// The per-agent cap on pending approvals holds under concurrency: of twelve distinct calls opened at once,
/// exactly `cap` get an approval; a repeat of one of them still gets its own; another agent is not counted; a
/// handle and its minter share one cap.
async fn twelve_concurrent_openers_get_exactly_the_cap_of_pending_approvals(store: &Store) {
    let agent = Uuid::now_v7();
    let mut tasks = Vec::new();
    for i in 0..12 {
        let store = store.clone();
        let mut row = approval(&format!("capped-{i}"));
        row.agent_id = agent;
        tasks.push(tokio::spawn(async move {
            store.open_approval_capped(&row, agent, 3).await.unwrap()
        }));
    }
    let mut opened = Vec::new();
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            Opened::Approval(a) => opened.push(a),
            Opened::TooMany(n) => {
                assert_eq!(n, 3);
                refused += 1;
            }
        }
    }
    assert_eq!((opened.len(), refused), (3, 9));
    let mut again = approval(&opened[0].fingerprint);
    again.agent_id = agent;
    match store.open_approval_capped(&again, agent, 3).await.unwrap() {
        Opened::Approval(a) => assert_eq!(a.id, opened[0].id, "a repeat keeps its approval"),
        Opened::TooMany(_) => panic!("a repeat of a waiting call was refused"),
    }
    let other = approval("another-agent");
    assert!(matches!(
        store
            .open_approval_capped(&other, other.agent_id, 3)
            .await
            .unwrap(),
        Opened::Approval(_)
    ));

    // A handle's approvals count against its minter's cap, and the minter's against the handle's.
    let minter = self::agent("cap-minter");
    store.insert_agent(&minter).await.unwrap();
    let handle = AgentRow {
        minted_by: Some(minter.id),
        minted_token_id: Some("tok-cap".into()),
        ..self::agent("cap-minter~tok-cap")
    };
    store.insert_agent(&handle).await.unwrap();
    let mut by_minter = approval("capped-by-minter");
    by_minter.agent_id = minter.id;
    let mut by_handle = approval("capped-by-handle");
    by_handle.agent_id = handle.id;
    let mut by_handle_too = approval("capped-by-handle-too");
    by_handle_too.agent_id = handle.id;
    assert!(matches!(
        store
            .open_approval_capped(&by_minter, minter.id, 2)
            .await
            .unwrap(),
        Opened::Approval(_)
    ));
    assert!(matches!(
        store
            .open_approval_capped(&by_handle, minter.id, 2)
            .await
            .unwrap(),
        Opened::Approval(_)
    ));
    assert!(matches!(
        store
            .open_approval_capped(&by_handle_too, minter.id, 2)
            .await
            .unwrap(),
        Opened::TooMany(2)
    ));
}

/// A minted token and its handle's agent are recorded together; a roll revokes the old handle and stores
/// the new one; a delete revokes the handle and drops the sealed secret; every change bumps the agents
/// version, so every replica drops a revoked handle.
async fn minted_tokens_are_recorded_rolled_and_deleted_with_their_handles(store: &Store) {
    let minter = agent("deployer");
    store.insert_agent(&minter).await.unwrap();
    let handle = |name: &str| AgentRow {
        minted_by: Some(minter.id),
        minted_token_id: Some("tok-1".into()),
        ..agent(name)
    };
    let sealed = |byte: u8| SealedSecret {
        key_id: "k1".into(),
        nonce: vec![byte; 12],
        ciphertext: vec![byte; 40],
    };
    let first = handle("deployer~tok-1");
    let decision = Uuid::now_v7();
    let expires = Utc::now() + Days::days(2);
    let row = MintedTokenRow {
        provider: "cloudflare".into(),
        token_id: "tok-1".into(),
        name: Some("ci-deploy".into()),
        policies: json!([{"effect": "allow", "permission_groups": [{"id": "4755a26eedb94da69e1066d98aa820be"}]}]),
        expires_on: Some(expires),
        status: MintedStatus::Active,
        custody: Custody::Vault,
        minted_by: minter.id,
        minted_by_name: "deployer".into(),
        decision_id: decision,
        last_decision_id: decision,
        handle_agent_id: Some(first.id),
        sealed: Some(sealed(1)),
        rolls: 0,
        created_at: Utc::now(),
        rolled_at: None,
        deleted_at: None,
        account_id: Some("acct-1".into()),
    };
    let v0 = store.agents_version().await.unwrap();
    store.record_minted_token(&row, Some(&first)).await.unwrap();
    assert!(store.agents_version().await.unwrap() > v0);
    let stored = store
        .minted_token("cloudflare", "tok-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.name.as_deref(), Some("ci-deploy"));
    assert_eq!(stored.policies, row.policies);
    assert_eq!(stored.status, MintedStatus::Active);
    assert_eq!(stored.custody, Custody::Vault);
    assert_eq!(stored.sealed, Some(sealed(1)));
    assert_eq!(stored.handle_agent_id, Some(first.id));
    assert_eq!(
        stored.expires_on.map(|t| t.timestamp()),
        Some(expires.timestamp())
    );
    assert_eq!(
        stored.status_at(expires + Days::seconds(1)),
        MintedStatus::Expired
    );
    let by_handle = store
        .minted_token_by_handle(first.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_handle.token_id, "tok-1");
    assert_eq!(
        store.agent_by_id(minter.id).await.unwrap().unwrap().name,
        "deployer"
    );
    assert!(store.agent_by_id(Uuid::now_v7()).await.unwrap().is_none());
    let child = store
        .agent_by_key_hash(&first.key_hash)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(child.minted_by, Some(minter.id));
    assert_eq!(child.minted_token_id.as_deref(), Some("tok-1"));
    // The same token twice is a conflict, and the handle's agent is not left behind.
    let twice = handle("deployer~tok-1-again");
    assert!(matches!(
        store.record_minted_token(&row, Some(&twice)).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(
        store
            .agent_by_key_hash(&twice.key_hash)
            .await
            .unwrap()
            .is_none()
    );

    // Roll: the old handle is revoked, the new one stored.
    let second = handle("deployer~tok-1~r1");
    let roll_decision = Uuid::now_v7();
    let v1 = store.agents_version().await.unwrap();
    store
        .roll_minted_token(&TokenRoll {
            provider: "cloudflare",
            token_id: "tok-1",
            custody: Custody::Vault,
            sealed: Some(sealed(2)),
            handle: Some(&second),
            decision_id: roll_decision,
            agent_id: minter.id,
            agent_name: "deployer",
            at: Utc::now(),
            account_id: None,
        })
        .await
        .unwrap();
    assert!(store.agents_version().await.unwrap() > v1);
    let old = store
        .agent_by_key_hash(&first.key_hash)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(old.status, "revoked");
    let rolled = store
        .minted_token("cloudflare", "tok-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rolled.status, MintedStatus::Rolled);
    assert_eq!(rolled.rolls, 1);
    assert!(rolled.rolled_at.is_some());
    assert_eq!(rolled.sealed, Some(sealed(2)));
    assert_eq!(rolled.handle_agent_id, Some(second.id));
    assert_eq!(rolled.decision_id, decision);
    assert_eq!(rolled.last_decision_id, roll_decision);
    assert_eq!(
        rolled.account_id.as_deref(),
        Some("acct-1"),
        "a roll keeps the account the create recorded"
    );
    assert!(
        store
            .minted_token_by_handle(first.id)
            .await
            .unwrap()
            .is_none()
    );

    // An update moves the token's name, policies and expiry, and its live handle's expiry with it.
    let later = Utc::now() + Days::days(30);
    let v2 = store.agents_version().await.unwrap();
    assert!(
        store
            .update_minted_token(&TokenUpdate {
                provider: "cloudflare",
                token_id: "tok-1",
                name: Some("renamed".into()),
                policies: None,
                expires_on: Some(later),
                decision_id: Uuid::now_v7(),
            })
            .await
            .unwrap()
    );
    assert!(store.agents_version().await.unwrap() > v2);
    let updated = store
        .minted_token("cloudflare", "tok-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(updated.name.as_deref(), Some("renamed"));
    assert_eq!(
        updated.policies, row.policies,
        "policies kept when not given"
    );
    assert_eq!(
        updated.expires_on.map(|t| t.timestamp()),
        Some(later.timestamp())
    );
    let live_handle = store
        .agent_by_key_hash(&second.key_hash)
        .await
        .unwrap()
        .unwrap();
    // ... but never past its minter's own expiry (the minter expires in a day, the token in thirty).
    let minter_expiry = minter.expires_at.expect("the minter expires");
    assert!(minter_expiry < later);
    assert_eq!(
        live_handle.expires_at.map(|t| t.timestamp()),
        Some(minter_expiry.timestamp())
    );
    // A token that ends before its minter takes the handle with it.
    let sooner = Utc::now() + Days::hours(12);
    assert!(
        store
            .update_minted_token(&TokenUpdate {
                provider: "cloudflare",
                token_id: "tok-1",
                name: None,
                policies: None,
                expires_on: Some(sooner),
                decision_id: Uuid::now_v7(),
            })
            .await
            .unwrap()
    );
    let live_handle = store
        .agent_by_key_hash(&second.key_hash)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        live_handle.expires_at.map(|t| t.timestamp()),
        Some(sooner.timestamp())
    );
    assert!(
        !store
            .update_minted_token(&TokenUpdate {
                provider: "cloudflare",
                token_id: "tok-unknown",
                name: None,
                policies: None,
                expires_on: None,
                decision_id: Uuid::now_v7(),
            })
            .await
            .unwrap()
    );

    // A roll of a token tollgate has no row for records one, minted by the rolling agent.
    store
        .roll_minted_token(&TokenRoll {
            provider: "cloudflare",
            token_id: "tok-elsewhere",
            custody: Custody::PassThrough,
            sealed: None,
            handle: None,
            decision_id: roll_decision,
            agent_id: minter.id,
            agent_name: "deployer",
            at: Utc::now(),
            account_id: Some("acct-2"),
        })
        .await
        .unwrap();
    let elsewhere = store
        .minted_token("cloudflare", "tok-elsewhere")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(elsewhere.custody, Custody::PassThrough);
    assert_eq!(elsewhere.minted_by_name, "deployer");
    assert_eq!(elsewhere.sealed, None);
    assert_eq!(elsewhere.account_id.as_deref(), Some("acct-2"));
    // Every token the minter holds, oldest first; none of another agent's.
    let minted: Vec<String> = store
        .minted_tokens_by(&[minter.id])
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.token_id)
        .collect();
    assert_eq!(minted, ["tok-1", "tok-elsewhere"]);
    assert!(
        store
            .minted_tokens_by(&[Uuid::now_v7()])
            .await
            .unwrap()
            .is_empty()
    );

    // The secrets every answer is screened for: the vaulted token's (rolled: its new one), not the
    // pass-through token's, which has none sealed.
    let vaulted: Vec<(String, Option<SealedSecret>)> = store
        .vaulted_tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.token_id, t.sealed))
        .collect();
    assert_eq!(vaulted, [("tok-1".to_string(), Some(sealed(2)))]);

    // Delete: the handle revoked, the secret dropped.
    let delete_decision = Uuid::now_v7();
    assert!(
        store
            .delete_minted_token("cloudflare", "tok-1", delete_decision, Utc::now())
            .await
            .unwrap()
    );
    let deleted = store
        .minted_token("cloudflare", "tok-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(deleted.status, MintedStatus::Deleted);
    assert_eq!(deleted.sealed, None);
    assert!(deleted.deleted_at.is_some());
    assert_eq!(deleted.last_decision_id, delete_decision);
    let revoked = store
        .agent_by_key_hash(&second.key_hash)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revoked.status, "revoked");
    assert!(store.vaulted_tokens().await.unwrap().is_empty());
    assert!(
        !store
            .delete_minted_token("cloudflare", "tok-unknown", delete_decision, Utc::now())
            .await
            .unwrap()
    );
    assert!(
        store
            .minted_token("stripe", "tok-1")
            .await
            .unwrap()
            .is_none()
    );
}

/// The first key check stored for a key id is kept; a later one for the same id does not replace it.
async fn vault_key_checks_keep_the_first_per_id(store: &Store) {
    let check = |id: &str, byte: u8| SealedSecret {
        key_id: id.into(),
        nonce: vec![byte; 12],
        ciphertext: vec![byte; 43],
    };
    let stored = store.vault_key_checks(&[check("k1", 1)]).await.unwrap();
    assert_eq!(stored, [check("k1", 1)]);
    let stored = store
        .vault_key_checks(&[check("k2", 2), check("k1", 9)])
        .await
        .unwrap();
    assert_eq!(stored, [check("k1", 1), check("k2", 2)]);
    assert_eq!(
        store.vault_key_checks(&[]).await.unwrap(),
        [check("k1", 1), check("k2", 2)]
    );
}

fn resource(agent: &AgentRow, kind: ResourceKind, id: &str, scope: &str) -> ResourceRow {
    ResourceRow {
        id: Uuid::now_v7(),
        provider: "cloudflare".into(),
        kind,
        resource_id: id.into(),
        scope: scope.into(),
        zone_id: scope.strip_prefix("zone:").map(str::to_string),
        account_id: None,
        stripe_account: None,
        detail: json!({"name": "www.example.com", "type": "A"}),
        agent_id: agent.id,
        agent_name: agent.name.clone(),
        run_id: Some("run-7".into()),
        decision_id: Uuid::now_v7(),
        action: "cloudflare.dns.create".into(),
        // Both stores keep microseconds.
        created_at: chrono::SubsecRound::trunc_subsecs(Utc::now(), 6),
        status: ResourceStatus::Live,
        deleted_at: None,
        deleted_by_decision: None,
        updated_at: None,
        updated_by_decision: None,
    }
}

/// A created resource is one row per (provider, kind, id, scope) and agent, whatever replays it; another
/// agent's create of it is that agent's row; a delete marks every row of it once, and only in its own scope.
async fn created_resources_are_recorded_once_and_marked_deleted(store: &Store) {
    let deployer = agent("deployer");
    let other = agent("other");
    let mut first = resource(&deployer, ResourceKind::DnsRecord, "rec-1", "zone:z1");
    first.created_at -= Days::hours(2);
    assert!(store.record_resource(&first).await.unwrap());
    let replay = resource(&deployer, ResourceKind::DnsRecord, "rec-1", "zone:z1");
    assert!(
        !store.record_resource(&replay).await.unwrap(),
        "a replayed create is the same resource"
    );
    // ... which the agent touched again: `--since` finds it by that.
    let first = ResourceRow {
        updated_at: Some(replay.created_at),
        updated_by_decision: Some(replay.decision_id),
        ..first
    };
    // The same id in another zone, or of another kind, is another resource.
    let elsewhere = resource(&deployer, ResourceKind::DnsRecord, "rec-1", "zone:z2");
    assert!(store.record_resource(&elsewhere).await.unwrap());
    assert!(
        store
            .record_resource(&resource(&other, ResourceKind::Zone, "rec-1", ""))
            .await
            .unwrap()
    );

    let mine = store.resources_of(&[deployer.id], None).await.unwrap();
    assert_eq!(
        mine,
        vec![first.clone(), elsewhere.clone()],
        "oldest first, as stored"
    );
    let recent = store
        .resources_of(&[deployer.id], Some(Utc::now() - Days::hours(1)))
        .await
        .unwrap();
    assert_eq!(recent, vec![first.clone(), elsewhere.clone()]);
    let later = store
        .resources_of(&[deployer.id], Some(Utc::now() + Days::hours(1)))
        .await
        .unwrap();
    assert_eq!(later, vec![]);
    assert_eq!(store.resources_of(&[], None).await.unwrap(), vec![]);

    let by = Uuid::now_v7();
    let at = Utc::now();
    assert!(
        !store
            .mark_resource_deleted(
                "cloudflare",
                ResourceKind::DnsRecord,
                "rec-1",
                "zone:z3",
                by,
                at
            )
            .await
            .unwrap(),
        "not in that zone"
    );
    assert!(
        store
            .mark_resource_deleted(
                "cloudflare",
                ResourceKind::DnsRecord,
                "rec-1",
                "zone:z1",
                by,
                at
            )
            .await
            .unwrap()
    );
    assert!(
        !store
            .mark_resource_deleted(
                "cloudflare",
                ResourceKind::DnsRecord,
                "rec-1",
                "zone:z1",
                Uuid::now_v7(),
                at
            )
            .await
            .unwrap(),
        "deleted once"
    );
    let mine = store.resources_of(&[deployer.id], None).await.unwrap();
    assert_eq!(mine[0].status, ResourceStatus::Deleted);
    assert_eq!(mine[0].deleted_by_decision, Some(by));
    assert!(mine[0].deleted_at.is_some());
    assert_eq!(mine[1].status, ResourceStatus::Live);

    // The same id made again after its delete (a reused Workers script name) is a new resource.
    let again = resource(&other, ResourceKind::DnsRecord, "rec-1", "zone:z1");
    assert!(store.record_resource(&again).await.unwrap());
    assert_eq!(
        store.resources_of(&[other.id], None).await.unwrap()[1],
        again
    );
    assert_eq!(
        store.resources_of(&[deployer.id], None).await.unwrap(),
        vec![first.clone().deleted(by, at), elsewhere.clone()]
    );
    assert_eq!(
        store.resources_sharing(&[other.id]).await.unwrap(),
        vec![],
        "nobody else's live row of it"
    );
    // Another agent's create or upload of a live resource is a row of its own (its work is in it too), and
    // each sees the other's.
    let upload = resource(&deployer, ResourceKind::DnsRecord, "rec-1", "zone:z1");
    assert!(store.record_resource(&upload).await.unwrap());
    assert_eq!(
        store.resources_sharing(&[other.id]).await.unwrap(),
        vec![upload.clone()]
    );
    assert_eq!(
        store.resources_sharing(&[deployer.id]).await.unwrap(),
        vec![again.clone()]
    );
    assert_eq!(
        store
            .resources_sharing(&[deployer.id, other.id])
            .await
            .unwrap(),
        vec![],
        "one family's own rows are not shared"
    );
    // A delete ends every agent's row of it.
    let by = Uuid::now_v7();
    assert!(
        store
            .mark_resource_deleted(
                "cloudflare",
                ResourceKind::DnsRecord,
                "rec-1",
                "zone:z1",
                by,
                at
            )
            .await
            .unwrap()
    );
    for agent in [&deployer, &other] {
        let rows = store.resources_of(&[agent.id], None).await.unwrap();
        let row = rows
            .iter()
            .find(|r| r.scope == "zone:z1" && r.kind == ResourceKind::DnsRecord)
            .unwrap();
        assert_eq!(
            (row.status, row.deleted_by_decision),
            (ResourceStatus::Deleted, Some(by))
        );
    }
}

trait Deleted {
    fn deleted(self, by: Uuid, at: chrono::DateTime<Utc>) -> Self;
}

impl Deleted for ResourceRow {
    fn deleted(mut self, by: Uuid, at: chrono::DateTime<Utc>) -> Self {
        self.status = ResourceStatus::Deleted;
        self.deleted_by_decision = Some(by);
        self.deleted_at = Some(chrono::SubsecRound::trunc_subsecs(at, 6));
        self
    }
}

/// The reads an incident report makes: the agent with every handle it (or its handles) minted, their
/// decisions by outcome, their reservations by window and state, their minted tokens.
async fn an_incident_report_reads_an_agent_and_its_handles(store: &Store) {
    let deployer = agent("deployer");
    let child = AgentRow {
        minted_by: Some(deployer.id),
        minted_token_id: Some("tok-1".into()),
        ..agent("deployer~tok-1")
    };
    let grandchild = AgentRow {
        minted_by: Some(child.id),
        minted_token_id: Some("tok-2".into()),
        ..agent("deployer~tok-1~tok-2")
    };
    let other = agent("other");
    for a in [&deployer, &child, &grandchild, &other] {
        store.insert_agent(a).await.unwrap();
    }
    let family = store.agent_family("DEPLOYER").await.unwrap();
    assert_eq!(
        family.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
        ["deployer", "deployer~tok-1", "deployer~tok-1~tok-2"]
    );
    assert!(store.agent_family("nobody").await.unwrap().is_empty());
    assert_eq!(store.agent_family("other").await.unwrap().len(), 1);
    let ids: Vec<Uuid> = family.iter().map(|a| a.id).collect();

    // Decisions: two allows and a deny of the family, one of another agent.
    let metrics = Arc::new(Metrics::new());
    let (audit, task) = AuditWriter::start(
        store.clone(),
        1,
        64,
        tollgate::audit::Checkpoints::default(),
        metrics.clone(),
    );
    for (who, outcome, code) in [
        (&deployer, "allow", None),
        (&grandchild, "allow", None),
        (&child, "refused", Some("budget_exceeded")),
        (&other, "deny", None),
    ] {
        let mut r = record(&who.name, outcome, "cloudflare.dns.create");
        r.agent_id = Some(who.id);
        r.code = code.map(str::to_string);
        audit.record(r).await.unwrap();
    }
    // What the family changed: allowed calls of any risk but read, newest first, with their answers.
    let mut changed = Vec::new();
    for (who, risk, action) in [
        (&deployer, "write", "cloudflare.dns.delete"),
        (&grandchild, "high", "cloudflare.worker.delete"),
        (&deployer, "write", "cloudflare.dns.update"),
        (&other, "write", "cloudflare.dns.delete"),
    ] {
        let mut r = record(&who.name, "allow", action);
        r.agent_id = Some(who.id);
        r.risk = risk.into();
        r.method = "DELETE".into();
        r.at = Utc::now() + Days::milliseconds(changed.len() as i64);
        changed.push(audit.record(r).await.unwrap().decision_id());
    }
    audit.record_outcome(tollgate::store::OutcomeRow {
        decision_id: changed[1],
        at: Utc::now(),
        upstream_status: Some(200),
        latency_us: 10,
        error: None,
        flagged: false,
    });
    drop(audit);
    let _ = task.await;
    let changes = store.agent_changes(&ids, None, 2).await.unwrap();
    let seen: Vec<(Uuid, &str, &str, Option<i32>)> = changes
        .iter()
        .map(|c| {
            (
                c.decision_id,
                c.action.as_str(),
                c.risk.as_str(),
                c.upstream_status,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (changed[2], "cloudflare.dns.update", "write", None),
            (changed[1], "cloudflare.worker.delete", "high", Some(200)),
        ],
        "newest first, at most the limit, reads and other agents left out"
    );
    assert_eq!(store.agent_changes(&ids, None, 10).await.unwrap().len(), 3);
    let counts = store.decision_counts(&ids, None).await.unwrap();
    let seen: Vec<(&str, Option<&str>, i64)> = counts
        .iter()
        .map(|c| (c.outcome.as_str(), c.code.as_deref(), c.count))
        .collect();
    assert_eq!(
        seen,
        [("allow", None, 5), ("refused", Some("budget_exceeded"), 1)]
    );
    assert!(
        store
            .decision_counts(&ids, Some(Utc::now() + Days::hours(1)))
            .await
            .unwrap()
            .is_empty()
    );

    // Spend: committed, reserved (flagged) and released, summed per window and state.
    let w = window();
    let reserve = |agent_id: Uuid, decision: Uuid, cents: i64| NewReservation {
        agent_id,
        ..reservation(&w, decision, cents, None, "f")
    };
    let (a, b, c, d) = (
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
    );
    store.reserve(&reserve(deployer.id, a, 1000)).await.unwrap();
    store.reserve(&reserve(child.id, b, 250)).await.unwrap();
    store.reserve(&reserve(deployer.id, c, 300)).await.unwrap();
    store.reserve(&reserve(other.id, d, 999)).await.unwrap();
    store.settle(a, true).await.unwrap();
    store.settle(c, false).await.unwrap();
    store.flag_reservation(b).await.unwrap();
    let spend = store.agent_spend(&ids, None).await.unwrap();
    let seen: Vec<(&str, i64, i64, i64)> = spend
        .iter()
        .map(|s| (s.state.as_str(), s.cents, s.reservations, s.flagged_cents))
        .collect();
    assert_eq!(
        seen,
        [
            ("committed", 1000, 1, 0),
            ("released", 300, 1, 0),
            ("reserved", 250, 1, 250)
        ]
    );
    assert_eq!(spend[0].period, "2026-11");

    // Minted tokens: the family's, not another agent's.
    let token = |id: &str, by: &AgentRow| MintedTokenRow {
        provider: "cloudflare".into(),
        token_id: id.into(),
        name: None,
        policies: json!([]),
        expires_on: None,
        status: MintedStatus::Active,
        custody: Custody::Vault,
        minted_by: by.id,
        minted_by_name: by.name.clone(),
        decision_id: Uuid::now_v7(),
        last_decision_id: Uuid::now_v7(),
        handle_agent_id: None,
        sealed: None,
        rolls: 0,
        created_at: Utc::now(),
        rolled_at: None,
        deleted_at: None,
        account_id: None,
    };
    store
        .record_minted_token(&token("tok-1", &deployer), None)
        .await
        .unwrap();
    store
        .record_minted_token(&token("tok-2", &child), None)
        .await
        .unwrap();
    store
        .record_minted_token(&token("tok-9", &other), None)
        .await
        .unwrap();
    let minted = store.minted_tokens_by(&ids).await.unwrap();
    assert_eq!(
        minted
            .iter()
            .map(|t| t.token_id.as_str())
            .collect::<Vec<_>>(),
        ["tok-1", "tok-2"]
    );
}
