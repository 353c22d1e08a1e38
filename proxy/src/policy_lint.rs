//! A lint for Rego that does not mean the same under OPA and regorus: `not` over an operand that may be
//! undefined.
//!
//! Owns: a light lexer for Rego source (comments, strings, identifiers, punctuation, line numbers) and the
//! check of every `not` expression in a bundle's `.rego` files.
//! Must not: evaluate anything, or decide whether a bundle loads (`policy` does); a finding is a warning
//! (`tollgate policy test`) or, with `check-config --strict`, an error.
//!
//! Why: before negating, OPA evaluates the arguments of calls (built-in or user functions, membership `in`,
//! and every infix operator but `==`), the dynamic indexes of references, and the members of composite
//! literals, as expressions of their own. When one of those is undefined, the whole `not …` expression is
//! undefined under OPA and the rule does not fire; regorus negates the undefined result and the rule fires.
//! So `not is_string(token.id)` denies a token without `id` under tollgate and allows it under OPA. A plain
//! reference (`not input.a.b`) and `==` between plain references mean the same in both.
//!
//! What may be undefined: a reference with a field or index (`x.y`, `x[k]`, anything under `input` or
//! `data`), a rule of the same file that has no `default`, and a call to a function the bundle defines
//! (functions may be partial). Local variables are defined (their binding succeeded), and so are literals
//! and comprehensions. Write such operands with `object.get(obj, key, default)` or a helper rule defined
//! for every value.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Serialize;

/// One `not` whose operand may be undefined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The file, relative to the bundle directory.
    pub file: String,
    pub line: u32,
    /// The rule (or function) the expression is in.
    pub rule: String,
    /// The `not` expression as written (whitespace collapsed).
    pub expression: String,
    /// The operand that may be undefined, and where it sits.
    pub why: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: rule {}: `{}`: {} (OPA evaluates it before `not`, so the rule does not fire when it is undefined; regorus fires it)",
            self.file, self.line, self.rule, self.expression, self.why
        )
    }
}

/// Lints every `.rego` file under `dir` (hidden entries skipped), in path order.
pub fn lint_dir(dir: &Path) -> Result<Vec<Finding>, String> {
    let mut files = Vec::new();
    collect(dir, dir, &mut files)?;
    files.sort();
    let mut sources = Vec::new();
    for (rel, path) in files {
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        sources.push((rel, text));
    }
    let mut bundle = BundleFacts::default();
    for (_, text) in &sources {
        bundle.learn(text);
    }
    Ok(sources
        .iter()
        .flat_map(|(rel, text)| lint_source(rel, text, &bundle))
        .collect())
}

/// What one file's lint needs to know of the others.
#[derive(Debug, Default)]
pub struct BundleFacts {
    /// The names of every function the bundle defines that may be undefined (last path segment).
    functions: BTreeSet<String>,
    /// `data.<package>.<rule>` of every rule with a `default`: always defined.
    defaulted: BTreeSet<String>,
}

impl BundleFacts {
    /// Adds one file's functions and defaulted rules.
    pub fn learn(&mut self, text: &str) {
        let tokens = lex(text);
        let heads = heads(&tokens);
        self.functions.extend(heads.functions);
        if let Some(package) = package_of(&tokens) {
            self.defaulted.extend(
                heads
                    .defaulted
                    .iter()
                    .map(|rule| format!("data.{package}.{rule}")),
            );
        }
    }
}

fn package_of(tokens: &[Token]) -> Option<String> {
    let start = tokens.iter().position(|t| t.is_word("package"))? + 1;
    let mut name = String::new();
    for t in &tokens[start..] {
        match t.kind {
            Kind::Newline => break,
            _ => name.push_str(&t.text),
        }
    }
    Some(name)
}

fn collect(
    root: &Path,
    dir: &Path,
    out: &mut Vec<(String, std::path::PathBuf)>,
) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            collect(root, &path, out)?;
        } else if path.extension().is_some_and(|e| e == "rego") {
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .replace('\\', "/");
            out.push((rel, path));
        }
    }
    Ok(())
}

