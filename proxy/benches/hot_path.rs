//! Micro-benchmarks of the per-request CPU work: policy evaluation of the bundled library, classification,
//! canonicalization, body parsing and the screen every answer passes (tollgate's credential looked for in
//! it). `cargo bench -p tollgate --bench hot_path`.

use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use tollgate::classify::Catalog;
use tollgate::policy::Bundle;

/// The binary's allocator (src/main.rs), so that these figures are the ones a running tollgate sees: the
/// policy VM allocates and frees on every rule call.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The bundled library, or the policy directory in `TOLLGATE_BENCH_POLICIES` (to measure an edited copy).
fn policies() -> std::path::PathBuf {
    std::env::var_os("TOLLGATE_BENCH_POLICIES")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies"))
}

const ACCOUNT: &str = "023e105f4ecef8ad9ca31a8372d0c353";
const ZONE: &str = "372e67954025e0ba6aaa6d586b9e0b59";

/// A policy input as the proxy builds it, for an agent that holds every scope and may change `ACCOUNT` and
/// `ZONE` (as in policies/tests/fixtures.rego), so that writes run through every check that applies.
fn input(
    provider: &str,
    method: &str,
    path: &str,
    action: (&str, &str),
    params: serde_json::Value,
    body: serde_json::Value,
) -> serde_json::Value {
    let content_type = if provider == "stripe" {
        "application/x-www-form-urlencoded"
    } else {
        "application/json"
    };
    json!({
        "agent": {"id": "01a22a3e-8bd9-7692-938a-9fe1ed50dfa8", "name": "deployer", "team": "web",
                  "scopes": ["dns:write", "zones:manage", "registrar:register", "tokens:create",
                             "workers:deploy", "certs:manage", "billing:spend", "accounts:manage"],
                  "labels": {"env": "dev", "accounts": ACCOUNT, "zones": ZONE}},
        "run": {"id": "run-42", "on_behalf_of": "alice@example.com"},
        "request": {"provider": provider, "method": method, "path": path, "query": {},
                    "headers": {"content-type": content_type}, "body": body, "body_sha256": "00"},
        "action": {"name": action.0, "risk": action.1, "params": params},
        "spend": {"window": "2026-11", "agent_provider_cents": 4200},
        "approval": null,
        "now": "2026-11-30T12:00:00Z",
    })
}

/// The requests policies/README.md's cost table lists, from a read to the most expensive write.
fn policy_inputs() -> Vec<(&'static str, serde_json::Value)> {
    let price = |cents: &str| {
        json!({"currency": "usd", "product": "prod_NWjs8kKbJWmuuc", "unit_amount": cents,
               "recurring": {"interval": "month"}})
    };
    vec![
        (
            "read",
            input(
                "cloudflare",
                "GET",
                "/client/v4/zones",
                ("cloudflare.zone.read", "read"),
                json!({}),
                json!(null),
            ),
        ),
        (
            "dns_create",
            input(
                "cloudflare",
                "POST",
                &format!("/client/v4/zones/{ZONE}/dns_records"),
                ("cloudflare.dns.create", "write"),
                json!({"zone_id": ZONE}),
                json!({"type": "A", "name": "www.example.com", "content": "198.51.100.4", "ttl": 3600}),
            ),
        ),
        (
            "token_create",
            input(
                "cloudflare",
                "POST",
                "/client/v4/user/tokens",
                ("cloudflare.token.create", "high"),
                json!({}),
                json!({"name": "ci-deploy", "policies": [{"effect": "allow",
                        "resources": {format!("com.cloudflare.api.account.zone.{ZONE}"): "*"},
                        "permission_groups": [{"id": "4755a26eedb94da69e1066d98aa820be"}]}],
                       "not_before": "2026-11-30T12:00:00Z", "expires_on": "2026-12-01T00:00:00Z"}),
            ),
        ),
        (
            "domain_register",
            input(
                "cloudflare",
                "POST",
                &format!("/client/v4/accounts/{ACCOUNT}/registrar/registrations"),
                ("cloudflare.domain.register", "irreversible"),
                json!({"account_id": ACCOUNT, "domain_name": "example-shop.com"}),
                json!({"domain_name": "example-shop.com", "privacy_mode": "redaction", "auto_renew": false}),
            ),
        ),
        (
            "stripe_subscription",
            input(
                "stripe",
                "POST",
                "/v1/subscriptions",
                ("stripe.subscription.create", "high"),
                json!({}),
                json!({"customer": "cus_123", "items": [{"price_data": price("1500"), "quantity": "2"},
                                                        {"price_data": price("500")}]}),
            ),
        ),
    ]
}

fn policy_evaluation(c: &mut Criterion) {
    let bundle = Bundle::load(&policies(), Duration::from_secs(1)).expect("bundled policy loads");
    let mut group = c.benchmark_group("policy");
    for (name, input) in policy_inputs() {
        // Every input must be judged (not refused as malformed), or the bench measures an early exit.
        let decision = bundle.evaluate(&input).expect("decision");
        assert!(
            decision
                .reasons
                .iter()
                .all(|r| !r.rule.starts_with("body.") && !r.rule.starts_with("scopes.")),
            "{name}: {:?}",
            decision.reasons
        );
        group.bench_function(format!("bundled/{name}"), |b| {
            b.iter(|| bundle.evaluate(&input).expect("decision"))
        });
    }
    group.finish();
}

