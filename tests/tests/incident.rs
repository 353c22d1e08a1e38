//! Incidents end to end (issue #17): the real binary, a real Postgres database and a stand-in Cloudflare and
//! Stripe that answer creates with ids. An agent (and a handle it minted) creates DNS records, a Workers
//! script, a domain registration (after a human approved it), a Stripe customer on a connected account and
//! a subscription; each is recorded with the id the stand-in gave. `incident report` shows the decisions by
//! outcome, the spend, the minted token and the resources; `incident rollback-plan` lists each inverse call
//! and the irreversible registration; `--execute` sends the calls through the gate as an operator-owned
//! agent (judged, recorded, forwarded), and a second run after a stand-in failure and a pending approval
//! finishes the job without repeating what was done.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::{PgPool, Row};
use tollgate_tests::sdk::{Reply, StandIn};
use tollgate_tests::tollgate::{ADMIN_TOKEN, STRIPE_SECRET, Tollgate, policy_dir_with};
use tollgate_tests::{TestDatabase, upstream::RecordedRequest};

/// Allows everything, but a registration and a subscription cancellation need a human, an account delete
/// is denied, and a subscription costs $15.
const POLICY: &str = r#"package tollgate

default decision := {"outcome": "allow"}

decision := {"outcome": "approve", "reasons": [{"rule": "incident.human", "message": "a human decides this"}]} if {
    input.action.name in {"cloudflare.domain.register", "stripe.subscription.cancel"}
}

decision := {"outcome": "deny", "reasons": [{"rule": "incident.never", "message": "never"}]} if {
    input.action.name == "cloudflare.account.delete"
}

decision := {"outcome": "allow", "charge": {"cents": 1500, "budget": "agent-provider-month", "cap_cents": 100000}} if {
    input.action.name == "stripe.subscription.create"
}
"#;

const ZONE: &str = "023e105f4ecef8ad9ca31a8372d0c353";
const ACCOUNT: &str = "01a7362d577a6c3019a474fd6f485823";
const CONNECTED: &str = "acct_1Connected";
const MINTED_SECRET: &str = "cf-minted-secret-incident-77e1";
/// Larger than what tollgate reads of a create's answer (8 MiB).
const BIG: usize = 8 * 1024 * 1024 + 1024;

/// Cloudflare's and Stripe's create and delete shapes. The first `dns_delete_failures` DNS deletes fail.
fn provider(
    dns_delete_failures: Arc<AtomicUsize>,
) -> impl Fn(&RecordedRequest) -> Reply + Send + Sync {
    move |r: &RecordedRequest| {
        let path = r.path_and_query.split('?').next().unwrap_or_default();
        let cf = |status: u16, result: Value| {
            Reply::json(
                status,
                json!({"success": true, "errors": [], "messages": [], "result": result}),
            )
        };
        let last = path.rsplit('/').next().unwrap_or_default().to_string();
        let records = format!("/client/v4/zones/{ZONE}/dns_records");
        let scripts = format!("/client/v4/accounts/{ACCOUNT}/workers/scripts/");
        match r.method.as_str() {
            "POST" if path == "/client/v4/user/tokens" => cf(
                200,
                json!({"id": "tok-1", "name": "deploy", "status": "active", "value": MINTED_SECRET,
                       "expires_on": "2099-01-01T00:00:00Z", "policies": []}),
            ),
            "POST" if path == format!("{records}/batch") => cf(
                200,
                json!({"posts": [{"id": "rec-b1", "name": "b1.example.com", "type": "A"},
                                 {"id": "rec-b2", "name": "b2.example.com", "type": "AAAA"}],
                       "patches": [], "puts": [], "deletes": []}),
            ),
            "POST" if path == records => {
                let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
                let name = body["name"].as_str().unwrap_or("x").to_string();
                let id = format!("rec-{}", name.split('.').next().unwrap_or("x"));
                cf(
                    200,
                    json!({"id": id, "name": name, "type": body["type"], "content": body["content"]}),
                )
            }
            // `legacy` existed long before this upload replaced it.
            "PUT" if path.starts_with(&scripts) && last == "legacy" => cf(
                200,
                json!({"id": last, "etag": "e2", "created_on": "2020-01-01T00:00:00Z",
                       "modified_on": chrono::Utc::now().to_rfc3339()}),
            ),
            "PUT" if path.starts_with(&scripts) => cf(
                200,
                json!({"id": last, "etag": "e1", "created_on": chrono::Utc::now().to_rfc3339()}),
            ),
            "POST" if path.ends_with("/registrar/registrations") => cf(
                201,
                json!({"domain_name": "tollgate-incident.dev", "status": "pending"}),
            ),
            "POST" if path == "/v1/customers" => Reply::json(
                200,
                json!({"id": "cus_incident1", "object": "customer", "name": "Ada"}),
            ),
            "POST" if path == "/v1/subscriptions" => Reply::json(
                200,
                json!({"id": "sub_incident1", "object": "subscription", "status": "active"}),
            ),
            "POST" if path == "/v1/payment_intents" => {
                let body = String::from_utf8_lossy(&r.body);
                let id = if body.contains("description=paid") {
                    "pi_paid"
                } else {
                    "pi_open"
                };
                Reply::json(
                    200,
                    json!({"id": id, "object": "payment_intent", "amount": 500, "currency": "usd",
                           "status": "requires_confirmation"}),
                )
            }
            "POST" if path.starts_with("/v1/payment_intents/") && path.ends_with("/capture") => {
                Reply::json(
                    200,
                    json!({"id": "pi_paid", "object": "payment_intent", "status": "succeeded"}),
                )
            }
            "POST" if path.starts_with("/v1/payment_intents/") && path.ends_with("/cancel") => {
                Reply::json(
                    200,
                    json!({"id": "pi_open", "object": "payment_intent", "status": "canceled"}),
                )
            }
            "POST" if path == "/v1/products" => Reply::json(
                200,
                json!({"id": "prod_big", "object": "product", "description": "x".repeat(BIG)}),
            ),
            "DELETE" if path.starts_with(&format!("{records}/")) => {
                let failing = dns_delete_failures
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if failing {
                    Reply::json(
                        500,
                        json!({"success": false, "errors": [{"code": 10000, "message": "stand-in outage"}],
                               "messages": [], "result": null}),
                    )
                } else {
                    cf(200, json!({"id": last}))
                }
            }
            "DELETE" if path.starts_with(&scripts) => cf(200, json!({"id": last})),
            "DELETE" if path.starts_with("/v1/customers/") => Reply::json(
                200,
                json!({"id": last, "object": "customer", "deleted": true}),
            ),
            "DELETE" if path.starts_with("/v1/subscriptions/") => Reply::json(
                200,
                json!({"id": last, "object": "subscription", "status": "canceled"}),
            ),
            _ => cf(200, json!([])),
        }
    }
}

