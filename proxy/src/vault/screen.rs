//! The answer to a request made with a handle, screened for the minted secret it was forwarded with: a
//! provider that echoes the credential (a debug header, an error quoting the request) must not hand the
//! secret to the agent. What counts as carrying it: any run of [`WINDOW`] consecutive characters of the
//! secret (a prefix, a middle, the whole), in any letter case, each character as itself or escaped the ways
//! answers escape text — JSON (`\u0053`, `\/`), URL (`%53`), HTML (`&#83;`, `&#x53;`), C-like (`\x53`,
//! `\U00000053`) — in a header's name or value or in the body. The body streams through with enough bytes
//! held back that no part of such a run is ever sent; a match ends the body with an error instead (the agent
//! sees a broken answer). A compressed answer cannot be screened: the caller withholds one labelled so (it
//! asked for `identity`), and a body that starts like a gzip or zlib stream is cut off here. Not covered: a
//! provider that transforms the credential further (base64, UTF-16, reversed) — nothing an API does by
//! accident.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::Frame;
use uuid::Uuid;

/// How many consecutive characters of a secret make a leak (all of it, for a shorter secret). Cloudflare's
/// secrets are 40 characters; 12 of them are still 70 bits an agent must not be handed piecemeal.
pub const WINDOW: usize = 12;

/// The longest escaped spelling of one ASCII character (`\U00000053`, `&#x0053;`).
const LONGEST_ESCAPE: usize = 10;

/// The secret of a `Bearer <secret>` credential, as bytes to look for.
pub fn secret_of(credential: &http::HeaderValue) -> Option<Vec<u8>> {
    let bytes = credential.as_bytes();
    let secret = bytes.strip_prefix(b"Bearer ")?;
    (!secret.is_empty()).then(|| secret.to_vec())
}

/// Whether any response header, by its name or its value, carries `secret` (see the module docs).
pub fn headers_carry(headers: &HeaderMap, secret: &[u8]) -> bool {
    headers
        .iter()
        .any(|(n, v)| carries(n.as_str().as_bytes(), secret) || carries(v.as_bytes(), secret))
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

/// Whether a body starts like a gzip or zlib stream (compressed without saying so).
fn compressed_start(start: &[u8]) -> bool {
    matches!(
        start,
        [0x1f, 0x8b, ..] | [0x78, 0x01 | 0x5e | 0x9c | 0xda, ..]
    )
}

/// Whether `hay` carries a run of [`WINDOW`] consecutive characters of `secret` (all of it if shorter), in
/// any letter case, each character literal or escaped (see [`unit`]).
pub fn carries(hay: &[u8], secret: &[u8]) -> bool {
    let window = secret.len().min(WINDOW);
    if window == 0 {
        return false;
    }
    for i in 0..hay.len() {
        let Some((first, _)) = unit(hay, i) else {
            continue;
        };
        for start in 0..=secret.len() - window {
            if !secret[start].eq_ignore_ascii_case(&first) {
                continue;
            }
            let mut at = i;
            let mut matched = 0;
            while matched < window {
                match unit(hay, at) {
                    Some((b, width)) if b.eq_ignore_ascii_case(&secret[start + matched]) => {
                        at += width;
                        matched += 1;
                    }
                    _ => break,
                }
            }
            if matched == window {
                return true;
            }
        }
    }
    false
}

/// The character spelled at `hay[at..]` and how many bytes spell it: a byte as itself, or an escape of an
/// ASCII character: JSON's `\uXXXX`, `\/`, `\"`, `\\`; C's `\xHH`, `\UXXXXXXXX`; URL's `%HH`; HTML's
/// `&#DD;` and `&#xHH;`.
fn unit(hay: &[u8], at: usize) -> Option<(u8, usize)> {
    let b = *hay.get(at)?;
    let ascii = |digits: &[u8], radix: u32| -> Option<u8> {
        let code = u32::from_str_radix(std::str::from_utf8(digits).ok()?, radix).ok()?;
        u8::try_from(code).ok().filter(u8::is_ascii)
    };
    let escaped = match b {
        b'\\' => match hay.get(at + 1) {
            Some(b'u') => hay
                .get(at + 2..at + 6)
                .and_then(|h| ascii(h, 16))
                .map(|c| (c, 6)),
            Some(b'U') => hay
                .get(at + 2..at + 10)
                .and_then(|h| ascii(h, 16))
                .map(|c| (c, 10)),
            Some(b'x') => hay
                .get(at + 2..at + 4)
                .and_then(|h| ascii(h, 16))
                .map(|c| (c, 4)),
            Some(&c @ (b'/' | b'"' | b'\\')) => Some((c, 2)),
            _ => None,
        },
        b'%' => hay
            .get(at + 1..at + 3)
            .and_then(|h| ascii(h, 16))
            .map(|c| (c, 3)),
        b'&' if hay.get(at + 1) == Some(&b'#') => {
            let (digits_at, radix) = match hay.get(at + 2) {
                Some(b'x' | b'X') => (at + 3, 16),
                _ => (at + 2, 10),
            };
            (digits_at..hay.len().min(at + LONGEST_ESCAPE))
                .find(|&i| hay[i] == b';')
                .and_then(|end| ascii(&hay[digits_at..end], radix).map(|c| (c, end + 1 - at)))
        }
        _ => None,
    };
    // Spelled as an escape; else the byte itself.
    escaped.or(Some((b, 1)))
}

/// `body`, ended with an error where it would carry `secret` (or where it starts compressed). Trailers are
/// dropped. `decision_id` names the request in the log when an answer is cut off.
pub fn screened(body: Body, secret: Vec<u8>, decision_id: Uuid) -> Body {
    Body::new(Screened {
        inner: body,
        held: BytesMut::new(),
        secret,
        started: false,
        done: false,
        decision_id,
    })
}

struct Screened {
    inner: Body,
    held: BytesMut,
    secret: Vec<u8>,
    /// Whether the body's first bytes were looked at.
    started: bool,
    done: bool,
    decision_id: Uuid,
}

impl Screened {
    fn cut_off(&mut self, why: &'static str) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.done = true;
        tracing::error!(decision_id = %self.decision_id, "a handle's answer {why}; the answer is cut off");
        Poll::Ready(Some(Err(axum::Error::new(format!(
            "the provider's answer {why}; withheld"
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
                    if !this.started && this.held.len() >= 2 {
                        this.started = true;
                        if compressed_start(&this.held) {
                            return this.cut_off("starts like a compressed stream");
                        }
                    }
                    if carries(&this.held, &this.secret) {
                        return this.cut_off("carries its minted secret");
                    }
                    // A run that could still complete may start no earlier than this many bytes back.
                    let keep = (this.secret.len().min(WINDOW) * LONGEST_ESCAPE).saturating_sub(1);
                    if this.held.len() > keep {
                        let out = this.held.split_to(this.held.len() - keep).freeze();
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                }
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    this.done = true;
                    if !this.held.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(this.held.split().freeze()))));
                    }
                    return Poll::Ready(None);
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

    async fn through(chunks: &[&str], secret: &str) -> Result<String, String> {
        let body = Body::new(Chunks(
            chunks.iter().map(|c| Bytes::from(c.to_string())).collect(),
        ));
        match screened(body, secret.as_bytes().to_vec(), Uuid::nil())
            .collect()
            .await
        {
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
            screened(gzip, LONG.as_bytes().to_vec(), Uuid::nil())
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
        assert!(headers_carry(&h, LONG.as_bytes()));
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
        assert!(headers_carry(&h, b"abc"));
        assert!(!headers_carry(&h, b"abd"));
    }
}
