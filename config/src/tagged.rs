//! An entry's `type` as the tag of its kind.
//!
//! serde's own internally tagged enums (`#[serde(tag = "type")]`) cannot serve the file: they
//! buffer the entry, which loses every line number (and `toml::Spanned`) inside it, and they
//! have no default tag, while `type = "tcp"` may be left out. So before serde sees the document,
//! each entry of the tagged sections is rewritten in toml's span-keeping tree:
//!
//! ```text
//! [[services]]                           services = [
//! name = "web"            becomes          { http = { name = "web", local_addr = "…" } },
//! type = "http"                          ]
//! local_addr = "…"
//! ```
//!
//! and serde reads an ordinary (externally tagged) enum whose variants are structs of only
//! their own keys. Every span stays: the tag's is that of the `type` value, so an unknown kind
//! is reported on its line, and a key of another kind on its own.

use std::borrow::Cow;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::{ConfigError, invalid};

/// A section of tagged entries and the tag of an entry without `type` (`None`: required).
pub(crate) type Section = (&'static str, Option<&'static str>);

/// Parses `src`, tags the entries of `sections`, and deserializes the document into `T`.
pub(crate) fn parse<T: DeserializeOwned>(
    src: &str,
    sections: &[Section],
    schema: &crate::help::Schema,
) -> Result<T, ConfigError> {
    let mut doc = DeTable::parse(src).map_err(|e| located(e, src))?;
    for (section, default) in sections {
        let Some(value) = doc.get_mut().get_mut(*section) else { continue };
        if let DeValue::Array(entries) = value.get_mut() {
            for entry in entries.iter_mut() {
                tag(entry, section, *default, src)?;
            }
        }
    }
    // serde first, so that an unknown key is reported as such; when what it found is a missing
    // key or a list written as a table, the whole file's shape is reported instead (every
    // missing key at once). A file serde takes may still lack a choice between keys.
    let shape = || DeTable::parse(src).map_or(Ok(()), |doc| crate::help::check_shape(doc.get_ref(), src, schema));
    match T::deserialize(toml::de::Deserializer::from(doc)) {
        Ok(file) => shape().map(|()| file),
        Err(e) if crate::help::about_shape(&e) => Err(shape().err().unwrap_or_else(|| crate::help::explain(e, src))),
        Err(e) => Err(crate::help::explain(e, src)),
    }
}

/// A toml syntax error, showing the line it points at.
fn located(mut e: toml::de::Error, src: &str) -> ConfigError {
    e.set_input(Some(src));
    ConfigError::Parse { source: e, hint: None }
}

/// Rewrites one entry `{ type = "k", … }` as `{ k = { … } }`. An entry that is not a table is
/// left for serde to refuse.
fn tag(
    entry: &mut Spanned<DeValue<'_>>,
    section: &str,
    default: Option<&'static str>,
    src: &str,
) -> Result<(), ConfigError> {
    let span = entry.span();
    let DeValue::Table(table) = entry.get_mut() else { return Ok(()) };
    let key = format!("{section}.type");
    let (kind, kind_span) = match table.remove_entry("type") {
        Some((_, value)) => {
            let at = value.span();
            match value.into_inner() {
                DeValue::String(kind) => (kind, at),
                _ => return Err(invalid(src, &key, Some(at.start), "`type` is a string")),
            }
        }
        None => match default {
            Some(kind) => (Cow::Borrowed(kind), span.clone()),
            None => return Err(invalid(src, &key, Some(span.start), "`type` is required")),
        },
    };
    let fields = std::mem::take(table);
    table.insert(Spanned::new(kind_span, kind), Spanned::new(span, DeValue::Table(fields)));
    Ok(())
}
