//! Finding the token in a request (a header with or without a scheme, a cookie, a query
//! parameter) and taking it out again when it must not reach the upstream.

use portico_plugin_sdk::{Http, Result};

use crate::config::Source;

/// What the configured sources hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// No source holds a token (RFC 6750: no credentials were sent).
    Missing,
    /// More than one token: two sources, or one source twice (RFC 6750 §2: one method only).
    Ambiguous,
    /// The token and the index of the source it came from.
    One { token: String, source: usize },
}

/// What one source holds.
#[derive(Debug, PartialEq, Eq)]
enum Held {
    Nothing,
    One(String),
    Many,
}

pub fn find<S>(http: &Http<'_, S>, sources: &[Source]) -> Result<Found> {
    let mut found = Found::Missing;
    for (i, source) in sources.iter().enumerate() {
        let held = match source {
            Source::Header { name, prefix } => match http.request().get(name)? {
                None => Held::Nothing,
                Some(value) => from_header(&value, prefix.as_deref()),
            },
            Source::Cookie(name) => match http.request().get("cookie")? {
                None => Held::Nothing,
                Some(header) => from_cookies(&header, name),
            },
            Source::Query(name) => from_query(&http.path()?, name),
        };
        match (held, &found) {
            (Held::Nothing, _) => {}
            (Held::Many, _) | (Held::One(_), Found::One { .. }) => return Ok(Found::Ambiguous),
            (Held::One(token), _) => found = Found::One { token, source: i },
        }
    }
    Ok(found)
}

/// Takes the token out of the request: the header, the cookie or the query parameter.
pub fn strip<S>(http: &Http<'_, S>, source: &Source) -> Result<()> {
    let request = http.request();
    match source {
        Source::Header { name, .. } => request.remove(name),
        Source::Cookie(name) => {
            let Some(header) = request.get("cookie")? else {
                return Ok(());
            };
            let kept: Vec<&str> = cookies(&header)
                .filter(|c| c.split_once('=').map_or(c.trim(), |(k, _)| k.trim()) != name)
                .collect();
            if kept.is_empty() {
                request.remove("cookie")
            } else {
                request.set("cookie", kept.join("; "))
            }
        }
        Source::Query(name) => {
            let path = http.path()?;
            let Some((path_only, query)) = path.split_once('?') else {
                return Ok(());
            };
            let kept: Vec<&str> = query
                .split('&')
                .filter(|pair| {
                    let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
                    percent_decode(key).as_deref() != Some(name.as_str())
                })
                .collect();
            if kept.is_empty() {
                request.set(":path", path_only)
            } else {
                request.set(":path", format!("{path_only}?{}", kept.join("&")))
            }
        }
    }
}

/// A header's value: the token after the scheme (`prefix`, case-insensitive; when it ends with
/// a space, one or more spaces or tabs must follow the scheme), or the whole value. A value
/// with another scheme holds nothing. The host joins repeated fields with `,`, which no token
/// contains: a comma means two values.
fn from_header(value: &str, prefix: Option<&str>) -> Held {
    if value.contains(',') {
        return Held::Many;
    }
    let value = value.trim_matches([' ', '\t']);
    let token = match prefix {
        None => value,
        Some(prefix) => {
            let scheme = prefix.trim_end_matches([' ', '\t']);
            let needs_space = scheme.len() != prefix.len();
            let Some(head) = value.get(..scheme.len()) else {
                return Held::Nothing;
            };
            if !head.eq_ignore_ascii_case(scheme) {
                return Held::Nothing;
            }
            let rest = &value[scheme.len()..];
            if needs_space && !rest.starts_with([' ', '\t']) {
                // `Bearerxyz`, or a bare `Bearer` (trimmed above): another scheme, or none.
                if rest.is_empty() {
                    return Held::One(String::new());
                }
                return Held::Nothing;
            }
            rest.trim_start_matches([' ', '\t'])
        }
    };
    Held::One(token.to_string())
}

/// `name=value` pairs of a `Cookie` header. The host joins repeated `Cookie` fields with `,`,
/// which a cookie value may not contain (RFC 6265 §4.1.1), so both separate pairs.
fn cookies(header: &str) -> impl Iterator<Item = &str> {
    header
        .split([';', ','])
        .map(str::trim)
        .filter(|c| !c.is_empty())
}

