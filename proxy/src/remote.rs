//! The remote CLI's client of the admin API: `tollgate --server URL --token-env VAR …`.
//!
//! Owns: checking the server URL (https, or http to a loopback address unless `--insecure-http`), reading
//! the reviewer token from the environment variable the user names (never from argv), one JSON call to
//! the admin API with `Authorization: Bearer`, and turning what comes back — the API's error envelope
//! `{"error": {"code", "message"}}`, a refused connection, a TLS failure — into a [`RemoteError`] that says
//! what happened and where. It uses the same hyper + rustls (webpki roots) stack as `forward`.
//! Must not: print or put the token in any message, follow redirects (a redirect could carry the token
//! elsewhere), or know what a command means; `cli` maps commands to endpoints and formats the answers.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Uri, header};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::Value;

/// A call that takes longer than this is given up: admin calls are small, a hung server should not hang a
/// terminal.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest answer read; the API pages anything bigger (500 rows of decisions are far below it).
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// Where and as whom the remote CLI talks to the admin API.
pub struct Remote {
    /// The server as the user gave it, without a trailing `/` (for messages).
    server: String,
    /// The base path the API lives under (`""` for the root).
    base: Uri,
    token: SecretString,
    /// The environment variable the token came from, to name in messages.
    token_env: String,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// What went wrong with a remote call; its `Display` is the whole message the CLI prints after `error: `.
#[derive(Debug)]
pub enum RemoteError {
    /// The URL cannot be used (bad shape, or plaintext to a remote host without `--insecure-http`).
    BadServer(String),
    /// No token in the named environment variable.
    NoToken { var: String },
    /// The server could not be reached (refused, DNS, TLS, timeout).
    Unreachable { server: String, why: String },
    /// The server answered with its error envelope (or at least an error status).
    Refused {
        status: u16,
        code: String,
        message: String,
        token_env: String,
    },
    /// A success status whose body is not JSON.
    Garbled { status: u16, server: String },
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoteError::BadServer(m) => write!(f, "{m}"),
            RemoteError::NoToken { var } => write!(
                f,
                "--server needs a reviewer token in the environment variable {var} (a tgr_… token from \
                 `tollgate reviewers create`, or the bootstrap admin token); it is not set. Name another \
                 variable with --token-env"
            ),
            RemoteError::Unreachable { server, why } => {
                write!(f, "cannot reach the tollgate admin API at {server}: {why}")
            }
            RemoteError::Refused {
                status,
                code,
                message,
                token_env,
            } => {
                write!(f, "{message} ({code}, HTTP {status})")?;
                match status {
                    401 => write!(
                        f,
                        "\nthe server did not accept the token in ${token_env}: it is unknown, revoked or \
                         rotated, or not a reviewer token"
                    ),
                    403 if code == "forbidden" => write!(
                        f,
                        "\nyour reviewer role may not do this; ask an admin for a higher role"
                    ),
                    _ => Ok(()),
                }
            }
            RemoteError::Garbled { status, server } => write!(
                f,
                "the server at {server} answered HTTP {status} with something that is not the admin API's JSON \
                 (is --server the admin listener?)"
            ),
        }
    }
}

impl std::error::Error for RemoteError {}

impl RemoteError {
    /// The HTTP status the server answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            RemoteError::Refused { status, .. } | RemoteError::Garbled { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }
}

impl Remote {
    /// Checks the URL and reads the token from the environment variable `token_env`, before any connection
    /// is made.
    pub fn from_env(
        server: &str,
        token_env: &str,
        insecure_http: bool,
    ) -> Result<Remote, RemoteError> {
        let token = std::env::var(token_env)
            .ok()
            .map(|t| SecretString::from(t.trim().to_string()));
        Remote::new(server, token, token_env, insecure_http)
    }