/// Lints one file, knowing the bundle's functions and defaulted rules (`bundle`).
///
/// Not reported: an operand bound earlier in the rule (a local: `x := …`, `some x in …`, a function
/// parameter), one already used earlier in the rule outside a `not` (its body stops there under every engine
/// when it is undefined), a rule with a `default`, and a line marked `# lint: defined` (or below such a
/// comment line) — for an operand a reviewer knows is defined there; say why in the comment.
pub fn lint_source(file: &str, text: &str, bundle: &BundleFacts) -> Vec<Finding> {
    let tokens = lex(text);
    let heads = heads(&tokens);
    let marked: BTreeSet<u32> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("# lint: defined"))
        .flat_map(|(n, l)| {
            let n = n as u32 + 1;
            // A comment on its own line marks the next line.
            if l.trim_start().starts_with('#') {
                vec![n + 1]
            } else {
                vec![n]
            }
        })
        .collect();
    let mut findings = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if !t.is_word("not") || i + 1 >= tokens.len() || marked.contains(&t.line) {
            continue;
        }
        let operand = operand(&tokens[i + 1..]);
        if operand.is_empty() {
            continue;
        }
        let head = head_at(&tokens, i);
        let body = &tokens[head..i];
        let scope = Scope {
            rules: &heads.undefaulted,
            functions: &bundle.functions,
            defaulted: &bundle.defaulted,
            locals: locals(body),
            used: used_before(body),
        };
        let mut why = Vec::new();
        scope.expression(operand, &mut why);
        if let Some(first) = why.into_iter().next() {
            findings.push(Finding {
                file: file.to_string(),
                line: t.line,
                rule: tokens[head].text.clone(),
                expression: format!("not {}", render(operand)),
                why: first,
            });
        }
    }
    findings
}

/// The index of the head of the rule whose body holds token `i` (0 when there is none).
fn head_at(tokens: &[Token], i: usize) -> usize {
    (0..i)
        .rev()
        .find(|&j| {
            let t = &tokens[j];
            t.at_line_start
                && t.kind == Kind::Word
                && !matches!(t.text.as_str(), "package" | "import" | "default" | "else")
        })
        .unwrap_or(0)
}

/// Names bound in a rule before a point: function parameters, `x :=` / `x =` assignments, `some` variables.
fn locals(body: &[Token]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    // Parameters: `name(a, b)` at the head.
    if body.get(1).is_some_and(|t| t.is("(")) {
        let close = matching(body, 1);
        out.extend(
            body[2..close]
                .iter()
                .filter(|t| t.kind == Kind::Word)
                .map(|t| t.text.clone()),
        );
    }
    for (j, t) in body.iter().enumerate() {
        if t.kind == Kind::Word
            && body
                .get(j + 1)
                .is_some_and(|n| n.is(":=") || n.is("=") || n.is(","))
            && (j == 0 || !body[j - 1].is("."))
        {
            // `x :=`, `x =`, and the names of `some x, y in …` / `[a, b] :=` (commas) are bindings.
            out.insert(t.text.clone());
        }
        if t.is_word("some") {
            for v in body[j + 1..]
                .iter()
                .take_while(|v| !v.is_word("in") && v.kind != Kind::Newline)
            {
                if v.kind == Kind::Word {
                    out.insert(v.text.clone());
                }
            }
        }
    }
    out
}

/// The text of every statement line of a rule body before a point that is not itself a `not`.
fn used_before(body: &[Token]) -> Vec<String> {
    let mut lines: Vec<Vec<Token>> = Vec::new();
    let mut current = Vec::new();
    for t in body {
        if t.kind == Kind::Newline {
            lines.push(std::mem::take(&mut current));
        } else {
            current.push(t.clone());
        }
    }
    lines.push(current);
    lines
        .into_iter()
        .filter(|l| l.first().is_some_and(|t| !t.is_word("not")))
        .map(|l| render(&l))
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Word,
    Literal,
    Punct,
    Newline,
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    text: String,
    line: u32,
    /// Starts at column 0 (a rule head).
    at_line_start: bool,
}

