//! Faults on the agent's and the provider's side, on both stores: an agent that disconnects while its request
//! is held for a reviewer or being forwarded, slow and trickling clients, one agent flooding the log or
//! holding many requests, and a provider that breaks the exchange, times out or fails. Once a request is
//! admitted, its lifecycle finishes whatever the agent does. Every scenario ends with the books' invariants
//! (`Books::check`): one allow decision per request the upstream received, at most one outcome per decision,
//! every reservation committed, released or flagged, and spend equal to the committed charges.
//!
//! The database's own faults (lost acknowledgements, outages, restarts) need a relay in front of a Postgres
//! server and are in `faults.rs`.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tollgate_tests::Upstream;
use tollgate_tests::scenario::{HoldGate, StoreKind, eventually, hold_gate_on, send_and_hang_up};
use tollgate_tests::tollgate::ADMIN_TOKEN;

/// Runs one scenario as two tests, one per store.
macro_rules! on_both_stores {
    ($($scenario:ident),* $(,)?) => {
        mod on_postgres {
            $(#[tokio::test]
            async fn $scenario() {
                super::$scenario(tollgate_tests::scenario::StoreKind::Postgres).await;
            })*
        }
        mod on_sqlite {
            $(#[tokio::test]
            async fn $scenario() {
                super::$scenario(tollgate_tests::scenario::StoreKind::Embedded).await;
            })*
        }
    };
}

on_both_stores!(
    an_agent_that_hangs_up_before_the_decision_leaves_one_refusal,
    an_agent_that_hangs_up_during_the_forward_is_still_recorded_and_charged,
    an_agent_that_hangs_up_while_held_leaves_a_record_and_a_usable_approval,
    slow_heads_and_bodies_are_cut_off_while_others_are_served,
    idle_http2_connections_are_closed_too,
    an_agents_early_refusals_are_its_own_and_hold_no_secret_of_tollgate,
    the_total_time_before_the_forward_is_bounded,
    an_agent_flooding_the_log_is_slowed_and_others_are_not,
    an_upstream_that_breaks_after_the_request_leaves_the_money_flagged,
    a_same_key_retry_settles_the_attempt_whose_answer_was_lost,
    one_agent_cannot_hold_more_than_its_share,
);

/// A fault relay in front of the stand-in upstream.
async fn relay_to(upstream: &Upstream) -> tollgate_tests::faultrelay::FaultRelay {
    use tollgate_tests::faultrelay::{FaultRelay, Target};
    let addr: std::net::SocketAddr = upstream
        .url()
        .trim_start_matches("http://")
        .parse()
        .expect("the stand-in's address");
    FaultRelay::start(Target::Tcp(addr)).await.expect("relay")
}

fn basic(key: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
}

/// A raw payment whose head promises a 100-byte body and sends only `amount=1`.
fn trickled_head(key: &str) -> String {
    format!(
        "POST /stripe/v1/payment_intents HTTP/1.1\r\nHost: t\r\nAuthorization: Basic {}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\namount=1",
        basic(key)
    )
}

