//! The policy engine: loading a Rego bundle, building the policy input, evaluating `data.tollgate.decision`,
//! and parsing what comes back into a [`Decision`].
//!
//! Owns: the bundle on disk, laid out as OPA loads it (`*.rego` outside `tests/`; data only in files named
//! `data.json`/`data.yaml`, at `data.<directory path>`, see [`kind_of`]), its revision (a hash of
//! every file that shapes a decision, catalog included), compilation to regorus's bytecode VM with the
//! tree-walking interpreter as fallback, the warm-up evaluation that catches unknown builtins at load, and
//! the strict reading of the output: anything but a well-formed decision is an error, which callers refuse
//! as `policy_unavailable` — never an allow.
//! Must not: see hyper types, SQL or metrics. Evaluation is synchronous and CPU-bound, and regorus's time
//! limits are cooperative: async callers use [`Bundle::evaluate_inline`] (a short budget on the calling
//! thread) and fall back to [`Bundle::evaluate`] on a blocking pool.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::program::Program;
use regorus::rvm::vm::{RegoVM, VmError};
use regorus::utils::limits::ExecutionTimerConfig;
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::classify::{Action, Catalog};
use crate::identity::Agent;
use crate::redact::Redactor;

/// The rule every bundle must define.
pub const ENTRYPOINT: &str = "data.tollgate.decision";
/// A generous bound on VM instructions: the bundled library runs a few thousand.
const MAX_INSTRUCTIONS: usize = 5_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Allow,
    Deny,
    /// A human must approve this exact request first.
    Approve,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
            Outcome::Approve => "approve",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reason {
    pub rule: String,
    pub message: String,
}

/// Money the policy says this request will spend, against which budget and cap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Charge {
    pub cents: i64,
    pub budget: String,
    pub cap_cents: i64,
}

/// The policy's verdict on one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub outcome: Outcome,
    pub reasons: Vec<Reason>,
    pub charge: Option<Charge>,
    /// For `approve`: how long the request may be held open waiting for a reviewer.
    pub hold_seconds: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy bundle: {}", .0.join("; "))]
    Load(Vec<String>),
    #[error("policy evaluation failed: {0}")]
    Eval(String),
    #[error("policy returned a malformed decision: {0}")]
    Shape(String),
    /// Not an answer: the inline evaluation ran out of its budget and must be redone on a blocking pool.
    #[error("policy evaluation did not finish within the inline budget")]
    OverBudget,
}

/// What the proxy knows about the request, in plain types (no hyper).
#[derive(Debug, Clone, Serialize)]
pub struct RequestFacts {
    pub provider: String,
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, Vec<String>>,
    /// Lower-case names; secrets already removed by the caller (see `SECRET_HEADERS` in `proxy`).
    pub headers: BTreeMap<String, String>,
    pub body: Value,
    pub body_sha256: String,
}

/// Who is calling and for whom.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunFacts {
    pub id: Option<String>,
    pub on_behalf_of: Option<String>,
}

/// A loaded, compiled, warmed-up policy bundle. Immutable; a reload builds a new one.
pub struct Bundle {
    /// Distinguishes bundles in the per-thread VM cache.
    serial: u64,
    revision: String,
    loaded_at: DateTime<Utc>,
    dir: PathBuf,
    engine: regorus::Engine,
    program: Option<Arc<Program>>,
    data: regorus::Value,
    timeout: Duration,
    /// What records keep of a request judged by this bundle, from its `data.secrets`.
    redactor: Redactor,
}

/// What requests are judged with: the bundle, the route catalog that came with it, and an optional shadow
/// bundle evaluated beside it but never enforced. Swapped as a whole.
pub struct Live {
    pub bundle: Bundle,
    pub catalog: Catalog,
    pub shadow: Option<Bundle>,
}

/// Where the live policy comes from and how the last reload went.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadStatus {
    pub last_attempt: Option<DateTime<Utc>>,
    /// The last failed reload's error; cleared by a successful one.
    pub last_error: Option<String>,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
}

/// The live policy, swappable as a whole; in-flight evaluations keep the `Arc` they started with.
pub struct PolicyHandle {
    current: RwLock<Arc<Live>>,
    status: RwLock<ReloadStatus>,
    dir: PathBuf,
    shadow_dir: Option<PathBuf>,
    timeout: Duration,
}

static BUNDLE_SERIAL: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// One VM per thread (async workers and blocking-pool threads), reused while the bundle stays the same.
    static VM: RefCell<Option<(u64, RegoVM)>> = const { RefCell::new(None) };
}

impl Bundle {
    /// Loads every policy and data file under `dir`, compiles, warms up, and runs the bundle's own tests
    /// (interpreter tests, and its case tables on the engine that will serve). `timeout` bounds one
    /// evaluation. Only a bundle that passes all of it is returned.
    pub fn load(dir: &Path, timeout: Duration) -> Result<Bundle, PolicyError> {
        let (bundle, has_tests) = Bundle::compile(dir, timeout)?;
        // A bundle whose own tests fail is never swapped in.
        if has_tests {
            let report = run_tests_on(dir, &bundle)?;
            let failed: Vec<String> = report
                .tests
                .iter()
                .filter(|t| !t.passed)
                .map(|t| t.name.clone())
                .collect();
            if !failed.is_empty() {
                return Err(PolicyError::Load(vec![format!(
                    "{} of {} policy tests fail: {}",
                    failed.len(),
                    report.tests.len(),
                    failed.join(", ")
                )]));
            }
        }
        Ok(bundle)
    }

