//! Exact spend caps and single-use approvals across replicas: real `tollgate` processes sharing one real
//! Postgres, a recording stand-in upstream.

use std::time::Duration;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};
use sqlx::{PgPool, Row};
use tollgate_tests::sdk::{Reply, StandIn};
use tollgate_tests::tollgate::{ADMIN_TOKEN, Tollgate, TollgateBuilder, policy_dir_with};
use tollgate_tests::{TestDatabase, Upstream};

/// Stripe payment intents are charged their `amount` against a $100 agent-provider-month cap; a single charge
/// above $50 needs a human. Everything else is allowed uncharged.
const SPEND_POLICY: &str = r#"package tollgate

amount := to_number(input.request.body.amount) if input.action.name == "stripe.payment.create"

charge := {"cents": amount, "budget": "agent-provider-month", "cap_cents": 10000} if amount >= 0

decision := {"outcome": "approve", "reasons": [{"rule": "spend.single_charge", "message": "charges above $50 need a human"}], "charge": charge} if {
	amount > 5000
} else := {"outcome": "allow", "reasons": [], "charge": charge} if {
	amount >= 0
} else := {"outcome": "allow", "reasons": []}
"#;

struct Cluster {
    db: TestDatabase,
    pool: PgPool,
    upstream: Upstream,
    replicas: Vec<Tollgate>,
    _policy: tempfile::TempDir,
    http: reqwest::Client,
}

async fn cluster(
    replicas: usize,
    upstream: Upstream,
    configure: fn(TollgateBuilder) -> TollgateBuilder,
) -> Cluster {
    let url = upstream.url();
    cluster_at(replicas, upstream, &url, configure).await
}

/// A cluster whose replicas forward to `url` (`upstream` then only stands by).
async fn cluster_at(
    replicas: usize,
    upstream: Upstream,
    url: &str,
    configure: fn(TollgateBuilder) -> TollgateBuilder,
) -> Cluster {
    let db = TestDatabase::create().await.expect("database");
    let policy = policy_dir_with(SPEND_POLICY).expect("policy dir");
    let mut started = Vec::new();
    for _ in 0..replicas {
        let b = Tollgate::builder(db.url(), url).policy_dir(policy.path());
        started.push(configure(b).start().await.expect("replica starts"));
    }
    let pool = db.pool().await.expect("pool");
    Cluster {
        db,
        pool,
        upstream,
        replicas: started,
        _policy: policy,
        http: reqwest::Client::new(),
    }
}

impl Cluster {
    async fn pay(
        &self,
        replica: usize,
        key: &str,
        amount: i64,
        extra: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut req = self
            .http
            .post(self.replicas[replica].url("/stripe/v1/payment_intents"))
            .basic_auth(key, Some(""))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("amount={amount}&currency=usd"));
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        req.send().await.expect("request")
    }

    /// (committed, reserved) of the agent's Stripe window this month.
    async fn window(&self, agent: &str) -> (i64, i64) {
        let row = sqlx::query(
            "SELECT w.committed_cents, w.reserved_cents FROM spend_windows w, agents a
             WHERE a.name = $1 AND w.subject = 'agent:' || a.id || '/stripe'",
        )
        .bind(agent)
        .fetch_optional(&self.pool)
        .await
        .expect("window query");
        row.map(|r| (r.get(0), r.get(1))).unwrap_or((0, 0))
    }

    async fn admin_post(&self, replica: usize, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(self.replicas[replica].admin_url(path))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .expect("admin request")
    }
}

async fn code_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Fires `n` concurrent $10 charges, alternating over the replicas; returns (allowed, budget_exceeded).
async fn race(c: &Cluster, key: &str, n: usize) -> (usize, usize) {
    let mut tasks = Vec::new();
    for i in 0..n {
        let replica = i % c.replicas.len();
        let url = c.replicas[replica].url("/stripe/v1/payment_intents");
        let http = c.http.clone();
        let key = key.to_string();
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .basic_auth(key, Some(""))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("amount=1000&currency=usd")
                .send()
                .await
                .expect("request");
            code_of(r).await
        }));
    }
    let (mut ok, mut exceeded) = (0, 0);
    for t in tasks {
        let (status, body) = t.await.expect("task");
        match status {
            200 => ok += 1,
            403 if body["tollgate"]["code"] == "budget_exceeded" => exceeded += 1,
            other => panic!("unexpected {other}: {body}"),
        }
    }
    (ok, exceeded)
}

