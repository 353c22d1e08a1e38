//! The Postgres backend of the store: the system of record, shared by any number of replicas.
//!
//! Owns: the Postgres pool, its migrations (embedded from `migrations/postgres`) and its SQL. Caps stay exact
//! across replicas because a reservation is one conditional UPDATE, serialized by Postgres on the row.

use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::*;

mod resources;

/// Embedded so that the binary migrates without the source tree beside it.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// How long a request waits for a pooled connection before the store counts as unavailable. Short: a
/// refusal now is better than a queue of agents waiting on a dead database.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// The Postgres backend: the system of record, for any number of replicas.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Carries the pool's TCP connections when they are not plain loopback; lives as long as any clone.
    _relay: Option<std::sync::Arc<super::nodelay::NoDelayRelay>>,
}

impl PgStore {
    /// Connects lazily-validated: the pool is created and one connection is tried, so a wrong URL is
    /// reported at start rather than at the first request.
    pub async fn connect(url: &SecretString, max_connections: u32) -> Result<PgStore, StoreError> {
        let mut options: PgConnectOptions = url.expose_secret().parse()?;
        // On loopback, TLS protects nothing and costs CPU: unless the URL asks for a TLS mode, loopback
        // connections go without it. Remote servers keep the URL's (default: prefer) TLS.
        // A TLS mode named in the URL (sqlx reads `sslmode` and `ssl-mode`) or in PGSSLMODE is the operator's
        // choice and is kept.
        let url_text = url.expose_secret();
        let explicit_tls = url_text.contains("sslmode=")
            || url_text.contains("ssl-mode=")
            || std::env::var_os("PGSSLMODE").is_some();
        let host = options.get_host().to_string();
        let loopback = host == "localhost"
            || host.starts_with('/')
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if loopback && !explicit_tls {
            options = options.ssl_mode(sqlx::postgres::PgSslMode::Disable);
        }
        let plain_loopback =
            loopback && matches!(options.get_ssl_mode(), sqlx::postgres::PgSslMode::Disable);
        // Every other TCP connection goes through the TCP_NODELAY relay (see `nodelay`). Plain loopback does
        // not need it (a 64 KB segment holds a whole typical message; at 512 agent connections, batches of
        // hundreds of records, commits looked the same with and without it) and the extra hop costs ~30 µs
        // of CPU per commit at low rates; with TLS, or across a network, Nagle holds messages back ~40 ms.
        let unix_socket = host.starts_with('/') || options.get_socket().is_some();
        let relay = if plain_loopback || unix_socket {
            None
        } else {
            let relay = super::nodelay::NoDelayRelay::start(&host, options.get_port())
                .map_err(|e| StoreError::Unavailable(sqlx::Error::Io(e)))?;
            options = options.socket(relay.dir());
            Some(std::sync::Arc::new(relay))
        };
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .min_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // sqlx's default pings every connection before handing it out: one more round trip in front of
            // each audit commit, which every allowed request waits for. A connection that died is found by
            // the query itself instead (that request is refused, fail-closed, and the pool drops the
            // connection), and by the store probe that `app` runs every few seconds.
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(|e| match relay.as_ref().and_then(|r| r.last_failure()) {
                // sqlx saw only the relay's socket close; the relay knows why.
                Some(why) => StoreError::Unavailable(sqlx::Error::Io(std::io::Error::other(why))),
                None => StoreError::Unavailable(e),
            })?;
        Ok(PgStore {
            pool,
            _relay: relay,
        })
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// True when a round trip to the database succeeds now.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    // ---- agents ----

    pub async fn insert_agent(&self, agent: &AgentRow) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        insert_agent_on(&mut conn, agent).await
    }

    const AGENT_COLUMNS: &'static str = "id, name, team, scopes, labels, key_hash, key_prefix, status, created_at, expires_at, revoked_at, created_by, minted_by, minted_token_id";