impl Token {
    fn is_word(&self, w: &str) -> bool {
        self.kind == Kind::Word && self.text == w
    }

    fn is(&self, p: &str) -> bool {
        self.kind == Kind::Punct && self.text == p
    }
}

/// Splits Rego source into tokens; comments dropped, strings and numbers as literals.
fn lex(text: &str) -> Vec<Token> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line, mut column) = (0, 1u32, 0usize);
    let push = |out: &mut Vec<Token>, kind, text: String, line, column: usize| {
        out.push(Token {
            kind,
            text,
            line,
            at_line_start: column == 0,
        });
    };
    while i < chars.len() {
        let c = chars[i];
        let start_column = column;
        match c {
            '\n' => {
                push(&mut out, Kind::Newline, "\n".into(), line, start_column);
                line += 1;
                column = 0;
                i += 1;
                continue;
            }
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
                continue;
            }
            c if c.is_whitespace() => {}
            '"' => {
                let mut s = String::from('"');
                i += 1;
                while i < chars.len() && chars[i] != '"' && chars[i] != '\n' {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        s.push(chars[i]);
                        i += 1;
                    }
                    s.push(chars[i]);
                    i += 1;
                }
                s.push('"');
                push(&mut out, Kind::Literal, s, line, start_column);
                column += 1;
                i += 1;
                continue;
            }
            '`' => {
                let start_line = line;
                let mut s = String::from('`');
                i += 1;
                while i < chars.len() && chars[i] != '`' {
                    if chars[i] == '\n' {
                        line += 1;
                    }
                    s.push(chars[i]);
                    i += 1;
                }
                s.push('`');
                push(&mut out, Kind::Literal, s, start_line, start_column);
                column += 1;
                i += 1;
                continue;
            }
            c if c.is_ascii_digit() => {
                let mut s = String::new();
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    s.push(chars[i]);
                    i += 1;
                }
                push(&mut out, Kind::Literal, s, line, start_column);
                column += 1;
                continue;
            }
            c if c.is_alphabetic() || c == '_' => {
                let mut s = String::new();
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    s.push(chars[i]);
                    i += 1;
                }
                let kind = if matches!(s.as_str(), "true" | "false" | "null") {
                    Kind::Literal
                } else {
                    Kind::Word
                };
                push(&mut out, kind, s, line, start_column);
                column += 1;
                continue;
            }
            _ => {
                let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
                let p = if matches!(two.as_str(), "==" | "!=" | "<=" | ">=" | ":=") {
                    two
                } else {
                    c.to_string()
                };
                i += p.chars().count();
                column += 1;
                push(&mut out, Kind::Punct, p, line, start_column);
                continue;
            }
        }
        i += 1;
        column += 1;
    }
    out
}

struct Heads {
    /// Rules of this file without a `default`.
    undefaulted: BTreeSet<String>,
    /// Rules of this file with a `default`.
    defaulted: BTreeSet<String>,
    /// Functions this file defines that may be undefined for defined arguments (no unconditional `else`).
    functions: BTreeSet<String>,
}

fn heads(tokens: &[Token]) -> Heads {
    let mut rules = BTreeSet::new();
    let mut defaulted = BTreeSet::new();
    let mut functions = BTreeSet::new();
    let mut total_functions = BTreeSet::new();
    for (i, t) in tokens.iter().enumerate() {
        if !(t.at_line_start && t.kind == Kind::Word) {
            continue;
        }
        match t.text.as_str() {
            // `else` at the start of a line continues the rule above.
            "package" | "import" | "else" => {}
            "default" => {
                if let Some(name) = tokens.get(i + 1).filter(|n| n.kind == Kind::Word) {
                    defaulted.insert(name.text.clone());
                }
            }
            name => {
                if tokens.get(i + 1).is_some_and(|n| n.is("(")) {
                    functions.insert(name.to_string());
                    let close = matching(tokens, i + 1);
                    if total(&definition(tokens, i)[close - i..]) {
                        total_functions.insert(name.to_string());
                    }
                } else {
                    rules.insert(name.to_string());
                    if total(definition(tokens, i)) {
                        // Defined whatever the input: as good as a default.
                        defaulted.insert(name.to_string());
                    }
                }
            }
        }
    }
    Heads {
        undefaulted: rules.difference(&defaulted).cloned().collect(),
        defaulted,
        functions: functions.difference(&total_functions).cloned().collect(),
    }
}

