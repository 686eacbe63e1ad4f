//! A head after its own phase, kept readable (not writable) for the stream's later callbacks, as
//! Envoy keeps them: a response callback reading a request header, `on_log` reading either.
//!
//! Every request through a chain keeps both heads, and few plugins read them, so keeping must be
//! cheap: a [`Frozen`] is the head's pairs, pseudo-headers first, in the Proxy-Wasm pairs
//! encoding that `proxy_get_header_map_pairs` returns — one allocation and a copy of the bytes,
//! where a clone of the head cost a header map's allocations and a reference count per value.
//! Reads scan it, and only a plugin that reads pays for that.

use http::HeaderMap;

use super::instance::{RequestHead, ResponseHead};

/// A head's pairs in the Proxy-Wasm encoding: the pair count, each pair's name and value
/// lengths (u32, little-endian), then each name and value followed by a NUL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frozen(Vec<u8>);

impl Frozen {
    /// `:authority`, `:path`, `:method`, `:scheme`, then the headers, as the request map
    /// lists them.
    pub fn request(head: &RequestHead) -> Frozen {
        let pseudo: [(&[u8], &[u8]); 4] = [
            (b":authority", head.authority.as_bytes()),
            (b":path", head.path.as_bytes()),
            (b":method", head.method.as_str().as_bytes()),
            (b":scheme", head.scheme.as_bytes()),
        ];
        Frozen::new(&pseudo, &head.headers)
    }

    /// `:status`, then the headers, as the response map lists them.
    pub fn response(head: &ResponseHead) -> Frozen {
        Frozen::new(
            &[(b":status", head.status.as_str().as_bytes())],
            &head.headers,
        )
    }

    fn new(pseudo: &[(&[u8], &[u8])], headers: &HeaderMap) -> Frozen {
        let pairs = || {
            pseudo.iter().copied().chain(
                headers
                    .iter()
                    .map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes())),
            )
        };
        let (count, bytes) = pairs().fold((0usize, 0usize), |(n, b), (k, v)| {
            (n + 1, b + k.len() + v.len() + 2)
        });
        let mut out = Vec::with_capacity(4 + 8 * count + bytes);
        out.extend_from_slice(&(count as u32).to_le_bytes());
        for (k, v) in pairs() {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        }
        for (k, v) in pairs() {
            out.extend_from_slice(k);
            out.push(0);
            out.extend_from_slice(v);
            out.push(0);
        }
        Frozen(out)
    }

    /// The encoding itself: what `proxy_get_header_map_pairs` hands the guest.
    pub fn wire(&self) -> &[u8] {
        &self.0
    }

    /// Every pair, pseudo-headers first.
    pub fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let b = &self.0;
        let u32_at = |at: usize| {
            b.get(at..at + 4)
                .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize)
        };
        let count = u32_at(0);
        let mut data = 4 + 8 * count;
        (0..count).map_while(move |i| {
            let (k, v) = (u32_at(4 + 8 * i), u32_at(8 + 8 * i));
            let name = b.get(data..data + k)?;
            let value = b.get(data + k + 1..data + k + 1 + v)?;
            data += k + v + 2;
            Some((name, value))
        })
    }

    /// The headers without the pseudo-headers.
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.pairs().filter(|(k, _)| k.first() != Some(&b':'))
    }

    /// The values of `name` (any case), in order.
    pub fn get_all<'a>(&'a self, name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.pairs()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The first value of `name` (any case): a header, or a pseudo-header such as `:path`.
    pub fn get<'a>(&'a self, name: &[u8]) -> Option<&'a [u8]> {
        self.pairs()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// A pseudo-header as text (they were text when frozen).
    pub fn pseudo(&self, name: &str) -> Option<&str> {
        std::str::from_utf8(self.get(name.as_bytes())?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, Method, StatusCode};

    fn request() -> RequestHead {
        let mut headers = HeaderMap::new();
        headers.insert("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        headers.insert("user-agent", HeaderValue::from_static("curl"));
        RequestHead {
            method: Method::POST,
            scheme: "https",
            authority: "example.com".into(),
            path: "/a?b=1".into(),
            headers,
        }
    }

    #[test]
    fn a_frozen_request_is_the_map_as_the_pairs_hostcall_lists_it() {
        let head = request();
        let frozen = Frozen::request(&head);
        let mut expected: Vec<(&[u8], &[u8])> = vec![
            (b":authority", b"example.com"),
            (b":path", b"/a?b=1"),
            (b":method", b"POST"),
            (b":scheme", b"https"),
        ];
        expected.extend(
            head.headers
                .iter()
                .map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes())),
        );
        assert_eq!(frozen.pairs().collect::<Vec<_>>(), expected);
        assert_eq!(frozen.wire(), super::super::abi::serialize_pairs(&expected));
        assert_eq!(frozen.headers().count(), 3);
    }

    #[test]
    fn a_frozen_head_is_read_by_name_in_any_case() {
        let frozen = Frozen::request(&request());
        assert_eq!(frozen.get_all(b"X-A").collect::<Vec<_>>(), [b"1", b"2"]);
        assert_eq!(frozen.get(b"user-agent"), Some(&b"curl"[..]));
        assert_eq!(frozen.get(b"x-missing"), None);
        assert_eq!(frozen.pseudo(":path"), Some("/a?b=1"));
        assert_eq!(frozen.pseudo(":method"), Some("POST"));

        let response = Frozen::response(&ResponseHead {
            status: StatusCode::NOT_FOUND,
            headers: HeaderMap::new(),
        });
        assert_eq!(response.pseudo(":status"), Some("404"));
        assert_eq!(response.headers().count(), 0);
        assert_eq!(Frozen::default().pairs().count(), 0);
    }
}
