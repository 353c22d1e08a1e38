//! SQLite SQL of created resources and the incident report's reads (see `store/resources.rs`). Lists of
//! agent ids are bound as one JSON array and read with `json_each`.

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use uuid::Uuid;

use super::super::resources::{kind_parse, resource_status_parse};
use super::{
    SqliteStore, agent_from_row, json, minted_from_row, opt_ts, opt_uuid, parse_ts, ts, uuid,
};
use crate::resources::ResourceKind;
use crate::store::{
    AgentRow, AgentSpendRow, ChangeRow, DecisionCount, MintedTokenRow, ResourceRow, StoreError,
};

const RESOURCE_COLUMNS: &str = "id, provider, kind, resource_id, scope, zone_id, account_id, stripe_account, \
     detail, agent_id, agent_name, run_id, decision_id, action, created_at, status, deleted_at, \
     deleted_by_decision, updated_at, updated_by_decision";

fn id_list(ids: &[Uuid]) -> String {
    serde_json::Value::from(ids.iter().map(Uuid::to_string).collect::<Vec<_>>()).to_string()
}

impl SqliteStore {
    pub async fn record_resource(&self, row: &ResourceRow) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO resources (id, provider, kind, resource_id, scope, zone_id, account_id, stripe_account,
                 detail, agent_id, agent_name, run_id, decision_id, action, created_at, status, deleted_at,
                 deleted_by_decision)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (provider, kind, resource_id, scope, agent_id) DO UPDATE SET
                 id = excluded.id, zone_id = excluded.zone_id, account_id = excluded.account_id,
                 stripe_account = excluded.stripe_account, detail = excluded.detail, agent_id = excluded.agent_id,
                 agent_name = excluded.agent_name, run_id = excluded.run_id, decision_id = excluded.decision_id,
                 action = excluded.action, created_at = excluded.created_at, status = excluded.status,
                 deleted_at = excluded.deleted_at, deleted_by_decision = excluded.deleted_by_decision,
                 updated_at = NULL, updated_by_decision = NULL
             WHERE resources.status = 'deleted'",
        )
        .bind(row.id.to_string())
        .bind(&row.provider)
        .bind(row.kind.as_str())
        .bind(&row.resource_id)
        .bind(&row.scope)
        .bind(&row.zone_id)
        .bind(&row.account_id)
        .bind(&row.stripe_account)
        .bind(row.detail.to_string())
        .bind(row.agent_id.to_string())
        .bind(&row.agent_name)
        .bind(&row.run_id)
        .bind(row.decision_id.to_string())
        .bind(&row.action)
        .bind(ts(row.created_at))
        .bind(row.status.as_str())
        .bind(row.deleted_at.map(ts))
        .bind(row.deleted_by_decision.map(|d| d.to_string()))
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 1 {
            return Ok(true);
        }
        // This agent's row is live: a later create or upload of the same resource by it.
        sqlx::query(
            "UPDATE resources SET updated_at = ?1, updated_by_decision = ?2
             WHERE provider = ?3 AND kind = ?4 AND resource_id = ?5 AND scope = ?6 AND agent_id = ?7
               AND status = 'live' AND decision_id <> ?2",
        )
        .bind(ts(row.created_at))
        .bind(row.decision_id.to_string())
        .bind(&row.provider)
        .bind(row.kind.as_str())
        .bind(&row.resource_id)
        .bind(&row.scope)
        .bind(row.agent_id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(false)
    }

    pub async fn mark_resource_deleted(
        &self,
        provider: &str,
        kind: ResourceKind,
        resource_id: &str,
        scope: &str,
        decision_id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE resources SET status = 'deleted', deleted_at = ?, deleted_by_decision = ?
             WHERE provider = ? AND kind = ? AND resource_id = ? AND scope = ? AND status = 'live'",
        )
        .bind(ts(at))
        .bind(decision_id.to_string())
        .bind(provider)
        .bind(kind.as_str())
        .bind(resource_id)
        .bind(scope)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() >= 1)
    }

    pub async fn resources_of(
        &self,
        agent_ids: &[Uuid],
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<ResourceRow>, StoreError> {
        let sql = format!(
            "SELECT {RESOURCE_COLUMNS} FROM resources
             WHERE agent_id IN (SELECT value FROM json_each(?1))
               AND (?2 IS NULL OR created_at >= ?2 OR updated_at >= ?2)
             ORDER BY created_at, id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id_list(agent_ids))
            .bind(since.map(ts))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(resource_from_row).collect()
    }

    pub async fn resources_sharing(
        &self,
        agent_ids: &[Uuid],
    ) -> Result<Vec<ResourceRow>, StoreError> {
        let sql = format!(
            "SELECT {RESOURCE_COLUMNS} FROM resources r
             WHERE r.status = 'live' AND r.agent_id NOT IN (SELECT value FROM json_each(?1))
               AND EXISTS (SELECT 1 FROM resources m
                           WHERE m.agent_id IN (SELECT value FROM json_each(?1)) AND m.status = 'live'
                             AND m.provider = r.provider AND m.kind = r.kind AND m.resource_id = r.resource_id
                             AND m.scope = r.scope)
             ORDER BY created_at, id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id_list(agent_ids))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(resource_from_row).collect()
    }

    pub async fn agent_family(&self, name: &str) -> Result<Vec<AgentRow>, StoreError> {
        let sql = format!(
            "WITH RECURSIVE family(id, depth) AS (
                 SELECT id, 0 FROM agents WHERE lower(name) = lower(?1)
                 UNION
                 SELECT a.id, f.depth + 1 FROM agents a JOIN family f ON a.minted_by = f.id WHERE f.depth < 64
             )
             SELECT {} FROM agents WHERE id IN (SELECT id FROM family)
             ORDER BY (SELECT min(depth) FROM family f WHERE f.id = agents.id), created_at, id",
            Self::AGENT_COLUMNS
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(name)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(agent_from_row).collect()
    }

    pub async fn agent_changes(
        &self,
        agent_ids: &[Uuid],
        since: Option<DateTime<Utc>>,
        limit: i64,
    ) -> Result<Vec<ChangeRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT d.id, d.at, d.agent_name, d.action, d.risk, d.method, d.path, o.upstream_status
             FROM decisions d LEFT JOIN decision_outcomes o ON o.decision_id = d.id
             WHERE d.agent_id IN (SELECT value FROM json_each(?1)) AND d.outcome = 'allow' AND d.risk <> 'read'
               AND (?2 IS NULL OR d.at >= ?2)
             ORDER BY d.at DESC, d.id DESC LIMIT ?3",
        )
        .bind(id_list(agent_ids))
        .bind(since.map(ts))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ChangeRow {
                    decision_id: uuid(&r.try_get::<String, _>("id")?)?,
                    at: parse_ts(&r.try_get::<String, _>("at")?)?,
                    agent_name: r.try_get("agent_name")?,
                    action: r.try_get("action")?,
                    risk: r.try_get("risk")?,
                    method: r.try_get("method")?,
                    path: r.try_get("path")?,
                    upstream_status: r.try_get("upstream_status")?,
                })
            })
            .collect()
    }

    pub async fn decision_counts(
        &self,
        agent_ids: &[Uuid],
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<DecisionCount>, StoreError> {
        let rows = sqlx::query(
            "SELECT outcome, code, count(*) AS n FROM decisions
             WHERE agent_id IN (SELECT value FROM json_each(?1)) AND (?2 IS NULL OR at >= ?2)
             GROUP BY outcome, code ORDER BY outcome, code NULLS FIRST",
        )
        .bind(id_list(agent_ids))
        .bind(since.map(ts))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DecisionCount {
                    outcome: r.try_get("outcome")?,
                    code: r.try_get("code")?,
                    count: r.try_get("n")?,
                })
            })
            .collect()
    }

    pub async fn agent_spend(
        &self,
        agent_ids: &[Uuid],
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<AgentSpendRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT budget, subject, period, provider, state, sum(cents) AS cents, count(*) AS n,
                    coalesce(sum(CASE WHEN flagged THEN cents ELSE 0 END), 0) AS flagged_cents
             FROM spend_reservations
             WHERE agent_id IN (SELECT value FROM json_each(?1)) AND (?2 IS NULL OR created_at >= ?2)
             GROUP BY budget, subject, period, provider, state
             ORDER BY period, budget, subject, provider, state",
        )
        .bind(id_list(agent_ids))
        .bind(since.map(ts))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AgentSpendRow {
                    budget: r.try_get("budget")?,
                    subject: r.try_get("subject")?,
                    period: r.try_get("period")?,
                    provider: r.try_get("provider")?,
                    state: r.try_get("state")?,
                    cents: r.try_get("cents")?,
                    reservations: r.try_get("n")?,
                    flagged_cents: r.try_get("flagged_cents")?,
                })
            })
            .collect()
    }

    pub async fn minted_tokens_by(
        &self,
        agent_ids: &[Uuid],
    ) -> Result<Vec<MintedTokenRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM minted_tokens WHERE minted_by IN (SELECT value FROM json_each(?1))
             ORDER BY created_at, token_id",
            Self::MINTED_COLUMNS
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id_list(agent_ids))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(minted_from_row).collect()
    }
}

