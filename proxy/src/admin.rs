//! The admin listener: health, readiness, metrics, and the JSON API operators and reviewers use.
//!
//! Owns: `/healthz`, `/readyz`, `/metrics` (unauthenticated, for probes and scrapers) and `/api/*` behind the
//! admin bearer token (compared in constant time; without a configured token every `/api` call is refused).
//! Must not: serve agent traffic. It runs on its own listener so that no agent request can reach it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::approvals::Approvals;
use crate::config::Config;
use crate::identity::{self, NewAgent};
use crate::metrics::Metrics;
use crate::policy::PolicyHandle;
use crate::store::{ApprovalRow, DecisionFilter, DecisionRow, OutcomeRow, Store, StoreError};

/// How often the store's reachability is checked for `/readyz` and `tollgate_store_up`.
const STORE_PROBE_EVERY: Duration = Duration::from_secs(2);
const MAX_PAGE: i64 = 500;

pub struct Admin {
    pub config: Arc<Config>,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub policy: Arc<PolicyHandle>,
    pub frozen: Arc<AtomicBool>,
    pub draining: Arc<AtomicBool>,
    pub approvals: Approvals,
    /// Whether any decision writer can commit: none means no decision can be recorded.
    pub writers: crate::audit::WritersReady,
}

pub fn router(admin: Arc<Admin>) -> Router {
    let api = Router::new()
        .route("/api/decisions", get(list_decisions))
        .route("/api/decisions/{id}", get(get_decision))
        .route("/api/agents", get(list_agents).post(create_agent))
        .route("/api/agents/{name}/revoke", post(revoke_agent))
        .route("/api/approvals", get(list_approvals))
        .route("/api/approvals/{id}", get(get_approval))
        .route("/api/approvals/{id}/approve", post(approve))
        .route("/api/approvals/{id}/deny", post(deny))
        .route("/api/spend", get(spend))
        .route("/api/spend/flagged", get(flagged_reservations))
        .route(
            "/api/spend/reservations/{id}/settle",
            post(settle_reservation),
        )
        .route("/api/policy", get(policy_status))
        .route("/api/policy/reload", post(reload_policy))
        .route("/api/freeze", post(freeze).delete(unfreeze))
        .layer(middleware::from_fn_with_state(
            admin.clone(),
            require_admin_token,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(api)
        .with_state(admin)
}

/// Keeps `tollgate_store_up` current.
pub fn spawn_store_probe(admin: Arc<Admin>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let up = admin.store.ping().await;
            admin.metrics.store_up.set(i64::from(up));
            if let Ok((n, oldest)) = admin.store.pending_approvals().await {
                admin.metrics.approvals_pending.set(n);
                let age = oldest
                    .map(|t| (Utc::now() - t).num_seconds().max(0))
                    .unwrap_or(0);
                admin.metrics.approvals_oldest_pending_seconds.set(age);
            }
            if let Ok(usage) = admin
                .store
                .budget_usage(&crate::ledger::period(Utc::now()))
                .await
            {
                for (provider, ratio) in usage {
                    if admin.config.providers.contains_key(&provider) {
                        admin
                            .metrics
                            .budget_usage_ratio
                            .with_label_values(&[&provider])
                            .set(ratio);
                    }
                }
            }
            tokio::time::sleep(STORE_PROBE_EVERY).await;
        }
    })
}

async fn require_admin_token(
    State(admin): State<Arc<Admin>>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let ok = match (&admin.config.admin.token, presented) {
        (Some(token), Some(p)) => constant_time_eq(token.expose_secret().as_bytes(), p.as_bytes()),
        _ => false,
    };
    if !ok {
        return api_error(
            StatusCode::UNAUTHORIZED,
            "admin_unauthenticated",
            "a valid admin bearer token is required",
        );
    }
    next.run(request).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn api_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

fn store_error(e: StoreError) -> Response {
    match e {
        StoreError::Conflict(what) => api_error(
            StatusCode::CONFLICT,
            "conflict",
            &format!("{what} already exists"),
        ),
        other => {
            tracing::error!(error = %other, "admin store call failed");
            api_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the store is unavailable",
            )
        }
    }
}

