//! Configuration: `tollgate.toml`, `TOLLGATE_SECTION__KEY` overrides and `DATABASE_URL` → a checked [`Config`].
//!
//! Owns: the raw file shape ([`RawConfig`], unknown keys rejected), the named defaults and why they are what
//! they are, and validation that reports every error at once. Secrets (provider credentials, the admin
//! token, webhook signing secrets and URLs) are read from the environment variables the file names (a webhook
//! URL may also be written in the file) and held as [`SecretString`], so they are redacted in `Debug` and never
//! printed.
//! Must not: open sockets or the database, or read the policy bundle (check-config does that separately).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use crate::error::Envelope;

/// Agent traffic listens on loopback by default: exposing a gate to the network is a decision the operator
/// makes explicitly.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// The admin listener is separate so that agent traffic can never reach approval or agent endpoints.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// 10 MiB: Workers uploads are the largest legitimate bodies; anything bigger is refused before parsing.
pub const DEFAULT_BODY_LIMIT_BYTES: u64 = 10 * 1024 * 1024;
/// Providers answer slow writes (domain registration) within seconds; 30 s bounds a stuck upstream.
pub const DEFAULT_UPSTREAM_TIMEOUT_MS: u64 = 30_000;
/// Above this many in-flight agent requests the proxy sheds load with 503 instead of queueing unboundedly.
pub const DEFAULT_MAX_CONCURRENCY: usize = 4096;
/// How long an agent connection may take to send a request's head, counted from the connection opening or
/// from the previous response (so it is also the idle keep-alive timeout). Real clients send a head in
/// one write; a client that trickles one holds a connection and a file descriptor for nothing.
pub const DEFAULT_HEADER_TIMEOUT_MS: u64 = 10_000;
/// How many requests one agent may have in tollgate at once. One agent cannot then take the concurrency
/// that others need, nor buffer more than this many bodies (32 × the 10 MiB body limit at most).
pub const DEFAULT_MAX_REQUESTS_PER_AGENT: usize = 32;
/// How long an agent may take to send a request's body once tollgate starts reading it: 10 MiB at 1 Mbit/s
/// takes ~84 s, so the default leaves room for the largest body on a slow link while bounding a trickle.
pub const DEFAULT_BODY_TIMEOUT_MS: u64 = 90_000;
/// How long tollgate may take over a request before it is forwarded or refused, excluding the upstream and a
/// reviewer's hold: reading the body, identifying the agent, judging it. Each of those has a bound of its
/// own; this one bounds their sum and anything slow in between (a store read stuck behind a lock or a failing
/// network). Past it the request is refused `408 request_timeout` and recorded.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 120_000;
/// A policy evaluation is a few microseconds; 250 ms means a runaway policy, which is refused.
pub const DEFAULT_POLICY_TIMEOUT_MS: u64 = 250;
/// How often each replica checks the agents table for revocations; keeps revocation well within a second.
pub const DEFAULT_IDENTITY_REFRESH_MS: u64 = 250;
/// Enough connections for the audit writer, identity refresh and admin queries on a small Postgres.
pub const DEFAULT_DB_MAX_CONNECTIONS: u32 = 16;
/// The most decision records the audit writer commits in one transaction.
pub const DEFAULT_AUDIT_MAX_BATCH: usize = 1024;
/// Two writers: one commits while the other gathers and sends the next batch.
pub const DEFAULT_AUDIT_WRITERS: usize = 2;
/// How many bytes of decision records one agent may add per minute (per replica): 512 records at the
/// 64 KiB stored-input limit, or tens of thousands of ordinary ones. A flood of large bodies is slowed to
/// about half a megabyte a second per agent instead of filling the append-only table.
pub const DEFAULT_MAX_STORED_BYTES_PER_AGENT_PER_MINUTE: u64 = 32 * 1024 * 1024;
/// Where the redaction key is read from unless `[audit] redaction_key_env` says otherwise.
pub const DEFAULT_REDACTION_KEY_ENV: &str = "TOLLGATE_REDACTION_KEY";
/// Stripe remembers an idempotency key for at least 24 hours, then may prune it: a repeat after that runs
/// as a new request, so tollgate charges it as one.
pub const DEFAULT_STRIPE_IDEMPOTENCY_WINDOW_SECONDS: u64 = 24 * 3600;
/// A longer window would let an agent repeat a request the provider has long forgotten without being charged.
pub const MAX_IDEMPOTENCY_WINDOW_SECONDS: u64 = 30 * 24 * 3600;
/// Ten attempts with the default backoff span about nine minutes: a receiver restarting or a chat service
/// having a bad minute is ridden out; one that is down for longer is reported as failed in the console.
pub const DEFAULT_NOTIFY_MAX_ATTEMPTS: u32 = 10;
/// The wait before the second attempt; it doubles (with jitter) for each one after.
pub const DEFAULT_NOTIFY_BACKOFF_INITIAL_MS: u64 = 1_000;
/// The longest wait between attempts, so that a receiver back up hears of the backlog within minutes.
pub const DEFAULT_NOTIFY_BACKOFF_MAX_MS: u64 = 300_000;
/// A webhook receiver (Slack included) answers within a second or two; 5 s bounds a hanging one.
pub const DEFAULT_NOTIFY_TIMEOUT_MS: u64 = 5_000;
/// How often each replica looks for new events (approvals, budgets, freeze) and due deliveries: a reviewer
/// hears of a held request within about a second.
pub const DEFAULT_NOTIFY_SWEEP_INTERVAL_MS: u64 = 1_000;

/// What a user may write in `tollgate.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub database: RawDatabase,
    #[serde(default)]
    pub policy: RawPolicy,
    pub providers: Option<BTreeMap<String, RawProvider>>,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub audit: RawAudit,
    #[serde(default)]
    pub approvals: RawApprovals,
    #[serde(default)]
    pub console: RawConsole,
    #[serde(default)]
    pub notifications: RawNotifications,
    #[serde(default)]
    pub vault: RawVault,
}

