//! The store: the only module that speaks SQL.
//!
//! Owns: the row types the domain modules convert from and to, and [`Store`], one interface over two
//! backends — Postgres (`postgres.rs`, the system of record for production and several replicas) and an
//! embedded SQLite file (`sqlite.rs`, the single-node quick-start default). Both implement every method with
//! the same meaning; `tests/tests/store_conformance.rs` runs one suite against both so neither drifts.
//! Must not: know HTTP, policy or metrics. Errors leave as [`StoreError`], which callers map to a refusal
//! (`store_unavailable`) without ever showing its text to an agent.

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use uuid::Uuid;

mod nodelay;
mod postgres;
mod resources;
mod sqlite;

pub use postgres::{PgSink, PgStore};
pub use resources::{AgentSpendRow, ChangeRow, DecisionCount, ResourceRow, ResourceStatus};
pub use sqlite::SqliteStore;

/// The store behind every module: Postgres or the embedded SQLite file.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Postgres(PgStore),
    Sqlite(SqliteStore),
}

/// Where one audit writer commits its batches; see [`Store::decision_sink`].
pub enum DecisionSink {
    Postgres(PgSink),
    Sqlite(SqliteStore),
}

impl DecisionSink {
    /// Inserts a batch of decision records in one transaction.
    pub async fn insert_decisions(&mut self, rows: &[DecisionRow]) -> Result<(), StoreError> {
        match self {
            DecisionSink::Postgres(s) => s.insert_decisions(rows).await,
            DecisionSink::Sqlite(s) => s.insert_decisions(rows).await,
        }
    }

    /// The last committed record of a writer's chain: (seq, hash), or `None` for a chain with no record.
    pub async fn chain_head(
        &mut self,
        writer_id: Uuid,
    ) -> Result<Option<(i64, String)>, StoreError> {
        match self {
            DecisionSink::Postgres(s) => s.chain_head(writer_id).await,
            DecisionSink::Sqlite(s) => s.chain_head(writer_id).await,
        }
    }
}

/// Runs the same call on whichever backend this store is.
macro_rules! dispatch {
    ($self:ident, $s:ident => $call:expr) => {
        match &$self.backend {
            Backend::Postgres($s) => $call,
            Backend::Sqlite($s) => $call,
        }
    };
}

impl Store {
    /// Connects to `postgres://…` or opens `sqlite:…` (created if missing).
    pub async fn connect(url: &SecretString, max_connections: u32) -> Result<Store, StoreError> {
        let backend = if url.expose_secret().starts_with("sqlite:") {
            Backend::Sqlite(SqliteStore::open(url.expose_secret()).await?)
        } else {
            Backend::Postgres(PgStore::connect(url, max_connections).await?)
        };
        Ok(Store { backend })
    }

    pub fn is_embedded(&self) -> bool {
        matches!(self.backend, Backend::Sqlite(_))
    }

