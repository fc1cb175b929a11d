//! TLS test helpers: a self-signed certificate (rcgen), a backend acceptor with it, and a user
//! connector that trusts only it.

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A self-signed certificate and its key.
pub struct TestCert {
    der: CertificateDer<'static>,
    key: rcgen::KeyPair,
    pem: String,
}

impl std::fmt::Debug for TestCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCert").field("der", &self.der).finish_non_exhaustive()
    }
}

impl TestCert {
    /// A certificate for `names`.
    pub fn new(names: &[&str]) -> Result<Self> {
        let key = rcgen::KeyPair::generate()?;
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let cert = rcgen::CertificateParams::new(names)?.self_signed(&key)?;
        Ok(Self { der: cert.der().clone(), pem: cert.pem(), key })
    }

    /// Writes `cert.pem` and `key.pem` into `dir`; returns their paths.
    pub fn write_pem(&self, dir: &Path) -> Result<wmproxy_config::TlsFiles> {
        let files = wmproxy_config::TlsFiles { cert: dir.join("cert.pem"), key: dir.join("key.pem") };
        std::fs::write(&files.cert, &self.pem)?;
        std::fs::write(&files.key, self.key.serialize_pem())?;
        Ok(files)
    }

    /// A TLS acceptor serving this certificate.
    pub fn acceptor(&self) -> Result<TlsAcceptor> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()));
        let config = rustls::ServerConfig::builder_with_provider(wmproxy_tunnel::tls::crypto_provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![self.der.clone()], key)?;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// A TLS connector that trusts this certificate and nothing else.
    pub fn connector(&self) -> Result<TlsConnector> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone())?;
        let config = rustls::ClientConfig::builder_with_provider(wmproxy_tunnel::tls::crypto_provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsConnector::from(Arc::new(config)))
    }
}
