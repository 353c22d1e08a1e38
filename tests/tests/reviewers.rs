//! Reviewer identities and roles (issue #16) against the real binary on a real Postgres: every admin
//! endpoint's role for every role (and 401 without, with a bad, an agent's or a revoked token), the recorded
//! approver is the authenticated reviewer, separation of duties and the key that lifts it, rotation and
//! revocation honoured at once by another replica, single sign-on through a trusted proxy's identity header.

use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;
use tollgate::admin::Endpoint;
use tollgate::reviewers::Role;
use tollgate_tests::tollgate::{ADMIN_TOKEN, Tollgate, TollgateBuilder, policy_dir_with};
use tollgate_tests::{TestDatabase, Upstream};

/// A Stripe payment intent above $50 needs a human; everything else is allowed.
const POLICY: &str = r#"package tollgate

amount := to_number(input.request.body.amount) if input.action.name == "stripe.payment.create"

decision := {"outcome": "approve", "reasons": [{"rule": "spend.single_charge", "message": "charges above $50 need a human"}]} if {
	amount > 5000
} else := {"outcome": "allow", "reasons": []}
"#;

/// What each endpoint must require. Written out here on purpose: a change to the server's table must be a
/// change to this one too.
const EXPECTED: &[(&str, &str, Role)] = &[
    ("GET", "/api/whoami", Role::Viewer),
    ("GET", "/api/decisions", Role::Viewer),
    ("GET", "/api/decisions/{id}", Role::Viewer),
    ("GET", "/api/agents", Role::Viewer),
    ("POST", "/api/agents", Role::Admin),
    ("POST", "/api/agents/{name}/revoke", Role::Operator),
    ("GET", "/api/approvals", Role::Viewer),
    ("GET", "/api/approvals/{id}", Role::Viewer),
    ("POST", "/api/approvals/{id}/approve", Role::Approver),
    ("POST", "/api/approvals/{id}/deny", Role::Approver),
    ("GET", "/api/spend", Role::Viewer),
    ("GET", "/api/spend/flagged", Role::Viewer),
    (
        "POST",
        "/api/spend/reservations/{id}/settle",
        Role::Operator,
    ),
    ("GET", "/api/policy", Role::Viewer),
    ("POST", "/api/policy/reload", Role::Operator),
    ("GET", "/api/freeze", Role::Viewer),
    ("GET", "/api/notifications", Role::Viewer),
    ("GET", "/api/incidents/{agent}/report", Role::Viewer),
    (
        "GET",
        "/api/incidents/{agent}/rollback-plan",
        Role::Operator,
    ),
    ("POST", "/api/freeze", Role::Operator),
    ("DELETE", "/api/freeze", Role::Operator),
    ("POST", "/api/incidents/{agent}/contain", Role::Operator),
    ("GET", "/api/reviewers", Role::Admin),
    ("POST", "/api/reviewers", Role::Admin),
    ("POST", "/api/reviewers/{name}/revoke", Role::Admin),
    ("POST", "/api/reviewers/{name}/rotate", Role::Admin),
];

struct Setup {
    _db: TestDatabase,
    pool: PgPool,
    _upstream: Upstream,
    _policy: tempfile::TempDir,
    replicas: Vec<Tollgate>,
    http: reqwest::Client,
}

async fn setup(replicas: usize, configure: fn(TollgateBuilder) -> TollgateBuilder) -> Setup {
    let db = TestDatabase::create().await.expect("database");
    let upstream = Upstream::builder().start().await.expect("upstream");
    let policy = policy_dir_with(POLICY).expect("policy");
    let mut started = Vec::new();
    for _ in 0..replicas {
        let b = Tollgate::builder(db.url(), &upstream.url()).policy_dir(policy.path());
        started.push(configure(b).start().await.expect("tollgate starts"));
    }
    let pool = db.pool().await.expect("pool");
    Setup {
        _db: db,
        pool,
        _upstream: upstream,
        _policy: policy,
        replicas: started,
        http: reqwest::Client::new(),
    }
}

