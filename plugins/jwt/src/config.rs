//! The plugin's configuration: the serde types that mirror the YAML `config`, and [`Settings`],
//! what `configure` compiles them into (checked, defaults applied, keys parsed).

use std::collections::BTreeMap;
use std::time::Duration;

use portico_plugin_sdk::crypto::Algorithm;
use serde::Deserialize;

use crate::jwk::{self, VerifyKey};

/// The YAML `config` of the plugin, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Accepted `iss` values (one string or a list); `iss` is not checked when unset.
    #[serde(default)]
    pub issuer: Option<OneOrMany>,
    /// Accepted `aud` values; a token must name at least one. Not checked when unset.
    #[serde(default)]
    pub audiences: Option<OneOrMany>,
    /// An inline JWKS: `{ keys: [...] }`, or the same as JSON text.
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
    #[serde(default)]
    pub remote_jwks: Option<RemoteConfig>,
    /// Accepted `alg` values; all supported algorithms when unset.
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    #[serde(default)]
    pub leeway: Option<ConfigDuration>,
    /// Where the token is looked for; `Authorization: Bearer` when unset.
    #[serde(default)]
    pub from: Option<Vec<SourceConfig>>,
    /// Claim name → request header the upstream receives it in.
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    /// Keep the token in the request to the upstream (`false` strips it).
    #[serde(default = "yes")]
    pub forward_token: bool,
    #[serde(default)]
    pub max_token_size: Option<ConfigSize>,
    /// Verified tokens kept per instance (0 turns the cache off).
    #[serde(default)]
    pub cache_size: Option<usize>,
}

fn yes() -> bool {
    true
}

/// A string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    /// A name from the proxy's `upstreams:`.
    pub upstream: String,
    pub path: String,
    /// The `Host` of the fetch; the upstream's name by default.
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default)]
    pub cache_duration: Option<ConfigDuration>,
    #[serde(default)]
    pub timeout: Option<ConfigDuration>,
}

/// One place to look for the token: exactly one of `header`, `cookie` or `query`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    #[serde(default)]
    pub header: Option<String>,
    /// With `header`: the scheme before the token (`"Bearer "` by default for `authorization`),
    /// matched case-insensitively.
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub cookie: Option<String>,
    #[serde(default)]
    pub query: Option<String>,
}

/// A duration as the rest of Portico's YAML writes it (`60s`, `5m`, `1m30s`, `250ms`, `1.5s`),
/// or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

/// A size: a number of bytes or `8KiB`, `16KB`, `1MiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigSize(pub u64);

/// Where a token is read from, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A header; with a prefix (a scheme such as `Bearer`) the value must start with it.
    Header {
        name: String,
        prefix: Option<String>,
    },
    Cookie(String),
    Query(String),
}

/// The remote JWKS, compiled.
#[derive(Debug, Clone)]
pub struct Remote {
    pub upstream: String,
    pub path: String,
    pub authority: Option<String>,
    pub cache_duration: Duration,
    pub timeout: Duration,
}

/// The checked configuration the plugin runs with.
#[derive(Debug)]
pub struct Settings {
    /// Empty: `iss` is not checked.
    pub issuers: Vec<String>,
    /// Empty: `aud` is not checked.
    pub audiences: Vec<String>,
    /// The inline keys.
    pub keys: Vec<VerifyKey>,
    pub remote: Option<Remote>,
    pub algorithms: Vec<Algorithm>,
    pub leeway: Duration,
    pub sources: Vec<Source>,
    /// (claim, header), headers lowercase.
    pub forward_claims: Vec<(String, String)>,
    pub forward_token: bool,
    pub max_token_size: usize,
    pub cache_size: usize,
}

pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_TOKEN_SIZE: u64 = 8 * 1024;
pub const DEFAULT_CACHE_SIZE: usize = 10_000;
pub const DEFAULT_CACHE_DURATION: Duration = Duration::from_secs(300);
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CACHE_SIZE: usize = 1_000_000;
const MAX_TOKEN_SIZE_LIMIT: u64 = 1024 * 1024;

