//! Path canonicalization and request hygiene: step 2 of the data path.
//!
//! This module owns the one place where the request path after `/{provider}` is checked and turned
//! into the canonical form that is both classified and forwarded, so that what tollgate judges is
//! byte-for-byte what the provider receives. It also owns the header checks that refuse requests a
//! provider might read differently than we do (method overrides, encoded bodies, odd transfer
//! codings) and the strict parsing of query strings and form pairs. Anything that cannot be read
//! one way only is refused with a [`Malformed`], never repaired by guessing.
//!
//! It does no I/O, knows nothing of policy, store or HTTP responses: turning a [`Malformed`] into a
//! `request_malformed` refusal is the `error` module's job.

use std::collections::BTreeMap;
use std::fmt;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Why a request could not be canonicalized; its message goes to the agent verbatim
/// (no secrets in it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    message: String,
}

/// A canonical path: starts with '/', the forwarded form, plus its decoded segments for
/// classification.
///
/// Both fields are private and only [`canonicalize_path`] builds one, so holding a `CanonicalPath`
/// proves the path passed every check below.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalPath {
    forwarded: String,
    segments: Vec<String>,
}

/// The longest raw path accepted, in bytes. Real Cloudflare and Stripe paths are a few hundred
/// bytes at most; a cap keeps classification cheap and matches common upstream limits, so a path we
/// accept is one the provider will not truncate.
pub const MAX_PATH_BYTES: usize = 4096;

/// Characters written literally in a forwarded path segment; everything else is percent-encoded
/// with upper-case hex. Kept literally: the RFC 3986 unreserved set `A-Z a-z 0-9 - . _ ~`, plus `:`
/// and `@` and the sub-delims `! $ & ' ( ) * , =`, which RFC 3986 allows in a segment and which no
/// server treats as structure inside a path. Encoded although allowed: `+`, because form-style
/// decoders turn it into a space, and `;`, which never reaches here because path parameters are
/// refused.
const SEGMENT_ENCODE_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b':')
    .remove(b'@')
    .remove(b'!')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b',')
    .remove(b'=');

/// Headers that ask a server to treat the request as another method. A provider (or a framework in
/// front of it) that honours one would act on a method we did not classify, so their mere presence
/// is refused.
const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// The tokens a `Connection` header may carry: connection options and the hop-by-hop headers, which
/// are never forwarded anyway.
const CONNECTION_TOKENS: [&str; 6] = [
    "close",
    "keep-alive",
    "upgrade",
    "te",
    "http2-settings",
    "proxy-connection",
];

/// Headers that must appear at most once: the ones that change what the provider does (account, API
/// version, idempotency, body type), the agent's credentials and tollgate's own.
pub const SINGLE_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "idempotency-key",
    "stripe-account",
    "stripe-context",
    "stripe-version",
    "authorization",
    "tollgate-approval",
    "tollgate-run",
    "tollgate-on-behalf-of",
    "host",
];

impl Malformed {
    /// A refusal with `message`, which must be safe to show the agent: no secrets, no internals.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The sentence the agent is shown.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Malformed {}

impl CanonicalPath {
    /// The form that is forwarded upstream: '/' followed by the re-encoded segments.
    pub fn as_str(&self) -> &str {
        &self.forwarded
    }

    /// The percent-decoded segments, in order, for classification; empty for "/".
    pub fn segments(&self) -> &[String] {
        &self.segments
    }
}

impl fmt::Display for CanonicalPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.forwarded)
    }
}

