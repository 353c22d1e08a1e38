//! Answers screened for secrets tollgate holds: its own provider credentials and every vaulted token's
//! secret ([`super::held`]), in every answer whoever's call it is, and the credential the request went out
//! with. A provider that echoes the request (a debug header, an error quoting the credential), or writes a
//! minted secret where anyone reads it back, must not hand it to an agent.
//!
//! What counts as carrying a secret: any run of [`WINDOW`] consecutive characters of it (the whole of a
//! shorter one) — a prefix, a middle, the whole — in any letter case, each character as itself or escaped
//! the ways answers escape text: JSON (`\u0053`, surrogate pairs, `\/`), JS (`\u{53}`, `%u0053`, a line
//! continuation), C and Perl (`\x53`, `\x{53}`, `\U00000053`, octal `\123`), URL (`%53`, percent-encoded
//! UTF-8) and HTML (`&#83;`, `&#x53`, named references), with any number of leading zeros where the form
//! allows them. Escapes are read left to right as a decoder would. Every text is read four ways
//! ([`Scan::readings`]): decoded and as written, each whole (invisible characters — Unicode's
//! default-ignorable ones and NUL — between characters read as nothing) and as its ASCII letters and digits
//! alone (anything between them read as nothing: a secret in groups, or with any character between its
//! own, is one run). A letter or digit drawn in another style (fullwidth, mathematical, circled,
//! superscript) is read as itself. A decoding reading reads through NUL bytes, so UTF-16 and UTF-32 text is
//! read as its ASCII. Headers are read as one text of names and values in order (and values, and names, alone), so a
//! secret split across headers is found too (the values of a repeated name are read together). The body
//! streams through with the bytes of a possible match held back, so no part of one is ever sent; a match
//! ends the body with an error (the agent sees a broken answer). A body that starts like a compressed stream
//! (gzip, zlib, bzip2, xz, zstd) is cut off, and the caller withholds one labelled compressed (tollgate asks
//! for `identity`). Not caught: a provider that transforms the secret further (base64, reversed, other
//! escape syntaxes or character sets, pieces shorter than [`WINDOW`] with letters or digits between).

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

/// The most leading zeros an escape is read with; a numeric character reference or JS escape with more
/// (`&#` and 64 zeros…) is taken as an attempt to get past the screen and cuts the answer off.
const LONGEST_ESCAPE: usize = 64;

/// The most bytes (NULs included) an escape cut short by the end of a chunk is held for before its first
/// byte is read as itself: longer than any escape read, so an unending one cannot hold the answer back.
const LONGEST_WAIT: u64 = 512;

/// The most bytes of skipped text (invisible characters; for a letters-and-digits reading, anything but a
/// letter or digit) between two characters of one run. Further apart, a run starts again, so a long stretch
/// of such text is never held back whole.
const LONGEST_GAP: u64 = 256;

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

/// The secrets one answer is screened for, prepared once: the windows of each as written (lower-cased),
/// for the readings that keep every character, and the windows of its letters and digits alone, for the
/// readings that keep only those ([`Scan::skeleton`]).
pub struct Needles {
    plain: NeedleSet,
    skeleton: NeedleSet,
}

/// Every [`WINDOW`]-long run of each secret (in one spelling), and the whole of any shorter one.
#[derive(Clone)]
struct NeedleSet {
    windows: HashSet<[u8; WINDOW]>,
    /// A bit per hash of a window: most positions are ruled out without a set lookup.
    filter: Box<[u64]>,
    /// log2 of the filter's bits.
    filter_bits: u32,
    short: Vec<Vec<u8>>,
}

/// The filter's size: at least 2^16 bits, and at least 32 bits per window (so that with every live
/// secret of a deployment in it — a thousand tokens are 29,000 windows — most positions are still ruled
/// out by one bit), at most 2^23 bits (1 MiB).
const FILTER_BITS_LEAST: u32 = 16;
const FILTER_BITS_MOST: u32 = 23;
const FILTER_BITS_PER_WINDOW: usize = 32;

/// How many leading characters of a Stripe key are public (`sk_test_51` and the account's 16): windows
/// wholly inside them are not looked for.
const STRIPE_PUBLIC_PREFIX: usize = 26;

/// `text` with every character outside ASCII read as the ASCII character it spells or is drawn as (tag
/// characters, look-alikes, accented and enclosed letters, other scripts' digits: see [`base_letter`]) and
/// the rest left out: how [`crate::vault::credential_like`] reads a string for credential shapes.
pub fn ascii_reading(text: &str) -> String {
    text.chars()
        .filter_map(|c| match c as u32 {
            0..=0x7f => Some(c),
            code @ 0xe0020..=0xe007e => char::from_u32(code - 0xe0000),
            code => base_letter(code).map(char::from),
        })
        .collect()
}

/// How many leading characters of a secret are public: for a Stripe secret or restricted key of today's
/// shape, `sk_test_51` (or `sk_live_`, `rk_…`) and the account's 16 characters, which its publishable key
/// and its `acct_1…` id repeat (windows in them would cut off every answer naming the account); for an
/// older or shorter Stripe key, `sk_test_` alone; for anything else, none. A window that begins in the
/// head is not looked for either: eleven known characters and a guess would tell, by whether an echoing
/// answer is cut off, whether the guess was right.
fn public_head(secret: &[u8]) -> usize {
    let lower = secret.to_ascii_lowercase();
    let stripe = ["sk_test_", "sk_live_", "rk_test_", "rk_live_"]
        .iter()
        .any(|p| lower.starts_with(p.as_bytes()));
    if !stripe {
        return 0;
    }
    // Today's keys: the head, then a random tail of 80 or more; at least two windows past the head.
    if lower[8..].starts_with(b"51") && lower.len() >= STRIPE_PUBLIC_PREFIX + 2 * WINDOW {
        STRIPE_PUBLIC_PREFIX
    } else {
        8
    }
}

/// The key `spelled` is the Basic form of (base64 of `key:`), if it is one of a Stripe key.
fn base64_of_key(spelled: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(spelled)
        .ok()?;
    (public_head(&decoded) > 0).then_some(decoded)
}

/// The last 8 characters of a window, one per byte: what the filter is indexed by. Shifting a character in
/// is all a [`Scan`] does per character to keep it (no chain of multiplications from one to the next).
fn gram_of(chars: &[u8]) -> u64 {
    chars
        .iter()
        .rev()
        .take(8)
        .rev()
        .fold(0u64, |g, &c| (g << 8) | u64::from(c))
}

impl NeedleSet {
    /// An empty set sized for about `windows` windows.
    fn with_room_for(windows: usize) -> NeedleSet {
        let wanted = windows
            .saturating_mul(FILTER_BITS_PER_WINDOW)
            .checked_next_power_of_two()
            .map_or(usize::BITS, usize::trailing_zeros);
        let filter_bits = wanted.clamp(FILTER_BITS_LEAST, FILTER_BITS_MOST);
        NeedleSet {
            windows: HashSet::with_capacity(windows),
            filter: vec![0u64; (1usize << filter_bits) / 64].into_boxed_slice(),
            filter_bits,
            short: Vec::new(),
        }
    }

