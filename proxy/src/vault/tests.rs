//! Unit tests of the vault: sealing and opening (round trip, associated data, wrong key, tampering,
//! rotation), reading token answers, custody.

use super::*;

fn secret(s: &str) -> SecretString {
    SecretString::from(s.to_string())
}

fn opened(m: MintedSecret) -> String {
    m.0.expose_secret().to_string()
}

#[test]
fn a_sealed_secret_opens_for_its_own_token_only() {
    let vault = Vault::with_keys(&[("k1", [7; 32])]);
    let sealed = vault
        .seal("cloudflare", "tok1", &secret("cf-secret-1"))
        .unwrap();
    assert_eq!(sealed.key_id, "k1");
    assert_eq!(sealed.nonce.len(), 12);
    assert!(!sealed.ciphertext.windows(11).any(|w| w == b"cf-secret-1"));
    assert_eq!(
        opened(vault.open("cloudflare", "tok1", &sealed).unwrap()),
        "cf-secret-1"
    );
    // Wrong associated data: another token's row, another provider.
    assert_eq!(
        vault.open("cloudflare", "tok2", &sealed).err(),
        Some(VaultError::Unsealable)
    );
    assert_eq!(
        vault.open("stripe", "tok1", &sealed).err(),
        Some(VaultError::Unsealable)
    );
}

#[test]
fn each_secret_gets_its_own_nonce() {
    let vault = Vault::with_keys(&[("k1", [7; 32])]);
    let a = vault.seal("cloudflare", "t", &secret("same")).unwrap();
    let b = vault.seal("cloudflare", "t", &secret("same")).unwrap();
    assert_ne!(a.nonce, b.nonce);
    assert_ne!(a.ciphertext, b.ciphertext);
}

#[test]
fn wrong_key_and_tampering_fail() {
    let vault = Vault::with_keys(&[("k1", [7; 32])]);
    let sealed = vault.seal("cloudflare", "t", &secret("s3cret")).unwrap();
    // Same id, other key bytes.
    let other = Vault::with_keys(&[("k1", [8; 32])]);
    assert_eq!(
        other.open("cloudflare", "t", &sealed).err(),
        Some(VaultError::Unsealable)
    );
    // A key id this deployment does not have.
    let unknown = Vault::with_keys(&[("k9", [7; 32])]);
    assert_eq!(
        unknown.open("cloudflare", "t", &sealed).err(),
        Some(VaultError::UnknownKey("k1".into()))
    );
    for i in 0..sealed.ciphertext.len() {
        let mut tampered = sealed.clone();
        tampered.ciphertext[i] ^= 1;
        assert!(
            vault.open("cloudflare", "t", &tampered).is_err(),
            "byte {i}"
        );
    }
    let mut tampered = sealed.clone();
    tampered.nonce[0] ^= 1;
    assert!(vault.open("cloudflare", "t", &tampered).is_err());
    let mut short = sealed;
    short.nonce.pop();
    assert!(vault.open("cloudflare", "t", &short).is_err());
}

#[test]
fn rotation_seals_with_the_first_key_and_opens_with_any() {
    let old = Vault::with_keys(&[("k1", [1; 32])]);
    let sealed_k1 = old.seal("cloudflare", "t", &secret("old")).unwrap();
    let rotated = Vault::with_keys(&[("k2", [2; 32]), ("k1", [1; 32])]);
    assert_eq!(
        opened(rotated.open("cloudflare", "t", &sealed_k1).unwrap()),
        "old"
    );
    let sealed_k2 = rotated.seal("cloudflare", "t", &secret("new")).unwrap();
    assert_eq!(sealed_k2.key_id, "k2");
}

