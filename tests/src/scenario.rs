//! What the fault scenarios share: a policy that charges payments and holds large ones for a reviewer, a
//! tollgate running it on either store, and small helpers for raw agent connections and waiting.

use std::time::Duration;

use tokio::io::AsyncWriteExt as _;

use crate::TestDatabase;
use crate::books::Books;
use crate::tollgate::{Tollgate, TollgateBuilder, policy_dir_with};

/// Payments above $50 are held for a reviewer for up to 20 s; others are allowed and charged against a
/// $100 monthly cap.
pub const HOLD_POLICY: &str = r#"package tollgate

amount := to_number(input.request.body.amount) if input.action.name == "stripe.payment.create"

charge := {"cents": amount, "budget": "agent-provider-month", "cap_cents": 10000}

decision := {"outcome": "approve", "hold_seconds": 20, "reasons": [{"rule": "spend.single_charge", "message": "above $50"}], "charge": charge} if {
	amount > 5000
} else := {"outcome": "allow", "reasons": [], "charge": charge} if {
	amount >= 0
} else := {"outcome": "allow", "reasons": []}
"#;

/// Which store a scenario runs on.
#[derive(Debug, Clone, Copy)]
pub enum StoreKind {
    Postgres,
    Embedded,
}

/// tollgate with [`HOLD_POLICY`], its agent `buyer`'s key, and its books. Bind `keep` to a named variable
/// (`keep: _keep`) when destructuring: it holds what must live as long as the process (the policy
/// directory, the test database).
pub struct HoldGate {
    pub tg: Tollgate,
    pub key: String,
    pub books: Books,
    pub keep: (tempfile::TempDir, Option<TestDatabase>),
}

/// Starts tollgate with [`HOLD_POLICY`] on `store`, forwarding to `upstream_url`; `configure` adds config
/// lines.
pub async fn hold_gate_on(
    store: StoreKind,
    upstream_url: &str,
    configure: impl FnOnce(TollgateBuilder) -> TollgateBuilder,
) -> anyhow::Result<HoldGate> {
    let policy = policy_dir_with(HOLD_POLICY)?;
    let db = match store {
        StoreKind::Postgres => Some(TestDatabase::create().await?),
        StoreKind::Embedded => None,
    };
    let builder = match &db {
        Some(db) => Tollgate::builder(db.url(), upstream_url),
        None => Tollgate::builder("unused", upstream_url).embedded(),
    }
    .policy_dir(policy.path());
    let tg = configure(builder).start().await?;
    let key = tg.create_agent("buyer", &[]).await?;
    let books = match &db {
        Some(db) => Books::postgres(db.url()).await?,
        None => Books::embedded(tg.dir()).await?,
    };
    Ok(HoldGate {
        tg,
        key,
        books,
        keep: (policy, db),
    })
}

/// Sends a Stripe payment on a raw connection and closes it after `after`, without reading the answer.
pub async fn send_and_hang_up(addr: &str, key: &str, amount: i64, after: Duration) {
    use base64::Engine as _;
    let body = format!("amount={amount}&currency=usd");
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{key}:"));
    let head = format!(
        "POST /stripe/v1/payment_intents HTTP/1.1\r\nHost: t\r\nAuthorization: Basic {auth}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to tollgate");
    stream.write_all(head.as_bytes()).await.expect("write head");
    stream.write_all(body.as_bytes()).await.expect("write body");
    tokio::time::sleep(after).await;
    drop(stream);
}

/// Polls `check` every 100 ms; panics naming `what` if it is not true within 10 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not happen within 10 s");
}
