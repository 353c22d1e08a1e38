//! Classification, step 4 of the data path: the route catalog in `policies/catalog/<provider>/data.yaml`
//! (policy data at `data.catalog.<provider>`, where OPA's loader puts it too) turns a
//! request's provider, method and canonical path into an [`Action`]. An action is a name such as
//! `cloudflare.domain.register`, a [`Risk`], and the path variables as `params`, and the policy
//! receives it as `input.action`.
//!
//! This module owns the catalog format, its validation and the compiled matcher. It must not do I/O
//! after load and makes no policy decision.
//!
//! Architecture invariants:
//! - Files are read only in [`Catalog::load`]. [`Catalog::classify`] is a pure function of the
//!   loaded catalog and allocates only the action's `params`.
//! - A request no route matches is the action [`UNKNOWN_ACTION`], never an error: the policy
//!   decides what an unknown action means. The only refusal here is a `domain_name` that is not a
//!   domain name, because the policy must never compare domain names in two spellings.
//! - The catalog is data that security reviewers read, so the matching rules are few, and the
//!   catalog files repeat them:
//!   - a template is literal segments, `{name}` variables (one non-empty segment) and an optional
//!     final `{name*}` glob (the rest of the path, one segment or more);
//!   - when several routes match, their templates are compared segment by segment from the left,
//!     and a literal beats a variable, which beats a glob; only routes that list the request's
//!     method take part, and HEAD is classified as GET;
//!   - literal segments match without regard to ASCII case and one trailing `/` is ignored, so a
//!     spelling the upstream might tolerate cannot slip past its route into `unknown`;
//!   - two routes that match exactly the same requests are a load error, so the result never
//!     depends on the order of routes in a file;
//!   - an action is defined by one route entry, so an action name always carries one risk.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::Method;
use serde::{Deserialize, Serialize, Serializer};

use crate::canon::Malformed;
use crate::resources::{IdSource, ResourceEffect, ResourceKind};

/// How much harm an action can do, from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Risk {
    /// Changes nothing.
    Read,
    /// An ordinary change that can be undone.
    Write,
    /// Moves money, mints credentials or certificates, or changes much at once.
    High,
    /// Cannot be undone: deletes, rolled or revoked secrets, non-refundable purchases.
    Irreversible,
}

/// What a request does at its provider, as the policy sees it (`input.action`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Action {
    /// `<provider>.<name>` from the catalog, or [`UNKNOWN_ACTION`].
    #[serde(serialize_with = "serialize_name")]
    pub name: Arc<str>,
    pub risk: Risk,
    /// The route's path variables by name; `domain_name` is canonicalized, the others are kept as
    /// given.
    pub params: BTreeMap<String, String>,
    /// The one media type the route's request body must have (from the catalog: the route's `body`,
    /// else the provider's). Not part of the policy input: the proxy enforces it before the policy runs.
    #[serde(skip)]
    pub body: BodyKind,
    /// What the provider does with query parameters on a write, and which ones this route takes.
    #[serde(skip)]
    pub write_query: WriteQuery,
    /// What a 2xx answer to this route does to a recorded resource (the catalog's `creates:` or
    /// `deletes:`), if anything. Not part of the policy input.
    #[serde(skip)]
    pub resource: Option<Arc<ResourceEffect>>,
}

/// The media type of a request body, as the catalog states it for a provider or a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyKind {
    /// `application/json` (or a `+json` type).
    #[default]
    Json,
    /// `application/x-www-form-urlencoded`, Stripe's bracket keys.
    Form,
    /// `multipart/form-data`.
    Multipart,
}

/// Query parameters on a write (any method but GET, HEAD, OPTIONS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteQuery {
    /// The provider reads query parameters on writes and merges them with the form body (Stripe): the
    /// proxy judges the merge, and refuses a parameter present in both.
    Merge,
    /// Only these query parameters are accepted on a write (usually none); any other is refused, so that
    /// nothing the provider may act on goes unjudged.
    Only(Arc<[Box<str>]>),
}

impl Default for WriteQuery {
    fn default() -> Self {
        WriteQuery::Only(Arc::from(Vec::new()))
    }
}

impl BodyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BodyKind::Json => "application/json",
            BodyKind::Form => "application/x-www-form-urlencoded",
            BodyKind::Multipart => "multipart/form-data",
        }
    }
}

/// The action name for unmatched routes.
pub const UNKNOWN_ACTION: &str = "unknown";

/// The compiled route catalog: for each provider, a path prefix and a segment trie of its routes.
#[derive(Debug)]
pub struct Catalog {
    providers: HashMap<Box<str>, ProviderRoutes>,
    /// Every action name the catalog can produce, sorted, including [`UNKNOWN_ACTION`].
    action_names: Vec<Arc<str>>,
    /// Shared so that an unknown action costs an `Arc` clone, like a known one.
    unknown: Arc<str>,
}

/// Why a catalog could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read the route catalog directory {}: {source}", .dir.display())]
    Directory {
        dir: PathBuf,
        source: std::io::Error,
    },
    /// A catalog without files would classify every request as `unknown`: almost surely a wrong
    /// directory.
    #[error("the route catalog directory {} holds no <provider>/data.yaml file", .dir.display())]
    Empty { dir: PathBuf },
    #[error("the route catalog has {} problem(s):{}", .problems.len(), bullet_list(.problems))]
    Invalid { problems: Vec<CatalogProblem> },
}

/// One thing wrong with a catalog: which file, which route (when it is about one) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogProblem {
    source: String,
    route: Option<String>,
    reason: String,
}

impl Risk {
    pub fn as_str(self) -> &'static str {
        match self {
            Risk::Read => "read",
            Risk::Write => "write",
            Risk::High => "high",
            Risk::Irreversible => "irreversible",
        }
    }

    fn parse(text: &str) -> Option<Risk> {
        match text {
            "read" => Some(Risk::Read),
            "write" => Some(Risk::Write),
            "high" => Some(Risk::High),
            "irreversible" => Some(Risk::Irreversible),
            _ => None,
        }
    }
}

impl fmt::Display for Risk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl CatalogError {
    /// The problems found in the catalog's documents; empty for the directory-level errors.
    pub fn problems(&self) -> &[CatalogProblem] {
        match self {
            CatalogError::Invalid { problems } => problems,
            CatalogError::Directory { .. } | CatalogError::Empty { .. } => &[],
        }
    }
}

impl CatalogProblem {
    fn new(source: &str, route: Option<String>, reason: impl Into<String>) -> Self {
        CatalogProblem {
            source: source.to_owned(),
            route,
            reason: reason.into(),
        }
    }

    /// The file (or document name) the problem is in.
    pub fn source_name(&self) -> &str {
        &self.source
    }

    /// The route the problem is about, e.g. `route #3 (cloudflare.token.roll)`, if it is about one.
    pub fn route(&self) -> Option<&str> {
        self.route.as_deref()
    }

    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for CatalogProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.route {
            Some(route) => write!(f, "{}: {route}: {}", self.source, self.reason),
            None => write!(f, "{}: {}", self.source, self.reason),
        }
    }
}

impl Catalog {
    /// Loads `dir/<name>/data.yaml` (or `data.yml`) for every subdirectory of `dir`, the layout OPA
    /// loads as data (`data.catalog.<name>`); each file is one provider; two files for one
    /// provider, a bad template, a duplicate (method, template) pair, or an ambiguous pair of
    /// routes are errors. Report ALL errors found, not just the first.
    pub fn load(dir: &Path) -> Result<Catalog, CatalogError> {
        let directory_error = |source| CatalogError::Directory {
            dir: dir.to_path_buf(),
            source,
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(directory_error)? {
            let sub = entry.map_err(directory_error)?.path();
            if let Some(path) = catalog_file_in(&sub) {
                files.push(path);
            }
        }
        if files.is_empty() {
            return Err(CatalogError::Empty {
                dir: dir.to_path_buf(),
            });
        }
        // Sorted, so that problems are reported in the same order on every machine.
        files.sort();

        let mut problems = Vec::new();
        let mut documents = Vec::with_capacity(files.len());
        for path in files {
            let source = path.display().to_string();
            match std::fs::read_to_string(&path) {
                Ok(text) => documents.push((source, text)),
                Err(err) => problems.push(CatalogProblem::new(
                    &source,
                    None,
                    format!("cannot read the file: {err}"),
                )),
            }
        }
        build(&documents, problems)
    }

    /// Compiles a catalog from (source name, YAML text) pairs, with the same checks as
    /// [`Catalog::load`].
    pub fn from_documents(docs: &[(String, String)]) -> Result<Catalog, CatalogError> {
        build(docs, Vec::new())
    }

    pub fn has_provider(&self, provider: &str) -> bool {
        self.providers.contains_key(provider)
    }

    /// Every action name the catalog can produce, plus UNKNOWN_ACTION (bounded metric label
    /// values).
    pub fn action_names(&self) -> Vec<Arc<str>> {
        self.action_names.clone()
    }

    /// `segments` are the decoded path segments after the /{provider} prefix (e.g.
    /// ["client","v4","zones","z1","dns_records"]). HEAD matches GET routes.
    pub fn classify(
        &self,
        provider: &str,
        method: &Method,
        segments: &[String],
    ) -> Result<Action, Malformed> {
        let Some((route, path)) = self.find(provider, method, segments) else {
            return Ok(self.unknown(provider, method));
        };
        let mut params = BTreeMap::new();
        for binding in &route.bindings {
            // `find` matched the template against `path`, so every binding's position exists; `get`
            // only keeps an impossible mismatch from panicking.
            let value = if binding.rest {
                path.get(binding.position..).map(|rest| rest.join("/"))
            } else {
                path.get(binding.position).cloned()
            };
            let Some(value) = value else { continue };
            let value = if &*binding.name == DOMAIN_NAME {
                canonical_domain(&value).map_err(|m| {
                    Malformed::new(format!("path parameter {DOMAIN_NAME}: {}", m.message()))
                })?
            } else {
                value
            };
            params.insert(binding.name.to_string(), value);
        }
        Ok(Action {
            name: Arc::clone(&route.action),
            risk: route.risk,
            params,
            body: route.body,
            write_query: route.write_query.clone(),
            resource: route.resource.clone(),
        })
    }

    /// The route for a request and the path below the provider's prefix (trailing `/` removed) that
    /// it matched, or `None` when the request is `unknown`.
    fn find<'p>(
        &self,
        provider: &str,
        method: &Method,
        segments: &'p [String],
    ) -> Option<(&Route, &'p [String])> {
        let routes = self.providers.get(provider)?;
        let segments = match segments.split_last() {
            Some((last, init)) if last.is_empty() => init,
            _ => segments,
        };
        let path = strip_prefix(&routes.prefix, segments)?;
        let get = Method::GET;
        let method = if *method == Method::HEAD {
            &get
        } else {
            method
        };
        let index = routes.root.find(method, path)?;
        Some((routes.routes.get(index)?, path))
    }