    /// For `serve` on the embedded store: refuse to run a second server on the same file. No-op on Postgres,
    /// where any number of replicas is the point.
    pub fn lock_for_serving(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Postgres(_) => Ok(()),
            Backend::Sqlite(s) => s.lock_for_serving(),
        }
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        dispatch!(self, s => s.migrate().await)
    }

    pub async fn ping(&self) -> bool {
        dispatch!(self, s => s.ping().await)
    }

    pub async fn close(&self) {
        dispatch!(self, s => s.close().await)
    }

    pub async fn insert_agent(&self, agent: &AgentRow) -> Result<(), StoreError> {
        dispatch!(self, s => s.insert_agent(agent).await)
    }

    pub async fn agent_by_key_hash(&self, key_hash: &str) -> Result<Option<AgentRow>, StoreError> {
        dispatch!(self, s => s.agent_by_key_hash(key_hash).await)
    }

    pub async fn agent_by_id(&self, id: Uuid) -> Result<Option<AgentRow>, StoreError> {
        dispatch!(self, s => s.agent_by_id(id).await)
    }

    pub async fn list_agents(&self) -> Result<Vec<AgentRow>, StoreError> {
        dispatch!(self, s => s.list_agents().await)
    }

    /// Revokes by name; false when there is no such active agent.
    pub async fn revoke_agent(&self, name: &str) -> Result<bool, StoreError> {
        dispatch!(self, s => s.revoke_agent(name).await)
    }

    /// Who created the agent with this id (`agents.created_by`); `None` when unknown or not recorded.
    pub async fn agent_created_by(&self, id: Uuid) -> Result<Option<String>, StoreError> {
        dispatch!(self, s => s.agent_created_by(id).await)
    }

    /// Records a token minted through tollgate and, in vault mode, its handle's agent, in one transaction.
    pub async fn record_minted_token(
        &self,
        row: &MintedTokenRow,
        handle: Option<&AgentRow>,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.record_minted_token(row, handle).await)
    }

    /// Records a roll: the token's old handle revoked, the new secret and handle stored, `rolled_at` set and
    /// `rolls` counted (a token tollgate has no row for gets one, minted by the rolling agent).
    pub async fn roll_minted_token(&self, roll: &TokenRoll<'_>) -> Result<(), StoreError> {
        dispatch!(self, s => s.roll_minted_token(roll).await)
    }

    /// Marks a token deleted, drops its sealed secret and revokes its handle; false when tollgate has no row
    /// for it.
    pub async fn delete_minted_token(
        &self,
        provider: &str,
        token_id: &str,
        decision_id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        dispatch!(self, s => s.delete_minted_token(provider, token_id, decision_id, at).await)
    }

    pub async fn minted_token(
        &self,
        provider: &str,
        token_id: &str,
    ) -> Result<Option<MintedTokenRow>, StoreError> {
        dispatch!(self, s => s.minted_token(provider, token_id).await)
    }

    /// The stored key check of each key id: the first one stored for an id is kept (a replica's own check is
    /// inserted only where none is), and all of them are returned.
    pub async fn vault_key_checks(
        &self,
        mine: &[crate::vault::SealedSecret],
    ) -> Result<Vec<crate::vault::SealedSecret>, StoreError> {
        dispatch!(self, s => s.vault_key_checks(mine).await)
    }

    /// A token rewritten through tollgate: its name and policies (when the update gave them) and expiry
    /// (`None`: none), and its handle's expiry with it. False when tollgate has no row for it.
    pub async fn update_minted_token(&self, update: &TokenUpdate<'_>) -> Result<bool, StoreError> {
        dispatch!(self, s => s.update_minted_token(update).await)
    }

    /// The tokens recorded under any spelling of `token_id` that the provider takes for the same token
    /// (ignoring case and hyphens: [`crate::vault::token_key`]).
    pub async fn minted_tokens_keyed(
        &self,
        provider: &str,
        token_key: &str,
    ) -> Result<Vec<MintedTokenRow>, StoreError> {
        dispatch!(self, s => s.minted_tokens_keyed(provider, token_key).await)
    }

    /// How many minted tokens are live at `now` (active or rolled, not past their expiry), per provider and
    /// custody (`vault`, `pass_through`).
    pub async fn minted_tokens_live(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, String, i64)>, StoreError> {
        dispatch!(self, s => s.minted_tokens_live(now).await)
    }

    /// Every token whose secret tollgate holds sealed and that is not deleted (active or rolled, expired or
    /// not): the secrets every answer is screened for ([`crate::vault::held`]).
    pub async fn vaulted_tokens(&self) -> Result<Vec<MintedTokenRow>, StoreError> {
        dispatch!(self, s => s.vaulted_tokens().await)
    }

    /// The token a handle's agent stands for.
    pub async fn minted_token_by_handle(
        &self,
        agent_id: Uuid,
    ) -> Result<Option<MintedTokenRow>, StoreError> {
        dispatch!(self, s => s.minted_token_by_handle(agent_id).await)
    }

    pub async fn insert_reviewer(&self, reviewer: &ReviewerRow) -> Result<(), StoreError> {
        dispatch!(self, s => s.insert_reviewer(reviewer).await)
    }

    /// The reviewer whose token hashes to this, revoked or not (the caller checks).
    pub async fn reviewer_by_token_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<ReviewerRow>, StoreError> {
        dispatch!(self, s => s.reviewer_by_token_hash(token_hash).await)
    }

    /// The active reviewer with this email (case-insensitive), for single sign-on.
    pub async fn reviewer_by_email(&self, email: &str) -> Result<Option<ReviewerRow>, StoreError> {
        dispatch!(self, s => s.reviewer_by_email(email).await)
    }

    pub async fn list_reviewers(&self) -> Result<Vec<ReviewerRow>, StoreError> {
        dispatch!(self, s => s.list_reviewers().await)
    }

    /// Revokes by name; false when there is no such active reviewer.
    pub async fn revoke_reviewer(&self, name: &str) -> Result<bool, StoreError> {
        dispatch!(self, s => s.revoke_reviewer(name).await)
    }

    /// Replaces an active reviewer's token hash (the old token stops working in the same statement); false
    /// when there is no such active reviewer.
    pub async fn rotate_reviewer(
        &self,
        name: &str,
        token_hash: &str,
        token_prefix: &str,
    ) -> Result<bool, StoreError> {
        dispatch!(self, s => s.rotate_reviewer(name, token_hash, token_prefix).await)
    }

    /// Notes that a reviewer's token was used now; written at most once a minute per reviewer.
    pub async fn touch_reviewer(&self, id: Uuid) -> Result<(), StoreError> {
        dispatch!(self, s => s.touch_reviewer(id).await)
    }

    /// A number that changes whenever any agent row changes (insert, revoke).
    pub async fn agents_version(&self) -> Result<i64, StoreError> {
        dispatch!(self, s => s.agents_version().await)
    }

    // ---- console (issue #16) ----

    /// A reviewer by id, revoked or not (the caller checks).
    pub async fn reviewer_by_id(&self, id: Uuid) -> Result<Option<ReviewerRow>, StoreError> {
        dispatch!(self, s => s.reviewer_by_id(id).await)
    }

    /// Opens a console session; sessions that ended or expired more than a day ago are deleted on the way.
    pub async fn insert_console_session(&self, row: &ConsoleSessionRow) -> Result<(), StoreError> {
        dispatch!(self, s => s.insert_console_session(row).await)
    }

    /// The open, unexpired session whose cookie hashes to `id_hash`.
    pub async fn console_session(
        &self,
        id_hash: &str,
    ) -> Result<Option<ConsoleSessionRow>, StoreError> {
        dispatch!(self, s => s.console_session(id_hash).await)
    }

    /// Ends a session (sign-out); a no-op for one already ended.
    pub async fn end_console_session(&self, id_hash: &str) -> Result<(), StoreError> {
        dispatch!(self, s => s.end_console_session(id_hash).await)
    }

    /// The pending (unexpired) approvals, oldest first, optionally of one agent: the review queue.
    pub async fn pending_queue(
        &self,
        agent: Option<&str>,
        limit: i64,
    ) -> Result<Vec<ApprovalRow>, StoreError> {
        dispatch!(self, s => s.pending_queue(agent, limit).await)
    }

    /// As [`Store::open_approval`], but when the call has no open approval and its principal (the agent, or
    /// for a handle the agent that minted it) already has `cap` pending ones, its handles' included, opens
    /// none: [`Opened::TooMany`] with the count. The count and the insert are one transaction under a
    /// per-principal lock (Postgres; SQLite's one connection serializes them), so parallel requests cannot
    /// pass the cap.
    pub async fn open_approval_capped(
        &self,
        new: &ApprovalRow,
        principal: Uuid,
        cap: i64,
    ) -> Result<Opened, StoreError> {
        dispatch!(self, s => s.open_approval_capped(new, principal, cap).await)
    }

    /// How many pending (unexpired) approvals each agent has, most first.
    pub async fn pending_by_agent(&self) -> Result<Vec<(String, i64)>, StoreError> {
        dispatch!(self, s => s.pending_by_agent().await)
    }

    /// When each agent (by name) last had a decision recorded; agents never seen are absent.
    pub async fn agents_last_seen(&self) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
        dispatch!(self, s => s.agents_last_seen().await)
    }

    /// A handle for one audit writer that keeps its own connection between batches (Postgres); on SQLite,
    /// whose one pooled connection serializes everything anyway, it is the store itself.
    pub fn decision_sink(&self) -> DecisionSink {
        match &self.backend {
            Backend::Postgres(s) => DecisionSink::Postgres(s.sink()),
            Backend::Sqlite(s) => DecisionSink::Sqlite(s.clone()),
        }
    }

    /// Inserts a batch of decision records in one transaction.
    pub async fn insert_decisions(&self, rows: &[DecisionRow]) -> Result<(), StoreError> {
        dispatch!(self, s => s.insert_decisions(rows).await)
    }

    /// Inserts a batch of upstream outcomes in one transaction; an outcome already recorded is kept.
    pub async fn insert_outcomes(&self, outcomes: &[OutcomeRow]) -> Result<(), StoreError> {
        dispatch!(self, s => s.insert_outcomes(outcomes).await)
    }

    pub async fn decision(
        &self,
        id: Uuid,
    ) -> Result<Option<(DecisionRow, Option<OutcomeRow>)>, StoreError> {
        dispatch!(self, s => s.decision(id).await)
    }

    /// Newest first, keyset-paginated.
    pub async fn list_decisions(
        &self,
        filter: &DecisionFilter,
    ) -> Result<Vec<(DecisionRow, Option<OutcomeRow>)>, StoreError> {
        dispatch!(self, s => s.list_decisions(filter).await)
    }

    /// Recorded policy inputs and what the policy said, oldest first, for `tollgate replay`.
    pub async fn replayable_decisions(
        &self,
        since: Option<DateTime<Utc>>,
        limit: i64,
    ) -> Result<Vec<ReplayRow>, StoreError> {
        dispatch!(self, s => s.replayable_decisions(since, limit).await)
    }

    /// Appends one checkpoint of a writer's chain.
    pub async fn insert_checkpoint(&self, checkpoint: &CheckpointRow) -> Result<(), StoreError> {
        dispatch!(self, s => s.insert_checkpoint(checkpoint).await)
    }

    /// Every checkpoint, oldest first, for `audit verify`.
    pub async fn checkpoints(&self) -> Result<Vec<CheckpointRow>, StoreError> {
        dispatch!(self, s => s.checkpoints().await)
    }

    /// Deletes, writer by writer, the start of each chain up to the last record before `before` (records
    /// are cut in chain order: a chain is cut before its first record at or after `before`), with their
    /// outcomes. Each cut writes its `prune` checkpoint (the head at the cut) in the same transaction, which
    /// is what lets the append-only trigger delete the rows. Returns the checkpoints written and how many
    /// decisions each cut removed.
    pub async fn prune_decisions(
        &self,
        before: DateTime<Utc>,
        now: DateTime<Utc>,
        note: &str,
    ) -> Result<Vec<(CheckpointRow, u64)>, StoreError> {
        dispatch!(self, s => s.prune_decisions(before, now, note).await)
    }

    /// Every decision of one writer in chain order, for `audit verify`.
    pub async fn writer_chain(&self, writer_id: Uuid) -> Result<Vec<DecisionRow>, StoreError> {
        dispatch!(self, s => s.writer_chain(writer_id).await)
    }

    pub async fn writers(&self) -> Result<Vec<Uuid>, StoreError> {
        dispatch!(self, s => s.writers().await)
    }

    /// Reserves a charge against its window atomically (see the backends for how).
    pub async fn reserve(&self, r: &NewReservation<'_>) -> Result<Reservation, StoreError> {
        dispatch!(self, s => s.reserve(r).await)
    }

    /// Commits or releases a reservation; returns the cents moved (None if no open reservation).
    pub async fn settle(&self, decision_id: Uuid, commit: bool) -> Result<Option<i64>, StoreError> {
        dispatch!(self, s => s.settle(decision_id, commit).await)
    }

    /// Marks a reservation whose outcome is unknown; it stays reserved.
    /// Flags every reservation still `reserved`, unflagged, and created before `before`: one whose request's
    /// lifecycle ended without settling it (a settlement that failed while the store was away, a process
    /// killed mid-request). How many were flagged.
    pub async fn flag_stale_reservations(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        dispatch!(self, s => s.flag_stale_reservations(before).await)
    }

    pub async fn flag_reservation(&self, decision_id: Uuid) -> Result<(), StoreError> {
        dispatch!(self, s => s.flag_reservation(decision_id).await)
    }

    /// Flagged reservations still reserved, oldest first.
    pub async fn flagged_reservations(&self) -> Result<Vec<FlaggedReservation>, StoreError> {
        dispatch!(self, s => s.flagged_reservations().await)
    }

    /// An operator settles a flagged reservation: committed or released, with who and why kept on the
    /// reservation and in `admin_actions`, in one transaction. `None` if it is not a flagged, reserved one.
    pub async fn settle_flagged(
        &self,
        decision_id: Uuid,
        how: ManualSettlement,
        by: &str,
        note: &str,
    ) -> Result<Option<i64>, StoreError> {
        dispatch!(self, s => s.settle_flagged(decision_id, how, by, note).await)
    }

    /// committed + reserved in one window (0 if it has no row yet).
    pub async fn window_spent(&self, window: &WindowKey) -> Result<i64, StoreError> {
        dispatch!(self, s => s.window_spent(window).await)
    }

    pub async fn spend(&self, period: &str) -> Result<Vec<SpendRow>, StoreError> {
        dispatch!(self, s => s.spend(period).await)
    }

    /// The open (pending or approved, unexpired) approval for this fingerprint, or a new pending one.
    pub async fn open_approval(&self, new: &ApprovalRow) -> Result<ApprovalRow, StoreError> {
        dispatch!(self, s => s.open_approval(new).await)
    }

    pub async fn decide_approval(
        &self,
        id: Uuid,
        approve: bool,
        by: &str,
        note: Option<&str>,
    ) -> Result<Option<ApprovalRow>, StoreError> {
        dispatch!(self, s => s.decide_approval(id, approve, by, note).await)
    }

    /// Uses an approval for the request with this fingerprint, once: only one concurrent caller can win.
    /// `key` is the Idempotency-Key the request is forwarded with (namespaced), kept for its retries.
    pub async fn consume_approval(
        &self,
        id: Uuid,
        fingerprint: &str,
        decision_id: Uuid,
        key: Option<&str>,
    ) -> Result<bool, StoreError> {
        dispatch!(self, s => s.consume_approval(id, fingerprint, decision_id, key).await)
    }

    /// The decision that consumed approval `id` for the request with this fingerprint and forwarded
    /// Idempotency-Key `key`, at or after `since`, while the approval is unexpired: a retry of that very
    /// request may go out under it again. Counts the retry, after which the approval is never handed back.
    pub async fn approval_retry(
        &self,
        id: Uuid,
        fingerprint: &str,
        key: &str,
        since: DateTime<Utc>,
    ) -> Result<Option<Uuid>, StoreError> {
        dispatch!(self, s => s.approval_retry(id, fingerprint, key, since).await)
    }

    /// Hands a consumed approval back (approved again), unless a retry already went out under it.
    pub async fn restore_approval(&self, id: Uuid) -> Result<(), StoreError> {
        dispatch!(self, s => s.restore_approval(id).await)
    }

    pub async fn approval(&self, id: Uuid) -> Result<Option<ApprovalRow>, StoreError> {
        dispatch!(self, s => s.approval(id).await)
    }

    pub async fn list_approvals(
        &self,
        status: Option<&str>,
        limit: i64,
    ) -> Result<Vec<ApprovalRow>, StoreError> {
        dispatch!(self, s => s.list_approvals(status, limit).await)
    }

    /// How many approvals wait for a reviewer, and since when the oldest one waits.
    pub async fn pending_approvals(&self) -> Result<(i64, Option<DateTime<Utc>>), StoreError> {
        dispatch!(self, s => s.pending_approvals().await)
    }

    /// Per provider, the highest (committed + reserved) / cap of any budget window in `period`.
    pub async fn budget_usage(&self, period: &str) -> Result<Vec<(String, f64)>, StoreError> {
        dispatch!(self, s => s.budget_usage(period).await)
    }

    pub async fn frozen(&self) -> Result<bool, StoreError> {
        dispatch!(self, s => s.frozen().await)
    }

    pub async fn set_frozen(&self, frozen: bool, by: &str) -> Result<(), StoreError> {
        dispatch!(self, s => s.set_frozen(frozen, by).await)
    }

    /// The freeze switch with who last changed it, when, and the reason the latest `freeze`/`unfreeze` admin
    /// action gave (when that action agrees with the switch).
    pub async fn freeze_state(&self) -> Result<FreezeState, StoreError> {
        dispatch!(self, s => s.freeze_state().await)
    }

    pub async fn record_admin_action(
        &self,
        actor: &str,
        action: &str,
        target: Option<&str>,
        detail: &Value,
    ) -> Result<Uuid, StoreError> {
        dispatch!(self, s => s.record_admin_action(actor, action, target, detail).await)
    }

    // ---- notifications (the webhook outbox; `notify` owns what goes in it) ----

    /// Queues deliveries; one already queued for the same (webhook, event key) is kept as it is, so every
    /// replica may queue the events it sees and each becomes one row. How many rows were new.
    pub async fn enqueue_notifications(&self, rows: &[NewNotification]) -> Result<u64, StoreError> {
        dispatch!(self, s => s.enqueue_notifications(rows).await)
    }

    /// Claims up to `limit` pending deliveries of these webhooks that are due at `now` and not leased by
    /// another claim, leasing them to `owner` until `lease_until` and counting the attempt. Concurrent
    /// claims (other replicas) never get the same row while its lease runs.
    pub async fn claim_notifications(
        &self,
        webhooks: &[String],
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        owner: Uuid,
        limit: i64,
    ) -> Result<Vec<NotificationRow>, StoreError> {
        dispatch!(self, s => s.claim_notifications(webhooks, now, lease_until, owner, limit).await)
    }

    /// Records the attempt of a delivery claimed by `owner` and releases its lease. False when the claim
    /// was lost (its lease ran out and another claim took the row): nothing is written then.
    pub async fn finish_notification(
        &self,
        id: Uuid,
        owner: Uuid,
        attempt: &DeliveryAttempt,
    ) -> Result<bool, StoreError> {
        dispatch!(self, s => s.finish_notification(id, owner, attempt).await)
    }

    /// The most recent deliveries, newest first.
    pub async fn list_notifications(&self, limit: i64) -> Result<Vec<NotificationRow>, StoreError> {
        dispatch!(self, s => s.list_notifications(limit).await)
    }

    /// How many deliveries to these webhooks are still pending (queued or waiting for a retry). Rows of a
    /// webhook no longer configured stay pending for ever and are not counted.
    pub async fn notifications_pending(&self, webhooks: &[String]) -> Result<i64, StoreError> {
        dispatch!(self, s => s.notifications_pending(webhooks).await)
    }

    /// The approvals a notification sweep looks at: every pending, unexpired one, and every one decided at
    /// or after `since` (newest first, at most `limit`: a backlog of old ones never hides a new one).
    pub async fn approvals_to_announce(
        &self,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<ApprovalRow>, StoreError> {
        dispatch!(self, s => s.approvals_to_announce(since, now, limit).await)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The message already carries sqlx's own (and its cause's), so it is not also chained as a source:
    /// `{:#}` would print each part three times.
    #[error("database unavailable: {0}")]
    Unavailable(sqlx::Error),
    #[error("{0} already exists")]
    Conflict(String),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// The embedded store's file is already served by another process.
    #[error("{0}")]
    Locked(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Unavailable(e)
    }
}

