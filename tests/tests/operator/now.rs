//! `GET /now` on both ends reads back as a config (item 7): file key names, colon-hex
//! fingerprints, `*_secs` numbers, no placeholders; fed back through the loader with its
//! secrets filled in, it gives a config equal to the running one.

use anyhow::{Context, Result, ensure};
use wmproxy_config::now::fill_secrets;
use wmproxy_tests::{TestClient, TestServer, control_call};

const SECRET: &str = "one-secret-for-all";

/// `/now`'s JSON as TOML text, with every masked secret filled in.
fn as_file(json: &str) -> Result<String> {
    let json: serde_json::Value = serde_json::from_str(json)?;
    let mut value = toml::Value::try_from(json)?;
    fill_secrets(&mut value, SECRET);
    Ok(toml::to_string(&value)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn now_on_both_ends_reads_back_as_an_equal_config() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server_file = dir.path().join("server.toml");
    let server_text = format!(
        "bind = \"127.0.0.1:0\"\nstate_dir = \"{}\"\npublic_bind = \"127.0.0.1\"\ntoken = \"{SECRET}\"\n\
         allow_ports = [\"1024-65535\"]\n[limits]\ndrain_grace_secs = 1\n[control]\nbind = \"127.0.0.1:0\"\n\
         token = \"{SECRET}\"\n[vhost]\nhttp_bind = \"127.0.0.1:0\"\n[[groups]]\nname = \"web\"\nkey = \"{SECRET}\"\n\
         type = \"http\"\ncustom_domains = [\"www.now.example\"]\n",
        dir.path().join("state").display()
    );
    std::fs::write(&server_file, &server_text)?;
    let server = TestServer::start_from(&server_file).await?;
    let api = server.handle.control_addr().context("control")?;
    let (_, now) = control_call(api, Some(SECRET), "GET", "/now", "").await?;
    let back = as_file(&now)?;
    ensure!(back.contains("type = \"http\"") && !back.contains("kind"), "{back}");
    let again = wmproxy_config::parse_server(&back).with_context(|| back.clone())?;
    ensure!(again == wmproxy_config::load_server(&server_file)?, "server /now:\n{back}");

    let client_file = dir.path().join("client.toml");
    let client_text = format!(
        "server_addr = \"{}\"\nserver_fingerprint = \"{}\"\nname = \"now-home\"\ntoken = \"{SECRET}\"\n\
         [control]\nbind = \"127.0.0.1:0\"\ntoken = \"{SECRET}\"\n\
         [[services]]\nname = \"ssh\"\nlocal_addr = \"127.0.0.1:22\"\nidle_timeout_secs = 600\n\
         [[services]]\nname = \"site\"\ntype = \"http\"\nlocal_addr = \"127.0.0.1:80\"\ngroup = \"web\"\n\
         group_key = \"{SECRET}\"\n[[proxies]]\ntype = \"socks5\"\nlisten = \"127.0.0.1:0\"\nhandshake_timeout_secs = 7\n",
        server.addr, server.fingerprint
    );
    std::fs::write(&client_file, &client_text)?;
    let (_client, control) = TestClient::start_from(&client_file).await?;
    let (status, now) = control_call(control, Some(SECRET), "GET", "/now", "").await?;
    ensure!(status == 200, "{status} {now}");
    let back = as_file(&now)?;
    ensure!(back.contains("handshake_timeout_secs = 7") && !back.contains("remote_port = 0"), "{back}");
    ensure!(back.contains(&format!("server_fingerprint = \"{}\"", server.fingerprint)), "colon-hex: {back}");
    let again = wmproxy_config::parse_client(&back).with_context(|| back.clone())?;
    ensure!(again == wmproxy_config::load_client(&client_file)?, "client /now:\n{back}");
    Ok(())
}
