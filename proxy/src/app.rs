//! Building and running the two listeners: agent traffic and admin.
//!
//! Owns: the agent router and its tower stack (one function, outermost layer first, each layer's place
//! explained), the admin router's mounting, and [`start`], which wires store, identity, policy, audit writer
//! and forwarder together and returns a [`Running`] server (tests start it on port 0).
//! Must not: hold business rules; every decision is made in the modules it wires together.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::serve::ListenerExt;
use tower::ServiceBuilder;
use tower_http::trace::TraceLayer;

use crate::admin::{self, Admin};
use crate::approvals::Approvals;
use crate::audit::AuditWriter;
use crate::config::Config;
use crate::error::{Envelope, Refusal, RefusalCode};
use crate::forward::Forwarder;
use crate::identity::Identity;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::policy::PolicyHandle;
use crate::proxy::{self, Gate};
use crate::store::Store;

/// How often the policy files are checked for changes.
const POLICY_WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// A started tollgate: its bound addresses and the handle that stops it.
pub struct Running {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    shutdown: tokio::sync::watch::Sender<bool>,
    draining: Arc<AtomicBool>,
    drain: std::time::Duration,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The audit writers: they finish by themselves once the agent listener (the last holder of the
    /// queue) has stopped and what was queued is written.
    audit: tokio::task::JoinHandle<()>,
    servers: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// How long shutdown waits for the audit writers to write what is still queued (upstream outcomes that
/// were lingering) before it stops them.
const AUDIT_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

impl Running {
    /// Reports draining on `/readyz` for the configured drain time, stops accepting, lets in-flight
    /// requests finish, lets the audit writers write what is queued, then stops background tasks.
    pub async fn shutdown(self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Release);
        if !self.drain.is_zero() {
            tracing::info!(
                drain_ms = self.drain.as_millis() as u64,
                "draining: /readyz reports 503"
            );
            tokio::time::sleep(self.drain).await;
        }
        let _ = self.shutdown.send(true);
        for s in self.servers {
            let _ = s.await;
        }
        let mut audit = self.audit;
        if tokio::time::timeout(AUDIT_DRAIN, &mut audit).await.is_err() {
            tracing::error!(
                "audit writers did not drain in time; queued upstream outcomes are lost"
            );
            audit.abort();
        }
        for t in self.tasks {
            t.abort();
        }
    }

    /// Waits until either listener stops (which only happens on error). The handles stay in place, so a
    /// `shutdown` after this future was cancelled still waits for in-flight requests.
    pub async fn wait(&mut self) -> std::io::Result<()> {
        let [proxy, admin] = &mut self.servers[..] else {
            return Ok(());
        };
        let joined = tokio::select! {
            r = proxy => r,
            r = admin => r,
        };
        joined.unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }
}

/// How often reservations that no lifecycle will settle any more are looked for.
const STALE_SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Flags reservations still `reserved` long after any request could still settle them (the forward's
/// timeout plus the time a lifecycle keeps retrying a settlement, plus a minute): their lifecycle ended
/// without settling (a process killed mid-request, a store away for longer than the retries). Flagged, they
/// are listed for an operator instead of silently holding budget. Every replica sweeps; the UPDATE is
/// idempotent.
fn spawn_stale_reservation_sweep(
    ledger: crate::ledger::Ledger,
    upstream_timeout: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    let age =
        upstream_timeout + crate::ledger::SETTLE_PERSISTENCE + std::time::Duration::from_secs(60);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(STALE_SWEEP_EVERY);
        loop {
            every.tick().await;
            match ledger.flag_stale(age).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(
                    flagged = n,
                    "reservations left unsettled by their requests are flagged for an operator (tollgate spend flagged)"
                ),
                Err(e) => tracing::debug!(error = %e, "stale reservation sweep failed; next time"),
            }
        }
    })
}