/// The tokens of the rule definition whose head is at `i`: up to the next rule head.
fn definition(tokens: &[Token], i: usize) -> &[Token] {
    let end = tokens[i + 1..]
        .iter()
        .position(|t| t.at_line_start && t.kind == Kind::Word && t.text != "else")
        .map_or(tokens.len(), |n| i + 1 + n);
    &tokens[i..end]
}

/// Whether a definition yields a value for every input: `name := value` with no condition, or an `else`
/// chain whose last branch has none. (`contains` rules, partial sets, are always defined too.)
fn total(definition: &[Token]) -> bool {
    // `definition` starts at the head's name (a rule) or its closing parenthesis (a function).
    let definition = &definition[1.min(definition.len())..];
    if definition.first().is_some_and(|t| t.is_word("contains")) {
        return true;
    }
    if !definition.first().is_some_and(|t| t.is(":=") || t.is("=")) {
        return false;
    }
    let (_, elses) = split_top(definition, |t| t.is_word("else"));
    let last = match elses.last() {
        Some(e) => {
            let at = definition
                .iter()
                .position(|t| std::ptr::eq(t, *e))
                .unwrap_or(0);
            &definition[at..]
        }
        None => definition,
    };
    let (_, conditions) = split_top(last, |t| t.is_word("if"));
    conditions.is_empty()
}

/// The operand of a `not`: up to the end of its expression (a newline, `;` or a closing bracket at depth 0,
/// or a `with` modifier).
fn operand(tokens: &[Token]) -> &[Token] {
    let mut depth = 0i32;
    for (i, t) in tokens.iter().enumerate() {
        match t.kind {
            Kind::Newline if depth == 0 => return &tokens[..i],
            Kind::Word if depth == 0 && t.text == "with" => return &tokens[..i],
            Kind::Punct => match t.text.as_str() {
                "(" | "[" | "{" => depth += 1,
                ")" | "]" | "}" => {
                    if depth == 0 {
                        return &tokens[..i];
                    }
                    depth -= 1;
                }
                ";" if depth == 0 => return &tokens[..i],
                _ => {}
            },
            _ => {}
        }
    }
    tokens
}

/// Infix operators OPA rewrites into calls whose operands it evaluates first (`==` it does not).
const CALL_OPERATORS: [&str; 12] = [
    "!=", "<", ">", "<=", ">=", "+", "-", "*", "/", "%", "&", "|",
];

/// The namespaces of OPA's built-in functions (a call `object.get(…)` is not the bundle's `get`).
const BUILTIN_NAMESPACES: [&str; 22] = [
    "array",
    "base64",
    "base64url",
    "bits",
    "crypto",
    "glob",
    "graph",
    "hex",
    "http",
    "io",
    "json",
    "net",
    "numbers",
    "object",
    "rand",
    "regex",
    "semver",
    "strings",
    "time",
    "units",
    "urlquery",
    "yaml",
];

struct Scope<'a> {
    rules: &'a BTreeSet<String>,
    functions: &'a BTreeSet<String>,
    defaulted: &'a BTreeSet<String>,
    locals: BTreeSet<String>,
    /// Earlier statements of the rule (rendered).
    used: Vec<String>,
}