fn classification(c: &mut Criterion) {
    let catalog = Catalog::load(&policies().join("catalog")).expect("catalog loads");
    let seg = |p: &str| {
        p.split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let dns = seg(
        "/client/v4/zones/023e105f4ecef8ad9ca31a8372d0c353/dns_records/372e67954025e0ba6aaa6d586b9e0b59",
    );
    let register = seg("/client/v4/accounts/acc/registrar/registrations");
    let stripe = seg("/v1/customers/cus_123");
    let mut group = c.benchmark_group("classify");
    group.bench_function("cloudflare/dns_update", |b| {
        b.iter(|| {
            catalog
                .classify("cloudflare", &http::Method::PATCH, &dns)
                .expect("ok")
        })
    });
    group.bench_function("cloudflare/domain_register", |b| {
        b.iter(|| {
            catalog
                .classify("cloudflare", &http::Method::POST, &register)
                .expect("ok")
        })
    });
    group.bench_function("stripe/read_glob", |b| {
        b.iter(|| {
            catalog
                .classify("stripe", &http::Method::GET, &stripe)
                .expect("ok")
        })
    });
    group.finish();
}

fn canonicalization_and_body(c: &mut Criterion) {
    let mut group = c.benchmark_group("request");
    group.bench_function("canonicalize_path", |b| {
        b.iter(|| {
            tollgate::canon::canonicalize_path(
                "/client/v4/zones/023e105f4ecef8ad9ca31a8372d0c353/dns_records",
            )
            .expect("canonical")
        })
    });
    let token = br#"{"name":"ci-deploy","policies":[{"effect":"allow","resources":{"com.cloudflare.api.account.zone.z1":"*"},"permission_groups":[{"id":"4755a26eedb94da69e1066d98aa820be","name":"DNS Write"}]}],"expires_on":"2026-12-02T00:00:00Z"}"#;
    group.bench_function("parse_body/json_token_create", |b| {
        b.iter(|| tollgate::body::parse_body(Some("application/json"), token).expect("json"))
    });
    let form = b"items[0][price_data][unit_amount]=2500&items[0][quantity]=2&customer=cus_1&metadata[run]=42";
    group.bench_function("parse_body/form_subscription", |b| {
        b.iter(|| {
            tollgate::body::parse_body(Some("application/x-www-form-urlencoded"), form)
                .expect("form")
        })
    });
    group.finish();
}

/// The screen on a 4 KiB Cloudflare-style answer, beside a plain pass over the same bytes (a baseline: what
/// any copy of the answer costs).
fn answer_screen(c: &mut Criterion) {
    use tollgate::vault::screen::Needles;
    let needles = Needles::new([
        &b"cf-bench-credential-0123456789abcdefghijklmn"[..],
        &b"sk_test_51BenchKeyAbCdEfGhIjKlMnOpQrStUvWxYz0123456789"[..],
    ]);
    let record = r#"{"id":"372e67954025e0ba6aaa6d586b9e0b59","type":"A","name":"www.example.com","content":"198.51.100.4","proxied":true,"ttl":1,"comment":"a&#38;b %20 é"},"#;
    let answer = format!(
        r#"{{"success":true,"errors":[],"messages":[],"result":[{}]}}"#,
        record.repeat(4096 / record.len())
    );
    let bytes = answer.as_bytes();
    let mut group = c.benchmark_group("answer");
    group.throughput(criterion::Throughput::Bytes(bytes.len() as u64));
    group.bench_function("screen_4k", |b| {
        b.iter(|| assert!(!needles.found_in(std::hint::black_box(bytes))))
    });
    // Every answer is screened for every secret the vault holds: a deployment with a thousand live minted
    // tokens (40 random letters and digits each, as Cloudflare's are).
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let held: Vec<Vec<u8>> = (0..1000)
        .map(|_| {
            (0..40)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    alphabet[(state % alphabet.len() as u64) as usize]
                })
                .collect()
        })
        .collect();
    let thousand = needles.with(held.iter().map(Vec::as_slice));
    let thousand_fresh = Needles::new(
        [
            &b"cf-bench-credential-0123456789abcdefghijklmn"[..],
            &b"sk_test_51BenchKeyAbCdEfGhIjKlMnOpQrStUvWxYz0123456789"[..],
        ]
        .into_iter()
        .chain(held.iter().map(Vec::as_slice)),
    );
    group.bench_function("screen_4k_1000_held", |b| {
        b.iter(|| assert!(!thousand_fresh.found_in(std::hint::black_box(bytes))))
    });
    // The same secrets added to a set sized for two (a handle's secret not yet read from the store).
    group.bench_function("screen_4k_1000_added", |b| {
        b.iter(|| assert!(!thousand.found_in(std::hint::black_box(bytes))))
    });
    // An answer in another script (Japanese, with accented Latin): every character is read through the
    // look-alike tables and Unicode's decompositions.
    let other = format!(
        r#"{{"success":true,"result":{{"content":"{}"}}}}"#,
        "東京の天気は晴れ、café Ünïcödé ४२ ".repeat(4096 / 52)
    );
    group.bench_function("screen_4k_other_script", |b| {
        b.iter(|| assert!(!needles.found_in(std::hint::black_box(other.as_bytes()))))
    });
    group.bench_function("baseline_copy_4k", |b| {
        b.iter(|| std::hint::black_box(bytes.to_vec()))
    });
    group.finish();
}

criterion_group!(
    benches,
    policy_evaluation,
    classification,
    canonicalization_and_body,
    answer_screen
);
criterion_main!(benches);
