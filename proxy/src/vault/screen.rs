//! The answer to a request made with a handle, screened for the minted secret it was forwarded with: a
//! provider that echoes the credential (a debug header, an error quoting the request) must not hand the
//! secret to the agent. The body streams through with the last `len(secret) - 1` bytes held back, so no part
//! of a match is ever sent; a match ends the body with an error instead (the agent sees a broken answer).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::Frame;

/// The secret of a `Bearer <secret>` credential, as bytes to look for.
pub fn secret_of(credential: &http::HeaderValue) -> Option<Vec<u8>> {
    let bytes = credential.as_bytes();
    let secret = bytes.strip_prefix(b"Bearer ")?;
    (!secret.is_empty()).then(|| secret.to_vec())
}

/// Whether any response header carries `secret`.
pub fn headers_carry(headers: &HeaderMap, secret: &[u8]) -> bool {
    headers
        .values()
        .any(|v| super::contains(v.as_bytes(), secret))
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
                        if super::contains(&this.held, &this.secret) {
                            this.done = true;
                            tracing::error!(
                                "a handle's answer carries its minted secret; the answer is cut off"
                            );
                            return Poll::Ready(Some(Err(axum::Error::new(
                                "the provider's answer carries the minted secret; withheld",
                            ))));
                        }
                        let keep = this.secret.len().saturating_sub(1);
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
