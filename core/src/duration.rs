//! Human-friendly durations ("30s", "5m", "1h30m") in config, with serde support.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Error, Result};

/// A duration written like Go's and Flux's: `30s`, `5m`, `1h30m`, `250ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// Parse `30s`, `5m`, `1h30m`, `250ms`, `2d`.
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.is_empty() {
            return Err(Error::Duration { value: s.into(), message: "empty".into() });
        }
        // Go-style "1h30m" has no spaces; humantime wants them between units.
        let spaced = split_units(s);
        humantime::parse_duration(&spaced)
            .map(HumanDuration)
            .map_err(|e| Error::Duration { value: s.into(), message: e.to_string() })
    }

    /// The duration.
    pub fn get(self) -> Duration {
        self.0
    }

    /// Build from seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }
}

fn split_units(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    let mut prev_alpha = false;
    for c in s.chars() {
        if c.is_ascii_digit() && prev_alpha {
            out.push(' ');
        }
        prev_alpha = c.is_ascii_alphabetic();
        out.push(c);
    }
    out
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_millis() != 0 || d.is_zero() {
            return write!(f, "{}ms", d.as_millis());
        }
        let mut secs = d.as_secs();
        let h = secs / 3600;
        secs %= 3600;
        let m = secs / 60;
        secs %= 60;
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if secs > 0 {
            write!(f, "{secs}s")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for HumanDuration {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_style() {
        assert_eq!(HumanDuration::parse("1h30m").unwrap().get(), Duration::from_secs(5400));
        assert_eq!(HumanDuration::parse("30s").unwrap().get(), Duration::from_secs(30));
        assert_eq!(HumanDuration::parse("250ms").unwrap().get(), Duration::from_millis(250));
        assert!(HumanDuration::parse("soon").is_err());
        assert!(HumanDuration::parse("").is_err());
    }

    #[test]
    fn displays_round_trip() {
        for s in ["1h30m", "30s", "250ms", "2h", "1m5s"] {
            let d = HumanDuration::parse(s).unwrap();
            assert_eq!(d.to_string(), s);
            assert_eq!(HumanDuration::parse(&d.to_string()).unwrap(), d);
        }
    }
}
