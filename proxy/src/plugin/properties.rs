//! `proxy_get_property` / `proxy_set_property`: request and connection attributes with Envoy's
//! names and encodings. Strings are raw bytes, integers 8-byte little-endian, booleans one
//! byte, times nanoseconds since the epoch as an 8-byte integer. A path arrives as its segments
//! joined by NUL (`request\0path`).

use bytes::Bytes;

use super::frozen::Frozen;
use super::instance::HostCtx;

fn int(v: i64) -> Bytes {
    Bytes::copy_from_slice(&v.to_le_bytes())
}

fn text(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Joins a NUL-separated path with dots, the key user-set properties are kept under.
fn key(path: &[u8]) -> String {
    String::from_utf8_lossy(path).replace('\0', ".")
}

/// Room for every name [`get`] knows (the longest, `connection.requested_server_name`, has 32).
const KNOWN_MAX: usize = 40;

/// `path` with dots for NULs in `buf`, when it is short and UTF-8 enough to be a name [`get`]
/// knows; `""` otherwise. No allocation: a guest reads properties on the hot path.
fn dotted<'b>(path: &[u8], buf: &'b mut [u8; KNOWN_MAX]) -> &'b str {
    let Some(out) = buf.get_mut(..path.len()) else {
        return "";
    };
    for (o, &b) in out.iter_mut().zip(path) {
        *o = if b == 0 { b'.' } else { b };
    }
    std::str::from_utf8(out).unwrap_or("")
}

pub fn get(ctx: &mut HostCtx, path: &[u8]) -> Option<Bytes> {
    let mut buf = [0u8; KNOWN_MAX];
    let name = dotted(path, &mut buf);
    let spec = &ctx.spec;
    match name {
        "plugin_name" => return Some(text(&spec.name)),
        "plugin_root_id" => return Some(text(&spec.name)),
        "plugin_vm_id" => return Some(Bytes::new()),
        _ => {}
    }
    let stream = ctx.streams.get(&ctx.effective)?;
    if let Some(set) = &stream.properties
        && let Some(v) = set.get(&key(path))
    {
        return Some(v.clone());
    }
    let info = &stream.info;
    // The heads as the plugin has them in their own phase, else as that phase left them.
    let request = match (&stream.request, info.later.request.get()) {
        (Some(r), _) => Some(Head::Live(&r.headers)),
        (None, f) => f.map(Head::Frozen),
    };
    let response = match (&stream.response, info.later.response.get()) {
        (Some(r), _) => Some(Head::Live(&r.headers)),
        (None, f) => f.map(Head::Frozen),
    };
    let header =
        |name: &str| -> Option<Bytes> { Some(Bytes::copy_from_slice(request?.get(name)?)) };
    let pseudo = |name: &str| -> Option<&str> {
        match (&stream.request, info.later.request.get()) {
            (Some(r), _) => match name {
                ":path" => Some(r.path.as_str()),
                ":authority" => Some(r.authority.as_str()),
                ":method" => Some(r.method.as_str()),
                _ => None,
            },
            (None, f) => f?.pseudo(name),
        }
    };
    let path = || pseudo(":path").unwrap_or(info.path.as_str());
    Some(match name {
        "request.path" => text(path()),
        "request.url_path" => {
            let p = path();
            text(p.split_once('?').map_or(p, |(a, _)| a))
        }
        "request.query" => {
            let p = path();
            text(p.split_once('?').map(|(_, q)| q).unwrap_or(""))
        }
        "request.host" => text(pseudo(":authority").unwrap_or(&info.host)),
        "request.scheme" => text(info.scheme),
        "request.method" => text(pseudo(":method").unwrap_or(info.method.as_str())),
        "request.id" => text(info.id.to_str().unwrap_or("")),
        "request.protocol" => text(info.protocol),
        "request.referer" => header("referer")?,
        "request.useragent" => header("user-agent")?,
        "request.headers" => request?.pairs(),
        "request.size" => int(request?.body_size()?),
        "request.total_size" => int(request?.total_size()),
        "request.duration" => int(info.started.elapsed().as_nanos() as i64),
        "request.time" => {
            // The wall clock is read only when a plugin asks: the stream keeps the monotonic
            // instant the request arrived at.
            let nanos = std::time::SystemTime::now()
                .checked_sub(info.started.elapsed())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos() as i64);
            int(nanos)
        }
        "source.address" => address(&info.source),
        "source.port" => int(info.source.port() as i64),
        "destination.address" => address(&info.destination),
        "destination.port" => int(info.destination.port() as i64),
        "connection.tls_version" => text(info.tls_version?),
        "connection.mtls" => Bytes::from_static(if info.mtls { &[1] } else { &[0] }),
        "connection.requested_server_name" => text(info.sni.as_deref()?),
        "route_name" | "xds.route_name" => text(&info.route),
        "xds.cluster_name" | "upstream.name" => text(info.upstream.as_deref()?),
        "response.code" => {
            let status = match (&stream.response, info.later.response.get()) {
                (Some(r), _) => Some(r.status.as_u16()),
                (None, f) => f.and_then(|f| f.pseudo(":status")?.parse().ok()),
            };
            int(status.or(stream.response_status.map(|s| s.as_u16()))? as i64)
        }
        "response.headers" => response?.pairs(),
        "response.size" => int(response?.body_size()?),
        "response.total_size" => int(response?.total_size()),
        _ => return None,
    })
}

