//! The decision log shows its own truncation: checkpoints in the store and lines in an external anchor file
//! let `audit verify` tell a deleted tail, a dropped chain, a rewritten chain and a chain that ended without
//! its writer shutting down from an intact one; `audit prune` cuts history and leaves it verifiable.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tollgate_tests::tollgate::{Tollgate, TollgateBuilder, policy_dir_with};
use tollgate_tests::{TestDatabase, Upstream};

const ALLOW_ALL: &str = r#"package tollgate

decision := {"outcome": "allow", "reasons": []}
"#;

/// One writer, a checkpoint every second, checkpoints also appended to `anchors`.
fn configured(builder: TollgateBuilder, anchors: &Path) -> TollgateBuilder {
    builder
        .audit("writers = 1")
        .audit("checkpoint_interval_seconds = 1")
        .audit(&format!("anchor_file = \"{}\"", anchors.display()))
}

async fn send(tg: &Tollgate, key: &str, n: usize) {
    let http = reqwest::Client::new();
    for _ in 0..n {
        let status = http
            .get(tg.url("/cloudflare/client/v4/zones"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);
    }
}

/// `audit verify --json [extra]`: (exit success, the reports).
async fn verify(tg: &Tollgate, extra: &[&str]) -> (bool, Vec<Value>, String) {
    let mut args = vec!["audit", "verify", "--json"];
    args.extend_from_slice(extra);
    let (ok, out, err) = tg.cli(&args).await.unwrap();
    let reports: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    let text = format!("{reports:#}");
    (ok, reports.as_array().unwrap().clone(), text)
}

fn report<'a>(reports: &'a [Value], writer: &str) -> &'a Value {
    reports
        .iter()
        .find(|r| r["writer_id"] == writer)
        .unwrap_or_else(|| panic!("no report for {writer}: {reports:?}"))
}

/// Waits until the anchor file shows `writer_seq` as a periodic checkpoint; returns the writer id.
async fn wait_for_anchor(anchors: &Path, seq: i64, not_writer: Option<&str>) -> String {
    for _ in 0..100 {
        let text = std::fs::read_to_string(anchors).unwrap_or_default();
        for line in text.lines() {
            let c: Value = serde_json::from_str(line).unwrap();
            if c["seq"] == seq && not_writer.is_none_or(|w| c["writer_id"] != w) {
                return c["writer_id"].as_str().unwrap().to_string();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no checkpoint at seq {seq} in the anchor file within 10 s");
}

#[tokio::test]
async fn verify_tells_a_closed_chain_from_a_crashed_a_truncated_and_a_dropped_one() {
    let db = TestDatabase::create().await.unwrap();
    let pool = db.pool().await.unwrap();
    let upstream = Upstream::builder().start().await.unwrap();
    let policy = policy_dir_with(ALLOW_ALL).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let anchors = scratch.path().join("anchors.jsonl");
    let mut tg = configured(
        Tollgate::builder(db.url(), &upstream.url()).policy_dir(policy.path()),
        &anchors,
    )
    .start()
    .await
    .unwrap();
    let key = tg.create_agent("agent", &[]).await.unwrap();

    // A first process: five records, then a clean shutdown closes its chain.
    send(&tg, &key, 5).await;
    let first = wait_for_anchor(&anchors, 5, None).await;
    let status = tg.terminate().await.unwrap();
    assert!(status.success(), "{}", tg.log());
    let (ok, reports, text) = verify(&tg, &["--strict"]).await;
    assert!(ok, "{text}");
    assert_eq!(report(&reports, &first)["status"], "closed", "{text}");

    // A second process, killed: its chain verifies, but is open, and says how much is not anchored.
    let mut tg = tg.restart().await.unwrap();
    send(&tg, &key, 3).await;
    let second = wait_for_anchor(&anchors, 3, Some(&first)).await;
    send(&tg, &key, 2).await;
    tg.crash().await;
    let (ok, reports, text) = verify(&tg, &[]).await;
    assert!(ok, "an open chain is not a broken one: {text}");
    let open = report(&reports, &second);
    assert_eq!(open["status"], "open", "{text}");
    assert_eq!(open["records"], 5, "{text}");
    assert!(
        text.contains("2 record(s) after its last checkpoint (seq 3) are not anchored"),
        "{text}"
    );
    let (ok, _, text) = verify(&tg, &["--strict"]).await;
    assert!(!ok, "--strict fails on a chain no shutdown closed: {text}");

    // Someone with table rights deletes the second chain's tail: the checkpoint at seq 3 outlives it.
    for trigger in ["decisions_append_only"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER TABLE decisions DISABLE TRIGGER {trigger}"
        )))
        .execute(&pool)
        .await
        .unwrap();
    }
    sqlx::query("DELETE FROM decisions WHERE writer_id = $1::uuid AND seq >= 3")
        .bind(&second)
        .execute(&pool)
        .await
        .unwrap();
    let (ok, reports, text) = verify(&tg, &[]).await;
    assert!(!ok, "{text}");
    let cut = report(&reports, &second);
    assert_eq!(cut["status"], "broken", "{text}");
    assert!(
        text.contains("missing tail: the stored periodic checkpoint")
            && text.contains("shows seq 3, the records end at seq 2"),
        "{text}"
    );

    // The whole first chain and its checkpoints go: only the anchor file still knows it existed.
    sqlx::query("ALTER TABLE chain_checkpoints DISABLE TRIGGER chain_checkpoints_append_only")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM decisions WHERE writer_id = $1::uuid")
        .bind(&first)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM chain_checkpoints WHERE writer_id = $1::uuid")
        .bind(&first)
        .execute(&pool)
        .await
        .unwrap();
    let (ok, reports, text) = verify(&tg, &[]).await;
    assert!(!ok, "{text}");
    assert_eq!(report(&reports, &first)["status"], "broken", "{text}");
    assert!(
        text.contains("dropped chain: the anchored shutdown checkpoint")
            && text.contains("shows seq 5, and no record of this writer remains"),
        "{text}"
    );
    // Without the anchor file the dropped chain is simply gone: that is what the anchor is for.
    let elsewhere = scratch.path().join("empty.jsonl");
    std::fs::write(&elsewhere, "").unwrap();
    let (_, reports, text) = verify(&tg, &["--anchors", elsewhere.to_str().unwrap()]).await;
    assert!(
        reports.iter().all(|r| r["writer_id"] != first.as_str()),
        "{text}"
    );
}

