//! The configuration: [`Config`] mirrors the YAML `config` block, [`Settings`] is what the plugin
//! runs with (validated, durations parsed, the key compiled into parts).

use std::fmt;
use std::time::Duration;

use portico_plugin_sdk::{Error, Result};
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

use crate::gcra::Gcra;

/// The YAML `config` of a `rate-limit` plugin.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Requests allowed per `per`, on average.
    pub rate: u64,
    /// The period `rate` is counted over.
    #[serde(default = "one_second", deserialize_with = "duration")]
    pub per: Duration,
    /// Requests allowed at once from a full bucket; `rate` when absent.
    #[serde(default)]
    pub burst: Option<u64>,
    /// What a bucket belongs to: one part or a list of parts.
    #[serde(default = "client_ip", deserialize_with = "one_or_many")]
    pub key: Vec<String>,
    /// Add `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` to every response.
    #[serde(default)]
    pub headers: bool,
}

/// What the plugin runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub gcra: Gcra,
    pub key: Vec<KeyPart>,
    pub headers: bool,
}

/// One part of a bucket's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    /// The client's IP address (the TCP peer).
    ClientIp,
    /// The name of the route the request matched.
    Route,
    /// A request header's value (lowercase name); the client IP when absent or empty.
    Header(String),
}

impl Settings {
    /// Validates `config`; the error names the key at fault.
    pub fn compile(config: Config) -> Result<Settings> {
        let fail = |m: String| Err(Error::config(m));
        if config.rate == 0 {
            return fail("rate: must be at least 1".into());
        }
        if config.per.is_zero() {
            return fail("per: must be more than 0".into());
        }
        let burst = config.burst.unwrap_or(config.rate);
        if burst == 0 {
            return fail("burst: must be at least 1".into());
        }
        let gcra = match Gcra::new(config.rate, config.per, burst) {
            Ok(g) => g,
            Err(m) => return fail(m),
        };
        if config.key.is_empty() {
            return fail(format!("key: name at least one part ({KEY_FORMS})"));
        }
        let mut key = Vec::with_capacity(config.key.len());
        for (i, part) in config.key.iter().enumerate() {
            let parsed = match KeyPart::parse(part) {
                Ok(p) => p,
                Err(m) if config.key.len() == 1 => return fail(format!("key: {m}")),
                Err(m) => return fail(format!("key[{i}]: {m}")),
            };
            if key.contains(&parsed) {
                return fail(format!("key[{i}]: {part:?} is named twice"));
            }
            key.push(parsed);
        }
        Ok(Settings {
            gcra,
            key,
            headers: config.headers,
        })
    }
}

const KEY_FORMS: &str = "client_ip, route, or header:NAME";

impl KeyPart {
    fn parse(text: &str) -> Result<KeyPart, String> {
        match text {
            "client_ip" => Ok(KeyPart::ClientIp),
            "route" => Ok(KeyPart::Route),
            _ => match text.strip_prefix("header:") {
                Some(name) if is_header_name(name) => {
                    Ok(KeyPart::Header(name.to_ascii_lowercase()))
                }
                Some(name) => Err(format!("{name:?} is not a header name")),
                None => Err(format!("unknown key {text:?} (use {KEY_FORMS})")),
            },
        }
    }
}

/// An RFC 9110 token, optionally after the `:` of a pseudo-header (`:authority`).
fn is_header_name(name: &str) -> bool {
    let token = name.strip_prefix(':').unwrap_or(name);
    !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn one_second() -> Duration {
    Duration::from_secs(1)
}

fn client_ip() -> Vec<String> {
    vec!["client_ip".into()]
}

/// A duration written as Portico writes them elsewhere (`500ms`, `1s`, `1m`, `1h`, `1m30s`,
/// `1.5s`).
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct Text;
    impl Visitor<'_> for Text {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as 500ms, 1s, 1m or 1h")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Duration, E> {
            parse_duration(s).map_err(E::custom)
        }
        fn visit_u64<E: de::Error>(self, n: u64) -> Result<Duration, E> {
            match n {
                0 => Ok(Duration::ZERO),
                _ => Err(E::custom(format!(
                    "duration {n} has no unit: {DURATION_FORMS}"
                ))),
            }
        }
        fn visit_i64<E: de::Error>(self, n: i64) -> Result<Duration, E> {
            Err(E::custom(format!(
                "duration {n} is negative: {DURATION_FORMS}"
            )))
        }
    }
    d.deserialize_any(Text)
}

/// A key part as a string, or a list of them.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct Parts;
    impl<'de> Visitor<'de> for Parts {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{KEY_FORMS}, or a list of them")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Vec<String>, E> {
            Ok(vec![s.to_string()])
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut parts = Vec::new();
            while let Some(p) = seq.next_element::<String>()? {
                parts.push(p);
            }
            Ok(parts)
        }
    }
    d.deserialize_any(Parts)
}

const DURATION_FORMS: &str =
    "write a number and a unit (ms, s, m, h), e.g. 500ms, 1s, 1m, 1h, 1m30s or 1.5s";

