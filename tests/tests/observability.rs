//! The SRE artifacts in `deploy/` against the real binary: the Grafana dashboard
//! (`deploy/grafana/dashboards/tollgate.json`), the Prometheus alerting rules (`deploy/prometheus/alerts.yaml`)
//! and the scrape configuration (`deploy/prometheus/prometheus.yml`).
//!
//! A dashboard or alert that queries a metric the binary does not export shows "No data" or never fires, and
//! nobody notices until the incident. So the end-to-end test starts the real `tollgate`, drives traffic that
//! touches every metric family (allowed reads, a charge, an approval round trip, a budget refusal, a denied
//! unknown write, a 401, an upstream timeout, a freeze, a shadow bundle that disagrees, a good and a failed
//! policy reload), scrapes `/metrics`, and checks every query in the artifacts against what was exported:
//! each `tollgate_*` family exists, each label a query matches or groups by exists on it, and each label value
//! it matches literally occurs. A second test checks the artifacts' structure without starting anything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tollgate_tests::tollgate::{ADMIN_TOKEN, Tollgate, policy_dir_with};
use tollgate_tests::{TestDatabase, Upstream};

/// Reads pass; writes to routes outside the catalog are denied; Stripe payment intents are charged their
/// `amount` against a $100 agent-provider-month cap, and a charge above $50 needs a human.
const OBSERVED_POLICY: &str = r#"package tollgate

amount := to_number(input.request.body.amount) if input.action.name == "stripe.payment.create"

charge := {"cents": amount, "budget": "agent-provider-month", "cap_cents": 10000} if amount >= 0

decision := {"outcome": "allow", "reasons": []} if {
	input.action.risk == "read"
} else := {"outcome": "deny", "reasons": [{"rule": "observed.unknown_write", "message": "writes to unknown routes are denied"}]} if {
	input.action.name == "unknown"
} else := {"outcome": "deny", "reasons": [{"rule": "observed.engines", "message": "only the bytecode VM denies this"}]} if {
	input.action.name == "stripe.customer.create"
	missing := input.request.body.missing
	not missing == "ok"
} else := {"outcome": "approve", "reasons": [{"rule": "observed.large_charge", "message": "charges above $50 need a human"}], "charge": charge} if {
	amount > 5000
} else := {"outcome": "allow", "reasons": [], "charge": charge} if {
	amount >= 0
} else := {"outcome": "allow", "reasons": []}
"#;

/// The shadow bundle: denies every write, so it disagrees with the live bundle on allowed charges.
const SHADOW_POLICY: &str = "package tollgate\n\n\
    decision := {\"outcome\": \"allow\"} if input.request.method == \"GET\"\n\
    decision := {\"outcome\": \"deny\", \"reasons\": [{\"rule\": \"shadow.no_writes\", \"message\": \"writes are off\"}]} if input.request.method != \"GET\"\n";

/// Labels Prometheus adds to every scraped series (target labels); queries may match and group by them.
const TARGET_LABELS: &[&str] = &["instance", "job"];

/// The scrape job the example configuration defines and the alerts select on.
const SCRAPE_JOB: &str = "tollgate";

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn dashboard() -> Value {
    let path = deploy("grafana/dashboards/tollgate.json");
    serde_json::from_str(&read(&path))
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
}

fn yaml(path: &str) -> Value {
    let path = deploy(path);
    yaml_serde::from_str(&read(&path))
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
}

fn alerts() -> Value {
    yaml("prometheus/alerts.yaml")
}

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
}

fn array<'a>(v: &'a Value, key: &str, what: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("{what}: `{key}` must be a list"))
}

/// Every panel, with the panels of collapsed rows (which Grafana keeps inside the row) included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in array(dashboard, "panels", "dashboard") {
        out.push(panel);
        if let Some(nested) = panel.get("panels").and_then(Value::as_array) {
            out.extend(nested);
        }
    }
    out
}

