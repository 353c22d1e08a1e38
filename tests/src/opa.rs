//! The real OPA engine as a test fixture, for the OPA conformance check (`tests/opa_conformance.rs`).
//!
//! - **Installation.** OPA v1.20.2 built as a C shared library with a ctypes wrapper, the PyPI wheel
//!   `opa-golib-python-bindings==0.4.4`, pinned by its SHA-256 ([`WHEEL_SHA256`]). The wheel declares
//!   Python >= 3.14 but its wrapper runs on the machines' 3.11, so it is fetched with `pip download
//!   --python-version 3.14 --only-binary=:all: --no-deps`, checked against the pin (any other file is
//!   refused), and unpacked into `<cache>/opa-<pin>/site`, the cache being the SDK suite's
//!   (`$TOLLGATE_SDK_CACHE`, else `<target dir>/sdk-cache`) with its locking: an exclusive `flock` and a
//!   `.installed` marker written last. A failed installation is an error naming the command and its output:
//!   the check fails, it never skips.
//! - **Running.** [`Opa::run`] runs `tests/opa/run_opa.py` (the bundle loaded as OPA's loaders load a
//!   directory, its test rules and case tables, and a corpus of inputs at `data.tollgate.decision`) and
//!   parses the JSON it prints.

use std::fs::{self, File};
use std::io::{Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{Context as _, anyhow, bail};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::sdk::{base_python, cache_root, run_logged};

/// The wheel: OPA v1.20.2 (Go) as `libopabridge.so` plus the `opa_bindings` ctypes wrapper.
pub const WHEEL: &str = "opa-golib-python-bindings==0.4.4";
/// SHA-256 of `opa_golib_python_bindings-0.4.4-py3-none-manylinux_2_34_x86_64.whl`.
pub const WHEEL_SHA256: &str = "d411c901e14b8c7c3023e23e4a944f4cf429c1d31baf80e959e57d11efbfd24a";

/// An installed OPA: the directory to put on `PYTHONPATH`.
#[derive(Debug, Clone)]
pub struct Opa {
    site: PathBuf,
}

/// `tests/opa/run_opa.py` in the repository.
pub fn runner() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("opa/run_opa.py")
}

/// Installs the pinned OPA once per test process (and once per cache across processes).
pub fn installed() -> anyhow::Result<Opa> {
    static OPA: OnceLock<Result<Opa, String>> = OnceLock::new();
    OPA.get_or_init(|| install().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!("installing the pinned OPA ({WHEEL}) failed: {e}"))
}

fn install() -> anyhow::Result<Opa> {
    let started = Instant::now();
    let root = cache_root()?;
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let entry = root.join(format!("opa-{}", &WHEEL_SHA256[..16]));
    let lock_path = entry.with_extension("lock");
    let lock =
        File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
    // SAFETY: flock on a descriptor this function owns; it is released when `lock` is dropped.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!(
            "flock {}: {}",
            lock_path.display(),
            std::io::Error::last_os_error()
        );
    }
    let site = entry.join("site");
    let marker = entry.join(".installed");
    if !marker.exists() {
        if entry.exists() {
            // A previous installer died half-way: start over.
            fs::remove_dir_all(&entry)
                .with_context(|| format!("removing the unfinished {}", entry.display()))?;
        }
        let wheels = entry.join("wheel");
        fs::create_dir_all(&wheels)?;
        let mut pip = Command::new(base_python());
        pip.args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--python-version",
            "3.14",
            "--only-binary=:all:",
            "--no-input",
            "--disable-pip-version-check",
            "-d",
        ])
        .arg(&wheels)
        .arg(WHEEL);
        run_logged(pip, &entry, "pip-download")?;
        let wheel = only_wheel(&wheels)?;
        verify_pin(&wheel, WHEEL_SHA256)?;
        let mut unzip = Command::new(base_python());
        unzip.args(["-m", "zipfile", "-e"]).arg(&wheel).arg(&site);
        run_logged(unzip, &entry, "unzip")?;
        let mut import = Command::new(base_python());
        import
            .args([
                "-c",
                "import opa_bindings; opa_bindings.OpaEngine().close()",
            ])
            .env("PYTHONPATH", &site);
        run_logged(import, &entry, "import")?;
        let mut done = File::create(&marker)?;
        writeln!(
            done,
            "{WHEEL} ({WHEEL_SHA256}) installed in {:.1} s",
            started.elapsed().as_secs_f64()
        )?;
        done.sync_all()?;
        eprintln!(
            "opa conformance: installed {WHEEL} into {} in {:.1} s",
            entry.display(),
            started.elapsed().as_secs_f64()
        );
    }
    drop(lock);
    Ok(Opa { site })
}

fn only_wheel(dir: &Path) -> anyhow::Result<PathBuf> {
    let wheels: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "whl"))
        .collect();
    match wheels.as_slice() {
        [one] => Ok(one.clone()),
        other => bail!(
            "pip download left {} wheels in {}",
            other.len(),
            dir.display()
        ),
    }
}

/// Refuses a file whose SHA-256 is not `pin`.
fn verify_pin(path: &Path, pin: &str) -> anyhow::Result<()> {
    let digest = sha256_of(path)?;
    if digest != pin {
        bail!(
            "{} has SHA-256 {digest}, not the pinned {pin}: refusing it",
            path.display()
        );
    }
    Ok(())
}

fn sha256_of(path: &Path) -> anyhow::Result<String> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

impl Opa {
    /// Runs `tests/opa/run_opa.py POLICY_DIR CORPUS` (corpus: `[{"id", "input"}]`) and returns its JSON.
    pub fn run(&self, policy_dir: &Path, corpus: &[(String, Value)]) -> anyhow::Result<Value> {
        let dir = tempfile::tempdir()?;
        let corpus_path = dir.path().join("corpus.json");
        let entries: Vec<Value> = corpus
            .iter()
            .map(|(id, input)| serde_json::json!({"id": id, "input": input}))
            .collect();
        fs::write(&corpus_path, serde_json::to_vec(&entries)?)?;
        let out = Command::new(base_python())
            .arg(runner())
            .arg(policy_dir)
            .arg(&corpus_path)
            .env("PYTHONPATH", &self.site)
            .stdin(Stdio::null())
            .output()
            .context("running tests/opa/run_opa.py")?;
        if !out.status.success() {
            bail!(
                "run_opa.py failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout).context("reading run_opa.py's JSON")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_the_pinned_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("opa.whl");
        fs::write(&path, b"abc").unwrap();
        // SHA-256("abc")
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        verify_pin(&path, abc).unwrap();
        let err = verify_pin(&path, WHEEL_SHA256).unwrap_err().to_string();
        assert!(err.contains("refusing it"), "{err}");
    }
}
