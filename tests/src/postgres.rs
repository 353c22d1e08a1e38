//! A fresh, empty, real Postgres database for each test.
//!
//! [`TestDatabase::create`] makes a new database named `tollgate_t_<uuid>` and hands back a URL that `sqlx`
//! (and `libpq`, and so the `tollgate` binary) can connect to. Where the server comes from:
//!
//! - **`DATABASE_URL` is set** (CI, or a developer's own server): the database is created on that server. The
//!   URL must name a role allowed to `CREATE DATABASE`; the returned URL keeps its host, user and parameters
//!   and only replaces the database.
//! - **Otherwise**: a private throwaway cluster, started once per test process on first use and shared by all
//!   the tests in that process. It listens on a Unix socket only, in a private temporary directory, so it
//!   never collides with another server or another test process.
//!
//! Each database is dropped again when its [`TestDatabase`] is dropped. On a shared `DATABASE_URL` server a
//! database whose test failed (dropped while panicking) is kept, and its URL printed, for inspection.
//!
//! # The throwaway cluster's lifetime
//!
//! A value kept in a `static` is never dropped, so the cluster cannot be stopped by a destructor. Instead
//! postgres runs under a small `sh` watchdog whose standard input is a pipe; the only writer of that pipe is
//! this test process, which holds it (and never writes to it) until it exits. However the process ends —
//! returning from `main`, a panic, `SIGKILL` — the kernel closes that end, the watchdog's `read` sees end of
//! file, and it stops postgres (fast shutdown, then immediate shutdown if that takes over ten seconds) and
//! removes the temporary directory. The watchdog sits in a process group of its own, so the `SIGINT` of a
//! Ctrl-C reaches the test process but not the watchdog, which is then still there to clean up. Our end of the
//! pipe is close-on-exec, so processes the tests spawn (the `tollgate` binary) do not keep the cluster alive.
//!
//! `initdb` and `postgres` refuse to run as root; as root (containers, CI) they run as the `postgres` system
//! user through `setpriv`, and the temporary directory is handed to that user first.
//!
//! # A cluster a test may restart
//!
//! A test that restarts Postgres itself (`pg_ctl restart`) must not do so to a server other tests share.
//! [`RestartableCluster::start`] gives it a private cluster of its own, always, even when `DATABASE_URL`
//! is set: built from the same installed server binaries, listening on a Unix socket only in a private
//! temporary directory, and run by `pg_ctl` rather than by a watchdog's child (a restart replaces the
//! postmaster, which a watchdog waiting on its child could not follow). Dropping it stops the server
//! (immediate shutdown) and removes the directory. In case the test process dies without dropping it, a
//! watchdog on a lifeline pipe, as above, runs that same stop and removal when the process is gone.

use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use sqlx::{AssertSqlSafe, Connection as _, PgConnection, PgPool};
use tokio::sync::OnceCell;

/// One test's own database. Dropping it drops the database (see the module docs for the exception).
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
    /// The server's maintenance database, where `CREATE`/`DROP DATABASE` run.
    admin_url: String,
    /// Whether the server outlives this process (`DATABASE_URL`), so that a failed test's database is
    /// worth keeping.
    server_is_shared: bool,
}

impl TestDatabase {
    /// A new, empty database of its own for one test.
    ///
    /// Safe to call from many tests at once, on any tokio runtime. Fails with a message saying what to
    /// install when there is neither `DATABASE_URL` nor a local Postgres installation.
    pub async fn create() -> anyhow::Result<TestDatabase> {
        let server = Server::get().await?;
        let name = format!("tollgate_t_{}", uuid::Uuid::now_v7().simple());
        let mut admin = PgConnection::connect(&server.admin_url)
            .await
            .with_context(|| format!("connecting to the test Postgres at {}", server.admin_url))?;
        // template0 rather than the default template1: nobody can be connected to template0, and a
        // session connected to the template makes `CREATE DATABASE` fail.
        sqlx::query(AssertSqlSafe(format!(
            "CREATE DATABASE {name} TEMPLATE template0"
        )))
        .execute(&mut admin)
        .await
        .with_context(|| format!("creating test database {name} via {}", server.admin_url))?;
        // The database exists now; failing to say goodbye politely changes nothing.
        let _ = admin.close().await;
        Ok(TestDatabase {
            url: with_database(&server.admin_url, &name)?,
            name,
            admin_url: server.admin_url.clone(),
            server_is_shared: server.is_shared,
        })
    }

