//! Faults on the agent's side: an agent that disconnects while its request is held for a reviewer or while
//! it is being forwarded. Once a request is admitted, its lifecycle finishes whatever the agent does: exactly
//! one decision, the money settled, the approval left usable, and the disconnect in the outcome.

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Row;
use tokio::io::AsyncWriteExt as _;
use tollgate_tests::tollgate::{ADMIN_TOKEN, Tollgate, policy_dir_with};
use tollgate_tests::{TestDatabase, Upstream};

/// Payments above $50 are held for a reviewer for up to 20 s; others are allowed and charged.
const HOLD_POLICY: &str = r#"package tollgate

amount := to_number(input.request.body.amount) if input.action.name == "stripe.payment.create"

charge := {"cents": amount, "budget": "agent-provider-month", "cap_cents": 10000}

decision := {"outcome": "approve", "hold_seconds": 20, "reasons": [{"rule": "spend.single_charge", "message": "above $50"}], "charge": charge} if {
	amount > 5000
} else := {"outcome": "allow", "reasons": [], "charge": charge} if {
	amount >= 0
} else := {"outcome": "allow", "reasons": []}
"#;

/// Sends a Stripe payment on a raw connection and closes it after `after`, without reading the answer.
async fn send_and_hang_up(addr: &str, key: &str, amount: i64, after: Duration) {
    use base64::Engine as _;
    let body = format!("amount={amount}&currency=usd");
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{key}:"));
    let head = format!(
        "POST /stripe/v1/payment_intents HTTP/1.1\r\nHost: t\r\nAuthorization: Basic {auth}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    tokio::time::sleep(after).await;
    drop(stream);
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not happen within 10 s");
}

#[tokio::test]
async fn an_agent_that_hangs_up_during_the_forward_is_still_recorded_and_charged() {
    let db = TestDatabase::create().await.unwrap();
    let pool = db.pool().await.unwrap();
    let upstream = Upstream::builder()
        .json_body(json!({"id": "pi_1"}))
        .delay(Duration::from_millis(1500))
        .start()
        .await
        .unwrap();
    let policy = policy_dir_with(HOLD_POLICY).unwrap();
    let tg = Tollgate::builder(db.url(), &upstream.url())
        .policy_dir(policy.path())
        .start()
        .await
        .unwrap();
    let key = tg.create_agent("buyer", &[]).await.unwrap();
    send_and_hang_up(tg.proxy_addr(), &key, 2000, Duration::from_millis(300)).await;
    eventually("the outcome row", || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM decision_outcomes")
                .fetch_one(&pool)
                .await
                .unwrap()
                == 1
        }
    })
    .await;
    assert_eq!(upstream.request_count(), 1);
    let decisions: Vec<(String, uuid::Uuid)> = sqlx::query("SELECT outcome, id FROM decisions")
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(decisions.len(), 1, "exactly one decision");
    assert_eq!(decisions[0].0, "allow");
    let (status, error): (Option<i32>, Option<String>) =
        sqlx::query("SELECT upstream_status, error FROM decision_outcomes WHERE decision_id = $1")
            .bind(decisions[0].1)
            .fetch_one(&pool)
            .await
            .map(|r| (r.get(0), r.get(1)))
            .unwrap();
    assert_eq!(status, Some(200));
    assert_eq!(error.as_deref(), Some("agent_disconnected"));
    let state: String =
        sqlx::query_scalar("SELECT state FROM spend_reservations WHERE decision_id = $1")
            .bind(decisions[0].1)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        state, "committed",
        "the provider answered 2xx: the money is spent"
    );
}

#[tokio::test]
async fn an_agent_that_hangs_up_while_held_leaves_a_record_and_a_usable_approval() {
    let db = TestDatabase::create().await.unwrap();
    let pool = db.pool().await.unwrap();
    let upstream = Upstream::builder().start().await.unwrap();
    let policy = policy_dir_with(HOLD_POLICY).unwrap();
    let tg = Tollgate::builder(db.url(), &upstream.url())
        .policy_dir(policy.path())
        .start()
        .await
        .unwrap();
    let key = tg.create_agent("buyer", &[]).await.unwrap();
    send_and_hang_up(tg.proxy_addr(), &key, 7500, Duration::from_millis(600)).await;
    // The hold ends with the connection, well before its 20 s: the decision is recorded as 'approve'.
    eventually("the held request's record", || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM decisions")
                .fetch_one(&pool)
                .await
                .unwrap()
                == 1
        }
    })
    .await;
    let row = sqlx::query(
        "SELECT d.outcome, d.id = a.requested_by_decision, a.status, a.id
         FROM decisions d, approvals a",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let (outcome, linked, status, approval): (String, bool, String, uuid::Uuid) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(outcome, "approve");
    assert!(linked, "the approval points at a decision that exists");
    assert_eq!(status, "pending");
    assert_eq!(upstream.request_count(), 0);

    // A reviewer approves later; nothing is forwarded for the agent that left, and its retry passes once.
    let http = reqwest::Client::new();
    let approved = http
        .post(tg.admin_url(&format!("/api/approvals/{approval}/approve")))
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
        .header("tollgate-approval", approval.to_string())
        .body("amount=7500&currency=usd")
        .send()
        .await
        .unwrap();
    let status = retry.status().as_u16();
    let body: Value = retry.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 200, "{body}");
    assert_eq!(upstream.request_count(), 1);
}
