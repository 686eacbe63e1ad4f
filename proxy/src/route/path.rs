//! Request path normalisation: the one form of a path that routing, plugins and the upstream see.
//!
//! [`normalize`] takes the path part of a request target (no query string) and returns the
//! path the router matches and the upstream receives (DESIGN.md §4):
//!
//! 1. It must start with `/`; `*` (for `OPTIONS *`) and relative paths are [`PathError::NotAbsolute`].
//! 2. NUL, the other control bytes below 0x20 and DEL (0x7f) are [`PathError::BadByte`], also
//!    when percent-escaped (`%00`, `%0d%0a`): a C server stops at the NUL, a log line breaks.
//!    An escaped backslash (`%5C`) and overlong UTF-8 escapes (`%c0%ae`, the disguised `.`) are
//!    [`PathError::Ambiguous`], as a raw backslash is.
//! 3. Percent-escapes of unreserved characters (`ALPHA / DIGIT / "-" / "." / "_" / "~"`,
//!    RFC 3986 §2.3) are decoded: `%2e` is `.`, `%41` is `A`, `%7E` is `~`. Every other escape is
//!    kept, with its hex digits upper-cased (`%2f` becomes `%2F`): an encoded slash is never
//!    decoded, so `/a%2Fb` is one segment. A `%` not followed by two hex digits is
//!    [`PathError::BadEscape`].
//! 4. Repeated slashes are merged (`//a///b` is `/a/b`).
//! 5. Dot segments are removed as in RFC 3986 §5.2.4, after decoding, so `/public/../admin` and
//!    `/public/%2e%2e/admin` are both `/admin`; `..` never climbs above the root (`/../a` is
//!    `/a`), and a final `.` or `..` segment leaves a trailing slash (`/a/b/..` is `/a/`).
//!
//! The result is a fixed point: normalising it again returns it unchanged. Paths that are
//! already normal — nearly every real request — are returned as [`Cow::Borrowed`] after one scan
//! over the bytes, without allocating.
//!
//! Bytes at or above 0x80 (the input is a `&str`, so they form UTF-8) are kept as they are.

use std::borrow::Cow;

/// Why a request path was refused. Every variant means the request is malformed (a 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("request path must start with '/'")]
    NotAbsolute,
    /// A `%` is not followed by two hexadecimal digits.
    #[error(
        "request path has an invalid percent-escape at byte {offset} (expected '%' and two hex digits)"
    )]
    BadEscape {
        /// Byte offset of the `%` in the path.
        offset: usize,
    },
    /// A backslash, or a dot segment with parameters (`..;x`): servers behind the proxy disagree
    /// on what these mean (IIS reads `\\` as `/`, Tomcat and Spring drop `;x` and then climb), so
    /// the path the router sees would not be the path the upstream serves.
    #[error(
        "request path is ambiguous at byte {offset}: backslashes (also as %5C), overlong UTF-8 escapes and dot segments with ';' parameters are refused"
    )]
    Ambiguous {
        /// Byte offset in the normalised path.
        offset: usize,
    },
    /// A control byte (below 0x20, or 0x7f), raw or percent-escaped.
    #[error("request path contains the forbidden byte 0x{byte:02x} at byte {offset}")]
    BadByte {
        /// The offending byte.
        byte: u8,
        /// Its byte offset in the path.
        offset: usize,
    },
}

/// Normalises a request path (without its query string); see the module documentation.
///
/// Returns the input itself when it is already normal.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let normal = if is_normal(path)? {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(rewrite(path)?)
    };
    check_unambiguous(&normal)?;
    Ok(normal)
}

/// Refuses what upstream servers would read differently from the router: a backslash, or a
/// segment that is `.` or `..` followed by `;parameters`.
fn check_unambiguous(path: &str) -> Result<(), PathError> {
    if let Some(offset) = path.find('\\') {
        return Err(PathError::Ambiguous { offset });
    }
    if path.contains(';') {
        let mut offset = 0;
        for segment in path.split('/') {
            if let Some((head, _)) = segment.split_once(';')
                && (head == "." || head == "..")
            {
                return Err(PathError::Ambiguous { offset });
            }
            offset += segment.len() + 1;
        }
    }
    Ok(())
}

/// `path` with the `;parameters` of every segment removed (`/a;x/b;y=1` is `/a/b`): the path
/// as servers that drop path parameters read it (Tomcat, Spring, Jetty).
pub fn without_params(path: &str) -> String {
    path.split('/')
        .map(|segment| segment.split_once(';').map_or(segment, |(head, _)| head))
        .collect::<Vec<_>>()
        .join("/")
}

