//! Answers screened for secrets tollgate holds: the credential it forwards with (every answer), and a
//! minted token's secret (the answer to a request made with that token's handle, and the token's own create
//! or roll answer). A provider that echoes the request (a debug header, an error quoting the credential)
//! must not hand either to the agent.
//!
//! What counts as carrying a secret: any run of [`WINDOW`] consecutive characters of it (the whole of a
//! shorter one) — a prefix, a middle, the whole — in any letter case, each character as itself or escaped
//! the ways answers escape text: JSON (`\u0053`, `\/`), JS (`\u{53}`, a line continuation), C (`\x53`,
//! `\U00000053`, octal `\123`), URL (`%53`) and HTML (`&#83;`, `&#x53`), with any number of leading zeros
//! where the form allows them, and with invisible characters (NUL, zero-width spaces, soft hyphens) between
//! characters read as nothing. Escapes are read left to right as a decoder would. Headers are read as one text
//! of names and values in order (and values, and names, alone), so a secret split across headers is found too
//! (the values of a repeated name are read together). The body streams through with the bytes of a possible match held back, so no
//! part of one is ever sent; a match ends the body with an error (the agent sees a broken answer). A body
//! that starts like a compressed stream (gzip, zlib, bzip2, xz, zstd) is cut off, and the caller withholds
//! one labelled compressed (tollgate asks for `identity`). Not caught: a provider that transforms the secret
//! further (base64, reversed, pieces shorter than [`WINDOW`] with other text between).

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::Frame;
use uuid::Uuid;

/// How many consecutive characters of a secret make a leak (all of it, for a shorter secret). Cloudflare's
/// secrets are 40 characters; 12 of them are still 70 bits an agent must not be handed piecemeal.
pub const WINDOW: usize = 12;

/// The longest escape read; a longer numeric character reference (`&#` and 60 zeros…) is taken as an
/// attempt to get past the screen and cuts the answer off.
const LONGEST_ESCAPE: usize = 64;

/// The secret of a `Bearer <secret>` credential, as bytes to look for.
pub fn secret_of(credential: &http::HeaderValue) -> Option<Vec<u8>> {
    let bytes = credential.as_bytes();
    let secret = bytes.strip_prefix(b"Bearer ")?;
    (!secret.is_empty()).then(|| secret.to_vec())
}

