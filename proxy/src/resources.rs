//! Created resources (issue #17): what an agent made at its provider through tollgate, so that an incident
//! can be reported and rolled back.
//!
//! Owns: [`ResourceKind`] (the things tollgate records, with their text form), [`ResourceEffect`] (what the
//! route catalog says a route creates or deletes and where the resource's id is: a field of the provider's
//! answer such as `result.id`, or a path parameter such as `{script_name}`), the scope that makes an id
//! unique at its provider, and [`observe`], which the proxy calls after a 2xx answer to such a route. Only
//! the answers of create routes whose id is in the answer are read, at most [`ANSWER_LIMIT`] bytes within
//! the upstream timeout; the bytes go on to the agent unchanged whatever happens (an answer too large, too
//! slow or unparseable is passed on as it came and counted in `tollgate_resources_unrecorded_total`). The
//! row is written once while the answer waits (at most [`INLINE_WAIT`]), and if that fails, retried off the
//! response path for up to [`RECORD_PERSISTENCE`].
//! Must not: change an answer's bytes, refuse or delay an agent's answer beyond reading it, hold SQL or make
//! policy decisions. Never reads a secret from an answer: only the id and the few fields in [`DETAIL_FIELDS`],
//! and not those when they carry a secret tollgate holds (the caller's `carries_secret`).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use chrono::Utc;
use http::{HeaderMap, Method, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use serde_json::Value;
use uuid::Uuid;

use crate::classify::Action;
use crate::metrics::Metrics;
use crate::store::{ResourceRow, ResourceStatus, Store, StoreError};

/// The most of a create action's answer that is read for the id. Provider answers to a create are a few
/// KiB, a DNS batch's up to a few MiB (its size follows what the agent sent, so the limit is well above any
/// batch Cloudflare takes); anything larger is passed on unread (and counted as unrecorded).
pub const ANSWER_LIMIT: usize = 8 * 1024 * 1024;
/// How long a row that the store did not take is retried in the background before it is given up (logged and
/// counted).
const RECORD_PERSISTENCE: Duration = Duration::from_secs(60);
/// How long the answer waits for the first attempt to write a row.
const INLINE_WAIT: Duration = Duration::from_millis(250);
/// Fields of the created object (Cloudflare's `result`, Stripe's top level) kept beside the id: what the
/// report shows and the rollback plan needs (a payment intent's status). Strings and numbers only, each at
/// most [`DETAIL_MAX`] characters.
/// (`created_on` tells a Workers upload that replaced an existing script from one that created it.)
const DETAIL_FIELDS: &[&str] = &[
    "name",
    "type",
    "status",
    "amount",
    "currency",
    "livemode",
    "created_on",
];
const DETAIL_MAX: usize = 200;
/// Longest id accepted from an answer or a path: ids are tens of characters, domain names at most 253.
const ID_MAX: usize = 255;

/// A kind of resource tollgate records when an agent creates one. Its text form is in
/// [`ResourceKind::as_str`] / [`ResourceKind::parse`] (also the catalog's `kind:` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceKind {
    DnsRecord,
    Zone,
    WorkersScript,
    CustomCertificate,
    DomainRegistration,
    StripeCustomer,
    Subscription,
    PaymentIntent,
    Product,
    Price,
}