    pub async fn agent_by_key_hash(&self, key_hash: &str) -> Result<Option<AgentRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM agents WHERE key_hash = $1",
            Self::AGENT_COLUMNS
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(key_hash)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| agent_from_row(&r)).transpose()
    }

    pub async fn agent_by_id(&self, id: Uuid) -> Result<Option<AgentRow>, StoreError> {
        let sql = format!("SELECT {} FROM agents WHERE id = $1", Self::AGENT_COLUMNS);
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| agent_from_row(&r)).transpose()
    }

    pub async fn list_agents(&self) -> Result<Vec<AgentRow>, StoreError> {
        let sql = format!("SELECT {} FROM agents ORDER BY name", Self::AGENT_COLUMNS);
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(agent_from_row).collect()
    }

    /// Revokes by name; false when there is no such active agent.
    pub async fn revoke_agent(&self, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE agents SET status = 'revoked', revoked_at = now(), version = nextval('agents_version_seq')
             WHERE name = $1 AND status = 'active'",
        )
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    // ---- minted tokens ----

    const MINTED_COLUMNS: &'static str =
        "provider, token_id, name, policies, expires_on, status, custody, minted_by,
        minted_by_name, decision_id, last_decision_id, handle_agent_id, secret_key_id, secret_nonce,
        secret_ciphertext, rolls, created_at, rolled_at, deleted_at, account_id";

    pub async fn record_minted_token(
        &self,
        row: &MintedTokenRow,
        handle: Option<&AgentRow>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        if let Some(handle) = handle {
            insert_agent_on(&mut tx, handle).await?;
        }
        let sealed = row.sealed.as_ref();
        let result = sqlx::query(
            "INSERT INTO minted_tokens (provider, token_id, name, policies, expires_on, status, custody, minted_by,
                minted_by_name, decision_id, last_decision_id, handle_agent_id, secret_key_id, secret_nonce,
                secret_ciphertext, rolls, created_at, rolled_at, deleted_at, account_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)",
        )
        .bind(&row.provider)
        .bind(&row.token_id)
        .bind(&row.name)
        .bind(&row.policies)
        .bind(row.expires_on)
        .bind(row.status.as_str())
        .bind(custody_text(row.custody))
        .bind(row.minted_by)
        .bind(&row.minted_by_name)
        .bind(row.decision_id)
        .bind(row.last_decision_id)
        .bind(row.handle_agent_id)
        .bind(sealed.map(|s| s.key_id.as_str()))
        .bind(sealed.map(|s| s.nonce.as_slice()))
        .bind(sealed.map(|s| s.ciphertext.as_slice()))
        .bind(row.rolls)
        .bind(row.created_at)
        .bind(row.rolled_at)
        .bind(row.deleted_at)
        .bind(&row.account_id)
        .execute(&mut *tx)
        .await;
        match result {
            Ok(_) => {}
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                return Err(StoreError::Conflict(format!(
                    "minted token '{}' of {}",
                    row.token_id, row.provider
                )));
            }
            Err(e) => return Err(e.into()),
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn roll_minted_token(&self, roll: &TokenRoll<'_>) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let old: Option<Option<Uuid>> = sqlx::query_scalar(
            "SELECT handle_agent_id FROM minted_tokens WHERE provider = $1 AND token_id = $2 FOR UPDATE",
        )
        .bind(roll.provider)
        .bind(roll.token_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(Some(old_handle)) = old {
            revoke_handle_on(&mut tx, old_handle).await?;
        }
        if let Some(handle) = roll.handle {
            insert_agent_on(&mut tx, handle).await?;
        }
        let sealed = roll.sealed.as_ref();
        sqlx::query(
            "INSERT INTO minted_tokens (provider, token_id, policies, status, custody, minted_by, minted_by_name,
                decision_id, last_decision_id, handle_agent_id, secret_key_id, secret_nonce, secret_ciphertext,
                rolls, created_at, rolled_at, account_id)
             VALUES ($1, $2, 'null', 'rolled', $3, $4, $5, $6, $6, $7, $8, $9, $10, 1, $11, $11, $12)
             ON CONFLICT (provider, token_id) DO UPDATE SET status = 'rolled', custody = EXCLUDED.custody,
                last_decision_id = EXCLUDED.last_decision_id, handle_agent_id = EXCLUDED.handle_agent_id,
                secret_key_id = EXCLUDED.secret_key_id, secret_nonce = EXCLUDED.secret_nonce,
                secret_ciphertext = EXCLUDED.secret_ciphertext, rolls = minted_tokens.rolls + 1,
                rolled_at = EXCLUDED.rolled_at",
        )
        .bind(roll.provider)
        .bind(roll.token_id)
        .bind(custody_text(roll.custody))
        .bind(roll.agent_id)
        .bind(roll.agent_name)
        .bind(roll.decision_id)
        .bind(roll.handle.map(|h| h.id))
        .bind(sealed.map(|s| s.key_id.as_str()))
        .bind(sealed.map(|s| s.nonce.as_slice()))
        .bind(sealed.map(|s| s.ciphertext.as_slice()))
        .bind(roll.at)
        .bind(roll.account_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn update_minted_token(&self, u: &TokenUpdate<'_>) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let handle: Option<Option<Uuid>> = sqlx::query_scalar(
            "UPDATE minted_tokens SET name = COALESCE($3, name), policies = COALESCE($4, policies),
                expires_on = $5, last_decision_id = $6
             WHERE provider = $1 AND token_id = $2 RETURNING handle_agent_id",
        )
        .bind(u.provider)
        .bind(u.token_id)
        .bind(&u.name)
        .bind(&u.policies)
        .bind(u.expires_on)
        .bind(u.decision_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(handle) = handle else {
            return Ok(false);
        };
        if let Some(handle) = handle {
            sqlx::query(
                // Never past the minter's own expiry (LEAST skips a NULL: no expiry on either side).
                "UPDATE agents SET expires_at = LEAST($2::timestamptz,
                        (SELECT p.expires_at FROM agents p WHERE p.id = agents.minted_by)),
                    version = nextval('agents_version_seq')
                 WHERE id = $1 AND status = 'active'",
            )
            .bind(handle)
            .bind(u.expires_on)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    pub async fn delete_minted_token(
        &self,
        provider: &str,
        token_id: &str,
        decision_id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let old: Option<Option<Uuid>> = sqlx::query_scalar(
            "SELECT handle_agent_id FROM minted_tokens WHERE provider = $1 AND token_id = $2 FOR UPDATE",
        )
        .bind(provider)
        .bind(token_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(handle) = old else {
            return Ok(false);
        };
        if let Some(handle) = handle {
            revoke_handle_on(&mut tx, handle).await?;
        }
        sqlx::query(
            "UPDATE minted_tokens SET status = 'deleted', deleted_at = $3, last_decision_id = $4,
                secret_key_id = NULL, secret_nonce = NULL, secret_ciphertext = NULL
             WHERE provider = $1 AND token_id = $2",
        )
        .bind(provider)
        .bind(token_id)
        .bind(at)
        .bind(decision_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn minted_token(
        &self,
        provider: &str,
        token_id: &str,
    ) -> Result<Option<MintedTokenRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM minted_tokens WHERE provider = $1 AND token_id = $2",
            Self::MINTED_COLUMNS
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(provider)
            .bind(token_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| minted_from_row(&r)).transpose()
    }

    pub async fn vault_key_checks(
        &self,
        mine: &[crate::vault::SealedSecret],
    ) -> Result<Vec<crate::vault::SealedSecret>, StoreError> {
        for check in mine {
            sqlx::query(
                "INSERT INTO vault_key_checks (key_id, nonce, ciphertext) VALUES ($1, $2, $3)
                 ON CONFLICT (key_id) DO NOTHING",
            )
            .bind(&check.key_id)
            .bind(&check.nonce)
            .bind(&check.ciphertext)
            .execute(&self.pool)
            .await?;
        }
        let rows: Vec<(String, Vec<u8>, Vec<u8>)> = sqlx::query_as(
            "SELECT key_id, nonce, ciphertext FROM vault_key_checks ORDER BY key_id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(key_id, nonce, ciphertext)| crate::vault::SealedSecret {
                key_id,
                nonce,
                ciphertext,
            })
            .collect())
    }

    pub async fn minted_tokens_keyed(
        &self,
        provider: &str,
        token_key: &str,
    ) -> Result<Vec<MintedTokenRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM minted_tokens WHERE provider = $1 AND lower(replace(token_id, '-', '')) = $2
             ORDER BY created_at, token_id",
            Self::MINTED_COLUMNS
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(provider)
            .bind(token_key)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(minted_from_row).collect()
    }

    pub async fn minted_tokens_live(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, String, i64)>, StoreError> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT provider, custody, count(*) FROM minted_tokens
             WHERE status IN ('active', 'rolled') AND (expires_on IS NULL OR expires_on > $1)
             GROUP BY provider, custody",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    pub async fn vaulted_tokens(&self) -> Result<Vec<MintedTokenRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM minted_tokens
             WHERE secret_ciphertext IS NOT NULL AND status IN ('active', 'rolled')",
            Self::MINTED_COLUMNS
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(minted_from_row).collect()
    }

    pub async fn minted_token_by_handle(
        &self,
        agent_id: Uuid,
    ) -> Result<Option<MintedTokenRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM minted_tokens WHERE handle_agent_id = $1",
            Self::MINTED_COLUMNS
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(agent_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| minted_from_row(&r)).transpose()
    }

    pub async fn agent_created_by(&self, id: Uuid) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT created_by FROM agents WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => r.try_get("created_by")?,
            None => None,
        })
    }

    // ---- reviewers ----

    const REVIEWER_COLUMNS: &'static str =
        "id, name, email, role, token_hash, token_prefix, created_at, created_by,
        revoked_at, rotated_at, last_used";

    pub async fn insert_reviewer(&self, r: &ReviewerRow) -> Result<(), StoreError> {
        let result = sqlx::query(
            "INSERT INTO reviewers (id, name, email, role, token_hash, token_prefix, created_at, created_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(r.id)
        .bind(&r.name)
        .bind(&r.email)
        .bind(&r.role)
        .bind(&r.token_hash)
        .bind(&r.token_prefix)
        .bind(r.created_at)
        .bind(&r.created_by)
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => Err(
                StoreError::Conflict(format!("reviewer '{}' (or one with that email)", r.name)),
            ),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn reviewer_by_token_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<ReviewerRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM reviewers WHERE token_hash = $1",
            Self::REVIEWER_COLUMNS
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| reviewer_from_row(&r)).transpose()
    }

    pub async fn reviewer_by_email(&self, email: &str) -> Result<Option<ReviewerRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM reviewers WHERE lower(email) = lower($1) AND revoked_at IS NULL",
            Self::REVIEWER_COLUMNS
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(email)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| reviewer_from_row(&r)).transpose()
    }

    pub async fn list_reviewers(&self) -> Result<Vec<ReviewerRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM reviewers ORDER BY name",
            Self::REVIEWER_COLUMNS
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(reviewer_from_row).collect()
    }

    pub async fn revoke_reviewer(&self, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE reviewers SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL",
        )
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn rotate_reviewer(
        &self,
        name: &str,
        token_hash: &str,
        token_prefix: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE reviewers SET token_hash = $2, token_prefix = $3, rotated_at = now()
             WHERE name = $1 AND revoked_at IS NULL",
        )
        .bind(name)
        .bind(token_hash)
        .bind(token_prefix)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn touch_reviewer(&self, id: Uuid) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE reviewers SET last_used = now()
             WHERE id = $1 AND (last_used IS NULL OR last_used < now() - interval '1 minute')",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A number that changes whenever any agent row changes (insert, revoke).
    pub async fn agents_version(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT coalesce(max(version), 0) AS v FROM agents")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("v")?)
    }

    // ---- console ----

    pub async fn reviewer_by_id(&self, id: Uuid) -> Result<Option<ReviewerRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM reviewers WHERE id = $1",
            Self::REVIEWER_COLUMNS
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| reviewer_from_row(&r)).transpose()
    }

    pub async fn insert_console_session(&self, s: &ConsoleSessionRow) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM console_sessions
             WHERE expires_at < now() - interval '1 day' OR ended_at < now() - interval '1 day'",
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO console_sessions (id_hash, reviewer_id, reviewer_name, credential_hash, csrf_token,
                created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&s.id_hash)
        .bind(s.reviewer_id)
        .bind(&s.reviewer_name)
        .bind(&s.credential_hash)
        .bind(&s.csrf_token)
        .bind(s.created_at)
        .bind(s.expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn console_session(
        &self,
        id_hash: &str,
    ) -> Result<Option<ConsoleSessionRow>, StoreError> {
        let row = sqlx::query(
            "SELECT id_hash, reviewer_id, reviewer_name, credential_hash, csrf_token, created_at, expires_at
             FROM console_sessions WHERE id_hash = $1 AND ended_at IS NULL AND expires_at > now()",
        )
        .bind(id_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(ConsoleSessionRow {
                id_hash: r.try_get("id_hash")?,
                reviewer_id: r.try_get("reviewer_id")?,
                reviewer_name: r.try_get("reviewer_name")?,
                credential_hash: r.try_get("credential_hash")?,
                csrf_token: r.try_get("csrf_token")?,
                created_at: r.try_get("created_at")?,
                expires_at: r.try_get("expires_at")?,
            })
        })
        .transpose()
    }

    pub async fn end_console_session(&self, id_hash: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE console_sessions SET ended_at = now() WHERE id_hash = $1 AND ended_at IS NULL",
        )
        .bind(id_hash)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn pending_queue(
        &self,
        agent: Option<&str>,
        limit: i64,
    ) -> Result<Vec<ApprovalRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM approvals WHERE status = 'pending' AND expires_at > now()
               AND ($1::text IS NULL OR agent_name = $1)
             ORDER BY created_at, id LIMIT $2",
            Self::APPROVAL_COLUMNS
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(agent)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(approval_from_row).collect()
    }

    pub async fn pending_by_agent(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT agent_name, count(*) AS n FROM approvals WHERE status = 'pending' AND expires_at > now()
             GROUP BY agent_name ORDER BY n DESC, agent_name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("agent_name")?, r.try_get("n")?)))
            .collect()
    }

    pub async fn agents_last_seen(&self) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT a.name, (SELECT max(d.at) FROM decisions d WHERE d.agent_name = a.name) AS seen
             FROM agents a",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut seen = Vec::new();
        for r in &rows {
            if let Some(at) = r.try_get::<Option<DateTime<Utc>>, _>("seen")? {
                seen.push((r.try_get("name")?, at));
            }
        }
        Ok(seen)
    }

    // ---- decisions ----

    /// Inserts a batch of decision records atomically (see [`insert_batch`]).
    pub async fn insert_decisions(&self, rows: &[DecisionRow]) -> Result<(), StoreError> {
        insert_batch(&self.pool, rows).await
    }

    /// Inserts a batch of upstream outcomes in one statement; an outcome already recorded is kept.
    pub async fn insert_outcomes(&self, outcomes: &[OutcomeRow]) -> Result<(), StoreError> {
        if outcomes.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO decision_outcomes (decision_id, at, upstream_status, latency_us, error, flagged)
             SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[], $3::int4[], $4::int8[], $5::text[], $6::bool[])
             ON CONFLICT (decision_id) DO NOTHING",
        )
        .bind(outcomes.iter().map(|o| o.decision_id).collect::<Vec<_>>())
        .bind(outcomes.iter().map(|o| o.at).collect::<Vec<_>>())
        .bind(outcomes.iter().map(|o| o.upstream_status).collect::<Vec<_>>())
        .bind(outcomes.iter().map(|o| o.latency_us).collect::<Vec<_>>())
        .bind(outcomes.iter().map(|o| o.error.as_deref()).collect::<Vec<_>>())
        .bind(outcomes.iter().map(|o| o.flagged).collect::<Vec<_>>())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A decision writer's own connection, held across batches (see [`PgSink`]).
    pub fn sink(&self) -> PgSink {
        PgSink {
            pool: self.pool.clone(),
            conn: None,
            _relay: self._relay.clone(),
        }
    }

    const DECISION_COLUMNS: &'static str = "d.id, d.at, d.writer_id, d.seq, d.prev_hash, d.hash, d.agent_id,
        d.agent_name, d.run_id, d.on_behalf_of, d.provider, d.method, d.path, d.query, d.action, d.risk,
        d.outcome, d.code, d.rules::text AS rules, d.reasons::text AS reasons, d.policy_revision, d.charge_cents, d.approval_id, d.input::text AS input, d.policy_outcome, d.shadow_outcome,
        o.upstream_status, o.latency_us, o.error AS outcome_error, o.flagged, o.at AS outcome_at";

    pub async fn decision(
        &self,
        id: Uuid,
    ) -> Result<Option<(DecisionRow, Option<OutcomeRow>)>, StoreError> {
        let sql = format!(
            "SELECT {} FROM decisions d LEFT JOIN decision_outcomes o ON o.decision_id = d.id WHERE d.id = $1",
            Self::DECISION_COLUMNS
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| decision_from_row(&r)).transpose()
    }

    /// Newest first, keyset-paginated.
    pub async fn list_decisions(
        &self,
        filter: &DecisionFilter,
    ) -> Result<Vec<(DecisionRow, Option<OutcomeRow>)>, StoreError> {
        let sql = format!(
            "SELECT {} FROM decisions d LEFT JOIN decision_outcomes o ON o.decision_id = d.id
             WHERE ($1::text IS NULL OR d.agent_name = $1)
               AND ($2::text IS NULL OR d.action = $2)
               AND ($3::text IS NULL OR d.outcome = $3)
               AND ($4::timestamptz IS NULL OR d.at >= $4)
               AND ($5::timestamptz IS NULL OR (d.at, d.id) < ($5, $6::uuid))
               AND ($8::text IS NULL OR d.provider = $8)
               AND ($9::timestamptz IS NULL OR d.at < $9)
             ORDER BY d.at DESC, d.id DESC LIMIT $7",
            Self::DECISION_COLUMNS
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&filter.agent)
            .bind(&filter.action)
            .bind(&filter.outcome)
            .bind(filter.since)
            .bind(filter.before.map(|b| b.0))
            .bind(filter.before.map(|b| b.1))
            .bind(filter.limit)
            .bind(&filter.provider)
            .bind(filter.until)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decision_from_row).collect()
    }

    /// Recorded policy inputs and what the policy said, oldest first, for `tollgate replay`.
    pub async fn replayable_decisions(
        &self,
        since: Option<DateTime<Utc>>,
        limit: i64,
    ) -> Result<Vec<ReplayRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, agent_name, action, policy_outcome, input::text AS input FROM decisions
             WHERE input IS NOT NULL AND policy_outcome IS NOT NULL AND ($1::timestamptz IS NULL OR at >= $1)
             ORDER BY at, id LIMIT $2",
        )
        .bind(since)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ReplayRow {
                    id: r.try_get("id")?,
                    at: r.try_get("at")?,
                    agent_name: r.try_get("agent_name")?,
                    action: r.try_get("action")?,
                    policy_outcome: r.try_get("policy_outcome")?,
                    input: r.try_get("input")?,
                })
            })
            .collect()
    }

    /// Every decision of one writer in chain order, for `audit verify`.
    pub async fn writer_chain(&self, writer_id: Uuid) -> Result<Vec<DecisionRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM decisions d LEFT JOIN decision_outcomes o ON o.decision_id = d.id
             WHERE d.writer_id = $1 ORDER BY d.seq",
            Self::DECISION_COLUMNS
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(writer_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| decision_from_row(r).map(|(d, _)| d))
            .collect()
    }

    /// Every writer with a record or a checkpoint.
    pub async fn writers(&self) -> Result<Vec<Uuid>, StoreError> {
        let rows = sqlx::query(
            "SELECT writer_id FROM decisions UNION SELECT writer_id FROM chain_checkpoints",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| r.try_get("writer_id").map_err(StoreError::from))
            .collect()
    }

    pub async fn insert_checkpoint(&self, c: &CheckpointRow) -> Result<(), StoreError> {
        insert_checkpoint(&self.pool, c).await
    }

    pub async fn checkpoints(&self) -> Result<Vec<CheckpointRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT writer_id, seq, hash, kind, at, note FROM chain_checkpoints ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(CheckpointRow {
                    writer_id: r.try_get("writer_id")?,
                    seq: r.try_get("seq")?,
                    hash: r.try_get("hash")?,
                    kind: r.try_get("kind")?,
                    at: r.try_get("at")?,
                    note: r.try_get("note")?,
                })
            })
            .collect()
    }

    pub async fn prune_decisions(
        &self,
        before: DateTime<Utc>,
        now: DateTime<Utc>,
        note: &str,
    ) -> Result<Vec<(CheckpointRow, u64)>, StoreError> {
        let writers: Vec<Uuid> =
            sqlx::query_scalar("SELECT DISTINCT writer_id FROM decisions WHERE at < $1")
                .bind(before)
                .fetch_all(&self.pool)
                .await?;
        let mut cuts = Vec::new();
        for writer_id in writers {
            let mut tx = self.pool.begin().await?;
            // The cut: the record before the chain's first one at or after `before` (or its head).
            let head = sqlx::query(
                "SELECT seq, hash FROM decisions
                 WHERE writer_id = $1 AND seq < coalesce(
                     (SELECT min(seq) FROM decisions WHERE writer_id = $1 AND at >= $2),
                     (SELECT max(seq) + 1 FROM decisions WHERE writer_id = $1))
                 ORDER BY seq DESC LIMIT 1 FOR UPDATE",
            )
            .bind(writer_id)
            .bind(before)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(head) = head else { continue };
            let checkpoint = CheckpointRow {
                writer_id,
                seq: head.try_get("seq")?,
                hash: head.try_get("hash")?,
                kind: "prune".to_string(),
                at: now,
                note: Some(note.to_string()),
            };
            insert_checkpoint(&mut *tx, &checkpoint).await?;
            sqlx::query(
                "DELETE FROM decision_outcomes WHERE decision_id IN
                   (SELECT id FROM decisions WHERE writer_id = $1 AND seq <= $2)",
            )
            .bind(writer_id)
            .bind(checkpoint.seq)
            .execute(&mut *tx)
            .await?;
            let deleted = sqlx::query("DELETE FROM decisions WHERE writer_id = $1 AND seq <= $2")
                .bind(writer_id)
                .bind(checkpoint.seq)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            cuts.push((checkpoint, deleted));
        }
        Ok(cuts)
    }
}

