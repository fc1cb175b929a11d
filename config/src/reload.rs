//! What a reload changed: the report both ends' `POST /reload` answers with.

use serde::Serialize;

/// The difference between the running config and a reloaded one, as applied.
///
/// Entries are named `section.name` (`services.web`, `groups.g1`, `proxies.127.0.0.1:1080`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReloadReport {
    /// Entries the new config adds: started.
    pub added: Vec<String>,
    /// Entries it removes: stopped (live connections get the drain grace period).
    pub removed: Vec<String>,
    /// Entries whose settings changed: applied as the section's docs say.
    pub changed: Vec<String>,
    /// Settings that changed but apply only after a restart; the running values are kept.
    pub restart_required: Vec<String>,
    /// Server only: live services the new config no longer allows, taken back from their
    /// clients (`client/service`). Left out when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub withdrawn: Vec<String>,
}

impl ReloadReport {
    /// Compares the entries of `section` by `name`, in the new config's order.
    pub fn compare<T: PartialEq>(&mut self, section: &str, old: &[T], new: &[T], name: impl Fn(&T) -> String) {
        for entry in new {
            let key = name(entry);
            match old.iter().find(|o| name(o) == key) {
                None => self.added.push(format!("{section}.{key}")),
                Some(o) if o != entry => self.changed.push(format!("{section}.{key}")),
                Some(_) => {}
            }
        }
        for entry in old {
            let key = name(entry);
            if !new.iter().any(|n| name(n) == key) {
                self.removed.push(format!("{section}.{key}"));
            }
        }
    }

    /// Notes `key` as needing a restart if its value changed.
    pub fn restart_if<T: PartialEq>(&mut self, key: &str, old: &T, new: &T) {
        if old != new {
            self.restart_required.push(key.to_owned());
        }
    }

    /// Logs the applied reload as one structured event.
    pub fn log(&self) {
        tracing::info!(
            added = ?self.added,
            removed = ?self.removed,
            changed = ?self.changed,
            restart_required = ?self.restart_required,
            withdrawn = ?self.withdrawn,
            "config reloaded"
        );
    }

    /// Whether the reload changed nothing.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && self.restart_required.is_empty()
            && self.withdrawn.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_added_removed_and_changed_entries() {
        let old = [("a", 1), ("b", 1), ("c", 1)];
        let new = [("a", 1), ("b", 2), ("d", 1)];
        let mut report = ReloadReport::default();
        report.compare("services", &old, &new, |e| e.0.to_owned());
        report.restart_if("bind", &1, &1);
        report.restart_if("limits", &1, &2);
        assert_eq!(report.added, ["services.d"]);
        assert_eq!(report.removed, ["services.c"]);
        assert_eq!(report.changed, ["services.b"]);
        assert_eq!(report.restart_required, ["limits"]);
        assert!(!report.is_empty());
    }
}