    #[inline]
    fn filter_slot(&self, gram: u64) -> usize {
        (gram.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - self.filter_bits)) as usize
    }

    /// Adds `spelled` (lower-cased), leaving out the windows that lie wholly inside its first `public`
    /// characters.
    fn add(&mut self, spelled: &[u8], public: usize) {
        if spelled.is_empty() {
            return;
        }
        if spelled.len() < WINDOW {
            self.short.push(spelled.to_vec());
            return;
        }
        // Only windows wholly past the public part: one that begins inside it would let whoever knows the
        // public part guess the next character from whether an answer echoing its guesses is cut off.
        for w in spelled.windows(WINDOW).skip(public) {
            let mut window = [0u8; WINDOW];
            window.copy_from_slice(w);
            let slot = self.filter_slot(gram_of(w));
            self.filter[slot / 64] |= 1 << (slot % 64);
            self.windows.insert(window);
        }
    }

    fn is_empty(&self) -> bool {
        self.windows.is_empty() && self.short.is_empty()
    }

    /// Whether a window whose last 8 characters are `gram` may be one of the secrets' (the filter: most
    /// positions are ruled out here).
    #[inline]
    fn may_end_here(&self, gram: u64) -> bool {
        let slot = self.filter_slot(gram);
        self.filter[slot / 64] & (1 << (slot % 64)) != 0
    }

    /// Whether the window `scan` ends on is one of the secrets' (or ends with a short one).
    fn matches(&self, scan: &Scan) -> bool {
        if scan.seen >= WINDOW
            && !self.windows.is_empty()
            && self.may_end_here(scan.gram)
            && self.windows.contains(&scan.tail())
        {
            return true;
        }
        !self.short.is_empty() && {
            let tail = scan.tail();
            self.short
                .iter()
                .any(|s| scan.seen >= s.len() && tail.ends_with(s))
        }
    }
}

