//! The deployment artifacts under `deploy/` checked against what tollgate really has.
//!
//! Docker and Kubernetes are not available where the tests run, so the Dockerfile, the compose file, the
//! Kubernetes manifests and the systemd unit are parsed and cross-checked statically: ports against the
//! listen addresses the environment sets, probes against the admin listener's health endpoints, `TOLLGATE_*__*`
//! variables against the keys of `deploy/tollgate.toml`, secrets against the variables the configuration
//! names, subcommands against the real binary's `--help`, copied paths against the repository, and the
//! Kubernetes policy volume against `policies/`. Then the real binary is started with only the environment
//! the Kubernetes Deployment gives it (and the policy bundle laid out the way the kubelet lays out the
//! projected volume), and must become ready on a real database.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use serde_json::Value as Json;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tollgate_tests::TestDatabase;
use yaml_serde::Value as Yaml;

// ---------------------------------------------------------------------------------------------- helpers

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root")
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every document of a (multi-document) YAML file, with `<<` merge keys applied; empty documents skipped.
fn yaml_docs(path: &Path) -> Vec<Yaml> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    // Documents are separated by `---` lines (none of the files has one inside a block scalar).
    let mut chunks = vec![String::new()];
    for line in text.lines() {
        if line == "---" || line.starts_with("--- ") {
            chunks.push(String::new());
        } else if let Some(last) = chunks.last_mut() {
            last.push_str(line);
            last.push('\n');
        }
    }
    let mut docs = Vec::new();
    for chunk in chunks {
        let mut value: Yaml = yaml_serde::from_str(&chunk)
            .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
        value
            .apply_merge()
            .unwrap_or_else(|e| panic!("{}: merge keys: {e}", path.display()));
        if !value.is_null() {
            docs.push(value);
        }
    }
    docs
}

fn yaml_one(rel: &str) -> Yaml {
    let mut docs = yaml_docs(&repo().join(rel));
    assert_eq!(docs.len(), 1, "{rel}: expected one YAML document");
    docs.remove(0)
}

/// `value[a][b]…`, or Null.
fn at<'a>(value: &'a Yaml, path: &[&str]) -> &'a Yaml {
    static NULL: Yaml = Yaml::Null;
    path.iter()
        .try_fold(value, |v, k| v.get(*k))
        .unwrap_or(&NULL)
}

fn str_at<'a>(value: &'a Yaml, path: &[&str]) -> &'a str {
    at(value, path)
        .as_str()
        .unwrap_or_else(|| panic!("expected a string at {path:?} in {value:?}"))
}

fn seq_at<'a>(value: &'a Yaml, path: &[&str]) -> &'a [Yaml] {
    at(value, path)
        .as_sequence()
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// A YAML scalar as text (numbers and booleans too).
fn scalar(value: &Yaml) -> String {
    match value {
        Yaml::String(s) => s.clone(),
        Yaml::Number(n) => n.to_string(),
        Yaml::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

fn port_of(addr: &str) -> u16 {
    addr.parse::<SocketAddr>()
        .unwrap_or_else(|_| panic!("'{addr}' is not an address like 0.0.0.0:8080"))
        .port()
}

/// The example configuration, `deploy/tollgate.toml`: the documented keys.
fn example_config() -> toml::Table {
    read("deploy/tollgate.toml")
        .parse()
        .expect("deploy/tollgate.toml parses")
}

/// Every leaf key of a TOML table as a path (`server.listen`, `providers.stripe.credential.env`).
fn leaf_paths(table: &toml::Table) -> BTreeSet<Vec<String>> {
    fn walk(table: &toml::Table, prefix: &mut Vec<String>, out: &mut BTreeSet<Vec<String>>) {
        for (k, v) in table {
            prefix.push(k.clone());
            match v {
                toml::Value::Table(t) => walk(t, prefix, out),
                _ => {
                    out.insert(prefix.clone());
                }
            }
            prefix.pop();
        }
    }
    let mut out = BTreeSet::new();
    walk(table, &mut Vec::new(), &mut out);
    out
}

/// Asserts that `TOLLGATE_SECTION__KEY[__KEY…]` names a key of the example configuration. Variables without
/// `__` (TOLLGATE_ADMIN_TOKEN, TOLLGATE_CONFIG) are not overrides and are ignored, as tollgate ignores them.
fn assert_override_is_a_config_key(var: &str, keys: &BTreeSet<Vec<String>>, whence: &str) {
    let Some(rest) = var.strip_prefix("TOLLGATE_") else {
        return;
    };
    if !rest.contains("__") {
        return;
    }
    let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
    assert!(
        keys.contains(&path),
        "{whence}: {var} overrides '{}', which is not a key of deploy/tollgate.toml",
        path.join(".")
    );
}

/// The environment variables a configuration names for secrets: every `providers.*.credential.env` and
/// `admin.token_env`.
fn secret_vars(config: &toml::Table) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Some(providers) = config.get("providers").and_then(|p| p.as_table()) {
        for (name, p) in providers {
            let env = p
                .get("credential")
                .and_then(|c| c.get("env"))
                .and_then(|e| e.as_str())
                .unwrap_or_else(|| panic!("providers.{name}.credential.env missing"));
            out.insert(env.to_string());
        }
    }
    let token_env = config
        .get("admin")
        .and_then(|a| a.get("token_env"))
        .and_then(|t| t.as_str())
        .expect("admin.token_env");
    out.insert(token_env.to_string());
    // Vault mode is on by default and needs its key.
    let vault_env = config
        .get("vault")
        .and_then(|v| v.get("key_env"))
        .and_then(|k| k.as_str())
        .expect("vault.key_env");
    out.insert(vault_env.to_string());
    out
}

/// Runs a command to completion, failing the test if it takes longer than a minute (a policy bundle that
/// is read three times over, say, makes `check-config` run for minutes).
fn output_of(mut command: std::process::Command, what: &str) -> std::process::Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap_or_else(|e| panic!("{what}: {e}")) {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within a minute");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// `tollgate --help`'s subcommands.
fn cli_subcommands() -> BTreeSet<String> {
    let bin = tollgate_tests::tollgate::binary().expect("tollgate binary");
    let mut help = std::process::Command::new(bin);
    help.arg("--help");
    let out = output_of(help, "tollgate --help");
    assert!(out.status.success(), "tollgate --help failed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut in_commands = false;
    let mut found = BTreeSet::new();
    for line in text.lines() {
        if line.trim_end() == "Commands:" {
            in_commands = true;
            continue;
        }
        if in_commands {
            if line.trim().is_empty() || !line.starts_with(' ') {
                break;
            }
            if let Some(word) = line.split_whitespace().next() {
                found.insert(word.to_string());
            }
        }
    }
    assert!(
        found.contains("serve"),
        "no subcommands found in --help:\n{text}"
    );
    for flag in ["--config", "--log-format"] {
        assert!(text.contains(flag), "tollgate --help does not list {flag}");
    }
    found
}

/// The subcommand in an argument list (the first argument that is not a global option or its value).
fn subcommand_of(args: &[String]) -> String {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "tollgate" | "/usr/local/bin/tollgate" => {}
            "--config" | "--log-format" => {
                it.next();
            }
            s if s.starts_with("--") => {}
            s => return s.to_string(),
        }
    }
    panic!("no subcommand in {args:?}")
}

fn strings(seq: &[Yaml]) -> Vec<String> {
    seq.iter().map(scalar).collect()
}

/// The revision `check-config` reports for a policy directory.
fn bundle_revision(policy_dir: &Path) -> String {
    let bin = tollgate_tests::tollgate::binary().expect("tollgate binary");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut check = std::process::Command::new(bin);
    check
        .arg("check-config")
        .env_clear()
        .current_dir(dir.path())
        .env("TOLLGATE_POLICY__DIR", policy_dir)
        .env("CLOUDFLARE_API_TOKEN", "x")
        .env("STRIPE_SECRET_KEY", "y")
        .env("TOLLGATE_VAULT_KEY", tollgate_tests::tollgate::VAULT_KEY);
    let out = output_of(check, "check-config on the repository's policies/");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "check-config on {} failed:\n{stdout}\n{}",
        policy_dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    revision_in(&stdout).unwrap_or_else(|| panic!("no revision in check-config output:\n{stdout}"))
}

fn revision_in(check_config_output: &str) -> Option<String> {
    let rest = check_config_output.split("(revision ").nth(1)?;
    Some(rest.split([',', ')']).next()?.trim().to_string())
}

// ---------------------------------------------------------------------------------------------- Dockerfile

/// The Dockerfile as (INSTRUCTION, arguments) with continuation lines joined and comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    let text = read("deploy/Dockerfile");
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(body) = trimmed.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (instr, args) = current
            .split_once(char::is_whitespace)
            .unwrap_or((current.as_str(), ""));
        out.push((instr.to_ascii_uppercase(), args.trim().to_string()));
        current.clear();
    }
    out
}

