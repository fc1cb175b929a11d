//! Trusting the server through a CA file, with the server's certificate loaded from PEM files.

use std::path::Path;

use anyhow::Result;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use wmproxy_client::ClientError;
use wmproxy_config::{ServerTrust, TlsFiles};
use wmproxy_tests::backend::{self, pattern};
use wmproxy_tests::{TestClient, TestServer, init_tracing, tcp_service};

/// A CA in `dir/{name}-ca.pem`; returns its issuer for signing.
fn make_ca(dir: &Path, name: &str) -> Result<Issuer<'static, KeyPair>> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    std::fs::write(dir.join(format!("{name}-ca.pem")), cert.pem())?;
    Ok(Issuer::new(params, key))
}

#[tokio::test]
async fn ca_file_trust_accepts_the_right_ca_and_name_only() -> Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let ca = make_ca(dir.path(), "good")?;
    make_ca(dir.path(), "other")?;
    let leaf_key = KeyPair::generate()?;
    let leaf = CertificateParams::new(vec!["tunnel.test".to_owned()])?.signed_by(&leaf_key, &ca)?;
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server-key.pem"));
    std::fs::write(&cert, leaf.pem())?;
    std::fs::write(&key, leaf_key.serialize_pem())?;

    let server = TestServer::start(|f| f.tls = Some(TlsFiles { cert: cert.clone(), key: key.clone() })).await?;
    let echo = backend::echo().await?;

    let mut config = server.client_config("home");
    config.servers[0].trust = ServerTrust::CaFile(dir.path().join("good-ca.pem"));
    config.servers[0].server_name = "tunnel.test".into();
    config.services.push(tcp_service("echo", echo, 0));
    let mut client = TestClient::start(config.clone()).await?;
    let port = client.port_of("echo").await?;
    let msg = pattern(5000, 11);
    assert_eq!(backend::round_trip(([127, 0, 0, 1], port).into(), &msg).await?, msg);
    client.stop().await?;

    let mut wrong_ca = config.clone();
    wrong_ca.servers[0].trust = ServerTrust::CaFile(dir.path().join("other-ca.pem"));
    let err = TestClient::start(wrong_ca).await?.finished().await?.unwrap_err();
    assert!(matches!(err, ClientError::Untrusted(_)), "{err:?}");

    let mut wrong_name = config;
    wrong_name.servers[0].server_name = "elsewhere.test".into();
    let err = TestClient::start(wrong_name).await?.finished().await?.unwrap_err();
    assert!(matches!(err, ClientError::Untrusted(_)), "{err:?}");
    Ok(())
}
