//! The real `wmproxy-client` binary and its control subcommands: `status`, `reload` and `stop`
//! reach the running client through the `[control]` of its config file; SIGHUP reloads; `stop`
//! ends it for good (no reconnecting). No server is needed: the client keeps trying to connect.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use hyper::Method;
use tokio::process::Command;
use wmproxy_ops::control::call;

const DEADLINE: Duration = Duration::from_secs(20);
const BIN: &str = env!("CARGO_BIN_EXE_wmproxy-client");

/// A loopback port nothing listens on now (bound, then released).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn config(control: u16, services: &[&str]) -> String {
    let mut text = format!(
        "server_addr = \"127.0.0.1:9\"\nserver_fingerprint = \"{}\"\nname = \"cli\"\ntoken = \"cli-test-token-1234\"\n\
         [control]\nbind = \"127.0.0.1:{control}\"\ntoken = \"cli-control-token\"\n",
        "00".repeat(32)
    );
    for name in services {
        text += &format!("[[services]]\nname = \"{name}\"\nlocal_addr = \"127.0.0.1:9\"\n");
    }
    text
}

/// Runs `wmproxy-client <command> --config <path>`; its exit success and stdout.
async fn subcommand(command: &str, path: &Path) -> Result<(bool, String)> {
    let out = Command::new(BIN).arg(command).arg("--config").arg(path).output().await?;
    Ok((out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reload_stop_and_sighup_reach_the_running_client() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("client.toml");
    let control = free_port()?;
    std::fs::write(&path, config(control, &["a"]))?;
    let mut child = Command::new(BIN).arg("--config").arg(&path).stderr(Stdio::null()).kill_on_drop(true).spawn()?;

    // The API comes up with the client; poll until `status` answers.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let status = loop {
        match subcommand("status", &path).await? {
            (true, out) => break out,
            _ if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            (_, out) => anyhow::bail!("status never answered: {out}"),
        }
    };
    ensure!(status.contains("\"state\": \"connecting\""), "status: {status}");

    // SIGHUP applies the file (seen in the running config); `reload` then has nothing to add.
    std::fs::write(&path, config(control, &["a", "b"]))?;
    let pid = child.id().context("pid")?;
    let hup = std::process::Command::new("kill").args(["-HUP", &pid.to_string()]).status()?;
    ensure!(hup.success(), "kill -HUP failed");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], control));
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let now = call(addr, Some("cli-control-token"), Method::GET, "/now", Bytes::new()).await?.1;
        if now.contains("\"name\": \"b\"") {
            break;
        }
        ensure!(tokio::time::Instant::now() < deadline, "SIGHUP was never applied: {now}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (ok, out) = subcommand("reload", &path).await?;
    ensure!(ok && out.contains("\"added\": []") && out.contains("\"removed\": []"), "reload: {out}");

    let (ok, out) = subcommand("stop", &path).await?;
    ensure!(ok && out.contains("stopping"), "stop: {out}");
    let exit = tokio::time::timeout(DEADLINE, child.wait()).await??;
    ensure!(exit.success(), "exit status {exit}");
    Ok(())
}

/// With `--config`, `WMPROXY_TOKEN` is not silently dropped: the client says how a config file
/// reads it, and a file that does read it gets its value (issue 19, item 9).
#[tokio::test]
async fn wmproxy_token_with_a_config_file_is_explained_and_readable() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("client.toml");
    // Invalid (no services, a bad address) so the binary exits at once, after the note.
    std::fs::write(&path, "server_addr = \"nowhere\"\n")?;
    let out = Command::new(BIN).arg("--config").arg(&path).env("WMPROXY_TOKEN", "env-token-1234").output().await?;
    let said = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && said.contains("token = { env = \"WMPROXY_TOKEN\" }"), "{said}");

    let text =
        config(free_port()?, &[]).replace("token = \"cli-test-token-1234\"", "token = { env = \"WMPROXY_TOKEN\" }");
    std::fs::write(&path, text)?;
    let check = |token: Option<&str>| {
        let mut command = Command::new(BIN);
        command.args(["check", "--config"]).arg(&path).env_remove("WMPROXY_TOKEN");
        if let Some(token) = token {
            command.env("WMPROXY_TOKEN", token);
        }
        command.output()
    };
    ensure!(check(Some("env-token-1234")).await?.status.success());
    let out = check(None).await?;
    ensure!(String::from_utf8_lossy(&out.stderr).contains("`WMPROXY_TOKEN` is not set"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_writes_a_starter_config_once_from_what_the_server_printed() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("client.toml");
    let fingerprint = "ab".repeat(32);
    let init = |fingerprint: &str| {
        Command::new(BIN)
            .arg("init")
            .arg("--config")
            .arg(&path)
            .args(["--server", "203.0.113.10:7835", "--fingerprint", fingerprint, "--name", "laptop"])
            .env("WMPROXY_TOKEN", "the-servers-token")
            .output()
    };
    // A bad fingerprint writes nothing.
    let bad = init("not-hex").await?;
    ensure!(!bad.status.success() && !path.exists(), "{}", String::from_utf8_lossy(&bad.stderr));
    let out = init(&fingerprint).await?;
    ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (ok, checked) = subcommand("check", &path).await?;
    ensure!(ok, "the starter config does not check: {checked}");
    let text = std::fs::read_to_string(&path)?;
    ensure!(text.contains("the-servers-token") && text.contains("name = \"laptop\""), "{text}");
    let again = init(&fingerprint).await?;
    ensure!(!again.status.success() && std::fs::read_to_string(&path)? == text, "a second init overwrote");
    let zsh = Command::new(BIN).args(["completions", "zsh"]).output().await?;
    ensure!(zsh.status.success() && String::from_utf8_lossy(&zsh.stdout).contains("#compdef wmproxy-client"));
    Ok(())
}
