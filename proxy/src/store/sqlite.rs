//! The embedded SQLite backend: the single-node default when no database is configured.
//!
//! Owns: the SQLite file, its migrations (embedded from `migrations/sqlite`) and its SQL. Every write goes
//! through one pooled connection, so transactions run one at a time and a reservation's check-and-update
//! cannot interleave with another's; other processes (the CLI) share the file through SQLite's own locking.
//! `serve` takes an exclusive lock file beside the database, so a second server on the same file refuses
//! to start instead of two processes each believing they own the hash chain and caches.
//! Must not: be used by several replicas; that is what Postgres is for.

use std::fs::File;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqlitePool};
use uuid::Uuid;

use super::*;

mod resources;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// How long a statement waits for another process (the CLI) to release the file.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    path: String,
    /// The `serve` lock, held for the life of the process once taken.
    lock: Arc<Mutex<Option<File>>>,
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn decode<E: std::error::Error + Send + Sync + 'static>(e: E) -> StoreError {
    StoreError::Unavailable(sqlx::Error::Decode(Box::new(e)))
}

fn parse_ts(text: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(decode)
}

fn opt_ts(text: Option<String>) -> Result<Option<DateTime<Utc>>, StoreError> {
    text.as_deref().map(parse_ts).transpose()
}

fn uuid(text: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(text).map_err(decode)
}

fn opt_uuid(text: Option<String>) -> Result<Option<Uuid>, StoreError> {
    text.as_deref().map(uuid).transpose()
}

fn json(text: &str) -> Result<Value, StoreError> {
    serde_json::from_str(text).map_err(decode)
}

