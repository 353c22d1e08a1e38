//! The gating data path end to end: the real `tollgate` binary, a real Postgres database of its own per test,
//! and a stand-in upstream that records what it received.

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::{PgPool, Row};
use tollgate_tests::sockets::tcp_sockets;
use tollgate_tests::tollgate::{
    ADMIN_TOKEN, CLOUDFLARE_SECRET, STRIPE_SECRET, Tollgate, policy_dir_with, raw_request,
};
use tollgate_tests::{TestDatabase, Upstream};

/// The zone the test agent may change (its `zones` label), as the bundled library's placement rules require.
const ZONE: &str = "023e105f4ecef8ad9ca31a8372d0c353";

/// One test's world: its database, its upstream, a running tollgate and an agent key.
struct World {
    db: TestDatabase,
    pool: PgPool,
    upstream: Upstream,
    gate: Tollgate,
    key: String,
    http: reqwest::Client,
}

async fn world_with(
    upstream: Upstream,
    configure: impl FnOnce(
        tollgate_tests::tollgate::TollgateBuilder,
    ) -> tollgate_tests::tollgate::TollgateBuilder,
) -> World {
    let db = TestDatabase::create().await.expect("test database");
    let gate = configure(Tollgate::builder(db.url(), &upstream.url()))
        .start()
        .await
        .expect("tollgate starts");
    let key = gate
        .create_agent(
            "deployer",
            &[
                "--team",
                "web",
                "--scope",
                "dns:write",
                "--scope",
                "billing:spend",
                "--label",
                "env=dev",
                "--label",
                &format!("zones={ZONE}"),
            ],
        )
        .await
        .expect("agent");
    let pool = db.pool().await.expect("pool");
    World {
        db,
        pool,
        upstream,
        gate,
        key,
        http: reqwest::Client::new(),
    }
}

/// A world whose tollgate judges with a bundle of its own (`rego` as main.rego), on a default upstream; the
/// directory lives as long as the returned handle.
async fn world_with_policy(
    rego: &str,
    configure: impl FnOnce(
        tollgate_tests::tollgate::TollgateBuilder,
    ) -> tollgate_tests::tollgate::TollgateBuilder,
) -> (World, tempfile::TempDir) {
    let dir = policy_dir_with(rego).expect("policy dir");
    let upstream = Upstream::builder().start().await.expect("upstream");
    let w = world_with(upstream, |b| configure(b.policy_dir(dir.path()))).await;
    (w, dir)
}

async fn world() -> World {
    world_with(Upstream::builder().start().await.expect("upstream"), |b| b).await
}

