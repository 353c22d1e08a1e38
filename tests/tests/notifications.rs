//! Approval notifications (issue #16) against the real binary, a real Postgres and a real webhook receiver
//! on 127.0.0.1: a held request is announced to a generic (HMAC-signed) and a Slack-format webhook with a
//! link to the console, while the agent's answer never waits for a receiver that hangs; a receiver that
//! fails is retried with backoff until it answers, and one that never does is given up on, all visible in
//! `GET /api/notifications` and the metrics; two replicas on one database send every event — held and
//! decided approvals, a freeze and its end, a budget crossing 80 % — exactly once.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tollgate_tests::tollgate::{
    ADMIN_TOKEN, STRIPE_SECRET, Tollgate, TollgateBuilder, WEBHOOK_SECRET, policy_dir_with,
};
use tollgate_tests::{TestDatabase, Upstream};

/// Stripe payment intents are charged their `amount` against a $100 agent-provider-month cap; a single charge
/// above $50 needs a human.
const POLICY: &str = r#"package tollgate

amount := to_number(input.request.body.amount) if input.action.name == "stripe.payment.create"

charge := {"cents": amount, "budget": "agent-provider-month", "cap_cents": 10000} if amount >= 0

decision := {"outcome": "approve", "reasons": [{"rule": "spend.single_charge", "message": "charges above $50 need a human"}], "charge": charge} if {
	amount > 5000
} else := {"outcome": "allow", "reasons": [], "charge": charge} if {
	amount >= 0
} else := {"outcome": "allow", "reasons": []}
"#;

const PUBLIC_URL: &str = "https://tollgate.example.com/console";

/// How long anything asynchronous may take before a test gives up (deliveries take ~100 ms here).
const DEADLINE: Duration = Duration::from_secs(30);

/// One webhook call as the receiver got it.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// A webhook receiver on 127.0.0.1: records every call, answers with the scripted statuses (then 200), and
/// while closed holds every call to `held_path` unanswered.
#[derive(Default)]
struct ReceiverState {
    got: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<u16>>,
    /// The paths of the calls answered so far.
    answered: Mutex<Vec<String>>,
    held_path: Option<String>,
    open: Mutex<Option<tokio::sync::watch::Receiver<bool>>>,
}

struct Receiver {
    url: String,
    state: Arc<ReceiverState>,
    gate: tokio::sync::watch::Sender<bool>,
    _server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(script: &[u16], held_path: Option<&str>) -> Receiver {
        let (gate, watch) = tokio::sync::watch::channel(held_path.is_none());
        let state = Arc::new(ReceiverState {
            script: Mutex::new(script.iter().copied().collect()),
            open: Mutex::new(Some(watch)),
            held_path: held_path.map(str::to_string),
            ..Default::default()
        });
        let app = Router::new().fallback(receive).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver {
            url,
            state,
            gate,
            _server: server,
        }
    }

    fn open(&self) {
        self.gate.send_replace(true);
    }

    fn got(&self) -> Vec<Received> {
        self.state.got.lock().unwrap().clone()
    }

    fn on(&self, path: &str) -> Vec<Received> {
        self.got().into_iter().filter(|r| r.path == path).collect()
    }

    fn answered(&self, path: &str) -> usize {
        let answered = self.state.answered.lock().unwrap();
        answered.iter().filter(|p| *p == path).count()
    }