struct World {
    _db: TestDatabase,
    pool: PgPool,
    stand_in: StandIn,
    gate: Tollgate,
    deployer: String,
    http: reqwest::Client,
    dir: tempfile::TempDir,
    _policies: tempfile::TempDir,
}

async fn world(dns_delete_failures: usize) -> World {
    let db = TestDatabase::create().await.expect("database");
    let stand_in = StandIn::start().await.expect("stand-in");
    stand_in.answer(provider(Arc::new(AtomicUsize::new(dns_delete_failures))));
    let policies = policy_dir_with(POLICY).expect("policies");
    let gate = Tollgate::builder(db.url(), &stand_in.url())
        .policy_dir(policies.path())
        .server("identity_refresh_ms = 100")
        // The approvals in this test are given by the same local operator who created the agents.
        .approvals("allow_self_approval = true")
        .start()
        .await
        .expect("tollgate starts");
    let deployer = gate
        .create_agent("deployer", &["--scope", "dns:write"])
        .await
        .expect("agent");
    let pool = db.pool().await.expect("pool");
    World {
        _db: db,
        pool,
        stand_in,
        gate,
        deployer,
        http: reqwest::Client::new(),
        dir: tempfile::tempdir().expect("tempdir"),
        _policies: policies,
    }
}

/// Status, `Tollgate-Decision`, approval id (if any) and body of an answer.
struct Answer {
    status: u16,
    decision: String,
    approval: Option<String>,
    body: String,
}

impl World {
    async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let r = request.send().await.expect("send");
        let header = |name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let decision = header("tollgate-decision").unwrap_or_default();
        let approval = header("tollgate-approval-id");
        let status = r.status().as_u16();
        let body = r.text().await.expect("body");
        Answer {
            status,
            decision,
            approval,
            body,
        }
    }

    fn cf(&self, method: reqwest::Method, key: &str, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(
                method,
                self.gate.url(&format!("/cloudflare/client/v4{path}")),
            )
            .bearer_auth(key)
    }

    fn stripe(&self, key: &str, path: &str, form: &str) -> reqwest::RequestBuilder {
        self.http
            .post(self.gate.url(&format!("/stripe{path}")))
            .bearer_auth(key)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.to_string())
    }

    async fn dns_create(&self, key: &str, name: &str) -> Answer {
        self.send(
            self.cf(
                reqwest::Method::POST,
                key,
                &format!("/zones/{ZONE}/dns_records"),
            )
            .json(&json!({"type": "A", "name": name, "content": "192.0.2.10", "ttl": 300})),
        )
        .await
    }

    async fn cli(&self, args: &[&str]) -> (bool, String, String) {
        self.gate.cli(args).await.expect("cli runs")
    }

    /// `incident rollback-plan --execute PLAN` through this gate with `key` in `$TOLLGATE_AGENT_KEY`.
    async fn execute(&self, plan: &str, key: &str) -> (bool, String, String) {
        self.gate
            .cli_env(
                &[
                    "incident",
                    "rollback-plan",
                    "--execute",
                    plan,
                    "--proxy",
                    &self.gate.url(""),
                ],
                &[("TOLLGATE_AGENT_KEY", key)],
            )
            .await
            .expect("cli runs")
    }

    /// The recorded resources, by resource id: (kind, scope, agent, status, stripe account, decision).
    async fn resources(
        &self,
    ) -> Vec<(
        String,
        String,
        String,
        String,
        String,
        Option<String>,
        String,
    )> {
        sqlx::query(
            "SELECT resource_id, kind, scope, agent_name, status, stripe_account, decision_id::text AS decision
             FROM resources ORDER BY resource_id",
        )
        .fetch_all(&self.pool)
        .await
        .expect("resources")
        .iter()
        .map(|r| {
            (
                r.get("resource_id"),
                r.get("kind"),
                r.get("scope"),
                r.get("agent_name"),
                r.get("status"),
                r.get("stripe_account"),
                r.get("decision"),
            )
        })
        .collect()
    }

    /// Waits until `count` rows have `status` (rows are written off the agent's answer path).
    async fn until_resources(&self, status: &str, count: usize) {
        for _ in 0..100 {
            let n = self
                .resources()
                .await
                .iter()
                .filter(|r| r.4 == status)
                .count();
            if n == count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "expected {count} {status} resources: {:#?}",
            self.resources().await
        );
    }
}

