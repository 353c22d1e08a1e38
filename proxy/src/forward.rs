//! Forwarding a permitted request to its provider.
//!
//! Owns: the upstream HTTP client (hyper over rustls, pooled keep-alive connections, HTTP/1.1 and HTTP/2),
//! the [`Permit`] that every forward requires, request and response header hygiene (hop-by-hop headers per
//! RFC 9110 §7.6.1, agent credentials and `Tollgate-*` headers stripped), and injection of the provider
//! credential that the agent never holds. A provider's answer reaches the caller as its status, headers and
//! body only: no reason phrase, no trailers, no other extension, so nothing rides past the checks on headers
//! and body (a minted secret echoed in a trailer or a status line).
//! Must not: check policy. It trusts the `Permit`, whose constructors demand an allow decision and a
//! durably committed record, or (containment) an operator's recorded admin action. Requests are never retried here; hyper's pool re-sends only a request it
//! could not start writing on a connection the server had already closed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::body::Body;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri};
use http_body::Frame;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use secrecy::ExposeSecret;
use uuid::Uuid;

use crate::approvals::ConsumedApproval;
use crate::audit::Recorded;
use crate::config::{Config, CredentialScheme};
use crate::policy::{Decision, Outcome};

/// Idle pooled connections are kept this long; providers close theirs after about a minute.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);

/// Headers that belong to one connection, never forwarded in either direction (RFC 9110 §7.6.1), plus the
/// proxy-auth pair.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Agent-side credentials: tollgate authenticates the agent with them and never passes them on.
const AGENT_CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "cookie",
    "x-auth-email",
    "x-auth-key",
    "x-auth-user-service-key",
];

/// The authority to forward one request: an allow decision that is durably recorded.
#[derive(Debug)]
pub struct Permit {
    decision_id: Uuid,
    provider: String,
    path: String,
    query: Option<String>,
}

/// The credential a forwarded request carries upstream.
pub enum Credential {
    /// tollgate's own, from `providers.<p>.credential`.
    Provider,
    /// A token minted through tollgate and kept in its vault (the request came with its handle): the
    /// provider enforces the token's own permissions too. Marked sensitive.
    Minted(HeaderValue),
}

/// Where a permitted request goes.
pub struct Target<'a> {
    pub provider: &'a str,
    /// The canonical path, exactly as classified.
    pub path: &'a str,
    pub query: Option<&'a str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// The connection could not be made: the provider never saw the request.
    Connect,
    /// No response in time; the provider may or may not have acted.
    Timeout,
    /// The exchange broke after the request may have been sent.
    Broken,
    /// This tollgate holds no credential for the provider: nothing was sent.
    NoCredential,
}

struct Upstream {
    base: Uri,
    authorization: Option<HeaderValue>,
    /// The credential's secret and its encoded form as it goes out (Basic's base64), to know it when a
    /// provider quotes it back.
    spellings: Vec<secrecy::SecretString>,
}

pub struct Forwarder {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    upstreams: BTreeMap<String, Upstream>,
    timeout: Duration,
}

impl Permit {
    /// Only an `allow` decision — or an `approve` decision whose approval was consumed for this request —
    /// backed by a committed record becomes a permit.
    pub fn issue(
        decision: &Decision,
        approval: Option<&ConsumedApproval>,
        recorded: &Recorded,
        target: Target<'_>,
    ) -> Option<Permit> {
        match (decision.outcome, approval) {
            (Outcome::Allow, _) | (Outcome::Approve, Some(_)) => {}
            _ => return None,
        }
        Some(Permit {
            decision_id: recorded.decision_id(),
            provider: target.provider.to_string(),
            path: target.path.to_string(),
            query: target.query.map(str::to_string),
        })
    }

    /// An operator's containment (`tollgate incident contain`): tollgate itself deletes, with its own
    /// credential, a token an agent minted. Backed by the admin action recorded before any call is made
    /// (`action_id`), not by a policy decision: no agent asked for it.
    pub fn for_containment(action_id: Uuid, provider: &str, path: String) -> Permit {
        Permit {
            decision_id: action_id,
            provider: provider.to_string(),
            path,
            query: None,
        }
    }

    pub fn decision_id(&self) -> Uuid {
        self.decision_id
    }
}

/// TCP to the providers, with Nagle's algorithm off: a request's head and body, and TLS records, go out as
/// they are written instead of waiting for the peer to acknowledge the previous segment (which a peer that
/// delays its acknowledgements holds back for up to 40 ms on Linux).
fn upstream_connector() -> HttpConnector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http
}