impl Settings {
    /// Checks `config` and applies the defaults. The error is the operator's message.
    pub fn compile(config: Config) -> Result<Settings, String> {
        let issuers = config.issuer.map(OneOrMany::into_vec).unwrap_or_default();
        if issuers.iter().any(String::is_empty) {
            return Err("issuer: an empty issuer".into());
        }
        let audiences = config
            .audiences
            .map(OneOrMany::into_vec)
            .unwrap_or_default();
        if audiences.iter().any(String::is_empty) {
            return Err("audiences: an empty audience".into());
        }

        let algorithms = match config.algorithms {
            None => Algorithm::ALL.to_vec(),
            Some(names) => algorithms(&names)?,
        };

        let keys = match config.jwks {
            None => Vec::new(),
            Some(value) => jwk::parse_inline(&value)?,
        };
        let remote = config.remote_jwks.map(remote).transpose()?;
        if keys.is_empty() && remote.is_none() {
            return Err("no keys: set jwks (inline keys) or remote_jwks".into());
        }

        let sources = match config.from {
            None => vec![Source::Header {
                name: "authorization".into(),
                prefix: Some("Bearer ".into()),
            }],
            Some(list) if list.is_empty() => {
                return Err("from: an empty list (leave it out for Authorization: Bearer)".into());
            }
            Some(list) => list
                .into_iter()
                .enumerate()
                .map(|(i, s)| source(s).map_err(|e| format!("from[{i}]: {e}")))
                .collect::<Result<_, _>>()?,
        };

        let mut forward_claims = Vec::new();
        for (claim, header) in config.forward_claims {
            if claim.is_empty() {
                return Err("forward_claims: an empty claim name".into());
            }
            let header = header.to_ascii_lowercase();
            if !is_header_name(&header) {
                return Err(format!(
                    "forward_claims.{claim}: {header:?} is not a valid request header name"
                ));
            }
            if forward_claims.iter().any(|(_, h)| *h == header) {
                return Err(format!(
                    "forward_claims.{claim}: header {header} is already used by another claim"
                ));
            }
            forward_claims.push((claim, header));
        }

        let max_token_size = config
            .max_token_size
            .map_or(DEFAULT_MAX_TOKEN_SIZE, |s| s.0);
        if !(1..=MAX_TOKEN_SIZE_LIMIT).contains(&max_token_size) {
            return Err(format!(
                "max_token_size: {max_token_size} bytes is outside 1 byte to 1MiB"
            ));
        }
        let cache_size = config.cache_size.unwrap_or(DEFAULT_CACHE_SIZE);
        if cache_size > MAX_CACHE_SIZE {
            return Err(format!(
                "cache_size: {cache_size} is more than {MAX_CACHE_SIZE}"
            ));
        }

        Ok(Settings {
            issuers,
            audiences,
            keys,
            remote,
            algorithms,
            leeway: config.leeway.map_or(DEFAULT_LEEWAY, |d| d.0),
            sources,
            forward_claims,
            forward_token: config.forward_token,
            max_token_size: max_token_size as usize,
            cache_size,
        })
    }
}

fn algorithms(names: &[String]) -> Result<Vec<Algorithm>, String> {
    if names.is_empty() {
        return Err("algorithms: an empty list would accept no token".into());
    }
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        if name.eq_ignore_ascii_case("none") {
            return Err(format!(
                "algorithms[{i}]: \"none\" (unsigned tokens) is never accepted"
            ));
        }
        let alg = Algorithm::from_name(name).ok_or_else(|| {
            let all: Vec<&str> = Algorithm::ALL.iter().map(|a| a.name()).collect();
            format!(
                "algorithms[{i}]: unknown algorithm {name:?} (supported: {})",
                all.join(", ")
            )
        })?;
        if !out.contains(&alg) {
            out.push(alg);
        }
    }
    Ok(out)
}

