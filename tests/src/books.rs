//! The books as the store holds them, read the same way from Postgres or from the embedded SQLite file, so a
//! fault scenario can run on both stores and end with one check of the invariants.
//!
//! [`Books::check`] asserts what ARCHITECTURE.md promises whatever failed: every request the upstream
//! received has exactly one committed `allow` decision, every outcome row belongs to an allowed decision (and
//! a decision has at most one), every reservation is committed, released or flagged (and only a released one
//! may lack its decision: its record could not be committed), and each budget window's committed and
//! reserved spend are the sums of its committed and flagged charges.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context as _, bail};
use sqlx::Row as _;

/// A read-only view of one tollgate's store.
pub enum Books {
    Postgres(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

#[derive(Debug, Clone)]
pub struct DecisionFact {
    pub id: String,
    pub outcome: String,
    pub code: Option<String>,
    pub agent_name: Option<String>,
    /// Bytes of the stored policy input.
    pub input_bytes: i64,
}

#[derive(Debug, Clone)]
pub struct OutcomeFact {
    pub decision_id: String,
    pub upstream_status: Option<i64>,
    pub error: Option<String>,
    pub flagged: bool,
}

#[derive(Debug, Clone)]
pub struct ReservationFact {
    pub decision_id: String,
    pub budget: String,
    pub subject: String,
    pub period: String,
    pub cents: i64,
    pub state: String,
    pub flagged: bool,
}

#[derive(Debug, Clone)]
pub struct WindowFact {
    pub budget: String,
    pub subject: String,
    pub period: String,
    pub committed_cents: i64,
    pub reserved_cents: i64,
}

#[derive(Debug, Clone)]
pub struct ApprovalFact {
    pub id: String,
    pub status: String,
    pub requested_by_decision: String,
}

/// Runs one query on whichever store and maps its rows with the same closure (both row types implement
/// `sqlx::Row`, and every column is read as text or integer).
macro_rules! rows {
    ($books:expr, $pg:expr, $lite:expr, |$r:ident| $map:expr) => {
        match $books {
            Books::Postgres(pool) => sqlx::query($pg)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|$r| Ok($map))
                .collect::<anyhow::Result<Vec<_>>>(),
            Books::Sqlite(pool) => sqlx::query($lite)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|$r| Ok($map))
                .collect::<anyhow::Result<Vec<_>>>(),
        }
    };
}

impl Books {
    pub async fn postgres(url: &str) -> anyhow::Result<Books> {
        Ok(Books::Postgres(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(2)
                .connect(url)
                .await?,
        ))
    }