impl ResourceKind {
    pub const ALL: [ResourceKind; 10] = [
        ResourceKind::DnsRecord,
        ResourceKind::Zone,
        ResourceKind::WorkersScript,
        ResourceKind::CustomCertificate,
        ResourceKind::DomainRegistration,
        ResourceKind::StripeCustomer,
        ResourceKind::Subscription,
        ResourceKind::PaymentIntent,
        ResourceKind::Product,
        ResourceKind::Price,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::DnsRecord => "dns_record",
            ResourceKind::Zone => "zone",
            ResourceKind::WorkersScript => "workers_script",
            ResourceKind::CustomCertificate => "custom_certificate",
            ResourceKind::DomainRegistration => "domain_registration",
            ResourceKind::StripeCustomer => "stripe_customer",
            ResourceKind::Subscription => "subscription",
            ResourceKind::PaymentIntent => "payment_intent",
            ResourceKind::Product => "product",
            ResourceKind::Price => "price",
        }
    }

    pub fn parse(text: &str) -> Option<ResourceKind> {
        ResourceKind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

impl std::fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a resource's id is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdSource {
    /// A field of the JSON answer, by its path from the top (`["result", "id"]`, `["id"]`); a field written
    /// `name[]` is an array each of whose elements holds one id (`result.posts[].id`: a DNS batch's new
    /// records).
    Answer(Vec<Box<str>>),
    /// A parameter of the action (a path variable, or `domain_name` lifted from the body).
    Param(Box<str>),
}

impl IdSource {
    /// The catalog's spelling: `{param}` or a dotted field path such as `result.id` (`name[]` for an array
    /// of objects, not last).
    pub fn parse(text: &str) -> Result<IdSource, String> {
        if let Some(name) = text.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
            if !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                return Ok(IdSource::Param(name.into()));
            }
            return Err(format!(
                "id {text:?}: a parameter is written {{name}} in lower case"
            ));
        }
        let fields: Vec<Box<str>> = text.split('.').map(Box::from).collect();
        let last = fields.len() - 1;
        let valid = fields.iter().enumerate().all(|(n, f)| {
            let name = match f.strip_suffix("[]") {
                Some(name) if n < last => name,
                Some(_) => return false,
                None => f,
            };
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        });
        if valid {
            Ok(IdSource::Answer(fields))
        } else {
            Err(format!(
                "id {text:?} is neither {{param}} nor a dotted answer field such as result.id"
            ))
        }
    }
}

/// What a catalog route does to a recorded resource on a 2xx answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceEffect {
    /// Creates a resource of this kind; its id is at `id`.
    Creates { kind: ResourceKind, id: IdSource },
    /// Deletes (or cancels, or deactivates for good) the resource whose id is at `id` (a parameter), when the
    /// request's method is `method` (any of the route's methods when `None`).
    Deletes {
        kind: ResourceKind,
        id: IdSource,
        method: Option<Method>,
    },
}

impl ResourceEffect {
    /// Whether the proxy must read the answer (a create whose id is in it), so it asks for it unencoded.
    pub fn reads_answer(&self) -> bool {
        matches!(
            self,
            ResourceEffect::Creates {
                id: IdSource::Answer(_),
                ..
            }
        )
    }
}

/// The part of a resource's address its id does not make unique: the zone of a DNS record or custom
/// certificate, the account of a Workers script or registration, the Stripe connected account (or, without
/// one, the `Stripe-Context` the call was made in).
pub fn scope_of(
    kind: ResourceKind,
    params: &BTreeMap<String, String>,
    stripe_account: Option<&str>,
    stripe_context: Option<&str>,
) -> String {
    // Cloudflare's zone and account ids are hex: any case is the same one (see [`canonical_id`]).
    let param = |name: &str| {
        params
            .get(name)
            .map(|v| v.to_ascii_lowercase())
            .unwrap_or_default()
    };
    match kind {
        ResourceKind::DnsRecord | ResourceKind::CustomCertificate => {
            format!("zone:{}", param("zone_id"))
        }
        ResourceKind::WorkersScript | ResourceKind::DomainRegistration => {
            format!("account:{}", param("account_id"))
        }
        // Zone ids are unique across Cloudflare.
        ResourceKind::Zone => String::new(),
        ResourceKind::StripeCustomer
        | ResourceKind::Subscription
        | ResourceKind::PaymentIntent
        | ResourceKind::Product
        | ResourceKind::Price => match (stripe_account, stripe_context) {
            (Some(account), _) => format!("stripe-account:{account}"),
            (None, Some(context)) => format!("stripe-context:{context}"),
            (None, None) => String::new(),
        },
    }
}

