//! The reviewer and operator commands — `approvals`, `decisions`, `spend`, `agents`, `reviewers`,
//! `freeze`/`unfreeze`, `policy status` — in both modes: on the configured store (local: what the admin API
//! would do, recorded as `local:<user>`), or with `--server` through the admin API as the reviewer whose
//! token is in `--token-env`.
//!
//! Owns: which endpoint each command calls, and the printing of each admin API shape (`print_*`), which
//! both modes share: local mode builds the same JSON with `admin::*_json` before printing it.
//! Must not: print a token other than the one a create/rotate call returns to be shown once, or hold
//! rules of its own: the server (remote) or the owning module (local) decides.

use std::collections::BTreeMap;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};

use super::{
    AgentsCommand, ApprovalsCommand, Cli, ReviewersCommand, SpendCommand, connect, load_config,
    local_actor, operator, remote,
};
use crate::identity::{self, NewAgent};
use crate::remote::Remote;
use crate::store::DecisionFilter;

/// The API's largest page (`admin::MAX_PAGE`); longer listings follow the cursor.
const API_PAGE: i64 = 500;

/// Text an agent may have chosen (a path, a header, a policy reason quoting its body), made safe for a
/// reviewer's terminal: control characters (ESC and the rest of C0, DEL, C1, which would move the cursor,
/// rewrite what was printed above or retitle the window) and invisible or direction-changing ones are shown
/// escaped, `\u{1b}`, not sent raw (`display::reveal`).
pub(super) fn shown(text: &str) -> std::borrow::Cow<'_, str> {
    crate::display::reveal(text, false)
}

/// A string field of an API object, `""` when absent; safe to print (see [`shown`]).
pub(super) fn text<'a>(v: &'a Value, key: &str) -> std::borrow::Cow<'a, str> {
    shown(v[key].as_str().unwrap_or_default())
}

