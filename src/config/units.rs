//! The units config values are written in: sizes ("1MiB"), rates ("10/s"),
//! and the memory budget ("auto" or a size).

use std::fmt;

use serde::{Deserialize, Deserializer};

/// Why a size or a rate cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("`{0}` is not a size (write it like \"1MiB\" or \"64KiB\")")]
    NotASize(String),
    #[error("unknown size unit `{0}` (use B, KiB, MiB, GiB, KB, MB or GB)")]
    SizeUnit(String),
    #[error("`{0}` is too large")]
    TooLarge(String),
    #[error("`{0}` is not a rate (write it like \"10/s\")")]
    NotARate(String),
    #[error("`{rate}`: `{count}` is not a number")]
    NotANumber { rate: String, count: String },
    #[error("`{rate}`: unknown unit `{unit}` (use s, m or h)")]
    RateUnit { rate: String, unit: String },
    #[error("`{0}`: the count must be above 0")]
    NotPositive(String),
}

/// A size in bytes, written in config as "1MiB", "512KiB", "64MB" or "4096".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(s: &str) -> Result<Self, UnitError> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, unit) = s.split_at(split);
        let n: u64 = digits
            .parse()
            .map_err(|_| UnitError::NotASize(s.to_string()))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            other => return Err(UnitError::SizeUnit(other.to_string())),
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| UnitError::TooLarge(s.to_string()))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Str(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n >= 1 << 30 && n.is_multiple_of(1 << 30) {
            write!(f, "{}GiB", n >> 30)
        } else if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
            write!(f, "{}MiB", n >> 20)
        } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
            write!(f, "{}KiB", n >> 10)
        } else {
            write!(f, "{n}B")
        }
    }
}

/// `memory.limit`: "auto" or a size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryLimit {
    Auto,
    Fixed(ByteSize),
}

impl<'de> Deserialize<'de> for MemoryLimit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match ByteSizeOrAuto::deserialize(d)? {
            ByteSizeOrAuto::Str(s) if s == "auto" => Ok(MemoryLimit::Auto),
            ByteSizeOrAuto::Str(s) => ByteSize::parse(&s)
                .map(MemoryLimit::Fixed)
                .map_err(|e| serde::de::Error::custom(format!("{e}, or \"auto\""))),
            ByteSizeOrAuto::Int(n) => Ok(MemoryLimit::Fixed(ByteSize(n))),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ByteSizeOrAuto {
    Int(u64),
    Str(String),
}

/// A rate limit, written "10/s", "600/m" or "100/h".
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
}

impl Rate {
    pub fn parse(s: &str) -> Result<Self, UnitError> {
        let (n, unit) = s
            .split_once('/')
            .ok_or_else(|| UnitError::NotARate(s.to_string()))?;
        let n: f64 = n.trim().parse().map_err(|_| UnitError::NotANumber {
            rate: s.to_string(),
            count: n.to_string(),
        })?;
        let secs = match unit.trim() {
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => {
                return Err(UnitError::RateUnit {
                    rate: s.to_string(),
                    unit: other.to_string(),
                })
            }
        };
        if !(n > 0.0 && n.is_finite()) {
            return Err(UnitError::NotPositive(s.to_string()));
        }
        Ok(Rate {
            per_second: n / secs,
        })
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Rate::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A tool's token bucket: `rate` refills, `burst` is the most it holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub rate: Rate,
    pub burst: u32,
}

impl RateLimit {
    /// `rate` with `burst`, by default one second's worth of it (at least 1).
    pub fn new(rate: Rate, burst: Option<u32>) -> Self {
        RateLimit {
            rate,
            burst: burst.unwrap_or_else(|| (rate.per_second.ceil() as u32).max(1)),
        }
    }
}
