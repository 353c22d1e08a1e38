//! Notifications: webhooks that tell people a request waits for them (and when approvals are decided,
//! budgets cross 80 % and 100 %, and agent traffic is frozen or unfrozen).
//!
//! Owns: the [`Event`]s and their payloads — a Slack-compatible incoming-webhook message (`text` plus
//! `blocks`, with a link to the approval in the console) and tollgate's generic JSON, signed with
//! HMAC-SHA256 over `"{timestamp}.{body}"` in `Tollgate-Signature` (deploy/NOTIFICATIONS.md has the
//! receiver's check) — and their durable delivery through the store's outbox (`notifications`).
//!
//! How it works, on every replica alike: the **sweep** reads durable state every
//! `notifications.sweep_interval_ms` (pending and recently decided approvals, this month's budget windows,
//! the freeze control) and queues one row per (webhook, event key); the store keeps the first and ignores
//! the rest, so an event is queued once however many replicas saw it. The **delivery** loop claims due rows
//! with a lease (one replica sends a row at a time), posts them, and records the attempt: delivered, retry
//! after an exponential backoff with jitter, or failed after `max_attempts`. A replica that dies mid-send
//! loses its lease and another one sends again: delivery is at least once, and `Tollgate-Delivery` (the row's
//! id, the same on every attempt) lets a receiver drop a repeat.
//!
//! Must not: block or delay a request. Nothing on the request path calls into this module; events come from
//! what the request path already stored. Payloads carry what the approval record shows (its path, query,
//! reasons, charge — already redacted when recorded), never a request body, agent key, provider credential,
//! webhook secret or webhook URL; logs and recorded errors name a webhook, never its URL.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use http::{HeaderValue, Request};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::config::{Config, WebhookConfig, WebhookFormat};
use crate::metrics::Metrics;
use crate::store::{
    ApprovalRow, DeliveryAttempt, FreezeState, NewNotification, NextStep, NotificationRow,
    SpendRow, Store,
};

/// The header with the signature of a generic payload: `t=<unix seconds>,v1=<hex HMAC-SHA256>`.
pub const SIGNATURE_HEADER: &str = "tollgate-signature";
/// The header naming the event (`approval_required`, …).
pub const EVENT_HEADER: &str = "tollgate-event";
/// The header with the delivery's id: the same on every attempt, so a receiver can drop a repeat.
pub const DELIVERY_HEADER: &str = "tollgate-delivery";
/// How old a signature a receiver should accept (documented; tollgate signs at each attempt).
pub const REPLAY_WINDOW: Duration = Duration::from_secs(300);

/// Events older than this when a sweep first sees them are not announced (tollgate was down, or the
/// webhook was added later): a decision or freeze from an hour ago is news to nobody. Pending approvals
/// are announced whatever their age, as long as they still wait.
const LOOKBACK: chrono::TimeDelta = chrono::TimeDelta::minutes(15);
/// The most approvals one sweep reads.
const SWEEP_APPROVALS: i64 = 500;
/// The most deliveries one replica has in flight at once to one webhook. Each webhook has its own slots, so
/// a receiver that hangs (or a backlog of its rows) delays only its own deliveries, never another's.
const IN_FLIGHT_PER_WEBHOOK: usize = 4;
/// A claim's lease beyond the attempt's timeout: time to record the attempt before another replica may
/// take the row again.
const LEASE_MARGIN: Duration = Duration::from_secs(10);
/// Budget thresholds announced, in percent of the cap.
const THRESHOLDS: [i64; 2] = [100, 80];
/// The (webhook, event key) pairs a replica remembers having queued, so that a sweep does not ask the
/// store again for every pending approval each time; forgotten (and asked again, harmlessly) past this.
const REMEMBERED: usize = 10_000;
/// The most of a receiver's answer that is read (and then dropped).
const ANSWER_LIMIT: usize = 64 * 1024;