/// An agent as stored; `identity` turns it into an `Agent`.
#[derive(Debug, Clone)]
pub struct AgentRow {
    pub id: Uuid,
    pub name: String,
    pub team: Option<String>,
    pub scopes: Vec<String>,
    pub labels: Value,
    pub key_hash: String,
    pub key_prefix: String,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// Who created it: a reviewer's name (admin API) or `local:<user>` (CLI); `None` for agents from before.
    pub created_by: Option<String>,
    /// For a handle's agent (vault mode): the agent that minted the token it stands for.
    pub minted_by: Option<Uuid>,
    /// For a handle's agent: the provider's id of the token it stands for.
    pub minted_token_id: Option<String>,
}

/// A state of a minted token; its text form lives in [`MintedStatus::as_str`] and [`MintedStatus::parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MintedStatus {
    Active,
    /// Live, with a secret rolled at `rolled_at`.
    Rolled,
    Deleted,
    Expired,
}

impl MintedStatus {
    /// Whether a token in this state still works at the provider.
    pub fn is_live(self) -> bool {
        matches!(self, MintedStatus::Active | MintedStatus::Rolled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MintedStatus::Active => "active",
            MintedStatus::Rolled => "rolled",
            MintedStatus::Deleted => "deleted",
            MintedStatus::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<MintedStatus> {
        Some(match text {
            "active" => MintedStatus::Active,
            "rolled" => MintedStatus::Rolled,
            "deleted" => MintedStatus::Deleted,
            "expired" => MintedStatus::Expired,
            _ => return None,
        })
    }
}

fn custody_text(c: crate::vault::Custody) -> &'static str {
    match c {
        crate::vault::Custody::Vault => "vault",
        crate::vault::Custody::PassThrough => "pass_through",
    }
}

fn custody_parse(text: &str) -> Result<crate::vault::Custody, StoreError> {
    match text {
        "vault" => Ok(crate::vault::Custody::Vault),
        "pass_through" => Ok(crate::vault::Custody::PassThrough),
        other => Err(StoreError::Unavailable(sqlx::Error::Decode(
            format!("unknown custody '{other}'").into(),
        ))),
    }
}

fn status_parse(text: &str) -> Result<MintedStatus, StoreError> {
    MintedStatus::parse(text).ok_or_else(|| {
        StoreError::Unavailable(sqlx::Error::Decode(
            format!("unknown minted token status '{text}'").into(),
        ))
    })
}

/// A provider token minted through tollgate (`minted_tokens`). Its secret, if tollgate keeps it, is only
/// ever here sealed.
#[derive(Debug, Clone, PartialEq)]
pub struct MintedTokenRow {
    pub provider: String,
    pub token_id: String,
    pub name: Option<String>,
    /// The policies the create request granted.
    pub policies: Value,
    pub expires_on: Option<DateTime<Utc>>,
    pub status: MintedStatus,
    pub custody: crate::vault::Custody,
    pub minted_by: Uuid,
    pub minted_by_name: String,
    pub decision_id: Uuid,
    /// The decision of the latest roll or delete (the create's until then).
    pub last_decision_id: Uuid,
    pub handle_agent_id: Option<Uuid>,
    pub sealed: Option<crate::vault::SealedSecret>,
    pub rolls: i64,
    pub created_at: DateTime<Utc>,
    pub rolled_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
    /// The Cloudflare account of an account token (`/accounts/{account_id}/tokens`); `None` for a user token.
    pub account_id: Option<String>,
}

impl MintedTokenRow {
    /// The status as of `now`: a live token past its `expires_on` is expired.
    pub fn status_at(&self, now: DateTime<Utc>) -> MintedStatus {
        match self.status {
            MintedStatus::Active | MintedStatus::Rolled
                if self.expires_on.is_some_and(|t| t <= now) =>
            {
                MintedStatus::Expired
            }
            s => s,
        }
    }
}

/// A roll of a token's secret: the old handle (if any) is revoked, the new one (if any) takes its place.
#[derive(Debug, Clone)]
pub struct TokenRoll<'a> {
    pub provider: &'a str,
    pub token_id: &'a str,
    pub custody: crate::vault::Custody,
    pub sealed: Option<crate::vault::SealedSecret>,
    pub handle: Option<&'a AgentRow>,
    pub decision_id: Uuid,
    /// The agent that rolled it: recorded as the minter when tollgate has no row for the token yet.
    pub agent_id: Uuid,
    pub agent_name: &'a str,
    pub at: DateTime<Utc>,
    /// The account of an account token, from the route (kept when tollgate has a row already).
    pub account_id: Option<&'a str>,
}