impl Forwarder {
    pub fn new(config: &Config) -> Result<Forwarder, String> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(upstream_connector());
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(https);
        let mut upstreams = BTreeMap::new();
        for (name, p) in &config.providers {
            let mut spellings = Vec::new();
            let authorization = match &p.credential {
                Some(c) => match &c.secret {
                    Some(secret) => {
                        spellings.push(secret.clone());
                        let text = match c.scheme {
                            CredentialScheme::Bearer => {
                                format!("Bearer {}", secret.expose_secret())
                            }
                            CredentialScheme::Basic => {
                                let encoded = base64::engine::general_purpose::STANDARD
                                    .encode(format!("{}:", secret.expose_secret()));
                                let text = format!("Basic {encoded}");
                                spellings.push(encoded.into());
                                text
                            }
                        };
                        let mut value = HeaderValue::from_str(&text)
                            .map_err(|_| format!("providers.{name}: the credential contains characters not allowed in a header"))?;
                        value.set_sensitive(true);
                        Some(value)
                    }
                    None => None,
                },
                None => None,
            };
            upstreams.insert(
                name.clone(),
                Upstream {
                    base: p.upstream.clone(),
                    authorization,
                    spellings,
                },
            );
        }
        Ok(Forwarder {
            client,
            upstreams,
            timeout: config.server.upstream_timeout,
        })
    }

    /// Tollgate's own credentials, in every spelling they are sent in (for [`crate::vault::held`], which
    /// screens every answer for them and for the vaulted secrets).
    pub fn own_secrets(&self) -> Vec<secrecy::SecretString> {
        self.upstreams
            .values()
            .flat_map(|u| u.spellings.iter().cloned())
            .collect()
    }

    /// Sends the permitted request upstream and returns the response head with its body still streaming.
    pub async fn forward(
        &self,
        permit: &Permit,
        credential: Credential,
        method: Method,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<(Response<Body>, Duration), (UpstreamFailure, Duration)> {
        let started = Instant::now();
        let Some(upstream) = self.upstreams.get(&permit.provider) else {
            return Err((UpstreamFailure::Connect, started.elapsed()));
        };
        let authorization = match credential {
            Credential::Minted(value) => value,
            Credential::Provider => match &upstream.authorization {
                Some(value) => value.clone(),
                None => return Err((UpstreamFailure::NoCredential, started.elapsed())),
            },
        };
        let uri = match target_uri(&upstream.base, &permit.path, permit.query.as_deref()) {
            Some(u) => u,
            None => return Err((UpstreamFailure::Connect, started.elapsed())),
        };
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.headers_mut() = upstream_request_headers(headers);
        request
            .headers_mut()
            .insert(header::AUTHORIZATION, authorization);
        match tokio::time::timeout(self.timeout, self.client.request(request)).await {
            Err(_) => Err((UpstreamFailure::Timeout, started.elapsed())),
            Ok(Err(e)) if e.is_connect() => {
                tracing::warn!(provider = %permit.provider, error = %e, "upstream connect failed");
                Err((UpstreamFailure::Connect, started.elapsed()))
            }
            Ok(Err(e)) => {
                tracing::warn!(provider = %permit.provider, error = %e, "upstream exchange failed");
                Err((UpstreamFailure::Broken, started.elapsed()))
            }
            Ok(Ok(mut response)) => {
                // A transfer coding other than chunked (`gzip, chunked`) would hand on a body still coded,
                // which no check on the body can read; no provider answers so.
                if transfer_coded(response.headers()) {
                    tracing::warn!(provider = %permit.provider, "upstream answered with a transfer coding other than chunked");
                    return Err((UpstreamFailure::Broken, started.elapsed()));
                }
                // tollgate never asks to switch protocols (it forwards no `Upgrade`), so a 101, or any other
                // informational status as the final answer, is no answer a provider gives: the exchange
                // failed, and the agent must not be handed a connection to the provider.
                if response.status().is_informational() {
                    tracing::warn!(provider = %permit.provider, status = response.status().as_u16(), "upstream answered with an informational status as its final answer");
                    return Err((UpstreamFailure::Broken, started.elapsed()));
                }
                upstream_response_hygiene(response.headers_mut());
                // The reason phrase (hyper keeps it as an extension) and anything else beside the head.
                response.extensions_mut().clear();
                Ok((
                    response.map(|body| Body::new(WithoutTrailers(body))),
                    started.elapsed(),
                ))
            }
        }
    }
}

/// Whether a response's `Transfer-Encoding` names a coding other than `chunked`.
fn transfer_coded(headers: &HeaderMap) -> bool {
    headers.get_all(header::TRANSFER_ENCODING).iter().any(|v| {
        v.to_str().map_or(true, |v| {
            v.split(',')
                .map(str::trim)
                .any(|c| !c.is_empty() && !c.eq_ignore_ascii_case("chunked"))
        })
    })
}

/// A provider's body without its trailers: no provider API sends any, and a trailer would go past the checks
/// made on headers (a `Tollgate-*` name, a minted secret).
struct WithoutTrailers<B>(B);