impl World {
    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(self.gate.url(path)).bearer_auth(&self.key)
    }

    fn delete(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.delete(self.gate.url(path)).bearer_auth(&self.key)
    }

    /// A read through the live policy still goes through (asserted after refusals of writes).
    async fn assert_reads_pass(&self) {
        let r = self
            .get("/cloudflare/client/v4/zones")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    fn post_json(&self, path: &str, body: &str) -> reqwest::RequestBuilder {
        self.http
            .post(self.gate.url(path))
            .bearer_auth(&self.key)
            .header("content-type", "application/json")
            .body(body.to_string())
    }

    async fn decision(&self, id: &str) -> Option<sqlx::postgres::PgRow> {
        let id: uuid::Uuid = id.parse().expect("decision id is a uuid");
        sqlx::query("SELECT * FROM decisions WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .expect("query decisions")
    }

    /// Waits (bounded) for the upstream outcome row of a decision; outcomes are written after the response.
    async fn outcome(&self, id: &str) -> sqlx::postgres::PgRow {
        let id: uuid::Uuid = id.parse().expect("uuid");
        for _ in 0..100 {
            if let Some(row) = sqlx::query("SELECT * FROM decision_outcomes WHERE decision_id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .expect("query outcomes")
            {
                return row;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no outcome recorded for {id}");
    }

    /// Asserts the refusal's status, envelope code and that its decision is durably recorded; returns the body.
    async fn expect_refusal(&self, response: reqwest::Response, status: u16, code: &str) -> Value {
        assert_eq!(response.status().as_u16(), status, "status for {code}");
        let header = response
            .headers()
            .get("tollgate-decision")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .expect("every response carries Tollgate-Decision");
        let body: Value = response.json().await.expect("JSON refusal");
        assert_eq!(body["tollgate"]["code"], code, "{body}");
        assert_eq!(body["tollgate"]["decision_id"], header.as_str());
        let row = self
            .decision(&header)
            .await
            .expect("the refusal has a decision record");
        assert_eq!(row.get::<Option<String>, _>("code").as_deref(), Some(code));
        body
    }
}

#[tokio::test]
async fn allowed_read_reaches_upstream_with_injected_credential_and_recorded_decision() {
    let w = world().await;
    let response = w
        .get("/cloudflare/client/v4/zones?page=2&per_page=50")
        .header("Tollgate-Run", "run-42")
        .header("Tollgate-On-Behalf-Of", "alice@example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["x-upstream"],
        "stand-in",
        "the upstream's own response streams back"
    );
    let id = response.headers()["tollgate-decision"]
        .to_str()
        .unwrap()
        .to_string();

    let seen = w.upstream.requests();
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    assert_eq!(req.method, "GET");
    assert_eq!(req.path_and_query, "/client/v4/zones?page=2&per_page=50");
    assert_eq!(
        req.header("authorization"),
        Some(format!("Bearer {CLOUDFLARE_SECRET}").as_str())
    );
    for (name, value) in &req.headers {
        assert!(
            !value.contains(&w.key),
            "agent key leaked upstream in {name}"
        );
        assert!(!name.starts_with("tollgate-"), "{name} must be stripped");
    }

    let row = w.decision(&id).await.expect("decision row");
    assert_eq!(row.get::<String, _>("outcome"), "allow");
    assert_eq!(row.get::<String, _>("action"), "cloudflare.zone.read");
    assert_eq!(row.get::<String, _>("risk"), "read");
    assert_eq!(row.get::<String, _>("path"), "/client/v4/zones");
    assert_eq!(
        row.get::<Option<String>, _>("agent_name").as_deref(),
        Some("deployer")
    );
    assert_eq!(
        row.get::<Option<String>, _>("run_id").as_deref(),
        Some("run-42")
    );
    assert_eq!(
        row.get::<Option<String>, _>("on_behalf_of").as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(
        row.get::<Option<String>, _>("policy_revision")
            .map(|r| r.len()),
        Some(16)
    );
    let input: Value = row.get("input");
    assert_eq!(input["agent"]["team"], "web");
    assert_eq!(input["request"]["query"]["page"], json!(["2"]));
    let outcome = w.outcome(&id).await;
    assert_eq!(outcome.get::<Option<i32>, _>("upstream_status"), Some(200));
}

#[tokio::test]
async fn the_decision_row_exists_when_the_upstream_receives_the_request() {
    let db = TestDatabase::create().await.unwrap();
    let probe_pool = db.pool().await.unwrap();
    let upstream = Upstream::builder()
        .probe(move |req| {
            let pool = probe_pool.clone();
            async move {
                let path = req
                    .path_and_query
                    .split('?')
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM decisions WHERE outcome = 'allow' AND path = $1",
                )
                .bind(path)
                .fetch_one(&pool)
                .await
                .unwrap_or(-1);
                json!({"allow_rows": n})
            }
        })
        .start()
        .await
        .unwrap();
    let gate = Tollgate::builder(db.url(), &upstream.url())
        .start()
        .await
        .unwrap();
    let key = gate.create_agent("probe", &[]).await.unwrap();
    let http = reqwest::Client::new();
    for path in [
        "/client/v4/zones/023e105f4ecef8ad9ca31a8372d0c353/dns_records",
        "/client/v4/accounts",
    ] {
        let r = http
            .get(gate.url(&format!("/cloudflare{path}")))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let seen = upstream.requests();
    assert_eq!(seen.len(), 2);
    for req in seen {
        assert_eq!(
            req.probe,
            Some(json!({"allow_rows": 1})),
            "{}",
            req.path_and_query
        );
    }
}

#[tokio::test]
async fn stripe_basic_auth_agent_key_and_form_body_are_forwarded_with_the_real_key() {
    let w = world().await;
    let body = "amount=1999&currency=usd&auto_advance=false&metadata[order]=42";
    let response = w
        .http
        .post(w.gate.url("/stripe/v1/invoices"))
        .basic_auth(&w.key, Some(""))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("Idempotency-Key", "idem-1")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let req = &w.upstream.requests()[0];
    assert_eq!(req.path_and_query, "/v1/invoices");
    assert_eq!(
        req.body.as_ref(),
        body.as_bytes(),
        "the body is forwarded byte for byte"
    );
    // The agent's key is forwarded namespaced per agent (two agents never share a key at Stripe).
    let forwarded = req.header("idempotency-key").unwrap_or_default();
    assert!(
        forwarded.starts_with("tollgate-") && forwarded.len() == "tollgate-".len() + 64,
        "{forwarded}"
    );
    use base64::Engine as _;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{STRIPE_SECRET}:"))
    );
    assert_eq!(req.header("authorization"), Some(expected.as_str()));
    let id = response.headers()["tollgate-decision"]
        .to_str()
        .unwrap()
        .to_string();
    let row = w.decision(&id).await.unwrap();
    assert_eq!(row.get::<String, _>("action"), "stripe.invoice.create");
    let input: Value = row.get("input");
    assert_eq!(input["request"]["body"]["metadata"]["order"], "42");
}

#[tokio::test]
async fn forwarded_path_is_the_canonical_path_that_was_classified() {
    let w = world().await;
    // %7A is 'z' and %5F is '_': both canonicalize to the literal characters before classification.
    let head = format!(
        "GET /cloudflare/client/v4/%7Aones/abc/dns%5Frecords HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        w.key
    );
    let (status, _) = raw_request(w.gate.proxy_addr(), &head, b"").await.unwrap();
    assert_eq!(status, 200);
    let forwarded = w.upstream.requests()[0].path_and_query.clone();
    assert_eq!(forwarded, "/client/v4/zones/abc/dns_records");
    let path: String = sqlx::query_scalar("SELECT path FROM decisions WHERE outcome = 'allow'")
        .fetch_one(&w.pool)
        .await
        .unwrap();
    assert_eq!(path, forwarded);
    let action: String = sqlx::query_scalar("SELECT action FROM decisions WHERE outcome = 'allow'")
        .fetch_one(&w.pool)
        .await
        .unwrap();
    assert_eq!(action, "cloudflare.dns.read");
}

#[tokio::test]
async fn malformed_requests_are_refused_and_recorded_never_forwarded() {
    let w = world().await;
    let raw_cases = [
        ("GET", "/cloudflare/client/v4/zones/%2e%2e/accounts", "", ""),
        ("GET", "/cloudflare/client/v4/zones/../accounts", "", ""),
        (
            "GET",
            "/cloudflare/client/v4/zones/a%2fb/dns_records",
            "",
            "",
        ),
        ("GET", "/cloudflare/client/v4/zones/a%5cb", "", ""),
        ("GET", "/cloudflare/client/v4/zones/a%00b", "", ""),
        (
            "POST",
            "/cloudflare/client/v4/zones/z/dns_records",
            "X-HTTP-Method-Override: DELETE\r\n",
            "",
        ),
        (
            "POST",
            "/cloudflare/client/v4/zones/z/dns_records",
            "Content-Type: application/json\r\nContent-Encoding: gzip\r\n",
            "{}",
        ),
        (
            "POST",
            "/cloudflare/client/v4/zones/z/dns_records",
            "Content-Type: application/json\r\n",
            r#"{"type":"A","type":"NS"}"#,
        ),
        (
            "POST",
            "/stripe/v1/payment_intents",
            "Content-Type: application/x-www-form-urlencoded\r\n",
            "amount=1&amount=2",
        ),
        ("GET", "/nowhere/v1/x", "", ""),
    ];
    for (method, path, headers, body) in raw_cases {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
            w.key,
            body.len()
        );
        let (status, text) = raw_request(w.gate.proxy_addr(), &head, body.as_bytes())
            .await
            .unwrap();
        assert_eq!(status, 400, "{method} {path} {headers}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["tollgate"]["code"], "request_malformed", "{text}");
        let id = v["tollgate"]["decision_id"].as_str().unwrap().to_string();
        assert!(
            w.decision(&id).await.is_some(),
            "refusal of {path} recorded"
        );
    }
    assert_eq!(
        w.upstream.request_count(),
        0,
        "nothing malformed reaches the provider"
    );

    // Refusals keep the provider's envelope.
    let r = w
        .post_json(
            "/cloudflare/client/v4/zones/z/dns_records",
            r#"{"a":1,"a":2}"#,
        )
        .send()
        .await
        .unwrap();
    let body = w.expect_refusal(r, 400, "request_malformed").await;
    assert_eq!(body["success"], false);
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("duplicate")
    );
}

#[tokio::test]
async fn unauthenticated_agents_are_refused_and_revocation_reaches_the_proxy_within_a_second() {
    let w = world().await;
    let cases = [
        None,
        Some("tg_0000000000000000000000000000000000000000".to_string()),
        Some("not-a-key".to_string()),
    ];
    for key in cases {
        let mut req = w.http.get(w.gate.url("/cloudflare/client/v4/zones"));
        if let Some(k) = &key {
            req = req.bearer_auth(k);
        }
        let r = req.send().await.unwrap();
        let body = w.expect_refusal(r, 401, "agent_unauthenticated").await;
        assert!(body["errors"].is_array(), "cloudflare envelope");
    }
    let r = w
        .http
        .get(w.gate.url("/stripe/v1/customers"))
        .basic_auth("tg_wrong", Some(""))
        .send()
        .await
        .unwrap();
    let body = w.expect_refusal(r, 401, "agent_unauthenticated").await;
    assert_eq!(
        body["error"]["type"], "invalid_request_error",
        "stripe envelope"
    );

    // The key works, is cached, then is revoked through the CLI (another process, like another replica).
    assert_eq!(
        w.get("/cloudflare/client/v4/zones")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let (ok, _, err) = w.gate.cli(&["agents", "revoke", "deployer"]).await.unwrap();
    assert!(ok, "{err}");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let r = w.get("/cloudflare/client/v4/zones").send().await.unwrap();
    w.expect_refusal(r, 401, "agent_unauthenticated").await;

    // Expiry: an agent whose key expired is refused even while cached (its expiry is cached with it, and no
    // agent row changes in between that would clear the cache).
    let expires = (chrono::Utc::now() + chrono::Duration::seconds(3))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let key = w
        .gate
        .create_agent("short-lived", &["--expires", &expires])
        .await
        .unwrap();
    let ok = w
        .http
        .get(w.gate.url("/cloudflare/client/v4/zones"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let expires_at = chrono::DateTime::parse_from_rfc3339(&expires).unwrap();
    while chrono::Utc::now() <= expires_at + chrono::Duration::milliseconds(200) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = w
        .http
        .get(w.gate.url("/cloudflare/client/v4/zones"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    w.expect_refusal(r, 401, "agent_unauthenticated").await;
    assert_eq!(w.upstream.request_count(), 2);
}

#[tokio::test]
async fn policy_denials_and_approvals_are_refused_with_their_rule() {
    let w = world().await;
    let r = w
        .post_json("/cloudflare/client/v4/zones/z/firewall/rules", "{}")
        .send()
        .await
        .unwrap();
    let body = w.expect_refusal(r, 403, "policy_denied").await;
    assert_eq!(body["tollgate"]["rule"], "scopes.unknown_route");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("scopes.unknown_route")
    );

    // The bundled library asks a human before a DNS record is deleted.
    let r = w
        .http
        .delete(w.gate.url(&format!(
            "/cloudflare/client/v4/zones/{ZONE}/dns_records/372e67954025e0ba6aaa6d586b9e0b59"
        )))
        .bearer_auth(&w.key)
        .send()
        .await
        .unwrap();
    let body = w.expect_refusal(r, 403, "approval_required").await;
    assert_eq!(body["tollgate"]["rule"], "impact.dns_delete");
    assert_eq!(w.upstream.request_count(), 0);

    let outcomes: Vec<String> = sqlx::query_scalar("SELECT outcome FROM decisions ORDER BY at")
        .fetch_all(&w.pool)
        .await
        .unwrap();
    assert_eq!(outcomes, vec!["deny", "approve"]);
}

#[tokio::test]
async fn an_allowed_write_is_forwarded_once_with_its_body() {
    let w = world().await;
    let body = r#"{"type":"A","name":"www.example.com","content":"198.51.100.4","ttl":3600,"proxied":true}"#;
    let r = w
        .post_json(
            "/cloudflare/client/v4/zones/023e105f4ecef8ad9ca31a8372d0c353/dns_records",
            body,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = w.upstream.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body.as_ref(), body.as_bytes());
    assert_eq!(seen[0].header("content-type"), Some("application/json"));
    let row: (String, Value) = sqlx::query_as("SELECT action, input::jsonb FROM decisions")
        .fetch_one(&w.pool)
        .await
        .unwrap();
    assert_eq!(row.0, "cloudflare.dns.create");
    assert_eq!(
        row.1["action"]["params"]["zone_id"],
        "023e105f4ecef8ad9ca31a8372d0c353"
    );
    assert_eq!(row.1["request"]["body"]["ttl"], 3600);
}

#[tokio::test]
async fn body_over_the_limit_is_refused_with_413() {
    let upstream = Upstream::builder().start().await.unwrap();
    let w = world_with(upstream, |b| b.server("body_limit_bytes = 1024")).await;
    let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(2048));
    let r = w
        .post_json("/cloudflare/client/v4/zones/z/dns_records", &big)
        .send()
        .await
        .unwrap();
    w.expect_refusal(r, 413, "body_too_large").await;
    assert_eq!(w.upstream.request_count(), 0);
}

#[tokio::test]
async fn upstream_failures_map_to_502_and_504_and_are_recorded_as_outcomes() {
    // Slow upstream: 504 and the outcome is flagged (the provider may have acted).
    let slow = Upstream::builder()
        .delay(Duration::from_secs(3))
        .start()
        .await
        .unwrap();
    let w = world_with(slow, |b| b.server("upstream_timeout_ms = 300")).await;
    let r = w.get("/cloudflare/client/v4/zones").send().await.unwrap();
    assert_eq!(
        r.headers()["x-should-retry"],
        "false",
        "the provider may have acted: no automatic retry"
    );
    let body = w
        .expect_refusal_after_allow(r, 504, "upstream_timeout")
        .await;
    let outcome = w
        .outcome(body["tollgate"]["decision_id"].as_str().unwrap())
        .await;
    assert!(outcome.get::<bool, _>("flagged"));
    assert_eq!(
        outcome.get::<Option<String>, _>("error").as_deref(),
        Some("timeout")
    );

    // Unreachable upstream (a port nothing listens on): 502, not flagged (never delivered).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let upstream = Upstream::builder().start().await.unwrap();
    let w = world_with(upstream, |b| b.stripe_upstream(&dead)).await;
    let r = w
        .http
        .get(w.gate.url("/stripe/v1/customers"))
        .bearer_auth(&w.key)
        .send()
        .await
        .unwrap();
    assert!(
        r.headers().get("x-should-retry").is_none(),
        "never delivered: a retry is safe"
    );
    let body = w.expect_refusal_after_allow(r, 502, "upstream_error").await;
    assert_eq!(body["error"]["type"], "api_error");
    let outcome = w
        .outcome(body["tollgate"]["decision_id"].as_str().unwrap())
        .await;
    assert!(!outcome.get::<bool, _>("flagged"));
}

impl World {
    /// Upstream failures happen after an allow was recorded: the record says allow, the outcome says why.
    async fn expect_refusal_after_allow(
        &self,
        response: reqwest::Response,
        status: u16,
        code: &str,
    ) -> Value {
        assert_eq!(response.status().as_u16(), status);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["tollgate"]["code"], code);
        let row = self
            .decision(body["tollgate"]["decision_id"].as_str().unwrap())
            .await
            .unwrap();
        assert_eq!(row.get::<String, _>("outcome"), "allow");
        body
    }
}

#[tokio::test]
async fn a_policy_too_slow_for_the_inline_budget_is_decided_on_the_pool_and_one_past_its_limit_refuses()
 {
    // GETs decide at once (inline); a POST counts through a range, far beyond the 1 ms inline budget, so it is
    // evaluated again on the blocking pool and decided there; a DELETE counts past the whole time limit.
    let (w, _dir) = world_with_policy(
        "package tollgate\n\n\
         slow := count([x | some x in numbers.range(1, 100000); x % 7 == 0]) if input.request.method == \"POST\"\n\
         endless := count([x | some x in numbers.range(1, 5000); some y in numbers.range(1, 5000); x != y]) if input.request.method == \"DELETE\"\n\
         decision := {\"outcome\": \"allow\"} if input.request.method == \"GET\"\n\
         decision := {\"outcome\": \"deny\", \"reasons\": [{\"rule\": \"slow.count\", \"message\": sprintf(\"%d\", [slow])}]} if input.request.method == \"POST\"\n\
         decision := {\"outcome\": \"allow\"} if { input.request.method == \"DELETE\"; endless > 0 }\n",
        |b| b.policy("timeout_ms = 2000"),
    )
    .await;
    let r = w
        .post_json("/cloudflare/client/v4/zones/z/dns_records", "{}")
        .send()
        .await
        .unwrap();
    let body = w.expect_refusal(r, 403, "policy_denied").await;
    assert_eq!(body["tollgate"]["rule"], "slow.count", "{body}");
    assert!(body.to_string().contains("14285"), "{body}");
    let r = w
        .delete("/cloudflare/client/v4/zones/z/dns_records/r")
        .send()
        .await
        .unwrap();
    w.expect_refusal(r, 503, "policy_unavailable").await;
    assert_eq!(w.upstream.request_count(), 0);
    w.assert_reads_pass().await;
}

#[tokio::test]
async fn a_policy_without_a_well_formed_decision_refuses_with_503() {
    // Defined for reads (so the bundle loads), undefined for writes, malformed for DELETE.
    let (w, _dir) = world_with_policy(
        "package tollgate\n\n\
         decision := {\"outcome\": \"allow\"} if input.request.method == \"GET\"\n\
         decision := {\"outcome\": \"maybe\"} if input.request.method == \"DELETE\"\n",
        |b| b,
    )
    .await;
    let r = w
        .post_json("/cloudflare/client/v4/zones/z/dns_records", "{}")
        .send()
        .await
        .unwrap();
    w.expect_refusal(r, 503, "policy_unavailable").await;
    let r = w
        .delete("/cloudflare/client/v4/zones/z/dns_records/r")
        .send()
        .await
        .unwrap();
    w.expect_refusal(r, 503, "policy_unavailable").await;
    assert_eq!(w.upstream.request_count(), 0);
    w.assert_reads_pass().await;
}

#[tokio::test]
async fn a_store_outage_refuses_with_503_and_forwards_nothing() {
    let w = world().await;
    assert_eq!(
        w.get("/cloudflare/client/v4/zones")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Take the database away: no new connections, existing ones terminated.
    let admin = sqlx::PgPool::connect(&w.db.url().replace(w.db.name(), "postgres"))
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE \"{}\" WITH ALLOW_CONNECTIONS false",
        w.db.name()
    )))
    .execute(&admin)
    .await
    .unwrap();
    w.pool.close().await;
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
        .bind(w.db.name())
        .execute(&admin)
        .await
        .unwrap();
    for path in [
        "/cloudflare/client/v4/zones",
        "/cloudflare/client/v4/accounts",
    ] {
        let r = w.get(path).send().await.unwrap();
        assert_eq!(r.status(), 503);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["tollgate"]["code"], "store_unavailable", "{body}");
    }
    assert_eq!(
        w.upstream.request_count(),
        1,
        "nothing was forwarded during the outage"
    );
    // Readiness reports it.
    let ready = w
        .http
        .get(w.gate.admin_url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE \"{}\" WITH ALLOW_CONNECTIONS true",
        w.db.name()
    )))
    .execute(&admin)
    .await
    .unwrap();
}

