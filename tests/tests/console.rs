//! The reviewer console (issue #16) in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`, installed by the test when missing) driven over WebDriver against the real binary on a
//! real Postgres, with a held request made by an agent through the proxy.
//!
//! An approver signs in with their token, finds the pending approval, reads exactly what will be executed,
//! approves it with a note, and the agent's retry is forwarded; a viewer is offered no Approve button and a
//! post they forge is refused; a form without its CSRF token, or from another site, is refused; a session
//! ends when its reviewer's token is rotated. Screenshots of each page go to
//! `target/console-screenshots/` (the ones in `docs/console/` come from this test).

use std::path::PathBuf;

use serde_json::Value;
use tollgate_tests::tollgate::{Tollgate, policy_dir_with};
use tollgate_tests::webdriver::Browser;
use tollgate_tests::{TestDatabase, Upstream};

/// A Stripe payment intent above $50 needs a human; everything else is allowed.
const POLICY: &str = r#"package tollgate

amount := to_number(input.request.body.amount) if input.action.name == "stripe.payment.create"

decision := {"outcome": "approve", "reasons": [{"rule": "spend.single_charge", "message": "charges above $50 need a human"}], "charge": {"cents": amount, "budget": "agent-provider-month", "cap_cents": 10000}} if {
	amount > 5000
} else := {"outcome": "allow", "reasons": []}
"#;

fn screenshots() -> PathBuf {
    let bin = tollgate_tests::tollgate::binary().expect("binary");
    // target/<profile>/tollgate → target/console-screenshots
    bin.parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .join("console-screenshots")
}

