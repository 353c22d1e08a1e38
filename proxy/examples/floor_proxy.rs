//! The floor under tollgate's latency: the least any proxy can do that commits one decision-shaped row
//! durably before it forwards (DESIGN.md, data path step 9), built from tollgate's own libraries.
//!
//! It is a benchmark baseline, not a product: no agent, no classification, no policy, no hash chain, no
//! credential. Each request on the agent side is answered by (1) one autocommit `INSERT` of a decision row,
//! the same statement `tests/bench/run.sh` gives pgbench for its commit floor, on a sqlx pool over loopback,
//! and only after that commit (2) forwarding to the upstream through a hyper-util pooled client, its
//! response passed back as it comes. Served by `axum::serve` on a multi-thread tokio runtime with two
//! workers and mimalloc, as tollgate is. What tollgate adds above this program, it adds by what it does for
//! each request; what this program adds above pgbench's commit and nginx's hop is the cost of the libraries
//! and of two processes waking each other on two cores.
//!
//! ```text
//! floor_proxy LISTEN UPSTREAM DATABASE_URL [POOL_SIZE]
//! floor_proxy 127.0.0.1:9000 http://127.0.0.1:8080 postgres://postgres@127.0.0.1/bench 4
//! ```
//! The database must hold `commit_probe` and `commit_probe_src` (run.sh creates them). A path's first
//! segment is the provider prefix and is dropped, as tollgate drops `/cloudflare`. It prints `listening on
//! ADDR` once it accepts connections; a failed commit answers 503 and forwards nothing.

use std::str::FromStr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use http::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The pgbench probe's statement: a fresh id, time and sequence number over a copy of a real decision row.
const COMMIT: &str = "INSERT INTO commit_probe SELECT gen_random_uuid(), clock_timestamp(), writer_id, \
    nextval('commit_probe_seq'), prev_hash, hash, agent_id, agent_name, run_id, on_behalf_of, provider, method, \
    path, query, action, risk, outcome, code, rules, reasons, policy_revision, charge_cents, approval_id, input, \
    policy_outcome, shadow_outcome FROM commit_probe_src";

struct Floor {
    pool: sqlx::PgPool,
    client: Client<HttpConnector, Body>,
    upstream: String,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream, database_url, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: floor_proxy LISTEN UPSTREAM DATABASE_URL [POOL_SIZE]");
    };
    let pool_size: u32 = rest.first().map(|s| s.parse()).transpose()?.unwrap_or(4);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(serve(listen, upstream, database_url, pool_size))
}

async fn serve(
    listen: &str,
    upstream: &str,
    database_url: &str,
    pool_size: u32,
) -> anyhow::Result<()> {
    // On loopback tollgate talks to Postgres in the clear unless the URL asks for TLS (see store::nodelay);
    // so does this program, and it names itself so that run.sh can tell its connections from tollgate's.
    let mut options = PgConnectOptions::from_str(database_url)?.application_name("floor_proxy");
    if !database_url.contains("sslmode=") {
        options = options.ssl_mode(PgSslMode::Disable);
    }
    let pool = PgPoolOptions::new()
        .min_connections(pool_size)
        .max_connections(pool_size)
        // As tollgate's pool: no health-check round trip before every query.
        .test_before_acquire(false)
        .connect_with(options)
        .await?;
    sqlx::query(COMMIT).execute(&pool).await?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let floor = Arc::new(Floor {
        pool,
        client: Client::builder(TokioExecutor::new()).build(connector),
        upstream: upstream.trim_end_matches('/').to_string(),
    });
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on {}", listener.local_addr()?);
    let app = axum::Router::new().fallback(handle).with_state(floor);
    axum::serve(listener, app).await?;
    Ok(())
}

async fn handle(State(floor): State<Arc<Floor>>, request: Request<Body>) -> Response<Body> {
    if sqlx::query(COMMIT).execute(&floor.pool).await.is_err() {
        return status(StatusCode::SERVICE_UNAVAILABLE);
    }
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let rest = path
        .strip_prefix('/')
        .and_then(|p| p.find('/').map(|i| &p[i..]))
        .unwrap_or("/");
    let Ok(uri) = format!("{}{}", floor.upstream, rest).parse::<Uri>() else {
        return status(StatusCode::BAD_REQUEST);
    };
    parts.uri = uri;
    parts.headers.remove(http::header::HOST);
    match floor.client.request(Request::from_parts(parts, body)).await {
        Ok(response) => response.map(Body::new),
        Err(_) => status(StatusCode::BAD_GATEWAY),
    }
}

fn status(code: StatusCode) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = code;
    response
}