/// `[vault]`: minted tokens' secrets stay behind the gate (`vault.rs`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVault {
    /// Vault mode (default true): agents get a handle where a token's secret would be.
    pub enabled: Option<bool>,
    /// One key: the environment variable holding it (default `TOLLGATE_VAULT_KEY`), key id "k1".
    pub key_env: Option<String>,
    /// Several keys for rotation, instead of `key_env`: the first seals, all open.
    pub keys: Option<Vec<RawVaultKey>>,
    /// Agents with any of these labels (`key=value`) get the real secret (e.g. a CI system whose token must
    /// leave); the choice is recorded on the minted token's row.
    pub pass_through_labels: Option<Vec<String>>,
    /// How many answers to one agent may carry a secret tollgate holds within an hour before its requests
    /// are refused (default 3, at least 1).
    pub screen_trips: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVaultKey {
    pub id: String,
    pub env: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsole {
    /// Serve the console on the admin listener (default true); false leaves only the JSON API.
    pub enabled: Option<bool>,
    /// How long a console sign-in lasts (default 8; at most a week).
    pub session_hours: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotifications {
    pub webhooks: Option<Vec<RawWebhook>>,
    pub max_attempts: Option<u32>,
    pub backoff_initial_ms: Option<u64>,
    pub backoff_max_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub sweep_interval_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    pub name: String,
    /// The endpoint; or `url_env`, the environment variable holding it (a Slack webhook URL is a secret).
    pub url: Option<String>,
    pub url_env: Option<String>,
    /// `slack` or `generic`.
    pub format: String,
    /// The environment variable holding the HMAC secret; required for `generic`.
    pub secret_env: Option<String>,
    /// Which events go to this endpoint; absent: all.
    pub events: Option<Vec<String>>,
    /// Allow a plain `http://` URL to a host other than loopback.
    pub allow_http: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApprovals {
    pub ttl_seconds: Option<u64>,
    pub allow_self_approval: Option<bool>,
    pub max_pending_per_agent: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub body_limit_bytes: Option<u64>,
    pub upstream_timeout_ms: Option<u64>,
    pub max_concurrency: Option<usize>,
    pub header_timeout_ms: Option<u64>,
    pub max_requests_per_agent: Option<usize>,
    pub body_timeout_ms: Option<u64>,
    pub request_timeout_ms: Option<u64>,
    pub identity_refresh_ms: Option<u64>,
    pub shutdown_drain_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    pub url: Option<String>,
    pub max_connections: Option<u32>,
    pub migrate_on_start: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub dir: Option<PathBuf>,
    pub timeout_ms: Option<u64>,
    pub shadow_dir: Option<PathBuf>,
    pub watch: Option<bool>,
    pub engine_check_sample: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub upstream: String,
    pub envelope: Option<String>,
    pub credential: Option<RawCredential>,
    pub idempotency_window_seconds: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCredential {
    pub env: String,
    pub scheme: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub token_env: Option<String>,
    pub trusted_proxies: Option<Vec<String>>,
    pub identity_header: Option<String>,
    pub public_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    pub max_batch: Option<usize>,
    pub writers: Option<usize>,
    pub redaction_key_env: Option<String>,
    pub checkpoint_interval_seconds: Option<u64>,
    pub anchor_file: Option<PathBuf>,
    pub max_stored_bytes_per_agent_per_minute: Option<u64>,
}

/// The checked configuration every other module reads.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub policy: PolicyConfig,
    pub providers: BTreeMap<String, ProviderConfig>,
    pub admin: AdminConfig,
    pub audit: AuditConfig,
    pub approvals: ApprovalsConfig,
    pub console: ConsoleConfig,
    pub notifications: NotificationsConfig,
    pub vault: VaultConfig,
}

/// Where the vault key is read from unless `[vault]` says otherwise.
pub const DEFAULT_VAULT_KEY_ENV: &str = "TOLLGATE_VAULT_KEY";
/// The id of the one key `vault.key_env` names (what a later `keys = [...]` list must call it to keep
/// opening what it sealed).
pub const DEFAULT_VAULT_KEY_ID: &str = "k1";

/// `[vault]`, checked. The keys' values are checked (base64 of 32 bytes) by `vault::Vault::from_config`,
/// which `serve` and `check-config` run.
#[derive(Debug, Clone)]
pub struct VaultConfig {
    pub enabled: bool,
    /// The first seals; all open.
    pub keys: Vec<VaultKeyConfig>,
    pub pass_through_labels: Vec<(String, String)>,
    /// See `RawVault::screen_trips`.
    pub screen_trips: usize,
}

#[derive(Debug, Clone)]
pub struct VaultKeyConfig {
    pub id: String,
    pub env: String,
    pub secret: Option<SecretString>,
}

/// The reviewer console (`console.rs`).
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    pub enabled: bool,
    /// How long a sign-in lasts before the reviewer must present their token again.
    pub session_lifetime: chrono::Duration,
    /// The console is reached over TLS (its public URL is `https://`): cookies are `Secure` and `__Host-`.
    pub public_url_is_https: bool,
    /// The scheme://host[:port] of the public URL: a form posted with this `Origin` is the console's own.
    pub public_origin: Option<String>,
}

/// Webhook notifications (see `notify`).
#[derive(Debug, Clone)]
pub struct NotificationsConfig {
    pub webhooks: Vec<WebhookConfig>,
    /// Attempts per delivery before it is marked failed.
    pub max_attempts: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Bound on one attempt: connecting, sending and the receiver's answer.
    pub timeout: Duration,
    pub sweep_interval: Duration,
}

/// The payload a webhook gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookFormat {
    /// A Slack incoming-webhook message (`text` + `blocks`), also read by Mattermost and others.
    Slack,
    /// tollgate's own JSON, signed with HMAC-SHA256 (`Tollgate-Signature`).
    Generic,
}

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Unique among webhooks; names the endpoint in the outbox, the console, logs and metrics (the URL,
    /// which may carry a secret, appears in none of them).
    pub name: String,
    /// Where `url` came from: the file, or the environment variable named here.
    pub url_env: Option<String>,
    /// Absent when `url_env` is not set; `serve` refuses to start then. A secret: Slack's URL is its key.
    pub url: Option<SecretString>,
    pub format: WebhookFormat,
    pub secret_env: Option<String>,
    /// Absent for `slack`, and when `secret_env` is not set (`serve` refuses to start then).
    pub secret: Option<SecretString>,
    pub events: Vec<crate::notify::Event>,
    pub allow_http: bool,
}

#[derive(Debug, Clone)]
pub struct ApprovalsConfig {
    /// How long an approval (pending or approved) stays usable.
    pub ttl: Duration,
    /// Separation of duties off: a reviewer may approve a request made on their own behalf, or by an agent
    /// they created. Default false; meant for a team of one.
    pub allow_self_approval: bool,
    /// The most requests one agent may have waiting for a reviewer at once; beyond it a new one is refused
    /// (429 `rate_limited`), so one agent cannot flood the queue and the reviewers' channel.
    pub max_pending_per_agent: u32,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub body_limit_bytes: u64,
    pub upstream_timeout: Duration,
    pub max_concurrency: usize,
    /// Requests one agent may have in flight at once.
    pub max_requests_per_agent: usize,
    /// Request head (and keep-alive idle) timeout on agent connections.
    pub header_timeout: Duration,
    /// Request body timeout, from when the handler starts reading it.
    pub body_timeout: Duration,
    /// Bound on everything before the forward (or refusal), excluding a reviewer's hold.
    pub request_timeout: Duration,
    pub identity_refresh: Duration,
    /// On SIGTERM, how long `/readyz` reports draining (so load balancers stop sending) before the
    /// listeners close; in-flight requests then finish.
    pub shutdown_drain: Duration,
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// `None` means the embedded default; the store decides what that is.
    pub url: Option<SecretString>,
    pub max_connections: u32,
    pub migrate_on_start: bool,
}

#[derive(Debug, Clone)]
pub struct PolicyConfig {
    pub dir: PathBuf,
    pub timeout: Duration,
    /// A candidate bundle evaluated beside the live one on every request, never enforced.
    pub shadow_dir: Option<PathBuf>,
    /// Reload when files under `dir` (or `shadow_dir`) change.
    pub watch: bool,
    /// The share of judged requests (0 to 1) also evaluated on regorus's interpreter, off the request
    /// path, to catch the bytecode VM and the interpreter disagreeing in production. 0: off.
    pub engine_check_sample: f64,
}

#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub name: String,
    /// Scheme and authority, plus an optional path prefix without a trailing slash.
    pub upstream: http::Uri,
    pub envelope: Envelope,
    pub credential: Option<Credential>,
    /// How long the provider replays the first result of a repeated `Idempotency-Key`; `None` when it does
    /// not (then a repeated key is a new request, charged again).
    pub idempotency_window: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialScheme {
    /// `Authorization: Bearer <secret>` (Cloudflare API tokens, Stripe also accepts it).
    Bearer,
    /// `Authorization: Basic base64(<secret>:)` — the secret as user name, as Stripe SDKs send it.
    Basic,
}

#[derive(Debug, Clone)]
pub struct Credential {
    pub env: String,
    pub scheme: CredentialScheme,
    /// Absent when the environment variable is not set; `serve` refuses to start then.
    pub secret: Option<SecretString>,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub token_env: String,
    pub token: Option<SecretString>,
    /// Addresses of authenticating reverse proxies (oauth2-proxy, Pomerium) whose `identity_header` is
    /// trusted; empty (the default): the header is never trusted.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// The header such a proxy puts the signed-in user's email in (default `X-Forwarded-Email`).
    pub identity_header: http::HeaderName,
    /// The console's external base URL (scheme, host, optional path; no trailing slash), for links in
    /// notifications: `{public_url}/approvals/{id}`. Required when webhooks are configured.
    pub public_url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub max_batch: usize,
    /// Writer tasks, each with its own connection, batch in flight and hash chain.
    pub writers: usize,
    /// The environment variable holding the key redacted secrets are hashed with (HMAC-SHA256).
    pub redaction_key_env: String,
    /// Its value; `None` when unset (secrets are then replaced by a plain SHA-256).
    pub redaction_key: Option<SecretString>,
    /// How often a writer whose chain grew checkpoints its head (also at start and at shutdown).
    pub checkpoint_interval: Duration,
    /// Where checkpoints are also appended, outside the database; `audit verify` reads it by default.
    pub anchor_file: Option<PathBuf>,
    /// Bytes of decision records one agent may add per minute, per replica (see `throttle`).
    pub max_stored_bytes_per_agent_per_minute: u64,
}

/// Every problem found in a configuration, reported together.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} configuration error(s):", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Where configuration comes from; tests pass their own environment instead of the process's.
pub struct ConfigSource<'a> {
    pub file: Option<&'a Path>,
    pub env: Vec<(String, String)>,
}