/// A Slack-style webhook receiver on 127.0.0.1: every JSON body it was sent.
struct Receiver {
    url: String,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = bodies.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: axum::body::Bytes| {
                let kept = kept.clone();
                async move {
                    if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                        kept.lock().unwrap().push(v);
                    }
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, bodies }
    }

    /// The link of the first message that has one, waiting up to 20 s for it.
    async fn link(&self) -> String {
        fn find(v: &Value) -> Option<String> {
            match v {
                Value::Object(m) => m
                    .get("url")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .or_else(|| m.values().find_map(find)),
                Value::Array(items) => items.iter().find_map(find),
                _ => None,
            }
        }
        for _ in 0..200 {
            if let Some(link) = self.bodies.lock().unwrap().iter().find_map(find) {
                return link;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("no notification with a link arrived");
    }
}

/// The console's public URL, which notifications link to (plain HTTP here, as the browser reaches the test's
/// listener; `served_over_tls_the_cookies_are_secure_and_host_only` sets an https one).
const PUBLIC_URL: &str = "http://console.tollgate.test";

struct Setup {
    _db: TestDatabase,
    receiver: Receiver,
    upstream: Upstream,
    _policy: tempfile::TempDir,
    tollgate: Tollgate,
    http: reqwest::Client,
    agent_key: String,
}

impl Setup {
    async fn start() -> Setup {
        Setup::start_with(PUBLIC_URL).await
    }

    async fn start_with(public_url: &str) -> Setup {
        Setup::start_configured(public_url, "max_pending_per_agent = 20").await
    }

    /// `approvals`: a line for the `[approvals]` table.
    async fn start_configured(public_url: &str, approvals: &str) -> Setup {
        let db = TestDatabase::create().await.expect("database");
        let upstream = Upstream::builder().start().await.expect("upstream");
        let policy = policy_dir_with(POLICY).expect("policy");
        let receiver = Receiver::start().await;
        let tollgate = Tollgate::builder(db.url(), &upstream.url())
            .policy_dir(policy.path())
            .admin(&format!("public_url = \"{public_url}\""))
            .approvals(approvals)
            .tables(&format!(
                "[notifications]\nsweep_interval_ms = 100\n[[notifications.webhooks]]\nname = \"reviewers\"\nurl = \"{}\"\nformat = \"slack\"\n",
                receiver.url
            ))
            .start()
            .await
            .expect("tollgate starts");
        let agent_key = tollgate
            .create_agent("buyer", &["--scope", "billing:spend"])
            .await
            .expect("agent");
        Setup {
            _db: db,
            receiver,
            upstream,
            _policy: policy,
            tollgate,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            agent_key,
        }
    }

    async fn reviewer(&self, name: &str, role: &str) -> String {
        let (ok, out, err) = self
            .tollgate
            .cli(&["reviewers", "create", name, "--role", role, "--json"])
            .await
            .unwrap();
        assert!(ok, "reviewers create: {err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        v["token"].as_str().unwrap().to_string()
    }

    /// A $60 payment intent by the agent; `approval` retries it under an approval.
    async fn pay(&self, approval: Option<&str>) -> (u16, Value) {
        let mut req = self
            .http
            .post(self.tollgate.url("/stripe/v1/payment_intents"))
            .basic_auth(&self.agent_key, Some(""))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("Idempotency-Key", "console-test-1")
            .body("amount=6000&currency=usd&description=annual+domain+bundle");
        if let Some(id) = approval {
            req = req.header("Tollgate-Approval", id);
        }
        let r = req.send().await.expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn held(&self) -> String {
        let (status, body) = self.pay(None).await;
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

    async fn approval(&self, id: &str) -> Value {
        self.http
            .get(self.tollgate.admin_url(&format!("/api/approvals/{id}")))
            .bearer_auth(tollgate_tests::tollgate::ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// A form post to the console with a session cookie, as a script outside the browser would send it.
    async fn post_form(
        &self,
        path: &str,
        cookie: &str,
        fields: &[(&str, &str)],
        origin: Option<&str>,
    ) -> (u16, String) {
        let mut req = self
            .http
            .post(self.tollgate.admin_url(path))
            .header("cookie", format!("tollgate_session={cookie}"))
            .form(fields);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    }
}

async fn sign_in(browser: &Browser, s: &Setup, token: &str, shot: Option<&str>) {
    browser
        .goto(&s.tollgate.admin_url("/approvals"))
        .await
        .unwrap();
    // Not signed in: the console sends the browser to its sign-in form, remembering where it was going.
    let url = browser
        .wait_for_url(|u| u.contains("/login"))
        .await
        .unwrap();
    assert!(url.contains("next=%2Fapprovals"), "{url}");
    let field = browser.find("#token").await.unwrap();
    if let Some(name) = shot {
        browser.screenshot(&screenshots().join(name)).await.unwrap();
    }
    browser.type_into(&field, token).await.unwrap();
    browser
        .click(&browser.find("#sign-in").await.unwrap())
        .await
        .unwrap();
    browser
        .wait_for_url(|u| u.ends_with("/approvals"))
        .await
        .unwrap();
}

/// The session cookie the browser holds, checked for its attributes.
async fn session_cookie(browser: &Browser) -> String {
    let cookies = browser.cookies().await.unwrap();
    let (_, value, raw) = cookies
        .iter()
        .find(|(n, _, _)| n == "tollgate_session")
        .unwrap_or_else(|| panic!("no session cookie in {cookies:?}"));
    assert_eq!(raw["httpOnly"], true, "{raw}");
    assert_eq!(raw["sameSite"], "Strict", "{raw}");
    assert!(raw.get("expiry").is_some(), "the session expires: {raw}");
    value.clone()
}

fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    html[at..at + 64].to_string()
}

#[tokio::test]
async fn an_approver_runs_the_approval_loop_in_a_real_browser() {
    let s = Setup::start().await;
    let alice = s.reviewer("alice", "approver").await;
    let victor = s.reviewer("victor", "viewer").await;
    let approval = s.held().await;
    assert_eq!(s.upstream.requests().len(), 0, "nothing forwarded yet");

    let browser = Browser::start().await.expect("a headless browser");
    sign_in(&browser, &s, &alice, Some("01-sign-in.png")).await;
    assert_eq!(
        browser
            .text(&browser.find("#whoami").await.unwrap())
            .await
            .unwrap(),
        "alice"
    );
    let cookie = session_cookie(&browser).await;
    assert!(!cookie.contains(&alice), "the cookie is not the token");

    // The queue shows the held request; open it.
    let link = browser.find("#pending a.approval-link").await.unwrap();
    let queue = browser
        .text(&browser.find("#pending").await.unwrap())
        .await
        .unwrap();
    assert!(
        queue.contains("buyer")
            && queue.contains("POST /v1/payment_intents")
            && queue.contains("$60.00"),
        "{queue}"
    );
    browser
        .screenshot(&screenshots().join("02-approvals.png"))
        .await
        .unwrap();
    // The reviewers' channel got a message linking to this approval in the console; follow it.
    let notified = s.receiver.link().await;
    let path = format!("/approvals/{approval}");
    assert_eq!(notified, format!("{PUBLIC_URL}{path}"));
    assert_eq!(
        browser.attribute(&link, "href").await.unwrap().as_deref(),
        Some(path.as_str()),
        "the queue links to the same page"
    );
    browser.goto(&s.tollgate.admin_url(&path)).await.unwrap();
    browser.wait_for_url(|u| u.ends_with(&path)).await.unwrap();

    // Exactly what will be executed: the request line, the parsed body, the charge, why it was held.
    let request_line = browser
        .text(&browser.find("#request-line").await.unwrap())
        .await
        .unwrap();
    assert_eq!(request_line, "POST /v1/payment_intents");
    let body = browser
        .text(&browser.find("#body").await.unwrap())
        .await
        .unwrap();
    assert!(
        body.contains("\"amount\": \"6000\"") && body.contains("annual domain bundle"),
        "{body}"
    );
    assert_eq!(
        browser
            .text(&browser.find("#charge").await.unwrap())
            .await
            .unwrap(),
        "$60.00"
    );
    let reasons = browser
        .text(&browser.find("#reasons").await.unwrap())
        .await
        .unwrap();
    assert!(
        reasons.contains("charges above $50 need a human"),
        "{reasons}"
    );
    browser
        .screenshot(&screenshots().join("03-approval.png"))
        .await
        .unwrap();

    // A note is required: the form will not submit without one (the server refuses it too, below).
    browser
        .type_into(
            &browser.find("#note").await.unwrap(),
            "checked with finance, ticket FIN-2231",
        )
        .await
        .unwrap();
    browser
        .click(&browser.find("#approve").await.unwrap())
        .await
        .unwrap();
    browser
        .wait_for_url(|u| u.contains("done=approved"))
        .await
        .unwrap();
    assert_eq!(
        browser
            .text(&browser.find("#approval-status").await.unwrap())
            .await
            .unwrap(),
        "approved"
    );
    assert_eq!(
        browser
            .text(&browser.find("#decided-by").await.unwrap())
            .await
            .unwrap(),
        "alice"
    );
    browser
        .screenshot(&screenshots().join("04-approved.png"))
        .await
        .unwrap();

    // The recorded approver is the signed-in reviewer, with the note.
    let recorded = s.approval(&approval).await;
    assert_eq!(recorded["status"], "approved");
    assert_eq!(recorded["decided_by"], "alice");
    assert_eq!(recorded["note"], "checked with finance, ticket FIN-2231");

    // The agent's retry of the exact call is forwarded, once.
    let (status, answer) = s.pay(Some(&approval)).await;
    assert_eq!(status, 200, "{answer}");
    let forwarded = s.upstream.requests();
    assert_eq!(forwarded.len(), 1);
    assert_eq!(forwarded[0].path_and_query, "/v1/payment_intents");
    let used = s.approval(&approval).await;
    assert_eq!(used["status"], "consumed", "{used}");

    // The other pages render for an approver: decisions (filtered), a decision, spend, agents, operations.
    browser
        .goto(&s.tollgate.admin_url("/decisions?agent=buyer&since=1h"))
        .await
        .unwrap();
    let rows = browser
        .text(&browser.find("#decisions").await.unwrap())
        .await
        .unwrap();
    assert!(
        rows.contains("approval_required") && rows.contains("allow"),
        "{rows}"
    );
    browser
        .screenshot(&screenshots().join("05-decisions.png"))
        .await
        .unwrap();
    browser
        .goto(&s.tollgate.admin_url("/decisions?outcome=deny"))
        .await
        .unwrap();
    assert!(
        browser.find_all("#decisions").await.unwrap().is_empty(),
        "no denials"
    );
    browser.goto(&s.tollgate.admin_url("/audit")).await.unwrap();
    assert_eq!(
        browser
            .text(&browser.find("#audit-status").await.unwrap())
            .await
            .unwrap(),
        "intact"
    );
    browser.goto(&s.tollgate.admin_url("/spend")).await.unwrap();
    let windows = browser
        .text(&browser.find("#windows").await.unwrap())
        .await
        .unwrap();
    assert!(
        windows.contains("$60.00") && windows.contains("$100.00") && windows.contains("buyer"),
        "{windows}"
    );
    browser
        .screenshot(&screenshots().join("06-spend.png"))
        .await
        .unwrap();
    browser
        .goto(&s.tollgate.admin_url("/agents"))
        .await
        .unwrap();
    let agents = browser
        .text(&browser.find("#agents").await.unwrap())
        .await
        .unwrap();
    assert!(
        agents.contains("buyer") && agents.contains("billing:spend"),
        "{agents}"
    );
    assert!(
        browser.find_all("#create-agent").await.unwrap().is_empty(),
        "an approver is not offered agent creation"
    );
    browser
        .goto(&s.tollgate.admin_url("/operations"))
        .await
        .unwrap();
    assert!(
        browser.find_all("#freeze-form").await.unwrap().is_empty(),
        "an approver is not offered the freeze"
    );
    let deliveries = browser
        .text(&browser.find("#notifications").await.unwrap())
        .await
        .unwrap();
    assert!(
        deliveries.contains("approval_required") && deliveries.contains("delivered"),
        "{deliveries}"
    );
    browser
        .screenshot(&screenshots().join("07-operations.png"))
        .await
        .unwrap();

    // ---- a viewer: sees, cannot decide ----
    let second = {
        // A new call (another key) waits for a decision.
        let r = s
            .http
            .post(s.tollgate.url("/stripe/v1/payment_intents"))
            .basic_auth(&s.agent_key, Some(""))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("Idempotency-Key", "console-test-2")
            .body("amount=7000&currency=usd")
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        v["tollgate"]["approval_id"].as_str().unwrap().to_string()
    };
    browser.delete_cookies().await.unwrap();
    sign_in(&browser, &s, &victor, None).await;
    let victor_cookie = session_cookie(&browser).await;
    browser
        .goto(&s.tollgate.admin_url(&format!("/approvals/{second}")))
        .await
        .unwrap();
    browser.find("#no-decide").await.unwrap();
    // What is already spent from the budget this call would spend from.
    let budget = browser
        .text(&browser.find(".budget-line").await.unwrap())
        .await
        .unwrap();
    assert!(
        budget.contains("$60.00 spent") && budget.contains("cap $100.00"),
        "{budget}"
    );
    assert!(
        browser.find_all("#approve").await.unwrap().is_empty(),
        "no Approve button for a viewer"
    );
    assert!(
        browser.find_all("#deny").await.unwrap().is_empty(),
        "no Deny button for a viewer"
    );
    browser
        .screenshot(&screenshots().join("08-viewer.png"))
        .await
        .unwrap();
    // A forged post with the viewer's own valid session and CSRF token is refused by role.
    let victor_csrf = csrf_of(&browser.source().await.unwrap());
    let (status, page) = s
        .post_form(
            &format!("/approvals/{second}/approve"),
            &victor_cookie,
            &[("csrf", &victor_csrf), ("note", "forged")],
            None,
        )
        .await;
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("needs the approver role"), "{page}");
    assert_eq!(s.approval(&second).await["status"], "pending");

    // ---- CSRF: alice's live session, but no token, a wrong token, or another site ----
    browser.delete_cookies().await.unwrap();
    sign_in(&browser, &s, &alice, None).await;
    let alice_cookie = session_cookie(&browser).await;
    let alice_csrf = csrf_of(&browser.source().await.unwrap());
    let path = format!("/approvals/{second}/approve");
    let (status, page) = s
        .post_form(&path, &alice_cookie, &[("note", "no token")], None)
        .await;
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("CSRF token"), "{page}");
    let (status, _) = s
        .post_form(
            &path,
            &alice_cookie,
            &[("csrf", &victor_csrf), ("note", "another session's token")],
            None,
        )
        .await;
    assert_eq!(status, 403);
    let (status, page) = s
        .post_form(
            &path,
            &alice_cookie,
            &[("csrf", &alice_csrf), ("note", "from elsewhere")],
            Some("https://evil.example"),
        )
        .await;
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("another site"), "{page}");
    // A note is required by the server, not only by the browser.
    let (status, page) = s
        .post_form(
            &path,
            &alice_cookie,
            &[("csrf", &alice_csrf), ("note", "  ")],
            None,
        )
        .await;
    assert_eq!(status, 400, "{page}");
    // A note is a record of why, not a document: one over 2000 characters is refused, nothing changed.
    let essay = "n".repeat(2001);
    let (status, page) = s
        .post_form(
            &path,
            &alice_cookie,
            &[("csrf", &alice_csrf), ("note", &essay)],
            None,
        )
        .await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("longer than 2000 characters"), "{page}");
    assert_eq!(
        s.approval(&second).await["status"],
        "pending",
        "nothing above changed it"
    );
    // With its token, the same post works.
    let (status, _) = s
        .post_form(
            &path,
            &alice_cookie,
            &[("csrf", &alice_csrf), ("note", "ok by script")],
            None,
        )
        .await;
    assert_eq!(status, 303);
    assert_eq!(s.approval(&second).await["decided_by"], "alice");

    // ---- rotating alice's token ends her sessions at once ----
    let (ok, _, err) = s
        .tollgate
        .cli(&["reviewers", "rotate", "alice"])
        .await
        .unwrap();
    assert!(ok, "{err}");
    let r = s
        .http
        .get(s.tollgate.admin_url("/approvals"))
        .header("cookie", format!("tollgate_session={alice_cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/login")
    );
    // Signing out ends victor's.
    let (status, _) = s
        .post_form("/logout", &victor_cookie, &[("csrf", &victor_csrf)], None)
        .await;
    assert_eq!(status, 303);
    let r = s
        .http
        .get(s.tollgate.admin_url("/approvals"))
        .header("cookie", format!("tollgate_session={victor_cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303, "signed out");
}

#[tokio::test]
async fn every_page_carries_a_strict_policy_and_no_secret() {
    let s = Setup::start().await;
    let admin_token = s.reviewer("root", "admin").await;
    let http = &s.http;
    // The sign-in form: its double-submit cookie and the policy.
    let r = http
        .get(s.tollgate.admin_url("/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
        "form-action 'self'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    let login_cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(login_cookie.contains("HttpOnly") && login_cookie.contains("SameSite=Strict"));
    let nonce = login_cookie
        .trim_start_matches("tollgate_login=")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let html = r.text().await.unwrap();
    assert!(
        !html.contains("<script>") && !html.contains("style="),
        "no inline script or style"
    );

    // Sign-in without the double-submitted nonce is refused; with it, a session opens.
    let signin = |with_cookie: bool| {
        let mut req = http.post(s.tollgate.admin_url("/login")).form(&[
            ("token", admin_token.as_str()),
            ("login_csrf", nonce.as_str()),
            ("next", "//evil.example/x"),
        ]);
        if with_cookie {
            req = req.header("cookie", format!("tollgate_login={nonce}"));
        }
        req.send()
    };
    assert_eq!(signin(false).await.unwrap().status().as_u16(), 403);
    let r = signin(true).await.unwrap();
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(r.headers()["location"], "/approvals", "no open redirect");
    let session = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("tollgate_session="))
        .unwrap();
    let session = session["tollgate_session=".len()..]
        .split(';')
        .next()
        .unwrap()
        .to_string();

    // Every page renders for an admin, with the policy, without the token or the provider secrets.
    for page in [
        "/approvals",
        "/decisions",
        "/audit",
        "/spend",
        "/agents",
        "/operations",
    ] {
        let r = http
            .get(s.tollgate.admin_url(page))
            .header("cookie", format!("tollgate_session={session}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{page}");
        assert!(
            r.headers().contains_key("content-security-policy"),
            "{page}"
        );
        assert_eq!(r.headers()["cache-control"], "no-store", "{page}");
        let html = r.text().await.unwrap();
        for secret in [
            admin_token.as_str(),
            tollgate_tests::tollgate::ADMIN_TOKEN,
            tollgate_tests::tollgate::STRIPE_SECRET,
            tollgate_tests::tollgate::CLOUDFLARE_SECRET,
            s.agent_key.as_str(),
        ] {
            assert!(!html.contains(secret), "{page} shows a secret");
        }
    }
    // An admin creates an agent from the console: the key is shown once, on that answer only.
    let csrf = {
        let html = http
            .get(s.tollgate.admin_url("/agents"))
            .header("cookie", format!("tollgate_session={session}"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        csrf_of(&html)
    };
    let (status, page) = s
        .post_form(
            "/agents",
            &session,
            &[
                ("csrf", &csrf),
                ("name", "dns-bot"),
                ("scopes", "dns:write, dns:read"),
                ("labels", "env=prod"),
            ],
            None,
        )
        .await;
    assert_eq!(status, 201, "{page}");
    // Scopes and labels are printable: a terminal escape in one is refused.
    let (status, _) = s
        .post_form(
            "/agents",
            &session,
            &[
                ("csrf", &csrf),
                ("name", "odd-bot"),
                ("scopes", "dns:write,\u{1b}[31m"),
            ],
            None,
        )
        .await;
    assert_eq!(status, 400);
    let key_at = page.find("id=\"agent-key\">").unwrap() + 15;
    let key = &page[key_at..key_at + 20];
    assert!(key.starts_with("tg_"), "{key}");
    let listing = http
        .get(s.tollgate.admin_url("/agents"))
        .header("cookie", format!("tollgate_session={session}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(listing.contains("dns-bot") && !listing.contains(key));
    // The agent has the scopes the form gave.
    let (_, out, _) = s.tollgate.cli(&["agents", "list", "--json"]).await.unwrap();
    let agents: Value = serde_json::from_str(&out).unwrap();
    let created = agents
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "dns-bot")
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(
        created["scopes"],
        serde_json::json!(["dns:write", "dns:read"]),
        "{agents}"
    );

    // A name no agent can have is answered as such, not sent to the store.
    let (status, page) = s
        .post_form(
            "/agents/buyer%00/revoke",
            &session,
            &[("csrf", &csrf)],
            None,
        )
        .await;
    assert_eq!(status, 404, "{page}");
    // A freeze needs a reason, and is refused without one.
    let (status, _) = s
        .post_form(
            "/operations/freeze",
            &session,
            &[("csrf", &csrf), ("reason", "")],
            None,
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = s
        .post_form(
            "/operations/freeze",
            &session,
            &[("csrf", &csrf), ("reason", "incident 42")],
            None,
        )
        .await;
    assert_eq!(status, 303);
    let (status, body) = s.pay(None).await;
    assert_eq!(status, 503, "frozen: {body}");
    let operations = http
        .get(s.tollgate.admin_url("/operations"))
        .header("cookie", format!("tollgate_session={session}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        operations.contains("Last frozen by root") && operations.contains("incident 42"),
        "who froze and why: {operations}"
    );
    let (status, _) = s
        .post_form(
            "/operations/unfreeze",
            &session,
            &[("csrf", &csrf), ("reason", "resolved")],
            None,
        )
        .await;
    assert_eq!(status, 303);
    // A session cookie that was never issued opens nothing.
    let r = http
        .get(s.tollgate.admin_url("/approvals"))
        .header("cookie", format!("tollgate_session={}", "0".repeat(64)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
}

#[tokio::test]
async fn a_trusted_proxy_signs_a_reviewer_into_the_console() {
    let db = TestDatabase::create().await.expect("database");
    let upstream = Upstream::builder().start().await.expect("upstream");
    let policy = policy_dir_with(POLICY).expect("policy");
    let tollgate = Tollgate::builder(db.url(), &upstream.url())
        .policy_dir(policy.path())
        .admin(r#"trusted_proxies = ["127.0.0.1"]"#)
        .start()
        .await
        .expect("tollgate starts");
    let (ok, _, err) = tollgate
        .cli(&[
            "reviewers",
            "create",
            "olga",
            "--role",
            "operator",
            "--email",
            "Olga@Example.com",
        ])
        .await
        .unwrap();
    assert!(ok, "{err}");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // The proxy vouches for olga: the page renders and a session opens for her.
    let r = http
        .get(tollgate.admin_url("/operations"))
        .header("X-Forwarded-Email", "olga@example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    let cookie = cookie["tollgate_session=".len()..]
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let html = r.text().await.unwrap();
    assert!(
        html.contains(">olga<") && html.contains("freeze-form"),
        "an operator is offered the freeze"
    );
    let csrf = csrf_of(&html);
    // Through the proxy, her session posts.
    let freeze = |with_header: bool| {
        let mut req = http
            .post(tollgate.admin_url("/operations/freeze"))
            .header("cookie", format!("tollgate_session={cookie}"))
            .form(&[("csrf", csrf.as_str()), ("reason", "sso drill")]);
        if with_header {
            req = req.header("X-Forwarded-Email", "olga@example.com");
        }
        req.send()
    };
    // The same cookie without the proxy's word is not a session: the single sign-on is the proxy's.
    assert_eq!(freeze(false).await.unwrap().status().as_u16(), 401);
    assert_eq!(freeze(true).await.unwrap().status().as_u16(), 303);
    let pool = db.pool().await.unwrap();
    let actions: Vec<(String, String)> = sqlx::query_as(
        "SELECT action, actor FROM admin_actions WHERE action IN ('console.sign_in', 'freeze') ORDER BY at",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        actions,
        vec![
            ("console.sign_in".into(), "olga".into()),
            ("freeze".into(), "olga".into())
        ]
    );
    // Two identity headers vouch for no one: the session opened for olga is not honoured with them.
    let r = http
        .get(tollgate.admin_url("/operations"))
        .header("cookie", format!("tollgate_session={cookie}"))
        .header("X-Forwarded-Email", "olga@example.com")
        .header("X-Forwarded-Email", "olga@example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    // Someone the proxy vouches for who is no reviewer gets the sign-in form.
    let r = http
        .get(tollgate.admin_url("/operations"))
        .header("X-Forwarded-Email", "stranger@example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
}

#[tokio::test]
async fn served_over_tls_the_cookies_are_secure_and_host_only() {
    // Behind a TLS-terminating proxy: the public URL is https.
    let s = Setup::start_with("https://tollgate-console.example").await;
    let token = s.reviewer("tess", "viewer").await;
    let r = s
        .http
        .get(s.tollgate.admin_url("/login"))
        .send()
        .await
        .unwrap();
    let login_cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        login_cookie.starts_with("__Host-tollgate_login=") && login_cookie.contains("; Secure"),
        "{login_cookie}"
    );
    let nonce = login_cookie["__Host-tollgate_login=".len()..]
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let sign_in = |origin: &'static str| {
        s.http
            .post(s.tollgate.admin_url("/login"))
            .header("cookie", format!("__Host-tollgate_login={nonce}"))
            .header("origin", origin)
            .form(&[("token", token.as_str()), ("login_csrf", nonce.as_str())])
            .send()
    };
    // Posted from the plain-HTTP origin, not the console's public one: refused.
    assert_eq!(
        sign_in("http://tollgate-console.example")
            .await
            .unwrap()
            .status()
            .as_u16(),
        403
    );
    let r = sign_in("https://tollgate-console.example").await.unwrap();
    assert_eq!(r.status().as_u16(), 303);
    let session = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("__Host-tollgate_session="))
        .expect("a __Host- session cookie");
    assert!(
        session.contains("; Secure") && session.contains("HttpOnly") && session.contains("Path=/"),
        "{session}"
    );
    let value = session["__Host-tollgate_session=".len()..]
        .split(';')
        .next()
        .unwrap();
    let page = |name: &str| {
        s.http
            .get(s.tollgate.admin_url("/approvals"))
            .header("cookie", format!("{name}={value}"))
            .send()
    };
    assert_eq!(
        page("__Host-tollgate_session")
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    // The same value under the plain-HTTP name is not read: the session lives only in the Secure cookie.
    assert_eq!(
        page("tollgate_session").await.unwrap().status().as_u16(),
        303
    );
}

#[tokio::test]
async fn a_flood_from_one_agent_hides_no_other_agents_request() {
    // A deployment that lets one agent keep hundreds of requests waiting.
    let s = Setup::start_configured(PUBLIC_URL, "max_pending_per_agent = 1000").await;
    let token = s.reviewer("vera", "viewer").await;
    let flooder = s.tollgate.create_agent("flooder", &[]).await.unwrap();
    // 205 distinct held requests from one agent, then one from another.
    for cents in 6001..6206 {
        let r = s
            .http
            .post(s.tollgate.url("/stripe/v1/payment_intents"))
            .basic_auth(&flooder, Some(""))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("amount={cents}&currency=usd"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 403);
    }
    let victim = s.held().await;
    let browser = Browser::start().await.expect("a headless browser");
    sign_in(&browser, &s, &token, None).await;
    assert_eq!(
        browser
            .text(&browser.find("#pending-total").await.unwrap())
            .await
            .unwrap(),
        "206 pending",
        "the true count"
    );
    let groups = browser
        .text(&browser.find("#by-agent").await.unwrap())
        .await
        .unwrap();
    assert!(
        groups.contains("flooder (205)") && groups.contains("buyer (1)"),
        "{groups}"
    );
    let shown = browser
        .find_all("#pending a.approval-link")
        .await
        .unwrap()
        .len();
    assert_eq!(shown, 200, "a page of the oldest");
    // The other agent's request is one click away.
    let buyer = browser
        .find("#by-agent a[href='/approvals?agent=buyer']")
        .await
        .unwrap();
    browser.click(&buyer).await.unwrap();
    browser
        .wait_for_url(|u| u.ends_with("agent=buyer"))
        .await
        .unwrap();
    let links = browser.find_all("#pending a.approval-link").await.unwrap();
    assert_eq!(links.len(), 1);
    assert_eq!(
        browser
            .attribute(&links[0], "href")
            .await
            .unwrap()
            .as_deref(),
        Some(format!("/approvals/{victim}").as_str())
    );
}

#[tokio::test]
async fn an_agent_may_keep_only_so_many_requests_waiting() {
    let s = Setup::start_configured(PUBLIC_URL, "max_pending_per_agent = 2").await;
    let flooder = s.tollgate.create_agent("flooder", &[]).await.unwrap();
    let pay = |cents: u32| {
        s.http
            .post(s.tollgate.url("/stripe/v1/payment_intents"))
            .basic_auth(&flooder, Some(""))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("amount={cents}&currency=usd"))
            .send()
    };
    let mut ids = Vec::new();
    for cents in [6001, 6002] {
        let v: Value = pay(cents).await.unwrap().json().await.unwrap();
        assert_eq!(v["tollgate"]["code"], "approval_required", "{v}");
        ids.push(v["tollgate"]["approval_id"].as_str().unwrap().to_string());
    }
    // A third request that needs a reviewer is refused, and nothing new waits.
    let r = pay(6003).await.unwrap();
    assert_eq!(r.status().as_u16(), 429);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tollgate"]["code"], "rate_limited", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already has 2 requests waiting"),
        "{v}"
    );
    // A repeat of a waiting request still gets its approval; another agent is not affected.
    let v: Value = pay(6001).await.unwrap().json().await.unwrap();
    assert_eq!(
        v["tollgate"]["approval_id"].as_str(),
        Some(ids[0].as_str()),
        "{v}"
    );
    s.held().await;
    let pending: Value = s
        .http
        .get(s.tollgate.admin_url("/api/approvals?status=pending"))
        .bearer_auth(tollgate_tests::tollgate::ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        pending["approvals"].as_array().unwrap().len(),
        3,
        "{pending}"
    );
    // The API's queue of one agent; a filter it cannot honour is refused, never ignored.
    let api = |query: &'static str| {
        s.http
            .get(s.tollgate.admin_url(&format!("/api/approvals?{query}")))
            .bearer_auth(tollgate_tests::tollgate::ADMIN_TOKEN)
            .send()
    };
    let mine: Value = api("status=pending&agent=flooder")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let agents: Vec<&str> = mine["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["agent"].as_str().unwrap())
        .collect();
    assert_eq!(agents, vec!["flooder", "flooder"], "{mine}");
    assert_eq!(api("agent=flooder").await.unwrap().status().as_u16(), 400);
    assert_eq!(
        api("status=pending&agnt=flooder")
            .await
            .unwrap()
            .status()
            .as_u16(),
        400
    );
    // Once a reviewer decides one, the agent may ask again.
    let r = s
        .http
        .post(
            s.tollgate
                .admin_url(&format!("/api/approvals/{}/deny", ids[1])),
        )
        .bearer_auth(tollgate_tests::tollgate::ADMIN_TOKEN)
        .json(&serde_json::json!({"note": "no"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = pay(6003).await.unwrap().json().await.unwrap();
    assert_eq!(v["tollgate"]["code"], "approval_required", "{v}");
    // In parallel, too: a fresh agent sending 25 distinct calls at once gets exactly 2 waiting.
    let racer = s.tollgate.create_agent("racer", &[]).await.unwrap();
    let mut calls = Vec::new();
    for cents in 6101..6126 {
        let r = s
            .http
            .post(s.tollgate.url("/stripe/v1/payment_intents"))
            .basic_auth(&racer, Some(""))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("amount={cents}&currency=usd"))
            .send();
        calls.push(r);
    }
    let mut codes = std::collections::BTreeMap::new();
    for r in futures_join(calls).await {
        let v: Value = r.unwrap().json().await.unwrap();
        *codes
            .entry(v["tollgate"]["code"].as_str().unwrap_or("?").to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(codes.get("approval_required"), Some(&2), "{codes:?}");
    // The refusal left a decision record like any other.
    let decisions: Value = s
        .http
        .get(s.tollgate.admin_url("/api/decisions?agent=flooder"))
        .bearer_auth(tollgate_tests::tollgate::ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let limited = decisions["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["code"] == "rate_limited")
        .count();
    assert_eq!(limited, 1, "{decisions}");
}

/// Runs the futures at once (each on its own task) and returns their outputs in order.
async fn futures_join<F>(futures: Vec<F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let tasks: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn a_body_too_large_to_show_whole_cannot_be_approved() {
    let s = Setup::start().await;
    let token = s.reviewer("ann", "approver").await;
    // A long value: the record keeps its start and hash only, so a reviewer could not see all it says.
    let long = "x".repeat(3000);
    let r = s
        .http
        .post(s.tollgate.url("/stripe/v1/payment_intents"))
        .basic_auth(&s.agent_key, Some(""))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "amount=6000&currency=usd&description={long}&transfer_data[destination]=acct_ELSEWHERE"
        ))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    let id = v["tollgate"]["approval_id"].as_str().unwrap().to_string();
    let browser = Browser::start().await.expect("a headless browser");
    sign_in(&browser, &s, &token, None).await;
    browser
        .goto(&s.tollgate.admin_url(&format!("/approvals/{id}")))
        .await
        .unwrap();
    let why = browser
        .text(&browser.find("#unreviewable").await.unwrap())
        .await
        .unwrap();
    assert!(why.contains("too long to record in full"), "{why}");
    assert!(
        browser.find_all("#approve").await.unwrap().is_empty(),
        "no Approve"
    );
    assert_eq!(
        browser.find_all("#deny").await.unwrap().len(),
        1,
        "Deny stays"
    );
    // The API refuses it too; denying works.
    let r = s
        .http
        .post(
            s.tollgate
                .admin_url(&format!("/api/approvals/{id}/approve")),
        )
        .bearer_auth(&token)
        .json(&serde_json::json!({"note": "looks fine"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "unreviewable", "{v}");
    assert_eq!(s.approval(&id).await["status"], "pending");
    let r = s
        .http
        .post(s.tollgate.admin_url(&format!("/api/approvals/{id}/deny")))
        .bearer_auth(&token)
        .json(&serde_json::json!({"note": "send a smaller request"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // A value that would read backwards (RIGHT-TO-LEFT OVERRIDE) is shown as its bytes are.
    let r = s
        .http
        .post(s.tollgate.url("/stripe/v1/payment_intents"))
        .basic_auth(&s.agent_key, Some(""))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("amount=6000&currency=usd&description=%E2%80%AE0006")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    let id = v["tollgate"]["approval_id"].as_str().unwrap().to_string();
    browser
        .goto(&s.tollgate.admin_url(&format!("/approvals/{id}")))
        .await
        .unwrap();
    let body = browser
        .text(&browser.find("#body").await.unwrap())
        .await
        .unwrap();
    assert!(
        body.contains("u{202e}0006") && !body.contains('\u{202e}'),
        "{body}"
    );
}

/// An operator contains an agent from the Agents page: the agent is revoked, its held request denied, and the
/// page says what was done; an approver is neither offered the form nor let through when posting it anyway.
#[tokio::test]
async fn an_operator_contains_an_agent_from_the_console() {
    let s = Setup::start().await;
    let held = s.held().await;
    let operator = s.reviewer("olga", "operator").await;
    let approver = s.reviewer("amir", "approver").await;
    let browser = Browser::start().await.expect("a headless browser");

    // The approver sees the agents but not the form, and a post of it is refused.
    sign_in(&browser, &s, &approver, None).await;
    browser
        .goto(&s.tollgate.admin_url("/agents"))
        .await
        .unwrap();
    assert!(
        browser.find_all("#contain-agent").await.unwrap().is_empty(),
        "an approver is not offered containment"
    );
    let page = browser.source().await.unwrap();
    let cookie = session_cookie(&browser).await;
    let (status, _) = s
        .post_form(
            "/incidents/contain",
            &cookie,
            &[
                ("csrf", &csrf_of(&page)),
                ("agent", "buyer"),
                ("reason", "not mine to do"),
            ],
            Some(&s.tollgate.admin_url("")),
        )
        .await;
    assert_eq!(status, 403);
    assert_eq!(s.pay(None).await.0, 403, "the agent still works");
    assert_eq!(s.approval(&held).await["status"], "pending");

    // The operator contains it.
    browser.delete_cookies().await.unwrap();
    sign_in(&browser, &s, &operator, None).await;
    browser
        .goto(&s.tollgate.admin_url("/agents"))
        .await
        .unwrap();
    let reason = browser.find("#contain-reason").await.unwrap();
    browser
        .type_into(&reason, "key pasted in a public issue")
        .await
        .unwrap();
    browser
        .click(&browser.find("#contain").await.unwrap())
        .await
        .unwrap();
    browser.accept_dialog().await.unwrap();
    browser
        .wait_for_url(|u| u.ends_with("/incidents/contain"))
        .await
        .unwrap();
    let text = |css: &'static str| {
        let browser = &browser;
        async move {
            browser
                .text(&browser.find(css).await.unwrap())
                .await
                .unwrap()
        }
    };
    assert_eq!(text("#contain-state").await, "complete");
    assert_eq!(text("#contain-revoked").await, "buyer");
    assert_eq!(text("#contain-approvals").await, "1");
    assert!(
        text("#contain-tokens")
            .await
            .contains("no live minted tokens")
    );
    browser
        .screenshot(&screenshots().join("09-contained.png"))
        .await
        .unwrap();

    // Done: the agent's key no longer works, its request was denied with the reason, and it is recorded.
    assert_eq!(s.pay(None).await.0, 401);
    let approval = s.approval(&held).await;
    assert_eq!(approval["status"], "denied", "{approval}");
    assert_eq!(approval["decided_by"], "olga", "{approval}");
    let (ok, out, err) = s
        .tollgate
        .cli(&["incident", "report", "buyer", "--json"])
        .await
        .unwrap();
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["agent"]["status"], "revoked", "{report}");
}