impl PgStore {
    // ---- spend ----

    /// Reserves `cents` against a budget window in one transaction: the window row is created at its cap if
    /// new, then one conditional UPDATE admits the charge only if committed + reserved + charge <= cap.
    /// Concurrent reservations serialize on the row, so no replica can overshoot.
    ///
    /// With an idempotency key, the key's row is claimed first in the same transaction (a concurrent claim of
    /// the same key waits on it): a live earlier use of the key — within the provider's window, not released
    /// — makes this request a replay (same fingerprint, nothing reserved) or a conflict; an expired or
    /// released one is taken over and this request is charged as new. A refused reservation rolls the claim
    /// back with everything else.
    pub async fn reserve(&self, r: &NewReservation<'_>) -> Result<Reservation, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut replaces = None;
        let mut cents = r.cents;
        if let Some(idem) = &r.idempotency {
            let claimed = sqlx::query(
                "INSERT INTO idempotency_keys (provider, account, key, agent_id, fingerprint, decision_id)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (provider, account, key) DO NOTHING",
            )
            .bind(r.provider)
            .bind(idem.account)
            .bind(idem.key)
            .bind(r.agent_id)
            .bind(r.fingerprint)
            .bind(r.decision_id)
            .execute(&mut *tx)
            .await?;
            if claimed.rows_affected() == 0 {
                // Lock the key's row first, then read its reservation in a statement of its own: a join in
                // the locking statement would, after waiting on a concurrent claim, re-check the new key row
                // against the reservations of its old snapshot (not see the one just inserted), and take a
                // live use of the key for a released one.
                let earlier = sqlx::query(
                    "SELECT fingerprint, decision_id,
                            first_seen > now() - make_interval(secs => $4::float8) AS live
                     FROM idempotency_keys
                     WHERE provider = $1 AND account = $2 AND key = $3
                     FOR UPDATE",
                )
                .bind(r.provider)
                .bind(idem.account)
                .bind(idem.key)
                .bind(idem.window_secs)
                .fetch_one(&mut *tx)
                .await?;
                let fingerprint: String = earlier.try_get("fingerprint")?;
                let live: bool = earlier.try_get("live")?;
                let earlier_id: Uuid = earlier.try_get("decision_id")?;
                let reservation = sqlx::query(
                    "SELECT state, flagged FROM spend_reservations WHERE decision_id = $1",
                )
                .bind(earlier_id)
                .fetch_optional(&mut *tx)
                .await?;
                let (state, flagged): (String, bool) = match reservation {
                    Some(row) => (row.try_get("state")?, row.try_get("flagged")?),
                    None => ("released".to_string(), false),
                };
                if let Some(verdict) =
                    earlier_use(live, &state, flagged, fingerprint == r.fingerprint)
                {
                    tx.rollback().await?;
                    return Ok(verdict);
                }
                if live && state == "reserved" && flagged && fingerprint == r.fingerprint {
                    // The same call as the flagged attempt (the provider acts on the key at most once): this
                    // reservation takes its money over, so the call is counted once against the cap — at the
                    // larger of the two charges (prices may have changed between the attempts).
                    let released = sqlx::query(
                        "UPDATE spend_reservations SET state = 'released', settled_at = now(),
                            settled_by = 'tollgate', settle_note = $2
                         WHERE decision_id = $1 AND state = 'reserved'
                         RETURNING budget, subject, period, cents",
                    )
                    .bind(earlier_id)
                    .bind(replaced_note(r.decision_id))
                    .fetch_one(&mut *tx)
                    .await?;
                    let earlier_cents: i64 = released.try_get("cents")?;
                    sqlx::query(
                        "UPDATE spend_windows SET reserved_cents = reserved_cents - $4, updated_at = now()
                         WHERE budget = $1 AND subject = $2 AND period = $3",
                    )
                    .bind(released.try_get::<String, _>("budget")?)
                    .bind(released.try_get::<String, _>("subject")?)
                    .bind(released.try_get::<String, _>("period")?)
                    .bind(earlier_cents)
                    .execute(&mut *tx)
                    .await?;
                    cents = cents.max(earlier_cents);
                    replaces = Some(earlier_id);
                }
                // A takeover is the same call: the key's window still runs from its first use (the
                // provider's does). Anything else claims the key anew.
                let first_seen = if replaces.is_some() {
                    "first_seen"
                } else {
                    "now()"
                };
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE idempotency_keys SET agent_id = $4, fingerprint = $5, decision_id = $6,
                        first_seen = {first_seen}
                     WHERE provider = $1 AND account = $2 AND key = $3"
                )))
                .bind(r.provider)
                .bind(idem.account)
                .bind(idem.key)
                .bind(r.agent_id)
                .bind(r.fingerprint)
                .bind(r.decision_id)
                .execute(&mut *tx)
                .await?;
            }
        }
        sqlx::query(
            "INSERT INTO spend_windows (budget, subject, period, provider, cap_cents) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (budget, subject, period) DO NOTHING",
        )
        .bind(&r.window.budget)
        .bind(&r.window.subject)
        .bind(&r.window.period)
        .bind(r.provider)
        .bind(r.cap_cents)
        .execute(&mut *tx)
        .await?;
        let admitted = sqlx::query(
            "UPDATE spend_windows SET reserved_cents = reserved_cents + $4, cap_cents = $5, updated_at = now()
             WHERE budget = $1 AND subject = $2 AND period = $3
               AND committed_cents + reserved_cents + $4 <= $5
             RETURNING committed_cents, reserved_cents",
        )
        .bind(&r.window.budget)
        .bind(&r.window.subject)
        .bind(&r.window.period)
        .bind(cents)
        .bind(r.cap_cents)
        .fetch_optional(&mut *tx)
        .await?;
        if admitted.is_none() {
            let row = sqlx::query(
                "SELECT committed_cents, reserved_cents FROM spend_windows WHERE budget = $1 AND subject = $2 AND period = $3",
            )
            .bind(&r.window.budget)
            .bind(&r.window.subject)
            .bind(&r.window.period)
            .fetch_one(&mut *tx)
            .await?;
            tx.rollback().await?;
            return Ok(Reservation::Exceeded {
                cap_cents: r.cap_cents,
                committed_cents: row.try_get("committed_cents")?,
                reserved_cents: row.try_get("reserved_cents")?,
            });
        }
        sqlx::query(
            "INSERT INTO spend_reservations (decision_id, budget, subject, period, agent_id, provider, cents, state,
                idempotency_key, fingerprint)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'reserved', $8, $9)",
        )
        .bind(r.decision_id)
        .bind(&r.window.budget)
        .bind(&r.window.subject)
        .bind(&r.window.period)
        .bind(r.agent_id)
        .bind(r.provider)
        .bind(cents)
        .bind(r.idempotency.map(|i| i.key))
        .bind(r.fingerprint)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(replaces.map_or(Reservation::Reserved, Reservation::ReservedReplacing))
    }

    /// Commits or releases a reservation in one statement; returns the cents moved (None if there was no open
    /// reservation for this decision).
    pub async fn settle(&self, decision_id: Uuid, commit: bool) -> Result<Option<i64>, StoreError> {
        let state = if commit { "committed" } else { "released" };
        let row = sqlx::query(
            "WITH r AS (
                UPDATE spend_reservations SET state = $2, settled_at = now()
                WHERE decision_id = $1 AND state = 'reserved'
                RETURNING budget, subject, period, cents)
             UPDATE spend_windows w SET
                reserved_cents = w.reserved_cents - r.cents,
                committed_cents = w.committed_cents + CASE WHEN $2 = 'committed' THEN r.cents ELSE 0 END,
                updated_at = now()
             FROM r WHERE w.budget = r.budget AND w.subject = r.subject AND w.period = r.period
             RETURNING r.cents",
        )
        .bind(decision_id)
        .bind(state)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => Some(r.try_get("cents")?),
            None => None,
        })
    }

    pub async fn flag_stale_reservations(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE spend_reservations SET flagged = true
             WHERE state = 'reserved' AND NOT flagged AND created_at < $1",
        )
        .bind(before)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Marks a reservation whose outcome is unknown; it stays reserved.
    pub async fn flag_reservation(&self, decision_id: Uuid) -> Result<(), StoreError> {
        sqlx::query("UPDATE spend_reservations SET flagged = true WHERE decision_id = $1")
            .bind(decision_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn flagged_reservations(&self) -> Result<Vec<FlaggedReservation>, StoreError> {
        let rows = sqlx::query(
            "SELECT decision_id, budget, subject, period, agent_id, provider, cents, created_at
             FROM spend_reservations WHERE flagged AND state = 'reserved' ORDER BY created_at",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(FlaggedReservation {
                    decision_id: r.try_get("decision_id")?,
                    budget: r.try_get("budget")?,
                    subject: r.try_get("subject")?,
                    period: r.try_get("period")?,
                    agent_id: r.try_get("agent_id")?,
                    provider: r.try_get("provider")?,
                    cents: r.try_get("cents")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    pub async fn settle_flagged(
        &self,
        decision_id: Uuid,
        how: ManualSettlement,
        by: &str,
        note: &str,
    ) -> Result<Option<i64>, StoreError> {
        let state = match how {
            ManualSettlement::Committed => "committed",
            ManualSettlement::Released => "released",
        };
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "WITH r AS (
                UPDATE spend_reservations SET state = $2, settled_at = now(), settled_by = $3, settle_note = $4
                WHERE decision_id = $1 AND state = 'reserved' AND flagged
                RETURNING budget, subject, period, cents)
             UPDATE spend_windows w SET
                reserved_cents = w.reserved_cents - r.cents,
                committed_cents = w.committed_cents + CASE WHEN $2 = 'committed' THEN r.cents ELSE 0 END,
                updated_at = now()
             FROM r WHERE w.budget = r.budget AND w.subject = r.subject AND w.period = r.period
             RETURNING r.cents",
        )
        .bind(decision_id)
        .bind(state)
        .bind(by)
        .bind(note)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(None);
        };
        let cents: i64 = row.try_get("cents")?;
        sqlx::query(
            "INSERT INTO admin_actions (id, actor, action, target, detail) VALUES ($1, $2, 'spend.settle', $3, $4::json)",
        )
        .bind(Uuid::now_v7())
        .bind(by)
        .bind(decision_id.to_string())
        .bind(serde_json::json!({"outcome": state, "cents": cents, "note": note}).to_string())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(cents))
    }

    /// committed + reserved in one window (0 if it has no row yet).
    pub async fn window_spent(&self, window: &WindowKey) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "SELECT coalesce(sum(committed_cents + reserved_cents), 0)::int8 AS spent FROM spend_windows
             WHERE budget = $1 AND subject = $2 AND period = $3",
        )
        .bind(&window.budget)
        .bind(&window.subject)
        .bind(&window.period)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("spent")?)
    }

    /// Every window of a period, with how much of it is flagged (unknown outcomes).
    pub async fn spend(&self, period: &str) -> Result<Vec<SpendRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT w.budget, w.subject, w.period, w.provider, w.cap_cents, w.committed_cents, w.reserved_cents,
                    coalesce((SELECT sum(r.cents) FROM spend_reservations r WHERE r.budget = w.budget
                        AND r.subject = w.subject AND r.period = w.period AND r.state = 'reserved' AND r.flagged), 0)::int8
                        AS flagged_cents
             FROM spend_windows w WHERE w.period = $1 ORDER BY w.budget, w.subject",
        )
        .bind(period)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SpendRow {
                    budget: r.try_get("budget")?,
                    subject: r.try_get("subject")?,
                    period: r.try_get("period")?,
                    provider: r.try_get("provider")?,
                    cap_cents: r.try_get("cap_cents")?,
                    committed_cents: r.try_get("committed_cents")?,
                    reserved_cents: r.try_get("reserved_cents")?,
                    flagged_cents: r.try_get("flagged_cents")?,
                })
            })
            .collect()
    }

    // ---- approvals ----

    /// The open (pending or approved, unexpired) approval for this fingerprint, or a new pending one.
    pub async fn open_approval(&self, new: &ApprovalRow) -> Result<ApprovalRow, StoreError> {
        // Open approvals past their expiry are closed first, so the one-open-per-request index admits a new one.
        sqlx::query(
            "UPDATE approvals SET status = 'expired' WHERE fingerprint = $1 AND status IN ('pending', 'approved')
             AND expires_at <= now()",
        )
        .bind(&new.fingerprint)
        .execute(&self.pool)
        .await?;
        for _ in 0..3 {
            let sql = format!(
                "SELECT {} FROM approvals WHERE fingerprint = $1 AND status IN ('pending', 'approved')",
                Self::APPROVAL_COLUMNS
            );
            if let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(&new.fingerprint)
                .fetch_optional(&self.pool)
                .await?
            {
                return approval_from_row(&row);
            }
            let inserted = sqlx::query(
                "INSERT INTO approvals (id, fingerprint, agent_id, agent_name, provider, method, path, query,
                    body_sha256, action, reasons, charge_cents, status, created_at, expires_at, requested_by_decision,
                    headers, on_behalf_of)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::json, $12, 'pending', $13, $14, $15, $16, $17)
                 ON CONFLICT DO NOTHING",
            )
            .bind(new.id)
            .bind(&new.fingerprint)
            .bind(new.agent_id)
            .bind(&new.agent_name)
            .bind(&new.provider)
            .bind(&new.method)
            .bind(&new.path)
            .bind(&new.query)
            .bind(&new.body_sha256)
            .bind(&new.action)
            .bind(new.reasons.to_string())
            .bind(new.charge_cents)
            .bind(new.created_at)
            .bind(new.expires_at)
            .bind(new.requested_by_decision)
            .bind(&new.headers)
            .bind(&new.on_behalf_of)
            .execute(&self.pool)
            .await?;
            if inserted.rows_affected() == 1 {
                return Ok(new.clone());
            }
            // Lost a race with an identical request: the next round reads the winner's row.
        }
        Err(StoreError::Conflict("approval for this request".into()))
    }

    pub async fn open_approval_capped(
        &self,
        new: &ApprovalRow,
        principal: Uuid,
        cap: i64,
    ) -> Result<Opened, StoreError> {
        let mut tx = self.pool.begin().await?;
        // One opener per principal at a time: the count below cannot be passed by a request racing it.
        sqlx::query("SELECT pg_advisory_xact_lock(7461, hashtext($1::text))")
            .bind(principal)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE approvals SET status = 'expired' WHERE fingerprint = $1 AND status IN ('pending', 'approved')
             AND expires_at <= now()",
        )
        .bind(&new.fingerprint)
        .execute(&mut *tx)
        .await?;
        let sql = format!(
            "SELECT {} FROM approvals WHERE fingerprint = $1 AND status IN ('pending', 'approved')",
            Self::APPROVAL_COLUMNS
        );
        if let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&new.fingerprint)
            .fetch_optional(&mut *tx)
            .await?
        {
            tx.commit().await?;
            return Ok(Opened::Approval(Box::new(approval_from_row(&row)?)));
        }
        let waiting: i64 = sqlx::query(
            "SELECT count(*) AS n FROM approvals
             WHERE (agent_id = $1 OR agent_id IN (SELECT id FROM agents WHERE minted_by = $1))
               AND status = 'pending' AND expires_at > now()",
        )
        .bind(principal)
        .fetch_one(&mut *tx)
        .await?
        .try_get("n")?;
        if waiting >= cap {
            tx.commit().await?;
            return Ok(Opened::TooMany(waiting));
        }
        sqlx::query(
            "INSERT INTO approvals (id, fingerprint, agent_id, agent_name, provider, method, path, query,
                body_sha256, action, reasons, charge_cents, status, created_at, expires_at, requested_by_decision,
                headers, on_behalf_of)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::json, $12, 'pending', $13, $14, $15, $16, $17)",
        )
        .bind(new.id)
        .bind(&new.fingerprint)
        .bind(new.agent_id)
        .bind(&new.agent_name)
        .bind(&new.provider)
        .bind(&new.method)
        .bind(&new.path)
        .bind(&new.query)
        .bind(&new.body_sha256)
        .bind(&new.action)
        .bind(new.reasons.to_string())
        .bind(new.charge_cents)
        .bind(new.created_at)
        .bind(new.expires_at)
        .bind(new.requested_by_decision)
        .bind(&new.headers)
        .bind(&new.on_behalf_of)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Opened::Approval(Box::new(new.clone())))
    }

    const APPROVAL_COLUMNS: &'static str = "id, fingerprint, agent_id, agent_name, provider, method, path, query,
        headers, body_sha256, action, reasons, charge_cents, status, created_at, expires_at, requested_by_decision,
        on_behalf_of, decided_by, decided_at, note, consumed_at, consumed_by_decision";

    /// A reviewer's decision on a pending, unexpired approval. `Ok(None)` if it is not (or no longer) pending.
    pub async fn decide_approval(
        &self,
        id: Uuid,
        approve: bool,
        by: &str,
        note: Option<&str>,
    ) -> Result<Option<ApprovalRow>, StoreError> {
        let sql = format!(
            "UPDATE approvals SET status = $2, decided_by = $3, decided_at = now(), note = $4
             WHERE id = $1 AND status = 'pending' AND expires_at > now() RETURNING {}",
            Self::APPROVAL_COLUMNS
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(if approve { "approved" } else { "denied" })
            .bind(by)
            .bind(note)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| approval_from_row(&r)).transpose()
    }

    /// Uses an approval for the request with this fingerprint, once: only one concurrent caller can win.
    pub async fn consume_approval(
        &self,
        id: Uuid,
        fingerprint: &str,
        decision_id: Uuid,
        key: Option<&str>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE approvals SET status = 'consumed', consumed_at = now(), consumed_by_decision = $3,
                 consumed_key = $4
             WHERE id = $1 AND fingerprint = $2 AND status = 'approved' AND expires_at > now()",
        )
        .bind(id)
        .bind(fingerprint)
        .bind(decision_id)
        .bind(key)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn approval_retry(
        &self,
        id: Uuid,
        fingerprint: &str,
        key: &str,
        since: DateTime<Utc>,
    ) -> Result<Option<Uuid>, StoreError> {
        let row = sqlx::query(
            "UPDATE approvals SET retries = retries + 1
             WHERE id = $1 AND fingerprint = $2 AND status = 'consumed' AND consumed_key = $3
               AND consumed_at >= $4 AND expires_at > now()
             RETURNING consumed_by_decision",
        )
        .bind(id)
        .bind(fingerprint)
        .bind(key)
        .bind(since)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => r.try_get("consumed_by_decision")?,
            None => None,
        })
    }

    pub async fn restore_approval(&self, id: Uuid) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE approvals SET status = 'approved', consumed_at = NULL, consumed_by_decision = NULL,
                 consumed_key = NULL
             WHERE id = $1 AND status = 'consumed' AND retries = 0",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn approval(&self, id: Uuid) -> Result<Option<ApprovalRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM approvals WHERE id = $1",
            Self::APPROVAL_COLUMNS
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| approval_from_row(&r)).transpose()
    }

    /// Newest first; `status` filters (pending approvals past expiry are reported as expired).
    pub async fn list_approvals(
        &self,
        status: Option<&str>,
        limit: i64,
    ) -> Result<Vec<ApprovalRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM (SELECT a.*, CASE WHEN a.status IN ('pending', 'approved') AND a.expires_at <= now()
                 THEN 'expired' ELSE a.status END AS effective FROM approvals a) x
             WHERE ($1::text IS NULL OR effective = $1) ORDER BY created_at DESC LIMIT $2",
            Self::APPROVAL_COLUMNS.replace("status,", "effective AS status,")
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(status)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(approval_from_row).collect()
    }

    pub async fn pending_approvals(&self) -> Result<(i64, Option<DateTime<Utc>>), StoreError> {
        let row = sqlx::query(
            "SELECT count(*) AS n, min(created_at) AS oldest FROM approvals
             WHERE status = 'pending' AND expires_at > now()",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((row.try_get("n")?, row.try_get("oldest")?))
    }

    pub async fn budget_usage(&self, period: &str) -> Result<Vec<(String, f64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT provider, coalesce(max((committed_cents + reserved_cents)::float8 / NULLIF(cap_cents, 0)), 0) AS ratio
             FROM spend_windows WHERE period = $1 GROUP BY provider",
        )
        .bind(period)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("provider")?, r.try_get("ratio")?)))
            .collect()
    }

    /// Whether agent traffic is frozen (shared by every replica).
    pub async fn frozen(&self) -> Result<bool, StoreError> {
        let row =
            sqlx::query("SELECT value::text = 'true' AS frozen FROM controls WHERE key = 'frozen'")
                .fetch_optional(&self.pool)
                .await?;
        Ok(match row {
            Some(r) => r.try_get("frozen")?,
            None => false,
        })
    }

    pub async fn set_frozen(&self, frozen: bool, by: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO controls (key, value, updated_by) VALUES ('frozen', $1::json, $2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = now(), updated_by = excluded.updated_by",
        )
        .bind(if frozen { "true" } else { "false" })
        .bind(by)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn freeze_state(&self) -> Result<FreezeState, StoreError> {
        let row = sqlx::query(
            "SELECT value::text = 'true' AS frozen, updated_by, updated_at FROM controls WHERE key = 'frozen'",
        )
        .fetch_optional(&self.pool)
        .await?;
        let (frozen, by, at) = match row {
            Some(r) => (
                r.try_get("frozen")?,
                r.try_get::<Option<String>, _>("updated_by")?,
                r.try_get::<Option<DateTime<Utc>>, _>("updated_at")?,
            ),
            None => (false, None, None),
        };
        let latest = sqlx::query(
            "SELECT action, detail::text AS detail FROM admin_actions WHERE action IN ('freeze', 'unfreeze')
             ORDER BY at DESC, id DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        let latest = match latest {
            Some(r) => Some((
                r.try_get::<String, _>("action")?,
                r.try_get::<Option<String>, _>("detail")?
                    .and_then(|t| serde_json::from_str(&t).ok())
                    .unwrap_or(Value::Null),
            )),
            None => None,
        };
        Ok(FreezeState::assemble(frozen, by, at, latest))
    }

    /// Records a state-changing admin call.
    pub async fn record_admin_action(
        &self,
        actor: &str,
        action: &str,
        target: Option<&str>,
        detail: &Value,
    ) -> Result<Uuid, StoreError> {
        let id = Uuid::now_v7();
        sqlx::query("INSERT INTO admin_actions (id, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5::json)")
            .bind(id)
            .bind(actor)
            .bind(action)
            .bind(target)
            .bind(detail.to_string())
            .execute(&self.pool)
            .await?;
        Ok(id)
    }

    // ---- notifications (the webhook outbox) ----

    const NOTIFICATION_COLUMNS: &'static str =
        "id, webhook, event, event_key, subject, body, status, attempts,
        created_at, next_attempt_at, last_attempt_at, last_status, last_error, delivered_at";

    pub async fn enqueue_notifications(&self, rows: &[NewNotification]) -> Result<u64, StoreError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let mut ids = Vec::with_capacity(rows.len());
        let (mut webhooks, mut events, mut keys) = (Vec::new(), Vec::new(), Vec::new());
        let (mut subjects, mut bodies, mut created) = (Vec::new(), Vec::new(), Vec::new());
        for r in rows {
            ids.push(r.id);
            webhooks.push(r.webhook.as_str());
            events.push(r.event.as_str());
            keys.push(r.event_key.as_str());
            subjects.push(r.subject.as_deref());
            bodies.push(r.body.as_str());
            created.push(r.created_at);
        }
        let done = sqlx::query(
            "INSERT INTO notifications (id, webhook, event, event_key, subject, body, status, created_at, next_attempt_at)
             SELECT id, webhook, event, event_key, subject, body, 'pending', created_at, created_at
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[])
                AS t(id, webhook, event, event_key, subject, body, created_at)
             ON CONFLICT (webhook, event_key) DO NOTHING",
        )
        .bind(&ids)
        .bind(&webhooks)
        .bind(&events)
        .bind(&keys)
        .bind(&subjects)
        .bind(&bodies)
        .bind(&created)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    pub async fn claim_notifications(
        &self,
        webhooks: &[String],
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        owner: Uuid,
        limit: i64,
    ) -> Result<Vec<NotificationRow>, StoreError> {
        // SKIP LOCKED: a replica claiming at the same moment takes other rows instead of waiting for these.
        let sql = format!(
            "UPDATE notifications n SET lease_until = $3, lease_owner = $4, attempts = n.attempts + 1
             FROM (SELECT id FROM notifications
                   WHERE status = 'pending' AND webhook = ANY($1) AND next_attempt_at <= $2
                     AND (lease_until IS NULL OR lease_until <= $2)
                   ORDER BY next_attempt_at LIMIT $5 FOR UPDATE SKIP LOCKED) due
             WHERE n.id = due.id
             RETURNING {}",
            Self::NOTIFICATION_COLUMNS
                .split(',')
                .map(|c| format!("n.{}", c.trim()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(webhooks)
            .bind(now)
            .bind(lease_until)
            .bind(owner)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(notification_from_row).collect()
    }

    pub async fn finish_notification(
        &self,
        id: Uuid,
        owner: Uuid,
        attempt: &DeliveryAttempt,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE notifications SET status = $3, lease_until = NULL, lease_owner = NULL, last_attempt_at = $4,
                last_status = $5, last_error = $6, next_attempt_at = coalesce($7, next_attempt_at),
                delivered_at = CASE WHEN $3 = 'delivered' THEN $4 ELSE delivered_at END
             WHERE id = $1 AND lease_owner = $2 AND status = 'pending'",
        )
        .bind(id)
        .bind(owner)
        .bind(attempt.status().as_str())
        .bind(attempt.at)
        .bind(attempt.http_status)
        .bind(attempt.error.as_deref())
        .bind(attempt.retry_at())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn list_notifications(&self, limit: i64) -> Result<Vec<NotificationRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM notifications ORDER BY created_at DESC, id DESC LIMIT $1",
            Self::NOTIFICATION_COLUMNS
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(notification_from_row).collect()
    }

    pub async fn notifications_pending(&self, webhooks: &[String]) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM notifications WHERE status = 'pending' AND webhook = ANY($1)",
        )
        .bind(webhooks)
        .fetch_one(&self.pool)
        .await?)
    }

    pub async fn approvals_to_announce(
        &self,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<ApprovalRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM approvals
             WHERE (status = 'pending' AND expires_at > $2) OR decided_at >= $1
             ORDER BY created_at DESC, id DESC LIMIT $3",
            Self::APPROVAL_COLUMNS
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(since)
            .bind(now)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(approval_from_row).collect()
    }
}

