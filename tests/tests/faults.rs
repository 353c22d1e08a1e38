//! Faults on the database's side, on Postgres (a relay between tollgate and the server injects them): a
//! commit whose acknowledgement is lost, and an outage with connections cut and new ones refused. tollgate
//! recovers without a restart of its own, and the books' invariants (`Books::check`) hold at the end. The
//! agent's and the provider's faults run on both stores in `agent_faults.rs`.

use serde_json::Value;
use sqlx::Row;
use tollgate_tests::books::Books;
use tollgate_tests::scenario::{HOLD_POLICY, eventually};
use tollgate_tests::tollgate::{Tollgate, TollgateBuilder, policy_dir_with};
use tollgate_tests::{TestDatabase, Upstream};

/// tollgate with [`HOLD_POLICY`] on `database_url`, forwarding to `upstream_url` (`configure` adds config
/// lines), and the key of its agent `buyer`. Keep the policy directory alive as long as tollgate.
async fn hold_gate(
    database_url: &str,
    upstream_url: &str,
    configure: fn(TollgateBuilder) -> TollgateBuilder,
) -> (Tollgate, tempfile::TempDir, String) {
    let policy = policy_dir_with(HOLD_POLICY).unwrap();
    let builder = Tollgate::builder(database_url, upstream_url).policy_dir(policy.path());
    let tg = configure(builder).start().await.unwrap();
    let key = tg.create_agent("buyer", &[]).await.unwrap();
    (tg, policy, key)
}

/// Confirmed by reading the code: when a batch committed but its acknowledgement was lost, the writer kept
/// its old chain head and every later batch hit `UNIQUE(writer_id, seq)` forever, while `/readyz` stayed
/// green. Now the writer re-reads its head, the allow is confirmed from the store, and nothing wedges.
#[tokio::test]
async fn a_lost_commit_acknowledgement_neither_loses_the_record_nor_wedges_a_writer() {
    use tollgate_tests::faultrelay::FaultRelay;
    let db = TestDatabase::create().await.unwrap();
    let pool = db.pool().await.unwrap();
    let relay = FaultRelay::start(db.server_target().unwrap())
        .await
        .unwrap();
    let upstream = Upstream::builder().start().await.unwrap();
    // One writer, so the batch that loses its acknowledgement and every later one share a chain.
    let (tg, _policy, key) = hold_gate(&db.url_via(relay.addr()), &upstream.url(), |b| {
        b.audit("writers = 1")
    })
    .await;
    let http = reqwest::Client::new();
    let pay = |run: &'static str| {
        http.post(tg.url("/stripe/v1/payment_intents"))
            .basic_auth(&key, Some(""))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("tollgate-run", run)
            .body("amount=100&currency=usd")
            .send()
    };
    assert_eq!(pay("before").await.unwrap().status(), 200);
    // The decision row of this request carries its run id: its insert commits, and the reply is lost.
    relay.swallow_reply_after(b"lost-ack-run");
    let lost = pay("lost-ack-run").await.unwrap();
    assert_eq!(relay.swallowed(), 1, "the fault fired");
    assert_eq!(
        lost.status(),
        200,
        "the allow was confirmed from the store and forwarded"
    );
    for _ in 0..5 {
        assert_eq!(
            pay("after").await.unwrap().status(),
            200,
            "the writer is not wedged"
        );
    }
    let ready = http.get(tg.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    // Exactly one decision per request, and the chain verifies.
    let runs: Vec<(Option<String>, i64)> =
        sqlx::query("SELECT run_id, count(*) FROM decisions GROUP BY run_id ORDER BY run_id")
            .fetch_all(&pool)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
    assert_eq!(
        runs,
        vec![
            (Some("after".to_string()), 5),
            (Some("before".to_string()), 1),
            (Some("lost-ack-run".to_string()), 1)
        ]
    );
    assert_eq!(upstream.request_count(), 7);
    let (ok, out, err) = tg.cli(&["audit", "verify"]).await.unwrap();
    assert!(
        ok && out.contains("intact") && !out.contains("BROKEN"),
        "{out}{err}"
    );
    let recoveries = http
        .get(tg.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        recoveries.contains("tollgate_audit_writer_recoveries_total 1"),
        "{recoveries}"
    );
    let books = Books::postgres(db.url()).await.unwrap();
    books.settled(7).await.unwrap();
    books.check(upstream.request_count()).await.unwrap();
}

