//! The Prometheus registry and typed handles for every tollgate metric.
//!
//! Owns: metric names, help texts, label sets and buckets. Label values are bounded by construction: providers
//! come from the configuration, actions from the route catalog, codes from [`RefusalCode`]; raw paths and
//! agent keys never become labels.
//! Must not: hold logic. Modules call the handles; the admin listener renders [`Metrics::render`].

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::error::RefusalCode;

/// The provider label of requests refused before their provider is known (load shedding).
pub const UNKNOWN_PROVIDER: &str = "unknown";

/// Latency buckets from 100 µs to 30 s: the proxy's own overhead lives in the first few, upstream calls in
/// the rest.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];
/// Policy evaluations take microseconds; buckets from 2 µs to 100 ms.
const POLICY_BUCKETS: &[f64] = &[
    0.000002, 0.000005, 0.00001, 0.00002, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.005, 0.025,
    0.1,
];
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

pub struct Metrics {
    registry: Registry,
    pub requests_total: IntCounterVec,
    pub request_duration_seconds: HistogramVec,
    pub refusals_total: IntCounterVec,
    pub policy_evaluation_duration_seconds: Histogram,
    pub policy_info: IntGaugeVec,
    pub policy_reloads_total: IntCounterVec,
    pub shadow_disagreements_total: IntCounterVec,
    pub policy_engine_checks_total: IntCounterVec,
    pub upstream_duration_seconds: HistogramVec,
    pub upstream_errors_total: IntCounterVec,
    pub minted_tokens_total: IntCounterVec,
    pub vault_handles_used_total: IntCounterVec,
    pub minted_tokens_live: IntGaugeVec,
    /// Secrets every answer is screened for (tollgate's own credentials, vaulted tokens'), and vaulted
    /// secrets that did not open (a key missing from the configuration: answers cannot be screened for them).
    pub screened_secrets: IntGaugeVec,
    /// Answers cut off or withheld for carrying a secret tollgate holds.
    pub screen_trips_total: IntCounter,
    pub containments_total: IntCounterVec,
    pub audit_queue_depth: IntGauge,
    pub audit_batch_size: Histogram,
    pub audit_commit_duration_seconds: Histogram,
    pub audit_errors_total: IntCounter,
    pub audit_writer_recoveries_total: IntCounter,
    pub audit_writers_ready: IntGauge,
    pub audit_checkpoints_total: IntCounterVec,
    pub store_up: IntGauge,
    pub frozen: IntGauge,
    pub spend_committed_cents: IntCounterVec,
    pub budget_exceeded_total: IntCounterVec,
    pub approvals_pending: IntGauge,
    pub approvals_oldest_pending_seconds: IntGauge,
    pub budget_usage_ratio: GaugeVec,
    pub policy_last_reload_ok: IntGauge,
    pub approvals_total: IntCounterVec,
    pub notifications_total: IntCounterVec,
    pub notifications_pending: IntGauge,
    pub resources_recorded_total: IntCounterVec,
    pub resources_unrecorded_total: IntCounterVec,
    pub build_info: IntGaugeVec,
}