/// Parses a duration the way Portico's own configuration does: one or more `<number><unit>`
/// parts, units (`h`, `m`, `s`, `ms`) from largest to smallest, each at most once, decimal
/// fractions allowed as long as the total is a whole number of milliseconds; a bare `0` is zero.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    const UNITS: [(&str, u128); 4] = [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];
    let s = input.trim();
    let bad = |why: &str| Err(format!("duration {s:?} {why}: {DURATION_FORMS}"));
    if s.is_empty() {
        return bad("is empty");
    }
    if s.starts_with('-') {
        return bad("is negative");
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    // In microseconds, to see fractions of a millisecond and refuse them rather than round.
    let mut total_us: u128 = 0;
    let mut last_unit: Option<usize> = None;
    let mut rest = s;
    while !rest.is_empty() {
        let is_number = |c: char| c.is_ascii_digit() || c == '.';
        let (number, after) = rest.split_at(rest.find(|c| !is_number(c)).unwrap_or(rest.len()));
        let (unit, after) = after.split_at(after.find(is_number).unwrap_or(after.len()));
        rest = after;
        if unit.is_empty() {
            return bad("has no unit");
        }
        let Some(index) = UNITS.iter().position(|(name, _)| *name == unit) else {
            return bad("is not a number and a unit");
        };
        if last_unit.is_some_and(|last| index <= last) {
            return bad("has its units out of order (largest first, each once)");
        }
        last_unit = Some(index);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        let fraction = fraction.trim_end_matches('0');
        let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !digits(whole) || !digits(fraction) || number.ends_with('.') {
            return bad("is not a number and a unit");
        }
        if whole.len() > 20 || fraction.len() > 9 {
            return bad("is too large or too precise");
        }
        let unit_us = UNITS[index].1 * 1000;
        let whole_us = whole.parse::<u128>().unwrap_or(u128::MAX) * unit_us;
        let fraction_us = if fraction.is_empty() {
            0
        } else {
            let scaled = fraction.parse::<u128>().unwrap_or(0) * unit_us;
            let denominator = 10u128.pow(fraction.len() as u32);
            if !scaled.is_multiple_of(denominator) {
                return bad("is finer than a millisecond");
            }
            scaled / denominator
        };
        total_us = total_us
            .saturating_add(whole_us)
            .saturating_add(fraction_us);
    }
    if !total_us.is_multiple_of(1000) {
        return bad("is finer than a millisecond");
    }
    match u64::try_from(total_us / 1000) {
        Ok(ms) if ms <= u64::MAX / 1_000_000 => Ok(Duration::from_millis(ms)),
        _ => bad("is too large"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_in_the_proxy_configuration() {
        // (text, milliseconds or None for an error)
        let cases: &[(&str, Option<u64>)] = &[
            ("500ms", Some(500)),
            ("1s", Some(1_000)),
            ("1m", Some(60_000)),
            ("1h", Some(3_600_000)),
            ("1m30s", Some(90_000)),
            ("1h30m", Some(5_400_000)),
            ("1.5s", Some(1_500)),
            ("0.5h", Some(1_800_000)),
            ("1.250s", Some(1_250)),
            (" 2s ", Some(2_000)),
            ("0", Some(0)),
            ("0s", Some(0)),
            ("10", None),
            ("1.5", None),
            ("-1s", None),
            ("1d", None),
            ("1S", None),
            ("30s1m", None),
            ("1s1s", None),
            ("1.5ms", None),
            ("1.s", None),
            (".5s", None),
            ("", None),
            ("s", None),
            ("99999999999999999999999h", None),
        ];
        for (text, want) in cases {
            let got = parse_duration(text).ok().map(|d| d.as_millis() as u64);
            assert_eq!(&got, want, "{text:?}");
        }
        let err = parse_duration("30s1m").unwrap_err();
        assert!(
            err.contains("\"30s1m\"") && err.contains("largest first"),
            "{err}"
        );
    }

    #[test]
    fn key_parts() {
        let cases: &[(&str, Result<KeyPart, &str>)] = &[
            ("client_ip", Ok(KeyPart::ClientIp)),
            ("route", Ok(KeyPart::Route)),
            ("header:X-Api-Key", Ok(KeyPart::Header("x-api-key".into()))),
            (
                "header::authority",
                Ok(KeyPart::Header(":authority".into())),
            ),
            ("header:", Err("is not a header name")),
            ("header:bad name", Err("is not a header name")),
            ("header:a:b", Err("is not a header name")),
            ("ip", Err("unknown key \"ip\"")),
            ("Client_IP", Err("unknown key")),
        ];
        for (text, want) in cases {
            match (KeyPart::parse(text), want) {
                (Ok(got), Ok(want)) => assert_eq!(&got, want, "{text:?}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{text:?}: {got}"),
                (got, want) => panic!("{text:?}: got {got:?}, want {want:?}"),
            }
        }
    }
}