/// `raw` is the still-percent-encoded path after the `/{provider}` prefix, e.g.
/// "/client/v4/zones/abc/dns_records" (may be "" meaning "/").
///
/// The rules are strict on purpose; every one exists because some server on the way reads such a
/// path differently than a plain split-then-decode would:
/// - `.` and `..` segments are refused in any spelling (`%2e`, `.%2E`), since servers normalize
///   them away.
/// - An encoded `/` (`%2F`) and a backslash (raw or `%5C`) are refused: some servers split on them.
/// - `;` (raw or `%3B`) is refused: some servers strip `;parameters` from segments.
/// - NUL and every other control character, raw or decoded, are refused.
/// - An encoded `%` (`%25`) is refused: a server that decodes twice would see a different path.
/// - Empty segments are refused, and so is a trailing slash unless the whole path is "/": servers
///   disagree on whether `a//b` is `a/b` and whether `a/` is `a`.
/// - Invalid percent-encoding and decoded bytes that are not UTF-8 are refused.
/// - Raw characters that RFC 3986 does not allow in a path (space, `"`, `{`, non-ASCII, …) are
///   refused rather than guessed at; clients must percent-encode them.
/// - Paths longer than [`MAX_PATH_BYTES`] are refused.
///
/// The forwarded form decodes each segment and re-encodes it with [`SEGMENT_ENCODE_SET`], so `%41`
/// and `A` give the same string and hex escapes are upper-case.
pub fn canonicalize_path(raw: &str) -> Result<CanonicalPath, Malformed> {
    if raw.len() > MAX_PATH_BYTES {
        return Err(Malformed::new(format!(
            "the path is longer than {MAX_PATH_BYTES} bytes"
        )));
    }
    if raw.is_empty() || raw == "/" {
        return Ok(CanonicalPath {
            forwarded: "/".to_owned(),
            segments: Vec::new(),
        });
    }
    let Some(rest) = raw.strip_prefix('/') else {
        return Err(Malformed::new("the path must start with '/'"));
    };

    let mut forwarded = String::with_capacity(raw.len());
    let mut segments = Vec::new();
    for raw_segment in rest.split('/') {
        let segment = canonical_segment(raw_segment)?;
        forwarded.push('/');
        forwarded.extend(utf8_percent_encode(&segment, SEGMENT_ENCODE_SET));
        segments.push(segment);
    }
    // Re-encoding can lengthen a path (a raw '+' becomes "%2B"): the cap holds for what is sent.
    if forwarded.len() > MAX_PATH_BYTES {
        return Err(Malformed::new(format!(
            "the path is longer than {MAX_PATH_BYTES} bytes"
        )));
    }
    Ok(CanonicalPath {
        forwarded,
        segments,
    })
}

/// The methods an agent may send, spelled as HTTP spells them (methods are case-sensitive, RFC 9110 §9.1):
/// `put` is not `PUT` to the catalog, but a provider or a framework in front of it may take it as `PUT`, so
/// any other spelling or method is refused before classification.
pub const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Refuses a method that is not one of [`METHODS`] exactly.
pub fn check_method(method: &http::Method) -> Result<(), Malformed> {
    if METHODS.contains(&method.as_str()) {
        return Ok(());
    }
    Err(Malformed::new(format!(
        "the method {:?} is refused: tollgate forwards {}",
        method.as_str().chars().take(32).collect::<String>(),
        METHODS.join(", ")
    )))
}