/// A token rewritten through tollgate (`cloudflare.token.update`).
#[derive(Debug, Clone)]
pub struct TokenUpdate<'a> {
    pub provider: &'a str,
    pub token_id: &'a str,
    pub name: Option<String>,
    pub policies: Option<Value>,
    pub expires_on: Option<DateTime<Utc>>,
    pub decision_id: Uuid,
}

/// What [`Store::open_approval_capped`] did.
#[derive(Debug, Clone)]
pub enum Opened {
    /// The call's open approval: the one it already had, or a new pending one.
    Approval(Box<ApprovalRow>),
    /// None opened: the agent already has this many pending.
    TooMany(i64),
}

/// A console sign-in as stored: the SHA-256 of the cookie value, never the value itself.
#[derive(Debug, Clone)]
pub struct ConsoleSessionRow {
    pub id_hash: String,
    /// `None` for the bootstrap admin.
    pub reviewer_id: Option<Uuid>,
    pub reviewer_name: String,
    /// What the session was opened with: the SHA-256 of the token, or `sso:<email>`. A session whose
    /// reviewer no longer has this credential (rotated, revoked) is not honoured.
    pub credential_hash: String,
    pub csrf_token: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// A reviewer account as stored; `reviewers` turns it into a `Reviewer`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReviewerRow {
    pub id: Uuid,
    pub name: String,
    pub email: Option<String>,
    /// `viewer`, `approver`, `operator` or `admin`.
    pub role: String,
    #[serde(skip)]
    pub token_hash: String,
    pub token_prefix: String,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub revoked_at: Option<DateTime<Utc>>,
    pub rotated_at: Option<DateTime<Utc>>,
    pub last_used: Option<DateTime<Utc>>,
}

