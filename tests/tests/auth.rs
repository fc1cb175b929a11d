//! Authentication: wrong token, wrong fingerprint and version mismatch each fail with a clear
//! error on the client, while the server keeps serving a good client.

use anyhow::Result;
use wmproxy_client::{ClientError, ClientStatus};
use wmproxy_config::{Secret, ServerTrust};
use wmproxy_tests::backend;
use wmproxy_tests::{TestClient, TestServer, echo_client, init_tracing};
use wmproxy_wire::RejectReason;

#[tokio::test]
async fn bad_token_fingerprint_and_version_are_rejected_clearly() -> Result<()> {
    init_tracing();
    let server = TestServer::start(|_| {}).await?;
    let (_good, public) = echo_client(&server, "good").await?;

    let mut config = server.client_config("intruder");
    config.servers[0].token = Secret::new("not-the-right-token");
    let err = TestClient::start(config).await?.finished().await?.unwrap_err();
    assert!(matches!(err, ClientError::Rejected(RejectReason::BadCredentials)), "{err:?}");
    assert!(err.to_string().contains("authentication failed"), "{err}");
    backend::assert_echo(public, 8192, 3).await?;

    let mut config = server.client_config("spoofed");
    config.servers[0].trust = ServerTrust::Fingerprint([0x11; 32]);
    let err = TestClient::start(config).await?.finished().await?.unwrap_err();
    assert!(matches!(err, ClientError::Untrusted(_)), "{err:?}");
    assert!(err.to_string().contains("fingerprint"), "{err}");
    backend::assert_echo(public, 8192, 3).await?;

    let config = server.client_config("future");
    let mut client = TestClient::start_with(config, |c| c.override_protocol_version(99)).await?;
    let err = client.finished().await?.unwrap_err();
    let ours = wmproxy_wire::PROTOCOL_VERSION;
    assert!(matches!(err, ClientError::VersionMismatch { server, client: 99 } if server == ours), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&format!("version {ours}")) && text.contains("version 99"), "{text}");
    assert!(matches!(&*client.status.borrow(), ClientStatus::Stopped { error: Some(_) }));
    backend::assert_echo(public, 8192, 3).await?;

    assert_eq!(server.handle.clients(), ["good"]);
    Ok(())
}

#[tokio::test]
async fn repeated_failures_from_one_address_are_throttled() -> Result<()> {
    init_tracing();
    let server = TestServer::start(|_| {}).await?;
    let mut config = server.client_config("guesser");
    config.servers[0].token = Secret::new("wrong-guess-token");
    for _ in 0..5 {
        let err = TestClient::start(config.clone()).await?.finished().await?.unwrap_err();
        assert!(matches!(err, ClientError::Rejected(RejectReason::BadCredentials)), "{err:?}");
    }
    // The sixth is throttled: a retryable rejection, so the client keeps trying and says why.
    let mut client = TestClient::start(config).await?;
    let status = client
        .wait_for("throttled", |s| matches!(s, ClientStatus::Connecting { last_error: Some(e), .. } if e.contains("too many failed attempts")))
        .await?;
    assert!(matches!(status, ClientStatus::Connecting { attempt: 1, .. }), "{status:?}");
    assert_eq!(server.handle.throttled_addresses(), 1);
    client.stop().await?;
    Ok(())
}

/// A proof made for one connection does not open another: it is bound to the TLS session.
#[tokio::test]
async fn a_proof_cannot_be_replayed_on_another_connection() -> Result<()> {
    use wmproxy_wire::{AuthToken, HelloReply, auth};
    init_tracing();
    let server = TestServer::start(|_| {}).await?;
    let endpoint = wmproxy_tests::raw::endpoint()?;

    // A valid proof, computed on connection A (which is never used to log in).
    let first = wmproxy_tests::raw::connect_from(&endpoint, &server).await?;
    let mut exporter = [0u8; auth::EXPORTER_LEN];
    first
        .export_keying_material(&mut exporter, auth::EXPORTER_LABEL, auth::exporter_context("home"))
        .map_err(|_| anyhow::anyhow!("exporter"))?;
    let proof = auth::prove(&AuthToken::new(wmproxy_tests::TOKEN), &exporter);

    // Replayed on connection B.
    let second = wmproxy_tests::raw::connect_from(&endpoint, &server).await?;
    let (reply, ..) = wmproxy_tests::raw::hello_with_proof(&second, "home", proof, None).await?;
    assert_eq!(reply, HelloReply::Reject(RejectReason::BadCredentials));

    // The same proof is accepted where it was made.
    let (reply, ..) = wmproxy_tests::raw::hello_with_proof(&first, "home", proof, None).await?;
    assert!(matches!(reply, HelloReply::Welcome { .. }));
    Ok(())
}
