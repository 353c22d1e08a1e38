//! The command line: argument shapes (clap) and one function per subcommand.
//!
//! Owns: turning a command into calls on the library and its result into text or `--json` output and an
//! exit code. Agent keys are printed exactly once, by `agents create`; no other output contains a secret.
//! The reviewer and operator commands (`approvals`, `decisions`, `spend`, `agents`, `reviewers`, `freeze`,
//! `unfreeze`, `policy status|reload`, `whoami`) run either on the configured store (local mode) or, with
//! `--server`, through the admin API ([`crate::remote`]); both modes produce the admin API's JSON shapes
//! and one printing function per shape formats them, so the output is the same either way.
//! Must not: hold business rules; every subcommand calls the module that owns the behaviour. Must not read
//! the reviewer token from argv or print it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chrono::Utc;
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

use crate::config::{Config, ConfigSource};
use crate::policy::Bundle;
use crate::remote::{Remote, RemoteError};
use crate::store::{DecisionFilter, Store};

mod containment;
mod incident;
mod review;

use review::{
    agents, approvals, print_decisions, print_freeze, print_policy_status, print_spend,
    remote_decisions, reviewers, set_frozen, spend_command, text,
};

#[derive(Debug, Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Policy-gating reverse proxy for AI agents that provision cloud resources"
)]
pub struct Cli {
    /// Configuration file (tollgate.toml). Without it, ./tollgate.toml if present, else defaults.
    #[arg(long, global = true, env = "TOLLGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Run reviewer and operator commands (approvals, decisions, spend, agents, reviewers, freeze,
    /// unfreeze, policy status|reload, whoami) through this tollgate's admin API, e.g.
    /// https://tollgate.example.com:9090, instead of the local database: no database credentials needed.
    /// Commands marked "local only" refuse it.
    #[arg(long, global = true, env = "TOLLGATE_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// The environment variable that holds the reviewer token (tgr_…) for --server. The token itself is
    /// never an argument.
    #[arg(
        long,
        global = true,
        default_value = "TOLLGATE_TOKEN",
        value_name = "VAR"
    )]
    pub token_env: String,
    /// Allow --server http:// to a host that is not loopback (the token then crosses the network in
    /// plaintext).
    #[arg(long, global = true)]
    pub insecure_http: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy and admin listeners (local only).
    Serve {
        /// Apply database migrations before serving.
        #[arg(long)]
        migrate: bool,
    },
    /// Apply database migrations and exit (local only).
    Migrate,
    /// Validate the configuration and compile the policy bundle; exit 0 when both are good (local only).
    CheckConfig {
        /// Also fail on policy lint findings (Rego that OPA and regorus evaluate differently), which are
        /// otherwise printed as warnings.
        #[arg(long)]
        strict: bool,
    },
    /// Manage agent identities.
    #[command(subcommand)]
    Agents(AgentsCommand),
    /// Manage reviewer accounts: the people who use the admin API, each with a role and a token.
    #[command(subcommand)]
    Reviewers(ReviewersCommand),
    /// Work with policy bundles.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// List recent decisions, newest first; `decisions export` writes them with their inputs as JSON lines.
    #[command(args_conflicts_with_subcommands = true)]
    Decisions {
        #[command(subcommand)]
        command: Option<DecisionsCommand>,
        #[arg(long)]
        agent: Option<String>,
        /// Only this action, e.g. stripe.payment.create.
        #[arg(long)]
        action: Option<String>,
        /// Only this outcome.
        #[arg(long, value_enum)]
        outcome: Option<OutcomeArg>,
        /// Only decisions since this time: RFC 3339, a date (YYYY-MM-DD, midnight UTC), or a duration ago
        /// like 30s, 15m, 2h, 7d.
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Stop all agent traffic on every replica (`freeze status` shows the switch); `unfreeze` lifts it.
    #[command(args_conflicts_with_subcommands = true)]
    Freeze {
        #[command(subcommand)]
        command: Option<FreezeCommand>,
        /// Why; recorded with the freeze and shown by `freeze status`.
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Let agent traffic through again.
    Unfreeze {
        /// Why; recorded with the change.
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Who the admin API takes the --server token for (remote only).
    Whoami {
        #[arg(long)]
        json: bool,
    },
    /// Verify the decision log (local only).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Re-evaluate recorded decision inputs against a candidate bundle and show what would change (local
    /// only).
    Replay {
        /// The candidate policy directory.
        #[arg(long)]
        policies: PathBuf,
        /// Only decisions since this time: RFC 3339, or a duration ago like 7d, 12h.
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 100_000)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Review approvals: list, show, approve, deny.
    #[command(subcommand)]
    Approvals(ApprovalsCommand),
    /// Incidents: contain an agent (`incident contain`), what it did (`incident report`) and the plan that
    /// undoes it (`incident rollback-plan`, `--execute` to run it through the gate).
    #[command(subcommand)]
    Incident(incident::IncidentCommand),
    /// Spend per budget window (current month unless --period); `spend flagged` and `spend settle` for
    /// reservations whose upstream outcome is unknown.
    #[command(args_conflicts_with_subcommands = true)]
    Spend {
        #[command(subcommand)]
        command: Option<SpendCommand>,
        #[arg(long)]
        period: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

/// A decision's outcome as stored: what the policy said, or `refused` for a refusal before or beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutcomeArg {
    #[value(alias = "allowed")]
    Allow,
    #[value(alias = "denied")]
    Deny,
    /// Held for a human (approval required).
    #[value(alias = "approval_required")]
    Approve,
    /// Refused by tollgate itself (scope, budget, hygiene, freeze, …).
    Refused,
}

impl OutcomeArg {
    fn as_str(self) -> &'static str {
        match self {
            OutcomeArg::Allow => "allow",
            OutcomeArg::Deny => "deny",
            OutcomeArg::Approve => "approve",
            OutcomeArg::Refused => "refused",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum FreezeCommand {
    /// Whether agent traffic is frozen, since when, by whom and why.
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum DecisionsCommand {
    /// (Local only.) Every decision record (newest first) as one JSON object per line: the fields `decisions --json`
    /// shows, plus `policy_outcome` and the recorded (already redacted) policy `input`. For
    /// `tollgate policy diff --decisions FILE`.
    Export {
        /// Only decisions since this time: RFC 3339, a date (YYYY-MM-DD, midnight UTC), or a duration ago
        /// like 7d, 12h.
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        agent: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SpendCommand {
    /// Reservations whose upstream outcome is unknown (timeout, 5xx, broken exchange): still counted
    /// against their budget until someone settles them.
    Flagged {
        #[arg(long)]
        json: bool,
    },
    /// Settle a flagged reservation (ID is its decision id) once you know what the provider did.
    Settle {
        id: uuid::Uuid,
        /// The provider did act: the money counts as spent.
        #[arg(
            long,
            conflicts_with = "released",
            required_unless_present = "released"
        )]
        committed: bool,
        /// The provider did not act: the money goes back to the budget.
        #[arg(long)]
        released: bool,
        /// Why (what you checked at the provider); recorded with the settlement.
        #[arg(long)]
        note: String,
        /// Who is settling; recorded as `local:<by>` (defaults to $USER). Local mode only: with --server
        /// the server records the token's reviewer.
        #[arg(long)]
        by: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// List approvals, newest first.
    List {
        /// pending, approved, denied, consumed or expired.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show the full request under review: agent, run, on behalf of, method, path, query, headers, the
    /// body as recorded (redacted fields marked), charge, reasons, revision, and who decided.
    Show {
        id: uuid::Uuid,
        /// The approval as the API gives it, plus `requested_by`: the requesting decision with its input.
        #[arg(long)]
        json: bool,
    },
    /// Approve a pending approval: the agent may then retry the exact request once.
    Approve {
        id: uuid::Uuid,
        #[arg(long)]
        note: Option<String>,
        /// Who is approving; recorded as `local:<by>` (defaults to $USER). Local mode only: with --server
        /// the server records the token's reviewer.
        #[arg(long)]
        by: Option<String>,
    },
    /// Deny a pending approval.
    Deny {
        id: uuid::Uuid,
        /// Why (required): the agent's operator reads it.
        #[arg(long)]
        note: String,
        /// Who is denying; recorded as `local:<by>` (defaults to $USER). Local mode only.
        #[arg(long)]
        by: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// Create an agent and print its key (shown once).
    Create(CreateAgentArgs),
    /// List agents (never their keys).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke an agent's key; every replica refuses it within a second.
    Revoke { name: String },
}

#[derive(Debug, Subcommand)]
pub enum ReviewersCommand {
    /// Create a reviewer and print their token (shown once; `tgr_…`).
    Create {
        name: String,
        /// viewer (reads), approver (+ approve/deny), operator (+ freeze, reload, revoke agents, settle),
        /// admin (+ create agents and reviewers).
        #[arg(long)]
        role: String,
        /// Their email, if it is what agents send in Tollgate-On-Behalf-Of (separation of duties).
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List reviewers (never their tokens).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a reviewer; their token is refused by every replica from the next call.
    Revoke { name: String },
    /// Give a reviewer a new token (printed once); the old one stops working at once.
    Rotate {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct CreateAgentArgs {
    pub name: String,
    #[arg(long)]
    pub team: Option<String>,
    #[arg(long = "scope")]
    pub scopes: Vec<String>,
    /// k=v, repeatable.
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// RFC 3339 time or a duration like 30d, 12h.
    #[arg(long)]
    pub expires: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// (Local only.) Run the bundle's `test_*` rules (tests/*.rego, *_test.rego); exit 1 on any failure.
    Test {
        dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        /// Also list the uncovered lines of each policy file.
        #[arg(long)]
        coverage: bool,
    },
    /// (Local only.) Review a policy change: run both bundles' tests, judge their case tables and recorded decisions
    /// under both, and report every outcome transition, widenings first. Exit 0: no unreviewed widening;
    /// 1: unreviewed widenings or route catalog change (accept them in the candidate's
    /// reviewed_widenings.toml); 2: the candidate's tests fail, or a bundle, the reviewed list or the
    /// decisions cannot be read.
    Diff {
        /// The bundle as it is (e.g. the pull request's base checkout of policies/).
        base: PathBuf,
        /// The changed bundle.
        candidate: PathBuf,
        /// Recorded decisions from a file written by `tollgate decisions export`.
        #[arg(long, conflicts_with = "since")]
        decisions: Option<PathBuf>,
        /// Recorded decisions from the configured store, since this time (RFC 3339, YYYY-MM-DD, or 7d, 12h).
        #[arg(long)]
        since: Option<String>,
        /// text, markdown (a pull-request comment) or json.
        #[arg(long, default_value = "text", value_parser = ["text", "markdown", "json"])]
        format: String,
    },
    /// The live bundle's revision and the last reload's result (with --server); without it, the
    /// configured bundle loaded here.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Make the server reload its bundle now (needs --server; a server also reloads on file change and
    /// SIGHUP). Exit 1 when the reload failed (the old bundle stays live).
    Reload {
        #[arg(long)]
        json: bool,
    },
    /// (Local only.) Print the decision for one policy input (JSON file).
    Eval {
        #[arg(long)]
        input: PathBuf,
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Re-compute every writer's hash chain and hold it against its checkpoints and anchors.
    Verify {
        #[arg(long)]
        json: bool,
        /// An external anchor file to hold the chains against (default: `audit.anchor_file`); repeat it
        /// for replicas that anchor to files of their own.
        #[arg(long)]
        anchors: Vec<PathBuf>,
        /// Also fail on chains that no shutdown checkpoint closes (for a fleet that was shut down).
        #[arg(long)]
        strict: bool,
    },
    /// Append every existing chain's head to the anchor file (`audit.anchor_file`), once, when anchoring is
    /// turned on for a store that already has chains.
    AnchorExisting,
    /// Delete decision records (and their outcomes) older than a date, leaving a prune checkpoint per chain
    /// so the rest still verifies.
    Prune {
        /// RFC 3339 time or YYYY-MM-DD (midnight UTC); each chain is cut before its first record at or
        /// after it.
        #[arg(long)]
        before: String,
    },
}

/// `--before`: an RFC 3339 time, or a date meaning its midnight UTC.
fn parse_before(text: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let date = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
        anyhow::anyhow!("--before must be an RFC 3339 time or a date (YYYY-MM-DD), not {text:?}")
    })?;
    Ok(date.and_time(chrono::NaiveTime::MIN).and_utc())
}

/// Parses arguments and runs the command.
/// A reader that stops early (`tollgate … | head`) closes stdout, and the next print fails: the command
/// ends there quietly with 141 (what a shell reports for a writer ended by SIGPIPE), as command-line tools
/// do, instead of a panic and a backtrace. Every other panic goes to the default hook.
fn quiet_on_closed_stdout() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default_hook(info);
    }));
}

pub fn main() -> ExitCode {
    quiet_on_closed_stdout();
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    // One provider for every rustls user in the process (upstream client, Postgres TLS).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tollgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            match e.downcast_ref::<RemoteError>() {
                // The server's own words, with its code and status: `error: <message> (<code>, HTTP 403)`.
                // (Shown escaped: a server, or a value an agent chose that it quotes, may hold control bytes.)
                Some(remote) => eprintln!(
                    "error: {}",
                    crate::display::reveal(&remote.to_string(), true)
                ),
                None => eprintln!("tollgate: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let default = PathBuf::from("tollgate.toml");
    let file = match &cli.config {
        Some(p) => Some(p.clone()),
        None if default.exists() => Some(default),
        None => None,
    };
    Config::load(&ConfigSource::from_process(file.as_deref())).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Without a configured database, the embedded SQLite file `./tollgate.db`.
pub const EMBEDDED_DATABASE: &str = "sqlite:tollgate.db";

/// Opens the configured store. The embedded default is migrated on open, by every command, as `serve` does:
/// the first command on a fresh machine may well be `agents create`. A configured database is migrated
/// only by `tollgate migrate` (or `serve --migrate`), once per release.
async fn connect(config: &Config) -> anyhow::Result<Store> {
    let embedded = secrecy::SecretString::from(EMBEDDED_DATABASE);
    let url = config.database.url.as_ref().unwrap_or(&embedded);
    let store = Store::connect(url, config.database.max_connections)
        .await
        .context("cannot open the database")?;
    if config.database.url.is_none() {
        store
            .migrate()
            .await
            .context("cannot migrate the embedded database")?;
    }
    Ok(store)
}

/// The commands that only work on this machine's configuration and store: the admin API has nothing for
/// them (serving, migrating, checking and testing bundles, exporting inputs, the audit chain's checks).
fn local_only(command: &Command) -> Option<&'static str> {
    Some(match command {
        Command::Serve { .. } => "serve",
        Command::Migrate => "migrate",
        Command::CheckConfig { .. } => "check-config",
        Command::Policy(PolicyCommand::Test { .. }) => "policy test",
        Command::Policy(PolicyCommand::Eval { .. }) => "policy eval",
        Command::Policy(PolicyCommand::Diff { .. }) => "policy diff",
        Command::Decisions {
            command: Some(DecisionsCommand::Export { .. }),
            ..
        } => "decisions export",
        Command::Replay { .. } => "replay",
        Command::Audit(_) => "audit",
        _ => return None,
    })
}

/// With `--server`, the admin API client (the URL checked and the token read, before any connection).
fn remote(cli: &Cli) -> anyhow::Result<Option<Remote>> {
    match &cli.server {
        Some(server) => Ok(Some(Remote::from_env(
            server,
            &cli.token_env,
            cli.insecure_http,
        )?)),
        None => Ok(None),
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if cli.server.is_some()
        && let Some(name) = local_only(&cli.command)
    {
        anyhow::bail!(
            "`tollgate {name}` works on the local configuration and database only; the admin API has no \
             equivalent. Run it without --server (and without TOLLGATE_SERVER in the environment)"
        );
    }
    match &cli.command {
        Command::CheckConfig { strict } => Ok(check_config(&cli, *strict)),
        Command::Serve { migrate } => serve(&cli, *migrate).await,
        Command::Migrate => {
            let store = connect(&load_config(&cli)?).await?;
            store.migrate().await?;
            println!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Agents(cmd) => agents(&cli, cmd).await,
        Command::Incident(cmd) => incident::incident(&cli, cmd).await,
        Command::Reviewers(cmd) => reviewers(&cli, cmd).await,
        Command::Policy(PolicyCommand::Test {
            dir,
            json,
            coverage,
        }) => {
            let dir = match dir {
                Some(d) => d.clone(),
                None => load_config(&cli)?.policy.dir,
            };
            let report = crate::policy::run_tests(&dir)?;
            let failed = report.tests.len() - report.passed();
            let lint = crate::policy_lint::lint_dir(&dir).map_err(anyhow::Error::msg)?;
            if *json {
                let mut value = serde_json::to_value(&report)?;
                if let Some(map) = value.as_object_mut() {
                    map.insert("lint".to_string(), serde_json::to_value(&lint)?);
                }
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                for finding in &lint {
                    eprintln!("warning: {finding}");
                }
                for t in &report.tests {
                    match &t.detail {
                        None => println!("PASS  {}", t.name),
                        Some(d) => println!("FAIL  {}  ({d})", t.name),
                    }
                }
                if *coverage {
                    for (path, covered, total, missing) in &report.files {
                        println!(
                            "coverage {path}: {covered}/{total} lines; not covered: {missing:?}"
                        );
                    }
                }
                println!(
                    "{} tests, {} passed, {} failed; coverage {:.1}% ({}/{} lines), revision {}",
                    report.tests.len(),
                    report.passed(),
                    failed,
                    report.coverage_percent(),
                    report.covered_lines,
                    report.coverable_lines,
                    report.revision
                );
            }
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Policy(PolicyCommand::Eval { input, dir }) => {
            let dir = match dir {
                Some(d) => d.clone(),
                None => load_config(&cli)?.policy.dir,
            };
            let bundle = Bundle::load(&dir, std::time::Duration::from_secs(5))?;
            let text = std::fs::read_to_string(input)
                .with_context(|| format!("reading {}", input.display()))?;
            let value: Value = serde_json::from_str(&text).context("the input is not JSON")?;
            // A recorded decision (from the admin API) carries its input under "input".
            let value = match value.get("input") {
                Some(inner) if inner.is_object() => inner.clone(),
                _ => value,
            };
            let decision = bundle.evaluate(&value)?;
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &json!({"revision": bundle.revision(), "decision": decision})
                )?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy(PolicyCommand::Diff {
            base,
            candidate,
            decisions,
            since,
            format,
        }) => Ok(
            match policy_diff(
                &cli,
                base,
                candidate,
                decisions.as_deref(),
                since.as_deref(),
                format,
            )
            .await
            {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("tollgate: policy diff: {e:#}");
                    ExitCode::from(2)
                }
            },
        ),
        Command::Decisions {
            command: Some(DecisionsCommand::Export { since, agent }),
            ..
        } => {
            let store = connect(&load_config(&cli)?).await?;
            let since = since.as_deref().map(parse_since).transpose()?;
            use std::io::Write as _;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let mut failed = None;
            let n = each_record(&store, since, agent.clone(), |record| {
                if failed.is_none()
                    && let Err(e) = writeln!(out, "{record}")
                {
                    failed = Some(e);
                }
            })
            .await?;
            if let Some(e) = failed {
                anyhow::bail!("writing the export: {e}");
            }
            out.flush()?;
            eprintln!("exported {n} decision(s)");
            Ok(ExitCode::SUCCESS)
        }
        Command::Decisions {
            command: None,
            agent,
            action,
            outcome,
            since,
            limit,
            json,
        } => {
            let filter = DecisionFilter {
                agent: agent.clone(),
                action: action.clone(),
                outcome: outcome.map(|o| o.as_str().to_string()),
                since: since.as_deref().map(parse_since).transpose()?,
                limit: (*limit).clamp(1, 10_000),
                ..DecisionFilter::default()
            };
            let items = match remote(&cli)? {
                Some(r) => remote_decisions(&r, filter).await?,
                None => {
                    let store = connect(&load_config(&cli)?).await?;
                    store
                        .list_decisions(&filter)
                        .await?
                        .iter()
                        .map(|(d, o)| crate::admin::decision_json(d, o.as_ref(), false))
                        .collect()
                }
            };
            print_decisions(&items, *json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Freeze {
            command: Some(FreezeCommand::Status { json }),
            ..
        } => {
            let state = match remote(&cli)? {
                Some(r) => r.get("/api/freeze").await?,
                None => {
                    let store = connect(&load_config(&cli)?).await?;
                    serde_json::to_value(store.freeze_state().await?)?
                }
            };
            print_freeze(&state, *json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Freeze {
            command: None,
            reason,
            json,
        } => set_frozen(&cli, true, reason.as_deref(), *json).await,
        Command::Unfreeze { reason, json } => {
            set_frozen(&cli, false, reason.as_deref(), *json).await
        }
        Command::Whoami { json } => {
            let Some(r) = remote(&cli)? else {
                anyhow::bail!(
                    "whoami asks the admin API who a token is: give --server URL (and the token in $TOLLGATE_TOKEN \
                     or the variable --token-env names)"
                );
            };
            let me = r.get("/api/whoami").await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&me)?);
            } else {
                println!(
                    "{} (role {}{}) at {}",
                    text(&me, "name"),
                    text(&me, "role"),
                    if me["bootstrap"] == true {
                        ", the bootstrap admin token"
                    } else {
                        ""
                    },
                    r.server()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy(PolicyCommand::Status { json }) => {
            let status = match remote(&cli)? {
                Some(r) => r.get("/api/policy").await?,
                None => {
                    let config = load_config(&cli)?;
                    let handle = crate::app::load_policy(&config).map_err(anyhow::Error::msg)?;
                    crate::admin::policy_json(&handle)
                }
            };
            print_policy_status(&status, *json, cli.server.is_some())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy(PolicyCommand::Reload { json }) => {
            let Some(r) = remote(&cli)? else {
                anyhow::bail!(
                    "policy reload acts on a running server: give --server URL, or send the server SIGHUP (it also \
                     reloads by itself when a policy file changes)"
                );
            };
            let (ok, status) = match r.post("/api/policy/reload", None).await {
                Ok(status) => (true, status),
                // 422: the new bundle failed; the answer names the error and the old bundle stays live.
                Err(RemoteError::Refused { status: 422, .. }) => {
                    (false, r.get("/api/policy").await?)
                }
                Err(e) => return Err(e.into()),
            };
            if !ok && !*json {
                eprintln!("error: the reload failed; the bundle that was live stays live");
            }
            print_policy_status(&status, *json, true)?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Approvals(cmd) => approvals(&cli, cmd).await,
        Command::Replay {
            policies,
            since,
            limit,
            json,
        } => replay(&cli, policies, since.as_deref(), *limit, *json).await,
        Command::Spend {
            command: Some(command),
            ..
        } => spend_command(&cli, command).await,
        Command::Spend {
            command: None,
            period,
            json,
        } => {
            let spend = match remote(&cli)? {
                Some(r) => {
                    let q = crate::remote::query(&[("period", period.clone())]);
                    r.get(&format!("/api/spend{q}")).await?
                }
                None => {
                    let store = connect(&load_config(&cli)?).await?;
                    let period = period
                        .clone()
                        .unwrap_or_else(|| crate::ledger::period(Utc::now()));
                    let rows = store.spend(&period).await?;
                    json!({"period": period, "windows": rows})
                }
            };
            print_spend(&spend, *json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(AuditCommand::Verify {
            json,
            anchors,
            strict,
        }) => {
            let config = load_config(&cli)?;
            let store = connect(&config).await?;
            let anchor_paths: Vec<PathBuf> = if anchors.is_empty() {
                config.audit.anchor_file.iter().cloned().collect()
            } else {
                anchors.clone()
            };
            let anchored = if anchor_paths.is_empty() {
                None
            } else {
                let mut all = Vec::new();
                for path in &anchor_paths {
                    all.extend(crate::audit::Anchors::read(path).map_err(anyhow::Error::msg)?);
                }
                Some(all)
            };
            let anchor_path = (!anchor_paths.is_empty()).then(|| {
                anchor_paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            });
            let reports = crate::audit::verify(&store, anchored.as_deref()).await?;
            use crate::audit::ChainStatus;
            let count = |status: ChainStatus| reports.iter().filter(|r| r.status == status).count();
            let (broken, open) = (count(ChainStatus::Broken), count(ChainStatus::Open));
            if *json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            } else {
                for r in &reports {
                    let span = match (r.first_seq, r.last_seq) {
                        (Some(a), Some(b)) => format!("seq {a}..{b}"),
                        _ => "no records".to_string(),
                    };
                    let status = match r.status {
                        ChainStatus::Closed => "intact, closed by its shutdown checkpoint",
                        ChainStatus::Open => "intact, open",
                        ChainStatus::Broken => "BROKEN",
                    };
                    println!(
                        "writer {}: {} records ({span}), {status}",
                        r.writer_id, r.records
                    );
                    for p in &r.problems {
                        println!("  problem: {p}");
                    }
                    for n in &r.notes {
                        println!("  note: {n}");
                    }
                }
                if anchor_path.is_none() {
                    println!(
                        "note: no anchor file (audit.anchor_file or --anchors): a chain dropped together with its checkpoints, or a forged prune checkpoint, cannot be told from none"
                    );
                }
                println!(
                    "{} writer(s): {} broken, {} open{}",
                    reports.len(),
                    broken,
                    open,
                    match &anchor_path {
                        Some(p) => format!(", anchors from {p}"),
                        None => ", no anchor file".to_string(),
                    }
                );
            }
            Ok(if broken == 0 && (!*strict || open == 0) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Audit(AuditCommand::AnchorExisting) => {
            let config = load_config(&cli)?;
            let Some(path) = config.audit.anchor_file.clone() else {
                anyhow::bail!("audit.anchor_file is not set: there is no anchor file to write");
            };
            let store = connect(&config).await?;
            let anchored =
                crate::audit::anchor_existing(&store, &crate::audit::Anchors::file(path.clone()))
                    .await?;
            for a in &anchored {
                println!("writer {}: anchored at seq {}", a.writer_id, a.seq);
            }
            println!("{} chain(s) anchored in {}", anchored.len(), path.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(AuditCommand::Prune { before }) => {
            let config = load_config(&cli)?;
            let before = parse_before(before)?;
            // Cut to the microseconds both stores keep, so the anchored checkpoint equals the stored one.
            let now = chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 6);
            if before > now {
                anyhow::bail!(
                    "--before is in the future; records not yet written cannot be pruned"
                );
            }
            let store = connect(&config).await?;
            let note = format!(
                "audit prune --before {}",
                before.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
            let cuts = store.prune_decisions(before, now, &note).await?;
            let anchors = config
                .audit
                .anchor_file
                .clone()
                .map(crate::audit::Anchors::file)
                .unwrap_or_default();
            let mut total = 0;
            for (checkpoint, deleted) in &cuts {
                total += deleted;
                anchors.append(checkpoint).await.map_err(|e| {
                    anyhow::anyhow!(
                        "pruned, but the prune checkpoint was not written to the anchor file: {e}"
                    )
                })?;
                println!(
                    "writer {}: {deleted} records removed; the chain now goes on from seq {} (hash {})",
                    checkpoint.writer_id, checkpoint.seq, checkpoint.hash
                );
            }
            println!("{total} records pruned from {} chain(s)", cuts.len());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn check_config(cli: &Cli, strict: bool) -> ExitCode {
    let mut problems = Vec::new();
    let config = match load_config(cli) {
        Ok(c) => Some(c),
        Err(e) => {
            problems.push(e.to_string());
            None
        }
    };
    if let Some(config) = &config {
        if let Err(e) = config.check_serveable() {
            problems.extend(e.0);
        }
        if let Err(errors) = crate::vault::Vault::from_config(&config.vault) {
            problems.extend(errors);
        }
        match crate::app::load_policy(config) {
            Ok(handle) => {
                let live = handle.current();
                println!(
                    "policy bundle {} (revision {}, {}), {} catalog actions{}",
                    config.policy.dir.display(),
                    live.bundle.revision(),
                    if live.bundle.uses_bytecode() {
                        "bytecode VM"
                    } else {
                        "interpreter"
                    },
                    live.catalog.action_names().len(),
                    live.shadow
                        .as_ref()
                        .map(|s| format!(", shadow revision {}", s.revision()))
                        .unwrap_or_default()
                )
            }
            Err(e) => problems.push(e),
        }
        match crate::policy_lint::lint_dir(&config.policy.dir) {
            Ok(findings) if strict => problems.extend(
                findings
                    .iter()
                    .map(|f| format!("policy lint (--strict): {f}")),
            ),
            Ok(findings) => {
                for f in findings {
                    eprintln!("warning: policy lint: {f}");
                }
            }
            Err(e) => problems.push(format!("policy lint: {e}")),
        }
    }
    if problems.is_empty() {
        println!("configuration OK");
        ExitCode::SUCCESS
    } else {
        for p in problems {
            eprintln!("error: {}", p.trim_end());
        }
        ExitCode::FAILURE
    }
}

async fn serve(cli: &Cli, migrate: bool) -> anyhow::Result<ExitCode> {
    let config = load_config(cli)?;
    // A provider without its credential is refused per request (fail closed), not at start, so a newcomer
    // can try tollgate before holding real provider keys; check-config reports it as an error.
    if let Err(e) = config.check_serveable() {
        for problem in &e.0 {
            eprintln!("warning: {problem}; requests to that provider will be refused");
        }
    }
    let store = connect(&config).await?;
    if store.is_embedded() {
        store.lock_for_serving()?;
    }
    // Vault mode (the default) keeps minted tokens' secrets sealed under its key: without a usable key it
    // would have to hand agents the secrets, so it does not start.
    if let Err(errors) = crate::vault::Vault::from_config(&config.vault) {
        anyhow::bail!("{}", errors.join("\n"));
    }
    // The embedded file is created and migrated on start; Postgres is migrated on request (a deploy step).
    if migrate || config.database.migrate_on_start || store.is_embedded() {
        store.migrate().await?;
    }
    let embedded = store.is_embedded();
    let mut running = crate::app::start(config, store).await?;
    println!(
        "tollgate listening for agents on http://{}",
        running.proxy_addr
    );
    println!(
        "admin API, /metrics and /readyz on http://{}",
        running.admin_addr
    );
    if embedded {
        println!(
            "store: embedded SQLite file ./tollgate.db (single node; set DATABASE_URL=postgres://… for replicas)"
        );
    }
    println!(
        "create an agent key: tollgate agents create my-agent --scope dns:write   (the key is shown once)"
    );
    tracing::info!(proxy = %running.proxy_addr, admin = %running.admin_addr, "tollgate started");
    tokio::select! {
        r = running.wait() => {
            r?;
        }
        _ = shutdown_signal() => {
            tracing::info!("shutting down: finishing in-flight requests");
            running.shutdown().await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Who runs this CLI, for the admin action record: `local:<$USER>`. The local CLI writes the store directly
/// (whoever can run it holds the database credentials), so it authenticates nobody: the `local:` prefix keeps
/// what it records apart from the authenticated reviewers of the admin API (reviewer names cannot contain
/// `:`).
fn operator() -> String {
    local_actor(&None)
}

/// `local:<by>`, `--by` defaulting to `$USER`.
fn local_actor(by: &Option<String>) -> String {
    let who = by
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "cli".to_string());
    crate::reviewers::Reviewer::local(who.trim()).name
}

/// `--since`: an RFC 3339 time, a date (its midnight UTC), or a duration before now (`30s`, `15m`, `12h`,
/// `7d`).
fn parse_since(text: &str) -> anyhow::Result<chrono::DateTime<Utc>> {
    crate::console::parse_when(text, Utc::now()).ok_or_else(|| {
        anyhow::anyhow!(
            "'{text}' is neither RFC 3339, a date (YYYY-MM-DD) nor a duration like 30s, 15m, 2h, 7d"
        )
    })
}

async fn replay(
    cli: &Cli,
    dir: &std::path::Path,
    since: Option<&str>,
    limit: i64,
    json_out: bool,
) -> anyhow::Result<ExitCode> {
    let store = connect(&load_config(cli)?).await?;
    let candidate = Bundle::load(dir, std::time::Duration::from_secs(5))?;
    let since = since.map(parse_since).transpose()?;
    let rows = store
        .replayable_decisions(since, limit.clamp(1, 10_000_000))
        .await?;
    let mut transitions: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    let mut changed = Vec::new();
    for row in &rows {
        let input: Value = match serde_json::from_str(&row.input) {
            Ok(v) => v,
            Err(_) => continue,
        };
        let (now, rule) = match candidate.evaluate(&input) {
            Ok(d) => {
                let name = match d.outcome {
                    crate::policy::Outcome::Allow => "allow",
                    crate::policy::Outcome::Deny => "deny",
                    crate::policy::Outcome::Approve => "approve",
                };
                (name.to_string(), d.reasons.first().map(|r| r.rule.clone()))
            }
            Err(_) => ("error".to_string(), None),
        };
        if now != row.policy_outcome {
            *transitions
                .entry((row.action.clone(), row.policy_outcome.clone(), now.clone()))
                .or_default() += 1;
            changed.push(json!({
                "id": row.id, "at": row.at, "agent": row.agent_name, "action": row.action,
                "was": row.policy_outcome, "now": now, "rule": rule,
            }));
        }
    }
    if json_out {
        let summary: Vec<Value> = transitions
            .iter()
            .map(|((action, was, now), n)| json!({"action": action, "was": was, "now": now, "count": n}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "candidate_revision": candidate.revision(), "replayed": rows.len(),
                "changed": changed.len(), "transitions": summary, "rows": changed,
            }))?
        );
    } else {
        println!(
            "replayed {} decisions against revision {}: {} would change",
            rows.len(),
            candidate.revision(),
            changed.len()
        );
        for ((action, was, now), n) in &transitions {
            println!("  {n:>6}  {action:<36} {was} -> {now}");
        }
        for c in &changed {
            println!(
                "{}  {}  {:<12} {:<36} {} -> {}  {}",
                c["at"].as_str().unwrap_or_default(),
                c["id"].as_str().unwrap_or_default(),
                c["agent"].as_str().unwrap_or("-"),
                c["action"].as_str().unwrap_or_default(),
                c["was"].as_str().unwrap_or_default(),
                c["now"].as_str().unwrap_or_default(),
                c["rule"].as_str().unwrap_or_default()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One decision record as `decisions export` writes it: what `decisions --json` shows, plus the policy's own
/// outcome and the recorded input (redacted and bounded when it was stored; nothing here adds a secret).
fn export_record(d: &crate::store::DecisionRow, o: Option<&crate::store::OutcomeRow>) -> Value {
    let mut v = crate::admin::decision_json(d, o, false);
    v["policy_outcome"] = json!(d.policy_outcome);
    v["input"] = d
        .input
        .as_deref()
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or(Value::Null);
    v
}

/// Calls `f` with every decision record since `since` (of `agent`), newest first, a page at a time; returns
/// how many there were.
async fn each_record(
    store: &Store,
    since: Option<chrono::DateTime<Utc>>,
    agent: Option<String>,
    mut f: impl FnMut(Value),
) -> anyhow::Result<usize> {
    const PAGE: i64 = 1000;
    let mut filter = DecisionFilter {
        agent,
        since,
        limit: PAGE,
        ..DecisionFilter::default()
    };
    let mut n = 0;
    loop {
        let rows = store.list_decisions(&filter).await?;
        for (d, o) in &rows {
            f(export_record(d, o.as_ref()));
        }
        n += rows.len();
        match rows.last() {
            Some((d, _)) if rows.len() as i64 == PAGE => filter.before = Some((d.at, d.id)),
            _ => return Ok(n),
        }
    }
}

/// `tollgate policy diff`: see `policy_diff`. Errors (a bundle that does not compile, an unreadable reviewed
/// list or decisions file) are exit status 2, as `cli::run`'s caller prints them.
async fn policy_diff(
    cli: &Cli,
    base_dir: &std::path::Path,
    candidate_dir: &std::path::Path,
    decisions: Option<&std::path::Path>,
    since: Option<&str>,
    format: &str,
) -> anyhow::Result<ExitCode> {
    use crate::policy_diff::{Differ, load_both, read_reviewed, reviewed_path, summaries};
    // Read everything that can fail on input first: an unreadable reviewed list accepts nothing.
    // An entry the base's list already has was accepted for an earlier change: it accepts nothing here, so
    // a list left behind after a merge cannot wave through the next change's widening.
    let earlier = read_reviewed(base_dir).context("the base's reviewed list")?;
    let mine = read_reviewed(candidate_dir)?;
    let (inherited, reviewed): (Vec<_>, Vec<_>) = mine
        .widening
        .into_iter()
        .partition(|entry| earlier.widening.contains(entry));
    let catalog_review = mine.catalog.filter(|c| earlier.catalog.as_ref() != Some(c));
    let (base, candidate) = tokio::task::block_in_place(|| load_both(base_dir, candidate_dir))?;
    let mut differ = Differ::new(&base.bundle, &candidate.bundle);
    tokio::task::block_in_place(|| differ.add_cases(&base, &candidate));
    let mut from = None;
    if let Some(path) = decisions {
        use std::io::BufRead as _;
        let file =
            std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
        for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.with_context(|| format!("reading {}", path.display()))?;
            if line.trim().is_empty() {
                continue;
            }
            let record: Value = serde_json::from_str(&line).with_context(|| {
                format!(
                    "{} line {}: not a JSON decision record",
                    path.display(),
                    i + 1
                )
            })?;
            tokio::task::block_in_place(|| differ.add_record(&record));
        }
        from = Some(path.display().to_string());
    } else if let Some(since) = since {
        let config = load_config(cli)?;
        if config.database.url.is_none() && !std::path::Path::new("tollgate.db").exists() {
            anyhow::bail!(
                "--since reads the configured store, and none is configured (no [database] url, no ./tollgate.db); \
                 use --decisions FILE from `tollgate decisions export`"
            );
        }
        let store = connect(&config).await?;
        let since = parse_since(since)?;
        each_record(&store, Some(since), None, |record| {
            tokio::task::block_in_place(|| differ.add_record(&record))
        })
        .await?;
        from = Some("the store".to_string());
    }
    let (b, c) = summaries(base_dir, &base, candidate_dir, &candidate);
    let mut report = differ.finish(
        b,
        c,
        from,
        &reviewed,
        reviewed_path(candidate_dir).map(|p| p.display().to_string()),
    );
    report.reviewed_inherited = inherited;
    report.apply_catalog(
        crate::policy_diff::catalogs_differ(base_dir, candidate_dir),
        catalog_review.as_ref(),
    );
    match format {
        "json" => println!("{}", serde_json::to_string_pretty(&report.json())?),
        "markdown" => print!("{}", report.markdown()),
        _ => print!("{}", report.text()),
    }
    Ok(ExitCode::from(report.exit_code))
}