#[tokio::test]
async fn freeze_refuses_all_agent_traffic_until_lifted() {
    let w = world().await;
    let freeze = w
        .http
        .post(w.gate.admin_url("/api/freeze"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(freeze.status(), 200);
    let r = w.get("/cloudflare/client/v4/zones").send().await.unwrap();
    w.expect_refusal(r, 503, "frozen").await;
    let lift = w
        .http
        .delete(w.gate.admin_url("/api/freeze"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(lift.status(), 200);
    assert_eq!(
        w.get("/cloudflare/client/v4/zones")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn admin_listener_serves_health_metrics_and_a_token_guarded_api() {
    let w = world().await;
    assert_eq!(
        w.get("/cloudflare/client/v4/zones")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let _ = w
        .post_json("/cloudflare/client/v4/zones/z/nope", "{}")
        .send()
        .await
        .unwrap();
    let h = &w.http;
    assert_eq!(
        h.get(w.gate.admin_url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        h.get(w.gate.admin_url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let metrics = h
        .get(w.gate.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains(r#"tollgate_requests_total{action="cloudflare.zone.read",outcome="allow",provider="cloudflare"} 1"#), "{metrics}");
    assert!(metrics.contains(
        r#"tollgate_requests_total{action="unknown",outcome="deny",provider="cloudflare"} 1"#
    ));
    assert!(metrics.contains("tollgate_request_duration_seconds_bucket"));
    assert!(
        metrics
            .contains(r#"tollgate_refusals_total{code="policy_denied",provider="cloudflare"} 1"#)
    );
    // Every configured provider's refusal series exists from the start.
    assert!(
        metrics.contains(r#"tollgate_refusals_total{code="policy_denied",provider="stripe"} 0"#)
    );

    assert_eq!(
        h.get(w.gate.admin_url("/api/decisions"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        h.get(w.gate.admin_url("/api/decisions"))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let list: Value = h
        .get(w.gate.admin_url("/api/decisions?limit=1"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["decisions"].as_array().unwrap().len(), 1);
    assert_eq!(list["decisions"][0]["outcome"], "deny");
    let cursor = list["next_cursor"].as_str().unwrap();
    let next: Value = h
        .get(
            w.gate
                .admin_url(&format!("/api/decisions?limit=1&cursor={cursor}")),
        )
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(next["decisions"][0]["outcome"], "allow");
    let id = next["decisions"][0]["id"].as_str().unwrap();
    let one: Value = h
        .get(w.gate.admin_url(&format!("/api/decisions/{id}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["action"], "cloudflare.zone.read");
    assert_eq!(one["input"]["agent"]["name"], "deployer");
}

#[tokio::test]
async fn secrets_never_appear_in_records_logs_or_cli_output() {
    let w = world().await;
    let cert = r#"{"certificate":"-----BEGIN CERTIFICATE-----","private_key":"-----BEGIN PRIVATE KEY-----secret-material"}"#;
    let _ = w
        .post_json("/cloudflare/client/v4/zones/z/custom_certificates", cert)
        .send()
        .await
        .unwrap();
    let _ = w.get("/cloudflare/client/v4/zones").send().await.unwrap();
    let _ = w
        .http
        .get(w.gate.url("/stripe/v1/customers"))
        .basic_auth(&w.key, Some(""))
        .send()
        .await
        .unwrap();
    let rows: Vec<String> = sqlx::query_scalar("SELECT d::text FROM decisions d")
        .fetch_all(&w.pool)
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    let (_, listing, _) = w.gate.cli(&["agents", "list", "--json"]).await.unwrap();
    let (_, decisions, _) = w.gate.cli(&["decisions", "--json"]).await.unwrap();
    let everything = format!(
        "{}\n{}\n{}\n{}",
        rows.join("\n"),
        w.gate.log(),
        listing,
        decisions
    );
    for secret in [
        w.key.as_str(),
        CLOUDFLARE_SECRET,
        STRIPE_SECRET,
        ADMIN_TOKEN,
        "secret-material",
    ] {
        assert!(!everything.contains(secret), "a secret leaked");
    }
    assert!(rows.iter().any(|r| r.contains("[redacted hmac-sha256:")));
}

#[tokio::test]
async fn audit_chain_verifies_and_detects_tampering() {
    let w = world().await;
    for _ in 0..5 {
        assert_eq!(
            w.get("/cloudflare/client/v4/zones")
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    // The records are spread over the process's writers (two by default), each with its own chain.
    let (ok, out, err) = w.gate.cli(&["audit", "verify", "--json"]).await.unwrap();
    assert!(ok, "{out}{err}");
    let reports: serde_json::Value = serde_json::from_str(&out).unwrap();
    let reports = reports.as_array().unwrap();
    let total: u64 = reports.iter().map(|r| r["records"].as_u64().unwrap()).sum();
    assert_eq!(total, 5, "{out}");
    assert!(
        reports
            .iter()
            .all(|r| r["problems"].as_array().unwrap().is_empty() && r["status"] == "open"),
        "{out}"
    );
    // Tamper: the append-only trigger refuses updates, so an attacker with table rights must drop it first.
    sqlx::query("ALTER TABLE decisions DISABLE TRIGGER decisions_append_only")
        .execute(&w.pool)
        .await
        .unwrap();
    let (writer, seq): (uuid::Uuid, i64) =
        sqlx::query_as("UPDATE decisions SET outcome = 'deny' WHERE id = (SELECT id FROM decisions ORDER BY at OFFSET 2 LIMIT 1) RETURNING writer_id, seq")
            .fetch_one(&w.pool)
            .await
            .unwrap();
    let (ok, out, _) = w.gate.cli(&["audit", "verify"]).await.unwrap();
    assert!(!ok);
    assert!(out.contains(&format!("writer {writer}: ")), "{out}");
    assert!(
        out.contains(&format!(
            "problem: seq {seq}: hash does not match the record's contents"
        )),
        "{out}"
    );
    assert!(out.contains("1 broken"), "{out}");
}

#[tokio::test]
async fn decisions_are_append_only() {
    let w = world().await;
    assert_eq!(
        w.get("/cloudflare/client/v4/zones")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let update = sqlx::query("UPDATE decisions SET outcome = 'deny'")
        .execute(&w.pool)
        .await;
    assert!(update.is_err());
    let delete = sqlx::query("DELETE FROM decisions").execute(&w.pool).await;
    assert!(delete.is_err());
}

#[tokio::test]
async fn sigterm_drains_readiness_first_then_stops() {
    let upstream = Upstream::builder().start().await.unwrap();
    let w = world_with(upstream, |b| b.server("shutdown_drain_ms = 1500")).await;
    assert_eq!(
        w.http
            .get(w.gate.admin_url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let pid = w.gate.pid().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready = w
        .http
        .get(w.gate.admin_url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["draining"], true);
    // Still serving while draining: the load balancer is the one that stops sending.
    let served = w.get("/cloudflare/client/v4/zones").send().await.unwrap();
    assert_eq!(served.status(), 200);
    let id: uuid::Uuid = served.headers()["tollgate-decision"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        w.http
            .get(w.gate.admin_url("/healthz"))
            .send()
            .await
            .is_err(),
        "stopped after the drain"
    );
    // What the audit writers had queued was written before the process stopped.
    let status: Option<i32> =
        sqlx::query_scalar("SELECT upstream_status FROM decision_outcomes WHERE decision_id = $1")
            .bind(id)
            .fetch_one(&w.pool)
            .await
            .unwrap();
    assert_eq!(status, Some(200));
}

/// A TCP front for the test database, however the harness reaches it (a Unix socket for the throwaway
/// cluster, TCP for `DATABASE_URL`): tollgate must see a TCP host for its TCP_NODELAY relay to be used.
/// Counts the connections it carried.
async fn tcp_front(db_url: &str) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use sqlx::postgres::PgConnectOptions;
    let options: PgConnectOptions = db_url.parse().expect("database URL");
    // A Unix socket directory comes as `?host=/dir` (sqlx: the socket) or as a host starting with '/'.
    let host = match options.get_socket() {
        Some(dir) => dir.to_string_lossy().into_owned(),
        None => options.get_host().to_string(),
    };
    let port = options.get_port();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front = listener.local_addr().unwrap().port();
    let carried = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = carried.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let (host, port) = (host.clone(), port);
            tokio::spawn(async move {
                if host.starts_with('/') {
                    let path = format!("{host}/.s.PGSQL.{port}");
                    if let Ok(mut server) = tokio::net::UnixStream::connect(path).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                } else if let Ok(mut server) =
                    tokio::net::TcpStream::connect((host.as_str(), port)).await
                {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    (front, carried)
}

#[tokio::test]
async fn postgres_over_tcp_goes_through_the_nodelay_relay_with_tls_when_the_server_offers_it() {
    let db = TestDatabase::create().await.expect("test database");
    let pool = db.pool().await.expect("pool");
    let server_tls: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&pool)
        .await
        .unwrap();
    let (front, carried) = tcp_front(db.url()).await;
    // Loopback with an explicit sslmode: the one loopback case that is not sent in the clear, so it takes
    // the relay. Where the server offers TLS, `require` makes tollgate fail to start unless TLS works end to
    // end through the relay; the throwaway cluster has no certificate, so there `prefer` connects in the clear.
    let mode = if server_tls == "on" {
        "require"
    } else {
        "prefer"
    };
    let url = format!(
        "postgres://postgres@127.0.0.1:{front}/{}?sslmode={mode}",
        db.name()
    );
    let upstream = Upstream::builder().start().await.expect("upstream");
    let gate = Tollgate::builder(&url, &upstream.url())
        .start()
        .await
        .expect("tollgate starts with its store behind the relay");
    let key = gate
        .create_agent("reader", &[])
        .await
        .expect("agent created through the relay");

    let r = reqwest::Client::new()
        .get(gate.url("/cloudflare/client/v4/zones"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", gate.log());
    let id: uuid::Uuid = r.headers()["tollgate-decision"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM decisions WHERE id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        recorded, 1,
        "the decision went to Postgres through the relay"
    );
    assert!(
        carried.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "tollgate's connections crossed the TCP front"
    );

    // The relay's socket is bound in tollgate's private directory, and sqlx's connections are connected to it
    // (the listener is state 01; each accepted connection shows the same path with state 03, connected).
    // Were sqlx connecting to the server directly, only the listener would be there.
    let pid = gate.pid().expect("tollgate pid");
    let unix = std::fs::read_to_string(format!("/proc/{pid}/net/unix")).unwrap();
    let relay_path = format!("/.s.PGSQL.{front}");
    let relay_sockets: Vec<Vec<&str>> = unix
        .lines()
        .filter(|l| l.contains("/tollgate-pg-") && l.ends_with(&relay_path))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(
        relay_sockets.iter().any(|f| f[5] == "01"),
        "no relay listener among tollgate's Unix sockets:\n{unix}"
    );
    assert!(
        relay_sockets.iter().any(|f| f[5] == "03"),
        "no connection accepted by the relay: sqlx bypassed it\n{unix}"
    );
    if server_tls == "on" {
        let tls_backends: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.datname = $1 AND s.ssl AND a.pid <> pg_backend_pid()",
        )
        .bind(db.name())
        .fetch_one(&pool)
        .await
        .unwrap();
        assert!(tls_backends >= 1, "tollgate's connections use TLS");
    }
    // What the relay is for: its TCP connections to the server have Nagle's algorithm off.
    let to_server: Vec<_> = tcp_sockets(pid)
        .expect("tollgate's sockets")
        .into_iter()
        .filter(|s| s.peer.is_some_and(|p| p.port() == front))
        .collect();
    assert!(!to_server.is_empty(), "no TCP connection to the server");
    assert!(
        to_server.iter().all(|s| s.nodelay),
        "a relay connection to Postgres has Nagle's algorithm on: {to_server:?}"
    );
    gate.kill().await;
}

/// When the server cannot be reached through the relay, sqlx sees only the relay's socket close ("connection
/// reset by peer"); tollgate's start error names the server and the real cause instead.
#[tokio::test]
async fn an_unreachable_database_behind_the_relay_is_named_in_the_start_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // An explicit sslmode sends even a loopback connection through the relay.
    let url = format!("postgres://postgres@127.0.0.1:{port}/tollgate?sslmode=prefer");
    let upstream = Upstream::builder().start().await.expect("upstream");
    let Err(e) = Tollgate::builder(&url, &upstream.url()).start().await else {
        panic!("tollgate started without a database");
    };
    let log = format!("{e:#}");
    let fatal = log
        .lines()
        .find(|l| l.starts_with("tollgate: cannot open the database"))
        .unwrap_or_else(|| panic!("no start error in:\n{log}"));
    assert!(
        fatal.contains(&format!("cannot connect to 127.0.0.1:{port}")) && fatal.contains("refused"),
        "the start error does not name the unreachable server: {fatal}"
    );
}

/// A proxy must not hold back the second write of a response (a streamed body after its head) until the peer
/// acknowledges the first, which a peer that delays its acknowledgements does for up to 40 ms: the agent's
/// connection and the upstream connection have Nagle's algorithm off.
#[tokio::test]
async fn agent_and_upstream_connections_have_nagle_off() {
    let w = world().await;
    let r = w.get("/cloudflare/client/v4/zones").send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", w.gate.log());
    // Read to the end, so both keep-alive connections stay open and idle.
    r.bytes().await.unwrap();

    let sockets = tcp_sockets(w.gate.pid().expect("tollgate pid")).expect("tollgate's sockets");
    let proxy_port: u16 = w
        .gate
        .proxy_addr()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let upstream_port: u16 = w
        .upstream
        .url()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let agent_side: Vec<_> = sockets
        .iter()
        .filter(|s| s.local.port() == proxy_port && s.peer.is_some())
        .collect();
    let upstream_side: Vec<_> = sockets
        .iter()
        .filter(|s| s.peer.is_some_and(|p| p.port() == upstream_port))
        .collect();
    assert!(
        !agent_side.is_empty(),
        "no accepted agent connection: {sockets:?}"
    );
    assert!(
        !upstream_side.is_empty(),
        "no upstream connection: {sockets:?}"
    );
    assert!(
        agent_side.iter().all(|s| s.nodelay),
        "an agent connection has Nagle's algorithm on: {agent_side:?}"
    );
    assert!(
        upstream_side.iter().all(|s| s.nodelay),
        "an upstream connection has Nagle's algorithm on: {upstream_side:?}"
    );
    w.gate.kill().await;
}

/// A provider that answers `101 Switching Protocols` (tollgate forwards no `Upgrade`, so it never asks for
/// one) hands the agent no connection to the provider: the exchange failed, the agent gets 502 with nothing
/// of what followed, and the decision's outcome says so (attack round 13).
#[tokio::test]
async fn an_upgrade_tollgate_never_asked_for_is_an_upstream_failure() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDatabase::create().await.unwrap();
    let pool = db.pool().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = socket
                    .write_all(
                        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nraw-tunnel-bytes",
                    )
                    .await;
                tokio::time::sleep(Duration::from_secs(2)).await;
            });
        }
    });
    let gate = Tollgate::builder(db.url(), &format!("http://127.0.0.1:{port}"))
        .start()
        .await
        .unwrap();
    let key = gate.create_agent("reader", &[]).await.unwrap();
    let r = reqwest::Client::new()
        .get(gate.url("/cloudflare/client/v4/zones"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 502);
    let id: uuid::Uuid = r.headers()["tollgate-decision"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let text = r.text().await.unwrap();
    assert!(!text.contains("raw-tunnel-bytes"), "{text}");
    let mut outcome = None;
    for _ in 0..100 {
        outcome = sqlx::query("SELECT * FROM decision_outcomes WHERE decision_id = $1")
            .bind(id)
            .fetch_optional(&pool)
            .await
            .unwrap();
        if outcome.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let outcome = outcome.expect("the outcome is recorded");
    assert_eq!(outcome.get::<Option<i32>, _>("upstream_status"), None);
    assert_eq!(
        outcome.get::<Option<String>, _>("error").as_deref(),
        Some("io")
    );
}