impl<B: http_body::Body<Data = Bytes> + Unpin> http_body::Body for WithoutTrailers<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        loop {
            match std::task::ready!(std::pin::Pin::new(&mut self.0).poll_frame(cx)) {
                Some(Ok(frame)) if !frame.is_data() => continue,
                other => return std::task::Poll::Ready(other),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0.size_hint()
    }
}

/// `{upstream}{prefix}{path}?{query}`.
fn target_uri(base: &Uri, path: &str, query: Option<&str>) -> Option<Uri> {
    let prefix = base.path().trim_end_matches('/');
    let mut pq =
        String::with_capacity(prefix.len() + path.len() + query.map_or(0, |q| q.len() + 1));
    pq.push_str(prefix);
    pq.push_str(path);
    if let Some(q) = query {
        pq.push('?');
        pq.push_str(q);
    }
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(pq.parse().ok()?);
    Uri::from_parts(parts).ok()
}

/// The agent's headers minus hop-by-hop, agent credentials, `Host` (set from the upstream URI),
/// `Content-Length` (set from the body) and every `Tollgate-*` header.
pub fn upstream_request_headers(incoming: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(incoming.len());
    let connection_listed = connection_tokens(incoming);
    for (name, value) in incoming {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n)
            || AGENT_CREDENTIAL_HEADERS.contains(&n)
            || n == "host"
            || n == "content-length"
            || n.starts_with("tollgate-")
            || connection_listed.iter().any(|c| c == n)
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

fn connection_tokens(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// The forwarded headers of a request whose answer tollgate must read (a token action's): without
/// `Accept-Encoding: identity` in place of the agent's, so the provider answers in plain bytes (an absent
/// header would let it pick any coding).
pub fn identity_encoded(headers: &HeaderMap) -> HeaderMap {
    let mut out = headers.clone();
    out.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    out
}

/// Removes hop-by-hop headers and every `Tollgate-*` header from an upstream response before it goes back
/// to the agent: only tollgate speaks in its own namespace, so a provider (or anything posing as one) cannot
/// make an answer look like tollgate's refusal, approval hold or decision.
pub fn upstream_response_hygiene(headers: &mut HeaderMap) {
    for token in connection_tokens(headers) {
        if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
    let ours: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with("tollgate-"))
        .cloned()
        .collect();
    for name in ours {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_header_hygiene() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer tg_secret"),
            ("x-auth-key", "global"),
            ("x-auth-email", "a@b"),
            ("tollgate-run", "run-1"),
            ("tollgate-approval", "ap"),
            ("connection", "keep-alive, x-custom-hop"),
            ("x-custom-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("host", "tollgate.local"),
            ("content-length", "12"),
            ("content-type", "application/json"),
            ("idempotency-key", "k1"),
            ("stripe-account", "acct_1"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let out = upstream_request_headers(&h);
        let names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            vec!["content-type", "idempotency-key", "stripe-account"]
        );
    }

    #[test]
    fn response_header_hygiene_keeps_tollgate_namespace_for_tollgate() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("tollgate-approval-id", "forged"),
            ("tollgate-decision", "forged"),
            ("tollgate-refusal", "approval_required"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("content-type", "application/json"),
            ("cf-ray", "abc"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        upstream_response_hygiene(&mut h);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, vec!["cf-ray", "content-type"]);
    }

    #[tokio::test]
    async fn a_providers_trailers_are_dropped_and_its_data_kept() {
        use http_body_util::BodyExt;
        let mut trailers = HeaderMap::new();
        trailers.insert(
            "tollgate-refusal",
            HeaderValue::from_static("approval_required"),
        );
        trailers.insert("x-secret", HeaderValue::from_static("s3cr3t"));
        let frames = Frames(
            vec![
                Frame::data(Bytes::from_static(b"{\"a\":")),
                Frame::trailers(trailers),
                Frame::data(Bytes::from_static(b"1}")),
            ]
            .into(),
        );
        let collected = WithoutTrailers(frames).collect().await.unwrap();
        assert!(collected.trailers().is_none());
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"{\"a\":1}"));
        let mut h = HeaderMap::new();
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("gzip, chunked"),
        );
        assert!(transfer_coded(&h));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        assert!(!transfer_coded(&h));
    }

    /// A body of the given frames.
    struct Frames(std::collections::VecDeque<Frame<Bytes>>);

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    #[test]
    fn target_uri_joins_prefix_path_and_query() {
        let base: Uri = "http://127.0.0.1:9000".parse().unwrap();
        assert_eq!(
            target_uri(&base, "/client/v4/zones", Some("page=2"))
                .unwrap()
                .to_string(),
            "http://127.0.0.1:9000/client/v4/zones?page=2"
        );
        let base: Uri = "https://example.test/mirror".parse().unwrap();
        assert_eq!(
            target_uri(&base, "/v1/charges", None).unwrap().to_string(),
            "https://example.test/mirror/v1/charges"
        );
    }
}