/// Where a writer's chain stood at a moment: written at start, periodically, at shutdown and by `audit prune`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckpointRow {
    pub writer_id: Uuid,
    /// The head's sequence number; 0 for a chain with no record yet.
    pub seq: i64,
    /// The head's hash (the genesis hash at seq 0).
    pub hash: String,
    /// `start`, `periodic`, `shutdown` or `prune`.
    pub kind: String,
    pub at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One decision record as written by the audit writer.
#[derive(Debug, Clone)]
pub struct DecisionRow {
    pub id: Uuid,
    pub at: DateTime<Utc>,
    pub writer_id: Uuid,
    pub seq: i64,
    pub prev_hash: String,
    pub hash: String,
    pub agent_id: Option<Uuid>,
    pub agent_name: Option<String>,
    pub run_id: Option<String>,
    pub on_behalf_of: Option<String>,
    pub provider: String,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub action: String,
    pub risk: String,
    pub outcome: String,
    pub code: Option<String>,
    /// JSON texts, stored verbatim (`json` columns) so the hash chain covers exactly what is stored.
    pub rules: String,
    pub reasons: String,
    pub policy_revision: Option<String>,
    pub charge_cents: Option<i64>,
    pub approval_id: Option<String>,
    pub input: Option<String>,
    pub policy_outcome: Option<String>,
    pub shadow_outcome: Option<String>,
}

