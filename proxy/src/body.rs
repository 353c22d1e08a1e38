//! Request body → the value the policy sees: step 5 of the data path.
//!
//! This module owns reading a request body the way the provider will read it, and refusing it
//! whenever that reading is not unique: JSON with a repeated key (providers disagree on which copy
//! wins), form bodies whose bracket keys collide or leave holes, multipart bodies whose framing a
//! lenient parser could split differently. The caller keeps the original bytes and forwards them
//! unchanged; what comes out of here is only what the policy judges, so it must be the one meaning
//! those bytes can have.
//!
//! It does no I/O, knows nothing of policy, store or HTTP responses: it never sees a header map,
//! only the Content-Type value, and a [`Malformed`] becomes a `request_malformed` refusal
//! elsewhere.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value, json};
use sha2::{Digest, Sha256};

use crate::canon::{self, Malformed};
use crate::classify::BodyKind;

/// The deepest JSON nesting accepted. Provider bodies nest a handful of levels (a Cloudflare
/// token's `policies[].permission_groups[]` is four); the cap keeps recursion, and the policy's
/// walk over the value, bounded well below serde_json's own limit of 128.
const MAX_JSON_DEPTH: usize = 64;

/// The most parameters a form body (with a write's merged query) may have. Stripe's largest requests (a
/// Checkout session with many line items, 50 metadata keys) use a few hundred; a body of 100k parameters
/// cost a CPU-second to judge before this cap.
const MAX_FORM_PARAMETERS: usize = 2_000;

/// The most JSON values (objects, arrays and scalars, counted together) a body may have. A Cloudflare DNS
/// batch of a few hundred records is a few thousand; the policy walks every value, so the cap bounds what
/// one request costs to judge.
const MAX_JSON_VALUES: usize = 20_000;

/// The most bracket segments accepted in one form key. Stripe's deepest keys
/// (`items[0][price_data][recurring][interval]`) use four.
const MAX_FORM_BRACKETS: usize = 16;

/// RFC 2046 section 5.1.1 caps a boundary at 70 characters.
const MAX_BOUNDARY_LEN: usize = 70;

/// The multipart part whose JSON the policy sees (Cloudflare Workers uploads carry their settings
/// there).
const METADATA_PART: &str = "metadata";

/// One segment of a form key after its base name: `[name]`, `[0]` or `[]`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FormSegment {
    Field(String),
    Index(usize),
    Append,
}

/// A form body as it is being assembled. A container's kind is fixed by the first key that creates
/// it, so a later key of another kind is a conflict rather than a silent merge.
#[derive(Debug)]
enum FormNode {
    Value(String),
    Fields(BTreeMap<String, FormNode>),
    Indexed(BTreeMap<usize, FormNode>),
    Appended(Vec<String>),
}

/// One multipart part as the policy sees it; the content itself stays opaque.
#[derive(Debug)]
struct Part<'a> {
    name: String,
    filename: Option<String>,
    content_type: Option<String>,
    content: &'a [u8],
}

/// Builds a `serde_json::Value` like serde_json's own `Value` deserializer, but refuses a repeated
/// object key and nesting deeper than [`MAX_JSON_DEPTH`]. `depth` counts the containers around the
/// value.
#[derive(Debug, Clone, Copy)]
struct StrictJson {
    depth: usize,
}

/// Parses a request body for the policy. `bytes` are kept by the caller for forwarding unchanged.
///
/// - An empty body is `Null`, whatever the Content-Type.
/// - A non-empty body needs a Content-Type.
/// - `application/json` and `*/*+json` (parameters ignored): JSON, duplicate keys refused at any
///   depth.
/// - `application/x-www-form-urlencoded`: Stripe bracket keys become nested objects and arrays of
///   strings.
/// - `multipart/form-data`: `{"metadata": <JSON of the "metadata" part or null>, "parts": [..]}`.
/// - Anything else is opaque: `Null`, and the policy has only [`body_sha256`] to go on.
pub fn parse_body(content_type: Option<&str>, bytes: &[u8]) -> Result<Value, Malformed> {
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    let Some(content_type) = content_type else {
        return Err(Malformed::new("a request body needs a Content-Type"));
    };
    let (essence, parameters) = split_parameters(content_type);
    let essence = essence.trim().to_ascii_lowercase();
    if is_json_media_type(&essence) {
        parse_json(bytes, "the JSON body")
    } else if essence == "application/x-www-form-urlencoded" {
        parse_form(bytes)
    } else if essence == "multipart/form-data" {
        parse_multipart(parameters, bytes)
    } else {
        Ok(Value::Null)
    }
}

/// Parses a request body the way its route's provider reads it: the catalog's [`BodyKind`] decides, the
/// declared Content-Type must agree with it, and the bytes must be that kind. `query`, for a provider that
/// merges query parameters into a form body (Stripe), is the raw query of a write: its parameters become
/// part of the judged body, and a parameter present in both is refused.
///
/// - An empty body (and no merged query) is `Null`.
/// - A non-empty body needs a Content-Type of the route's kind; anything else is refused, so a body can
///   never be judged under one reading and acted on under another (JSON bytes declared as a form, a form
///   declared as `text/plain`).
/// - A form body that is JSON-shaped (starts with `{` or `[`) is refused: no form a provider accepts looks
///   like that, and a lenient reader could take it as JSON.
/// - A form's `charset` parameter, if any, must be UTF-8.
pub fn parse_request_body(
    kind: BodyKind,
    content_type: Option<&str>,
    bytes: &[u8],
    query: Option<&str>,
) -> Result<Value, Malformed> {
    let query = query.filter(|q| !q.is_empty());
    if !bytes.is_empty() {
        let Some(content_type) = content_type else {
            return Err(Malformed::new(format!(
                "a request body needs a Content-Type; this route takes {}",
                kind.as_str()
            )));
        };
        let (essence, parameters) = split_parameters(content_type);
        let essence = essence.trim().to_ascii_lowercase();
        let declared = if is_json_media_type(&essence) {
            Some(BodyKind::Json)
        } else if essence == "application/x-www-form-urlencoded" {
            Some(BodyKind::Form)
        } else if essence == "multipart/form-data" {
            Some(BodyKind::Multipart)
        } else {
            None
        };
        if declared != Some(kind) {
            return Err(Malformed::new(format!(
                "this route takes {} bodies, and the provider would not read a body declared as {essence:?} \
                 the way tollgate judges it",
                kind.as_str()
            )));
        }
        if kind == BodyKind::Form {
            let charset = parse_parameters(parameters, "Content-Type")?
                .into_iter()
                .find(|(name, _)| name == "charset");
            if let Some((_, charset)) = charset
                && !charset.eq_ignore_ascii_case("utf-8")
            {
                return Err(Malformed::new(format!(
                    "a form body must be UTF-8, not charset {charset:?}"
                )));
            }
            if matches!(bytes.trim_ascii_start().first(), Some(b'{' | b'[')) {
                return Err(Malformed::new(
                    "the form body is shaped like JSON; this route takes application/x-www-form-urlencoded",
                ));
            }
        }
    }
    match (kind, query) {
        (_, None) if bytes.is_empty() => Ok(Value::Null),
        (BodyKind::Form, Some(query)) => parse_merged_form(query, bytes),
        (_, Some(_)) => Err(Malformed::new(format!(
            "query parameters cannot be merged into a {} body",
            kind.as_str()
        ))),
        (BodyKind::Json, None) => parse_json(bytes, "the JSON body"),
        (BodyKind::Form, None) => parse_form(bytes),
        (BodyKind::Multipart, None) => {
            let (_, parameters) = split_parameters(content_type.unwrap_or_default());
            parse_multipart(parameters, bytes)
        }
    }
}

