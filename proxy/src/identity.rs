//! Agent identity: keys, their hashes, and the cache that answers "who is calling" on every request.
//!
//! Owns: generating agent keys (`tg_` + 40 base62 characters, shown once), hashing them (only the hash is
//! stored), reading a key from `Authorization` (Bearer, or the Basic user name as Stripe SDKs send it), and
//! a per-replica cache of verified agents that every replica drops within a second of any change to the
//! agents table (a background poll of the table's version).
//! Must not: make policy decisions. Expired or revoked agents are simply not authenticated.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::store::{AgentRow, MintedStatus, Store, StoreError};
use crate::vault::Minted;

pub const KEY_PREFIX: &str = "tg_";
/// 40 base62 characters: about 238 bits of randomness.
const KEY_RANDOM_CHARS: usize = 40;
const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Beyond this many cached keys (known or unknown) the cache starts over, so a flood of random keys cannot
/// grow memory without bound.
const CACHE_CAPACITY: usize = 100_000;
/// The cache is trusted only while the last successful refresh is younger than this; after that every
/// request goes to the store, so revocation holds even while the refresh poll is failing.
const CACHE_TRUST: Duration = Duration::from_millis(1000);

/// An authenticated agent, as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Agent {
    pub id: Uuid,
    pub name: String,
    pub team: Option<String>,
    pub scopes: Vec<String>,
    pub labels: BTreeMap<String, String>,
    #[serde(skip)]
    pub expires_at: Option<DateTime<Utc>>,
    /// For a handle (vault mode): the minted token it stands for, and who minted it.
    #[serde(skip)]
    pub minted: Option<Arc<Minted>>,
}

/// A freshly generated agent key. Shown once to the operator, then only its hash exists.
pub struct AgentKey(SecretString);

/// What an operator asks for in `agents create`.
#[derive(Debug, Clone, Default)]
pub struct NewAgent {
    pub name: String,
    pub team: Option<String>,
    pub scopes: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Who creates it (the authenticated reviewer, or `local:<user>` from the CLI); separation of duties
    /// keeps its creator from approving its requests.
    pub created_by: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("agent unauthenticated")]
    Unauthenticated,
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum CreateAgentError {
    #[error("invalid agent: {0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Verifies agent keys for one replica.
pub struct Identity {
    store: Store,
    cache: RwLock<Cache>,
    version: AtomicI64,
}

struct Cache {
    /// key hash → the agent, or `None` for a key known not to exist.
    entries: HashMap<String, Option<Arc<Agent>>>,
    refreshed_at: Instant,
    /// Bumped whenever the entries are dropped. A lookup notes it before reading the store and caches its
    /// row only if it is unchanged: a row read before a revocation that a concurrent refresh has since
    /// noticed is used once, never cached.
    generation: u64,
}

impl Cache {
    fn clear(&mut self) {
        self.entries.clear();
        self.generation = self.generation.wrapping_add(1);
    }

    /// Caches what a lookup that began at `seen` found; false (nothing cached) when the cache was dropped
    /// since.
    fn admit(&mut self, seen: u64, hash: String, agent: Option<Arc<Agent>>) -> bool {
        if self.generation != seen {
            return false;
        }
        if self.entries.len() >= CACHE_CAPACITY {
            // Not a change of any agent: the generation stays, lookups in flight may still cache.
            self.entries.clear();
        }
        self.entries.insert(hash, agent);
        true
    }
}

impl AgentKey {
    pub fn generate() -> AgentKey {
        let mut rng = rand::rng();
        let mut key = String::with_capacity(KEY_PREFIX.len() + KEY_RANDOM_CHARS);
        key.push_str(KEY_PREFIX);
        for _ in 0..KEY_RANDOM_CHARS {
            key.push(BASE62[rng.random_range(0..BASE62.len())] as char);
        }
        AgentKey(SecretString::from(key))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    pub fn hash(&self) -> String {
        hash_key(self.expose())
    }

    /// The first characters, enough to tell keys apart in a listing.
    pub fn display_prefix(&self) -> String {
        self.expose().chars().take(KEY_PREFIX.len() + 6).collect()
    }
}

/// Lower-case hex SHA-256 of a key.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The agent key a request presents: `Authorization: Bearer <key>` or `Basic base64(<key>:)`.
pub fn presented_key(headers: &http::HeaderMap) -> Option<String> {
    let value = headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim();
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.to_string()).filter(|k| !k.is_empty());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let user = text.split_once(':').map(|(u, _)| u).unwrap_or(&text);
        return Some(user.to_string()).filter(|k| !k.is_empty());
    }
    None
}

