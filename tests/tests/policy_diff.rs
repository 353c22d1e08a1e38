//! `tollgate policy diff` and `tollgate decisions export` against the real binary: a candidate that widens
//! (unreviewed: exit 1, listed first; declared in `reviewed_widenings.toml`: exit 0), one that only narrows
//! (exit 0, the narrowing reported), one whose own tests fail (exit 2), one that changes the route catalog
//! (exit 1 until its reviewed list accepts it), judged on the bundles' case tables
//! and on decisions a running tollgate recorded, read from an export file and from the store.
//!
//! Candidates are copies of the bundled `policies/` with one data value changed. The budgets file is found
//! by its content (the data file holding `default.approve_above_cents`), wherever the bundle layout keeps it,
//! and written back as JSON (which both YAML and JSON loaders read).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use tollgate_tests::tollgate::{STRIPE_SECRET, Tollgate, binary, bundled_policies};
use tollgate_tests::{TestDatabase, Upstream};

/// A copy of the bundled policies (hidden entries left out, as the loader does).
fn copy_bundle() -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            if path.is_dir() {
                copy(&path, &to.join(name));
            } else {
                std::fs::copy(&path, to.join(name)).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(&bundled_policies(), dir.path());
    dir
}

/// Every file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// Changes the budgets data (the object with `default.approve_above_cents`) in the bundle at `dir` with
/// `edit`, wherever its file is and however deep in it the object sits.
fn edit_budgets(dir: &Path, edit: impl Fn(&mut Value)) {
    fn find(v: &mut Value) -> Option<&mut Value> {
        if v.pointer("/default/approve_above_cents").is_some() {
            return Some(v);
        }
        match v {
            Value::Object(map) => map.values_mut().find_map(find),
            _ => None,
        }
    }
    for path in files(dir) {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !matches!(ext, "yaml" | "yml" | "json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        if !text.contains("approve_above_cents") {
            continue;
        }
        let Ok(mut doc) = yaml_serde::from_str::<Value>(&text) else {
            continue;
        };
        if let Some(budgets) = find(&mut doc) {
            edit(budgets);
            std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
            return;
        }
    }
    panic!(
        "no data file under {} holds default.approve_above_cents",
        dir.display()
    );
}

/// A candidate in which `agent` has its own approval threshold.
fn candidate_with_threshold(agent: &str, cents: i64) -> tempfile::TempDir {
    let dir = copy_bundle();
    edit_budgets(dir.path(), |b| {
        b["agents"] = json!({agent: {"approve_above_cents": cents}});
    });
    dir
}

/// Runs `tollgate <args>` (in `cwd`, with its config when given); returns exit code, stdout, stderr.
fn run(args: &[&str], config: Option<&Path>) -> (i32, String, String) {
    let mut cmd = Command::new(binary().unwrap());
    if let Some(dir) = config {
        cmd.arg("--config")
            .arg(dir.join("tollgate.toml"))
            .current_dir(dir);
    }
    let out = cmd
        .args(args)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn diff_json(base: &Path, candidate: &Path, extra: &[&str], config: Option<&Path>) -> (i32, Value) {
    let mut args = vec![
        "policy",
        "diff",
        base.to_str().unwrap(),
        candidate.to_str().unwrap(),
        "--format",
        "json",
    ];
    args.extend_from_slice(extra);
    let (code, out, err) = run(&args, config);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    (code, v)
}

/// The transitions of one kind (`widenings`, `narrowings`) as (action, from, to) with their counts.
fn transitions(report: &Value, kind: &str) -> Vec<(String, String, String, u64)> {
    report[kind]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| {
            g["transitions"].as_array().unwrap().iter().map(move |t| {
                (
                    g["action"].as_str().unwrap().to_string(),
                    t["from"].as_str().unwrap().to_string(),
                    t["to"].as_str().unwrap().to_string(),
                    t["count"].as_u64().unwrap(),
                )
            })
        })
        .collect()
}

async fn pay(http: &reqwest::Client, gate: &Tollgate, key: &str, body: &str) -> (u16, String) {
    let r = http
        .post(gate.url("/stripe/v1/payment_intents"))
        .basic_auth(key, Some(""))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let id = r
        .headers()
        .get("tollgate-decision")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (r.status().as_u16(), id)
}