impl Scope<'_> {
    /// A whole `not` operand: infix operands are evaluated first unless the only operator is `==`.
    fn expression(&self, tokens: &[Token], why: &mut Vec<String>) {
        let tokens = trim_newlines(tokens);
        let (segments, operators) = split_top(tokens, |t| {
            (t.kind == Kind::Punct && (CALL_OPERATORS.contains(&t.text.as_str()) || t.text == "=="))
                || t.is_word("in")
        });
        let evaluated_first = operators.iter().any(|op| op.text != "==" && op.text != "=");
        for segment in segments {
            if evaluated_first && let Some(r) = self.maybe_undefined(segment) {
                why.push(format!("operand `{r}` of `{}`", operators_text(&operators)));
            }
            self.term(segment, why);
        }
    }

    /// Inside one term: call arguments, dynamic indexes and composite members are evaluated first.
    fn term(&self, tokens: &[Token], why: &mut Vec<String>) {
        let tokens = trim_newlines(tokens);
        let mut i = 0;
        while i < tokens.len() {
            let t = &tokens[i];
            if t.kind == Kind::Punct && matches!(t.text.as_str(), "(" | "[" | "{") {
                let close = matching(tokens, i);
                let inner = &tokens[i + 1..close];
                let comprehension = split_top(inner, |t| t.is("|")).1.len() == 1
                    && matches!(t.text.as_str(), "[" | "{");
                if !comprehension {
                    let callee = (t.text == "(").then(|| callee_before(tokens, i)).flatten();
                    let indexing = t.text == "[" && i > 0 && ends_term(&tokens[i - 1]);
                    let place = match (&callee, indexing) {
                        (Some(f), _) => format!("argument of `{f}`"),
                        (None, true) => "index".to_string(),
                        (None, false) => "member of a literal".to_string(),
                    };
                    let parenthesized = t.text == "(" && callee.is_none();
                    if parenthesized {
                        self.expression(inner, why);
                    } else {
                        let (items, _) = split_top(inner, |t| t.is(",") || t.is(":"));
                        for item in items {
                            if let Some(r) = self.maybe_undefined(item) {
                                why.push(format!("{place} `{r}`"));
                            } else if let Some(f) = self.user_call(item) {
                                why.push(format!(
                                    "{place} `{f}(…)` (a function the bundle defines)"
                                ));
                            }
                            self.expression(item, why);
                        }
                    }
                }
                i = close + 1;
                continue;
            }
            i += 1;
        }
    }

    /// `Some(text)` when a whole item is a reference that may be undefined.
    fn maybe_undefined(&self, item: &[Token]) -> Option<String> {
        let item = trim_newlines(item);
        let first = item.first()?;
        if first.kind != Kind::Word {
            return None;
        }
        // A reference: word ( . word | [ … ] )*, nothing else.
        let mut i = 1;
        let mut accessed = false;
        while i < item.len() {
            if item[i].is(".") && item.get(i + 1).is_some_and(|t| t.kind == Kind::Word) {
                i += 2;
                accessed = true;
            } else if item[i].is("[") {
                i = matching(item, i) + 1;
                accessed = true;
            } else {
                return None;
            }
        }
        let text = item
            .iter()
            .map(|t| t.text.as_str())
            .collect::<Vec<_>>()
            .concat();
        let root = first.text.as_str();
        // `input` and `data` themselves are always defined (tollgate always passes an input).
        let maybe = if accessed {
            !self.defaulted.contains(&text)
        } else {
            self.rules.contains(root) && !self.locals.contains(root)
        };
        (maybe && !self.used_earlier(&text)).then_some(text)
    }

    /// Whether an earlier statement of the rule used `text` (as a whole reference or call).
    fn used_earlier(&self, text: &str) -> bool {
        self.used.iter().any(|line| {
            line.match_indices(text).any(|(at, _)| {
                let before = line[..at].chars().next_back();
                let after = line[at + text.len()..].chars().next();
                let boundary = |c: Option<char>| {
                    !c.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.')
                };
                boundary(before) && (boundary(after) || after == Some('('))
            })
        })
    }

    /// The function name when an item is a call to a function the bundle defines.
    fn user_call(&self, item: &[Token]) -> Option<String> {
        let item = trim_newlines(item);
        let open = item.iter().position(|t| t.is("("))?;
        if matching(item, open) + 1 != item.len() {
            return None;
        }
        let name = item[..open].last()?;
        // `object.get`, `strings.replace_n`, …: built-ins, whatever the bundle calls its own functions.
        let builtin = item[..open]
            .first()
            .is_some_and(|root| open > 1 && BUILTIN_NAMESPACES.contains(&root.text.as_str()));
        if builtin || name.kind != Kind::Word || !self.functions.contains(&name.text) {
            return None;
        }
        let callee = item[..open]
            .iter()
            .map(|t| t.text.as_str())
            .collect::<Vec<_>>()
            .concat();
        (!self.used_earlier(&render(item))).then_some(callee)
    }
}

