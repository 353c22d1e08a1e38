//! The lifecycle of one agent request, phase by phase, in the order the code runs:
//! canonicalize → identify → classify → parse body → decide → record → forward → settle → respond.
//!
//! Owns: the [`Gate`] (shared state of the agent listener) and the handler that walks the phases, turning
//! each failure into a [`Refusal`] that is recorded before the agent sees it. Every request that reaches this
//! handler leaves exactly one decision record; a request is forwarded only with a [`Permit`], which needs an
//! allow decision and a committed record.
//! Must not: contain SQL, policy rules or header hygiene; those live in `store`, the bundle and `forward`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::approvals::{Approvals, Call, ConsumedApproval, Verdict};
use crate::audit::{AuditWriter, DecisionRecord, Recorded};
use crate::canon;
use crate::classify::{Action, Risk, WriteQuery};
use crate::config::{Config, ProviderConfig};
use crate::error::{Envelope, Refusal, RefusalCode};
use crate::forward::{Credential, Forwarder, Permit, Target, UpstreamFailure};
use crate::identity::{Agent, AuthError, Identity, presented_key};
use crate::ledger::{self, Ledger, Settlement};
use crate::metrics::{Metrics, status_class};
use crate::policy::{
    Decision, Live, Outcome, PolicyError, PolicyHandle, RequestFacts, RunFacts, build_input,
};
use crate::store::{
    AgentRow, Idempotency, MintedStatus, MintedTokenRow, NewReservation, OutcomeRow, Reservation,
    Store, TokenRoll, TokenUpdate,
};
use crate::vault::{Custody, MintedResponse, TOKEN_RESPONSE_LIMIT, TokenEvent, Vault};

/// Request headers that carry secrets: never in the policy input, never in a decision record.
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-auth-email",
    "x-auth-key",
    "x-auth-user-service-key",
];
/// The most of an upstream error response read to settle its reservation: providers' error envelopes are
/// a few hundred bytes.
const EVIDENCE_LIMIT: usize = 256 * 1024;
/// A forwarded request's response (body buffered when it was read for evidence), its latency and that
/// evidence; or why there was none.
type ForwardResult =
    Result<(Response<Body>, Duration, Option<Vec<u8>>), (UpstreamFailure, Duration)>;
/// The outcome row's note for an answer the agent was no longer connected to receive.
const AGENT_DISCONNECTED: &str = "agent_disconnected";
/// The outcome row's note for an allowed request that was not sent upstream (its agent had left); the
/// lifecycle adds [`AGENT_DISCONNECTED`].
const NOT_FORWARDED: &str = "not_forwarded";
/// The outcome row's note for an allowed request not sent upstream because its agent (or a handle's
/// minter or token) was revoked or expired after the request arrived.
const AGENT_REVOKED_NOT_FORWARDED: &str = "not_forwarded; agent_revoked";
/// The outcome row's note for a token action's 2xx answer that the agent did not get, because its secret
/// could not be kept in the vault.
const MINTED_TOKEN_WITHHELD: &str = "minted_token_withheld";
/// What a decision record keeps of a request text that carried a piece of a secret tollgate holds.
const PIECE_REDACTED: &str = "[redacted: carries a piece of a secret tollgate holds]";
/// The recorded name of a token whose answer named it by a secret tollgate holds.
const WITHHELD_TOKEN_NAME: &str = "(withheld: named by a secret tollgate holds)";
/// The outcome row's note for an answer withheld because its agent had tripped the answer screen too often
/// (`[vault] screen_trips`) while the request was in flight.
const ANSWER_WITHHELD_TRIPPED: &str = "answer_withheld; screen_tripped";
/// How long a refusal whose record failed waits before it is recorded again.
const REFUSAL_RETRY_AFTER: Duration = Duration::from_millis(200);
/// The longest a request is held open waiting for a reviewer, whatever the policy asks: agents' HTTP clients
/// and load balancers time out beyond a few minutes.
const MAX_HOLD_SECONDS: u64 = 300;
/// How long a policy evaluation may run on an async worker before it is handed to the blocking pool
/// (see [`crate::policy::Bundle::evaluate_inline`]).
const INLINE_POLICY_BUDGET: Duration = Duration::from_millis(1);
/// The agent a handle stands for: a child of the minting agent with its scopes, team and labels, expiring
/// with the token (or the minter, if sooner). Named `<minter>~<token id>` (a roll's adds a suffix, since
/// the rolled-away handle keeps its name).
fn handle_agent(
    agent: &Agent,
    created_by: Option<String>,
    parent_id: Uuid,
    parent_name: &str,
    token_id: &str,
    event: TokenEvent,
    token_expires: Option<DateTime<Utc>>,
) -> (AgentRow, crate::identity::AgentKey) {
    let key = crate::identity::AgentKey::generate();
    let id = Uuid::now_v7();
    let name = match event {
        TokenEvent::Rolled => {
            let simple = id.simple().to_string();
            format!("{parent_name}~{token_id}~{}", &simple[simple.len() - 8..])
        }
        _ => format!("{parent_name}~{token_id}"),
    };
    let expires_at = earliest(agent.expires_at, token_expires);
    let row = AgentRow {
        id,
        name,
        team: agent.team.clone(),
        scopes: agent.scopes.clone(),
        labels: serde_json::to_value(&agent.labels).unwrap_or_default(),
        key_hash: key.hash(),
        key_prefix: key.display_prefix(),
        status: "active".to_string(),
        created_at: Utc::now(),
        expires_at,
        revoked_at: None,
        created_by,
        minted_by: Some(parent_id),
        minted_token_id: Some(token_id.to_string()),
    };
    (row, key)
}

/// The `minted_tokens` row of a token just created (no handle, no secret yet): its name, policies and expiry
/// as the create request asked (the answer's where the request is silent), its account from the route.
fn created_token_row(
    intake: &Intake<'_>,
    decision_id: Uuid,
    token_id: &str,
    parsed: &MintedResponse,
    custody: Custody,
    (minted_by, minted_by_name): (Uuid, &str),
    now: DateTime<Utc>,
) -> MintedTokenRow {
    MintedTokenRow {
        provider: intake.provider.name.clone(),
        token_id: token_id.to_string(),
        name: body_text(&intake.facts.body, "name").or(parsed.name.clone()),
        policies: intake
            .facts
            .body
            .get("policies")
            .cloned()
            .unwrap_or(Value::Null),
        expires_on: earliest(
            body_time(&intake.facts.body, "expires_on"),
            parsed.expires_on,
        ),
        status: MintedStatus::Active,
        custody,
        minted_by,
        minted_by_name: minted_by_name.to_string(),
        decision_id,
        last_decision_id: decision_id,
        handle_agent_id: None,
        sealed: None,
        rolls: 0,
        created_at: now,
        rolled_at: None,
        deleted_at: None,
        account_id: intake.action.params.get("account_id").cloned(),
    }
}

/// The earlier of two expiries; either alone when the other is unknown.
fn earliest(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn body_text(body: &Value, field: &str) -> Option<String> {
    body.get(field).and_then(Value::as_str).map(str::to_string)
}

fn body_time(body: &Value, field: &str) -> Option<DateTime<Utc>> {
    body_text(body, field).and_then(|t| crate::vault::parse_time(&t))
}

/// Longest accepted `Tollgate-Run` / `Tollgate-On-Behalf-Of`.
const ATTRIBUTION_MAX: usize = 256;

/// Everything the agent listener shares between requests.
pub struct Gate {
    pub config: Arc<Config>,
    pub policy: Arc<PolicyHandle>,
    pub identity: Arc<Identity>,
    pub audit: AuditWriter,
    pub forwarder: Arc<Forwarder>,
    pub metrics: Arc<Metrics>,
    pub frozen: Arc<AtomicBool>,
    pub ledger: Ledger,
    pub approvals: Approvals,
    /// Requests in flight per agent (see [`AgentSlot`]).
    pub in_flight: InFlight,
    /// Bytes each agent added to the decision log lately.
    pub stored: crate::throttle::StoredBytes,
    /// Engine checks running now (at most [`ENGINE_CHECKS_AT_ONCE`]).
    pub engine_checks: Arc<tokio::sync::Semaphore>,
    /// Minted tokens' secrets (vault mode) and who keeps them.
    pub vault: Arc<Vault>,
    /// Every secret tollgate holds, prepared for screening answers.
    pub held: Arc<crate::vault::held::HeldSecrets>,
    /// Where minted tokens and their handles' agents are recorded.
    pub store: Store,
    /// Token rolls in flight here.
    pub rolling: Rolling,
}

/// How many requests each agent has in tollgate right now.
#[derive(Default)]
pub struct InFlight(std::sync::Mutex<std::collections::HashMap<Uuid, usize>>);

/// One of an agent's in-flight requests; given back when dropped (however the request ends).
struct AgentSlot<'g> {
    in_flight: &'g InFlight,
    agent: Uuid,
}

impl InFlight {
    /// A slot for one more request of `agent`, unless it already has `limit` in flight.
    fn take(&self, agent: Uuid, limit: usize) -> Option<AgentSlot<'_>> {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(agent).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(AgentSlot {
            in_flight: self,
            agent,
        })
    }
}

impl Drop for AgentSlot<'_> {
    fn drop(&mut self) {
        let mut counts = self.in_flight.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.agent) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.agent);
            }
        }
    }
}

/// Token rolls in flight on this replica, by provider and token key. Two rolls of one token answered out of
/// order would leave the handle sealed with the secret the provider replaced (attack round 19), so a roll is
/// refused while another of the same token is in flight here.
#[derive(Default, Clone)]
pub struct Rolling(Arc<std::sync::Mutex<std::collections::HashSet<(String, String)>>>);

/// A roll in flight ([`Rolling`]); let go when dropped, however the request ends.
struct RollInFlight {
    rolling: Rolling,
    token: (String, String),
}

impl Rolling {
    fn take(&self, provider: &str, token_key: &str) -> Option<RollInFlight> {
        let token = (provider.to_string(), token_key.to_string());
        let mut rolls = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !rolls.insert(token.clone()) {
            return None;
        }
        Some(RollInFlight {
            rolling: self.clone(),
            token,
        })
    }
}

impl Drop for RollInFlight {
    fn drop(&mut self) {
        let mut rolls = self.rolling.0.lock().unwrap_or_else(|e| e.into_inner());
        rolls.remove(&self.token);
    }
}

/// What is known about a request so far; becomes its decision record.
struct Draft {
    id: Uuid,
    started: Instant,
    at: DateTime<Utc>,
    envelope: Envelope,
    provider: String,
    method: String,
    path: String,
    query: Option<String>,
    agent: Option<Arc<Agent>>,
    run: RunFacts,
    action: Option<Action>,
    decision: Option<Decision>,
    policy_revision: Option<String>,
    approval_id: Option<String>,
    shadow_outcome: Option<String>,
    input: Option<Value>,
}

/// The live bundle's verdict, and the shadow bundle's outcome name (or "error") if there is one.
type Judgement = (Result<Decision, PolicyError>, Option<&'static str>);

/// Judges with the live (and shadow) bundle. With a `budget`, only what finishes within it on this thread:
/// `None` means a bundle ran over and the whole judgement must be redone without one.
fn judge(
    live: &Live,
    input: &Value,
    budget: Option<Duration>,
    metrics: &Metrics,
) -> Option<Judgement> {
    let evaluate = |bundle: &crate::policy::Bundle| match budget {
        Some(budget) => bundle.evaluate_inline(input, budget),
        None => bundle.evaluate(input),
    };
    let started = Instant::now();
    let result = evaluate(&live.bundle);
    if matches!(result, Err(PolicyError::OverBudget)) {
        return None;
    }
    metrics
        .policy_evaluation_duration_seconds
        .observe(started.elapsed().as_secs_f64());
    let shadow = match live.shadow.as_ref().map(evaluate) {
        None => None,
        Some(Err(PolicyError::OverBudget)) => return None,
        Some(Ok(d)) => Some(outcome_name(d.outcome)),
        Some(Err(_)) => Some("error"),
    };
    Some((result, shadow))
}

/// The agent listener's one handler. The request's lifecycle runs in a task of its own: once a request is
/// admitted, its recording, settlement, approval hand-back and outcome row happen whether or not the agent
/// is still connected (hyper drops this future when the agent disconnects; the task learns of it from the
/// closed answer channel and records it).
pub async fn handle(State(gate): State<Arc<Gate>>, request: Request<Body>) -> Response<Body> {
    let (answer, answered) = tokio::sync::oneshot::channel();
    tokio::spawn(gate.lifecycle(request, answer));
    match answered.await {
        Ok(response) => response,
        // The lifecycle task panicked. Nothing unrecorded was forwarded (forwarding needs a Permit, which
        // needs a committed record), but it may have panicked after forwarding: the agent is told not to
        // retry blindly.
        Err(_) => {
            tracing::error!("a request's handling ended in a panic");
            Refusal::new(
                RefusalCode::UpstreamError,
                "tollgate: an internal error ended the handling of this request, which may have reached the \
                 provider; check the decision log (`tollgate decisions`) before retrying",
            )
            .not_retryable()
            .into_response(Envelope::Plain, Uuid::now_v7())
        }
    }
}

/// The channel the agent's answer goes back on; closed once the agent has disconnected.
type Answer = tokio::sync::oneshot::Sender<Response<Body>>;

/// What the intake phase established: who is calling, what the call is, and its judged view.
struct Intake<'g> {
    provider: &'g ProviderConfig,
    /// Held until the request is answered.
    _slot: AgentSlot<'g>,
    agent: Arc<Agent>,
    /// The policy snapshot whose catalog classified the request; its bundle judges it.
    live: Arc<Live>,
    action: Action,
    headers: JudgedHeaders,
    /// The judged request: path, query, headers and parsed body, as the policy sees them.
    facts: RequestFacts,
    /// The body exactly as received, forwarded untouched.
    bytes: Bytes,
    /// For a request that came with a handle (vault mode): the minted token's `Authorization`, sent instead
    /// of tollgate's own credential.
    minted_credential: Option<HeaderValue>,
}

