//! The bundled policy library through the real proxy: realistic calls built from PROVIDERS.md, judged by
//! `policies/`, recorded, and forwarded (or not) — the outcomes a security reviewer relies on.

use chrono::{Duration as Span, SecondsFormat, Utc};
use serde_json::{Value, json};
use tollgate_tests::TestDatabase;
use tollgate_tests::sdk::{Reply, StandIn};
use tollgate_tests::tollgate::Tollgate;

const ZONE: &str = "023e105f4ecef8ad9ca31a8372d0c353";
const ACCOUNT: &str = "01a7362d577a6c3019a474fd6f485823";
const DNS_WRITE: &str = "4755a26eedb94da69e1066d98aa820be";
const ACCOUNT_TOKENS_WRITE: &str = "5bc3f8b21c554832afc660159ab75fa4";

struct Case {
    name: &'static str,
    method: &'static str,
    path: String,
    content_type: &'static str,
    body: String,
    /// HTTP status tollgate answers with (200: forwarded and answered by the stand-in).
    status: u16,
    /// The rule the refusal names (None for a pass).
    rule: Option<&'static str>,
}

fn json_case(
    name: &'static str,
    method: &'static str,
    path: String,
    body: Value,
    status: u16,
    rule: Option<&'static str>,
) -> Case {
    Case {
        name,
        method,
        path,
        content_type: "application/json",
        body: body.to_string(),
        status,
        rule,
    }
}

fn token(groups: &[&str], resources: Value, hours: i64) -> Value {
    let expires = (Utc::now() + Span::hours(hours)).to_rfc3339_opts(SecondsFormat::Secs, true);
    json!({
        "name": "ci-deploy",
        "policies": [{"effect": "allow", "resources": resources,
                      "permission_groups": groups.iter().map(|g| json!({"id": g})).collect::<Vec<_>>()}],
        "expires_on": expires,
    })
}

