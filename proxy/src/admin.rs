//! The admin listener: health, readiness, metrics, and the JSON API operators and reviewers use.
//!
//! Owns: `/healthz`, `/readyz`, `/metrics` (unauthenticated, for probes and scrapers) and `/api/*`, each
//! endpoint guarded by the least reviewer role that may call it. [`api`] is the one table of endpoints, their
//! roles and handlers; the router mounts nothing else under `/api`, so no endpoint can be added without a
//! role. A call authenticates with a reviewer token (`tgr_…`, looked up in the store on every call, so a
//! revocation holds on every replica at once) or the bootstrap `TOLLGATE_ADMIN_TOKEN` (an admin named
//! `bootstrap-admin`); missing or wrong → 401, a role below the endpoint's → 403. What a state-changing call
//! records as its actor is the authenticated reviewer, never a name from the request body.
//! Must not: serve agent traffic. It runs on its own listener so that no agent request can reach it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::approvals::Approvals;
use crate::config::Config;
use crate::identity::{self, NewAgent};
use crate::metrics::Metrics;
use crate::policy::PolicyHandle;
use crate::reviewers::{self, Authenticated, Reviewer, Role};
use crate::store::{
    ApprovalRow, DecisionFilter, DecisionRow, OutcomeRow, ReviewerRow, Store, StoreError,
};

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
    /// tollgate's own provider client, for containment's token deletions.
    pub forwarder: Arc<crate::forward::Forwarder>,
    /// The secrets a provider's message in a containment report is screened for.
    pub held: Arc<crate::vault::held::HeldSecrets>,
}

/// One admin API endpoint: method, path (axum syntax) and the least role that may call it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub method: &'static str,
    pub path: &'static str,
    pub role: Role,
}

/// Every `/api` endpoint with its role and handler: the only place endpoints are declared. Reads are for
/// viewers; approve/deny for approvers; freeze, reload, revoking agents and settling reservations for
/// operators; creating agents and managing reviewers for admins.
fn api() -> Vec<(Endpoint, MethodRouter<Arc<Admin>>)> {
    use Role::{Admin as A, Approver as Ap, Operator as O, Viewer as V};
    let e = |method, path, role| Endpoint { method, path, role };
    vec![
        (e("GET", "/api/whoami", V), get(whoami)),
        (e("GET", "/api/decisions", V), get(list_decisions)),
        (e("GET", "/api/decisions/{id}", V), get(get_decision)),
        (e("GET", "/api/agents", V), get(list_agents)),
        (e("POST", "/api/agents", A), post(create_agent)),
        (
            e("POST", "/api/agents/{name}/revoke", O),
            post(revoke_agent),
        ),
        (e("GET", "/api/approvals", V), get(list_approvals)),
        (e("GET", "/api/approvals/{id}", V), get(get_approval)),
        (e("POST", "/api/approvals/{id}/approve", Ap), post(approve)),
        (e("POST", "/api/approvals/{id}/deny", Ap), post(deny)),
        (e("GET", "/api/spend", V), get(spend)),
        (e("GET", "/api/spend/flagged", V), get(flagged_reservations)),
        (
            e("POST", "/api/spend/reservations/{id}/settle", O),
            post(settle_reservation),
        ),
        (e("GET", "/api/policy", V), get(policy_status)),
        (e("POST", "/api/policy/reload", O), post(reload_policy)),
        (e("GET", "/api/freeze", V), get(freeze_status)),
        (e("GET", "/api/notifications", V), get(list_notifications)),
        (
            e("GET", "/api/incidents/{agent}/report", V),
            get(crate::incident::api::report_endpoint),
        ),
        (
            e("GET", "/api/incidents/{agent}/rollback-plan", O),
            get(crate::incident::api::rollback_plan_endpoint),
        ),
        (e("POST", "/api/freeze", O), post(freeze)),
        (e("DELETE", "/api/freeze", O), delete(unfreeze)),
        (
            e("POST", "/api/incidents/{agent}/contain", O),
            post(contain_agent),
        ),
        (e("GET", "/api/reviewers", A), get(list_reviewers)),
        (e("POST", "/api/reviewers", A), post(create_reviewer)),
        (
            e("POST", "/api/reviewers/{name}/revoke", A),
            post(revoke_reviewer),
        ),
        (
            e("POST", "/api/reviewers/{name}/rotate", A),
            post(rotate_reviewer),
        ),
    ]
}

