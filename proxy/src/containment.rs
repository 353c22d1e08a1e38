//! Incident containment: `tollgate incident contain AGENT --reason …` and `POST /api/incidents/{agent}/contain`.
//!
//! Owns: containing one agent — revoking it and every handle of a token it minted (every replica drops
//! them at its next identity refresh, within a second), denying its pending approvals, and deleting each of
//! its live minted tokens at the provider with tollgate's own credential, each deletion retried and its
//! result reported; the record of what was done (admin actions `incident.contain`, written before anything
//! is changed, and `incident.contain.result`). Running it again finishes what failed: revoked agents and
//! deleted tokens are skipped, failed deletions are tried again.
//! Must not: judge or forward agent requests, or touch a token some other agent minted. The report never
//! carries a secret: token ids and names only, and provider error messages cut short.

use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use http::{HeaderMap, Method};
use http_body_util::BodyExt;
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::forward::{Credential, Forwarder, Permit, UpstreamFailure};
use crate::store::{AgentRow, MintedStatus, MintedTokenRow, Store, StoreError};
use crate::vault::screen::Needles;

/// How often a token deletion is tried before it is reported failed, and the pause after each failure.
const DELETE_ATTEMPTS: [Duration; 3] = [
    Duration::from_millis(200),
    Duration::from_millis(800),
    Duration::ZERO,
];

/// The most of a provider's error answer kept in the report.
const PROVIDER_MESSAGE_LIMIT: usize = 300;

/// What one containment did; printed by the CLI, returned by the API, recorded as `incident.contain.result`.
#[derive(Debug, Clone, Serialize)]
pub struct ContainReport {
    pub agent: String,
    pub reason: String,
    /// The `incident.contain` admin action: the authority the deletions ran under.
    pub action_id: Uuid,
    /// Agents (the agent and its handles) revoked by this run.
    pub revoked: Vec<String>,
    /// Agents of the set that were already revoked (an earlier run, an operator).
    pub already_revoked: Vec<String>,
    /// Pending approvals denied by this run.
    pub approvals_denied: Vec<Uuid>,
    pub tokens: Vec<TokenResult>,
    /// Everything done: no deletion failed.
    pub complete: bool,
}

/// One minted token's fate in a containment.
#[derive(Debug, Clone, Serialize)]
pub struct TokenResult {
    pub provider: String,
    pub token_id: String,
    pub name: Option<String>,
    /// `deleted` (the provider confirmed), `already_gone` (the provider no longer has it), `failed`.
    pub result: &'static str,
    pub attempts: u32,
    /// Why it failed: the provider's status and message, or the connection failure.
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ContainError {
    #[error("no agent named '{0}'")]
    UnknownAgent(String),
    #[error("a containment needs a reason")]
    NoReason,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Contains `name`: see the module docs. `actor` is who runs it (recorded). Fails before changing anything
/// when the agent is unknown or the start cannot be recorded; later store failures end the run with an
/// error (run it again to finish), and provider failures are reported per token.
pub async fn contain(
    store: &Store,
    forwarder: &Forwarder,
    held: &Needles,
    name: &str,
    reason: &str,
    actor: &str,
    via: &str,
) -> Result<ContainReport, ContainError> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(ContainError::NoReason);
    }
    let agents = store.list_agents().await?;
    // Names are unique ignoring case, as the report and the rollback plan find them.
    let wanted = name.to_lowercase();
    let Some(target) = agents
        .iter()
        .find(|a| a.name.to_lowercase() == wanted)
        .cloned()
    else {
        return Err(ContainError::UnknownAgent(name.to_string()));
    };
    let name = target.name.as_str();
    // The agent and each handle of a token it minted; for a handle, the handle alone.
    let members: Vec<&AgentRow> = agents
        .iter()
        .filter(|a| a.id == target.id || a.minted_by == Some(target.id))
        .collect();
    let live = live_tokens(store, &target).await?;

    let action_id = store
        .record_admin_action(
            actor,
            "incident.contain",
            Some(name),
            &json!({
                "reason": reason,
                "via": via,
                "agents": members.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
                "tokens": live.iter().map(|t| t.token_id.as_str()).collect::<Vec<_>>(),
            }),
        )
        .await?;

    // Revoke first: from here on nothing the agent or its handles send is forwarded.
    let mut revoked = Vec::new();
    let mut already_revoked = Vec::new();
    for member in &members {
        if store.revoke_agent(&member.name).await? {
            revoked.push(member.name.clone());
        } else {
            already_revoked.push(member.name.clone());
        }
    }

