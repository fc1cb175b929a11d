//! What a reloaded config takes back: a live publication that a registration would be refused
//! now (a port outside a narrower `allow_ports`, a host name outside a narrower
//! `allow_domains`, a group that is gone, changed its type or its key) is withdrawn, and its
//! session is told why.

use tracing::warn;
use wmproxy_config::{ClientEntry, ServerConfig};
use wmproxy_wire::{Name, RegisterOutcome, ServiceResult, auth};

use super::{Owner, Publication, Registry, withdraw};
use crate::sessions::Session;

impl Registry {
    /// Withdraws what `session` published that the running config no longer allows, records it
    /// in the session (its status, and a notice for the client) and returns the services'
    /// names. A session whose entry is gone is left alone: the reload disconnects it.
    pub async fn revise(&self, session: &Session) -> Vec<Name> {
        let _one_at_a_time = session.registration.lock().await;
        let config = self.config.snapshot();
        let Some(entry) = config.client(&session.name) else {
            return Vec::new();
        };
        let mut withdrawn = Vec::new();
        let stale: Vec<(Name, Publication)> = match self.lock().get_mut(&session.id) {
            Some(mine) => {
                for (name, publication) in mine.iter() {
                    if let Some(outcome) = self.refusal(publication, entry, &config) {
                        withdrawn.push(ServiceResult { name: name.clone(), outcome });
                    }
                }
                withdrawn.sort_by(|a, b| a.name.cmp(&b.name));
                withdrawn.iter().filter_map(|r| mine.remove(&r.name).map(|p| (r.name.clone(), p))).collect()
            }
            None => Vec::new(),
        };
        for r in &withdrawn {
            warn!(client = %session.name, service = %r.name, reason = %r.outcome, "a reload withdrew a live service");
        }
        withdraw(stale).await;
        if !withdrawn.is_empty() {
            session.record_withdrawn(&withdrawn);
        }
        withdrawn.into_iter().map(|r| r.name).collect()
    }

    /// The refusal `publication` would get if it were registered now under `entry` and
    /// `config`, if it would be refused.
    fn refusal(
        &self,
        publication: &Publication,
        entry: &ClientEntry,
        config: &ServerConfig,
    ) -> Option<RegisterOutcome> {
        let spec = &publication.spec;
        match &publication.owner {
            Owner::Member(_) => {
                let membership = spec.group.as_ref()?;
                let group =
                    config.groups.iter().find(|g| g.name == membership.group && g.kind.service_kind() == spec.kind);
                match group {
                    None => Some(RegisterOutcome::UnknownGroup),
                    Some(g) if !auth::same_secret(g.key.expose().as_bytes(), membership.key.0.as_bytes()) => {
                        Some(RegisterOutcome::WrongGroupKey)
                    }
                    Some(_) => None,
                }
            }
            Owner::Port(_) => match publication.outcome {
                RegisterOutcome::Ok { port } if !entry.allow_ports.allows(port) => {
                    Some(RegisterOutcome::PortNotAllowed { allowed: entry.allow_ports.to_string() })
                }
                _ => None,
            },
            Owner::Routes(_) => self.allowed_hosts(spec.http.as_ref()?, entry).err(),
            // Nothing in the server's config governs a private service.
            Owner::Private(_) => None,
        }
    }
}