#[tokio::test]
async fn forty_concurrent_ten_dollar_charges_against_a_hundred_dollar_cap_pass_exactly_ten() {
    // One agent fires all forty at once: above its default share of in-flight requests.
    let c = cluster(1, Upstream::builder().start().await.unwrap(), |b| {
        b.server("max_requests_per_agent = 100")
    })
    .await;
    let key = c.replicas[0].create_agent("buyer", &[]).await.unwrap();
    let (ok, exceeded) = race(&c, &key, 40).await;
    assert_eq!((ok, exceeded), (10, 30));
    assert_eq!(c.upstream.request_count(), 10);
    assert_eq!(
        c.window("buyer").await,
        (10_000, 0),
        "committed exactly $100.00, nothing left reserved"
    );

    let r = c.pay(0, &key, 1000, &[]).await;
    let (status, body) = code_of(r).await;
    assert_eq!(status, 403);
    let message = body["error"]["message"].as_str().unwrap();
    for part in ["agent-provider-month", "$100.00", "$10.00"] {
        assert!(message.contains(part), "message names {part}: {message}");
    }
}

#[tokio::test]
async fn the_same_race_split_across_two_replicas_gives_the_same_result() {
    let c = cluster(2, Upstream::builder().start().await.unwrap(), |b| {
        b.server("max_requests_per_agent = 100")
    })
    .await;
    let key = c.replicas[0].create_agent("buyer", &[]).await.unwrap();
    let (ok, exceeded) = race(&c, &key, 40).await;
    assert_eq!((ok, exceeded), (10, 30));
    assert_eq!(c.upstream.request_count(), 10);
    assert_eq!(c.window("buyer").await, (10_000, 0));
}

#[tokio::test]
async fn an_approval_granted_on_one_replica_is_honoured_once_on_another() {
    let c = cluster(2, Upstream::builder().start().await.unwrap(), |b| b).await;
    let key = c.replicas[0].create_agent("buyer", &[]).await.unwrap();

    // $60 needs a human; the same request again gets the same approval.
    let (status, body) = code_of(c.pay(0, &key, 6000, &[]).await).await;
    assert_eq!(status, 403);
    assert_eq!(body["tollgate"]["code"], "approval_required");
    let id = body["tollgate"]["approval_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Tollgate-Approval")
    );
    let (_, again) = code_of(c.pay(1, &key, 6000, &[]).await).await;
    assert_eq!(
        again["tollgate"]["approval_id"],
        id.as_str(),
        "no duplicate approvals"
    );
    assert_eq!(c.upstream.request_count(), 0);
    assert_eq!(
        c.window("buyer").await,
        (0, 0),
        "nothing is reserved until the approved request runs"
    );

    // The reviewer sees it and approves on replica 0.
    let pending: Value = c
        .http
        .get(c.replicas[0].admin_url("/api/approvals?status=pending"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(pending["approvals"][0]["id"], id.as_str());
    assert_eq!(pending["approvals"][0]["charge_cents"], 6000);
    let approved = c
        .admin_post(
            0,
            &format!("/api/approvals/{id}/approve"),
            json!({"note": "launch budget", "by": "alice"}),
        )
        .await;
    assert_eq!(approved.status(), 200);
    let approved: Value = approved.json().await.unwrap();
    // The authenticated caller (here the bootstrap token), never the body's "by".
    assert_eq!(approved["decided_by"], "bootstrap-admin");
    assert_eq!(approved["note"], "launch budget");

    // A changed body with that approval is refused; the exact request on replica 1 passes once.
    let (status, body) = code_of(c.pay(1, &key, 6001, &[("Tollgate-Approval", &id)]).await).await;
    assert_eq!(
        (status, body["tollgate"]["code"].as_str()),
        (403, Some("approval_invalid"))
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("different request")
    );
    let ok = c.pay(1, &key, 6000, &[("Tollgate-Approval", &id)]).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(c.upstream.request_count(), 1);
    assert_eq!(c.window("buyer").await, (6000, 0));
    let (status, body) = code_of(c.pay(0, &key, 6000, &[("Tollgate-Approval", &id)]).await).await;
    assert_eq!(
        (status, body["tollgate"]["code"].as_str()),
        (403, Some("approval_invalid"))
    );
    // The refusal says what became of the approved call: sent, and what the provider answered (the outcome
    // row may trail the answer by a few milliseconds).
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("already used"), "{message}");
    assert!(
        message.contains("was sent to the provider, which answered 200")
            || message.contains("its outcome is not recorded yet"),
        "{message}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (_, body) = code_of(c.pay(0, &key, 6000, &[("Tollgate-Approval", &id)]).await).await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("was sent to the provider, which answered 200"),
        "{message}"
    );
    assert_eq!(c.upstream.request_count(), 1);

    // The decision record of the approved call names its approval; the reviewer's action is recorded.
    let approval_ids: Vec<Option<String>> =
        sqlx::query_scalar("SELECT approval_id FROM decisions WHERE outcome = 'allow'")
            .fetch_all(&c.pool)
            .await
            .unwrap();
    assert_eq!(approval_ids, vec![Some(id.clone())]);
    let actor: String =
        sqlx::query_scalar("SELECT actor FROM admin_actions WHERE action = 'approval.approve'")
            .fetch_one(&c.pool)
            .await
            .unwrap();
    assert_eq!(actor, "bootstrap-admin");
}