fn remote(config: RemoteConfig) -> Result<Remote, String> {
    if config.upstream.is_empty() {
        return Err("remote_jwks.upstream: empty".into());
    }
    if !config.path.starts_with('/') {
        return Err(format!(
            "remote_jwks.path: {:?} does not start with /",
            config.path
        ));
    }
    let cache_duration = config
        .cache_duration
        .map_or(DEFAULT_CACHE_DURATION, |d| d.0);
    if cache_duration < Duration::from_secs(1) {
        return Err("remote_jwks.cache_duration: at least 1s".into());
    }
    let timeout = config.timeout.map_or(DEFAULT_FETCH_TIMEOUT, |d| d.0);
    if timeout.is_zero() || timeout > Duration::from_secs(60) {
        return Err("remote_jwks.timeout: between 1ms and 60s".into());
    }
    Ok(Remote {
        upstream: config.upstream,
        path: config.path,
        authority: config.authority,
        cache_duration,
        timeout,
    })
}

fn source(config: SourceConfig) -> Result<Source, String> {
    let SourceConfig {
        header,
        prefix,
        cookie,
        query,
    } = config;
    let given = [header.is_some(), cookie.is_some(), query.is_some()];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err("write exactly one of header, cookie or query".into());
    }
    if prefix.is_some() && header.is_none() {
        return Err("prefix: only a header source has a prefix".into());
    }
    if let Some(name) = header {
        let name = name.to_ascii_lowercase();
        if !is_header_name(&name) {
            return Err(format!("header: {name:?} is not a valid header name"));
        }
        let prefix = match prefix {
            Some(p) if p.is_empty() => None,
            Some(p) => Some(p),
            None if name == "authorization" => Some("Bearer ".into()),
            None => None,
        };
        return Ok(Source::Header { name, prefix });
    }
    match (cookie, query) {
        (Some(name), _) if !name.is_empty() => Ok(Source::Cookie(name)),
        (_, Some(name)) if !name.is_empty() => Ok(Source::Query(name)),
        _ => Err("an empty name".into()),
    }
}