/// A string field, `-` when absent or null; safe to print (see [`shown`]).
fn or_dash(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::String(s) => shown(s).into_owned(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

/// A time field as `YYYY-MM-DDTHH:MM:SS(.mmm)Z`, `-` when absent.
fn time(v: &Value, key: &str, millis: bool) -> String {
    match v[key]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
    {
        Some(t) if millis => t
            .with_timezone(&Utc)
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string(),
        Some(t) => t
            .with_timezone(&Utc)
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string(),
        None => "-".to_string(),
    }
}

/// A path segment for an endpoint (names may hold characters a path may not).
fn segment(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

/// The array under `key` of an API answer (`{"approvals": [...]}`), so both modes print the same list.
fn listed(v: Value, key: &str) -> Vec<Value> {
    match v {
        Value::Object(mut map) => match map.remove(key) {
            Some(Value::Array(items)) => items,
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// `--by` names the local operator; through the API the server records the authenticated reviewer.
fn refuse_by(by: &Option<String>) -> anyhow::Result<()> {
    if by.is_some() {
        anyhow::bail!(
            "--by is for the local CLI; with --server the server records the reviewer the token belongs to"
        );
    }
    Ok(())
}

// ---- decisions ------------------------------------------------------------------------------------------

/// `GET /api/decisions` with the filter, following the cursor until `filter.limit` rows.
pub(super) async fn remote_decisions(
    r: &Remote,
    filter: DecisionFilter,
) -> anyhow::Result<Vec<Value>> {
    let since = filter
        .since
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
    let mut out: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = (filter.limit - out.len() as i64).clamp(1, API_PAGE);
        let q = crate::remote::query(&[
            ("agent", filter.agent.clone()),
            ("action", filter.action.clone()),
            ("outcome", filter.outcome.clone()),
            ("since", since.clone()),
            ("limit", Some(page.to_string())),
            ("cursor", cursor.take()),
        ]);
        let mut answer = r.get(&format!("/api/decisions{q}")).await?;
        cursor = answer["next_cursor"].as_str().map(str::to_string);
        let items = listed(answer.take(), "decisions");
        let empty = items.is_empty();
        out.extend(items);
        if empty || cursor.is_none() || out.len() as i64 >= filter.limit {
            out.truncate(filter.limit.max(0) as usize);
            return Ok(out);
        }
    }
}

pub(super) fn print_decisions(items: &[Value], json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(&items);
    }
    for d in items {
        let upstream = d["upstream"]["status"]
            .as_i64()
            .map(|s| s.to_string())
            .unwrap_or_default();
        println!(
            "{}  {}  {:<10} {:<8} {:<32} {:<8} {:<22} {}",
            time(d, "at", true),
            text(d, "id"),
            d["agent"].as_str().unwrap_or("-"),
            text(d, "method"),
            text(d, "action"),
            text(d, "outcome"),
            text(d, "code"),
            upstream
        );
    }
    Ok(())
}

// ---- spend ----------------------------------------------------------------------------------------------

pub(super) fn print_spend(spend: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(spend);
    }
    println!(
        "{:<22} {:<52} {:>10} {:>10} {:>10} {:>10}",
        "budget", "subject", "cap", "committed", "reserved", "flagged"
    );
    for w in spend["windows"].as_array().into_iter().flatten() {
        println!(
            "{:<22} {:<52} {:>10} {:>10} {:>10} {:>10}",
            text(w, "budget"),
            text(w, "subject"),
            w["cap_cents"],
            w["committed_cents"],
            w["reserved_cents"],
            w["flagged_cents"]
        );
    }
    println!("(cents, period {})", text(spend, "period"));
    Ok(())
}

fn print_flagged(flagged: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(flagged);
    }
    let rows = flagged["reservations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    println!(
        "{:<36}  {:<20}  {:<10} {:>10}  {:<22} subject",
        "decision", "reserved at", "provider", "cents", "budget"
    );
    for r in &rows {
        println!(
            "{:<36}  {:<20}  {:<10} {:>10}  {:<22} {}",
            text(r, "decision_id"),
            time(r, "created_at", false),
            text(r, "provider"),
            r["cents"],
            text(r, "budget"),
            text(r, "subject")
        );
    }
    println!("{} flagged reservation(s)", rows.len());
    Ok(())
}

pub(super) async fn spend_command(cli: &Cli, command: &SpendCommand) -> anyhow::Result<ExitCode> {
    let remote = remote(cli)?;
    match command {
        SpendCommand::Flagged { json } => {
            let flagged = match &remote {
                Some(r) => r.get("/api/spend/flagged").await?,
                None => {
                    let store = connect(&load_config(cli)?).await?;
                    json!({"reservations": crate::ledger::Ledger::new(store).flagged().await?})
                }
            };
            print_flagged(&flagged, *json)?;
            Ok(ExitCode::SUCCESS)
        }
        SpendCommand::Settle {
            id,
            committed,
            released: _,
            note,
            by,
        } => {
            let verb = if *committed { "committed" } else { "released" };
            let (cents, by) = match &remote {
                Some(r) => {
                    refuse_by(by)?;
                    let settled = r
                        .post(
                            &format!("/api/spend/reservations/{id}/settle"),
                            Some(&json!({"outcome": verb, "note": note})),
                        )
                        .await?;
                    (settled["cents"].clone(), text(&settled, "by").to_string())
                }
                None => {
                    let store = connect(&load_config(cli)?).await?;
                    let how = if *committed {
                        crate::store::ManualSettlement::Committed
                    } else {
                        crate::store::ManualSettlement::Released
                    };
                    let by = local_actor(by);
                    let ledger = crate::ledger::Ledger::new(store);
                    match ledger.settle_flagged(*id, how, &by, note).await? {
                        Some(cents) => (json!(cents), by),
                        None => {
                            eprintln!(
                                "reservation {id} is not a flagged reservation that is still open"
                            );
                            return Ok(ExitCode::FAILURE);
                        }
                    }
                }
            };
            println!("reservation {id}: {cents} cents {verb} by {by}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

// ---- freeze ---------------------------------------------------------------------------------------------

pub(super) fn print_freeze(state: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(state);
    }
    let since = match (&state["changed_by"], &state["changed_at"]) {
        (Value::String(by), _) => format!(" since {} by {by}", time(state, "changed_at", false)),
        _ => String::new(),
    };
    let reason = state["reason"]
        .as_str()
        .map(|r| format!(": {}", shown(r)))
        .unwrap_or_default();
    if state["frozen"] == true {
        println!("agent traffic is FROZEN{since}{reason}");
    } else {
        println!("agent traffic flows (not frozen){since}{reason}");
    }
    Ok(())
}

/// `freeze` / `unfreeze`: the store's switch, which every replica polls; recorded as an admin action with
/// the reason. Prints the switch as `freeze status` shows it afterwards.
pub(super) async fn set_frozen(
    cli: &Cli,
    frozen: bool,
    reason: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let reason = reason.map(str::trim).filter(|r| !r.is_empty());
    let state = match remote(cli)? {
        Some(r) => {
            let body = reason.map(|r| json!({"reason": r}));
            if frozen {
                r.post("/api/freeze", body.as_ref()).await?;
            } else {
                r.delete("/api/freeze", body.as_ref()).await?;
            }
            r.get("/api/freeze").await?
        }
        None => {
            let store = connect(&load_config(cli)?).await?;
            let actor = operator();
            store.set_frozen(frozen, &actor).await?;
            let mut detail = json!({"via": "cli"});
            if let Some(r) = reason {
                detail["reason"] = json!(r);
            }
            store
                .record_admin_action(
                    &actor,
                    if frozen { "freeze" } else { "unfreeze" },
                    None,
                    &detail,
                )
                .await?;
            if !json {
                eprintln!(
                    "(running servers apply it at their next control poll, within a second or so)"
                );
            }
            serde_json::to_value(store.freeze_state().await?)?
        }
    };
    print_freeze(&state, json)?;
    Ok(ExitCode::SUCCESS)
}

// ---- policy ---------------------------------------------------------------------------------------------

pub(super) fn print_policy_status(status: &Value, json: bool, remote: bool) -> anyhow::Result<()> {
    if json {
        return print_json(status);
    }
    println!(
        "policy revision {} ({}, {}), loaded {}",
        text(status, "revision"),
        text(status, "engine"),
        text(status, "dir"),
        time(status, "loaded_at", false)
    );
    if let Some(shadow) = status["shadow"].as_object() {
        println!(
            "shadow revision {} ({})",
            shadow
                .get("revision")
                .and_then(Value::as_str)
                .unwrap_or_default(),
            shadow
                .get("dir")
                .and_then(Value::as_str)
                .unwrap_or_default()
        );
    }
    if remote {
        println!(
            "reloads: {} ok, {} failed; last attempt {}",
            status["reloads_ok"],
            status["reloads_failed"],
            time(status, "last_reload_attempt", false)
        );
        if let Some(e) = status["last_error"].as_str() {
            println!("last reload error: {e}");
        }
    } else {
        println!(
            "(the configured bundle, loaded here; --server shows what a running server has live)"
        );
    }
    Ok(())
}

// ---- agents ---------------------------------------------------------------------------------------------

pub(super) async fn agents(cli: &Cli, cmd: &AgentsCommand) -> anyhow::Result<ExitCode> {
    let remote = remote(cli)?;
    match cmd {
        AgentsCommand::Create(args) => {
            let mut labels = BTreeMap::new();
            for l in &args.labels {
                let (k, v) = l
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--label '{l}' is not k=v"))?;
                labels.insert(k.to_string(), v.to_string());
            }
            let created = match &remote {
                Some(r) => {
                    r.post(
                        "/api/agents",
                        Some(
                            &json!({"name": args.name, "team": args.team, "scopes": args.scopes,
                                     "labels": labels, "expires": args.expires}),
                        ),
                    )
                    .await?
                }
                None => {
                    let store = connect(&load_config(cli)?).await?;
                    let expires_at = match &args.expires {
                        Some(e) => Some(
                            identity::parse_expiry(e, Utc::now()).map_err(anyhow::Error::msg)?,
                        ),
                        None => None,
                    };
                    let new = NewAgent {
                        name: args.name.clone(),
                        team: args.team.clone(),
                        scopes: args.scopes.clone(),
                        labels,
                        expires_at,
                        created_by: Some(operator()),
                    };
                    let (row, key) = identity::create_agent(&store, new).await?;
                    store
                        .record_admin_action(
                            &operator(),
                            "agent.create",
                            Some(&row.name),
                            &json!({"via": "cli", "scopes": row.scopes}),
                        )
                        .await?;
                    let mut v = crate::admin::agent_json(&row);
                    v["key"] = Value::String(key.expose().to_string());
                    v
                }
            };
            if args.json {
                print_json(&created)?;
            } else {
                println!(
                    "created agent '{}' ({})",
                    text(&created, "name"),
                    text(&created, "id")
                );
                println!("key (shown once, store it now): {}", text(&created, "key"));
            }
        }
        AgentsCommand::List { json } => {
            let items = match &remote {
                Some(r) => listed(r.get("/api/agents").await?, "agents"),
                None => {
                    let store = connect(&load_config(cli)?).await?;
                    store
                        .list_agents()
                        .await?
                        .iter()
                        .map(crate::admin::agent_json)
                        .collect()
                }
            };
            if *json {
                print_json(&items)?;
            } else {
                for a in &items {
                    let scopes: Vec<&str> = a["scopes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    println!(
                        "{:<24} {:<8} team={:<12} key={}…  scopes={}  expires={}",
                        text(a, "name"),
                        text(a, "status"),
                        a["team"].as_str().unwrap_or("-"),
                        text(a, "key_prefix"),
                        shown(&scopes.join(",")),
                        a["expires_at"].as_str().unwrap_or("never")
                    );
                }
            }
        }
        AgentsCommand::Revoke { name } => match &remote {
            Some(r) => {
                r.post(&format!("/api/agents/{}/revoke", segment(name)), None)
                    .await?;
                println!("revoked agent '{name}'");
            }
            None => {
                let store = connect(&load_config(cli)?).await?;
                if store.revoke_agent(name).await? {
                    store
                        .record_admin_action(
                            &operator(),
                            "agent.revoke",
                            Some(name),
                            &json!({"via": "cli"}),
                        )
                        .await?;
                    println!("revoked agent '{name}'");
                } else {
                    eprintln!("no active agent named '{name}'");
                    return Ok(ExitCode::FAILURE);
                }
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}

// ---- reviewers ------------------------------------------------------------------------------------------

pub(super) async fn reviewers(cli: &Cli, cmd: &ReviewersCommand) -> anyhow::Result<ExitCode> {
    use crate::reviewers::{self, Role};
    let remote = remote(cli)?;
    match cmd {
        ReviewersCommand::Create {
            name,
            role,
            email,
            json,
        } => {
            let role = Role::parse(role).ok_or_else(|| {
                anyhow::anyhow!("--role must be viewer, approver, operator or admin")
            })?;
            let created = match &remote {
                Some(r) => {
                    r.post(
                        "/api/reviewers",
                        Some(&json!({"name": name, "role": role.as_str(), "email": email})),
                    )
                    .await?
                }
                None => {
                    let store = connect(&load_config(cli)?).await?;
                    let actor = operator();
                    let (row, token) =
                        match reviewers::create(&store, name, role, email.as_deref(), &actor).await
                        {
                            Ok(created) => created,
                            Err(reviewers::ReviewerError::Invalid(m)) => anyhow::bail!("{m}"),
                            Err(reviewers::ReviewerError::Store(e)) => return Err(e.into()),
                        };
                    store
                        .record_admin_action(
                            &actor,
                            "reviewer.create",
                            Some(&row.name),
                            &json!({"via": "cli", "role": row.role}),
                        )
                        .await?;
                    let mut v = crate::admin::reviewer_json(&row);
                    v["token"] = Value::String(token.expose().to_string());
                    v
                }
            };
            if *json {
                print_json(&created)?;
            } else {
                println!(
                    "created reviewer '{}' ({}), role {}",
                    text(&created, "name"),
                    text(&created, "id"),
                    text(&created, "role")
                );
                println!(
                    "token (shown once, store it now): {}",
                    text(&created, "token")
                );
            }
        }
        ReviewersCommand::List { json } => {
            let items = match &remote {
                Some(r) => listed(r.get("/api/reviewers").await?, "reviewers"),
                None => {
                    let store = connect(&load_config(cli)?).await?;
                    store
                        .list_reviewers()
                        .await?
                        .iter()
                        .map(crate::admin::reviewer_json)
                        .collect()
                }
            };
            if *json {
                print_json(&items)?;
            } else {
                for r in &items {
                    println!(
                        "{:<24} {:<8} {:<8} token={}…  created_by={}  last_used={}",
                        text(r, "name"),
                        text(r, "role"),
                        text(r, "status"),
                        text(r, "token_prefix"),
                        text(r, "created_by"),
                        or_dash(r, "last_used"),
                    );
                }
            }
        }
        ReviewersCommand::Revoke { name } => match &remote {
            Some(r) => {
                r.post(&format!("/api/reviewers/{}/revoke", segment(name)), None)
                    .await?;
                println!("revoked reviewer '{name}'");
            }
            None => {
                let store = connect(&load_config(cli)?).await?;
                if store.revoke_reviewer(name).await? {
                    store
                        .record_admin_action(
                            &operator(),
                            "reviewer.revoke",
                            Some(name),
                            &json!({"via": "cli"}),
                        )
                        .await?;
                    println!("revoked reviewer '{name}'");
                } else {
                    eprintln!("no active reviewer named '{name}'");
                    return Ok(ExitCode::FAILURE);
                }
            }
        },
        ReviewersCommand::Rotate { name, json } => {
            let token = match &remote {
                Some(r) => {
                    let rotated = r
                        .post(&format!("/api/reviewers/{}/rotate", segment(name)), None)
                        .await?;
                    text(&rotated, "token").to_string()
                }
                None => {
                    let store = connect(&load_config(cli)?).await?;
                    match reviewers::rotate(&store, name).await? {
                        Some(token) => {
                            store
                                .record_admin_action(
                                    &operator(),
                                    "reviewer.rotate",
                                    Some(name),
                                    &json!({"via": "cli"}),
                                )
                                .await?;
                            token.expose().to_string()
                        }
                        None => {
                            eprintln!("no active reviewer named '{name}'");
                            return Ok(ExitCode::FAILURE);
                        }
                    }
                }
            };
            if *json {
                print_json(&json!({"name": name, "token": token}))?;
            } else {
                println!("rotated reviewer '{name}'; the old token no longer works");
                println!("token (shown once, store it now): {token}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

// ---- approvals ------------------------------------------------------------------------------------------

fn print_approvals(items: &[Value], json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(&items);
    }
    for a in items {
        println!(
            "{}  {:<9} {:<12} {:<6} {:<30} {:<40} charge={}",
            text(a, "id"),
            text(a, "status"),
            text(a, "agent"),
            text(a, "method"),
            text(a, "action"),
            text(a, "path"),
            a["charge_cents"]
        );
    }
    Ok(())
}

/// How many strings in `v` are redaction marks (`[redacted …]`, put there when the request was recorded).
fn redactions(v: &Value) -> usize {
    match v {
        Value::String(s) => usize::from(s.starts_with("[redacted ")),
        Value::Array(items) => items.iter().map(redactions).sum(),
        Value::Object(map) => map.values().map(redactions).sum(),
        _ => 0,
    }
}

/// `approvals show`: the approval (API shape) and its requesting decision (full, with the recorded input).
fn print_approval(approval: &Value, request: Option<&Value>) {
    let row = |label: &str, value: String| println!("  {label:<14} {value}");
    let status = text(approval, "status");
    let expiry = match approval["expires_at"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
    {
        Some(t) if status == "pending" || status == "approved" => {
            let left = t.with_timezone(&Utc) - Utc::now();
            format!(
                " (expires {}, in {}m)",
                time(approval, "expires_at", false),
                left.num_minutes().max(0)
            )
        }
        Some(_) => format!(" (expiry was {})", time(approval, "expires_at", false)),
        None => String::new(),
    };
    println!(
        "approval {}  {}{expiry}",
        text(approval, "id"),
        status.to_uppercase()
    );
    row(
        "agent",
        format!(
            "{} ({})",
            text(approval, "agent"),
            text(approval, "agent_id")
        ),
    );
    let run = request.map(|d| or_dash(d, "run_id")).unwrap_or("-".into());
    row("run", run);
    row("on behalf of", or_dash(approval, "on_behalf_of"));
    row("provider", text(approval, "provider").to_string());
    row("method", text(approval, "method").to_string());
    row("path", text(approval, "path").to_string());
    let query = text(approval, "query");
    row(
        "query",
        if query.is_empty() {
            "-".into()
        } else {
            query.to_string()
        },
    );
    // One header per line: split before escaping (a newline is a control character).
    let headers: Vec<std::borrow::Cow<'_, str>> = approval["headers"]
        .as_str()
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(shown)
        .collect();
    if headers.is_empty() {
        row("headers", "-".into());
    }
    for (i, h) in headers.iter().enumerate() {
        row(if i == 0 { "headers" } else { "" }, (*h).to_string());
    }
    row("body sha256", text(approval, "body_sha256").to_string());
    row("action", text(approval, "action").to_string());
    row(
        "charge",
        match approval["charge_cents"].as_i64() {
            Some(c) => format!("{c} cents"),
            None => "-".into(),
        },
    );
    let reasons = approval["reasons"].as_array().cloned().unwrap_or_default();
    if reasons.is_empty() {
        row("reasons", "-".into());
    }
    for (i, r) in reasons.iter().enumerate() {
        row(
            if i == 0 { "reasons" } else { "" },
            format!("{}: {}", text(r, "rule"), text(r, "message")),
        );
    }
    row(
        "policy",
        match request {
            Some(d) => format!("revision {}", or_dash(d, "policy_revision")),
            None => "-".into(),
        },
    );
    row(
        "requested by",
        format!("decision {}", text(approval, "requested_by_decision")),
    );
    row("created", time(approval, "created_at", false));
    match approval["decided_by"].as_str() {
        Some(by) => row(
            "decided",
            format!(
                "{} by {by} at {}{}",
                match status.as_ref() {
                    "denied" => "denied",
                    _ => "approved",
                },
                time(approval, "decided_at", false),
                approval["note"]
                    .as_str()
                    .map(|n| format!(": {n:?}"))
                    .unwrap_or_default()
            ),
        ),
        None => row("decided", "not yet".into()),
    }
    if let Some(by) = approval["consumed_by_decision"].as_str() {
        row(
            "consumed",
            format!(
                "at {} by decision {by}",
                time(approval, "consumed_at", false)
            ),
        );
    }
    let body = request.map(|d| &d["input"]["request"]["body"]);
    match body {
        Some(b) if !b.is_null() => {
            let n = redactions(b);
            println!(
                "  body, as recorded{}:",
                if n == 0 {
                    String::new()
                } else {
                    format!(
                        " ({n} value(s) marked [redacted …] were hidden when the request was recorded)"
                    )
                }
            );
            let pretty = serde_json::to_string_pretty(b).unwrap_or_default();
            for line in pretty.lines() {
                println!("    {line}");
            }
        }
        Some(_) => println!("  body: none"),
        None => println!("  body: the requesting decision's record is not available"),
    }
}

pub(super) async fn approvals(cli: &Cli, cmd: &ApprovalsCommand) -> anyhow::Result<ExitCode> {
    let remote = remote(cli)?;
    match cmd {
        ApprovalsCommand::List { status, json } => {
            let items = match &remote {
                Some(r) => {
                    let q = crate::remote::query(&[
                        ("status", status.clone()),
                        ("limit", Some(API_PAGE.to_string())),
                    ]);
                    listed(r.get(&format!("/api/approvals{q}")).await?, "approvals")
                }
                None => {
                    let store = connect(&load_config(cli)?).await?;
                    store
                        .list_approvals(status.as_deref(), API_PAGE)
                        .await?
                        .iter()
                        .map(crate::admin::approval_json)
                        .collect()
                }
            };
            print_approvals(&items, *json)?;
            Ok(ExitCode::SUCCESS)
        }
        ApprovalsCommand::Show { id, json } => {
            let (approval, request) = match &remote {
                Some(r) => {
                    let approval = r.get(&format!("/api/approvals/{id}")).await?;
                    let decision = text(&approval, "requested_by_decision").to_string();
                    let request = match r.get(&format!("/api/decisions/{decision}")).await {
                        Ok(d) => Some(d),
                        Err(e) if e.status() == Some(404) => None,
                        Err(e) => return Err(e.into()),
                    };
                    (approval, request)
                }
                None => {
                    let store = connect(&load_config(cli)?).await?;
                    let Some(a) = store.approval(*id).await? else {
                        eprintln!("no approval {id}");
                        return Ok(ExitCode::FAILURE);
                    };
                    let request = store
                        .decision(a.requested_by_decision)
                        .await?
                        .map(|(d, o)| crate::admin::decision_json(&d, o.as_ref(), true));
                    (crate::admin::approval_json(&a), request)
                }
            };
            if *json {
                let mut v = approval;
                v["requested_by"] = request.unwrap_or(Value::Null);
                print_json(&v)?;
            } else {
                print_approval(&approval, request.as_ref());
            }
            Ok(ExitCode::SUCCESS)
        }
        ApprovalsCommand::Approve { id, note, by } => {
            decide(cli, remote.as_ref(), *id, true, note.as_deref(), by).await
        }
        ApprovalsCommand::Deny { id, note, by } => {
            if note.trim().is_empty() {
                anyhow::bail!("--note must say why the request is denied");
            }
            decide(cli, remote.as_ref(), *id, false, Some(note), by).await
        }
    }
}

async fn decide(
    cli: &Cli,
    remote: Option<&Remote>,
    id: uuid::Uuid,
    approve: bool,
    note: Option<&str>,
    by: &Option<String>,
) -> anyhow::Result<ExitCode> {
    let verb = if approve { "approve" } else { "deny" };
    let decided_by = match remote {
        Some(r) => {
            refuse_by(by)?;
            let decided = r
                .post(
                    &format!("/api/approvals/{id}/{verb}"),
                    Some(&json!({"note": note})),
                )
                .await?;
            text(&decided, "decided_by").to_string()
        }
        None => {
            let config = load_config(cli)?;
            let store = connect(&config).await?;
            // The local CLI authenticates nobody (it holds the database credentials): what it records is
            // `local:<--by or $USER>`, never a bare name that could pass for an authenticated reviewer.
            let by = local_actor(by);
            let approvals = crate::approvals::Approvals::new(
                store.clone(),
                config.approvals.ttl,
                config.approvals.max_pending_per_agent,
            );
            match approvals.decide(id, approve, &by, note).await? {
                Some(a) => {
                    store
                        .record_admin_action(
                            &by,
                            &format!("approval.{verb}"),
                            Some(&id.to_string()),
                            &json!({"note": a.note, "via": "cli"}),
                        )
                        .await?;
                    by
                }
                None => {
                    let state = store.approval(id).await?.map(|a| {
                        crate::admin::approval_json(&a)["status"]
                            .as_str()
                            .unwrap_or("closed")
                            .to_string()
                    });
                    match state {
                        Some(s) => eprintln!("approval {id} is {s}, not pending"),
                        None => eprintln!("no approval {id}"),
                    }
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
    };
    println!(
        "approval {id} {} by {decided_by}",
        if approve { "approved" } else { "denied" }
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_chosen_text_reaches_a_terminal_escaped() {
        assert_eq!(shown("plain /zones?page=1"), "plain /zones?page=1");
        assert_eq!(shown("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(
            shown("bell\u{7}del\u{7f}csi\u{9b}"),
            "bell\\u{7}del\\u{7f}csi\\u{9b}"
        );
        assert_eq!(shown("line\nbreak"), "line\\u{a}break");
        let v = json!({"path": "/x\u{1b}]0;pwned\u{7}", "note": null});
        assert_eq!(text(&v, "path"), "/x\\u{1b}]0;pwned\\u{7}");
        assert_eq!(or_dash(&v, "note"), "-");
    }

    #[test]
    fn redaction_marks_are_counted_at_any_depth() {
        let body = json!({"card": "[redacted hmac-sha256:ab]", "items": [{"k": "[redacted sha256:cd]"}, "x"],
                          "note": "not [redacted x] at the start"});
        assert_eq!(redactions(&body), 2);
    }

    #[test]
    fn api_lists_are_unwrapped() {
        assert_eq!(
            listed(json!({"agents": [1, 2]}), "agents"),
            vec![json!(1), json!(2)]
        );
        assert!(listed(json!({"other": []}), "agents").is_empty());
    }
}