#[tokio::test]
async fn expired_denied_and_unknown_approvals_are_invalid() {
    let c = cluster(1, Upstream::builder().start().await.unwrap(), |b| b).await;
    let key = c.replicas[0].create_agent("buyer", &[]).await.unwrap();
    let (_, body) = code_of(c.pay(0, &key, 7000, &[]).await).await;
    let id = body["tollgate"]["approval_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (ok, _, err) = c.replicas[0]
        .cli(&["approvals", "approve", &id, "--by", "bob"])
        .await
        .unwrap();
    assert!(ok, "{err}");
    sqlx::query("UPDATE approvals SET expires_at = now() - interval '1 second'")
        .execute(&c.pool)
        .await
        .unwrap();
    let (status, body) = code_of(c.pay(0, &key, 7000, &[("Tollgate-Approval", &id)]).await).await;
    assert_eq!(
        (status, body["tollgate"]["code"].as_str()),
        (403, Some("approval_invalid"))
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );

    // A fresh approval for the same call can be opened after expiry, and denied.
    let (_, body) = code_of(c.pay(0, &key, 7000, &[]).await).await;
    let second = body["tollgate"]["approval_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(second, id);
    let (ok, _, _) = c.replicas[0]
        .cli(&["approvals", "deny", &second, "--note", "no"])
        .await
        .unwrap();
    assert!(ok);
    let (_, body) = code_of(
        c.pay(0, &key, 7000, &[("Tollgate-Approval", &second)])
            .await,
    )
    .await;
    assert_eq!(body["tollgate"]["code"], "approval_invalid");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("denied")
    );

    let unknown = uuid::Uuid::now_v7().to_string();
    let (_, body) = code_of(
        c.pay(0, &key, 7000, &[("Tollgate-Approval", &unknown)])
            .await,
    )
    .await;
    assert_eq!(body["tollgate"]["code"], "approval_invalid");
    let (_, body) = code_of(
        c.pay(0, &key, 7000, &[("Tollgate-Approval", "not-an-id")])
            .await,
    )
    .await;
    assert_eq!(body["tollgate"]["code"], "approval_invalid");
    assert_eq!(c.upstream.request_count(), 0);
}

#[tokio::test]
async fn two_concurrent_retries_with_one_approval_let_exactly_one_through() {
    let c = cluster(2, Upstream::builder().start().await.unwrap(), |b| b).await;
    let key = c.replicas[0].create_agent("buyer", &[]).await.unwrap();
    let (_, body) = code_of(c.pay(0, &key, 5500, &[]).await).await;
    let id = body["tollgate"]["approval_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        c.admin_post(1, &format!("/api/approvals/{id}/approve"), json!({}))
            .await
            .status(),
        200
    );
    let header = [("Tollgate-Approval", id.as_str())];
    let (a, b) = tokio::join!(c.pay(0, &key, 5500, &header), c.pay(1, &key, 5500, &header));
    let mut results = [code_of(a).await, code_of(b).await];
    results.sort_by_key(|(s, _)| *s);
    assert_eq!(results[0].0, 200);
    assert_eq!(results[1].0, 403);
    assert_eq!(results[1].1["tollgate"]["code"], "approval_invalid");
    assert_eq!(c.upstream.request_count(), 1);
    assert_eq!(c.window("buyer").await, (5500, 0));
}

/// Issue #15: an SDK retries an approved Stripe call after a 5xx with the same Idempotency-Key and the same
/// `Tollgate-Approval`. That retry is the same call (Stripe deduplicates by the key), so it goes out again
/// under the approval — on any replica — and the ledger charges the call once. Another key, another body or
/// another account is another call and needs its own approval.
#[tokio::test]
async fn a_same_key_retry_of_an_approved_call_goes_out_again_and_is_charged_once() {
    let stand_in = StandIn::start().await.expect("stand-in");
    let answered = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&answered);
    // The first attempt meets a gateway failure before Stripe executes anything; later ones succeed.
    stand_in.answer(move |_| match count.fetch_add(1, Ordering::SeqCst) {
        0 => Reply::json(
            502,
            json!({"error": {"type": "api_error", "message": "bad gateway"}}),
        ),
        n => Reply::json(
            200,
            json!({"id": format!("pi_{n}"), "object": "payment_intent", "amount": 6000}),
        ),
    });
    let idle = Upstream::builder().start().await.unwrap();
    let c = cluster_at(2, idle, &stand_in.url(), |b| b).await;
    let key = c.replicas[0].create_agent("buyer", &[]).await.unwrap();
    let (_, body) = code_of(c.pay(0, &key, 6000, &[]).await).await;
    let id = body["tollgate"]["approval_id"]
        .as_str()
        .unwrap()
        .to_string();
    let approved = c
        .admin_post(0, &format!("/api/approvals/{id}/approve"), json!({}))
        .await;
    assert_eq!(approved.status(), 200);

    let with = |k: &'static str| {
        [
            ("Tollgate-Approval", id.clone()),
            ("Idempotency-Key", k.to_string()),
        ]
    };
    let headers = |h: &[(&'static str, String); 2]| -> Vec<(&'static str, String)> { h.to_vec() };
    let send = |replica: usize, amount: i64, h: Vec<(&'static str, String)>| {
        let c = &c;
        let key = key.clone();
        async move {
            let extra: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
            code_of(c.pay(replica, &key, amount, &extra).await).await
        }
    };

    // The approved call meets the 502, which the agent sees as is; its money stays reserved and flagged.
    let (status, _) = send(0, 6000, headers(&with("order-9"))).await;
    assert_eq!(status, 502);
    assert_eq!(c.window("buyer").await, (0, 6000));

    // The SDK's retry, on the other replica: same call, same key, same approval — forwarded again.
    let (status, body) = send(1, 6000, headers(&with("order-9"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], "pi_1");
    let received = stand_in.take();
    assert_eq!(received.len(), 2);
    let forwarded = received[0].header("idempotency-key").unwrap().to_string();
    assert_eq!(
        received[1].header("idempotency-key"),
        Some(forwarded.as_str())
    );
    assert_eq!(
        c.window("buyer").await,
        (6000, 0),
        "charged once: the retry settles the attempt it replaces"
    );

    // A repeat after the success is still that call: forwarded (Stripe would replay it), not charged again.
    let (status, _) = send(0, 6000, headers(&with("order-9"))).await;
    assert_eq!(status, 200);
    assert_eq!(stand_in.take().len(), 1);
    assert_eq!(c.window("buyer").await, (6000, 0));

    // Another key is another call: refused, and told how to repeat the approved one.
    let (status, body) = send(1, 6000, headers(&with("order-10"))).await;
    assert_eq!(
        (status, body["tollgate"]["code"].as_str()),
        (403, Some("approval_invalid"))
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("already used"), "{message}");
    assert!(
        message.contains("same Idempotency-Key")
            || message.contains("Idempotency-Key is the same call"),
        "{message}"
    );
    // So is another body under the same key, and the same call without any key.
    let (status, body) = send(0, 6001, headers(&with("order-9"))).await;
    assert_eq!(
        (status, body["tollgate"]["code"].as_str()),
        (403, Some("approval_invalid"))
    );
    let (status, body) = send(0, 6000, vec![("Tollgate-Approval", id.clone())]).await;
    assert_eq!(
        (status, body["tollgate"]["code"].as_str()),
        (403, Some("approval_invalid"))
    );
    assert!(stand_in.take().is_empty(), "none of those went out");
    assert_eq!(c.window("buyer").await, (6000, 0));

    // Every attempt that went out is recorded under the approval.
    let approval_ids: Vec<Option<String>> =
        sqlx::query_scalar("SELECT approval_id FROM decisions WHERE outcome = 'allow'")
            .fetch_all(&c.pool)
            .await
            .unwrap();
    assert_eq!(approval_ids, vec![Some(id.clone()); 3]);
    let retried = c
        .http
        .get(c.replicas[1].admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        retried.contains("tollgate_approvals_total{result=\"retried\"} 1"),
        "the metric counts the retry"
    );
}

/// Found by an attacker: a same-key retry takes the flagged reservation of an attempt whose outcome is
/// unknown over; a *fresh* refusal of that retry (a 429 comes before Stripe looks at the key) proves nothing
/// about the earlier attempt, so the money stays reserved and flagged — only the provider's replayed answer
/// settles the call. And the key's window keeps running from its first use: a repeat past it is charged anew.
#[tokio::test]
async fn a_fresh_refusal_of_a_retry_keeps_the_call_flagged_and_the_window_runs_from_the_first_use()
{
    let stand_in = StandIn::start().await.expect("stand-in");
    let answered = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&answered);
    let paid = json!({"id": "pi_1", "object": "payment_intent", "amount": 4000});
    stand_in.answer(move |_| match count.fetch_add(1, Ordering::SeqCst) {
        // The provider acts but answers after tollgate gave up (504).
        0 => Reply::json(200, paid.clone()).after(Duration::from_millis(1500)),
        // Rate limited before the key is looked at.
        1 => Reply::json(
            429,
            json!({"error": {"type": "invalid_request_error", "code": "rate_limit", "message": "slow down"}}),
        ),
        // The provider's saved answer to the key.
        2 => Reply::json(200, paid.clone()).header("Idempotent-Replayed", "true"),
        _ => Reply::json(200, json!({"id": "pi_2", "object": "payment_intent", "amount": 4000})),
    });
    let idle = Upstream::builder().start().await.unwrap();
    let c = cluster_at(1, idle, &stand_in.url(), |b| {
        b.server("upstream_timeout_ms = 1000")
            .stripe("idempotency_window_seconds = 4")
    })
    .await;
    let key = c.replicas[0].create_agent("buyer", &[]).await.unwrap();
    let first_use = std::time::Instant::now();
    let pay = || c.pay(0, &key, 4000, &[("Idempotency-Key", "order-31")]);
    assert_eq!(pay().await.status(), 504);
    assert_eq!(c.window("buyer").await, (0, 4000));
    assert_eq!(pay().await.status(), 429);
    assert_eq!(
        c.window("buyer").await,
        (0, 4000),
        "the 429 says nothing about the first attempt: still reserved"
    );
    let flagged: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM spend_reservations WHERE state = 'reserved' AND flagged",
    )
    .fetch_one(&c.pool)
    .await
    .unwrap();
    assert_eq!(flagged, 1, "and flagged for an operator");
    let replay = pay().await;
    assert_eq!(replay.status(), 200);
    assert_eq!(
        c.window("buyer").await,
        (4000, 0),
        "the replayed answer settles the call once"
    );
    // Past the provider's window from the first use (not from the takeover), the key is new again.
    let past = Duration::from_millis(4300).saturating_sub(first_use.elapsed());
    tokio::time::sleep(past).await;
    assert_eq!(pay().await.status(), 200);
    assert_eq!(
        c.window("buyer").await,
        (8000, 0),
        "a repeat the provider runs anew is charged anew"
    );
    assert_eq!(stand_in.take().len(), 4);
}