/// What happened upstream after a permitted request was forwarded.
#[derive(Debug, Clone)]
pub struct OutcomeRow {
    pub decision_id: Uuid,
    pub at: DateTime<Utc>,
    pub upstream_status: Option<i32>,
    pub latency_us: i64,
    pub error: Option<String>,
    pub flagged: bool,
}

/// Filters of `GET /api/decisions` and `tollgate decisions`.
#[derive(Debug, Clone, Default)]
pub struct DecisionFilter {
    pub agent: Option<String>,
    pub action: Option<String>,
    pub outcome: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub provider: Option<String>,
    /// Rows strictly older than this.
    pub until: Option<DateTime<Utc>>,
    /// Keyset cursor: rows strictly older than (at, id).
    pub before: Option<(DateTime<Utc>, Uuid)>,
    pub limit: i64,
}

/// One recorded decision as `tollgate replay` needs it.
#[derive(Debug, Clone)]
pub struct ReplayRow {
    pub id: Uuid,
    pub at: DateTime<Utc>,
    pub agent_name: Option<String>,
    pub action: String,
    pub policy_outcome: String,
    pub input: String,
}

/// Which budget window a charge counts against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowKey {
    pub budget: String,
    pub subject: String,
    pub period: String,
}

pub struct NewReservation<'a> {
    pub window: &'a WindowKey,
    pub provider: &'a str,
    pub agent_id: Uuid,
    pub decision_id: Uuid,
    pub cents: i64,
    pub cap_cents: i64,
    /// For a provider that replays repeated idempotency keys: the key as forwarded and its scope.
    pub idempotency: Option<Idempotency<'a>>,
    /// The request fingerprint (what a replay must repeat exactly).
    pub fingerprint: &'a str,
}