impl Intake<'_> {
    /// The forwarded Idempotency-Key and the provider's replay window, when the provider deduplicates by
    /// key and the request carries one: what makes a repeat of it the same call at the provider.
    fn replay_key(&self) -> Option<(&str, Duration)> {
        match (
            &self.headers.forwarded_key,
            self.provider.idempotency_window,
        ) {
            (Some(key), Some(window)) => key.to_str().ok().map(|k| (k, window)),
            _ => None,
        }
    }
}

/// What the decide phase concluded.
struct Ruling {
    decision: Decision,
    now: DateTime<Utc>,
    canonical_query: String,
    /// `cents/budget/period` of the decision's charge, or empty: part of the approval fingerprint.
    charge: String,
    approval_header: Option<Uuid>,
    /// `Tollgate-On-Behalf-Of`: part of the approval fingerprint (separation of duties needs to know it).
    on_behalf_of: Option<String>,
    /// For a call about a token tollgate holds the secret of (vault mode): that secret as `Bearer …`, which
    /// the answer is screened for too (a read must not hand it out either).
    token_credential: Option<HeaderValue>,
    /// For a roll: this replica's claim on the token until the answer is recorded.
    _roll: Option<RollInFlight>,
}

/// What the authorize phase secured: the approval used (if any), the money reserved, the committed record.
struct Authorized {
    consumed: Option<ConsumedApproval>,
    reserved: bool,
    /// The flagged reservation of an earlier attempt of this same request (same Idempotency-Key) that this
    /// one's answer settles.
    replaces: Option<Uuid>,
    recorded: Recorded,
}

/// The answer for the agent and, for a forwarded request, its outcome row (written once the answer was
/// handed over, so that a disconnected agent is recorded as such).
struct Finished {
    response: Response<Body>,
    outcome: Option<OutcomeRow>,
}

impl Ruling {
    /// The exact call an approval is for, and whose fingerprint a replayed Idempotency-Key must repeat.
    fn call<'a>(&'a self, intake: &'a Intake<'_>) -> Call<'a> {
        Call {
            agent_id: intake.agent.id,
            principal_id: intake.agent.principal_id(),
            agent_name: &intake.agent.name,
            provider: &intake.provider.name,
            method: &intake.facts.method,
            path: &intake.facts.path,
            canonical_query: &self.canonical_query,
            headers: &intake.headers.lines,
            body_sha256: &intake.facts.body_sha256,
            action: &intake.action.name,
            charge: &self.charge,
            on_behalf_of: self.on_behalf_of.as_deref(),
        }
    }
}

impl Draft {
    fn new(parts: &http::request::Parts) -> Draft {
        Draft {
            id: Uuid::now_v7(),
            started: Instant::now(),
            at: Utc::now(),
            envelope: Envelope::Plain,
            provider: "unknown".to_string(),
            method: parts.method.as_str().to_string(),
            path: String::new(),
            query: parts.uri.query().map(str::to_string),
            agent: None,
            run: RunFacts::default(),
            action: None,
            decision: None,
            policy_revision: None,
            approval_id: None,
            shadow_outcome: None,
            input: None,
        }
    }
}

impl Gate {
    /// One request from start to end, in its own task: the phases, the refusal record if any, the answer,
    /// then the outcome row.
    async fn lifecycle(self: Arc<Self>, request: Request<Body>, answer: Answer) {
        let (parts, body) = request.into_parts();
        let mut draft = Draft::new(&parts);
        let (response, outcome) = match self.admit(&mut draft, &parts, body, &answer).await {
            Ok(Finished { response, outcome }) => (response, outcome),
            Err(refusal) => (self.refuse(draft, refusal).await, None),
        };
        let delivered = answer.send(response).is_ok();
        if let Some(mut outcome) = outcome {
            if !delivered {
                outcome.error = Some(match outcome.error.take() {
                    Some(e) => format!("{e}; {AGENT_DISCONNECTED}"),
                    None => AGENT_DISCONNECTED.to_string(),
                });
            }
            self.audit.record_outcome(outcome);
        }
    }

    /// The phases in order; any refusal returns early and is recorded by the caller. Each phase cleans up
    /// what it took (an approval, a reservation) when a later step of its own fails.
    async fn admit(
        &self,
        draft: &mut Draft,
        parts: &http::request::Parts,
        body: Body,
        answer: &Answer,
    ) -> Result<Finished, Refusal> {
        // Reading, identifying and judging are bounded as a whole (`server.request_timeout_ms`). Nothing
        // before `authorize` writes anything, so giving up on them leaves nothing half done; from
        // `authorize` on, the lifecycle finishes what it starts.
        let judged = tokio::time::timeout(self.config.server.request_timeout, async {
            let intake = self.intake(draft, parts, body).await?;
            let ruling = self.judge_request(draft, parts, &intake).await?;
            Ok::<_, Refusal>((intake, ruling))
        })
        .await;
        let (intake, ruling) = judged.map_err(|_| {
            Refusal::new(
                RefusalCode::RequestTimeout,
                "tollgate: the request was not read and judged within server.request_timeout_ms",
            )
        })??;
        let authorized = self.authorize(draft, &intake, &ruling, answer).await?;
        if answer.is_closed() {
            let refusal = Refusal::new(
                RefusalCode::RequestTimeout,
                "tollgate: the agent disconnected before the request was forwarded",
            );
            return Ok(self
                .abandon(draft, authorized, refusal, NOT_FORWARDED)
                .await);
        }
        // The key was checked when the request's head arrived; its body may have taken up to
        // `body_timeout_ms` and an approval longer. An agent revoked or expired meanwhile (contained,
        // say) sends nothing more upstream, whatever it started before.
        if !self
            .still_authenticated(&parts.headers, &intake.agent)
            .await
        {
            tracing::warn!(decision_id = %draft.id, agent = %intake.agent.name, "the agent was revoked or expired before its request was forwarded; not forwarded");
            let refusal = Refusal::new(
                RefusalCode::AgentUnauthenticated,
                "tollgate: this agent's key was revoked or expired before the request was forwarded; nothing was sent",
            );
            return Ok(self
                .abandon(draft, authorized, refusal, AGENT_REVOKED_NOT_FORWARDED)
                .await);
        }
        Ok(self
            .forward_and_settle(draft, parts, intake, ruling, authorized)
            .await)
    }