/// Validates every byte and reports whether `path` (starting with `/`) is already normal.
///
/// Scans to the end even once the answer is "no", so every error is found here and the
/// rewrite never sees a byte it has to refuse.
fn is_normal(path: &str) -> Result<bool, PathError> {
    let bytes = path.as_bytes();
    let mut normal = true;
    // Start of the current segment, just after its leading slash.
    let mut segment_start = 1;
    let mut i = 1;
    while let Some(&byte) = bytes.get(i) {
        match byte {
            b'%' => {
                let (hi, lo) = escape_at(bytes, i)?;
                let decoded = (hex_value(hi) << 4) | hex_value(lo);
                match decoded {
                    0..0x20 | 0x7f => {
                        return Err(PathError::BadByte {
                            byte: decoded,
                            offset: i,
                        });
                    }
                    b'\\' => return Err(PathError::Ambiguous { offset: i }),
                    _ if overlong(decoded, escaped_at(bytes, i + 3)) => {
                        return Err(PathError::Ambiguous { offset: i });
                    }
                    _ => {}
                }
                if is_unreserved(decoded) || hi.is_ascii_lowercase() || lo.is_ascii_lowercase() {
                    normal = false;
                }
                i += 3;
                continue;
            }
            b'/' => {
                // An empty segment here is a repeated slash; `.` and `..` are dot segments.
                if matches!(&bytes[segment_start..i], b"" | b"." | b"..") {
                    normal = false;
                }
                segment_start = i + 1;
            }
            0..0x20 | 0x7f => return Err(PathError::BadByte { byte, offset: i }),
            _ => {}
        }
        i += 1;
    }
    // The last segment may be empty (a trailing slash, or the path `/`), but not a dot segment.
    if matches!(bytes.get(segment_start..), Some(b"." | b"..")) {
        normal = false;
    }
    Ok(normal)
}

/// Builds the normal form of a path that [`is_normal`] accepted but found not normal.
fn rewrite(path: &str) -> Result<String, PathError> {
    // `out` holds the segments kept so far as `/seg/seg`, never with a trailing slash.
    let mut out = String::with_capacity(path.len());
    let mut trailing_slash = false;
    let mut offset = 1;
    for raw in path.get(1..).unwrap_or_default().split('/') {
        let mark = out.len();
        out.push('/');
        decode_segment(raw, offset, &mut out)?;
        offset += raw.len() + 1;
        match out.get(mark + 1..) {
            Some("" | ".") => {
                out.truncate(mark);
                trailing_slash = true;
            }
            Some("..") => {
                out.truncate(mark);
                let parent = out.rfind('/').unwrap_or(0);
                out.truncate(parent);
                trailing_slash = true;
            }
            _ => trailing_slash = false,
        }
    }
    // Only the last segment's kind survives the loop: an empty, `.` or `..` last segment means
    // the path ends in a directory.
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

/// Appends `raw` to `out`, decoding unreserved escapes and upper-casing the others.
/// `offset` is where `raw` starts in the whole path, for error messages.
fn decode_segment(raw: &str, offset: usize, out: &mut String) -> Result<(), PathError> {
    let mut rest = raw;
    let mut at = offset;
    while let Some(pos) = rest.find('%') {
        out.push_str(&rest[..pos]);
        let escape = rest.as_bytes();
        let (hi, lo) =
            escape_at(escape, pos).map_err(|_| PathError::BadEscape { offset: at + pos })?;
        let decoded = (hex_value(hi) << 4) | hex_value(lo);
        if is_unreserved(decoded) {
            out.push(char::from(decoded));
        } else {
            out.push('%');
            out.push(char::from(hi.to_ascii_uppercase()));
            out.push(char::from(lo.to_ascii_uppercase()));
        }
        rest = &rest[pos + 3..];
        at += pos + 3;
    }
    out.push_str(rest);
    Ok(())
}

/// The two hex digits of the escape whose `%` is at `bytes[i]`.
fn escape_at(bytes: &[u8], i: usize) -> Result<(u8, u8), PathError> {
    match (bytes.get(i + 1), bytes.get(i + 2)) {
        (Some(&hi), Some(&lo)) if hi.is_ascii_hexdigit() && lo.is_ascii_hexdigit() => Ok((hi, lo)),
        _ => Err(PathError::BadEscape { offset: i }),
    }
}

/// The byte a valid escape at `i` stands for, if there is one there.
fn escaped_at(bytes: &[u8], i: usize) -> Option<u8> {
    match bytes.get(i) {
        Some(b'%') => escape_at(bytes, i)
            .ok()
            .map(|(hi, lo)| (hex_value(hi) << 4) | hex_value(lo)),
        _ => None,
    }
}

/// Does an escaped `lead` byte (followed by the escaped byte `next`, if any) start an overlong
/// or never-valid UTF-8 sequence (RFC 3629 §3)? These are how `.` and `/` are disguised from a
/// proxy for decoders that accept them.
fn overlong(lead: u8, next: Option<u8>) -> bool {
    match lead {
        0xc0 | 0xc1 | 0xf5..=0xff => true,
        0xe0 => next.is_some_and(|n| (0x80..0xa0).contains(&n)),
        0xf0 => next.is_some_and(|n| (0x80..0x90).contains(&n)),
        _ => false,
    }
}

/// Value of an ASCII hex digit (the caller has checked that it is one).
fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        b'A'..=b'F' => digit - b'A' + 10,
        _ => 0,
    }
}