/// Loads the policy bundle, its route catalog and the shadow bundle named in the configuration.
pub fn load_policy(config: &Config) -> Result<PolicyHandle, String> {
    let handle = PolicyHandle::load(
        &config.policy.dir,
        config.policy.shadow_dir.as_deref(),
        config.policy.timeout,
    )
    .map_err(|e| e.to_string())?;
    let live = handle.current();
    for name in config.providers.keys() {
        if !live.catalog.has_provider(name) {
            tracing::warn!(provider = %name, "no route catalog for this provider: every call is action 'unknown'");
        }
    }
    Ok(handle)
}

/// Reloads the policy off the async workers, keeping the old bundle on failure, and reports it in metrics
/// and logs. Every trigger (file change, SIGHUP, admin API) goes through here.
pub async fn reload_policy(
    policy: &Arc<PolicyHandle>,
    metrics: &Metrics,
    trigger: &str,
) -> Result<String, String> {
    let handle = policy.clone();
    let result = tokio::task::spawn_blocking(move || handle.reload())
        .await
        .unwrap_or_else(|e| Err(format!("reload task failed: {e}")));
    match &result {
        Ok(revision) => {
            metrics
                .policy_reloads_total
                .with_label_values(&["ok"])
                .inc();
            metrics.policy_last_reload_ok.set(1);
            metrics.set_policy_revision(revision);
            tracing::info!(trigger, revision = %revision, "policy reloaded");
        }
        Err(e) => {
            metrics
                .policy_reloads_total
                .with_label_values(&["error"])
                .inc();
            metrics.policy_last_reload_ok.set(0);
            tracing::error!(trigger, error = %e, "policy reload failed; the previous bundle stays live");
        }
    }
    result
}

/// Reloads when the files change (polled: no inotify dependency, works on every filesystem, including
/// Kubernetes ConfigMap symlink swaps) and on SIGHUP.
fn spawn_policy_watch(
    policy: Arc<PolicyHandle>,
    metrics: Arc<Metrics>,
    watch: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut seen = policy.files_fingerprint();
        let mut tick = tokio::time::interval(POLICY_WATCH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            #[cfg(unix)]
            let hup_signal = async {
                match hup.as_mut() {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let hup_signal = std::future::pending::<()>();
            tokio::select! {
                _ = tick.tick() => {
                    if !watch {
                        continue;
                    }
                    let now = policy.files_fingerprint();
                    if now != seen {
                        seen = now;
                        let _ = reload_policy(&policy, &metrics, "file change").await;
                    }
                }
                _ = hup_signal => {
                    seen = policy.files_fingerprint();
                    let _ = reload_policy(&policy, &metrics, "SIGHUP").await;
                }
            }
        }
    })
}

/// Vault mode: every configured key must be the one this database's secrets were sealed under, for its id
/// (a check value is stored per key id by the first replica that starts with it). A replica given another
/// key under the same id refuses to start, naming the id and its variable, instead of sealing secrets the
/// other replicas cannot open.
async fn check_vault_keys(
    vault: &crate::vault::Vault,
    config: &crate::config::VaultConfig,
    store: &Store,
) -> anyhow::Result<()> {
    if !config.enabled {
        return Ok(());
    }
    let mine = vault
        .key_checks()
        .map_err(|e| anyhow::anyhow!("vault: {e}"))?;
    let stored = store
        .vault_key_checks(&mine)
        .await
        .map_err(|e| anyhow::anyhow!("vault: the key checks could not be read or stored: {e}"))?;
    for check in stored
        .iter()
        .filter(|c| mine.iter().any(|m| m.key_id == c.key_id))
    {
        if vault.verify_key_check(check).is_err() {
            let env = config
                .keys
                .iter()
                .find(|k| k.id == check.key_id)
                .map_or("?", |k| k.env.as_str());
            anyhow::bail!(
                "vault: key '{}' (environment variable {env}) is not the key this database's secrets were sealed \
                 under with that id; every replica needs the same key for an id (to rotate, add a new key id first)",
                check.key_id
            );
        }
    }
    Ok(())
}