    /// An unmatched request: the provider's body type and query rule (JSON and no query parameters on
    /// writes for a provider the catalog does not know).
    fn unknown(&self, provider: &str, method: &Method) -> Action {
        let reads = [Method::GET, Method::HEAD, Method::OPTIONS];
        let risk = if reads.contains(method) {
            Risk::Read
        } else {
            Risk::Write
        };
        let (body, write_query) = match self.providers.get(provider) {
            Some(routes) => (routes.body, routes.write_query.clone()),
            None => (BodyKind::default(), WriteQuery::default()),
        };
        Action {
            name: Arc::clone(&self.unknown),
            risk,
            params: BTreeMap::new(),
            body,
            write_query,
            resource: None,
        }
    }
}

/// The one path variable that is canonicalized: policies compare domain names (bans, allow lists),
/// so they must see one spelling per domain.
const DOMAIN_NAME: &str = "domain_name";

/// One provider's routes. The trie's leaves hold indexes into `routes`.
#[derive(Debug)]
struct ProviderRoutes {
    prefix: Vec<Box<str>>,
    /// The provider's body type and write-query rule, for its unmatched requests.
    body: BodyKind,
    write_query: WriteQuery,
    root: Node,
    routes: Vec<Route>,
}

/// One (action, path template) pair of the catalog; the trie refers to it once per method.
#[derive(Debug)]
struct Route {
    action: Arc<str>,
    risk: Risk,
    /// The template as written in the catalog, for error messages.
    template: Box<str>,
    body: BodyKind,
    write_query: WriteQuery,
    resource: Option<Arc<ResourceEffect>>,
    bindings: Vec<Binding>,
}

/// Where a path variable's value sits in the path below the prefix.
#[derive(Debug)]
struct Binding {
    name: Box<str>,
    position: usize,
    /// A `{name*}` glob: the value is the rest of the path from `position`, joined with `/`.
    rest: bool,
}

/// A node of the segment trie. Variables of any name share one child, so two templates that differ
/// only in variable names meet at the same leaf, which is how ambiguous routes are found at load.
#[derive(Debug, Default)]
struct Node {
    literals: Vec<(Box<str>, Node)>,
    variable: Option<Box<Node>>,
    /// Routes whose template ends at this node.
    ends: Vec<(Method, usize)>,
    /// Routes whose template ends with a glob at this node's depth.
    globs: Vec<(Method, usize)>,
}

impl Node {
    /// Depth-first in precedence order (literal, variable, glob), so the first route found is the
    /// one whose template wins the left-to-right comparison. The recursion is as deep as the
    /// longest template.
    fn find(&self, method: &Method, path: &[String]) -> Option<usize> {
        let Some((first, rest)) = path.split_first() else {
            return route_for(&self.ends, method);
        };
        if let Some((_, child)) = self
            .literals
            .iter()
            .find(|(literal, _)| literal.eq_ignore_ascii_case(first))
            && let Some(found) = child.find(method, rest)
        {
            return Some(found);
        }
        if !first.is_empty()
            && let Some(child) = &self.variable
            && let Some(found) = child.find(method, rest)
        {
            return Some(found);
        }
        route_for(&self.globs, method)
    }

    /// Adds a route for `method`; on a clash returns the route already there.
    fn insert(&mut self, segments: &[Segment], method: Method, route: usize) -> Result<(), usize> {
        let mut node = self;
        for segment in segments {
            match segment {
                Segment::Literal(text) => {
                    let position = node
                        .literals
                        .iter()
                        .position(|(literal, _)| literal.eq_ignore_ascii_case(text));
                    let position = position.unwrap_or_else(|| {
                        node.literals.push((text.clone(), Node::default()));
                        node.literals.len() - 1
                    });
                    node = &mut node.literals[position].1;
                }
                Segment::Variable(_) => node = node.variable.get_or_insert_with(Box::default),
                Segment::Glob(_) => return add_route(&mut node.globs, method, route),
            }
        }
        add_route(&mut node.ends, method, route)
    }
}

fn route_for(routes: &[(Method, usize)], method: &Method) -> Option<usize> {
    routes
        .iter()
        .find(|(m, _)| m == method)
        .map(|&(_, route)| route)
}

fn add_route(routes: &mut Vec<(Method, usize)>, method: Method, route: usize) -> Result<(), usize> {
    match route_for(routes, &method) {
        Some(existing) => Err(existing),
        None => {
            routes.push((method, route));
            Ok(())
        }
    }
}

fn strip_prefix<'p>(prefix: &[Box<str>], segments: &'p [String]) -> Option<&'p [String]> {
    if segments.len() < prefix.len() {
        return None;
    }
    let (head, rest) = segments.split_at(prefix.len());
    head.iter()
        .zip(prefix)
        .all(|(segment, literal)| segment.eq_ignore_ascii_case(literal))
        .then_some(rest)
}

/// Body fields that name domains, lifted into `action.params` canonicalized so that policies compare one
/// form: (action, body field, param). A list field becomes a comma-separated param.
const BODY_DOMAIN_PARAMS: &[(&str, &str, &str)] = &[
    ("cloudflare.domain.register", "domain_name", "domain_name"),
    (
        "cloudflare.domain.transfer_in",
        "domain_name",
        "domain_name",
    ),
    ("cloudflare.domain.check", "domains", "domains"),
];

impl Action {
    /// Adds the canonical domain(s) a request body names to `params` (see `BODY_DOMAIN_PARAMS`). A field of
    /// the wrong type is left for the policy to refuse; a name that is not a domain is malformed; a body
    /// domain that contradicts the one in the path is malformed (which one would the provider act on?).
    pub fn lift_body_params(&mut self, body: &serde_json::Value) -> Result<(), Malformed> {
        for (action, field, param) in BODY_DOMAIN_PARAMS {
            if *self.name != **action {
                continue;
            }
            let lifted = match body.get(field) {
                Some(serde_json::Value::String(raw)) => canonical_domain(raw)?,
                Some(serde_json::Value::Array(items)) => {
                    let mut names = Vec::with_capacity(items.len());
                    for item in items {
                        match item.as_str() {
                            Some(raw) => names.push(canonical_domain(raw)?),
                            None => return Ok(()),
                        }
                    }
                    names.join(",")
                }
                _ => continue,
            };
            match self.params.get(*param) {
                Some(existing) if *existing != lifted => {
                    return Err(Malformed::new(format!(
                        "the body's {field} {lifted:?} differs from the path's {existing:?}"
                    )));
                }
                _ => {
                    self.params.insert(param.to_string(), lifted);
                }
            }
        }
        Ok(())
    }
}

/// Lower case (the IDNA mapping lower-cases), punycode, one trailing dot stripped.
/// `domain_to_ascii` alone lets any ASCII through (`/`, spaces, `_`), so the result must also be a
/// DNS host name: letters, digits and inner hyphens, labels of 1 to 63 characters, 253 characters
/// in all — which every registrable name is.
fn canonical_domain(raw: &str) -> Result<String, Malformed> {
    let refuse =
        |reason: &str| Malformed::new(format!("{raw:?} is not a valid domain name: {reason}"));
    let mut name = idna::domain_to_ascii(raw).map_err(|_| refuse("IDNA conversion failed"))?;
    if name.ends_with('.') {
        name.pop();
    }
    if name.is_empty() {
        return Err(refuse("it is empty"));
    }
    if name.len() > 253 {
        return Err(refuse("it is longer than 253 characters"));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(refuse("it has an empty label"));
        }
        if label.len() > 63 {
            return Err(refuse("a label is longer than 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(refuse("only letters, digits and '-' may appear in a label"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(refuse("a label starts or ends with '-'"));
        }
    }
    Ok(name)
}

fn serialize_name<S: Serializer>(name: &Arc<str>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(name)
}

fn bullet_list(problems: &[CatalogProblem]) -> String {
    problems
        .iter()
        .map(|problem| format!("\n  - {problem}"))
        .collect()
}

/// The provider file of a catalog subdirectory: `data.yaml` (or `data.yml`) in a directory that is not
/// hidden.
fn catalog_file_in(sub: &Path) -> Option<PathBuf> {
    let hidden = sub
        .file_name()
        .and_then(|name| name.to_str())
        .is_none_or(|name| name.starts_with('.'));
    if hidden || !sub.is_dir() {
        return None;
    }
    ["data.yaml", "data.yml"]
        .iter()
        .map(|name| sub.join(name))
        .find(|path| path.is_file())
}

// -------------------------------------------------------------------------------------------------
// Loading: raw documents → checked, compiled routes. Every problem is collected; nothing is
// compiled into a `Catalog` unless there are none.
// -------------------------------------------------------------------------------------------------

/// A catalog file as written. Risks and methods are strings here so that a bad one is reported with
/// every other problem instead of failing the whole document.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    provider: String,
    #[serde(default)]
    prefix: Option<String>,
    /// The media type the provider's routes take unless a route says otherwise (default `json`).
    #[serde(default)]
    body: BodyKind,
    /// `merge` (the provider reads query parameters on writes and merges them with the form body) or
    /// `refuse` (default: a write carries only the query parameters its route lists in `query`).
    #[serde(default)]
    write_query: Option<String>,
    routes: Vec<RawRoute>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    action: String,
    risk: String,
    methods: Vec<String>,
    paths: Vec<String>,
    /// The route's body media type, when it differs from the provider's.
    #[serde(default)]
    body: Option<BodyKind>,
    /// Query parameters this route's writes take (providers with `write_query: refuse`).
    #[serde(default)]
    query: Vec<String>,
    /// The resource a 2xx answer creates, and where its id is (`result.id`, `id`, `{script_name}`).
    #[serde(default)]
    creates: Option<RawEffect>,
    /// The recorded resource a 2xx answer deletes, and the parameter that names it.
    #[serde(default)]
    deletes: Option<RawEffect>,
}

/// A route's `creates:` or `deletes:` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEffect {
    kind: String,
    id: String,
    /// For `deletes:` on a route with several methods: the one that deletes.
    #[serde(default)]
    method: Option<String>,
}

/// A parsed path template.
struct Template {
    text: Box<str>,
    segments: Vec<Segment>,
}

enum Segment {
    Literal(Box<str>),
    Variable(Box<str>),
    Glob(Box<str>),
}

