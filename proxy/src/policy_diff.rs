//! Policy change review: `tollgate policy diff BASE CANDIDATE`.
//!
//! Owns: judging the same inputs — both bundles' case tables and recorded decision inputs — under a base and a
//! candidate bundle, classifying each difference (a *widening*: deny→allow, deny→approve, approve→allow, a
//! lower or removed charge, a higher cap, another budget; a *narrowing*: the reverse; *changed reasons*: the
//! same outcome and charge for other rules), the candidate's reviewed-widenings list
//! ([`REVIEWED_FILE`]), the report in text, Markdown (a pull-request comment) and JSON, and the exit status
//! (0 nothing unreviewed widens, 1 unreviewed widenings, 2 the candidate does not load or its tests fail).
//! Must not: load bundles other than through `policy`'s public API (`policy::load_for_review`; it knows
//! nothing of where data files live), read the store (the CLI hands it records), decide requests, or print
//! anything of an input but its action, rule names, outcomes and charges (inputs were redacted when
//! recorded; messages are left out because they may quote what an agent sent).
//!
//! A recorded input whose stored copy was redacted (`redact`) or shortened (`audit::bounded_input`) is not
//! what the policy saw, so it is skipped and counted, never guessed at. Recorded inputs carry the spend state
//! (`input.spend`) of their decision time: replay judges with that recorded budget state.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::policy::{Bundle, Charge, Review};

/// The candidate's list of widenings its reviewers accepted, in the bundle's root. TOML: neither tollgate's
/// loader (`.rego`, `.json`, `.yaml`, `.yml`) nor OPA's (`.rego`, `.json`, `.yaml`/`.yml` data) reads it, so it
/// never becomes policy data and does not change the bundle's revision.
pub const REVIEWED_FILE: &str = "reviewed_widenings.toml";

/// The most of a Markdown report kept (GitHub comments hold at most 65,536 characters), and the most
/// failing tests it names.
const MARKDOWN_MAX: usize = 60_000;
const MARKDOWN_FAILED: usize = 50;

const CATALOG_NOTE: &str = "note: the route catalog changed. Recorded decisions keep the action they were \
     classified as and case tables name their action, so a route that now maps to another action (or none) is \
     not judged here: review the catalog change itself.";

/// How many examples each transition lists.
const EXAMPLES: usize = 5;

/// What one bundle said about one input, reduced to what a review compares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// `allow`, `deny`, `approve`, or `error` (no decision: refused as `policy_unavailable`).
    pub outcome: String,
    pub rules: BTreeSet<String>,
    pub charge: Option<Charge>,
}

impl Verdict {
    pub fn of(result: Result<crate::policy::Decision, crate::policy::PolicyError>) -> Verdict {
        match result {
            Ok(d) => Verdict {
                outcome: d.outcome.as_str().to_string(),
                rules: d.reasons.into_iter().map(|r| r.rule).collect(),
                charge: d.charge,
            },
            Err(_) => Verdict {
                outcome: "error".to_string(),
                rules: BTreeSet::new(),
                charge: None,
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Widening,
    Narrowing,
    ChangedReasons,
    Unchanged,
}

/// How permissive an outcome is: a refusal (deny, or no decision) < a human approves < allow.
fn rank(outcome: &str) -> u8 {
    match outcome {
        "allow" => 2,
        "approve" => 1,
        _ => 0,
    }
}

/// The charge aspects that widen (a request may spend more, or against another cap) and that narrow.
const WIDENING_CHANGES: &[&str] = &["other-budget", "no-charge", "lower-charge", "higher-cap"];

/// Classifies one input's change from `base` to `candidate`: its kind and, when the outcome stays the same,
/// what changed about the charge (`lower-charge`, `higher-cap+lower-charge`, …). A difference that is any
/// part widening is a widening.
pub fn classify(base: &Verdict, candidate: &Verdict) -> (Kind, Option<String>) {
    let (b, c) = (rank(&base.outcome), rank(&candidate.outcome));
    if c > b {
        return (Kind::Widening, None);
    }
    if c < b {
        return (Kind::Narrowing, None);
    }
    // The charge matters only where the request may go ahead (allow, or approve: a human sees it).
    if base.outcome == candidate.outcome && b > 0 {
        let mut wider = Vec::new();
        let mut narrower = Vec::new();
        match (&base.charge, &candidate.charge) {
            (Some(_), None) => wider.push("no-charge"),
            (None, Some(_)) => narrower.push("new-charge"),
            (Some(x), Some(y)) => {
                if x.budget != y.budget {
                    wider.push("other-budget");
                }
                if y.cents < x.cents {
                    wider.push("lower-charge");
                } else if y.cents > x.cents {
                    narrower.push("higher-charge");
                }
                if y.cap_cents > x.cap_cents {
                    wider.push("higher-cap");
                } else if y.cap_cents < x.cap_cents {
                    narrower.push("lower-cap");
                }
            }
            (None, None) => {}
        }
        if !wider.is_empty() {
            return (Kind::Widening, Some(wider.join("+")));
        }
        if !narrower.is_empty() {
            return (Kind::Narrowing, Some(narrower.join("+")));
        }
    }
    if base.outcome != candidate.outcome || base.rules != candidate.rules {
        (Kind::ChangedReasons, None)
    } else {
        (Kind::Unchanged, None)
    }
}

/// One accepted widening in [`REVIEWED_FILE`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewedWidening {
    /// The exact action name (`stripe.payment.create`); no patterns.
    pub action: String,
    pub from: String,
    pub to: String,
    /// For a widening that keeps the outcome: what changed about the charge, as the report names it
    /// (`lower-charge`, `no-charge`, `higher-cap`, `other-budget`, or several joined with `+`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<String>,
    /// Why it is acceptable (a ticket, who reviewed it). Required.
    pub reason: String,
}

/// A reviewed change of the route catalog: which route is which action, which this review cannot judge.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogReview {
    pub reason: String,
}

/// The whole [`REVIEWED_FILE`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reviewed {
    #[serde(default)]
    pub widening: Vec<ReviewedWidening>,
    #[serde(default)]
    pub catalog: Option<CatalogReview>,
}