impl ConfigSource<'_> {
    /// The process environment and the given file (if any).
    pub fn from_process(file: Option<&Path>) -> ConfigSource<'_> {
        ConfigSource {
            file,
            env: std::env::vars().collect(),
        }
    }
}

impl Config {
    /// Reads, overrides and validates. A missing `--config` file is an error; no file at all means defaults.
    pub fn load(source: &ConfigSource<'_>) -> Result<Config, ConfigErrors> {
        let mut table = match source.file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigErrors(vec![format!("cannot read {}: {e}", path.display())])
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigErrors(vec![format!("{}: {e}", path.display())]))?
            }
            None => toml::Table::new(),
        };
        // DATABASE_URL overrides the file's database.url (the usual convention for container platforms);
        // TOLLGATE_DATABASE__URL, applied next, overrides both.
        if let Some((_, url)) = source.env.iter().find(|(k, _)| k == "DATABASE_URL") {
            let database = table
                .entry("database".to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(t) = database {
                t.insert("url".to_string(), toml::Value::String(url.clone()));
            }
        }
        if !table.contains_key("providers")
            && let Ok(defaults) = DEFAULT_PROVIDERS.parse::<toml::Table>()
        {
            table.insert("providers".to_string(), toml::Value::Table(defaults));
        }
        apply_env_overrides(&mut table, &source.env).map_err(|e| ConfigErrors(vec![e]))?;
        let raw: RawConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigErrors(vec![e.message().to_string()]))?;
        let lookup = |name: &str| {
            source
                .env
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        Config::validate(raw, &lookup)
    }

    /// Turns what the user wrote into a checked `Config`, collecting every error.
    pub fn validate(
        raw: RawConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let mut addr = |value: Option<String>, default: &str, key: &str| -> SocketAddr {
            let text = value.unwrap_or_else(|| default.to_string());
            match text.parse() {
                Ok(a) => a,
                Err(_) => {
                    errors.push(format!(
                        "{key}: '{text}' is not an address like 127.0.0.1:8080"
                    ));
                    SocketAddr::from(([127, 0, 0, 1], 0))
                }
            }
        };
        let listen = addr(raw.server.listen, DEFAULT_LISTEN, "server.listen");
        let admin_listen = addr(
            raw.server.admin_listen,
            DEFAULT_ADMIN_LISTEN,
            "server.admin_listen",
        );
        if listen == admin_listen && listen.port() != 0 {
            errors.push("server.listen and server.admin_listen must differ".to_string());
        }
        let body_limit_bytes = raw
            .server
            .body_limit_bytes
            .unwrap_or(DEFAULT_BODY_LIMIT_BYTES);
        if body_limit_bytes == 0 {
            errors.push("server.body_limit_bytes must be positive".to_string());
        }
        let max_concurrency = raw
            .server
            .max_concurrency
            .unwrap_or(DEFAULT_MAX_CONCURRENCY);
        if max_concurrency == 0 {
            errors.push("server.max_concurrency must be positive".to_string());
        }
        let max_requests_per_agent = raw
            .server
            .max_requests_per_agent
            .unwrap_or(DEFAULT_MAX_REQUESTS_PER_AGENT);
        if max_requests_per_agent == 0 {
            errors.push("server.max_requests_per_agent must be positive".to_string());
        }
        let header_timeout_ms = raw
            .server
            .header_timeout_ms
            .unwrap_or(DEFAULT_HEADER_TIMEOUT_MS);
        let body_timeout_ms = raw
            .server
            .body_timeout_ms
            .unwrap_or(DEFAULT_BODY_TIMEOUT_MS);
        let request_timeout_ms = raw
            .server
            .request_timeout_ms
            .unwrap_or(DEFAULT_REQUEST_TIMEOUT_MS);
        if header_timeout_ms == 0 || body_timeout_ms == 0 || request_timeout_ms == 0 {
            errors.push(
                "server.header_timeout_ms, body_timeout_ms and request_timeout_ms must be positive"
                    .to_string(),
            );
        }
        let upstream_timeout_ms = raw
            .server
            .upstream_timeout_ms
            .unwrap_or(DEFAULT_UPSTREAM_TIMEOUT_MS);
        if upstream_timeout_ms == 0 {
            errors.push("server.upstream_timeout_ms must be positive".to_string());
        }
        let identity_refresh_ms = raw
            .server
            .identity_refresh_ms
            .unwrap_or(DEFAULT_IDENTITY_REFRESH_MS);
        if identity_refresh_ms == 0 || identity_refresh_ms > 1000 {
            errors.push("server.identity_refresh_ms must be between 1 and 1000 (revocation within a second)".into());
        }

        let url = raw.database.url.or_else(|| env("DATABASE_URL"));
        if let Some(u) = &url
            && !(u.starts_with("postgres://")
                || u.starts_with("postgresql://")
                || u.starts_with("sqlite:"))
        {
            errors.push(
                "database.url must start with postgres://, postgresql:// or sqlite:".to_string(),
            );
        }
        let max_connections = raw
            .database
            .max_connections
            .unwrap_or(DEFAULT_DB_MAX_CONNECTIONS);
        if max_connections < 2 {
            errors.push(
                "database.max_connections must be at least 2 (the audit writer holds one)".into(),
            );
        }

        let policy_dir = raw.policy.dir.unwrap_or_else(|| PathBuf::from("policies"));
        let policy_timeout_ms = raw.policy.timeout_ms.unwrap_or(DEFAULT_POLICY_TIMEOUT_MS);
        if policy_timeout_ms == 0 {
            errors.push("policy.timeout_ms must be positive".to_string());
        }
        let engine_check_sample = raw.policy.engine_check_sample.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&engine_check_sample) {
            errors.push(format!(
                "policy.engine_check_sample: {engine_check_sample} is not a share between 0 and 1"
            ));
        }

        let raw_providers = raw.providers.unwrap_or_default();
        let mut providers = BTreeMap::new();
        for (name, p) in raw_providers {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                errors.push(format!(
                    "providers.{name}: a provider name is lower-case letters, digits and '-'"
                ));
            }
            let upstream = match p.upstream.parse::<http::Uri>() {
                Ok(uri)
                    if matches!(uri.scheme_str(), Some("http" | "https"))
                        && uri.authority().is_some()
                        && uri.query().is_none()
                        && (uri.path() == "/" || !uri.path().ends_with('/')) =>
                {
                    uri
                }
                _ => {
                    errors.push(format!(
                        "providers.{name}.upstream: '{}' must be an http(s) URL without query or trailing slash",
                        p.upstream
                    ));
                    http::Uri::from_static("http://invalid")
                }
            };
            let envelope = match p.envelope.as_deref().unwrap_or(name.as_str()) {
                "cloudflare" => Envelope::Cloudflare,
                "stripe" => Envelope::Stripe,
                "plain" => Envelope::Plain,
                other => {
                    errors.push(format!(
                        "providers.{name}.envelope: '{other}' is not one of cloudflare, stripe, plain"
                    ));
                    Envelope::Plain
                }
            };
            let credential = p.credential.map(|c| {
                let scheme = match c.scheme.as_str() {
                    "bearer" => CredentialScheme::Bearer,
                    "basic" => CredentialScheme::Basic,
                    other => {
                        errors.push(format!(
                            "providers.{name}.credential.scheme: '{other}' is not one of bearer, basic"
                        ));
                        CredentialScheme::Bearer
                    }
                };
                let secret = env(&c.env).filter(|v| !v.is_empty()).map(SecretString::from);
                Credential {
                    env: c.env,
                    scheme,
                    secret,
                }
            });
            // Stripe replays a repeated key's first result for at least 24 hours; Cloudflare's API has no
            // idempotency keys, so there a repeat is a new request. 0 turns replays off.
            let idempotency_window = match p.idempotency_window_seconds {
                Some(0) => None,
                // A repeat inside the window is forwarded uncharged as a replay: a window longer than the
                // provider keeps keys would let it run anew at the provider without being charged.
                Some(secs)
                    if envelope == Envelope::Stripe
                        && secs > DEFAULT_STRIPE_IDEMPOTENCY_WINDOW_SECONDS =>
                {
                    errors.push(format!(
                        "providers.{name}.idempotency_window_seconds: {secs} is more than Stripe's guaranteed 86400 (24 h): a repeat after Stripe forgot its key would run again uncharged"
                    ));
                    None
                }
                Some(secs) if secs <= MAX_IDEMPOTENCY_WINDOW_SECONDS => {
                    Some(Duration::from_secs(secs))
                }
                Some(secs) => {
                    errors.push(format!(
                        "providers.{name}.idempotency_window_seconds: {secs} is more than {MAX_IDEMPOTENCY_WINDOW_SECONDS} (30 days)"
                    ));
                    None
                }
                None if envelope == Envelope::Stripe => Some(Duration::from_secs(
                    DEFAULT_STRIPE_IDEMPOTENCY_WINDOW_SECONDS,
                )),
                None => None,
            };
            providers.insert(
                name.clone(),
                ProviderConfig {
                    name,
                    upstream,
                    envelope,
                    credential,
                    idempotency_window,
                },
            );
        }
        if providers.is_empty() {
            errors.push("providers: at least one provider must be configured".to_string());
        }

        let redaction_key_env = raw
            .audit
            .redaction_key_env
            .clone()
            .unwrap_or_else(|| DEFAULT_REDACTION_KEY_ENV.to_string());
        let mut trusted_proxies = Vec::new();
        for text in raw.admin.trusted_proxies.iter().flatten() {
            match text.trim().parse::<std::net::IpAddr>() {
                Ok(ip) => trusted_proxies.push(ip),
                Err(_) => errors.push(format!(
                    "admin.trusted_proxies: '{text}' is not an IP address"
                )),
            }
        }
        let identity_header = match raw
            .admin
            .identity_header
            .as_deref()
            .unwrap_or("X-Forwarded-Email")
            .parse::<http::HeaderName>()
        {
            Ok(h) => h,
            Err(_) => {
                errors.push("admin.identity_header is not a valid header name".to_string());
                http::HeaderName::from_static("x-forwarded-email")
            }
        };
        let token_env = raw
            .admin
            .token_env
            .unwrap_or_else(|| "TOLLGATE_ADMIN_TOKEN".to_string());
        let token = env(&token_env)
            .filter(|v| !v.is_empty())
            .map(SecretString::from);
        let public_url = raw.admin.public_url.as_deref().and_then(|text| {
            let trimmed = text.trim_end_matches('/');
            match trimmed.parse::<http::Uri>() {
                Ok(uri)
                    if matches!(uri.scheme_str(), Some("http" | "https"))
                        && uri.authority().is_some()
                        && uri.query().is_none() =>
                {
                    Some(trimmed.to_string())
                }
                _ => {
                    errors.push(format!(
                        "admin.public_url: '{text}' must be an http(s) URL without a query, like https://tollgate.example.com"
                    ));
                    None
                }
            }
        });
        // The console's own origin, from its public URL: cookies are Secure when it is https, and a form posted
        // with this Origin is the console's own.
        let console_public = public_url.as_deref().and_then(|u| {
            let uri = u.parse::<http::Uri>().ok()?;
            Some((uri.scheme_str()?.to_string(), uri.authority()?.to_string()))
        });
        let notifications = check_notifications(raw.notifications, env, &mut errors);
        if !notifications.webhooks.is_empty() && raw.admin.public_url.is_none() {
            errors.push(
                "admin.public_url is required with notifications.webhooks: notifications link to the approval in the console"
                    .to_string(),
            );
        }

        let database_is_sqlite = url.as_deref().is_none_or(|u| u.starts_with("sqlite:"));
        let max_batch = raw.audit.max_batch.unwrap_or(DEFAULT_AUDIT_MAX_BATCH);
        if max_batch == 0 || max_batch > 10_000 {
            errors.push("audit.max_batch must be between 1 and 10000".to_string());
        }
        // SQLite commits one transaction at a time whatever tollgate does, so a second writer there only waits.
        let writers = raw.audit.writers.unwrap_or(if database_is_sqlite {
            1
        } else {
            DEFAULT_AUDIT_WRITERS
        });
        if writers == 0 || writers > 16 {
            errors.push("audit.writers must be between 1 and 16".to_string());
        } else if !database_is_sqlite
            && usize::try_from(max_connections).is_ok_and(|m| writers + 1 > m)
        {
            errors.push(format!(
                "audit.writers ({writers}) needs database.max_connections of at least {} (one connection per writer, plus one for the rest)",
                writers + 1
            ));
        }

        let checkpoint_seconds = raw
            .audit
            .checkpoint_interval_seconds
            .unwrap_or(crate::audit::DEFAULT_CHECKPOINT_EVERY.as_secs());
        if checkpoint_seconds == 0 || checkpoint_seconds > 24 * 3600 {
            errors.push(
                "audit.checkpoint_interval_seconds must be between 1 and 86400 (a day)".to_string(),
            );
        }
        let anchor_file = raw.audit.anchor_file;
        let max_stored_bytes_per_agent_per_minute = raw
            .audit
            .max_stored_bytes_per_agent_per_minute
            .unwrap_or(DEFAULT_MAX_STORED_BYTES_PER_AGENT_PER_MINUTE);
        if max_stored_bytes_per_agent_per_minute < 1024 * 1024 {
            errors.push(
                "audit.max_stored_bytes_per_agent_per_minute must be at least 1048576 (1 MiB)"
                    .to_string(),
            );
        }

        let ttl_seconds = raw
            .approvals
            .ttl_seconds
            .unwrap_or(crate::approvals::DEFAULT_TTL.as_secs());
        if ttl_seconds == 0 || ttl_seconds > 7 * 24 * 3600 {
            errors.push("approvals.ttl_seconds must be between 1 and 604800 (a week)".to_string());
        }

        let max_pending_per_agent = raw.approvals.max_pending_per_agent.unwrap_or(20);
        if max_pending_per_agent == 0 || max_pending_per_agent > 10_000 {
            errors.push("approvals.max_pending_per_agent must be between 1 and 10000".to_string());
        }
        let vault = check_vault(raw.vault, env, &mut errors);

        let session_hours = raw.console.session_hours.unwrap_or(8);
        if session_hours == 0 || session_hours > 7 * 24 {
            errors.push("console.session_hours must be between 1 and 168 (a week)".to_string());
        }

        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(Config {
            server: ServerConfig {
                listen,
                admin_listen,
                body_limit_bytes,
                upstream_timeout: Duration::from_millis(upstream_timeout_ms),
                max_concurrency,
                max_requests_per_agent,
                header_timeout: Duration::from_millis(header_timeout_ms),
                body_timeout: Duration::from_millis(body_timeout_ms),
                request_timeout: Duration::from_millis(request_timeout_ms),
                identity_refresh: Duration::from_millis(identity_refresh_ms),
                shutdown_drain: Duration::from_millis(raw.server.shutdown_drain_ms.unwrap_or(0)),
            },
            database: DatabaseConfig {
                url: url.map(SecretString::from),
                max_connections,
                migrate_on_start: raw.database.migrate_on_start.unwrap_or(false),
            },
            policy: PolicyConfig {
                dir: policy_dir,
                timeout: Duration::from_millis(policy_timeout_ms),
                shadow_dir: raw.policy.shadow_dir,
                watch: raw.policy.watch.unwrap_or(true),
                engine_check_sample,
            },
            providers,
            admin: AdminConfig {
                token_env,
                token,
                trusted_proxies,
                identity_header,
                public_url,
            },
            audit: AuditConfig {
                max_batch,
                writers,
                redaction_key: env(&redaction_key_env)
                    .filter(|v| !v.is_empty())
                    .map(SecretString::from),
                redaction_key_env,
                checkpoint_interval: Duration::from_secs(checkpoint_seconds),
                anchor_file,
                max_stored_bytes_per_agent_per_minute,
            },
            approvals: ApprovalsConfig {
                ttl: Duration::from_secs(ttl_seconds),
                allow_self_approval: raw.approvals.allow_self_approval.unwrap_or(false),
                max_pending_per_agent,
            },
            console: ConsoleConfig {
                enabled: raw.console.enabled.unwrap_or(true),
                session_lifetime: chrono::Duration::hours(session_hours as i64),
                public_url_is_https: console_public
                    .as_ref()
                    .is_some_and(|(scheme, _)| scheme == "https"),
                public_origin: console_public
                    .map(|(scheme, authority)| format!("{scheme}://{authority}")),
            },
            notifications,
            vault,
        })
    }

    /// What `serve` needs beyond a valid file: every provider credential present. Reported together.
    pub fn check_serveable(&self) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        for p in self.providers.values() {
            match &p.credential {
                None => errors.push(format!("providers.{}.credential is not configured", p.name)),
                Some(c) if c.secret.is_none() => errors.push(format!(
                    "providers.{}: environment variable {} (the provider credential) is not set",
                    p.name, c.env
                )),
                Some(_) => {}
            }
        }
        for w in &self.notifications.webhooks {
            if let (Some(var), None) = (&w.url_env, &w.url) {
                errors.push(format!(
                    "notifications.webhooks '{}': environment variable {var} (its URL) is not set",
                    w.name
                ));
            }
            if let (Some(var), None) = (&w.secret_env, &w.secret) {
                errors.push(format!(
                    "notifications.webhooks '{}': environment variable {var} (its signing secret) is not set",
                    w.name
                ));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

/// Checks `[vault]`: one of `key_env` or `keys`, unique key ids, labels written `key=value`.
fn check_vault(
    raw: RawVault,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<String>,
) -> VaultConfig {
    let keys = match (raw.key_env, raw.keys) {
        (Some(_), Some(_)) => {
            errors.push("vault: set either key_env or keys, not both".to_string());
            Vec::new()
        }
        (_, Some(keys)) => keys.into_iter().map(|k| (k.id, k.env)).collect::<Vec<_>>(),
        (key_env, None) => vec![(
            DEFAULT_VAULT_KEY_ID.to_string(),
            key_env.unwrap_or_else(|| DEFAULT_VAULT_KEY_ENV.to_string()),
        )],
    };
    let mut ids = std::collections::BTreeSet::new();
    for (id, _) in &keys {
        if id.is_empty() || !ids.insert(id.clone()) {
            errors.push(format!("vault.keys: key id '{id}' is empty or repeated"));
        }
    }
    let mut pass_through_labels = Vec::new();
    for label in raw.pass_through_labels.unwrap_or_default() {
        match label.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                pass_through_labels.push((k.to_string(), v.to_string()))
            }
            _ => errors.push(format!(
                "vault.pass_through_labels: '{label}' is not written key=value"
            )),
        }
    }
    let screen_trips = raw
        .screen_trips
        .unwrap_or(crate::vault::held::TRIPS_ALLOWED);
    if screen_trips == 0 {
        errors.push("vault.screen_trips: at least 1".to_string());
    }
    VaultConfig {
        screen_trips,
        enabled: raw.enabled.unwrap_or(true),
        keys: keys
            .into_iter()
            .map(|(id, var)| VaultKeyConfig {
                secret: env(&var).filter(|v| !v.is_empty()).map(SecretString::from),
                id,
                env: var,
            })
            .collect(),
        pass_through_labels,
    }
}