fn build(
    docs: &[(String, String)],
    mut problems: Vec<CatalogProblem>,
) -> Result<Catalog, CatalogError> {
    let mut providers: HashMap<Box<str>, ProviderRoutes> = HashMap::new();
    let mut defined_in: HashMap<String, &str> = HashMap::new();
    for (source, text) in docs {
        let raw: RawCatalog = match yaml_serde::from_str(text) {
            Ok(raw) => raw,
            Err(err) => {
                problems.push(CatalogProblem::new(
                    source,
                    None,
                    format!("not a valid catalog document: {err}"),
                ));
                continue;
            }
        };
        // Compiled even when the provider is a duplicate, so that its own problems are reported
        // too.
        let routes = compile_provider(source, &raw, &mut problems);
        if let Some(first) = defined_in.get(&raw.provider) {
            problems.push(CatalogProblem::new(
                source,
                None,
                format!(
                    "provider {:?} is already defined in {first}; one file per provider",
                    raw.provider
                ),
            ));
            continue;
        }
        defined_in.insert(raw.provider.clone(), source);
        providers.insert(raw.provider.into(), routes);
    }
    if !problems.is_empty() {
        return Err(CatalogError::Invalid { problems });
    }

    let unknown: Arc<str> = Arc::from(UNKNOWN_ACTION);
    let mut action_names: Vec<Arc<str>> = providers
        .values()
        .flat_map(|provider| {
            provider
                .routes
                .iter()
                .map(|route| Arc::clone(&route.action))
        })
        .chain([Arc::clone(&unknown)])
        .collect();
    action_names.sort();
    action_names.dedup();
    Ok(Catalog {
        providers,
        action_names,
        unknown,
    })
}

fn compile_provider(
    source: &str,
    raw: &RawCatalog,
    problems: &mut Vec<CatalogProblem>,
) -> ProviderRoutes {
    let name_ok = !raw.provider.is_empty()
        && raw
            .provider
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !name_ok {
        problems.push(CatalogProblem::new(
            source,
            None,
            format!(
                "provider {:?} must be lower-case letters, digits, '_' or '-'",
                raw.provider
            ),
        ));
    }
    let prefix = match parse_prefix(raw.prefix.as_deref().unwrap_or_default()) {
        Ok(prefix) => prefix,
        Err(reason) => {
            problems.push(CatalogProblem::new(source, None, reason));
            Vec::new()
        }
    };
    if raw.routes.is_empty() {
        problems.push(CatalogProblem::new(
            source,
            None,
            "the catalog lists no routes",
        ));
    }

    let merge = match raw.write_query.as_deref() {
        None | Some("refuse") => false,
        Some("merge") => true,
        Some(other) => {
            problems.push(CatalogProblem::new(
                source,
                None,
                format!("write_query {other:?} is not one of merge, refuse"),
            ));
            false
        }
    };
    let mut provider = ProviderRoutes {
        prefix,
        body: raw.body,
        write_query: if merge {
            WriteQuery::Merge
        } else {
            WriteQuery::default()
        },
        root: Node::default(),
        routes: Vec::new(),
    };
    let mut defined_by: HashMap<&str, usize> = HashMap::new();
    for (index, route) in raw.routes.iter().enumerate() {
        let number = index + 1;
        let label = format!("route #{number} ({})", route.action);
        let mut problem = |reason: String| {
            problems.push(CatalogProblem::new(source, Some(label.clone()), reason))
        };

        if let Err(reason) = check_action_name(&raw.provider, &route.action) {
            problem(reason);
        }
        if let Some(first) = defined_by.get(route.action.as_str()) {
            problem(format!(
                "action {:?} is already defined by route #{first}; put all its methods and \
                 paths in one route, so that the action has one risk",
                route.action
            ));
        } else {
            defined_by.insert(&route.action, number);
        }
        // A bad risk is reported; a placeholder keeps the routes in the trie so that their clashes
        // are reported too. The catalog is not built when there is any problem, so the
        // placeholder is never used.
        let risk = Risk::parse(&route.risk).unwrap_or_else(|| {
            problem(format!(
                "risk {:?} is not one of read, write, high, irreversible",
                route.risk
            ));
            Risk::Irreversible
        });

        let mut methods: Vec<Method> = Vec::new();
        if route.methods.is_empty() {
            problem("the route lists no methods".to_owned());
        }
        for text in &route.methods {
            match parse_method(text) {
                Ok(method) if methods.contains(&method) => {
                    problem(format!("method {text} is listed twice"))
                }
                Ok(method) => methods.push(method),
                Err(reason) => problem(reason),
            }
        }

        let mut templates: Vec<Template> = Vec::new();
        if route.paths.is_empty() {
            problem("the route lists no paths".to_owned());
        }
        for text in &route.paths {
            match parse_template(text) {
                Ok(_) if templates.iter().any(|t| &*t.text == text) => {
                    problem(format!("path {text} is listed twice"))
                }
                Ok(template) => templates.push(template),
                Err(reason) => problem(format!("path {text:?}: {reason}")),
            }
        }

        let write_query = match (merge, route.query.is_empty()) {
            (true, false) => {
                problem(
                    "query lists a route's write parameters, which only a provider with \
                     write_query: refuse uses (merge takes every parameter)"
                        .to_owned(),
                );
                WriteQuery::Merge
            }
            (true, true) => WriteQuery::Merge,
            (false, _) => WriteQuery::Only(route.query.iter().map(|q| q.as_str().into()).collect()),
        };
        let body = route.body.unwrap_or(raw.body);
        let resource = match resource_effect(route, &templates, &methods) {
            Ok(effect) => effect.map(Arc::new),
            Err(reason) => {
                problem(reason);
                None
            }
        };
        let action: Arc<str> = Arc::from(route.action.as_str());
        for template in templates {
            let index = provider.routes.len();
            for method in &methods {
                let Err(existing) = provider
                    .root
                    .insert(&template.segments, method.clone(), index)
                else {
                    continue;
                };
                let Some(existing) = provider.routes.get(existing) else {
                    continue;
                };
                let reason = if existing.template == template.text {
                    format!(
                        "{method} {} is also declared by {}",
                        template.text, existing.action
                    )
                } else {
                    format!(
                        "{method} {} is ambiguous with {method} {} of {}: \
                         they match exactly the same paths",
                        template.text, existing.template, existing.action
                    )
                };
                problem(reason);
            }
            provider.routes.push(Route {
                action: Arc::clone(&action),
                risk,
                body,
                write_query: write_query.clone(),
                resource: resource.clone(),
                bindings: bindings(&template.segments),
                template: template.text,
            });
        }
    }
    provider
}

/// A route's `creates:` / `deletes:`: a known kind; an id that is an answer field (creates only) or a
/// parameter every path of the route binds (or that the action lifts from its body); a `method:` the
/// route lists.
fn resource_effect(
    route: &RawRoute,
    templates: &[Template],
    methods: &[Method],
) -> Result<Option<ResourceEffect>, String> {
    let (raw, creates) = match (&route.creates, &route.deletes) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err("a route either creates or deletes a resource, not both".to_owned());
        }
        (Some(raw), None) => (raw, true),
        (None, Some(raw)) => (raw, false),
    };
    let kind = ResourceKind::parse(&raw.kind).ok_or_else(|| {
        let known: Vec<&str> = ResourceKind::ALL.iter().map(|k| k.as_str()).collect();
        format!(
            "resource kind {:?} is not one of {}",
            raw.kind,
            known.join(", ")
        )
    })?;
    let id = IdSource::parse(&raw.id)?;
    if let IdSource::Param(name) = &id {
        let lifted = BODY_DOMAIN_PARAMS
            .iter()
            .any(|(action, _, param)| *action == route.action && *param == &**name);
        let bound = templates.iter().all(|t| {
            t.segments
                .iter()
                .any(|s| matches!(s, Segment::Variable(v) if **v == **name))
        });
        if !lifted && !bound {
            return Err(format!(
                "id {{{name}}} is not a parameter of every path of the route"
            ));
        }
    } else if !creates {
        return Err(
            "a deleted resource is named by a path parameter, e.g. {dns_record_id}".to_owned(),
        );
    }
    if creates {
        if raw.method.is_some() {
            return Err("method: is for deletes".to_owned());
        }
        return Ok(Some(ResourceEffect::Creates { kind, id }));
    }
    let method = match &raw.method {
        None => None,
        Some(text) => {
            let method = parse_method(text)?;
            if !methods.contains(&method) {
                return Err(format!(
                    "deletes method {text} is not one of the route's methods"
                ));
            }
            Some(method)
        }
    };
    Ok(Some(ResourceEffect::Deletes { kind, id, method }))
}

fn bindings(segments: &[Segment]) -> Vec<Binding> {
    let binding = |position: usize, name: &str, rest: bool| Binding {
        name: name.into(),
        position,
        rest,
    };
    segments
        .iter()
        .enumerate()
        .filter_map(|(position, segment)| match segment {
            Segment::Literal(_) => None,
            Segment::Variable(name) => Some(binding(position, name, false)),
            Segment::Glob(name) => Some(binding(position, name, true)),
        })
        .collect()
}

fn check_action_name(provider: &str, action: &str) -> Result<(), String> {
    let Some(name) = action
        .strip_prefix(provider)
        .and_then(|rest| rest.strip_prefix('.'))
    else {
        return Err(format!(
            "action {action:?} must start with the provider name and a dot: \"{provider}.\""
        ));
    };
    let well_formed = name.split('.').all(|part| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    });
    if well_formed {
        Ok(())
    } else {
        Err(format!(
            "action {action:?}: after the provider come dot-separated names of lower-case \
             letters, digits and '_'"
        ))
    }
}

fn parse_method(text: &str) -> Result<Method, String> {
    if text == "HEAD" {
        return Err("method HEAD is classified as GET; list GET instead".to_owned());
    }
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "method {text:?} must be an upper-case HTTP method such as GET or POST"
        ));
    }
    Method::from_bytes(text.as_bytes())
        .map_err(|_| format!("method {text:?} is not an HTTP method"))
}

fn parse_prefix(text: &str) -> Result<Vec<Box<str>>, String> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let template = parse_template(text).map_err(|reason| format!("prefix {text:?}: {reason}"))?;
    template
        .segments
        .into_iter()
        .map(|segment| match segment {
            Segment::Literal(literal) => Ok(literal),
            Segment::Variable(_) | Segment::Glob(_) => {
                Err(format!("prefix {text:?} may hold only literal segments"))
            }
        })
        .collect()
}

fn parse_template(text: &str) -> Result<Template, String> {
    let Some(body) = text.strip_prefix('/') else {
        return Err("a path starts with '/'".to_owned());
    };
    if body.is_empty() {
        return Err("a path needs at least one segment".to_owned());
    }
    let parts: Vec<&str> = body.split('/').collect();
    let mut segments = Vec::with_capacity(parts.len());
    let mut names: Vec<&str> = Vec::new();
    for (index, part) in parts.iter().enumerate() {
        let last = index + 1 == parts.len();
        if part.is_empty() {
            return Err("empty segment (a doubled or trailing '/')".to_owned());
        }
        let Some(inner) = part.strip_prefix('{') else {
            check_literal(part)?;
            segments.push(Segment::Literal((*part).into()));
            continue;
        };
        let Some(inner) = inner.strip_suffix('}') else {
            return Err(format!(
                "segment {part:?} opens '{{' but does not end with '}}'"
            ));
        };
        let (name, glob) = match inner.strip_suffix('*') {
            Some(name) => (name, true),
            None => (inner, false),
        };
        let name_ok = name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !name_ok {
            return Err(format!(
                "variable {part:?}: a name is lower-case letters, digits and '_', not starting \
                 with a digit"
            ));
        }
        if names.contains(&name) {
            return Err(format!("variable {name:?} appears twice"));
        }
        names.push(name);
        if glob && !last {
            return Err(format!("glob {part:?} must be the last segment"));
        }
        if glob && name == DOMAIN_NAME {
            return Err(format!(
                "{DOMAIN_NAME} names one segment; it cannot be a glob"
            ));
        }
        segments.push(if glob {
            Segment::Glob(name.into())
        } else {
            Segment::Variable(name.into())
        });
    }
    Ok(Template {
        text: text.into(),
        segments,
    })
}

