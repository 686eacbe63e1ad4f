//! Small parsers the request views share.

use std::net::{IpAddr, SocketAddr};

/// `ip:port`, `[v6]:port` or a bare address.
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    s.parse::<SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| s.parse::<IpAddr>())
        .ok()
}

/// The first value of query parameter `name` in `path`, percent-decoded (`+` is a space).
pub fn query_param(path: &str, name: &str) -> Option<String> {
    let (_, query) = path.split_once('?')?;
    let query = query.split('#').next().unwrap_or("");
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k)? == name).then(|| decode(v)).flatten()
    })
}

/// Percent-decoding of a query component; `None` when the result is not UTF-8.
pub fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The value of cookie `name` in a `Cookie` header. Pairs are split on `;` and on `,`: Portico
/// joins repeated `Cookie` fields (HTTP/2 sends one per cookie) with a comma, and a cookie value
/// cannot contain one (RFC 6265).
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split([';', ',']).find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == name).then(|| v.trim_matches('"'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params() {
        let t = |path: &str, name: &str| query_param(path, name);
        assert_eq!(t("/a?token=x%2By&b=1", "token").as_deref(), Some("x+y"));
        assert_eq!(t("/a?b=1&token=a+b", "token").as_deref(), Some("a b"));
        assert_eq!(t("/a?tok=1", "token"), None);
        assert_eq!(t("/a", "token"), None);
        assert_eq!(t("/a?token", "token").as_deref(), Some(""));
        assert_eq!(t("/a?token=%zz", "token").as_deref(), Some("%zz"));
        assert_eq!(t("/a?token=%4", "token").as_deref(), Some("%4"));
        assert_eq!(t("/a?token=%ff", "token"), None);
    }

    #[test]
    fn cookies_and_addresses() {
        assert_eq!(cookie("a=1; session=xyz; b=2", "session"), Some("xyz"));
        assert_eq!(cookie("a=1", "session"), None);
        assert_eq!(
            cookie("a=1,session=xyz", "session"),
            Some("xyz"),
            "HTTP/2, joined"
        );
        assert_eq!(cookie("a=1,b=2", "a"), Some("1"));
        assert_eq!(parse_ip("10.0.0.1:443"), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(parse_ip("[::1]:80"), Some("::1".parse().unwrap()));
        assert_eq!(parse_ip("::1"), Some("::1".parse().unwrap()));
        assert_eq!(parse_ip("nope"), None);
    }
}