/// A form body with the query's parameters merged in, as Stripe reads a write. A top-level parameter in
/// both is refused (which copy wins is not documented); otherwise the pairs are read as one form, so a
/// bracket key split between the two (`items[0][price]` in one, `items[0][quantity]` in the other) is
/// judged as the one item the provider sees.
fn parse_merged_form(query: &str, bytes: &[u8]) -> Result<Value, Malformed> {
    let raw =
        std::str::from_utf8(bytes).map_err(|_| Malformed::new("the form body is not UTF-8"))?;
    check_form_size(&[query, raw])?;
    let query_pairs = canon::form_pairs(query, "query")?;
    let body_pairs = canon::form_pairs(raw, "form body")?;
    let base = |key: &str| split_at_bracket(key).0.to_owned();
    let in_body: std::collections::BTreeSet<String> =
        body_pairs.iter().map(|(k, _)| base(k)).collect();
    if let Some((key, _)) = query_pairs.iter().find(|(k, _)| in_body.contains(&base(k))) {
        return Err(Malformed::new(format!(
            "parameter {:?} is in both the query string and the body; send it once",
            base(key)
        )));
    }
    let mut root = FormNode::Fields(BTreeMap::new());
    for (key, value) in query_pairs.into_iter().chain(body_pairs) {
        let (base, segments) = parse_form_key(&key)?;
        root.insert(&FormSegment::Field(base), &segments, value, &key)?;
    }
    root.into_value("")
}

/// Lower-case hex SHA-256 of the body bytes.
pub fn body_sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl<'de> DeserializeSeed<'de> for StrictJson {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictJson {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Value, E> {
        // JSON text cannot spell NaN or infinity; serde_json turns an overflowing literal into an
        // error before it gets here, so this refusal is a guard, not an expected path.
        Number::from_f64(value)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number that is not finite"))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = self.nested::<A::Error>()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(inner)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let inner = self.nested::<A::Error>()?;
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            // A JSON reader that matches field names without regard to case (Go's encoding/json,
            // which also folds the Kelvin sign to `k` and the long s to `s`) reads `Status` as
            // `status`. The policy therefore sees every key in that folded form, and two keys that
            // fold alike are a repeated key: providers disagree on which copy wins, so the policy
            // could judge one value while the provider acts on the other.
            let key = fold_key(key);
            if object.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "duplicate key {key:?} (keys are compared without regard to case)"
                )));
            }
            let value = map.next_value_seed(inner)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// A JSON object key as a case-insensitive reader matches it: ASCII lower case, with the two non-ASCII
/// letters whose case folding reaches ASCII (U+212A KELVIN SIGN → `k`, U+017F LATIN SMALL LETTER LONG S →
/// `s`) mapped too. Other characters are kept as they are. Borrows nothing: keys are short.
fn fold_key(key: String) -> String {
    if key.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase()) {
        return key;
    }
    key.chars()
        .map(|c| match c {
            '\u{212A}' => 'k',
            '\u{017F}' => 's',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

impl StrictJson {
    /// The seed for the values inside a container, or an error when that container is one too deep.
    fn nested<E: de::Error>(self) -> Result<Self, E> {
        let depth = self.depth + 1;
        if depth > MAX_JSON_DEPTH {
            return Err(E::custom(format_args!(
                "nesting deeper than {MAX_JSON_DEPTH} levels"
            )));
        }
        Ok(Self { depth })
    }
}

impl FormNode {
    /// An empty container of the kind `segment` addresses.
    fn container_for(segment: &FormSegment) -> Self {
        match segment {
            FormSegment::Field(_) => Self::Fields(BTreeMap::new()),
            FormSegment::Index(_) => Self::Indexed(BTreeMap::new()),
            FormSegment::Append => Self::Appended(Vec::new()),
        }
    }

    /// Stores `value` under `segment` and then `rest` inside this container. `key` is the whole
    /// form key, for messages.
    fn insert(
        &mut self,
        segment: &FormSegment,
        rest: &[FormSegment],
        value: String,
        key: &str,
    ) -> Result<(), Malformed> {
        match (self, segment) {
            // Key parsing only lets `[]` end a key, so there is nothing below an appended value.
            (Self::Appended(items), FormSegment::Append) => {
                items.push(value);
                Ok(())
            }
            (Self::Fields(children), FormSegment::Field(name)) => {
                insert_child(children.entry(name.clone()), rest, value, key)
            }
            (Self::Indexed(children), FormSegment::Index(index)) => {
                insert_child(children.entry(*index), rest, value, key)
            }
            (Self::Value(_), _) => Err(Malformed::new(format!(
                "form key {key:?} uses a field both as a value and as a container"
            ))),
            _ => Err(Malformed::new(format!(
                "form key {key:?} mixes numeric indices, named keys or '[]' under one parent"
            ))),
        }
    }

    /// The JSON value for this node; `name` is its key so far (`items[0]`), for messages.
    fn into_value(self, name: &str) -> Result<Value, Malformed> {
        match self {
            Self::Value(value) => Ok(Value::String(value)),
            Self::Appended(items) => {
                Ok(Value::Array(items.into_iter().map(Value::String).collect()))
            }
            Self::Fields(children) => {
                let mut object = Map::new();
                for (field, child) in children {
                    let child_name = if name.is_empty() {
                        field.clone()
                    } else {
                        format!("{name}[{field}]")
                    };
                    object.insert(field, child.into_value(&child_name)?);
                }
                Ok(Value::Object(object))
            }
            Self::Indexed(children) => {
                // The map is sorted and its keys are distinct, so the indices are 0..n exactly when
                // each one equals its position.
                if children
                    .keys()
                    .enumerate()
                    .any(|(position, index)| position != *index)
                {
                    return Err(Malformed::new(format!(
                        "form field {name:?} has array indices with a gap; they must run 0, 1, 2, … \
                         (sparse arrays are ambiguous)"
                    )));
                }
                let mut items = Vec::with_capacity(children.len());
                for (index, child) in children {
                    items.push(child.into_value(&format!("{name}[{index}]"))?);
                }
                Ok(Value::Array(items))
            }
        }
    }
}

/// Fills one slot of a container: a new value at the end of the key, or a descent into a child
/// container.
fn insert_child<K: Ord>(
    entry: Entry<'_, K, FormNode>,
    rest: &[FormSegment],
    value: String,
    key: &str,
) -> Result<(), Malformed> {
    match (entry, rest.split_first()) {
        (Entry::Vacant(slot), None) => {
            slot.insert(FormNode::Value(value));
            Ok(())
        }
        (Entry::Occupied(slot), None) => match slot.get() {
            // Stripe would keep one of the two; refusing is the only reading that cannot differ
            // from it.
            FormNode::Value(_) => Err(Malformed::new(format!(
                "form key {key:?} is given more than once"
            ))),
            _ => Err(Malformed::new(format!(
                "form key {key:?} uses a field both as a value and as a container"
            ))),
        },
        (Entry::Vacant(slot), Some((next, rest))) => slot
            .insert(FormNode::container_for(next))
            .insert(next, rest, value, key),
        (Entry::Occupied(slot), Some((next, rest))) => {
            slot.into_mut().insert(next, rest, value, key)
        }
    }
}

fn is_json_media_type(essence: &str) -> bool {
    essence == "application/json"
        || essence
            .split_once('/')
            .is_some_and(|(_, subtype)| subtype.ends_with("+json"))
}

/// Splits a header value into what comes before the first ';' and the rest, which starts at that
/// ';'.
fn split_parameters(value: &str) -> (&str, &str) {
    value.find(';').map_or((value, ""), |at| value.split_at(at))
}

/// Parses JSON strictly: duplicate keys, nesting deeper than [`MAX_JSON_DEPTH`] and anything after
/// the value are refused. `what` names the input in messages.
fn parse_json(bytes: &[u8], what: &str) -> Result<Value, Malformed> {
    let invalid =
        |error: serde_json::Error| Malformed::new(format!("{what} is not valid JSON: {error}"));
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = StrictJson { depth: 0 }
        .deserialize(&mut deserializer)
        .map_err(invalid)?;
    deserializer.end().map_err(invalid)?;
    if count_values(&value, MAX_JSON_VALUES + 1) > MAX_JSON_VALUES {
        return Err(Malformed::new(format!(
            "{what} has more than {MAX_JSON_VALUES} values; split the request"
        )));
    }
    Ok(value)
}

/// The values in `v` (itself included), counting no further than `limit`.
fn count_values(v: &Value, limit: usize) -> usize {
    let mut count = 0;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        count += 1;
        if count >= limit {
            return count;
        }
        match v {
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => stack.extend(map.values()),
            _ => {}
        }
    }
    count
}

/// Refuses a form (with its merged query) of more than [`MAX_FORM_PARAMETERS`] parameters, counted before
/// anything is decoded.
fn check_form_size(pieces: &[&str]) -> Result<(), Malformed> {
    let count: usize = pieces
        .iter()
        .map(|raw| raw.split('&').filter(|p| !p.is_empty()).count())
        .sum();
    if count > MAX_FORM_PARAMETERS {
        return Err(Malformed::new(format!(
            "the form has {count} parameters, more than the {MAX_FORM_PARAMETERS} accepted; split the request"
        )));
    }
    Ok(())
}

/// Turns a form body into nested values, the way Stripe reads bracket keys.
fn parse_form(bytes: &[u8]) -> Result<Value, Malformed> {
    let raw =
        std::str::from_utf8(bytes).map_err(|_| Malformed::new("the form body is not UTF-8"))?;
    check_form_size(&[raw])?;
    let mut root = FormNode::Fields(BTreeMap::new());
    // Keys are decoded before their brackets are read, because SDKs send `items%5B0%5D` and Stripe
    // decodes before splitting too.
    for (key, value) in canon::form_pairs(raw, "form body")? {
        let (base, segments) = parse_form_key(&key)?;
        root.insert(&FormSegment::Field(base), &segments, value, &key)?;
    }
    root.into_value("")
}

/// Splits `items[0][price]` into `items` and `[Index(0), Field("price")]`, refusing anything that
/// is not a name followed by whole bracket pairs.
fn parse_form_key(key: &str) -> Result<(String, Vec<FormSegment>), Malformed> {
    let unbalanced = || Malformed::new(format!("form key {key:?} has malformed brackets"));
    let (base, mut rest) = split_at_bracket(key);
    if base.is_empty() {
        return Err(Malformed::new(format!(
            "form key {key:?} has no name before its brackets"
        )));
    }
    if base.contains(']') {
        return Err(unbalanced());
    }
    let mut segments = Vec::new();
    while !rest.is_empty() {
        let Some(inside) = rest.strip_prefix('[') else {
            return Err(unbalanced());
        };
        let Some((segment, after)) = inside.split_once(']') else {
            return Err(unbalanced());
        };
        if segment.contains('[') {
            return Err(unbalanced());
        }
        segments.push(parse_form_segment(segment, key)?);
        rest = after;
    }
    if segments.len() > MAX_FORM_BRACKETS {
        return Err(Malformed::new(format!(
            "form key {key:?} nests deeper than {MAX_FORM_BRACKETS} brackets"
        )));
    }
    // `a[][b]=1&a[][c]=2` is one element to some parsers and two to others.
    if segments
        .iter()
        .rev()
        .skip(1)
        .any(|segment| *segment == FormSegment::Append)
    {
        return Err(Malformed::new(format!(
            "form key {key:?} uses '[]' before its end"
        )));
    }
    Ok((base.to_owned(), segments))
}

fn split_at_bracket(key: &str) -> (&str, &str) {
    key.find('[').map_or((key, ""), |at| key.split_at(at))
}

fn parse_form_segment(segment: &str, key: &str) -> Result<FormSegment, Malformed> {
    if segment.is_empty() {
        return Ok(FormSegment::Append);
    }
    if !segment.bytes().all(|byte| byte.is_ascii_digit()) {
        return Ok(FormSegment::Field(segment.to_owned()));
    }
    // `01` and `1` would be the same element to a parser that reads numbers and two to one that
    // does not.
    if segment.len() > 1 && segment.starts_with('0') {
        return Err(Malformed::new(format!(
            "form key {key:?} has an index with a leading zero"
        )));
    }
    segment
        .parse()
        .map(FormSegment::Index)
        .map_err(|_| Malformed::new(format!("form key {key:?} has an index that is too large")))
}

/// Parses a `multipart/form-data` body (RFC 7578 over RFC 2046 framing). `parameters` is the
/// Content-Type after its media type, starting at the first ';'.
fn parse_multipart(parameters: &str, bytes: &[u8]) -> Result<Value, Malformed> {
    let parameters = parse_parameters(parameters, "Content-Type")?;
    let Some((_, boundary)) = parameters.iter().find(|(name, _)| name == "boundary") else {
        return Err(Malformed::new(
            "multipart/form-data needs a boundary parameter",
        ));
    };
    check_boundary(boundary)?;

    let mut metadata = None;
    let mut listed = Vec::new();
    for raw in split_parts(bytes, format!("--{boundary}").as_bytes())? {
        let part = parse_part(raw)?;
        if part.name == METADATA_PART {
            if metadata.is_some() {
                return Err(Malformed::new(
                    "the multipart body has two parts named \"metadata\"",
                ));
            }
            metadata = Some(parse_json(part.content, "the multipart \"metadata\" part")?);
        }
        listed.push(json!({
            "name": part.name,
            "filename": part.filename,
            "content_type": part.content_type,
            "size": part.content.len(),
        }));
    }
    Ok(json!({"metadata": metadata.unwrap_or(Value::Null), "parts": listed}))
}

/// RFC 2046 section 5.1.1: 1 to 70 characters from a small set, not ending in a space.
fn check_boundary(boundary: &str) -> Result<(), Malformed> {
    let allowed = |byte: u8| byte.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&byte);
    if boundary.is_empty()
        || boundary.len() > MAX_BOUNDARY_LEN
        || boundary.ends_with(' ')
        || !boundary.bytes().all(allowed)
    {
        return Err(Malformed::new(
            "the multipart boundary is not a valid RFC 2046 boundary",
        ));
    }
    Ok(())
}