    /// Loads, compiles and warms up without running tests; also says whether the bundle has test files.
    fn compile(dir: &Path, timeout: Duration) -> Result<(Bundle, bool), PolicyError> {
        let Sources {
            mut engine,
            tests,
            revision,
        } = read_sources(dir)?;
        let data = engine.get_data();
        // A broken list of secrets fails the load, so records are never kept by a list nobody reviewed.
        let redactor = redactor_of(&data)?;
        let entry: regorus::Rc<str> = ENTRYPOINT.into();
        // The VM is several times faster; where it cannot compile the bundle (e.g. `with`), the interpreter
        // evaluates the same rules.
        let program = match engine.compile_with_entrypoint(&entry) {
            Ok(compiled) => match Compiler::compile_from_policy(&compiled, &[ENTRYPOINT]) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::info!(error = %e, "policy bundle runs on the interpreter (bytecode compile failed)");
                    None
                }
            },
            Err(e) => return Err(PolicyError::Load(vec![format!("{ENTRYPOINT}: {e}")])),
        };
        let bundle = Bundle {
            serial: BUNDLE_SERIAL.fetch_add(1, Ordering::Relaxed),
            revision,
            loaded_at: Utc::now(),
            dir: dir.to_path_buf(),
            engine,
            program,
            data,
            timeout,
            redactor,
        };
        // regorus reports unknown builtins and many type errors only when a rule is first evaluated.
        bundle
            .evaluate(&warm_up_input())
            .map_err(|e| PolicyError::Load(vec![format!("warm-up evaluation: {e}")]))?;
        Ok((bundle, !tests.is_empty()))
    }

    pub fn revision(&self) -> &str {
        &self.revision
    }

    pub fn loaded_at(&self) -> DateTime<Utc> {
        self.loaded_at
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the secrets out of what is recorded of a request judged by this bundle.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    pub fn uses_bytecode(&self) -> bool {
        self.program.is_some()
    }

    fn engine_name(&self) -> &'static str {
        if self.uses_bytecode() {
            "bytecode VM"
        } else {
            "interpreter"
        }
    }

    /// Evaluates the entrypoint for one input within the bundle's time limit. Synchronous and CPU-bound:
    /// callers on an async runtime use [`Bundle::evaluate_inline`] first and this on a blocking pool.
    pub fn evaluate(&self, input: &Value) -> Result<Decision, PolicyError> {
        let input = to_rego(input)?;
        let result = match &self.program {
            Some(program) => self.evaluate_vm(program, input, self.timeout),
            None => self.evaluate_interpreter(input),
        }?;
        decision_of(&result)
    }

    /// The bundle's whole data document (`data`, rules excluded) as JSON: for checking that another loader
    /// (OPA's) reads the same documents from the same files.
    pub fn data_document(&self) -> Result<Value, PolicyError> {
        serde_json::to_value(&self.data).map_err(|e| PolicyError::Eval(e.to_string()))
    }

    /// Evaluates on the tree-walking interpreter (the engine `tollgate policy test` runs test rules on),
    /// whatever the serving engine is: for conformance checks holding the two regorus engines (and OPA)
    /// against each other, and the engine check (`[policy] engine_check_sample`) on sampled live inputs,
    /// off the request path. Synchronous and CPU-bound.
    pub fn evaluate_on_interpreter(&self, input: &Value) -> Result<Decision, PolicyError> {
        let input = to_rego(input)?;
        decision_of(&self.evaluate_interpreter(input)?)
    }

    /// Evaluates on the calling thread, but only on the bytecode VM and only for up to `budget`
    /// (bounded by the bundle's own limit): `Err(PolicyError::OverBudget)` means "not decided here, evaluate
    /// again with [`Bundle::evaluate`] on a blocking pool". The bundled library decides in 1–120 µs, so
    /// nearly every request is judged without the hand-off to another thread, which costs more than
    /// the evaluation itself; a slow or pathological policy still cannot hold an async worker for longer
    /// than the budget (plus one timer-check interval of about a thousand VM instructions).
    pub fn evaluate_inline(
        &self,
        input: &Value,
        budget: Duration,
    ) -> Result<Decision, PolicyError> {
        let Some(program) = &self.program else {
            return Err(PolicyError::OverBudget);
        };
        let input = to_rego(input)?;
        let result = self.evaluate_vm(program, input, budget.min(self.timeout))?;
        decision_of(&result)
    }

    fn evaluate_vm(
        &self,
        program: &Arc<Program>,
        input: regorus::Value,
        limit: Duration,
    ) -> Result<regorus::Value, PolicyError> {
        VM.with(|slot| {
            let mut slot = slot.borrow_mut();
            if slot
                .as_ref()
                .is_none_or(|(serial, _)| *serial != self.serial)
            {
                let mut vm = RegoVM::new();
                vm.load_program(program.clone());
                vm.set_data(self.data.clone())
                    .map_err(|e| PolicyError::Eval(e.to_string()))?;
                vm.set_max_instructions(MAX_INSTRUCTIONS);
                *slot = Some((self.serial, vm));
            }
            let Some((_, vm)) = slot.as_mut() else {
                return Err(PolicyError::Eval("no VM".into()));
            };
            vm.set_execution_timer_config(Some(ExecutionTimerConfig {
                limit,
                check_interval: NonZeroU32::MIN.saturating_add(999),
            }));
            vm.set_input(input);
            let out = vm.execute();
            if out.is_err() {
                // A failed run may leave the VM mid-state; start the next evaluation from a fresh one.
                *slot = None;
            }
            match out {
                Ok(value) => Ok(value),
                Err(VmError::TimeLimitExceeded { .. }) if limit < self.timeout => {
                    Err(PolicyError::OverBudget)
                }
                Err(e) => Err(PolicyError::Eval(e.to_string())),
            }
        })
    }

    fn evaluate_interpreter(&self, input: regorus::Value) -> Result<regorus::Value, PolicyError> {
        let mut engine = self.engine.clone();
        engine.set_execution_timer_config(ExecutionTimerConfig {
            limit: self.timeout,
            check_interval: NonZeroU32::MIN.saturating_add(999),
        });
        engine.set_input(input);
        engine
            .eval_rule(ENTRYPOINT.to_string())
            .map_err(|e| PolicyError::Eval(e.to_string()))
    }
}