/// Wires everything and binds both listeners.
pub async fn start(config: Config, store: Store) -> anyhow::Result<Running> {
    let config = Arc::new(config);
    match &config.audit.redaction_key {
        Some(key) => {
            use secrecy::ExposeSecret as _;
            crate::redact::set_key(key.expose_secret().as_bytes());
        }
        None => tracing::warn!(
            env = %config.audit.redaction_key_env,
            "no redaction key: secrets in recorded requests are replaced by a plain SHA-256, from which a short \
             secret (a CVC, an expiry) can be recovered by trying every value; set the variable to a random key \
             shared by all replicas"
        ),
    }
    // Vault mode without a usable key is refused here as well as by `serve`'s own check.
    let vault = Arc::new(
        crate::vault::Vault::from_config(&config.vault)
            .map_err(|errors| anyhow::anyhow!(errors.join("\n")))?,
    );
    check_vault_keys(&vault, &config.vault, &store).await?;
    let metrics = Arc::new(Metrics::new());
    let policy = Arc::new(load_policy(&config).map_err(anyhow::Error::msg)?);
    // Every configured provider has a usage series from the start; the store probe keeps it current.
    for provider in config.providers.keys() {
        metrics.register_provider(provider);
        metrics
            .budget_usage_ratio
            .with_label_values(&[provider])
            .set(0.0);
    }
    metrics.set_policy_revision(policy.current().bundle.revision());
    let identity = Arc::new(Identity::new(store.clone()));
    identity.refresh().await?;
    let (audit, audit_task) = AuditWriter::start(
        store.clone(),
        config.audit.writers,
        config.audit.max_batch,
        crate::audit::Checkpoints {
            every: config.audit.checkpoint_interval,
            anchors: config
                .audit
                .anchor_file
                .clone()
                .map(crate::audit::Anchors::file)
                .unwrap_or_default(),
        },
        metrics.clone(),
    );
    let forwarder = Arc::new(Forwarder::new(&config).map_err(anyhow::Error::msg)?);
    let held = Arc::new(crate::vault::held::HeldSecrets::new(
        store.clone(),
        vault.clone(),
        forwarder.own_secrets(),
        metrics.clone(),
    ));
    held.refresh(true).await?;
    let frozen = Arc::new(AtomicBool::new(store.frozen().await?));
    let approvals = Approvals::new(
        store.clone(),
        config.approvals.ttl,
        config.approvals.max_pending_per_agent,
    );
    let writers = audit.ready();

    let gate = Arc::new(Gate {
        config: config.clone(),
        policy: policy.clone(),
        identity: identity.clone(),
        audit,
        forwarder: forwarder.clone(),
        metrics: metrics.clone(),
        frozen: frozen.clone(),
        ledger: Ledger::new(store.clone()),
        approvals: approvals.clone(),
        in_flight: Default::default(),
        stored: crate::throttle::StoredBytes::new(
            config.audit.max_stored_bytes_per_agent_per_minute,
        ),
        engine_checks: Arc::new(tokio::sync::Semaphore::new(
            crate::proxy::ENGINE_CHECKS_AT_ONCE,
        )),
        vault,
        held: held.clone(),
        store: store.clone(),
        rolling: Default::default(),
    });
    let draining = Arc::new(AtomicBool::new(false));
    let admin = Arc::new(Admin {
        config: config.clone(),
        store: store.clone(),
        metrics: metrics.clone(),
        policy: policy.clone(),
        frozen,
        approvals,
        draining: draining.clone(),
        writers,
        forwarder: forwarder.clone(),
        held: held.clone(),
    });

    let proxy_listener = tokio::net::TcpListener::bind(config.server.listen).await?;
    let admin_listener = tokio::net::TcpListener::bind(config.server.admin_listen).await?;
    let proxy_addr = proxy_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    let (shutdown, watch) = tokio::sync::watch::channel(false);

    let mut tasks = vec![identity.spawn_refresh(config.server.identity_refresh)];
    tasks.push(held.spawn_refresh(config.server.identity_refresh));
    tasks.push(admin::spawn_store_probe(admin.clone()));
    tasks.push(spawn_stale_reservation_sweep(
        crate::ledger::Ledger::new(store.clone()),
        config.server.upstream_timeout,
    ));
    tasks.push(admin::spawn_control_poll(
        admin.clone(),
        config.server.identity_refresh,
    ));
    tasks.push(spawn_policy_watch(
        policy.clone(),
        metrics.clone(),
        config.policy.watch,
    ));
    // Webhook notifications run beside the request path, never on it: they read what requests and
    // reviewers stored, and queue and send from the store's outbox.
    if let Some(notifier) =
        crate::notify::Notifier::new(config.clone(), store.clone(), metrics.clone())
    {
        tasks.extend(notifier.spawn());
    }

    let stop = |mut w: tokio::sync::watch::Receiver<bool>| async move {
        let _ = w.wait_for(|s| *s).await;
    };
    let agent_app = agent_router(gate, config.server.max_concurrency);
    let admin_app = admin::router(admin.clone());
    let servers = vec![
        tokio::spawn(serve_agents(
            proxy_listener,
            agent_app,
            config.server.header_timeout,
            watch.clone(),
        )),
        tokio::spawn(
            // With the peer address: an identity header is trusted only from `admin.trusted_proxies`.
            axum::serve(
                admin_listener.tap_io(no_delay),
                admin_app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .with_graceful_shutdown(stop(watch))
            .into_future(),
        ),
    ];
    Ok(Running {
        proxy_addr,
        admin_addr,
        shutdown,
        draining,
        drain: config.server.shutdown_drain,
        tasks,
        audit: audit_task,
        servers,
    })
}

/// The agent listener's accept loop: hyper's own connection builder rather than `axum::serve`, which sets no
/// timer and so no header timeout. `header_timeout` bounds how long a connection may take to deliver a
/// request head, from its opening or from the previous response (hyper restarts it when the connection goes
/// idle), so a half-sent or idle connection is closed instead of held for ever. On shutdown the listener
/// closes and in-flight connections finish.
async fn serve_agents(
    listener: tokio::net::TcpListener,
    app: Router,
    header_timeout: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder.http2().timer(TokioTimer::new());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => break,
        };
        let mut tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of file descriptors and the like: wait a moment instead of spinning.
                tracing::warn!(error = %e, "accepting an agent connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        no_delay(&mut tcp);
        // Idle connections are closed on HTTP/2 as on HTTP/1: hyper's header timeout is HTTP/1's alone, so
        // a connection with no request in flight for `header_timeout` since it opened or since its last
        // request ended is shut down here. Only requests count: bytes (an HTTP/2 PING) do not keep it open.
        let activity = Arc::new(ConnectionActivity::default());
        activity.touch();
        let counted = CountedService {
            inner: TowerToHyperService::new(app.clone().into_service()),
            activity: activity.clone(),
        };
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(tcp), counted);
        let connection = graceful.watch(connection.into_owned());
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let mut check = tokio::time::interval(header_timeout / 2);
            check.tick().await;
            loop {
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(error = %e, "agent connection closed with an error");
                        }
                        return;
                    }
                    _ = check.tick() => {
                        if activity.idle_for() >= header_timeout {
                            tracing::debug!("closing an idle agent connection");
                            return;
                        }
                    }
                }
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// What one agent connection is doing: requests in flight, and when it last started or ended one.
#[derive(Default)]
struct ConnectionActivity {
    in_flight: std::sync::atomic::AtomicUsize,
    /// Milliseconds since `EPOCH` of the connection's opening or its last request's start or end.
    last_request_ms: std::sync::atomic::AtomicU64,
}

