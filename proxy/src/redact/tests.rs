//! Tests of `redact`: the confirmed leaks, the detectors, paths and names, the raw query, and the data file.

use std::time::Duration;

use serde_json::json;

use super::*;

/// The replacement for `value`, computed here independently of the module.
fn hash(value: &str) -> String {
    format!(
        "[redacted sha256:{}]",
        hex::encode(Sha256::digest(value.as_bytes()))
    )
}

/// The shipped `policies/secrets/data.yaml`, read the way the policy engine reads data files.
fn shipped() -> Redactor {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/secrets/data.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let data = serde_json::to_value(regorus::Value::from_yaml_str(&text).unwrap()).unwrap();
    Redactor::from_data(Some(&data)).unwrap()
}

/// A policy input as `policy::build_input` shapes it, with this request body, query and headers.
fn input(provider: &str, body: Value, query: Value, headers: Value) -> Value {
    json!({
        "agent": {"id": "0192b7c4-0000-7000-8000-000000000001", "name": "billing-bot", "team": "web",
                  "scopes": ["stripe:write"], "labels": {}},
        "run": {"id": "run-42", "on_behalf_of": "ana@example.com"},
        "request": {"provider": provider, "method": "POST", "path": "/v1/payment_intents", "query": query,
                    "headers": headers, "body": body,
                    "body_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"},
        "action": {"name": "stripe.payment.create", "risk": "high", "params": {}},
        "spend": {"window": "2026-12", "agent_provider_cents": 1200},
        "approval": null,
        "now": "2026-12-03T08:25:08Z",
    })
}

fn redacted_body(redactor: &Redactor, provider: &str, body: Value) -> Value {
    let input = input(provider, body, json!({}), json!({}));
    redactor.redact_input(provider, &input).into_owned()["request"]["body"].clone()
}

#[test]
fn a_stripe_card_form_body_keeps_no_card_data() {
    // payment_method_data[card][number]=4242…&…, parsed into nested JSON as `body` does.
    let body = json!({
        "amount": "1999", "currency": "usd", "confirm": "true",
        "payment_method_data": {"type": "card", "card": {
            "number": "4242424242424242", "exp_month": "12", "exp_year": "2030", "cvc": "123"}},
    });
    let out = redacted_body(&shipped(), "stripe", body);
    assert_eq!(
        out,
        json!({
            "amount": "1999", "currency": "usd", "confirm": "true",
            "payment_method_data": {"type": "card", "card": {
                "number": hash("4242424242424242"), "exp_month": hash("12"), "exp_year": hash("2030"),
                "cvc": hash("123")}},
        })
    );
    // The replacement is the SHA-256 of the value's UTF-8 (a well-known digest, not recomputed).
    assert_eq!(
        out["payment_method_data"]["card"]["cvc"],
        "[redacted sha256:a665a45920422f9d417e4867efdc4fb8a04a1f3fff1fa07e998e86f7f7a27ae3]"
    );
}

#[test]
fn a_workers_secret_text_binding_keeps_no_text() {
    let body = json!({
        "metadata": {"main_module": "worker.js", "compatibility_date": "2026-11-01", "bindings": [
            {"type": "plain_text", "name": "ENVIRONMENT", "text": "production"},
            {"type": "secret_text", "name": "UPSTREAM_TOKEN", "text": "hunter2-but-longer"},
            {"type": "kv_namespace", "name": "CACHE", "namespace_id": "0f2ac74b498b48028cb68387c421e279"},
        ]},
        "parts": [{"name": "metadata", "filename": null, "content_type": "application/json", "size": 312},
                  {"name": "worker.js", "filename": "worker.js", "content_type": "application/javascript+module",
                   "size": 1024}],
    });
    let mut expected = body.clone();
    expected["metadata"]["bindings"][0]["text"] = json!(hash("production"));
    expected["metadata"]["bindings"][1]["text"] = json!(hash("hunter2-but-longer"));
    assert_eq!(
        redacted_body(&shipped(), "cloudflare", body.clone()),
        expected
    );
    // Paths are per provider: the same body sent to Stripe keeps its text (nothing detects "hunter2").
    assert_eq!(redacted_body(&shipped(), "stripe", body.clone()), body);
}