    // A token minted while this ran is recorded before its minter's status is read again (the mint path
    // deletes it itself when it sees the agent revoked); so what is recorded now, after the revocation,
    // is every token that can outlive it. Handles made meanwhile are revoked too.
    let agents_now = store.list_agents().await?;
    let late: Vec<&AgentRow> = agents_now
        .iter()
        .filter(|a| a.minted_by == Some(target.id) && !members.iter().any(|m| m.id == a.id))
        .collect();
    for late in &late {
        if store.revoke_agent(&late.name).await? {
            revoked.push(late.name.clone());
        } else {
            already_revoked.push(late.name.clone());
        }
    }
    let mut live_after = live_tokens(store, &target).await?;
    live_after.retain(|t| {
        !live
            .iter()
            .any(|l| l.provider == t.provider && l.token_id == t.token_id)
    });
    let live: Vec<MintedTokenRow> = live.into_iter().chain(live_after).collect();

    let note = format!("denied by incident containment: {reason}");
    let mut approvals_denied = Vec::new();
    // Late handles' approvals too: a reviewer must not be left approving for a handle that is revoked.
    for member in members.iter().chain(&late) {
        for approval in store.pending_queue(Some(&member.name), i64::MAX).await? {
            if let Some(decided) = store
                .decide_approval(approval.id, false, actor, Some(&note))
                .await?
                && decided.status == "denied"
            {
                approvals_denied.push(approval.id);
            }
        }
    }

    let mut results = Vec::with_capacity(live.len());
    for token in &live {
        let result = delete_at_provider(forwarder, held, action_id, token).await;
        if matches!(result.result, "deleted" | "already_gone") {
            store
                .delete_minted_token(&token.provider, &token.token_id, action_id, Utc::now())
                .await?;
        }
        results.push(result);
    }
    let complete = results.iter().all(|r| r.result != "failed");
    let report = ContainReport {
        agent: name.to_string(),
        reason: reason.to_string(),
        action_id,
        revoked,
        already_revoked,
        approvals_denied,
        tokens: results,
        complete,
    };
    store
        .record_admin_action(
            actor,
            "incident.contain.result",
            Some(name),
            &serde_json::to_value(&report).unwrap_or(Value::Null),
        )
        .await?;
    Ok(report)
}

/// The tokens `target` minted (or, for a handle, its own) that are not deleted.
async fn live_tokens(store: &Store, target: &AgentRow) -> Result<Vec<MintedTokenRow>, StoreError> {
    let mut tokens = store.minted_tokens_by(&[target.id]).await?;
    if target.minted_by.is_some()
        && let Some(own) = store.minted_token_by_handle(target.id).await?
        && !tokens.iter().any(|t| t.token_id == own.token_id)
    {
        tokens.push(own);
    }
    let now = Utc::now();
    Ok(tokens
        .into_iter()
        .filter(|t| t.status_at(now) != MintedStatus::Deleted)
        .collect())
}

