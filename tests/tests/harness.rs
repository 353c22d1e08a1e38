//! Self-tests of the harness: the fixtures the end-to-end tests stand on.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::Row as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tollgate_tests::{TestDatabase, Upstream};

#[tokio::test]
async fn two_databases_are_distinct_and_usable() {
    let first = TestDatabase::create().await.expect("first database");
    let second = TestDatabase::create().await.expect("second database");
    assert_ne!(first.name(), second.name());
    assert_ne!(first.url(), second.url());

    let first_pool = first.pool().await.expect("connect to the first");
    let second_pool = second.pool().await.expect("connect to the second");
    for (pool, database) in [(&first_pool, &first), (&second_pool, &second)] {
        let row = sqlx::query("SELECT 1 AS one, current_database() AS name")
            .fetch_one(pool)
            .await
            .expect("SELECT 1");
        assert_eq!(row.get::<i32, _>("one"), 1);
        assert_eq!(row.get::<String, _>("name"), database.name());
    }

    sqlx::query("CREATE TABLE only_in_first (id BIGINT PRIMARY KEY)")
        .execute(&first_pool)
        .await
        .expect("create a table in the first");
    assert_eq!(tables(&first_pool).await, ["only_in_first"]);
    assert!(tables(&second_pool).await.is_empty());

    // A dropped TestDatabase is gone from the server.
    let name = first.name().to_owned();
    first_pool.close().await;
    drop(first);
    let remaining: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_one(&second_pool)
        .await
        .expect("look up pg_database");
    assert_eq!(remaining, 0, "{name} should have been dropped");
}

#[tokio::test]
async fn many_tests_create_databases_at_once() {
    let creations = (0..8).map(|_| tokio::spawn(TestDatabase::create()));
    let mut names = Vec::new();
    for creation in creations {
        let database = creation.await.expect("join").expect("create");
        let pool = database.pool().await.expect("connect");
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&pool)
            .await
            .expect("SELECT 1");
        assert_eq!(one, 1);
        names.push(database.name().to_owned());
    }
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 8);
}

#[tokio::test]
async fn upstream_records_what_it_received_and_answers_as_configured() {
    let upstream = Upstream::builder()
        .status(201)
        .json_body(json!({"id": "cus_123"}))
        .probe(|request| async move { json!({"seen": request.path_and_query}) })
        .start()
        .await
        .expect("start the stand-in");

    let response = reqwest::Client::new()
        .post(format!(
            "{}/client/v4/zones/abc/dns_records?b=2&a=1&a=%2F",
            upstream.url()
        ))
        .header("X-Custom", "one")
        .header("authorization", "Bearer real-credential")
        .header("content-type", "application/json")
        .body(r#"{"type":"A","name":"x"}"#)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["x-upstream"], "stand-in");
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(
        response.json::<Value>().await.expect("JSON"),
        json!({"id": "cus_123"})
    );

    assert_eq!(upstream.request_count(), 1);
    let [request] = upstream.requests().try_into().expect("exactly one request");
    assert_eq!(request.method, "POST");
    assert_eq!(
        request.path_and_query,
        "/client/v4/zones/abc/dns_records?b=2&a=1&a=%2F"
    );
    assert_eq!(request.header("x-custom"), Some("one"));
    assert_eq!(request.header("X-CUSTOM"), Some("one"));
    assert_eq!(
        request.header("Authorization"),
        Some("Bearer real-credential")
    );
    assert_eq!(request.header("absent"), None);
    assert_eq!(&request.body[..], br#"{"type":"A","name":"x"}"#);
    assert_eq!(
        request.probe,
        Some(json!({"seen": "/client/v4/zones/abc/dns_records?b=2&a=1&a=%2F"}))
    );
    upstream.finish().await.expect("no failures inside");
}

#[tokio::test]
async fn upstream_defaults_and_raw_request_targets() {
    let upstream = Upstream::builder().start().await.expect("start");
    // A raw request line: an HTTP client library would normalize the dot segments away.
    let target = "/v4//a/../b/%2e%2E/c%2Fd?q=%20&q=+&x";
    let response = raw_http(
        &upstream,
        &format!("DELETE {target} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.contains("x-upstream: stand-in\r\n"), "{response}");
    let (_, body) = response
        .split_once("\r\n\r\n")
        .expect("a header/body split");
    assert_eq!(
        serde_json::from_str::<Value>(body).expect("a JSON body"),
        json!({"success": true, "errors": [], "messages": [], "result": {}})
    );

    let [request] = upstream.requests().try_into().expect("exactly one request");
    assert_eq!(request.method, "DELETE");
    assert_eq!(request.path_and_query, target);
    assert!(request.body.is_empty());
    assert_eq!(request.probe, None);
}

#[tokio::test]
async fn probe_runs_when_the_request_arrives_and_delay_holds_the_answer() {
    let upstream = Upstream::builder()
        .delay(Duration::from_millis(400))
        .probe(|_| async { json!({"probed_at": "arrival"}) })
        .start()
        .await
        .expect("start");
    let url = format!("{}/slow", upstream.url());
    let started = Instant::now();
    let pending = tokio::spawn(async move { reqwest::get(url).await.map(|r| r.status()) });

    // Recorded (and probed) at arrival, while the answer is still held back.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!pending.is_finished(), "answered before the delay");
    let requests = upstream.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].probe, Some(json!({"probed_at": "arrival"})));

    let status = pending.await.expect("join").expect("response");
    assert_eq!(status, 200);
    assert!(started.elapsed() >= Duration::from_millis(400));
}

#[tokio::test]
async fn a_panic_inside_the_upstream_fails_finish() {
    let upstream = Upstream::builder()
        .probe(|_| async { panic!("probe exploded") })
        .start()
        .await
        .expect("start");
    let response = reqwest::get(format!("{}/x", upstream.url()))
        .await
        .expect("an answer despite the panic");
    assert_eq!(response.status(), 500);
    let error = upstream.finish().await.expect_err("the panic is reported");
    assert!(format!("{error:#}").contains("probe exploded"), "{error:#}");
}

#[tokio::test]
#[should_panic(expected = "probe exploded")]
async fn a_panic_inside_the_upstream_fails_the_test_on_drop() {
    let upstream = Upstream::builder()
        .probe(|_| async { panic!("probe exploded") })
        .start()
        .await
        .expect("start");
    let _ = reqwest::get(format!("{}/x", upstream.url())).await;
    drop(upstream);
}

async fn tables(pool: &sqlx::PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_all(pool)
    .await
    .expect("list tables")
}

async fn raw_http(upstream: &Upstream, request: &str) -> String {
    let addr = upstream.url().trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write the request");
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .expect("read the response");
    String::from_utf8(response).expect("a UTF-8 response")
}
