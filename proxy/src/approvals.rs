//! Human approvals bound to the exact call.
//!
//! Owns: the request fingerprint (agent, provider, method, canonical path, canonical query, the judged
//! headers, body hash) and the approval fingerprint (the request's plus its charge: amount, budget and
//! window), the
//! approval lifecycle (pending → approved | denied | expired; approved → consumed once), and
//! [`ConsumedApproval`], the proof that an approval was used for this request — which `forward::Permit`
//! requires for an `approve` decision.
//! Must not: forward anything, or decide whether an action needs approval (the policy does).

use std::time::Duration;

use chrono::Utc;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::store::{ApprovalRow, Opened, Store, StoreError};

/// One hour: long enough for a reviewer to look, short enough that consent is about now.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// Proof that an approval was consumed for the request being forwarded. Only [`Approvals::consume`] makes it,
/// and [`Approvals::retry`] for a same-key retry of the request that consumed it.
#[derive(Debug)]
pub struct ConsumedApproval {
    id: Uuid,
    /// The decision whose request consumed the approval, when this request is a retry of it.
    retry_of: Option<Uuid>,
}

impl ConsumedApproval {
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The request this one retries (same call, same forwarded Idempotency-Key), if it is a retry.
    pub fn retry_of(&self) -> Option<Uuid> {
        self.retry_of
    }
}

/// How a held request's approval ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Approved,
    /// Denied, expired or used: the reason, for the agent.
    Closed(&'static str),
    /// The hold ended before a reviewer decided.
    StillPending,
    /// The agent disconnected while held: the approval stays pending for a retry that presents it.
    AgentGone,
}

/// How often a held request looks for the reviewer's decision.
const HOLD_POLL: Duration = Duration::from_millis(250);

/// The exact call an approval is for.
pub struct Call<'a> {
    pub agent_id: Uuid,
    /// Whom the agent acts for ([`crate::identity::Agent::principal_id`]): the pending cap counts the
    /// principal's approvals and its handles' together, so minting tokens opens no second queue.
    pub principal_id: Uuid,
    pub agent_name: &'a str,
    pub provider: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub canonical_query: &'a str,
    /// The headers that change what the provider does, as forwarded: `name: value` lines of
    /// Content-Type, Stripe-Account, Stripe-Context and Stripe-Version (see `proxy::judged_headers`).
    pub headers: &'a str,
    pub body_sha256: &'a str,
    pub action: &'a str,
    /// What the call is charged: `cents/budget/period`, or empty when it costs nothing. Part of the approval
    /// fingerprint, so an approved call that would now be charged differently (prices changed, a new
    /// window) needs a new approval.
    pub charge: &'a str,
    /// `Tollgate-On-Behalf-Of` as sent. Part of the approval fingerprint (not the request's): an approval is
    /// for a request on behalf of one person, and separation of duties is judged against that person.
    pub on_behalf_of: Option<&'a str>,
}

#[derive(Clone)]
pub struct Approvals {
    store: Store,
    ttl: Duration,
    max_pending_per_agent: u32,
}

/// Why no approval was opened for a call that needs one.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The agent already has this many requests waiting for a reviewer (at least `max_pending_per_agent`).
    #[error("the agent already has {0} requests waiting for a reviewer")]
    TooManyPending(i64),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Call<'_> {
    /// sha256 over the fields that make two requests the same request at the provider, each
    /// length-prefixed so no field can bleed into the next. A replayed Idempotency-Key must repeat it.
    pub fn request_fingerprint(&self) -> String {
        self.digest(false)
    }

    /// The request fingerprint plus the charge: what an approval is bound to. The Idempotency-Key is left
    /// out on purpose: SDKs mint a fresh key per call (stripe-node, stripe-python), so a retry carrying the
    /// approval would never match, and an approval is single-use whatever the key.
    pub fn fingerprint(&self) -> String {
        self.digest(true)
    }

    fn digest(&self, with_charge: bool) -> String {
        let mut h = Sha256::new();
        let agent = self.agent_id.to_string();
        let charge = if with_charge { self.charge } else { "" };
        for part in [
            agent.as_str(),
            self.provider,
            self.method,
            self.path,
            self.canonical_query,
            self.headers,
            self.body_sha256,
            charge,
        ] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        // Absent adds nothing, so approvals of requests without the header keep the fingerprint they had.
        if with_charge && let Some(who) = self.on_behalf_of {
            h.update([1u8]);
            h.update((who.len() as u64).to_be_bytes());
            h.update(who.as_bytes());
        }
        hex::encode(h.finalize())
    }
}

