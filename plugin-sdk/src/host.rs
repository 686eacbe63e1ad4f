//! What both backends share: the ABI's enumerations and the header-map wire format. The calls
//! themselves are `crate::sys`: [`crate::abi`] inside Wasm, [`crate::mock`] on a native target.

/// Header maps of the ABI.
#[allow(dead_code)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Map {
    RequestHeaders = 0,
    RequestTrailers = 1,
    ResponseHeaders = 2,
    ResponseTrailers = 3,
    CalloutHeaders = 6,
    CalloutTrailers = 7,
}

/// Buffers of the ABI.
#[allow(dead_code)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Buffer {
    RequestBody = 0,
    ResponseBody = 1,
    CalloutBody = 4,
    VmConfiguration = 6,
    PluginConfiguration = 7,
    CallData = 8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum MetricKind {
    Counter = 0,
    Gauge = 1,
    Histogram = 2,
}

/// `proxy_continue_stream` / `proxy_close_stream` stream kinds.
pub const STREAM_REQUEST: u32 = 0;
pub const STREAM_RESPONSE: u32 = 1;

/// The map format: a count, then each key's and value's length, then every key and value with
/// a NUL after it. All numbers are little-endian `u32`.
pub fn serialize_pairs<'a, K, V>(pairs: impl IntoIterator<Item = (K, V)> + Clone) -> Vec<u8>
where
    K: AsRef<[u8]> + 'a,
    V: AsRef<[u8]> + 'a,
{
    let mut count = 0u32;
    let mut data = 0usize;
    for (k, v) in pairs.clone() {
        count += 1;
        data += k.as_ref().len() + v.as_ref().len() + 2;
    }
    let mut out = Vec::with_capacity(4 + 8 * count as usize + data);
    out.extend_from_slice(&count.to_le_bytes());
    for (k, v) in pairs.clone() {
        out.extend_from_slice(&(k.as_ref().len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.as_ref().len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref());
        out.push(0);
        out.extend_from_slice(v.as_ref());
        out.push(0);
    }
    out
}

/// The inverse of [`serialize_pairs`]; `None` when the bytes are not a well-formed map.
pub fn deserialize_pairs(bytes: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let u32_at = |at: usize| -> Option<usize> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize)
    };
    let count = u32_at(0)?;
    let mut sizes = 4usize;
    let mut data = 4usize.checked_add(count.checked_mul(8)?)?;
    if data > bytes.len() {
        return None;
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let (kl, vl) = (u32_at(sizes)?, u32_at(sizes + 4)?);
        sizes += 8;
        let key = bytes.get(data..data.checked_add(kl)?)?.to_vec();
        data += kl + 1;
        let value = bytes.get(data..data.checked_add(vl)?)?.to_vec();
        data += vl + 1;
        out.push((key, value));
    }
    (data <= bytes.len()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip_and_refuse_truncation() {
        let pairs: Vec<(&[u8], &[u8])> = vec![(b":path", b"/a"), (b"x", b""), (b"k", b"v\xff")];
        let bytes = serialize_pairs(pairs.iter().copied());
        let back = deserialize_pairs(&bytes).unwrap();
        let back: Vec<(&[u8], &[u8])> = back.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        assert_eq!(back, pairs);
        for cut in 1..bytes.len() {
            assert!(deserialize_pairs(&bytes[..cut]).is_none(), "cut at {cut}");
        }
        assert!(deserialize_pairs(&u32::MAX.to_le_bytes()).is_none());
    }
}