/// The database goes away and comes back (connections cut, new ones refused for a while): requests are
/// refused and recorded when they can be, `/readyz` turns unready, and tollgate recovers by itself.
#[tokio::test]
async fn tollgate_recovers_from_a_database_outage_without_a_restart() {
    use tollgate_tests::faultrelay::FaultRelay;
    let db = TestDatabase::create().await.unwrap();
    let pool = db.pool().await.unwrap();
    let relay = FaultRelay::start(db.server_target().unwrap())
        .await
        .unwrap();
    let upstream = Upstream::builder().start().await.unwrap();
    let (tg, _policy, key) = hold_gate(&db.url_via(relay.addr()), &upstream.url(), |b| b).await;
    let http = reqwest::Client::new();
    let pay = || {
        http.post(tg.url("/stripe/v1/payment_intents"))
            .basic_auth(&key, Some(""))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("amount=100&currency=usd")
            .send()
    };
    assert_eq!(pay().await.unwrap().status(), 200);
    relay.refuse(true);
    let during = pay().await.unwrap();
    assert_eq!(during.status(), 503, "fail closed while the store is away");
    eventually("/readyz turning unready", || {
        let http = http.clone();
        let url = tg.admin_url("/readyz");
        async move { http.get(url).send().await.unwrap().status() == 503 }
    })
    .await;
    let forwarded = upstream.request_count();
    relay.refuse(false);
    eventually("/readyz turning ready again", || {
        let http = http.clone();
        let url = tg.admin_url("/readyz");
        async move { http.get(url).send().await.unwrap().status() == 200 }
    })
    .await;
    // Pooled connections that died with the outage are found dead on their next use and dropped: a few
    // requests may still be refused (503, recorded when possible) before every one passes again.
    let mut refused = 0;
    let mut passed_in_a_row = 0;
    while passed_in_a_row < 3 {
        let r = pay().await.unwrap();
        match r.status().as_u16() {
            200 => passed_in_a_row += 1,
            503 => {
                refused += 1;
                passed_in_a_row = 0;
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["tollgate"]["code"], "store_unavailable", "{body}");
            }
            other => panic!("unexpected {other}"),
        }
        assert!(refused <= 20, "tollgate did not recover:\n{}", tg.log());
    }
    assert!(upstream.request_count() >= forwarded + 3);
    // Every forwarded request has exactly one allow record; the outage's request forwarded nothing.
    let allows: i64 = sqlx::query_scalar("SELECT count(*) FROM decisions WHERE outcome = 'allow'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(allows as usize, upstream.request_count());
    let (ok, out, err) = tg.cli(&["audit", "verify"]).await.unwrap();
    assert!(ok && !out.contains("BROKEN"), "{out}{err}");
    let books = Books::postgres(db.url()).await.unwrap();
    books.settled(upstream.request_count()).await.unwrap();
    books.check(upstream.request_count()).await.unwrap();
}

/// The agent disconnects while its decision is being committed (the commit's acknowledgement is slow): the
/// record is kept, but the call is not made for an agent that left (it would likely retry, and the provider
/// act twice). The money goes back and the outcome row says so.
#[tokio::test]
async fn an_agent_that_hangs_up_during_the_audit_wait_is_recorded_and_not_forwarded() {
    use tokio::io::AsyncWriteExt as _;
    use tollgate_tests::faultrelay::FaultRelay;
    let db = TestDatabase::create().await.unwrap();
    let relay = FaultRelay::start(db.server_target().unwrap())
        .await
        .unwrap();
    let upstream = Upstream::builder().start().await.unwrap();
    let (tg, _policy, key) = hold_gate(&db.url_via(relay.addr()), &upstream.url(), |b| {
        b.audit("writers = 1")
    })
    .await;
    // The decision batch carries the run id: its commit is acknowledged 1.5 s late.
    relay.delay_reply_after(b"audit-wait-run", std::time::Duration::from_millis(1500));
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{key}:"));
    let body = "amount=2500&currency=usd";
    let head = format!(
        "POST /stripe/v1/payment_intents HTTP/1.1\r\nHost: t\r\nAuthorization: Basic {auth}\r\n\
         Tollgate-Run: audit-wait-run\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(tg.proxy_addr())
        .await
        .unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    drop(stream);
    let books = Books::postgres(db.url()).await.unwrap();
    eventually("the outcome row", || async {
        books.outcomes().await.unwrap().len() == 1
    })
    .await;
    let decisions = books.decisions().await.unwrap();
    assert_eq!(decisions.len(), 1);
    assert_eq!(decisions[0].outcome, "allow");
    let outcome = books.outcomes().await.unwrap().remove(0);
    assert_eq!(outcome.decision_id, decisions[0].id);
    assert_eq!(
        outcome.error.as_deref(),
        Some("not_forwarded; agent_disconnected")
    );
    assert_eq!(outcome.upstream_status, None);
    let reservation = books.reservations().await.unwrap().remove(0);
    assert_eq!(reservation.state, "released", "nothing was bought");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(upstream.request_count(), 0, "not forwarded");
    books.check(0).await.unwrap();
    // The agent's retry is judged and forwarded as usual.
    let r = reqwest::Client::new()
        .post(tg.url("/stripe/v1/payment_intents"))
        .basic_auth(&key, Some(""))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    books.settled(2).await.unwrap();
    books.check(1).await.unwrap();
}