    /// A `postgres://` URL for this database that sqlx and libpq accept.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Where the server listens, for a fault relay in front of it: the TCP address of the URL's host and
    /// port, or the Unix socket its `host=/dir` names.
    pub fn server_target(&self) -> anyhow::Result<crate::faultrelay::Target> {
        let url = &self.url;
        let port = query_param(url, "port").unwrap_or_else(|| "5432".to_string());
        if let Some(dir) = query_param(url, "host").filter(|h| h.starts_with('/')) {
            return Ok(crate::faultrelay::Target::Unix(
                std::path::Path::new(&dir).join(format!(".s.PGSQL.{port}")),
            ));
        }
        let authority = url
            .split_once('@')
            .map(|(_, rest)| rest)
            .unwrap_or(url.trim_start_matches("postgres://"));
        let authority = authority.split(['/', '?']).next().unwrap_or_default();
        let authority = if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:{port}")
        };
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&authority)?
            .next()
            .ok_or_else(|| anyhow::anyhow!("{authority} does not resolve"))?;
        Ok(crate::faultrelay::Target::Tcp(addr))
    }

    /// A URL for this database through a relay listening on `relay` (plain TCP to 127.0.0.1).
    pub fn url_via(&self, relay: std::net::SocketAddr) -> String {
        let user = self
            .url
            .trim_start_matches("postgres://")
            .split_once('@')
            .map(|(user, _)| user.to_string())
            .unwrap_or_else(|| "postgres".to_string());
        format!("postgres://{user}@{relay}/{}?sslmode=disable", self.name)
    }

    /// The database's name (`tollgate_t_…`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A connection pool on this database, for a test's own queries.
    pub async fn pool(&self) -> anyhow::Result<PgPool> {
        PgPool::connect(&self.url)
            .await
            .with_context(|| format!("connecting to test database {}", self.url))
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if self.server_is_shared && std::thread::panicking() {
            eprintln!(
                "tollgate-tests: keeping the failed test's database for inspection: {}",
                self.url
            );
            return;
        }
        // Drop runs inside the test's runtime, where we may not block on that runtime's own futures; a
        // thread with a runtime of its own does the async work, and joining it makes sure the database is
        // gone before the test (possibly the process) ends.
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building a runtime to drop the database")?;
            runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(30), drop_database(&admin_url, &name))
                    .await
                    .context("timed out")?
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                eprintln!(
                    "tollgate-tests: could not drop test database {}: {error:#}",
                    self.name
                );
            }
            Err(_) => eprintln!(
                "tollgate-tests: dropping test database {} panicked",
                self.name
            ),
        }
    }
}

async fn drop_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let mut admin = PgConnection::connect(admin_url).await?;
    // FORCE: pools the test leaked would otherwise keep the database alive.
    sqlx::query(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await?;
    let _ = admin.close().await;
    Ok(())
}

/// Where test databases are created: the `DATABASE_URL` server or this process's throwaway cluster.
#[derive(Debug)]
struct Server {
    admin_url: String,
    is_shared: bool,
    /// Our end of the throwaway cluster's lifeline pipe (see the module docs); held, never written, and
    /// closed by the kernel when the process exits. `None` for a `DATABASE_URL` server.
    _lifeline: Option<ChildStdin>,
}

/// The outcome of the one attempt per process to find or start a server. A failure is kept too, so that
/// every test reports it at once instead of each retrying a slow, failing start.
static SERVER: OnceCell<Result<Server, String>> = OnceCell::const_new();

