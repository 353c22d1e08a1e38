//! tollgate: a policy-gating reverse proxy between AI agents and the provider APIs they provision with.
//!
//! The request lifecycle lives in [`proxy`]; [`app`] wires the modules together; `ARCHITECTURE.md` at the
//! repository root has the code map and the invariants each module keeps.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod app;
pub mod approvals;
pub mod audit;
pub mod body;
pub mod canon;
pub mod classify;
pub mod cli;
pub mod config;
pub mod console;
pub mod containment;
pub mod datafile;
pub mod display;
pub mod error;
pub mod forward;
pub mod identity;
pub mod incident;
pub mod ledger;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod policy_diff;
pub mod policy_lint;
pub mod proxy;
pub mod redact;
pub mod remote;
pub mod resources;
pub mod reviewers;
pub mod store;
pub mod throttle;
pub mod vault;

/// The response header naming the decision record of every request.
pub const DECISION_HEADER: http::HeaderName = http::HeaderName::from_static("tollgate-decision");

/// The response header carrying the refusal code on every answer tollgate itself refused (never on a
/// provider's answer: `Tollgate-*` headers from upstream are stripped).
pub const REFUSAL_HEADER: http::HeaderName = http::HeaderName::from_static("tollgate-refusal");