impl SqliteStore {
    /// Opens (creating if missing) the file named by `sqlite:PATH`.
    pub async fn open(url: &str) -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Durable at commit, like Postgres: the WAL is synced on every commit.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT);
        let path = options.get_filename().to_string_lossy().into_owned();
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(BUSY_TIMEOUT)
            .connect_with(options)
            .await?;
        Ok(SqliteStore {
            pool,
            path,
            lock: Arc::new(Mutex::new(None)),
        })
    }

    /// Takes the exclusive serve lock (`<file>.lock`); fails if another process holds it.
    pub fn lock_for_serving(&self) -> Result<(), StoreError> {
        let mut held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if held.is_some() {
            return Ok(());
        }
        let lock_path = format!("{}.lock", self.path);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::Locked(format!("{lock_path}: {e}")))?;
        match file.try_lock() {
            Ok(()) => {
                *held = Some(file);
                Ok(())
            }
            Err(_) => Err(StoreError::Locked(format!(
                "another tollgate is serving from {}; the embedded store is single-process (use Postgres for several replicas)",
                self.path
            ))),
        }
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    // ---- agents ----

    pub async fn insert_agent(&self, a: &AgentRow) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        insert_agent_on(&mut conn, a).await
    }

    const AGENT_COLUMNS: &'static str = "id, name, team, scopes, labels, key_hash, key_prefix, status, created_at, expires_at, revoked_at, created_by, minted_by, minted_token_id";

    pub async fn agent_by_key_hash(&self, key_hash: &str) -> Result<Option<AgentRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM agents WHERE key_hash = ?",
            Self::AGENT_COLUMNS
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(key_hash)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| agent_from_row(&r)).transpose()
    }

    pub async fn agent_by_id(&self, id: Uuid) -> Result<Option<AgentRow>, StoreError> {
        let sql = format!("SELECT {} FROM agents WHERE id = ?", Self::AGENT_COLUMNS);
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.to_string())
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

    pub async fn revoke_agent(&self, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE agents SET status = 'revoked', revoked_at = ?,
                version = (SELECT coalesce(max(version), 0) + 1 FROM agents)
             WHERE name = ? AND status = 'active'",
        )
        .bind(ts(Utc::now()))
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
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&row.provider)
        .bind(&row.token_id)
        .bind(&row.name)
        .bind(row.policies.to_string())
        .bind(row.expires_on.map(ts))
        .bind(row.status.as_str())
        .bind(custody_text(row.custody))
        .bind(row.minted_by.to_string())
        .bind(&row.minted_by_name)
        .bind(row.decision_id.to_string())
        .bind(row.last_decision_id.to_string())
        .bind(row.handle_agent_id.map(|u| u.to_string()))
        .bind(sealed.map(|s| s.key_id.clone()))
        .bind(sealed.map(|s| s.nonce.clone()))
        .bind(sealed.map(|s| s.ciphertext.clone()))
        .bind(row.rolls)
        .bind(ts(row.created_at))
        .bind(row.rolled_at.map(ts))
        .bind(row.deleted_at.map(ts))
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
        let old: Option<Option<String>> = sqlx::query_scalar(
            "SELECT handle_agent_id FROM minted_tokens WHERE provider = ? AND token_id = ?",
        )
        .bind(roll.provider)
        .bind(roll.token_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(Some(old_handle)) = old {
            revoke_handle_on(&mut tx, uuid(&old_handle)?).await?;
        }
        if let Some(handle) = roll.handle {
            insert_agent_on(&mut tx, handle).await?;
        }
        let sealed = roll.sealed.as_ref();
        sqlx::query(
            "INSERT INTO minted_tokens (provider, token_id, policies, status, custody, minted_by, minted_by_name,
                decision_id, last_decision_id, handle_agent_id, secret_key_id, secret_nonce, secret_ciphertext,
                rolls, created_at, rolled_at, account_id)
             VALUES (?1, ?2, 'null', 'rolled', ?3, ?4, ?5, ?6, ?6, ?7, ?8, ?9, ?10, 1, ?11, ?11, ?12)
             ON CONFLICT (provider, token_id) DO UPDATE SET status = 'rolled', custody = excluded.custody,
                last_decision_id = excluded.last_decision_id, handle_agent_id = excluded.handle_agent_id,
                secret_key_id = excluded.secret_key_id, secret_nonce = excluded.secret_nonce,
                secret_ciphertext = excluded.secret_ciphertext, rolls = minted_tokens.rolls + 1,
                rolled_at = excluded.rolled_at",
        )
        .bind(roll.provider)
        .bind(roll.token_id)
        .bind(custody_text(roll.custody))
        .bind(roll.agent_id.to_string())
        .bind(roll.agent_name)
        .bind(roll.decision_id.to_string())
        .bind(roll.handle.map(|h| h.id.to_string()))
        .bind(sealed.map(|s| s.key_id.clone()))
        .bind(sealed.map(|s| s.nonce.clone()))
        .bind(sealed.map(|s| s.ciphertext.clone()))
        .bind(ts(roll.at))
        .bind(roll.account_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn update_minted_token(&self, u: &TokenUpdate<'_>) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let handle: Option<Option<String>> = sqlx::query_scalar(
            "UPDATE minted_tokens SET name = COALESCE(?3, name), policies = COALESCE(?4, policies),
                expires_on = ?5, last_decision_id = ?6
             WHERE provider = ?1 AND token_id = ?2 RETURNING handle_agent_id",
        )
        .bind(u.provider)
        .bind(u.token_id)
        .bind(&u.name)
        .bind(u.policies.as_ref().map(Value::to_string))
        .bind(u.expires_on.map(ts))
        .bind(u.decision_id.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(handle) = handle else {
            return Ok(false);
        };
        if let Some(handle) = handle {
            sqlx::query(
                // Never past the minter's own expiry (a NULL on either side is no bound).
                "UPDATE agents SET expires_at = (SELECT CASE
                        WHEN ?1 IS NULL THEN p.expires_at
                        WHEN p.expires_at IS NULL THEN ?1
                        ELSE min(?1, p.expires_at) END
                      FROM agents p WHERE p.id = agents.minted_by),
                    version = (SELECT coalesce(max(version), 0) + 1 FROM agents)
                 WHERE id = ?2 AND status = 'active'",
            )
            .bind(u.expires_on.map(ts))
            .bind(handle)
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
        let old: Option<Option<String>> = sqlx::query_scalar(
            "SELECT handle_agent_id FROM minted_tokens WHERE provider = ? AND token_id = ?",
        )
        .bind(provider)
        .bind(token_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(handle) = old else {
            return Ok(false);
        };
        if let Some(handle) = handle {
            revoke_handle_on(&mut tx, uuid(&handle)?).await?;
        }
        sqlx::query(
            "UPDATE minted_tokens SET status = 'deleted', deleted_at = ?, last_decision_id = ?,
                secret_key_id = NULL, secret_nonce = NULL, secret_ciphertext = NULL
             WHERE provider = ? AND token_id = ?",
        )
        .bind(ts(at))
        .bind(decision_id.to_string())
        .bind(provider)
        .bind(token_id)
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
            "SELECT {} FROM minted_tokens WHERE provider = ? AND token_id = ?",
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
                "INSERT INTO vault_key_checks (key_id, nonce, ciphertext) VALUES (?, ?, ?)
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
            "SELECT {} FROM minted_tokens WHERE provider = ? AND lower(replace(token_id, '-', '')) = ?
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
             WHERE status IN ('active', 'rolled') AND (expires_on IS NULL OR expires_on > ?)
             GROUP BY provider, custody",
        )
        .bind(ts(now))
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
            "SELECT {} FROM minted_tokens WHERE handle_agent_id = ?",
            Self::MINTED_COLUMNS
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(agent_id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| minted_from_row(&r)).transpose()
    }

    pub async fn agent_created_by(&self, id: Uuid) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT created_by FROM agents WHERE id = ?")
            .bind(id.to_string())
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
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(r.id.to_string())
        .bind(&r.name)
        .bind(&r.email)
        .bind(&r.role)
        .bind(&r.token_hash)
        .bind(&r.token_prefix)
        .bind(ts(r.created_at))
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
            "SELECT {} FROM reviewers WHERE token_hash = ?",
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
            "SELECT {} FROM reviewers WHERE lower(email) = lower(?) AND revoked_at IS NULL",
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
            "UPDATE reviewers SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
        )
        .bind(ts(Utc::now()))
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
            "UPDATE reviewers SET token_hash = ?, token_prefix = ?, rotated_at = ?
             WHERE name = ? AND revoked_at IS NULL",
        )
        .bind(token_hash)
        .bind(token_prefix)
        .bind(ts(Utc::now()))
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn touch_reviewer(&self, id: Uuid) -> Result<(), StoreError> {
        let now = Utc::now();
        sqlx::query(
            "UPDATE reviewers SET last_used = ? WHERE id = ? AND (last_used IS NULL OR last_used < ?)",
        )
        .bind(ts(now))
        .bind(id.to_string())
        .bind(ts(now - chrono::Duration::minutes(1)))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn agents_version(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT coalesce(max(version), 0) AS v FROM agents")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("v")?)
    }

    // ---- console ----

    pub async fn reviewer_by_id(&self, id: Uuid) -> Result<Option<ReviewerRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM reviewers WHERE id = ?",
            Self::REVIEWER_COLUMNS
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| reviewer_from_row(&r)).transpose()
    }

    pub async fn insert_console_session(&self, s: &ConsoleSessionRow) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let day_ago = ts(Utc::now() - chrono::Duration::days(1));
        sqlx::query("DELETE FROM console_sessions WHERE expires_at < ?1 OR ended_at < ?1")
            .bind(&day_ago)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO console_sessions (id_hash, reviewer_id, reviewer_name, credential_hash, csrf_token,
                created_at, expires_at)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&s.id_hash)
        .bind(s.reviewer_id.map(|id| id.to_string()))
        .bind(&s.reviewer_name)
        .bind(&s.credential_hash)
        .bind(&s.csrf_token)
        .bind(ts(s.created_at))
        .bind(ts(s.expires_at))
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
             FROM console_sessions WHERE id_hash = ? AND ended_at IS NULL AND expires_at > ?",
        )
        .bind(id_hash)
        .bind(ts(Utc::now()))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(ConsoleSessionRow {
                id_hash: r.try_get("id_hash")?,
                reviewer_id: opt_uuid(r.try_get("reviewer_id")?)?,
                reviewer_name: r.try_get("reviewer_name")?,
                credential_hash: r.try_get("credential_hash")?,
                csrf_token: r.try_get("csrf_token")?,
                created_at: parse_ts(&r.try_get::<String, _>("created_at")?)?,
                expires_at: parse_ts(&r.try_get::<String, _>("expires_at")?)?,
            })
        })
        .transpose()
    }

    pub async fn end_console_session(&self, id_hash: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE console_sessions SET ended_at = ? WHERE id_hash = ? AND ended_at IS NULL",
        )
        .bind(ts(Utc::now()))
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
            "SELECT {} FROM approvals WHERE status = 'pending' AND expires_at > ?1
               AND (?2 IS NULL OR agent_name = ?2)
             ORDER BY created_at, id LIMIT ?3",
            Self::APPROVAL_COLUMNS
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(ts(Utc::now()))
            .bind(agent)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(approval_from_row).collect()
    }

    pub async fn pending_by_agent(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT agent_name, count(*) AS n FROM approvals WHERE status = 'pending' AND expires_at > ?
             GROUP BY agent_name ORDER BY n DESC, agent_name",
        )
        .bind(ts(Utc::now()))
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
            if let Some(at) = opt_ts(r.try_get("seen")?)? {
                seen.push((r.try_get("name")?, at));
            }
        }
        Ok(seen)
    }

    // ---- decisions ----

    pub async fn chain_head(&self, writer_id: Uuid) -> Result<Option<(i64, String)>, StoreError> {
        let row = sqlx::query(
            "SELECT seq, hash FROM decisions WHERE writer_id = ? ORDER BY seq DESC LIMIT 1",
        )
        .bind(writer_id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => Some((r.try_get("seq")?, r.try_get("hash")?)),
            None => None,
        })
    }

    pub async fn insert_decisions(&self, rows: &[DecisionRow]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for r in rows {
            sqlx::query(
                "INSERT INTO decisions (id, at, writer_id, seq, prev_hash, hash, agent_id, agent_name, run_id,
                    on_behalf_of, provider, method, path, query, action, risk, outcome, code, rules, reasons,
                    policy_revision, charge_cents, approval_id, input, policy_outcome, shadow_outcome)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(r.id.to_string())
            .bind(ts(r.at))
            .bind(r.writer_id.to_string())
            .bind(r.seq)
            .bind(&r.prev_hash)
            .bind(&r.hash)
            .bind(r.agent_id.map(|u| u.to_string()))
            .bind(&r.agent_name)
            .bind(&r.run_id)
            .bind(&r.on_behalf_of)
            .bind(&r.provider)
            .bind(&r.method)
            .bind(&r.path)
            .bind(&r.query)
            .bind(&r.action)
            .bind(&r.risk)
            .bind(&r.outcome)
            .bind(&r.code)
            .bind(&r.rules)
            .bind(&r.reasons)
            .bind(&r.policy_revision)
            .bind(r.charge_cents)
            .bind(&r.approval_id)
            .bind(&r.input)
            .bind(&r.policy_outcome)
            .bind(&r.shadow_outcome)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn insert_outcomes(&self, outcomes: &[OutcomeRow]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for o in outcomes {
            sqlx::query(
                "INSERT INTO decision_outcomes (decision_id, at, upstream_status, latency_us, error, flagged)
                 VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (decision_id) DO NOTHING",
            )
            .bind(o.decision_id.to_string())
            .bind(ts(o.at))
            .bind(o.upstream_status)
            .bind(o.latency_us)
            .bind(&o.error)
            .bind(o.flagged)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    const DECISION_COLUMNS: &'static str = "d.id, d.at, d.writer_id, d.seq, d.prev_hash, d.hash, d.agent_id,
        d.agent_name, d.run_id, d.on_behalf_of, d.provider, d.method, d.path, d.query, d.action, d.risk,
        d.outcome, d.code, d.rules, d.reasons, d.policy_revision, d.charge_cents, d.approval_id, d.input,
        d.policy_outcome, d.shadow_outcome,
        o.upstream_status, o.latency_us, o.error AS outcome_error, o.flagged, o.at AS outcome_at";

    pub async fn decision(
        &self,
        id: Uuid,
    ) -> Result<Option<(DecisionRow, Option<OutcomeRow>)>, StoreError> {
        let sql = format!(
            "SELECT {} FROM decisions d LEFT JOIN decision_outcomes o ON o.decision_id = d.id WHERE d.id = ?",
            Self::DECISION_COLUMNS
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| decision_from_row(&r)).transpose()
    }

    pub async fn list_decisions(
        &self,
        f: &DecisionFilter,
    ) -> Result<Vec<(DecisionRow, Option<OutcomeRow>)>, StoreError> {
        let sql = format!(
            "SELECT {} FROM decisions d LEFT JOIN decision_outcomes o ON o.decision_id = d.id
             WHERE (?1 IS NULL OR d.agent_name = ?1)
               AND (?2 IS NULL OR d.action = ?2)
               AND (?3 IS NULL OR d.outcome = ?3)
               AND (?4 IS NULL OR d.at >= ?4)
               AND (?5 IS NULL OR d.at < ?5 OR (d.at = ?5 AND d.id < ?6))
               AND (?8 IS NULL OR d.provider = ?8)
               AND (?9 IS NULL OR d.at < ?9)
             ORDER BY d.at DESC, d.id DESC LIMIT ?7",
            Self::DECISION_COLUMNS
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&f.agent)
            .bind(&f.action)
            .bind(&f.outcome)
            .bind(f.since.map(ts))
            .bind(f.before.map(|b| ts(b.0)))
            .bind(f.before.map(|b| b.1.to_string()))
            .bind(f.limit)
            .bind(&f.provider)
            .bind(f.until.map(ts))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decision_from_row).collect()
    }

    pub async fn replayable_decisions(
        &self,
        since: Option<DateTime<Utc>>,
        limit: i64,
    ) -> Result<Vec<ReplayRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, agent_name, action, policy_outcome, input FROM decisions
             WHERE input IS NOT NULL AND policy_outcome IS NOT NULL AND (?1 IS NULL OR at >= ?1)
             ORDER BY at, id LIMIT ?2",
        )
        .bind(since.map(ts))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ReplayRow {
                    id: uuid(&r.try_get::<String, _>("id")?)?,
                    at: parse_ts(&r.try_get::<String, _>("at")?)?,
                    agent_name: r.try_get("agent_name")?,
                    action: r.try_get("action")?,
                    policy_outcome: r.try_get("policy_outcome")?,
                    input: r.try_get("input")?,
                })
            })
            .collect()
    }

    pub async fn writer_chain(&self, writer_id: Uuid) -> Result<Vec<DecisionRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM decisions d LEFT JOIN decision_outcomes o ON o.decision_id = d.id
             WHERE d.writer_id = ? ORDER BY d.seq",
            Self::DECISION_COLUMNS
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(writer_id.to_string())
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
            .map(|r| uuid(&r.try_get::<String, _>("writer_id")?))
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
                    writer_id: uuid(&r.try_get::<String, _>("writer_id")?)?,
                    seq: r.try_get("seq")?,
                    hash: r.try_get("hash")?,
                    kind: r.try_get("kind")?,
                    at: parse_ts(&r.try_get::<String, _>("at")?)?,
                    note: r.try_get("note")?,
                })
            })
            .collect()
    }

    /// As Postgres's: one transaction per writer, its prune checkpoint written before the rows go.
    pub async fn prune_decisions(
        &self,
        before: DateTime<Utc>,
        now: DateTime<Utc>,
        note: &str,
    ) -> Result<Vec<(CheckpointRow, u64)>, StoreError> {
        let writers: Vec<String> =
            sqlx::query_scalar("SELECT DISTINCT writer_id FROM decisions WHERE at < ?")
                .bind(ts(before))
                .fetch_all(&self.pool)
                .await?;
        let mut cuts = Vec::new();
        for writer in writers {
            let mut tx = self.pool.begin().await?;
            let head = sqlx::query(
                "SELECT seq, hash FROM decisions
                 WHERE writer_id = ?1 AND seq < coalesce(
                     (SELECT min(seq) FROM decisions WHERE writer_id = ?1 AND at >= ?2),
                     (SELECT max(seq) + 1 FROM decisions WHERE writer_id = ?1))
                 ORDER BY seq DESC LIMIT 1",
            )
            .bind(&writer)
            .bind(ts(before))
            .fetch_optional(&mut *tx)
            .await?;
            let Some(head) = head else { continue };
            let checkpoint = CheckpointRow {
                writer_id: uuid(&writer)?,
                seq: head.try_get("seq")?,
                hash: head.try_get("hash")?,
                kind: "prune".to_string(),
                at: now,
                note: Some(note.to_string()),
            };
            insert_checkpoint(&mut *tx, &checkpoint).await?;
            sqlx::query(
                "DELETE FROM decision_outcomes WHERE decision_id IN
                   (SELECT id FROM decisions WHERE writer_id = ? AND seq <= ?)",
            )
            .bind(&writer)
            .bind(checkpoint.seq)
            .execute(&mut *tx)
            .await?;
            let deleted = sqlx::query("DELETE FROM decisions WHERE writer_id = ? AND seq <= ?")
                .bind(&writer)
                .bind(checkpoint.seq)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            cuts.push((checkpoint, deleted));
        }
        Ok(cuts)
    }

    // ---- spend ----

    /// The same conditional UPDATE as Postgres, inside one immediate transaction on the single connection.
    /// As Postgres's: the key's row is claimed first, in the same transaction as the reservation (the one
    /// pooled connection serializes transactions).
    pub async fn reserve(&self, r: &NewReservation<'_>) -> Result<Reservation, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut replaces = None;
        let mut cents = r.cents;
        if let Some(idem) = &r.idempotency {
            let mut first_seen_now = ts(Utc::now());
            let earlier = sqlx::query(
                "SELECT k.fingerprint, k.decision_id, k.first_seen, coalesce(r.state, 'released') AS state,
                        coalesce(r.flagged, 0) AS flagged
                 FROM idempotency_keys k LEFT JOIN spend_reservations r ON r.decision_id = k.decision_id
                 WHERE k.provider = ? AND k.account = ? AND k.key = ?",
            )
            .bind(r.provider)
            .bind(idem.account)
            .bind(idem.key)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(earlier) = earlier {
                let fingerprint: String = earlier.try_get("fingerprint")?;
                let first_seen = parse_ts(&earlier.try_get::<String, _>("first_seen")?)?;
                let state: String = earlier.try_get("state")?;
                let flagged: bool = earlier.try_get("flagged")?;
                let live = first_seen > Utc::now() - chrono::Duration::seconds(idem.window_secs);
                if let Some(verdict) =
                    earlier_use(live, &state, flagged, fingerprint == r.fingerprint)
                {
                    tx.rollback().await?;
                    return Ok(verdict);
                }
                if live && state == "reserved" && flagged && fingerprint == r.fingerprint {
                    // The same call as the flagged attempt (the provider acts on the key at most once): this
                    // reservation takes its money over, so the call is counted once against the cap — at the
                    // larger of the two charges — and the key's window still runs from its first use.
                    let earlier_id = uuid(&earlier.try_get::<String, _>("decision_id")?)?;
                    let now = ts(Utc::now());
                    let released = sqlx::query(
                        "UPDATE spend_reservations SET state = 'released', settled_at = ?2,
                            settled_by = 'tollgate', settle_note = ?3
                         WHERE decision_id = ?1 AND state = 'reserved'
                         RETURNING budget, subject, period, cents",
                    )
                    .bind(earlier_id.to_string())
                    .bind(&now)
                    .bind(replaced_note(r.decision_id))
                    .fetch_optional(&mut *tx)
                    .await?;
                    if let Some(e) = released {
                        cents = cents.max(e.try_get::<i64, _>("cents")?);
                        first_seen_now = ts(first_seen);
                        sqlx::query(
                            "UPDATE spend_windows SET reserved_cents = reserved_cents - ?4, updated_at = ?5
                             WHERE budget = ?1 AND subject = ?2 AND period = ?3",
                        )
                        .bind(e.try_get::<String, _>("budget")?)
                        .bind(e.try_get::<String, _>("subject")?)
                        .bind(e.try_get::<String, _>("period")?)
                        .bind(e.try_get::<i64, _>("cents")?)
                        .bind(&now)
                        .execute(&mut *tx)
                        .await?;
                    }
                    replaces = Some(earlier_id);
                }
            }
            sqlx::query(
                "INSERT INTO idempotency_keys (provider, account, key, agent_id, fingerprint, decision_id, first_seen)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (provider, account, key) DO UPDATE SET agent_id = ?4, fingerprint = ?5,
                    decision_id = ?6, first_seen = ?7",
            )
            .bind(r.provider)
            .bind(idem.account)
            .bind(idem.key)
            .bind(r.agent_id.to_string())
            .bind(r.fingerprint)
            .bind(r.decision_id.to_string())
            .bind(&first_seen_now)
            .execute(&mut *tx)
            .await?;
        }
        let now = ts(Utc::now());
        sqlx::query(
            "INSERT INTO spend_windows (budget, subject, period, provider, cap_cents, updated_at) VALUES (?, ?, ?, ?, ?, ?)
             ON CONFLICT (budget, subject, period) DO NOTHING",
        )
        .bind(&r.window.budget)
        .bind(&r.window.subject)
        .bind(&r.window.period)
        .bind(r.provider)
        .bind(r.cap_cents)
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        let admitted = sqlx::query(
            "UPDATE spend_windows SET reserved_cents = reserved_cents + ?4, cap_cents = ?5, updated_at = ?6
             WHERE budget = ?1 AND subject = ?2 AND period = ?3 AND committed_cents + reserved_cents + ?4 <= ?5",
        )
        .bind(&r.window.budget)
        .bind(&r.window.subject)
        .bind(&r.window.period)
        .bind(cents)
        .bind(r.cap_cents)
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        if admitted.rows_affected() == 0 {
            let row = sqlx::query(
                "SELECT committed_cents, reserved_cents FROM spend_windows WHERE budget = ? AND subject = ? AND period = ?",
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
                idempotency_key, fingerprint, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, 'reserved', ?, ?, ?)",
        )
        .bind(r.decision_id.to_string())
        .bind(&r.window.budget)
        .bind(&r.window.subject)
        .bind(&r.window.period)
        .bind(r.agent_id.to_string())
        .bind(r.provider)
        .bind(cents)
        .bind(r.idempotency.map(|i| i.key))
        .bind(r.fingerprint)
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(replaces.map_or(Reservation::Reserved, Reservation::ReservedReplacing))
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
                    decision_id: uuid(&r.try_get::<String, _>("decision_id")?)?,
                    budget: r.try_get("budget")?,
                    subject: r.try_get("subject")?,
                    period: r.try_get("period")?,
                    agent_id: uuid(&r.try_get::<String, _>("agent_id")?)?,
                    provider: r.try_get("provider")?,
                    cents: r.try_get("cents")?,
                    created_at: parse_ts(&r.try_get::<String, _>("created_at")?)?,
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
        let now = ts(Utc::now());
        let row = sqlx::query(
            "UPDATE spend_reservations SET state = ?2, settled_at = ?3, settled_by = ?4, settle_note = ?5
             WHERE decision_id = ?1 AND state = 'reserved' AND flagged
             RETURNING budget, subject, period, cents",
        )
        .bind(decision_id.to_string())
        .bind(state)
        .bind(&now)
        .bind(by)
        .bind(note)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(None);
        };
        let cents: i64 = row.try_get("cents")?;
        let committed = if how == ManualSettlement::Committed {
            cents
        } else {
            0
        };
        sqlx::query(
            "UPDATE spend_windows SET reserved_cents = reserved_cents - ?4, committed_cents = committed_cents + ?5,
                updated_at = ?6
             WHERE budget = ?1 AND subject = ?2 AND period = ?3",
        )
        .bind(row.try_get::<String, _>("budget")?)
        .bind(row.try_get::<String, _>("subject")?)
        .bind(row.try_get::<String, _>("period")?)
        .bind(cents)
        .bind(committed)
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO admin_actions (id, at, actor, action, target, detail) VALUES (?, ?, ?, 'spend.settle', ?, ?)",
        )
        .bind(Uuid::now_v7().to_string())
        .bind(&now)
        .bind(by)
        .bind(decision_id.to_string())
        .bind(serde_json::json!({"outcome": state, "cents": cents, "note": note}).to_string())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(cents))
    }

    pub async fn settle(&self, decision_id: Uuid, commit: bool) -> Result<Option<i64>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let state = if commit { "committed" } else { "released" };
        let now = ts(Utc::now());
        let row = sqlx::query(
            "UPDATE spend_reservations SET state = ?2, settled_at = ?3 WHERE decision_id = ?1 AND state = 'reserved'
             RETURNING budget, subject, period, cents",
        )
        .bind(decision_id.to_string())
        .bind(state)
        .bind(&now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(None);
        };
        let cents: i64 = row.try_get("cents")?;
        sqlx::query(
            "UPDATE spend_windows SET reserved_cents = reserved_cents - ?4,
                committed_cents = committed_cents + CASE WHEN ?5 THEN ?4 ELSE 0 END, updated_at = ?6
             WHERE budget = ?1 AND subject = ?2 AND period = ?3",
        )
        .bind(row.try_get::<String, _>("budget")?)
        .bind(row.try_get::<String, _>("subject")?)
        .bind(row.try_get::<String, _>("period")?)
        .bind(cents)
        .bind(commit)
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(cents))
    }

    pub async fn flag_stale_reservations(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE spend_reservations SET flagged = 1
             WHERE state = 'reserved' AND NOT flagged AND created_at < ?",
        )
        .bind(ts(before))
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    pub async fn flag_reservation(&self, decision_id: Uuid) -> Result<(), StoreError> {
        sqlx::query("UPDATE spend_reservations SET flagged = 1 WHERE decision_id = ?")
            .bind(decision_id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn window_spent(&self, w: &WindowKey) -> Result<i64, StoreError> {
        let spent: Option<i64> = sqlx::query_scalar(
            "SELECT committed_cents + reserved_cents FROM spend_windows WHERE budget = ? AND subject = ? AND period = ?",
        )
        .bind(&w.budget)
        .bind(&w.subject)
        .bind(&w.period)
        .fetch_optional(&self.pool)
        .await?;
        Ok(spent.unwrap_or(0))
    }

    pub async fn spend(&self, period: &str) -> Result<Vec<SpendRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT w.budget, w.subject, w.period, w.provider, w.cap_cents, w.committed_cents, w.reserved_cents,
                    coalesce((SELECT sum(r.cents) FROM spend_reservations r WHERE r.budget = w.budget
                        AND r.subject = w.subject AND r.period = w.period AND r.state = 'reserved' AND r.flagged), 0)
                        AS flagged_cents
             FROM spend_windows w WHERE w.period = ? ORDER BY w.budget, w.subject",
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

    const APPROVAL_COLUMNS: &'static str = "id, fingerprint, agent_id, agent_name, provider, method, path, query,
        headers, body_sha256, action, reasons, charge_cents, status, created_at, expires_at, requested_by_decision,
        on_behalf_of, decided_by, decided_at, note, consumed_at, consumed_by_decision";

    pub async fn open_approval(&self, new: &ApprovalRow) -> Result<ApprovalRow, StoreError> {
        match self
            .open_approval_capped(new, new.agent_id, i64::MAX)
            .await?
        {
            Opened::Approval(row) => Ok(*row),
            Opened::TooMany(n) => Err(StoreError::Conflict(format!("{n} pending approvals"))),
        }
    }

    /// One transaction on the one connection: the count and the insert cannot interleave with another's.
    pub async fn open_approval_capped(
        &self,
        new: &ApprovalRow,
        principal: Uuid,
        cap: i64,
    ) -> Result<Opened, StoreError> {
        let mut tx = self.pool.begin().await?;
        let now = ts(Utc::now());
        sqlx::query(
            "UPDATE approvals SET status = 'expired' WHERE fingerprint = ? AND status IN ('pending', 'approved')
             AND expires_at <= ?",
        )
        .bind(&new.fingerprint)
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        let sql = format!(
            "SELECT {} FROM approvals WHERE fingerprint = ? AND status IN ('pending', 'approved')",
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
             WHERE (agent_id = ?1 OR agent_id IN (SELECT id FROM agents WHERE minted_by = ?1))
               AND status = 'pending' AND expires_at > ?2",
        )
        .bind(principal.to_string())
        .bind(&now)
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
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?)",
        )
        .bind(new.id.to_string())
        .bind(&new.fingerprint)
        .bind(new.agent_id.to_string())
        .bind(&new.agent_name)
        .bind(&new.provider)
        .bind(&new.method)
        .bind(&new.path)
        .bind(&new.query)
        .bind(&new.body_sha256)
        .bind(&new.action)
        .bind(new.reasons.to_string())
        .bind(new.charge_cents)
        .bind(ts(new.created_at))
        .bind(ts(new.expires_at))
        .bind(new.requested_by_decision.to_string())
        .bind(&new.headers)
        .bind(&new.on_behalf_of)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Opened::Approval(Box::new(new.clone())))
    }

    pub async fn decide_approval(
        &self,
        id: Uuid,
        approve: bool,
        by: &str,
        note: Option<&str>,
    ) -> Result<Option<ApprovalRow>, StoreError> {
        let now = ts(Utc::now());
        let sql = format!(
            "UPDATE approvals SET status = ?2, decided_by = ?3, decided_at = ?4, note = ?5
             WHERE id = ?1 AND status = 'pending' AND expires_at > ?4 RETURNING {}",
            Self::APPROVAL_COLUMNS
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.to_string())
            .bind(if approve { "approved" } else { "denied" })
            .bind(by)
            .bind(&now)
            .bind(note)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| approval_from_row(&r)).transpose()
    }

    pub async fn consume_approval(
        &self,
        id: Uuid,
        fingerprint: &str,
        decision_id: Uuid,
        key: Option<&str>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE approvals SET status = 'consumed', consumed_at = ?4, consumed_by_decision = ?3,
                 consumed_key = ?5
             WHERE id = ?1 AND fingerprint = ?2 AND status = 'approved' AND expires_at > ?4",
        )
        .bind(id.to_string())
        .bind(fingerprint)
        .bind(decision_id.to_string())
        .bind(ts(Utc::now()))
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
             WHERE id = ?1 AND fingerprint = ?2 AND status = 'consumed' AND consumed_key = ?3
               AND consumed_at >= ?4 AND expires_at > ?5
             RETURNING consumed_by_decision",
        )
        .bind(id.to_string())
        .bind(fingerprint)
        .bind(key)
        .bind(ts(since))
        .bind(ts(Utc::now()))
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => opt_uuid(r.try_get("consumed_by_decision")?),
            None => Ok(None),
        }
    }

    pub async fn restore_approval(&self, id: Uuid) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE approvals SET status = 'approved', consumed_at = NULL, consumed_by_decision = NULL,
                 consumed_key = NULL
             WHERE id = ? AND status = 'consumed' AND retries = 0",
        )
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn approval(&self, id: Uuid) -> Result<Option<ApprovalRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM approvals WHERE id = ?",
            Self::APPROVAL_COLUMNS
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| approval_from_row(&r)).transpose()
    }

    pub async fn list_approvals(
        &self,
        status: Option<&str>,
        limit: i64,
    ) -> Result<Vec<ApprovalRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM (SELECT a.*, CASE WHEN a.status IN ('pending', 'approved') AND a.expires_at <= ?3
                 THEN 'expired' ELSE a.status END AS effective FROM approvals a) x
             WHERE (?1 IS NULL OR effective = ?1) ORDER BY created_at DESC LIMIT ?2",
            Self::APPROVAL_COLUMNS.replace("status,", "effective AS status,")
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(status)
            .bind(limit)
            .bind(ts(Utc::now()))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(approval_from_row).collect()
    }

    pub async fn pending_approvals(&self) -> Result<(i64, Option<DateTime<Utc>>), StoreError> {
        let row = sqlx::query(
            "SELECT count(*) AS n, min(created_at) AS oldest FROM approvals WHERE status = 'pending' AND expires_at > ?",
        )
        .bind(ts(Utc::now()))
        .fetch_one(&self.pool)
        .await?;
        Ok((row.try_get("n")?, opt_ts(row.try_get("oldest")?)?))
    }

    pub async fn budget_usage(&self, period: &str) -> Result<Vec<(String, f64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT provider, coalesce(max(CAST(committed_cents + reserved_cents AS REAL) / NULLIF(cap_cents, 0)), 0.0)
                AS ratio FROM spend_windows WHERE period = ? GROUP BY provider",
        )
        .bind(period)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("provider")?, r.try_get("ratio")?)))
            .collect()
    }

    pub async fn frozen(&self) -> Result<bool, StoreError> {
        let v: Option<String> =
            sqlx::query_scalar("SELECT value FROM controls WHERE key = 'frozen'")
                .fetch_optional(&self.pool)
                .await?;
        Ok(v.as_deref() == Some("true"))
    }

    pub async fn set_frozen(&self, frozen: bool, by: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO controls (key, value, updated_at, updated_by) VALUES ('frozen', ?, ?, ?)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at,
                updated_by = excluded.updated_by",
        )
        .bind(if frozen { "true" } else { "false" })
        .bind(ts(Utc::now()))
        .bind(by)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn freeze_state(&self) -> Result<FreezeState, StoreError> {
        let row =
            sqlx::query("SELECT value, updated_by, updated_at FROM controls WHERE key = 'frozen'")
                .fetch_optional(&self.pool)
                .await?;
        let (frozen, by, at) = match row {
            Some(r) => (
                r.try_get::<String, _>("value")? == "true",
                r.try_get::<Option<String>, _>("updated_by")?,
                opt_ts(r.try_get::<Option<String>, _>("updated_at")?)?,
            ),
            None => (false, None, None),
        };
        let latest = sqlx::query(
            "SELECT action, detail FROM admin_actions WHERE action IN ('freeze', 'unfreeze')
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

    pub async fn record_admin_action(
        &self,
        actor: &str,
        action: &str,
        target: Option<&str>,
        detail: &Value,
    ) -> Result<Uuid, StoreError> {
        let id = Uuid::now_v7();
        sqlx::query("INSERT INTO admin_actions (id, at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?, ?)")
            .bind(id.to_string())
            .bind(ts(Utc::now()))
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
        let mut tx = self.pool.begin().await?;
        let mut added = 0;
        for r in rows {
            let done = sqlx::query(
                "INSERT INTO notifications (id, webhook, event, event_key, subject, body, status, created_at, next_attempt_at)
                 VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?)
                 ON CONFLICT (webhook, event_key) DO NOTHING",
            )
            .bind(r.id.to_string())
            .bind(&r.webhook)
            .bind(&r.event)
            .bind(&r.event_key)
            .bind(r.subject.as_deref())
            .bind(&r.body)
            .bind(ts(r.created_at))
            .bind(ts(r.created_at))
            .execute(&mut *tx)
            .await?;
            added += done.rows_affected();
        }
        tx.commit().await?;
        Ok(added)
    }

    pub async fn claim_notifications(
        &self,
        webhooks: &[String],
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        owner: Uuid,
        limit: i64,
    ) -> Result<Vec<NotificationRow>, StoreError> {
        // One statement on the store's one connection: no other claim can run in between.
        let sql = format!(
            "UPDATE notifications SET lease_until = ?3, lease_owner = ?4, attempts = attempts + 1
             WHERE id IN (SELECT id FROM notifications
                   WHERE status = 'pending' AND webhook IN (SELECT value FROM json_each(?1))
                     AND next_attempt_at <= ?2 AND (lease_until IS NULL OR lease_until <= ?2)
                   ORDER BY next_attempt_at LIMIT ?5)
             RETURNING {}",
            Self::NOTIFICATION_COLUMNS
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(serde_json::to_string(webhooks).map_err(decode)?)
            .bind(ts(now))
            .bind(ts(lease_until))
            .bind(owner.to_string())
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        let mut claimed = rows
            .iter()
            .map(notification_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        // RETURNING gives no order; deliver the longest-due first, as Postgres does.
        claimed.sort_by_key(|n| n.next_attempt_at);
        Ok(claimed)
    }

    pub async fn finish_notification(
        &self,
        id: Uuid,
        owner: Uuid,
        attempt: &DeliveryAttempt,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE notifications SET status = ?3, lease_until = NULL, lease_owner = NULL, last_attempt_at = ?4,
                last_status = ?5, last_error = ?6, next_attempt_at = coalesce(?7, next_attempt_at),
                delivered_at = CASE WHEN ?3 = 'delivered' THEN ?4 ELSE delivered_at END
             WHERE id = ?1 AND lease_owner = ?2 AND status = 'pending'",
        )
        .bind(id.to_string())
        .bind(owner.to_string())
        .bind(attempt.status().as_str())
        .bind(ts(attempt.at))
        .bind(attempt.http_status)
        .bind(attempt.error.as_deref())
        .bind(attempt.retry_at().map(ts))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn list_notifications(&self, limit: i64) -> Result<Vec<NotificationRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM notifications ORDER BY created_at DESC, id DESC LIMIT ?",
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
            "SELECT count(*) FROM notifications WHERE status = 'pending'
                AND webhook IN (SELECT value FROM json_each(?))",
        )
        .bind(serde_json::to_string(webhooks).map_err(decode)?)
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
             WHERE (status = 'pending' AND expires_at > ?2) OR decided_at >= ?1
             ORDER BY created_at DESC, id DESC LIMIT ?3",
            Self::APPROVAL_COLUMNS
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(ts(since))
            .bind(ts(now))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(approval_from_row).collect()
    }
}

