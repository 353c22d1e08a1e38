//! What tollgate stores of a request, with its secrets taken out.
//!
//! Owns: the reviewed list of secret fields (`data.secrets`, `policies/secrets/data.yaml`: names redacted at
//! any depth of a body, and paths per provider), the value detectors that run on every recorded string
//! whatever the list says (card numbers by Luhn, known key prefixes, PEM private keys), and the replacement
//! `[redacted hmac-sha256:<hex>]` (keyed with the deployment's redaction key; `[redacted sha256:<hex>]` when
//! none is configured), so that records of the same secret still compare equal.
//! Must not: do I/O, decide anything about a request, or change what the policy judges: the policy sees the
//! request whole, and only what is stored passes through here. Reading and hashing the data file is `policy`'s
//! job, choosing what to record is `proxy`'s.
//!
//! Almost every request carries no secret, so each function here first walks its input without allocating and
//! copies only when something must change (a borrowed [`Cow`] means "store it as it is").

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::{Range, RangeInclusive};

use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};

use crate::canon;

/// The field names redacted at any depth of any body when a bundle has no `data.secrets`: the list tollgate
/// has always redacted. The shipped `secrets.yaml` lists them all and more.
pub const DEFAULT_NAMES: &[&str] = &[
    "private_key",
    "auth_code",
    "password",
    "secret",
    "client_secret",
    "cvc",
    "account_number",
    "value",
];

/// Key prefixes the detectors recognise, each with the fewest ASCII letters and digits that must follow it
/// (fewer is a mention such as "sk_live_…", not a key). Real keys are longer: Stripe's 24 to 99, Cloudflare's
/// scannable credentials 40 plus a checksum, tollgate's agent keys exactly 40 (`identity::KEY_PREFIX`).
/// Cloudflare's older API tokens and global keys have no prefix and cannot be told from an id; they only
/// arrive in the headers tollgate strips.
const KEY_PREFIXES: &[(&str, usize)] = &[
    ("sk_live_", 16),
    ("sk_test_", 16),
    ("rk_live_", 16),
    ("rk_test_", 16),
    ("ek_live_", 16),
    ("ek_test_", 16),
    ("whsec_", 16),
    ("cfk_", 40),
    ("cfut_", 40),
    ("cfat_", 40),
    ("tg_", 40),
];

/// How many digits a payment card number has (ISO/IEC 7812).
const CARD_DIGITS: RangeInclusive<usize> = 13..=19;

/// A PEM block is detected when its label contains this (`PRIVATE KEY`, `RSA PRIVATE KEY`, `ENCRYPTED PRIVATE
/// KEY`, `OPENSSH PRIVATE KEY`, `PGP PRIVATE KEY BLOCK`, …). Certificates, CSRs and public keys are public and
/// stay readable for reviewers.
const PEM_SECRET_LABEL: &str = "PRIVATE";
/// Longer than any real PEM label; past it, "-----BEGIN " is not read as a block.
const PEM_MAX_LABEL: usize = 64;

/// Redacts what tollgate records, by the bundle's `data.secrets` and the built-in detectors. Built once per
/// bundle load; immutable.
#[derive(Debug)]
pub struct Redactor {
    /// Lower case.
    names: Vec<String>,
    /// Provider → its paths, as a tree of segments.
    paths: HashMap<String, PathNode>,
}

/// One segment of the path tree: literal children, the `*` child, and whether a path ends here.
#[derive(Debug, Default)]
struct PathNode {
    children: HashMap<String, PathNode>,
    any: Option<Box<PathNode>>,
    end: bool,
}

/// A step down a value: an object key, an array index, or a bracket-key `[]` (some index, unknown).
#[derive(Clone, Copy)]
enum Step<'k> {
    Key(&'k str),
    Index(usize),
    Append,
}

