//! Faults on the database's side, on Postgres (a relay between tollgate and the server injects them): a
//! commit whose acknowledgement is lost, and an outage with connections cut and new ones refused. tollgate
//! recovers without a restart of its own, and the books' invariants (`Books::check`) hold at the end. The
//! agent's and the provider's faults run on both stores in `agent_faults.rs`.

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Row;
use tollgate_tests::books::Books;
use tollgate_tests::scenario::{HOLD_POLICY, eventually};
use tollgate_tests::tollgate::{Tollgate, TollgateBuilder, policy_dir_with};
use tollgate_tests::{RestartableCluster, TestDatabase, Upstream};

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
    relay.delay_reply_after(b"audit-wait-run", Duration::from_millis(1500));
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
    tokio::time::sleep(Duration::from_millis(500)).await;
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
    tokio::time::sleep(Duration::from_millis(300)).await;
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

/// One Stripe payment of one cent, answered within the client's timeout: its status and, for a refusal, its
/// `tollgate.code`. An error means no answer in time (or a broken connection): an agent left hanging.
async fn pay_a_cent(
    http: &reqwest::Client,
    url: &str,
    key: &str,
) -> Result<(u16, Option<String>), String> {
    let response = http
        .post(url)
        .basic_auth(key, Some(""))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("amount=1&currency=usd")
        .send()
        .await
        .map_err(|error| format!("{error:?}"))?;
    let status = response.status().as_u16();
    let body: Value = response
        .json()
        .await
        .map_err(|error| format!("{status}: unreadable body: {error:?}"))?;
    let code = body["tollgate"]["code"].as_str().map(str::to_string);
    Ok((status, code))
}