/// What a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// A request waits for a reviewer.
    ApprovalRequired,
    /// A reviewer approved or denied one.
    ApprovalDecided,
    /// A budget window reached 80 % or 100 % of its cap.
    BudgetThreshold,
    /// Agent traffic was frozen or unfrozen.
    Freeze,
}

impl Event {
    pub const ALL: [Event; 4] = [
        Event::ApprovalRequired,
        Event::ApprovalDecided,
        Event::BudgetThreshold,
        Event::Freeze,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Event::ApprovalRequired => "approval_required",
            Event::ApprovalDecided => "approval_decided",
            Event::BudgetThreshold => "budget_threshold",
            Event::Freeze => "freeze",
        }
    }

    pub fn parse(text: &str) -> Option<Event> {
        Event::ALL.into_iter().find(|e| e.as_str() == text)
    }
}

/// One thing that happened, as every webhook's payload describes it.
#[derive(Debug, Clone)]
enum Happening {
    Approval {
        event: Event,
        approval: Box<ApprovalRow>,
    },
    Budget {
        window: SpendRow,
        threshold: i64,
    },
    Freeze(FreezeState),
}

impl Happening {
    fn event(&self) -> Event {
        match self {
            Happening::Approval { event, .. } => *event,
            Happening::Budget { .. } => Event::BudgetThreshold,
            Happening::Freeze(_) => Event::Freeze,
        }
    }

    /// What makes two sightings (by two sweeps, or two replicas) the same event.
    fn key(&self) -> String {
        match self {
            Happening::Approval { event, approval } => {
                format!("{}:{}", event.as_str(), approval.id)
            }
            Happening::Budget { window, threshold } => format!(
                "budget_threshold:{}:{}:{}:{}:{threshold}",
                window.provider, window.budget, window.subject, window.period
            ),
            Happening::Freeze(f) => format!(
                "freeze:{}:{}",
                if f.frozen { "frozen" } else { "unfrozen" },
                f.changed_at
                    .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
                    .to_rfc3339_opts(SecondsFormat::Micros, true)
            ),
        }
    }

    fn subject(&self) -> String {
        match self {
            Happening::Approval { approval, .. } => approval.id.to_string(),
            Happening::Budget { window, .. } => {
                format!("{}/{}/{}", window.budget, window.subject, window.period)
            }
            Happening::Freeze(_) => "frozen".to_string(),
        }
    }

    /// Where in the console a reviewer acts on it.
    fn link(&self, public_url: &str) -> String {
        match self {
            Happening::Approval { approval, .. } => {
                format!("{public_url}/approvals/{}", approval.id)
            }
            Happening::Budget { .. } => format!("{public_url}/spend"),
            Happening::Freeze(_) => format!("{public_url}/operations"),
        }
    }

    /// One line for humans (Slack's `text`, the generic payload's `summary`).
    fn summary(&self) -> String {
        match self {
            Happening::Approval { event, approval: a } => {
                let what = format!("{} {} {}", a.action, a.method, a.path);
                let by = match &a.on_behalf_of {
                    Some(who) => format!(" on behalf of {who}"),
                    None => String::new(),
                };
                match event {
                    Event::ApprovalRequired => format!(
                        "Approval required: agent {} wants {what}{by}{}",
                        a.agent_name,
                        a.charge_cents
                            .map(|c| format!(" ({})", money(c)))
                            .unwrap_or_default()
                    ),
                    _ => format!(
                        "Approval {}: {what} by agent {}{by}, decided by {}",
                        decided_word(a),
                        a.agent_name,
                        a.decided_by.as_deref().unwrap_or("unknown")
                    ),
                }
            }
            Happening::Budget {
                window: w,
                threshold,
            } => format!(
                "Budget {} of {} for {} ({}) is at {}% of its cap: {} of {}",
                w.budget,
                w.subject,
                w.provider,
                w.period,
                threshold,
                money(w.committed_cents + w.reserved_cents),
                money(w.cap_cents)
            ),
            Happening::Freeze(f) => format!(
                "Agent traffic {} by {}",
                if f.frozen { "frozen" } else { "unfrozen" },
                f.changed_by.as_deref().unwrap_or("unknown")
            ),
        }
    }

