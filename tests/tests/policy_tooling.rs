//! Policy operations against the real binary: hot reload (file change, SIGHUP, admin API) that never swaps
//! in a broken bundle, the shadow bundle, replay of recorded decisions, and the test runner.

use std::time::Duration;

use serde_json::Value;
use tollgate_tests::tollgate::{ADMIN_TOKEN, Tollgate, policy_dir_with};
use tollgate_tests::{TestDatabase, Upstream};

const ALLOW_ALL: &str = "package tollgate\n\ndecision := {\"outcome\": \"allow\"}\n";
const DENY_WRITES: &str = "package tollgate\n\n\
    decision := {\"outcome\": \"allow\"} if input.request.method == \"GET\"\n\
    decision := {\"outcome\": \"deny\", \"reasons\": [{\"rule\": \"candidate.no_writes\", \"message\": \"writes are off\"}]} if input.request.method != \"GET\"\n";

async fn status(http: &reqwest::Client, gate: &Tollgate) -> Value {
    http.get(gate.admin_url("/api/policy"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn post_dns(http: &reqwest::Client, gate: &Tollgate, key: &str) -> u16 {
    http.post(gate.url("/cloudflare/client/v4/zones/z/dns_records"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(r#"{"type":"A","name":"a","content":"198.51.100.1"}"#)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Polls `check` every 100 ms for up to 10 s (reloads are asynchronous).
async fn eventually<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn file_changes_reload_and_a_broken_bundle_changes_nothing_but_the_reload_status() {
    let db = TestDatabase::create().await.unwrap();
    let upstream = Upstream::builder().start().await.unwrap();
    let dir = policy_dir_with(ALLOW_ALL).unwrap();
    let gate = Tollgate::builder(db.url(), &upstream.url())
        .policy_dir(dir.path())
        .start()
        .await
        .unwrap();
    let key = gate.create_agent("a", &[]).await.unwrap();
    let http = reqwest::Client::new();
    assert_eq!(post_dns(&http, &gate, &key).await, 200);
    let first = status(&http, &gate).await["revision"]
        .as_str()
        .unwrap()
        .to_string();

    // A good edit is picked up.
    std::fs::write(dir.path().join("policy.rego"), DENY_WRITES).unwrap();
    assert!(
        eventually(|| async { post_dns(&http, &gate, &key).await == 403 }).await,
        "reloaded on file change"
    );
    let second = status(&http, &gate).await;
    assert_ne!(second["revision"], first.as_str());
    assert!(second["last_error"].is_null());

    // A syntax error, then a bundle whose own tests fail: neither is swapped in.
    std::fs::write(
        dir.path().join("policy.rego"),
        "package tollgate\n\ndecision := {\n",
    )
    .unwrap();
    assert!(eventually(|| async { !status(&http, &gate).await["last_error"].is_null() }).await);
    assert_eq!(
        post_dns(&http, &gate, &key).await,
        403,
        "the previous bundle is still live"
    );
    assert_eq!(status(&http, &gate).await["revision"], second["revision"]);

    std::fs::write(dir.path().join("policy.rego"), ALLOW_ALL).unwrap();
    std::fs::create_dir_all(dir.path().join("tests")).unwrap();
    std::fs::write(
        dir.path().join("tests/guard_test.rego"),
        "package guard_test\n\nimport data.tollgate\n\ntest_writes_denied if {\n\ttollgate.decision.outcome == \"deny\" with input as {\"request\": {\"method\": \"POST\"}}\n}\n",
    )
    .unwrap();
    assert!(
        eventually(|| async {
            status(&http, &gate).await["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("test_writes_denied"))
        })
        .await,
        "a bundle failing its own tests is refused"
    );
    assert_eq!(post_dns(&http, &gate, &key).await, 403);

    let metrics = http
        .get(gate.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"tollgate_policy_reloads_total{result="ok"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"tollgate_policy_reloads_total{result="error"}"#));

    // Fixing the test makes the bundle loadable again (through the admin API this time).
    std::fs::remove_file(dir.path().join("tests/guard_test.rego")).unwrap();
    let reload = http
        .post(gate.admin_url("/api/policy/reload"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 200);
    assert_eq!(post_dns(&http, &gate, &key).await, 200);
}

#[tokio::test]
async fn sighup_reloads_when_watching_is_off() {
    let db = TestDatabase::create().await.unwrap();
    let upstream = Upstream::builder().start().await.unwrap();
    let dir = policy_dir_with(ALLOW_ALL).unwrap();
    let gate = Tollgate::builder(db.url(), &upstream.url())
        .policy_dir(dir.path())
        .policy("watch = false")
        .start()
        .await
        .unwrap();
    let key = gate.create_agent("a", &[]).await.unwrap();
    let http = reqwest::Client::new();
    std::fs::write(dir.path().join("policy.rego"), DENY_WRITES).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        post_dns(&http, &gate, &key).await,
        200,
        "no reload without a trigger"
    );
    let pid = gate.pid().unwrap().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    assert!(eventually(|| async { post_dns(&http, &gate, &key).await == 403 }).await);
}

#[tokio::test]
async fn the_shadow_bundle_is_recorded_and_counted_but_never_enforced() {
    let db = TestDatabase::create().await.unwrap();
    let upstream = Upstream::builder().start().await.unwrap();
    let live = policy_dir_with(ALLOW_ALL).unwrap();
    let shadow = policy_dir_with(DENY_WRITES).unwrap();
    let gate = Tollgate::builder(db.url(), &upstream.url())
        .policy_dir(live.path())
        .policy(&format!("shadow_dir = \"{}\"", shadow.path().display()))
        .start()
        .await
        .unwrap();
    let key = gate.create_agent("a", &[]).await.unwrap();
    let http = reqwest::Client::new();
    assert_eq!(
        post_dns(&http, &gate, &key).await,
        200,
        "the shadow's deny is not enforced"
    );
    let r = http
        .get(gate.url("/cloudflare/client/v4/zones"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let pool = db.pool().await.unwrap();
    let rows: Vec<(String, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT method, policy_outcome, shadow_outcome FROM decisions ORDER BY at")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        rows,
        vec![
            (
                "POST".to_string(),
                Some("allow".to_string()),
                Some("deny".to_string())
            ),
            (
                "GET".to_string(),
                Some("allow".to_string()),
                Some("allow".to_string())
            ),
        ]
    );
    let metrics = http
        .get(gate.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .contains(r#"tollgate_shadow_disagreements_total{action="cloudflare.dns.create"} 1"#),
        "{metrics}"
    );
    let st = status(&http, &gate).await;
    assert!(st["shadow"]["revision"].is_string());
}

#[tokio::test]
async fn replay_shows_which_recorded_decisions_a_candidate_would_change() {
    let db = TestDatabase::create().await.unwrap();
    let upstream = Upstream::builder().start().await.unwrap();
    let live = policy_dir_with(ALLOW_ALL).unwrap();
    let gate = Tollgate::builder(db.url(), &upstream.url())
        .policy_dir(live.path())
        .start()
        .await
        .unwrap();
    let key = gate.create_agent("a", &[]).await.unwrap();
    let http = reqwest::Client::new();
    for _ in 0..3 {
        assert_eq!(post_dns(&http, &gate, &key).await, 200);
    }
    let r = http
        .get(gate.url("/cloudflare/client/v4/zones"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let candidate = policy_dir_with(DENY_WRITES).unwrap();
    let dir = candidate.path().to_str().unwrap();
    let (ok, out, err) = gate
        .cli(&["replay", "--policies", dir, "--since", "1h", "--json"])
        .await
        .unwrap();
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["replayed"], 4);
    assert_eq!(v["changed"], 3);
    assert_eq!(v["transitions"][0]["action"], "cloudflare.dns.create");
    assert_eq!(v["transitions"][0]["was"], "allow");
    assert_eq!(v["transitions"][0]["now"], "deny");
    assert_eq!(v["transitions"][0]["count"], 3);
    assert_eq!(v["rows"][0]["rule"], "candidate.no_writes");
    let (ok, text, _) = gate.cli(&["replay", "--policies", dir]).await.unwrap();
    assert!(ok);
    assert!(text.contains("3 would change"), "{text}");
}

#[tokio::test]
async fn policy_test_runner_reports_failures_and_exits_non_zero() {
    let dir = policy_dir_with(ALLOW_ALL).unwrap();
    std::fs::create_dir_all(dir.path().join("tests")).unwrap();
    std::fs::write(
        dir.path().join("tests/t_test.rego"),
        "package t_test\n\nimport data.tollgate\n\n\
         test_allows if {\n\ttollgate.decision.outcome == \"allow\"\n}\n\n\
         test_denies if {\n\ttollgate.decision.outcome == \"deny\"\n}\n",
    )
    .unwrap();
    let out = std::process::Command::new(tollgate_tests::tollgate::binary().unwrap())
        .args(["policy", "test", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(text.contains("PASS  data.t_test.test_allows"), "{text}");
    assert!(text.contains("FAIL  data.t_test.test_denies"), "{text}");
    assert!(text.contains("2 tests, 1 passed, 1 failed"), "{text}");

    let bundled = std::process::Command::new(tollgate_tests::tollgate::binary().unwrap())
        .args([
            "policy",
            "test",
            tollgate_tests::tollgate::bundled_policies()
                .to_str()
                .unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        bundled.status.success(),
        "the bundled library's own tests pass: {}",
        String::from_utf8_lossy(&bundled.stdout)
    );
    assert_eq!(
        String::from_utf8_lossy(&bundled.stderr)
            .matches("warning:")
            .count(),
        0,
        "the bundled library has no Rego the engines read differently: {}",
        String::from_utf8_lossy(&bundled.stderr)
    );
}

/// The lint for Rego that OPA and regorus evaluate differently: `policy test` warns with file, line and rule;
/// `check-config` warns, and fails with `--strict`.
#[tokio::test]
async fn a_not_over_a_possibly_undefined_operand_is_a_warning_and_fails_strict_mode() {
    let divergent = r#"package tollgate

decision := {"outcome": "deny", "reasons": [{"rule": "t.malformed", "message": "no token id"}]} if {
	input.action.risk == "write"
	not is_string(input.request.body.id)
} else := {"outcome": "allow", "reasons": []}
"#;
    let dir = policy_dir_with(divergent).unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(tollgate_tests::tollgate::binary().unwrap())
            .args(args)
            .env("CLOUDFLARE_API_TOKEN", "cf-test-credential")
            .env("STRIPE_SECRET_KEY", "sk_test_credential")
            .env("TOLLGATE_VAULT_KEY", tollgate_tests::tollgate::VAULT_KEY)
            .output()
            .unwrap()
    };
    let out = run(&["policy", "test", dir.path().to_str().unwrap()]);
    let warnings = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        warnings.contains(
            "warning: policy.rego:5: rule decision: `not is_string(input.request.body.id)`"
        ),
        "{warnings}"
    );
    let config = dir.path().join("tollgate.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"sqlite://{}/t.db\"\n\n[policy]\ndir = \"{}\"\n",
            dir.path().display(),
            dir.path().display()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let relaxed = run(&["--config", config, "check-config"]);
    assert!(
        relaxed.status.success(),
        "{}",
        String::from_utf8_lossy(&relaxed.stderr)
    );
    assert!(
        String::from_utf8_lossy(&relaxed.stderr).contains("warning: policy lint: policy.rego:5")
    );
    let strict = run(&["--config", config, "check-config", "--strict"]);
    assert!(!strict.status.success());
    assert!(
        String::from_utf8_lossy(&strict.stderr).contains("policy lint (--strict): policy.rego:5"),
        "{}",
        String::from_utf8_lossy(&strict.stderr)
    );
}

/// A reader that stops early (`| head`) ends a command's output quietly: no panic, no backtrace.
#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(tollgate_tests::tollgate::binary().unwrap())
        // Two lines per test of the bundled library: far more than a pipe holds.
        .args(["policy", "test"])
        .arg(tollgate_tests::tollgate::bundled_policies())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The pipe's read end is dropped here, with most of the output still to come.
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!first.is_empty());
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(141), "{stderr}");
}