impl Redactor {
    /// From the bundle's `data.secrets` (`None`: the bundle has none, and [`DEFAULT_NAMES`] apply; the
    /// detectors are always on). Every problem in the data is reported at once, joined by "; ".
    pub fn from_data(secrets: Option<&Value>) -> Result<Redactor, String> {
        let Some(secrets) = secrets else {
            return Ok(Redactor {
                names: DEFAULT_NAMES.iter().map(|n| n.to_string()).collect(),
                paths: HashMap::new(),
            });
        };
        let Value::Object(top) = secrets else {
            return Err("must be a mapping with `names` and `providers`".to_string());
        };
        let mut errors = Vec::new();
        for key in top.keys().filter(|k| *k != "names" && *k != "providers") {
            errors.push(format!(
                "unknown key {key:?} (the keys are names and providers)"
            ));
        }
        let names = match top.get("names") {
            Some(names) => read_names(names, &mut errors),
            // A file without names would silently drop the defaults.
            None => {
                errors.push("names: missing (list the secret field names, or [] for none)".into());
                Vec::new()
            }
        };
        let paths = match top.get("providers") {
            None | Some(Value::Null) => HashMap::new(),
            Some(Value::Object(providers)) => providers
                .iter()
                .map(|(provider, list)| (provider.clone(), read_paths(provider, list, &mut errors)))
                .collect(),
            Some(_) => {
                errors.push("providers: must be a mapping of provider → list of paths".into());
                HashMap::new()
            }
        };
        if errors.is_empty() {
            Ok(Redactor { names, paths })
        } else {
            Err(errors.join("; "))
        }
    }

