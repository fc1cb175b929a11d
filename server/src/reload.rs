//! Reloading the server's config while it runs (`POST /reload`, SIGHUP).
//!
//! What applies, and how:
//! - `[[groups]]`: an added group binds its port and starts; a removed one stops accepting at
//!   once (its connections get the drain grace period) and its backends get no more work; a
//!   changed one keeps its backends and connections: key, policy, retries and passive-check
//!   settings change in place, a new port is bound beside the old one, new host names replace
//!   the old routes. A change of `type` is a removal and an addition.
//! - `[[proxies]]`: by listen address; added ones start, removed ones stop, changed ones are
//!   bound again (`SO_REUSEPORT`) and the old listener stops.
//! - `token` and `[[clients]]`: the next Hello uses them; a connected client whose entry is
//!   gone or whose token changed is disconnected. Port and domain allowances apply to the next
//!   registration. `[egress]` applies to the next forward.
//! - `bind`, `public_bind`, `[tls]`, `state_dir`, `[limits]`, `[vhost]`, `[control]` need a
//!   restart: the report lists them and the running values stay.
//!
//! Every new socket is bound before anything changes, so a reload that cannot bind (or whose
//! file does not load) changes nothing.

use std::path::Path;
use std::sync::Arc;

use tracing::{info, warn};
use wmproxy_config::{ClientEntry, ConfigError, GroupFile, ReloadReport, ServerConfig, ServiceType};
use wmproxy_proto::wire::close_code;

use crate::listeners::{self, GroupSocket};
use crate::server::Shared;