/// A 2xx answer to a route with a resource effect, and who made the request: everything [`observe`] needs.
pub struct Observed {
    pub effect: ResourceEffect,
    pub provider: String,
    pub action: String,
    pub params: BTreeMap<String, String>,
    pub stripe_account: Option<String>,
    /// `Stripe-Context` as sent: the account an organization key acted in. Kept in the row's `detail`, so
    /// that the rollback plan addresses the object where it lives.
    pub stripe_context: Option<String>,
    pub agent_id: Uuid,
    pub agent_name: String,
    pub run_id: Option<String>,
    pub decision_id: Uuid,
}

impl Observed {
    /// For a request whose action has a resource effect that applies to its method; `None` otherwise.
    #[allow(clippy::too_many_arguments)]
    pub fn of(
        action: &Action,
        method: &Method,
        provider: &str,
        headers: &HeaderMap,
        agent_id: Uuid,
        agent_name: &str,
        run_id: Option<&str>,
        decision_id: Uuid,
    ) -> Option<Observed> {
        let effect = action.resource.as_deref()?;
        if let ResourceEffect::Deletes {
            method: Some(only), ..
        } = effect
            && only != method
        {
            return None;
        }
        Some(Observed {
            effect: effect.clone(),
            provider: provider.to_string(),
            action: action.name.to_string(),
            params: action.params.clone(),
            // `canon` lets one copy of Stripe-Account and of Stripe-Context through, and the policy judged
            // them.
            stripe_account: headers
                .get("stripe-account")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            stripe_context: headers
                .get("stripe-context")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            agent_id,
            agent_name: agent_name.to_string(),
            run_id: run_id.map(str::to_string),
            decision_id,
        })
    }
}

/// Why a created resource was not recorded (the `reason` label of `tollgate_resources_unrecorded_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unrecorded {
    /// The answer was larger than [`ANSWER_LIMIT`], or did not end within the upstream timeout.
    TooLarge,
    /// Not JSON, compressed, or without a usable id where the catalog says it is.
    NoId,
    /// The store did not take the row within [`RECORD_PERSISTENCE`].
    Store,
}

impl Unrecorded {
    pub fn as_str(self) -> &'static str {
        match self {
            Unrecorded::TooLarge => "answer_unread",
            Unrecorded::NoId => "no_id",
            Unrecorded::Store => "store",
        }
    }
}

