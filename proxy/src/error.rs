//! Refusals and their one mapping to an HTTP response in the provider's own error envelope.
//!
//! Owns: the stable refusal codes of the external contract, whose fault each one is, and the rendering of a
//! refusal as a Cloudflare or Stripe error body with a `tollgate` object beside it. Every refusal the proxy
//! sends goes through [`Refusal::into_response`]; nothing else builds an error response for agent traffic.
//! Must not: decide anything. Messages built here never include secrets or internal error details: an
//! unexpected failure is logged where it happens and reaches the agent as a generic 5xx message.

use http::{HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

/// The longest refusal message, in bytes.
const MAX_MESSAGE: usize = 1024;

/// The stable refusal codes of the external contract (DESIGN.md, "HTTP, agent side").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalCode {
    RequestMalformed,
    /// The first request with this Idempotency-Key has no answer yet (409, retry shortly), as the provider
    /// itself answers a concurrent repeat.
    IdempotencyKeyInUse,
    /// This Idempotency-Key was used for another request within the provider's replay window (400; Stripe's
    /// own `idempotency_error`).
    IdempotencyKeyReused,
    AgentUnauthenticated,
    /// The agent did not send its request body in time (`server.body_timeout_ms`).
    RequestTimeout,
    PolicyDenied,
    ApprovalRequired,
    ApprovalInvalid,
    BudgetExceeded,
    BodyTooLarge,
    /// The agent added more to the decision log than `audit.max_stored_bytes_per_agent_per_minute`
    /// allows (429, with Retry-After).
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
    StoreUnavailable,
    PolicyUnavailable,
    Frozen,
    Overloaded,
}

/// Whose fault a refusal is; decides the status class and the Stripe error type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The agent sent something we refuse (4xx).
    Agent,
    /// The provider failed or was too slow (502/504).
    Upstream,
    /// tollgate itself cannot judge or record safely right now (503); it fails closed.
    Tollgate,
}

/// Which provider error envelope a refusal is rendered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Envelope {
    Cloudflare,
    Stripe,
    /// For requests that name no configured provider.
    Plain,
}

/// A request tollgate will not forward, or could not complete: code, message for the agent, and the rule
/// or approval it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    code: RefusalCode,
    message: String,
    rule: Option<String>,
    approval_id: Option<String>,
    /// The approval's status (`pending`, `approved`) when `approval_id` is set: a client (the rollback
    /// executor) reads it from `Tollgate-Approval-Status` rather than the message.
    approval_status: Option<&'static str>,
    /// The provider may already have acted: tell SDKs not to retry automatically.
    not_retryable: bool,
    /// Seconds after which a retry can succeed (`Retry-After`).
    retry_after: Option<u64>,
}

impl RefusalCode {
    pub const ALL: [RefusalCode; 17] = [
        RefusalCode::RequestMalformed,
        RefusalCode::IdempotencyKeyInUse,
        RefusalCode::IdempotencyKeyReused,
        RefusalCode::RequestTimeout,
        RefusalCode::AgentUnauthenticated,
        RefusalCode::PolicyDenied,
        RefusalCode::ApprovalRequired,
        RefusalCode::ApprovalInvalid,
        RefusalCode::BudgetExceeded,
        RefusalCode::BodyTooLarge,
        RefusalCode::RateLimited,
        RefusalCode::UpstreamError,
        RefusalCode::UpstreamTimeout,
        RefusalCode::StoreUnavailable,
        RefusalCode::PolicyUnavailable,
        RefusalCode::Frozen,
        RefusalCode::Overloaded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCode::RequestMalformed => "request_malformed",
            RefusalCode::IdempotencyKeyInUse => "idempotency_key_in_use",
            RefusalCode::IdempotencyKeyReused => "idempotency_key_reused",
            RefusalCode::RequestTimeout => "request_timeout",
            RefusalCode::AgentUnauthenticated => "agent_unauthenticated",
            RefusalCode::PolicyDenied => "policy_denied",
            RefusalCode::ApprovalRequired => "approval_required",
            RefusalCode::ApprovalInvalid => "approval_invalid",
            RefusalCode::BudgetExceeded => "budget_exceeded",
            RefusalCode::BodyTooLarge => "body_too_large",
            RefusalCode::RateLimited => "rate_limited",
            RefusalCode::UpstreamError => "upstream_error",
            RefusalCode::UpstreamTimeout => "upstream_timeout",
            RefusalCode::StoreUnavailable => "store_unavailable",
            RefusalCode::PolicyUnavailable => "policy_unavailable",
            RefusalCode::Frozen => "frozen",
            RefusalCode::Overloaded => "overloaded",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            RefusalCode::RequestMalformed | RefusalCode::IdempotencyKeyReused => {
                StatusCode::BAD_REQUEST
            }
            RefusalCode::IdempotencyKeyInUse => StatusCode::CONFLICT,
            RefusalCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            RefusalCode::AgentUnauthenticated => StatusCode::UNAUTHORIZED,
            RefusalCode::PolicyDenied
            | RefusalCode::ApprovalRequired
            | RefusalCode::ApprovalInvalid
            | RefusalCode::BudgetExceeded => StatusCode::FORBIDDEN,
            RefusalCode::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            RefusalCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            RefusalCode::UpstreamError => StatusCode::BAD_GATEWAY,
            RefusalCode::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            RefusalCode::StoreUnavailable
            | RefusalCode::PolicyUnavailable
            | RefusalCode::Frozen
            | RefusalCode::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn fault(self) -> Fault {
        match self.status().as_u16() {
            400..=499 => Fault::Agent,
            502 | 504 => Fault::Upstream,
            _ => Fault::Tollgate,
        }
    }

    /// The numeric code in a Cloudflare `errors[]` entry. Cloudflare's own codes are four to five digits;
    /// tollgate's live in a block of their own (7400-7599) so a client can tell them apart.
    fn cloudflare_number(self) -> u32 {
        match self {
            RefusalCode::RequestMalformed => 7400,
            RefusalCode::IdempotencyKeyInUse => 7409,
            RefusalCode::IdempotencyKeyReused => 7407,
            RefusalCode::RequestTimeout => 7408,
            RefusalCode::AgentUnauthenticated => 7401,
            RefusalCode::PolicyDenied => 7403,
            RefusalCode::ApprovalRequired => 7404,
            RefusalCode::ApprovalInvalid => 7405,
            RefusalCode::BudgetExceeded => 7406,
            RefusalCode::BodyTooLarge => 7413,
            RefusalCode::RateLimited => 7429,
            RefusalCode::UpstreamError => 7502,
            RefusalCode::UpstreamTimeout => 7504,
            RefusalCode::StoreUnavailable => 7503,
            RefusalCode::PolicyUnavailable => 7510,
            RefusalCode::Frozen => 7511,
            RefusalCode::Overloaded => 7512,
        }
    }
}

impl Refusal {
    pub fn new(code: RefusalCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        // A message may quote what the agent sent (a header token, a parameter): it is echoed and recorded,
        // so it is bounded.
        if message.len() > MAX_MESSAGE {
            let cut = (0..=MAX_MESSAGE)
                .rev()
                .find(|i| message.is_char_boundary(*i))
                .unwrap_or(0);
            message.truncate(cut);
            message.push_str("… (truncated)");
        }
        Refusal {
            code,
            message,
            rule: None,
            approval_id: None,
            approval_status: None,
            not_retryable: false,
            retry_after: None,
        }
    }