#[test]
fn detectors_find_keys_and_private_keys_anywhere_in_a_body() {
    let key = "sk_live_51H8aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789";
    let pem =
        "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----";
    let cert =
        "-----BEGIN CERTIFICATE-----\nMIIDdzCCAl+gAwIBAgIEAgAAuTANBgkq\n-----END CERTIFICATE-----";
    let body = json!({
        "metadata": {"note": format!("rotate {key} by friday"), "order": "A-1001"},
        // A certificate bundle with the key pasted after it, in a field no list names.
        "certificate": format!("{cert}\n{pem}\n"),
        "bundle_method": "ubiquitous",
    });
    let out = redacted_body(&shipped(), "cloudflare", body);
    assert_eq!(
        out,
        json!({
            "metadata": {"note": format!("rotate {} by friday", hash(key)), "order": "A-1001"},
            "certificate": format!("{cert}\n{}\n", hash(pem)),
            "bundle_method": "ubiquitous",
        })
    );
}

#[test]
fn a_custom_certificate_keeps_its_certificate_but_not_its_key() {
    let cert = "-----BEGIN CERTIFICATE-----\nMIIDdzCCAl+gAwIBAgIEAgAAuTANBgkq\n-----END CERTIFICATE-----\n";
    let key =
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAwJ\n-----END RSA PRIVATE KEY-----\n";
    let body = json!({"certificate": cert, "private_key": key, "bundle_method": "force"});
    let out = redacted_body(&shipped(), "cloudflare", body);
    assert_eq!(
        out,
        json!({"certificate": cert, "private_key": hash(key), "bundle_method": "force"})
    );
}

#[test]
fn strings_outside_the_body_are_searched_by_the_detectors() {
    let input = input(
        "cloudflare",
        Value::Null,
        json!({"q": ["4242424242424242"], "name": ["example.com"]}),
        json!({"x-note": "card 4242 4242 4242 4242 exp 12/30", "user-agent": "curl/8.5.0"}),
    );
    let out = shipped().redact_input("cloudflare", &input).into_owned();
    assert_eq!(
        out["request"]["query"],
        json!({"q": [hash("4242424242424242")], "name": ["example.com"]})
    );
    assert_eq!(
        out["request"]["headers"],
        json!({"x-note": format!("card {} exp 12/30", hash("4242 4242 4242 4242")),
               "user-agent": "curl/8.5.0"})
    );
    // Nothing else changed.
    let mut rest = out.clone();
    rest["request"]["query"] = input["request"]["query"].clone();
    rest["request"]["headers"] = input["request"]["headers"].clone();
    assert_eq!(rest, input);
}

#[test]
fn a_query_in_the_input_is_redacted_like_the_body() {
    // A Stripe write's query, merged into the body for the policy, is also in `request.query` by raw key.
    let query =
        json!({"card[exp_month]": ["12"], "card[cvc]": ["123"], "expand[]": ["latest_charge"]});
    let input = input("stripe", Value::Null, query, json!({}));
    let stripe = shipped().redact_input("stripe", &input).into_owned();
    assert_eq!(
        stripe["request"]["query"],
        json!({"card[exp_month]": [hash("12")], "card[cvc]": [hash("123")], "expand[]": ["latest_charge"]})
    );
    // Cloudflare has no path card.exp_month; cvc is a name everywhere.
    let cloudflare = shipped().redact_input("cloudflare", &input).into_owned();
    assert_eq!(
        cloudflare["request"]["query"],
        json!({"card[exp_month]": ["12"], "card[cvc]": [hash("123")], "expand[]": ["latest_charge"]})
    );
}

#[test]
fn reason_texts_and_paths_lose_their_secrets() {
    let redactor = shipped();
    let key = "sk_live_4eC39HqLyjWDarjtT1zdp7dc";
    let reason = format!("body.forbidden: metadata carries a Stripe key ({key}); remove it");
    assert_eq!(
        redactor.redact_text(&reason),
        format!(
            "body.forbidden: metadata carries a Stripe key ({}); remove it",
            hash(key)
        )
    );
    let ordinary = "spend.cap: 1999 cents would exceed the cap of 10000";
    assert!(matches!(redactor.redact_text(ordinary), Cow::Borrowed(_)));
    assert_eq!(
        redactor.redact_text("order 4242424242424242 2 items"),
        format!("order {} 2 items", hash("4242424242424242"))
    );
}