/// After a 2xx answer to a route with a resource effect: records the created resource (or marks the deleted
/// one) and hands back the answer with its bytes unchanged. Only a create whose id is in the answer reads
/// it; the store is written on a task of its own.
pub async fn observe(
    store: &Store,
    metrics: &Arc<Metrics>,
    read_within: Duration,
    observed: Observed,
    response: Response<Body>,
    carries_secret: impl Fn(&[u8]) -> bool,
) -> Response<Body> {
    match &observed.effect {
        ResourceEffect::Deletes { kind, id, .. } => {
            let Some(resource_id) = param_id(id, &observed.params).map(|i| canonical_id(*kind, i))
            else {
                return response;
            };
            let scope = scope_of(
                *kind,
                &observed.params,
                observed.stripe_account.as_deref(),
                observed.stripe_context.as_deref(),
            );
            let (store, kind, decision_id) = (store.clone(), *kind, observed.decision_id);
            let provider = observed.provider.clone();
            let write = move || {
                let (store, provider, resource_id, scope) = (
                    store.clone(),
                    provider.clone(),
                    resource_id.clone(),
                    scope.clone(),
                );
                async move {
                    store
                        .mark_resource_deleted(
                            &provider,
                            kind,
                            &resource_id,
                            &scope,
                            decision_id,
                            Utc::now(),
                        )
                        .await
                }
            };
            persist(write, move |e: &StoreError| {
                tracing::error!(error = %e, %decision_id, kind = kind.as_str(), "a deleted resource was not marked deleted");
            }, || {})
            .await;
            response
        }
        ResourceEffect::Creates { kind, id } => {
            let kind = *kind;
            let (response, answer) = match id {
                IdSource::Param(_) => (response, None),
                IdSource::Answer(_) => {
                    let (head, body) = response.into_parts();
                    let (read, rest) =
                        read_prefix(Body::new(body), ANSWER_LIMIT, read_within).await;
                    let whole = rest.is_none();
                    let body = match rest {
                        None => Body::from(read.clone()),
                        Some(rest) => Body::new(Resumed {
                            prefix: Some(read.clone()),
                            rest,
                        }),
                    };
                    let response = Response::from_parts(head, body);
                    if !whole {
                        unrecorded(metrics, &observed, Unrecorded::TooLarge);
                        return response;
                    }
                    let compressed = response
                        .headers()
                        .get(http::header::CONTENT_ENCODING)
                        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
                    if compressed {
                        unrecorded(metrics, &observed, Unrecorded::NoId);
                        return response;
                    }
                    (response, serde_json::from_slice::<Value>(&read).ok())
                }
            };
            let empty = Value::Object(Default::default());
            // Each id with the object it was read from (whose listed fields are kept beside it).
            let found: Vec<(String, &Value)> = match (id, &answer) {
                (IdSource::Param(_), _) => param_id(id, &observed.params)
                    .map(|id| (id, &empty))
                    .into_iter()
                    .collect(),
                (IdSource::Answer(path), Some(answer)) => answer_ids(answer, path),
                (IdSource::Answer(_), None) => Vec::new(),
            };
            if found.is_empty() {
                unrecorded(metrics, &observed, Unrecorded::NoId);
                return response;
            }
            // An id or kept field that carries a secret tollgate holds (a provider naming an object by a
            // minted token's secret) is not written to the store, the report or the plan; the answer itself
            // is cut off by the screen.
            let found: Vec<(String, &Value)> = found
                .into_iter()
                .filter(|(id, holder)| {
                    let detail = detail_of(holder, observed.stripe_context.as_deref());
                    let clean = !carries_secret(id.as_bytes())
                        && !carries_secret(&serde_json::to_vec(&detail).unwrap_or_default());
                    if !clean {
                        tracing::error!(decision_id = %observed.decision_id, kind = kind.as_str(), "a created resource's id or fields carry a secret tollgate holds; not recorded");
                    }
                    clean
                })
                .collect();
            if found.is_empty() {
                unrecorded(metrics, &observed, Unrecorded::NoId);
                return response;
            }
            let at = Utc::now();
            let rows: Vec<ResourceRow> = found
                .into_iter()
                .map(|(resource_id, holder)| ResourceRow {
                    id: Uuid::now_v7(),
                    provider: observed.provider.clone(),
                    kind,
                    resource_id: canonical_id(kind, resource_id),
                    scope: scope_of(
                        kind,
                        &observed.params,
                        observed.stripe_account.as_deref(),
                        observed.stripe_context.as_deref(),
                    ),
                    zone_id: observed.params.get("zone_id").cloned(),
                    account_id: observed.params.get("account_id").cloned(),
                    stripe_account: observed.stripe_account.clone(),
                    detail: detail_of(holder, observed.stripe_context.as_deref()),
                    agent_id: observed.agent_id,
                    agent_name: observed.agent_name.clone(),
                    run_id: observed.run_id.clone(),
                    decision_id: observed.decision_id,
                    action: observed.action.clone(),
                    created_at: at,
                    status: ResourceStatus::Live,
                    deleted_at: None,
                    deleted_by_decision: None,
                    updated_at: None,
                    updated_by_decision: None,
                })
                .collect();
            let (provider, kind_name, decision_id, count) = (
                observed.provider.clone(),
                kind.as_str(),
                observed.decision_id,
                rows.len() as u64,
            );
            let rows = Arc::new(rows);
            let store = store.clone();
            // All rows each time: recording is idempotent, so a retry after a partial failure is safe.
            let write = move || {
                let (store, rows) = (store.clone(), Arc::clone(&rows));
                async move {
                    for row in rows.iter() {
                        store.record_resource(row).await?;
                    }
                    Ok(true)
                }
            };
            let (failed, recorded) = (Arc::clone(metrics), Arc::clone(metrics));
            let label = provider.clone();
            persist(
                write,
                move |e: &StoreError| {
                    tracing::error!(error = %e, %decision_id, kind = kind_name, "a created resource was not recorded");
                    failed
                        .resources_unrecorded_total
                        .with_label_values(&[&provider, Unrecorded::Store.as_str()])
                        .inc();
                },
                move || {
                    recorded
                        .resources_recorded_total
                        .with_label_values(&[&label, kind_name])
                        .inc_by(count);
                },
            )
            .await;
            response
        }
    }
}