/// Whether the answer is in a content coding other than `identity` (and so cannot be screened).
pub fn encoded(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .any(|v| {
            v.to_str().map_or(true, |v| {
                v.split(',')
                    .map(str::trim)
                    .any(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"))
            })
        })
}

/// Whether a body starts like a compressed stream (gzip, zlib, bzip2, xz, zstd) without saying so.
fn compressed_start(start: &[u8]) -> bool {
    matches!(
        start,
        [0x1f, 0x8b, ..]
            | [0x78, 0x01 | 0x5e | 0x9c | 0xda, ..]
            | [b'B', b'Z', b'h', ..]
            | [0xfd, b'7', b'z', b'X', b'Z', ..]
            | [0x28, 0xb5, 0x2f, 0xfd, ..]
    )
}

/// The secrets one answer is screened for, prepared once: every [`WINDOW`]-long run of each (lower-cased),
/// and the whole of any shorter one.
pub struct Needles {
    windows: HashSet<[u8; WINDOW]>,
    /// A bit per hash of a window: most positions are ruled out without a set lookup.
    filter: Box<[u64]>,
    short: Vec<Vec<u8>>,
}

const FILTER_BITS: u32 = 16;

/// How many leading characters of a Stripe key are public (`sk_test_51` and the account's 16): windows
/// wholly inside them are not looked for.
const STRIPE_PUBLIC_PREFIX: usize = 26;

/// The base of the rolling hash over the last [`WINDOW`] characters, and its power for the one leaving.
const BASE: u64 = 0x100_0000_01b3;
const BASE_POW: u64 = {
    let mut p: u64 = 1;
    let mut i = 1;
    while i < WINDOW {
        p = p.wrapping_mul(BASE);
        i += 1;
    }
    p
};

/// The polynomial hash of a window, as [`Scan`] rolls it.
fn window_hash(window: &[u8]) -> u64 {
    window.iter().fold(0u64, |h, &c| {
        h.wrapping_mul(BASE).wrapping_add(u64::from(c))
    })
}

fn filter_slot(hash: u64) -> usize {
    let mixed = hash ^ (hash >> 29) ^ (hash >> 47);
    mixed as usize & ((1 << FILTER_BITS) - 1)
}

impl Needles {
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a [u8]>) -> Needles {
        let mut needles = Needles {
            windows: HashSet::new(),
            filter: vec![0u64; (1 << FILTER_BITS) / 64].into_boxed_slice(),
            short: Vec::new(),
        };
        for secret in secrets {
            let lower = secret.to_ascii_lowercase();
            if lower.is_empty() {
                continue;
            }
            if lower.len() < WINDOW {
                needles.short.push(lower);
                continue;
            }
            // A Stripe secret or restricted key starts with what is public: `sk_test_51` and the account's
            // own part, which its publishable key and its `acct_1…` id repeat. Windows inside that part
            // would cut off every answer naming the account.
            let public = if lower.starts_with(b"sk_") || lower.starts_with(b"rk_") {
                STRIPE_PUBLIC_PREFIX
            } else {
                0
            };
            for w in lower
                .windows(WINDOW)
                .skip(public.saturating_sub(WINDOW - 1))
            {
                let mut window = [0u8; WINDOW];
                window.copy_from_slice(w);
                let slot = filter_slot(window_hash(w));
                needles.filter[slot / 64] |= 1 << (slot % 64);
                needles.windows.insert(window);
            }
        }
        needles
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty() && self.short.is_empty()
    }

    /// Whether `text` (complete) carries any of the secrets.
    pub fn found_in(&self, text: &[u8]) -> bool {
        [Scan::default(), Scan::literal()]
            .iter_mut()
            .any(|scan| matches!(scan.feed(self, text, 0, true), Fed::Found | Fed::Overlong))
    }

    /// Whether the headers carry any of the secrets: read as one text of names and values in order, as one
    /// of the values alone and one of the names alone (a secret split across headers, or between a name and
    /// its value, is found). Values of a repeated name are read together, as the map keeps them.
    pub fn headers_carry(&self, headers: &HeaderMap) -> bool {
        let mut pairs = Vec::with_capacity(768);
        let mut values = Vec::with_capacity(512);
        let mut names = Vec::with_capacity(256);
        for (name, value) in headers {
            pairs.extend_from_slice(name.as_str().as_bytes());
            pairs.extend_from_slice(value.as_bytes());
            names.extend_from_slice(name.as_str().as_bytes());
            values.extend_from_slice(value.as_bytes());
        }
        self.found_in(&pairs) || self.found_in(&values) || self.found_in(&names)
    }

    /// Whether the window `scan` ends on is one of the secrets' (or ends with a short one).
    fn matches(&self, scan: &Scan) -> bool {
        if scan.seen >= WINDOW && !self.windows.is_empty() {
            let slot = filter_slot(scan.hash);
            if self.filter[slot / 64] & (1 << (slot % 64)) != 0
                && self.windows.contains(&scan.tail())
            {
                return true;
            }
        }
        !self.short.is_empty() && {
            let tail = scan.tail();
            self.short
                .iter()
                .any(|s| scan.seen >= s.len() && tail.ends_with(s))
        }
    }
}

/// What feeding bytes to a [`Scan`] found.
#[derive(Debug, PartialEq, Eq)]
enum Fed {
    /// Nothing yet: bytes before `safe` (an offset in the whole text) can no longer be part of a match, and
    /// decoding stopped at `decoded_to` (an escape cut short by the end of what was fed).
    Clear {
        safe: u64,
        decoded_to: u64,
    },
    Found,
    /// An escape longer than [`LONGEST_ESCAPE`].
    Overlong,
}

/// Decodes a text left to right (across the pieces it comes in) and looks for a secret in what it spells.
#[derive(Default)]
struct Scan {
    /// The last [`WINDOW`] characters decoded, lower-cased, in a ring: the next goes to `seen % WINDOW`.
    ring: [u8; WINDOW],
    /// The rolling hash of the last [`WINDOW`] characters.
    hash: u64,
    /// How many characters were decoded.
    seen: usize,
    /// Where (offset in the whole text) each of the last [`WINDOW`] decoded characters started, in a ring
    /// like `ring`.
    starts: [u64; WINDOW],
    /// Reads every byte as itself (no escapes): the text as a reader that decodes nothing sees it. An escape
    /// that runs into a secret's first character (`%4` before `Ab3…` reads `J`) hides it from the decoding
    /// scan only; this one sees it.
    literal: bool,
}

impl Scan {
    fn literal() -> Scan {
        Scan {
            literal: true,
            ..Scan::default()
        }
    }
}

/// One step of decoding at a position.
enum Unit {
    Char(u8, usize),
    /// Bytes that spell nothing (a line continuation, an invisible character).
    Skip(usize),
    /// An escape may be starting here but the text ends before it does.
    NeedMore,
    Overlong,
}