#[test]
fn equal_secrets_get_equal_replacements() {
    let body = json!({"card": {"number": "4000056655665556"},
                      "source": {"number": "4000056655665556"},
                      "metadata": {"copy": "4000056655665556"}});
    let out = redacted_body(&shipped(), "stripe", body);
    let replacement = json!(hash("4000056655665556"));
    assert_eq!(out["card"]["number"], replacement);
    assert_eq!(out["source"]["number"], replacement);
    assert_eq!(out["metadata"]["copy"], replacement);
    assert_ne!(
        redacted_body(&shipped(), "stripe", json!({"cvc": "124"}))["cvc"],
        json!(hash("123"))
    );
}

#[test]
fn a_request_without_secrets_is_borrowed_unchanged() {
    let redactor = shipped();
    let bodies = [
        Value::Null,
        json!({"amount": "1999", "currency": "usd", "customer": "cus_NffrFeUfNV2Hib",
               "payment_method": "pm_card_visa", "metadata": {"order": "6735"},
               "items": [{"price": "price_1PgafmB7WZ01zgkW", "quantity": "2"}],
               "created": 1733212345, "pi": "pi_3MtwBwLkdIwHu7ix28a3tqPa"}),
        json!({"type": "A", "name": "www.example.com", "content": "198.51.100.4", "ttl": 3600,
               "comment": "set 2026-12-01T00:00:00Z", "id": "023e105f4ecef8ad9ca31a8372d0c353",
               "secret": null, "phone": "+1 415 555 2671"}),
        json!({"policies": [{"effect": "allow", "permission_groups": [{"id": "4755a26eedb94da69e1066d98aa820be"}],
               "resources": {"com.cloudflare.api.account.zone.023e105f4ecef8ad9ca31a8372d0c353": "*"}}],
               "name": "ci-deploy", "note": "mentions sk_live_ without a key"}),
    ];
    for body in bodies {
        for provider in ["stripe", "cloudflare", "other"] {
            let input = input(
                provider,
                body.clone(),
                json!({"limit": ["10"], "starting_after": ["cus_NffrFeUfNV2Hib"]}),
                json!({"content-type": "application/x-www-form-urlencoded", "stripe-version": "2026-11-17"}),
            );
            let out = redactor.redact_input(provider, &input);
            assert!(
                matches!(out, Cow::Borrowed(_)),
                "{provider}: {body} was copied"
            );
        }
    }
}

#[test]
fn looks_secret_cases() {
    let cases: &[(&str, bool)] = &[
        // Card numbers: 13-19 digits passing Luhn, with single spaces or dashes between groups.
        ("4242424242424242", true),
        ("4242424242424241", false),
        ("4242 4242 4242 4242", true),
        ("4242-4242-4242-4242", true),
        (" 4242424242424242\n", true),
        ("378282246310005", true),      // American Express, 15 digits
        ("6011111111111117", true),     // Discover
        ("4222222222222", true),        // 13 digits
        ("4242424242424242 1", false),  // more than the card number
        ("4242  4242 4242 4242", true), // up to two separator bytes between groups
        ("4000.0566.5566.5556", true),
        ("4000_0566_5566_5556", true),
        ("4242   4242 4242 4242", false), // three end the run
        ("424242424242", false),          // 12 digits
        ("42424242424242424242", false),  // 20 digits
        ("a4242424242424242", false),
        // Key prefixes, followed by enough key characters.
        ("sk_live_4eC39HqLyjWDarjtT1zdp7dc", true),
        ("sk_test_4eC39HqLyjWDarjtT1zdp7dc", true),
        ("rk_live_51H8aBcDeFgHiJkLmNoPq", true),
        ("rk_test_51H8aBcDeFgHiJkLmNoPq", true),
        ("ek_live_YWNjdF8xTTJKdUV0dGRm", true),
        ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", true),
        ("sk_live_short", false),
        ("pk_live_4eC39HqLyjWDarjtT1zdp7dc", false), // publishable: meant to be public
        ("xsk_live_4eC39HqLyjWDarjtT1zdp7dc", false),
        ("sk_live_4eC39HqLyjWDarjtT1zdp7dc and more", false),
        ("tg_0123456789ABCDEFGHIJabcdefghij0123456789", true),
        ("tg_0123456789ABCDEFGHIJabcdefghij012345678", false), // 39
        (
            "cfut_0123456789ABCDEFGHIJabcdefghij01234567899a8b7c6d",
            true,
        ),
        ("cfat_0123456789ABCDEFGHIJabcdefghij0123456789", true),
        ("cfk_0123456789ABCDEFGHIJabcdefghij0123456789", true),
        // PEM: private keys only; a missing END still counts.
        (
            "-----BEGIN PRIVATE KEY-----\nMIIEvQ\n-----END PRIVATE KEY-----",
            true,
        ),
        (
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1r\n-----END OPENSSH PRIVATE KEY-----\n",
            true,
        ),
        ("-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEI", true),
        (
            "-----BEGIN CERTIFICATE-----\nMIIDdz\n-----END CERTIFICATE-----",
            false,
        ),
        ("-----BEGIN CERTIFICATE REQUEST-----\nMIIC", false),
        // Ordinary values.
        ("", false),
        ("hello", false),
        ("pi_3MtwBwLkdIwHu7ix28a3tqPa", false),
        ("023e105f4ecef8ad9ca31a8372d0c353", false),
        ("0192b7c4-0000-7000-8000-000000000001", false),
        ("2026-12-01T00:00:00Z", false),
    ];
    for (text, expected) in cases {
        assert_eq!(looks_secret(text), *expected, "{text:?}");
    }
}