/// Writes once while the answer waits (at most [`INLINE_WAIT`]: one indexed statement beside a provider call
/// of tens or hundreds of milliseconds, and only for create and delete answers); if that failed or did not
/// finish in time, again every half second on a task of its own for up to [`RECORD_PERSISTENCE`], then
/// `gave_up`. Both writes are idempotent (the unique key; `status = 'live'`), so an attempt that timed out but
/// committed after all does no harm.
async fn persist<W, F>(
    write: W,
    gave_up: impl FnOnce(&StoreError) + Send + 'static,
    done: impl FnOnce() + Send + 'static,
) where
    W: Fn() -> F + Send + 'static,
    F: std::future::Future<Output = Result<bool, StoreError>> + Send + 'static,
{
    if let Ok(Ok(_)) = tokio::time::timeout(INLINE_WAIT, write()).await {
        done();
        return;
    }
    tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            match write().await {
                Ok(_) => return done(),
                Err(e) if started.elapsed() >= RECORD_PERSISTENCE => return gave_up(&e),
                Err(_) => {}
            }
        }
    });
}

fn unrecorded(metrics: &Metrics, observed: &Observed, why: Unrecorded) {
    tracing::warn!(decision_id = %observed.decision_id, action = %observed.action, reason = why.as_str(), "a created resource was not recorded; its answer was passed on unchanged");
    metrics
        .resources_unrecorded_total
        .with_label_values(&[&observed.provider, why.as_str()])
        .inc();
}

/// A resource's id as recorded: Cloudflare's ids (hex), Workers script names and domain names are the same
/// in any letter case, so they are kept lower-cased (two spellings of one script are one resource); Stripe's
/// ids are case-sensitive and kept as given.
pub fn canonical_id(kind: ResourceKind, id: String) -> String {
    match kind {
        ResourceKind::DnsRecord
        | ResourceKind::Zone
        | ResourceKind::WorkersScript
        | ResourceKind::CustomCertificate
        | ResourceKind::DomainRegistration => id.to_ascii_lowercase(),
        ResourceKind::StripeCustomer
        | ResourceKind::Subscription
        | ResourceKind::PaymentIntent
        | ResourceKind::Product
        | ResourceKind::Price => id,
    }
}

fn param_id(id: &IdSource, params: &BTreeMap<String, String>) -> Option<String> {
    match id {
        IdSource::Param(name) => params.get(&**name).filter(|v| usable_id(v)).cloned(),
        IdSource::Answer(_) => None,
    }
}

/// Most ids read from one answer (a DNS batch's new records); more are not recorded.
const MAX_IDS_PER_ANSWER: usize = 1000;

/// The ids at `path` in the answer (one, or one per element of a `name[]` array), each with the object it
/// is a field of. An id is a non-empty printable string without spaces or `/` (or an integer, as text).
pub fn answer_ids<'a>(answer: &'a Value, path: &[Box<str>]) -> Vec<(String, &'a Value)> {
    fn walk<'a>(at: &'a Value, path: &[Box<str>], out: &mut Vec<(String, &'a Value)>) {
        let Some((field, rest)) = path.split_first() else {
            return;
        };
        if let Some(list) = field.strip_suffix("[]") {
            if let Some(Value::Array(items)) = at.get(list) {
                for item in items {
                    if out.len() >= MAX_IDS_PER_ANSWER {
                        return;
                    }
                    walk(item, rest, out);
                }
            }
            return;
        }
        let Some(next) = at.get(&**field) else {
            return;
        };
        if !rest.is_empty() {
            return walk(next, rest, out);
        }
        let id = match next {
            Value::String(s) => s.clone(),
            Value::Number(n) if n.is_u64() => n.to_string(),
            _ => return,
        };
        if usable_id(&id) {
            out.push((id, at));
        }
    }
    let mut out = Vec::new();
    walk(answer, path, &mut out);
    out
}