/// Inserts a batch of decision records in one statement, so one round trip and one implicit transaction
/// (BEGIN/INSERT/COMMIT would cost three round trips, and the decision writers' commit latency is what
/// every allowed request waits for). A batch of one is a plain INSERT.
async fn insert_batch<'c, E: sqlx::PgExecutor<'c>>(
    executor: E,
    rows: &[DecisionRow],
) -> Result<(), StoreError> {
    match rows {
        [] => return Ok(()),
        [row] => return insert_one(executor, row).await,
        _ => {}
    }
    let mut c = DecisionColumns::with_capacity(rows.len());
    for r in rows {
        c.push(r);
    }
    sqlx::query(
        "INSERT INTO decisions (id, at, writer_id, seq, prev_hash, hash, agent_id, agent_name, run_id,
            on_behalf_of, provider, method, path, query, action, risk, outcome, code, rules, reasons,
            policy_revision, charge_cents, approval_id, input, policy_outcome, shadow_outcome)
         SELECT id, at, writer_id, seq, prev_hash, hash, agent_id, agent_name, run_id, on_behalf_of,
            provider, method, path, query, action, risk, outcome, code, rules::json, reasons::json,
            policy_revision, charge_cents, approval_id, input::json, policy_outcome, shadow_outcome
         FROM UNNEST($1::uuid[], $2::timestamptz[], $3::uuid[], $4::int8[], $5::text[], $6::text[],
            $7::uuid[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[],
            $14::text[], $15::text[], $16::text[], $17::text[], $18::text[], $19::text[], $20::text[],
            $21::text[], $22::int8[], $23::text[], $24::text[], $25::text[], $26::text[])
            AS t(id, at, writer_id, seq, prev_hash, hash, agent_id, agent_name, run_id, on_behalf_of,
                 provider, method, path, query, action, risk, outcome, code, rules, reasons,
                 policy_revision, charge_cents, approval_id, input, policy_outcome, shadow_outcome)",
    )
    .bind(c.id)
    .bind(c.at)
    .bind(c.writer_id)
    .bind(c.seq)
    .bind(c.prev_hash)
    .bind(c.hash)
    .bind(c.agent_id)
    .bind(c.agent_name)
    .bind(c.run_id)
    .bind(c.on_behalf_of)
    .bind(c.provider)
    .bind(c.method)
    .bind(c.path)
    .bind(c.query)
    .bind(c.action)
    .bind(c.risk)
    .bind(c.outcome)
    .bind(c.code)
    .bind(c.rules)
    .bind(c.reasons)
    .bind(c.policy_revision)
    .bind(c.charge_cents)
    .bind(c.approval_id)
    .bind(c.input)
    .bind(c.policy_outcome)
    .bind(c.shadow_outcome)
    .execute(executor)
    .await?;
    Ok(())
}

