//! Header hygiene between downstream and upstream: hop-by-hop removal and forwarding headers.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers about earlier hops that an untrusted client must not be able to set.
const UNTRUSTED: &[&str] = &[
    "forwarded",
    "x-real-ip",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-original-url",
    "x-rewrite-url",
];

/// Removes the hop-by-hop headers of RFC 9110 §7.6.1 and every header the `Connection`
/// header names. `TE: trailers` is kept (gRPC needs it); with `keep_upgrade` the `Upgrade`
/// header stays and `Connection: upgrade` is set again.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One look at the names first: most requests carry none of these, and a removal by name
    // costs a hash lookup each.
    if !headers.keys().any(is_hop_by_hop) {
        if keep_upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        return;
    }
    // Every `Connection` field line counts (RFC 9110 §5.3: several lines are one list).
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !(keep_upgrade && n == header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    headers.remove(header::CONNECTION);
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(header::TRANSFER_ENCODING);
    let te_trailers = headers.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    });
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// The fields [`strip_hop_by_hop`] removes by name (besides those `Connection` names, which
/// only matter when it is present).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::TE
        || name == header::UPGRADE
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

/// The protocols an upgrade request (`Connection: upgrade` and an `Upgrade` list) may be
/// tunnelled to: every one it offers (RFC 9110 §7.8) but `h2c`, whose tunnel would carry
/// requests the router never sees. `None` when there is no upgrade or nothing is left: the
/// request is then answered as a plain one, its `Upgrade` header removed.
pub fn tunnelled_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    if !has_token(headers, &header::CONNECTION, "upgrade") {
        return None;
    }
    let offered: Vec<&str> = tokens(headers, &header::UPGRADE)
        .filter(|t| !protocol_name(t).eq_ignore_ascii_case("h2c"))
        .collect();
    match offered.is_empty() {
        true => None,
        false => HeaderValue::from_str(&offered.join(", ")).ok(),
    }
}

/// Does the `Upgrade` of a `101` answer name only protocols that were `offered` (compared by
/// name, case-insensitively)?
pub fn upgraded_to_offered(answer: &HeaderMap, offered: &HeaderValue) -> bool {
    let offered: Vec<&str> = offered
        .to_str()
        .unwrap_or("")
        .split(',')
        .map(|t| protocol_name(t.trim()))
        .collect();
    let mut chosen = tokens(answer, &header::UPGRADE).peekable();
    chosen.peek().is_some()
        && chosen.all(|t| {
            offered
                .iter()
                .any(|o| o.eq_ignore_ascii_case(protocol_name(t)))
        })
}

/// The non-empty, trimmed items of a comma-separated header list, over all its field lines.
fn tokens<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// A protocol token without its `/version`.
fn protocol_name(token: &str) -> &str {
    token.split_once('/').map_or(token, |(name, _)| name)
}

/// Does a comma-separated header list `token` (a protocol's `/version` suffix ignored)?
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    tokens(headers, name).any(|t| protocol_name(t).eq_ignore_ascii_case(token))
}

