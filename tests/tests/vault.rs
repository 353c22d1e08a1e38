//! Vault mode end to end (issue #17): the real binary, a real Postgres database per test and a stand-in
//! Cloudflare that answers token create, roll and delete in Cloudflare's shapes. An agent that mints a token
//! gets a handle, never the secret; the handle's requests are judged, recorded under the handle's agent and
//! forwarded with the minted secret; roll, delete and expiry end a handle; a labelled agent keeps custody;
//! the vault key is required and can be rotated.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::{PgPool, Row};
use tollgate_tests::sdk::{Reply, StandIn};
use tollgate_tests::tollgate::{CLOUDFLARE_SECRET, Tollgate, TollgateBuilder, policy_dir_with};
use tollgate_tests::{TestDatabase, upstream::RecordedRequest};

/// Allows everything, except a read of `…/probe`, which it denies with what the policy input says about a
/// handle (so the test can see `agent.minted_by` and `agent.token`).
const POLICY: &str = r#"package tollgate

default decision := {"outcome": "allow"}

decision := {"outcome": "deny", "reasons": [{"rule": "vault.probe", "message": msg}]} if {
    endswith(input.request.path, "/probe")
    msg := sprintf("name=%s handle=%s minted_by=%s token=%s policies=%d", [input.agent.name, input.agent.handle.name, input.agent.minted_by, input.agent.token.id, count(input.agent.token.policies)])
}

# A DNS record costs $60 of the agent's $100 a month: a handle spends from its minter's budget.
decision := {"outcome": "allow", "charge": {"cents": 6000, "budget": "agent-provider-month", "cap_cents": 10000}} if {
    input.request.method == "POST"
    endswith(input.request.path, "/dns_records")
}

# A read of `…/hold` waits for a reviewer.
decision := {"outcome": "approve", "reasons": [{"rule": "vault.hold", "message": "a human looks first"}]} if {
    endswith(input.request.path, "/hold")
}
"#;

const DNS_WRITE: &str = "4755a26eedb94da69e1066d98aa820be";

/// A secret shaped as Cloudflare's are (40 characters, letters of both cases and digits).
const REALISTIC_SECRET: &str = "Xq7Lm2Pz9Rt4Vw8Kb3Nd6Hf1Jc5Gs0Ya7Ue2Io9T";

/// A secret as Cloudflare makes them — 40 letters and digits — and unlike any other (so that no two share a
/// run of characters, as real secrets do not): derived from `seed`.
fn secret_from(seed: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut state = seed.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (0..40)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(ALPHABET[(state % ALPHABET.len() as u64) as usize])
        })
        .collect()
}

fn created_secret(name: &str) -> String {
    secret_from(&format!("created {name}"))
}

fn rolled_secret(id: &str, n: usize) -> String {
    secret_from(&format!("rolled {id} {n}"))
}

/// Cloudflare's token routes (user tokens, and account tokens under `/accounts/{id}`): create answers
/// `result.value`, roll answers the new secret as `result`, delete answers `result.id`; anything else an
/// empty list. While `failing` is above zero, a delete of a token whose id contains `flaky` answers 500
/// (and counts one down).
fn cloudflare_tokens(
    rolls: Arc<AtomicUsize>,
    failing: Arc<AtomicUsize>,
) -> impl Fn(&RecordedRequest) -> Reply + Send + Sync {
    move |r: &RecordedRequest| {
        let full = r.path_and_query.split('?').next().unwrap_or_default();
        // An account token's route, as the user token's.
        let account_route = full.strip_prefix("/client/v4/accounts/").and_then(|rest| {
            let (_, tail) = rest.split_once('/')?;
            tail.starts_with("tokens")
                .then(|| format!("/client/v4/user/{tail}"))
        });
        let path = account_route.as_deref().unwrap_or(full);
        let ok = |result: Value| {
            Reply::json(
                200,
                json!({"success": true, "errors": [], "messages": [], "result": result}),
            )
        };
        if r.method == "POST" && path == "/client/v4/user/tokens" {
            let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
            let name = body["name"].as_str().unwrap_or("unnamed").to_string();
            if name == "odd" {
                // Not Cloudflare's shape: tollgate cannot tell where the secret is.
                return Reply::json(200, json!({"token": created_secret("odd")}));
            }
            // Shapes that would carry the secret past the handle (the attack round's findings).
            let secret = created_secret(&name);
            match name.as_str() {
                "extra" => {
                    return ok(json!({"id": "tok-extra", "name": name, "value": secret,
                        "description": format!("your token is {secret}")}));
                }
                "novalue" => {
                    return ok(json!({"id": "tok-novalue", "name": name, "secret": secret}));
                }
                "emptyid" => return ok(json!({"id": "", "name": name, "value": secret})),
                // The secret again on the status line, or 20 characters of it in a header.
                "reason" => {
                    return ok(json!({"id": "tok-reason", "name": name, "value": secret}))
                        .reason(&secret);
                }
                "piece" => {
                    return ok(json!({"id": "tok-piece", "name": name, "value": secret}))
                        .header("x-echo", &secret[..20]);
                }
                "idsecret" => return ok(json!({"id": secret, "name": name, "value": secret})),
                "slow" => {
                    return ok(json!({"id": "tok-slow", "name": name, "value": secret}))
                        .after(Duration::from_millis(1500));
                }
                "refused" => {
                    return Reply::json(
                        400,
                        json!({"success": false, "errors": [{"code": 1000, "message": "no"}],
                            "messages": [], "result": {"id": "tok-refused", "value": secret}}),
                    );
                }
                // Refusals carrying a real-looking secret in other shapes (attack round 10).
                "refused-array" => {
                    return Reply::json(
                        409,
                        json!({"success": false, "errors": [{"code": 1001, "message": "token exists"}],
                            "messages": [{"code": 1, "message": REALISTIC_SECRET}],
                            "result": [{"id": "tok-refused-array", "value": REALISTIC_SECRET}]}),
                    )
                    .header("x-token", REALISTIC_SECRET);
                }
                // The new token's secret in four pieces, one per error message (attack round 13).
                "refused-pieces" => {
                    let errors: Vec<Value> = secret
                        .as_bytes()
                        .chunks(10)
                        .enumerate()
                        .map(|(i, piece)| {
                            json!({"code": 1003 + i,
                                   "message": String::from_utf8_lossy(piece).into_owned()})
                        })
                        .collect();
                    return Reply::json(
                        400,
                        json!({"success": false, "errors": errors, "messages": [], "result": null}),
                    );
                }
                // A decoy `value` with the real secret in a header, or in a cookie (attack round 13).
                "decoy-header" => {
                    return ok(json!({"id": "tok-decoy-header", "name": name,
                        "value": REALISTIC_SECRET, "extra_note": "see header"}))
                    .header("x-request-token", &secret)
                    .header("set-cookie", &format!("t={secret}; Path=/"))
                    .header("cf-ray", "8c2a1b3d4e5f6789-SJC");
                }
                // An id that is another token's vaulted secret (attack round 13).
                "id-is-held" => {
                    return ok(
                        json!({"id": created_secret("alpha"), "name": name, "value": secret}),
                    );
                }
                // A name that is another token's vaulted secret (attack round 20).
                "name-is-held" => {
                    return ok(
                        json!({"id": "tok-name-is-held", "name": created_secret("alpha"), "value": secret}),
                    );
                }
                "refused-message" => {
                    return Reply::json(
                        400,
                        json!({"success": false, "errors": [{"code": 1002,
                            "message": format!("token created but policy invalid: {REALISTIC_SECRET}")}],
                            "result": null}),
                    );
                }
                // A decoy `value` with the secret in another field.
                "decoy-empty" => {
                    return ok(json!({"id": "tok-decoy-empty", "name": name, "value": "",
                        "token": REALISTIC_SECRET}));
                }
                "decoy" => {
                    return ok(json!({"id": "tok-decoy", "name": name, "value": secret,
                        "token": REALISTIC_SECRET}));
                }
                // A decoy `value` with the secret in one other string, written in groups of five.
                "decoy-grouped" => {
                    let groups: Vec<String> = REALISTIC_SECRET
                        .as_bytes()
                        .chunks(5)
                        .map(|c| String::from_utf8_lossy(c).into_owned())
                        .collect();
                    return ok(
                        json!({"id": "tok-decoy-grouped", "name": name, "value": secret,
                        "meta": groups.join(" "), "note": groups.join(".")}),
                    );
                }
                // The secret again, with an invisible character between its letters.
                "invisible" => {
                    let hint: String = secret.chars().flat_map(|c| [c, '\u{200e}']).collect();
                    return ok(json!({"id": "tok-invisible", "name": name, "value": secret,
                        "hint": hint}));
                }
                _ => {}
            }
            return ok(json!({
                "id": format!("tok-{name}"),
                "name": name,
                "status": "active",
                "issued_on": "2026-12-01T00:00:00Z",
                "expires_on": body["expires_on"],
                "policies": body["policies"],
                "value": created_secret(&name),
            }));
        }
        // A provider that echoes the credential it was called with, in the body or a header.
        let seen = r.header("authorization").unwrap_or_default().to_string();
        if path.ends_with("/echo") {
            return ok(json!({"you_sent": seen, "padding": "x".repeat(70_000)}));
        }
        if path.ends_with("/echo-header") {
            return ok(json!([])).header("x-debug-auth", &seen);
        }
        let sent_secret = seen.strip_prefix("Bearer ").unwrap_or_default();
        // The same echo JSON-escaped, in part, or compressed (a screen reading plain bytes would miss it).
        if path.ends_with("/echo-escaped") {
            let escaped: String = sent_secret
                .chars()
                .map(|c| format!("\\u{:04x}", c as u32))
                .collect();
            return Reply::raw(200, format!("{{\"you_sent\":\"{escaped}\"}}").into_bytes());
        }
        if path.ends_with("/echo-prefix") {
            let prefix: String = sent_secret.chars().take(14).collect();
            return ok(json!({"you_sent": prefix}));
        }
        // An ordinary answer whose header and body end in the start of an escape.
        if path.ends_with("/ends-mid-escape") {
            return Reply::raw(200, br#"{"success":true,"result":[]} \"#.to_vec())
                .header("x-next", "/zones?page=2&");
        }
        if path.ends_with("/echo-split-headers") {
            let mut reply = ok(json!([]));
            for (i, piece) in seen.as_bytes().chunks(11).enumerate() {
                reply = reply.header(
                    &format!("x-p{i}"),
                    std::str::from_utf8(piece).unwrap_or("?"),
                );
            }
            return reply;
        }
        if path.ends_with("/echo-reason") {
            return ok(json!([])).reason(sent_secret);
        }
        if path.ends_with("/echo-gzip") {
            return Reply::raw(200, vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3])
                .header("content-encoding", "gzip");
        }
        // A TXT record whose content is a token's secret (a provider, or an agent, wrote it there): read by
        // anyone with any key.
        if let Some((_, record)) = path.split_once("/dns_records/rec-") {
            let rolled = record
                .strip_prefix("roll-")
                .and_then(|r| r.rsplit_once('-'))
                .and_then(|(id, n)| Some(rolled_secret(id, n.parse().ok()?)));
            let content = match (record.strip_prefix("held-"), rolled) {
                (Some(name), _) => created_secret(name),
                (None, Some(rolled)) => rolled,
                (None, None) => secret_from(record),
            };
            return ok(
                json!({"id": format!("rec-{record}"), "type": "TXT", "name": "_verify.example.com",
                "content": content, "ttl": 1}),
            );
        }
        if let Some(rest) = path.strip_prefix("/client/v4/user/tokens/") {
            // A read that (unlike Cloudflare's) answers with the token's secret.
            if r.method == "GET" && rest.starts_with("tok-readback") {
                let name = rest.trim_start_matches("tok-").trim_end_matches("/value");
                return ok(json!({"id": rest, "name": name, "value": created_secret(name)}));
            }
            if r.method == "PUT" && rest.ends_with("/value") {
                let n = rolls.fetch_add(1, Ordering::SeqCst);
                let id = rest.trim_end_matches("/value");
                if id.contains("slowroll") {
                    return ok(Value::from(rolled_secret(id, n)))
                        .after(Duration::from_millis(1000));
                }
                return ok(Value::from(rolled_secret(id, n)));
            }
            if r.method == "PUT" && !rest.contains('/') {
                let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
                if body["name"] == "leaky" {
                    return ok(
                        json!({"id": rest, "name": "leaky", "value": "cf-update-secret-77"}),
                    );
                }
                return ok(
                    json!({"id": rest, "name": body["name"], "expires_on": body["expires_on"]}),
                );
            }
            if r.method == "DELETE" {
                if rest.contains("nodelete") {
                    // A 2xx that does not say it succeeded.
                    return Reply::json(
                        200,
                        json!({"success": false, "errors": [{"code": 1003, "message": "not now"}],
                               "messages": [], "result": null}),
                    );
                }
                if rest.contains("flaky")
                    && let Ok(left) =
                        failing
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                {
                    let message = if left == 1 {
                        // Quoting another vaulted token's secret, in groups of four (attack round 14).
                        let spare = created_secret("spare");
                        let groups: Vec<&str> = (0..spare.len())
                            .step_by(4)
                            .map(|i| &spare[i..(i + 4).min(spare.len())])
                            .collect();
                        format!("token in use by {}", groups.join(" "))
                    } else {
                        // Quoting the request's credential (tollgate's own, on a containment's delete).
                        format!("internal error handling {seen}")
                    };
                    return Reply::json(
                        500,
                        json!({"success": false, "errors": [{"code": 10000, "message": message}],
                               "messages": [], "result": null}),
                    );
                }
                return ok(json!({"id": rest}));
            }
        }
        ok(json!([]))
    }
}