#[tokio::test]
async fn recorded_decisions_show_a_widening_first_until_it_is_reviewed_and_a_narrowing_passes() {
    let db = TestDatabase::create().await.unwrap();
    let upstream = Upstream::builder()
        .json_body(json!({"id": "pi_1", "object": "payment_intent"}))
        .start()
        .await
        .unwrap();
    let live = copy_bundle();
    let gate = Tollgate::builder(db.url(), &upstream.url())
        .policy_dir(live.path())
        .start()
        .await
        .unwrap();
    let key = gate
        .create_agent("release-bot", &["--scope", "billing:spend"])
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let (status, small) = pay(&http, &gate, &key, "amount=2000&currency=usd").await;
    assert_eq!(status, 200, "$20 is allowed");
    let (status, held) = pay(&http, &gate, &key, "amount=6000&currency=usd").await;
    assert_eq!(status, 403, "$60 needs a human (spend.threshold)");
    // A card number in the body: stored redacted, so its record cannot be replayed faithfully.
    let (_, redacted) = pay(
        &http,
        &gate,
        &key,
        "amount=1500&currency=usd&description=4242424242424242",
    )
    .await;

    // The export: one JSON object per line, with the recorded input, and no secret.
    let (code, export, err) = run(&["decisions", "export", "--since", "1h"], Some(gate.dir()));
    assert_eq!(code, 0, "{err}");
    let records: Vec<Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 3, "{export}");
    assert!(
        records
            .iter()
            .all(|r| r["input"].is_object() && r["id"].is_string())
    );
    let held_record = records.iter().find(|r| r["id"] == held.as_str()).unwrap();
    assert_eq!(held_record["policy_outcome"], "approve");
    assert_eq!(held_record["action"], "stripe.payment.create");
    for secret in [key.as_str(), STRIPE_SECRET, "4242424242424242"] {
        assert!(!export.contains(secret), "the export holds a secret");
    }
    let exported = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(exported.path(), &export).unwrap();
    let file = exported.path().to_str().unwrap();
    let base = live.path();

    // Widening: release-bot may now spend $1000 without a human. The case tables (other agents) do not
    // move; the recorded $60 payment does.
    let widen = candidate_with_threshold("release-bot", 100_000);
    let (code, report) = diff_json(base, widen.path(), &["--decisions", file], None);
    assert_eq!(code, 1, "an unreviewed widening: {report:#}");
    assert_eq!(report["unreviewed_widenings"], 1);
    assert_eq!(report["candidate"]["failed"], json!([]));
    assert_eq!(report["decisions"], 2);
    assert_eq!(report["skipped"], json!({"redacted when recorded": 1}));
    assert!(
        report["skipped_examples"][0]
            .as_str()
            .unwrap()
            .contains(&redacted)
    );
    assert_eq!(
        transitions(&report, "widenings"),
        vec![(
            "stripe.payment.create".to_string(),
            "approve".to_string(),
            "allow".to_string(),
            1
        )]
    );
    let example = &report["widenings"][0]["transitions"][0]["examples"][0];
    assert_eq!(example["source"], "decision");
    assert_eq!(example["id"], held.as_str());
    assert_eq!(example["base"]["rules"], json!(["spend.threshold"]));
    assert_eq!(example["candidate"]["charge"]["cents"], 6000);
    assert!(transitions(&report, "narrowings").is_empty());
    assert!(report["cases"].as_u64().unwrap() > 100);

    // The text report lists it first, with the decision id.
    let (code, text, _) = run(
        &[
            "policy",
            "diff",
            base.to_str().unwrap(),
            widen.path().to_str().unwrap(),
            "--decisions",
            file,
        ],
        None,
    );
    assert_eq!(code, 1, "{text}");
    let widenings = text.find("WIDENINGS: 1 input").expect(&text);
    assert!(widenings < text.find("NARROWINGS").unwrap(), "{text}");
    assert!(
        text.contains("approve → allow  ×1 (1 recorded decision(s))  UNREVIEWED"),
        "{text}"
    );
    assert!(text.contains(&format!("decision {held}")), "{text}");
    assert!(
        text.contains("budget state (input.spend) recorded at decision time"),
        "{text}"
    );

    // The same from the store (`--since`, the configured Postgres).
    let (code, from_store) = diff_json(base, widen.path(), &["--since", "1h"], Some(gate.dir()));
    assert_eq!(code, 1, "{from_store:#}");
    assert_eq!(
        from_store["widenings"][0]["transitions"][0]["examples"][0]["id"],
        held.as_str()
    );

    // Reviewed: the candidate declares the widening, and the check passes.
    std::fs::write(
        widen.path().join("reviewed_widenings.toml"),
        "[[widening]]\naction = \"stripe.payment.create\"\nfrom = \"approve\"\nto = \"allow\"\n\
         reason = \"release-bot pays suppliers up to $1000 (SEC-42, reviewed by alice)\"\n",
    )
    .unwrap();
    let (code, report) = diff_json(base, widen.path(), &["--decisions", file], None);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["unreviewed_widenings"], 0);
    assert_eq!(
        report["widenings"][0]["transitions"][0]["reviewed"],
        "release-bot pays suppliers up to $1000 (SEC-42, reviewed by alice)"
    );
    assert_eq!(report["reviewed_unused"], json!([]));

    // Once merged, the entry is in the base's list as well: it was for that change, and accepts nothing in
    // the next one.
    std::fs::copy(
        widen.path().join("reviewed_widenings.toml"),
        base.join("reviewed_widenings.toml"),
    )
    .unwrap();
    let (code, report) = diff_json(base, widen.path(), &["--decisions", file], None);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(
        report["reviewed_inherited"][0]["action"],
        "stripe.payment.create"
    );
    assert!(report["widenings"][0]["transitions"][0]["reviewed"].is_null());
    std::fs::remove_file(base.join("reviewed_widenings.toml")).unwrap();

    // Narrowing only: release-bot's own threshold drops to $10, so the recorded $20 payment now needs a
    // human. Exit 0, the narrowing reported, nothing widens. In Markdown, for a pull request.
    let narrow = candidate_with_threshold("release-bot", 1000);
    let (code, report) = diff_json(base, narrow.path(), &["--decisions", file], None);
    assert_eq!(code, 0, "{report:#}");
    assert!(transitions(&report, "widenings").is_empty());
    assert_eq!(
        transitions(&report, "narrowings"),
        vec![(
            "stripe.payment.create".to_string(),
            "allow".to_string(),
            "approve".to_string(),
            1
        )]
    );
    assert_eq!(
        report["narrowings"][0]["transitions"][0]["examples"][0]["id"],
        small.as_str()
    );
    let (code, md, _) = run(
        &[
            "policy",
            "diff",
            base.to_str().unwrap(),
            narrow.path().to_str().unwrap(),
            "--decisions",
            file,
            "--format",
            "markdown",
        ],
        None,
    );
    assert_eq!(code, 0, "{md}");
    assert!(
        md.starts_with("### ✅ tollgate policy diff: no unreviewed widening"),
        "{md}"
    );
    assert!(
        md.contains("| **widenings** (0 unreviewed) | 0 | 0 |"),
        "{md}"
    );
    assert!(md.contains("| narrowings | 1 | 1 |"), "{md}");
    assert!(
        md.contains("| `stripe.payment.create` | allow → approve | 1 (1 recorded decision(s)) |"),
        "{md}"
    );
    assert!(
        md.contains("<details><summary>Narrowings: examples</summary>"),
        "{md}"
    );
}