impl Scan {
    /// Feeds `text`, which starts at offset `base` of the whole; `at_end` when no more follows. Returns how
    /// far the bytes are safe to send, or a find. Bytes from the first undecoded one on are fed again with
    /// what follows them (the caller keeps them).
    fn feed(&mut self, needles: &Needles, text: &[u8], base: u64, at_end: bool) -> Fed {
        let mut i = 0;
        while i < text.len() {
            let step = if self.literal {
                Unit::Char(text[i], 1)
            } else {
                unit(&text[i..], at_end)
            };
            let (c, width) = match step {
                Unit::Char(c, width) => (c, width),
                Unit::Skip(width) => {
                    i += width;
                    continue;
                }
                Unit::NeedMore => break,
                Unit::Overlong => return Fed::Overlong,
            };
            let c = c.to_ascii_lowercase();
            let at = self.seen % WINDOW;
            let leaving = if self.seen >= WINDOW {
                self.ring[at]
            } else {
                0
            };
            self.hash = self
                .hash
                .wrapping_sub(u64::from(leaving).wrapping_mul(BASE_POW))
                .wrapping_mul(BASE)
                .wrapping_add(u64::from(c));
            self.ring[at] = c;
            self.starts[at] = base + i as u64;
            self.seen += 1;
            if needles.matches(self) {
                return Fed::Found;
            }
            i += width;
        }
        // The oldest of the last WINDOW - 1 characters may begin a match; everything before it may not. So
        // may whatever was not decoded yet.
        let decoded_to = base + i as u64;
        let oldest_open = match self.seen {
            0 => decoded_to,
            n if n < WINDOW => self.starts[0],
            n => self.starts[(n + 1) % WINDOW],
        };
        Fed::Clear {
            safe: oldest_open.min(decoded_to),
            decoded_to,
        }
    }

    /// The last [`WINDOW`] characters, oldest first.
    fn tail(&self) -> [u8; WINDOW] {
        let mut tail = [0u8; WINDOW];
        let at = self.seen % WINDOW;
        tail[..WINDOW - at].copy_from_slice(&self.ring[at..]);
        tail[WINDOW - at..].copy_from_slice(&self.ring[..at]);
        tail
    }
}