/// Reads the candidate's reviewed list (none when the file is absent). A list that does not parse, or an
/// entry that is not a widening or gives no reason, is an error: an unreadable list accepts nothing.
pub fn read_reviewed(candidate_dir: &Path) -> anyhow::Result<Reviewed> {
    let path = candidate_dir.join(REVIEWED_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Reviewed::default()),
        Err(e) => anyhow::bail!("{}: {e}", path.display()),
    };
    let file: Reviewed =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut problems = Vec::new();
    for (i, w) in file.widening.iter().enumerate() {
        let n = i + 1;
        let known = |o: &str| matches!(o, "allow" | "deny" | "approve" | "error");
        if w.action.trim().is_empty() {
            problems.push(format!("widening {n}: action is empty"));
        }
        if !known(&w.from) || !known(&w.to) {
            problems.push(format!(
                "widening {n}: from and to must be allow, approve, deny or error"
            ));
        }
        if w.reason.trim().is_empty() {
            problems.push(format!("widening {n}: a reason is required"));
        }
        let widens = match &w.change {
            None => rank(&w.to) > rank(&w.from),
            Some(change) => {
                w.from == w.to
                    && rank(&w.from) > 0
                    && change.split('+').all(|c| WIDENING_CHANGES.contains(&c))
            }
        };
        if !widens {
            problems.push(format!(
                "widening {n} ({} {} -> {}{}) is not a widening: from must be less permissive than to \
                 (deny/error < approve < allow), or from = to with change one of {}",
                w.action,
                w.from,
                w.to,
                w.change
                    .as_deref()
                    .map(|c| format!(", change {c}"))
                    .unwrap_or_default(),
                WIDENING_CHANGES.join(", ")
            ));
        }
    }
    if file
        .catalog
        .as_ref()
        .is_some_and(|c| c.reason.trim().is_empty())
    {
        problems.push("catalog: a reason is required".to_string());
    }
    if !problems.is_empty() {
        anyhow::bail!("{}: {}", path.display(), problems.join("; "));
    }
    Ok(file)
}

/// Where an input under review came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Case,
    Decision,
}

/// One input judged under both bundles, as a report example.
#[derive(Debug, Clone, Serialize)]
pub struct Example {
    pub source: Source,
    /// `data.<package>.cases["<name>"]`, or the decision id.
    pub id: String,
    pub base: Verdict,
    pub candidate: Verdict,
}

#[derive(Debug, Clone, Serialize)]
pub struct Transition {
    pub from: String,
    pub to: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<String>,
    pub count: usize,
    pub cases: usize,
    pub decisions: usize,
    /// For a widening: the reviewed list's reason when it accepts this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reviewed: Option<String>,
    pub examples: Vec<Example>,
}