/// Splits a multipart body into the raw parts between its delimiters. `dash_boundary` is "--"
/// followed by the boundary.
///
/// RFC 2046 forbids the boundary inside a part, and a lenient parser would split on it there (after
/// a bare LF, say) and see parts we did not. So every occurrence of the dash-boundary must begin
/// the body or follow a CRLF, or the body is refused. A preamble before the first delimiter and an
/// epilogue after the closing one are allowed and ignored, as the RFC says.
fn split_parts<'a>(body: &'a [u8], dash_boundary: &[u8]) -> Result<Vec<&'a [u8]>, Malformed> {
    let delimiters = find_all(body, dash_boundary);
    if delimiters.is_empty() {
        return Err(Malformed::new(
            "the multipart body has no boundary delimiter",
        ));
    }
    if delimiters
        .iter()
        .any(|&at| at != 0 && !body[..at].ends_with(b"\r\n"))
    {
        return Err(Malformed::new(
            "the multipart boundary appears where it does not start a CRLF line",
        ));
    }

    let mut parts = Vec::new();
    for (position, &at) in delimiters.iter().enumerate() {
        let after = &body[at + dash_boundary.len()..];
        if after.starts_with(b"--") {
            if position + 1 != delimiters.len() {
                return Err(Malformed::new(
                    "the multipart boundary appears after the closing delimiter",
                ));
            }
            if parts.is_empty() {
                return Err(Malformed::new("the multipart body has no parts"));
            }
            return Ok(parts);
        }
        let padding = after
            .iter()
            .take_while(|&&byte| byte == b' ' || byte == b'\t')
            .count();
        if !after[padding..].starts_with(b"\r\n") {
            return Err(Malformed::new(
                "a multipart boundary delimiter must be followed by CRLF",
            ));
        }
        let start = at + dash_boundary.len() + padding + 2;
        let Some(&next) = delimiters.get(position + 1) else {
            return Err(Malformed::new(
                "the multipart body has no closing boundary delimiter",
            ));
        };
        // The CRLF before the next delimiter belongs to that delimiter, not to the part.
        let Some(end) = next.checked_sub(2).filter(|&end| end >= start) else {
            return Err(Malformed::new(
                "a multipart part has no room for its content",
            ));
        };
        parts.push(&body[start..end]);
    }
    Err(Malformed::new(
        "the multipart body has no closing boundary delimiter",
    ))
}