struct World {
    _db: TestDatabase,
    pool: PgPool,
    stand_in: StandIn,
    gate: Tollgate,
    deployer: String,
    http: reqwest::Client,
    _policies: tempfile::TempDir,
}

async fn world(configure: impl FnOnce(TollgateBuilder) -> TollgateBuilder) -> World {
    let db = TestDatabase::create().await.expect("database");
    let stand_in = StandIn::start().await.expect("stand-in");
    stand_in.answer(cloudflare_tokens(
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    ));
    let policies = policy_dir_with(POLICY).expect("policies");
    let gate = configure(
        Tollgate::builder(db.url(), &stand_in.url())
            .policy_dir(policies.path())
            .server("identity_refresh_ms = 100"),
    )
    .start()
    .await
    .expect("tollgate starts");
    let deployer = gate
        .create_agent("deployer", &["--team", "web", "--scope", "tokens:write"])
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
        _policies: policies,
    }
}

impl World {
    async fn create_token(&self, key: &str, name: &str, expires_on: &str) -> (u16, Value) {
        let body = json!({
            "name": name,
            "policies": [{"effect": "allow",
                          "resources": {"com.cloudflare.api.account.zone.023e105f4ecef8ad9ca31a8372d0c353": "*"},
                          "permission_groups": [{"id": DNS_WRITE, "name": "DNS Write"}]}],
            "expires_on": expires_on,
        });
        let r = self
            .http
            .post(self.gate.url("/cloudflare/client/v4/user/tokens"))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .expect("create");
        let status = r.status().as_u16();
        (status, r.json().await.expect("json"))
    }

    async fn roll(&self, key: &str, token_id: &str) -> (u16, Value) {
        let r = self
            .http
            .put(self.gate.url(&format!(
                "/cloudflare/client/v4/user/tokens/{token_id}/value"
            )))
            .bearer_auth(key)
            .json(&json!({}))
            .send()
            .await
            .expect("roll");
        let status = r.status().as_u16();
        (status, r.json().await.expect("json"))
    }

    async fn delete(&self, key: &str, token_id: &str) -> u16 {
        self.http
            .delete(
                self.gate
                    .url(&format!("/cloudflare/client/v4/user/tokens/{token_id}")),
            )
            .bearer_auth(key)
            .send()
            .await
            .expect("delete")
            .status()
            .as_u16()
    }

    /// A read with `key`; returns the status and what the stand-in saw as `Authorization` (if it was reached).
    async fn read(&self, key: &str, path: &str) -> (u16, Option<String>, String) {
        self.stand_in.take();
        let r = self
            .http
            .get(self.gate.url(path))
            .bearer_auth(key)
            .send()
            .await
            .expect("read");
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        let seen = self
            .stand_in
            .take()
            .first()
            .and_then(|req| req.header("authorization").map(str::to_string));
        (status, seen, text)
    }

    /// Reads until the answer is `want` (a revocation reaches every cache within a second or so).
    async fn read_until(&self, key: &str, want: u16) -> u16 {
        let mut last = 0;
        for _ in 0..40 {
            last = self.read(key, "/cloudflare/client/v4/zones").await.0;
            if last == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        last
    }

    async fn row(&self, token_id: &str) -> sqlx::postgres::PgRow {
        sqlx::query(
            "SELECT name, policies, status, custody, minted_by_name, handle_agent_id, secret_key_id,
                    secret_ciphertext, rolls, expires_on IS NOT NULL AS has_expiry,
                    decision_id, rolled_at IS NOT NULL AS rolled, deleted_at IS NOT NULL AS deleted
             FROM minted_tokens WHERE provider = 'cloudflare' AND token_id = $1",
        )
        .bind(token_id)
        .fetch_one(&self.pool)
        .await
        .expect("minted token row")
    }

    /// Every table of the database as text (`pg_dump --data-only`).
    async fn dump(&self, url: &str) -> String {
        let out = tokio::process::Command::new("pg_dump")
            .args(["--data-only", url])
            .output()
            .await
            .expect("pg_dump");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn handle_of(created: &Value) -> String {
    created["result"]["value"]
        .as_str()
        .expect("result.value")
        .to_string()
}

#[tokio::test]
async fn a_minted_token_becomes_a_handle_judged_recorded_and_forwarded_with_its_secret() {
    let w = world(|b| b).await;
    let (status, created) = w
        .create_token(&w.deployer, "alpha", "2099-01-01T00:00:00Z")
        .await;
    assert_eq!(status, 200, "{created}");
    let handle = handle_of(&created);
    assert!(
        handle.starts_with("tg_") && handle.len() == 43,
        "a handle looks like an agent key: {handle}"
    );
    assert_eq!(
        created["result"]["id"], "tok-alpha",
        "the rest of the answer is kept"
    );
    let secret = created_secret("alpha");
    assert!(!created.to_string().contains(&secret));
    // The create itself went out with tollgate's own credential.
    let seen = w.stand_in.take();
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {CLOUDFLARE_SECRET}").as_str())
    );

    // The handle works where a Cloudflare token goes, and is forwarded with the minted secret.
    let (status, auth, _) = w.read(&handle, "/cloudflare/client/v4/zones").await;
    assert_eq!(status, 200);
    assert_eq!(auth.as_deref(), Some(format!("Bearer {secret}").as_str()));

    // Judged with the token and its minter in the policy input.
    let (status, auth, text) = w.read(&handle, "/cloudflare/client/v4/zones/z/probe").await;
    assert_eq!(status, 403, "{text}");
    assert!(auth.is_none(), "a denial is not forwarded");
    assert!(
        text.contains(
            "name=deployer handle=deployer~tok-alpha minted_by=deployer token=tok-alpha policies=1"
        ),
        "{text}"
    );
    // Only for the provider that minted it.
    let (status, auth, _) = w.read(&handle, "/stripe/v1/customers").await;
    assert_eq!(status, 401);
    assert!(auth.is_none());

    // Recorded: the token, and the handle's decisions under its child agent, attributed to the minter.
    let row = w.row("tok-alpha").await;
    assert_eq!(row.get::<String, _>("status"), "active");
    assert_eq!(row.get::<String, _>("custody"), "vault");
    assert_eq!(row.get::<String, _>("minted_by_name"), "deployer");
    assert_eq!(
        row.get::<Option<String>, _>("name").as_deref(),
        Some("alpha")
    );
    assert_eq!(
        row.get::<Value, _>("policies")[0]["permission_groups"][0]["id"],
        DNS_WRITE
    );
    assert!(row.get::<bool, _>("has_expiry"));
    assert_eq!(
        row.get::<Option<String>, _>("secret_key_id").as_deref(),
        Some("k1")
    );
    let child_id: uuid::Uuid = row.get::<Option<uuid::Uuid>, _>("handle_agent_id").unwrap();
    let child = sqlx::query(
        "SELECT c.name, c.scopes, c.team, p.name AS parent FROM agents c JOIN agents p ON p.id = c.minted_by
         WHERE c.id = $1 AND c.minted_token_id = 'tok-alpha'",
    )
    .bind(child_id)
    .fetch_one(&w.pool)
    .await
    .unwrap();
    assert_eq!(child.get::<String, _>("name"), "deployer~tok-alpha");
    assert_eq!(child.get::<String, _>("parent"), "deployer");
    assert_eq!(child.get::<Vec<String>, _>("scopes"), vec!["tokens:write"]);
    assert_eq!(
        child.get::<Option<String>, _>("team").as_deref(),
        Some("web")
    );
    // (the read of /stripe is refused before any policy runs: no outcome, no input)
    let decided: Vec<(String, String, Option<String>)> = sqlx::query(
        "SELECT agent_name, coalesce(policy_outcome, 'none') AS outcome,
                input::jsonb #>> '{agent,minted_by}' AS minted_by
         FROM decisions WHERE agent_id = $1 ORDER BY at",
    )
    .bind(child_id)
    .fetch_all(&w.pool)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get("agent_name"), r.get("outcome"), r.get("minted_by")))
    .collect();
    let expected = |outcome: &str, minted_by: Option<&str>| {
        (
            "deployer~tok-alpha".to_string(),
            outcome.to_string(),
            minted_by.map(str::to_string),
        )
    };
    assert_eq!(
        decided,
        vec![
            expected("allow", Some("deployer")),
            expected("deny", Some("deployer")),
            expected("none", None),
        ]
    );