impl Transition {
    pub fn label(&self) -> String {
        match &self.change {
            Some(c) => format!("{} → {} ({c})", self.from, self.to),
            None => format!("{} → {}", self.from, self.to),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Group {
    pub action: String,
    pub transitions: Vec<Transition>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BundleSummary {
    pub dir: String,
    pub revision: String,
    pub engine: &'static str,
    pub tests: usize,
    pub passed: usize,
    /// The failing tests' names (all of them).
    pub failed: Vec<String>,
}

impl BundleSummary {
    fn of(dir: &Path, review: &Review) -> BundleSummary {
        BundleSummary {
            dir: dir.display().to_string(),
            revision: review.bundle.revision().to_string(),
            engine: if review.bundle.uses_bytecode() {
                "bytecode VM"
            } else {
                "interpreter"
            },
            tests: review.tests.tests.len(),
            passed: review.tests.passed(),
            failed: review
                .tests
                .tests
                .iter()
                .filter(|t| !t.passed)
                .map(|t| t.name.clone())
                .collect(),
        }
    }
}

/// The whole review, as `--format json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub base: BundleSummary,
    pub candidate: BundleSummary,
    /// Inputs judged: case-table entries and recorded decisions.
    pub cases: usize,
    pub decisions: usize,
    /// Where the recorded decisions came from (`store`, a file name, or none).
    pub decisions_from: Option<String>,
    /// Recorded decisions not replayed, by reason.
    pub skipped: BTreeMap<String, usize>,
    pub skipped_examples: Vec<String>,
    pub widenings: Vec<Group>,
    pub narrowings: Vec<Group>,
    pub changed_reasons: Vec<Group>,
    pub unchanged: usize,
    pub unchanged_by_action: BTreeMap<String, usize>,
    /// The reviewed list that was applied, and its entries that matched nothing (stale: remove them).
    pub reviewed_file: Option<String>,
    pub reviewed_unused: Vec<ReviewedWidening>,
    /// Entries the base's list has too: accepted for an earlier change, they accept nothing in this one.
    pub reviewed_inherited: Vec<ReviewedWidening>,
    pub unreviewed_widenings: usize,
    /// The route catalogs differ: which route is which action changed, and nothing here judges that. It
    /// fails the review (exit 1) unless the reviewed list's `[catalog]` accepts it (`catalog_reviewed`).
    pub catalog_changed: bool,
    pub catalog_reviewed: Option<String>,
    /// 0, 1 or 2: see the module documentation.
    pub exit_code: u8,
    pub verdict: String,
}

#[derive(Default)]
struct Tally {
    count: usize,
    cases: usize,
    decisions: usize,
    examples: Vec<Example>,
}

/// Judges inputs under both bundles as they arrive (recorded decisions are streamed, not held).
pub struct Differ<'a> {
    base: &'a Bundle,
    candidate: &'a Bundle,
    transitions: BTreeMap<(Kind, String, String, String, Option<String>), Tally>,
    unchanged: BTreeMap<String, usize>,
    cases: usize,
    decisions: usize,
    skipped: BTreeMap<String, usize>,
    skipped_examples: Vec<String>,
}

impl<'a> Differ<'a> {
    pub fn new(base: &'a Bundle, candidate: &'a Bundle) -> Differ<'a> {
        Differ {
            base,
            candidate,
            transitions: BTreeMap::new(),
            unchanged: BTreeMap::new(),
            cases: 0,
            decisions: 0,
            skipped: BTreeMap::new(),
            skipped_examples: Vec::new(),
        }
    }

    /// Every case-table entry of both bundles: an entry both have with the same input is judged once; an
    /// entry whose input the candidate changed is judged in both versions.
    pub fn add_cases(&mut self, base: &Review, candidate: &Review) {
        let mut seen: BTreeMap<(String, String), Vec<Value>> = BTreeMap::new();
        for (side, review) in [("base", base), ("candidate", candidate)] {
            for case in &review.cases {
                let input = case.case.get("input").cloned().unwrap_or(Value::Null);
                let key = (case.package.clone(), case.name.clone());
                let inputs = seen.entry(key).or_default();
                if inputs.contains(&input) {
                    continue;
                }
                let mut id = format!("data.{}.cases[{:?}]", case.package, case.name);
                if !inputs.is_empty() {
                    id.push_str(&format!(" ({side}'s input)"));
                }
                inputs.push(input.clone());
                self.judge(Source::Case, id, &input);
            }
        }
    }

    /// One recorded decision as `tollgate decisions export` writes it (`id`, `action`, `input`, …).
    pub fn add_record(&mut self, record: &Value) {
        let id = record
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or("(no id)")
            .to_string();
        let input = record.get("input").unwrap_or(&Value::Null);
        if let Err(why) = replayable(input) {
            *self.skipped.entry(why.to_string()).or_default() += 1;
            if self.skipped_examples.len() < EXAMPLES {
                self.skipped_examples.push(format!("{id}: {why}"));
            }
            return;
        }
        self.judge(Source::Decision, id, input);
    }

    fn judge(&mut self, source: Source, id: String, input: &Value) {
        match source {
            Source::Case => self.cases += 1,
            Source::Decision => self.decisions += 1,
        }
        let action = input
            .pointer("/action/name")
            .and_then(Value::as_str)
            .unwrap_or("(no action)")
            .to_string();
        let base = Verdict::of(self.base.evaluate(input));
        let candidate = Verdict::of(self.candidate.evaluate(input));
        let (kind, change) = classify(&base, &candidate);
        if kind == Kind::Unchanged {
            *self.unchanged.entry(action).or_default() += 1;
            return;
        }
        let tally = self
            .transitions
            .entry((
                kind,
                action,
                base.outcome.clone(),
                candidate.outcome.clone(),
                change,
            ))
            .or_default();
        tally.count += 1;
        match source {
            Source::Case => tally.cases += 1,
            Source::Decision => tally.decisions += 1,
        }
        if tally.examples.len() < EXAMPLES {
            tally.examples.push(Example {
                source,
                id,
                base,
                candidate,
            });
        }
    }

    /// The report, with the reviewed list applied and the exit status decided.
    pub fn finish(
        self,
        base: BundleSummary,
        candidate: BundleSummary,
        decisions_from: Option<String>,
        reviewed: &[ReviewedWidening],
        reviewed_file: Option<String>,
    ) -> Report {
        let mut used = vec![false; reviewed.len()];
        let (mut widenings, mut narrowings, mut changed) = (Vec::new(), Vec::new(), Vec::new());
        let mut unreviewed = 0;
        for ((kind, action, from, to, change), tally) in self.transitions {
            let mut transition = Transition {
                from,
                to,
                change,
                count: tally.count,
                cases: tally.cases,
                decisions: tally.decisions,
                reviewed: None,
                examples: tally.examples,
            };
            let groups = match kind {
                Kind::Widening => {
                    let accepted = reviewed.iter().position(|r| {
                        r.action == action
                            && r.from == transition.from
                            && r.to == transition.to
                            && r.change == transition.change
                    });
                    match accepted {
                        Some(i) => {
                            used[i] = true;
                            transition.reviewed = Some(reviewed[i].reason.clone());
                        }
                        None => unreviewed += 1,
                    }
                    &mut widenings
                }
                Kind::Narrowing => &mut narrowings,
                _ => &mut changed,
            };
            push(groups, action, transition);
        }
        // Unreviewed widenings first, then by action.
        widenings.sort_by_key(|g: &Group| {
            (
                g.transitions.iter().all(|t| t.reviewed.is_some()),
                g.action.clone(),
            )
        });
        let candidate_failed = !candidate.failed.is_empty();
        let (exit_code, verdict) = if candidate_failed {
            (
                2,
                format!(
                    "the candidate's own tests fail ({} of {}): it would never be loaded",
                    candidate.failed.len(),
                    candidate.tests
                ),
            )
        } else if unreviewed > 0 {
            (
                1,
                format!(
                    "{unreviewed} unreviewed widening transition(s): accept each in the candidate's {REVIEWED_FILE} \
                     once reviewed, or change the candidate"
                ),
            )
        } else {
            (0, "no unreviewed widening".to_string())
        };
        Report {
            base,
            candidate,
            cases: self.cases,
            decisions: self.decisions,
            decisions_from,
            skipped: self.skipped,
            skipped_examples: self.skipped_examples,
            widenings,
            narrowings,
            changed_reasons: changed,
            unchanged: self.unchanged.values().sum(),
            unchanged_by_action: self.unchanged,
            reviewed_file,
            reviewed_unused: reviewed
                .iter()
                .zip(&used)
                .filter(|(_, u)| !**u)
                .map(|(r, _)| r.clone())
                .collect(),
            reviewed_inherited: Vec::new(),
            unreviewed_widenings: unreviewed,
            catalog_changed: false,
            catalog_reviewed: None,
            exit_code,
            verdict,
        }
    }
}

impl Report {
    /// Applies what the review knows about the route catalogs: a change nobody accepted in `[catalog]` is an
    /// unreviewed change (exit 1, unless the review already fails harder).
    pub fn apply_catalog(&mut self, changed: bool, review: Option<&CatalogReview>) {
        self.catalog_changed = changed;
        if !changed {
            return;
        }
        self.catalog_reviewed = review.map(|r| r.reason.clone());
        if self.catalog_reviewed.is_some() {
            return;
        }
        let why = format!(
            "the route catalog changed and {REVIEWED_FILE} does not accept it ([catalog] reason = \"…\")"
        );
        match self.exit_code {
            0 => {
                self.exit_code = 1;
                self.verdict = why;
            }
            1 => self.verdict = format!("{}; {why}", self.verdict),
            _ => {}
        }
    }
}

fn push(groups: &mut Vec<Group>, action: String, transition: Transition) {
    match groups.last_mut() {
        Some(g) if g.action == action => g.transitions.push(transition),
        _ => groups.push(Group {
            action,
            transitions: vec![transition],
        }),
    }
}

/// Whether a stored input is exactly what the policy saw. What `redact` and `audit::bounded_input` leave in
/// a stored input is recognised by its marks (`[redacted sha256:…]`, `[redacted hmac-sha256:…]`,
/// `[redacted: a secret tollgate holds]`, `…[N bytes, sha256:…]`, a body replaced by `{"omitted", "bytes",
/// "sha256"}`); the unit tests hold these against the functions that write them. An agent that sent such a
/// text itself only makes its own record skipped.
pub fn replayable(input: &Value) -> Result<(), &'static str> {
    fn marked(v: &Value) -> Option<&'static str> {
        let text = |s: &str| {
            if s.contains("[redacted ") || s.contains("[redacted:") {
                Some("redacted when recorded")
            } else if s.contains("…[") && s.contains("sha256:") {
                Some("shortened when recorded")
            } else {
                None
            }
        };
        match v {
            Value::String(s) => text(s),
            Value::Array(items) => items.iter().find_map(marked),
            Value::Object(map) => map.iter().find_map(|(k, v)| text(k).or_else(|| marked(v))),
            _ => None,
        }
    }
    let Some(obj) = input.as_object() else {
        return Err("no input recorded");
    };
    if obj.is_empty() {
        return Err("no input recorded");
    }
    if let Some(body) = input.pointer("/request/body").and_then(Value::as_object)
        && body.contains_key("omitted")
        && body.contains_key("sha256")
        && body.contains_key("bytes")
        && body.len() == 3
    {
        return Err("body omitted when recorded");
    }
    match marked(input) {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

/// Loads both bundles for review. Errors name which one failed.
pub fn load_both(base: &Path, candidate: &Path) -> anyhow::Result<(Review, Review)> {
    let timeout = std::time::Duration::from_secs(5);
    let b = crate::policy::load_for_review(base, timeout)
        .map_err(|e| anyhow::anyhow!("base bundle {}: {e}", base.display()))?;
    let c = crate::policy::load_for_review(candidate, timeout)
        .map_err(|e| anyhow::anyhow!("candidate bundle {}: {e}", candidate.display()))?;
    Ok((b, c))
}

/// Both bundles as the report names them: directory, revision, engine, test results.
pub fn summaries(
    base_dir: &Path,
    base: &Review,
    candidate_dir: &Path,
    candidate: &Review,
) -> (BundleSummary, BundleSummary) {
    (
        BundleSummary::of(base_dir, base),
        BundleSummary::of(candidate_dir, candidate),
    )
}

/// Whether the two bundles' route catalogs differ (file names or bytes). Recorded inputs keep the action they
/// were classified as, so a catalog change is not judged here: the report says so.
pub fn catalogs_differ(base: &Path, candidate: &Path) -> bool {
    fn contents(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'))
                {
                    continue;
                }
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let rel = path
                        .strip_prefix(dir)
                        .unwrap_or(&path)
                        .to_string_lossy()
                        .to_string();
                    out.push((rel, std::fs::read(&path).unwrap_or_default()));
                }
            }
        }
        out.sort();
        out
    }
    contents(&crate::policy::catalog_dir(base)) != contents(&crate::policy::catalog_dir(candidate))
}