    /// The policy input as it may be stored. `request.body` is redacted by the names, `provider`'s paths and
    /// the detectors; `request.query` by the names and paths applied to its decoded bracket keys (as
    /// [`Redactor::redact_query`] does to the raw query) and the detectors; every other string in the input
    /// (headers, path, run, action params, object keys) by the detectors. Borrowed when nothing matched.
    pub fn redact_input<'a>(&self, provider: &str, input: &'a Value) -> Cow<'a, Value> {
        let paths = self.paths.get(provider);
        let redacted = match input {
            Value::Object(top) => rebuild_object(top, |key, child| match (key, child) {
                ("request", Value::Object(request)) => {
                    rebuild_object(request, |key, child| match key {
                        "body" => self.walk(child, &self.names, paths.as_slice()),
                        "query" => self.redact_query_map(paths, child),
                        "headers" => redact_headers(child),
                        _ => detect(child),
                    })
                    .map(Value::Object)
                }
                _ => detect(child),
            })
            .map(Value::Object),
            other => detect(other),
        };
        match redacted {
            Some(value) => Cow::Owned(value),
            None => Cow::Borrowed(input),
        }
    }

    /// A raw query string with its secret values replaced and re-encoded: by name or `provider`'s path after
    /// decoding the bracket keys (`card[number]` is `card.number`), and by the detectors (in keys too). Pieces
    /// that need no change keep their bytes. `None` when nothing matched. A query that cannot be decoded is
    /// not stored as it is: every value is replaced (by the hash of its raw text) and the keys are searched
    /// by the detectors as raw text.
    pub fn redact_query(&self, provider: &str, raw: &str) -> Option<String> {
        let paths = self.paths.get(provider);
        let pieces: Vec<&str> = raw.split('&').collect();
        let mut decoded = Vec::with_capacity(pieces.len());
        for piece in &pieces {
            match canon::form_pairs(piece, "query") {
                Ok(pairs) => decoded.push(pairs.into_iter().next()),
                Err(_) => return Some(redact_undecodable_query(&pieces)),
            }
        }
        let mut changed = false;
        let mut out = Vec::with_capacity(pieces.len());
        for (piece, pair) in pieces.iter().zip(decoded) {
            let Some((key, value)) = pair else {
                out.push(Cow::Borrowed(*piece));
                continue;
            };
            let (raw_key, has_value) = match piece.split_once('=') {
                Some((raw_key, _)) => (raw_key, true),
                None => (*piece, false),
            };
            let new_key = redact_text(&key);
            let new_value = if has_value && self.query_key_is_secret(paths, &key) {
                Cow::Owned(replacement(value.as_bytes()))
            } else {
                redact_text(&value)
            };
            if matches!((&new_key, &new_value), (Cow::Borrowed(_), Cow::Borrowed(_))) {
                out.push(Cow::Borrowed(*piece));
                continue;
            }
            changed = true;
            let mut rebuilt = match new_key {
                Cow::Borrowed(_) => raw_key.to_string(),
                Cow::Owned(k) => encode(&k),
            };
            if has_value {
                rebuilt.push('=');
                rebuilt.push_str(&encode(&new_value));
            }
            out.push(Cow::Owned(rebuilt));
        }
        changed.then(|| out.join("&"))
    }

    /// Free text (a path, a policy reason's message) with every detector match replaced. Borrowed when
    /// nothing matched.
    pub fn redact_text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        redact_text(text)
    }

    /// The value redacted, or `None` if nothing in it matched. `names` are the names in force (none outside a
    /// body); `states` are the path-tree nodes reached so far (none when no path leads here).
    fn walk(&self, value: &Value, names: &[String], states: &[&PathNode]) -> Option<Value> {
        match value {
            Value::Object(map) => rebuild_object(map, |key, child| {
                self.walk_child(Step::Key(key), child, names, states)
            })
            .map(Value::Object),
            Value::Array(items) => rebuild_array(items, |index, child| {
                self.walk_child(Step::Index(index), child, names, states)
            })
            .map(Value::Array),
            scalar => detect_scalar(scalar),
        }
    }

    fn walk_child(
        &self,
        step: Step<'_>,
        child: &Value,
        names: &[String],
        states: &[&PathNode],
    ) -> Option<Value> {
        let next = advance(states, step);
        let named = match step {
            Step::Key(key) => is_name(names, key),
            Step::Index(_) | Step::Append => false,
        };
        if !child.is_null() && (named || next.iter().any(|node| node.end)) {
            return Some(hashed(child));
        }
        self.walk(child, names, &next)
    }

    /// `request.query` of the input: decoded keys → lists of values. A secret key has each of its values
    /// replaced, as [`Redactor::redact_query`] replaces them.
    fn redact_query_map(&self, paths: Option<&PathNode>, query: &Value) -> Option<Value> {
        let Value::Object(map) = query else {
            return detect(query);
        };
        rebuild_object(map, |key, values| {
            if !self.query_key_is_secret(paths, key) {
                return detect(values);
            }
            match values {
                Value::Null => None,
                Value::Array(items) => {
                    rebuild_array(items, |_, item| (!item.is_null()).then(|| hashed(item)))
                        .map(Value::Array)
                }
                other => Some(hashed(other)),
            }
        })
        .map(Value::Object)
    }

    /// Whether a decoded query key names a secret: one of its bracket segments is a name, or the segments
    /// (or a prefix of them) follow one of the provider's paths.
    fn query_key_is_secret(&self, paths: Option<&PathNode>, key: &str) -> bool {
        let steps = key_steps(key);
        if steps
            .iter()
            .any(|step| matches!(step, Step::Key(k) if is_name(&self.names, k)))
        {
            return true;
        }
        let mut states: Vec<&PathNode> = Vec::new();
        states.extend(paths);
        for step in steps {
            if states.is_empty() {
                break;
            }
            states = advance(&states, step);
            if states.iter().any(|node| node.end) {
                return true;
            }
        }
        false
    }
}

/// Whether the whole string (surrounding whitespace aside) is a secret by the detectors: a 13–19 digit card
/// number passing the Luhn check (single spaces or dashes allowed between digit groups), a known key prefix
/// followed by enough key characters (see `KEY_PREFIXES`: Stripe secret, restricted and ephemeral keys and
/// webhook secrets, Cloudflare's scannable credentials, tollgate agent keys), or a PEM block whose label
/// contains `PRIVATE`.
pub fn looks_secret(s: &str) -> bool {
    let s = s.trim();
    !s.is_empty()
        && find_secrets(s)
            .first()
            .is_some_and(|found| found.start == 0 && found.end == s.len())
}

/// The deployment's redaction key, set once at start from `[audit] redaction_key_env`. With it a redacted
/// value is its HMAC-SHA256: records of one secret still compare equal, but a short secret (a CVC, an expiry,
/// a card number whose BIN and last four are known) cannot be recovered by hashing every candidate, which a
/// plain SHA-256 allows to anyone holding the records.
static KEY: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

