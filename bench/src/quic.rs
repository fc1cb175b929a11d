//! The ceiling: one bare quinn stream between two endpoints in this process, with wmproxy's
//! transport config and crypto, and no TCP on either side. The tunnel cannot beat this.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use wmproxy_tunnel::tls::{Fingerprint, PinnedCertVerifier, crypto_provider};
use wmproxy_tunnel::transport::{self, TransportTuning};

/// Sends `bytes` over one stream and returns Gbit/s of payload.
pub async fn bare_stream(bytes: usize) -> Result<f64> {
    let generated = rcgen::generate_simple_self_signed(vec!["wmproxy".to_owned()])?;
    let cert = generated.cert.der().clone();
    let key = rustls_pki_types::PrivateKeyDer::try_from(generated.signing_key.serialize_der())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let provider = crypto_provider();
    let tuning = Arc::new(TransportTuning::default().to_config());

    let tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)?;
    let mut server_config =
        quinn::ServerConfig::with_crypto(Arc::new(quinn::crypto::rustls::QuicServerConfig::try_from(tls)?));
    server_config.transport_config(tuning.clone());
    let server = transport::endpoint(transport::bind_udp("127.0.0.1:0".parse()?)?, Some(server_config))?;
    let server_addr = server.local_addr()?;

    let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(PinnedCertVerifier::new(Fingerprint::of(&cert), &provider))
        .with_no_client_auth();
    let mut client_config = quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls)?));
    client_config.transport_config(tuning);
    let client = transport::endpoint(transport::bind_udp("127.0.0.1:0".parse()?)?, None)?;

    let receiver = tokio::spawn(async move {
        let conn = server.accept().await.context("no connection")?.await?;
        // A bidirectional stream, as the tunnel uses (the transport allows no unidirectional ones).
        let (_send, mut recv) = conn.accept_bi().await?;
        let mut total = 0usize;
        while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
            total += chunk.bytes.len();
        }
        anyhow::Ok(total)
    });
    let conn = client.connect_with(client_config, server_addr, "wmproxy")?.await?;
    let started = Instant::now();
    let (mut send, _recv) = conn.open_bi().await?;
    let chunk = bytes::Bytes::from(vec![0x5au8; 64 * 1024]);
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        send.write_chunk(chunk.slice(..n)).await?;
        left -= n;
    }
    send.finish()?;
    let received = receiver.await??;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(received == bytes, "received {received} of {bytes}");
    conn.close(0u32.into(), b"done");
    Ok(bytes as f64 * 8.0 / secs / 1e9)
}