impl Agent {
    /// Whom this agent acts for: itself, or for a handle (vault mode) the agent that minted its token. A
    /// handle is judged, charged and rate-limited as its minter, so minting a token never opens a second
    /// budget, a second token ceiling or a second rate.
    pub fn principal_id(&self) -> Uuid {
        self.minted.as_ref().map_or(self.id, |m| m.minted_by)
    }

    /// The name policies look the agent up by: its own, or for a handle its minter's.
    pub fn principal_name(&self) -> &str {
        self.minted
            .as_ref()
            .map_or(self.name.as_str(), |m| m.minted_by_name.as_str())
    }

    fn from_row(row: AgentRow, minted: Option<Arc<Minted>>) -> Agent {
        let labels = match row.labels {
            serde_json::Value::Object(map) => map
                .into_iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_string())))
                .collect(),
            _ => BTreeMap::new(),
        };
        Agent {
            id: row.id,
            name: row.name,
            team: row.team,
            scopes: row.scopes,
            labels,
            expires_at: row.expires_at,
            minted,
        }
    }

    /// Not past its own expiry nor, for a handle, its minter's: a handle never outlives the key of the
    /// agent it acts for, even while it sits in the cache (an expiry changes no row, so nothing clears it)
    /// or after a token update moved its own expiry.
    fn is_live(&self, now: DateTime<Utc>) -> bool {
        let minter_expiry = self.minted.as_ref().and_then(|m| m.minter_expires_at);
        self.expires_at.is_none_or(|t| t > now) && minter_expiry.is_none_or(|t| t > now)
    }
}

impl Identity {
    pub fn new(store: Store) -> Identity {
        Identity {
            store,
            cache: RwLock::new(Cache {
                entries: HashMap::new(),
                refreshed_at: Instant::now(),
                generation: 0,
            }),
            version: AtomicI64::new(i64::MIN),
        }
    }

    /// The agent behind a presented key, if it exists, is active and has not expired.
    pub async fn authenticate(&self, presented: &str) -> Result<Arc<Agent>, AuthError> {
        if !looks_like_key(presented) {
            return Err(AuthError::Unauthenticated);
        }
        let hash = hash_key(presented);
        let (cached, generation) = {
            let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
            let entry = if cache.refreshed_at.elapsed() < CACHE_TRUST {
                cache.entries.get(&hash).cloned()
            } else {
                None
            };
            (entry, cache.generation)
        };
        let agent = match cached {
            Some(entry) => entry,
            None => {
                let row = self.store.agent_by_key_hash(&hash).await?;
                let agent = match row.filter(|r| r.status == "active") {
                    None => None,
                    Some(r) if r.minted_by.is_some() => self
                        .minted_of(&r)
                        .await?
                        .map(|m| Arc::new(Agent::from_row(r, Some(Arc::new(m))))),
                    Some(r) => Some(Arc::new(Agent::from_row(r, None))),
                };
                let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
                cache.admit(generation, hash, agent.clone());
                agent
            }
        };
        match agent {
            Some(a) if a.is_live(Utc::now()) => Ok(a),
            _ => Err(AuthError::Unauthenticated),
        }
    }