/// One record, the common case below a few hundred requests a second: plain parameters, no arrays to
/// build and unnest.
async fn insert_one<'c, E: sqlx::PgExecutor<'c>>(
    executor: E,
    r: &DecisionRow,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO decisions (id, at, writer_id, seq, prev_hash, hash, agent_id, agent_name, run_id,
            on_behalf_of, provider, method, path, query, action, risk, outcome, code, rules, reasons,
            policy_revision, charge_cents, approval_id, input, policy_outcome, shadow_outcome)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
            $19::json, $20::json, $21, $22, $23, $24::json, $25, $26)",
    )
    .bind(r.id)
    .bind(r.at)
    .bind(r.writer_id)
    .bind(r.seq)
    .bind(&r.prev_hash)
    .bind(&r.hash)
    .bind(r.agent_id)
    .bind(r.agent_name.as_deref())
    .bind(r.run_id.as_deref())
    .bind(r.on_behalf_of.as_deref())
    .bind(&r.provider)
    .bind(&r.method)
    .bind(&r.path)
    .bind(r.query.as_deref())
    .bind(&r.action)
    .bind(&r.risk)
    .bind(&r.outcome)
    .bind(r.code.as_deref())
    .bind(&r.rules)
    .bind(&r.reasons)
    .bind(r.policy_revision.as_deref())
    .bind(r.charge_cents)
    .bind(r.approval_id.as_deref())
    .bind(r.input.as_deref())
    .bind(r.policy_outcome.as_deref())
    .bind(r.shadow_outcome.as_deref())
    .execute(executor)
    .await?;
    Ok(())
}

