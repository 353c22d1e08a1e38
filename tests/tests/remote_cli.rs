//! The remote CLI (issue #16): `tollgate --server URL --token-env VAR …` against the real binary serving on a
//! real Postgres, run as a separate process in an empty directory with no configuration, no `DATABASE_URL`
//! and nothing in its environment but the reviewer token — so every command that works proves that
//! reviewers need no database credentials. Covered: the approval loop (list, show with the recorded body,
//! approve as the authenticated reviewer), 401 and 403 messages and exit codes, the token never echoed,
//! `decisions` filters, freeze with a reason, policy status and reload, the admin commands, the plaintext
//! and local-only refusals, and local freeze on the embedded store.

use std::path::Path;
use std::process::Stdio;

use serde_json::Value;
use sqlx::PgPool;
use tollgate_tests::tollgate::{ADMIN_TOKEN, Tollgate, binary, policy_dir_with};
use tollgate_tests::{TestDatabase, Upstream};

/// A Stripe payment intent above $50 needs a human, one of exactly 13 cents is denied, everything else is
/// allowed.
const POLICY: &str = r#"package tollgate

amount := to_number(input.request.body.amount) if input.action.name == "stripe.payment.create"

decision := {"outcome": "approve", "reasons": [{"rule": "spend.single_charge", "message": "charges above $50 need a human"}]} if {
	amount > 5000
} else := {"outcome": "deny", "reasons": [{"rule": "test.unlucky", "message": "13 cents is unlucky"}]} if {
	amount == 13
} else := {"outcome": "allow", "reasons": []}
"#;

/// The environment variable the remote CLI reads its token from in these tests.
const TOKEN_VAR: &str = "TG_TEST_REVIEWER_TOKEN";
/// A card number the agent sends in metadata: redacted at record time (Luhn detector), never shown.
const CARD: &str = "4242424242424242";

struct Setup {
    _db: TestDatabase,
    pool: PgPool,
    _upstream: Upstream,
    _policy: tempfile::TempDir,
    gate: Tollgate,
    http: reqwest::Client,
    /// The remote CLI's working directory: empty, and must stay empty (no local store was opened).
    empty: tempfile::TempDir,
}

/// What one remote CLI run gave.
struct Run {
    ok: bool,
    code: Option<i32>,
    out: String,
    err: String,
}

impl Run {
    fn both(&self) -> String {
        format!("{}{}", self.out, self.err)
    }
}