/// Reads one part's headers; the content after the blank line is left as bytes.
fn parse_part(raw: &[u8]) -> Result<Part<'_>, Malformed> {
    let (head, content) = if let Some(content) = raw.strip_prefix(b"\r\n") {
        (&raw[..0], content)
    } else {
        let Some(end) = raw.windows(4).position(|window| window == b"\r\n\r\n") else {
            return Err(Malformed::new(
                "a multipart part's headers do not end with an empty line",
            ));
        };
        (&raw[..end], &raw[end + 4..])
    };
    let head = std::str::from_utf8(head)
        .map_err(|_| Malformed::new("a multipart part's headers are not UTF-8"))?;

    let mut disposition = None;
    let mut content_type = None;
    // The head holds no empty line (the first one ends it), so filtering them out only skips the
    // head of a part that has no headers at all.
    for line in head.split("\r\n").filter(|line| !line.is_empty()) {
        let (name, value) = parse_part_header(line)?;
        match name.to_ascii_lowercase().as_str() {
            "content-disposition" if disposition.is_some() => {
                return Err(Malformed::new(
                    "a multipart part has two Content-Disposition headers",
                ));
            }
            "content-disposition" => disposition = Some(value),
            "content-type" if content_type.is_some() => {
                return Err(Malformed::new(
                    "a multipart part has two Content-Type headers",
                ));
            }
            "content-type" => content_type = Some(value),
            // RFC 7578 deprecates transfer encodings; one that changes the bytes (base64,
            // quoted-printable) would make the metadata we parse differ from what the provider
            // decodes.
            "content-transfer-encoding"
                if !["7bit", "8bit", "binary"]
                    .iter()
                    .any(|ok| value.eq_ignore_ascii_case(ok)) =>
            {
                return Err(Malformed::new(
                    "a multipart part with a Content-Transfer-Encoding other than 7bit, 8bit or \
                     binary is refused",
                ));
            }
            _ => {}
        }
    }

    let no_name = || Malformed::new("a multipart part has no Content-Disposition name");
    let disposition = disposition.ok_or_else(no_name)?;
    let (kind, parameters) = split_parameters(disposition);
    if !kind.trim().eq_ignore_ascii_case("form-data") {
        return Err(Malformed::new(
            "a multipart part's Content-Disposition must be form-data",
        ));
    }
    let parameters = parse_parameters(parameters, "Content-Disposition")?;
    // RFC 7578 section 4.2 says not to use the RFC 5987 forms; a receiver that prefers them would
    // read another name than the plain parameter we judge.
    if parameters.iter().any(|(name, _)| name.ends_with('*')) {
        return Err(Malformed::new(
            "a multipart part's Content-Disposition uses an extended (name*) parameter",
        ));
    }
    let parameter = |wanted: &str| {
        parameters
            .iter()
            .find(|(name, _)| name == wanted)
            .map(|(_, value)| value.clone())
    };
    let name = parameter("name")
        .filter(|name| !name.is_empty())
        .ok_or_else(no_name)?;
    Ok(Part {
        name,
        filename: parameter("filename"),
        content_type: content_type.map(str::to_owned),
        content,
    })
}

/// Splits a part header line into its name and its value without surrounding whitespace.
fn parse_part_header(line: &str) -> Result<(&str, &str), Malformed> {
    // A folded line (obsolete in RFC 9112) is joined by some parsers and not by others.
    if line.starts_with([' ', '\t']) {
        return Err(Malformed::new("a multipart part has a folded header line"));
    }
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err(Malformed::new(
            "a multipart part header has a control character (bare CR or LF?)",
        ));
    }
    let Some((name, value)) = line.split_once(':') else {
        return Err(Malformed::new("a multipart part header line has no ':'"));
    };
    if name.is_empty() || !name.bytes().all(is_token_byte) {
        return Err(Malformed::new(
            "a multipart part header has an invalid name",
        ));
    }
    Ok((name, value.trim_matches([' ', '\t'])))
}

/// Parses `; name=value; name="quoted value"` (RFC 9110 section 5.6.6) into lower-cased names and
/// values. A repeated parameter is refused, and so is a backslash inside a quoted value: RFC 9110
/// reads it as an escape but HTML form encoders and many multipart parsers do not, so
/// `name="meta\data"` would name two different fields. `context` names the header in messages.
fn parse_parameters(input: &str, context: &str) -> Result<Vec<(String, String)>, Malformed> {
    let invalid = || Malformed::new(format!("the {context} header has malformed parameters"));
    let mut parameters: Vec<(String, String)> = Vec::new();
    let mut rest = input;
    loop {
        rest = rest.trim_start_matches([' ', '\t']);
        if rest.is_empty() {
            return Ok(parameters);
        }
        rest = rest
            .strip_prefix(';')
            .ok_or_else(invalid)?
            .trim_start_matches([' ', '\t']);
        // RFC 9110 allows empty list elements (`a; ; b=c` and a trailing ';').
        if rest.is_empty() || rest.starts_with(';') {
            continue;
        }
        let name_len = rest.bytes().take_while(|&byte| is_token_byte(byte)).count();
        if name_len == 0 {
            return Err(invalid());
        }
        let (name, after) = rest.split_at(name_len);
        let after = after.strip_prefix('=').ok_or_else(invalid)?;
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            let (value, after) = quoted.split_once('"').ok_or_else(invalid)?;
            if value.contains('\\') {
                return Err(Malformed::new(format!(
                    "the {context} header has a backslash in a quoted parameter"
                )));
            }
            if value.chars().any(|c| c.is_control() && c != '\t') {
                return Err(invalid());
            }
            (value, after)
        } else {
            let value_len = after
                .bytes()
                .take_while(|&byte| is_token_byte(byte))
                .count();
            if value_len == 0 {
                return Err(invalid());
            }
            after.split_at(value_len)
        };
        let name = name.to_ascii_lowercase();
        if parameters.iter().any(|(seen, _)| *seen == name) {
            return Err(Malformed::new(format!(
                "the {context} header repeats the {name} parameter"
            )));
        }
        parameters.push((name, value.to_owned()));
        rest = after;
    }
}