async fn insert_checkpoint<'c, E: sqlx::PgExecutor<'c>>(
    executor: E,
    c: &CheckpointRow,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO chain_checkpoints (writer_id, seq, hash, kind, at, note) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(c.writer_id)
    .bind(c.seq)
    .bind(&c.hash)
    .bind(&c.kind)
    .bind(c.at)
    .bind(c.note.as_deref())
    .execute(executor)
    .await?;
    Ok(())
}

/// A decision writer's connection, taken from the pool once and kept: a pooled query pays sqlx's
/// check-out and, on release, a `Sync` round trip (its liveness ping), on every commit that requests wait
/// for. After a failed batch the connection is closed (its state is unknown) and the next batch takes a
/// fresh one.
pub struct PgSink {
    pool: PgPool,
    conn: Option<sqlx::pool::PoolConnection<sqlx::Postgres>>,
    /// The pool's new connections go through it: kept alive as long as the sink can reconnect.
    _relay: Option<std::sync::Arc<super::nodelay::NoDelayRelay>>,
}

impl PgSink {
    pub async fn insert_decisions(&mut self, rows: &[DecisionRow]) -> Result<(), StoreError> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => self.conn.insert(self.pool.acquire().await?),
        };
        let result = insert_batch(&mut **conn, rows).await;
        if result.is_err()
            && let Some(mut conn) = self.conn.take()
        {
            conn.close_on_drop();
        }
        result
    }

    pub async fn chain_head(
        &mut self,
        writer_id: Uuid,
    ) -> Result<Option<(i64, String)>, StoreError> {
        let row = sqlx::query(
            "SELECT seq, hash FROM decisions WHERE writer_id = $1 ORDER BY seq DESC LIMIT 1",
        )
        .bind(writer_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => Some((r.try_get("seq")?, r.try_get("hash")?)),
            None => None,
        })
    }
}