#[tokio::test]
async fn revoking_on_one_replica_is_refused_by_the_other_within_a_second() {
    let c = cluster(2, Upstream::builder().start().await.unwrap(), |b| b).await;
    let key = c.replicas[0].create_agent("buyer", &[]).await.unwrap();
    assert_eq!(
        c.pay(1, &key, 100, &[]).await.status(),
        200,
        "replica 1 knows (and caches) the agent"
    );
    let revoked = c.admin_post(0, "/api/agents/buyer/revoke", json!({})).await;
    assert_eq!(revoked.status(), 200);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (status, body) = code_of(c.pay(1, &key, 100, &[]).await).await;
    assert_eq!(
        (status, body["tollgate"]["code"].as_str()),
        (401, Some("agent_unauthenticated"))
    );
}

#[tokio::test]
async fn a_refusal_releases_the_reservation_and_a_timeout_keeps_it_flagged() {
    let refusing = Upstream::builder()
        .status(400)
        .json_body(json!({"error": {"type": "invalid_request_error", "message": "no"}}))
        .start()
        .await
        .unwrap();
    let c = cluster(1, refusing, |b| b).await;
    let key = c.replicas[0].create_agent("buyer", &[]).await.unwrap();
    let r = c.pay(0, &key, 2500, &[]).await;
    assert_eq!(r.status(), 400, "the provider's own error goes back");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(c.window("buyer").await, (0, 0), "released");
    let state: String = sqlx::query_scalar("SELECT state FROM spend_reservations")
        .fetch_one(&c.pool)
        .await
        .unwrap();
    assert_eq!(state, "released");

    let slow = Upstream::builder()
        .delay(Duration::from_secs(3))
        .start()
        .await
        .unwrap();
    let c = cluster(1, slow, |b| b.server("upstream_timeout_ms = 300")).await;
    let key = c.replicas[0].create_agent("buyer", &[]).await.unwrap();
    let (status, body) = code_of(c.pay(0, &key, 2500, &[]).await).await;
    assert_eq!(
        (status, body["tollgate"]["code"].as_str()),
        (504, Some("upstream_timeout"))
    );
    assert_eq!(
        c.window("buyer").await,
        (0, 2500),
        "an unknown outcome stays reserved"
    );
    let (state, flagged): (String, bool) =
        sqlx::query_as("SELECT state, flagged FROM spend_reservations")
            .fetch_one(&c.pool)
            .await
            .unwrap();
    assert_eq!((state.as_str(), flagged), ("reserved", true));
    let spend: Value = c
        .http
        .get(c.replicas[0].admin_url("/api/spend"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(spend["windows"][0]["reserved_cents"], 2500);
    assert_eq!(spend["windows"][0]["flagged_cents"], 2500);
    assert_eq!(spend["windows"][0]["cap_cents"], 10000);
    let _ = &c.db;
}

#[tokio::test]
async fn a_repeated_idempotency_key_is_not_charged_twice() {
    let c = cluster(1, Upstream::builder().start().await.unwrap(), |b| b).await;
    let key = c.replicas[0].create_agent("buyer", &[]).await.unwrap();
    for _ in 0..2 {
        assert_eq!(
            c.pay(0, &key, 1500, &[("Idempotency-Key", "order-77")])
                .await
                .status(),
            200
        );
    }
    assert_eq!(
        c.upstream.request_count(),
        2,
        "Stripe replays the first result; tollgate forwards the retry"
    );
    assert_eq!(c.window("buyer").await, (1500, 0), "charged once");
    let (status, body) = code_of(
        c.pay(0, &key, 1600, &[("Idempotency-Key", "order-77")])
            .await,
    )
    .await;
    assert_eq!(
        (status, body["tollgate"]["code"].as_str()),
        (400, Some("idempotency_key_reused"))
    );
    // As Stripe answers it, so its SDKs raise their IdempotencyError.
    assert_eq!(body["error"]["type"], "idempotency_error", "{body}");
    let (ok, out, _) = c.replicas[0].cli(&["spend", "--json"]).await.unwrap();
    assert!(ok);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["windows"][0]["committed_cents"], 1500);
}

#[tokio::test]
async fn a_freeze_on_one_replica_stops_every_replica() {
    let c = cluster(2, Upstream::builder().start().await.unwrap(), |b| b).await;
    let key = c.replicas[0].create_agent("buyer", &[]).await.unwrap();
    assert_eq!(
        c.admin_post(0, "/api/freeze", json!({})).await.status(),
        200
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (status, body) = code_of(c.pay(1, &key, 100, &[]).await).await;
    assert_eq!(
        (status, body["tollgate"]["code"].as_str()),
        (503, Some("frozen"))
    );
    let lift = c
        .http
        .delete(c.replicas[1].admin_url("/api/freeze"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(lift.status(), 200);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(c.pay(0, &key, 100, &[]).await.status(), 200);
    assert_eq!(c.upstream.request_count(), 1);
}

/// The same policy, but asking tollgate to hold approval-needing requests open for a reviewer.
const HOLD_POLICY: &str = r#"package tollgate

amount := to_number(input.request.body.amount) if input.action.name == "stripe.payment.create"

decision := {"outcome": "approve", "hold_seconds": 20, "reasons": [{"rule": "spend.single_charge", "message": "charges above $50 need a human"}], "charge": {"cents": amount, "budget": "agent-provider-month", "cap_cents": 10000}} if {
	amount > 5000
} else := {"outcome": "allow", "reasons": []}
"#;

#[tokio::test]
async fn hold_mode_keeps_the_request_open_until_a_reviewer_decides() {
    let db = TestDatabase::create().await.unwrap();
    let upstream = Upstream::builder().start().await.unwrap();
    let policy = policy_dir_with(HOLD_POLICY).unwrap();
    let gate = Tollgate::builder(db.url(), &upstream.url())
        .policy_dir(policy.path())
        .start()
        .await
        .unwrap();
    let key = gate.create_agent("buyer", &[]).await.unwrap();
    let http = reqwest::Client::new();
    let pay = |amount: i64| {
        http.post(gate.url("/stripe/v1/payment_intents"))
            .basic_auth(&key, Some(""))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("amount={amount}&currency=usd"))
            .send()
    };
    // The reviewer finds the held request and approves it while the agent's call is still open.
    let reviewer = || async {
        loop {
            let list: Value = http
                .get(gate.admin_url("/api/approvals?status=pending"))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if let Some(id) = list["approvals"][0]["id"].as_str() {
                let verdict = if list["approvals"][0]["charge_cents"] == 6000 {
                    "approve"
                } else {
                    "deny"
                };
                let r = http
                    .post(gate.admin_url(&format!("/api/approvals/{id}/{verdict}")))
                    .bearer_auth(ADMIN_TOKEN)
                    .json(&json!({"by": "carol"}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (response, ()) = tokio::join!(pay(6000), reviewer());
    assert_eq!(
        response.unwrap().status(),
        200,
        "approved while held: the same call proceeds"
    );
    assert_eq!(upstream.request_count(), 1);

    let (response, ()) = tokio::join!(pay(7000), reviewer());
    let (status, body) = code_of(response.unwrap()).await;
    assert_eq!(
        (status, body["tollgate"]["code"].as_str()),
        (403, Some("approval_invalid"))
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("denied")
    );
    assert_eq!(upstream.request_count(), 1);
}