    // The secret is nowhere but sealed: not in any table, not in the log.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let dump = w.dump(w._db.url()).await;
    assert!(dump.contains("tok-alpha"), "the dump has the row");
    assert!(
        !dump.contains(&secret),
        "the secret is in the database dump"
    );
    assert!(!w.gate.log().contains(&secret), "the secret is in the log");
    assert!(!w.gate.log().contains(&handle), "the handle is in the log");

    // Metrics count the token and the handle's use.
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
            r#"tollgate_minted_tokens_total{custody="vault",event="created",provider="cloudflare"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"tollgate_vault_handles_used_total{provider="cloudflare"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn roll_delete_and_expiry_end_a_handle() {
    let w = world(|b| b).await;
    let (_, created) = w
        .create_token(&w.deployer, "alpha", "2099-01-01T00:00:00Z")
        .await;
    let first = handle_of(&created);
    assert_eq!(w.read_until(&first, 200).await, 200);

    // Roll (through the handle itself): the old handle dies, the answer carries a new one that works with the
    // new secret.
    let (status, rolled) = w.roll(&first, "tok-alpha").await;
    assert_eq!(status, 200, "{rolled}");
    let second = rolled["result"].as_str().expect("result").to_string();
    assert!(second.starts_with("tg_") && second != first, "{rolled}");
    assert!(!rolled.to_string().contains(&rolled_secret("tok-alpha", 0)));
    // At once on this replica (attack round 18: the cache kept it for up to a refresh).
    assert_eq!(
        w.read(&first, "/cloudflare/client/v4/zones").await.0,
        401,
        "the rolled-away handle"
    );
    let (status, auth, _) = w.read(&second, "/cloudflare/client/v4/zones").await;
    assert_eq!(status, 200);
    assert_eq!(
        auth.as_deref(),
        Some(format!("Bearer {}", rolled_secret("tok-alpha", 0)).as_str())
    );
    let row = w.row("tok-alpha").await;
    assert_eq!(row.get::<String, _>("status"), "rolled");
    assert_eq!(row.get::<i64, _>("rolls"), 1);
    assert!(row.get::<bool, _>("rolled"));
    assert!(
        !w.dump(w._db.url())
            .await
            .contains(&rolled_secret("tok-alpha", 0))
    );

    // Delete: the handle is revoked and the sealed secret dropped.
    assert_eq!(w.delete(&w.deployer, "tok-alpha").await, 200);
    assert_eq!(
        w.read(&second, "/cloudflare/client/v4/zones").await.0,
        401,
        "the deleted token's handle, at once on this replica"
    );
    let row = w.row("tok-alpha").await;
    assert_eq!(row.get::<String, _>("status"), "deleted");
    assert!(row.get::<bool, _>("deleted"));
    assert!(row.get::<Option<Vec<u8>>, _>("secret_ciphertext").is_none());

    // Another agent's revocation leaves a handle alone.
    let (_, created) = w
        .create_token(&w.deployer, "kept", "2099-01-01T00:00:00Z")
        .await;
    let kept = handle_of(&created);
    assert_eq!(w.read(&kept, "/cloudflare/client/v4/zones").await.0, 200);
    let other = w.gate.create_agent("other", &[]).await.unwrap();
    let (ok, _, err) = w.gate.cli(&["agents", "revoke", "other"]).await.unwrap();
    assert!(ok, "{err}");
    assert_eq!(w.read_until(&other, 401).await, 401);
    assert_eq!(w.read(&kept, "/cloudflare/client/v4/zones").await.0, 200);

    // Expiry: the handle ends with the token's `expires_on`.
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(2))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (status, created) = w.create_token(&w.deployer, "brief", &soon).await;
    assert_eq!(status, 200, "{created}");
    let brief = handle_of(&created);
    assert_eq!(w.read(&brief, "/cloudflare/client/v4/zones").await.0, 200);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(w.read(&brief, "/cloudflare/client/v4/zones").await.0, 401);

    // Revoking the minter ends its handles too.
    let (ok, _, err) = w.gate.cli(&["agents", "revoke", "deployer"]).await.unwrap();
    assert!(ok, "{err}");
    assert_eq!(
        w.read_until(&kept, 401).await,
        401,
        "the revoked minter's handle"
    );
}

#[tokio::test]
async fn a_pass_through_label_keeps_the_secret_with_the_agent_and_the_row_says_so() {
    let w = world(|b| b.tables("[vault]\npass_through_labels = [\"ci=true\"]")).await;
    let ci = w
        .gate
        .create_agent("ci-bot", &["--label", "ci=true"])
        .await
        .unwrap();
    let (status, created) = w.create_token(&ci, "gamma", "2099-01-01T00:00:00Z").await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["result"]["value"], created_secret("gamma"));
    let row = w.row("tok-gamma").await;
    assert_eq!(row.get::<String, _>("custody"), "pass_through");
    assert_eq!(row.get::<String, _>("minted_by_name"), "ci-bot");
    assert!(
        row.get::<Option<uuid::Uuid>, _>("handle_agent_id")
            .is_none()
    );
    assert!(row.get::<Option<Vec<u8>>, _>("secret_ciphertext").is_none());
    // Other agents still get handles.
    let (_, created) = w
        .create_token(&w.deployer, "delta", "2099-01-01T00:00:00Z")
        .await;
    assert!(handle_of(&created).starts_with("tg_"));

    // An answer of a shape tollgate does not know: withheld in vault mode (the outcome says so), passed on to
    // a pass-through agent.
    let (status, refused) = w
        .create_token(&w.deployer, "odd", "2099-01-01T00:00:00Z")
        .await;
    assert_eq!(status, 502, "{refused}");
    assert_eq!(refused["tollgate"]["code"], "upstream_error");
    assert!(!refused.to_string().contains(&created_secret("odd")));
    let decision = refused["tollgate"]["decision_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut note = None;
    for _ in 0..50 {
        note = sqlx::query_scalar::<_, Option<String>>(
            "SELECT error FROM decision_outcomes WHERE decision_id = $1::uuid",
        )
        .bind(&decision)
        .fetch_optional(&w.pool)
        .await
        .unwrap()
        .flatten();
        if note.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(note.as_deref(), Some("minted_token_withheld"));
    let (status, passed) = w.create_token(&ci, "odd", "2099-01-01T00:00:00Z").await;
    assert_eq!(status, 200);
    assert_eq!(passed["token"], created_secret("odd"));
    assert!(!w.gate.log().contains(&created_secret("odd")));
}

#[tokio::test]
async fn vault_mode_needs_its_key() {
    let db = TestDatabase::create().await.unwrap();
    for (vault, expect) in [
        (
            "[vault]\nkey_env = \"TOLLGATE_VAULT_KEY_NOT_SET\"",
            "environment variable TOLLGATE_VAULT_KEY_NOT_SET (vault key 'k1') is not set",
        ),
        (
            "[vault]\nkey_env = \"CLOUDFLARE_API_TOKEN\"",
            "environment variable CLOUDFLARE_API_TOKEN (vault key 'k1') is not base64 of exactly 32 bytes",
        ),
    ] {
        let started = Tollgate::builder(db.url(), "http://127.0.0.1:9")
            .tables(vault)
            .start()
            .await;
        let error = format!("{:#}", started.err().expect("refused to start"));
        assert!(error.contains(expect), "{error}");
        assert!(
            !error.contains(CLOUDFLARE_SECRET),
            "the error shows no key material: {error}"
        );
    }
    // Replicas must agree on the key of an id: the first start stores a check value for 'k1'; a replica given
    // another key under that id refuses to start, naming the id and the variable.
    let first = Tollgate::builder(db.url(), "http://127.0.0.1:9")
        .start()
        .await
        .unwrap();
    let other = Tollgate::builder(db.url(), "http://127.0.0.1:9")
        .tables("[vault]\nkey_env = \"TOLLGATE_VAULT_KEY_2\"")
        .start()
        .await;
    let error = format!("{:#}", other.err().expect("refused to start"));
    assert!(
        error.contains("key 'k1' (environment variable TOLLGATE_VAULT_KEY_2) is not the key"),
        "{error}"
    );
    drop(first);
    // Vault mode off: no key needed.
    let off = Tollgate::builder(db.url(), "http://127.0.0.1:9")
        .tables("[vault]\nenabled = false\nkey_env = \"TOLLGATE_VAULT_KEY_NOT_SET\"")
        .start()
        .await;
    assert!(off.is_ok());
}

#[tokio::test]
async fn secrets_sealed_under_an_old_key_open_after_rotation() {
    let mut w = world(|b| b.tables("[vault]\nkey_env = \"TOLLGATE_VAULT_KEY\"")).await;
    let (_, created) = w
        .create_token(&w.deployer, "old", "2099-01-01T00:00:00Z")
        .await;
    let old = handle_of(&created);
    assert_eq!(
        w.row("tok-old")
            .await
            .get::<Option<String>, _>("secret_key_id")
            .as_deref(),
        Some("k1")
    );

    // k2 becomes first; k1 stays to open what it sealed.
    w.gate.terminate().await.unwrap();
    let config = w.gate.dir().join("tollgate.toml");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "key_env = \"TOLLGATE_VAULT_KEY\"",
        "keys = [{ id = \"k2\", env = \"TOLLGATE_VAULT_KEY_2\" }, { id = \"k1\", env = \"TOLLGATE_VAULT_KEY\" }]",
    );
    std::fs::write(&config, text).unwrap();
    let World {
        _db,
        pool,
        stand_in,
        gate,
        deployer,
        http,
        _policies,
    } = w;
    let gate = gate.restart().await.unwrap();
    let w = World {
        _db,
        pool,
        stand_in,
        gate,
        deployer,
        http,
        _policies,
    };
    let (status, auth, _) = w.read(&old, "/cloudflare/client/v4/zones").await;
    assert_eq!(status, 200);
    assert_eq!(
        auth.as_deref(),
        Some(format!("Bearer {}", created_secret("old")).as_str())
    );
    let (_, created) = w
        .create_token(&w.deployer, "new", "2099-01-01T00:00:00Z")
        .await;
    assert_eq!(
        w.row("tok-new")
            .await
            .get::<Option<String>, _>("secret_key_id")
            .as_deref(),
        Some("k2")
    );
    let (status, auth, _) = w
        .read(&handle_of(&created), "/cloudflare/client/v4/zones")
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        auth.as_deref(),
        Some(format!("Bearer {}", created_secret("new")).as_str())
    );
}

/// The token names the stand-in answers with a create that would leak the secret past the handle.
const LEAKY_ANSWERS: [&str; 9] = [
    "extra",
    "novalue",
    "emptyid",
    "idsecret",
    "piece",
    "decoy-empty",
    "decoy",
    "decoy-grouped",
    "invisible",
];

