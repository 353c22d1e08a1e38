//! Spend budgets: which window a charge counts against, its atomic reservation before forwarding, and its
//! settlement on the upstream response.
//!
//! Owns: the budget names a policy may use (`agent-provider-month`, `team-provider-month`) and how each maps
//! to a window key (budget, subject, calendar month in UTC — a new month is a new row, so there is no reset),
//! and the settlement rule: 2xx commits, a definite failure releases, an unknown outcome stays reserved and is
//! flagged. The atomicity itself is one conditional UPDATE in `store`.
//! Must not: decide policy. The charge, budget and cap come from the decision; the ledger only enforces them.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::Envelope;
use crate::identity::Agent;
use crate::store::{
    FlaggedReservation, ManualSettlement, NewReservation, Reservation, Store, StoreError, WindowKey,
};

/// The budget the Stripe Projects default cap is about: one agent, one provider, one calendar month.
pub const AGENT_PROVIDER_MONTH: &str = "agent-provider-month";
/// One team (all its agents), one provider, one calendar month.
pub const TEAM_PROVIDER_MONTH: &str = "team-provider-month";
/// One connected account (Stripe-Account / Stripe-Context as sent; the platform account when absent), all
/// agents, one provider, one calendar month.
pub const ACCOUNT_PROVIDER_MONTH: &str = "account-provider-month";

/// Body fields that carry money or multiply it (Stripe: smallest currency unit, integers). Checked before
/// the policy runs, so a charge is never computed from a negative, fractional or overflowing amount.
const MONEY_FIELDS: &[&str] = &["amount", "amount_to_capture", "unit_amount", "quantity"];
/// Money amounts above this are refused: it keeps every sum and product the policy or ledger forms far from
/// i64 overflow (10^12 cents is ten billion dollars).
const MAX_AMOUNT: u64 = 1_000_000_000_000;

/// Refuses (400) money fields anywhere in the body that are not non-negative integers within range: Stripe
/// form values must be digit strings, JSON values integral numbers. The message names the field.
pub fn check_amounts(body: &serde_json::Value) -> Result<(), crate::canon::Malformed> {
    use serde_json::Value;
    fn walk(v: &Value, path: &mut Vec<String>) -> Result<(), crate::canon::Malformed> {
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    path.push(k.clone());
                    if MONEY_FIELDS.contains(&k.as_str()) {
                        let ok = match child {
                            Value::String(s) => {
                                !s.is_empty()
                                    && s.len() <= 13
                                    && s.bytes().all(|b| b.is_ascii_digit())
                                    && s.parse::<u64>().is_ok_and(|n| n <= MAX_AMOUNT)
                            }
                            Value::Number(n) => n.as_u64().is_some_and(|n| n <= MAX_AMOUNT),
                            Value::Null => true,
                            _ => false,
                        };
                        if !ok {
                            return Err(crate::canon::Malformed::new(format!(
                                "{} must be a non-negative integer amount (at most {MAX_AMOUNT}), got {child}",
                                path.join(".")
                            )));
                        }
                    } else {
                        walk(child, path)?;
                    }
                    path.pop();
                }
                Ok(())
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    path.push(i.to_string());
                    walk(item, path)?;
                    path.pop();
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
    walk(body, &mut Vec::new())
}

/// What happened upstream, as far as money is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// 2xx: the provider did it.
    Commit,
    /// A definite failure (an error response, or the connection never opened): nothing was bought.
    Release,
    /// No answer after the request may have been sent: keep the money reserved and flag it for a human.
    Unknown,
}

/// How long a request's lifecycle keeps trying to settle its reservation while the store is away.
pub const SETTLE_PERSISTENCE: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Clone)]
pub struct Ledger {
    store: Store,
}

/// The calendar month of `now` in UTC, e.g. `2026-11`.
pub fn period(now: DateTime<Utc>) -> String {
    now.format("%Y-%m").to_string()
}

/// The first instant of the calendar month of `now` (UTC) and of the next one: the budget window's bounds
/// (end exclusive), which the policy reads as `spend.window_start` / `spend.window_end` to price recurring
/// money inside the window.
pub fn window_bounds(now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    use chrono::{Datelike, TimeZone};
    let start = Utc
        .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .single()
        .unwrap_or(now);
    let (year, month) = if now.month() == 12 {
        (now.year() + 1, 1)
    } else {
        (now.year(), now.month() + 1)
    };
    let end = Utc
        .with_ymd_and_hms(year, month, 1, 0, 0, 0)
        .single()
        .unwrap_or(now);
    (start, end)
}

