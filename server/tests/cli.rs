//! The real `wmproxy-server` binary and its control subcommands: `status`, `reload` and `stop`
//! talk to the running server through the `[control]` of its config file, and SIGHUP reloads.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const DEADLINE: Duration = Duration::from_secs(20);
const BIN: &str = env!("CARGO_BIN_EXE_wmproxy-server");

/// A loopback port nothing listens on now (bound, then released).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn config(dir: &Path, control: u16, group: Option<u16>) -> String {
    let mut text = format!(
        "bind = \"127.0.0.1:0\"\nstate_dir = \"{}\"\ntoken = \"cli-test-token-1234\"\npublic_bind = \"127.0.0.1\"\n\
         [limits]\ndrain_grace_secs = 1\n[control]\nbind = \"127.0.0.1:{control}\"\ntoken = \"cli-control-token\"\n",
        dir.join("state").display()
    );
    if let Some(port) = group {
        text += &format!("[[groups]]\nname = \"web\"\nkey = \"web-key-123\"\nremote_port = {port}\n");
    }
    text
}

/// Runs `wmproxy-server <command> --config <path>`; its exit success and stdout.
async fn subcommand(command: &str, path: &Path) -> Result<(bool, String)> {
    let out = Command::new(BIN).arg(command).arg("--config").arg(path).output().await?;
    Ok((out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reload_stop_and_sighup_reach_the_running_binary() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("server.toml");
    let control = free_port()?;
    std::fs::write(&path, config(dir.path(), control, None))?;
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    loop {
        let line = tokio::time::timeout(DEADLINE, lines.next_line()).await??.context("server exited early")?;
        if line.starts_with("wmproxy-server listening") {
            break;
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let (ok, out) = subcommand("status", &path).await?;
    ensure!(ok && out.contains("\"clients\": []"), "status: {out}");

    // SIGHUP: the group added to the file starts listening.
    let group = free_port()?;
    std::fs::write(&path, config(dir.path(), control, Some(group)))?;
    let pid = child.id().context("pid")?;
    let hup = std::process::Command::new("kill").args(["-HUP", &pid.to_string()]).status()?;
    ensure!(hup.success(), "kill -HUP failed");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while tokio::net::TcpStream::connect(("127.0.0.1", group)).await.is_err() {
        ensure!(tokio::time::Instant::now() < deadline, "the group added by SIGHUP does not listen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // `reload` answers with the report: the file and the running config agree now.
    let (ok, out) = subcommand("reload", &path).await?;
    ensure!(ok && out.contains("\"added\": []") && out.contains("\"removed\": []"), "reload: {out}");
    // A bad file: `reload` fails and names the key (the CLI reads the same file for the API's
    // address, so it reports the error itself; the API's 422 is tested in tests/reload.rs).
    std::fs::write(&path, "bnid = 1\n")?;
    let bad = Command::new(BIN).args(["reload", "--config"]).arg(&path).output().await?;
    let said = String::from_utf8_lossy(&bad.stderr);
    ensure!(!bad.status.success() && said.contains("bnid"), "reload of a bad file: {said}");
    std::fs::write(&path, config(dir.path(), control, Some(group)))?;

    let (ok, out) = subcommand("stop", &path).await?;
    ensure!(ok && out.contains("stopping"), "stop: {out}");
    let status = tokio::time::timeout(DEADLINE, child.wait()).await??;
    ensure!(status.success(), "exit status {status}");
    Ok(())
}

/// `--bind` and `--state-dir` are for the embedded defaults: with `--config` they are refused,
/// not silently dropped for the file's values (issue 19, item 9).
#[tokio::test]
async fn bind_and_state_dir_flags_are_refused_with_a_config_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("server.toml");
    std::fs::write(&path, config(dir.path(), free_port()?, None))?;
    for flags in [["--bind", "127.0.0.1:0"], ["--state-dir", "/nonexistent"]] {
        let mut command = Command::new(BIN);
        command.arg("--config").arg(&path).args(flags).stdout(Stdio::null()).stderr(Stdio::piped());
        // Before the fix the server started (and ran on) with the file's values.
        let child = command.kill_on_drop(true).spawn()?;
        let out = tokio::time::timeout(DEADLINE, child.wait_with_output()).await.context("the flag was ignored")??;
        let said = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success() && said.contains("cannot be used with") && said.contains(flags[0]), "{said}");
    }
    Ok(())
}

/// The shared token, a client's token, the control API's token and a group key are each read
/// from a file or the environment when written so; `check` says what is missing.
#[tokio::test]
async fn secrets_come_from_files_and_the_environment() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (token_file, path) = (dir.path().join("token"), dir.path().join("server.toml"));
    std::fs::write(&token_file, "shared-token-from-a-file\n")?;
    let text = format!(
        "state_dir = \"{}\"\ntoken = {{ file = \"{}\" }}\n[control]\ntoken = {{ env = \"WMPROXY_TEST_CONTROL_TOKEN\" }}\n\
         [[clients]]\nname = \"home\"\ntoken = {{ file = \"{}\" }}\nallow_ports = [7000]\n",
        dir.path().display(),
        token_file.display(),
        token_file.display(),
    );
    std::fs::write(&path, text)?;
    let check = |env: Option<&str>| {
        let mut command = Command::new(BIN);
        command.args(["check", "--config"]).arg(&path).env_remove("WMPROXY_TEST_CONTROL_TOKEN");
        if let Some(value) = env {
            command.env("WMPROXY_TEST_CONTROL_TOKEN", value);
        }
        command.output()
    };
    let out = check(Some("control-token-from-env")).await?;
    ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = check(None).await?;
    let said = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && said.contains("`WMPROXY_TEST_CONTROL_TOKEN` is not set"), "{said}");

    std::fs::remove_file(&token_file)?;
    let out = check(Some("control-token-from-env")).await?;
    let said = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && said.contains("cannot read the secret file"), "{said}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_writes_a_starter_config_once_and_completions_and_the_man_page_print() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("server.toml");
    let init = || {
        Command::new(BIN)
            .arg("init")
            .arg("--config")
            .arg(&path)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .output()
    };
    let out = init().await?;
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(out.status.success(), "init failed: {said} {}", String::from_utf8_lossy(&out.stderr));
    let fingerprint = said.lines().find_map(|l| l.strip_prefix("certificate fingerprint: ")).context("fingerprint")?;
    ensure!(said.contains("wmproxy-client init --server <THIS_HOST>:7835 --fingerprint"), "{said}");
    let text = std::fs::read_to_string(&path)?;
    ensure!(text.contains(fingerprint), "the config names the fingerprint");
    let (ok, checked) = subcommand("check", &path).await?;
    ensure!(ok, "the starter config does not check: {checked}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
        ensure!(mode == 0o600, "the config holds tokens but is {mode:o}");
    }
    // Never over an existing file.
    let again = init().await?;
    ensure!(!again.status.success(), "a second init succeeded");
    ensure!(String::from_utf8_lossy(&again.stderr).contains("exists"), "{}", String::from_utf8_lossy(&again.stderr));
    ensure!(std::fs::read_to_string(&path)? == text, "the config changed");

    let bash = Command::new(BIN).args(["completions", "bash"]).output().await?;
    ensure!(bash.status.success() && String::from_utf8_lossy(&bash.stdout).contains("complete -F _wmproxy__server"));
    let man = Command::new(BIN).arg("manpage").output().await?;
    let man = String::from_utf8_lossy(&man.stdout).into_owned();
    ensure!(man.starts_with(".ie") || man.contains(".TH wmproxy-server"), "{}", &man[..man.len().min(200)]);
    ensure!(man.contains("init") && man.contains("completions"), "the subcommands are listed");
    Ok(())
}