#[test]
fn token_answers_are_read_and_the_secret_replaced() {
    let created = br#"{"success":true,"errors":[],"messages":[],"result":{"id":"tok1","name":"ci","status":"active","expires_on":"2030-01-01T00:00:00Z","value":"cf-secret-0123456789abcdef"}}"#;
    let m = MintedResponse::parse(TokenEvent::Created, created).unwrap();
    assert_eq!(m.token_id.as_deref(), Some("tok1"));
    assert_eq!(m.name.as_deref(), Some("ci"));
    assert!(m.expires_on.is_some());
    assert_eq!(
        m.secret().unwrap().expose_secret(),
        "cf-secret-0123456789abcdef"
    );
    let (whole, out) = m.with_handle(TokenEvent::Created, "tg_handle");
    assert!(
        String::from_utf8(whole.to_vec())
            .unwrap()
            .contains("tg_handle")
    );
    let text = String::from_utf8(out.to_vec()).unwrap();
    assert!(!text.contains("cf-secret"), "{text}");
    assert!(text.contains(r#""value":"tg_handle""#), "{text}");
    assert!(text.contains(r#""id":"tok1""#), "{text}");

    let rolled =
        br#"{"success":true,"errors":[],"messages":[],"result":"cf-rolled-0123456789abcdef"}"#;
    let m = MintedResponse::parse(TokenEvent::Rolled, rolled).unwrap();
    assert_eq!(
        m.secret().unwrap().expose_secret(),
        "cf-rolled-0123456789abcdef"
    );
    let text = String::from_utf8(m.with_handle(TokenEvent::Rolled, "tg_h2").1.to_vec()).unwrap();
    assert!(text.contains(r#""result":"tg_h2""#) && !text.contains("cf-rolled"));

    // What the agent gets is the token object alone: no other field, no provider note.
    let noisy = br#"{"success":true,"errors":[],"messages":[{"code":1,"message":"note"}],"result":{"id":"tok1","value":"cf-secret-0123456789abcdef","debug":"x","policies":[{"effect":"allow"}]},"extra":1}"#;
    let m = MintedResponse::parse(TokenEvent::Created, noisy).unwrap();
    let (whole, sent) = m.with_handle(TokenEvent::Created, "tg_h3");
    let whole: Value = serde_json::from_slice(&whole).unwrap();
    assert_eq!(whole["result"]["debug"], "x", "the checks read every field");
    let sent: Value = serde_json::from_slice(&sent).unwrap();
    assert_eq!(
        sent,
        json!({"success": true, "errors": [], "messages": [],
               "result": {"id": "tok1", "value": "tg_h3", "policies": [{"effect": "allow"}]}})
    );

    // Not the expected shape: nothing to hand back.
    assert!(MintedResponse::parse(TokenEvent::Created, b"not json").is_none());
    assert!(MintedResponse::parse(TokenEvent::Created, br#"{"result":"x"}"#).is_none());
    let no_secret =
        MintedResponse::parse(TokenEvent::Created, br#"{"result":{"id":"x"}}"#).unwrap();
    assert!(no_secret.secret().is_none());
    assert!(MintedResponse::parse(TokenEvent::Rolled, br#"{"result":{"v":1}}"#).is_none());
    // A value that cannot be a secret (a decoy) is no secret where expected.
    let decoy =
        MintedResponse::parse(TokenEvent::Created, br#"{"result":{"id":"x","value":""}}"#).unwrap();
    assert!(decoy.secret().is_none());
    let short = MintedResponse::parse(TokenEvent::Rolled, br#"{"result":"zz"}"#).unwrap();
    assert!(short.secret().is_none());
}

#[test]
fn custody_follows_the_reviewers_labels() {
    let mut vault = Vault::with_keys(&[("k1", [1; 32])]);
    vault.pass_through_labels = vec![("ci".into(), "true".into())];
    let mut labels = BTreeMap::new();
    assert_eq!(vault.custody_for(&labels), Custody::Vault);
    labels.insert("ci".into(), "false".into());
    assert_eq!(vault.custody_for(&labels), Custody::Vault);
    labels.insert("ci".into(), "true".into());
    assert_eq!(vault.custody_for(&labels), Custody::PassThrough);
    vault.enabled = false;
    assert_eq!(vault.custody_for(&BTreeMap::new()), Custody::PassThrough);
}

#[test]
fn keys_that_are_not_random_are_refused() {
    use base64::Engine as _;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    assert!(key_from_base64(&b64(&[0; 32])).is_err(), "all zeros");
    assert!(
        key_from_base64(&b64(&[1, 2, 3, 4].repeat(8))).is_err(),
        "a repeated pattern"
    );
    assert!(key_from_base64(&b64(&[9; 16])).is_err(), "16 bytes");
    assert!(key_from_base64("not base64!").is_err());
    let random: Vec<u8> = (0u8..32)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    assert!(key_from_base64(&b64(&random)).is_ok(), "32 distinct bytes");
}

#[test]
fn a_key_check_opens_only_under_the_key_that_sealed_it() {
    let vault = Vault::with_keys(&[("k2", [2; 32]), ("k1", [1; 32])]);
    let checks = vault.key_checks().unwrap();
    assert_eq!(
        checks.iter().map(|c| c.key_id.as_str()).collect::<Vec<_>>(),
        ["k2", "k1"]
    );
    for check in &checks {
        vault.verify_key_check(check).unwrap();
    }
    // Another key under the same id (a replica given a different TOLLGATE_VAULT_KEY) fails the check.
    let other = Vault::with_keys(&[("k1", [9; 32])]);
    assert!(other.verify_key_check(&checks[1]).is_err());
    // A check cannot pass for a token's secret (associated data differs).
    let sealed = vault.seal("cloudflare", "k2", &secret("x")).unwrap();
    assert!(vault.verify_key_check(&sealed).is_err());
}

#[test]
fn token_ids_compare_as_the_provider_compares_them() {
    assert_eq!(
        token_key("98B3D0CB-1A50-42e0-8000-00000000ABCD").as_deref(),
        Some("98b3d0cb1a5042e0800000000000abcd")
    );
    assert_eq!(token_key("tok-alpha").as_deref(), Some("tokalpha"));
    for odd in ["", " ab", "a b", "a/b", "a%20", "a.b", &"x".repeat(129)] {
        assert_eq!(token_key(odd), None, "{odd:?}");
    }
    assert!(cloudflare_succeeded(
        br#"{"success":true,"result":{"id":"x"}}"#
    ));
    assert!(!cloudflare_succeeded(
        br#"{"success":false,"errors":[{"code":1}]}"#
    ));
    assert!(!cloudflare_succeeded(br#"{"result":{"id":"x"}}"#));
    assert!(!cloudflare_succeeded(b"ok"));
}

const REAL_SHAPED: &str = "Xq7Lm2Pz9Rt4Vw8Kb3Nd6Hf1Jc5Gs0Ya7Ue2Io9T";

#[test]
fn a_secret_must_look_like_one_and_credential_shapes_are_told_from_ids() {
    assert!(plausible_secret(REAL_SHAPED));
    assert!(plausible_secret("cf-minted-secret-alpha-5e1f"));
    for decoy in [
        "",
        "zz",
        "short-one",
        "has a space in it somewhere",
        "é-not-ascii-ééééééééé",
    ] {
        assert!(!plausible_secret(decoy), "{decoy}");
    }
    assert!(credential_like(REAL_SHAPED, 20));
    assert!(credential_like(&format!("token: {REAL_SHAPED}."), 20));
    // An invisible character between its characters hides nothing.
    let hidden: String = REAL_SHAPED.chars().flat_map(|c| [c, '\u{200e}']).collect();
    assert!(credential_like(&hidden, 20));
    for ordinary in [
        "023e105f4ecef8ad9ca31a8372d0c353",
        "3f5c8a2e-1b4d-4c6e-9f0a-2b3c4d5e6f70",
        "com.cloudflare.api.account.zone.023e105f4ecef8ad9ca31a8372d0c353",
        "2026-12-01T00:00:00Z",
        "Workers Scripts Write",
        "The token name is required.",
    ] {
        assert!(!credential_like(ordinary, 12), "{ordinary}");
    }
}

#[test]
fn a_second_credential_beside_the_value_is_found_but_the_agents_own_strings_are_not() {
    let request = json!({"name": "Deploy2026TokenForProduction", "policies": []});
    let handle = "tg_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789AbCd";
    let clean = json!({"success": true, "result": {"id": "023e105f4ecef8ad9ca31a8372d0c353",
        "name": "Deploy2026TokenForProduction", "value": handle, "issued_on": "2026-12-01T00:00:00Z"}});
    assert!(!stray_credential(
        clean.to_string().as_bytes(),
        &request,
        handle
    ));
    let stray =
        json!({"success": true, "result": {"id": "x", "value": handle, "token": REAL_SHAPED}});
    assert!(stray_credential(
        stray.to_string().as_bytes(),
        &request,
        handle
    ));
    assert!(stray_credential(b"not json", &request, handle));
    // The same secret in one string written in groups, with spaces, dots or dashes between.
    for grouped in [
        "Xq7Lm 2Pz9R t4Vw8 Kb3Nd 6Hf1J",
        "Xq7Lm.2Pz9R.t4Vw8.Kb3Nd.6Hf1J",
        "Xq7Lm - 2Pz9R - t4Vw8 - Kb3Nd",
    ] {
        let answer =
            json!({"success": true, "result": {"id": "x", "value": handle, "meta": grouped}});
        assert!(
            stray_credential(answer.to_string().as_bytes(), &request, handle),
            "{grouped}"
        );
    }
    // Cloudflare's own answer, every field of it, holds none.
    let full = json!({"success": true, "errors": [], "messages": [], "result": {
        "id": "ed17574386854bf78a67040be0a770b0", "name": "Deploy2026TokenForProduction",
        "status": "active", "issued_on": "2026-12-01T10:00:00Z", "modified_on": "2026-12-01T10:00:00Z",
        "not_before": "2026-12-01T00:00:00Z", "expires_on": "2027-01-01T00:00:00Z", "value": handle,
        "policies": [{"id": "f267e341f3dd4697bd3b9f71dd96247f", "effect": "allow",
            "resources": {"com.cloudflare.api.account.zone.eb78d65290b24279ba6f44721b3ea3c4": "*"},
            "permission_groups": [{"id": "c8fed203ed3043cba015a93ad1616f1f", "name": "Zone Read",
                "meta": {"key": "key", "value": "value"}}]}],
        "condition": {"request_ip": {"in": ["123.123.123.0/24", "2606:4700::/32"],
            "not_in": ["123.123.123.100/24"]}}}});
    assert!(!stray_credential(
        full.to_string().as_bytes(),
        &request,
        handle
    ));
}

#[test]
fn a_refusal_keeps_codes_and_plain_messages_only() {
    let body = json!({"success": false,
        "errors": [{"code": 1000, "message": "Invalid request body"},
                   {"code": 1001, "message": format!("made {REAL_SHAPED}")},
                   {"code": 1002, "message": "see %58%71"},
                   {"code": 1003, "message": "zero\u{200b}width"}],
        "messages": [REAL_SHAPED], "result": {"value": REAL_SHAPED}});
    let (rebuilt, withheld) = refusal_for_agent(body.to_string().as_bytes());
    let rebuilt: Value = serde_json::from_slice(&rebuilt).unwrap();
    assert_eq!(withheld, 3);
    assert!(!rebuilt.to_string().contains(REAL_SHAPED));
    assert_eq!(rebuilt["success"], false);
    assert_eq!(rebuilt["result"], Value::Null);
    assert_eq!(rebuilt["messages"], json!([]));
    assert_eq!(
        rebuilt["errors"][0],
        json!({"code": 1000, "message": "Invalid request body"})
    );
    for i in 1..4 {
        assert_eq!(rebuilt["errors"][i]["code"], 1000 + i);
        assert!(
            rebuilt["errors"][i]["message"]
                .as_str()
                .unwrap()
                .starts_with("tollgate withheld")
        );
    }
    // Codes too large to be Cloudflare's (they could spell bytes), a secret in short pieces, and more
    // errors than a refusal has are dropped.
    let spaced = REAL_SHAPED
        .as_bytes()
        .chunks(10)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(" ");
    let body = json!({"errors": [
        {"code": 34154452997272427_u64, "message": "ok"},
        {"code": 1004, "message": format!("value {spaced}")},
        {"code": 1}, {"code": 2}, {"code": 3}, {"code": 4}]});
    let (rebuilt, withheld) = refusal_for_agent(body.to_string().as_bytes());
    let rebuilt: Value = serde_json::from_slice(&rebuilt).unwrap();
    assert_eq!(withheld, 1);
    let errors = rebuilt["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 4);
    assert_eq!(errors[0], json!({"message": "ok"}));
    assert!(
        errors[1]["message"]
            .as_str()
            .unwrap()
            .starts_with("tollgate withheld")
    );
    // Not JSON: the status's own code only.
    let (rebuilt, _) = refusal_for_agent(b"<html>oops</html>");
    let rebuilt: Value = serde_json::from_slice(&rebuilt).unwrap();
    assert_eq!(rebuilt["errors"][0]["code"], 10000);
}

#[test]
fn a_token_answer_keeps_only_cloudflares_request_id_header() {
    let header = |name: &str, value: &str| {
        token_answer_header(
            &http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            &HeaderValue::from_str(value).unwrap(),
        )
    };
    assert!(header("cf-ray", "8c2a1b3d4e5f6789-SJC"));
    assert!(!header("cf-ray", "Xq7Lm2Pz9Rt4Vw8K-SJC"));
    assert!(!header("cf-ray", "8c2a1b3d4e5f6789-SJC-Xq7Lm2Pz9Rt4"));
    assert!(!header("cf-ray", "8c2a1b3d4e5f6789"));
    assert!(!header("x-request-token", "8c2a1b3d4e5f6789-SJC"));
    assert!(!header(
        "set-cookie",
        "__cf_bm=Xq7Lm2Pz9Rt4Vw8Kb3Nd6Hf1Jc5Gs0Ya7Ue2Io9T"
    ));
}

#[test]
fn refusal_messages_are_judged_together() {
    // Ten characters of a secret per message: none looks like a credential alone, all four do together.
    let pieces: Vec<Value> = REAL_SHAPED
        .as_bytes()
        .chunks(10)
        .enumerate()
        .map(|(i, p)| json!({"code": 1000 + i, "message": std::str::from_utf8(p).unwrap()}))
        .collect();
    let body = json!({"success": false, "errors": pieces});
    let (rebuilt, withheld) = refusal_for_agent(body.to_string().as_bytes());
    let rebuilt: Value = serde_json::from_slice(&rebuilt).unwrap();
    assert_eq!(withheld, 4, "{rebuilt}");
    for (i, e) in rebuilt["errors"].as_array().unwrap().iter().enumerate() {
        assert_eq!(e["code"], 1000 + i);
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .starts_with("tollgate withheld")
        );
    }
    // Ordinary messages still pass together.
    let ordinary = [
        "Invalid request body",
        "Token name must be unique",
        "policies[0].effect is required",
        "permission group c8fed203ed3043cba015a93ad1616f1f not found",
        "Unable to authenticate request: check the X-Auth-Key header",
    ];
    // (At most four errors are passed on: three to a refusal here.)
    for group in ordinary.chunks(3) {
        let body = json!({"success": false, "errors": group.iter().enumerate()
            .map(|(i, m)| json!({"code": 1001 + i, "message": m})).collect::<Vec<_>>()});
        let (rebuilt, withheld) = refusal_for_agent(body.to_string().as_bytes());
        let rebuilt: Value = serde_json::from_slice(&rebuilt).unwrap();
        assert_eq!(withheld, 0, "{rebuilt}");
        for (i, m) in group.iter().enumerate() {
            assert_eq!(rebuilt["errors"][i]["message"], *m);
        }
    }
    // A secret with its digits written as punctuation, or split at each capital, or spread over several
    // messages so (attack round 14).
    let punctuated: String = REAL_SHAPED
        .chars()
        .map(|c| match c {
            '0'..='9' => b"!@#$%^&*()"[c as usize - '0' as usize] as char,
            c => c,
        })
        .collect();
    // Split into pieces at each change between letters and digits, its digits as punctuation.
    let mut split = String::new();
    for (i, c) in punctuated.chars().enumerate() {
        let letter = c.is_ascii_alphabetic();
        if i > 0 && letter != punctuated.as_bytes()[i - 1].is_ascii_alphabetic() {
            split.push(' ');
        }
        split.push(c);
    }
    let halves = (
        punctuated[..punctuated.len() / 2].to_string(),
        punctuated[punctuated.len() / 2..].to_string(),
    );
    let pieces = "Xq 7 Lm 2 Pz 9 Rt 4 Vw 8 Kb 3 Nd 6 Hf 1 Jc 5 Gs 0 Ya 7 Ue 2 Io 9 T".to_string();
    for messages in [
        vec![format!("Bad token {punctuated}")],
        vec![format!("Bad token {pieces}")],
        vec![format!("rejected: {split}")],
        vec![format!("one {}", halves.0), format!("two {}", halves.1)],
    ] {
        let body = json!({"success": false, "errors": messages.iter()
            .map(|m| json!({"code": 1000, "message": m})).collect::<Vec<_>>()});
        let (rebuilt, withheld) = refusal_for_agent(body.to_string().as_bytes());
        assert_eq!(withheld, messages.len(), "{messages:?}");
        let rebuilt = String::from_utf8(rebuilt).unwrap();
        assert!(
            !rebuilt.contains(&punctuated[..8]) && !rebuilt.contains(&split[..8]),
            "{rebuilt}"
        );
    }
}

/// A credential-shaped string written in tag characters or look-alikes is still credential-shaped (attack
/// round 15: a create answer's `name` carried the new secret in tag characters).
#[test]
fn credential_shapes_are_read_through_tags_and_look_alikes() {
    let tags: String = REAL_SHAPED
        .chars()
        .map(|c| char::from_u32(0xe0000 + c as u32).unwrap())
        .collect();
    assert!(credential_like(&format!("n{tags}"), SHORTEST_SECRET));
    let circled: String = REAL_SHAPED
        .chars()
        .map(|c| match c {
            'A'..='Z' => char::from_u32(0x1f150 + (c as u32 - 'A' as u32)).unwrap(),
            '0'..='9' => char::from_u32(0x966 + (c as u32 - '0' as u32)).unwrap(),
            c => c,
        })
        .collect();
    assert!(credential_like(&circled, SHORTEST_SECRET));
    // Ordinary text in other scripts is not.
    assert!(!credential_like(
        "café – ünïcödé 日本語 ४२",
        SHORTEST_SECRET
    ));
}
