//! The failed-login throttle, seen from the network: it is keyed by (source prefix, client
//! name) and checked after the proof, so someone guessing a client's token behind the same NAT
//! slows only their own guesses and never locks the real client out.

use anyhow::{Result, ensure};
use wmproxy_client::{ClientError, ClientStatus};
use wmproxy_config::Secret;
use wmproxy_tests::{TestClient, TestServer, init_tracing};
use wmproxy_wire::RejectReason;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guesser_behind_the_same_address_cannot_lock_out_the_client_with_the_right_token() -> Result<()> {
    init_tracing();
    let server = TestServer::start(|_| {}).await?;
    let mut guess = server.client_config("home");
    guess.servers[0].token = Secret::new("wrong-guess-token");
    for _ in 0..5 {
        let err = TestClient::start(guess.clone()).await?.finished().await?.unwrap_err();
        ensure!(matches!(err, ClientError::Rejected(RejectReason::BadCredentials)), "{err:?}");
    }
    // The guesser is throttled now…
    let mut guesser = TestClient::start(guess).await?;
    guesser
        .wait_for("the guesser throttled", |s| {
            matches!(s, ClientStatus::Connecting { last_error: Some(e), .. } if e.contains("too many failed attempts"))
        })
        .await?;
    guesser.stop().await?;

    // …but the real client, from the very same address, comes in at once.
    let mut real = TestClient::start(server.client_config("home")).await?;
    real.wait_for("the real client connected", |s| matches!(s, ClientStatus::Connected { .. })).await?;
    ensure!(server.handle.clients() == ["home"], "{:?}", server.handle.clients());
    Ok(())
}
