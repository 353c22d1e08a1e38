//! A stand-in provider: an HTTP server on `127.0.0.1` that records every request it receives and answers
//! each with one configured status and JSON body.
//!
//! It accepts any method on any path (a single fallback handler) and records the request as it arrived: the
//! path and query byte for byte as on the request line (nothing decoded or normalized), every header in
//! order, and the whole body. A request is recorded as soon as its body has been read, before the probe, the
//! delay and the response, so a test can see that a request reached the upstream even when the proxy gave up
//! waiting for the answer.
//!
//! # Failures inside the server surface in the test
//!
//! The server runs in a task whose `JoinHandle` the [`Upstream`] keeps. Each request is handled in a task of
//! its own too, so a panic there (say, in a test's probe) is caught: the request is answered with a 500, and
//! the panic message is kept. [`Upstream::finish`] returns an error for any kept panic or if the server task
//! stopped on its own; dropping the `Upstream` without calling `finish` panics for the same reasons (unless
//! the test is already panicking), so a failure inside the stand-in fails the test that owns it either way.
//! Dropping it also aborts the server task: the listener closes at once, and open connections finish the
//! request they are serving and close.

use std::fmt;
use std::future::{Future, IntoFuture as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};
use tokio::task::{JoinError, JoinHandle};

/// One request as the stand-in received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// The request target exactly as received, e.g. `/client/v4/zones/%2e%2e?b=2&a=1`.
    pub path_and_query: String,
    /// Every header in the order received; names are lower case, values lossily decoded as UTF-8.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// What the builder's probe returned for this request; `None` without a probe, or while it still runs.
    pub probe: Option<Value>,
}

impl RecordedRequest {
    /// The first value of header `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(candidate, _)| candidate.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// A running stand-in provider. See the module docs for how failures inside it surface.
pub struct Upstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// `None` once [`Upstream::finish`] has run.
    server: Option<JoinHandle<std::io::Result<()>>>,
}

/// How the stand-in answers; from [`Upstream::builder`].
pub struct UpstreamBuilder {
    status: u16,
    body: Value,
    delay: Duration,
    probe: Option<Probe>,
    stripe_idempotency: bool,
}

type Probe =
    Arc<dyn Fn(RecordedRequest) -> Pin<Box<dyn Future<Output = Value> + Send>> + Send + Sync>;

/// State shared by the handler tasks and the [`Upstream`].
struct Shared {
    records: Mutex<Vec<RecordedRequest>>,
    /// Panic messages of request tasks.
    failures: Mutex<Vec<String>>,
    status: StatusCode,
    body: Bytes,
    delay: Duration,
    probe: Option<Probe>,
    /// Stripe's idempotency, when on: the first response per `Idempotency-Key` (and `Stripe-Account`), by key.
    replays: Option<Mutex<std::collections::HashMap<String, Bytes>>>,
}

impl Upstream {
    pub fn builder() -> UpstreamBuilder {
        UpstreamBuilder {
            status: 200,
            body: json!({"success": true, "errors": [], "messages": [], "result": {}}),
            delay: Duration::ZERO,
            probe: None,
            stripe_idempotency: false,
        }
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far, in order of arrival.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.records).clone()
    }

    pub fn request_count(&self) -> usize {
        lock(&self.shared.records).len()
    }

    /// Stops the server and reports whatever went wrong inside it: a panic while handling a request, or the
    /// server task stopping on its own.
    pub async fn finish(mut self) -> anyhow::Result<()> {
        let Some(server) = self.server.take() else {
            return Ok(());
        };
        let stopped_on_its_own = server.is_finished();
        server.abort();
        let ended = server.await;
        let failures = lock(&self.shared.failures).clone();
        if !failures.is_empty() {
            bail!(
                "stand-in upstream at {}: {} request(s) panicked inside it: {}",
                self.addr,
                failures.len(),
                failures.join("; ")
            );
        }
        if stopped_on_its_own {
            return Err(match ended {
                Ok(Ok(())) => anyhow!("its server task returned"),
                Ok(Err(error)) => anyhow!(error).context("its server task failed"),
                Err(error) => anyhow!("its server task panicked: {}", panic_message(error)),
            })
            .with_context(|| format!("stand-in upstream at {} stopped on its own", self.addr));
        }
        Ok(())
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let Some(server) = self.server.take() else {
            return;
        };
        let stopped_on_its_own = server.is_finished();
        server.abort();
        if std::thread::panicking() {
            return;
        }
        let failures = lock(&self.shared.failures).clone();
        if !failures.is_empty() {
            panic!(
                "stand-in upstream at {}: {} request(s) panicked inside it: {}",
                self.addr,
                failures.len(),
                failures.join("; ")
            );
        }
        if stopped_on_its_own {
            panic!(
                "stand-in upstream at {}: its server task stopped on its own; `Upstream::finish().await` says why",
                self.addr
            );
        }
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("addr", &self.addr)
            .field("request_count", &self.request_count())
            .finish_non_exhaustive()
    }
}

impl UpstreamBuilder {
    /// The status of every response; default 200.
    pub fn status(mut self, code: u16) -> Self {
        self.status = code;
        self
    }

    /// The JSON body of every response; default a Cloudflare success envelope
    /// `{"success":true,"errors":[],"messages":[],"result":{}}`.
    pub fn json_body(mut self, body: Value) -> Self {
        self.body = body;
        self
    }