fn from_cookies(header: &str, name: &str) -> Held {
    let mut held = Held::Nothing;
    for cookie in cookies(header) {
        let Some((k, v)) = cookie.split_once('=') else {
            continue;
        };
        if k.trim() != name {
            continue;
        }
        if held != Held::Nothing {
            return Held::Many;
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        held = Held::One(v.to_string());
    }
    held
}

fn from_query(path: &str, name: &str) -> Held {
    let Some((_, query)) = path.split_once('?') else {
        return Held::Nothing;
    };
    let mut held = Held::Nothing;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(k).as_deref() != Some(name) {
            continue;
        }
        if held != Held::Nothing {
            return Held::Many;
        }
        // A value that does not decode to UTF-8 is kept raw: it fails as a malformed token.
        held = Held::One(percent_decode(v).unwrap_or_else(|| v.to_string()));
    }
    held
}

/// Percent-decoding of a query component (`+` is a space); `None` when not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let hex = |at: usize| bytes.get(at).and_then(|c| (*c as char).to_digit(16));
        match b {
            b'+' => out.push(b' '),
            b'%' => match (hex(i + 1), hex(i + 2)) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> Held {
        Held::One(s.into())
    }

    #[test]
    fn bearer_tokens_in_headers() {
        let bearer = Some("Bearer ");
        let table: &[(&str, Option<&str>, Held)] = &[
            ("Bearer abc.def.ghi", bearer, one("abc.def.ghi")),
            ("bearer abc", bearer, one("abc")),
            ("BEARER   abc  ", bearer, one("abc")),
            ("Bearer\tabc", bearer, one("abc")),
            ("  Bearer abc", bearer, one("abc")),
            ("Bearer", bearer, one("")),
            ("Bearer ", bearer, one("")),
            ("Bearerabc", bearer, Held::Nothing),
            ("Basic dXNlcjpwYXNz", bearer, Held::Nothing),
            ("Bear", bearer, Held::Nothing),
            ("Bearer a,Bearer b", bearer, Held::Many),
            ("Bearer a, Basic b", bearer, Held::Many),
            ("Bearér abc", bearer, Held::Nothing),
            ("tok.en", None, one("tok.en")),
            (" tok.en ", None, one("tok.en")),
            ("a,b", None, Held::Many),
            ("JWT:abc", Some("jwt:"), one("abc")),
        ];
        for (value, prefix, expected) in table {
            assert_eq!(
                &from_header(value, *prefix),
                expected,
                "{value:?} {prefix:?}"
            );
        }
    }

    #[test]
    fn tokens_in_cookies() {
        let table: &[(&str, Held)] = &[
            ("session=abc", one("abc")),
            ("a=1; session=abc; b=2", one("abc")),
            ("a=1;session=\"abc\"", one("abc")),
            ("a=1,session=abc", one("abc")),
            ("sessions=abc; xsession=1", Held::Nothing),
            ("session=a; session=b", Held::Many),
            ("a=1,session=a;session=b", Held::Many),
            ("session", Held::Nothing),
            ("", Held::Nothing),
        ];
        for (header, expected) in table {
            assert_eq!(&from_cookies(header, "session"), expected, "{header:?}");
        }
    }

    #[test]
    fn tokens_in_query_parameters() {
        let table: &[(&str, Held)] = &[
            ("/p?access_token=abc", one("abc")),
            ("/p?x=1&access_token=a.b.c&y=2", one("a.b.c")),
            ("/p?access%5Ftoken=abc", one("abc")),
            ("/p?access_token=a%2Eb", one("a.b")),
            ("/p?access_token=", one("")),
            ("/p?access_token", one("")),
            ("/p?access_token=a&access_token=b", Held::Many),
            ("/p?token=abc", Held::Nothing),
            ("/p", Held::Nothing),
            ("/p?access_token=%ff", one("%ff")),
        ];
        for (path, expected) in table {
            assert_eq!(&from_query(path, "access_token"), expected, "{path:?}");
        }
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c").as_deref(), Some("a b c"));
        assert_eq!(percent_decode("%zz%4").as_deref(), Some("%zz%4"));
        assert_eq!(percent_decode("%C3%A9").as_deref(), Some("é"));
        assert_eq!(percent_decode("%ff"), None);
    }
}
