//! Reloading the client's config while it runs.
//!
//! Services follow the file: the new set is published on the live tunnel (a new `Register` on
//! the control stream), so unchanged services keep their public ports and connections, removed
//! ones stop, added ones start, and health checks follow. Everything else (the server, trust,
//! name and token, forwards, proxies, visitors, egress, limits, `[control]`) applies after a restart;
//! the report lists what differs.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;
use tracing::warn;
use wmproxy_config::{ClientConfig, ConfigError, ReloadReport, Service};

/// Why a reload was not applied. The running config is untouched.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The client was not started from a file.
    #[error("the client was not started from a config file")]
    NoFile,
    /// The file does not load (the error names the key and line).
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Applies reloaded configs to a running [`crate::Client`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Reloader {
    running: Arc<Mutex<ClientConfig>>,
    desired: watch::Sender<Arc<Vec<Service>>>,
    path: Option<PathBuf>,
}

impl Reloader {
    pub(crate) fn new(config: &ClientConfig, path: Option<PathBuf>) -> Self {
        let (desired, _) = watch::channel(Arc::new(config.services.clone()));
        Self { running: Arc::new(Mutex::new(config.clone())), desired, path }
    }

    /// The services to publish now; a tunnel re-registers when they change.
    pub(crate) fn services(&self) -> watch::Receiver<Arc<Vec<Service>>> {
        self.desired.subscribe()
    }

    /// The running config (services as last reloaded).
    pub fn running(&self) -> ClientConfig {
        self.lock().clone()
    }

    /// The file the client was started from, if any.
    pub fn path(&self) -> Option<&std::path::Path> {
        self.path.as_deref()
    }

    /// Re-reads the config file and applies it.
    pub fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let path = self.path.as_ref().ok_or(ReloadError::NoFile)?;
        let loaded = wmproxy_config::load_client(path).inspect_err(|e| warn!(error = %e, "reload refused"))?;
        for warning in &loaded.warnings {
            warn!(%warning, "config");
        }
        Ok(self.apply(loaded))
    }

    /// Applies `new`: its services replace the running ones; other changes are reported as
    /// needing a restart and not applied.
    pub fn apply(&self, new: ClientConfig) -> ReloadReport {
        let mut running = self.lock();
        let mut report = ReloadReport::default();
        report.compare("services", &running.services, &new.services, |s| s.name.to_string());
        report.restart_if("servers", &running.servers, &new.servers);
        report.restart_if("mode", &running.mode, &new.mode);
        report.restart_if("egress", &running.egress, &new.egress);
        report.restart_if("transport", &running.transport, &new.transport);
        report.restart_if("name", &running.name, &new.name);
        report.restart_if("forwards", &running.forwards, &new.forwards);
        report.restart_if("proxies", &running.proxies, &new.proxies);
        report.restart_if("visitors", &running.visitors, &new.visitors);
        report.restart_if("server_proxies_egress", &running.server_proxies_egress, &new.server_proxies_egress);
        report.restart_if("limits", &running.limits, &new.limits);
        report.restart_if("control", &running.control, &new.control);
        if running.services != new.services {
            running.services.clone_from(&new.services);
            self.desired.send_replace(Arc::new(new.services));
        }
        report.log();
        report
    }

    fn lock(&self) -> MutexGuard<'_, ClientConfig> {
        // Whole-value replacements only: a poisoned lock still holds a consistent config.
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}
