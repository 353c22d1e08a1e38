//! `tollgate incident contain AGENT --reason …`: runs [`crate::containment`] locally (this machine's
//! database and provider credentials) or through the admin API (`--server`), and prints what was done and
//! what failed. Exit status 0 when everything was done, 1 when a token deletion failed (run it again).
//! Must not: print a secret; the report holds token ids and names only.

use std::process::ExitCode;

use anyhow::Context;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};

use super::{Cli, connect, load_config, operator, remote, text};

pub(super) async fn contain(
    cli: &Cli,
    agent: &str,
    reason: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let reason = reason.trim();
    anyhow::ensure!(
        !reason.is_empty(),
        "--reason must say why (it is recorded with the containment)"
    );
    let report = match remote(cli)? {
        Some(r) => {
            let path = format!(
                "/api/incidents/{}/contain",
                utf8_percent_encode(agent, NON_ALPHANUMERIC)
            );
            r.post(&path, Some(&json!({"reason": reason}))).await?
        }
        None => {
            let config = load_config(cli)?;
            let store = connect(&config).await?;
            let forwarder = crate::forward::Forwarder::new(&config).map_err(anyhow::Error::msg)?;
            // The provider's messages in the report are screened for every secret tollgate holds, as
            // the running proxy screens its answers.
            let vault = crate::vault::Vault::from_config(&config.vault)
                .map_err(|errors| anyhow::anyhow!(errors.join("; ")))?;
            let held = crate::vault::held::HeldSecrets::new(
                store.clone(),
                std::sync::Arc::new(vault),
                forwarder.own_secrets(),
                std::sync::Arc::new(crate::metrics::Metrics::new()),
            );
            held.refresh(true)
                .await
                .context("reading the vaulted secrets to screen the report with")?;
            let report = crate::containment::contain(
                &store,
                &forwarder,
                &held.needles_with(&[]),
                agent,
                reason,
                &operator(),
                "cli",
            )
            .await
            .with_context(|| format!("containing agent '{agent}'"))?;
            serde_json::to_value(report)?
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(if report["complete"] == true {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_report(report: &Value) {
    let names = |key: &str| {
        report[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(|s| crate::display::reveal(s, false).into_owned())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    println!(
        "containment of agent '{}' (recorded as admin action {})",
        text(report, "agent"),
        text(report, "action_id")
    );
    let revoked = names("revoked");
    let already = names("already_revoked");
    println!(
        "  revoked: {}{}",
        if revoked.is_empty() {
            "none now".to_string()
        } else {
            revoked.join(", ")
        },
        if already.is_empty() {
            String::new()
        } else {
            format!(" (already revoked: {})", already.join(", "))
        }
    );
    let denied = report["approvals_denied"].as_array().map_or(0, Vec::len);
    println!("  pending approvals denied: {denied}");
    let tokens = report["tokens"].as_array().cloned().unwrap_or_default();
    if tokens.is_empty() {
        println!("  minted tokens: none live");
    }
    for t in &tokens {
        let name = t["name"]
            .as_str()
            .map(|n| format!(" ({})", crate::display::reveal(n, false)))
            .unwrap_or_default();
        match t["result"].as_str() {
            Some("failed") => println!(
                "  token {}{name}: FAILED after {} attempt(s): {}",
                text(t, "token_id"),
                t["attempts"],
                text(t, "error")
            ),
            Some("already_gone") => println!(
                "  token {}{name}: already gone at the provider; recorded deleted",
                text(t, "token_id")
            ),
            _ => println!(
                "  token {}{name}: deleted at the provider",
                text(t, "token_id")
            ),
        }
    }
    if report["complete"] == true {
        println!("complete.");
    } else {
        println!("NOT complete: run the same command again to retry what failed.");
    }
}