/// The window a named budget means for this agent, provider and connected account (`account`: the
/// account headers as sent, empty for the platform account); unknown budgets are an error (the request is
/// refused, never charged nowhere).
pub fn window(
    budget: &str,
    agent: &Agent,
    provider: &str,
    account: &str,
    now: DateTime<Utc>,
) -> Result<WindowKey, String> {
    let subject = match budget {
        AGENT_PROVIDER_MONTH => format!("agent:{}/{provider}", agent.principal_id()),
        TEAM_PROVIDER_MONTH => match &agent.team {
            Some(team) => format!("team:{team}/{provider}"),
            None => return Err(format!("budget '{budget}' needs an agent with a team")),
        },
        ACCOUNT_PROVIDER_MONTH if account.is_empty() => format!("account:{provider}/platform"),
        ACCOUNT_PROVIDER_MONTH => format!("account:{provider}/{account}"),
        other => {
            return Err(format!(
                "unknown budget '{other}' (known: {AGENT_PROVIDER_MONTH}, {TEAM_PROVIDER_MONTH}, \
                 {ACCOUNT_PROVIDER_MONTH})"
            ));
        }
    };
    Ok(WindowKey {
        budget: budget.to_string(),
        subject,
        period: period(now),
    })
}

impl Settlement {
    /// What an upstream response proves, as far as money goes. Only evidence releases a reservation:
    /// - 2xx: done, committed — unless the provider says it replayed an earlier result
    ///   (`Idempotent-Replayed: true`), which spent nothing new.
    /// - 4xx in the provider's own error envelope (Stripe `{"error": {"type": …}}`, Cloudflare
    ///   `{"success": false}`): the provider refused the request, released. With the plain envelope a 4xx
    ///   status is all there is, and it is taken as a refusal.
    /// - Anything else (5xx, 1xx/3xx, a 4xx whose body is not the provider's envelope, e.g. from a load
    ///   balancer in front of it): the request may have been acted on. It stays reserved, flagged for an
    ///   operator (`tollgate spend flagged`).
    pub fn of_response(
        status: u16,
        envelope: Envelope,
        replayed: bool,
        body: Option<&[u8]>,
    ) -> Settlement {
        match status {
            200..=299 if replayed => Settlement::Release,
            200..=299 => Settlement::Commit,
            400..=499 => match envelope {
                Envelope::Plain => Settlement::Release,
                Envelope::Stripe | Envelope::Cloudflare => {
                    let parsed =
                        body.and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok());
                    let refused = parsed.as_ref().is_some_and(|v| match envelope {
                        Envelope::Stripe => v.pointer("/error/type").is_some_and(|t| t.is_string()),
                        _ => v.get("success") == Some(&serde_json::Value::Bool(false)),
                    });
                    if refused {
                        Settlement::Release
                    } else {
                        Settlement::Unknown
                    }
                }
            },
            _ => Settlement::Unknown,
        }
    }

    /// What the answer to a retry that took over an earlier attempt's reservation proves (see
    /// `Reservation::ReservedReplacing`): the same request with the same Idempotency-Key, whose earlier
    /// attempt's outcome was unknown. The provider acts on a key at most once, so a 2xx — replayed (the earlier
    /// attempt ran) or fresh (it did not, the retry did) — means the call ran once: committed. A refusal
    /// releases the call's money only when it is the provider's saved answer to the key
    /// (`Idempotent-Replayed: true`): a fresh refusal (a 429 rate limit, a 401, a 409 "key in use") may come
    /// before the provider looks at the key at all and proves nothing about the earlier attempt, so the money
    /// stays reserved, flagged for an operator.
    pub fn of_retry(
        status: u16,
        envelope: Envelope,
        replayed: bool,
        body: Option<&[u8]>,
    ) -> Settlement {
        match Settlement::of_response(status, envelope, false, body) {
            Settlement::Commit => Settlement::Commit,
            Settlement::Release if replayed => Settlement::Release,
            _ => Settlement::Unknown,
        }
    }

    /// Whether [`Settlement::of_response`] needs the response body to decide.
    pub fn needs_body(status: u16, envelope: Envelope) -> bool {
        (400..500).contains(&status) && envelope != Envelope::Plain
    }
}

impl Ledger {
    pub fn new(store: Store) -> Ledger {
        Ledger { store }
    }

    /// Committed plus reserved cents in a window.
    pub async fn spent(&self, window: &WindowKey) -> Result<i64, StoreError> {
        self.store.window_spent(window).await
    }

    pub async fn reserve(
        &self,
        reservation: &NewReservation<'_>,
    ) -> Result<Reservation, StoreError> {
        self.store.reserve(reservation).await
    }

    /// Applies a settlement; returns the committed cents (for metrics) when a reservation was committed.
    pub async fn settle(
        &self,
        decision_id: Uuid,
        settlement: Settlement,
    ) -> Result<Option<i64>, StoreError> {
        match settlement {
            Settlement::Commit => self.store.settle(decision_id, true).await,
            Settlement::Release => self.store.settle(decision_id, false).await.map(|_| None),
            Settlement::Unknown => self.store.flag_reservation(decision_id).await.map(|_| None),
        }
    }

