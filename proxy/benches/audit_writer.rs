//! Audit writer throughput against a real Postgres: durable decisions per second with group commit, beside
//! a baseline of one transaction per decision, in the same run.
//!
//! `DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo bench -p tollgate --bench audit_writer`
//! It creates and drops a database of its own. Without DATABASE_URL it says so and exits.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use secrecy::SecretString;
use serde_json::json;
use sqlx::Connection as _;
use tollgate::audit::{AuditWriter, DecisionRecord};
use tollgate::metrics::Metrics;
use tollgate::store::{DecisionRow, NewReservation, Reservation, Store, WindowKey};
use uuid::Uuid;

/// In-flight requests; overridable with TOLLGATE_BENCH_CONCURRENCY.
const CONCURRENCY: usize = 256;
const GROUP_RECORDS: usize = 100_000;
const BASELINE_RECORDS: usize = 5_000;
/// The default `audit.writers` on Postgres.
const WRITERS: usize = tollgate::config::DEFAULT_AUDIT_WRITERS;

fn record() -> DecisionRecord {
    DecisionRecord {
        id: Uuid::now_v7(),
        at: Utc::now(),
        agent_id: Some(Uuid::now_v7()),
        agent_name: Some("deployer".into()),
        run_id: Some("run-42".into()),
        on_behalf_of: Some("alice@example.com".into()),
        provider: "cloudflare".into(),
        method: "POST".into(),
        path: "/client/v4/zones/023e105f4ecef8ad9ca31a8372d0c353/dns_records".into(),
        query: None,
        action: "cloudflare.dns.create".into(),
        risk: "write".into(),
        outcome: "allow".into(),
        code: None,
        rules: vec![],
        reasons: json!([]),
        policy_revision: Some("ba06ce3d848d0ee0".into()),
        charge_cents: None,
        approval_id: None,
        policy_outcome: Some("allow".into()),
        shadow_outcome: None,
        input: Some(json!({
            "agent": {"id": "01a22a3e-8bd9-7692-938a-9fe1ed50dfa8", "name": "deployer", "team": "web",
                      "scopes": ["dns:write"], "labels": {"env": "dev"}},
            "run": {"id": "run-42", "on_behalf_of": "alice@example.com"},
            "request": {"provider": "cloudflare", "method": "POST",
                        "path": "/client/v4/zones/023e105f4ecef8ad9ca31a8372d0c353/dns_records", "query": {},
                        "headers": {"content-type": "application/json", "user-agent": "cloudflare-typescript/4"},
                        "body": {"type": "A", "name": "www.example.com", "content": "198.51.100.4", "ttl": 3600},
                        "body_sha256": "4f1e0c2b3d9a8e7f6c5b4a3928170615f4e3d2c1b0a9988776655443322110ff"},
            "action": {"name": "cloudflare.dns.create", "risk": "write",
                       "params": {"zone_id": "023e105f4ecef8ad9ca31a8372d0c353"}},
            "spend": {"window": "2026-11"}, "approval": null, "now": "2026-11-30T12:00:00Z"})
        .to_string()),
    }
}

fn main() -> anyhow::Result<()> {
    let Ok(url) = std::env::var("DATABASE_URL") else {
        println!("audit_writer: set DATABASE_URL to a Postgres server to run this benchmark");
        return Ok(());
    };
    // cargo bench passes --bench; nothing to parse.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(url))
}