impl Metrics {
    /// Registers every metric. Registration fails only on a programming error (a duplicate or invalid name),
    /// which the unit test below catches; so the handles are built with `expect` in [`Metrics::new`].
    pub fn try_new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new_custom(Some("tollgate".to_string()), None)?;
        let requests_total = IntCounterVec::new(
            Opts::new(
                "requests_total",
                "Agent requests by provider, action and final outcome",
            ),
            &["provider", "action", "outcome"],
        )?;
        let request_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "request_duration_seconds",
                "Time from accept to response headers",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["provider", "outcome"],
        )?;
        let refusals_total = IntCounterVec::new(
            Opts::new("refusals_total", "Refusals by provider and code"),
            &["provider", "code"],
        )?;
        let policy_evaluation_duration_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "policy_evaluation_duration_seconds",
                "Time to evaluate data.tollgate.decision",
            )
            .buckets(POLICY_BUCKETS.to_vec()),
        )?;
        let policy_info = IntGaugeVec::new(
            Opts::new(
                "policy_info",
                "The loaded policy bundle revision (value is always 1)",
            ),
            &["revision"],
        )?;
        let policy_reloads_total = IntCounterVec::new(
            Opts::new(
                "policy_reloads_total",
                "Policy reload attempts by result (ok, error)",
            ),
            &["result"],
        )?;
        let shadow_disagreements_total = IntCounterVec::new(
            Opts::new(
                "shadow_disagreements_total",
                "Requests where the shadow bundle's outcome differed",
            ),
            &["action"],
        )?;
        let policy_engine_checks_total = IntCounterVec::new(
            Opts::new(
                "policy_engine_checks_total",
                "Sampled requests evaluated again on regorus's interpreter ([policy] engine_check_sample), by \
                 result: agree, disagree (outcome, reasons or charge differ from the bytecode VM's, or the \
                 interpreter failed where the VM decided), skipped (checks already running)",
            ),
            &["result"],
        )?;
        let upstream_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "upstream_duration_seconds",
                "Time from forwarding to upstream response headers",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["provider", "status_class"],
        )?;
        let upstream_errors_total = IntCounterVec::new(
            Opts::new(
                "upstream_errors_total",
                "Upstream failures by kind (connect, timeout, io)",
            ),
            &["provider", "kind"],
        )?;
        let minted_tokens_total = IntCounterVec::new(
            Opts::new(
                "minted_tokens_total",
                "Provider tokens created, rolled or deleted through tollgate, by who keeps the secret (vault, pass_through)",
            ),
            &["provider", "event", "custody"],
        )?;
        let vault_handles_used_total = IntCounterVec::new(
            Opts::new(
                "vault_handles_used_total",
                "Requests forwarded with a minted token's secret because they came with its handle",
            ),
            &["provider"],
        )?;
        let minted_tokens_live = IntGaugeVec::new(
            Opts::new(
                "minted_tokens_live",
                "Tokens minted through tollgate that are live (not deleted, not expired), by who keeps the secret; from the store, every replica reports the same",
            ),
            &["provider", "custody"],
        )?;
        let screened_secrets = IntGaugeVec::new(
            Opts::new(
                "screened_secrets",
                "Secrets every answer is screened for on this replica (state=held: tollgate's own credentials and every vaulted token's; state=unopened: vaulted secrets the configured keys do not open, which answers cannot be screened for)",
            ),
            &["state"],
        )?;
        let screen_trips_total = IntCounter::new(
            "screen_trips_total",
            "Answers cut off or withheld on this replica because they carried a secret tollgate holds (its own credentials, a vaulted token's); an agent tripping it repeatedly is refused for an hour",
        )?;
        let containments_total = IntCounterVec::new(
            Opts::new(
                "containments_total",
                "Incident containments run through this replica's admin API, by result (complete, incomplete: a token deletion failed)",
            ),
            &["result"],
        )?;
        let audit_queue_depth =
            IntGauge::new("audit_queue_depth", "Records waiting for the audit writer")?;
        let audit_batch_size = Histogram::with_opts(
            HistogramOpts::new(
                "audit_batch_size",
                "Records committed per audit transaction",
            )
            .buckets(BATCH_BUCKETS.to_vec()),
        )?;
        let audit_commit_duration_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "audit_commit_duration_seconds",
                "Time to commit one audit batch",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        let audit_errors_total = IntCounter::new(
            "audit_errors_total",
            "Audit batches or outcomes not committed",
        )?;
        let audit_writer_recoveries_total = IntCounter::new(
            "audit_writer_recoveries_total",
            "Decision writers that re-read their chain head after a batch whose outcome was unknown",
        )?;
        let audit_writers_ready = IntGauge::new(
            "audit_writers_ready",
            "Decision writers able to commit (0: no decision can be recorded, /readyz is 503)",
        )?;
        let audit_checkpoints_total = IntCounterVec::new(
            Opts::new(
                "audit_checkpoints_total",
                "Chain checkpoints written, by where (store, anchor) and result (ok, error)",
            ),
            &["target", "result"],
        )?;
        let store_up = IntGauge::new("store_up", "1 when the last store health check succeeded")?;
        let frozen = IntGauge::new(
            "frozen",
            "1 when the proxy is frozen and refuses all agent traffic",
        )?;
        let spend_committed_cents = IntCounterVec::new(
            Opts::new(
                "spend_committed_cents",
                "Cents committed to budgets after a 2xx from the provider",
            ),
            &["provider"],
        )?;
        let budget_exceeded_total = IntCounterVec::new(
            Opts::new(
                "budget_exceeded_total",
                "Requests refused because their charge would exceed the cap",
            ),
            &["provider"],
        )?;
        let approvals_pending =
            IntGauge::new("approvals_pending", "Approvals waiting for a reviewer")?;
        let approvals_oldest_pending_seconds = IntGauge::new(
            "approvals_oldest_pending_seconds",
            "How long the oldest pending approval has been waiting for a reviewer (0 when none)",
        )?;
        let budget_usage_ratio = GaugeVec::new(
            Opts::new(
                "budget_usage_ratio",
                "Highest (committed + reserved) / cap of any budget window this month, per provider",
            ),
            &["provider"],
        )?;
        let policy_last_reload_ok = IntGauge::new(
            "policy_last_reload_ok",
            "1 when the last policy reload succeeded (or none was tried), 0 while the bundle on disk is broken",
        )?;
        policy_last_reload_ok.set(1);
        let approvals_total = IntCounterVec::new(
            Opts::new(
                "approvals_total",
                "Approval events: requested, approved, denied, consumed, retried (a same-key retry of the consuming request), invalid",
            ),
            &["result"],
        )?;
        let notifications_total = IntCounterVec::new(
            Opts::new(
                "notifications_total",
                "Webhook delivery attempts by webhook name and result: delivered, retried (failed, will retry), failed (given up)",
            ),
            &["webhook", "result"],
        )?;
        let notifications_pending = IntGauge::new(
            "notifications_pending",
            "Webhook deliveries queued or waiting for a retry (shared by all replicas)",
        )?;
        let resources_recorded_total = IntCounterVec::new(
            Opts::new(
                "resources_recorded_total",
                "Resources agents created through tollgate, recorded for incident reports, by provider and kind",
            ),
            &["provider", "kind"],
        )?;
        let resources_unrecorded_total = IntCounterVec::new(
            Opts::new(
                "resources_unrecorded_total",
                "2xx answers to create actions whose resource was not recorded (answer passed on unchanged), by \
                 provider and reason: answer_unread (too large or too slow), no_id, store",
            ),
            &["provider", "reason"],
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new("build_info", "Build version (value is always 1)"),
            &["version"],
        )?;

        registry.register(Box::new(requests_total.clone()))?;
        registry.register(Box::new(request_duration_seconds.clone()))?;
        registry.register(Box::new(refusals_total.clone()))?;
        registry.register(Box::new(policy_evaluation_duration_seconds.clone()))?;
        registry.register(Box::new(policy_info.clone()))?;
        registry.register(Box::new(policy_reloads_total.clone()))?;
        registry.register(Box::new(shadow_disagreements_total.clone()))?;
        registry.register(Box::new(policy_engine_checks_total.clone()))?;
        registry.register(Box::new(upstream_duration_seconds.clone()))?;
        registry.register(Box::new(upstream_errors_total.clone()))?;
        registry.register(Box::new(minted_tokens_total.clone()))?;
        registry.register(Box::new(vault_handles_used_total.clone()))?;
        registry.register(Box::new(minted_tokens_live.clone()))?;
        registry.register(Box::new(screened_secrets.clone()))?;
        for state in ["held", "unopened"] {
            screened_secrets.with_label_values(&[state]).set(0);
        }
        registry.register(Box::new(screen_trips_total.clone()))?;
        registry.register(Box::new(containments_total.clone()))?;
        for result in ["complete", "incomplete"] {
            containments_total.with_label_values(&[result]);
        }
        registry.register(Box::new(audit_queue_depth.clone()))?;
        registry.register(Box::new(audit_batch_size.clone()))?;
        registry.register(Box::new(audit_commit_duration_seconds.clone()))?;
        registry.register(Box::new(audit_errors_total.clone()))?;
        registry.register(Box::new(audit_writer_recoveries_total.clone()))?;
        registry.register(Box::new(audit_writers_ready.clone()))?;
        registry.register(Box::new(audit_checkpoints_total.clone()))?;
        registry.register(Box::new(store_up.clone()))?;
        registry.register(Box::new(frozen.clone()))?;
        registry.register(Box::new(build_info.clone()))?;
        registry.register(Box::new(spend_committed_cents.clone()))?;
        registry.register(Box::new(budget_exceeded_total.clone()))?;
        registry.register(Box::new(approvals_pending.clone()))?;
        registry.register(Box::new(approvals_total.clone()))?;
        registry.register(Box::new(approvals_oldest_pending_seconds.clone()))?;
        registry.register(Box::new(budget_usage_ratio.clone()))?;
        registry.register(Box::new(policy_last_reload_ok.clone()))?;
        registry.register(Box::new(notifications_total.clone()))?;
        registry.register(Box::new(notifications_pending.clone()))?;
        registry.register(Box::new(resources_recorded_total.clone()))?;
        registry.register(Box::new(resources_unrecorded_total.clone()))?;

        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Every refusal code exists from the start, so a dashboard's rate() has a series to work on ("unknown":
        // refusals before the provider is known, e.g. load shedding; `register_provider` adds the others).
        for code in RefusalCode::ALL {
            refusals_total.with_label_values(&[UNKNOWN_PROVIDER, code.as_str()]);
        }
        Ok(Metrics {
            registry,
            requests_total,
            request_duration_seconds,
            refusals_total,
            policy_evaluation_duration_seconds,
            policy_info,
            policy_reloads_total,
            shadow_disagreements_total,
            policy_engine_checks_total,
            upstream_duration_seconds,
            upstream_errors_total,
            minted_tokens_total,
            vault_handles_used_total,
            minted_tokens_live,
            screened_secrets,
            screen_trips_total,
            containments_total,
            audit_queue_depth,
            audit_batch_size,
            audit_commit_duration_seconds,
            audit_errors_total,
            audit_writer_recoveries_total,
            audit_writers_ready,
            audit_checkpoints_total,
            store_up,
            frozen,
            spend_committed_cents,
            budget_exceeded_total,
            approvals_pending,
            approvals_oldest_pending_seconds,
            budget_usage_ratio,
            policy_last_reload_ok,
            approvals_total,
            notifications_total,
            notifications_pending,
            resources_recorded_total,
            resources_unrecorded_total,
            build_info,
        })
    }

    /// Counts one refusal.
    pub fn refused(&self, provider: &str, code: RefusalCode) {
        self.refusals_total
            .with_label_values(&[provider, code.as_str()])
            .inc();
    }

    /// Creates a configured provider's refusal series at zero, so that its rates exist before its first
    /// refusal.
    pub fn register_provider(&self, provider: &str) {
        for code in RefusalCode::ALL {
            self.refusals_total
                .with_label_values(&[provider, code.as_str()]);
        }
        // Handles and minted tokens start at zero, so their panels show 0 rather than "No data".
        self.vault_handles_used_total.with_label_values(&[provider]);
        for event in ["created", "rolled", "updated", "deleted"] {
            for custody in ["vault", "pass_through"] {
                self.minted_tokens_total
                    .with_label_values(&[provider, event, custody]);
            }
        }
        for reason in ["answer_unread", "no_id", "store"] {
            self.resources_unrecorded_total
                .with_label_values(&[provider, reason]);
        }
    }

    pub fn new() -> Metrics {
        // Infallible in practice: names and labels are constants checked by `metrics_register` below.
        #[allow(clippy::expect_used)]
        Metrics::try_new().expect("metric definitions are valid")
    }

    /// Publishes the loaded policy revision, clearing the previous one.
    pub fn set_policy_revision(&self, revision: &str) {
        self.policy_info.reset();
        self.policy_info.with_label_values(&[revision]).set(1);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The status class label of an upstream response ("2xx" … "5xx").
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_register() {
        let m = Metrics::try_new().unwrap();
        m.requests_total
            .with_label_values(&["cloudflare", "cloudflare.dns.create", "allow"])
            .inc();
        let text = m.render();
        assert!(text.contains("tollgate_requests_total{action=\"cloudflare.dns.create\",outcome=\"allow\",provider=\"cloudflare\"} 1"), "{text}");
        assert!(text.contains("tollgate_build_info"));
        assert!(text.contains("tollgate_refusals_total{code=\"frozen\",provider=\"unknown\"} 0"));
        m.register_provider("stripe");
        m.refused("stripe", RefusalCode::BudgetExceeded);
        let text = m.render();
        assert!(text.contains("tollgate_refusals_total{code=\"frozen\",provider=\"stripe\"} 0"));
        assert!(
            text.contains(
                "tollgate_refusals_total{code=\"budget_exceeded\",provider=\"stripe\"} 1"
            )
        );
    }
}