/// The one id at `path` (a path without arrays).
pub fn answer_id(answer: &Value, path: &[Box<str>]) -> Option<String> {
    answer_ids(answer, path)
        .into_iter()
        .next()
        .map(|(id, _)| id)
}

fn usable_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= ID_MAX && id.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
}

/// The [`DETAIL_FIELDS`] of the object an id is in (Cloudflare's `result`, Stripe's top level, a batch's
/// record).
fn detail_of(object: &Value, stripe_context: Option<&str>) -> Value {
    let mut detail = serde_json::Map::new();
    if let Some(context) = stripe_context {
        detail.insert(
            "stripe_context".to_string(),
            Value::String(context.to_string()),
        );
    }
    if let Value::Object(fields) = object {
        for name in DETAIL_FIELDS {
            match fields.get(*name) {
                Some(Value::String(s)) => {
                    let s: String = s.chars().take(DETAIL_MAX).collect();
                    detail.insert((*name).to_string(), Value::String(s));
                }
                Some(v @ (Value::Number(_) | Value::Bool(_))) => {
                    detail.insert((*name).to_string(), v.clone());
                }
                _ => {}
            }
        }
    }
    Value::Object(detail)
}

/// Reads a body until it ends, `limit` bytes are exceeded or `within` runs out. Returns what was read and,
/// unless the body ended, the rest of it (still unread), so the caller can pass on every byte.
async fn read_prefix(mut body: Body, limit: usize, within: Duration) -> (Bytes, Option<Body>) {
    let deadline = tokio::time::Instant::now() + within;
    let mut read = BytesMut::new();
    loop {
        if read.len() > limit {
            return (read.freeze(), Some(body));
        }
        // Cancellation-safe: a frame is either returned whole or left in the body.
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return (read.freeze(), Some(body)),
            Ok(None) => return (read.freeze(), None),
            Ok(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => read.extend_from_slice(&data),
                // Trailers: what is read so far, then the trailers, then the rest.
                Err(trailers) => {
                    let rest = Body::new(Resumed {
                        prefix: None,
                        rest: Body::new(TrailersThen {
                            trailers: Some(trailers),
                            rest: body,
                        }),
                    });
                    return (read.freeze(), Some(rest));
                }
            },
            // The exchange broke: the agent gets what came, then the same failure.
            Ok(Some(Err(e))) => {
                let failed = Body::new(Failed(Some(e)));
                return (read.freeze(), Some(failed));
            }
        }
    }
}

/// A body that yields `prefix` first, then whatever `rest` yields.
struct Resumed {
    prefix: Option<Bytes>,
    rest: Body,
}

impl http_body::Body for Resumed {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(prefix) = self.prefix.take()
            && !prefix.is_empty()
        {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }
}

/// A body that yields a trailers frame already taken from `rest`, then the rest.
struct TrailersThen {
    trailers: Option<Frame<Bytes>>,
    rest: Body,
}

impl http_body::Body for TrailersThen {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(frame) = self.trailers.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }
}

/// A body that fails with the error the upstream body failed with.
struct Failed(Option<axum::Error>);