impl Live {
    /// Loads bundle, catalog (`<dir>/catalog`) and shadow bundle; any failure fails the whole load.
    pub fn load(
        dir: &Path,
        shadow_dir: Option<&Path>,
        timeout: Duration,
    ) -> Result<Live, PolicyError> {
        let bundle = Bundle::load(dir, timeout)?;
        let catalog = Catalog::load(&catalog_dir(dir))
            .map_err(|e| PolicyError::Load(vec![format!("catalog: {e}")]))?;
        let shadow = match shadow_dir {
            Some(d) => Some(
                Bundle::load(d, timeout)
                    .map_err(|e| PolicyError::Load(vec![format!("shadow bundle: {e}")]))?,
            ),
            None => None,
        };
        Ok(Live {
            bundle,
            catalog,
            shadow,
        })
    }
}

/// Where a bundle keeps its route catalog.
pub fn catalog_dir(bundle_dir: &Path) -> PathBuf {
    bundle_dir.join("catalog")
}

impl PolicyHandle {
    pub fn load(
        dir: &Path,
        shadow_dir: Option<&Path>,
        timeout: Duration,
    ) -> Result<PolicyHandle, PolicyError> {
        let live = Live::load(dir, shadow_dir, timeout)?;
        Ok(PolicyHandle {
            current: RwLock::new(Arc::new(live)),
            status: RwLock::new(ReloadStatus {
                last_attempt: None,
                last_error: None,
                reloads_ok: 0,
                reloads_failed: 0,
            }),
            dir: dir.to_path_buf(),
            shadow_dir: shadow_dir.map(Path::to_path_buf),
            timeout,
        })
    }

    pub fn current(&self) -> Arc<Live> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn status(&self) -> ReloadStatus {
        self.status
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Loads the bundle again from disk and swaps it in only if it compiles, warms up and passes its tests;
    /// otherwise the old one stays and the error is kept in the status. Blocking: call it off the async
    /// workers. Returns the live revision.
    pub fn reload(&self) -> Result<String, String> {
        let attempt = Live::load(&self.dir, self.shadow_dir.as_deref(), self.timeout);
        let mut status = self.status.write().unwrap_or_else(|e| e.into_inner());
        status.last_attempt = Some(Utc::now());
        match attempt {
            Ok(live) => {
                let revision = live.bundle.revision().to_string();
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(live);
                status.last_error = None;
                status.reloads_ok += 1;
                Ok(revision)
            }
            Err(e) => {
                status.last_error = Some(e.to_string());
                status.reloads_failed += 1;
                Err(e.to_string())
            }
        }
    }

    /// A cheap fingerprint of the files on disk (paths, sizes, modification times), to notice edits.
    pub fn files_fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for dir in std::iter::once(&self.dir).chain(self.shadow_dir.as_ref()) {
            if let Ok(files) = bundle_files(dir) {
                for f in files {
                    f.hash(&mut h);
                    if let Ok(meta) = std::fs::metadata(&f) {
                        meta.len().hash(&mut h);
                        meta.modified().ok().hash(&mut h);
                    }
                }
            }
        }
        h.finish()
    }
}

/// The redactor of a bundle's data: its `data.secrets`, or the built-in names when it has none.
fn redactor_of(data: &regorus::Value) -> Result<Redactor, PolicyError> {
    let invalid =
        |e: String| PolicyError::Load(vec![format!("data.secrets (secrets/data.yaml): {e}")]);
    let secrets = match &data[&regorus::Value::from("secrets")] {
        regorus::Value::Undefined => None,
        secrets => Some(serde_json::to_value(secrets).map_err(|e| invalid(e.to_string()))?),
    };
    Redactor::from_data(secrets.as_ref()).map_err(invalid)
}

/// A bundle read from disk: an engine with its policies and data, its test files, and its revision.
struct Sources {
    engine: regorus::Engine,
    tests: Vec<(String, String)>,
    revision: String,
}

fn read_sources(dir: &Path) -> Result<Sources, PolicyError> {
    let files = bundle_files(dir).map_err(|e| PolicyError::Load(vec![e]))?;
    let mut errors = Vec::new();
    let mut engine = regorus::Engine::new();
    engine.set_rego_v0(false);
    let mut hasher = Sha256::new();
    let mut policies = 0;
    let mut tests = Vec::new();
    for file in &files {
        let rel = file
            .strip_prefix(dir)
            .unwrap_or(file)
            .to_string_lossy()
            .replace('\\', "/");
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                errors.push(format!("{rel}: {e}"));
                continue;
            }
        };
        hasher.update(rel.as_bytes());
        hasher.update([0]);
        hasher.update(text.as_bytes());
        hasher.update([0]);
        match kind_of(&rel) {
            FileKind::Policy => {
                policies += 1;
                if let Err(e) = engine.add_policy(rel.clone(), text) {
                    errors.push(format!("{rel}: {e}"));
                }
            }
            FileKind::Data(path) => match data_value(&rel, &text) {
                Ok(value) => {
                    // `a/b/data.yaml` is `data.a.b`, as OPA's loaders place it.
                    let wrapped = path.iter().rev().fold(value, |inner, key| {
                        let mut outer = regorus::Value::new_object();
                        if let Ok(map) = outer.as_object_mut() {
                            map.insert(regorus::Value::from(key.as_str()), inner);
                        }
                        outer
                    });
                    if let Err(e) = engine.add_data(wrapped) {
                        errors.push(format!("{rel}: {e}"));
                    }
                }
                Err(e) => errors.extend(e),
            },
            FileKind::Test => {
                if rel.ends_with(".rego") {
                    tests.push((rel, text));
                }
            }
            FileKind::Refused(why) => errors.push(format!("{rel}: {why}")),
        }
    }
    if policies == 0 {
        errors.push(format!("no .rego policy files under {}", dir.display()));
    }
    if !errors.is_empty() {
        return Err(PolicyError::Load(errors));
    }
    Ok(Sources {
        engine,
        tests,
        revision: hex::encode(hasher.finalize())[..16].to_string(),
    })
}

/// One `test_*` rule's result.
#[derive(Debug, Clone, Serialize)]
pub struct TestResult {
    /// `data.<package>.<rule>`
    pub name: String,
    pub passed: bool,
    /// Why it failed: the value it had (`false`, undefined) or the evaluation error.
    pub detail: Option<String>,
}