    /// Waits until `done` holds of what arrived, or fails the test with what did.
    async fn wait_for(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let got = self.got();
            if done(&got) {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within {DEADLINE:?}; received {:#?}",
                got.iter()
                    .map(|r| (
                        r.path.clone(),
                        String::from_utf8_lossy(&r.body).into_owned()
                    ))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let path = uri.path().to_string();
    state.got.lock().unwrap().push(Received {
        path: path.clone(),
        headers,
        body,
    });
    if state.held_path.as_deref() == Some(path.as_str()) {
        let watch = state.open.lock().unwrap().clone();
        if let Some(mut w) = watch {
            let _ = w.wait_for(|open| *open).await;
        }
    }
    let status = state.script.lock().unwrap().pop_front().unwrap_or(200);
    state.answered.lock().unwrap().push(path);
    StatusCode::from_u16(status).unwrap()
}

/// HMAC-SHA256 (RFC 2104), written here independently of tollgate's, as a receiver would.
fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let inner = Sha256::new()
        .chain_update(k.map(|b| b ^ 0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(k.map(|b| b ^ 0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

/// The receiver's check from deploy/NOTIFICATIONS.md: `Tollgate-Signature: t=<unix>,v1=<hex>` is the
/// HMAC-SHA256 of `"{t}.{body}"` with the shared secret, and `t` is within the 300 s replay window.
fn verify_signature(r: &Received, secret: &str) -> Result<(), String> {
    let header = r.header("tollgate-signature");
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = value.parse::<i64>().ok(),
            Some(("v1", value)) => v1.push(value.to_string()),
            _ => {}
        }
    }
    let t = t.ok_or_else(|| format!("no timestamp in '{header}'"))?;
    let now = chrono::Utc::now().timestamp();
    if (now - t).abs() > 300 {
        return Err(format!(
            "timestamp {t} is outside the replay window (now {now})"
        ));
    }
    let mut message = format!("{t}.").into_bytes();
    message.extend_from_slice(&r.body);
    let expected = hex::encode(hmac_sha256(secret.as_bytes(), &message));
    if v1.iter().any(|s| s == &expected) {
        Ok(())
    } else {
        Err(format!("no v1 signature matches in '{header}'"))
    }
}

struct Setup {
    _db: TestDatabase,
    _upstream: Upstream,
    _policy: tempfile::TempDir,
    replicas: Vec<Tollgate>,
    http: reqwest::Client,
    key: String,
}

/// `replicas` tollgates on one database with these webhook tables, fast sweeps and short backoff.
async fn setup(replicas: usize, notifications: &str) -> Setup {
    let db = TestDatabase::create().await.expect("database");
    let upstream = Upstream::builder()
        .json_body(serde_json::json!({"id": "pi_1", "object": "payment_intent"}))
        .start()
        .await
        .expect("upstream");
    let policy = policy_dir_with(POLICY).expect("policy");
    let mut started = Vec::new();
    for _ in 0..replicas {
        let b: TollgateBuilder = Tollgate::builder(db.url(), &upstream.url())
            .policy_dir(policy.path())
            .admin(&format!("public_url = \"{PUBLIC_URL}/\""))
            // The backlog test keeps more requests waiting than the default allows one agent.
            .approvals("max_pending_per_agent = 100")
            .tables(&format!(
                "[notifications]\nsweep_interval_ms = 100\nbackoff_initial_ms = 50\nbackoff_max_ms = 200\n{notifications}"
            ));
        started.push(b.start().await.expect("tollgate starts"));
    }
    let key = started[0].create_agent("buyer", &[]).await.unwrap();
    Setup {
        _db: db,
        _upstream: upstream,
        _policy: policy,
        replicas: started,
        http: reqwest::Client::new(),
        key,
    }
}

impl Setup {
    /// A payment intent of `cents` through replica `replica`: (status, body).
    async fn pay(&self, replica: usize, cents: u32) -> (u16, Value) {
        let r = self
            .http
            .post(self.replicas[replica].url("/stripe/v1/payment_intents"))
            .basic_auth(&self.key, Some(""))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("Tollgate-On-Behalf-Of", "alice@example.com")
            .body(format!("amount={cents}&currency=usd"))
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// A payment that needs approval; returns the approval id.
    async fn held(&self, replica: usize, cents: u32) -> String {
        let (status, body) = self.pay(replica, cents).await;
        assert_eq!(
            (status, body["tollgate"]["code"].as_str()),
            (403, Some("approval_required")),
            "{body}"
        );
        body["tollgate"]["approval_id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .http
            .request(method, self.replicas[0].admin_url(path))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("admin request");
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap_or(Value::Null)
    }

    /// `GET /api/notifications` until `done` holds of the list.
    async fn deliveries_until(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let list = self
                .admin(reqwest::Method::GET, "/api/notifications", None)
                .await["notifications"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if done(&list) {
                return list;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within {DEADLINE:?}: {list:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn metrics(&self, replica: usize) -> String {
        self.http
            .get(self.replicas[replica].admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

fn webhook(name: &str, format: &str, url: &str, extra: &str) -> String {
    let secret = if format == "generic" {
        "secret_env = \"TOLLGATE_WEBHOOK_SECRET\"\n"
    } else {
        ""
    };
    format!(
        "[[notifications.webhooks]]\nname = \"{name}\"\nformat = \"{format}\"\nurl = \"{url}\"\n{secret}{extra}\n"
    )
}

#[tokio::test]
async fn a_held_request_is_announced_signed_with_a_link_and_never_waits_for_the_receiver() {
    // The Slack endpoint hangs until the test opens it; the generic one answers at once.
    let receiver = Receiver::start(&[], Some("/slack")).await;
    let s = setup(
        1,
        &format!(
            "timeout_ms = 60000\n{}{}",
            webhook("siem", "generic", &format!("{}/generic", receiver.url), ""),
            webhook(
                "chat",
                "slack",
                &format!("{}/slack", receiver.url),
                "events = [\"approval_required\"]"
            ),
        ),
    )
    .await;

    let first = s.held(0, 6000).await;
    receiver
        .wait_for("both webhooks called", |got| got.len() == 2)
        .await;
    // The Slack receiver now hangs. Another held request is answered meanwhile (notifications are not on
    // the request path), and announced to the generic webhook (a hanging receiver holds up only itself).
    let second = s.held(0, 7000).await;
    assert_eq!(
        receiver.answered("/slack"),
        0,
        "the agent was answered while the Slack receiver still held its call"
    );
    receiver
        .wait_for(
            "the second approval announced to the generic webhook",
            |got| got.iter().filter(|r| r.path == "/generic").count() == 2,
        )
        .await;
    assert_eq!(receiver.answered("/slack"), 0);
    receiver.open();
    let got = receiver
        .wait_for("both approvals announced to both webhooks", |got| {
            got.len() >= 4
        })
        .await;

    let generic: Vec<&Received> = got.iter().filter(|r| r.path == "/generic").collect();
    let mut announced = Vec::new();
    for r in &generic {
        verify_signature(r, WEBHOOK_SECRET).unwrap();
        assert!(verify_signature(r, "another-secret-entirely").is_err());
        assert_eq!(r.header("tollgate-event"), "approval_required");
        assert_eq!(r.header("content-type"), "application/json");
        let body = r.json();
        assert_eq!(body["id"].as_str(), Some(r.header("tollgate-delivery")));
        assert_eq!(body["event"], "approval_required");
        let id = body["approval"]["id"].as_str().unwrap().to_string();
        assert_eq!(body["link"], format!("{PUBLIC_URL}/approvals/{id}"));
        assert_eq!(body["event_key"], format!("approval_required:{id}"));
        assert_eq!(body["approval"]["agent"], "buyer");
        assert_eq!(body["approval"]["action"], "stripe.payment.create");
        assert_eq!(body["approval"]["on_behalf_of"], "alice@example.com");
        assert_eq!(
            body["approval"]["reasons"][0]["rule"],
            "spend.single_charge"
        );
        announced.push((id, body["approval"]["charge_cents"].as_i64()));
    }
    announced.sort();
    let mut expected = vec![(first.clone(), Some(6000)), (second.clone(), Some(7000))];
    expected.sort();
    assert_eq!(announced, expected);

    let slack: Vec<&Received> = got.iter().filter(|r| r.path == "/slack").collect();
    assert_eq!(slack.len(), 2);
    for r in &slack {
        let body = r.json();
        let text = body["text"].as_str().unwrap();
        assert!(text.starts_with("Approval required: agent buyer wants stripe.payment.create POST /v1/payment_intents on behalf of alice@example.com"), "{text}");
        let button = &body["blocks"][2]["elements"][0];
        assert_eq!(button["type"], "button");
        let url = button["url"].as_str().unwrap();
        assert!(
            [&first, &second]
                .iter()
                .any(|id| url == format!("{PUBLIC_URL}/approvals/{id}")),
            "{url}"
        );
        let fields = body["blocks"][1]["fields"].to_string();
        assert!(
            fields.contains("$60.00") || fields.contains("$70.00"),
            "{fields}"
        );
        assert!(
            r.headers.get("tollgate-signature").is_none(),
            "Slack payloads are not signed"
        );
    }
    // No secret leaves in a payload or a header.
    for r in &got {
        let text = format!("{:?} {}", r.headers, String::from_utf8_lossy(&r.body));
        for secret in [WEBHOOK_SECRET, STRIPE_SECRET, ADMIN_TOKEN, s.key.as_str()] {
            assert!(!text.contains(secret), "a secret in {text}");
        }
    }

    let list = s
        .deliveries_until("all four delivered", |l| {
            l.len() == 4 && l.iter().all(|n| n["status"] == "delivered")
        })
        .await;
    for n in &list {
        assert_eq!(n["attempts"], 1, "{n}");
        assert_eq!(n["last_status"], 200, "{n}");
        assert!(n.get("body").is_none());
    }
    // Delivered once each: nothing more arrives after the rows say delivered.
    assert_eq!(receiver.got().len(), 4);
}

/// A backlog at a receiver that hangs (more rows than a replica has deliveries in flight) holds up only that
/// webhook: every approval still reaches the other one while the first hangs.
#[tokio::test]
async fn a_backlog_at_a_hanging_receiver_never_holds_up_another_webhook() {
    let receiver = Receiver::start(&[], Some("/slack")).await;
    let s = setup(
        1,
        &format!(
            "timeout_ms = 60000\n{}{}",
            webhook("siem", "generic", &format!("{}/generic", receiver.url), ""),
            webhook("chat", "slack", &format!("{}/slack", receiver.url), ""),
        ),
    )
    .await;
    // An agent floods the queue: 24 distinct held requests, 24 rows for each webhook.
    for cents in 6001..6025 {
        s.held(0, cents).await;
    }
    receiver
        .wait_for("all 24 announced to the generic webhook", |got| {
            got.iter().filter(|r| r.path == "/generic").count() == 24
        })
        .await;
    assert_eq!(
        receiver.answered("/slack"),
        0,
        "the Slack receiver still hangs"
    );
    receiver.open();
    receiver
        .wait_for(
            "the Slack backlog delivered once the receiver answers",
            |got| got.iter().filter(|r| r.path == "/slack").count() >= 24,
        )
        .await;
}

#[tokio::test]
async fn a_failing_receiver_is_retried_until_it_answers_and_a_dead_one_is_given_up() {
    // 500, 500, then 200.
    let receiver = Receiver::start(&[500, 500], None).await;
    // Nothing listens on the dead webhook's port (bound, then closed).
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let s = setup(
        1,
        &format!(
            "max_attempts = 3\n{}{}",
            webhook("siem", "generic", &format!("{}/generic", receiver.url), ""),
            webhook("dead", "generic", &format!("http://{dead}/hook"), ""),
        ),
    )
    .await;
    let id = s.held(0, 6000).await;

    let list = s
        .deliveries_until(
            "delivered on the third attempt; the dead one given up",
            |l| l.len() == 2 && l.iter().all(|n| n["status"] != "pending"),
        )
        .await;
    let by_name: BTreeMap<&str, &Value> = list
        .iter()
        .map(|n| (n["webhook"].as_str().unwrap(), n))
        .collect();
    let siem = by_name["siem"];
    assert_eq!(siem["status"], "delivered", "{siem}");
    assert_eq!(siem["attempts"], 3, "{siem}");
    assert_eq!(siem["last_status"], 200);
    assert_eq!(siem["event"], "approval_required");
    assert_eq!(siem["subject"], id.as_str());
    assert!(siem["delivered_at"].is_string());
    let dead_row = by_name["dead"];
    assert_eq!(dead_row["status"], "failed", "{dead_row}");
    assert_eq!(dead_row["attempts"], 3);
    assert!(dead_row["last_status"].is_null());
    let error = dead_row["last_error"].as_str().unwrap();
    assert!(!error.is_empty());
    assert!(
        !error.contains(&dead.port().to_string()),
        "the URL leaked into {error}"
    );

    // Three attempts of one delivery, each freshly signed, all with the same delivery id.
    let calls = receiver.on("/generic");
    assert_eq!(calls.len(), 3);
    for r in &calls {
        verify_signature(r, WEBHOOK_SECRET).unwrap();
        assert_eq!(r.header("tollgate-delivery"), siem["id"].as_str().unwrap());
    }
    let metrics = s.metrics(0).await;
    for line in [
        "tollgate_notifications_total{result=\"retried\",webhook=\"siem\"} 2",
        "tollgate_notifications_total{result=\"delivered\",webhook=\"siem\"} 1",
        "tollgate_notifications_total{result=\"retried\",webhook=\"dead\"} 2",
        "tollgate_notifications_total{result=\"failed\",webhook=\"dead\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    assert!(metrics.contains("tollgate_notifications_pending"));
}

#[tokio::test]
async fn two_replicas_announce_every_event_once() {
    let receiver = Receiver::start(&[], None).await;
    let s = setup(
        2,
        &webhook("siem", "generic", &format!("{}/generic", receiver.url), ""),
    )
    .await;

    // Held requests on both replicas; one approved, one denied.
    let approved = s.held(0, 6000).await;
    let denied = s.held(1, 7000).await;
    let pending = s.held(1, 8000).await;
    // Decided after a sweep saw them pending (one decided before any sweep saw it is announced as decided
    // only: "approval required" is not sent for an approval that no longer waits).
    receiver
        .wait_for("three approvals announced", |got| {
            got.iter()
                .filter(|r| r.json()["event"] == "approval_required")
                .count()
                == 3
        })
        .await;
    s.admin(
        reqwest::Method::POST,
        &format!("/api/approvals/{approved}/approve"),
        Some(serde_json::json!({"note": "expected"})),
    )
    .await;
    s.admin(
        reqwest::Method::POST,
        &format!("/api/approvals/{denied}/deny"),
        Some(serde_json::json!({"note": "too much"})),
    )
    .await;
    // $30 + $50 = $80 of the $100 cap: the window crosses 80 %.
    assert_eq!(s.pay(0, 3000).await.0, 200);
    assert_eq!(s.pay(1, 5000).await.0, 200);
    // Frozen, announced, then unfrozen (a freeze is announced as the state a sweep finds).
    s.admin(reqwest::Method::POST, "/api/freeze", None).await;
    receiver
        .wait_for("the freeze announced", |got| {
            got.iter().any(|r| r.json()["freeze"]["frozen"] == true)
        })
        .await;
    s.admin(reqwest::Method::DELETE, "/api/freeze", None).await;

    let expected_keys = {
        let mut k = vec![
            format!("approval_required:{approved}"),
            format!("approval_required:{denied}"),
            format!("approval_required:{pending}"),
            format!("approval_decided:{approved}"),
            format!("approval_decided:{denied}"),
        ];
        k.sort();
        k
    };
    let got = receiver
        .wait_for("every event", |got| {
            let keys: Vec<String> = got
                .iter()
                .map(|r| r.json()["event_key"].as_str().unwrap_or("").to_string())
                .collect();
            expected_keys.iter().all(|k| keys.contains(k))
                && keys
                    .iter()
                    .filter(|k| k.starts_with("budget_threshold:"))
                    .count()
                    == 1
                && got.iter().any(|r| r.json()["freeze"]["frozen"] == false)
        })
        .await;
    drop(got);
    let list = s
        .deliveries_until("every row delivered", |l| {
            l.len() == 8 && l.iter().all(|n| n["status"] == "delivered")
        })
        .await;
    // Once every row says delivered nothing more is sent; each event arrived exactly once.
    let got = receiver.got();
    let mut keys: Vec<String> = got
        .iter()
        .map(|r| r.json()["event_key"].as_str().unwrap().to_string())
        .collect();
    keys.sort();
    let mut unique = keys.clone();
    unique.dedup();
    assert_eq!(keys, unique, "an event was sent twice");
    assert_eq!(got.len(), 8, "{keys:?}");
    let mut deliveries: Vec<&str> = got.iter().map(|r| r.header("tollgate-delivery")).collect();
    deliveries.sort();
    deliveries.dedup();
    assert_eq!(deliveries.len(), 8);
    for n in &list {
        assert_eq!(n["attempts"], 1, "{n}");
    }

    let body_of = |key: &str| {
        got.iter()
            .map(Received::json)
            .find(|b| b["event_key"] == key)
            .unwrap()
    };
    let a = body_of(&format!("approval_decided:{approved}"));
    assert_eq!(a["approval"]["status"], "approved");
    assert_eq!(a["approval"]["decided_by"], "bootstrap-admin");
    assert_eq!(a["approval"]["note"], "expected");
    assert!(
        a["summary"]
            .as_str()
            .unwrap()
            .starts_with("Approval approved")
    );
    let d = body_of(&format!("approval_decided:{denied}"));
    assert_eq!(d["approval"]["status"], "denied");
    assert!(
        d["summary"]
            .as_str()
            .unwrap()
            .starts_with("Approval denied")
    );
    let budget = got
        .iter()
        .map(Received::json)
        .find(|b| b["event"] == "budget_threshold")
        .unwrap();
    assert_eq!(budget["budget"]["provider"], "stripe");
    assert_eq!(budget["budget"]["threshold_percent"], 80);
    assert_eq!(budget["budget"]["cap_cents"], 10000);
    assert_eq!(budget["link"], format!("{PUBLIC_URL}/spend"));
    let freezes: Vec<Value> = got
        .iter()
        .map(Received::json)
        .filter(|b| b["event"] == "freeze")
        .collect();
    assert_eq!(freezes.len(), 2);
    assert!(
        freezes
            .iter()
            .all(|f| f["freeze"]["by"] == "bootstrap-admin")
    );
    for r in &got {
        verify_signature(r, WEBHOOK_SECRET).unwrap();
    }
}
