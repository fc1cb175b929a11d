//! The server's TLS identity: PEM files from the config, or a self-signed certificate generated
//! on first start and kept in the state directory so the fingerprint survives restarts. Also the
//! generated token of the embedded (no config file) setup.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use wmproxy_config::TlsFiles;
use wmproxy_tunnel::tls::Fingerprint;

/// File names inside the state directory.
const CERT_FILE: &str = "server-cert.pem";
const KEY_FILE: &str = "server-key.pem";
const TOKEN_FILE: &str = "token";

/// Names in the generated certificate. Clients pin its fingerprint, so the names only matter to
/// clients that check them (`ca_file`/`system_roots` users bring their own certificate).
const GENERATED_NAMES: &[&str] = &["wmproxy", "localhost"];

/// Why the identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("cannot load {what} from {path}: {reason}")]
    Load {
        /// "certificate" or "private key".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The state directory or a file in it could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Certificate generation failed.
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A certificate chain and its key.
#[derive(Debug)]
pub struct Identity {
    /// Chain, leaf first.
    pub certs: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// SHA-256 of the leaf; what clients pin.
    pub fingerprint: Fingerprint,
}

impl Identity {
    /// Loads `tls` if given, else the generated identity in `state_dir`, generating it on first
    /// use.
    pub fn load_or_generate(tls: Option<&TlsFiles>, state_dir: &Path) -> Result<Self, IdentityError> {
        match tls {
            Some(files) => Self::load(&files.cert, &files.key),
            None => {
                let (cert, key) = (state_dir.join(CERT_FILE), state_dir.join(KEY_FILE));
                if cert.exists() && key.exists() { Self::load(&cert, &key) } else { Self::generate(state_dir) }
            }
        }
    }

    /// Loads a PEM certificate chain and key.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, IdentityError> {
        let load_err = |what, path: &Path, reason: String| IdentityError::Load { what, path: path.to_owned(), reason };
        let certs = CertificateDer::pem_file_iter(cert_path)
            .map_err(|e| load_err("certificate", cert_path, e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| load_err("certificate", cert_path, e.to_string()))?;
        let leaf = certs.first().ok_or_else(|| load_err("certificate", cert_path, "no certificate in file".into()))?;
        let fingerprint = Fingerprint::of(leaf);
        let key =
            PrivateKeyDer::from_pem_file(key_path).map_err(|e| load_err("private key", key_path, e.to_string()))?;
        Ok(Self { certs, key, fingerprint })
    }

    fn generate(state_dir: &Path) -> Result<Self, IdentityError> {
        let names: Vec<String> = GENERATED_NAMES.iter().map(|s| (*s).to_owned()).collect();
        let generated = rcgen::generate_simple_self_signed(names)?;
        create_state_dir(state_dir)?;
        write_private(&state_dir.join(KEY_FILE), generated.signing_key.serialize_pem().as_bytes())?;
        write_private(&state_dir.join(CERT_FILE), generated.cert.pem().as_bytes())?;
        let cert = generated.cert.der().clone();
        let key = PrivateKeyDer::try_from(generated.signing_key.serialize_der()).map_err(|e| IdentityError::Load {
            what: "private key",
            path: state_dir.join(KEY_FILE),
            reason: e.to_owned(),
        })?;
        Ok(Self { fingerprint: Fingerprint::of(&cert), certs: vec![cert], key })
    }
}

/// The token of the embedded setup: read from the state directory, or generated (32 random
/// bytes, hex) and stored there on first start.
pub fn load_or_generate_token(state_dir: &Path) -> Result<String, IdentityError> {
    let path = state_dir.join(TOKEN_FILE);
    if let Ok(text) = fs::read_to_string(&path) {
        let token = text.trim();
        if token.len() >= 8 {
            return Ok(token.to_owned());
        }
    }
    let token =
        wmproxy_ops::cli::random_token().map_err(|source| IdentityError::Write { path: path.clone(), source })?;
    create_state_dir(state_dir)?;
    write_private(&path, token.as_bytes())?;
    Ok(token)
}

fn create_state_dir(dir: &Path) -> Result<(), IdentityError> {
    fs::create_dir_all(dir).map_err(|source| IdentityError::Write { path: dir.to_owned(), source })
}

/// Writes a file readable only by its owner (on Unix).
fn write_private(path: &Path, contents: &[u8]) -> Result<(), IdentityError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let write = || -> io::Result<()> {
        let mut file = options.open(path)?;
        file.write_all(contents)?;
        file.sync_all()
    };
    write().map_err(|source| IdentityError::Write { path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_identity_and_token_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let first = Identity::load_or_generate(None, dir.path()).unwrap();
        let again = Identity::load_or_generate(None, dir.path()).unwrap();
        assert_eq!(first.fingerprint, again.fingerprint);
        let token = load_or_generate_token(dir.path()).unwrap();
        assert_eq!(token.len(), 64);
        assert_eq!(load_or_generate_token(dir.path()).unwrap(), token);
    }

    #[test]
    fn missing_pem_file_names_the_file() {
        let files = TlsFiles { cert: "/nonexistent/cert.pem".into(), key: "/nonexistent/key.pem".into() };
        let err = Identity::load_or_generate(Some(&files), Path::new("/tmp")).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/cert.pem"), "{err}");
    }
}