/// The process-wide clock origin for [`ConnectionActivity`].
static EPOCH: std::sync::LazyLock<std::time::Instant> =
    std::sync::LazyLock::new(std::time::Instant::now);

impl ConnectionActivity {
    fn touch(&self) {
        let now = EPOCH.elapsed().as_millis() as u64;
        self.last_request_ms
            .store(now, std::sync::atomic::Ordering::Relaxed);
    }

    /// How long the connection has had no request in flight (zero while one is: a held or slow request is
    /// bounded by its own timeouts).
    fn idle_for(&self) -> std::time::Duration {
        use std::sync::atomic::Ordering;
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return std::time::Duration::ZERO;
        }
        let last = self.last_request_ms.load(Ordering::Relaxed);
        let now = EPOCH.elapsed().as_millis() as u64;
        std::time::Duration::from_millis(now.saturating_sub(last))
    }
}

/// The connection's service, counting its requests in flight (until each response head is ready).
#[derive(Clone)]
struct CountedService<S> {
    inner: S,
    activity: Arc<ConnectionActivity>,
}

/// One request in flight on its connection; counted out when dropped.
struct InFlightRequest(Arc<ConnectionActivity>);

impl Drop for InFlightRequest {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        self.0.touch();
    }
}

impl<S, R, B> hyper::service::Service<R> for CountedService<S>
where
    S: hyper::service::Service<R, Response = http::Response<B>>,
    S::Future: Send + 'static,
    B: http_body::Body + Unpin,
{
    type Response = http::Response<CountedBody<B>>;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, S::Error>> + Send>,
    >;

    fn call(&self, request: R) -> Self::Future {
        self.activity
            .in_flight
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.activity.touch();
        let guard = InFlightRequest(self.activity.clone());
        let future = self.inner.call(request);
        // The request stays in flight until its response body is sent (a streamed answer reads nothing).
        Box::pin(async move {
            let response = future.await?;
            Ok(response.map(|inner| CountedBody {
                inner,
                _request: guard,
            }))
        })
    }
}

