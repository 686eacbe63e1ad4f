//! Small pieces the methods share: durations and header names in the configuration, SHA-256
//! digests compared in constant time, and query strings.

use std::time::Duration;

use serde::{Deserialize, Deserializer};
use sha2::{Digest as _, Sha256};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

/// A SHA-256 digest.
pub type Digest = [u8; 32];

pub fn sha256(parts: &[&[u8]]) -> Digest {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// The index of the digest in `known` equal to `digest`. Every entry is compared in full, with
/// no early exit, so the time taken says nothing about which entry matched or how much of it.
pub fn find_digest(known: &[Digest], digest: &Digest) -> Option<usize> {
    let mut found = Choice::from(0);
    let mut index = 0u32;
    for (i, candidate) in known.iter().enumerate() {
        let equal = candidate.ct_eq(digest);
        index.conditional_assign(&(i as u32), equal);
        found |= equal;
    }
    bool::from(found).then_some(index as usize)
}

/// `a == b` in constant time.
pub fn digests_equal(a: &Digest, b: &Digest) -> bool {
    a.ct_eq(b).into()
}

/// A digest written as 64 hex digits (either case).
pub fn parse_hex_digest(hex: &str) -> Option<Digest> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.as_bytes().chunks(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

/// A duration as the rest of Portico's YAML writes one: a whole number and a unit, `ms`, `s`,
/// `m` or `h` (`250ms`, `2s`, `10m`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let bad = || format!("{text:?} is not a duration (write e.g. 500ms, 2s, 10m, 1h)");
    let n: u64 = number.parse().map_err(|_| bad())?;
    let seconds = |per: u64| n.checked_mul(per).map(Duration::from_secs).ok_or_else(bad);
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => seconds(1),
        "m" => seconds(60),
        "h" => seconds(3600),
        _ => Err(bad()),
    }
}

/// A header name as configured, lower-cased; `Err` names what is wrong with it.
pub fn header_name(name: &str) -> Result<String, String> {
    let token = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if token {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(format!("{name:?} is not a header name"))
    }
}

/// Whether `value` can be sent as a header value (visible ASCII, spaces and tabs).
pub fn is_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
}

/// A list given either as a YAML list of lines or as one block of text (an htpasswd file pasted
/// with `|`), where blank lines and `#` comments are skipped.
pub fn lines<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Lines {
        List(Vec<String>),
        Text(String),
    }
    Ok(match Lines::deserialize(de)? {
        Lines::List(list) => list,
        Lines::Text(text) => text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect(),
    })
}

/// The path of a request without any query parameter named `name` (compared percent-decoded,
/// `+` as a space, as `Http::query` reads it), and how many there were.
pub fn strip_query_param(path: &str, name: &str) -> (String, usize) {
    let Some((base, query)) = path.split_once('?') else {
        return (path.to_string(), 0);
    };
    let mut removed = 0;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
            let matches = decode(key).is_some_and(|k| k == name);
            removed += usize::from(matches);
            !matches
        })
        .collect();
    let kept = kept.join("&");
    if kept.is_empty() {
        (base.to_string(), removed)
    } else {
        (format!("{base}?{kept}"), removed)
    }
}

/// Percent-decoding of a query component (`+` is a space); `None` when not UTF-8.
fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(b)) => {
                out.push(b);
                i += 2;
            }
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let cases: &[(&str, Option<Duration>)] = &[
            ("250ms", Some(Duration::from_millis(250))),
            ("2s", Some(Duration::from_secs(2))),
            ("10m", Some(Duration::from_secs(600))),
            ("1h", Some(Duration::from_secs(3600))),
            (" 0s ", Some(Duration::ZERO)),
            ("2", None),
            ("s", None),
            ("1.5s", None),
            ("-1s", None),
            ("1d", None),
            ("99999999999999999999h", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text).ok(), *want, "{text:?}");
        }
    }

    #[test]
    fn header_names() {
        assert_eq!(header_name("X-Auth-User").as_deref(), Ok("x-auth-user"));
        for bad in ["", "x auth", "x:y", ":path", "é"] {
            assert!(header_name(bad).is_err(), "{bad:?}");
        }
        assert!(is_header_value("ci-bot 1\t"));
        assert!(!is_header_value("a\nb"));
        assert!(!is_header_value("é"));
    }

    #[test]
    fn hex_digests() {
        let hex = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";
        let d = parse_hex_digest(hex).unwrap();
        assert_eq!(d, sha256(&[b"secret"]));
        assert_eq!(parse_hex_digest(&hex.to_uppercase()), Some(d));
        assert_eq!(parse_hex_digest(&hex[1..]), None);
        assert_eq!(parse_hex_digest(&format!("{}g", &hex[1..])), None);
        assert_eq!(parse_hex_digest(&format!("{}é", &hex[2..])), None);
    }

    #[test]
    fn digests_are_found_whatever_their_position() {
        let known: Vec<Digest> = (0u8..5).map(|i| sha256(&[&[i]])).collect();
        for (i, d) in known.iter().enumerate() {
            assert_eq!(find_digest(&known, d), Some(i));
        }
        assert_eq!(find_digest(&known, &sha256(&[b"other"])), None);
        assert_eq!(find_digest(&[], &known[0]), None);
        assert!(digests_equal(&known[1], &known[1]));
        assert!(!digests_equal(&known[1], &known[2]));
    }

    #[test]
    fn query_parameters_are_stripped() {
        let cases: &[(&str, &str, usize)] = &[
            ("/a?api_key=k", "/a", 1),
            ("/a?x=1&api_key=k&y=2", "/a?x=1&y=2", 1),
            ("/a?api%5Fkey=k&x=1", "/a?x=1", 1),
            ("/a?api_key=1&api_key=2", "/a", 2),
            ("/a?api_key", "/a", 1),
            ("/a?api_keys=1", "/a?api_keys=1", 0),
            ("/a", "/a", 0),
            ("/a?", "/a", 0),
        ];
        for (path, want, n) in cases {
            assert_eq!(
                strip_query_param(path, "api_key"),
                (want.to_string(), *n),
                "{path}"
            );
        }
    }
}