/// Refuse method-override headers (X-HTTP-Method-Override, X-HTTP-Method, X-Method-Override, any
/// case), any Content-Encoding other than "identity", a `Connection` header that names anything but
/// the hop-by-hop headers, a second copy of a header the provider or tollgate reads once
/// ([`SINGLE_HEADERS`]), and Transfer-Encoding other than chunked.
///
/// Transfer-Encoding together with Content-Length is refused too: the two framings can disagree,
/// and that disagreement is the classic request-smuggling gap between proxies.
pub fn check_headers(headers: &http::HeaderMap) -> Result<(), Malformed> {
    // `HeaderMap` stores names in lower case, so these look-ups match any case the agent sent.
    for name in METHOD_OVERRIDE_HEADERS {
        if headers.contains_key(name) {
            return Err(Malformed::new(format!(
                "the {name} header is refused: send the request with its real method"
            )));
        }
    }

    // A compressed body would be judged on bytes the policy cannot read, while the provider acts on
    // the decompressed content. Refused whether or not the request announces a body: over HTTP/2 a
    // body needs neither Content-Length nor Transfer-Encoding.
    for value in headers.get_all(http::header::CONTENT_ENCODING) {
        if !is_token_list_of(value, "identity") {
            return Err(Malformed::new(
                "a request with a Content-Encoding is refused: send the body uncompressed",
            ));
        }
    }

    // A header named in `Connection` is dropped on the way to the provider (RFC 9110 section 7.6.1),
    // after the policy saw it: an `Idempotency-Key` or `Stripe-Account` listed there would be judged
    // and then not sent. Only the hop-by-hop names themselves may be listed.
    for value in headers.get_all(http::header::CONNECTION) {
        let Ok(text) = value.to_str() else {
            return Err(Malformed::new("the Connection header is not visible ASCII"));
        };
        for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if !CONNECTION_TOKENS
                .iter()
                .any(|allowed| token.eq_ignore_ascii_case(allowed))
            {
                return Err(Malformed::new(format!(
                    "Connection names {token:?}: it may name only {}, since a header it names is not \
                     forwarded and tollgate judges what is forwarded",
                    CONNECTION_TOKENS.join(", ")
                )));
            }
        }
    }

    // Rack, CGI and some load balancers read `Stripe_Account` as `Stripe-Account` (both become
    // HTTP_STRIPE_ACCOUNT): a header tollgate would not judge under the name the provider acts on.
    if let Some(name) = headers.keys().find(|n| n.as_str().contains('_')) {
        return Err(Malformed::new(format!(
            "the header name {:?} has an underscore, which some servers read as '-': use the name with '-'",
            name.as_str()
        )));
    }

    // Two copies of a header the provider reads once: which copy it uses is its choice, not ours.
    for name in SINGLE_HEADERS {
        if headers.get_all(*name).iter().nth(1).is_some() {
            return Err(Malformed::new(format!(
                "the {name} header appears more than once; send it once"
            )));
        }
    }

    // Exactly one `chunked` across all Transfer-Encoding headers: RFC 9112 forbids chunking twice,
    // and any other coding changes the bytes the provider acts on.
    let mut codings = 0_usize;
    for value in headers.get_all(http::header::TRANSFER_ENCODING) {
        if !is_token_list_of(value, "chunked") {
            return Err(Malformed::new(
                "a Transfer-Encoding other than chunked is refused",
            ));
        }
        codings += value.to_str().map_or(0, |value| value.split(',').count());
    }
    if codings > 1 {
        return Err(Malformed::new(
            "a Transfer-Encoding other than a single chunked is refused",
        ));
    }
    if codings == 1 && headers.contains_key(http::header::CONTENT_LENGTH) {
        return Err(Malformed::new(
            "Transfer-Encoding and Content-Length together are refused",
        ));
    }
    Ok(())
}

/// Parse the raw query (without '?') into key -> values in order of appearance; decoding '+' as
/// space per form rules. Invalid percent-encoding or non-UTF-8 → Malformed. None or "" → empty map.
pub fn parse_query(raw: Option<&str>) -> Result<BTreeMap<String, Vec<String>>, Malformed> {
    let mut query: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (key, value) in form_pairs(raw.unwrap_or(""), "query")? {
        query.entry(key).or_default().push(value);
    }
    Ok(query)
}

/// A canonical rendering of a parsed query for request fingerprints: keys sorted, values in
/// original order, re-encoded; equal for queries that mean the same.
///
/// Keys and values are encoded with the form serializer (space as '+', everything but `* - . _` and
/// alphanumerics escaped), and every value is written as `key=value`, so `a`, `a=` and
/// `a=%20`-style spelling differences vanish. A key with no values contributes nothing.
pub fn canonical_query(query: &BTreeMap<String, Vec<String>>) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (key, values) in query {
        for value in values {
            serializer.append_pair(key, value);
        }
    }
    serializer.finish()
}