fn hex_value(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u32::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

/// What a decoded code point is to the screen: a printable ASCII character, nothing (an invisible character:
/// NUL, soft hyphen, zero-width spaces and joiners, word joiner, byte-order mark), or `None` for anything
/// else — the escape is then read as plain text instead, so that it cannot swallow characters of a secret
/// (`\xcf` before `-test…` reads as `\`, `x`, `c`, `f`).
fn decoded(code: u32, width: usize) -> Option<Unit> {
    match code {
        0 | 0xad | 0x200b..=0x200d | 0x2060 | 0xfeff => Some(Unit::Skip(width)),
        0x20..=0x7e => Some(Unit::Char(code as u8, width)),
        _ => None,
    }
}

/// A run of digits in `radix` at `text[from..]`, at most [`LONGEST_ESCAPE`] bytes from the escape's start:
/// its value when it names one character (leading zeros allowed, as every reader of these escapes allows
/// them) and where it ends; `NeedMore` when the text ends inside it, `Overlong` when only zeros reach the
/// limit (padding meant to get past the screen). A longer run with other digits names no character.
fn digit_run(
    text: &[u8],
    from: usize,
    radix: u32,
    at_end: bool,
) -> Result<(Option<u32>, usize), Unit> {
    let run: &[u8] = text.get(from..).unwrap_or_default();
    let digits = run
        .iter()
        .take(LONGEST_ESCAPE)
        .take_while(|b| char::from(**b).is_digit(radix))
        .count();
    let run = &run[..digits];
    let zeros = run.iter().take_while(|&&b| b == b'0').count();
    if digits == LONGEST_ESCAPE {
        return if zeros == digits {
            Err(Unit::Overlong)
        } else {
            Ok((None, from + digits))
        };
    }
    let end = from + digits;
    if end == text.len() && !at_end {
        return Err(Unit::NeedMore);
    }
    let significant = &run[zeros..];
    let value = if digits == 0 || significant.len() > 8 {
        None
    } else if significant.is_empty() {
        Some(0)
    } else {
        std::str::from_utf8(significant)
            .ok()
            .and_then(|d| u32::from_str_radix(d, radix).ok())
    };
    Ok((value, end))
}

/// Percent-encoded UTF-8 of the invisible characters [`decoded`] reads as nothing (upper-case hex; matched
/// in any case).
const INVISIBLE_PERCENT: &[&[u8]] = &[
    b"%C2%AD",
    b"%E2%80%8B",
    b"%E2%80%8C",
    b"%E2%80%8D",
    b"%E2%81%A0",
    b"%EF%BB%BF",
];

/// Raw UTF-8 of the same invisible characters.
const INVISIBLE_UTF8: &[&[u8]] = &[
    &[0xc2, 0xad],
    &[0xe2, 0x80, 0x8b],
    &[0xe2, 0x80, 0x8c],
    &[0xe2, 0x80, 0x8d],
    &[0xe2, 0x81, 0xa0],
    &[0xef, 0xbb, 0xbf],
];

/// Raw UTF-8 of the line and paragraph separators, which end a JS line continuation like `\n`.
const LINE_SEPARATORS: &[&[u8]] = &[&[0xe2, 0x80, 0xa8], &[0xe2, 0x80, 0xa9]];

/// Where `text` starts with one of `seqs` (ASCII case ignored): `Some(Ok(len))`; `Some(Err(()))` when the
/// text ends inside one; `None` otherwise.
fn starts_with_any(text: &[u8], seqs: &[&[u8]], at_end: bool) -> Option<Result<usize, ()>> {
    for seq in seqs {
        let n = seq.len().min(text.len());
        if text[..n].eq_ignore_ascii_case(&seq[..n]) {
            if n == seq.len() {
                return Some(Ok(n));
            }
            if !at_end {
                return Some(Err(()));
            }
        }
    }
    None
}

/// The character spelled at the start of `text` (see the module docs for the escapes read).
fn unit(text: &[u8], at_end: bool) -> Unit {
    let literal = Unit::Char(text[0], 1);
    let run = |from: usize, radix: u32| digit_run(text, from, radix, at_end);
    // An escape spells its character, nothing, or (anything else) is read as plain text.
    let spelled = |code: u32, width: usize| decoded(code, width).unwrap_or(Unit::Char(text[0], 1));
    match text[0] {
        0 => Unit::Skip(1),
        0xc2 | 0xe2 | 0xef => match starts_with_any(text, INVISIBLE_UTF8, at_end) {
            Some(Ok(n)) => Unit::Skip(n),
            Some(Err(())) => Unit::NeedMore,
            None => literal,
        },
        b'\\' => {
            let Some(&next) = text.get(1) else {
                return if at_end { literal } else { Unit::NeedMore };
            };
            match next {
                // JS `\u{…}`: any number of leading zeros.
                b'u' if text.get(2) == Some(&b'{') => match run(3, 16) {
                    Err(stop) => stop,
                    Ok((Some(c), end)) if text.get(end) == Some(&b'}') => spelled(c, end + 1),
                    Ok((_, end)) if end == text.len() && !at_end => Unit::NeedMore,
                    Ok(_) => literal,
                },
                b'u' | b'U' => {
                    let n = if next == b'u' { 4 } else { 8 };
                    if text.len() < 2 + n && !at_end {
                        return Unit::NeedMore;
                    }
                    text.get(2..2 + n)
                        .and_then(hex_value)
                        .map_or(literal, |c| spelled(c, 2 + n))
                }
                // `\x`: JS reads two digits, C all that follow; the reading that names a character wins.
                b'x' => match run(2, 16) {
                    Err(stop) => stop,
                    Ok((Some(c), end)) if decoded(c, end).is_some() => spelled(c, end),
                    Ok(_) => text
                        .get(2..4)
                        .and_then(hex_value)
                        .map_or(literal, |c| spelled(c, 4)),
                },
                // Octal, one to three digits (C, and JS outside strict mode).
                b'0'..=b'7' => {
                    let digits = text[1..]
                        .iter()
                        .take(3)
                        .take_while(|b| (b'0'..=b'7').contains(b))
                        .count();
                    if digits < 3 && 1 + digits == text.len() && !at_end {
                        return Unit::NeedMore;
                    }
                    let value = text[1..1 + digits]
                        .iter()
                        .fold(0u32, |v, b| v * 8 + u32::from(b - b'0'));
                    spelled(value, 1 + digits)
                }
                // A line continuation: the string goes on as if it were not there.
                b'\n' => Unit::Skip(2),
                b'\r' => match text.get(2) {
                    Some(b'\n') => Unit::Skip(3),
                    None if !at_end => Unit::NeedMore,
                    _ => Unit::Skip(2),
                },
                0xe2 => match starts_with_any(&text[1..], LINE_SEPARATORS, at_end) {
                    Some(Ok(n)) => Unit::Skip(1 + n),
                    Some(Err(())) => Unit::NeedMore,
                    None => literal,
                },
                c @ (b'/' | b'"' | b'\\' | b'\'') => Unit::Char(c, 2),
                _ => literal,
            }
        }
        b'%' => {
            match starts_with_any(text, INVISIBLE_PERCENT, at_end) {
                Some(Ok(n)) => return Unit::Skip(n),
                Some(Err(())) => return Unit::NeedMore,
                None => {}
            }
            if text.len() < 3 && !at_end {
                return Unit::NeedMore;
            }
            text.get(1..3)
                .and_then(hex_value)
                .map_or(literal, |c| spelled(c, 3))
        }
        b'&' => {
            let (Some(&hash), Some(&kind)) = (text.get(1), text.get(2)) else {
                let waits = !at_end && text.get(1).is_none_or(|&b| b == b'#');
                return if waits { Unit::NeedMore } else { literal };
            };
            if hash != b'#' {
                return literal;
            }
            let (from, radix) = match kind {
                b'x' | b'X' => (3, 16),
                _ => (2, 10),
            };
            match run(from, radix) {
                Err(stop) => stop,
                Ok((Some(c), end)) => {
                    let width = if text.get(end) == Some(&b';') {
                        end + 1
                    } else {
                        end
                    };
                    spelled(c, width)
                }
                Ok((None, _)) => literal,
            }
        }
        _ => literal,
    }
}

/// `body`, ended with an error where it would carry one of `needles` (or where it starts compressed).
/// Trailers are dropped. `decision_id` names the request in the log when an answer is cut off.
pub fn screened(body: Body, needles: Arc<Needles>, decision_id: Uuid) -> Body {
    Body::new(Screened {
        inner: body,
        held: BytesMut::new(),
        held_from: 0,
        scanned: 0,
        scan: Scan::default(),
        raw_scanned: 0,
        raw: Scan::literal(),
        needles,
        started: false,
        done: false,
        decision_id,
    })
}

/// What [`Screened`] answers a poll with.
type Polled = Poll<Option<Result<Frame<Bytes>, axum::Error>>>;

struct Screened {
    inner: Body,
    /// Bytes received and not yet sent; `held[0]` is at offset `held_from` of the body.
    held: BytesMut,
    held_from: u64,
    /// How far (offset in the body) the scan has decoded.
    scanned: u64,
    scan: Scan,
    /// The same for the text as written, without reading escapes ([`Scan::literal`]).
    raw_scanned: u64,
    raw: Scan,
    needles: Arc<Needles>,
    /// Whether the body's first bytes were looked at.
    started: bool,
    done: bool,
    decision_id: Uuid,
}

impl Screened {
    fn cut_off(&mut self, why: &'static str) -> Polled {
        self.done = true;
        tracing::error!(decision_id = %self.decision_id, "an answer {why}; it is cut off");
        Poll::Ready(Some(Err(axum::Error::new(format!(
            "the provider's answer {why}; withheld"
        )))))
    }

    /// Scans what was not scanned yet and sends what can no longer be part of a match.
    fn advance(&mut self, at_end: bool) -> Option<Polled> {
        // The text as written (no escapes read), then as decoded; the bytes sent are those neither reading
        // may still need.
        let raw_from = (self.raw_scanned - self.held_from) as usize;
        let raw_safe = match self.raw.feed(
            &self.needles,
            &self.held[raw_from..],
            self.raw_scanned,
            at_end,
        ) {
            Fed::Clear { safe, decoded_to } => {
                self.raw_scanned = decoded_to;
                safe
            }
            _ => return Some(self.cut_off("carries a secret tollgate holds")),
        };
        let from = (self.scanned - self.held_from) as usize;
        match self
            .scan
            .feed(&self.needles, &self.held[from..], self.scanned, at_end)
        {
            Fed::Found => Some(self.cut_off("carries a secret tollgate holds")),
            Fed::Overlong => Some(self.cut_off("carries an overlong character escape")),
            Fed::Clear { safe, decoded_to } => {
                let safe = safe.min(raw_safe);
                // The scan resumes at the first byte it could not decode yet.
                self.scanned = decoded_to;
                let send = if at_end {
                    self.held.len()
                } else {
                    (safe - self.held_from) as usize
                };
                if send == 0 {
                    return None;
                }
                self.held_from += send as u64;
                Some(Poll::Ready(Some(Ok(Frame::data(
                    self.held.split_to(send).freeze(),
                )))))
            }
        }
    }
}

impl http_body::Body for Screened {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    // Trailers are dropped (the forwarder drops a provider's already).
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    this.held.extend_from_slice(&data);
                    if !this.started && this.held_from + this.held.len() as u64 >= 6 {
                        this.started = true;
                        if this.held_from == 0 && compressed_start(&this.held) {
                            return this.cut_off("starts like a compressed stream");
                        }
                    }
                    if let Some(ready) = this.advance(false) {
                        return ready;
                    }
                }
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    if !this.started && compressed_start(&this.held) {
                        return this.cut_off("starts like a compressed stream");
                    }
                    let last = this.advance(true);
                    this.done = true;
                    return last.unwrap_or(Poll::Ready(None));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A body that yields the given chunks, one frame each.
    struct Chunks(std::collections::VecDeque<Bytes>);

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(c))))
        }
    }

    fn needles(secret: &str) -> Arc<Needles> {
        Arc::new(Needles::new([secret.as_bytes()]))
    }

    async fn through(chunks: &[&str], secret: &str) -> Result<String, String> {
        let body = Body::new(Chunks(
            chunks.iter().map(|c| Bytes::from(c.to_string())).collect(),
        ));
        match screened(body, needles(secret), Uuid::nil()).collect().await {
            Ok(c) => Ok(String::from_utf8(c.to_bytes().to_vec()).unwrap()),
            Err(e) => Err(e.to_string()),
        }
    }

    #[tokio::test]
    async fn a_secret_split_across_chunks_is_never_sent() {
        assert_eq!(
            through(&["{\"a\":", "\"b\"}"], "s3cr3t").await.unwrap(),
            "{\"a\":\"b\"}"
        );
        assert!(through(&["xx s3c", "r3t yy"], "s3cr3t").await.is_err());
        assert!(through(&["s3cr3t"], "s3cr3t").await.is_err());
        assert!(
            through(&["", "s", "3", "c", "r", "3", "t"], "s3cr3t")
                .await
                .is_err()
        );
        // Almost the secret passes, whole.
        assert_eq!(
            through(&["s3cr3", "x s3cr"], "s3cr3t").await.unwrap(),
            "s3cr3x s3cr"
        );
    }

    const LONG: &str = "Ab3dEf6hIj9lMn2pQr5tUv8xYz1bCd4fGh7jKl0n";

    #[tokio::test]
    async fn an_escaped_or_partial_echo_of_a_long_secret_is_cut_off() {
        // JSON escapes, in any case of hex, split across chunks.
        let escaped: String = LONG
            .chars()
            .map(|c| format!("\\u{:04X}", c as u32))
            .collect();
        let (a, b) = escaped.split_at(37);
        assert!(through(&["{\"echo\":\"", a, b, "\"}"], LONG).await.is_err());
        let mixed = format!("{}\\u0066{}", &LONG[..5], &LONG[6..14]);
        assert!(through(&[&mixed], LONG).await.is_err());
        // Twelve characters from the middle, or the first twelve, are a leak; eleven are not.
        assert!(through(&["x", &LONG[20..32], "y"], LONG).await.is_err());
        assert!(through(&[&LONG[..12]], LONG).await.is_err());
        let eleven = format!("[{}] [{}]", &LONG[..11], &LONG[11..22]);
        assert_eq!(through(&[&eleven], LONG).await.unwrap(), eleven);
        // An ordinary answer passes whole, whatever its chunks.
        let ordinary = r#"{"success":true,"result":{"id":"023e105f4ecef8ad9ca31a8372d0c353"}}"#;
        let (a, b) = ordinary.split_at(20);
        assert_eq!(through(&[a, b], LONG).await.unwrap(), ordinary);
    }

    #[tokio::test]
    async fn other_escapes_letter_case_and_unlabelled_compression_are_cut_off() {
        let url: String = LONG[..16].bytes().map(|b| format!("%{b:02X}")).collect();
        let html: String = LONG[4..20].bytes().map(|b| format!("&#{b};")).collect();
        let html_hex: String = LONG[4..20].bytes().map(|b| format!("&#x{b:x};")).collect();
        let c_hex: String = LONG[..13].bytes().map(|b| format!("\\x{b:02x}")).collect();
        let c_long: String = LONG[..13]
            .bytes()
            .map(|b| format!("\\U{:08X}", b))
            .collect();
        for echo in [
            url,
            html,
            html_hex,
            c_hex,
            c_long,
            LONG.to_uppercase(),
            LONG.to_lowercase(),
        ] {
            assert!(
                through(&["{\"x\":\"", &echo, "\"}"], LONG).await.is_err(),
                "{echo}"
            );
        }
        let gzip = Body::from(vec![0x1f_u8, 0x8b, 8, 0, 1, 2, 3]);
        assert!(
            screened(gzip, needles(LONG), Uuid::nil())
                .collect()
                .await
                .is_err()
        );
        // Ordinary escapes of other text pass, whole.
        let ordinary = r#"{"q":"a%20b","h":"&#38;","u":"\u00e9"}"#;
        assert_eq!(through(&[ordinary], LONG).await.unwrap(), ordinary);
    }

    #[test]
    fn header_names_are_screened_too() {
        let mut h = HeaderMap::new();
        h.insert(
            http::HeaderName::from_bytes(format!("x-{}", &LONG[..14]).as_bytes()).unwrap(),
            http::HeaderValue::from_static("1"),
        );
        assert!(needles(LONG).headers_carry(&h));
    }

    #[test]
    fn compressed_answers_are_told_apart() {
        let mut h = HeaderMap::new();
        assert!(!encoded(&h));
        h.insert(
            "content-encoding",
            http::HeaderValue::from_static("identity"),
        );
        assert!(!encoded(&h));
        h.insert("content-encoding", http::HeaderValue::from_static("gzip"));
        assert!(encoded(&h));
        h.insert(
            "content-encoding",
            http::HeaderValue::from_static("identity, br"),
        );
        assert!(encoded(&h));
    }

    #[test]
    fn the_secret_is_read_from_a_bearer_credential() {
        let v = http::HeaderValue::from_static("Bearer abc");
        assert_eq!(secret_of(&v).as_deref(), Some(&b"abc"[..]));
        assert_eq!(
            secret_of(&http::HeaderValue::from_static("Basic abc")),
            None
        );
        let mut h = HeaderMap::new();
        h.insert("x-debug", http::HeaderValue::from_static("auth=Bearer abc"));
        assert!(needles("abc").headers_carry(&h));
        assert!(!needles("abd").headers_carry(&h));
    }

    #[tokio::test]
    async fn long_numeric_references_split_headers_and_other_compressions_are_caught() {
        let padded: String = LONG[..13]
            .bytes()
            .map(|b| format!("&#0000000{b};"))
            .collect();
        let hex_padded: String = LONG[..13]
            .bytes()
            .map(|b| format!("&#x000000{b:x};"))
            .collect();
        let bare: String = LONG[..13].bytes().map(|b| format!("&#{b} ")).collect();
        let js: String = LONG[..13]
            .bytes()
            .map(|b| format!("\\u{{{b:x}}}"))
            .collect();
        for echo in [padded, hex_padded, js] {
            assert!(through(&[&echo], LONG).await.is_err(), "{echo}");
        }
        // `&#82 ` reads as R then a space: with spaces between, no twelve characters in a row.
        assert!(through(&[&bare], LONG).await.is_ok());
        let bare_run: String = LONG[..13].bytes().map(|b| format!("&#{b}")).collect();
        assert!(through(&[&bare_run], LONG).await.is_err(), "{bare_run}");
        let overlong = format!("&#{}82;", "0".repeat(80));
        assert!(through(&[&overlong], LONG).await.is_err());
        // An escape split across chunks is read whole.
        let escaped: String = LONG[..13].bytes().map(|b| format!("%{b:02x}")).collect();
        let pieces: Vec<String> = escaped
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect();
        let pieces: Vec<&str> = pieces.iter().map(String::as_str).collect();
        assert!(through(&pieces, LONG).await.is_err());
        // A secret split across headers is found in them read together.
        let mut h = HeaderMap::new();
        for (i, piece) in LONG.as_bytes().chunks(11).enumerate() {
            h.insert(
                http::HeaderName::from_bytes(format!("x-p{i}").as_bytes()).unwrap(),
                http::HeaderValue::from_bytes(piece).unwrap(),
            );
        }
        assert!(needles(LONG).headers_carry(&h));
        for magic in [
            &b"BZh91AY"[..],
            &[0xfd, b'7', b'z', b'X', b'Z', 0, 1],
            &[0x28, 0xb5, 0x2f, 0xfd, 1, 2],
        ] {
            let body = Body::from(magic.to_vec());
            assert!(
                screened(body, needles(LONG), Uuid::nil())
                    .collect()
                    .await
                    .is_err()
            );
        }
        // A large ordinary answer passes whole, in many chunks.
        let big = format!(
            "{{\"result\":[{}]}}",
            "{\"id\":\"023e105f4ecef8ad9ca31a8372d0c353\",\"name\":\"a&#38;b %20\"},".repeat(2000)
        );
        let chunks: Vec<&str> = big
            .as_bytes()
            .chunks(1000)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        assert_eq!(through(&chunks, LONG).await.unwrap(), big);
    }

    #[tokio::test]
    async fn padded_js_and_c_escapes_octal_continuations_and_invisible_characters_are_read() {
        let part = &LONG[..13];
        let js_padded: String = part.bytes().map(|b| format!("\\u{{{b:010x}}}")).collect();
        let octal: String = part.bytes().map(|b| format!("\\{b:o}")).collect();
        let c_padded: String = part.bytes().map(|b| format!("\\x0000{b:x}")).collect();
        // JS reads two digits of `\x`: `\x41` then a literal hex digit.
        let js_hex: String = part
            .bytes()
            .map(|b| format!("\\x{b:02x}"))
            .collect::<String>()
            + "f";
        let continued: String = part.chars().map(|c| format!("{c}\\\n")).collect();
        let nul: String = part.chars().map(|c| format!("{c}\0")).collect();
        let zero_width: String = part.chars().map(|c| format!("{c}\u{200b}")).collect();
        let soft: String = part.chars().map(|c| format!("{c}\u{ad}")).collect();
        for echo in [
            js_padded, octal, c_padded, js_hex, continued, nul, zero_width, soft,
        ] {
            assert!(through(&[&echo], LONG).await.is_err(), "{echo:?}");
            // Byte by byte too: the decoder waits across every split.
            let bytes: Vec<String> = echo.bytes().map(|b| (b as char).to_string()).collect();
            if echo.is_ascii() {
                let pieces: Vec<&str> = bytes.iter().map(String::as_str).collect();
                assert!(through(&pieces, LONG).await.is_err(), "split {echo:?}");
            }
        }
        let overlong = format!("\\u{{{}43}}", "0".repeat(80));
        assert!(through(&[&overlong], LONG).await.is_err());
        // A secret split between a header's name and its value, or across names.
        let mut h = HeaderMap::new();
        h.insert(
            http::HeaderName::from_bytes(format!("x-{}", &LONG[..7].to_lowercase()).as_bytes())
                .unwrap(),
            http::HeaderValue::from_str(&LONG[7..14]).unwrap(),
        );
        assert!(needles(LONG).headers_carry(&h));
        // Ordinary text with backslashes and digits passes whole.
        let ordinary = "{\"path\":\"C:\\\\temp\\\\1\",\"n\":\"\\u00e9\\n\",\"zw\":\"a\u{200B}b\"}";
        assert_eq!(through(&[ordinary], LONG).await.unwrap(), ordinary);
    }

    #[tokio::test]
    async fn escaped_invisible_characters_are_nothing_and_escapes_do_not_swallow_characters() {
        let part = &LONG[..13];
        let spaced = |sep: &str| {
            part.chars()
                .map(|c| format!("{c}{sep}"))
                .collect::<String>()
        };
        for sep in [
            "\\u0000",
            "\\u200b",
            "\\u00AD",
            "%00",
            "%E2%80%8B",
            "%c2%ad",
            "&#8203;",
            "&#x200B;",
            "\\x00",
            "\\\u{2028}",
            "\\u{FEFF}",
        ] {
            let echo = spaced(sep);
            assert!(through(&[&echo], LONG).await.is_err(), "{echo:?}");
            let bytes = echo.as_bytes();
            let (a, b) = bytes.split_at(bytes.len() / 2 + 1);
            if let (Ok(a), Ok(b)) = (std::str::from_utf8(a), std::str::from_utf8(b)) {
                assert!(through(&[a, b], LONG).await.is_err(), "split {echo:?}");
            }
        }
        // An escape naming no printable character is read as text: `\xAb` does not swallow `Ab`.
        assert!(
            through(&[&format!("\\x{}", &LONG[..12])], LONG)
                .await
                .is_err()
        );
        assert!(
            through(&[&format!("&#x{}", &LONG[..12])], LONG)
                .await
                .is_err()
        );
        // Answers ending in the start of an escape pass whole (no panic).
        for tail in [
            "\\", "&", "&#", "&#x", "%", "%4", "\\u00", "\\u{", "\\x", "\u{e2}",
        ] {
            let text = format!("{{\"a\":1}} {tail}");
            assert_eq!(through(&[&text], LONG).await.unwrap(), text);
            assert!(!needles(LONG).found_in(text.as_bytes()));
        }
        // A long hex run (a hash) after `\x` is text, not an attack.
        let hash = format!("\\x{}", "a3".repeat(40));
        assert_eq!(through(&[&hash], LONG).await.unwrap(), hash);
    }

    #[tokio::test]
    async fn an_escape_running_into_a_secret_does_not_hide_it_and_stripe_account_ids_pass() {
        // `%4A` reads `J`: decoded, only 11 characters of the piece remain; as written, all 12 are there.
        for prefix in ["%4", "\\x4", "&#x4"] {
            let echo = format!("{{\"debug\":\"{prefix}{}\"}}", &LONG[..12]);
            assert!(through(&[&echo], LONG).await.is_err(), "{echo}");
            assert!(needles(LONG).found_in(echo.as_bytes()), "{echo}");
            let (a, b) = echo.split_at(9);
            assert!(through(&[a, b], LONG).await.is_err(), "split {echo}");
        }
        // `+` is no hex digit.
        assert!(!needles("A000000000000").found_in(b"\\u+041"));
        let key = "sk_test_51H8GvbKbY4gXp7tollgateZZ9f3b1eQwRtYuIoPaSdFgHjKl";
        let account = r#"{"id":"acct_1H8GvbKbY4gXp7","object":"account","publishable_key":"pk_test_51H8GvbKbY4gXp7AbCdEf"}"#;
        assert_eq!(through(&[account], key).await.unwrap(), account);
        assert!(through(&[&key[14..30]], key).await.is_err());
    }
}