/// Runs the binary with `args` in `dir`, with an environment holding nothing but PATH and (when given) the
/// token in [`TOKEN_VAR`]: no configuration, no database URL, no bootstrap token.
async fn run_in(dir: &Path, token: Option<&str>, args: &[&str]) -> Run {
    let mut cmd = tokio::process::Command::new(binary().expect("tollgate binary"));
    cmd.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(["--token-env", TOKEN_VAR])
        .args(args)
        .stdin(Stdio::null());
    if let Some(t) = token {
        cmd.env(TOKEN_VAR, t);
    }
    let out = cmd.output().await.expect("run tollgate");
    Run {
        ok: out.status.success(),
        code: out.status.code(),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn setup() -> Setup {
    let db = TestDatabase::create().await.expect("database");
    let upstream = Upstream::builder().start().await.expect("upstream");
    let policy = policy_dir_with(POLICY).expect("policy");
    let gate = Tollgate::builder(db.url(), &upstream.url())
        .policy_dir(policy.path())
        .start()
        .await
        .expect("tollgate starts");
    let pool = db.pool().await.expect("pool");
    Setup {
        _db: db,
        pool,
        _upstream: upstream,
        _policy: policy,
        gate,
        http: reqwest::Client::new(),
        empty: tempfile::tempdir().expect("tempdir"),
    }
}

impl Setup {
    /// Creates a reviewer with the local CLI (an admin's job on the server's machine); returns the token.
    async fn reviewer(&self, name: &str, role: &str) -> String {
        let (ok, out, err) = self
            .gate
            .cli(&["reviewers", "create", name, "--role", role, "--json"])
            .await
            .unwrap();
        assert!(ok, "reviewers create: {err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        v["token"].as_str().unwrap().to_string()
    }

    /// The CLI with `--server <admin listener>` and `token`, from the empty directory; asserts the token
    /// appears in neither stdout nor stderr.
    async fn remote(&self, token: &str, args: &[&str]) -> Run {
        let mut all = vec!["--server", self.gate.admin.as_str()];
        all.extend_from_slice(args);
        let run = run_in(self.empty.path(), Some(token), &all).await;
        assert!(
            !run.both().contains(token),
            "the token was printed by {args:?}: {}",
            run.both()
        );
        run
    }

    /// A Stripe payment intent of `cents`, with a card number in its metadata.
    async fn pay(&self, key: &str, cents: u32, approval: Option<&str>) -> (u16, Value) {
        let mut req = self
            .http
            .post(self.gate.url("/stripe/v1/payment_intents"))
            .basic_auth(key, Some(""))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("Tollgate-Run", "run-launch-7")
            .header("Tollgate-On-Behalf-Of", "carol@example.com")
            .body(format!(
                "amount={cents}&currency=usd&description=launch&metadata[card]={CARD}"
            ));
        if let Some(id) = approval {
            req = req.header("Tollgate-Approval", id);
        }
        let r = req.send().await.expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    fn assert_no_local_store(&self) {
        let left: Vec<_> = std::fs::read_dir(self.empty.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            left.is_empty(),
            "the remote CLI wrote local files: {left:?}"
        );
    }
}

#[tokio::test]
async fn a_reviewer_runs_the_approval_loop_without_database_credentials() {
    let s = setup().await;
    let alice = s.reviewer("alice", "approver").await;
    let victor = s.reviewer("victor", "viewer").await;
    let key = s.gate.create_agent("buyer", &[]).await.unwrap();

    let (status, body) = s.pay(&key, 6000, None).await;
    assert_eq!(
        body["tollgate"]["code"], "approval_required",
        "{status} {body}"
    );
    let id = body["tollgate"]["approval_id"]
        .as_str()
        .unwrap()
        .to_string();

    // A viewer sees it in the queue, in both shapes.
    let list = s
        .remote(&victor, &["approvals", "list", "--status", "pending"])
        .await;
    assert!(list.ok, "{}", list.both());
    assert!(
        list.out.contains(&id) && list.out.contains("stripe.payment.create"),
        "{}",
        list.out
    );
    let list = s
        .remote(
            &victor,
            &["approvals", "list", "--status", "pending", "--json"],
        )
        .await;
    let items: Vec<Value> = serde_json::from_str(&list.out).expect("a JSON array");
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], id.as_str());

    // `show` prints the full request under review, the body as recorded, the card number redacted.
    let show = s.remote(&victor, &["approvals", "show", &id]).await;
    assert!(show.ok, "{}", show.both());
    for expected in [
        "PENDING",
        "buyer",
        "run-launch-7",
        "carol@example.com",
        "POST",
        "/v1/payment_intents",
        "content-type: application/x-www-form-urlencoded",
        "stripe.payment.create",
        "spend.single_charge: charges above $50 need a human",
        "\"amount\": \"6000\"",
        "\"description\": \"launch\"",
        "[redacted",
        "were hidden when the request was recorded",
        "revision ",
        "not yet",
    ] {
        assert!(
            show.out.contains(expected),
            "no {expected:?} in:\n{}",
            show.out
        );
    }
    assert!(!show.out.contains(CARD), "{}", show.out);
    let show = s
        .remote(&victor, &["approvals", "show", &id, "--json"])
        .await;
    let v: Value = serde_json::from_str(&show.out).expect("JSON");
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["method"], "POST");
    assert_eq!(
        v["requested_by"]["input"]["request"]["body"]["amount"],
        "6000"
    );
    assert_eq!(v["requested_by"]["id"], v["requested_by_decision"]);

    // The same show through the local CLI (on the server's machine) prints the same thing.
    let (ok, local, err) = s
        .gate
        .cli(&["approvals", "show", &id, "--json"])
        .await
        .unwrap();
    assert!(ok, "{err}");
    let local: Value = serde_json::from_str(&local).unwrap();
    assert_eq!(local["requested_by"]["input"], v["requested_by"]["input"]);
    assert_eq!(local["path"], v["path"]);

    // A viewer may not approve: 403 with the server's words, non-zero exit.
    let refused = s
        .remote(&victor, &["approvals", "approve", &id, "--note", "sure"])
        .await;
    assert!(!refused.ok);
    assert!(
        refused.err.contains("error: ")
            && refused.err.contains("(forbidden, HTTP 403)")
            && refused.err.contains("has the viewer role")
            && refused.err.contains("needs the approver role"),
        "{}",
        refused.err
    );

    // A wrong token: 401, said plainly, never echoed.
    let wrong = format!("tgr_{}", "W".repeat(40));
    let unknown = s.remote(&wrong, &["approvals", "list"]).await;
    assert!(!unknown.ok);
    assert!(
        unknown.err.contains("(admin_unauthenticated, HTTP 401)")
            && unknown.err.contains(&format!("${TOKEN_VAR}")),
        "{}",
        unknown.err
    );

    // `--by` means nothing remotely: the server records who the token is.
    let by = s
        .remote(&alice, &["approvals", "approve", &id, "--by", "mallory"])
        .await;
    assert!(
        !by.ok && by.err.contains("--by is for the local CLI"),
        "{}",
        by.err
    );

    // Deny needs a note (both modes); approve does not.
    let no_note = s.remote(&alice, &["approvals", "deny", &id]).await;
    assert!(
        !no_note.ok && no_note.err.contains("--note"),
        "{}",
        no_note.err
    );

    let approved = s
        .remote(
            &alice,
            &["approvals", "approve", &id, "--note", "ok for the launch"],
        )
        .await;
    assert!(approved.ok, "{}", approved.both());
    assert!(
        approved
            .out
            .contains(&format!("approval {id} approved by alice")),
        "{}",
        approved.out
    );
    let (decided_by, note): (String, Option<String>) =
        sqlx::query_as("SELECT decided_by, note FROM approvals WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&s.pool)
            .await
            .unwrap();
    assert_eq!(decided_by, "alice");
    assert_eq!(note.as_deref(), Some("ok for the launch"));
    let actor: String = sqlx::query_scalar(
        "SELECT actor FROM admin_actions WHERE action = 'approval.approve' AND target = $1",
    )
    .bind(&id)
    .fetch_one(&s.pool)
    .await
    .unwrap();
    assert_eq!(actor, "alice");

    // Approving twice: the server's conflict, as the server says it.
    let again = s.remote(&alice, &["approvals", "approve", &id]).await;
    assert!(
        !again.ok && again.err.contains("(not_pending, HTTP 409)"),
        "{}",
        again.err
    );

    // The agent retries with the approval and goes through; `show` then names who decided and what
    // consumed it.
    let (status, body) = s.pay(&key, 6000, Some(&id)).await;
    assert_eq!(status, 200, "{body}");
    let show = s.remote(&victor, &["approvals", "show", &id]).await;
    assert!(
        show.out.contains("CONSUMED")
            && show.out.contains("approved by alice")
            && show.out.contains("\"ok for the launch\"")
            && show.out.contains("by decision "),
        "{}",
        show.out
    );
    s.assert_no_local_store();
}

#[tokio::test]
async fn decisions_filter_by_outcome_action_agent_and_time_remotely() {
    let s = setup().await;
    let victor = s.reviewer("victor", "viewer").await;
    let key = s.gate.create_agent("buyer", &[]).await.unwrap();
    let other = s.gate.create_agent("other", &[]).await.unwrap();
    assert_eq!(s.pay(&key, 13, None).await.0, 403);
    assert_eq!(s.pay(&key, 100, None).await.0, 200);
    assert_eq!(s.pay(&other, 200, None).await.0, 200);

    let decisions = async |args: &[&str]| {
        let mut all = vec!["decisions", "--json"];
        all.extend_from_slice(args);
        let run = s.remote(&victor, &all).await;
        assert!(run.ok, "{all:?}: {}", run.both());
        serde_json::from_str::<Vec<Value>>(&run.out).expect("a JSON array")
    };
    let denied = decisions(&["--outcome", "denied", "--since", "1h"]).await;
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0]["outcome"], "deny");
    assert_eq!(denied[0]["rules"][0], "test.unlucky");
    let allowed = decisions(&["--outcome", "allow", "--action", "stripe.payment.create"]).await;
    assert_eq!(allowed.len(), 2, "{allowed:?}");
    let of_other = decisions(&["--agent", "other"]).await;
    assert_eq!(of_other.len(), 1);
    assert_eq!(of_other[0]["agent"], "other");
    assert!(decisions(&["--since", "2099-01-01"]).await.is_empty());
    assert_eq!(decisions(&["--since", "3600s"]).await.len(), 3);
    assert_eq!(decisions(&["--limit", "2"]).await.len(), 2);

    // Remote and local list the same decisions.
    let remote_ids: Vec<Value> = decisions(&[])
        .await
        .iter()
        .map(|d| d["id"].clone())
        .collect();
    let (ok, out, err) = s
        .gate
        .cli(&["decisions", "--json", "--since", "1h"])
        .await
        .unwrap();
    assert!(ok, "{err}");
    let local: Vec<Value> = serde_json::from_str(&out).unwrap();
    let local_ids: Vec<Value> = local.iter().map(|d| d["id"].clone()).collect();
    assert_eq!(remote_ids, local_ids);

    // Human output: one line per decision.
    let human = s.remote(&victor, &["decisions", "--outcome", "deny"]).await;
    assert_eq!(human.out.lines().count(), 1, "{}", human.out);
    assert!(human.out.contains("stripe.payment.create") && human.out.contains("deny"));

    let bad = s
        .remote(&victor, &["decisions", "--since", "yesterday"])
        .await;
    assert!(
        !bad.ok && bad.err.contains("30s, 15m, 2h, 7d"),
        "{}",
        bad.err
    );
    s.assert_no_local_store();
}