/// Answers that would carry the secret past the handle — a copy in another field, the secret under another
/// name, an empty token id, a refusal that carries one — are withheld in vault mode.
#[tokio::test]
async fn answers_that_would_leak_the_secret_are_withheld() {
    let w = world(|b| b).await;
    for name in LEAKY_ANSWERS {
        let (status, answer) = w
            .create_token(&w.deployer, name, "2099-01-01T00:00:00Z")
            .await;
        assert_eq!(status, 502, "{name}: {answer}");
        assert_eq!(answer["tollgate"]["code"], "upstream_error", "{name}");
        assert!(
            !answer.to_string().contains(&created_secret(name))
                && !answer.to_string().contains(REALISTIC_SECRET),
            "{name} leaked: {answer}"
        );
    }
    // A refusal keeps its status and error codes; nothing else of the provider's answer reaches the agent
    // (the token may exist, and tollgate has no secret to look for), and a message that could carry one is
    // replaced.
    for (name, status, code, message_kept) in [
        ("refused", 400, 1000, true),
        ("refused-array", 409, 1001, true),
        ("refused-message", 400, 1002, false),
        ("refused-pieces", 400, 1003, false),
    ] {
        let r = w
            .http
            .post(w.gate.url("/cloudflare/client/v4/user/tokens"))
            .bearer_auth(&w.deployer)
            .json(&json!({"name": name, "policies": [], "expires_on": "2099-01-01T00:00:00Z"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{name}");
        assert!(r.headers().get("x-token").is_none(), "{name}");
        let text = r.text().await.unwrap();
        assert!(
            !text.contains(REALISTIC_SECRET) && !text.contains(&created_secret(name)),
            "{name} leaked: {text}"
        );
        let answer: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(answer["success"], false, "{name}");
        assert_eq!(answer["errors"][0]["code"], code, "{name}: {answer}");
        assert_eq!(answer["result"], Value::Null, "{name}");
        let message = answer["errors"][0]["message"].as_str().unwrap();
        assert_eq!(
            message.starts_with("tollgate withheld"),
            !message_kept,
            "{name}: {message}"
        );
        // No piece of the secret gets through: the messages are judged together.
        let joined: String = answer["errors"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["message"].as_str())
            .collect();
        assert!(
            !joined.contains(&created_secret(name)[..10]),
            "{name}: {answer}"
        );
    }
    let log = w.gate.log();
    assert!(!log.contains(REALISTIC_SECRET));
    for name in LEAKY_ANSWERS {
        assert!(!log.contains(&created_secret(name)), "{name}");
    }
    // The tokens whose id is known exist at the provider: they stay recorded as live, with no usable handle,
    // so that containment deletes them.
    let rows: Vec<(String, String, Option<uuid::Uuid>)> = sqlx::query_as(
        "SELECT token_id, status, handle_agent_id FROM minted_tokens ORDER BY token_id",
    )
    .fetch_all(&w.pool)
    .await
    .unwrap();
    let ids: Vec<(&str, &str)> = rows
        .iter()
        .map(|(id, status, _)| (id.as_str(), status.as_str()))
        .collect();
    assert_eq!(
        ids,
        [
            ("tok-decoy", "active"),
            ("tok-decoy-empty", "active"),
            ("tok-decoy-grouped", "active"),
            ("tok-extra", "active"),
            ("tok-invisible", "active"),
            ("tok-novalue", "active"),
            ("tok-piece", "active")
        ]
    );
    let live_handles: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM agents WHERE minted_by IS NOT NULL AND status = 'active'",
    )
    .fetch_one(&w.pool)
    .await
    .unwrap();
    assert_eq!(live_handles, 0, "no withheld token has a working handle");
    w.stand_in.take();
    let (ok, out, err) = w
        .gate
        .cli(&[
            "incident",
            "contain",
            // Any case finds the agent, as the report and the rollback plan do.
            "Deployer",
            "--reason",
            "withheld tokens",
        ])
        .await
        .unwrap();
    assert!(ok, "{out}{err}");
    let mut deleted: Vec<String> = w
        .stand_in
        .take()
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .map(|r| r.path_and_query)
        .collect();
    deleted.sort();
    assert_eq!(
        deleted,
        [
            "/client/v4/user/tokens/tok-decoy",
            "/client/v4/user/tokens/tok-decoy-empty",
            "/client/v4/user/tokens/tok-decoy-grouped",
            "/client/v4/user/tokens/tok-extra",
            "/client/v4/user/tokens/tok-invisible",
            "/client/v4/user/tokens/tok-novalue",
            "/client/v4/user/tokens/tok-piece"
        ]
    );
}

/// A token minted through tollgate is rolled, rewritten or deleted only by its minter (or the minter's
/// handles): another agent allowed to manage tokens cannot take its secret over or break it. A handle is
/// judged and charged as its minter: it spends from the minter's budget, not one of its own.
#[tokio::test]
async fn tokens_belong_to_their_minter_and_handles_spend_its_budget() {
    let w = world(|b| b.tables("[vault]\npass_through_labels = [\"ci=true\"]")).await;
    let (status, created) = w
        .create_token(&w.deployer, "alpha", "2099-01-01T00:00:00Z")
        .await;
    assert_eq!(status, 200, "{created}");
    let handle = handle_of(&created);
    let intruder = w
        .gate
        .create_agent(
            "intruder",
            &["--scope", "tokens:write", "--label", "ci=true"],
        )
        .await
        .unwrap();
    w.stand_in.take();

    // Another agent (even one that would receive secrets in clear) may not roll, rewrite or delete it.
    let (status, answer) = w.roll(&intruder, "tok-alpha").await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(
        answer["tollgate"]["rule"], "tollgate.token_owner",
        "{answer}"
    );
    assert!(answer.to_string().contains("deployer"), "{answer}");
    assert_eq!(w.delete(&intruder, "tok-alpha").await, 403);
    let r = w
        .http
        .put(w.gate.url("/cloudflare/client/v4/user/tokens/tok-alpha"))
        .bearer_auth(&intruder)
        .json(&json!({"name": "mine now", "policies": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert!(
        w.stand_in.take().is_empty(),
        "nothing of the intruder's reached the provider"
    );
    let row = w.row("tok-alpha").await;
    assert_eq!(row.get::<String, _>("status"), "active");
    assert_eq!(row.get::<String, _>("custody"), "vault");
    assert_eq!(row.get::<String, _>("minted_by_name"), "deployer");
    assert_eq!(w.read(&handle, "/cloudflare/client/v4/zones").await.0, 200);
    let refusals: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM decisions WHERE agent_name = 'intruder' AND reasons::text LIKE '%tollgate.token_owner%'",
    )
    .fetch_one(&w.pool)
    .await
    .unwrap();
    assert_eq!(refusals, 3, "each refusal is recorded");
    let handle = {
        let (_, created) = w
            .create_token(&w.deployer, "beta", "2099-01-01T00:00:00Z")
            .await;
        handle_of(&created)
    };
    w.stand_in.take();

    // A method in another case is not `PUT` to the catalog but may be to a provider: refused before anything.
    let r = w
        .http
        .request(
            reqwest::Method::from_bytes(b"put").unwrap(),
            w.gate
                .url("/cloudflare/client/v4/user/tokens/tok-alpha/value"),
        )
        .bearer_auth(&intruder)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(w.stand_in.take().is_empty());
    // Another spelling of the same id (Cloudflare's ids are hex: case and hyphens do not make another token).
    let (status, answer) = w.roll(&intruder, "TOK-ALPHA").await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(answer["tollgate"]["rule"], "tollgate.token_owner");
    assert_eq!(w.delete(&intruder, "tokalpha").await, 403);
    // A token id that is not plain is refused before anything.
    assert_eq!(w.delete(&intruder, "tok.alpha").await, 400);
    assert!(w.stand_in.take().is_empty());

    // A token tollgate never saw minted (another system's, or tollgate's own credential) is never rolled
    // here: its new secret would go to the roller, and tollgate would adopt the token as the roller's.
    let (status, answer) = w.roll(&intruder, "tok-from-elsewhere").await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(answer["tollgate"]["rule"], "tollgate.token_unknown");
    assert!(w.stand_in.take().is_empty());
    let adopted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM minted_tokens WHERE token_id = 'tok-from-elsewhere'",
    )
    .fetch_one(&w.pool)
    .await
    .unwrap();
    assert_eq!(adopted, 0, "nothing adopted");

    // A delete answered 200 without success leaves the token recorded live; once really deleted, it is
    // still the minter's: nobody else may roll it (it may be live again at the provider for all tollgate
    // knows).
    let (status, created) = w
        .create_token(&w.deployer, "nodelete", "2099-01-01T00:00:00Z")
        .await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(w.delete(&w.deployer, "tok-nodelete").await, 200);
    assert_eq!(
        w.row("tok-nodelete").await.get::<String, _>("status"),
        "active"
    );
    assert_eq!(w.delete(&w.deployer, "tok-alpha").await, 200);
    assert_eq!(
        w.row("tok-alpha").await.get::<String, _>("status"),
        "deleted"
    );
    let (status, answer) = w.roll(&intruder, "tok-alpha").await;
    assert_eq!(
        status, 403,
        "a deleted token is still its minter's: {answer}"
    );

    // The minter spends $60 of its $100; its handle cannot spend another $60.
    let dns =
        |key: &str| {
            w.http
                .post(w.gate.url(
                    "/cloudflare/client/v4/zones/023e105f4ecef8ad9ca31a8372d0c353/dns_records",
                ))
                .bearer_auth(key.to_string())
                .json(&json!({"type": "A", "name": "www.example.com", "content": "198.51.100.4"}))
                .send()
        };
    let first = dns(&w.deployer).await.unwrap();
    assert_eq!(first.status().as_u16(), 200);
    let second = dns(&handle).await.unwrap();
    let status = second.status().as_u16();
    let body: Value = second.json().await.unwrap();
    assert_eq!(
        body["tollgate"]["code"], "budget_exceeded",
        "{status}: {body}"
    );
    let windows: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT subject FROM spend_windows ORDER BY 1")
            .fetch_all(&w.pool)
            .await
            .unwrap();
    assert_eq!(windows.len(), 1, "one budget window: {windows:?}");
}

/// `tollgate incident contain`: the agent and its handles are revoked on every replica, its live tokens
/// deleted at the provider with tollgate's own credential, its pending approvals denied, everything
/// recorded; a deletion the provider fails is retried, reported, and finished by a second run.
#[tokio::test]
async fn incident_contain_revokes_deletes_and_finishes_what_failed() {
    let w = world(|b| b).await;
    let failing = Arc::new(AtomicUsize::new(0));
    w.stand_in.answer(cloudflare_tokens(
        Arc::new(AtomicUsize::new(0)),
        failing.clone(),
    ));
    let (_, created) = w
        .create_token(&w.deployer, "alpha", "2099-01-01T00:00:00Z")
        .await;
    let alpha = handle_of(&created);
    let (_, created) = w
        .create_token(&w.deployer, "flaky", "2099-01-01T00:00:00Z")
        .await;
    let flaky = handle_of(&created);
    // An account token, deleted under its account's route.
    let r = w
        .http
        .post(w.gate.url("/cloudflare/client/v4/accounts/acc1/tokens"))
        .bearer_auth(&w.deployer)
        .json(&json!({"name": "acct", "policies": [], "expires_on": "2099-01-01T00:00:00Z"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // Another agent's token is not touched.
    let bystander = w
        .gate
        .create_agent("bystander", &["--scope", "tokens:write"])
        .await
        .unwrap();
    let (_, created) = w
        .create_token(&bystander, "spare", "2099-01-01T00:00:00Z")
        .await;
    let spare = handle_of(&created);
    // A request waiting for a reviewer.
    let (status, _, _) = w
        .read(&w.deployer, "/cloudflare/client/v4/zones/z/hold")
        .await;
    assert_eq!(status, 403);
    // A second replica, with every handle cached.
    let replica = Tollgate::builder(w._db.url(), &w.stand_in.url())
        .policy_dir(w._policies.path())
        .server("identity_refresh_ms = 100")
        .start()
        .await
        .unwrap();
    for key in [&w.deployer, &alpha, &flaky] {
        let r = w
            .http
            .get(replica.url("/cloudflare/client/v4/zones"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    w.stand_in.take();

    // The provider fails every attempt at deleting `tok-flaky` during the first run.
    failing.store(3, Ordering::SeqCst);
    let (ok, out, err) = w
        .gate
        .cli(&["incident", "contain", "deployer", "--reason", "leaked key"])
        .await
        .unwrap();
    assert!(!ok, "a failed deletion fails the run: {out}{err}");
    assert!(out.contains("token tok-alpha"), "{out}");
    assert!(out.contains("FAILED after 3 attempt(s)"), "{out}");
    assert!(out.contains("500"), "{out}");
    // The provider's messages quoted tollgate's credential, then another token's vaulted secret in groups:
    // withheld from the report, its record and the log.
    let spare_secret = created_secret("spare");
    let quoted = |text: &str| {
        let compact: String = text.chars().filter(char::is_ascii_alphanumeric).collect();
        text.contains(CLOUDFLARE_SECRET) || compact.contains(&spare_secret[..20])
    };
    assert!(
        out.contains("quotes a secret tollgate holds; withheld") && !quoted(&out),
        "{out}"
    );
    let recorded: String = sqlx::query_scalar(
        "SELECT string_agg(detail::text, ' ') FROM admin_actions WHERE action LIKE 'incident.contain%'",
    )
    .fetch_one(&w.pool)
    .await
    .unwrap();
    assert!(!quoted(&recorded) && recorded.contains("withheld"));
    assert!(!quoted(&w.gate.log()));
    assert!(out.contains("run the same command again"), "{out}");
    let deletes: Vec<(String, Option<String>)> = w
        .stand_in
        .take()
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .map(|r| {
            (
                r.path_and_query.clone(),
                r.header("authorization").map(str::to_string),
            )
        })
        .collect();
    let paths: Vec<&str> = deletes.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/client/v4/user/tokens/tok-alpha",
            "/client/v4/user/tokens/tok-flaky",
            "/client/v4/user/tokens/tok-flaky",
            "/client/v4/user/tokens/tok-flaky",
            "/client/v4/accounts/acc1/tokens/tok-acct",
        ]
    );
    for (_, auth) in &deletes {
        assert_eq!(
            auth.as_deref(),
            Some(format!("Bearer {CLOUDFLARE_SECRET}").as_str()),
            "deleted with tollgate's own credential"
        );
    }
    // Revoked on both replicas; the bystander's handle still works.
    for key in [&w.deployer, &alpha, &flaky] {
        assert_eq!(w.read_until(key, 401).await, 401);
        let mut status = 0;
        for _ in 0..40 {
            status = w
                .http
                .get(replica.url("/cloudflare/client/v4/zones"))
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16();
            if status == 401 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(status, 401, "revoked on the other replica too");
    }
    assert_eq!(w.read(&spare, "/cloudflare/client/v4/zones").await.0, 200);
    assert_eq!(
        w.row("tok-alpha").await.get::<String, _>("status"),
        "deleted"
    );
    assert_eq!(
        w.row("tok-acct").await.get::<String, _>("status"),
        "deleted"
    );
    assert_eq!(
        w.row("tok-flaky").await.get::<String, _>("status"),
        "active"
    );
    assert_eq!(
        w.row("tok-spare").await.get::<String, _>("status"),
        "active"
    );
    let approvals: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT status, note FROM approvals")
            .fetch_all(&w.pool)
            .await
            .unwrap();
    assert_eq!(approvals.len(), 1);
    assert_eq!(approvals[0].0, "denied");
    assert!(
        approvals[0]
            .1
            .as_deref()
            .unwrap_or_default()
            .contains("leaked key"),
        "{approvals:?}"
    );

    // The second run, through the admin API, finishes the job and says what was already done.
    let r = w
        .http
        .post(w.gate.admin_url("/api/incidents/deployer/contain"))
        .bearer_auth(tollgate_tests::tollgate::ADMIN_TOKEN)
        .json(&json!({"reason": "leaked key, second run"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let report: Value = r.json().await.unwrap();
    assert_eq!(report["complete"], true, "{report}");
    assert_eq!(report["revoked"], json!([]), "{report}");
    let tokens = report["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 1, "only what was left: {report}");
    assert_eq!(tokens[0]["token_id"], "tok-flaky");
    assert_eq!(tokens[0]["result"], "deleted");
    assert_eq!(
        w.row("tok-flaky").await.get::<String, _>("status"),
        "deleted"
    );
    // A third run has nothing left to do.
    let (ok, out, err) = w
        .gate
        .cli(&[
            "incident", "contain", "deployer", "--reason", "check", "--json",
        ])
        .await
        .unwrap();
    assert!(ok, "{out}{err}");
    let third: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(third["tokens"], json!([]));

    // Recorded: each run's start and result.
    let actions: Vec<(String, String)> = sqlx::query_as(
        "SELECT action, actor FROM admin_actions WHERE action LIKE 'incident.%' ORDER BY id",
    )
    .fetch_all(&w.pool)
    .await
    .unwrap();
    let names: Vec<&str> = actions.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        names,
        [
            "incident.contain",
            "incident.contain.result",
            "incident.contain",
            "incident.contain.result",
            "incident.contain",
            "incident.contain.result"
        ]
    );
    assert_eq!(
        actions[2].1, "bootstrap-admin",
        "the API run is the reviewer's"
    );
    assert!(
        actions[0].1.starts_with("local:"),
        "the CLI run is the local operator's"
    );
    // A viewer may not contain; an unknown agent is 404; a reason is required.
    let r = w
        .http
        .post(w.gate.admin_url("/api/incidents/nobody/contain"))
        .bearer_auth(tollgate_tests::tollgate::ADMIN_TOKEN)
        .json(&json!({"reason": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let r = w
        .http
        .post(w.gate.admin_url("/api/incidents/deployer/contain"))
        .bearer_auth(tollgate_tests::tollgate::ADMIN_TOKEN)
        .json(&json!({"reason": "  "}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
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
        metrics.contains(r#"tollgate_containments_total{result="complete"} 1"#),
        "{metrics}"
    );
    let mut live = String::new();
    for _ in 0..30 {
        let metrics = w
            .http
            .get(w.gate.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        live = metrics
            .lines()
            .filter(|l| l.starts_with("tollgate_minted_tokens_live{"))
            .collect::<Vec<_>>()
            .join("\n");
        if live.contains(r#"tollgate_minted_tokens_live{custody="vault",provider="cloudflare"} 1"#)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        live.contains(r#"tollgate_minted_tokens_live{custody="vault",provider="cloudflare"} 1"#),
        "only the bystander's token is live: {live}"
    );
    for name in ["alpha", "flaky", "spare"] {
        assert!(!w.gate.log().contains(&created_secret(name)), "{name}");
        assert!(!out.contains(&created_secret(name)), "{name}");
    }
}

/// A token whose create was still in flight when its agent was contained does not outlive it: tollgate
/// deletes it at once and withholds the answer. A delete the provider answers 200 without success is not
/// taken for a deletion, by containment or otherwise.
#[tokio::test]
async fn tokens_minted_during_containment_and_unconfirmed_deletes_do_not_escape() {
    let w = world(|b| b).await;
    let (status, _) = w
        .create_token(&w.deployer, "nodelete", "2099-01-01T00:00:00Z")
        .await;
    assert_eq!(status, 200);
    // The stand-in answers this create after 1.5 s; the containment runs meanwhile.
    let slow = {
        let http = w.http.clone();
        let url = w.gate.url("/cloudflare/client/v4/user/tokens");
        let key = w.deployer.clone();
        tokio::spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(key)
                .json(
                    &json!({"name": "slow", "policies": [], "expires_on": "2099-01-01T00:00:00Z"}),
                )
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = w
        .http
        .post(w.gate.admin_url("/api/incidents/deployer/contain"))
        .bearer_auth(tollgate_tests::tollgate::ADMIN_TOKEN)
        .json(&json!({"reason": "runaway"}))
        .send()
        .await
        .unwrap();
    let report: Value = r.json().await.unwrap();
    assert_eq!(report["complete"], false, "{report}");
    let tokens = report["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 1, "{report}");
    assert_eq!(tokens[0]["token_id"], "tok-nodelete");
    assert_eq!(tokens[0]["result"], "failed");
    assert!(
        tokens[0]["error"]
            .as_str()
            .unwrap()
            .contains("without \"success\": true"),
        "{report}"
    );
    assert_eq!(
        w.row("tok-nodelete").await.get::<String, _>("status"),
        "active"
    );

    let (status, text) = slow.await.unwrap();
    assert_eq!(status, 502, "{text}");
    assert!(
        text.contains("revoked while this token was minted"),
        "{text}"
    );
    assert!(!text.contains(&created_secret("slow")), "{text}");
    assert_eq!(
        w.row("tok-slow").await.get::<String, _>("status"),
        "deleted"
    );
    let deletes: Vec<(String, Option<String>)> = w
        .stand_in
        .take()
        .into_iter()
        .filter(|r| r.method == "DELETE" && r.path_and_query.contains("tok-slow"))
        .map(|r| {
            (
                r.path_and_query.clone(),
                r.header("authorization").map(str::to_string),
            )
        })
        .collect();
    assert_eq!(
        deletes,
        [(
            "/client/v4/user/tokens/tok-slow".to_string(),
            Some(format!("Bearer {CLOUDFLARE_SECRET}"))
        )]
    );
    let late: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM admin_actions WHERE action = 'incident.contain.late_token' AND target = 'deployer'",
    )
    .fetch_one(&w.pool)
    .await
    .unwrap();
    assert_eq!(late, 1);
    let live_handles: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM agents WHERE minted_by IS NOT NULL AND status = 'active'
           AND minted_by IN (SELECT id FROM agents WHERE name = 'deployer')",
    )
    .fetch_one(&w.pool)
    .await
    .unwrap();
    // The late token's handle row was written with the token; its minter is revoked, so it never works.
    assert!(live_handles <= 1);
    let (status, _, _) = w.read(&w.deployer, "/cloudflare/client/v4/zones").await;
    assert_eq!(status, 401);
}

/// A provider that echoes the credential a handle's request went out with never hands the minted secret to
/// the agent: an echo in a header withholds the answer, one in the body cuts it off before the secret.
#[tokio::test]
async fn a_provider_echoing_the_minted_credential_does_not_reveal_it() {
    // Many answers cut off for one agent: more than the default allows before it is refused.
    let w = world(|b| b.tables("[vault]\nscreen_trips = 1000")).await;
    let (_, created) = w
        .create_token(&w.deployer, "alpha", "2099-01-01T00:00:00Z")
        .await;
    let handle = handle_of(&created);
    let secret = created_secret("alpha");

    let r = w
        .http
        .get(w.gate.url("/cloudflare/client/v4/zones/z/echo-header"))
        .bearer_auth(&handle)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 502);
    let headers = format!("{:?}", r.headers());
    let text = r.text().await.unwrap();
    assert!(
        !headers.contains(&secret) && !text.contains(&secret),
        "{headers} {text}"
    );

    let r = w
        .http
        .get(w.gate.url("/cloudflare/client/v4/zones/z/echo"))
        .bearer_auth(&handle)
        .send()
        .await
        .unwrap();
    // Cut off before the secret: the body never arrives whole.
    if let Ok(bytes) = r.bytes().await {
        panic!(
            "the answer arrived whole ({} bytes, secret inside: {})",
            bytes.len(),
            String::from_utf8_lossy(&bytes).contains(&secret)
        );
    }
    // The stand-in was asked without compression, so the screen reads plain bytes.
    let asked: Vec<Option<String>> = w
        .stand_in
        .take()
        .iter()
        .filter(|r| r.path_and_query.contains("echo"))
        .map(|r| r.header("accept-encoding").map(str::to_string))
        .collect();
    assert!(!asked.is_empty());
    assert!(
        asked.iter().all(|a| a.as_deref() == Some("identity")),
        "{asked:?}"
    );
    // Escaped character by character, or only its first 14 characters: cut off all the same. Compressed
    // (never asked for): withheld, as it cannot be screened.
    for path in ["echo-escaped", "echo-prefix"] {
        // A short answer is cut off before even its head leaves.
        let Ok(r) = w
            .http
            .get(w.gate.url(&format!("/cloudflare/client/v4/zones/z/{path}")))
            .bearer_auth(&handle)
            .send()
            .await
        else {
            continue;
        };
        if let Ok(bytes) = r.bytes().await {
            panic!(
                "{path}: the answer arrived whole: {}",
                String::from_utf8_lossy(&bytes).len()
            );
        }
    }
    let r = w
        .http
        .get(w.gate.url("/cloudflare/client/v4/zones/z/echo-gzip"))
        .bearer_auth(&handle)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 502);
    assert_eq!(r.headers()["tollgate-refusal"], "upstream_error");
    // On the status line (an HTTP/1 reason phrase): the agent gets the status's own phrase.
    let raw = raw_http(
        &w.gate.url(""),
        &format!(
            "GET /cloudflare/client/v4/zones/z/echo-reason HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {handle}\r\nconnection: close\r\n\r\n"
        ),
    )
    .await;
    assert!(
        raw.starts_with("HTTP/1.1 200 OK\r\n"),
        "{}",
        raw.lines().next().unwrap_or_default()
    );
    assert!(!raw.contains(&secret[..12]));
    // Nor on the status line of a token create's answer (the body's secret is replaced by a handle).
    let body = r#"{"name":"reason","policies":[]}"#;
    let raw = raw_http(
        &w.gate.url(""),
        &format!(
            "POST /cloudflare/client/v4/user/tokens HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            w.deployer,
            body.len()
        ),
    )
    .await;
    assert!(
        raw.starts_with("HTTP/1.1 200 OK\r\n"),
        "{}",
        raw.lines().next().unwrap_or_default()
    );
    assert!(raw.contains("tg_") && !raw.contains(&created_secret("reason")));
    // The minter's own requests go out with tollgate's credential, which an echo must not bring back either:
    // in the body the answer is cut off, in a header (even split across headers) withheld.
    let (status, _, text) = w
        .read(&w.deployer, "/cloudflare/client/v4/zones/z/echo")
        .await;
    assert_eq!(status, 200);
    assert!(
        !text.contains(&CLOUDFLARE_SECRET[..12]),
        "tollgate's credential came back: {} bytes",
        text.len()
    );
    for path in ["echo-header", "echo-split-headers"] {
        let (status, _, text) = w
            .read(
                &w.deployer,
                &format!("/cloudflare/client/v4/zones/z/{path}"),
            )
            .await;
        assert_eq!(status, 502, "{path}");
        assert!(!text.contains(&CLOUDFLARE_SECRET[..12]));
    }
    // An ordinary answer is untouched by the screen, even one ending in the start of an escape.
    let (status, _, text) = w
        .read(&w.deployer, "/cloudflare/client/v4/zones/z/ends-mid-escape")
        .await;
    assert_eq!(
        (status, text.as_str()),
        (200, r#"{"success":true,"result":[]} \"#)
    );
    let (status, _, text) = w.read(&w.deployer, "/cloudflare/client/v4/zones").await;
    assert_eq!(
        (status, text.contains("\"success\":true")),
        (200, true),
        "{text}"
    );
    assert!(!w.gate.log().contains(&secret));
    assert!(!w.gate.log().contains(CLOUDFLARE_SECRET));
}

/// A token rewritten through tollgate by its minter: the row follows (name, expiry), and the handle's
/// expiry with it, so extending a token keeps its handle working; an update answer that carries a secret
/// is withheld.
/// A roll's new handle keeps the token's recorded expiry, whatever the roll's body says and whoever rolls
/// it (attack round 17: a roll with the minter's key, which has no expiry, made a handle that never expired);
/// and a user token is changed only through the user route, an account's only through its account's.
#[tokio::test]
async fn a_rolled_token_keeps_its_expiry_and_its_owners_route() {
    let w = world(|b| b).await;
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(3))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (status, created) = w.create_token(&w.deployer, "brief", &soon).await;
    assert_eq!(status, 200, "{created}");
    let roll = |path: &str| {
        w.http
            .put(w.gate.url(path))
            .bearer_auth(&w.deployer)
            .json(&json!({"expires_on": "2099-01-01T00:00:00Z"}))
            .send()
    };

    // Through an account's route, a user token is refused before the provider hears of it.
    w.stand_in.take();
    let r = roll("/cloudflare/client/v4/accounts/acc1/tokens/tok-brief/value")
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(
        r.headers()
            .get("tollgate-refusal")
            .and_then(|v| v.to_str().ok()),
        Some("policy_denied")
    );
    assert!(r.text().await.unwrap().contains("user token"));
    assert!(w.stand_in.take().is_empty(), "nothing forwarded");

    // Rolled with the minter's own key (no expiry) and a far expiry in the body: the new handle expires
    // with the token all the same.
    let r = roll("/cloudflare/client/v4/user/tokens/tok-brief/value")
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let rolled: Value = r.json().await.unwrap();
    let handle = rolled["result"].as_str().expect("result").to_string();
    let (token_expiry, handle_expiry): (Option<chrono::DateTime<chrono::Utc>>, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as(
            "SELECT t.expires_on, a.expires_at FROM minted_tokens t JOIN agents a ON a.id = t.handle_agent_id
             WHERE t.provider = 'cloudflare' AND t.token_id = 'tok-brief'",
        )
        .fetch_one(&w.pool)
        .await
        .unwrap();
    assert!(token_expiry.is_some());
    assert_eq!(handle_expiry, token_expiry);
    assert_eq!(w.read(&handle, "/cloudflare/client/v4/zones").await.0, 200);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(w.read(&handle, "/cloudflare/client/v4/zones").await.0, 401);

    // Two rolls of one token at once: the second is refused while the first is in flight (attack round 19:
    // answered out of order, they would leave the handle with the secret the provider replaced).
    let (status, _) = w
        .create_token(&w.deployer, "slowroll", "2099-01-01T00:00:00Z")
        .await;
    assert_eq!(status, 200);
    let first = {
        let http = w.http.clone();
        let url = w
            .gate
            .url("/cloudflare/client/v4/user/tokens/tok-slowroll/value");
        let key = w.deployer.clone();
        tokio::spawn(async move {
            let r = http
                .put(url)
                .bearer_auth(key)
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, second) = w.roll(&w.deployer, "tok-slowroll").await;
    assert_eq!(status, 403, "{second}");
    assert!(
        second.to_string().contains("tollgate.token_rolling"),
        "{second}"
    );
    assert_eq!(first.await.unwrap(), 200);
    let (status, third) = w.roll(&w.deployer, "tok-slowroll").await;
    assert_eq!(status, 200, "once the first is answered: {third}");

    // An account's token is not changed through the user route, nor through another account's.
    let r = w
        .http
        .post(w.gate.url("/cloudflare/client/v4/accounts/acc1/tokens"))
        .bearer_auth(&w.deployer)
        .json(&json!({"name": "acct", "policies": [], "expires_on": "2099-01-01T00:00:00Z"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let id = r.json::<Value>().await.unwrap()["result"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    for path in [
        format!("/cloudflare/client/v4/user/tokens/{id}"),
        format!("/cloudflare/client/v4/accounts/acc2/tokens/{id}"),
    ] {
        w.stand_in.take();
        let r = w
            .http
            .delete(w.gate.url(&path))
            .bearer_auth(&w.deployer)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 403, "{path}");
        assert!(
            r.text().await.unwrap().contains("account acc1's token"),
            "{path}"
        );
        assert!(w.stand_in.take().is_empty(), "{path}: nothing forwarded");
    }
    let r = w
        .http
        .delete(
            w.gate
                .url(&format!("/cloudflare/client/v4/accounts/ACC1/tokens/{id}")),
        )
        .bearer_auth(&w.deployer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "the owner's route, in any case");
}

#[tokio::test]
async fn an_update_moves_the_tokens_expiry_and_its_handles() {
    let w = world(|b| b).await;
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(2))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (status, created) = w.create_token(&w.deployer, "brief", &soon).await;
    assert_eq!(status, 200, "{created}");
    let handle = handle_of(&created);
    let update = |name: &str| {
        w.http
            .put(w.gate.url("/cloudflare/client/v4/user/tokens/tok-brief"))
            .bearer_auth(&handle)
            .json(&json!({"name": name, "policies": [], "expires_on": "2099-01-01T00:00:00Z"}))
            .send()
    };
    let r = update("extended").await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let row = w.row("tok-brief").await;
    assert_eq!(
        row.get::<Option<String>, _>("name").as_deref(),
        Some("extended")
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        w.read(&handle, "/cloudflare/client/v4/zones").await.0,
        200,
        "the handle follows the token's new expiry"
    );
    let r = update("leaky").await.unwrap();
    assert_eq!(r.status().as_u16(), 502);
    assert!(!r.text().await.unwrap().contains("cf-update-secret-77"));
}

/// A read of a token tollgate holds the secret of is screened for that secret too, with the agent's key or
/// with a handle (attack round 10).
#[tokio::test]
async fn a_token_read_never_hands_out_the_tokens_secret() {
    // Many answers cut off for one agent: more than the default allows before it is refused.
    let w = world(|b| b.tables("[vault]\nscreen_trips = 1000")).await;
    let (status, created) = w
        .create_token(&w.deployer, "readback", "2099-01-01T00:00:00Z")
        .await;
    assert_eq!(status, 200, "{created}");
    let handle = handle_of(&created);
    // Also on a route the catalog does not know as a call about the token.
    for (key, path) in [
        (&w.deployer, "tok-readback"),
        (&handle, "tok-readback"),
        (&w.deployer, "tok-readback/value"),
    ] {
        // The answer is cut off before the secret: a broken answer, whether or not its head got out.
        let sent = w
            .http
            .get(
                w.gate
                    .url(&format!("/cloudflare/client/v4/user/tokens/{path}")),
            )
            .bearer_auth(key)
            .send()
            .await;
        let text = match sent {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => e.to_string(),
        };
        assert!(!text.contains(&created_secret("readback")), "{text}");
        assert!(!text.contains(&created_secret("readback")[..14]), "{text}");
        assert!(
            w.stand_in
                .take()
                .iter()
                .any(|r| r.path_and_query.ends_with(path))
        );
    }
    // Another token's read passes whole.
    let (status, created) = w
        .create_token(&w.deployer, "other", "2099-01-01T00:00:00Z")
        .await;
    assert_eq!(status, 200, "{created}");
    let (status, _, text) = w
        .read(&w.deployer, "/cloudflare/client/v4/user/tokens/tok-other")
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["success"],
        true
    );
}

/// A request whose body was still arriving when its agent was contained is not forwarded: the key is
/// asked again before anything goes upstream (attack round 10).
#[tokio::test]
async fn a_request_started_before_containment_is_not_forwarded_after_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let w = world(|b| b).await;
    let body = r#"{"type":"A","name":"late.example.com","content":"192.0.2.1"}"#;
    let addr = w
        .gate
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /cloudflare/client/v4/zones/023e105f4ecef8ad9ca31a8372d0c353/dns_records HTTP/1.1\r\n\
         host: {addr}\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        w.deployer,
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body.as_bytes()[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, out, err) = w
        .gate
        .cli(&["incident", "contain", "deployer", "--reason", "in flight"])
        .await
        .unwrap();
    assert!(ok, "{out}{err}");
    // Every cache has dropped the agent by now.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    w.stand_in.take();
    stream.write_all(&body.as_bytes()[10..]).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        answer.contains("revoked or expired before the request was forwarded"),
        "{answer}"
    );
    assert!(
        w.stand_in
            .take()
            .iter()
            .all(|r| !r.path_and_query.contains("dns_records")),
        "nothing reached the provider"
    );
    // Recorded: allowed when judged, not forwarded, and why.
    let mut outcome = None;
    for _ in 0..50 {
        outcome = sqlx::query_scalar::<_, Option<String>>(
            "SELECT o.error FROM decisions d JOIN decision_outcomes o ON o.decision_id = d.id
              WHERE d.path LIKE '%/dns_records'",
        )
        .fetch_optional(&w.pool)
        .await
        .unwrap();
        if outcome.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        outcome.flatten().as_deref(),
        Some("not_forwarded; agent_revoked")
    );
}

/// A handle never outlives its minter's key: not when its token's expiry is moved past the minter's by an
/// update, nor while the handle sits in a cache (attack round 10).
#[tokio::test]
async fn a_handle_stops_with_its_minters_expiry_even_after_an_update() {
    let w = world(|b| b).await;
    let until = (chrono::Utc::now() + chrono::Duration::seconds(4))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let brief = w
        .gate
        .create_agent("brief", &["--scope", "tokens:write", "--expires", &until])
        .await
        .unwrap();
    let (status, created) = w
        .create_token(&brief, "outlive", "2099-01-01T00:00:00Z")
        .await;
    assert_eq!(status, 200, "{created}");
    let handle = handle_of(&created);
    let r = w
        .http
        .put(w.gate.url("/cloudflare/client/v4/user/tokens/tok-outlive"))
        .bearer_auth(&handle)
        .json(&json!({"name": "outlive", "policies": [], "expires_on": "2099-06-01T00:00:00Z"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (handle_expiry, minter_expiry): (
        Option<chrono::DateTime<chrono::Utc>>,
        Option<chrono::DateTime<chrono::Utc>>,
    ) = sqlx::query_as(
        "SELECT h.expires_at, m.expires_at FROM agents h JOIN agents m ON m.id = h.minted_by
              WHERE h.name = 'brief~tok-outlive'",
    )
    .fetch_one(&w.pool)
    .await
    .unwrap();
    assert!(minter_expiry.is_some());
    assert_eq!(
        handle_expiry, minter_expiry,
        "the update kept the minter's bound"
    );
    // Used now (and so cached), then after the minter's expiry: refused though nothing changed in the table.
    assert_eq!(w.read(&handle, "/cloudflare/client/v4/zones").await.0, 200);
    let wait = (minter_expiry.unwrap() - chrono::Utc::now())
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(300)).await;
    assert_eq!(w.read(&brief, "/cloudflare/client/v4/zones").await.0, 401);
    assert_eq!(w.read(&handle, "/cloudflare/client/v4/zones").await.0, 401);
}

/// Sends `request` as written to the listener at `url` (`http://127.0.0.1:PORT`) and reads the whole answer as
/// text: what a client sees on the wire, status line included.
/// A create's answer in vault mode reaches the agent as Cloudflare's token object alone: a real secret in a
/// header beside a decoy `value` stays behind (only `cf-ray` passes), fields Cloudflare does not send are
/// dropped, and an answer naming the token by another token's secret is withheld and not recorded.
#[tokio::test]
async fn a_create_answer_carries_the_token_object_and_nothing_else() {
    let w = world(|b| b).await;
    let (status, alpha) = w
        .create_token(&w.deployer, "alpha", "2099-01-01T00:00:00Z")
        .await;
    assert_eq!(status, 200, "{alpha}");

    let r = w
        .http
        .post(w.gate.url("/cloudflare/client/v4/user/tokens"))
        .bearer_auth(&w.deployer)
        .json(
            &json!({"name": "decoy-header", "policies": [], "expires_on": "2099-01-01T00:00:00Z"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let headers: Vec<(String, String)> = r
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("?").to_string()))
        .collect();
    let text = r.text().await.unwrap();
    let real = created_secret("decoy-header");
    assert!(
        !text.contains(&real) && !format!("{headers:?}").contains(&real[..12]),
        "{headers:?} {text}"
    );
    assert!(
        headers
            .iter()
            .any(|(n, v)| n == "cf-ray" && v == "8c2a1b3d4e5f6789-SJC"),
        "{headers:?}"
    );
    assert!(
        !headers
            .iter()
            .any(|(n, _)| n == "x-request-token" || n == "set-cookie"),
        "{headers:?}"
    );
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert!(
        answer["result"]["value"]
            .as_str()
            .unwrap()
            .starts_with("tg_")
    );
    assert_eq!(answer["result"]["id"], "tok-decoy-header");
    assert!(answer["result"].get("extra_note").is_none(), "{answer}");
    assert_eq!(answer["messages"], json!([]));

    // The id is alpha's secret: withheld, and that secret is nowhere in the records or the log.
    let (status, answer) = w
        .create_token(&w.deployer, "id-is-held", "2099-01-01T00:00:00Z")
        .await;
    assert_eq!(status, 502, "{answer}");
    let alpha_secret = created_secret("alpha");
    assert!(!answer.to_string().contains(&alpha_secret));
    assert!(!w.gate.log().contains(&alpha_secret));
    assert!(!w.dump(w._db.url()).await.contains(&alpha_secret));
    let (_, agents, _) = w.gate.cli(&["agents", "list"]).await.unwrap();
    assert!(!agents.contains(&alpha_secret));

    // The name is alpha's secret, the id clean: withheld, and the token recorded without its secret under a
    // stand-in name, so that `incident contain` deletes it (attack round 20: it was left live, unrecorded).
    let (status, answer) = w
        .create_token(&w.deployer, "name-is-held", "2099-01-01T00:00:00Z")
        .await;
    assert_eq!(status, 502, "{answer}");
    let row = w.row("tok-name-is-held").await;
    assert_eq!(row.get::<String, _>("status"), "active");
    assert!(
        row.get::<Option<String>, _>("name")
            .unwrap()
            .starts_with("(withheld")
    );
    assert!(row.get::<Option<Vec<u8>>, _>("secret_ciphertext").is_none());
    assert!(
        row.get::<Option<uuid::Uuid>, _>("handle_agent_id")
            .is_none()
    );
    assert!(!w.dump(w._db.url()).await.contains(&alpha_secret));
    assert!(!w.gate.log().contains(&alpha_secret));
}

/// Reads `url` with `key`: the answer's text if it arrived whole, `None` if it was cut off.
async fn whole_answer(http: &reqwest::Client, url: &str, key: &str) -> Option<(u16, String)> {
    let r = http.get(url).bearer_auth(key).send().await.ok()?;
    let status = r.status().as_u16();
    let text = r.text().await.ok()?;
    Some((status, text))
}

/// A provider can write a minted secret where anyone reads it back — a TXT record's content — and the
/// reader may hold its own key, another agent's, or another token's handle: every answer is screened for
/// every secret the vault holds, on this replica at once and on the others within the identity refresh.
#[tokio::test]
async fn a_held_secret_is_cut_from_any_answer_whoever_asks() {
    let w = world(|b| b).await;
    let reader = w
        .gate
        .create_agent("reader", &["--team", "ops", "--scope", "tokens:write"])
        .await
        .unwrap();
    // A second replica, running before the token exists.
    let replica = Tollgate::builder(w._db.url(), &w.stand_in.url())
        .policy_dir(w._policies.path())
        .server("identity_refresh_ms = 100")
        .start()
        .await
        .unwrap();
    let record = |gate: &Tollgate, name: &str| {
        gate.url(&format!(
            "/cloudflare/client/v4/zones/z/dns_records/rec-{name}"
        ))
    };
    // Before: a record holding what is not (yet) a held secret reads whole, on both replicas.
    for gate in [&w.gate, &replica] {
        let (status, text) = whole_answer(&w.http, &record(gate, "held-kept"), &reader)
            .await
            .expect("nothing held yet: the answer is whole");
        assert_eq!(status, 200);
        assert!(text.contains(&created_secret("kept")), "{text}");
    }
    let (status, created) = w
        .create_token(&w.deployer, "kept", "2099-01-01T00:00:00Z")
        .await;
    assert_eq!(status, 200, "{created}");
    let handle = handle_of(&created);
    let (_, other) = w
        .create_token(&reader, "others", "2099-01-01T00:00:00Z")
        .await;
    let other_handle = handle_of(&other);

    // On the replica that minted it, at once: the minter's own key, another agent's, the token's own
    // handle and another token's handle all get a broken answer.
    for (who, key) in [
        ("minter", &w.deployer),
        ("another agent", &reader),
        ("its handle", &handle),
        ("another token's handle", &other_handle),
    ] {
        let got = whole_answer(&w.http, &record(&w.gate, "held-kept"), key).await;
        assert!(
            got.as_ref()
                .is_none_or(|(_, t)| !t.contains(&created_secret("kept")[..12])),
            "{who}: {got:?}"
        );
        assert!(
            got.is_none(),
            "{who}: the answer should be cut off: {got:?}"
        );
    }
    // On the other replica within the identity refresh (100 ms here; a second by default).
    let started = std::time::Instant::now();
    let mut cut = false;
    while started.elapsed() < Duration::from_secs(5) {
        if whole_answer(&w.http, &record(&replica, "held-kept"), &reader)
            .await
            .is_none()
        {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        cut,
        "the other replica still hands the secret out after 5 s"
    );
    // A record of a string no one holds still reads whole (the screen cuts secrets, not everything).
    for gate in [&w.gate, &replica] {
        let (status, text) = whole_answer(&w.http, &record(gate, "loose"), &reader)
            .await
            .expect("a record of an unheld string is whole");
        assert_eq!(status, 200);
        assert!(text.contains(&secret_from("loose")), "{text}");
    }
    // The rolled-away secret is dead at the provider; the new one is held from the roll on.
    let (status, rolled) = w.roll(&handle, "tok-kept").await;
    assert_eq!(status, 200, "{rolled}");
    let got = whole_answer(&w.http, &record(&w.gate, "roll-tok-kept-0"), &reader).await;
    assert!(got.is_none(), "the rolled secret: {got:?}");
    assert!(!w.gate.log().contains(&created_secret("kept")));
    assert!(!replica.log().contains(&created_secret("kept")));
}

async fn raw_http(url: &str, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// An answer cut off for a secret tells the agent that what it wrote held a piece of one: an agent whose
/// answers keep tripping the screen (guessing a secret a character at a time where a provider echoes its
/// text) is refused — its handles too — after `[vault] screen_trips` of them within the hour; other
/// agents are not (attack round 15).
#[tokio::test]
async fn an_agent_whose_answers_keep_carrying_a_secret_is_refused() {
    let w = world(|b| b).await;
    let (_, created) = w
        .create_token(&w.deployer, "alpha", "2099-01-01T00:00:00Z")
        .await;
    let alpha = handle_of(&created);
    let bystander = w
        .gate
        .create_agent("bystander", &["--scope", "tokens:write"])
        .await
        .unwrap();
    // The provider writes the credential the request went out with into the answer.
    w.stand_in.answer(|r: &RecordedRequest| {
        let seen = r
            .header("authorization")
            .unwrap_or_default()
            .trim_start_matches("Bearer ")
            .to_string();
        if r.path_and_query.contains("echo") {
            return Reply::json(
                200,
                json!({"success": true, "errors": [], "messages": [],
                       "result": {"content": format!("you sent {seen}")}}),
            );
        }
        let harmless = Reply::json(
            200,
            json!({"success": true, "errors": [], "messages": [], "result": []}),
        );
        if r.path_and_query.contains("slow") {
            return harmless.after(Duration::from_millis(1500));
        }
        harmless
    });
    let echo = "/cloudflare/client/v4/zones/z/dns_records/echo";
    // An answer cut off before its first byte: the agent sees the exchange break, never the secret.
    let cut = |key: String| {
        let http = w.http.clone();
        let url = w.gate.url(echo);
        async move {
            let sent = http.get(url).bearer_auth(key).send().await;
            match sent {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            }
        }
    };
    // Two answers cut off with the agent's key, one with its handle: three for the agent.
    for key in [&w.deployer, &alpha, &w.deployer] {
        w.stand_in.take();
        let text = cut(key.to_string()).await;
        let seen = w.stand_in.take();
        let secret = seen[0]
            .header("authorization")
            .unwrap()
            .trim_start_matches("Bearer ");
        assert!(!text.contains(&secret[..12]), "{text}");
    }
    // Then its requests are refused before the policy is asked, with the key or any handle, and recorded.
    for key in [&w.deployer, &alpha] {
        let (status, seen, text) = w.read(key, "/cloudflare/client/v4/zones").await;
        assert_eq!(status, 403, "{text}");
        assert!(seen.is_none(), "not forwarded");
        assert!(text.contains("tollgate.screen_tripped"), "{text}");
    }
    let refused: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM decisions WHERE code = 'policy_denied' AND reasons::text LIKE '%tollgate.screen_tripped%'",
    )
    .fetch_one(&w.pool)
    .await
    .unwrap_or(-1);
    let recorded: Vec<(String, Option<String>, String)> =
        sqlx::query_as("SELECT outcome, code, reasons::text FROM decisions ORDER BY at")
            .fetch_all(&w.pool)
            .await
            .unwrap();
    assert_eq!(refused, 2, "{recorded:?}");
    // Another agent is not refused, even after answers to it were cut off too.
    for _ in 0..2 {
        cut(bystander.clone()).await;
    }
    assert_eq!(
        w.read(&bystander, "/cloudflare/client/v4/zones").await.0,
        200
    );
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
        metrics.contains("tollgate_screen_trips_total 5"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("screen_trips"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // A request carrying a piece of a held secret (a probe's guess) is refused before the policy or the
    // provider sees it, counts as a trip, and is recorded without the piece (attack rounds 20 and 21): in
    // the body, the query, or split between path and query.
    let prober = w.gate.create_agent("prober", &[]).await.unwrap();
    let piece = created_secret("alpha")[4..20].to_string();
    let recorded = |r: reqwest::Response| {
        let pool = w.pool.clone();
        async move {
            let status = r.status().as_u16();
            let text_of = r
                .headers()
                .get("tollgate-refusal")
                .map(|v| v.to_str().unwrap_or("").to_string());
            let decision = r
                .headers()
                .get("tollgate-decision")
                .and_then(|v| v.to_str().ok())
                .expect("decision id")
                .to_string();
            let body = r.text().await.unwrap_or_default();
            let (input, path, query): (Option<String>, String, Option<String>) = sqlx::query_as(
                "SELECT input::text, path, query FROM decisions WHERE id = $1::uuid",
            )
            .bind(&decision)
            .fetch_one(&pool)
            .await
            .unwrap();
            (
                status,
                text_of,
                body,
                format!(
                    "{} {path} {}",
                    input.unwrap_or_default(),
                    query.unwrap_or_default()
                ),
            )
        }
    };
    w.stand_in.take();
    let sent = [
        w.http
            .post(w.gate.url("/cloudflare/client/v4/zones/z/dns_records"))
            .json(&json!({"type": "TXT", "name": "probe.example.com", "content": piece})),
        w.http.get(w.gate.url(&format!(
            "/cloudflare/client/v4/zones/z/dns_records?comment={piece}"
        ))),
        w.http.get(w.gate.url(&format!(
            "/cloudflare/client/v4/zones/z/dns_records/{}?{}",
            &piece[..8],
            &piece[8..]
        ))),
    ];
    for (i, request) in sent.into_iter().enumerate() {
        let r = request.bearer_auth(&prober).send().await.unwrap();
        let (status, refusal, body, record) = recorded(r).await;
        assert_eq!(status, 403, "{i}: {body}");
        assert_eq!(refusal.as_deref(), Some("policy_denied"), "{i}");
        if i < 2 {
            assert!(body.contains("tollgate.carries_held_secret"), "{i}: {body}");
        }
        assert!(!record.contains(&piece), "{i}: {record}");
        assert!(
            !record.contains(&piece[..8]) || !record.contains(&piece[8..]),
            "{i}: {record}"
        );
    }
    // In a file part of a multipart upload, which only the `metadata` part of is parsed (attack round 22).
    let uploader = w.gate.create_agent("uploader", &[]).await.unwrap();
    let multipart = format!(
        "--b0\r\nContent-Disposition: form-data; name=\"metadata\"\r\nContent-Type: application/json\r\n\r\n\
         {{\"main_module\":\"worker.js\"}}\r\n--b0\r\nContent-Disposition: form-data; name=\"worker.js\"; \
         filename=\"worker.js\"\r\nContent-Type: application/javascript+module\r\n\r\n\
         export default {{ fetch() {{ return new Response(\"{piece}\") }} }}\r\n--b0--\r\n"
    );
    let r = w
        .http
        .put(
            w.gate
                .url("/cloudflare/client/v4/accounts/acc1/workers/scripts/probe"),
        )
        .bearer_auth(&uploader)
        .header("content-type", "multipart/form-data; boundary=b0")
        .body(multipart)
        .send()
        .await
        .unwrap();
    let (status, _, body, record) = recorded(r).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("tollgate.carries_held_secret"), "{body}");
    assert!(!record.contains(&piece), "{record}");
    // An escape too long to read is no piece of a secret: not refused as one (nor counted).
    let overlong = format!("%26%23{}65%3B", "0".repeat(64));
    let r = w
        .http
        .get(w.gate.url(&format!(
            "/cloudflare/client/v4/zones/z/dns_records?comment={overlong}"
        )))
        .bearer_auth(&uploader)
        .send()
        .await
        .unwrap();
    let (status, _, body, _) = recorded(r).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        w.stand_in
            .take()
            .iter()
            .all(|r| !String::from_utf8_lossy(&r.body).contains(&piece)),
        "no probe reached the provider"
    );
    assert!(!w.dump(w._db.url()).await.contains(&piece));
    assert!(!w.gate.log().contains(&piece));

    // Probes sent at once (attack round 19): an answer still in flight when its agent trips out is
    // withheld whatever it carries, so no more than `screen_trips` answers can say "this held a secret".
    let slow = {
        let http = w.http.clone();
        let url = w.gate.url("/cloudflare/client/v4/zones/z/dns_records/slow");
        let key = bystander.clone();
        tokio::spawn(async move {
            let r = http.get(url).bearer_auth(key).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    cut(bystander.clone()).await;
    let (status, text) = slow.await.unwrap();
    assert_eq!(status, 502, "{text}");
    assert!(text.contains("too often"), "{text}");
}