/// What `tollgate policy test` found.
#[derive(Debug, Clone, Serialize)]
pub struct TestReport {
    pub revision: String,
    pub tests: Vec<TestResult>,
    /// Policy lines (tests excluded) evaluated by at least one test, of all lines regorus tracks.
    pub covered_lines: usize,
    pub coverable_lines: usize,
    /// Per policy file: (path, covered, coverable, uncovered line numbers).
    pub files: Vec<(String, usize, usize, Vec<u32>)>,
}

impl TestReport {
    pub fn passed(&self) -> usize {
        self.tests.iter().filter(|t| t.passed).count()
    }

    pub fn coverage_percent(&self) -> f64 {
        if self.coverable_lines == 0 {
            return 100.0;
        }
        100.0 * self.covered_lines as f64 / self.coverable_lines as f64
    }
}

/// Runs every `test_*` rule in the bundle's test files (`tests/**.rego`, `*_test.rego`) against the bundle's
/// policies and data: a test passes when its value is `true`. regorus has no `opa test`; this is ours.
pub fn run_tests(dir: &Path) -> Result<TestReport, PolicyError> {
    let (bundle, _) = Bundle::compile(dir, Duration::from_secs(5))?;
    run_tests_on(dir, &bundle)
}

/// A bundle as a policy review sees it (`tollgate policy diff`): compiled and warmed up like a live bundle,
/// but kept even when its own tests fail, so the review can report the failures beside what changed.
pub struct Review {
    pub bundle: Bundle,
    pub tests: TestReport,
    /// Every test package's `cases` table.
    pub cases: Vec<Case>,
}

/// Loads `dir` for review: compile and warm up (either failing is an error, as for [`Bundle::load`]), then
/// run its tests and read its case tables once, whatever their results.
pub fn load_for_review(dir: &Path, timeout: Duration) -> Result<Review, PolicyError> {
    let (bundle, _) = Bundle::compile(dir, timeout)?;
    let (tests, cases) = run_tests_and_cases(dir, &bundle)?;
    Ok(Review {
        bundle,
        tests,
        cases,
    })
}

/// The test run, with `bundle` as the serving engine for the case-table replay.
///
/// Test rules run on the interpreter (they use `with`, which the bytecode VM cannot compile), but requests
/// are served by the VM, and regorus's VM and interpreter do not always agree. So every test package's
/// `cases` table (`{name: {"input": …, "outcome": …, "rules": [...]}}`) is also replayed through
/// [`Bundle::evaluate`] — the exact path requests take — and each case is a test of its own.
fn run_tests_on(dir: &Path, bundle: &Bundle) -> Result<TestReport, PolicyError> {
    run_tests_and_cases(dir, bundle).map(|(report, _)| report)
}

/// [`run_tests_on`], also handing back the case tables it replayed.
fn run_tests_and_cases(
    dir: &Path,
    bundle: &Bundle,
) -> Result<(TestReport, Vec<Case>), PolicyError> {
    let Sources {
        mut engine,
        tests,
        revision,
    } = read_sources(dir)?;
    let mut packages: Vec<String> = Vec::new();
    let mut names = Vec::new();
    let mut errors = Vec::new();
    for (rel, text) in &tests {
        let package = text.lines().find_map(|l| {
            l.trim()
                .strip_prefix("package ")
                .map(|p| p.trim().to_string())
        });
        let Some(package) = package else {
            errors.push(format!("{rel}: no package line"));
            continue;
        };
        if !packages.contains(&package) {
            packages.push(package.clone());
        }
        for line in text.lines() {
            // Rules start at column 0; a test rule is named test_…
            if let Some(rest) = line.strip_prefix("test_") {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let full = format!("data.{package}.test_{name}");
                if !names.contains(&full) {
                    names.push(full);
                }
            }
        }
        if let Err(e) = engine.add_policy(rel.clone(), text.clone()) {
            errors.push(format!("{rel}: {e}"));
        }
    }
    if !errors.is_empty() {
        return Err(PolicyError::Load(errors));
    }
    engine.set_enable_coverage(true);
    let mut results = Vec::new();
    for name in names {
        let (passed, detail) = match engine.eval_rule(name.clone()) {
            Ok(regorus::Value::Bool(true)) => (true, None),
            Ok(regorus::Value::Undefined) => (false, Some("undefined".to_string())),
            Ok(other) => (false, Some(format!("value {other}"))),
            Err(e) => (false, Some(e.to_string())),
        };
        results.push(TestResult {
            name,
            passed,
            detail,
        });
    }
    let cases = cases_of(&mut engine, &packages);
    results.extend(replay_cases(&cases, bundle));
    let coverage = engine
        .get_coverage_report()
        .map_err(|e| PolicyError::Eval(e.to_string()))?;
    let test_paths: Vec<&str> = tests.iter().map(|(rel, _)| rel.as_str()).collect();
    let mut files = Vec::new();
    let (mut covered, mut coverable) = (0, 0);
    for f in coverage
        .files
        .iter()
        .filter(|f| !test_paths.contains(&f.path.as_str()))
    {
        let total = f.covered.len() + f.not_covered.len();
        covered += f.covered.len();
        coverable += total;
        files.push((
            f.path.clone(),
            f.covered.len(),
            total,
            f.not_covered.iter().copied().collect(),
        ));
    }
    Ok((
        TestReport {
            revision,
            tests: results,
            covered_lines: covered,
            coverable_lines: coverable,
            files,
        },
        cases,
    ))
}

/// One entry of a test package's `cases` table (`data.<package>.cases[<name>]`): an input and what the
/// bundle's authors expect of it.
#[derive(Debug, Clone)]
pub struct Case {
    pub package: String,
    pub name: String,
    /// The whole entry: `input`, `outcome`, optionally `rules` (and whatever else the table keeps).
    pub case: Value,
}