/// A lowercase HTTP field name (RFC 9110 token), not a pseudo-header.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ConfigDuration;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a duration such as 60s, 5m, 1m30s or 250ms, or a number of seconds")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ConfigDuration, E> {
                parse_duration(v).map(ConfigDuration).map_err(E::custom)
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ConfigDuration, E> {
                Ok(ConfigDuration(Duration::from_secs(v)))
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ConfigDuration, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("duration {v} is negative")))
                    .and_then(|v| self.visit_u64(v))
            }

            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<ConfigDuration, E> {
                if !(0.0..=1e12).contains(&v) {
                    return Err(E::custom(format!("duration {v} is out of range")));
                }
                Ok(ConfigDuration(Duration::from_millis(
                    (v * 1000.0).round() as u64
                )))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl<'de> Deserialize<'de> for ConfigSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ConfigSize;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a size such as 8192, 8KiB or 16KB")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ConfigSize, E> {
                parse_size(v).map(ConfigSize).map_err(E::custom)
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ConfigSize, E> {
                Ok(ConfigSize(v))
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ConfigSize, E> {
                u64::try_from(v)
                    .map(ConfigSize)
                    .map_err(|_| E::custom(format!("size {v} is negative")))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Portico's duration syntax: `<number><unit>` parts with units `h`, `m`, `s`, `ms` from
/// largest to smallest, each at most once; fractions allowed while the total stays a whole
/// number of milliseconds; the bare `0`.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    const UNITS: [(&str, u128); 4] = [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];
    let s = input.trim();
    let invalid = || {
        format!(
            "invalid duration {input:?}: write a number and a unit (ms, s, m, h), e.g. 250ms, \
             30s, 10m, 1h or 1m30s, or a number of seconds"
        )
    };
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() || s.starts_with('-') {
        return Err(invalid());
    }
    // In microseconds, to see (and refuse) fractions of a millisecond.
    let mut total_us: u128 = 0;
    let mut last: Option<usize> = None;
    let mut rest = s;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        let (number, after) = rest.split_at(n);
        let u = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(u);
        rest = after;
        let index = UNITS
            .iter()
            .position(|(name, _)| *name == unit)
            .ok_or_else(invalid)?;
        if last.is_some_and(|l| index <= l) {
            return Err(invalid());
        }
        last = Some(index);
        let unit_ms = UNITS[index].1;
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() || number.ends_with('.') || fraction.contains('.') {
            return Err(invalid());
        }
        let whole: u128 = whole.parse().map_err(|_| invalid())?;
        let fraction_us = if fraction.is_empty() {
            0
        } else {
            let digits = fraction.len().min(12);
            if fraction[digits..].bytes().any(|b| b != b'0') {
                return Err(invalid());
            }
            let numerator: u128 = fraction[..digits].parse().map_err(|_| invalid())?;
            let scaled = numerator * unit_ms * 1000;
            let denominator = 10u128.pow(digits as u32);
            if !scaled.is_multiple_of(denominator) {
                return Err(invalid());
            }
            scaled / denominator
        };
        total_us = whole
            .checked_mul(unit_ms * 1000)
            .and_then(|us| us.checked_add(fraction_us))
            .and_then(|us| us.checked_add(total_us))
            .ok_or_else(invalid)?;
    }
    if !total_us.is_multiple_of(1000) {
        return Err(format!("duration {input:?} is finer than a millisecond"));
    }
    let millis = u64::try_from(total_us / 1000).map_err(|_| invalid())?;
    Ok(Duration::from_millis(millis))
}

/// Portico's size syntax: bytes, or an integer with `B`, `KiB`, `MiB`, `GiB`, `KB`, `MB`, `GB`
/// (case-insensitive).
pub fn parse_size(input: &str) -> Result<u64, String> {
    const UNITS: [(&str, u64); 7] = [
        ("gib", 1 << 30),
        ("mib", 1 << 20),
        ("kib", 1 << 10),
        ("gb", 1_000_000_000),
        ("mb", 1_000_000),
        ("kb", 1_000),
        ("b", 1),
    ];
    let s = input.trim().to_ascii_lowercase();
    let invalid = || format!("invalid size {input:?}: write bytes (8192) or e.g. 8KiB, 16KB");
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits);
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let factor = match unit {
        "" => 1,
        u => UNITS
            .iter()
            .find(|(name, _)| *name == u)
            .map(|(_, f)| *f)
            .ok_or_else(invalid)?,
    };
    number.checked_mul(factor).ok_or_else(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_the_rest_of_portico() {
        let ok: &[(&str, u64)] = &[
            ("60s", 60_000),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("1m30s", 90_000),
            ("250ms", 250),
            ("1.5s", 1_500),
            ("0.5h", 1_800_000),
            ("0", 0),
            ("0s", 0),
            (" 30s ", 30_000),
        ];
        for &(input, ms) in ok {
            assert_eq!(
                parse_duration(input),
                Ok(Duration::from_millis(ms)),
                "{input}"
            );
        }
        for bad in [
            "", "30", "-5s", "5x", "5S", "30s1m", "1s1s", "1.5ms", ".5s", "1.s", "s", "1e3ms",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn durations_in_yaml_are_strings_or_seconds() {
        let d = |v: serde_json::Value| serde_json::from_value::<ConfigDuration>(v).map(|d| d.0);
        assert_eq!(
            d(serde_json::json!("2m")).unwrap(),
            Duration::from_secs(120)
        );
        assert_eq!(d(serde_json::json!(45)).unwrap(), Duration::from_secs(45));
        assert_eq!(
            d(serde_json::json!(1.5)).unwrap(),
            Duration::from_millis(1500)
        );
        assert!(d(serde_json::json!(-1)).is_err());
        assert!(d(serde_json::json!("soon")).is_err());
    }

    #[test]
    fn sizes() {
        let ok: &[(&str, u64)] = &[
            ("8192", 8192),
            ("8KiB", 8192),
            ("8kib", 8192),
            ("16KB", 16_000),
            ("1MiB", 1 << 20),
            ("512B", 512),
        ];
        for &(input, n) in ok {
            assert_eq!(parse_size(input), Ok(n), "{input}");
        }
        for bad in ["", "8 KiB", "1.5KiB", "8XB", "-1", "99999999999999999999"] {
            assert!(parse_size(bad).is_err(), "{bad:?} parsed");
        }
    }
}