#[tokio::test]
async fn operators_freeze_with_a_reason_and_read_the_policy_status_remotely() {
    let s = setup().await;
    let olga = s.reviewer("olga", "operator").await;
    let victor = s.reviewer("victor", "viewer").await;
    let key = s.gate.create_agent("buyer", &[]).await.unwrap();

    let viewer_freeze = s.remote(&victor, &["freeze", "--reason", "x"]).await;
    assert!(!viewer_freeze.ok && viewer_freeze.err.contains("HTTP 403"));

    let frozen = s
        .remote(&olga, &["freeze", "--reason", "incident 42: card testing"])
        .await;
    assert!(frozen.ok, "{}", frozen.both());
    assert!(
        frozen.out.contains("FROZEN") && frozen.out.contains("by olga: incident 42"),
        "{}",
        frozen.out
    );
    let state: Value = s
        .http
        .get(s.gate.admin_url("/api/freeze"))
        .bearer_auth(&victor)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["frozen"], true);
    assert_eq!(state["changed_by"], "olga");
    assert_eq!(state["reason"], "incident 42: card testing");
    assert!(state["changed_at"].is_string(), "{state}");
    let detail: String = sqlx::query_scalar(
        "SELECT detail::text FROM admin_actions WHERE action = 'freeze' AND actor = 'olga'",
    )
    .fetch_one(&s.pool)
    .await
    .unwrap();
    assert!(detail.contains("incident 42"), "{detail}");

    let (status, body) = s.pay(&key, 100, None).await;
    assert_eq!(
        (status, body["tollgate"]["code"].as_str()),
        (503, Some("frozen"))
    );
    let status_run = s.remote(&victor, &["freeze", "status", "--json"]).await;
    let v: Value = serde_json::from_str(&status_run.out).unwrap();
    assert_eq!(v, state);

    let thawed = s.remote(&olga, &["unfreeze"]).await;
    assert!(thawed.ok, "{}", thawed.both());
    assert!(thawed.out.contains("not frozen") && thawed.out.contains("by olga"));
    let (status, body) = s.pay(&key, 100, None).await;
    assert_eq!(status, 200, "{body}");
    let state: Value =
        serde_json::from_str(&s.remote(&victor, &["freeze", "status", "--json"]).await.out)
            .unwrap();
    assert_eq!(state["frozen"], false);
    assert_eq!(state["reason"], Value::Null);

    // An empty POST body still freezes (older clients).
    let r = s
        .http
        .post(s.gate.admin_url("/api/freeze"))
        .bearer_auth(&olga)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(s.remote(&olga, &["unfreeze"]).await.ok);

    // Policy status: the live revision, as GET /api/policy says.
    let api: Value = s
        .http
        .get(s.gate.admin_url("/api/policy"))
        .bearer_auth(&victor)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let revision = api["revision"].as_str().unwrap();
    let status_run = s.remote(&victor, &["policy", "status"]).await;
    assert!(status_run.ok, "{}", status_run.both());
    assert!(
        status_run
            .out
            .contains(&format!("policy revision {revision}"))
            && status_run.out.contains("reloads:"),
        "{}",
        status_run.out
    );
    let viewer_reload = s.remote(&victor, &["policy", "reload"]).await;
    assert!(!viewer_reload.ok && viewer_reload.err.contains("needs the operator role"));
    let reload = s.remote(&olga, &["policy", "reload", "--json"]).await;
    assert!(reload.ok, "{}", reload.both());
    let v: Value = serde_json::from_str(&reload.out).unwrap();
    assert_eq!(v["revision"], revision);
    assert!(v["reloads_ok"].as_u64().unwrap() >= 1, "{v}");

    // Locally, status loads the configured bundle (same revision); reload needs a server.
    let (ok, out, err) = s.gate.cli(&["policy", "status"]).await.unwrap();
    assert!(
        ok && out.contains(&format!("policy revision {revision}")),
        "{out}{err}"
    );
    let (ok, _, err) = s.gate.cli(&["policy", "reload"]).await.unwrap();
    assert!(!ok && err.contains("acts on a running server"), "{err}");
    s.assert_no_local_store();
}