    /// Checks the URL and the token (which came from `token_env`, named in messages).
    pub fn new(
        server: &str,
        token: Option<SecretString>,
        token_env: &str,
        insecure_http: bool,
    ) -> Result<Remote, RemoteError> {
        let trimmed = server.trim().trim_end_matches('/');
        let base: Uri = trimmed.parse().map_err(|_| {
            RemoteError::BadServer(format!(
                "--server {server:?} is not a URL like https://tollgate.example.com:9090"
            ))
        })?;
        let scheme = base.scheme_str().unwrap_or_default();
        if scheme != "https" && scheme != "http" {
            return Err(RemoteError::BadServer(format!(
                "--server {server:?} must start with https:// (or http:// for a loopback address)"
            )));
        }
        let Some(host) = base.host() else {
            return Err(RemoteError::BadServer(format!(
                "--server {server:?} has no host; give a URL like https://tollgate.example.com:9090"
            )));
        };
        if base.query().is_some() {
            return Err(RemoteError::BadServer(format!(
                "--server {server:?} has a query; give the admin listener's base URL"
            )));
        }
        // Credentials in the URL would be printed with it (and are not how tollgate authenticates): refused
        // without echoing them.
        if base.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(RemoteError::BadServer(
                "--server must not carry a user or password (user:pass@host); the reviewer token goes in the \
                 variable --token-env names"
                    .to_string(),
            ));
        }
        match scheme {
            "https" => {}
            "http" if is_loopback(host) || insecure_http => {}
            _ => {
                return Err(RemoteError::BadServer(format!(
                    "refusing to send a reviewer token over plain http to {host} (not a loopback address): use \
                     https://, or --insecure-http if the network path is protected otherwise"
                )));
            }
        }
        let token = token
            .filter(|t| !t.expose_secret().is_empty())
            .ok_or_else(|| RemoteError::NoToken {
                var: token_env.to_string(),
            })?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        Ok(Remote {
            server: trimmed.to_string(),
            base,
            token,
            token_env: token_env.to_string(),
            client: Client::builder(TokioExecutor::new()).build(https),
        })
    }

    /// The server as given, for messages.
    pub fn server(&self) -> &str {
        &self.server
    }

    pub async fn get(&self, path_and_query: &str) -> Result<Value, RemoteError> {
        self.call(Method::GET, path_and_query, None).await
    }

    pub async fn post(&self, path: &str, body: Option<&Value>) -> Result<Value, RemoteError> {
        self.call(Method::POST, path, body).await
    }

    pub async fn delete(&self, path: &str, body: Option<&Value>) -> Result<Value, RemoteError> {
        self.call(Method::DELETE, path, body).await
    }

    /// One call: `path_and_query` (starting `/api/`) under the server's base; the answer's JSON, or the
    /// error the server gave.
    async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Result<Value, RemoteError> {
        let uri = self.uri(path_and_query)?;
        let mut builder = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("tollgate-cli/", env!("CARGO_PKG_VERSION")),
            );
        let mut auth =
            http::HeaderValue::from_str(&format!("Bearer {}", self.token.expose_secret()))
                .map_err(|_| {
                    RemoteError::BadServer(format!(
                        "the token in ${} has characters no HTTP header may carry",
                        self.token_env
                    ))
                })?;
        auth.set_sensitive(true);
        builder = builder.header(header::AUTHORIZATION, auth);
        let payload = match body {
            Some(v) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let request = builder
            .body(Full::new(payload))
            .map_err(|e| RemoteError::BadServer(format!("cannot build the request: {e}")))?;
        let unreachable = |why: String| RemoteError::Unreachable {
            server: self.server.clone(),
            why,
        };
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| unreachable(error_chain(&e)))?;
            let status = response.status().as_u16();
            let collected = http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| unreachable(format!("the answer broke off: {e}")))?;
            Ok::<_, RemoteError>((status, collected.to_bytes()))
        };
        let (status, bytes) = tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {} s", CALL_TIMEOUT.as_secs())))??;
        let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
        if (200..300).contains(&status) {
            return parsed.ok_or_else(|| RemoteError::Garbled {
                status,
                server: self.server.clone(),
            });
        }
        let error = parsed.as_ref().and_then(|v| v.get("error"));
        let text = |key: &str| {
            error
                .and_then(|e| e.get(key))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        Err(RemoteError::Refused {
            status,
            code: text("code").unwrap_or_else(|| "http_error".to_string()),
            message: text("message").unwrap_or_else(|| match status {
                404 => format!(
                    "{path_and_query} is not an endpoint of the server at {} (an older tollgate, or not the admin \
                     listener?)",
                    self.server
                ),
                _ => format!("the server at {} answered HTTP {status}", self.server),
            }),
            token_env: self.token_env.clone(),
        })
    }

    fn uri(&self, path_and_query: &str) -> Result<Uri, RemoteError> {
        let prefix = self.base.path().trim_end_matches('/');
        let mut parts = self.base.clone().into_parts();
        parts.path_and_query = Some(
            format!("{prefix}{path_and_query}")
                .parse()
                .map_err(|_| RemoteError::BadServer(format!("cannot call {path_and_query}")))?,
        );
        Uri::from_parts(parts)
            .map_err(|_| RemoteError::BadServer(format!("cannot call {path_and_query}")))
    }
}