    /// The event's facts, as the generic payload carries them.
    fn facts(&self) -> (&'static str, Value) {
        match self {
            Happening::Approval { approval: a, .. } => (
                "approval",
                json!({
                    "id": a.id, "status": a.status, "agent": a.agent_name, "agent_id": a.agent_id,
                    "provider": a.provider, "action": a.action, "method": a.method, "path": a.path,
                    "query": a.query, "on_behalf_of": a.on_behalf_of, "charge_cents": a.charge_cents,
                    "reasons": a.reasons, "created_at": a.created_at, "expires_at": a.expires_at,
                    "decided_by": a.decided_by, "decided_at": a.decided_at, "note": a.note,
                }),
            ),
            Happening::Budget {
                window: w,
                threshold,
            } => (
                "budget",
                json!({
                    "provider": w.provider, "budget": w.budget, "subject": w.subject, "period": w.period,
                    "threshold_percent": threshold, "cap_cents": w.cap_cents,
                    "committed_cents": w.committed_cents, "reserved_cents": w.reserved_cents,
                }),
            ),
            Happening::Freeze(f) => (
                "freeze",
                json!({"frozen": f.frozen, "by": f.changed_by, "at": f.changed_at, "reason": f.reason}),
            ),
        }
    }
}

fn decided_word(a: &ApprovalRow) -> &'static str {
    if a.status == "denied" {
        "denied"
    } else {
        "approved"
    }
}

/// Integer cents as dollars and cents, for people.
fn money(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let c = cents.unsigned_abs();
    format!("{sign}${}.{:02}", c / 100, c % 100)
}

/// Text inside Slack mrkdwn: `&`, `<` and `>` escaped, so an agent-chosen path or name cannot make a link
/// or a mention, and cut to `max` characters (Slack refuses a field over 2,000 and a section over 3,000, and
/// would refuse the whole message).
fn slack_escape(text: &str, max: usize) -> String {
    let escaped = crate::display::reveal(text, true)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    if escaped.chars().count() <= max {
        return escaped;
    }
    let mut cut: String = escaped.chars().take(max.saturating_sub(1)).collect();
    // Never leave half an entity behind.
    if let Some(amp) = cut.rfind('&')
        && !cut[amp..].contains(';')
    {
        cut.truncate(amp);
    }
    cut.push('…');
    cut
}

/// Slack's limits, less room for the label.
const SLACK_FIELD_CHARS: usize = 1_900;
const SLACK_SECTION_CHARS: usize = 2_900;

/// The generic payload (signed): the event, its facts and the console link.
fn generic_body(id: Uuid, h: &Happening, link: &str, at: DateTime<Utc>) -> Value {
    let (name, facts) = h.facts();
    let mut body = json!({
        "id": id, "event": h.event().as_str(), "event_key": h.key(), "created_at": at,
        "summary": h.summary(), "link": link,
    });
    body[name] = facts;
    body
}