fn trim_newlines(tokens: &[Token]) -> &[Token] {
    let start = tokens
        .iter()
        .position(|t| t.kind != Kind::Newline)
        .unwrap_or(tokens.len());
    let end = tokens
        .iter()
        .rposition(|t| t.kind != Kind::Newline)
        .map_or(start, |e| e + 1);
    &tokens[start..end.max(start)]
}

/// Splits at depth-0 tokens matching `at`: the pieces, and the separators.
fn split_top(tokens: &[Token], at: impl Fn(&Token) -> bool) -> (Vec<&[Token]>, Vec<&Token>) {
    let (mut pieces, mut separators) = (Vec::new(), Vec::new());
    let (mut depth, mut start) = (0i32, 0);
    for (i, t) in tokens.iter().enumerate() {
        if t.kind == Kind::Punct && matches!(t.text.as_str(), "(" | "[" | "{") {
            depth += 1;
        } else if t.kind == Kind::Punct && matches!(t.text.as_str(), ")" | "]" | "}") {
            depth -= 1;
        } else if depth == 0 && at(t) {
            pieces.push(&tokens[start..i]);
            separators.push(t);
            start = i + 1;
        }
    }
    pieces.push(&tokens[start..]);
    (pieces, separators)
}

/// The index of the bracket closing the one at `open` (or the last token if unbalanced).
fn matching(tokens: &[Token], open: usize) -> usize {
    let mut depth = 0i32;
    for (i, t) in tokens.iter().enumerate().skip(open) {
        if t.kind == Kind::Punct && matches!(t.text.as_str(), "(" | "[" | "{") {
            depth += 1;
        } else if t.kind == Kind::Punct && matches!(t.text.as_str(), ")" | "]" | "}") {
            depth -= 1;
            if depth == 0 {
                return i;
            }
        }
    }
    tokens.len().saturating_sub(1)
}

/// Whether a token ends a term that a `[` after it indexes (a name, or a closing bracket).
fn ends_term(t: &Token) -> bool {
    t.kind == Kind::Word || t.is(")") || t.is("]") || t.is("}")
}

/// The dotted name before the `(` at `open`, when it is a call.
fn callee_before(tokens: &[Token], open: usize) -> Option<String> {
    let mut start = open;
    while start > 0 {
        let t = &tokens[start - 1];
        if t.kind == Kind::Word || (t.is(".") && start >= 2 && tokens[start - 2].kind == Kind::Word)
        {
            start -= 1;
        } else {
            break;
        }
    }
    (start < open).then(|| {
        tokens[start..open]
            .iter()
            .map(|t| t.text.as_str())
            .collect::<Vec<_>>()
            .concat()
    })
}

/// Tokens back to one line of Rego: no space around `.` and inside brackets, one after commas.
fn render(tokens: &[Token]) -> String {
    let mut out = String::new();
    let mut previous: Option<&Token> = None;
    for t in tokens.iter().filter(|t| t.kind != Kind::Newline) {
        let tight = [".", "(", ")", "[", "]", ",", ":"].contains(&t.text.as_str())
            && t.kind == Kind::Punct
            && t.text != ":";
        let after_open = previous
            .is_some_and(|p| p.kind == Kind::Punct && [".", "(", "["].contains(&p.text.as_str()));
        if previous.is_some() && !tight && !after_open {
            out.push(' ');
        }
        out.push_str(&t.text);
        previous = Some(t);
    }
    out
}

