//! A secret string whose `Debug`, `Display` and `Serialize` print `MASKED`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A token or password from the config. Read it with [`Secret::expose`] only where it is used.
/// Two secrets compare in constant time ([`wmproxy_wire::auth::same_secret`]).
#[derive(Clone)]
pub struct Secret(String);

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        wmproxy_wire::auth::same_secret(self.0.as_bytes(), other.0.as_bytes())
    }
}

impl Eq for Secret {}

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself. Never log the result.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MASKED")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MASKED")
    }
}

/// Serialized as `MASKED` too (`/now`): the value never leaves through serde.
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("MASKED")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() < 8 {
            return Err(serde::de::Error::custom("a token must be at least 8 characters long"));
        }
        Ok(Self(s))
    }
}