/// (where, PromQL) for every query of the dashboard: each panel target and each query template variable.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in panels(dashboard) {
        let title = text(panel, "title").unwrap_or("(untitled)");
        for target in panel
            .get("targets")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let expr = text(target, "expr")
                .unwrap_or_else(|| panic!("panel {title:?}: a target without an expr"));
            out.push((format!("dashboard panel {title:?}"), expr.to_string()));
        }
    }
    for var in array(&dashboard["templating"], "list", "dashboard templating") {
        if var["type"] == "query" {
            let query = var["query"]
                .as_str()
                .or_else(|| var["query"]["query"].as_str())
                .unwrap_or_else(|| panic!("template variable {}: no query", var["name"]));
            // label_values(<selector>, <label>) → the selector.
            let selector = query
                .strip_prefix("label_values(")
                .and_then(|rest| rest.rsplit_once(','))
                .map_or(query, |(selector, _)| selector);
            out.push((
                format!("dashboard variable {}", var["name"]),
                selector.to_string(),
            ));
        }
    }
    out
}

/// (alert name, PromQL) for every rule of the alerts file.
fn alert_queries(alerts: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for group in array(alerts, "groups", "alerts.yaml") {
        for rule in array(group, "rules", "alert group") {
            let name = text(rule, "alert").unwrap_or("(unnamed)");
            let expr = text(rule, "expr").unwrap_or_else(|| panic!("alert {name}: no expr"));
            out.push((format!("alert {name}"), expr.to_string()));
        }
    }
    out
}

// ---- a small PromQL scanner: metric names, selectors and grouping labels; enough for these artifacts ----

#[derive(Debug)]
struct Matcher {
    label: String,
    op: String,
    value: String,
}

#[derive(Debug)]
struct Selector {
    metric: String,
    matchers: Vec<Matcher>,
}

#[derive(Debug, Default)]
struct Scanned {
    selectors: Vec<Selector>,
    /// Labels in `by`, `without`, `on`, `ignoring`, `group_left` and `group_right` clauses.
    grouping: Vec<String>,
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Every `tollgate_[a-z_]+` in the text (strings included), as metric families: the `_bucket`, `_sum` and
/// `_count` series of a histogram belong to the histogram's family.
fn families_in(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    let mut offset = 0;
    while let Some(at) = rest.find("tollgate_") {
        let start = offset + at;
        let preceded_by_ident = expr[..start].chars().next_back().is_some_and(is_ident);
        let name: String = expr[start..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        if !preceded_by_ident {
            out.insert(family_of(&name).to_string());
        }
        offset = start + name.len().max(1);
        rest = &expr[offset..];
    }
    out
}

fn family_of(series: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| series.strip_suffix(suffix))
        .unwrap_or(series)
}

/// Parses `label op "value", …}` starting after a `{`; leaves `i` after the `}`.
fn matchers(chars: &[char], i: &mut usize) -> Result<Vec<Matcher>, String> {
    let mut out = Vec::new();
    loop {
        while chars
            .get(*i)
            .is_some_and(|c| c.is_whitespace() || *c == ',')
        {
            *i += 1;
        }
        match chars.get(*i) {
            None => return Err("unterminated `{`".into()),
            Some('}') => {
                *i += 1;
                return Ok(out);
            }
            Some(_) => {}
        }
        let start = *i;
        while chars.get(*i).copied().is_some_and(is_ident) {
            *i += 1;
        }
        let label: String = chars[start..*i].iter().collect();
        if label.is_empty() {
            return Err(format!("expected a label name at {}", *i));
        }
        while chars.get(*i).is_some_and(|c| c.is_whitespace()) {
            *i += 1;
        }
        let op_start = *i;
        while chars.get(*i).is_some_and(|c| matches!(c, '=' | '!' | '~')) {
            *i += 1;
        }
        let op: String = chars[op_start..*i].iter().collect();
        if !matches!(op.as_str(), "=" | "!=" | "=~" | "!~") {
            return Err(format!("bad matcher operator {op:?} after {label}"));
        }
        while chars.get(*i).is_some_and(|c| c.is_whitespace()) {
            *i += 1;
        }
        let value = string(chars, i)?;
        out.push(Matcher { label, op, value });
    }
}

/// Parses a quoted string at `i` ("…", '…' or `…`, backslash escapes in the first two).
fn string(chars: &[char], i: &mut usize) -> Result<String, String> {
    let quote = match chars.get(*i) {
        Some(q @ ('"' | '\'' | '`')) => *q,
        other => return Err(format!("expected a quoted string, found {other:?}")),
    };
    *i += 1;
    let mut out = String::new();
    loop {
        match chars.get(*i) {
            None => return Err("unterminated string".into()),
            Some(c) if *c == quote => {
                *i += 1;
                return Ok(out);
            }
            Some('\\') if quote != '`' => {
                let escaped = chars.get(*i + 1).ok_or("dangling escape")?;
                out.push(match escaped {
                    'n' => '\n',
                    other => *other,
                });
                *i += 2;
            }
            Some(c) => {
                out.push(*c);
                *i += 1;
            }
        }
    }
}

fn scan(expr: &str) -> Result<Scanned, String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Scanned::default();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            string(&chars, &mut i)?;
        } else if c == '#' {
            // A comment runs to the end of the line.
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c.is_ascii_digit() {
            // Numbers and durations (0.99, 5m, 1e3).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if is_ident(c) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let next = chars.get(j).copied();
            let grouping = matches!(
                word.as_str(),
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
            );
            if grouping && next == Some('(') {
                let close = chars[j..]
                    .iter()
                    .position(|c| *c == ')')
                    .ok_or_else(|| format!("unterminated `{word} (`"))?;
                let list: String = chars[j + 1..j + close].iter().collect();
                out.grouping.extend(
                    list.split(',')
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(str::to_string),
                );
                i = j + close + 1;
            } else if next == Some('{') {
                i = j + 1;
                let matchers = matchers(&chars, &mut i)?;
                out.selectors.push(Selector {
                    metric: word,
                    matchers,
                });
            } else if word.starts_with("tollgate_") {
                out.selectors.push(Selector {
                    metric: word,
                    matchers: Vec::new(),
                });
            }
        } else {
            i += 1;
        }
    }
    Ok(out)
}