fn agent_from_row(r: &SqliteRow) -> Result<AgentRow, StoreError> {
    Ok(AgentRow {
        id: uuid(&r.try_get::<String, _>("id")?)?,
        name: r.try_get("name")?,
        team: r.try_get("team")?,
        scopes: serde_json::from_str(&r.try_get::<String, _>("scopes")?).map_err(decode)?,
        labels: json(&r.try_get::<String, _>("labels")?)?,
        key_hash: r.try_get("key_hash")?,
        key_prefix: r.try_get("key_prefix")?,
        status: r.try_get("status")?,
        created_at: parse_ts(&r.try_get::<String, _>("created_at")?)?,
        expires_at: opt_ts(r.try_get("expires_at")?)?,
        revoked_at: opt_ts(r.try_get("revoked_at")?)?,
        created_by: r.try_get("created_by")?,
        minted_by: opt_uuid(r.try_get("minted_by")?)?,
        minted_token_id: r.try_get("minted_token_id")?,
    })
}

fn minted_from_row(r: &SqliteRow) -> Result<MintedTokenRow, StoreError> {
    let key_id: Option<String> = r.try_get("secret_key_id")?;
    let nonce: Option<Vec<u8>> = r.try_get("secret_nonce")?;
    let ciphertext: Option<Vec<u8>> = r.try_get("secret_ciphertext")?;
    Ok(MintedTokenRow {
        provider: r.try_get("provider")?,
        token_id: r.try_get("token_id")?,
        name: r.try_get("name")?,
        policies: json(&r.try_get::<String, _>("policies")?)?,
        expires_on: opt_ts(r.try_get("expires_on")?)?,
        status: status_parse(&r.try_get::<String, _>("status")?)?,
        custody: custody_parse(&r.try_get::<String, _>("custody")?)?,
        minted_by: uuid(&r.try_get::<String, _>("minted_by")?)?,
        minted_by_name: r.try_get("minted_by_name")?,
        decision_id: uuid(&r.try_get::<String, _>("decision_id")?)?,
        last_decision_id: uuid(&r.try_get::<String, _>("last_decision_id")?)?,
        handle_agent_id: opt_uuid(r.try_get("handle_agent_id")?)?,
        sealed: match (key_id, nonce, ciphertext) {
            (Some(key_id), Some(nonce), Some(ciphertext)) => Some(crate::vault::SealedSecret {
                key_id,
                nonce,
                ciphertext,
            }),
            _ => None,
        },
        rolls: r.try_get("rolls")?,
        created_at: parse_ts(&r.try_get::<String, _>("created_at")?)?,
        rolled_at: opt_ts(r.try_get("rolled_at")?)?,
        deleted_at: opt_ts(r.try_get("deleted_at")?)?,
        account_id: r.try_get("account_id")?,
    })
}