    /// Intake: provider, canonical path, header hygiene, the agent, the action, and the judged view of the
    /// request (query, body by the route's media type, the headers that change what the provider does).
    async fn intake<'g>(
        &'g self,
        draft: &mut Draft,
        parts: &http::request::Parts,
        body: Body,
    ) -> Result<Intake<'g>, Refusal> {
        // The provider is the first path segment; the rest is the provider's own path.
        let raw_path = parts.uri.path();
        let (provider_name, rest) = split_provider(raw_path);
        draft.path = rest.to_string();
        let Some(provider) = self.config.providers.get(provider_name) else {
            return Err(Refusal::malformed(format!(
                "tollgate: unknown provider; requests go to /{{provider}}/… with provider one of: {}",
                self.config
                    .providers
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        draft.provider = provider.name.clone();
        draft.envelope = provider.envelope;

        // identify first (it needs only the credential header), so that every later refusal is the agent's:
        // attributed to it and charged to its own rate of stored bytes
        let key = presented_key(&parts.headers).ok_or_else(Refusal::unauthenticated)?;
        let agent = match self.identity.authenticate(&key).await {
            Ok(agent) => agent,
            Err(AuthError::Unauthenticated) => return Err(Refusal::unauthenticated()),
            Err(AuthError::Store(e)) => {
                tracing::error!(error = %e, "agent lookup failed");
                return Err(Refusal::store_unavailable());
            }
        };
        draft.agent = Some(agent.clone());
        // A handle stands for a token of the provider that minted it, and for nothing else.
        let minted_credential = match &agent.minted {
            None => None,
            Some(minted) if minted.provider != provider.name => {
                return Err(Refusal::new(
                    RefusalCode::AgentUnauthenticated,
                    format!(
                        "tollgate: this key is a handle of a {} token; it works only for /{}",
                        minted.provider, minted.provider
                    ),
                ));
            }
            Some(minted) => {
                let opened = self
                    .vault
                    .open(&minted.provider, &minted.token_id, &minted.sealed)
                    .ok()
                    .and_then(|secret| secret.bearer());
                match opened {
                    Some(value) => Some(value),
                    None => {
                        tracing::error!(token_id = %minted.token_id, "a handle's sealed secret does not open with the configured vault keys");
                        return Err(Refusal::store_unavailable());
                    }
                }
            }
        };
        if self.frozen.load(Ordering::Acquire) {
            return Err(Refusal::new(
                RefusalCode::Frozen,
                "tollgate: agent traffic is frozen by an operator",
            ));
        }

        // canonicalize
        canon::check_method(&parts.method).map_err(|m| Refusal::malformed(m.message()))?;
        let path = canon::canonicalize_path(rest).map_err(|m| Refusal::malformed(m.message()))?;
        draft.path = path.as_str().to_string();
        let query =
            canon::parse_query(parts.uri.query()).map_err(|m| Refusal::malformed(m.message()))?;
        canon::check_headers(&parts.headers).map_err(|m| Refusal::malformed(m.message()))?;
        draft.run = RunFacts {
            id: attribution(&parts.headers, "tollgate-run")?,
            on_behalf_of: attribution(&parts.headers, "tollgate-on-behalf-of")?,
        };

        // One agent's slow or numerous requests cannot hold what every other agent needs.
        let limit = self.config.server.max_requests_per_agent;
        let Some(slot) = self.in_flight.take(agent.principal_id(), limit) else {
            return Err(Refusal::new(
                RefusalCode::Overloaded,
                format!(
                    "tollgate: this agent already has {limit} requests in flight; retry when they finish"
                ),
            ));
        };

        // One agent cannot fill the append-only log: past its rate of stored bytes it waits, before its
        // body is read or judged (this refusal's own record is small: it stores no input).
        if let Some(wait) = self.stored.check(agent.principal_id()) {
            return Err(Refusal::new(
                RefusalCode::RateLimited,
                "tollgate: this agent's requests have added more to the decision log than its rate allows; retry later",
            )
            .retry_after(wait.as_secs_f64().ceil() as u64));
        }

        // classify (the catalog and the bundle that judges come from one snapshot of the live policy)
        let live = self.policy.current();
        let mut action = live
            .catalog
            .classify(&provider.name, &parts.method, path.segments())
            .map_err(|m| Refusal::malformed(m.message()))?;
        draft.action = Some(action.clone());

        // parse body: as the route's provider reads it (media type from the catalog), with the query of a
        // write either merged in (Stripe) or limited to what the route takes, so nothing the provider acts
        // on goes unjudged
        let merged_query = write_query(&parts.method, &action, &query, parts.uri.query())?;
        let headers = JudgedHeaders::of(&parts.headers, agent.id)?;
        let bytes = self.read_body(&parts.headers, body).await?;
        if !bytes.is_empty()
            && matches!(
                parts.method,
                http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
            )
        {
            // Judged as a read, which has no body: a provider that read this one would act on it unjudged.
            return Err(Refusal::malformed(format!(
                "tollgate: a {} request cannot carry a body",
                parts.method
            )));
        }
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let parsed =
            crate::body::parse_request_body(action.body, content_type, &bytes, merged_query)
                .map_err(|m| Refusal::malformed(m.message()))?;
        ledger::check_amounts(&parsed)
            .map_err(|m| Refusal::malformed(format!("tollgate: {}", m.message())))?;
        action
            .lift_body_params(&parsed)
            .map_err(|m| Refusal::malformed(format!("tollgate: {}", m.message())))?;
        draft.action = Some(action.clone());
        let facts = RequestFacts {
            provider: provider.name.clone(),
            method: draft.method.clone(),
            path: draft.path.clone(),
            query,
            headers: headers.policy_headers(&parts.headers),
            body_sha256: crate::body::body_sha256(&bytes),
            body: parsed,
        };
        Ok(Intake {
            provider,
            _slot: slot,
            agent,
            live,
            action,
            headers,
            facts,
            bytes,
            minted_credential,
        })
    }

    /// Decide: the policy input (with this window's spend for writes) and the live bundle's decision.
    async fn judge_request(
        &self,
        draft: &mut Draft,
        parts: &http::request::Parts,
        intake: &Intake<'_>,
    ) -> Result<Ruling, Refusal> {
        // Answers to this agent kept carrying a secret tollgate holds: each was an answer to "does what I
        // wrote hold a piece of a secret?", so it asks no more for a while, whatever the policy says.
        if self.held.tripped_out(intake.agent.principal_id()) {
            return Err(Refusal::new(
                RefusalCode::PolicyDenied,
                format!(
                    "tollgate: answers to this agent carried a secret tollgate holds {} times within the hour; its \
                     requests are refused for the rest of that hour. tollgate's log names each of those answers' decisions",
                    self.vault.screen_trips
                ),
            )
            .with_rule("tollgate.screen_tripped"));
        }
        // A request that carries a piece of a secret tollgate holds (12 characters or more, in any spelling
        // the answer screen reads) is a probe: no agent ever holds those secrets. It is refused before the
        // policy, an approval, the provider or a resource record sees it, and counts as a trip (the refusal
        // answers the same question a cut answer does).
        // The body is read as sent (every part of a multipart upload, not only what was parsed of it).
        let facts = &intake.facts;
        let texts = json!([
            facts.method,
            facts.path,
            facts.query,
            facts.headers,
            draft.run.id,
            draft.run.on_behalf_of
        ])
        .to_string();
        let held = self.held.needles_with(&[]);
        if held.pieces_in(texts.as_bytes()) || held.pieces_in(&intake.bytes) {
            self.held.tripped(intake.agent.principal_id());
            tracing::warn!(decision_id = %draft.id, "a request carries a piece of a secret tollgate holds; refused");
            return Err(Refusal::new(
                RefusalCode::PolicyDenied,
                "tollgate: this request carries a piece of a secret tollgate holds, so it is refused; no agent holds \
                 those secrets",
            )
            .with_rule("tollgate.carries_held_secret"));
        }
        let now = Utc::now();
        let agent_window = ledger::window(
            ledger::AGENT_PROVIDER_MONTH,
            &intake.agent,
            &intake.provider.name,
            &intake.headers.account,
            now,
        )
        .map_err(|_| Refusal::policy_unavailable())?;
        let (window_start, window_end) = ledger::window_bounds(now);
        // Reads cost nothing and are most of the traffic: only writes pay for the spend lookup.
        let spent = if intake.action.risk == Risk::Read {
            Value::Null
        } else {
            match self.ledger.spent(&agent_window).await {
                Ok(cents) => Value::from(cents),
                Err(e) => {
                    tracing::error!(error = %e, "spend lookup failed");
                    return Err(Refusal::store_unavailable());
                }
            }
        };
        let spend = json!({
            "window": agent_window.period,
            "window_start": window_start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "window_end": window_end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "agent_provider_cents": spent,
        });
        let approval_header = approval_header(&parts.headers)?;
        let approval_input = approval_header.map(|id| json!({"id": id.to_string()}));
        let (minted_token, token_credential, roll) = self.token_in_question(intake, now).await?;
        let token_credential = match token_credential {
            Some(held) => Some(held),
            None => self.secret_of_token_in_path(intake).await?,
        };
        let mut input = build_input(
            &intake.agent,
            &draft.run,
            &intake.facts,
            &intake.action,
            spend,
            approval_input,
            now,
        );
        if let (Some(token), Some(fields)) = (minted_token, input.as_object_mut()) {
            fields.insert("minted_token".into(), token);
        }
        let decision = self.decide(draft, intake.live.clone(), input).await?;
        let charge = decision
            .charge
            .as_ref()
            .map(|c| format!("{}/{}/{}", c.cents, c.budget, agent_window.period))
            .unwrap_or_default();
        Ok(Ruling {
            decision,
            now,
            canonical_query: canon::canonical_query(&intake.facts.query),
            charge,
            approval_header,
            on_behalf_of: draft.run.on_behalf_of.clone(),
            token_credential,
            _roll: roll,
        })
    }

    /// The secret tollgate holds of a token the request's path names (`…/user/tokens/{id}/…`,
    /// `…/accounts/{a}/tokens/{id}/…`) on a route the catalog does not know as a call about that token: its
    /// answer is screened for that secret too. A store failure refuses (fails closed).
    async fn secret_of_token_in_path(
        &self,
        intake: &Intake<'_>,
    ) -> Result<Option<HeaderValue>, Refusal> {
        if intake.provider.name != "cloudflare" {
            return Ok(None);
        }
        let segments: Vec<&str> = intake
            .facts
            .path
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        let named = match segments.as_slice() {
            [_, _, user, tokens, id, ..]
                if user.eq_ignore_ascii_case("user") && tokens.eq_ignore_ascii_case("tokens") =>
            {
                Some(*id)
            }
            [_, _, accounts, _, tokens, id, ..]
                if accounts.eq_ignore_ascii_case("accounts")
                    && tokens.eq_ignore_ascii_case("tokens") =>
            {
                Some(*id)
            }
            _ => None,
        };
        let Some(key) = named.and_then(crate::vault::token_key) else {
            return Ok(None);
        };
        let rows = self
            .store
            .minted_tokens_keyed(&intake.provider.name, &key)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "minted token lookup failed");
                Refusal::store_unavailable()
            })?;
        Ok(rows.iter().find_map(|r| {
            let sealed = r.sealed.as_ref()?;
            self.vault
                .open(&r.provider, &r.token_id, sealed)
                .ok()?
                .bearer()
        }))
    }

    /// For a call about one Cloudflare token (read, update, roll, delete): what tollgate recorded of it, as
    /// the policy input's `minted_token` (`null` when tollgate never saw it minted). A token minted through
    /// tollgate is rewritten, rolled or deleted only by the agent that minted it (or that agent's handles):
    /// anyone else rolling it would take its secret over, and deleting or rewriting it would break another
    /// agent's work, so that is refused here whatever the policy says. A store failure refuses (fails closed).
    async fn token_in_question(
        &self,
        intake: &Intake<'_>,
        now: DateTime<Utc>,
    ) -> Result<(Option<Value>, Option<HeaderValue>, Option<RollInFlight>), Refusal> {
        let action: &str = &intake.action.name;
        if !action.starts_with("cloudflare.token.") {
            return Ok((None, None, None));
        }
        let Some(token_id) = intake.action.params.get("token_id") else {
            return Ok((None, None, None));
        };
        // Any spelling the provider takes for the same token (case, hyphens) is the same token here.
        let Some(key) = crate::vault::token_key(token_id) else {
            return Err(Refusal::malformed(
                "tollgate: a token id is letters, digits, '-' and '_' (at most 128)",
            ));
        };
        let rows = match self
            .store
            .minted_tokens_keyed(&intake.provider.name, &key)
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(error = %e, "minted token lookup failed");
                return Err(Refusal::store_unavailable());
            }
        };
        let principal = intake.agent.principal_id();
        let changes = matches!(
            action,
            "cloudflare.token.update" | "cloudflare.token.roll" | "cloudflare.token.delete"
        );
        // Ownership does not lapse: a token recorded as deleted or expired may be live at the provider all
        // the same (an update moved its expiry, a delete failed), so only its minter may change it, ever.
        if changes && let Some(other) = rows.iter().find(|r| r.minted_by != principal) {
            return Err(Refusal::new(
                RefusalCode::PolicyDenied,
                format!(
                    "tollgate: token {token_id} was minted through tollgate by agent '{}'; only that agent (or its \
                     handles) may rewrite, roll or delete it. An operator contains it with `tollgate incident contain`",
                    other.minted_by_name
                ),
            )
            .with_rule("tollgate.token_owner"));
        }
        // A roll hands whoever sends it the token's new secret (or a handle to it): a token tollgate never saw
        // minted may be another system's, or the very credential tollgate forwards with (its id is one
        // `GET /user/tokens/verify` away), so it is never rolled here, whatever the policy says. It is rolled
        // at Cloudflare by whoever owns it.
        if action == "cloudflare.token.roll" && rows.is_empty() {
            return Err(Refusal::new(
                RefusalCode::PolicyDenied,
                format!(
                    "tollgate: token {token_id} was not minted through tollgate, so it is not rolled here: its new \
                     secret would go to this agent, and the token may belong to another system or be tollgate's own \
                     credential. Its owner rolls it at Cloudflare; an agent mints a token of its own through tollgate"
                ),
            )
            .with_rule("tollgate.token_unknown"));
        }
        let Some(row) = rows
            .iter()
            .find(|r| &r.token_id == token_id)
            .or(rows.first())
        else {
            return Ok((Some(Value::Null), None, None));
        };
        // A user token is changed at `/user/tokens/…`, an account's at that account's route: the owner the
        // route names is the one recorded. Otherwise tollgate would record a change the provider made to no
        // token (or another), and containment would delete the token at an address where it is not.
        let route_account = intake.action.params.get("account_id");
        let same_owner = match (&row.account_id, route_account) {
            (None, None) => true,
            (Some(recorded), Some(route)) => recorded.eq_ignore_ascii_case(route),
            _ => false,
        };
        if changes && !same_owner {
            let owner = match &row.account_id {
                Some(account) => format!("account {account}'s"),
                None => "a user".to_string(),
            };
            return Err(Refusal::new(
                RefusalCode::PolicyDenied,
                format!(
                    "tollgate: token {token_id} is {owner} token (as recorded when it was minted); it is rewritten, \
                     rolled or deleted only through that owner's route"
                ),
            )
            .with_rule("tollgate.token_route"));
        }
        let roll = if action == "cloudflare.token.roll" {
            match self.rolling.take(&intake.provider.name, &key) {
                Some(roll) => Some(roll),
                None => {
                    return Err(Refusal::new(
                        RefusalCode::PolicyDenied,
                        format!(
                            "tollgate: another roll of token {token_id} is in flight; send this one again once that \
                             one is answered (two rolls answered out of order would leave the handle with a dead secret)"
                        ),
                    )
                    .with_rule("tollgate.token_rolling"));
                }
            }
        } else {
            None
        };
        // Every secret tollgate holds of this token (all its recorded spellings), to screen the answer for.
        let held = rows
            .iter()
            .filter_map(|r| {
                let sealed = r.sealed.as_ref()?;
                self.vault
                    .open(&r.provider, &r.token_id, sealed)
                    .ok()?
                    .bearer()
            })
            .next();
        let view = json!({
            "id": row.token_id,
            "minted_by": row.minted_by_name,
            "minted_by_this_agent": row.minted_by == principal,
            "status": row.status_at(now).as_str(),
            "custody": match row.custody {
                Custody::Vault => "vault",
                Custody::PassThrough => "pass_through",
            },
            "policies": row.policies,
        });
        Ok((Some(view), held, roll))
    }

    /// Authorize: a deny is refused; an approve opens (or reuses) an approval and refuses, or holds the
    /// request until a reviewer decides, or consumes the approval the agent presents; then the charge is
    /// reserved and the allow recorded. Whatever this phase took is handed back when it refuses later on.
    async fn authorize(
        &self,
        draft: &mut Draft,
        intake: &Intake<'_>,
        ruling: &Ruling,
        answer: &Answer,
    ) -> Result<Authorized, Refusal> {
        let decision = &ruling.decision;
        let call = ruling.call(intake);

        // approve (the request itself is not yet approved: open or reuse a pending approval, and either
        // refuse at once or, in hold mode, keep the request open until a reviewer decides)
        let mut approval_header = ruling.approval_header;
        match (decision.outcome, approval_header) {
            (Outcome::Allow, _) => {}
            (Outcome::Deny, _) => return Err(denial(decision)),
            (Outcome::Approve, None) => {
                let live = self.policy.current();
                let redactor = live.bundle.redactor();
                let reasons = redact_strings(
                    redactor,
                    serde_json::to_value(&decision.reasons).unwrap_or(Value::Null),
                );
                let shown_query = redactor
                    .redact_query(&intake.provider.name, &ruling.canonical_query)
                    .unwrap_or_else(|| ruling.canonical_query.clone());
                let charge = decision.charge.as_ref().map(|c| c.cents);
                let approval = self
                    .approvals
                    .request(&call, &shown_query, reasons, charge, draft.id)
                    .await
                    .map_err(|e| match e {
                        crate::approvals::RequestError::TooManyPending(waiting) => Refusal::new(
                            RefusalCode::RateLimited,
                            format!(
                                "tollgate: this call needs a reviewer's approval, and agent '{}' already has {waiting} \
                                 requests waiting for one (approvals.max_pending_per_agent); retry after a reviewer \
                                 decides some of them",
                                intake.agent.name
                            ),
                        ),
                        crate::approvals::RequestError::Store(e) => {
                            tracing::error!(error = %e, "approval not opened");
                            Refusal::store_unavailable()
                        }
                    })?;
                self.metrics
                    .approvals_total
                    .with_label_values(&["requested"])
                    .inc();
                let hold = decision.hold_seconds.unwrap_or(0).min(MAX_HOLD_SECONDS);
                if hold == 0 {
                    return Err(approval_required(
                        decision,
                        &approval.id.to_string(),
                        &approval.status,
                    ));
                }
                // Held: the wait ends early when the agent disconnects, so an approval granted later is
                // not spent on a request nobody is waiting for (the agent retries with it instead).
                match self
                    .approvals
                    .wait_for_decision(approval.id, Duration::from_secs(hold), || {
                        answer.is_closed()
                    })
                    .await
                {
                    Ok(Verdict::Approved) => approval_header = Some(approval.id),
                    Ok(Verdict::Closed(why)) => {
                        return Err(Refusal::new(
                            RefusalCode::ApprovalInvalid,
                            format!("tollgate: approval {} was not granted: {why}", approval.id),
                        )
                        .with_approval(approval.id.to_string()));
                    }
                    Ok(Verdict::StillPending | Verdict::AgentGone) => {
                        return Err(approval_required(
                            decision,
                            &approval.id.to_string(),
                            "pending",
                        ));
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "approval wait failed");
                        return Err(Refusal::store_unavailable());
                    }
                }
            }
            (Outcome::Approve, Some(_)) => {}
        }

        // approve (consume): the approval is used before money is reserved, so that of two concurrent retries
        // exactly one proceeds and the other learns the approval was used. If the request then cannot go
        // ahead (budget, store), the approval is handed back.
        // A provider that deduplicates by Idempotency-Key (Stripe) makes a same-key retry of the consuming
        // request the same call: it goes out under the approval again (`Approvals::retry`).
        let mut consumed = None;
        if let (Outcome::Approve, Some(id)) = (decision.outcome, approval_header) {
            draft.approval_id = Some(id.to_string());
            let replayable = intake.replay_key();
            let used = match self
                .approvals
                .consume(id, &call, draft.id, replayable.map(|(k, _)| k))
                .await
            {
                Ok(None) if let Some((key, window)) = replayable => {
                    self.approvals.retry(id, &call, key, window).await
                }
                other => other,
            };
            match used {
                Ok(Some(c)) => {
                    let label = if c.retry_of().is_some() {
                        "retried"
                    } else {
                        "consumed"
                    };
                    self.metrics
                        .approvals_total
                        .with_label_values(&[label])
                        .inc();
                    if let Some(first) = c.retry_of() {
                        tracing::info!(decision_id = %draft.id, approval_id = %id, %first, "a same-key retry of an approved request goes out under its approval");
                    }
                    consumed = Some(c);
                }
                Ok(None) => {
                    self.metrics
                        .approvals_total
                        .with_label_values(&["invalid"])
                        .inc();
                    let why = self
                        .approvals
                        .why_invalid(id, &call, intake.provider.idempotency_window.is_some())
                        .await
                        .unwrap_or_else(|_| "the approval cannot be used".to_string());
                    return Err(Refusal::new(
                        RefusalCode::ApprovalInvalid,
                        format!("tollgate: approval {id} is not valid for this request: {why}"),
                    )
                    .with_approval(id.to_string()));
                }
                Err(e) => {
                    tracing::error!(error = %e, "approval consumption failed");
                    return Err(Refusal::store_unavailable());
                }
            }
        }

        // reserve (a repeat of a request whose Idempotency-Key the provider still replays is not charged
        // again: the key as forwarded, the account headers and the request fingerprint must all match)
        let (reserved, replaces) = match self.reserve(draft, intake, ruling, &call).await {
            Ok(reserved) => reserved,
            Err(refusal) => {
                self.give_back(consumed.take()).await;
                return Err(refusal);
            }
        };

        // record
        let record = self.record_of(draft, "allow", None);
        match self.audit.record(record).await {
            Ok(recorded) => Ok(Authorized {
                consumed,
                reserved,
                replaces,
                recorded,
            }),
            Err(e) => {
                // The commit may have happened with its acknowledgement lost: ask the store.
                let allow_id = draft.id;
                match self.audit.confirm(allow_id).await {
                    Ok(Some(recorded)) => {
                        tracing::warn!(decision_id = %draft.id, "allow committed although its batch reported an error");
                        return Ok(Authorized {
                            consumed,
                            reserved,
                            replaces,
                            recorded,
                        });
                    }
                    Ok(None) => {}
                    Err(_) => {
                        // Unknown whether the allow is stored: the refusal is recorded under a new id, so
                        // that it can never collide with it (and fail a whole batch of other records).
                        draft.id = Uuid::now_v7();
                        tracing::error!(decision_id = %draft.id, %allow_id, "allow may be stored under the earlier id; the refusal gets a new one");
                    }
                }
                tracing::error!(error = %e, decision_id = %draft.id, "allow not recorded; refusing");
                if reserved {
                    self.unreserve(allow_id, replaces).await;
                }
                self.give_back(consumed.take()).await;
                // The refusal path tries once more to record this refusal itself.
                Err(Refusal::store_unavailable())
            }
        }
    }

    /// Reserves the decision's charge, if any: `true` when money was reserved (a replay reserves nothing).
    async fn reserve(
        &self,
        draft: &Draft,
        intake: &Intake<'_>,
        ruling: &Ruling,
        call: &Call<'_>,
    ) -> Result<(bool, Option<Uuid>), Refusal> {
        let Some(charge) = &ruling.decision.charge else {
            return Ok((false, None));
        };
        let provider = intake.provider;
        let window = ledger::window(
            &charge.budget,
            &intake.agent,
            &provider.name,
            &intake.headers.account,
            ruling.now,
        )
        .map_err(|e| {
            tracing::error!(error = %e, "policy named a budget the ledger cannot key");
            Refusal::policy_unavailable()
        })?;
        let fingerprint = call.request_fingerprint();
        let idempotency = intake.replay_key().map(|(key, window)| Idempotency {
            key,
            account: &intake.headers.account,
            window_secs: i64::try_from(window.as_secs()).unwrap_or(i64::MAX),
        });
        let reservation = NewReservation {
            window: &window,
            provider: &provider.name,
            agent_id: intake.agent.id,
            decision_id: draft.id,
            cents: charge.cents,
            cap_cents: charge.cap_cents,
            idempotency,
            fingerprint: &fingerprint,
        };
        match self.ledger.reserve(&reservation).await {
            Ok(Reservation::Reserved) => Ok((true, None)),
            Ok(Reservation::ReservedReplacing(earlier)) => Ok((true, Some(earlier))),
            Ok(Reservation::Replayed) => Ok((false, None)),
            Ok(Reservation::IdempotencyInFlight) => Err(Refusal::new(
                RefusalCode::IdempotencyKeyInUse,
                "tollgate: the first request with this Idempotency-Key has no answer yet; retry once it has",
            )),
            Ok(Reservation::IdempotencyConflict) => Err(Refusal::new(
                RefusalCode::IdempotencyKeyReused,
                "tollgate: this Idempotency-Key was already used for a different request (or with \
                 other account headers) within the provider's replay window",
            )),
            Ok(Reservation::Exceeded {
                cap_cents,
                committed_cents,
                reserved_cents,
            }) => {
                self.metrics
                    .budget_exceeded_total
                    .with_label_values(&[&provider.name])
                    .inc();
                Err(Refusal::new(
                    RefusalCode::BudgetExceeded,
                    format!(
                        "tollgate: budget {} ({}) is capped at {}; {} spent and {} reserved, this request asks {}",
                        charge.budget,
                        window.period,
                        dollars(cap_cents),
                        dollars(committed_cents),
                        dollars(reserved_cents),
                        dollars(charge.cents)
                    ),
                )
                .with_rule(format!("budget.{}", charge.budget)))
            }
            Err(e) => {
                tracing::error!(error = %e, "spend reservation failed");
                Err(Refusal::store_unavailable())
            }
        }
    }

    /// The agent left while its decision was being recorded: the call is not made for nobody (an agent that
    /// gave up will likely retry, and the provider would then act twice). The money reserved goes back, an
    /// approval it consumed is handed back, and the outcome row says it was not forwarded.
    async fn abandon(
        &self,
        draft: &Draft,
        authorized: Authorized,
        refusal: Refusal,
        note: &str,
    ) -> Finished {
        if authorized.reserved {
            self.unreserve(draft.id, authorized.replaces).await;
        }
        self.give_back(authorized.consumed).await;
        Finished {
            response: refusal.into_response(draft.envelope, draft.id),
            outcome: Some(OutcomeRow {
                decision_id: authorized.recorded.decision_id(),
                at: Utc::now(),
                upstream_status: None,
                latency_us: 0,
                error: Some(note.to_string()),
                flagged: false,
            }),
        }
    }

    /// Whether the key that opened this request still names the same live agent (and, for a handle, a
    /// live minter and token): asked again just before forwarding. A store failure counts as no.
    async fn still_authenticated(&self, headers: &HeaderMap, agent: &Agent) -> bool {
        let Some(key) = presented_key(headers) else {
            return false;
        };
        match self.identity.authenticate(&key).await {
            Ok(now) => now.id == agent.id,
            Err(AuthError::Unauthenticated) => false,
            Err(AuthError::Store(e)) => {
                tracing::error!(error = %e, "agent lookup before forwarding failed; not forwarded");
                false
            }
        }
    }

    /// Forward and settle: the permitted request goes upstream; money is settled by what the answer
    /// proves; the agent gets the provider's answer (or a refusal saying what is known), and the outcome row
    /// is handed back to be written once the answer was delivered.
    async fn forward_and_settle(
        &self,
        draft: &Draft,
        parts: &http::request::Parts,
        intake: Intake<'_>,
        ruling: Ruling,
        authorized: Authorized,
    ) -> Finished {
        let provider = intake.provider;
        let target = Target {
            provider: &provider.name,
            path: &draft.path,
            query: draft.query.as_deref(),
        };
        let Some(permit) = Permit::issue(
            &ruling.decision,
            authorized.consumed.as_ref(),
            &authorized.recorded,
            target,
        ) else {
            // Unreachable by construction (authorize refuses denials and unconsumed approvals); the money
            // reserved for it goes back.
            if authorized.reserved {
                self.unreserve(draft.id, authorized.replaces).await;
            }
            let refusal = Refusal::policy_unavailable();
            return Finished {
                response: refusal.into_response(draft.envelope, draft.id),
                outcome: None,
            };
        };
        let token_event = TokenEvent::of_action(&intake.action.name);
        // A create or delete of a resource tollgate records (the catalog's `creates:` / `deletes:`).
        let observed = crate::resources::Observed::of(
            &intake.action,
            &parts.method,
            &provider.name,
            &parts.headers,
            intake.agent.id,
            &intake.agent.name,
            draft.run.id.as_deref(),
            draft.id,
        );
        // Every answer is screened for the credential it went out with (and a token action's read for the
        // token it mints, a create's for the id of what it made): it must come in plain bytes.
        let forwarded_headers =
            crate::forward::identity_encoded(&intake.headers.forwarded(&parts.headers));
        let credential = match &intake.minted_credential {
            Some(value) => {
                self.metrics
                    .vault_handles_used_total
                    .with_label_values(&[&provider.name])
                    .inc();
                Credential::Minted(value.clone())
            }
            None => Credential::Provider,
        };
        let result = self
            .forwarder
            .forward(
                &permit,
                credential,
                parts.method.clone(),
                &forwarded_headers,
                intake.bytes.clone(),
            )
            .await;
        // A 4xx is a refusal only in the provider's own envelope: read it (small) before settling.
        let result = match result {
            Ok((response, latency))
                if authorized.reserved
                    && Settlement::needs_body(response.status().as_u16(), provider.envelope) =>
            {
                self.read_evidence(response, latency).await
            }
            other => other.map(|(response, latency)| (response, latency, None)),
        };

        // settle: money first, then the outcome record
        let mut settled = None;
        // A replay is evidence only for a request that carried a key to replay.
        let replayed = |response: &Response<Body>| {
            intake.headers.forwarded_key.is_some()
                && response
                    .headers()
                    .get("idempotent-replayed")
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
        };
        if let Some(earlier) = authorized.replaces {
            tracing::info!(decision_id = %draft.id, %earlier, "a same-key retry carries the money of the flagged attempt it replaces");
        }
        if authorized.reserved {
            let settlement = match &result {
                Ok((response, _, evidence)) if authorized.replaces.is_some() => {
                    Settlement::of_retry(
                        response.status().as_u16(),
                        provider.envelope,
                        replayed(response),
                        evidence.as_deref(),
                    )
                }
                Ok((response, _, evidence)) => Settlement::of_response(
                    response.status().as_u16(),
                    provider.envelope,
                    replayed(response),
                    evidence.as_deref(),
                ),
                // Not sent; but a retry's reservation carries an earlier attempt's, which may have run.
                Err((UpstreamFailure::Connect | UpstreamFailure::NoCredential, _))
                    if authorized.replaces.is_none() =>
                {
                    Settlement::Release
                }
                Err(_) => Settlement::Unknown,
            };
            settled = Some(settlement);
            match self.ledger.settle(draft.id, settlement).await {
                Ok(Some(cents)) => self
                    .metrics
                    .spend_committed_cents
                    .with_label_values(&[&provider.name])
                    .inc_by(cents as u64),
                Ok(None) => {}
                // The store is away: settling goes on in the background (the agent's answer does not wait
                // for it); if it never succeeds, the sweeper flags the reservation for an operator.
                Err(e) => {
                    tracing::error!(error = %e, decision_id = %draft.id, "settlement failed; trying again in the background");
                    self.settle_later(draft.id, settlement, &provider.name);
                }
            }
        }

        match result {
            Ok((response, latency, _)) => {
                let status = response.status().as_u16();
                let mut outcome = OutcomeRow {
                    decision_id: permit.decision_id(),
                    at: Utc::now(),
                    upstream_status: Some(i32::from(status)),
                    latency_us: latency.as_micros() as i64,
                    error: None,
                    flagged: settled == Some(Settlement::Unknown),
                };
                self.metrics
                    .upstream_duration_seconds
                    .with_label_values(&[&draft.provider, status_class(status)])
                    .observe(latency.as_secs_f64());
                self.count(draft, "allow", None);
                // a token action's answer: the token recorded and, in vault mode, its secret kept
                let response = match token_event {
                    Some(event) if (200..300).contains(&status) => {
                        self.keep_minted_token(draft, &intake, event, response)
                            .await
                    }
                    // A refusal to a create or roll should carry no secret; in vault mode one that does is
                    // withheld all the same.
                    Some(TokenEvent::Created | TokenEvent::Rolled | TokenEvent::Updated) => {
                        self.screen_token_refusal(draft, &intake, response).await
                    }
                    _ => response,
                };
                // a create's answer: the resource recorded (its bytes passed on unchanged)
                let mut response = match observed {
                    Some(observed) if (200..300).contains(&status) => {
                        let within = self.config.server.upstream_timeout;
                        let held = self.held.needles_with(&[]);
                        crate::resources::observe(
                            &self.store,
                            &self.metrics,
                            within,
                            observed,
                            response,
                            |text| held.found_in(text),
                        )
                        .await
                    }
                    _ => response,
                };
                // The request went out with a credential the agent never holds (tollgate's own, or a handle's
                // minted secret): the answer must not bring it back.
                let token_secret = ruling
                    .token_credential
                    .as_ref()
                    .and_then(crate::vault::screen::secret_of);
                // Screened for every secret tollgate holds (its own credentials, every vaulted token's),
                // whoever's call this is: a provider may write a minted secret anywhere another agent reads.
                let went_with: Vec<Vec<u8>> = [
                    intake
                        .minted_credential
                        .as_ref()
                        .and_then(crate::vault::screen::secret_of),
                    token_secret,
                ]
                .into_iter()
                .flatten()
                .collect();
                let principal = intake.agent.principal_id();
                let source = self.held.for_answer(principal, went_with);
                let needles = source.needles();
                let tripped_out = !needles.is_empty() && self.held.tripped_out(principal);
                if !needles.is_empty() {
                    // Answers in flight when the agent tripped out (probes sent at once) are withheld whatever
                    // they carry: only `screen_trips` of them can say "this held a secret".
                    let withheld = if tripped_out {
                        tracing::warn!(decision_id = %draft.id, "an answer to an agent refused for answers that carried secrets; withheld");
                        Some(
                            "tollgate: answers to this agent carried secrets tollgate holds too often; this one is withheld too, and its requests are refused for up to an hour",
                        )
                    } else if needles.headers_carry(response.headers()) {
                        self.held.tripped(principal);
                        tracing::error!(decision_id = %draft.id, "an answer carries the credential it went out with in a header; withheld");
                        Some(
                            "tollgate: the provider's answer carries the credential the request went out with, so it is withheld",
                        )
                    } else if crate::vault::screen::encoded(response.headers()) {
                        // Asked for `identity`; a compressed answer could carry the credential past the screen.
                        tracing::error!(decision_id = %draft.id, "an answer came compressed; withheld");
                        Some(
                            "tollgate: the provider's answer came compressed though tollgate asked for none, so it cannot be screened for the credential the request went out with and is withheld",
                        )
                    } else {
                        None
                    };
                    response = match withheld {
                        Some(why) => Refusal::new(RefusalCode::UpstreamError, why)
                            .not_retryable()
                            .into_response(draft.envelope, draft.id),
                        None => response.map(|body| {
                            crate::vault::screen::screened_from(body, source, draft.id)
                        }),
                    };
                }
                if response.status().as_u16() != status {
                    // The provider acted, but its answer was withheld (vault mode): say so in the outcome.
                    outcome.error = Some(
                        if tripped_out {
                            ANSWER_WITHHELD_TRIPPED
                        } else {
                            MINTED_TOKEN_WITHHELD
                        }
                        .to_string(),
                    );
                }
                // respond (the agent sees its own Idempotency-Key, not the namespaced one)
                intake.headers.restore_key(response.headers_mut());
                insert_decision_header(response.headers_mut(), draft.id);
                Finished {
                    response,
                    outcome: Some(outcome),
                }
            }
            Err((failure, latency)) => {
                let (code, kind, flagged, message) = match failure {
                    UpstreamFailure::Connect => (
                        RefusalCode::UpstreamError,
                        "connect",
                        false,
                        "tollgate: the provider could not be reached; the request was not delivered",
                    ),
                    UpstreamFailure::Timeout => (
                        RefusalCode::UpstreamTimeout,
                        "timeout",
                        true,
                        "tollgate: the provider did not answer in time; the request may have been acted on",
                    ),
                    UpstreamFailure::Broken => (
                        RefusalCode::UpstreamError,
                        "io",
                        true,
                        "tollgate: the exchange with the provider failed; the request may have been acted on",
                    ),
                    UpstreamFailure::NoCredential => (
                        RefusalCode::UpstreamError,
                        "no_credential",
                        false,
                        "tollgate: no credential is configured for this provider; the request was not sent",
                    ),
                };
                let outcome = OutcomeRow {
                    decision_id: permit.decision_id(),
                    at: Utc::now(),
                    upstream_status: None,
                    latency_us: latency.as_micros() as i64,
                    error: Some(kind.to_string()),
                    flagged,
                };
                self.metrics
                    .upstream_errors_total
                    .with_label_values(&[&draft.provider, kind])
                    .inc();
                self.metrics.refused(&draft.provider, code);
                self.count(draft, code.as_str(), Some(code.as_str()));
                // The decision (allow) is already recorded; the failure is its outcome, not a new decision.
                let refusal = Refusal::new(code, message);
                let refusal = if flagged {
                    refusal.not_retryable()
                } else {
                    refusal
                };
                Finished {
                    response: refusal.into_response(draft.envelope, draft.id),
                    outcome: Some(outcome),
                }
            }
        }
    }

    /// A token action's 2xx answer: the token recorded in `minted_tokens` and, when tollgate keeps custody
    /// (vault mode), its secret sealed and replaced by a handle, a key of a new child agent of the minter.
    /// Only these answers are read (at most [`TOKEN_RESPONSE_LIMIT`]). When the secret cannot be kept — an
    /// answer of another shape, a store failure — the agent gets an error, never the secret.
    /// A non-2xx answer to a token create or roll, in vault mode: rebuilt as Cloudflare's envelope with the
    /// errors' codes and plain messages only ([`crate::vault::refusal_for_agent`]), with no provider header
    /// but `Retry-After`. The token may have been made despite the refusal, and tollgate has no secret to
    /// look for; nothing else of the answer can carry one to the agent.
    async fn screen_token_refusal(
        &self,
        draft: &Draft,
        intake: &Intake<'_>,
        response: Response<Body>,
    ) -> Response<Body> {
        if self.vault.custody_for(&intake.agent.labels) == Custody::PassThrough {
            return response;
        }
        let (head, body) = response.into_parts();
        let limited = http_body_util::Limited::new(body, TOKEN_RESPONSE_LIMIT);
        let read =
            tokio::time::timeout(self.config.server.upstream_timeout, limited.collect()).await;
        // A compressed or unreadable answer is rebuilt from nothing: the status and a generic error.
        let bytes = match read {
            Ok(Ok(collected)) if !crate::vault::screen::encoded(&head.headers) => {
                collected.to_bytes()
            }
            _ => Bytes::new(),
        };
        let (rebuilt, withheld) = crate::vault::refusal_for_agent(&bytes);
        if withheld > 0 {
            tracing::warn!(decision_id = %draft.id, action = %intake.action.name, withheld, "a refused token action's answer had messages that may carry a secret; they are withheld");
        }
        let mut response = Response::new(Body::from(rebuilt));
        *response.status_mut() = head.status;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(after) = head
            .headers
            .get(http::header::RETRY_AFTER)
            .filter(|v| (1..=3).contains(&v.len()) && v.as_bytes().iter().all(u8::is_ascii_digit))
        {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, after.clone());
        }
        response
    }

    async fn keep_minted_token(
        &self,
        draft: &Draft,
        intake: &Intake<'_>,
        event: TokenEvent,
        response: Response<Body>,
    ) -> Response<Body> {
        let provider = intake.provider.name.as_str();
        let custody = self.vault.custody_for(&intake.agent.labels);
        let withheld = |message: &str| {
            self.metrics
                .upstream_errors_total
                .with_label_values(&[provider, "token_answer"])
                .inc();
            Refusal::new(RefusalCode::UpstreamError, format!("tollgate: {message}"))
                .not_retryable()
                .into_response(draft.envelope, draft.id)
        };
        // Asked for `identity`: a compressed answer cannot be read for its token nor screened for a secret.
        if custody == Custody::Vault && crate::vault::screen::encoded(response.headers()) {
            tracing::error!(decision_id = %draft.id, action = %intake.action.name, "the provider's answer to a token action came compressed; withheld");
            return withheld(
                "the provider's answer to this token action came compressed, so it cannot be read and is withheld (vault mode); the action may have taken effect",
            );
        }
        let (mut head, body) = response.into_parts();
        let limited = http_body_util::Limited::new(body, TOKEN_RESPONSE_LIMIT);
        let bytes = match tokio::time::timeout(
            self.config.server.upstream_timeout,
            limited.collect(),
        )
        .await
        {
            Ok(Ok(collected)) => collected.to_bytes(),
            _ => {
                tracing::error!(decision_id = %draft.id, action = %intake.action.name, "the provider's answer to a token action could not be read");
                return withheld(
                    "the provider's answer to this token action could not be read; the action may have taken effect",
                );
            }
        };
        head.headers.remove(http::header::CONTENT_LENGTH);
        let pass = |bytes: Bytes| Response::from_parts(head.clone(), Body::from(bytes));
        let parsed = MintedResponse::parse(event, &bytes);
        // Every answer from now on is screened for the secret in this one (an answer streaming to another
        // agent meanwhile included): on this replica before anything else is done with it, on the others
        // once it is recorded, within their refresh.
        if custody == Custody::Vault
            && let Some(secret) = parsed.as_ref().and_then(|p| p.secret())
            && crate::vault::plausible_secret(secrecy::ExposeSecret::expose_secret(secret))
        {
            self.held
                .hold(secrecy::ExposeSecret::expose_secret(secret).as_bytes())
                .await;
        }
        // The token the route names, spelled as tollgate recorded it when it did (the provider takes other
        // cases and hyphens for the same token).
        let path_token = match intake.action.params.get("token_id") {
            Some(id) => Some(self.recorded_spelling(provider, id).await),
            None => None,
        };
        let now = Utc::now();
        let (parent_id, parent_name) = match &intake.agent.minted {
            Some(m) => (m.minted_by, m.minted_by_name.clone()),
            None => (intake.agent.id, intake.agent.name.clone()),
        };
        let count = |custody: Custody| {
            self.metrics
                .minted_tokens_total
                .with_label_values(&[
                    provider,
                    event.as_str(),
                    match custody {
                        Custody::Vault => "vault",
                        Custody::PassThrough => "pass_through",
                    },
                ])
                .inc();
        };
        match event {
            TokenEvent::Updated => {
                let Some(token_id) = path_token else {
                    return pass(bytes);
                };
                if custody == Custody::Vault
                    && parsed.as_ref().is_some_and(|p| p.secret().is_some())
                {
                    tracing::error!(decision_id = %draft.id, "a token update's answer carries a secret; withheld");
                    return withheld(
                        "the provider's answer to this token update carries a secret, so it is withheld (vault mode)",
                    );
                }
                if !crate::vault::cloudflare_succeeded(&bytes) {
                    return pass(bytes);
                }
                let body = &intake.facts.body;
                let update = TokenUpdate {
                    provider,
                    token_id: &token_id,
                    name: body_text(body, "name"),
                    policies: body.get("policies").cloned(),
                    expires_on: body_time(body, "expires_on"),
                    decision_id: draft.id,
                };
                match self.store.update_minted_token(&update).await {
                    Ok(true) => {
                        self.identity.forget();
                        count(custody)
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(error = %e, %token_id, decision_id = %draft.id, "recording a token update failed; its handle keeps the old expiry");
                    }
                }
                pass(bytes)
            }
            TokenEvent::Deleted => {
                let Some(token_id) = path_token else {
                    return pass(bytes);
                };
                // Only an answer that says it succeeded ends the token here; a 2xx saying otherwise leaves it
                // recorded live (for containment to delete).
                if !crate::vault::cloudflare_succeeded(&bytes) {
                    tracing::warn!(%token_id, decision_id = %draft.id, "a token delete was answered 2xx without success; the token stays recorded live");
                    return pass(bytes);
                }
                match self
                    .store
                    .delete_minted_token(provider, &token_id, draft.id, now)
                    .await
                {
                    Ok(_) => {
                        self.identity.forget();
                        count(custody)
                    }
                    Err(e) => {
                        tracing::error!(error = %e, %token_id, decision_id = %draft.id, "recording a deleted token failed; its handle may still work until it is revoked");
                    }
                }
                pass(bytes)
            }
            TokenEvent::Created | TokenEvent::Rolled => {
                let token_id = match event {
                    TokenEvent::Created => parsed.as_ref().and_then(|p| p.token_id.clone()),
                    _ => path_token,
                };
                // An id that carries a secret tollgate holds (another token's, its own credential) would carry
                // it into the records, the handle's name and the log: withheld, nothing recorded, the id not
                // logged.
                let held = self.held.needles_with(&[]);
                if [
                    token_id.as_deref(),
                    parsed.as_ref().and_then(|p| p.name.as_deref()),
                ]
                .into_iter()
                .flatten()
                .any(|text| held.found_in(text.as_bytes()))
                {
                    self.held.tripped(intake.agent.principal_id());
                    // A created token whose id is clean is recorded all the same, under a stand-in name and
                    // without its secret (which nobody gets), so that `incident contain` deletes it.
                    if let (TokenEvent::Created, Some(p), Some(id)) =
                        (event, parsed.as_ref(), token_id.as_deref())
                        && !held.found_in(id.as_bytes())
                    {
                        let mut row = created_token_row(
                            intake,
                            draft.id,
                            id,
                            p,
                            custody,
                            (parent_id, &parent_name),
                            now,
                        );
                        row.name = Some(WITHHELD_TOKEN_NAME.to_string());
                        if let Err(e) = self.store.record_minted_token(&row, None).await {
                            tracing::error!(error = %e, decision_id = %draft.id, "recording a withheld token failed");
                        }
                    }
                    tracing::error!(decision_id = %draft.id, action = %intake.action.name, "a token answer's id or name carries a secret tollgate holds; withheld");
                    return withheld(
                        "the provider's answer names the token by a secret tollgate holds, so it is withheld",
                    );
                }
                // In vault mode an answer must be the known shape with its secret where tollgate replaces it:
                // anything else (no id, no string `value`, the secret elsewhere) is withheld, never passed on.
                let no_secret = parsed.as_ref().is_some_and(|p| p.secret().is_none());
                if custody == Custody::Vault && no_secret {
                    tracing::error!(decision_id = %draft.id, action = %intake.action.name, "a token action's answer carries no secret where expected; withheld");
                    // A created token whose id is known is recorded all the same (no secret, no handle), so
                    // `incident contain` and the report know it exists.
                    if let (TokenEvent::Created, Some(p), Some(id)) =
                        (event, parsed.as_ref(), token_id.as_deref())
                    {
                        let row = created_token_row(
                            intake,
                            draft.id,
                            id,
                            p,
                            custody,
                            (parent_id, &parent_name),
                            now,
                        );
                        if let Err(e) = self.store.record_minted_token(&row, None).await {
                            tracing::error!(error = %e, token_id = %id, "recording a withheld token failed");
                        }
                    }
                    return withheld(
                        "the provider's answer to this token action does not carry its secret where expected, so it is withheld (vault mode); the token may exist",
                    );
                }
                let (Some(parsed), Some(token_id)) = (parsed, token_id) else {
                    if custody == Custody::PassThrough {
                        tracing::warn!(decision_id = %draft.id, "a token action's answer is not the expected shape; passed through unrecorded");
                        return pass(bytes);
                    }
                    tracing::error!(decision_id = %draft.id, action = %intake.action.name, "a token action's answer is not the expected shape; its secret is withheld");
                    return withheld(
                        "the provider's answer to this token action is not the expected shape, so its secret is withheld (vault mode); the token may exist",
                    );
                };
                // An id that is (or is inside) the secret would carry the secret into the handle's name, the
                // records and the log: such an answer is withheld, and the id is not logged.
                if let Some(secret) = parsed.secret() {
                    let secret = secrecy::ExposeSecret::expose_secret(secret);
                    if !secret.is_empty()
                        && (token_id.contains(secret)
                            || (token_id.len() * 2 >= secret.len()
                                && secret.contains(token_id.as_str())))
                    {
                        tracing::error!(decision_id = %draft.id, "a token answer's id overlaps its secret; withheld");
                        return withheld(
                            "the provider's answer names the token by its secret, so it is withheld; delete the token",
                        );
                    }
                }
                // The handle expires with the token. A create's expiry is the earlier of what was asked and
                // what the provider answered; a roll keeps the token's recorded expiry (a roll's answer is the
                // bare secret, and whatever its body says is not judged, so it is not read).
                let handle_expiry = match event {
                    TokenEvent::Created => earliest(
                        parsed.expires_on,
                        body_time(&intake.facts.body, "expires_on"),
                    ),
                    _ => match self.recorded_expiry(provider, &token_id).await {
                        Ok(expiry) => expiry,
                        Err(()) => {
                            return withheld(
                                "the rolled token's record could not be read, so its new secret is withheld (vault mode); delete the token",
                            );
                        }
                    },
                };
                let (sealed, handle, key) = match (custody, parsed.secret()) {
                    (Custody::Vault, Some(secret)) => {
                        let sealed = match self.vault.seal(provider, &token_id, secret) {
                            Ok(sealed) => sealed,
                            Err(e) => {
                                tracing::error!(error = %e, %token_id, "sealing a minted token's secret failed; withheld");
                                return withheld(
                                    "the minted token's secret could not be stored, so it is withheld (vault mode); delete the token",
                                );
                            }
                        };
                        // Separation of duties carries over: whoever created the minter may not approve
                        // its handle's requests either.
                        let created_by = match self.store.agent_created_by(parent_id).await {
                            Ok(created_by) => created_by,
                            Err(e) => {
                                tracing::error!(error = %e, %token_id, "reading the minter failed; the secret is withheld");
                                return withheld(
                                    "the minted token could not be recorded, so its secret is withheld (vault mode); delete the token",
                                );
                            }
                        };
                        let (row, key) = handle_agent(
                            &intake.agent,
                            created_by,
                            parent_id,
                            &parent_name,
                            &token_id,
                            event,
                            handle_expiry,
                        );
                        (Some(sealed), Some(row), Some(key))
                    }
                    _ => (None, None, None),
                };
                let recorded = match event {
                    TokenEvent::Created => {
                        let mut row = created_token_row(
                            intake,
                            draft.id,
                            &token_id,
                            &parsed,
                            custody,
                            (parent_id, &parent_name),
                            now,
                        );
                        row.handle_agent_id = handle.as_ref().map(|h| h.id);
                        row.sealed = sealed;
                        self.store.record_minted_token(&row, handle.as_ref()).await
                    }
                    _ => {
                        let roll = TokenRoll {
                            provider,
                            token_id: &token_id,
                            custody,
                            sealed,
                            handle: handle.as_ref(),
                            decision_id: draft.id,
                            agent_id: parent_id,
                            agent_name: &parent_name,
                            at: now,
                            account_id: intake.action.params.get("account_id").map(String::as_str),
                        };
                        self.store.roll_minted_token(&roll).await
                    }
                };
                if let Err(e) = recorded {
                    tracing::error!(error = %e, %token_id, decision_id = %draft.id, "recording a minted token failed");
                    if key.is_some() {
                        return withheld(
                            "the minted token could not be recorded, so its secret is withheld (vault mode); delete the token",
                        );
                    }
                }
                // A roll revoked the old handle: this replica stops taking it before the new one is handed out.
                if event == TokenEvent::Rolled {
                    self.identity.forget();
                }
                count(custody);
                // The minter was revoked (contained) while this token was being minted: the token must not
                // outlive it, so tollgate deletes it at once and the answer is withheld.
                if self.minter_revoked(parent_id).await {
                    self.delete_late_token(provider, &token_id, &parent_name, intake)
                        .await;
                    return withheld(
                        "the agent was revoked while this token was minted; tollgate deleted the token and withholds its answer",
                    );
                }
                match key {
                    Some(key) => {
                        let secret = parsed
                            .secret()
                            .map(|s| secrecy::ExposeSecret::expose_secret(s).to_string())
                            .unwrap_or_default();
                        let (answer, rebuilt) = parsed.with_handle(event, key.expose());
                        // The secret must not leave by another field, or a header: withheld if it would.
                        // (Any 12 characters of it, as the answer screen looks for.)
                        let needles = crate::vault::screen::Needles::new([secret.as_bytes()]);
                        // Nor may another credential-shaped string stand beside it: `value` may be a decoy.
                        let leaks = secret.is_empty()
                            || needles.found_in(&answer)
                            || needles.headers_carry(&head.headers)
                            || crate::vault::stray_credential(
                                &answer,
                                &intake.facts.body,
                                key.expose(),
                            );
                        if leaks {
                            tracing::error!(%token_id, decision_id = %draft.id, "the minted secret appears elsewhere in the provider's answer; withheld");
                            // The handle was never handed out; it is revoked all the same. The token stays
                            // recorded as live (it is, at the provider) for `incident contain` to delete.
                            if let Some(handle) = &handle
                                && let Err(e) = self.store.revoke_agent(&handle.name).await
                            {
                                tracing::error!(error = %e, %token_id, "revoking the withheld token's handle failed");
                            }
                            return withheld(
                                "the minted token's secret appears elsewhere in the provider's answer, so the answer is withheld (vault mode); delete the token",
                            );
                        }
                        // Its headers too are Cloudflare's request id alone (a decoy `value` could stand
                        // beside a real secret in any other header, which tollgate cannot look for).
                        let mut headers = http::HeaderMap::new();
                        for (name, value) in &head.headers {
                            if crate::vault::token_answer_header(name, value) {
                                headers.append(name.clone(), value.clone());
                            }
                        }
                        headers.insert(
                            http::header::CONTENT_TYPE,
                            HeaderValue::from_static("application/json"),
                        );
                        let mut response = Response::new(Body::from(rebuilt));
                        *response.status_mut() = head.status;
                        *response.headers_mut() = headers;
                        response
                    }
                    None => pass(bytes),
                }
            }
        }
    }

    /// The recorded expiry of a token being rolled (`None`: it has none). A token with no record (a roll of
    /// one is refused before it is forwarded) or a store failure is `Err`: the new secret is then withheld.
    async fn recorded_expiry(
        &self,
        provider: &str,
        token_id: &str,
    ) -> Result<Option<DateTime<Utc>>, ()> {
        let key = crate::vault::token_key(token_id).ok_or(())?;
        let rows = self
            .store
            .minted_tokens_keyed(provider, &key)
            .await
            .map_err(|e| tracing::error!(error = %e, "reading a rolled token's record failed"))?;
        let row = rows
            .iter()
            .find(|r| r.token_id == token_id)
            .or(rows.first())
            .ok_or(())?;
        Ok(row.expires_on)
    }

    /// Whether the agent that minted a token is revoked or gone (a store failure counts as revoked: the
    /// token is then deleted rather than left behind unseen).
    async fn minter_revoked(&self, minter: Uuid) -> bool {
        match self.store.agent_by_id(minter).await {
            Ok(Some(agent)) => agent.status != "active",
            Ok(None) => true,
            Err(e) => {
                tracing::error!(error = %e, "reading a minter's status failed; its new token is deleted");
                true
            }
        }
    }

    /// Deletes at the provider, with tollgate's credential, a token minted by an agent revoked meanwhile,
    /// recorded as the admin action `incident.contain.late_token`; a failure is logged and the token stays
    /// recorded live for the next `incident contain` run.
    async fn delete_late_token(
        &self,
        provider: &str,
        token_id: &str,
        minter_name: &str,
        intake: &Intake<'_>,
    ) {
        let row = match self.store.minted_token(provider, token_id).await {
            Ok(Some(row)) => row,
            _ => {
                tracing::error!(%token_id, "a late token's row could not be read; run `tollgate incident contain` again");
                return;
            }
        };
        let action_id = match self
            .store
            .record_admin_action(
                "tollgate",
                "incident.contain.late_token",
                Some(minter_name),
                &json!({"token_id": token_id, "provider": provider, "action": intake.action.name}),
            )
            .await
        {
            Ok(id) => id,
            Err(e) => {
                tracing::error!(error = %e, %token_id, "a late token's deletion could not be recorded; run `tollgate incident contain` again");
                return;
            }
        };
        let result = crate::containment::delete_at_provider(
            &self.forwarder,
            &self.held.needles_with(&[]),
            action_id,
            &row,
        )
        .await;
        if matches!(result.result, "deleted" | "already_gone") {
            if let Err(e) = self
                .store
                .delete_minted_token(provider, token_id, action_id, Utc::now())
                .await
            {
                tracing::error!(error = %e, %token_id, "a late token was deleted but not recorded so");
            }
        } else {
            tracing::error!(%token_id, error = ?result.error, "a late token could not be deleted at the provider; run `tollgate incident contain` again");
        }
    }

    /// `token_id` as the `minted_tokens` row of the same token spells it, or as given when there is none
    /// (or the store cannot say).
    async fn recorded_spelling(&self, provider: &str, token_id: &str) -> String {
        let Some(key) = crate::vault::token_key(token_id) else {
            return token_id.to_string();
        };
        match self.store.minted_tokens_keyed(provider, &key).await {
            Ok(rows) if !rows.iter().any(|r| r.token_id == token_id) => rows
                .into_iter()
                .next()
                .map_or_else(|| token_id.to_string(), |r| r.token_id),
            _ => token_id.to_string(),
        }
    }

    /// Evaluates the live bundle (and the shadow bundle, if any, never enforced): on this async worker when
    /// the bytecode VM decides within [`INLINE_POLICY_BUDGET`] (nearly always), otherwise again from the
    /// start on the blocking pool under the bundle's full time limit.
    async fn decide(
        &self,
        draft: &mut Draft,
        live: Arc<Live>,
        input: Value,
    ) -> Result<Decision, Refusal> {
        draft.policy_revision = Some(live.bundle.revision().to_string());
        let checked = (live.bundle.uses_bytecode()
            && sampled(draft.id, self.config.policy.engine_check_sample))
        .then(|| Arc::clone(&live));
        let (result, shadow, input) =
            match judge(&live, &input, Some(INLINE_POLICY_BUDGET), &self.metrics) {
                Some((result, shadow)) => (result, shadow, input),
                None => {
                    let metrics = self.metrics.clone();
                    let joined = tokio::task::spawn_blocking(move || {
                        let judged = judge(&live, &input, None, &metrics);
                        (judged, input)
                    })
                    .await;
                    match joined {
                        Ok((Some((result, shadow)), input)) => (result, shadow, input),
                        Ok((None, _)) | Err(_) => {
                            tracing::error!("policy evaluation task failed");
                            return Err(Refusal::policy_unavailable());
                        }
                    }
                }
            };
        if let (Some(live), Ok(decision)) = (checked, &result) {
            self.check_engines(live, input.clone(), decision.clone(), draft);
        }
        draft.input = Some(input);
        let live_outcome = result
            .as_ref()
            .map(|d| outcome_name(d.outcome))
            .unwrap_or("error");
        if let Some(shadow) = shadow {
            draft.shadow_outcome = Some(shadow.to_string());
            if shadow != live_outcome {
                let action = draft
                    .action
                    .as_ref()
                    .map(|a| a.name.to_string())
                    .unwrap_or_default();
                self.metrics
                    .shadow_disagreements_total
                    .with_label_values(&[&action])
                    .inc();
            }
        }
        match result {
            Ok(decision) => {
                draft.decision = Some(decision.clone());
                Ok(decision)
            }
            Err(e) => {
                tracing::error!(error = %e, decision_id = %draft.id, "policy gave no decision; refusing");
                Err(Refusal::policy_unavailable())
            }
        }
    }

    /// Reads a non-2xx upstream response's body (at most [`EVIDENCE_LIMIT`] bytes, within the upstream
    /// timeout), so settlement can tell the provider's refusal from an unknown outcome; the agent gets the
    /// same bytes. A body that cannot be read is an unknown outcome (the refusal says so).
    async fn read_evidence(
        &self,
        response: http::Response<Body>,
        latency: Duration,
    ) -> ForwardResult {
        let (head, body) = response.into_parts();
        let limited = http_body_util::Limited::new(body, EVIDENCE_LIMIT);
        match tokio::time::timeout(self.config.server.upstream_timeout, limited.collect()).await {
            Ok(Ok(collected)) => {
                let bytes = collected.to_bytes();
                let mut response = http::Response::from_parts(head, Body::from(bytes.clone()));
                response.headers_mut().remove(http::header::CONTENT_LENGTH);
                Ok((response, latency, Some(bytes.to_vec())))
            }
            Ok(Err(_)) => Err((UpstreamFailure::Broken, latency)),
            Err(_) => Err((UpstreamFailure::Timeout, latency)),
        }
    }

    /// Reads the body up to the configured limit.
    async fn read_body(&self, headers: &HeaderMap, body: Body) -> Result<Bytes, Refusal> {
        let limit = self.config.server.body_limit_bytes;
        let too_large = || {
            Refusal::new(
                RefusalCode::BodyTooLarge,
                format!("tollgate: the request body is larger than {limit} bytes"),
            )
        };
        let declared = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let limited =
            http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
        let timeout = self.config.server.body_timeout;
        match tokio::time::timeout(timeout, limited.collect()).await {
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
            Ok(Err(_)) => Err(Refusal::malformed(
                "tollgate: the request body could not be read",
            )),
            // A trickled body holds a connection and a concurrency slot: bounded, refused and recorded.
            Err(_) => Err(Refusal::new(
                RefusalCode::RequestTimeout,
                format!(
                    "tollgate: the request body did not arrive within {} s",
                    timeout.as_secs()
                ),
            )),
        }
    }

    /// Records a refusal and renders it. If even the refusal cannot be recorded, the agent is told the store
    /// is unavailable — the request is refused either way.
    async fn refuse(&self, draft: Draft, refusal: Refusal) -> Response<Body> {
        let outcome = match (refusal.code(), draft.decision.as_ref().map(|d| d.outcome)) {
            (RefusalCode::PolicyDenied, Some(Outcome::Deny)) => "deny",
            (RefusalCode::ApprovalRequired, Some(Outcome::Approve)) => "approve",
            _ => "refused",
        };
        let record = self.record_of(&draft, outcome, Some(&refusal));
        let refusal = if self.record_refusal(record).await {
            refusal
        } else {
            tracing::error!(decision_id = %draft.id, code = refusal.code().as_str(), "refusal not recorded");
            Refusal::store_unavailable()
        };
        self.metrics.refused(&draft.provider, refusal.code());
        self.count(
            &draft,
            outcome_label(outcome, &refusal),
            Some(refusal.code().as_str()),
        );
        refusal.into_response(draft.envelope, draft.id)
    }

    /// Replaces in `text` every occurrence of a secret tollgate holds (provider credentials, the admin token,
    /// the redaction key): the detectors in `redact` find secrets by their shape, these by their value. True
    /// when anything was replaced.
    fn scrub_own_secrets(&self, text: &mut String) -> bool {
        use secrecy::ExposeSecret as _;
        let config = &self.config;
        let secrets = config
            .providers
            .values()
            .filter_map(|p| p.credential.as_ref()?.secret.as_ref())
            .chain(config.admin.token.as_ref())
            .chain(config.audit.redaction_key.as_ref());
        let mut replaced = false;
        for secret in secrets {
            let secret = secret.expose_secret();
            // Short values would match by accident (and are not credentials anyone issues).
            if secret.len() >= 8 && text.contains(secret) {
                *text = text.replace(secret, "[redacted: a secret tollgate holds]");
                replaced = true;
            }
        }
        replaced
    }

    /// Records a refusal, trying again (twice, a moment apart) when its batch failed and the store says the
    /// record is not there: a writer that lost its connection takes a new one for the next batch. A record
    /// whose fate the store cannot tell is not sent again (it could then be there twice).
    async fn record_refusal(&self, record: DecisionRecord) -> bool {
        for attempt in 0..3 {
            match self.audit.record(record.clone()).await {
                Ok(_) => return true,
                Err(e) => {
                    tracing::warn!(error = %e, decision_id = %record.id, attempt, "refusal record not committed");
                }
            }
            match self.audit.confirm(record.id).await {
                Ok(Some(_)) => return true,
                Ok(None) if attempt < 2 => tokio::time::sleep(REFUSAL_RETRY_AFTER).await,
                Ok(None) | Err(_) => return false,
            }
        }
        false
    }

    /// The decision record, as stored: everything the agent sent passes through `redact` (the input, the
    /// raw query, the path, the reasons that may quote it).
    fn record_of(&self, draft: &Draft, outcome: &str, refusal: Option<&Refusal>) -> DecisionRecord {
        let live = self.policy.current();
        let redactor = live.bundle.redactor();
        let (rules, reasons) = match &draft.decision {
            Some(d) => (
                d.reasons.iter().map(|r| r.rule.clone()).collect(),
                serde_json::to_value(&d.reasons).unwrap_or(Value::Null),
            ),
            None => (Vec::new(), json!([])),
        };
        let reasons = match (refusal, draft.decision.is_some()) {
            // Refusals that did not come from the policy still say why, in the record's reasons.
            (Some(r), false) => {
                let rule = r
                    .rule()
                    .map_or_else(|| format!("tollgate.{}", r.code().as_str()), str::to_string);
                json!([{"rule": rule, "message": r.message()}])
            }
            _ => reasons,
        };
        let input = draft.input.as_ref().map(|input| {
            crate::audit::bounded_input(redactor.redact_input(&draft.provider, input))
        });
        let reasons = crate::audit::bounded_strings(std::borrow::Cow::Owned(redact_strings(
            redactor, reasons,
        )))
        .into_owned();
        let path = crate::audit::bounded_text(
            redactor.redact_text(&draft.path).into_owned(),
            MAX_STORED_PATH,
        );
        let query = draft.query.as_deref().map(|q| {
            let q = redactor
                .redact_query(&draft.provider, q)
                .unwrap_or_else(|| q.to_string());
            crate::audit::bounded_text(q, MAX_STORED_QUERY)
        });
        let attribution = |value: &Option<String>| {
            value
                .as_deref()
                .map(|v| redactor.redact_text(v).into_owned())
        };
        let (run_id, on_behalf_of) = (
            attribution(&draft.run.id),
            attribution(&draft.run.on_behalf_of),
        );
        // tollgate's own secrets, wherever an agent put them (a misconfigured client sending the provider
        // credential as its run id, the admin token in a query), never reach a record verbatim.
        let own = |mut text: String| {
            self.scrub_own_secrets(&mut text);
            text
        };
        let (path, query, run_id, on_behalf_of) = (
            own(path),
            query.map(own),
            run_id.map(own),
            on_behalf_of.map(own),
        );
        let input = input.map(own);
        // Pieces of them too (12 characters or more, in any spelling the answer screen reads): an agent
        // probing for a secret writes its guesses into requests, and a right guess must not be kept.
        let held = self.held.needles_with(&[]);
        let carries = |text: &str| text.len() >= 12 && held.found_in(text.as_bytes());
        let input = input.map(|text| {
            if carries(&text) {
                json!({"tollgate_redacted": PIECE_REDACTED}).to_string()
            } else {
                text
            }
        });
        // Split across fields (a path ending in one half, a query holding the other): read together.
        let together = [
            Some(draft.method.as_str()),
            Some(path.as_str()),
            query.as_deref(),
            run_id.as_deref(),
            on_behalf_of.as_deref(),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("\n");
        let split = carries(&together);
        let piece = |text: String| {
            if split || carries(&text) {
                PIECE_REDACTED.to_string()
            } else {
                text
            }
        };
        let method = if carries(&draft.method) {
            PIECE_REDACTED.to_string()
        } else {
            draft.method.clone()
        };
        let (path, query, run_id, on_behalf_of) = (
            piece(path),
            query.map(piece),
            run_id.map(piece),
            on_behalf_of.map(piece),
        );
        let mut reasons_text = reasons.to_string();
        let reasons = if self.scrub_own_secrets(&mut reasons_text) {
            serde_json::from_str(&reasons_text).unwrap_or(reasons)
        } else {
            reasons
        };
        let (reasons, reasons_text) = if carries(&reasons_text) {
            let reasons = json!([{"rule": "tollgate.redacted", "message": PIECE_REDACTED}]);
            let text = reasons.to_string();
            (reasons, text)
        } else {
            (reasons, reasons_text)
        };
        // Every record is charged to its agent's rate of stored bytes; records of requests no agent could
        // be found for share one bucket, and past its rate they keep only what identifies the refusal.
        let size = input.as_ref().map_or(0, String::len)
            + path.len()
            + query.as_ref().map_or(0, String::len)
            + reasons_text.len();
        let bucket = draft
            .agent
            .as_ref()
            .map_or(Uuid::nil(), |a| a.principal_id());
        let (path, query, reasons) = if draft.agent.is_none() && self.stored.check(bucket).is_some()
        {
            let code = refusal.map_or("refused", |r| r.code().as_str());
            (
                String::new(),
                None,
                json!([{"rule": format!("tollgate.{code}"),
                        "message": "not stored: unidentified requests are over their rate of stored bytes"}]),
            )
        } else {
            self.stored.charge(bucket, size);
            (path, query, reasons)
        };
        DecisionRecord {
            id: draft.id,
            at: draft.at,
            agent_id: draft.agent.as_ref().map(|a| a.id),
            agent_name: draft.agent.as_ref().map(|a| a.name.clone()),
            run_id,
            on_behalf_of,
            provider: draft.provider.clone(),
            method,
            path,
            query,
            action: draft
                .action
                .as_ref()
                .map(|a| a.name.to_string())
                .unwrap_or_else(|| "unknown".into()),
            risk: draft
                .action
                .as_ref()
                .map(|a| a.risk)
                .unwrap_or(Risk::Write)
                .as_str()
                .to_string(),
            outcome: outcome.to_string(),
            code: refusal.map(|r| r.code().as_str().to_string()),
            rules,
            reasons,
            policy_revision: draft.policy_revision.clone(),
            charge_cents: draft
                .decision
                .as_ref()
                .and_then(|d| d.charge.as_ref())
                .map(|c| c.cents),
            approval_id: refusal
                .and_then(|r| r.approval_id())
                .map(str::to_string)
                .or_else(|| draft.approval_id.clone()),
            policy_outcome: draft
                .decision
                .as_ref()
                .map(|d| outcome_name(d.outcome).to_string()),
            shadow_outcome: draft.shadow_outcome.clone(),
            input,
        }
    }

    /// Counts the finished request and writes its one decision log line.
    fn count(&self, draft: &Draft, outcome: &str, code: Option<&str>) {
        let action = draft
            .action
            .as_ref()
            .map(|a| &*a.name)
            .unwrap_or(crate::classify::UNKNOWN_ACTION);
        let elapsed = draft.started.elapsed();
        self.metrics
            .requests_total
            .with_label_values(&[&draft.provider, action, outcome])
            .inc();
        self.metrics
            .request_duration_seconds
            .with_label_values(&[&draft.provider, outcome])
            .observe(elapsed.as_secs_f64());
        let live = self.policy.current();
        // Agent-written texts in the log line: a piece of a held secret in them is not written.
        let held = self.held.needles_with(&[]);
        fn scrubbed<'a>(
            held: &crate::vault::screen::Needles,
            text: std::borrow::Cow<'a, str>,
        ) -> std::borrow::Cow<'a, str> {
            if text.len() >= 12 && held.found_in(text.as_bytes()) {
                std::borrow::Cow::Borrowed(PIECE_REDACTED)
            } else {
                text
            }
        }
        let run = draft
            .run
            .id
            .as_deref()
            .map_or(std::borrow::Cow::Borrowed("-"), |r| {
                scrubbed(&held, live.bundle.redactor().redact_text(r))
            });
        let method = scrubbed(&held, std::borrow::Cow::Borrowed(draft.method.as_str()));
        tracing::info!(
            target: "tollgate::decision",
            decision_id = %draft.id,
            agent = draft.agent.as_ref().map(|a| a.name.as_str()).unwrap_or("-"),
            run = %run,
            provider = %draft.provider,
            method = %method,
            action,
            outcome,
            code = code.unwrap_or("-"),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            "decision"
        );
    }
}