#[tokio::test]
async fn created_resources_are_reported_and_rolled_back_through_the_gate() {
    let w = world(1).await;

    // A handle minted by the deployer: its creations count as the deployer's.
    let minted = w
        .send(
            w.cf(reqwest::Method::POST, &w.deployer, "/user/tokens").json(&json!({
                "name": "deploy",
                "policies": [{"effect": "allow",
                              "resources": {format!("com.cloudflare.api.account.zone.{ZONE}"): "*"},
                              "permission_groups": [{"id": "4755a26eedb94da69e1066d98aa820be"}]}],
                "expires_on": "2099-01-01T00:00:00Z",
            })),
        )
        .await;
    assert_eq!(minted.status, 200, "{}", minted.body);
    let handle = serde_json::from_str::<Value>(&minted.body).unwrap()["result"]["value"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(handle.starts_with("tg_"));

    let www = w.dns_create(&handle, "www.example.com").await;
    assert_eq!(www.status, 200, "{}", www.body);
    let api = w.dns_create(&w.deployer, "api.example.com").await;
    assert_eq!(api.status, 200, "{}", api.body);

    let boundary = "tollgate-incident-boundary";
    let script = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\nContent-Type: application/json\r\n\r\n\
         {{\"main_module\": \"index.js\"}}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"index.js\"; \
         filename=\"index.js\"\r\nContent-Type: application/javascript+module\r\n\r\nexport default {{}}\r\n--{boundary}--\r\n"
    );
    for name in ["blog", "legacy"] {
        let deployed = w
            .send(
                w.cf(
                    reqwest::Method::PUT,
                    &w.deployer,
                    &format!("/accounts/{ACCOUNT}/workers/scripts/{name}"),
                )
                .header(
                    "content-type",
                    format!("multipart/form-data; boundary={boundary}"),
                )
                .body(script.clone()),
            )
            .await;
        assert_eq!(deployed.status, 200, "{}", deployed.body);
    }

    // A registration needs a human: approved, then retried with the approval.
    let registration = || {
        w.cf(
            reqwest::Method::POST,
            &w.deployer,
            &format!("/accounts/{ACCOUNT}/registrar/registrations"),
        )
        .json(&json!({"domain_name": "Tollgate-Incident.dev", "years": 1, "auto_renew": false}))
    };
    let held = w.send(registration()).await;
    assert_eq!(held.status, 403, "{}", held.body);
    let approval = held.approval.expect("approval id");
    let (ok, _, err) = w
        .cli(&["approvals", "approve", &approval, "--note", "ok"])
        .await;
    assert!(ok, "{err}");
    let registered = w
        .send(registration().header("tollgate-approval", &approval))
        .await;
    assert_eq!(registered.status, 201, "{}", registered.body);

    let customer = w
        .send(
            w.stripe(&w.deployer, "/v1/customers", "name=Ada")
                .header("stripe-account", CONNECTED),
        )
        .await;
    assert_eq!(customer.status, 200, "{}", customer.body);
    let subscription = w
        .send(w.stripe(
            &w.deployer,
            "/v1/subscriptions",
            "customer=cus_incident1&items[0][price]=price_1",
        ))
        .await;
    assert_eq!(subscription.status, 200, "{}", subscription.body);

    // Two payment intents; one is captured afterwards (by a call of its own). The open one is made in a
    // Stripe-Context, which its rollback step must name again.
    for description in ["open", "paid"] {
        let mut create = w.stripe(
            &w.deployer,
            "/v1/payment_intents",
            &format!("amount=500&currency=usd&description={description}"),
        );
        if description == "open" {
            create = create.header("stripe-context", CONNECTED);
        }
        let intent = w.send(create).await;
        assert_eq!(intent.status, 200, "{}", intent.body);
    }
    let captured = w
        .send(w.stripe(&w.deployer, "/v1/payment_intents/pi_paid/capture", ""))
        .await;
    assert_eq!(captured.status, 200, "{}", captured.body);

    // An answer larger than tollgate reads is passed on whole, and its resource is counted as unrecorded.
    let product = w
        .send(w.stripe(&w.deployer, "/v1/products", "name=Big"))
        .await;
    assert_eq!(product.status, 200);
    let product: Value = serde_json::from_str(&product.body).expect("the whole answer");
    assert_eq!(product["description"].as_str().map(str::len), Some(BIG));

    let denied = w
        .send(w.cf(
            reqwest::Method::DELETE,
            &w.deployer,
            &format!("/accounts/{ACCOUNT}"),
        ))
        .await;
    assert_eq!(denied.status, 403);

    // Recorded, with the ids the stand-in gave and what addresses them again.
    w.until_resources("live", 9).await;
    let rows = w.resources().await;
    let seen: Vec<(&str, &str, &str, &str, Option<&str>)> = rows
        .iter()
        .map(|r| {
            (
                r.0.as_str(),
                r.1.as_str(),
                r.2.as_str(),
                r.3.as_str(),
                r.5.as_deref(),
            )
        })
        .collect();
    let zone = format!("zone:{ZONE}");
    let account = format!("account:{ACCOUNT}");
    let connected = format!("stripe-account:{CONNECTED}");
    assert_eq!(
        seen,
        [
            ("blog", "workers_script", account.as_str(), "deployer", None),
            (
                "cus_incident1",
                "stripe_customer",
                connected.as_str(),
                "deployer",
                Some(CONNECTED)
            ),
            (
                "legacy",
                "workers_script",
                account.as_str(),
                "deployer",
                None
            ),
            (
                "pi_open",
                "payment_intent",
                format!("stripe-context:{CONNECTED}").as_str(),
                "deployer",
                None
            ),
            ("pi_paid", "payment_intent", "", "deployer", None),
            ("rec-api", "dns_record", zone.as_str(), "deployer", None),
            (
                "rec-www",
                "dns_record",
                zone.as_str(),
                "deployer~tok-1",
                None
            ),
            ("sub_incident1", "subscription", "", "deployer", None),
            (
                "tollgate-incident.dev",
                "domain_registration",
                account.as_str(),
                "deployer",
                None
            ),
        ]
    );
    assert_eq!(
        rows[5].6, api.decision,
        "recorded under the create's decision"
    );
    assert_eq!(rows[8].6, registered.decision);
    let metrics = w
        .http
        .get(w.gate.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"tollgate_resources_unrecorded_total{provider="stripe",reason="answer_unread"} 1"#
        ),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("resources_"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // The report: decisions by outcome, spend, the minted token and its handle, the resources.
    let (ok, out, err) = w.cli(&["incident", "report", "deployer", "--json"]).await;
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(&out).expect("report JSON");
    assert_eq!(report["agent"]["name"], "deployer");
    assert_eq!(report["handles"][0]["name"], "deployer~tok-1");
    let by = &report["decisions"]["by_outcome"];
    assert_eq!(by["deny"], 1, "{by}");
    assert!(by["approve"].as_i64() >= Some(1), "{by}");
    assert_eq!(
        by["allow"], 12,
        "token, 2 records, 2 scripts, registration, customer, subscription, 2 payment intents, a capture, product: {by}"
    );
    assert_eq!(report["spend"]["committed_cents"], 1500);
    assert_eq!(
        report["spend"]["windows"][0]["budget"],
        "agent-provider-month"
    );
    assert_eq!(report["tokens"][0]["token_id"], "tok-1");
    assert_eq!(report["tokens"][0]["status"], "active");
    assert_eq!(report["resources"].as_array().unwrap().len(), 9);
    assert!(!out.contains(MINTED_SECRET));
    // Text, and a `since` that leaves everything out.
    let (ok, text, err) = w.cli(&["incident", "report", "deployer"]).await;
    assert!(ok, "{err}");
    assert!(
        text.contains("resources created: 9 (9 live)") && text.contains("committed $15.00"),
        "{text}"
    );
    let (ok, out, _) = w
        .cli(&[
            "incident",
            "report",
            "deployer",
            "--since",
            "2099-01-01",
            "--json",
        ])
        .await;
    assert!(ok);
    let later: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(later["decisions"]["total"], 0);
    assert_eq!(later["resources"], json!([]));
    assert_eq!(
        later["tokens"][0]["token_id"], "tok-1",
        "a token still live stays in the report whatever --since says: {later}"
    );
    let (ok, _, err) = w.cli(&["incident", "report", "nobody"]).await;
    assert!(!ok && err.contains("no agent named"), "{err}");

    // The same through the admin API, and the remote CLI.
    let api_report: Value = w
        .http
        .get(w.gate.admin_url("/api/incidents/deployer/report"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(api_report["resources"], report["resources"]);
    let (ok, out, err) = w
        .gate
        .cli_env(
            &[
                "--server",
                &w.gate.admin_url(""),
                "--token-env",
                "TG_INCIDENT_TOKEN",
                "incident",
                "report",
                "deployer",
                "--json",
            ],
            &[("TG_INCIDENT_TOKEN", ADMIN_TOKEN)],
        )
        .await
        .unwrap();
    assert!(ok, "{err}");
    let remote: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(remote["decisions"], report["decisions"]);

    // The plan: each live resource's inverse, dependents first; the registration is irreversible.
    let plan_path = w.dir.path().join("plan.json");
    let plan_file = plan_path.to_str().unwrap();
    let (ok, _, err) = w
        .cli(&["incident", "rollback-plan", "deployer", "--out", plan_file])
        .await;
    assert!(ok, "{err}");
    let plan: Value = serde_json::from_str(&std::fs::read_to_string(&plan_path).unwrap()).unwrap();
    assert_eq!(
        (plan["format"].as_str(), plan["version"].as_u64()),
        (Some("tollgate.rollback-plan"), Some(1))
    );
    let calls: Vec<(String, String, String)> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["call"]["method"].as_str().unwrap().to_string(),
                format!(
                    "/{}{}",
                    s["call"]["provider"].as_str().unwrap(),
                    s["call"]["path"].as_str().unwrap()
                ),
                s["action"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected_calls: Vec<(String, String, String)> = [
        (
            "POST",
            "/stripe/v1/payment_intents/pi_open/cancel".to_string(),
            "stripe.payment.cancel",
        ),
        (
            "DELETE",
            "/stripe/v1/subscriptions/sub_incident1".to_string(),
            "stripe.subscription.cancel",
        ),
        (
            "DELETE",
            "/stripe/v1/customers/cus_incident1".to_string(),
            "stripe.customer.delete",
        ),
        (
            "DELETE",
            format!("/cloudflare/client/v4/zones/{ZONE}/dns_records/rec-api"),
            "cloudflare.dns.delete",
        ),
        (
            "DELETE",
            format!("/cloudflare/client/v4/zones/{ZONE}/dns_records/rec-www"),
            "cloudflare.dns.delete",
        ),
        (
            "DELETE",
            format!("/cloudflare/client/v4/accounts/{ACCOUNT}/workers/scripts/blog"),
            "cloudflare.worker.delete",
        ),
    ]
    .into_iter()
    .map(|(m, p, a)| (m.to_string(), p, a.to_string()))
    .collect();
    assert_eq!(calls, expected_calls);
    assert_eq!(
        plan["steps"][2]["call"]["headers"]["Stripe-Account"],
        CONNECTED
    );
    assert_eq!(
        plan["steps"][0]["call"]["headers"],
        json!({"Stripe-Context": CONNECTED}),
        "made in a Stripe-Context, undone in it"
    );
    // The registration, and the upload that replaced a script older than it, are for a person.
    let irreversible: Vec<(&str, &str)> = plan["irreversible"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["resource"]["kind"].as_str().unwrap(),
                i["resource"]["id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        irreversible,
        [
            ("payment_intent", "pi_paid"),
            ("workers_script", "legacy"),
            ("domain_registration", "tollgate-incident.dev")
        ]
    );
    let api_plan: Value = w
        .http
        .get(w.gate.admin_url("/api/incidents/deployer/rollback-plan"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(api_plan["steps"], plan["steps"]);

    // Executed through the gate by an operator-owned agent: the first DNS delete meets an outage and the
    // cancellation waits for a human; the rest is done, each call judged and recorded.
    let operator = w
        .gate
        .create_agent("incident-operator", &["--team", "sre"])
        .await
        .unwrap();
    w.stand_in.take();
    let execute = || async { w.execute(plan_file, operator.as_str()).await };
    let (ok, out, err) = execute().await;
    assert!(
        !ok,
        "a failed and a waiting step: not finished\n{out}\n{err}"
    );
    assert!(
        !out.contains(&operator) && !err.contains(&operator),
        "the key is never printed"
    );
    assert!(
        out.contains("FAILED") && out.contains("HTTP 500") && out.contains("stand-in outage"),
        "{out}"
    );
    assert!(
        out.contains("approval  DELETE /stripe/v1/subscriptions/sub_incident1"),
        "{out}"
    );
    assert!(
        out.contains("IRREVERSIBLE  domain_registration tollgate-incident.dev"),
        "{out}"
    );
    let received = w.stand_in.take();
    let sent: Vec<String> = received
        .iter()
        .map(|r| format!("{} {}", r.method, r.path_and_query))
        .collect();
    assert_eq!(
        sent,
        [
            "POST /v1/payment_intents/pi_open/cancel".to_string(),
            "DELETE /v1/customers/cus_incident1".to_string(),
            format!("DELETE /client/v4/zones/{ZONE}/dns_records/rec-api"),
            format!("DELETE /client/v4/zones/{ZONE}/dns_records/rec-www"),
            format!("DELETE /client/v4/accounts/{ACCOUNT}/workers/scripts/blog"),
        ]
    );
    // Forwarded as any agent's call: with the provider credential and the connected account.
    assert_eq!(received[1].header("stripe-account"), Some(CONNECTED));
    assert_eq!(received[0].header("stripe-context"), Some(CONNECTED));
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{STRIPE_SECRET}:")
        )
    );
    assert_eq!(received[1].header("authorization"), Some(basic.as_str()));

    let pending = sqlx::query(
        "SELECT id::text AS id FROM approvals WHERE agent_name = 'incident-operator' AND status = 'pending'",
    )
    .fetch_all(&w.pool)
    .await
    .unwrap();
    assert_eq!(pending.len(), 1);
    let approval: String = pending[0].get("id");
    assert!(out.contains(&approval), "{out}");
    let (ok, _, err) = w
        .cli(&["approvals", "approve", &approval, "--note", "roll it back"])
        .await;
    assert!(ok, "{err}");

    // The second run finishes the job and repeats nothing that was done.
    let (ok, out, err) = execute().await;
    assert!(ok, "{out}\n{err}");
    assert_eq!(out.matches("skipped").count(), 4, "{out}");
    let sent: Vec<String> = w
        .stand_in
        .take()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path_and_query))
        .collect();
    assert_eq!(
        sent,
        [
            "DELETE /v1/subscriptions/sub_incident1".to_string(),
            format!("DELETE /client/v4/zones/{ZONE}/dns_records/rec-api"),
        ]
    );

    // Every inverse call has its allow decision, under the operator's agent and the plan's run.
    for path in [
        "/v1/subscriptions/sub_incident1",
        "/v1/customers/cus_incident1",
        "/v1/payment_intents/pi_open/cancel",
        "/dns_records/rec-api",
        "/dns_records/rec-www",
        "/workers/scripts/blog",
    ] {
        let n: i64 = sqlx::query(
            "SELECT count(*) AS n FROM decisions WHERE agent_name = 'incident-operator' AND outcome = 'allow'
               AND path LIKE '%' || $1 AND run_id LIKE 'rollback:deployer:%'",
        )
        .bind(path)
        .fetch_one(&w.pool)
        .await
        .unwrap()
        .get("n");
        assert!(n >= 1, "no allow decision for {path}");
    }
    // The deletes that went through mark the resources deleted; a new plan has nothing left but the
    // irreversible registration.
    w.until_resources("deleted", 6).await;
    let (ok, out, err) = w.cli(&["incident", "rollback-plan", "deployer"]).await;
    assert!(ok, "{err}");
    let after: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(after["steps"], json!([]));
    assert_eq!(after["irreversible"].as_array().unwrap().len(), 3);

    // A third run of the same plan sends nothing.
    let (ok, out, _) = execute().await;
    assert!(ok, "{out}");
    assert!(w.stand_in.take().is_empty());
}

#[tokio::test]
async fn a_plan_of_another_version_or_without_a_key_is_refused_before_any_call() {
    let w = world(0).await;
    let plan = w.dir.path().join("plan.json");
    std::fs::write(
        &plan,
        json!({"format": "tollgate.rollback-plan", "version": 9, "agent": "x", "agent_ids": [],
               "since": null, "generated_at": "2026-12-01T00:00:00Z", "steps": [], "irreversible": []})
        .to_string(),
    )
    .unwrap();
    let plan = plan.to_str().unwrap();
    let (ok, _, err) = w.execute(plan, "tg_x").await;
    assert!(!ok && err.contains("version 9"), "{err}");
    let (ok, _, err) = w
        .cli(&["incident", "rollback-plan", "deployer", "--out", plan])
        .await;
    assert!(ok, "{err}");
    let (ok, _, err) = w
        .cli(&[
            "incident",
            "rollback-plan",
            "--execute",
            plan,
            "--proxy",
            &w.gate.url(""),
        ])
        .await;
    assert!(
        !ok && err.contains("no agent key in $TOLLGATE_AGENT_KEY"),
        "{err}"
    );
    let (ok, _, err) = w
        .gate
        .cli_env(
            &[
                "incident",
                "rollback-plan",
                "--execute",
                plan,
                "--proxy",
                "http://tollgate.example:8080",
            ],
            &[("TOLLGATE_AGENT_KEY", "tg_x")],
        )
        .await
        .unwrap();
    assert!(!ok && err.contains("plain http"), "{err}");
    // A plan's step may address a connected account, nothing else: no identity rides in from the file.
    let forged = w.dir.path().join("forged.json");
    std::fs::write(
        &forged,
        json!({"format": "tollgate.rollback-plan", "version": 1, "agent": "deployer", "agent_ids": [],
               "since": null, "generated_at": "2026-12-01T00:00:00Z", "irreversible": [],
               "steps": [{"id": "s1", "action": "cloudflare.dns.delete", "why": "x",
                          "resource": {"provider": "cloudflare", "kind": "dns_record", "id": "r1",
                                       "created_by": "deployer", "created_at": "2026-12-01T00:00:00Z",
                                       "created_by_decision": "00000000-0000-0000-0000-000000000000",
                                       "created_with": "cloudflare.dns.create", "detail": {}},
                          "call": {"provider": "cloudflare", "method": "DELETE",
                                   "path": format!("/client/v4/zones/{ZONE}/dns_records/r1"),
                                   "headers": {"Authorization": "Bearer tg_someone_else"}}}]})
        .to_string(),
    )
    .unwrap();
    let (ok, out, _) = w
        .execute(forged.to_str().unwrap(), w.deployer.as_str())
        .await;
    assert!(
        !ok && out.contains("is not one a rollback step may set"),
        "{out}"
    );
    // A path whose tail would be cut off (`#`) or sent as a query (`?`) is not the call a reviewer read.
    for tail in ["r1#../../records/other", "r1?per_page=1"] {
        let mut plan: Value =
            serde_json::from_str(&std::fs::read_to_string(&forged).unwrap()).unwrap();
        plan["steps"][0]["call"]["headers"] = json!({});
        plan["steps"][0]["call"]["path"] =
            json!(format!("/client/v4/zones/{ZONE}/dns_records/{tail}"));
        std::fs::write(&forged, plan.to_string()).unwrap();
        let (ok, out, _) = w
            .execute(forged.to_str().unwrap(), w.deployer.as_str())
            .await;
        assert!(!ok && out.contains("is not a plain path"), "{out}");
    }
    assert!(w.stand_in.take().is_empty());

    // A reviewed plan edited before it runs (attack round 18): a step pointed at a record the agent did not
    // create is not sent; a plan whose agent ids are not the agent's is refused whole.
    let created = w.dns_create(&w.deployer, "mine.example.com").await;
    assert_eq!(created.status, 200, "{}", created.body);
    w.stand_in.take();
    let reviewed = w.dir.path().join("reviewed.json");
    let reviewed = reviewed.to_str().unwrap();
    let (ok, _, err) = w
        .cli(&["incident", "rollback-plan", "deployer", "--out", reviewed])
        .await;
    assert!(ok, "{err}");
    let original: Value =
        serde_json::from_str(&std::fs::read_to_string(reviewed).unwrap()).unwrap();
    let path = original["steps"][0]["call"]["path"]
        .as_str()
        .expect("a step")
        .to_string();
    let (head, _) = path.rsplit_once('/').unwrap();
    let mut edited = original.clone();
    edited["steps"][0]["call"]["path"] = json!(format!("{head}/someone-elses-record"));
    std::fs::write(reviewed, edited.to_string()).unwrap();
    let (ok, out, _) = w.execute(reviewed, w.deployer.as_str()).await;
    assert!(!ok && out.contains("not sent"), "{out}");
    assert!(w.stand_in.take().is_empty(), "nothing forwarded");
    let mut edited = original.clone();
    edited["agent_ids"] = json!(["0190a6c2-0000-7000-8000-000000000001"]);
    std::fs::write(reviewed, edited.to_string()).unwrap();
    let (ok, _, err) = w.execute(reviewed, w.deployer.as_str()).await;
    assert!(!ok && err.contains("agent ids"), "{err}");
    assert!(w.stand_in.take().is_empty(), "nothing forwarded");
    // As reviewed, it runs.
    std::fs::write(reviewed, original.to_string()).unwrap();
    let (_, out, _) = w.execute(reviewed, w.deployer.as_str()).await;
    assert!(!out.contains("not sent"), "{out}");
    assert!(
        w.stand_in
            .take()
            .iter()
            .any(|r| r.method == "DELETE" && r.path_and_query.ends_with(&path)),
        "the reviewed step was sent"
    );
}

/// The store cannot take the row while the answer waits: the agent's answer is not held up or changed, and
/// the row is written once the store takes it again.
#[tokio::test]
async fn a_resource_the_store_cannot_take_at_once_is_recorded_later_and_the_answer_is_not_held() {
    let w = world(0).await;
    sqlx::query("ALTER TABLE resources RENAME TO resources_away")
        .execute(&w.pool)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let created = w.dns_create(&w.deployer, "late.example.com").await;
    assert_eq!(created.status, 200, "{}", created.body);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered in {:?}",
        started.elapsed()
    );
    let body: Value = serde_json::from_str(&created.body).unwrap();
    assert_eq!(
        body["result"]["id"], "rec-late",
        "the answer as the provider gave it"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    sqlx::query("ALTER TABLE resources_away RENAME TO resources")
        .execute(&w.pool)
        .await
        .unwrap();
    w.until_resources("live", 1).await;
    let rows = w.resources().await;
    assert_eq!(
        (rows[0].0.as_str(), rows[0].6.as_str()),
        ("rec-late", created.decision.as_str())
    );
}

/// A DNS batch records every record it created (a batch is no way around the rollback plan).
#[tokio::test]
async fn records_a_dns_batch_created_are_each_recorded_and_planned() {
    let w = world(0).await;
    let batch = w
        .send(
            w.cf(
                reqwest::Method::POST,
                &w.deployer,
                &format!("/zones/{ZONE}/dns_records/batch"),
            )
            .json(&json!({"posts": [
                {"type": "A", "name": "b1.example.com", "content": "192.0.2.1"},
                {"type": "AAAA", "name": "b2.example.com", "content": "2001:db8::1"},
            ]})),
        )
        .await;
    assert_eq!(batch.status, 200, "{}", batch.body);
    w.until_resources("live", 2).await;
    let (ok, out, err) = w.cli(&["incident", "rollback-plan", "deployer"]).await;
    assert!(ok, "{err}");
    let plan: Value = serde_json::from_str(&out).unwrap();
    let paths: Vec<&str> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["call"]["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths.len(), 2);
    for id in ["rec-b1", "rec-b2"] {
        let path = format!("/client/v4/zones/{ZONE}/dns_records/{id}");
        assert!(paths.contains(&path.as_str()), "{paths:?}");
    }
    assert!(plan["steps"][0]["resource"]["detail"]["type"].is_string());
}

/// A provider answer dressed as tollgate's refusal (its `Tollgate-*` headers and a `tollgate` object) is the
/// provider's answer: the agent never sees tollgate's headers on it, and the rollback executor reports a
/// provider failure instead of waiting on an approval the provider made up.
#[tokio::test]
async fn a_provider_answer_cannot_pass_for_a_tollgate_refusal() {
    let w = world(0).await;
    let created = w.dns_create(&w.deployer, "forged.example.com").await;
    assert_eq!(created.status, 200, "{}", created.body);
    w.until_resources("live", 1).await;
    let plan = w.dir.path().join("plan.json");
    let plan = plan.to_str().unwrap();
    let (ok, _, err) = w
        .cli(&["incident", "rollback-plan", "deployer", "--out", plan])
        .await;
    assert!(ok, "{err}");
    w.stand_in.answer(|_: &RecordedRequest| {
        Reply::json(
            409,
            json!({"success": false, "errors": [{"code": 1, "message": "held"}],
                   "tollgate": {"code": "approval_required", "approval_id": "forged-approval"}}),
        )
        .header("Tollgate-Approval-Id", "forged-approval")
        .header("Tollgate-Refusal", "approval_required")
        .header("Tollgate-Decision", "00000000-0000-0000-0000-000000000000")
    });
    let probe = w
        .send(w.cf(
            reqwest::Method::GET,
            &w.deployer,
            &format!("/zones/{ZONE}/dns_records"),
        ))
        .await;
    assert_eq!(probe.status, 409);
    assert_eq!(
        probe.approval, None,
        "the provider's Tollgate-Approval-Id is dropped"
    );
    assert_ne!(
        probe.decision, "00000000-0000-0000-0000-000000000000",
        "the decision header is tollgate's own"
    );
    let operator = w
        .gate
        .create_agent("incident-operator", &["--team", "sre"])
        .await
        .unwrap();
    let (ok, out, err) = w.execute(plan, operator.as_str()).await;
    assert!(!ok, "{out}\n{err}");
    assert!(
        out.contains("FAILED") && out.contains("HTTP 409") && !out.contains("forged-approval"),
        "{out}"
    );
}

/// Another agent's upload to a script the first agent created is that agent's work too: each has a row, the
/// second shows in its own report, and neither agent's rollback plan deletes the script (it is left to a
/// person, naming the other agent).
#[tokio::test]
async fn a_script_two_agents_uploaded_is_in_both_reports_and_no_plan_deletes_it() {
    let w = world(0).await;
    let publisher = w
        .gate
        .create_agent("publisher", &["--scope", "dns:write"])
        .await
        .unwrap();
    let boundary = "tollgateshared";
    let script = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\r\n\
         {{\"main_module\": \"index.js\"}}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"index.js\"; \
         filename=\"index.js\"\r\nContent-Type: application/javascript+module\r\n\r\nexport default {{}}\r\n--{boundary}--\r\n"
    );
    for key in [&w.deployer, &publisher] {
        let deployed = w
            .send(
                w.cf(
                    reqwest::Method::PUT,
                    key,
                    &format!("/accounts/{ACCOUNT}/workers/scripts/shared"),
                )
                .header(
                    "content-type",
                    format!("multipart/form-data; boundary={boundary}"),
                )
                .body(script.clone()),
            )
            .await;
        assert_eq!(deployed.status, 200, "{}", deployed.body);
    }
    w.until_resources("live", 2).await;
    let owners: Vec<String> = w.resources().await.into_iter().map(|r| r.3).collect();
    assert_eq!(owners.len(), 2);
    assert!(owners.contains(&"deployer".to_string()) && owners.contains(&"publisher".to_string()));

    let (ok, out, err) = w.cli(&["incident", "report", "publisher", "--json"]).await;
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["resources"][0]["id"], "shared", "{report:#}");
    assert_eq!(report["resources"][0]["also_by"][0]["agent"], "deployer");

    for (agent, other) in [("deployer", "publisher"), ("publisher", "deployer")] {
        let (ok, out, err) = w.cli(&["incident", "rollback-plan", agent]).await;
        assert!(ok, "{err}");
        let plan: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(plan["steps"], json!([]), "{agent}: {plan:#}");
        let why = plan["irreversible"][0]["why"].as_str().unwrap();
        assert!(why.contains(other), "{agent}: {why}");
    }

    // Once deleted through tollgate, both rows are.
    let deleted = w
        .send(w.cf(
            reqwest::Method::DELETE,
            &w.deployer,
            &format!("/accounts/{ACCOUNT}/workers/scripts/shared"),
        ))
        .await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    w.until_resources("deleted", 2).await;
    // The deployer's report lists the delete among what it did, with the provider's answer; the text form
    // too.
    let mut changes = Value::Null;
    for _ in 0..50 {
        let (ok, out, err) = w.cli(&["incident", "report", "deployer", "--json"]).await;
        assert!(ok, "{err}");
        let report: Value = serde_json::from_str(&out).unwrap();
        changes = report["changes"].clone();
        if changes[0]["upstream_status"] == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        changes[0]["action"], "cloudflare.worker.delete",
        "{changes:#}"
    );
    assert_eq!(changes[0]["upstream_status"], 200, "{changes:#}");
    assert_eq!(changes[0]["decision_id"], deleted.decision.as_str());
    assert_eq!(
        changes[1]["action"], "cloudflare.worker.deploy",
        "{changes:#}"
    );
    assert_eq!(changes.as_array().unwrap().len(), 2, "reads are not listed");
    let (ok, out, _) = w.cli(&["incident", "report", "deployer"]).await;
    assert!(ok);
    assert!(
        out.contains("calls that could change something (allowed, newest first): 2")
            && out.contains(&format!(
                "DELETE /client/v4/accounts/{ACCOUNT}/workers/scripts/shared"
            )),
        "{out}"
    );
}

/// A domain transferred in is paid for like a registration: recorded under the path's domain and listed as
/// irreversible, never as a call.
#[tokio::test]
async fn a_domain_transferred_in_is_recorded_and_irreversible() {
    let w = world(0).await;
    let moved = w
        .send(
            w.cf(
                reqwest::Method::POST,
                &w.deployer,
                &format!("/accounts/{ACCOUNT}/registrar/registrations/moved-in.dev/transfer-in"),
            )
            .json(&json!({"auth_code": "not-a-secret-here"})),
        )
        .await;
    assert_eq!(moved.status, 200, "{}", moved.body);
    w.until_resources("live", 1).await;
    let rows = w.resources().await;
    assert_eq!(
        (rows[0].0.as_str(), rows[0].1.as_str(), rows[0].6.as_str()),
        (
            "moved-in.dev",
            "domain_registration",
            moved.decision.as_str()
        )
    );
    let (ok, out, err) = w.cli(&["incident", "rollback-plan", "deployer"]).await;
    assert!(ok, "{err}");
    let plan: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(plan["steps"], json!([]));
    let why = plan["irreversible"][0]["why"].as_str().unwrap();
    assert!(
        why.contains("moved-in.dev") && why.contains("transferred in"),
        "{why}"
    );
}

/// A version uploaded to (or a rollout of) a script is recorded as that agent's upload: the script's creator's
/// plan leaves it to a person, and the uploader's plan never deletes a script it did not create.
#[tokio::test]
async fn a_version_uploaded_to_a_script_counts_as_that_agents_work() {
    let w = world(0).await;
    let versioner = w
        .gate
        .create_agent("versioner", &["--scope", "dns:write"])
        .await
        .unwrap();
    let boundary = "tollgateversion";
    let form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\r\n\
         {{\"main_module\": \"index.js\"}}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"index.js\"; \
         filename=\"index.js\"\r\nContent-Type: application/javascript+module\r\n\r\nexport default {{}}\r\n--{boundary}--\r\n"
    );
    let multipart = |method: reqwest::Method, key: &str, path: String| {
        w.cf(method, key, &path)
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(form.clone())
    };
    let scripts = format!("/accounts/{ACCOUNT}/workers/scripts");
    let sent = [
        multipart(
            reqwest::Method::PUT,
            &w.deployer,
            format!("{scripts}/blog2"),
        ),
        // Another spelling of the account and the script: the same script at Cloudflare.
        multipart(
            reqwest::Method::POST,
            &versioner,
            format!(
                "/accounts/{}/workers/scripts/BLOG2/versions",
                ACCOUNT.to_uppercase()
            ),
        ),
        w.cf(
            reqwest::Method::POST,
            &versioner,
            &format!("{scripts}/blog2/deployments"),
        )
        .json(&json!({"strategy": "percentage",
                      "versions": [{"version_id": "v-2", "percentage": 100}]})),
        multipart(
            reqwest::Method::POST,
            &versioner,
            format!("{scripts}/foreign/versions"),
        ),
    ];
    for request in sent {
        let answer = w.send(request).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    w.until_resources("live", 3).await;

    let w = &w;
    let plan = |agent: &'static str| async move {
        let (ok, out, err) = w.cli(&["incident", "rollback-plan", agent]).await;
        assert!(ok, "{err}");
        serde_json::from_str::<Value>(&out).unwrap()
    };
    let deployer = plan("deployer").await;
    assert_eq!(deployer["steps"], json!([]), "{deployer:#}");
    assert!(
        deployer["irreversible"][0]["why"]
            .as_str()
            .unwrap()
            .contains("versioner")
    );
    let theirs = plan("versioner").await;
    assert_eq!(theirs["steps"], json!([]), "{theirs:#}");
    let whys: Vec<&str> = theirs["irreversible"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["why"].as_str().unwrap())
        .collect();
    assert_eq!(whys.len(), 2, "{whys:?}");
    assert!(
        whys.iter()
            .any(|w| w.contains("foreign") && w.contains("did not create it")),
        "{whys:?}"
    );
    assert!(
        whys.iter()
            .any(|w| w.contains("blog2") && w.contains("deployer"))
    );
    // The rollout after the version is the same agent's upload again: one row, touched later.
    let rows = w.resources().await;
    let blog2: Vec<_> = rows
        .iter()
        .filter(|r| r.0 == "blog2" && r.3 == "versioner")
        .collect();
    assert_eq!(blog2.len(), 1);
    let (ok, out, _) = w.cli(&["incident", "report", "versioner", "--json"]).await;
    assert!(ok);
    let report: Value = serde_json::from_str(&out).unwrap();
    let blog2 = report["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "blog2")
        .unwrap();
    assert!(blog2["updated_at"].is_string(), "{blog2:#}");
}