    /// The live minted token a handle's agent stands for; `None` (not authenticated) when its token was
    /// deleted, tollgate no longer holds its secret, or its minter is revoked or expired. Revocation on roll
    /// and delete (and the minter's) goes through the agents table, so the cache drops a handle as it drops
    /// any revoked agent.
    async fn minted_of(&self, row: &AgentRow) -> Result<Option<Minted>, StoreError> {
        let minter = match row.minted_by {
            Some(minter) => self.store.agent_by_id(minter).await?,
            None => None,
        };
        let Some(minter) =
            minter.filter(|m| m.status == "active" && m.expires_at.is_none_or(|t| t > Utc::now()))
        else {
            return Ok(None);
        };
        let Some(token) = self.store.minted_token_by_handle(row.id).await? else {
            return Ok(None);
        };
        if !matches!(token.status, MintedStatus::Active | MintedStatus::Rolled) {
            return Ok(None);
        }
        let Some(sealed) = token.sealed else {
            return Ok(None);
        };
        Ok(Some(Minted {
            provider: token.provider,
            token_id: token.token_id,
            policies: token.policies,
            minted_by: row.minted_by.unwrap_or(token.minted_by),
            minted_by_name: token.minted_by_name,
            minter_expires_at: minter.expires_at,
            sealed,
        }))
    }

    /// Drops every cached agent now, as a changed version would at the next refresh: after this replica
    /// ended or changed a handle (a token deleted, rolled or updated), its next request reads the store
    /// before the provider's answer reaches the agent. Other replicas follow within their refresh.
    pub fn forget(&self) {
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Checks the agents table's version and drops the cache when anything changed.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let version = self.store.agents_version().await?;
        let previous = self.version.swap(version, Ordering::AcqRel);
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        if previous != version {
            cache.clear();
        }
        cache.refreshed_at = Instant::now();
        Ok(())
    }

    /// Runs [`Identity::refresh`] every `every` until the task is aborted.
    pub fn spawn_refresh(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let identity = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = identity.refresh().await {
                    tracing::warn!(error = %e, "identity refresh failed; cache bypassed until it succeeds");
                }
            }
        })
    }
}

fn looks_like_key(presented: &str) -> bool {
    presented.len() == KEY_PREFIX.len() + KEY_RANDOM_CHARS
        && presented.starts_with(KEY_PREFIX)
        && presented[KEY_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric())
}

/// An agent or team name: 1-64 letters, digits, `-`, `_` or `.`. A name outside this shape names no agent.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Validates and stores a new agent; returns its row and the key, which is never stored.
pub async fn create_agent(
    store: &Store,
    new: NewAgent,
) -> Result<(AgentRow, AgentKey), CreateAgentError> {
    if !valid_name(&new.name) {
        return Err(CreateAgentError::Invalid(
            "name must be 1-64 characters of letters, digits, '-', '_' or '.'".into(),
        ));
    }
    if let Some(team) = &new.team
        && !valid_name(team)
    {
        return Err(CreateAgentError::Invalid(
            "team must be 1-64 characters of letters, digits, '-', '_' or '.'".into(),
        ));
    }
    // Scopes and labels are shown to reviewers and matched by policies: printable ASCII, bounded.
    if new
        .scopes
        .iter()
        .any(|s| s.is_empty() || s.len() > 64 || !s.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(CreateAgentError::Invalid(
            "a scope must be 1-64 printable ASCII characters without spaces (like dns:write)"
                .into(),
        ));
    }
    if new.labels.iter().any(|(k, v)| {
        k.is_empty()
            || k.len() > 64
            || !k.bytes().all(|b| b.is_ascii_graphic())
            || v.len() > 256
            || v.chars().any(char::is_control)
    }) {
        return Err(CreateAgentError::Invalid(
            "a label is key=value: a key of 1-64 printable ASCII characters, a value of at most 256 characters \
             without control characters"
                .into(),
        ));
    }
    if let Some(t) = new.expires_at
        && t <= Utc::now()
    {
        return Err(CreateAgentError::Invalid("expiry is in the past".into()));
    }
    let key = AgentKey::generate();
    let row = AgentRow {
        id: Uuid::now_v7(),
        name: new.name,
        team: new.team,
        scopes: new.scopes,
        labels: serde_json::to_value(&new.labels).unwrap_or_default(),
        key_hash: key.hash(),
        key_prefix: key.display_prefix(),
        status: "active".to_string(),
        created_at: Utc::now(),
        expires_at: new.expires_at,
        revoked_at: None,
        created_by: new.created_by,
        minted_by: None,
        minted_token_id: None,
    };
    store.insert_agent(&row).await?;
    Ok((row, key))
}

