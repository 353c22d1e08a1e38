//! The end-to-end test harness for tollgate: the fixtures a test needs around the real binary.
//!
//! - [`postgres`]: a fresh, empty, real Postgres database for each test ([`TestDatabase`]), either on the
//!   server named by `DATABASE_URL` or on a private throwaway cluster started once per test process; and a
//!   private cluster of a test's own that it may restart ([`RestartableCluster`]).
//! - [`upstream`]: a stand-in provider ([`Upstream`]) that records every request it receives exactly as it
//!   arrived and answers with a configured status and JSON body.
//!
//! - [`tollgate`]: the real `tollgate` binary started on ports the OS picks, with its CLI, against one test
//!   database and one stand-in upstream.
//! - [`books`]: the store's decisions, outcomes, reservations and windows, read alike from Postgres or SQLite,
//!   and the invariants every fault scenario ends by checking.
//! - [`faultrelay`]: a TCP relay between tollgate and a server that drops connections, refuses new ones, or
//!   swallows the reply to a chosen message.
//! - [`scenario`]: the fault scenarios' shared policy, tollgate on either store, raw-connection helpers.
//! - [`sockets`]: the TCP sockets a running tollgate holds, with their options (Linux's pidfd_getfd).
//! - [`sdk`]: the agents' real SDKs (pinned in `tests/sdk/`, installed into a cache by the suite itself), the
//!   agent programs that drive them, and a stand-in that answers each request through a test's function.
//! - [`opa`]: the real OPA engine (v1.20, the pinned `opa-golib-python-bindings` wheel, installed into the same
//!   cache) and `tests/opa/run_opa.py`, which loads a policy directory as `opa test`/`opa eval -b` do.
//! - [`webdriver`]: headless Chromium (Debian's packages, installed when missing) driven over WebDriver, for
//!   the console's browser tests.
//!
//! The end-to-end tests drive the real binary from the outside; the store conformance suite
//! (`tests/store_conformance.rs`) calls the library's `Store` directly against both backends.

pub mod books;
pub mod faultrelay;
pub mod opa;
pub mod postgres;
pub mod scenario;
pub mod sdk;
pub mod sockets;
pub mod tollgate;
pub mod upstream;
pub mod webdriver;

pub use postgres::{RestartableCluster, TestDatabase};
pub use upstream::{RecordedRequest, Upstream, UpstreamBuilder};