/// The endpoints and their roles (for tests, docs and the console).
pub fn endpoints() -> Vec<Endpoint> {
    api().into_iter().map(|(e, _)| e).collect()
}

pub fn router(admin: Arc<Admin>) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    for (endpoint, handler) in api() {
        // `route_layer`: the guard wraps exactly this method's handler; routes with the same path merge.
        let guarded = handler.route_layer(middleware::from_fn_with_state(
            (admin.clone(), endpoint),
            require_role,
        ));
        router = router.route(endpoint.path, guarded);
    }
    if admin.config.console.enabled {
        router = router.merge(crate::console::router(admin.clone()));
    }
    router.with_state(admin)
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
            if let Ok(live) = admin.store.minted_tokens_live(Utc::now()).await {
                for provider in admin.config.providers.keys() {
                    for custody in ["vault", "pass_through"] {
                        let n = live
                            .iter()
                            .find(|(p, c, _)| p == provider && c == custody)
                            .map_or(0, |(_, _, n)| *n);
                        admin
                            .metrics
                            .minted_tokens_live
                            .with_label_values(&[provider, custody])
                            .set(n);
                    }
                }
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

/// Authenticates the caller (reviewer token or bootstrap token) and checks the endpoint's role; the
/// authenticated [`Reviewer`] goes to the handler as an extension (a handler that needs it and runs without
/// this guard fails its extraction: closed, not open).
async fn require_role(
    State((admin, endpoint)): State<(Arc<Admin>, Endpoint)>,
    mut request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .filter(|p| !p.is_empty());
    let unauthenticated = || {
        let mut response = api_error(
            StatusCode::UNAUTHORIZED,
            "admin_unauthenticated",
            "a valid reviewer token (or the bootstrap admin token) is required as a Bearer token",
        );
        response.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer realm=\"tollgate-admin\""),
        );
        response
    };
    // Single sign-on: without a bearer token, the identity header of a trusted authenticating proxy (by
    // the connection's peer address; the header from anyone else is ignored).
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let from_proxy = peer.is_some_and(|ip| admin.config.admin.trusted_proxies.contains(&ip));
    let mut identities = request
        .headers()
        .get_all(&admin.config.admin.identity_header)
        .iter();
    let (first, second) = (identities.next(), identities.next());
    // Two identity headers: the proxy appended its own to one the client sent. Neither can be believed.
    if from_proxy && presented.is_none() && second.is_some() {
        tracing::warn!("admin call refused: more than one identity header from the trusted proxy");
        return unauthenticated();
    }
    let vouched: Option<String> = first
        .filter(|_| from_proxy)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let found = match (presented, vouched) {
        (Some(p), _) => {
            reviewers::authenticate(&admin.store, admin.config.admin.token.as_ref(), p).await
        }
        (None, Some(email)) => reviewers::authenticate_email(&admin.store, &email).await,
        (None, None) => return unauthenticated(),
    };
    let reviewer = match found {
        Ok(Authenticated::Reviewer(r)) => r,
        Ok(Authenticated::Unknown) => return unauthenticated(),
        Err(e) => return store_error(e),
    };
    if !reviewer.role.allows(endpoint.role) {
        tracing::warn!(reviewer = %reviewer.name, role = %reviewer.role, method = endpoint.method,
            path = endpoint.path, "admin call refused: role too low");
        return api_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            &format!(
                "{} {} needs the {} role; reviewer '{}' has the {} role",
                endpoint.method, endpoint.path, endpoint.role, reviewer.name, reviewer.role
            ),
        );
    }
    request.extensions_mut().insert(reviewer);
    next.run(request).await
}

/// Who the caller is, as the admin API authenticated them.
async fn whoami(Extension(me): Extension<Reviewer>) -> Response {
    Json(
        json!({"name": me.name, "email": me.email, "role": me.role.as_str(),
        "bootstrap": me.name == reviewers::BOOTSTRAP_ADMIN}),
    )
    .into_response()
}

pub(crate) fn api_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