/// Parses `--expires`: an RFC 3339 time, or a duration from now like `30d`, `12h`, `90m`.
pub fn parse_expiry(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let (digits, unit) = text.split_at(text.len().saturating_sub(1));
    let n: i64 = digits
        .parse()
        .map_err(|_| format!("'{text}' is neither RFC 3339 nor a duration like 30d"))?;
    let delta = match unit {
        "d" => chrono::Duration::try_days(n),
        "h" => chrono::Duration::try_hours(n),
        "m" => chrono::Duration::try_minutes(n),
        _ => None,
    }
    .ok_or_else(|| format!("'{text}': use a number followed by d, h or m"))?;
    now.checked_add_signed(delta)
        .ok_or_else(|| format!("'{text}' is too far in the future"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn generated_keys_have_the_documented_shape() {
        let a = AgentKey::generate();
        let b = AgentKey::generate();
        assert!(looks_like_key(a.expose()));
        assert_ne!(a.expose(), b.expose());
        assert_eq!(a.hash().len(), 64);
        assert!(a.display_prefix().starts_with("tg_"));
        assert_eq!(a.display_prefix().len(), 9);
    }

    fn headers(auth: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(auth).unwrap(),
        );
        h
    }

    #[test]
    fn presented_key_from_bearer_and_basic() {
        let key = "tg_abc";
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{key}:"));
        let cases = [
            (format!("Bearer {key}"), Some(key)),
            (format!("bearer  {key} "), Some(key)),
            (format!("Basic {basic}"), Some(key)),
            ("Basic !!!".to_string(), None),
            ("Token x".to_string(), None),
            ("Bearer ".to_string(), None),
        ];
        for (auth, expected) in cases {
            assert_eq!(
                presented_key(&headers(&auth)).as_deref(),
                expected,
                "{auth}"
            );
        }
        assert_eq!(presented_key(&http::HeaderMap::new()), None);
    }

    #[test]
    fn a_lookup_that_raced_a_refresh_is_not_cached() {
        let mut cache = Cache {
            entries: HashMap::new(),
            refreshed_at: Instant::now(),
            generation: 0,
        };
        let agent = Some(Arc::new(Agent {
            id: Uuid::nil(),
            name: "a".into(),
            team: None,
            scopes: vec![],
            labels: BTreeMap::new(),
            expires_at: None,
            minted: None,
        }));
        // A lookup reads the store (the agent still active), a refresh then drops the cache because the
        // agent was revoked meanwhile: the stale row must not be cached.
        let seen = cache.generation;
        cache.clear();
        assert!(!cache.admit(seen, "h".into(), agent.clone()));
        assert!(cache.entries.is_empty());
        // A lookup that began after the refresh caches as usual.
        let seen = cache.generation;
        assert!(cache.admit(seen, "h".into(), agent));
        assert!(cache.entries.contains_key("h"));
    }

    #[test]
    fn expiry_parsing() {
        let now = DateTime::parse_from_rfc3339("2026-11-30T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_expiry("30d", now).unwrap().to_rfc3339(),
            "2026-12-30T12:00:00+00:00"
        );
        assert_eq!(
            parse_expiry("2h", now).unwrap().to_rfc3339(),
            "2026-11-30T14:00:00+00:00"
        );
        assert!(parse_expiry("2026-12-01T00:00:00Z", now).is_ok());
        assert!(parse_expiry("soon", now).is_err());
        assert!(parse_expiry("5y", now).is_err());
    }
}