/// Every test package's `cases` table as the interpreter evaluates it: (package, case name, case), in
/// package and name order. For conformance checks that evaluate the same inputs elsewhere (OPA).
pub fn case_tables(dir: &Path) -> Result<Vec<(String, String, Value)>, PolicyError> {
    let Sources {
        mut engine, tests, ..
    } = read_sources(dir)?;
    let mut packages: Vec<String> = Vec::new();
    for (rel, text) in tests {
        if let Some(package) = text.lines().find_map(|l| l.trim().strip_prefix("package ")) {
            let package = package.trim().to_string();
            if !packages.contains(&package) {
                packages.push(package);
            }
        }
        engine
            .add_policy(rel.clone(), text)
            .map_err(|e| PolicyError::Load(vec![format!("{rel}: {e}")]))?;
    }
    packages.sort();
    Ok(cases_of(&mut engine, &packages)
        .into_iter()
        .map(|c| (c.package, c.name, c.case))
        .collect())
}

/// Every test package's `cases` table, each entry once, in package then name order.
fn cases_of(engine: &mut regorus::Engine, packages: &[String]) -> Vec<Case> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for package in packages {
        let Ok(table) = engine.eval_rule(format!("data.{package}.cases")) else {
            continue;
        };
        let Ok(Value::Object(cases)) = serde_json::to_value(&table) else {
            continue;
        };
        for (name, case) in cases {
            if seen.insert((package.clone(), name.clone())) {
                out.push(Case {
                    package: package.clone(),
                    name,
                    case,
                });
            }
        }
    }
    out
}

/// Replays every test package's `cases` table through the serving engine (see [`run_tests_on`]).
fn replay_cases(cases: &[Case], bundle: &Bundle) -> Vec<TestResult> {
    let mut results = Vec::new();
    for Case {
        package,
        name,
        case,
    } in cases
    {
        let test = format!(
            "data.{package}.cases[{name:?}] on the {} engine",
            bundle.engine_name()
        );
        let expected = case
            .get("outcome")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let expected_rules: Option<std::collections::BTreeSet<String>> =
            case.get("rules").and_then(Value::as_array).map(|r| {
                r.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            });
        let input = case.get("input").cloned().unwrap_or(Value::Null);
        let detail = match bundle.evaluate(&input) {
            Err(e) => Some(format!("evaluation failed: {e}")),
            Ok(d) => {
                let outcome = match d.outcome {
                    Outcome::Allow => "allow",
                    Outcome::Deny => "deny",
                    Outcome::Approve => "approve",
                };
                let rules: std::collections::BTreeSet<String> =
                    d.reasons.iter().map(|r| r.rule.clone()).collect();
                if outcome != expected {
                    Some(format!("outcome {outcome}, expected {expected}"))
                } else if expected_rules.as_ref().is_some_and(|e| *e != rules) {
                    Some(format!("rules {rules:?}, expected {expected_rules:?}"))
                } else {
                    None
                }
            }
        };
        results.push(TestResult {
            name: test,
            passed: detail.is_none(),
            detail,
        });
    }
    results
}

enum FileKind {
    Policy,
    /// A data file, placed at `data.<its directory's path>`.
    Data(Vec<String>),
    Test,
    /// A file OPA would read differently from tollgate: refused, with the reason.
    Refused(&'static str),
}

/// What a bundle file is, by the rules OPA's loaders follow, so that `opa test DIR` and
/// `opa eval -b DIR` see what tollgate loads: `*.rego` are policies (tests: under `tests/` or
/// `*_test.rego`), and data is only ever a file named `data.json`, `data.yaml` or `data.yml`, placed by its
/// directory (`tokens/data.yaml` is `data.tokens`, `catalog/stripe/data.yaml` is `data.catalog.stripe`).
/// OPA's bundle reader ignores other JSON/YAML files and its directory loader merges them into their
/// directory's document, so any other `.json`/`.yaml`/`.yml` file is refused rather than read one way.
fn kind_of(rel: &str) -> FileKind {
    let path = Path::new(rel);
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    if rel.ends_with(".rego") {
        if rel.starts_with("tests/") || rel.ends_with("_test.rego") {
            FileKind::Test
        } else {
            FileKind::Policy
        }
    } else if matches!(name.as_str(), "data.json" | "data.yaml" | "data.yml") {
        let dir = path
            .parent()
            .map(|p| {
                p.components()
                    .map(|c| c.as_os_str().to_string_lossy().to_string())
                    .collect()
            })
            .unwrap_or_default();
        FileKind::Data(dir)
    } else {
        FileKind::Refused(
            "data files must be named data.json or data.yaml (OPA places `<dir>/data.yaml` at \
             `data.<dir>`; it would merge or ignore a file of any other name)",
        )
    }
}

/// A data file's value: JSON, or YAML without any plain scalar whose type depends on the YAML version
/// ([`crate::datafile`]). Errors name the file and line.
fn data_value(rel: &str, text: &str) -> Result<regorus::Value, Vec<String>> {
    if rel.ends_with(".json") {
        return regorus::Value::from_json_str(text).map_err(|e| vec![format!("{rel}: {e}")]);
    }
    let ambiguous =
        crate::datafile::ambiguous_scalars(text).map_err(|e| vec![format!("{rel}: {e}")])?;
    if !ambiguous.is_empty() {
        return Err(ambiguous
            .into_iter()
            .map(|a| format!("{rel}:{}: unquoted `{}` is {}", a.line, a.value, a.why))
            .collect());
    }
    regorus::Value::from_yaml_str(text).map_err(|e| vec![format!("{rel}: {e}")])
}

/// Every file of the bundle in a stable order: `.rego`, and `.json`/`.yaml`/`.yml` (data and catalog).
/// Hidden entries are skipped: a Kubernetes ConfigMap volume holds the same files again under `..data` and
/// `..<timestamp>`, which would load every rule three times and make the revision differ per pod.
fn bundle_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        for entry in entries {
            let path = entry.map_err(|e| format!("{}: {e}", d.display()))?.path();
            if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
            {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("rego" | "json" | "yaml" | "yml")
            ) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The input as regorus's value, built straight from the JSON tree. (Through regorus's serde visitor this
/// was a sixth of a write's evaluation: every object went through a map insert per key and a second copy.)
/// serde_json's maps are ordered by key, so each object is collected from an already sorted sequence.
fn to_rego(input: &Value) -> Result<regorus::Value, PolicyError> {
    Ok(match input {
        Value::Null => regorus::Value::Null,
        Value::Bool(b) => regorus::Value::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                regorus::Value::from(i)
            } else if let Some(u) = n.as_u64() {
                regorus::Value::from(u)
            } else {
                // serde_json holds only finite floats, which is what regorus requires of its input.
                match n.as_f64() {
                    Some(f) if f.is_finite() => regorus::Value::from(f),
                    _ => return Err(PolicyError::Eval(format!("input: number {n}"))),
                }
            }
        }
        Value::String(s) => regorus::Value::from(s.as_str()),
        Value::Array(items) => {
            regorus::Value::from(items.iter().map(to_rego).collect::<Result<Vec<_>, _>>()?)
        }
        Value::Object(map) => regorus::Value::from(
            map.iter()
                .map(|(k, v)| Ok((regorus::Value::from(k.as_str()), to_rego(v)?)))
                .collect::<Result<BTreeMap<_, _>, PolicyError>>()?,
        ),
    })
}