pub(crate) fn store_error(e: StoreError) -> Response {
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
#[serde(deny_unknown_fields)]
struct DecisionQuery {
    agent: Option<String>,
    action: Option<String>,
    outcome: Option<String>,
    provider: Option<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
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
        provider: q.provider,
        since: q.since,
        until: q.until,
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

pub(crate) fn parse_cursor(c: &str) -> Option<(DateTime<Utc>, Uuid)> {
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

async fn create_agent(
    State(admin): State<Arc<Admin>>,
    Extension(me): Extension<Reviewer>,
    Json(body): Json<CreateAgent>,
) -> Response {
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
        created_by: Some(me.name.clone()),
    };
    match identity::create_agent(&admin.store, new).await {
        Ok((row, key)) => {
            audit_action(
                &admin,
                &me.name,
                "agent.create",
                Some(&row.name),
                json!({"scopes": row.scopes, "team": row.team, "labels": row.labels,
                    "expires_at": row.expires_at}),
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

async fn revoke_agent(
    State(admin): State<Arc<Admin>>,
    Extension(me): Extension<Reviewer>,
    Path(name): Path<String>,
) -> Response {
    // A name no agent can have (a NUL byte, a control character) is answered here, not sent to the store.
    // (Handles' agents are named `<minter>~<token id>`, beyond the shape a created agent's name has.)
    if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return api_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no active agent with that name",
        );
    }
    match admin.store.revoke_agent(&name).await {
        Ok(true) => {
            audit_action(&admin, &me.name, "agent.revoke", Some(&name), json!({})).await;
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContainRequest {
    reason: String,
}

/// `POST /api/incidents/{agent}/contain`: see [`crate::containment`]. 200 with the report, whose `complete`
/// is false when a token deletion failed (run it again to finish).
async fn contain_agent(
    State(admin): State<Arc<Admin>>,
    Extension(me): Extension<Reviewer>,
    Path(name): Path<String>,
    body: Result<Json<ContainRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(request)) = body else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the body must be JSON {\"reason\": \"…\"}",
        );
    };
    if request.reason.chars().count() > MAX_NOTE_CHARS {
        return api_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &format!("the reason is longer than {MAX_NOTE_CHARS} characters"),
        );
    }
    if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return api_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no agent with that name",
        );
    }
    match crate::containment::contain(
        &admin.store,
        &admin.forwarder,
        &admin.held.needles_with(&[]),
        &name,
        &request.reason,
        &me.name,
        "api",
    )
    .await
    {
        Ok(report) => {
            admin
                .metrics
                .containments_total
                .with_label_values(&[if report.complete {
                    "complete"
                } else {
                    "incomplete"
                }])
                .inc();
            Json(report).into_response()
        }
        Err(crate::containment::ContainError::UnknownAgent(_)) => api_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no agent with that name",
        ),
        Err(crate::containment::ContainError::NoReason) => api_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "a containment needs a reason",
        ),
        Err(crate::containment::ContainError::Store(e)) => store_error(e),
    }
}

async fn policy_status(State(admin): State<Arc<Admin>>) -> Response {
    Json(policy_json(&admin.policy)).into_response()
}