#[tokio::test]
async fn case_tables_alone_show_widenings_and_a_candidate_failing_its_tests_exits_2() {
    // The default threshold raised from $50 to $70 without updating the tests: the held $60 cases become
    // allows, and the candidate's own tests say so.
    let base = bundled_policies();
    let widen = copy_bundle();
    edit_budgets(widen.path(), |b| {
        b["default"]["approve_above_cents"] = json!(7000);
    });
    let (code, report) = diff_json(&base, widen.path(), &[], None);
    assert_eq!(code, 2, "{report:#}");
    assert_eq!(report["decisions"], 0);
    assert!(report["decisions_from"].is_null());
    assert!(!report["candidate"]["failed"].as_array().unwrap().is_empty());
    assert_eq!(report["base"]["failed"], json!([]));
    let widenings = transitions(&report, "widenings");
    assert!(
        widenings.contains(&(
            "stripe.payment.create".to_string(),
            "approve".to_string(),
            "allow".to_string(),
            2
        )),
        "{widenings:?}"
    );
    assert!(transitions(&report, "narrowings").is_empty());
    let examples = report["widenings"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["transitions"].as_array().unwrap())
        .flat_map(|t| t["examples"].as_array().unwrap())
        .filter_map(|e| e["id"].as_str())
        .collect::<Vec<_>>();
    assert!(
        examples.contains(&"data.tollgate_test.spend.cases[\"payment_60_dollars\"]"),
        "{examples:?}"
    );

    // A reviewed list that is not one fails closed (exit 2), whatever else the diff finds.
    std::fs::write(
        widen.path().join("reviewed_widenings.toml"),
        "[[widening]]\naction = \"stripe.payment.create\"\nfrom = \"allow\"\nto = \"deny\"\nreason = \"r\"\n",
    )
    .unwrap();
    let (code, _, err) = run(
        &[
            "policy",
            "diff",
            base.to_str().unwrap(),
            widen.path().to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, 2);
    assert!(err.contains("is not a widening"), "{err}");
}

#[test]
fn a_route_catalog_change_fails_the_review_until_it_is_accepted() {
    let base = bundled_policies();
    let candidate = copy_bundle();
    // Which file is the catalog is the loader's business: the one routing Stripe payment intents, found by
    // its content; a comment is added, which changes no route but is a change all the same.
    let catalog = files(candidate.path())
        .into_iter()
        .find(|p| {
            std::fs::read_to_string(p).is_ok_and(|t| {
                t.contains("stripe.payment.create") && t.contains("/v1/payment_intents")
            }) && p.extension().is_some_and(|e| e == "yaml")
        })
        .expect("the Stripe route catalog");
    let mut text = std::fs::read_to_string(&catalog).unwrap();
    text.push_str("\n# a reviewer's note\n");
    std::fs::write(&catalog, text).unwrap();
    let (code, report) = diff_json(&base, candidate.path(), &[], None);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["catalog_changed"], true);
    assert!(transitions(&report, "widenings").is_empty());
    std::fs::write(
        candidate.path().join("reviewed_widenings.toml"),
        "[catalog]\nreason = \"comment only (SEC-9)\"\n",
    )
    .unwrap();
    let (code, report) = diff_json(&base, candidate.path(), &[], None);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["catalog_reviewed"], "comment only (SEC-9)");
}