/// The entrypoint's value as a [`Decision`], read strictly (see [`parse_decision`]) straight from regorus's
/// value: no detour through JSON on every request.
fn decision_of(v: &regorus::Value) -> Result<Decision, PolicyError> {
    use regorus::Value as R;
    let shape = |m: &str| PolicyError::Shape(m.to_string());
    let R::Object(obj) = v else {
        return Err(shape("decision is not an object (is the rule defined?)"));
    };
    let field = |o: &regorus::value::Object, key: &str| -> Option<R> {
        o.get(&R::from(key))
            .filter(|v| !matches!(v, R::Null | R::Undefined))
            .cloned()
    };
    let string = |v: &R| match v {
        R::String(s) => Some(s.to_string()),
        _ => None,
    };
    let outcome = match field(obj, "outcome").as_ref().and_then(string).as_deref() {
        Some("allow") => Outcome::Allow,
        Some("deny") => Outcome::Deny,
        Some("approve") => Outcome::Approve,
        _ => return Err(shape("outcome must be \"allow\", \"deny\" or \"approve\"")),
    };
    let reason = |r: &R| -> Result<Reason, PolicyError> {
        let (rule, message) = match r {
            R::Object(o) => (
                field(o, "rule").as_ref().and_then(string),
                field(o, "message").as_ref().and_then(string),
            ),
            _ => (None, None),
        };
        match (rule, message) {
            (Some(rule), Some(message)) if !rule.is_empty() => Ok(Reason { rule, message }),
            _ => Err(shape(
                "each reason needs a non-empty string rule and a string message",
            )),
        }
    };
    // An array, or a set (which is how a set of reasons reaches JSON too: as an array, in sorted order).
    let reasons = match field(obj, "reasons") {
        None => Vec::new(),
        Some(R::Array(items)) => items.iter().map(reason).collect::<Result<_, _>>()?,
        Some(R::Set(items)) => items.iter().map(reason).collect::<Result<_, _>>()?,
        Some(_) => return Err(shape("reasons must be an array")),
    };
    if outcome != Outcome::Allow && reasons.is_empty() {
        return Err(shape(
            "a deny or approve decision must give at least one reason",
        ));
    }
    let cents = |key: &str, o: &regorus::value::Object| -> Result<i64, PolicyError> {
        match field(o, key) {
            Some(R::Number(n)) => n.as_i64().filter(|c| *c >= 0),
            _ => None,
        }
        .ok_or_else(|| {
            PolicyError::Shape(format!(
                "charge.{key} must be a non-negative integer number of cents"
            ))
        })
    };
    let charge = match field(obj, "charge") {
        None => None,
        Some(R::Object(c)) => Some(Charge {
            cents: cents("cents", &c)?,
            cap_cents: cents("cap_cents", &c)?,
            budget: field(&c, "budget")
                .as_ref()
                .and_then(string)
                .filter(|b| !b.is_empty())
                .ok_or_else(|| shape("charge.budget must be a non-empty string"))?,
        }),
        Some(_) => return Err(shape("charge must be an object")),
    };
    let hold_seconds = match field(obj, "hold_seconds") {
        None => None,
        Some(h) => Some(match h {
            R::Number(n) => n
                .as_u64()
                .ok_or_else(|| shape("hold_seconds must be a non-negative integer"))?,
            _ => return Err(shape("hold_seconds must be a non-negative integer")),
        }),
    };
    Ok(Decision {
        outcome,
        reasons,
        charge,
        hold_seconds,
    })
}

/// Reads a decision given as JSON, with the same rules as the entrypoint's value: extra keys are ignored;
/// known keys must have the documented types.
pub fn parse_decision(v: &Value) -> Result<Decision, PolicyError> {
    decision_of(&to_rego(v)?)
}

/// The policy input of DESIGN.md ("Policy contract").
pub fn build_input(
    agent: &Agent,
    run: &RunFacts,
    request: &RequestFacts,
    action: &Action,
    spend: Value,
    approval: Option<Value>,
    now: DateTime<Utc>,
) -> Value {
    // A handle (vault mode) is judged as the agent that minted its token: `id` and `name` are the minter's,
    // so per-agent data (budgets, token ceilings) applies to it unchanged; the handle itself and the token's
    // own grant are beside them.
    let mut agent_input = json!({
        "id": agent.principal_id().to_string(),
        "name": agent.principal_name(),
        "team": agent.team,
        "scopes": agent.scopes,
        "labels": agent.labels,
    });
    if let (Some(minted), Some(fields)) = (&agent.minted, agent_input.as_object_mut()) {
        fields.insert(
            "minted_by".into(),
            Value::from(minted.minted_by_name.clone()),
        );
        fields.insert(
            "handle".into(),
            json!({"id": agent.id.to_string(), "name": agent.name}),
        );
        fields.insert(
            "token".into(),
            json!({"id": minted.token_id, "policies": minted.policies}),
        );
    }
    json!({
        "agent": agent_input,
        "run": {"id": run.id, "on_behalf_of": run.on_behalf_of},
        "request": request,
        "action": action,
        "spend": spend,
        "approval": approval,
        "now": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    })
}