async fn readyz(State(admin): State<Arc<Admin>>) -> Response {
    let store = admin.store.ping().await;
    let writers = admin.writers.any();
    let draining = admin.draining.load(Ordering::Acquire);
    let bundle = admin.policy.current();
    let body = json!({
        "store": store,
        "audit_writers": writers,
        "policy_revision": bundle.bundle.revision(),
        "draining": draining,
    });
    let status = if store && writers && !draining {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics(State(admin): State<Arc<Admin>>) -> Response {
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        admin.metrics.render(),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct DecisionQuery {
    agent: Option<String>,
    action: Option<String>,
    outcome: Option<String>,
    since: Option<DateTime<Utc>>,
    limit: Option<i64>,
    cursor: Option<String>,
}

async fn list_decisions(
    State(admin): State<Arc<Admin>>,
    Query(q): Query<DecisionQuery>,
) -> Response {
    let before = match q.cursor.as_deref().map(parse_cursor) {
        Some(Some(c)) => Some(c),
        Some(None) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "bad_cursor",
                "cursor is not one this API issued",
            );
        }
        None => None,
    };
    let limit = q.limit.unwrap_or(50).clamp(1, MAX_PAGE);
    let filter = DecisionFilter {
        agent: q.agent,
        action: q.action,
        outcome: q.outcome,
        since: q.since,
        before,
        limit,
    };
    match admin.store.list_decisions(&filter).await {
        Ok(rows) => {
            let next = if rows.len() as i64 == limit {
                rows.last()
                    .map(|(d, _)| format!("{}_{}", d.at.timestamp_micros(), d.id))
            } else {
                None
            };
            let items: Vec<Value> = rows
                .iter()
                .map(|(d, o)| decision_json(d, o.as_ref(), false))
                .collect();
            Json(json!({"decisions": items, "next_cursor": next})).into_response()
        }
        Err(e) => store_error(e),
    }
}

fn parse_cursor(c: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let (micros, id) = c.split_once('_')?;
    Some((
        DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        id.parse().ok()?,
    ))
}

async fn get_decision(State(admin): State<Arc<Admin>>, Path(id): Path<Uuid>) -> Response {
    match admin.store.decision(id).await {
        Ok(Some((d, o))) => Json(decision_json(&d, o.as_ref(), true)).into_response(),
        Ok(None) => api_error(StatusCode::NOT_FOUND, "not_found", "no such decision"),
        Err(e) => store_error(e),
    }
}

/// The API shape of a decision record; `full` adds the policy input and chain fields.
pub fn decision_json(d: &DecisionRow, o: Option<&OutcomeRow>, full: bool) -> Value {
    let mut v = json!({
        "id": d.id, "at": d.at, "agent": d.agent_name, "agent_id": d.agent_id, "run_id": d.run_id,
        "on_behalf_of": d.on_behalf_of, "provider": d.provider, "method": d.method, "path": d.path,
        "query": d.query, "action": d.action, "risk": d.risk, "outcome": d.outcome, "code": d.code,
        "rules": parsed(&d.rules), "reasons": parsed(&d.reasons), "policy_revision": d.policy_revision,
        "charge_cents": d.charge_cents, "approval_id": d.approval_id,
        "upstream": o.map(|o| json!({"status": o.upstream_status, "latency_us": o.latency_us, "error": o.error, "flagged": o.flagged, "at": o.at})),
    });
    if full {
        v["input"] = d.input.as_deref().map(parsed).unwrap_or(Value::Null);
        v["chain"] = json!({"writer_id": d.writer_id, "seq": d.seq, "prev_hash": d.prev_hash, "hash": d.hash});
    }
    v
}

/// A stored JSON text as a value (it was valid JSON when written; `null` if not).
fn parsed(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

async fn list_agents(State(admin): State<Arc<Admin>>) -> Response {
    match admin.store.list_agents().await {
        Ok(rows) => {
            let items: Vec<Value> = rows.iter().map(agent_json).collect();
            Json(json!({"agents": items})).into_response()
        }
        Err(e) => store_error(e),
    }
}

pub fn agent_json(a: &crate::store::AgentRow) -> Value {
    json!({
        "id": a.id, "name": a.name, "team": a.team, "scopes": a.scopes, "labels": a.labels,
        "key_prefix": a.key_prefix, "status": a.status, "created_at": a.created_at,
        "expires_at": a.expires_at, "revoked_at": a.revoked_at,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateAgent {
    name: String,
    team: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// RFC 3339 or a duration like `30d`.
    expires: Option<String>,
}

async fn create_agent(State(admin): State<Arc<Admin>>, Json(body): Json<CreateAgent>) -> Response {
    let expires_at = match body
        .expires
        .as_deref()
        .map(|e| identity::parse_expiry(e, Utc::now()))
    {
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => return api_error(StatusCode::BAD_REQUEST, "invalid", &e),
        None => None,
    };
    let new = NewAgent {
        name: body.name,
        team: body.team,
        scopes: body.scopes,
        labels: body.labels,
        expires_at,
    };
    match identity::create_agent(&admin.store, new).await {
        Ok((row, key)) => {
            audit_action(
                &admin,
                "admin",
                "agent.create",
                Some(&row.name),
                json!({"scopes": row.scopes, "team": row.team}),
            )
            .await;
            let mut v = agent_json(&row);
            // The only time the key is ever returned.
            v["key"] = Value::String(key.expose().to_string());
            (StatusCode::CREATED, Json(v)).into_response()
        }
        Err(identity::CreateAgentError::Invalid(m)) => {
            api_error(StatusCode::BAD_REQUEST, "invalid", &m)
        }
        Err(identity::CreateAgentError::Store(e)) => store_error(e),
    }
}

async fn revoke_agent(State(admin): State<Arc<Admin>>, Path(name): Path<String>) -> Response {
    match admin.store.revoke_agent(&name).await {
        Ok(true) => {
            audit_action(&admin, "admin", "agent.revoke", Some(&name), json!({})).await;
            Json(json!({"name": name, "status": "revoked"})).into_response()
        }
        Ok(false) => api_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no active agent with that name",
        ),
        Err(e) => store_error(e),
    }
}

async fn policy_status(State(admin): State<Arc<Admin>>) -> Response {
    Json(policy_json(&admin)).into_response()
}

fn policy_json(admin: &Admin) -> Value {
    let live = admin.policy.current();
    let b = &live.bundle;
    let status = admin.policy.status();
    json!({
        "revision": b.revision(),
        "loaded_at": b.loaded_at(),
        "dir": b.dir().display().to_string(),
        "engine": if b.uses_bytecode() { "rvm" } else { "interpreter" },
        "shadow": live.shadow.as_ref().map(|s| json!({"revision": s.revision(), "dir": s.dir().display().to_string()})),
        "last_reload_attempt": status.last_attempt,
        "last_error": status.last_error,
        "reloads_ok": status.reloads_ok,
        "reloads_failed": status.reloads_failed,
    })
}

/// Reloads now; 200 with the new status, or 422 with the error (the old bundle stays live).
async fn reload_policy(State(admin): State<Arc<Admin>>) -> Response {
    let result = crate::app::reload_policy(&admin.policy, &admin.metrics, "admin API").await;
    audit_action(
        &admin,
        "admin-api",
        "policy.reload",
        None,
        json!({"ok": result.is_ok()}),
    )
    .await;
    let status = if result.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    (status, Json(policy_json(&admin))).into_response()
}

async fn freeze(State(admin): State<Arc<Admin>>) -> Response {
    set_frozen(&admin, true).await
}

async fn unfreeze(State(admin): State<Arc<Admin>>) -> Response {
    set_frozen(&admin, false).await
}

/// Freezing is stored, so every replica picks it up with its next control poll; this replica applies it now.
async fn set_frozen(admin: &Admin, frozen: bool) -> Response {
    if let Err(e) = admin.store.set_frozen(frozen, "admin-api").await {
        return store_error(e);
    }
    audit_action(
        admin,
        "admin-api",
        if frozen { "freeze" } else { "unfreeze" },
        None,
        json!({}),
    )
    .await;
    admin.frozen.store(frozen, Ordering::Release);
    admin.metrics.frozen.set(i64::from(frozen));
    tracing::warn!(frozen, "agent traffic freeze changed by an operator");
    Json(json!({"frozen": frozen})).into_response()
}

/// Keeps this replica's frozen flag in step with the store.
pub fn spawn_control_poll(admin: Arc<Admin>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Ok(frozen) = admin.store.frozen().await {
                admin.frozen.store(frozen, Ordering::Release);
                admin.metrics.frozen.set(i64::from(frozen));
            }
        }
    })
}

/// Records a state-changing admin call; a failure is logged, not fatal (the change itself already happened).
async fn audit_action(
    admin: &Admin,
    actor: &str,
    action: &str,
    target: Option<&str>,
    detail: Value,
) {
    if let Err(e) = admin
        .store
        .record_admin_action(actor, action, target, &detail)
        .await
    {
        tracing::error!(error = %e, action, "admin action not recorded");
    }
}

#[derive(Debug, Deserialize)]
struct ApprovalQuery {
    status: Option<String>,
    limit: Option<i64>,
}

async fn list_approvals(
    State(admin): State<Arc<Admin>>,
    Query(q): Query<ApprovalQuery>,
) -> Response {
    match admin
        .store
        .list_approvals(
            q.status.as_deref(),
            q.limit.unwrap_or(100).clamp(1, MAX_PAGE),
        )
        .await
    {
        Ok(rows) => Json(json!({"approvals": rows.iter().map(approval_json).collect::<Vec<_>>()}))
            .into_response(),
        Err(e) => store_error(e),
    }
}

async fn get_approval(State(admin): State<Arc<Admin>>, Path(id): Path<Uuid>) -> Response {
    match admin.store.approval(id).await {
        Ok(Some(a)) => Json(approval_json(&a)).into_response(),
        Ok(None) => api_error(StatusCode::NOT_FOUND, "not_found", "no such approval"),
        Err(e) => store_error(e),
    }
}

/// The API shape of an approval: what exactly was asked, why, and who decided.
pub fn approval_json(a: &ApprovalRow) -> Value {
    let status =
        if matches!(a.status.as_str(), "pending" | "approved") && a.expires_at <= Utc::now() {
            "expired"
        } else {
            a.status.as_str()
        };
    json!({
        "id": a.id, "status": status, "agent": a.agent_name, "agent_id": a.agent_id, "provider": a.provider,
        "method": a.method, "path": a.path, "query": a.query, "headers": a.headers,
        "body_sha256": a.body_sha256, "action": a.action,
        "reasons": a.reasons, "charge_cents": a.charge_cents, "created_at": a.created_at,
        "expires_at": a.expires_at, "requested_by_decision": a.requested_by_decision,
        "decided_by": a.decided_by, "decided_at": a.decided_at, "note": a.note,
        "consumed_at": a.consumed_at, "consumed_by_decision": a.consumed_by_decision,
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Verdict {
    note: Option<String>,
    /// The reviewer; the admin token names no person, so the caller says who they are.
    by: Option<String>,
}

async fn approve(
    State(admin): State<Arc<Admin>>,
    Path(id): Path<Uuid>,
    body: Option<Json<Verdict>>,
) -> Response {
    decide(admin, id, true, body.map(|b| b.0).unwrap_or_default()).await
}

async fn deny(
    State(admin): State<Arc<Admin>>,
    Path(id): Path<Uuid>,
    body: Option<Json<Verdict>>,
) -> Response {
    decide(admin, id, false, body.map(|b| b.0).unwrap_or_default()).await
}

async fn decide(admin: Arc<Admin>, id: Uuid, approve: bool, verdict: Verdict) -> Response {
    let by = verdict.by.unwrap_or_else(|| "admin-api".to_string());
    match admin
        .approvals
        .decide(id, approve, &by, verdict.note.as_deref())
        .await
    {
        Ok(Some(a)) => {
            let action = if approve {
                "approval.approve"
            } else {
                "approval.deny"
            };
            audit_action(
                &admin,
                &by,
                action,
                Some(&id.to_string()),
                json!({"note": a.note}),
            )
            .await;
            admin
                .metrics
                .approvals_total
                .with_label_values(&[if approve { "approved" } else { "denied" }])
                .inc();
            Json(approval_json(&a)).into_response()
        }
        Ok(None) => match admin.store.approval(id).await {
            Ok(Some(a)) => api_error(
                StatusCode::CONFLICT,
                "not_pending",
                &format!(
                    "approval is {}, not pending",
                    approval_json(&a)["status"].as_str().unwrap_or("closed")
                ),
            ),
            Ok(None) => api_error(StatusCode::NOT_FOUND, "not_found", "no such approval"),
            Err(e) => store_error(e),
        },
        Err(e) => store_error(e),
    }
}

async fn flagged_reservations(State(admin): State<Arc<Admin>>) -> Response {
    match admin.store.flagged_reservations().await {
        Ok(rows) => Json(json!({"reservations": rows})).into_response(),
        Err(e) => store_error(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettleRequest {
    /// `committed` (the provider acted) or `released` (it did not).
    outcome: String,
    /// What the operator checked; required, it is the record of why.
    note: String,
    /// Who settles; the admin token names no person, so the caller says who they are.
    by: String,
}

/// An operator settles a flagged reservation; who and why are kept on it and in `admin_actions`.
async fn settle_reservation(
    State(admin): State<Arc<Admin>>,
    Path(id): Path<Uuid>,
    body: Option<Json<SettleRequest>>,
) -> Response {
    let Some(Json(request)) = body else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the body must be {\"outcome\": \"committed\"|\"released\", \"note\": \"…\", \"by\": \"…\"}",
        );
    };
    let how = match request.outcome.as_str() {
        "committed" => crate::store::ManualSettlement::Committed,
        "released" => crate::store::ManualSettlement::Released,
        _ => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "outcome must be committed or released",
            );
        }
    };
    if request.note.trim().is_empty() || request.by.trim().is_empty() {
        return api_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "note and by are required: a settlement records who decided and why",
        );
    }
    match admin
        .store
        .settle_flagged(id, how, request.by.trim(), request.note.trim())
        .await
    {
        Ok(Some(cents)) => Json(
            json!({"decision_id": id, "outcome": request.outcome, "cents": cents,
            "by": request.by.trim(), "note": request.note.trim()}),
        )
        .into_response(),
        Ok(None) => api_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no flagged reservation still open for this decision",
        ),
        Err(e) => store_error(e),
    }
}

#[derive(Debug, Deserialize)]
struct SpendQuery {
    period: Option<String>,
}

async fn spend(State(admin): State<Arc<Admin>>, Query(q): Query<SpendQuery>) -> Response {
    let period = q
        .period
        .unwrap_or_else(|| crate::ledger::period(Utc::now()));
    match admin.store.spend(&period).await {
        Ok(rows) => Json(json!({"period": period, "windows": rows})).into_response(),
        Err(e) => store_error(e),
    }
}