impl http_body::Body for Failed {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.take().map(Err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_read_back_from_their_text() {
        for kind in ResourceKind::ALL {
            assert_eq!(ResourceKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(ResourceKind::parse("token"), None);
    }

    #[test]
    fn id_sources_are_parameters_or_answer_fields() {
        assert_eq!(
            IdSource::parse("{script_name}"),
            Ok(IdSource::Param("script_name".into()))
        );
        assert_eq!(
            IdSource::parse("result.id"),
            Ok(IdSource::Answer(vec!["result".into(), "id".into()]))
        );
        assert_eq!(
            IdSource::parse("result.posts[].id"),
            Ok(IdSource::Answer(vec![
                "result".into(),
                "posts[]".into(),
                "id".into()
            ]))
        );
        for bad in [
            "",
            "{}",
            "{Zone}",
            "result..id",
            "result.ID",
            "a b",
            "result.id[]",
            "[].id",
        ] {
            assert!(IdSource::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ids_are_read_only_where_the_catalog_says() {
        let path = |t: &str| match IdSource::parse(t) {
            Ok(IdSource::Answer(p)) => p,
            other => panic!("{other:?}"),
        };
        let cf = serde_json::json!({"success": true, "result": {"id": "rec1", "name": "www.example.com", "value": "x"}});
        assert_eq!(answer_id(&cf, &path("result.id")).as_deref(), Some("rec1"));
        assert_eq!(answer_id(&cf, &path("id")), None);
        let stripe = serde_json::json!({"id": "cus_1", "object": "customer"});
        assert_eq!(answer_id(&stripe, &path("id")).as_deref(), Some("cus_1"));
        for odd in [
            serde_json::json!({"id": ""}),
            serde_json::json!({"id": "a/b"}),
            serde_json::json!({"id": {"x": 1}}),
            serde_json::json!({"id": "a b"}),
        ] {
            assert_eq!(answer_id(&odd, &path("id")), None, "{odd}");
        }
        // Only the listed fields of the created object are kept: never `value` (a secret's place).
        let found = answer_ids(&cf, &path("result.id"));
        assert_eq!(
            detail_of(found[0].1, None),
            serde_json::json!({"name": "www.example.com"})
        );
        // A DNS batch: one id per new record, each with its own fields.
        let batch = serde_json::json!({"result": {"posts": [{"id": "r1", "name": "a.example.com", "type": "A"},
            {"id": "r2", "name": "b.example.com"}, {"name": "no id"}], "deletes": [{"id": "r9"}]}});
        let found = answer_ids(&batch, &path("result.posts[].id"));
        let ids: Vec<&str> = found.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["r1", "r2"]);
        assert_eq!(
            detail_of(found[1].1, None),
            serde_json::json!({"name": "b.example.com"})
        );
    }

    #[test]
    fn scopes_name_what_the_id_does_not() {
        let params: BTreeMap<String, String> = [("zone_id", "z1"), ("account_id", "a1")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(
            scope_of(ResourceKind::DnsRecord, &params, None, None),
            "zone:z1"
        );
        assert_eq!(
            scope_of(ResourceKind::WorkersScript, &params, None, None),
            "account:a1"
        );
        assert_eq!(scope_of(ResourceKind::Zone, &params, None, None), "");
        assert_eq!(
            scope_of(ResourceKind::Subscription, &params, Some("acct_9"), None),
            "stripe-account:acct_9"
        );
        assert_eq!(
            scope_of(
                ResourceKind::StripeCustomer,
                &params,
                None,
                Some("acct_9/acct_7")
            ),
            "stripe-context:acct_9/acct_7"
        );
        assert_eq!(scope_of(ResourceKind::Price, &params, None, None), "");
    }

    #[tokio::test]
    async fn an_answer_over_the_limit_is_passed_on_whole() {
        let big = vec![b'x'; 1000];
        let (read, rest) = read_prefix(Body::from(big.clone()), 100, Duration::from_secs(1)).await;
        let rest = rest.expect("not read to its end");
        let whole = Body::new(Resumed {
            prefix: Some(read),
            rest,
        });
        let bytes = whole.collect().await.unwrap().to_bytes();
        assert_eq!(bytes.as_ref(), big.as_slice());
        let (read, rest) = read_prefix(Body::from("small"), 100, Duration::from_secs(1)).await;
        assert!(rest.is_none());
        assert_eq!(read.as_ref(), b"small");
    }
}