/// A rewritten chain (every hash recomputed after an edit, as an attacker who read the code would) still
/// disagrees with its checkpoints; a forged prune checkpoint is not in the anchor file.
#[tokio::test]
async fn a_recomputed_chain_and_a_forged_prune_are_caught_by_the_checkpoints() {
    let db = TestDatabase::create().await.unwrap();
    let pool = db.pool().await.unwrap();
    let upstream = Upstream::builder().start().await.unwrap();
    let policy = policy_dir_with(ALLOW_ALL).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let anchors = scratch.path().join("anchors.jsonl");
    let mut tg = configured(
        Tollgate::builder(db.url(), &upstream.url()).policy_dir(policy.path()),
        &anchors,
    )
    .start()
    .await
    .unwrap();
    let key = tg.create_agent("agent", &[]).await.unwrap();
    send(&tg, &key, 4).await;
    let writer = wait_for_anchor(&anchors, 4, None).await;
    assert!(tg.terminate().await.unwrap().success());

    // Rewrite record 2 and re-chain 2..4 with the real hash function.
    let store = tollgate::store::Store::connect(&db.url().to_string().into(), 2)
        .await
        .unwrap();
    let mut rows = store.writer_chain(writer.parse().unwrap()).await.unwrap();
    sqlx::query("ALTER TABLE decisions DISABLE TRIGGER decisions_append_only")
        .execute(&pool)
        .await
        .unwrap();
    rows[1].outcome = "deny".to_string();
    let mut prev = rows[0].hash.clone();
    for row in rows.iter_mut().skip(1) {
        row.prev_hash = prev.clone();
        row.hash = tollgate::audit::chain_hash(&prev, &tollgate::audit::content_hash(row));
        prev = row.hash.clone();
        sqlx::query("UPDATE decisions SET outcome = $1, prev_hash = $2, hash = $3 WHERE id = $4")
            .bind(&row.outcome)
            .bind(&row.prev_hash)
            .bind(&row.hash)
            .bind(row.id)
            .execute(&pool)
            .await
            .unwrap();
    }
    let (ok, _, text) = verify(&tg, &[]).await;
    assert!(!ok, "{text}");
    assert!(
        text.contains("does not match record seq 4: the chain was rewritten"),
        "{text}"
    );

    // A forged prune: a checkpoint inserted by hand lets the trigger delete the first records.
    sqlx::query("ALTER TABLE decisions ENABLE TRIGGER decisions_append_only")
        .execute(&pool)
        .await
        .unwrap();
    let refused = sqlx::query("DELETE FROM decisions WHERE writer_id = $1::uuid AND seq = 1")
        .bind(&writer)
        .execute(&pool)
        .await;
    assert!(
        refused.is_err(),
        "no prune checkpoint covers it: the trigger refuses"
    );
    sqlx::query(
        "INSERT INTO chain_checkpoints (writer_id, seq, hash, kind, at) VALUES ($1::uuid, 1, $2, 'prune', now())",
    )
    .bind(&writer)
    .bind(&rows[0].hash)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("DELETE FROM decisions WHERE writer_id = $1::uuid AND seq = 1")
        .bind(&writer)
        .execute(&pool)
        .await
        .unwrap();
    let (ok, _, text) = verify(&tg, &[]).await;
    assert!(!ok, "{text}");
    assert!(
        text.contains("the prune through seq 1") && text.contains("is not in the anchor file"),
        "{text}"
    );

    // An invented chain: a writer id of its own with start and shutdown checkpoints, all consistent, but
    // none of it in the anchor file although anchoring was on.
    let invented = uuid::Uuid::now_v7();
    for kind in ["start", "shutdown"] {
        sqlx::query(
            "INSERT INTO chain_checkpoints (writer_id, seq, hash, kind, at) VALUES ($1, 0, $2, $3, now())",
        )
        .bind(invented)
        .bind(tollgate::audit::GENESIS_HASH)
        .bind(kind)
        .execute(&pool)
        .await
        .unwrap();
    }
    let (ok, reports, text) = verify(&tg, &[]).await;
    assert!(!ok, "{text}");
    assert_eq!(
        report(&reports, &invented.to_string())["status"],
        "broken",
        "{text}"
    );
    assert!(text.contains("unanchored chain"), "{text}");
}