/// An `Idempotency-Key` as the provider sees it: the key as forwarded (already namespaced per agent), the
/// account headers that scope it, and how long the provider replays it.
#[derive(Debug, Clone, Copy)]
pub struct Idempotency<'a> {
    pub key: &'a str,
    /// `Stripe-Account` and `Stripe-Context` as sent (empty when absent).
    pub account: &'a str,
    /// A repeat within this many seconds of the first use is a replay; after it, a new request.
    pub window_secs: i64,
}

/// What an earlier use of the same idempotency key means for a new reservation, or `None` when the new one
/// takes the key over and is charged as new (the earlier use expired from the provider's window, was
/// released, or has an unknown outcome — a retry after a 5xx may run anew at the provider).
///
/// Only an earlier use that committed (the provider acted and saved its answer) makes an identical repeat a
/// free replay; one still in flight makes it wait, because if the first then fails validation the provider
/// keeps nothing and the repeat would run as a new request.
/// The settle note of a flagged reservation whose money a same-key retry (decision `by`) took over.
pub(crate) fn replaced_note(by: Uuid) -> String {
    format!("replaced by same-key retry {by}: the same call, counted once")
}

pub(crate) fn earlier_use(
    live: bool,
    state: &str,
    flagged: bool,
    same_request: bool,
) -> Option<Reservation> {
    if !live || state == "released" {
        return None;
    }
    if !same_request {
        return Some(Reservation::IdempotencyConflict);
    }
    match (state, flagged) {
        ("committed", _) => Some(Reservation::Replayed),
        ("reserved", false) => Some(Reservation::IdempotencyInFlight),
        _ => None,
    }
}

/// A reservation whose upstream outcome is unknown (timeout, 5xx, broken exchange), waiting for an operator.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FlaggedReservation {
    pub decision_id: Uuid,
    pub budget: String,
    pub subject: String,
    pub period: String,
    pub agent_id: Uuid,
    pub provider: String,
    pub cents: i64,
    pub created_at: DateTime<Utc>,
}

/// How an operator settles a flagged reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManualSettlement {
    /// The provider did act: the money counts as spent.
    Committed,
    /// The provider did not act: the money goes back to the budget.
    Released,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    Reserved,
    /// Reserved, and the same request's earlier use of its Idempotency-Key had an unknown outcome (its
    /// reservation flagged): the provider acts on the key at most once, so this reservation took the earlier
    /// one's money over (released it, note [`replaced_note`]) and the retry's answer settles the call (see
    /// `ledger::Settlement::of_retry`).
    ReservedReplacing(Uuid),
    /// A repeat of an already charged request (same Idempotency-Key, same request): not charged again.
    Replayed,
    /// The same Idempotency-Key was used for a different request.
    IdempotencyConflict,
    /// The first request with this key is still in flight (reserved, no answer yet): a repeat now could run
    /// as a new request at the provider if the first one fails, so it waits for the first one's answer.
    IdempotencyInFlight,
    Exceeded {
        cap_cents: i64,
        committed_cents: i64,
        reserved_cents: i64,
    },
}