/// Sets the redaction key for this process (the first call wins; an empty key is ignored).
pub fn set_key(key: &[u8]) {
    if !key.is_empty() {
        let _ = KEY.set(key.to_vec());
    }
}

/// Whether redacted values are keyed (HMAC) in this process.
pub fn keyed() -> bool {
    KEY.get().is_some()
}

/// The text every redacted value is replaced with: `[redacted hmac-sha256:<hex>]` with a key, else
/// `[redacted sha256:<hex>]`.
fn replacement(bytes: &[u8]) -> String {
    match KEY.get() {
        Some(key) => format!(
            "[redacted hmac-sha256:{}]",
            hex::encode(hmac_sha256(key, bytes))
        ),
        None => format!("[redacted sha256:{}]", hex::encode(Sha256::digest(bytes))),
    }
}

/// HMAC-SHA256 (RFC 2104): H((K' ^ opad) || H((K' ^ ipad) || m)), K' the key padded (or hashed) to 64 bytes.
pub(crate) fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut padded = [0u8; BLOCK];
    if key.len() > BLOCK {
        padded[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        padded[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(padded.map(|b| b ^ 0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(padded.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

#[cfg(test)]
#[test]
fn hmac_matches_rfc_4231() {
    // RFC 4231, test case 2.
    assert_eq!(
        hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    // Test case 6: a key longer than the block is hashed first.
    assert_eq!(
        hex::encode(hmac_sha256(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First"
        )),
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
    );
}

/// A whole value replaced: a string by the hash of its UTF-8, anything else by the hash of its compact JSON.
fn hashed(value: &Value) -> Value {
    Value::String(match value {
        Value::String(s) => replacement(s.as_bytes()),
        other => replacement(other.to_string().as_bytes()),
    })
}

/// The value with the detectors applied to every string and key in it; `None` if nothing matched.
fn detect(value: &Value) -> Option<Value> {
    match value {
        Value::Object(map) => rebuild_object(map, |_, child| detect(child)).map(Value::Object),
        Value::Array(items) => rebuild_array(items, |_, child| detect(child)).map(Value::Array),
        scalar => detect_scalar(scalar),
    }
}

fn detect_scalar(value: &Value) -> Option<Value> {
    match value {
        Value::String(s) => match redact_text(s) {
            Cow::Borrowed(_) => None,
            Cow::Owned(redacted) => Some(Value::String(redacted)),
        },
        Value::Number(n) if is_card_number(n) => Some(hashed(value)),
        _ => None,
    }
}

/// A JSON integer of 13–19 digits passing the Luhn check.
fn is_card_number(n: &Number) -> bool {
    n.as_u64().is_some_and(|n| {
        let digits = n.to_string();
        CARD_DIGITS.contains(&digits.len()) && luhn(digits.bytes())
    })
}

fn redact_text(text: &str) -> Cow<'_, str> {
    let found = find_secrets(text);
    if found.is_empty() {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(replace_matches(text, &found, |r| r.to_string()))
    }
}

/// `text` with each range replaced by the replacement of what it covers, passed through `render`.
fn replace_matches(text: &str, found: &[Range<usize>], render: impl Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for range in found {
        out.push_str(text.get(at..range.start).unwrap_or_default());
        let secret = text.get(range.clone()).unwrap_or_default();
        out.push_str(&render(&replacement(secret.as_bytes())));
        at = range.end;
    }
    out.push_str(text.get(at..).unwrap_or_default());
    out
}

/// A query that does not decode: every value replaced by the hash of its raw text, keys searched as raw
/// text.
fn redact_undecodable_query(pieces: &[&str]) -> String {
    let redacted: Vec<String> = pieces
        .iter()
        .map(|piece| {
            let (key, value) = match piece.split_once('=') {
                Some((key, value)) => (key, Some(value)),
                None => (*piece, None),
            };
            let mut out = replace_matches(key, &find_secrets(key), encode);
            if let Some(value) = value {
                out.push('=');
                out.push_str(&encode(&replacement(value.as_bytes())));
            }
            out
        })
        .collect();
    redacted.join("&")
}

/// Form-encodes a key or value for a query (space as '+', as `canon::canonical_query` writes them).
fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// The object rebuilt when `redact` changes a value (it gets each original key) or a key holds a detector
/// match; `None`, and no copy, when nothing changed.
fn rebuild_object(
    map: &Map<String, Value>,
    mut redact: impl FnMut(&str, &Value) -> Option<Value>,
) -> Option<Map<String, Value>> {
    let mut out: Option<Map<String, Value>> = None;
    for (index, (key, value)) in map.iter().enumerate() {
        let new_key = redact_text(key);
        let new_value = redact(key, value);
        if out.is_none() && (matches!(new_key, Cow::Owned(_)) || new_value.is_some()) {
            out = Some(
                map.iter()
                    .take(index)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            );
        }
        if let Some(out) = out.as_mut() {
            out.insert(
                new_key.into_owned(),
                new_value.unwrap_or_else(|| value.clone()),
            );
        }
    }
    out
}

/// The array rebuilt when `redact` changes an item; `None`, and no copy, when nothing changed.
fn rebuild_array(
    items: &[Value],
    mut redact: impl FnMut(usize, &Value) -> Option<Value>,
) -> Option<Vec<Value>> {
    let mut out: Option<Vec<Value>> = None;
    for (index, item) in items.iter().enumerate() {
        let new_item = redact(index, item);
        if out.is_none() && new_item.is_some() {
            out = Some(items.iter().take(index).cloned().collect());
        }
        if let Some(out) = out.as_mut() {
            out.push(new_item.unwrap_or_else(|| item.clone()));
        }
    }
    out
}

fn is_name(names: &[String], key: &str) -> bool {
    names.iter().any(|name| name.eq_ignore_ascii_case(key))
}

/// The path-tree nodes reached from `states` by one step. Allocates only while some path is being followed.
fn advance<'p>(states: &[&'p PathNode], step: Step<'_>) -> Vec<&'p PathNode> {
    let mut next = Vec::new();
    for node in states {
        if let Some(any) = &node.any {
            next.push(any.as_ref());
        }
        let literal = match step {
            Step::Key(key) => node.children.get(key),
            Step::Index(index) if !node.children.is_empty() => {
                node.children.get(&index.to_string())
            }
            Step::Index(_) | Step::Append => None,
        };
        next.extend(literal);
    }
    next
}

/// The steps of a decoded query key read as bracket keys: `items[0][price]` → items, 0, price; `tags[]` →
/// tags, some index. A key that is not well-formed brackets is split at every bracket instead, so that a name
/// inside it is still found.
fn key_steps(key: &str) -> Vec<Step<'_>> {
    let (base, mut rest) = key.find('[').map_or((key, ""), |at| key.split_at(at));
    let mut steps = vec![Step::Key(base)];
    while !rest.is_empty() {
        let segment = rest
            .strip_prefix('[')
            .and_then(|inside| inside.split_once(']'))
            .filter(|(segment, _)| !segment.contains('['));
        let Some((segment, after)) = segment else {
            return key
                .split(['[', ']'])
                .filter(|s| !s.is_empty())
                .map(Step::Key)
                .collect();
        };
        steps.push(if segment.is_empty() {
            Step::Append
        } else {
            Step::Key(segment)
        });
        rest = after;
    }
    steps
}

fn read_names(names: &Value, errors: &mut Vec<String>) -> Vec<String> {
    let Value::Array(items) = names else {
        errors.push("names: must be a list of field names".into());
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let Some(name) = item.as_str() else {
            errors.push(format!("names[{index}]: {item} is not a string"));
            continue;
        };
        if name.is_empty() || name.contains(['.', '*', '[', ']']) {
            errors.push(format!(
                "names[{index}]: {name:?} is not a field name (no dots, brackets or *: paths go under providers)"
            ));
            continue;
        }
        let name = name.to_ascii_lowercase();
        if out.contains(&name) {
            errors.push(format!("names[{index}]: {name:?} is listed twice"));
            continue;
        }
        out.push(name);
    }
    out
}

fn read_paths(provider: &str, list: &Value, errors: &mut Vec<String>) -> PathNode {
    let mut root = PathNode::default();
    let Value::Array(items) = list else {
        errors.push(format!(
            "providers.{provider}: must be a list of paths such as card.number"
        ));
        return root;
    };
    let mut seen: Vec<&str> = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let at = format!("providers.{provider}[{index}]");
        let Some(path) = item.as_str() else {
            errors.push(format!("{at}: {item} is not a string"));
            continue;
        };
        let segments: Vec<&str> = path.split('.').collect();
        if let Some(problem) = path_problem(&segments) {
            errors.push(format!("{at}: {path:?} {problem}"));
            continue;
        }
        if seen.contains(&path) {
            errors.push(format!("{at}: {path:?} is listed twice"));
            continue;
        }
        seen.push(path);
        let mut node = &mut root;
        for segment in segments {
            node = if segment == "*" {
                node.any.get_or_insert_with(Box::default).as_mut()
            } else {
                node.children.entry(segment.to_string()).or_default()
            };
        }
        node.end = true;
    }
    root
}

/// What is wrong with a path's segments, if anything.
fn path_problem(segments: &[&str]) -> Option<&'static str> {
    if segments.iter().any(|s| s.is_empty()) {
        Some("has an empty segment (segments are separated by single dots)")
    } else if segments.iter().any(|s| s.contains(['[', ']'])) {
        Some(
            "uses brackets: write card.number for card[number] and items.0 or items.* for items[0]",
        )
    } else if segments.iter().any(|s| *s != "*" && s.contains('*')) {
        Some("uses * inside a segment (* matches one whole key or index)")
    } else if segments.iter().all(|s| *s == "*") {
        Some("is only wildcards, which would redact whole bodies: name the fields")
    } else {
        None
    }
}

/// Words in a header name that mark its value as a credential (`CF-Access-Client-Secret`, `X-Api-Key`,
/// `X-Session-Token` …): such values are hashed whatever they look like.
const SECRET_HEADER_WORDS: &[&str] = &[
    "secret",
    "token",
    "key",
    "password",
    "passwd",
    "auth",
    "cookie",
    "session",
    "signature",
    "credential",
];

/// The recorded request headers: values of credential-named headers hashed (`Idempotency-Key` excepted: it
/// is an identifier tollgate itself derives), every other value through the detectors.
fn redact_headers(headers: &Value) -> Option<Value> {
    let Value::Object(map) = headers else {
        return detect(headers);
    };
    rebuild_object(map, |name, value| {
        let lower = name.to_ascii_lowercase();
        let secret = lower != "idempotency-key"
            && SECRET_HEADER_WORDS.iter().any(|word| lower.contains(word));
        match value {
            Value::String(_) if secret => Some(hashed(value)),
            _ => detect(value),
        }
    })
    .map(Value::Object)
}

/// Where the detectors match in `text`, in order and not overlapping. Allocates only when something matched.
fn find_secrets(text: &str) -> Vec<Range<usize>> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(&byte) = bytes.get(at) {
        // A key or card number starts a word: "xsk_live_…" or "a4242…" is part of something else.
        let starts_word = at == 0
            || bytes
                .get(at - 1)
                .is_some_and(|b| !b.is_ascii_alphanumeric());
        // A card number is found even glued to letters ("4242…x", "pan4242…"): an identifier that happens
        // to hold a Luhn-valid run is hashed too, which costs nothing but readability.
        let starts_run = at == 0 || bytes.get(at - 1).is_some_and(|b| !b.is_ascii_digit());
        if byte.is_ascii_digit() && starts_run {
            at = card_numbers(bytes, at, &mut found);
            continue;
        }
        let end = match byte {
            b'-' => private_pem(text, at),
            b'a'..=b'z' if starts_word => prefixed_key(bytes, at),
            _ => None,
        };
        match end {
            Some(end) => {
                found.push(at..end);
                at = end;
            }
            None => at += 1,
        }
    }
    found
}

/// Reads the run of digit groups starting at `start` (digits, with single spaces or dashes between groups),
/// pushes the card numbers in it, and returns where the run ends. A run that runs into a letter is part of an
/// identifier and holds no card number. Inside a run, each card number is a whole number of groups: the
/// longest Luhn-valid 13–19 digits starting at the earliest group, then on from there.
fn card_numbers(bytes: &[u8], start: usize, found: &mut Vec<Range<usize>>) -> usize {
    let is_digit = |i: usize| bytes.get(i).is_some_and(u8::is_ascii_digit);
    let is_separator = |i: usize| {
        bytes
            .get(i)
            .is_some_and(|b| matches!(b, b' ' | b'-' | b'.' | b'_' | b'/'))
    };
    // Up to two separator bytes between digit groups ("4242 4242", "4242  4242", "4242.4242", "4242 - 4242"
    // is not: three).
    let separator_len = |i: usize| {
        let n = (0..2).take_while(|k| is_separator(i + k)).count();
        (n > 0 && is_digit(i + n)).then_some(n)
    };
    // First pass, without allocating: the run's end and its digit count. Most runs are short numbers.
    let (mut end, mut digits) = (start, 0);
    loop {
        while is_digit(end) {
            end += 1;
            digits += 1;
        }
        match separator_len(end) {
            Some(n) => end += n,
            None => break,
        }
    }
    if digits < *CARD_DIGITS.start() {
        return end;
    }
    // Second pass: the groups, as byte ranges.
    let mut groups: Vec<Range<usize>> = Vec::new();
    let mut at = start;
    while at < end {
        let group_start = at;
        while is_digit(at) {
            at += 1;
        }
        groups.push(group_start..at);
        while at < end && !is_digit(at) {
            at += 1; // the separator
        }
    }
    let mut first = 0;
    while first < groups.len() {
        let mut best = None;
        let mut count = 0;
        for (last, group) in groups.iter().enumerate().skip(first) {
            count += group.len();
            if count > *CARD_DIGITS.end() {
                break;
            }
            let window = groups.get(first..=last).unwrap_or_default();
            if CARD_DIGITS.contains(&count)
                && luhn(
                    window
                        .iter()
                        .flat_map(|g| bytes.get(g.clone()).unwrap_or_default().iter().copied()),
                )
            {
                best = Some(last);
            }
        }
        match best {
            Some(last) => {
                if let (Some(from), Some(to)) = (groups.get(first), groups.get(last)) {
                    found.push(from.start..to.end);
                }
                first = last + 1;
            }
            None => first += 1,
        }
    }
    end
}

/// The Luhn check over ASCII digits, most significant first.
fn luhn(digits: impl DoubleEndedIterator<Item = u8>) -> bool {
    let sum: u32 = digits
        .rev()
        .enumerate()
        .map(|(position, digit)| {
            let d = u32::from(digit - b'0');
            if position % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// The end of a key with a known prefix starting at `at`, if there is one.
fn prefixed_key(bytes: &[u8], at: usize) -> Option<usize> {
    let rest = bytes.get(at..)?;
    KEY_PREFIXES.iter().find_map(|(prefix, min)| {
        let tail = rest.strip_prefix(prefix.as_bytes())?;
        let length = tail
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric())
            .count();
        (length >= *min).then_some(at + prefix.len() + length)
    })
}

/// The end of a PEM private-key block starting at `at`: after its `-----END …-----` line, or the end of the
/// text when that is missing (a truncated key is still a key).
fn private_pem(text: &str, at: usize) -> Option<usize> {
    const BEGIN: &str = "-----BEGIN ";
    const DASHES: &str = "-----";
    let after_begin = text.get(at..)?.strip_prefix(BEGIN)?;
    // Only the label's length is searched, so text full of "-----BEGIN " stays linear.
    let window = after_begin.as_bytes();
    let window = window.get(..PEM_MAX_LABEL + DASHES.len()).unwrap_or(window);
    let label_end = window
        .windows(DASHES.len())
        .position(|w| w == DASHES.as_bytes())?;
    let label = after_begin.get(..label_end)?;
    if label.contains(['\n', '\r']) || !label.to_ascii_uppercase().contains(PEM_SECRET_LABEL) {
        return None;
    }
    let body_start = at + BEGIN.len() + label_end + DASHES.len();
    let end_marker = format!("-----END {label}-----");
    Some(
        text.get(body_start..)
            .and_then(|body| body.find(&end_marker))
            .map_or(text.len(), |found| body_start + found + end_marker.len()),
    )
}

#[cfg(test)]
mod tests;