async fn run(url: String) -> anyhow::Result<()> {
    let name = format!("tollgate_bench_{}", Uuid::now_v7().simple());
    let mut admin = sqlx::PgConnection::connect(&url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await?;
    let (base, _) = url.rsplit_once('/').unwrap_or((&url, ""));
    let db_url = SecretString::from(format!("{base}/{name}"));
    let result = measure(&db_url).await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await?;
    result
}

async fn measure(url: &SecretString) -> anyhow::Result<()> {
    let store = Store::connect(url, 64).await?;
    store.migrate().await?;

    // Baseline: one transaction per decision, CONCURRENCY at a time.
    let started = Instant::now();
    let writer_id = Uuid::now_v7();
    let next = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let store = store.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let seq = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if seq >= BASELINE_RECORDS as i64 {
                    break;
                }
                let r = record();
                let row = DecisionRow {
                    id: r.id,
                    at: r.at,
                    writer_id,
                    seq,
                    prev_hash: String::new(),
                    hash: String::new(),
                    agent_id: r.agent_id,
                    agent_name: r.agent_name,
                    run_id: r.run_id,
                    on_behalf_of: r.on_behalf_of,
                    provider: r.provider,
                    method: r.method,
                    path: r.path,
                    query: r.query,
                    action: r.action,
                    risk: r.risk,
                    outcome: r.outcome,
                    code: r.code,
                    rules: "[]".into(),
                    reasons: r.reasons.to_string(),
                    policy_revision: r.policy_revision,
                    charge_cents: r.charge_cents,
                    approval_id: r.approval_id,
                    input: r.input,
                    policy_outcome: r.policy_outcome,
                    shadow_outcome: r.shadow_outcome,
                };
                store
                    .insert_decisions(&[row])
                    .await
                    .expect("baseline insert");
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let baseline = BASELINE_RECORDS as f64 / started.elapsed().as_secs_f64();

    // Group commit through the real writer.
    let metrics = Arc::new(Metrics::new());
    let (audit, writers) = AuditWriter::start(
        store.clone(),
        WRITERS,
        1024,
        tollgate::audit::Checkpoints::default(),
        metrics.clone(),
    );
    let started = Instant::now();
    let concurrency = std::env::var("TOLLGATE_BENCH_CONCURRENCY")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(CONCURRENCY);
    let per_task = GROUP_RECORDS / concurrency;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let audit = audit.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_task {
                audit.record(record()).await.expect("recorded");
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let total = per_task * concurrency;
    let group = total as f64 / started.elapsed().as_secs_f64();
    let batches = metrics.audit_batch_size.get_sample_count();

    println!("audit writer, {total} durable decisions, {concurrency} concurrent requests:");
    println!(
        "  one transaction per decision (baseline, 64 connections): {baseline:>9.0} decisions/s"
    );
    println!(
        "  group commit ({WRITERS} writers, batches up to 1024):       {group:>9.0} decisions/s"
    );
    println!(
        "  ratio group/baseline: {:.1}x; mean batch {:.0} records",
        group / baseline,
        total as f64 / batches as f64
    );
    let commits = metrics
        .audit_commit_duration_seconds
        .get_sample_count()
        .max(1);
    println!(
        "  mean commit (one transaction, in the writer): {:.2} ms",
        1000.0 * metrics.audit_commit_duration_seconds.get_sample_sum() / commits as f64
    );
    // The writers hold a connection each until their queue closes; the pool closes once they gave them back.
    drop(audit);
    writers.await?;
    reservation_latency(&store).await;
    store.close().await;
    Ok(())
}

/// What a charged request adds: one reservation (the conditional UPDATE in its transaction) plus its
/// settlement, one request at a time, beside a plain `SELECT 1` round trip on the same pool.
async fn reservation_latency(store: &Store) {
    const N: usize = 2000;
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let mut ping = Vec::with_capacity(N);
    for _ in 0..N {
        let t = Instant::now();
        store.ping().await;
        ping.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let window = WindowKey {
        budget: "agent-provider-month".into(),
        subject: format!("agent:{}/stripe", Uuid::now_v7()),
        period: "2026-11".into(),
    };
    let (mut reserve, mut settle) = (Vec::with_capacity(N), Vec::with_capacity(N));
    for _ in 0..N {
        let id = Uuid::now_v7();
        let r = NewReservation {
            window: &window,
            provider: "stripe",
            agent_id: Uuid::nil(),
            decision_id: id,
            cents: 1,
            cap_cents: i64::MAX / 2,
            idempotency: None,
            fingerprint: "bench",
        };
        let t = Instant::now();
        let outcome = store.reserve(&r).await.expect("reserve");
        reserve.push(t.elapsed().as_secs_f64() * 1e6);
        assert_eq!(outcome, Reservation::Reserved);
        let t = Instant::now();
        store.settle(id, true).await.expect("settle");
        settle.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let (ping, reserve, settle) = (median(ping), median(reserve), median(settle));
    println!("spend ledger, {N} sequential charged requests:");
    println!("  SELECT 1 round trip (baseline):   median {ping:>7.0} us");
    println!(
        "  reserve (before forwarding):      median {reserve:>7.0} us  ({:.1}x the round trip)",
        reserve / ping
    );
    println!(
        "  settle (after the response):      median {settle:>7.0} us  ({:.1}x the round trip)",
        settle / ping
    );
}