/// Column-wise vectors for one UNNEST insert: a batch of rows as columns, borrowing the rows' text (binding needs one array per column).
struct DecisionColumns<'a> {
    id: Vec<Uuid>,
    at: Vec<DateTime<Utc>>,
    writer_id: Vec<Uuid>,
    seq: Vec<i64>,
    prev_hash: Vec<&'a str>,
    hash: Vec<&'a str>,
    agent_id: Vec<Option<Uuid>>,
    agent_name: Vec<Option<&'a str>>,
    run_id: Vec<Option<&'a str>>,
    on_behalf_of: Vec<Option<&'a str>>,
    provider: Vec<&'a str>,
    method: Vec<&'a str>,
    path: Vec<&'a str>,
    query: Vec<Option<&'a str>>,
    action: Vec<&'a str>,
    risk: Vec<&'a str>,
    outcome: Vec<&'a str>,
    code: Vec<Option<&'a str>>,
    rules: Vec<&'a str>,
    reasons: Vec<&'a str>,
    policy_revision: Vec<Option<&'a str>>,
    charge_cents: Vec<Option<i64>>,
    approval_id: Vec<Option<&'a str>>,
    input: Vec<Option<&'a str>>,
    policy_outcome: Vec<Option<&'a str>>,
    shadow_outcome: Vec<Option<&'a str>>,
}

