//! A latency baseline for tollgate: the simplest proxy that commits one decision-shaped row durably before it
//! forwards (DESIGN.md, data path step 9), built from tollgate's own libraries.
//!
//! It is a benchmark baseline, not a product: no agent, no classification, no policy, no hash chain, no
//! credential, no group commit. Each request on the agent side is answered by (1) one autocommit statement
//! (run.sh passes the file it also gives pgbench for its commit floor) on a sqlx pool, and only after that
//! commit (2) forwarding to the upstream through a hyper-util pooled client, its response passed back as it
//! comes. Served by `axum::serve` with TCP_NODELAY on the default multi-thread tokio runtime with mimalloc,
//! as tollgate is, and connected to Postgres as tollgate connects (in the clear on loopback unless the URL
//! or PGSSLMODE names a TLS mode). What tollgate adds above this program, it adds by what it does for each
//! request; what this program adds above pgbench's commit and nginx's hop is the cost of the libraries and
//! of processes waking each other on two cores.
//!
//! ```text
//! floor_proxy LISTEN UPSTREAM DATABASE_URL STATEMENT_FILE [POOL_SIZE]
//! floor_proxy 127.0.0.1:9000 http://127.0.0.1:8080 postgres://postgres@127.0.0.1/bench probe_commit.sql 4
//! ```
//! A path's first segment is the provider prefix and is dropped, as tollgate drops `/cloudflare`. It prints
//! `listening on ADDR` once it accepts connections; a failed commit answers 503 and forwards nothing.

use std::str::FromStr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::serve::ListenerExt;
use http::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Floor {
    pool: sqlx::PgPool,
    /// The statement committed for each request.
    commit: &'static str,
    client: Client<HttpConnector, Body>,
    upstream: String,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream, database_url, statement_file, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: floor_proxy LISTEN UPSTREAM DATABASE_URL STATEMENT_FILE [POOL_SIZE]");
    };
    let pool_size: u32 = rest.first().map(|s| s.parse()).transpose()?.unwrap_or(4);
    let statement = std::fs::read_to_string(statement_file)?;
    let commit: &'static str = statement.trim().trim_end_matches(';').to_string().leak();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(listen, upstream, database_url, commit, pool_size))
}

async fn serve(
    listen: &str,
    upstream: &str,
    database_url: &str,
    commit: &'static str,
    pool_size: u32,
) -> anyhow::Result<()> {
    // On loopback tollgate talks to Postgres in the clear unless the URL or PGSSLMODE names a TLS mode (see
    // store::postgres); so does this program (run.sh accepts only a local database). It names itself so that
    // run.sh can tell its connections from tollgate's.
    let mut options = PgConnectOptions::from_str(database_url)?.application_name("floor_proxy");
    let explicit_tls = database_url.contains("sslmode=")
        || database_url.contains("ssl-mode=")
        || std::env::var_os("PGSSLMODE").is_some();
    if !explicit_tls {
        options = options.ssl_mode(PgSslMode::Disable);
    }
    let pool = PgPoolOptions::new()
        .min_connections(pool_size)
        .max_connections(pool_size)
        // As tollgate's pool: no health-check round trip before every query.
        .test_before_acquire(false)
        .connect_with(options)
        .await?;
    sqlx::query(commit).execute(&pool).await?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let floor = Arc::new(Floor {
        pool,
        commit,
        client: Client::builder(TokioExecutor::new()).build(connector),
        upstream: upstream.trim_end_matches('/').to_string(),
    });
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on {}", listener.local_addr()?);
    let app = axum::Router::new().fallback(handle).with_state(floor);
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}

async fn handle(State(floor): State<Arc<Floor>>, request: Request<Body>) -> Response<Body> {
    if sqlx::query(floor.commit)
        .execute(&floor.pool)
        .await
        .is_err()
    {
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