#[tokio::test]
async fn admins_manage_agents_and_reviewers_remotely() {
    let s = setup().await;
    let admin = s.reviewer("ada", "admin").await;
    let olga = s.reviewer("olga", "operator").await;

    let who = s.remote(&admin, &["whoami"]).await;
    assert!(
        who.ok && who.out.contains("ada (role admin)"),
        "{}",
        who.both()
    );

    let created = s
        .remote(
            &admin,
            &[
                "agents", "create", "bot", "--scope", "dns:read", "--label", "team=web",
            ],
        )
        .await;
    assert!(created.ok, "{}", created.both());
    let key_line = created
        .out
        .lines()
        .find(|l| l.starts_with("key (shown once"))
        .expect("the key line");
    let key = key_line
        .trim_start_matches("key (shown once, store it now): ")
        .to_string();
    assert!(key.starts_with("tg_"), "{key_line}");
    let created_by: Option<String> =
        sqlx::query_scalar("SELECT created_by FROM agents WHERE name = 'bot'")
            .fetch_one(&s.pool)
            .await
            .unwrap();
    assert_eq!(created_by.as_deref(), Some("ada"));
    let operator_create = s.remote(&olga, &["agents", "create", "bot2"]).await;
    assert!(!operator_create.ok && operator_create.err.contains("needs the admin role"));

    let list = s.remote(&olga, &["agents", "list", "--json"]).await;
    let agents: Vec<Value> = serde_json::from_str(&list.out).unwrap();
    assert!(
        agents
            .iter()
            .any(|a| a["name"] == "bot" && a["scopes"][0] == "dns:read")
    );
    assert!(!list.out.contains(&key));
    let revoked = s.remote(&olga, &["agents", "revoke", "bot"]).await;
    assert!(
        revoked.ok && revoked.out.contains("revoked agent 'bot'"),
        "{}",
        revoked.both()
    );
    let missing = s.remote(&olga, &["agents", "revoke", "bot"]).await;
    assert!(
        !missing.ok && missing.err.contains("(not_found, HTTP 404)"),
        "{}",
        missing.err
    );

    let made = s
        .remote(
            &admin,
            &[
                "reviewers",
                "create",
                "rita",
                "--role",
                "approver",
                "--json",
            ],
        )
        .await;
    assert!(made.ok, "{}", made.both());
    let rita: Value = serde_json::from_str(&made.out).unwrap();
    let rita_token = rita["token"].as_str().unwrap().to_string();
    assert!(rita_token.starts_with("tgr_"));
    let list = s.remote(&admin, &["reviewers", "list"]).await;
    assert!(
        list.out.contains("rita") && list.out.contains("approver"),
        "{}",
        list.out
    );
    assert!(!list.out.contains(&rita_token));
    let rotated = s
        .remote(&admin, &["reviewers", "rotate", "rita", "--json"])
        .await;
    let new_token = serde_json::from_str::<Value>(&rotated.out).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(new_token, rita_token);
    assert!(!s.remote(&rita_token, &["whoami"]).await.ok);
    assert!(s.remote(&new_token, &["whoami"]).await.ok);
    assert!(s.remote(&admin, &["reviewers", "revoke", "rita"]).await.ok);
    assert!(!s.remote(&new_token, &["whoami"]).await.ok);

    // The bootstrap admin token works too, recorded as bootstrap-admin.
    let spend = s.remote(ADMIN_TOKEN, &["spend", "--json"]).await;
    assert!(spend.ok, "{}", spend.both());
    let v: Value = serde_json::from_str(&spend.out).unwrap();
    assert!(v["period"].is_string() && v["windows"].is_array(), "{v}");
    let flagged = s.remote(ADMIN_TOKEN, &["spend", "flagged"]).await;
    assert!(
        flagged.out.contains("0 flagged reservation(s)"),
        "{}",
        flagged.out
    );
    let settle = s
        .remote(
            &olga,
            &[
                "spend",
                "settle",
                "0190f1e2-0000-7000-8000-000000000000",
                "--released",
                "--note",
                "n",
            ],
        )
        .await;
    assert!(
        !settle.ok && settle.err.contains("(not_found, HTTP 404)"),
        "{}",
        settle.err
    );
    s.assert_no_local_store();
}