#[tokio::test]
async fn realistic_calls_get_the_outcomes_the_library_promises() {
    let db = TestDatabase::create().await.unwrap();
    // A token create is answered as Cloudflare answers one (an id and the secret `value`): the one that
    // passes gets a handle in vault mode. Every other call gets an empty result — not the secret again,
    // which tollgate holds from then on and would cut out of any answer.
    let upstream = StandIn::start().await.unwrap();
    upstream.answer(|r| {
        let result = if r.method == "POST" && r.path_and_query.ends_with("/user/tokens") {
            json!({"id": "ed17574386854bf78a67040be0a770b0", "value": "cf-minted-e2b9-0123456789abcdef"})
        } else {
            json!({"id": "ed17574386854bf78a67040be0a770b1"})
        };
        Reply::json(
            200,
            json!({"success": true, "errors": [], "messages": [], "result": result}),
        )
    });
    let gate = Tollgate::builder(db.url(), &upstream.url())
        .start()
        .await
        .unwrap();
    let key = gate
        .create_agent(
            "provisioner",
            &[
                "--scope",
                "dns:write",
                "--scope",
                "registrar:register",
                "--scope",
                "tokens:create",
                "--scope",
                "billing:spend",
                "--scope",
                "certs:manage",
                "--label",
                &format!("zones={ZONE}"),
                "--label",
                &format!("accounts={ACCOUNT}"),
            ],
        )
        .await
        .unwrap();
    let cf = |p: &str| format!("/cloudflare/client/v4{p}");
    let zone_resource = json!({format!("com.cloudflare.api.account.zone.{ZONE}"): "*"});
    let registration = |name: &str, years: Value, auto_renew: Value| json!({"domain_name": name, "years": years, "auto_renew": auto_renew, "privacy_mode": "redaction"});
    let cases = vec![
        json_case(
            "a read",
            "GET",
            cf(&format!("/zones/{ZONE}/dns_records")),
            Value::Null,
            200,
            None,
        ),
        json_case(
            "an A record in the agent's zone",
            "POST",
            cf(&format!("/zones/{ZONE}/dns_records")),
            json!({"type": "A", "name": "www.example.com", "content": "198.51.100.4", "ttl": 3600, "proxied": true}),
            200,
            None,
        ),
        json_case(
            "an NS record change",
            "POST",
            cf(&format!("/zones/{ZONE}/dns_records")),
            json!({"type": "NS", "name": "sub.example.com", "content": "ns1.attacker.example"}),
            403,
            Some("impact.dns_record_type"),
        ),
        json_case(
            "a record in someone else's zone",
            "POST",
            cf("/zones/9a7806061c88ada191ed06f989cc3dac/dns_records"),
            json!({"type": "A", "name": "x.other.com", "content": "198.51.100.9"}),
            403,
            Some("placement.zone"),
        ),
        json_case(
            "a one-year .com registration",
            "POST",
            cf(&format!("/accounts/{ACCOUNT}/registrar/registrations")),
            registration("launch-site.com", json!(1), json!(false)),
            200,
            None,
        ),
        json_case(
            "a brand look-alike",
            "POST",
            cf(&format!("/accounts/{ACCOUNT}/registrar/registrations")),
            registration("paypa1-login.com", json!(1), json!(false)),
            403,
            Some("domains.brand"),
        ),
        json_case(
            "years as a string",
            "POST",
            cf(&format!("/accounts/{ACCOUNT}/registrar/registrations")),
            registration("launch-two.com", json!("10"), json!(false)),
            403,
            Some("domains.years"),
        ),
        json_case(
            "a TLD outside the allow-list",
            "POST",
            cf(&format!("/accounts/{ACCOUNT}/registrar/registrations")),
            registration("launch.xyz", json!(1), json!(false)),
            403,
            Some("domains.tld"),
        ),
        json_case(
            "a narrow token",
            "POST",
            cf("/user/tokens"),
            token(&[DNS_WRITE], zone_resource.clone(), 12),
            200,
            None,
        ),
        json_case(
            "a broad token",
            "POST",
            cf("/user/tokens"),
            token(
                &[DNS_WRITE, ACCOUNT_TOKENS_WRITE],
                json!({"com.cloudflare.api.account.zone.*": "*"}),
                24 * 30,
            ),
            403,
            None,
        ),
        json_case(
            "a custom certificate upload",
            "POST",
            cf(&format!("/zones/{ZONE}/custom_certificates")),
            json!({"certificate": "-----BEGIN CERTIFICATE-----", "private_key": "-----BEGIN PRIVATE KEY-----"}),
            403,
            Some("impact.certificates"),
        ),
        Case {
            name: "a $60 payment",
            method: "POST",
            path: "/stripe/v1/payment_intents".into(),
            content_type: "application/x-www-form-urlencoded",
            body: "amount=6000&currency=usd".into(),
            status: 403,
            rule: Some("spend.threshold"),
        },
        Case {
            name: "a $12 payment",
            method: "POST",
            path: "/stripe/v1/payment_intents".into(),
            content_type: "application/x-www-form-urlencoded",
            body: "amount=1200&currency=usd".into(),
            status: 200,
            rule: None,
        },
        Case {
            name: "an amount that is not an integer (refused before the policy, like Stripe would)",
            method: "POST",
            path: "/stripe/v1/payment_intents".into(),
            content_type: "application/x-www-form-urlencoded",
            body: "amount=12.50&currency=usd".into(),
            status: 400,
            rule: None,
        },
    ];

    let http = reqwest::Client::new();
    let mut forwarded = 0;
    for case in &cases {
        let method = reqwest::Method::from_bytes(case.method.as_bytes()).unwrap();
        let mut req = http.request(method, gate.url(&case.path)).bearer_auth(&key);
        if case.body != "null" {
            req = req
                .header("content-type", case.content_type)
                .body(case.body.clone());
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, case.status, "{}: {body}", case.name);
        if status == 200 {
            forwarded += 1;
        }
        if let Some(rule) = case.rule {
            // The first reason is in `tollgate.rule`; every reason is in the message.
            let first = body["tollgate"]["rule"].as_str().unwrap_or_default();
            let message = body["errors"][0]["message"]
                .as_str()
                .or(body["error"]["message"].as_str())
                .unwrap_or_default();
            assert!(
                first == rule || message.contains(rule),
                "{}: expected {rule} in {body}",
                case.name
            );
        }
    }
    assert_eq!(
        upstream.take().len(),
        forwarded,
        "exactly the passing calls reached the provider"
    );

    // The broad token is refused for every reason at once, and the message says what is allowed.
    let pool = db.pool().await.unwrap();
    let reasons: Vec<Value> = sqlx::query_scalar("SELECT reasons::jsonb FROM decisions WHERE outcome = 'deny' AND action = 'cloudflare.token.create'")
        .fetch_all(&pool)
        .await
        .unwrap();
    let rules: Vec<&str> = reasons[0]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["rule"].as_str())
        .collect();
    for expected in ["tokens.escalation", "tokens.resources", "tokens.expiry"] {
        assert!(rules.contains(&expected), "{expected} in {rules:?}");
    }
    // Money: the registration ($10.44) and the $12 payment were charged to their provider windows.
    let committed: Vec<(String, i64)> =
        sqlx::query_as("SELECT provider, committed_cents FROM spend_windows ORDER BY provider")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        committed,
        vec![
            ("cloudflare".to_string(), 1044),
            ("stripe".to_string(), 1200)
        ]
    );
    // The $60 payment is waiting for a human, with its charge.
    let pending: Vec<(String, Option<i64>)> =
        sqlx::query_as("SELECT action, charge_cents FROM approvals WHERE status = 'pending'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(
        pending.contains(&("stripe.payment.create".to_string(), Some(6000))),
        "{pending:?}"
    );
}