/// The API shape of the policy status: the live bundle's revision, engine and shadow, and how reloads went.
pub fn policy_json(policy: &PolicyHandle) -> Value {
    let live = policy.current();
    let b = &live.bundle;
    let status = policy.status();
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
async fn reload_policy(
    State(admin): State<Arc<Admin>>,
    Extension(me): Extension<Reviewer>,
) -> Response {
    let result = crate::app::reload_policy(&admin.policy, &admin.metrics, "admin API").await;
    audit_action(
        &admin,
        &me.name,
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
    (status, Json(policy_json(&admin.policy))).into_response()
}

/// The longest freeze reason kept; it is a note for people, not a document.
const MAX_REASON_CHARS: usize = 1000;

/// The optional body of `POST /api/freeze` and `DELETE /api/freeze`; an empty body is no reason.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FreezeRequest {
    reason: Option<String>,
    /// Ignored, as in an approve body: accepted because clients written before reviewer accounts sent it.
    /// Who froze is the authenticated reviewer.
    #[allow(dead_code)]
    by: Option<String>,
}

async fn freeze_status(State(admin): State<Arc<Admin>>) -> Response {
    match admin.store.freeze_state().await {
        Ok(state) => Json(state).into_response(),
        Err(e) => store_error(e),
    }
}

async fn freeze(
    State(admin): State<Arc<Admin>>,
    Extension(me): Extension<Reviewer>,
    body: Option<Json<FreezeRequest>>,
) -> Response {
    set_frozen(&admin, &me, true, body.map(|b| b.0).unwrap_or_default()).await
}

async fn unfreeze(
    State(admin): State<Arc<Admin>>,
    Extension(me): Extension<Reviewer>,
    body: Option<Json<FreezeRequest>>,
) -> Response {
    set_frozen(&admin, &me, false, body.map(|b| b.0).unwrap_or_default()).await
}

/// Freezing is stored, so every replica picks it up with its next control poll; this replica applies it now.
/// The reason goes into the admin action's detail, where `GET /api/freeze` reads it back.
async fn set_frozen(
    admin: &Admin,
    me: &Reviewer,
    frozen: bool,
    request: FreezeRequest,
) -> Response {
    let reason = request
        .reason
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty());
    if reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > MAX_REASON_CHARS)
    {
        return api_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("the reason is longer than {MAX_REASON_CHARS} characters"),
        );
    }
    if let Err(e) = admin.store.set_frozen(frozen, &me.name).await {
        return store_error(e);
    }
    let detail = match &reason {
        Some(r) => json!({"reason": r}),
        None => json!({}),
    };
    audit_action(
        admin,
        &me.name,
        if frozen { "freeze" } else { "unfreeze" },
        None,
        detail,
    )
    .await;
    admin.frozen.store(frozen, Ordering::Release);
    admin.metrics.frozen.set(i64::from(frozen));
    tracing::warn!(frozen, by = %me.name, reason = reason.as_deref().unwrap_or(""),
        "agent traffic freeze changed by an operator");
    Json(json!({"frozen": frozen, "changed_by": me.name, "reason": reason})).into_response()
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
pub(crate) async fn audit_action(
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
#[serde(deny_unknown_fields)]
struct ApprovalQuery {
    status: Option<String>,
    /// One agent's (with `status=pending`: the review queue, oldest first).
    agent: Option<String>,
    limit: Option<i64>,
}

async fn list_approvals(
    State(admin): State<Arc<Admin>>,
    Query(q): Query<ApprovalQuery>,
) -> Response {
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    if let Some(agent) = q.agent.as_deref() {
        // A filter that cannot be honoured is refused, never ignored: a script approving "everything pending
        // for agent X" must not get everyone's.
        if q.status.as_deref() != Some("pending") {
            return api_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "agent= filters the pending queue only: add status=pending",
            );
        }
        return match admin.store.pending_queue(Some(agent), limit).await {
            Ok(rows) => {
                Json(json!({"approvals": rows.iter().map(approval_json).collect::<Vec<_>>()}))
                    .into_response()
            }
            Err(e) => store_error(e),
        };
    }
    match admin.store.list_approvals(q.status.as_deref(), limit).await {
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
        "body_sha256": a.body_sha256, "action": a.action, "on_behalf_of": a.on_behalf_of,
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
    /// Ignored: accepted so that clients written before reviewer accounts keep working. Who decided is the
    /// authenticated reviewer, never a name the caller types.
    #[allow(dead_code)]
    by: Option<String>,
}

async fn approve(
    State(admin): State<Arc<Admin>>,
    Extension(me): Extension<Reviewer>,
    Path(id): Path<Uuid>,
    body: Option<Json<Verdict>>,
) -> Response {
    decide(admin, &me, id, true, body.map(|b| b.0).unwrap_or_default()).await
}

async fn deny(
    State(admin): State<Arc<Admin>>,
    Extension(me): Extension<Reviewer>,
    Path(id): Path<Uuid>,
    body: Option<Json<Verdict>>,
) -> Response {
    decide(admin, &me, id, false, body.map(|b| b.0).unwrap_or_default()).await
}

/// Separation of duties, for approving (denying is always allowed: refusing your own request is harmless):
/// `Some(refusal)` when `me` may not approve approval `id` — it was requested on their own behalf or by an
/// agent they created — unless `[approvals] allow_self_approval`. A reviewer with an email is matched by
/// name and email.
async fn separation_of_duties(admin: &Admin, me: &Reviewer, id: Uuid) -> Option<Response> {
    if admin.config.approvals.allow_self_approval {
        return None;
    }
    let approval = match admin.store.approval(id).await {
        Ok(Some(a)) => a,
        Ok(None) => return None, // decide() answers 404
        Err(e) => return Some(store_error(e)),
    };
    let created_by = match admin.store.agent_created_by(approval.agent_id).await {
        Ok(c) => c,
        Err(e) => return Some(store_error(e)),
    };
    let why =
        reviewers::may_not_approve(me, approval.on_behalf_of.as_deref(), created_by.as_deref())?;
    tracing::warn!(reviewer = %me.name, approval = %id, code = why.code(),
        "approval refused: separation of duties");
    audit_action(
        admin,
        &me.name,
        "approval.approve.refused",
        Some(&id.to_string()),
        json!({"code": why.code()}),
    )
    .await;
    Some(api_error(StatusCode::FORBIDDEN, why.code(), why.message()))
}

/// The longest note kept with an approval's decision or a settlement: a record of why, not a document (it is
/// shown in every queue and sent in notifications).
pub const MAX_NOTE_CHARS: usize = 2000;

fn note_too_long(note: Option<&str>) -> Option<Response> {
    note.filter(|n| n.chars().count() > MAX_NOTE_CHARS)
        .map(|_| {
            api_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!("the note is longer than {MAX_NOTE_CHARS} characters"),
            )
        })
}