impl Setup {
    /// Creates a reviewer through the CLI and returns their token.
    async fn reviewer(&self, name: &str, role: &str, email: Option<&str>) -> String {
        let mut args = vec!["reviewers", "create", name, "--role", role, "--json"];
        if let Some(e) = email {
            args.extend(["--email", e]);
        }
        let (ok, out, err) = self.replicas[0].cli(&args).await.unwrap();
        assert!(ok, "reviewers create: {err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["role"], role);
        assert!(v.get("token_hash").is_none());
        let token = v["token"].as_str().unwrap().to_string();
        assert!(token.starts_with("tgr_") && token.len() == 44);
        token
    }

    async fn call(
        &self,
        replica: usize,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, self.replicas[replica].admin_url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("admin request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// A $60 payment intent by `key`, optionally on behalf of someone and with an approval.
    async fn pay(
        &self,
        key: &str,
        on_behalf_of: Option<&str>,
        approval: Option<&str>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .post(self.replicas[0].url("/stripe/v1/payment_intents"))
            .basic_auth(key, Some(""))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("amount=6000&currency=usd");
        if let Some(who) = on_behalf_of {
            req = req.header("Tollgate-On-Behalf-Of", who);
        }
        if let Some(id) = approval {
            req = req.header("Tollgate-Approval", id);
        }
        let r = req.send().await.expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Asks for a payment that needs approval and returns the approval id.
    async fn held(&self, key: &str, on_behalf_of: Option<&str>) -> String {
        let (status, body) = self.pay(key, on_behalf_of, None).await;
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
}

#[tokio::test]
async fn every_endpoint_requires_its_role() {
    let s = setup(1, |b| b).await;
    let declared: Vec<(&str, &str, Role)> = tollgate::admin::endpoints()
        .into_iter()
        .map(|Endpoint { method, path, role }| (method, path, role))
        .collect();
    assert_eq!(declared, EXPECTED, "the server's endpoint table changed");

    let mut callers: Vec<(String, Option<String>, Option<Role>)> = vec![
        ("no token".into(), None, None),
        ("a wrong token".into(), Some("not-a-token".into()), None),
        (
            "an unknown reviewer token".into(),
            Some(format!("tgr_{}", "x".repeat(40))),
            None,
        ),
        (
            "an agent key".into(),
            Some(s.replicas[0].create_agent("some-agent", &[]).await.unwrap()),
            None,
        ),
        (
            "the bootstrap token".into(),
            Some(ADMIN_TOKEN.into()),
            Some(Role::Admin),
        ),
    ];
    for role in Role::ALL {
        let token = s.reviewer(&format!("r-{role}"), role.as_str(), None).await;
        callers.push((role.to_string(), Some(token), Some(role)));
    }
    // A revoked reviewer (an admin, even) is a stranger.
    let revoked = s.reviewer("gone", "admin", None).await;
    let (ok, _, err) = s.replicas[0]
        .cli(&["reviewers", "revoke", "gone"])
        .await
        .unwrap();
    assert!(ok, "{err}");
    callers.push(("a revoked admin".into(), Some(revoked), None));

    let mut checked = 0;
    for (method, path, required) in EXPECTED {
        let concrete = path
            .replace("{id}", "0190f1e2-0000-7000-8000-000000000000")
            .replace("{name}", "nobody")
            .replace("{agent}", "nobody");
        for (who, token, role) in &callers {
            let body = (*method != "GET" && *method != "DELETE").then(|| json!({}));
            let (status, answer) = s
                .call(
                    0,
                    Method::from_bytes(method.as_bytes()).unwrap(),
                    &concrete,
                    token.as_deref(),
                    body,
                )
                .await;
            match role {
                None => {
                    assert_eq!(status, 401, "{who}: {method} {path}: {answer}");
                    assert_eq!(answer["error"]["code"], "admin_unauthenticated");
                }
                Some(r) if r.allows(*required) => assert!(
                    status != 401 && status != 403,
                    "{who} may {method} {path}: got {status} {answer}"
                ),
                Some(r) => {
                    assert_eq!(status, 403, "{who} may not {method} {path}: {answer}");
                    assert_eq!(answer["error"]["code"], "forbidden");
                    let message = answer["error"]["message"].as_str().unwrap();
                    assert!(
                        message.contains(&format!("needs the {required} role"))
                            && message.contains(&format!("has the {r} role")),
                        "{message}"
                    );
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, EXPECTED.len() * callers.len());

    // Who the API says each caller is.
    let (_, me) = s
        .call(0, Method::GET, "/api/whoami", callers[5].1.as_deref(), None)
        .await;
    assert_eq!(
        (me["name"].as_str(), me["role"].as_str()),
        (Some("r-viewer"), Some("viewer"))
    );
    let (_, me) = s
        .call(0, Method::GET, "/api/whoami", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(
        (me["name"].as_str(), me["bootstrap"].as_bool()),
        (Some("bootstrap-admin"), Some(true))
    );
    // Open endpoints stay open.
    let health = s
        .http
        .get(s.replicas[0].admin_url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // No token reached the log.
    let log = s.replicas[0].log();
    for (_, token, _) in &callers {
        if let Some(t) = token {
            assert!(!log.contains(t.as_str()), "a token is in the log");
        }
    }
}

#[tokio::test]
async fn approvals_record_the_authenticated_reviewer_and_keep_separation_of_duties() {
    let s = setup(2, |b| b).await;
    let alice = s
        .reviewer("alice", "approver", Some("Alice@Example.com"))
        .await;
    let bob = s.reviewer("bob", "approver", None).await;
    let carol = s.reviewer("carol", "admin", None).await;
    let viewer = s.reviewer("vic", "viewer", None).await;
    let buyer = s.replicas[0].create_agent("buyer", &[]).await.unwrap();

    // Carol (an admin) creates an agent through the API: it is recorded as hers.
    let (status, created) = s
        .call(
            0,
            Method::POST,
            "/api/agents",
            Some(&carol),
            Some(json!({"name": "carols-agent"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let carols_agent = created["key"].as_str().unwrap().to_string();
    let created_by: Option<String> =
        sqlx::query_scalar("SELECT created_by FROM agents WHERE name = 'carols-agent'")
            .fetch_one(&s.pool)
            .await
            .unwrap();
    assert_eq!(created_by.as_deref(), Some("carol"));

    // A request on Alice's behalf: she may not approve it (matched by her email, case-insensitively)...
    let id = s.held(&buyer, Some("alice@example.com")).await;
    let (_, shown) = s
        .call(
            0,
            Method::GET,
            &format!("/api/approvals/{id}"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(shown["on_behalf_of"], "alice@example.com");
    let approve = format!("/api/approvals/{id}/approve");
    let (status, refused) = s
        .call(
            0,
            Method::POST,
            &approve,
            Some(&alice),
            Some(json!({"note": "mine"})),
        )
        .await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (403, Some("self_approval")),
        "{refused}"
    );
    // ...a viewer may not approve anything...
    let (status, _) = s
        .call(0, Method::POST, &approve, Some(&viewer), Some(json!({})))
        .await;
    assert_eq!(status, 403);
    // ...Bob may, and what is recorded is Bob, whatever the body says.
    let (status, approved) = s
        .call(
            0,
            Method::POST,
            &approve,
            Some(&bob),
            Some(json!({"note": "ok", "by": "alice"})),
        )
        .await;
    assert_eq!(status, 200, "{approved}");
    assert_eq!(approved["decided_by"], "bob");
    let actor: String = sqlx::query_scalar(
        "SELECT actor FROM admin_actions WHERE action = 'approval.approve' AND target = $1",
    )
    .bind(&id)
    .fetch_one(&s.pool)
    .await
    .unwrap();
    assert_eq!(actor, "bob");
    let refusals: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM admin_actions WHERE action = 'approval.approve.refused' AND actor = 'alice'",
    )
    .fetch_one(&s.pool)
    .await
    .unwrap();
    assert_eq!(refusals, 1);
    // The approval is bound to on whose behalf it was asked: presented on behalf of someone else, refused.
    let (status, body) = s.pay(&buyer, Some("bob"), Some(&id)).await;
    assert_eq!(
        (status, body["tollgate"]["code"].as_str()),
        (403, Some("approval_invalid")),
        "{body}"
    );
    let (status, body) = s.pay(&buyer, Some("alice@example.com"), Some(&id)).await;
    assert_eq!(status, 200, "{body}");

    // On behalf of Bob by name: Bob may not approve it; Alice may.
    let id = s.held(&buyer, Some("bob")).await;
    let (status, refused) = s
        .call(
            1,
            Method::POST,
            &format!("/api/approvals/{id}/approve"),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (403, Some("self_approval"))
    );
    let (status, _) = s
        .call(
            1,
            Method::POST,
            &format!("/api/approvals/{id}/approve"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, 200);

    // Carol's agent's request: Carol may not approve it, may deny it.
    let id = s.held(&carols_agent, None).await;
    let (status, refused) = s
        .call(
            0,
            Method::POST,
            &format!("/api/approvals/{id}/approve"),
            Some(&carol),
            None,
        )
        .await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (403, Some("own_agent_approval"))
    );
    let (status, denied) = s
        .call(
            0,
            Method::POST,
            &format!("/api/approvals/{id}/deny"),
            Some(&carol),
            Some(json!({"note": "no"})),
        )
        .await;
    assert_eq!(
        (status, denied["decided_by"].as_str()),
        (200, Some("carol"))
    );

    // The local CLI (direct store access) records who ran it as local:<by>.
    let id = s.held(&buyer, Some("dave@example.com")).await;
    let (ok, out, err) = s.replicas[0]
        .cli(&[
            "approvals",
            "approve",
            &id,
            "--by",
            "dave",
            "--note",
            "from the shell",
        ])
        .await
        .unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("by local:dave"), "{out}");
    let decided_by: Option<String> =
        sqlx::query_scalar("SELECT decided_by FROM approvals WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&s.pool)
            .await
            .unwrap();
    assert_eq!(decided_by.as_deref(), Some("local:dave"));
}

#[tokio::test]
async fn allow_self_approval_lifts_separation_of_duties() {
    let s = setup(1, |b| b.approvals("allow_self_approval = true")).await;
    let alice = s.reviewer("alice", "admin", None).await;
    let (status, created) = s
        .call(
            0,
            Method::POST,
            "/api/agents",
            Some(&alice),
            Some(json!({"name": "alices-agent"})),
        )
        .await;
    assert_eq!(status, 201);
    let key = created["key"].as_str().unwrap().to_string();
    let id = s.held(&key, Some("alice")).await;
    let (status, approved) = s
        .call(
            0,
            Method::POST,
            &format!("/api/approvals/{id}/approve"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(
        (status, approved["decided_by"].as_str()),
        (200, Some("alice")),
        "{approved}"
    );
    let (status, _) = s.pay(&key, Some("alice"), Some(&id)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn rotation_and_revocation_hold_at_once_on_every_replica() {
    let s = setup(2, |b| b).await;
    // An admin reviewer is created through the API by the bootstrap admin on replica 0.
    let (status, created) = s
        .call(
            0,
            Method::POST,
            "/api/reviewers",
            Some(ADMIN_TOKEN),
            Some(json!({"name": "erin", "role": "operator", "email": "erin@example.com"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["created_by"], "bootstrap-admin");
    let token = created["token"].as_str().unwrap().to_string();
    let (status, me) = s
        .call(1, Method::GET, "/api/whoami", Some(&token), None)
        .await;
    assert_eq!((status, me["role"].as_str()), (200, Some("operator")));
    // An operator may not manage reviewers.
    let (status, _) = s
        .call(
            1,
            Method::POST,
            "/api/reviewers",
            Some(&token),
            Some(json!({"name": "x", "role": "admin"})),
        )
        .await;
    assert_eq!(status, 403);
    // The reserved and the malformed are refused.
    for name in ["bootstrap-admin", "local:erin", "a b"] {
        let (status, _) = s
            .call(
                0,
                Method::POST,
                "/api/reviewers",
                Some(ADMIN_TOKEN),
                Some(json!({"name": name, "role": "viewer"})),
            )
            .await;
        assert_eq!(status, 400, "{name}");
    }
    let (status, _) = s
        .call(
            0,
            Method::POST,
            "/api/reviewers",
            Some(ADMIN_TOKEN),
            Some(json!({"name": "erin", "role": "viewer"})),
        )
        .await;
    assert_eq!(status, 409);

    // Rotated on replica 0: the old token fails on replica 1 at the very next call, the new one works.
    let (status, rotated) = s
        .call(
            0,
            Method::POST,
            "/api/reviewers/erin/rotate",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let new = rotated["token"].as_str().unwrap().to_string();
    assert_ne!(new, token);
    let (status, _) = s
        .call(1, Method::GET, "/api/whoami", Some(&token), None)
        .await;
    assert_eq!(status, 401);
    let (status, _) = s
        .call(1, Method::GET, "/api/whoami", Some(&new), None)
        .await;
    assert_eq!(status, 200);
    // The CLI's rotate works the same way.
    let (ok, out, err) = s.replicas[1]
        .cli(&["reviewers", "rotate", "erin", "--json"])
        .await
        .unwrap();
    assert!(ok, "{err}");
    let cli_token = serde_json::from_str::<Value>(&out).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _) = s
        .call(0, Method::GET, "/api/whoami", Some(&new), None)
        .await;
    assert_eq!(status, 401);
    let (status, _) = s
        .call(0, Method::GET, "/api/whoami", Some(&cli_token), None)
        .await;
    assert_eq!(status, 200);

    // Revoked on replica 1: refused on replica 0 at the next call.
    let (status, _) = s
        .call(
            1,
            Method::POST,
            "/api/reviewers/erin/revoke",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = s
        .call(0, Method::POST, "/api/freeze", Some(&cli_token), None)
        .await;
    assert_eq!(status, 401);
    let (status, _) = s
        .call(
            0,
            Method::POST,
            "/api/reviewers/erin/rotate",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(
        status, 404,
        "a revoked reviewer is not rotated back to life"
    );

    // Listings show state, never a token or its hash.
    let (status, listed) = s
        .call(0, Method::GET, "/api/reviewers", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(status, 200);
    let erin = &listed["reviewers"][0];
    assert_eq!(
        (erin["name"].as_str(), erin["status"].as_str()),
        (Some("erin"), Some("revoked"))
    );
    assert!(erin["last_used"].is_string() && erin["rotated_at"].is_string());
    let text = listed.to_string();
    assert!(!text.contains(&cli_token) && !text.contains("token_hash"));
    let (ok, out, _) = s.replicas[0].cli(&["reviewers", "list"]).await.unwrap();
    assert!(
        ok && out.contains("erin") && out.contains("revoked") && !out.contains(&cli_token),
        "{out}"
    );
    for r in &s.replicas {
        let log = r.log();
        for t in [&token, &new, &cli_token] {
            assert!(!log.contains(t.as_str()), "a token is in the log");
        }
    }
    let actions: Vec<String> = sqlx::query_scalar(
        "SELECT action || ' by ' || actor FROM admin_actions WHERE target = 'erin' ORDER BY at",
    )
    .fetch_all(&s.pool)
    .await
    .unwrap();
    assert_eq!(actions[0], "reviewer.create by bootstrap-admin");
    assert!(
        actions
            .iter()
            .any(|a| a == "reviewer.revoke by bootstrap-admin"),
        "{actions:?}"
    );
}

#[tokio::test]
async fn a_trusted_proxys_identity_header_signs_a_reviewer_in() {
    // Trusted: requests from 127.0.0.1 (the test is the "proxy") carrying X-Auth-Email.
    let s = setup(1, |b| {
        b.admin(r#"trusted_proxies = ["127.0.0.1"]"#)
            .admin(r#"identity_header = "X-Auth-Email""#)
    })
    .await;
    s.reviewer("alice", "approver", Some("alice@example.com"))
        .await;
    let gone = s.reviewer("gone", "admin", Some("gone@example.com")).await;
    drop(gone);
    let (ok, _, _) = s.replicas[0]
        .cli(&["reviewers", "revoke", "gone"])
        .await
        .unwrap();
    assert!(ok);
    let whoami = |header: &'static str, email: &'static str| {
        let http = s.http.clone();
        let url = s.replicas[0].admin_url("/api/whoami");
        async move {
            let r = http.get(url).header(header, email).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, me) = whoami("X-Auth-Email", "ALICE@example.com").await;
    assert_eq!(
        (status, me["name"].as_str(), me["role"].as_str()),
        (200, Some("alice"), Some("approver"))
    );
    // Two identity headers (a proxy appending its own to one the client sent): neither is believed.
    let r = s
        .http
        .get(s.replicas[0].admin_url("/api/whoami"))
        .header("X-Auth-Email", "mallory@example.com")
        .header("X-Auth-Email", "alice@example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // Unknown, revoked, or the header this tollgate does not trust: no one.
    assert_eq!(whoami("X-Auth-Email", "mallory@example.com").await.0, 401);
    assert_eq!(whoami("X-Auth-Email", "gone@example.com").await.0, 401);
    assert_eq!(
        whoami("X-Forwarded-Email", "alice@example.com").await.0,
        401
    );
    // Roles hold for a signed-in reviewer too.
    let r = s
        .http
        .post(s.replicas[0].admin_url("/api/freeze"))
        .header("X-Auth-Email", "alice@example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // The same header from an address that is not a trusted proxy is ignored.
    let other = setup(1, |b| b.admin(r#"trusted_proxies = ["192.0.2.7"]"#)).await;
    other
        .reviewer("alice", "admin", Some("alice@example.com"))
        .await;
    let r = other
        .http
        .get(other.replicas[0].admin_url("/api/whoami"))
        .header("X-Forwarded-Email", "alice@example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}