/// Postgres itself restarts under load (`pg_ctl restart -m fast` on the test's own cluster): every pooled
/// connection is cut at once, and new ones are refused until the server is back. The requests caught in the
/// gap are answered or refused (503 `store_unavailable`), none hangs; tollgate turns ready again by itself,
/// without a restart of its own; and the books stay exact: one allow per request the provider received, at
/// most one outcome per decision, every reservation settled or flagged, and each window's spend the sum of
/// its reservations.
///
/// Found by this test: a settlement whose store call the restart cut was only logged, leaving the reservation
/// `reserved` and unflagged for good (a 200 never committed; a failed allow's release never done). Failed
/// settlements are now retried in the background until the store is back (and, past that, flagged by the
/// sweep); the failure message lists any reservation left behind and which case it is.
#[tokio::test]
async fn tollgate_recovers_from_a_postgres_restart_under_load_and_the_books_stay_exact() {
    let cluster = RestartableCluster::start().await.unwrap();
    let upstream = Upstream::builder()
        .json_body(json!({"id": "pi_1"}))
        .start()
        .await
        .unwrap();
    let (tg, _policy, key) = hold_gate(cluster.url(), &upstream.url(), |b| b).await;
    // Every answer comes within this bound, or the test fails: a restart must not leave an agent hanging.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = tg.url("/stripe/v1/payment_intents");

    // Four agents' connections paying for six seconds, paced, so the count stays bounded (hundreds); a cent
    // each keeps them all under HOLD_POLICY's $100 cap. Postgres restarts two seconds in.
    const LOAD: Duration = Duration::from_secs(6);
    let started = std::time::Instant::now();
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (http, url, key) = (http.clone(), url.clone(), key.clone());
        load.spawn(async move {
            let mut answers = Vec::new();
            while started.elapsed() < LOAD {
                answers.push(pay_a_cent(&http, &url, &key).await);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            answers
        });
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let restart_began = started.elapsed();
    cluster.restart().await.unwrap();
    let restart_took = started.elapsed() - restart_began;
    let mut answers = Vec::new();
    while let Some(task) = load.join_next().await {
        answers.extend(task.unwrap());
    }
    // For failure messages: tollgate's warnings and errors (its log has a line per request) and Postgres's log.
    let log = || {
        let log = tg.log();
        let troubles: Vec<&str> = log
            .lines()
            .filter(|line| line.contains("WARN") || line.contains("ERROR"))
            .collect();
        format!(
            "tollgate's warnings and errors:\n{}\nPostgres's log:\n{}",
            troubles.join("\n"),
            cluster.log()
        )
    };

    // Every agent got an answer: forwarded (200) or refused because the store was away.
    let hung: Vec<&String> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(
        hung.is_empty(),
        "requests without an answer: {hung:?}\n{}",
        log()
    );
    let mut forwarded = 0;
    let mut refused = 0;
    let mut other = Vec::new();
    for answer in answers.iter().flatten() {
        match answer {
            (200, _) => forwarded += 1,
            (503, Some(code)) if code == "store_unavailable" => refused += 1,
            unexpected => other.push(unexpected.clone()),
        }
    }
    assert!(other.is_empty(), "unexpected answers: {other:?}\n{}", log());
    eprintln!(
        "under load: {} requests, {forwarded} forwarded, {refused} refused; the restart took {restart_took:?}",
        answers.len()
    );
    assert!(forwarded > 0);

    // tollgate recovers by itself: ready again, then payments pass again (a few may still be refused while
    // the pool finds its dead connections).
    eventually("/readyz turning ready again", || {
        let http = http.clone();
        let url = tg.admin_url("/readyz");
        async move { http.get(url).send().await.unwrap().status() == 200 }
    })
    .await;
    let mut refused_after = 0;
    let mut passed_in_a_row = 0;
    while passed_in_a_row < 3 {
        match pay_a_cent(&http, &url, &key).await {
            Ok((200, _)) => {
                forwarded += 1;
                passed_in_a_row += 1;
            }
            Ok((503, Some(code))) if code == "store_unavailable" => {
                refused_after += 1;
                passed_in_a_row = 0;
            }
            unexpected => panic!(
                "unexpected answer after the restart: {unexpected:?}\n{}",
                log()
            ),
        }
        assert!(refused_after <= 20, "tollgate did not recover:\n{}", log());
    }

    // The books, read from the database itself. Every invariant is checked, and every one that does not hold
    // is reported together.
    let pool = cluster.pool().await.unwrap();
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    // Settlement and outcome rows finish after the answers: wait (bounded) until no reservation is left
    // unsettled; one that still is after 10 s stays so.
    let unsettled_sql =
        "SELECT count(*) FROM spend_reservations WHERE state = 'reserved' AND NOT flagged";
    for _ in 0..100 {
        if count(unsettled_sql).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reservations: Vec<(String, bool, i64)> = sqlx::query(
        "SELECT state, flagged, count(*) FROM spend_reservations GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect();
    let decisions: Vec<(String, Option<String>, i64)> =
        sqlx::query("SELECT outcome, code, count(*) FROM decisions GROUP BY 1, 2 ORDER BY 1, 2")
            .fetch_all(&pool)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
    let outcomes = count("SELECT count(*) FROM decision_outcomes").await;
    let received = upstream.request_count();
    let books = format!(
        "the provider received {received}; agents got {forwarded} forwarded and {} refused; \
         reservations (state, flagged, count): {reservations:?}; decisions (outcome, code, count): \
         {decisions:?}; {outcomes} outcome rows",
        refused + refused_after,
    );
    eprintln!("{books}");
    let mut broken = Vec::new();

    // Every reservation is settled (committed or released) or flagged for an operator; one left reserved
    // and unflagged is counted against the cap and shown to no one.
    let unsettled: Vec<String> = sqlx::query(
        "SELECT r.decision_id, r.cents, d.outcome, o.upstream_status
         FROM spend_reservations r
         LEFT JOIN decisions d ON d.id = r.decision_id
         LEFT JOIN decision_outcomes o ON o.decision_id = r.decision_id
         WHERE r.state = 'reserved' AND NOT r.flagged ORDER BY r.created_at",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .iter()
    .map(|r| {
        let (id, cents, outcome, status): (uuid::Uuid, i64, Option<String>, Option<i32>) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        match (outcome, status) {
            (Some(outcome), Some(status)) => format!(
                "{id} ({cents} ¢): decision '{outcome}', forwarded, the provider answered {status}: \
                 spent, but never committed"
            ),
            (Some(outcome), None) => format!("{id} ({cents} ¢): decision '{outcome}', no outcome"),
            (None, _) => format!(
                "{id} ({cents} ¢): no decision with this id (an allow that was not recorded, refused, \
                 and whose release failed)"
            ),
        }
    })
    .collect();
    if !unsettled.is_empty() {
        broken.push(format!(
            "{} reservation(s) left 'reserved' and unflagged after 10 s:\n    {}",
            unsettled.len(),
            unsettled.join("\n    ")
        ));
    }
    // Every request the provider received reached its agent, and has exactly one allow record.
    if forwarded != received {
        broken.push(format!(
            "agents got {forwarded} forwarded answers for {received} requests the provider received"
        ));
    }
    let allows = count("SELECT count(*) FROM decisions WHERE outcome = 'allow'").await;
    if allows as usize != received {
        broken.push(format!(
            "{allows} allow decisions for {received} requests the provider received"
        ));
    }
    // Each of them was charged exactly once: its reservation committed (the provider answered 2xx).
    let committed = count(
        "SELECT count(*) FROM spend_reservations r JOIN decisions d ON d.id = r.decision_id
         WHERE r.state = 'committed' AND d.outcome = 'allow'",
    )
    .await;
    if committed as usize != received {
        broken.push(format!(
            "{committed} committed charges of allowed requests for {received} payments the provider \
             received (and accepted)"
        ));
    }
    // At most one outcome per decision (the table's key), and none without its decision.
    let repeated = count(
        "SELECT count(*) FROM (SELECT decision_id FROM decision_outcomes
         GROUP BY decision_id HAVING count(*) > 1) AS repeated",
    )
    .await;
    let orphans = count(
        "SELECT count(*) FROM decision_outcomes o
         WHERE NOT EXISTS (SELECT 1 FROM decisions d WHERE d.id = o.decision_id)",
    )
    .await;
    if repeated != 0 || orphans != 0 {
        broken.push(format!(
            "{repeated} decisions with several outcomes, {orphans} outcomes without a decision"
        ));
    }
    // Each window's spend is exactly the sum of its reservations: committed and still reserved.
    let windows: Vec<(String, i64, i64, i64, i64)> = sqlx::query(
        "SELECT w.budget, w.committed_cents, w.reserved_cents,
                COALESCE(sum(r.cents) FILTER (WHERE r.state = 'committed'), 0)::bigint,
                COALESCE(sum(r.cents) FILTER (WHERE r.state = 'reserved'), 0)::bigint
         FROM spend_windows w
         LEFT JOIN spend_reservations r
           ON (r.budget, r.subject, r.period) = (w.budget, w.subject, w.period)
         GROUP BY w.budget, w.subject, w.period, w.committed_cents, w.reserved_cents",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
    .collect();
    assert_eq!(windows.len(), 1, "one budget window: {windows:?}");
    for (budget, committed_cents, reserved_cents, committed_sum, reserved_sum) in &windows {
        if (committed_cents, reserved_cents) != (committed_sum, reserved_sum) {
            broken.push(format!(
                "window {budget}: {committed_cents} ¢ committed and {reserved_cents} ¢ reserved, but its \
                 reservations sum to {committed_sum} ¢ committed and {reserved_sum} ¢ reserved"
            ));
        }
    }
    // The money the provider took (a cent per payment) is the window's committed spend.
    if windows[0].1 as usize != received {
        broken.push(format!(
            "the window's committed spend is {} ¢ for {received} one-cent payments the provider accepted",
            windows[0].1
        ));
    }
    // The chains verify.
    let (ok, out, err) = tg.cli(&["audit", "verify"]).await.unwrap();
    if !ok || out.contains("BROKEN") {
        broken.push(format!("audit verify: {out}{err}"));
    }
    assert!(
        broken.is_empty(),
        "after a Postgres restart under load the books are off:\n  - {}\n{books}\n{}",
        broken.join("\n  - "),
        log()
    );
    eprintln!("whole scenario: {:?}", started.elapsed());
}

/// Found by review: a database administrator deleted the newest records of a running writer's chain (a
/// forwarded payment among them) and cut its connection; the writer, recovering, re-read its head from the
/// shortened table and went on from it, so its next checkpoint certified the cut chain. A writer now accepts
/// only the head it knew or the one its failed batch would have made; anything else is checkpointed as it
/// knew it (so `verify` shows the missing tail) and the writer goes on as a new chain.
#[tokio::test]
async fn a_writer_does_not_certify_a_chain_shortened_behind_its_back() {
    use tollgate_tests::faultrelay::FaultRelay;
    let db = TestDatabase::create().await.unwrap();
    let pool = db.pool().await.unwrap();
    let relay = FaultRelay::start(db.server_target().unwrap())
        .await
        .unwrap();
    let upstream = Upstream::builder().start().await.unwrap();
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
            .body("amount=777&currency=usd")
            .send()
    };
    for _ in 0..3 {
        assert_eq!(pay("before").await.unwrap().status(), 200);
    }
    let writer: uuid::Uuid = sqlx::query_scalar("SELECT writer_id FROM decisions LIMIT 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    // The cover-up: the newest record goes, with its outcome, triggers off and on again.
    let mut tx = pool.begin().await.unwrap();
    for sql in [
        "ALTER TABLE decisions DISABLE TRIGGER decisions_append_only",
        "ALTER TABLE decision_outcomes DISABLE TRIGGER decision_outcomes_append_only",
    ] {
        sqlx::query(sql).execute(&mut *tx).await.unwrap();
    }
    sqlx::query(
        "DELETE FROM decision_outcomes WHERE decision_id IN (SELECT id FROM decisions WHERE seq = 3)",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query("DELETE FROM decisions WHERE seq = 3")
        .execute(&mut *tx)
        .await
        .unwrap();
    for sql in [
        "ALTER TABLE decisions ENABLE TRIGGER decisions_append_only",
        "ALTER TABLE decision_outcomes ENABLE TRIGGER decision_outcomes_append_only",
    ] {
        sqlx::query(sql).execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
    // The writer's connection is cut: its next batch fails, and it recovers.
    relay.reset_all();
    let mut passed = 0;
    for _ in 0..20 {
        if pay("after").await.unwrap().status() == 200 {
            passed += 1;
            if passed == 2 {
                break;
            }
        }
    }
    assert_eq!(passed, 2, "tollgate goes on:\n{}", tg.log());
    assert!(
        tg.log()
            .contains("the chain in the store is not the one this writer wrote"),
        "{}",
        tg.log()
    );
    let (ok, out, err) = tg.cli(&["audit", "verify"]).await.unwrap();
    assert!(!ok, "{out}{err}");
    assert!(
        out.contains(&format!("writer {writer}: 2 records"))
            && out.contains("missing tail")
            && out.contains("shows seq 3, the records end at seq 2"),
        "{out}"
    );
}