    /// Adds `Retry-After: secs` (at least 1).
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }

    /// Marks a refusal after which an automatic retry could repeat an action the provider already took
    /// (a timeout or broken exchange after the request was sent): the response carries
    /// `x-should-retry: false`, which generated provider SDKs honour.
    pub fn not_retryable(mut self) -> Self {
        self.not_retryable = true;
        self
    }

    pub fn with_rule(mut self, rule: impl Into<String>) -> Self {
        self.rule = Some(rule.into());
        self
    }

    pub fn with_approval(mut self, approval_id: impl Into<String>) -> Self {
        self.approval_id = Some(approval_id.into());
        self
    }

    /// The status of the approval this refusal names: `approved` tells the client to resend with
    /// `Tollgate-Approval`.
    pub fn with_approval_status(mut self, status: &'static str) -> Self {
        self.approval_status = Some(status);
        self
    }

    pub fn malformed(message: impl Into<String>) -> Self {
        Refusal::new(RefusalCode::RequestMalformed, message)
    }

    pub fn unauthenticated() -> Self {
        // One message for missing, unknown, revoked and expired keys: telling them apart would let a
        // caller probe which keys exist.
        Refusal::new(
            RefusalCode::AgentUnauthenticated,
            "tollgate: missing, unknown, revoked or expired agent key",
        )
    }

    pub fn store_unavailable() -> Self {
        Refusal::new(
            RefusalCode::StoreUnavailable,
            "tollgate: the decision store is unavailable; the request was not forwarded",
        )
    }

    pub fn policy_unavailable() -> Self {
        Refusal::new(
            RefusalCode::PolicyUnavailable,
            "tollgate: the policy could not produce a decision; the request was not forwarded",
        )
    }

