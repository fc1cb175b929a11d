//! Names and targets, checked once: when a message is decoded (their `Deserialize` refuses a
//! bad one, so the whole frame is malformed) or when a config is validated. Code holding a
//! [`Name`] or a [`Target`] never checks it again.
//!
//! On the wire both are plain strings (`varint length | UTF-8`), exactly as before they had
//! types of their own.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{MAX_NAME_LEN, MAX_TARGET_LEN};

/// Why a string is not a [`Name`] or a [`Target`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    /// A name must have at least one character.
    Empty,
    /// A name over [`MAX_NAME_LEN`] bytes, or a target over [`MAX_TARGET_LEN`].
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A name character outside `A-Z a-z 0-9 . _ -`.
    BadChar(char),
    /// A target that is not `host:port` with a port from 1 to 65535.
    NotHostPort,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("a name cannot be empty"),
            Self::TooLong { len, max } => write!(f, "{len} bytes is longer than the limit of {max}"),
            Self::BadChar(c) => write!(f, "{c:?} is not allowed: names are A-Z a-z 0-9 . _ -"),
            Self::NotHostPort => f.write_str("not host:port (port 1-65535)"),
        }
    }
}

impl std::error::Error for NameError {}

/// A client, service or group name: 1 to [`MAX_NAME_LEN`] bytes of `A-Z a-z 0-9 . _ -`.
/// Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(Arc<str>);

impl Name {
    /// Checks `name`.
    pub fn new(name: &str) -> Result<Self, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong { len: name.len(), max: MAX_NAME_LEN });
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if let Some(bad) = name.chars().find(|c| !allowed(*c)) {
            return Err(NameError::BadChar(bad));
        }
        Ok(Self(name.into()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A `host:port` to dial or send to: at most [`MAX_TARGET_LEN`] bytes, a non-empty host (a
/// name, an IPv4 literal or a bracketed IPv6 literal) and a port from 1 to 65535. Cheap to
/// clone.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Target {
    text: Arc<str>,
    /// Where the `:` before the port is.
    colon: usize,
    port: u16,
}

impl Target {
    /// Checks `target`.
    pub fn new(target: &str) -> Result<Self, NameError> {
        if target.len() > MAX_TARGET_LEN {
            return Err(NameError::TooLong { len: target.len(), max: MAX_TARGET_LEN });
        }
        let colon = target.rfind(':').ok_or(NameError::NotHostPort)?;
        let (host, port) = (&target[..colon], &target[colon + 1..]);
        let port: u16 = port.parse().map_err(|_| NameError::NotHostPort)?;
        if host.is_empty() || port == 0 {
            return Err(NameError::NotHostPort);
        }
        Ok(Self { text: target.into(), colon, port })
    }

    /// The host part, as written (brackets kept on an IPv6 literal).
    pub fn host(&self) -> &str {
        &self.text[..self.colon]
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The whole `host:port`.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

macro_rules! string_like {
    ($t:ty) => {
        impl Deref for $t {
            type Target = str;
            fn deref(&self) -> &str {
                self.as_str()
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }
        impl Borrow<str> for $t {
            fn borrow(&self) -> &str {
                self.as_str()
            }
        }
        impl PartialEq<str> for $t {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }
        impl PartialEq<&str> for $t {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self.as_str(), f)
            }
        }
        impl FromStr for $t {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }
        impl TryFrom<&str> for $t {
            type Error = NameError;
            fn try_from(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }
        impl TryFrom<String> for $t {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                Self::new(&s)
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
        /// Refuses a bad value, so a frame carrying one is malformed as a whole.
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(&s).map_err(|e| serde::de::Error::custom(format_args!("`{s}`: {e}")))
            }
        }
    };
}

string_like!(Name);
string_like!(Target);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_take_only_the_allowed_characters_and_lengths() {
        assert_eq!(Name::new("web-1.a_b").map(|n| n.to_string()), Ok("web-1.a_b".into()));
        assert_eq!(Name::new(""), Err(NameError::Empty));
        assert_eq!(Name::new("my laptop"), Err(NameError::BadChar(' ')));
        assert_eq!(Name::new("é"), Err(NameError::BadChar('é')));
        assert!(Name::new(&"a".repeat(MAX_NAME_LEN)).is_ok());
        assert_eq!(Name::new(&"a".repeat(65)), Err(NameError::TooLong { len: 65, max: MAX_NAME_LEN }));
    }

    #[test]
    fn targets_split_into_host_and_port() {
        let t = Target::new("db.example:5432").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((t.host(), t.port()), ("db.example", 5432));
        let v6 = Target::new("[::1]:80").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((v6.host(), v6.port()), ("[::1]", 80));
        for bad in ["example.com", ":80", "h:0", "h:65536", "h:x", ""] {
            assert_eq!(Target::new(bad), Err(NameError::NotHostPort), "{bad}");
        }
        let long = format!("{}:1", "a".repeat(MAX_TARGET_LEN));
        assert!(matches!(Target::new(&long), Err(NameError::TooLong { .. })));
    }
}