/// A harmless read used to exercise every rule path that a GET touches at load time.
fn warm_up_input() -> Value {
    json!({
        "agent": {"id": "00000000-0000-0000-0000-000000000000", "name": "warm-up", "team": null,
                  "scopes": [], "labels": {}},
        "run": {"id": null, "on_behalf_of": null},
        "request": {"provider": "cloudflare", "method": "GET", "path": "/client/v4/zones", "query": {},
                    "headers": {}, "body": null, "body_sha256": ""},
        "action": {"name": "unknown", "risk": "read", "params": {}},
        "spend": {"window": "1970-01", "agent_provider_cents": 0},
        "approval": null,
        "now": "1970-01-01T00:00:00Z",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle_with(rego: &str) -> Result<Bundle, PolicyError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("main.rego"), rego).unwrap();
        std::fs::create_dir(dir.path().join("limits")).unwrap();
        std::fs::write(dir.path().join("limits/data.yaml"), "cap: 100\n").unwrap();
        Bundle::load(dir.path(), Duration::from_millis(250))
    }

    /// A bundle of one policy that exposes `data` and the given files.
    fn bundle_of(files: &[(&str, &str)]) -> Result<Bundle, PolicyError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("main.rego"),
            "package tollgate\n\ndecision := {\"outcome\": \"allow\"}\n",
        )
        .unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        Bundle::load(dir.path(), Duration::from_millis(250))
    }

    #[test]
    fn data_files_are_placed_by_their_directory_as_opa_places_them() {
        let b = bundle_of(&[
            ("tokens/data.yaml", "ceiling: [a]\n"),
            ("catalog/stripe/data.yaml", "provider: stripe\n"),
            ("prices/data.json", "{\"usd\": 1}"),
            ("data.yaml", "top: \"n\"\n"),
        ])
        .unwrap();
        let data = serde_json::to_value(&b.data).unwrap();
        assert_eq!(
            data,
            json!({
                "tokens": {"ceiling": ["a"]},
                "catalog": {"stripe": {"provider": "stripe"}},
                "prices": {"usd": 1},
                "top": "n",
            })
        );
    }

    #[test]
    fn data_files_of_other_names_are_refused() {
        for name in ["data/limits.yaml", "limits.json", "tests/fixture.yml"] {
            let err = bundle_of(&[(name, "cap: 100\n")])
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(name), "{err}");
            assert!(
                err.contains("must be named data.json or data.yaml"),
                "{err}"
            );
        }
    }

    #[test]
    fn yaml_values_whose_type_depends_on_the_yaml_version_are_refused() {
        let err = bundle_of(&[(
            "domains/data.yaml",
            "fold:\n  nn: n\n  ok: \"y\"\nmode: 0777\nbig: 1_000\n",
        )])
        .err()
        .unwrap()
        .to_string();
        for expected in [
            "domains/data.yaml:2: unquoted `n` is a boolean under YAML 1.1 (OPA)",
            "domains/data.yaml:4: unquoted `0777` is a number the two YAML readings take differently",
            "domains/data.yaml:5: unquoted `1_000` is a number the two YAML readings",
        ] {
            assert!(err.contains(expected), "{expected} not in {err}");
        }
        assert!(!err.contains("`y`"), "{err}");
        // Quoted, the same values load, as strings.
        let b =
            bundle_of(&[("domains/data.yaml", "fold:\n  nn: \"n\"\nmode: \"0777\"\n")]).unwrap();
        assert_eq!(
            serde_json::to_value(&b.data).unwrap(),
            json!({"domains": {"fold": {"nn": "n"}, "mode": "0777"}})
        );
    }

    #[test]
    fn parse_decision_is_strict() {
        let ok = |v: Value| parse_decision(&v).is_ok();
        assert!(ok(json!({"outcome": "allow"})));
        assert!(ok(
            json!({"outcome": "deny", "reasons": [{"rule": "r", "message": "m"}]})
        ));
        assert!(!ok(json!({"outcome": "deny"})), "a deny needs a reason");
        assert!(!ok(json!({"outcome": "yes"})));
        assert!(!ok(json!("allow")));
        assert!(!ok(json!(null)));
        assert!(!ok(
            json!({"outcome": "allow", "charge": {"cents": "10", "budget": "b", "cap_cents": 1}})
        ));
        assert!(!ok(
            json!({"outcome": "allow", "charge": {"cents": -1, "budget": "b", "cap_cents": 1}})
        ));
        assert!(!ok(
            json!({"outcome": "allow", "charge": {"cents": 1.5, "budget": "b", "cap_cents": 1}})
        ));
        assert!(!ok(
            json!({"outcome": "allow", "reasons": [{"rule": 1, "message": "m"}]})
        ));
        let d = parse_decision(&json!({"outcome": "allow", "charge": {"cents": 1044, "budget": "b", "cap_cents": 10000}}))
            .unwrap();
        assert_eq!(d.charge.unwrap().cents, 1044);
        assert!(!ok(
            json!({"outcome": "approve", "reasons": [{"rule": "", "message": "m"}]})
        ));
        assert!(!ok(json!({"outcome": "allow", "reasons": "none"})));
        assert!(!ok(json!({"outcome": "allow", "hold_seconds": -5})));
        assert!(!ok(json!({"outcome": "allow", "charge": [1]})));
        assert!(!ok(
            json!({"outcome": "allow", "charge": {"cents": 1, "budget": "", "cap_cents": 1}})
        ));
        let d = parse_decision(
            &json!({"outcome": "approve", "reasons": [{"rule": "r", "message": "m"}],
                                        "hold_seconds": 600, "charge": null, "extra": 1}),
        )
        .unwrap();
        assert_eq!(
            (d.outcome, d.hold_seconds, d.charge),
            (Outcome::Approve, Some(600), None)
        );
    }

    #[test]
    fn a_set_of_reasons_is_read_in_order() {
        let b = bundle_with(
            r#"package tollgate
decision := {"outcome": "deny", "reasons": {{"rule": "b", "message": "2"}, {"rule": "a", "message": "1"}}}"#,
        )
        .unwrap();
        let d = b.evaluate(&json!({})).unwrap();
        let rules: Vec<_> = d.reasons.iter().map(|r| r.rule.as_str()).collect();
        assert_eq!(rules, ["a", "b"]);
    }

    #[test]
    fn input_conversion_matches_regorus_own_json_reading() {
        let doc = json!({
            "b": [1, -2, 3.5, 18446744073709551615u64, 9007199254740993i64, 0.1, true, null],
            "a": {"z": "", "é": {"nested": [[], {}]}, "A": "upper first"},
            "num_keys": {"10": 1, "9": 2},
        });
        let ours = to_rego(&doc).unwrap();
        let theirs = regorus::Value::from_json_str(&doc.to_string()).unwrap();
        assert_eq!(ours, theirs);
        assert_eq!(serde_json::to_value(&ours).unwrap(), doc);
    }

    #[test]
    fn evaluates_on_the_vm_with_data() {
        let b = bundle_with(
            "package tollgate\n\ndecision := {\"outcome\": \"allow\"} if input.request.method == \"GET\"\n\
             decision := {\"outcome\": \"deny\", \"reasons\": [{\"rule\": \"t\", \"message\": sprintf(\"cap %d\", [data.limits.cap])}]} if input.request.method != \"GET\"\n",
        )
        .unwrap();
        assert!(b.uses_bytecode());
        assert_eq!(b.revision().len(), 16);
        let mut input = warm_up_input();
        assert_eq!(b.evaluate(&input).unwrap().outcome, Outcome::Allow);
        input["request"]["method"] = json!("POST");
        let d = b.evaluate(&input).unwrap();
        assert_eq!(d.outcome, Outcome::Deny);
        assert_eq!(d.reasons[0].message, "cap 100");
    }

    #[test]
    fn inline_evaluation_hands_slow_policies_back_and_decides_fast_ones() {
        // Slow only for POST: the warm-up input is a GET, so the bundle loads.
        let b = bundle_with(
            "package tollgate\n\nbusy := count([x | some x in numbers.range(1, 20000); x % 7 == 0]) if input.request.method == \"POST\"\n\
             decision := {\"outcome\": \"allow\"} if input.request.method == \"GET\"\n\
             decision := {\"outcome\": \"deny\", \"reasons\": [{\"rule\": \"busy\", \"message\": sprintf(\"%d\", [busy])}]} if input.request.method == \"POST\"\n",
        )
        .unwrap();
        let mut input = warm_up_input();
        let fast = b
            .evaluate_inline(&input, Duration::from_millis(50))
            .unwrap();
        assert_eq!(fast.outcome, Outcome::Allow);
        input["request"]["method"] = json!("POST");
        assert!(matches!(
            b.evaluate_inline(&input, Duration::from_nanos(1)),
            Err(PolicyError::OverBudget)
        ));
        // The same VM slot is usable afterwards, and the full evaluation decides.
        let slow = b.evaluate(&input).unwrap();
        assert_eq!(slow.outcome, Outcome::Deny);
        assert_eq!(slow.reasons[0].message, "2857");
        input["request"]["method"] = json!("GET");
        assert_eq!(
            b.evaluate_inline(&input, Duration::from_millis(50))
                .unwrap()
                .outcome,
            Outcome::Allow
        );
    }

    #[test]
    fn a_policy_over_its_full_time_limit_is_an_error_not_a_hand_off() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("main.rego"),
            "package tollgate\n\nbusy := count([x | some x in numbers.range(1, 500000); x % 7 == 0]) if input.request.method == \"POST\"\n\
             decision := {\"outcome\": \"allow\"} if input.request.method == \"GET\"\n\
             decision := {\"outcome\": \"deny\", \"reasons\": [{\"rule\": \"busy\", \"message\": sprintf(\"%d\", [busy])}]} if input.request.method == \"POST\"\n",
        )
        .unwrap();
        let b = Bundle::load(dir.path(), Duration::from_millis(5)).unwrap();
        let mut input = warm_up_input();
        input["request"]["method"] = json!("POST");
        // The bundle's limit is 5 ms: a budget above it is cut to it, and running out is a real failure.
        assert!(matches!(
            b.evaluate_inline(&input, Duration::from_secs(5)),
            Err(PolicyError::Eval(_))
        ));
        assert!(matches!(b.evaluate(&input), Err(PolicyError::Eval(_))));
    }

    #[test]
    fn undefined_decision_is_an_error_not_an_allow() {
        let b = bundle_with("package tollgate\n\ndecision := {\"outcome\": \"allow\"} if input.request.method == \"GET\"\n")
            .unwrap();
        let mut input = warm_up_input();
        input["request"]["method"] = json!("POST");
        assert!(b.evaluate(&input).is_err());
    }

    #[test]
    fn hidden_entries_are_not_part_of_the_bundle() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("main.rego"),
            "package tollgate\n\ndecision := {\"outcome\": \"allow\"}\n",
        )
        .unwrap();
        let plain = Bundle::load(dir.path(), Duration::from_millis(250))
            .unwrap()
            .revision()
            .to_string();
        // What a Kubernetes ConfigMap volume looks like: the same files again under hidden directories.
        std::fs::create_dir(dir.path().join("..2026_11_30_01_02_03.1")).unwrap();
        std::fs::write(
            dir.path().join("..2026_11_30_01_02_03.1/main.rego"),
            "package tollgate\n\ndecision := {",
        )
        .unwrap();
        std::fs::write(dir.path().join(".hidden.rego"), "not rego").unwrap();
        let b = Bundle::load(dir.path(), Duration::from_millis(250)).unwrap();
        assert_eq!(b.revision(), plain);
    }

    #[test]
    fn broken_bundles_do_not_load() {
        assert!(bundle_with("package tollgate\n\ndecision := {").is_err());
        assert!(
            bundle_with("package tollgate\n\ndecision := {\"outcome\": no_such_builtin(1)}\n")
                .is_err()
        );
        assert!(bundle_with("package other\n\nx := 1\n").is_err());
    }
}
