//! `tollgate incident report|rollback-plan` (issue #17): the argument shapes and their output.
//!
//! Owns: reading the arguments, fetching the report or plan from the store (local) or the admin API
//! (`--server`), printing them (text or `--json`; the plan as its JSON file), and `rollback-plan --execute`'s
//! progress lines and exit code. Both modes print the same, from the admin API's shapes.
//! Must not: build reports or plans itself (`incident` does), or print the operator agent's key.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use chrono::Utc;
use clap::Subcommand;
use serde_json::Value;

use super::review::text;
use super::{Cli, connect, load_config, parse_since, remote};
use crate::incident::execute::{Gateway, StepOutcome, progress_path};
use crate::incident::{RollbackPlan, report, rollback_plan};

#[derive(Debug, Subcommand)]
pub enum IncidentCommand {
    /// Revoke the agent and every handle of a token it minted, delete each of its live minted tokens at the
    /// provider with tollgate's own credential, deny its pending approvals; print and record what was done
    /// and what failed. Idempotent: running it again finishes what failed.
    Contain {
        agent: String,
        /// Why (recorded with the containment and on each denied approval).
        #[arg(long)]
        reason: String,
        #[arg(long)]
        json: bool,
    },
    /// What an agent (and the handles it minted) did: decisions by outcome, money spent per budget window,
    /// tokens minted and their state, resources created.
    Report {
        /// The agent's name.
        agent: String,
        /// Only since this time: RFC 3339, a date (YYYY-MM-DD), or a duration ago like 2h, 7d. Tokens still
        /// live are listed whenever they were minted.
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Write a reviewable plan (JSON) of the calls that undo what an agent created, and the irreversible
    /// things a person must handle; or, with --execute PLAN, run a plan's calls through tollgate's agent
    /// listener as an operator-owned agent (each judged by the policy and recorded as a decision).
    RollbackPlan {
        /// The agent's name (not with --execute).
        #[arg(required_unless_present = "execute", conflicts_with = "execute")]
        agent: Option<String>,
        /// Only resources created since this time: RFC 3339, a date, or a duration ago like 2h, 7d.
        #[arg(long, conflicts_with = "execute")]
        since: Option<String>,
        /// Write the plan to this file instead of standard output.
        #[arg(long, conflicts_with = "execute")]
        out: Option<PathBuf>,
        /// Run this plan file's steps; finished steps are noted in PLAN.progress and skipped when run
        /// again.
        #[arg(long, value_name = "PLAN")]
        execute: Option<PathBuf>,
        /// tollgate's agent listener, e.g. http://127.0.0.1:8080 (with --execute; default: the configured
        /// server.listen on this machine).
        #[arg(long, value_name = "URL", requires = "execute")]
        proxy: Option<String>,
        /// The environment variable holding the operator-owned agent's key (with --execute); the key is
        /// never an argument.
        #[arg(long, value_name = "VAR", default_value = "TOLLGATE_AGENT_KEY")]
        agent_key_env: String,
        /// With --execute: one JSON object per step on standard output.
        #[arg(long)]
        json: bool,
    },
}

pub(super) async fn incident(cli: &Cli, command: &IncidentCommand) -> anyhow::Result<ExitCode> {
    match command {
        IncidentCommand::Contain {
            agent,
            reason,
            json,
        } => super::containment::contain(cli, agent, reason, *json).await,
        IncidentCommand::Report { agent, since, json } => {
            let since = since.as_deref().map(parse_since).transpose()?;
            let found = match remote(cli)? {
                Some(r) => Some(
                    r.get(&format!(
                        "/api/incidents/{}/report{}",
                        path_segment(agent),
                        crate::remote::query(&[("since", since.map(|t| t.to_rfc3339()))])
                    ))
                    .await?,
                ),
                None => {
                    let store = connect(&load_config(cli)?).await?;
                    report(&store, agent, since, Utc::now()).await?
                }
            };
            let Some(found) = found else {
                anyhow::bail!("no agent named {:?}", crate::display::reveal(agent, false));
            };
            if *json {
                println!("{}", serde_json::to_string_pretty(&found)?);
            } else {
                print_report(&found);
            }
            Ok(ExitCode::SUCCESS)
        }
        IncidentCommand::RollbackPlan {
            execute: Some(plan_file),
            proxy,
            agent_key_env,
            json,
            ..
        } => execute(cli, plan_file, proxy.as_deref(), agent_key_env, *json).await,
        IncidentCommand::RollbackPlan {
            agent, since, out, ..
        } => {
            let Some(agent) = agent else {
                anyhow::bail!("name the agent, or give --execute PLAN");
            };
            let since = since.as_deref().map(parse_since).transpose()?;
            let Some(plan) = recorded_plan(cli, agent, since).await? else {
                anyhow::bail!("no agent named {:?}", crate::display::reveal(agent, false));
            };
            let text = serde_json::to_string_pretty(&plan)?;
            match out {
                Some(path) => {
                    std::fs::write(path, format!("{text}\n"))
                        .with_context(|| format!("writing {}", path.display()))?;
                    eprintln!(
                        "wrote {}: {} step(s), {} irreversible; review it, then run `tollgate incident rollback-plan \
                         --execute {}`",
                        path.display(),
                        plan.steps.len(),
                        plan.irreversible.len(),
                        path.display()
                    );
                }
                None => println!("{text}"),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The rollback plan for `agent` as tollgate's records stand now: from the admin API with `--server`, else
/// from the store this machine's config names.
async fn recorded_plan(
    cli: &Cli,
    agent: &str,
    since: Option<chrono::DateTime<Utc>>,
) -> anyhow::Result<Option<RollbackPlan>> {
    Ok(match remote(cli)? {
        Some(r) => {
            let value = r
                .get(&format!(
                    "/api/incidents/{}/rollback-plan{}",
                    path_segment(agent),
                    crate::remote::query(&[("since", since.map(|t| t.to_rfc3339()))])
                ))
                .await?;
            Some(RollbackPlan::parse(&value.to_string())?)
        }
        None => {
            let store = connect(&load_config(cli)?).await?;
            rollback_plan(&store, agent, since, Utc::now()).await?
        }
    })
}

async fn execute(
    cli: &Cli,
    plan_file: &std::path::Path,
    proxy: Option<&str>,
    key_env: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(plan_file)
        .with_context(|| format!("reading {}", plan_file.display()))?;
    let mut plan = RollbackPlan::parse(&text)?;
    // A plan file is text anyone with the file can edit between review and run: each step is sent only if
    // it is still, call for call, the inverse of something tollgate recorded this agent creating (the plan
    // tollgate would make now; with --server, as the admin API makes it, which takes an operator).
    let Some(recorded) = recorded_plan(cli, &plan.agent, plan.since).await? else {
        anyhow::bail!(
            "the plan is for agent {:?}, which tollgate does not know: make a new plan",
            crate::display::reveal(&plan.agent, false)
        );
    };
    if plan
        .agent_ids
        .iter()
        .any(|id| !recorded.agent_ids.contains(id))
    {
        anyhow::bail!(
            "the plan names agent ids that are not agent {:?} or its handles (another agent of that name?): make a \
             new plan",
            crate::display::reveal(&recorded.agent, false)
        );
    }
    plan.agent = recorded.agent.clone();
    // Whose plan this is, before anything is sent: a file swapped for another agent's plan says so here.
    eprintln!(
        "rolling back agent {:?}: {} step(s) from the plan made {} (each checked against tollgate's records)",
        crate::display::reveal(&plan.agent, false),
        plan.steps.len(),
        plan.generated_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    let proxy = match proxy {
        Some(p) => p.to_string(),
        None => {
            // The configured listener on this machine; one bound to every address is reached on loopback.
            let mut listen = load_config(cli)?.server.listen;
            if listen.ip().is_unspecified() {
                listen.set_ip(match listen.ip() {
                    std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                });
            }
            format!("http://{listen}")
        }
    };
    let gateway = Gateway::from_env(&proxy, key_env, cli.insecure_http)?;
    let progress = progress_path(plan_file);
    let outcomes = crate::incident::execute::run(&plan, &recorded, &gateway, &progress, |step, outcome| {
        if json {
            println!("{}", outcome.to_json(step));
            return;
        }
        let call = format!("{} /{}{}", step.call.method, step.call.provider, step.call.path);
        let call = crate::display::reveal(&call, false);
        let decision = |d: &Option<String>| d.clone().unwrap_or_else(|| "-".to_string());
        match outcome {
            StepOutcome::Done { status, decision_id } => {
                println!("done      {call}  HTTP {status}  decision {}", decision(decision_id))
            }
            StepOutcome::AlreadyGone { status, decision_id } => println!(
                "gone      {call}  HTTP {status} (nothing left to undo)  decision {}",
                decision(decision_id)
            ),
            StepOutcome::DoneEarlier { decision_id } => {
                println!("skipped   {call}  finished by an earlier run, decision {}", decision(decision_id))
            }
            StepOutcome::AwaitingApproval { approval_id, decision_id } => println!(
                "approval  {call}  needs a reviewer: approve {approval_id} (`tollgate approvals approve {approval_id}`), \
                 then run this plan again  decision {}",
                decision(decision_id)
            ),
            StepOutcome::Failed { status, decision_id, message } => println!(
                "FAILED    {call}  {}  decision {}: {}",
                status.map(|s| format!("HTTP {s}")).unwrap_or_else(|| "no answer".to_string()),
                decision(decision_id),
                crate::display::reveal(message, false)
            ),
        }
    })
    .await?;
    let unfinished = outcomes.iter().filter(|o| !o.finished()).count();
    if !json {
        for item in &plan.irreversible {
            println!(
                "IRREVERSIBLE  {} {}: {} — {}",
                item.resource.kind,
                crate::display::reveal(&item.resource.id, false),
                item.why,
                item.human
            );
        }
        println!(
            "{} step(s): {} finished, {} not finished; progress in {}",
            outcomes.len(),
            outcomes.len() - unfinished,
            unfinished,
            progress.display()
        );
    }
    Ok(if unfinished == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A name as one URL path segment.
fn path_segment(name: &str) -> String {
    percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn dollars(cents: &Value) -> String {
    let cents = cents.as_i64().unwrap_or(0);
    format!("${}.{:02}", cents / 100, (cents % 100).abs())
}

fn print_report(r: &Value) {
    let agent = &r["agent"];
    println!("agent {} ({})", text(agent, "name"), text(agent, "status"));
    for h in r["handles"].as_array().into_iter().flatten() {
        println!(
            "  handle {} ({}), token {}",
            text(h, "name"),
            text(h, "status"),
            text(h, "minted_token_id")
        );
    }
    match r["since"].as_str() {
        Some(since) => println!("since {since}"),
        None => println!("since the first record"),
    }
    let d = &r["decisions"];
    let by: Vec<String> = d["by_outcome"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    println!("\ndecisions: {} ({})", d["total"], by.join(", "));
    for c in d["by_code"].as_array().into_iter().flatten() {
        if let Some(code) = c["code"].as_str() {
            println!(
                "  {} {}: {}",
                text(c, "outcome"),
                crate::display::reveal(code, false),
                c["count"]
            );
        }
    }
    let s = &r["spend"];
    println!(
        "\nspend: committed {}, reserved {}",
        dollars(&s["committed_cents"]),
        dollars(&s["reserved_cents"])
    );
    for w in s["windows"].as_array().into_iter().flatten() {
        println!(
            "  {} {} {} {}: committed {}, reserved {} (flagged {}), released {}",
            text(w, "period"),
            text(w, "provider"),
            text(w, "budget"),
            text(w, "subject"),
            dollars(&w["committed_cents"]),
            dollars(&w["reserved_cents"]),
            dollars(&w["flagged_cents"]),
            dollars(&w["released_cents"])
        );
    }
    let tokens = r["tokens"].as_array().cloned().unwrap_or_default();
    println!("\ntokens minted: {}", tokens.len());
    for t in &tokens {
        println!(
            "  {} {} {:?}: {} ({}), expires {}, minted by {}",
            text(t, "provider"),
            text(t, "token_id"),
            text(t, "name"),
            text(t, "status"),
            text(t, "custody"),
            t["expires_on"].as_str().unwrap_or("never"),
            text(t, "minted_by")
        );
    }
    let changes = r["changes"].as_array().cloned().unwrap_or_default();
    println!(
        "\ncalls that could change something (allowed, newest first): {}{}",
        changes.len(),
        if r["changes_truncated"] == true {
            " (the newest only; --json and the decision log have the rest)"
        } else {
            ""
        }
    );
    for c in &changes {
        println!(
            "  {} {} {} {} ({}, by {}): {}, decision {}",
            text(c, "at"),
            text(c, "action"),
            text(c, "method"),
            text(c, "path"),
            text(c, "risk"),
            text(c, "agent_name"),
            c["upstream_status"]
                .as_i64()
                .map_or("no answer recorded".to_string(), |s| format!("HTTP {s}")),
            text(c, "decision_id")
        );
    }
    let resources = r["resources"].as_array().cloned().unwrap_or_default();
    let live = resources.iter().filter(|x| x["status"] == "live").count();
    println!("\nresources created: {} ({live} live)", resources.len());
    for x in &resources {
        let place = [
            ("zone", "zone_id"),
            ("account", "account_id"),
            ("stripe-account", "stripe_account"),
        ]
        .iter()
        .filter_map(|(label, key)| {
            x[*key]
                .as_str()
                .map(|v| format!(" {label} {}", crate::display::reveal(v, false)))
        })
        .collect::<String>();
        let again = x["updated_at"]
            .as_str()
            .map(|at| {
                format!(
                    "; again {} (decision {})",
                    crate::display::reveal(at, false),
                    text(x, "updated_by_decision")
                )
            })
            .unwrap_or_default();
        let others = x["also_by"]
            .as_array()
            .map(|o| {
                let names: Vec<String> = o.iter().map(|a| text(a, "agent").into_owned()).collect();
                format!("; also by {}", names.join(", "))
            })
            .unwrap_or_default();
        println!(
            "  {} {} {}{place}: {}, by {} ({}, decision {}, {}{again}{others})",
            text(x, "provider"),
            text(x, "kind"),
            text(x, "id"),
            text(x, "status"),
            text(x, "agent"),
            text(x, "action"),
            text(x, "decision_id"),
            text(x, "created_at")
        );
    }
}
