//! The real `tollgate` binary as a test fixture: a config file in a temporary directory, a process listening
//! on ports the OS chose, and helpers to run its CLI against the same configuration.
//!
//! The binary is `target/<profile>/tollgate` next to the test executable's directory; the README's test
//! command builds it before running the tests. Its addresses come from the two lines `serve` prints on
//! start. The process is killed when the fixture is dropped; its stderr (logs) is kept in the temporary
//! directory and printed when a start fails.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

/// The provider credentials the fixture configures. Tests assert they reach the upstream and nothing else.
pub const CLOUDFLARE_SECRET: &str = "cf-test-credential-7d41c2";
pub const STRIPE_SECRET: &str = "sk_test_tollgate_9f3b1e";
pub const ADMIN_TOKEN: &str = "admin-test-token-51aa0c";
/// The signing secret of generic webhooks in tests, in `TOLLGATE_WEBHOOK_SECRET` of every tollgate started.
pub const WEBHOOK_SECRET: &str = "webhook-test-secret-0b77d9e4";
/// The key recorded secrets are hashed with (HMAC-SHA256) in every fixture.
pub const REDACTION_KEY: &str = "redaction-test-key-3c9e02";
/// The vault key (`TOLLGATE_VAULT_KEY`, base64 of 32 bytes) every fixture runs with.
pub const VAULT_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// A second vault key (`TOLLGATE_VAULT_KEY_2`) for rotation tests.
pub const VAULT_KEY_2: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

/// The `tollgate` binary built for this profile.
pub fn binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test-binary> → target/<profile>/tollgate
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("unexpected test executable location {}", exe.display()))?;
    let bin = dir.join("tollgate");
    if !bin.exists() {
        bail!(
            "{} not found: build it first (`cargo build -p tollgate`), as the README's test command does",
            bin.display()
        );
    }
    Ok(bin)
}

/// The repository's bundled policy directory.
pub fn bundled_policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

/// A copy of the bundled catalog with `rego` as the only policy file: for tests that need a policy of their
/// own (a denial, a broken decision) on real routes.
pub fn policy_dir_with(rego: &str) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    // `catalog/<provider>/data.yaml`: the layout OPA loads as `data.catalog.<provider>`.
    for entry in std::fs::read_dir(bundled_policies().join("catalog"))? {
        let path = entry?.path();
        if let Some(name) = path.file_name() {
            let to = dir.path().join("catalog").join(name);
            std::fs::create_dir_all(&to)?;
            std::fs::copy(path.join("data.yaml"), to.join("data.yaml"))?;
        }
    }
    std::fs::write(dir.path().join("policy.rego"), rego)?;
    Ok(dir)
}

pub struct TollgateBuilder {
    /// `None`: no database configured, so tollgate uses its embedded SQLite file in its working directory.
    database_url: Option<String>,
    cloudflare_upstream: String,
    stripe_upstream: String,
    policy_dir: PathBuf,
    server_extra: Vec<String>,
    policy_extra: Vec<String>,
    stripe_extra: Vec<String>,
    audit_extra: Vec<String>,
    approvals_extra: Vec<String>,
    admin_extra: Vec<String>,
    tables_extra: Vec<String>,
}

pub struct Tollgate {
    child: Child,
    dir: tempfile::TempDir,
    pub proxy: String,
    pub admin: String,
}

impl TollgateBuilder {
    pub fn new(database_url: &str, upstream_url: &str) -> TollgateBuilder {
        TollgateBuilder {
            database_url: Some(database_url.to_string()),
            cloudflare_upstream: upstream_url.to_string(),
            stripe_upstream: upstream_url.to_string(),
            policy_dir: bundled_policies(),
            server_extra: Vec::new(),
            policy_extra: Vec::new(),
            stripe_extra: Vec::new(),
            audit_extra: Vec::new(),
            approvals_extra: Vec::new(),
            admin_extra: Vec::new(),
            tables_extra: Vec::new(),
        }
    }

    pub fn policy_dir(mut self, dir: &Path) -> Self {
        self.policy_dir = dir.to_path_buf();
        self
    }

    pub fn stripe_upstream(mut self, url: &str) -> Self {
        self.stripe_upstream = url.to_string();
        self
    }

    /// An extra `key = value` line in `[server]`, e.g. `body_limit_bytes = 1024`.
    pub fn server(mut self, line: &str) -> Self {
        self.server_extra.push(line.to_string());
        self
    }