/// Runs a command that must fail with `expected` in stderr, exit status 1 and the token nowhere; returns how
/// long it took.
async fn refused(
    dir: &Path,
    args: &[&str],
    token: Option<&str>,
    expected: &str,
) -> std::time::Duration {
    let started = std::time::Instant::now();
    let run = run_in(dir, token, args).await;
    assert!(!run.ok, "{args:?} succeeded: {}", run.both());
    assert_eq!(run.code, Some(1), "{args:?}");
    assert!(run.err.contains(expected), "{args:?}: {}", run.err);
    if let Some(t) = token {
        assert!(!run.both().contains(t), "{args:?} printed the token");
    }
    started.elapsed()
}

#[tokio::test]
async fn what_the_remote_cli_refuses_before_it_connects() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let token = Some("tgr_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    // Plaintext to a remote host: refused before any connection (no DNS, no socket: immediate).
    let took = refused(
        dir,
        &["--server", "http://example.com", "approvals", "list"],
        token,
        "refusing to send a reviewer token over plain http to example.com",
    )
    .await;
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");
    // No token in the variable: the variable is named, nothing is sent.
    refused(
        dir,
        &[
            "--server",
            "https://tollgate.example.com",
            "approvals",
            "list",
        ],
        None,
        TOKEN_VAR,
    )
    .await;
    // Nobody listening: the URL is named.
    refused(
        dir,
        &["--server", "http://127.0.0.1:1", "decisions"],
        token,
        "cannot reach the tollgate admin API at http://127.0.0.1:1",
    )
    .await;
    // A TLS failure (here: a server that speaks plain HTTP on the https port) names the server too.
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://127.0.0.1:{}", plain.local_addr().unwrap().port());
    let answering = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt as _;
        while let Ok((mut conn, _)) = plain.accept().await {
            let _ = conn
                .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    });
    refused(
        dir,
        &["--server", &url, "approvals", "list"],
        token,
        &format!("cannot reach the tollgate admin API at {url}: "),
    )
    .await;
    answering.abort();
    // Local-only commands say so.
    refused(
        dir,
        &["--server", "http://127.0.0.1:1", "audit", "verify"],
        token,
        "`tollgate audit` works on the local configuration and database only",
    )
    .await;
    refused(
        dir,
        &["--server", "http://127.0.0.1:1", "decisions", "export"],
        token,
        "`tollgate decisions export` works on the local",
    )
    .await;
    refused(dir, &["whoami"], token, "give --server URL").await;
    let left: Vec<_> = std::fs::read_dir(dir).unwrap().collect();
    assert!(left.is_empty(), "files written: {left:?}");
}

#[tokio::test]
async fn local_freeze_on_the_embedded_store_records_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let b = Tollgate::builder("unused", "http://127.0.0.1:1").embedded();
    let (ok, out, err) = b
        .cli_in(dir.path(), &["freeze", "--reason", "maintenance", "--json"])
        .await
        .unwrap();
    assert!(ok, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["frozen"], true);
    assert_eq!(v["reason"], "maintenance");
    assert!(
        v["changed_by"].as_str().unwrap().starts_with("local:"),
        "{v}"
    );
    let (ok, out, _) = b.cli_in(dir.path(), &["freeze", "status"]).await.unwrap();
    assert!(
        ok && out.contains("FROZEN") && out.contains(": maintenance"),
        "{out}"
    );
    let (ok, out, _) = b.cli_in(dir.path(), &["unfreeze", "--json"]).await.unwrap();
    assert!(ok, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["frozen"].as_bool(), v["reason"].is_null()),
        (Some(false), true)
    );
    // Deny needs a note locally too.
    let (ok, _, err) = b
        .cli_in(
            dir.path(),
            &["approvals", "deny", "0190f1e2-0000-7000-8000-000000000000"],
        )
        .await
        .unwrap();
    assert!(!ok && err.contains("--note"), "{err}");
}
