//! Headless Chromium for browser tests, driven over the Chrome DevTools Protocol: one
//! WebSocket to the browser (tokio-tungstenite), one page attached to it, and the few commands
//! a test needs (navigate, evaluate JavaScript, screenshot).
//!
//! Tests skip, with a message, when no Chromium is found (`.ci/run` installs Debian's
//! `chromium`; `WMPROXY_CHROMIUM` names another binary).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// How long Chromium may take to start and to answer one command.
pub const BROWSER_DEADLINE: Duration = Duration::from_secs(60);

/// The Chromium binary: `WMPROXY_CHROMIUM`, or the first of the usual names on `PATH`.
pub fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("WMPROXY_CHROMIUM") {
        return Some(path.into());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser", "google-chrome"].map(|name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// [`chromium`], or `None` after printing why the calling test is skipped.
pub fn chromium_or_skip() -> Option<PathBuf> {
    let found = chromium();
    if found.is_none() {
        eprintln!("SKIPPED: no Chromium found (install Debian's `chromium`, or set WMPROXY_CHROMIUM)");
    }
    found
}

/// A headless Chromium with one page. Killed when dropped.
#[derive(Debug)]
pub struct Browser {
    _child: Child,
    _profile: tempfile::TempDir,
    ws: WebSocketStream<TcpStream>,
    session: String,
    next_id: u64,
}

impl Browser {
    /// Starts `chromium` headless with a fresh profile and opens a blank page.
    pub async fn launch(chromium: &Path) -> Result<Self> {
        let profile = tempfile::tempdir()?;
        let mut child = Command::new(chromium)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
            .args(["--no-proxy-server", "--remote-debugging-port=0", "--window-size=1280,1400"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot run {}", chromium.display()))?;
        let stderr = child.stderr.take().context("Chromium's stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let url = tokio::time::timeout(BROWSER_DEADLINE, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    return Ok(url.trim().to_owned());
                }
            }
            bail!("Chromium exited before it listened")
        })
        .await
        .context("Chromium did not start its DevTools endpoint in time")??;
        // Its later output is not read: drained so that a full pipe never blocks it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let host = url.strip_prefix("ws://").and_then(|rest| rest.split('/').next()).context("a ws:// URL")?;
        let (ws, _) = tokio_tungstenite::client_async(url.as_str(), TcpStream::connect(host).await?).await?;
        let mut browser = Self { _child: child, _profile: profile, ws, session: String::new(), next_id: 0 };
        let target = browser.call("Target.createTarget", json!({ "url": "about:blank" })).await?;
        let target_id = target["targetId"].as_str().context("no targetId")?.to_owned();
        let attached = browser.call("Target.attachToTarget", json!({ "targetId": target_id, "flatten": true })).await?;
        browser.session = attached["sessionId"].as_str().context("no sessionId")?.to_owned();
        Ok(browser)
    }

    /// Sends one command (to the page once attached) and waits for its result.
    async fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        self.ws.send(Message::text(message.to_string())).await?;
        let answer = tokio::time::timeout(BROWSER_DEADLINE, async {
            while let Some(message) = self.ws.next().await {
                let Message::Text(text) = message? else { continue };
                let value: Value = serde_json::from_str(&text)?;
                if value["id"] == json!(id) {
                    return Ok(value);
                }
            }
            bail!("Chromium closed the DevTools connection")
        })
        .await
        .with_context(|| format!("no answer to {method}"))??;
        if let Some(error) = answer.get("error") {
            bail!("{method} failed: {error}");
        }
        Ok(answer["result"].clone())
    }

    /// Loads `url` in the page.
    pub async fn navigate(&mut self, url: &str) -> Result<()> {
        let result = self.call("Page.navigate", json!({ "url": url })).await?;
        if let Some(error) = result.get("errorText") {
            bail!("cannot load {url}: {error}");
        }
        Ok(())
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns its value.
    pub async fn eval(&mut self, expression: &str) -> Result<Value> {
        let params = json!({ "expression": expression, "awaitPromise": true, "returnByValue": true });
        let result = self.call("Runtime.evaluate", params).await?;
        if let Some(exception) = result.get("exceptionDetails") {
            bail!("`{expression}` threw: {exception}");
        }
        Ok(result["result"]["value"].clone())
    }

    /// Evaluates `expression` every 100 ms until it is truthy (not `false`, `null`, `0` or
    /// empty), within `deadline`; returns that value. A page still loading counts as not yet.
    pub async fn wait_for(&mut self, expression: &str, deadline: Duration) -> Result<Value> {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let last = match self.eval(expression).await {
                Ok(value) if truthy(&value) => return Ok(value),
                Ok(value) => value,
                Err(e) => json!(e.to_string()),
            };
            if tokio::time::Instant::now() >= until {
                bail!("`{expression}` did not hold within {deadline:?}; last: {last}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a PNG of the page's full height at `path`.
    pub async fn screenshot(&mut self, path: &Path) -> Result<()> {
        let params = json!({ "format": "png", "captureBeyondViewport": true });
        let shot = self.call("Page.captureScreenshot", params).await?;
        let data = shot["data"].as_str().context("no screenshot data")?;
        let png = base64::engine::general_purpose::STANDARD.decode(data)?;
        std::fs::write(path, png).with_context(|| format!("cannot write {}", path.display()))
    }
}

fn truthy(value: &Value) -> bool {
    match value {
        Value::Null | Value::Bool(false) => false,
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
        Value::String(s) => !s.is_empty(),
        _ => true,
    }
}
