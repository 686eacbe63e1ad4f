//! Durations and sizes, written the same way everywhere in the config (plugin limits included).
//!
//! [`Duration`] is one or more `<number><unit>` parts, units from largest to smallest, each at
//! most once: `250ms`, `30s`, `10m`, `1h`, `1m30s`, `1h30m`, `0s`, `1.5s`. Units are `ms`, `s`,
//! `m` and `h` (lowercase). A part may have a decimal fraction (`1.5s`, `0.5h`) as long as the
//! total is a whole number of milliseconds. The bare number `0` is also accepted; any other
//! number without a unit is an error, as is a negative duration.
//!
//! [`ByteSize`] is a plain integer number of bytes (`65536`) or an integer with a unit:
//! `512B`; binary `KiB`, `MiB`, `GiB`, `TiB` (powers of 1024); decimal `KB`, `MB`, `GB`, `TB`
//! (powers of 1000). Units are case-insensitive (`8kib`), with no space before them. Sizes that
//! do not fit in 64 bits are errors.
//!
//! Both types `Display` (and `Serialize`) as a canonical string that parses back to the same
//! value: `1m30s`, `1.5s`, `250ms`, `0s`; `64KiB`, `10KB`, `1000B`, `0B`.
//!
//! ```ignore
//! #[derive(Deserialize)]
//! struct Limits {
//!     header_read_timeout: units::Duration, // header_read_timeout: 10s
//!     max_body: units::ByteSize,            // max_body: 8MiB
//! }
//! ```

use std::fmt;
use std::str::FromStr;

/// A duration from the config, with millisecond precision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

/// A size in bytes from the config.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

/// Why a duration did not parse. The message quotes the input and names the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Nothing was written.
    #[error("empty duration: {DURATION_FORMS}")]
    Empty,
    /// A leading `-`.
    #[error("duration \"{0}\" is negative: durations are zero or more; {DURATION_FORMS}")]
    Negative(String),
    /// A number without a unit, other than `0`.
    #[error("duration \"{0}\" has no unit: {DURATION_FORMS}")]
    MissingUnit(String),
    /// Anything else that is not `<number><unit>...`.
    #[error("invalid duration \"{0}\": {DURATION_FORMS}")]
    Invalid(String),
    /// Units repeated or from smaller to larger, like `30s1m`.
    #[error(
        "invalid duration \"{0}\": write units from largest to smallest, each at most once \
         (1h30m, 1m30s)"
    )]
    UnitOrder(String),
    /// Finer than a millisecond, like `1.5ms`.
    #[error("duration \"{0}\" is finer than a millisecond, the smallest unit")]
    TooPrecise(String),
    /// Larger than the proxy can represent.
    #[error("duration \"{0}\" is too large")]
    TooLarge(String),
}

/// Why a size did not parse. The message quotes the input and names the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ByteSizeError {
    /// Nothing was written.
    #[error("empty size: {SIZE_FORMS}")]
    Empty,
    /// A leading `-`.
    #[error("size \"{0}\" is negative: {SIZE_FORMS}")]
    Negative(String),
    /// A decimal fraction, like `1.5GiB`.
    #[error(
        "size \"{0}\" is not a whole number: write it with a smaller unit (1536MiB, not 1.5GiB)"
    )]
    Fraction(String),
    /// A unit that is not one of the accepted ones.
    #[error("size \"{0}\" has an unknown unit: {SIZE_FORMS}")]
    UnknownUnit(String),
    /// Anything else that is not `<integer>[unit]`.
    #[error("invalid size \"{0}\": {SIZE_FORMS}")]
    Invalid(String),
    /// More than `u64::MAX` bytes.
    #[error("size \"{0}\" is too large: the maximum is 18446744073709551615 bytes (16EiB - 1)")]
    TooLarge(String),
}

const DURATION_FORMS: &str = "write a number and a unit (ms, s, m, h), e.g. 250ms, 30s, 10m, 1h, \
                              1m30s or 1.5s; 0 is also accepted";