/// `deploy/Dockerfile.dockerignore` keeps `path` in the build context (a `*` followed by `!` exceptions).
fn context_keeps(path: &str) -> bool {
    let text = read("deploy/Dockerfile.dockerignore");
    let patterns: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(
        patterns.first(),
        Some(&"*"),
        "the dockerignore is an allow-list starting with '*'"
    );
    let path = path.trim_end_matches('/');
    patterns.iter().skip(1).any(|p| {
        let kept = p
            .strip_prefix('!')
            .unwrap_or_else(|| panic!("dockerignore pattern '{p}' after '*' must be an exception"))
            .trim_end_matches('/');
        path == kept || path.starts_with(&format!("{kept}/"))
    })
}

#[test]
fn dockerfile_builds_the_binary_and_runs_it_on_the_configured_ports() {
    let instrs = dockerfile();
    let keys = leaf_paths(&example_config());
    let index = |pred: &dyn Fn(&(String, String)) -> bool| instrs.iter().position(pred);

    // Stages: rust on bookworm to build, bookworm-slim to run (same glibc).
    let froms: Vec<&String> = instrs
        .iter()
        .filter(|(i, _)| i == "FROM")
        .map(|(_, a)| a)
        .collect();
    assert_eq!(froms.len(), 2, "two stages: {froms:?}");
    assert!(
        froms[0].starts_with("rust:1") && froms[0].contains("bookworm"),
        "build stage {}",
        froms[0]
    );
    assert!(
        froms[1].starts_with("debian:bookworm-slim"),
        "runtime stage {}",
        froms[1]
    );

    // The build command, and only that one.
    let runs: Vec<&String> = instrs
        .iter()
        .filter(|(i, _)| i == "RUN")
        .map(|(_, a)| a)
        .collect();
    let builds: Vec<&str> = runs
        .iter()
        .flat_map(|r| r.split("&&"))
        .map(str::trim)
        .filter(|c| c.starts_with("cargo build"))
        .collect();
    assert_eq!(
        builds,
        vec!["cargo build --locked --release -p tollgate"; 2],
        "a dependency build and the real build, both `cargo build --locked --release -p tollgate`"
    );

    // Dependency caching: manifests and lock file first, sources after the first build.
    let copies_sources = |(i, a): &(String, String)| i == "COPY" && a.starts_with("proxy/src");
    let first_build = index(&|(i, a)| i == "RUN" && a.contains("cargo build")).expect("a build");
    let lock = index(&|(i, a)| i == "COPY" && a.contains("Cargo.lock")).expect("COPY Cargo.lock");
    let sources = index(&copies_sources).expect("COPY proxy/src");
    assert!(
        lock < first_build && first_build < sources,
        "manifests, then a dependency build, then the sources"
    );
    // Every workspace member's manifest is copied, and every bench target a manifest declares gets a stub
    // (cargo refuses a manifest whose targets are missing).
    let workspace: toml::Table = read("Cargo.toml").parse().expect("Cargo.toml");
    let members = workspace["workspace"]["members"]
        .as_array()
        .expect("workspace members");
    let all = instrs
        .iter()
        .map(|(i, a)| format!("{i} {a}"))
        .collect::<Vec<_>>()
        .join("\n");
    for m in members {
        let manifest = format!("{}/Cargo.toml", m.as_str().expect("member"));
        assert!(
            all.contains(&format!("COPY {manifest}")),
            "the Dockerfile does not copy {manifest}"
        );
        let parsed: toml::Table = read(&manifest).parse().expect("member manifest");
        for bench in parsed
            .get("bench")
            .and_then(|b| b.as_array())
            .into_iter()
            .flatten()
        {
            let name = bench["name"].as_str().expect("bench name");
            let stub = format!("{}/benches/{name}.rs", m.as_str().unwrap_or_default());
            assert!(
                all.contains(&stub),
                "no stub for bench target {stub} before the dependency build"
            );
        }
    }

    // Everything copied from the context exists in the repository and survives the dockerignore.
    for (i, a) in &instrs {
        if i != "COPY" || a.starts_with("--from") {
            continue;
        }
        let parts: Vec<&str> = a.split_whitespace().collect();
        for src in &parts[..parts.len() - 1] {
            assert!(
                repo().join(src).exists(),
                "COPY {src}: no such path in the repository"
            );
            assert!(
                context_keeps(src),
                "COPY {src}: excluded by deploy/Dockerfile.dockerignore"
            );
        }
    }
    assert!(
        all.contains("COPY policies/ /etc/tollgate/policies/"),
        "the policy bundle at /etc/tollgate/policies"
    );
    assert!(
        all.contains("COPY --from=build /out/tollgate /usr/local/bin/tollgate"),
        "the binary at /usr/local/bin/tollgate"
    );
    // Files the crate pulls in at compile time (sqlx::migrate!, include_str!, include_bytes!) are copied
    // before the real build.
    let copied: Vec<String> = instrs
        .iter()
        .filter(|(i, a)| i == "COPY" && !a.starts_with("--from"))
        .flat_map(|(_, a)| {
            let parts: Vec<&str> = a.split_whitespace().collect();
            parts[..parts.len() - 1]
                .iter()
                .map(|p| p.trim_end_matches('/').to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    for (file, macro_name, arg) in compile_time_inputs() {
        // migrate! resolves against the crate's manifest directory, include_* against the source file.
        let base = if macro_name == "migrate!" {
            repo().join("proxy")
        } else {
            file.parent().expect("parent").to_path_buf()
        };
        let target = normalize(&base.join(&arg));
        let rel = target
            .strip_prefix(repo())
            .unwrap_or_else(|_| panic!("{macro_name}(\"{arg}\") leaves the repository"))
            .to_string_lossy()
            .into_owned();
        assert!(
            copied
                .iter()
                .any(|c| rel == *c || rel.starts_with(&format!("{c}/"))),
            "{}: {macro_name}(\"{arg}\") needs {rel} in the build, which the Dockerfile does not copy",
            file.display()
        );
    }

    // Environment: the listen addresses and the policy directory, all real configuration keys.
    let mut env = BTreeMap::new();
    for (_, a) in instrs.iter().filter(|(i, _)| i == "ENV") {
        for pair in a.split_whitespace() {
            let (k, v) = pair.split_once('=').expect("ENV k=v");
            assert_override_is_a_config_key(k, &keys, "Dockerfile ENV");
            env.insert(k.to_string(), v.to_string());
        }
    }
    let listen = port_of(&env["TOLLGATE_SERVER__LISTEN"]);
    let admin = port_of(&env["TOLLGATE_SERVER__ADMIN_LISTEN"]);
    assert_eq!((listen, admin), (8080, 9090));
    assert_eq!(env["TOLLGATE_POLICY__DIR"], "/etc/tollgate/policies");
    let exposed: BTreeSet<u16> = instrs
        .iter()
        .filter(|(i, _)| i == "EXPOSE")
        .flat_map(|(_, a)| {
            a.split_whitespace()
                .map(|p| p.parse::<u16>().expect("port"))
        })
        .collect();
    assert_eq!(exposed, BTreeSet::from([listen, admin]), "EXPOSE");

    // The health check asks the admin listener's /readyz, with a curl the image installs.
    let (_, health) = instrs
        .iter()
        .find(|(i, _)| i == "HEALTHCHECK")
        .expect("HEALTHCHECK");
    assert!(
        health.contains(&format!("http://127.0.0.1:{admin}/readyz")) && health.contains("curl"),
        "HEALTHCHECK {health}"
    );
    assert!(
        runs.iter().any(|r| r.contains("apt-get install")
            && r.contains(" curl")
            && r.contains("ca-certificates")),
        "the runtime installs curl and ca-certificates"
    );

    // Non-root, and the entry point is the binary with `serve`, a real subcommand.
    assert!(
        runs.iter().any(|r| r.contains("--uid 10001")),
        "a user with uid 10001"
    );
    let user = instrs
        .iter()
        .rev()
        .find(|(i, _)| i == "USER")
        .expect("USER");
    assert!(user.1.starts_with("10001"), "USER {}", user.1);
    let json_args = |name: &str| -> Vec<String> {
        let (_, a) = instrs
            .iter()
            .rev()
            .find(|(i, _)| i == name)
            .unwrap_or_else(|| panic!("{name}"));
        serde_json::from_str(a).unwrap_or_else(|_| panic!("{name} in exec form: {a}"))
    };
    assert_eq!(json_args("ENTRYPOINT"), vec!["tollgate"]);
    let cmd = json_args("CMD");
    assert_eq!(cmd, vec!["serve"]);
    assert!(cli_subcommands().contains(&subcommand_of(&cmd)));
}

/// `(source file, macro, path argument)` for every `migrate!("…")`, `include_str!("…")` and
/// `include_bytes!("…")` in the proxy crate's sources.
fn compile_time_inputs() -> Vec<(PathBuf, &'static str, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("source dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&repo().join("proxy/src"), &mut files);
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("source");
        for macro_name in ["migrate!", "include_str!", "include_bytes!"] {
            for (i, _) in text.match_indices(&format!("{macro_name}(\"")) {
                let rest = &text[i + macro_name.len() + 2..];
                if let Some(end) = rest.find('"') {
                    found.push((file.clone(), macro_name, rest[..end].to_string()));
                }
            }
        }
    }
    found
}

/// `a/b/../c` → `a/c`, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------- compose

/// A compose service's environment as a map (mapping or `KEY=value` list form).
fn compose_env(service: &Yaml) -> BTreeMap<String, String> {
    match at(service, &["environment"]) {
        Yaml::Mapping(m) => m.iter().map(|(k, v)| (scalar(k), scalar(v))).collect(),
        Yaml::Sequence(s) => s
            .iter()
            .map(|e| {
                let text = scalar(e);
                let (k, v) = text.split_once('=').unwrap_or((&text, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

#[test]
fn compose_runs_two_replicas_behind_a_balancer_with_monitoring() {
    let compose = yaml_one("deploy/compose.yaml");
    let deploy = repo().join("deploy");
    let config = example_config();
    let keys = leaf_paths(&config);
    let subcommands = cli_subcommands();
    let services = at(&compose, &["services"]);
    let service = |name: &str| -> &Yaml {
        let s = at(services, &[name]);
        assert!(!s.is_null(), "compose has no service {name}");
        s
    };

    // Postgres 16 with a health check.
    let pg = service("postgres");
    assert!(str_at(pg, &["image"]).starts_with("postgres:16"));
    assert!(
        !at(pg, &["healthcheck", "test"]).is_null(),
        "postgres healthcheck"
    );

    // Every tollgate container is built from deploy/Dockerfile with the repository as the context.
    let tollgates = ["migrate", "tollgate-1", "tollgate-2"];
    for name in tollgates {
        let s = service(name);
        assert_eq!(
            str_at(s, &["build", "dockerfile"]),
            "deploy/Dockerfile",
            "{name}"
        );
        let context = deploy.join(str_at(s, &["build", "context"]));
        assert_eq!(
            context.canonicalize().expect("build context"),
            repo(),
            "{name}: the build context is the repository root"
        );
        let args = strings(seq_at(s, &["command"]));
        assert!(
            subcommands.contains(&subcommand_of(&args)),
            "{name}: {args:?} is not a tollgate subcommand"
        );
        for var in compose_env(s).keys() {
            assert_override_is_a_config_key(var, &keys, &format!("compose {name}"));
        }
    }

    // The one-shot migration, after Postgres is healthy.
    let migrate = service("migrate");
    assert_eq!(
        subcommand_of(&strings(seq_at(migrate, &["command"]))),
        "migrate"
    );
    assert_eq!(
        str_at(migrate, &["depends_on", "postgres", "condition"]),
        "service_healthy"
    );
    assert!(compose_env(migrate).contains_key("DATABASE_URL"));

    // Two replicas, started once the migration completed, with everything the configuration names.
    let mut agent_ports = BTreeSet::new();
    for name in ["tollgate-1", "tollgate-2"] {
        let s = service(name);
        assert_eq!(subcommand_of(&strings(seq_at(s, &["command"]))), "serve");
        assert_eq!(
            str_at(s, &["depends_on", "migrate", "condition"]),
            "service_completed_successfully",
            "{name}"
        );
        let env = compose_env(s);
        let listen = port_of(&env["TOLLGATE_SERVER__LISTEN"]);
        let admin = port_of(&env["TOLLGATE_SERVER__ADMIN_LISTEN"]);
        assert_eq!(
            (listen, admin),
            (8080, 9090),
            "{name} listens where the image exposes"
        );
        agent_ports.insert(listen);
        assert!(env.contains_key("DATABASE_URL"), "{name}: DATABASE_URL");
        for var in secret_vars(&config) {
            let value = env
                .get(&var)
                .unwrap_or_else(|| panic!("{name}: {var} (named by the configuration) is not set"));
            assert!(
                value.starts_with(&format!("${{{var}:?")),
                "{name}: {var} must come from the caller's environment and be required: {value}"
            );
        }
        assert!(
            env.get("TOLLGATE_POLICY__DIR")
                .is_none_or(|d| d == "/etc/tollgate/policies"),
            "{name}: the image's bundle"
        );
    }
    assert_eq!(agent_ports, BTreeSet::from([8080]));

    // The balancer: host 8080 → nginx 8080 → both replicas' agent port.
    let lb = service("lb");
    assert!(
        strings(seq_at(lb, &["ports"]))
            .iter()
            .any(|p| p.ends_with(":8080:8080") || p == "8080:8080"),
        "the balancer is published on host port 8080"
    );
    let nginx: String = read("deploy/compose/nginx.conf")
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(nginx.contains("listen 8080;"), "nginx listens on 8080");
    for name in ["tollgate-1", "tollgate-2"] {
        assert!(
            nginx.contains(&format!("server {name}:8080")),
            "nginx balances to {name}:8080"
        );
    }
    assert!(
        !nginx.contains("non_idempotent"),
        "nginx must never re-send a write to a second replica"
    );

    // Prometheus scrapes both replicas' admin port; Grafana reads Prometheus and the dashboard.
    let prometheus_yml = read("deploy/prometheus/prometheus.yml");
    for name in ["tollgate-1", "tollgate-2"] {
        assert!(
            prometheus_yml.contains(&format!("{name}:9090")),
            "deploy/prometheus/prometheus.yml scrapes {name}:9090"
        );
    }
    let datasources = yaml_one("deploy/compose/grafana/provisioning/datasources/prometheus.yaml");
    let ds = &seq_at(&datasources, &["datasources"])[0];
    assert_eq!(str_at(ds, &["url"]), "http://prometheus:9090");
    let providers = yaml_one("deploy/compose/grafana/provisioning/dashboards/tollgate.yaml");
    let dashboards_path = str_at(&seq_at(&providers, &["providers"])[0], &["options", "path"]);
    let grafana_mounts = strings(seq_at(service("grafana"), &["volumes"]));
    assert!(
        grafana_mounts
            .iter()
            .any(|m| m.starts_with("./grafana/dashboards:") && m.contains(dashboards_path)),
        "the dashboard directory is mounted where the provider reads it: {grafana_mounts:?}"
    );
    assert!(
        repo()
            .join("deploy/grafana/dashboards/tollgate.json")
            .exists(),
        "the dashboard"
    );

    // Every bind mount's source exists.
    let names: Vec<String> = at(services, &[])
        .as_mapping()
        .expect("services")
        .keys()
        .map(scalar)
        .collect();
    for name in names {
        for mount in strings(seq_at(service(&name), &["volumes"])) {
            let source = mount.split(':').next().unwrap_or_default();
            if source.starts_with('.') {
                assert!(
                    deploy.join(source).exists(),
                    "compose {name}: bind mount source {source} does not exist"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------- Kubernetes

const K8S: &str = "deploy/kubernetes";

struct Kube {
    kustomization: Yaml,
    /// Every object of every listed resource.
    objects: Vec<Yaml>,
}

impl Kube {
    fn load() -> Kube {
        let dir = repo().join(K8S);
        let kustomization = yaml_one(&format!("{K8S}/kustomization.yaml"));
        let mut objects = Vec::new();
        for r in strings(seq_at(&kustomization, &["resources"])) {
            let path = dir.join(&r);
            assert!(
                path.is_file(),
                "kustomization lists {r}, which does not exist"
            );
            objects.extend(yaml_docs(&path));
        }
        Kube {
            kustomization,
            objects,
        }
    }

    fn all(&self, kind: &str) -> Vec<&Yaml> {
        self.objects
            .iter()
            .filter(|o| str_at(o, &["kind"]) == kind)
            .collect()
    }

    fn one(&self, kind: &str) -> &Yaml {
        let found = self.all(kind);
        assert_eq!(found.len(), 1, "expected one {kind}");
        found[0]
    }

    /// configMapGenerator name → (ConfigMap key → file relative to the kustomization directory).
    fn generated(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for g in seq_at(&self.kustomization, &["configMapGenerator"]) {
            let name = str_at(g, &["name"]).to_string();
            assert!(
                at(g, &["literals"]).is_null() && at(g, &["envs"]).is_null(),
                "{name}: only `files` generators are expected"
            );
            let mut files = BTreeMap::new();
            for f in strings(seq_at(g, &["files"])) {
                let (key, path) = match f.split_once('=') {
                    Some((k, p)) => (k.to_string(), p.to_string()),
                    None => (
                        Path::new(&f)
                            .file_name()
                            .expect("file name")
                            .to_string_lossy()
                            .into_owned(),
                        f.clone(),
                    ),
                };
                assert!(
                    repo().join(K8S).join(&path).is_file(),
                    "configMapGenerator {name} lists {path}, which does not exist"
                );
                assert!(
                    files.insert(key.clone(), path).is_none(),
                    "{name}: key {key} twice"
                );
            }
            out.insert(name, files);
        }
        out
    }
}

fn deployment_container(kube: &Kube) -> &Yaml {
    let containers = seq_at(
        kube.one("Deployment"),
        &["spec", "template", "spec", "containers"],
    );
    assert_eq!(containers.len(), 1, "one container");
    &containers[0]
}

/// A container's `env` as name → (literal value, or the (secret, key) it comes from).
fn container_env(container: &Yaml) -> BTreeMap<String, Result<String, (String, String)>> {
    seq_at(container, &["env"])
        .iter()
        .map(|e| {
            let name = str_at(e, &["name"]).to_string();
            let value = if at(e, &["value"]).is_null() {
                Err((
                    str_at(e, &["valueFrom", "secretKeyRef", "name"]).to_string(),
                    str_at(e, &["valueFrom", "secretKeyRef", "key"]).to_string(),
                ))
            } else {
                Ok(scalar(at(e, &["value"])))
            };
            (name, value)
        })
        .collect()
}

fn named_port(container: &Yaml, port: &Yaml) -> u16 {
    match port {
        Yaml::Number(n) => u16::try_from(n.as_u64().expect("port")).expect("port"),
        Yaml::String(name) => seq_at(container, &["ports"])
            .iter()
            .find(|p| str_at(p, &["name"]) == name)
            .map(|p| {
                u16::try_from(at(p, &["containerPort"]).as_u64().expect("port")).expect("port")
            })
            .unwrap_or_else(|| panic!("no container port named {name}")),
        other => panic!("port {other:?}"),
    }
}

/// The secret template's keys.
fn secret_template() -> (String, BTreeSet<String>) {
    let secret = yaml_one(&format!("{K8S}/secret.example.yaml"));
    assert_eq!(str_at(&secret, &["kind"]), "Secret");
    let keys = at(&secret, &["stringData"])
        .as_mapping()
        .expect("stringData")
        .iter()
        .map(|(k, v)| {
            assert!(
                scalar(v).contains("PLACEHOLDER"),
                "the template's values are marked placeholders"
            );
            scalar(k)
        })
        .collect();
    (str_at(&secret, &["metadata", "name"]).to_string(), keys)
}

/// Where each file of the policy volume lands, relative to the volume: path → file (relative to K8S).
fn policy_volume_layout(kube: &Kube) -> BTreeMap<String, String> {
    let generated = kube.generated();
    let volumes = seq_at(
        kube.one("Deployment"),
        &["spec", "template", "spec", "volumes"],
    );
    let volume = volumes
        .iter()
        .find(|v| str_at(v, &["name"]) == "policies")
        .expect("a volume named policies");
    let mut layout = BTreeMap::new();
    for source in seq_at(volume, &["projected", "sources"]) {
        let name = str_at(source, &["configMap", "name"]);
        let files = generated
            .get(name)
            .unwrap_or_else(|| panic!("projected ConfigMap {name} is not generated"));
        let items = seq_at(source, &["configMap", "items"]);
        if items.is_empty() {
            for (key, file) in files {
                assert!(
                    layout.insert(key.clone(), file.clone()).is_none(),
                    "{key} twice"
                );
            }
        } else {
            assert_eq!(
                items.len(),
                files.len(),
                "ConfigMap {name}: every generated key must be projected (items {items:?}, files {files:?})"
            );
            for item in items {
                let key = str_at(item, &["key"]);
                let path = str_at(item, &["path"]).to_string();
                let file = files
                    .get(key)
                    .unwrap_or_else(|| panic!("ConfigMap {name} has no key {key}"));
                assert!(
                    layout.insert(path.clone(), file.clone()).is_none(),
                    "{path} twice"
                );
            }
        }
    }
    layout
}

/// The files of `policies/` tollgate loads (`.rego`, `.json`, `.yaml`, `.yml`), relative to it.
fn bundle_files() -> BTreeSet<String> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).expect("policies") {
            let path = entry.expect("entry").path();
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                continue;
            }
            if path.is_dir() {
                walk(&path, root, out);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("rego" | "json" | "yaml" | "yml")
            ) {
                let rel = path.strip_prefix(root).expect("relative");
                out.insert(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    let root = repo().join("policies");
    let mut out = BTreeSet::new();
    walk(&root, &root, &mut out);
    out
}

#[test]
fn kubernetes_manifests_use_the_real_ports_probes_keys_and_secrets() {
    let kube = Kube::load();
    let config = example_config();
    let keys = leaf_paths(&config);
    let subcommands = cli_subcommands();

    // The namespace is one and the same everywhere.
    let namespace = str_at(&kube.kustomization, &["namespace"]);
    assert_eq!(
        str_at(kube.one("Namespace"), &["metadata", "name"]),
        namespace
    );

    let deployment = kube.one("Deployment");
    assert_eq!(str_at(deployment, &["apiVersion"]), "apps/v1");
    let replicas = at(deployment, &["spec", "replicas"])
        .as_u64()
        .expect("replicas");
    assert!(replicas >= 2, "at least two replicas, got {replicas}");
    let pod = at(deployment, &["spec", "template"]);
    let pod_labels = at(pod, &["metadata", "labels"]);
    assert_eq!(
        at(deployment, &["spec", "selector", "matchLabels"]),
        pod_labels,
        "the selector is the pod labels"
    );
    let spec = at(pod, &["spec"]);
    assert!(
        !seq_at(spec, &["topologySpreadConstraints"]).is_empty(),
        "replicas are spread"
    );
    assert_eq!(
        at(spec, &["securityContext", "runAsNonRoot"]).as_bool(),
        Some(true)
    );
    assert_eq!(
        at(spec, &["securityContext", "runAsUser"]).as_u64(),
        Some(10001)
    );

    let c = deployment_container(&kube);
    let sc = at(c, &["securityContext"]);
    assert_eq!(at(sc, &["readOnlyRootFilesystem"]).as_bool(), Some(true));
    assert_eq!(at(sc, &["allowPrivilegeEscalation"]).as_bool(), Some(false));
    for kind in ["requests", "limits"] {
        for res in ["cpu", "memory"] {
            assert!(
                !at(c, &["resources", kind, res]).is_null(),
                "resources.{kind}.{res}"
            );
        }
    }
    let args = strings(seq_at(c, &["args"]));
    assert_eq!(subcommand_of(&args), "serve");

    // Ports: the listen addresses the environment sets are the container ports the probes and Services use.
    let env = container_env(c);
    for name in env.keys() {
        assert_override_is_a_config_key(name, &keys, "Deployment env");
    }
    let literal = |name: &str| -> String {
        env.get(name)
            .and_then(|v| v.as_ref().ok())
            .unwrap_or_else(|| panic!("Deployment sets no literal {name}"))
            .clone()
    };
    let listen = port_of(&literal("TOLLGATE_SERVER__LISTEN"));
    let admin = port_of(&literal("TOLLGATE_SERVER__ADMIN_LISTEN"));
    assert_eq!(named_port(c, &Yaml::String("agents".into())), listen);
    assert_eq!(named_port(c, &Yaml::String("admin".into())), admin);
    for (probe, path) in [
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
    ] {
        assert_eq!(str_at(c, &[probe, "httpGet", "path"]), path, "{probe}");
        assert_eq!(
            named_port(c, at(c, &[probe, "httpGet", "port"])),
            admin,
            "{probe} on the admin listener"
        );
    }

    // Secrets: everything the configuration names, and DATABASE_URL, comes from keys the template has.
    let (secret_name, secret_keys) = secret_template();
    assert!(
        !strings(seq_at(&kube.kustomization, &["resources"]))
            .contains(&"secret.example.yaml".to_string()),
        "the placeholder Secret must not be applied by the kustomization"
    );
    for var in secret_vars(&config)
        .into_iter()
        .chain(["DATABASE_URL".to_string()])
    {
        match env.get(&var) {
            Some(Err((secret, key))) => {
                assert_eq!(secret, &secret_name, "{var}");
                assert!(
                    secret_keys.contains(key),
                    "{var}: the Secret template has no key {key}"
                );
            }
            other => panic!("{var} must come from the Secret, got {other:?}"),
        }
    }

    // The ConfigMap'd tollgate.toml: documented keys only, the same secrets, and no database.url, which
    // would silently win over DATABASE_URL.
    let generated = kube.generated();
    let config_files = &generated["tollgate-config"];
    let k8s_config: toml::Table =
        std::fs::read_to_string(repo().join(K8S).join(&config_files["tollgate.toml"]))
            .expect("tollgate.toml")
            .parse()
            .expect("the Kubernetes tollgate.toml parses");
    for path in leaf_paths(&k8s_config) {
        assert!(
            keys.contains(&path),
            "kubernetes tollgate.toml: '{}' is not a key of deploy/tollgate.toml",
            path.join(".")
        );
    }
    assert!(
        !leaf_paths(&k8s_config).contains(&vec!["database".into(), "url".into()]),
        "database.url in the ConfigMap would shadow DATABASE_URL from the Secret"
    );
    assert_eq!(secret_vars(&k8s_config), secret_vars(&config));
    // Shutdown: behind a Service, tollgate reports draining before it closes, and the grace period covers
    // that drain plus one full upstream timeout of an in-flight request.
    let server_ms = |key: &str, default: i64| {
        k8s_config
            .get("server")
            .and_then(|s| s.get(key))
            .map_or(default, |v| v.as_integer().expect("integer"))
    };
    let drain_ms = server_ms("shutdown_drain_ms", 0);
    assert!(
        drain_ms > 0,
        "server.shutdown_drain_ms: drain before closing behind a Service"
    );
    let grace_ms = 1000
        * i64::try_from(
            at(spec, &["terminationGracePeriodSeconds"])
                .as_u64()
                .expect("grace"),
        )
        .expect("grace");
    assert!(
        grace_ms > drain_ms + server_ms("upstream_timeout_ms", 30_000),
        "terminationGracePeriodSeconds must cover shutdown_drain_ms and upstream_timeout_ms"
    );
    let mounts = seq_at(c, &["volumeMounts"]);
    let mount_of = |volume: &str| -> String {
        mounts
            .iter()
            .find(|m| str_at(m, &["name"]) == volume)
            .map(|m| str_at(m, &["mountPath"]).to_string())
            .unwrap_or_else(|| panic!("no mount of volume {volume}"))
    };
    let config_arg = args
        .windows(2)
        .find(|w| w[0] == "--config")
        .map(|w| w[1].clone())
        .expect("--config");
    assert_eq!(config_arg, format!("{}/tollgate.toml", mount_of("config")));
    let volumes = seq_at(spec, &["volumes"]);
    let config_volume = volumes
        .iter()
        .find(|v| str_at(v, &["name"]) == "config")
        .expect("config volume");
    assert_eq!(
        str_at(config_volume, &["configMap", "name"]),
        "tollgate-config"
    );

    // The policy directory is the projected volume, and it reproduces policies/ file for file.
    let policy_mount = mount_of("policies");
    let policy_dir = literal("TOLLGATE_POLICY__DIR");
    assert!(
        policy_dir == policy_mount || policy_dir == format!("{policy_mount}/..data"),
        "TOLLGATE_POLICY__DIR ({policy_dir}) is the policies volume ({policy_mount})"
    );
    let layout = policy_volume_layout(&kube);
    let expected = bundle_files();
    let projected: BTreeSet<String> = layout.keys().cloned().collect();
    let missing: Vec<&String> = expected.difference(&projected).collect();
    let extra: Vec<&String> = projected.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "the policy volume must reproduce policies/: missing {missing:?}, extra {extra:?}. Run \
         {K8S}/sync-policies.sh, which rewrites the policy ConfigMap generators in kustomization.yaml and \
         the projected volume in deployment.yaml from policies/"
    );
    for (path, file) in &layout {
        assert_eq!(
            repo().join(K8S).join(file).canonicalize().expect("file"),
            repo()
                .join("policies")
                .join(path)
                .canonicalize()
                .expect("policy file"),
            "{path} in the volume is not policies/{path}"
        );
    }
    for g in seq_at(&kube.kustomization, &["configMapGenerator"]) {
        let name = str_at(g, &["name"]);
        if name.starts_with("tollgate-policies") {
            assert_eq!(
                at(g, &["options", "disableNameSuffixHash"]).as_bool(),
                Some(true),
                "{name}: a fixed name, so that updates reach running pods and are hot-reloaded"
            );
        }
    }

    // Services: agents on the agent port, admin/metrics on the admin port with scrape annotations.
    let services = kube.all("Service");
    assert_eq!(services.len(), 2, "an agent and an admin Service");
    let mut seen_ports = BTreeSet::new();
    for s in services {
        assert_eq!(
            at(s, &["spec", "selector"]),
            pod_labels,
            "Service selects the pods"
        );
        for p in seq_at(s, &["spec", "ports"]) {
            let target = named_port(c, at(p, &["targetPort"]));
            assert_eq!(at(p, &["port"]).as_u64(), Some(u64::from(target)));
            seen_ports.insert(target);
            if target == admin {
                let a = at(s, &["metadata", "annotations"]);
                assert_eq!(str_at(a, &["prometheus.io/scrape"]), "true");
                assert_eq!(str_at(a, &["prometheus.io/port"]), admin.to_string());
                assert_eq!(str_at(a, &["prometheus.io/path"]), "/metrics");
            }
        }
    }
    assert_eq!(seen_ports, BTreeSet::from([listen, admin]));

    // Disruption budget and autoscaler on the same pods.
    let pdb = kube.one("PodDisruptionBudget");
    assert_eq!(at(pdb, &["spec", "selector", "matchLabels"]), pod_labels);
    assert!(
        !at(pdb, &["spec", "maxUnavailable"]).is_null()
            || !at(pdb, &["spec", "minAvailable"]).is_null()
    );
    let hpa = kube.one("HorizontalPodAutoscaler");
    assert_eq!(str_at(hpa, &["apiVersion"]), "autoscaling/v2");
    assert_eq!(
        str_at(hpa, &["spec", "scaleTargetRef", "name"]),
        str_at(deployment, &["metadata", "name"])
    );
    assert!(
        at(hpa, &["spec", "minReplicas"])
            .as_u64()
            .expect("minReplicas")
            >= 2
    );
    assert_eq!(
        str_at(&seq_at(hpa, &["spec", "metrics"])[0], &["resource", "name"]),
        "cpu"
    );
    // Every replica's pool fits in one Postgres (default max_connections 100, some left for the Job and CLI).
    let per_replica = k8s_config["database"]["max_connections"]
        .as_integer()
        .expect("database.max_connections");
    let max_replicas = at(hpa, &["spec", "maxReplicas"])
        .as_u64()
        .expect("maxReplicas");
    assert!(
        i64::try_from(max_replicas).expect("small") * per_replica <= 90,
        "maxReplicas × database.max_connections exceeds a default Postgres"
    );

    // The migration Job runs `migrate` with the database URL from the Secret.
    let job = kube.one("Job");
    let job_container = &seq_at(job, &["spec", "template", "spec", "containers"])[0];
    let job_args = strings(seq_at(job_container, &["args"]));
    assert_eq!(subcommand_of(&job_args), "migrate");
    assert!(subcommands.contains("migrate") && subcommands.contains("serve"));
    match container_env(job_container).get("DATABASE_URL") {
        Some(Err((secret, key))) => {
            assert_eq!(secret, &secret_name);
            assert!(secret_keys.contains(key));
        }
        other => panic!("the Job's DATABASE_URL must come from the Secret, got {other:?}"),
    }
    assert_eq!(str_at(job_container, &["image"]), str_at(c, &["image"]));

    // Both containers run with a read-only root filesystem, and both open the store, whose Postgres relay
    // binds a Unix socket under $TMPDIR (default /tmp): each needs a writable emptyDir there.
    for (what, pod, container) in [
        ("Deployment", kube.one("Deployment"), c),
        ("Job", job, job_container),
    ] {
        let read_only = at(container, &["securityContext", "readOnlyRootFilesystem"]).as_bool();
        let tmpdir = container_env(container)
            .get("TMPDIR")
            .and_then(|v| v.clone().ok())
            .unwrap_or_else(|| "/tmp".to_string());
        let mount = seq_at(container, &["volumeMounts"])
            .iter()
            .find(|m| str_at(m, &["mountPath"]) == tmpdir)
            .map(|m| str_at(m, &["name"]).to_string());
        if read_only == Some(true) {
            let volume =
                mount.unwrap_or_else(|| panic!("{what}: nothing writable mounted at {tmpdir}"));
            let source = seq_at(pod, &["spec", "template", "spec", "volumes"])
                .iter()
                .find(|v| str_at(v, &["name"]) == volume)
                .unwrap_or_else(|| panic!("{what}: no volume {volume}"));
            assert!(
                !at(source, &["emptyDir"]).is_null(),
                "{what}: {tmpdir} must be a writable emptyDir"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------- systemd

#[test]
fn systemd_unit_is_hardened_and_runs_real_subcommands() {
    let unit = read("deploy/systemd/tollgate.service");
    let mut directives: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        let (k, v) = line.split_once('=').expect("Key=value");
        directives
            .entry(k.to_string())
            .or_default()
            .push(v.to_string());
    }
    let one = |k: &str| -> &str {
        let v = directives
            .get(k)
            .unwrap_or_else(|| panic!("tollgate.service has no {k}="));
        assert_eq!(v.len(), 1, "{k}= once");
        &v[0]
    };
    assert_eq!(one("User"), "tollgate");
    assert_eq!(one("Restart"), "on-failure");
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("ProtectHome"), "yes");
    assert_eq!(one("PrivateTmp"), "yes");
    assert_eq!(one("CapabilityBoundingSet"), "");
    assert!(one("ExecReload").ends_with("kill -HUP $MAINPID"));
    assert_eq!(one("EnvironmentFile"), "/etc/tollgate/tollgate.env");

    let subcommands = cli_subcommands();
    let words =
        |line: &str| -> Vec<String> { line.split_whitespace().map(str::to_string).collect() };
    let start = words(one("ExecStart"));
    let pre = words(one("ExecStartPre"));
    assert_eq!(subcommand_of(&start), "serve");
    assert_eq!(subcommand_of(&pre), "check-config");
    for args in [&start, &pre] {
        assert!(subcommands.contains(&subcommand_of(args)));
        let config = args
            .windows(2)
            .find(|w| w[0] == "--config")
            .map(|w| w[1].as_str());
        assert_eq!(config, Some("/etc/tollgate/tollgate.toml"));
    }

    // The environment file provides what the configuration names, and a database URL that wins over the
    // file's database.url.
    let config = example_config();
    let keys = leaf_paths(&config);
    let env: BTreeMap<String, String> = read("deploy/systemd/tollgate.env.example")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').expect("KEY=value");
            (k.to_string(), v.to_string())
        })
        .collect();
    for k in env.keys() {
        assert_override_is_a_config_key(k, &keys, "tollgate.env.example");
    }
    for var in secret_vars(&config) {
        assert!(env.contains_key(&var), "tollgate.env.example: {var}");
    }
    assert!(
        env.contains_key("TOLLGATE_DATABASE__URL"),
        "the example config sets database.url, so only TOLLGATE_DATABASE__URL overrides it"
    );
}

// ---------------------------------------------------------------------------------------------- running it

/// The Kubernetes pod's volumes laid out the way the kubelet does it, in a temporary directory: the ConfigMap
/// volume and the projected policy volume, each as a `..<timestamp>` directory with the files, a `..data`
/// symlink to it, and one symlink per top-level entry into `..data`.
struct PodFiles {
    _dir: tempfile::TempDir,
    /// mountPath → the directory standing in for it.
    mounts: BTreeMap<String, PathBuf>,
}

impl PodFiles {
    fn lay_out(kube: &Kube) -> anyhow::Result<PodFiles> {
        let dir = tempfile::tempdir()?;
        let c = deployment_container(kube);
        let generated = kube.generated();
        let mut mounts = BTreeMap::new();
        let volumes = seq_at(
            kube.one("Deployment"),
            &["spec", "template", "spec", "volumes"],
        );
        for m in seq_at(c, &["volumeMounts"]) {
            let volume = str_at(m, &["name"]);
            let empty_dir = volumes
                .iter()
                .any(|v| str_at(v, &["name"]) == volume && !at(v, &["emptyDir"]).is_null());
            if empty_dir {
                let root = dir.path().join(volume);
                std::fs::create_dir_all(&root)?;
                mounts.insert(str_at(m, &["mountPath"]).to_string(), root);
                continue;
            }
            let files: BTreeMap<String, String> = match volume {
                "policies" => policy_volume_layout(kube),
                "config" => generated["tollgate-config"].clone(),
                other => bail!("unexpected volume {other}"),
            };
            let root = dir.path().join(volume);
            let snapshot = root.join("..2026_01_01_00_00_00.000000001");
            for (path, source) in &files {
                let target = snapshot.join(path);
                std::fs::create_dir_all(target.parent().context("parent")?)?;
                std::fs::copy(repo().join(K8S).join(source), &target)
                    .with_context(|| format!("copying {source}"))?;
            }
            std::os::unix::fs::symlink("..2026_01_01_00_00_00.000000001", root.join("..data"))?;
            let top: BTreeSet<&str> = files
                .keys()
                .map(|p| p.split('/').next().unwrap_or(p))
                .collect();
            for entry in top {
                std::os::unix::fs::symlink(format!("..data/{entry}"), root.join(entry))?;
            }
            mounts.insert(str_at(m, &["mountPath"]).to_string(), root);
        }
        Ok(PodFiles { _dir: dir, mounts })
    }

    /// A path inside the pod, as a path here.
    fn local(&self, pod_path: &str) -> String {
        for (mount, local) in &self.mounts {
            if let Some(rest) = pod_path.strip_prefix(mount.as_str())
                && (rest.is_empty() || rest.starts_with('/'))
            {
                return format!("{}{rest}", local.display());
            }
        }
        pod_path.to_string()
    }
}

/// Exactly the environment the container gets: literal values (pod paths mapped to the stand-in volumes,
/// listen addresses moved to loopback with OS-chosen ports) and the Secret's keys from `secrets`.
fn pod_env(
    container: &Yaml,
    pod: &PodFiles,
    secrets: &BTreeMap<&str, String>,
) -> Vec<(String, String)> {
    container_env(container)
        .into_iter()
        .map(|(name, value)| {
            let value = match value {
                Ok(v) if name.starts_with("TOLLGATE_SERVER__") && name.ends_with("LISTEN") => {
                    port_of(&v); // a real address in the manifest
                    "127.0.0.1:0".to_string()
                }
                Ok(v) => pod.local(&v),
                Err((_, key)) => secrets
                    .get(key.as_str())
                    .unwrap_or_else(|| panic!("no test value for secret key {key}"))
                    .clone(),
            };
            (name, value)
        })
        .collect()
}

fn test_secrets(database_url: &str) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("DATABASE_URL", database_url.to_string()),
        ("CLOUDFLARE_API_TOKEN", "cf-deploy-test".to_string()),
        ("STRIPE_SECRET_KEY", "sk_test_deploy".to_string()),
        ("TOLLGATE_ADMIN_TOKEN", "admin-deploy-test".to_string()),
        (
            "TOLLGATE_REDACTION_KEY",
            "redaction-deploy-test".to_string(),
        ),
        (
            "TOLLGATE_VAULT_KEY",
            tollgate_tests::tollgate::VAULT_KEY.to_string(),
        ),
    ])
}

#[test]
fn the_kubernetes_config_and_policy_volume_pass_check_config() {
    let kube = Kube::load();
    let pod = PodFiles::lay_out(&kube).expect("pod files");
    let c = deployment_container(&kube);
    let env = pod_env(c, &pod, &test_secrets("postgres://u@127.0.0.1:1/unused"));
    // The container's own arguments, with `serve` swapped for `check-config` and pod paths mapped.
    let args: Vec<String> = strings(seq_at(c, &["args"]))
        .into_iter()
        .map(|a| {
            if a == "serve" {
                "check-config".into()
            } else {
                pod.local(&a)
            }
        })
        .collect();
    let cwd = tempfile::tempdir().expect("tempdir");
    let mut check = std::process::Command::new(tollgate_tests::tollgate::binary().expect("binary"));
    check
        .args(&args)
        .env_clear()
        .envs(env)
        .current_dir(cwd.path());
    let out = output_of(check, "check-config with the Kubernetes configuration");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "check-config with the Kubernetes configuration failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The bundle read through the volume is the repository's bundle: same revision on every pod.
    assert_eq!(
        revision_in(&stdout).as_deref(),
        Some(bundle_revision(&repo().join("policies")).as_str()),
        "the policy volume yields the revision of policies/:\n{stdout}"
    );
}

#[tokio::test]
async fn the_deployment_environment_alone_makes_a_ready_replica() {
    let kube = Kube::load();
    let pod = PodFiles::lay_out(&kube).expect("pod files");
    let db = TestDatabase::create().await.expect("test database");
    let secrets = test_secrets(db.url());
    let bin = tollgate_tests::tollgate::binary().expect("binary");
    let cwd = tempfile::tempdir().expect("tempdir"); // no tollgate.toml here: no file is read

    // The migration Job, with only its environment.
    let job = kube.one("Job");
    let job_container = &seq_at(job, &["spec", "template", "spec", "containers"])[0];
    let migrate = tokio::process::Command::new(&bin)
        .args(strings(seq_at(job_container, &["args"])))
        .env_clear()
        .envs(pod_env(job_container, &pod, &secrets))
        .current_dir(cwd.path())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), migrate)
        .await
        .expect("the migration Job's command finishes within a minute")
        .expect("migrate");
    assert!(
        out.status.success(),
        "the migration Job's command failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // `serve` with only the Deployment's environment and no configuration file.
    let c = deployment_container(&kube);
    let env = pod_env(c, &pod, &secrets);
    let mut child = tokio::process::Command::new(&bin)
        .arg("serve")
        .env_clear()
        .envs(env)
        .current_dir(cwd.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawning serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stdout).lines();
    let started = tokio::time::timeout(Duration::from_secs(30), async {
        let (mut proxy, mut admin) = (None, None);
        while proxy.is_none() || admin.is_none() {
            let Some(line) = lines.next_line().await? else {
                bail!("tollgate exited before it listened");
            };
            if let Some(url) = line.strip_prefix("tollgate listening for agents on ") {
                proxy = Some(url.trim().to_string());
            } else if let Some(url) = line.strip_prefix("admin API, /metrics and /readyz on ") {
                admin = Some(url.trim().to_string());
            }
        }
        anyhow::Ok((proxy.unwrap_or_default(), admin.unwrap_or_default()))
    })
    .await;
    let (proxy, admin) = match started {
        Ok(Ok(addrs)) => addrs,
        other => {
            let _ = child.start_kill();
            let mut log = String::new();
            let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut log).await;
            panic!("serve with the Deployment's environment did not start ({other:?}):\n{log}");
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    tokio::spawn(async move {
        let mut sink = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut stderr, &mut sink).await;
    });

    let http = reqwest::Client::new();
    let ready = async {
        for _ in 0..150 {
            if let Ok(r) = http.get(format!("{admin}/readyz")).send().await
                && r.status() == 200
            {
                return r.json::<Json>().await.map_err(anyhow::Error::from);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(anyhow!("/readyz never answered 200"))
    };
    let body = ready.await.expect("the replica becomes ready");
    assert_eq!(body["store"], true, "{body}");
    assert_eq!(body["draining"], false, "{body}");
    assert_eq!(
        body["policy_revision"].as_str(),
        Some(bundle_revision(&repo().join("policies")).as_str()),
        "the replica serves the repository's bundle"
    );
    let health = http
        .get(format!("{admin}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);

    // The database is the one DATABASE_URL names and the admin token is the Secret's: an agent created
    // through the admin API lands in the test database.
    let created = http
        .post(format!("{admin}/api/agents"))
        .bearer_auth(&secrets["TOLLGATE_ADMIN_TOKEN"])
        .json(&serde_json::json!({"name": "deploy-check", "scopes": ["dns:read"]}))
        .send()
        .await
        .expect("create agent");
    assert_eq!(created.status(), 201, "{:?}", created.text().await);
    let pool = db.pool().await.expect("pool");
    let (count,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM agents WHERE name = 'deploy-check'")
            .fetch_one(&pool)
            .await
            .expect("agents query");
    assert_eq!(count, 1);

    // The agent listener answers (an unauthenticated call is refused before anything is forwarded).
    let refused = http
        .get(format!("{proxy}/cloudflare/client/v4/zones"))
        .send()
        .await
        .expect("agent listener");
    assert_eq!(refused.status(), 401);
    let refusal: Json = refused.json().await.expect("json");
    assert_eq!(refusal["tollgate"]["code"], "agent_unauthenticated");

    let _ = child.start_kill();
    let _ = child.wait().await;
}