/// The reviewed file's path in a candidate, for the report.
pub fn reviewed_path(candidate_dir: &Path) -> Option<PathBuf> {
    let p = candidate_dir.join(REVIEWED_FILE);
    p.exists().then_some(p)
}

fn charge_text(c: &Option<Charge>) -> String {
    match c {
        None => "no charge".to_string(),
        Some(c) => format!("{}¢ of {} (cap {}¢)", c.cents, c.budget, c.cap_cents),
    }
}

fn rules_text(r: &BTreeSet<String>) -> String {
    if r.is_empty() {
        "-".to_string()
    } else {
        r.iter().cloned().collect::<Vec<_>>().join(", ")
    }
}

fn example_text(e: &Example) -> String {
    let what = match e.source {
        Source::Case => "case",
        Source::Decision => "decision",
    };
    let mut s = format!(
        "{what} {}: rules [{}] → [{}]",
        e.id,
        rules_text(&e.base.rules),
        rules_text(&e.candidate.rules)
    );
    if e.base.charge == e.candidate.charge {
        if e.base.charge.is_some() {
            s.push_str(&format!("; {}", charge_text(&e.base.charge)));
        }
    } else {
        s.push_str(&format!(
            "; {} → {}",
            charge_text(&e.base.charge),
            charge_text(&e.candidate.charge)
        ));
    }
    s
}

