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

/// The shortest secret accepted.
pub const MIN_SECRET_LEN: usize = 8;

/// Written three ways, so that secrets can stay out of the config file:
///
/// ```toml
/// token = "the-token-itself"
/// token = { file = "/etc/wmproxy/token" }   # the file's contents, trailing newline trimmed
/// token = { env = "WMPROXY_TOKEN" }         # an environment variable
/// ```
///
/// Every secret key (`token`, a group's `key`, `group_key`, `password`, `http_password`) takes
/// each form. A relative `file` is relative to the working directory.
impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SecretVisitor)
    }
}

struct SecretVisitor;

impl<'de> serde::de::Visitor<'de> for SecretVisitor {
    type Value = Secret;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a secret: a string, { file = \"path\" } or { env = \"VARIABLE\" }")
    }

    fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Secret, E> {
        Secret::checked(value.to_owned()).map_err(E::custom)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Secret, A::Error> {
        use serde::de::Error;
        // A value only after a key: serde lets a map panic when asked for one without.
        let Some(source) = map.next_key::<String>()? else {
            return Err(A::Error::custom("a secret table is { file = \"path\" } or { env = \"VARIABLE\" }"));
        };
        let value = map.next_value::<String>()?;
        if map.next_key::<String>()?.is_some() {
            return Err(A::Error::custom("a secret table has one key: `file` or `env`"));
        }
        let read = match source.as_str() {
            "file" => std::fs::read_to_string(&value)
                .map(|text| text.trim_end_matches(['\r', '\n']).to_owned())
                .map_err(|e| format!("cannot read the secret file `{value}`: {e}")),
            "env" => std::env::var(&value).map_err(|_| format!("the environment variable `{value}` is not set")),
            other => Err(format!("unknown secret source `{other}`: use `file` or `env`")),
        };
        read.and_then(Secret::checked).map_err(A::Error::custom)
    }
}

impl Secret {
    /// `value` if it is long enough to be a secret.
    fn checked(value: String) -> Result<Self, String> {
        if value.len() < MIN_SECRET_LEN {
            return Err(format!("too short: a secret must be at least {MIN_SECRET_LEN} characters long"));
        }
        Ok(Self(value))
    }
}