impl Server {
    async fn get() -> anyhow::Result<&'static Server> {
        let server = SERVER
            .get_or_init(|| async {
                match std::env::var("DATABASE_URL") {
                    Ok(url) if !url.trim().is_empty() => Ok(Server {
                        admin_url: url,
                        is_shared: true,
                        _lifeline: None,
                    }),
                    _ => start_cluster().await.map_err(|error| format!("{error:#}")),
                }
            })
            .await;
        server.as_ref().map_err(|error| anyhow!("{error}"))
    }
}

/// What a test run needs to start its own cluster.
const NO_POSTGRES: &str = "no Postgres for the tests: DATABASE_URL is not set and no Postgres server \
     binaries (initdb, postgres) were found via `pg_config --bindir`, in /usr/lib/postgresql/*/bin or on PATH. \
     Install the Debian package `postgresql` (apt-get install postgresql), or set DATABASE_URL to a server \
     where the user may CREATE DATABASE, e.g. postgres://postgres@127.0.0.1:5432/postgres";

/// The port only names the socket file (`.s.PGSQL.<port>`): the cluster has no TCP listener and its socket
/// directory is private, so the default port cannot collide with anything.
const CLUSTER_PORT: u16 = 5432;

/// How long a fresh cluster may take to accept connections.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// The watchdog (see the module docs). `$1` is the cluster's directory, the rest is the postgres command.
const WATCHDOG: &str = r#"set -u
dir=$1
shift
# fd 3: the read end of the lifeline pipe, whose only writer is the test process.
exec 3<&0 0</dev/null
"$@" >"$dir/postgres.log" 2>&1 &
pg=$!
{
    # Returns at end of file: the test process is gone, however it ended.
    while read -r _; do :; done
    kill -INT "$pg" 2>/dev/null
    n=0
    while kill -0 "$pg" 2>/dev/null; do
        if [ "$n" -ge 100 ]; then kill -QUIT "$pg" 2>/dev/null; break; fi
        sleep 0.1
        n=$((n + 1))
    done
} <&3 &
guard=$!
exec 3<&-
wait "$pg"
echo "$?" >"$dir/exited"
wait "$guard"
rm -rf "$dir"
"#;

/// The settings every private cluster runs with.
const CLUSTER_SETTINGS: &[(&str, &str)] = &[
    // No TCP listener: clients connect through the socket in the private directory.
    ("listen_addresses", ""),
    // Durability is worthless for a cluster that is deleted when the tests end.
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
    // Room for many tests' pools at once (sqlx pools default to 10 connections each).
    ("max_connections", "300"),
];

/// A private cluster's directory with its data directory initialized, not yet running. Dropping it (before
/// the directory is handed to something that cleans it up) removes the directory.
#[derive(Debug)]
struct NewCluster {
    /// Where `initdb`, `postgres` and `pg_ctl` are.
    bindir: PathBuf,
    /// The cluster's temporary directory: `data/`, `socket/` and `postgres.log`.
    dir: tempfile::TempDir,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    /// Whether the server programs must run as the `postgres` user (we are root).
    as_root: bool,
}

impl NewCluster {
    /// Makes the directory and runs `initdb` in it. `missing` is the error when no server binaries are
    /// installed; `needs` names further programs the caller will run from the same directory.
    async fn init(missing: &str, needs: &[&str]) -> anyhow::Result<NewCluster> {
        let bindir = find_server_binaries()
            .filter(|dir| needs.iter().all(|program| dir.join(program).is_file()))
            .ok_or_else(|| anyhow!("{missing}"))?;
        let dir = tempfile::Builder::new()
            .prefix("tollgate-pg-")
            .tempdir()
            .context("creating a directory for a private Postgres cluster")?;
        let root = dir.path();
        let data_dir = root.join("data");
        let socket_dir = root.join("socket");
        std::fs::create_dir(&socket_dir).context("creating the cluster's socket directory")?;

        let as_root = std::fs::metadata(root)
            .context("reading the cluster directory's owner")?
            .uid()
            == 0;
        if as_root {
            let mut chown = Command::new("chown");
            chown.arg("-R").arg("postgres:").arg(root);
            run_to_completion(
                chown,
                "handing the cluster directory to the `postgres` user (initdb and postgres refuse to run \
                 as root; the Debian package `postgresql` creates that user)",
            )
            .await?;
        }

        let mut initdb = server_command(as_root, &bindir.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data_dir)
            .args(["-A", "trust", "-U", "postgres", "--no-sync"])
            .args(["-E", "UTF8", "--locale=C"])
            .current_dir(root);
        run_to_completion(initdb, "initdb for a private Postgres cluster").await?;
        Ok(NewCluster {
            bindir,
            dir,
            data_dir,
            socket_dir,
            as_root,
        })
    }

