//! The answer to a request made with a handle, screened for the minted secret it was forwarded with: a
//! provider that echoes the credential (a debug header, an error quoting the request) must not hand the
//! secret to the agent. What counts as carrying it: any run of [`WINDOW`] consecutive characters of the
//! secret (a prefix, a middle, the whole), each character as itself or as a JSON escape (`\u0053`, `\/`),
//! so neither a partial echo nor an escaped one gets through. The body streams through with enough bytes
//! held back that no part of such a run is ever sent; a match ends the body with an error instead (the agent
//! sees a broken answer). A compressed answer cannot be screened: the caller withholds it (it asked for
//! `identity`).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::Frame;

/// How many consecutive characters of a secret make a leak (all of it, for a shorter secret). Cloudflare's
/// secrets are 40 characters; 12 of them are still 70 bits an agent must not be handed piecemeal.
pub const WINDOW: usize = 12;

/// The longest JSON spelling of one ASCII character (`\u0053`).
const LONGEST_ESCAPE: usize = 6;

/// The secret of a `Bearer <secret>` credential, as bytes to look for.
pub fn secret_of(credential: &http::HeaderValue) -> Option<Vec<u8>> {
    let bytes = credential.as_bytes();
    let secret = bytes.strip_prefix(b"Bearer ")?;
    (!secret.is_empty()).then(|| secret.to_vec())
}

/// Whether any response header carries `secret` (see the module docs for what counts).
pub fn headers_carry(headers: &HeaderMap, secret: &[u8]) -> bool {
    headers.values().any(|v| carries(v.as_bytes(), secret))
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

/// Whether `hay` carries a run of [`WINDOW`] consecutive characters of `secret` (all of it if shorter), each
/// character literal or JSON-escaped.
pub fn carries(hay: &[u8], secret: &[u8]) -> bool {
    let window = secret.len().min(WINDOW);
    if window == 0 {
        return false;
    }
    let mut i = 0;
    while i < hay.len() {
        if let Some((first, _)) = unit(hay, i) {
            for start in 0..=secret.len() - window {
                if secret[start] != first {
                    continue;
                }
                let mut at = i;
                let mut matched = 0;
                while matched < window {
                    match unit(hay, at) {
                        Some((b, width)) if b == secret[start + matched] => {
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
        i += 1;
    }
    false
}

/// The character spelled at `hay[at..]` and how many bytes spell it: a byte as itself, or a JSON escape of
/// an ASCII character (`\uXXXX` in either case of hex, or `\/`, `\"`, `\\`).
fn unit(hay: &[u8], at: usize) -> Option<(u8, usize)> {
    let b = *hay.get(at)?;
    if b != b'\\' {
        return Some((b, 1));
    }
    match hay.get(at + 1) {
        Some(b'u') | Some(b'U') => {
            let hex = hay.get(at + 2..at + 6)?;
            let text = std::str::from_utf8(hex).ok()?;
            let code = u32::from_str_radix(text, 16).ok()?;
            (code < 0x80).then_some((code as u8, 6))
        }
        Some(&c @ (b'/' | b'"' | b'\\')) => Some((c, 2)),
        _ => Some((b, 1)),
    }
}

/// `body`, ended with an error where it would carry `secret`.
pub fn screened(body: Body, secret: Vec<u8>) -> Body {
    Body::new(Screened {
        inner: body,
        held: BytesMut::new(),
        secret,
        trailers: None,
        done: false,
    })
}

struct Screened {
    inner: Body,
    held: BytesMut,
    secret: Vec<u8>,
    trailers: Option<HeaderMap>,
    done: bool,
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
            if let Some(trailers) = this.trailers.take() {
                this.done = true;
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        this.held.extend_from_slice(&data);
                        if carries(&this.held, &this.secret) {
                            this.done = true;
                            tracing::error!(
                                "a handle's answer carries its minted secret; the answer is cut off"
                            );
                            return Poll::Ready(Some(Err(axum::Error::new(
                                "the provider's answer carries the minted secret; withheld",
                            ))));
                        }
                        // A run that could still complete may start no earlier than this many bytes back.
                        let keep =
                            (this.secret.len().min(WINDOW) * LONGEST_ESCAPE).saturating_sub(1);
                        if this.held.len() > keep {
                            let out = this.held.split_to(this.held.len() - keep).freeze();
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            this.trailers = Some(trailers);
                        }
                        if !this.held.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(this.held.split().freeze()))));
                        }
                    }
                },
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
        match screened(body, secret.as_bytes().to_vec()).collect().await {
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