    /// No database configured: the embedded default (`./tollgate.db` in the fixture's directory).
    pub fn embedded(mut self) -> Self {
        self.database_url = None;
        self
    }

    /// An extra `key = value` line in `[policy]`, e.g. `shadow_dir = "/tmp/x"`.
    pub fn policy(mut self, line: &str) -> Self {
        self.policy_extra.push(line.to_string());
        self
    }

    /// An extra `key = value` line in `[providers.stripe]`, e.g. `idempotency_window_seconds = 2`.
    pub fn stripe(mut self, line: &str) -> Self {
        self.stripe_extra.push(line.to_string());
        self
    }

    /// An extra `key = value` line in `[approvals]`, e.g. `allow_self_approval = true`.
    pub fn approvals(mut self, line: &str) -> Self {
        self.approvals_extra.push(line.to_string());
        self
    }

    /// An extra `key = value` line in `[admin]`, e.g. `trusted_proxies = ["127.0.0.1"]`.
    pub fn admin(mut self, line: &str) -> Self {
        self.admin_extra.push(line.to_string());
        self
    }

    /// Extra tables at the end of the file, e.g. `[notifications]` and `[[notifications.webhooks]]`.
    pub fn tables(mut self, toml: &str) -> Self {
        self.tables_extra.push(toml.to_string());
        self
    }

    /// An extra `key = value` line in `[audit]`, e.g. `writers = 1`.
    pub fn audit(mut self, line: &str) -> Self {
        self.audit_extra.push(line.to_string());
        self
    }

    fn config_text(&self) -> String {
        format!(
            r#"[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
{extra}

{database}

[policy]
dir = "{policy}"
{policy_extra}

[providers.cloudflare]
upstream = "{cf}"
envelope = "cloudflare"
credential = {{ env = "CLOUDFLARE_API_TOKEN", scheme = "bearer" }}

[providers.stripe]
upstream = "{stripe}"
envelope = "stripe"
credential = {{ env = "STRIPE_SECRET_KEY", scheme = "basic" }}
{stripe_extra}

[audit]
{audit_extra}

[approvals]
{approvals_extra}

[admin]
{admin_extra}

{tables_extra}
"#,
            extra = self.server_extra.join("\n"),
            policy_extra = self.policy_extra.join("\n"),
            stripe_extra = self.stripe_extra.join("\n"),
            audit_extra = self.audit_extra.join("\n"),
            approvals_extra = self.approvals_extra.join("\n"),
            admin_extra = self.admin_extra.join("\n"),
            tables_extra = self.tables_extra.join("\n"),
            database = match &self.database_url {
                Some(url) => format!("[database]\nurl = \"{url}\"\nmigrate_on_start = true\n"),
                None => String::new(),
            },
            policy = self.policy_dir.display(),
            cf = self.cloudflare_upstream,
            stripe = self.stripe_upstream,
        )
    }

    /// Writes the config into `dir` and runs one CLI command there, with no server started.
    pub async fn cli_in(
        &self,
        dir: &Path,
        args: &[&str],
    ) -> anyhow::Result<(bool, String, String)> {
        std::fs::write(dir.join("tollgate.toml"), self.config_text())?;
        let out = command(dir)?.args(args).output().await?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Writes the config, starts `tollgate serve` and waits until both listeners are up.
    pub async fn start(self) -> anyhow::Result<Tollgate> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("tollgate.toml"), self.config_text())?;
        spawn_in(dir).await
    }
}

/// Starts `tollgate serve` in `dir` (its config already there) and waits until both listeners are up.
async fn spawn_in(dir: tempfile::TempDir) -> anyhow::Result<Tollgate> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("tollgate.log"))?;
    let mut child = command(dir.path())?
        .arg("serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .context("spawning tollgate serve")?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let (mut proxy, mut admin) = (None, None);
    let wait = async {
        while proxy.is_none() || admin.is_none() {
            let Some(line) = lines.next_line().await? else {
                bail!("tollgate exited before it listened");
            };
            if let Some(url) = line.strip_prefix("tollgate listening for agents on ") {
                proxy = Some(url.trim().to_string());
            } else if let Some(rest) = line.strip_prefix("admin API, /metrics and /readyz on ") {
                admin = Some(rest.trim().to_string());
            }
        }
        anyhow::Ok(())
    };
    let started = tokio::time::timeout(Duration::from_secs(30), wait).await;
    if !matches!(started, Ok(Ok(()))) {
        let log = std::fs::read_to_string(dir.path().join("tollgate.log")).unwrap_or_default();
        bail!("tollgate did not start ({started:?}); its log:\n{log}");
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Tollgate {
        child,
        dir,
        proxy: proxy.unwrap_or_default(),
        admin: admin.unwrap_or_default(),
    })
}