    /// How long to wait before responding (after recording and probing).
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }

    /// Called for every request before responding; its value is stored as `probe` on the record (e.g. a test
    /// looks up the decision row in Postgres at the moment the request arrives).
    pub fn probe<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(RecordedRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Value> + Send + 'static,
    {
        self.probe = Some(Arc::new(move |request| Box::pin(f(request))));
        self
    }

    /// Behave like Stripe with idempotency keys: each response body is the configured JSON object plus an
    /// `"id": "obj_<n>"` of its own (n counts executions), the `Idempotency-Key` is echoed, and a repeated key
    /// (with the same `Stripe-Account`) gets the first response again with `Idempotent-Replayed: true`,
    /// whoever sends it (keys belong to the account at Stripe, not to an API caller).
    pub fn stripe_idempotency(mut self) -> Self {
        self.stripe_idempotency = true;
        self
    }

    /// Binds `127.0.0.1:0` and starts serving on the current tokio runtime.
    pub async fn start(self) -> anyhow::Result<Upstream> {
        let status = StatusCode::from_u16(self.status)
            .with_context(|| format!("stand-in upstream status {}", self.status))?;
        let body = Bytes::from(serde_json::to_vec(&self.body).context("stand-in upstream body")?);
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("binding the stand-in upstream to 127.0.0.1:0")?;
        let addr = listener
            .local_addr()
            .context("the stand-in upstream's address")?;
        let shared = Arc::new(Shared {
            records: Mutex::new(Vec::new()),
            failures: Mutex::new(Vec::new()),
            status,
            body,
            delay: self.delay,
            probe: self.probe,
            replays: self
                .stripe_idempotency
                .then(|| Mutex::new(std::collections::HashMap::new())),
        });
        let app = Router::new()
            .fallback(receive)
            .with_state(Arc::clone(&shared));
        let server = tokio::spawn(axum::serve(listener, app).into_future());
        Ok(Upstream {
            addr,
            shared,
            server: Some(server),
        })
    }
}

impl fmt::Debug for UpstreamBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamBuilder")
            .field("status", &self.status)
            .field("body", &self.body)
            .field("delay", &self.delay)
            .field("probe", &self.probe.is_some())
            .finish()
    }
}

/// The fallback handler: answers in a task of its own so that a panic is caught and kept (see the module
/// docs) instead of silently dropping the connection.
async fn receive(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    match tokio::spawn(answer(Arc::clone(&shared), request)).await {
        Ok(response) => response,
        Err(error) => {
            let message = panic_message(error);
            lock(&shared.failures).push(message.clone());
            let mut response = Response::new(Body::from(
                json!({"stand_in_upstream_panicked": message}).to_string(),
            ));
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            response
        }
    }
}

async fn answer(shared: Arc<Shared>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(body) => body,
        // The client's fault (e.g. it hung up mid-body): nothing to record, and nothing the harness did
        // wrong; the test sees the proxy's reaction.
        Err(error) => {
            let mut response = Response::new(Body::from(
                json!({"stand_in_upstream_bad_body": error.to_string()}).to_string(),
            ));
            *response.status_mut() = StatusCode::BAD_REQUEST;
            return response;
        }
    };
    let record = RecordedRequest {
        method: parts.method.to_string(),
        path_and_query: parts.uri.path_and_query().map_or_else(
            || parts.uri.to_string(),
            |target| target.as_str().to_owned(),
        ),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
        probe: None,
    };
    let index = {
        let mut records = lock(&shared.records);
        records.push(record.clone());
        records.len() - 1
    };
    if let Some(probe) = &shared.probe {
        let value = probe(record).await;
        if let Some(recorded) = lock(&shared.records).get_mut(index) {
            recorded.probe = Some(value);
        }
    }
    if !shared.delay.is_zero() {
        tokio::time::sleep(shared.delay).await;
    }

    let key = parts.headers.get("idempotency-key").cloned();
    let (body, replayed) = match (&shared.replays, &key) {
        (Some(replays), Some(key)) => {
            let account = parts
                .headers
                .get("stripe-account")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default();
            let slot = format!("{account}|{}", String::from_utf8_lossy(key.as_bytes()));
            let mut replays = lock(replays);
            match replays.get(&slot) {
                Some(first) => (first.clone(), true),
                None => {
                    let mut object =
                        serde_json::from_slice::<Value>(&shared.body).unwrap_or_else(|_| json!({}));
                    object["id"] = json!(format!("obj_{}", index + 1));
                    let first = Bytes::from(object.to_string());
                    replays.insert(slot, first.clone());
                    (first, false)
                }
            }
        }
        _ => (shared.body.clone(), false),
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = shared.status;
    let headers = response.headers_mut();
    if shared.replays.is_some()
        && let Some(key) = key
    {
        headers.insert("idempotency-key", key);
        if replayed {
            headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
        }
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert("x-upstream", HeaderValue::from_static("stand-in"));
    response
}

/// A poisoned lock only means another request task panicked, which is reported on its own; the records
/// themselves are still whole.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn panic_message(error: JoinError) -> String {
    match error.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|message| (*message).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(a panic without a message)".to_owned()),
        Err(error) => error.to_string(),
    }
}
