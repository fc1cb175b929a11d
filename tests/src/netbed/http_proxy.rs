//! A real HTTP proxy (tinyproxy) in a namespace of the bed: `CONNECT` only to port 443, basic
//! authentication, running as `nobody`. Killed when dropped.

use std::net::SocketAddr;
use std::process::{Child, Stdio};

use anyhow::{Context, Result, bail};

use super::{InNetns, Netbed};
use crate::DEADLINE;

/// A running tinyproxy.
#[derive(Debug)]
pub struct HttpProxy {
    child: Child,
    /// Where it listens (in its namespace).
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

/// Whether a test should skip for want of tinyproxy: `true` after printing `SKIPPED:`; an
/// error instead where [`super::REQUIRE`] is set (CI installs it).
pub fn skip() -> Result<bool> {
    if installed() {
        return Ok(false);
    }
    let why = "tinyproxy is not installed (Debian: apt install tinyproxy)";
    if std::env::var_os(super::REQUIRE).is_some() {
        bail!("{} is set, but {why}", super::REQUIRE);
    }
    println!("SKIPPED: {why}");
    Ok(true)
}

impl HttpProxy {
    /// Starts tinyproxy in `ns` (with `runtime`, a runtime of that namespace), asking for
    /// `user` and `password`; returns once it accepts connections.
    pub async fn start(bed: &Netbed, (ns, runtime): (&str, &InNetns), (user, password): (&str, &str)) -> Result<Self> {
        if !installed() {
            bail!("tinyproxy is not installed (Debian: apt install tinyproxy)");
        }
        // A free port of the namespace (its own, fresh: nothing else binds there meanwhile).
        let port = runtime
            .run(async { anyhow::Ok(tokio::net::TcpListener::bind("127.0.0.1:0").await?.local_addr()?.port()) })
            .await??;
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("tinyproxy.conf");
        std::fs::write(
            &config,
            format!(
                "User nobody\nGroup nogroup\nPort {port}\nListen 127.0.0.1\nTimeout 600\nMaxClients 100\n\
                 Allow 127.0.0.1\nConnectPort 443\nBasicAuth {user} {password}\nLogLevel Connect\n"
            ),
        )?;
        let child = bed
            .command(ns, &["tinyproxy", "-d", "-c", &config.to_string_lossy()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting tinyproxy")?;
        let proxy = Self { child, addr: SocketAddr::from(([127, 0, 0, 1], port)), _dir: dir };
        let addr = proxy.addr;
        runtime
            .run(async move {
                let deadline = tokio::time::Instant::now() + DEADLINE;
                while tokio::net::TcpStream::connect(addr).await.is_err() {
                    anyhow::ensure!(tokio::time::Instant::now() < deadline, "tinyproxy did not start listening");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                anyhow::Ok(())
            })
            .await??;
        Ok(proxy)
    }
}

impl Drop for HttpProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether tinyproxy runs here (as the bed's own tools are probed: by running it).
fn installed() -> bool {
    std::process::Command::new("tinyproxy").arg("-v").output().is_ok()
}
