//! The agents' real SDKs as test fixtures, for the SDK compatibility suite (`tests/sdk.rs`).
//!
//! - **Installation.** The pinned SDKs of `tests/sdk/` — Python (`python/requirements.txt`, every package with
//!   its `--hash`) and Node (`node/package.json` + `package-lock.json`) — are installed by the suite itself,
//!   into a cache directory keyed by the lock file and the interpreter's version:
//!   `$TOLLGATE_SDK_CACHE/<kind>-<hash>`, or `<target dir>/sdk-cache/<kind>-<hash>` without it. A clean clone
//!   installs them on its first run (a virtualenv with `pip install --require-hashes`; `npm ci`), later runs
//!   reuse them. Installers take an exclusive `flock` on `<kind>-<hash>.lock` and mark a finished install with
//!   a `.installed` file written last, so concurrent test processes (and threads) neither install twice nor
//!   use a half-installed cache; an unfinished one is removed and installed again. A failed installation is
//!   an error naming the command and its output: the suite fails, it never skips.
//! - **Agent programs.** [`Sdk::run`] runs `tests/sdk/<lang>/<script>` with one case name, a cleared
//!   environment plus the variables a test gives, and a timeout, and parses the one JSON line it prints.
//! - **A scripted stand-in.** [`StandIn`] records every request as [`Upstream`](crate::Upstream) does, but
//!   answers each through a function the test sets (and may change between cases), for page-dependent bodies
//!   such as auto-pagination needs.

use std::fs::{self, File};
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use http::{HeaderName, HeaderValue, StatusCode};
use serde_json::Value;

use crate::RecordedRequest;

/// How long one installation command may take before it is killed and the installation fails.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);
/// How long one agent program may run.
const AGENT_TIMEOUT: Duration = Duration::from_secs(90);
/// Bumped when the layout of a cache entry changes, so old entries are not reused.
const CACHE_FORMAT: &str = "tollgate-sdk-cache-1";

/// `tests/sdk` in the repository.
pub fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk")
}

/// The language runtime of an SDK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Python,
    Node,
}

impl Lang {
    pub fn name(self) -> &'static str {
        match self {
            Lang::Python => "python",
            Lang::Node => "node",
        }
    }

    fn script_ext(self) -> &'static str {
        match self {
            Lang::Python => "py",
            Lang::Node => "mjs",
        }
    }
}

/// An installed SDK environment: the interpreter to run agent programs with, and where they run.
#[derive(Debug, Clone)]
pub struct Sdk {
    pub lang: Lang,
    /// `<cache>/venv/bin/python`, or `node`.
    program: PathBuf,
    /// Python: `tests/sdk/python` (the scripts run in place). Node: the cache entry holding
    /// `node_modules`, where each script is copied before it runs so its bare imports resolve there.
    script_dir: PathBuf,
    /// The cache entry.
    pub cache: PathBuf,
}

/// What an agent program printed, plus how it exited.
#[derive(Debug, Clone)]
pub struct AgentRun {
    /// The JSON line the program printed.
    pub out: Value,
    pub stderr: String,
    pub elapsed: Duration,
}

/// The installed SDKs of `lang`, installing them first if the cache does not have them yet. Installation
/// happens at most once per process (and, through the file lock, once per cache entry across processes).
pub async fn installed(lang: Lang) -> anyhow::Result<Sdk> {
    static PYTHON: OnceLock<Result<Sdk, String>> = OnceLock::new();
    static NODE: OnceLock<Result<Sdk, String>> = OnceLock::new();
    let cell = match lang {
        Lang::Python => &PYTHON,
        Lang::Node => &NODE,
    };
    let result = tokio::task::spawn_blocking(move || {
        cell.get_or_init(|| install(lang).map_err(|e| format!("{e:#}")))
            .clone()
    })
    .await
    .context("the installer thread")?;
    result.map_err(|e| anyhow!("installing the pinned {} SDKs failed: {e}", lang.name()))
}

