//! The quick start: no database configured, so `tollgate serve` creates and migrates the embedded SQLite
//! file, gates requests, and refuses a second server on the same file.

use tollgate_tests::Upstream;
use tollgate_tests::tollgate::{Tollgate, binary};

#[tokio::test]
async fn serve_without_a_database_uses_the_embedded_file_and_gates_requests() {
    let upstream = Upstream::builder().start().await.unwrap();
    let gate = Tollgate::builder("unused", &upstream.url())
        .embedded()
        .start()
        .await
        .unwrap();
    assert!(gate.dir().join("tollgate.db").exists(), "created on start");

    // The CLI works on the same file while the server runs.
    let key = gate
        .create_agent("first", &["--scope", "dns:write"])
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let ok = http
        .get(gate.url("/cloudflare/client/v4/zones"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let refused = http
        .post(gate.url("/cloudflare/client/v4/zones/z/not-a-route"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let (ok_cli, out, err) = gate.cli(&["decisions", "--json"]).await.unwrap();
    assert!(ok_cli, "{err}");
    let decisions: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(decisions.as_array().unwrap().len(), 2);
    let (ok_verify, out, _) = gate.cli(&["audit", "verify"]).await.unwrap();
    assert!(ok_verify, "{out}");
    assert_eq!(upstream.request_count(), 1);

    // A second server on the same file refuses to start.
    let second = tokio::process::Command::new(binary().unwrap())
        .args([
            "--config",
            gate.dir().join("tollgate.toml").to_str().unwrap(),
            "serve",
        ])
        .current_dir(gate.dir())
        .env_remove("DATABASE_URL")
        .output()
        .await
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("another tollgate is serving"), "{stderr}");
}

/// The first command on a fresh machine need not be `serve`: every command that opens the embedded default
/// migrates it first.
#[tokio::test]
async fn the_first_command_on_a_fresh_embedded_store_works() {
    let dir = tempfile::tempdir().unwrap();
    let builder = Tollgate::builder("unused", "http://127.0.0.1:9").embedded();
    let (ok, out, err) = builder
        .cli_in(dir.path(), &["agents", "create", "first", "--json"])
        .await
        .unwrap();
    assert!(ok, "{out}{err}");
    assert!(out.contains("\"key\""), "{out}");
    let (ok, out, err) = builder
        .cli_in(dir.path(), &["agents", "list"])
        .await
        .unwrap();
    assert!(ok && out.contains("first"), "{out}{err}");
    assert!(dir.path().join("tollgate.db").exists());
}