/// RFC 3986 §2.3: `ALPHA / DIGIT / "-" / "." / "_" / "~"`.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `t!(input => expected)` for a path that normalises to `expected`;
    /// `t!(input => err ERROR)` for one that is refused.
    macro_rules! t {
        ($input:expr => err $err:expr) => {
            assert_eq!(normalize($input), Err($err), "normalize({:?})", $input);
        };
        ($input:expr => $expected:expr) => {
            match normalize($input) {
                Ok(out) => assert_eq!(out, $expected, "normalize({:?})", $input),
                Err(e) => panic!("normalize({:?}) failed: {e}", $input),
            }
        };
    }

    #[test]
    fn already_normal_paths_are_borrowed() {
        for path in [
            "/",
            "/a",
            "/a/",
            "/a/b/c",
            "/orders/123?",
            "/a%2Fb",
            "/%20x",
            "/a.b/..c/...",
            "/.well-known/x",
            "/caf\u{e9}",
            "/ sp",
        ] {
            assert!(
                matches!(normalize(path), Ok(Cow::Borrowed(p)) if p == path),
                "{path:?} should come back borrowed and unchanged"
            );
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        t!("/public/..\\admin" => err PathError::Ambiguous { offset: 10 });
        t!("/public/..;/admin" => err PathError::Ambiguous { offset: 8 });
        t!("/public/%2e%2e;x/admin" => err PathError::Ambiguous { offset: 8 });
        t!("/public/.;/admin" => err PathError::Ambiguous { offset: 8 });
        t!("/a;jsessionid=1/b" => "/a;jsessionid=1/b");
        t!("/a/..b;x" => "/a/..b;x");
        // Escaped, what is refused raw: a backslash, and overlong UTF-8 (here `.` and `/`).
        t!("/x%5C..%5Cadmin" => err PathError::Ambiguous { offset: 2 });
        t!("/x%5c" => err PathError::Ambiguous { offset: 2 });
        t!("/x/%c0%ae%c0%ae/admin" => err PathError::Ambiguous { offset: 3 });
        t!("/%C1%9C" => err PathError::Ambiguous { offset: 1 });
        t!("/%e0%80%ae" => err PathError::Ambiguous { offset: 1 });
        t!("/%f0%80%80%af" => err PathError::Ambiguous { offset: 1 });
        t!("/%f8%80" => err PathError::Ambiguous { offset: 1 });
    }

    #[test]
    fn parameters_come_off_every_segment() {
        assert_eq!(without_params("/a;x/b;y=1;z/c"), "/a/b/c");
        assert_eq!(without_params("/admin;"), "/admin");
        assert_eq!(without_params("/a/;x"), "/a/");
        assert_eq!(without_params("/a/b"), "/a/b");
    }

    #[test]
    fn dot_segments_cannot_bypass_a_route() {
        t!("/public/../admin" => "/admin");
        t!("/public/%2e%2e/admin" => "/admin");
        t!("/public/%2E%2e/admin" => "/admin");
        t!("/public/.%2E/admin" => "/admin");
        t!("/public/%2e./admin" => "/admin");
        t!("/public/./../admin" => "/admin");
        t!("/public//..//admin" => "/admin");
        t!("/public/x/../../admin" => "/admin");
    }

    #[test]
    fn dot_segments_rfc3986_5_2_4() {
        t!("/a/./b" => "/a/b");
        t!("/a/./b/../c" => "/a/c");
        t!("/../a" => "/a");
        t!("/../../a" => "/a");
        t!("/.." => "/");
        t!("/." => "/");
        t!("/a/.." => "/");
        t!("/a/../" => "/");
        t!("/a/b/.." => "/a/");
        t!("/a/b/." => "/a/b/");
        t!("/a/b/%2e" => "/a/b/");
        t!("/a/b/%2e%2E" => "/a/");
        t!("/a/b/../" => "/a/");
        t!("/a/b/../../../c/" => "/c/");
        // Not dot segments: the rule is about whole segments only.
        t!("/a/..b" => "/a/..b");
        t!("/a/b.." => "/a/b..");
        t!("/a/..." => "/a/...");
        t!("/a/.%2e." => "/a/...");
    }

    #[test]
    fn repeated_slashes_merge() {
        t!("//x" => "/x");
        t!("//a///b" => "/a/b");
        t!("/a//" => "/a/");
        t!("//" => "/");
        t!("///" => "/");
    }

    #[test]
    fn percent_escapes() {
        t!("/%7Euser" => "/~user");
        t!("/%7euser" => "/~user");
        t!("/%41%62%2D%5f%30" => "/Ab-_0");
        // Reserved and other characters stay encoded, with upper-case hex digits.
        t!("/a%2Fb" => "/a%2Fb");
        t!("/a%2fb" => "/a%2Fb");
        t!("/a%2f..%2fb" => "/a%2F..%2Fb");
        t!("/a%2F%2E%2E%2Fb" => "/a%2F..%2Fb");
        t!("/%25" => "/%25");
        t!("/%252e" => "/%252e");
        t!("/%3a%3B" => "/%3A%3B");
        t!("/%c3%a9" => "/%C3%A9");
        t!("/%e0%a4%85" => "/%E0%A4%85");
        t!("/%f0%9f%98%80" => "/%F0%9F%98%80");
        t!("/%2e%2e/%2Fa" => "/%2Fa");
    }

    #[test]
    fn the_root() {
        t!("/" => "/");
        t!("/./" => "/");
        t!("/../" => "/");
    }

    #[test]
    fn refused_paths() {
        t!("" => err PathError::NotAbsolute);
        t!("*" => err PathError::NotAbsolute);
        t!("a/b" => err PathError::NotAbsolute);
        t!("%2Fa" => err PathError::NotAbsolute);
        t!("/a%zz" => err PathError::BadEscape { offset: 2 });
        t!("/a%4" => err PathError::BadEscape { offset: 2 });
        t!("/a%" => err PathError::BadEscape { offset: 2 });
        t!("/a%g1" => err PathError::BadEscape { offset: 2 });
        t!("//a/%2e/%x1" => err PathError::BadEscape { offset: 8 });
        t!("/a\0b" => err PathError::BadByte { byte: 0, offset: 2 });
        t!("/a\nb" => err PathError::BadByte { byte: b'\n', offset: 2 });
        t!("/a\tb" => err PathError::BadByte { byte: b'\t', offset: 2 });
        t!("/a\x7f" => err PathError::BadByte { byte: 0x7f, offset: 2 });
        t!("//../\x1f" => err PathError::BadByte { byte: 0x1f, offset: 5 });
        // Escaped too.
        t!("/admin%00" => err PathError::BadByte { byte: 0, offset: 6 });
        t!("/x%0d%0aSet-Cookie:a" => err PathError::BadByte { byte: b'\r', offset: 2 });
        t!("/x%7F" => err PathError::BadByte { byte: 0x7f, offset: 2 });
        t!("/x%1f" => err PathError::BadByte { byte: 0x1f, offset: 2 });
    }

    #[test]
    fn errors_read_well() {
        assert_eq!(
            PathError::BadEscape { offset: 2 }.to_string(),
            "request path has an invalid percent-escape at byte 2 (expected '%' and two hex digits)"
        );
        assert_eq!(
            PathError::BadByte { byte: 0, offset: 7 }.to_string(),
            "request path contains the forbidden byte 0x00 at byte 7"
        );
    }

    /// Every path up to five bytes over an alphabet chosen to hit every rule: no panic, and
    /// every result is normal (a fixed point, borrowed on the second pass) and well formed.
    #[test]
    fn exhaustive_short_paths_are_fixed_points() {
        const ALPHABET: &[u8] = b"/.%2eEfFa~\0";
        let mut path = Vec::new();
        let mut checked = 0;
        for len in 0..=5u32 {
            for mut n in 0..ALPHABET.len().pow(len) {
                path.clear();
                path.push(b'/');
                for _ in 0..len {
                    path.push(ALPHABET[n % ALPHABET.len()]);
                    n /= ALPHABET.len();
                }
                let Ok(input) = std::str::from_utf8(&path) else {
                    continue;
                };
                let Ok(out) = normalize(input) else { continue };
                checked += 1;
                assert!(
                    matches!(normalize(&out), Ok(Cow::Borrowed(_))),
                    "{input:?} -> {out:?} is not a fixed point"
                );
                assert!(
                    out.starts_with('/') && !out.contains("//"),
                    "{input:?} -> {out:?}"
                );
                assert!(
                    !out.split('/').any(|s| s == "." || s == ".."),
                    "{input:?} -> {out:?} kept a dot segment"
                );
                assert_eq!(
                    matches!(normalize(input), Ok(Cow::Borrowed(_))),
                    out == input,
                    "{input:?}: borrowed exactly when unchanged"
                );
            }
        }
        assert!(checked > 10_000, "only {checked} paths checked");
    }
}