const SIZE_FORMS: &str = "write a number of bytes (65536) or a number and a unit (B, KiB, MiB, \
                          GiB, TiB, or decimal KB, MB, GB, TB), e.g. 512B, 64KiB, 10MB, 1GiB";

/// Duration units, largest first, with their length in milliseconds.
const DURATION_UNITS: [(&str, u64); 4] = [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];

/// Size units with their factor, largest factor first (the order `Display` prefers them in).
const SIZE_UNITS: [(&str, u64); 9] = [
    ("TiB", 1 << 40),
    ("TB", 1_000_000_000_000),
    ("GiB", 1 << 30),
    ("GB", 1_000_000_000),
    ("MiB", 1 << 20),
    ("MB", 1_000_000),
    ("KiB", 1 << 10),
    ("KB", 1_000),
    ("B", 1),
];

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let s = input.trim();
        let owned = || s.to_owned();
        if s.is_empty() {
            return Err(DurationError::Empty);
        }
        if s.starts_with('-') {
            return Err(DurationError::Negative(owned()));
        }
        if s == "0" {
            return Ok(Duration(std::time::Duration::ZERO));
        }
        if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(DurationError::MissingUnit(owned()));
        }

        // Everything is computed in units of 1/1000 ms (1 µs), to see fractions of a
        // millisecond and reject them rather than round them.
        let mut total_us: u128 = 0;
        // Index in DURATION_UNITS of the last unit used; the next one must be smaller.
        let mut last_unit: Option<usize> = None;
        let mut rest = s;
        while !rest.is_empty() {
            let number_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            let (number, after) = rest.split_at(number_len);
            let unit_len = after
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(after.len());
            let (unit, after) = after.split_at(unit_len);
            rest = after;

            if unit.is_empty() {
                return Err(DurationError::MissingUnit(owned()));
            }
            let Some(unit_index) = DURATION_UNITS.iter().position(|(name, _)| *name == unit) else {
                return Err(DurationError::Invalid(owned()));
            };
            if last_unit.is_some_and(|last| unit_index <= last) {
                return Err(DurationError::UnitOrder(owned()));
            }
            last_unit = Some(unit_index);
            let unit_ms = u128::from(DURATION_UNITS[unit_index].1);

            let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
            let digits_ok = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
            if whole.is_empty() || !digits_ok(whole) || !digits_ok(fraction) {
                return Err(DurationError::Invalid(owned()));
            }
            if number.ends_with('.') {
                return Err(DurationError::Invalid(owned()));
            }
            let whole: u128 = whole
                .parse()
                .map_err(|_| DurationError::TooLarge(owned()))?;
            // Fraction digits past the third (1 µs of a millisecond) are only allowed as zeros:
            // anything finer than 1 µs is finer than 1 ms too.
            let (kept, dropped) = fraction.split_at(fraction.len().min(9));
            if dropped.bytes().any(|b| b != b'0') {
                return Err(DurationError::TooPrecise(owned()));
            }
            let fraction_us = if kept.is_empty() {
                0
            } else {
                let numerator: u128 = kept.parse().map_err(|_| DurationError::Invalid(owned()))?;
                let denominator = 10u128.pow(kept.len().try_into().unwrap_or(9));
                let scaled = numerator * unit_ms * 1000;
                if !scaled.is_multiple_of(denominator) {
                    return Err(DurationError::TooPrecise(owned()));
                }
                scaled / denominator
            };
            let part_us = whole
                .checked_mul(unit_ms * 1000)
                .and_then(|us| us.checked_add(fraction_us))
                .ok_or_else(|| DurationError::TooLarge(owned()))?;
            total_us = total_us
                .checked_add(part_us)
                .ok_or_else(|| DurationError::TooLarge(owned()))?;
        }

        if !total_us.is_multiple_of(1000) {
            return Err(DurationError::TooPrecise(owned()));
        }
        let millis =
            u64::try_from(total_us / 1000).map_err(|_| DurationError::TooLarge(owned()))?;
        Ok(Duration(std::time::Duration::from_millis(millis)))
    }
}