fn sources_text(t: &Transition) -> String {
    let mut parts = Vec::new();
    if t.cases > 0 {
        parts.push(format!("{} case(s)", t.cases));
    }
    if t.decisions > 0 {
        parts.push(format!("{} recorded decision(s)", t.decisions));
    }
    parts.join(", ")
}

fn tests_text(b: &BundleSummary) -> String {
    format!("{}/{} tests pass", b.passed, b.tests)
}

impl Report {
    fn inputs_text(&self) -> String {
        let skipped: usize = self.skipped.values().sum();
        let mut s = format!(
            "{} case-table input(s), {} recorded decision(s)",
            self.cases, self.decisions
        );
        if let Some(from) = &self.decisions_from {
            s.push_str(&format!(" from {from}"));
        }
        if skipped > 0 {
            let why: Vec<String> = self
                .skipped
                .iter()
                .map(|(k, n)| format!("{n} {k}"))
                .collect();
            s.push_str(&format!(
                "; {skipped} recorded decision(s) skipped, their stored input is not what the policy saw ({})",
                why.join(", ")
            ));
        }
        s
    }

    /// The plain-text report (the default).
    pub fn text(&self) -> String {
        let mut out = String::new();
        let line = |out: &mut String, s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line(
            &mut out,
            format!(
                "policy diff: base {} (revision {}) → candidate {} (revision {})",
                self.base.dir, self.base.revision, self.candidate.dir, self.candidate.revision
            ),
        );
        line(
            &mut out,
            format!(
                "tests: base {}; candidate {}",
                tests_text(&self.base),
                tests_text(&self.candidate)
            ),
        );
        for f in &self.candidate.failed {
            line(&mut out, format!("  FAIL (candidate) {f}"));
        }
        for f in &self.base.failed {
            line(&mut out, format!("  FAIL (base) {f}"));
        }
        line(&mut out, format!("judged: {}", self.inputs_text()));
        if self.decisions > 0 {
            line(
                &mut out,
                "recorded decisions are judged with the budget state (input.spend) recorded at decision time"
                    .to_string(),
            );
        }
        for (title, groups) in [
            ("WIDENINGS", &self.widenings),
            ("NARROWINGS", &self.narrowings),
            (
                "CHANGED REASONS (same outcome and charge)",
                &self.changed_reasons,
            ),
        ] {
            let n: usize = groups
                .iter()
                .flat_map(|g| &g.transitions)
                .map(|t| t.count)
                .sum();
            line(&mut out, String::new());
            line(&mut out, format!("{title}: {n} input(s)"));
            for g in groups {
                line(&mut out, format!("  {}", g.action));
                for t in &g.transitions {
                    let status = match (&t.reviewed, title == "WIDENINGS") {
                        (Some(r), _) => format!("  reviewed: {r}"),
                        (None, true) => "  UNREVIEWED".to_string(),
                        (None, false) => String::new(),
                    };
                    line(
                        &mut out,
                        format!(
                            "    {}  ×{} ({}){status}",
                            t.label(),
                            t.count,
                            sources_text(t)
                        ),
                    );
                    for e in &t.examples {
                        line(&mut out, format!("      {}", example_text(e)));
                    }
                }
            }
        }
        line(&mut out, String::new());
        line(&mut out, format!("UNCHANGED: {} input(s)", self.unchanged));
        for (action, n) in &self.unchanged_by_action {
            line(&mut out, format!("  {n:>6}  {action}"));
        }
        if !self.skipped_examples.is_empty() {
            line(&mut out, String::new());
            line(&mut out, "SKIPPED (examples):".to_string());
            for s in &self.skipped_examples {
                line(&mut out, format!("  {s}"));
            }
        }
        for r in &self.reviewed_unused {
            line(
                &mut out,
                format!(
                    "note: {REVIEWED_FILE} accepts {} {} → {}{} but nothing widens that way (stale entry?)",
                    r.action,
                    r.from,
                    r.to,
                    r.change
                        .as_deref()
                        .map(|c| format!(" ({c})"))
                        .unwrap_or_default()
                ),
            );
        }
        if self.catalog_changed {
            line(&mut out, CATALOG_NOTE.to_string());
            if let Some(r) = &self.catalog_reviewed {
                line(&mut out, format!("  reviewed: {r}"));
            }
        }
        for r in &self.reviewed_inherited {
            line(
                &mut out,
                format!(
                    "note: {REVIEWED_FILE} entry {} {} → {} is in the base's list too: it was accepted for an \
                     earlier change and accepts nothing in this one (delete it)",
                    r.action, r.from, r.to
                ),
            );
        }
        line(&mut out, String::new());
        line(
            &mut out,
            format!("result: exit {}: {}", self.exit_code, self.verdict),
        );
        out
    }

