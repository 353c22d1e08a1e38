//! An agent trying to spend past its cap or to stretch an approval to a call nobody saw: the attacks of issue
//! #12 sent as they were found (reqwest, or raw sockets where a client library would tidy the request up)
//! against the real binary, two replicas where money moves, a real Postgres and the recording stand-in, with
//! the bundled policy library. Every test checks three things: what the agent was told, what the stand-in
//! received, and what the ledger counted.

use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use sqlx::{PgPool, Row};
use tollgate_tests::tollgate::{ADMIN_TOKEN, Tollgate, TollgateBuilder, raw_request};
use tollgate_tests::{TestDatabase, Upstream};

const ZONE: &str = "023e105f4ecef8ad9ca31a8372d0c353";
const ACCOUNT: &str = "01a7362d577a6c3019a474fd6f485823";
const DNS_WRITE: &str = "4755a26eedb94da69e1066d98aa820be";

struct Gate {
    _db: TestDatabase,
    pool: PgPool,
    upstream: Upstream,
    replicas: Vec<Tollgate>,
    http: reqwest::Client,
}

/// What the agent was told.
struct Answer {
    status: u16,
    body: Value,
    headers: HeaderMap,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["tollgate"]["code"].as_str().unwrap_or("")
    }
    fn rule(&self) -> &str {
        self.body["tollgate"]["rule"].as_str().unwrap_or("")
    }
    fn decision(&self) -> uuid::Uuid {
        self.headers
            .get("tollgate-decision")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .expect("every answer names its decision")
    }
}

async fn gate(
    replicas: usize,
    upstream: Upstream,
    configure: fn(TollgateBuilder) -> TollgateBuilder,
) -> Gate {
    let db = TestDatabase::create().await.expect("database");
    let mut started = Vec::new();
    for _ in 0..replicas {
        let builder = Tollgate::builder(db.url(), &upstream.url());
        started.push(configure(builder).start().await.expect("replica starts"));
    }
    let pool = db.pool().await.expect("pool");
    Gate {
        _db: db,
        pool,
        upstream,
        replicas: started,
        http: reqwest::Client::new(),
    }
}

impl Gate {
    async fn agent(&self, name: &str, extra: &[&str]) -> String {
        self.replicas[0]
            .create_agent(name, extra)
            .await
            .expect("agent")
    }