    pub fn code(&self) -> RefusalCode {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn rule(&self) -> Option<&str> {
        self.rule.as_deref()
    }

    pub fn approval_id(&self) -> Option<&str> {
        self.approval_id.as_deref()
    }

    /// The JSON body of this refusal in `envelope`, with the `tollgate` object the contract adds.
    pub fn body(&self, envelope: Envelope, decision_id: Uuid) -> Value {
        let tollgate = json!({
            "code": self.code.as_str(),
            "decision_id": decision_id.to_string(),
            "rule": self.rule,
            "approval_id": self.approval_id,
            "approval_status": self.approval_status,
        });
        match envelope {
            Envelope::Cloudflare => json!({
                "success": false,
                "errors": [{"code": self.code.cloudflare_number(), "message": self.message}],
                "messages": [],
                "result": null,
                "tollgate": tollgate,
            }),
            Envelope::Stripe => {
                let kind = match (self.code, self.code.fault()) {
                    (RefusalCode::IdempotencyKeyReused, _) => "idempotency_error",
                    (_, Fault::Agent) => "invalid_request_error",
                    (_, Fault::Upstream | Fault::Tollgate) => "api_error",
                };
                // The SDKs keep only the `error` member (stripe-node's `StripeError.raw`, stripe-python's
                // `e.error`): the tollgate facts are repeated inside it, and `code` is tollgate's code.
                json!({
                    "error": {
                        "type": kind,
                        "code": self.code.as_str(),
                        "message": self.message,
                        "tollgate_decision_id": decision_id.to_string(),
                        "tollgate_approval_id": self.approval_id,
                        "tollgate_rule": self.rule,
                    },
                    "tollgate": tollgate,
                })
            }
            Envelope::Plain => json!({
                "error": {"code": self.code.as_str(), "message": self.message},
                "tollgate": tollgate,
            }),
        }
    }

    /// The one place a refusal becomes an HTTP response.
    pub fn into_response(
        self,
        envelope: Envelope,
        decision_id: Uuid,
    ) -> http::Response<axum::body::Body> {
        let body = self.body(envelope, decision_id).to_string();
        let mut response = http::Response::new(axum::body::Body::from(body));
        *response.status_mut() = self.code.status();
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Ok(value) = HeaderValue::from_str(&decision_id.to_string()) {
            headers.insert(crate::DECISION_HEADER, value);
        }
        // Marks the answer as tollgate's own refusal: the forwarder strips `Tollgate-*` from every
        // provider answer, so a client (the rollback executor) may trust this header and nothing in a body.
        headers.insert(
            crate::REFUSAL_HEADER,
            HeaderValue::from_static(self.code.as_str()),
        );
        if self.not_retryable {
            // `x-should-retry` is read by the Stainless-generated SDKs (Cloudflare's), `Stripe-Should-Retry`
            // by Stripe's.
            for name in ["x-should-retry", "stripe-should-retry"] {
                headers.insert(
                    http::HeaderName::from_static(name),
                    HeaderValue::from_static("false"),
                );
            }
        }
        if let Some(value) = self
            .approval_id
            .as_deref()
            .and_then(|id| HeaderValue::from_str(id).ok())
        {
            headers.insert(http::HeaderName::from_static("tollgate-approval-id"), value);
        }
        if let Some(status) = self.approval_status {
            headers.insert(
                http::HeaderName::from_static("tollgate-approval-status"),
                HeaderValue::from_static(status),
            );
        }
        if let Some(secs) = self.retry_after {
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.code == RefusalCode::AgentUnauthenticated {
            headers.insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tollgate\""),
            );
        }
        response
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_status_in_its_fault_class() {
        for code in RefusalCode::ALL {
            let status = code.status().as_u16();
            match code.fault() {
                Fault::Agent => assert!((400..500).contains(&status), "{code:?}"),
                Fault::Upstream => assert!(status == 502 || status == 504, "{code:?}"),
                Fault::Tollgate => assert_eq!(status, 503, "{code:?}"),
            }
        }
    }

    #[test]
    fn messages_are_bounded() {
        let long = format!("tollgate: bad token {}", "é".repeat(5000));
        let r = Refusal::malformed(long);
        assert!(
            r.message().len() <= MAX_MESSAGE + 20,
            "{}",
            r.message().len()
        );
        assert!(r.message().ends_with("(truncated)"));
    }

    #[test]
    fn cloudflare_envelope_keeps_the_provider_shape() {
        let id = Uuid::nil();
        let body = Refusal::new(RefusalCode::PolicyDenied, "no")
            .with_rule("tokens.ceiling")
            .body(Envelope::Cloudflare, id);
        assert_eq!(body["success"], false);
        assert_eq!(body["errors"][0]["message"], "no");
        assert_eq!(body["tollgate"]["code"], "policy_denied");
        assert_eq!(body["tollgate"]["rule"], "tokens.ceiling");
        assert_eq!(body["tollgate"]["decision_id"], id.to_string());
    }

    #[test]
    fn stripe_envelope_types_by_fault() {
        let id = Uuid::nil();
        let agent = Refusal::malformed("bad").body(Envelope::Stripe, id);
        assert_eq!(agent["error"]["type"], "invalid_request_error");
        assert_eq!(agent["error"]["code"], "request_malformed");
        assert_eq!(agent["error"]["tollgate_decision_id"], id.to_string());
        let reused = Refusal::new(RefusalCode::IdempotencyKeyReused, "other body")
            .body(Envelope::Stripe, id);
        assert_eq!(reused["error"]["type"], "idempotency_error");
        let held = Refusal::new(RefusalCode::ApprovalRequired, "held")
            .with_approval("a1")
            .with_approval_status("approved")
            .into_response(Envelope::Stripe, id);
        assert_eq!(held.headers()["tollgate-approval-id"], "a1");
        assert_eq!(held.headers()["tollgate-approval-status"], "approved");
        assert_eq!(held.headers()["tollgate-refusal"], "approval_required");
        let ours = Refusal::store_unavailable().body(Envelope::Stripe, id);
        assert_eq!(ours["error"]["type"], "api_error");
    }
}