/// A head as a property reads it: the plugin's own phase's (live), or as that phase left it.
#[derive(Clone, Copy)]
enum Head<'a> {
    Live(&'a http::HeaderMap),
    Frozen(&'a Frozen),
}

impl<'a> Head<'a> {
    fn get(self, name: &str) -> Option<&'a [u8]> {
        match self {
            Head::Live(h) => h.get(name).map(|v| v.as_bytes()),
            Head::Frozen(f) => f
                .headers()
                .find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
                .map(|(_, v)| v),
        }
    }

    fn headers(self) -> Box<dyn Iterator<Item = (&'a [u8], &'a [u8])> + 'a> {
        match self {
            Head::Live(h) => Box::new(h.iter().map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes()))),
            Head::Frozen(f) => Box::new(f.headers()),
        }
    }

    /// The headers in the Proxy-Wasm pairs encoding, as Envoy serialises map-valued attributes.
    fn pairs(self) -> Bytes {
        let pairs: Vec<(&[u8], &[u8])> = self.headers().collect();
        Bytes::from(super::abi::serialize_pairs(&pairs))
    }

    /// The body size the head announces (`content-length`).
    fn body_size(self) -> Option<i64> {
        std::str::from_utf8(self.get("content-length")?)
            .ok()?
            .parse()
            .ok()
    }

    /// Envoy's `total_size`: the headers' bytes (name, value, and ": " and CRLF each) plus the
    /// body size when announced.
    fn total_size(self) -> i64 {
        let head: usize = self.headers().map(|(k, v)| k.len() + v.len() + 4).sum();
        head as i64 + self.body_size().unwrap_or(0)
    }
}

/// `ip:port` (`[ip]:port` for IPv6), written straight into the value's buffer.
fn address(addr: &std::net::SocketAddr) -> Bytes {
    use std::io::Write;
    let mut buf = Vec::with_capacity(48);
    let _ = write!(buf, "{addr}");
    Bytes::from(buf)
}

/// Properties a plugin may set on one stream, and their bytes (paths and values).
pub const MAX_SET_PROPERTIES: usize = 256;
pub const MAX_SET_PROPERTY_BYTES: usize = 4 << 20;

/// Sets a property on the effective stream; `Err` (a trap for the caller) past the caps above,
/// which keep a guest from growing host memory outside its own limit.
pub fn set(ctx: &mut HostCtx, path: &[u8], value: Bytes) -> Result<(), String> {
    let key = key(path);
    let Some(stream) = ctx.streams.get_mut(&ctx.effective) else {
        return Ok(());
    };
    let props = stream.properties.get_or_insert_default();
    let bytes: usize = props
        .iter()
        .filter(|(k, _)| **k != key)
        .map(|(k, v)| k.len() + v.len())
        .sum();
    let entries = props.len() + usize::from(!props.contains_key(&key));
    if entries > MAX_SET_PROPERTIES || bytes + key.len() + value.len() > MAX_SET_PROPERTY_BYTES {
        return Err(format!(
            "plugin set more properties on a stream than allowed ({MAX_SET_PROPERTIES}, {MAX_SET_PROPERTY_BYTES} bytes)"
        ));
    }
    props.insert(key, value);
    Ok(())
}
