//! Incidents (issue #17): what an agent did, and the plan to undo it.
//!
//! Owns: the incident report (`tollgate incident report`, `GET /api/incidents/{agent}/report`: the agent's
//! decisions by outcome, its spend by budget window, the tokens it minted and the resources it created — its
//! handles' included, since a handle acts for the agent that minted it), the rollback plan
//! (`incident rollback-plan`, `GET /api/incidents/{agent}/rollback-plan`: one inverse call per live created
//! resource, and the irreversible ones with what a person must do; the file format is [`RollbackPlan`],
//! version [`PLAN_VERSION`]) and, in `incident/execute.rs`, running a plan's steps **through the gate**: each
//! inverse call is sent to tollgate's own agent listener with an operator-owned agent key, so it is judged
//! by the policy, recorded as a decision and forwarded like any agent's call.
//! Must not: call a provider directly or with tollgate's own credential (there is no path around the gate
//! here), hold SQL, or print an agent key. `incident contain` is `containment.rs`'s.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::resources::ResourceKind;
use crate::store::{AgentRow, ResourceRow, ResourceStatus, Store, StoreError};

pub mod api;
pub mod execute;

/// The `format` of a rollback plan file.
pub const PLAN_FORMAT: &str = "tollgate.rollback-plan";
/// The version of the plan format this tollgate writes and executes.
pub const PLAN_VERSION: u32 = 1;

/// A rollback plan: what an agent created that is still live, as the calls that undo it. Written as JSON by
/// `incident rollback-plan`, reviewed by a person, executed by `incident rollback-plan --execute`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackPlan {
    /// Always [`PLAN_FORMAT`].
    pub format: String,
    /// Always [`PLAN_VERSION`] for this tollgate.
    pub version: u32,
    /// The agent the plan is for, and the ids of it and its handles whose resources it covers.
    pub agent: String,
    pub agent_ids: Vec<Uuid>,
    /// Resources created at or after this time only (absent: all).
    pub since: Option<DateTime<Utc>>,
    pub generated_at: DateTime<Utc>,
    /// The inverse calls, in the order they run (dependents first: records before zones, subscriptions
    /// before customers, prices before products).
    pub steps: Vec<Step>,
    /// What no call can undo, with what a person must do.
    pub irreversible: Vec<Irreversible>,
}

/// One inverse call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Stable across runs of the same plan (the resource record's id): the progress file names it.
    pub id: String,
    pub resource: PlannedResource,
    /// The catalog action the call is, which the policy judges.
    pub action: String,
    pub call: Call,
    /// What the call does.
    pub why: String,
    /// What a reviewer should check before running it, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caution: Option<String>,
}

/// The resource a step or an irreversible entry is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannedResource {
    pub provider: String,
    pub kind: String,
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stripe_account: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub created_by_decision: Uuid,
    pub created_with: String,
    #[serde(default)]
    pub detail: Value,
    /// The same agent's latest create or upload of it after the first (a re-upload of its script).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_by_decision: Option<Uuid>,
}

/// An HTTP call through the gate: `{method} /{provider}{path}` on tollgate's agent listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Call {
    pub provider: String,
    pub method: String,
    /// The provider's path (percent-encoded where needed), without the `/{provider}` prefix.
    pub path: String,
    /// A Stripe form body (`active=false`), if the call has one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub form: BTreeMap<String, String>,
    /// Headers the call needs (`Stripe-Account` for a connected account's object).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// Something the agent did that no call undoes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Irreversible {
    pub resource: PlannedResource,
    pub why: String,
    /// What a person must do about it.
    pub human: String,
}

/// Why a plan file cannot be executed.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("not a rollback plan: {0}")]
    Unreadable(String),
    #[error(
        "plan format {format:?} version {version} is not {PLAN_FORMAT:?} version {PLAN_VERSION}"
    )]
    Version { format: String, version: u32 },
}