/// Whether decision `id` is in the sampled `share` (0 to 1) of requests: a hash of the id read as a
/// fraction (a UUIDv7's own bits are a timestamp and a counter, not uniform), so the choice is uniform and
/// needs no random source of its own.
fn sampled(id: Uuid, share: f64) -> bool {
    use std::hash::{Hash, Hasher};
    if share <= 0.0 {
        return false;
    }
    if share >= 1.0 {
        return true;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    (h.finish() as f64) < share * (u64::MAX as f64)
}

/// At most this many engine checks run at once; a sample that finds them busy is skipped (and counted).
pub const ENGINE_CHECKS_AT_ONCE: usize = 2;

impl Gate {
    /// The engine check: evaluates a sampled request's input again on regorus's interpreter, on the blocking
    /// pool, after the request has moved on (it never delays or changes the request). A decision that
    /// differs from the bytecode VM's — outcome, reasons (rule and message) or charge — is counted and
    /// logged with the decision id, so an engine disagreement seen in production can be replayed.
    fn check_engines(&self, live: Arc<Live>, input: Value, served: Decision, draft: &Draft) {
        let result = |r: &str| {
            self.metrics
                .policy_engine_checks_total
                .with_label_values(&[r])
                .inc()
        };
        let Ok(permit) = Arc::clone(&self.engine_checks).try_acquire_owned() else {
            result("skipped");
            return;
        };
        let metrics = self.metrics.clone();
        let decision_id = draft.id;
        let action = draft
            .action
            .as_ref()
            .map(|a| a.name.to_string())
            .unwrap_or_default();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let verdict = match live.bundle.evaluate_on_interpreter(&input) {
                Ok(other) if other == served => "agree",
                Ok(other) => {
                    tracing::warn!(
                        %decision_id,
                        %action,
                        revision = live.bundle.revision(),
                        vm = ?served,
                        interpreter = ?other,
                        "the policy engines disagree on this request's input (served: the VM's decision)"
                    );
                    "disagree"
                }
                Err(e) => {
                    tracing::warn!(%decision_id, %action, error = %e, "the policy engines disagree: the interpreter failed where the VM decided");
                    "disagree"
                }
            };
            metrics
                .policy_engine_checks_total
                .with_label_values(&[verdict])
                .inc();
        });
    }

    /// Hands a consumed approval back (approved again) when its request will not be forwarded after all.
    async fn give_back(&self, consumed: Option<ConsumedApproval>) {
        if let Some(c) = consumed
            && let Err(e) = self.approvals.restore(c).await
        {
            tracing::error!(error = %e, "consumed approval not restored");
        }
    }

    /// Gives back a reservation whose request will not be forwarded after all.
    ///
    /// A same-key retry's reservation carries the money of the flagged attempt it replaces
    /// (`replaces`), whose outcome is still unknown: it stays reserved, flagged for an operator.
    async fn unreserve(&self, decision_id: Uuid, replaces: Option<Uuid>) {
        let settlement = match replaces {
            None => Settlement::Release,
            Some(_) => Settlement::Unknown,
        };
        if let Err(e) = self.ledger.settle(decision_id, settlement).await {
            tracing::error!(error = %e, %decision_id, "reservation not settled; trying again in the background");
            self.settle_later(decision_id, settlement, "");
        }
    }

    /// Keeps trying a settlement that failed (`Ledger::settle_persistently`) in a task of its own.
    fn settle_later(&self, decision_id: Uuid, settlement: Settlement, provider: &str) {
        let ledger = self.ledger.clone();
        let metrics = self.metrics.clone();
        let provider = provider.to_string();
        tokio::spawn(async move {
            match ledger.settle_persistently(decision_id, settlement).await {
                Ok(Some(cents)) if !provider.is_empty() => metrics
                    .spend_committed_cents
                    .with_label_values(&[&provider])
                    .inc_by(cents as u64),
                Ok(_) => tracing::info!(%decision_id, "settled after the store came back"),
                Err(e) => {
                    tracing::error!(error = %e, %decision_id, "settlement abandoned; the reservation will be flagged for an operator")
                }
            }
        });
    }
}

