//! A bandwidth in the config: bytes per second, written as a number of bytes or with a unit
//! (`"512KB"`, `"1MB"`, `"1.5GB"`; 1 KB = 1024 bytes, as frp reads its `bandwidthLimit`).

use serde::{Deserialize, Deserializer};

use crate::ranges;

/// Bytes per second, within [`ranges::BANDWIDTH`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRate(pub u64);

impl ByteRate {
    /// Reads `"1MB"`, `"512KB"`, `"2GB"`, `"100B"` or `"100"`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let scale: u64 = match unit.trim().to_ascii_uppercase().as_str() {
            "" | "B" => 1,
            "KB" | "K" => 1 << 10,
            "MB" | "M" => 1 << 20,
            "GB" | "G" => 1 << 30,
            other => return Err(format!("unknown unit `{other}` (use B, KB, MB or GB per second)")),
        };
        let number: f64 = number.parse().map_err(|_| format!("`{text}` is not a bandwidth like \"1MB\""))?;
        let bytes = number * scale as f64;
        if !bytes.is_finite() || bytes > ranges::BANDWIDTH.end().to_owned() as f64 {
            return Err(format!("`{text}` is over the largest bandwidth, {} bytes/s", ranges::BANDWIDTH.end()));
        }
        // Truncation toward zero is the intent: a limit is never rounded up.
        let bytes = bytes as u64;
        if bytes < *ranges::BANDWIDTH.start() {
            return Err(format!("`{text}` is under the smallest bandwidth, {} bytes/s", ranges::BANDWIDTH.start()));
        }
        Ok(Self(bytes))
    }
}

impl<'de> Deserialize<'de> for ByteRate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Bytes(u64),
            Text(String),
        }
        match Written::deserialize(d)? {
            Written::Bytes(n) => Self::parse(&n.to_string()),
            Written::Text(text) => Self::parse(&text),
        }
        .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_powers_of_1024_and_the_range_holds() {
        assert_eq!(ByteRate::parse("1MB"), Ok(ByteRate(1 << 20)));
        assert_eq!(ByteRate::parse("512KB"), Ok(ByteRate(512 << 10)));
        assert_eq!(ByteRate::parse("1.5 gb"), Ok(ByteRate(3 << 29)));
        assert_eq!(ByteRate::parse("2048"), Ok(ByteRate(2048)));
        for bad in ["", "MB", "1XB", "-1MB", "1e400", "100B", "1000GB", "NaN"] {
            assert!(ByteRate::parse(bad).is_err(), "{bad}");
        }
    }
}