#[test]
fn card_numbers_as_json_numbers_are_caught() {
    let body = json!({"n": 4242424242424242u64, "not": 4242424242424241u64, "amount": 1999,
                      "ratio": 0.5, "negative": -4242424242424242i64});
    let out = redacted_body(&shipped(), "other", body);
    assert_eq!(
        out,
        json!({"n": hash("4242424242424242"), "not": 4242424242424241u64, "amount": 1999,
               "ratio": 0.5, "negative": -4242424242424242i64})
    );
}

#[test]
fn names_match_at_any_depth_ignoring_case_and_keep_null() {
    let body = json!({"config": {"Password": "pw", "users": [{"password": {"hash": "x", "salt": 7}}]},
                      "secret": null, "auth_code": ""});
    let out = redacted_body(&shipped(), "other", body);
    assert_eq!(
        out,
        json!({"config": {"Password": hash("pw"),
                          "users": [{"password": hash(r#"{"hash":"x","salt":7}"#)}]},
               "secret": null, "auth_code": hash("")})
    );
}

#[test]
fn object_keys_are_searched_by_the_detectors() {
    let body = json!({"metadata": {"sk_live_4eC39HqLyjWDarjtT1zdp7dc": "oops"}});
    let out = redacted_body(&shipped(), "stripe", body);
    assert_eq!(
        out,
        json!({"metadata": {hash("sk_live_4eC39HqLyjWDarjtT1zdp7dc"): "oops"}})
    );
}

#[test]
fn paths_follow_wildcards_and_indexes() {
    let data = json!({"names": [], "providers": {"acme": [
        "items.*.token", "pairs.0.b", "nested.*.*.deep", "whole",
    ]}});
    let redactor = Redactor::from_data(Some(&data)).unwrap();
    let body = json!({
        "items": [{"token": "t0", "id": 1}, {"token": "t1", "id": 2}, {"id": 3}],
        "pairs": [{"a": "x", "b": "y"}, {"a": "x", "b": "y"}],
        "nested": {"one": [{"deep": "d"}, {"shallow": "s"}], "two": {"x": {"deep": "e"}}},
        "whole": {"a": [1, 2]},
        "token": "kept: not under items",
    });
    assert_eq!(
        redacted_body(&redactor, "acme", body),
        json!({
            "items": [{"token": hash("t0"), "id": 1}, {"token": hash("t1"), "id": 2}, {"id": 3}],
            "pairs": [{"a": "x", "b": hash("y")}, {"a": "x", "b": "y"}],
            "nested": {"one": [{"deep": hash("d")}, {"shallow": "s"}], "two": {"x": {"deep": hash("e")}}},
            "whole": hash(r#"{"a":[1,2]}"#),
            "token": "kept: not under items",
        })
    );
}

/// `redact_query` on `raw` for `provider`: the expected result, `None` for "store as it is".
fn check_query(redactor: &Redactor, provider: &str, raw: &str, expected: Option<String>) {
    assert_eq!(redactor.redact_query(provider, raw), expected, "{raw:?}");
}

#[test]
fn raw_queries() {
    let redactor = shipped();
    let enc = |s: &str| encode(&hash(s));
    let cases: Vec<(&str, &str, Option<String>)> = vec![
        ("stripe", "", None),
        ("stripe", "limit=10&starting_after=cus_NffrFeUfNV2Hib", None),
        (
            "stripe",
            "expand[]=latest_charge&expand%5B%5D=customer",
            None,
        ),
        (
            "stripe",
            "amount=1999&card[number]=4242424242424242&card[exp_month]=12&card[cvc]=123",
            Some(format!(
                "amount=1999&card[number]={}&card[exp_month]={}&card[cvc]={}",
                enc("4242424242424242"),
                enc("12"),
                enc("123")
            )),
        ),
        // Keys are matched decoded; the raw key is kept.
        (
            "stripe",
            "card%5Bexp_year%5D=2030&a=1",
            Some(format!("card%5Bexp_year%5D={}&a=1", enc("2030"))),
        ),
        // Not a Stripe path for Cloudflare; names still apply, and the detectors everywhere.
        ("cloudflare", "card[exp_year]=2030", None),
        (
            "cloudflare",
            "auth_code=abc+def&q=4242+4242+4242+4242",
            Some(format!(
                "auth_code={}&q={}",
                enc("abc def"),
                enc("4242 4242 4242 4242")
            )),
        ),
        // A detector match inside a value replaces that part; inside a key, the key is re-encoded.
        (
            "other",
            "note=key%3Dsk_live_4eC39HqLyjWDarjtT1zdp7dc",
            Some(format!(
                "note={}",
                encode(&format!("key={}", hash("sk_live_4eC39HqLyjWDarjtT1zdp7dc")))
            )),
        ),
        (
            "other",
            "sk_live_4eC39HqLyjWDarjtT1zdp7dc&x=1",
            Some(format!("{}&x=1", enc("sk_live_4eC39HqLyjWDarjtT1zdp7dc"))),
        ),
        // A secret key without a value has nothing to replace; empty pieces are kept.
        ("stripe", "cvc&&a=1", None),
        // A name inside malformed brackets is still found.
        (
            "other",
            "x[password=hunter2",
            Some(format!("x[password={}", enc("hunter2"))),
        ),
        // Undecodable: every value replaced by the hash of its raw text.
        (
            "stripe",
            "a=%ZZ&card[number]=4242424242424242&flag",
            Some(format!(
                "a={}&card[number]={}&flag",
                enc("%ZZ"),
                enc("4242424242424242")
            )),
        ),
        (
            "stripe",
            "sk_live_4eC39HqLyjWDarjtT1zdp7dc=%FF",
            Some(format!(
                "{}={}",
                enc("sk_live_4eC39HqLyjWDarjtT1zdp7dc"),
                enc("%FF")
            )),
        ),
    ];
    for (provider, raw, expected) in cases {
        check_query(&redactor, provider, raw, expected);
    }
    // `[]` is some index: it follows a `*` in a path.
    let data = json!({"names": [], "providers": {"acme": ["tags.*", "list.0"]}});
    let acme = Redactor::from_data(Some(&data)).unwrap();
    check_query(
        &acme,
        "acme",
        "tags[]=a",
        Some(format!("tags[]={}", enc("a"))),
    );
    check_query(&acme, "acme", "list[]=a&list[1]=b", None);
    check_query(
        &acme,
        "acme",
        "list[0]=a",
        Some(format!("list[0]={}", enc("a"))),
    );
}

#[test]
fn from_data_reports_every_problem_at_once() {
    let cases: Vec<(Value, &[&str])> = vec![
        (json!(["private_key"]), &["must be a mapping"]),
        (json!({"providers": {}}), &["names: missing"]),
        (json!({"names": "password"}), &["names: must be a list"]),
        (
            json!({"names": ["password", 7, "", "card.number", "Password"], "providers": {},
                   "extra": 1}),
            &[
                "unknown key \"extra\"",
                "names[1]: 7 is not a string",
                "names[2]: \"\" is not a field name",
                "names[3]: \"card.number\" is not a field name",
                "names[4]: \"password\" is listed twice",
            ],
        ),
        (
            json!({"names": [], "providers": ["stripe"]}),
            &["providers: must be a mapping"],
        ),
        (
            json!({"names": [], "providers": {"stripe": "card.number"}}),
            &["providers.stripe: must be a list"],
        ),
        (
            json!({"names": [], "providers": {"stripe": [
                "card..number", "card[number]", "card.num*", "*.*", ".card", "card.number", "card.number", 3]}}),
            &[
                "providers.stripe[0]: \"card..number\" has an empty segment",
                "providers.stripe[1]: \"card[number]\" uses brackets",
                "providers.stripe[2]: \"card.num*\" uses * inside a segment",
                "providers.stripe[3]: \"*.*\" is only wildcards",
                "providers.stripe[4]: \".card\" has an empty segment",
                "providers.stripe[6]: \"card.number\" is listed twice",
                "providers.stripe[7]: 3 is not a string",
            ],
        ),
    ];
    for (data, expected) in cases {
        let Err(error) = Redactor::from_data(Some(&data)) else {
            panic!("{data} was accepted");
        };
        for part in expected {
            assert!(error.contains(part), "{data}: {error:?} lacks {part:?}");
        }
        assert_eq!(
            error.split("; ").count(),
            expected.len(),
            "{data}: {error:?}"
        );
    }
    assert!(Redactor::from_data(Some(&json!({"names": [], "providers": null}))).is_ok());
}

#[test]
fn without_data_the_default_names_apply_and_the_shipped_file_keeps_them() {
    let default = Redactor::from_data(None).unwrap();
    let body = json!({"private_key": "k", "value": "v", "card": {"number": "4000000000000002"},
                      "iban": "DE89370400440532013000"});
    assert_eq!(
        redacted_body(&default, "stripe", body),
        json!({"private_key": hash("k"), "value": hash("v"), "card": {"number": hash("4000000000000002")},
               "iban": "DE89370400440532013000"})
    );
    let shipped = shipped();
    for name in DEFAULT_NAMES {
        assert!(
            shipped.names.iter().any(|n| n == name),
            "secrets.yaml lacks {name}"
        );
    }
}

#[test]
fn a_bundle_loads_its_secrets_and_refuses_a_broken_list() {
    let bundle = |secrets: Option<&str>| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("main.rego"),
            "package tollgate\ndecision := {\"outcome\": \"allow\"}\n",
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("secrets")).unwrap();
        if let Some(secrets) = secrets {
            std::fs::write(dir.path().join("secrets/data.yaml"), secrets).unwrap();
        }
        crate::policy::Bundle::load(dir.path(), Duration::from_millis(250))
    };
    let loaded = bundle(Some("names: [pin]\nproviders:\n  acme: [a.b]\n")).unwrap();
    assert_eq!(
        redacted_body(
            loaded.redactor(),
            "acme",
            json!({"pin": "1234", "a": {"b": "c"}, "password": "p"})
        ),
        json!({"pin": hash("1234"), "a": {"b": hash("c")}, "password": "p"})
    );
    let defaults = bundle(None).unwrap();
    assert_eq!(
        redacted_body(defaults.redactor(), "acme", json!({"password": "p"})),
        json!({"password": hash("p")})
    );
    let Err(error) = bundle(Some("names: [pin, pin]\nproviders:\n  acme: [a..b]\n")) else {
        panic!("a broken secrets.yaml was loaded");
    };
    let error = error.to_string();
    assert!(
        error.contains("secrets/data.yaml")
            && error.contains("\"pin\" is listed twice")
            && error.contains("\"a..b\" has an empty segment"),
        "{error}"
    );
}

#[test]
fn card_numbers_glued_to_letters_and_credential_headers_are_caught() {
    let redactor = Redactor::from_data(None).unwrap();
    let input = json!({"request": {
        "body": {"a": "4242424242424242x", "b": "x4242424242424242", "c": "abc4242424242424242def"},
        "headers": {"cf-access-client-secret": "accesssecret123", "x-api-key": "k1", "user-agent": "sdk/1.0",
                    "idempotency-key": "tollgate-abc"},
    }});
    let stored = redactor.redact_input("stripe", &input).to_string();
    assert!(!stored.contains("4242424242424242"), "{stored}");
    assert!(
        !stored.contains("accesssecret123") && !stored.contains("\"k1\""),
        "{stored}"
    );
    assert!(
        stored.contains("sdk/1.0") && stored.contains("tollgate-abc"),
        "{stored}"
    );
}