/// The query parameters of a write that the provider acts on: for a provider that merges them into the
/// body (Stripe) the raw query, to be judged as part of the body; for the others none, and a parameter the
/// route does not list is refused. Reads keep their query as `request.query`.
fn write_query<'q>(
    method: &http::Method,
    action: &Action,
    query: &BTreeMap<String, Vec<String>>,
    raw: Option<&'q str>,
) -> Result<Option<&'q str>, Refusal> {
    if matches!(
        *method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    ) {
        return Ok(None);
    }
    match &action.write_query {
        WriteQuery::Merge => Ok(raw),
        WriteQuery::Only(allowed) => {
            match query.keys().find(|k| !allowed.iter().any(|a| **a == ***k)) {
                None => Ok(None),
                Some(k) => Err(Refusal::malformed(format!(
                    "tollgate: query parameter {k:?} is not taken by this route on a write ({}); the provider \
                 could act on it unjudged: send it in the body",
                    if allowed.is_empty() {
                        "it takes none".to_string()
                    } else {
                        format!("it takes {}", allowed.join(", "))
                    }
                ))),
            }
        }
    }
}

/// The request headers that change what the provider does, as they will be forwarded.
///
/// - `Content-Type`, `Stripe-Account`, `Stripe-Context` and `Stripe-Version` are judged as sent (one copy
///   each, `canon::check_headers`), listed in `lines` for the request and approval fingerprints.
/// - `Idempotency-Key` is forwarded namespaced per agent ([`forwarded_idempotency_key`]), so two agents
///   behind one tollgate never share a key at the provider; the policy, the ledger and the fingerprint see
///   the forwarded key, and the agent sees its own key back in the response.
struct JudgedHeaders {
    lines: String,
    /// `Stripe-Account|Stripe-Context` as sent, empty when neither is: the scope of an idempotency key and
    /// the subject of an `account-provider-month` budget.
    account: String,
    agent_key: Option<HeaderValue>,
    forwarded_key: Option<HeaderValue>,
}