/// Checks `[notifications]`: unique webhook names, a URL that is https (plain http only to loopback or with
/// `allow_http`), a signing secret for every generic webhook (and none for Slack, which would not check
/// it), known events, sane delivery knobs. Messages never repeat a URL: it may carry a secret.
fn check_notifications(
    raw: RawNotifications,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<String>,
) -> NotificationsConfig {
    let max_attempts = raw.max_attempts.unwrap_or(DEFAULT_NOTIFY_MAX_ATTEMPTS);
    if max_attempts == 0 || max_attempts > 100 {
        errors.push("notifications.max_attempts must be between 1 and 100".to_string());
    }
    let backoff_initial_ms = raw
        .backoff_initial_ms
        .unwrap_or(DEFAULT_NOTIFY_BACKOFF_INITIAL_MS);
    let backoff_max_ms = raw.backoff_max_ms.unwrap_or(DEFAULT_NOTIFY_BACKOFF_MAX_MS);
    if backoff_initial_ms == 0 || backoff_max_ms < backoff_initial_ms {
        errors.push(
            "notifications.backoff_initial_ms must be positive and at most backoff_max_ms"
                .to_string(),
        );
    }
    if backoff_max_ms > 24 * 3600 * 1000 {
        errors.push("notifications.backoff_max_ms must be at most a day (86400000)".to_string());
    }
    let timeout_ms = raw.timeout_ms.unwrap_or(DEFAULT_NOTIFY_TIMEOUT_MS);
    if timeout_ms == 0 || timeout_ms > 60_000 {
        errors.push("notifications.timeout_ms must be between 1 and 60000".to_string());
    }
    let sweep_interval_ms = raw
        .sweep_interval_ms
        .unwrap_or(DEFAULT_NOTIFY_SWEEP_INTERVAL_MS);
    if sweep_interval_ms == 0 || sweep_interval_ms > 60_000 {
        errors.push("notifications.sweep_interval_ms must be between 1 and 60000".to_string());
    }

    let mut webhooks: Vec<WebhookConfig> = Vec::new();
    for w in raw.webhooks.unwrap_or_default() {
        let name = w.name;
        let at = format!("notifications.webhooks '{name}'");
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            errors.push(format!(
                "{at}: a webhook name is 1 to 64 lower-case letters, digits, '-' and '_'"
            ));
        }
        if webhooks.iter().any(|o| o.name == name) {
            errors.push(format!("{at}: the name is used by another webhook"));
        }
        let format = match w.format.as_str() {
            "slack" => WebhookFormat::Slack,
            "generic" => WebhookFormat::Generic,
            other => {
                errors.push(format!(
                    "{at}: format '{other}' is not one of slack, generic"
                ));
                WebhookFormat::Generic
            }
        };
        let allow_http = w.allow_http.unwrap_or(false);
        let url_text = match (&w.url, &w.url_env) {
            (Some(u), None) => Some(u.clone()),
            (None, Some(var)) => env(var).filter(|v| !v.is_empty()),
            _ => {
                errors.push(format!("{at}: set exactly one of url and url_env"));
                None
            }
        };
        if let Some(text) = &url_text
            && let Err(why) = check_webhook_url(text, allow_http)
        {
            errors.push(format!("{at}: the URL {why}"));
        }
        let secret = match (format, &w.secret_env) {
            (WebhookFormat::Generic, None) => {
                errors.push(format!(
                    "{at}: a generic webhook needs secret_env, the environment variable holding its signing secret"
                ));
                None
            }
            (WebhookFormat::Slack, Some(_)) => {
                errors.push(format!(
                    "{at}: secret_env is for generic webhooks; Slack does not check a signature (keep its URL secret, e.g. in url_env)"
                ));
                None
            }
            (_, Some(var)) => env(var).filter(|v| !v.is_empty()).map(SecretString::from),
            (_, None) => None,
        };
        if let Some(s) = &secret
            && secrecy::ExposeSecret::expose_secret(s).len() < 16
        {
            errors.push(format!(
                "{at}: the signing secret in {} is shorter than 16 characters",
                w.secret_env.as_deref().unwrap_or_default()
            ));
        }
        let events = match w.events {
            None => crate::notify::Event::ALL.to_vec(),
            Some(list) => {
                if list.is_empty() {
                    errors.push(format!(
                        "{at}: events is empty (leave it out for all events)"
                    ));
                }
                let mut events = Vec::new();
                for e in list {
                    match crate::notify::Event::parse(&e) {
                        Some(ev) if !events.contains(&ev) => events.push(ev),
                        Some(_) => {}
                        None => errors.push(format!(
                            "{at}: event '{e}' is not one of {}",
                            crate::notify::Event::ALL.map(|e| e.as_str()).join(", ")
                        )),
                    }
                }
                events
            }
        };
        webhooks.push(WebhookConfig {
            name,
            url_env: w.url_env,
            url: url_text.map(SecretString::from),
            format,
            secret_env: w.secret_env,
            secret,
            events,
            allow_http,
        });
    }
    NotificationsConfig {
        webhooks,
        max_attempts,
        backoff_initial: Duration::from_millis(backoff_initial_ms),
        backoff_max: Duration::from_millis(backoff_max_ms),
        timeout: Duration::from_millis(timeout_ms),
        sweep_interval: Duration::from_millis(sweep_interval_ms),
    }
}

