//! A real browser for the console tests: Debian's headless Chromium driven through ChromeDriver over the W3C
//! WebDriver protocol (JSON over HTTP; the few commands the tests need, spoken directly with reqwest).
//!
//! [`ensure_installed`] installs the Debian packages `chromium` and `chromium-driver` when they are missing
//! and the tests run as root (as on CI's machine), and otherwise fails with a message naming them.
//! [`Browser::start`] runs a private ChromeDriver on a free loopback port and opens one headless session;
//! both end when the `Browser` is dropped.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The W3C element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Makes sure Chromium and ChromeDriver are installed: installs Debian's `chromium` and `chromium-driver`
/// with apt-get when missing and running as root; otherwise an error naming the packages.
pub async fn ensure_installed() -> anyhow::Result<()> {
    if Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists() {
        return Ok(());
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .await
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if !root {
        bail!(
            "the console browser tests need Debian's packages `chromium` and `chromium-driver` \
             ({CHROMIUM}, {CHROMEDRIVER}); install them: apt-get install -y chromium chromium-driver"
        );
    }
    eprintln!("installing Debian's chromium and chromium-driver for the console browser tests");
    // One installer at a time across concurrently running test binaries.
    let status = Command::new("flock")
        .args(["/tmp/tollgate-tests-apt.lock", "sh", "-c"])
        .arg(
            "test -x /usr/bin/chromedriver && test -x /usr/bin/chromium || \
             { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
               --no-install-recommends chromium chromium-driver; }",
        )
        .stdout(Stdio::null())
        .status()
        .await
        .context("running apt-get")?;
    if !status.success() || !Path::new(CHROMEDRIVER).exists() {
        bail!(
            "installing Debian's `chromium` and `chromium-driver` failed ({status}); \
             install them: apt-get install -y chromium chromium-driver"
        );
    }
    Ok(())
}

/// One headless Chromium session behind a private ChromeDriver.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

/// A located element.
#[derive(Debug, Clone)]
pub struct Element(String);

impl Browser {
    pub async fn start() -> anyhow::Result<Browser> {
        ensure_installed().await?;
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?.port()
        };
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting chromedriver")?;
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let ready = http
                .get(format!("{base}/status"))
                .send()
                .await
                .ok()
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ready {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!("chromedriver did not become ready on {base}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1360,1000", "--no-first-run", "--disable-extensions"],
            },
        }}});
        let answer: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await?
            .json()
            .await?;
        let session = answer["value"]["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("no WebDriver session: {answer}"))?
            .to_string();
        Ok(Browser {
            driver,
            base,
            session,
            http,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, url);
        // WebDriver wants a JSON body on every POST, even an empty one.
        req = req.json(&body.unwrap_or_else(|| json!({})));
        let answer: Value = req.send().await?.json().await?;
        if let Some(error) = answer["value"]["error"].as_str() {
            bail!(
                "WebDriver {path}: {error}: {}",
                answer["value"]["message"].as_str().unwrap_or("")
            );
        }
        Ok(answer["value"].clone())
    }

    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await
            .map(|_| ())
    }

    pub async fn current_url(&self) -> anyhow::Result<String> {
        let v = self.call(reqwest::Method::GET, "/url", None).await?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    pub async fn source(&self) -> anyhow::Result<String> {
        let v = self.call(reqwest::Method::GET, "/source", None).await?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    /// Every element matching a CSS selector (none is not an error).
    pub async fn find_all(&self, css: &str) -> anyhow::Result<Vec<Element>> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await?;
        Ok(v.as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|e| e[ELEMENT].as_str().map(|id| Element(id.to_string())))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The one element matching a CSS selector, waiting up to 10 s for it to appear.
    pub async fn find(&self, css: &str) -> anyhow::Result<Element> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = self.find_all(css).await?.into_iter().next() {
                return Ok(e);
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "no element matches {css} on {}",
                    self.current_url().await.unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn text(&self, e: &Element) -> anyhow::Result<String> {
        let v = self
            .call(
                reqwest::Method::GET,
                &format!("/element/{}/text", e.0),
                None,
            )
            .await?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    pub async fn attribute(&self, e: &Element, name: &str) -> anyhow::Result<Option<String>> {
        let v = self
            .call(
                reqwest::Method::GET,
                &format!("/element/{}/attribute/{name}", e.0),
                None,
            )
            .await?;
        Ok(v.as_str().map(str::to_string))
    }

    pub async fn click(&self, e: &Element) -> anyhow::Result<()> {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{}/click", e.0),
            None,
        )
        .await
        .map(|_| ())
    }

    pub async fn type_into(&self, e: &Element, text: &str) -> anyhow::Result<()> {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{}/value", e.0),
            Some(json!({"text": text})),
        )
        .await
        .map(|_| ())
    }

    /// Accepts a `confirm()` dialog, if one is open.
    pub async fn accept_dialog(&self) -> anyhow::Result<()> {
        self.call(reqwest::Method::POST, "/alert/accept", None)
            .await
            .map(|_| ())
    }

    /// Every cookie the browser holds for the current page, HttpOnly ones included: (name, value).
    pub async fn cookies(&self) -> anyhow::Result<Vec<(String, String, Value)>> {
        let v = self.call(reqwest::Method::GET, "/cookie", None).await?;
        Ok(v.as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|c| {
                        (
                            c["name"].as_str().unwrap_or_default().to_string(),
                            c["value"].as_str().unwrap_or_default().to_string(),
                            c.clone(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    pub async fn delete_cookies(&self) -> anyhow::Result<()> {
        self.call(reqwest::Method::DELETE, "/cookie", None)
            .await
            .map(|_| ())
    }

    /// Waits until the current URL satisfies `want` (a navigation after a click is asynchronous).
    pub async fn wait_for_url(&self, want: impl Fn(&str) -> bool) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let url = self.current_url().await?;
            if want(&url) {
                return Ok(url);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the browser stayed on {url}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG of the whole window, written to `path`.
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let v = self.call(reqwest::Method::GET, "/screenshot", None).await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .context("screenshot is not base64")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png)?;
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closing the session stops Chromium; the driver process is killed with the Child.
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    let _ = reqwest::Client::new()
                        .delete(url)
                        .timeout(Duration::from_secs(5))
                        .send()
                        .await;
                });
            }
        })
        .join();
        let _ = self.driver.start_kill();
    }
}
