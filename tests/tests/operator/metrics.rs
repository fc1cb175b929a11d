//! Metrics and log levels a fresh server must get right.

use anyhow::{Result, ensure};
use tracing::Level;
use wmproxy_tests::logs::Logs;
use wmproxy_tests::metrics::{sample, scrape};
use wmproxy_tests::{TestServer, eventually_async, raw};

/// An alert on `wmproxy_last_reload_success == 0` must not fire on a server nobody reloaded.
#[tokio::test]
async fn last_reload_success_is_1_before_any_reload() -> Result<()> {
    let server = TestServer::start(|_| {}).await?;
    let metrics = scrape(&server).await?;
    ensure!(sample(&metrics, "wmproxy_last_reload_success", &[]) == Some(1.0), "{:?}", metrics.samples);
    ensure!(sample(&metrics, "wmproxy_reloads_total", &[]) == Some(0.0));
    Ok(())
}

/// A client restarting closes its connection in the middle of the handshake: counted, logged
/// at debug, never a warning.
#[tokio::test]
async fn a_peer_leaving_during_the_handshake_is_counted_not_warned() -> Result<()> {
    let logs = Logs::capture();
    let server = TestServer::start(|_| {}).await?;
    let (endpoint, conn) = raw::connect(&server).await?;
    let me = endpoint.local_addr()?.to_string();
    conn.close(0u32.into(), b"restarting");

    let abandoned = async || {
        let metrics = scrape(&server).await?;
        Ok(sample(&metrics, "wmproxy_handshakes_abandoned_total", &[]) == Some(1.0))
    };
    eventually_async("the abandoned handshake counted", abandoned).await?;
    let mine = logs.matching(|e| e.field("peer") == me);
    ensure!(
        mine.iter().any(|e| e.level == Level::DEBUG && e.message.contains("left during the handshake")),
        "{mine:?}"
    );
    ensure!(mine.iter().all(|e| e.level > Level::WARN), "a warning for a routine close: {mine:?}");
    let metrics = scrape(&server).await?;
    ensure!(sample(&metrics, "wmproxy_handshakes_failed_total", &[]) == Some(0.0));
    Ok(())
}