/// `tollgate --config <dir>/tollgate.toml` with the fixture's secrets in its environment.
fn command(dir: &Path) -> anyhow::Result<Command> {
    let mut cmd = Command::new(binary()?);
    cmd.arg("--config")
        .arg(dir.join("tollgate.toml"))
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        // The local CLI: a TOLLGATE_SERVER in the developer's environment would send it to a server.
        .env_remove("TOLLGATE_SERVER")
        .env("CLOUDFLARE_API_TOKEN", CLOUDFLARE_SECRET)
        .env("STRIPE_SECRET_KEY", STRIPE_SECRET)
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("TOLLGATE_REDACTION_KEY", REDACTION_KEY)
        .env("TOLLGATE_WEBHOOK_SECRET", WEBHOOK_SECRET)
        .env("TOLLGATE_VAULT_KEY", VAULT_KEY)
        .env("TOLLGATE_VAULT_KEY_2", VAULT_KEY_2)
        .env("RUST_LOG", "info");
    Ok(cmd)
}

impl Tollgate {
    pub fn builder(database_url: &str, upstream_url: &str) -> TollgateBuilder {
        TollgateBuilder::new(database_url, upstream_url)
    }

    /// `http://<proxy>/<path>`; `path` starts with the provider, e.g. `/cloudflare/client/v4/zones`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.proxy)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("{}{path}", self.admin)
    }

    /// The proxy's `host:port`, for raw HTTP requests that a client library would normalize.
    pub fn proxy_addr(&self) -> &str {
        self.proxy.trim_start_matches("http://")
    }

    /// Runs a CLI subcommand against this instance's configuration; returns (exit success, stdout, stderr).
    pub async fn cli(&self, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
        let out = command(self.dir.path())?.args(args).output().await?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// As [`Tollgate::cli`], with extra environment variables (an operator agent's key for `--agent-key-env`).
    pub async fn cli_env(
        &self,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<(bool, String, String)> {
        let mut cmd = command(self.dir.path())?;
        cmd.args(args);
        for (name, value) in env {
            cmd.env(name, value);
        }
        let out = cmd.output().await?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Creates an agent through the CLI and returns its key.
    pub async fn create_agent(&self, name: &str, extra: &[&str]) -> anyhow::Result<String> {
        let mut args = vec!["agents", "create", name, "--json"];
        args.extend_from_slice(extra);
        let (ok, stdout, stderr) = self.cli(&args).await?;
        if !ok {
            bail!("agents create failed: {stderr}");
        }
        let v: Value = serde_json::from_str(&stdout)?;
        v["key"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no key in {stdout}"))
    }

    /// The directory the process runs in (its config, log and, when embedded, `tollgate.db`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process id, for signals.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The process's log so far (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tollgate.log")).unwrap_or_default()
    }

    /// Stops the process (SIGKILL) and waits for it.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// Asks the process to shut down (SIGTERM, as an orchestrator does) and waits up to 30 s for it to exit.
    pub async fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let pid = self.child.id().ok_or_else(|| anyhow!("already exited"))?;
        // SAFETY: sending a signal to our own child process, whose pid we hold and have not reaped.
        if unsafe { libc::kill(pid as i32, libc::SIGTERM) } != 0 {
            bail!("SIGTERM failed: {}", std::io::Error::last_os_error());
        }
        Ok(tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await??)
    }

    /// Starts the same configuration again in the same directory (its log appended), after the previous
    /// process exited: `terminate` or `crash` it first.
    pub async fn restart(self) -> anyhow::Result<Tollgate> {
        let Tollgate { mut child, dir, .. } = self;
        if child.try_wait()?.is_none() {
            bail!("restart: the process is still running");
        }
        spawn_in(dir).await
    }

    /// Kills the process (SIGKILL: no shutdown at all) and waits for it, keeping its directory for `restart`.
    pub async fn crash(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// Sends one raw HTTP/1.1 request (for paths a client library would normalize) and returns status and body.
pub async fn raw_request(addr: &str, head: &str, body: &[u8]) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no status line in {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