/// Revokes a handle's agent (bumping the agents version every poll reads).
async fn revoke_handle_on(
    conn: &mut sqlx::SqliteConnection,
    agent_id: Uuid,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE agents SET status = 'revoked', revoked_at = ?,
            version = (SELECT coalesce(max(version), 0) + 1 FROM agents)
         WHERE id = ? AND status = 'active'",
    )
    .bind(ts(Utc::now()))
    .bind(agent_id.to_string())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

fn reviewer_from_row(r: &SqliteRow) -> Result<ReviewerRow, StoreError> {
    Ok(ReviewerRow {
        id: uuid(&r.try_get::<String, _>("id")?)?,
        name: r.try_get("name")?,
        email: r.try_get("email")?,
        role: r.try_get("role")?,
        token_hash: r.try_get("token_hash")?,
        token_prefix: r.try_get("token_prefix")?,
        created_at: parse_ts(&r.try_get::<String, _>("created_at")?)?,
        created_by: r.try_get("created_by")?,
        revoked_at: opt_ts(r.try_get("revoked_at")?)?,
        rotated_at: opt_ts(r.try_get("rotated_at")?)?,
        last_used: opt_ts(r.try_get("last_used")?)?,
    })
}

fn decision_from_row(r: &SqliteRow) -> Result<(DecisionRow, Option<OutcomeRow>), StoreError> {
    let id = uuid(&r.try_get::<String, _>("id")?)?;
    let decision = DecisionRow {
        id,
        at: parse_ts(&r.try_get::<String, _>("at")?)?,
        writer_id: uuid(&r.try_get::<String, _>("writer_id")?)?,
        seq: r.try_get("seq")?,
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
        agent_id: opt_uuid(r.try_get("agent_id")?)?,
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
    let outcome = match r.try_get::<Option<String>, _>("outcome_at")? {
        Some(at) => Some(OutcomeRow {
            decision_id: id,
            at: parse_ts(&at)?,
            upstream_status: r.try_get("upstream_status")?,
            latency_us: r.try_get("latency_us")?,
            error: r.try_get("outcome_error")?,
            flagged: r.try_get("flagged")?,
        }),
        None => None,
    };
    Ok((decision, outcome))
}

fn approval_from_row(r: &SqliteRow) -> Result<ApprovalRow, StoreError> {
    Ok(ApprovalRow {
        id: uuid(&r.try_get::<String, _>("id")?)?,
        fingerprint: r.try_get("fingerprint")?,
        agent_id: uuid(&r.try_get::<String, _>("agent_id")?)?,
        agent_name: r.try_get("agent_name")?,
        provider: r.try_get("provider")?,
        method: r.try_get("method")?,
        path: r.try_get("path")?,
        query: r.try_get("query")?,
        headers: r.try_get("headers")?,
        body_sha256: r.try_get("body_sha256")?,
        action: r.try_get("action")?,
        reasons: json(&r.try_get::<String, _>("reasons")?)?,
        charge_cents: r.try_get("charge_cents")?,
        status: r.try_get("status")?,
        created_at: parse_ts(&r.try_get::<String, _>("created_at")?)?,
        expires_at: parse_ts(&r.try_get::<String, _>("expires_at")?)?,
        requested_by_decision: uuid(&r.try_get::<String, _>("requested_by_decision")?)?,
        on_behalf_of: r.try_get("on_behalf_of")?,
        decided_by: r.try_get("decided_by")?,
        decided_at: opt_ts(r.try_get("decided_at")?)?,
        note: r.try_get("note")?,
        consumed_at: opt_ts(r.try_get("consumed_at")?)?,
        consumed_by_decision: opt_uuid(r.try_get("consumed_by_decision")?)?,
    })
}

async fn insert_checkpoint<'c, E: sqlx::SqliteExecutor<'c>>(
    executor: E,
    c: &CheckpointRow,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO chain_checkpoints (writer_id, seq, hash, kind, at, note) VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(c.writer_id.to_string())
    .bind(c.seq)
    .bind(&c.hash)
    .bind(&c.kind)
    .bind(ts(c.at))
    .bind(c.note.as_deref())
    .execute(executor)
    .await?;
    Ok(())
}

fn notification_from_row(r: &SqliteRow) -> Result<NotificationRow, StoreError> {
    Ok(NotificationRow {
        id: uuid(&r.try_get::<String, _>("id")?)?,
        webhook: r.try_get("webhook")?,
        event: r.try_get("event")?,
        event_key: r.try_get("event_key")?,
        subject: r.try_get("subject")?,
        body: r.try_get("body")?,
        status: NotificationStatus::parse(&r.try_get::<String, _>("status")?)?,
        attempts: r.try_get("attempts")?,
        created_at: parse_ts(&r.try_get::<String, _>("created_at")?)?,
        next_attempt_at: parse_ts(&r.try_get::<String, _>("next_attempt_at")?)?,
        last_attempt_at: opt_ts(r.try_get("last_attempt_at")?)?,
        last_status: r.try_get("last_status")?,
        last_error: r.try_get("last_error")?,
        delivered_at: opt_ts(r.try_get("delivered_at")?)?,
    })
}

/// Inserts an agent on one connection (the pool's, or a transaction's).
async fn insert_agent_on(
    conn: &mut sqlx::SqliteConnection,
    a: &AgentRow,
) -> Result<(), StoreError> {
    let result = sqlx::query(
            "INSERT INTO agents (id, name, team, scopes, labels, key_hash, key_prefix, status, created_at, expires_at,
                created_by, minted_by, minted_token_id, version)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, (SELECT coalesce(max(version), 0) + 1 FROM agents))",
        )
        .bind(a.id.to_string())
        .bind(&a.name)
        .bind(&a.team)
        .bind(serde_json::to_string(&a.scopes).unwrap_or_else(|_| "[]".into()))
        .bind(a.labels.to_string())
        .bind(&a.key_hash)
        .bind(&a.key_prefix)
        .bind(&a.status)
        .bind(ts(a.created_at))
        .bind(a.expires_at.map(ts))
        .bind(&a.created_by)
        .bind(a.minted_by.map(|u| u.to_string()))
        .bind(&a.minted_token_id)
        .execute(&mut *conn)
        .await;
    match result {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
            Err(StoreError::Conflict(format!("agent '{}'", a.name)))
        }
        Err(e) => Err(e.into()),
    }
}