/// The Slack incoming-webhook payload: `text` (the notification and fallback) and `blocks` (the summary,
/// the facts a reviewer judges by, a button to the console).
fn slack_body(h: &Happening, link: &str) -> Value {
    let mut fields = Vec::new();
    let mut field = |label: &str, value: String| {
        fields.push(
            json!({"type": "mrkdwn", "text": format!("*{label}*\n{}", slack_escape(&value, SLACK_FIELD_CHARS))}),
        );
    };
    match h {
        Happening::Approval { approval: a, .. } => {
            field("Agent", a.agent_name.clone());
            field("Action", a.action.clone());
            let query = if a.query.is_empty() {
                String::new()
            } else {
                format!("?{}", a.query)
            };
            field("Request", format!("{} {}{query}", a.method, a.path));
            field(
                "Charge",
                a.charge_cents.map(money).unwrap_or_else(|| "none".into()),
            );
            field(
                "On behalf of",
                a.on_behalf_of.clone().unwrap_or_else(|| "not given".into()),
            );
            let reasons: Vec<String> = a
                .reasons
                .as_array()
                .map(|rs| {
                    rs.iter()
                        .map(|r| {
                            format!(
                                "{}: {}",
                                r["rule"].as_str().unwrap_or("?"),
                                r["message"].as_str().unwrap_or("")
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            field(
                "Reasons",
                if reasons.is_empty() {
                    "none given".into()
                } else {
                    reasons.join("\n")
                },
            );
            if a.decided_by.is_some() {
                field(
                    "Decided by",
                    format!(
                        "{} ({}){}",
                        a.decided_by.as_deref().unwrap_or_default(),
                        decided_word(a),
                        a.note
                            .as_deref()
                            .map(|n| format!(": {n}"))
                            .unwrap_or_default()
                    ),
                );
            }
        }
        Happening::Budget { window: w, .. } => {
            field("Provider", w.provider.clone());
            field("Budget", format!("{} {}", w.budget, w.subject));
            field(
                "Spent",
                format!(
                    "{} of {}",
                    money(w.committed_cents + w.reserved_cents),
                    money(w.cap_cents)
                ),
            );
        }
        Happening::Freeze(f) => {
            field(
                "By",
                f.changed_by.clone().unwrap_or_else(|| "unknown".into()),
            );
            field(
                "At",
                f.changed_at
                    .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
                    .to_rfc3339_opts(SecondsFormat::Secs, true),
            );
            if let Some(reason) = &f.reason {
                field("Reason", reason.clone());
            }
        }
    }
    let summary = h.summary();
    let button = match h {
        Happening::Approval {
            event: Event::ApprovalRequired,
            ..
        } => "Review in tollgate",
        _ => "Open in tollgate",
    };
    json!({
        "text": format!("{} <{link}|{button}>", slack_escape(&summary, SLACK_SECTION_CHARS)),
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": slack_escape(&summary, SLACK_SECTION_CHARS)}},
            {"type": "section", "fields": fields},
            {"type": "actions", "elements": [
                {"type": "button", "text": {"type": "plain_text", "text": button}, "url": link}
            ]},
        ],
    })
}

/// `t=<unix>,v1=<hex>`: HMAC-SHA256 with the webhook's secret over `"{t}.{body}"`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut message = format!("{timestamp}.").into_bytes();
    message.extend_from_slice(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(crate::redact::hmac_sha256(secret, &message))
    )
}

/// The wait before attempt `attempts + 1`: `initial · 2^(attempts−1)`, capped, then jittered down by up to
/// half so that deliveries failing together do not retry together. `unit` is a uniform draw from [0, 1).
fn backoff(attempts: i64, initial: Duration, cap: Duration, unit: f64) -> Duration {
    let exponent = u32::try_from(attempts.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
    let full = initial
        .saturating_mul(2u32.saturating_pow(exponent))
        .min(cap);
    full.mul_f64(1.0 - 0.5 * unit.clamp(0.0, 1.0))
}

type WebhookClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The notification tasks of one replica.
pub struct Notifier {
    config: Arc<Config>,
    store: Store,
    metrics: Arc<Metrics>,
    client: WebhookClient,
    /// Wakes the delivery loop when a sweep queued something.
    queued: tokio::sync::Notify,
}

/// Why an attempt did not deliver (the text recorded and shown; never a URL or secret).
struct Undelivered {
    http_status: Option<i32>,
    error: String,
}

impl Notifier {
    /// `None` when no webhook is configured: nothing to sweep or send.
    pub fn new(config: Arc<Config>, store: Store, metrics: Arc<Metrics>) -> Option<Arc<Notifier>> {
        if config.notifications.webhooks.is_empty() {
            return None;
        }
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.notifications.timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);
        for w in &config.notifications.webhooks {
            for result in ["delivered", "retried", "failed"] {
                metrics
                    .notifications_total
                    .with_label_values(&[&w.name, result]);
            }
        }
        Some(Arc::new(Notifier {
            config,
            store,
            metrics,
            client,
            queued: tokio::sync::Notify::new(),
        }))
    }

    /// Starts the sweep and the delivery loop.
    pub fn spawn(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let sweeper = self.clone();
        vec![
            tokio::spawn(async move { sweeper.sweep_forever().await }),
            tokio::spawn(self.clone().deliver_forever()),
        ]
    }

    async fn sweep_forever(&self) {
        let names = self.webhook_names();
        let mut remembered: HashSet<(String, String)> = HashSet::new();
        let mut tick = tokio::time::interval(self.config.notifications.sweep_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.sweep(&mut remembered, Utc::now()).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::debug!(queued = n, "notifications queued");
                    self.queued.notify_one();
                }
                Err(e) => tracing::debug!(error = %e, "notification sweep failed; next time"),
            }
            if let Ok(n) = self.store.notifications_pending(&names).await {
                self.metrics.notifications_pending.set(n);
            }
        }
    }

    /// Looks at durable state and queues what is new for each webhook; how many rows were new.
    async fn sweep(
        &self,
        remembered: &mut HashSet<(String, String)>,
        now: DateTime<Utc>,
    ) -> Result<u64, crate::store::StoreError> {
        let since = now - LOOKBACK;
        let mut happenings = Vec::new();
        for approval in self
            .store
            .approvals_to_announce(since, now, SWEEP_APPROVALS)
            .await?
        {
            let event = if approval.status == "pending" {
                Event::ApprovalRequired
            } else if approval.decided_at.is_some_and(|t| t >= since)
                && approval.decided_by.is_some()
            {
                Event::ApprovalDecided
            } else {
                continue;
            };
            happenings.push(Happening::Approval {
                event,
                approval: Box::new(approval),
            });
        }
        for window in self.store.spend(&crate::ledger::period(now)).await? {
            if window.cap_cents <= 0 {
                continue;
            }
            let spent = window.committed_cents + window.reserved_cents;
            // Only the highest threshold reached: a window found at 100 % is not also announced at 80 %.
            if let Some(threshold) = THRESHOLDS
                .into_iter()
                .find(|t| i128::from(spent) * 100 >= i128::from(window.cap_cents) * i128::from(*t))
            {
                happenings.push(Happening::Budget { window, threshold });
            }
        }
        let freeze = self.store.freeze_state().await?;
        if freeze.changed_by.is_some() && freeze.changed_at.is_some_and(|at| at >= since) {
            happenings.push(Happening::Freeze(freeze));
        }

        let public_url = self.config.admin.public_url.as_deref().unwrap_or_default();
        let mut rows = Vec::new();
        for h in &happenings {
            let key = h.key();
            for w in &self.config.notifications.webhooks {
                if !w.events.contains(&h.event())
                    || remembered.contains(&(w.name.clone(), key.clone()))
                {
                    continue;
                }
                let id = Uuid::now_v7();
                let link = h.link(public_url);
                let body = match w.format {
                    WebhookFormat::Slack => slack_body(h, &link),
                    WebhookFormat::Generic => generic_body(id, h, &link, now),
                };
                rows.push(NewNotification {
                    id,
                    webhook: w.name.clone(),
                    event: h.event().as_str().to_string(),
                    event_key: key.clone(),
                    subject: Some(h.subject()),
                    body: body.to_string(),
                    created_at: now,
                });
            }
        }
        if rows.is_empty() {
            return Ok(0);
        }
        let added = self.store.enqueue_notifications(&rows).await?;
        if remembered.len() + rows.len() > REMEMBERED {
            remembered.clear();
        }
        remembered.extend(rows.into_iter().map(|r| (r.webhook, r.event_key)));
        Ok(added)
    }

    /// Claims due deliveries while it has free slots and sends each on a task of its own, so one
    /// receiver that hangs holds its own webhook's slots (each for at most `timeout_ms`), never another webhook's.
    async fn deliver_forever(self: Arc<Self>) {
        let names = self.webhook_names();
        let lease = self.config.notifications.timeout + LEASE_MARGIN;
        let slots: Vec<(String, Arc<tokio::sync::Semaphore>)> = names
            .iter()
            .map(|n| {
                let slots = tokio::sync::Semaphore::new(IN_FLIGHT_PER_WEBHOOK);
                (n.clone(), Arc::new(slots))
            })
            .collect();
        loop {
            // Each webhook claims only as many of its own due rows as it has free slots.
            let mut claimed = Vec::new();
            for (name, free_slots) in &slots {
                let free = free_slots.available_permits();
                if free == 0 {
                    continue;
                }
                let now = Utc::now();
                let owner = Uuid::now_v7();
                let limit = i64::try_from(free).unwrap_or(1);
                let rows = match self
                    .store
                    .claim_notifications(std::slice::from_ref(name), now, now + lease, owner, limit)
                    .await
                {
                    Ok(rows) => rows,
                    Err(e) => {
                        tracing::debug!(error = %e, "claiming notifications failed; next time");
                        Vec::new()
                    }
                };
                for row in rows {
                    // Only this loop takes slots, and it claimed no more than were free: this succeeds. A row
                    // it did not would stay leased and be sent after its lease ran out.
                    if let Ok(slot) = free_slots.clone().try_acquire_owned() {
                        claimed.push((owner, row, slot));
                    }
                }
            }
            if claimed.is_empty() {
                // Until a sweep queues something, a send finishes, or a retry falls due.
                let _ = tokio::time::timeout(
                    self.config.notifications.sweep_interval,
                    self.queued.notified(),
                )
                .await;
                continue;
            }
            for (owner, row, slot) in claimed {
                let Some(webhook) = self
                    .config
                    .notifications
                    .webhooks
                    .iter()
                    .find(|w| w.name == row.webhook)
                    .cloned()
                else {
                    continue;
                };
                let this = self.clone();
                tokio::spawn(async move {
                    let result = send(
                        &this.client,
                        &webhook,
                        &row,
                        this.config.notifications.timeout,
                    )
                    .await;
                    this.record(owner, &webhook, &row, result).await;
                    drop(slot);
                    this.queued.notify_one();
                });
            }
        }
    }

    fn webhook_names(&self) -> Vec<String> {
        self.config
            .notifications
            .webhooks
            .iter()
            .map(|w| w.name.clone())
            .collect()
    }

    /// Writes down one attempt and counts it.
    async fn record(
        &self,
        owner: Uuid,
        webhook: &WebhookConfig,
        row: &NotificationRow,
        result: Result<i32, Undelivered>,
    ) {
        let n = &self.config.notifications;
        let at = Utc::now();
        let (http_status, error) = match result {
            Ok(status) => (Some(status), None),
            Err(u) => (u.http_status, Some(u.error)),
        };
        let next = if error.is_none() {
            NextStep::Delivered
        } else if row.attempts >= i64::from(n.max_attempts) {
            NextStep::GiveUp
        } else {
            let wait = backoff(
                row.attempts,
                n.backoff_initial,
                n.backoff_max,
                rand::random::<f64>(),
            );
            NextStep::RetryAt(
                at + chrono::TimeDelta::from_std(wait).unwrap_or(chrono::TimeDelta::MAX),
            )
        };
        let why = error.as_deref().unwrap_or_default();
        let result = match next {
            NextStep::Delivered => {
                tracing::info!(webhook = %webhook.name, event = %row.event, delivery = %row.id,
                    attempts = row.attempts, "notification delivered");
                "delivered"
            }
            NextStep::GiveUp => {
                tracing::error!(webhook = %webhook.name, event = %row.event, delivery = %row.id,
                    attempts = row.attempts, error = why, "notification not delivered; giving up");
                "failed"
            }
            NextStep::RetryAt(_) => {
                tracing::warn!(webhook = %webhook.name, event = %row.event, delivery = %row.id,
                    attempts = row.attempts, error = why, "notification not delivered; will retry");
                "retried"
            }
        };
        self.metrics
            .notifications_total
            .with_label_values(&[&webhook.name, result])
            .inc();
        let attempt = DeliveryAttempt {
            at,
            http_status,
            error,
            next,
        };
        match self
            .store
            .finish_notification(row.id, owner, &attempt)
            .await
        {
            Ok(true) => {}
            Ok(false) => tracing::warn!(webhook = %webhook.name, delivery = %row.id,
                "a notification's lease ran out before its attempt was recorded; another replica may send it again"),
            // The lease runs out and the row is claimed again: sent once more, never lost.
            Err(e) => tracing::warn!(webhook = %webhook.name, delivery = %row.id, error = %e,
                "a notification attempt could not be recorded; it will be sent again"),
        }
    }
}

/// Posts one delivery: the stored body as it is, with the event and delivery headers, and for a generic
/// webhook the signature made now. Ok(status) on a 2xx answer within the timeout.
async fn send(
    client: &WebhookClient,
    webhook: &WebhookConfig,
    row: &NotificationRow,
    timeout: Duration,
) -> Result<i32, Undelivered> {
    let failed = |error: String| Undelivered {
        http_status: None,
        error,
    };
    let Some(url) = &webhook.url else {
        return Err(failed("the webhook has no URL configured".into()));
    };
    let uri = url
        .expose_secret()
        .parse::<http::Uri>()
        .map_err(|_| failed("the webhook URL is not a URL".into()))?;
    let body = Bytes::from(row.body.clone());
    let mut request = Request::post(uri)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("tollgate/", env!("CARGO_PKG_VERSION")),
        )
        .header(EVENT_HEADER, row.event.as_str())
        .header(DELIVERY_HEADER, row.id.to_string());
    if webhook.format == WebhookFormat::Generic {
        let Some(secret) = &webhook.secret else {
            return Err(failed(
                "the webhook has no signing secret configured".into(),
            ));
        };
        let sig = signature(
            secret.expose_secret().as_bytes(),
            Utc::now().timestamp(),
            &body,
        );
        let value = HeaderValue::from_str(&sig)
            .map_err(|_| failed("the signature is not a header value".into()))?;
        request = request.header(SIGNATURE_HEADER, value);
    }
    let request = request
        .body(Full::new(body))
        .map_err(|_| failed("the request could not be built".into()))?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| failed(describe(&e)))?;
        let status = response.status();
        // Read (a bounded part of) the answer so the connection can be reused; its content is not kept.
        let _ = http_body_util::BodyExt::collect(http_body_util::Limited::new(
            response.into_body(),
            ANSWER_LIMIT,
        ))
        .await;
        Ok::<_, Undelivered>(status)
    };
    let status = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| failed(format!("no answer within {} ms", timeout.as_millis())))??;
    if status.is_success() {
        Ok(i32::from(status.as_u16()))
    } else {
        Err(Undelivered {
            http_status: Some(i32::from(status.as_u16())),
            error: format!("the receiver answered {status}"),
        })
    }
}