/// A response body that keeps its request counted in flight until it is dropped.
struct CountedBody<B> {
    inner: B,
    _request: InFlightRequest,
}

impl<B: http_body::Body + Unpin> http_body::Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Turns Nagle's algorithm off on an accepted connection: a response whose head and body are written
/// separately (a streamed upstream body) must not wait for the agent's delayed acknowledgement. nginx does
/// the same for keep-alive connections (`tcp_nodelay on`).
fn no_delay(tcp: &mut tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY on an accepted connection");
    }
}

/// The agent listener: one catch-all handler under the tower stack, outermost layer first.
pub fn agent_router(gate: Arc<Gate>, max_concurrency: usize) -> Router {
    let shed_metrics = gate.metrics.clone();
    let stack = ServiceBuilder::new()
        // Load shedding errors become a 503 in a neutral envelope: the shed request never reached the
        // handler, so its provider is unknown here. This is outermost so that no shed request is dropped
        // without an answer.
        .layer(HandleErrorLayer::new(move |_: tower::BoxError| {
            let metrics = shed_metrics.clone();
            async move {
                metrics.refused(crate::metrics::UNKNOWN_PROVIDER, RefusalCode::Overloaded);
                metrics
                    .requests_total
                    .with_label_values(&[
                        "unknown",
                        crate::classify::UNKNOWN_ACTION,
                        RefusalCode::Overloaded.as_str(),
                    ])
                    .inc();
                Refusal::new(RefusalCode::Overloaded, "tollgate: overloaded, retry later")
                    .into_response(Envelope::Plain, uuid::Uuid::now_v7())
            }
        }))
        // Shed instead of queueing once the concurrency limit is reached: an agent retrying beats an
        // unbounded queue that holds memory and inflates every request's latency.
        .load_shed()
        .concurrency_limit(max_concurrency)
        // Tracing inside the limits, so its spans cover only admitted requests. Request bodies are never
        // logged; the decision id in `Tollgate-Decision` is the correlation key.
        .layer(TraceLayer::new_for_http());
    // Body size and timeouts are enforced inside the handler, not by tower-http layers, because their
    // refusals must be in the provider's envelope and leave a decision record.
    Router::new()
        .fallback(proxy::handle)
        .with_state(gate)
        .layer(stack)
}