impl RollbackPlan {
    /// Whether `step` is one of this plan's steps as written: the same resource record, action and call.
    /// `--execute` asks the plan tollgate makes from its records now about each step of the file.
    pub fn vouches_for(&self, step: &Step) -> bool {
        self.steps
            .iter()
            .any(|s| s.id == step.id && s.action == step.action && s.call == step.call)
    }

    /// Reads a plan file's text, checking its format and version.
    pub fn parse(text: &str) -> Result<RollbackPlan, PlanError> {
        let plan: RollbackPlan =
            serde_json::from_str(text).map_err(|e| PlanError::Unreadable(e.to_string()))?;
        if plan.format != PLAN_FORMAT || plan.version != PLAN_VERSION {
            return Err(PlanError::Version {
                format: plan.format,
                version: plan.version,
            });
        }
        Ok(plan)
    }
}

/// The agent named `name` and the handles it minted (directly or through a handle), or `None`.
async fn family(store: &Store, name: &str) -> Result<Option<Vec<AgentRow>>, StoreError> {
    let agents = store.agent_family(name).await?;
    Ok((!agents.is_empty()).then_some(agents))
}

/// The incident report as the admin API returns it (and `--json` prints it); `None` when there is no such
/// agent.
pub async fn report(
    store: &Store,
    name: &str,
    since: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<Option<Value>, StoreError> {
    let Some(agents) = family(store, name).await? else {
        return Ok(None);
    };
    let ids: Vec<Uuid> = agents.iter().map(|a| a.id).collect();
    let counts = store.decision_counts(&ids, since).await?;
    let spend = store.agent_spend(&ids, since).await?;
    // A token still live is part of the incident whenever it was minted; one that ended is listed when it was
    // minted, rolled or deleted within the window.
    let touched_since = |t: &crate::store::MintedTokenRow| {
        let Some(since) = since else { return true };
        t.status_at(now).is_live()
            || [Some(t.created_at), t.rolled_at, t.deleted_at]
                .into_iter()
                .flatten()
                .any(|at| at >= since)
    };
    let tokens: Vec<_> = store
        .minted_tokens_by(&ids)
        .await?
        .into_iter()
        .filter(touched_since)
        .collect();
    let resources = store.resources_of(&ids, since).await?;
    let shared = store.resources_sharing(&ids).await?;
    // One more than is shown tells whether the list is cut short.
    let mut changes = store.agent_changes(&ids, since, REPORT_CHANGES + 1).await?;
    let changes_truncated = changes.len() as i64 > REPORT_CHANGES;
    changes.truncate(REPORT_CHANGES as usize);

    let mut by_outcome: BTreeMap<String, i64> = BTreeMap::new();
    for c in &counts {
        *by_outcome.entry(c.outcome.clone()).or_default() += c.count;
    }
    // One entry per budget window: committed, reserved (and of it flagged) and released cents.
    let mut windows: BTreeMap<(String, String, String, String), Value> = BTreeMap::new();
    let (mut committed, mut reserved) = (0i64, 0i64);
    for row in &spend {
        let key = (
            row.period.clone(),
            row.budget.clone(),
            row.subject.clone(),
            row.provider.clone(),
        );
        let window = windows.entry(key).or_insert_with(|| {
            json!({"period": row.period, "budget": row.budget, "subject": row.subject, "provider": row.provider,
                   "committed_cents": 0, "reserved_cents": 0, "flagged_cents": 0, "released_cents": 0})
        });
        let field = match row.state.as_str() {
            "committed" => {
                committed += row.cents;
                "committed_cents"
            }
            "reserved" => {
                reserved += row.cents;
                "reserved_cents"
            }
            _ => "released_cents",
        };
        window[field] = json!(window[field].as_i64().unwrap_or(0) + row.cents);
        window["flagged_cents"] =
            json!(window["flagged_cents"].as_i64().unwrap_or(0) + row.flagged_cents);
    }
    let root = &agents[0];
    Ok(Some(json!({
        "agent": agent_json(root),
        "handles": agents[1..].iter().map(agent_json).collect::<Vec<_>>(),
        "since": since,
        "generated_at": now,
        "decisions": {
            "total": counts.iter().map(|c| c.count).sum::<i64>(),
            "by_outcome": by_outcome,
            "by_code": counts,
        },
        "spend": {
            "committed_cents": committed,
            "reserved_cents": reserved,
            "windows": windows.into_values().collect::<Vec<_>>(),
        },
        "tokens": tokens.iter().map(|t| json!({
            "provider": t.provider, "token_id": t.token_id, "name": t.name,
            "status": t.status_at(now).as_str(), "custody": custody_name(t.custody),
            "expires_on": t.expires_on, "minted_by": t.minted_by_name, "created_at": t.created_at,
            "rolled_at": t.rolled_at, "deleted_at": t.deleted_at, "handle_agent_id": t.handle_agent_id,
            "decision_id": t.decision_id,
        })).collect::<Vec<_>>(),
        "changes": changes,
        "changes_truncated": changes_truncated,
        "resources": resources.iter().map(|r| {
            let mut entry = resource_json(r);
            // Someone else's create or upload of the same live resource (their work is in it too).
            let also: Vec<Value> = shared
                .iter()
                .filter(|o| r.status == ResourceStatus::Live && address(o) == address(r))
                .map(|o| json!({"agent": o.agent_name, "action": o.action, "created_at": o.created_at,
                                "decision_id": o.decision_id}))
                .collect();
            if !also.is_empty() {
                entry["also_by"] = Value::from(also);
            }
            entry
        }).collect::<Vec<_>>(),
    })))
}

fn custody_name(custody: crate::vault::Custody) -> &'static str {
    match custody {
        crate::vault::Custody::Vault => "vault",
        crate::vault::Custody::PassThrough => "pass_through",
    }
}