/// Headers that change what the provider does with a request, in the order they are fingerprinted.
const JUDGED_HEADERS: [&str; 4] = [
    "content-type",
    "stripe-account",
    "stripe-context",
    "stripe-version",
];
/// Stripe accepts idempotency keys of up to 255 characters.
const IDEMPOTENCY_KEY_MAX: usize = 255;

impl JudgedHeaders {
    fn of(headers: &HeaderMap, agent: Uuid) -> Result<JudgedHeaders, Refusal> {
        let mut lines = String::new();
        for name in JUDGED_HEADERS {
            if let Some(value) = headers.get(name) {
                let Ok(text) = value.to_str() else {
                    return Err(Refusal::malformed(format!(
                        "tollgate: the {name} header must be visible ASCII"
                    )));
                };
                lines.push_str(name);
                lines.push_str(": ");
                lines.push_str(text.trim());
                lines.push('\n');
            }
        }
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .unwrap_or_default()
        };
        let (sa, sc) = (text("stripe-account"), text("stripe-context"));
        let account = if sa.is_empty() && sc.is_empty() {
            String::new()
        } else {
            format!("{sa}|{sc}")
        };
        let agent_key = headers.get("idempotency-key").cloned();
        let forwarded_key = match &agent_key {
            None => None,
            Some(value) => {
                let key = value.to_str().ok().filter(|k| {
                    !k.is_empty()
                        && k.len() <= IDEMPOTENCY_KEY_MAX
                        && k.bytes().all(|b| b.is_ascii_graphic())
                });
                let Some(key) = key else {
                    return Err(Refusal::malformed(format!(
                        "tollgate: Idempotency-Key must be 1-{IDEMPOTENCY_KEY_MAX} visible ASCII characters"
                    )));
                };
                HeaderValue::from_str(&forwarded_idempotency_key(agent, key)).ok()
            }
        };
        Ok(JudgedHeaders {
            lines,
            account,
            agent_key,
            forwarded_key,
        })
    }

    /// The request headers the policy may see (see [`policy_headers`]), with the key as forwarded.
    fn policy_headers(&self, headers: &HeaderMap) -> BTreeMap<String, String> {
        let mut out = policy_headers(headers);
        if let Some(key) = self.forwarded_key.as_ref().and_then(|k| k.to_str().ok()) {
            out.insert("idempotency-key".to_string(), key.to_string());
        }
        out
    }

    /// The agent's headers with the namespaced key in place of its own (`forward` does the rest of the
    /// header hygiene).
    fn forwarded<'h>(&self, headers: &'h HeaderMap) -> std::borrow::Cow<'h, HeaderMap> {
        match &self.forwarded_key {
            None => std::borrow::Cow::Borrowed(headers),
            Some(key) => {
                let mut copy = headers.clone();
                copy.insert("idempotency-key", key.clone());
                std::borrow::Cow::Owned(copy)
            }
        }
    }

    /// The provider may echo the key: the agent gets back the one it sent.
    fn restore_key(&self, headers: &mut HeaderMap) {
        if let Some(agent_key) = &self.agent_key
            && headers.contains_key("idempotency-key")
        {
            headers.insert("idempotency-key", agent_key.clone());
        }
    }
}