/// The provider route that deletes this token, when its id can be put in a path as it is.
fn delete_path(token: &MintedTokenRow) -> Option<String> {
    let plain = |s: &str| {
        !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if token.provider != "cloudflare" || !plain(&token.token_id) {
        return None;
    }
    match &token.account_id {
        Some(account) if plain(account) => Some(format!(
            "/client/v4/accounts/{account}/tokens/{}",
            token.token_id
        )),
        Some(_) => None,
        None => Some(format!("/client/v4/user/tokens/{}", token.token_id)),
    }
}

/// Deletes one minted token at its provider with tollgate's credential under the recorded admin action
/// `action_id`: up to three tries; 404 is "already gone"; a 2xx must say it succeeded.
pub(crate) async fn delete_at_provider(
    forwarder: &Forwarder,
    held: &Needles,
    action_id: Uuid,
    token: &MintedTokenRow,
) -> TokenResult {
    let mut result = TokenResult {
        provider: token.provider.clone(),
        token_id: token.token_id.clone(),
        name: token.name.clone(),
        result: "failed",
        attempts: 0,
        error: None,
    };
    let Some(path) = delete_path(token) else {
        result.error = Some(
            "tollgate cannot address this token at its provider (unexpected provider, id or account); delete it by hand"
                .to_string(),
        );
        return result;
    };
    for pause in DELETE_ATTEMPTS {
        result.attempts += 1;
        let permit = Permit::for_containment(action_id, &token.provider, path.clone());
        let sent = forwarder
            .forward(
                &permit,
                Credential::Provider,
                Method::DELETE,
                &HeaderMap::new(),
                Bytes::new(),
            )
            .await;
        match sent {
            Ok((response, _)) => {
                let status = response.status();
                if status.is_success() {
                    // Cloudflare answers in its envelope; a 2xx that does not say it succeeded is not a
                    // deletion tollgate can vouch for.
                    let body = read_body(response.into_body()).await;
                    if body
                        .as_ref()
                        .is_some_and(|b| crate::vault::cloudflare_succeeded(b))
                    {
                        result.result = "deleted";
                        result.error = None;
                        return result;
                    }
                    result.error = Some(format!(
                        "the provider answered {status} without \"success\": true: {}",
                        body.map(|b| summary(held, &b))
                            .unwrap_or_else(|| "(its answer could not be read)".to_string())
                    ));
                    tokio::time::sleep(pause).await;
                    continue;
                }
                if status == http::StatusCode::NOT_FOUND {
                    result.result = "already_gone";
                    result.error = None;
                    return result;
                }
                let body = read_short(held, response.into_body()).await;
                result.error = Some(format!("the provider answered {status}: {body}"));
                // A refusal that will not change by asking again (no permission, a bad request) is final.
                if status.is_client_error() && status != http::StatusCode::TOO_MANY_REQUESTS {
                    return result;
                }
            }
            Err((failure, _)) => {
                result.error = Some(
                    match failure {
                        UpstreamFailure::Connect => "the provider could not be reached",
                        UpstreamFailure::Timeout => "the provider did not answer in time",
                        UpstreamFailure::Broken => "the exchange with the provider broke",
                        UpstreamFailure::NoCredential => {
                            "tollgate holds no credential for this provider"
                        }
                    }
                    .to_string(),
                );
                if failure == UpstreamFailure::NoCredential {
                    return result;
                }
            }
        }
        tokio::time::sleep(pause).await;
    }
    result
}

/// A provider's answer, at most 16 KiB, within 5 s.
async fn read_body(body: axum::body::Body) -> Option<Bytes> {
    let limited = http_body_util::Limited::new(body, 16 * 1024);
    match tokio::time::timeout(Duration::from_secs(5), limited.collect()).await {
        Ok(Ok(collected)) => Some(collected.to_bytes()),
        _ => None,
    }
}

/// The start of a provider's error answer, for the report (escaped: a person reads it).
async fn read_short(held: &Needles, body: axum::body::Body) -> String {
    match read_body(body).await {
        Some(bytes) => summary(held, &bytes),
        None => "(its answer could not be read)".to_string(),
    }
}

/// The provider's error message, cut short; withheld whole when it quotes a secret tollgate holds
/// (`held`: its own credentials and every vaulted token's secret, in any spelling the answer screen reads)
/// or holds anything shaped like a credential, since the report is printed, stored, logged and shown in
/// the console.
fn summary(held: &Needles, bytes: &[u8]) -> String {
    if held.found_in(bytes) {
        return "(the provider's message quotes a secret tollgate holds; withheld)".to_string();
    }
    if crate::vault::credential_like(&String::from_utf8_lossy(bytes), 20) {
        return "(the provider's message holds something shaped like a credential; withheld)"
            .to_string();
    }
    let text = match serde_json::from_slice::<Value>(bytes) {
        Ok(v) => v["errors"][0]["message"]
            .as_str()
            .or(v["error"]["message"].as_str())
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(bytes).into_owned()),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    };
    // Printable ASCII only: whatever else a provider writes (tag characters, look-alikes from scripts
    // the screen does not know) could spell what the checks above did not read.
    let mut short: String = text
        .chars()
        .take(PROVIDER_MESSAGE_LIMIT)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    if text.chars().count() > PROVIDER_MESSAGE_LIMIT {
        short.push('…');
    }
    crate::display::reveal(&short, false).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(provider: &str, id: &str, account: Option<&str>) -> MintedTokenRow {
        MintedTokenRow {
            provider: provider.into(),
            token_id: id.into(),
            name: None,
            policies: Value::Null,
            expires_on: None,
            status: MintedStatus::Active,
            custody: crate::vault::Custody::Vault,
            minted_by: Uuid::nil(),
            minted_by_name: "a".into(),
            decision_id: Uuid::nil(),
            last_decision_id: Uuid::nil(),
            handle_agent_id: None,
            sealed: None,
            rolls: 0,
            created_at: Utc::now(),
            rolled_at: None,
            deleted_at: None,
            account_id: account.map(str::to_string),
        }
    }

    #[test]
    fn deletions_go_to_the_route_the_token_lives_under() {
        assert_eq!(
            delete_path(&token("cloudflare", "ab12", None)).as_deref(),
            Some("/client/v4/user/tokens/ab12")
        );
        assert_eq!(
            delete_path(&token("cloudflare", "ab12", Some("acc9"))).as_deref(),
            Some("/client/v4/accounts/acc9/tokens/ab12")
        );
        for odd in ["", "../x", "a/b", "a?b", "a b", "a%2f"] {
            assert_eq!(delete_path(&token("cloudflare", odd, None)), None, "{odd}");
        }
        assert_eq!(delete_path(&token("cloudflare", "t", Some("a/b"))), None);
        assert_eq!(delete_path(&token("stripe", "t", None)), None);
    }
}