/// Sets `x-forwarded-for`, `-proto` and `-host`; `peer` is the client's IP address as text.
/// With `trust` an incoming `x-forwarded-for` is appended to; without, it is replaced (Portico
/// is the edge).
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: &HeaderValue,
    https: bool,
    host: &str,
    trust: bool,
) {
    if !trust && headers.keys().any(|n| UNTRUSTED.contains(&n.as_str())) {
        // What a client claims about earlier hops is not believed at the edge; these also
        // carry paths some frameworks trust over the request line (X-Original-URL).
        for name in UNTRUSTED {
            headers.remove(*name);
        }
    }
    // Trusted, the incoming list is kept whole: several field lines are one list (RFC 9110
    // §5.3), joined in order, and the peer appended.
    let xff = match trust {
        true => {
            let prev: Vec<&str> = headers
                .get_all(&X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .collect();
            match prev.is_empty() {
                true => Some(peer.clone()),
                false => HeaderValue::try_from(format!(
                    "{}, {}",
                    prev.join(", "),
                    peer.to_str().unwrap_or_default()
                ))
                .ok(),
            }
        }
        false => Some(peer.clone()),
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if https { "https" } else { "http" }),
    );
    if let Ok(v) = HeaderValue::from_str(host) {
        headers.insert(X_FORWARDED_HOST.clone(), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_hop_headers_are_removed_at_the_edge() {
        let mut h = HeaderMap::new();
        h.insert(
            "forwarded",
            HeaderValue::from_static("for=6.6.6.6;proto=https"),
        );
        h.insert("x-real-ip", HeaderValue::from_static("6.6.6.6"));
        h.insert("x-original-url", HeaderValue::from_static("/admin"));
        let peer = HeaderValue::from_static("10.1.2.3");
        set_forwarded(&mut h, &peer, false, "a.example", false);
        assert!(h.get("forwarded").is_none());
        assert!(h.get("x-real-ip").is_none());
        assert!(h.get("x-original-url").is_none());
        h.insert("x-real-ip", HeaderValue::from_static("6.6.6.6"));
        set_forwarded(&mut h, &peer, false, "a.example", true);
        assert_eq!(h.get("x-real-ip").unwrap(), "6.6.6.6");
    }

    #[test]
    fn strips_hop_by_hop_and_named() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("gzip, trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("x-secret").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert!(h.get(header::UPGRADE).is_none());
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
        assert_eq!(h.get("x-keep").unwrap(), "1");
    }

    #[test]
    fn every_upgrade_but_h2c_is_tunnelled() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("Upgrade", "websocket", Some("websocket")),
            ("keep-alive, upgrade", "WebSocket", Some("WebSocket")),
            ("Upgrade", "h2c, websocket/13", Some("websocket/13")),
            ("Upgrade, HTTP2-Settings", "h2c", None),
            ("Upgrade", "TLS/1.2", Some("TLS/1.2")),
            ("Upgrade", "x-custom, H2C/1", Some("x-custom")),
            ("keep-alive", "websocket", None),
            ("Upgrade", " , ", None),
        ];
        for (connection, upgrade, want) in cases {
            let mut h = HeaderMap::new();
            h.insert(
                header::CONNECTION,
                HeaderValue::from_str(connection).unwrap(),
            );
            h.insert(header::UPGRADE, HeaderValue::from_str(upgrade).unwrap());
            let got = tunnelled_upgrade(&h);
            assert_eq!(
                got.as_ref().map(|v| v.to_str().unwrap()),
                *want,
                "{connection} / {upgrade}"
            );
        }
    }

    #[test]
    fn a_101_must_switch_to_an_offered_protocol() {
        let offered = HeaderValue::from_static("websocket/13, x-custom");
        for (answer, want) in [
            ("websocket", true),
            ("WebSocket/13", true),
            ("x-custom", true),
            ("h2c", false),
            ("websocket, h2c", false),
            ("", false),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::UPGRADE, HeaderValue::from_static(answer));
            assert_eq!(upgraded_to_offered(&h, &offered), want, "{answer:?}");
        }
        assert!(
            !upgraded_to_offered(&HeaderMap::new(), &offered),
            "no Upgrade"
        );
    }

    #[test]
    fn keeps_upgrade_when_tunnelling() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(tunnelled_upgrade(&h).is_some());
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
    }

    #[test]
    fn forwarded_for_replaced_unless_trusted() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        let peer = HeaderValue::from_static("10.1.2.3");
        set_forwarded(&mut h, &peer, true, "a.example", false);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "10.1.2.3");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "a.example");
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        set_forwarded(&mut h, &peer, false, "a.example", true);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "6.6.6.6, 10.1.2.3");
        // Trusted, several lines are one list, kept in order.
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.1.1.1, 2.2.2.2"),
        );
        h.append("x-forwarded-for", HeaderValue::from_static("3.3.3.3"));
        set_forwarded(&mut h, &peer, false, "a.example", true);
        assert_eq!(
            h.get_all("x-forwarded-for").iter().collect::<Vec<_>>(),
            ["1.1.1.1, 2.2.2.2, 3.3.3.3, 10.1.2.3"]
        );
        // Not trusted, all of them go.
        h.append("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        set_forwarded(&mut h, &peer, false, "a.example", false);
        assert_eq!(
            h.get_all("x-forwarded-for").iter().collect::<Vec<_>>(),
            ["10.1.2.3"]
        );
    }

    #[test]
    fn every_connection_line_names_hop_by_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("x-secret, x-other"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-other", HeaderValue::from_static("2"));
        h.insert("x-keep", HeaderValue::from_static("3"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("x-secret").is_none());
        assert!(h.get("x-other").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert_eq!(h.get("x-keep").unwrap(), "3");
    }
}