/// The cache root: `$TOLLGATE_SDK_CACHE`, else `<target dir>/sdk-cache` (from the test executable's path,
/// `target/<profile>/deps/<exe>`).
pub fn cache_root() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("TOLLGATE_SDK_CACHE").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe()?;
    let target = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("unexpected test executable location {}", exe.display()))?;
    Ok(target.join("sdk-cache"))
}

/// The interpreter that builds the virtualenv: `$TOLLGATE_SDK_PYTHON`, else `python3`.
pub(crate) fn base_python() -> PathBuf {
    std::env::var_os("TOLLGATE_SDK_PYTHON")
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from("python3"), PathBuf::from)
}

fn install(lang: Lang) -> anyhow::Result<Sdk> {
    let started = Instant::now();
    let dir = sdk_dir().join(lang.name());
    let (lock_files, runtime): (&[&str], Command) = match lang {
        Lang::Python => (&["requirements.txt"], {
            let mut c = Command::new(base_python());
            c.arg("--version");
            c
        }),
        Lang::Node => (&["package.json", "package-lock.json"], {
            let mut c = Command::new("node");
            c.arg("--version");
            c
        }),
    };
    let version = version_of(runtime, lang)?;
    let mut key = Fnv::new();
    key.add(CACHE_FORMAT.as_bytes());
    key.add(version.as_bytes());
    for name in lock_files {
        let path = dir.join(name);
        key.add(name.as_bytes());
        key.add(&fs::read(&path).with_context(|| format!("reading {}", path.display()))?);
    }
    let root = cache_root()?;
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let entry = root.join(format!("{}-{:016x}", lang.name(), key.finish()));
    let lock_path = entry.with_extension("lock");
    let lock =
        File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
    // SAFETY: flock on a descriptor this function owns; it is released when `lock` is dropped.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!(
            "flock {}: {}",
            lock_path.display(),
            std::io::Error::last_os_error()
        );
    }
    let marker = entry.join(".installed");
    if !marker.exists() {
        if entry.exists() {
            // A previous installer died half-way: start over.
            fs::remove_dir_all(&entry)
                .with_context(|| format!("removing the unfinished {}", entry.display()))?;
        }
        fs::create_dir_all(&entry)?;
        match lang {
            Lang::Python => install_python(&dir, &entry)?,
            Lang::Node => install_node(&dir, &entry)?,
        }
        let mut done = File::create(&marker)?;
        writeln!(
            done,
            "{} SDKs for {version} installed in {:.1} s",
            lang.name(),
            started.elapsed().as_secs_f64()
        )?;
        done.sync_all()?;
        eprintln!(
            "sdk suite: installed the pinned {} SDKs into {} in {:.1} s",
            lang.name(),
            entry.display(),
            started.elapsed().as_secs_f64()
        );
    }
    drop(lock);
    Ok(match lang {
        Lang::Python => Sdk {
            lang,
            program: entry.join("venv/bin/python"),
            script_dir: dir,
            cache: entry,
        },
        Lang::Node => Sdk {
            lang,
            program: PathBuf::from("node"),
            script_dir: entry.clone(),
            cache: entry,
        },
    })
}