/// The freeze switch as `GET /api/freeze` and `tollgate freeze status` show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FreezeState {
    pub frozen: bool,
    /// Who set the switch last; `None` while it has its initial value.
    pub changed_by: Option<String>,
    pub changed_at: Option<DateTime<Utc>>,
    pub reason: Option<String>,
}

impl FreezeState {
    /// Puts together the switch row and the latest `freeze`/`unfreeze` admin action (its action name and
    /// detail): the action's `reason` counts only when the action agrees with the switch, so a reason is
    /// never shown for a state someone else set without one.
    fn assemble(
        frozen: bool,
        changed_by: Option<String>,
        changed_at: Option<DateTime<Utc>>,
        latest: Option<(String, Value)>,
    ) -> FreezeState {
        let reason = latest
            .filter(|(action, _)| (action == "freeze") == frozen)
            .and_then(|(_, detail)| {
                detail
                    .get("reason")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
        FreezeState {
            frozen,
            changed_at: changed_by.as_ref().and(changed_at),
            changed_by,
            reason,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SpendRow {
    pub budget: String,
    pub subject: String,
    pub period: String,
    pub provider: String,
    pub cap_cents: i64,
    pub committed_cents: i64,
    pub reserved_cents: i64,
    pub flagged_cents: i64,
}

#[derive(Debug, Clone)]
pub struct ApprovalRow {
    pub id: Uuid,
    pub fingerprint: String,
    pub agent_id: Uuid,
    pub agent_name: String,
    pub provider: String,
    pub method: String,
    pub path: String,
    pub query: String,
    /// The judged headers (`name: value` lines of Content-Type, Stripe-Account, Stripe-Context,
    /// Stripe-Version) the approval is bound to.
    pub headers: String,
    pub body_sha256: String,
    pub action: String,
    pub reasons: Value,
    pub charge_cents: Option<i64>,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub requested_by_decision: Uuid,
    /// `Tollgate-On-Behalf-Of` of the request that opened it (part of its fingerprint).
    pub on_behalf_of: Option<String>,
    pub decided_by: Option<String>,
    pub decided_at: Option<DateTime<Utc>>,
    pub note: Option<String>,
    pub consumed_at: Option<DateTime<Utc>>,
    pub consumed_by_decision: Option<Uuid>,
}

/// Where a webhook delivery stands. Converted to and from its text here only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationStatus {
    /// Queued, or waiting for its next attempt.
    Pending,
    Delivered,
    /// Given up after the configured attempts.
    Failed,
}

impl NotificationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationStatus::Pending => "pending",
            NotificationStatus::Delivered => "delivered",
            NotificationStatus::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Result<NotificationStatus, StoreError> {
        match text {
            "pending" => Ok(NotificationStatus::Pending),
            "delivered" => Ok(NotificationStatus::Delivered),
            "failed" => Ok(NotificationStatus::Failed),
            other => Err(StoreError::Unavailable(sqlx::Error::Decode(
                format!("unknown notification status '{other}'").into(),
            ))),
        }
    }
}

/// A delivery to queue: one event for one webhook, its body already rendered.
#[derive(Debug, Clone)]
pub struct NewNotification {
    pub id: Uuid,
    pub webhook: String,
    /// `approval_required`, `approval_decided`, `budget_threshold` or `freeze` (`notify::Event`).
    pub event: String,
    pub event_key: String,
    pub subject: Option<String>,
    pub body: String,
    pub created_at: DateTime<Utc>,
}

/// A queued delivery as stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NotificationRow {
    pub id: Uuid,
    pub webhook: String,
    pub event: String,
    pub event_key: String,
    pub subject: Option<String>,
    #[serde(skip)]
    pub body: String,
    pub status: NotificationStatus,
    /// Attempts started so far (a claim counts one).
    pub attempts: i64,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: DateTime<Utc>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// What one delivery attempt came to.
#[derive(Debug, Clone)]
pub struct DeliveryAttempt {
    pub at: DateTime<Utc>,
    /// The receiver's HTTP status, when it answered.
    pub http_status: Option<i32>,
    /// Why it did not count as delivered (never a URL or secret).
    pub error: Option<String>,
    pub next: NextStep,
}

/// Where a delivery goes after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    Delivered,
    RetryAt(DateTime<Utc>),
    GiveUp,
}

impl DeliveryAttempt {
    fn status(&self) -> NotificationStatus {
        match self.next {
            NextStep::Delivered => NotificationStatus::Delivered,
            NextStep::RetryAt(_) => NotificationStatus::Pending,
            NextStep::GiveUp => NotificationStatus::Failed,
        }
    }

    fn retry_at(&self) -> Option<DateTime<Utc>> {
        match self.next {
            NextStep::RetryAt(t) => Some(t),
            _ => None,
        }
    }
}