/// The agent closes its connection halfway through the body: nothing is judged or forwarded, and the
/// request still leaves exactly one record (a refusal).
async fn an_agent_that_hangs_up_before_the_decision_leaves_one_refusal(store: StoreKind) {
    let upstream = Upstream::builder().start().await.unwrap();
    let HoldGate {
        tg,
        key,
        books,
        keep: _keep,
    } = hold_gate_on(store, &upstream.url(), |b| b).await.unwrap();
    let mut stream = tokio::net::TcpStream::connect(tg.proxy_addr())
        .await
        .unwrap();
    stream
        .write_all(trickled_head(&key).as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(stream);
    eventually("the refusal record", || async {
        books.decisions().await.unwrap().len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let decisions = books.decisions().await.unwrap();
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    assert_eq!(decisions[0].outcome, "refused");
    assert_eq!(decisions[0].agent_name.as_deref(), Some("buyer"));
    assert_eq!(upstream.request_count(), 0);
    books.check(0).await.unwrap();
}

async fn an_agent_that_hangs_up_during_the_forward_is_still_recorded_and_charged(store: StoreKind) {
    let upstream = Upstream::builder()
        .json_body(json!({"id": "pi_1"}))
        .delay(Duration::from_millis(1500))
        .start()
        .await
        .unwrap();
    let HoldGate {
        tg,
        key,
        books,
        keep: _keep,
    } = hold_gate_on(store, &upstream.url(), |b| b).await.unwrap();
    send_and_hang_up(tg.proxy_addr(), &key, 2000, Duration::from_millis(300)).await;
    books.settled(1).await.unwrap();
    assert_eq!(upstream.request_count(), 1);
    let decisions = books.decisions().await.unwrap();
    assert_eq!(decisions.len(), 1, "exactly one decision");
    assert_eq!(decisions[0].outcome, "allow");
    let outcomes = books.outcomes().await.unwrap();
    assert_eq!(outcomes[0].decision_id, decisions[0].id);
    assert_eq!(outcomes[0].upstream_status, Some(200));
    assert_eq!(outcomes[0].error.as_deref(), Some("agent_disconnected"));
    let reservations = books.reservations().await.unwrap();
    assert_eq!(
        reservations[0].state, "committed",
        "the provider answered 2xx: the money is spent"
    );
    books.check(upstream.request_count()).await.unwrap();
}

async fn an_agent_that_hangs_up_while_held_leaves_a_record_and_a_usable_approval(store: StoreKind) {
    let upstream = Upstream::builder().start().await.unwrap();
    let HoldGate {
        tg,
        key,
        books,
        keep: _keep,
    } = hold_gate_on(store, &upstream.url(), |b| b).await.unwrap();
    send_and_hang_up(tg.proxy_addr(), &key, 7500, Duration::from_millis(600)).await;
    // The hold ends with the connection, well before its 20 s: the decision is recorded as 'approve'.
    eventually("the held request's record", || async {
        books.decisions().await.unwrap().len() == 1
    })
    .await;
    let decision = books.decisions().await.unwrap().remove(0);
    let approval = books.approvals().await.unwrap().remove(0);
    assert_eq!(decision.outcome, "approve");
    assert_eq!(
        approval.requested_by_decision, decision.id,
        "the approval points at a decision that exists"
    );
    assert_eq!(approval.status, "pending");
    assert_eq!(upstream.request_count(), 0);

    // A reviewer approves later; nothing is forwarded for the agent that left, and its retry passes once.
    let http = reqwest::Client::new();
    let approved = http
        .post(tg.admin_url(&format!("/api/approvals/{}/approve", approval.id)))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"by": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(approved.status(), 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(upstream.request_count(), 0);
    let retry = http
        .post(tg.url("/stripe/v1/payment_intents"))
        .basic_auth(&key, Some(""))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("tollgate-approval", &approval.id)
        .body("amount=7500&currency=usd")
        .send()
        .await
        .unwrap();
    let status = retry.status().as_u16();
    let body: Value = retry.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 200, "{body}");
    assert_eq!(upstream.request_count(), 1);
    books.settled(1).await.unwrap();
    books.check(upstream.request_count()).await.unwrap();
}

/// Confirmed: no timeout on reading request heads (half-sent requests stayed open for ever) or bodies
/// (trickling POSTs held their connections). Heads and bodies now have deadlines; a well-behaved agent
/// beside them keeps being served, and a trickled body from an identified agent is refused and recorded.
async fn slow_heads_and_bodies_are_cut_off_while_others_are_served(store: StoreKind) {
    let upstream = Upstream::builder().start().await.unwrap();
    let HoldGate {
        tg,
        key,
        books,
        keep: _keep,
    } = hold_gate_on(store, &upstream.url(), |b| {
        b.server("header_timeout_ms = 700")
            .server("body_timeout_ms = 1200")
    })
    .await
    .unwrap();
    let addr = tg.proxy_addr().to_string();

    // 60 heads that never end, 20 bodies that never end (from an identified agent).
    let mut slow = Vec::new();
    for i in 0..80 {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = if i < 60 {
            "POST /stripe/v1/payment_intents HTTP/1.1\r\nHost: t\r\n".to_string()
        } else {
            trickled_head(&key)
        };
        stream.write_all(head.as_bytes()).await.unwrap();
        slow.push(stream);
    }
    // Meanwhile an ordinary agent is served as usual.
    let http = reqwest::Client::new();
    for _ in 0..5 {
        let r = http
            .post(tg.url("/stripe/v1/payment_intents"))
            .basic_auth(&key, Some(""))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("amount=100&currency=usd")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // Every slow connection is answered or closed within its deadline (plus slack), none held open.
    let started = std::time::Instant::now();
    let mut timed_out_bodies = 0;
    for (i, mut stream) in slow.into_iter().enumerate() {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
        assert!(
            read.is_ok(),
            "slow connection {i} was still open after {:?}",
            started.elapsed()
        );
        let text = String::from_utf8_lossy(&buf);
        if i >= 60 {
            assert!(text.starts_with("HTTP/1.1 408"), "{text}");
            assert!(text.contains("request_timeout"), "{text}");
            timed_out_bodies += 1;
        }
    }
    assert_eq!(timed_out_bodies, 20);
    // The trickled bodies came from an identified agent: each is a recorded refusal.
    eventually("20 recorded timeouts", || async {
        books.refusals("request_timeout", None).await.unwrap() == 20
    })
    .await;
    assert_eq!(upstream.request_count(), 5);
    books.settled(5).await.unwrap();
    books.check(upstream.request_count()).await.unwrap();
}

/// Reading and judging a request are bounded as a whole (`server.request_timeout_ms`), whatever the
/// bounds of each part: a body trickled within its own (long) deadline is still cut off, refused and
/// recorded.
async fn the_total_time_before_the_forward_is_bounded(store: StoreKind) {
    let upstream = Upstream::builder().start().await.unwrap();
    let HoldGate {
        tg,
        key,
        books,
        keep: _keep,
    } = hold_gate_on(store, &upstream.url(), |b| {
        b.server("body_timeout_ms = 20000")
            .server("request_timeout_ms = 800")
    })
    .await
    .unwrap();
    let mut stream = tokio::net::TcpStream::connect(tg.proxy_addr())
        .await
        .unwrap();
    stream
        .write_all(trickled_head(&key).as_bytes())
        .await
        .unwrap();
    let started = std::time::Instant::now();
    // One more byte every 200 ms: never idle long, never done.
    let trickle = async {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if stream.write_all(b"0").await.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), trickle).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("server.request_timeout_ms"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(10));
    eventually("the recorded timeout", || async {
        books
            .refusals("request_timeout", Some("buyer"))
            .await
            .unwrap()
            == 1
    })
    .await;
    assert_eq!(upstream.request_count(), 0);
    books.check(0).await.unwrap();
}

/// One agent cannot fill the append-only log: large bodies are stored bounded, and past its rate of stored
/// bytes the agent is refused `429 rate_limited` (recorded, with Retry-After) before its body is judged,
/// while another agent is served as usual.
async fn an_agent_flooding_the_log_is_slowed_and_others_are_not(store: StoreKind) {
    let upstream = Upstream::builder().start().await.unwrap();
    let HoldGate {
        tg,
        key,
        books,
        keep: _keep,
    } = hold_gate_on(store, &upstream.url(), |b| {
        b.audit("max_stored_bytes_per_agent_per_minute = 1048576")
    })
    .await
    .unwrap();
    let other = tg.create_agent("other", &[]).await.unwrap();
    // ~60 KB of fields: under the 64 KiB stored-input limit, so each record stores nearly all of it.
    let mut big = String::from("amount=1&currency=usd");
    for i in 0..60 {
        big.push_str(&format!("&metadata[k{i}]={}", "v".repeat(1000)));
    }
    let http = reqwest::Client::new();
    let pay = |key: &str, body: String| {
        http.post(tg.url("/stripe/v1/payment_intents"))
            .basic_auth(key, Some(""))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let mut passed = 0;
    let mut limited = None;
    for _ in 0..40 {
        let r = pay(&key, big.clone()).await.unwrap();
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status(), 200);
        passed += 1;
    }
    let limited = limited.expect("the flood was never slowed");
    assert!((15..=19).contains(&passed), "{passed} passed");
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["tollgate"]["code"], "rate_limited", "{body}");
    // Another agent is not slowed.
    let r = pay(&other, "amount=1&currency=usd".to_string())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    eventually("the recorded refusal", || async {
        books.refusals("rate_limited", Some("buyer")).await.unwrap() == 1
    })
    .await;
    let stored: i64 = books
        .decisions()
        .await
        .unwrap()
        .iter()
        .filter(|d| d.agent_name.as_deref() == Some("buyer"))
        .map(|d| d.input_bytes)
        .sum();
    assert!(
        stored <= 1_048_576 + 70_000,
        "{stored} bytes stored for the flooding agent"
    );
    assert_eq!(upstream.request_count(), passed + 1);
    books.settled(passed + 1).await.unwrap();
    books.check(upstream.request_count()).await.unwrap();
}

/// The provider's side: the connection breaks after the request reached it, it answers too late, or it
/// answers 5xx. The request may have been acted on in each case, so the money stays reserved and flagged
/// (for an operator to settle), and the decision has exactly one outcome that says what happened.
async fn an_upstream_that_breaks_after_the_request_leaves_the_money_flagged(store: StoreKind) {
    let upstream = Upstream::builder()
        .json_body(json!({"id": "pi_1"}))
        .start()
        .await
        .unwrap();
    let relay = relay_to(&upstream).await;
    let HoldGate {
        tg,
        key,
        books,
        keep: _keep,
    } = hold_gate_on(store, &format!("http://{}", relay.addr()), |b| b)
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let pay = |cents: i64| {
        http.post(tg.url("/stripe/v1/payment_intents"))
            .basic_auth(&key, Some(""))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("amount={cents}&currency=usd"))
            .send()
    };
    assert_eq!(pay(100).await.unwrap().status(), 200);
    // The request reaches the provider, which acts on it; its answer is lost with the connection.
    relay.swallow_reply_after(b"amount=2300");
    let broken = pay(2300).await.unwrap();
    assert_eq!(relay.swallowed(), 1);
    assert_eq!(broken.status(), 502);
    assert_eq!(
        broken
            .headers()
            .get("x-should-retry")
            .map(|v| v.to_str().unwrap()),
        Some("false"),
        "SDKs must not retry what may have been done"
    );
    assert_eq!(upstream.request_count(), 2, "the provider did receive it");
    books.settled(2).await.unwrap();
    let reservations = books.reservations().await.unwrap();
    let held = reservations.iter().find(|r| r.cents == 2300).unwrap();
    assert_eq!((held.state.as_str(), held.flagged), ("reserved", true));
    let outcome = books
        .outcomes()
        .await
        .unwrap()
        .into_iter()
        .find(|o| o.decision_id == held.decision_id)
        .unwrap();
    assert_eq!(outcome.error.as_deref(), Some("io"));
    // Spend counts it until an operator settles it.
    let window = books
        .windows()
        .await
        .unwrap()
        .into_iter()
        .find(|w| w.budget == "agent-provider-month")
        .unwrap();
    assert_eq!((window.committed_cents, window.reserved_cents), (100, 2300));
    books.check(upstream.request_count()).await.unwrap();
}

/// Found by review: one agent key could open any number of slow requests, each buffering up to the body
/// limit. Each agent now has a bounded number of requests in flight; past it, it is refused (and recorded)
/// while other agents are served.
async fn one_agent_cannot_hold_more_than_its_share(store: StoreKind) {
    let upstream = Upstream::builder().start().await.unwrap();
    let HoldGate {
        tg,
        key,
        books,
        keep: _keep,
    } = hold_gate_on(store, &upstream.url(), |b| {
        b.server("max_requests_per_agent = 4")
            .server("body_timeout_ms = 3000")
    })
    .await
    .unwrap();
    let other = tg.create_agent("other", &[]).await.unwrap();
    let mut slow = Vec::new();
    for _ in 0..10 {
        let mut stream = tokio::net::TcpStream::connect(tg.proxy_addr())
            .await
            .unwrap();
        stream
            .write_all(trickled_head(&key).as_bytes())
            .await
            .unwrap();
        slow.push(stream);
    }
    // Six of the ten are refused at once; the other agent is served meanwhile.
    let r = reqwest::Client::new()
        .post(tg.url("/stripe/v1/payment_intents"))
        .basic_auth(&other, Some(""))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("amount=100&currency=usd")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut statuses = Vec::new();
    for mut stream in slow {
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(6), stream.read_to_end(&mut buf))
            .await
            .expect("answered or closed")
            .unwrap();
        let text = String::from_utf8_lossy(&buf).to_string();
        statuses.push(text.split_whitespace().nth(1).unwrap_or("-").to_string());
    }
    statuses.sort();
    assert_eq!(
        statuses,
        [
            "408", "408", "408", "408", "503", "503", "503", "503", "503", "503"
        ]
    );
    eventually("the recorded refusals", || async {
        books.refusals("overloaded", Some("buyer")).await.unwrap() == 6
    })
    .await;
    books.settled(1).await.unwrap();
    books.check(upstream.request_count()).await.unwrap();
}