fn version_of(mut command: Command, lang: Lang) -> anyhow::Result<String> {
    let out = command.output().with_context(|| {
        format!(
            "running `{:?} --version`: the {} SDK suite needs {} on PATH",
            command.get_program(),
            lang.name(),
            match lang {
                Lang::Python => "python3 (with the venv module) or $TOLLGATE_SDK_PYTHON",
                Lang::Node => "node and npm",
            }
        )
    })?;
    if !out.status.success() {
        bail!(
            "{:?} --version failed: {}",
            command.get_program(),
            out.status
        );
    }
    // Python 3.11 prints its version on stdout, some older ones on stderr.
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

fn install_python(src: &Path, entry: &Path) -> anyhow::Result<()> {
    let venv = entry.join("venv");
    let mut make = Command::new(base_python());
    make.arg("-m").arg("venv").arg(&venv);
    run_logged(make, entry, "venv")?;
    let mut pip = Command::new(venv.join("bin/python"));
    pip.args([
        "-m",
        "pip",
        "install",
        "--require-hashes",
        "--only-binary",
        ":all:",
        "--no-input",
        "--disable-pip-version-check",
        "-r",
    ])
    .arg(src.join("requirements.txt"));
    run_logged(pip, entry, "pip-install")
}

fn install_node(src: &Path, entry: &Path) -> anyhow::Result<()> {
    for name in ["package.json", "package-lock.json"] {
        fs::copy(src.join(name), entry.join(name))
            .with_context(|| format!("copying {name} into {}", entry.display()))?;
    }
    let mut npm = Command::new("npm");
    npm.args(["ci", "--no-audit", "--no-fund", "--ignore-scripts"])
        .current_dir(entry);
    run_logged(npm, entry, "npm-ci")
}

/// Runs an installation step with its output in `<entry>/<name>.log`, killed after [`INSTALL_TIMEOUT`].
pub(crate) fn run_logged(mut command: Command, entry: &Path, name: &str) -> anyhow::Result<()> {
    let log_path = entry.join(format!("{name}.log"));
    let log = File::create(&log_path)?;
    let described = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {described}"))?;
    let deadline = Instant::now() + INSTALL_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if status.is_some_and(|s| s.success()) {
        return Ok(());
    }
    let output = fs::read_to_string(&log_path).unwrap_or_default();
    let tail: Vec<&str> = output.lines().rev().take(40).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    bail!(
        "{described} {} (log {}):\n{}",
        match status {
            Some(status) => format!("failed ({status})"),
            None => format!("did not finish within {} s", INSTALL_TIMEOUT.as_secs()),
        },
        log_path.display(),
        tail.join("\n")
    )
}

impl Sdk {
    /// Runs `tests/sdk/<lang>/<script>.<ext> <case>` with a cleared environment (PATH and HOME kept) plus
    /// `env` and `TG_PARAMS=<params>`; returns the one JSON line it printed. A program that exits non-zero,
    /// prints no JSON line or runs past the timeout is an error carrying its output.
    pub async fn run(
        &self,
        script: &str,
        case: &str,
        env: &[(&str, String)],
        params: &Value,
    ) -> anyhow::Result<AgentRun> {
        let file = format!("{script}.{}", self.lang.script_ext());
        let path = match self.lang {
            Lang::Python => self.script_dir.join(&file),
            Lang::Node => {
                // Copied next to node_modules (atomically: a temporary name, then rename), so that
                // `import Stripe from "stripe"` resolves to the pinned package.
                let source = sdk_dir().join("node").join(&file);
                let target = self.script_dir.join(&file);
                let tmp = self.script_dir.join(format!(
                    ".{file}.{}.{:?}.tmp",
                    std::process::id(),
                    std::thread::current().id()
                ));
                fs::copy(&source, &tmp).with_context(|| format!("copying {}", source.display()))?;
                fs::rename(&tmp, &target)?;
                target
            }
        };
        let mut command = tokio::process::Command::new(&self.program);
        command
            .arg(&path)
            .arg(case)
            .env_clear()
            .env("TG_PARAMS", params.to_string())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for name in ["PATH", "HOME"] {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        for (name, value) in env {
            command.env(name, value);
        }
        let started = Instant::now();
        let child = command
            .spawn()
            .with_context(|| format!("starting {} {}", self.program.display(), path.display()))?;
        let out = tokio::time::timeout(AGENT_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| {
                anyhow!(
                    "{file} {case} ran over {} s (killed)",
                    AGENT_TIMEOUT.as_secs()
                )
            })??;
        let elapsed = started.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            bail!(
                "{file} {case} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
                out.status
            );
        }
        let line = stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .ok_or_else(|| anyhow!("{file} {case} printed nothing; stderr:\n{stderr}"))?;
        let out: Value = serde_json::from_str(line).with_context(|| {
            format!("{file} {case} printed no JSON line: {line:?}; stderr:\n{stderr}")
        })?;
        Ok(AgentRun {
            out,
            stderr,
            elapsed,
        })
    }
}

/// FNV-1a (64 bit): a stable, dependency-free hash for cache keys (not for security).
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn add(&mut self, bytes: &[u8]) {
        for byte in bytes.iter().chain(b"\0") {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// What the [`StandIn`] answers to one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub headers: Vec<(String, String)>,
    /// How long to wait before answering (after recording the request).
    pub delay: Duration,
    /// Bytes sent in place of `body` (a body no JSON serializer would write, or a compressed one).
    pub raw: Option<Vec<u8>>,
    /// An HTTP/1 reason phrase in place of the status's usual one.
    pub reason: Option<String>,
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            body,
            headers: Vec::new(),
            delay: Duration::ZERO,
            raw: None,
            reason: None,
        }
    }

    /// Answers with this reason phrase on the status line (HTTP/1).
    pub fn reason(mut self, text: &str) -> Reply {
        self.reason = Some(text.to_owned());
        self
    }

    /// These exact bytes as the body (still labelled `application/json` unless a header says otherwise).
    pub fn raw(status: u16, bytes: Vec<u8>) -> Reply {
        Reply {
            raw: Some(bytes),
            ..Reply::json(status, Value::Null)
        }
    }

    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

type Responder = Arc<dyn Fn(&RecordedRequest) -> Reply + Send + Sync>;

struct StandInState {
    records: Mutex<Vec<RecordedRequest>>,
    responder: Mutex<Responder>,
}

/// A stand-in provider on `127.0.0.1` that records every request (as [`Upstream`](crate::Upstream) does:
/// target byte for byte, headers in order, whole body) and answers with whatever the function set by
/// [`StandIn::answer`] returns for it. Stops when dropped.
pub struct StandIn {
    addr: SocketAddr,
    state: Arc<StandInState>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl StandIn {
    /// Binds `127.0.0.1:0`; until [`StandIn::answer`] is called every request gets a 500.
    pub async fn start() -> anyhow::Result<StandIn> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(StandInState {
            records: Mutex::new(Vec::new()),
            responder: Mutex::new(Arc::new(|_: &RecordedRequest| {
                Reply::json(500, serde_json::json!({"stand_in": "no responder set"}))
            })),
        });
        let app = Router::new()
            .fallback(stand_in_answer)
            .with_state(Arc::clone(&state));
        let server = tokio::spawn(std::future::IntoFuture::into_future(axum::serve(
            listener, app,
        )));
        Ok(StandIn {
            addr,
            state,
            server,
        })
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers every following request with `f(request)`.
    pub fn answer(&self, f: impl Fn(&RecordedRequest) -> Reply + Send + Sync + 'static) {
        *self
            .state
            .responder
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(f);
    }

    /// The requests received since the last `take`, in order of arrival (and forgets them).
    pub fn take(&self) -> Vec<RecordedRequest> {
        std::mem::take(
            &mut *self
                .state
                .records
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn stand_in_answer(State(state): State<Arc<StandInState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let record = RecordedRequest {
        method: parts.method.to_string(),
        path_and_query: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.to_string(), |t| t.as_str().to_owned()),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
        probe: None,
    };
    state
        .records
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(record.clone());
    let responder = Arc::clone(
        &state
            .responder
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    let reply = responder(&record);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut response = Response::new(match reply.raw {
        Some(bytes) => Body::from(bytes),
        None => Body::from(reply.body.to_string()),
    });
    *response.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Some(phrase) = reply
        .reason
        .and_then(|r| hyper::ext::ReasonPhrase::try_from(r.into_bytes()).ok())
    {
        response.extensions_mut().insert(phrase);
    }
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert("x-upstream", HeaderValue::from_static("stand-in"));
    for (name, value) in reply.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.insert(name, value);
        }
    }
    response
}