/// RFC 9110 `tchar`.
fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// Every start position of `needle` in `haystack`, overlapping ones included, in linear time
/// (Knuth-Morris-Pratt), so a body crafted to be slow for a naive search costs no more than any
/// other.
fn find_all(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    let mut found = Vec::new();
    if needle.is_empty() {
        return found;
    }
    // failure[i] is the length of the longest proper prefix of needle[..=i] that is also its
    // suffix.
    let mut failure = vec![0; needle.len()];
    let mut matched = 0;
    for (i, &byte) in needle.iter().enumerate().skip(1) {
        while matched > 0 && byte != needle[matched] {
            matched = failure[matched - 1];
        }
        if byte == needle[matched] {
            matched += 1;
        }
        failure[i] = matched;
    }
    matched = 0;
    for (i, &byte) in haystack.iter().enumerate() {
        while matched > 0 && byte != needle[matched] {
            matched = failure[matched - 1];
        }
        if byte == needle[matched] {
            matched += 1;
        }
        if matched == needle.len() {
            found.push(i + 1 - needle.len());
            matched = failure[matched - 1];
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: Option<&str> = Some("application/json");
    const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

    /// `expected` is the parsed value, or a fragment of the refusal message.
    fn check(content_type: Option<&str>, body: &[u8], expected: Result<Value, &str>) {
        let shown = String::from_utf8_lossy(body);
        match (parse_body(content_type, body), expected) {
            (Ok(value), Ok(want)) => assert_eq!(value, want, "{content_type:?} {shown:?}"),
            (Err(error), Err(fragment)) => assert!(
                error.message().contains(fragment),
                "{content_type:?} {shown:?}: {error:?} lacks {fragment:?}"
            ),
            (got, want) => panic!("{content_type:?} {shown:?}: got {got:?}, want {want:?}"),
        }
    }

    /// Writes a multipart body with CRLF line endings, as RFC 2046 requires; `\n` in the text marks
    /// a line end.
    fn crlf(text: &str) -> Vec<u8> {
        text.replace('\n', "\r\n").into_bytes()
    }

    fn multipart(boundary: &str) -> String {
        format!("multipart/form-data; boundary={boundary}")
    }

    /// A Content-Type, a body, and the expected outcome.
    type BodyCase<'a> = (Option<&'a str>, &'a [u8], Result<Value, &'a str>);

    #[test]
    fn content_types() {
        let cases: &[BodyCase] = &[
            // An empty body is null whatever it claims to be, even without a Content-Type.
            (None, b"", Ok(Value::Null)),
            (JSON, b"", Ok(Value::Null)),
            (FORM, b"", Ok(Value::Null)),
            (Some("multipart/form-data"), b"", Ok(Value::Null)),
            (None, b"{}", Err("a request body needs a Content-Type")),
            // JSON types: parameters ignored, case-insensitive, any +json suffix.
            (JSON, b"{\"a\":1}", Ok(json!({"a": 1}))),
            (
                Some("application/json; charset=utf-8"),
                b"[1]",
                Ok(json!([1])),
            ),
            (
                Some("Application/JSON ; charset=\"UTF-8\""),
                b"true",
                Ok(json!(true)),
            ),
            (
                Some("application/merge-patch+json"),
                b"{\"a\":null}",
                Ok(json!({"a": null})),
            ),
            (Some("application/vnd.api+JSON"), b"\"x\"", Ok(json!("x"))),
            (
                Some("application/x-www-form-urlencoded; charset=utf-8"),
                b"a=1",
                Ok(json!({"a": "1"})),
            ),
            // Opaque types: the policy gets only the hash.
            (
                Some("application/octet-stream"),
                b"\x00\x01",
                Ok(Value::Null),
            ),
            (Some("text/plain"), b"{\"a\":1}", Ok(Value::Null)),
            (Some("application/wasm"), b"\x00asm", Ok(Value::Null)),
            (Some("json"), b"{", Ok(Value::Null)),
        ];
        for (content_type, body, expected) in cases {
            check(*content_type, body, expected.clone());
        }
    }

    #[test]
    fn json_bodies() {
        let cases: &[(&str, Result<Value, &str>)] = &[
            (
                "{\"a\":{\"b\":1},\"c\":[1,2.5,-3,true,null,\"x\"]}",
                Ok(json!({"a": {"b": 1}, "c": [1, 2.5, -3, true, null, "x"]})),
            ),
            ("  {\"a\": 1}\n", Ok(json!({"a": 1}))),
            ("42", Ok(json!(42))),
            // The same key in different objects is not a duplicate.
            (
                "{\"a\":1,\"b\":{\"a\":2},\"c\":[{\"a\":3},{\"a\":4}]}",
                Ok(json!({"a": 1, "b": {"a": 2}, "c": [{"a": 3}, {"a": 4}]})),
            ),
            // Duplicate keys, at any depth, named in the message.
            ("{\"a\":1,\"a\":2}", Err("duplicate key \"a\"")),
            ("{\"a\":1,\"a\":1}", Err("duplicate key \"a\"")),
            (
                "{\"x\":[{\"policies\":[],\"policies\":[]}]}",
                Err("duplicate key \"policies\""),
            ),
            ("{\"o\":{\"k\":{},\"k\":{}}}", Err("duplicate key \"k\"")),
            // An escape that spells the same key is still the same key.
            (
                "{\"name\":\"a\",\"n\\u0061me\":\"b\"}",
                Err("duplicate key \"name\""),
            ),
            // Trailing garbage and broken JSON.
            ("{\"a\":1} x", Err("trailing characters")),
            ("{\"a\":1}{\"b\":2}", Err("trailing characters")),
            ("{\"a\":1", Err("the JSON body is not valid JSON")),
            ("{'a':1}", Err("the JSON body is not valid JSON")),
            ("[1,]", Err("the JSON body is not valid JSON")),
            (" ", Err("the JSON body is not valid JSON")),
            ("NaN", Err("the JSON body is not valid JSON")),
            ("\"\\ud800\"", Err("the JSON body is not valid JSON")),
        ];
        for (body, expected) in cases {
            check(JSON, body.as_bytes(), expected.clone());
        }
        check(JSON, b"\"\xff\"", Err("the JSON body is not valid JSON"));
    }

    #[test]
    fn json_nesting_is_capped_at_64() {
        let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let within = serde_json::from_str::<Value>(&nested(MAX_JSON_DEPTH))
            .unwrap_or_else(|e| panic!("{e}"));
        check(JSON, nested(MAX_JSON_DEPTH).as_bytes(), Ok(within));
        check(
            JSON,
            nested(MAX_JSON_DEPTH + 1).as_bytes(),
            Err("nesting deeper than 64 levels"),
        );
        let objects = format!(
            "{}1{}",
            "{\"a\":".repeat(MAX_JSON_DEPTH + 1),
            "}".repeat(MAX_JSON_DEPTH + 1)
        );
        check(
            JSON,
            objects.as_bytes(),
            Err("nesting deeper than 64 levels"),
        );
    }

    #[test]
    fn json_numbers_keep_their_type() {
        let value = parse_body(
            JSON,
            b"{\"u\":1,\"i\":-1,\"f\":1.0,\"big\":18446744073709551615}",
        )
        .unwrap_or_else(|error| panic!("{error}"));
        assert!(value["u"].is_u64(), "{value}");
        assert!(value["i"].is_i64(), "{value}");
        assert!(value["f"].is_f64(), "{value}");
        assert_eq!(value["big"].as_u64(), Some(u64::MAX), "{value}");
    }

    #[test]
    fn cloudflare_token_create() {
        let body = r#"{"name": "ci-deploy",
             "policies": [{"effect": "allow",
                           "resources": {"com.cloudflare.api.account.zone.023e105f4ecef8ad9ca31a8372d0c353": "*"},
                           "permission_groups": [{"id": "4755a26eedb94da69e1066d98aa820be", "name": "DNS Write"}]}],
             "not_before": "2026-12-01T00:00:00Z",
             "expires_on": "2026-12-02T00:00:00Z",
             "condition": {"request_ip": {"in": ["198.51.100.0/24"], "not_in": []}}}"#;
        let expected = json!({
            "name": "ci-deploy",
            "policies": [{
                "effect": "allow",
                "resources": {"com.cloudflare.api.account.zone.023e105f4ecef8ad9ca31a8372d0c353": "*"},
                "permission_groups": [{"id": "4755a26eedb94da69e1066d98aa820be", "name": "DNS Write"}],
            }],
            "not_before": "2026-12-01T00:00:00Z",
            "expires_on": "2026-12-02T00:00:00Z",
            "condition": {"request_ip": {"in": ["198.51.100.0/24"], "not_in": []}},
        });
        check(JSON, body.as_bytes(), Ok(expected));

        // The escalation attempt a duplicate key would hide: one parser sees DNS Write, another
        // sees Account API Tokens Write.
        let smuggled = r#"{"name":"x","policies":[{"effect":"allow","resources":{},
            "permission_groups":[{"id":"4755a26eedb94da69e1066d98aa820be","id":"5bc3f8b21c554832afc660159ab75fa4"}]}]}"#;
        check(JSON, smuggled.as_bytes(), Err("duplicate key \"id\""));
    }

    #[test]
    fn form_bodies() {
        let cases: &[(&str, Result<Value, &str>)] = &[
            ("a=1", Ok(json!({"a": "1"}))),
            (
                "amount=1999&currency=usd",
                Ok(json!({"amount": "1999", "currency": "usd"})),
            ),
            (
                "items[0][price]=p&items[0][quantity]=2&metadata[k]=v&expand[]=a&expand[]=b",
                Ok(
                    json!({"items": [{"price": "p", "quantity": "2"}], "metadata": {"k": "v"}, "expand": ["a", "b"]}),
                ),
            ),
            // Indices may come in any order as long as none is missing.
            ("a[1]=y&a[0]=x", Ok(json!({"a": ["x", "y"]}))),
            (
                "a[0][b]=1&a[1][b]=2&a[0][c]=3",
                Ok(json!({"a": [{"b": "1", "c": "3"}, {"b": "2"}]})),
            ),
            ("a[0][0]=x&a[0][1]=y", Ok(json!({"a": [["x", "y"]]}))),
            ("a[b][c][d]=1", Ok(json!({"a": {"b": {"c": {"d": "1"}}}}))),
            ("a[]=x", Ok(json!({"a": ["x"]}))),
            ("a[0][]=x&a[0][]=y", Ok(json!({"a": [["x", "y"]]}))),
            // Brackets arrive percent-encoded from the SDKs; '+' is a space.
            (
                "items%5B0%5D%5Bprice%5D=p&q=a+b%2Bc",
                Ok(json!({"items": [{"price": "p"}], "q": "a b+c"})),
            ),
            ("a=&b", Ok(json!({"a": "", "b": ""}))),
            ("a=1&&b=2&", Ok(json!({"a": "1", "b": "2"}))),
            ("a=x%3Dy&b=%E2%9C%93", Ok(json!({"a": "x=y", "b": "✓"}))),
            // A base name made of digits is still an object key: the top level is always an object.
            ("0=x", Ok(json!({"0": "x"}))),
            // Conflicts.
            ("a=1&a=2", Err("form key \"a\" is given more than once")),
            (
                "a[b]=1&a[b]=2",
                Err("form key \"a[b]\" is given more than once"),
            ),
            ("a[0]=1&a[0]=2", Err("is given more than once")),
            ("a=1&a[b]=2", Err("both as a value and as a container")),
            ("a[b]=2&a=1", Err("both as a value and as a container")),
            ("a[]=1&a=2", Err("both as a value and as a container")),
            (
                "a[b]=1&a[b][c]=2",
                Err("both as a value and as a container"),
            ),
            (
                "a[0]=1&a[b]=2",
                Err("mixes numeric indices, named keys or '[]'"),
            ),
            (
                "a[b]=1&a[0]=2",
                Err("mixes numeric indices, named keys or '[]'"),
            ),
            (
                "a[]=1&a[0]=2",
                Err("mixes numeric indices, named keys or '[]'"),
            ),
            (
                "a[0]=1&a[]=2",
                Err("mixes numeric indices, named keys or '[]'"),
            ),
            // Sparse arrays.
            (
                "a[0]=x&a[2]=y",
                Err("form field \"a\" has array indices with a gap"),
            ),
            ("a[1]=x", Err("has array indices with a gap")),
            (
                "a[0][b][1]=x",
                Err("form field \"a[0][b]\" has array indices with a gap"),
            ),
            ("a[01]=x", Err("leading zero")),
            ("a[99999999999999999999999]=x", Err("too large")),
            // Malformed keys.
            ("a[b=1", Err("malformed brackets")),
            ("a]=1", Err("malformed brackets")),
            ("a[b]c=1", Err("malformed brackets")),
            ("a[b]]=1", Err("malformed brackets")),
            ("a[b[c]]=1", Err("malformed brackets")),
            ("[a]=1", Err("no name before its brackets")),
            ("=1", Err("no name before its brackets")),
            ("a[][b]=1", Err("uses '[]' before its end")),
            // Encoding.
            ("a=%zz", Err("invalid percent-encoding in the form body")),
            ("a%4=1", Err("invalid percent-encoding in the form body")),
            (
                "a=%ff",
                Err("the form body decodes to bytes that are not UTF-8"),
            ),
        ];
        for (body, expected) in cases {
            check(FORM, body.as_bytes(), expected.clone());
        }
        check(FORM, b"a=\xff", Err("the form body is not UTF-8"));
    }

    #[test]
    fn form_depth_is_capped_at_16_brackets() {
        let key = |brackets: usize| format!("a{}", "[b]".repeat(brackets));
        let mut within = json!("1");
        for _ in 0..MAX_FORM_BRACKETS {
            within = json!({"b": within});
        }
        check(
            FORM,
            format!("{}=1", key(MAX_FORM_BRACKETS)).as_bytes(),
            Ok(json!({"a": within})),
        );
        check(
            FORM,
            format!("{}=1", key(MAX_FORM_BRACKETS + 1)).as_bytes(),
            Err("deeper than 16 brackets"),
        );
    }

    #[test]
    fn stripe_subscription_create() {
        // As stripe-node sends it: brackets percent-encoded, keys in the caller's order.
        let body = "customer=cus_NffrFeUfNV2Hib\
            &items%5B0%5D%5Bprice%5D=price_1MowQULkdIwHu7ixraBm864M\
            &items%5B0%5D%5Bquantity%5D=2\
            &items%5B1%5D%5Bprice_data%5D%5Bcurrency%5D=usd\
            &items%5B1%5D%5Bprice_data%5D%5Bproduct%5D=prod_NWjs8kKbJWmuuc\
            &items%5B1%5D%5Bprice_data%5D%5Bunit_amount%5D=1999\
            &items%5B1%5D%5Bprice_data%5D%5Brecurring%5D%5Binterval%5D=month\
            &metadata%5Brun%5D=run-42\
            &metadata%5Bon_behalf_of%5D=alice%40example.com\
            &payment_behavior=default_incomplete\
            &expand%5B%5D=latest_invoice.payment_intent\
            &expand%5B%5D=pending_setup_intent";
        let expected = json!({
            "customer": "cus_NffrFeUfNV2Hib",
            "items": [
                {"price": "price_1MowQULkdIwHu7ixraBm864M", "quantity": "2"},
                {"price_data": {
                    "currency": "usd",
                    "product": "prod_NWjs8kKbJWmuuc",
                    "unit_amount": "1999",
                    "recurring": {"interval": "month"},
                }},
            ],
            "metadata": {"run": "run-42", "on_behalf_of": "alice@example.com"},
            "payment_behavior": "default_incomplete",
            "expand": ["latest_invoice.payment_intent", "pending_setup_intent"],
        });
        check(FORM, body.as_bytes(), Ok(expected));

        // Two quantities for one item: Stripe keeps one of them, the policy cannot know which.
        let doubled = "items[0][price]=price_1&items[0][quantity]=1&items[0][quantity]=100";
        check(
            FORM,
            doubled.as_bytes(),
            Err("form key \"items[0][quantity]\" is given more than once"),
        );
    }

    #[test]
    fn workers_multipart_upload() {
        let module = "export default {\n  async fetch(request) {\n    return new Response(\"hello\");\n  },\n};\n";
        let metadata = r#"{"main_module":"worker.js","compatibility_date":"2026-11-01","bindings":[{"type":"plain_text","name":"ENV","text":"prod"}]}"#;
        let boundary = "----formdata-undici-032519867390";
        let body = [
            format!("--{boundary}\r\n").into_bytes(),
            crlf("Content-Disposition: form-data; name=\"metadata\"\nContent-Type: application/json\n\n"),
            metadata.as_bytes().to_vec(),
            format!("\r\n--{boundary}\r\n").into_bytes(),
            crlf("Content-Disposition: form-data; name=\"worker.js\"; filename=\"worker.js\"\n"),
            crlf("Content-Type: application/javascript+module\n\n"),
            module.as_bytes().to_vec(),
            format!("\r\n--{boundary}--\r\n").into_bytes(),
        ]
        .concat();
        let expected = json!({
            "metadata": {
                "main_module": "worker.js",
                "compatibility_date": "2026-11-01",
                "bindings": [{"type": "plain_text", "name": "ENV", "text": "prod"}],
            },
            "parts": [
                {"name": "metadata", "filename": null, "content_type": "application/json", "size": metadata.len()},
                {"name": "worker.js", "filename": "worker.js", "content_type": "application/javascript+module", "size": module.len()},
            ],
        });
        check(Some(&multipart(boundary)), &body, Ok(expected));
    }

    #[test]
    fn multipart_bodies() {
        let part = |name: &str| format!("Content-Disposition: form-data; name=\"{name}\"\n\n");
        let cases: Vec<(String, Vec<u8>, Result<Value, &str>)> = vec![
            // No metadata part: metadata is null; parts keep their order; content may be binary.
            (
                multipart("b"),
                [crlf("--b\nContent-Disposition: form-data; name=\"x.wasm\"; filename=\"x.wasm\"\n\n"), b"\x00asm\xff".to_vec(), crlf("\n--b\n"), crlf(&part("a")), crlf("1\n--b--")].concat(),
                Ok(json!({"metadata": null, "parts": [
                    {"name": "x.wasm", "filename": "x.wasm", "content_type": null, "size": 5},
                    {"name": "a", "filename": null, "content_type": null, "size": 1},
                ]})),
            ),
            // Quoted boundary with RFC 2046 characters, upper-case parameter name, empty content.
            (
                "multipart/form-data; BOUNDARY=\"a b:c=?\"".to_owned(),
                crlf("--a b:c=?\nContent-Disposition: form-data; name=metadata\n\n{}\n--a b:c=?--"),
                Ok(json!({"metadata": {}, "parts": [{"name": "metadata", "filename": null, "content_type": null, "size": 2}]})),
            ),
            // Preamble, transport padding after a delimiter, epilogue, header names in any case,
            // unquoted parameters, an empty filename, a UTF-8 filename and an empty part.
            (
                format!("{}; charset=utf-8", multipart("b")),
                crlf("preamble\n--b \t\ncontent-disposition: Form-Data;name=a ; filename=\"\"\nCONTENT-TYPE: text/plain\n\n\n--b\nContent-Disposition: form-data; name=\"f\"; filename=\"résumé.txt\"\nContent-Transfer-Encoding: binary\n\nx\n--b--\nepilogue\n"),
                Ok(json!({"metadata": null, "parts": [
                    {"name": "a", "filename": "", "content_type": "text/plain", "size": 0},
                    {"name": "f", "filename": "résumé.txt", "content_type": null, "size": 1},
                ]})),
            ),
            // The boundary parameter.
            ("multipart/form-data".to_owned(), crlf("--b\n\n--b--"), Err("needs a boundary parameter")),
            ("multipart/form-data; charset=utf-8".to_owned(), crlf("--b\n\n--b--"), Err("needs a boundary parameter")),
            (multipart("\"\""), crlf("--\n\n----"), Err("not a valid RFC 2046 boundary")),
            (multipart(&"b".repeat(71)), crlf("x"), Err("not a valid RFC 2046 boundary")),
            ("multipart/form-data; boundary=\"b \"".to_owned(), crlf("x"), Err("not a valid RFC 2046 boundary")),
            ("multipart/form-data; boundary=\"b@c\"".to_owned(), crlf("x"), Err("not a valid RFC 2046 boundary")),
            ("multipart/form-data; boundary=b; boundary=c".to_owned(), crlf("x"), Err("repeats the boundary parameter")),
            ("multipart/form-data; boundary=\"b".to_owned(), crlf("x"), Err("Content-Type header has malformed parameters")),
            ("multipart/form-data; boundary".to_owned(), crlf("x"), Err("Content-Type header has malformed parameters")),
            // Framing.
            (multipart("b"), crlf("no delimiter here"), Err("no boundary delimiter")),
            (multipart("b"), crlf(&format!("--b\n{}1", part("a"))), Err("no closing boundary delimiter")),
            (multipart("b"), crlf(&format!("--b\n{}1\n--b", part("a"))), Err("must be followed by CRLF")),
            (multipart("b"), crlf(&format!("--b\n{}1\n--bc\n", part("a"))), Err("must be followed by CRLF")),
            (multipart("b"), crlf("--b--"), Err("no parts")),
            (multipart("b"), crlf("--b\n--b--"), Err("no room for its content")),
            (multipart("b"), crlf(&format!("--b\n{}1\n--b--\n--b\n", part("a"))), Err("after the closing delimiter")),
            // Bare LF line endings, and the boundary hidden behind a bare LF inside a part.
            (multipart("b"), format!("--b\n{}1\n--b--\n", part("a")).into_bytes(), Err("does not start a CRLF line")),
            (
                multipart("b"),
                [crlf(&format!("--b\n{}", part("a"))), b"1\n--b\n".to_vec(), crlf(&format!("{}{{}}\n--b--", part("metadata")))].concat(),
                Err("does not start a CRLF line"),
            ),
            (multipart("b"), crlf(&format!("x--b\n{}1\n--b--", part("a"))), Err("does not start a CRLF line")),
            // Part headers.
            (multipart("b"), crlf("--b\n\nno headers\n--b--"), Err("no Content-Disposition name")),
            (multipart("b"), crlf("--b\nContent-Type: text/plain\n\nx\n--b--"), Err("no Content-Disposition name")),
            (multipart("b"), crlf("--b\nContent-Disposition: form-data\n\nx\n--b--"), Err("no Content-Disposition name")),
            (multipart("b"), crlf("--b\nContent-Disposition: form-data; name=\"\"\n\nx\n--b--"), Err("no Content-Disposition name")),
            (multipart("b"), crlf("--b\nContent-Disposition: form-data; filename=\"a\"\n\nx\n--b--"), Err("no Content-Disposition name")),
            (multipart("b"), crlf("--b\nContent-Disposition: attachment; name=\"a\"\n\nx\n--b--"), Err("must be form-data")),
            (multipart("b"), crlf("--b\nContent-Disposition: form-data; name=\"a\"\nContent-Disposition: form-data; name=\"metadata\"\n\nx\n--b--"), Err("two Content-Disposition headers")),
            (multipart("b"), crlf("--b\nContent-Disposition: form-data; name=\"a\"\nContent-Type: a/b\nContent-Type: c/d\n\nx\n--b--"), Err("two Content-Type headers")),
            (multipart("b"), crlf("--b\nContent-Disposition: form-data;\n name=\"metadata\"\n\nx\n--b--"), Err("folded header line")),
            (multipart("b"), crlf("--b\nContent-Disposition: form-data; name=\"a\"\nBroken\n\nx\n--b--"), Err("has no ':'")),
            (multipart("b"), crlf("--b\nContent Disposition: form-data; name=\"a\"\n\nx\n--b--"), Err("invalid name")),
            (multipart("b"), crlf("--b\nContent-Disposition: form-data; name=\"a\"\n\rX: y\n\nx\n--b--"), Err("control character")),
            (multipart("b"), crlf("--b\nContent-Disposition: form-data; name=\"a\"; name=\"metadata\"\n\nx\n--b--"), Err("repeats the name parameter")),
            (multipart("b"), crlf("--b\nContent-Disposition: form-data; name=\"meta\\data\"\n\nx\n--b--"), Err("backslash in a quoted parameter")),
            (multipart("b"), crlf("--b\nContent-Disposition: form-data; name=\"a\"; name*=UTF-8''metadata\n\nx\n--b--"), Err("extended (name*) parameter")),
            (multipart("b"), crlf("--b\nContent-Disposition: form-data; name=\"a\n\nx\n--b--"), Err("malformed parameters")),
            (multipart("b"), crlf("--b\nContent-Disposition: form-data; name=\"a\"\nContent-Transfer-Encoding: base64\n\neA==\n--b--"), Err("Content-Transfer-Encoding")),
            (multipart("b"), crlf("--b\nContent-Disposition: form-data; name=\"a\"\n--b--"), Err("headers do not end with an empty line")),
            (multipart("b"), [crlf("--b\nContent-Disposition: form-data; name=\""), b"\xff\"".to_vec(), crlf("\n\nx\n--b--")].concat(), Err("headers are not UTF-8")),
            // The metadata part.
            (multipart("b"), crlf(&format!("--b\n{}{{}}\n--b\n{}{{}}\n--b--", part("metadata"), part("metadata"))), Err("two parts named \"metadata\"")),
            (multipart("b"), crlf(&format!("--b\n{}not json\n--b--", part("metadata"))), Err("the multipart \"metadata\" part is not valid JSON")),
            (multipart("b"), crlf(&format!("--b\n{}\n--b--", part("metadata"))), Err("the multipart \"metadata\" part is not valid JSON")),
            (multipart("b"), crlf(&format!("--b\n{}{{\"main_module\":\"a.js\",\"main_module\":\"b.js\"}}\n--b--", part("metadata"))), Err("duplicate key \"main_module\"")),
        ];
        for (content_type, body, expected) in cases {
            check(Some(&content_type), &body, expected);
        }
    }

    #[test]
    fn find_all_is_overlap_aware() {
        let cases: &[(&[u8], &[u8], &[usize])] = &[
            (b"", b"--b", &[]),
            (b"--b", b"--b", &[0]),
            (b"x--b\r\n--b--", b"--b", &[1, 6]),
            (b"-----", b"---", &[0, 1, 2]),
            (b"aabaabaab", b"aab", &[0, 3, 6]),
            (b"abc", b"", &[]),
        ];
        for (haystack, needle, expected) in cases {
            assert_eq!(
                find_all(haystack, needle),
                *expected,
                "{haystack:?} {needle:?}"
            );
        }
    }

    #[test]
    fn sha256_is_lower_case_hex() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
            (
                b"abc",
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(body_sha256(bytes), *expected);
        }
    }

    #[test]
    fn the_route_decides_the_body_type() {
        use BodyKind::{Form, Json, Multipart};
        let parse = |kind, ct: Option<&str>, body: &[u8], query: Option<&str>| {
            parse_request_body(kind, ct, body, query)
        };
        // The confirmed attack: a JSON NS record declared as a form, on a JSON route.
        let ns = br#"{"type":"NS","name":"example.com","content":"ns.evil.test"}"#;
        let err = parse(Json, FORM, ns, None).unwrap_err();
        assert!(err.message().contains("takes application/json"), "{err:?}");
        // ... and the same bytes as a form on a form route: JSON-shaped, refused.
        let err = parse(Form, FORM, ns, None).unwrap_err();
        assert!(err.message().contains("shaped like JSON"), "{err:?}");
        assert!(parse(Form, FORM, b"  [1]", None).is_err());
        // Opaque or missing types are no longer passed through as "nothing to judge".
        assert!(parse(Json, Some("text/plain"), b"{}", None).is_err());
        assert!(parse(Json, None, b"{}", None).is_err());
        assert!(parse(Form, JSON, b"{\"amount\":1}", None).is_err());
        assert!(parse(Multipart, JSON, b"{}", None).is_err());
        // The route's own type parses as before; an empty body is null whatever it claims.
        assert_eq!(
            parse(Json, JSON, b"{\"a\":1}", None).unwrap(),
            json!({"a": 1})
        );
        assert_eq!(parse(Form, FORM, b"a=1", None).unwrap(), json!({"a": "1"}));
        assert_eq!(
            parse(Json, Some("text/plain"), b"", None).unwrap(),
            Value::Null
        );
        // A form in another charset could decode differently at the provider.
        assert!(
            parse(
                Form,
                Some("application/x-www-form-urlencoded; charset=iso-8859-1"),
                b"a=1",
                None
            )
            .is_err()
        );
        assert!(
            parse(
                Form,
                Some("application/x-www-form-urlencoded; charset=UTF-8"),
                b"a=1",
                None
            )
            .is_ok()
        );
    }

    #[test]
    fn query_parameters_of_a_write_are_merged_into_the_form() {
        let merged =
            |query: &str, body: &[u8]| parse_request_body(BodyKind::Form, FORM, body, Some(query));
        // The confirmed attack: quantity in the query of a subscription item write.
        assert_eq!(
            merged(
                "quantity=1000",
                b"price_data[unit_amount]=4000&price_data[currency]=usd"
            )
            .unwrap(),
            json!({"quantity": "1000", "price_data": {"unit_amount": "4000", "currency": "usd"}})
        );
        // One-off items hidden in the query of a subscription create are judged with the body's items.
        assert_eq!(
            merged(
                "add_invoice_items[0][price_data][unit_amount]=900000",
                b"items[0][price]=price_1"
            )
            .unwrap(),
            json!({"add_invoice_items": [{"price_data": {"unit_amount": "900000"}}], "items": [{"price": "price_1"}]})
        );
        // A parameter in both places is refused, whatever its values.
        let err = merged("amount=100", b"amount=4000&currency=usd").unwrap_err();
        assert!(err.message().contains("\"amount\" is in both"), "{err:?}");
        assert!(merged("items[0][quantity]=9", b"items[0][price]=p").is_err());
        // A write with only a query (no body) is judged from the query.
        assert_eq!(
            parse_request_body(BodyKind::Form, None, b"", Some("amount=7500&currency=usd"))
                .unwrap(),
            json!({"amount": "7500", "currency": "usd"})
        );
        assert!(parse_request_body(BodyKind::Json, JSON, b"{}", Some("a=1")).is_err());
        assert_eq!(
            parse_request_body(BodyKind::Form, FORM, b"", Some("")).unwrap(),
            Value::Null
        );
    }

    #[test]
    fn json_keys_are_read_as_a_case_insensitive_reader_reads_them() {
        let parse = |body: &str| parse_request_body(BodyKind::Json, JSON, body.as_bytes(), None);
        // A lone `Status` is what such a reader takes for `status`: the policy must see it so.
        assert_eq!(
            parse(r#"{"Status": "disabled", "Name": {"ID": 1}}"#).unwrap(),
            json!({"status": "disabled", "name": {"id": 1}})
        );
        assert_eq!(
            parse("{\"\u{017F}tatus\": \"disabled\", \"\u{212A}ind\": 1}").unwrap(),
            json!({"status": "disabled", "kind": 1})
        );
        assert!(parse("{\"status\": \"active\", \"\u{017F}tatus\": \"disabled\"}").is_err());
        // Values are never touched.
        assert_eq!(parse(r#"{"a": "MiXeD"}"#).unwrap(), json!({"a": "MiXeD"}));
    }

    #[test]
    fn bodies_too_costly_to_judge_are_refused() {
        let form: String = (0..MAX_FORM_PARAMETERS + 1)
            .map(|i| format!("metadata[k{i}]=v"))
            .collect::<Vec<_>>()
            .join("&");
        let err = parse_request_body(BodyKind::Form, FORM, form.as_bytes(), None).unwrap_err();
        assert!(err.message().contains("parameters"), "{err:?}");
        // Split between query and body, the count is the same.
        let half = |prefix: &str| {
            (0..MAX_FORM_PARAMETERS / 2 + 1)
                .map(|i| format!("{prefix}[k{i}]=v"))
                .collect::<Vec<_>>()
                .join("&")
        };
        let (query, body) = (half("metadata"), half("expand"));
        let err =
            parse_request_body(BodyKind::Form, FORM, body.as_bytes(), Some(&query)).unwrap_err();
        assert!(err.message().contains("parameters"), "{err:?}");
        let ok: String = (0..100)
            .map(|i| format!("metadata[k{i}]=v"))
            .collect::<Vec<_>>()
            .join("&");
        assert!(parse_request_body(BodyKind::Form, FORM, ok.as_bytes(), None).is_ok());
        let json = format!("[{}]", vec!["1"; MAX_JSON_VALUES].join(","));
        let err = parse_request_body(BodyKind::Json, JSON, json.as_bytes(), None).unwrap_err();
        assert!(err.message().contains("values"), "{err:?}");
        let json = format!("[{}]", vec!["1"; 1000].join(","));
        assert!(parse_request_body(BodyKind::Json, JSON, json.as_bytes(), None).is_ok());
    }

    #[test]
    fn json_keys_are_duplicates_without_regard_to_case() {
        for body in [
            r#"{"id": "a", "ID": "b"}"#,
            r#"{"policies": [], "Policies": []}"#,
            r#"{"data": {"years": 1, "Years": 10}}"#,
        ] {
            let err = parse_request_body(BodyKind::Json, JSON, body.as_bytes(), None).unwrap_err();
            assert!(err.message().contains("duplicate key"), "{body}: {err:?}");
        }
    }
}