/// Why the body a reviewer would approve cannot be seen whole in its record, if it cannot: the body was
/// over the stored limit (kept as its size and hash), or a string in it was shortened. Approving bytes no
/// reviewer can inspect is refused; denying is not.
pub fn unreviewable(input: Option<&Value>) -> Option<&'static str> {
    fn shortened(v: &Value) -> bool {
        match v {
            Value::String(s) => s.contains("…[") && s.contains("sha256:"),
            Value::Array(items) => items.iter().any(shortened),
            Value::Object(map) => map
                .iter()
                .any(|(k, v)| shortened(&Value::String(k.clone())) || shortened(v)),
            _ => false,
        }
    }
    // No record yet: a request held open (`hold_seconds`) is recorded when it finishes. Its approval shows
    // what the approval binds (path, query, charge, reasons, body hash); the body is judged when recorded.
    let input = input?;
    let body = &input["request"]["body"];
    if body.get("omitted").is_some() && body.get("sha256").is_some() {
        return Some(
            "the request's body was over the recorded limit, so a reviewer cannot see what it carries",
        );
    }
    if shortened(body) {
        return Some(
            "a value in the request's body was too long to record in full, so a reviewer cannot see it all",
        );
    }
    None
}

async fn decide(
    admin: Arc<Admin>,
    me: &Reviewer,
    id: Uuid,
    approve: bool,
    verdict: Verdict,
) -> Response {
    if approve {
        let approval = match admin.store.approval(id).await {
            Ok(a) => a,
            Err(e) => return store_error(e),
        };
        if let Some(a) = approval {
            let input = match admin.store.decision(a.requested_by_decision).await {
                Ok(d) => d.and_then(|(d, _)| {
                    d.input
                        .as_deref()
                        .and_then(|i| serde_json::from_str(i).ok())
                }),
                Err(e) => return store_error(e),
            };
            if let Some(why) = unreviewable(input.as_ref()) {
                return api_error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unreviewable",
                    &format!(
                        "this request cannot be approved: {why}. Deny it, and have the agent send a smaller request."
                    ),
                );
            }
        }
    }
    if let Some(refused) = note_too_long(verdict.note.as_deref()) {
        return refused;
    }
    if approve && let Some(refused) = separation_of_duties(&admin, me, id).await {
        return refused;
    }
    let by = me.name.clone();
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NotificationsQuery {
    limit: Option<i64>,
}