fn operators_text(operators: &[&Token]) -> String {
    operators
        .iter()
        .map(|t| t.text.as_str())
        .filter(|t| *t != "==" && *t != "=")
        .collect::<Vec<_>>()
        .join("`, `")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lint(src: &str) -> Vec<(u32, String)> {
        let mut bundle = BundleFacts::default();
        bundle.learn(src);
        lint_source("t.rego", src, &bundle)
            .into_iter()
            .map(|f| (f.line, f.rule))
            .collect()
    }

    /// Each shape checked against OPA v1.20.2 (opa-golib-python-bindings 0.4.4) with an input where the
    /// operand is undefined: the `diverges` ones do not fire under OPA and fire under regorus.
    #[test]
    fn flags_the_shapes_opa_evaluates_before_not() {
        let diverges = [
            "not data.actions[input.action.name]",
            "not is_string(input.foo.id)",
            "not is_string(x.id)",
            "not count(input.foo.list) > 0",
            "not input.foo[input.k]",
            "not x[input.k]",
            "not startswith(input.foo.id, \"a\")",
            "not \"x\" in input.foo.list",
            "not is_array([input.foo.id])",
            "not is_string(r)",
            "not input.foo.id in {\"a\"}",
            "not {\"a\": input.foo.id}.a",
            "not input.foo.n < 3",
            "not input.foo.n != 3",
            "not input.foo.n + 1 == 3",
            "not data.t[input.k] == 3",
            "not is_string(f(x))",
            "not x in conditional",
            "not lib.non_empty(\n\t\ttoken.policies,\n\t)",
        ];
        for shape in diverges {
            let src = format!(
                "package x\n\nr := 1 if input.zzz\n\nconditional := {{1}} if input.c else := {{2}} if input.d\n\nf(v) := v if v > 1\n\nrule if {{\n\tx := input.foo\n\t{shape}\n}}\n"
            );
            assert_eq!(lint(&src), vec![(11, "rule".to_string())], "{shape}");
        }
    }

    #[test]
    fn leaves_the_shapes_both_engines_agree_on() {
        let agree = [
            "not input.foo.id == \"b\"",
            "not input.foo.id",
            "not x.id",
            "not x.id == 1",
            "not data.actions[\"k\"]",
            "not is_string(object.get(x, \"id\", null))",
            "not is_string(object.get(input, [\"foo\", \"id\"], null))",
            "not count([y | some y in input.foo.list]) > 0",
            "not r",
            "not d",
            "not is_string(d)",
            "not is_string(x)",
            "not f(x)",
            "not x in {\"a\", \"b\"}",
            "not valid with input as {}",
            "not is_string(object.get(x, \"k\", \"\"))",
            "not startswith(x, prefix)",
            "not x in spaced",
            "not is_string(get(x, \"k\"))",
            "not x in chain",
            "not x in members",
        ];
        for shape in agree {
            let src = format!(
                "package x\n\ndefault d := 1\n\nd := 2 if input.q\n\nr := 1 if input.zzz\n\nf(v) := v if v > 1\n\nget(o, k) := o[k] if is_object(o)\n\nelse := null\n\nspaced := {{1}} if input.s\n\nelse := set()\n\nprefix := \"com.\"\n\nchain := {{1}} if input.a else := {{2}}\n\nmembers contains 1 if input.b\n\nrule if {{\n\tx := input.foo\n\t{shape}\n}}\n"
            );
            assert_eq!(lint(&src), vec![], "{shape}");
        }
        // Comments and strings are not code.
        assert_eq!(
            lint("package x\n\n# not is_string(input.a)\nm := \"not is_string(input.a)\"\n"),
            vec![]
        );
    }

    #[test]
    fn names_file_line_rule_and_operand() {
        let src = "package x\n\nmalformed contains r if {\n\tsome g in input.groups\n\tnot is_string(g.id)\n\tr := 1\n}\n";
        let found = lint_source("tokens.rego", src, &BundleFacts::default());
        assert_eq!(found.len(), 1);
        let f = &found[0];
        assert_eq!(
            (f.file.as_str(), f.line, f.rule.as_str()),
            ("tokens.rego", 5, "malformed")
        );
        assert_eq!(f.why, "argument of `is_string` `g.id`");
        assert_eq!(f.expression, "not is_string(g.id)");
        assert!(f.to_string().contains("tokens.rego:5: rule malformed"));
    }
}