/// `audit prune` on both stores: old records go, a prune checkpoint (in the store and the anchor file)
/// carries each chain's head at the cut, and what is left verifies; the trigger still refuses any other
/// delete.
async fn prune_keeps_the_rest_verifiable(builder: TollgateBuilder, anchors: &Path) -> Tollgate {
    let mut tg = configured(builder, anchors).start().await.unwrap();
    let key = tg.create_agent("agent", &[]).await.unwrap();
    send(&tg, &key, 4).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cut = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    send(&tg, &key, 3).await;

    let before = cut.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let (ok, out, err) = tg
        .cli(&["audit", "prune", "--before", &before])
        .await
        .unwrap();
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("4 records removed; the chain now goes on from seq 4"),
        "{out}"
    );
    let (ok, out, _) = tg
        .cli(&["audit", "prune", "--before", &before])
        .await
        .unwrap();
    assert!(ok && out.contains("0 records pruned"), "{out}");
    let (ok, out, err) = tg.cli(&["decisions", "--json"]).await.unwrap();
    assert!(ok, "{err}");
    let left: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(left.as_array().unwrap().len(), 3);

    send(&tg, &key, 2).await;
    assert!(tg.terminate().await.unwrap().success(), "{}", tg.log());
    let (ok, reports, text) = verify(&tg, &["--strict"]).await;
    assert!(ok, "{text}");
    assert_eq!(reports.len(), 1, "{text}");
    assert_eq!(reports[0]["status"], "closed", "{text}");
    assert_eq!(reports[0]["pruned_through"], 4, "{text}");
    assert_eq!(reports[0]["first_seq"], 5, "{text}");
    assert_eq!(reports[0]["last_seq"], 9, "{text}");
    assert!(text.contains("were pruned at"), "{text}");
    let future = (chrono::Utc::now() + chrono::Duration::days(1))
        .format("%Y-%m-%d")
        .to_string();
    let (ok, _, err) = tg
        .cli(&["audit", "prune", "--before", &future])
        .await
        .unwrap();
    assert!(!ok && err.contains("in the future"), "{err}");
    tg
}

/// Pruning a closed chain to its end leaves it closed (and still verifiable from its prune checkpoint).
async fn prune_to_the_end(tg: &Tollgate) {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let (ok, out, err) = tg.cli(&["audit", "prune", "--before", &now]).await.unwrap();
    assert!(ok && out.contains("5 records removed"), "{out}{err}");
    let (ok, reports, text) = verify(tg, &["--strict"]).await;
    assert!(ok, "{text}");
    assert_eq!(reports[0]["status"], "closed", "{text}");
    assert_eq!(reports[0]["records"], 0, "{text}");
}

#[tokio::test]
async fn prune_on_postgres() {
    let db = TestDatabase::create().await.unwrap();
    let upstream = Upstream::builder().start().await.unwrap();
    let policy = policy_dir_with(ALLOW_ALL).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let builder = Tollgate::builder(db.url(), &upstream.url()).policy_dir(policy.path());
    let tg = prune_keeps_the_rest_verifiable(builder, &scratch.path().join("anchors.jsonl")).await;
    let pool = db.pool().await.unwrap();
    let refused = sqlx::query("DELETE FROM decisions").execute(&pool).await;
    assert!(refused.is_err(), "records after the cut stay append-only");
    let refused = sqlx::query("TRUNCATE decisions").execute(&pool).await;
    assert!(refused.is_err(), "and cannot be truncated");
    let refused = sqlx::query("DELETE FROM chain_checkpoints")
        .execute(&pool)
        .await;
    assert!(refused.is_err(), "checkpoints are append-only");
    for sql in [
        "UPDATE decision_outcomes SET upstream_status = 402",
        "DELETE FROM decision_outcomes",
        "TRUNCATE decision_outcomes",
    ] {
        let refused = sqlx::query(sql).execute(&pool).await;
        assert!(refused.is_err(), "outcomes are append-only: {sql}");
    }
    prune_to_the_end(&tg).await;
}

#[tokio::test]
async fn prune_on_the_embedded_store() {
    let upstream = Upstream::builder().start().await.unwrap();
    let policy = policy_dir_with(ALLOW_ALL).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let builder = Tollgate::builder("unused", &upstream.url())
        .embedded()
        .policy_dir(policy.path());
    let tg = prune_keeps_the_rest_verifiable(builder, &scratch.path().join("anchors.jsonl")).await;
    prune_to_the_end(&tg).await;
}