// ---- the Prometheus text exposition ----

#[derive(Debug, Default)]
struct Family {
    kind: String,
    /// Every label name on any of its series (`le` for histogram buckets).
    labels: BTreeSet<String>,
    /// label → every value it has on some series.
    values: BTreeMap<String, BTreeSet<String>>,
}

fn exposition(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                families.entry(name.to_string()).or_default().kind = kind.to_string();
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let chars: Vec<char> = line.chars().collect();
        let end = chars
            .iter()
            .position(|c| *c == '{' || c.is_whitespace())
            .unwrap_or(chars.len());
        let series: String = chars[..end].iter().collect();
        let labels = if chars.get(end) == Some(&'{') {
            let mut i = end + 1;
            matchers(&chars, &mut i).unwrap_or_else(|e| panic!("metrics line {line:?}: {e}"))
        } else {
            Vec::new()
        };
        let name = if families.contains_key(&series) {
            series.as_str()
        } else {
            family_of(&series)
        };
        let family = families.entry(name.to_string()).or_default();
        for m in labels {
            family.labels.insert(m.label.clone());
            family.values.entry(m.label).or_default().insert(m.value);
        }
    }
    families
}

/// A matcher value that names label values literally: no template variable, no regex beyond `a|b|c`.
fn literal_alternatives(m: &Matcher) -> Option<Vec<&str>> {
    if m.value.contains('$') {
        return None;
    }
    match m.op.as_str() {
        "=" | "!=" => Some(vec![m.value.as_str()]),
        _ if m
            .value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '|') =>
        {
            Some(m.value.split('|').collect())
        }
        _ => None,
    }
}

/// Everything wrong with one query against the exported families.
fn check_query(
    exported: &BTreeMap<String, Family>,
    origin: &str,
    expr: &str,
    problems: &mut Vec<String>,
) {
    let families = families_in(expr);
    let scanned = match scan(expr) {
        Ok(s) => s,
        Err(e) => {
            problems.push(format!("{origin}: cannot scan {expr:?}: {e}"));
            return;
        }
    };
    // Besides tollgate's own metrics, only Prometheus' `up` (scrape health) is expected.
    if families.is_empty() && !scanned.selectors.iter().any(|s| s.metric == "up") {
        problems.push(format!("{origin}: queries no tollgate_ metric: {expr}"));
    }
    for family in &families {
        if !exported.contains_key(family) {
            problems.push(format!(
                "{origin}: `{family}` is not exported by the binary (no `# TYPE {family}` line)"
            ));
        }
    }
    let mut known: BTreeSet<&str> = TARGET_LABELS.iter().copied().collect();
    for family in &families {
        if let Some(f) = exported.get(family) {
            known.extend(f.labels.iter().map(String::as_str));
        }
    }
    for label in &scanned.grouping {
        if !known.contains(label.as_str()) {
            problems.push(format!(
                "{origin}: groups by `{label}`, which none of {families:?} has"
            ));
        }
    }
    for selector in &scanned.selectors {
        // Other metrics (`up`) are Prometheus' own.
        let Some(family) = exported.get(family_of(&selector.metric)) else {
            continue; // reported above
        };
        for m in &selector.matchers {
            if TARGET_LABELS.contains(&m.label.as_str()) {
                continue;
            }
            if !family.labels.contains(&m.label) {
                problems.push(format!(
                    "{origin}: `{}` has no label `{}` (it has {:?})",
                    selector.metric, m.label, family.labels
                ));
                continue;
            }
            for value in literal_alternatives(m).into_iter().flatten() {
                if !family.values[&m.label].contains(value) {
                    problems.push(format!(
                        "{origin}: no `{}` series has {}={value:?} (seen: {:?})",
                        selector.metric, m.label, family.values[&m.label]
                    ));
                }
            }
        }
    }
}