/// A webhook URL tollgate will post to: https, or plain http to a loopback address (a receiver on the same
/// host) or when `allow_http` says the operator means it. Notifications carry what a reviewer needs to
/// judge a request; they do not cross a network in the clear by accident. The error never repeats the URL.
pub fn check_webhook_url(text: &str, allow_http: bool) -> Result<http::Uri, String> {
    let uri = text
        .parse::<http::Uri>()
        .map_err(|_| "is not a URL".to_string())?;
    let host = uri
        .host()
        .ok_or_else(|| "has no host".to_string())?
        .trim_start_matches('[')
        .trim_end_matches(']');
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err("must not carry a user name or password".to_string());
    }
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") => {
            let loopback = host.eq_ignore_ascii_case("localhost")
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback || allow_http {
                Ok(uri)
            } else {
                Err(
                    "is plain http to a host other than loopback; use https, or set allow_http = true"
                        .to_string(),
                )
            }
        }
        _ => Err("must be an http(s) URL".to_string()),
    }
}

/// The two providers of the contract, at their real upstreams. Used when the file has no `[providers]`
/// section, before environment overrides apply, so `TOLLGATE_PROVIDERS__STRIPE__UPSTREAM` changes one
/// default provider without dropping the other.
const DEFAULT_PROVIDERS: &str = r#"
[cloudflare]
upstream = "https://api.cloudflare.com"
envelope = "cloudflare"
credential = { env = "CLOUDFLARE_API_TOKEN", scheme = "bearer" }