/// An error and its causes, one line. hyper's client errors name the failure (connect, TLS, protocol), not
/// the URL.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn approval() -> ApprovalRow {
        ApprovalRow {
            id: Uuid::nil(),
            fingerprint: "fp".into(),
            agent_id: Uuid::nil(),
            agent_name: "deployer<!here>".into(),
            provider: "stripe".into(),
            method: "POST".into(),
            path: "/v1/payment_intents".into(),
            query: String::new(),
            headers: String::new(),
            body_sha256: "abc".into(),
            action: "stripe.payment.create".into(),
            reasons: json!([{"rule": "spend.single_charge", "message": "charges above $50 need a human"}]),
            charge_cents: Some(6000),
            status: "pending".into(),
            created_at: Utc::now(),
            expires_at: Utc::now(),
            requested_by_decision: Uuid::nil(),
            on_behalf_of: Some("alice@example.com".into()),
            decided_by: None,
            decided_at: None,
            note: None,
            consumed_at: None,
            consumed_by_decision: None,
        }
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // The HMAC itself is checked against RFC 4231 in `redact`; this checks the framing.
        let sig = signature(b"secret", 1_700_000_000, b"{\"a\":1}");
        let expected = hex::encode(crate::redact::hmac_sha256(
            b"secret",
            b"1700000000.{\"a\":1}",
        ));
        assert_eq!(sig, format!("t=1700000000,v1={expected}"));
    }

    #[test]
    fn backoff_doubles_is_capped_and_jittered_down_by_at_most_half() {
        let (i, cap) = (Duration::from_millis(100), Duration::from_millis(1000));
        let check = |attempts, unit, ms| {
            assert_eq!(
                backoff(attempts, i, cap, unit),
                Duration::from_millis(ms),
                "{attempts} {unit}"
            )
        };
        check(1, 0.0, 100);
        check(2, 0.0, 200);
        check(3, 0.0, 400);
        check(5, 0.0, 1000);
        check(60, 0.0, 1000);
        check(1, 0.5, 75);
        check(5, 1.0, 500);
    }

    #[test]
    fn event_keys_name_the_event_once() {
        let a = approval();
        let required = Happening::Approval {
            event: Event::ApprovalRequired,
            approval: Box::new(a.clone()),
        };
        assert_eq!(required.key(), format!("approval_required:{}", a.id));
        let w = SpendRow {
            budget: "agent-provider-month".into(),
            subject: "deployer".into(),
            period: "2026-12".into(),
            provider: "stripe".into(),
            cap_cents: 10_000,
            committed_cents: 8_000,
            reserved_cents: 0,
            flagged_cents: 0,
        };
        let b = Happening::Budget {
            window: w,
            threshold: 80,
        };
        assert_eq!(
            b.key(),
            "budget_threshold:stripe:agent-provider-month:deployer:2026-12:80"
        );
        for e in Event::ALL {
            assert_eq!(Event::parse(e.as_str()), Some(e));
        }
    }

    #[test]
    fn payloads_carry_the_summary_and_link_and_escape_slack_markup() {
        let h = Happening::Approval {
            event: Event::ApprovalRequired,
            approval: Box::new(approval()),
        };
        let link = h.link("https://tollgate.example.com");
        assert_eq!(
            link,
            format!("https://tollgate.example.com/approvals/{}", Uuid::nil())
        );
        let slack = slack_body(&h, &link).to_string();
        assert!(slack.contains("deployer&lt;!here&gt;"), "{slack}");
        assert!(!slack.contains("<!here>"), "{slack}");
        assert!(slack.contains("$60.00") && slack.contains("alice@example.com"));
        assert!(slack.contains(&link));
        let generic = generic_body(Uuid::nil(), &h, &link, Utc::now());
        assert_eq!(generic["event"], "approval_required");
        assert_eq!(generic["approval"]["charge_cents"], 6000);
        assert_eq!(generic["link"], link.as_str());
        assert!(generic["approval"].get("fingerprint").is_none());
        assert_eq!(money(-5), "-$0.05");
        assert_eq!(slack_escape("a<b", 10), "a&lt;b");
        assert_eq!(slack_escape("abcdef", 4), "abc…");
        assert_eq!(slack_escape("ab<cdef", 5), "ab…", "no half entity");
    }

    #[test]
    fn a_long_path_is_cut_to_slacks_limits() {
        let mut a = approval();
        a.path = format!("/v1/{}", "x".repeat(5_000));
        let h = Happening::Approval {
            event: Event::ApprovalRequired,
            approval: Box::new(a),
        };
        let body = slack_body(&h, "https://t.example/approvals/1");
        for field in body["blocks"][1]["fields"].as_array().unwrap() {
            assert!(field["text"].as_str().unwrap().chars().count() <= 2_000);
        }
        assert!(
            body["blocks"][0]["text"]["text"]
                .as_str()
                .unwrap()
                .chars()
                .count()
                <= 3_000
        );
    }
}