    /// Settles like [`Ledger::settle`], trying again with backoff while the store is unreachable (settling
    /// is idempotent: only a reservation still `reserved` moves). Gives up after [`SETTLE_PERSISTENCE`];
    /// what is still unsettled then is flagged by [`Ledger::flag_stale`] for an operator.
    pub async fn settle_persistently(
        &self,
        decision_id: Uuid,
        settlement: Settlement,
    ) -> Result<Option<i64>, StoreError> {
        let started = std::time::Instant::now();
        let mut pause = std::time::Duration::from_millis(100);
        loop {
            match self.settle(decision_id, settlement).await {
                Ok(moved) => return Ok(moved),
                Err(e) if started.elapsed() + pause > SETTLE_PERSISTENCE => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, %decision_id, "settlement failed; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_secs(5));
                }
            }
        }
    }

    /// Flags reservations left `reserved` by lifecycles that ended without settling (the store away for
    /// longer than [`SETTLE_PERSISTENCE`], a killed process): older than `age`, they are counted against the
    /// cap until an operator settles them, and now listed for one.
    pub async fn flag_stale(&self, age: std::time::Duration) -> Result<u64, StoreError> {
        let before = Utc::now() - chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
        self.store.flag_stale_reservations(before).await
    }

    /// Reservations whose outcome is unknown and that no one has settled yet.
    pub async fn flagged(&self) -> Result<Vec<FlaggedReservation>, StoreError> {
        self.store.flagged_reservations().await
    }

    /// An operator's settlement of a flagged reservation (who and why are recorded); the cents moved, or
    /// `None` when `decision_id` is not a flagged reservation still open.
    pub async fn settle_flagged(
        &self,
        decision_id: Uuid,
        how: ManualSettlement,
        by: &str,
        note: &str,
    ) -> Result<Option<i64>, StoreError> {
        self.store.settle_flagged(decision_id, how, by, note).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_that_took_over_settles_the_call() {
        let refused = br#"{"error": {"type": "card_error"}}"#;
        let limited = br#"{"error": {"type": "invalid_request_error", "code": "rate_limit"}}"#;
        // Replayed or run anew, a 2xx means the call ran once: committed.
        assert_eq!(
            Settlement::of_response(200, Envelope::Stripe, true, None),
            Settlement::Release,
            "a plain replay spends nothing new"
        );
        for replayed in [true, false] {
            assert_eq!(
                Settlement::of_retry(200, Envelope::Stripe, replayed, None),
                Settlement::Commit,
                "but a retry carries its earlier attempt's money"
            );
        }
        // The provider's saved refusal for the key: the call was refused.
        assert_eq!(
            Settlement::of_retry(402, Envelope::Stripe, true, Some(refused)),
            Settlement::Release
        );
        // A fresh refusal may predate the key lookup (found by an attacker: a 429 after a timed-out first
        // attempt wiped the money of a payment the provider had made).
        assert_eq!(
            Settlement::of_retry(429, Envelope::Stripe, false, Some(limited)),
            Settlement::Unknown
        );
        assert_eq!(
            Settlement::of_retry(402, Envelope::Stripe, false, Some(refused)),
            Settlement::Unknown
        );
        // Nothing learned.
        assert_eq!(
            Settlement::of_retry(500, Envelope::Stripe, true, None),
            Settlement::Unknown
        );
        assert_eq!(
            Settlement::of_retry(409, Envelope::Stripe, false, Some(refused)),
            Settlement::Unknown
        );
    }

    fn agent(team: Option<&str>) -> Agent {
        Agent {
            id: Uuid::nil(),
            name: "a".into(),
            team: team.map(str::to_string),
            scopes: vec![],
            labels: Default::default(),
            expires_at: None,
            minted: None,
        }
    }

    #[test]
    fn windows_are_keyed_by_calendar_month() {
        let now = DateTime::parse_from_rfc3339("2026-11-30T23:59:59Z")
            .unwrap()
            .with_timezone(&Utc);
        let w = window(AGENT_PROVIDER_MONTH, &agent(None), "stripe", "", now).unwrap();
        assert_eq!(w.period, "2026-11");
        assert_eq!(
            w.subject,
            "agent:00000000-0000-0000-0000-000000000000/stripe"
        );
        let next = now + chrono::Duration::seconds(1);
        assert_eq!(
            window(AGENT_PROVIDER_MONTH, &agent(None), "stripe", "", next)
                .unwrap()
                .period,
            "2026-12"
        );
        assert_eq!(
            window(
                TEAM_PROVIDER_MONTH,
                &agent(Some("web")),
                "cloudflare",
                "",
                now
            )
            .unwrap()
            .subject,
            "team:web/cloudflare"
        );
        assert!(window(TEAM_PROVIDER_MONTH, &agent(None), "cloudflare", "", now).is_err());
        assert!(window("forever", &agent(None), "cloudflare", "", now).is_err());
        // Per connected account: every agent acting on it shares the window; no header is the platform.
        assert_eq!(
            window(
                ACCOUNT_PROVIDER_MONTH,
                &agent(None),
                "stripe",
                "acct_1",
                now
            )
            .unwrap()
            .subject,
            "account:stripe/acct_1"
        );
        assert_eq!(
            window(ACCOUNT_PROVIDER_MONTH, &agent(None), "stripe", "", now)
                .unwrap()
                .subject,
            "account:stripe/platform"
        );
        let (start, end) = window_bounds(now);
        assert_eq!(start.to_rfc3339(), "2026-11-01T00:00:00+00:00");
        assert_eq!(end.to_rfc3339(), "2026-12-01T00:00:00+00:00");
        let (start, end) = window_bounds(next);
        assert_eq!(start.to_rfc3339(), "2026-12-01T00:00:00+00:00");
        assert_eq!(end.to_rfc3339(), "2027-01-01T00:00:00+00:00");
    }

    #[test]
    fn money_fields_must_be_non_negative_integers() {
        use serde_json::json;
        let ok = |v| check_amounts(&v).is_ok();
        assert!(ok(json!({"amount": "1999", "currency": "usd"})));
        assert!(ok(
            json!({"items": [{"price_data": {"unit_amount": "2500"}, "quantity": "2"}]})
        ));
        assert!(ok(json!({"amount": 1999})));
        assert!(
            ok(json!({"metadata": {"note": "-5"}})),
            "only money fields are checked"
        );
        for bad in [
            json!({"amount": "-1"}),
            json!({"amount": "12.50"}),
            json!({"amount": "1e3"}),
            json!({"amount": ""}),
            json!({"amount": "99999999999999999999"}),
            json!({"amount": -1}),
            json!({"amount": 1.5}),
            json!({"items": [{"quantity": "two"}]}),
            json!({"amount": true}),
        ] {
            let err = check_amounts(&bad).unwrap_err();
            assert!(err.message().contains("non-negative integer"), "{bad}");
        }
        let err =
            check_amounts(&json!({"items": [{"price_data": {"unit_amount": "x"}}]})).unwrap_err();
        assert!(
            err.message().starts_with("items.0.price_data.unit_amount"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn settlement_by_evidence() {
        use Envelope::{Cloudflare, Plain, Stripe};
        let of = Settlement::of_response;
        assert_eq!(of(200, Stripe, false, None), Settlement::Commit);
        assert_eq!(of(201, Cloudflare, false, None), Settlement::Commit);
        // A replayed result spent nothing new.
        assert_eq!(of(200, Stripe, true, None), Settlement::Release);
        // The provider's own refusal envelope proves nothing was done.
        let card_error =
            br#"{"error": {"type": "card_error", "code": "card_declined", "message": "no"}}"#;
        assert_eq!(
            of(402, Stripe, false, Some(card_error)),
            Settlement::Release
        );
        let invalid = br#"{"error": {"type": "invalid_request_error", "message": "bad"}}"#;
        assert_eq!(of(400, Stripe, false, Some(invalid)), Settlement::Release);
        let cf =
            br#"{"success": false, "errors": [{"code": 1004, "message": "bad"}], "result": null}"#;
        assert_eq!(of(400, Cloudflare, false, Some(cf)), Settlement::Release);
        // A 4xx without the envelope (a load balancer's page, an empty body) proves nothing.
        assert_eq!(
            of(403, Stripe, false, Some(b"<html>nope</html>")),
            Settlement::Unknown
        );
        assert_eq!(of(400, Stripe, false, None), Settlement::Unknown);
        assert_eq!(
            of(409, Cloudflare, false, Some(br#"{"success": true}"#)),
            Settlement::Unknown
        );
        assert_eq!(
            of(400, Cloudflare, false, Some(invalid)),
            Settlement::Unknown
        );
        assert_eq!(of(404, Plain, false, None), Settlement::Release);
        // 5xx and anything else: the request may have been acted on.
        for status in [500, 502, 503, 504, 302, 101] {
            assert_eq!(
                of(status, Stripe, false, Some(invalid)),
                Settlement::Unknown,
                "{status}"
            );
            assert_eq!(
                of(status, Plain, false, None),
                Settlement::Unknown,
                "{status}"
            );
        }
        assert!(Settlement::needs_body(402, Stripe));
        assert!(!Settlement::needs_body(500, Stripe));
        assert!(!Settlement::needs_body(404, Plain));
    }
}
