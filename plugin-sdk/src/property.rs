//! Properties (`proxy_get_property`) with Envoy's encodings: strings are raw bytes, integers
//! 8-byte little-endian, booleans one byte. Paths are given as segments:
//! `&["source", "address"]`, `&["request", "path"]`, `&["route_name"]`.

use crate::error::{Error, Result};
use crate::sys;

fn encode(path: &[&str]) -> Vec<u8> {
    path.join("\0").into_bytes()
}

/// The raw bytes of a property, `None` when the host has no value for it.
pub fn get(path: &[&str]) -> Result<Option<Vec<u8>>> {
    sys::get_property(&encode(path))
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
    sys::set_property(&encode(path), value)
}
