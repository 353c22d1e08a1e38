//! Evaluates the policy library on one write (a DNS record create) a fixed number of times, for profilers:
//! `valgrind --tool=callgrind target/release/examples/policy_profile [POLICY_DIR] [N]` counts instructions,
//! which, unlike the criterion timings in benches/hot_path.rs, repeat exactly from run to run on a busy
//! machine. Used to compare edits of the library (BENCHMARKS.md, "Policy evaluation").

use std::time::{Duration, Instant};

use serde_json::json;
use tollgate::policy::Bundle;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../policies").to_string());
    let n = args.next();
    if n.as_deref() == Some("--listing") {
        return print_listing(&dir);
    }
    let n: u32 = n.map(|s| s.parse()).transpose()?.unwrap_or(10_000);
    let bundle = Bundle::load(std::path::Path::new(&dir), Duration::from_secs(1))?;
    let input = json!({
        "agent": {"id": "01a22a3e-8bd9-7692-938a-9fe1ed50dfa8", "name": "deployer", "team": "web",
                  "scopes": ["dns:write"], "labels": {"env": "dev", "zones": "023e105f4ecef8ad9ca31a8372d0c353"}},
        "run": {"id": "run-42", "on_behalf_of": "alice@example.com"},
        "request": {"provider": "cloudflare", "method": "POST",
                    "path": "/client/v4/zones/023e105f4ecef8ad9ca31a8372d0c353/dns_records", "query": {},
                    "headers": {"content-type": "application/json"},
                    "body": {"type": "A", "name": "www.example.com", "content": "198.51.100.4", "ttl": 3600},
                    "body_sha256": "00"},
        "action": {"name": "cloudflare.dns.create", "risk": "write",
                   "params": {"zone_id": "023e105f4ecef8ad9ca31a8372d0c353"}},
        "spend": {"window": "2026-11", "agent_provider_cents": 4200},
        "approval": null,
        "now": "2026-11-30T12:00:00Z",
    });
    let mut input = input;
    if std::env::var_os("POLICY_PROFILE_READ").is_some() {
        input["action"] = json!({"name": "cloudflare.zone.read", "risk": "read", "params": {}});
        input["request"]["method"] = json!("GET");
    }
    let first = bundle.evaluate(&input)?;
    let start = Instant::now();
    for _ in 0..n {
        bundle.evaluate(&input)?;
    }
    let each = start.elapsed() / n.max(1);
    println!(
        "{:?} {} reason(s); {n} evaluations, {each:?} each",
        first.outcome,
        first.reasons.len()
    );
    Ok(())
}

/// The bytecode the VM runs for the entrypoint, to see what each rule compiles to.
fn print_listing(dir: &str) -> anyhow::Result<()> {
    let mut engine = regorus::Engine::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rego") {
            engine.add_policy_from_file(&path)?;
        }
    }
    let entry: regorus::Rc<str> = "data.tollgate.decision".into();
    let compiled = engine.compile_with_entrypoint(&entry)?;
    let program = regorus::languages::rego::compiler::Compiler::compile_from_policy(
        &compiled,
        &["data.tollgate.decision"],
    )?;
    let config = regorus::rvm::program::AssemblyListingConfig::default();
    println!(
        "{}",
        regorus::rvm::program::generate_assembly_listing(&program, &config)
    );
    Ok(())
}