/// The `Idempotency-Key` forwarded for an agent's key: `tollgate-` followed by the lower-case hex SHA-256
/// of `"tollgate idempotency-key v1"`, the agent's id and the agent's key, each length-prefixed (8 bytes,
/// big-endian). Stable (a retry of the same call gets the same key) and distinct per agent, so keys of two
/// agents can never collide at the provider, where keys belong to the whole account.
pub fn forwarded_idempotency_key(agent: Uuid, key: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let agent = agent.to_string();
    for part in ["tollgate idempotency-key v1", agent.as_str(), key] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    format!("tollgate-{}", hex::encode(h.finalize()))
}

/// `Tollgate-Approval: <id>`, if present; a value that is not an approval id is refused.
fn approval_header(headers: &HeaderMap) -> Result<Option<Uuid>, Refusal> {
    match headers.get("tollgate-approval") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<Uuid>().ok())
            .map(Some)
            .ok_or_else(|| {
                Refusal::new(
                    RefusalCode::ApprovalInvalid,
                    "tollgate: Tollgate-Approval is not an approval id",
                )
            }),
    }
}

fn approval_required(decision: &Decision, approval_id: &str, status: &str) -> Refusal {
    let why = decision
        .reasons
        .iter()
        .map(|r| format!("{}: {}", r.rule, r.message))
        .collect::<Vec<_>>()
        .join("; ");
    let (next, status) = if status == "approved" {
        (
            format!(
                "approval {approval_id} is already approved: retry this exact request with header Tollgate-Approval: {approval_id}"
            ),
            "approved",
        )
    } else {
        (
            format!(
                "ask a reviewer to approve {approval_id} (POST /api/approvals/{approval_id}/approve on the admin API, or \
                 `tollgate approvals approve {approval_id}`), then retry this exact request with header Tollgate-Approval: {approval_id}"
            ),
            "pending",
        )
    };
    let refusal = Refusal::new(
        RefusalCode::ApprovalRequired,
        format!("tollgate: this request needs human approval ({why}); {next}"),
    )
    .with_approval(approval_id)
    .with_approval_status(status);
    match decision.reasons.first() {
        Some(r) => refusal.with_rule(r.rule.clone()),
        None => refusal,
    }
}