/// Literal segments are restricted to URL-unreserved characters, so that nothing in a catalog can
/// look like template syntax or need percent-encoding.
fn check_literal(part: &str) -> Result<(), String> {
    if part == "." || part == ".." {
        return Err(format!("segment {part:?} is not allowed"));
    }
    if part
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
    {
        Ok(())
    } else {
        Err(format!(
            "segment {part:?}: a literal is letters, digits, '-', '.', '_' and '~'; \
             variables are {{name}}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const CATALOG_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/catalog");

    /// (provider, method, path as sent, expected action, expected params).
    type Case = (
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static [(&'static str, &'static str)],
    );

    /// One case at least for every (method, template) of the bundled catalog;
    /// `every_route_has_a_case` keeps it that way. Grouped as in PROVIDERS.md; one line per case, so
    /// rustfmt leaves the table alone.
    #[rustfmt::skip]
    const CASES: &[Case] = &[
        // Cloudflare tokens.
        ("cloudflare", "GET", "/client/v4/user/tokens", "cloudflare.token.read", &[]),
        ("cloudflare", "GET", "/client/v4/user/tokens/t1", "cloudflare.token.read", &[("token_id", "t1")]),
        ("cloudflare", "GET", "/client/v4/accounts/a1/tokens", "cloudflare.token.read", &[("account_id", "a1")]),
        ("cloudflare", "GET", "/client/v4/accounts/a1/tokens/t1", "cloudflare.token.read", &[("account_id", "a1"), ("token_id", "t1")]),
        ("cloudflare", "POST", "/client/v4/user/tokens", "cloudflare.token.create", &[]),
        ("cloudflare", "POST", "/client/v4/accounts/a1/tokens", "cloudflare.token.create", &[("account_id", "a1")]),
        ("cloudflare", "PUT", "/client/v4/user/tokens/t1", "cloudflare.token.update", &[("token_id", "t1")]),
        ("cloudflare", "PUT", "/client/v4/accounts/a1/tokens/t1", "cloudflare.token.update", &[("account_id", "a1"), ("token_id", "t1")]),
        ("cloudflare", "PUT", "/client/v4/user/tokens/t1/value", "cloudflare.token.roll", &[("token_id", "t1")]),
        ("cloudflare", "PUT", "/client/v4/accounts/a1/tokens/t1/value", "cloudflare.token.roll", &[("account_id", "a1"), ("token_id", "t1")]),
        ("cloudflare", "DELETE", "/client/v4/user/tokens/t1", "cloudflare.token.delete", &[("token_id", "t1")]),
        ("cloudflare", "DELETE", "/client/v4/accounts/a1/tokens/t1", "cloudflare.token.delete", &[("account_id", "a1"), ("token_id", "t1")]),
        ("cloudflare", "GET", "/client/v4/user/tokens/verify", "cloudflare.token.verify", &[]),
        ("cloudflare", "GET", "/client/v4/accounts/a1/tokens/verify", "cloudflare.token.verify", &[("account_id", "a1")]),
        ("cloudflare", "GET", "/client/v4/user/tokens/permission_groups", "cloudflare.token.permission_groups", &[]),
        ("cloudflare", "GET", "/client/v4/accounts/a1/tokens/permission_groups", "cloudflare.token.permission_groups", &[("account_id", "a1")]),
        ("cloudflare", "GET", "/client/v4/accounts/a1/cfd_tunnel/t1/token", "cloudflare.credential.read", &[("account_id", "a1"), ("tunnel_id", "t1")]),
        ("cloudflare", "GET", "/client/v4/accounts/a1/warp_connector/t1/token", "cloudflare.credential.read", &[("account_id", "a1"), ("tunnel_id", "t1")]),
        ("cloudflare", "GET", "/client/v4/accounts/a1/images/v1/keys", "cloudflare.credential.read", &[("account_id", "a1")]),
        ("cloudflare", "GET", "/client/v4/accounts/a1/challenges/widgets/0x4AAA", "cloudflare.credential.read", &[("account_id", "a1"), ("sitekey", "0x4AAA")]),
        ("cloudflare", "GET", "/client/v4/accounts/a1/stream/live_inputs/li1", "cloudflare.credential.read", &[("account_id", "a1"), ("live_input_id", "li1")]),
        ("cloudflare", "GET", "/client/v4/accounts/a1/stream/live_inputs/li1/outputs", "cloudflare.credential.read", &[("account_id", "a1"), ("live_input_id", "li1")]),
        ("cloudflare", "GET", "/client/v4/accounts/a1/logpush/jobs", "cloudflare.credential.read", &[("account_id", "a1")]),
        ("cloudflare", "GET", "/client/v4/accounts/a1/logpush/jobs/7", "cloudflare.credential.read", &[("account_id", "a1"), ("job_id", "7")]),
        ("cloudflare", "GET", "/client/v4/zones/z1/logpush/jobs", "cloudflare.credential.read", &[("zone_id", "z1")]),
        ("cloudflare", "GET", "/client/v4/zones/z1/logpush/jobs/7", "cloudflare.credential.read", &[("zone_id", "z1"), ("job_id", "7")]),
        ("cloudflare", "GET", "/client/v4/accounts/a1/tunnels/t1/token", "cloudflare.credential.read", &[("account_id", "a1"), ("tunnel_id", "t1")]),
        ("cloudflare", "GET", "/client/v4/accounts/a1/logpush/datasets/audit_logs/jobs", "cloudflare.credential.read", &[("account_id", "a1"), ("dataset_id", "audit_logs")]),
        ("cloudflare", "GET", "/client/v4/zones/z1/logpush/datasets/http_requests/jobs", "cloudflare.credential.read", &[("zone_id", "z1"), ("dataset_id", "http_requests")]),
        ("cloudflare", "GET", "/client/v4/zones/z1/logpush/edge", "cloudflare.credential.read", &[("zone_id", "z1")]),
        ("cloudflare", "GET", "/client/v4/zones/z1/logpush/edge/jobs", "cloudflare.credential.read", &[("zone_id", "z1")]),
        ("cloudflare", "GET", "/client/v4/accounts/a1/secondary_dns/tsigs", "cloudflare.credential.read", &[("account_id", "a1")]),
        ("cloudflare", "GET", "/client/v4/accounts/a1/secondary_dns/tsigs/ts1", "cloudflare.credential.read", &[("account_id", "a1"), ("tsig_id", "ts1")]),
        ("cloudflare", "GET", "/client/v4/accounts/a1/stream/webhook", "cloudflare.credential.read", &[("account_id", "a1")]),
        ("cloudflare", "GET", "/client/v4/accounts/a1/devices/d1/override_codes", "cloudflare.credential.read", &[("account_id", "a1"), ("device_id", "d1")]),
        ("cloudflare", "GET", "/client/v4/accounts/a1/load_balancers/monitors", "cloudflare.credential.read", &[("account_id", "a1")]),
        ("cloudflare", "GET", "/client/v4/accounts/a1/load_balancers/monitors/m1", "cloudflare.credential.read", &[("account_id", "a1"), ("monitor_id", "m1")]),
        ("cloudflare", "GET", "/client/v4/user/load_balancers/monitors", "cloudflare.credential.read", &[]),
        ("cloudflare", "GET", "/client/v4/user/load_balancers/monitors/m1", "cloudflare.credential.read", &[("monitor_id", "m1")]),
        ("cloudflare", "GET", "/client/v4/zones/z1/healthchecks", "cloudflare.credential.read", &[("zone_id", "z1")]),
        ("cloudflare", "GET", "/client/v4/zones/z1/healthchecks/h1", "cloudflare.credential.read", &[("zone_id", "z1"), ("healthcheck_id", "h1")]),
        ("cloudflare", "GET", "/client/v4/zones/z1/settings/zaraz/config", "cloudflare.credential.read", &[("zone_id", "z1")]),
        ("cloudflare", "GET", "/client/v4/zones/z1/settings/zaraz/export", "cloudflare.credential.read", &[("zone_id", "z1")]),
        ("cloudflare", "GET", "/client/v4/zones/z1/settings/zaraz/history/configs", "cloudflare.credential.read", &[("zone_id", "z1")]),
        ("cloudflare", "GET", "/client/v4/zones/z1/settings/zaraz/v2/config", "cloudflare.credential.read", &[("zone_id", "z1")]),
        ("cloudflare", "GET", "/client/v4/zones/z1/settings/zaraz/v2/export", "cloudflare.credential.read", &[("zone_id", "z1")]),
        ("cloudflare", "GET", "/client/v4/zones/z1/healthchecks/preview/h1", "cloudflare.credential.read", &[("zone_id", "z1"), ("healthcheck_id", "h1")]),
        // Cloudflare registrar.
        ("cloudflare", "GET", "/client/v4/accounts/a1/registrar/registrations", "cloudflare.domain.read", &[("account_id", "a1")]),
        ("cloudflare", "GET", "/client/v4/accounts/a1/registrar/registrations/example.com", "cloudflare.domain.read", &[("account_id", "a1"), ("domain_name", "example.com")]),
        ("cloudflare", "GET", "/client/v4/accounts/a1/registrar/registrations/example.com/registration-status", "cloudflare.domain.read", &[("account_id", "a1"), ("domain_name", "example.com")]),
        ("cloudflare", "GET", "/client/v4/accounts/a1/registrar/registrations/example.com/update-status", "cloudflare.domain.read", &[("account_id", "a1"), ("domain_name", "example.com")]),
        ("cloudflare", "GET", "/client/v4/accounts/a1/registrar/registrations/example.com/transfer-in-status", "cloudflare.domain.read", &[("account_id", "a1"), ("domain_name", "example.com")]),
        ("cloudflare", "GET", "/client/v4/accounts/a1/registrar/domains", "cloudflare.domain.read", &[("account_id", "a1")]),
        ("cloudflare", "GET", "/client/v4/accounts/a1/registrar/domains/Example.COM", "cloudflare.domain.read", &[("account_id", "a1"), ("domain_name", "example.com")]),
        ("cloudflare", "GET", "/client/v4/accounts/a1/registrar/domain-search", "cloudflare.domain.search", &[("account_id", "a1")]),
        ("cloudflare", "POST", "/client/v4/accounts/a1/registrar/domain-check", "cloudflare.domain.check", &[("account_id", "a1")]),
        ("cloudflare", "POST", "/client/v4/accounts/a1/registrar/registrations", "cloudflare.domain.register", &[("account_id", "a1")]),
        ("cloudflare", "PATCH", "/client/v4/accounts/a1/registrar/registrations/example.com", "cloudflare.domain.update", &[("account_id", "a1"), ("domain_name", "example.com")]),
        ("cloudflare", "POST", "/client/v4/accounts/a1/registrar/registrations/example.com/transfer-in", "cloudflare.domain.transfer_in", &[("account_id", "a1"), ("domain_name", "example.com")]),
        ("cloudflare", "PUT", "/client/v4/accounts/a1/registrar/domains/example.com", "cloudflare.domain.legacy_update", &[("account_id", "a1"), ("domain_name", "example.com")]),
        // Cloudflare zones.
        ("cloudflare", "GET", "/client/v4/zones", "cloudflare.zone.read", &[]),
        ("cloudflare", "GET", "/client/v4/zones/z1", "cloudflare.zone.read", &[("zone_id", "z1")]),
        ("cloudflare", "POST", "/client/v4/zones", "cloudflare.zone.create", &[]),
        ("cloudflare", "DELETE", "/client/v4/zones/z1", "cloudflare.zone.delete", &[("zone_id", "z1")]),
        ("cloudflare", "POST", "/client/v4/zones/z1/subscription", "cloudflare.zone.plan", &[("zone_id", "z1")]),
        ("cloudflare", "PUT", "/client/v4/zones/z1/subscription", "cloudflare.zone.plan", &[("zone_id", "z1")]),
        ("cloudflare", "GET", "/client/v4/zones/z1/subscription", "cloudflare.subscription.read", &[("zone_id", "z1")]),
        ("cloudflare", "GET", "/client/v4/accounts/a1/subscriptions", "cloudflare.subscription.read", &[("account_id", "a1")]),
        // Cloudflare DNS.
        ("cloudflare", "GET", "/client/v4/zones/z1/dns_records", "cloudflare.dns.read", &[("zone_id", "z1")]),
        ("cloudflare", "GET", "/client/v4/zones/z1/dns_records/r1", "cloudflare.dns.read", &[("dns_record_id", "r1"), ("zone_id", "z1")]),
        ("cloudflare", "GET", "/client/v4/zones/z1/dns_records/export", "cloudflare.dns.read", &[("zone_id", "z1")]),
        ("cloudflare", "POST", "/client/v4/zones/z1/dns_records", "cloudflare.dns.create", &[("zone_id", "z1")]),
        ("cloudflare", "POST", "/client/v4/zones/z1/dns_records/batch", "cloudflare.dns.batch", &[("zone_id", "z1")]),
        ("cloudflare", "POST", "/client/v4/zones/z1/dns_records/import", "cloudflare.dns.import", &[("zone_id", "z1")]),
        ("cloudflare", "PUT", "/client/v4/zones/z1/dns_records/r1", "cloudflare.dns.update", &[("dns_record_id", "r1"), ("zone_id", "z1")]),
        ("cloudflare", "PATCH", "/client/v4/zones/z1/dns_records/r1", "cloudflare.dns.update", &[("dns_record_id", "r1"), ("zone_id", "z1")]),
        ("cloudflare", "DELETE", "/client/v4/zones/z1/dns_records/r1", "cloudflare.dns.delete", &[("dns_record_id", "r1"), ("zone_id", "z1")]),
        ("cloudflare", "GET", "/client/v4/zones/z1/dnssec", "cloudflare.dnssec.read", &[("zone_id", "z1")]),
        ("cloudflare", "PATCH", "/client/v4/zones/z1/dnssec", "cloudflare.dnssec.change", &[("zone_id", "z1")]),
        ("cloudflare", "DELETE", "/client/v4/zones/z1/dnssec", "cloudflare.dnssec.change", &[("zone_id", "z1")]),
        // Cloudflare account subscriptions.
        ("cloudflare", "POST", "/client/v4/accounts/a1/subscriptions", "cloudflare.account.subscription", &[("account_id", "a1")]),
        ("cloudflare", "PUT", "/client/v4/accounts/a1/subscriptions", "cloudflare.account.subscription", &[("account_id", "a1")]),
        ("cloudflare", "DELETE", "/client/v4/accounts/a1/subscriptions", "cloudflare.account.subscription", &[("account_id", "a1")]),
        ("cloudflare", "POST", "/client/v4/accounts/a1/subscriptions/s1", "cloudflare.account.subscription", &[("account_id", "a1"), ("subscription_id", "s1")]),
        ("cloudflare", "PUT", "/client/v4/accounts/a1/subscriptions/s1", "cloudflare.account.subscription", &[("account_id", "a1"), ("subscription_id", "s1")]),
        ("cloudflare", "DELETE", "/client/v4/accounts/a1/subscriptions/s1", "cloudflare.account.subscription", &[("account_id", "a1"), ("subscription_id", "s1")]),
        // Cloudflare certificates.
        ("cloudflare", "GET", "/client/v4/zones/z1/ssl/certificate_packs", "cloudflare.cert.read", &[("zone_id", "z1")]),
        ("cloudflare", "GET", "/client/v4/zones/z1/ssl/certificate_packs/p1", "cloudflare.cert.read", &[("certificate_pack_id", "p1"), ("zone_id", "z1")]),
        ("cloudflare", "GET", "/client/v4/zones/z1/custom_certificates", "cloudflare.cert.read", &[("zone_id", "z1")]),
        ("cloudflare", "GET", "/client/v4/zones/z1/custom_certificates/c1", "cloudflare.cert.read", &[("custom_certificate_id", "c1"), ("zone_id", "z1")]),
        ("cloudflare", "GET", "/client/v4/certificates", "cloudflare.cert.read", &[]),
        ("cloudflare", "GET", "/client/v4/certificates/c1", "cloudflare.cert.read", &[("certificate_id", "c1")]),
        ("cloudflare", "POST", "/client/v4/zones/z1/ssl/certificate_packs/order", "cloudflare.cert.pack.order", &[("zone_id", "z1")]),
        ("cloudflare", "POST", "/client/v4/zones/z1/custom_certificates", "cloudflare.cert.custom.upload", &[("zone_id", "z1")]),
        ("cloudflare", "PATCH", "/client/v4/zones/z1/custom_certificates/c1", "cloudflare.cert.custom.change", &[("custom_certificate_id", "c1"), ("zone_id", "z1")]),
        ("cloudflare", "DELETE", "/client/v4/zones/z1/custom_certificates/c1", "cloudflare.cert.custom.change", &[("custom_certificate_id", "c1"), ("zone_id", "z1")]),
        ("cloudflare", "POST", "/client/v4/certificates", "cloudflare.cert.origin.create", &[]),
        ("cloudflare", "DELETE", "/client/v4/certificates/c1", "cloudflare.cert.origin.revoke", &[("certificate_id", "c1")]),
        // Cloudflare Workers.
        ("cloudflare", "GET", "/client/v4/accounts/a1/workers/scripts", "cloudflare.worker.read", &[("account_id", "a1")]),
        ("cloudflare", "GET", "/client/v4/accounts/a1/workers/scripts/w1", "cloudflare.worker.read", &[("account_id", "a1"), ("script_name", "w1")]),
        ("cloudflare", "GET", "/client/v4/accounts/a1/workers/scripts/w1/versions", "cloudflare.worker.read", &[("account_id", "a1"), ("script_name", "w1")]),
        ("cloudflare", "GET", "/client/v4/accounts/a1/workers/scripts/w1/versions/v1", "cloudflare.worker.read", &[("account_id", "a1"), ("script_name", "w1"), ("version_id", "v1")]),
        ("cloudflare", "GET", "/client/v4/accounts/a1/workers/scripts/w1/deployments", "cloudflare.worker.read", &[("account_id", "a1"), ("script_name", "w1")]),
        ("cloudflare", "GET", "/client/v4/accounts/a1/workers/scripts/w1/deployments/d1", "cloudflare.worker.read", &[("account_id", "a1"), ("deployment_id", "d1"), ("script_name", "w1")]),
        ("cloudflare", "PUT", "/client/v4/accounts/a1/workers/scripts/w1", "cloudflare.worker.deploy", &[("account_id", "a1"), ("script_name", "w1")]),
        ("cloudflare", "POST", "/client/v4/accounts/a1/workers/scripts/w1/versions", "cloudflare.worker.version", &[("account_id", "a1"), ("script_name", "w1")]),
        ("cloudflare", "POST", "/client/v4/accounts/a1/workers/scripts/w1/deployments", "cloudflare.worker.rollout", &[("account_id", "a1"), ("script_name", "w1")]),
        ("cloudflare", "DELETE", "/client/v4/accounts/a1/workers/scripts/w1", "cloudflare.worker.delete", &[("account_id", "a1"), ("script_name", "w1")]),
        // Cloudflare accounts.
        ("cloudflare", "GET", "/client/v4/accounts", "cloudflare.account.read", &[]),
        ("cloudflare", "GET", "/client/v4/accounts/a1", "cloudflare.account.read", &[("account_id", "a1")]),
        ("cloudflare", "POST", "/client/v4/accounts", "cloudflare.account.create", &[]),
        ("cloudflare", "DELETE", "/client/v4/accounts/a1", "cloudflare.account.delete", &[("account_id", "a1")]),
        // Stripe.
        ("stripe", "POST", "/v1/payment_intents", "stripe.payment.create", &[]),
        ("stripe", "POST", "/v1/payment_intents/pi_1/confirm", "stripe.payment.confirm", &[("payment_intent_id", "pi_1")]),
        ("stripe", "POST", "/v1/payment_intents/pi_1/capture", "stripe.payment.capture", &[("payment_intent_id", "pi_1")]),
        ("stripe", "POST", "/v1/subscriptions", "stripe.subscription.create", &[]),
        ("stripe", "POST", "/v1/subscriptions/sub_1", "stripe.subscription.update", &[("subscription_id", "sub_1")]),
        ("stripe", "DELETE", "/v1/subscriptions/sub_1", "stripe.subscription.cancel", &[("subscription_id", "sub_1")]),
        ("stripe", "POST", "/v1/payment_intents/pi_1/cancel", "stripe.payment.cancel", &[("payment_intent_id", "pi_1")]),
        ("stripe", "POST", "/v1/subscription_items", "stripe.subscription.update", &[]),
        ("stripe", "POST", "/v1/subscription_items/si_1", "stripe.subscription.update", &[("subscription_item_id", "si_1")]),
        ("stripe", "POST", "/v1/checkout/sessions", "stripe.checkout.create", &[]),
        ("stripe", "POST", "/v1/invoiceitems", "stripe.invoice.item", &[]),
        ("stripe", "POST", "/v1/invoices", "stripe.invoice.create", &[]),
        ("stripe", "POST", "/v1/invoices/in_1/finalize", "stripe.invoice.finalize", &[("invoice_id", "in_1")]),
        ("stripe", "POST", "/v1/invoices/in_1/pay", "stripe.invoice.pay", &[("invoice_id", "in_1")]),
        ("stripe", "POST", "/v1/payment_links", "stripe.payment_link.create", &[]),
        ("stripe", "POST", "/v1/customers", "stripe.customer.create", &[]),
        ("stripe", "POST", "/v1/customers/cus_1", "stripe.customer.update", &[("customer_id", "cus_1")]),
        ("stripe", "DELETE", "/v1/customers/cus_1", "stripe.customer.delete", &[("customer_id", "cus_1")]),
        ("stripe", "POST", "/v1/products", "stripe.product.create", &[]),
        ("stripe", "POST", "/v1/products/prod_1", "stripe.product.update", &[("product_id", "prod_1")]),
        ("stripe", "DELETE", "/v1/products/prod_1", "stripe.product.delete", &[("product_id", "prod_1")]),
        ("stripe", "POST", "/v1/prices", "stripe.price.create", &[]),
        ("stripe", "POST", "/v1/prices/price_1", "stripe.price.update", &[("price_id", "price_1")]),
        ("stripe", "POST", "/v1/payment_links/plink_1", "stripe.payment_link.update", &[("payment_link_id", "plink_1")]),
        ("stripe", "GET", "/v1/customers/cus_1", "stripe.read", &[("object", "customers/cus_1")]),
        ("stripe", "GET", "/v1/issuing/cards/ic_1", "stripe.credential.read", &[("card_id", "ic_1")]),
        ("stripe", "GET", "/v1/apps/secrets", "stripe.credential.read", &[]),
        ("stripe", "GET", "/v1/apps/secrets/find", "stripe.credential.read", &[]),
    ];

    fn catalog() -> Catalog {
        Catalog::load(Path::new(CATALOG_DIR)).unwrap()
    }

    fn segments(path: &str) -> Vec<String> {
        path.strip_prefix('/')
            .unwrap_or(path)
            .split('/')
            .map(str::to_owned)
            .collect()
    }

    fn method(text: &str) -> Method {
        Method::from_bytes(text.as_bytes()).unwrap()
    }

    fn classify(
        catalog: &Catalog,
        provider: &str,
        method_text: &str,
        path: &str,
    ) -> Result<Action, Malformed> {
        catalog.classify(provider, &method(method_text), &segments(path))
    }

    fn check_in(
        catalog: &Catalog,
        provider: &str,
        method: &str,
        path: &str,
        action: &str,
        params: &[(&str, &str)],
    ) {
        let got = classify(catalog, provider, method, path)
            .unwrap_or_else(|err| panic!("{provider} {method} {path}: refused: {}", err.message()));
        let want: BTreeMap<String, String> = params
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(
            (&*got.name, &got.params),
            (action, &want),
            "{provider} {method} {path}"
        );
    }

    /// Classifies against the bundled catalog in `policies/catalog`.
    fn check(provider: &str, method: &str, path: &str, action: &str, params: &[(&str, &str)]) {
        check_in(&catalog(), provider, method, path, action, params);
    }

    fn risk_of(catalog: &Catalog, provider: &str, method: &str, path: &str) -> Risk {
        classify(catalog, provider, method, path).unwrap().risk
    }

    fn catalog_of(docs: &[(&str, &str)]) -> Result<Catalog, CatalogError> {
        let docs: Vec<(String, String)> = docs
            .iter()
            .map(|&(n, t)| (n.to_owned(), t.to_owned()))
            .collect();
        Catalog::from_documents(&docs)
    }

    /// Every (method, route) the tries hold, with its provider.
    fn declared(catalog: &Catalog) -> Vec<(&str, Method, &Route)> {
        fn walk(node: &Node, found: &mut Vec<(Method, usize)>) {
            found.extend(node.ends.iter().chain(&node.globs).cloned());
            node.literals
                .iter()
                .for_each(|(_, child)| walk(child, found));
            if let Some(child) = &node.variable {
                walk(child, found);
            }
        }
        let mut declared = Vec::new();
        for (provider, routes) in &catalog.providers {
            let mut found = Vec::new();
            walk(&routes.root, &mut found);
            declared.extend(
                found
                    .into_iter()
                    .map(|(method, index)| (&**provider, method, &routes.routes[index])),
            );
        }
        declared
    }

    /// Every (method, template) the tries hold, as (provider, method, template).
    fn declared_routes(catalog: &Catalog) -> BTreeSet<(String, String, String)> {
        declared(catalog)
            .into_iter()
            .map(|(provider, method, route)| {
                (
                    provider.to_owned(),
                    method.to_string(),
                    route.template.to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn bundled_cases() {
        let catalog = catalog();
        for &(provider, method, path, action, params) in CASES {
            check_in(&catalog, provider, method, path, action, params);
        }
    }

    /// What the bundled catalog says each create and delete does to a recorded resource.
    #[test]
    fn the_bundled_catalog_says_where_created_ids_are() {
        use crate::resources::{IdSource, ResourceEffect as E, ResourceKind as K};
        let catalog = catalog();
        let effect = |provider: &str, method: &str, path: &str| {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let action = catalog
                .classify(provider, &method, &segments(path))
                .unwrap();
            action.resource.as_deref().cloned()
        };
        let answer = |path: &str| IdSource::parse(path).unwrap();
        let param = |name: &str| IdSource::Param(name.into());
        let creates = |kind, id| Some(E::Creates { kind, id });
        let deletes = |kind, id, method: Option<&str>| {
            Some(E::Deletes {
                kind,
                id,
                method: method.map(|m| Method::from_bytes(m.as_bytes()).unwrap()),
            })
        };
        let cf = |rest: &str| format!("/client/v4{rest}");
        let cases = [
            (
                ("cloudflare", "POST", cf("/zones/z/dns_records")),
                creates(K::DnsRecord, answer("result.id")),
            ),
            (
                ("cloudflare", "POST", cf("/zones/z/dns_records/batch")),
                creates(K::DnsRecord, answer("result.posts[].id")),
            ),
            (
                ("cloudflare", "DELETE", cf("/zones/z/dns_records/r")),
                deletes(K::DnsRecord, param("dns_record_id"), None),
            ),
            (
                ("cloudflare", "POST", cf("/zones")),
                creates(K::Zone, answer("result.id")),
            ),
            (
                ("cloudflare", "DELETE", cf("/zones/z")),
                deletes(K::Zone, param("zone_id"), None),
            ),
            (
                ("cloudflare", "PUT", cf("/accounts/a/workers/scripts/s")),
                creates(K::WorkersScript, answer("result.id")),
            ),
            (
                ("cloudflare", "DELETE", cf("/accounts/a/workers/scripts/s")),
                deletes(K::WorkersScript, param("script_name"), None),
            ),
            (
                ("cloudflare", "POST", cf("/zones/z/custom_certificates")),
                creates(K::CustomCertificate, answer("result.id")),
            ),
            (
                ("cloudflare", "PATCH", cf("/zones/z/custom_certificates/c")),
                deletes(
                    K::CustomCertificate,
                    param("custom_certificate_id"),
                    Some("DELETE"),
                ),
            ),
            (
                (
                    "cloudflare",
                    "POST",
                    cf("/accounts/a/registrar/registrations"),
                ),
                creates(K::DomainRegistration, param("domain_name")),
            ),
            (
                ("stripe", "POST", "/v1/customers".into()),
                creates(K::StripeCustomer, answer("id")),
            ),
            (
                ("stripe", "DELETE", "/v1/customers/c".into()),
                deletes(K::StripeCustomer, param("customer_id"), None),
            ),
            (
                ("stripe", "POST", "/v1/subscriptions".into()),
                creates(K::Subscription, answer("id")),
            ),
            (
                ("stripe", "DELETE", "/v1/subscriptions/s".into()),
                deletes(K::Subscription, param("subscription_id"), None),
            ),
            (
                ("stripe", "POST", "/v1/payment_intents".into()),
                creates(K::PaymentIntent, answer("id")),
            ),
            (
                ("stripe", "POST", "/v1/payment_intents/p/cancel".into()),
                deletes(K::PaymentIntent, param("payment_intent_id"), None),
            ),
            (
                ("stripe", "POST", "/v1/products".into()),
                creates(K::Product, answer("id")),
            ),
            (
                ("stripe", "DELETE", "/v1/products/p".into()),
                deletes(K::Product, param("product_id"), None),
            ),
            (
                ("stripe", "POST", "/v1/prices".into()),
                creates(K::Price, answer("id")),
            ),
            // Not a create: never read.
            (("cloudflare", "POST", cf("/user/tokens")), None),
            (("stripe", "POST", "/v1/subscriptions/s".into()), None),
        ];
        for ((provider, method, path), expected) in cases {
            assert_eq!(effect(provider, method, &path), expected, "{method} {path}");
        }
    }

    #[test]
    fn resource_effects_are_checked_at_load() {
        let route = |extra: &str| {
            format!(
                "provider: demo\nroutes:\n  - action: demo.thing\n    risk: write\n    methods: [POST, DELETE]\n    \
                 paths: [\"/things/{{thing_id}}\"]\n    {extra}\n"
            )
        };
        for (extra, reason) in [
            ("creates: {kind: gadget, id: id}", "resource kind"),
            (
                "creates: {kind: zone, id: \"{zone_id}\"}",
                "not a parameter of every path",
            ),
            ("creates: {kind: zone, id: \"result..id\"}", "neither"),
            (
                "deletes: {kind: zone, id: result.id}",
                "named by a path parameter",
            ),
            (
                "deletes: {kind: zone, id: \"{thing_id}\", method: PUT}",
                "not one of the route's methods",
            ),
            (
                "creates: {kind: zone, id: id, method: POST}",
                "method: is for deletes",
            ),
        ] {
            let text = route(extra);
            let err = catalog_of(&[("demo.yaml", &text)]).unwrap_err().to_string();
            assert!(err.contains(reason), "{extra}: {err}");
        }
        let both = format!(
            "{}    deletes: {{kind: zone, id: \"{{thing_id}}\"}}\n",
            route("creates: {kind: zone, id: id}")
        );
        let err = catalog_of(&[("demo.yaml", &both)]).unwrap_err().to_string();
        assert!(err.contains("not both"), "{err}");
        assert!(
            catalog_of(&[(
                "demo.yaml",
                &route("deletes: {kind: zone, id: \"{thing_id}\", method: DELETE}")
            )])
            .is_ok()
        );
    }

    #[test]
    fn every_route_has_a_case() {
        let catalog = catalog();
        let mut covered = BTreeSet::new();
        for &(provider, method_text, path, _, _) in CASES {
            let segments = segments(path);
            if let Some((route, _)) = catalog.find(provider, &method(method_text), &segments) {
                covered.insert((
                    provider.to_owned(),
                    method_text.to_owned(),
                    route.template.to_string(),
                ));
            }
        }
        let declared = declared_routes(&catalog);
        let missing: Vec<_> = declared.difference(&covered).collect();
        assert!(
            missing.is_empty(),
            "catalog routes without a case in CASES: {missing:#?}"
        );
        assert!(
            declared.len() > 90,
            "the bundled catalog looks truncated: {} routes",
            declared.len()
        );
    }

    #[test]
    fn bundled_catalog_invariants() {
        let catalog = catalog();
        assert!(catalog.has_provider("cloudflare") && catalog.has_provider("stripe"));
        assert!(!catalog.has_provider("github"));
        for (provider, routes) in &catalog.providers {
            for route in &routes.routes {
                assert!(
                    route.action.starts_with(&format!("{provider}.")),
                    "{}",
                    route.action
                );
            }
        }
        // A GET never changes anything, so every GET route is a read, except one whose answer is a
        // credential tollgate cannot vault.
        for (provider, method, route) in declared(&catalog) {
            if method == Method::GET && !route.action.ends_with(".credential.read") {
                assert_eq!(route.risk, Risk::Read, "{provider} GET {}", route.template);
            }
        }
    }

    #[test]
    fn bundled_risks() {
        let catalog = catalog();
        let cases = [
            ("cloudflare", "POST", "/client/v4/user/tokens", Risk::High),
            (
                "cloudflare",
                "PUT",
                "/client/v4/user/tokens/t1/value",
                Risk::Irreversible,
            ),
            (
                "cloudflare",
                "POST",
                "/client/v4/accounts/a1/registrar/registrations",
                Risk::Irreversible,
            ),
            (
                "cloudflare",
                "POST",
                "/client/v4/accounts/a1/registrar/domain-check",
                Risk::Read,
            ),
            (
                "cloudflare",
                "POST",
                "/client/v4/zones/z1/dns_records",
                Risk::Write,
            ),
            (
                "cloudflare",
                "POST",
                "/client/v4/zones/z1/dns_records/batch",
                Risk::High,
            ),
            (
                "cloudflare",
                "DELETE",
                "/client/v4/certificates/c1",
                Risk::Irreversible,
            ),
            (
                "cloudflare",
                "DELETE",
                "/client/v4/accounts/a1",
                Risk::Irreversible,
            ),
            ("stripe", "POST", "/v1/payment_intents", Risk::High),
            ("stripe", "POST", "/v1/invoices", Risk::High),
            ("stripe", "GET", "/v1/invoices", Risk::Read),
        ];
        for (provider, method, path, risk) in cases {
            assert_eq!(
                risk_of(&catalog, provider, method, path),
                risk,
                "{provider} {method} {path}"
            );
        }
    }

    #[test]
    fn precedence_in_the_bundled_catalog() {
        // Literal beats variable.
        check(
            "cloudflare",
            "GET",
            "/client/v4/user/tokens/verify",
            "cloudflare.token.verify",
            &[],
        );
        check(
            "cloudflare",
            "GET",
            "/client/v4/zones/z1/dns_records/export",
            "cloudflare.dns.read",
            &[("zone_id", "z1")],
        );
        // Only routes listing the method take part: no PUT on `verify`, so the variable route
        // matches.
        check(
            "cloudflare",
            "PUT",
            "/client/v4/user/tokens/verify",
            "cloudflare.token.update",
            &[("token_id", "verify")],
        );
        check(
            "cloudflare",
            "PUT",
            "/client/v4/zones/z1/dns_records/batch",
            "cloudflare.dns.update",
            &[("dns_record_id", "batch"), ("zone_id", "z1")],
        );
    }

    #[test]
    fn precedence_is_left_to_right_literal_variable_glob() {
        let catalog = catalog_of(&[(
            "demo.yaml",
            r#"
provider: demo
routes:
  - { action: demo.var_then_lit, risk: read, methods: [GET], paths: ["/a/{x}/c"] }
  - { action: demo.lit_then_var, risk: read, methods: [GET], paths: ["/a/b/{y}"] }
  - { action: demo.glob, risk: read, methods: [GET], paths: ["/a/{z*}"] }
  - { action: demo.deep, risk: read, methods: [GET], paths: ["/a/{x}/{y}/d"] }
"#,
        )])
        .unwrap();
        let check = |path: &str, action: &str, params: &[(&str, &str)]| {
            check_in(&catalog, "demo", "GET", path, action, params)
        };
        // The literal `b` at segment 2 beats `{x}`, although `{x}/c` has a literal later.
        check("/a/b/c", "demo.lit_then_var", &[("y", "c")]);
        check("/a/q/c", "demo.var_then_lit", &[("x", "q")]);
        // `/a/b/{y}` fails deeper (no `d` route below it), so matching backtracks to `{x}`.
        check("/a/b/c/d", "demo.deep", &[("x", "b"), ("y", "c")]);
        check("/a/q/r", "demo.glob", &[("z", "q/r")]);
        check("/a/q", "demo.glob", &[("z", "q")]);
        check("/a/b/c/e/f", "demo.glob", &[("z", "b/c/e/f")]);
        // A glob needs at least one segment; a variable needs a non-empty one.
        check("/a", UNKNOWN_ACTION, &[]);
        check("/a//c", "demo.glob", &[("z", "/c")]);
    }

    #[test]
    fn glob() {
        check(
            "stripe",
            "GET",
            "/v1/customers",
            "stripe.read",
            &[("object", "customers")],
        );
        check(
            "stripe",
            "GET",
            "/v1/customers/cus_1/sources/src_1",
            "stripe.read",
            &[("object", "customers/cus_1/sources/src_1")],
        );
        check("stripe", "GET", "/v1", UNKNOWN_ACTION, &[]);
        check("stripe", "GET", "/v2/core/accounts", UNKNOWN_ACTION, &[]);
        // The glob is a GET route; a POST below /v1 that no route lists is unknown.
        check("stripe", "POST", "/v1/refunds", UNKNOWN_ACTION, &[]);
    }

    #[test]
    fn unknown() {
        let catalog = catalog();
        let cases = [
            (
                "cloudflare",
                "POST",
                "/client/v4/zones/z1/purge_cache",
                Risk::Write,
            ),
            (
                "cloudflare",
                "GET",
                "/client/v4/zones/z1/settings",
                Risk::Read,
            ),
            (
                "cloudflare",
                "DELETE",
                "/client/v4/zones/z1/dns_records",
                Risk::Write,
            ),
            ("cloudflare", "OPTIONS", "/client/v4/zones", Risk::Read),
            ("cloudflare", "PATCH", "/client/v4", Risk::Write),
            // Outside the prefix.
            ("cloudflare", "GET", "/client/v5/zones", Risk::Read),
            ("cloudflare", "DELETE", "/zones/z1", Risk::Write),
            ("cloudflare", "GET", "/", Risk::Read),
            // Empty variable segment.
            (
                "cloudflare",
                "GET",
                "/client/v4/zones//dns_records",
                Risk::Read,
            ),
            ("stripe", "DELETE", "/v1/prices/price_1", Risk::Write),
            ("github", "GET", "/repos", Risk::Read),
            ("github", "POST", "/repos", Risk::Write),
            ("github", "HEAD", "/repos", Risk::Read),
        ];
        for (provider, method, path, risk) in cases {
            let action = classify(&catalog, provider, method, path).unwrap();
            assert_eq!(&*action.name, UNKNOWN_ACTION, "{provider} {method} {path}");
            assert_eq!(action.risk, risk, "{provider} {method} {path}");
            assert!(action.params.is_empty(), "{provider} {method} {path}");
        }
    }

    #[test]
    fn head_is_classified_as_get() {
        let catalog = catalog();
        check(
            "cloudflare",
            "HEAD",
            "/client/v4/zones",
            "cloudflare.zone.read",
            &[],
        );
        check(
            "cloudflare",
            "HEAD",
            "/client/v4/zones/z1/dns_records/r1",
            "cloudflare.dns.read",
            &[("dns_record_id", "r1"), ("zone_id", "z1")],
        );
        check(
            "stripe",
            "HEAD",
            "/v1/charges",
            "stripe.read",
            &[("object", "charges")],
        );
        assert_eq!(
            risk_of(&catalog, "cloudflare", "HEAD", "/client/v4/zones"),
            Risk::Read
        );
        // A path with only a POST route is unknown for HEAD, as for GET.
        check("stripe", "HEAD", "/v2/x", UNKNOWN_ACTION, &[]);
        check(
            "cloudflare",
            "HEAD",
            "/client/v4/zones/z1/dns_records/batch",
            "cloudflare.dns.read",
            &[("dns_record_id", "batch"), ("zone_id", "z1")],
        );
    }

    #[test]
    fn spelling_variants_keep_their_route() {
        check(
            "cloudflare",
            "GET",
            "/client/v4/zones/",
            "cloudflare.zone.read",
            &[],
        );
        check(
            "cloudflare",
            "POST",
            "/CLIENT/V4/User/Tokens",
            "cloudflare.token.create",
            &[],
        );
        check(
            "stripe",
            "POST",
            "/v1/Payment_Intents/PI_1/Confirm",
            "stripe.payment.confirm",
            &[("payment_intent_id", "PI_1")],
        );
        // Only one trailing slash is ignored: `/zones//` has an empty segment, which no variable
        // matches.
        check(
            "cloudflare",
            "GET",
            "/client/v4/zones//",
            UNKNOWN_ACTION,
            &[],
        );
    }

    #[test]
    fn domain_names_are_canonical() {
        // Built as segments, so that a value may hold a '/' as a decoded segment could.
        let segments = |domain: &str| -> Vec<String> {
            let path = [
                "client",
                "v4",
                "accounts",
                "a1",
                "registrar",
                "registrations",
                domain,
            ];
            path.iter().map(|s| s.to_string()).collect()
        };
        let catalog = catalog();
        let classify = |method: &Method, domain: &str| {
            catalog.classify("cloudflare", method, &segments(domain))
        };
        let cases = [
            ("Example.COM.", "example.com"),
            ("example.com", "example.com"),
            ("bücher.example", "xn--bcher-kva.example"),
            ("BÜCHER.example.", "xn--bcher-kva.example"),
            ("xn--bcher-kva.example", "xn--bcher-kva.example"),
            ("ａｂｃ.example", "abc.example"),
            ("a-b.co.uk", "a-b.co.uk"),
        ];
        for (raw, canonical) in cases {
            let action = classify(&Method::PATCH, raw).unwrap();
            assert_eq!(&*action.name, "cloudflare.domain.update");
            assert_eq!(
                action.params.get("domain_name").map(String::as_str),
                Some(canonical),
                "{raw}"
            );
        }
        let long_label = format!("{}.com", "a".repeat(64));
        let long_name = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(63),
        ]
        .join(".");
        let refused = [
            ".",
            "..",
            "example..com",
            "example.com..",
            ".example.com",
            "exa mple.com",
            "exa_mple.com",
            "a/b",
            "-a.com",
            "a-.com",
            "example.com:443",
            "x\u{0}y.com",
            "xn--a.com",
            &long_label,
            &long_name,
        ];
        for raw in refused {
            // GET reads are refused too: the policy never sees a name it cannot compare.
            for method in [Method::PATCH, Method::GET] {
                let Err(err) = classify(&method, raw) else {
                    panic!("{method} {raw:?} was not refused");
                };
                assert!(
                    err.message().contains("domain_name"),
                    "{raw}: {}",
                    err.message()
                );
            }
        }
        // Other parameters are kept as given.
        check(
            "cloudflare",
            "GET",
            "/client/v4/zones/Z1.",
            "cloudflare.zone.read",
            &[("zone_id", "Z1.")],
        );
    }

    #[test]
    fn action_names_are_bounded_and_sorted() {
        let catalog = catalog();
        let names: Vec<String> = catalog
            .action_names()
            .iter()
            .map(|n| n.to_string())
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(names, sorted);
        assert!(names.iter().any(|n| n == UNKNOWN_ACTION));
        for &(_, _, _, action, _) in CASES {
            assert!(names.iter().any(|n| n == action), "{action}");
        }
        let from_routes: BTreeSet<&str> = catalog
            .providers
            .values()
            .flat_map(|p| p.routes.iter().map(|r| &*r.action))
            .collect();
        assert_eq!(names.len(), from_routes.len() + 1);
    }

    #[test]
    fn action_serializes_for_the_policy_input() {
        let action = classify(
            &catalog(),
            "cloudflare",
            "POST",
            "/client/v4/accounts/a1/tokens",
        )
        .unwrap();
        let json = serde_json::to_value(&action).unwrap();
        let want = serde_json::json!({
            "name": "cloudflare.token.create",
            "risk": "high",
            "params": {"account_id": "a1"},
        });
        assert_eq!(json, want);
        for risk in [Risk::Read, Risk::Write, Risk::High, Risk::Irreversible] {
            assert_eq!(
                serde_json::to_value(risk).unwrap(),
                serde_json::json!(risk.as_str())
            );
            assert_eq!(Risk::parse(risk.as_str()), Some(risk));
            assert_eq!(risk.to_string(), risk.as_str());
        }
        assert!(
            Risk::Read < Risk::Write && Risk::Write < Risk::High && Risk::High < Risk::Irreversible
        );
    }

    #[test]
    fn same_paths_for_different_methods_or_shapes_are_fine() {
        let catalog = catalog_of(&[(
            "demo.yaml",
            r#"
provider: demo
prefix: /api/v1
routes:
  - { action: demo.read, risk: read, methods: [GET], paths: ["/things/{id}"] }
  - { action: demo.write, risk: write, methods: [POST, PUT], paths: ["/things/{thing_id}"] }
  - { action: demo.all, risk: read, methods: [GET], paths: ["/things/{rest*}"] }
"#,
        )])
        .unwrap();
        check_in(
            &catalog,
            "demo",
            "GET",
            "/api/v1/things/t",
            "demo.read",
            &[("id", "t")],
        );
        check_in(
            &catalog,
            "demo",
            "PUT",
            "/api/v1/things/t",
            "demo.write",
            &[("thing_id", "t")],
        );
        check_in(
            &catalog,
            "demo",
            "GET",
            "/api/v1/things/t/u",
            "demo.all",
            &[("rest", "t/u")],
        );
        check_in(&catalog, "demo", "GET", "/things/t", UNKNOWN_ACTION, &[]);
    }

    /// Asserts that `err` reports exactly `expected` (each a fragment of one problem's text), in
    /// that order.
    fn assert_problems(err: &CatalogError, expected: &[&str]) {
        let problems: Vec<String> = err.problems().iter().map(ToString::to_string).collect();
        let all = problems.join("\n");
        assert_eq!(problems.len(), expected.len(), "{all}");
        for (problem, fragment) in problems.iter().zip(expected) {
            assert!(
                problem.contains(fragment),
                "expected {fragment:?} in {problem:?}\nall:\n{all}"
            );
        }
        let message = err.to_string();
        assert!(
            message.contains(&format!("{} problem(s)", expected.len())),
            "{message}"
        );
    }

    #[test]
    fn load_reports_every_problem() {
        let bad = r#"
provider: demo
prefix: /api
routes:
  - action: demo.one
    risk: read
    methods: [GET, GET, HEAD, get]
    paths: ["/things/{id", "/files/{rest*}/x", "things", "/a//b", "/b/{Id}", "/c/{x}/{x}", "/d/%2F", "/r/{domain_name*}"]
  - action: demo.things
    risk: medium
    methods: [GET]
    paths: ["/things", "/things/{id}", "/things"]
  - action: demo.again
    risk: read
    methods: [GET, POST]
    paths: ["/things", "/things/{thing_id}"]
  - action: other.thing
    risk: write
    methods: []
    paths: []
  - action: demo.things
    risk: write
    methods: [DELETE]
    paths: ["/things/{id}"]
"#;
        let duplicate_provider = "provider: demo\nroutes:\n  - {action: demo.x, risk: read, methods: [GET], paths: [/x]}\n";
        let unknown_field = "provider: other\nroutes: []\nextra: 1\n";
        let bad_prefix = "provider: Bad Name\nprefix: /v/{x}\nroutes: []\n";
        let err = catalog_of(&[
            ("bad.yaml", bad),
            ("dup.yaml", duplicate_provider),
            ("field.yaml", unknown_field),
            ("prefix.yaml", bad_prefix),
        ])
        .unwrap_err();
        assert_problems(
            &err,
            &[
                "bad.yaml: route #1 (demo.one): method GET is listed twice",
                "bad.yaml: route #1 (demo.one): method HEAD is classified as GET",
                "bad.yaml: route #1 (demo.one): method \"get\" must be an upper-case HTTP method",
                "route #1 (demo.one): path \"/things/{id\": segment \"{id\" opens '{'",
                "route #1 (demo.one): path \"/files/{rest*}/x\": glob \"{rest*}\" must be the last segment",
                "route #1 (demo.one): path \"things\": a path starts with '/'",
                "route #1 (demo.one): path \"/a//b\": empty segment",
                "route #1 (demo.one): path \"/b/{Id}\": variable \"{Id}\"",
                "route #1 (demo.one): path \"/c/{x}/{x}\": variable \"x\" appears twice",
                "route #1 (demo.one): path \"/d/%2F\": segment \"%2F\"",
                "route #1 (demo.one): path \"/r/{domain_name*}\": domain_name names one segment",
                "bad.yaml: route #2 (demo.things): risk \"medium\" is not one of",
                "route #2 (demo.things): path /things is listed twice",
                "route #3 (demo.again): GET /things is also declared by demo.things",
                "route #3 (demo.again): GET /things/{thing_id} is ambiguous with GET /things/{id} of demo.things",
                "route #4 (other.thing): action \"other.thing\" must start with the provider name",
                "route #4 (other.thing): the route lists no methods",
                "route #4 (other.thing): the route lists no paths",
                "route #5 (demo.things): action \"demo.things\" is already defined by route #2",
                "dup.yaml: provider \"demo\" is already defined in bad.yaml",
                "field.yaml: not a valid catalog document: unknown field `extra`",
                "prefix.yaml: provider \"Bad Name\" must be lower-case",
                "prefix.yaml: prefix \"/v/{x}\" may hold only literal segments",
                "prefix.yaml: the catalog lists no routes",
            ],
        );
        let problem = &err.problems()[0];
        assert_eq!(problem.source_name(), "bad.yaml");
        assert_eq!(problem.route(), Some("route #1 (demo.one)"));
        assert_eq!(problem.reason(), "method GET is listed twice");
    }

    #[test]
    fn load_reads_yaml_files_from_a_directory() {
        let dir =
            std::env::temp_dir().join(format!("tollgate-classify-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap()
        };

        let missing = Catalog::load(&dir.join("absent")).unwrap_err();
        assert!(
            matches!(missing, CatalogError::Directory { .. }),
            "{missing}"
        );
        write("README.md", "not a catalog");
        write("flat.yaml", "provider: [not read");
        let empty = Catalog::load(&dir).unwrap_err();
        assert!(matches!(empty, CatalogError::Empty { .. }), "{empty}");

        write(
            "a/data.yaml",
            "provider: demo\nroutes:\n  - {action: demo.x, risk: read, methods: [GET], paths: [/x]}\n",
        );
        write(".hidden/data.yaml", "not: [a catalog");
        let catalog = Catalog::load(&dir).unwrap();
        check_in(&catalog, "demo", "GET", "/x", "demo.x", &[]);

        write(
            "b/data.yml",
            "provider: demo\nroutes:\n  - {action: demo.y, risk: read, methods: [GET], paths: [/y]}\n",
        );
        write("c/data.yaml", "provider: [broken");
        let err = Catalog::load(&dir).unwrap_err();
        let a = dir.join("a/data.yaml").display().to_string();
        assert_problems(
            &err,
            &[
                &format!("b/data.yml: provider \"demo\" is already defined in {a}"),
                "c/data.yaml: not a valid",
            ],
        );

        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn body_domains_are_lifted_canonical() {
        let catalog = Catalog::load(std::path::Path::new(CATALOG_DIR)).unwrap();
        let classify = |method: &Method, path: &str| {
            let segments: Vec<String> = path
                .split('/')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            catalog.classify("cloudflare", method, &segments).unwrap()
        };
        let mut register = classify(
            &Method::POST,
            "/client/v4/accounts/a1/registrar/registrations",
        );
        register
            .lift_body_params(
                &serde_json::json!({"domain_name": "Bücher.Example.COM.", "years": 1}),
            )
            .unwrap();
        assert_eq!(register.params["domain_name"], "xn--bcher-kva.example.com");
        let mut check = classify(
            &Method::POST,
            "/client/v4/accounts/a1/registrar/domain-check",
        );
        check
            .lift_body_params(&serde_json::json!({"domains": ["A.com", "b.DEV"]}))
            .unwrap();
        assert_eq!(check.params["domains"], "a.com,b.dev");
        let mut wrong_type = classify(
            &Method::POST,
            "/client/v4/accounts/a1/registrar/registrations",
        );
        wrong_type
            .lift_body_params(&serde_json::json!({"domain_name": 7}))
            .unwrap();
        assert!(
            !wrong_type.params.contains_key("domain_name"),
            "the policy refuses wrong types itself"
        );
        let mut bad = classify(
            &Method::POST,
            "/client/v4/accounts/a1/registrar/registrations",
        );
        assert!(
            bad.lift_body_params(&serde_json::json!({"domain_name": "a b.com"}))
                .is_err()
        );
        let mut transfer = classify(
            &Method::POST,
            "/client/v4/accounts/a1/registrar/registrations/example.com/transfer-in",
        );
        assert!(
            transfer
                .lift_body_params(&serde_json::json!({"domain_name": "other.com"}))
                .is_err()
        );
        transfer
            .lift_body_params(&serde_json::json!({"domain_name": "EXAMPLE.com"}))
            .unwrap();
        let mut dns = classify(&Method::POST, "/client/v4/zones/z/dns_records");
        dns.lift_body_params(&serde_json::json!({"domain_name": "x.com"}))
            .unwrap();
        assert!(
            !dns.params.contains_key("domain_name"),
            "only registrar actions lift"
        );
    }
}