impl Needles {
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a [u8]>) -> Needles {
        let secrets: Vec<&[u8]> = secrets.into_iter().collect();
        let room = secrets
            .iter()
            .map(|s| s.len().saturating_sub(WINDOW - 1))
            .sum();
        let mut needles = Needles {
            plain: NeedleSet::with_room_for(room),
            skeleton: NeedleSet::with_room_for(room),
        };
        needles.add(secrets);
        needles
    }

    /// These needles and more secrets' (the set's filter keeps its size).
    pub fn with<'a>(&self, secrets: impl IntoIterator<Item = &'a [u8]>) -> Needles {
        let mut needles = Needles {
            plain: self.plain.clone(),
            skeleton: self.skeleton.clone(),
        };
        needles.add(secrets);
        needles
    }

    fn add<'a>(&mut self, secrets: impl IntoIterator<Item = &'a [u8]>) {
        let needles = self;
        for secret in secrets {
            let lower = secret.to_ascii_lowercase();
            // What of the secret anyone may know (a Stripe key's head, see [`public_head`]) is not
            // looked for, in the key or in its Basic form (base64 of `key:`, where every character that
            // carries a bit of the head is public too); the rest always is, at least one window of it.
            let public = match base64_of_key(secret) {
                Some(key) => public_head(&key).div_ceil(3) * 4,
                None => public_head(secret),
            }
            .min(lower.len().saturating_sub(WINDOW));
            needles.plain.add(&lower, public);
            let letters: Vec<u8> = lower
                .iter()
                .copied()
                .filter(u8::is_ascii_alphanumeric)
                .collect();
            let public_letters = lower[..public]
                .iter()
                .filter(|b| b.is_ascii_alphanumeric())
                .count();
            needles.skeleton.add(&letters, public_letters);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.skeleton.is_empty()
    }

    /// Whether `text` (complete) carries any of the secrets.
    pub fn found_in(&self, text: &[u8]) -> bool {
        Scan::readings()
            .iter_mut()
            .any(|scan| matches!(scan.feed(self, text, 0, true), Fed::Found | Fed::Overlong))
    }

    /// Whether a request's `text` carries a piece of any of the secrets, as the screen reads it. Unlike
    /// [`Needles::found_in`], an escape too long to read is not a piece: it is not a guess at a secret, and
    /// an answer echoing it is cut off anyway.
    pub fn pieces_in(&self, text: &[u8]) -> bool {
        Scan::readings()
            .iter_mut()
            .any(|scan| matches!(scan.feed(self, text, 0, true), Fed::Found))
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
    /// The last 8 characters decoded, lower-cased, one per byte ([`gram_of`]).
    gram: u64,
    /// Where (offset in the whole text) the last character kept ended.
    kept_to: u64,
    /// How many characters were decoded.
    seen: usize,
    /// Where (offset in the whole text) each of the last [`WINDOW`] decoded characters started, in a ring
    /// like `ring`.
    starts: [u64; WINDOW],
    /// Reads every byte as itself (no escapes): the text as a reader that decodes nothing sees it. An escape
    /// that runs into a secret's first character (`%4` before `Ab3…` reads `J`) hides it from the decoding
    /// scan only; this one sees it.
    literal: bool,
    /// Keeps only letters and digits: anything else between them (spaces, dashes, any character that is
    /// not an ASCII letter or digit, escaped or not, in any encoding) is read as nothing, so a secret broken
    /// into groups or interleaved with invisible or foreign characters is still one run.
    skeleton: bool,
}

impl Scan {
    /// The four readings every text gets: decoded and as written, each whole and as its letters and digits.
    fn readings() -> [Scan; 4] {
        [
            Scan::default(),
            Scan {
                literal: true,
                ..Scan::default()
            },
            Scan {
                skeleton: true,
                ..Scan::default()
            },
            Scan {
                literal: true,
                skeleton: true,
                ..Scan::default()
            },
        ]
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
        // A decoding reading reads through NUL bytes (UTF-16 and UTF-32 spell ASCII with them), escapes
        // included: it decodes the text without them, each character keeping where it was.
        if !self.literal && text.contains(&0) {
            let mut compact = Vec::with_capacity(text.len());
            let mut origin = Vec::with_capacity(text.len() + 1);
            for (i, &b) in text.iter().enumerate() {
                if b != 0 {
                    compact.push(b);
                    origin.push(base + i as u64);
                }
            }
            origin.push(base + text.len() as u64);
            return self.feed_at(needles, &compact, |i| origin[i], at_end);
        }
        self.feed_at(needles, text, |i| base + i as u64, at_end)
    }

    /// [`Scan::feed`] over `text`, whose byte `i` is at offset `at(i)` of the whole (`at(text.len())` is
    /// where it ends).
    fn feed_at(
        &mut self,
        needles: &Needles,
        text: &[u8],
        at: impl Fn(usize) -> u64,
        at_end: bool,
    ) -> Fed {
        let set = if self.skeleton {
            &needles.skeleton
        } else {
            &needles.plain
        };
        let (has_windows, has_short) = (!set.windows.is_empty(), !set.short.is_empty());
        // Kept in locals while the loop runs (not in `self`, which would make each character wait on the
        // store of the last).
        let mut seen = self.seen;
        let mut gram = self.gram;
        let end = at(text.len());
        let mut i = 0;
        while i < text.len() {
            let b = text[i];
            // Most bytes start no escape and no multi-byte character: read as themselves, without `unit`.
            let plain = !matches!(b, 0 | b'\\' | b'%' | b'&' | 0x80..=0xff);
            let step = if self.literal || plain {
                Unit::Char(b, 1)
            } else {
                match unit(&text[i..], at_end, self.skeleton) {
                    // No escape is this long, whatever NULs sit in it: the byte is read as itself rather
                    // than held (and read again) while more arrives.
                    Unit::NeedMore if end - at(i) > LONGEST_WAIT => Unit::Char(text[i], 1),
                    step => step,
                }
            };
            let (c, width) = match step {
                Unit::Char(c, width) if !self.skeleton || c.is_ascii_alphanumeric() => (c, width),
                Unit::Char(_, width) | Unit::Skip(width) => {
                    i += width;
                    continue;
                }
                Unit::NeedMore => break,
                Unit::Overlong => return Fed::Overlong,
            };
            let c = c.to_ascii_lowercase();
            // Characters further apart than LONGEST_GAP bytes of skipped text are not one run.
            if seen > 0 && at(i) - self.kept_to > LONGEST_GAP {
                seen = 0;
                gram = 0;
            }
            self.kept_to = at(i + width);
            let slot = seen % WINDOW;
            gram = (gram << 8) | u64::from(c);
            self.ring[slot] = c;
            self.starts[slot] = at(i);
            seen += 1;
            if (has_windows && seen >= WINDOW && set.may_end_here(gram)) || has_short {
                self.seen = seen;
                self.gram = gram;
                if set.matches(self) {
                    return Fed::Found;
                }
            }
            i += width;
        }
        self.seen = seen;
        self.gram = gram;
        // The oldest of the last WINDOW - 1 characters may begin a match; everything before it may not. So
        // may whatever was not decoded yet.
        let decoded_to = at(i);
        let oldest_open = match self.seen {
            0 => decoded_to,
            // The next character starts a new run: nothing kept so far can be part of a match.
            _ if decoded_to - self.kept_to > LONGEST_GAP => decoded_to,
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

/// Whether a code point is one a reader shows as nothing: Unicode's default-ignorable code points (soft
/// hyphen, combining grapheme joiner, Hangul fillers, Mongolian and variation selectors, zero-width
/// spaces, joiners and marks, bidirectional controls, word joiner and invisible operators, byte-order
/// mark, tags…) and NUL.
fn invisible(code: u32) -> bool {
    matches!(
        code,
        0 | 0xad
            | 0x34f
            | 0x61c
            | 0x115f..=0x1160
            | 0x17b4..=0x17b5
            | 0x180b..=0x180f
            | 0x200b..=0x200f
            | 0x202a..=0x202e
            | 0x2060..=0x206f
            | 0x3164
            | 0xfe00..=0xfe0f
            | 0xfeff
            | 0xffa0
            | 0xfff0..=0xfff8
            | 0x1bca0..=0x1bca3
            | 0x1d173..=0x1d17a
            | 0xe0000..=0xe0fff
    )
}

/// What a decoded code point is to the screen: a printable ASCII character, nothing (an invisible
/// character; for a [`Scan::skeleton`] reading, any character but an ASCII letter or digit), or `None` for
/// anything else — the escape is then read as plain text instead, so that it cannot swallow characters of a
/// secret (`\xcf` before `-test…` reads as `\`, `x`, `c`, `f`).
fn decoded(code: u32, width: usize, skeleton: bool) -> Option<Unit> {
    match code {
        // Tag characters spell ASCII one for one (`U+E0041` is an invisible `A`): read as what they spell.
        0xe0020..=0xe007e => decoded(code - 0xe0000, width, skeleton),
        c if invisible(c) => Some(Unit::Skip(width)),
        0x20..=0x7e if !skeleton || (code as u8).is_ascii_alphanumeric() => {
            Some(Unit::Char(code as u8, width))
        }
        c if c >= 0x80 && base_letter(c).is_some() => base_letter(c).map(|a| Unit::Char(a, width)),
        0x01..=0x10ffff if skeleton && !(0xd800..=0xdfff).contains(&code) => {
            Some(Unit::Skip(width))
        }
        _ => None,
    }
}

/// The ASCII letter or digit a character above ASCII is drawn as, if any: its look-alike (below), else
/// what Unicode's compatibility decomposition leaves of it once accents, marks and brackets are dropped
/// (`ñ`, `Ź`, the Kelvin sign, `⒜`, squared and modifier letters), else the letter a small capital or a
/// barred or stroked letter is drawn from. A character that decomposes to more than one letter or digit
/// (`㎏`, `ǆ`) is none: the screen reads one character as one.
fn base_letter(code: u32) -> Option<u8> {
    if let Some(a) = lookalike(code) {
        return Some(a);
    }
    let c = char::from_u32(code)?;
    let mut base = None;
    let mut letters = 0;
    unicode_normalization::char::decompose_compatible(c, |d| {
        if d.is_ascii_alphanumeric() {
            base = Some(d as u8);
            letters += 1;
        }
    });
    match (base, letters) {
        (Some(a), 1) => Some(a),
        (_, 0) => drawn_from(code),
        _ => None,
    }
}

/// The first code point of each run of ten decimal digits (Unicode's `Nd`) outside ASCII that has no
/// compatibility decomposition: Arabic-Indic, Devanagari and the other Indic scripts, Thai, Lao, Tibetan,
/// Myanmar, Khmer, Mongolian and the rest; a digit of any of them reads as its value.
const DIGIT_ZEROS: &[u32] = &[
    0x0660, 0x06f0, 0x07c0, 0x0966, 0x09e6, 0x0a66, 0x0ae6, 0x0b66, 0x0be6, 0x0c66, 0x0ce6, 0x0d66,
    0x0de6, 0x0e50, 0x0ed0, 0x0f20, 0x1040, 0x1090, 0x17e0, 0x1810, 0x1946, 0x19d0, 0x1a80, 0x1a90,
    0x1b50, 0x1bb0, 0x1c40, 0x1c50, 0xa620, 0xa8d0, 0xa900, 0xa9d0, 0xa9f0, 0xaa50, 0xabf0,
    0x104a0, 0x10d30, 0x11066, 0x110f0, 0x11136, 0x111d0, 0x112f0, 0x11450, 0x114d0, 0x11650,
    0x116c0, 0x11730, 0x118e0, 0x11950, 0x11c50, 0x11d50, 0x11da0, 0x16a60, 0x16ac0, 0x16b50,
    0x1e140, 0x1e2f0, 0x1e4f0, 0x1e950, 0x1fbf0,
];

#[cfg(test)]
#[test]
fn digit_zeros_are_sorted() {
    assert!(DIGIT_ZEROS.windows(2).all(|w| w[0] + 10 <= w[1]));
}

/// The Latin letter that small capitals and letters with a hook, bar, stroke or tail (which Unicode does
/// not decompose; [`super::latin`]) are drawn from, and the digit any decimal digit or enclosed digit
/// stands for.
fn drawn_from(code: u32) -> Option<u8> {
    if let Ok(i) = super::latin::LATIN_FORMS.binary_search_by_key(&code, |(c, _)| *c) {
        return Some(super::latin::LATIN_FORMS[i].1);
    }
    // The run whose zero is the last at or below `code` (the table is sorted).
    let runs_below = DIGIT_ZEROS.partition_point(|z| *z <= code);
    if let Some(zero) = runs_below.checked_sub(1).map(|i| DIGIT_ZEROS[i])
        && code - zero < 10
    {
        return Some(b'0' + (code - zero) as u8);
    }
    Some(match code {
        // Dingbat and double circled digits, one to nine, and their zeros.
        0x2776..=0x277e => b'1' + (code - 0x2776) as u8,
        0x2780..=0x2788 => b'1' + (code - 0x2780) as u8,
        0x278a..=0x2792 => b'1' + (code - 0x278a) as u8,
        0x24f5..=0x24fd => b'1' + (code - 0x24f5) as u8,
        0x24ff | 0x1f10b | 0x1f10c => b'0',
        0x1d00 => b'a',
        0x0299 | 0x1d03 | 0x0180 | 0x0243 => b'b',
        0x1d04 => b'c',
        0x1d05 | 0x0110 | 0x0111 | 0x00d0 | 0x0189 => b'd',
        0x1d07 => b'e',
        0xa730 => b'f',
        0x0262 | 0x01e4 | 0x01e5 => b'g',
        0x029c | 0x0126 | 0x0127 => b'h',
        0x026a | 0x0268 | 0x0197 => b'i',
        0x1d0a => b'j',
        0x1d0b => b'k',
        0x029f | 0x1d0c | 0x0141 | 0x0142 | 0x019a => b'l',
        0x1d0d => b'm',
        0x0274 => b'n',
        0x1d0f | 0x00d8 | 0x00f8 | 0x019f => b'o',
        0x1d18 => b'p',
        0xa7af => b'q',
        0x0280 => b'r',
        0xa731 => b's',
        0x1d1b | 0x0166 | 0x0167 => b't',
        0x1d1c | 0x0244 => b'u',
        0x1d20 => b'v',
        0x1d21 => b'w',
        0x028f | 0x024e | 0x024f => b'y',
        0x1d22 | 0x01b5 | 0x01b6 => b'z',
        _ => return None,
    })
}

/// The ASCII letter or digit a character is drawn as, for the characters that are that letter or digit in
/// another style: fullwidth forms, mathematical alphanumerics (bold, italic, script, fraktur, double-struck,
/// sans-serif, monospace) and the letterlike symbols that fill their gaps, circled letters and digits,
/// superscript and subscript digits, and the Cyrillic and Greek letters that look like Latin ones (the
/// match ignores case, so a look-alike of either case reads as the letter).
fn lookalike(code: u32) -> Option<u8> {
    let letter = |i: u32| {
        let i = i as u8;
        if i < 26 { b'A' + i } else { b'a' + (i - 26) }
    };
    let digit = |i: u32| b'0' + i as u8;
    Some(match code {
        0xff10..=0xff19 => digit(code - 0xff10),
        0xff21..=0xff3a => b'A' + (code - 0xff21) as u8,
        0xff41..=0xff5a => b'a' + (code - 0xff41) as u8,
        0x1d400..=0x1d6a3 => letter((code - 0x1d400) % 52),
        0x1d7ce..=0x1d7ff => digit((code - 0x1d7ce) % 10),
        // Negative circled and negative squared capitals, regional indicator symbols.
        0x1f150..=0x1f169 => b'A' + (code - 0x1f150) as u8,
        0x1f170..=0x1f189 => b'A' + (code - 0x1f170) as u8,
        0x1f1e6..=0x1f1ff => b'A' + (code - 0x1f1e6) as u8,
        0x24b6..=0x24cf => b'A' + (code - 0x24b6) as u8,
        0x24d0..=0x24e9 => b'a' + (code - 0x24d0) as u8,
        0x2460..=0x2468 => digit(code - 0x2460 + 1),
        0x24ea | 0x2070 | 0x2080 => b'0',
        0xb9 => b'1',
        0xb2 => b'2',
        0xb3 => b'3',
        0x2074..=0x2079 => digit(code - 0x2074 + 4),
        0x2081..=0x2089 => digit(code - 0x2081 + 1),
        0x2102 | 0x212d => b'C',
        0x210b..=0x210d => b'H',
        0x2110 | 0x2111 => b'I',
        0x2112 => b'L',
        0x2115 => b'N',
        0x2119 => b'P',
        0x211a => b'Q',
        0x211b..=0x211d => b'R',
        0x2124 | 0x2128 => b'Z',
        0x212c => b'B',
        0x2130 => b'E',
        0x2131 => b'F',
        0x2133 => b'M',
        0x210a => b'g',
        0x210e => b'h',
        0x212f => b'e',
        0x2134 => b'o',
        // Cyrillic and Greek letters drawn as Latin ones (the common confusables).
        0x0410 | 0x0430 | 0x0391 | 0x03b1 => b'a',
        0x0412 | 0x0392 | 0x0432 | 0x03b2 => b'b',
        0x0421 | 0x0441 | 0x03f2 | 0x03f9 => b'c',
        0x0501 => b'd',
        0x0415 | 0x0435 | 0x0395 | 0x03b5 => b'e',
        0x0261 => b'g',
        0x041d | 0x04bb | 0x0397 | 0x043d => b'h',
        0x0406 | 0x0456 | 0x0399 | 0x03b9 | 0x0131 | 0x04c0 => b'i',
        0x0408 | 0x0458 | 0x03f3 => b'j',
        0x041a | 0x043a | 0x039a | 0x03ba => b'k',
        0x04cf => b'l',
        0x041c | 0x043c | 0x039c => b'm',
        0x039d | 0x03b7 => b'n',
        0x041e | 0x043e | 0x039f | 0x03bf | 0x0585 | 0x03c3 => b'o',
        0x0420 | 0x0440 | 0x03a1 | 0x03c1 => b'p',
        0x051a | 0x051b => b'q',
        0x0433 => b'r',
        0x0405 | 0x0455 => b's',
        0x0422 | 0x0442 | 0x03a4 | 0x03c4 => b't',
        0x03c5 | 0x057d => b'u',
        0x03bd | 0x0474 | 0x0475 => b'v',
        0x051c | 0x051d | 0x03c9 => b'w',
        0x0425 | 0x0445 | 0x03a7 | 0x03c7 => b'x',
        0x0423 | 0x0443 | 0x03a5 | 0x04ae | 0x04af => b'y',
        0x0396 => b'z',
        0x0417 | 0x0437 => b'3',
        0x0431 => b'6',
        _ => return None,
    })
}

/// The code point a UTF-8 sequence spells and its length in bytes, reading its bytes with `byte(k)` (the
/// `k`th byte, if the text has it): `Err(true)` when the text ends inside it, `Err(false)` when it is not
/// UTF-8.
fn utf8_char(byte: impl Fn(usize) -> Option<u8>) -> Result<(u32, usize), bool> {
    let lead = byte(0).ok_or(true)?;
    let (len, mut code) = match lead {
        0xc2..=0xdf => (2, u32::from(lead & 0x1f)),
        0xe0..=0xef => (3, u32::from(lead & 0x0f)),
        0xf0..=0xf4 => (4, u32::from(lead & 0x07)),
        _ => return Err(false),
    };
    for k in 1..len {
        let b = byte(k).ok_or(true)?;
        if b & 0xc0 != 0x80 {
            return Err(false);
        }
        code = (code << 6) | u32::from(b & 0x3f);
    }
    let shortest = match len {
        2 => code >= 0x80,
        3 => code >= 0x800 && !(0xd800..=0xdfff).contains(&code),
        _ => (0x10000..=0x10ffff).contains(&code),
    };
    if shortest {
        Ok((code, len))
    } else {
        Err(false)
    }
}

/// HTML's named references to invisible characters (names are case-sensitive): read as nothing.
const INVISIBLE_NAMES: &[&[u8]] = &[
    b"shy",
    b"ZeroWidthSpace",
    b"NegativeVeryThinSpace",
    b"NegativeThinSpace",
    b"NegativeMediumSpace",
    b"NegativeThickSpace",
    b"zwj",
    b"zwnj",
    b"lrm",
    b"rlm",
    b"NoBreak",
    b"it",
    b"InvisibleTimes",
    b"ic",
    b"InvisibleComma",
    b"af",
    b"ApplyFunction",
];

/// HTML's named references to punctuation, spaces and symbols an answer commonly carries: read as nothing
/// by a letters-and-digits reading (no named reference spells an ASCII letter or digit). An unknown name is
/// read as the text it is, so that `&Ab3d;` cannot hide the letters in it.
const PUNCTUATION_NAMES: &[&[u8]] = &[
    b"amp", b"lt", b"gt", b"quot", b"apos", b"nbsp", b"ensp", b"emsp", b"thinsp", b"hairsp",
    b"middot", b"ndash", b"mdash", b"hellip", b"bull", b"copy", b"reg", b"trade", b"laquo",
    b"raquo", b"lsquo", b"rsquo", b"ldquo", b"rdquo", b"sbquo", b"bdquo", b"deg", b"plusmn",
    b"times", b"divide", b"para", b"sect", b"euro", b"pound", b"yen", b"cent", b"iexcl", b"iquest",
    b"brvbar", b"uml", b"macr", b"acute", b"cedil", b"not", b"dagger", b"Dagger", b"permil",
    b"lsaquo", b"rsaquo", b"prime", b"Prime", b"oline", b"frasl", b"larr", b"rarr", b"uarr",
    b"darr", b"harr", b"colon", b"comma", b"period", b"excl", b"num", b"dollar", b"percnt",
    b"lpar", b"rpar", b"ast", b"plus", b"sol", b"semi", b"equals", b"quest", b"commat", b"lsqb",
    b"lbrack", b"bsol", b"rsqb", b"rbrack", b"Hat", b"lowbar", b"grave", b"lcub", b"lbrace",
    b"verbar", b"vert", b"rcub", b"rbrace", b"tilde", b"Tab", b"NewLine", b"hyphen", b"dash",
];

/// The longest HTML reference name read.
const LONGEST_NAME: usize = 32;

/// A run of digits in `radix` at `text[from..]`: its value when it names one character (up to
/// [`LONGEST_ESCAPE`] leading zeros, as every reader of these escapes allows them, then at most 8 digits)
/// and where it ends; `NeedMore` when the text ends inside it, `Overlong` when the zeros reach the limit
/// (padding meant to get past the screen). A longer run names no character.
fn digit_run(
    text: &[u8],
    from: usize,
    radix: u32,
    at_end: bool,
) -> Result<(Option<u32>, usize), Unit> {
    let run: &[u8] = text.get(from..).unwrap_or_default();
    let is_digit = |b: &&u8| char::from(**b).is_digit(radix);
    let zeros = run
        .iter()
        .take(LONGEST_ESCAPE)
        .take_while(|&&b| b == b'0')
        .count();
    if zeros == LONGEST_ESCAPE {
        return Err(Unit::Overlong);
    }
    let significant = run[zeros..].iter().take(9).take_while(is_digit).count();
    let end = from + zeros + significant;
    if end == text.len() && !at_end {
        return Err(Unit::NeedMore);
    }
    let digits = &run[zeros..zeros + significant];
    let value = if zeros + significant == 0 || significant > 8 {
        None
    } else if significant == 0 {
        Some(0)
    } else {
        std::str::from_utf8(digits)
            .ok()
            .and_then(|d| u32::from_str_radix(d, radix).ok())
    };
    Ok((value, end))
}

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

/// The character spelled at the start of `text` (see the module docs for the escapes read); `skeleton` for
/// a [`Scan::skeleton`] reading, where every character but an ASCII letter or digit is nothing.
fn unit(text: &[u8], at_end: bool, skeleton: bool) -> Unit {
    let literal = Unit::Char(text[0], 1);
    let run = |from: usize, radix: u32| digit_run(text, from, radix, at_end);
    // An escape spells its character, nothing, or (anything else) is read as plain text.
    let spelled =
        |code: u32, width: usize| decoded(code, width, skeleton).unwrap_or(Unit::Char(text[0], 1));
    match text[0] {
        0 => Unit::Skip(1),
        0x80..=0xff => match utf8_char(|k| text.get(k).copied()) {
            Ok((code, n)) => decoded(code, n, skeleton)
                .filter(|u| {
                    matches!(u, Unit::Skip(_))
                        || base_letter(code).is_some()
                        || (0xe0020..=0xe007e).contains(&code)
                })
                .unwrap_or(literal),
            Err(true) if !at_end => Unit::NeedMore,
            Err(_) => literal,
        },
        b'\\' => {
            let Some(&next) = text.get(1) else {
                return if at_end { literal } else { Unit::NeedMore };
            };
            match next {
                // JS `\u{…}`, Perl `\x{…}`: any number of leading zeros.
                b'u' | b'x' if text.get(2) == Some(&b'{') => match run(3, 16) {
                    Err(stop) => stop,
                    Ok((Some(c), end)) if text.get(end) == Some(&b'}') => spelled(c, end + 1),
                    Ok((_, end)) if end == text.len() && !at_end => Unit::NeedMore,
                    Ok(_) => literal,
                },
                b'u' => {
                    if text.len() < 6 && !at_end {
                        return Unit::NeedMore;
                    }
                    match text.get(2..6).and_then(hex_value) {
                        // A UTF-16 surrogate pair, as JSON spells characters beyond the first plane.
                        Some(high @ 0xd800..=0xdbff) => {
                            if text.len() < 12 && !at_end {
                                return Unit::NeedMore;
                            }
                            let low = text
                                .get(6..8)
                                .filter(|p| *p == b"\\u")
                                .and_then(|_| text.get(8..12))
                                .and_then(hex_value)
                                .filter(|low| (0xdc00..=0xdfff).contains(low));
                            match low {
                                Some(low) => {
                                    spelled(0x10000 + ((high - 0xd800) << 10) + (low - 0xdc00), 12)
                                }
                                None => literal,
                            }
                        }
                        Some(c) => spelled(c, 6),
                        None => literal,
                    }
                }
                b'U' => {
                    if text.len() < 10 && !at_end {
                        return Unit::NeedMore;
                    }
                    text.get(2..10)
                        .and_then(hex_value)
                        .map_or(literal, |c| spelled(c, 10))
                }
                // `\x`: JS reads two digits, C all that follow; the reading that names a character wins.
                // (A run of 64 zeros is read as JS reads it: `\x00`, then zeros; no C reader takes more.)
                b'x' => match run(2, 16) {
                    Err(Unit::Overlong) => spelled(0, 4),
                    Err(stop) => stop,
                    Ok((Some(c), end)) if decoded(c, end, skeleton).is_some() => spelled(c, end),
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
                c @ (b'/' | b'"' | b'\\' | b'\'') => spelled(u32::from(c), 2),
                _ => literal,
            }
        }
        b'%' => {
            if text.len() < 3 && !at_end {
                return Unit::NeedMore;
            }
            // `%uXXXX`, as JavaScript's `escape` writes a character beyond Latin-1.
            if matches!(text.get(1), Some(b'u' | b'U')) {
                if text.len() < 6 && !at_end {
                    return Unit::NeedMore;
                }
                return text
                    .get(2..6)
                    .and_then(hex_value)
                    .map_or(literal, |c| spelled(c, 6));
            }
            match text.get(1..3).and_then(hex_value) {
                // Percent-encoded UTF-8 of one character: `%E2%80%8B`.
                Some(lead @ 0x80..=0xff) => {
                    let byte = |k: usize| {
                        let at = 3 * k;
                        if k == 0 {
                            return Some(lead as u8);
                        }
                        match text.get(at) {
                            Some(b'%') => text
                                .get(at + 1..at + 3)
                                .and_then(hex_value)
                                .map(|b| b as u8),
                            // Not a continuation: the sequence is not UTF-8 (`Err(false)` below).
                            Some(_) => Some(0),
                            None => None,
                        }
                    };
                    match utf8_char(byte) {
                        Ok((code, n)) => spelled(code, 3 * n),
                        Err(true) if !at_end => Unit::NeedMore,
                        Err(_) => literal,
                    }
                }
                Some(c) => spelled(c, 3),
                None => literal,
            }
        }
        b'&' => {
            let (Some(&second), Some(&kind)) = (text.get(1), text.get(2)) else {
                let waits = !at_end
                    && text
                        .get(1)
                        .is_none_or(|&b| b == b'#' || b.is_ascii_alphabetic());
                return if waits { Unit::NeedMore } else { literal };
            };
            if second.is_ascii_alphabetic() {
                return named_reference(text, at_end, skeleton).unwrap_or(literal);
            }
            if second != b'#' {
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

/// An HTML named reference at the start of `text` (`&shy;`): nothing when it names an invisible character
/// (`&shy` also without its `;`, as HTML reads it) or, for a skeleton reading, a common punctuation or
/// symbol ([`PUNCTUATION_NAMES`]); `None` when it is read as plain text.
fn named_reference(text: &[u8], at_end: bool, skeleton: bool) -> Option<Unit> {
    let name_len = text[1..]
        .iter()
        .take(LONGEST_NAME + 1)
        .take_while(|b| b.is_ascii_alphanumeric())
        .count();
    if name_len > LONGEST_NAME {
        return None;
    }
    let name = &text[1..1 + name_len];
    let end = 1 + name_len;
    if end == text.len() && !at_end {
        return Some(Unit::NeedMore);
    }
    if text.get(end) == Some(&b';') {
        let nothing =
            INVISIBLE_NAMES.contains(&name) || (skeleton && PUNCTUATION_NAMES.contains(&name));
        return nothing.then_some(Unit::Skip(end + 1));
    }
    // Without `;`: HTML still reads the legacy `&shy` at the start of a longer run of letters.
    name.starts_with(b"shy").then_some(Unit::Skip(4))
}

/// Where a screened body's needles come from, asked again while it streams: a secret held after the answer
/// began is looked for in the rest of it.
pub trait NeedleSource: Send + Sync + 'static {
    /// A number that changes whenever [`NeedleSource::needles`] would answer differently.
    fn generation(&self) -> u64;
    fn needles(&self) -> Arc<Needles>;
    /// Told when the answer was cut off for carrying a secret (see [`crate::vault::held`]'s trips).
    fn found(&self) {}
    /// Whether the answer's agent is refused answers now (it tripped the screen too often, perhaps with
    /// other answers in flight at once): the rest of this answer is cut off, whatever it carries, so a cut
    /// tells that agent nothing.
    fn closed(&self) -> bool {
        false
    }
}

/// Needles that never change.
struct Fixed(Arc<Needles>);

impl NeedleSource for Fixed {
    fn generation(&self) -> u64 {
        0
    }

    fn needles(&self) -> Arc<Needles> {
        Arc::clone(&self.0)
    }
}

/// `body`, ended with an error where it would carry one of `needles` (or where it starts compressed).
/// Trailers are dropped. `decision_id` names the request in the log when an answer is cut off.
pub fn screened(body: Body, needles: Arc<Needles>, decision_id: Uuid) -> Body {
    screened_from(body, Arc::new(Fixed(needles)), decision_id)
}

/// [`screened`] with needles asked of `source` again whenever its generation moves.
pub fn screened_from(body: Body, source: Arc<dyn NeedleSource>, decision_id: Uuid) -> Body {
    let generation = source.generation();
    let needles = source.needles();
    Body::new(Screened {
        inner: body,
        held: BytesMut::new(),
        held_from: 0,
        readings: Scan::readings().map(|scan| (scan, 0)),
        needles,
        source,
        generation,
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
    /// Each reading of the body ([`Scan::readings`]) and how far (offset in the body) it has read.
    readings: [(Scan, u64); 4],
    needles: Arc<Needles>,
    source: Arc<dyn NeedleSource>,
    /// The source's generation `needles` came from.
    generation: u64,
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
        // A secret held since the answer began (a token minted meanwhile) is looked for from here on.
        let generation = self.source.generation();
        if generation != self.generation {
            self.generation = generation;
            self.needles = self.source.needles();
        }
        // The bytes sent are those no reading may still need.
        let mut safe = u64::MAX;
        for (scan, scanned) in &mut self.readings {
            let from = (*scanned - self.held_from) as usize;
            match scan.feed(&self.needles, &self.held[from..], *scanned, at_end) {
                Fed::Clear {
                    safe: open,
                    decoded_to,
                } => {
                    // The reading resumes at the first byte it could not decode yet.
                    *scanned = decoded_to;
                    safe = safe.min(open);
                }
                Fed::Found => {
                    self.source.found();
                    return Some(self.cut_off("carries a secret tollgate holds"));
                }
                Fed::Overlong => {
                    return Some(self.cut_off("carries an overlong character escape"));
                }
            }
        }
        let send = if at_end {
            self.held.len()
        } else {
            (safe - self.held_from) as usize
        };
        if send == 0 {
            return None;
        }
        if self.source.closed() {
            return Some(self.cut_off("goes to an agent refused for answers that carried secrets"));
        }
        self.held_from += send as u64;
        Some(Poll::Ready(Some(Ok(Frame::data(
            self.held.split_to(send).freeze(),
        )))))
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
        let eleven = format!("[{}] and [{}]", &LONG[..11], &LONG[11..22]);
        assert_eq!(through(&[&eleven], LONG).await.unwrap(), eleven);
        // Pieces with only punctuation, spaces or other characters between them are one run.
        let grouped = format!("[{}] [{}]", &LONG[..11], &LONG[11..22]);
        assert!(through(&[&grouped], LONG).await.is_err());
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
        // `&#82 ` reads as R then a space: spaces between characters do not hide them.
        assert!(through(&[&bare], LONG).await.is_err());
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
        assert!(through(&[&key[26..38]], key).await.is_err());
        // A window that begins in the public part is not looked for: eleven characters anyone knows and
        // one guessed would tell, by whether the answer is cut off, whether the guess was right (attack
        // round 15). So for the Basic form, base64 of `key:`, and every character carrying a public bit.
        assert_eq!(through(&[&key[15..27]], key).await.unwrap(), &key[15..27]);
        assert_eq!(through(&[&key[..30]], key).await.unwrap(), &key[..30]);
        use base64::Engine as _;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{key}:"));
        assert_eq!(
            through(&[&basic[..47]], &basic).await.unwrap(),
            &basic[..47]
        );
        assert!(through(&[&basic[36..48]], &basic).await.is_err());
        assert!(through(&[&basic], &basic).await.is_err());
        // An older, shorter Stripe key has no account part: only `sk_test_` is public, and the rest is
        // looked for, in both forms (attack round 16: such a key was not screened at all).
        let old = "sk_test_4eC39HqLyjWDarjtT1zdp7dc";
        assert!(through(&[old], old).await.is_err());
        assert!(through(&[&old[8..20]], old).await.is_err());
        assert_eq!(through(&[&old[..19]], old).await.unwrap(), &old[..19]);
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{old}:"));
        assert!(through(&[&basic], &basic).await.is_err());
        // However short a secret, at least one window of it is looked for.
        let short = "sk_live_51Abc7Xyz9Qw";
        assert!(through(&[short], short).await.is_err());
    }

    /// A body's bytes, split in two at `at` (as a provider's chunks may be), through the screen.
    async fn bytes_through(body: &[u8], at: usize, secret: &str) -> Result<Vec<u8>, String> {
        let (a, b) = body.split_at(at.min(body.len()));
        let chunks = Chunks([Bytes::copy_from_slice(a), Bytes::copy_from_slice(b)].into());
        match screened(Body::new(chunks), needles(secret), Uuid::nil())
            .collect()
            .await
        {
            Ok(c) => Ok(c.to_bytes().to_vec()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn utf16le(text: &str) -> Vec<u8> {
        text.encode_utf16().flat_map(u16::to_le_bytes).collect()
    }

    fn utf16be(text: &str) -> Vec<u8> {
        text.encode_utf16().flat_map(u16::to_be_bytes).collect()
    }

    fn utf32(text: &str) -> Vec<u8> {
        text.chars()
            .flat_map(|c| (c as u32).to_le_bytes())
            .collect()
    }

    fn joined(text: &str, between: &str) -> String {
        text.chars()
            .map(String::from)
            .collect::<Vec<_>>()
            .join(between)
    }

    #[tokio::test]
    async fn wide_encodings_any_invisible_character_and_grouping_do_not_hide_a_secret() {
        let json_escaped: String = LONG
            .chars()
            .map(|c| format!("\\u{:04x}", c as u32))
            .collect();
        let percent: String = LONG.bytes().map(|b| format!("%{b:02X}")).collect();
        let mut bodies: Vec<(Vec<u8>, &str)> = vec![
            (
                utf16le(&format!("{{\"e\":\"{json_escaped}\"}}")),
                "utf-16le, JSON escapes",
            ),
            (
                utf16le(&joined(LONG, "\u{200b}")),
                "utf-16le, zero-width spaces",
            ),
            (utf16be(&joined(LONG, "\u{ad}")), "utf-16be, soft hyphens"),
            (utf16le(&percent), "utf-16le, URL escapes"),
            (
                utf32(&joined(LONG, "\u{200b}")),
                "utf-32, zero-width spaces",
            ),
            (joined(LONG, "&shy;").into_bytes(), "&shy;"),
            (joined(LONG, "&shy").into_bytes(), "&shy without ;"),
            (
                joined(LONG, "&ZeroWidthSpace;").into_bytes(),
                "&ZeroWidthSpace;",
            ),
            (joined(LONG, "&NoBreak;").into_bytes(), "&NoBreak;"),
            (
                joined(LONG, "&middot;").into_bytes(),
                "another named reference",
            ),
            (joined(LONG, "\\u200e").into_bytes(), "JSON \\u200e"),
            (
                joined(LONG, "\\udb40\\udc20").into_bytes(),
                "a tag character as a surrogate pair",
            ),
            (joined(LONG, "%E2%80%8E").into_bytes(), "URL-escaped LRM"),
            (joined(LONG, "%u200B").into_bytes(), "%u escape"),
            (
                LONG.chars()
                    .map(|c| format!("%u{:04X}", c as u32))
                    .collect::<String>()
                    .into_bytes(),
                "%u letters",
            ),
            (
                LONG.chars()
                    .map(|c| format!("\\x{{{:x}}}", c as u32))
                    .collect::<String>()
                    .into_bytes(),
                "Perl \\x{}",
            ),
            (
                LONG.as_bytes()
                    .chunks(4)
                    .map(|c| std::str::from_utf8(c).unwrap())
                    .collect::<Vec<_>>()
                    .join("-")
                    .into_bytes(),
                "groups of four",
            ),
            (
                LONG.as_bytes()
                    .chunks(5)
                    .map(|c| std::str::from_utf8(c).unwrap())
                    .collect::<Vec<_>>()
                    .join(" \u{b7} ")
                    .into_bytes(),
                "middle dots",
            ),
        ];
        for invisible in [
            '\u{200e}',
            '\u{200f}',
            '\u{2061}',
            '\u{34f}',
            '\u{fe0f}',
            '\u{e0020}',
            '\u{180e}',
        ] {
            bodies.push((
                joined(LONG, &invisible.to_string()).into_bytes(),
                "raw invisible",
            ));
        }
        // The same letters and digits drawn in other styles (attack round 12).
        let styled = |upper: u32, lower: u32, digits: u32| -> String {
            LONG.chars()
                .map(|c| {
                    let code = match c {
                        'A'..='Z' => upper + (c as u32 - 'A' as u32),
                        'a'..='z' => lower + (c as u32 - 'a' as u32),
                        _ => digits + (c as u32 - '0' as u32),
                    };
                    char::from_u32(code).unwrap_or(c)
                })
                .collect()
        };
        for (text, what) in [
            (styled(0xff21, 0xff41, 0xff10), "fullwidth"),
            (styled(0x1d400, 0x1d41a, 0x1d7ce), "mathematical bold"),
            (styled(0x1d5a0, 0x1d5ba, 0x1d7e2), "mathematical sans-serif"),
            (styled(0x1d670, 0x1d68a, 0x1d7f6), "mathematical monospace"),
            (styled(0x24b6, 0x24d0, 0xff10), "circled, fullwidth digits"),
        ] {
            bodies.push((format!("{{\"v\":\"{text}\"}}").into_bytes(), what));
            let escaped: String = text.encode_utf16().map(|u| format!("\\u{u:04x}")).collect();
            bodies.push((escaped.into_bytes(), "styled letters as JSON escapes"));
        }
        // Latin-1's soft hyphen is one byte.
        bodies.push((
            LONG.bytes().flat_map(|b| [b, 0xad]).collect(),
            "latin-1 soft hyphens",
        ));
        // Cyrillic and Greek letters drawn as Latin ones, in place of every letter that has a twin.
        let twins: String = LONG
            .chars()
            .map(|c| match c {
                'A' => 'А',
                'd' => 'ԁ',
                'E' => 'Ε',
                'h' => 'һ',
                'I' => 'І',
                'j' => 'ј',
                'M' => 'М',
                'n' => 'η',
                'p' => 'р',
                'Q' => 'Ԛ',
                'T' => 'Т',
                't' => 'т',
                'x' => 'х',
                'Y' => 'Υ',
                'C' => 'С',
                'K' => 'К',
                'l' => 'ӏ',
                'v' => 'ν',
                other => other,
            })
            .collect();
        bodies.push((
            format!("{{\"content\":\"{twins}\"}}").into_bytes(),
            "Cyrillic and Greek twins",
        ));
        // Accented, small-capital, stroked, squared and bracketed letters (attack round 14), raw and as
        // JSON escapes.
        let accented: String = LONG
            .chars()
            .map(|c| match c {
                'n' => 'ñ',
                'Z' | 'z' => 'Ź',
                'K' | 'k' => '\u{212a}',
                'a' | 'A' => 'ᴀ',
                'o' | 'O' => 'ø',
                'l' | 'L' => 'ł',
                'd' | 'D' => 'đ',
                'e' => 'é',
                'E' => 'Ë',
                'u' => 'ü',
                'q' | 'Q' => '\u{1f140}',
                'r' | 'R' => '\u{24ad}',
                'c' => 'ç',
                'i' => 'ï',
                'y' => 'ý',
                's' => 'ş',
                other => other,
            })
            .collect();
        bodies.push((
            format!("{{\"content\":\"{accented}\"}}").into_bytes(),
            "accented and small-capital letters",
        ));
        let escaped: String = accented
            .encode_utf16()
            .map(|u| format!("\\u{u:04x}"))
            .collect();
        bodies.push((escaped.into_bytes(), "accented letters as JSON escapes"));
        // Tag characters (invisible ASCII), negative circled and squared capitals, regional indicators,
        // other scripts' digits and dingbat digits (attack round 15).
        let tags: String = LONG
            .chars()
            .map(|c| char::from_u32(0xe0000 + c as u32).unwrap())
            .collect();
        bodies.push((
            format!("{{\"content\":\"x{tags}\"}}").into_bytes(),
            "tag characters",
        ));
        let escaped: String = tags.encode_utf16().map(|u| format!("\\u{u:04x}")).collect();
        bodies.push((escaped.into_bytes(), "tag characters as JSON escapes"));
        for (upper, lower, zero) in [
            (0x1f150, 0x1f170, 0x966),
            (0x1f170, 0x1f1e6, 0x660),
            (0x1f1e6, 0x1f150, 0xe50),
        ] {
            let drawn: String = LONG
                .chars()
                .map(|c| {
                    let code = match c {
                        'A'..='Z' => upper + (c as u32 - 'A' as u32),
                        'a'..='z' => lower + (c as u32 - 'a' as u32),
                        _ => zero + (c as u32 - '0' as u32),
                    };
                    char::from_u32(code).unwrap()
                })
                .collect();
            bodies.push((drawn.into_bytes(), "enclosed letters, other digits"));
        }
        let dingbats: String = LONG
            .chars()
            .map(|c| match c {
                '1'..='9' => char::from_u32(0x2776 + (c as u32 - '1' as u32)).unwrap(),
                '0' => '\u{24ff}',
                c => c,
            })
            .collect();
        bodies.push((dingbats.into_bytes(), "dingbat digits"));
        // Letters with a hook, stroke, bar or descender in place of one letter in every few (attack
        // round 16), and every such letter Unicode names, read as its letter.
        let hooked: String = LONG
            .chars()
            .enumerate()
            .map(|(i, c)| match (i % 5, c) {
                (0, 'b') => 'ɓ',
                (0, 'E') => 'Ɇ',
                (0, 'C') => 'Ȼ',
                (0, 'w') => 'ⱳ',
                (0, 'h') => 'ⱨ',
                (0, 'p') => 'ƥ',
                (0, 'd') => 'ɗ',
                (0, 'f') => 'ƒ',
                (0, 'K') => 'Ƙ',
                (0, 'y') => 'ƴ',
                (_, 'A') => 'Ⱥ',
                (_, 'l') => 'ƚ',
                (_, 'M') => 'Ɱ',
                (_, 'n') => 'ɲ',
                (_, 'v') => 'ʋ',
                (_, 'z') => 'ȥ',
                (_, 'T') => 'Ⱦ',
                (_, 'G') => 'Ɠ',
                (_, 'j') => 'ɉ',
                (_, 'r') => 'ɍ',
                (_, 'I') => 'Ɨ',
                _ => c,
            })
            .collect();
        bodies.push((
            format!("{{\"content\":\"{hooked}\"}}").into_bytes(),
            "hooked and stroked letters",
        ));
        for (code, letter) in super::super::latin::LATIN_FORMS {
            assert_eq!(base_letter(*code), Some(*letter), "U+{code:04X}");
        }
        // A base letter followed by combining marks.
        let marked: String = LONG.chars().flat_map(|c| [c, '\u{301}']).collect();
        bodies.push((marked.into_bytes(), "combining accents"));
        for (body, what) in bodies {
            for at in [0, 7, body.len() / 2, body.len()] {
                assert!(
                    bytes_through(&body, at, LONG).await.is_err(),
                    "{what}, split at {at}"
                );
            }
            assert!(needles(LONG).found_in(&body), "{what}");
        }
        let mut h = HeaderMap::new();
        h.insert(
            "x-debug",
            http::HeaderValue::from_bytes(joined(LONG, "\u{200e}").as_bytes()).unwrap(),
        );
        assert!(needles(LONG).headers_carry(&h));
        // Ordinary text in other scripts and encodings passes whole.
        let ordinary = r#"{"name":"café – ünïcödé 日本語 \u00e9\ud83d\ude00 &amp; &middot;","id":"023e105f4ecef8ad9ca31a8372d0c353"}"#;
        assert_eq!(through(&[ordinary], LONG).await.unwrap(), ordinary);
        let wide = utf16le(ordinary);
        assert_eq!(bytes_through(&wide, 9, LONG).await.unwrap(), wide);
    }

    /// Needles that gain a secret after the first time they are asked for (a token minted while an answer
    /// streams).
    struct Later {
        asked: std::sync::atomic::AtomicU64,
        secret: &'static str,
    }

    impl NeedleSource for Later {
        fn generation(&self) -> u64 {
            self.asked.load(std::sync::atomic::Ordering::SeqCst).min(1)
        }

        fn needles(&self) -> Arc<Needles> {
            let n = self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if n == 0 {
                Arc::new(Needles::new([]))
            } else {
                needles(self.secret)
            }
        }
    }

    #[tokio::test]
    async fn a_secret_held_while_an_answer_streams_is_looked_for_in_the_rest() {
        let chunks = || -> Body {
            Body::new(Chunks(
                [
                    Bytes::from_static(b"{\"a\":\"before\","),
                    Bytes::from(format!("\"b\":\"{LONG}\"}}")),
                ]
                .into(),
            ))
        };
        let later = Arc::new(Later {
            asked: Default::default(),
            secret: LONG,
        });
        let out = screened_from(chunks(), later, Uuid::nil()).collect().await;
        assert!(
            out.is_err(),
            "the secret held after the answer began passed"
        );
        // Needles fixed when the answer began would have let it through.
        let out = screened(chunks(), Arc::new(Needles::new([])), Uuid::nil())
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert!(String::from_utf8_lossy(&out).contains(LONG));
    }

    /// A source whose agent is refused answers from the second time it is asked (it tripped out on other
    /// answers while this one streamed).
    struct Closing(std::sync::atomic::AtomicU64);

    impl NeedleSource for Closing {
        fn generation(&self) -> u64 {
            0
        }

        fn needles(&self) -> Arc<Needles> {
            needles(LONG)
        }

        fn closed(&self) -> bool {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) > 0
        }
    }

    #[tokio::test]
    async fn an_answer_to_an_agent_that_tripped_out_meanwhile_is_cut_off_whatever_it_carries() {
        let chunks = [
            Bytes::from_static(b"{\"a\":\"an ordinary answer, long enough to be sent in part\","),
            Bytes::from_static(b"\"b\":\"nothing secret in it\"}"),
        ];
        let closing = Arc::new(Closing(Default::default()));
        let mut body = screened_from(
            Body::new(Chunks(chunks.clone().into())),
            closing,
            Uuid::nil(),
        );
        let first = body.frame().await.expect("a frame");
        assert!(first.is_ok(), "sent while the agent was not refused");
        let rest = body.frame().await.expect("a frame");
        assert!(rest.is_err(), "cut off once the agent is refused");
        // The same answer to an agent not refused passes whole.
        let out = screened(Body::new(Chunks(chunks.into())), needles(LONG), Uuid::nil())
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert!(String::from_utf8_lossy(&out).contains("nothing secret"));
    }

    /// The frames `chunks` come out of the screen in, or the error it ended with.
    async fn frames_through(chunks: Vec<Bytes>, secret: &str) -> Result<Vec<Bytes>, String> {
        let mut body = screened(
            Body::new(Chunks(chunks.into())),
            needles(secret),
            Uuid::nil(),
        );
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => out.extend(f.into_data().ok()),
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(out)
    }

    #[tokio::test]
    async fn long_stretches_of_nuls_skipped_or_unending_escapes_still_stream() {
        // An escape's start followed by megabytes of NULs, or a few letters followed by megabytes of what a
        // reading skips: each streams out as it comes (never held whole, never read again and again).
        let stretches: [(&[u8], u8); 5] = [
            (b"{\"a\":\"x&", 0),
            (b"{\"a\":\"x\\", 0),
            (b"{\"a\":\"x%", 0),
            (b"abcde", b' '),
            (b"abcde", 0),
        ];
        for (start, fill) in stretches {
            let mut chunks = vec![Bytes::copy_from_slice(start)];
            chunks.extend((0..256).map(|_| Bytes::from(vec![fill; 4096])));
            let total: usize = chunks.iter().map(Bytes::len).sum();
            let frames = frames_through(chunks, LONG).await.unwrap();
            assert_eq!(frames.iter().map(Bytes::len).sum::<usize>(), total);
            assert!(frames.len() > 200, "{start:?}: {} frames", frames.len());
            assert!(
                frames.iter().all(|f| f.len() <= 8192),
                "{start:?}: held back"
            );
        }
        // Characters of the secret further apart than that are not one run; closer, they are.
        let far: String = LONG
            .chars()
            .map(|c| format!("{c}{}", " ".repeat(300)))
            .collect();
        assert!(through(&[&far], LONG).await.is_ok());
        let near: String = LONG
            .chars()
            .map(|c| format!("{c}{}", " ".repeat(200)))
            .collect();
        assert!(through(&[&near], LONG).await.is_err());
    }

    #[tokio::test]
    async fn padding_up_to_the_limit_mixed_syntaxes_and_zero_bytes() {
        // 62 zeros and the character's digits: read (64 zeros cut the answer off).
        let html: String = LONG.bytes().map(|b| format!("&#{:0>64};", b)).collect();
        let hex: String = LONG.bytes().map(|b| format!("&#x{:0>64x};", b)).collect();
        let js: String = LONG
            .bytes()
            .map(|b| format!("\\u{{{:0>64x}}}", b))
            .collect();
        for echo in [html, hex, js] {
            assert!(through(&[&echo], LONG).await.is_err(), "{echo}");
        }
        // Letters inside unknown named references, between JSON escapes, are not hidden.
        let mixed: String = LONG
            .as_bytes()
            .chunks(4)
            .enumerate()
            .map(|(i, c)| {
                let c = std::str::from_utf8(c).unwrap();
                if i % 2 == 0 {
                    format!("&{c};")
                } else {
                    c.bytes().map(|b| format!("\\u{b:04x}")).collect()
                }
            })
            .collect();
        assert!(through(&[&mixed], LONG).await.is_err(), "{mixed}");
        // A zero value written with many digits (Postgres' bytea) is no escape to refuse.
        let zero = format!("const ZERO = \"\\x{}\";", "0".repeat(64));
        assert_eq!(through(&[&zero], LONG).await.unwrap(), zero);
    }
}
