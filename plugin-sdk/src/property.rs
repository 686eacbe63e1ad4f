//! Properties (`proxy_get_property`) with Envoy's encodings: strings are raw bytes, integers
//! 8-byte little-endian, booleans one byte. Paths are given as segments:
//! `&["source", "address"]`, `&["request", "path"]`, `&["route_name"]`.

use crate::error::{Error, Result};
use crate::sys;

/// Runs `f` on the path's segments joined by NUL, as the ABI takes them: on the stack when the
/// path is short (every name the hosts define is), so reading a property allocates only its
/// value.
fn encoded<R>(path: &[&str], f: impl FnOnce(&[u8]) -> R) -> R {
    const ROOM: usize = 64;
    let len = path
        .iter()
        .map(|s| s.len() + 1)
        .sum::<usize>()
        .saturating_sub(1);
    if len > ROOM {
        return f(path.join("\0").as_bytes());
    }
    let mut buf = [0u8; ROOM];
    let mut at = 0;
    for (i, segment) in path.iter().enumerate() {
        if i > 0 {
            at += 1; // the NUL, already there
        }
        buf[at..at + segment.len()].copy_from_slice(segment.as_bytes());
        at += segment.len();
    }
    f(&buf[..len])
}

/// The raw bytes of a property, `None` when the host has no value for it.
pub fn get(path: &[&str]) -> Result<Option<Vec<u8>>> {
    encoded(path, sys::get_property)
}

/// A string property.
pub fn string(path: &[&str]) -> Result<Option<String>> {
    match get(path)? {
        None => Ok(None),
        Some(v) => String::from_utf8(v)
            .map(Some)
            .map_err(|_| Error::invalid(format!("property {} is not UTF-8", path.join(".")))),
    }
}

/// An integer property (8 bytes little-endian).
pub fn int(path: &[&str]) -> Result<Option<i64>> {
    match get(path)? {
        None => Ok(None),
        Some(v) => v
            .as_slice()
            .try_into()
            .map(|b| Some(i64::from_le_bytes(b)))
            .map_err(|_| Error::invalid(format!("property {} is not an integer", path.join(".")))),
    }
}

/// A boolean property (one byte).
pub fn bool(path: &[&str]) -> Result<Option<bool>> {
    match get(path)? {
        None => Ok(None),
        Some(v) if v.len() == 1 => Ok(Some(v[0] != 0)),
        Some(_) => Err(Error::invalid(format!(
            "property {} is not a boolean",
            path.join(".")
        ))),
    }
}

/// Sets a property on the current request, readable by later plugins of the chain.
pub fn set(path: &[&str], value: &[u8]) -> Result<()> {
    encoded(path, |path| sys::set_property(path, value))
}

#[cfg(test)]
mod tests {
    use super::encoded;

    #[test]
    fn paths_are_joined_by_nul() {
        let joined = |path: &[&str]| encoded(path, <[u8]>::to_vec);
        assert_eq!(joined(&["source", "address"]), b"source\0address");
        assert_eq!(joined(&["route_name"]), b"route_name");
        assert_eq!(joined(&[]), b"");
        assert_eq!(joined(&["a", "", "b"]), b"a\0\0b");
        let long = "x".repeat(70);
        assert_eq!(joined(&[&long, "y"]), format!("{long}\0y").into_bytes());
        let exact = "z".repeat(62);
        assert_eq!(joined(&[&exact, "w"]), format!("{exact}\0w").into_bytes());
    }
}
