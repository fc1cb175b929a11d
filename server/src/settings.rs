//! [`ConfigCell`]: the running config, which a reload replaces whole. Each operation (a
//! handshake, a registration, a forward, a reload) takes one [`ConfigCell::snapshot`] and keeps
//! it, so it never sees half of one config and half of another.
//!
//! Only what a reload may change is read from here at run time (clients and tokens, egress,
//! groups, proxies); the settings that need a restart were handed to their subsystems by
//! `Server::bind` and never change.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};

use wmproxy_config::ServerConfig;

/// The running config, and the file it came from.
#[derive(Debug)]
pub(crate) struct ConfigCell {
    running: RwLock<Arc<ServerConfig>>,
    path: OnceLock<PathBuf>,
}

impl ConfigCell {
    /// `config`, not (yet) known to come from a file.
    pub fn new(config: ServerConfig) -> Self {
        Self { running: RwLock::new(Arc::new(config)), path: OnceLock::new() }
    }

    /// Records the file the config came from (once).
    pub fn set_path(&self, path: PathBuf) {
        let _ = self.path.set(path);
    }

    /// The running config, as of now.
    pub fn snapshot(&self) -> Arc<ServerConfig> {
        self.running.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Installs a reloaded config.
    pub fn set(&self, config: Arc<ServerConfig>) {
        *self.running.write().unwrap_or_else(|p| p.into_inner()) = config;
    }

    /// The file the config came from, if any: `/reload` and `/adapt` read it.
    pub fn path(&self) -> Option<&Path> {
        self.path.get().map(PathBuf::as_path)
    }
}