    /// The embedded store in a tollgate's directory (`tollgate.db`), opened beside the running server.
    pub async fn embedded(dir: &Path) -> anyhow::Result<Books> {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.join("tollgate.db"))
            .busy_timeout(std::time::Duration::from_secs(5));
        Ok(Books::Sqlite(
            sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options)
                .await
                .context("opening the embedded store")?,
        ))
    }

    pub async fn decisions(&self) -> anyhow::Result<Vec<DecisionFact>> {
        rows!(
            self,
            "SELECT id::text AS id, outcome, code, agent_name,
                    coalesce(octet_length(input::text), 0)::bigint AS input_bytes
             FROM decisions ORDER BY at, id",
            "SELECT id, outcome, code, agent_name, coalesce(length(CAST(input AS BLOB)), 0) AS input_bytes
             FROM decisions ORDER BY at, id",
            |r| DecisionFact {
                id: r.try_get("id")?,
                outcome: r.try_get("outcome")?,
                code: r.try_get("code")?,
                agent_name: r.try_get("agent_name")?,
                input_bytes: r.try_get("input_bytes")?,
            }
        )
    }

    pub async fn outcomes(&self) -> anyhow::Result<Vec<OutcomeFact>> {
        rows!(
            self,
            "SELECT decision_id::text AS decision_id, upstream_status::bigint AS upstream_status, error,
                    flagged FROM decision_outcomes",
            "SELECT decision_id, upstream_status, error, flagged FROM decision_outcomes",
            |r| OutcomeFact {
                decision_id: r.try_get("decision_id")?,
                upstream_status: r.try_get("upstream_status")?,
                error: r.try_get("error")?,
                flagged: r.try_get("flagged")?,
            }
        )
    }

    pub async fn reservations(&self) -> anyhow::Result<Vec<ReservationFact>> {
        rows!(
            self,
            "SELECT decision_id::text AS decision_id, budget, subject, period, cents, state, flagged
             FROM spend_reservations",
            "SELECT decision_id, budget, subject, period, cents, state, flagged FROM spend_reservations",
            |r| ReservationFact {
                decision_id: r.try_get("decision_id")?,
                budget: r.try_get("budget")?,
                subject: r.try_get("subject")?,
                period: r.try_get("period")?,
                cents: r.try_get("cents")?,
                state: r.try_get("state")?,
                flagged: r.try_get("flagged")?,
            }
        )
    }

    pub async fn windows(&self) -> anyhow::Result<Vec<WindowFact>> {
        let sql =
            "SELECT budget, subject, period, committed_cents, reserved_cents FROM spend_windows";
        rows!(self, sql, sql, |r| WindowFact {
            budget: r.try_get("budget")?,
            subject: r.try_get("subject")?,
            period: r.try_get("period")?,
            committed_cents: r.try_get("committed_cents")?,
            reserved_cents: r.try_get("reserved_cents")?,
        })
    }

    pub async fn approvals(&self) -> anyhow::Result<Vec<ApprovalFact>> {
        rows!(
            self,
            "SELECT id::text AS id, status, requested_by_decision::text AS requested_by_decision
             FROM approvals",
            "SELECT id, status, requested_by_decision FROM approvals",
            |r| ApprovalFact {
                id: r.try_get("id")?,
                status: r.try_get("status")?,
                requested_by_decision: r.try_get("requested_by_decision")?,
            }
        )
    }

    /// Every text column of every decision, concatenated: to look for what must never be stored.
    pub async fn dump(&self) -> anyhow::Result<String> {
        let rows: Vec<String> = rows!(
            self,
            "SELECT concat_ws('|', path, query, run_id, on_behalf_of, reasons::text, input::text) AS t
             FROM decisions",
            "SELECT coalesce(path, '') || '|' || coalesce(query, '') || '|' || coalesce(run_id, '') || '|' ||
                    coalesce(on_behalf_of, '') || '|' || coalesce(reasons, '') || '|' || coalesce(input, '') AS t
             FROM decisions",
            |r| r.try_get::<String, _>("t")?
        )?;
        Ok(rows.join("\n"))
    }

    /// Decisions with this refusal code (from this agent, when given).
    pub async fn refusals(&self, code: &str, agent: Option<&str>) -> anyhow::Result<usize> {
        Ok(self
            .decisions()
            .await?
            .iter()
            .filter(|d| d.code.as_deref() == Some(code))
            .filter(|d| agent.is_none_or(|a| d.agent_name.as_deref() == Some(a)))
            .count())
    }

    /// Reservations still `reserved` and not flagged: a lifecycle that has not finished (or never will).
    pub async fn unsettled(&self) -> anyhow::Result<usize> {
        Ok(self
            .reservations()
            .await?
            .iter()
            .filter(|r| r.state == "reserved" && !r.flagged)
            .count())
    }

    /// The invariants, given how many requests the stand-in upstream received. Call once every lifecycle
    /// has finished (settlement may trail the agent's answer: see [`Books::settled`]).
    pub async fn check(&self, upstream_received: usize) -> anyhow::Result<()> {
        let decisions = self.decisions().await?;
        let outcomes = self.outcomes().await?;
        // An allowed request whose agent left before it was forwarded is not sent (its outcome says so).
        let not_forwarded = outcomes
            .iter()
            .filter(|o| {
                o.error
                    .as_deref()
                    .is_some_and(|e| e.starts_with("not_forwarded"))
            })
            .count();
        let allows = decisions.iter().filter(|d| d.outcome == "allow").count();
        if allows - not_forwarded != upstream_received {
            bail!(
                "{allows} allow decisions ({not_forwarded} not forwarded) for {upstream_received} requests the upstream received: {decisions:#?}"
            );
        }
        let ids: HashMap<&str, &DecisionFact> =
            decisions.iter().map(|d| (d.id.as_str(), d)).collect();
        if ids.len() != decisions.len() {
            bail!("a decision id appears twice");
        }
        let mut per_decision: HashMap<&str, usize> = HashMap::new();
        for o in &outcomes {
            let Some(d) = ids.get(o.decision_id.as_str()) else {
                bail!("an outcome without a decision: {o:?}");
            };
            if d.outcome != "allow" {
                bail!("an outcome for a decision that was not allowed: {o:?} {d:?}");
            }
            *per_decision.entry(&o.decision_id).or_default() += 1;
        }
        if let Some((id, n)) = per_decision.iter().find(|(_, n)| **n > 1) {
            bail!("decision {id} has {n} outcomes");
        }
        let reservations = self.reservations().await?;
        let mut committed: HashMap<(&str, &str, &str), i64> = HashMap::new();
        let mut reserved: HashMap<(&str, &str, &str), i64> = HashMap::new();
        for r in &reservations {
            // A reservation is taken before its decision is recorded; when the record cannot be committed
            // (the store failing), the request is refused and the reservation released. Only a released
            // one may lack its decision: nothing was forwarded and nothing is counted.
            if !ids.contains_key(r.decision_id.as_str()) && r.state != "released" {
                bail!("a reservation without a decision: {r:?}");
            }
            let key = (r.budget.as_str(), r.subject.as_str(), r.period.as_str());
            match r.state.as_str() {
                "committed" => *committed.entry(key).or_default() += r.cents,
                "reserved" if r.flagged => *reserved.entry(key).or_default() += r.cents,
                "released" => {}
                _ => bail!("a reservation neither committed, released nor flagged: {r:?}"),
            }
        }
        for w in self.windows().await? {
            let key = (w.budget.as_str(), w.subject.as_str(), w.period.as_str());
            let want = committed.get(&key).copied().unwrap_or(0);
            if w.committed_cents != want {
                bail!(
                    "window {key:?} shows {} cents committed, its committed charges sum to {want}",
                    w.committed_cents
                );
            }
            let held = reserved.get(&key).copied().unwrap_or(0);
            if w.reserved_cents != held {
                bail!(
                    "window {key:?} shows {} cents reserved, its flagged reservations sum to {held}",
                    w.reserved_cents
                );
            }
        }
        Ok(())
    }

    /// Waits (up to 10 s) until no reservation is left unsettled and `outcomes` outcome rows are written:
    /// settlement and outcome rows may trail the answer the agent got.
    pub async fn settled(&self, outcomes: usize) -> anyhow::Result<()> {
        for _ in 0..100 {
            if self.unsettled().await? == 0 && self.outcomes().await?.len() >= outcomes {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        bail!(
            "not settled within 10 s: {} unsettled reservations, {} outcome rows (want {outcomes})",
            self.unsettled().await?,
            self.outcomes().await?.len()
        )
    }
}