/// The answer to a Stripe payment is lost after Stripe acted (flagged: unknown); the SDK retries with the
/// same Idempotency-Key and Stripe replays the saved result. The retry is the same call: it took the flagged
/// reservation over (released with a note naming it), and the replay proves the call ran, so the retry's
/// reservation is committed — charged once, nothing left for an operator.
async fn a_same_key_retry_settles_the_attempt_whose_answer_was_lost(store: StoreKind) {
    let upstream = Upstream::builder()
        .json_body(json!({"object": "payment_intent"}))
        .stripe_idempotency()
        .start()
        .await
        .unwrap();
    let relay = relay_to(&upstream).await;
    let HoldGate {
        tg,
        key,
        books,
        keep: _keep,
    } = hold_gate_on(store, &format!("http://{}", relay.addr()), |b| b)
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let pay = || {
        http.post(tg.url("/stripe/v1/payment_intents"))
            .basic_auth(&key, Some(""))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("idempotency-key", "order-9")
            .body("amount=2300&currency=usd")
            .send()
    };
    relay.swallow_reply_after(b"amount=2300");
    assert_eq!(pay().await.unwrap().status(), 502);
    books.settled(1).await.unwrap();
    let flagged: Vec<_> = books
        .reservations()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.flagged && r.state == "reserved")
        .collect();
    assert_eq!(flagged.len(), 1, "the lost answer leaves the money flagged");
    let retry = pay().await.unwrap();
    assert_eq!(retry.status(), 200);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    books.settled(2).await.unwrap();
    let reservations = books.reservations().await.unwrap();
    let first = reservations
        .iter()
        .find(|r| r.decision_id == flagged[0].decision_id)
        .unwrap();
    assert_eq!(first.state, "released", "taken over by the retry");
    assert_eq!(reservations.len(), 2);
    assert!(
        reservations
            .iter()
            .any(|r| r.decision_id != first.decision_id && r.state == "committed"),
        "the replay proves the call ran: {reservations:?}"
    );
    let window = books.windows().await.unwrap().remove(0);
    assert_eq!(
        (window.committed_cents, window.reserved_cents),
        (2300, 0),
        "charged once, nothing flagged"
    );
    assert_eq!(upstream.request_count(), 2);
    books.check(upstream.request_count()).await.unwrap();
}