impl fmt::Display for Duration {
    /// `1h30m`, `1m30s`, `1.5s`, `250ms`, `0s`; sub-millisecond parts (only possible when the
    /// value was not parsed) are dropped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total_ms = self.0.as_millis();
        if total_ms == 0 {
            return f.write_str("0s");
        }
        let hours = total_ms / 3_600_000;
        let minutes = total_ms / 60_000 % 60;
        let seconds = total_ms / 1000 % 60;
        let millis = total_ms % 1000;
        if hours > 0 {
            write!(f, "{hours}h")?;
        }
        if minutes > 0 {
            write!(f, "{minutes}m")?;
        }
        match (seconds, millis) {
            (0, 0) => Ok(()),
            (0, millis) => write!(f, "{millis}ms"),
            (seconds, 0) => write!(f, "{seconds}s"),
            (seconds, millis) => {
                let fraction = format!("{millis:03}");
                write!(f, "{seconds}.{}s", fraction.trim_end_matches('0'))
            }
        }
    }
}

impl FromStr for ByteSize {
    type Err = ByteSizeError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let s = input.trim();
        let owned = || s.to_owned();
        if s.is_empty() {
            return Err(ByteSizeError::Empty);
        }
        if s.starts_with('-') {
            return Err(ByteSizeError::Negative(owned()));
        }
        let number_len = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (number, unit) = s.split_at(number_len);
        if number.is_empty() {
            return Err(ByteSizeError::Invalid(owned()));
        }
        if unit.starts_with('.') {
            return Err(ByteSizeError::Fraction(owned()));
        }
        let factor = if unit.is_empty() {
            1
        } else if let Some((_, factor)) = SIZE_UNITS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(unit))
        {
            *factor
        } else if unit.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(ByteSizeError::UnknownUnit(owned()));
        } else {
            return Err(ByteSizeError::Invalid(owned()));
        };
        number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(factor))
            .map(ByteSize)
            .ok_or_else(|| ByteSizeError::TooLarge(owned()))
    }
}

impl fmt::Display for ByteSize {
    /// The largest unit that divides the size exactly: `64KiB`, `10KB`, `1000B`, `0B`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, factor) = SIZE_UNITS
            .iter()
            .find(|(_, factor)| self.0 != 0 && self.0.is_multiple_of(*factor))
            .copied()
            .unwrap_or(("B", 1));
        write!(f, "{}{name}", self.0 / factor)
    }
}

impl<'de> serde::Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl serde::de::Visitor<'_> for Visitor {
            type Value = Duration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 250ms, 30s, 10m, 1h or 1m30s")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
                v.parse().map_err(E::custom)
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
                if v == 0 {
                    Ok(Duration(std::time::Duration::ZERO))
                } else {
                    Err(E::custom(DurationError::MissingUnit(v.to_string())))
                }
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(DurationError::Negative(v.to_string()))),
                }
            }

            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Duration, E> {
                if v < 0.0 {
                    Err(E::custom(DurationError::Negative(v.to_string())))
                } else {
                    Err(E::custom(DurationError::MissingUnit(v.to_string())))
                }
            }
        }

        deserializer.deserialize_any(Visitor)
    }
}

impl<'de> serde::Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as 65536, 512B, 64KiB, 10MB or 1GiB")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(ByteSizeError::Negative(v.to_string())))
            }

            fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(ByteSizeError::TooLarge(v.to_string())))
            }

            fn visit_i128<E: serde::de::Error>(self, v: i128) -> Result<ByteSize, E> {
                if v < 0 {
                    Err(E::custom(ByteSizeError::Negative(v.to_string())))
                } else {
                    Err(E::custom(ByteSizeError::TooLarge(v.to_string())))
                }
            }

            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<ByteSize, E> {
                if v < 0.0 {
                    Err(E::custom(ByteSizeError::Negative(v.to_string())))
                } else {
                    Err(E::custom(ByteSizeError::Fraction(v.to_string())))
                }
            }
        }

        deserializer.deserialize_any(Visitor)
    }
}

