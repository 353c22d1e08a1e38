//! The store's part of incidents (issue #17): created resources (`resources`), and the reads an incident
//! report needs — an agent and the handles it minted, its decisions by outcome, its spend, its minted tokens.
//!
//! Owns: the row types and the [`Store`] methods; each backend's SQL is in `postgres/resources.rs` and
//! `sqlite/resources.rs`, with the same meaning (`tests/tests/store_conformance.rs`).
//! Must not: know HTTP or what a rollback plan is.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::{AgentRow, Backend, MintedTokenRow, Store, StoreError};
use crate::resources::ResourceKind;

/// Whether a recorded resource still exists as far as tollgate saw: its text form is in
/// [`ResourceStatus::as_str`] / [`ResourceStatus::parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceStatus {
    Live,
    /// A delete (or cancel) of it went through tollgate with a 2xx answer.
    Deleted,
}

impl ResourceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceStatus::Live => "live",
            ResourceStatus::Deleted => "deleted",
        }
    }

    pub fn parse(text: &str) -> Option<ResourceStatus> {
        match text {
            "live" => Some(ResourceStatus::Live),
            "deleted" => Some(ResourceStatus::Deleted),
            _ => None,
        }
    }
}

/// A resource an agent created through tollgate (`resources`).
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceRow {
    pub id: Uuid,
    pub provider: String,
    pub kind: ResourceKind,
    /// The provider's id (a Workers script's name, a registration's domain name).
    pub resource_id: String,
    /// What the id does not make unique (`zone:<id>`, `account:<id>`, `stripe-account:<acct>` or empty);
    /// (provider, kind, resource_id, scope) is one row.
    pub scope: String,
    pub zone_id: Option<String>,
    pub account_id: Option<String>,
    /// The `Stripe-Account` header the create was sent with (a connected account).
    pub stripe_account: Option<String>,
    /// A few fields of the provider's answer (name, type, status, amount, currency).
    pub detail: Value,
    pub agent_id: Uuid,
    pub agent_name: String,
    pub run_id: Option<String>,
    pub decision_id: Uuid,
    pub action: String,
    pub created_at: DateTime<Utc>,
    pub status: ResourceStatus,
    pub deleted_at: Option<DateTime<Utc>>,
    pub deleted_by_decision: Option<Uuid>,
    /// The same agent's latest create or upload of it while live (a re-upload of its script), if any.
    pub updated_at: Option<DateTime<Utc>>,
    pub updated_by_decision: Option<Uuid>,
}

/// How many of an agent's decisions had one outcome and refusal code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DecisionCount {
    pub outcome: String,
    pub code: Option<String>,
    pub count: i64,
}

/// One call an agent was allowed that could change something (any risk but `read`), with what the provider
/// answered: what the incident report lists as what the agent did, deletes of others' work included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChangeRow {
    pub decision_id: Uuid,
    pub at: DateTime<Utc>,
    pub agent_name: Option<String>,
    pub action: String,
    pub risk: String,
    pub method: String,
    pub path: String,
    /// `None` when it was not answered (or the outcome is not recorded yet).
    pub upstream_status: Option<i32>,
}

/// An agent's reservations in one budget window and state, summed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentSpendRow {
    pub budget: String,
    pub subject: String,
    pub period: String,
    pub provider: String,
    /// `reserved`, `committed` or `released`.
    pub state: String,
    pub cents: i64,
    pub reservations: i64,
    /// Of `cents`, what is flagged (the upstream outcome unknown).
    pub flagged_cents: i64,
}

pub(super) fn decode_error(what: String) -> StoreError {
    StoreError::Unavailable(sqlx::Error::Decode(what.into()))
}

pub(super) fn kind_parse(text: &str) -> Result<ResourceKind, StoreError> {
    ResourceKind::parse(text).ok_or_else(|| decode_error(format!("unknown resource kind '{text}'")))
}

pub(super) fn resource_status_parse(text: &str) -> Result<ResourceStatus, StoreError> {
    ResourceStatus::parse(text)
        .ok_or_else(|| decode_error(format!("unknown resource status '{text}'")))
}

/// Runs the same call on whichever backend this store is.
macro_rules! on_backend {
    ($self:ident, $s:ident => $call:expr) => {
        match &$self.backend {
            Backend::Postgres($s) => $call,
            Backend::Sqlite($s) => $call,
        }
    };
}

impl Store {
    /// Records a created resource, one row per agent that made it; false (and the row unchanged) when this
    /// agent's row of the same resource, (provider, kind, id, scope), is already live: a replayed or
    /// idempotent create. Another agent's create or upload of a resource already recorded is a row of its own
    /// (a second upload to a Workers script is that agent's work too). A row whose resource was deleted is
    /// replaced: the same id made again (a Workers script name reused) is a new resource.
    pub async fn record_resource(&self, row: &ResourceRow) -> Result<bool, StoreError> {
        on_backend!(self, s => s.record_resource(row).await)
    }

    /// Marks every agent's live row of a resource deleted by `decision_id`; false when there is none.
    pub async fn mark_resource_deleted(
        &self,
        provider: &str,
        kind: ResourceKind,
        resource_id: &str,
        scope: &str,
        decision_id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        on_backend!(self, s => s.mark_resource_deleted(provider, kind, resource_id, scope, decision_id, at).await)
    }

    /// The resources these agents created or uploaded to again (at or after `since`), oldest first.
    pub async fn resources_of(
        &self,
        agent_ids: &[Uuid],
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<ResourceRow>, StoreError> {
        on_backend!(self, s => s.resources_of(agent_ids, since).await)
    }

    /// The calls these agents were allowed that could change something (risk not `read`), at or after
    /// `since`, newest first, at most `limit`.
    pub async fn agent_changes(
        &self,
        agent_ids: &[Uuid],
        since: Option<DateTime<Utc>>,
        limit: i64,
    ) -> Result<Vec<ChangeRow>, StoreError> {
        on_backend!(self, s => s.agent_changes(agent_ids, since, limit).await)
    }

    /// Live rows of agents other than these at the same address as a live row of these: a resource someone
    /// else also created or uploaded to, which a rollback of these agents must not simply delete.
    pub async fn resources_sharing(
        &self,
        agent_ids: &[Uuid],
    ) -> Result<Vec<ResourceRow>, StoreError> {
        on_backend!(self, s => s.resources_sharing(agent_ids).await)
    }

    /// The agent named `name` (ignoring case, as names are unique) followed by every handle agent it minted,
    /// directly or through another handle; empty when there is no such agent.
    pub async fn agent_family(&self, name: &str) -> Result<Vec<AgentRow>, StoreError> {
        on_backend!(self, s => s.agent_family(name).await)
    }

    /// These agents' decisions (at or after `since`) counted by outcome and refusal code.
    pub async fn decision_counts(
        &self,
        agent_ids: &[Uuid],
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<DecisionCount>, StoreError> {
        on_backend!(self, s => s.decision_counts(agent_ids, since).await)
    }

    /// These agents' reservations (made at or after `since`) summed by budget window and state.
    pub async fn agent_spend(
        &self,
        agent_ids: &[Uuid],
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<AgentSpendRow>, StoreError> {
        on_backend!(self, s => s.agent_spend(agent_ids, since).await)
    }

    /// The tokens these agents minted (minted_by), oldest first.
    pub async fn minted_tokens_by(
        &self,
        agent_ids: &[Uuid],
    ) -> Result<Vec<MintedTokenRow>, StoreError> {
        on_backend!(self, s => s.minted_tokens_by(agent_ids).await)
    }
}