/// Found by review: hyper's header timeout is HTTP/1's alone, so an HTTP/2 connection (prior knowledge)
/// that sent its preface, or half a HEADERS frame, stayed open for ever. An agent connection with no request
/// in flight that reads nothing for `header_timeout_ms` is now closed whatever its protocol, while one whose
/// request is in flight is left alone.
async fn idle_http2_connections_are_closed_too(store: StoreKind) {
    let upstream = Upstream::builder()
        .delay(Duration::from_millis(1500))
        .start()
        .await
        .unwrap();
    let HoldGate {
        tg,
        key,
        books,
        keep: _keep,
    } = hold_gate_on(store, &upstream.url(), |b| {
        b.server("header_timeout_ms = 700")
    })
    .await
    .unwrap();
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    const EMPTY_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
    // A HEADERS frame (type 1) announcing 100 bytes of which none follow.
    const HALF_HEADERS: &[u8] = &[0, 0, 100, 1, 0, 0, 0, 0, 1];
    let mut idle = Vec::new();
    for half in [false, true] {
        let mut stream = tokio::net::TcpStream::connect(tg.proxy_addr())
            .await
            .unwrap();
        stream.write_all(PREFACE).await.unwrap();
        stream.write_all(EMPTY_SETTINGS).await.unwrap();
        if half {
            stream.write_all(HALF_HEADERS).await.unwrap();
        }
        idle.push(stream);
    }
    // A connection kept busy with PINGs but no request is idle all the same.
    const PING: &[u8] = &[0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
    let mut pinging = tokio::net::TcpStream::connect(tg.proxy_addr())
        .await
        .unwrap();
    pinging.write_all(PREFACE).await.unwrap();
    pinging.write_all(EMPTY_SETTINGS).await.unwrap();
    let (mut ping_read, mut ping_write) = pinging.into_split();
    let pinger = tokio::spawn(async move {
        for _ in 0..50 {
            if ping_write.write_all(PING).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    });
    // Meanwhile a slow request (the upstream takes 1.5 s, over the idle limit) is not cut off.
    let slow = reqwest::Client::new()
        .get(tg.url("/cloudflare/client/v4/zones"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(slow.status(), 200);
    let started = std::time::Instant::now();
    for mut stream in idle {
        let mut buf = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
        assert!(
            closed.is_ok(),
            "an idle HTTP/2 connection was still open after {:?}",
            started.elapsed()
        );
    }
    let mut buf = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(5), ping_read.read_to_end(&mut buf)).await;
    assert!(
        closed.is_ok(),
        "PINGs kept an HTTP/2 connection with no request open"
    );
    let _ = pinger.await;
    books.settled(1).await.unwrap();
    books.check(upstream.request_count()).await.unwrap();
}

/// Found by review: refusals decided before the key was read (a bad path, a repeated header) were recorded
/// without their agent, charged to the unidentified requests' shared budget; and a secret tollgate itself
/// holds, sent by a misconfigured client, was stored verbatim. The key is now read first, and tollgate's own
/// secrets are scrubbed from every record by value.
async fn an_agents_early_refusals_are_its_own_and_hold_no_secret_of_tollgate(store: StoreKind) {
    use tollgate_tests::tollgate::{ADMIN_TOKEN, CLOUDFLARE_SECRET, STRIPE_SECRET};
    let upstream = Upstream::builder().start().await.unwrap();
    let HoldGate {
        tg,
        key,
        books,
        keep: _keep,
    } = hold_gate_on(store, &upstream.url(), |b| b).await.unwrap();
    let http = reqwest::Client::new();
    let bad_path = http
        .get(tg.url(&format!("/stripe/v1//customers?token={ADMIN_TOKEN}")))
        .basic_auth(&key, Some(""))
        .header("tollgate-run", STRIPE_SECRET)
        .header("tollgate-on-behalf-of", CLOUDFLARE_SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(bad_path.status(), 400);
    let repeated = http
        .get(tg.url("/stripe/v1/customers"))
        .basic_auth(&key, Some(""))
        .header("tollgate-run", "a")
        .header("tollgate-run", "b")
        .send()
        .await
        .unwrap();
    assert_eq!(repeated.status(), 400);
    eventually("both refusals recorded", || async {
        books
            .refusals("request_malformed", Some("buyer"))
            .await
            .unwrap()
            == 2
    })
    .await;
    let dump = books.dump().await.unwrap();
    for secret in [STRIPE_SECRET, CLOUDFLARE_SECRET, ADMIN_TOKEN] {
        assert!(!dump.contains(secret), "a secret tollgate holds was stored");
    }
    assert!(dump.contains("[redacted: a secret tollgate holds]"));
    assert_eq!(upstream.request_count(), 0);
}