impl<'a> DecisionColumns<'a> {
    fn with_capacity(n: usize) -> Self {
        DecisionColumns {
            id: Vec::with_capacity(n),
            at: Vec::with_capacity(n),
            writer_id: Vec::with_capacity(n),
            seq: Vec::with_capacity(n),
            prev_hash: Vec::with_capacity(n),
            hash: Vec::with_capacity(n),
            agent_id: Vec::with_capacity(n),
            agent_name: Vec::with_capacity(n),
            run_id: Vec::with_capacity(n),
            on_behalf_of: Vec::with_capacity(n),
            provider: Vec::with_capacity(n),
            method: Vec::with_capacity(n),
            path: Vec::with_capacity(n),
            query: Vec::with_capacity(n),
            action: Vec::with_capacity(n),
            risk: Vec::with_capacity(n),
            outcome: Vec::with_capacity(n),
            code: Vec::with_capacity(n),
            rules: Vec::with_capacity(n),
            reasons: Vec::with_capacity(n),
            policy_revision: Vec::with_capacity(n),
            charge_cents: Vec::with_capacity(n),
            approval_id: Vec::with_capacity(n),
            input: Vec::with_capacity(n),
            policy_outcome: Vec::with_capacity(n),
            shadow_outcome: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, r: &'a DecisionRow) {
        self.id.push(r.id);
        self.at.push(r.at);
        self.writer_id.push(r.writer_id);
        self.seq.push(r.seq);
        self.prev_hash.push(&r.prev_hash);
        self.hash.push(&r.hash);
        self.agent_id.push(r.agent_id);
        self.agent_name.push(r.agent_name.as_deref());
        self.run_id.push(r.run_id.as_deref());
        self.on_behalf_of.push(r.on_behalf_of.as_deref());
        self.provider.push(&r.provider);
        self.method.push(&r.method);
        self.path.push(&r.path);
        self.query.push(r.query.as_deref());
        self.action.push(&r.action);
        self.risk.push(&r.risk);
        self.outcome.push(&r.outcome);
        self.code.push(r.code.as_deref());
        self.rules.push(&r.rules);
        self.reasons.push(&r.reasons);
        self.policy_revision.push(r.policy_revision.as_deref());
        self.charge_cents.push(r.charge_cents);
        self.approval_id.push(r.approval_id.as_deref());
        self.input.push(r.input.as_deref());
        self.policy_outcome.push(r.policy_outcome.as_deref());
        self.shadow_outcome.push(r.shadow_outcome.as_deref());
    }
}

fn agent_from_row(r: &sqlx::postgres::PgRow) -> Result<AgentRow, StoreError> {
    Ok(AgentRow {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        team: r.try_get("team")?,
        scopes: r.try_get("scopes")?,
        labels: r.try_get("labels")?,
        key_hash: r.try_get("key_hash")?,
        key_prefix: r.try_get("key_prefix")?,
        status: r.try_get("status")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        revoked_at: r.try_get("revoked_at")?,
        created_by: r.try_get("created_by")?,
        minted_by: r.try_get("minted_by")?,
        minted_token_id: r.try_get("minted_token_id")?,
    })
}

fn minted_from_row(r: &sqlx::postgres::PgRow) -> Result<MintedTokenRow, StoreError> {
    let key_id: Option<String> = r.try_get("secret_key_id")?;
    let nonce: Option<Vec<u8>> = r.try_get("secret_nonce")?;
    let ciphertext: Option<Vec<u8>> = r.try_get("secret_ciphertext")?;
    Ok(MintedTokenRow {
        provider: r.try_get("provider")?,
        token_id: r.try_get("token_id")?,
        name: r.try_get("name")?,
        policies: r.try_get("policies")?,
        expires_on: r.try_get("expires_on")?,
        status: status_parse(&r.try_get::<String, _>("status")?)?,
        custody: custody_parse(&r.try_get::<String, _>("custody")?)?,
        minted_by: r.try_get("minted_by")?,
        minted_by_name: r.try_get("minted_by_name")?,
        decision_id: r.try_get("decision_id")?,
        last_decision_id: r.try_get("last_decision_id")?,
        handle_agent_id: r.try_get("handle_agent_id")?,
        sealed: match (key_id, nonce, ciphertext) {
            (Some(key_id), Some(nonce), Some(ciphertext)) => Some(crate::vault::SealedSecret {
                key_id,
                nonce,
                ciphertext,
            }),
            _ => None,
        },
        rolls: r.try_get("rolls")?,
        created_at: r.try_get("created_at")?,
        rolled_at: r.try_get("rolled_at")?,
        deleted_at: r.try_get("deleted_at")?,
        account_id: r.try_get("account_id")?,
    })
}

/// Revokes a handle's agent (bumping the agents version every replica polls).
async fn revoke_handle_on(conn: &mut sqlx::PgConnection, agent_id: Uuid) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE agents SET status = 'revoked', revoked_at = now(), version = nextval('agents_version_seq')
         WHERE id = $1 AND status = 'active'",
    )
    .bind(agent_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

fn reviewer_from_row(r: &sqlx::postgres::PgRow) -> Result<ReviewerRow, StoreError> {
    Ok(ReviewerRow {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        email: r.try_get("email")?,
        role: r.try_get("role")?,
        token_hash: r.try_get("token_hash")?,
        token_prefix: r.try_get("token_prefix")?,
        created_at: r.try_get("created_at")?,
        created_by: r.try_get("created_by")?,
        revoked_at: r.try_get("revoked_at")?,
        rotated_at: r.try_get("rotated_at")?,
        last_used: r.try_get("last_used")?,
    })
}

fn decision_from_row(
    r: &sqlx::postgres::PgRow,
) -> Result<(DecisionRow, Option<OutcomeRow>), StoreError> {
    let id: Uuid = r.try_get("id")?;
    let decision = DecisionRow {
        id,
        at: r.try_get("at")?,
        writer_id: r.try_get("writer_id")?,
        seq: r.try_get("seq")?,
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
        agent_id: r.try_get("agent_id")?,
        agent_name: r.try_get("agent_name")?,
        run_id: r.try_get("run_id")?,
        on_behalf_of: r.try_get("on_behalf_of")?,
        provider: r.try_get("provider")?,
        method: r.try_get("method")?,
        path: r.try_get("path")?,
        query: r.try_get("query")?,
        action: r.try_get("action")?,
        risk: r.try_get("risk")?,
        outcome: r.try_get("outcome")?,
        code: r.try_get("code")?,
        rules: r.try_get("rules")?,
        reasons: r.try_get("reasons")?,
        policy_revision: r.try_get("policy_revision")?,
        charge_cents: r.try_get("charge_cents")?,
        approval_id: r.try_get("approval_id")?,
        input: r.try_get("input")?,
        policy_outcome: r.try_get("policy_outcome")?,
        shadow_outcome: r.try_get("shadow_outcome")?,
    };
    let outcome_at: Option<DateTime<Utc>> = r.try_get("outcome_at")?;
    let outcome = match outcome_at {
        Some(at) => Some(OutcomeRow {
            decision_id: id,
            at,
            upstream_status: r.try_get("upstream_status")?,
            latency_us: r.try_get("latency_us")?,
            error: r.try_get("outcome_error")?,
            flagged: r.try_get("flagged")?,
        }),
        None => None,
    };
    Ok((decision, outcome))
}

fn approval_from_row(r: &sqlx::postgres::PgRow) -> Result<ApprovalRow, StoreError> {
    Ok(ApprovalRow {
        id: r.try_get("id")?,
        fingerprint: r.try_get("fingerprint")?,
        agent_id: r.try_get("agent_id")?,
        agent_name: r.try_get("agent_name")?,
        provider: r.try_get("provider")?,
        method: r.try_get("method")?,
        path: r.try_get("path")?,
        query: r.try_get("query")?,
        headers: r.try_get("headers")?,
        body_sha256: r.try_get("body_sha256")?,
        action: r.try_get("action")?,
        reasons: r.try_get("reasons")?,
        charge_cents: r.try_get("charge_cents")?,
        status: r.try_get("status")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        requested_by_decision: r.try_get("requested_by_decision")?,
        on_behalf_of: r.try_get("on_behalf_of")?,
        decided_by: r.try_get("decided_by")?,
        decided_at: r.try_get("decided_at")?,
        note: r.try_get("note")?,
        consumed_at: r.try_get("consumed_at")?,
        consumed_by_decision: r.try_get("consumed_by_decision")?,
    })
}

fn notification_from_row(r: &sqlx::postgres::PgRow) -> Result<NotificationRow, StoreError> {
    Ok(NotificationRow {
        id: r.try_get("id")?,
        webhook: r.try_get("webhook")?,
        event: r.try_get("event")?,
        event_key: r.try_get("event_key")?,
        subject: r.try_get("subject")?,
        body: r.try_get("body")?,
        status: NotificationStatus::parse(&r.try_get::<String, _>("status")?)?,
        attempts: i64::from(r.try_get::<i32, _>("attempts")?),
        created_at: r.try_get("created_at")?,
        next_attempt_at: r.try_get("next_attempt_at")?,
        last_attempt_at: r.try_get("last_attempt_at")?,
        last_status: r.try_get("last_status")?,
        last_error: r.try_get("last_error")?,
        delivered_at: r.try_get("delivered_at")?,
    })
}

/// Inserts an agent on one connection (a pool's, or a transaction's).
async fn insert_agent_on(
    conn: &mut sqlx::PgConnection,
    agent: &AgentRow,
) -> Result<(), StoreError> {
    let result = sqlx::query(
            "INSERT INTO agents (id, name, team, scopes, labels, key_hash, key_prefix, status, created_at, expires_at,
                created_by, minted_by, minted_token_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(agent.id)
        .bind(&agent.name)
        .bind(&agent.team)
        .bind(&agent.scopes)
        .bind(&agent.labels)
        .bind(&agent.key_hash)
        .bind(&agent.key_prefix)
        .bind(&agent.status)
        .bind(agent.created_at)
        .bind(agent.expires_at)
        .bind(&agent.created_by)
        .bind(agent.minted_by)
        .bind(&agent.minted_token_id)
        .execute(&mut *conn)
        .await;
    match result {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
            Err(StoreError::Conflict(format!("agent '{}'", agent.name)))
        }
        Err(e) => Err(e.into()),
    }
}