impl serde::Serialize for Duration {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl serde::Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl schemars::JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A duration: 250ms, 30s, 10m, 1h, 1h30m, 1.5s (units largest first), or 0.",
            "anyOf": [
                { "type": "string", "pattern": "^\\s*(0|([0-9]+(\\.[0-9]+)?(ms|s|m|h))+)\\s*$" },
                { "const": 0 }
            ]
        })
    }
}

impl schemars::JsonSchema for ByteSize {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ByteSize".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A size: a number of bytes, or 512B, 64KiB, 16MiB, 1GiB, 1TiB (KB/MB/GB/TB are powers of 1000).",
            "anyOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": "^\\s*[0-9]+\\s*([kKmMgGtT][iI]?)?[bB]?\\s*$" }
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration(std::time::Duration::from_millis(n))
    }

    fn dur(s: &str) -> Result<Duration, DurationError> {
        s.parse()
    }

    fn size(s: &str) -> Result<ByteSize, ByteSizeError> {
        s.parse()
    }

    #[test]
    fn duration_forms() {
        let table: &[(&str, u64)] = &[
            ("250ms", 250),
            ("30s", 30_000),
            ("10m", 600_000),
            ("1h", 3_600_000),
            ("1m30s", 90_000),
            ("1h30m", 5_400_000),
            ("1h2m3s4ms", 3_723_004),
            ("0s", 0),
            ("0ms", 0),
            ("0", 0),
            ("1.5s", 1_500),
            ("0.5h", 1_800_000),
            ("1.25m", 75_000),
            ("0.001s", 1),
            ("1.500s", 1_500),
            ("1.0ms", 1),
            ("2.000000000000s", 2_000),
            ("007s", 7_000),
            (" 30s ", 30_000),
        ];
        for &(input, expected) in table {
            assert_eq!(dur(input), Ok(ms(expected)), "{input}");
        }
    }

    #[test]
    fn duration_errors() {
        use DurationError::*;
        let table: &[(&str, DurationError)] = &[
            ("", Empty),
            ("   ", Empty),
            ("-5s", Negative("-5s".into())),
            ("-0s", Negative("-0s".into())),
            ("30", MissingUnit("30".into())),
            ("1.5", MissingUnit("1.5".into())),
            ("1m30", MissingUnit("1m30".into())),
            ("5x", Invalid("5x".into())),
            ("5d", Invalid("5d".into())),
            ("5S", Invalid("5S".into())),
            ("5 s", Invalid("5 s".into())),
            ("s", Invalid("s".into())),
            ("1.s", Invalid("1.s".into())),
            (".5s", Invalid(".5s".into())),
            ("1..5s", Invalid("1..5s".into())),
            ("1.2.3s", Invalid("1.2.3s".into())),
            ("1e3ms", Invalid("1e3ms".into())),
            ("+5s", Invalid("+5s".into())),
            ("١s", Invalid("١s".into())),
            ("30s1m", UnitOrder("30s1m".into())),
            ("1s1s", UnitOrder("1s1s".into())),
            ("1.5ms", TooPrecise("1.5ms".into())),
            ("0.0001s", TooPrecise("0.0001s".into())),
            ("1.0000000001s", TooPrecise("1.0000000001s".into())),
            (
                "18446744073709551616ms",
                TooLarge("18446744073709551616ms".into()),
            ),
            (
                "99999999999999999999999999999999999999999h",
                TooLarge("99999999999999999999999999999999999999999h".into()),
            ),
            ("5124095576030432h", TooLarge("5124095576030432h".into())),
        ];
        for (input, expected) in table {
            assert_eq!(dur(input).as_ref(), Err(expected), "{input}");
        }
    }

    #[test]
    fn duration_error_messages_name_the_accepted_forms() {
        let message = dur("5x").unwrap_err().to_string();
        assert_eq!(
            message,
            "invalid duration \"5x\": write a number and a unit (ms, s, m, h), e.g. 250ms, 30s, \
             10m, 1h, 1m30s or 1.5s; 0 is also accepted"
        );
        assert!(dur("").unwrap_err().to_string().contains("(ms, s, m, h)"));
        assert!(dur("-1s").unwrap_err().to_string().contains("negative"));
        assert!(dur("30").unwrap_err().to_string().contains("no unit"));
    }

    #[test]
    fn duration_display_is_canonical_and_round_trips() {
        let table: &[(u64, &str)] = &[
            (0, "0s"),
            (1, "1ms"),
            (250, "250ms"),
            (1_000, "1s"),
            (1_500, "1.5s"),
            (1_001, "1.001s"),
            (1_010, "1.01s"),
            (90_000, "1m30s"),
            (600_000, "10m"),
            (3_600_000, "1h"),
            (3_601_500, "1h1.5s"),
            (3_723_004, "1h2m3.004s"),
            (90_000_000, "25h"),
            (u64::MAX, "5124095576030h25m51.615s"),
        ];
        for &(millis, text) in table {
            assert_eq!(ms(millis).to_string(), text);
            assert_eq!(dur(text), Ok(ms(millis)), "{text}");
        }
    }

    #[test]
    fn duration_display_drops_sub_millisecond_parts() {
        let d = Duration(std::time::Duration::from_micros(1_500));
        assert_eq!(d.to_string(), "1ms");
        assert_eq!(
            Duration(std::time::Duration::from_nanos(1)).to_string(),
            "0s"
        );
    }

    #[test]
    fn duration_serde() {
        #[derive(serde::Deserialize, serde::Serialize, Debug, PartialEq)]
        struct T {
            t: Duration,
        }
        let ok = |yaml: &str| serde_yaml::from_str::<T>(yaml).map(|t| t.t);
        assert_eq!(ok("t: 250ms").ok(), Some(ms(250)));
        assert_eq!(ok("t: \"1m30s\"").ok(), Some(ms(90_000)));
        assert_eq!(ok("t: 0").ok(), Some(ms(0)));
        assert_eq!(ok("t: 1.5s").ok(), Some(ms(1_500)));
        let err = |yaml: &str| ok(yaml).unwrap_err().to_string();
        assert!(
            err("t: 30").contains("duration \"30\" has no unit"),
            "{}",
            err("t: 30")
        );
        assert!(err("t: -5").contains("negative"));
        assert!(err("t: 1.5").contains("no unit"));
        assert!(err("t: -1.5").contains("negative"));
        assert!(err("t: 5x").contains("invalid duration \"5x\""));
        assert!(err("t: true").contains("a duration such as 250ms"));
        assert!(err("t: [1s]").contains("a duration such as 250ms"));
        assert!(err("t: ~").contains("a duration such as 250ms"));

        let yaml = serde_yaml::to_string(&T { t: ms(90_500) }).unwrap();
        assert_eq!(yaml, "t: 1m30.5s\n");
        assert_eq!(serde_yaml::from_str::<T>(&yaml).unwrap().t, ms(90_500));
    }

    #[test]
    fn size_forms() {
        let table: &[(&str, u64)] = &[
            ("0", 0),
            ("65536", 65_536),
            ("512B", 512),
            ("64KiB", 64 << 10),
            ("64MiB", 64 << 20),
            ("1GiB", 1 << 30),
            ("2TiB", 2 << 40),
            ("10KB", 10_000),
            ("10MB", 10_000_000),
            ("3GB", 3_000_000_000),
            ("1TB", 1_000_000_000_000),
            ("8kib", 8 << 10),
            ("8KIB", 8 << 10),
            ("8kB", 8_000),
            ("1b", 1),
            ("0B", 0),
            (" 1KiB ", 1024),
            ("18446744073709551615", u64::MAX),
            ("18446744073709551615B", u64::MAX),
            ("16777215TiB", 16_777_215 << 40),
        ];
        for &(input, expected) in table {
            assert_eq!(size(input), Ok(ByteSize(expected)), "{input}");
        }
    }

    #[test]
    fn size_errors() {
        use ByteSizeError::*;
        let table: &[(&str, ByteSizeError)] = &[
            ("", Empty),
            (" ", Empty),
            ("-1", Negative("-1".into())),
            ("-1KiB", Negative("-1KiB".into())),
            ("1.5GiB", Fraction("1.5GiB".into())),
            ("1.0", Fraction("1.0".into())),
            ("10K", UnknownUnit("10K".into())),
            ("10kibs", UnknownUnit("10kibs".into())),
            ("10EiB", UnknownUnit("10EiB".into())),
            ("10bytes", UnknownUnit("10bytes".into())),
            ("KiB", Invalid("KiB".into())),
            ("10 KiB", Invalid("10 KiB".into())),
            ("1e6", Invalid("1e6".into())),
            ("1_000", Invalid("1_000".into())),
            ("0x10", Invalid("0x10".into())),
            ("+5", Invalid("+5".into())),
            ("10KiB5", Invalid("10KiB5".into())),
            (
                "18446744073709551616",
                TooLarge("18446744073709551616".into()),
            ),
            ("16777216TiB", TooLarge("16777216TiB".into())),
            (
                "99999999999999999999999GB",
                TooLarge("99999999999999999999999GB".into()),
            ),
        ];
        for (input, expected) in table {
            assert_eq!(size(input).as_ref(), Err(expected), "{input}");
        }
    }

    #[test]
    fn size_error_messages_name_the_accepted_forms() {
        assert_eq!(
            size("10K").unwrap_err().to_string(),
            "size \"10K\" has an unknown unit: write a number of bytes (65536) or a number and a \
             unit (B, KiB, MiB, GiB, TiB, or decimal KB, MB, GB, TB), e.g. 512B, 64KiB, 10MB, 1GiB"
        );
        assert!(size("1.5GiB").unwrap_err().to_string().contains("1536MiB"));
        assert!(
            size("99999999999999999999")
                .unwrap_err()
                .to_string()
                .contains("too large")
        );
    }

    #[test]
    fn size_display_is_canonical_and_round_trips() {
        let table: &[(u64, &str)] = &[
            (0, "0B"),
            (1, "1B"),
            (512, "512B"),
            (1_000, "1KB"),
            (1_024, "1KiB"),
            (1_025, "1025B"),
            (64 << 10, "64KiB"),
            (10_000, "10KB"),
            (128_000, "125KiB"),
            (64 << 20, "64MiB"),
            (1 << 30, "1GiB"),
            (3_000_000_000, "3GB"),
            (5 << 40, "5TiB"),
            (u64::MAX, "18446744073709551615B"),
        ];
        for &(bytes, text) in table {
            assert_eq!(ByteSize(bytes).to_string(), text);
            assert_eq!(size(text), Ok(ByteSize(bytes)), "{text}");
        }
    }

    #[test]
    fn size_serde() {
        #[derive(serde::Deserialize, serde::Serialize, Debug, PartialEq)]
        struct T {
            s: ByteSize,
        }
        let ok = |yaml: &str| serde_yaml::from_str::<T>(yaml).map(|t| t.s);
        assert_eq!(ok("s: 65536").ok(), Some(ByteSize(65_536)));
        assert_eq!(ok("s: 64KiB").ok(), Some(ByteSize(65_536)));
        assert_eq!(ok("s: '1GiB'").ok(), Some(ByteSize(1 << 30)));
        assert_eq!(ok("s: 0").ok(), Some(ByteSize(0)));
        let err = |yaml: &str| ok(yaml).unwrap_err().to_string();
        assert!(err("s: -1").contains("negative"), "{}", err("s: -1"));
        assert!(err("s: 1.5").contains("not a whole number"));
        assert!(err("s: 10K").contains("unknown unit"));
        assert!(
            err("s: 18446744073709551616").contains("too large"),
            "{}",
            err("s: 18446744073709551616")
        );
        assert!(err("s: true").contains("a size such as 65536"));

        let yaml = serde_yaml::to_string(&T {
            s: ByteSize(64 << 20),
        })
        .unwrap();
        assert_eq!(yaml, "s: 64MiB\n");
    }
}