fn resource_from_row(r: &SqliteRow) -> Result<ResourceRow, StoreError> {
    Ok(ResourceRow {
        id: uuid(&r.try_get::<String, _>("id")?)?,
        provider: r.try_get("provider")?,
        kind: kind_parse(&r.try_get::<String, _>("kind")?)?,
        resource_id: r.try_get("resource_id")?,
        scope: r.try_get("scope")?,
        zone_id: r.try_get("zone_id")?,
        account_id: r.try_get("account_id")?,
        stripe_account: r.try_get("stripe_account")?,
        detail: json(&r.try_get::<String, _>("detail")?)?,
        agent_id: uuid(&r.try_get::<String, _>("agent_id")?)?,
        agent_name: r.try_get("agent_name")?,
        run_id: r.try_get("run_id")?,
        decision_id: uuid(&r.try_get::<String, _>("decision_id")?)?,
        action: r.try_get("action")?,
        created_at: parse_ts(&r.try_get::<String, _>("created_at")?)?,
        status: resource_status_parse(&r.try_get::<String, _>("status")?)?,
        deleted_at: opt_ts(r.try_get("deleted_at")?)?,
        deleted_by_decision: opt_uuid(r.try_get("deleted_by_decision")?)?,
        updated_at: opt_ts(r.try_get("updated_at")?)?,
        updated_by_decision: opt_uuid(r.try_get("updated_by_decision")?)?,
    })
}