/// Why a reload was not applied. The running config is untouched.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The server was not started from a file.
    #[error("the server was not started from a config file")]
    NoFile,
    /// The file does not load (the error names the key and line).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A new listener could not be bound.
    #[error("cannot bind `{key}`: {source}")]
    Bind {
        /// The entry (`groups.NAME`, `proxies.ADDR`).
        key: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Re-reads the config file at `path` and applies it; counts the attempt in the metrics.
pub(crate) async fn reload(shared: &Arc<Shared>, path: Option<&Path>) -> Result<ReloadReport, ReloadError> {
    let _one_at_a_time = shared.reloading.lock().await;
    shared.metrics.reloads.inc();
    let result = match path {
        None => Err(ReloadError::NoFile),
        Some(path) => match wmproxy_config::load_server(path) {
            Ok(new) => apply(shared, new).await,
            Err(e) => Err(e.into()),
        },
    };
    match &result {
        Ok(report) => {
            shared.metrics.last_reload_ok.set(1);
            report.log();
        }
        Err(e) => {
            shared.metrics.reload_failures.inc();
            shared.metrics.last_reload_ok.set(0);
            warn!(error = %e, "reload refused; the running config is unchanged");
        }
    }
    result
}

/// Applies `new` to the running server.
async fn apply(shared: &Arc<Shared>, new: ServerConfig) -> Result<ReloadReport, ReloadError> {
    let loaded = shared.loaded();
    let running = shared.config();
    let mut report = ReloadReport::default();
    report.compare("groups", &loaded.groups, &new.groups, |g| g.name.get_ref().clone());
    report.compare("proxies", &loaded.proxies, &new.proxies, |p| p.listen.to_string());
    report.compare("clients", &sorted(&loaded), &sorted(&new), |(name, _)| name.clone());
    if loaded.shared != new.shared {
        report.changed.push("token".into());
    }
    if loaded.egress != new.egress {
        report.changed.push("egress".into());
    }
    report.restart_if("bind", &loaded.bind, &new.bind);
    report.restart_if("public_bind", &loaded.public_bind, &new.public_bind);
    report.restart_if("tls", &loaded.tls, &new.tls);
    report.restart_if("state_dir", &loaded.state_dir, &new.state_dir);
    report.restart_if("limits", &loaded.limits, &new.limits);
    report.restart_if("vhost", &loaded.vhost, &new.vhost);
    report.restart_if("control", &loaded.control, &new.control);

    // Bind first: a failure leaves everything as it was.
    let public_bind = running.public_bind;
    let mut group_sockets = Vec::new();
    for file in &new.groups {
        let old = loaded.groups.iter().find(|g| g.name == file.name && g.kind == file.kind);
        if old.is_some_and(|o| o.remote_port == file.remote_port) {
            continue;
        }
        let key = format!("groups.{}", file.name.get_ref());
        let socket = listeners::bind_group(public_bind, file).map_err(|source| ReloadError::Bind { key, source })?;
        group_sockets.push((file.clone(), socket));
    }
    let mut proxy_sockets = Vec::new();
    for proxy in &new.proxies {
        if loaded.proxies.contains(proxy) {
            continue;
        }
        let key = format!("proxies.{}", proxy.listen);
        let listener = listeners::bind_reusable(proxy.listen).map_err(|source| ReloadError::Bind { key, source })?;
        proxy_sockets.push((proxy.clone(), listener));
    }

    // The new config, with the running values of the settings that need a restart.
    let mut effective = new.clone();
    keep_restart_settings(&mut effective, &running);
    let mut as_loaded = new;
    keep_restart_settings(&mut as_loaded, &loaded);
    shared.set_config(Arc::new(effective), Arc::new(as_loaded));
    let config = shared.config();

    apply_groups(shared, &loaded.groups, &config, group_sockets);
    for proxy in &loaded.proxies {
        if !config.proxies.contains(proxy) {
            shared.listeners.stop(&format!("proxies.{}", proxy.listen));
        }
    }
    for (proxy, listener) in proxy_sockets {
        listeners::spawn_proxy(shared, proxy, listener);
    }
    disconnect_revoked(shared, &running, &config).await;
    Ok(report)
}

fn apply_groups(
    shared: &Arc<Shared>,
    old: &[GroupFile],
    config: &ServerConfig,
    sockets: Vec<(GroupFile, Option<GroupSocket>)>,
) {
    for file in old {
        let kept = config.groups.iter().any(|g| g.name == file.name && g.kind == file.kind);
        if !kept {
            remove_group(shared, file.name.get_ref());
        }
    }
    for file in &config.groups {
        if old.contains(file) {
            continue;
        }
        let group = match shared.groups.get(file.name.get_ref()) {
            Some(group) => {
                group.update(file);
                group
            }
            None => shared.groups.insert(file, &config.vhost),
        };
        if matches!(file.kind, ServiceType::Http | ServiceType::Https) {
            shared.router.add_group(&group, file);
        }
    }
    for (file, socket) in sockets {
        let Some(group) = shared.groups.get(file.name.get_ref()) else { continue };
        if let Some(socket) = socket {
            group.set_port(file.remote_port);
            listeners::spawn_group(shared, group, socket);
        }
    }
}

/// Takes a removed group out: its port stops, its routes go, its backends get no more work.
fn remove_group(shared: &Shared, name: &str) {
    shared.listeners.stop(&format!("groups.{name}"));
    shared.router.remove_group(name);
    if let Some(group) = shared.groups.remove(name) {
        let dropped = group.clear();
        info!(group = %name, backends = dropped, "group removed by a reload");
    }
}

/// Disconnects clients whose entry the reload removed or whose token it changed: they must
/// authenticate again under the new config.
async fn disconnect_revoked(shared: &Shared, old: &ServerConfig, new: &ServerConfig) {
    for session in shared.sessions.all() {
        let before = old.client(&session.name).map(|e| &e.token);
        let revoked = match new.client(&session.name) {
            None => Some("this client was removed from the server's config"),
            Some(entry) if Some(&entry.token) != before => Some("this client's token changed"),
            Some(_) => None,
        };
        if let Some(reason) = revoked {
            info!(client = %session.name, reason, "disconnecting a client after a reload");
            session.shut(&shared.router, close_code::REJECTED, reason).await;
            shared.sessions.remove(&session);
        }
    }
}

/// Named clients in name order, for comparing.
fn sorted(config: &ServerConfig) -> Vec<(String, ClientEntry)> {
    let mut clients: Vec<_> = config.clients.iter().map(|(n, e)| (n.clone(), e.clone())).collect();
    clients.sort_by(|a, b| a.0.cmp(&b.0));
    clients
}

/// Copies into `config` the settings of `from` that a reload does not change.
fn keep_restart_settings(config: &mut ServerConfig, from: &ServerConfig) {
    config.bind = from.bind;
    config.public_bind = from.public_bind;
    config.tls.clone_from(&from.tls);
    config.state_dir.clone_from(&from.state_dir);
    config.limits.clone_from(&from.limits);
    config.vhost.clone_from(&from.vhost);
    config.control.clone_from(&from.control);
}