fn agent_json(a: &AgentRow) -> Value {
    json!({"id": a.id, "name": a.name, "status": a.status, "minted_token_id": a.minted_token_id,
           "created_at": a.created_at, "revoked_at": a.revoked_at})
}

fn resource_json(r: &ResourceRow) -> Value {
    json!({
        "provider": r.provider, "kind": r.kind.as_str(), "id": r.resource_id, "zone_id": r.zone_id,
        "account_id": r.account_id, "stripe_account": r.stripe_account, "status": r.status.as_str(),
        "detail": r.detail, "agent": r.agent_name, "run_id": r.run_id, "decision_id": r.decision_id,
        "action": r.action, "created_at": r.created_at, "deleted_at": r.deleted_at,
        "deleted_by_decision": r.deleted_by_decision, "updated_at": r.updated_at,
        "updated_by_decision": r.updated_by_decision,
    })
}

/// How many of an agent's allowed changing calls a report lists (newest first).
pub const REPORT_CHANGES: i64 = 1000;

/// The rollback plan for an agent (and its handles): `None` when there is no such agent.
pub async fn rollback_plan(
    store: &Store,
    name: &str,
    since: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<Option<RollbackPlan>, StoreError> {
    let Some(agents) = family(store, name).await? else {
        return Ok(None);
    };
    let ids: Vec<Uuid> = agents.iter().map(|a| a.id).collect();
    let resources = store.resources_of(&ids, since).await?;
    let shared = store.resources_sharing(&ids).await?;
    let later = later_payments(store, &resources).await?;
    Ok(Some(plan_for(
        &agents[0].name,
        ids,
        since,
        now,
        &resources,
        &shared,
        &later,
    )))
}

/// Calls through tollgate (by any agent) that moved a recorded payment intent's money after it was created:
/// by intent id, the action (`stripe.payment.confirm` or `.capture`) and its decision.
#[derive(Debug, Default)]
pub struct LaterPayments(BTreeMap<String, Vec<(String, Uuid)>>);

/// How many later confirm/capture decisions are read for a plan (a plan for more payment intents than this
/// treats the rest as unknown, i.e. says so in each step's caution).
const LATER_PAYMENTS_LIMIT: i64 = 10_000;

impl LaterPayments {
    /// Records that `action` (decision `decision_id`) moved intent `intent`'s money.
    pub fn add(&mut self, intent: &str, action: &str, decision_id: Uuid) {
        self.0
            .entry(intent.to_string())
            .or_default()
            .push((action.to_string(), decision_id));
    }

    fn of(&self, intent: &str) -> &[(String, Uuid)] {
        self.0.get(intent).map(Vec::as_slice).unwrap_or_default()
    }
}

/// The allowed confirm and capture calls a provider answered 2xx, since the oldest live payment intent among
/// `resources` was created.
async fn later_payments(
    store: &Store,
    resources: &[ResourceRow],
) -> Result<LaterPayments, StoreError> {
    let mut later = LaterPayments::default();
    let oldest = resources
        .iter()
        .filter(|r| r.kind == ResourceKind::PaymentIntent && r.status == ResourceStatus::Live)
        .map(|r| r.created_at)
        .min();
    let Some(oldest) = oldest else {
        return Ok(later);
    };
    for action in ["stripe.payment.capture", "stripe.payment.confirm"] {
        let filter = crate::store::DecisionFilter {
            action: Some(action.to_string()),
            outcome: Some("allow".to_string()),
            since: Some(oldest),
            limit: LATER_PAYMENTS_LIMIT,
            ..Default::default()
        };
        for (decision, outcome) in store.list_decisions(&filter).await? {
            let answered = outcome
                .and_then(|o| o.upstream_status)
                .is_some_and(|s| (200..300).contains(&s));
            // `/v1/payment_intents/{id}/…`, whose literal segments the catalog matches in any case.
            let segments: Vec<&str> = decision.path.split('/').collect();
            let intent = match segments.as_slice() {
                ["", v1, intents, intent, ..]
                    if v1.eq_ignore_ascii_case("v1")
                        && intents.eq_ignore_ascii_case("payment_intents") =>
                {
                    Some(*intent)
                }
                _ => None,
            };
            if let (true, Some(intent)) = (answered, intent) {
                later.add(intent, action, decision.id);
            }
        }
    }
    Ok(later)
}

/// The plan for these recorded resources: each live one's inverse call, or its irreversible entry. `shared`
/// are other agents' live rows of the same resources ([`Store::resources_sharing`]): a resource someone else
/// also created or uploaded to holds their work too, so it is left to a person, never deleted by the plan.
pub fn plan_for(
    agent: &str,
    agent_ids: Vec<Uuid>,
    since: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    resources: &[ResourceRow],
    shared: &[ResourceRow],
    later: &LaterPayments,
) -> RollbackPlan {
    // One entry per resource: the agent and its handles may each have a row of the same one (the oldest, first
    // in `resources`, tells whether the first upload replaced an earlier script).
    let mut seen = std::collections::BTreeSet::new();
    let mut live: Vec<&ResourceRow> = resources
        .iter()
        .filter(|r| r.status == ResourceStatus::Live)
        .filter(|r| seen.insert(address(r)))
        .collect();
    // Dependents first; within a kind, the newest first (undo in reverse).
    live.sort_by(|a, b| {
        undo_rank(a.kind)
            .cmp(&undo_rank(b.kind))
            .then(b.created_at.cmp(&a.created_at))
    });
    let mut steps = Vec::new();
    let mut irreversible = Vec::new();
    for r in live {
        let others: Vec<&ResourceRow> =
            shared.iter().filter(|o| address(o) == address(r)).collect();
        if !others.is_empty() {
            let who = others
                .iter()
                .map(|o| {
                    format!(
                        "{} ({} at {}, decision {})",
                        o.agent_name,
                        o.action,
                        o.created_at.to_rfc3339(),
                        o.decision_id
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            irreversible.push(Irreversible {
                resource: planned(r),
                why: format!(
                    "{} {} was also created or uploaded to through tollgate by {who}: undoing it here would undo their \
                     work too",
                    r.kind.as_str(),
                    r.resource_id
                ),
                human: "check what it holds now and whose it is: undo it by hand if it should not exist, or include \
                        the other agent's incident too"
                    .to_string(),
            });
            continue;
        }
        match inverse(r, later) {
            Inverse::Call(step) => steps.push(*step),
            Inverse::None { why, human } => irreversible.push(Irreversible {
                resource: planned(r),
                why,
                human,
            }),
            Inverse::Gone => {}
        }
    }
    RollbackPlan {
        format: PLAN_FORMAT.to_string(),
        version: PLAN_VERSION,
        agent: agent.to_string(),
        agent_ids,
        since,
        generated_at: now,
        steps,
        irreversible,
    }
}

/// What makes a recorded resource the same one at its provider.
fn address(r: &ResourceRow) -> (&str, ResourceKind, &str, &str) {
    (&r.provider, r.kind, &r.resource_id, &r.scope)
}

/// The order a plan undoes kinds in: what lives inside or depends on another thing goes first.
fn undo_rank(kind: ResourceKind) -> u8 {
    match kind {
        ResourceKind::PaymentIntent => 0,
        ResourceKind::Subscription => 1,
        ResourceKind::Price => 2,
        ResourceKind::Product => 3,
        ResourceKind::StripeCustomer => 4,
        ResourceKind::DnsRecord => 5,
        ResourceKind::CustomCertificate => 6,
        ResourceKind::WorkersScript => 7,
        ResourceKind::Zone => 8,
        ResourceKind::DomainRegistration => 9,
    }
}

enum Inverse {
    Call(Box<Step>),
    None {
        why: String,
        human: String,
    },
    /// Already undone as far as the provider's answer told (a cancelled payment intent).
    Gone,
}

fn planned(r: &ResourceRow) -> PlannedResource {
    PlannedResource {
        provider: r.provider.clone(),
        kind: r.kind.as_str().to_string(),
        id: r.resource_id.clone(),
        zone_id: r.zone_id.clone(),
        account_id: r.account_id.clone(),
        stripe_account: r.stripe_account.clone(),
        created_by: r.agent_name.clone(),
        created_at: r.created_at,
        created_by_decision: r.decision_id,
        created_with: r.action.clone(),
        detail: r.detail.clone(),
        updated_at: r.updated_at,
        updated_by_decision: r.updated_by_decision,
    }
}

/// One path segment, percent-encoded beyond the unreserved characters.
fn segment(text: &str) -> String {
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(text, SEGMENT).to_string()
}

fn inverse(r: &ResourceRow, later: &LaterPayments) -> Inverse {
    let id = segment(&r.resource_id);
    let zone = r.zone_id.as_deref().map(segment).unwrap_or_default();
    let account = r.account_id.as_deref().map(segment).unwrap_or_default();
    let mut headers = BTreeMap::new();
    if let Some(acct) = &r.stripe_account {
        headers.insert("Stripe-Account".to_string(), acct.clone());
    } else if let Some(context) = r.detail.get("stripe_context").and_then(Value::as_str) {
        headers.insert("Stripe-Context".to_string(), context.to_string());
    }
    let status = r.detail.get("status").and_then(Value::as_str);
    let step = |action: &str,
                method: &str,
                path: String,
                form: &[(&str, &str)],
                why: String,
                caution: Option<&str>| {
        Inverse::Call(Box::new(Step {
            id: r.id.to_string(),
            resource: planned(r),
            action: action.to_string(),
            call: Call {
                provider: r.provider.clone(),
                method: method.to_string(),
                path,
                form: form
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                headers: headers.clone(),
            },
            why,
            caution: caution.map(str::to_string),
        }))
    };
    match r.kind {
        ResourceKind::DnsRecord => step(
            "cloudflare.dns.delete",
            "DELETE",
            format!("/client/v4/zones/{zone}/dns_records/{id}"),
            &[],
            format!("delete DNS record {} in zone {}", r.resource_id, r.zone_id.as_deref().unwrap_or("?")),
            None,
        ),
        ResourceKind::CustomCertificate => step(
            "cloudflare.cert.custom.change",
            "DELETE",
            format!("/client/v4/zones/{zone}/custom_certificates/{id}"),
            &[],
            format!("delete custom certificate {} of zone {}", r.resource_id, r.zone_id.as_deref().unwrap_or("?")),
            Some("visitors of the hostnames it covers fall back to another certificate, or none"),
        ),
        // A version upload or a rollout puts code into (or moves the traffic of) a script the agent did not
        // create through tollgate: deleting the script would delete what others made.
        ResourceKind::WorkersScript if r.action != "cloudflare.worker.deploy" => Inverse::None {
            why: format!(
                "the agent changed Workers script {} ({}) but did not create it through tollgate: deleting it would \
                 remove the script itself",
                r.resource_id, r.action
            ),
            human: format!(
                "move its traffic back to the version that ran before (GET /client/v4/accounts/{acct}/workers/scripts/{id}/deployments, \
                 then POST …/deployments with that version at 100 %)",
                acct = r.account_id.as_deref().unwrap_or("{account_id}"),
                id = r.resource_id
            ),
        },
        ResourceKind::WorkersScript if replaced_existing(r) => Inverse::None {
            why: format!(
                "the agent's upload replaced Workers script {}, which exists since {}: deleting it would remove the \
                 earlier script too",
                r.resource_id,
                r.detail.get("created_on").and_then(Value::as_str).unwrap_or("?")
            ),
            human: format!(
                "restore the version that ran before the upload (GET /client/v4/accounts/{}/workers/scripts/{}/versions, \
                 then POST …/deployments with it at 100 %), or delete the script if it should not exist",
                r.account_id.as_deref().unwrap_or("{account_id}"),
                r.resource_id
            ),
        },
        ResourceKind::WorkersScript => step(
            "cloudflare.worker.delete",
            "DELETE",
            format!("/client/v4/accounts/{account}/workers/scripts/{id}"),
            &[],
            format!("delete Workers script {} of account {}", r.resource_id, r.account_id.as_deref().unwrap_or("?")),
            Some(
                "an upload (PUT) creates a script or replaces one: if this script existed before the agent's \
                 upload, deleting it removes the earlier script too; check its history before running this step",
            ),
        ),
        ResourceKind::Zone => step(
            "cloudflare.zone.delete",
            "DELETE",
            format!("/client/v4/zones/{id}"),
            &[],
            format!("delete zone {} {}", r.resource_id, r.detail.get("name").and_then(Value::as_str).unwrap_or("")),
            Some("deletes every DNS record, setting and certificate of the zone, including any made by others since"),
        ),
        ResourceKind::DomainRegistration => Inverse::None {
            why: format!(
                "domain {} was {} and paid for; registrations are non-refundable and cannot be undone by a call",
                r.resource_id,
                if r.action == "cloudflare.domain.transfer_in" {
                    "transferred in (with a year's renewal)"
                } else {
                    "registered"
                }
            ),
            human: format!(
                "decide whether to keep it. To let it lapse, turn auto-renew off (PATCH /client/v4/accounts/{}/registrar/registrations/{} \
                 with {{\"auto_renew\": false}}); to recover the money, ask Cloudflare billing support. Check what DNS \
                 and mail now point at it.",
                r.account_id.as_deref().unwrap_or("{account_id}"),
                r.resource_id
            ),
        },
        ResourceKind::StripeCustomer => step(
            "stripe.customer.delete",
            "DELETE",
            format!("/v1/customers/{id}"),
            &[],
            format!("delete Stripe customer {}", r.resource_id),
            Some("Stripe also cancels the customer's active subscriptions at once, including any not created by this agent"),
        ),
        ResourceKind::Subscription => step(
            "stripe.subscription.cancel",
            "DELETE",
            format!("/v1/subscriptions/{id}"),
            &[],
            format!("cancel Stripe subscription {} at once", r.resource_id),
            Some("what it already invoiced and collected stays collected: refunds are a person's decision"),
        ),
        ResourceKind::PaymentIntent => match status {
            Some("canceled") => Inverse::Gone,
            _ if later.of(&r.resource_id).iter().any(|(a, _)| a == "stripe.payment.capture") => {
                let decisions: Vec<String> = later
                    .of(&r.resource_id)
                    .iter()
                    .map(|(a, d)| format!("{a} {d}"))
                    .collect();
                Inverse::None {
                    why: format!(
                        "payment intent {} was captured after it was created ({}): the money moved",
                        r.resource_id,
                        decisions.join(", ")
                    ),
                    human: "decide on a refund (POST /v1/refunds with payment_intent, in the Stripe dashboard or by an \
                            operator), and tell the customer"
                        .to_string(),
                }
            }
            Some("succeeded") => Inverse::None {
                why: format!("payment intent {} was captured when it was created: the money moved", r.resource_id),
                human: "decide on a refund (POST /v1/refunds with payment_intent, in the Stripe dashboard or by an \
                        operator), and tell the customer"
                    .to_string(),
            },
            _ if !later.of(&r.resource_id).is_empty() => {
                let confirmed: Vec<String> = later
                    .of(&r.resource_id)
                    .iter()
                    .map(|(_, d)| d.to_string())
                    .collect();
                step(
                    "stripe.payment.cancel",
                    "POST",
                    format!("/v1/payment_intents/{id}/cancel"),
                    &[],
                    format!("cancel Stripe payment intent {} (confirmed since it was created)", r.resource_id),
                    Some(&format!(
                        "it was confirmed through tollgate after it was created (decision {}): if that captured it, \
                         Stripe refuses the cancel and a refund is a person's decision",
                        confirmed.join(", ")
                    )),
                )
            }
            _ => step(
                "stripe.payment.cancel",
                "POST",
                format!("/v1/payment_intents/{id}/cancel"),
                &[],
                format!("cancel Stripe payment intent {} (status {} when created)", r.resource_id, status.unwrap_or("unknown")),
                Some(
                    "if it was confirmed or captured since it was created, Stripe refuses the cancel: the money moved, \
                     and a refund is a person's decision",
                ),
            ),
        },
        ResourceKind::Product => step(
            "stripe.product.delete",
            "DELETE",
            format!("/v1/products/{id}"),
            &[],
            format!("delete Stripe product {}", r.resource_id),
            Some("Stripe refuses to delete a product that a price uses; archive it instead (POST /v1/products/{id} active=false)"),
        ),
        ResourceKind::Price => step(
            "stripe.price.update",
            "POST",
            format!("/v1/prices/{id}"),
            &[("active", "false")],
            format!("deactivate Stripe price {} (prices cannot be deleted)", r.resource_id),
            None,
        ),
    }
}

/// Whether a Workers upload replaced a script that existed before it: the answer's `created_on` is more than
/// [`REPLACED_AFTER`] older than the upload.
fn replaced_existing(r: &ResourceRow) -> bool {
    r.detail
        .get("created_on")
        .and_then(Value::as_str)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .is_some_and(|created| created.with_timezone(&Utc) < r.created_at - REPLACED_AFTER)
}

/// How much older than the upload a script's `created_on` must be for the upload to count as a replacement
/// (the provider's clock and tollgate's differ a little).
const REPLACED_AFTER: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

#[cfg(test)]
mod tests;