/// Integer cents as dollars for messages (`1044` → `$10.44`).
fn dollars(cents: i64) -> String {
    format!("${}.{:02}", cents / 100, (cents % 100).abs())
}

fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Allow => "allow",
        Outcome::Deny => "deny",
        Outcome::Approve => "approve",
    }
}

fn outcome_label<'a>(outcome: &'a str, refusal: &'a Refusal) -> &'a str {
    match outcome {
        "refused" => refusal.code().as_str(),
        other => other,
    }
}

fn denial(decision: &Decision) -> Refusal {
    let first = decision.reasons.first();
    let message = decision
        .reasons
        .iter()
        .map(|r| format!("{}: {}", r.rule, r.message))
        .collect::<Vec<_>>()
        .join("; ");
    let refusal = Refusal::new(
        RefusalCode::PolicyDenied,
        format!("tollgate: denied by policy ({message})"),
    );
    match first {
        Some(r) => refusal.with_rule(r.rule.clone()),
        None => refusal,
    }
}

/// `/cloudflare/client/v4/zones` → ("cloudflare", "/client/v4/zones").
fn split_provider(path: &str) -> (&str, &str) {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    match trimmed.find('/') {
        Some(i) => (&trimmed[..i], &trimmed[i..]),
        None => (trimmed, ""),
    }
}

/// An optional attribution header: printable, at most `ATTRIBUTION_MAX` bytes.
fn attribution(headers: &HeaderMap, name: &str) -> Result<Option<String>, Refusal> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Refusal::malformed(format!(
            "tollgate: {name} appears more than once"
        )));
    }
    match value.to_str() {
        Ok(v) if !v.is_empty() && v.len() <= ATTRIBUTION_MAX => Ok(Some(v.to_string())),
        _ => Err(Refusal::malformed(format!(
            "tollgate: {name} must be 1-{ATTRIBUTION_MAX} visible ASCII characters"
        ))),
    }
}

/// The request headers the policy may see: lower-case names, secrets and `Tollgate-*` left out, repeated
/// headers joined with ", ".
fn policy_headers(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let n = name.as_str();
        if SECRET_HEADERS.contains(&n) || n.starts_with("tollgate-") {
            continue;
        }
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        out.entry(n.to_string())
            .and_modify(|e| {
                e.push_str(", ");
                e.push_str(&v);
            })
            .or_insert(v);
    }
    out
}

/// The most of a raw query stored verbatim (it is also in the stored input, bounded there).
const MAX_STORED_QUERY: usize = 4096;
/// The longest path a record stores verbatim (canonical paths are at most 4096 bytes; a refused one may be
/// anything).
const MAX_STORED_PATH: usize = 2048;

/// Every string in a JSON value (reason messages that may quote what the agent sent) through the detectors.
fn redact_strings(redactor: &crate::redact::Redactor, mut value: Value) -> Value {
    fn walk(redactor: &crate::redact::Redactor, v: &mut Value) {
        match v {
            Value::String(text) => {
                if let std::borrow::Cow::Owned(clean) = redactor.redact_text(text) {
                    *text = clean;
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|i| walk(redactor, i)),
            Value::Object(map) => map.values_mut().for_each(|i| walk(redactor, i)),
            _ => {}
        }
    }
    walk(redactor, &mut value);
    value
}

pub fn insert_decision_header(headers: &mut HeaderMap, id: Uuid) {
    if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
        headers.insert(crate::DECISION_HEADER, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_check_samples_the_share_asked_for() {
        let ids: Vec<Uuid> = (0..20_000).map(|_| Uuid::now_v7()).collect();
        let count = |share: f64| ids.iter().filter(|id| sampled(**id, share)).count();
        assert_eq!(count(0.0), 0);
        assert_eq!(count(1.0), ids.len());
        // 1 % of 20,000 is 200; a uniform sample stays well within ±50 % of it.
        let one_percent = count(0.01);
        assert!((100..=300).contains(&one_percent), "{one_percent}");
        let half = count(0.5);
        assert!((9_000..=11_000).contains(&half), "{half}");
    }

    #[test]
    fn provider_split() {
        assert_eq!(
            split_provider("/cloudflare/client/v4/zones"),
            ("cloudflare", "/client/v4/zones")
        );
        assert_eq!(split_provider("/stripe"), ("stripe", ""));
        assert_eq!(split_provider("/"), ("", ""));
    }

    #[test]
    fn secret_headers_never_reach_the_policy() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer tg_x"));
        h.insert("x-auth-key", HeaderValue::from_static("k"));
        h.insert("tollgate-run", HeaderValue::from_static("r"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        let p = policy_headers(&h);
        assert_eq!(p.keys().collect::<Vec<_>>(), vec!["content-type"]);
    }
}