// ---- the structure of the artifacts ----

#[test]
fn the_dashboard_alerts_and_scrape_config_are_well_formed() {
    let mut problems = Vec::new();

    // Dashboard.
    let d = dashboard();
    if d["schemaVersion"].as_u64().unwrap_or(0) < 36 {
        problems.push(format!(
            "dashboard schemaVersion {} < 36",
            d["schemaVersion"]
        ));
    }
    for key in ["uid", "title"] {
        if text(&d, key).is_none() {
            problems.push(format!("dashboard has no {key}"));
        }
    }
    let vars: BTreeMap<&str, &Value> = array(&d["templating"], "list", "dashboard templating")
        .iter()
        .filter_map(|v| Some((v["name"].as_str()?, v)))
        .collect();
    match vars.get("datasource") {
        Some(v) if v["type"] == "datasource" && v["query"] == "prometheus" => {}
        other => problems.push(format!(
            "no Prometheus `datasource` template variable: {other:?}"
        )),
    }
    for name in ["instance", "provider"] {
        match vars.get(name) {
            Some(v) if v["type"] == "query" => {}
            other => problems.push(format!("no `{name}` query template variable: {other:?}")),
        }
    }
    let mut ids = BTreeSet::new();
    let mut titles = BTreeSet::new();
    let mut graphs = 0;
    for panel in panels(&d) {
        let title = text(panel, "title").unwrap_or("");
        if title.is_empty() {
            problems.push(format!("a panel without a title: id {}", panel["id"]));
        }
        if !ids.insert(panel["id"].as_u64().unwrap_or(0)) || panel["id"].as_u64().is_none() {
            problems.push(format!("panel {title:?}: missing or duplicate id"));
        }
        if ["x", "y", "w", "h"]
            .iter()
            .any(|k| panel["gridPos"][k].as_u64().is_none())
        {
            problems.push(format!("panel {title:?}: incomplete gridPos"));
        }
        if panel["type"] == "row" {
            continue;
        }
        graphs += 1;
        if !titles.insert(title) {
            problems.push(format!("two panels are titled {title:?}"));
        }
        if text(panel, "description").is_none_or(|d| d.len() < 40) {
            problems.push(format!(
                "panel {title:?}: needs a description an SRE can act on"
            ));
        }
        if panel["datasource"]["uid"] != "${datasource}" {
            problems.push(format!(
                "panel {title:?}: datasource is not the ${{datasource}} variable"
            ));
        }
        let targets = panel
            .get("targets")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("panel {title:?}: no targets"));
        }
        let mut refs = BTreeSet::new();
        for t in targets {
            let Some(expr) = text(t, "expr") else {
                problems.push(format!("panel {title:?}: a target without an expr"));
                continue;
            };
            if !text(t, "refId").is_some_and(|r| refs.insert(r)) {
                problems.push(format!(
                    "panel {title:?}: missing or duplicate refId on {expr}"
                ));
            }
            if t.get("datasource")
                .is_some_and(|ds| ds["uid"] != "${datasource}")
            {
                problems.push(format!("panel {title:?}: a target with its own datasource"));
            }
            // Every selector honours the instance variable, so the dashboard can focus on one replica.
            match scan(expr) {
                Ok(s) => {
                    for sel in s
                        .selectors
                        .iter()
                        .filter(|s| s.metric.starts_with("tollgate_"))
                    {
                        let filtered = sel
                            .matchers
                            .iter()
                            .any(|m| m.label == "instance" && m.value == "$instance");
                        if !filtered {
                            problems.push(format!(
                                "panel {title:?}: `{}` ignores $instance in {expr}",
                                sel.metric
                            ));
                        }
                    }
                }
                Err(e) => problems.push(format!("panel {title:?}: cannot scan {expr:?}: {e}")),
            }
        }
    }
    if graphs < 10 {
        problems.push(format!("only {graphs} panels"));
    }

    // Alerts.
    let a = alerts();
    let mut names = BTreeSet::new();
    let mut rules = 0;
    for group in array(&a, "groups", "alerts.yaml") {
        let group_name = text(group, "name").unwrap_or("");
        if group_name.is_empty() {
            problems.push("an alert group without a name".into());
        }
        for rule in array(group, "rules", "alert group") {
            rules += 1;
            let Some(name) = text(rule, "alert") else {
                problems.push(format!(
                    "group {group_name}: a rule without `alert` (recording rules do not belong here)"
                ));
                continue;
            };
            if !names.insert(name.to_string()) {
                problems.push(format!("alert {name} is defined twice"));
            }
            match text(rule, "expr") {
                Some(expr) => {
                    if let Err(e) = scan(expr) {
                        problems.push(format!("alert {name}: cannot scan expr: {e}"));
                    }
                }
                None => problems.push(format!("alert {name}: no expr")),
            }
            match rule["labels"]["severity"].as_str() {
                Some("critical" | "warning" | "info") => {}
                other => problems.push(format!(
                    "alert {name}: labels.severity is {other:?}, not critical/warning/info"
                )),
            }
            for annotation in ["summary", "description", "runbook"] {
                if text(&rule["annotations"], annotation).is_none() {
                    problems.push(format!("alert {name}: no annotations.{annotation}"));
                }
            }
            if let Some(duration) = rule.get("for") {
                let ok = duration.as_str().is_some_and(|s| {
                    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
                    !digits.is_empty()
                        && digits.chars().all(|c| c.is_ascii_digit())
                        && matches!(&s[digits.len()..], "s" | "m" | "h" | "d")
                });
                if !ok {
                    problems.push(format!("alert {name}: `for: {duration}` is not a duration"));
                }
            }
            // Rules that select on the scrape job use the job the example configuration defines.
            if let Ok(s) = scan(rule["expr"].as_str().unwrap_or("")) {
                for m in s.selectors.iter().flat_map(|s| &s.matchers) {
                    if m.label == "job" && m.value != SCRAPE_JOB {
                        problems.push(format!(
                            "alert {name}: selects job {:?}, but the scrape job is {SCRAPE_JOB:?}",
                            m.value
                        ));
                    }
                }
            }
        }
    }
    if rules == 0 {
        problems.push("alerts.yaml has no rules".into());
    }
    for required in [
        "TollgateStoreDown",
        "TollgateAuditErrors",
        "TollgateAuditQueueBacklog",
        "TollgatePolicyReloadFailed",
        "TollgateRefusalRateSpike",
        "TollgateBudgetCapReached",
        "TollgateApprovalsWaiting",
        "TollgatePolicyRevisionMismatch",
        "TollgateFrozen",
    ] {
        if !names.contains(required) {
            problems.push(format!("alerts.yaml lacks {required}"));
        }
    }

    // Scrape configuration.
    let p = yaml("prometheus/prometheus.yml");
    let rule_files: Vec<&str> = array(&p, "rule_files", "prometheus.yml")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    if !rule_files.contains(&"alerts.yaml") {
        problems.push(format!(
            "prometheus.yml does not load alerts.yaml: {rule_files:?}"
        ));
    }
    let job = array(&p, "scrape_configs", "prometheus.yml")
        .iter()
        .find(|j| j["job_name"] == SCRAPE_JOB);
    match job {
        None => problems.push(format!("prometheus.yml has no job {SCRAPE_JOB:?}")),
        Some(job) => {
            if job.get("metrics_path").is_some_and(|m| m != "/metrics") {
                problems.push(format!(
                    "job {SCRAPE_JOB}: metrics_path {}",
                    job["metrics_path"]
                ));
            }
            let targets: BTreeSet<&str> = array(job, "static_configs", "scrape job")
                .iter()
                .flat_map(|c| array(c, "targets", "static config"))
                .filter_map(Value::as_str)
                .collect();
            for t in ["tollgate-1:9090", "tollgate-2:9090"] {
                if !targets.contains(t) {
                    problems.push(format!("job {SCRAPE_JOB} does not scrape {t}"));
                }
            }
        }
    }

    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---- the artifacts against the running binary ----