/// Splits a form-encoded string (a query, or an `application/x-www-form-urlencoded` body) into
/// decoded pairs in order of appearance. Unlike `form_urlencoded::parse`, which repairs bad escapes
/// and invalid UTF-8 silently, this refuses them, so the value we judge is the only reading of the
/// input. Empty pieces (`a&&b`) are skipped and a piece without '=' has the empty value, as the
/// WHATWG form rules say. `context` names the input in messages ("query", "form body").
pub(crate) fn form_pairs(raw: &str, context: &str) -> Result<Vec<(String, String)>, Malformed> {
    let mut pairs = Vec::new();
    for piece in raw.split('&').filter(|piece| !piece.is_empty()) {
        let (key, value) = piece.split_once('=').unwrap_or((piece, ""));
        pairs.push((
            percent_decode_strict(key, true, context)?,
            percent_decode_strict(value, true, context)?,
        ));
    }
    Ok(pairs)
}

/// Decodes `%XX` escapes (and '+' as a space when `plus_as_space`), refusing a '%' not followed by
/// two hex digits and a result that is not UTF-8.
fn percent_decode_strict(
    input: &str,
    plus_as_space: bool,
    context: &str,
) -> Result<String, Malformed> {
    let bytes = input.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        match byte {
            b'%' => {
                let high = bytes.get(index + 1).copied().and_then(hex_value);
                let low = bytes.get(index + 2).copied().and_then(hex_value);
                let (Some(high), Some(low)) = (high, low) else {
                    return Err(Malformed::new(format!(
                        "invalid percent-encoding in the {context}"
                    )));
                };
                decoded.push(high << 4 | low);
                index += 3;
            }
            b'+' if plus_as_space => {
                decoded.push(b' ');
                index += 1;
            }
            _ => {
                decoded.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8(decoded)
        .map_err(|_| Malformed::new(format!("the {context} decodes to bytes that are not UTF-8")))
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// Checks one raw segment (between two '/') and returns it decoded.
fn canonical_segment(raw: &str) -> Result<String, Malformed> {
    if raw.is_empty() {
        return Err(Malformed::new(
            "the path has an empty segment ('//' or a trailing '/')",
        ));
    }
    for byte in raw.bytes() {
        check_raw_path_byte(byte)?;
    }
    let segment = percent_decode_strict(raw, false, "path")?;
    // Checked again after decoding, because an escape can spell what the raw checks refused.
    for c in segment.chars() {
        check_decoded_path_char(c)?;
    }
    if segment == "." || segment == ".." {
        return Err(Malformed::new("the path has a '.' or '..' segment"));
    }
    Ok(segment)
}

/// A raw path byte must be one RFC 3986 allows in a segment: unreserved, sub-delims, ':', '@' or
/// the '%' of an escape. The refusals that have a specific reason say so.
fn check_raw_path_byte(byte: u8) -> Result<(), Malformed> {
    match byte {
        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' => Ok(()),
        b'-' | b'.' | b'_' | b'~' | b'%' | b':' | b'@' => Ok(()),
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' => Ok(()),
        b';' => Err(Malformed::new(
            "the path has a ';' (path parameters are refused)",
        )),
        b'\\' => Err(Malformed::new("the path has a backslash")),
        0x00..=0x1f | 0x7f => Err(Malformed::new("the path has a control character")),
        _ => Err(Malformed::new(
            "the path has a character that must be percent-encoded (RFC 3986 section 3.3)",
        )),
    }
}

/// Characters refused even when they arrive percent-encoded, because some server on the way would
/// give them structure.
fn check_decoded_path_char(c: char) -> Result<(), Malformed> {
    match c {
        '/' => Err(Malformed::new("the path has an encoded '/' (%2F)")),
        '\\' => Err(Malformed::new("the path has a backslash")),
        ';' => Err(Malformed::new(
            "the path has a ';' (path parameters are refused)",
        )),
        '%' => Err(Malformed::new(
            "the path has an encoded '%' (%25): double encoding is refused",
        )),
        c if c.is_control() => Err(Malformed::new("the path has a control character")),
        _ => Ok(()),
    }
}

/// True when every comma-separated element of the header value is `token` (ASCII case-insensitive),
/// and there is at least one. A value that is not visible ASCII is never a match.
fn is_token_list_of(value: &http::HeaderValue, token: &str) -> bool {
    let Ok(value) = value.to_str() else {
        return false;
    };
    let mut elements = value.split(',').map(str::trim).peekable();
    elements.peek().is_some() && elements.all(|element| element.eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `expected` is the forwarded form and decoded segments, or a fragment of the refusal message.
    fn check(raw: &str, expected: Result<(&str, &[&str]), &str>) {
        match (canonicalize_path(raw), expected) {
            (Ok(path), Ok((forwarded, segments))) => {
                assert_eq!(path.as_str(), forwarded, "forwarded form of {raw:?}");
                assert_eq!(path.segments(), segments, "segments of {raw:?}");
            }
            (Err(error), Err(fragment)) => {
                assert!(
                    error.message().contains(fragment),
                    "{raw:?}: {error:?} lacks {fragment:?}"
                );
            }
            (got, want) => panic!("{raw:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn only_methods_spelled_as_http_spells_them_pass() {
        for ok in METHODS {
            assert!(check_method(&http::Method::from_bytes(ok.as_bytes()).unwrap()).is_ok());
        }
        for bad in ["put", "Put", "TRACE", "CONNECT", "PROPFIND"] {
            assert!(
                check_method(&http::Method::from_bytes(bad.as_bytes()).unwrap()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn canonical_paths() {
        let cases: &[(&str, &str, &[&str])] = &[
            ("", "/", &[]),
            ("/", "/", &[]),
            (
                "/client/v4/zones/abc/dns_records",
                "/client/v4/zones/abc/dns_records",
                &["client", "v4", "zones", "abc", "dns_records"],
            ),
            (
                "/v1/subscriptions/sub_123",
                "/v1/subscriptions/sub_123",
                &["v1", "subscriptions", "sub_123"],
            ),
            // Unreserved characters spelled as escapes are written literally.
            ("/%41bc/a%7e%2D%2e%5F", "/Abc/a~-._", &["Abc", "a~-._"]),
            // Hex escapes come out upper-case; Unicode is allowed and forwarded encoded.
            ("/caf%c3%a9", "/caf%C3%A9", &["café"]),
            ("/%E2%9C%93", "/%E2%9C%93", &["✓"]),
            // '+' is a literal plus in a path, encoded so no form-style decoder reads a space.
            ("/a+b", "/a%2Bb", &["a+b"]),
            ("/a%2bb", "/a%2Bb", &["a+b"]),
            ("/a%20b", "/a%20b", &["a b"]),
            // The sub-delims, ':' and '@' stay literal whichever way they arrive.
            (
                "/user@example.com:8",
                "/user@example.com:8",
                &["user@example.com:8"],
            ),
            ("/a!$&'()*,=", "/a!$&'()*,=", &["a!$&'()*,="]),
            ("/%3a%40%21%3D", "/:@!=", &[":@!="]),
            // Escapes for characters that must not be raw stay escaped.
            ("/%3F%23%5B%5D", "/%3F%23%5B%5D", &["?#[]"]),
            // Dots are fine when the segment is not exactly '.' or '..'.
            (
                "/.well-known/a.b/...",
                "/.well-known/a.b/...",
                &[".well-known", "a.b", "..."],
            ),
            ("/example.com", "/example.com", &["example.com"]),
        ];
        for (raw, forwarded, segments) in cases {
            check(raw, Ok((forwarded, segments)));
        }
    }

    #[test]
    fn refused_paths() {
        let long_segment = "a".repeat(MAX_PATH_BYTES);
        let pluses = format!("/{}", "+".repeat(2000));
        let cases: &[(&str, &str)] = &[
            ("client/v4", "must start with '/'"),
            // Dot segments, in every spelling.
            ("/a/./b", "'.' or '..'"),
            ("/a/../b", "'.' or '..'"),
            ("/..", "'.' or '..'"),
            ("/a/.", "'.' or '..'"),
            ("/a/%2e/b", "'.' or '..'"),
            ("/a/%2E%2e/b", "'.' or '..'"),
            ("/a/.%2e/b", "'.' or '..'"),
            ("/a/%2e./b", "'.' or '..'"),
            // Encoded slash and backslash.
            ("/a%2fb", "encoded '/'"),
            ("/a%2Fb", "encoded '/'"),
            ("/a\\b", "backslash"),
            ("/a%5cb", "backslash"),
            ("/a%5C..", "backslash"),
            // NUL and other controls, raw or decoded.
            ("/a%00b", "control character"),
            ("/a\0b", "control character"),
            ("/a\tb", "control character"),
            ("/a%0d%0aHost:x", "control character"),
            ("/a%7f", "control character"),
            ("/a%c2%85", "control character"),
            // Empty segments and trailing slashes.
            ("//", "empty segment"),
            ("/a//b", "empty segment"),
            ("/a/", "empty segment"),
            ("//a", "empty segment"),
            // Invalid escapes and non-UTF-8.
            ("/a%zz", "invalid percent-encoding"),
            ("/a%4", "invalid percent-encoding"),
            ("/a%", "invalid percent-encoding"),
            ("/a%%41", "invalid percent-encoding"),
            ("/a%ff", "not UTF-8"),
            ("/%c0%ae%c0%ae", "not UTF-8"),
            // Path parameters and double encoding.
            ("/a;b", "';'"),
            ("/a;jsessionid=1/b", "';'"),
            ("/a%3bb", "';'"),
            ("/%252e%252e", "double encoding"),
            ("/a%2525", "double encoding"),
            // Raw characters RFC 3986 wants encoded.
            ("/a b", "must be percent-encoded"),
            ("/café", "must be percent-encoded"),
            ("/a?b", "must be percent-encoded"),
            ("/a#b", "must be percent-encoded"),
            ("/{zone_id}", "must be percent-encoded"),
            ("/a\"b", "must be percent-encoded"),
            ("/a[0]", "must be percent-encoded"),
            // Length, raw and after re-encoding.
            (&format!("/{long_segment}"), "longer than 4096"),
            (&pluses, "longer than 4096"),
        ];
        for (raw, fragment) in cases {
            check(raw, Err(fragment));
        }
    }

    #[test]
    fn longest_path_is_accepted() {
        let raw = format!("/{}", "a".repeat(MAX_PATH_BYTES - 1));
        let segment = &raw[1..];
        check(&raw, Ok((&raw, &[segment])));
    }

    #[test]
    fn canonical_form_is_a_fixed_point() {
        let raws = [
            "/%41%2b%c3%a9",
            "/a+b/x%3a",
            "/client/v4/accounts/0123/workers/scripts/my-worker",
        ];
        for raw in raws {
            let once = canonicalize_path(raw).unwrap_or_else(|error| panic!("{raw}: {error}"));
            let twice =
                canonicalize_path(once.as_str()).unwrap_or_else(|error| panic!("{raw}: {error}"));
            assert_eq!(once, twice, "{raw}");
        }
    }

    fn check_headers_case(headers: &[(&str, &[u8])], has_body: bool, expected: Result<(), &str>) {
        let mut map = http::HeaderMap::new();
        for (name, value) in headers {
            let name = http::HeaderName::from_bytes(name.as_bytes())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let value =
                http::HeaderValue::from_bytes(value).unwrap_or_else(|e| panic!("{value:?}: {e}"));
            map.append(name, value);
        }
        match (check_headers(&map), expected) {
            (Ok(()), Ok(())) => {}
            (Err(error), Err(fragment)) => {
                assert!(
                    error.message().contains(fragment),
                    "{headers:?}: {error:?} lacks {fragment:?}"
                );
            }
            (got, want) => panic!("{headers:?} (body: {has_body}): got {got:?}, want {want:?}"),
        }
    }

    /// Headers to send, whether the request has a body, and the expected outcome.
    type HeaderCase<'a> = (&'a [(&'a str, &'a [u8])], bool, Result<(), &'a str>);

    #[test]
    fn header_hygiene() {
        let cases: &[HeaderCase] = &[
            (&[], true, Ok(())),
            (
                &[
                    ("content-type", b"application/json"),
                    ("content-length", b"2"),
                ],
                true,
                Ok(()),
            ),
            // Method overrides, in any case, with or without a body.
            (
                &[("X-HTTP-Method-Override", b"DELETE")],
                false,
                Err("x-http-method-override"),
            ),
            (
                &[("x-http-method", b"PUT")],
                true,
                Err("x-http-method header"),
            ),
            (
                &[("X-METHOD-OVERRIDE", b"GET")],
                false,
                Err("x-method-override"),
            ),
            // Only identity passes, whether or not a body is announced (HTTP/2 needs no framing header).
            (
                &[("content-encoding", b"gzip")],
                true,
                Err("Content-Encoding"),
            ),
            (
                &[("content-encoding", b"gzip")],
                false,
                Err("Content-Encoding"),
            ),
            (&[("content-encoding", b"identity")], true, Ok(())),
            (&[("content-encoding", b"Identity")], true, Ok(())),
            (
                &[("content-encoding", b"identity, gzip")],
                true,
                Err("Content-Encoding"),
            ),
            (
                &[
                    ("content-encoding", b"identity"),
                    ("content-encoding", b"br"),
                ],
                true,
                Err("Content-Encoding"),
            ),
            (&[("content-encoding", b"")], true, Err("Content-Encoding")),
            (
                &[("content-encoding", b"\xffgzip")],
                true,
                Err("Content-Encoding"),
            ),
            // Transfer-Encoding: a single chunked, and never beside Content-Length.
            (&[("transfer-encoding", b"chunked")], true, Ok(())),
            (&[("transfer-encoding", b"Chunked")], true, Ok(())),
            (
                &[("transfer-encoding", b"gzip, chunked")],
                true,
                Err("other than chunked"),
            ),
            (
                &[("transfer-encoding", b"identity")],
                false,
                Err("other than chunked"),
            ),
            (
                &[("transfer-encoding", b"chunked, chunked")],
                true,
                Err("single chunked"),
            ),
            (
                &[
                    ("transfer-encoding", b"chunked"),
                    ("transfer-encoding", b"chunked"),
                ],
                true,
                Err("single chunked"),
            ),
            (
                &[("transfer-encoding", b"chunked"), ("content-length", b"5")],
                true,
                Err("Content-Length together"),
            ),
            // Connection may name only hop-by-hop headers: a judged header it named would not be sent.
            (&[("connection", b"keep-alive")], false, Ok(())),
            (&[("connection", b"Close, TE")], false, Ok(())),
            (
                &[("connection", b"close, Idempotency-Key")],
                false,
                Err("Connection names \"Idempotency-Key\""),
            ),
            (
                &[("connection", b"stripe-account")],
                false,
                Err("Connection names"),
            ),
            (
                &[
                    ("connection", b"keep-alive"),
                    ("connection", b"authorization"),
                ],
                false,
                Err("Connection names"),
            ),
            (
                &[("connection", b"tollgate-approval")],
                false,
                Err("Connection names"),
            ),
            // Underscores in names: `Stripe_Account` is `Stripe-Account` to Rack and CGI.
            (
                &[("stripe_account", b"acct_evil")],
                false,
                Err("underscore"),
            ),
            // A second copy of a header read once.
            (
                &[("stripe-account", b"acct_a"), ("stripe-account", b"acct_b")],
                false,
                Err("stripe-account header appears more than once"),
            ),
            (
                &[("idempotency-key", b"k"), ("Idempotency-Key", b"k")],
                false,
                Err("idempotency-key header appears more than once"),
            ),
            (
                &[
                    ("content-type", b"application/x-www-form-urlencoded"),
                    ("content-type", b"application/json"),
                ],
                true,
                Err("content-type header appears more than once"),
            ),
        ];
        for (headers, has_body, expected) in cases {
            check_headers_case(headers, *has_body, *expected);
        }
    }

    /// A parsed query written as `(key, values)` pairs.
    type QueryPairs<'a> = &'a [(&'a str, &'a [&'a str])];

    fn check_query(raw: Option<&str>, expected: Result<QueryPairs, &str>) {
        match (parse_query(raw), expected) {
            (Ok(query), Ok(pairs)) => {
                let want: BTreeMap<String, Vec<String>> = pairs
                    .iter()
                    .map(|(key, values)| {
                        (
                            key.to_string(),
                            values.iter().map(|v| v.to_string()).collect(),
                        )
                    })
                    .collect();
                assert_eq!(query, want, "{raw:?}");
            }
            (Err(error), Err(fragment)) => {
                assert!(
                    error.message().contains(fragment),
                    "{raw:?}: {error:?} lacks {fragment:?}"
                );
            }
            (got, want) => panic!("{raw:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn queries() {
        let cases: &[(Option<&str>, Result<QueryPairs, &str>)] = &[
            (None, Ok(&[])),
            (Some(""), Ok(&[])),
            (Some("q=example.com"), Ok(&[("q", &["example.com"])])),
            (
                Some("a=1&b=2&a=3"),
                Ok(&[("a", &["1", "3"]), ("b", &["2"])]),
            ),
            (Some("q=hello+world"), Ok(&[("q", &["hello world"])])),
            (Some("q=a%2Bb%20c"), Ok(&[("q", &["a+b c"])])),
            (Some("a"), Ok(&[("a", &[""])])),
            (Some("a="), Ok(&[("a", &[""])])),
            (Some("a&&b=1&"), Ok(&[("a", &[""]), ("b", &["1"])])),
            (Some("=v"), Ok(&[("", &["v"])])),
            (Some("a=b=c"), Ok(&[("a", &["b=c"])])),
            (Some("expand%5B%5D=data"), Ok(&[("expand[]", &["data"])])),
            (Some("k=%E2%9C%93"), Ok(&[("k", &["✓"])])),
            (Some("a=%zz"), Err("invalid percent-encoding in the query")),
            (Some("a=%4"), Err("invalid percent-encoding in the query")),
            (Some("%zz=1"), Err("invalid percent-encoding in the query")),
            (Some("a=%ff"), Err("not UTF-8")),
        ];
        for (raw, expected) in cases {
            check_query(*raw, *expected);
        }
    }

    fn check_canonical_query(raw: &str, expected: &str) {
        let query = parse_query(Some(raw)).unwrap_or_else(|error| panic!("{raw}: {error}"));
        let canonical = canonical_query(&query);
        assert_eq!(canonical, expected, "{raw}");
        // The rendering parses back to the same meaning.
        let reparsed =
            parse_query(Some(&canonical)).unwrap_or_else(|error| panic!("{canonical}: {error}"));
        assert_eq!(reparsed, query, "{raw}");
    }

    #[test]
    fn canonical_queries() {
        let cases = [
            ("", ""),
            ("b=2&a=1", "a=1&b=2"),
            ("a=2&b=0&a=1", "a=2&a=1&b=0"),
            ("q=hello%20world", "q=hello+world"),
            ("q=hello+world", "q=hello+world"),
            ("a", "a="),
            ("k=%41", "k=A"),
            ("k=a%2fb", "k=a%2Fb"),
            ("k=✓", "k=%E2%9C%93"),
            ("expand[]=a&expand%5B%5D=b", "expand%5B%5D=a&expand%5B%5D=b"),
        ];
        for (raw, expected) in cases {
            check_canonical_query(raw, expected);
        }
    }

    #[test]
    fn canonical_query_skips_keys_without_values() {
        let query = BTreeMap::from([
            ("a".to_owned(), Vec::new()),
            ("b".to_owned(), vec!["1".to_owned()]),
        ]);
        assert_eq!(canonical_query(&query), "b=1");
    }

    #[test]
    fn malformed_displays_its_message() {
        let error = Malformed::new("the path has a backslash");
        assert_eq!(error.to_string(), "the path has a backslash");
        assert_eq!(error.message(), "the path has a backslash");
    }
}