[stripe]
upstream = "https://api.stripe.com"
envelope = "stripe"
credential = { env = "STRIPE_SECRET_KEY", scheme = "basic" }
"#;

/// Applies `TOLLGATE_SECTION__KEY[__KEY…]=value`. Values that parse as a TOML scalar (numbers, booleans)
/// take that type; anything else is a string.
fn apply_env_overrides(table: &mut toml::Table, env: &[(String, String)]) -> Result<(), String> {
    let mut vars: Vec<&(String, String)> = env
        .iter()
        .filter(|(k, _)| k.starts_with("TOLLGATE_"))
        .collect();
    vars.sort();
    for (key, value) in vars {
        let rest = &key["TOLLGATE_".len()..];
        if !rest.contains("__") {
            continue; // TOLLGATE_CONFIG, TOLLGATE_ADMIN_TOKEN and the like are not overrides.
        }
        let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
        if path.iter().any(|s| s.is_empty()) {
            return Err(format!("{key}: empty section or key in override"));
        }
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .filter(|v| !matches!(v, toml::Value::Table(_)))
            .unwrap_or_else(|| toml::Value::String(value.clone()));
        let mut cursor = &mut *table;
        for (i, part) in path.iter().enumerate() {
            if i + 1 == path.len() {
                cursor.insert(part.clone(), parsed.clone());
            } else {
                let entry = cursor
                    .entry(part.clone())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                cursor = match entry {
                    toml::Value::Table(t) => t,
                    _ => return Err(format!("{key}: '{part}' is not a section")),
                };
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn load(toml_text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tollgate.toml");
        std::fs::write(&path, toml_text).unwrap();
        let source = ConfigSource {
            file: Some(&path),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        Config::load(&source)
    }

    #[test]
    fn defaults_give_both_providers() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.server.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.providers.len(), 2);
        assert_eq!(
            c.providers["stripe"].credential.as_ref().unwrap().scheme,
            CredentialScheme::Basic
        );
        assert!(c.database.url.is_none());
    }

    /// Found by an attacker: with a window longer than Stripe keeps keys, a same-key repeat Stripe runs
    /// anew was forwarded as a replay and never charged.
    #[test]
    fn a_stripe_replay_window_is_at_most_what_stripe_guarantees() {
        let stripe = |secs: u64| {
            format!(
                "[providers.stripe]\nupstream = \"https://api.stripe.com\"\nenvelope = \"stripe\"\n\
                 credential = {{ env = \"STRIPE_SECRET_KEY\", scheme = \"basic\" }}\n\
                 idempotency_window_seconds = {secs}\n"
            )
        };
        let c = load(&stripe(86_400), &[]).unwrap();
        assert_eq!(
            c.providers["stripe"].idempotency_window,
            Some(Duration::from_secs(86_400))
        );
        let e = load(&stripe(86_401), &[]).unwrap_err();
        assert!(
            e.to_string()
                .contains("providers.stripe.idempotency_window_seconds: 86401"),
            "{e}"
        );
        assert_eq!(
            load(&stripe(0), &[]).unwrap().providers["stripe"].idempotency_window,
            None
        );
    }

    #[test]
    fn audit_writers_default_by_store_and_are_bounded_by_the_pool() {
        let pg = [("DATABASE_URL", "postgres://u@h/db")];
        assert_eq!(load("", &pg).unwrap().audit.writers, DEFAULT_AUDIT_WRITERS);
        // SQLite commits one transaction at a time: one writer.
        assert_eq!(load("", &[]).unwrap().audit.writers, 1);
        assert_eq!(
            load("[audit]\nwriters = 4\n", &pg).unwrap().audit.writers,
            4
        );
        let e = load("[audit]\nwriters = 0\n", &pg).unwrap_err();
        assert!(e.to_string().contains("audit.writers"), "{e}");
        let e = load(
            "[database]\nmax_connections = 3\n[audit]\nwriters = 3\n",
            &pg,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("max_connections of at least 4"),
            "{e}"
        );
    }

    #[test]
    fn reviewer_keys() {
        let c = load("", &[]).unwrap();
        assert!(!c.approvals.allow_self_approval);
        assert!(
            c.admin.trusted_proxies.is_empty(),
            "no proxy is trusted by default"
        );
        assert_eq!(c.admin.identity_header.as_str(), "x-forwarded-email");
        let c = load(
            "[approvals]\nallow_self_approval = true\n[admin]\ntrusted_proxies = [\"10.0.0.7\", \"::1\"]\nidentity_header = \"X-Auth-Request-Email\"\n",
            &[],
        )
        .unwrap();
        assert!(c.approvals.allow_self_approval);
        assert_eq!(c.admin.trusted_proxies.len(), 2);
        assert_eq!(c.admin.identity_header.as_str(), "x-auth-request-email");
        let c = load("", &[("TOLLGATE_APPROVALS__ALLOW_SELF_APPROVAL", "true")]).unwrap();
        assert!(c.approvals.allow_self_approval);
        let e = load(
            "[admin]\ntrusted_proxies = [\"10.0.0.0/8\"]\nidentity_header = \"bad header\"\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(e.0.len(), 2, "{e}");
        assert!(e.to_string().contains("10.0.0.0/8"), "{e}");
    }

    /// A `[notifications]` case: the webhook tables' text, the environment, and either the errors expected
    /// (each a fragment of one message) or none.
    fn check_notifications_case(webhooks: &str, env: &[(&str, &str)], expected: &[&str]) {
        let text = format!("[admin]\npublic_url = \"https://tollgate.example.com/\"\n{webhooks}");
        match load(&text, env) {
            Ok(_) => assert!(
                expected.is_empty(),
                "{webhooks}: accepted, expected {expected:?}"
            ),
            Err(e) => {
                assert_eq!(e.0.len(), expected.len(), "{webhooks}: {e}");
                for fragment in expected {
                    assert!(e.to_string().contains(fragment), "{webhooks}: {e}");
                }
                assert!(
                    !e.to_string().contains("hooks.slack.com/services/T0"),
                    "a URL leaked: {e}"
                );
            }
        }
    }

    #[test]
    fn notifications_are_checked() {
        let secret = [("HOOK_SECRET", "0123456789abcdef0123")];
        let slack = "[[notifications.webhooks]]\nname = \"chat\"\nformat = \"slack\"\n";
        let generic = "[[notifications.webhooks]]\nname = \"siem\"\nformat = \"generic\"\n";
        // Accepted: https, loopback http, http when allowed, a URL from the environment.
        check_notifications_case(
            &format!("{slack}url = \"https://hooks.slack.com/services/T0/B0/x\"\n"),
            &[],
            &[],
        );
        check_notifications_case(
            &format!(
                "{generic}url = \"http://127.0.0.1:9/hook\"\nsecret_env = \"HOOK_SECRET\"\nevents = [\"approval_required\"]\n"
            ),
            &secret,
            &[],
        );
        check_notifications_case(
            &format!(
                "{generic}url = \"http://receiver.internal/hook\"\nallow_http = true\nsecret_env = \"HOOK_SECRET\"\n"
            ),
            &secret,
            &[],
        );
        check_notifications_case(
            &format!("{slack}url_env = \"SLACK_URL\"\n"),
            &[("SLACK_URL", "https://hooks.slack.com/services/T0/B0/x")],
            &[],
        );
        // Refused.
        check_notifications_case(
            &format!("{slack}url = \"http://hooks.slack.com/services/T0/B0/x\"\n"),
            &[],
            &["plain http to a host other than loopback"],
        );
        check_notifications_case(
            &format!("{generic}url = \"https://siem.example.com/hook\"\n"),
            &[],
            &["needs secret_env"],
        );
        check_notifications_case(
            &format!(
                "{slack}url = \"https://hooks.slack.com/services/T0/B0/x\"\nsecret_env = \"HOOK_SECRET\"\n"
            ),
            &secret,
            &["secret_env is for generic webhooks"],
        );
        check_notifications_case(
            &format!(
                "{generic}url = \"https://siem.example.com/hook\"\nsecret_env = \"HOOK_SECRET\"\n"
            ),
            &[("HOOK_SECRET", "short")],
            &["shorter than 16"],
        );
        check_notifications_case(
            &format!("{slack}url = \"https://a.example/x\"\nurl_env = \"SLACK_URL\"\n"),
            &[],
            &["exactly one of url and url_env"],
        );
        check_notifications_case(
            &format!(
                "{slack}url = \"https://a.example/x\"\nevents = [\"approval_required\", \"lunch\"]\n"
            ),
            &[],
            &["event 'lunch'"],
        );
        check_notifications_case(
            &format!(
                "{slack}url = \"https://a.example/x\"\n{slack}url = \"https://b.example/x\"\n"
            ),
            &[],
            &["used by another webhook"],
        );
        check_notifications_case(
            &format!("{slack}url = \"https://user:pw@a.example/x\"\n"),
            &[],
            &["user name or password"],
        );
        check_notifications_case(
            &format!(
                "[notifications]\nmax_attempts = 0\nbackoff_initial_ms = 10\nbackoff_max_ms = 5\n{slack}url = \"ftp://a.example/x\"\nformat_ = 1\n"
            ),
            &[],
            &["format_"],
        );
        check_notifications_case(
            "[notifications]\nmax_attempts = 0\nbackoff_initial_ms = 10\nbackoff_max_ms = 5\ntimeout_ms = 0\n",
            &[],
            &["max_attempts", "backoff_initial_ms", "timeout_ms"],
        );
    }

    #[test]
    fn notification_defaults_public_url_and_what_serve_needs() {
        let c = load("", &[]).unwrap();
        assert!(c.notifications.webhooks.is_empty());
        assert_eq!(c.notifications.max_attempts, DEFAULT_NOTIFY_MAX_ATTEMPTS);
        assert!(c.admin.public_url.is_none());
        // Links need the console's address.
        let e = load(
            "[[notifications.webhooks]]\nname = \"chat\"\nformat = \"slack\"\nurl = \"https://a.example/x\"\n",
            &[],
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("admin.public_url is required"),
            "{e}"
        );
        let e = load("[admin]\npublic_url = \"tollgate.example.com\"\n", &[]).unwrap_err();
        assert!(e.to_string().contains("admin.public_url"), "{e}");
        // A secret or URL from an unset variable: valid for check-config, refused by serve.
        let c = load(
            "[admin]\npublic_url = \"https://t.example/console/\"\n[[notifications.webhooks]]\nname = \"siem\"\nformat = \"generic\"\nurl_env = \"SIEM_URL\"\nsecret_env = \"SIEM_SECRET\"\n",
            &[("CLOUDFLARE_API_TOKEN", "x"), ("STRIPE_SECRET_KEY", "y")],
        )
        .unwrap();
        assert_eq!(
            c.admin.public_url.as_deref(),
            Some("https://t.example/console")
        );
        assert_eq!(
            c.notifications.webhooks[0].events,
            crate::notify::Event::ALL
        );
        let e = c.check_serveable().unwrap_err().to_string();
        assert!(e.contains("SIEM_URL") && e.contains("SIEM_SECRET"), "{e}");
    }

    #[test]
    fn vault_keys_and_pass_through_labels() {
        // Default: one key from TOLLGATE_VAULT_KEY, id k1, vault mode on.
        let c = load("", &[("TOLLGATE_VAULT_KEY", "a2V5")]).unwrap();
        assert!(c.vault.enabled);
        assert_eq!(c.vault.keys.len(), 1);
        assert_eq!(
            (c.vault.keys[0].id.as_str(), c.vault.keys[0].env.as_str()),
            ("k1", "TOLLGATE_VAULT_KEY")
        );
        assert!(c.vault.keys[0].secret.is_some());
        // A rotation list: order kept, first seals.
        let c = load(
            "[vault]\nkeys = [{ id = \"k2\", env = \"V2\" }, { id = \"k1\", env = \"V1\" }]\npass_through_labels = [\"ci=true\"]\n",
            &[],
        )
        .unwrap();
        let ids: Vec<&str> = c.vault.keys.iter().map(|k| k.id.as_str()).collect();
        assert_eq!(ids, ["k2", "k1"]);
        assert!(c.vault.keys.iter().all(|k| k.secret.is_none()));
        assert_eq!(
            c.vault.pass_through_labels,
            vec![("ci".to_string(), "true".to_string())]
        );
        // The vault names the missing variable; vault mode off needs none.
        let errors = crate::vault::Vault::from_config(&c.vault)
            .err()
            .unwrap()
            .join("\n");
        assert!(errors.contains("V2") && errors.contains("V1"), "{errors}");
        assert_eq!(c.vault.screen_trips, 3);
        assert_eq!(
            load("[vault]\nscreen_trips = 10\n", &[])
                .unwrap()
                .vault
                .screen_trips,
            10
        );
        let off = load("[vault]\nenabled = false\n", &[]).unwrap();
        assert!(crate::vault::Vault::from_config(&off.vault).is_ok());
        for bad in [
            "[vault]\nkey_env = \"A\"\nkeys = [{ id = \"k1\", env = \"B\" }]\n",
            "[vault]\nkeys = [{ id = \"k1\", env = \"A\" }, { id = \"k1\", env = \"B\" }]\n",
            "[vault]\npass_through_labels = [\"ci\"]\n",
            "[vault]\npass_through = true\n",
            "[vault]\nscreen_trips = 0\n",
        ] {
            assert!(load(bad, &[]).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = load("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n", &[]).unwrap_err();
        assert!(e.to_string().contains("lisen"), "{e}");
    }

    #[test]
    fn every_error_is_reported_together() {
        let text = "[server]\nlisten = \"nope\"\nadmin_listen = \"also-nope\"\n[providers.x]\nupstream = \"ftp://a\"\nenvelope = \"soap\"\n";
        let e = load(text, &[]).unwrap_err();
        assert_eq!(e.0.len(), 4, "{e}");
    }

    #[test]
    fn env_overrides_and_database_url() {
        let c = load(
            "",
            &[
                ("TOLLGATE_SERVER__BODY_LIMIT_BYTES", "1234"),
                ("TOLLGATE_SERVER__LISTEN", "127.0.0.1:7000"),
                (
                    "TOLLGATE_PROVIDERS__CLOUDFLARE__UPSTREAM",
                    "http://127.0.0.1:9",
                ),
                ("DATABASE_URL", "postgres://u@h/db"),
                ("CLOUDFLARE_API_TOKEN", "cf-secret"),
            ],
        );
        // Overriding one default provider keeps the other.
        let c = c.unwrap();
        assert_eq!(c.providers.len(), 2);
        assert_eq!(
            c.providers["cloudflare"].upstream.to_string(),
            "http://127.0.0.1:9/"
        );
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:7000");
        let c = load(
            "[providers.cloudflare]\nupstream = \"https://api.cloudflare.com\"\ncredential = { env = \"CF\", scheme = \"bearer\" }\n",
            &[
                ("TOLLGATE_SERVER__BODY_LIMIT_BYTES", "1234"),
                ("TOLLGATE_PROVIDERS__CLOUDFLARE__UPSTREAM", "http://127.0.0.1:9"),
                ("DATABASE_URL", "postgres://u@h/db"),
                ("CF", "cf-secret"),
            ],
        )
        .unwrap();
        assert_eq!(c.server.body_limit_bytes, 1234);
        assert_eq!(
            c.providers["cloudflare"].upstream.to_string(),
            "http://127.0.0.1:9/"
        );
        assert_eq!(
            c.database.url.as_ref().unwrap().expose_secret(),
            "postgres://u@h/db"
        );
        let secret = c.providers["cloudflare"]
            .credential
            .as_ref()
            .unwrap()
            .secret
            .as_ref()
            .unwrap();
        assert_eq!(secret.expose_secret(), "cf-secret");
        assert!(
            !format!("{c:?}").contains("cf-secret"),
            "Debug must redact secrets"
        );
    }

    #[test]
    fn the_example_config_in_deploy_is_valid() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/tollgate.toml");
        let source = ConfigSource {
            file: Some(&path),
            env: vec![
                ("CLOUDFLARE_API_TOKEN".into(), "x".into()),
                ("STRIPE_SECRET_KEY".into(), "y".into()),
            ],
        };
        let c = Config::load(&source).unwrap();
        c.check_serveable().unwrap();
        assert_eq!(c.approvals.ttl, Duration::from_secs(3600));
        assert_eq!(c.audit.max_batch, 1024);
    }

    #[test]
    fn database_url_env_overrides_the_file_and_tollgate_override_beats_both() {
        let file = "[database]\nurl = \"postgres://file/db\"\n";
        let c = load(file, &[("DATABASE_URL", "postgres://env/db")]).unwrap();
        assert_eq!(
            c.database.url.as_ref().unwrap().expose_secret(),
            "postgres://env/db"
        );
        let c = load(
            file,
            &[
                ("DATABASE_URL", "postgres://env/db"),
                ("TOLLGATE_DATABASE__URL", "postgres://override/db"),
            ],
        )
        .unwrap();
        assert_eq!(
            c.database.url.as_ref().unwrap().expose_secret(),
            "postgres://override/db"
        );
        let c = load(file, &[]).unwrap();
        assert_eq!(
            c.database.url.as_ref().unwrap().expose_secret(),
            "postgres://file/db"
        );
    }

    #[test]
    fn serve_needs_every_credential() {
        let c = load("", &[("CLOUDFLARE_API_TOKEN", "x")]).unwrap();
        let e = c.check_serveable().unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert!(e.0[0].contains("STRIPE_SECRET_KEY"));
    }
}
