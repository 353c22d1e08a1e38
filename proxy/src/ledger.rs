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

use crate::identity::Agent;
use crate::store::{NewReservation, Reservation, Store, StoreError, WindowKey};

/// The budget the Stripe Projects default cap is about: one agent, one provider, one calendar month.
pub const AGENT_PROVIDER_MONTH: &str = "agent-provider-month";
/// One team (all its agents), one provider, one calendar month.
pub const TEAM_PROVIDER_MONTH: &str = "team-provider-month";

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

#[derive(Clone)]
pub struct Ledger {
    store: Store,
}

/// The calendar month of `now` in UTC, e.g. `2026-11`.
pub fn period(now: DateTime<Utc>) -> String {
    now.format("%Y-%m").to_string()
}

/// The window a named budget means for this agent and provider; unknown budgets are an error (the request is
/// refused, never charged nowhere).
pub fn window(
    budget: &str,
    agent: &Agent,
    provider: &str,
    now: DateTime<Utc>,
) -> Result<WindowKey, String> {
    let subject = match budget {
        AGENT_PROVIDER_MONTH => format!("agent:{}/{provider}", agent.id),
        TEAM_PROVIDER_MONTH => match &agent.team {
            Some(team) => format!("team:{team}/{provider}"),
            None => return Err(format!("budget '{budget}' needs an agent with a team")),
        },
        other => {
            return Err(format!(
                "unknown budget '{other}' (known: {AGENT_PROVIDER_MONTH}, {TEAM_PROVIDER_MONTH})"
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
    /// Upstream status (if a response came) → what to do with the reservation.
    pub fn of_response(status: u16) -> Settlement {
        if (200..300).contains(&status) {
            Settlement::Commit
        } else {
            Settlement::Release
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(team: Option<&str>) -> Agent {
        Agent {
            id: Uuid::nil(),
            name: "a".into(),
            team: team.map(str::to_string),
            scopes: vec![],
            labels: Default::default(),
            expires_at: None,
        }
    }

    #[test]
    fn windows_are_keyed_by_calendar_month() {
        let now = DateTime::parse_from_rfc3339("2026-11-30T23:59:59Z")
            .unwrap()
            .with_timezone(&Utc);
        let w = window(AGENT_PROVIDER_MONTH, &agent(None), "stripe", now).unwrap();
        assert_eq!(w.period, "2026-11");
        assert_eq!(
            w.subject,
            "agent:00000000-0000-0000-0000-000000000000/stripe"
        );
        let next = now + chrono::Duration::seconds(1);
        assert_eq!(
            window(AGENT_PROVIDER_MONTH, &agent(None), "stripe", next)
                .unwrap()
                .period,
            "2026-12"
        );
        assert_eq!(
            window(TEAM_PROVIDER_MONTH, &agent(Some("web")), "cloudflare", now)
                .unwrap()
                .subject,
            "team:web/cloudflare"
        );
        assert!(window(TEAM_PROVIDER_MONTH, &agent(None), "cloudflare", now).is_err());
        assert!(window("forever", &agent(None), "cloudflare", now).is_err());
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
    fn settlement_by_status() {
        assert_eq!(Settlement::of_response(200), Settlement::Commit);
        assert_eq!(Settlement::of_response(201), Settlement::Commit);
        assert_eq!(Settlement::of_response(402), Settlement::Release);
        assert_eq!(Settlement::of_response(500), Settlement::Release);
    }
}