impl Approvals {
    pub fn new(store: Store, ttl: Duration, max_pending_per_agent: u32) -> Approvals {
        Approvals {
            store,
            ttl,
            max_pending_per_agent,
        }
    }

    /// The open approval for this call (pending or approved), or a new pending one. A repeat of the same call
    /// while one is open gets the same id. `shown_query` is the query as stored for reviewers (secrets
    /// redacted); the fingerprint binds the real one. An agent with `max_pending_per_agent` requests already
    /// waiting gets no new one ([`RequestError::TooManyPending`]); a repeat of one of those still gets its id.
    /// The count and the insert are one transaction under a per-agent lock, so parallel requests cannot pass
    /// the cap.
    pub async fn request(
        &self,
        call: &Call<'_>,
        shown_query: &str,
        reasons: serde_json::Value,
        charge_cents: Option<i64>,
        decision_id: Uuid,
    ) -> Result<ApprovalRow, RequestError> {
        let fingerprint = call.fingerprint();
        let now = Utc::now();
        let ttl = chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::hours(1));
        let row = ApprovalRow {
            id: Uuid::now_v7(),
            fingerprint,
            agent_id: call.agent_id,
            agent_name: call.agent_name.to_string(),
            provider: call.provider.to_string(),
            method: call.method.to_string(),
            path: call.path.to_string(),
            query: shown_query.to_string(),
            headers: call.headers.to_string(),
            body_sha256: call.body_sha256.to_string(),
            action: call.action.to_string(),
            reasons,
            charge_cents,
            status: "pending".to_string(),
            created_at: now,
            expires_at: now + ttl,
            requested_by_decision: decision_id,
            on_behalf_of: call.on_behalf_of.map(str::to_string),
            decided_by: None,
            decided_at: None,
            note: None,
            consumed_at: None,
            consumed_by_decision: None,
        };
        match self
            .store
            .open_approval_capped(
                &row,
                call.principal_id,
                i64::from(self.max_pending_per_agent),
            )
            .await?
        {
            Opened::Approval(row) => Ok(*row),
            Opened::TooMany(n) => Err(RequestError::TooManyPending(n)),
        }
    }

    /// Uses an approved, unexpired approval for exactly this call; at most one caller ever succeeds.
    /// `key` is the Idempotency-Key the call is forwarded with, if any: a retry repeating it is the same call
    /// (see [`Approvals::retry`]).
    pub async fn consume(
        &self,
        id: Uuid,
        call: &Call<'_>,
        decision_id: Uuid,
        key: Option<&str>,
    ) -> Result<Option<ConsumedApproval>, StoreError> {
        let used = self
            .store
            .consume_approval(id, &call.fingerprint(), decision_id, key)
            .await?;
        Ok(used.then_some(ConsumedApproval { id, retry_of: None }))
    }

    /// A consumed approval presented again by a retry of the request that consumed it: the identical call
    /// (the approval's fingerprint: agent, account headers, body, charge) with the same forwarded
    /// Idempotency-Key, within the provider's replay window (`window`) of the consumption and the approval's
    /// lifetime (consent is about now, even for a retry that may be the call's first execution). The provider
    /// deduplicates such a retry by its key — it acts at most once — so it is the same approved call, not a
    /// second one: it goes out again, and the ledger charges it once (its idempotency rows). An SDK's
    /// automatic retry after a 5xx repeats the key and the approval header, so the agent sees the provider's
    /// eventual answer rather than `approval_invalid`. A different key, body or account is a new call and
    /// needs a new approval.
    pub async fn retry(
        &self,
        id: Uuid,
        call: &Call<'_>,
        key: &str,
        window: Duration,
    ) -> Result<Option<ConsumedApproval>, StoreError> {
        let window = chrono::Duration::from_std(window).unwrap_or(chrono::Duration::hours(24));
        let since = Utc::now() - window;
        let first = self
            .store
            .approval_retry(id, &call.fingerprint(), key, since)
            .await?;
        Ok(first.map(|first| ConsumedApproval {
            id,
            retry_of: Some(first),
        }))
    }

    /// A reviewer approves or denies a pending, unexpired approval; `None` if it is not pending (any more).
    /// Who, when and the note are recorded on the approval: that is the moment of consent.
    pub async fn decide(
        &self,
        id: Uuid,
        approve: bool,
        by: &str,
        note: Option<&str>,
    ) -> Result<Option<ApprovalRow>, StoreError> {
        self.store.decide_approval(id, approve, by, note).await
    }

    /// Makes a consumed approval usable again, for a request that was refused after consuming it. A retry
    /// did not consume it (its first request did, and may have been sent): nothing to hand back. Nor is an
    /// approval a retry went out under handed back when its consuming request is refused (the store checks):
    /// the call may have been made.
    pub async fn restore(&self, consumed: ConsumedApproval) -> Result<(), StoreError> {
        if consumed.retry_of.is_some() {
            return Ok(());
        }
        self.store.restore_approval(consumed.id).await
    }

    /// Hold mode: waits (polling the shared store, so a decision on any replica counts) until the approval
    /// is decided, `hold` has passed, or `agent_gone` says nobody is waiting any more.
    pub async fn wait_for_decision(
        &self,
        id: Uuid,
        hold: Duration,
        agent_gone: impl Fn() -> bool,
    ) -> Result<Verdict, StoreError> {
        let deadline = tokio::time::Instant::now() + hold;
        loop {
            if agent_gone() {
                return Ok(Verdict::AgentGone);
            }
            let verdict = match self.store.approval(id).await? {
                None => Verdict::Closed("unknown approval"),
                Some(a) if a.status == "approved" && a.expires_at > Utc::now() => Verdict::Approved,
                Some(a) if a.status == "denied" => Verdict::Closed("the approval was denied"),
                Some(a) if a.status == "consumed" => {
                    Verdict::Closed("the approval was already used")
                }
                Some(a) if a.expires_at <= Utc::now() || a.status == "expired" => {
                    Verdict::Closed("the approval expired")
                }
                Some(_) => Verdict::StillPending,
            };
            if verdict != Verdict::StillPending || tokio::time::Instant::now() >= deadline {
                return Ok(verdict);
            }
            tokio::time::sleep(HOLD_POLL).await;
        }
    }

    /// Why an approval cannot be used for this call, for the agent's error message. For one already used,
    /// what became of the call that used it: an agent whose SDK retried after an upstream failure learns
    /// that its approved call was sent, and what the provider answered.
    /// `keyed`: the provider deduplicates by Idempotency-Key, so the agent is told that a retry with the
    /// consuming request's key is the way to repeat that call.
    pub async fn why_invalid(
        &self,
        id: Uuid,
        call: &Call<'_>,
        keyed: bool,
    ) -> Result<String, StoreError> {
        Ok(match self.store.approval(id).await? {
            None => "unknown approval".to_string(),
            Some(a) if a.fingerprint != call.fingerprint() => {
                "the approval is for a different request".to_string()
            }
            Some(a) if a.status == "consumed" => match a.consumed_by_decision {
                Some(used_by) if keyed => format!(
                    "{}; a retry with that request's Idempotency-Key is the same call and may use the approval again",
                    self.used_by(used_by).await?
                ),
                Some(used_by) => self.used_by(used_by).await?,
                None => "the approval was already used".to_string(),
            },
            Some(a) if a.status == "denied" => "the approval was denied".to_string(),
            Some(a) if a.expires_at <= Utc::now() || a.status == "expired" => {
                "the approval expired".to_string()
            }
            Some(a) if a.status == "pending" => "the approval is still pending review".to_string(),
            Some(_) => "the approval cannot be used".to_string(),
        })
    }

    /// What happened to the request (decision `used_by`) that consumed an approval.
    async fn used_by(&self, used_by: Uuid) -> Result<String, StoreError> {
        let outcome = self.store.decision(used_by).await?.and_then(|(_, o)| o);
        Ok(match outcome {
            Some(o) => match (o.upstream_status, o.error.as_deref()) {
                (_, Some(e)) if e.starts_with("not_forwarded") => format!(
                    "the approval was already used by request {used_by}, which was not sent (its agent had disconnected)"
                ),
                (Some(status), _) => format!(
                    "the approval was already used: request {used_by} was sent to the provider, which answered {status}; ask for a new approval if the call must be made again"
                ),
                (None, error) => format!(
                    "the approval was already used: request {used_by} was sent to the provider and got no answer ({}); the provider may have acted, so check before asking for a new approval",
                    error.unwrap_or("unknown")
                ),
            },
            None => format!(
                "the approval was already used by request {used_by} (its outcome is not recorded yet)"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call<'a>(path: &'a str, query: &'a str, body: &'a str) -> Call<'a> {
        Call {
            agent_id: Uuid::nil(),
            principal_id: Uuid::nil(),
            agent_name: "a",
            provider: "stripe",
            method: "POST",
            path,
            canonical_query: query,
            headers: "content-type: application/x-www-form-urlencoded\n",
            body_sha256: body,
            action: "stripe.payment.create",
            charge: "7500/agent-provider-month/2026-11",
            on_behalf_of: None,
        }
    }

    #[test]
    fn fingerprint_binds_every_part_of_the_call() {
        let base = call("/v1/payment_intents", "", "aa").fingerprint();
        assert_eq!(base, call("/v1/payment_intents", "", "aa").fingerprint());
        assert_ne!(base, call("/v1/payment_intents", "", "ab").fingerprint());
        assert_ne!(base, call("/v1/payment_intents", "x=1", "aa").fingerprint());
        assert_ne!(base, call("/v1/payment_intentsx", "", "aa").fingerprint());
        // Length prefixes: moving bytes between fields changes the fingerprint.
        assert_ne!(
            call("/a", "b", "aa").fingerprint(),
            call("/ab", "", "aa").fingerprint()
        );
        // The connected account (and every other judged header) is part of the call.
        let other_account = Call {
            headers: "content-type: application/x-www-form-urlencoded\nstripe-account: acct_OTHER\n",
            ..call("/v1/payment_intents", "", "aa")
        };
        assert_ne!(base, other_account.fingerprint());
        // So is the charge, for the approval; the request fingerprint (idempotency) ignores it.
        let repriced = Call {
            charge: "9900/agent-provider-month/2026-11",
            ..call("/v1/payment_intents", "", "aa")
        };
        assert_ne!(base, repriced.fingerprint());
        assert_eq!(
            call("/v1/payment_intents", "", "aa").request_fingerprint(),
            repriced.request_fingerprint()
        );
        let next_window = Call {
            charge: "7500/agent-provider-month/2026-12",
            ..call("/v1/payment_intents", "", "aa")
        };
        assert_ne!(base, next_window.fingerprint());
        // On whose behalf: bound into the approval (separation of duties is judged against it), not into the
        // request fingerprint; absent and empty differ.
        let alice = Call {
            on_behalf_of: Some("alice@example.com"),
            ..call("/v1/payment_intents", "", "aa")
        };
        let bob = Call {
            on_behalf_of: Some("bob@example.com"),
            ..call("/v1/payment_intents", "", "aa")
        };
        let empty = Call {
            on_behalf_of: Some(""),
            ..call("/v1/payment_intents", "", "aa")
        };
        assert_ne!(base, alice.fingerprint());
        assert_ne!(alice.fingerprint(), bob.fingerprint());
        assert_ne!(base, empty.fingerprint());
        assert_eq!(base, call("/v1/payment_intents", "", "aa").fingerprint());
        assert_eq!(alice.request_fingerprint(), bob.request_fingerprint());
    }
}