    /// A pull-request comment: a summary table and the details in collapsible sections.
    pub fn markdown(&self) -> String {
        let md = |s: &str| {
            s.replace('|', "\\|")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        };
        let mut out = String::new();
        let icon = match self.exit_code {
            0 => "✅",
            1 => "⚠️",
            _ => "❌",
        };
        out.push_str(&format!(
            "### {icon} tollgate policy diff: {}\n\n",
            md(&self.verdict)
        ));
        out.push_str("| | base | candidate |\n|---|---|---|\n");
        out.push_str(&format!(
            "| revision | `{}` | `{}` |\n",
            self.base.revision, self.candidate.revision
        ));
        out.push_str(&format!(
            "| tests | {} | {} |\n",
            tests_text(&self.base),
            tests_text(&self.candidate)
        ));
        let count = |groups: &Vec<Group>| -> (usize, usize) {
            let ts: Vec<&Transition> = groups.iter().flat_map(|g| &g.transitions).collect();
            (ts.len(), ts.iter().map(|t| t.count).sum())
        };
        out.push_str("\n| change | transitions | inputs |\n|---|---|---|\n");
        let (wt, wi) = count(&self.widenings);
        out.push_str(&format!(
            "| **widenings** ({} unreviewed) | {wt} | {wi} |\n",
            self.unreviewed_widenings
        ));
        let (nt, ni) = count(&self.narrowings);
        out.push_str(&format!("| narrowings | {nt} | {ni} |\n"));
        let (ct, ci) = count(&self.changed_reasons);
        out.push_str(&format!("| changed reasons | {ct} | {ci} |\n"));
        out.push_str(&format!("| unchanged | | {} |\n", self.unchanged));
        out.push_str(&format!("\nJudged: {}.", md(&self.inputs_text())));
        if self.decisions > 0 {
            out.push_str(
                " Recorded decisions are judged with the budget state recorded at decision time.",
            );
        }
        out.push('\n');
        if !self.candidate.failed.is_empty() {
            out.push_str("\n<details open><summary>Failing candidate tests</summary>\n\n");
            for f in self.candidate.failed.iter().take(MARKDOWN_FAILED) {
                out.push_str(&format!("- `{}`\n", f.replace('`', "'")));
            }
            if self.candidate.failed.len() > MARKDOWN_FAILED {
                out.push_str(&format!(
                    "- … and {} more\n",
                    self.candidate.failed.len() - MARKDOWN_FAILED
                ));
            }
            out.push_str("\n</details>\n");
        }
        for (title, groups, open) in [
            ("Widenings", &self.widenings, true),
            ("Narrowings", &self.narrowings, false),
            (
                "Changed reasons (same outcome and charge)",
                &self.changed_reasons,
                false,
            ),
        ] {
            if groups.is_empty() {
                continue;
            }
            out.push_str(&format!("\n#### {title}\n\n"));
            out.push_str("| action | transition | inputs | reviewed |\n|---|---|---|---|\n");
            for g in groups.iter() {
                for t in &g.transitions {
                    let reviewed = match (&t.reviewed, title == "Widenings") {
                        (Some(r), _) => format!("✅ {}", md(r)),
                        (None, true) => "**no**".to_string(),
                        (None, false) => String::new(),
                    };
                    out.push_str(&format!(
                        "| `{}` | {} | {} ({}) | {reviewed} |\n",
                        g.action,
                        md(&t.label()),
                        t.count,
                        sources_text(t)
                    ));
                }
            }
            out.push_str(&format!(
                "\n<details{}><summary>{title}: examples</summary>\n\n",
                if open { " open" } else { "" }
            ));
            for g in groups.iter() {
                for t in &g.transitions {
                    out.push_str(&format!("- `{}` {}\n", g.action, md(&t.label())));
                    for e in &t.examples {
                        out.push_str(&format!("  - {}\n", md(&example_text(e))));
                    }
                }
            }
            out.push_str("\n</details>\n");
        }
        if !self.unchanged_by_action.is_empty() {
            out.push_str("\n<details><summary>Unchanged, by action</summary>\n\n| action | inputs |\n|---|---|\n");
            for (action, n) in &self.unchanged_by_action {
                out.push_str(&format!("| `{action}` | {n} |\n"));
            }
            out.push_str("\n</details>\n");
        }
        if !self.reviewed_unused.is_empty() {
            out.push_str(&format!(
                "\nStale entries in `{REVIEWED_FILE}` (nothing widens that way): "
            ));
            let names: Vec<String> = self
                .reviewed_unused
                .iter()
                .map(|r| format!("`{} {} → {}`", r.action, r.from, r.to))
                .collect();
            out.push_str(&names.join(", "));
            out.push('\n');
        }
        if self.catalog_changed {
            out.push_str(&format!("\n⚠️ {}", md(CATALOG_NOTE)));
            match &self.catalog_reviewed {
                Some(r) => out.push_str(&format!(" Reviewed: ✅ {}\n", md(r))),
                None => out.push_str(" Reviewed: **no**\n"),
            }
        }
        if !self.reviewed_inherited.is_empty() {
            let names: Vec<String> = self
                .reviewed_inherited
                .iter()
                .map(|r| format!("`{} {} → {}`", r.action, r.from, r.to))
                .collect();
            out.push_str(&format!(
                "\nEntries of `{REVIEWED_FILE}` already in the base (accepted for an earlier change; they accept \
                 nothing here, delete them): {}\n",
                names.join(", ")
            ));
        }
        if out.len() > MARKDOWN_MAX {
            // GitHub refuses comments over 65,536 characters: keep the summary, cut the details.
            let mut cut = MARKDOWN_MAX;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            let cut = out[..cut].rfind('\n').unwrap_or(cut);
            out.truncate(cut);
            out.push_str(
                "\n\n</details>\n\n… report cut to fit a comment: run `tollgate policy diff --format text` (or `json`) for all of it.\n",
            );
        }
        out
    }

