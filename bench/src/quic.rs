//! The ceiling: bare quinn streams between two endpoints in this process, with wmproxy's
//! transport config and crypto, and no TCP on either side. The tunnel cannot beat this.
//!
//! [`bare`] spreads its streams over one or more connections between the same two endpoints:
//! `--only pool` asks whether a pool of connections per client would pay off here (each QUIC
//! connection is driven by one task per end, so one connection's packets are processed by one
//! core at a time).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use wmproxy_tunnel::tls::{Fingerprint, PinnedCertVerifier, crypto_provider};
use wmproxy_tunnel::transport::{self, TransportTuning};

/// Sends `bytes` over one stream and returns Gbit/s of payload.
pub async fn bare_stream(bytes: usize) -> Result<f64> {
    bare(bytes, 1, 1).await
}

/// Sends `bytes` split over `streams` streams, spread round-robin over `conns` connections
/// between the same two endpoints; returns Gbit/s of payload.
pub async fn bare(bytes: usize, streams: usize, conns: usize) -> Result<f64> {
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

    let (conns, streams) = (conns.max(1), streams.max(1));
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for c in 0..conns {
        let connecting = client.connect_with(client_config.clone(), server_addr, "wmproxy")?;
        let (conn, accepted) =
            tokio::join!(connecting, async { anyhow::Ok(server.accept().await.context("no connection")?.await?) });
        let (conn, accepted) = (conn?, accepted?);
        // This connection's share of the streams.
        let here = (c..streams).step_by(conns).count();
        receivers.push(tokio::spawn(async move {
            let mut total = 0usize;
            let mut tasks = Vec::new();
            for _ in 0..here {
                // Bidirectional streams, as the tunnel uses (it allows no unidirectional ones).
                let (_send, mut recv) = accepted.accept_bi().await?;
                tasks.push(tokio::spawn(async move {
                    let mut total = 0usize;
                    while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
                        total += chunk.bytes.len();
                    }
                    anyhow::Ok(total)
                }));
            }
            for task in tasks {
                total += task.await??;
            }
            anyhow::Ok((accepted, total))
        }));
        senders.push((conn, here));
    }

    let per = bytes / streams;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (conn, here) in &senders {
        for _ in 0..*here {
            let conn = conn.clone();
            tasks.push(tokio::spawn(async move {
                let (mut send, _recv) = conn.open_bi().await?;
                let chunk = bytes::Bytes::from(vec![0x5au8; 64 * 1024]);
                let mut left = per;
                while left > 0 {
                    let n = left.min(chunk.len());
                    send.write_chunk(chunk.slice(..n)).await?;
                    left -= n;
                }
                send.finish()?;
                anyhow::Ok(())
            }));
        }
    }
    for task in tasks {
        task.await??;
    }
    let mut received = 0;
    for receiver in receivers {
        received += receiver.await??.1;
    }
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(received == per * streams, "received {received} of {}", per * streams);
    for (conn, _) in senders {
        conn.close(0u32.into(), b"done");
    }
    Ok((per * streams) as f64 * 8.0 / secs / 1e9)
}

/// `--only pool`: bare QUIC, one stream and eight, the eight over 1, 2 and 4 connections;
/// Gbit/s and this process's CPU-seconds per GiB, medians of `repeat` runs.
pub async fn pool(bytes: usize, repeat: usize) -> Result<()> {
    println!("== bare QUIC over several connections (would a pool per client pay off?), {} MiB per run", bytes >> 20);
    for (streams, conns) in [(1, 1), (8, 1), (8, 2), (8, 4)] {
        let (mut rates, mut cpus) = (Vec::new(), Vec::new());
        for _ in 0..repeat.max(1) {
            let (rate, cpu) = crate::cpu_per_gib(bytes, bare(bytes, streams, conns)).await?;
            rates.push(rate);
            cpus.push(cpu);
        }
        println!(
            "{streams} stream(s) over {conns} connection(s): {:>5.2} Gbit/s, {:.3} CPU-s per GiB (median of {})",
            crate::median(&mut rates),
            crate::median(&mut cpus),
            repeat.max(1)
        );
    }
    Ok(())
}