    /// `program` from the server binaries, as the `postgres` user when we are root, in the cluster's
    /// directory (the `postgres` user may not be allowed into ours).
    fn command(&self, program: &str) -> Command {
        let mut command = server_command(self.as_root, &self.bindir.join(program));
        command.current_dir(self.dir.path());
        command
    }

    /// `pg_ctl <action> -D <data> -l <log> -w`, then `args`: waits (up to a minute) for the action to be
    /// done, and a (re)started server logs to the same `postgres.log` as the first start.
    fn pg_ctl(&self, action: &str, args: &[&str]) -> Command {
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl
            .arg(action)
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(self.dir.path().join("postgres.log"))
            .args(["-w", "-t", "60"])
            .args(args);
        pg_ctl
    }

    /// A URL for `database` on this cluster, through its socket.
    fn url(&self, database: &str) -> anyhow::Result<String> {
        let socket = self
            .socket_dir
            .to_str()
            .context("the temporary directory's path is not UTF-8")?;
        Ok(format!(
            "postgres://postgres@localhost/{database}?host={}&port={CLUSTER_PORT}",
            encode_query_value(socket)
        ))
    }
}

async fn start_cluster() -> anyhow::Result<Server> {
    let cluster = NewCluster::init(NO_POSTGRES, &[]).await?;
    let mut postgres = cluster.command("postgres");
    postgres
        .arg("-D")
        .arg(&cluster.data_dir)
        .arg("-k")
        .arg(&cluster.socket_dir)
        .args(["-p", &CLUSTER_PORT.to_string()]);
    for (name, value) in CLUSTER_SETTINGS {
        postgres.arg("-c").arg(format!("{name}={value}"));
    }
    let mut watchdog = Command::new("/bin/sh");
    watchdog
        .arg("-c")
        .arg(WATCHDOG)
        .arg("tollgate-pg-watchdog")
        .arg(cluster.dir.path())
        .arg(postgres.get_program())
        .args(postgres.get_args())
        .current_dir(cluster.dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Out of the terminal's foreground group: a Ctrl-C stops the tests, not the clean-up.
        .process_group(0);
    let mut child = watchdog
        .spawn()
        .context("starting the throwaway Postgres cluster's watchdog (/bin/sh)")?;
    let lifeline = child
        .stdin
        .take()
        .context("the watchdog's stdin pipe is missing")?;
    let admin_url = cluster.url("postgres")?;
    // From here on the watchdog owns the directory and removes it when this process exits.
    let root = cluster.dir.keep();
    wait_until_ready(&admin_url, &root).await?;
    Ok(Server {
        admin_url,
        is_shared: false,
        _lifeline: Some(lifeline),
    })
}

/// A private Postgres cluster that a test may restart under tollgate's feet (see the module docs): always
/// its own, never the `DATABASE_URL` server. Dropping it stops the server at once and removes its directory.
#[derive(Debug)]
pub struct RestartableCluster {
    /// Holds the directory, which is removed when this is dropped.
    cluster: NewCluster,
    /// The database `tollgate` on this cluster.
    url: String,
    /// The watchdog that stops and removes the cluster should this process die without dropping it; its
    /// stdin is our end of its lifeline pipe.
    watchdog: std::process::Child,
}

/// Why a [`RestartableCluster`] cannot be had. `DATABASE_URL` does not help: a test never restarts a shared
/// server.
const NO_RESTARTABLE_POSTGRES: &str = "no Postgres server binaries (initdb, postgres, pg_ctl) were found \
     via `pg_config --bindir`, in /usr/lib/postgresql/*/bin or on PATH; a test that restarts Postgres needs a \
     private cluster even when DATABASE_URL is set. Install the Debian package `postgresql` \
     (apt-get install postgresql)";

/// The restartable cluster's watchdog. `$1` is the cluster's directory, the rest the command that stops the
/// cluster at once. Unlike [`WATCHDOG`] it is not postgres's parent: `pg_ctl` starts (and restarts) the
/// server, so the watchdog stops it through `pg_ctl` too.
const STOP_WATCHDOG: &str = r#"set -u
dir=$1
shift
# Returns at end of file: the test process dropped the cluster or is gone, however it ended.
while read -r _; do :; done
"$@" >/dev/null 2>&1
rm -rf "$dir"
"#;

impl RestartableCluster {
    /// Initializes and starts a new private cluster with an empty database `tollgate` (see
    /// [`RestartableCluster::url`]); returns once it accepts connections.
    pub async fn start() -> anyhow::Result<RestartableCluster> {
        let cluster = NewCluster::init(NO_RESTARTABLE_POSTGRES, &["pg_ctl"]).await?;
        // The settings go into postgresql.conf rather than on postgres's command line, so that every
        // (re)start by `pg_ctl` reads the same ones.
        let socket_dir = cluster
            .socket_dir
            .to_str()
            .context("the temporary directory's path is not UTF-8")?;
        let port = CLUSTER_PORT.to_string();
        let mut settings =
            String::from("\n# tollgate-tests: a private cluster a test may restart\n");
        for (name, value) in [("unix_socket_directories", socket_dir), ("port", &port)]
            .into_iter()
            .chain(CLUSTER_SETTINGS.iter().copied())
        {
            // A quoted value may hold anything but a lone quote, which is doubled.
            let _ = writeln!(settings, "{name} = '{}'", value.replace('\'', "''"));
        }
        let config = cluster.data_dir.join("postgresql.conf");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&config)
            .and_then(|mut file| std::io::Write::write_all(&mut file, settings.as_bytes()))
            .with_context(|| format!("adding the test settings to {}", config.display()))?;

        // The watchdog comes first, so that the server is never running without it.
        let stop = cluster.pg_ctl("stop", &["-m", "immediate"]);
        let watchdog = Command::new("/bin/sh")
            .arg("-c")
            .arg(STOP_WATCHDOG)
            .arg("tollgate-pg-stop-watchdog")
            .arg(cluster.dir.path())
            .arg(stop.get_program())
            .args(stop.get_args())
            .current_dir(cluster.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Out of the terminal's foreground group: a Ctrl-C stops the tests, not the clean-up.
            .process_group(0)
            .spawn()
            .context("starting the restartable Postgres cluster's watchdog (/bin/sh)")?;
        let url = cluster.url("tollgate")?;
        let started = RestartableCluster {
            cluster,
            url,
            watchdog,
        };
        started
            .run_pg_ctl("start", &[], "starting the restartable Postgres cluster")
            .await?;
        let admin_url = started.cluster.url("postgres")?;
        wait_until_ready(&admin_url, started.cluster.dir.path()).await?;
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .with_context(|| format!("connecting to the restartable cluster at {admin_url}"))?;
        sqlx::query("CREATE DATABASE tollgate TEMPLATE template0")
            .execute(&mut admin)
            .await
            .context("creating the database `tollgate` on the restartable cluster")?;
        let _ = admin.close().await;
        Ok(started)
    }

    /// A `postgres://` URL for the cluster's database `tollgate`, through its Unix socket.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A connection pool on the cluster's database, for a test's own queries. Its connections die with a
    /// restart; take a new pool, or let the pool find them dead on their next use.
    pub async fn pool(&self) -> anyhow::Result<PgPool> {
        PgPool::connect(&self.url)
            .await
            .with_context(|| format!("connecting to the restartable cluster at {}", self.url))
    }

    /// Restarts the server (`pg_ctl restart -m fast`: every session is cut, the server shuts down cleanly
    /// and starts again) and returns once it accepts connections again.
    pub async fn restart(&self) -> anyhow::Result<()> {
        self.run_pg_ctl(
            "restart",
            &["-m", "fast"],
            "restarting the Postgres cluster",
        )
        .await?;
        wait_until_ready(&self.url, self.cluster.dir.path()).await
    }

    /// The server's log so far (every start, shutdown and cut session), for a failing test's message.
    pub fn log(&self) -> String {
        read_log(self.cluster.dir.path())
    }

    /// Runs `pg_ctl <action>` to completion; a failure carries the server's log.
    async fn run_pg_ctl(&self, action: &str, args: &[&str], what: &str) -> anyhow::Result<()> {
        run_to_completion(self.cluster.pg_ctl(action, args), what)
            .await
            .with_context(|| format!("the cluster's log:\n{}", self.log()))
    }
}

impl Drop for RestartableCluster {
    fn drop(&mut self) {
        // Immediate shutdown: nothing in the cluster is worth a checkpoint. Blocking is fine here: it takes
        // moments, and the test is over.
        match self
            .cluster
            .pg_ctl("stop", &["-m", "immediate"])
            .stdin(Stdio::null())
            .output()
        {
            Ok(output) if output.status.success() => {}
            Ok(output) => eprintln!(
                "tollgate-tests: stopping the restartable Postgres cluster failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
            Err(error) => {
                eprintln!("tollgate-tests: could not run pg_ctl to stop the cluster: {error}")
            }
        }
        // Closing the lifeline lets the watchdog finish: its own stop finds no server, and it removes the
        // directory (which the TempDir would otherwise remove right after this).
        drop(self.watchdog.stdin.take());
        let _ = self.watchdog.wait();
    }
}

/// `program`, run as the `postgres` user when we are root.
fn server_command(as_root: bool, program: &Path) -> Command {
    if as_root {
        let mut command = Command::new("setpriv");
        command
            .args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(program);
        command
    } else {
        Command::new(program)
    }
}

async fn run_to_completion(command: Command, what: &str) -> anyhow::Result<()> {
    let output = tokio::process::Command::from(command)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("{what}: could not run it"))?;
    if !output.status.success() {
        bail!(
            "{what}: {}\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

async fn wait_until_ready(admin_url: &str, root: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        // The watchdog writes `exited` when postgres stops, which during startup means it failed.
        if root.join("exited").exists() {
            bail!(
                "the private Postgres cluster stopped during startup; its log:\n{}",
                read_log(root)
            );
        }
        match PgConnection::connect(admin_url).await {
            Ok(connection) => {
                let _ = connection.close().await;
                return Ok(());
            }
            Err(error) if started.elapsed() > STARTUP_TIMEOUT => {
                bail!(
                    "the private Postgres cluster did not accept connections within {STARTUP_TIMEOUT:?} \
                     ({error}); its log:\n{}",
                    read_log(root)
                );
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn read_log(root: &Path) -> String {
    std::fs::read_to_string(root.join("postgres.log"))
        .unwrap_or_else(|error| format!("(could not read postgres.log: {error})"))
}

/// The directory holding `initdb` and `postgres`: `pg_config --bindir`, else the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian's layout), else wherever `initdb` on `PATH` really lives.
fn find_server_binaries() -> Option<PathBuf> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    // pg_config comes with libpq's development files, whose version may differ from the installed
    // server's, so its answer only counts when the server is really there.
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()));
    if let Some(dir) = from_pg_config.filter(|dir| has_server(dir)) {
        return Some(dir);
    }
    if let Some(dir) = newest_versioned_bindir(Path::new("/usr/lib/postgresql"), has_server) {
        return Some(dir);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter_map(|dir| std::fs::canonicalize(dir.join("initdb")).ok())
        .filter_map(|initdb| initdb.parent().map(Path::to_owned))
        .find(|dir| has_server(dir))
}

/// `<root>/<version>/bin` for the highest version (compared numerically: 9.6 < 10 < 15) that `usable`
/// accepts.
fn newest_versioned_bindir(root: &Path, usable: impl Fn(&Path) -> bool) -> Option<PathBuf> {
    std::fs::read_dir(root)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name();
            let version = name
                .to_str()?
                .split('.')
                .map(str::parse::<u32>)
                .collect::<Result<Vec<u32>, _>>()
                .ok()?;
            let bindir = entry.path().join("bin");
            usable(&bindir).then_some((version, bindir))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, bindir)| bindir)
}

/// `url` with its database replaced by `database`: scheme, user info, host, port and every query
/// parameter except `dbname` (which would override the path) are kept.
fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let authority_start = url
        .find("://")
        .map(|at| at + "://".len())
        .with_context(|| format!("not a URL (no `://`): {url}"))?;
    // The authority ends at the first `/`, `?` or `#`: none of them may appear in it unencoded.
    let authority_end = url[authority_start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |at| authority_start + at);
    let tail = &url[authority_end..];
    let tail = tail.split_once('#').map_or(tail, |(before, _)| before);
    let query = tail.split_once('?').map_or("", |(_, query)| query);

    let mut result = format!("{}/{database}", &url[..authority_end]);
    let mut separator = '?';
    for pair in query.split('&') {
        let key = pair.split_once('=').map_or(pair, |(key, _)| key);
        if pair.is_empty() || key == "dbname" {
            continue;
        }
        result.push(separator);
        result.push_str(pair);
        separator = '&';
    }
    Ok(result)
}

/// Percent-encodes a query parameter value, leaving unreserved characters and `/` (common in socket paths)
/// as they are.
fn encode_query_value(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    encoded
}

/// The value of `name=` in a URL's query string, percent-decoding only `%2F` (socket directories).
fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1.split('#').next()?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| v.replace("%2F", "/").replace("%2f", "/"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database_and_keeps_the_rest() {
        let check = |url: &str, expected: &str| {
            assert_eq!(
                with_database(url, "t1").expect("a URL"),
                expected,
                "for {url}"
            );
        };
        check(
            "postgres://postgres@127.0.0.1:5432/postgres",
            "postgres://postgres@127.0.0.1:5432/t1",
        );
        check(
            "postgres://u:p%2Fw@db:5433",
            "postgres://u:p%2Fw@db:5433/t1",
        );
        check(
            "postgresql://u@h/app?sslmode=disable&application_name=x",
            "postgresql://u@h/t1?sslmode=disable&application_name=x",
        );
        check(
            "postgres://u@h?dbname=app&sslmode=require",
            "postgres://u@h/t1?sslmode=require",
        );
        check(
            "postgres://postgres@localhost/postgres?host=/tmp/s&port=5432#frag",
            "postgres://postgres@localhost/t1?host=/tmp/s&port=5432",
        );
        check(
            "postgres:///app?host=/run/pg",
            "postgres:///t1?host=/run/pg",
        );
        assert!(with_database("not a url", "t1").is_err());
    }

    #[test]
    fn encodes_socket_paths_for_a_query() {
        assert_eq!(
            encode_query_value("/tmp/tollgate-pg-Ab1.x/socket"),
            "/tmp/tollgate-pg-Ab1.x/socket"
        );
        assert_eq!(encode_query_value("/a b&c=d"), "/a%20b%26c%3Dd");
    }

    #[test]
    fn picks_the_newest_numeric_version() {
        let root = tempfile::tempdir().expect("a temporary directory");
        for version in ["9.6", "10", "15", "16", "latest"] {
            std::fs::create_dir_all(root.path().join(version).join("bin")).expect("mkdir");
        }
        let usable_except_16 = |dir: &Path| !dir.starts_with(root.path().join("16"));
        assert_eq!(
            newest_versioned_bindir(root.path(), usable_except_16),
            Some(root.path().join("15").join("bin"))
        );
        assert_eq!(newest_versioned_bindir(root.path(), |_: &Path| false), None);
        assert_eq!(
            newest_versioned_bindir(&root.path().join("absent"), |_: &Path| true),
            None
        );
    }
}