struct Traffic {
    http: reqwest::Client,
    gate: Tollgate,
    key: String,
}

impl Traffic {
    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.http.get(self.gate.url(path)).bearer_auth(&self.key))
            .await
    }

    async fn pay(&self, amount: i64, approval: Option<&str>) -> (u16, Value) {
        let mut request = self
            .http
            .post(self.gate.url("/stripe/v1/payment_intents"))
            .basic_auth(&self.key, Some(""))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("amount={amount}&currency=usd"));
        if let Some(id) = approval {
            request = request.header("Tollgate-Approval", id);
        }
        self.send(request).await
    }

    async fn admin(&self, method: reqwest::Method, path: &str) -> (u16, Value) {
        self.send(
            self.http
                .request(method, self.gate.admin_url(path))
                .bearer_auth(ADMIN_TOKEN)
                .json(&serde_json::json!({"by": "observability-test"})),
        )
        .await
    }

    async fn metrics(&self) -> String {
        let response = self
            .http
            .get(self.gate.admin_url("/metrics"))
            .send()
            .await
            .expect("scrape");
        assert_eq!(response.status(), 200, "/metrics");
        response.text().await.expect("metrics text")
    }
}

fn code(body: &Value) -> &str {
    body["tollgate"]["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn every_metric_the_dashboard_and_alerts_query_is_exported_by_the_real_binary() {
    let db = TestDatabase::create().await.expect("test database");
    // Requests whose path mentions "slow" are answered after the proxy's upstream timeout.
    let upstream = Upstream::builder()
        .probe(|request| async move {
            if request.path_and_query.contains("slow") {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            Value::Null
        })
        .start()
        .await
        .expect("upstream");
    let live = policy_dir_with(OBSERVED_POLICY).expect("policy dir");
    let shadow = policy_dir_with(SHADOW_POLICY).expect("shadow policy dir");
    let gate = Tollgate::builder(db.url(), &upstream.url())
        .policy_dir(live.path())
        .policy(&format!("shadow_dir = \"{}\"", shadow.path().display()))
        .policy("engine_check_sample = 1.0")
        .server("upstream_timeout_ms = 500")
        // A webhook, so that the notification series exist (a closed loopback port: never delivered).
        .admin("public_url = \"https://tollgate.example.com\"")
        .tables("[[notifications.webhooks]]\nname = \"observed\"\nformat = \"slack\"\nurl = \"http://127.0.0.1:9/hook\"\n")
        .start()
        .await
        .expect("tollgate starts");
    let key = gate.create_agent("observed", &[]).await.expect("agent");
    let t = Traffic {
        http: reqwest::Client::new(),
        gate,
        key,
    };

    // Probes the deployment's liveness and readiness checks point at.
    let health = t.http.get(t.gate.admin_url("/healthz")).send().await;
    assert_eq!(health.expect("/healthz").status(), 200);
    let ready = t.http.get(t.gate.admin_url("/readyz")).send().await;
    assert_eq!(ready.expect("/readyz").status(), 200);

    // Allowed reads on both providers: requests, end-to-end, policy, audit and upstream latency.
    assert_eq!(t.get("/cloudflare/client/v4/zones").await.0, 200);
    assert_eq!(t.get("/stripe/v1/customers").await.0, 200);
    // An unknown write, denied by policy (the shadow bundle denies it too).
    let (status, body) = t
        .send(
            t.http
                .post(t.gate.url("/stripe/v1/refunds"))
                .basic_auth(&t.key, Some(""))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("email=a%40example.com"),
        )
        .await;
    assert_eq!((status, code(&body)), (403, "policy_denied"), "{body}");
    // A request the engines judge differently (regorus's VM carries on with an undefined binding, the
    // interpreter does not): served as the VM decided, and the engine check counts the disagreement.
    let (status, body) = t
        .send(
            t.http
                .post(t.gate.url("/stripe/v1/customers"))
                .basic_auth(&t.key, Some(""))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("email=a%40example.com"),
        )
        .await;
    assert_eq!((status, code(&body)), (403, "policy_denied"), "{body}");
    // No agent key: 401.
    let (status, body) = t
        .send(t.http.get(t.gate.url("/cloudflare/client/v4/zones")))
        .await;
    assert_eq!((status, code(&body)), (401, "agent_unauthenticated"));
    // A charge that goes through: committed spend; the shadow bundle disagrees (it denies writes).
    assert_eq!(t.pay(1000, None).await.0, 200);
    // A large charge: an approval is opened, approved by a reviewer, consumed once, then invalid.
    let (status, body) = t.pay(6000, None).await;
    assert_eq!((status, code(&body)), (403, "approval_required"), "{body}");
    let approval = body["tollgate"]["approval_id"]
        .as_str()
        .expect("approval id")
        .to_string();
    let (status, body) = t
        .admin(
            reqwest::Method::POST,
            &format!("/api/approvals/{approval}/approve"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(t.pay(6000, Some(&approval)).await.0, 200);
    let (status, body) = t.pay(6000, Some(&approval)).await;
    assert_eq!((status, code(&body)), (403, "approval_invalid"), "{body}");
    // $10 + $60 committed of $100: $40 more is over the cap.
    let (status, body) = t.pay(4000, None).await;
    assert_eq!((status, code(&body)), (403, "budget_exceeded"), "{body}");
    // The provider does not answer in time: upstream error of kind timeout.
    let (status, body) = t.get("/cloudflare/client/v4/zones/slow-zone").await;
    assert_eq!((status, code(&body)), (504, "upstream_timeout"), "{body}");
    // A freeze refuses everything until it is lifted.
    assert_eq!(t.admin(reqwest::Method::POST, "/api/freeze").await.0, 200);
    let (status, body) = t.get("/cloudflare/client/v4/zones").await;
    assert_eq!((status, code(&body)), (503, "frozen"), "{body}");
    assert_eq!(t.admin(reqwest::Method::DELETE, "/api/freeze").await.0, 200);
    // A good reload, then a broken bundle that is refused (the previous one stays live).
    let (status, body) = t.admin(reqwest::Method::POST, "/api/policy/reload").await;
    assert_eq!(status, 200, "{body}");
    std::fs::write(
        live.path().join("policy.rego"),
        "package tollgate\n\ndecision := {\n",
    )
    .expect("break the policy");
    let (status, body) = t.admin(reqwest::Method::POST, "/api/policy/reload").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        t.get("/cloudflare/client/v4/zones").await.0,
        200,
        "the previous bundle is still live"
    );

    // Outcome records are written after the response, and the store probe runs every 2 s: wait until the
    // writer has drained and the probe has reported.
    let mut text = String::new();
    for _ in 0..100 {
        text = t.metrics().await;
        if text.contains("tollgate_store_up 1")
            && text.contains("tollgate_audit_queue_depth 0")
            && text.contains("tollgate_policy_engine_checks_total{result=\"disagree\"} 1")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let exported = exposition(&text);
    assert!(
        exported.keys().all(|f| f.starts_with("tollgate_")),
        "every family carries the tollgate_ prefix: {:?}",
        exported.keys().collect::<Vec<_>>()
    );

    let d = dashboard();
    let a = alerts();
    let queries: Vec<(String, String)> = dashboard_queries(&d)
        .into_iter()
        .chain(alert_queries(&a))
        .collect();
    let mut problems = Vec::new();
    let mut referenced = BTreeSet::new();
    for (origin, expr) in &queries {
        referenced.extend(families_in(expr));
        check_query(&exported, origin, expr, &mut problems);
    }
    let unreferenced: Vec<&String> = exported
        .keys()
        .filter(|f| !referenced.contains(*f))
        .collect();
    if !unreferenced.is_empty() {
        eprintln!("exported but on no dashboard panel or alert: {unreferenced:?}");
    }
    eprintln!(
        "{} queries reference {} metric families: {referenced:?}",
        queries.len(),
        referenced.len()
    );
    assert!(
        problems.is_empty(),
        "{}\n\n/metrics was:\n{text}\n\ntollgate's log:\n{}",
        problems.join("\n"),
        t.gate.log()
    );

    upstream.finish().await.expect("stand-in upstream");
}