/// Recent webhook deliveries, newest first (`?limit=`, default 100, at most 500):
/// `{"notifications": [{"id", "webhook", "event", "event_key", "subject", "status"
/// (pending|delivered|failed), "attempts", "created_at", "next_attempt_at", "last_attempt_at",
/// "last_status" (the receiver's HTTP status), "last_error", "delivered_at"}]}`. Bodies and URLs are not
/// shown.
async fn list_notifications(
    State(admin): State<Arc<Admin>>,
    Query(q): Query<NotificationsQuery>,
) -> Response {
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    match admin.store.list_notifications(limit).await {
        Ok(rows) => Json(json!({"notifications": rows})).into_response(),
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
    /// Ignored (accepted for older clients): who settles is the authenticated reviewer.
    #[allow(dead_code)]
    by: Option<String>,
}

/// An operator settles a flagged reservation; who and why are kept on it and in `admin_actions`.
async fn settle_reservation(
    State(admin): State<Arc<Admin>>,
    Extension(me): Extension<Reviewer>,
    Path(id): Path<Uuid>,
    body: Option<Json<SettleRequest>>,
) -> Response {
    let Some(Json(request)) = body else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the body must be {\"outcome\": \"committed\"|\"released\", \"note\": \"…\"}",
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
    if let Some(refused) = note_too_long(Some(&request.note)) {
        return refused;
    }
    if request.note.trim().is_empty() {
        return api_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "a note is required: a settlement records who decided and why",
        );
    }
    match admin
        .store
        .settle_flagged(id, how, &me.name, request.note.trim())
        .await
    {
        Ok(Some(cents)) => Json(
            json!({"decision_id": id, "outcome": request.outcome, "cents": cents,
            "by": me.name, "note": request.note.trim()}),
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

/// The API shape of a reviewer account (never the token or its hash).
pub fn reviewer_json(r: &ReviewerRow) -> Value {
    json!({
        "id": r.id, "name": r.name, "email": r.email, "role": r.role, "token_prefix": r.token_prefix,
        "status": if r.revoked_at.is_some() { "revoked" } else { "active" },
        "created_at": r.created_at, "created_by": r.created_by, "revoked_at": r.revoked_at,
        "rotated_at": r.rotated_at, "last_used": r.last_used,
    })
}

async fn list_reviewers(State(admin): State<Arc<Admin>>) -> Response {
    match admin.store.list_reviewers().await {
        Ok(rows) => Json(json!({"reviewers": rows.iter().map(reviewer_json).collect::<Vec<_>>()}))
            .into_response(),
        Err(e) => store_error(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateReviewer {
    name: String,
    role: String,
    email: Option<String>,
}

async fn create_reviewer(
    State(admin): State<Arc<Admin>>,
    Extension(me): Extension<Reviewer>,
    Json(body): Json<CreateReviewer>,
) -> Response {
    let Some(role) = Role::parse(&body.role) else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "invalid",
            "role must be viewer, approver, operator or admin",
        );
    };
    match reviewers::create(
        &admin.store,
        &body.name,
        role,
        body.email.as_deref(),
        &me.name,
    )
    .await
    {
        Ok((row, token)) => {
            audit_action(
                &admin,
                &me.name,
                "reviewer.create",
                Some(&row.name),
                json!({"role": row.role}),
            )
            .await;
            let mut v = reviewer_json(&row);
            // The only time the token is ever returned.
            v["token"] = Value::String(token.expose().to_string());
            (StatusCode::CREATED, Json(v)).into_response()
        }
        Err(reviewers::ReviewerError::Invalid(m)) => {
            api_error(StatusCode::BAD_REQUEST, "invalid", &m)
        }
        Err(reviewers::ReviewerError::Store(e)) => store_error(e),
    }
}

async fn revoke_reviewer(
    State(admin): State<Arc<Admin>>,
    Extension(me): Extension<Reviewer>,
    Path(name): Path<String>,
) -> Response {
    if !reviewers::valid_name(&name) {
        return api_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no active reviewer with that name",
        );
    }
    match admin.store.revoke_reviewer(&name).await {
        Ok(true) => {
            audit_action(&admin, &me.name, "reviewer.revoke", Some(&name), json!({})).await;
            Json(json!({"name": name, "status": "revoked"})).into_response()
        }
        Ok(false) => api_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no active reviewer with that name",
        ),
        Err(e) => store_error(e),
    }
}

async fn rotate_reviewer(
    State(admin): State<Arc<Admin>>,
    Extension(me): Extension<Reviewer>,
    Path(name): Path<String>,
) -> Response {
    if !reviewers::valid_name(&name) {
        return api_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no active reviewer with that name",
        );
    }
    match reviewers::rotate(&admin.store, &name).await {
        Ok(Some(token)) => {
            audit_action(&admin, &me.name, "reviewer.rotate", Some(&name), json!({})).await;
            // The only time the new token is ever returned; the old one no longer works.
            Json(json!({"name": name, "token": token.expose()})).into_response()
        }
        Ok(None) => api_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no active reviewer with that name",
        ),
        Err(e) => store_error(e),
    }
}

// ---- the console's way in: the same handlers, called as the reviewer its session authenticated ----

/// Approve or deny as `me` (the console's forms; the note is required there).
pub(crate) async fn decide_as(
    admin: Arc<Admin>,
    me: &Reviewer,
    id: Uuid,
    approve: bool,
    note: &str,
) -> Response {
    let verdict = Verdict {
        note: Some(note.to_string()),
        by: None,
    };
    decide(admin, me, id, approve, verdict).await
}

/// `POST /api/agents` as `me`, with the same JSON body the API takes.
pub(crate) async fn create_agent_as(admin: &Arc<Admin>, me: &Reviewer, body: Value) -> Response {
    match serde_json::from_value::<CreateAgent>(body) {
        Ok(body) => create_agent(State(admin.clone()), Extension(me.clone()), Json(body)).await,
        Err(e) => api_error(StatusCode::BAD_REQUEST, "invalid", &e.to_string()),
    }
}

pub(crate) async fn revoke_agent_as(admin: &Arc<Admin>, me: &Reviewer, name: &str) -> Response {
    revoke_agent(
        State(admin.clone()),
        Extension(me.clone()),
        Path(name.to_string()),
    )
    .await
}

/// `POST /api/incidents/{agent}/contain` as `me`, for the console's form.
pub(crate) async fn contain_agent_as(
    admin: &Arc<Admin>,
    me: &Reviewer,
    name: &str,
    reason: &str,
) -> Response {
    contain_agent(
        State(admin.clone()),
        Extension(me.clone()),
        Path(name.to_string()),
        Ok(Json(ContainRequest {
            reason: reason.to_string(),
        })),
    )
    .await
}

pub(crate) async fn set_frozen_as(
    admin: &Admin,
    me: &Reviewer,
    frozen: bool,
    reason: Option<&str>,
) -> Response {
    let request = FreezeRequest {
        reason: reason.map(str::to_string),
        by: None,
    };
    set_frozen(admin, me, frozen, request).await
}

/// `GET /api/freeze`'s answer, for the console.
pub(crate) async fn freeze_state_json(admin: &Admin) -> Value {
    match admin.store.freeze_state().await {
        Ok(state) => serde_json::to_value(state).unwrap_or(Value::Null),
        Err(e) => {
            tracing::error!(error = %e, "freeze state not read");
            Value::Null
        }
    }
}

pub(crate) async fn reload_policy_as(admin: &Arc<Admin>, me: &Reviewer) -> Response {
    reload_policy(State(admin.clone()), Extension(me.clone())).await
}

/// `POST /api/spend/reservations/{id}/settle` as `me`, with the same JSON body the API takes.
pub(crate) async fn settle_as(
    admin: &Arc<Admin>,
    me: &Reviewer,
    id: Uuid,
    body: Value,
) -> Response {
    match serde_json::from_value::<SettleRequest>(body) {
        Ok(body) => {
            settle_reservation(
                State(admin.clone()),
                Extension(me.clone()),
                Path(id),
                Some(Json(body)),
            )
            .await
        }
        Err(e) => api_error(StatusCode::BAD_REQUEST, "invalid_request", &e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_is_declared_once_with_a_role() {
        let all = endpoints();
        let mut seen = std::collections::BTreeSet::new();
        for e in &all {
            assert!(e.path.starts_with("/api/"), "{e:?}");
            assert!(
                seen.insert((e.method, e.path)),
                "declared twice: {} {}",
                e.method,
                e.path
            );
            assert!(axum::http::Method::from_bytes(e.method.as_bytes()).is_ok());
            // Reads are for every role (but the reviewer list, for admins); nothing that changes state is
            // open to viewers.
            // A rollback plan is the operator's runbook for changing things back, so it is theirs to read.
            let operators_only = e.path == "/api/incidents/{agent}/rollback-plan";
            if e.method == "GET" && !e.path.starts_with("/api/reviewers") && !operators_only {
                assert_eq!(e.role, Role::Viewer, "{e:?}");
            } else {
                assert!(e.role > Role::Viewer, "{e:?}");
            }
        }
        // Managing reviewers and minting agents is for admins only.
        for e in all.iter().filter(|e| {
            e.path.starts_with("/api/reviewers") || (e.path == "/api/agents" && e.method == "POST")
        }) {
            assert_eq!(e.role, Role::Admin, "{e:?}");
        }
    }
}