    /// A Stripe form POST from `key` through replica `replica`.
    async fn stripe(
        &self,
        replica: usize,
        key: &str,
        path: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut request = self
            .http
            .post(self.replicas[replica].url(&format!("/stripe{path}")))
            .basic_auth(key, Some(""))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_string());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        answer(request.send().await.expect("request")).await
    }

    /// A $20 Stripe payment from `key` through replica `replica`, with extra headers.
    async fn pay(&self, replica: usize, key: &str, headers: &[(&str, &str)]) -> Answer {
        self.stripe(replica, key, "/v1/payment_intents", PAY_20, headers)
            .await
    }

    async fn cloudflare(
        &self,
        key: &str,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> Answer {
        let request = self
            .http
            .request(
                method,
                self.replicas[0].url(&format!("/cloudflare/client/v4{path}")),
            )
            .bearer_auth(key)
            .json(&body);
        answer(request.send().await.expect("request")).await
    }

    /// (committed, reserved) cents of `agent`'s window for `provider` this month.
    async fn spent(&self, agent: &str, provider: &str) -> (i64, i64) {
        let row = sqlx::query(
            "SELECT w.committed_cents, w.reserved_cents FROM spend_windows w, agents a
             WHERE a.name = $1 AND w.budget = 'agent-provider-month' AND w.subject = 'agent:' || a.id || '/' || $2",
        )
        .bind(agent)
        .bind(provider)
        .fetch_optional(&self.pool)
        .await
        .expect("window query");
        row.map(|r| (r.get(0), r.get(1))).unwrap_or((0, 0))
    }

    /// The reservation of a decision: (state, flagged), or None when nothing was reserved.
    async fn reservation(&self, decision: uuid::Uuid) -> Option<(String, bool)> {
        sqlx::query("SELECT state, flagged FROM spend_reservations WHERE decision_id = $1")
            .bind(decision)
            .fetch_optional(&self.pool)
            .await
            .expect("reservation query")
            .map(|r| (r.get(0), r.get(1)))
    }

    async fn decisions(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM decisions")
            .fetch_one(&self.pool)
            .await
            .expect("count")
    }

    /// Sends a raw HTTP/1.1 request to replica 0 (for headers a client library would merge or drop).
    async fn raw(&self, head: &str, body: &str) -> (u16, Value) {
        let head = head.replace("{length}", &body.len().to_string());
        let (status, text) = raw_request(self.replicas[0].proxy_addr(), &head, body.as_bytes())
            .await
            .expect("raw request");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap_or(Value::Null);
    Answer {
        status,
        body,
        headers,
    }
}

fn basic(key: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
}

const PAY_20: &str = "amount=2000&currency=usd";

/// Confirmed: `Connection: close, Idempotency-Key` stripped the key after the ledger called the request a
/// replay; a second key header, or another Stripe-Account, was "replayed" for $0 and forwarded; keys were
/// recognized forever; agent B reusing agent A's key got A's PaymentIntent back.
#[tokio::test]
async fn a_replay_is_only_what_the_provider_replays() {
    let upstream = Upstream::builder()
        .json_body(json!({"object": "payment_intent"}))
        .stripe_idempotency()
        .start()
        .await
        .unwrap();
    let g = gate(2, upstream, |b| b.stripe("idempotency_window_seconds = 3")).await;
    let a = g
        .agent(
            "agent-a",
            &[
                "--scope",
                "billing:spend",
                "--label",
                "stripe_accounts=acct_a",
            ],
        )
        .await;
    let b = g.agent("agent-b", &["--scope", "billing:spend"]).await;
    let key = [("idempotency-key", "order-1")];

    // A real replay, across replicas: charged once, the provider's first answer twice.
    let first = g.stripe(0, &a, "/v1/payment_intents", PAY_20, &key).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let replay = g.stripe(1, &a, "/v1/payment_intents", PAY_20, &key).await;
    assert_eq!(replay.status, 200, "{}", replay.body);
    assert_eq!(replay.body["id"], first.body["id"]);
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    // The agent sees its own key; the provider saw the one tollgate derived for this agent.
    assert_eq!(replay.headers["idempotency-key"], "order-1");
    assert_eq!(g.reservation(replay.decision()).await, None);
    assert_eq!(g.spent("agent-a", "stripe").await, (2000, 0));
    let sent = g.upstream.requests();
    assert_eq!(sent.len(), 2);
    let forwarded_a = sent[0].header("idempotency-key").unwrap().to_string();
    assert!(forwarded_a.starts_with("tollgate-") && forwarded_a != "order-1");
    assert_eq!(
        sent[1].header("idempotency-key"),
        Some(forwarded_a.as_str())
    );

    // Connection naming the key would strip it after judging: refused, nothing sent.
    let body = PAY_20;
    let (status, refusal) = g
        .raw(
            &format!(
                "POST /stripe/v1/payment_intents HTTP/1.1\r\nHost: t\r\nAuthorization: Basic {}\r\n\
                 Content-Type: application/x-www-form-urlencoded\r\nIdempotency-Key: order-1\r\n\
                 Connection: close, Idempotency-Key\r\nContent-Length: {{length}}\r\n\r\n",
                basic(&a)
            ),
            body,
        )
        .await;
    assert_eq!(
        (status, refusal["tollgate"]["code"].as_str()),
        (400, Some("request_malformed")),
        "{refusal}"
    );
    // A second copy of the key: which one would Stripe use?
    let (status, refusal) = g
        .raw(
            &format!(
                "POST /stripe/v1/payment_intents HTTP/1.1\r\nHost: t\r\nAuthorization: Basic {}\r\n\
                 Content-Type: application/x-www-form-urlencoded\r\nIdempotency-Key: order-1\r\n\
                 Idempotency-Key: order-2\r\nConnection: close\r\nContent-Length: {{length}}\r\n\r\n",
                basic(&a)
            ),
            body,
        )
        .await;
    assert_eq!(
        (status, refusal["tollgate"]["code"].as_str()),
        (400, Some("request_malformed")),
        "{refusal}"
    );
    assert_eq!(g.upstream.request_count(), 2);

    // The same key on a connected account is another request at Stripe: charged.
    let other = g
        .stripe(
            0,
            &a,
            "/v1/payment_intents",
            PAY_20,
            &[key[0], ("stripe-account", "acct_a")],
        )
        .await;
    assert_eq!(other.status, 200, "{}", other.body);
    assert_ne!(other.body["id"], first.body["id"]);
    assert_eq!(g.spent("agent-a", "stripe").await, (4000, 0));

    // Agent B reusing A's key and body: its own key at the provider, its own PaymentIntent, its own charge.
    let theirs = g.stripe(1, &b, "/v1/payment_intents", PAY_20, &key).await;
    assert_eq!(theirs.status, 200, "{}", theirs.body);
    assert_ne!(
        theirs.body["id"], first.body["id"],
        "B must never read A's object"
    );
    assert!(theirs.headers.get("idempotent-replayed").is_none());
    let forwarded_b = g
        .upstream
        .requests()
        .last()
        .unwrap()
        .header("idempotency-key")
        .unwrap()
        .to_string();
    assert_ne!(forwarded_b, forwarded_a);
    assert_eq!(g.spent("agent-b", "stripe").await, (2000, 0));
    assert_eq!(g.spent("agent-a", "stripe").await, (4000, 0));

    // The key with another request inside the window: refused, not sent.
    let sent_before = g.upstream.request_count();
    let conflict = g
        .stripe(
            0,
            &a,
            "/v1/payment_intents",
            "amount=2500&currency=usd",
            &key,
        )
        .await;
    assert_eq!(
        (conflict.status, conflict.code()),
        (400, "idempotency_key_reused"),
        "{}",
        conflict.body
    );
    assert_eq!(g.upstream.request_count(), sent_before);

    // Past the window the provider may have forgotten the key: tollgate charges the repeat as new. This
    // stand-in still remembers and says so (Idempotent-Replayed), which releases the charge.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let late = g.stripe(1, &a, "/v1/payment_intents", PAY_20, &key).await;
    assert_eq!(late.status, 200, "{}", late.body);
    assert_eq!(
        g.reservation(late.decision()).await,
        Some(("released".to_string(), false)),
        "a repeat after the window is reserved as new; the provider's replay evidence releases it"
    );
    assert_eq!(g.spent("agent-a", "stripe").await, (4000, 0));
    // Every request that reached tollgate left one decision.
    assert_eq!(g.decisions().await, 8);
}

/// Cloudflare has no idempotency keys: a repeated key is a new purchase and is charged again.
#[tokio::test]
async fn a_provider_without_replays_charges_every_repeat() {
    let upstream = Upstream::builder().start().await.unwrap();
    let g = gate(1, upstream, |b| b).await;
    let key = g
        .agent(
            "planner",
            &[
                "--scope",
                "billing:spend",
                "--label",
                &format!("zones={ZONE}"),
            ],
        )
        .await;
    for _ in 0..2 {
        let r = g
            .http
            .post(g.replicas[0].url(&format!("/cloudflare/client/v4/zones/{ZONE}/subscription")))
            .bearer_auth(&key)
            .header("idempotency-key", "plan-1")
            .json(&json!({"rate_plan": {"id": "pro"}, "frequency": "monthly"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(g.upstream.request_count(), 2);
    assert_eq!(g.spent("planner", "cloudflare").await, (5000, 0));
}

/// Confirmed: query parameters of a write were forwarded but never judged (`?quantity=1000` on a $40
/// subscription item, a $9,000 `add_invoice_items` in the query of a subscription create).
#[tokio::test]
async fn what_a_write_carries_in_its_query_is_judged() {
    let upstream = Upstream::builder().start().await.unwrap();
    let g = gate(1, upstream, |b| b).await;
    let stripe = g.agent("buyer", &["--scope", "billing:spend"]).await;
    let cf = g
        .agent(
            "dns",
            &[
                "--scope",
                "dns:write",
                "--label",
                &format!("zones={ZONE}"),
                "--label",
                &format!("accounts={ACCOUNT}"),
            ],
        )
        .await;

    let item = "subscription=sub_1&price_data[currency]=usd&price_data[product]=prod_1\
                &price_data[unit_amount]=4000&price_data[recurring][interval]=month";
    let r = g
        .stripe(
            0,
            &stripe,
            "/v1/subscription_items?quantity=1000",
            item,
            &[],
        )
        .await;
    assert_eq!(
        (r.status, r.code(), r.rule()),
        (403, "policy_denied", "spend.cap"),
        "{}",
        r.body
    );

    let sub = "customer=cus_1&items[0][price_data][currency]=usd&items[0][price_data][product]=prod_1\
               &items[0][price_data][unit_amount]=1000&items[0][price_data][recurring][interval]=month";
    let r = g
        .stripe(
            0,
            &stripe,
            "/v1/subscriptions?add_invoice_items[0][price_data][currency]=usd\
             &add_invoice_items[0][price_data][product]=prod_1&add_invoice_items[0][price_data][unit_amount]=900000",
            sub,
            &[],
        )
        .await;
    assert_eq!(
        (r.status, r.code(), r.rule()),
        (403, "policy_denied", "spend.cap"),
        "{}",
        r.body
    );

    let r = g
        .stripe(
            0,
            &stripe,
            "/v1/payment_intents?amount=900000",
            "currency=usd",
            &[],
        )
        .await;
    assert_eq!((r.status, r.rule()), (403, "spend.cap"), "{}", r.body);
    // In both places: which one would Stripe use?
    let r = g
        .stripe(0, &stripe, "/v1/payment_intents?amount=100", PAY_20, &[])
        .await;
    assert_eq!(
        (r.status, r.code()),
        (400, "request_malformed"),
        "{}",
        r.body
    );

    // Cloudflare judges the JSON body; a query on a write that its route does not take is refused.
    let a_record = json!({"type": "A", "name": "www.example.com", "content": "198.51.100.4"});
    let r = g
        .cloudflare(
            &cf,
            reqwest::Method::POST,
            &format!("/zones/{ZONE}/dns_records?type=NS"),
            a_record.clone(),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (400, "request_malformed"),
        "{}",
        r.body
    );
    assert!(
        r.body["errors"][0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("\"type\""),
        "{}",
        r.body
    );
    assert_eq!(g.upstream.request_count(), 0, "nothing unjudged was sent");
    // Without the query it is an ordinary DNS create, forwarded.
    let r = g
        .cloudflare(
            &cf,
            reqwest::Method::POST,
            &format!("/zones/{ZONE}/dns_records"),
            a_record,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // ... and a listed query parameter passes the query check (this delete then needs a human).
    let r = g
        .http
        .delete(g.replicas[0].url(&format!(
            "/cloudflare/client/v4/accounts/{ACCOUNT}/workers/scripts/blog?force=true"
        )))
        .bearer_auth(&cf)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap();
    assert_ne!(r, 400);
    assert_eq!(g.upstream.request_count(), 1);
    assert_eq!(g.spent("buyer", "stripe").await, (0, 0));
}

/// Confirmed: a JSON NS-record change sent as a form was judged as a harmless form; two Content-Types were
/// forwarded; `id`/`ID` passed the duplicate check; Content-Encoding over a request without framing headers
/// passed.
#[tokio::test]
async fn a_body_is_read_the_way_the_provider_reads_it() {
    let upstream = Upstream::builder().start().await.unwrap();
    let g = gate(1, upstream, |b| b).await;
    let key = g
        .agent(
            "dns",
            &[
                "--scope",
                "dns:write",
                "--scope",
                "tokens:create",
                "--label",
                &format!("zones={ZONE}"),
            ],
        )
        .await;
    let path = format!("/cloudflare/client/v4/zones/{ZONE}/dns_records");
    let ns = r#"{"type":"NS","name":"example.com","content":"ns1.attacker.test"}"#;
    let cases = [
        // The NS record under a form's Content-Type.
        format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nConnection: close\r\nContent-Length: {{length}}\r\n\r\n"
        ),
        // Two Content-Types: the first was used, both were forwarded.
        format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nConnection: close\r\nContent-Length: {{length}}\r\n\r\n"
        ),
        // A Content-Encoding on a request (HTTP/2 needs no framing header; here a chunked one).
        format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\n\
             Content-Encoding: gzip\r\nConnection: close\r\nContent-Length: {{length}}\r\n\r\n"
        ),
    ];
    for head in &cases {
        let (status, body) = g.raw(head, ns).await;
        assert_eq!(
            (status, body["errors"][0]["code"].is_number()),
            (400, true),
            "{head}: {body}"
        );
        assert_eq!(body["tollgate"]["code"], "request_malformed", "{body}");
    }
    let (status, body) = g
        .raw(
            &format!(
                "GET /cloudflare/client/v4/zones HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n\
                 Content-Encoding: gzip\r\nConnection: close\r\n\r\n"
            ),
            "",
        )
        .await;
    assert_eq!(status, 400, "{body}");
    // Keys that differ only in case.
    for body in [
        r#"{"type":"A","TYPE":"NS","name":"example.com","content":"198.51.100.4"}"#,
        r#"{"type":"A","name":"example.com","Name":"evil.example.com","content":"198.51.100.4"}"#,
    ] {
        let r = g
            .http
            .post(g.replicas[0].url(&path))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
    }
    // Stripe takes forms: JSON is refused.
    let stripe = g.agent("buyer", &["--scope", "billing:spend"]).await;
    let r = g
        .http
        .post(g.replicas[0].url("/stripe/v1/payment_intents"))
        .basic_auth(&stripe, Some(""))
        .json(&json!({"amount": 100000000, "currency": "usd"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(g.upstream.request_count(), 0);
    assert_eq!(g.decisions().await, 7, "every refusal is recorded");
}

/// Confirmed: a $75 payment approved for `Stripe-Account: acct_reviewed` went through with `acct_OTHER`.
#[tokio::test]
async fn an_approval_covers_the_account_it_was_given_for() {
    let upstream = Upstream::builder()
        .json_body(json!({"id": "pi_1"}))
        .start()
        .await
        .unwrap();
    let g = gate(2, upstream, |b| b).await;
    let key = g
        .agent(
            "payer",
            &[
                "--scope",
                "billing:spend",
                "--label",
                "stripe_accounts=acct_reviewed,acct_OTHER",
            ],
        )
        .await;
    let pay = "amount=7500&currency=usd";
    let reviewed = [("stripe-account", "acct_reviewed")];
    let held = g
        .stripe(0, &key, "/v1/payment_intents", pay, &reviewed)
        .await;
    assert_eq!(
        (held.status, held.code()),
        (403, "approval_required"),
        "{}",
        held.body
    );
    let approval = held.body["tollgate"]["approval_id"]
        .as_str()
        .unwrap()
        .to_string();
    let shown = g
        .http
        .get(g.replicas[1].admin_url(&format!("/api/approvals/{approval}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert!(
        shown["headers"]
            .as_str()
            .unwrap()
            .contains("stripe-account: acct_reviewed"),
        "{shown}"
    );
    let approved = g
        .http
        .post(g.replicas[1].admin_url(&format!("/api/approvals/{approval}/approve")))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"by": "alice", "note": "reviewed account only"}))
        .send()
        .await
        .unwrap();
    assert_eq!(approved.status(), 200);

    let moved = g
        .stripe(
            1,
            &key,
            "/v1/payment_intents",
            pay,
            &[
                ("stripe-account", "acct_OTHER"),
                ("tollgate-approval", &approval),
            ],
        )
        .await;
    assert_eq!(
        (moved.status, moved.code()),
        (403, "approval_invalid"),
        "{}",
        moved.body
    );
    assert_eq!(g.upstream.request_count(), 0);

    let used = g
        .stripe(
            0,
            &key,
            "/v1/payment_intents",
            pay,
            &[reviewed[0], ("tollgate-approval", &approval)],
        )
        .await;
    assert_eq!(used.status, 200, "{}", used.body);
    let sent = g.upstream.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].header("stripe-account"), Some("acct_reviewed"));
    assert_eq!(g.spent("payer", "stripe").await, (7500, 0));
}

/// Confirmed: `Stripe-Account` was forwarded unchecked.
#[tokio::test]
async fn an_agent_acts_only_on_its_connected_accounts() {
    let upstream = Upstream::builder().start().await.unwrap();
    let g = gate(1, upstream, |b| b).await;
    let plain = g.agent("plain", &["--scope", "billing:spend"]).await;
    let scoped = g
        .agent(
            "scoped",
            &[
                "--scope",
                "billing:spend",
                "--label",
                "stripe_accounts=acct_mine",
            ],
        )
        .await;
    for (key, account) in [(&plain, "acct_mine"), (&scoped, "acct_theirs")] {
        for header in ["stripe-account", "stripe-context"] {
            let r = g.pay(0, key, &[(header, account)]).await;
            assert_eq!(
                (r.status, r.rule()),
                (403, "placement.stripe_account"),
                "{}",
                r.body
            );
        }
    }
    assert_eq!(g.upstream.request_count(), 0);
    let r = g.pay(0, &scoped, &[("stripe-account", "acct_mine")]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = g.pay(0, &plain, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(g.upstream.request_count(), 2);
}

/// Confirmed: a 500/502/503 after the request was sent released the reservation, so the cap forgot money
/// that may have been spent. Only the provider's own refusal releases; the rest stays reserved and flagged
/// until an operator settles it.
#[tokio::test]
async fn only_evidence_releases_a_reservation() {
    let db = TestDatabase::create().await.unwrap();
    let pool = db.pool().await.unwrap();
    let http = reqwest::Client::new();
    let card_error =
        json!({"error": {"type": "card_error", "code": "card_declined", "message": "declined"}});
    let mut gates = Vec::new();
    for (status, body) in [
        (
            500,
            json!({"error": {"type": "api_error", "message": "boom"}}),
        ),
        (402, card_error),
        (403, json!({"message": "blocked by a load balancer"})),
    ] {
        let upstream = Upstream::builder()
            .status(status)
            .json_body(body)
            .start()
            .await
            .unwrap();
        let tg = Tollgate::builder(db.url(), &upstream.url())
            .start()
            .await
            .unwrap();
        gates.push((upstream, tg));
    }
    let key = gates[0]
        .1
        .create_agent("payer", &["--scope", "billing:spend"])
        .await
        .unwrap();
    let mut decisions = Vec::new();
    for (upstream, tg) in &gates {
        let r = http
            .post(tg.url("/stripe/v1/payment_intents"))
            .basic_auth(&key, Some(""))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(PAY_20)
            .send()
            .await
            .unwrap();
        let a = answer(r).await;
        assert_eq!(upstream.request_count(), 1);
        decisions.push(a.decision());
    }
    let state = |id| {
        let pool = pool.clone();
        async move {
            sqlx::query("SELECT state, flagged FROM spend_reservations WHERE decision_id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .map(|r| (r.get::<String, _>(0), r.get::<bool, _>(1)))
                .unwrap()
        }
    };
    assert_eq!(
        state(decisions[0]).await,
        ("reserved".into(), true),
        "5xx: unknown"
    );
    assert_eq!(
        state(decisions[1]).await,
        ("released".into(), false),
        "card_error: refused"
    );
    assert_eq!(
        state(decisions[2]).await,
        ("reserved".into(), true),
        "403 without Stripe's envelope"
    );
    let admin = &gates[1].1;

    // Operators see and settle them, with who and why.
    let flagged: Value = http
        .get(admin.admin_url("/api/spend/flagged"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed: Vec<&str> = flagged["reservations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["decision_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        vec![decisions[0].to_string(), decisions[2].to_string()]
    );
    let settled = http
        .post(admin.admin_url(&format!("/api/spend/reservations/{}/settle", decisions[0])))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"outcome": "released", "note": "no charge in the Stripe dashboard", "by": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(settled.status(), 200);
    let (ok, out, err) = admin
        .cli(&[
            "spend",
            "settle",
            &decisions[2].to_string(),
            "--committed",
            "--note",
            "charged",
            "--by",
            "bob",
        ])
        .await
        .unwrap();
    assert!(ok, "{out}{err}");
    let (ok, out, _) = admin.cli(&["spend", "flagged"]).await.unwrap();
    assert!(ok && out.contains("0 flagged reservation(s)"), "{out}");
    let actions: Vec<(String, String)> = sqlx::query(
        "SELECT actor, detail::text FROM admin_actions WHERE action = 'spend.settle' ORDER BY at",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    assert_eq!(actions.len(), 2);
    // The API records the authenticated caller (the bootstrap admin), not the body's "by"; the local CLI
    // records `local:<--by>`.
    assert_eq!(actions[0].0, "bootstrap-admin");
    assert!(actions[0].1.contains("no charge in the Stripe dashboard"));
    assert_eq!(actions[1].0, "local:bob");
    let window: (i64, i64) = sqlx::query(
        "SELECT committed_cents, reserved_cents FROM spend_windows WHERE budget = 'agent-provider-month'",
    )
    .fetch_one(&pool)
    .await
    .map(|r| (r.get(0), r.get(1)))
    .unwrap();
    assert_eq!(window, (2000, 0));
}

/// Confirmed: a $49.99 subscription item billed daily (≈ $1,500 a month), or backdated a year, passed at
/// $49.99. Recurring prices are charged what they can bill inside this month's window.
#[tokio::test]
async fn recurring_money_is_charged_for_the_whole_window() {
    let upstream = Upstream::builder().start().await.unwrap();
    let g = gate(1, upstream, |b| b).await;
    let key = g.agent("subscriber", &["--scope", "billing:spend"]).await;
    let item = |interval: &str| {
        format!(
            "customer=cus_1&items[0][price_data][currency]=usd&items[0][price_data][product]=prod_1\
             &items[0][price_data][unit_amount]=4999&items[0][price_data][recurring][interval]={interval}"
        )
    };
    let daily = g
        .stripe(0, &key, "/v1/subscriptions", &item("day"), &[])
        .await;
    assert_eq!(
        (daily.status, daily.rule()),
        (403, "spend.cap"),
        "{}",
        daily.body
    );
    let year_ago = (chrono::Utc::now() - chrono::Duration::days(365)).timestamp();
    let backdated = g
        .stripe(
            0,
            &key,
            "/v1/subscriptions",
            &format!("{}&backdate_start_date={year_ago}", item("month")),
            &[],
        )
        .await;
    assert_eq!(
        (backdated.status, backdated.rule()),
        (403, "spend.cap"),
        "{}",
        backdated.body
    );
    assert_eq!(g.upstream.request_count(), 0);
    let monthly = g
        .stripe(0, &key, "/v1/subscriptions", &item("month"), &[])
        .await;
    assert_eq!(monthly.status, 200, "{}", monthly.body);
    assert_eq!(g.spent("subscriber", "stripe").await, (4999, 0));
}

/// Confirmed: `PUT …/tokens/{id}` with `"status": "disabled"` passed without approval.
#[tokio::test]
async fn disabling_a_token_needs_a_human() {
    let upstream = Upstream::builder().start().await.unwrap();
    let g = gate(1, upstream, |b| b).await;
    let key = g
        .agent(
            "minter",
            &[
                "--scope",
                "tokens:create",
                "--label",
                &format!("zones={ZONE}"),
            ],
        )
        .await;
    let expires = (chrono::Utc::now() + chrono::Duration::hours(12))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let token = json!({
        "name": "ci", "status": "disabled", "expires_on": expires,
        "policies": [{"effect": "allow", "resources": {format!("com.cloudflare.api.account.zone.{ZONE}"): "*"},
                      "permission_groups": [{"id": DNS_WRITE}]}],
    });
    let r = g
        .cloudflare(&key, reqwest::Method::PUT, "/user/tokens/tok_1", token)
        .await;
    assert_eq!(
        (r.status, r.code()),
        (403, "approval_required"),
        "{}",
        r.body
    );
    assert!(r.body.to_string().contains("tokens.disable:"), "{}", r.body);
    assert_eq!(g.upstream.request_count(), 0);
}

/// Confirmed: `payment_method_data[card][number]` (with expiry and CVC), a Workers `secret_text` binding's
/// `text`, and keys inside ordinary fields were stored verbatim and served by the admin API. What is stored
/// now is the reviewed list's fields and every detector match replaced by a keyed hash, in the body, the
/// query, the path and the reasons alike; equal secrets still hash equal.
#[tokio::test]
async fn secrets_are_never_stored() {
    let upstream = Upstream::builder().start().await.unwrap();
    let g = gate(1, upstream, |b| b).await;
    let stripe = g.agent("buyer", &["--scope", "billing:spend"]).await;
    let cf = g
        .agent(
            "deployer",
            &[
                "--scope",
                "workers:deploy",
                "--label",
                &format!("accounts={ACCOUNT}"),
            ],
        )
        .await;
    let card = "4242424242424242";
    let live_key = "sk_live_51HxQv2eZvKYlo2C9aBcDeFgHiJkLmNoP";
    let body = format!(
        "amount=2000&currency=usd&payment_method_data[type]=card&payment_method_data[card][number]={card}\
         &payment_method_data[card][exp_month]=12&payment_method_data[card][exp_year]=2031\
         &payment_method_data[card][cvc]=987&metadata[note]={live_key}"
    );
    let paid = g
        .stripe(
            0,
            &stripe,
            "/v1/payment_intents?expand[]=latest_charge",
            &body,
            &[],
        )
        .await;
    assert_eq!(paid.status, 200, "{}", paid.body);
    // The same card again, this time in the query of a write that is refused: still never stored.
    let refused = g
        .stripe(
            0,
            &stripe,
            &format!("/v1/payment_intents?card[number]={card}&card[cvc]=987"),
            "amount=900000&currency=usd",
            &[],
        )
        .await;
    assert_eq!(refused.status, 403, "{}", refused.body);

    let secret_text = "hunter2-database-password-7731";
    let pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY-----";
    let metadata = json!({
        "main_module": "index.js",
        "bindings": [
            {"type": "secret_text", "name": "DB_PASSWORD", "text": secret_text},
            {"type": "plain_text", "name": "SIGNING_KEY", "text": pem},
        ],
    });
    let boundary = "tollgate-boundary-91f";
    let multipart = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\nContent-Type: application/json\r\n\r\n\
         {metadata}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"index.js\"; filename=\"index.js\"\r\n\
         Content-Type: application/javascript+module\r\n\r\nexport default {{}}\r\n--{boundary}--\r\n"
    );
    let deployed = g
        .http
        .put(g.replicas[0].url(&format!(
            "/cloudflare/client/v4/accounts/{ACCOUNT}/workers/scripts/blog"
        )))
        .bearer_auth(&cf)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(multipart)
        .send()
        .await
        .unwrap();
    assert_ne!(deployed.status(), 400);
    // The policy saw everything (the stand-in got the bytes unchanged).
    assert!(
        g.upstream
            .requests()
            .iter()
            .any(|r| String::from_utf8_lossy(&r.body).contains(card))
    );

    let stored: Vec<String> = sqlx::query(
        "SELECT coalesce(input::text, '') || ' ' || coalesce(query, '') || ' ' || path || ' ' || reasons::text
         FROM decisions ORDER BY seq",
    )
    .fetch_all(&g.pool)
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect();
    assert_eq!(stored.len(), 3);
    let all = stored.join("\n");
    for secret in [
        card,
        live_key,
        secret_text,
        "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7",
    ] {
        assert!(!all.contains(secret), "{secret} was stored:\n{all}");
    }
    // The CVC is short enough to occur inside a hash: look for it as a value.
    assert!(
        !all.contains("\"987\"") && !all.contains("=987"),
        "the CVC was stored:\n{all}"
    );
    assert!(all.contains("[redacted hmac-sha256:"), "{all}");
    // Comparable: the card in the first body and in the second query hash to the same value.
    let hash = |text: &str| -> Vec<String> {
        text.match_indices("[redacted hmac-sha256:")
            .map(|(i, _)| text[i..i + 22 + 64].to_string())
            .collect()
    };
    let first: std::collections::BTreeSet<_> = hash(&stored[0]).into_iter().collect();
    let second: std::collections::BTreeSet<_> = hash(&stored[1]).into_iter().collect();
    assert!(
        first.intersection(&second).count() >= 2,
        "card and cvc hash alike:\n{all}"
    );
    // The admin API serves what was stored, nothing more.
    let served = g
        .http
        .get(g.replicas[0].admin_url("/api/decisions?limit=10"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!served.contains(card) && !served.contains(live_key) && !served.contains(secret_text));
    // Nor do the logs hold them.
    let log = g.replicas[0].log();
    assert!(!log.contains(card) && !log.contains(live_key) && !log.contains(secret_text));
}

/// Found by review: a JSON key in another case (`Frequency`, `Status`), or with a character a
/// case-insensitive reader folds to ASCII (`ſ` for `s`), was forwarded while the policy read only the
/// lower-case key.
#[tokio::test]
async fn a_key_in_another_case_is_judged_as_the_provider_reads_it() {
    let upstream = Upstream::builder().start().await.unwrap();
    let g = gate(1, upstream, |b| b).await;
    let key = g
        .agent(
            "planner",
            &[
                "--scope",
                "billing:spend",
                "--scope",
                "tokens:create",
                "--label",
                &format!("zones={ZONE}"),
            ],
        )
        .await;
    let yearly = g
        .cloudflare(
            &key,
            reqwest::Method::POST,
            &format!("/zones/{ZONE}/subscription"),
            json!({"rate_plan": {"id": "business"}, "Frequency": "yearly"}),
        )
        .await;
    assert_eq!(
        (yearly.status, yearly.rule()),
        (403, "spend.cap"),
        "{}",
        yearly.body
    );
    let expires = (chrono::Utc::now() + chrono::Duration::hours(12))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let disable = format!(
        "{{\"name\": \"ci\", \"\u{017F}tatus\": \"disabled\", \"expires_on\": \"{expires}\", \"policies\": [{{\"effect\": \"allow\", \
         \"resources\": {{\"com.cloudflare.api.account.zone.{ZONE}\": \"*\"}}, \"permission_groups\": [{{\"id\": \"{DNS_WRITE}\"}}]}}]}}"
    );
    let r = g
        .http
        .put(g.replicas[0].url("/cloudflare/client/v4/user/tokens/tok_1"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(disable)
        .send()
        .await
        .unwrap();
    let r = answer(r).await;
    assert_eq!(
        (r.status, r.code()),
        (403, "approval_required"),
        "{}",
        r.body
    );
    assert!(r.body.to_string().contains("tokens.disable:"), "{}", r.body);
    assert_eq!(g.upstream.request_count(), 0);
}

/// Found by review: a repeat sent while the first request with the same key was still in flight was
/// called a replay and sent for $0; if the first then failed validation (which Stripe does not save), the
/// repeat ran as a new payment, uncharged. Only a committed first use makes a free replay; an in-flight one
/// makes the repeat wait (409, as Stripe answers), and one with an unknown outcome is charged again.
#[tokio::test]
async fn a_repeat_is_free_only_once_the_first_request_has_committed() {
    let slow = Upstream::builder()
        .json_body(json!({"object": "payment_intent"}))
        .stripe_idempotency()
        .delay(Duration::from_millis(1500))
        .start()
        .await
        .unwrap();
    let g = gate(2, slow, |b| b).await;
    let key = g.agent("payer", &["--scope", "billing:spend"]).await;
    let first = {
        let url = g.replicas[0].url("/stripe/v1/payment_intents");
        let http = g.http.clone();
        let key = key.clone();
        tokio::spawn(async move {
            http.post(url)
                .basic_auth(key, Some(""))
                .header("content-type", "application/x-www-form-urlencoded")
                .header("idempotency-key", "order-9")
                .body(PAY_20)
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = g.pay(1, &key, &[("idempotency-key", "order-9")]).await;
    assert_eq!(
        (during.status, during.code()),
        (409, "idempotency_key_in_use"),
        "{}",
        during.body
    );
    assert_eq!(first.await.unwrap(), 200);
    let after = g.pay(1, &key, &[("idempotency-key", "order-9")]).await;
    assert_eq!(after.status, 200, "{}", after.body);
    assert_eq!(after.headers["idempotent-replayed"], "true");
    assert_eq!(g.spent("payer", "stripe").await, (2000, 0));
    assert_eq!(g.upstream.request_count(), 2);

    // A first use whose outcome is unknown (a 5xx): the SDK's retries with the same key are the same call
    // (Stripe acts on a key at most once), so each takes the flagged reservation over: the call stays
    // reserved, flagged, once — however many attempts.
    let failing = Upstream::builder()
        .status(500)
        .json_body(json!({"error": {"type": "api_error", "message": "boom"}}))
        .start()
        .await
        .unwrap();
    let g = gate(1, failing, |b| b).await;
    let key = g.agent("payer", &["--scope", "billing:spend"]).await;
    for _ in 0..3 {
        let r = g.pay(0, &key, &[("idempotency-key", "order-10")]).await;
        assert_eq!(r.status, 500, "{}", r.body);
    }
    assert_eq!(
        g.spent("payer", "stripe").await,
        (0, 2000),
        "one call, reserved and flagged once"
    );
    let flagged: Vec<(String, bool)> =
        sqlx::query_as("SELECT state, flagged FROM spend_reservations ORDER BY created_at")
            .fetch_all(&g.pool)
            .await
            .unwrap();
    assert_eq!(
        flagged,
        vec![
            ("released".to_string(), true),
            ("released".to_string(), true),
            ("reserved".to_string(), true)
        ],
        "the latest attempt carries the call's money"
    );

    // Past the provider's replay window the key may be forgotten, so a retry may run anew while the first
    // attempt also ran: it is charged again.
    let failing = Upstream::builder()
        .status(500)
        .json_body(json!({"error": {"type": "api_error", "message": "boom"}}))
        .start()
        .await
        .unwrap();
    let g = gate(1, failing, |b| b.stripe("idempotency_window_seconds = 1")).await;
    let key = g.agent("payer", &["--scope", "billing:spend"]).await;
    let r = g.pay(0, &key, &[("idempotency-key", "order-11")]).await;
    assert_eq!(r.status, 500, "{}", r.body);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = g.pay(0, &key, &[("idempotency-key", "order-11")]).await;
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(
        g.spent("payer", "stripe").await,
        (0, 4000),
        "two possible executions, both reserved and flagged"
    );
}

/// Found by review: `Stripe_Account` (which Rack reads as `Stripe-Account`) was forwarded unjudged, and a
/// GET carrying a form body was forwarded with it.
#[tokio::test]
async fn headers_and_bodies_the_provider_may_read_another_way_are_refused() {
    let upstream = Upstream::builder().start().await.unwrap();
    let g = gate(1, upstream, |b| b).await;
    let key = g.agent("payer", &["--scope", "billing:spend"]).await;
    let r = g.pay(0, &key, &[("stripe_account", "acct_evil")]).await;
    assert_eq!(
        (r.status, r.code()),
        (400, "request_malformed"),
        "{}",
        r.body
    );
    let (status, body) = g
        .raw(
            &format!(
                "GET /stripe/v1/customers HTTP/1.1\r\nHost: t\r\nAuthorization: Basic {}\r\n\
                 Content-Type: application/x-www-form-urlencoded\r\nConnection: close\r\nContent-Length: {{length}}\r\n\r\n",
                basic(&key)
            ),
            "amount=999999",
        )
        .await;
    assert_eq!(
        (status, body["tollgate"]["code"].as_str()),
        (400, Some("request_malformed")),
        "{body}"
    );
    assert_eq!(g.upstream.request_count(), 0);
}