    pub fn json(&self) -> Value {
        serde_json::to_value(self).unwrap_or_else(|e| json!({"error": e.to_string()}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn v(outcome: &str, rules: &[&str], charge: Option<(i64, &str, i64)>) -> Verdict {
        Verdict {
            outcome: outcome.to_string(),
            rules: rules.iter().map(|r| r.to_string()).collect(),
            charge: charge.map(|(cents, budget, cap_cents)| Charge {
                cents,
                budget: budget.to_string(),
                cap_cents,
            }),
        }
    }

    #[test]
    fn outcome_transitions_are_classified_by_permissiveness() {
        use Kind::*;
        let cases = [
            ("deny", "allow", Widening),
            ("deny", "approve", Widening),
            ("approve", "allow", Widening),
            ("error", "allow", Widening),
            ("error", "approve", Widening),
            ("allow", "deny", Narrowing),
            ("allow", "approve", Narrowing),
            ("approve", "deny", Narrowing),
            ("allow", "error", Narrowing),
            ("deny", "error", ChangedReasons),
            ("error", "deny", ChangedReasons),
        ];
        for (from, to, kind) in cases {
            assert_eq!(
                classify(&v(from, &["r"], None), &v(to, &["r"], None)),
                (kind, None),
                "{from} -> {to}"
            );
        }
    }

    #[test]
    fn charges_widen_and_narrow_where_the_request_may_go_ahead() {
        let base = v("allow", &[], Some((1000, "agent-provider-month", 10000)));
        let with = |c: Option<(i64, &str, i64)>| v("allow", &[], c);
        let class = |c| classify(&base, &with(c));
        assert_eq!(
            class(Some((900, "agent-provider-month", 10000))),
            (Kind::Widening, Some("lower-charge".into()))
        );
        assert_eq!(class(None), (Kind::Widening, Some("no-charge".into())));
        assert_eq!(
            class(Some((1000, "agent-provider-month", 20000))),
            (Kind::Widening, Some("higher-cap".into()))
        );
        assert_eq!(
            class(Some((1000, "team-provider-month", 10000))),
            (Kind::Widening, Some("other-budget".into()))
        );
        // Any widening part makes the whole a widening.
        assert_eq!(
            class(Some((2000, "agent-provider-month", 20000))),
            (Kind::Widening, Some("higher-cap".into()))
        );
        assert_eq!(
            class(Some((900, "agent-provider-month", 20000))),
            (Kind::Widening, Some("lower-charge+higher-cap".into()))
        );
        assert_eq!(
            class(Some((1100, "agent-provider-month", 9000))),
            (Kind::Narrowing, Some("higher-charge+lower-cap".into()))
        );
        assert_eq!(
            classify(&with(None), &base),
            (Kind::Narrowing, Some("new-charge".into()))
        );
        assert_eq!(
            class(Some((1000, "agent-provider-month", 10000))),
            (Kind::Unchanged, None)
        );
        // An approve's charge counts too (the human approves that amount).
        let held = v("approve", &["spend.threshold"], Some((6000, "b", 10000)));
        assert_eq!(
            classify(
                &held,
                &v("approve", &["spend.threshold"], Some((5000, "b", 10000)))
            ),
            (Kind::Widening, Some("lower-charge".into()))
        );
        // A deny's charge does not.
        assert_eq!(
            classify(
                &v("deny", &["x"], Some((1, "b", 1))),
                &v("deny", &["x"], None)
            ),
            (Kind::Unchanged, None)
        );
    }

    #[test]
    fn other_rules_with_the_same_outcome_are_changed_reasons() {
        assert_eq!(
            classify(&v("deny", &["a"], None), &v("deny", &["b"], None)),
            (Kind::ChangedReasons, None)
        );
        assert_eq!(
            classify(&v("deny", &["a"], None), &v("deny", &["a"], None)),
            (Kind::Unchanged, None)
        );
        // The outcome wins over the rules.
        assert_eq!(
            classify(&v("approve", &["a"], None), &v("allow", &[], None)),
            (Kind::Widening, None)
        );
    }

    fn reviewed(text: &str) -> anyhow::Result<Reviewed> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(REVIEWED_FILE), text).unwrap();
        read_reviewed(dir.path())
    }

    #[test]
    fn the_reviewed_list_is_strict() {
        let ok = reviewed(
            "[[widening]]\naction = \"stripe.payment.create\"\nfrom = \"approve\"\nto = \"allow\"\nreason = \"SEC-1\"\n\n\
             [[widening]]\naction = \"a\"\nfrom = \"allow\"\nto = \"allow\"\nchange = \"lower-charge\"\nreason = \"r\"\n",
        )
        .unwrap();
        assert_eq!(ok.widening.len(), 2);
        assert_eq!(ok.catalog, None);
        let catalog =
            reviewed("[catalog]\nreason = \"stripe.yaml: payment links catalogued (SEC-7)\"\n")
                .unwrap();
        assert!(catalog.catalog.is_some());
        assert!(reviewed("[catalog]\nreason = \"\"\n").is_err());
        assert!(
            reviewed(
                "[[widening]]\naction = \"a\"\nfrom = \"allow\"\nto = \"deny\"\nreason = \"r\"\n"
            )
            .is_err(),
            "a narrowing is not a widening"
        );
        assert!(
            reviewed(
                "[[widening]]\naction = \"a\"\nfrom = \"deny\"\nto = \"allow\"\nreason = \" \"\n"
            )
            .is_err(),
            "a reason is required"
        );
        assert!(
            reviewed("[[widening]]\naction = \"a\"\nfrom = \"deny\"\nto = \"allow\"\nreason = \"r\"\nextra = 1\n")
                .is_err(),
            "unknown keys are refused"
        );
        assert!(
            reviewed("[[widening]]\naction = \"a\"\nfrom = \"allow\"\nto = \"allow\"\nchange = \"higher-charge\"\nreason = \"r\"\n")
                .is_err()
        );
        assert!(reviewed("not toml [").is_err());
        let none = tempfile::tempdir().unwrap();
        assert_eq!(read_reviewed(none.path()).unwrap(), Reviewed::default());
    }

    #[test]
    fn stored_inputs_that_were_redacted_or_shortened_are_not_replayable() {
        let input = json!({
            "agent": {"name": "a"}, "action": {"name": "stripe.payment.create"},
            "request": {"provider": "stripe", "body": {"amount": "2000", "currency": "usd"}},
        });
        assert_eq!(replayable(&input), Ok(()));
        assert!(replayable(&Value::Null).is_err());
        assert!(replayable(&json!({})).is_err());

        // What `redact` stores in place of a secret, by name and by value detector.
        let redactor = crate::redact::Redactor::from_data(None).unwrap();
        let mut secret = input.clone();
        secret["request"]["body"]["password"] = json!("hunter2-hunter2");
        let stored = redactor.redact_input("stripe", &secret);
        assert!(matches!(stored, Cow::Owned(_)));
        assert_eq!(replayable(&stored), Err("redacted when recorded"));
        let mut card = input.clone();
        card["request"]["body"]["card"] = json!({"number": "4242424242424242"});
        assert_eq!(
            replayable(&redactor.redact_input("stripe", &card)),
            Err("redacted when recorded")
        );

        // What `proxy` stores in place of tollgate's own secrets (scrub_own_secrets), wherever an agent put one.
        let mut own = input.clone();
        own["run"] = json!({"id": "[redacted: a secret tollgate holds]"});
        assert_eq!(replayable(&own), Err("redacted when recorded"));

        // What `audit::bounded_input` stores of long strings and of an oversized body.
        let mut long = input.clone();
        long["request"]["body"]["description"] =
            json!("x".repeat(crate::audit::MAX_STORED_STRING + 1));
        let stored: Value =
            serde_json::from_str(&crate::audit::bounded_input(Cow::Owned(long))).unwrap();
        assert_eq!(replayable(&stored), Err("shortened when recorded"));
        let mut big = input.clone();
        big["request"]["body"]["items"] = json!(vec!["y".repeat(1000); 100]);
        let stored: Value =
            serde_json::from_str(&crate::audit::bounded_input(Cow::Owned(big))).unwrap();
        assert_eq!(replayable(&stored), Err("body omitted when recorded"));
    }
}
