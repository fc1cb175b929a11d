//! Public port allowances: `"6000-6010"`, `"8080"` or `8080`.

use std::fmt;
use std::ops::RangeInclusive;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An inclusive range of ports a client may publish on.
#[derive(Clone, PartialEq, Eq)]
pub struct PortRange(RangeInclusive<u16>);

impl PortRange {
    /// `first..=last`; `None` when `first > last` or `first == 0`.
    pub fn new(first: u16, last: u16) -> Option<Self> {
        (first != 0 && first <= last).then_some(Self(first..=last))
    }

    /// Whether `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        self.0.contains(&port)
    }
}

impl fmt::Debug for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.0.start(), self.0.end())
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}-{}", self.0.start(), self.0.end()))
    }
}

impl std::str::FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a port or a port range like \"6000-6010\" (ports 1-65535)");
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let first: u16 = a.trim().parse().map_err(|_| bad())?;
        let last: u16 = b.trim().parse().map_err(|_| bad())?;
        Self::new(first, last).ok_or_else(bad)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = PortRange;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port (8080) or a port range (\"6000-6010\")")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PortRange, E> {
                u16::try_from(v)
                    .ok()
                    .and_then(|p| PortRange::new(p, p))
                    .ok_or_else(|| E::custom(format!("{v} is not a port (1-65535)")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PortRange, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// The set of public ports one client may use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PortAllowance(pub Vec<PortRange>);

/// How many ranges [`PortAllowance`]'s `Display` spells out before it says how many more.
const SHOWN_RANGES: usize = 16;

/// The ranges as a client is told them: `6000, 6001-6010, 8080`.
impl std::fmt::Display for PortAllowance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        for (i, range) in self.0.iter().take(SHOWN_RANGES).enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            match (range.0.start(), range.0.end()) {
                (a, b) if a == b => write!(f, "{sep}{a}")?,
                (a, b) => write!(f, "{sep}{a}-{b}")?,
            }
        }
        match self.0.len().saturating_sub(SHOWN_RANGES) {
            0 => Ok(()),
            more => write!(f, " and {more} more ranges"),
        }
    }
}

impl PortAllowance {
    /// Every unprivileged port, 1024-65535: the default for the embedded setup.
    pub fn unprivileged() -> Self {
        Self(vec![PortRange(1024..=65535)])
    }

    /// Whether `port` may be published.
    pub fn allows(&self, port: u16) -> bool {
        self.0.iter().any(|r| r.contains(port))
    }
}
