//! The end-to-end test harness for tollgate: the fixtures a test needs around the real binary.
//!
//! - [`postgres`]: a fresh, empty, real Postgres database for each test ([`TestDatabase`]), either on the
//!   server named by `DATABASE_URL` or on a private throwaway cluster started once per test process.
//! - [`upstream`]: a stand-in provider ([`Upstream`]) that records every request it receives exactly as it
//!   arrived and answers with a configured status and JSON body.
//!
//! This crate must not depend on `tollgate` itself: the tests drive the real binary from the outside, and the
//! harness has to build while the proxy crate is being changed.

pub mod postgres;
pub mod upstream;

pub use postgres::TestDatabase;
pub use upstream::{RecordedRequest, Upstream, UpstreamBuilder};