/// Loopback: `localhost` or a loopback IP (`127.0.0.0/8`, `::1`); a token sent there never leaves the machine.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// An error with its causes, `a: b: c` (hyper's own message alone says only "client error (Connect)").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// A query string from the pairs that have a value, form-encoded.
pub fn query(pairs: &[(&str, Option<String>)]) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if let Some(v) = v {
            out.append_pair(k, v);
        }
    }
    let text = out.finish();
    if text.is_empty() {
        text
    } else {
        format!("?{text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(server: &str, insecure: bool, expected: Result<&str, &str>) {
        let token = Some(SecretString::from("tgr_secret"));
        match (Remote::new(server, token, "T", insecure), expected) {
            (Ok(r), Ok(uri)) => assert_eq!(r.uri("/api/whoami").unwrap().to_string(), uri),
            (Err(e), Err(text)) => assert!(e.to_string().contains(text), "{server}: {e}"),
            (Ok(_), Err(text)) => panic!("{server}: accepted, expected {text}"),
            (Err(e), Ok(_)) => panic!("{server}: refused: {e}"),
        }
    }

    #[test]
    fn servers() {
        check(
            "https://tg.example.com",
            false,
            Ok("https://tg.example.com/api/whoami"),
        );
        check(
            "https://tg.example.com:9443/",
            false,
            Ok("https://tg.example.com:9443/api/whoami"),
        );
        check(
            "https://example.com/tollgate/",
            false,
            Ok("https://example.com/tollgate/api/whoami"),
        );
        check(
            "http://127.0.0.1:9090",
            false,
            Ok("http://127.0.0.1:9090/api/whoami"),
        );
        check(
            "http://127.8.0.1:9090",
            false,
            Ok("http://127.8.0.1:9090/api/whoami"),
        );
        check(
            "http://localhost:9090",
            false,
            Ok("http://localhost:9090/api/whoami"),
        );
        check(
            "http://[::1]:9090",
            false,
            Ok("http://[::1]:9090/api/whoami"),
        );
        check(
            "http://example.com",
            false,
            Err("refusing to send a reviewer token over plain http"),
        );
        check("http://10.0.0.1:9090", false, Err("not a loopback address"));
        check("http://localhost.example.com", false, Err("plain http"));
        check(
            "http://example.com",
            true,
            Ok("http://example.com/api/whoami"),
        );
        check("ftp://example.com", true, Err("must start with https://"));
        check("example.com", false, Err("must start with https://"));
        check("https://example.com/?a=b", false, Err("has a query"));
        check(
            "https://user:pass@example.com",
            false,
            Err("must not carry a user"),
        );
    }

    #[test]
    fn no_token_names_the_variable_not_a_value() {
        for token in [None, Some(SecretString::from(""))] {
            let e = Remote::new("https://x.example", token, "MY_TOKEN_VAR", false)
                .err()
                .unwrap();
            assert!(e.to_string().contains("MY_TOKEN_VAR"), "{e}");
        }
    }

    #[test]
    fn queries_skip_absent_values() {
        assert_eq!(query(&[("a", None)]), "");
        assert_eq!(
            query(&[
                ("agent", Some("a b".into())),
                ("x", None),
                ("since", Some("2026-12-01T00:00:00+00:00".into()))
            ]),
            "?agent=a+b&since=2026-12-01T00%3A00%3A00%2B00%3A00"
        );
    }
}
